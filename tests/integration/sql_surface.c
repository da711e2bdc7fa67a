/*
 * sql_surface.c - integration tests of the SQL surface every node offers: DDL for streams and
 * continuous views, INSERT and COPY (libpq and psql), reads with WHERE / ORDER BY / LIMIT,
 * result types and NULL rules as PostgreSQL's, date_trunc group keys, write_optimized views,
 * the pipeline_cluster system views, settings and the session chatter drivers send.
 *
 * Each scenario runs once at the coordinator and once at a worker (objects suffixed with the
 * node's index), and what one node did is checked at every node: DDL and acknowledged rows
 * are visible everywhere as soon as the statement returns.
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void expect_tag(PGconn *conn, const char *sql, const char *tag)
{
	PGresult *r = th_exec_ok(conn, sql);
	cr_assert_str_eq(PQcmdStatus(r), tag, "tag of %s", sql);
	PQclear(r);
}

static void connect_all(th_cluster *c, PGconn **conns)
{
	for (int i = 0; i < c->nnodes; i++) {
		conns[i] = th_connect(&c->nodes[i]);
		th_run(conns[i], "SET timezone = 'UTC'");
	}
}

static void finish_all(th_cluster *c, PGconn **conns)
{
	for (int i = 0; i < c->nnodes; i++)
		PQfinish(conns[i]);
}

/* Assert a result equals the expected rows, given as one string: rows separated by ';',
 * values by ',', NULL written as "~". */
static void expect_rows(PGresult *r, const char *expected, const char *what)
{
	char got[8192] = "";
	size_t off = 0;
	for (int row = 0; row < PQntuples(r); row++) {
		for (int col = 0; col < PQnfields(r); col++) {
			const char *v = PQgetisnull(r, row, col) ? "~" : PQgetvalue(r, row, col);
			off += (size_t)snprintf(got + off, sizeof got - off, "%s%s",
						col ? "," : (row ? ";" : ""), v);
			if (off >= sizeof got)
				off = sizeof got - 1;
		}
	}
	cr_assert_str_eq(got, expected, "%s", what);
}

static void expect_query(PGconn *conn, const char *sql, const char *expected)
{
	PGresult *r = th_exec_ok(conn, sql);
	expect_rows(r, expected, sql);
	PQclear(r);
}

