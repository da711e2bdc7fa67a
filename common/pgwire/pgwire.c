/*
 * pgwire.c - PostgreSQL frontend/backend protocol 3.0, server side.
 *
 * One accept thread polls the listening socket and a wake pipe; every accepted client gets a
 * joinable thread running a blocking state machine: startup (SSL/GSS refused with 'N', cancel
 * requests dropped, protocol 3.0 parameters parsed), then the message loop. A connection owns
 * a read buffer (messages are parsed in place, COPY data is handed out straight from it) and
 * an output buffer (result helpers build messages directly into it; it is flushed past 64 KiB,
 * before every blocking read and at ReadyForQuery).
 *
 * The extended protocol is mapped onto the handler's callbacks: Parse checks the text with
 * `describe`, Describe answers from `describe` (statement text with $n as written, or the
 * portal's bound text) without running anything, and Bind substitutes text parameters as
 * quoted literals for `query`, which runs at the first Execute. Without a row limit its output
 * is streamed (the RowDescription is kept in the portal for later Describes, not sent); with a
 * limit it is buffered in the portal (at most PG_PORTAL_MAX bytes) and handed out max_rows
 * DataRows per Execute, with PortalSuspended between. After an error the loop ignores every
 * message until Sync, as PostgreSQL does.
 *
 * Finished connection threads park themselves on a dead list and poke the wake pipe; the
 * accept thread joins them. tally_pg_server_close shuts every socket down and joins all.
 */
#include "tally/pgwire.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#ifndef TALLY_VERSION_STRING
#define TALLY_VERSION_STRING "0.1.0"
#endif

#define PG_PROTO_30 196608u
#define PG_SSL_REQUEST 80877103u
#define PG_GSSENC_REQUEST 80877104u
#define PG_CANCEL_REQUEST 80877102u

#define PG_RBUF_INIT (64u << 10)
#define PG_RBUF_KEEP (1u << 20) /* a read buffer grown past this shrinks back when empty */
#define PG_FLUSH_AT (64u << 10)
#define PG_MAX_PARAMS 65535
#define PG_STARTUP_TIMEOUT_S 60
#define PG_PORTAL_MAX (256u << 20) /* buffered output of one row-limited portal */

typedef enum pg_out_mode {
	PG_OUT_DIRECT,	/* simple query: everything goes to the client */
	PG_OUT_EXEC,	/* Execute without a row limit: streamed to the client */
	PG_OUT_CAPTURE, /* Execute with a row limit: kept in the portal's buffer */
} pg_out_mode;

typedef enum pg_desc {
	PG_DESC_NONE,	/* no Describe before the query ran */
	PG_DESC_ROWS,	/* Describe answered the RowDescription in rd */
	PG_DESC_NODATA, /* Describe answered NoData */
} pg_desc;

typedef struct pg_stmt {
	struct pg_stmt *next;
	char *name;
	char *sql;
	int nparams;
	uint32_t *types; /* nparams entries; 0 = unspecified */
} pg_stmt;

typedef struct pg_portal {
	struct pg_portal *next;
	char *name;
	char *sql;	/* final text, parameters substituted */
	bool ran;	/* the query callback has run */
	bool done;	/* every result was sent */
	bool suspended; /* an Execute stopped at its row limit (PortalSuspended sent) */
	bool t_passed;	/* described as NoData, yet the query sent rows: its T went out */
	bool empty;	/* the query was empty (EmptyQueryResponse) */
	bool overflow;	/* buffered output passed PG_PORTAL_MAX */
	pg_desc desc;
	tally_buf rd;	/* the RowDescription message answered by every Describe; empty = NoData */
	tally_buf res;	/* buffered output of a row-limited Execute */
	size_t res_off; /* next message of res to send */
	char tag[64];	/* last CommandComplete tag, for a continued or repeated Execute */
} pg_portal;

struct tally_pg_conn {
	tally_pg_server *srv;
	struct tally_pg_conn *next; /* live or dead list */
	pthread_t thread;
	int fd;
	char peer[64]; /* "host:port", host at most 45 bytes */
	void *session;
	bool dead;     /* writing failed or the peer is gone */
	bool fatal;    /* a FATAL was sent: close after the current message */
	bool too_many; /* over TALLY_PG_MAX_CONNS: refused with 53300 once startup is read */

	uint8_t *rbuf;
	size_t rcap, rstart, rend;
	/* the last message read */
	uint8_t mtype;
	const uint8_t *mdata;
	size_t mlen;

	tally_buf out;
	tally_buf qbuf; /* the current simple query's text */
	pg_out_mode mode;
	pg_portal *cap;	 /* the portal whose query is running (extended protocol) */
	bool ext_active; /* running a query for the extended protocol */
	bool err_sent;	 /* an ERROR/FATAL was sent during the current query */
	bool skip_sync;	 /* extended error: ignore messages until Sync */
	bool in_copy;

	pg_stmt *stmts;
	pg_portal *portals;
};

struct tally_pg_server {
	tally_pg_handlers h;
	void *ctx;
	int lfd;
	int wake[2];
	int port;
	pthread_t accept_thr;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	tally_pg_conn *live;
	tally_pg_conn *dead;
	int nconns;
	bool closing;
};

/* ---- output -------------------------------------------------------------------------------- */

static int out_send(tally_pg_conn *c, const uint8_t *p, size_t n)
{
	while (n > 0 && !c->dead) {
		ssize_t r = send(c->fd, p, n, MSG_NOSIGNAL);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			c->dead = true;
			break;
		}
		p += r;
		n -= (size_t)r;
	}
	return c->dead ? -1 : 0;
}

static int out_flush(tally_pg_conn *c)
{
	int rc = 0;
	if (c->out.len)
		rc = out_send(c, c->out.data, c->out.len);
	c->out.len = 0;
	if (c->out.cap > PG_RBUF_KEEP)
		tally_buf_free(&c->out);
	return rc;
}

/* Raw bytes to the client through the output buffer; big blocks bypass it. */
static int out_raw(tally_pg_conn *c, const void *p, size_t n)
{
	if (c->dead)
		return -1;
	if (n >= PG_FLUSH_AT) {
		if (out_flush(c))
			return -1;
		return out_send(c, p, n);
	}
	tally_buf_append(&c->out, p, n);
	if (c->out.len >= PG_FLUSH_AT)
		return out_flush(c);
	return 0;
}

static void build_error(tally_buf *b, const tally_err *e);

/* A row-limited portal's buffered output grew too large: it is replaced by the error. */
static void portal_overflow(tally_pg_conn *c)
{
	pg_portal *p = c->cap;
	tally_buf_free(&p->res);
	tally_err e;
	tally_err_set(&e, "54000", "result of the portal is too large");
	build_error(&p->res, &e);
	p->overflow = true;
	c->err_sent = true;
}

/* Where the next result message (about `need` bytes) goes, or NULL when it is dropped. */
static tally_buf *out_target(tally_pg_conn *c, size_t need)
{
	if (c->ext_active && c->err_sent)
		return NULL; /* the statement failed: nothing more until Sync */
	if (c->mode == PG_OUT_CAPTURE) {
		if (c->cap->res.len + need > PG_PORTAL_MAX) {
			portal_overflow(c);
			return NULL;
		}
		return &c->cap->res;
	}
	return &c->out;
}

