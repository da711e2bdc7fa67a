/*
 * test_wal.c - the write-ahead log: concurrent appends come back exactly once and in order
 * after a reopen, replay from a middle LSN, segment rolling and truncation, torn and garbage
 * tails cut at every possible length, corruption in the middle refused with XX001, group
 * commit, flush timeouts, the record size limit and a broken log after a write error.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tally/wal.h"

/* ---- helpers ------------------------------------------------------------------------------ */

static uint64_t mix64(uint64_t x)
{
	x += 0x9E3779B97F4A7C15ull;
	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
	x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
	return x ^ (x >> 31);
}

/* Deterministic payload bytes for a seed. */
static void fill_payload(uint8_t *p, size_t n, uint64_t seed)
{
	uint64_t s = seed;
	for (size_t i = 0; i < n; i++) {
		if (i % 8 == 0)
			s = mix64(s);
		p[i] = (uint8_t)(s >> ((i % 8) * 8));
	}
}

static int rm_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static void make_dir(char *out, size_t outsz)
{
	snprintf(out, outsz, "/tmp/tally-wal-XXXXXX");
	cr_assert_not_null(mkdtemp(out));
}

static void remove_dir(const char *dir)
{
	nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* A replayed record. */
typedef struct rec {
	uint8_t type;
	uint64_t lsn;
	uint32_t len;
	uint8_t *data;
} rec;

typedef struct recs {
	rec *v;
	size_t n;
	size_t cap;
} recs;

static int collect(void *ctx, uint8_t type, uint64_t lsn, const uint8_t *data, uint32_t len,
		   tally_err *err)
{
	(void)err;
	recs *r = ctx;
	if (r->n == r->cap) {
		r->cap = r->cap ? r->cap * 2 : 64;
		r->v = realloc(r->v, r->cap * sizeof *r->v);
	}
	rec *x = &r->v[r->n++];
	x->type = type;
	x->lsn = lsn;
	x->len = len;
	x->data = malloc(len ? len : 1);
	if (len)
		memcpy(x->data, data, len);
	return 0;
}

static void recs_free(recs *r)
{
	for (size_t i = 0; i < r->n; i++)
		free(r->v[i].data);
	free(r->v);
	memset(r, 0, sizeof *r);
}

static tally_wal *wal_open_dir(const char *dir, uint64_t segment_size, bool fsync)
{
	tally_wal_options o = {.dir = dir, .segment_size = segment_size, .fsync = fsync};
	tally_wal *w = NULL;
	tally_err err;
	cr_assert_eq(tally_wal_open(&o, &w, &err), 0, "%s", err.message);
	return w;
}

/* Open + replay from `from` into out; returns the replay's result. */
static int wal_open_replay(const char *dir, uint64_t segment_size, bool fsync, uint64_t from,
			   recs *out, tally_wal **wout, tally_err *err)
{
	tally_wal *w = wal_open_dir(dir, segment_size, fsync);
	int rc = tally_wal_replay(w, from, collect, out, err);
	*wout = w;
	return rc;
}

/* What a test appended. */
typedef struct sent {
	uint8_t type;
	uint64_t lsn;
	uint64_t end;
	uint32_t len;
	uint64_t seed;
} sent;

static void append_one(tally_wal *w, uint8_t type, uint32_t len, uint64_t seed, sent *s)
{
	uint8_t *p = malloc(len ? len : 1);
	fill_payload(p, len, seed);
	/* Split the payload into up to three iovecs to exercise the gathering. */
	struct iovec iov[3];
	uint32_t a = len / 3, b = len / 2;
	iov[0] = (struct iovec){p, a};
	iov[1] = (struct iovec){p + a, b - a};
	iov[2] = (struct iovec){p + b, len - b};
	tally_err err;
	uint64_t start = 0, end = 0;
	cr_assert_eq(tally_wal_append(w, type, iov, 3, &start, &end, &err), 0, "%s", err.message);
	cr_assert_eq(end - start, (uint64_t)len + TALLY_WAL_HDR);
	free(p);
	s->type = type;
	s->lsn = start;
	s->end = end;
	s->len = len;
	s->seed = seed;
}

static void check_rec(const rec *r, const sent *s)
{
	cr_assert_eq(r->lsn, s->lsn);
	cr_assert_eq(r->type, s->type, "type at lsn %llu", (unsigned long long)s->lsn);
	cr_assert_eq(r->len, s->len, "len at lsn %llu", (unsigned long long)s->lsn);
	uint8_t *p = malloc(s->len ? s->len : 1);
	fill_payload(p, s->len, s->seed);
	cr_assert(memcmp(p, r->data, s->len) == 0, "payload at lsn %llu",
		  (unsigned long long)s->lsn);
	free(p);
}

static int sent_cmp(const void *a, const void *b)
{
	uint64_t x = ((const sent *)a)->lsn, y = ((const sent *)b)->lsn;
	return x < y ? -1 : x > y;
}

static void flush_all(tally_wal *w)
{
	tally_wal_stats st;
	tally_wal_stats_get(w, &st);
	tally_err err;
	cr_assert_eq(tally_wal_flush(w, st.insert_lsn, 30000, &err), 0, "%s", err.message);
}

/* Segment file names (start LSNs) in dir, sorted. */
static size_t list_segments(const char *dir, uint64_t *starts, size_t max)
{
	DIR *d = opendir(dir);
	cr_assert_not_null(d);
	size_t n = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		unsigned long long v;
		char tail[8];
		if (strlen(de->d_name) == 20 && sscanf(de->d_name, "%16llx%5s", &v, tail) == 2 &&
		    strcmp(tail, ".wal") == 0 && n < max)
			starts[n++] = v;
	}
	closedir(d);
	for (size_t i = 1; i < n; i++)
		for (size_t j = i; j > 0 && starts[j - 1] > starts[j]; j--) {
			uint64_t t = starts[j];
			starts[j] = starts[j - 1];
			starts[j - 1] = t;
		}
	return n;
}

