/*
 * faults.h - the fault-run engine: concurrent ingest into a cluster while nodes are killed
 * with SIGKILL and restarted, then an exact check of every statement and every view against
 * a PostgreSQL oracle (DESIGN §5, §7, §9: acknowledged rows are never lost, a failed
 * statement is applied in full or not at all, nothing is applied twice).
 *
 * The engine owns a stream `fs (stmt bigint, k integer, v double precision, g text)` and three
 * views over it (fv_stmt, fv_k, fv_g; renamed with a _g<n> suffix in later generations). Every
 * statement gets a unique id `stmt`; its rows are a pure function of that id (th_faults_stmt_rows),
 * so a statement's content is regenerated when the oracle is loaded instead of being kept in
 * memory. Per statement the engine keeps only its outcome (acknowledged or failed) and the node it
 * was sent to.
 *
 * Like the rest of the harness, these functions assert with Criterion on harness failures
 * (a node that cannot be restarted, an oracle that refuses a COPY) and must be called from
 * the test's main thread; the client threads they start use their own libpq connections and
 * never call th_* functions. Result problems (lost, doubled, partial statements, view rows
 * differing from the oracle) are not asserted here: they are counted in th_faults_summary
 * for the caller to assert on, so one run reports all of them.
 */
#ifndef TALLY_TEST_FAULTS_H
#define TALLY_TEST_FAULTS_H

#include "harness.h"

#include <stdint.h>
#include <stdio.h>

/* Outcome of one statement. */
typedef enum th_faults_outcome {
	TH_FAULTS_NONE = 0,	  /* id never used (or not recorded) */
	TH_FAULTS_ACKED,	  /* the command completed OK */
	TH_FAULTS_FAILED,	  /* any error or broken connection, not yet checked */
	TH_FAULTS_FAILED_APPLIED, /* failed, found applied in full at a check */
	TH_FAULTS_FAILED_ABSENT,  /* failed, found not applied at a check */
} th_faults_outcome;

typedef struct th_faults th_faults;

typedef struct th_faults_opts {
	int rounds;		  /* kill/restart rounds per check (default 12) */
	double minutes;		  /* > 0: repeat rounds+check until this much time passed */
	int clients;		  /* ingest threads (default 4, at most 16) */
	uint64_t seed;		  /* 0: from the clock */
	const char *insert_level; /* default "sync_receive" */
	int coordinator_pct;	  /* % of rounds killing the coordinator (default 20) */
	int origin_pct;		  /* % killing the node a client is connected to (default 25) */
	int max_down_ms;	  /* a victim stays down 0..max_down_ms (default 1000) */
	/* Outage mode (max_down >= 1; 0 keeps the rounds above): a round takes down 1..max_down
	 * distinct workers at random moments (never the coordinator; the first victim is a
	 * client's node in origin_pct of the rounds), waits until the coordinator marks them all
	 * down, checks at a live node that reads (primary_only = off) of every view and writes
	 * (sync_receive) succeed while the clients go on ingesting, keeps them down up to
	 * max_down_ms more, then brings them back. Settling then also waits for replication lag
	 * 0 and no hints left, and views are compared with primary_only on and off. */
	int replicas;	 /* num_replicas of the engine's views (0: the cluster's default); the
			    engine must have been made with the same (th_faults_alloc_replicas) */
	int workers;	 /* workers the caller started (0: not checked) */
	int max_down;	 /* workers down at once in a round (0: outage mode off) */
	int sigstop_pct; /* % of outage rounds that SIGSTOP the first victim instead of killing
			    it (a hung node; SIGCONT at the end of the round) */
} th_faults_opts;

