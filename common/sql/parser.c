/*
 * parser.c - hand-written recursive-descent parser for tally's SQL surface. It turns the
 * tokens of a query string (lexer.c) into tally_stmt values: DDL for streams and continuous
 * views, INSERT, COPY FROM STDIN, SELECT, SET/SHOW/RESET and transaction control. Expressions
 * and SELECTs stay raw (names unresolved) until analyze.c sees the catalog. Statements that
 * PostgreSQL knows but tally does not run fail with 0A000 `<STATEMENT> is not supported by
 * tally`; anything else that does not parse is a 42601 syntax error at the offending token,
 * worded and positioned as PostgreSQL words and positions it. Recursion is bounded
 * (SQL_MAX_DEPTH, 54001) so no input can exhaust the stack.
 */
#include "sql_int.h"
#include "tally/catalog.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct parser {
	const char *sql;
	sql_tok *t;
	int n;
	int i;
	tally_arena *a;
	tally_err *err;
	int depth;
	uintptr_t stack_base; /* address of a local of tally_sql_parse */
} parser;

/* Stack the parser may use below tally_sql_parse's frame (PostgreSQL's max_stack_depth idea):
 * nesting is refused with 54001 before the thread's stack could run out. */
#define SQL_STACK_BUDGET (768u * 1024u)

__attribute__((noinline)) static bool stack_too_deep(parser *p)
{
	char here;
	uintptr_t at = (uintptr_t)&here;
	uintptr_t used = at < p->stack_base ? p->stack_base - at : at - p->stack_base;
	return used > SQL_STACK_BUDGET;
}

/* PostgreSQL's reserved and type/function-name keywords: never a bare column name or label. */
static const char *const reserved_kw[] = {
    "all", "analyse", "analyze", "and", "any", "array", "as", "asc", "asymmetric", "both", "case",
    "cast", "check", "collate", "column", "constraint", "create", "current_catalog", "current_date",
    "current_role", "current_time", "current_timestamp", "current_user", "default", "deferrable",
    "desc", "distinct", "do", "else", "end", "except", "false", "fetch", "for", "foreign", "from",
    "grant", "group", "having", "in", "initially", "intersect", "into", "lateral", "leading",
    "limit", "localtime", "localtimestamp", "not", "null", "offset", "on", "only", "or", "order",
    "placing", "primary", "references", "returning", "select", "session_user", "some", "symmetric",
    "table", "then", "to", "trailing", "true", "union", "unique", "user", "using", "variadic",
    "when", "where", "window", "with",
    /* type_func_name keywords */
    "authorization", "between", "binary", "collation", "concurrently", "cross", "current_schema",
    "freeze", "full", "ilike", "inner", "is", "isnull", "join", "left", "like", "natural",
    "notnull", "outer", "overlaps", "right", "similar", "tablesample", "verbose", NULL};

static bool is_reserved(const char *s)
{
	for (int i = 0; reserved_kw[i]; i++)
		if (strcmp(reserved_kw[i], s) == 0)
			return true;
	return false;
}

/* ---- token helpers ----------------------------------------------------------------------------
 */

static sql_tok *cur(parser *p)
{
	return &p->t[p->i];
}
static sql_tok *peek_at(parser *p, int k)
{
	int j = p->i + k;
	return j < p->n ? &p->t[j] : &p->t[p->n - 1];
}
static void adv(parser *p)
{
	if (p->t[p->i].kind != TK_EOF)
		p->i++;
}
static bool tok_kw(const sql_tok *t, const char *kw)
{
	return t->kind == TK_IDENT && !t->quoted && strcmp(t->str, kw) == 0;
}
static bool is_kw(parser *p, const char *kw)
{
	return tok_kw(cur(p), kw);
}
static bool accept_kw(parser *p, const char *kw)
{
	if (is_kw(p, kw)) {
		adv(p);
		return true;
	}
	return false;
}
static bool is_op(parser *p, const char *op)
{
	return cur(p)->kind == TK_OP && strcmp(cur(p)->str, op) == 0;
}
static bool accept(parser *p, sql_tok_kind k)
{
	if (cur(p)->kind == k) {
		adv(p);
		return true;
	}
	return false;
}

static int syntax_error_at(parser *p, const sql_tok *t)
{
	if (t->kind == TK_EOF) {
		tally_err_set(p->err, TALLY_SQLSTATE_SYNTAX, "syntax error at end of input");
	} else {
		int len = t->end - t->off;
		if (len > 400)
			len = 400;
		tally_err_set(p->err, TALLY_SQLSTATE_SYNTAX, "syntax error at or near \"%.*s\"",
			      len, p->sql + t->off);
	}
	return sql_err_pos(p->err, t->cpos);
}
static int syntax_error(parser *p)
{
	return syntax_error_at(p, cur(p));
}

static int expect_kw(parser *p, const char *kw)
{
	if (accept_kw(p, kw))
		return 0;
	return syntax_error(p);
}
static int expect(parser *p, sql_tok_kind k)
{
	if (accept(p, k))
		return 0;
	return syntax_error(p);
}

static int not_supported(parser *p, int pos, const char *what, const char *hint)
{
	/* "joins are ...", "UNION is ..." */
	size_t wl = strlen(what);
	const char *cut = strstr(what, " in ");
	if (!cut)
		cut = strstr(what, " on ");
	if (cut)
		wl = (size_t)(cut - what);
	bool plural = what[0] >= 'a' && what[0] <= 'z' && wl > 1 && what[wl - 1] == 's';
	tally_err_set(p->err, TALLY_SQLSTATE_FEATURE_NOT_SUPPORTED, "%s %s not supported by tally",
		      what, plural ? "are" : "is");
	if (hint)
		tally_err_hint(p->err, "%s", hint);
	return sql_err_pos(p->err, pos);
}

static int depth_error(tally_err *err)
{
	tally_err_set(err, "54001", "stack depth limit exceeded");
	return tally_err_hint(
	    err, "Simplify the statement: expressions may nest at most %d levels.", SQL_MAX_DEPTH);
}

static char *upper_dup(parser *p, const char *s)
{
	char *u = tally_arena_strndup(p->a, s, strlen(s));
	for (char *q = u; *q; q++)
		if (*q >= 'a' && *q <= 'z')
			*q = (char)(*q - 32);
	return u;
}

/* A name: identifier, unreserved keyword or quoted identifier. */
static int parse_ident(parser *p, const char **out)
{
	sql_tok *t = cur(p);
	if (t->kind != TK_IDENT || (!t->quoted && is_reserved(t->str)))
		return syntax_error(p);
	*out = t->str;
	adv(p);
	return 0;
}

/* Identifiers allowed as column labels after AS (PostgreSQL: any keyword). */
static int parse_label(parser *p, const char **out)
{
	sql_tok *t = cur(p);
	if (t->kind != TK_IDENT)
		return syntax_error(p);
	*out = t->str;
	adv(p);
	return 0;
}

/* Object name for DDL/DML: [public.]name into buf. */
static int parse_objname(parser *p, char *buf, size_t bufsz, int *pos)
{
	const char *a1, *a2;
	if (pos)
		*pos = cur(p)->cpos;
	int at = cur(p)->cpos;
	if (parse_ident(p, &a1))
		return -1;
	if (cur(p)->kind == TK_DOT) {
		adv(p);
		if (parse_ident(p, &a2))
			return -1;
		if (strcmp(a1, "public") != 0) {
			tally_err_set(p->err, TALLY_SQLSTATE_FEATURE_NOT_SUPPORTED,
				      "schema-qualified names are not supported by tally");
			tally_err_hint(p->err,
				       "Objects live in schema \"public\"; name them without "
				       "a schema.");
			return sql_err_pos(p->err, at);
		}
		a1 = a2;
	}
	tally_strlcpy(buf, a1, bufsz);
	return 0;
}

/* ---- expressions
 * --------------------------------------------------------------------------------- */

tally_expr *sql_expr_new(tally_arena *a, int kind, int pos)
{
	tally_expr *e = tally_arena_alloc(a, sizeof *e);
	memset(e, 0, sizeof *e);
	e->kind = (uint8_t)kind;
	e->pos = pos;
	e->depth = 1;
	e->col = -1;
	return e;
}

/* Finish a node: compute its height and refuse trees deeper than SQL_MAX_DEPTH. */
static int fin(parser *p, tally_expr *e)
{
	int d = 0;
	for (int i = 0; i < e->nargs; i++)
		if (e->args[i] && e->args[i]->depth > d)
			d = e->args[i]->depth;
	e->depth = d + 1;
	if (e->depth > SQL_MAX_DEPTH)
		return depth_error(p->err);
	return 0;
}

static tally_expr **args_alloc(parser *p, int n)
{
	return tally_arena_alloc(p->a, sizeof(tally_expr *) * (size_t)(n ? n : 1));
}

static tally_expr *mk2(parser *p, int kind, int op, int pos, tally_expr *l, tally_expr *r)
{
	tally_expr *e = sql_expr_new(p->a, kind, pos);
	e->op = (uint8_t)op;
	e->nargs = 2;
	e->args = args_alloc(p, 2);
	e->args[0] = l;
	e->args[1] = r;
	return e;
}

/* Growable expression list. */
typedef struct exprlist {
	tally_expr **v;
	int n, cap;
} exprlist;
static void el_push(parser *p, exprlist *l, tally_expr *e)
{
	if (l->n == l->cap) {
		int nc = l->cap ? l->cap * 2 : 4;
		tally_expr **nv = tally_arena_alloc(p->a, sizeof *nv * (size_t)nc);
		if (l->n)
			memcpy(nv, l->v, sizeof *nv * (size_t)l->n);
		l->v = nv;
		l->cap = nc;
	}
	l->v[l->n++] = e;
}

static int parse_expr(parser *p, tally_expr **out);
static int parse_bexpr(parser *p, tally_expr **out);
static int parse_select_body(parser *p, tally_select_ast **out);

/* Type names as written in casts and DDL. *typname gets PostgreSQL's internal name, which
 * names a cast's output column ("int4"). */
static const char *const unsupported_types[] = {
    "date",	 "time",   "timetz", "interval", "json",   "jsonb",    "uuid",	   "bytea",  "char",
    "character", "bpchar", "money",  "inet",	 "cidr",   "macaddr",  "bit",	   "varbit", "xml",
    "oid",	 "point",  "name",   "decimal",	 "record", "regclass", "tsvector", NULL};