static void seg_path(const char *dir, uint64_t start, char *out, size_t outsz)
{
	snprintf(out, outsz, "%s/%016llx.wal", dir, (unsigned long long)start);
}

static uint8_t *read_file(const char *path, size_t *n)
{
	FILE *f = fopen(path, "rb");
	cr_assert_not_null(f, "%s", path);
	fseek(f, 0, SEEK_END);
	long sz = ftell(f);
	fseek(f, 0, SEEK_SET);
	uint8_t *p = malloc((size_t)sz + 1);
	cr_assert_eq(fread(p, 1, (size_t)sz, f), (size_t)sz);
	fclose(f);
	*n = (size_t)sz;
	return p;
}

static void write_file(const char *path, const uint8_t *p, size_t n)
{
	FILE *f = fopen(path, "wb");
	cr_assert_not_null(f, "%s", path);
	cr_assert_eq(fwrite(p, 1, n, f), n);
	fclose(f);
}

/* stderr capture, to see what the log said. */
typedef struct capture {
	int saved;
	char path[64];
} capture;

static void capture_begin(capture *c)
{
	fflush(stderr);
	snprintf(c->path, sizeof c->path, "/tmp/tally-wal-log-XXXXXX");
	int fd = mkstemp(c->path);
	cr_assert(fd >= 0);
	c->saved = dup(2);
	dup2(fd, 2);
	close(fd);
}

static char *capture_end(capture *c)
{
	fflush(stderr);
	dup2(c->saved, 2);
	close(c->saved);
	size_t n;
	char *s = (char *)read_file(c->path, &n);
	s[n] = 0;
	unlink(c->path);
	return s;
}

/* ---- concurrent round trip ---------------------------------------------------------------- */

#define RT_THREADS 4
#define RT_PER_THREAD 2500

typedef struct rt_thread {
	tally_wal *w;
	int id;
	sent s[RT_PER_THREAD];
} rt_thread;

static void *rt_main(void *arg)
{
	rt_thread *t = arg;
	uint64_t r = (uint64_t)t->id * 7919 + 1;
	for (int i = 0; i < RT_PER_THREAD; i++) {
		r = mix64(r);
		uint32_t len = (uint32_t)(r % 5001);
		uint8_t type = (uint8_t)(r >> 32);
		append_one(t->w, type, len, ((uint64_t)t->id << 32) | (uint64_t)i, &t->s[i]);
	}
	return NULL;
}

