/*
 * analyze.c - semantic analysis: resolves the names of raw expressions against a relation,
 * types them the way PostgreSQL does (integer widening, int op float -> double precision,
 * untyped literals taking the other operand's type, text = integer refused with 42883),
 * collects aggregate calls, and checks grouping (42803). On top of that it builds the three
 * things the rest of tally runs: a continuous view's plan (tally_view_analyze), a read query's
 * plan (tally_select_analyze, executed by exec.c) and the typed rows of an INSERT
 * (tally_insert_row). Analyzed trees are immutable and arena-allocated; constant casts of
 * literals are folded here so that bad literals fail at analysis with their position.
 */
#include "sql_int.h"

#include <stdio.h>
#include <stdlib.h>

static const char *tname(tally_type t)
{
	if (t == TALLY_T_UNKNOWN)
		return "unknown";
	const char *n = tally_type_name(t);
	return n ? n : "unknown";
}

static const char *op_str(int op)
{
	switch (op) {
	case OP_ADD:
		return "+";
	case OP_SUB:
	case OP_NEG:
		return "-";
	case OP_MUL:
		return "*";
	case OP_DIV:
		return "/";
	case OP_MOD:
		return "%";
	case OP_EQ:
		return "=";
	case OP_NE:
		return "<>";
	case OP_LT:
		return "<";
	case OP_LE:
		return "<=";
	case OP_GT:
		return ">";
	case OP_GE:
		return ">=";
	case OP_CONCAT:
		return "||";
	case OP_PLUS:
		return "+";
	}
	return "?";
}

static int op_missing(sql_an *an, int pos, const char *op, tally_type l, tally_type r)
{
	if (l == TALLY_T_COUNT_)
		tally_err_set(an->err, TALLY_SQLSTATE_UNDEFINED_FUNCTION,
			      "operator does not exist: %s %s", op, tname(r));
	else
		tally_err_set(an->err, TALLY_SQLSTATE_UNDEFINED_FUNCTION,
			      "operator does not exist: %s %s %s", tname(l), op, tname(r));
	tally_err_hint(an->err, "No operator matches the given name and argument types. You might "
				"need to add explicit type casts.");
	return sql_err_pos(an->err, pos);
}

static tally_expr *xnew(sql_an *an, int kind, int pos, tally_type t)
{
	tally_expr *e = sql_expr_new(an->a, kind, pos);
	e->type = t;
	return e;
}

static tally_expr **xargs(sql_an *an, int n)
{
	return tally_arena_alloc(an->a, sizeof(tally_expr *) * (size_t)(n ? n : 1));
}

static void set_depth(tally_expr *e)
{
	int d = 0;
	for (int i = 0; i < e->nargs; i++)
		if (e->args[i]->depth > d)
			d = e->args[i]->depth;
	e->depth = d + 1;
}

static bool is_const(const tally_expr *e)
{
	return e->kind == X_CONST;
}

/* Which explicit casts exist (those tally_value_cast implements). */
static bool cast_exists(tally_type from, tally_type to)
{
	if (from == to || from == TALLY_T_UNKNOWN || from == TALLY_T_TEXT || to == TALLY_T_TEXT)
		return true;
	if (tally_type_is_numeric_kind(from) && tally_type_is_numeric_kind(to))
		return !(from == TALLY_T_NUMERIC && tally_type_is_int(to));
	/* PostgreSQL has integer <-> boolean (not smallint/bigint) */
	return (from == TALLY_T_INT4 && to == TALLY_T_BOOL) ||
	       (from == TALLY_T_BOOL && to == TALLY_T_INT4);
}

/* Cast a constant now (folding), else wrap in X_CAST. */
static int make_cast(sql_an *an, tally_expr *e, tally_type t, int pos, tally_expr **out)
{
	if (e->type == t) {
		*out = e;
		return 0;
	}
	if (is_const(e)) {
		tally_expr *c = xnew(an, X_CONST, e->pos, t);
		if (e->val.isnull) {
			c->val = tally_null(t);
		} else if (e->type == TALLY_T_UNKNOWN) {
			if (tally_value_parse(t, e->val.u.s.p, e->val.u.s.len, &c->val, an->err))
				return sql_err_pos(an->err, e->pos);
		} else {
			if (sql_cast_value(&e->val, t, &c->val, an->a, an->err))
				return sql_err_pos(an->err, pos);
		}
		c->val.type = (uint8_t)t;
		*out = c;
		return 0;
	}
	tally_expr *c = xnew(an, X_CAST, pos, t);
	c->cast_to = t;
	c->nargs = 1;
	c->args = xargs(an, 1);
	c->args[0] = e;
	set_depth(c);
	*out = c;
	return 0;
}

int sql_coerce(sql_an *an, tally_expr *e, tally_type t, tally_expr **out)
{
	return make_cast(an, e, t, e->pos, out);
}

/* Coerce a boolean context's argument: unknown literals become boolean, other types fail with
 * `argument of <what> must be type boolean, not type integer`. */
static int coerce_bool(sql_an *an, tally_expr *e, const char *what, tally_expr **out)
{
	if (e->type == TALLY_T_BOOL) {
		*out = e;
		return 0;
	}
	if (e->type == TALLY_T_UNKNOWN)
		return make_cast(an, e, TALLY_T_BOOL, e->pos, out);
	tally_err_set(an->err, TALLY_SQLSTATE_DATATYPE_MISMATCH,
		      "argument of %s must be type boolean, not type %s", what, tname(e->type));
	return sql_err_pos(an->err, e->pos);
}

/* Numeric "rank" for common types: int2 < int4 < int8 < numeric < float4 < float8. */
static int num_rank(tally_type t)
{
	switch (t) {
	case TALLY_T_INT2:
		return 1;
	case TALLY_T_INT4:
		return 2;
	case TALLY_T_INT8:
		return 3;
	case TALLY_T_NUMERIC:
		return 4;
	case TALLY_T_FLOAT4:
		return 5;
	case TALLY_T_FLOAT8:
		return 6;
	default:
		return 0;
	}
}

/* PostgreSQL's select_common_type, reduced to tally's types: -1 when no common type. */
static int common_type(tally_expr **v, int n, tally_type *out, int *badi)
{
	tally_type t = TALLY_T_UNKNOWN;
	for (int i = 0; i < n; i++) {
		tally_type u = v[i]->type;
		if (u == TALLY_T_UNKNOWN)
			continue;
		if (t == TALLY_T_UNKNOWN) {
			t = u;
			continue;
		}
		if (u == t)
			continue;
		if (num_rank(t) && num_rank(u)) {
			if (num_rank(u) > num_rank(t))
				t = u;
			continue;
		}
		*badi = i;
		*out = t;
		return -1;
	}
	*out = t == TALLY_T_UNKNOWN ? TALLY_T_TEXT : t;
	return 0;
}

/* Types of a comparison's operands; unknown sides take the other side's type. */
static int cmp_operands(sql_an *an, int pos, const char *opname, tally_expr **l, tally_expr **r)
{
	tally_type lt = (*l)->type, rt = (*r)->type;
	if (lt == TALLY_T_UNKNOWN && rt == TALLY_T_UNKNOWN) {
		if (make_cast(an, *l, TALLY_T_TEXT, (*l)->pos, l) ||
		    make_cast(an, *r, TALLY_T_TEXT, (*r)->pos, r))
			return -1;
		return 0;
	}
	if (lt == TALLY_T_UNKNOWN)
		return make_cast(an, *l, rt, (*l)->pos, l);
	if (rt == TALLY_T_UNKNOWN)
		return make_cast(an, *r, lt, (*r)->pos, r);
	if (lt == rt || (num_rank(lt) && num_rank(rt)))
		return 0;
	return op_missing(an, pos, opname, lt, rt);
}

/* ---- aggregates ---------------------------------------------------------------------------------
 */

static const char *clause_name(sql_clause c)
{
	switch (c) {
	case CL_WHERE:
		return "WHERE";
	case CL_GROUP:
		return "GROUP BY";
	case CL_VALUES:
		return "VALUES";
	case CL_LIMIT:
		return "LIMIT";
	case CL_OFFSET:
		return "OFFSET";
	default:
		return "this context";
	}
}

