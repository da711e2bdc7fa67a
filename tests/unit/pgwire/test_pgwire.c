/*
 * test_pgwire.c - the protocol 3.0 server driven by libpq and by raw sockets.
 *
 * A small handler stands in for the SQL layer: it echoes the query text as a one-column row,
 * and recognises a few commands (`rows N`, `big N`, `error`, `warn`, `copy`, `copyfail N`,
 * `insert ...`, `begin`/`commit`, `fatal`) to exercise every response path. Its describe
 * callback knows the same commands, refuses several statements and `selec ...`, and counts
 * nothing: the query callback counts its calls, so tests can see that Describe runs nothing.
 */
#include "tally/pgwire.h"

#include <criterion/criterion.h>
#include <libpq-fe.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

/* ---- test handler -------------------------------------------------------------------------- */

typedef struct test_session {
	char txn;
} test_session;

static atomic_int n_open, n_close, n_query;

static void *t_open(void *ctx, tally_pg_conn *c, const char *user, const char *db, tally_err *err)
{
	(void)ctx;
	(void)c;
	(void)db;
	if (strcmp(user, "refuse") == 0) {
		tally_err_set(err, "28000", "role \"%s\" is not permitted to log in", user);
		return NULL;
	}
	test_session *s = calloc(1, sizeof *s);
	s->txn = 'I';
	atomic_fetch_add(&n_open, 1);
	return s;
}

static void t_close(void *session)
{
	free(session);
	atomic_fetch_add(&n_close, 1);
}

static char t_txn(void *session)
{
	return ((test_session *)session)->txn;
}

static void send_one(tally_pg_conn *c, const char *name, const char *v)
{
	tally_pg_col col = {name, 25, -1};
	tally_pg_send_row_description(c, 1, &col);
	uint32_t len = v ? (uint32_t)strlen(v) : 0;
	tally_pg_send_data_row(c, 1, &v, &len);
	tally_pg_send_command_complete(c, "SELECT 1");
}

static void t_query(void *session, tally_pg_conn *c, const char *sql)
{
	test_session *s = session;
	tally_err e;
	atomic_fetch_add(&n_query, 1);
	if (strspn(sql, " \t\n;") == strlen(sql)) {
		tally_pg_send_empty_query(c);
	} else if (strncmp(sql, "rows ", 5) == 0) {
		long n = atol(sql + 5);
		tally_pg_col cols[2] = {{"n", 23, 4}, {"maybe", 25, -1}};
		tally_pg_send_row_description(c, 2, cols);
		char buf[32];
		for (long i = 0; i < n; i++) {
			int l = snprintf(buf, sizeof buf, "%ld", i);
			const char *vals[2] = {buf, (i % 10 == 0) ? NULL : "x"};
			uint32_t lens[2] = {(uint32_t)l, 1};
			if (tally_pg_send_data_row(c, 2, vals, lens) != 0)
				return;
		}
		snprintf(buf, sizeof buf, "SELECT %ld", n);
		tally_pg_send_command_complete(c, buf);
	} else if (strcmp(sql, "error") == 0 || strcmp(sql, "select error") == 0) {
		tally_err_set(&e, TALLY_SQLSTATE_SYNTAX, "syntax error at or near \"error\"");
		tally_err_detail(&e, "some detail");
		tally_err_hint(&e, "some hint");
		e.position = 1;
		if (s->txn == 'T')
			s->txn = 'E'; /* as a real session: the transaction is aborted */
		tally_pg_send_error(c, &e);
	} else if (strncmp(sql, "big ", 4) == 0) {
		/* N rows of 1 MiB each */
		long n = atol(sql + 4);
		tally_pg_col col = {"blob", 25, -1};
		tally_pg_send_row_description(c, 1, &col);
		uint32_t len = 1u << 20;
		char *blob = malloc(len);
		memset(blob, 'b', len);
		const char *v = blob;
		long i = 0;
		for (; i < n; i++)
			if (tally_pg_send_data_row(c, 1, &v, &len) != 0)
				break;
		free(blob);
		if (i == n)
			tally_pg_send_command_complete(c, "SELECT 1");
	} else if (strcmp(sql, "fatal") == 0) {
		tally_err_set(&e, TALLY_SQLSTATE_INTERNAL, "going away");
		e.severity = TALLY_SEV_FATAL;
		tally_pg_send_error(c, &e);
	} else if (strcmp(sql, "warn") == 0) {
		tally_err_set(&e, "01000", "careful now");
		e.severity = TALLY_SEV_WARNING;
		tally_pg_send_error(c, &e);
		send_one(c, "w", "ok");
	} else if (strcmp(sql, "copy") == 0 || strncmp(sql, "copyfail ", 9) == 0) {
		long failat = sql[4] == 'f' ? atol(sql + 9) : -1;
		if (tally_pg_copy_in_begin(c, 2) != 0)
			return;
		size_t total = 0;
		for (;;) {
			const char *d;
			size_t n;
			int rc = tally_pg_copy_read(c, &d, &n, &e);
			if (rc < 0) {
				tally_pg_send_error(c, &e);
				return;
			}
			if (rc == 1)
				break;
			total += n;
			if (failat >= 0 && (long)total >= failat) {
				tally_err_set(&e, TALLY_SQLSTATE_BAD_COPY, "bad row %zu", total);
				tally_pg_send_error(c, &e);
				return;
			}
		}
		char tag[32];
		snprintf(tag, sizeof tag, "COPY %zu", total);
		tally_pg_send_command_complete(c, tag);
	} else if (strncmp(sql, "insert", 6) == 0) {
		tally_pg_send_command_complete(c, "INSERT 0 1");
	} else if (strcmp(sql, "begin") == 0) {
		s->txn = 'T';
		tally_pg_send_command_complete(c, "BEGIN");
	} else if (strcmp(sql, "commit") == 0) {
		s->txn = 'I';
		tally_pg_send_command_complete(c, "COMMIT");
	} else {
		send_one(c, "echo", sql);
	}
}

static int t_describe(void *session, const char *sql, const tally_pg_col **cols, int *ncols,
		      tally_err *err)
{
	(void)session;
	static const tally_pg_col echo_col[1] = {{"echo", 25, -1}};
	static const tally_pg_col rows_cols[2] = {{"n", 23, 4}, {"maybe", 25, -1}};
	static const tally_pg_col big_col[1] = {{"blob", 25, -1}};
	const char *semi = strchr(sql, ';');
	if (semi && semi[strspn(semi, " \t\n;")] != 0) {
		tally_err_set(err, TALLY_SQLSTATE_SYNTAX,
			      "cannot insert multiple commands into a prepared statement");
		return -1;
	}
	if (strncmp(sql, "selec ", 6) == 0) {
		tally_err_set(err, TALLY_SQLSTATE_SYNTAX, "syntax error at or near \"selec\"");
		err->position = 1;
		return -1;
	}
	static const char *const nodata[] = {"insert", "begin", "commit",      "copy",
					     "error",  "fatal", "select error"};
	if (strspn(sql, " \t\n;") == strlen(sql))
		return 0;
	for (size_t i = 0; i < sizeof nodata / sizeof nodata[0]; i++)
		if (strncmp(sql, nodata[i], strlen(nodata[i])) == 0)
			return 0;
	if (strncmp(sql, "rows ", 5) == 0) {
		*cols = rows_cols;
		*ncols = 2;
	} else if (strncmp(sql, "big ", 4) == 0) {
		*cols = big_col;
		*ncols = 1;
	} else {
		*cols = echo_col;
		*ncols = 1;
	}
	return 1;
}