static void round_trip(bool fsync)
{
	char dir[64];
	make_dir(dir, sizeof dir);
	tally_wal *w = NULL;
	recs none = {0};
	tally_err err;
	cr_assert_eq(wal_open_replay(dir, 0, fsync, 0, &none, &w, &err), 0, "%s", err.message);
	cr_assert_eq(none.n, 0);
	tally_wal_stats st;
	tally_wal_stats_get(w, &st);
	cr_assert_eq(st.insert_lsn, 1, "a new log starts at LSN 1");

	rt_thread *th = calloc(RT_THREADS, sizeof *th);
	pthread_t tid[RT_THREADS];
	for (int i = 0; i < RT_THREADS; i++) {
		th[i].w = w;
		th[i].id = i;
		cr_assert_eq(pthread_create(&tid[i], NULL, rt_main, &th[i]), 0);
	}
	for (int i = 0; i < RT_THREADS; i++)
		pthread_join(tid[i], NULL);
	flush_all(w);
	tally_wal_stats_get(w, &st);
	uint64_t old_insert = st.insert_lsn;
	cr_assert_eq(st.flushed_lsn, old_insert);
	tally_wal_close(w);

	size_t total = RT_THREADS * RT_PER_THREAD;
	sent *all = malloc(total * sizeof *all);
	for (int i = 0; i < RT_THREADS; i++) {
		for (int k = 1; k < RT_PER_THREAD; k++)
			cr_assert_gt(th[i].s[k].lsn, th[i].s[k - 1].lsn, "per-thread order");
		memcpy(all + (size_t)i * RT_PER_THREAD, th[i].s, sizeof th[i].s);
	}
	qsort(all, total, sizeof *all, sent_cmp);
	cr_assert_eq(all[0].lsn, 1);
	for (size_t i = 1; i < total; i++)
		cr_assert_eq(all[i].lsn, all[i - 1].end, "LSNs are contiguous");

	recs got = {0};
	cr_assert_eq(wal_open_replay(dir, 0, fsync, 0, &got, &w, &err), 0, "%s", err.message);
	cr_assert_eq(got.n, total);
	for (size_t i = 0; i < total; i++) {
		if (i > 0)
			cr_assert_gt(got.v[i].lsn, got.v[i - 1].lsn);
		check_rec(&got.v[i], &all[i]);
	}
	tally_wal_stats_get(w, &st);
	cr_assert_eq(st.insert_lsn, old_insert, "the end of the log is where appends stopped");
	sent extra;
	append_one(w, 9, 33, 424242, &extra);
	cr_assert_eq(extra.lsn, old_insert);
	flush_all(w);
	tally_wal_close(w);

	recs again = {0};
	cr_assert_eq(wal_open_replay(dir, 0, fsync, old_insert, &again, &w, &err), 0, "%s",
		     err.message);
	cr_assert_eq(again.n, 1);
	check_rec(&again.v[0], &extra);
	tally_wal_close(w);

	recs_free(&got);
	recs_free(&again);
	free(all);
	free(th);
	remove_dir(dir);
}

Test(wal, concurrent_appends_round_trip_exactly, .timeout = 60)
{
	round_trip(true);
}

Test(wal, round_trip_with_fsync_off, .timeout = 60)
{
	round_trip(false);
}

Test(wal, flush_is_prompt_with_fsync_off, .timeout = 60)
{
	char dir[64];
	make_dir(dir, sizeof dir);
	tally_wal *w = NULL;
	recs none = {0};
	tally_err err;
	cr_assert_eq(wal_open_replay(dir, 0, false, 0, &none, &w, &err), 0, "%s", err.message);
	int64_t worst = 0;
	for (int i = 0; i < 200; i++) {
		sent s;
		append_one(w, 1, 100, (uint64_t)i, &s);
		int64_t t0 = tally_mono_us();
		cr_assert_eq(tally_wal_flush(w, s.end, 5000, &err), 0, "%s", err.message);
		int64_t dt = tally_mono_us() - t0;
		if (dt > worst)
			worst = dt;
	}
	/* The flusher is woken by the append; it must not wait for its 100 ms tick. */
	printf("wal: slowest flush with fsync off: %lld us\n", (long long)worst);
	cr_assert_lt(worst, 90000, "slowest flush %lld us", (long long)worst);
	tally_wal_stats st;
	tally_wal_stats_get(w, &st);
	cr_assert_eq(st.fsyncs, 0, "fsync off never fdatasyncs");
	tally_wal_close(w);
	remove_dir(dir);
}

/* ---- replay from the middle, segments, truncation ----------------------------------------- */

/* Fill a log with n records (sizes 0..maxlen) and close it. */
static sent *fill_log(const char *dir, uint64_t segment_size, size_t n, uint32_t maxlen)
{
	tally_wal *w = NULL;
	recs none = {0};
	tally_err err;
	cr_assert_eq(wal_open_replay(dir, segment_size, false, 0, &none, &w, &err), 0, "%s",
		     err.message);
	sent *s = malloc(n * sizeof *s);
	for (size_t i = 0; i < n; i++) {
		uint64_t r = mix64(i + 77);
		append_one(w, (uint8_t)r, (uint32_t)(r % (maxlen + 1)), i * 31 + 5, &s[i]);
	}
	flush_all(w);
	tally_wal_close(w);
	return s;
}