static int analyze_args(sql_an *an, const tally_expr *raw, tally_expr ***out)
{
	tally_expr **v = xargs(an, raw->nargs);
	for (int i = 0; i < raw->nargs; i++)
		if (sql_analyze_expr(an, raw->args[i], &v[i]))
			return -1;
	*out = v;
	return 0;
}

static int func_missing(sql_an *an, const tally_expr *raw, tally_expr **args, int nargs)
{
	char buf[400];
	size_t l = 0;
	buf[0] = 0;
	for (int i = 0; i < nargs && l < sizeof buf - 40; i++)
		l += (size_t)snprintf(buf + l, sizeof buf - l, "%s%s", i ? ", " : "",
				      tname(args[i]->type));
	tally_err_set(an->err, TALLY_SQLSTATE_UNDEFINED_FUNCTION, "function %s(%s) does not exist",
		      raw->name, buf);
	tally_err_hint(an->err, "No function matches the given name and argument types. You might "
				"need to add explicit type casts.");
	return sql_err_pos(an->err, raw->pos);
}

static int analyze_agg(sql_an *an, const tally_expr *raw, tally_agg_kind kind, tally_expr **out)
{
	if (!an->allow_aggs) {
		tally_err_set(an->err, TALLY_SQLSTATE_GROUPING,
			      "aggregate functions are not allowed in %s", clause_name(an->clause));
		return sql_err_pos(an->err, raw->pos);
	}
	if (an->in_agg) {
		tally_err_set(an->err, TALLY_SQLSTATE_GROUPING,
			      "aggregate function calls cannot be nested");
		return sql_err_pos(an->err, raw->pos);
	}
	if (raw->distinct) {
		tally_err_set(an->err, TALLY_SQLSTATE_FEATURE_NOT_SUPPORTED,
			      "%s(DISTINCT ...) is not supported by tally", raw->name);
		return sql_err_pos(an->err, raw->pos);
	}
	tally_agg_spec spec = {0};
	tally_expr *arg = NULL;
	if (raw->star) {
		if (kind != TALLY_AGG_COUNT) {
			tally_err_set(an->err, TALLY_SQLSTATE_UNDEFINED_FUNCTION,
				      "function %s() does not exist", raw->name);
			return sql_err_pos(an->err, raw->pos);
		}
		spec.kind = TALLY_AGG_COUNT_STAR;
		spec.arg_type = TALLY_T_UNKNOWN;
	} else {
		an->in_agg = true;
		tally_expr **args;
		int rc = analyze_args(an, raw, &args);
		an->in_agg = false;
		if (rc)
			return -1;
		if (raw->nargs != 1)
			return func_missing(an, raw, args, raw->nargs);
		arg = args[0];
		if (arg->type == TALLY_T_UNKNOWN &&
		    make_cast(an, arg, TALLY_T_TEXT, arg->pos, &arg))
			return -1;
		spec.kind = kind;
		spec.arg_type = arg->type;
	}
	if (tally_agg_resolve(&spec, an->err))
		return sql_err_pos(an->err, raw->pos);
	int idx = -1;
	for (int i = 0; i < an->naggs; i++) {
		if (an->aggs[i].spec.kind == spec.kind &&
		    ((!arg && !an->aggs[i].arg) ||
		     (arg && an->aggs[i].arg && sql_expr_equal(arg, an->aggs[i].arg)))) {
			idx = i;
			break;
		}
	}
	if (idx < 0) {
		if (an->naggs == an->aggcap) {
			int nc = an->aggcap ? an->aggcap * 2 : 8;
			sql_agginfo *nv = tally_arena_alloc(an->a, sizeof *nv * (size_t)nc);
			if (an->naggs)
				memcpy(nv, an->aggs, sizeof *nv * (size_t)an->naggs);
			an->aggs = nv;
			an->aggcap = nc;
		}
		idx = an->naggs++;
		an->aggs[idx].spec = spec;
		an->aggs[idx].arg = arg;
	}
	tally_expr *e = xnew(an, X_AGGREF, raw->pos, spec.result_type);
	e->col = idx;
	e->name = raw->name;
	if (arg) {
		/* keep the argument for structural comparison of aggregate references */
		e->nargs = 1;
		e->args = xargs(an, 1);
		e->args[0] = arg;
		set_depth(e);
	}
	*out = e;
	return 0;
}

/* ---- scalar functions
 * ---------------------------------------------------------------------------- */

static int analyze_func(sql_an *an, const tally_expr *raw, tally_expr **out)
{
	tally_agg_kind ak;
	if (!raw->typname && tally_agg_lookup(raw->name, strlen(raw->name), &ak) == 0)
		return analyze_agg(an, raw, ak, out);
	if (raw->star) {
		tally_err_set(an->err, TALLY_SQLSTATE_WRONG_OBJECT_TYPE,
			      "%s(*) specified, but %s is not an aggregate function", raw->name,
			      raw->name);
		return sql_err_pos(an->err, raw->pos);
	}
	if (raw->distinct) {
		tally_err_set(an->err, TALLY_SQLSTATE_WRONG_OBJECT_TYPE,
			      "DISTINCT specified, but %s is not an aggregate function", raw->name);
		return sql_err_pos(an->err, raw->pos);
	}
	tally_expr **args;
	if (analyze_args(an, raw, &args))
		return -1;
	int n = raw->nargs;
	const char *nm = raw->name;
	tally_expr *e = xnew(an, X_FUNC, raw->pos, TALLY_T_UNKNOWN);
	e->ctx = an->ctx;
	e->name = nm;
	if (strcmp(nm, "date_trunc") == 0 && n == 2) {
		tally_type t0 = args[0]->type, t1 = args[1]->type;
		if ((t0 != TALLY_T_TEXT && t0 != TALLY_T_UNKNOWN) ||
		    (t1 != TALLY_T_TIMESTAMPTZ && t1 != TALLY_T_UNKNOWN && t1 != TALLY_T_TEXT))
			return func_missing(an, raw, args, n);
		if (t1 == TALLY_T_TEXT)
			return func_missing(an, raw, args, n);
		if (make_cast(an, args[0], TALLY_T_TEXT, args[0]->pos, &args[0]) ||
		    make_cast(an, args[1], TALLY_T_TIMESTAMPTZ, args[1]->pos, &args[1]))
			return -1;
		if (is_const(args[0]) && !args[0]->val.isnull) {
			int64_t tmp;
			if (tally_ts_trunc(args[0]->val.u.s.p, args[0]->val.u.s.len, 0, &tmp,
					   an->err))
				return -1;
		}
		e->fn = FN_DATE_TRUNC;
		e->type = TALLY_T_TIMESTAMPTZ;
	} else if ((strcmp(nm, "now") == 0 || strcmp(nm, "transaction_timestamp") == 0 ||
		    strcmp(nm, "statement_timestamp") == 0) &&
		   n == 0) {
		e->fn = FN_NOW;
		e->type = TALLY_T_TIMESTAMPTZ;
	} else if (strcmp(nm, "version") == 0 && n == 0) {
		e->fn = FN_VERSION;
		e->type = TALLY_T_TEXT;
	} else if (strcmp(nm, "current_setting") == 0 && (n == 1 || n == 2)) {
		if (args[0]->type != TALLY_T_TEXT && args[0]->type != TALLY_T_UNKNOWN)
			return func_missing(an, raw, args, n);
		if (n == 2 && args[1]->type != TALLY_T_BOOL && args[1]->type != TALLY_T_UNKNOWN)
			return func_missing(an, raw, args, n);
		if (make_cast(an, args[0], TALLY_T_TEXT, args[0]->pos, &args[0]) ||
		    (n == 2 && make_cast(an, args[1], TALLY_T_BOOL, args[1]->pos, &args[1])))
			return -1;
		e->fn = FN_CURRENT_SETTING;
		e->type = TALLY_T_TEXT;
	} else if (strcmp(nm, "abs") == 0 && n == 1) {
		tally_type t = args[0]->type;
		if (t == TALLY_T_UNKNOWN) {
			if (make_cast(an, args[0], TALLY_T_FLOAT8, args[0]->pos, &args[0]))
				return -1;
			t = TALLY_T_FLOAT8;
		}
		if (!num_rank(t) || t == TALLY_T_NUMERIC)
			return func_missing(an, raw, args, n);
		e->fn = FN_ABS;
		e->type = t;
	} else if ((strcmp(nm, "lower") == 0 || strcmp(nm, "upper") == 0 ||
		    strcmp(nm, "length") == 0 || strcmp(nm, "char_length") == 0 ||
		    strcmp(nm, "character_length") == 0) &&
		   n == 1) {
		if (args[0]->type != TALLY_T_TEXT && args[0]->type != TALLY_T_UNKNOWN)
			return func_missing(an, raw, args, n);
		if (make_cast(an, args[0], TALLY_T_TEXT, args[0]->pos, &args[0]))
			return -1;
		e->fn = nm[0] == 'l' && nm[1] == 'o' ? FN_LOWER
			: nm[0] == 'u'		     ? FN_UPPER
						     : FN_LENGTH;
		e->type = e->fn == FN_LENGTH ? TALLY_T_INT4 : TALLY_T_TEXT;
	} else if ((strcmp(nm, "coalesce") == 0 || strcmp(nm, "greatest") == 0 ||
		    strcmp(nm, "least") == 0 || (strcmp(nm, "nullif") == 0 && n == 2)) &&
		   n >= 1) {
		tally_type t;
		int bad = 0;
		if (common_type(args, n, &t, &bad)) {
			const char *up = nm[0] == 'c'	? "COALESCE"
					 : nm[0] == 'g' ? "GREATEST"
					 : nm[0] == 'l' ? "LEAST"
							: "NULLIF";
			tally_err_set(an->err, TALLY_SQLSTATE_DATATYPE_MISMATCH,
				      "%s types %s and %s cannot be matched", up, tname(t),
				      tname(args[bad]->type));
			return sql_err_pos(an->err, args[bad]->pos);
		}
		if (nm[0] == 'n') {
			/* nullif(a, b): result has a's type; compared like a = b */
			if (cmp_operands(an, raw->pos, "=", &args[0], &args[1]))
				return -1;
			if (args[0]->type == TALLY_T_UNKNOWN &&
			    make_cast(an, args[0], TALLY_T_TEXT, args[0]->pos, &args[0]))
				return -1;
			t = args[0]->type;
		} else {
			for (int i = 0; i < n; i++)
				if (make_cast(an, args[i], t, args[i]->pos, &args[i]))
					return -1;
		}
		e->fn = nm[0] == 'c'   ? FN_COALESCE
			: nm[0] == 'g' ? FN_GREATEST
			: nm[0] == 'l' ? FN_LEAST
				       : FN_NULLIF;
		e->type = t;
	} else {
		return func_missing(an, raw, args, n);
	}
	e->nargs = n;
	e->args = args;
	set_depth(e);
	*out = e;
	return 0;
}