static size_t msg_begin(tally_buf *b, uint8_t type)
{
	size_t at = b->len;
	uint8_t hdr[5] = {type, 0, 0, 0, 0};
	tally_buf_append(b, hdr, 5);
	return at;
}

static void msg_end(tally_buf *b, size_t at)
{
	tally_put_be32(b->data + at + 1, (uint32_t)(b->len - at - 1));
}

static int msg_done(tally_pg_conn *c, tally_buf *b)
{
	if (b == &c->out && c->out.len >= PG_FLUSH_AT)
		return out_flush(c);
	return 0;
}

static void put_cstr(tally_buf *b, const char *s)
{
	tally_buf_append(b, s, strlen(s) + 1);
}

/* A message built outside the result helpers (protocol replies), always to the client. */
static int send_simple(tally_pg_conn *c, uint8_t type, const void *body, size_t n)
{
	if (c->dead)
		return -1;
	size_t at = msg_begin(&c->out, type);
	if (n)
		tally_buf_append(&c->out, body, n);
	msg_end(&c->out, at);
	return msg_done(c, &c->out);
}

static const char *sev_name(tally_severity s)
{
	switch (s) {
	case TALLY_SEV_FATAL:
		return "FATAL";
	case TALLY_SEV_WARNING:
		return "WARNING";
	case TALLY_SEV_NOTICE:
		return "NOTICE";
	case TALLY_SEV_ERROR:
	default:
		return "ERROR";
	}
}

static void build_error(tally_buf *b, const tally_err *e)
{
	bool notice = e->severity == TALLY_SEV_WARNING || e->severity == TALLY_SEV_NOTICE;
	size_t at = msg_begin(b, notice ? 'N' : 'E');
	const char *sev = sev_name(e->severity);
	tally_buf_putc(b, 'S');
	put_cstr(b, sev);
	tally_buf_putc(b, 'V');
	put_cstr(b, sev);
	tally_buf_putc(b, 'C');
	put_cstr(b, e->sqlstate[0] ? e->sqlstate : TALLY_SQLSTATE_INTERNAL);
	tally_buf_putc(b, 'M');
	tally_buf_append(b, e->message, strnlen(e->message, sizeof e->message));
	tally_buf_putc(b, 0);
	if (e->detail[0]) {
		tally_buf_putc(b, 'D');
		tally_buf_append(b, e->detail, strnlen(e->detail, sizeof e->detail));
		tally_buf_putc(b, 0);
	}
	if (e->hint[0]) {
		tally_buf_putc(b, 'H');
		tally_buf_append(b, e->hint, strnlen(e->hint, sizeof e->hint));
		tally_buf_putc(b, 0);
	}
	if (e->position > 0) {
		char pos[16];
		snprintf(pos, sizeof pos, "%d", e->position);
		tally_buf_putc(b, 'P');
		put_cstr(b, pos);
	}
	tally_buf_putc(b, 0);
	msg_end(b, at);
}

/* An error raised by the protocol layer itself, straight to the client. */
static void proto_error(tally_pg_conn *c, tally_severity sev, const char *sqlstate, const char *fmt,
			...) __attribute__((format(printf, 4, 5)));
static void proto_error(tally_pg_conn *c, tally_severity sev, const char *sqlstate, const char *fmt,
			...)
{
	tally_err e;
	memset(&e, 0, sizeof e);
	tally_strlcpy(e.sqlstate, sqlstate, sizeof e.sqlstate);
	e.severity = sev;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(e.message, sizeof e.message, fmt, ap);
	va_end(ap);
	if (c->dead)
		return;
	build_error(&c->out, &e);
	if (sev == TALLY_SEV_FATAL) {
		c->fatal = true;
		out_flush(c);
	}
}

/* ---- public result helpers ---------------------------------------------------------------- */

static void build_row_description(tally_buf *b, int ncols, const tally_pg_col *cols)
{
	size_t at = msg_begin(b, 'T');
	tally_buf_put_u16(b, (uint16_t)ncols);
	for (int i = 0; i < ncols; i++) {
		uint8_t f[18];
		put_cstr(b, cols[i].name ? cols[i].name : "?column?");
		tally_put_be32(f, 0);	  /* table oid */
		tally_put_be16(f + 4, 0); /* attnum */
		tally_put_be32(f + 6, cols[i].type_oid);
		tally_put_be16(f + 10, (uint16_t)cols[i].typlen);
		tally_put_be32(f + 12, 0xFFFFFFFFu); /* typmod -1 */
		tally_put_be16(f + 16, 0);	     /* text format */
		tally_buf_append(b, f, sizeof f);
	}
	msg_end(b, at);
}

int tally_pg_send_row_description(tally_pg_conn *c, int ncols, const tally_pg_col *cols)
{
	if (c->dead)
		return -1;
	if (ncols < 0 || ncols > 65535)
		return -1;
	pg_portal *p = c->cap;
	if (p) {
		/* Execute: the client learnt the columns from Describe, or never asked (as JDBC,
		 * which describes the statement). The first RowDescription is kept for later
		 * Describes; it goes out only when Describe answered NoData, so that rows are
		 * never sent to a client that was not told their columns. */
		if (c->err_sent)
			return 0;
		bool pass = p->desc == PG_DESC_NODATA && !p->t_passed;
		if (p->rd.len == 0 && (p->desc == PG_DESC_NONE || pass))
			build_row_description(&p->rd, ncols, cols);
		if (!pass)
			return 0;
		p->t_passed = true;
		tally_buf *b = out_target(c, p->rd.len);
		if (!b)
			return 0;
		tally_buf_append(b, p->rd.data, p->rd.len);
		return msg_done(c, b);
	}
	tally_buf *b = out_target(c, 0);
	if (!b)
		return 0;
	build_row_description(b, ncols, cols);
	return msg_done(c, b);
}

int tally_pg_send_data_row(tally_pg_conn *c, int ncols, const char *const *vals,
			   const uint32_t *lens)
{
	if (c->dead)
		return -1;
	if (ncols < 0 || ncols > 65535)
		return -1;
	size_t total = 7 + 4 * (size_t)ncols;
	for (int i = 0; i < ncols; i++)
		if (vals[i])
			total += lens[i];
	if (total - 1 > UINT32_MAX)
		return -1;
	tally_buf *b = out_target(c, total);
	if (!b)
		return c->cap && c->cap->overflow ? -1 : 0;
	if (tally_buf_reserve(b, total) != 0)
		return -1;
	uint8_t *p = b->data + b->len;
	p[0] = 'D';
	tally_put_be32(p + 1, (uint32_t)(total - 1));
	tally_put_be16(p + 5, (uint16_t)ncols);
	p += 7;
	for (int i = 0; i < ncols; i++) {
		if (!vals[i]) {
			tally_put_be32(p, 0xFFFFFFFFu);
			p += 4;
			continue;
		}
		tally_put_be32(p, lens[i]);
		memcpy(p + 4, vals[i], lens[i]);
		p += 4 + lens[i];
	}
	b->len += total;
	return msg_done(c, b);
}

int tally_pg_send_command_complete(tally_pg_conn *c, const char *tag)
{
	if (c->dead)
		return -1;
	tally_buf *b = out_target(c, 0);
	if (b && c->cap)
		tally_strlcpy(c->cap->tag, tag, sizeof c->cap->tag);
	if (!b)
		return 0;
	size_t at = msg_begin(b, 'C');
	put_cstr(b, tag);
	msg_end(b, at);
	return msg_done(c, b);
}

