/*
 * pq.c - libpq helpers for integration tests: connecting to nodes, running statements that
 * must succeed or fail with a given SQLSTATE, COPY FROM STDIN, and comparing two result sets
 * (the cluster's and the PostgreSQL oracle's) value by value.
 */
#include "harness.h"
#include "harness_int.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

PGconn *th_try_connect(const th_node *n)
{
	char ci[256];
	snprintf(ci, sizeof ci,
		 "host=%s port=%d user=tally dbname=tally connect_timeout=10 "
		 "application_name=tally_test",
		 n->host[0] ? n->host : "127.0.0.1", n->sql_port);
	PGconn *c = PQconnectdb(ci);
	if (PQstatus(c) != CONNECTION_OK) {
		PQfinish(c);
		return NULL;
	}
	return c;
}

PGconn *th_connect(const th_node *n)
{
	char ci[256];
	snprintf(ci, sizeof ci,
		 "host=%s port=%d user=tally dbname=tally connect_timeout=10 "
		 "application_name=tally_test",
		 n->host[0] ? n->host : "127.0.0.1", n->sql_port);
	PGconn *c = PQconnectdb(ci);
	if (PQstatus(c) != CONNECTION_OK) {
		char msg[512];
		snprintf(msg, sizeof msg, "%s", PQerrorMessage(c));
		PQfinish(c);
		cr_assert_fail("cannot connect to %s (port %d): %s", n->name, n->sql_port, msg);
	}
	return c;
}

static char *vfmt(const char *fmt, va_list ap)
{
	char *s = NULL;
	if (vasprintf(&s, fmt, ap) < 0)
		cr_assert_fail("out of memory");
	return s;
}

PGresult *th_exec_ok(PGconn *conn, const char *sql)
{
	PGresult *r = PQexec(conn, sql);
	ExecStatusType st = PQresultStatus(r);
	if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
		const char *code = PQresultErrorField(r, PG_DIAG_SQLSTATE);
		cr_assert_fail("statement failed: %.300s\n  -> %s [%s] %s", sql, PQresStatus(st),
			       code ? code : "-", PQresultErrorMessage(r));
	}
	return r;
}

PGresult *th_exec_okf(PGconn *conn, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *sql = vfmt(fmt, ap);
	va_end(ap);
	PGresult *r = th_exec_ok(conn, sql);
	free(sql);
	return r;
}

void th_run(PGconn *conn, const char *sql)
{
	PQclear(th_exec_ok(conn, sql));
}

void th_runf(PGconn *conn, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *sql = vfmt(fmt, ap);
	va_end(ap);
	PQclear(th_exec_ok(conn, sql));
	free(sql);
}

PGresult *th_exec_err(PGconn *conn, const char *sql, const char *expected_sqlstate)
{
	PGresult *r = PQexec(conn, sql);
	ExecStatusType st = PQresultStatus(r);
	cr_assert(st == PGRES_FATAL_ERROR, "expected an error (%s) from: %.300s\n  got %s",
		  expected_sqlstate ? expected_sqlstate : "any", sql, PQresStatus(st));
	const char *code = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	if (expected_sqlstate)
		cr_assert(code && strcmp(code, expected_sqlstate) == 0,
			  "expected SQLSTATE %s from: %.300s\n  got %s: %s", expected_sqlstate, sql,
			  code ? code : "(none)", PQresultErrorMessage(r));
	return r;
}

char *th_query_str(PGconn *conn, const char *sql)
{
	PGresult *r = th_exec_ok(conn, sql);
	cr_assert(PQntuples(r) == 1 && PQnfields(r) >= 1, "expected one row from %s, got %d", sql,
		  PQntuples(r));
	char *s = PQgetisnull(r, 0, 0) ? NULL : tally_xstrdup(PQgetvalue(r, 0, 0));
	PQclear(r);
	return s;
}

int64_t th_query_int(PGconn *conn, const char *sql)
{
	char *s = th_query_str(conn, sql);
	cr_assert(s != NULL, "NULL from %s", sql);
	char *end = NULL;
	long long v = strtoll(s, &end, 10);
	cr_assert(end && *end == 0 && end != s, "not an integer from %s: '%s'", sql, s);
	free(s);
	return (int64_t)v;
}

int64_t th_query_intf(PGconn *conn, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *sql = vfmt(fmt, ap);
	va_end(ap);
	int64_t v = th_query_int(conn, sql);
	free(sql);
	return v;
}