/* ---- expressions
 * ----------------------------------------------------------------------------------- */

static int analyze_binop(sql_an *an, const tally_expr *raw, tally_expr **out)
{
	tally_expr *l, *r;
	if (sql_analyze_expr(an, raw->args[0], &l) || sql_analyze_expr(an, raw->args[1], &r))
		return -1;
	int op = raw->op;
	const char *os = op_str(op);
	tally_expr *e;
	if (op >= OP_EQ && op <= OP_GE) {
		if (cmp_operands(an, raw->pos, os, &l, &r))
			return -1;
		e = xnew(an, X_CMP, raw->pos, TALLY_T_BOOL);
	} else if (op == OP_CONCAT) {
		tally_type lt = l->type, rt = r->type;
		bool ltext = lt == TALLY_T_TEXT || lt == TALLY_T_UNKNOWN;
		bool rtext = rt == TALLY_T_TEXT || rt == TALLY_T_UNKNOWN;
		if (!ltext && !rtext)
			return op_missing(an, raw->pos, os, lt, rt);
		if (lt == TALLY_T_UNKNOWN && make_cast(an, l, TALLY_T_TEXT, l->pos, &l))
			return -1;
		if (rt == TALLY_T_UNKNOWN && make_cast(an, r, TALLY_T_TEXT, r->pos, &r))
			return -1;
		e = xnew(an, X_CONCAT, raw->pos, TALLY_T_TEXT);
	} else {
		tally_type lt = l->type, rt = r->type;
		if (lt == TALLY_T_UNKNOWN && rt == TALLY_T_UNKNOWN) {
			tally_err_set(an->err, "42725",
				      "operator is not unique: unknown %s unknown", os);
			tally_err_hint(an->err, "Could not choose a best candidate operator. You "
						"might need to add explicit type casts.");
			return sql_err_pos(an->err, raw->pos);
		}
		if (lt == TALLY_T_UNKNOWN && num_rank(rt)) {
			if (make_cast(an, l, rt, l->pos, &l))
				return -1;
			lt = rt;
		} else if (rt == TALLY_T_UNKNOWN && num_rank(lt)) {
			if (make_cast(an, r, lt, r->pos, &r))
				return -1;
			rt = lt;
		}
		if (!num_rank(lt) || !num_rank(rt))
			return op_missing(an, raw->pos, os, lt, rt);
		tally_type res;
		if (tally_type_is_int(lt) && tally_type_is_int(rt))
			res = num_rank(lt) > num_rank(rt) ? lt : rt;
		else if (lt == TALLY_T_FLOAT4 && rt == TALLY_T_FLOAT4)
			res = TALLY_T_FLOAT4;
		else
			res = TALLY_T_FLOAT8;
		if (op == OP_MOD && !tally_type_is_int(res))
			return op_missing(an, raw->pos, os, lt, rt);
		e = xnew(an, X_ARITH, raw->pos, res);
	}
	e->op = (uint8_t)op;
	e->nargs = 2;
	e->args = xargs(an, 2);
	e->args[0] = l;
	e->args[1] = r;
	set_depth(e);
	*out = e;
	return 0;
}

static int resolve_name(sql_an *an, const tally_expr *raw, tally_expr **out)
{
	const tally_relation *rel = an->rel;
	if (raw->qual) {
		const char *relname = rel ? rel->name : NULL;
		const char *dot = relname ? strrchr(relname, '.') : NULL;
		const char *last = dot ? dot + 1 : relname;
		bool ok = rel && ((an->rel_alias && strcmp(raw->qual, an->rel_alias) == 0) ||
				  (!an->rel_alias && last && strcmp(raw->qual, last) == 0));
		if (!ok) {
			tally_err_set(an->err, TALLY_SQLSTATE_UNDEFINED_TABLE,
				      "missing FROM-clause entry for table \"%s\"", raw->qual);
			return sql_err_pos(an->err, raw->pos);
		}
	}
	if (rel) {
		for (int i = 0; i < rel->ncols; i++) {
			if (strcmp(rel->cols[i].name, raw->name) == 0) {
				tally_expr *e = xnew(an, X_COL, raw->pos, rel->cols[i].type);
				e->col = i;
				e->name = rel->cols[i].name;
				e->qual = an->rel_alias ? an->rel_alias : rel->name;
				*out = e;
				return 0;
			}
		}
	}
	if (raw->qual)
		tally_err_set(an->err, TALLY_SQLSTATE_UNDEFINED_COLUMN,
			      "column %s.%s does not exist", raw->qual, raw->name);
	else
		tally_err_set(an->err, TALLY_SQLSTATE_UNDEFINED_COLUMN,
			      "column \"%s\" does not exist", raw->name);
	return sql_err_pos(an->err, raw->pos);
}

static const char *booltest_name(int f)
{
	static const char *const n[] = {"IS TRUE",	"IS NOT TRUE", "IS FALSE",
					"IS NOT FALSE", "IS UNKNOWN",  "IS NOT UNKNOWN"};
	return f < 6 ? n[f] : "IS TRUE";
}

