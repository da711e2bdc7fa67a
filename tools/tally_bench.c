/*
 * tally_bench.c - load and read benchmarks against a running tally cluster over libpq.
 *
 *   ingest: N connections COPY pre-generated rows (k integer, v double precision) into a
 *           stream feeding one continuous view (count, sum, avg per k), then check that the
 *           view counted exactly the events sent;
 *   select: a view with G groups (filled by one COPY) read with SELECT * Q times; latency
 *           percentiles;
 *   all:    ingest, select 1000 groups and select 100000 groups, as a markdown table;
 *   soak:   ingest without end for --minutes over a fixed key space and sample, every
 *           --sample seconds, each node's resident memory and data directory size (from a
 *           local cluster directory made by tallyctl); memory and disk must level off.
 *
 * Every run ends with one JSON line (for docs/benchmarks.md). The client generates its COPY
 * text once per connection up front so that the measured time is the cluster's, not ours.
 */
#include "tally/core.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <getopt.h>
#include <libpq-fe.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BENCH_CHUNK (256 * 1024) /* bytes per PQputCopyData */
#define BENCH_MAX_CONNECTIONS 256
#define BENCH_VERIFY_WAIT_US (120 * 1000000LL)

typedef struct bench_opts {
	const char *host;
	int port;
	int connections;
	long long events;
	int groups;
	int batch;
	int queries;
	const char *prefix;
	bool groups_set;
	const char *insert_level; /* SET on every ingest connection, NULL = node default */
	double minutes;		  /* soak */
	int sample_s;		  /* soak */
	const char *cluster_dir;  /* soak: tallyctl's --dir */
	bool sequential;	  /* keys cover 0..groups-1 in turn instead of at random */
} bench_opts;

typedef struct bench_ingest_result {
	long long max_lag_records, max_lag_bytes, max_lag_ms; /* replication, sampled */
	int lag_samples;
	long long events;
	double seconds;
	double events_per_s;
	double mb_per_s;
	double visible_s; /* from the start until the view counted every event */
	long long counted;
	bool ok;
} bench_ingest_result;

typedef struct bench_select_result {
	int groups;
	int queries;
	double p50_ms, p99_ms, max_ms, mean_ms;
	long long rows;
	bool ok;
} bench_select_result;

/* ---- helpers ------------------------------------------------------------------------------- */

static uint64_t bench_rand(uint64_t *s)
{
	/* splitmix64: fast, good enough spread for keys and values */
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static void bench_quiet(void *arg, const char *message)
{
	(void)arg;
	(void)message;
}

static PGconn *bench_connect(const bench_opts *o)
{
	char ci[512];
	snprintf(ci, sizeof ci,
		 "host=%s port=%d user=tally dbname=tally application_name=tally-bench "
		 "connect_timeout=10",
		 o->host, o->port);
	PGconn *c = PQconnectdb(ci);
	if (PQstatus(c) != CONNECTION_OK) {
		fprintf(stderr, "tally-bench: could not connect to %s:%d: %s", o->host, o->port,
			PQerrorMessage(c));
		PQfinish(c);
		return NULL;
	}
	/* DROP ... IF EXISTS notices are expected noise */
	PQsetNoticeProcessor(c, bench_quiet, NULL);
	return c;
}

/* Run a statement that returns no rows; print the error and return -1 on failure. */
static int bench_exec(PGconn *c, const char *sql)
{
	PGresult *r = PQexec(c, sql);
	ExecStatusType st = PQresultStatus(r);
	if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
		fprintf(stderr, "tally-bench: %s\n  failed: %s", sql, PQresultErrorMessage(r));
		PQclear(r);
		return -1;
	}
	PQclear(r);
	return 0;
}

/* Drop then create stream <name>_s and view <name>_v (count, sum, avg of v per k). */
static int bench_shards;	      /* --shards: num_shards of the views made (0 = the default) */
static int bench_replicas = -1;	      /* --replicas: num_replicas (-1 = the default) */
static const char *bench_replication; /* --replication: the views' mode (NULL = default) */
static bool bench_hang; /* failover --hang: SIGSTOP (a hung node) instead of SIGKILL */

static int bench_create(PGconn *c, const char *name)
{
	char sql[512], with[160] = "";
	size_t wl = 0;
	if (bench_shards)
		wl +=
		    (size_t)snprintf(with + wl, sizeof with - wl, "num_shards = %d", bench_shards);
	if (bench_replicas >= 0)
		wl += (size_t)snprintf(with + wl, sizeof with - wl, "%snum_replicas = %d",
				       wl ? ", " : "", bench_replicas);
	if (bench_replication)
		wl += (size_t)snprintf(with + wl, sizeof with - wl, "%sreplication = '%s'",
				       wl ? ", " : "", bench_replication);
	if (wl) {
		char w2[200];
		snprintf(w2, sizeof w2, "WITH (%s) ", with);
		snprintf(with, sizeof with, "%s", w2);
	}
	snprintf(sql, sizeof sql, "DROP CONTINUOUS VIEW IF EXISTS %s_v", name);
	if (bench_exec(c, sql))
		return -1;
	snprintf(sql, sizeof sql, "DROP STREAM IF EXISTS %s_s", name);
	if (bench_exec(c, sql))
		return -1;
	snprintf(sql, sizeof sql, "CREATE STREAM %s_s (k integer, v double precision)", name);
	if (bench_exec(c, sql))
		return -1;
	snprintf(sql, sizeof sql,
		 "CREATE CONTINUOUS VIEW %s_v %sAS SELECT k, count(*), sum(v), avg(v) FROM %s_s "
		 "GROUP BY k",
		 name, with, name);
	return bench_exec(c, sql);
}

/* Append one row "k\tv\n" with v = random, 2 decimals. */
static void bench_row(tally_buf *b, long long k, uint64_t *seed)
{
	char row[48];
	uint64_t r = bench_rand(seed) % 100000;
	int n = snprintf(row, sizeof row, "%lld\t%llu.%02llu\n", k, (unsigned long long)(r / 100),
			 (unsigned long long)(r % 100));
	tally_buf_append(b, row, (size_t)n);
}

/* COPY the first `rows` rows of data (len bytes, rows end in '\n') into stream; chunks are cut
 * at row ends. Returns the server's row count, or -1 (err filled). */