static const tally_pg_handlers handlers = {
    .session_open = t_open,
    .query = t_query,
    .describe = t_describe,
    .txn_status = t_txn,
    .session_close = t_close,
};

/* The same without a describe callback: every statement is described as NoData. */
static const tally_pg_handlers handlers_nodesc = {
    .session_open = t_open,
    .query = t_query,
    .txn_status = t_txn,
    .session_close = t_close,
};

/* ---- fixtures ------------------------------------------------------------------------------ */

static tally_pg_server *srv;
static int port;

static void start(void)
{
	atomic_store(&n_open, 0);
	atomic_store(&n_close, 0);
	atomic_store(&n_query, 0);
	cr_assert_eq(tally_pg_server_open("127.0.0.1", 0, &handlers, NULL, &srv), 0);
	port = tally_pg_server_port(srv);
	cr_assert_gt(port, 0);
}

static void stop(void)
{
	if (srv)
		tally_pg_server_close(srv);
	srv = NULL;
}

static PGconn *connect_opts(const char *extra)
{
	char ci[256];
	snprintf(ci, sizeof ci, "host=127.0.0.1 port=%d user=u dbname=d connect_timeout=10 %s",
		 port, extra ? extra : "sslmode=disable gssencmode=disable");
	PGconn *c = PQconnectdb(ci);
	cr_assert_not_null(c);
	cr_assert_eq(PQstatus(c), CONNECTION_OK, "connect: %s", PQerrorMessage(c));
	return c;
}

static PGconn *connect_pg(void)
{
	return connect_opts(NULL);
}

static void expect_echo(PGconn *c, const char *q)
{
	PGresult *r = PQexec(c, q);
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQresultErrorMessage(r));
	cr_assert_eq(PQntuples(r), 1);
	cr_assert_str_eq(PQgetvalue(r, 0, 0), q);
	PQclear(r);
}

static bool wait_nconns(int n)
{
	int64_t deadline = tally_mono_us() + 5000000;
	while (tally_mono_us() < deadline) {
		if (tally_pg_server_nconns(srv) == n)
			return true;
		poll(NULL, 0, 5);
	}
	return false;
}

TestSuite(pgwire, .init = start, .fini = stop, .timeout = 30);

/* ---- simple query -------------------------------------------------------------------------- */

Test(pgwire, simple_query_echoes_text)
{
	PGconn *c = connect_pg();
	expect_echo(c, "hello 'world'");
	expect_echo(c, "second query");
	cr_assert_str_eq(PQparameterStatus(c, "server_encoding"), "UTF8");
	cr_assert_str_eq(PQparameterStatus(c, "standard_conforming_strings"), "on");
	cr_assert_eq(strncmp(PQparameterStatus(c, "server_version"), "15.0 (tally", 11), 0);
	cr_assert_eq(PQserverVersion(c), 150000);
	cr_assert_eq(tally_pg_server_nconns(srv), 1);
	PQfinish(c);
	cr_assert(wait_nconns(0));
	cr_assert_eq(atomic_load(&n_close), 1);
}

Test(pgwire, many_rows_with_nulls)
{
	PGconn *c = connect_pg();
	PGresult *r = PQexec(c, "rows 100000");
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQresultErrorMessage(r));
	cr_assert_eq(PQntuples(r), 100000);
	cr_assert_eq(PQnfields(r), 2);
	cr_assert_str_eq(PQfname(r, 0), "n");
	cr_assert_eq(PQftype(r, 0), 23);
	cr_assert_str_eq(PQgetvalue(r, 99999, 0), "99999");
	cr_assert(PQgetisnull(r, 0, 1));
	cr_assert(PQgetisnull(r, 50000, 1));
	cr_assert(!PQgetisnull(r, 50001, 1));
	cr_assert_str_eq(PQcmdTuples(r), "100000");
	PQclear(r);
	PQfinish(c);
}

Test(pgwire, empty_query)
{
	PGconn *c = connect_pg();
	PGresult *r = PQexec(c, "");
	cr_assert_eq(PQresultStatus(r), PGRES_EMPTY_QUERY);
	PQclear(r);
	expect_echo(c, "still here");
	PQfinish(c);
}

Test(pgwire, error_fields_and_recovery)
{
	PGconn *c = connect_pg();
	PGresult *r = PQexec(c, "error");
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_SQLSTATE), "42601");
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_SEVERITY), "ERROR");
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED), "ERROR");
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY),
			 "syntax error at or near \"error\"");
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_MESSAGE_DETAIL), "some detail");
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_MESSAGE_HINT), "some hint");
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_STATEMENT_POSITION), "1");
	PQclear(r);
	expect_echo(c, "after error");
	PQfinish(c);
}

static void notice_rx(void *arg, const PGresult *r)
{
	char *out = arg;
	snprintf(out, 128, "%s/%s/%s", PQresultErrorField(r, PG_DIAG_SEVERITY),
		 PQresultErrorField(r, PG_DIAG_SQLSTATE),
		 PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY));
}

Test(pgwire, warning_then_row)
{
	PGconn *c = connect_pg();
	char seen[128] = "";
	PQsetNoticeReceiver(c, notice_rx, seen);
	PGresult *r = PQexec(c, "warn");
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK);
	cr_assert_str_eq(PQgetvalue(r, 0, 0), "ok");
	cr_assert_str_eq(seen, "WARNING/01000/careful now");
	PQclear(r);
	PQfinish(c);
}

Test(pgwire, transaction_status_reported)
{
	PGconn *c = connect_pg();
	PQclear(PQexec(c, "begin"));
	cr_assert_eq(PQtransactionStatus(c), PQTRANS_INTRANS);
	PQclear(PQexec(c, "commit"));
	cr_assert_eq(PQtransactionStatus(c), PQTRANS_IDLE);
	PQfinish(c);
}

Test(pgwire, fatal_closes_connection)
{
	PGconn *c = connect_pg();
	PGresult *r = PQexec(c, "fatal");
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
	PQclear(r);
	cr_assert(wait_nconns(0));
	PQfinish(c);
	PGconn *c2 = connect_pg();
	expect_echo(c2, "new connection");
	PQfinish(c2);
}

Test(pgwire, large_query_text)
{
	PGconn *c = connect_pg();
	size_t n = 3u << 20;
	char *q = malloc(n + 1);
	for (size_t i = 0; i < n; i++)
		q[i] = (char)('a' + i % 26);
	q[n] = 0;
	expect_echo(c, q);
	free(q);
	expect_echo(c, "small again");
	PQfinish(c);
}

