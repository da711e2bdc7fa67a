/*
 * session.c - one SQL client session on any node: the pgwire query callback parses the
 * query string and runs each statement. DDL goes to the coordinator (through the role's ddl
 * hook); INSERT and COPY go through ingest; SELECT reads a continuous view (fan-out and
 * merge), a pipeline_cluster.* system view, or no relation at all; SET/SHOW/RESET work on the
 * session's settings; BEGIN/COMMIT/ROLLBACK only track the transaction status drivers expect
 * (every statement applies at its end).
 *
 * Errors are sent in exactly one place (session_error) and stop the rest of the query
 * string, as PostgreSQL does.
 */
#include "tally/copy.h"
#include "tally/node.h"

#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

typedef struct session {
	tally_node *node;
	tally_settings settings;
	char txn; /* 'I', 'T', 'E' */
	tally_arena arena;
	tally_buf out;	      /* formatting buffer for DataRows */
	tally_arena describe; /* what session_describe hands out, until its next call */
} session;

static void *session_open(void *server_ctx, tally_pg_conn *c, const char *user, const char *db,
			  tally_err *err)
{
	(void)c;
	(void)user;
	(void)db;
	(void)err;
	tally_node *n = server_ctx;
	session *s = tally_xcalloc(1, sizeof *s);
	s->node = n;
	s->settings = n->cfg.defaults;
	s->txn = 'I';
	return s;
}

static void session_close(void *p)
{
	session *s = p;
	tally_arena_free(&s->arena);
	tally_arena_free(&s->describe);
	tally_buf_free(&s->out);
	free(s);
}

static char session_txn(void *p)
{
	return ((session *)p)->txn;
}

static void session_error(session *s, tally_pg_conn *c, tally_err *e)
{
	if (!e->sqlstate[0])
		tally_err_set(e, TALLY_SQLSTATE_INTERNAL, "internal error");
	tally_pg_send_error(c, e);
	if (s->txn == 'T')
		s->txn = 'E';
}

static int setting_cb(void *ctx, const char *name, char *buf, size_t bufsz)
{
	session *s = ctx;
	int id = tally_settings_lookup(name);
	if (id < 0)
		return -1;
	tally_strlcpy(buf, s->settings.v[id], bufsz);
	return 0;
}

/* ---- results ------------------------------------------------------------------------------ */

static int send_rows(session *s, tally_pg_conn *c, int ncols, const tally_column *cols,
		     const tally_value *rows, size_t nrows)
{
	tally_pg_col *pc = tally_arena_alloc(&s->arena, (size_t)(ncols ? ncols : 1) * sizeof *pc);
	const char **vals =
	    tally_arena_alloc(&s->arena, (size_t)(ncols ? ncols : 1) * sizeof *vals);
	uint32_t *lens = tally_arena_alloc(&s->arena, (size_t)(ncols ? ncols : 1) * sizeof *lens);
	size_t *offs = tally_arena_alloc(&s->arena, (size_t)(ncols ? ncols : 1) * sizeof *offs);
	for (int i = 0; i < ncols; i++) {
		pc[i].name = cols[i].name;
		pc[i].type_oid = tally_type_oid(cols[i].type);
		pc[i].typlen = tally_type_len(cols[i].type);
	}
	if (tally_pg_send_row_description(c, ncols, pc) != 0)
		return -1;
	for (size_t r = 0; r < nrows; r++) {
		tally_buf_reset(&s->out);
		const tally_value *row = &rows[r * (size_t)ncols];
		for (int i = 0; i < ncols; i++) {
			offs[i] = s->out.len;
			if (row[i].isnull)
				continue;
			tally_value_format(&row[i], &s->out);
			lens[i] = (uint32_t)(s->out.len - offs[i]);
		}
		tally_buf_putc(&s->out, 0);
		for (int i = 0; i < ncols; i++)
			vals[i] = row[i].isnull ? NULL : (const char *)s->out.data + offs[i];
		if (tally_pg_send_data_row(c, ncols, vals, lens) != 0)
			return -1;
	}
	char tag[64];
	snprintf(tag, sizeof tag, "SELECT %zu", nrows);
	return tally_pg_send_command_complete(c, tag);
}

