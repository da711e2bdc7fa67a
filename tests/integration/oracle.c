/*
 * oracle.c - the oracle test: the same random events go into a tally cluster (through several
 * libpq connections to different nodes, mixing COPY text, COPY CSV and multi-row INSERT) and
 * into a table of a real PostgreSQL 15; every continuous view's `SELECT *` must then equal
 * PostgreSQL's `SELECT ... FROM t [WHERE] GROUP BY ...` over the table, value for value (floats
 * within 1e-9), at every node. A few reads with WHERE / ORDER BY / LIMIT / OFFSET and
 * aggregates over view rows are compared the same way.
 *
 * The events are deterministic (fixed-seed xorshift) and cover NULLs in every column, negative
 * and extreme integers, bigints near +-9.2e18, ~1500 distinct texts including ones that need
 * quoting or escaping in every input format, and timestamps spread over ten days.
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NEVENTS 100000
#define NEVENTS2 20000
#define CHUNK 2000

typedef struct event {
	int32_t k;
	double v;
	int64_t n;
	int64_t ts_us; /* microseconds since the Unix epoch */
	char g[32];
	bool knull, gnull, vnull, nnull, tsnull;
} event;

typedef struct event2 {
	int16_t s;
	float r;
	bool b;
	int32_t k;
	bool snull, rnull, bnull;
} event2;

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;

static uint64_t rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

static uint64_t rnd(uint64_t n)
{
	return rng() % n;
}

static void gen_events(event *ev, int n)
{
	static const char *special[] = {"g,comma",
					"g\"quote",
					"g'apos",
					"g\\back",
					"g\ttab",
					"\xc3\xbc-umlaut",
					"\xe6\x97\xa5\xe6\x9c\xac",
					"G-upper",
					" g space",
					"g|pipe"};
	const int64_t base = 1709251200LL; /* 2024-03-01 00:00:00 UTC */
	for (int i = 0; i < n; i++) {
		event *e = &ev[i];
		memset(e, 0, sizeof *e);
		uint64_t p = rnd(100);
		if (p < 85)
			e->k = (int32_t)rnd(50);
		else if (p < 95)
			e->k = (int32_t)rnd(1000) - 500;
		else if (p < 98)
			e->k =
			    rnd(2) ? 2147483647 - (int32_t)rnd(10) : -2147483647 + (int32_t)rnd(10);
		else
			e->knull = true;
		p = rnd(100);
		if (p < 2)
			e->gnull = true;
		else if (p < 3)
			snprintf(e->g, sizeof e->g, "%s",
				 special[rnd(sizeof special / sizeof *special)]);
		else
			snprintf(e->g, sizeof e->g, "g%u", (unsigned)rnd(1500));
		p = rnd(100);
		if (p < 90)
			e->v = ((double)(int64_t)(rng() >> 11) / (double)(1ull << 53)) * 2000.0 -
			       1000.0;
		else if (p < 95)
			e->v = ((double)(int64_t)(rng() >> 11) / (double)(1ull << 53) - 0.5) * 2e-3;
		else if (p < 97)
			e->v = (double)((int64_t)rnd(2001) - 1000);
		else
			e->vnull = true;
		p = rnd(100);
		if (p < 50)
			e->n = (int64_t)rnd(1000) - 500;
		else if (p < 80)
			e->n = (int64_t)(rng() >> 24) - (int64_t)(1ull << 39);
		else if (p < 95)
			e->n = rnd(2) ? INT64_MAX - (int64_t)rnd(1000)
				      : -INT64_MAX + (int64_t)rnd(1000);
		else
			e->nnull = true;
		p = rnd(100);
		if (p < 3) {
			e->tsnull = true;
		} else {
			e->ts_us = (base + (int64_t)rnd(10 * 86400)) * 1000000LL;
			if (p < 50)
				e->ts_us += (int64_t)rnd(1000000);
		}
	}
}

static void gen_events2(event2 *ev, int n)
{
	for (int i = 0; i < n; i++) {
		event2 *e = &ev[i];
		memset(e, 0, sizeof *e);
		e->snull = rnd(100) < 3;
		e->s = (int16_t)((int)rnd(2001) - 1000);
		e->rnull = rnd(100) < 3;
		e->r = (float)((int)rnd(401) - 200) * 0.25f; /* exact in float4, sums too */
		e->bnull = rnd(100) < 2;
		e->b = rnd(2);
		e->k = (int32_t)rnd(20);
	}
}

