/*
 * wal.c - the write-ahead log of a node (DESIGN §9; the contract is include/tally/wal.h).
 *
 * Concepts. The log is a byte sequence addressed by LSN (the first record of a new log is at
 * LSN 1). It is stored in segment files DIR/<16 lowercase hex digits>.wal, each named by the
 * LSN of its first byte, so a record's LSN is always its segment's start plus its offset in
 * the file. A record is a 17-byte header (u32 payload length, u32 CRC32C over type, LSN and
 * payload, u8 type, u64 LSN; big-endian) followed by the payload. Records never span
 * segments.
 *
 * Writing. Appenders take the mutex, copy the whole record into `cur` (an in-memory buffer of
 * whole records), advance insert_lsn and wake the flusher. The flusher thread swaps `cur` for
 * its second buffer (double buffering: appenders continue while it writes), writes the batch
 * to the current segment, fdatasyncs it when fsync is on, then publishes flushed_lsn and
 * wakes the waiters of tally_wal_flush. Appends that arrive during a write + fdatasync are
 * made durable together by the next round: that is group commit. The flusher cuts a batch at
 * record boundaries so that a segment stops taking records once it has reached segment_size;
 * it then syncs and closes it and creates the next one, named by the LSN where it starts
 * (and with fsync on, syncs the directory so the new name is durable). Appenders wait while
 * more than buffer_max bytes are unwritten. A write or fsync error breaks the log for good:
 * the OS may have dropped the dirty pages, so nothing later could be reported durable.
 *
 * Recovery. tally_wal_open only lists the segments. tally_wal_replay reads the records from
 * the segment holding `from` on, checking each (complete header, length within limits and
 * within the file, stored LSN equal to its position, CRC). At the first bad record it decides
 * between a torn tail and corruption in the middle: if a valid record starts anywhere after it
 * in the same segment, or a later segment starts with a valid record, good data would be lost
 * by cutting, so it is an error (XX001) and the node must refuse to start. Otherwise the bytes
 * from the bad record on are cut off (ftruncate + fsync, logged) and later segment files,
 * which can only hold garbage, are removed. After replay the writer continues the last
 * segment in place (its size is exactly the end of the good data), or starts a new one named
 * by the end LSN when the last one is already full.
 *
 * Locking. `mu` guards the buffers, the LSNs, the segment list, the counters and the flags.
 * The current segment's fd and size are owned by the flusher thread once it runs (by replay
 * before that, and by close after joining it). All waits use CLOCK_MONOTONIC deadlines.
 */
#include "tally/wal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define WAL_DEFAULT_SEGMENT ((uint64_t)64 << 20)
#define WAL_DEFAULT_BUFFER ((size_t)64 << 20)
#define WAL_FLUSHER_TICK_MS 100
#define WAL_READ_CHUNK ((size_t)1 << 20)
#define WAL_NAME_LEN 20 /* 16 hex digits + ".wal" */

typedef struct wal_seg {
	uint64_t start; /* LSN of its first byte (its name) */
	uint64_t size;	/* bytes in the file */
} wal_seg;

/* A heap byte buffer whose growth failure is an error, not an abort (records reach 1 GiB). */
typedef struct wal_bytes {
	uint8_t *data;
	size_t len;
	size_t cap;
} wal_bytes;

struct tally_wal {
	char *dir;
	uint64_t segment_size;
	size_t buffer_max;
	bool fsync;

	pthread_mutex_t mu;
	pthread_cond_t data_cv;	 /* flusher: there is something to write, or stop */
	pthread_cond_t space_cv; /* appenders: the unwritten bytes went down */
	pthread_cond_t flush_cv; /* tally_wal_flush: flushed_lsn advanced or the log broke */
	wal_bytes cur;		 /* whole records appended and not yet taken by the flusher */
	wal_bytes spare;	 /* the flusher's buffer between rounds */
	uint64_t insert_lsn;	 /* end of the last appended record */
	uint64_t flushed_lsn;	 /* everything before it is written (and synced with fsync on) */
	bool replayed;		 /* replay ran (successfully or not) */
	bool started;		 /* the flusher runs; appends are allowed */
	bool stop;
	bool broken;
	char broken_msg[512];
	uint64_t cut_bytes; /* torn tail cut at replay */
	wal_seg *segs;	    /* sorted by start; the last one is the one being written */
	size_t nsegs;
	size_t capsegs;
	uint64_t writes;
	uint64_t fsyncs;
	pthread_t flusher;

	/* Owned by the flusher while it runs. */
	int fd;		    /* current segment, -1 when none is open */
	uint64_t seg_start; /* its start LSN */
	uint64_t seg_bytes; /* its size */
};

/* ---- small helpers ------------------------------------------------------------------------ */

static int wal_bytes_reserve(wal_bytes *b, size_t extra)
{
	if (extra > SIZE_MAX / 4 - b->len)
		return -1;
	size_t need = b->len + extra;
	if (need <= b->cap)
		return 0;
	size_t cap = b->cap ? b->cap : 64 * 1024;
	while (cap < need)
		cap *= 2;
	uint8_t *p = realloc(b->data, cap);
	if (!p)
		return -1;
	b->data = p;
	b->cap = cap;
	return 0;
}