Test(pgwire, refused_session)
{
	char ci[160];
	snprintf(ci, sizeof ci, "host=127.0.0.1 port=%d user=refuse sslmode=disable", port);
	PGconn *c = PQconnectdb(ci);
	cr_assert_eq(PQstatus(c), CONNECTION_BAD);
	cr_assert(strstr(PQerrorMessage(c), "not permitted") != NULL, "%s", PQerrorMessage(c));
	PQfinish(c);
	PGconn *c2 = connect_pg();
	expect_echo(c2, "fine");
	PQfinish(c2);
}

/* ---- extended protocol --------------------------------------------------------------------- */

Test(pgwire, exec_params_quotes_literals)
{
	PGconn *c = connect_pg();
	const char *vals[3] = {"it's", NULL, "$2 'x'"};
	PGresult *r =
	    PQexecParams(c, "select $1, $2, $3, '$1', \"$2\" -- $3", 3, NULL, vals, NULL, NULL, 0);
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQresultErrorMessage(r));
	cr_assert_eq(PQnfields(r), 1);
	cr_assert_str_eq(PQgetvalue(r, 0, 0),
			 "select 'it''s', NULL, '$2 ''x''', '$1', \"$2\" -- $3");
	PQclear(r);
	/* no parameters, several rows */
	r = PQexecParams(c, "rows 5", 0, NULL, NULL, NULL, NULL, 0);
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK);
	cr_assert_eq(PQntuples(r), 5);
	cr_assert_str_eq(PQgetvalue(r, 4, 0), "4");
	PQclear(r);
	/* command without rows */
	const char *one[1] = {"7"};
	r = PQexecParams(c, "insert into s values ($1)", 1, NULL, one, NULL, NULL, 0);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQresultErrorMessage(r));
	cr_assert_str_eq(PQcmdStatus(r), "INSERT 0 1");
	PQclear(r);
	PQfinish(c);
}

Test(pgwire, prepare_describe_execute)
{
	PGconn *c = connect_pg();
	PGresult *r = PQprepare(c, "s1", "select $1", 0, NULL);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQresultErrorMessage(r));
	PQclear(r);
	r = PQdescribePrepared(c, "s1");
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQresultErrorMessage(r));
	cr_assert_eq(PQnparams(r), 1);
	cr_assert_eq(PQparamtype(r, 0), 25);
	cr_assert_eq(PQnfields(r), 1);
	cr_assert_str_eq(PQfname(r, 0), "echo");
	PQclear(r);
	for (int i = 0; i < 3; i++) {
		char v[16];
		snprintf(v, sizeof v, "v%d", i);
		const char *vals[1] = {v};
		r = PQexecPrepared(c, "s1", 1, vals, NULL, NULL, 0);
		cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQresultErrorMessage(r));
		char want[32];
		snprintf(want, sizeof want, "select 'v%d'", i);
		cr_assert_str_eq(PQgetvalue(r, 0, 0), want);
		PQclear(r);
	}
	/* declared types are reported back; non-queries describe as NoData */
	Oid types[1] = {23};
	r = PQprepare(c, "s2", "insert $1", 1, types);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK);
	PQclear(r);
	r = PQdescribePrepared(c, "s2");
	cr_assert_eq(PQnparams(r), 1);
	cr_assert_eq(PQparamtype(r, 0), 23);
	cr_assert_eq(PQnfields(r), 0);
	PQclear(r);
	/* duplicate name */
	r = PQprepare(c, "s1", "select 1", 0, NULL);
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_SQLSTATE), "42P05");
	PQclear(r);
	/* unknown statement */
	r = PQexecPrepared(c, "nope", 0, NULL, NULL, NULL, 0);
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_SQLSTATE), "26000");
	PQclear(r);
	/* wrong parameter count */
	r = PQexecPrepared(c, "s1", 0, NULL, NULL, NULL, 0);
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_SQLSTATE), "08P01");
	PQclear(r);
	expect_echo(c, "still usable");
	PQfinish(c);
}

Test(pgwire, extended_errors_skip_to_sync)
{
	PGconn *c = connect_pg();
	PGresult *r = PQexecParams(c, "error", 0, NULL, NULL, NULL, NULL, 0);
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_SQLSTATE), "42601");
	PQclear(r);
	/* binary parameters are refused */
	const char *vals[1] = {"\x01\x02"};
	int lens[1] = {2}, fmts[1] = {1};
	r = PQexecParams(c, "select $1", 1, NULL, vals, lens, fmts, 0);
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_SQLSTATE), "0A000");
	PQclear(r);
	/* a prepared statement that errors at Describe of the statement still works after */
	r = PQprepare(c, "bad", "select error", 0, NULL);
	PQclear(r);
	r = PQdescribePrepared(c, "bad");
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK);
	cr_assert_eq(PQnfields(r), 0);
	PQclear(r);
	r = PQexecPrepared(c, "bad", 0, NULL, NULL, NULL, 0);
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
	PQclear(r);
	/* COPY is refused in the extended protocol */
	r = PQexecParams(c, "copy", 0, NULL, NULL, NULL, NULL, 0);
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_SQLSTATE), "0A000");
	PQclear(r);
	expect_echo(c, "recovered");
	PQfinish(c);
}

Test(pgwire, pipeline_mode_several_queries)
{
	PGconn *c = connect_pg();
	cr_assert_eq(PQenterPipelineMode(c), 1);
	const char *v1[1] = {"a"};
	cr_assert_eq(PQsendQueryParams(c, "select $1", 1, NULL, v1, NULL, NULL, 0), 1);
	cr_assert_eq(PQsendQueryParams(c, "rows 3", 0, NULL, NULL, NULL, NULL, 0), 1);
	cr_assert_eq(PQpipelineSync(c), 1);
	PGresult *r = PQgetResult(c);
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQresultErrorMessage(r));
	cr_assert_str_eq(PQgetvalue(r, 0, 0), "select 'a'");
	PQclear(r);
	cr_assert_null(PQgetResult(c));
	r = PQgetResult(c);
	cr_assert_eq(PQntuples(r), 3);
	PQclear(r);
	cr_assert_null(PQgetResult(c));
	r = PQgetResult(c);
	cr_assert_eq(PQresultStatus(r), PGRES_PIPELINE_SYNC);
	PQclear(r);
	cr_assert_eq(PQexitPipelineMode(c), 1);
	expect_echo(c, "out of pipeline");
	PQfinish(c);
}

/* ---- COPY ---------------------------------------------------------------------------------- */

