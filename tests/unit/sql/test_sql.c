/*
 * test_sql.c - unit tests of the SQL front end: statements parse into the expected tally_stmt,
 * error messages and positions match what PostgreSQL 15 prints for the same input (checked
 * with psql against a real server), expressions evaluate with PostgreSQL's typing, overflow and
 * NULL rules, continuous-view and read-query analysis, the read executor, INSERT rows, and a
 * random-garbage loop that must never crash.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>

#include "tally/sql.h"

/* ---- helpers ------------------------------------------------------------------------------------
 */

static tally_arena arena;

static void setup(void)
{
	memset(&arena, 0, sizeof arena);
}
static void teardown(void)
{
	tally_arena_free(&arena);
}

TestSuite(sql, .init = setup, .fini = teardown, .timeout = 30);

static tally_stmt *parse1(const char *sql)
{
	tally_stmt *st = NULL;
	int n = 0;
	tally_err err = {0};
	int rc = tally_sql_parse(sql, &arena, &st, &n, &err);
	cr_assert_eq(rc, 0, "parse of <%.200s> failed: %s (%s)", sql, err.message, err.sqlstate);
	cr_assert_eq(n, 1, "expected one statement in <%.200s>, got %d", sql, n);
	return st;
}

/* Parse must fail with this sqlstate, message and position (0 = do not check). */
static void parse_err(const char *sql, const char *state, const char *msg, int pos)
{
	tally_stmt *st = NULL;
	int n = 0;
	tally_err err = {0};
	int rc = tally_sql_parse(sql, &arena, &st, &n, &err);
	cr_assert_neq(rc, 0, "parse of <%.200s> unexpectedly succeeded", sql);
	cr_expect_str_eq(err.sqlstate, state, "<%.200s>: sqlstate %s (%s)", sql, err.sqlstate,
			 err.message);
	cr_expect_str_eq(err.message, msg, "<%.200s>: message", sql);
	if (pos >= 0)
		cr_expect_eq(err.position, pos, "<%.200s>: position %d, expected %d", sql,
			     err.position, pos);
}

static const tally_column stream_cols[] = {
    {"k", TALLY_T_INT4},
    {"v", TALLY_T_FLOAT8},
    {"name", TALLY_T_TEXT},
    {"ts", TALLY_T_TIMESTAMPTZ},
    {"s", TALLY_T_INT2},
    {"b", TALLY_T_INT8},
    {"arrival_timestamp", TALLY_T_TIMESTAMPTZ},
};
static const tally_relation stream_rel = {"s", 7, stream_cols};

static void fmt_value(const tally_value *v, char *buf, size_t sz)
{
	if (v->isnull) {
		snprintf(buf, sz, "NULL");
		return;
	}
	tally_buf b = {0};
	tally_value_format(v, &b);
	snprintf(buf, sz, "%.*s", (int)b.len, b.data ? (const char *)b.data : "");
	tally_buf_free(&b);
}

static int test_setting(void *ctx, const char *name, char *buf, size_t bufsz)
{
	(void)ctx;
	if (strcmp(name, "pipeline_cluster.primary_only") == 0) {
		snprintf(buf, bufsz, "off");
		return 0;
	}
	return -1;
}

/* Run a query over rows of rel; result rendered as "a,b;c,d". Returns 0 or -1 with err. */
static int run_query(const char *sql, const tally_relation *rel, const tally_value *rows,
		     size_t nrows, char *out, size_t outsz, tally_err *err)
{
	tally_stmt *st = NULL;
	int n = 0;
	memset(err, 0, sizeof *err);
	if (tally_sql_parse(sql, &arena, &st, &n, err))
		return -1;
	cr_assert_eq(st[0].kind, TALLY_STMT_SELECT);
	tally_select_plan *p;
	if (tally_select_analyze(st[0].u.select.query, st[0].u.select.from ? rel : NULL, &arena, &p,
				 err))
		return -1;
	tally_select_set_settings(p, test_setting, NULL);
	tally_value *res;
	size_t nres;
	if (tally_select_exec(p, rows, nrows, &arena, &res, &nres, err))
		return -1;
	int nc = tally_select_ncols(p);
	size_t o = 0;
	out[0] = 0;
	for (size_t r = 0; r < nres; r++) {
		for (int c = 0; c < nc; c++) {
			char vb[256];
			fmt_value(&res[r * (size_t)nc + (size_t)c], vb, sizeof vb);
			o += (size_t)snprintf(out + o, outsz - o, "%s%s", c ? "," : (r ? ";" : ""),
					      vb);
			if (o >= outsz)
				o = outsz - 1;
		}
	}
	return 0;
}

static void expect_query(const char *sql, const char *want)
{
	char out[4096];
	tally_err err;
	int rc = run_query(sql, NULL, NULL, 0, out, sizeof out, &err);
	cr_assert_eq(rc, 0, "<%.200s> failed: %s (%s)", sql, err.message, err.sqlstate);
	cr_expect_str_eq(out, want, "<%.200s>: got <%.200s>", sql, out);
}

static void expect_query_err(const char *sql, const char *state, const char *msg, int pos)
{
	char out[4096];
	tally_err err;
	int rc = run_query(sql, NULL, NULL, 0, out, sizeof out, &err);
	cr_assert_neq(rc, 0, "<%.200s> unexpectedly succeeded: %s", sql, out);
	cr_expect_str_eq(err.sqlstate, state, "<%.200s>: sqlstate %s (%s)", sql, err.sqlstate,
			 err.message);
	cr_expect_str_eq(err.message, msg, "<%.200s>", sql);
	if (pos >= 0)
		cr_expect_eq(err.position, pos, "<%.200s>: position %d, expected %d", sql,
			     err.position, pos);
}

/* ---- lexer and statements
 * ------------------------------------------------------------------------ */

Test(sql, create_stream_parses_types_and_names)
{
	tally_stmt *st =
	    parse1("CREATE STREAM IF NOT EXISTS Events (K integer, v double precision, "
		   "\"Name\" varchar(20), ts timestamp with time zone, t2 timestamp, "
		   "s smallint, b int8, r real, f bool)");
	cr_assert_eq(st->kind, TALLY_STMT_CREATE_STREAM);
	cr_expect_str_eq(st->u.create_stream.name, "events");
	cr_expect(st->u.create_stream.if_not_exists);
	cr_expect(!st->u.create_stream.foreign_table);
	cr_assert_eq(st->u.create_stream.ncols, 9);
	const tally_column *c = st->u.create_stream.cols;
	cr_expect_str_eq(c[0].name, "k");
	cr_expect_eq(c[0].type, TALLY_T_INT4);
	cr_expect_eq(c[1].type, TALLY_T_FLOAT8);
	cr_expect_str_eq(c[2].name, "Name");
	cr_expect_eq(c[2].type, TALLY_T_TEXT);
	cr_expect_eq(c[3].type, TALLY_T_TIMESTAMPTZ);
	cr_expect_eq(c[4].type, TALLY_T_TIMESTAMPTZ);
	cr_expect_eq(c[5].type, TALLY_T_INT2);
	cr_expect_eq(c[6].type, TALLY_T_INT8);
	cr_expect_eq(c[7].type, TALLY_T_FLOAT4);
	cr_expect_eq(c[8].type, TALLY_T_BOOL);
}