Test(wal, replay_from_middle_lsn, .timeout = 60)
{
	char dir[64];
	make_dir(dir, sizeof dir);
	size_t n = 300;
	sent *s = fill_log(dir, 0, n, 700);
	size_t k = 123;
	tally_err err;
	tally_wal *w;
	/* From a record's own LSN, and from a position inside the previous record. */
	uint64_t froms[2] = {s[k].lsn, s[k - 1].lsn + 3};
	for (int f = 0; f < 2; f++) {
		recs got = {0};
		cr_assert_eq(wal_open_replay(dir, 0, false, froms[f], &got, &w, &err), 0, "%s",
			     err.message);
		cr_assert_eq(got.n, n - k);
		for (size_t i = 0; i < got.n; i++)
			check_rec(&got.v[i], &s[k + i]);
		tally_wal_close(w);
		recs_free(&got);
	}
	/* From beyond the end: nothing, and the log still ends in the right place. */
	recs got = {0};
	cr_assert_eq(wal_open_replay(dir, 0, false, s[n - 1].end + 100, &got, &w, &err), 0);
	cr_assert_eq(got.n, 0);
	tally_wal_stats st;
	tally_wal_stats_get(w, &st);
	cr_assert_eq(st.insert_lsn, s[n - 1].end);
	tally_wal_close(w);
	free(s);
	remove_dir(dir);
}

Test(wal, segments_roll_and_truncate, .timeout = 60)
{
	char dir[64];
	make_dir(dir, sizeof dir);
	size_t n = 400;
	sent *s = fill_log(dir, 4096, n, 600);
	uint64_t starts[1024];
	size_t nseg = list_segments(dir, starts, 1024);
	cr_assert_gt(nseg, 20, "only %zu segments", nseg);
	cr_assert_eq(starts[0], 1);
	/* Each segment starts at a record and stops taking records once it reached 4 KiB. */
	for (size_t i = 0; i + 1 < nseg; i++) {
		char p[128];
		seg_path(dir, starts[i], p, sizeof p);
		struct stat st;
		cr_assert_eq(stat(p, &st), 0);
		cr_assert_eq(starts[i] + (uint64_t)st.st_size, starts[i + 1]);
		cr_assert_geq(st.st_size, 4096);
		cr_assert_lt(st.st_size, 4096 + 600 + TALLY_WAL_HDR);
	}

	tally_err err;
	tally_wal *w;
	recs got = {0};
	cr_assert_eq(wal_open_replay(dir, 4096, false, 0, &got, &w, &err), 0, "%s", err.message);
	cr_assert_eq(got.n, n);
	for (size_t i = 0; i < n; i++)
		check_rec(&got.v[i], &s[i]);
	recs_free(&got);
	tally_wal_stats st;
	tally_wal_stats_get(w, &st);
	cr_assert_eq(st.segments, nseg);

	uint64_t cut = s[250].lsn;
	tally_wal_truncate(w, cut);
	uint64_t after[1024];
	size_t nafter = list_segments(dir, after, 1024);
	/* Expected: every segment whose successor starts after cut, plus the last one. */
	size_t want = 0;
	for (size_t i = 0; i < nseg; i++) {
		if (i + 1 < nseg && starts[i + 1] <= cut)
			continue;
		cr_assert_lt(want, nafter);
		cr_assert_eq(after[want], starts[i]);
		want++;
	}
	cr_assert_eq(nafter, want);
	cr_assert_lt(nafter, nseg);
	cr_assert_leq(after[0], cut, "the segment holding cut is kept");
	tally_wal_stats_get(w, &st);
	cr_assert_eq(st.segments, nafter);
	cr_assert_eq(st.first_lsn, after[0]);
	/* Truncating everything keeps the segment being written. */
	tally_wal_truncate(w, UINT64_MAX);
	cr_assert_eq(list_segments(dir, after, 1024), 1);
	tally_wal_close(w);

	/* Restore the state after the first truncation for the replay check. */
	remove_dir(dir);
	make_dir(dir, sizeof dir);
	free(s);
	s = fill_log(dir, 4096, n, 600);
	w = wal_open_dir(dir, 4096, false);
	tally_wal_truncate(w, cut);
	cr_assert_eq(tally_wal_replay(w, cut, collect, &got, &err), 0, "%s", err.message);
	cr_assert_eq(got.n, n - 250);
	for (size_t i = 0; i < got.n; i++)
		check_rec(&got.v[i], &s[250 + i]);
	recs_free(&got);
	tally_wal_close(w);
	free(s);
	remove_dir(dir);
}