int tally_pg_send_empty_query(tally_pg_conn *c)
{
	if (c->dead)
		return -1;
	tally_buf *b = out_target(c, 0);
	if (!b)
		return 0;
	if (c->cap)
		c->cap->empty = true;
	size_t at = msg_begin(b, 'I');
	msg_end(b, at);
	return msg_done(c, b);
}

int tally_pg_send_error(tally_pg_conn *c, const tally_err *e)
{
	if (c->dead)
		return -1;
	tally_buf *b = out_target(c, 0);
	if (!b)
		return 0;
	bool is_err = e->severity == TALLY_SEV_ERROR || e->severity == TALLY_SEV_FATAL;
	build_error(b, e);
	if (is_err) {
		c->err_sent = true;
		if (e->severity == TALLY_SEV_FATAL)
			c->fatal = true;
	}
	return msg_done(c, b);
}

int tally_pg_send_parameter_status(tally_pg_conn *c, const char *name, const char *value)
{
	if (c->dead)
		return -1;
	tally_buf *b = out_target(c, 0);
	if (!b)
		return 0;
	size_t at = msg_begin(b, 'S');
	put_cstr(b, name);
	put_cstr(b, value);
	msg_end(b, at);
	return msg_done(c, b);
}

const char *tally_pg_conn_peer(const tally_pg_conn *c)
{
	return c->peer;
}

/* ---- input --------------------------------------------------------------------------------- */

/* Make n bytes available at rbuf + rstart, reading (after a flush) as needed. */
static int rd_need(tally_pg_conn *c, size_t n)
{
	while (c->rend - c->rstart < n) {
		if (c->rstart + n > c->rcap) {
			size_t have = c->rend - c->rstart;
			if (have && c->rstart)
				memmove(c->rbuf, c->rbuf + c->rstart, have);
			c->rstart = 0;
			c->rend = have;
			if (n > c->rcap) {
				size_t cap = c->rcap ? c->rcap : PG_RBUF_INIT;
				while (cap < n)
					cap *= 2;
				uint8_t *nb = realloc(c->rbuf, cap);
				if (!nb) {
					proto_error(c, TALLY_SEV_FATAL,
						    TALLY_SQLSTATE_OUT_OF_MEMORY, "out of memory");
					return -1;
				}
				c->rbuf = nb;
				c->rcap = cap;
			}
		}
		if (out_flush(c))
			return -1;
		ssize_t r = recv(c->fd, c->rbuf + c->rend, c->rcap - c->rend, 0);
		if (r == 0)
			return -1;
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		c->rend += (size_t)r;
	}
	return 0;
}

/* Read one typed message into c->mtype/mdata/mlen (valid until the next read). */
static int read_msg(tally_pg_conn *c)
{
	if (c->rstart == c->rend) {
		c->rstart = c->rend = 0;
		if (c->rcap > PG_RBUF_KEEP) {
			free(c->rbuf);
			c->rbuf = NULL;
			c->rcap = 0;
		}
	}
	if (!c->rbuf) {
		c->rbuf = tally_xmalloc(PG_RBUF_INIT);
		c->rcap = PG_RBUF_INIT;
	}
	if (rd_need(c, 5))
		return -1;
	uint8_t *p = c->rbuf + c->rstart;
	uint32_t len = tally_be32(p + 1);
	if (len < 4 || len - 4 > TALLY_PG_MSG_MAX) {
		proto_error(c, TALLY_SEV_FATAL, TALLY_SQLSTATE_PROTOCOL, "invalid message length");
		return -1;
	}
	if (rd_need(c, (size_t)len + 1))
		return -1;
	p = c->rbuf + c->rstart;
	c->mtype = p[0];
	c->mdata = p + 5;
	c->mlen = len - 4;
	c->rstart += (size_t)len + 1;
	return 0;
}

/* A NUL-terminated string inside a message. */
static int rd_cstr(tally_rd *r, const char **s)
{
	size_t left = tally_rd_left(r);
	const uint8_t *p = r->p + r->off;
	const uint8_t *z = memchr(p, 0, left);
	if (!z) {
		r->bad = true;
		return -1;
	}
	*s = (const char *)p;
	r->off += (size_t)(z - p) + 1;
	return 0;
}

/* ---- COPY FROM STDIN ----------------------------------------------------------------------- */

int tally_pg_copy_in_begin(tally_pg_conn *c, int ncols)
{
	if (c->dead)
		return -1;
	if (ncols < 0 || ncols > 65535)
		return -1;
	if (c->ext_active) {
		tally_err e;
		tally_err_set(&e, TALLY_SQLSTATE_FEATURE_NOT_SUPPORTED,
			      "COPY FROM STDIN is not supported in the extended query protocol");
		tally_pg_send_error(c, &e);
		return -1;
	}
	size_t at = msg_begin(&c->out, 'G');
	tally_buf_putc(&c->out, 0);
	tally_buf_put_u16(&c->out, (uint16_t)ncols);
	for (int i = 0; i < ncols; i++)
		tally_buf_put_u16(&c->out, 0);
	msg_end(&c->out, at);
	c->in_copy = true;
	return out_flush(c);
}

int tally_pg_copy_read(tally_pg_conn *c, const char **data, size_t *len, tally_err *err)
{
	if (!c->in_copy) {
		tally_err_set(err, TALLY_SQLSTATE_PROTOCOL, "no COPY in progress");
		return -1;
	}
	for (;;) {
		if (c->dead || read_msg(c)) {
			c->dead = true;
			c->in_copy = false;
			tally_err_set(
			    err, TALLY_SQLSTATE_CONNECTION,
			    "unexpected EOF on client connection with an open transaction");
			return -1;
		}
		switch (c->mtype) {
		case 'd':
			*data = (const char *)c->mdata;
			*len = c->mlen;
			return 0;
		case 'c':
			c->in_copy = false;
			return 1;
		case 'f': {
			c->in_copy = false;
			const uint8_t *z = memchr(c->mdata, 0, c->mlen);
			int n = z ? (int)(z - c->mdata) : (int)(c->mlen > 256 ? 256 : c->mlen);
			tally_err_set(err, TALLY_SQLSTATE_QUERY_CANCELED,
				      "COPY from stdin failed: %.*s", n, (const char *)c->mdata);
			return -1;
		}
		case 'H':
		case 'S':
			continue;
		default:
			/* PostgreSQL fails the COPY; later CopyData/CopyDone are ignored. */
			c->in_copy = false;
			tally_err_set(err, TALLY_SQLSTATE_PROTOCOL,
				      "unexpected message type 0x%02X during COPY from stdin",
				      c->mtype);
			return -1;
		}
	}
}

/* ---- extended protocol -------------------------------------------------------------------- */

static bool ident_char(unsigned char ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
	       ch == '_' || ch >= 0x80;
}

/*
 * Walk SQL text and find $n parameter references outside literals, quoted identifiers and
 * comments. When out is set, copy the text there with $n replaced by vals[n-1] as a quoted
 * literal (NULL when vals[n-1] is NULL; references beyond nvals stay as they are). Returns the
 * highest parameter number seen, or -1 when one exceeds PG_MAX_PARAMS.
 */