static int parse_typename(parser *p, tally_type *out, const char **typname, int *pos)
{
	sql_tok *t0 = cur(p);
	*pos = t0->cpos;
	const char *w;
	if (t0->kind != TK_IDENT)
		return syntax_error(p);
	w = t0->str;
	adv(p);
	if (cur(p)->kind == TK_DOT && (strcmp(w, "pg_catalog") == 0 || strcmp(w, "public") == 0)) {
		adv(p);
		if (cur(p)->kind != TK_IDENT)
			return syntax_error(p);
		w = cur(p)->str;
		adv(p);
	}
	char name[80];
	const char *tn = NULL;
	bool has_mod = true;
	if (!t0->quoted && strcmp(w, "double") == 0) {
		if (expect_kw(p, "precision"))
			return -1;
		snprintf(name, sizeof name, "double precision");
		tn = "float8";
		has_mod = false;
	} else if (!t0->quoted && (strcmp(w, "character") == 0 || strcmp(w, "char") == 0) &&
		   is_kw(p, "varying")) {
		adv(p);
		snprintf(name, sizeof name, "character varying");
		tn = "varchar";
	} else if (!t0->quoted && (strcmp(w, "timestamp") == 0 || strcmp(w, "time") == 0)) {
		bool ts = w[4] == 's';
		if (cur(p)->kind == TK_LPAREN) {
			adv(p);
			if (cur(p)->kind != TK_INT)
				return syntax_error(p);
			adv(p);
			if (expect(p, TK_RPAREN))
				return -1;
		}
		bool tz = false;
		if (is_kw(p, "with") || is_kw(p, "without")) {
			tz = is_kw(p, "with");
			adv(p);
			if (expect_kw(p, "time") || expect_kw(p, "zone"))
				return -1;
		}
		if (!ts) {
			snprintf(name, sizeof name, "time");
		} else {
			snprintf(name, sizeof name, "%s",
				 tz ? "timestamp with time zone" : "timestamp");
			tn = tz ? "timestamptz" : "timestamp";
		}
		has_mod = false;
	} else {
		snprintf(name, sizeof name, "%s", w);
		if (strcmp(w, "float") == 0 && !t0->quoted && cur(p)->kind == TK_LPAREN &&
		    peek_at(p, 1)->kind == TK_INT && peek_at(p, 2)->kind == TK_RPAREN) {
			long prec = strtol(peek_at(p, 1)->str, NULL, 10);
			if (prec < 1 || prec > 53) {
				tally_err_set(p->err, TALLY_SQLSTATE_INVALID_PARAMETER,
					      "precision for type float must be %s",
					      prec < 1 ? "at least 1 bit" : "less than 54 bits");
				return sql_err_pos(p->err, peek_at(p, 1)->cpos);
			}
			snprintf(name, sizeof name, "%s", prec <= 24 ? "real" : "double precision");
			p->i += 3;
			has_mod = false;
		}
	}
	if (has_mod && cur(p)->kind == TK_LPAREN) {
		/* length / precision modifier: accepted and ignored */
		adv(p);
		for (;;) {
			if (cur(p)->kind != TK_INT)
				return syntax_error(p);
			adv(p);
			if (accept(p, TK_COMMA))
				continue;
			break;
		}
		if (expect(p, TK_RPAREN))
			return -1;
	}
	if (cur(p)->kind == TK_LBRACKET || is_kw(p, "array"))
		return not_supported(p, cur(p)->cpos, "array types", NULL);
	tally_type ty = tally_type_from_name(name);
	if (ty == TALLY_T_UNKNOWN) {
		for (int i = 0; unsupported_types[i]; i++) {
			if (strcmp(unsupported_types[i], name) == 0 || strcmp(name, "time") == 0) {
				tally_err_set(p->err, TALLY_SQLSTATE_FEATURE_NOT_SUPPORTED,
					      "type %s is not supported by tally", name);
				tally_err_hint(p->err,
					       "Supported types: smallint, integer, bigint, "
					       "real, double precision, boolean, text, "
					       "timestamptz.");
				return sql_err_pos(p->err, *pos);
			}
		}
		tally_err_set(p->err, TALLY_SQLSTATE_UNDEFINED_OBJECT, "type \"%s\" does not exist",
			      name);
		return sql_err_pos(p->err, *pos);
	}
	if (!tn) {
		switch (ty) {
		case TALLY_T_BOOL:
			tn = "bool";
			break;
		case TALLY_T_INT2:
			tn = "int2";
			break;
		case TALLY_T_INT4:
			tn = "int4";
			break;
		case TALLY_T_INT8:
			tn = "int8";
			break;
		case TALLY_T_FLOAT4:
			tn = "float4";
			break;
		case TALLY_T_FLOAT8:
			tn = "float8";
			break;
		case TALLY_T_NUMERIC:
			tn = "numeric";
			break;
		case TALLY_T_TEXT:
			tn = strcmp(name, "text") == 0 ? "text" : "varchar";
			break;
		default:
			tn = "timestamptz";
		}
	}
	*out = ty;
	*typname = tn;
	return 0;
}

static tally_expr *mk_const(parser *p, int pos, tally_value v)
{
	tally_expr *e = sql_expr_new(p->a, N_CONST, pos);
	e->val = v;
	return e;
}

/* Integer literal text -> int4 if it fits, else int8, else float8 (negated if neg). As
 * PostgreSQL, a folded minus belongs to the literal: -2147483648 is an integer and
 * -9223372036854775808 a bigint. */
static tally_value int_literal(const char *digits, bool neg)
{
	errno = 0;
	unsigned long long u = strtoull(digits, NULL, 10);
	if (errno == 0 && u <= (unsigned long long)INT64_MAX + (neg ? 1u : 0u)) {
		int64_t v = neg ? (int64_t)(0 - u) : (int64_t)u;
		return tally_int(v >= INT32_MIN && v <= INT32_MAX ? TALLY_T_INT4 : TALLY_T_INT8, v);
	}
	double d = strtod(digits, NULL);
	return tally_float(TALLY_T_FLOAT8, neg ? -d : d);
}

static int parse_func_args(parser *p, tally_expr *f)
{
	/* at '(' */
	adv(p);
	if (is_op(p, "*")) {
		adv(p);
		f->star = true;
		return expect(p, TK_RPAREN);
	}
	if (accept(p, TK_RPAREN))
		return 0;
	if (accept_kw(p, "distinct"))
		f->distinct = true;
	else
		accept_kw(p, "all");
	exprlist l = {0};
	for (;;) {
		tally_expr *e = NULL;
		if (parse_expr(p, &e))
			return -1;
		el_push(p, &l, e);
		if (accept(p, TK_COMMA))
			continue;
		break;
	}
	if (is_kw(p, "order"))
		return not_supported(p, cur(p)->cpos, "ORDER BY in aggregate calls", NULL);
	if (expect(p, TK_RPAREN))
		return -1;
	f->nargs = l.n;
	f->args = l.v;
	return 0;
}

static int parse_case(parser *p, tally_expr **out)
{
	int pos = cur(p)->cpos;
	adv(p); /* CASE */
	exprlist l = {0};
	tally_expr *e = sql_expr_new(p->a, N_CASE, pos);
	if (!is_kw(p, "when")) {
		tally_expr *arg = NULL;
		if (parse_expr(p, &arg))
			return -1;
		el_push(p, &l, arg);
		e->flag |= 1;
	}
	if (!is_kw(p, "when"))
		return syntax_error(p);
	while (accept_kw(p, "when")) {
		tally_expr *w = NULL, *t = NULL;
		if (parse_expr(p, &w) || expect_kw(p, "then") || parse_expr(p, &t))
			return -1;
		el_push(p, &l, w);
		el_push(p, &l, t);
	}
	if (accept_kw(p, "else")) {
		tally_expr *el = NULL;
		if (parse_expr(p, &el))
			return -1;
		el_push(p, &l, el);
		e->flag |= 2;
	}
	if (expect_kw(p, "end"))
		return -1;
	e->nargs = l.n;
	e->args = l.v;
	if (fin(p, e))
		return -1;
	*out = e;
	return 0;
}

static int parse_primary(parser *p, tally_expr **out)
{
	sql_tok *t = cur(p);
	int pos = t->cpos;
	switch (t->kind) {
	case TK_INT:
		adv(p);
		*out = mk_const(p, pos, int_literal(t->str, false));
		return 0;
	case TK_FLOAT:
		adv(p);
		*out = mk_const(p, pos, tally_float(TALLY_T_FLOAT8, strtod(t->str, NULL)));
		return 0;
	case TK_STRING: {
		adv(p);
		tally_value v;
		memset(&v, 0, sizeof v);
		v.type = TALLY_T_UNKNOWN;
		v.u.s.p = t->str;
		v.u.s.len = (uint32_t)t->len;
		*out = mk_const(p, pos, v);
		return 0;
	}
	case TK_PARAM:
		tally_err_set(p->err, "42P02", "there is no parameter %s", t->str);
		return sql_err_pos(p->err, pos);
	case TK_LPAREN: {
		adv(p);
		if (is_kw(p, "select") || is_kw(p, "values") || is_kw(p, "with"))
			return not_supported(p, cur(p)->cpos, "subqueries", NULL);
		tally_expr *e = NULL;
		if (parse_expr(p, &e))
			return -1;
		if (cur(p)->kind == TK_COMMA)
			return not_supported(p, cur(p)->cpos, "row constructors", NULL);
		if (expect(p, TK_RPAREN))
			return -1;
		*out = e;
		return 0;
	}
	case TK_IDENT:
		break;
	default:
		return syntax_error(p);
	}
	/* identifiers and keywords */
	if (!t->quoted) {
		const char *w = t->str;
		if (strcmp(w, "true") == 0 || strcmp(w, "false") == 0) {
			adv(p);
			tally_expr *e = mk_const(p, pos, tally_bool(w[0] == 't'));
			*out = e;
			return 0;
		}
		if (strcmp(w, "null") == 0) {
			adv(p);
			*out = mk_const(p, pos, tally_null(TALLY_T_UNKNOWN));
			return 0;
		}
		if (strcmp(w, "cast") == 0) {
			adv(p);
			tally_expr *arg = NULL;
			if (expect(p, TK_LPAREN) || parse_expr(p, &arg) || expect_kw(p, "as"))
				return -1;
			tally_expr *c = sql_expr_new(p->a, N_CAST, pos);
			int tpos;
			if (parse_typename(p, &c->cast_to, &c->typname, &tpos) ||
			    expect(p, TK_RPAREN))
				return -1;
			c->nargs = 1;
			c->args = args_alloc(p, 1);
			c->args[0] = arg;
			if (fin(p, c))
				return -1;
			*out = c;
			return 0;
		}
		if (strcmp(w, "case") == 0)
			return parse_case(p, out);
		if (strcmp(w, "current_timestamp") == 0 || strcmp(w, "localtimestamp") == 0) {
			adv(p);
			if (cur(p)->kind == TK_LPAREN) {
				adv(p);
				if (cur(p)->kind != TK_INT)
					return syntax_error(p);
				adv(p);
				if (expect(p, TK_RPAREN))
					return -1;
			}
			tally_expr *f = sql_expr_new(p->a, N_FUNC, pos);
			f->name = "now";
			f->typname = w; /* column name */
			*out = f;
			return 0;
		}
		if (strcmp(w, "exists") == 0 && peek_at(p, 1)->kind == TK_LPAREN)
			return not_supported(p, pos, "subqueries", NULL);
		if (strcmp(w, "array") == 0 || strcmp(w, "row") == 0)
			return not_supported(p, pos, w[0] == 'a' ? "ARRAY" : "ROW", NULL);
		if (is_reserved(w))
			return syntax_error(p);
		/* typed literal: type 'string' */
		if (peek_at(p, 1)->kind == TK_STRING ||
		    (strcmp(w, "double") == 0 && tok_kw(peek_at(p, 1), "precision") &&
		     peek_at(p, 2)->kind == TK_STRING)) {
			tally_type ty;
			const char *tn;
			int tpos;
			int save = p->i;
			if (parse_typename(p, &ty, &tn, &tpos) == 0 && cur(p)->kind == TK_STRING) {
				tally_expr *c = sql_expr_new(p->a, N_CAST, pos);
				c->cast_to = ty;
				c->typname = tn;
				tally_expr *lit;
				if (parse_primary(p, &lit))
					return -1;
				c->nargs = 1;
				c->args = args_alloc(p, 1);
				c->args[0] = lit;
				fin(p, c);
				*out = c;
				return 0;
			}
			if (tally_err_isset(p->err) && p->err->sqlstate[0] == '0')
				return -1; /* unsupported type named in a typed literal */
			tally_err_clear(p->err);
			p->i = save;
		}
	}
	const char *name = t->str;
	adv(p);
	const char *qual = NULL;
	if (cur(p)->kind == TK_DOT) {
		adv(p);
		if (is_op(p, "*")) {
			adv(p);
			tally_expr *s = sql_expr_new(p->a, N_STAR, pos);
			s->qual = name;
			*out = s;
			return 0;
		}
		if (cur(p)->kind != TK_IDENT)
			return syntax_error(p);
		qual = name;
		name = cur(p)->str;
		adv(p);
		if (cur(p)->kind == TK_DOT) {
			/* schema.table.column: drop the schema */
			adv(p);
			if (cur(p)->kind != TK_IDENT)
				return syntax_error(p);
			qual = name;
			name = cur(p)->str;
			adv(p);
		}
	}
	if (cur(p)->kind == TK_LPAREN) {
		if (qual && strcmp(qual, "pg_catalog") != 0 && strcmp(qual, "public") != 0) {
			tally_err_set(p->err, TALLY_SQLSTATE_UNDEFINED_FUNCTION,
				      "function %s.%s does not exist", qual, name);
			if (strcmp(qual, "pipeline_cluster") == 0 &&
			    strcmp(name, "remove_node") == 0)
				tally_err_hint(p->err, "pipeline_cluster.remove_node() must be "
						       "called alone: SELECT "
						       "pipeline_cluster.remove_node('w2').");
			return sql_err_pos(p->err, pos);
		}
		tally_expr *f = sql_expr_new(p->a, N_FUNC, pos);
		f->name = name;
		if (parse_func_args(p, f))
			return -1;
		if (is_kw(p, "over"))
			return not_supported(p, cur(p)->cpos, "window functions", NULL);
		if (is_kw(p, "filter"))
			return not_supported(p, cur(p)->cpos, "FILTER", NULL);
		if (is_kw(p, "within"))
			return not_supported(p, cur(p)->cpos, "WITHIN GROUP", NULL);
		if (fin(p, f))
			return -1;
		*out = f;
		return 0;
	}
	tally_expr *c = sql_expr_new(p->a, N_NAME, pos);
	c->name = name;
	c->qual = qual;
	*out = c;
	return 0;
}