int sql_analyze_expr(sql_an *an, const tally_expr *raw, tally_expr **out)
{
	tally_expr *e;
	switch (raw->kind) {
	case N_CONST:
		e = xnew(an, X_CONST, raw->pos, (tally_type)raw->val.type);
		e->val = raw->val;
		*out = e;
		return 0;
	case N_DEFAULT:
		e = xnew(an, X_CONST, raw->pos, TALLY_T_UNKNOWN);
		e->val = tally_null(TALLY_T_UNKNOWN);
		*out = e;
		return 0;
	case N_NAME:
		return resolve_name(an, raw, out);
	case N_STAR:
		tally_err_set(an->err, TALLY_SQLSTATE_FEATURE_NOT_SUPPORTED,
			      "row expansion with \"*\" is not supported in this position");
		return sql_err_pos(an->err, raw->pos);
	case N_FUNC:
		return analyze_func(an, raw, out);
	case N_BINOP:
		return analyze_binop(an, raw, out);
	case N_UNARY: {
		tally_expr *arg;
		if (sql_analyze_expr(an, raw->args[0], &arg))
			return -1;
		tally_type t = arg->type;
		if (t == TALLY_T_UNKNOWN) {
			tally_err_set(an->err, "42725", "operator is not unique: %s unknown",
				      op_str(raw->op));
			tally_err_hint(an->err, "Could not choose a best candidate operator. You "
						"might need to add explicit type casts.");
			return sql_err_pos(an->err, raw->pos);
		}
		if (!num_rank(t) || (t == TALLY_T_NUMERIC && raw->op == OP_NEG))
			return op_missing(an, raw->pos, op_str(raw->op), TALLY_T_COUNT_, t);
		if (raw->op == OP_PLUS) {
			*out = arg;
			return 0;
		}
		e = xnew(an, X_NEG, raw->pos, t);
		e->nargs = 1;
		e->args = xargs(an, 1);
		e->args[0] = arg;
		break;
	}
	case N_AND:
	case N_OR: {
		const char *what = raw->kind == N_AND ? "AND" : "OR";
		e = xnew(an, raw->kind == N_AND ? X_AND : X_OR, raw->pos, TALLY_T_BOOL);
		e->nargs = raw->nargs;
		e->args = xargs(an, raw->nargs);
		for (int i = 0; i < raw->nargs; i++) {
			tally_expr *x;
			if (sql_analyze_expr(an, raw->args[i], &x) || coerce_bool(an, x, what, &x))
				return -1;
			e->args[i] = x;
		}
		break;
	}
	case N_NOT: {
		tally_expr *x;
		if (sql_analyze_expr(an, raw->args[0], &x) || coerce_bool(an, x, "NOT", &x))
			return -1;
		e = xnew(an, X_NOT, raw->pos, TALLY_T_BOOL);
		e->nargs = 1;
		e->args = xargs(an, 1);
		e->args[0] = x;
		break;
	}
	case N_NULLTEST: {
		tally_expr *x;
		if (sql_analyze_expr(an, raw->args[0], &x))
			return -1;
		if (x->type == TALLY_T_UNKNOWN && make_cast(an, x, TALLY_T_TEXT, x->pos, &x))
			return -1;
		e = xnew(an, X_NULLTEST, raw->pos, TALLY_T_BOOL);
		e->flag = raw->flag;
		e->nargs = 1;
		e->args = xargs(an, 1);
		e->args[0] = x;
		break;
	}
	case N_BOOLTEST: {
		tally_expr *x;
		if (sql_analyze_expr(an, raw->args[0], &x) ||
		    coerce_bool(an, x, booltest_name(raw->flag), &x))
			return -1;
		e = xnew(an, X_BOOLTEST, raw->pos, TALLY_T_BOOL);
		e->flag = raw->flag;
		e->nargs = 1;
		e->args = xargs(an, 1);
		e->args[0] = x;
		break;
	}
	case N_IN: {
		tally_expr **v;
		if (analyze_args(an, raw, &v))
			return -1;
		tally_type t;
		int bad = 0;
		if (common_type(v, raw->nargs, &t, &bad))
			return op_missing(an, raw->pos, "=",
					  v[0]->type == TALLY_T_UNKNOWN ? t : v[0]->type,
					  v[bad]->type);
		for (int i = 0; i < raw->nargs; i++) {
			/* numeric kinds compare across types; others take the common type */
			if (v[i]->type == TALLY_T_UNKNOWN || !num_rank(t))
				if (make_cast(an, v[i], t, v[i]->pos, &v[i]))
					return -1;
		}
		e = xnew(an, X_IN, raw->pos, TALLY_T_BOOL);
		e->flag = raw->flag;
		e->nargs = raw->nargs;
		e->args = v;
		break;
	}
	case N_BETWEEN: {
		/* x BETWEEN a AND b  ==  x >= a AND x <= b;  NOT: x < a OR x > b */
		tally_expr lo = {0}, hi = {0};
		tally_expr *la[2] = {raw->args[0], raw->args[1]};
		tally_expr *ha[2] = {raw->args[0], raw->args[2]};
		lo.kind = hi.kind = N_BINOP;
		lo.pos = hi.pos = raw->pos;
		lo.nargs = hi.nargs = 2;
		lo.args = la;
		hi.args = ha;
		lo.op = raw->flag ? OP_LT : OP_GE;
		hi.op = raw->flag ? OP_GT : OP_LE;
		tally_expr *a1, *a2;
		if (analyze_binop(an, &lo, &a1) || analyze_binop(an, &hi, &a2))
			return -1;
		e = xnew(an, raw->flag ? X_OR : X_AND, raw->pos, TALLY_T_BOOL);
		e->nargs = 2;
		e->args = xargs(an, 2);
		e->args[0] = a1;
		e->args[1] = a2;
		break;
	}
	case N_LIKE: {
		tally_expr *l, *r;
		if (sql_analyze_expr(an, raw->args[0], &l) ||
		    sql_analyze_expr(an, raw->args[1], &r))
			return -1;
		const char *os = (raw->flag & 2) ? ((raw->flag & 1) ? "!~~*" : "~~*")
						 : ((raw->flag & 1) ? "!~~" : "~~");
		if ((l->type != TALLY_T_TEXT && l->type != TALLY_T_UNKNOWN) ||
		    (r->type != TALLY_T_TEXT && r->type != TALLY_T_UNKNOWN))
			return op_missing(an, raw->pos, os, l->type, r->type);
		if (make_cast(an, l, TALLY_T_TEXT, l->pos, &l) ||
		    make_cast(an, r, TALLY_T_TEXT, r->pos, &r))
			return -1;
		e = xnew(an, X_LIKE, raw->pos, TALLY_T_BOOL);
		e->flag = raw->flag;
		e->nargs = 2;
		e->args = xargs(an, 2);
		e->args[0] = l;
		e->args[1] = r;
		break;
	}
	case N_CAST: {
		tally_expr *x;
		if (sql_analyze_expr(an, raw->args[0], &x))
			return -1;
		if (!cast_exists(x->type, raw->cast_to)) {
			tally_err_set(an->err, "42846", "cannot cast type %s to %s", tname(x->type),
				      tname(raw->cast_to));
			return sql_err_pos(an->err, raw->pos);
		}
		if (x->type == raw->cast_to) {
			*out = x;
			return 0;
		}
		return make_cast(an, x, raw->cast_to, raw->pos, out);
	}
	case N_CASE: {
		bool has_arg = raw->flag & 1, has_else = raw->flag & 2;
		int k = has_arg ? 1 : 0;
		int npairs = (raw->nargs - k - (has_else ? 1 : 0)) / 2;
		tally_expr *arg = NULL;
		if (has_arg && sql_analyze_expr(an, raw->args[0], &arg))
			return -1;
		int nres = npairs + (has_else ? 1 : 0);
		tally_expr **res = xargs(an, nres);
		tally_expr **conds = xargs(an, npairs);
		for (int i = 0; i < npairs; i++) {
			tally_expr *w;
			if (sql_analyze_expr(an, raw->args[k + 2 * i], &w))
				return -1;
			if (has_arg) {
				tally_expr *l = arg;
				if (cmp_operands(an, w->pos, "=", &l, &w))
					return -1;
				tally_expr *c = xnew(an, X_CMP, w->pos, TALLY_T_BOOL);
				c->op = OP_EQ;
				c->nargs = 2;
				c->args = xargs(an, 2);
				c->args[0] = l;
				c->args[1] = w;
				set_depth(c);
				w = c;
			} else if (coerce_bool(an, w, "CASE/WHEN", &w)) {
				return -1;
			}
			conds[i] = w;
			if (sql_analyze_expr(an, raw->args[k + 2 * i + 1], &res[i]))
				return -1;
		}
		if (has_else && sql_analyze_expr(an, raw->args[raw->nargs - 1], &res[npairs]))
			return -1;
		tally_type t;
		int bad = 0;
		if (common_type(res, nres, &t, &bad)) {
			tally_err_set(an->err, TALLY_SQLSTATE_DATATYPE_MISMATCH,
				      "CASE types %s and %s cannot be matched", tname(t),
				      tname(res[bad]->type));
			return sql_err_pos(an->err, res[bad]->pos);
		}
		for (int i = 0; i < nres; i++)
			if (make_cast(an, res[i], t, res[i]->pos, &res[i]))
				return -1;
		e = xnew(an, X_CASE, raw->pos, t);
		e->flag = has_else ? 2 : 0;
		e->nargs = 2 * npairs + (has_else ? 1 : 0);
		e->args = xargs(an, e->nargs);
		for (int i = 0; i < npairs; i++) {
			e->args[2 * i] = conds[i];
			e->args[2 * i + 1] = res[i];
		}
		if (has_else)
			e->args[2 * npairs] = res[npairs];
		break;
	}
	default:
		tally_err_set(an->err, TALLY_SQLSTATE_INTERNAL, "unexpected expression node %d",
			      raw->kind);
		return -1;
	}
	set_depth(e);
	*out = e;
	return 0;
}