/* ---- statements ----------------------------------------------------------------------------- */

static int check_stream(tally_map *m, const char *name, tally_err *err)
{
	if (tally_catalog_stream(m->cat, name))
		return 0;
	if (tally_catalog_view(m->cat, name)) {
		tally_err_set(err, TALLY_SQLSTATE_WRONG_OBJECT_TYPE,
			      "\"%s\" is a continuous view, not a stream", name);
		return tally_err_hint(err, "Insert into the stream the view reads from.");
	}
	return tally_err_set(err, TALLY_SQLSTATE_UNDEFINED_TABLE, "stream \"%s\" does not exist",
			     name);
}

/* The common start of INSERT and COPY: the stream must exist; open the statement's ingest and
 * map the statement's column list onto the stream's user columns (the implicit
 * arrival_timestamp, last in the ingest relation, is not insertable). */
static int ingest_open(session *s, tally_map *m, const char *stream, int nlisted,
		       char (*listed)[TALLY_NAME_MAX], tally_ingest **g, tally_relation *user,
		       int *colmap, int *ncols, tally_err *err)
{
	if (check_stream(m, stream, err) != 0 ||
	    tally_ingest_begin(s->node, m, stream, &s->settings, g, err) != 0)
		return -1;
	*user = *tally_ingest_rel(*g);
	user->ncols--;
	return tally_sql_column_map(user, nlisted, (const char(*)[TALLY_NAME_MAX])listed, colmap,
				    ncols, err);
}

static int run_insert(session *s, tally_pg_conn *c, const tally_stmt *st, tally_err *err)
{
	tally_map *m = tally_node_map(s->node);
	tally_ingest *g = NULL;
	int rc = -1;
	int colmap[TALLY_MAX_COLUMNS];
	int ncols;
	tally_relation user;
	if (ingest_open(s, m, st->u.insert.stream, st->u.insert.ncols, st->u.insert.cols, &g, &user,
			colmap, &ncols, err) != 0)
		goto out;
	if (st->u.insert.nvalues > ncols) {
		tally_err_set(err, TALLY_SQLSTATE_SYNTAX,
			      "INSERT has more expressions than target columns");
		goto out;
	}
	tally_value *row = tally_arena_alloc(&s->arena, (size_t)(user.ncols + 1) * sizeof *row);
	tally_arena scratch = {0};
	for (int r = 0; r < st->u.insert.nrows; r++) {
		if (tally_insert_row(st, r, &user, colmap, row, &scratch, err) != 0 ||
		    tally_ingest_row(g, row, err) != 0) {
			if (!err->detail[0])
				tally_err_detail(err, "INSERT into %s, row %d", st->u.insert.stream,
						 r + 1);
			tally_arena_free(&scratch);
			goto out;
		}
		if (scratch.used > (1u << 20))
			tally_arena_reset(&scratch);
	}
	tally_arena_free(&scratch);
	if (tally_ingest_commit(g, err) != 0)
		goto out;
	char tag[64];
	snprintf(tag, sizeof tag, "INSERT 0 %d", st->u.insert.nrows);
	tally_pg_send_command_complete(c, tag);
	rc = 0;
out:
	tally_ingest_free(g);
	tally_map_put(m);
	return rc;
}

typedef struct copy_ctx {
	tally_ingest *g;
	tally_value *row;
	int ncols;
	tally_err *err;
} copy_ctx;

static int copy_row(void *p, const tally_value *row)
{
	copy_ctx *cc = p;
	memcpy(cc->row, row, (size_t)cc->ncols * sizeof *row);
	return tally_ingest_row(cc->g, cc->row, cc->err) != 0 ? -1 : 0;
}