static int parse_postfix(parser *p, tally_expr **out)
{
	tally_expr *e = NULL;
	if (parse_primary(p, &e))
		return -1;
	for (;;) {
		if (cur(p)->kind == TK_DCOLON) {
			int pos = cur(p)->cpos;
			adv(p);
			tally_expr *c = sql_expr_new(p->a, N_CAST, pos);
			int tpos;
			if (parse_typename(p, &c->cast_to, &c->typname, &tpos))
				return -1;
			c->nargs = 1;
			c->args = args_alloc(p, 1);
			c->args[0] = e;
			if (fin(p, c))
				return -1;
			e = c;
			continue;
		}
		if (cur(p)->kind == TK_LBRACKET)
			return not_supported(p, cur(p)->cpos, "array subscripts", NULL);
		break;
	}
	*out = e;
	return 0;
}

static int parse_unary(parser *p, tally_expr **out)
{
	if (is_op(p, "-") || is_op(p, "+")) {
		int pos = cur(p)->cpos;
		bool neg = cur(p)->str[0] == '-';
		adv(p);
		if (++p->depth > SQL_MAX_DEPTH || stack_too_deep(p))
			return depth_error(p->err);
		/* fold a minus into a following numeric literal, as PostgreSQL's grammar does */
		if (neg && (cur(p)->kind == TK_INT || cur(p)->kind == TK_FLOAT) &&
		    peek_at(p, 1)->kind != TK_DCOLON && peek_at(p, 1)->kind != TK_LBRACKET) {
			sql_tok *t = cur(p);
			adv(p);
			p->depth--;
			if (t->kind == TK_INT)
				*out = mk_const(p, pos, int_literal(t->str, true));
			else
				*out = mk_const(p, pos,
						tally_float(TALLY_T_FLOAT8, -strtod(t->str, NULL)));
			return 0;
		}
		tally_expr *arg = NULL;
		if (parse_unary(p, &arg))
			return -1;
		p->depth--;
		/* PostgreSQL folds a minus into an integer literal even through parentheses:
		 * -(-2147483648) is the bigint 2147483648, not an overflow of -integer. */
		if (neg && arg->kind == N_CONST && !arg->val.isnull &&
		    (arg->val.type == TALLY_T_INT4 || arg->val.type == TALLY_T_INT8)) {
			__int128 v = -(__int128)arg->val.u.i;
			if (v > INT64_MAX)
				arg->val = tally_float(TALLY_T_FLOAT8, (double)v);
			else
				arg->val = tally_int(
				    v >= INT32_MIN && v <= INT32_MAX ? TALLY_T_INT4 : TALLY_T_INT8,
				    (int64_t)v);
			*out = arg;
			return 0;
		}
		tally_expr *e = sql_expr_new(p->a, N_UNARY, pos);
		e->op = neg ? OP_NEG : OP_PLUS;
		e->nargs = 1;
		e->args = args_alloc(p, 1);
		e->args[0] = arg;
		if (fin(p, e))
			return -1;
		*out = e;
		return 0;
	}
	return parse_postfix(p, out);
}

/* Binary levels, loosest last: ^, * / %, + -, other operators (||). */
static int parse_pow(parser *p, tally_expr **out)
{
	tally_expr *l = NULL;
	if (parse_unary(p, &l))
		return -1;
	while (is_op(p, "^")) {
		return not_supported(p, cur(p)->cpos, "operator ^", NULL);
	}
	*out = l;
	return 0;
}

static int parse_mul(parser *p, tally_expr **out)
{
	tally_expr *l = NULL;
	if (parse_pow(p, &l))
		return -1;
	while (is_op(p, "*") || is_op(p, "/") || is_op(p, "%")) {
		int op = is_op(p, "*") ? OP_MUL : is_op(p, "/") ? OP_DIV : OP_MOD;
		int pos = cur(p)->cpos;
		adv(p);
		tally_expr *r = NULL;
		if (parse_pow(p, &r))
			return -1;
		l = mk2(p, N_BINOP, op, pos, l, r);
		if (fin(p, l))
			return -1;
	}
	*out = l;
	return 0;
}

static int parse_add(parser *p, tally_expr **out)
{
	tally_expr *l = NULL;
	if (parse_mul(p, &l))
		return -1;
	while (is_op(p, "+") || is_op(p, "-")) {
		int op = is_op(p, "+") ? OP_ADD : OP_SUB;
		int pos = cur(p)->cpos;
		adv(p);
		tally_expr *r = NULL;
		if (parse_mul(p, &r))
			return -1;
		l = mk2(p, N_BINOP, op, pos, l, r);
		if (fin(p, l))
			return -1;
	}
	*out = l;
	return 0;
}

static bool is_cmp_op(parser *p, int *op)
{
	static const struct {
		const char *s;
		int op;
	} ops[] = {{"=", OP_EQ},  {"<>", OP_NE}, {"!=", OP_NE}, {"<", OP_LT},
		   {"<=", OP_LE}, {">", OP_GT},	 {">=", OP_GE}};
	if (cur(p)->kind != TK_OP)
		return false;
	for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
		if (strcmp(cur(p)->str, ops[i].s) == 0) {
			*op = ops[i].op;
			return true;
		}
	return false;
}

static int parse_other(parser *p, tally_expr **out)
{
	tally_expr *l = NULL;
	if (parse_add(p, &l))
		return -1;
	int dummy;
	while (cur(p)->kind == TK_OP && !is_cmp_op(p, &dummy)) {
		int pos = cur(p)->cpos;
		if (!is_op(p, "||")) {
			tally_err_set(p->err, TALLY_SQLSTATE_UNDEFINED_FUNCTION,
				      "operator does not exist: %s", cur(p)->str);
			return sql_err_pos(p->err, pos);
		}
		adv(p);
		tally_expr *r = NULL;
		if (parse_add(p, &r))
			return -1;
		l = mk2(p, N_BINOP, OP_CONCAT, pos, l, r);
		if (fin(p, l))
			return -1;
	}
	*out = l;
	return 0;
}

/* IN, BETWEEN, LIKE */
static int parse_pred(parser *p, tally_expr **out)
{
	tally_expr *l = NULL;
	if (parse_other(p, &l))
		return -1;
	for (;;) {
		bool neg = false;
		int save = p->i;
		int pos = cur(p)->cpos;
		if (is_kw(p, "not") &&
		    (tok_kw(peek_at(p, 1), "in") || tok_kw(peek_at(p, 1), "between") ||
		     tok_kw(peek_at(p, 1), "like") || tok_kw(peek_at(p, 1), "ilike"))) {
			neg = true;
			adv(p);
		}
		if (is_kw(p, "in")) {
			if (!neg)
				pos = cur(p)->cpos;
			adv(p);
			if (cur(p)->kind != TK_LPAREN)
				return syntax_error(p);
			adv(p);
			if (is_kw(p, "select") || is_kw(p, "values") || is_kw(p, "with"))
				return not_supported(p, cur(p)->cpos, "subqueries", NULL);
			exprlist lst = {0};
			el_push(p, &lst, l);
			for (;;) {
				tally_expr *e = NULL;
				if (parse_expr(p, &e))
					return -1;
				el_push(p, &lst, e);
				if (accept(p, TK_COMMA))
					continue;
				break;
			}
			if (expect(p, TK_RPAREN))
				return -1;
			tally_expr *e = sql_expr_new(p->a, N_IN, pos);
			e->flag = neg;
			e->nargs = lst.n;
			e->args = lst.v;
			if (fin(p, e))
				return -1;
			l = e;
			continue;
		}
		if (is_kw(p, "between")) {
			adv(p);
			accept_kw(p, "asymmetric");
			if (is_kw(p, "symmetric"))
				return not_supported(p, cur(p)->cpos, "BETWEEN SYMMETRIC", NULL);
			tally_expr *lo = NULL, *hi = NULL;
			if (parse_bexpr(p, &lo) || expect_kw(p, "and") || parse_bexpr(p, &hi))
				return -1;
			tally_expr *e = sql_expr_new(p->a, N_BETWEEN, pos);
			e->flag = neg;
			e->nargs = 3;
			e->args = args_alloc(p, 3);
			e->args[0] = l;
			e->args[1] = lo;
			e->args[2] = hi;
			if (fin(p, e))
				return -1;
			l = e;
			continue;
		}
		if (is_kw(p, "like") || is_kw(p, "ilike")) {
			bool ci = is_kw(p, "ilike");
			if (!neg)
				pos = cur(p)->cpos;
			adv(p);
			tally_expr *r = NULL;
			if (parse_bexpr(p, &r))
				return -1;
			if (is_kw(p, "escape"))
				return not_supported(p, cur(p)->cpos, "LIKE ... ESCAPE", NULL);
			tally_expr *e = mk2(p, N_LIKE, OP_NONE, pos, l, r);
			e->flag = (uint8_t)((neg ? 1 : 0) | (ci ? 2 : 0));
			if (fin(p, e))
				return -1;
			l = e;
			continue;
		}
		if (is_kw(p, "similar"))
			return not_supported(p, cur(p)->cpos, "SIMILAR TO", NULL);
		p->i = save;
		break;
	}
	*out = l;
	return 0;
}

static int parse_cmp(parser *p, tally_expr **out)
{
	tally_expr *l = NULL;
	if (parse_pred(p, &l))
		return -1;
	int op;
	if (is_cmp_op(p, &op)) {
		int pos = cur(p)->cpos;
		adv(p);
		tally_expr *r = NULL;
		if (parse_pred(p, &r))
			return -1;
		int op2;
		if (is_cmp_op(p, &op2))
			return syntax_error(p); /* comparisons do not associate */
		l = mk2(p, N_BINOP, op, pos, l, r);
		if (fin(p, l))
			return -1;
	}
	*out = l;
	return 0;
}

static int parse_is(parser *p, tally_expr **out)
{
	tally_expr *l = NULL;
	if (parse_cmp(p, &l))
		return -1;
	for (;;) {
		int pos = cur(p)->cpos;
		if (is_kw(p, "isnull") || is_kw(p, "notnull")) {
			tally_expr *e = sql_expr_new(p->a, N_NULLTEST, pos);
			e->flag = is_kw(p, "notnull");
			adv(p);
			e->nargs = 1;
			e->args = args_alloc(p, 1);
			e->args[0] = l;
			if (fin(p, e))
				return -1;
			l = e;
			continue;
		}
		if (!is_kw(p, "is"))
			break;
		adv(p);
		bool neg = accept_kw(p, "not");
		tally_expr *e = NULL;
		if (accept_kw(p, "null")) {
			e = sql_expr_new(p->a, N_NULLTEST, pos);
			e->flag = neg;
		} else if (is_kw(p, "true") || is_kw(p, "false") || is_kw(p, "unknown")) {
			e = sql_expr_new(p->a, N_BOOLTEST, pos);
			int bt = is_kw(p, "true")    ? BT_TRUE
				 : is_kw(p, "false") ? BT_FALSE
						     : BT_UNKNOWN;
			e->flag = (uint8_t)(bt + (neg ? 1 : 0));
			adv(p);
		} else if (is_kw(p, "distinct")) {
			return not_supported(p, cur(p)->cpos, "IS DISTINCT FROM", NULL);
		} else {
			return syntax_error(p);
		}
		e->nargs = 1;
		e->args = args_alloc(p, 1);
		e->args[0] = l;
		if (fin(p, e))
			return -1;
		l = e;
	}
	*out = l;
	return 0;
}

