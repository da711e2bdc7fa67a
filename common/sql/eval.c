/*
 * eval.c - evaluation of analyzed expressions over one row: integer arithmetic with
 * PostgreSQL's overflow errors (smallint/integer/bigint out of range, division by zero), IEEE
 * float arithmetic with PostgreSQL's overflow/underflow checks, three-valued logic, LIKE, casts
 * through tally_value_cast and the few built-in functions tally offers. Evaluation reads only
 * the immutable tree and the row; text it creates comes from the caller's arena, so plans can
 * be evaluated from many threads at once.
 */
#include "sql_int.h"

#include <math.h>
#include <stdio.h>

#define TALLY_VERSION_STRING                                                                       \
	"PostgreSQL 15.0 (tally) on x86_64-pc-linux-gnu, compiled by gcc, 64-bit"

int sql_cast_value(const tally_value *v, tally_type t, tally_value *out, tally_arena *a,
		   tally_err *err)
{
	if (!v->isnull && v->type == TALLY_T_INT4 && t == TALLY_T_BOOL) {
		*out = tally_bool(v->u.i != 0);
		return 0;
	}
	if (!v->isnull && v->type == TALLY_T_BOOL && t == TALLY_T_INT4) {
		*out = tally_int(TALLY_T_INT4, v->u.b ? 1 : 0);
		return 0;
	}
	return tally_value_cast(v, t, out, a, err);
}

tally_type tally_expr_type(const tally_expr *e)
{
	return e ? e->type : TALLY_T_UNKNOWN;
}

int tally_expr_colref(const tally_expr *e)
{
	return e && e->kind == X_COL ? e->col : -1;
}

static int int_range(tally_type t, int64_t v, tally_err *err)
{
	if (t == TALLY_T_INT2 && (v < INT16_MIN || v > INT16_MAX))
		return tally_err_set(err, TALLY_SQLSTATE_OUT_OF_RANGE, "smallint out of range");
	if (t == TALLY_T_INT4 && (v < INT32_MIN || v > INT32_MAX))
		return tally_err_set(err, TALLY_SQLSTATE_OUT_OF_RANGE, "integer out of range");
	return 0;
}

static int int_overflow(tally_type t, tally_err *err)
{
	const char *m = t == TALLY_T_INT2   ? "smallint out of range"
			: t == TALLY_T_INT4 ? "integer out of range"
					    : "bigint out of range";
	return tally_err_set(err, TALLY_SQLSTATE_OUT_OF_RANGE, "%s", m);
}

static double to_double(const tally_value *v)
{
	switch (v->type) {
	case TALLY_T_INT2:
	case TALLY_T_INT4:
	case TALLY_T_INT8:
		return (double)v->u.i;
	case TALLY_T_NUMERIC:
		return tally_numeric_to_double(v->u.n);
	default:
		return v->u.f;
	}
}

static int float_overflow(tally_err *err)
{
	return tally_err_set(err, TALLY_SQLSTATE_OUT_OF_RANGE, "value out of range: overflow");
}
static int float_underflow(tally_err *err)
{
	return tally_err_set(err, TALLY_SQLSTATE_OUT_OF_RANGE, "value out of range: underflow");
}
static int div_zero(tally_err *err)
{
	return tally_err_set(err, TALLY_SQLSTATE_DIVISION_BY_ZERO, "division by zero");
}