Test(wal, missing_middle_segment_is_corruption, .timeout = 60)
{
	char dir[64];
	make_dir(dir, sizeof dir);
	sent *s = fill_log(dir, 4096, 200, 600);
	uint64_t starts[256];
	size_t nseg = list_segments(dir, starts, 256);
	cr_assert_gt(nseg, 4);
	char p[128];
	seg_path(dir, starts[2], p, sizeof p);
	cr_assert_eq(unlink(p), 0);
	tally_err err;
	tally_wal *w;
	recs got = {0};
	cr_assert_neq(wal_open_replay(dir, 4096, false, 0, &got, &w, &err), 0);
	cr_assert_str_eq(err.sqlstate, "XX001");
	char name[32];
	snprintf(name, sizeof name, "%016llx.wal", (unsigned long long)starts[1]);
	cr_assert(strstr(err.message, name) != NULL, "%s", err.message);
	tally_wal_close(w);
	recs_free(&got);
	free(s);
	remove_dir(dir);
}

/* ---- torn tails and garbage --------------------------------------------------------------- */

Test(wal, torn_tail_cut_at_every_length, .timeout = 60)
{
	char dir[64];
	make_dir(dir, sizeof dir);
	size_t n = 12;
	sent *s = fill_log(dir, 0, n, 60);
	char path[128];
	seg_path(dir, 1, path, sizeof path);
	size_t full_n;
	uint8_t *full = read_file(path, &full_n);
	cr_assert_eq(full_n, s[n - 1].end - 1);
	size_t from = (size_t)(s[n - 3].lsn - 1);
	for (size_t size = from; size <= full_n; size++) {
		write_file(path, full, size);
		/* The records wholly inside the first `size` bytes survive. */
		size_t keep = 0;
		while (keep < n && s[keep].end - 1 <= size)
			keep++;
		bool boundary = keep > 0 && s[keep - 1].end - 1 == size;

		capture c;
		capture_begin(&c);
		tally_err err;
		tally_wal *w;
		recs got = {0};
		int rc = wal_open_replay(dir, 0, false, 0, &got, &w, &err);
		char *log = capture_end(&c);
		cr_assert_eq(rc, 0, "size %zu: %s", size, err.message);
		cr_assert_eq(got.n, keep, "size %zu", size);
		for (size_t i = 0; i < keep; i++)
			check_rec(&got.v[i], &s[i]);
		if (!boundary)
			cr_assert(strstr(log, "torn tail") != NULL, "size %zu: log: %s", size, log);
		else
			cr_assert(strstr(log, "torn tail") == NULL, "size %zu: log: %s", size, log);
		free(log);
		recs_free(&got);

		/* Appending continues right after the good records, with nothing in between. */
		sent x;
		append_one(w, 200, 21, 999 + size, &x);
		cr_assert_eq(x.lsn, keep ? s[keep - 1].end : 1);
		flush_all(w);
		tally_wal_close(w);
		cr_assert_eq(wal_open_replay(dir, 0, false, 0, &got, &w, &err), 0, "%s",
			     err.message);
		cr_assert_eq(got.n, keep + 1, "size %zu", size);
		check_rec(&got.v[keep], &x);
		tally_wal_close(w);
		recs_free(&got);
	}
	free(full);
	free(s);
	remove_dir(dir);
}

static void garbage_tail(bool zeros)
{
	char dir[64];
	make_dir(dir, sizeof dir);
	size_t n = 10;
	sent *s = fill_log(dir, 0, n, 300);
	char path[128];
	seg_path(dir, 1, path, sizeof path);
	size_t len;
	uint8_t *data = read_file(path, &len);
	data = realloc(data, len + 4096);
	for (size_t i = 0; i < 4096; i++)
		data[len + i] = zeros ? 0 : (uint8_t)mix64(i);
	write_file(path, data, len + 4096);

	capture c;
	capture_begin(&c);
	tally_err err;
	tally_wal *w;
	recs got = {0};
	int rc = wal_open_replay(dir, 0, false, 0, &got, &w, &err);
	char *log = capture_end(&c);
	cr_assert_eq(rc, 0, "%s", err.message);
	cr_assert_eq(got.n, n);
	for (size_t i = 0; i < n; i++)
		check_rec(&got.v[i], &s[i]);
	cr_assert(strstr(log, "4096 bytes") != NULL, "log: %s", log);
	struct stat st;
	cr_assert_eq(stat(path, &st), 0);
	cr_assert_eq((size_t)st.st_size, len, "the garbage was cut off");
	sent x;
	append_one(w, 3, 50, 4321, &x);
	cr_assert_eq(x.lsn, s[n - 1].end);
	flush_all(w);
	tally_wal_close(w);
	recs_free(&got);
	cr_assert_eq(wal_open_replay(dir, 0, false, 0, &got, &w, &err), 0, "%s", err.message);
	cr_assert_eq(got.n, n + 1);
	check_rec(&got.v[n], &x);
	tally_wal_close(w);
	recs_free(&got);
	free(log);
	free(data);
	free(s);
	remove_dir(dir);
}