static long long bench_copy(PGconn *c, const char *stream, const uint8_t *data, size_t len,
			    char *err, size_t errsz)
{
	char sql[256];
	snprintf(sql, sizeof sql, "COPY %s (k, v) FROM STDIN", stream);
	PGresult *r = PQexec(c, sql);
	if (PQresultStatus(r) != PGRES_COPY_IN) {
		snprintf(err, errsz, "%s: %s", sql, PQresultErrorMessage(r));
		PQclear(r);
		return -1;
	}
	PQclear(r);
	size_t off = 0;
	while (off < len) {
		size_t n = len - off;
		if (n > BENCH_CHUNK) {
			n = BENCH_CHUNK;
			while (n > 0 && data[off + n - 1] != '\n')
				n--;
			if (n == 0)
				n = BENCH_CHUNK;
		}
		if (PQputCopyData(c, (const char *)data + off, (int)n) != 1) {
			snprintf(err, errsz, "sending COPY data: %s", PQerrorMessage(c));
			return -1;
		}
		off += n;
	}
	if (PQputCopyEnd(c, NULL) != 1) {
		snprintf(err, errsz, "ending COPY: %s", PQerrorMessage(c));
		return -1;
	}
	long long count = -1;
	bool bad = false;
	while ((r = PQgetResult(c)) != NULL) {
		if (PQresultStatus(r) == PGRES_COMMAND_OK) {
			count = strtoll(PQcmdTuples(r), NULL, 10);
		} else {
			if (!bad)
				snprintf(err, errsz, "COPY %s: %s", stream,
					 PQresultErrorMessage(r));
			bad = true;
		}
		PQclear(r);
	}
	if (!bad && count < 0)
		snprintf(err, errsz, "COPY %s: no command status\n", stream);
	return bad || count < 0 ? -1 : count;
}

/* Read one numeric/bigint scalar; -1 on error. NULL reads as 0. */
static int bench_scalar(PGconn *c, const char *sql, long long *out)
{
	PGresult *r = PQexec(c, sql);
	if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1 || PQnfields(r) < 1) {
		fprintf(stderr, "tally-bench: %s\n  failed: %s", sql,
			PQresultStatus(r) == PGRES_TUPLES_OK ? "expected one row\n"
							     : PQresultErrorMessage(r));
		PQclear(r);
		return -1;
	}
	*out = PQgetisnull(r, 0, 0) ? 0 : strtoll(PQgetvalue(r, 0, 0), NULL, 10);
	PQclear(r);
	return 0;
}

/* ---- ingest -------------------------------------------------------------------------------- */

typedef struct bench_worker {
	const bench_opts *o;
	int index;
	PGconn *conn;
	tally_buf data;	  /* --batch rows of COPY text */
	long long events; /* rows this connection sends */
	long long sent;	  /* rows the server acknowledged */
	long long bytes;
	pthread_barrier_t *start;
	int *stop; /* soak: set to end the run (atomic) */
	char stream[128];
	char err[512];
} bench_worker;

static void *bench_ingest_thread(void *arg)
{
	bench_worker *w = arg;
	pthread_barrier_wait(w->start);
	int batch = w->o->batch;
	while (w->sent < w->events && !(w->stop && __atomic_load_n(w->stop, __ATOMIC_ACQUIRE))) {
		long long rows = w->events - w->sent;
		size_t len = w->data.len;
		if (rows < batch) {
			/* the last, short batch: the first `rows` rows of the buffer */
			long long seen = 0;
			for (len = 0; len < w->data.len && seen < rows; len++)
				if (w->data.data[len] == '\n')
					seen++;
		} else {
			rows = batch;
		}
		long long got =
		    bench_copy(w->conn, w->stream, w->data.data, len, w->err, sizeof w->err);
		if (got < 0)
			return NULL;
		if (got != rows) {
			snprintf(w->err, sizeof w->err, "COPY reported %lld rows, sent %lld", got,
				 rows);
			return NULL;
		}
		__atomic_add_fetch(&w->sent, rows, __ATOMIC_RELEASE);
		w->bytes += (long long)len;
	}
	return NULL;
}

/* While ingest runs: sample pipeline_cluster.replication every 100 ms (the largest lag of any
 * replica of the view). */
typedef struct lag_sampler {
	PGconn *conn;
	const char *view;
	int stop; /* atomic */
	long long max_records, max_bytes, max_ms;
	int samples;
} lag_sampler;

static void *lag_thread(void *arg)
{
	lag_sampler *ls = arg;
	char sql[256];
	snprintf(sql, sizeof sql,
		 "SELECT max(lag_records), max(lag_bytes), max(lag_ms) FROM "
		 "pipeline_cluster.replication WHERE continuous_view = '%s'",
		 ls->view);
	while (!__atomic_load_n(&ls->stop, __ATOMIC_ACQUIRE)) {
		PGresult *r = PQexec(ls->conn, sql);
		if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 &&
		    !PQgetisnull(r, 0, 0)) {
			long long v[3];
			for (int i = 0; i < 3; i++)
				v[i] = strtoll(PQgetvalue(r, 0, i), NULL, 10);
			if (v[0] > ls->max_records)
				ls->max_records = v[0];
			if (v[1] > ls->max_bytes)
				ls->max_bytes = v[1];
			if (v[2] > ls->max_ms)
				ls->max_ms = v[2];
			ls->samples++;
		}
		PQclear(r);
		usleep(100000);
	}
	return NULL;
}