Test(pgwire, copy_in_counts_bytes)
{
	PGconn *c = connect_pg();
	PGresult *r = PQexec(c, "copy");
	cr_assert_eq(PQresultStatus(r), PGRES_COPY_IN, "%s", PQresultErrorMessage(r));
	cr_assert_eq(PQnfields(r), 2);
	cr_assert_eq(PQbinaryTuples(r), 0);
	PQclear(r);
	char chunk[1000];
	memset(chunk, 'z', sizeof chunk);
	for (int i = 0; i < 1000; i++)
		cr_assert_eq(PQputCopyData(c, chunk, sizeof chunk), 1);
	cr_assert_eq(PQputCopyEnd(c, NULL), 1);
	r = PQgetResult(c);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQresultErrorMessage(r));
	cr_assert_str_eq(PQcmdTuples(r), "1000000");
	PQclear(r);
	cr_assert_null(PQgetResult(c));
	expect_echo(c, "after copy");
	PQfinish(c);
}

Test(pgwire, copy_fail_from_client)
{
	PGconn *c = connect_pg();
	PGresult *r = PQexec(c, "copy");
	cr_assert_eq(PQresultStatus(r), PGRES_COPY_IN);
	PQclear(r);
	cr_assert_eq(PQputCopyData(c, "1,2\n", 4), 1);
	cr_assert_eq(PQputCopyEnd(c, "boom"), 1);
	r = PQgetResult(c);
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_SQLSTATE), "57014");
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY),
			 "COPY from stdin failed: boom");
	PQclear(r);
	cr_assert_null(PQgetResult(c));
	expect_echo(c, "after copy fail");
	PQfinish(c);
}

Test(pgwire, copy_handler_error_midway_drains)
{
	PGconn *c = connect_pg();
	PGresult *r = PQexec(c, "copyfail 5000");
	cr_assert_eq(PQresultStatus(r), PGRES_COPY_IN);
	PQclear(r);
	char chunk[100];
	memset(chunk, 'q', sizeof chunk);
	/* the handler gives up after 5000 bytes; the client sends 2 MB regardless */
	for (int i = 0; i < 20000; i++)
		if (PQputCopyData(c, chunk, sizeof chunk) != 1)
			break;
	PQputCopyEnd(c, NULL);
	r = PQgetResult(c);
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_SQLSTATE), "22P04");
	PQclear(r);
	while ((r = PQgetResult(c)) != NULL)
		PQclear(r);
	expect_echo(c, "after failed copy");
	expect_echo(c, "and again");
	PQfinish(c);
}

/* ---- negotiation, concurrency, shutdown ---------------------------------------------------- */

Test(pgwire, ssl_and_gss_requests_fall_back)
{
	PGconn *c = connect_opts("sslmode=prefer gssencmode=prefer");
	cr_assert_eq(PQsslInUse(c), 0);
	expect_echo(c, "plain text");
	PQfinish(c);
	c = connect_opts("sslmode=allow");
	expect_echo(c, "allowed");
	PQfinish(c);
}

static void *client_thread(void *arg)
{
	long id = (long)arg;
	char ci[160];
	snprintf(ci, sizeof ci, "host=127.0.0.1 port=%d user=t%ld sslmode=disable", port, id);
	PGconn *c = PQconnectdb(ci);
	long ok = 0;
	if (PQstatus(c) == CONNECTION_OK) {
		for (int i = 0; i < 50; i++) {
			char q[64];
			snprintf(q, sizeof q, "client %ld query %d", id, i);
			PGresult *r = PQexec(c, q);
			if (PQresultStatus(r) == PGRES_TUPLES_OK &&
			    strcmp(PQgetvalue(r, 0, 0), q) == 0)
				ok++;
			PQclear(r);
			r = PQexec(c, "rows 100");
			if (PQntuples(r) == 100)
				ok++;
			PQclear(r);
		}
	}
	PQfinish(c);
	return (void *)ok;
}

Test(pgwire, concurrent_clients)
{
	pthread_t th[8];
	for (long i = 0; i < 8; i++)
		pthread_create(&th[i], NULL, client_thread, (void *)i);
	for (int i = 0; i < 8; i++) {
		void *res;
		pthread_join(th[i], &res);
		cr_assert_eq((long)res, 100, "client %d: %ld successes", i, (long)res);
	}
	cr_assert(wait_nconns(0));
	cr_assert_eq(atomic_load(&n_open), 8);
	cr_assert_eq(atomic_load(&n_close), 8);
}

Test(pgwire, close_server_with_open_clients)
{
	PGconn *c[3];
	for (int i = 0; i < 3; i++)
		c[i] = connect_pg();
	cr_assert_eq(tally_pg_server_nconns(srv), 3);
	tally_pg_server_close(srv);
	srv = NULL;
	cr_assert_eq(atomic_load(&n_close), 3);
	PGresult *r = PQexec(c[0], "gone");
	cr_assert_neq(PQresultStatus(r), PGRES_TUPLES_OK);
	PQclear(r);
	for (int i = 0; i < 3; i++)
		PQfinish(c[i]);
}

/* ---- raw sockets: garbage must not hurt the server ---------------------------------------- */

