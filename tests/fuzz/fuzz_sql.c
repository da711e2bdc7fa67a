/*
 * fuzz_sql.c - fuzz target for the SQL front end. The input is a query string: it is parsed,
 * every SELECT is analyzed against a fixed materialized relation and executed over a few
 * fixed rows, every CREATE VIEW's query is analyzed against a fixed stream and its plan run
 * over a few stream rows the way ingest does (WHERE, group keys, aggregate updates,
 * finalize), and every INSERT is mapped and evaluated row by row. Results are formatted as
 * they would be sent to a client. All statement memory lives in one arena per input.
 */
#include "fuzz.h"

#include "tally/group.h"

/* The relation read queries run against (a continuous view's output). */
static const tally_column rel_cols[] = {
    {"k", TALLY_T_INT4},	{"n", TALLY_T_INT8},	 {"name", TALLY_T_TEXT},
    {"total", TALLY_T_NUMERIC}, {"avg", TALLY_T_FLOAT8}, {"last", TALLY_T_TIMESTAMPTZ},
    {"ok", TALLY_T_BOOL},	{"small", TALLY_T_INT2}, {"r", TALLY_T_FLOAT4},
};
#define REL_NCOLS ((int)(sizeof rel_cols / sizeof rel_cols[0]))
#define REL_NROWS 4

static void rel_rows(tally_value *rows)
{
	static const char *names[REL_NROWS] = {"alpha", "", "Beta gamma", NULL};
	for (int r = 0; r < REL_NROWS; r++) {
		tally_value *row = rows + (size_t)r * REL_NCOLS;
		row[0] = tally_int(TALLY_T_INT4, r == 2 ? -2147483647 - 1 : r * 7 - 3);
		row[1] = tally_int(TALLY_T_INT8, r == 1 ? INT64_MAX : (int64_t)r * 1000);
		row[2] = names[r] ? tally_text(names[r], (uint32_t)strlen(names[r]))
				  : tally_null(TALLY_T_TEXT);
		row[3] = tally_null(TALLY_T_NUMERIC);
		if (r != 3) {
			row[3].isnull = 0;
			row[3].u.n.m = (__int128)r * 12345 - 1;
			row[3].u.n.scale = (int16_t)r;
		}
		row[4] = tally_float(TALLY_T_FLOAT8, r == 0 ? 0.5 : (r == 1 ? -1e300 : 3.25));
		row[5] = tally_int(TALLY_T_TIMESTAMPTZ, 1700000000000000ll + r * 3600000000ll);
		row[6] = r == 3 ? tally_null(TALLY_T_BOOL) : tally_bool(r & 1);
		row[7] = tally_int(TALLY_T_INT2, r == 0 ? 32767 : -r);
		row[8] = tally_float(TALLY_T_FLOAT4, r == 2 ? 0.0 : 1.5f * (float)r);
	}
}

#define STREAM_NROWS 3

static void stream_rows(tally_value *rows)
{
	static const char *names[STREAM_NROWS] = {"x", "yy", NULL};
	for (int r = 0; r < STREAM_NROWS; r++) {
		tally_value *row = rows + (size_t)r * FUZZ_STREAM_NCOLS;
		row[0] = r == 2 ? tally_null(TALLY_T_INT4) : tally_int(TALLY_T_INT4, r + 1);
		row[1] = tally_float(TALLY_T_FLOAT8, r == 1 ? 1e308 : 2.5 * r);
		row[2] = names[r] ? tally_text(names[r], (uint32_t)strlen(names[r]))
				  : tally_null(TALLY_T_TEXT);
		row[3] = tally_bool(r == 0);
		row[4] = tally_int(TALLY_T_INT8, r == 1 ? INT64_MIN : 42);
		row[5] = tally_int(TALLY_T_TIMESTAMPTZ, 1700000000000000ll + r * 86400000000ll);
		row[6] = tally_int(TALLY_T_INT2, r == 0 ? -32768 : 9);
		row[7] = tally_float(TALLY_T_FLOAT4, -0.0f);
		row[8] = tally_int(TALLY_T_TIMESTAMPTZ, 1700000001000000ll);
	}
}