Test(sql, foreign_table_server_pipelinedb_is_a_stream)
{
	tally_stmt *st = parse1("create foreign table s (k int) server pipelinedb");
	cr_assert_eq(st->kind, TALLY_STMT_CREATE_STREAM);
	cr_expect(st->u.create_stream.foreign_table);
	parse_err("create foreign table s (k int) server other", "0A000",
		  "CREATE FOREIGN TABLE is not supported by tally", 32);
	parse_err("create table t (k int)", "0A000", "CREATE TABLE is not supported by tally", 1);
}

Test(sql, create_stream_rejects_duplicates_and_unknown_types)
{
	parse_err("create stream s (k int, K text)", "42701",
		  "column \"k\" specified more than once", 25);
	parse_err("create stream s (k foo)", "42704", "type \"foo\" does not exist", 20);
	parse_err("create stream s (k int, arrival_timestamp timestamptz)", "42701",
		  "column \"arrival_timestamp\" specified more than once", 25);
}

Test(sql, identifiers_fold_and_truncate_like_postgres)
{
	tally_stmt *st =
	    parse1("DROP STREAM IF EXISTS "
		   "AAAAAAAAAABBBBBBBBBBCCCCCCCCCCDDDDDDDDDDEEEEEEEEEEFFFFFFFFFFGGGGGGGGGG "
		   "CASCADE");
	cr_assert_eq(st->kind, TALLY_STMT_DROP_STREAM);
	cr_expect_eq(strlen(st->u.drop.name), 63);
	cr_expect_str_eq(st->u.drop.name,
			 "aaaaaaaaaabbbbbbbbbbccccccccccddddddddddeeeeeeeeeeffffffffffggg");
	cr_expect(st->u.drop.if_exists);
	cr_expect(st->u.drop.cascade);
	st = parse1("drop continuous view \"MyView\"");
	cr_assert_eq(st->kind, TALLY_STMT_DROP_VIEW);
	cr_expect_str_eq(st->u.drop.name, "MyView");
	st = parse1("DROP VIEW v");
	cr_assert_eq(st->kind, TALLY_STMT_DROP_VIEW);
}

Test(sql, syntax_errors_match_postgres)
{
	/* each checked against psql + PostgreSQL 15 */
	parse_err("SELECT * FORM t", "42601", "syntax error at or near \"FORM\"", 10);
	parse_err("SELECT 1 FORM t", "42601", "syntax error at or near \"t\"", 15);
	parse_err("select 1 +", "42601", "syntax error at end of input", 11);
	parse_err("select 'abc", "42601", "unterminated quoted string at or near \"'abc\"", 8);
	parse_err("select /* x", "42601", "unterminated /* comment at or near \"/* x\"", 8);
	parse_err("select \"\"", "42601", "zero-length delimited identifier at or near \"\"\"\"",
		  8);
	parse_err("selec 1", "42601", "syntax error at or near \"selec\"", 1);
	parse_err("select 1; selec 2", "42601", "syntax error at or near \"selec\"", 11);
	parse_err("select 123abc", "42601",
		  "trailing junk after numeric literal at or near \"123abc\"", 8);
	parse_err("select 1 from", "42601", "syntax error at end of input", 14);
	parse_err("select (1", "42601", "syntax error at end of input", 10);
	parse_err("select 1 < 2 < 3", "42601", "syntax error at or near \"<\"", 14);
	/* positions count characters, not bytes */
	parse_err("select 'é', FROM", "42601", "syntax error at or near \"FROM\"", 13);
}

Test(sql, unsupported_statements_are_0A000)
{
	parse_err("UPDATE s SET k = 1", "0A000", "UPDATE is not supported by tally", 1);
	parse_err("delete from s", "0A000", "DELETE is not supported by tally", 1);
	parse_err("  alter table s add column x int", "0A000",
		  "ALTER TABLE is not supported by tally", 3);
	parse_err("create index i on s (k)", "0A000", "CREATE INDEX is not supported by tally", 1);
	parse_err("create view v as select 1", "0A000", "CREATE VIEW is not supported by tally", 1);
	parse_err("insert into s select * from t", "0A000",
		  "INSERT ... SELECT is not supported by tally", 1);
}

Test(sql, multiple_statements_have_their_own_text)
{
	tally_stmt *st = NULL;
	int n = 0;
	tally_err err = {0};
	cr_assert_eq(tally_sql_parse("BEGIN; insert into s values (1) ; COMMIT;;  -- done", &arena,
				     &st, &n, &err),
		     0, "%s", err.message);
	cr_assert_eq(n, 3);
	cr_expect_eq(st[0].kind, TALLY_STMT_BEGIN);
	cr_expect_str_eq(st[0].text, "BEGIN");
	cr_expect_eq(st[1].kind, TALLY_STMT_INSERT);
	cr_expect_str_eq(st[1].text, "insert into s values (1)");
	cr_expect_eq(st[1].location, 7);
	cr_expect_eq(st[2].kind, TALLY_STMT_COMMIT);
	cr_assert_eq(tally_sql_parse("  /* nothing */ ; -- here", &arena, &st, &n, &err), 0);
	cr_assert_eq(n, 1);
	cr_expect_eq(st[0].kind, TALLY_STMT_EMPTY);
	cr_assert_eq(tally_sql_parse("", &arena, &st, &n, &err), 0);
	cr_expect_eq(st[0].kind, TALLY_STMT_EMPTY);
}

Test(sql, transaction_statements)
{
	cr_expect_eq(parse1("begin transaction isolation level read committed")->kind,
		     TALLY_STMT_BEGIN);
	cr_expect_eq(parse1("START TRANSACTION")->kind, TALLY_STMT_BEGIN);
	cr_expect_eq(parse1("begin work")->kind, TALLY_STMT_BEGIN);
	cr_expect_eq(parse1("END")->kind, TALLY_STMT_COMMIT);
	cr_expect_eq(parse1("commit work")->kind, TALLY_STMT_COMMIT);
	cr_expect_eq(parse1("ABORT")->kind, TALLY_STMT_ROLLBACK);
	cr_expect_eq(parse1("rollback")->kind, TALLY_STMT_ROLLBACK);
}

Test(sql, set_show_reset)
{
	tally_stmt *st = parse1("SET pipeline_cluster.Primary_Only = ON");
	cr_assert_eq(st->kind, TALLY_STMT_SET);
	cr_expect_str_eq(st->u.set.name, "pipeline_cluster.primary_only");
	cr_expect_str_eq(st->u.set.value, "on");
	st = parse1("set session search_path to \"$user\", public");
	cr_expect_str_eq(st->u.set.name, "search_path");
	cr_expect_str_eq(st->u.set.value, "$user, public");
	st = parse1("SET LOCAL statement_timeout = -1");
	cr_expect(st->u.set.local);
	cr_expect_str_eq(st->u.set.value, "-1");
	st = parse1("SET TIME ZONE 'UTC'");
	cr_expect_str_eq(st->u.set.name, "timezone");
	cr_expect_str_eq(st->u.set.value, "UTC");
	st = parse1("set extra_float_digits = 3");
	cr_expect_str_eq(st->u.set.value, "3");
	st = parse1("SET client_encoding TO DEFAULT");
	cr_expect_null(st->u.set.value);
	st = parse1("SET application_name = 'psql x'");
	cr_expect_str_eq(st->u.set.value, "psql x");
	st = parse1("SHOW ALL");
	cr_expect_eq(st->kind, TALLY_STMT_SHOW);
	cr_expect(st->u.set.all);
	st = parse1("show server_version");
	cr_expect_str_eq(st->u.set.name, "server_version");
	st = parse1("RESET pipeline_cluster.skip_unavailable");
	cr_expect_eq(st->kind, TALLY_STMT_RESET);
	cr_expect_str_eq(st->u.set.name, "pipeline_cluster.skip_unavailable");
	st = parse1("reset all");
	cr_expect(st->u.set.all);
	parse_err("SET x", "42601", "syntax error at end of input", 6);
}