static int sql_params(const char *s, tally_buf *out, int nvals, const char *const *vals,
		      const uint32_t *lens)
{
	size_t i = 0, n = strlen(s);
	int maxp = 0;
	size_t lit = 0; /* start of text not yet copied */
#define FLUSH_TO(j)                                                                                \
	do {                                                                                       \
		if (out && (j) > lit)                                                              \
			tally_buf_append(out, s + lit, (j)-lit);                                   \
		lit = (j);                                                                         \
	} while (0)
	while (i < n) {
		unsigned char ch = (unsigned char)s[i];
		if (ch == '\'') {
			bool esc = i > 0 && (s[i - 1] == 'E' || s[i - 1] == 'e') &&
				   (i < 2 || !ident_char((unsigned char)s[i - 2]));
			i++;
			while (i < n) {
				if (esc && s[i] == '\\' && i + 1 < n) {
					i += 2;
					continue;
				}
				if (s[i] == '\'') {
					if (i + 1 < n && s[i + 1] == '\'') {
						i += 2;
						continue;
					}
					break;
				}
				i++;
			}
			i++;
		} else if (ch == '"') {
			i++;
			while (i < n) {
				if (s[i] == '"') {
					if (i + 1 < n && s[i + 1] == '"') {
						i += 2;
						continue;
					}
					break;
				}
				i++;
			}
			i++;
		} else if (ch == '-' && i + 1 < n && s[i + 1] == '-') {
			while (i < n && s[i] != '\n')
				i++;
		} else if (ch == '/' && i + 1 < n && s[i + 1] == '*') {
			int depth = 1;
			i += 2;
			while (i < n && depth > 0) {
				if (s[i] == '/' && i + 1 < n && s[i + 1] == '*') {
					depth++;
					i += 2;
				} else if (s[i] == '*' && i + 1 < n && s[i + 1] == '/') {
					depth--;
					i += 2;
				} else {
					i++;
				}
			}
		} else if (ch == '$' && i + 1 < n && s[i + 1] >= '0' && s[i + 1] <= '9') {
			size_t j = i + 1;
			long num = 0;
			while (j < n && s[j] >= '0' && s[j] <= '9') {
				if (num <= PG_MAX_PARAMS)
					num = num * 10 + (s[j] - '0');
				j++;
			}
			if (num > PG_MAX_PARAMS)
				return -1;
			if (num > maxp)
				maxp = (int)num;
			if (out && num >= 1 && num <= nvals) {
				FLUSH_TO(i);
				const char *v = vals[num - 1];
				if (!v) {
					tally_buf_append(out, "NULL", 4);
				} else {
					tally_buf_putc(out, '\'');
					for (uint32_t k = 0; k < lens[num - 1]; k++) {
						if (v[k] == '\'')
							tally_buf_putc(out, '\'');
						tally_buf_putc(out, (uint8_t)v[k]);
					}
					tally_buf_putc(out, '\'');
				}
				lit = j;
			}
			i = j;
		} else if (ch == '$') {
			/* dollar quote $tag$ ... $tag$ (tag possibly empty) */
			size_t j = i + 1;
			while (j < n && ident_char((unsigned char)s[j]))
				j++;
			if (j < n && s[j] == '$') {
				size_t tl = j - i + 1, k = j + 1;
				while (k < n && !(s[k] == '$' && k + tl <= n &&
						  memcmp(s + k, s + i, tl) == 0))
					k++;
				i = k < n ? k + tl : n;
			} else {
				i++;
			}
		} else if (ident_char(ch)) {
			while (i < n && (ident_char((unsigned char)s[i]) || s[i] == '$'))
				i++;
		} else {
			i++;
		}
	}
	FLUSH_TO(n);
#undef FLUSH_TO
	if (out)
		tally_buf_putc(out, 0);
	return maxp;
}

static pg_stmt *stmt_find(tally_pg_conn *c, const char *name)
{
	for (pg_stmt *s = c->stmts; s; s = s->next)
		if (strcmp(s->name, name) == 0)
			return s;
	return NULL;
}

static pg_portal *portal_find(tally_pg_conn *c, const char *name)
{
	for (pg_portal *p = c->portals; p; p = p->next)
		if (strcmp(p->name, name) == 0)
			return p;
	return NULL;
}

static void stmt_drop(tally_pg_conn *c, const char *name)
{
	for (pg_stmt **pp = &c->stmts; *pp; pp = &(*pp)->next) {
		if (strcmp((*pp)->name, name) == 0) {
			pg_stmt *s = *pp;
			*pp = s->next;
			free(s->name);
			free(s->sql);
			free(s->types);
			free(s);
			return;
		}
	}
}

static void portal_free(pg_portal *p)
{
	free(p->name);
	free(p->sql);
	tally_buf_free(&p->rd);
	tally_buf_free(&p->res);
	free(p);
}

static void portal_drop(tally_pg_conn *c, const char *name)
{
	for (pg_portal **pp = &c->portals; *pp; pp = &(*pp)->next) {
		if (strcmp((*pp)->name, name) == 0) {
			pg_portal *p = *pp;
			*pp = p->next;
			portal_free(p);
			return;
		}
	}
}

/* A portal whose query failed is gone, as in PostgreSQL. */
static void portal_unlink(tally_pg_conn *c, pg_portal *p)
{
	for (pg_portal **pp = &c->portals; *pp; pp = &(*pp)->next) {
		if (*pp == p) {
			*pp = p->next;
			portal_free(p);
			return;
		}
	}
}

static void portals_drop_all(tally_pg_conn *c)
{
	while (c->portals) {
		pg_portal *p = c->portals;
		c->portals = p->next;
		portal_free(p);
	}
}