static int settings_cb(void *ctx, const char *name, char *buf, size_t bufsz)
{
	(void)ctx;
	if (strcmp(name, "pipeline_cluster.primary_only") == 0 || strcmp(name, "timezone") == 0) {
		snprintf(buf, bufsz, "%s", name[0] == 't' ? "UTC" : "off");
		return 0;
	}
	return -1;
}

static void format_values(const tally_value *v, size_t n, tally_buf *b)
{
	for (size_t i = 0; i < n; i++) {
		tally_buf_reset(b);
		if (!v[i].isnull)
			tally_value_format(&v[i], b);
	}
}

static void run_select(const tally_stmt *st, tally_arena *a, tally_buf *b)
{
	tally_relation rel = {st->u.select.from, REL_NCOLS, rel_cols};
	tally_value rows[REL_NROWS * REL_NCOLS];
	rel_rows(rows);
	tally_select_plan *plan;
	tally_err err;
	tally_err_clear(&err);
	const tally_relation *relp = st->u.select.from ? &rel : NULL;
	if (tally_select_analyze(st->u.select.query, relp, a, &plan, &err) != 0) {
		FUZZ_CHECK(tally_err_isset(&err));
		return;
	}
	tally_select_set_settings(plan, settings_cb, NULL);
	int ncols = tally_select_ncols(plan);
	const tally_column *cols = tally_select_cols(plan);
	FUZZ_CHECK(ncols >= 0 && (ncols == 0 || cols));
	if (relp) {
		for (int c = 0; c < REL_NCOLS; c++) {
			tally_value v;
			tally_select_eq_const(plan, c, &v);
		}
	}
	/* Over every row, then over none (aggregates without input). */
	for (int pass = 0; pass < 2; pass++) {
		tally_value *res;
		size_t nres;
		tally_err_clear(&err);
		if (tally_select_exec(plan, rows, pass ? 0 : (relp ? REL_NROWS : 0), a, &res, &nres,
				      &err) != 0) {
			FUZZ_CHECK(tally_err_isset(&err));
			continue;
		}
		format_values(res, nres * (size_t)ncols, b);
	}
}

/* Feed the stream rows through a view plan the way ingest and the read path do. */
static void run_view_plan(const tally_view_plan *p, tally_arena *a, tally_buf *b)
{
	tally_value rows[STREAM_NROWS * FUZZ_STREAM_NCOLS];
	stream_rows(rows);
	tally_gtab t;
	tally_gtab_init(&t, p->aggs, p->naggs, a);
	tally_err err;
	for (int r = 0; r < STREAM_NROWS; r++) {
		const tally_value *row = rows + (size_t)r * FUZZ_STREAM_NCOLS;
		tally_err_clear(&err);
		if (p->where) {
			int ok = tally_expr_test(p->where, row, a, &err);
			FUZZ_CHECK(ok >= -1 && ok <= 1);
			if (ok != 1)
				continue;
		}
		tally_buf_reset(b);
		bool failed = false;
		for (int g = 0; g < p->ngroups && !failed; g++) {
			tally_value v;
			if (tally_expr_eval(p->group_exprs[g], row, &v, a, &err) != 0) {
				failed = true;
				break;
			}
			tally_key_encode(&v, b);
		}
		if (failed)
			continue;
		tally_group *grp =
		    tally_gtab_lookup(&t, b->data ? b->data : (const uint8_t *)"", (uint32_t)b->len,
				      tally_group_hash(b->data, b->len), true);
		if (!grp)
			break;
		for (int k = 0; k < p->naggs; k++) {
			tally_value v = tally_null(TALLY_T_UNKNOWN);
			if (p->agg_args[k] &&
			    tally_expr_eval(p->agg_args[k], row, &v, a, &err) != 0)
				break;
			tally_agg_update(&p->aggs[k], grp->states + (size_t)k * TALLY_AGG_SLOT, &v);
		}
	}
	for (size_t i = 0; i < t.cap; i++) {
		tally_group *grp = t.slots[i].g;
		if (!grp)
			continue;
		tally_rd kr;
		tally_rd_init(&kr, grp->key, grp->keylen);
		for (int g = 0; g < p->ngroups; g++) {
			tally_value v;
			FUZZ_CHECK(tally_key_decode(&kr, &v) == 0);
		}
		for (int k = 0; k < p->naggs; k++) {
			tally_value v;
			tally_err_clear(&err);
			if (tally_agg_finalize(&p->aggs[k],
					       grp->states + (size_t)k * TALLY_AGG_SLOT, &v,
					       &err) == 0)
				format_values(&v, 1, b);
		}
	}
	tally_gtab_fini(&t);
}