Test(sql, create_continuous_view_with_options)
{
	tally_stmt *st = parse1(
	    "CREATE CONTINUOUS VIEW v WITH (num_shards = 3, num_replicas = 1, "
	    "sharding_policy = 'write_optimized', shard_factor=50) AS SELECT k, count(*) FROM "
	    "s GROUP BY k");
	cr_assert_eq(st->kind, TALLY_STMT_CREATE_VIEW);
	cr_expect_str_eq(st->u.create_view.name, "v");
	cr_expect_eq(st->u.create_view.num_shards, 3);
	cr_expect_eq(st->u.create_view.num_replicas, 1);
	cr_expect_eq(st->u.create_view.shard_factor, 50);
	cr_expect_eq(st->u.create_view.sharding_policy, TALLY_POLICY_WRITE_OPTIMIZED);
	cr_expect_str_eq(st->u.create_view.query_text, "SELECT k, count(*) FROM s GROUP BY k");
	cr_expect_str_eq(st->u.create_view.stream, "s");
	st = parse1("create view v2 with (action=materialize) as select count(*) from s");
	cr_assert_eq(st->kind, TALLY_STMT_CREATE_VIEW);
	cr_expect_eq(st->u.create_view.num_shards, -1);
	cr_expect_eq(st->u.create_view.sharding_policy, -1);
	parse_err("create continuous view v with (foo = 1) as select count(*) from s", "22023",
		  "unrecognized parameter \"foo\"", 32);
	parse_err("create continuous view v with (num_shards = 0) as select count(*) from s",
		  "22023", "value 0 out of bounds for option \"num_shards\"", 32);
	parse_err("create continuous view v with (sharding_policy = 'x') as select count(*) from s",
		  "22023", "invalid value for enum option \"sharding_policy\": x", 32);
}

Test(sql, insert_values)
{
	tally_stmt *st = parse1("INSERT INTO s (k, v, name) VALUES (1, 2.5, 'a'), (2, -3, NULL)");
	cr_assert_eq(st->kind, TALLY_STMT_INSERT);
	cr_expect_str_eq(st->u.insert.stream, "s");
	cr_expect_eq(st->u.insert.ncols, 3);
	cr_expect_str_eq(st->u.insert.cols[2], "name");
	cr_expect_eq(st->u.insert.nrows, 2);
	cr_expect_eq(st->u.insert.nvalues, 3);
	parse_err("insert into s values (1, 2), (3)", "42601",
		  "VALUES lists must all be the same length", 30);
	parse_err("insert into s (k) values (1, 2)", "42601",
		  "INSERT has more expressions than target columns", 30);
	parse_err("insert into s (k, v) values (1)", "42601",
		  "INSERT has more target columns than expressions", 19);
}

Test(sql, copy_options_new_and_old_syntax)
{
	tally_stmt *st = parse1("COPY s (k, v) FROM STDIN WITH (FORMAT csv, HEADER, DELIMITER ';', "
				"NULL 'NA')");
	cr_assert_eq(st->kind, TALLY_STMT_COPY);
	cr_expect_eq(st->u.copy.format, TALLY_COPY_CSV);
	cr_expect(st->u.copy.header);
	cr_expect_eq(st->u.copy.delimiter, ';');
	cr_expect_str_eq(st->u.copy.null_string, "NA");
	cr_expect_eq(st->u.copy.quote, '"');
	cr_expect_eq(st->u.copy.escape, '"');
	cr_expect_eq(st->u.copy.ncols, 2);
	st = parse1("copy s from stdin");
	cr_expect_eq(st->u.copy.format, TALLY_COPY_TEXT);
	cr_expect_eq(st->u.copy.delimiter, '\t');
	cr_expect_str_eq(st->u.copy.null_string, "\\N");
	cr_expect(!st->u.copy.header);
	st = parse1("COPY s FROM STDIN WITH CSV HEADER DELIMITER ','");
	cr_expect_eq(st->u.copy.format, TALLY_COPY_CSV);
	cr_expect(st->u.copy.header);
	cr_expect_eq(st->u.copy.delimiter, ',');
	cr_expect_str_eq(st->u.copy.null_string, "");
	st = parse1("copy s from stdin (format csv, quote '''', escape '\\')");
	cr_expect_eq(st->u.copy.quote, '\'');
	cr_expect_eq(st->u.copy.escape, '\\');
	parse_err("copy s from stdin (format xml)", "22023", "COPY format \"xml\" not recognized",
		  20);
	parse_err("copy s from stdin (delimiter ',,')", "0A000",
		  "COPY delimiter must be a single one-byte character", 0);
	parse_err("copy s from stdin (bogus 1)", "42601", "option \"bogus\" not recognized", 20);
	parse_err("copy s to stdout", "0A000", "COPY TO is not supported by tally", 1);
	parse_err("copy s from stdin (format csv, format text)", "42601",
		  "conflicting or redundant options", 32);
}

/* ---- expressions
 * ----------------------------------------------------------------------------------- */

Test(sql, literals_and_typing)
{
	expect_query("select 1, -2147483648, 2147483648, 9223372036854775807, 1.5, 1e3, 'x', "
		     "true, null",
		     "1,-2147483648,2147483648,9223372036854775807,1.5,1000,x,t,NULL");
	expect_query("select 7 / 2, -7 / 2, 7 % 3, -7 % 3, 7.0 / 2, 1 + 2 * 3, (1 + 2) * 3",
		     "3,-3,1,-1,3.5,7,9");
	expect_query("select 1 + 1.5, 2::smallint + 1::smallint, 5 = '5', '2' > 1", "2.5,3,t,t");
	expect_query("select 'a' || 'b', 'n=' || 5, E'a\\tb', $$x'y$$, 'it''s'",
		     "ab,n=5,a\tb,x'y,it's");
	expect_query("select cast('12' as bigint), '1.5'::float8, 3::text, 2.7::int, (-2.7)::int",
		     "12,1.5,3,3,-3");
}