static int parse_not(parser *p, tally_expr **out)
{
	if (is_kw(p, "not")) {
		int pos = cur(p)->cpos;
		adv(p);
		if (++p->depth > SQL_MAX_DEPTH || stack_too_deep(p))
			return depth_error(p->err);
		tally_expr *arg = NULL;
		if (parse_not(p, &arg))
			return -1;
		p->depth--;
		tally_expr *e = sql_expr_new(p->a, N_NOT, pos);
		e->nargs = 1;
		e->args = args_alloc(p, 1);
		e->args[0] = arg;
		if (fin(p, e))
			return -1;
		*out = e;
		return 0;
	}
	return parse_is(p, out);
}

/* n-ary AND / OR (flattened so that long conjunctions do not make deep trees) */
static int parse_and(parser *p, tally_expr **out)
{
	tally_expr *l = NULL;
	if (parse_not(p, &l))
		return -1;
	if (!is_kw(p, "and")) {
		*out = l;
		return 0;
	}
	tally_expr *e = sql_expr_new(p->a, N_AND, cur(p)->cpos);
	exprlist lst = {0};
	el_push(p, &lst, l);
	while (accept_kw(p, "and")) {
		tally_expr *r = NULL;
		if (parse_not(p, &r))
			return -1;
		el_push(p, &lst, r);
	}
	e->nargs = lst.n;
	e->args = lst.v;
	if (fin(p, e))
		return -1;
	*out = e;
	return 0;
}

static int parse_or(parser *p, tally_expr **out)
{
	tally_expr *l = NULL;
	if (parse_and(p, &l))
		return -1;
	if (!is_kw(p, "or")) {
		*out = l;
		return 0;
	}
	tally_expr *e = sql_expr_new(p->a, N_OR, cur(p)->cpos);
	exprlist lst = {0};
	el_push(p, &lst, l);
	while (accept_kw(p, "or")) {
		tally_expr *r = NULL;
		if (parse_and(p, &r))
			return -1;
		el_push(p, &lst, r);
	}
	e->nargs = lst.n;
	e->args = lst.v;
	if (fin(p, e))
		return -1;
	*out = e;
	return 0;
}

static int parse_expr(parser *p, tally_expr **out)
{
	if (++p->depth > SQL_MAX_DEPTH || stack_too_deep(p))
		return depth_error(p->err);
	int rc = parse_or(p, out);
	p->depth--;
	return rc;
}

/* b_expr of PostgreSQL: an expression without boolean operators (BETWEEN bounds). */
static int parse_bexpr(parser *p, tally_expr **out)
{
	if (++p->depth > SQL_MAX_DEPTH)
		return depth_error(p->err);
	int rc = parse_other(p, out);
	p->depth--;
	return rc;
}

/* ---- SELECT ------------------------------------------------------------------------------------
 */

static bool ends_select(parser *p)
{
	sql_tok *t = cur(p);
	return t->kind == TK_EOF || t->kind == TK_SEMI || t->kind == TK_RPAREN;
}

static int parse_select_body(parser *p, tally_select_ast **out)
{
	tally_select_ast *q = tally_arena_alloc(p->a, sizeof *q);
	memset(q, 0, sizeof *q);
	q->pos = cur(p)->cpos;
	if (expect_kw(p, "select"))
		return -1;
	if (is_kw(p, "distinct")) {
		q->distinct_pos = cur(p)->cpos;
		adv(p);
		q->distinct = true;
		if (is_kw(p, "on"))
			return not_supported(p, cur(p)->cpos, "SELECT DISTINCT ON", NULL);
	} else {
		accept_kw(p, "all");
	}
	/* target list */
	int cap = 0;
	if (!(ends_select(p) || is_kw(p, "from") || is_kw(p, "where") || is_kw(p, "group") ||
	      is_kw(p, "order") || is_kw(p, "limit") || is_kw(p, "having"))) {
		for (;;) {
			if (q->ntargets == cap) {
				int nc = cap ? cap * 2 : 8;
				sql_target *nt = tally_arena_alloc(p->a, sizeof *nt * (size_t)nc);
				if (q->ntargets)
					memcpy(nt, q->targets, sizeof *nt * (size_t)q->ntargets);
				q->targets = nt;
				cap = nc;
			}
			sql_target *tg = &q->targets[q->ntargets];
			memset(tg, 0, sizeof *tg);
			tg->pos = cur(p)->cpos;
			if (is_op(p, "*")) {
				tg->e = sql_expr_new(p->a, N_STAR, cur(p)->cpos);
				adv(p);
			} else {
				if (parse_expr(p, &tg->e))
					return -1;
				if (accept_kw(p, "as")) {
					if (parse_label(p, &tg->alias))
						return -1;
				} else if (cur(p)->kind == TK_IDENT &&
					   (cur(p)->quoted || !is_reserved(cur(p)->str))) {
					tg->alias = cur(p)->str;
					adv(p);
				}
			}
			q->ntargets++;
			if (!accept(p, TK_COMMA))
				break;
		}
	}
	if (is_kw(p, "into"))
		return not_supported(p, cur(p)->cpos, "SELECT INTO", NULL);
	if (accept_kw(p, "from")) {
		q->from_pos = cur(p)->cpos;
		if (cur(p)->kind == TK_LPAREN)
			return not_supported(p, cur(p)->cpos, "subqueries in FROM", NULL);
		if (is_kw(p, "only") || is_kw(p, "lateral"))
			return not_supported(p, cur(p)->cpos, upper_dup(p, cur(p)->str), NULL);
		const char *a1, *a2 = NULL;
		if (parse_ident(p, &a1))
			return -1;
		if (accept(p, TK_DOT)) {
			if (parse_ident(p, &a2))
				return -1;
		}
		if (cur(p)->kind == TK_LPAREN)
			return not_supported(p, cur(p)->cpos, "functions in FROM", NULL);
		if (a2 && strcmp(a1, "public") != 0) {
			size_t n = strlen(a1) + strlen(a2) + 2;
			char *s = tally_arena_alloc(p->a, n);
			snprintf(s, n, "%s.%s", a1, a2);
			q->from = s;
		} else {
			q->from = a2 ? a2 : a1;
		}
		if (accept_kw(p, "as")) {
			if (parse_ident(p, &q->from_alias))
				return -1;
		} else if (cur(p)->kind == TK_IDENT &&
			   (cur(p)->quoted || (!is_reserved(cur(p)->str) &&
					       strcmp(cur(p)->str, "tablesample") != 0))) {
			q->from_alias = cur(p)->str;
			adv(p);
		}
		if (cur(p)->kind == TK_LPAREN)
			return not_supported(p, cur(p)->cpos, "column aliases in FROM", NULL);
		if (cur(p)->kind == TK_COMMA || is_kw(p, "join") || is_kw(p, "inner") ||
		    is_kw(p, "left") || is_kw(p, "right") || is_kw(p, "full") ||
		    is_kw(p, "cross") || is_kw(p, "natural"))
			return not_supported(p, cur(p)->cpos, "joins", NULL);
	}
	if (accept_kw(p, "where")) {
		if (parse_expr(p, &q->where))
			return -1;
	}
	if (is_kw(p, "group")) {
		adv(p);
		if (expect_kw(p, "by"))
			return -1;
		accept_kw(p, "all");
		if (is_kw(p, "rollup") || is_kw(p, "cube") || is_kw(p, "grouping"))
			return not_supported(p, cur(p)->cpos, "grouping sets", NULL);
		exprlist l = {0};
		for (;;) {
			tally_expr *e = NULL;
			if (parse_expr(p, &e))
				return -1;
			el_push(p, &l, e);
			if (!accept(p, TK_COMMA))
				break;
		}
		q->ngroup = l.n;
		q->group = l.v;
	}
	if (is_kw(p, "having")) {
		q->having_pos = cur(p)->cpos;
		adv(p);
		if (parse_expr(p, &q->having))
			return -1;
	}
	if (is_kw(p, "window"))
		return not_supported(p, cur(p)->cpos, "WINDOW", NULL);
	if (is_kw(p, "union") || is_kw(p, "intersect") || is_kw(p, "except"))
		return not_supported(p, cur(p)->cpos, upper_dup(p, cur(p)->str), NULL);
	if (is_kw(p, "order")) {
		q->sort_pos = cur(p)->cpos;
		adv(p);
		if (expect_kw(p, "by"))
			return -1;
		int scap = 0;
		for (;;) {
			if (q->nsort == scap) {
				int nc = scap ? scap * 2 : 4;
				sql_sortby *ns = tally_arena_alloc(p->a, sizeof *ns * (size_t)nc);
				if (q->nsort)
					memcpy(ns, q->sort, sizeof *ns * (size_t)q->nsort);
				q->sort = ns;
				scap = nc;
			}
			sql_sortby *sb = &q->sort[q->nsort];
			memset(sb, 0, sizeof *sb);
			if (parse_expr(p, &sb->e))
				return -1;
			if (accept_kw(p, "desc"))
				sb->desc = true;
			else if (!accept_kw(p, "asc") && is_kw(p, "using"))
				return not_supported(p, cur(p)->cpos, "ORDER BY USING", NULL);
			if (accept_kw(p, "nulls")) {
				if (accept_kw(p, "first"))
					sb->nulls = 1;
				else if (accept_kw(p, "last"))
					sb->nulls = 2;
				else
					return syntax_error(p);
			}
			q->nsort++;
			if (!accept(p, TK_COMMA))
				break;
		}
	}
	for (;;) {
		if (is_kw(p, "limit")) {
			if (q->limit)
				goto dup_limit;
			q->limit_pos = cur(p)->cpos;
			int pos = cur(p)->cpos;
			adv(p);
			if (is_kw(p, "all")) {
				q->limit = mk_const(p, cur(p)->cpos, tally_null(TALLY_T_INT8));
				adv(p);
			} else if (parse_expr(p, &q->limit)) {
				return -1;
			}
			if (cur(p)->kind == TK_COMMA) {
				tally_err_set(p->err, TALLY_SQLSTATE_SYNTAX,
					      "LIMIT #,# syntax is not supported");
				tally_err_hint(p->err, "Use separate LIMIT and OFFSET clauses.");
				return sql_err_pos(p->err, pos);
			}
			continue;
		}
		if (is_kw(p, "offset")) {
			if (q->offset)
				goto dup_limit;
			if (!q->limit_pos)
				q->limit_pos = cur(p)->cpos;
			adv(p);
			if (parse_expr(p, &q->offset))
				return -1;
			if (!accept_kw(p, "rows"))
				accept_kw(p, "row");
			continue;
		}
		if (is_kw(p, "fetch"))
			return not_supported(p, cur(p)->cpos, "FETCH FIRST", "Use LIMIT.");
		break;
	}
	if (is_kw(p, "for"))
		return not_supported(p, cur(p)->cpos, "SELECT FOR UPDATE/SHARE", NULL);
	*out = q;
	return 0;
dup_limit:
	tally_err_set(p->err, TALLY_SQLSTATE_SYNTAX, "multiple %s clauses not allowed",
		      is_kw(p, "limit") ? "LIMIT" : "OFFSET");
	return sql_err_pos(p->err, cur(p)->cpos);
}

/* ---- DDL ---------------------------------------------------------------------------------------
 */