PGresult *th_copy_in(PGconn *conn, const char *copy_sql, const char *data, size_t len, size_t chunk)
{
	PGresult *r = PQexec(conn, copy_sql);
	if (PQresultStatus(r) != PGRES_COPY_IN)
		return r; /* an error (or a surprise) the caller looks at */
	PQclear(r);
	if (chunk == 0)
		chunk = len ? len : 1;
	for (size_t off = 0; off < len; off += chunk) {
		size_t n = len - off < chunk ? len - off : chunk;
		if (PQputCopyData(conn, data + off, (int)n) != 1)
			break;
	}
	PQputCopyEnd(conn, NULL);
	PGresult *last = NULL;
	while ((r = PQgetResult(conn)) != NULL) {
		if (last)
			PQclear(last);
		last = r;
	}
	cr_assert(last != NULL, "COPY gave no result: %s", PQerrorMessage(conn));
	return last;
}

void th_copy_ok(PGconn *conn, const char *copy_sql, const char *data, size_t len,
		long expected_rows)
{
	PGresult *r = th_copy_in(conn, copy_sql, data, len, 64 * 1024);
	cr_assert(PQresultStatus(r) == PGRES_COMMAND_OK, "%s failed: %s", copy_sql,
		  PQresultErrorMessage(r));
	char want[64];
	snprintf(want, sizeof want, "COPY %ld", expected_rows);
	cr_assert(strcmp(PQcmdStatus(r), want) == 0, "%s: tag '%s', expected '%s'", copy_sql,
		  PQcmdStatus(r), want);
	PQclear(r);
}

/* ---- comparing results ------------------------------------------------------------------- */

struct sort_ctx {
	const PGresult *r;
	const int *keys;
	int nkeys;
};

static int cell_cmp(const PGresult *a, int ra, const PGresult *b, int rb, int col)
{
	bool na = PQgetisnull(a, ra, col), nb = PQgetisnull(b, rb, col);
	if (na || nb)
		return (int)na - (int)nb; /* NULLs last */
	return strcmp(PQgetvalue(a, ra, col), PQgetvalue(b, rb, col));
}

static int key_cmp(const PGresult *a, int ra, const PGresult *b, int rb, const int *keys, int nkeys)
{
	for (int i = 0; i < nkeys; i++) {
		int c = cell_cmp(a, ra, b, rb, keys[i]);
		if (c)
			return c;
	}
	return 0;
}

static int row_sort_cmp(const void *x, const void *y, void *arg)
{
	const struct sort_ctx *s = arg;
	int ra = *(const int *)x, rb = *(const int *)y;
	int c = key_cmp(s->r, ra, s->r, rb, s->keys, s->nkeys);
	if (c)
		return c;
	for (int col = 0; col < PQnfields(s->r); col++) {
		c = cell_cmp(s->r, ra, s->r, rb, col);
		if (c)
			return c;
	}
	return 0;
}

static int *sorted_rows(const PGresult *r, const int *keys, int nkeys)
{
	int n = PQntuples(r);
	int *idx = tally_xmalloc(sizeof(int) * (size_t)(n ? n : 1));
	for (int i = 0; i < n; i++)
		idx[i] = i;
	if (nkeys < 0)
		return idx; /* keep the order the server gave */
	struct sort_ctx s = {r, keys, nkeys};
	qsort_r(idx, (size_t)n, sizeof(int), row_sort_cmp, &s);
	return idx;
}

static bool is_float_type(Oid t)
{
	return t == TH_OID_FLOAT4 || t == TH_OID_FLOAT8;
}

static bool float_eq(const char *a, const char *b)
{
	if (strcmp(a, b) == 0)
		return true;
	char *ea = NULL, *eb = NULL;
	double x = strtod(a, &ea), y = strtod(b, &eb);
	if (!ea || *ea || !eb || *eb)
		return false;
	if (isnan(x) || isnan(y) || isinf(x) || isinf(y))
		return false;
	double d = fabs(x - y);
	double m = fmax(fabs(x), fabs(y));
	return d <= 1e-9 * m || d <= 1e-9;
}

static void print_row(const char *label, const PGresult *r, int row)
{
	fprintf(stderr, "    %s: (", label);
	for (int c = 0; c < PQnfields(r); c++)
		fprintf(stderr, "%s%s", c ? ", " : "",
			PQgetisnull(r, row, c) ? "NULL" : PQgetvalue(r, row, c));
	fprintf(stderr, ")\n");
}