static int run_copy(session *s, tally_pg_conn *c, const tally_stmt *st, tally_err *err)
{
	tally_map *m = tally_node_map(s->node);
	tally_ingest *g = NULL;
	tally_copy_parser *cp = NULL;
	int rc = -1;
	int colmap[TALLY_MAX_COLUMNS];
	int ncols;
	tally_relation user;
	if (ingest_open(s, m, st->u.copy.stream, st->u.copy.ncols, st->u.copy.cols, &g, &user,
			colmap, &ncols, err) != 0)
		goto out;
	const tally_relation *rel = tally_ingest_rel(g);
	if (tally_copy_parser_alloc(st, rel, colmap, ncols, &cp, err) != 0)
		goto out;
	copy_ctx cc = {.g = g, .ncols = rel->ncols, .err = err};
	cc.row = tally_arena_alloc(&s->arena, (size_t)rel->ncols * sizeof *cc.row);
	if (tally_pg_copy_in_begin(c, ncols) != 0)
		goto out;
	for (;;) {
		const char *data;
		size_t len;
		int r = tally_pg_copy_read(c, &data, &len, err);
		if (r < 0)
			goto out;
		if (r == 1)
			break;
		if (tally_copy_parser_feed(cp, data, len, copy_row, &cc, err) != 0)
			goto copy_failed;
	}
	if (tally_copy_parser_finish(cp, copy_row, &cc, err) != 0)
		goto copy_failed;
	if (tally_ingest_commit(g, err) != 0)
		goto out;
	char tag[64];
	snprintf(tag, sizeof tag, "COPY %llu", (unsigned long long)tally_copy_parser_rows(cp));
	tally_pg_send_command_complete(c, tag);
	rc = 0;
	goto out;
copy_failed:
	/* Errors of the parser carry their own context; those of the views' expressions get
	 * the line of the row being folded in. */
	if (!err->detail[0])
		tally_err_detail(err, "COPY %s, line %llu", st->u.copy.stream,
				 (unsigned long long)tally_copy_parser_line(cp));
out:
	tally_copy_parser_free(cp);
	tally_ingest_free(g);
	tally_map_put(m);
	return rc;
}

/* What a SELECT reads: a system view (its rows are built here), a continuous view (*view set;
 * its rows come from tally_read_view), or nothing (no FROM: *relp NULL). */
static int select_source(session *s, tally_map *m, const char *from, tally_arena *a,
			 tally_relation *rel, const tally_relation **relp,
			 const tally_view_rt **view, tally_value **rows, size_t *nrows,
			 tally_err *err)
{
	*relp = NULL;
	*view = NULL;
	*rows = NULL;
	*nrows = 0;
	if (!from)
		return 0;
	int sv = tally_sysview(s->node, m, from, a, rel, rows, nrows, err);
	if (sv < 0)
		return -1;
	if (sv == 1) {
		*relp = rel;
		return 0;
	}
	const tally_view_rt *v = tally_map_view(m, from);
	if (!v) {
		if (tally_catalog_stream(m->cat, from)) {
			tally_err_set(err, TALLY_SQLSTATE_WRONG_OBJECT_TYPE, "\"%s\" is a stream",
				      from);
			return tally_err_hint(
			    err, "Streams can only be read by a continuous view's FROM clause.");
		}
		return tally_err_set(err, TALLY_SQLSTATE_UNDEFINED_TABLE,
				     "relation \"%s\" does not exist", from);
	}
	if (!v->ok)
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL, "%s", v->error);
	*relp = &v->out_rel;
	*view = v;
	return 0;
}