static int parse_coldefs(parser *p, tally_stmt *st)
{
	if (expect(p, TK_LPAREN))
		return -1;
	tally_column *cols = tally_arena_alloc(p->a, sizeof *cols * TALLY_MAX_COLUMNS);
	int n = 0;
	if (cur(p)->kind == TK_RPAREN)
		return not_supported(p, cur(p)->cpos, "streams without columns", NULL);
	for (;;) {
		if (is_kw(p, "primary") || is_kw(p, "constraint") || is_kw(p, "unique") ||
		    is_kw(p, "check") || is_kw(p, "foreign") || is_kw(p, "exclude") ||
		    is_kw(p, "like"))
			return not_supported(p, cur(p)->cpos, "table constraints on streams", NULL);
		int npos = cur(p)->cpos;
		const char *name = NULL;
		if (parse_ident(p, &name))
			return -1;
		tally_type ty;
		const char *tn;
		int tpos;
		if (parse_typename(p, &ty, &tn, &tpos))
			return -1;
		if (ty == TALLY_T_NUMERIC) {
			tally_err_set(p->err, TALLY_SQLSTATE_FEATURE_NOT_SUPPORTED,
				      "type numeric is not supported by tally");
			tally_err_hint(p->err, "Use bigint or double precision.");
			return sql_err_pos(p->err, tpos);
		}
		if (cur(p)->kind == TK_IDENT && !is_kw(p, "server")) {
			if (is_kw(p, "collate"))
				return not_supported(p, cur(p)->cpos, "COLLATE", NULL);
			return not_supported(p, cur(p)->cpos, "column constraints on streams",
					     NULL);
		}
		bool dup = strcmp(name, "arrival_timestamp") == 0;
		for (int i = 0; i < n && !dup; i++)
			dup = strcmp(cols[i].name, name) == 0;
		if (dup) {
			tally_err_set(p->err, TALLY_SQLSTATE_DUPLICATE_COLUMN,
				      "column \"%s\" specified more than once", name);
			if (strcmp(name, "arrival_timestamp") == 0)
				tally_err_detail(p->err, "Every stream has an implicit column "
							 "arrival_timestamp.");
			return sql_err_pos(p->err, npos);
		}
		if (n >= TALLY_MAX_COLUMNS - 1) {
			tally_err_set(p->err, TALLY_SQLSTATE_TOO_MANY_COLUMNS,
				      "streams can have at most %d columns", TALLY_MAX_COLUMNS - 1);
			return sql_err_pos(p->err, npos);
		}
		tally_strlcpy(cols[n].name, name, TALLY_NAME_MAX);
		cols[n].type = ty;
		n++;
		if (accept(p, TK_COMMA))
			continue;
		break;
	}
	if (expect(p, TK_RPAREN))
		return -1;
	st->u.create_stream.ncols = n;
	st->u.create_stream.cols = cols;
	return 0;
}

static bool parse_if_not_exists(parser *p, int *rc)
{
	*rc = 0;
	if (is_kw(p, "if")) {
		adv(p);
		if (expect_kw(p, "not") || expect_kw(p, "exists"))
			*rc = -1;
		return true;
	}
	return false;
}

static int parse_create_stream(parser *p, tally_stmt *st, bool foreign)
{
	int rc;
	st->kind = TALLY_STMT_CREATE_STREAM;
	st->u.create_stream.foreign_table = foreign;
	st->u.create_stream.if_not_exists = parse_if_not_exists(p, &rc);
	if (rc || parse_objname(p, st->u.create_stream.name, TALLY_NAME_MAX, NULL) ||
	    parse_coldefs(p, st))
		return -1;
	if (foreign) {
		int pos = cur(p)->cpos;
		if (expect_kw(p, "server"))
			return -1;
		const char *srv;
		if (parse_ident(p, &srv))
			return -1;
		if (strcmp(srv, "pipelinedb") != 0) {
			tally_err_set(p->err, TALLY_SQLSTATE_FEATURE_NOT_SUPPORTED,
				      "CREATE FOREIGN TABLE is not supported by tally");
			tally_err_hint(p->err, "Streams are created with CREATE STREAM or CREATE "
					       "FOREIGN TABLE ... SERVER pipelinedb.");
			return sql_err_pos(p->err, pos);
		}
		if (is_kw(p, "options"))
			return not_supported(p, cur(p)->cpos, "OPTIONS", NULL);
	}
	return 0;
}

/* WITH (name = value, ...) of a view. */
static int parse_view_options(parser *p, tally_stmt *st, bool *materialize)
{
	if (expect(p, TK_LPAREN))
		return -1;
	for (;;) {
		int pos = cur(p)->cpos;
		const char *name = NULL;
		if (parse_label(p, &name))
			return -1;
		const char *val = NULL;
		sql_tok *vt = NULL;
		if (is_op(p, "=")) {
			adv(p);
			vt = cur(p);
			if (vt->kind == TK_IDENT || vt->kind == TK_STRING || vt->kind == TK_INT ||
			    vt->kind == TK_FLOAT) {
				val = vt->str;
				adv(p);
			} else if (is_op(p, "-") && (peek_at(p, 1)->kind == TK_INT)) {
				adv(p);
				size_t n = strlen(cur(p)->str) + 2;
				char *s = tally_arena_alloc(p->a, n);
				snprintf(s, n, "-%s", cur(p)->str);
				val = s;
				adv(p);
			} else {
				return syntax_error(p);
			}
		}
		struct {
			const char *name;
			int *dst;
			int lo, hi;
		} ints[] = {
		    {"num_shards", &st->u.create_view.num_shards, 1, 1024},
		    {"shard_factor", &st->u.create_view.shard_factor, 1, 100},
		    {"num_replicas", &st->u.create_view.num_replicas, 0, 15},
		};
		bool known = false;
		for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
			if (strcmp(name, ints[i].name) != 0)
				continue;
			known = true;
			char *end = NULL;
			errno = 0;
			long v = val ? strtol(val, &end, 10) : 0;
			if (!val || !*val || *end || errno) {
				tally_err_set(p->err, TALLY_SQLSTATE_INVALID_PARAMETER,
					      "invalid value for integer option \"%s\": %s", name,
					      val ? val : "true");
				return sql_err_pos(p->err, pos);
			}
			if (v < ints[i].lo || v > ints[i].hi) {
				tally_err_set(p->err, TALLY_SQLSTATE_INVALID_PARAMETER,
					      "value %s out of bounds for option \"%s\"", val,
					      name);
				tally_err_detail(p->err,
						 "Valid values are between \"%d\" and \"%d\".",
						 ints[i].lo, ints[i].hi);
				return sql_err_pos(p->err, pos);
			}
			*ints[i].dst = (int)v;
		}
		if (strcmp(name, "sharding_policy") == 0) {
			known = true;
			if (val && strcasecmp(val, "read_optimized") == 0) {
				st->u.create_view.sharding_policy = TALLY_POLICY_READ_OPTIMIZED;
			} else if (val && strcasecmp(val, "write_optimized") == 0) {
				st->u.create_view.sharding_policy = TALLY_POLICY_WRITE_OPTIMIZED;
			} else {
				tally_err_set(
				    p->err, TALLY_SQLSTATE_INVALID_PARAMETER,
				    "invalid value for enum option \"sharding_policy\": %s",
				    val ? val : "true");
				tally_err_detail(p->err, "Valid values are \"read_optimized\" and "
							 "\"write_optimized\".");
				return sql_err_pos(p->err, pos);
			}
		} else if (strcmp(name, "replication") == 0) {
			known = true;
			if (val && strcasecmp(val, "async") == 0) {
				st->u.create_view.replication = TALLY_REPL_ASYNC;
			} else if (val && strcasecmp(val, "sync") == 0) {
				st->u.create_view.replication = TALLY_REPL_SYNC;
			} else if (val && strcasecmp(val, "quorum") == 0) {
				st->u.create_view.replication = TALLY_REPL_QUORUM;
			} else {
				tally_err_set(p->err, TALLY_SQLSTATE_INVALID_PARAMETER,
					      "invalid value for parameter \"replication\": \"%s\"",
					      val ? val : "true");
				tally_err_hint(
				    p->err, "Valid values are \"async\", \"sync\" and \"quorum\".");
				return sql_err_pos(p->err, pos);
			}
		} else if (strcmp(name, "action") == 0) {
			known = true;
			if (!val || strcasecmp(val, "materialize") != 0) {
				tally_err_set(p->err, TALLY_SQLSTATE_INVALID_PARAMETER,
					      "invalid value for enum option \"action\": %s",
					      val ? val : "true");
				tally_err_detail(p->err, "Valid value is \"materialize\".");
				return sql_err_pos(p->err, pos);
			}
			*materialize = true;
		}
		if (!known) {
			tally_err_set(p->err, TALLY_SQLSTATE_INVALID_PARAMETER,
				      "unrecognized parameter \"%s\"", name);
			return sql_err_pos(p->err, pos);
		}
		if (accept(p, TK_COMMA))
			continue;
		break;
	}
	return expect(p, TK_RPAREN);
}

static int parse_create_view(parser *p, tally_stmt *st, bool continuous, int create_pos)
{
	int rc;
	st->kind = TALLY_STMT_CREATE_VIEW;
	st->u.create_view.num_shards = -1;
	st->u.create_view.shard_factor = -1;
	st->u.create_view.num_replicas = -1;
	st->u.create_view.sharding_policy = -1;
	st->u.create_view.replication = -1;
	st->u.create_view.if_not_exists = parse_if_not_exists(p, &rc);
	if (rc || parse_objname(p, st->u.create_view.name, TALLY_NAME_MAX, NULL))
		return -1;
	if (cur(p)->kind == TK_LPAREN)
		return not_supported(p, cur(p)->cpos, "column names in CREATE VIEW",
				     "Name the output columns with AS in the query.");
	bool materialize = false;
	bool with = false;
	if (accept_kw(p, "with")) {
		with = true;
		if (parse_view_options(p, st, &materialize))
			return -1;
	}
	if (!continuous && !materialize)
		return not_supported(p, create_pos, "CREATE VIEW",
				     with ? "Add action = materialize to WITH (...) to create a "
					    "continuous view."
					  : "Use CREATE CONTINUOUS VIEW, or CREATE VIEW ... WITH "
					    "(action = materialize).");
	if (expect_kw(p, "as"))
		return -1;
	if (!is_kw(p, "select"))
		return syntax_error(p);
	int qstart = cur(p)->off;
	tally_select_ast *q;
	if (parse_select_body(p, &q))
		return -1;
	int qend = p->t[p->i > 0 ? p->i - 1 : 0].end;
	st->u.create_view.query_text =
	    tally_arena_strndup(p->a, p->sql + qstart, (size_t)(qend - qstart));
	st->u.create_view.query = q;
	if (!q->from) {
		tally_err_set(p->err, TALLY_SQLSTATE_INVALID_DEFINITION,
			      "continuous views must read from a stream");
		tally_err_hint(p->err, "Add FROM <stream> to the query.");
		return sql_err_pos(p->err, q->pos);
	}
	st->u.create_view.stream = q->from;
	return 0;
}

static int parse_create(parser *p, tally_stmt *st)
{
	int pos = cur(p)->cpos;
	adv(p); /* CREATE */
	if (accept_kw(p, "stream"))
		return parse_create_stream(p, st, false);
	if (is_kw(p, "foreign") && tok_kw(peek_at(p, 1), "table")) {
		p->i += 2;
		return parse_create_stream(p, st, true);
	}
	if (is_kw(p, "continuous") && tok_kw(peek_at(p, 1), "view")) {
		p->i += 2;
		return parse_create_view(p, st, true, pos);
	}
	if (accept_kw(p, "view"))
		return parse_create_view(p, st, false, pos);
	if (is_kw(p, "or") && tok_kw(peek_at(p, 1), "replace"))
		return not_supported(p, pos, "CREATE OR REPLACE", NULL);
	if (is_kw(p, "table") ||
	    ((is_kw(p, "temp") || is_kw(p, "temporary") || is_kw(p, "unlogged")) &&
	     tok_kw(peek_at(p, 1), "table")))
		return not_supported(p, pos, "CREATE TABLE",
				     "Use CREATE STREAM for event schemas and CREATE CONTINUOUS "
				     "VIEW for aggregates.");
	if (cur(p)->kind == TK_IDENT && !cur(p)->quoted) {
		char what[96];
		snprintf(what, sizeof what, "CREATE %s", upper_dup(p, cur(p)->str));
		if ((is_kw(p, "materialized") || is_kw(p, "unique")) &&
		    peek_at(p, 1)->kind == TK_IDENT)
			snprintf(what, sizeof what, "CREATE %s %s", upper_dup(p, cur(p)->str),
				 upper_dup(p, peek_at(p, 1)->str));
		return not_supported(p, pos, what, NULL);
	}
	return syntax_error(p);
}