Test(sql, three_valued_logic)
{
	expect_query("select null and false, null and true, null or true, null or false, not null",
		     "f,NULL,t,NULL,NULL");
	expect_query("select null is null, 1 is not null, null::bool is true, null::bool is not "
		     "false, (1 = 1) is true",
		     "t,t,f,t,t");
	expect_query("select 1 in (1, 2), 3 in (1, 2), 3 in (1, null), 3 not in (1, 2), 1 not in "
		     "(null, 2)",
		     "t,f,NULL,t,NULL");
	expect_query("select 2 between 1 and 3, 5 not between 1 and 3, null = 1", "t,t,NULL");
	expect_query("select 'abc' like 'a%', 'abc' like '_b_', 'abc' not like '%d', 'ABC' ilike "
		     "'a%'",
		     "t,t,t,t");
	expect_query("select case when 1 > 2 then 'x' when 2 > 1 then 'y' end, case 3 when 1 then "
		     "10 else 20 end",
		     "y,20");
}

Test(sql, overflow_and_division_by_zero)
{
	expect_query_err("select 2147483647 + 1", "22003", "integer out of range", -1);
	expect_query_err("select 32767::smallint + 1::smallint", "22003", "smallint out of range",
			 -1);
	expect_query_err("select 9223372036854775807 + 1", "22003", "bigint out of range", -1);
	expect_query_err("select -(-2147483647 - 1)", "22003", "integer out of range", -1);
	expect_query("select -(-2147483648), 1::bool, false::int", "2147483648,t,0");
	expect_query_err("select 1 / 0", "22012", "division by zero", -1);
	expect_query_err("select 1 % 0", "22012", "division by zero", -1);
	expect_query_err("select 1.0 / 0", "22012", "division by zero", -1);
	expect_query_err("select 1e308 * 10", "22003", "value out of range: overflow", -1);
	expect_query_err("select (-2147483647 - 1) / -1", "22003", "integer out of range", -1);
	expect_query("select (-2147483648) % -1, 9223372036854775807 - 1", "0,9223372036854775806");
}

Test(sql, type_errors_match_postgres)
{
	expect_query_err("select 'a'::text = 1", "42883", "operator does not exist: text = integer",
			 18);
	expect_query_err("select 'x'::int", "22P02", "invalid input syntax for type integer: \"x\"",
			 8);
	expect_query_err("select true + 1", "42883", "operator does not exist: boolean + integer",
			 13);
	expect_query_err("select foo(1)", "42883", "function foo(integer) does not exist", 8);
	expect_query_err("select 1 where 1", "42804",
			 "argument of WHERE must be type boolean, not type integer", 16);
	expect_query_err("select 1 and true", "42804",
			 "argument of AND must be type boolean, not type integer", 8);
	expect_query_err("select x", "42703", "column \"x\" does not exist", 8);
}

Test(sql, functions)
{
	expect_query("select date_trunc('hour', '2024-01-02 03:04:05+00'::timestamptz)",
		     "2024-01-02 03:00:00+00");
	expect_query("select abs(-5), abs(-2.5), lower('AbC'), upper('AbC'), coalesce(null, 2, 3), "
		     "length('héllo')",
		     "5,2.5,abc,ABC,2,5");
	expect_query("select current_setting('pipeline_cluster.primary_only')", "off");
	expect_query_err("select current_setting('nope')", "42704",
			 "unrecognized configuration parameter \"nope\"", -1);
	char out[256];
	tally_err err;
	cr_assert_eq(run_query("select version()", NULL, NULL, 0, out, sizeof out, &err), 0);
	cr_expect(strncmp(out, "PostgreSQL 15.0 (tally)", 23) == 0, "%s", out);
	cr_assert_eq(run_query("select now() > '2020-01-01'", NULL, NULL, 0, out, sizeof out, &err),
		     0);
	cr_expect_str_eq(out, "t");
}

Test(sql, output_column_names_follow_postgres)
{
	tally_stmt *st = parse1("select k, count(*), sum(v), date_trunc('hour', ts), k + 1, "
				"v as val, k::text, 1::int, true, max(k) m, s.name from s");
	tally_select_plan *p;
	tally_err err = {0};
	int rc = tally_select_analyze(st->u.select.query, &stream_rel, &arena, &p, &err);
	/* k without GROUP BY fails; use a grouped version for names */
	cr_assert_neq(rc, 0);
	cr_expect_str_eq(err.sqlstate, "42803");
	cr_expect_str_eq(err.message,
			 "column \"s.k\" must appear in the GROUP BY clause or be used "
			 "in an aggregate function");
	cr_expect_eq(err.position, 8);
	st = parse1("select k, count(*), sum(v), date_trunc('hour', ts), k + 1, v as val, k::text, "
		    "1::int, true, max(k) m, s.name from s group by k, 4, val, name");
	rc = tally_select_analyze(st->u.select.query, &stream_rel, &arena, &p, &err);
	cr_assert_eq(rc, 0, "%s", err.message);
	const char *want[] = {"k", "count", "sum",  "date_trunc", "?column?", "val",
			      "k", "int4",  "bool", "m",	  "name"};
	cr_assert_eq(tally_select_ncols(p), 11);
	const tally_column *c = tally_select_cols(p);
	for (int i = 0; i < 11; i++)
		cr_expect_str_eq(c[i].name, want[i], "column %d", i);
	cr_expect_eq(c[1].type, TALLY_T_INT8);
	cr_expect_eq(c[2].type, TALLY_T_FLOAT8);
	cr_expect_eq(c[3].type, TALLY_T_TIMESTAMPTZ);
	cr_expect_eq(c[6].type, TALLY_T_TEXT);
}

Test(sql, deep_nesting_is_refused_not_crashing)
{
	size_t n = 200000;
	char *q = malloc(n * 2 + 32);
	strcpy(q, "select ");
	size_t o = 7;
	for (size_t i = 0; i < n; i++)
		q[o++] = '(';
	q[o++] = '1';
	for (size_t i = 0; i < n; i++)
		q[o++] = ')';
	q[o] = 0;
	parse_err(q, "54001", "stack depth limit exceeded", -1);
	/* long flat chains too */
	o = 7;
	strcpy(q, "select ");
	for (size_t i = 0; i < 5000; i++) {
		memcpy(q + o, "1+", 2);
		o += 2;
	}
	q[o++] = '1';
	q[o] = 0;
	parse_err(q, "54001", "stack depth limit exceeded", -1);
	/* but a long AND list is flat */
	o = 7;
	strcpy(q, "select ");
	for (size_t i = 0; i < 5000; i++) {
		memcpy(q + o, "true and ", 9);
		o += 9;
	}
	memcpy(q + o, "true", 5);
	expect_query(q, "t");
	free(q);
}

Test(sql, huge_string_literal)
{
	size_t n = 1 << 19;
	char *q = malloc(n + 32);
	strcpy(q, "select length('");
	memset(q + 15, 'x', n);
	strcpy(q + 15 + n, "')");
	char want[32];
	snprintf(want, sizeof want, "%zu", n);
	expect_query(q, want);
	free(q);
}

/* ---- continuous views
 * ------------------------------------------------------------------------------- */

static tally_view_plan *view_of(const char *sql, tally_err *err)
{
	tally_stmt *st = NULL;
	int n = 0;
	memset(err, 0, sizeof *err);
	if (tally_sql_parse(sql, &arena, &st, &n, err))
		return NULL;
	cr_assert_eq(st->kind, TALLY_STMT_CREATE_VIEW);
	tally_view_plan *vp = NULL;
	if (tally_view_analyze(st->u.create_view.query, &stream_rel, &arena, &vp, err))
		return NULL;
	return vp;
}

