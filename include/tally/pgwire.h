/*
 * pgwire.h - PostgreSQL frontend/backend protocol 3.0, server side.
 *
 * The server accepts TCP connections and runs each on its own thread with blocking I/O:
 * startup (SSLRequest and GSSENCRequest answered 'N', CancelRequest accepted and ignored,
 * protocol 3.0 StartupMessage with any user/database, trust authentication), then the
 * message loop. Simple Query strings go to the handler's `query` callback; the extended
 * protocol (Parse/Bind/Describe/Execute/Sync/Close/Flush) is mapped onto the same callback
 * by substituting text-format parameters as quoted literals, with Parse and Describe answered
 * by the `describe` callback (nothing runs before Execute). An Execute with a row limit
 * buffers the portal's output (at most 256 MiB, else 54000) and hands it out in parts with
 * PortalSuspended. ReadyForQuery is sent by the loop with the session's transaction status.
 *
 * Limits: a message longer than TALLY_PG_MSG_MAX or a malformed message ends the connection
 * with a FATAL 08P01 ErrorResponse; the server goes on.
 *
 * Result helpers write into a per-connection output buffer which is flushed when it grows
 * large, at ReadyForQuery, and when a COPY starts.
 */
#ifndef TALLY_PGWIRE_H
#define TALLY_PGWIRE_H

#include "tally/types.h"

#define TALLY_PG_MSG_MAX (64u << 20) /* largest accepted frontend message: 64 MiB */
#define TALLY_PG_STARTUP_MAX 10000   /* startup packet, as PostgreSQL */
#define TALLY_PG_MAX_CONNS 1000	     /* more clients get FATAL 53300 after startup */

typedef struct tally_pg_server tally_pg_server;
typedef struct tally_pg_conn tally_pg_conn;

typedef struct tally_pg_col {
	const char *name;
	uint32_t type_oid;
	int16_t typlen;
} tally_pg_col;

typedef struct tally_pg_handlers {
	/* A client finished startup. Return the session pointer, or NULL after filling err to
	 * refuse it (sent as FATAL). Runs on the connection's thread. */
	void *(*session_open)(void *server_ctx, tally_pg_conn *c, const char *user,
			      const char *database, tally_err *err);
	/* Run a query string (one or more statements). The handler sends results with the
	 * tally_pg_send_* functions; errors with tally_pg_send_error. */
	void (*query)(void *session, tally_pg_conn *c, const char *sql);
	/* Describe a statement text without running it or touching session state (extended
	 * protocol: checked at Parse, answered at Describe). $n parameters appear in sql as
	 * written. Returns 1 with the result columns in *cols (*ncols of them; names and cols
	 * valid until the next call on this session), 0 if the statement returns no rows
	 * (NoData), -1 with err filled if it cannot be prepared (a syntax error, more than one
	 * statement: 42601 cannot insert multiple commands into a prepared statement, an
	 * unknown relation ...). May be NULL: then every statement is described as NoData. */
	int (*describe)(void *session, const char *sql, const tally_pg_col **cols, int *ncols,
			tally_err *err);
	/* Transaction status for ReadyForQuery: 'I' idle, 'T' in transaction, 'E' failed. */
	char (*txn_status)(void *session);
	void (*session_close)(void *session);
} tally_pg_handlers;

/* Listen on host:port (port 0 = any free port) and start accepting. Parameter status values
 * sent at startup: server_version "15.0 (tally <version>)", server_encoding/client_encoding
 * UTF8, DateStyle "ISO, MDY", TimeZone "UTC", integer_datetimes on,
 * standard_conforming_strings on, application_name. Returns 0 or -1 (logged). */
int tally_pg_server_open(const char *host, int port, const tally_pg_handlers *h, void *server_ctx,
			 tally_pg_server **out);
int tally_pg_server_port(const tally_pg_server *s);
/* Number of open client connections. */
int tally_pg_server_nconns(const tally_pg_server *s);
/* Stop accepting, close every connection (their threads end, session_close runs) and free.
 * Blocks until all connection threads are gone. */
void tally_pg_server_close(tally_pg_server *s);

/* ---- responses (call only from the query callback, on the connection's thread) ------------ */

int tally_pg_send_row_description(tally_pg_conn *c, int ncols, const tally_pg_col *cols);
/* vals[i] NULL = SQL NULL; lens[i] the byte length. */
int tally_pg_send_data_row(tally_pg_conn *c, int ncols, const char *const *vals,
			   const uint32_t *lens);
/* Tag e.g. "SELECT 3", "INSERT 0 5", "COPY 10", "CREATE STREAM", "SET". */
int tally_pg_send_command_complete(tally_pg_conn *c, const char *tag);
int tally_pg_send_empty_query(tally_pg_conn *c);
/* ErrorResponse (severity ERROR/FATAL) or NoticeResponse (WARNING/NOTICE), with S, V, C, M
 * and when set D, H, P fields. */
int tally_pg_send_error(tally_pg_conn *c, const tally_err *e);
int tally_pg_send_parameter_status(tally_pg_conn *c, const char *name, const char *value);

/* COPY FROM STDIN: send CopyInResponse (text format, ncols columns) and flush. Then call
 * tally_pg_copy_read until it returns 1 (CopyDone) or -1. */
int tally_pg_copy_in_begin(tally_pg_conn *c, int ncols);
/* Next chunk of COPY data: returns 0 with *data and *len set (valid until the next call), 1 at
 * CopyDone, -1 when the client sent CopyFail (err = 57014 `COPY from stdin failed: <msg>`),
 * vanished, or broke the protocol (err filled). Flush/Sync during COPY are ignored as
 * PostgreSQL does. */
int tally_pg_copy_read(tally_pg_conn *c, const char **data, size_t *len, tally_err *err);

/* Peer address as "127.0.0.1:5555" (for logs). */
const char *tally_pg_conn_peer(const tally_pg_conn *c);

#endif