static int parse_drop(parser *p, tally_stmt *st)
{
	int pos = cur(p)->cpos;
	adv(p); /* DROP */
	if (accept_kw(p, "stream")) {
		st->kind = TALLY_STMT_DROP_STREAM;
	} else if (is_kw(p, "foreign") && tok_kw(peek_at(p, 1), "table")) {
		p->i += 2;
		st->kind = TALLY_STMT_DROP_STREAM;
	} else if (is_kw(p, "continuous") && tok_kw(peek_at(p, 1), "view")) {
		p->i += 2;
		st->kind = TALLY_STMT_DROP_VIEW;
	} else if (accept_kw(p, "view")) {
		st->kind = TALLY_STMT_DROP_VIEW;
	} else if (cur(p)->kind == TK_IDENT && !cur(p)->quoted) {
		char what[96];
		snprintf(what, sizeof what, "DROP %s", upper_dup(p, cur(p)->str));
		return not_supported(p, pos, what, NULL);
	} else {
		return syntax_error(p);
	}
	if (is_kw(p, "if")) {
		adv(p);
		if (expect_kw(p, "exists"))
			return -1;
		st->u.drop.if_exists = true;
	}
	if (parse_objname(p, st->u.drop.name, TALLY_NAME_MAX, NULL))
		return -1;
	if (cur(p)->kind == TK_COMMA)
		return not_supported(p, cur(p)->cpos, "DROP of several objects", NULL);
	if (accept_kw(p, "cascade"))
		st->u.drop.cascade = true;
	else
		accept_kw(p, "restrict");
	return 0;
}

/* ---- INSERT ------------------------------------------------------------------------------------
 */

static int parse_namelist(parser *p, int *n, char (**out)[TALLY_NAME_MAX], int **poss)
{
	/* at '(' */
	adv(p);
	int cap = 8, k = 0;
	char(*v)[TALLY_NAME_MAX] = tally_arena_alloc(p->a, TALLY_NAME_MAX * (size_t)cap);
	int *pv = tally_arena_alloc(p->a, sizeof(int) * (size_t)cap);
	for (;;) {
		if (k == cap) {
			char(*nv)[TALLY_NAME_MAX] =
			    tally_arena_alloc(p->a, TALLY_NAME_MAX * (size_t)cap * 2);
			int *np = tally_arena_alloc(p->a, sizeof(int) * (size_t)cap * 2);
			memcpy(nv, v, TALLY_NAME_MAX * (size_t)k);
			memcpy(np, pv, sizeof(int) * (size_t)k);
			v = nv;
			pv = np;
			cap *= 2;
		}
		pv[k] = cur(p)->cpos;
		const char *name = NULL;
		if (parse_ident(p, &name))
			return -1;
		tally_strlcpy(v[k], name, TALLY_NAME_MAX);
		k++;
		if (cur(p)->kind == TK_DOT || cur(p)->kind == TK_LBRACKET)
			return not_supported(p, cur(p)->cpos, "subfield or element assignment",
					     NULL);
		if (!accept(p, TK_COMMA))
			break;
	}
	if (expect(p, TK_RPAREN))
		return -1;
	if (k > TALLY_MAX_COLUMNS) {
		tally_err_set(p->err, TALLY_SQLSTATE_TOO_MANY_COLUMNS, "too many columns");
		return -1;
	}
	*n = k;
	*out = v;
	if (poss)
		*poss = pv;
	return 0;
}

static int parse_insert(parser *p, tally_stmt *st)
{
	int pos = cur(p)->cpos;
	adv(p); /* INSERT */
	if (expect_kw(p, "into"))
		return -1;
	st->kind = TALLY_STMT_INSERT;
	if (parse_objname(p, st->u.insert.stream, TALLY_NAME_MAX, NULL))
		return -1;
	if (is_kw(p, "as"))
		return not_supported(p, cur(p)->cpos, "INSERT with a table alias", NULL);
	int *colpos = NULL;
	if (cur(p)->kind == TK_LPAREN && !tok_kw(peek_at(p, 1), "select") &&
	    !tok_kw(peek_at(p, 1), "values")) {
		if (parse_namelist(p, &st->u.insert.ncols, &st->u.insert.cols, &colpos))
			return -1;
	}
	if (is_kw(p, "select") || is_kw(p, "with") || cur(p)->kind == TK_LPAREN)
		return not_supported(p, pos, "INSERT ... SELECT", "Use INSERT ... VALUES or COPY.");
	if (is_kw(p, "default"))
		return not_supported(p, pos, "INSERT ... DEFAULT VALUES", NULL);
	if (is_kw(p, "overriding"))
		return not_supported(p, cur(p)->cpos, "OVERRIDING", NULL);
	if (expect_kw(p, "values"))
		return -1;
	exprlist all = {0};
	int nrows = 0, nvalues = -1;
	for (;;) {
		int rowpos = cur(p)->cpos;
		if (expect(p, TK_LPAREN))
			return -1;
		int k = 0;
		for (;;) {
			tally_expr *e = NULL;
			if (is_kw(p, "default")) {
				e = sql_expr_new(p->a, N_DEFAULT, cur(p)->cpos);
				adv(p);
			} else if (parse_expr(p, &e)) {
				return -1;
			}
			el_push(p, &all, e);
			k++;
			if (!accept(p, TK_COMMA))
				break;
		}
		if (expect(p, TK_RPAREN))
			return -1;
		if (nvalues < 0) {
			nvalues = k;
		} else if (k != nvalues) {
			tally_err_set(p->err, TALLY_SQLSTATE_SYNTAX,
				      "VALUES lists must all be the same length");
			return sql_err_pos(p->err, rowpos);
		}
		nrows++;
		if (!accept(p, TK_COMMA))
			break;
	}
	if (is_kw(p, "on"))
		return not_supported(p, cur(p)->cpos, "ON CONFLICT", NULL);
	if (is_kw(p, "returning"))
		return not_supported(p, cur(p)->cpos, "RETURNING", NULL);
	if (st->u.insert.ncols > 0) {
		if (nvalues > st->u.insert.ncols) {
			tally_err_set(p->err, TALLY_SQLSTATE_SYNTAX,
				      "INSERT has more expressions than target columns");
			return sql_err_pos(p->err, all.v[st->u.insert.ncols]->pos);
		}
		if (nvalues < st->u.insert.ncols) {
			tally_err_set(p->err, TALLY_SQLSTATE_SYNTAX,
				      "INSERT has more target columns than expressions");
			return sql_err_pos(p->err, colpos[nvalues]);
		}
	}
	st->u.insert.nrows = nrows;
	st->u.insert.nvalues = nvalues;
	st->u.insert.values = all.v;
	return 0;
}

/* ---- COPY --------------------------------------------------------------------------------------
 */

typedef struct copyopts {
	int format;
	const char *delim, *null, *quote, *escape;
	int header; /* -1 unset */
	int fpos, dpos, npos, qpos, epos, hpos;
} copyopts;

static int copy_redundant(parser *p, int pos)
{
	tally_err_set(p->err, TALLY_SQLSTATE_SYNTAX, "conflicting or redundant options");
	return sql_err_pos(p->err, pos);
}

static int copy_string_arg(parser *p, const char **out)
{
	accept_kw(p, "as");
	if (cur(p)->kind != TK_STRING)
		return syntax_error(p);
	*out = cur(p)->str;
	adv(p);
	return 0;
}

static int copy_bool(parser *p, int *out)
{
	/* optional boolean: true/false/on/off/1/0 */
	sql_tok *t = cur(p);
	if (t->kind == TK_IDENT || t->kind == TK_STRING) {
		const char *s = t->str;
		if (!strcasecmp(s, "true") || !strcasecmp(s, "on")) {
			*out = 1;
			adv(p);
			return 0;
		}
		if (!strcasecmp(s, "false") || !strcasecmp(s, "off")) {
			*out = 0;
			adv(p);
			return 0;
		}
		if (!strcasecmp(s, "match"))
			return not_supported(p, t->cpos, "HEADER MATCH", NULL);
		tally_err_set(p->err, TALLY_SQLSTATE_SYNTAX,
			      "header requires a Boolean value or \"match\"");
		return sql_err_pos(p->err, t->cpos);
	}
	if (t->kind == TK_INT && (strcmp(t->str, "0") == 0 || strcmp(t->str, "1") == 0)) {
		*out = t->str[0] == '1';
		adv(p);
		return 0;
	}
	*out = 1;
	return 0;
}