static int raw_connect(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	cr_assert_geq(fd, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
	struct timeval tv = {.tv_sec = 5};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	return fd;
}

static void raw_send(int fd, const void *p, size_t n)
{
	cr_assert_eq(send(fd, p, n, MSG_NOSIGNAL), (ssize_t)n);
}

/* Read until EOF (or timeout); returns bytes read into buf. */
static size_t raw_read_all(int fd, uint8_t *buf, size_t cap)
{
	size_t n = 0;
	while (n < cap) {
		ssize_t r = recv(fd, buf + n, cap - n, 0);
		if (r <= 0)
			break;
		n += (size_t)r;
	}
	return n;
}

static void raw_startup(int fd)
{
	uint8_t pkt[64];
	size_t n = 8;
	const char kv[] = "user\0raw\0\0";
	memcpy(pkt + 8, kv, sizeof kv - 1);
	n += sizeof kv - 1;
	tally_put_be32(pkt, (uint32_t)n);
	tally_put_be32(pkt + 4, 196608);
	raw_send(fd, pkt, n);
	/* read up to ReadyForQuery */
	uint8_t buf[4096];
	size_t got = 0;
	for (;;) {
		ssize_t r = recv(fd, buf + got, sizeof buf - got, 0);
		cr_assert_gt(r, 0);
		got += (size_t)r;
		if (got >= 6 && buf[got - 6] == 'Z')
			break;
	}
}

/* Does the response contain a FATAL ErrorResponse with this SQLSTATE? */
static bool has_fatal(const uint8_t *buf, size_t n, const char *sqlstate)
{
	for (size_t i = 0; i + 5 <= n;) {
		uint32_t len = tally_be32(buf + i + 1);
		if (buf[i] == 'E' && i + 1 + len <= n) {
			const uint8_t *f = buf + i + 5, *end = buf + i + 1 + len;
			bool fatal = false, code = false;
			while (f < end && *f) {
				const char *v = (const char *)f + 1;
				if (*f == 'S' && strcmp(v, "FATAL") == 0)
					fatal = true;
				if (*f == 'C' && strcmp(v, sqlstate) == 0)
					code = true;
				f += 2 + strlen(v);
			}
			if (fatal && code)
				return true;
		}
		i += 1 + len;
	}
	return false;
}

static void check_server_alive(void)
{
	cr_assert(wait_nconns(0));
	PGconn *c = connect_pg();
	expect_echo(c, "alive");
	PQfinish(c);
}

Test(pgwire, garbage_oversized_message)
{
	int fd = raw_connect();
	raw_startup(fd);
	uint8_t m[5] = {'Q', 0x7F, 0xFF, 0xFF, 0xFF};
	raw_send(fd, m, 5);
	uint8_t buf[4096];
	size_t n = raw_read_all(fd, buf, sizeof buf);
	cr_assert(has_fatal(buf, n, "08P01"));
	close(fd);
	check_server_alive();
}

Test(pgwire, garbage_unknown_message_type)
{
	int fd = raw_connect();
	raw_startup(fd);
	uint8_t m[5] = {'~', 0, 0, 0, 4};
	raw_send(fd, m, 5);
	uint8_t buf[4096];
	size_t n = raw_read_all(fd, buf, sizeof buf);
	cr_assert(has_fatal(buf, n, "08P01"));
	close(fd);
	check_server_alive();
}

Test(pgwire, garbage_startup_packets)
{
	uint8_t buf[4096];
	/* truncated startup, then the client goes away */
	int fd = raw_connect();
	raw_send(fd, "\0\0", 2);
	close(fd);
	/* oversized startup length */
	fd = raw_connect();
	uint8_t big[8] = {0, 1, 0, 0, 0, 3, 0, 0};
	raw_send(fd, big, 8);
	cr_assert(has_fatal(buf, raw_read_all(fd, buf, sizeof buf), "08P01"));
	close(fd);
	/* no user */
	fd = raw_connect();
	uint8_t nouser[9] = {0, 0, 0, 9, 0, 3, 0, 0, 0};
	raw_send(fd, nouser, 9);
	cr_assert(has_fatal(buf, raw_read_all(fd, buf, sizeof buf), "28000"));
	close(fd);
	/* unsupported protocol version */
	fd = raw_connect();
	uint8_t v2[9] = {0, 0, 0, 9, 0, 2, 0, 0, 0};
	raw_send(fd, v2, 9);
	cr_assert(has_fatal(buf, raw_read_all(fd, buf, sizeof buf), "0A000"));
	close(fd);
	/* cancel request: closed without a reply */
	fd = raw_connect();
	uint8_t cancel[16] = {0, 0, 0, 16, 0x04, 0xD2, 0x16, 0x2E, 0, 0, 0, 1, 0, 0, 0, 2};
	raw_send(fd, cancel, 16);
	cr_assert_eq(raw_read_all(fd, buf, sizeof buf), 0);
	close(fd);
	/* unterminated parameter list */
	fd = raw_connect();
	uint8_t bad[12] = {0, 0, 0, 12, 0, 3, 0, 0, 'u', 's', 'e', 'r'};
	raw_send(fd, bad, 12);
	cr_assert(has_fatal(buf, raw_read_all(fd, buf, sizeof buf), "08P01"));
	close(fd);
	check_server_alive();
}

Test(pgwire, garbage_random_bytes)
{
	unsigned seed = 12345;
	for (int round = 0; round < 40; round++) {
		int fd = raw_connect();
		if (round % 2)
			raw_startup(fd);
		uint8_t junk[512];
		for (size_t i = 0; i < sizeof junk; i++)
			junk[i] = (uint8_t)rand_r(&seed);
		if (round % 4 == 1)
			junk[0] = "PBDECQ"[round % 6]; /* a valid type with junk inside */
		send(fd, junk, sizeof junk, MSG_NOSIGNAL);
		shutdown(fd, SHUT_WR);
		uint8_t buf[4096];
		raw_read_all(fd, buf, sizeof buf);
		close(fd);
	}
	check_server_alive();
}

/* Execute without Describe (as JDBC does after describing the statement) streams the rows
 * without a RowDescription. */
Test(pgwire, execute_without_describe)
{
	int fd = raw_connect();
	raw_startup(fd);
	uint8_t m[256];
	size_t n = 0;
	/* Parse "" "rows 2" 0 types */
	m[n++] = 'P';
	size_t at = n;
	n += 4;
	memcpy(m + n, "\0rows 2\0\0\0", 10);
	n += 10;
	tally_put_be32(m + at, (uint32_t)(n - at));
	/* Bind "" "" 0 formats 0 params 0 result formats */
	m[n++] = 'B';
	at = n;
	n += 4;
	memcpy(m + n, "\0\0\0\0\0\0\0\0", 8);
	n += 8;
	tally_put_be32(m + at, (uint32_t)(n - at));
	/* Execute "" 0 */
	m[n++] = 'E';
	tally_put_be32(m + n, 9);
	n += 4;
	memset(m + n, 0, 5);
	n += 5;
	/* Close statement "" */
	m[n++] = 'C';
	tally_put_be32(m + n, 6);
	n += 4;
	m[n++] = 'S';
	m[n++] = 0;
	/* Sync */
	m[n++] = 'S';
	tally_put_be32(m + n, 4);
	n += 4;
	raw_send(fd, m, n);
	uint8_t buf[4096];
	size_t got = 0;
	char types[64];
	int nt = 0;
	for (;;) {
		ssize_t r = recv(fd, buf + got, sizeof buf - got, 0);
		cr_assert_gt(r, 0);
		got += (size_t)r;
		nt = 0;
		size_t i = 0;
		while (i + 5 <= got && i + 1 + tally_be32(buf + i + 1) <= got && nt < 63) {
			types[nt++] = (char)buf[i];
			i += 1 + tally_be32(buf + i + 1);
		}
		types[nt] = 0;
		if (nt && types[nt - 1] == 'Z')
			break;
	}
	cr_assert_str_eq(types, "12DDC3Z");
	close(fd);
	check_server_alive();
}

Test(pgwire, gss_and_ssl_requests_answered_n)
{
	int fd = raw_connect();
	uint8_t gss[8] = {0, 0, 0, 8, 0x04, 0xD2, 0x16, 0x30}; /* 80877104 */
	uint8_t ssl[8] = {0, 0, 0, 8, 0x04, 0xD2, 0x16, 0x2F}; /* 80877103 */
	uint8_t ch = 0;
	raw_send(fd, gss, 8);
	cr_assert_eq(recv(fd, &ch, 1, 0), 1);
	cr_assert_eq(ch, 'N');
	raw_send(fd, ssl, 8);
	cr_assert_eq(recv(fd, &ch, 1, 0), 1);
	cr_assert_eq(ch, 'N');
	raw_startup(fd); /* asserts ReadyForQuery arrives */
	cr_assert_eq(tally_pg_server_nconns(srv), 1);
	close(fd);
	check_server_alive();
}

/* ---- extended protocol over raw sockets: message sequences as PostgreSQL 15 sends them ----- */

static void m_put(tally_buf *b, char type, const void *body, size_t n)
{
	uint8_t hdr[5] = {(uint8_t)type};
	tally_put_be32(hdr + 1, (uint32_t)(n + 4));
	tally_buf_append(b, hdr, 5);
	if (n)
		tally_buf_append(b, body, n);
}

static void m_parse(tally_buf *b, const char *stmt, const char *sql)
{
	tally_buf t = {0};
	tally_buf_append(&t, stmt, strlen(stmt) + 1);
	tally_buf_append(&t, sql, strlen(sql) + 1);
	tally_buf_put_u16(&t, 0);
	m_put(b, 'P', t.data, t.len);
	tally_buf_free(&t);
}

static void m_bind(tally_buf *b, const char *portal, const char *stmt)
{
	tally_buf t = {0};
	tally_buf_append(&t, portal, strlen(portal) + 1);
	tally_buf_append(&t, stmt, strlen(stmt) + 1);
	tally_buf_put_u16(&t, 0); /* formats */
	tally_buf_put_u16(&t, 0); /* parameters */
	tally_buf_put_u16(&t, 0); /* result formats */
	m_put(b, 'B', t.data, t.len);
	tally_buf_free(&t);
}

static void m_describe(tally_buf *b, char kind, const char *name)
{
	tally_buf t = {0};
	tally_buf_putc(&t, (uint8_t)kind);
	tally_buf_append(&t, name, strlen(name) + 1);
	m_put(b, 'D', t.data, t.len);
	tally_buf_free(&t);
}

static void m_execute(tally_buf *b, const char *portal, uint32_t maxrows)
{
	tally_buf t = {0};
	tally_buf_append(&t, portal, strlen(portal) + 1);
	tally_buf_put_u32(&t, maxrows);
	m_put(b, 'E', t.data, t.len);
	tally_buf_free(&t);
}

static void m_query(tally_buf *b, const char *sql)
{
	m_put(b, 'Q', sql, strlen(sql) + 1);
}

static void m_sync(tally_buf *b)
{
	m_put(b, 'S', NULL, 0);
}

static void m_send(int fd, tally_buf *b)
{
	raw_send(fd, b->data, b->len);
	b->len = 0;
}

/* What came back up to ReadyForQuery: message types, CommandComplete tags and SQLSTATEs, each
 * joined by '|'. */
typedef struct reply {
	char types[256];
	char tags[512];
	char codes[256];
	char status;
} reply;

typedef struct reader {
	int fd;
	uint8_t *buf;
	size_t len, cap;
	size_t used; /* bytes of the message last returned, still at the front */
} reader;

static void reader_init(reader *rd, int fd)
{
	rd->fd = fd;
	rd->cap = 1u << 20;
	rd->buf = malloc(rd->cap);
	rd->len = 0;
	rd->used = 0;
}

/* Next message; false on EOF or timeout (the socket has a 5 s receive timeout). */
static bool reader_next(reader *rd, uint8_t *type, const uint8_t **body, size_t *n)
{
	if (rd->used) {
		memmove(rd->buf, rd->buf + rd->used, rd->len - rd->used);
		rd->len -= rd->used;
		rd->used = 0;
	}
	for (;;) {
		if (rd->len >= 5) {
			size_t m = 1 + tally_be32(rd->buf + 1);
			cr_assert_lt(m, 64u << 20);
			if (m > rd->cap) {
				rd->cap = m;
				rd->buf = realloc(rd->buf, rd->cap);
			}
			if (rd->len >= m) {
				*type = rd->buf[0];
				*body = rd->buf + 5;
				*n = m - 5;
				rd->used = m;
				return true;
			}
		}
		ssize_t r = recv(rd->fd, rd->buf + rd->len, rd->cap - rd->len, 0);
		if (r <= 0)
			return false;
		rd->len += (size_t)r;
	}
}

static const char *err_field(const uint8_t *body, size_t n, char field)
{
	for (size_t i = 0; i < n && body[i];) {
		const char *v = (const char *)body + i + 1;
		if (body[i] == field)
			return v;
		i += 2 + strlen(v);
	}
	return "";
}

static void read_reply(reader *rd, reply *out)
{
	memset(out, 0, sizeof *out);
	for (;;) {
		uint8_t t;
		const uint8_t *body;
		size_t n;
		cr_assert(reader_next(rd, &t, &body, &n), "no ReadyForQuery; got \"%s\"",
			  out->types);
		size_t l = strlen(out->types);
		cr_assert_lt(l, sizeof out->types - 1);
		out->types[l] = (char)t;
		if (t == 'C') {
			if (out->tags[0])
				strcat(out->tags, "|");
			strncat(out->tags, (const char *)body, 64);
		} else if (t == 'E') {
			if (out->codes[0])
				strcat(out->codes, "|");
			strcat(out->codes, err_field(body, n, 'C'));
		} else if (t == 'Z') {
			out->status = (char)body[0];
			return;
		}
	}
}

/* No message arrives for a while (an extra ReadyForQuery would). */
static bool reader_quiet(reader *rd)
{
	if (rd->len > rd->used)
		return false;
	struct pollfd pf = {.fd = rd->fd, .events = POLLIN};
	return poll(&pf, 1, 300) == 0;
}

static int raw_session(reader *rd)
{
	int fd = raw_connect();
	raw_startup(fd);
	reader_init(rd, fd);
	return fd;
}

static void raw_session_end(reader *rd)
{
	close(rd->fd);
	free(rd->buf);
	check_server_alive();
}

/* Review defect: the second Describe of an executed portal read freed memory. PostgreSQL
 * answers RowDescription every time, also when Execute came first. */
Test(pgwire, describe_portal_again_after_execute)
{
	reader rd;
	raw_session(&rd);
	tally_buf b = {0};
	reply rp;
	m_parse(&b, "", "rows 2");
	m_bind(&b, "", "");
	m_describe(&b, 'P', "");
	m_execute(&b, "", 0);
	m_describe(&b, 'P', "");
	m_describe(&b, 'P', "");
	m_sync(&b);
	m_send(rd.fd, &b);
	read_reply(&rd, &rp);
	cr_assert_str_eq(rp.types, "12TDDCTTZ");
	cr_assert_str_eq(rp.tags, "SELECT 2");
	/* Execute first, then Describe: still the RowDescription */
	m_parse(&b, "", "hello");
	m_bind(&b, "", "");
	m_execute(&b, "", 0);
	m_describe(&b, 'P', "");
	m_sync(&b);
	m_send(rd.fd, &b);
	read_reply(&rd, &rp);
	cr_assert_str_eq(rp.types, "12DCTZ");
	/* a command describes as NoData before and after */
	m_parse(&b, "", "insert 1");
	m_bind(&b, "", "");
	m_describe(&b, 'P', "");
	m_execute(&b, "", 0);
	m_describe(&b, 'P', "");
	m_sync(&b);
	m_send(rd.fd, &b);
	read_reply(&rd, &rp);
	cr_assert_str_eq(rp.types, "12nCnZ");
	tally_buf_free(&b);
	raw_session_end(&rd);
}

/* Review defect: Describe ran the statement (side effects, and a failure aborted the user's
 * transaction). Describe now asks the describe callback only. */
Test(pgwire, describe_runs_nothing)
{
	PGconn *c = connect_pg();
	PQclear(PQexec(c, "begin"));
	cr_assert_eq(PQtransactionStatus(c), PQTRANS_INTRANS);
	int before = atomic_load(&n_query);
	PGresult *r = PQprepare(c, "e", "select error", 0, NULL);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQresultErrorMessage(r));
	PQclear(r);
	r = PQdescribePrepared(c, "e");
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQresultErrorMessage(r));
	cr_assert_eq(PQnfields(r), 0);
	PQclear(r);
	r = PQprepare(c, "i", "insert $1", 0, NULL);
	PQclear(r);
	r = PQdescribePrepared(c, "i");
	cr_assert_eq(PQnparams(r), 1);
	cr_assert_eq(PQparamtype(r, 0), 25);
	cr_assert_eq(PQnfields(r), 0);
	PQclear(r);
	r = PQprepare(c, "q", "rows $1", 0, NULL);
	PQclear(r);
	r = PQdescribePrepared(c, "q");
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQresultErrorMessage(r));
	cr_assert_eq(PQnfields(r), 2);
	cr_assert_str_eq(PQfname(r, 1), "maybe");
	cr_assert_eq(PQftype(r, 0), 23);
	PQclear(r);
	cr_assert_eq(atomic_load(&n_query), before, "Describe ran the query");
	cr_assert_eq(PQtransactionStatus(c), PQTRANS_INTRANS);
	/* several statements are refused at Parse, so nothing runs */
	r = PQprepare(c, "m", "hello; insert 1", 0, NULL);
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_SQLSTATE), "42601");
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY),
			 "cannot insert multiple commands into a prepared statement");
	PQclear(r);
	cr_assert_eq(atomic_load(&n_query), before);
	PQclear(PQexec(c, "commit"));
	PQfinish(c);

	/* a portal is described from its bound text; Execute then runs it once */
	reader rd;
	raw_session(&rd);
	tally_buf b = {0};
	reply rp;
	before = atomic_load(&n_query);
	m_parse(&b, "", "hello");
	m_bind(&b, "", "");
	m_describe(&b, 'P', "");
	m_sync(&b);
	m_send(rd.fd, &b);
	read_reply(&rd, &rp);
	cr_assert_str_eq(rp.types, "12TZ");
	cr_assert_eq(atomic_load(&n_query), before);
	m_parse(&b, "", "hello");
	m_bind(&b, "", "");
	m_describe(&b, 'P', "");
	m_execute(&b, "", 0);
	m_sync(&b);
	m_send(rd.fd, &b);
	read_reply(&rd, &rp);
	cr_assert_str_eq(rp.types, "12TDCZ");
	cr_assert_eq(atomic_load(&n_query), before + 1);
	tally_buf_free(&b);
	raw_session_end(&rd);
}