bool sql_expr_equal(const tally_expr *x, const tally_expr *y)
{
	if (x == y)
		return true;
	if (!x || !y || x->kind != y->kind || x->type != y->type || x->op != y->op ||
	    x->flag != y->flag || x->fn != y->fn || x->nargs != y->nargs ||
	    x->cast_to != y->cast_to)
		return false;
	switch (x->kind) {
	case X_COL:
	case X_GROUPREF:
		if (x->col != y->col)
			return false;
		break;
	case X_AGGREF:
		if (x->col != y->col)
			return false;
		break;
	case X_CONST:
		if (x->val.isnull != y->val.isnull || x->val.type != y->val.type)
			return false;
		if (!x->val.isnull) {
			if (x->type == TALLY_T_UNKNOWN || x->type == TALLY_T_TEXT) {
				if (x->val.u.s.len != y->val.u.s.len ||
				    memcmp(x->val.u.s.p, y->val.u.s.p, x->val.u.s.len) != 0)
					return false;
			} else if (tally_value_cmp(&x->val, &y->val) != 0) {
				return false;
			}
		}
		break;
	case X_FUNC:
		break;
	default:
		break;
	}
	for (int i = 0; i < x->nargs; i++)
		if (!sql_expr_equal(x->args[i], y->args[i]))
			return false;
	return true;
}

/* ---- output names
 * ------------------------------------------------------------------------------------ */

/* PostgreSQL's FigureColname: 2 = strong (column/function), 1 = type name of a cast, 0 none. */
static int figure_colname(const tally_expr *raw, const char **name)
{
	switch (raw->kind) {
	case N_NAME:
		*name = raw->name;
		return 2;
	case N_FUNC:
		*name = raw->typname ? raw->typname : raw->name;
		return 2;
	case N_CAST: {
		int s = figure_colname(raw->args[0], name);
		if (s <= 1) {
			*name = raw->typname;
			return 1;
		}
		return s;
	}
	case N_CASE:
		*name = "case";
		return 1;
	case N_CONST:
		if (raw->val.type == TALLY_T_BOOL && !raw->val.isnull) {
			*name = "bool";
			return 1;
		}
		break;
	default:
		break;
	}
	*name = "?column?";
	return 0;
}

/* ---- targets, grouping
 * ---------------------------------------------------------------------------------- */

typedef struct sel_target {
	tally_expr *e; /* analyzed, over input rows (aggregates as X_AGGREF) */
	const char *name;
	int pos;
} sel_target;

static int analyze_targets(sql_an *an, const tally_select_ast *q, sel_target **out, int *nout)
{
	int cap = q->ntargets + (an->rel ? an->rel->ncols : 0) + 1;
	sel_target *v = tally_arena_alloc(an->a, sizeof *v * (size_t)cap);
	int n = 0;
	for (int i = 0; i < q->ntargets; i++) {
		const sql_target *tg = &q->targets[i];
		if (tg->e->kind == N_STAR) {
			if (!an->rel) {
				tally_err_set(an->err, TALLY_SQLSTATE_SYNTAX,
					      "SELECT * with no tables specified is not valid");
				return sql_err_pos(an->err, tg->e->pos);
			}
			if (tg->e->qual) {
				tally_expr fake = {0};
				fake.kind = N_NAME;
				fake.qual = tg->e->qual;
				fake.name = "";
				fake.pos = tg->e->pos;
				tally_expr *dummy;
				if (resolve_name(an, &fake, &dummy) &&
				    strcmp(an->err->sqlstate, TALLY_SQLSTATE_UNDEFINED_TABLE) == 0)
					return -1;
				tally_err_clear(an->err);
			}
			if (n + an->rel->ncols > cap) {
				int nc = (n + an->rel->ncols) * 2;
				sel_target *nv = tally_arena_alloc(an->a, sizeof *nv * (size_t)nc);
				memcpy(nv, v, sizeof *v * (size_t)n);
				v = nv;
				cap = nc;
			}
			for (int c = 0; c < an->rel->ncols; c++) {
				tally_expr *e = xnew(an, X_COL, tg->e->pos, an->rel->cols[c].type);
				e->col = c;
				e->name = an->rel->cols[c].name;
				e->qual = an->rel_alias ? an->rel_alias : an->rel->name;
				v[n].e = e;
				v[n].name = an->rel->cols[c].name;
				v[n].pos = tg->e->pos;
				n++;
			}
			continue;
		}
		if (n >= cap) {
			int nc = cap * 2;
			sel_target *nv = tally_arena_alloc(an->a, sizeof *nv * (size_t)nc);
			memcpy(nv, v, sizeof *v * (size_t)n);
			v = nv;
			cap = nc;
		}
		an->allow_aggs = true;
		an->clause = CL_SELECT;
		tally_expr *e;
		if (sql_analyze_expr(an, tg->e, &e))
			return -1;
		if (e->type == TALLY_T_UNKNOWN && make_cast(an, e, TALLY_T_TEXT, e->pos, &e))
			return -1;
		v[n].e = e;
		v[n].pos = tg->pos;
		if (tg->alias)
			v[n].name = tg->alias;
		else
			figure_colname(tg->e, &v[n].name);
		n++;
	}
	if (n > TALLY_MAX_COLUMNS * 6) {
		tally_err_set(an->err, TALLY_SQLSTATE_TOO_MANY_COLUMNS,
			      "target lists can have at most %d entries", TALLY_MAX_COLUMNS * 6);
		return -1;
	}
	*out = v;
	*nout = n;
	return 0;
}

static bool has_kind(const tally_expr *e, int kind)
{
	if (e->kind == kind)
		return true;
	for (int i = 0; i < e->nargs; i++)
		if (has_kind(e->args[i], kind))
			return true;
	return false;
}

static bool rel_has_col(const tally_relation *rel, const char *name)
{
	if (!rel)
		return false;
	for (int i = 0; i < rel->ncols; i++)
		if (strcmp(rel->cols[i].name, name) == 0)
			return true;
	return false;
}