static void expect_queryf(PGconn *conn, const char *expected, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void expect_queryf(PGconn *conn, const char *expected, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *sql = NULL;
	cr_assert(vasprintf(&sql, fmt, ap) >= 0);
	va_end(ap);
	expect_query(conn, sql, expected);
	free(sql);
}

static void expect_errf(PGconn *conn, const char *state, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void expect_errf(PGconn *conn, const char *state, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *sql = NULL;
	cr_assert(vasprintf(&sql, fmt, ap) >= 0);
	va_end(ap);
	PQclear(th_exec_err(conn, sql, state));
	free(sql);
}

static void expect_tagf(PGconn *conn, const char *tag, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void expect_tagf(PGconn *conn, const char *tag, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *sql = NULL;
	cr_assert(vasprintf(&sql, fmt, ap) >= 0);
	va_end(ap);
	expect_tag(conn, sql, tag);
	free(sql);
}

Test(sql_surface, ddl_lifecycle_and_errors, .fini = th_fini, .timeout = 120)
{
	th_cluster *c = th_cluster_start(2, NULL);
	PGconn *conns[TH_MAX_NODES];
	connect_all(c, conns);
	for (int d = 0; d < 2; d++) {
		PGconn *a = conns[d == 0 ? 0 : 1]; /* the coordinator, then w1 */
		expect_tagf(a, "CREATE STREAM",
			    "CREATE STREAM s%d (k integer, v double precision, name text, "
			    "ts timestamptz)",
			    d);
		expect_errf(a, "42P07", "CREATE STREAM s%d (k integer)", d);
		expect_tagf(a, "CREATE STREAM", "CREATE STREAM IF NOT EXISTS s%d (k integer)", d);
		expect_tagf(a, "CREATE FOREIGN TABLE",
			    "CREATE FOREIGN TABLE f%d (k integer, x text) SERVER pipelinedb", d);
		expect_errf(a, "42P07", "CREATE FOREIGN TABLE f%d (k integer) SERVER pipelinedb",
			    d);

		expect_tagf(a, "CREATE CONTINUOUS VIEW",
			    "CREATE CONTINUOUS VIEW cv%d WITH (num_shards = 3, num_replicas = 1, "
			    "sharding_policy = 'read_optimized') AS SELECT k, count(*) FROM s%d "
			    "GROUP BY k",
			    d, d);
		expect_tagf(
		    a, "CREATE VIEW",
		    "CREATE VIEW mv%d WITH (action = materialize, num_shards = 2, "
		    "num_replicas = 1, sharding_policy = 'write_optimized') AS SELECT name, "
		    "sum(v) FROM s%d GROUP BY name",
		    d, d);
		expect_tagf(a, "CREATE CONTINUOUS VIEW",
			    "CREATE CONTINUOUS VIEW sf%d WITH (shard_factor = 50) AS SELECT k, "
			    "max(x) FROM f%d GROUP BY k",
			    d, d);
		expect_tagf(a, "CREATE CONTINUOUS VIEW",
			    "CREATE CONTINUOUS VIEW df%d AS SELECT k, min(x) FROM f%d GROUP BY k",
			    d, d);
		/* errors */
		expect_errf(a, "42P07",
			    "CREATE CONTINUOUS VIEW cv%d AS SELECT k, count(*) FROM s%d GROUP BY k",
			    d, d);
		expect_errf(
		    a, "42P01",
		    "CREATE CONTINUOUS VIEW x%d AS SELECT k, count(*) FROM nosuch GROUP BY k", d);
		expect_errf(a, "42703",
			    "CREATE CONTINUOUS VIEW x%d AS SELECT nope, count(*) FROM s%d GROUP BY "
			    "nope",
			    d, d);
		expect_errf(
		    a, "22023",
		    "CREATE CONTINUOUS VIEW x%d WITH (bogus = 1) AS SELECT k, count(*) FROM "
		    "s%d GROUP BY k",
		    d, d);
		expect_errf(
		    a, "22023",
		    "CREATE CONTINUOUS VIEW x%d WITH (sharding_policy = 'nope') AS SELECT k, "
		    "count(*) FROM s%d GROUP BY k",
		    d, d);
		expect_errf(
		    a, "22023",
		    "CREATE CONTINUOUS VIEW x%d WITH (num_shards = 0) AS SELECT k, count(*) "
		    "FROM s%d GROUP BY k",
		    d, d);

		expect_errf(a, "42701",
			    "CREATE CONTINUOUS VIEW x%d AS SELECT k, count(*), count(v) FROM s%d "
			    "GROUP BY k",
			    d, d);
		/* The catalog and the DDL are visible at every node at once. */
		for (int b = 0; b < c->nnodes; b++) {
			PGconn *q = conns[b];
			expect_queryf(q, "3,1,read_optimized",
				      "SELECT num_shards, num_replicas, sharding_policy FROM "
				      "pipeline_cluster.views WHERE name = 'cv%d'",
				      d);
			expect_queryf(q, "2,1,write_optimized",
				      "SELECT num_shards, num_replicas, sharding_policy FROM "
				      "pipeline_cluster.views WHERE name = 'mv%d'",
				      d);
			/* shard_factor 50 of 2 workers; the default is one shard per worker */
			expect_queryf(q, "1",
				      "SELECT num_shards FROM pipeline_cluster.views WHERE "
				      "name = 'sf%d'",
				      d);
			char want[64];
			snprintf(want, sizeof want, "2,1,read_optimized,f%d", d);
			expect_queryf(
			    q, want,
			    "SELECT num_shards, num_replicas, sharding_policy, stream FROM "
			    "pipeline_cluster.views WHERE name = 'df%d'",
			    d);
		}
		for (int b = 0; b < c->nnodes; b++)
			th_runf(conns[b], "INSERT INTO s%d (k, v, name) VALUES (%d, 1, 'n%d')", d,
				b, b);
		for (int b = 0; b < c->nnodes; b++) {
			expect_queryf(conns[b], "0,1;1,1;2,1",
				      "SELECT k, count FROM cv%d ORDER BY k", d);
			expect_queryf(conns[b], "n0,1;n1,1;n2,1",
				      "SELECT * FROM mv%d ORDER BY name", d);
			expect_queryf(conns[b], "", "SELECT k FROM sf%d", d); /* over f, not s */
		}

		/* A stream with views cannot be dropped without CASCADE. */
		expect_errf(a, NULL, "DROP STREAM s%d", d);
		expect_tagf(a, "DROP CONTINUOUS VIEW", "DROP CONTINUOUS VIEW cv%d", d);
		expect_tagf(a, "DROP VIEW", "DROP VIEW mv%d", d);
		expect_tagf(a, "DROP VIEW", "DROP VIEW IF EXISTS mv%d", d);
		expect_tagf(a, "DROP CONTINUOUS VIEW", "DROP CONTINUOUS VIEW IF EXISTS cv%d", d);
		expect_errf(a, "42P01", "DROP CONTINUOUS VIEW cv%d", d);
		expect_errf(a, "42P01", "DROP VIEW nosuch%d", d);
		for (int b = 0; b < c->nnodes; b++) {
			expect_errf(conns[b], "42P01", "SELECT * FROM cv%d", d);
			expect_errf(conns[b], "42P01", "SELECT * FROM mv%d", d);
		}
		expect_tagf(a, "DROP STREAM", "DROP STREAM s%d", d);
		expect_tagf(a, "DROP STREAM", "DROP STREAM IF EXISTS s%d", d);
		expect_errf(a, "42P01", "DROP STREAM s%d", d);
		expect_tagf(a, "DROP STREAM", "DROP STREAM f%d CASCADE", d);
		for (int b = 0; b < c->nnodes; b++) {
			expect_errf(conns[b], "42P01", "INSERT INTO s%d (k) VALUES (1)", d);
			expect_errf(conns[b], "42P01", "SELECT * FROM sf%d", d);
			expect_errf(conns[b], "42P01", "SELECT * FROM df%d", d);
			expect_queryf(
			    conns[b], "",
			    "SELECT name FROM pipeline_cluster.views WHERE stream = 's%d'", d);
			expect_queryf(
			    conns[b], "",
			    "SELECT name FROM pipeline_cluster.views WHERE stream = 'f%d'", d);
		}
		/* The name is free again, with a new definition. */
		expect_tagf(a, "CREATE STREAM", "CREATE STREAM s%d (z text)", d);
		for (int b = 0; b < c->nnodes; b++)
			expect_queryf(
			    conns[b], "z text",
			    "SELECT columns FROM pipeline_cluster.streams WHERE name = 's%d'", d);
	}
	finish_all(c, conns);
	th_cluster_stop(c);
}

Test(sql_surface, insert_copy_and_select, .fini = th_fini, .timeout = 120)
{
	th_cluster *c = th_cluster_start(2, NULL);
	PGconn *conns[TH_MAX_NODES];
	connect_all(c, conns);
	char csv_path[512];
	snprintf(csv_path, sizeof csv_path, "%s/in.csv", c->dir);
	FILE *f = fopen(csv_path, "w");
	cr_assert(f);
	fputs("8,1,\"x y\"\n8,,\n9,0.25,q\n", f);
	fclose(f);
	for (int d = 0; d < 2; d++) {
		PGconn *a = conns[d == 0 ? 0 : 1];
		th_node *an = &c->nodes[d == 0 ? 0 : 1];
		th_runf(
		    a,
		    "CREATE STREAM s%d (k integer, v double precision, name text, ts timestamptz)",
		    d);
		th_runf(a,
			"CREATE CONTINUOUS VIEW v%d AS SELECT k, count(*) AS c, count(v) AS cv, "
			"sum(v) AS sv, max(name) AS mx FROM s%d GROUP BY k",
			d, d);
		expect_tagf(a, "INSERT 0 1", "INSERT INTO s%d (k, v, name) VALUES (1, 1.5, 'a')",
			    d);
		expect_tagf(a, "INSERT 0 3",
			    "INSERT INTO s%d (k, v, name) VALUES (1, 2.5, 'b'), (2, NULL, 'c'), "
			    "(NULL, 4, NULL)",
			    d);
		expect_tagf(a, "INSERT 0 1",
			    "INSERT INTO s%d VALUES (2, 3, 'd', '2024-01-01 00:00:00+00')", d);
		expect_tagf(a, "INSERT 0 1", "INSERT INTO s%d (name, k) VALUES ('e', 3)", d);
		const char *want = "1,2,2,4,b;2,2,1,3,d;3,1,0,~,e;~,1,1,4,~";
		for (int b = 0; b < c->nnodes; b++) {
			PGconn *q = conns[b];
			expect_queryf(q, want, "SELECT * FROM v%d ORDER BY k", d);
			expect_queryf(q, "~,1,1,4,~;3,1,0,~,e;2,2,1,3,d;1,2,2,4,b",
				      "SELECT * FROM v%d ORDER BY k DESC", d);
			expect_queryf(q, "2,2;1,2",
				      "SELECT k, c FROM v%d WHERE c = 2 ORDER BY k DESC", d);
			expect_queryf(q, "2,3;3,~",
				      "SELECT k, sv FROM v%d ORDER BY k LIMIT 2 OFFSET 1", d);
			expect_queryf(q, "b,1", "SELECT mx, k FROM v%d WHERE mx = 'b'", d);
			expect_queryf(q, "1", "SELECT k FROM v%d WHERE sv > 3.5 AND k IS NOT NULL",
				      d);
			expect_queryf(q, "6,e,4", "SELECT sum(c), max(mx), count(*) FROM v%d", d);
			PGresult *r =
			    th_exec_okf(q, "SELECT sum(c), count(*), max(mx) FROM v%d", d);
			cr_assert_eq(PQftype(r, 0), TH_OID_NUMERIC, "sum(bigint) over a view");
			cr_assert_eq(PQftype(r, 1), TH_OID_INT8);
			cr_assert_eq(PQftype(r, 2), TH_OID_TEXT);
			PQclear(r);
			r = th_exec_okf(q, "SELECT * FROM v%d", d);
			cr_assert_eq(PQnfields(r), 5);
			const char *names[] = {"k", "c", "cv", "sv", "mx"};
			for (int i = 0; i < 5; i++)
				cr_assert_str_eq(PQfname(r, i), names[i]);
			PQclear(r);
		}
		/* COPY through libpq: text, CSV with a header, CSV with other options. */
		char sql[256];
		const char *tsv = "5\t1.5\tx\n5\t\\N\ty\n6\t-2\ta\\tb\n";
		snprintf(sql, sizeof sql, "COPY s%d (k, v, name) FROM STDIN", d);
		th_copy_ok(a, sql, tsv, strlen(tsv), 3);
		const char *csv = "k,v,name\n6,2.5,\"a,b\"\n6,,\n7,1e3,\"q\"\"q\"\n";
		snprintf(sql, sizeof sql,
			 "COPY s%d (k, v, name) FROM STDIN WITH (FORMAT csv, HEADER)", d);
		th_copy_ok(a, sql, csv, strlen(csv), 3);
		const char *csv2 = "7|NA|z\n7|0.5|NA\n";
		snprintf(
		    sql, sizeof sql,
		    "COPY s%d (k, v, name) FROM STDIN WITH (FORMAT csv, DELIMITER '|', NULL 'NA')",
		    d);
		th_copy_ok(a, sql, csv2, strlen(csv2), 2);
		/* a COPY sent in many small pieces */
		const char *tsv2 = "10\t1\tp\n10\t2\tp\n10\t3\tp\n10\t4\tp\n";
		snprintf(sql, sizeof sql, "COPY s%d (k, v, name) FROM STDIN", d);
		PGresult *r = th_copy_in(a, sql, tsv2, strlen(tsv2), 3);
		cr_assert_str_eq(PQcmdStatus(r), "COPY 4", "%s", PQresultErrorMessage(r));
		PQclear(r);
		/* psql's \copy */
		char cmd[1024];
		snprintf(cmd, sizeof cmd, "\\copy s%d (k, v, name) FROM '%s' WITH (FORMAT csv)", d,
			 csv_path);
		const char *args[] = {"-c", cmd, NULL};
		char *out = NULL, *err = NULL;
		int st = th_psql(an, args, NULL, &out, &err, 30000);
		cr_assert(st == 0, "psql \\copy failed (status %d): %s", st, err);
		cr_assert_str_eq(out, "COPY 3\n", "psql output: %s / %s", out, err);
		free(out);
		free(err);
		const char *want2 = "5,2,1,1.5,y;6,3,2,0.5,a,b;7,3,2,1000.5,z;8,2,1,1,x y;"
				    "9,1,1,0.25,q;10,4,4,10,p";
		for (int b = 0; b < c->nnodes; b++)
			expect_queryf(conns[b], want2, "SELECT * FROM v%d WHERE k >= 5 ORDER BY k",
				      d);
	}
	finish_all(c, conns);
	th_cluster_stop(c);
}

Test(sql_surface, result_types_and_null_rules, .fini = th_fini, .timeout = 120)
{
	th_cluster *c = th_cluster_start(2, NULL);
	PGconn *conns[TH_MAX_NODES];
	connect_all(c, conns);
	for (int d = 0; d < 2; d++) {
		PGconn *a = conns[d == 0 ? 0 : 1];
		th_runf(a,
			"CREATE STREAM t%d (bo boolean, i integer, b bigint, sm smallint, r real, "
			"d double precision, x text, ts timestamptz)",
			d);
		th_runf(
		    a,
		    "CREATE CONTINUOUS VIEW tv%d AS SELECT bo, count(*), sum(i), sum(b) AS sb, "
		    "sum(sm) AS ssm, sum(r) AS sr, sum(d) AS sd, avg(i), avg(b) AS ab, "
		    "avg(d) AS ad, avg(r) AS ar, min(i), max(b), min(sm) AS minsm, max(r) AS maxr, "
		    "min(d) AS mind, max(x) AS maxx, min(ts) AS mints, count(i) AS ci FROM t%d "
		    "GROUP BY bo",
		    d, d);
		th_runf(
		    a,
		    "INSERT INTO t%d VALUES (true, 1, 10, 2, 1.5, 2.5, 'a', "
		    "'2024-01-01 10:00:00+00'), (true, 2, 20, 3, 0.5, 0.5, 'b', "
		    "'2024-01-02 10:00:00+00'), (false, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
		    d);
		/* what PostgreSQL 15 answers for the same rows and query */
		const char *want =
		    "f,1,~,~,~,~,~,~,~,~,~,~,~,~,~,~,~,~,0;"
		    "t,2,3,30,5,2,3,1.5000000000000000,15.0000000000000000,1.5,1,1,20,2,1.5,0.5,"
		    "b,2024-01-01 10:00:00+00,2";
		const Oid types[] = {
		    TH_OID_BOOL,   TH_OID_INT8,	  TH_OID_INT8,	      TH_OID_NUMERIC, TH_OID_INT8,
		    TH_OID_FLOAT4, TH_OID_FLOAT8, TH_OID_NUMERIC,     TH_OID_NUMERIC, TH_OID_FLOAT8,
		    TH_OID_FLOAT8, TH_OID_INT4,	  TH_OID_INT8,	      TH_OID_INT2,    TH_OID_FLOAT4,
		    TH_OID_FLOAT8, TH_OID_TEXT,	  TH_OID_TIMESTAMPTZ, TH_OID_INT8};
		for (int b = 0; b < c->nnodes; b++) {
			PGresult *r = th_exec_okf(conns[b], "SELECT * FROM tv%d ORDER BY bo", d);
			cr_assert_eq(PQnfields(r), 19);
			for (int i = 0; i < 19; i++)
				cr_assert_eq(PQftype(r, i), types[i],
					     "column %d (%s): type %u, want %u", i + 1,
					     PQfname(r, i), PQftype(r, i), types[i]);
			expect_rows(r, want, "tv values");
			cr_assert_str_eq(PQfname(r, 1), "count");
			cr_assert_str_eq(PQfname(r, 2), "sum");
			cr_assert_str_eq(PQfname(r, 7), "avg");
			PQclear(r);
		}
	}
	finish_all(c, conns);
	th_cluster_stop(c);
}

Test(sql_surface, date_trunc_group_keys, .fini = th_fini, .timeout = 120)
{
	th_cluster *c = th_cluster_start(2, NULL);
	PGconn *conns[TH_MAX_NODES];
	connect_all(c, conns);
	for (int d = 0; d < 2; d++) {
		PGconn *a = conns[d == 0 ? 0 : 1];
		th_runf(a, "CREATE STREAM e%d (k integer, ts timestamptz)", d);
		th_runf(a,
			"CREATE CONTINUOUS VIEW em%d AS SELECT date_trunc('minute', ts) AS m, "
			"count(*) FROM e%d GROUP BY m",
			d, d);
		th_runf(a,
			"CREATE CONTINUOUS VIEW ehd%d AS SELECT k, date_trunc('hour', ts) AS h, "
			"date_trunc('day', ts) AS dd, count(*) FROM e%d GROUP BY k, h, dd",
			d, d);
		th_runf(a,
			"INSERT INTO e%d VALUES (1, '2024-01-01 10:05:30+00'), "
			"(1, '2024-01-01 10:05:59.999+00'), (1, '2024-01-01 10:06:00+00'), "
			"(2, '2024-01-01 11:00:00+00'), (2, '2024-01-02 00:00:01.5+00'), (2, NULL)",
			d);
		for (int b = 0; b < c->nnodes; b++) {
			PGresult *r = th_exec_okf(conns[b], "SELECT * FROM em%d ORDER BY m", d);
			cr_assert_eq(PQftype(r, 0), TH_OID_TIMESTAMPTZ);
			expect_rows(r,
				    "2024-01-01 10:05:00+00,2;2024-01-01 10:06:00+00,1;"
				    "2024-01-01 11:00:00+00,1;2024-01-02 00:00:00+00,1;~,1",
				    "minute keys");
			PQclear(r);
			expect_queryf(conns[b],
				      "1,2024-01-01 10:00:00+00,2024-01-01 00:00:00+00,3;"
				      "2,2024-01-01 11:00:00+00,2024-01-01 00:00:00+00,1;"
				      "2,2024-01-02 00:00:00+00,2024-01-02 00:00:00+00,1;2,~,~,1",
				      "SELECT * FROM ehd%d ORDER BY k, h", d);
			expect_queryf(conns[b], "2",
				      "SELECT count FROM em%d WHERE m = '2024-01-01 10:05:00+00'",
				      d);
		}
	}
	finish_all(c, conns);
	th_cluster_stop(c);
}

Test(sql_surface, several_views_and_write_optimized, .fini = th_fini, .timeout = 120)
{
	th_cluster *c = th_cluster_start(2, NULL);
	PGconn *conns[TH_MAX_NODES];
	connect_all(c, conns);
	for (int d = 0; d < 2; d++) {
		PGconn *a = conns[d == 0 ? 0 : 1];
		th_runf(a, "CREATE STREAM w%d (k integer, v integer)", d);
		th_runf(a,
			"CREATE CONTINUOUS VIEW wr%d WITH (num_shards = 3) AS SELECT k, count(*), "
			"sum(v) FROM w%d GROUP BY k",
			d, d);
		th_runf(a,
			"CREATE CONTINUOUS VIEW ww%d WITH (num_shards = 3, sharding_policy = "
			"'write_optimized') AS SELECT k, count(*), sum(v), min(v), max(v) FROM w%d "
			"GROUP BY k",
			d, d);
		th_runf(a,
			"CREATE VIEW wf%d WITH (action = materialize, sharding_policy = "
			"'write_optimized') AS SELECT k, count(*) FROM w%d WHERE v > 5 GROUP BY k",
			d, d);
		/* many statements from every node so write_optimized groups land on many shards */
		for (int round = 0; round < 4; round++)
			for (int b = 0; b < c->nnodes; b++)
				th_runf(conns[b],
					"INSERT INTO w%d VALUES (1, %d), (2, %d), (3, 1), (1, 10)",
					d, round + b, round * b);
		/* per node per round: k1 gets (round+b) and 10; k2 gets round*b; k3 gets 1 */
		long c1 = 0, s1 = 0, s2 = 0, f1 = 0, f2 = 0;
		long mn1 = 1000, mx2 = -1;
		for (int round = 0; round < 4; round++)
			for (int b = 0; b < c->nnodes; b++) {
				c1 += 2;
				s1 += round + b + 10;
				s2 += round * b;
				f1 += 1 + (round + b > 5);
				f2 += round * b > 5;
				if (round + b < mn1)
					mn1 = round + b;
				if (round * b > mx2)
					mx2 = round * b;
			}
		long n = 4L * c->nnodes;
		char want[512];
		snprintf(want, sizeof want, "1,%ld,%ld;2,%ld,%ld;3,%ld,%ld", c1, s1, n, s2, n, n);
		char wantw[512];
		snprintf(wantw, sizeof wantw, "1,%ld,%ld,%ld,10;2,%ld,%ld,0,%ld;3,%ld,%ld,1,1", c1,
			 s1, mn1, n, s2, mx2, n, n);
		char wantf[128];
		snprintf(wantf, sizeof wantf, "1,%ld;2,%ld", f1, f2);
		for (int b = 0; b < c->nnodes; b++) {
			expect_queryf(conns[b], want, "SELECT * FROM wr%d ORDER BY k", d);
			expect_queryf(conns[b], wantw, "SELECT * FROM ww%d ORDER BY k", d);
			expect_queryf(conns[b], wantf, "SELECT * FROM wf%d ORDER BY k", d);
			expect_queryf(conns[b], "3", "SELECT count(*) FROM ww%d", d);
			/* 3 shards x (1 + 1 replica), all write_optimized and balanced */
			expect_queryf(
			    conns[b],
			    "write_optimized,t;write_optimized,t;write_optimized,t;"
			    "write_optimized,t;write_optimized,t;write_optimized,t",
			    "SELECT sharding_policy, balanced FROM pipeline_cluster.shards "
			    "WHERE continuous_view = 'ww%d'",
			    d);
		}
	}
	finish_all(c, conns);
	th_cluster_stop(c);
}

static int worker_index(th_cluster *c, const char *name)
{
	for (int i = 1; i < c->nnodes; i++)
		if (strcmp(c->nodes[i].name, name) == 0)
			return i;
	return -1;
}

Test(sql_surface, system_views, .fini = th_fini, .timeout = 120)
{
	th_cluster *c = th_cluster_start(3, NULL);
	PGconn *conns[TH_MAX_NODES];
	connect_all(c, conns);
	th_run(conns[0],
	       "CREATE STREAM ss (k integer, v double precision, name text, ts timestamptz)");
	th_run(conns[1], "CREATE CONTINUOUS VIEW va WITH (num_shards = 4, num_replicas = 1) AS "
			 "SELECT k, count(*) FROM ss GROUP BY k");
	th_run(conns[0], "CREATE CONTINUOUS VIEW vb WITH (num_shards = 3, num_replicas = 2, "
			 "sharding_policy = 'write_optimized') AS SELECT name, sum(v) FROM ss "
			 "GROUP BY name");
	th_run(conns[2], "CREATE CONTINUOUS VIEW vc AS SELECT k, max(ts) FROM ss GROUP BY k");
	const struct {
		const char *name;
		int shards, replicas;
		const char *policy;
	} views[] = {{"va", 4, 1, "read_optimized"},
		     {"vb", 3, 2, "write_optimized"},
		     {"vc", 3, 1, "read_optimized"}};
	const char *cols[] = {"shard",	  "owner",	"continuous_view",
			      "shard_id", "shard_type", "sharding_policy",
			      "is_local", "balanced",	"reachable"};
	const Oid coltypes[] = {TH_OID_TEXT, TH_OID_TEXT, TH_OID_TEXT, TH_OID_INT2, TH_OID_TEXT,
				TH_OID_TEXT, TH_OID_BOOL, TH_OID_BOOL, TH_OID_BOOL};
	for (int b = 0; b < c->nnodes; b++) {
		PGconn *q = conns[b];
		const char *me = c->nodes[b].name;
		PGresult *r = th_exec_ok(q, "SELECT * FROM pipeline_cluster.shards");
		cr_assert_geq(PQnfields(r), 9);
		for (int i = 0; i < 9; i++) {
			cr_assert_str_eq(PQfname(r, i), cols[i], "shards column %d at %s", i + 1,
					 me);
			cr_assert_eq(PQftype(r, i), coltypes[i], "shards column %s type", cols[i]);
		}
		int total = 0;
		int primaries[TH_MAX_NODES] = {0}, replicas[TH_MAX_NODES] = {0};
		for (size_t v = 0; v < sizeof views / sizeof views[0]; v++) {
			int want_rows = views[v].shards * (1 + views[v].replicas);
			int rows = 0;
			for (int s = 0; s < views[v].shards; s++) {
				int nprim = 0, nrep = 0, owners[TH_MAX_NODES] = {0};
				for (int row = 0; row < PQntuples(r); row++) {
					if (strcmp(PQgetvalue(r, row, 2), views[v].name) != 0 ||
					    atoi(PQgetvalue(r, row, 3)) != s)
						continue;
					rows++;
					char shard[64];
					snprintf(shard, sizeof shard, "%s_%d", views[v].name, s);
					cr_assert_str_eq(PQgetvalue(r, row, 0), shard);
					const char *owner = PQgetvalue(r, row, 1);
					int w = worker_index(c, owner);
					cr_assert(w > 0, "shard %s owned by '%s', not a worker",
						  shard, owner);
					cr_assert_eq(owners[w]++, 0, "two copies of %s on %s",
						     shard, owner);
					const char *type = PQgetvalue(r, row, 4);
					if (strcmp(type, "primary") == 0) {
						nprim++;
						primaries[w]++;
					} else {
						cr_assert_str_eq(type, "replica");
						nrep++;
						replicas[w]++;
					}
					cr_assert_str_eq(PQgetvalue(r, row, 5), views[v].policy);
					cr_assert_str_eq(PQgetvalue(r, row, 6),
							 strcmp(owner, me) == 0 ? "t" : "f",
							 "is_local of %s at %s", shard, me);
					cr_assert_str_eq(PQgetvalue(r, row, 7), "t", "balanced");
					cr_assert_str_eq(PQgetvalue(r, row, 8), "t", "reachable");
				}
				cr_assert_eq(nprim, 1, "%s_%d has %d primaries", views[v].name, s,
					     nprim);
				cr_assert_eq(nrep, views[v].replicas, "%s_%d replicas",
					     views[v].name, s);
			}
			cr_assert_eq(rows, want_rows, "view %s: %d shard rows, want %d at %s",
				     views[v].name, rows, want_rows, me);
			total += rows;
		}
		cr_assert_eq(PQntuples(r), total, "only our views' shards");
		/* bounded loads: no worker has more than ceil(1.25 * 4 / 3) = 2 primaries of va */
		PQclear(r);

		r = th_exec_ok(q, "SELECT name, role, state, node_id, sql_addr, data_addr, "
				  "primaries, replicas FROM pipeline_cluster.nodes ORDER BY name");
		cr_assert_eq(PQntuples(r), c->nnodes, "nodes rows at %s", me);
		int seen = 0;
		for (int row = 0; row < PQntuples(r); row++) {
			const char *name = PQgetvalue(r, row, 0);
			cr_assert_str_eq(PQgetvalue(r, row, 2), "up", "%s state", name);
			if (strcmp(name, "coordinator") == 0) {
				cr_assert_str_eq(PQgetvalue(r, row, 1), "coordinator");
				continue;
			}
			int w = worker_index(c, name);
			cr_assert(w > 0, "unknown node %s", name);
			seen++;
			cr_assert_str_eq(PQgetvalue(r, row, 1), "worker");
			cr_assert_str_eq(PQgetvalue(r, row, 5), c->nodes[w].data_addr,
					 "%s data_addr", name);
			cr_assert(strstr(PQgetvalue(r, row, 4), "127.0.0.1") != NULL, "sql_addr");
			cr_assert_eq(atoi(PQgetvalue(r, row, 6)), primaries[w], "%s primaries",
				     name);
			cr_assert_eq(atoi(PQgetvalue(r, row, 7)), replicas[w], "%s replicas", name);
		}
		cr_assert_eq(seen, c->nnodes - 1);
		PQclear(r);

		for (size_t v = 0; v < sizeof views / sizeof views[0]; v++) {
			r = th_exec_okf(q,
					"SELECT stream, num_shards, num_replicas, sharding_policy, "
					"query FROM pipeline_cluster.views WHERE name = '%s'",
					views[v].name);
			cr_assert_eq(PQntuples(r), 1);
			cr_assert_str_eq(PQgetvalue(r, 0, 0), "ss");
			cr_assert_eq(atoi(PQgetvalue(r, 0, 1)), views[v].shards);
			cr_assert_eq(atoi(PQgetvalue(r, 0, 2)), views[v].replicas);
			cr_assert_str_eq(PQgetvalue(r, 0, 3), views[v].policy);
			cr_assert(strlen(PQgetvalue(r, 0, 4)) > 10, "query text");
			PQclear(r);
		}
		expect_query(q, "SELECT name, columns FROM pipeline_cluster.streams",
			     "ss,k integer, v double precision, name text, "
			     "ts timestamp with time zone");
	}
	finish_all(c, conns);
	th_cluster_stop(c);
}

Test(sql_surface, num_replicas_needs_enough_workers, .fini = th_fini, .timeout = 120)
{
	th_cluster *c = th_cluster_start(2, NULL);
	PGconn *conns[TH_MAX_NODES];
	connect_all(c, conns);
	for (int d = 0; d < 2; d++) {
		PGconn *a = conns[d == 0 ? 0 : 1];
		th_runf(a, "CREATE STREAM r%d (k integer)", d);
		expect_errf(a, "22023",
			    "CREATE CONTINUOUS VIEW rv%d WITH (num_replicas = 2) AS SELECT k, "
			    "count(*) FROM r%d GROUP BY k",
			    d, d);
		expect_errf(a, "22023",
			    "CREATE CONTINUOUS VIEW rv%d WITH (num_replicas = 5) AS SELECT k, "
			    "count(*) FROM r%d GROUP BY k",
			    d, d);
		for (int b = 0; b < c->nnodes; b++)
			expect_errf(conns[b], "42P01", "SELECT * FROM rv%d", d);
		th_runf(a,
			"CREATE CONTINUOUS VIEW rv%d WITH (num_replicas = 1) AS SELECT k, count(*) "
			"FROM r%d GROUP BY k",
			d, d);
		th_runf(a,
			"CREATE CONTINUOUS VIEW rz%d WITH (num_replicas = 0) AS SELECT k, count(*) "
			"FROM r%d GROUP BY k",
			d, d);
		expect_queryf(a, "primary;primary",
			      "SELECT shard_type FROM pipeline_cluster.shards WHERE "
			      "continuous_view = 'rz%d'",
			      d);
	}
	finish_all(c, conns);
	th_cluster_stop(c);
}

Test(sql_surface, settings_set_show_reset, .fini = th_fini, .timeout = 120)
{
	/* the built-in defaults, not the harness's sync_commit and primary_only */
	th_opts o = {.sets = {"pipeline_cluster.insert_level=sync_receive",
			      "pipeline_cluster.primary_only=off"}};
	th_cluster *c = th_cluster_start(1, &o);
	const struct {
		const char *name, *def, *other;
	} settings[] = {
	    {"pipeline_cluster.primary_only", "off", "on"},
	    {"pipeline_cluster.skip_unavailable", "off", "on"},
	    {"pipeline_cluster.insert_level", "sync_receive", "sync_commit"},
	    {"pipeline_cluster.num_replicas", "1", "0"},
	    {"pipeline_cluster.failure_timeout", "2s", "5s"},
	    {"pipeline_cluster.heartbeat_interval", "250ms", "100ms"},
	    {"pipeline_cluster.statement_memory", "1GB", "64MB"},
	};
	/* set per node only (--set): a session can show them, not change them */
	const struct {
		const char *name, *def;
	} node_only[] = {
	    {"pipeline_cluster.fsync", "on"},
	    {"pipeline_cluster.checkpoint_interval", "30s"},
	    {"pipeline_cluster.max_wal_size", "256MB"},
	    {"pipeline_cluster.wal_segment_size", "64MB"},
	    {"pipeline_cluster.outbox_limit", "1GB"},
	    {"pipeline_cluster.replication_buffer", "64MB"},
	};
	for (int d = 0; d < 2; d++) {
		PGconn *a = th_connect(d == 0 ? th_coord(c) : th_worker(c, 1));
		PGconn *other = th_connect(d == 0 ? th_coord(c) : th_worker(c, 1));
		for (size_t i = 0; i < sizeof settings / sizeof settings[0]; i++) {
			char sql[256];
			snprintf(sql, sizeof sql, "SHOW %s", settings[i].name);
			char *v = th_query_str(a, sql);
			cr_assert_str_eq(v, settings[i].def, "%s", sql);
			free(v);
			PGresult *r =
			    th_exec_okf(a, "SET %s = '%s'", settings[i].name, settings[i].other);
			cr_assert_str_eq(PQcmdStatus(r), "SET");
			PQclear(r);
			v = th_query_str(a, sql);
			cr_assert_str_eq(v, settings[i].other, "%s after SET", sql);
			free(v);
			/* session-local: another session still has the default */
			v = th_query_str(other, sql);
			cr_assert_str_eq(v, settings[i].def, "%s in another session", sql);
			free(v);
			r = th_exec_okf(a, "RESET %s", settings[i].name);
			cr_assert_str_eq(PQcmdStatus(r), "RESET");
			PQclear(r);
			v = th_query_str(a, sql);
			cr_assert_str_eq(v, settings[i].def, "%s after RESET", sql);
			free(v);
		}
		for (size_t i = 0; i < sizeof node_only / sizeof node_only[0]; i++) {
			char sql[256];
			snprintf(sql, sizeof sql, "SHOW %s", node_only[i].name);
			expect_query(a, sql, node_only[i].def);
			char set[256];
			snprintf(set, sizeof set, "SET %s = '%s'", node_only[i].name,
				 node_only[i].def);
			PGresult *r = th_exec_err(a, set, "55P02");
			cr_assert(strstr(PQresultErrorMessage(r), "without restarting") != NULL,
				  "%s", PQresultErrorMessage(r));
			PQclear(r);
			th_runf(a, "RESET %s", node_only[i].name);
			expect_query(a, sql, node_only[i].def);
		}
		th_run(a, "SET pipeline_cluster.primary_only TO on");
		expect_query(a, "SHOW pipeline_cluster.primary_only", "on");
		th_run(a, "SET pipeline_cluster.primary_only TO DEFAULT");
		expect_query(a, "SHOW pipeline_cluster.primary_only", "off");
		PQclear(th_exec_err(a, "SET pipeline_cluster.nonsense = 1", "42704"));
		PQclear(th_exec_err(a, "SHOW pipeline_cluster.nonsense", "42704"));
		PGresult *r = th_exec_err(a, "SHOW nonsense_param", "42704");
		cr_assert(strstr(PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY),
				 "unrecognized configuration parameter \"nonsense_param\"") != NULL,
			  "%s", PQresultErrorMessage(r));
		PQclear(r);
		PQclear(th_exec_err(a, "SET pipeline_cluster.insert_level = 'bogus'", "22023"));
		PQclear(th_exec_err(a, "SET pipeline_cluster.primary_only = 'maybe'", "22023"));
		/* the chatter drivers send */
		const char *chatter[] = {
		    "SET client_encoding = 'UTF8'", "SET datestyle = 'ISO, MDY'",
		    "SET timezone = 'UTC'",	    "SET application_name = 'x'",
		    "SET extra_float_digits = 3",   "SET search_path = public",
		    "SET statement_timeout = 0",    "SET TIME ZONE 'UTC'",
		};
		for (size_t i = 0; i < sizeof chatter / sizeof chatter[0]; i++)
			th_run(a, chatter[i]);
		expect_query(a, "SHOW server_version", "15.0");
		char *ver = th_query_str(a, "SELECT version()");
		cr_assert(ver && strstr(ver, "PostgreSQL") != NULL, "version(): %s", ver);
		free(ver);
		PQfinish(a);
		PQfinish(other);
	}
	th_cluster_stop(c);
}

Test(sql_surface, node_default_settings_and_transactions, .fini = th_fini, .timeout = 120)
{
	th_opts o = {.sets = {"pipeline_cluster.skip_unavailable=on",
			      "pipeline_cluster.insert_level=sync_commit"}};
	th_cluster *c = th_cluster_start(2, &o);
	PGconn *conns[TH_MAX_NODES];
	connect_all(c, conns);
	for (int b = 0; b < c->nnodes; b++) {
		expect_query(conns[b], "SHOW pipeline_cluster.skip_unavailable", "on");
		expect_query(conns[b], "SHOW pipeline_cluster.insert_level", "sync_commit");
		th_run(conns[b], "RESET pipeline_cluster.skip_unavailable");
		expect_query(conns[b], "SHOW pipeline_cluster.skip_unavailable", "on");
	}
	for (int d = 0; d < 2; d++) {
		PGconn *a = conns[d == 0 ? 0 : 1];
		th_runf(a, "CREATE STREAM x%d (k integer)", d);
		th_runf(a, "CREATE CONTINUOUS VIEW xv%d AS SELECT k, count(*) FROM x%d GROUP BY k",
			d, d);
		expect_tag(a, "BEGIN", "BEGIN");
		cr_assert_eq(PQtransactionStatus(a), PQTRANS_INTRANS);
		expect_tagf(a, "INSERT 0 2", "INSERT INTO x%d VALUES (1), (1)", d);
		expect_tag(a, "COMMIT", "COMMIT");
		cr_assert_eq(PQtransactionStatus(a), PQTRANS_IDLE);
		/* no multi-statement transactions: the insert is applied at statement end */
		expect_tag(a, "BEGIN", "BEGIN");
		expect_tagf(a, "INSERT 0 1", "INSERT INTO x%d VALUES (2)", d);
		expect_tag(a, "ROLLBACK", "ROLLBACK");
		for (int b = 0; b < c->nnodes; b++)
			expect_queryf(conns[b], "1,2;2,1", "SELECT * FROM xv%d ORDER BY k", d);
		/* several statements in one query string */
		PGresult *r =
		    th_exec_okf(a, "INSERT INTO x%d VALUES (3); INSERT INTO x%d VALUES (3)", d, d);
		PQclear(r);
		for (int b = 0; b < c->nnodes; b++)
			expect_queryf(conns[b], "2", "SELECT count FROM xv%d WHERE k = 3", d);
	}
	finish_all(c, conns);
	th_cluster_stop(c);
}