/* Review defect: Parse accepted anything. */
Test(pgwire, parse_checks_the_statement)
{
	PGconn *c = connect_pg();
	int before = atomic_load(&n_query);
	PGresult *r = PQexecParams(c, "hello; insert 2", 0, NULL, NULL, NULL, NULL, 0);
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_SQLSTATE), "42601");
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY),
			 "cannot insert multiple commands into a prepared statement");
	PQclear(r);
	r = PQprepare(c, "bad", "selec 1", 0, NULL);
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_SQLSTATE), "42601");
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_STATEMENT_POSITION), "1");
	PQclear(r);
	/* the failed Parse left no statement behind */
	r = PQdescribePrepared(c, "bad");
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_SQLSTATE), "26000");
	PQclear(r);
	cr_assert_eq(atomic_load(&n_query), before);
	/* a trailing semicolon is one statement */
	r = PQexecParams(c, "hello;", 0, NULL, NULL, NULL, NULL, 0);
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQresultErrorMessage(r));
	PQclear(r);
	expect_echo(c, "simple protocol may still send several; statements");
	PQfinish(c);
}

/* Review defect: a simple Query sent while skipping to Sync ran and got its own
 * ReadyForQuery. PostgreSQL ignores it. */
Test(pgwire, query_ignored_while_skipping_to_sync)
{
	reader rd;
	raw_session(&rd);
	tally_buf b = {0};
	reply rp;
	int before = atomic_load(&n_query);
	m_parse(&b, "", "selec 1");
	m_query(&b, "hello");
	m_bind(&b, "", "");
	m_execute(&b, "", 0);
	m_put(&b, 'H', NULL, 0);
	m_sync(&b);
	m_send(rd.fd, &b);
	read_reply(&rd, &rp);
	cr_assert_str_eq(rp.types, "EZ");
	cr_assert_str_eq(rp.codes, "42601");
	cr_assert(reader_quiet(&rd), "a second ReadyForQuery arrived");
	cr_assert_eq(atomic_load(&n_query), before);
	m_query(&b, "after");
	m_send(rd.fd, &b);
	read_reply(&rd, &rp);
	cr_assert_str_eq(rp.types, "TDCZ");
	tally_buf_free(&b);
	raw_session_end(&rd);
}