typedef struct th_faults_summary {
	uint64_t seed;
	int checks;		/* settle + check cycles done */
	int rounds;		/* kill/restart rounds */
	int faults_worker;	/* a random worker killed */
	int faults_coordinator; /* the coordinator killed */
	int faults_origin;	/* the node a client was connected to killed */
	long stmts_acked;
	long stmts_failed;
	long stmts_failed_applied; /* failed statements found applied in full */
	long events_acked;	   /* rows of acknowledged statements */
	long lost;		   /* acknowledged statements missing from fv_stmt */
	long doubled;		   /* statements applied twice (count = 2 x rows) */
	long partial;		   /* statements with any other count or sum */
	long phantom;		   /* fv_stmt rows for ids never sent, or failed-absent ids
				      that appeared later */
	long mismatches;	   /* view rows differing from the oracle (all nodes, views) */
	int read_errors;	   /* view reads that failed after settling */
	int settle_timeouts;	   /* checks where outboxes did not drain in time */
	int client_errors;	   /* client threads that could not reconnect in time */
	/* outage mode */
	int faults_sigstop;	   /* victims SIGSTOPped (hung) instead of killed */
	int faults_multi;	   /* rounds with more than one worker down at once */
	int outages;		   /* outage checks done */
	int detect_timeouts;	   /* victims the coordinator did not mark down in time */
	int outage_read_errors;	   /* view reads at a live node that failed in an outage */
	int outage_write_errors;   /* the engine's own writes at a live node that failed */
	long outage_client_origin; /* client statements failed in an outage on a victim */
	long outage_client_other;  /* client statements failed in an outage on a live node */
	double outage_read_max_ms; /* slowest successful outage read */
	double detect_max_ms;	   /* longest wait, from the last victim's signal, until the
				      coordinator showed every victim down */
	double seconds;
} th_faults_summary;

/* Create the stream and views through the coordinator of c (3 workers expected) and the
 * oracle table `fs` through oracle (a connection to th_oracle_start's server). Both stay
 * borrowed and must outlive the engine. Asserts on failure. */
th_faults *th_faults_alloc(th_cluster *c, PGconn *oracle);
/* As th_faults_alloc, with the views made WITH (num_replicas = replicas) when replicas >= 1
 * (needs more than replicas workers). Their replica copies are then also compared at every
 * check (reads with primary_only = off at each node), and th_faults_settle also waits for
 * replication lag 0 and no hints left. */
th_faults *th_faults_alloc_replicas(th_cluster *c, PGconn *oracle, int replicas);
/* Release the engine (NULL is fine). Client threads must have been stopped. */
void th_faults_free(th_faults *f);

/* The rows of statement stmt: their number (1..300) and, when out is not NULL, the rows as
 * COPY text lines ("stmt\tk\tv\tg\n") appended to out. */
int th_faults_stmt_rows(uint64_t stmt, tally_buf *out);
/* The statement as SQL text (NUL-terminated in out, which is reset first): a multi-row
 * INSERT (as_copy false) or the data of `COPY fs (stmt, k, v, g) FROM STDIN` (as_copy
 * true; send it with th_faults_copy_sql). When bad_row >= 1, that row's k is the text
 * 'bad' (an invalid integer) so the statement fails. Returns the row count. */
int th_faults_stmt_text(uint64_t stmt, bool as_copy, int bad_row, tally_buf *out);
static inline const char *th_faults_copy_sql(void)
{
	return "COPY fs (stmt, k, v, g) FROM STDIN";
}
/* A fresh statement id (never used before by this engine). */
uint64_t th_faults_next_stmt(th_faults *f);
/* Record the outcome of statement stmt sent by the test itself to node index node. */
void th_faults_record(th_faults *f, uint64_t stmt, th_faults_outcome outcome, int node);
/* The recorded outcome (after th_faults_check: FAILED resolved to _APPLIED or _ABSENT). */
th_faults_outcome th_faults_outcome_of(th_faults *f, uint64_t stmt);

/* Send nstmts fresh statements one after another over conn (a connection to node index
 * node), alternating INSERT and COPY, and record their outcomes. Returns how many were
 * acknowledged. Does not assert on statement errors. */
