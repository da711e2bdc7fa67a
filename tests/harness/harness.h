/*
 * harness.h - process and cluster helpers for integration tests.
 *
 * A test starts a real tally cluster (one tally-coordinator and N tally-worker processes from
 * TALLY_BIN_DIR, or $TALLY_TEST_BIN_DIR when set) on 127.0.0.1 with free ports in a fresh
 * temporary directory, talks libpq to its nodes, and stops it cleanly at the end, checking
 * that every node exits 0. An "oracle" is a throw-away PostgreSQL 15 server used as the
 * independent computation of expected results.
 *
 * Every helper that can fail asserts with Criterion (the calling test fails with a message),
 * so these are meant for the test's own process only. Nodes and the oracle die with the test
 * process (PR_SET_PDEATHSIG), so an aborted test never leaves processes behind; their
 * directory is then kept for inspection. Waiting is only ever done with a deadline
 * (th_wait_until), never a bare sleep.
 *
 * Not thread-safe: call from the test's main thread only.
 */
#ifndef TALLY_TEST_HARNESS_H
#define TALLY_TEST_HARNESS_H

#include "tally/core.h"

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#define TH_MAX_NODES 16
#define TH_MAX_SETS 16

/* PostgreSQL type oids the tests check with PQftype. */
#define TH_OID_BOOL 16
#define TH_OID_INT8 20
#define TH_OID_INT2 21
#define TH_OID_INT4 23
#define TH_OID_TEXT 25
#define TH_OID_FLOAT4 700
#define TH_OID_FLOAT8 701
#define TH_OID_VARCHAR 1043
#define TH_OID_TIMESTAMP 1114
#define TH_OID_TIMESTAMPTZ 1184
#define TH_OID_NUMERIC 1700

typedef struct th_node {
	pid_t pid;     /* 0 when not running */
	char name[64]; /* "coordinator", "w1", ... */
	bool is_coordinator;
	bool stopped; /* SIGSTOPped by th_kill_node */
	int sql_port;
	int data_port;
	char data_addr[128]; /* tcp://127.0.0.1:PORT */
	char host[64];	     /* address it listens on: 127.0.0.1 unless th_opts.hosts */
	char dir[512];	     /* the node's --dir */
	char log[512];	     /* its stderr */
	int exit_status;     /* raw waitpid status of the last exit, -1 if unknown */
} th_node;

typedef struct th_opts {
	/* extra "--set name=value" for every node, NULL-ended; they come after the harness's own
	 * pipeline_cluster.insert_level=sync_commit (so tests read their own writes) and win */
	const char *sets[TH_MAX_SETS];
	const char *log_level; /* --log-level (default: warning) */
	int ready_timeout_ms;  /* for each node's ready file (default 20000) */
	const char *bin_dir;   /* default $TALLY_TEST_BIN_DIR or TALLY_BIN_DIR */
	bool no_wait_up;       /* don't wait for pipeline_cluster.nodes (fake nodes) */
	/* per node index (0: the coordinator, i: wi), NULL for the default: the address the node
	 * listens on and advertises (--host; default 127.0.0.1), and a network namespace to run
	 * it in (`ip netns exec NS`, root only). Borrowed: must outlive the cluster. */
	const char *hosts[TH_MAX_NODES];
	const char *netns[TH_MAX_NODES];
} th_opts;

typedef struct th_cluster {
	char dir[256]; /* mkdtemp'd root; node i lives in dir/<name> */
	char bin_dir[256];
	th_opts opts;
	int nnodes; /* 1 + workers; nodes[0] is the coordinator */
	th_node nodes[TH_MAX_NODES];
	bool failed; /* something went wrong: keep the dir at stop */
} th_cluster;

/* Start a coordinator and nworkers workers (named w1..wN), wait for each DIR/ready and then
 * until the coordinator's pipeline_cluster.nodes shows every worker 'up'. opts may be NULL.
 * Returns a heap cluster (freed by th_cluster_stop). Asserts on failure. */
th_cluster *th_cluster_start(int nworkers, const th_opts *opts);
/* SIGTERM every running node, wait for all with a deadline, assert each exited 0, remove the
 * directory (kept, with its path and each node's log tail printed, on any failure). */
void th_cluster_stop(th_cluster *c);
/* Like th_cluster_stop but never asserts (for .fini fixtures): returns false on failure. */
bool th_cluster_stop_quiet(th_cluster *c);
/* Stop every cluster and oracle this process started and has not stopped yet (a .fini
 * fixture, so an aborted test still shuts its processes down and reports them). */
void th_fini(void);

static inline th_node *th_coord(th_cluster *c)
{
	return &c->nodes[0];
}
static inline th_node *th_worker(th_cluster *c, int i)
{
	return &c->nodes[i];
} /* 1-based */

/* Send sig to a node. SIGKILL/SIGTERM wait (deadline) for the process and reap it; SIGSTOP
 * marks it stopped (th_cluster_stop continues it first). */
void th_kill_node(th_cluster *c, th_node *n, int sig);
/* Start a node that is not running again with the same arguments and directory; waits for
 * its ready file. */
void th_restart_node(th_cluster *c, th_node *n);
/* true if the process is alive (kill(pid, 0) and not reaped as exited). */
bool th_node_alive(th_node *n);
/* Append every thread's stack of a running node to its log (gdb, if installed): for a node
 * that hangs. */