static int bench_ingest(const bench_opts *o, bench_ingest_result *res)
{
	memset(res, 0, sizeof *res);
	char name[64];
	snprintf(name, sizeof name, "%s", o->prefix);
	PGconn *admin = bench_connect(o);
	if (!admin)
		return -1;
	if (bench_create(admin, name) != 0) {
		PQfinish(admin);
		return -1;
	}

	int nc = o->connections;
	bench_worker *ws = tally_xcalloc((size_t)nc, sizeof *ws);
	pthread_t *th = tally_xcalloc((size_t)nc, sizeof *th);
	pthread_barrier_t start;
	pthread_barrier_init(&start, NULL, (unsigned)nc + 1);
	int rc = -1, started = 0;
	long long per = o->events / nc, extra = o->events % nc;
	for (int i = 0; i < nc; i++) {
		bench_worker *w = &ws[i];
		w->o = o;
		w->index = i;
		w->start = &start;
		w->events = per + (i < extra ? 1 : 0);
		snprintf(w->stream, sizeof w->stream, "%s_s", name);
		uint64_t seed = 0x7a11ULL * (uint64_t)(i + 1);
		long long rows = w->events < o->batch ? w->events : o->batch;
		tally_buf_reserve(&w->data, (size_t)rows * 14);
		for (long long r = 0; r < rows; r++)
			bench_row(&w->data,
				  o->sequential
				      ? (r * nc + i) % o->groups
				      : (long long)(bench_rand(&seed) % (uint64_t)o->groups),
				  &seed);
		w->conn = bench_connect(o);
		if (!w->conn)
			goto out;
		if (o->insert_level) {
			char set[128];
			snprintf(set, sizeof set, "SET pipeline_cluster.insert_level = '%s'",
				 o->insert_level);
			if (bench_exec(w->conn, set) != 0)
				goto out;
		}
	}
	for (int i = 0; i < nc; i++) {
		if (pthread_create(&th[i], NULL, bench_ingest_thread, &ws[i]) != 0) {
			/* The threads already started wait on a barrier sized for all of them:
			 * without this one nothing can be measured, so give up at once. */
			fprintf(stderr, "tally-bench: could not start thread %d\n", i);
			exit(1);
		}
		started++;
	}
	char vname[80];
	snprintf(vname, sizeof vname, "%s_v", name);
	lag_sampler ls = {.conn = bench_connect(o), .view = vname};
	pthread_t lag_th;
	bool lagging = ls.conn && pthread_create(&lag_th, NULL, lag_thread, &ls) == 0;
	int64_t t0 = tally_mono_us();
	pthread_barrier_wait(&start);
	for (int i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	int64_t t1 = tally_mono_us();
	if (lagging) {
		__atomic_store_n(&ls.stop, 1, __ATOMIC_RELEASE);
		pthread_join(lag_th, NULL);
		res->max_lag_records = ls.max_records;
		res->max_lag_bytes = ls.max_bytes;
		res->max_lag_ms = ls.max_ms;
		res->lag_samples = ls.samples;
		if (ls.samples)
			printf("ingest: replication lag during the run (max of %d samples): %lld "
			       "records, %lld bytes, %lld ms\n",
			       ls.samples, ls.max_records, ls.max_bytes, ls.max_ms);
	}
	PQfinish(ls.conn);

	long long sent = 0, bytes = 0;
	bool failed = false;
	for (int i = 0; i < nc; i++) {
		sent += ws[i].sent;
		bytes += ws[i].bytes;
		if (ws[i].err[0]) {
			fprintf(stderr, "tally-bench: connection %d: %s", i, ws[i].err);
			if (ws[i].err[strlen(ws[i].err) - 1] != '\n')
				fputc('\n', stderr);
			failed = true;
		}
	}
	res->events = sent;
	res->seconds = (double)(t1 - t0) / 1e6;
	res->events_per_s = res->seconds > 0 ? (double)sent / res->seconds : 0;
	res->mb_per_s = res->seconds > 0 ? (double)bytes / res->seconds / 1e6 : 0;
	printf("ingest: %lld events over %d connection%s in %.3f s: %.0f events/s (%.1f MB/s of "
	       "COPY text)\n",
	       sent, nc, nc == 1 ? "" : "s", res->seconds, res->events_per_s, res->mb_per_s);
	if (failed)
		goto out;

	/* Rows are visible at every node once COPY returns: check at once, then allow a short
	 * grace period so that a lagging view is reported as such rather than as lost rows. */
	char sql[256];
	snprintf(sql, sizeof sql, "SELECT sum(count) FROM %s_v", name);
	int64_t deadline = tally_mono_us() + BENCH_VERIFY_WAIT_US;
	bool first = true;
	for (;;) {
		if (bench_scalar(admin, sql, &res->counted) != 0)
			goto out;
		if (res->counted == sent)
			break;
		if (first)
			printf("ingest: warning: right after COPY the view counted %lld of %lld "
			       "events\n",
			       res->counted, sent);
		first = false;
		if (tally_mono_us() >= deadline)
			break;
		usleep(100000);
	}
	if (res->counted != sent) {
		printf("ingest: MISMATCH: %s_v counted %lld events, %lld were sent\n", name,
		       res->counted, sent);
		goto out;
	}
	res->visible_s = (double)(tally_mono_us() - t0) / 1e6;
	printf("ingest: verified: %s_v counted %lld events (all visible %.3f s after the start)\n",
	       name, res->counted, res->visible_s);
	res->ok = true;
	rc = 0;
out:
	for (int i = 0; i < nc; i++) {
		PQfinish(ws[i].conn);
		tally_buf_free(&ws[i].data);
	}
	pthread_barrier_destroy(&start);
	free(ws);
	free(th);
	PQfinish(admin);
	return rc;
}

/* ---- select -------------------------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double percentile(const double *sorted, int n, double p)
{
	if (n == 0)
		return 0;
	int i = (int)(p * (double)n + 0.999999) - 1; /* nearest-rank */
	if (i < 0)
		i = 0;
	if (i >= n)
		i = n - 1;
	return sorted[i];
}

static int bench_select(const bench_opts *o, int groups, bench_select_result *res)
{
	memset(res, 0, sizeof *res);
	res->groups = groups;
	res->queries = o->queries;
	char name[64];
	snprintf(name, sizeof name, "%s_g%d", o->prefix, groups);
	PGconn *c = bench_connect(o);
	if (!c)
		return -1;
	int rc = -1;
	double *lat = tally_xcalloc((size_t)o->queries, sizeof *lat);
	tally_buf data = {0};
	if (bench_create(c, name) != 0)
		goto out;

	uint64_t seed = 0x5e1ecULL + (uint64_t)groups;
	for (int k = 0; k < groups; k++)
		bench_row(&data, k, &seed);
	char stream[160], err[512] = "";
	snprintf(stream, sizeof stream, "%s_s", name);
	long long got = bench_copy(c, stream, data.data, data.len, err, sizeof err);
	if (got != groups) {
		if (got < 0)
			fprintf(stderr, "tally-bench: %s", err);
		else
			fprintf(stderr, "tally-bench: COPY reported %lld rows, sent %d\n", got,
				groups);
		goto out;
	}

	char sql[256];
	snprintf(sql, sizeof sql, "SELECT * FROM %s_v", name);
	double total = 0;
	for (int q = 0; q < o->queries; q++) {
		int64_t t0 = tally_mono_us();
		PGresult *r = PQexec(c, sql);
		int64_t t1 = tally_mono_us();
		if (PQresultStatus(r) != PGRES_TUPLES_OK) {
			fprintf(stderr, "tally-bench: %s\n  failed: %s", sql,
				PQresultErrorMessage(r));
			PQclear(r);
			goto out;
		}
		int rows = PQntuples(r);
		PQclear(r);
		if (rows != groups) {
			fprintf(stderr, "tally-bench: %s returned %d rows, expected %d\n", sql,
				rows, groups);
			goto out;
		}
		res->rows += rows;
		lat[q] = (double)(t1 - t0) / 1000.0;
		total += lat[q];
	}
	qsort(lat, (size_t)o->queries, sizeof *lat, cmp_double);
	res->p50_ms = percentile(lat, o->queries, 0.50);
	res->p99_ms = percentile(lat, o->queries, 0.99);
	res->max_ms = o->queries ? lat[o->queries - 1] : 0;
	res->mean_ms = o->queries ? total / o->queries : 0;
	res->ok = true;
	printf("select: %d groups, %d queries: p50 %.2f ms, p99 %.2f ms, max %.2f ms, mean %.2f "
	       "ms; %d rows per query\n",
	       groups, o->queries, res->p50_ms, res->p99_ms, res->max_ms, res->mean_ms, groups);
	rc = 0;
out:
	tally_buf_free(&data);
	free(lat);
	PQfinish(c);
	return rc;
}