static int eval_arith(const tally_expr *e, const tally_value *l, const tally_value *r,
		      tally_value *out, tally_err *err)
{
	tally_type t = e->type;
	if (tally_type_is_int(t)) {
		int64_t a = l->u.i, b = r->u.i, res = 0;
		switch (e->op) {
		case OP_ADD:
			if (__builtin_add_overflow(a, b, &res))
				return int_overflow(t, err);
			break;
		case OP_SUB:
			if (__builtin_sub_overflow(a, b, &res))
				return int_overflow(t, err);
			break;
		case OP_MUL:
			if (__builtin_mul_overflow(a, b, &res))
				return int_overflow(t, err);
			break;
		case OP_DIV:
			if (b == 0)
				return div_zero(err);
			if (b == -1) {
				if (__builtin_sub_overflow((int64_t)0, a, &res))
					return int_overflow(t, err);
			} else {
				res = a / b;
			}
			break;
		case OP_MOD:
			if (b == 0)
				return div_zero(err);
			res = b == -1 ? 0 : a % b;
			break;
		default:
			return tally_err_set(err, TALLY_SQLSTATE_INTERNAL, "bad operator");
		}
		if (int_range(t, res, err))
			return -1;
		*out = tally_int(t, res);
		return 0;
	}
	if (t == TALLY_T_FLOAT4) {
		float a = (float)to_double(l), b = (float)to_double(r), res;
		switch (e->op) {
		case OP_ADD:
			res = a + b;
			break;
		case OP_SUB:
			res = a - b;
			break;
		case OP_MUL:
			res = a * b;
			if (res == 0.0f && a != 0.0f && b != 0.0f)
				return float_underflow(err);
			break;
		case OP_DIV:
			if (b == 0.0f && !isnan(a))
				return div_zero(err);
			res = a / b;
			if (res == 0.0f && a != 0.0f && !isinf(b))
				return float_underflow(err);
			break;
		default:
			return tally_err_set(err, TALLY_SQLSTATE_INTERNAL, "bad operator");
		}
		if (isinf(res) && !isinf(a) && !isinf(b))
			return float_overflow(err);
		*out = tally_float(TALLY_T_FLOAT4, res);
		return 0;
	}
	double a = to_double(l), b = to_double(r), res;
	switch (e->op) {
	case OP_ADD:
		res = a + b;
		break;
	case OP_SUB:
		res = a - b;
		break;
	case OP_MUL:
		res = a * b;
		if (res == 0.0 && a != 0.0 && b != 0.0)
			return float_underflow(err);
		break;
	case OP_DIV:
		if (b == 0.0 && !isnan(a))
			return div_zero(err);
		res = a / b;
		if (res == 0.0 && a != 0.0 && !isinf(b))
			return float_underflow(err);
		break;
	default:
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL, "bad operator");
	}
	if (isinf(res) && !isinf(a) && !isinf(b))
		return float_overflow(err);
	*out = tally_float(TALLY_T_FLOAT8, res);
	return 0;
}

/* LIKE with % and _ (one UTF-8 character) and backslash escapes; ci = ILIKE (ASCII folding). */
static int lower_c(int c)
{
	return (c >= 'A' && c <= 'Z') ? c + 32 : c;
}

static size_t utf8_len(const unsigned char *p, size_t left)
{
	size_t n = 1;
	while (n < left && (p[n] & 0xC0) == 0x80)
		n++;
	return n;
}

static bool like_match(const unsigned char *s, size_t sl, const unsigned char *p, size_t pl,
		       bool ci)
{
	size_t si = 0, pi = 0;
	size_t star_p = (size_t)-1, star_s = 0;
	while (si < sl) {
		if (pi < pl && p[pi] == '%') {
			while (pi < pl && p[pi] == '%')
				pi++;
			if (pi == pl)
				return true;
			star_p = pi;
			star_s = si;
			continue;
		}
		if (pi < pl && p[pi] == '_') {
			si += utf8_len(s + si, sl - si);
			pi++;
			continue;
		}
		if (pi < pl) {
			size_t q = pi;
			if (p[q] == '\\' && q + 1 < pl)
				q++;
			int pc = p[q], sc = s[si];
			if (ci) {
				pc = lower_c(pc);
				sc = lower_c(sc);
			}
			if (pc == sc) {
				si++;
				pi = q + 1;
				continue;
			}
		}
		if (star_p == (size_t)-1)
			return false;
		/* backtrack: let the last % swallow one more character */
		star_s += utf8_len(s + star_s, sl - star_s);
		si = star_s;
		pi = star_p;
	}
	while (pi < pl && p[pi] == '%')
		pi++;
	return pi == pl;
}

static int to_text(const tally_value *v, tally_value *out, tally_arena *a)
{
	if (v->type == TALLY_T_TEXT || v->type == TALLY_T_UNKNOWN) {
		*out = tally_text(v->u.s.p, v->u.s.len);
		return 0;
	}
	tally_buf b = {0};
	tally_value_format(v, &b);
	char *p = tally_arena_memdup(a, b.data ? (const void *)b.data : "", b.len);
	*out = tally_text(p, (uint32_t)b.len);
	tally_buf_free(&b);
	return 0;
}