static int add_group(sql_an *an, tally_expr ***groups, int *ngroups, int *cap, tally_expr *e)
{
	for (int i = 0; i < *ngroups; i++)
		if (sql_expr_equal((*groups)[i], e))
			return i;
	if (*ngroups == *cap) {
		int nc = *cap ? *cap * 2 : 8;
		tally_expr **nv = xargs(an, nc);
		if (*ngroups)
			memcpy(nv, *groups, sizeof *nv * (size_t)*ngroups);
		*groups = nv;
		*cap = nc;
	}
	(*groups)[*ngroups] = e;
	return (*ngroups)++;
}

/* GROUP BY items: input expressions, output aliases or 1-based ordinals. */
static int analyze_group(sql_an *an, const tally_select_ast *q, sel_target *tg, int ntg,
			 tally_expr ***groups, int *ngroups, int *cap)
{
	for (int i = 0; i < q->ngroup; i++) {
		const tally_expr *raw = q->group[i];
		tally_expr *e = NULL;
		if (raw->kind == N_CONST && raw->val.type == TALLY_T_INT4 && !raw->val.isnull) {
			int64_t k = raw->val.u.i;
			if (k < 1 || k > ntg) {
				tally_err_set(an->err, "42P10",
					      "GROUP BY position %lld is not in select list",
					      (long long)k);
				return sql_err_pos(an->err, raw->pos);
			}
			e = tg[k - 1].e;
			if (has_kind(e, X_AGGREF)) {
				tally_err_set(an->err, TALLY_SQLSTATE_GROUPING,
					      "aggregate functions are not allowed in GROUP BY");
				return sql_err_pos(an->err, tg[k - 1].pos);
			}
		} else if (raw->kind == N_NAME && !raw->qual && !rel_has_col(an->rel, raw->name)) {
			for (int t = 0; t < ntg; t++) {
				if (strcmp(tg[t].name, raw->name) == 0) {
					e = tg[t].e;
					if (has_kind(e, X_AGGREF)) {
						tally_err_set(an->err, TALLY_SQLSTATE_GROUPING,
							      "aggregate functions are not allowed "
							      "in GROUP BY");
						return sql_err_pos(an->err, tg[t].pos);
					}
					break;
				}
			}
		}
		if (!e) {
			an->allow_aggs = false;
			an->clause = CL_GROUP;
			if (sql_analyze_expr(an, raw, &e))
				return -1;
			if (e->type == TALLY_T_UNKNOWN &&
			    make_cast(an, e, TALLY_T_TEXT, e->pos, &e))
				return -1;
		}
		add_group(an, groups, ngroups, cap, e);
	}
	return 0;
}

/* Replace group expressions by X_GROUPREF; any column left outside them is a 42803. */
static int rewrite_grouped(sql_an *an, tally_expr *e, tally_expr **groups, int ngroups,
			   tally_expr **out)
{
	for (int i = 0; i < ngroups; i++) {
		if (sql_expr_equal(e, groups[i])) {
			tally_expr *g = xnew(an, X_GROUPREF, e->pos, e->type);
			g->col = i;
			*out = g;
			return 0;
		}
	}
	if (e->kind == X_AGGREF) {
		tally_expr *g = xnew(an, X_AGGREF, e->pos, e->type);
		g->col = e->col;
		*out = g;
		return 0;
	}
	if (e->kind == X_COL) {
		tally_err_set(
		    an->err, TALLY_SQLSTATE_GROUPING,
		    "column \"%s.%s\" must appear in the GROUP BY clause or be used in an "
		    "aggregate function",
		    e->qual ? e->qual : "?", e->name ? e->name : "?");
		return sql_err_pos(an->err, e->pos);
	}
	if (e->nargs == 0) {
		*out = e;
		return 0;
	}
	tally_expr *c = tally_arena_memdup(an->a, e, sizeof *e);
	c->args = xargs(an, e->nargs);
	for (int i = 0; i < e->nargs; i++)
		if (rewrite_grouped(an, e->args[i], groups, ngroups, &c->args[i]))
			return -1;
	*out = c;
	return 0;
}

/* Map X_GROUPREF(i) -> X_COL(i), X_AGGREF(j) -> X_COL(ngroups + j): the agg row. */
static tally_expr *to_aggrow(sql_an *an, tally_expr *e, int ngroups)
{
	if (e->kind == X_GROUPREF || e->kind == X_AGGREF) {
		tally_expr *c = xnew(an, X_COL, e->pos, e->type);
		c->col = e->kind == X_GROUPREF ? e->col : ngroups + e->col;
		return c;
	}
	if (e->nargs == 0)
		return e;
	tally_expr *c = tally_arena_memdup(an->a, e, sizeof *e);
	c->args = xargs(an, e->nargs);
	for (int i = 0; i < e->nargs; i++)
		c->args[i] = to_aggrow(an, e->args[i], ngroups);
	return c;
}

static sql_ctx *new_ctx(tally_arena *a)
{
	sql_ctx *c = tally_arena_alloc(a, sizeof *c);
	memset(c, 0, sizeof *c);
	c->now_us = tally_now_us();
	return c;
}

static void an_init(sql_an *an, tally_arena *a, tally_err *err, const tally_relation *rel,
		    const char *alias, sql_ctx *ctx)
{
	memset(an, 0, sizeof *an);
	an->a = a;
	an->err = err;
	an->rel = rel;
	an->rel_alias = alias;
	an->ctx = ctx;
}

static int analyze_where(sql_an *an, const tally_expr *raw, tally_expr **out)
{
	*out = NULL;
	if (!raw)
		return 0;
	an->allow_aggs = false;
	an->clause = CL_WHERE;
	tally_expr *e;
	if (sql_analyze_expr(an, raw, &e) || coerce_bool(an, e, "WHERE", &e))
		return -1;
	*out = e;
	return 0;
}

/* ---- continuous views
 * ------------------------------------------------------------------------------- */

static int view_reject(tally_err *err, int pos, const char *what, const char *hint)
{
	tally_err_set(err, TALLY_SQLSTATE_FEATURE_NOT_SUPPORTED,
		      "%s is not supported in continuous views", what);
	if (hint)
		tally_err_hint(err, "%s", hint);
	return sql_err_pos(err, pos);
}