Test(wal, zero_tail_is_cut, .timeout = 60)
{
	garbage_tail(true);
}

Test(wal, random_tail_is_cut, .timeout = 60)
{
	garbage_tail(false);
}

/* Flip one byte at offset off of the first segment; replay; returns its result. */
static int flip_and_replay(const char *dir, uint64_t segment_size, uint64_t seg, size_t off,
			   recs *got, tally_err *err)
{
	char path[128];
	seg_path(dir, seg, path, sizeof path);
	size_t len;
	uint8_t *data = read_file(path, &len);
	cr_assert_lt(off, len);
	data[off] ^= 0x40;
	write_file(path, data, len);
	free(data);
	tally_wal *w;
	int rc = wal_open_replay(dir, segment_size, false, 0, got, &w, err);
	tally_wal_close(w);
	return rc;
}

Test(wal, flipped_byte_in_middle_is_corruption, .timeout = 60)
{
	char dir[64];
	make_dir(dir, sizeof dir);
	sent *s = fill_log(dir, 0, 10, 300);
	/* A payload byte of record 4 (payload sizes are at least 1 here? make sure). */
	size_t k = 4;
	while (s[k].len == 0)
		k++;
	tally_err err;
	recs got = {0};
	int rc = flip_and_replay(dir, 0, 1, (size_t)(s[k].lsn - 1) + TALLY_WAL_HDR + s[k].len / 2,
				 &got, &err);
	cr_assert_neq(rc, 0);
	cr_assert_str_eq(err.sqlstate, "XX001");
	cr_assert(strstr(err.message, "0000000000000001.wal") != NULL, "%s", err.message);
	char off[32];
	snprintf(off, sizeof off, "offset %llu", (unsigned long long)(s[k].lsn - 1));
	cr_assert(strstr(err.message, off) != NULL, "%s", err.message);
	cr_assert(strstr(err.detail, "checksum") != NULL, "%s", err.detail);
	cr_assert(err.hint[0] != 0);
	recs_free(&got);
	free(s);
	remove_dir(dir);
}

Test(wal, flipped_length_in_middle_is_corruption, .timeout = 60)
{
	char dir[64];
	make_dir(dir, sizeof dir);
	sent *s = fill_log(dir, 0, 10, 300);
	tally_err err;
	recs got = {0};
	/* The low byte of record 5's length field. */
	int rc = flip_and_replay(dir, 0, 1, (size_t)(s[5].lsn - 1) + 3, &got, &err);
	cr_assert_neq(rc, 0);
	cr_assert_str_eq(err.sqlstate, "XX001");
	cr_assert(strstr(err.message, "0000000000000001.wal") != NULL, "%s", err.message);
	recs_free(&got);
	/* And the high byte: an impossible length. */
	free(s);
	remove_dir(dir);
	make_dir(dir, sizeof dir);
	s = fill_log(dir, 0, 10, 300);
	rc = flip_and_replay(dir, 0, 1, (size_t)(s[5].lsn - 1), &got, &err);
	cr_assert_neq(rc, 0);
	cr_assert_str_eq(err.sqlstate, "XX001");
	recs_free(&got);
	free(s);
	remove_dir(dir);
}

Test(wal, flipped_byte_in_last_record_is_torn_tail, .timeout = 60)
{
	char dir[64];
	make_dir(dir, sizeof dir);
	size_t n = 10;
	sent *s = fill_log(dir, 0, n, 300);
	tally_err err;
	recs got = {0};
	/* The type byte of the last record (covered by the CRC). */
	int rc = flip_and_replay(dir, 0, 1, (size_t)(s[n - 1].lsn - 1) + 8, &got, &err);
	cr_assert_eq(rc, 0, "%s", err.message);
	cr_assert_eq(got.n, n - 1);
	for (size_t i = 0; i < n - 1; i++)
		check_rec(&got.v[i], &s[i]);
	recs_free(&got);
	free(s);
	remove_dir(dir);
}