static void wal_bytes_free(wal_bytes *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

static void wal_seg_path(const tally_wal *w, uint64_t start, char *out, size_t outsz)
{
	snprintf(out, outsz, "%s/%016llx.wal", w->dir, (unsigned long long)start);
}

/* 16 lowercase hex digits + ".wal", start >= 1. */
static bool wal_parse_name(const char *name, uint64_t *start)
{
	if (strlen(name) != WAL_NAME_LEN || strcmp(name + 16, ".wal") != 0)
		return false;
	uint64_t v = 0;
	for (int i = 0; i < 16; i++) {
		char c = name[i];
		int d;
		if (c >= '0' && c <= '9')
			d = c - '0';
		else if (c >= 'a' && c <= 'f')
			d = c - 'a' + 10;
		else
			return false;
		v = (v << 4) | (uint64_t)d;
	}
	if (v == 0)
		return false;
	*start = v;
	return true;
}

static int wal_seg_cmp(const void *a, const void *b)
{
	uint64_t x = ((const wal_seg *)a)->start, y = ((const wal_seg *)b)->start;
	return x < y ? -1 : x > y;
}

/* Append to the segment list; caller holds mu (or is single-threaded). */
static void wal_segs_push(tally_wal *w, uint64_t start, uint64_t size)
{
	if (w->nsegs == w->capsegs) {
		w->capsegs = w->capsegs ? w->capsegs * 2 : 16;
		w->segs = tally_xrealloc(w->segs, w->capsegs * sizeof *w->segs);
	}
	w->segs[w->nsegs].start = start;
	w->segs[w->nsegs].size = size;
	w->nsegs++;
}

/* Write (or read) exactly n bytes at off, retrying short transfers and EINTR. A write that
 * makes no progress is ENOSPC; a read that meets the end of the file is EIO (it shrank under
 * us). */
static int wal_io_full(int fd, uint8_t *p, size_t n, uint64_t off, bool write)
{
	while (n > 0) {
		ssize_t k = write ? pwrite(fd, p, n, (off_t)off) : pread(fd, p, n, (off_t)off);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (k == 0) {
			errno = write ? ENOSPC : EIO;
			return -1;
		}
		p += k;
		n -= (size_t)k;
		off += (uint64_t)k;
	}
	return 0;
}

static int wal_write_full(int fd, const uint8_t *p, size_t n, uint64_t off)
{
	return wal_io_full(fd, (uint8_t *)p, n, off, true);
}

static int wal_read_full(int fd, uint8_t *p, size_t n, uint64_t off)
{
	return wal_io_full(fd, p, n, off, false);
}

static void wal_deadline(struct timespec *ts, int timeout_ms)
{
	*ts = tally_mono_ts(tally_mono_us() + (int64_t)timeout_ms * 1000);
}

/* ---- open --------------------------------------------------------------------------------- */

static int wal_list(tally_wal *w, tally_err *err)
{
	DIR *d = opendir(w->dir);
	if (!d)
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
				     "could not open write-ahead log directory \"%s\": %s", w->dir,
				     strerror(errno));
	struct dirent *de;
	errno = 0;
	while ((de = readdir(d)) != NULL) {
		uint64_t start;
		if (!wal_parse_name(de->d_name, &start))
			continue;
		struct stat st;
		if (fstatat(dirfd(d), de->d_name, &st, 0) != 0) {
			int e = errno;
			closedir(d);
			return tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
					     "could not stat write-ahead log segment \"%s/%s\": %s",
					     w->dir, de->d_name, strerror(e));
		}
		if (!S_ISREG(st.st_mode))
			continue;
		wal_segs_push(w, start, (uint64_t)st.st_size);
		errno = 0;
	}
	int e = errno;
	closedir(d);
	if (e != 0)
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
				     "could not read write-ahead log directory \"%s\": %s", w->dir,
				     strerror(e));
	if (w->nsegs > 1)
		qsort(w->segs, w->nsegs, sizeof *w->segs, wal_seg_cmp);
	return 0;
}

int tally_wal_open(const tally_wal_options *o, tally_wal **out, tally_err *err)
{
	if (!o || !o->dir || !o->dir[0])
		return tally_err_set(err, TALLY_SQLSTATE_INVALID_PARAMETER,
				     "write-ahead log directory must not be empty");
	if (tally_mkdir_p(o->dir, 0700) != 0)
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
				     "could not create write-ahead log directory \"%s\": %s",
				     o->dir, strerror(errno));
	tally_wal *w = tally_xcalloc(1, sizeof *w);
	w->dir = tally_xstrdup(o->dir);
	w->segment_size = o->segment_size ? o->segment_size : WAL_DEFAULT_SEGMENT;
	w->buffer_max = o->buffer_max ? o->buffer_max : WAL_DEFAULT_BUFFER;
	w->fsync = o->fsync;
	w->fd = -1;

	pthread_mutex_init(&w->mu, NULL);
	tally_cond_init_mono(&w->data_cv);
	tally_cond_init_mono(&w->space_cv);
	tally_cond_init_mono(&w->flush_cv);

	if (wal_list(w, err) != 0) {
		tally_wal_close(w);
		return -1;
	}
	*out = w;
	return 0;
}