static int run_select(session *s, tally_pg_conn *c, const tally_stmt *st, tally_err *err)
{
	tally_map *m = tally_node_map(s->node);
	int rc = -1;
	tally_relation rel;
	const tally_relation *relp;
	const tally_view_rt *v;
	tally_value *rows, *res;
	size_t nrows, nres;
	tally_select_plan *plan;
	if (select_source(s, m, st->u.select.from, &s->arena, &rel, &relp, &v, &rows, &nrows,
			  err) != 0 ||
	    tally_select_analyze(st->u.select.query, relp, &s->arena, &plan, err) != 0)
		goto out;
	if (v) {
		tally_err warning;
		tally_err_clear(&warning);
		tally_buf key = {0};
		int pinned = tally_read_pushdown_key(v, plan, &key);
		int rr =
		    tally_read_view(s->node, m, v, &s->settings, pinned ? key.data : NULL,
				    (uint32_t)key.len, &s->arena, &rows, &nrows, &warning, err);
		tally_buf_free(&key);
		if (rr != 0)
			goto out;
		if (warning.sqlstate[0])
			tally_pg_send_error(c, &warning);
	}
	tally_select_set_settings(plan, setting_cb, s);
	if (tally_select_exec(plan, rows, nrows, &s->arena, &res, &nres, err) != 0)
		goto out;
	rc = send_rows(s, c, tally_select_ncols(plan), tally_select_cols(plan), res, nres);
out:
	tally_map_put(m);
	return rc == 0 ? 0 : (tally_err_isset(err) ? -1 : -2);
}

static bool reports_status(int id)
{
	return id == TALLY_SET_CLIENT_ENCODING || id == TALLY_SET_DATESTYLE ||
	       id == TALLY_SET_TIMEZONE || id == TALLY_SET_APPLICATION_NAME;
}

static const char *status_name(int id)
{
	switch (id) {
	case TALLY_SET_DATESTYLE:
		return "DateStyle";
	case TALLY_SET_TIMEZONE:
		return "TimeZone";
	default:
		return tally_settings_name(id);
	}
}

static int run_set(session *s, tally_pg_conn *c, const tally_stmt *st, tally_err *err)
{
	if (st->kind == TALLY_STMT_RESET && st->u.set.all) {
		for (int i = 0; i < TALLY_SET_COUNT_; i++)
			tally_settings_set(&s->settings, &s->node->cfg.defaults, i, NULL, NULL);
		return tally_pg_send_command_complete(c, "RESET");
	}
	int id = tally_settings_lookup(st->u.set.name);
	if (id < 0)
		return tally_err_set(err, TALLY_SQLSTATE_UNDEFINED_OBJECT,
				     "unrecognized configuration parameter \"%s\"", st->u.set.name);
	if (tally_settings_set(&s->settings, &s->node->cfg.defaults, id,
			       st->kind == TALLY_STMT_RESET ? NULL : st->u.set.value, err) != 0)
		return -1;
	if (reports_status(id))
		tally_pg_send_parameter_status(c, status_name(id), s->settings.v[id]);
	return tally_pg_send_command_complete(c, st->kind == TALLY_STMT_RESET ? "RESET" : "SET");
}

/* SHOW's column name: the setting's name, with PostgreSQL's spelling of the two it
 * capitalises. */
static const char *show_column(int id)
{
	return id == TALLY_SET_TIMEZONE	   ? "TimeZone"
	       : id == TALLY_SET_DATESTYLE ? "DateStyle"
					   : tally_settings_name(id);
}