static int eval_func(const tally_expr *e, const tally_value *row, tally_value *out, tally_arena *a,
		     tally_err *err)
{
	tally_value v[2];
	switch (e->fn) {
	case FN_NOW:
		*out = tally_int(TALLY_T_TIMESTAMPTZ, e->ctx ? e->ctx->now_us : tally_now_us());
		return 0;
	case FN_VERSION:
		*out = tally_text(TALLY_VERSION_STRING, (uint32_t)strlen(TALLY_VERSION_STRING));
		return 0;
	case FN_DATE_TRUNC: {
		if (tally_expr_eval(e->args[0], row, &v[0], a, err) ||
		    tally_expr_eval(e->args[1], row, &v[1], a, err))
			return -1;
		if (v[0].isnull || v[1].isnull) {
			*out = tally_null(TALLY_T_TIMESTAMPTZ);
			return 0;
		}
		int64_t r;
		if (tally_ts_trunc(v[0].u.s.p, v[0].u.s.len, v[1].u.ts, &r, err))
			return -1;
		*out = tally_int(TALLY_T_TIMESTAMPTZ, r);
		return 0;
	}
	case FN_CURRENT_SETTING: {
		if (tally_expr_eval(e->args[0], row, &v[0], a, err))
			return -1;
		bool missing_ok = false;
		if (e->nargs > 1) {
			if (tally_expr_eval(e->args[1], row, &v[1], a, err))
				return -1;
			missing_ok = !v[1].isnull && v[1].u.b;
		}
		if (v[0].isnull) {
			*out = tally_null(TALLY_T_TEXT);
			return 0;
		}
		char name[160];
		size_t n = v[0].u.s.len < sizeof name - 1 ? v[0].u.s.len : sizeof name - 1;
		memcpy(name, v[0].u.s.p, n);
		name[n] = 0;
		for (size_t i = 0; i < n; i++)
			if (name[i] >= 'A' && name[i] <= 'Z')
				name[i] = (char)(name[i] + 32);
		char buf[1024];
		if (!e->ctx || !e->ctx->setting_fn ||
		    e->ctx->setting_fn(e->ctx->setting_ctx, name, buf, sizeof buf) != 0) {
			if (missing_ok) {
				*out = tally_null(TALLY_T_TEXT);
				return 0;
			}
			return tally_err_set(err, TALLY_SQLSTATE_UNDEFINED_PARAMETER,
					     "unrecognized configuration parameter \"%s\"", name);
		}
		buf[sizeof buf - 1] = 0;
		size_t bl = strlen(buf);
		*out = tally_text(tally_arena_strndup(a, buf, bl), (uint32_t)bl);
		return 0;
	}
	case FN_ABS: {
		if (tally_expr_eval(e->args[0], row, &v[0], a, err))
			return -1;
		if (v[0].isnull) {
			*out = tally_null(e->type);
			return 0;
		}
		if (tally_type_is_int(e->type)) {
			int64_t x = v[0].u.i;
			if (x == INT64_MIN)
				return int_overflow(e->type, err);
			x = x < 0 ? -x : x;
			if (int_range(e->type, x, err))
				return -1;
			*out = tally_int(e->type, x);
		} else {
			*out = tally_float(e->type, fabs(v[0].u.f));
		}
		return 0;
	}
	case FN_LOWER:
	case FN_UPPER:
	case FN_LENGTH: {
		if (tally_expr_eval(e->args[0], row, &v[0], a, err))
			return -1;
		if (v[0].isnull) {
			*out = tally_null(e->type);
			return 0;
		}
		if (e->fn == FN_LENGTH) {
			int64_t n = 0;
			for (uint32_t i = 0; i < v[0].u.s.len; i++)
				if (((unsigned char)v[0].u.s.p[i] & 0xC0) != 0x80)
					n++;
			*out = tally_int(TALLY_T_INT4, n);
			return 0;
		}
		char *p = tally_arena_alloc(a, v[0].u.s.len + 1);
		if (!p)
			return tally_err_set(err, TALLY_SQLSTATE_OUT_OF_MEMORY, "out of memory");
		for (uint32_t i = 0; i < v[0].u.s.len; i++) {
			char c = v[0].u.s.p[i];
			if (e->fn == FN_LOWER && c >= 'A' && c <= 'Z')
				c = (char)(c + 32);
			else if (e->fn == FN_UPPER && c >= 'a' && c <= 'z')
				c = (char)(c - 32);
			p[i] = c;
		}
		*out = tally_text(p, v[0].u.s.len);
		return 0;
	}
	case FN_COALESCE:
		for (int i = 0; i < e->nargs; i++) {
			if (tally_expr_eval(e->args[i], row, out, a, err))
				return -1;
			if (!out->isnull)
				return 0;
		}
		*out = tally_null(e->type);
		return 0;
	case FN_NULLIF:
		if (tally_expr_eval(e->args[0], row, &v[0], a, err) ||
		    tally_expr_eval(e->args[1], row, &v[1], a, err))
			return -1;
		if (!v[0].isnull && !v[1].isnull && tally_value_cmp(&v[0], &v[1]) == 0)
			*out = tally_null(e->type);
		else
			*out = v[0];
		return 0;
	case FN_GREATEST:
	case FN_LEAST: {
		bool have = false;
		for (int i = 0; i < e->nargs; i++) {
			if (tally_expr_eval(e->args[i], row, &v[0], a, err))
				return -1;
			if (v[0].isnull)
				continue;
			int c = have ? tally_value_cmp(&v[0], out) : 0;
			if (!have || (e->fn == FN_GREATEST ? c > 0 : c < 0))
				*out = v[0];
			have = true;
		}
		if (!have)
			*out = tally_null(e->type);
		return 0;
	}
	default:
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL, "unknown function");
	}
}