Test(sql, view_analyze_groups_and_aggregates)
{
	tally_err err;
	tally_view_plan *vp = view_of(
	    "CREATE CONTINUOUS VIEW v AS SELECT k, date_trunc('minute', ts) AS minute, count(*), "
	    "sum(v), avg(v), min(name), max(v), count(v) AS nv FROM s WHERE v >= 0 GROUP BY k, "
	    "minute",
	    &err);
	cr_assert_not_null(vp, "%s", err.message);
	cr_expect_not_null(vp->where);
	cr_assert_eq(vp->ngroups, 2);
	cr_expect_eq(tally_expr_colref(vp->group_exprs[0]), 0);
	cr_expect_eq(tally_expr_colref(vp->group_exprs[1]), -1);
	cr_expect_eq(vp->group_types[1], TALLY_T_TIMESTAMPTZ);
	cr_assert_eq(vp->naggs, 6);
	cr_expect_eq(vp->aggs[0].kind, TALLY_AGG_COUNT_STAR);
	cr_expect_null(vp->agg_args[0]);
	cr_expect_eq(vp->aggs[1].kind, TALLY_AGG_SUM);
	cr_expect_eq(tally_expr_colref(vp->agg_args[1]), 1);
	cr_expect_eq(vp->aggs[3].kind, TALLY_AGG_MIN);
	cr_expect_eq(vp->aggs[3].result_type, TALLY_T_TEXT);
	cr_assert_eq(vp->nout, 8);
	const char *names[] = {"k", "minute", "count", "sum", "avg", "min", "max", "count"};
	(void)names;
	cr_expect_str_eq(vp->out[0].name, "k");
	cr_expect(!vp->out[0].is_agg);
	cr_expect_eq(vp->out[0].index, 0);
	cr_expect_str_eq(vp->out[1].name, "minute");
	cr_expect_eq(vp->out[1].index, 1);
	cr_expect_str_eq(vp->out[2].name, "count");
	cr_expect(vp->out[2].is_agg);
	cr_expect_eq(vp->out[2].type, TALLY_T_INT8);
	cr_expect_str_eq(vp->out[3].name, "sum");
	cr_expect_eq(vp->out[3].index, 1);
}

Test(sql, view_duplicate_names_and_grouping_errors)
{
	tally_err err;
	cr_expect_null(view_of("create continuous view v as select k, count(*), count(v) from s "
			       "group by k",
			       &err));
	cr_expect_str_eq(err.sqlstate, "42701");
	cr_expect_str_eq(err.message, "column \"count\" specified more than once");
	cr_expect_null(
	    view_of("create continuous view v as select k, v, count(*) from s group by k", &err));
	cr_expect_str_eq(err.sqlstate, "42803");
	cr_expect_eq(err.position, 39);
	cr_expect_null(view_of("create continuous view v as select count(*) from s where "
			       "count(*) > 1",
			       &err));
	cr_expect_str_eq(err.sqlstate, "42803");
	cr_expect_str_eq(err.message, "aggregate functions are not allowed in WHERE");
	cr_expect_null(view_of("create continuous view v as select sum(count(*)) from s", &err));
	cr_expect_str_eq(err.message, "aggregate function calls cannot be nested");
	cr_expect_null(
	    view_of("create continuous view v as select count(distinct k) from s", &err));
	cr_expect_str_eq(err.sqlstate, "0A000");
	cr_expect_null(view_of("create continuous view v as select k from s", &err));
	cr_expect_str_eq(err.sqlstate, "0A000");
	cr_expect_null(view_of("create continuous view v as select sum(name) from s", &err));
	cr_expect_str_eq(err.sqlstate, "42883");
	cr_expect_str_eq(err.message, "function sum(text) does not exist");
	cr_expect_null(
	    view_of("create continuous view v as select k, count(*) from s group by 3", &err));
	cr_expect_str_eq(err.message, "GROUP BY position 3 is not in select list");
	cr_expect_null(
	    view_of("create continuous view v as select k, count(*) from s group by 2", &err));
	cr_expect_str_eq(err.message, "aggregate functions are not allowed in GROUP BY");
	cr_expect_null(
	    view_of("create continuous view v as select count(*) from s order by 1", &err));
	cr_expect_str_eq(err.sqlstate, "0A000");
}

Test(sql, view_group_by_ordinal_and_expression_outputs)
{
	tally_err err;
	tally_view_plan *vp = view_of("create view v with (action=materialize) as select k % 10 "
				      "as bucket, k % 10 + 1, max(ts) from s group by 1",
				      &err);
	cr_assert_not_null(vp, "%s", err.message);
	cr_expect_eq(vp->ngroups, 2); /* the derived output is kept as a group of its own */
	cr_expect_str_eq(vp->out[0].name, "bucket");
	cr_expect_str_eq(vp->out[1].name, "?column?");
	cr_expect_eq(vp->out[1].index, 1);
	cr_expect_eq(vp->out[2].type, TALLY_T_TIMESTAMPTZ);
}

/* ---- read queries
 * ------------------------------------------------------------------------------------ */

#define VROWS 6
static tally_value vrows[VROWS * 3];
static const tally_column vcols[] = {
    {"k", TALLY_T_INT4}, {"name", TALLY_T_TEXT}, {"total", TALLY_T_FLOAT8}};
static const tally_relation vrel = {"v", 3, vcols};

static void fill_rows(void)
{
	static const struct {
		int k;
		const char *name;
		double total;
		bool null_total;
	} d[VROWS] = {{3, "c", 1.5, false}, {1, "a", 10, false}, {2, "b", 0, true},
		      {1, "d", 2, false},   {5, "e", -1, false}, {4, "a", 7, false}};
	for (int i = 0; i < VROWS; i++) {
		vrows[i * 3] = tally_int(TALLY_T_INT4, d[i].k);
		vrows[i * 3 + 1] = tally_text(d[i].name, (uint32_t)strlen(d[i].name));
		vrows[i * 3 + 2] = d[i].null_total ? tally_null(TALLY_T_FLOAT8)
						   : tally_float(TALLY_T_FLOAT8, d[i].total);
	}
}

static void expect_v(const char *sql, const char *want)
{
	fill_rows();
	char out[4096];
	tally_err err;
	int rc = run_query(sql, &vrel, vrows, VROWS, out, sizeof out, &err);
	cr_assert_eq(rc, 0, "<%.200s> failed: %s (%s) at %d", sql, err.message, err.sqlstate,
		     err.position);
	cr_expect_str_eq(out, want, "<%.200s>: got <%.200s>", sql, out);
}

Test(sql, select_where_order_limit)
{
	expect_v("select * from v where k = 1 order by name", "1,a,10;1,d,2");
	expect_v("select k, name from v order by k desc, name limit 3", "5,e;4,a;3,c");
	expect_v("select k from v order by k limit 2 offset 1", "1;2");
	expect_v("select k, total from v order by total", "5,-1;3,1.5;1,2;4,7;1,10;2,NULL");
	expect_v("select k, total from v order by total desc limit 2", "2,NULL;1,10");
	expect_v("select k, total from v order by total nulls first limit 2", "2,NULL;5,-1");
	expect_v("select k, total t from v order by t desc nulls last limit 1", "1,10");
	expect_v("select k from v order by 1 desc limit all", "5;4;3;2;1;1");
	expect_v("select k * 2 as d from v where name in ('a', 'e') order by d", "2;8;10");
	expect_v("select v.k from v as v where v.total is null", "2");
	expect_v("select k from v where total > 1.5 and name <> 'd' order by k", "1;4");
	expect_v("select count(*) from v where k > 100", "0");
}