static int parse_copy(parser *p, tally_stmt *st)
{
	int pos = cur(p)->cpos;
	adv(p); /* COPY */
	st->kind = TALLY_STMT_COPY;
	if (cur(p)->kind == TK_LPAREN)
		return not_supported(p, pos, "COPY (query) TO", NULL);
	if (parse_objname(p, st->u.copy.stream, TALLY_NAME_MAX, NULL))
		return -1;
	if (cur(p)->kind == TK_LPAREN &&
	    parse_namelist(p, &st->u.copy.ncols, &st->u.copy.cols, NULL))
		return -1;
	if (is_kw(p, "to"))
		return not_supported(p, pos, "COPY TO", NULL);
	if (expect_kw(p, "from"))
		return -1;
	if (!is_kw(p, "stdin")) {
		if (cur(p)->kind == TK_STRING || is_kw(p, "program") || is_kw(p, "stdout"))
			return not_supported(p, pos, "COPY FROM a file or program",
					     "Use COPY ... FROM STDIN (psql: \\copy).");
		return syntax_error(p);
	}
	adv(p);
	copyopts o = {.format = -1, .header = -1};
	accept_kw(p, "with");
	if (cur(p)->kind == TK_LPAREN) {
		adv(p);
		for (;;) {
			int opos = cur(p)->cpos;
			const char *name = NULL;
			if (parse_label(p, &name))
				return -1;
			if (strcmp(name, "format") == 0) {
				if (o.fpos)
					return copy_redundant(p, opos);
				o.fpos = opos;
				sql_tok *t = cur(p);
				if (t->kind != TK_IDENT && t->kind != TK_STRING)
					return syntax_error(p);
				adv(p);
				if (!strcasecmp(t->str, "csv"))
					o.format = TALLY_COPY_CSV;
				else if (!strcasecmp(t->str, "text"))
					o.format = TALLY_COPY_TEXT;
				else if (!strcasecmp(t->str, "binary"))
					return not_supported(p, opos, "COPY FORMAT binary", NULL);
				else {
					tally_err_set(p->err, TALLY_SQLSTATE_INVALID_PARAMETER,
						      "COPY format \"%s\" not recognized", t->str);
					return sql_err_pos(p->err, opos);
				}
			} else if (strcmp(name, "delimiter") == 0) {
				if (o.dpos)
					return copy_redundant(p, opos);
				o.dpos = opos;
				if (copy_string_arg(p, &o.delim))
					return -1;
			} else if (strcmp(name, "null") == 0) {
				if (o.npos)
					return copy_redundant(p, opos);
				o.npos = opos;
				if (copy_string_arg(p, &o.null))
					return -1;
			} else if (strcmp(name, "quote") == 0) {
				if (o.qpos)
					return copy_redundant(p, opos);
				o.qpos = opos;
				if (copy_string_arg(p, &o.quote))
					return -1;
			} else if (strcmp(name, "escape") == 0) {
				if (o.epos)
					return copy_redundant(p, opos);
				o.epos = opos;
				if (copy_string_arg(p, &o.escape))
					return -1;
			} else if (strcmp(name, "header") == 0) {
				if (o.hpos)
					return copy_redundant(p, opos);
				o.hpos = opos;
				if (copy_bool(p, &o.header))
					return -1;
			} else if (strcmp(name, "encoding") == 0) {
				if (cur(p)->kind != TK_STRING)
					return syntax_error(p);
				const char *enc = cur(p)->str;
				if (strcasecmp(enc, "utf8") && strcasecmp(enc, "utf-8") &&
				    strcasecmp(enc, "sql_ascii"))
					return not_supported(p, opos,
							     "COPY ENCODING other than UTF8", NULL);
				adv(p);
			} else if (strcmp(name, "freeze") == 0) {
				int dummy;
				if (copy_bool(p, &dummy))
					return -1;
			} else if (!strcmp(name, "force_quote") ||
				   !strcmp(name, "force_not_null") || !strcmp(name, "force_null")) {
				return not_supported(p, opos, upper_dup(p, name), NULL);
			} else {
				tally_err_set(p->err, TALLY_SQLSTATE_SYNTAX,
					      "option \"%s\" not recognized", name);
				return sql_err_pos(p->err, opos);
			}
			if (accept(p, TK_COMMA))
				continue;
			break;
		}
		if (expect(p, TK_RPAREN))
			return -1;
	} else {
		/* PostgreSQL's old syntax: [BINARY] [DELIMITER [AS] 'x'] [NULL [AS] 'x']
		 * [CSV [HEADER] [QUOTE [AS] 'x'] [ESCAPE [AS] 'x']] in any order */
		for (;;) {
			int opos = cur(p)->cpos;
			if (accept_kw(p, "binary")) {
				return not_supported(p, opos, "COPY FORMAT binary", NULL);
			} else if (accept_kw(p, "delimiter")) {
				if (o.dpos)
					return copy_redundant(p, opos);
				o.dpos = opos;
				if (copy_string_arg(p, &o.delim))
					return -1;
			} else if (accept_kw(p, "null")) {
				if (o.npos)
					return copy_redundant(p, opos);
				o.npos = opos;
				if (copy_string_arg(p, &o.null))
					return -1;
			} else if (accept_kw(p, "csv")) {
				if (o.fpos)
					return copy_redundant(p, opos);
				o.fpos = opos;
				o.format = TALLY_COPY_CSV;
			} else if (accept_kw(p, "header")) {
				if (o.hpos)
					return copy_redundant(p, opos);
				o.hpos = opos;
				o.header = 1;
			} else if (accept_kw(p, "quote")) {
				if (o.qpos)
					return copy_redundant(p, opos);
				o.qpos = opos;
				if (copy_string_arg(p, &o.quote))
					return -1;
			} else if (accept_kw(p, "escape")) {
				if (o.epos)
					return copy_redundant(p, opos);
				o.epos = opos;
				if (copy_string_arg(p, &o.escape))
					return -1;
			} else if (is_kw(p, "force")) {
				return not_supported(p, opos, "COPY FORCE options", NULL);
			} else {
				break;
			}
		}
	}
	if (is_kw(p, "where"))
		return not_supported(p, cur(p)->cpos, "COPY ... WHERE", NULL);
	/* validation, as PostgreSQL's ProcessCopyOptions */
	bool csv = o.format == TALLY_COPY_CSV;
	st->u.copy.format = csv ? TALLY_COPY_CSV : TALLY_COPY_TEXT;
	const char *emsg = NULL;
	const char *fsqlstate = TALLY_SQLSTATE_FEATURE_NOT_SUPPORTED;
	if (o.delim && strlen(o.delim) != 1)
		emsg = "COPY delimiter must be a single one-byte character";
	else if (o.delim && (o.delim[0] == '\n' || o.delim[0] == '\r'))
		emsg = "COPY delimiter cannot be newline or carriage return",
		fsqlstate = TALLY_SQLSTATE_INVALID_PARAMETER;
	else if (o.null && (strchr(o.null, '\n') || strchr(o.null, '\r')))
		emsg = "COPY null representation cannot use newline or carriage return",
		fsqlstate = TALLY_SQLSTATE_INVALID_PARAMETER;
	else if (!csv && o.delim && strchr("\\.abcdefghijklmnopqrstuvwxyz0123456789", o.delim[0]))
		emsg = "COPY delimiter cannot be \"\\\"",
		fsqlstate = TALLY_SQLSTATE_INVALID_PARAMETER;
	else if (!csv && o.quote)
		emsg = "COPY quote available only in CSV mode";
	else if (csv && o.quote && strlen(o.quote) != 1)
		emsg = "COPY quote must be a single one-byte character";
	else if (!csv && o.escape)
		emsg = "COPY escape available only in CSV mode";
	else if (csv && o.escape && strlen(o.escape) != 1)
		emsg = "COPY escape must be a single one-byte character";
	else if (csv && o.delim && o.quote && o.delim[0] == o.quote[0])
		emsg = "COPY delimiter and quote must be different",
		fsqlstate = TALLY_SQLSTATE_INVALID_PARAMETER;
	else if (csv && o.delim && !o.quote && o.delim[0] == '"')
		emsg = "COPY delimiter and quote must be different",
		fsqlstate = TALLY_SQLSTATE_INVALID_PARAMETER;
	else if (o.null && o.delim && strchr(o.null, o.delim[0]))
		emsg = "COPY delimiter must not appear in the NULL specification",
		fsqlstate = TALLY_SQLSTATE_INVALID_PARAMETER;
	if (emsg) {
		if (!strcmp(emsg, "COPY delimiter cannot be \"\\\"") && o.delim)
			tally_err_set(p->err, fsqlstate, "COPY delimiter cannot be \"%s\"",
				      o.delim);
		else
			tally_err_set(p->err, fsqlstate, "%s", emsg);
		return -1;
	}
	st->u.copy.delimiter = o.delim ? o.delim[0] : (csv ? ',' : '\t');
	st->u.copy.null_string = o.null ? o.null : (csv ? "" : "\\N");
	st->u.copy.header = o.header == 1;
	st->u.copy.quote = o.quote ? o.quote[0] : '"';
	st->u.copy.escape = o.escape ? o.escape[0] : st->u.copy.quote;
	return 0;
}

/* ---- SET / SHOW / RESET ------------------------------------------------------------------------
 */

static int parse_setting_name(parser *p, tally_stmt *st)
{
	const char *a1 = NULL;
	if (parse_label(p, &a1))
		return -1;
	char buf[160];
	snprintf(buf, sizeof buf, "%s", a1);
	while (accept(p, TK_DOT)) {
		const char *a2 = NULL;
		if (parse_label(p, &a2))
			return -1;
		size_t l = strlen(buf);
		snprintf(buf + l, sizeof buf - l, ".%s", a2);
	}
	tally_strlcpy(st->u.set.name, buf, sizeof st->u.set.name);
	return 0;
}

static int parse_set(parser *p, tally_stmt *st)
{
	adv(p); /* SET */
	st->kind = TALLY_STMT_SET;
	if (accept_kw(p, "local"))
		st->u.set.local = true;
	else if (is_kw(p, "session") && !tok_kw(peek_at(p, 1), "authorization") &&
		 !tok_kw(peek_at(p, 1), "characteristics"))
		adv(p);
	if (is_kw(p, "time") && tok_kw(peek_at(p, 1), "zone")) {
		p->i += 2;
		tally_strlcpy(st->u.set.name, "timezone", sizeof st->u.set.name);
		if (accept_kw(p, "local") || accept_kw(p, "default"))
			return 0;
		sql_tok *t = cur(p);
		if (t->kind == TK_STRING || t->kind == TK_IDENT || t->kind == TK_INT ||
		    t->kind == TK_FLOAT) {
			if (t->kind == TK_IDENT && is_kw(p, "interval"))
				return not_supported(p, t->cpos, "SET TIME ZONE INTERVAL", NULL);
			st->u.set.value = t->str;
			adv(p);
			return 0;
		}
		if (is_op(p, "-") &&
		    (peek_at(p, 1)->kind == TK_INT || peek_at(p, 1)->kind == TK_FLOAT)) {
			adv(p);
			size_t n = strlen(cur(p)->str) + 2;
			char *s = tally_arena_alloc(p->a, n);
			snprintf(s, n, "-%s", cur(p)->str);
			st->u.set.value = s;
			adv(p);
			return 0;
		}
		return syntax_error(p);
	}
	if (is_kw(p, "names")) {
		adv(p);
		tally_strlcpy(st->u.set.name, "client_encoding", sizeof st->u.set.name);
		if (accept_kw(p, "default"))
			return 0;
		if (cur(p)->kind != TK_STRING && cur(p)->kind != TK_IDENT)
			return syntax_error(p);
		st->u.set.value = cur(p)->str;
		adv(p);
		return 0;
	}
	if (is_kw(p, "transaction") || is_kw(p, "session") || is_kw(p, "role") ||
	    is_kw(p, "constraints")) {
		char what[64];
		snprintf(what, sizeof what, "SET %s", upper_dup(p, cur(p)->str));
		return not_supported(p, cur(p)->cpos, what, NULL);
	}
	if (parse_setting_name(p, st))
		return -1;
	if (!accept_kw(p, "to") && !is_op(p, "="))
		return syntax_error(p);
	if (is_op(p, "="))
		adv(p);
	if (accept_kw(p, "default"))
		return 0;
	tally_buf b = {0};
	int nvals = 0;
	for (;;) {
		sql_tok *t = cur(p);
		char tmp[TALLY_NAME_MAX + 2];
		const char *v = NULL;
		size_t vl = 0;
		if (t->kind == TK_STRING || t->kind == TK_IDENT || t->kind == TK_INT ||
		    t->kind == TK_FLOAT) {
			v = t->str;
			vl = t->len;
			adv(p);
		} else if ((is_op(p, "-") || is_op(p, "+")) &&
			   (peek_at(p, 1)->kind == TK_INT || peek_at(p, 1)->kind == TK_FLOAT)) {
			snprintf(tmp, sizeof tmp, "%s%s", is_op(p, "-") ? "-" : "",
				 peek_at(p, 1)->str);
			v = tmp;
			vl = strlen(tmp);
			p->i += 2;
		} else {
			tally_buf_free(&b);
			return syntax_error(p);
		}
		if (nvals++)
			tally_buf_append(&b, ", ", 2);
		tally_buf_append(&b, v, vl);
		if (!accept(p, TK_COMMA))
			break;
	}
	st->u.set.value = tally_arena_strndup(p->a, b.data ? (const char *)b.data : "", b.len);
	tally_buf_free(&b);
	return 0;
}

static int parse_show_reset(parser *p, tally_stmt *st, bool show)
{
	adv(p);
	st->kind = show ? TALLY_STMT_SHOW : TALLY_STMT_RESET;
	if (accept_kw(p, "all")) {
		st->u.set.all = true;
		return 0;
	}
	if (is_kw(p, "time") && tok_kw(peek_at(p, 1), "zone")) {
		p->i += 2;
		tally_strlcpy(st->u.set.name, "timezone", sizeof st->u.set.name);
		return 0;
	}
	if (show && is_kw(p, "transaction") && tok_kw(peek_at(p, 1), "isolation")) {
		p->i += 2;
		if (expect_kw(p, "level"))
			return -1;
		tally_strlcpy(st->u.set.name, "transaction_isolation", sizeof st->u.set.name);
		return 0;
	}
	if (is_kw(p, "session") && tok_kw(peek_at(p, 1), "authorization")) {
		p->i += 2;
		tally_strlcpy(st->u.set.name, "session_authorization", sizeof st->u.set.name);
		return 0;
	}
	return parse_setting_name(p, st);
}

/* ---- transactions ------------------------------------------------------------------------------
 */

static int parse_txn_modes(parser *p)
{
	for (;;) {
		if (accept_kw(p, "isolation")) {
			if (expect_kw(p, "level"))
				return -1;
			if (accept_kw(p, "serializable"))
				;
			else if (accept_kw(p, "repeatable")) {
				if (expect_kw(p, "read"))
					return -1;
			} else if (accept_kw(p, "read")) {
				if (!accept_kw(p, "committed") && !accept_kw(p, "uncommitted"))
					return syntax_error(p);
			} else
				return syntax_error(p);
		} else if (accept_kw(p, "read")) {
			if (!accept_kw(p, "only") && !accept_kw(p, "write"))
				return syntax_error(p);
		} else if (accept_kw(p, "not")) {
			if (expect_kw(p, "deferrable"))
				return -1;
		} else if (accept_kw(p, "deferrable")) {
			;
		} else {
			return 0;
		}
		accept(p, TK_COMMA);
	}
}

/* ---- statements --------------------------------------------------------------------------------
 */

/* ---- SELECT pipeline_cluster.remove_node('w2') -------------------------------------------------
 *
 * Not a query but a cluster command spelled as PipelineDB spells it: recognised only as the
 * whole statement, with one string literal, and sent to the coordinator like DDL. */