int tally_expr_eval(const tally_expr *e, const tally_value *row, tally_value *out, tally_arena *a,
		    tally_err *err)
{
	tally_value l, r;
	switch (e->kind) {
	case X_CONST:
		*out = e->val;
		return 0;
	case X_COL:
		if (!row)
			return tally_err_set(err, TALLY_SQLSTATE_INTERNAL, "no row to evaluate");
		*out = row[e->col];
		if (out->isnull)
			out->type = (uint8_t)e->type;
		return 0;
	case X_ARITH:
		if (tally_expr_eval(e->args[0], row, &l, a, err) ||
		    tally_expr_eval(e->args[1], row, &r, a, err))
			return -1;
		if (l.isnull || r.isnull) {
			*out = tally_null(e->type);
			return 0;
		}
		if (eval_arith(e, &l, &r, out, err))
			return sql_err_pos(err, 0);
		return 0;
	case X_NEG:
		if (tally_expr_eval(e->args[0], row, &l, a, err))
			return -1;
		if (l.isnull) {
			*out = tally_null(e->type);
			return 0;
		}
		if (tally_type_is_int(e->type)) {
			if (l.u.i == INT64_MIN || int_range(e->type, -l.u.i, err))
				return int_overflow(e->type, err);
			*out = tally_int(e->type, -l.u.i);
		} else {
			*out = tally_float(e->type, -to_double(&l));
		}
		return 0;
	case X_CMP: {
		if (tally_expr_eval(e->args[0], row, &l, a, err) ||
		    tally_expr_eval(e->args[1], row, &r, a, err))
			return -1;
		if (l.isnull || r.isnull) {
			*out = tally_null(TALLY_T_BOOL);
			return 0;
		}
		int c = tally_value_cmp(&l, &r);
		bool b;
		switch (e->op) {
		case OP_EQ:
			b = c == 0;
			break;
		case OP_NE:
			b = c != 0;
			break;
		case OP_LT:
			b = c < 0;
			break;
		case OP_LE:
			b = c <= 0;
			break;
		case OP_GT:
			b = c > 0;
			break;
		default:
			b = c >= 0;
		}
		*out = tally_bool(b);
		return 0;
	}
	case X_AND:
	case X_OR: {
		bool is_and = e->kind == X_AND, sawnull = false;
		for (int i = 0; i < e->nargs; i++) {
			if (tally_expr_eval(e->args[i], row, &l, a, err))
				return -1;
			if (l.isnull)
				sawnull = true;
			else if (l.u.b != is_and) {
				*out = tally_bool(!is_and);
				return 0;
			}
		}
		*out = sawnull ? tally_null(TALLY_T_BOOL) : tally_bool(is_and);
		return 0;
	}
	case X_NOT:
		if (tally_expr_eval(e->args[0], row, &l, a, err))
			return -1;
		*out = l.isnull ? tally_null(TALLY_T_BOOL) : tally_bool(!l.u.b);
		return 0;
	case X_NULLTEST:
		if (tally_expr_eval(e->args[0], row, &l, a, err))
			return -1;
		*out = tally_bool(e->flag ? !l.isnull : l.isnull);
		return 0;
	case X_BOOLTEST: {
		if (tally_expr_eval(e->args[0], row, &l, a, err))
			return -1;
		bool b;
		switch (e->flag) {
		case BT_TRUE:
			b = !l.isnull && l.u.b;
			break;
		case BT_NOT_TRUE:
			b = l.isnull || !l.u.b;
			break;
		case BT_FALSE:
			b = !l.isnull && !l.u.b;
			break;
		case BT_NOT_FALSE:
			b = l.isnull || l.u.b;
			break;
		case BT_UNKNOWN:
			b = l.isnull;
			break;
		default:
			b = !l.isnull;
		}
		*out = tally_bool(b);
		return 0;
	}
	case X_IN: {
		if (tally_expr_eval(e->args[0], row, &l, a, err))
			return -1;
		if (l.isnull) {
			*out = tally_null(TALLY_T_BOOL);
			return 0;
		}
		bool found = false, sawnull = false;
		for (int i = 1; i < e->nargs && !found; i++) {
			if (tally_expr_eval(e->args[i], row, &r, a, err))
				return -1;
			if (r.isnull)
				sawnull = true;
			else if (tally_value_cmp(&l, &r) == 0)
				found = true;
		}
		if (found)
			*out = tally_bool(!e->flag);
		else if (sawnull)
			*out = tally_null(TALLY_T_BOOL);
		else
			*out = tally_bool(e->flag);
		return 0;
	}
	case X_LIKE: {
		if (tally_expr_eval(e->args[0], row, &l, a, err) ||
		    tally_expr_eval(e->args[1], row, &r, a, err))
			return -1;
		if (l.isnull || r.isnull) {
			*out = tally_null(TALLY_T_BOOL);
			return 0;
		}
		bool m = like_match((const unsigned char *)l.u.s.p, l.u.s.len,
				    (const unsigned char *)r.u.s.p, r.u.s.len, e->flag & 2);
		*out = tally_bool((e->flag & 1) ? !m : m);
		return 0;
	}
	case X_CAST:
		if (tally_expr_eval(e->args[0], row, &l, a, err))
			return -1;
		if (l.isnull) {
			*out = tally_null(e->cast_to);
			return 0;
		}
		if (l.type == e->cast_to) {
			*out = l;
			return 0;
		}
		return sql_cast_value(&l, e->cast_to, out, a, err);
	case X_FUNC:
		return eval_func(e, row, out, a, err);
	case X_CASE: {
		int npairs = (e->nargs - ((e->flag & 2) ? 1 : 0)) / 2;
		for (int i = 0; i < npairs; i++) {
			if (tally_expr_eval(e->args[2 * i], row, &l, a, err))
				return -1;
			if (!l.isnull && l.u.b)
				return tally_expr_eval(e->args[2 * i + 1], row, out, a, err);
		}
		if (e->flag & 2)
			return tally_expr_eval(e->args[e->nargs - 1], row, out, a, err);
		*out = tally_null(e->type);
		return 0;
	}
	case X_CONCAT: {
		if (tally_expr_eval(e->args[0], row, &l, a, err) ||
		    tally_expr_eval(e->args[1], row, &r, a, err))
			return -1;
		if (l.isnull || r.isnull) {
			*out = tally_null(TALLY_T_TEXT);
			return 0;
		}
		tally_value lt, rt;
		to_text(&l, &lt, a);
		to_text(&r, &rt, a);
		size_t n = (size_t)lt.u.s.len + rt.u.s.len;
		if (n > TALLY_TEXT_MAX * 64u)
			return tally_err_set(err, TALLY_SQLSTATE_PROGRAM_LIMIT,
					     "result of || is too long");
		char *p = tally_arena_alloc(a, n + 1);
		if (!p)
			return tally_err_set(err, TALLY_SQLSTATE_OUT_OF_MEMORY, "out of memory");
		memcpy(p, lt.u.s.p, lt.u.s.len);
		memcpy(p + lt.u.s.len, rt.u.s.p, rt.u.s.len);
		*out = tally_text(p, (uint32_t)n);
		return 0;
	}
	default:
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
				     "cannot evaluate expression node %d", e->kind);
	}
}

int tally_expr_test(const tally_expr *e, const tally_value *row, tally_arena *a, tally_err *err)
{
	tally_value v;
	if (tally_expr_eval(e, row, &v, a, err))
		return -1;
	return (!v.isnull && v.u.b) ? 1 : 0;
}
