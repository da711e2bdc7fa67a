/*
 * wal.h - the write-ahead log of a node (DESIGN §9): one log per node, shared by its outbox
 * and all its shard copies.
 *
 * The log is a sequence of records in segment files DIR/<16 hex digits>.wal, each named by
 * the LSN of its first byte. An LSN is a byte position in the log (the first record of a new
 * log is at LSN 1; 0 means "nothing"); LSNs continue across segments. A record never spans
 * two segments. On disk a record is
 *
 *     u32 payload length | u32 CRC32C | u8 type | u64 LSN of the record | payload
 *
 * (big-endian, header 17 bytes); the CRC covers type, LSN and payload. The LSN inside the
 * record lets the reader tell a valid record from stale bytes.
 *
 * Appends are cheap and concurrent: they copy the record into an in-memory buffer under a
 * mutex and return its LSNs. One flusher thread writes the buffer out and, with fsync on,
 * fdatasyncs it: every append that arrived while the previous write/fdatasync was running
 * is made durable by the next one (group commit). tally_wal_flush waits for an LSN to be
 * durable. With fsync off the flusher still write()s promptly, so a killed process loses
 * nothing; only an OS crash or power loss can.
 *
 * Recovery: tally_wal_open lists the segments; tally_wal_replay reads the records from an LSN
 * on and positions the end of the log after the last good record. A torn or corrupt record
 * at the tail (nothing valid after it) is cut off and logged; a bad record followed by valid
 * ones (corruption in the middle) is an error that names the segment and offset, and the
 * node must refuse to start.
 *
 * Segments are removed with tally_wal_truncate once nothing needs them.
 */
#ifndef TALLY_WAL_H
#define TALLY_WAL_H

#include "tally/core.h"

#include <sys/uio.h>

#define TALLY_WAL_HDR 17
#define TALLY_WAL_RECORD_MAX ((uint32_t)1 << 30) /* payload bytes */

typedef struct tally_wal tally_wal;

typedef struct tally_wal_options {
	const char *dir;       /* directory of the segment files (created if missing) */
	uint64_t segment_size; /* start a new segment once one reaches this size (0: 64 MiB) */
	bool fsync;	       /* fdatasync before anything is reported durable */
	size_t buffer_max;     /* appenders wait while this many bytes are unwritten (0: 64 MiB) */
} tally_wal_options;

/* Open the log in o->dir: list its segments; no record is read yet. Errors (could not
 * create/list the directory, a file name that is not a segment is ignored) -> -1 with err. */
int tally_wal_open(const tally_wal_options *o, tally_wal **out, tally_err *err);

/* Called by replay for every good record at or after `from`; returning non-zero stops the
 * replay with that error (err already set by the callback). data is valid during the call. */
typedef int (*tally_wal_replay_fn)(void *ctx, uint8_t type, uint64_t lsn, const uint8_t *data,
				   uint32_t len, tally_err *err);

/* Read every record with LSN >= from in order (records before it in the same segment are
 * read and checked, not passed), then position the end of the log after the last good
 * record, cut off a torn tail (logged with its segment and offset), start the flusher, and
 * make the log ready for appends. Must be called exactly once, before the first append; with
 * an empty log it only starts it. from below the first segment's start is fine (replay
 * starts at the first segment). Errors: I/O, corruption in the middle of the log (XX001
 * data_corrupted; the message names the file and offset), callback errors. */
int tally_wal_replay(tally_wal *w, uint64_t from, tally_wal_replay_fn fn, void *ctx,
		     tally_err *err);

/* Append one record whose payload is the concatenation of iov[0..niov). Thread-safe; blocks
 * only while the unwritten buffer is over buffer_max. On success *start is the record's LSN
 * and *end the LSN just after it (pass *end to tally_wal_flush). Errors: payload over
 * TALLY_WAL_RECORD_MAX (54000), or the log failed earlier (a write/fsync error: the log is
 * then broken for good, every later call fails; XX000 with the OS error). */
int tally_wal_append(tally_wal *w, uint8_t type, const struct iovec *iov, int niov, uint64_t *start,
		     uint64_t *end, tally_err *err);

/* Wait until every record ending at or before lsn is written (and fdatasync'd if fsync is
 * on). timeout_ms < 0 waits forever. Errors: timeout (57014), log broken (XX000). */
int tally_wal_flush(tally_wal *w, uint64_t lsn, int timeout_ms, tally_err *err);

/* Remove every segment all of whose records lie before lsn (never the one being written). */
void tally_wal_truncate(tally_wal *w, uint64_t lsn);

typedef struct tally_wal_stats {
	uint64_t insert_lsn;  /* end of the last appended record */
	uint64_t flushed_lsn; /* everything before it is durable */
	uint64_t first_lsn;   /* start of the oldest segment kept */
	uint64_t segments;    /* segment files on disk */
	uint64_t disk_bytes;  /* their total size */
	uint64_t writes;      /* write batches by the flusher since open */
	uint64_t fsyncs;      /* fdatasync calls since open */
	uint64_t cut_bytes;   /* bytes of a torn tail cut off by replay (0: the log was whole) */
	bool broken;	      /* a write or fdatasync failed: nothing more can be logged */
} tally_wal_stats;

void tally_wal_stats_get(tally_wal *w, tally_wal_stats *out);

/* Stop the flusher after writing (and syncing) everything appended, close files, free. */
void tally_wal_close(tally_wal *w);

#endif
