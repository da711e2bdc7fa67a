/*
 * faults.c - the fault-run engine (see faults.h).
 *
 * Statements. Statement ids come from one atomic counter; a statement's rows, their number
 * and whether a client sends it as INSERT or COPY are all derived from its id by a hash, so
 * the check regenerates them. Per id the engine stores three bytes (outcome, node, loaded
 * into the oracle) in one large lazily-zeroed array indexed by id.
 *
 * Clients. Each client thread owns one raw libpq connection at a time and loops: take an
 * id, send the statement with a deadline (PQsendQuery + poll), record ACKED or FAILED. After
 * a failure it drops the connection and connects to the next node (round-robin over the
 * coordinator and the workers), retrying for up to 60 s, so a dead node never stops ingest.
 * Every 40 statements it moves on to the next node anyway, so every node is an origin.
 *
 * Check. After the clients are stopped and the cluster has settled (outboxes empty, every
 * worker up), fv_stmt is read once and each statement is judged from its (count, sum(k)):
 * acknowledged ones must be there exactly once, failed ones exactly once or not at all.
 * The rows of acknowledged and applied-failed statements not yet in the oracle are then
 * COPYed into it, and each view is compared with the oracle's GROUP BY at every node.
 *
 * Outages. With max_down >= 1 a round takes down several workers at once (SIGKILL, or
 * SIGSTOP for a hung node) while the clients keep ingesting. The victims' bits are set in
 * down_mask before the signal and cleared once they are back up, so a client statement that
 * fails meanwhile is counted as an error of a victim's own connection or, the one that
 * should never happen with sync_receive, of a live node. The main thread checks reads and
 * writes at a live node once the coordinator has marked every victim down.
 */
#include "faults.h"
#include "harness_int.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FAULTS_MAX_STMT (1u << 24) /* ids per engine (array of 4-byte records) */
#define FAULTS_MAX_CLIENTS 16
#define FAULTS_STMT_TIMEOUT_MS 30000 /* a statement still waiting then counts as failed */
#define FAULTS_RECONNECT_MS 60000    /* a client gives up after failing this long */
#define FAULTS_ROTATE_EVERY 40	     /* statements before a client moves to the next node */
#define FAULTS_ORACLE_CHUNK (4u << 20)

typedef struct faults_rec {
	uint8_t outcome; /* th_faults_outcome */
	uint8_t node;
	uint8_t loaded; /* rows are in the oracle table */
	uint8_t pad;
} faults_rec;

typedef struct faults_client {
	th_faults *f;
	int id;
	pthread_t thread;
	bool running;
	atomic_int node; /* connected node index, -1 when not connected */
	uint64_t rng;
	char level[32];
	bool gave_up; /* written by the thread, read after join */
} faults_client;

struct th_faults {
	th_cluster *c;
	PGconn *oracle;
	faults_rec *recs;
	atomic_uint_fast64_t next; /* next statement id; ids start at 1 */
	int nnodes;
	int ports[TH_MAX_NODES]; /* SQL ports, fixed across restarts */
	atomic_bool stop;
	faults_client clients[FAULTS_MAX_CLIENTS];
	int nclients;
	int gen;		      /* generation, 1-based (th_faults_new_generation) */
	uint64_t base;		      /* its first statement id: recs[id - base] */
	char vname[3][48];	      /* its view names */
	th_faults_summary done;	      /* statement counts of the generations before */
	th_faults_summary cur;	      /* those of this generation at its last check */
	int replicas;		      /* num_replicas of the views (0: no clause) */
	char hosts[TH_MAX_NODES][64]; /* SQL addresses, fixed across restarts */
	atomic_uint down_mask;	      /* node indexes taken down by the current outage round */
	atomic_long out_origin;	      /* client failures in an outage, on a victim */
	atomic_long out_other;	      /* client failures in an outage, on a live node */
};

static const struct {
	const char *name;
	const char *with;
	const char *select; /* also the oracle's query over table fs */
} faults_views[] = {
    {"fv_stmt", "sharding_policy = 'read_optimized', num_shards = 4",
     "SELECT stmt, count(*), sum(k) FROM fs GROUP BY stmt"},
    {"fv_k", "sharding_policy = 'read_optimized', num_shards = 3",
     "SELECT k, count(*), sum(v), min(v), max(v), avg(k) FROM fs GROUP BY k"},
    {"fv_g", "sharding_policy = 'write_optimized', num_shards = 2",
     "SELECT g, count(*), sum(k), max(k) FROM fs WHERE v >= 0 GROUP BY g"},
};
#define FAULTS_NVIEWS (sizeof faults_views / sizeof faults_views[0])

/* ---- deterministic statements ------------------------------------------------------------ */

static uint64_t faults_mix(uint64_t x)
{
	x += 0x9E3779B97F4A7C15ull;
	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
	x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
	return x ^ (x >> 31);
}