/* An error in an extended-protocol message: report it and skip to Sync. */
static void ext_error(tally_pg_conn *c, const char *sqlstate, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void ext_error(tally_pg_conn *c, const char *sqlstate, const char *fmt, ...)
{
	tally_err e;
	memset(&e, 0, sizeof e);
	tally_strlcpy(e.sqlstate, sqlstate, sizeof e.sqlstate);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(e.message, sizeof e.message, fmt, ap);
	va_end(ap);
	if (!c->dead)
		build_error(&c->out, &e);
	c->skip_sync = true;
}

/* The same with an error from the handler. */
static void ext_error_from(tally_pg_conn *c, tally_err *e)
{
	if (!e->sqlstate[0])
		tally_err_set(e, TALLY_SQLSTATE_INTERNAL, "could not describe the statement");
	if (e->severity != TALLY_SEV_FATAL)
		e->severity = TALLY_SEV_ERROR;
	if (!c->dead)
		build_error(&c->out, e);
	if (e->severity == TALLY_SEV_FATAL) {
		c->fatal = true;
		out_flush(c);
	}
	c->skip_sync = true;
}

/*
 * Ask the handler to describe a statement text without running it. Returns 1 with the
 * RowDescription message appended to rd (when rd is set), 0 for NoData (also when there is no
 * describe callback), -1 with err filled.
 */
static int describe_sql(tally_pg_conn *c, const char *sql, tally_buf *rd, tally_err *err)
{
	tally_pg_server *s = c->srv;
	memset(err, 0, sizeof *err);
	if (!s->h.describe)
		return 0;
	const tally_pg_col *cols = NULL;
	int ncols = 0;
	int rc = s->h.describe(c->session, sql, &cols, &ncols, err);
	if (rc < 0)
		return -1;
	if (rc == 0)
		return 0;
	if (ncols < 0 || ncols > 65535 || (ncols > 0 && !cols)) {
		tally_err_set(err, TALLY_SQLSTATE_INTERNAL, "invalid description of %d columns",
			      ncols);
		return -1;
	}
	if (rd)
		build_row_description(rd, ncols, cols);
	return 1;
}

/* Run a portal's query, streamed (exec) or into the portal's buffer (capture). Returns true
 * when it failed (an ERROR or FATAL was produced). */
static bool portal_run(tally_pg_conn *c, pg_portal *p, pg_out_mode mode)
{
	tally_pg_server *s = c->srv;
	p->ran = true;
	p->res.len = 0;
	p->res_off = 0;
	c->mode = mode;
	c->cap = p;
	c->ext_active = true;
	c->err_sent = false;
	s->h.query(c->session, c, p->sql);
	bool failed = c->err_sent;
	c->mode = PG_OUT_DIRECT;
	c->cap = NULL;
	c->ext_active = false;
	c->err_sent = false;
	return failed;
}

static void ext_parse(tally_pg_conn *c, tally_rd *r)
{
	const char *name, *sql;
	uint16_t ntypes;
	if (rd_cstr(r, &name) || rd_cstr(r, &sql) || tally_rd_u16(r, &ntypes) ||
	    tally_rd_left(r) < 4u * ntypes) {
		proto_error(c, TALLY_SEV_FATAL, TALLY_SQLSTATE_PROTOCOL, "invalid Parse message");
		return;
	}
	if (name[0] && stmt_find(c, name)) {
		ext_error(c, "42P05", "prepared statement \"%s\" already exists", name);
		return;
	}
	int maxp = sql_params(sql, NULL, 0, NULL, NULL);
	if (maxp < 0) {
		ext_error(c, "42P02", "there is no parameter $%d", PG_MAX_PARAMS + 1);
		return;
	}
	tally_err err;
	if (describe_sql(c, sql, NULL, &err) < 0) {
		ext_error_from(c, &err);
		return;
	}
	if (!name[0])
		stmt_drop(c, "");
	pg_stmt *st = tally_xcalloc(1, sizeof *st);
	st->name = tally_xstrdup(name);
	st->sql = tally_xstrdup(sql);
	st->nparams = maxp > ntypes ? maxp : ntypes;
	st->types = tally_xcalloc((size_t)st->nparams + 1, sizeof(uint32_t));
	for (int i = 0; i < ntypes; i++) {
		uint32_t oid = 0;
		tally_rd_u32(r, &oid);
		st->types[i] = oid;
	}
	st->next = c->stmts;
	c->stmts = st;
	send_simple(c, '1', NULL, 0);
}

static void ext_bind(tally_pg_conn *c, tally_rd *r)
{
	const char *pname, *sname;
	uint16_t nfmt, nparams, nres;
	if (rd_cstr(r, &pname) || rd_cstr(r, &sname) || tally_rd_u16(r, &nfmt) ||
	    tally_rd_left(r) < 2u * nfmt) {
		proto_error(c, TALLY_SEV_FATAL, TALLY_SQLSTATE_PROTOCOL, "invalid Bind message");
		return;
	}
	const uint8_t *fmts = r->p + r->off;
	r->off += 2u * nfmt;
	if (tally_rd_u16(r, &nparams)) {
		proto_error(c, TALLY_SEV_FATAL, TALLY_SQLSTATE_PROTOCOL, "invalid Bind message");
		return;
	}
	pg_stmt *st = stmt_find(c, sname);
	if (!st) {
		ext_error(c, "26000", "prepared statement \"%s\" does not exist", sname);
		return;
	}
	if (nfmt > 1 && nfmt != nparams) {
		ext_error(c, TALLY_SQLSTATE_PROTOCOL,
			  "bind message has %d parameter formats but %d parameters", nfmt, nparams);
		return;
	}
	if (nparams != st->nparams) {
		ext_error(c, TALLY_SQLSTATE_PROTOCOL,
			  "bind message supplies %d parameters, but prepared statement \"%s\" "
			  "requires %d",
			  nparams, sname, st->nparams);
		return;
	}
	for (int i = 0; i < nfmt; i++) {
		if (tally_be16(fmts + 2 * i) != 0) {
			ext_error(c, TALLY_SQLSTATE_FEATURE_NOT_SUPPORTED,
				  "binary parameter format is not supported");
			return;
		}
	}
	const char **vals = tally_xcalloc((size_t)nparams + 1, sizeof *vals);
	uint32_t *lens = tally_xcalloc((size_t)nparams + 1, sizeof *lens);
	bool ok = true;
	for (int i = 0; i < nparams && ok; i++) {
		uint32_t len;
		if (tally_rd_u32(r, &len)) {
			ok = false;
			break;
		}
		if (len == 0xFFFFFFFFu)
			continue;
		const uint8_t *v;
		if (tally_rd_bytes(r, &v, len)) {
			ok = false;
			break;
		}
		if (memchr(v, 0, len)) {
			free(vals);
			free(lens);
			ext_error(c, "22021", "invalid byte sequence for encoding \"UTF8\": 0x00");
			return;
		}
		vals[i] = (const char *)v;
		lens[i] = len;
	}
	if (ok && tally_rd_u16(r, &nres))
		ok = false;
	if (ok && tally_rd_left(r) < 2u * nres)
		ok = false;
	if (!ok) {
		free(vals);
		free(lens);
		proto_error(c, TALLY_SEV_FATAL, TALLY_SQLSTATE_PROTOCOL, "invalid Bind message");
		return;
	}
	for (int i = 0; i < nres; i++) {
		if (tally_be16(r->p + r->off + 2 * i) != 0) {
			free(vals);
			free(lens);
			ext_error(c, TALLY_SQLSTATE_FEATURE_NOT_SUPPORTED,
				  "binary result format is not supported");
			return;
		}
	}
	if (pname[0] && portal_find(c, pname)) {
		free(vals);
		free(lens);
		ext_error(c, "42P03", "portal \"%s\" already exists", pname);
		return;
	}
	tally_buf sql = {0};
	sql_params(st->sql, &sql, nparams, vals, lens);
	free(vals);
	free(lens);
	if (!pname[0])
		portal_drop(c, "");
	pg_portal *p = tally_xcalloc(1, sizeof *p);
	p->name = tally_xstrdup(pname);
	p->sql = (char *)sql.data;
	p->next = c->portals;
	c->portals = p;
	send_simple(c, '2', NULL, 0);
}

static void ext_describe(tally_pg_conn *c, tally_rd *r)
{
	uint8_t kind;
	const char *name;
	if (tally_rd_u8(r, &kind) || rd_cstr(r, &name) || (kind != 'S' && kind != 'P')) {
		proto_error(c, TALLY_SEV_FATAL, TALLY_SQLSTATE_PROTOCOL,
			    "invalid Describe message");
		return;
	}
	tally_err err;
	if (kind == 'S') {
		pg_stmt *st = stmt_find(c, name);
		if (!st) {
			ext_error(c, "26000", "prepared statement \"%s\" does not exist", name);
			return;
		}
		tally_buf rd = {0};
		int rc = describe_sql(c, st->sql, &rd, &err);
		if (rc < 0) {
			tally_buf_free(&rd);
			ext_error_from(c, &err);
			return;
		}
		size_t at = msg_begin(&c->out, 't');
		tally_buf_put_u16(&c->out, (uint16_t)st->nparams);
		for (int i = 0; i < st->nparams; i++)
			tally_buf_put_u32(&c->out, st->types[i] ? st->types[i] : TALLY_OID_TEXT);
		msg_end(&c->out, at);
		if (rc == 1)
			out_raw(c, rd.data, rd.len);
		else
			send_simple(c, 'n', NULL, 0);
		tally_buf_free(&rd);
		return;
	}
	pg_portal *p = portal_find(c, name);
	if (!p) {
		ext_error(c, "34000", "portal \"%s\" does not exist", name);
		return;
	}
	/* Before the first Execute the handler describes the bound text; after it, the answer
	 * is the RowDescription the query sent (or the earlier Describe's). */
	if (!p->ran && p->desc == PG_DESC_NONE) {
		int rc = describe_sql(c, p->sql, &p->rd, &err);
		if (rc < 0) {
			p->rd.len = 0;
			ext_error_from(c, &err);
			return;
		}
		p->desc = rc == 1 ? PG_DESC_ROWS : PG_DESC_NODATA;
	}
	if (p->rd.len)
		out_raw(c, p->rd.data, p->rd.len);
	else
		send_simple(c, 'n', NULL, 0);
}

/* A command tag with its row count (the last word, when it is a number) replaced by n. */
static void tag_with_count(char *out, size_t cap, const char *tag, uint64_t n)
{
	const char *sp = strrchr(tag, ' ');
	if (sp && sp[1] && strspn(sp + 1, "0123456789") == strlen(sp + 1)) {
		int keep = (int)(sp - tag);
		snprintf(out, cap, "%.*s %llu", keep, tag, (unsigned long long)n);
	} else {
		tally_strlcpy(out, tag, cap);
	}
}

/* Send a row-limited portal's buffered output from where the last Execute stopped: at most
 * maxrows DataRows then PortalSuspended, or the rest with the completion. */
static void portal_emit(tally_pg_conn *c, pg_portal *p, uint32_t maxrows)
{
	uint64_t sent = 0;
	while (p->res_off < p->res.len && !c->dead) {
		const uint8_t *m = p->res.data + p->res_off;
		uint8_t type = m[0];
		size_t len = 1 + (size_t)tally_be32(m + 1);
		p->res_off += len;
		if (type == 'C' && p->suspended) {
			/* as PostgreSQL: the count of the rows this Execute sent */
			char tag[64];
			tag_with_count(tag, sizeof tag, p->tag, sent);
			send_simple(c, 'C', tag, strlen(tag) + 1);
		} else {
			out_raw(c, m, len);
		}
		if (type == 'E') {
			c->skip_sync = true;
			portal_unlink(c, p);
			return;
		}
		if (type == 'D' && maxrows && ++sent == maxrows) {
			/* as PostgreSQL, even when no row is left */
			p->suspended = true;
			send_simple(c, 's', NULL, 0);
			return;
		}
	}
	p->done = true;
	p->res_off = 0;
	tally_buf_free(&p->res);
}

static void ext_execute(tally_pg_conn *c, tally_rd *r)
{
	const char *name;
	uint32_t maxrows;
	if (rd_cstr(r, &name) || tally_rd_u32(r, &maxrows)) {
		proto_error(c, TALLY_SEV_FATAL, TALLY_SQLSTATE_PROTOCOL, "invalid Execute message");
		return;
	}
	pg_portal *p = portal_find(c, name);
	if (!p) {
		ext_error(c, "34000", "portal \"%s\" does not exist", name);
		return;
	}
	if (!p->ran && maxrows == 0) {
		bool failed = portal_run(c, p, PG_OUT_EXEC);
		p->done = true;
		if (failed) {
			c->skip_sync = true;
			portal_unlink(c, p);
		}
		return;
	}
	if (!p->ran) {
		portal_run(c, p, PG_OUT_CAPTURE);
		if (c->dead)
			return;
		if (c->fatal) {
			out_raw(c, p->res.data, p->res.len);
			tally_buf_free(&p->res);
			return;
		}
	}
	if (!p->done) {
		portal_emit(c, p, maxrows);
		return;
	}
	/* Already complete: as PostgreSQL, a query says it fetched nothing more and a command
	 * cannot run twice. */
	if (p->empty) {
		send_simple(c, 'I', NULL, 0);
	} else if (p->rd.len) {
		char tag[64];
		tag_with_count(tag, sizeof tag, p->tag[0] ? p->tag : "SELECT 0", 0);
		send_simple(c, 'C', tag, strlen(tag) + 1);
	} else {
		ext_error(c, "55000", "portal \"%s\" cannot be run", p->name);
	}
}

static void ext_close(tally_pg_conn *c, tally_rd *r)
{
	uint8_t kind;
	const char *name;
	if (tally_rd_u8(r, &kind) || rd_cstr(r, &name) || (kind != 'S' && kind != 'P')) {
		proto_error(c, TALLY_SEV_FATAL, TALLY_SQLSTATE_PROTOCOL, "invalid Close message");
		return;
	}
	if (kind == 'S')
		stmt_drop(c, name);
	else
		portal_drop(c, name);
	send_simple(c, '3', NULL, 0);
}

/* ---- connection ---------------------------------------------------------------------------- */

static char txn_status(tally_pg_conn *c)
{
	tally_pg_server *s = c->srv;
	char st = s->h.txn_status ? s->h.txn_status(c->session) : 'I';
	if (st != 'I' && st != 'T' && st != 'E')
		st = 'I';
	return st;
}

static int send_ready(tally_pg_conn *c)
{
	char st = txn_status(c);
	if (st == 'I')
		portals_drop_all(c);
	send_simple(c, 'Z', &st, 1);
	return out_flush(c);
}

static void send_param(tally_pg_conn *c, const char *name, const char *value)
{
	size_t at = msg_begin(&c->out, 'S');
	put_cstr(&c->out, name);
	put_cstr(&c->out, value);
	msg_end(&c->out, at);
}

/* Startup: returns 0 when the session is open and ReadyForQuery was sent. */
static int conn_startup(tally_pg_conn *c)
{
	tally_pg_server *s = c->srv;
	for (int round = 0; round < 4; round++) {
		if (!c->rbuf) {
			c->rbuf = tally_xmalloc(PG_RBUF_INIT);
			c->rcap = PG_RBUF_INIT;
		}
		if (rd_need(c, 4))
			return -1;
		uint32_t len = tally_be32(c->rbuf + c->rstart);
		if (len < 8 || len > TALLY_PG_STARTUP_MAX) {
			proto_error(c, TALLY_SEV_FATAL, TALLY_SQLSTATE_PROTOCOL,
				    "invalid length of startup packet");
			return -1;
		}
		if (rd_need(c, len))
			return -1;
		const uint8_t *p = c->rbuf + c->rstart;
		c->rstart += len;
		uint32_t code = tally_be32(p + 4);
		if (code == PG_SSL_REQUEST || code == PG_GSSENC_REQUEST) {
			if (out_raw(c, "N", 1) || out_flush(c))
				return -1;
			continue;
		}
		if (code == PG_CANCEL_REQUEST)
			return -1;
		if ((code >> 16) != 3) {
			proto_error(
			    c, TALLY_SEV_FATAL, TALLY_SQLSTATE_FEATURE_NOT_SUPPORTED,
			    "unsupported frontend protocol %u.%u: server supports 3.0 to 3.0",
			    code >> 16, code & 0xFFFF);
			return -1;
		}
		/* key\0value\0 ... \0 */
		const char *user = NULL, *db = NULL, *app = "";
		tally_buf unknown = {0};
		int nunknown = 0;
		tally_rd r;
		tally_rd_init(&r, p + 8, len - 8);
		for (;;) {
			const char *k, *v;
			if (rd_cstr(&r, &k)) {
				tally_buf_free(&unknown);
				proto_error(c, TALLY_SEV_FATAL, TALLY_SQLSTATE_PROTOCOL,
					    "invalid startup packet layout: expected terminator as "
					    "last byte");
				return -1;
			}
			if (!k[0])
				break;
			if (rd_cstr(&r, &v)) {
				tally_buf_free(&unknown);
				proto_error(c, TALLY_SEV_FATAL, TALLY_SQLSTATE_PROTOCOL,
					    "invalid startup packet layout: expected terminator as "
					    "last byte");
				return -1;
			}
			if (strcmp(k, "user") == 0)
				user = v;
			else if (strcmp(k, "database") == 0)
				db = v;
			else if (strcmp(k, "application_name") == 0)
				app = v;
			else if (strncmp(k, "_pq_.", 5) == 0) {
				put_cstr(&unknown, k);
				nunknown++;
			}
		}
		if (!user || !user[0]) {
			tally_buf_free(&unknown);
			proto_error(c, TALLY_SEV_FATAL, "28000",
				    "no PostgreSQL user name specified in startup packet");
			return -1;
		}
		if (!db || !db[0])
			db = user;
		if ((code & 0xFFFF) != 0 || nunknown) {
			size_t at = msg_begin(&c->out, 'v');
			/* newest version supported, as PostgreSQL: 3.0 */
			tally_buf_put_u32(&c->out, PG_PROTO_30);
			tally_buf_put_u32(&c->out, (uint32_t)nunknown);
			if (unknown.len)
				tally_buf_append(&c->out, unknown.data, unknown.len);
			msg_end(&c->out, at);
		}
		tally_buf_free(&unknown);
		uint8_t auth[4] = {0, 0, 0, 0};
		if (c->too_many) {
			/* As PostgreSQL: the refusal comes after startup, so clients show it. */
			tally_err err;
			tally_err_set(&err, "53300", "sorry, too many clients already");
			err.severity = TALLY_SEV_FATAL;
			build_error(&c->out, &err);
			out_flush(c);
			return -1;
		}
		send_simple(c, 'R', auth, 4);
		if (s->h.session_open) {
			tally_err err;
			memset(&err, 0, sizeof err);
			c->session = s->h.session_open(s->ctx, c, user, db, &err);
			if (!c->session) {
				if (!err.sqlstate[0])
					tally_err_set(&err, "28000", "connection refused");
				err.severity = TALLY_SEV_FATAL;
				build_error(&c->out, &err);
				out_flush(c);
				return -1;
			}
		}
		send_param(c, "server_version", "15.0 (tally " TALLY_VERSION_STRING ")");
		send_param(c, "server_encoding", "UTF8");
		send_param(c, "client_encoding", "UTF8");
		send_param(c, "DateStyle", "ISO, MDY");
		send_param(c, "IntervalStyle", "postgres");
		send_param(c, "TimeZone", "UTC");
		send_param(c, "integer_datetimes", "on");
		send_param(c, "standard_conforming_strings", "on");
		send_param(c, "is_superuser", "on");
		send_param(c, "session_authorization", user);
		send_param(c, "application_name", app);
		uint8_t key[8];
		if (getrandom(key, sizeof key, GRND_NONBLOCK) != (ssize_t)sizeof key) {
			int64_t t = tally_mono_us();
			memcpy(key, &t, sizeof key);
		}
		key[0] &= 0x3F; /* a positive "pid" */
		send_simple(c, 'K', key, sizeof key);
		return send_ready(c);
	}
	proto_error(c, TALLY_SEV_FATAL, TALLY_SQLSTATE_PROTOCOL, "too many startup requests");
	return -1;
}

static void conn_loop(tally_pg_conn *c)
{
	tally_pg_server *s = c->srv;
	while (!c->dead && !c->fatal) {
		if (read_msg(c))
			return;
		uint8_t t = c->mtype;
		tally_rd r;
		tally_rd_init(&r, c->mdata, c->mlen);
		/* After an extended-protocol error every message up to Sync is ignored, a simple
		 * Query too (PostgreSQL's ignore_till_sync); unknown types still end the
		 * connection. */
		if (c->skip_sync && t && strchr("QPBDECHdcf", t))
			continue;
		switch (t) {
		case 'Q': {
			const char *q;
			if (rd_cstr(&r, &q)) {
				proto_error(c, TALLY_SEV_FATAL, TALLY_SQLSTATE_PROTOCOL,
					    "invalid Query message");
				return;
			}
			/* The text must outlive the read buffer, which a COPY reuses. */
			c->qbuf.len = 0;
			tally_buf_append(&c->qbuf, q, (size_t)(r.p + r.off - (const uint8_t *)q));
			const char *sql = (const char *)c->qbuf.data;
			c->mode = PG_OUT_DIRECT;
			c->err_sent = false;
			s->h.query(c->session, c, sql);
			/* The handler gave up in the middle of a COPY (its ErrorResponse is out):
			 * as PostgreSQL, ReadyForQuery follows at once and the client's remaining
			 * CopyData/CopyDone/CopyFail are ignored below. */
			c->in_copy = false;
			if (c->qbuf.cap > PG_RBUF_KEEP)
				tally_buf_free(&c->qbuf);
			if (c->dead || c->fatal)
				break;
			send_ready(c);
			break;
		}
		case 'P':
			ext_parse(c, &r);
			break;
		case 'B':
			ext_bind(c, &r);
			break;
		case 'D':
			ext_describe(c, &r);
			break;
		case 'E':
			ext_execute(c, &r);
			break;
		case 'C':
			ext_close(c, &r);
			break;
		case 'H':
			out_flush(c);
			break;
		case 'S':
			c->skip_sync = false;
			send_ready(c);
			break;
		case 'd':
		case 'c':
		case 'f':
			/* leftovers of a failed COPY: ignored, as PostgreSQL does */
			break;
		case 'X':
			return;
		default:
			proto_error(c, TALLY_SEV_FATAL, TALLY_SQLSTATE_PROTOCOL,
				    "invalid frontend message type %d", t);
			return;
		}
	}
}

static void conn_free_state(tally_pg_conn *c)
{
	while (c->stmts)
		stmt_drop(c, c->stmts->name);
	portals_drop_all(c);
	free(c->rbuf);
	c->rbuf = NULL;
	tally_buf_free(&c->out);
	tally_buf_free(&c->qbuf);
}

static void *conn_main(void *arg)
{
	tally_pg_conn *c = arg;
	tally_pg_server *s = c->srv;
	struct timeval tv = {.tv_sec = PG_STARTUP_TIMEOUT_S};
	setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	if (conn_startup(c) == 0) {
		struct timeval none = {0};
		setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof none);
		conn_loop(c);
		if (!c->dead)
			out_flush(c);
	}
	if (c->session && s->h.session_close)
		s->h.session_close(c->session);
	c->session = NULL;
	conn_free_state(c);

	/* Leave the live list before closing the socket, so close never touches a reused fd. */
	pthread_mutex_lock(&s->mu);
	for (tally_pg_conn **pp = &s->live; *pp; pp = &(*pp)->next) {
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	}
	c->next = s->dead;
	s->dead = c;
	s->nconns--;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
	close(c->fd);
	/* the server is freed only after this thread is joined */
	ssize_t w = write(s->wake[1], "r", 1);
	(void)w;
	return NULL;
}