static void run_view(const tally_stmt *st, tally_arena *a, tally_buf *b)
{
	tally_relation stream = {"s", FUZZ_STREAM_NCOLS, fuzz_stream_cols};
	tally_view_plan *plan;
	tally_err err;
	tally_err_clear(&err);
	if (tally_view_analyze(st->u.create_view.query, &stream, a, &plan, &err) != 0) {
		FUZZ_CHECK(tally_err_isset(&err));
		return;
	}
	FUZZ_CHECK(plan->nout >= 1);
	for (int i = 0; i < plan->nout; i++)
		FUZZ_CHECK(plan->out[i].index >= 0 &&
			   plan->out[i].index <
			       (plan->out[i].is_agg ? plan->naggs : plan->ngroups));
	run_view_plan(plan, a, b);
}

static void run_insert(const tally_stmt *st, tally_arena *a, tally_buf *b)
{
	/* As the session does: the implicit arrival_timestamp is not insertable. */
	tally_relation user = {"s", FUZZ_STREAM_NCOLS - 1, fuzz_stream_cols};
	int colmap[TALLY_MAX_COLUMNS];
	int ncols;
	tally_err err;
	tally_err_clear(&err);
	if (tally_sql_column_map(&user, st->u.insert.ncols,
				 (const char(*)[TALLY_NAME_MAX])st->u.insert.cols, colmap, &ncols,
				 &err) != 0) {
		FUZZ_CHECK(tally_err_isset(&err));
		return;
	}
	FUZZ_CHECK(ncols >= 0 && ncols <= TALLY_MAX_COLUMNS);
	for (int i = 0; i < ncols; i++)
		FUZZ_CHECK(colmap[i] >= 0 && colmap[i] < user.ncols);
	tally_value row[FUZZ_STREAM_NCOLS];
	for (int r = 0; r < st->u.insert.nrows; r++) {
		tally_err_clear(&err);
		if (tally_insert_row(st, r, &user, colmap, row, a, &err) != 0) {
			FUZZ_CHECK(tally_err_isset(&err));
			continue;
		}
		for (int c = 0; c < user.ncols; c++)
			FUZZ_CHECK(row[c].isnull || row[c].type == user.cols[c].type);
		format_values(row, (size_t)user.ncols, b);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *sql = malloc(size + 1);
	if (!sql)
		return 0;
	memcpy(sql, data, size);
	sql[size] = 0;
	tally_arena a = {0};
	a.limit = 256u << 20; /* a runaway allocation is a finding, not an OOM kill */
	tally_buf b = {0};
	tally_stmt *stmts = NULL;
	int n = 0;
	tally_err err;
	tally_err_clear(&err);
	if (tally_sql_parse(sql, &a, &stmts, &n, &err) == 0) {
		FUZZ_CHECK(n >= 0 && (n == 0 || stmts));
		for (int i = 0; i < n; i++) {
			const tally_stmt *st = &stmts[i];
			FUZZ_CHECK(st->text);
			switch (st->kind) {
			case TALLY_STMT_SELECT:
				run_select(st, &a, &b);
				break;
			case TALLY_STMT_CREATE_VIEW:
				run_view(st, &a, &b);
				break;
			case TALLY_STMT_INSERT:
				run_insert(st, &a, &b);
				break;
			default:
				break;
			}
		}
	} else {
		FUZZ_CHECK(tally_err_isset(&err));
		FUZZ_CHECK(err.position >= 0 && (size_t)err.position <= size + 1);
	}
	tally_buf_free(&b);
	tally_arena_free(&a);
	free(sql);
	return 0;
}