/* ---- replay ------------------------------------------------------------------------------- */

/* A buffered sequential reader over one segment file. */
typedef struct wal_reader {
	int fd;
	uint64_t fsize;
	uint8_t *buf;
	size_t cap;
	size_t len;    /* valid bytes in buf */
	size_t pos;    /* consumed bytes in buf */
	uint64_t boff; /* file offset of buf[0] */
} wal_reader;

/* Make n bytes available at pos (the caller checked they exist in the file). */
static int wal_reader_need(wal_reader *r, size_t n)
{
	if (r->len - r->pos >= n)
		return 0;
	memmove(r->buf, r->buf + r->pos, r->len - r->pos);
	r->boff += r->pos;
	r->len -= r->pos;
	r->pos = 0;
	if (r->cap < n) {
		uint8_t *p = realloc(r->buf, n);
		if (!p) {
			errno = ENOMEM;
			return -1;
		}
		r->buf = p;
		r->cap = n;
	}
	uint64_t left = r->fsize - r->boff - r->len;
	size_t want = r->cap - r->len;
	if (want > left)
		want = (size_t)left;
	if (want < n - r->len) {
		errno = EIO;
		return -1;
	}
	if (wal_read_full(r->fd, r->buf + r->len, want, r->boff + r->len) != 0)
		return -1;
	r->len += want;
	return 0;
}

typedef enum wal_check {
	WAL_REC_OK = 0,
	WAL_REC_SHORT_HEADER,
	WAL_REC_BAD_LENGTH,
	WAL_REC_PAST_END,
	WAL_REC_BAD_LSN,
	WAL_REC_BAD_CRC,
} wal_check;

/* What was wrong with a record, for logs and error details. */
static void wal_describe(char *out, size_t outsz, wal_check c, const uint8_t *hdr, uint64_t left,
			 uint64_t pos, uint32_t crc_computed)
{
	switch (c) {
	case WAL_REC_OK:
		snprintf(out, outsz, "valid record");
		break;
	case WAL_REC_SHORT_HEADER:
		snprintf(out, outsz, "incomplete record header (%llu of %d bytes)",
			 (unsigned long long)left, TALLY_WAL_HDR);
		break;
	case WAL_REC_BAD_LENGTH:
		snprintf(out, outsz, "impossible record length %u (the limit is %u)",
			 tally_be32(hdr), TALLY_WAL_RECORD_MAX);
		break;
	case WAL_REC_PAST_END:
		snprintf(out, outsz,
			 "record length %u goes past the end of the segment (%llu bytes left)",
			 tally_be32(hdr), (unsigned long long)(left - TALLY_WAL_HDR));
		break;
	case WAL_REC_BAD_LSN:
		snprintf(out, outsz, "wrong LSN %llu in a record at LSN %llu",
			 (unsigned long long)tally_be64(hdr + 9), (unsigned long long)pos);
		break;
	case WAL_REC_BAD_CRC:
		snprintf(out, outsz, "bad checksum (stored %08x, computed %08x)",
			 tally_be32(hdr + 4), crc_computed);
		break;
	}
}

/* Check the header at LSN pos with `left` bytes from it to the end of the segment (everything
 * but the checksum). */
static wal_check wal_check_header(const uint8_t *hdr, uint64_t left, uint64_t pos)
{
	uint32_t len = tally_be32(hdr);
	if (len > TALLY_WAL_RECORD_MAX)
		return WAL_REC_BAD_LENGTH;
	if ((uint64_t)len > left - TALLY_WAL_HDR)
		return WAL_REC_PAST_END;
	if (tally_be64(hdr + 9) != pos)
		return WAL_REC_BAD_LSN;
	return WAL_REC_OK;
}

/* Is there a complete valid record at file offset off of a segment? 1 yes, 0 no, -1 I/O. */
static int wal_good_at(int fd, uint64_t seg_start, uint64_t fsize, uint64_t off)
{
	uint8_t hdr[TALLY_WAL_HDR];
	if (fsize < off || fsize - off < TALLY_WAL_HDR)
		return 0;
	if (wal_read_full(fd, hdr, sizeof hdr, off) != 0)
		return -1;
	if (wal_check_header(hdr, fsize - off, seg_start + off) != WAL_REC_OK)
		return 0;
	uint32_t len = tally_be32(hdr);
	uint32_t crc = tally_crc32c(0, hdr + 8, 9);
	uint8_t chunk[16384];
	uint64_t at = off + TALLY_WAL_HDR;
	while (len > 0) {
		size_t n = len < sizeof chunk ? len : sizeof chunk;
		if (wal_read_full(fd, chunk, n, at) != 0)
			return -1;
		crc = tally_crc32c(crc, chunk, n);
		at += n;
		len -= (uint32_t)n;
	}
	return crc == tally_be32(hdr + 4);
}