/* ---- encodings ----------------------------------------------------------------------------- */

static void fmt_ts(char *out, size_t outsz, int64_t us)
{
	time_t s = (time_t)(us / 1000000);
	struct tm tm;
	gmtime_r(&s, &tm);
	int frac = (int)(us % 1000000);
	size_t n = strftime(out, outsz, "%Y-%m-%d %H:%M:%S", &tm);
	if (frac)
		n += (size_t)snprintf(out + n, outsz - n, ".%06d", frac);
	snprintf(out + n, outsz - n, "+00");
}

typedef enum { ENC_COPY_TEXT, ENC_CSV, ENC_SQL } encoding;

/* Append one value of text g in the given encoding. */
static void put_text(tally_buf *b, const char *g, encoding enc)
{
	if (enc == ENC_COPY_TEXT) {
		for (const char *p = g; *p; p++) {
			if (*p == '\\')
				tally_buf_append(b, "\\\\", 2);
			else if (*p == '\t')
				tally_buf_append(b, "\\t", 2);
			else if (*p == '\n')
				tally_buf_append(b, "\\n", 2);
			else
				tally_buf_putc(b, (uint8_t)*p);
		}
	} else {
		char q = enc == ENC_CSV ? '"' : '\'';
		tally_buf_putc(b, (uint8_t)q);
		for (const char *p = g; *p; p++) {
			if (*p == q)
				tally_buf_putc(b, (uint8_t)q);
			tally_buf_putc(b, (uint8_t)*p);
		}
		tally_buf_putc(b, (uint8_t)q);
	}
}

static void put_null(tally_buf *b, encoding enc)
{
	if (enc == ENC_COPY_TEXT)
		tally_buf_append(b, "\\N", 2);
	else if (enc == ENC_SQL)
		tally_buf_append(b, "NULL", 4);
	/* CSV: an empty unquoted field */
}

/* Columns in the order given by `order` (a string of letters k g v n t). */
static void put_event(tally_buf *b, const event *e, encoding enc, const char *order)
{
	char sep = enc == ENC_COPY_TEXT ? '\t' : ',';
	if (enc == ENC_SQL)
		tally_buf_putc(b, '(');
	for (const char *o = order; *o; o++) {
		if (o != order)
			tally_buf_putc(b, (uint8_t)sep);
		char tmp[64];
		switch (*o) {
		case 'k':
			if (e->knull)
				put_null(b, enc);
			else
				tally_buf_printf(b, "%d", e->k);
			break;
		case 'g':
			if (e->gnull)
				put_null(b, enc);
			else
				put_text(b, e->g, enc);
			break;
		case 'v':
			if (e->vnull)
				put_null(b, enc);
			else
				tally_buf_printf(b, "%.17g", e->v);
			break;
		case 'n':
			if (e->nnull)
				put_null(b, enc);
			else
				tally_buf_printf(b, "%lld", (long long)e->n);
			break;
		case 't':
			if (e->tsnull) {
				put_null(b, enc);
			} else {
				fmt_ts(tmp, sizeof tmp, e->ts_us);
				if (enc == ENC_SQL)
					tally_buf_printf(b, "'%s'", tmp);
				else
					tally_buf_printf(b, "%s", tmp);
			}
			break;
		}
	}
	if (enc == ENC_SQL)
		tally_buf_putc(b, ')');
	else
		tally_buf_putc(b, '\n');
}

static void put_event2(tally_buf *b, const event2 *e, encoding enc)
{
	char sep = enc == ENC_COPY_TEXT ? '\t' : ',';
	if (enc == ENC_SQL)
		tally_buf_putc(b, '(');
	if (e->snull)
		put_null(b, enc);
	else
		tally_buf_printf(b, "%d", e->s);
	tally_buf_putc(b, (uint8_t)sep);
	if (e->rnull)
		put_null(b, enc);
	else
		tally_buf_printf(b, "%.9g", (double)e->r);
	tally_buf_putc(b, (uint8_t)sep);
	if (e->bnull)
		put_null(b, enc);
	else
		tally_buf_printf(b, "%s", e->b ? "true" : "false");
	tally_buf_putc(b, (uint8_t)sep);
	tally_buf_printf(b, "%d", e->k);
	tally_buf_putc(b, enc == ENC_SQL ? ')' : '\n');
}