Test(wal, bad_record_before_a_later_segment_is_corruption, .timeout = 60)
{
	char dir[64];
	make_dir(dir, sizeof dir);
	sent *s = fill_log(dir, 4096, 100, 600);
	uint64_t starts[64];
	size_t nseg = list_segments(dir, starts, 64);
	cr_assert_gt(nseg, 3);
	/* The last record of the first segment: nothing after it in its file, but the next
	 * segment starts with a valid record. */
	size_t k = 0;
	while (s[k + 1].lsn < starts[1])
		k++;
	cr_assert_eq(s[k].end, starts[1]);
	tally_err err;
	recs got = {0};
	int rc = flip_and_replay(dir, 4096, 1, (size_t)(s[k].lsn - 1) + 8, &got, &err);
	cr_assert_neq(rc, 0);
	cr_assert_str_eq(err.sqlstate, "XX001");
	cr_assert(strstr(err.message, "0000000000000001.wal") != NULL, "%s", err.message);
	recs_free(&got);
	free(s);
	remove_dir(dir);
}

Test(wal, other_files_are_ignored, .timeout = 60)
{
	char dir[64];
	make_dir(dir, sizeof dir);
	sent *s = fill_log(dir, 0, 5, 100);
	char p[128];
	snprintf(p, sizeof p, "%s/README", dir);
	write_file(p, (const uint8_t *)"x", 1);
	snprintf(p, sizeof p, "%s/00000000000000zz.wal", dir);
	write_file(p, (const uint8_t *)"garbage", 7);
	tally_err err;
	tally_wal *w;
	recs got = {0};
	cr_assert_eq(wal_open_replay(dir, 0, false, 0, &got, &w, &err), 0, "%s", err.message);
	cr_assert_eq(got.n, 5);
	tally_wal_stats st;
	tally_wal_stats_get(w, &st);
	cr_assert_eq(st.segments, 1);
	tally_wal_close(w);
	recs_free(&got);
	free(s);
	remove_dir(dir);
}

/* ---- group commit, timeouts, limits, broken log ------------------------------------------- */

#define GC_THREADS 8
#define GC_ROUNDS 200

static void *gc_main(void *arg)
{
	tally_wal *w = arg;
	for (int i = 0; i < GC_ROUNDS; i++) {
		uint8_t b[64];
		memset(b, i, sizeof b);
		struct iovec iov = {b, sizeof b};
		uint64_t start, end;
		tally_err err;
		if (tally_wal_append(w, 1, &iov, 1, &start, &end, &err) != 0)
			return (void *)1;
		if (tally_wal_flush(w, end, 30000, &err) != 0)
			return (void *)1;
	}
	return NULL;
}

Test(wal, group_commit_shares_fsyncs, .timeout = 60)
{
	char dir[64];
	make_dir(dir, sizeof dir);
	tally_wal *w;
	recs none = {0};
	tally_err err;
	cr_assert_eq(wal_open_replay(dir, 0, true, 0, &none, &w, &err), 0, "%s", err.message);
	pthread_t tid[GC_THREADS];
	for (int i = 0; i < GC_THREADS; i++)
		cr_assert_eq(pthread_create(&tid[i], NULL, gc_main, w), 0);
	for (int i = 0; i < GC_THREADS; i++) {
		void *r;
		pthread_join(tid[i], &r);
		cr_assert_null(r, "a thread's append or flush failed");
	}
	tally_wal_stats st;
	tally_wal_stats_get(w, &st);
	printf("wal: group commit: %d append+flush pairs took %llu fsyncs in %llu writes\n",
	       GC_THREADS * GC_ROUNDS, (unsigned long long)st.fsyncs,
	       (unsigned long long)st.writes);
	cr_assert_eq(st.flushed_lsn, st.insert_lsn);
	cr_assert_eq(st.insert_lsn, 1 + (uint64_t)GC_THREADS * GC_ROUNDS * (64 + TALLY_WAL_HDR));
	cr_assert_gt(st.fsyncs, 0);
	cr_assert_lt(st.fsyncs, GC_THREADS * GC_ROUNDS, "fsyncs %llu",
		     (unsigned long long)st.fsyncs);
	tally_wal_close(w);
	remove_dir(dir);
}