/* Does any position in [from, fsize) of the segment start a valid record? Sets *found. */
static int wal_scan_good(int fd, uint64_t seg_start, uint64_t fsize, uint64_t from, uint64_t *found)
{
	uint8_t *blk = tally_xmalloc(WAL_READ_CHUNK + TALLY_WAL_HDR);
	int rc = 0;
	for (uint64_t base = from; base < fsize && fsize - base >= TALLY_WAL_HDR;
	     base += WAL_READ_CHUNK) {
		uint64_t avail = fsize - base;
		size_t want = avail < WAL_READ_CHUNK + TALLY_WAL_HDR - 1
				  ? (size_t)avail
				  : WAL_READ_CHUNK + TALLY_WAL_HDR - 1;
		if (wal_read_full(fd, blk, want, base) != 0) {
			rc = -1;
			break;
		}
		for (size_t k = 0; k < WAL_READ_CHUNK && k + TALLY_WAL_HDR <= want; k++) {
			uint64_t q = base + k;
			/* The stored LSN must equal the position: a cheap filter before the CRC. */
			if (tally_be64(blk + k + 9) != seg_start + q)
				continue;
			int g = wal_good_at(fd, seg_start, fsize, q);
			if (g != 0) {
				rc = g;
				if (g > 0)
					*found = seg_start + q;
				goto done;
			}
		}
	}
done:
	free(blk);
	return rc;
}

/* Does segment i start with a valid record? 1 yes, 0 no, -1 I/O (err set). */
static int wal_seg_starts_good(tally_wal *w, size_t i, tally_err *err)
{
	char path[4200];
	wal_seg_path(w, w->segs[i].start, path, sizeof path);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
				     "could not open write-ahead log segment \"%s\": %s", path,
				     strerror(errno));
	int g = wal_good_at(fd, w->segs[i].start, w->segs[i].size, 0);
	if (g < 0)
		tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
			      "could not read write-ahead log segment \"%s\": %s", path,
			      strerror(errno));
	close(fd);
	return g;
}

/* Index of a segment after i that starts with a valid record, SIZE_MAX if none, or -1 on an
 * I/O error through *rc. */
static size_t wal_later_good(tally_wal *w, size_t i, int *rc, tally_err *err)
{
	*rc = 0;
	for (size_t j = i + 1; j < w->nsegs; j++) {
		int g = wal_seg_starts_good(w, j, err);
		if (g < 0) {
			*rc = -1;
			return SIZE_MAX;
		}
		if (g > 0)
			return j;
	}
	return SIZE_MAX;
}

/* Remove the segments after i (they hold nothing valid: the log ended before them). */
static void wal_drop_after(tally_wal *w, size_t i)
{
	char path[4200];
	for (size_t j = i + 1; j < w->nsegs; j++) {
		wal_seg_path(w, w->segs[j].start, path, sizeof path);
		if (w->segs[j].size > 0)
			tally_log_warn(
			    "write-ahead log: removing segment \"%s\" (%llu bytes) after "
			    "the end of the log at LSN %llu",
			    path, (unsigned long long)w->segs[j].size,
			    (unsigned long long)(w->segs[i].start + w->segs[i].size));
		if (unlink(path) != 0 && errno != ENOENT)
			tally_log_warn("could not remove write-ahead log segment \"%s\": %s", path,
				       strerror(errno));
	}
	pthread_mutex_lock(&w->mu);
	w->nsegs = i + 1;
	pthread_mutex_unlock(&w->mu);
}

static int wal_corrupt(tally_wal *w, const char *path, uint64_t off, const char *what,
		       uint64_t good_lsn, size_t good_seg, tally_err *err)
{
	tally_err_set(err, TALLY_SQLSTATE_DATA_CORRUPTED,
		      "write-ahead log is corrupt: bad record in segment \"%s\" at offset %llu",
		      path, (unsigned long long)off);
	if (good_seg != SIZE_MAX) {
		char gp[4200];
		wal_seg_path(w, w->segs[good_seg].start, gp, sizeof gp);
		tally_err_detail(
		    err, "The record has a %s; valid records follow in segment \"%s\".", what, gp);
	} else {
		tally_err_detail(err, "The record has a %s; a valid record follows at LSN %llu.",
				 what, (unsigned long long)good_lsn);
	}
	tally_err_hint(err,
		       "The node refuses to start rather than serve wrong results; restore "
		       "its data directory from a backup, or remove it to start this node empty.");
	tally_log_error("%s: %s", err ? err->message : "write-ahead log is corrupt", what);
	return -1;
}

/* The record at offset off of segment i (open as fd) is bad: cut a torn tail, or report
 * corruption in the middle. Returns 0 when the tail was cut. */