Test(sql, select_aggregates)
{
	expect_v("select count(*), count(total), sum(k), min(name), max(total), avg(total) from v",
		 "6,5,16,a,10,3.9");
	expect_v("select k, count(*) c, sum(total) from v group by k order by c desc, k limit 2",
		 "1,2,12;2,1,NULL");
	expect_v("select name, max(k) from v group by name having count(*) > 1", "a,4");
	expect_v("select k % 2 as odd, count(*) from v group by odd order by odd", "0,2;1,4");
	expect_v("select sum(k) + 1, count(*) * 2 from v where k < 3", "5,6");
	expect_v("select count(*) from v group by k having k > 100", "");
	expect_v("select distinct name from v order by name", "a;b;c;d;e");
}

Test(sql, select_errors)
{
	fill_rows();
	char out[256];
	tally_err err;
	cr_assert_neq(run_query("select nope from v", &vrel, vrows, VROWS, out, sizeof out, &err),
		      0);
	cr_expect_str_eq(err.message, "column \"nope\" does not exist");
	cr_expect_eq(err.position, 8);
	cr_assert_neq(
	    run_query("select k from v order by 5", &vrel, vrows, VROWS, out, sizeof out, &err), 0);
	cr_expect_str_eq(err.message, "ORDER BY position 5 is not in select list");
	cr_assert_neq(run_query("select x.k from v", &vrel, vrows, VROWS, out, sizeof out, &err),
		      0);
	cr_expect_str_eq(err.message, "missing FROM-clause entry for table \"x\"");
	cr_assert_neq(
	    run_query("select k from v limit -1", &vrel, vrows, VROWS, out, sizeof out, &err), 0);
	cr_expect_str_eq(err.message, "LIMIT must not be negative");
	cr_assert_neq(
	    run_query("select k, count(*) from v", &vrel, vrows, VROWS, out, sizeof out, &err), 0);
	cr_expect_str_eq(err.sqlstate, "42803");
	cr_assert_neq(run_query("select name from v where name = 1", &vrel, vrows, VROWS, out,
				sizeof out, &err),
		      0);
	cr_expect_str_eq(err.message, "operator does not exist: text = integer");
}

Test(sql, select_eq_const_pushdown)
{
	tally_stmt *st = parse1("select * from v where name = 'x' and k = 7 and total > 1");
	tally_select_plan *p;
	tally_err err = {0};
	cr_assert_eq(tally_select_analyze(st->u.select.query, &vrel, &arena, &p, &err), 0);
	tally_value v;
	cr_assert_eq(tally_select_eq_const(p, 0, &v), 1);
	cr_expect_eq(v.type, TALLY_T_INT4);
	cr_expect_eq(v.u.i, 7);
	cr_assert_eq(tally_select_eq_const(p, 1, &v), 1);
	cr_expect_eq(v.u.s.len, 1);
	cr_expect_eq(tally_select_eq_const(p, 2, &v), 0);
	st = parse1("select * from v where k = 1.5 or k = 2");
	cr_assert_eq(tally_select_analyze(st->u.select.query, &vrel, &arena, &p, &err), 0);
	cr_expect_eq(tally_select_eq_const(p, 0, &v), 0);
	st = parse1("select * from v where k = 3::bigint");
	cr_assert_eq(tally_select_analyze(st->u.select.query, &vrel, &arena, &p, &err), 0);
	cr_assert_eq(tally_select_eq_const(p, 0, &v), 1);
	cr_expect_eq(v.type, TALLY_T_INT4);
	cr_expect_eq(v.u.i, 3);
}

Test(sql, big_sort_is_fast_and_stable)
{
	size_t n = 100000;
	tally_value *rows = malloc(sizeof *rows * n * 3);
	for (size_t i = 0; i < n; i++) {
		rows[i * 3] = tally_int(TALLY_T_INT4, (int64_t)((i * 7919) % 1000));
		rows[i * 3 + 1] = tally_text("x", 1);
		rows[i * 3 + 2] = tally_float(TALLY_T_FLOAT8, (double)i);
	}
	tally_stmt *st = parse1("select k, total from v order by k desc, total limit 3");
	tally_select_plan *p;
	tally_err err = {0};
	cr_assert_eq(tally_select_analyze(st->u.select.query, &vrel, &arena, &p, &err), 0);
	tally_value *res;
	size_t nres;
	int64_t t0 = tally_mono_us();
	cr_assert_eq(tally_select_exec(p, rows, n, &arena, &res, &nres, &err), 0, "%s",
		     err.message);
	int64_t dt = tally_mono_us() - t0;
	cr_assert_eq(nres, 3);
	cr_expect_eq(res[0].u.i, 999);
	cr_expect(res[0].u.f <= res[2].u.f);
	cr_expect(res[1].u.f < res[3].u.f);
	cr_expect(dt < 2000000, "sorting 100k rows took %lld us", (long long)dt);
	st = parse1("select k, count(*), sum(total) from v group by k order by k");
	cr_assert_eq(tally_select_analyze(st->u.select.query, &vrel, &arena, &p, &err), 0);
	cr_assert_eq(tally_select_exec(p, rows, n, &arena, &res, &nres, &err), 0, "%s",
		     err.message);
	cr_expect_eq(nres, 1000);
	cr_expect_eq(res[1].u.i, 100);
	free(rows);
}

/* ---- INSERT
 * ------------------------------------------------------------------------------------------ */

Test(sql, insert_rows_with_assignment_casts)
{
	tally_stmt *st = parse1("insert into s (name, k, v, ts, s, b) values ('x', '42', 7, "
				"'2024-01-01 00:00:00Z', 3.6, 1 + 2), (5, 2.6, null, null, -1, "
				"default)");
	int colmap[TALLY_MAX_COLUMNS];
	int ncols;
	tally_err err = {0};
	cr_assert_eq(tally_sql_column_map(&stream_rel, st->u.insert.ncols,
					  (const char(*)[TALLY_NAME_MAX])st->u.insert.cols, colmap,
					  &ncols, &err),
		     0);
	cr_assert_eq(ncols, 6);
	cr_expect_eq(colmap[0], 2);
	tally_value row[7];
	cr_assert_eq(tally_insert_row(st, 0, &stream_rel, colmap, row, &arena, &err), 0, "%s",
		     err.message);
	cr_expect_eq(row[0].type, TALLY_T_INT4);
	cr_expect_eq(row[0].u.i, 42);
	cr_expect_eq(row[1].type, TALLY_T_FLOAT8);
	cr_expect_eq(row[1].u.f, 7.0);
	cr_expect_eq(row[2].u.s.len, 1);
	cr_expect_eq(row[3].u.ts, 1704067200000000LL);
	cr_expect_eq(row[4].u.i, 4);
	cr_expect_eq(row[5].u.i, 3);
	cr_expect(row[6].isnull);
	cr_assert_eq(tally_insert_row(st, 1, &stream_rel, colmap, row, &arena, &err), 0, "%s",
		     err.message);
	cr_expect_eq(row[2].type, TALLY_T_TEXT);
	cr_expect_eq(row[2].u.s.len, 1);
	cr_expect_eq(row[0].u.i, 3); /* 2.6 rounds */
	cr_expect(row[1].isnull);
	cr_expect(row[5].isnull);
}