static bool is_remove_node(parser *p)
{
	const sql_tok *s = peek_at(p, 1), *d = peek_at(p, 2), *f = peek_at(p, 3);
	return s->kind == TK_IDENT && strcmp(s->str, "pipeline_cluster") == 0 &&
	       d->kind == TK_DOT && f->kind == TK_IDENT && strcmp(f->str, "remove_node") == 0 &&
	       peek_at(p, 4)->kind == TK_LPAREN;
}

/* The PostgreSQL type name an argument would resolve to, for "function f(...) does not
 * exist": literals have theirs, a quoted string is "unknown". */
static const char *remove_node_argtype(const tally_expr *e)
{
	if (e->kind == N_CONST)
		return e->val.isnull || e->val.type == TALLY_T_UNKNOWN
			   ? "unknown"
			   : tally_type_name(e->val.type);
	if (e->kind == N_CAST)
		return tally_type_name(e->cast_to);
	return "unknown";
}

static int parse_remove_node(parser *p, tally_stmt *st)
{
	int pos = peek_at(p, 1)->cpos;
	for (int k = 0; k < 4; k++)
		adv(p); /* SELECT pipeline_cluster . remove_node */
	tally_expr *f = sql_expr_new(p->a, N_FUNC, pos);
	f->name = "remove_node";
	if (parse_func_args(p, f))
		return -1;
	if (cur(p)->kind != TK_SEMI && cur(p)->kind != TK_EOF) {
		tally_err_set(p->err, TALLY_SQLSTATE_FEATURE_NOT_SUPPORTED,
			      "pipeline_cluster.remove_node() must be called alone");
		tally_err_hint(p->err,
			       "Run it as SELECT pipeline_cluster.remove_node('<node name>').");
		return sql_err_pos(p->err, cur(p)->cpos);
	}
	const tally_expr *arg = f->nargs == 1 ? f->args[0] : NULL;
	/* 'w2' and 'w2'::text name the node; NULL and other types do not. */
	const tally_expr *lit = arg;
	if (lit && lit->kind == N_CAST && (lit->cast_to == TALLY_T_TEXT) && lit->nargs == 1)
		lit = lit->args[0];
	bool typed_ok =
	    lit && lit->kind == N_CONST &&
	    (lit->val.isnull || lit->val.type == TALLY_T_UNKNOWN || lit->val.type == TALLY_T_TEXT);
	if (!f->star && f->nargs == 1 && !f->distinct && arg->kind != N_CONST &&
	    arg->kind != N_CAST) {
		tally_err_set(p->err, TALLY_SQLSTATE_INVALID_PARAMETER,
			      "the argument of pipeline_cluster.remove_node() must be a string "
			      "literal");
		tally_err_hint(p->err, "Name the node as written in pipeline_cluster.nodes, e.g. "
				       "SELECT pipeline_cluster.remove_node('w2').");
		return sql_err_pos(p->err, arg->pos ? arg->pos : pos);
	}
	if (f->star || f->distinct || f->nargs != 1 || !typed_ok) {
		tally_buf b = {0};
		for (int i = 0; !f->star && i < f->nargs; i++)
			tally_buf_printf(&b, "%s%s", i ? ", " : "",
					 remove_node_argtype(f->args[i]));
		tally_err_set(p->err, TALLY_SQLSTATE_UNDEFINED_FUNCTION,
			      "function pipeline_cluster.remove_node(%.*s) does not exist",
			      (int)b.len, b.data ? (const char *)b.data : "");
		tally_buf_free(&b);
		tally_err_hint(p->err, "pipeline_cluster.remove_node takes one argument, the name "
				       "of the node as a string: "
				       "SELECT pipeline_cluster.remove_node('w2').");
		return sql_err_pos(p->err, pos);
	}
	if (lit->val.isnull) {
		tally_err_set(p->err, TALLY_SQLSTATE_INVALID_PARAMETER,
			      "node name must not be null");
		return sql_err_pos(p->err, lit->pos ? lit->pos : pos);
	}
	const char *name = lit->val.u.s.p;
	uint32_t len = lit->val.u.s.len;
	if (len == 0 || memchr(name, 0, len)) {
		tally_err_set(p->err, TALLY_SQLSTATE_INVALID_PARAMETER,
			      "invalid node name: \"%.*s\"", (int)(len > 200 ? 200 : len), name);
		return sql_err_pos(p->err, lit->pos ? lit->pos : pos);
	}
	if (len >= TALLY_NAME_MAX) {
		tally_err_set(p->err, TALLY_SQLSTATE_INVALID_PARAMETER,
			      "node name \"%.*s...\" is too long", TALLY_NAME_MAX - 1, name);
		tally_err_detail(p->err, "Node names have at most %d bytes.", TALLY_NAME_MAX - 1);
		return sql_err_pos(p->err, lit->pos ? lit->pos : pos);
	}
	st->kind = TALLY_STMT_REMOVE_NODE;
	memcpy(st->u.remove_node.name, name, len);
	st->u.remove_node.name[len] = 0;
	return 0;
}

static const char *const unsupported_stmts[] = {
    "update",	 "delete",   "alter",	 "truncate", "grant",	"revoke",     "vacuum",
    "analyze",	 "analyse",  "explain",	 "prepare",  "execute", "deallocate", "listen",
    "notify",	 "unlisten", "lock",	 "discard",  "do",	"call",	      "cluster",
    "reindex",	 "comment",  "security", "refresh",  "import",	"merge",      "values",
    "table",	 "fetch",    "declare",	 "close",    "move",	"checkpoint", "load",
    "savepoint", "release",  "reassign", "with",     "copy",	NULL};

static int parse_stmt(parser *p, tally_stmt *st)
{
	sql_tok *t = cur(p);
	int pos = t->cpos;
	if (t->kind == TK_LPAREN) {
		/* (SELECT ...) */
		int depth = 0;
		while (cur(p)->kind == TK_LPAREN) {
			adv(p);
			if (++depth > SQL_MAX_DEPTH)
				return depth_error(p->err);
		}
		if (!is_kw(p, "select"))
			return syntax_error(p);
		tally_select_ast *q;
		if (parse_select_body(p, &q))
			return -1;
		while (depth--)
			if (expect(p, TK_RPAREN))
				return -1;
		st->kind = TALLY_STMT_SELECT;
		st->u.select.query = q;
		st->u.select.from = q->from;
		return 0;
	}
	if (t->kind != TK_IDENT || t->quoted)
		return syntax_error(p);
	const char *w = t->str;
	if (strcmp(w, "select") == 0) {
		if (is_remove_node(p))
			return parse_remove_node(p, st);
		tally_select_ast *q;
		if (parse_select_body(p, &q))
			return -1;
		st->kind = TALLY_STMT_SELECT;
		st->u.select.query = q;
		st->u.select.from = q->from;
		return 0;
	}
	if (strcmp(w, "create") == 0)
		return parse_create(p, st);
	if (strcmp(w, "drop") == 0)
		return parse_drop(p, st);
	if (strcmp(w, "insert") == 0)
		return parse_insert(p, st);
	if (strcmp(w, "copy") == 0)
		return parse_copy(p, st);
	if (strcmp(w, "set") == 0)
		return parse_set(p, st);
	if (strcmp(w, "show") == 0)
		return parse_show_reset(p, st, true);
	if (strcmp(w, "reset") == 0)
		return parse_show_reset(p, st, false);
	if (strcmp(w, "begin") == 0 || strcmp(w, "start") == 0) {
		adv(p);
		st->kind = TALLY_STMT_BEGIN;
		if (w[0] == 's') {
			if (expect_kw(p, "transaction"))
				return -1;
		} else if (!accept_kw(p, "work")) {
			accept_kw(p, "transaction");
		}
		return parse_txn_modes(p);
	}
	if (strcmp(w, "commit") == 0 || strcmp(w, "end") == 0 || strcmp(w, "rollback") == 0 ||
	    strcmp(w, "abort") == 0) {
		adv(p);
		st->kind = (w[0] == 'c' || w[0] == 'e') ? TALLY_STMT_COMMIT : TALLY_STMT_ROLLBACK;
		if (w[0] == 'c' && is_kw(p, "prepared"))
			return not_supported(p, pos, "COMMIT PREPARED", NULL);
		if (w[0] == 'r' && is_kw(p, "prepared"))
			return not_supported(p, pos, "ROLLBACK PREPARED", NULL);
		if (!accept_kw(p, "work"))
			accept_kw(p, "transaction");
		if (w[0] == 'r' && is_kw(p, "to"))
			return not_supported(p, pos, "ROLLBACK TO SAVEPOINT", NULL);
		if (accept_kw(p, "and")) {
			accept_kw(p, "no");
			if (expect_kw(p, "chain"))
				return -1;
		}
		return 0;
	}
	for (int i = 0; unsupported_stmts[i]; i++) {
		if (strcmp(unsupported_stmts[i], w) == 0) {
			char what[96];
			if ((strcmp(w, "alter") == 0) && peek_at(p, 1)->kind == TK_IDENT)
				snprintf(what, sizeof what, "ALTER %s",
					 upper_dup(p, peek_at(p, 1)->str));
			else
				snprintf(what, sizeof what, "%s", upper_dup(p, w));
			return not_supported(p, pos, what, NULL);
		}
	}
	return syntax_error(p);
}

int sql_err_pos(tally_err *err, int pos)
{
	if (err)
		err->position = pos;
	return -1;
}

int tally_sql_parse(const char *sql, tally_arena *a, tally_stmt **stmts, int *nstmts,
		    tally_err *err)
{
	parser p;
	memset(&p, 0, sizeof p);
	char base;
	p.stack_base = (uintptr_t)&base;
	p.sql = sql;
	p.a = a;
	p.err = err;
	if (!sql)
		sql = p.sql = "";
	if (sql_lex(sql, a, &p.t, &p.n, err))
		return -1;
	int cap = 4, n = 0;
	tally_stmt *v = tally_arena_alloc(a, sizeof *v * (size_t)cap);
	for (;;) {
		while (cur(&p)->kind == TK_SEMI)
			adv(&p);
		if (cur(&p)->kind == TK_EOF)
			break;
		if (n == cap) {
			tally_stmt *nv = tally_arena_alloc(a, sizeof *nv * (size_t)cap * 2);
			memcpy(nv, v, sizeof *v * (size_t)n);
			v = nv;
			cap *= 2;
		}
		tally_stmt *st = &v[n];
		memset(st, 0, sizeof *st);
		int first = p.i;
		st->location = cur(&p)->off;
		p.depth = 0;
		if (parse_stmt(&p, st))
			return -1;
		if (cur(&p)->kind != TK_SEMI && cur(&p)->kind != TK_EOF)
			return syntax_error(&p);
		int last = p.i > first ? p.i - 1 : first;
		st->text = tally_arena_strndup(a, sql + p.t[first].off,
					       (size_t)(p.t[last].end - p.t[first].off));
		n++;
	}
	if (n == 0) {
		memset(&v[0], 0, sizeof v[0]);
		v[0].kind = TALLY_STMT_EMPTY;
		v[0].text = "";
		n = 1;
	}
	*stmts = v;
	*nstmts = n;
	return 0;
}

const char *tally_sql_quote_ident(const char *name, char *buf, size_t bufsz)
{
	if (!buf || bufsz == 0)
		return name;
	bool safe = name[0] && ((name[0] >= 'a' && name[0] <= 'z') || name[0] == '_');
	for (const char *q = name; *q && safe; q++)
		safe =
		    (*q >= 'a' && *q <= 'z') || (*q >= '0' && *q <= '9') || *q == '_' || *q == '$';
	if (safe && !is_reserved(name)) {
		tally_strlcpy(buf, name, bufsz);
		return buf;
	}
	size_t o = 0;
	if (bufsz < 3) {
		buf[0] = 0;
		return buf;
	}
	buf[o++] = '"';
	for (const char *q = name; *q && o + 3 < bufsz; q++) {
		if (*q == '"')
			buf[o++] = '"';
		buf[o++] = *q;
	}
	buf[o++] = '"';
	buf[o] = 0;
	return buf;
}
