/*
 * sql.h - the SQL front end: lexer, parser, analyzer, expression evaluator and the executor of
 * read queries over materialized rows.
 *
 * Pipeline: tally_sql_parse() turns a query string (possibly several statements separated by
 * ';') into raw statements allocated in an arena. Statements that need the catalog are then
 * analyzed against it: a continuous view's SELECT against its stream (tally_view_analyze), a
 * read query against the relation it reads (tally_select_analyze), INSERT rows against the
 * stream (tally_insert_rows). All memory comes from the caller's arena; nothing is global.
 *
 * Errors follow PostgreSQL's wording and SQLSTATEs, with `position` (1-based character offset
 * into the full query string) set for syntax errors and unknown names, e.g.
 *   syntax error at or near "FORM"                       42601
 *   syntax error at end of input                          42601
 *   column "x" does not exist                             42703
 *   relation "v" does not exist                           42P01 (raised by the caller)
 *   operator does not exist: text + integer               42883
 *   function foo(integer) does not exist                  42883
 *   integer out of range                                  22003
 *   division by zero                                      22012
 *   column "x" must appear in the GROUP BY clause or be used in an aggregate function 42803
 */
#ifndef TALLY_SQL_H
#define TALLY_SQL_H

#include "tally/agg.h"
#include "tally/types.h"

/* ---- catalog shapes the analyzer reads ------------------------------------------------------ */

typedef struct tally_column {
	char name[TALLY_NAME_MAX];
	tally_type type;
} tally_column;

#define TALLY_MAX_COLUMNS 256

/* A relation's columns as the analyzer sees them: a stream (the implicit last column
 * `arrival_timestamp timestamptz` included by the caller), a view's output, a system view. */
typedef struct tally_relation {
	const char *name;
	int ncols;
	const tally_column *cols;
} tally_relation;

/* ---- expressions ---------------------------------------------------------------------------- */

typedef struct tally_expr tally_expr; /* opaque, arena-allocated, immutable once analyzed */

tally_type tally_expr_type(const tally_expr *e);
/* Evaluate over one input row (values indexed like the relation's columns). Text results may
 * point into the row or into arena a. Errors: 22003 overflow, 22012 division by zero, cast
 * failures (22P02 ...). NULLs propagate with SQL three-valued logic. */
int tally_expr_eval(const tally_expr *e, const tally_value *row, tally_value *out, tally_arena *a,
		    tally_err *err);
/* Index of the input column if e is a bare column reference, else -1 (ingest fast path). */
int tally_expr_colref(const tally_expr *e);
/* 1 if e (boolean) is true for the row; 0 if false or NULL; -1 on error. */
int tally_expr_test(const tally_expr *e, const tally_value *row, tally_arena *a, tally_err *err);

/* ---- statements ------------------------------------------------------------------------------ */

typedef enum tally_stmt_kind {
	TALLY_STMT_EMPTY = 0, /* ";" or only comments */
	TALLY_STMT_CREATE_STREAM,
	TALLY_STMT_DROP_STREAM,
	TALLY_STMT_CREATE_VIEW,
	TALLY_STMT_DROP_VIEW,
	TALLY_STMT_INSERT,
	TALLY_STMT_COPY,
	TALLY_STMT_SELECT,
	TALLY_STMT_SET,
	TALLY_STMT_SHOW,
	TALLY_STMT_RESET,
	TALLY_STMT_BEGIN,
	TALLY_STMT_COMMIT,
	TALLY_STMT_ROLLBACK,
	TALLY_STMT_REMOVE_NODE, /* SELECT pipeline_cluster.remove_node('w2') */
} tally_stmt_kind;

typedef enum tally_sharding_policy {
	TALLY_POLICY_READ_OPTIMIZED = 0,
	TALLY_POLICY_WRITE_OPTIMIZED = 1,
} tally_sharding_policy;

typedef enum tally_copy_format { TALLY_COPY_TEXT = 0, TALLY_COPY_CSV = 1 } tally_copy_format;

typedef struct tally_select_ast tally_select_ast; /* opaque raw SELECT */

