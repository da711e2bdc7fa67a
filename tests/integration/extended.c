/*
 * extended.c - the extended query protocol against a real cluster, as drivers use it:
 * PQprepare checks the statement and PQdescribePrepared describes it without running it (no
 * rows are inserted, no transaction is disturbed), PQexecPrepared / PQexecParams run it with
 * text parameters, and a prepared string with several statements is refused as PostgreSQL
 * refuses it.
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

Test(extended, prepare_describe_execute, .fini = th_fini, .timeout = 120)
{
	th_cluster *c = th_cluster_start(2, NULL);
	PGconn *co = th_connect(th_coord(c));
	th_run(co, "CREATE STREAM s (k integer, v double precision, t text)");
	th_run(co,
	       "CREATE CONTINUOUS VIEW v AS SELECT k, count(*), sum(v), max(t) FROM s GROUP BY k");
	PGconn *w = th_connect(th_worker(c, 1));

	/* Describing a statement neither runs it nor needs its parameters. */
	PGresult *r = PQprepare(w, "ins", "INSERT INTO s VALUES ($1, $2, $3)", 3, NULL);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQerrorMessage(w));
	PQclear(r);
	r = PQdescribePrepared(w, "ins");
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK);
	cr_assert_eq(PQnparams(r), 3);
	cr_assert_eq(PQnfields(r), 0);
	PQclear(r);
	cr_assert_eq(th_query_int(co, "SELECT count(*) FROM v"), 0, "describe ran the insert");

	r = PQprepare(w, "sel", "SELECT k, count, sum FROM v WHERE k = $1", 1, NULL);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQerrorMessage(w));
	PQclear(r);
	r = PQdescribePrepared(w, "sel");
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK);
	cr_assert_eq(PQnfields(r), 3);
	cr_assert_str_eq(PQfname(r, 1), "count");
	cr_assert_eq(PQftype(r, 1), TH_OID_INT8);
	cr_assert_eq(PQftype(r, 2), TH_OID_FLOAT8);
	PQclear(r);

	for (int i = 0; i < 10; i++) {
		char k[16], v[16];
		snprintf(k, sizeof k, "%d", i % 3);
		snprintf(v, sizeof v, "%d.5", i);
		const char *vals[3] = {k, v, "it's"};
		r = PQexecPrepared(w, "ins", 3, vals, NULL, NULL, 0);
		cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQerrorMessage(w));
		PQclear(r);
	}
	const char *one[1] = {"1"};
	r = PQexecPrepared(w, "sel", 1, one, NULL, NULL, 0);
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQerrorMessage(w));
	cr_assert_eq(PQntuples(r), 1);
	cr_assert_str_eq(PQgetvalue(r, 0, 1), "3");
	cr_assert_str_eq(PQgetvalue(r, 0, 2), "13.5"); /* 1.5 + 4.5 + 7.5 */
	PQclear(r);

	/* Errors belong to Parse; several statements cannot be prepared. */
	r = PQprepare(w, "bad", "SELEC 1", 0, NULL);
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_SQLSTATE), "42601");
	PQclear(r);
	r = PQprepare(w, "two", "SELECT 1; INSERT INTO s VALUES (100, 1, 'x')", 0, NULL);
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_SQLSTATE), "42601");
	PQclear(r);
	r = PQprepare(w, "nov", "SELECT * FROM nowhere WHERE k = $1", 1, NULL);
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_SQLSTATE), "42P01");
	PQclear(r);
	cr_assert_eq(th_query_int(co, "SELECT count(*) FROM v WHERE k = 100"), 0);

	/* Describing inside a transaction does not disturb it, even for a statement that would
	 * fail with NULL parameters. */
	th_run(w, "BEGIN");
	r = PQprepare(w, "div", "SELECT 10 / coalesce($1::integer, 0) AS r", 1, NULL);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQerrorMessage(w));
	PQclear(r);
	r = PQdescribePrepared(w, "div");
	cr_assert_eq(PQnfields(r), 1);
	cr_assert_str_eq(PQfname(r, 0), "r");
	PQclear(r);
	cr_assert_eq(PQtransactionStatus(w), PQTRANS_INTRANS);
	const char *five[1] = {"5"};
	r = PQexecPrepared(w, "div", 1, five, NULL, NULL, 0);
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQerrorMessage(w));
	cr_assert_str_eq(PQgetvalue(r, 0, 0), "2");
	PQclear(r);
	r = PQexec(w, "COMMIT");
	cr_assert_str_eq(PQcmdStatus(r), "COMMIT");
	PQclear(r);

	/* PQexecParams: Parse, Bind, Describe portal, Execute in one go. */
	const char *kv[1] = {"2"};
	r = PQexecParams(w, "SELECT count FROM v WHERE k = $1", 1, NULL, kv, NULL, NULL, 0);
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQerrorMessage(w));
	cr_assert_str_eq(PQgetvalue(r, 0, 0), "3");
	PQclear(r);

	PQfinish(w);
	PQfinish(co);
	th_cluster_stop(c);
}