static uint64_t faults_rng(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static int faults_nrows(uint64_t stmt)
{
	return 1 + (int)(faults_mix(stmt * 2 + 1) % 300);
}

/* Row j of stmt: k in 0..199, v in [-10, 1000) in quarters (exact in binary, so float sums
 * are exact too), g one of 50 names. */
static void faults_row(uint64_t stmt, int j, int *k, double *v, unsigned *g)
{
	uint64_t h = faults_mix(stmt * 1000003ull + (uint64_t)j);
	*k = (int)(h % 200);
	*v = (double)((int)((h >> 16) % 4040) - 40) / 4.0;
	*g = (unsigned)((h >> 40) % 50);
}

static void faults_expect(uint64_t stmt, int *n, int64_t *sumk)
{
	*n = faults_nrows(stmt);
	*sumk = 0;
	for (int j = 0; j < *n; j++) {
		int k;
		double v;
		unsigned g;
		faults_row(stmt, j, &k, &v, &g);
		*sumk += k;
	}
}

int th_faults_stmt_rows(uint64_t stmt, tally_buf *out)
{
	int n = faults_nrows(stmt);
	for (int j = 0; out && j < n; j++) {
		int k;
		double v;
		unsigned g;
		faults_row(stmt, j, &k, &v, &g);
		tally_buf_printf(out, "%llu\t%d\t%.2f\tgrp_%02u\n", (unsigned long long)stmt, k, v,
				 g);
	}
	return n;
}

int th_faults_stmt_text(uint64_t stmt, bool as_copy, int bad_row, tally_buf *out)
{
	tally_buf_reset(out);
	int n = faults_nrows(stmt);
	if (!as_copy)
		tally_buf_printf(out, "INSERT INTO fs (stmt, k, v, g) VALUES ");
	for (int j = 0; j < n; j++) {
		int k;
		double v;
		unsigned g;
		faults_row(stmt, j, &k, &v, &g);
		char kt[16];
		bool bad = bad_row >= 1 && j + 1 == bad_row;
		if (bad)
			snprintf(kt, sizeof kt, as_copy ? "bad" : "'bad'");
		else
			snprintf(kt, sizeof kt, "%d", k);
		if (as_copy)
			tally_buf_printf(out, "%llu\t%s\t%.2f\tgrp_%02u\n",
					 (unsigned long long)stmt, kt, v, g);
		else
			tally_buf_printf(out, "%s(%llu, %s, %.2f, 'grp_%02u')", j ? ", " : "",
					 (unsigned long long)stmt, kt, v, g);
	}
	tally_buf_putc(out, 0);
	out->len--; /* NUL-terminated, but not part of the COPY data */
	return n;
}

/* ---- engine ------------------------------------------------------------------------------ */

_Static_assert(FAULTS_NVIEWS == 3, "vname has one entry per view");

static faults_rec *faults_rec_at(th_faults *f, uint64_t id)
{
	if (id < f->base || id - f->base >= FAULTS_MAX_STMT)
		return NULL;
	return &f->recs[id - f->base];
}

static void faults_create_views(th_faults *f)
{
	PGconn *co = th_connect(th_coord(f->c));
	for (size_t i = 0; i < FAULTS_NVIEWS; i++) {
		if (f->gen == 1)
			snprintf(f->vname[i], sizeof f->vname[i], "%s", faults_views[i].name);
		else
			snprintf(f->vname[i], sizeof f->vname[i], "%s_g%d", faults_views[i].name,
				 f->gen);
		char reps[48] = "";
		if (f->replicas >= 1)
			snprintf(reps, sizeof reps, ", num_replicas = %d", f->replicas);
		th_runf(co, "CREATE CONTINUOUS VIEW %s WITH (%s%s) AS %s", f->vname[i],
			faults_views[i].with, reps, faults_views[i].select);
	}
	PQfinish(co);
}

th_faults *th_faults_alloc_replicas(th_cluster *c, PGconn *oracle, int replicas)
{
	cr_assert(replicas >= 0 && replicas < c->nnodes - 1,
		  "num_replicas %d needs more than %d workers", replicas, c->nnodes - 1);
	cr_assert(c->nnodes <= 32, "down_mask has 32 bits");
	th_faults *f = tally_xcalloc(1, sizeof *f);
	f->c = c;
	f->oracle = oracle;
	f->replicas = replicas;
	f->recs = tally_xcalloc(FAULTS_MAX_STMT, sizeof *f->recs);
	atomic_init(&f->next, 1);
	atomic_init(&f->stop, false);
	atomic_init(&f->down_mask, 0);
	atomic_init(&f->out_origin, 0);
	atomic_init(&f->out_other, 0);
	f->nnodes = c->nnodes;
	for (int i = 0; i < c->nnodes; i++) {
		f->ports[i] = c->nodes[i].sql_port;
		snprintf(f->hosts[i], sizeof f->hosts[i], "%s",
			 c->nodes[i].host[0] ? c->nodes[i].host : "127.0.0.1");
	}

	f->gen = 1;
	f->base = 1;
	PGconn *co = th_connect(th_coord(c));
	th_run(co, "CREATE STREAM fs (stmt bigint, k integer, v double precision, g text)");
	PQfinish(co);
	faults_create_views(f);
	th_run(oracle, "CREATE TABLE fs (stmt bigint, k integer, v double precision, g text)");
	return f;
}

th_faults *th_faults_alloc(th_cluster *c, PGconn *oracle)
{
	return th_faults_alloc_replicas(c, oracle, 0);
}

const char *th_faults_view(th_faults *f, int i)
{
	cr_assert(i >= 0 && i < (int)FAULTS_NVIEWS, "view index %d", i);
	return f->vname[i];
}

const char *th_faults_view_query(int i)
{
	cr_assert(i >= 0 && i < (int)FAULTS_NVIEWS, "view index %d", i);
	return faults_views[i].select;
}

void th_faults_free(th_faults *f)
{
	if (!f)
		return;
	for (int i = 0; i < f->nclients; i++)
		cr_assert(!f->clients[i].running, "th_faults_free with client %d running", i);
	free(f->recs);
	free(f);
}

uint64_t th_faults_next_stmt(th_faults *f)
{
	uint64_t s = atomic_fetch_add(&f->next, 1);
	cr_assert(faults_rec_at(f, s) != NULL, "statement ids of this generation exhausted");
	return s;
}

void th_faults_record(th_faults *f, uint64_t stmt, th_faults_outcome outcome, int node)
{
	faults_rec *rec = faults_rec_at(f, stmt);
	cr_assert(rec && stmt < atomic_load(&f->next),
		  "statement %llu was not handed out in this generation", (unsigned long long)stmt);
	rec->outcome = (uint8_t)outcome;
	rec->node = (uint8_t)node;
}

th_faults_outcome th_faults_outcome_of(th_faults *f, uint64_t stmt)
{
	faults_rec *rec = faults_rec_at(f, stmt);
	return rec ? (th_faults_outcome)rec->outcome : TH_FAULTS_NONE;
}

/* ---- one statement over raw libpq, with a deadline --------------------------------------- */

static int64_t faults_now_ms(void)
{
	return tally_mono_us() / 1000;
}

/* Wait until a result is ready (or the connection broke). false on timeout or a broken
 * connection. */
static bool faults_wait_ready(PGconn *conn, int64_t deadline)
{
	while (PQisBusy(conn)) {
		int64_t left = deadline - faults_now_ms();
		if (left <= 0)
			return false;
		struct pollfd p = {.fd = PQsocket(conn), .events = POLLIN};
		if (p.fd < 0)
			return false;
		int r = poll(&p, 1, left > 200 ? 200 : (int)left);
		if (r < 0 && errno != EINTR)
			return false;
		if (r > 0 && !PQconsumeInput(conn))
			return PQstatus(conn) == CONNECTION_OK ? true : !PQisBusy(conn);
	}
	return true;
}

/* Run sql (with COPY data when copy is not NULL). true when it completed OK. *broken is set
 * when the connection can no longer be used (error, timeout). */
static bool faults_exec(PGconn *conn, const char *sql, const char *copy, size_t copylen,
			int timeout_ms, bool *broken)
{
	int64_t deadline = faults_now_ms() + timeout_ms;
	*broken = false;
	if (!PQsendQuery(conn, sql)) {
		*broken = true;
		return false;
	}
	bool ok = false, err = false;
	for (;;) {
		if (!faults_wait_ready(conn, deadline)) {
			*broken = true;
			return false;
		}
		PGresult *r = PQgetResult(conn);
		if (!r)
			break;
		switch (PQresultStatus(r)) {
		case PGRES_COPY_IN:
			if (!copy || PQputCopyData(conn, copy, (int)copylen) != 1 ||
			    PQputCopyEnd(conn, NULL) != 1)
				err = true;
			if (err && PQstatus(conn) != CONNECTION_OK) {
				PQclear(r);
				*broken = true;
				return false;
			}
			break;
		case PGRES_COMMAND_OK:
		case PGRES_TUPLES_OK:
			ok = true;
			break;
		default:
			err = true;
			break;
		}
		PQclear(r);
	}
	if (PQstatus(conn) != CONNECTION_OK)
		*broken = true;
	return ok && !err;
}

static PGconn *faults_connect_port(const char *host, int port, const char *level)
{
	char ci[256];
	snprintf(ci, sizeof ci,
		 "host=%s port=%d user=tally dbname=tally connect_timeout=3 "
		 "application_name=tally_faults",
		 host, port);
	PGconn *conn = PQconnectdb(ci);
	if (PQstatus(conn) != CONNECTION_OK) {
		PQfinish(conn);
		return NULL;
	}
	char set[96];
	snprintf(set, sizeof set, "SET pipeline_cluster.insert_level = '%s'", level);
	bool broken;
	if (!faults_exec(conn, set, NULL, 0, 10000, &broken)) {
		PQfinish(conn);
		return NULL;
	}
	return conn;
}

/* ---- clients ----------------------------------------------------------------------------- */

static void faults_pause_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static void *faults_client_main(void *arg)
{
	faults_client *cl = arg;
	th_faults *f = cl->f;
	tally_buf b = {0};
	PGconn *conn = NULL;
	int node = cl->id % f->nnodes;
	int sent_here = 0;
	int64_t failing_since = 0;
	while (!atomic_load(&f->stop)) {
		if (!conn) {
			conn = faults_connect_port(f->hosts[node], f->ports[node], cl->level);
			if (!conn) {
				int64_t now = faults_now_ms();
				if (!failing_since)
					failing_since = now;
				if (now - failing_since > FAULTS_RECONNECT_MS) {
					cl->gave_up = true;
					break;
				}
				node = (node + 1) % f->nnodes;
				faults_pause_ms(20);
				continue;
			}
			failing_since = 0;
			sent_here = 0;
			atomic_store(&cl->node, node);
		}
		uint64_t stmt = atomic_fetch_add(&f->next, 1);
		faults_rec *rec = faults_rec_at(f, stmt);
		if (!rec)
			break; /* ids of this generation exhausted */
		bool as_copy = faults_rng(&cl->rng) & 1;
		th_faults_stmt_text(stmt, as_copy, 0, &b);
		bool broken;
		bool ok = as_copy ? faults_exec(conn, th_faults_copy_sql(), (const char *)b.data,
						b.len, FAULTS_STMT_TIMEOUT_MS, &broken)
				  : faults_exec(conn, (const char *)b.data, NULL, 0,
						FAULTS_STMT_TIMEOUT_MS, &broken);
		rec->node = (uint8_t)node;
		rec->outcome = ok ? TH_FAULTS_ACKED : TH_FAULTS_FAILED;
		unsigned down = atomic_load(&f->down_mask);
		if (!ok && down && (down >> node) & 1u) {
			atomic_fetch_add(&f->out_origin, 1);
		} else if (!ok && down && atomic_fetch_add(&f->out_other, 1) < 10) {
			fprintf(stderr, "faults: outage: stmt %llu failed at live node %d: %s",
				(unsigned long long)stmt, node, PQerrorMessage(conn));
		}
		if (!ok || ++sent_here >= FAULTS_ROTATE_EVERY) {
			PQfinish(conn);
			conn = NULL;
			atomic_store(&cl->node, -1);
			node = (node + 1) % f->nnodes;
			if (!ok)
				faults_pause_ms(5 + (int)(faults_rng(&cl->rng) % 20));
		}
	}
	if (conn)
		PQfinish(conn);
	atomic_store(&cl->node, -1);
	tally_buf_free(&b);
	return NULL;
}

void th_faults_start_clients(th_faults *f, int nclients, const char *insert_level, uint64_t seed)
{
	cr_assert(nclients >= 1 && nclients <= FAULTS_MAX_CLIENTS, "nclients %d", nclients);
	for (int i = 0; i < f->nclients; i++)
		cr_assert(!f->clients[i].running, "clients already running");
	atomic_store(&f->stop, false);
	for (int i = 0; i < nclients; i++) {
		faults_client *cl = &f->clients[i];
		memset(cl, 0, sizeof *cl);
		cl->f = f;
		cl->id = i;
		atomic_init(&cl->node, -1);
		cl->rng = faults_mix(seed + (uint64_t)i * 7919) | 1;
		snprintf(cl->level, sizeof cl->level, "%s",
			 insert_level ? insert_level : "sync_receive");
		int rc = pthread_create(&cl->thread, NULL, faults_client_main, cl);
		cr_assert_eq(rc, 0, "pthread_create: %s", strerror(rc));
		cl->running = true;
	}
	f->nclients = nclients;
}

void th_faults_stop_clients(th_faults *f)
{
	atomic_store(&f->stop, true);
	for (int i = 0; i < f->nclients; i++) {
		faults_client *cl = &f->clients[i];
		if (cl->running) {
			pthread_join(cl->thread, NULL);
			cl->running = false;
		}
	}
}

int th_faults_client_node(th_faults *f, int client)
{
	if (client < 0 || client >= f->nclients)
		return -1;
	return atomic_load(&f->clients[client].node);
}

static int faults_clients_gave_up(th_faults *f)
{
	int n = 0;
	for (int i = 0; i < f->nclients; i++)
		n += f->clients[i].gave_up;
	return n;
}

/* ---- settling ---------------------------------------------------------------------------- */

typedef struct faults_settle_ctx {
	th_faults *f;
	char why[256];
	bool need_outbox;
} faults_settle_ctx;

static bool faults_up_cond(void *arg)
{
	faults_settle_ctx *x = arg;
	th_cluster *c = x->f->c;
	for (int i = 0; i < c->nnodes; i++)
		if (c->nodes[i].pid <= 0) {
			snprintf(x->why, sizeof x->why, "%s is not running", c->nodes[i].name);
			return false;
		}
	PGconn *conn = th_try_connect(th_coord(c));
	if (!conn) {
		snprintf(x->why, sizeof x->why, "cannot connect to the coordinator");
		return false;
	}
	PGresult *r = PQexec(conn, "SELECT count(*) FROM pipeline_cluster.nodes WHERE role = "
				   "'worker' AND state = 'up'");
	int up = PQresultStatus(r) == PGRES_TUPLES_OK ? atoi(PQgetvalue(r, 0, 0)) : -1;
	PQclear(r);
	PQfinish(conn);
	if (up != c->nnodes - 1) {
		snprintf(x->why, sizeof x->why, "%d of %d workers up at the coordinator", up,
			 c->nnodes - 1);
		return false;
	}
	return true;
}

static bool faults_sqlstate_is(const PGresult *r, const char *state)
{
	const char *got = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	return got && strcmp(got, state) == 0;
}

static bool faults_is_view(const th_faults *f, const char *name)
{
	for (size_t i = 0; i < FAULTS_NVIEWS; i++)
		if (strcmp(f->vname[i], name) == 0)
			return true;
	return false;
}

/* At the coordinator: every replica copy of the engine's views streaming with lag 0, no
 * hints held, every shard balanced. */
static bool faults_replicas_settled(faults_settle_ctx *x)
{
	PGconn *conn = th_try_connect(th_coord(x->f->c));
	if (!conn) {
		snprintf(x->why, sizeof x->why, "cannot connect to the coordinator");
		return false;
	}
	bool ok = true;
	PGresult *r = PQexec(conn, "SELECT continuous_view, shard, replica, state, lag_records "
				   "FROM pipeline_cluster.replication");
	if (PQresultStatus(r) != PGRES_TUPLES_OK) {
		snprintf(x->why, sizeof x->why, "pipeline_cluster.replication: %s",
			 PQresultErrorMessage(r));
		ok = false;
	}
	for (int i = 0; ok && i < PQntuples(r); i++) {
		if (!faults_is_view(x->f, PQgetvalue(r, i, 0)))
			continue;
		if (strcmp(PQgetvalue(r, i, 3), "streaming") != 0 ||
		    strcmp(PQgetvalue(r, i, 4), "0") != 0) {
			snprintf(x->why, sizeof x->why, "replica of %s at %s: state %s, lag %s",
				 PQgetvalue(r, i, 1), PQgetvalue(r, i, 2), PQgetvalue(r, i, 3),
				 PQgetisnull(r, i, 4) ? "NULL" : PQgetvalue(r, i, 4));
			ok = false;
		}
	}
	PQclear(r);
	if (ok) {
		r = PQexec(conn, "SELECT continuous_view, shard, home_shard FROM "
				 "pipeline_cluster.hints");
		if (PQresultStatus(r) != PGRES_TUPLES_OK) {
			snprintf(x->why, sizeof x->why, "pipeline_cluster.hints: %s",
				 PQresultErrorMessage(r));
			ok = false;
		}
		for (int i = 0; ok && i < PQntuples(r); i++)
			if (faults_is_view(x->f, PQgetvalue(r, i, 0))) {
				snprintf(x->why, sizeof x->why, "%s holds hints for %s",
					 PQgetvalue(r, i, 1), PQgetvalue(r, i, 2));
				ok = false;
			}
		PQclear(r);
	}
	if (ok) {
		r = PQexec(conn, "SELECT continuous_view, shard, owner, balanced FROM "
				 "pipeline_cluster.shards");
		if (PQresultStatus(r) != PGRES_TUPLES_OK) {
			snprintf(x->why, sizeof x->why, "pipeline_cluster.shards: %s",
				 PQresultErrorMessage(r));
			ok = false;
		}
		for (int i = 0; ok && i < PQntuples(r); i++)
			if (faults_is_view(x->f, PQgetvalue(r, i, 0)) &&
			    strcmp(PQgetvalue(r, i, 3), "t") != 0) {
				snprintf(x->why, sizeof x->why, "%s at %s: balanced %s",
					 PQgetvalue(r, i, 1), PQgetvalue(r, i, 2),
					 PQgetisnull(r, i, 3) ? "NULL" : PQgetvalue(r, i, 3));
				ok = false;
			}
		PQclear(r);
	}
	PQfinish(conn);
	return ok;
}

static bool faults_settled_cond(void *arg)
{
	faults_settle_ctx *x = arg;
	if (!faults_up_cond(arg))
		return false;
	th_cluster *c = x->f->c;
	for (int i = 0; i < c->nnodes; i++) {
		PGconn *conn = th_try_connect(&c->nodes[i]);
		if (!conn) {
			snprintf(x->why, sizeof x->why, "cannot connect to %s", c->nodes[i].name);
			return false;
		}
		PGresult *r = PQexec(conn, "SELECT count(*) FROM pipeline_cluster.outbox");
		long pending = -1;
		if (PQresultStatus(r) == PGRES_TUPLES_OK)
			pending = atol(PQgetvalue(r, 0, 0));
		else if (faults_sqlstate_is(r, "42P01"))
			pending = 0; /* no outbox yet: nothing to wait for */
		if (pending != 0)
			snprintf(x->why, sizeof x->why, "%s: outbox %ld%s%s", c->nodes[i].name,
				 pending, pending < 0 ? " " : "",
				 pending < 0 ? PQresultErrorMessage(r) : "");
		PQclear(r);
		/* and every shard readable from here */
		if (pending == 0) {
			char q[96];
			snprintf(q, sizeof q, "SELECT count(*) FROM %s", x->f->vname[0]);
			r = PQexec(conn, q);
			if (PQresultStatus(r) != PGRES_TUPLES_OK) {
				pending = -1;
				snprintf(x->why, sizeof x->why, "%s: %s unreadable: %s",
					 c->nodes[i].name, x->f->vname[0], PQresultErrorMessage(r));
			}
			PQclear(r);
		}
		PQfinish(conn);
		if (pending != 0)
			return false;
	}
	/* outboxes empty and every worker up: nothing more becomes a hint or a change to
	 * replicate, so lag and hints only go down from here (views without a num_replicas
	 * clause get the cluster's default, and batches for a killed primary become hints in
	 * every mode: in doubt ones count only once handed off) */
	return faults_replicas_settled(x);
}

bool th_faults_wait_up(th_faults *f, int deadline_ms)
{
	faults_settle_ctx x = {.f = f};
	if (th_wait_until(faults_up_cond, &x, deadline_ms))
		return true;
	fprintf(stderr, "faults: cluster not up after %d ms: %s\n", deadline_ms, x.why);
	/* a node that is running but not up is hung somewhere: keep its stacks */
	for (int i = 0; i < f->c->nnodes; i++)
		if (th_node_alive(&f->c->nodes[i]))
			th_node_dump_stacks(&f->c->nodes[i]);
	return false;
}

bool th_faults_settle(th_faults *f, int deadline_ms)
{
	faults_settle_ctx x = {.f = f};
	if (th_wait_until(faults_settled_cond, &x, deadline_ms))
		return true;
	fprintf(stderr, "faults: not settled after %d ms: %s\n", deadline_ms, x.why);
	return false;
}

/* ---- the check --------------------------------------------------------------------------- */

typedef struct faults_seen {
	int64_t sum;
	int32_t count;
	int32_t rows; /* fv_stmt rows for this id (more than 1 is a bug too) */
} faults_seen;

/* fv_stmt read at the coordinator, indexed by id - base for ids base..max; NULL when
 * unreadable. */
static faults_seen *faults_read_stmts(th_faults *f, uint64_t max, th_faults_summary *s)
{
	PGconn *conn = th_try_connect(th_coord(f->c));
	char sql[96];
	snprintf(sql, sizeof sql, "SELECT stmt, count, sum FROM %s", f->vname[0]);
	PGresult *r = conn ? PQexec(conn, sql) : NULL;
	if (!conn || PQresultStatus(r) != PGRES_TUPLES_OK) {
		fprintf(stderr, "faults: cannot read %s: %s\n", f->vname[0],
			conn ? PQresultErrorMessage(r) : "no connection");
		s->read_errors++;
		PQclear(r);
		PQfinish(conn);
		return NULL;
	}
	faults_seen *seen = tally_xcalloc(max + 2 - f->base, sizeof *seen);
	for (int i = 0; i < PQntuples(r); i++) {
		long long id = atoll(PQgetvalue(r, i, 0));
		if (id <= 0 || (uint64_t)id < f->base || (uint64_t)id > max) {
			if (s->phantom++ < 10)
				fprintf(stderr, "faults: %s has stmt %lld never sent\n",
					f->vname[0], id);
			continue;
		}
		faults_seen *x = &seen[(uint64_t)id - f->base];
		x->rows++;
		x->count = (int32_t)atol(PQgetvalue(r, i, 1));
		x->sum = atoll(PQgetvalue(r, i, 2));
	}
	PQclear(r);
	PQfinish(conn);
	return seen;
}

enum { SEEN_ABSENT, SEEN_EXACT, SEEN_DOUBLE, SEEN_OTHER };

static int faults_classify(const faults_seen *x, int n, int64_t sumk)
{
	if (x->rows == 0)
		return SEEN_ABSENT;
	if (x->rows > 1)
		return SEEN_OTHER;
	if (x->count == n && x->sum == sumk)
		return SEEN_EXACT;
	if (x->count == 2 * n && x->sum == 2 * sumk)
		return SEEN_DOUBLE;
	return SEEN_OTHER;
}

static void faults_report(long *counter, const char *what, uint64_t stmt, const faults_rec *rec,
			  const faults_seen *x, int n, int64_t sumk)
{
	if ((*counter)++ < 10)
		fprintf(stderr,
			"faults: %s stmt %llu (sent to node %d, %s): fv_stmt count %d sum %lld "
			"(%d rows), expected %d / %lld\n",
			what, (unsigned long long)stmt, rec->node,
			rec->outcome == TH_FAULTS_ACKED ? "acked" : "failed", x->count,
			(long long)x->sum, x->rows, n, (long long)sumk);
}

/* Judge every statement of this generation against fv_stmt (s: this generation's counts). */
static void faults_judge(th_faults *f, uint64_t max, const faults_seen *seen, th_faults_summary *s)
{
	for (uint64_t id = f->base; id <= max; id++) {
		faults_rec *rec = faults_rec_at(f, id);
		const faults_seen *x = &seen[id - f->base];
		if (rec->outcome == TH_FAULTS_NONE) {
			if (x->rows && s->phantom++ < 10)
				fprintf(stderr, "faults: %s has stmt %llu never sent\n",
					f->vname[0], (unsigned long long)id);
			continue;
		}
		int n;
		int64_t sumk;
		faults_expect(id, &n, &sumk);
		int cls = faults_classify(x, n, sumk);
		switch (rec->outcome) {
		case TH_FAULTS_ACKED:
		case TH_FAULTS_FAILED_APPLIED:
			if (cls == SEEN_ABSENT)
				faults_report(&s->lost, "lost", id, rec, x, n, sumk);
			break;
		case TH_FAULTS_FAILED:
			if (cls == SEEN_ABSENT)
				rec->outcome = TH_FAULTS_FAILED_ABSENT;
			else if (cls == SEEN_EXACT)
				rec->outcome = TH_FAULTS_FAILED_APPLIED;
			break;
		case TH_FAULTS_FAILED_ABSENT:
			if (cls != SEEN_ABSENT)
				faults_report(&s->phantom, "late-applied failed", id, rec, x, n,
					      sumk);
			cls = SEEN_EXACT; /* reported as a phantom, not again below */
			break;
		default:
			break;
		}
		if (cls == SEEN_DOUBLE)
			faults_report(&s->doubled, "doubled", id, rec, x, n, sumk);
		else if (cls == SEEN_OTHER)
			faults_report(&s->partial, "partial", id, rec, x, n, sumk);
		if (rec->outcome == TH_FAULTS_ACKED) {
			s->stmts_acked++;
			s->events_acked += n;
		} else {
			s->stmts_failed++;
			s->stmts_failed_applied += rec->outcome == TH_FAULTS_FAILED_APPLIED;
		}
	}
}

/* COPY the rows of every acknowledged or applied-failed statement not loaded yet. */
static void faults_load_oracle(th_faults *f, uint64_t max)
{
	tally_buf b = {0};
	long rows = 0;
	for (uint64_t id = f->base; id <= max + 1; id++) {
		if (id <= max) {
			faults_rec *rec = faults_rec_at(f, id);
			bool want = rec->outcome == TH_FAULTS_ACKED ||
				    rec->outcome == TH_FAULTS_FAILED_APPLIED;
			if (want && !rec->loaded) {
				rows += th_faults_stmt_rows(id, &b);
				rec->loaded = 1;
			}
		}
		if (b.len && (b.len >= FAULTS_ORACLE_CHUNK || id == max + 1)) {
			th_copy_ok(f->oracle, th_faults_copy_sql(), (const char *)b.data, b.len,
				   rows);
			tally_buf_reset(&b);
			rows = 0;
		}
	}
	tally_buf_free(&b);
}

static void faults_compare_views(th_faults *f, th_faults_summary *s)
{
	static const int key0[] = {0};
	PGresult *expect[FAULTS_NVIEWS];
	for (size_t v = 0; v < FAULTS_NVIEWS; v++)
		expect[v] = th_exec_ok(f->oracle, faults_views[v].select);
	for (int i = 0; i < f->c->nnodes; i++) {
		th_node *n = &f->c->nodes[i];
		PGconn *conn = th_try_connect(n);
		if (!conn) {
			fprintf(stderr, "faults: cannot connect to %s to compare\n", n->name);
			s->read_errors++;
			continue;
		}
		/* with replicas, also with primary_only = off: each node reads its local copies
		 * first, so every replica copy is compared at its own node */
		for (size_t pass = 0; pass < (f->replicas >= 1 ? 2u : 1u) * FAULTS_NVIEWS; pass++) {
			size_t v = pass % FAULTS_NVIEWS;
			bool off = pass >= FAULTS_NVIEWS;
			if (off && v == 0) {
				PGresult *sr =
				    PQexec(conn, "SET pipeline_cluster.primary_only = off");
				if (PQresultStatus(sr) != PGRES_COMMAND_OK) {
					fprintf(stderr, "faults: SET primary_only at %s: %s",
						n->name, PQresultErrorMessage(sr));
					s->read_errors++;
				}
				PQclear(sr);
			}
			char sql[96], what[160];
			snprintf(sql, sizeof sql, "SELECT * FROM %s", f->vname[v]);
			snprintf(what, sizeof what, "%s at %s%s", f->vname[v], n->name,
				 off ? " (primary_only off)" : "");
			PGresult *r = PQexec(conn, sql);
			if (PQresultStatus(r) != PGRES_TUPLES_OK) {
				fprintf(stderr, "faults: %s failed: %s\n", what,
					PQresultErrorMessage(r));
				s->read_errors++;
			} else {
				s->mismatches += th_compare_results(r, expect[v], key0, 1, what);
			}
			PQclear(r);
		}
		PQfinish(conn);
	}
	for (size_t v = 0; v < FAULTS_NVIEWS; v++)
		PQclear(expect[v]);
}

/* The per-statement counts of s: the generations before plus this one's last check. */
static void faults_sum_counts(th_faults_summary *s, const th_faults_summary *a,
			      const th_faults_summary *b)
{
	s->stmts_acked = a->stmts_acked + b->stmts_acked;
	s->stmts_failed = a->stmts_failed + b->stmts_failed;
	s->stmts_failed_applied = a->stmts_failed_applied + b->stmts_failed_applied;
	s->events_acked = a->events_acked + b->events_acked;
	s->lost = a->lost + b->lost;
	s->doubled = a->doubled + b->doubled;
	s->partial = a->partial + b->partial;
	s->phantom = a->phantom + b->phantom;
	s->mismatches = a->mismatches + b->mismatches;
}

static void faults_assert_stopped(th_faults *f, const char *what)
{
	for (int i = 0; i < f->nclients; i++)
		cr_assert(!f->clients[i].running, "%s with clients running", what);
}

void th_faults_check(th_faults *f, th_faults_summary *s)
{
	faults_assert_stopped(f, "th_faults_check");
	uint64_t max = atomic_load(&f->next) - 1;
	if (max >= f->base + FAULTS_MAX_STMT)
		max = f->base + FAULTS_MAX_STMT - 1;
	th_faults_summary cur = {0};
	s->checks++;
	faults_seen *seen = faults_read_stmts(f, max, &cur);
	if (seen) {
		faults_judge(f, max, seen, &cur);
		free(seen);
	}
	faults_load_oracle(f, max);
	faults_compare_views(f, &cur);
	s->read_errors += cur.read_errors;
	cur.read_errors = 0;
	f->cur = cur;
	faults_sum_counts(s, &f->done, &f->cur);
}

void th_faults_new_generation(th_faults *f)
{
	faults_assert_stopped(f, "th_faults_new_generation");
	th_faults_summary done = f->done;
	faults_sum_counts(&f->done, &done, &f->cur);
	memset(&f->cur, 0, sizeof f->cur);
	PGconn *co = th_connect(th_coord(f->c));
	for (size_t i = 0; i < FAULTS_NVIEWS; i++) {
		char sql[96];
		snprintf(sql, sizeof sql, "DROP CONTINUOUS VIEW %s", f->vname[i]);
		PGresult *r = PQexec(co, sql);
		if (PQresultStatus(r) != PGRES_COMMAND_OK)
			fprintf(stderr, "faults: %s failed (kept): %s", sql,
				PQresultErrorMessage(r));
		PQclear(r);
	}
	PQfinish(co);
	uint64_t next = atomic_load(&f->next);
	uint64_t used = next - f->base;
	memset(f->recs, 0, (used < FAULTS_MAX_STMT ? used : FAULTS_MAX_STMT) * sizeof *f->recs);
	f->base = next;
	f->gen++;
	faults_create_views(f);
	th_run(f->oracle, "TRUNCATE fs");
}

/* ---- the random run ---------------------------------------------------------------------- */

int th_faults_ingest(th_faults *f, PGconn *conn, int node, int nstmts)
{
	tally_buf b = {0};
	int acked = 0;
	for (int i = 0; i < nstmts; i++) {
		uint64_t stmt = th_faults_next_stmt(f);
		bool as_copy = i % 2 == 1, broken;
		th_faults_stmt_text(stmt, as_copy, 0, &b);
		bool ok = as_copy ? faults_exec(conn, th_faults_copy_sql(), (const char *)b.data,
						b.len, FAULTS_STMT_TIMEOUT_MS, &broken)
				  : faults_exec(conn, (const char *)b.data, NULL, 0,
						FAULTS_STMT_TIMEOUT_MS, &broken);
		if (!ok)
			fprintf(stderr, "faults: stmt %llu failed: %s", (unsigned long long)stmt,
				PQerrorMessage(conn));
		th_faults_record(f, stmt, ok ? TH_FAULTS_ACKED : TH_FAULTS_FAILED, node);
		acked += ok;
	}
	tally_buf_free(&b);
	return acked;
}

void th_faults_summary_print(const th_faults_summary *s, FILE *out)
{
	fprintf(out,
		"faults: seed=%llu checks=%d rounds=%d faults(worker=%d coordinator=%d origin=%d) "
		"stmts(acked=%ld failed=%ld failed_applied=%ld) events_acked=%ld lost=%ld "
		"doubled=%ld partial=%ld phantom=%ld mismatching_rows=%ld read_errors=%d "
		"settle_timeouts=%d client_errors=%d outages=%d sigstopped=%d multi_down=%d "
		"detect_timeouts=%d outage_read_errors=%d outage_write_errors=%d "
		"outage_client_errors_origin=%ld outage_client_errors_other=%ld "
		"outage_read_max_ms=%.0f detect_max_ms=%.0f seconds=%.1f\n",
		(unsigned long long)s->seed, s->checks, s->rounds, s->faults_worker,
		s->faults_coordinator, s->faults_origin, s->stmts_acked, s->stmts_failed,
		s->stmts_failed_applied, s->events_acked, s->lost, s->doubled, s->partial,
		s->phantom, s->mismatches, s->read_errors, s->settle_timeouts, s->client_errors,
		s->outages, s->faults_sigstop, s->faults_multi, s->detect_timeouts,
		s->outage_read_errors, s->outage_write_errors, s->outage_client_origin,
		s->outage_client_other, s->outage_read_max_ms, s->detect_max_ms, s->seconds);
	fflush(out);
}

bool th_faults_summary_clean(const th_faults_summary *s)
{
	return s->lost == 0 && s->doubled == 0 && s->partial == 0 && s->phantom == 0 &&
	       s->mismatches == 0 && s->read_errors == 0 && s->settle_timeouts == 0 &&
	       s->client_errors == 0 && s->detect_timeouts == 0 && s->outage_read_errors == 0 &&
	       s->outage_write_errors == 0 && s->outage_client_other == 0;
}

enum { VICTIM_WORKER, VICTIM_COORDINATOR, VICTIM_ORIGIN };

static int faults_pick_kind(const th_faults_opts *o, int round, int order, uint64_t *rng)
{
	/* the first rounds cover every kind once, in an order the seed picks */
	static const int orders[6][3] = {{0, 1, 2}, {0, 2, 1}, {1, 0, 2},
					 {1, 2, 0}, {2, 0, 1}, {2, 1, 0}};
	_Static_assert(VICTIM_WORKER == 0 && VICTIM_COORDINATOR == 1 && VICTIM_ORIGIN == 2,
		       "kind order");
	if (round < 3 && o->coordinator_pct > 0 && o->origin_pct > 0)
		return orders[order % 6][round];
	int p = (int)(faults_rng(rng) % 100);
	if (p < o->coordinator_pct)
		return VICTIM_COORDINATOR;
	if (p < o->coordinator_pct + o->origin_pct)
		return VICTIM_ORIGIN;
	return VICTIM_WORKER;
}

/* ---- outages ---------------------------------------------------------------------------- */

typedef struct faults_down_ctx {
	th_faults *f;
	const int *victims;
	int nvictims;
	int still_up; /* victims still 'up' at the last poll */
} faults_down_ctx;

/* Does the coordinator show every victim as not 'up'? */
static bool faults_down_cond(void *arg)
{
	faults_down_ctx *x = arg;
	th_cluster *c = x->f->c;
	PGconn *conn = th_try_connect(th_coord(c));
	if (!conn)
		return false;
	PGresult *r = PQexec(conn, "SELECT name, state FROM pipeline_cluster.nodes");
	bool ok = PQresultStatus(r) == PGRES_TUPLES_OK;
	x->still_up = ok ? 0 : x->nvictims;
	for (int i = 0; ok && i < PQntuples(r); i++)
		for (int v = 0; v < x->nvictims; v++)
			if (strcmp(PQgetvalue(r, i, 0), c->nodes[x->victims[v]].name) == 0 &&
			    strcmp(PQgetvalue(r, i, 1), "up") == 0)
				x->still_up++;
	PQclear(r);
	PQfinish(conn);
	return ok && x->still_up == 0;
}

/* During an outage, at a live node: every view reads (primary_only = off) and a few
 * statements are acknowledged (sync_receive; recorded, so the check judges them too). */
static void faults_outage_check(th_faults *f, int node, th_faults_summary *s)
{
	th_node *n = &f->c->nodes[node];
	s->outages++;
	PGconn *conn = th_try_connect(n);
	if (!conn) {
		fprintf(stderr, "faults: outage: cannot connect to live node %s\n", n->name);
		s->outage_read_errors++;
		return;
	}
	th_run(conn, "SET pipeline_cluster.primary_only = off");
	th_run(conn, "SET pipeline_cluster.insert_level = 'sync_receive'");
	for (size_t v = 0; v < FAULTS_NVIEWS; v++) {
		char sql[96];
		snprintf(sql, sizeof sql, "SELECT * FROM %s", f->vname[v]);
		int64_t t0 = faults_now_ms();
		PGresult *r = PQexec(conn, sql);
		double ms = (double)(faults_now_ms() - t0);
		if (PQresultStatus(r) != PGRES_TUPLES_OK) {
			fprintf(stderr, "faults: outage: %s at %s failed after %.0f ms: %s", sql,
				n->name, ms, PQresultErrorMessage(r));
			s->outage_read_errors++;
		} else if (ms > s->outage_read_max_ms) {
			s->outage_read_max_ms = ms;
		}
		PQclear(r);
	}
	int acked = th_faults_ingest(f, conn, node, 4);
	if (acked != 4)
		fprintf(stderr, "faults: outage: %d of 4 statements failed at live node %s\n",
			4 - acked, n->name);
	s->outage_write_errors += 4 - acked;
	PQfinish(conn);
}

static int64_t faults_rand_to(uint64_t *rng, int64_t n)
{
	return n > 0 ? (int64_t)(faults_rng(rng) % (uint64_t)n) : 0;
}

/* One outage round: 1..max_down workers down at random moments (max_down when all_down),
 * the outage check, then every victim back and up. force_stop: SIGSTOP the first victim
 * whatever sigstop_pct draws. */
static void faults_outage_round(th_faults *f, const th_faults_opts *o, uint64_t *rng,
				th_faults_summary *s, int64_t t0, bool all_down, bool force_stop)
{
	th_cluster *c = f->c;
	int nworkers = c->nnodes - 1;
	int maxd = o->max_down < nworkers ? o->max_down : nworkers;
	int ndown = all_down ? maxd : 1 + (int)faults_rand_to(rng, maxd);
	int victims[TH_MAX_NODES], nv = 0;
	bool is_victim[TH_MAX_NODES] = {false};
	bool origin = faults_rand_to(rng, 100) < o->origin_pct;
	if (origin) {
		int first = (int)faults_rand_to(rng, o->clients);
		for (int i = 0; i < o->clients && nv == 0; i++) {
			int node = th_faults_client_node(f, (first + i) % o->clients);
			if (node >= 1) {
				victims[nv++] = node;
				is_victim[node] = true;
			}
		}
	}
	while (nv < ndown) {
		int w = 1 + (int)faults_rand_to(rng, nworkers);
		if (!is_victim[w]) {
			victims[nv++] = w;
			is_victim[w] = true;
		}
	}
	bool stop_first = faults_rand_to(rng, 100) < o->sigstop_pct || force_stop;
	for (int i = 0; i < nv; i++) {
		if (i > 0)
			faults_pause_ms((int)faults_rand_to(rng, 400));
		th_node *victim = &c->nodes[victims[i]];
		int sig = i == 0 && stop_first ? SIGSTOP : SIGKILL;
		fprintf(stderr, "faults: round %d: %s %s (%s, %d of %d down)\n", s->rounds + 1,
			sig == SIGSTOP ? "SIGSTOP" : "kill -9", victim->name,
			i == 0 && origin ? "origin" : "worker", i + 1, nv);
		atomic_fetch_or(&f->down_mask, 1u << victims[i]);
		th_kill_node(c, victim, sig);
		s->faults_sigstop += sig == SIGSTOP;
		s->faults_worker += sig == SIGKILL && !(i == 0 && origin);
		s->faults_origin += sig == SIGKILL && i == 0 && origin;
	}
	s->rounds++;
	s->faults_multi += nv > 1;

	faults_down_ctx dx = {.f = f, .victims = victims, .nvictims = nv};
	int64_t tk = faults_now_ms();
	if (!th_wait_until(faults_down_cond, &dx, 15000)) {
		fprintf(stderr,
			"faults: outage: %d of %d victims still 'up' at the coordinator "
			"15 s after going down\n",
			dx.still_up, nv);
		s->detect_timeouts += dx.still_up > 0 ? dx.still_up : nv;
	} else {
		double ms = (double)(faults_now_ms() - tk);
		fprintf(stderr, "faults: outage: all down at the coordinator after %.0f ms\n", ms);
		if (ms > s->detect_max_ms)
			s->detect_max_ms = ms;
	}
	/* a live node: the coordinator or a worker that is not a victim */
	int live[TH_MAX_NODES], nlive = 0;
	for (int i = 0; i < c->nnodes; i++)
		if (!is_victim[i])
			live[nlive++] = i;
	faults_outage_check(f, live[faults_rand_to(rng, nlive)], s);
	faults_pause_ms((int)faults_rand_to(rng, o->max_down_ms + 1));

	for (int i = 0; i < nv; i++) {
		th_node *victim = &c->nodes[victims[i]];
		if (victim->stopped)
			th_kill_node(c, victim, SIGCONT);
		else
			th_restart_node(c, victim);
	}
	if (!th_faults_wait_up(f, 30000)) {
		th_faults_stop_clients(f);
		s->seconds = (double)(faults_now_ms() - t0) / 1000.0;
		th_faults_summary_print(s, stderr);
		cr_assert_fail("workers not up 30 s after an outage of %d workers", nv);
	}
	atomic_store(&f->down_mask, 0);
}

void th_faults_run(th_faults *f, const th_faults_opts *opts, th_faults_summary *s)
{
	th_faults_opts o = *opts;
	if (o.rounds <= 0)
		o.rounds = 12;
	if (o.clients <= 0)
		o.clients = 4;
	if (!o.insert_level)
		o.insert_level = "sync_receive";
	if (o.coordinator_pct <= 0 && o.origin_pct <= 0) {
		o.coordinator_pct = 20;
		o.origin_pct = 25;
	}
	if (o.max_down_ms <= 0)
		o.max_down_ms = 1000;
	if (!o.seed)
		o.seed = (uint64_t)tally_now_us();
	cr_assert(o.replicas == 0 || o.replicas == f->replicas,
		  "opts.replicas %d, but the engine's views have num_replicas %d", o.replicas,
		  f->replicas);
	cr_assert(o.workers == 0 || o.workers == f->c->nnodes - 1,
		  "opts.workers %d, but the cluster has %d", o.workers, f->c->nnodes - 1);
	cr_assert(o.max_down >= 0 && o.sigstop_pct >= 0 && o.sigstop_pct <= 100,
		  "max_down %d, sigstop_pct %d", o.max_down, o.sigstop_pct);
	memset(s, 0, sizeof *s);
	s->seed = o.seed;
	uint64_t rng = faults_mix(o.seed) | 1;
	int64_t t0 = faults_now_ms();
	th_cluster *c = f->c;
	int order = (int)(faults_rng(&rng) % 6);
	do {
		if (s->checks > 0)
			th_faults_new_generation(f);
		th_faults_start_clients(f, o.clients, o.insert_level, faults_mix(rng));
		int stopped_before = s->faults_sigstop;
		for (int round = 0; round < o.rounds; round++) {
			faults_pause_ms(300 + (int)(faults_rng(&rng) % 1200));
			if (o.max_down >= 1) {
				/* every cycle has max_down workers down at once in its first
				 * round and, with sigstop_pct, a hung node by its last */
				bool last = round == o.rounds - 1;
				faults_outage_round(f, &o, &rng, s, t0, round == 0,
						    last && o.sigstop_pct > 0 &&
							s->faults_sigstop == stopped_before);
				continue;
			}
			int kind = faults_pick_kind(&o, s->rounds, order, &rng);
			th_node *victim = NULL;
			if (kind == VICTIM_ORIGIN) {
				/* a random client's node; the next client's if it is between
				 * connections */
				int first = (int)(faults_rng(&rng) % (uint64_t)o.clients),
				    node = -1;
				for (int i = 0; i < o.clients && node < 0; i++)
					node = th_faults_client_node(f, (first + i) % o.clients);
				if (node >= 0)
					victim = &c->nodes[node];
				else
					kind = VICTIM_WORKER;
			}
			if (kind == VICTIM_COORDINATOR)
				victim = th_coord(c);
			if (kind == VICTIM_WORKER)
				victim = th_worker(
				    c, 1 + (int)(faults_rng(&rng) % (uint64_t)(c->nnodes - 1)));
			int down_ms = (int)(faults_rng(&rng) % (uint64_t)(o.max_down_ms + 1));
			fprintf(stderr, "faults: round %d: kill -9 %s (%s), down %d ms\n",
				s->rounds + 1, victim->name,
				kind == VICTIM_ORIGIN	     ? "origin"
				: kind == VICTIM_COORDINATOR ? "coordinator"
							     : "worker",
				down_ms);
			th_kill_node(c, victim, SIGKILL);
			faults_pause_ms(down_ms);
			th_restart_node(c, victim);
			s->rounds++;
			s->faults_worker += kind == VICTIM_WORKER;
			s->faults_coordinator += kind == VICTIM_COORDINATOR;
			s->faults_origin += kind == VICTIM_ORIGIN;
			if (!th_faults_wait_up(f, 30000)) {
				th_faults_stop_clients(f);
				s->seconds = (double)(faults_now_ms() - t0) / 1000.0;
				th_faults_summary_print(s, stderr);
				cr_assert_fail("workers not up 30 s after restarting %s",
					       victim->name);
			}
		}
		th_faults_stop_clients(f);
		s->client_errors += faults_clients_gave_up(f);
		s->outage_client_origin += atomic_exchange(&f->out_origin, 0);
		s->outage_client_other += atomic_exchange(&f->out_other, 0);
		if (!th_faults_settle(f, 60000))
			s->settle_timeouts++;
		th_faults_check(f, s);
		s->seconds = (double)(faults_now_ms() - t0) / 1000.0;
		th_faults_summary_print(s, stderr);
	} while (o.minutes > 0 && s->seconds < o.minutes * 60.0);
}

void th_faults_assert_clean(const th_faults_summary *s, const char *when, bool print)
{
	if (print)
		th_faults_summary_print(s, stderr);
	cr_assert(th_faults_summary_clean(s),
		  "%s: lost %ld, doubled %ld, partial %ld, phantom %ld, mismatching rows %ld, "
		  "read errors %d, settle timeouts %d, client errors %d, not detected %d, outage "
		  "read errors %d, outage write errors %d, outage client errors at live nodes %ld "
		  "(seed %llu)",
		  when, s->lost, s->doubled, s->partial, s->phantom, s->mismatches, s->read_errors,
		  s->settle_timeouts, s->client_errors, s->detect_timeouts, s->outage_read_errors,
		  s->outage_write_errors, s->outage_client_other, (unsigned long long)s->seed);
}

uint64_t th_faults_seed(void)
{
	const char *e = getenv("TALLY_FAULT_SEED");
	if (e && *e)
		return strtoull(e, NULL, 10);
	return (uint64_t)tally_now_us();
}