typedef struct tally_stmt {
	tally_stmt_kind kind;
	int location;	  /* byte offset of the statement in the query string */
	const char *text; /* this statement's own text, NUL-terminated, arena copy */
	union {
		struct {
			char name[TALLY_NAME_MAX];
			bool if_not_exists;
			bool foreign_table; /* spelled CREATE FOREIGN TABLE ... SERVER pipelinedb */
			int ncols;
			tally_column *cols; /* types resolved; duplicates rejected (42701) */
		} create_stream;
		struct {
			char name[TALLY_NAME_MAX];
			bool if_exists;
			bool cascade; /* DROP STREAM ... CASCADE drops its views too */
		} drop;		      /* DROP_STREAM, DROP_VIEW */
		struct {
			char name[TALLY_NAME_MAX];
			bool if_not_exists;
			/* WITH (...) options; -1 = not given. Unknown options are rejected with
			 * 22023 `unrecognized parameter "x"`; bad values likewise. action =
			 * materialize is accepted (and required for CREATE VIEW ... WITH). */
			int num_shards;		/* 1..1024 */
			int shard_factor;	/* 1..100 */
			int num_replicas;	/* 0..15 */
			int sharding_policy;	/* tally_sharding_policy or -1 */
			int replication;	/* tally_replication_mode (catalog.h) or -1; the
						   value is case-insensitive */
			const char *query_text; /* "SELECT ..." as written, NUL-terminated */
			const tally_select_ast *query;
			const char *stream; /* FROM name of the query */
		} create_view;
		struct {
			char stream[TALLY_NAME_MAX];
			int ncols; /* 0 = all stream columns in order */
			char (*cols)[TALLY_NAME_MAX];
			int nrows;
			int nvalues; /* per row, all rows equal (else 42601 "VALUES lists must all
					be the same length") */
			tally_expr **values; /* nrows * nvalues raw (unanalyzed) expressions */
		} insert;
		struct {
			char stream[TALLY_NAME_MAX];
			int ncols; /* 0 = all */
			char (*cols)[TALLY_NAME_MAX];
			tally_copy_format format;
			char delimiter;		 /* default '\t' (text) or ',' (csv) */
			const char *null_string; /* default "\\N" (text) or "" (csv) */
			bool header;		 /* csv only */
			char quote;		 /* csv, default '"' */
			char escape;		 /* csv, default = quote */
		} copy;				 /* only COPY ... FROM STDIN is accepted */
		struct {
			const tally_select_ast *query;
			const char *from; /* "v", "pipeline_cluster.shards"; NULL without FROM.
					     Lower-cased unless quoted. */
		} select;
		struct {
			char name[128]; /* lower-cased, e.g. "pipeline_cluster.primary_only" */
			const char
			    *value; /* NULL for DEFAULT / RESET; for SET x TO a, b joined ", " */
			bool local; /* SET LOCAL */
			bool all;   /* RESET ALL / SHOW ALL */
		} set;		    /* SET, SHOW, RESET */
		struct {
			char name[TALLY_NAME_MAX]; /* the string literal, non-empty */
		} remove_node;
	} u;
} tally_stmt;

/* Parse every statement in sql (NUL-terminated). On success *stmts is an arena array of
 * *nstmts statements (EMPTY ones included so that "" yields an EmptyQueryResponse).
 * Statements outside the supported surface fail with 0A000
 * `<WHAT> is not supported by tally` naming the statement.
 *
 * `SELECT pipeline_cluster.remove_node('<name>')` (the call alone, one string literal) is
 * TALLY_STMT_REMOVE_NODE. Other calls of it fail: wrong argument count or type 42883
 * `function pipeline_cluster.remove_node(integer) does not exist`; NULL, empty, too long or a
 * non-literal argument 22023; anything else in the SELECT 0A000. */
int tally_sql_parse(const char *sql, tally_arena *a, tally_stmt **stmts, int *nstmts,
		    tally_err *err);

/* ---- continuous views ---------------------------------------------------------------------- */

typedef struct tally_view_out {
	char name[TALLY_NAME_MAX];
	tally_type type;
	bool is_agg; /* else a group column */
	int index;   /* into group_exprs or aggs */
} tally_view_out;