static void buf_nul(tally_buf *b)
{
	tally_buf_putc(b, 0);
	b->len--;
}

/* Start sending events [from, to) over conn using method m without waiting for the
 * outcome: COPY text, COPY CSV (columns reordered, with a header) or one query string of
 * 500-row INSERTs. th_finish_chunk collects the result, so several nodes work at once. */
static void start_chunk(PGconn *conn, const event *ev, int from, int to, int m)
{
	tally_buf b = {0};
	if (m == 0 || m == 1) {
		const char *sql = m == 0 ? "COPY ev (k, g, v, n, ts) FROM STDIN"
					 : "COPY ev (ts, n, v, g, k) FROM STDIN WITH (FORMAT csv, "
					   "HEADER)";
		if (m == 1)
			tally_buf_printf(&b, "ts,n,v,g,k\n");
		for (int i = from; i < to; i++)
			put_event(&b, &ev[i], m == 0 ? ENC_COPY_TEXT : ENC_CSV,
				  m == 0 ? "kgvnt" : "tnvgk");
		cr_assert(PQsendQuery(conn, sql), "%s", PQerrorMessage(conn));
		PGresult *r = PQgetResult(conn);
		cr_assert_eq(PQresultStatus(r), PGRES_COPY_IN, "%s: %s", sql,
			     PQresultErrorMessage(r));
		PQclear(r);
		for (size_t off = 0; off < b.len; off += 65536) {
			size_t n = b.len - off < 65536 ? b.len - off : 65536;
			cr_assert_eq(PQputCopyData(conn, (const char *)b.data + off, (int)n), 1);
		}
		cr_assert_eq(PQputCopyEnd(conn, NULL), 1);
	} else {
		for (int s = from; s < to; s += 500) {
			int e = s + 500 < to ? s + 500 : to;
			tally_buf_printf(&b, "INSERT INTO ev (g, k, n, ts, v) VALUES ");
			for (int i = s; i < e; i++) {
				if (i > s)
					tally_buf_putc(&b, ',');
				put_event(&b, &ev[i], ENC_SQL, "gkntv");
			}
			tally_buf_printf(&b, ";\n");
		}
		buf_nul(&b);
		cr_assert(PQsendQuery(conn, (const char *)b.data), "%s", PQerrorMessage(conn));
	}
	tally_buf_free(&b);
}

/* Collect the results of a started chunk: every one must succeed, and their row counts
 * (from the command tags) must add up to rows. */
static void finish_chunk(PGconn *conn, int rows)
{
	long total = 0;
	PGresult *r;
	while ((r = PQgetResult(conn)) != NULL) {
		cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "ingest failed: %s",
			     PQresultErrorMessage(r));
		const char *tag = PQcmdStatus(r);
		const char *num = strrchr(tag, ' ');
		cr_assert(num &&
			      (strncmp(tag, "COPY ", 5) == 0 || strncmp(tag, "INSERT 0 ", 9) == 0),
			  "tag %s", tag);
		total += atol(num + 1);
		PQclear(r);
	}
	cr_assert_eq(total, rows, "ingest acknowledged %ld rows, want %d", total, rows);
}

/* The views under test and the oracle's equivalent query over table ev/ev2. */
static const struct {
	const char *name, *with, *select, *oracle;
	int keys[2], nkeys;
} views[] = {
    {"o1",
     "num_shards = 4, sharding_policy = 'read_optimized'",
     "SELECT k, count(*), count(v) AS cv, sum(k) AS sk, sum(n) AS sn, sum(v) AS sv, "
     "avg(k) AS ak, avg(n) AS an, avg(v) AS av, min(v) AS minv, max(v) AS maxv, "
     "min(n) AS minn, max(n) AS maxn, min(g) AS ming, max(g) AS maxg, min(ts) AS mints, "
     "max(ts) AS maxts FROM ev GROUP BY k",
     NULL,
     {0},
     1},
    {"o2",
     "num_shards = 3, sharding_policy = 'write_optimized'",
     "SELECT g, count(*), sum(v), min(k), max(k), avg(n), count(ts) AS cts FROM ev WHERE v > 0 "
     "GROUP BY g",
     NULL,
     {0},
     1},
    {"o3",
     "num_shards = 2, num_replicas = 1",
     "SELECT date_trunc('hour', ts) AS h, count(*), count(n) AS cn, sum(n), min(ts), max(ts), "
     "max(g) AS maxg FROM ev WHERE k >= 10 GROUP BY h",
     NULL,
     {0},
     1},
    {"o4",
     "num_shards = 5, sharding_policy = 'write_optimized'",
     "SELECT k, date_trunc('day', ts) AS d, count(*), sum(k), min(g), max(g), avg(v) FROM ev "
     "WHERE n < 0 GROUP BY k, d",
     NULL,
     {0, 1},
     2},
    {"o5",
     "num_shards = 3",
     "SELECT b, k, count(*), sum(s), sum(r) AS sr, min(r), max(r), avg(s), avg(r) AS ar, "
     "min(s) AS mins, max(s) AS maxs FROM ev2 GROUP BY b, k",
     NULL,
     {0, 1},
     2},
};