static int run_show(session *s, tally_pg_conn *c, const tally_stmt *st, tally_err *err)
{
	if (st->u.set.all || strcasecmp(st->u.set.name, "all") == 0) {
		tally_column cols[3];
		memset(cols, 0, sizeof cols);
		tally_strlcpy(cols[0].name, "name", TALLY_NAME_MAX);
		tally_strlcpy(cols[1].name, "setting", TALLY_NAME_MAX);
		tally_strlcpy(cols[2].name, "description", TALLY_NAME_MAX);
		cols[0].type = cols[1].type = cols[2].type = TALLY_T_TEXT;
		tally_value *rows =
		    tally_arena_alloc(&s->arena, TALLY_SET_COUNT_ * 3 * sizeof *rows);
		for (int i = 0; i < TALLY_SET_COUNT_; i++) {
			const char *nm = tally_settings_name(i), *d = tally_settings_describe(i);
			rows[i * 3] = tally_text(nm, (uint32_t)strlen(nm));
			rows[i * 3 + 1] =
			    tally_text(s->settings.v[i], (uint32_t)strlen(s->settings.v[i]));
			rows[i * 3 + 2] = tally_text(d, (uint32_t)strlen(d));
		}
		if (send_rows(s, c, 3, cols, rows, TALLY_SET_COUNT_) != 0)
			return -2;
		return 0;
	}
	int id = tally_settings_lookup(st->u.set.name);
	if (id < 0)
		return tally_err_set(err, TALLY_SQLSTATE_UNDEFINED_OBJECT,
				     "unrecognized configuration parameter \"%s\"", st->u.set.name);
	tally_column col;
	memset(&col, 0, sizeof col);
	tally_strlcpy(col.name, show_column(id), TALLY_NAME_MAX);
	col.type = TALLY_T_TEXT;
	tally_value v = tally_text(s->settings.v[id], (uint32_t)strlen(s->settings.v[id]));
	/* SHOW's tag is "SHOW", not "SELECT 1": send the pieces by hand */
	tally_pg_col pc = {.name = col.name, .type_oid = TALLY_OID_TEXT, .typlen = -1};
	const char *val = v.u.s.p;
	uint32_t len = v.u.s.len;
	if (tally_pg_send_row_description(c, 1, &pc) != 0 ||
	    tally_pg_send_data_row(c, 1, &val, &len) != 0)
		return -2;
	return tally_pg_send_command_complete(c, "SHOW");
}

/* Run st at the coordinator (the role's ddl hook) and pass its notice on; the command tag in
 * tag. */
static int ddl_call(session *s, tally_pg_conn *c, const tally_stmt *st, char *tag, size_t tagsz,
		    tally_err *err)
{
	tally_err notice;
	tally_err_clear(&notice);
	if (s->node->role.ddl(s->node, st->text, &s->settings, tag, tagsz, &notice, err) != 0)
		return -1;
	if (notice.sqlstate[0])
		tally_pg_send_error(c, &notice);
	return 0;
}

static int run_ddl(session *s, tally_pg_conn *c, const tally_stmt *st, tally_err *err)
{
	char tag[64];
	if (ddl_call(s, c, st, tag, sizeof tag, err) != 0)
		return -1;
	return tally_pg_send_command_complete(c, tag);
}

/* SELECT pipeline_cluster.remove_node('w2'): runs at the coordinator like DDL and answers as
 * the function call it is spelled as, one row with the node's name. */
static int run_remove_node(session *s, tally_pg_conn *c, const tally_stmt *st, tally_err *err)
{
	char tag[64];
	if (ddl_call(s, c, st, tag, sizeof tag, err) != 0)
		return -1;
	tally_pg_col pc = {.name = "remove_node", .type_oid = TALLY_OID_TEXT, .typlen = -1};
	const char *val = st->u.remove_node.name;
	uint32_t len = (uint32_t)strlen(val);
	if (tally_pg_send_row_description(c, 1, &pc) != 0 ||
	    tally_pg_send_data_row(c, 1, &val, &len) != 0)
		return -2;
	return tally_pg_send_command_complete(c, "SELECT 1");
}

static int run_txn(session *s, tally_pg_conn *c, const tally_stmt *st)
{
	tally_err w;
	switch (st->kind) {
	case TALLY_STMT_BEGIN:
		if (s->txn != 'I') {
			tally_err_set(&w, "25001", "there is already a transaction in progress");
			w.severity = TALLY_SEV_WARNING;
			tally_pg_send_error(c, &w);
		}
		s->txn = s->txn == 'E' ? 'E' : 'T';
		return tally_pg_send_command_complete(c, "BEGIN");
	case TALLY_STMT_COMMIT:
		if (s->txn == 'I') {
			tally_err_set(&w, "25P01", "there is no transaction in progress");
			w.severity = TALLY_SEV_WARNING;
			tally_pg_send_error(c, &w);
		}
		{
			bool failed = s->txn == 'E';
			s->txn = 'I';
			return tally_pg_send_command_complete(c, failed ? "ROLLBACK" : "COMMIT");
		}
	default:
		if (s->txn == 'I') {
			tally_err_set(&w, "25P01", "there is no transaction in progress");
			w.severity = TALLY_SEV_WARNING;
			tally_pg_send_error(c, &w);
		}
		s->txn = 'I';
		return tally_pg_send_command_complete(c, "ROLLBACK");
	}
}