int th_faults_ingest(th_faults *f, PGconn *conn, int node, int nstmts);

/* Start nclients ingest threads (insert_level as given, NULL for the default), connecting
 * round-robin to the workers and the coordinator. Non-blocking. */
void th_faults_start_clients(th_faults *f, int nclients, const char *insert_level, uint64_t seed);
/* Tell the clients to stop after their current statement and join them (a statement
 * still waiting gives up after 30 s and counts as failed). */
void th_faults_stop_clients(th_faults *f);
/* Node index the client is connected to now (-1 if none). */
int th_faults_client_node(th_faults *f, int client);

/* Wait (deadline_ms) until every worker is 'up' at the coordinator and every node answers
 * `SELECT count(*) FROM pipeline_cluster.outbox` = 0 (a node without that view, 42P01,
 * counts as drained); for an engine with replicas, also until the coordinator shows every
 * replica copy 'streaming' with lag_records 0, no row in pipeline_cluster.hints and no
 * shard unbalanced. Returns false on timeout, printing what was still pending. */
bool th_faults_settle(th_faults *f, int deadline_ms);
/* Wait (deadline_ms) until the coordinator shows every worker 'up'. */
bool th_faults_wait_up(th_faults *f, int deadline_ms);

/* The check: read fv_stmt, judge every statement of the current generation (acknowledged:
 * present with its exact count and sum; failed: absent or exact), load the rows of the newly
 * judged statements into the oracle, and compare fv_stmt, fv_k and fv_g at every node with
 * the oracle's GROUP BY. In *s, checks and read_errors are incremented; the statement
 * counts (stmts_*, events_acked, lost, doubled, partial, phantom, mismatches) are set to
 * those of the generations before plus this check's view of the current one, so a later
 * check of the same generation replaces an earlier one. Clients must be stopped. */
void th_faults_check(th_faults *f, th_faults_summary *s);
/* Start a new generation (for long runs, so the views and the oracle stay small): drop the
 * current views, create new ones (fv_stmt_g2, ...), empty the oracle table and forget the
 * statements; their counts at the last check are kept in the totals. Clients must be
 * stopped and the cluster settled and checked. */
void th_faults_new_generation(th_faults *f);

/* The whole random run: for each check cycle (a new generation from the second on), start
 * the clients, do opts->rounds rounds
 * (ingest 0.3-1.5 s, SIGKILL a victim, ingest 0-max_down_ms, restart it, wait until every worker
 * is up), stop the clients, settle (60 s) and check; repeat while opts->minutes have not
 * passed. Fills *s and prints it with th_faults_summary_print after every check.
 * In outage mode (opts->max_down >= 1) a round is an outage instead (see th_faults_opts):
 * the first round of every cycle takes max_down workers down at once, and with sigstop_pct
 * the last one hangs a worker if no round of the cycle did. Asserts that opts->replicas and
 * opts->workers (when not 0) match the engine and the cluster. */
void th_faults_run(th_faults *f, const th_faults_opts *opts, th_faults_summary *s);

/* The engine's view names of the current generation (i: 0 fv_stmt, 1 fv_k, 2 fv_g). */
const char *th_faults_view(th_faults *f, int i);
/* The oracle's query for view i (over table fs, same columns as SELECT * FROM the view). */
const char *th_faults_view_query(int i);

/* The summary on one line ("faults: rounds=... lost=... doubled=..."). */
void th_faults_summary_print(const th_faults_summary *s, FILE *out);
/* true when the summary shows no loss, double, partial, phantom, mismatch or error. */
bool th_faults_summary_clean(const th_faults_summary *s);
/* Assert (Criterion) that s is clean, naming every count and the seed; print s first if
 * print. */
void th_faults_assert_clean(const th_faults_summary *s, const char *when, bool print);
/* The seed for a fault run: TALLY_FAULT_SEED if set (to replay one), else the clock. */
uint64_t th_faults_seed(void);

#endif