int tally_view_analyze(const tally_select_ast *q, const tally_relation *stream, tally_arena *a,
		       tally_view_plan **out, tally_err *err)
{
	if (!q || !stream)
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL, "no query or stream to analyze");
	if (q->distinct)
		return view_reject(err, q->distinct_pos, "SELECT DISTINCT", NULL);
	if (q->having)
		return view_reject(err, q->having_pos, "HAVING",
				   "Filter the view's rows when reading it.");
	if (q->nsort)
		return view_reject(err, q->sort_pos, "ORDER BY",
				   "Order rows when reading the view.");
	if (q->limit || q->offset)
		return view_reject(err, q->limit_pos, "LIMIT/OFFSET", NULL);
	sql_an an;
	an_init(&an, a, err, stream, q->from_alias, new_ctx(a));
	sel_target *tg;
	int ntg;
	if (analyze_targets(&an, q, &tg, &ntg))
		return -1;
	tally_view_plan *vp = tally_arena_alloc(a, sizeof *vp);
	memset(vp, 0, sizeof *vp);
	if (analyze_where(&an, q->where, &vp->where))
		return -1;
	tally_expr **groups = NULL;
	int ngroups = 0, gcap = 0;
	if (analyze_group(&an, q, tg, ntg, &groups, &ngroups, &gcap))
		return -1;
	if (an.naggs == 0 && q->ngroup == 0) {
		tally_err_set(err, TALLY_SQLSTATE_FEATURE_NOT_SUPPORTED,
			      "continuous views must aggregate or have a GROUP BY clause");
		tally_err_hint(err,
			       "Raw events are not stored: add an aggregate such as count(*).");
		return sql_err_pos(err, q->pos);
	}
	tally_view_out *outs = tally_arena_alloc(a, sizeof *outs * (size_t)(ntg ? ntg : 1));
	for (int i = 0; i < ntg; i++) {
		tally_expr *r;
		if (rewrite_grouped(&an, tg[i].e, groups, ngroups, &r))
			return -1;
		memset(&outs[i], 0, sizeof outs[i]);
		if (strlen(tg[i].name) >= TALLY_NAME_MAX) {
			tally_err_set(err, TALLY_SQLSTATE_INVALID_NAME,
				      "column name \"%s\" is too long", tg[i].name);
			return sql_err_pos(err, tg[i].pos);
		}
		tally_strlcpy(outs[i].name, tg[i].name, TALLY_NAME_MAX);
		outs[i].type = tg[i].e->type;
		if (r->kind == X_GROUPREF) {
			outs[i].is_agg = false;
			outs[i].index = r->col;
		} else if (r->kind == X_AGGREF) {
			outs[i].is_agg = true;
			outs[i].index = r->col;
		} else if (has_kind(r, X_AGGREF)) {
			tally_err_set(err, TALLY_SQLSTATE_FEATURE_NOT_SUPPORTED,
				      "expressions over aggregates are not supported in continuous "
				      "views");
			tally_err_hint(err,
				       "Select the aggregates themselves and combine them when "
				       "reading the view.");
			return sql_err_pos(err, tg[i].pos);
		} else {
			/* a function of the group columns (or a constant): keep it as a group
			 * expression of its own, which does not change the grouping */
			outs[i].is_agg = false;
			outs[i].index = add_group(&an, &groups, &ngroups, &gcap, tg[i].e);
		}
		for (int j = 0; j < i; j++) {
			if (strcmp(outs[j].name, outs[i].name) == 0) {
				tally_err_set(err, TALLY_SQLSTATE_DUPLICATE_COLUMN,
					      "column \"%s\" specified more than once",
					      outs[i].name);
				return sql_err_pos(err, tg[i].pos);
			}
		}
	}
	vp->ngroups = ngroups;
	vp->group_exprs = groups;
	vp->group_types =
	    tally_arena_alloc(a, sizeof(tally_type) * (size_t)(ngroups ? ngroups : 1));
	for (int i = 0; i < ngroups; i++)
		vp->group_types[i] = groups[i]->type;
	vp->naggs = an.naggs;
	vp->aggs = tally_arena_alloc(a, sizeof(tally_agg_spec) * (size_t)(an.naggs ? an.naggs : 1));
	vp->agg_args = xargs(&an, an.naggs);
	for (int i = 0; i < an.naggs; i++) {
		vp->aggs[i] = an.aggs[i].spec;
		vp->agg_args[i] = an.aggs[i].arg;
	}
	vp->nout = ntg;
	vp->out = outs;
	*out = vp;
	return 0;
}

/* ---- read queries
 * ------------------------------------------------------------------------------------ */

static int const_int(sql_an *an, const tally_expr *raw, sql_clause cl, int64_t *out, bool *isnull)
{
	sql_an sub;
	an_init(&sub, an->a, an->err, NULL, NULL, an->ctx);
	sub.clause = cl;
	tally_expr *e;
	if (sql_analyze_expr(&sub, raw, &e))
		return -1;
	if (!num_rank(e->type) && e->type != TALLY_T_UNKNOWN) {
		tally_err_set(an->err, TALLY_SQLSTATE_DATATYPE_MISMATCH,
			      "argument of %s must be type bigint, not type %s",
			      cl == CL_LIMIT ? "LIMIT" : "OFFSET", tname(e->type));
		return sql_err_pos(an->err, e->pos);
	}
	if (make_cast(&sub, e, TALLY_T_INT8, e->pos, &e))
		return -1;
	tally_value v;
	if (tally_expr_eval(e, NULL, &v, an->a, an->err))
		return -1;
	if (v.isnull) {
		*isnull = true;
		return 0;
	}
	tally_value c;
	if (tally_value_cast(&v, TALLY_T_INT8, &c, an->a, an->err))
		return -1;
	*isnull = false;
	*out = c.u.i;
	return 0;
}

int tally_select_analyze(const tally_select_ast *q, const tally_relation *rel, tally_arena *a,
			 tally_select_plan **out, tally_err *err)
{
	if (!q)
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL, "no query to analyze");
	sql_an an;
	const char *alias = q->from_alias;
	if (!alias && q->from) {
		const char *dot = strrchr(q->from, '.');
		alias = dot ? dot + 1 : q->from;
	}
	an_init(&an, a, err, rel, alias, new_ctx(a));
	tally_select_plan *p = tally_arena_alloc(a, sizeof *p);
	memset(p, 0, sizeof *p);
	p->ctx = an.ctx;
	p->in_ncols = rel ? rel->ncols : -1;
	p->limit = -1;
	sel_target *tg;
	int ntg;
	if (analyze_targets(&an, q, &tg, &ntg))
		return -1;
	if (analyze_where(&an, q->where, &p->where))
		return -1;
	tally_expr **groups = NULL;
	int ngroups = 0, gcap = 0;
	if (analyze_group(&an, q, tg, ntg, &groups, &ngroups, &gcap))
		return -1;
	tally_expr *having = NULL;
	if (q->having) {
		an.allow_aggs = true;
		an.clause = CL_HAVING;
		if (sql_analyze_expr(&an, q->having, &having) ||
		    coerce_bool(&an, having, "HAVING", &having))
			return -1;
	}
	if (q->distinct) {
		if (an.naggs || q->ngroup || q->having) {
			tally_err_set(err, TALLY_SQLSTATE_FEATURE_NOT_SUPPORTED,
				      "SELECT DISTINCT with aggregates is not supported by tally");
			return sql_err_pos(err, q->distinct_pos);
		}
		for (int i = 0; i < ntg; i++)
			add_group(&an, &groups, &ngroups, &gcap, tg[i].e);
	}
	/* ORDER BY: output names and ordinals first, then expressions over the input */
	sql_sortkey *keys = tally_arena_alloc(a, sizeof *keys * (size_t)(q->nsort ? q->nsort : 1));
	int *key_out = tally_arena_alloc(a, sizeof(int) * (size_t)(q->nsort ? q->nsort : 1));
	for (int i = 0; i < q->nsort; i++) {
		const sql_sortby *sb = &q->sort[i];
		const tally_expr *raw = sb->e;
		keys[i].desc = sb->desc;
		keys[i].nulls_first = sb->nulls ? sb->nulls == 1 : sb->desc;
		keys[i].e = NULL;
		key_out[i] = -1;
		if (raw->kind == N_CONST && raw->val.type == TALLY_T_INT4 && !raw->val.isnull) {
			int64_t k = raw->val.u.i;
			if (k < 1 || k > ntg) {
				tally_err_set(err, "42P10",
					      "ORDER BY position %lld is not in select list",
					      (long long)k);
				return sql_err_pos(err, raw->pos);
			}
			key_out[i] = (int)(k - 1);
			continue;
		}
		if (raw->kind == N_CONST) {
			tally_err_set(err, TALLY_SQLSTATE_SYNTAX,
				      "non-integer constant in ORDER BY");
			return sql_err_pos(err, raw->pos);
		}
		if (raw->kind == N_NAME && !raw->qual) {
			int found = -1;
			for (int t = 0; t < ntg; t++) {
				if (strcmp(tg[t].name, raw->name) == 0) {
					if (found >= 0 && !sql_expr_equal(tg[found].e, tg[t].e)) {
						tally_err_set(err, TALLY_SQLSTATE_AMBIGUOUS_COLUMN,
							      "ORDER BY \"%s\" is ambiguous",
							      raw->name);
						return sql_err_pos(err, raw->pos);
					}
					if (found < 0)
						found = t;
				}
			}
			if (found >= 0) {
				key_out[i] = found;
				continue;
			}
		}
		an.allow_aggs = true;
		an.clause = CL_ORDER;
		if (sql_analyze_expr(&an, raw, &keys[i].e))
			return -1;
		if (keys[i].e->type == TALLY_T_UNKNOWN &&
		    make_cast(&an, keys[i].e, TALLY_T_TEXT, keys[i].e->pos, &keys[i].e))
			return -1;
		if (q->distinct) {
			bool inlist = false;
			for (int t = 0; t < ntg && !inlist; t++)
				inlist = sql_expr_equal(tg[t].e, keys[i].e);
			if (!inlist) {
				tally_err_set(err, "42P10",
					      "for SELECT DISTINCT, ORDER BY "
					      "expressions must appear in select list");
				return sql_err_pos(err, raw->pos);
			}
		}
	}
	p->agg = an.naggs > 0 || ngroups > 0 || having;
	p->nout = ntg;
	p->outs = xargs(&an, ntg);
	p->cols = tally_arena_alloc(a, sizeof(tally_column) * (size_t)(ntg ? ntg : 1));
	for (int i = 0; i < ntg; i++) {
		memset(&p->cols[i], 0, sizeof p->cols[i]);
		tally_strlcpy(p->cols[i].name, tg[i].name, TALLY_NAME_MAX);
		p->cols[i].type = tg[i].e->type;
	}
	if (p->agg) {
		for (int i = 0; i < ntg; i++) {
			tally_expr *r;
			if (rewrite_grouped(&an, tg[i].e, groups, ngroups, &r))
				return -1;
			p->outs[i] = to_aggrow(&an, r, ngroups);
		}
		if (having) {
			tally_expr *r;
			if (rewrite_grouped(&an, having, groups, ngroups, &r))
				return -1;
			p->having = to_aggrow(&an, r, ngroups);
		}
		for (int i = 0; i < q->nsort; i++) {
			if (keys[i].e) {
				tally_expr *r;
				if (rewrite_grouped(&an, keys[i].e, groups, ngroups, &r))
					return -1;
				keys[i].e = to_aggrow(&an, r, ngroups);
			}
		}
		p->ngroups = ngroups;
		p->groups = groups;
		p->naggs = an.naggs;
		p->aggs = tally_arena_alloc(a, sizeof(tally_agg_spec) *
						   (size_t)(an.naggs ? an.naggs : 1));
		p->agg_args = xargs(&an, an.naggs);
		for (int i = 0; i < an.naggs; i++) {
			p->aggs[i] = an.aggs[i].spec;
			p->agg_args[i] = an.aggs[i].arg;
		}
	} else {
		for (int i = 0; i < ntg; i++)
			p->outs[i] = tg[i].e;
	}
	for (int i = 0; i < q->nsort; i++)
		if (key_out[i] >= 0)
			keys[i].e = p->outs[key_out[i]];
	p->nsort = q->nsort;
	p->sort = keys;
	if (q->limit) {
		int64_t v;
		bool isnull;
		if (const_int(&an, q->limit, CL_LIMIT, &v, &isnull))
			return -1;
		if (!isnull) {
			if (v < 0) {
				tally_err_set(err, "2201W", "LIMIT must not be negative");
				return -1;
			}
			p->limit = v;
		}
	}
	if (q->offset) {
		int64_t v;
		bool isnull;
		if (const_int(&an, q->offset, CL_OFFSET, &v, &isnull))
			return -1;
		if (!isnull) {
			if (v < 0) {
				tally_err_set(err, "2201X", "OFFSET must not be negative");
				return -1;
			}
			p->offset = v;
		}
	}
	*out = p;
	return 0;
}