static int wal_bad_record(tally_wal *w, size_t i, int fd, const char *path, uint64_t off,
			  const char *what, tally_err *err)
{
	wal_seg *s = &w->segs[i];
	uint64_t found = 0;
	int rc = wal_scan_good(fd, s->start, s->size, off + 1, &found);
	if (rc < 0)
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
				     "could not read write-ahead log segment \"%s\": %s", path,
				     strerror(errno));
	if (rc > 0)
		return wal_corrupt(w, path, off, what, found, SIZE_MAX, err);
	size_t later = wal_later_good(w, i, &rc, err);
	if (rc < 0)
		return -1;
	if (later != SIZE_MAX)
		return wal_corrupt(w, path, off, what, 0, later, err);

	uint64_t cut = s->size - off;
	pthread_mutex_lock(&w->mu);
	w->cut_bytes += cut;
	pthread_mutex_unlock(&w->mu);
	tally_log_warn(
	    "write-ahead log: cutting off a torn tail of %llu bytes in segment \"%s\" at "
	    "offset %llu (LSN %llu): %s",
	    (unsigned long long)cut, path, (unsigned long long)off,
	    (unsigned long long)(s->start + off), what);
	int wfd = open(path, O_WRONLY | O_CLOEXEC);
	if (wfd < 0 || ftruncate(wfd, (off_t)off) != 0 || fsync(wfd) != 0) {
		int e = errno;
		if (wfd >= 0)
			close(wfd);
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
				     "could not truncate write-ahead log segment \"%s\": %s", path,
				     strerror(e));
	}
	close(wfd);
	pthread_mutex_lock(&w->mu);
	s->size = off;
	pthread_mutex_unlock(&w->mu);
	wal_drop_after(w, i);
	return 0;
}

/* Read segment i; *stop is set when the log ended inside it (torn tail cut). */
static int wal_replay_seg(tally_wal *w, size_t i, uint64_t from, tally_wal_replay_fn fn, void *ctx,
			  wal_reader *r, bool *stop, tally_err *err)
{
	char path[4200];
	wal_seg_path(w, w->segs[i].start, path, sizeof path);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
				     "could not open write-ahead log segment \"%s\": %s", path,
				     strerror(errno));
	uint64_t start = w->segs[i].start;
	r->fd = fd;
	r->fsize = w->segs[i].size;
	r->len = r->pos = 0;
	r->boff = 0;
	int rc = 0;
	for (;;) {
		uint64_t off = r->boff + r->pos;
		if (off == r->fsize)
			break;
		uint64_t left = r->fsize - off;
		wal_check c = WAL_REC_SHORT_HEADER;
		uint32_t crc = 0;
		const uint8_t *hdr = NULL;
		if (left >= TALLY_WAL_HDR) {
			if (wal_reader_need(r, TALLY_WAL_HDR) != 0)
				goto io_error;
			hdr = r->buf + r->pos;
			c = wal_check_header(hdr, left, start + off);
			if (c == WAL_REC_OK) {
				uint32_t len = tally_be32(hdr);
				if (wal_reader_need(r, TALLY_WAL_HDR + (size_t)len) != 0)
					goto io_error;
				hdr = r->buf + r->pos;
				crc = tally_crc32c(0, hdr + 8, 9 + (size_t)len);
				if (crc != tally_be32(hdr + 4))
					c = WAL_REC_BAD_CRC;
			}
		}
		if (c != WAL_REC_OK) {
			char what[256];
			wal_describe(what, sizeof what, c, hdr, left, start + off, crc);
			rc = wal_bad_record(w, i, fd, path, off, what, err);
			*stop = true;
			break;
		}
		uint32_t len = tally_be32(hdr);
		uint64_t lsn = start + off;
		if (lsn >= from && fn(ctx, hdr[8], lsn, hdr + TALLY_WAL_HDR, len, err) != 0) {
			rc = -1;
			break;
		}
		r->pos += TALLY_WAL_HDR + (size_t)len;
	}
	close(fd);
	r->fd = -1;
	return rc;
io_error:
	rc = tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
			   "could not read write-ahead log segment \"%s\": %s", path,
			   strerror(errno));
	close(fd);
	r->fd = -1;
	return rc;
}

static int wal_create_segment(tally_wal *w, uint64_t start, tally_err *err);
static void *wal_flusher_main(void *arg);