/* ---- server -------------------------------------------------------------------------------- */

static void reap_dead(tally_pg_server *s)
{
	pthread_mutex_lock(&s->mu);
	tally_pg_conn *d = s->dead;
	s->dead = NULL;
	pthread_mutex_unlock(&s->mu);
	while (d) {
		tally_pg_conn *next = d->next;
		pthread_join(d->thread, NULL);
		free(d);
		d = next;
	}
}

static void accept_one(tally_pg_server *s)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	int fd = accept4(s->lfd, (struct sockaddr *)&ss, &sl, SOCK_CLOEXEC);
	if (fd < 0) {
		if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
			tally_log_warn("pgwire: accept failed: %s", strerror(errno));
			poll(NULL, 0, 100);
		}
		return;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	tally_pg_conn *c = tally_xcalloc(1, sizeof *c);
	c->srv = s;
	c->fd = fd;
	char host[46], serv[8];
	if (getnameinfo((struct sockaddr *)&ss, sl, host, sizeof host, serv, sizeof serv,
			NI_NUMERICHOST | NI_NUMERICSERV) == 0)
		snprintf(c->peer, sizeof c->peer, "%s:%s", host, serv);
	else
		tally_strlcpy(c->peer, "?", sizeof c->peer);

	pthread_mutex_lock(&s->mu);
	if (s->closing) {
		pthread_mutex_unlock(&s->mu);
		close(fd);
		free(c);
		return;
	}
	if (s->nconns >= TALLY_PG_MAX_CONNS) {
		/* A few threads more get to read the startup packet and hear why they are refused
		 * (c->too_many); beyond that the connection is just closed. */
		if (s->nconns >= TALLY_PG_MAX_CONNS + TALLY_PG_MAX_CONNS / 10) {
			pthread_mutex_unlock(&s->mu);
			close(fd);
			free(c);
			return;
		}
		c->too_many = true;
		tally_log_warn("pgwire: refusing a connection from %s: %d clients already", c->peer,
			       TALLY_PG_MAX_CONNS);
	}
	c->next = s->live;
	s->live = c;
	s->nconns++;
	int rc = pthread_create(&c->thread, NULL, conn_main, c);
	if (rc != 0) {
		s->live = c->next;
		s->nconns--;
		pthread_mutex_unlock(&s->mu);
		tally_log_warn("pgwire: cannot start connection thread: %s", strerror(rc));
		close(fd);
		free(c);
		return;
	}
	pthread_mutex_unlock(&s->mu);
}