/* ---- soak ---------------------------------------------------------------------------------- */

#define SOAK_MAX_NODES 64

typedef struct soak_node {
	char name[64];
	char dir[768];
	long long rss_first, rss_max, rss_last, disk_max, disk_last;
} soak_node;

/* Bytes allocated on disk under path (st_blocks, so sparse or preallocated space counts as
 * what it really uses). */
static long long dir_bytes(const char *path)
{
	struct stat st;
	if (lstat(path, &st) != 0)
		return 0;
	long long total = (long long)st.st_blocks * 512;
	if (!S_ISDIR(st.st_mode))
		return total;
	DIR *d = opendir(path);
	struct dirent *de;
	while (d && (de = readdir(d))) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		char sub[1024];
		snprintf(sub, sizeof sub, "%s/%s", path, de->d_name);
		total += dir_bytes(sub);
	}
	if (d)
		closedir(d);
	return total;
}

/* Resident memory of the node whose ready file is in dir (bytes), -1 if not running. */
static long long node_rss(const char *dir)
{
	char path[900], line[256];
	snprintf(path, sizeof path, "%s/ready", dir);
	FILE *f = fopen(path, "r");
	long pid = -1;
	while (f && fgets(line, sizeof line, f))
		if (strncmp(line, "pid=", 4) == 0)
			pid = strtol(line + 4, NULL, 10);
	if (f)
		fclose(f);
	if (pid <= 0)
		return -1;
	snprintf(path, sizeof path, "/proc/%ld/status", pid);
	f = fopen(path, "r");
	long long kb = -1;
	while (f && fgets(line, sizeof line, f))
		if (strncmp(line, "VmRSS:", 6) == 0)
			kb = strtoll(line + 6, NULL, 10);
	if (f)
		fclose(f);
	return kb < 0 ? -1 : kb * 1024;
}

static int soak_nodes(const char *cluster_dir, soak_node *nodes)
{
	DIR *d = opendir(cluster_dir);
	if (!d) {
		fprintf(stderr, "tally-bench: cannot open cluster directory \"%s\": %s\n",
			cluster_dir, strerror(errno));
		return -1;
	}
	int n = 0;
	struct dirent *de;
	while ((de = readdir(d)) && n < SOAK_MAX_NODES) {
		char ready[1024];
		snprintf(ready, sizeof ready, "%s/%s/ready", cluster_dir, de->d_name);
		if (de->d_name[0] == '.' || access(ready, R_OK) != 0)
			continue;
		memset(&nodes[n], 0, sizeof nodes[n]);
		snprintf(nodes[n].name, sizeof nodes[n].name, "%s", de->d_name);
		snprintf(nodes[n].dir, sizeof nodes[n].dir, "%s/%s", cluster_dir, de->d_name);
		nodes[n].rss_first = -1;
		n++;
	}
	closedir(d);
	if (n == 0)
		fprintf(stderr, "tally-bench: no running node in \"%s\"\n", cluster_dir);
	return n ? n : -1;
}