static void session_query(void *p, tally_pg_conn *c, const char *sql)
{
	session *s = p;
	tally_err err;
	tally_err_clear(&err);
	tally_arena_reset(&s->arena);
	tally_stmt *stmts;
	int n;
	if (tally_sql_parse(sql, &s->arena, &stmts, &n, &err) != 0) {
		session_error(s, c, &err);
		return;
	}
	bool any = false;
	for (int i = 0; i < n; i++) {
		const tally_stmt *st = &stmts[i];
		if (st->kind == TALLY_STMT_EMPTY)
			continue;
		any = true;
		if (s->txn == 'E' && st->kind != TALLY_STMT_COMMIT &&
		    st->kind != TALLY_STMT_ROLLBACK) {
			tally_err_set(&err, TALLY_SQLSTATE_IN_FAILED_TXN,
				      "current transaction is aborted, commands ignored until end "
				      "of transaction block");
			tally_pg_send_error(c, &err);
			return;
		}
		int rc;
		tally_err_clear(&err);
		switch (st->kind) {
		case TALLY_STMT_CREATE_STREAM:
		case TALLY_STMT_DROP_STREAM:
		case TALLY_STMT_CREATE_VIEW:
		case TALLY_STMT_DROP_VIEW:
			rc = run_ddl(s, c, st, &err);
			break;
		case TALLY_STMT_REMOVE_NODE:
			rc = run_remove_node(s, c, st, &err);
			break;
		case TALLY_STMT_INSERT:
			rc = run_insert(s, c, st, &err);
			break;
		case TALLY_STMT_COPY:
			rc = run_copy(s, c, st, &err);
			break;
		case TALLY_STMT_SELECT:
			rc = run_select(s, c, st, &err);
			break;
		case TALLY_STMT_SET:
		case TALLY_STMT_RESET:
			rc = run_set(s, c, st, &err);
			break;
		case TALLY_STMT_SHOW:
			rc = run_show(s, c, st, &err);
			break;
		case TALLY_STMT_BEGIN:
		case TALLY_STMT_COMMIT:
		case TALLY_STMT_ROLLBACK:
			rc = run_txn(s, c, st);
			break;
		default:
			rc = tally_err_set(&err, TALLY_SQLSTATE_FEATURE_NOT_SUPPORTED,
					   "statement is not supported by tally");
			break;
		}
		if (rc != 0) {
			if (tally_err_isset(&err))
				session_error(s, c, &err);
			return; /* the rest of the query string is not run */
		}
	}
	if (!any)
		tally_pg_send_empty_query(c);
}

/* The statement text with every $n parameter (outside quotes and comments) replaced by NULL,
 * in arena a: enough to parse and type a prepared statement without its values. */
static char *params_as_null(const char *sql, tally_arena *a)
{
	tally_buf b = {0};
	const char *p = sql;
	while (*p) {
		if (*p == '\'' || *p == '"') { /* quoted: copy through the closing quote */
			char q = *p;
			tally_buf_putc(&b, (uint8_t)*p++);
			while (*p && *p != q)
				tally_buf_putc(&b, (uint8_t)*p++);
			if (*p)
				tally_buf_putc(&b, (uint8_t)*p++);
		} else if (p[0] == '-' && p[1] == '-') {
			while (*p && *p != '\n')
				tally_buf_putc(&b, (uint8_t)*p++);
		} else if (p[0] == '/' && p[1] == '*') {
			const char *e = strstr(p + 2, "*/");
			size_t n = e ? (size_t)(e + 2 - p) : strlen(p);
			tally_buf_append(&b, p, n);
			p += n;
		} else if (*p == '$' && p[1] >= '0' && p[1] <= '9') {
			p++;
			while (*p >= '0' && *p <= '9')
				p++;
			tally_buf_append(&b, "NULL", 4);
		} else {
			tally_buf_putc(&b, (uint8_t)*p++);
		}
	}
	char *out = tally_arena_strndup(a, b.data ? (const char *)b.data : "", b.len);
	tally_buf_free(&b);
	return out;
}