/* A continuous view's SELECT analyzed against its stream. Expressions are over stream rows
 * (the stream's columns, then arrival_timestamp). */
typedef struct tally_view_plan {
	tally_expr *where; /* NULL = every row */
	int ngroups;
	tally_expr **group_exprs;
	tally_type *group_types;
	int naggs;
	tally_agg_spec *aggs;
	tally_expr **agg_args; /* NULL entry for count(*) */
	int nout;
	tally_view_out *out; /* the view's columns in SELECT order */
} tally_view_plan;

/* Analyze a CREATE VIEW's query against the stream it reads. Accepts group columns and
 * expressions (date_trunc, arithmetic, casts), aggregates count(*)/count/sum/avg/min/max of
 * expressions, aliases, WHERE, GROUP BY by expression, output alias or ordinal. Rejects
 * (0A000) what a continuous aggregate cannot keep: no aggregate and no GROUP BY, DISTINCT,
 * HAVING, ORDER BY, LIMIT, joins, subqueries, window functions; duplicate output names
 * (42701). */
int tally_view_analyze(const tally_select_ast *q, const tally_relation *stream, tally_arena *a,
		       tally_view_plan **out, tally_err *err);

/* ---- INSERT ---------------------------------------------------------------------------------- */

/* Map the statement's column list onto the stream: colmap[i] = stream column of the i-th
 * listed column. Unknown column 42703; duplicate 42701. *ncols is the list length (the
 * stream's column count when no list was given). colmap has TALLY_MAX_COLUMNS entries. */
int tally_sql_column_map(const tally_relation *stream, int nlisted,
			 const char (*listed)[TALLY_NAME_MAX], int *colmap, int *ncols,
			 tally_err *err);

/* Evaluate INSERT's VALUES row `r` into out[0..stream->ncols-1]: listed columns get the value
 * cast to the column type with assignment rules, others NULL. Error position names the value;
 * message for a bad value as PostgreSQL: invalid input syntax for type integer: "x". */
int tally_insert_row(const tally_stmt *st, int r, const tally_relation *stream, const int *colmap,
		     tally_value *out, tally_arena *a, tally_err *err);

/* ---- read queries ---------------------------------------------------------------------------- */

typedef struct tally_select_plan tally_select_plan; /* opaque */

/* Analyze a SELECT against the relation it reads (rel NULL when there is no FROM). Supports
 * `*`, expressions, aliases, WHERE, ORDER BY (expressions, output names, ordinals, ASC/DESC,
 * NULLS FIRST/LAST), LIMIT, OFFSET, and aggregates count/sum/avg/min/max with optional
 * GROUP BY over the relation's rows; functions version(), current_setting(name),
 * now(), date_trunc. */
int tally_select_analyze(const tally_select_ast *q, const tally_relation *rel, tally_arena *a,
			 tally_select_plan **out, tally_err *err);

/* Result columns of a plan (valid as long as the plan). */
int tally_select_ncols(const tally_select_plan *p);
const tally_column *tally_select_cols(const tally_select_plan *p);

/* Callback that answers current_setting(name) / SHOW-style lookups inside expressions: write a
 * NUL-terminated value into buf and return 0, or return -1 for an unknown setting. */
typedef int (*tally_setting_fn)(void *ctx, const char *name, char *buf, size_t bufsz);
void tally_select_set_settings(tally_select_plan *p, tally_setting_fn fn, void *ctx);

/* Execute over rows[0..nrows-1] (each rel->ncols values). Results: *out_rows points to
 * (*out_nrows * ncols) values in arena a. */
int tally_select_exec(const tally_select_plan *p, const tally_value *rows, size_t nrows,
		      tally_arena *a, tally_value **out_rows, size_t *out_nrows, tally_err *err);

/* Equality pushdown: if the WHERE is a conjunction containing `col = const` for relation
 * column `col`, store the constant (cast to the column's type) in *v and return 1; else 0. */
int tally_select_eq_const(const tally_select_plan *p, int col, tally_value *v);

/* Quote an identifier for messages/`SHOW` output if needed. */
const char *tally_sql_quote_ident(const char *name, char *buf, size_t bufsz);

#endif