/* Reads over views and the oracle's equivalents; keys NULL/-1 = compare in order. */
static const struct {
	const char *cluster, *oracle;
	int keys[2], nkeys;
} reads[] = {
    {"SELECT k, count FROM o1 WHERE count > 100 ORDER BY count DESC, k LIMIT 10",
     "SELECT k, count(*) FROM ev GROUP BY k HAVING count(*) > 100 ORDER BY 2 DESC, 1 LIMIT 10",
     {0},
     -1},
    {"SELECT g, sum, count FROM o2 WHERE g = 'g17'",
     "SELECT g, sum(v), count(*) FROM ev WHERE v > 0 AND g = 'g17' GROUP BY g",
     {0},
     1},
    {"SELECT * FROM o3 ORDER BY h DESC LIMIT 5 OFFSET 2",
     "SELECT date_trunc('hour', ts) AS h, count(*), count(n), sum(n), min(ts), max(ts), max(g) "
     "FROM ev WHERE k >= 10 GROUP BY h ORDER BY h DESC LIMIT 5 OFFSET 2",
     {0},
     -1},
    {"SELECT k, d, count FROM o4 WHERE k = 3 ORDER BY d",
     "SELECT k, date_trunc('day', ts) AS d, count(*) FROM ev WHERE n < 0 AND k = 3 "
     "GROUP BY k, d ORDER BY d",
     {0},
     -1},
    {"SELECT sum(count), count(*), max(maxv), min(minv) FROM o1",
     "SELECT sum(c), count(*), max(mx), min(mn) FROM (SELECT count(*) AS c, max(v) AS mx, "
     "min(v) AS mn FROM ev GROUP BY k) x",
     {0},
     0},
    {"SELECT k, minv, maxv FROM o1 WHERE k < 0 AND count >= 1 ORDER BY k LIMIT 20",
     "SELECT k, min(v), max(v) FROM ev WHERE k < 0 GROUP BY k ORDER BY k LIMIT 20",
     {0},
     -1},
};

/* "SELECT <list> FROM ... [WHERE ...] GROUP BY ..." is also the oracle's query over the table
 * of the same name, so the oracle query is the view's SELECT itself. */
static const char *oracle_query(int i)
{
	return views[i].oracle ? views[i].oracle : views[i].select;
}