/* Review defect: after an error in the middle of COPY IN the server waited for CopyDone
 * before ReadyForQuery; PostgreSQL sends it at once and ignores the rest of the data. */
Test(pgwire, copy_error_ready_at_once)
{
	reader rd;
	raw_session(&rd);
	tally_buf b = {0};
	reply rp;
	m_query(&b, "copyfail 10");
	m_send(rd.fd, &b);
	uint8_t t;
	const uint8_t *body;
	size_t n;
	cr_assert(reader_next(&rd, &t, &body, &n));
	cr_assert_eq(t, 'G');
	m_put(&b, 'd', "0123456789abcdef\n", 17);
	m_send(rd.fd, &b);
	/* no CopyDone sent yet */
	read_reply(&rd, &rp);
	cr_assert_str_eq(rp.types, "EZ");
	cr_assert_str_eq(rp.codes, "22P04");
	cr_assert_eq(rp.status, 'I');
	/* the client's late data, its CopyDone and a CopyFail are ignored */
	m_put(&b, 'd', "more\n", 5);
	m_put(&b, 'c', NULL, 0);
	m_put(&b, 'f', "x", 2);
	m_query(&b, "after copy");
	m_send(rd.fd, &b);
	read_reply(&rd, &rp);
	cr_assert_str_eq(rp.types, "TDCZ");
	cr_assert(reader_quiet(&rd));
	tally_buf_free(&b);
	raw_session_end(&rd);
}

/* The same with libpq, which only reads the error at PQputCopyEnd/PQgetResult. */
Test(pgwire, copy_error_libpq_small)
{
	PGconn *c = connect_pg();
	PGresult *r = PQexec(c, "copyfail 3");
	cr_assert_eq(PQresultStatus(r), PGRES_COPY_IN);
	PQclear(r);
	cr_assert_eq(PQputCopyData(c, "1,2\n", 4), 1);
	cr_assert_eq(PQputCopyData(c, "3,4\n", 4), 1);
	cr_assert_eq(PQputCopyEnd(c, NULL), 1);
	r = PQgetResult(c);
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_SQLSTATE), "22P04");
	PQclear(r);
	cr_assert_null(PQgetResult(c));
	cr_assert_eq(PQtransactionStatus(c), PQTRANS_IDLE);
	expect_echo(c, "after failed copy");
	PQfinish(c);
}