/* pgwire's describe hook: parse and analyze, never run, never touch the transaction. */
static int session_describe(void *p, const char *sql, const tally_pg_col **cols, int *ncols,
			    tally_err *err)
{
	session *s = p;
	tally_arena *a = &s->describe;
	tally_arena_reset(a);
	tally_stmt *stmts;
	int n, found = -1;
	const char *text = params_as_null(sql, a);
	if (!text)
		return tally_err_set(err, TALLY_SQLSTATE_OUT_OF_MEMORY, "out of memory");
	if (tally_sql_parse(text, a, &stmts, &n, err) != 0)
		return -1;
	for (int i = 0; i < n; i++) {
		if (stmts[i].kind == TALLY_STMT_EMPTY)
			continue;
		if (found >= 0)
			return tally_err_set(
			    err, TALLY_SQLSTATE_SYNTAX,
			    "cannot insert multiple commands into a prepared statement");
		found = i;
	}
	if (found < 0)
		return 0;
	const tally_stmt *st = &stmts[found];
	if (st->kind == TALLY_STMT_SHOW) {
		int id = tally_settings_lookup(st->u.set.name);
		bool all = st->u.set.all || strcasecmp(st->u.set.name, "all") == 0;
		if (!all && id < 0)
			return tally_err_set(err, TALLY_SQLSTATE_UNDEFINED_OBJECT,
					     "unrecognized configuration parameter \"%s\"",
					     st->u.set.name);
		static const char *const all_names[] = {"name", "setting", "description"};
		int nc = all ? 3 : 1;
		tally_pg_col *c = tally_arena_alloc(a, (size_t)nc * sizeof *c);
		for (int i = 0; i < nc; i++) {
			c[i].name = all ? all_names[i] : show_column(id);
			c[i].type_oid = TALLY_OID_TEXT;
			c[i].typlen = -1;
		}
		*cols = c;
		*ncols = nc;
		return 1;
	}
	if (st->kind == TALLY_STMT_REMOVE_NODE) {
		tally_pg_col *c = tally_arena_alloc(a, sizeof *c);
		c->name = "remove_node";
		c->type_oid = TALLY_OID_TEXT;
		c->typlen = -1;
		*cols = c;
		*ncols = 1;
		return 1;
	}
	if (st->kind != TALLY_STMT_SELECT)
		return 0;
	tally_map *m = tally_node_map(s->node);
	tally_relation rel;
	const tally_relation *relp;
	const tally_view_rt *v;
	tally_value *rows;
	size_t nrows;
	tally_select_plan *plan;
	int rc = -1;
	if (select_source(s, m, st->u.select.from, a, &rel, &relp, &v, &rows, &nrows, err) == 0 &&
	    tally_select_analyze(st->u.select.query, relp, a, &plan, err) == 0) {
		int nc = tally_select_ncols(plan);
		const tally_column *sc = tally_select_cols(plan);
		tally_pg_col *c = tally_arena_alloc(a, (size_t)(nc ? nc : 1) * sizeof *c);
		for (int i = 0; i < nc; i++) {
			c[i].name = sc[i].name;
			c[i].type_oid = tally_type_oid(sc[i].type);
			c[i].typlen = tally_type_len(sc[i].type);
		}
		*cols = c;
		*ncols = nc;
		rc = 1;
	}
	tally_map_put(m);
	return rc;
}

const tally_pg_handlers tally_session_handlers = {
    .session_open = session_open,
    .query = session_query,
    .describe = session_describe,
    .txn_status = session_txn,
    .session_close = session_close,
};