int th_compare_results(const PGresult *a, const PGresult *b, const int *key_cols, int nkeys,
		       const char *what)
{
	int ncols = PQnfields(a);
	if (ncols != PQnfields(b)) {
		fprintf(stderr, "compare %s: %d columns vs %d in the oracle\n", what, ncols,
			PQnfields(b));
		return 1;
	}
	int all[256];
	bool ordered = nkeys < 0;
	if (nkeys == 0) {
		nkeys = ncols < 256 ? ncols : 256;
		for (int i = 0; i < nkeys; i++)
			all[i] = i;
		key_cols = all;
	}
	int bad = 0;
	for (int c = 0; c < ncols; c++)
		if (PQftype(a, c) != PQftype(b, c)) {
			fprintf(stderr, "compare %s: column %d (%s) has type oid %u, oracle %u\n",
				what, c + 1, PQfname(a, c), PQftype(a, c), PQftype(b, c));
			bad++;
		}
	if (PQntuples(a) != PQntuples(b)) {
		fprintf(stderr, "compare %s: %d rows, oracle %d\n", what, PQntuples(a),
			PQntuples(b));
		bad++;
	}
	int *ia = sorted_rows(a, key_cols, ordered ? -1 : nkeys);
	int *ib = sorted_rows(b, key_cols, ordered ? -1 : nkeys);
	int i = 0, j = 0, shown = 0, na = PQntuples(a), nb = PQntuples(b);
	while (i < na || j < nb) {
		int c;
		if (i >= na)
			c = 1;
		else if (j >= nb)
			c = -1;
		else if (ordered)
			c = 0; /* row i against row i */
		else
			c = key_cmp(a, ia[i], b, ib[j], key_cols, nkeys);
		if (c < 0) {
			if (shown++ < 10) {
				fprintf(stderr, "compare %s: row only in the cluster\n", what);
				print_row("cluster", a, ia[i]);
			}
			bad++;
			i++;
			continue;
		}
		if (c > 0) {
			if (shown++ < 10) {
				fprintf(stderr, "compare %s: row missing from the cluster\n", what);
				print_row("oracle ", b, ib[j]);
			}
			bad++;
			j++;
			continue;
		}
		bool same = true;
		for (int col = 0; col < ncols && same; col++) {
			bool nula = PQgetisnull(a, ia[i], col), nulb = PQgetisnull(b, ib[j], col);
			if (nula || nulb) {
				same = nula == nulb;
				continue;
			}
			const char *va = PQgetvalue(a, ia[i], col), *vb = PQgetvalue(b, ib[j], col);
			if (is_float_type(PQftype(a, col)) || is_float_type(PQftype(b, col)))
				same = float_eq(va, vb);
			else
				same = strcmp(va, vb) == 0;
		}
		if (!same) {
			if (shown++ < 10) {
				fprintf(stderr, "compare %s: values differ\n", what);
				print_row("cluster", a, ia[i]);
				print_row("oracle ", b, ib[j]);
			}
			bad++;
		}
		i++;
		j++;
	}
	free(ia);
	free(ib);
	return bad;
}

int th_oracle_compare(PGconn *cluster_conn, PGconn *oracle_conn, const char *query_cluster,
		      const char *query_oracle, const int *key_cols, int nkeys)
{
	PGresult *a = th_exec_ok(cluster_conn, query_cluster);
	PGresult *b = th_exec_ok(oracle_conn, query_oracle);
	int bad = th_compare_results(a, b, key_cols, nkeys, query_cluster);
	int n = PQntuples(b);
	PQclear(a);
	PQclear(b);
	cr_assert(bad == 0, "%d mismatches between the cluster's\n  %s\nand the oracle's\n  %s",
		  bad, query_cluster, query_oracle);
	return n;
}

typedef struct node_state_ctx {
	th_node *at;
	const char *name;
	const char *want; /* NULL: absent */
} node_state_ctx;

static bool node_state_is(void *p)
{
	node_state_ctx *s = p;
	PGconn *conn = th_try_connect(s->at);
	if (!conn)
		return false;
	char sql[160];
	snprintf(sql, sizeof sql, "SELECT state FROM pipeline_cluster.nodes WHERE name = '%s'",
		 s->name);
	PGresult *r = PQexec(conn, sql);
	bool ok = PQresultStatus(r) == PGRES_TUPLES_OK &&
		  (s->want ? PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 0), s->want) == 0
			   : PQntuples(r) == 0);
	PQclear(r);
	PQfinish(conn);
	return ok;
}

void th_wait_node_state(th_node *at, const char *name, const char *want, int deadline_ms)
{
	node_state_ctx s = {at, name, want};
	cr_assert(th_wait_until(node_state_is, &s, deadline_ms), "node %s is not %s at %s", name,
		  want ? want : "gone", at->name);
}