int tally_select_ncols(const tally_select_plan *p)
{
	return p->nout;
}
const tally_column *tally_select_cols(const tally_select_plan *p)
{
	return p->cols;
}

void tally_select_set_settings(tally_select_plan *p, tally_setting_fn fn, void *ctx)
{
	p->ctx->setting_fn = fn;
	p->ctx->setting_ctx = ctx;
}

/* ---- INSERT
 * ------------------------------------------------------------------------------------------ */

int tally_sql_column_map(const tally_relation *stream, int nlisted,
			 const char (*listed)[TALLY_NAME_MAX], int *colmap, int *ncols,
			 tally_err *err)
{
	if (nlisted <= 0) {
		int n = stream->ncols < TALLY_MAX_COLUMNS ? stream->ncols : TALLY_MAX_COLUMNS;
		for (int i = 0; i < n; i++)
			colmap[i] = i;
		*ncols = n;
		return 0;
	}
	if (nlisted > TALLY_MAX_COLUMNS)
		return tally_err_set(err, TALLY_SQLSTATE_TOO_MANY_COLUMNS,
				     "target lists can have at most %d entries", TALLY_MAX_COLUMNS);
	int tmp[TALLY_MAX_COLUMNS];
	for (int i = 0; i < nlisted; i++) {
		int found = -1;
		for (int c = 0; c < stream->ncols; c++) {
			if (strcmp(stream->cols[c].name, listed[i]) == 0) {
				found = c;
				break;
			}
		}
		if (found < 0)
			return tally_err_set(err, TALLY_SQLSTATE_UNDEFINED_COLUMN,
					     "column \"%s\" of relation \"%s\" does not exist",
					     listed[i], stream->name ? stream->name : "?");
		for (int j = 0; j < i; j++)
			if (tmp[j] == found)
				return tally_err_set(err, TALLY_SQLSTATE_DUPLICATE_COLUMN,
						     "column \"%s\" specified more than once",
						     listed[i]);
		tmp[i] = found;
	}
	memcpy(colmap, tmp, sizeof(int) * (size_t)nlisted);
	*ncols = nlisted;
	return 0;
}

int tally_insert_row(const tally_stmt *st, int r, const tally_relation *stream, const int *colmap,
		     tally_value *out, tally_arena *a, tally_err *err)
{
	if (st->kind != TALLY_STMT_INSERT || r < 0 || r >= st->u.insert.nrows)
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL, "invalid INSERT row %d", r);
	int nv = st->u.insert.nvalues;
	int ntargets = st->u.insert.ncols;
	if (ntargets == 0) {
		ntargets = stream->ncols;
		if (ntargets > 0 &&
		    strcmp(stream->cols[ntargets - 1].name, "arrival_timestamp") == 0)
			ntargets--;
	}
	tally_expr **vals = st->u.insert.values + (size_t)r * (size_t)nv;
	if (nv > ntargets) {
		tally_err_set(err, TALLY_SQLSTATE_SYNTAX,
			      "INSERT has more expressions than target columns");
		return sql_err_pos(err, vals[ntargets]->pos);
	}
	for (int c = 0; c < stream->ncols; c++)
		out[c] = tally_null(stream->cols[c].type);
	sql_ctx ctx;
	memset(&ctx, 0, sizeof ctx);
	ctx.now_us = tally_now_us();
	sql_an an;
	an_init(&an, a, err, NULL, NULL, &ctx);
	an.clause = CL_VALUES;
	for (int i = 0; i < nv; i++) {
		int col = st->u.insert.ncols ? colmap[i] : i;
		if (col < 0 || col >= stream->ncols)
			return tally_err_set(err, TALLY_SQLSTATE_INTERNAL, "bad column map");
		const tally_column *cd = &stream->cols[col];
		tally_type t = cd->type;
		tally_expr *e;
		if (sql_analyze_expr(&an, vals[i], &e))
			return -1;
		if (e->type == TALLY_T_UNKNOWN) {
			if (make_cast(&an, e, t, e->pos, &e))
				return -1;
		} else if (e->type != t && !(num_rank(e->type) && num_rank(t)) &&
			   t != TALLY_T_TEXT) {
			tally_err_set(err, TALLY_SQLSTATE_DATATYPE_MISMATCH,
				      "column \"%s\" is of type %s but expression is of type %s",
				      cd->name, tname(t), tname(e->type));
			tally_err_hint(err, "You will need to rewrite or cast the expression.");
			return sql_err_pos(err, vals[i]->pos);
		}
		tally_value v;
		if (tally_expr_eval(e, NULL, &v, a, err))
			return sql_err_pos(err,
					   err && err->position ? err->position : vals[i]->pos);
		if (v.isnull) {
			out[col] = tally_null(t);
			continue;
		}
		if (v.type != t) {
			tally_value c;
			if (tally_value_cast(&v, t, &c, a, err))
				return sql_err_pos(err, vals[i]->pos);
			v = c;
		}
		out[col] = v;
	}
	return 0;
}