int tally_wal_replay(tally_wal *w, uint64_t from, tally_wal_replay_fn fn, void *ctx, tally_err *err)
{
	if (w->replayed)
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
				     "write-ahead log \"%s\" was already replayed", w->dir);
	w->replayed = true;

	size_t s0 = 0;
	for (size_t i = 0; i < w->nsegs; i++)
		if (w->segs[i].start <= from)
			s0 = i;
	wal_reader r = {.fd = -1};
	r.cap = WAL_READ_CHUNK;
	r.buf = tally_xmalloc(r.cap);
	int rc = 0;
	for (size_t i = s0; i < w->nsegs; i++) {
		bool stop = false;
		rc = wal_replay_seg(w, i, from, fn, ctx, &r, &stop, err);
		if (rc != 0 || stop)
			break;
		if (i + 1 < w->nsegs &&
		    w->segs[i + 1].start != w->segs[i].start + w->segs[i].size) {
			/* The next segment does not continue this one: a gap or an overlap. */
			char path[4200], next[4200];
			wal_seg_path(w, w->segs[i].start, path, sizeof path);
			wal_seg_path(w, w->segs[i + 1].start, next, sizeof next);
			size_t later = wal_later_good(w, i, &rc, err);
			if (rc != 0)
				break;
			if (later != SIZE_MAX) {
				tally_err_set(err, TALLY_SQLSTATE_DATA_CORRUPTED,
					      "write-ahead log is corrupt: bad record in segment "
					      "\"%s\" at offset %llu",
					      path, (unsigned long long)w->segs[i].size);
				tally_err_detail(
				    err,
				    "Segment \"%s\" ends at LSN %llu but the next "
				    "segment \"%s\" starts at LSN %llu.",
				    path, (unsigned long long)(w->segs[i].start + w->segs[i].size),
				    next, (unsigned long long)w->segs[i + 1].start);
				tally_err_hint(err, "The node refuses to start rather than serve "
						    "wrong results; restore its data directory "
						    "from a backup, or remove it to start this "
						    "node empty.");
				rc = -1;
				break;
			}
			wal_drop_after(w, i);
			break;
		}
	}
	free(r.buf);
	if (rc != 0)
		return -1;

	/* Continue the last segment, or start a new one when there is none or it is full. */
	if (w->nsegs == 0) {
		if (wal_create_segment(w, 1, err) != 0)
			return -1;
	} else {
		wal_seg *last = &w->segs[w->nsegs - 1];
		uint64_t end = last->start + last->size;
		if (last->size >= w->segment_size) {
			if (wal_create_segment(w, end, err) != 0)
				return -1;
		} else {
			char path[4200];
			wal_seg_path(w, last->start, path, sizeof path);
			w->fd = open(path, O_WRONLY | O_CLOEXEC);
			if (w->fd < 0)
				return tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
						     "could not open write-ahead log segment "
						     "\"%s\": %s",
						     path, strerror(errno));
			w->seg_start = last->start;
			w->seg_bytes = last->size;
		}
	}
	uint64_t end = w->seg_start + w->seg_bytes;
	pthread_mutex_lock(&w->mu);
	w->insert_lsn = w->flushed_lsn = end;
	pthread_mutex_unlock(&w->mu);
	int e = pthread_create(&w->flusher, NULL, wal_flusher_main, w);
	if (e != 0)
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
				     "could not start the write-ahead log flusher: %s",
				     strerror(e));
	pthread_mutex_lock(&w->mu);
	w->started = true;
	pthread_mutex_unlock(&w->mu);
	return 0;
}

/* ---- writing ------------------------------------------------------------------------------ */

/* Create (empty) the segment starting at `start` and make it current. Runs in replay or in
 * the flusher. */
static int wal_create_segment(tally_wal *w, uint64_t start, tally_err *err)
{
	char path[4200];
	wal_seg_path(w, start, path, sizeof path);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
				     "could not create write-ahead log segment \"%s\": %s", path,
				     strerror(errno));
	if (w->fsync && tally_dir_sync(w->dir) != 0) {
		int e = errno;
		close(fd);
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
				     "could not fsync write-ahead log directory \"%s\": %s", w->dir,
				     strerror(e));
	}
	w->fd = fd;
	w->seg_start = start;
	w->seg_bytes = 0;
	pthread_mutex_lock(&w->mu);
	wal_segs_push(w, start, 0);
	pthread_mutex_unlock(&w->mu);
	return 0;
}

/* Write one batch of whole records that starts at LSN seg_start + seg_bytes. Returns 0, or
 * -1 with the reason in msg. Counts into *fsyncs. */
static int wal_write_batch(tally_wal *w, const uint8_t *p, size_t n, uint64_t *fsyncs, char *msg,
			   size_t msgsz)
{
	char path[4200];
	bool dirty = false;
	size_t off = 0;
	while (off < n) {
		/* Take records while the segment has not reached its size (at least one). */
		size_t end = off;
		do {
			end += TALLY_WAL_HDR + (size_t)tally_be32(p + end);
		} while (end < n && w->seg_bytes + (end - off) < w->segment_size);
		if (wal_write_full(w->fd, p + off, end - off, w->seg_bytes) != 0) {
			wal_seg_path(w, w->seg_start, path, sizeof path);
			snprintf(msg, msgsz,
				 "could not write to write-ahead log segment \"%s\": %s", path,
				 strerror(errno));
			return -1;
		}
		dirty = true;
		w->seg_bytes += end - off;
		off = end;
		pthread_mutex_lock(&w->mu);
		w->segs[w->nsegs - 1].size = w->seg_bytes;
		pthread_mutex_unlock(&w->mu);
		if (w->seg_bytes < w->segment_size)
			continue;
		/* Full: make it durable, close it and start the next one. */
		if (w->fsync) {
			(*fsyncs)++;
			if (fdatasync(w->fd) != 0)
				goto sync_error;
		}
		dirty = false;
		close(w->fd);
		w->fd = -1;
		tally_err e;
		if (wal_create_segment(w, w->seg_start + w->seg_bytes, &e) != 0) {
			snprintf(msg, msgsz, "%s", e.message);
			return -1;
		}
	}
	if (w->fsync && dirty) {
		(*fsyncs)++;
		if (fdatasync(w->fd) != 0)
			goto sync_error;
	}
	return 0;
sync_error:
	wal_seg_path(w, w->seg_start, path, sizeof path);
	snprintf(msg, msgsz, "could not fsync write-ahead log segment \"%s\": %s", path,
		 strerror(errno));
	return -1;
}