static void *accept_main(void *arg)
{
	tally_pg_server *s = arg;
	for (;;) {
		struct pollfd pf[2] = {{.fd = s->lfd, .events = POLLIN},
				       {.fd = s->wake[0], .events = POLLIN}};
		int n = poll(pf, 2, 1000);
		if (n < 0 && errno != EINTR)
			poll(NULL, 0, 10);
		if (n > 0 && (pf[1].revents & POLLIN)) {
			char tmp[64];
			while (read(s->wake[0], tmp, sizeof tmp) > 0)
				;
		}
		pthread_mutex_lock(&s->mu);
		bool closing = s->closing;
		pthread_mutex_unlock(&s->mu);
		if (closing)
			return NULL;
		reap_dead(s);
		if (n > 0 && (pf[0].revents & POLLIN))
			accept_one(s);
	}
}

int tally_pg_server_open(const char *host, int port, const tally_pg_handlers *h, void *server_ctx,
			 tally_pg_server **out)
{
	if (!h || !h->query || port < 0 || port > 65535) {
		tally_log_error("pgwire: invalid server arguments");
		return -1;
	}
	struct addrinfo hints = {.ai_family = AF_UNSPEC,
				 .ai_socktype = SOCK_STREAM,
				 .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
	struct addrinfo *ai = NULL;
	char ps[16];
	snprintf(ps, sizeof ps, "%d", port);
	int rc = getaddrinfo(host && host[0] ? host : NULL, ps, &hints, &ai);
	if (rc != 0) {
		tally_log_error("pgwire: cannot resolve \"%s\": %s", host ? host : "",
				gai_strerror(rc));
		return -1;
	}
	int fd = -1;
	for (struct addrinfo *a = ai; a; a = a->ai_next) {
		fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
			    a->ai_protocol);
		if (fd < 0)
			continue;
		int one = 1;
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
		if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 128) == 0)
			break;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(ai);
	if (fd < 0) {
		tally_log_error("pgwire: could not listen on %s:%d: %s", host ? host : "*", port,
				strerror(errno));
		return -1;
	}
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	int bound = port;
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
		if (ss.ss_family == AF_INET)
			bound = ntohs(((struct sockaddr_in *)&ss)->sin_port);
		else if (ss.ss_family == AF_INET6)
			bound = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	}
	tally_pg_server *s = tally_xcalloc(1, sizeof *s);
	s->h = *h;
	s->ctx = server_ctx;
	s->lfd = fd;
	s->port = bound;
	if (pipe2(s->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
		tally_log_error("pgwire: could not create pipe: %s", strerror(errno));
		close(fd);
		free(s);
		return -1;
	}
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cv, NULL);
	rc = pthread_create(&s->accept_thr, NULL, accept_main, s);
	if (rc != 0) {
		tally_log_error("pgwire: cannot start accept thread: %s", strerror(rc));
		pthread_mutex_destroy(&s->mu);
		pthread_cond_destroy(&s->cv);
		close(s->wake[0]);
		close(s->wake[1]);
		close(fd);
		free(s);
		return -1;
	}
	*out = s;
	return 0;
}

int tally_pg_server_port(const tally_pg_server *s)
{
	return s->port;
}

int tally_pg_server_nconns(const tally_pg_server *s)
{
	tally_pg_server *m = (tally_pg_server *)s; /* the mutex is not part of the value */
	pthread_mutex_lock(&m->mu);
	int n = m->nconns;
	pthread_mutex_unlock(&m->mu);
	return n;
}

void tally_pg_server_close(tally_pg_server *s)
{
	if (!s)
		return;
	pthread_mutex_lock(&s->mu);
	s->closing = true;
	pthread_mutex_unlock(&s->mu);
	ssize_t w = write(s->wake[1], "x", 1);
	(void)w;
	pthread_join(s->accept_thr, NULL);
	close(s->lfd);

	pthread_mutex_lock(&s->mu);
	for (tally_pg_conn *c = s->live; c; c = c->next)
		shutdown(c->fd, SHUT_RDWR);
	while (s->nconns > 0)
		pthread_cond_wait(&s->cv, &s->mu);
	pthread_mutex_unlock(&s->mu);
	reap_dead(s);

	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->cv);
	close(s->wake[0]);
	close(s->wake[1]);
	free(s);
}
