/*
 * sql_int.h - private structures shared by the SQL front end's files: tokens (lexer.c), the raw
 * and analyzed expression trees (parser.c, analyze.c, eval.c), the raw SELECT (parser.c) and the
 * read-query plan (analyze.c, exec.c). Nothing here is visible outside common/sql.
 */
#ifndef TALLY_SQL_INT_H
#define TALLY_SQL_INT_H

#include "tally/sql.h"

/* Deepest expression tree / parser recursion accepted (54001 beyond). */
#define SQL_MAX_DEPTH 1000

/* ---- tokens ---------------------------------------------------------------------------------- */

typedef enum sql_tok_kind {
	TK_EOF = 0,
	TK_IDENT,  /* keyword or identifier; str lower-cased unless quoted */
	TK_INT,	   /* integer literal; str = digits */
	TK_FLOAT,  /* numeric literal with '.' or exponent */
	TK_STRING, /* 'x' or E'x'; str decoded */
	TK_OP,	   /* operator: + - * / % < > = <= >= <> != || ... */
	TK_PARAM,  /* $n */
	TK_LPAREN,
	TK_RPAREN,
	TK_COMMA,
	TK_SEMI,
	TK_DOT,
	TK_DCOLON, /* :: */
	TK_COLON,
	TK_LBRACKET,
	TK_RBRACKET,
} sql_tok_kind;

typedef struct sql_tok {
	sql_tok_kind kind;
	bool quoted;	 /* "identifier" */
	const char *str; /* NUL-terminated, arena */
	size_t len;
	int off;  /* byte offset of the token's first byte in the query string */
	int end;  /* byte offset just past the token */
	int cpos; /* 1-based character position (for err->position) */
} sql_tok;

/* Lex the whole query. On error err is set (with position) and -1 returned. */
int sql_lex(const char *sql, tally_arena *a, sql_tok **toks, int *ntoks, tally_err *err);

/* ---- expressions ----------------------------------------------------------------------------- */

typedef enum sql_node_kind {
	/* raw (parser output) */
	N_CONST = 1, /* val: int4/int8/float8/unknown string/bool/null */
	N_NAME,	     /* column reference: qual (may be NULL) . name */
	N_STAR,	     /* * or qual.* (select list, count(*)) */
	N_FUNC,	     /* name(args), star, distinct */
	N_BINOP,     /* op (sql_op) */
	N_UNARY,     /* op OP_NEG / OP_PLUS */
	N_AND,	     /* n-ary */
	N_OR,	     /* n-ary */
	N_NOT,
	N_NULLTEST, /* flag: 0 IS NULL, 1 IS NOT NULL */
	N_BOOLTEST, /* flag: sql_booltest */
	N_IN,	    /* args[0] IN (args[1..]); flag 1 = NOT IN */
	N_BETWEEN,  /* args: x, lo, hi; flag 1 = NOT */
	N_LIKE,	    /* args: x, pattern; flag bit0 NOT, bit1 ILIKE */
	N_CAST,	    /* args[0]; cast_to, typname */
	N_CASE,	    /* args: [arg?] (when, then)* [else]; flag bit0 has arg, bit1 has else */
	N_DEFAULT,  /* DEFAULT in VALUES */
	/* analyzed */
	X_CONST = 64,
	X_COL,	  /* col (index into the row); name for messages */
	X_AGGREF, /* col = aggregate index (before the agg-row rewrite) */
	X_GROUPREF,
	X_ARITH, /* op */
	X_NEG,
	X_CMP, /* op */
	X_AND,
	X_OR,
	X_NOT,
	X_NULLTEST,
	X_BOOLTEST,
	X_IN,
	X_LIKE,
	X_CAST,
	X_FUNC, /* fn */
	X_CASE,
	X_CONCAT,
} sql_node_kind;

typedef enum sql_op {
	OP_NONE = 0,
	OP_ADD,
	OP_SUB,
	OP_MUL,
	OP_DIV,
	OP_MOD,
	OP_EQ,
	OP_NE,
	OP_LT,
	OP_LE,
	OP_GT,
	OP_GE,
	OP_CONCAT,
	OP_NEG,
	OP_PLUS,
} sql_op;

typedef enum sql_booltest {
	BT_TRUE = 0,
	BT_NOT_TRUE,
	BT_FALSE,
	BT_NOT_FALSE,
	BT_UNKNOWN,
	BT_NOT_UNKNOWN,
} sql_booltest;

typedef enum sql_fn {
	FN_NONE = 0,
	FN_DATE_TRUNC,
	FN_NOW,
	FN_VERSION,
	FN_CURRENT_SETTING,
	FN_ABS,
	FN_LOWER,
	FN_UPPER,
	FN_COALESCE,
	FN_LENGTH,
	FN_NULLIF,
	FN_GREATEST,
	FN_LEAST,
} sql_fn;