Test(wal, flush_times_out, .timeout = 60)
{
	char dir[64];
	make_dir(dir, sizeof dir);
	tally_wal *w;
	recs none = {0};
	tally_err err;
	cr_assert_eq(wal_open_replay(dir, 0, true, 0, &none, &w, &err), 0, "%s", err.message);
	sent s;
	append_one(w, 1, 10, 1, &s);
	int64_t t0 = tally_mono_us();
	cr_assert_neq(tally_wal_flush(w, s.end + 1000, 50, &err), 0);
	int64_t dt = tally_mono_us() - t0;
	cr_assert_str_eq(err.sqlstate, "57014");
	cr_assert_geq(dt, 45000, "returned after %lld us", (long long)dt);
	cr_assert_lt(dt, 5000000, "returned after %lld us", (long long)dt);
	/* What was appended is still flushable. */
	cr_assert_eq(tally_wal_flush(w, s.end, 30000, &err), 0, "%s", err.message);
	tally_wal_close(w);
	remove_dir(dir);
}

Test(wal, oversized_record_is_rejected, .timeout = 60)
{
	char dir[64];
	make_dir(dir, sizeof dir);
	tally_wal *w;
	recs none = {0};
	tally_err err;
	cr_assert_eq(wal_open_replay(dir, 0, false, 0, &none, &w, &err), 0, "%s", err.message);
	uint8_t one = 7;
	/* Only the declared length is looked at; the 1-byte buffer is never read past. */
	struct iovec iov = {&one, (size_t)TALLY_WAL_RECORD_MAX + 1};
	uint64_t start = 77, end = 77;
	cr_assert_neq(tally_wal_append(w, 1, &iov, 1, &start, &end, &err), 0);
	cr_assert_str_eq(err.sqlstate, "54000");
	cr_assert_eq(start, 77, "out parameters untouched on failure");
	/* Two pieces that only together exceed the limit. */
	struct iovec two[2] = {{&one, TALLY_WAL_RECORD_MAX / 2 + 1},
			       {&one, TALLY_WAL_RECORD_MAX / 2}};
	cr_assert_neq(tally_wal_append(w, 1, two, 2, &start, &end, &err), 0);
	cr_assert_str_eq(err.sqlstate, "54000");
	/* The log is fine afterwards. */
	sent s;
	append_one(w, 1, 10, 1, &s);
	cr_assert_eq(s.lsn, 1);
	flush_all(w);
	tally_wal_close(w);
	remove_dir(dir);
}

Test(wal, write_error_breaks_the_log, .timeout = 60)
{
	char dir[64];
	make_dir(dir, sizeof dir);
	tally_wal *w;
	recs none = {0};
	tally_err err;
	cr_assert_eq(wal_open_replay(dir, 0, false, 0, &none, &w, &err), 0, "%s", err.message);
	/* Files may not grow past 64 KiB: the flusher's write fails with EFBIG. */
	signal(SIGXFSZ, SIG_IGN);
	struct rlimit old, lim;
	getrlimit(RLIMIT_FSIZE, &old);
	lim = old;
	lim.rlim_cur = 64 * 1024;
	cr_assert_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
	capture c;
	capture_begin(&c);
	/* The flusher may break the log while the appends still run: then they fail too. */
	uint8_t *big = calloc(1, 5000);
	struct iovec biov = {big, 5000};
	uint64_t start, end = 0;
	int rc = 0;
	for (int i = 0; i < 20 && rc == 0; i++)
		rc = tally_wal_append(w, 1, &biov, 1, &start, &end, &err);
	if (rc == 0)
		rc = tally_wal_flush(w, end, 30000, &err);
	free(big);
	char *log = capture_end(&c);
	setrlimit(RLIMIT_FSIZE, &old);
	cr_assert_neq(rc, 0);
	cr_assert_str_eq(err.sqlstate, "XX000");
	cr_assert(strstr(err.message, "could not write to write-ahead log segment") != NULL, "%s",
		  err.message);
	cr_assert(strstr(log, "broken") != NULL, "log: %s", log);
	free(log);
	uint8_t b = 1;
	struct iovec iov = {&b, 1};
	cr_assert_neq(tally_wal_append(w, 1, &iov, 1, &start, &end, &err), 0);
	cr_assert_str_eq(err.sqlstate, "XX000");
	tally_wal_close(w);

	/* What reached the disk is a log with a torn tail: the complete records come back. */
	recs got = {0};
	cr_assert_eq(wal_open_replay(dir, 0, false, 0, &got, &w, &err), 0, "%s", err.message);
	cr_assert_lt(got.n, 20);
	cr_assert_geq(got.n, 12);
	tally_wal_close(w);
	recs_free(&got);
	remove_dir(dir);
}