void th_node_dump_stacks(const th_node *n);
/* Print the last lines of a node's log to stderr. */
void th_node_log_tail(const th_node *n, int lines);

/* ---- libpq ------------------------------------------------------------------------------- */

/* Connect to a node's SQL port; asserts on failure. */
PGconn *th_connect(const th_node *n);
/* As th_connect but returns NULL on failure (no assertion). */
PGconn *th_try_connect(const th_node *n);
/* Run sql; assert it succeeded (COMMAND_OK or TUPLES_OK). Caller PQclears the result. */
PGresult *th_exec_ok(PGconn *conn, const char *sql);
PGresult *th_exec_okf(PGconn *conn, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Run sql, assert success and PQclear. */
void th_run(PGconn *conn, const char *sql);
void th_runf(PGconn *conn, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Run sql; assert it failed with the given SQLSTATE (NULL: any). Caller PQclears. */
PGresult *th_exec_err(PGconn *conn, const char *sql, const char *expected_sqlstate);
/* First column of the first row as a heap string (NULL value -> NULL); asserts one row. */
char *th_query_str(PGconn *conn, const char *sql);
int64_t th_query_int(PGconn *conn, const char *sql); /* asserts a non-NULL integer */
int64_t th_query_intf(PGconn *conn, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* COPY ... FROM STDIN with the given data; returns the final result (caller PQclears). The
 * data is sent in chunks of chunk bytes (0: one piece). */
PGresult *th_copy_in(PGconn *conn, const char *copy_sql, const char *data, size_t len,
		     size_t chunk);
/* th_copy_in and assert the command tag is "COPY <expected_rows>". */
void th_copy_ok(PGconn *conn, const char *copy_sql, const char *data, size_t len,
		long expected_rows);

/* ---- waiting and processes --------------------------------------------------------------- */

/* Poll cond(ctx) every 20 ms until it is true or deadline_ms pass. Returns its last value. */
bool th_wait_until(bool (*cond)(void *ctx), void *ctx, int deadline_ms);
/* Let ms pass where the time itself is the scenario (e.g. the gap between two faults), not a
 * wait for some state: waits for state use th_wait_until. */
void th_fault_gap(int ms);
/* Wait (asserting, up to deadline_ms) until pipeline_cluster.nodes at node `at` shows node
 * `name` in state want ("up", "down"), or without a row for it (want NULL). */
void th_wait_node_state(th_node *at, const char *name, const char *want, int deadline_ms);
/* Wait for pid to exit within deadline_ms; true and *status on exit, false on timeout. */
bool th_wait_pid(pid_t pid, int *status, int deadline_ms);
/* Run argv (argv[0] a path) with stdin from in (may be NULL), capture stdout into *out and
 * stderr into *err (heap strings; either may be NULL to discard). Waits up to deadline_ms
 * (then SIGKILL). Returns the raw wait status, or -1 on timeout. */
int th_run_process(char *const argv[], const char *in, char **out, char **err, int deadline_ms);
/* Run /usr/bin/psql against a node with extra arguments (NULL-ended). */
int th_psql(const th_node *n, const char *const extra_args[], const char *in, char **out,
	    char **err, int deadline_ms);
/* A blocking TCP connection to 127.0.0.1:port, or -1. */
int th_tcp_connect(int port);
/* Write all bytes (ignoring EPIPE); false on error. */
bool th_write_all(int fd, const void *p, size_t n);
/* Slurp a file (NULL if unreadable). */
char *th_read_file(const char *path);
/* rm -rf */
void th_rmtree(const char *path);
/* Path of a file in the source tree (static buffer per call site is the caller's). */
void th_source_path(char *out, size_t outsz, const char *rel);

/* ---- PostgreSQL oracle ------------------------------------------------------------------- */

typedef struct th_oracle {
	pid_t pid;
	char dir[512]; /* temp dir: data/ and the unix socket */
	int port;
	bool failed;
} th_oracle;

/* initdb + start a PostgreSQL 15 server (as user postgres when running as root), listening
 * only on a unix socket in its temp dir. Asserts on failure. */
th_oracle *th_oracle_start(void);
/* Connect as postgres with TimeZone=UTC. */
PGconn *th_oracle_connect(const th_oracle *o);
/* Fast shutdown (SIGINT) with a deadline, remove the directory. */
void th_oracle_stop(th_oracle *o);

/*
 * Run query_cluster on cluster_conn and query_oracle on oracle_conn, sort both results by
 * the key columns (0-based indexes; nkeys 0 = all columns; nkeys -1 = keep the order both
 * servers gave, for ORDER BY queries), and compare: same column count,
 * same column types, same row count, each value equal - integers, numeric, text, timestamps
 * and booleans exactly as text, real/double precision within relative 1e-9 (absolute 1e-9
 * near 0). Prints the first 10 differing rows and fails the test on any mismatch.
 * Returns the number of rows compared.
 */
int th_oracle_compare(PGconn *cluster_conn, PGconn *oracle_conn, const char *query_cluster,
		      const char *query_oracle, const int *key_cols, int nkeys);
/* Same comparison over two results already fetched; returns the number of mismatches
 * (printing up to 10 of them, labelled with what). Does not assert. */
int th_compare_results(const PGresult *a, const PGresult *b, const int *key_cols, int nkeys,
		       const char *what);

#endif