Test(sql, insert_row_errors_carry_positions)
{
	int colmap[TALLY_MAX_COLUMNS];
	int ncols;
	tally_err err = {0};
	tally_value row[7];
	tally_stmt *st = parse1("insert into s (k) values ('abc')");
	cr_assert_eq(tally_sql_column_map(&stream_rel, 1,
					  (const char(*)[TALLY_NAME_MAX])st->u.insert.cols, colmap,
					  &ncols, &err),
		     0);
	cr_assert_neq(tally_insert_row(st, 0, &stream_rel, colmap, row, &arena, &err), 0);
	cr_expect_str_eq(err.message, "invalid input syntax for type integer: \"abc\"");
	cr_expect_eq(err.position, 27);
	st = parse1("insert into s (k) values (true)");
	cr_assert_neq(tally_insert_row(st, 0, &stream_rel, colmap, row, &arena, &err), 0);
	cr_expect_str_eq(err.sqlstate, "42804");
	cr_expect_str_eq(err.message, "column \"k\" is of type integer but expression is of type "
				      "boolean");
	st = parse1("insert into s (k) values (99999999999)");
	cr_assert_neq(tally_insert_row(st, 0, &stream_rel, colmap, row, &arena, &err), 0);
	cr_expect_str_eq(err.message, "integer out of range");
	cr_expect_eq(err.position, 27);
	st = parse1("insert into s values (1, 2, 'x', null, 1, 2, null)");
	cr_assert_neq(tally_insert_row(st, 0, &stream_rel, colmap, row, &arena, &err), 0);
	cr_expect_str_eq(err.message, "INSERT has more expressions than target columns");
	cr_expect_eq(err.position, 46);
	const char listed[2][TALLY_NAME_MAX] = {"k", "zz"};
	cr_assert_neq(tally_sql_column_map(&stream_rel, 2, listed, colmap, &ncols, &err), 0);
	cr_expect_str_eq(err.message, "column \"zz\" of relation \"s\" does not exist");
	const char dup[2][TALLY_NAME_MAX] = {"k", "k"};
	cr_assert_neq(tally_sql_column_map(&stream_rel, 2, dup, colmap, &ncols, &err), 0);
	cr_expect_str_eq(err.sqlstate, "42701");
}

Test(sql, quote_ident)
{
	char buf[80];
	cr_expect_str_eq(tally_sql_quote_ident("abc", buf, sizeof buf), "abc");
	cr_expect_str_eq(tally_sql_quote_ident("Abc", buf, sizeof buf), "\"Abc\"");
	cr_expect_str_eq(tally_sql_quote_ident("select", buf, sizeof buf), "\"select\"");
	cr_expect_str_eq(tally_sql_quote_ident("a\"b", buf, sizeof buf), "\"a\"\"b\"");
}

/* ---- robustness
 * ---------------------------------------------------------------------------------------- */

Test(sql, random_garbage_never_crashes, .timeout = 60)
{
	static const char *const toks[] = {"select",	  "from",
					   "where",	  "group",
					   "by",	  "order",
					   "limit",	  "offset",
					   "(",		  ")",
					   ",",		  ";",
					   "*",		  "+",
					   "-",		  "/",
					   "%",		  "=",
					   "<>",	  "<",
					   ">=",	  "::",
					   ".",		  "'a'",
					   "'",		  "\"",
					   "\"x\"",	  "1",
					   "2147483648",  "1.5e3",
					   "k",		  "v",
					   "name",	  "count",
					   "sum",	  "avg",
					   "min",	  "max",
					   "date_trunc",  "now",
					   "and",	  "or",
					   "not",	  "is",
					   "null",	  "true",
					   "in",	  "between",
					   "like",	  "case",
					   "when",	  "then",
					   "else",	  "end",
					   "cast",	  "as",
					   "int",	  "text",
					   "insert",	  "into",
					   "values",	  "create",
					   "stream",	  "continuous",
					   "view",	  "with",
					   "copy",	  "stdin",
					   "set",	  "show",
					   "reset",	  "begin",
					   "commit",	  "drop",
					   "if",	  "exists",
					   "--",	  "/*",
					   "*/",	  "$1",
					   "$$",	  "E'\\x",
					   "||",	  "distinct",
					   "having",	  "s",
					   "coalesce",	  "@",
					   "[",		  "]",
					   "\xc3\xa9",	  "\xff",
					   "timestamptz", "'2024-01-01'",
					   "0",		  "-0",
					   "double",	  "precision"};
	size_t ntoks = sizeof toks / sizeof toks[0];
	unsigned seed = 12345;
	char q[1024];
	for (int iter = 0; iter < 20000; iter++) {
		size_t o = 0;
		int len = 1 + (int)(rand_r(&seed) % 24);
		if (iter % 3 == 0)
			o += (size_t)snprintf(q, sizeof q, "select ");
		for (int i = 0; i < len && o < sizeof q - 64; i++)
			o += (size_t)snprintf(q + o, sizeof q - o, "%s ",
					      toks[rand_r(&seed) % ntoks]);
		q[o] = 0;
		tally_stmt *st;
		int n;
		tally_err err = {0};
		if (tally_sql_parse(q, &arena, &st, &n, &err) == 0) {
			for (int i = 0; i < n; i++) {
				if (st[i].kind == TALLY_STMT_SELECT) {
					tally_select_plan *p;
					const tally_relation *rel =
					    st[i].u.select.from ? &vrel : NULL;
					if (tally_select_analyze(st[i].u.select.query, rel, &arena,
								 &p, &err) == 0) {
						fill_rows();
						tally_value *res;
						size_t nres;
						tally_select_exec(p, rel ? vrows : NULL,
								  rel ? VROWS : 0, &arena, &res,
								  &nres, &err);
					}
				} else if (st[i].kind == TALLY_STMT_CREATE_VIEW) {
					tally_view_plan *vp;
					tally_view_analyze(st[i].u.create_view.query, &stream_rel,
							   &arena, &vp, &err);
				}
			}
		} else {
			cr_assert(err.sqlstate[0] != 0, "failed without an error for <%.200s>", q);
			cr_assert(err.message[0] != 0);
		}
		if (iter % 500 == 0)
			tally_arena_reset(&arena);
	}
	/* raw random bytes */
	for (int iter = 0; iter < 5000; iter++) {
		int len = (int)(rand_r(&seed) % 200);
		for (int i = 0; i < len; i++)
			q[i] = (char)(1 + rand_r(&seed) % 255);
		q[len] = 0;
		tally_stmt *st;
		int n;
		tally_err err = {0};
		if (tally_sql_parse(q, &arena, &st, &n, &err) != 0)
			cr_assert(err.sqlstate[0] != 0);
		if (iter % 500 == 0)
			tally_arena_reset(&arena);
	}
}

