/*
 * test_pgwire.c - the protocol 3.0 server driven by libpq and by raw sockets.
 *
 * A small handler stands in for the SQL layer: it echoes the query text as a one-column row,
 * and recognises a few commands (`rows N`, `error`, `warn`, `copy`, `copyfail N`, `insert ...`,
 * `begin`/`commit`, `fatal`) to exercise every response path.
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

static atomic_int n_open, n_close;

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
		tally_pg_send_error(c, &e);
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

static const tally_pg_handlers handlers = {t_open, t_query, t_txn, t_close};

/* ---- fixtures ------------------------------------------------------------------------------ */

static tally_pg_server *srv;
static int port;

static void start(void)
{
	atomic_store(&n_open, 0);
	atomic_store(&n_close, 0);
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