static int bench_soak(const bench_opts *o, tally_buf *json)
{
	if (!o->cluster_dir) {
		fprintf(stderr, "tally-bench: soak needs --cluster-dir (tallyctl's --dir)\n");
		return -1;
	}
	soak_node nodes[SOAK_MAX_NODES];
	int nn = soak_nodes(o->cluster_dir, nodes);
	if (nn < 0)
		return -1;
	char name[64];
	snprintf(name, sizeof name, "%s", o->prefix);
	PGconn *admin = bench_connect(o);
	if (!admin || bench_create(admin, name) != 0) {
		PQfinish(admin);
		return -1;
	}
	int nc = o->connections, stop = 0, rc = -1;
	bench_worker *ws = tally_xcalloc((size_t)nc, sizeof *ws);
	pthread_t *th = tally_xcalloc((size_t)nc, sizeof *th);
	pthread_barrier_t start;
	pthread_barrier_init(&start, NULL, (unsigned)nc + 1);
	for (int i = 0; i < nc; i++) {
		bench_worker *w = &ws[i];
		w->o = o;
		w->start = &start;
		w->stop = &stop;
		w->events = LLONG_MAX;
		snprintf(w->stream, sizeof w->stream, "%s_s", name);
		uint64_t seed = 0x50a4ULL * (uint64_t)(i + 1);
		tally_buf_reserve(&w->data, (size_t)o->batch * 14);
		for (long long r = 0; r < o->batch; r++)
			bench_row(&w->data, (long long)(bench_rand(&seed) % (uint64_t)o->groups),
				  &seed);
		w->conn = bench_connect(o);
		if (!w->conn) {
			fprintf(stderr, "tally-bench: could not connect\n");
			exit(1);
		}
	}
	for (int i = 0; i < nc; i++)
		if (pthread_create(&th[i], NULL, bench_ingest_thread, &ws[i]) != 0) {
			fprintf(stderr, "tally-bench: could not start thread %d\n", i);
			exit(1);
		}
	int64_t t0 = tally_mono_us(), end = t0 + (int64_t)(o->minutes * 60e6);
	pthread_barrier_wait(&start);
	printf("soak: %d connections, %d groups, %d rows per COPY, %.1f minutes, a sample every "
	       "%d s\n",
	       nc, o->groups, o->batch, o->minutes, o->sample_s);
	long long last_events = 0;
	int64_t last_t = t0;
	for (int64_t next = t0;;) {
		int64_t now = tally_mono_us();
		if (now < next) {
			struct timespec ts = {(time_t)((next - now) / 1000000),
					      (long)((next - now) % 1000000) * 1000};
			nanosleep(&ts, NULL); /* a tool's sampling period, not a test's wait */
			continue;
		}
		long long events = 0;
		bool failed = false;
		for (int i = 0; i < nc; i++) {
			events += __atomic_load_n(&ws[i].sent, __ATOMIC_ACQUIRE);
			failed |= ws[i].err[0] != 0;
		}
		double rate = now > last_t
				  ? (double)(events - last_events) * 1e6 / (double)(now - last_t)
				  : 0;
		printf("t=%6.0fs events=%lld rate=%.0f/s", (double)(now - t0) / 1e6, events, rate);
		for (int k = 0; k < nn; k++) {
			long long rss = node_rss(nodes[k].dir), disk = dir_bytes(nodes[k].dir);
			if (nodes[k].rss_first < 0 && now > t0)
				nodes[k].rss_first = rss;
			if (rss > nodes[k].rss_max)
				nodes[k].rss_max = rss;
			if (disk > nodes[k].disk_max)
				nodes[k].disk_max = disk;
			nodes[k].rss_last = rss;
			nodes[k].disk_last = disk;
			printf(" | %s rss=%.0fMB disk=%.1fMB", nodes[k].name, (double)rss / 1e6,
			       (double)disk / 1e6);
		}
		printf("\n");
		fflush(stdout);
		last_events = events;
		last_t = now;
		if (failed || now >= end)
			break;
		next += (int64_t)o->sample_s * 1000000;
	}
	__atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
	long long sent = 0;
	bool failed = false;
	for (int i = 0; i < nc; i++) {
		pthread_join(th[i], NULL);
		sent += ws[i].sent;
		if (ws[i].err[0]) {
			fprintf(stderr, "tally-bench: connection %d: %s\n", i, ws[i].err);
			failed = true;
		}
	}
	double secs = (double)(tally_mono_us() - t0) / 1e6;
	char sql[256];
	snprintf(sql, sizeof sql, "SELECT sum(count) FROM %s_v", name);
	long long counted = -1;
	int64_t deadline = tally_mono_us() + BENCH_VERIFY_WAIT_US;
	while (bench_scalar(admin, sql, &counted) == 0 && counted != sent &&
	       tally_mono_us() < deadline)
		usleep(200000);
	bool ok = !failed && counted == sent;
	printf("soak: %lld events in %.0f s (%.0f events/s); the view counted %lld%s\n", sent, secs,
	       secs > 0 ? (double)sent / secs : 0, counted, ok ? "" : " MISMATCH");
	tally_buf_printf(json,
			 "{\"benchmark\":\"soak\",\"minutes\":%.1f,\"connections\":%d,"
			 "\"groups\":%d,\"events\":%lld,\"events_per_s\":%.0f,\"counted\":%lld,"
			 "\"nodes\":[",
			 o->minutes, nc, o->groups, sent, secs > 0 ? (double)sent / secs : 0,
			 counted);
	for (int k = 0; k < nn; k++)
		tally_buf_printf(json,
				 "%s{\"name\":\"%s\",\"rss_first\":%lld,\"rss_max\":%lld,"
				 "\"rss_last\":%lld,\"disk_max\":%lld,\"disk_last\":%lld}",
				 k ? "," : "", nodes[k].name, nodes[k].rss_first, nodes[k].rss_max,
				 nodes[k].rss_last, nodes[k].disk_max, nodes[k].disk_last);
	tally_buf_printf(json, "],\"ok\":%s}", ok ? "true" : "false");
	rc = ok ? 0 : -1;
	for (int i = 0; i < nc; i++) {
		PQfinish(ws[i].conn);
		tally_buf_free(&ws[i].data);
	}
	pthread_barrier_destroy(&start);
	free(ws);
	free(th);
	PQfinish(admin);
	return rc;
}

/* ---- failover ------------------------------------------------------------------------------ */

#define FO_MAX_OPS 200000

typedef struct fo_op {
	int64_t start_us, end_us;
	bool ok;
} fo_op;

typedef struct fo_worker {
	const bench_opts *o;
	PGconn *conn;
	bool reader;
	int stop; /* atomic */
	fo_op *ops;
	int nops;
	long long acked_rows;
	char name[64];
	int groups;
} fo_worker;

#define FO_ROWS 32 /* rows per INSERT: keys spread over every shard */

static void *fo_thread(void *arg)
{
	fo_worker *w = arg;
	tally_buf sql = {0};
	long long next = 0;
	while (!__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE) && w->nops < FO_MAX_OPS) {
		tally_buf_reset(&sql);
		if (w->reader) {
			tally_buf_printf(&sql, "SELECT sum(count) FROM %s_v", w->name);
		} else {
			tally_buf_printf(&sql, "INSERT INTO %s_s (k, v) VALUES ", w->name);
			for (int i = 0; i < FO_ROWS; i++)
				tally_buf_printf(&sql, "%s(%lld, 1)", i ? ", " : "",
						 (next++ * 7919) % w->groups);
		}
		tally_buf_putc(&sql, 0);
		fo_op *op = &w->ops[w->nops];
		op->start_us = tally_mono_us();
		PGresult *r = PQexec(w->conn, (const char *)sql.data);
		op->end_us = tally_mono_us();
		op->ok = PQresultStatus(r) == (w->reader ? PGRES_TUPLES_OK : PGRES_COMMAND_OK);
		PQclear(r);
		if (op->ok && !w->reader)
			w->acked_rows += FO_ROWS;
		w->nops++;
		if (!op->ok)
			usleep(10000); /* a failed statement returns at once: do not spin */
	}
	tally_buf_free(&sql);
	return NULL;
}

/* How long operations stalled around t: the longest gap between successful completions
 * from t on (t itself counting as one), over the 5 s after it; -1 if none succeeded. */
static double fo_recovery_s(const fo_worker *w, int64_t t, int *errors)
{
	*errors = 0;
	int64_t last = t, gap = -1;
	for (int i = 0; i < w->nops; i++) {
		if (w->ops[i].end_us < t)
			continue;
		if (!w->ops[i].ok) {
			(*errors)++;
			continue;
		}
		if (w->ops[i].end_us > t + 5000000 && gap >= 0)
			break;
		if (w->ops[i].end_us - last > gap)
			gap = w->ops[i].end_us - last;
		last = w->ops[i].end_us;
	}
	return gap < 0 ? -1 : (double)gap / 1e6;
}