static void *wal_flusher_main(void *arg)
{
	tally_wal *w = arg;
	pthread_mutex_lock(&w->mu);
	for (;;) {
		while (w->cur.len == 0 && !w->stop) {
			struct timespec ts;
			wal_deadline(&ts, WAL_FLUSHER_TICK_MS);
			pthread_cond_timedwait(&w->data_cv, &w->mu, &ts);
		}
		if (w->cur.len == 0)
			break; /* stopping and drained */
		if (w->broken) {
			/* Nothing can be made durable any more; drop what is queued. */
			w->cur.len = 0;
			pthread_cond_broadcast(&w->space_cv);
			continue;
		}
		wal_bytes take = w->cur;
		w->cur = w->spare;
		w->cur.len = 0;
		w->spare = (wal_bytes){0};
		uint64_t end = w->insert_lsn;
		pthread_mutex_unlock(&w->mu);

		char msg[512];
		uint64_t fsyncs = 0;
		int rc = wal_write_batch(w, take.data, take.len, &fsyncs, msg, sizeof msg);
		if (rc != 0)
			tally_log_error("%s; the write-ahead log is broken", msg);
		/* Do not keep a buffer a huge record grew. */
		if (take.cap > 2 * w->buffer_max)
			wal_bytes_free(&take);
		take.len = 0;

		pthread_mutex_lock(&w->mu);
		w->spare = take;
		w->writes++;
		w->fsyncs += fsyncs;
		if (rc != 0) {
			w->broken = true;
			tally_strlcpy(w->broken_msg, msg, sizeof w->broken_msg);
		} else {
			w->flushed_lsn = end;
		}
		pthread_cond_broadcast(&w->flush_cv);
		pthread_cond_broadcast(&w->space_cv);
	}
	pthread_mutex_unlock(&w->mu);
	return NULL;
}

static int wal_broken_err(tally_wal *w, tally_err *err)
{
	tally_err_set(err, TALLY_SQLSTATE_INTERNAL, "%s", w->broken_msg);
	return tally_err_detail(err, "An earlier write to the write-ahead log failed; it accepts "
				     "no more records.");
}

int tally_wal_append(tally_wal *w, uint8_t type, const struct iovec *iov, int niov, uint64_t *start,
		     uint64_t *end, tally_err *err)
{
	/* Check the size first: nothing is read from iov before it is known to fit. */
	uint64_t total = 0;
	for (int i = 0; i < niov; i++) {
		total += iov[i].iov_len;
		if (iov[i].iov_len > TALLY_WAL_RECORD_MAX || total > TALLY_WAL_RECORD_MAX) {
			tally_err_set(err, TALLY_SQLSTATE_PROGRAM_LIMIT,
				      "write-ahead log record is too large");
			return tally_err_detail(err, "The payload has more than %u bytes.",
						TALLY_WAL_RECORD_MAX);
		}
	}
	size_t rec = TALLY_WAL_HDR + (size_t)total;

	pthread_mutex_lock(&w->mu);
	for (;;) {
		if (w->broken) {
			pthread_mutex_unlock(&w->mu);
			return wal_broken_err(w, err);
		}
		if (!w->started || w->stop) {
			pthread_mutex_unlock(&w->mu);
			return tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
					     "write-ahead log \"%s\" is not open for appends",
					     w->dir);
		}
		uint64_t unwritten = w->insert_lsn - w->flushed_lsn;
		if (unwritten == 0 || unwritten + rec <= w->buffer_max)
			break;
		pthread_cond_wait(&w->space_cv, &w->mu);
	}
	if (wal_bytes_reserve(&w->cur, rec) != 0) {
		pthread_mutex_unlock(&w->mu);
		tally_err_set(err, TALLY_SQLSTATE_OUT_OF_MEMORY, "out of memory");
		return tally_err_detail(err, "Failed on a write-ahead log record of %zu bytes.",
					rec);
	}
	uint64_t lsn = w->insert_lsn;
	uint8_t *h = w->cur.data + w->cur.len;
	tally_put_be32(h, (uint32_t)total);
	h[8] = type;
	tally_put_be64(h + 9, lsn);
	uint8_t *q = h + TALLY_WAL_HDR;
	for (int i = 0; i < niov; i++) {
		if (iov[i].iov_len)
			memcpy(q, iov[i].iov_base, iov[i].iov_len);
		q += iov[i].iov_len;
	}
	tally_put_be32(h + 4, tally_crc32c(0, h + 8, 9 + (size_t)total));
	w->cur.len += rec;
	w->insert_lsn += rec;
	pthread_cond_signal(&w->data_cv);
	pthread_mutex_unlock(&w->mu);
	*start = lsn;
	*end = lsn + rec;
	return 0;
}