Test(oracle, views_equal_postgresql, .fini = th_fini, .timeout = 600)
{
	th_oracle *o = th_oracle_start();
	PGconn *oc = th_oracle_connect(o);
	th_cluster *c = th_cluster_start(2, NULL);

	event *ev = tally_xcalloc(NEVENTS, sizeof *ev);
	event2 *ev2 = tally_xcalloc(NEVENTS2, sizeof *ev2);
	gen_events(ev, NEVENTS);
	gen_events2(ev2, NEVENTS2);

	/* the oracle: same columns, as a table */
	th_run(oc, "CREATE TABLE ev (k integer, g text, v double precision, n bigint, "
		   "ts timestamptz)");
	th_run(oc, "CREATE TABLE ev2 (s smallint, r real, b boolean, k integer)");
	tally_buf b = {0};
	for (int i = 0; i < NEVENTS; i++)
		put_event(&b, &ev[i], ENC_COPY_TEXT, "kgvnt");
	th_copy_ok(oc, "COPY ev (k, g, v, n, ts) FROM STDIN", (const char *)b.data, b.len, NEVENTS);
	tally_buf_reset(&b);
	for (int i = 0; i < NEVENTS2; i++)
		put_event2(&b, &ev2[i], ENC_COPY_TEXT);
	th_copy_ok(oc, "COPY ev2 (s, r, b, k) FROM STDIN", (const char *)b.data, b.len, NEVENTS2);
	th_run(oc, "ANALYZE");

	/* the cluster: DDL at one node, ingest through four connections to three nodes */
	PGconn *ddl = th_connect(th_worker(c, 2));
	th_run(ddl, "CREATE STREAM ev (k integer, g text, v double precision, n bigint, "
		    "ts timestamptz)");
	th_run(ddl, "CREATE STREAM ev2 (s smallint, r real, b boolean, k integer)");
	for (size_t i = 0; i < sizeof views / sizeof views[0]; i++)
		th_runf(ddl, "CREATE CONTINUOUS VIEW %s WITH (%s) AS %s", views[i].name,
			views[i].with, views[i].select);
	PQfinish(ddl);
	PGconn *in[4] = {th_connect(th_coord(c)), th_connect(th_worker(c, 1)),
			 th_connect(th_worker(c, 2)), th_connect(th_worker(c, 1))};
	for (int i = 0; i < 4; i++)
		th_run(in[i], "SET timezone = 'UTC'");
	/* rounds of four chunks in flight at once, one per connection */
	for (int chunk = 0; chunk * CHUNK < NEVENTS; chunk += 4) {
		int rows[4] = {0};
		for (int j = 0; j < 4 && (chunk + j) * CHUNK < NEVENTS; j++) {
			int from = (chunk + j) * CHUNK;
			int to = from + CHUNK < NEVENTS ? from + CHUNK : NEVENTS;
			rows[j] = to - from;
			start_chunk(in[j], ev, from, to, (chunk + j) % 3);
		}
		for (int j = 0; j < 4 && rows[j]; j++)
			finish_chunk(in[j], rows[j]);
	}
	for (int from = 0; from < NEVENTS2; from += 1000) {
		int to = from + 1000 < NEVENTS2 ? from + 1000 : NEVENTS2;
		tally_buf_reset(&b);
		bool copy = (from / 1000) % 2;
		if (!copy)
			tally_buf_printf(&b, "INSERT INTO ev2 (s, r, b, k) VALUES ");
		for (int i = from; i < to; i++) {
			if (!copy && i > from)
				tally_buf_putc(&b, ',');
			put_event2(&b, &ev2[i], copy ? ENC_COPY_TEXT : ENC_SQL);
		}
		PGconn *conn = in[(from / 1000) % 4];
		if (copy) {
			th_copy_ok(conn, "COPY ev2 (s, r, b, k) FROM STDIN", (const char *)b.data,
				   b.len, to - from);
		} else {
			buf_nul(&b);
			th_run(conn, (const char *)b.data);
		}
	}
	tally_buf_free(&b);
	for (int i = 0; i < 4; i++)
		PQfinish(in[i]);
	free(ev);
	free(ev2);

	/* compare at every node */
	for (int nd = 0; nd < c->nnodes; nd++) {
		PGconn *q = th_connect(&c->nodes[nd]);
		th_run(q, "SET timezone = 'UTC'");
		for (size_t i = 0; i < sizeof views / sizeof views[0]; i++) {
			char sql[128];
			snprintf(sql, sizeof sql, "SELECT * FROM %s", views[i].name);
			int rows = th_oracle_compare(q, oc, sql, oracle_query((int)i),
						     views[i].keys, views[i].nkeys);
			cr_assert_gt(rows, 0, "%s has rows", views[i].name);
		}
		for (size_t i = 0; i < sizeof reads / sizeof reads[0]; i++) {
			int rows = th_oracle_compare(q, oc, reads[i].cluster, reads[i].oracle,
						     reads[i].keys, reads[i].nkeys);
			cr_assert_gt(rows, 0, "%s has rows", reads[i].cluster);
		}
		PQfinish(q);
	}
	/* the texts that need escaping made it through every format */
	PGconn *q = th_connect(th_coord(c));
	th_oracle_compare(q, oc, "SELECT g, count FROM o2 WHERE g = 'g\"quote'",
			  "SELECT g, count(*) FROM ev WHERE v > 0 AND g = 'g\"quote' GROUP BY g",
			  NULL, 0);
	PQfinish(q);

	PQfinish(oc);
	th_cluster_stop(c);
	th_oracle_stop(o);
}