static int bench_failover(const bench_opts *o, const char *victim, tally_buf *json)
{
	if (!o->cluster_dir || !victim) {
		fprintf(stderr, "tally-bench: failover needs --cluster-dir and --victim\n");
		return -1;
	}
	char path[1024];
	snprintf(path, sizeof path, "%s/%s/ready", o->cluster_dir, victim);
	FILE *f = fopen(path, "r");
	int pid = 0;
	if (!f || fscanf(f, "pid=%d", &pid) != 1 || pid <= 0) {
		fprintf(stderr, "tally-bench: cannot read the pid of %s from \"%s\"\n", victim,
			path);
		if (f)
			fclose(f);
		return -1;
	}
	fclose(f);
	PGconn *admin = bench_connect(o);
	if (!admin || bench_create(admin, o->prefix) != 0)
		return -1;
	/* every group once, then wait until the view has them */
	tally_buf fill = {0};
	uint64_t seed = 1;
	for (int k = 0; k < o->groups; k++)
		bench_row(&fill, k, &seed);
	char stream[80], sql[256];
	snprintf(stream, sizeof stream, "%s_s", o->prefix);
	char err[512];
	bench_exec(admin, "SET pipeline_cluster.insert_level = sync_commit");
	if (bench_copy(admin, stream, fill.data, fill.len, err, sizeof err) != o->groups) {
		fprintf(stderr, "tally-bench: fill: %s\n", err);
		return -1;
	}
	tally_buf_free(&fill);
	fo_worker ws[2];
	pthread_t th[2];
	for (int i = 0; i < 2; i++) {
		memset(&ws[i], 0, sizeof ws[i]);
		ws[i].o = o;
		ws[i].reader = i == 1;
		ws[i].groups = o->groups;
		snprintf(ws[i].name, sizeof ws[i].name, "%s", o->prefix);
		ws[i].ops = tally_xcalloc(FO_MAX_OPS, sizeof *ws[i].ops);
		ws[i].conn = bench_connect(o);
		if (!ws[i].conn)
			return -1;
		bench_exec(ws[i].conn, i == 0 ? "SET pipeline_cluster.insert_level = sync_commit"
					      : "SET pipeline_cluster.primary_only = off");
	}
	for (int i = 0; i < 2; i++)
		pthread_create(&th[i], NULL, fo_thread, &ws[i]);
	usleep(2000000);
	int64_t t_kill = tally_mono_us();
	int sig = bench_hang ? SIGSTOP : SIGKILL;
	if (kill(pid, sig) != 0) {
		fprintf(stderr, "tally-bench: kill %d: %s\n", pid, strerror(errno));
		return -1;
	}
	printf("failover: %s %s (pid %d) under load\n", bench_hang ? "stopped" : "killed", victim,
	       pid);
	usleep((useconds_t)(o->minutes > 0 && o->minutes < 1 ? o->minutes * 60e6 : 8e6));
	for (int i = 0; i < 2; i++) {
		__atomic_store_n(&ws[i].stop, 1, __ATOMIC_RELEASE);
		pthread_join(th[i], NULL);
	}
	if (bench_hang)
		kill(pid, SIGCONT);
	int werr, rerr;
	double w_s = fo_recovery_s(&ws[0], t_kill, &werr);
	double r_s = fo_recovery_s(&ws[1], t_kill, &rerr);
	int wafter = 0, rafter = 0;
	for (int i = 0; i < ws[0].nops; i++)
		wafter += ws[0].ops[i].start_us > t_kill && ws[0].ops[i].ok;
	for (int i = 0; i < ws[1].nops; i++)
		rafter += ws[1].ops[i].start_us > t_kill && ws[1].ops[i].ok;
	printf("failover: writes (%d-row INSERTs at sync_commit) stalled at most %.3f s after the "
	       "kill (%d failed statements, %d succeeded after it)\n",
	       FO_ROWS, w_s, werr, wafter);
	printf("failover: reads (primary_only = off) stalled at most %.3f s after the kill (%d "
	       "failed, %d succeeded after it)\n",
	       r_s, rerr, rafter);
	snprintf(sql, sizeof sql, "SELECT sum(count) FROM %s_v", o->prefix);
	long long counted = -1;
	bench_scalar(admin, sql, &counted);
	printf("failover: the view counts %lld of %lld acknowledged rows now (in-doubt hints "
	       "are counted once %s is back)\n",
	       counted, (long long)o->groups + ws[0].acked_rows, victim);
	tally_buf_printf(json,
			 "{\"benchmark\":\"failover\",\"victim\":\"%s\",\"signal\":\"%s\","
			 "\"write_recovery_s\":%.3f,"
			 "\"read_recovery_s\":%.3f,\"write_errors\":%d,\"read_errors\":%d,"
			 "\"writes_after\":%d,\"reads_after\":%d,\"acked_rows\":%lld,"
			 "\"counted\":%lld}",
			 victim, bench_hang ? "SIGSTOP" : "SIGKILL", w_s, r_s, werr, rerr, wafter,
			 rafter, (long long)o->groups + ws[0].acked_rows, counted);
	for (int i = 0; i < 2; i++) {
		PQfinish(ws[i].conn);
		free(ws[i].ops);
	}
	PQfinish(admin);
	return w_s >= 0 && r_s >= 0 ? 0 : -1;
}

/* ---- output -------------------------------------------------------------------------------- */

static void json_ingest(tally_buf *b, const bench_opts *o, const bench_ingest_result *r)
{
	tally_buf_printf(b,
			 "{\"connections\":%d,\"events\":%lld,\"groups\":%d,\"batch\":%d,"
			 "\"insert_level\":\"%s\",\"seconds\":%.3f,\"events_per_s\":%.0f,"
			 "\"mb_per_s\":%.2f,\"visible_s\":%.3f,\"counted\":%lld,\"ok\":%s,"
			 "\"num_replicas\":%d,\"replication\":\"%s\",\"max_lag_records\":%lld,"
			 "\"max_lag_bytes\":%lld,\"max_lag_ms\":%lld}",
			 o->connections, r->events, o->groups, o->batch,
			 o->insert_level ? o->insert_level : "default", r->seconds, r->events_per_s,
			 r->mb_per_s, r->visible_s, r->counted, r->ok ? "true" : "false",
			 bench_replicas, bench_replication ? bench_replication : "default",
			 r->max_lag_records, r->max_lag_bytes, r->max_lag_ms);
}