int tally_wal_flush(tally_wal *w, uint64_t lsn, int timeout_ms, tally_err *err)
{
	struct timespec ts;
	if (timeout_ms >= 0)
		wal_deadline(&ts, timeout_ms);
	pthread_mutex_lock(&w->mu);
	while (w->flushed_lsn < lsn && !w->broken) {
		if (!w->started) {
			pthread_mutex_unlock(&w->mu);
			return tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
					     "write-ahead log \"%s\" is not open for appends",
					     w->dir);
		}
		if (timeout_ms < 0) {
			pthread_cond_wait(&w->flush_cv, &w->mu);
		} else if (pthread_cond_timedwait(&w->flush_cv, &w->mu, &ts) == ETIMEDOUT &&
			   w->flushed_lsn < lsn && !w->broken) {
			uint64_t flushed = w->flushed_lsn;
			pthread_mutex_unlock(&w->mu);
			tally_err_set(err, TALLY_SQLSTATE_QUERY_CANCELED,
				      "canceling wait for write-ahead log flush due to timeout");
			return tally_err_detail(err,
						"LSN %llu was not durable after %d ms (flushed up "
						"to %llu).",
						(unsigned long long)lsn, timeout_ms,
						(unsigned long long)flushed);
		}
	}
	if (w->flushed_lsn < lsn) {
		pthread_mutex_unlock(&w->mu);
		return wal_broken_err(w, err);
	}
	pthread_mutex_unlock(&w->mu);
	return 0;
}

/* ---- truncation, stats, close ------------------------------------------------------------- */

void tally_wal_truncate(tally_wal *w, uint64_t lsn)
{
	pthread_mutex_lock(&w->mu);
	size_t k = 0;
	/* segs[k] goes when its successor starts at or before lsn; the last one always stays. */
	while (k + 1 < w->nsegs && w->segs[k + 1].start <= lsn)
		k++;
	uint64_t *gone = NULL;
	if (k > 0) {
		gone = tally_xmalloc(k * sizeof *gone);
		for (size_t i = 0; i < k; i++)
			gone[i] = w->segs[i].start;
		memmove(w->segs, w->segs + k, (w->nsegs - k) * sizeof *w->segs);
		w->nsegs -= k;
	}
	pthread_mutex_unlock(&w->mu);
	if (k == 0)
		return;
	char path[4200];
	for (size_t i = 0; i < k; i++) {
		wal_seg_path(w, gone[i], path, sizeof path);
		if (unlink(path) != 0 && errno != ENOENT)
			tally_log_warn("could not remove write-ahead log segment \"%s\": %s", path,
				       strerror(errno));
	}
	free(gone);
	if (tally_dir_sync(w->dir) != 0)
		tally_log_warn("could not fsync write-ahead log directory \"%s\": %s", w->dir,
			       strerror(errno));
}

void tally_wal_stats_get(tally_wal *w, tally_wal_stats *out)
{
	memset(out, 0, sizeof *out);
	pthread_mutex_lock(&w->mu);
	out->insert_lsn = w->insert_lsn;
	out->flushed_lsn = w->flushed_lsn;
	out->first_lsn = w->nsegs ? w->segs[0].start : w->insert_lsn;
	out->segments = w->nsegs;
	for (size_t i = 0; i < w->nsegs; i++)
		out->disk_bytes += w->segs[i].size;
	out->writes = w->writes;
	out->fsyncs = w->fsyncs;
	out->cut_bytes = w->cut_bytes;
	out->broken = w->broken;
	pthread_mutex_unlock(&w->mu);
}

void tally_wal_close(tally_wal *w)
{
	if (!w)
		return;
	pthread_mutex_lock(&w->mu);
	bool started = w->started;
	w->stop = true;
	pthread_cond_broadcast(&w->data_cv);
	pthread_cond_broadcast(&w->space_cv);
	pthread_mutex_unlock(&w->mu);
	if (started)
		pthread_join(w->flusher, NULL);
	if (w->fd >= 0) {
		/* A clean stop leaves everything durable, even with fsync off. */
		if (!w->broken && fdatasync(w->fd) != 0)
			tally_log_warn("could not fsync write-ahead log segment in \"%s\": %s",
				       w->dir, strerror(errno));
		close(w->fd);
	}
	wal_bytes_free(&w->cur);
	wal_bytes_free(&w->spare);
	free(w->segs);
	free(w->dir);
	pthread_cond_destroy(&w->data_cv);
	pthread_cond_destroy(&w->space_cv);
	pthread_cond_destroy(&w->flush_cv);
	pthread_mutex_destroy(&w->mu);
	free(w);
}