/* Review defect: NegotiateProtocolVersion said the newest minor version was 0. */
Test(pgwire, negotiate_protocol_version_says_3_0)
{
	int fd = raw_connect();
	uint8_t pkt[64];
	const char kv[] = "user\0raw\0_pq_.foo\0bar\0\0";
	size_t n = 8 + sizeof kv - 1;
	tally_put_be32(pkt, (uint32_t)n);
	tally_put_be32(pkt + 4, 196609); /* 3.1 */
	memcpy(pkt + 8, kv, sizeof kv - 1);
	raw_send(fd, pkt, n);
	reader rd;
	reader_init(&rd, fd);
	uint8_t t;
	const uint8_t *body;
	size_t len;
	cr_assert(reader_next(&rd, &t, &body, &len));
	cr_assert_eq(t, 'v');
	cr_assert_geq(len, 8);
	cr_assert_eq(tally_be32(body), 196608);
	cr_assert_eq(tally_be32(body + 4), 1);
	cr_assert_str_eq((const char *)body + 8, "_pq_.foo");
	reply rp;
	read_reply(&rd, &rp);
	cr_assert_eq(rp.status, 'I');
	raw_session_end(&rd);
}

/* Review defect: Execute ignored max_rows. Sequences and tags as PostgreSQL 15. */
Test(pgwire, execute_row_limit_suspends)
{
	reader rd;
	raw_session(&rd);
	tally_buf b = {0};
	reply rp;
	m_parse(&b, "", "rows 5");
	m_bind(&b, "p", "");
	m_execute(&b, "p", 2);
	m_describe(&b, 'P', "p");
	m_execute(&b, "p", 2);
	m_execute(&b, "p", 2);
	m_execute(&b, "p", 2);
	m_execute(&b, "p", 0);
	m_sync(&b);
	m_send(rd.fd, &b);
	read_reply(&rd, &rp);
	cr_assert_str_eq(rp.types, "12DDsTDDsDCCCZ");
	cr_assert_str_eq(rp.tags, "SELECT 1|SELECT 0|SELECT 0");
	/* exactly max_rows rows: suspended, then an empty completion */
	m_parse(&b, "", "rows 2");
	m_bind(&b, "", "");
	m_execute(&b, "", 2);
	m_execute(&b, "", 2);
	m_sync(&b);
	m_send(rd.fd, &b);
	read_reply(&rd, &rp);
	cr_assert_str_eq(rp.types, "12DDsCZ");
	cr_assert_str_eq(rp.tags, "SELECT 0");
	/* fewer rows than the limit: the whole result with its own tag */
	m_parse(&b, "", "rows 2");
	m_bind(&b, "", "");
	m_execute(&b, "", 3);
	m_execute(&b, "", 3);
	m_sync(&b);
	m_send(rd.fd, &b);
	read_reply(&rd, &rp);
	cr_assert_str_eq(rp.types, "12DDCCZ");
	cr_assert_str_eq(rp.tags, "SELECT 2|SELECT 0");
	/* a finished command cannot run again */
	m_parse(&b, "", "insert 1");
	m_bind(&b, "", "");
	m_execute(&b, "", 0);
	m_execute(&b, "", 0);
	m_execute(&b, "", 0);
	m_sync(&b);
	m_send(rd.fd, &b);
	read_reply(&rd, &rp);
	cr_assert_str_eq(rp.types, "12CEZ");
	cr_assert_str_eq(rp.codes, "55000");
	/* an error after some rows comes out when the rows before it were fetched */
	m_parse(&b, "", "error");
	m_bind(&b, "", "");
	m_execute(&b, "", 1);
	m_execute(&b, "", 1);
	m_sync(&b);
	m_send(rd.fd, &b);
	read_reply(&rd, &rp);
	cr_assert_str_eq(rp.types, "12EZ");
	cr_assert_str_eq(rp.codes, "42601");
	/* an unnamed portal outside a transaction is gone after Sync */
	m_parse(&b, "", "rows 3");
	m_bind(&b, "", "");
	m_execute(&b, "", 1);
	m_sync(&b);
	m_execute(&b, "", 1);
	m_sync(&b);
	m_send(rd.fd, &b);
	read_reply(&rd, &rp);
	cr_assert_str_eq(rp.types, "12DsZ");
	read_reply(&rd, &rp);
	cr_assert_str_eq(rp.types, "EZ");
	cr_assert_str_eq(rp.codes, "34000");
	tally_buf_free(&b);
	raw_session_end(&rd);
}

/* A row-limited portal buffers its result; past 256 MiB it fails with 54000. */
Test(pgwire, execute_row_limit_buffer_bounded, .timeout = 60)
{
	reader rd;
	raw_session(&rd);
	tally_buf b = {0};
	reply rp;
	m_parse(&b, "", "big 300");
	m_bind(&b, "", "");
	m_execute(&b, "", 1);
	m_sync(&b);
	m_send(rd.fd, &b);
	read_reply(&rd, &rp);
	cr_assert_str_eq(rp.types, "12EZ");
	cr_assert_str_eq(rp.codes, "54000");
	/* under the bound it works, in parts */
	m_parse(&b, "", "big 3");
	m_bind(&b, "", "");
	m_execute(&b, "", 2);
	m_execute(&b, "", 2);
	m_sync(&b);
	m_send(rd.fd, &b);
	read_reply(&rd, &rp);
	cr_assert_str_eq(rp.types, "12DDsDCZ");
	cr_assert_str_eq(rp.tags, "SELECT 1");
	tally_buf_free(&b);
	raw_session_end(&rd);
}

/* Without a describe callback every statement describes as NoData; libpq still gets the
 * rows because the RowDescription then comes with Execute. */
Test(pgwire, no_describe_callback)
{
	stop();
	cr_assert_eq(tally_pg_server_open("127.0.0.1", 0, &handlers_nodesc, NULL, &srv), 0);
	port = tally_pg_server_port(srv);
	PGconn *c = connect_pg();
	const char *vals[1] = {"x"};
	PGresult *r = PQexecParams(c, "select $1", 1, NULL, vals, NULL, NULL, 0);
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQresultErrorMessage(r));
	cr_assert_str_eq(PQgetvalue(r, 0, 0), "select 'x'");
	PQclear(r);
	r = PQprepare(c, "s", "rows 2", 0, NULL);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK);
	PQclear(r);
	r = PQdescribePrepared(c, "s");
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK);
	cr_assert_eq(PQnfields(r), 0);
	PQclear(r);
	r = PQexecPrepared(c, "s", 0, NULL, NULL, NULL, 0);
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQresultErrorMessage(r));
	cr_assert_eq(PQntuples(r), 2);
	PQclear(r);
	PQfinish(c);
}