static void json_select(tally_buf *b, const bench_select_result *r)
{
	tally_buf_printf(b,
			 "{\"groups\":%d,\"queries\":%d,\"p50_ms\":%.3f,\"p99_ms\":%.3f,"
			 "\"max_ms\":%.3f,\"mean_ms\":%.3f,\"rows\":%lld,\"ok\":%s}",
			 r->groups, r->queries, r->p50_ms, r->p99_ms, r->max_ms, r->mean_ms,
			 r->rows, r->ok ? "true" : "false");
}

static void json_print(tally_buf *b)
{
	tally_buf_putc(b, 0);
	printf("%s\n", (const char *)b->data);
	tally_buf_free(b);
}

/* ---- command line -------------------------------------------------------------------------- */

static const char *usage =
    "usage: tally-bench ingest [--host H] [--port P] [--connections 4] [--events 10000000]\n"
    "                          [--groups 1000] [--batch 100000] [--view-prefix b]\n"
    "       tally-bench select [--host H] [--port P] [--groups 1000] [--queries 200]\n"
    "                          [--view-prefix b]\n"
    "       tally-bench all    [options of both]\n"
    "       tally-bench soak   --cluster-dir DIR [--minutes 30] [--sample 60] [ingest options]\n"
    "       tally-bench failover --cluster-dir DIR --victim NODE [--hang] [--groups 1000]\n"
    "\n"
    "ingest  COPY --events rows (k integer, v double precision; k in 0..groups-1) over\n"
    "        --connections connections, --batch rows per COPY, into stream <prefix>_s feeding\n"
    "        view <prefix>_v (count, sum, avg per k); report events/s and check the view\n"
    "        counted every event (exit 1 if not).\n"
    "select  fill view <prefix>_g<groups>_v with --groups groups by one COPY, then run\n"
    "        SELECT * on it --queries times; report p50/p99/max latency.\n"
    "all     ingest, select 1000 groups, select 100000 groups; a markdown table.\n"
    "soak    ingest without end for --minutes into view <prefix>_v (keys 0..groups-1) and\n"
    "        print every --sample seconds each node's resident memory and data directory\n"
    "        size (nodes found in DIR, as tallyctl up --dir DIR made it); at the end check\n"
    "        the view counted every event.\n"
    "failover  fill view <prefix>_v with --groups groups, then one client INSERTs 32 rows\n"
    "        per statement (sync_commit) and one reads the view (primary_only = off) without\n"
    "        pause; after 2 s kill -9 NODE (pid from DIR/NODE/ready) and report the longest\n"
    "        stall of writes and of reads in the 5 s after it (8 s of load after the kill);\n"
    "        with --hang SIGSTOP it instead (a hung node) and SIGCONT it at the end.\n"
    "\n"
    "--insert-level L  SET pipeline_cluster.insert_level = L on every ingest connection\n"
    "                  (sync_receive, sync_commit or async); events/s counts acknowledged\n"
    "                  rows, visible_s when the view had them all.\n"
    "--shards N        num_shards of the views the tool creates (default: the cluster's)\n"
    "--replicas N      num_replicas of the views the tool creates (default: the cluster's)\n"
    "--replication M   replication mode of those views (async, sync or quorum)\n"
    "--sequential-keys ingest: row r of connection c has k = (r * connections + c) mod\n"
    "                  groups, so connections x batch >= groups rows fill every group\n"
    "                  (default: k at random).\n"
    "\n"
    "Defaults: --host 127.0.0.1 --port 6432. The last output line is the result as JSON.\n"
    "Existing streams and views of the same names are dropped first.\n";

enum {
	OPT_HOST = 1000,
	OPT_PORT,
	OPT_CONN,
	OPT_EVENTS,
	OPT_GROUPS,
	OPT_BATCH,
	OPT_QUERIES,
	OPT_PREFIX,
	OPT_LEVEL,
	OPT_MINUTES,
	OPT_SAMPLE,
	OPT_CLUSTER_DIR,
	OPT_SEQUENTIAL,
	OPT_SHARDS,
	OPT_REPLICAS,
	OPT_REPLICATION,
	OPT_VICTIM,
	OPT_HANG
};

static const char *bench_victim; /* failover: the node killed */