/* A minus folds into an integer literal as PostgreSQL 15 does (checked there):
 * pg_typeof(-2147483648) is integer, so dividing it by -1 overflows; -(-2147483648) folds
 * through the parentheses into the bigint 2147483648; -9223372036854775808 is a bigint;
 * -2147483648 - 1 is integer arithmetic and overflows. */
Test(sql, negative_integer_literals_fold_like_postgres, .timeout = 10)
{
	expect_query_err("select (-2147483648) / -1", TALLY_SQLSTATE_OUT_OF_RANGE,
			 "integer out of range", 0);
	expect_query("select -(-2147483648)", "2147483648");
	expect_query("select -9223372036854775808 + 0", "-9223372036854775808");
	expect_query_err("select -2147483648 - 1", TALLY_SQLSTATE_OUT_OF_RANGE,
			 "integer out of range", 0); /* integer - integer, as in PostgreSQL */
}

/* ---- replication option and pipeline_cluster.remove_node ---------------------------------- */

#include "tally/catalog.h"

Test(sql, view_replication_option)
{
	tally_stmt *st = parse1("CREATE CONTINUOUS VIEW v WITH (replication = 'sync', num_replicas "
				"= 1) AS SELECT k, count(*) FROM s GROUP BY k");
	cr_assert_eq(st->kind, TALLY_STMT_CREATE_VIEW);
	cr_expect_eq(st->u.create_view.replication, TALLY_REPL_SYNC);
	cr_expect_eq(st->u.create_view.num_replicas, 1);
	st = parse1("create view v with (action = materialize, replication = 'QUORUM') as select "
		    "count(*) from s");
	cr_expect_eq(st->u.create_view.replication, TALLY_REPL_QUORUM);
	st =
	    parse1("create continuous view v with (replication = Async) as select count(*) from s");
	cr_expect_eq(st->u.create_view.replication, TALLY_REPL_ASYNC);
	st = parse1("create continuous view v as select count(*) from s");
	cr_expect_eq(st->u.create_view.replication, -1, "not given");

	tally_stmt *sts = NULL;
	int n = 0;
	tally_err err = {0};
	cr_assert_neq(tally_sql_parse("create continuous view v with (num_shards = 2, replication "
				      "= 'eventual') as select count(*) from s",
				      &arena, &sts, &n, &err),
		      0);
	cr_expect_str_eq(err.sqlstate, "22023");
	cr_expect_str_eq(err.message, "invalid value for parameter \"replication\": \"eventual\"");
	cr_expect_str_eq(err.hint, "Valid values are \"async\", \"sync\" and \"quorum\".");
	cr_expect_eq(err.position, 48);
	parse_err("create continuous view v with (replication) as select count(*) from s", "22023",
		  "invalid value for parameter \"replication\": \"true\"", 32);
}

Test(sql, remove_node_statement)
{
	tally_stmt *st = parse1("SELECT pipeline_cluster.remove_node('w2')");
	cr_assert_eq(st->kind, TALLY_STMT_REMOVE_NODE);
	cr_expect_str_eq(st->u.remove_node.name, "w2");
	cr_expect_str_eq(st->text, "SELECT pipeline_cluster.remove_node('w2')");
	st = parse1("  select Pipeline_Cluster.REMOVE_NODE ( 'Node-7' ) ;");
	cr_assert_eq(st->kind, TALLY_STMT_REMOVE_NODE);
	cr_expect_str_eq(st->u.remove_node.name, "Node-7", "the literal keeps its case");
	st = parse1("select \"pipeline_cluster\".\"remove_node\"('w2'::text)");
	cr_assert_eq(st->kind, TALLY_STMT_REMOVE_NODE);
	cr_expect_str_eq(st->u.remove_node.name, "w2");

	/* Several statements: each parses on its own. */
	tally_stmt *sts = NULL;
	int n = 0;
	tally_err err = {0};
	cr_assert_eq(tally_sql_parse("select pipeline_cluster.remove_node('a'); select 1", &arena,
				     &sts, &n, &err),
		     0);
	cr_assert_eq(n, 2);
	cr_expect_eq(sts[0].kind, TALLY_STMT_REMOVE_NODE);
	cr_expect_eq(sts[1].kind, TALLY_STMT_SELECT);
	/* Other pipeline_cluster things are still ordinary SELECTs. */
	st = parse1("select * from pipeline_cluster.nodes");
	cr_expect_eq(st->kind, TALLY_STMT_SELECT);
}

Test(sql, remove_node_bad_calls)
{
	parse_err("select pipeline_cluster.remove_node()", "42883",
		  "function pipeline_cluster.remove_node() does not exist", 8);
	parse_err("select pipeline_cluster.remove_node('a', 'b')", "42883",
		  "function pipeline_cluster.remove_node(unknown, unknown) does not exist", 8);
	parse_err("select pipeline_cluster.remove_node(2)", "42883",
		  "function pipeline_cluster.remove_node(integer) does not exist", 8);
	parse_err("select pipeline_cluster.remove_node(2.5)", "42883",
		  "function pipeline_cluster.remove_node(double precision) does not exist", 8);
	parse_err("select pipeline_cluster.remove_node(true)", "42883",
		  "function pipeline_cluster.remove_node(boolean) does not exist", 8);
	parse_err("select pipeline_cluster.remove_node(*)", "42883",
		  "function pipeline_cluster.remove_node() does not exist", 8);
	parse_err("select pipeline_cluster.remove_node('1'::integer)", "42883",
		  "function pipeline_cluster.remove_node(integer) does not exist", 8);
	parse_err("select pipeline_cluster.remove_node(null)", "22023",
		  "node name must not be null", 37);
	parse_err("select pipeline_cluster.remove_node('')", "22023", "invalid node name: \"\"",
		  37);
	parse_err("select pipeline_cluster.remove_node(k)", "22023",
		  "the argument of pipeline_cluster.remove_node() must be a string literal", 37);
	parse_err("select pipeline_cluster.remove_node('w' || '2')", "22023",
		  "the argument of pipeline_cluster.remove_node() must be a string literal", -1);
	char longname[200];
	memset(longname, 'x', 100);
	longname[100] = 0;
	char sql[300];
	snprintf(sql, sizeof sql, "select pipeline_cluster.remove_node('%s')", longname);
	tally_stmt *sts = NULL;
	int n = 0;
	tally_err err = {0};
	cr_assert_neq(tally_sql_parse(sql, &arena, &sts, &n, &err), 0);
	cr_expect_str_eq(err.sqlstate, "22023");
	/* Not alone in its SELECT. */
	parse_err("select pipeline_cluster.remove_node('w2') from t", "0A000",
		  "pipeline_cluster.remove_node() must be called alone", 43);
	parse_err("select pipeline_cluster.remove_node('w2'), 1", "0A000",
		  "pipeline_cluster.remove_node() must be called alone", 42);
	parse_err("select 1, pipeline_cluster.remove_node('w2')", "42883",
		  "function pipeline_cluster.remove_node does not exist", 11);
	/* Broken syntax stays a syntax error. */
	parse_err("select pipeline_cluster.remove_node('w2'", "42601",
		  "syntax error at end of input", -1);
	parse_err("select pipeline_cluster.remove_node(,)", "42601",
		  "syntax error at or near \",\"", 37);
}