/* Execution context shared by a plan's expressions: statement time and settings lookup. */
typedef struct sql_ctx {
	int64_t now_us;
	tally_setting_fn setting_fn;
	void *setting_ctx;
} sql_ctx;

struct tally_expr {
	uint8_t kind;	    /* sql_node_kind */
	uint8_t op;	    /* sql_op */
	uint8_t flag;	    /* per kind */
	uint8_t fn;	    /* sql_fn */
	bool star;	    /* N_FUNC f(*) */
	bool distinct;	    /* N_FUNC f(DISTINCT ...) */
	tally_type type;    /* result type (analyzed) */
	tally_type cast_to; /* N_CAST / X_CAST target */
	int pos;	    /* 1-based character position, 0 = unknown */
	int depth;	    /* tree height */
	int col;	    /* X_COL index, X_AGGREF index */
	int nargs;
	tally_expr **args;
	tally_value val;     /* constants */
	const char *name;    /* N_NAME column, N_FUNC function, X_COL column name */
	const char *qual;    /* N_NAME qualifier, X_COL relation name */
	const char *typname; /* N_CAST: PostgreSQL's internal name of the target ("int4") */
	const sql_ctx *ctx;  /* X_FUNC now/current_setting */
};

tally_expr *sql_expr_new(tally_arena *a, int kind, int pos);
/* Structural equality of analyzed expressions. */
bool sql_expr_equal(const tally_expr *x, const tally_expr *y);

/* ---- raw SELECT --------------------------------------------------------------------------------
 */

typedef struct sql_target {
	tally_expr *e; /* N_STAR for * / qual.* */
	const char *alias;
	int pos;
} sql_target;

typedef struct sql_sortby {
	tally_expr *e;
	bool desc;
	int nulls; /* 0 default, 1 FIRST, 2 LAST */
} sql_sortby;

struct tally_select_ast {
	int pos;
	bool distinct;
	int ntargets;
	sql_target *targets;
	const char *from;	/* NULL without FROM; "schema.name" when qualified */
	const char *from_alias; /* AS alias, else NULL */
	int from_pos;
	tally_expr *where;
	int ngroup;
	tally_expr **group;
	tally_expr *having;
	int nsort;
	sql_sortby *sort;
	tally_expr *limit;  /* NULL = none; N_CONST NULL for LIMIT ALL */
	tally_expr *offset; /* NULL = none */
	/* features rejected by analysis of continuous views but parsed (positions for errors) */
	int having_pos, sort_pos, limit_pos, distinct_pos;
};

/* ---- analysis ----------------------------------------------------------------------------------
 */

typedef enum sql_clause {
	CL_SELECT = 0,
	CL_WHERE,
	CL_GROUP,
	CL_HAVING,
	CL_ORDER,
	CL_VALUES,
	CL_LIMIT,
	CL_OFFSET,
} sql_clause;

typedef struct sql_agginfo {
	tally_agg_spec spec;
	tally_expr *arg;  /* NULL for count(*) */
	tally_expr *call; /* the analyzed call, for de-duplication */
} sql_agginfo;

/* State while analyzing one query. */
typedef struct sql_an {
	tally_arena *a;
	tally_err *err;
	const tally_relation *rel; /* may be NULL */
	const char *rel_alias;	   /* qualifier that names rel (alias or relation's last name) */
	sql_ctx *ctx;
	bool allow_aggs;
	bool in_agg;
	sql_clause clause;
	int naggs, aggcap;
	sql_agginfo *aggs;
} sql_an;

/* Analyze a raw expression. */
int sql_analyze_expr(sql_an *an, const tally_expr *raw, tally_expr **out);
/* Coerce an analyzed expression to type t (unknown literals parsed, explicit cast rules). */
int sql_coerce(sql_an *an, tally_expr *e, tally_type t, tally_expr **out);
/* Cast one value: tally_value_cast plus PostgreSQL's integer <-> boolean casts. */
int sql_cast_value(const tally_value *v, tally_type t, tally_value *out, tally_arena *a,
		   tally_err *err);
/* Error with position helpers. */
int sql_err_pos(tally_err *err, int pos);

/* ---- read plan ---------------------------------------------------------------------------------
 */

typedef struct sql_sortkey {
	tally_expr *e; /* over the post row */
	bool desc;
	bool nulls_first;
} sql_sortkey;

struct tally_select_plan {
	sql_ctx *ctx;
	int in_ncols;
	tally_expr *where; /* over input rows */
	bool agg;	   /* aggregation mode: outputs over [group values, agg results] */
	int ngroups;
	tally_expr **groups;
	int naggs;
	tally_agg_spec *aggs;
	tally_expr **agg_args;
	tally_expr *having; /* over the agg row */
	int nout;
	tally_expr **outs;
	tally_column *cols;
	int nsort;
	sql_sortkey *sort;
	int64_t limit;	/* -1 = none */
	int64_t offset; /* 0 = none */
};

#endif