static int parse_ll(const char *s, long long min, long long max, long long *out)
{
	char *end;
	errno = 0;
	long long v = strtoll(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

static bool valid_prefix(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 40 || !((s[0] >= 'a' && s[0] <= 'z') || s[0] == '_'))
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
			return false;
	return true;
}

static int parse_args(int argc, char **argv, bench_opts *o)
{
	static const struct option longopts[] = {
	    {"host", required_argument, NULL, OPT_HOST},
	    {"port", required_argument, NULL, OPT_PORT},
	    {"connections", required_argument, NULL, OPT_CONN},
	    {"events", required_argument, NULL, OPT_EVENTS},
	    {"groups", required_argument, NULL, OPT_GROUPS},
	    {"batch", required_argument, NULL, OPT_BATCH},
	    {"queries", required_argument, NULL, OPT_QUERIES},
	    {"view-prefix", required_argument, NULL, OPT_PREFIX},
	    {"insert-level", required_argument, NULL, OPT_LEVEL},
	    {"minutes", required_argument, NULL, OPT_MINUTES},
	    {"sample", required_argument, NULL, OPT_SAMPLE},
	    {"cluster-dir", required_argument, NULL, OPT_CLUSTER_DIR},
	    {"sequential-keys", no_argument, NULL, OPT_SEQUENTIAL},
	    {"shards", required_argument, NULL, OPT_SHARDS},
	    {"replicas", required_argument, NULL, OPT_REPLICAS},
	    {"replication", required_argument, NULL, OPT_REPLICATION},
	    {"victim", required_argument, NULL, OPT_VICTIM},
	    {"hang", no_argument, NULL, OPT_HANG},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	optind = 1;
	opterr = 0;
	int ch;
	long long v;
	while ((ch = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
		const char *bad = NULL, *range = NULL;
		switch (ch) {
		case 'h':
			fputs(usage, stdout);
			return 1;
		case OPT_HOST:
			o->host = optarg;
			break;
		case OPT_PORT:
			if (parse_ll(optarg, 1, 65535, &v))
				bad = "--port", range = "1..65535";
			o->port = (int)v;
			break;
		case OPT_CONN:
			if (parse_ll(optarg, 1, BENCH_MAX_CONNECTIONS, &v))
				bad = "--connections", range = "1..256";
			o->connections = (int)v;
			break;
		case OPT_EVENTS:
			if (parse_ll(optarg, 1, 1000000000000LL, &v))
				bad = "--events", range = "1..10^12";
			o->events = v;
			break;
		case OPT_GROUPS:
			if (parse_ll(optarg, 1, 100000000, &v))
				bad = "--groups", range = "1..10^8";
			o->groups = (int)v;
			o->groups_set = true;
			break;
		case OPT_BATCH:
			if (parse_ll(optarg, 1, 10000000, &v))
				bad = "--batch", range = "1..10^7";
			o->batch = (int)v;
			break;
		case OPT_QUERIES:
			if (parse_ll(optarg, 1, 1000000, &v))
				bad = "--queries", range = "1..10^6";
			o->queries = (int)v;
			break;
		case OPT_PREFIX:
			if (!valid_prefix(optarg))
				bad = "--view-prefix", range =
							   "a lower-case identifier of at most 40 "
							   "characters";
			o->prefix = optarg;
			break;
		case OPT_LEVEL:
			if (strcmp(optarg, "sync_receive") && strcmp(optarg, "sync_commit") &&
			    strcmp(optarg, "async"))
				bad = "--insert-level",
				range = "sync_receive, sync_commit or async";
			o->insert_level = optarg;
			break;
		case OPT_MINUTES: {
			char *end;
			double m = strtod(optarg, &end);
			if (end == optarg || *end || !(m > 0 && m <= 100000))
				bad = "--minutes", range = "a positive number";
			o->minutes = m;
			break;
		}
		case OPT_SAMPLE:
			if (parse_ll(optarg, 1, 86400, &v))
				bad = "--sample", range = "1..86400";
			o->sample_s = (int)v;
			break;
		case OPT_CLUSTER_DIR:
			o->cluster_dir = optarg;
			break;
		case OPT_SEQUENTIAL:
			o->sequential = true;
			break;
		case OPT_SHARDS:
			if (parse_ll(optarg, 1, 1024, &v))
				bad = "--shards", range = "1..1024";
			bench_shards = (int)v;
			break;
		case OPT_REPLICAS:
			if (parse_ll(optarg, 0, 15, &v))
				bad = "--replicas", range = "0..15";
			bench_replicas = (int)v;
			break;
		case OPT_REPLICATION:
			if (strcmp(optarg, "async") && strcmp(optarg, "sync") &&
			    strcmp(optarg, "quorum"))
				bad = "--replication", range = "async, sync or quorum";
			bench_replication = optarg;
			break;
		case OPT_HANG:
			bench_hang = true;
			break;
		case OPT_VICTIM:
			if (!valid_prefix(optarg))
				bad = "--victim", range = "a node name";
			bench_victim = optarg;
			break;
		case ':':
			fprintf(stderr, "tally-bench: option %s needs a value\n", argv[optind - 1]);
			return 2;
		default:
			fprintf(stderr, "tally-bench: unknown option %s\n", argv[optind - 1]);
			fprintf(stderr, "Try 'tally-bench --help'.\n");
			return 2;
		}
		if (bad) {
			fprintf(stderr, "tally-bench: invalid %s \"%s\" (expected %s)\n", bad,
				optarg, range);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "tally-bench: unexpected argument \"%s\"\n", argv[optind]);
		return 2;
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fputs(usage, stderr);
		return 2;
	}
	const char *cmd = argv[1];
	if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
		fputs(usage, stdout);
		return 0;
	}
	bench_opts o = {.host = "127.0.0.1",
			.port = 6432,
			.connections = 4,
			.events = 10000000,
			.groups = 1000,
			.batch = 100000,
			.queries = 200,
			.prefix = "b",
			.minutes = 30,
			.sample_s = 60};
	int rc = parse_args(argc - 1, argv + 1, &o);
	if (rc)
		return rc == 1 ? 0 : 2;
	tally_buf json = {0};

	if (strcmp(cmd, "ingest") == 0) {
		bench_ingest_result r;
		rc = bench_ingest(&o, &r);
		tally_buf_printf(&json, "{\"benchmark\":\"ingest\",\"ingest\":");
		json_ingest(&json, &o, &r);
		tally_buf_printf(&json, "}");
		json_print(&json);
		return rc ? 1 : 0;
	}
	if (strcmp(cmd, "select") == 0) {
		bench_select_result r;
		rc = bench_select(&o, o.groups, &r);
		tally_buf_printf(&json, "{\"benchmark\":\"select\",\"select\":[");
		json_select(&json, &r);
		tally_buf_printf(&json, "]}");
		json_print(&json);
		return rc ? 1 : 0;
	}
	if (strcmp(cmd, "all") == 0) {
		bench_ingest_result ir;
		bench_select_result sr[2];
		int sizes[2] = {1000, 100000};
		int failed = bench_ingest(&o, &ir) != 0;
		for (int i = 0; i < 2; i++)
			failed |= bench_select(&o, sizes[i], &sr[i]) != 0;

		printf("\n| benchmark | setup | result |\n|---|---|---|\n");
		printf("| ingest (COPY) | %d connections, %lld events, %d groups, %d rows per COPY "
		       "| %.0f events/s (%.2f s)%s |\n",
		       o.connections, ir.events, o.groups, o.batch, ir.events_per_s, ir.seconds,
		       ir.ok ? "" : " FAILED");
		for (int i = 0; i < 2; i++)
			printf("| select * | %d groups, %d queries | p50 %.2f ms, p99 %.2f ms, max "
			       "%.2f ms%s |\n",
			       sizes[i], o.queries, sr[i].p50_ms, sr[i].p99_ms, sr[i].max_ms,
			       sr[i].ok ? "" : " FAILED");
		printf("\n");

		tally_buf_printf(&json, "{\"benchmark\":\"all\",\"ingest\":");
		json_ingest(&json, &o, &ir);
		tally_buf_printf(&json, ",\"select\":[");
		for (int i = 0; i < 2; i++) {
			if (i)
				tally_buf_printf(&json, ",");
			json_select(&json, &sr[i]);
		}
		tally_buf_printf(&json, "]}");
		json_print(&json);
		return failed ? 1 : 0;
	}
	if (strcmp(cmd, "failover") == 0) {
		rc = bench_failover(&o, bench_victim, &json);
		json_print(&json);
		return rc ? 1 : 0;
	}
	if (strcmp(cmd, "soak") == 0) {
		rc = bench_soak(&o, &json);
		json_print(&json);
		return rc ? 1 : 0;
	}
	fprintf(stderr, "tally-bench: unknown command \"%s\"\n", cmd);
	fputs(usage, stderr);
	return 2;
}
