/*
 * replication.c - replica copies hold the data and serve reads (DESIGN §6, §7, §8): with a
 * worker killed, reads with primary_only = off are still exact (its shards served by their
 * replicas), primary_only = on fails naming its shards or skips them with a WARNING; a
 * replica that was down catches up from its primary's log (no snapshot) or, when it fell
 * further behind than pipeline_cluster.replication_buffer, by a snapshot, and is exact after
 * either; a `sync` view loses nothing acknowledged when a worker's disk is lost for good and
 * pipeline_cluster.remove_node promotes its replicas; a hung (SIGSTOPped) replica holder of a
 * `sync` view holds writes up only until it is marked down.
 *
 * Every test ingests rows from a deterministic generator into one stream and keeps the
 * expected view (count, sum, min, max per group) in C, so checks are exact. Groups are
 * (k integer, g text) with g a padded function of k, which makes change records large
 * enough to overflow a 1MB replication buffer quickly. The shard of a group is computed
 * here the way nodes compute it (tally_key_encode, tally_group_hash, tally_ring_shard_of),
 * so partial reads can be checked exactly too.
 */
#include "harness.h"
#include "tally/group.h"
#include "tally/ring.h"
#include "tally/types.h"

#include <criterion/criterion.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <pthread.h>
#include <string.h>
#include <time.h>

#define NSHARDS 6
#define PAD "-abcdefghijklmnopqrstuvwxyz0123456789abcd"

/* ---- the expected view -------------------------------------------------------------------- */

typedef struct model {
	int nk; /* keys are 0 .. nk-1 */
	int64_t *cnt, *sum, *lo, *hi;
	uint8_t *shard; /* shard of key k's group */
} model;

static void group_text(int k, char *out, size_t outsz)
{
	snprintf(out, outsz, "grp-%07d" PAD, k);
}

static model *model_alloc(int nk)
{
	model *m = calloc(1, sizeof *m);
	cr_assert(m);
	m->nk = nk;
	m->cnt = calloc((size_t)nk, sizeof(int64_t));
	m->sum = calloc((size_t)nk, sizeof(int64_t));
	m->lo = calloc((size_t)nk, sizeof(int64_t));
	m->hi = calloc((size_t)nk, sizeof(int64_t));
	m->shard = calloc((size_t)nk, 1);
	cr_assert(m->cnt && m->sum && m->lo && m->hi && m->shard);
	tally_buf b = {0};
	for (int k = 0; k < nk; k++) {
		char g[96];
		group_text(k, g, sizeof g);
		tally_buf_reset(&b);
		tally_value kv = tally_int(TALLY_T_INT4, k);
		tally_value gv = tally_text(g, (uint32_t)strlen(g));
		tally_key_encode(&kv, &b);
		tally_key_encode(&gv, &b);
		m->shard[k] =
		    (uint8_t)tally_ring_shard_of(tally_group_hash(b.data, b.len), NSHARDS);
	}
	tally_buf_free(&b);
	return m;
}

static void model_free(model *m)
{
	if (!m)
		return;
	free(m->cnt);
	free(m->sum);
	free(m->lo);
	free(m->hi);
	free(m->shard);
	free(m);
}

static uint64_t mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* One statement: its rows, a pure function of (id, nrows, allowed shards). */
typedef struct stmt {
	int n;
	int *k;
	int64_t *v;
	tally_buf text; /* COPY text data */
} stmt;

/* Build statement id with nrows rows whose groups are in shards allowed[] (NULL: any). */
static void stmt_build(stmt *s, const model *m, uint64_t id, int nrows, const bool *allowed)
{
	s->n = nrows;
	s->k = realloc(s->k, (size_t)nrows * sizeof *s->k);
	s->v = realloc(s->v, (size_t)nrows * sizeof *s->v);
	cr_assert(s->k && s->v);
	tally_buf_reset(&s->text);
	uint64_t draw = 0;
	for (int j = 0; j < nrows; j++) {
		int k;
		do {
			k = (int)(mix64(id * 1000003u + draw++) % (uint64_t)m->nk);
		} while (allowed && !allowed[m->shard[k]]);
		int64_t v = (int64_t)(mix64(id ^ ((uint64_t)j << 32) ^ 0x5555u) % 20001) - 10000;
		s->k[j] = k;
		s->v[j] = v;
		char g[96];
		group_text(k, g, sizeof g);
		tally_buf_printf(&s->text, "%d\t%s\t%lld\n", k, g, (long long)v);
	}
}

static void stmt_free(stmt *s)
{
	free(s->k);
	free(s->v);
	tally_buf_free(&s->text);
}

static void model_apply(model *m, const stmt *s)
{
	for (int j = 0; j < s->n; j++) {
		int k = s->k[j];
		int64_t v = s->v[j];
		if (m->cnt[k] == 0 || v < m->lo[k])
			m->lo[k] = v;
		if (m->cnt[k] == 0 || v > m->hi[k])
			m->hi[k] = v;
		m->cnt[k]++;
		m->sum[k] += v;
	}
}

#define COPY_SQL "COPY s (k, g, v) FROM STDIN"

/* Send s; returns the result (caller PQclears). */
static PGresult *stmt_send(PGconn *conn, const stmt *s)
{
	return th_copy_in(conn, COPY_SQL, (const char *)s->text.data, s->text.len, 0);
}

/* Send s, assert it is acknowledged, and count it. */
static void stmt_ok(PGconn *conn, model *m, const stmt *s)
{
	PGresult *r = stmt_send(conn, s);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "COPY failed: %s",
		     PQresultErrorMessage(r));
	char tag[32];
	snprintf(tag, sizeof tag, "COPY %d", s->n);
	cr_assert_str_eq(PQcmdStatus(r), tag);
	PQclear(r);
	model_apply(m, s);
}

/* Ingest nstmts statements of nrows rows (ids from *next_id on) and count them all. */
static void ingest(PGconn *conn, model *m, uint64_t *next_id, int nstmts, int nrows,
		   const bool *allowed)
{
	stmt s = {0};
	for (int i = 0; i < nstmts; i++) {
		stmt_build(&s, m, (*next_id)++, nrows, allowed);
		stmt_ok(conn, m, &s);
	}
	stmt_free(&s);
}

static void create_schema(PGconn *co, const char *with)
{
	th_run(co, "CREATE STREAM s (k integer, g text, v bigint)");
	th_runf(co,
		"CREATE CONTINUOUS VIEW v WITH (num_shards = %d, num_replicas = 1%s) AS "
		"SELECT k, g, count(*) AS n, sum(v) AS total, min(v) AS lo, max(v) AS hi "
		"FROM s GROUP BY k, g",
		NSHARDS, with);
}

/*
 * Read the whole view at conn and compare with the model restricted to shards only[] (NULL:
 * all): every expected group once with exact values, nothing else. Returns the number of
 * differences (printing the first few, labelled what); a failed read counts as one.
 */
static int view_diff(PGconn *conn, const model *m, const bool *only, const char *what)
{
	PGresult *r = PQexec(conn, "SELECT k, g, n, total, lo, hi FROM v");
	if (PQresultStatus(r) != PGRES_TUPLES_OK) {
		fprintf(stderr, "%s: read failed: %s", what, PQresultErrorMessage(r));
		PQclear(r);
		return 1;
	}
	uint8_t *seen = calloc((size_t)m->nk, 1);
	cr_assert(seen);
	int bad = 0;
	for (int i = 0; i < PQntuples(r); i++) {
		int k = atoi(PQgetvalue(r, i, 0));
		char want[6][96];
		bool exp_row = k >= 0 && k < m->nk && m->cnt[k] > 0 && (!only || only[m->shard[k]]);
		if (exp_row) {
			snprintf(want[0], sizeof want[0], "%d", k);
			group_text(k, want[1], sizeof want[1]);
			snprintf(want[2], sizeof want[2], "%lld", (long long)m->cnt[k]);
			snprintf(want[3], sizeof want[3], "%lld", (long long)m->sum[k]);
			snprintf(want[4], sizeof want[4], "%lld", (long long)m->lo[k]);
			snprintf(want[5], sizeof want[5], "%lld", (long long)m->hi[k]);
		}
		bool ok = exp_row && !seen[k];
		for (int c = 0; ok && c < 6; c++)
			ok = strcmp(PQgetvalue(r, i, c), want[c]) == 0;
		if (!ok) {
			if (bad < 5)
				fprintf(
				    stderr, "%s: row k=%s n=%s total=%s lo=%s hi=%s; expected %s\n",
				    what, PQgetvalue(r, i, 0), PQgetvalue(r, i, 2),
				    PQgetvalue(r, i, 3), PQgetvalue(r, i, 4), PQgetvalue(r, i, 5),
				    !exp_row  ? "no such group"
				    : seen[k] ? "it once"
					      : "different values");
			if (exp_row && !seen[k] && bad < 5)
				fprintf(stderr, "%s:   expected n=%s total=%s lo=%s hi=%s\n", what,
					want[2], want[3], want[4], want[5]);
			bad++;
		}
		if (k >= 0 && k < m->nk)
			seen[k] = 1;
	}
	for (int k = 0; k < m->nk; k++) {
		if (m->cnt[k] > 0 && (!only || only[m->shard[k]]) && !seen[k]) {
			if (bad < 5)
				fprintf(stderr, "%s: group k=%d (shard v_%d, n=%lld) is missing\n",
					what, k, m->shard[k], (long long)m->cnt[k]);
			bad++;
		}
	}
	free(seen);
	PQclear(r);
	return bad;
}

static int64_t model_groups(const model *m, const bool *only)
{
	int64_t n = 0;
	for (int k = 0; k < m->nk; k++)
		n += m->cnt[k] > 0 && (!only || only[m->shard[k]]);
	return n;
}

/* Assert the full view is exact at conn with primary_only off (replicas allowed). */
static void assert_exact(PGconn *conn, const model *m, const char *what)
{
	th_run(conn, "SET pipeline_cluster.primary_only = off");
	int d = view_diff(conn, m, NULL, what);
	cr_assert_eq(d, 0, "%s: %d rows differ from the %lld expected groups", what, d,
		     (long long)model_groups(m, NULL));
}

/* ---- cluster state ------------------------------------------------------------------------- */

static const th_opts fast = {.sets = {"pipeline_cluster.failure_timeout=600ms",
				      "pipeline_cluster.heartbeat_interval=100ms", NULL}};
static const th_opts fast_small_buffer = {
    .sets = {"pipeline_cluster.failure_timeout=600ms", "pipeline_cluster.heartbeat_interval=100ms",
	     "pipeline_cluster.replication_buffer=1MB", NULL}};

static char last_why[512]; /* why the last wait condition was false */

static void wait_state(th_node *at, const char *name, const char *want)
{
	th_wait_node_state(at, name, want, 15000);
}

/* Every running node's map shows name in state want. */
static void wait_state_everywhere(th_cluster *c, const char *name, const char *want)
{
	for (int i = 0; i < c->nnodes; i++)
		if (c->nodes[i].pid > 0 && !c->nodes[i].stopped)
			wait_state(&c->nodes[i], name, want);
}

typedef struct settle_ctx {
	th_cluster *c;
	int want_rows; /* pipeline_cluster.replication rows expected at the coordinator */
} settle_ctx;

/* Every running node's outbox is empty, no copy holds hints (all handed off), and every
 * replication row is streaming with no lag and applied_lsn = primary_lsn. */
static bool settled(void *p)
{
	settle_ctx *x = p;
	for (int i = 0; i < x->c->nnodes; i++) {
		th_node *n = &x->c->nodes[i];
		if (n->pid <= 0 || n->stopped)
			continue;
		PGconn *conn = th_try_connect(n);
		if (!conn) {
			snprintf(last_why, sizeof last_why, "%s does not accept connections",
				 n->name);
			return false;
		}
		PGresult *r = PQexec(conn, "SELECT count(*) FROM pipeline_cluster.outbox");
		bool ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 &&
			  strcmp(PQgetvalue(r, 0, 0), "0") == 0;
		if (!ok)
			snprintf(last_why, sizeof last_why, "%s: outbox not empty (%s%s)", n->name,
				 PQntuples(r) == 1 ? PQgetvalue(r, 0, 0) : "",
				 PQresultErrorMessage(r));
		PQclear(r);
		if (ok && n->is_coordinator) {
			r = PQexec(conn, "SELECT count(*) FROM pipeline_cluster.hints");
			ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 &&
			     strcmp(PQgetvalue(r, 0, 0), "0") == 0;
			if (!ok)
				snprintf(last_why, sizeof last_why, "hints not handed off (%s%s)",
					 PQntuples(r) == 1 ? PQgetvalue(r, 0, 0) : "",
					 PQresultErrorMessage(r));
			PQclear(r);
		}
		if (ok && n->is_coordinator) {
			r = PQexec(conn, "SELECT shard, replica, state, primary_lsn, applied_lsn, "
					 "lag_records FROM pipeline_cluster.replication");
			ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == x->want_rows;
			if (!ok)
				snprintf(last_why, sizeof last_why,
					 "replication has %d rows, not %d %s",
					 PQresultStatus(r) == PGRES_TUPLES_OK ? PQntuples(r) : -1,
					 x->want_rows, PQresultErrorMessage(r));
			for (int j = 0; ok && j < PQntuples(r); j++) {
				ok = strcmp(PQgetvalue(r, j, 2), "streaming") == 0 &&
				     strcmp(PQgetvalue(r, j, 5), "0") == 0 &&
				     strcmp(PQgetvalue(r, j, 3), PQgetvalue(r, j, 4)) == 0;
				if (!ok)
					snprintf(last_why, sizeof last_why,
						 "%s on %s: %s, primary_lsn %s applied_lsn %s lag "
						 "%s",
						 PQgetvalue(r, j, 0), PQgetvalue(r, j, 1),
						 PQgetvalue(r, j, 2), PQgetvalue(r, j, 3),
						 PQgetvalue(r, j, 4), PQgetvalue(r, j, 5));
			}
			PQclear(r);
		}
		PQfinish(conn);
		if (!ok)
			return false;
	}
	return true;
}

static bool outboxes_empty(void *p)
{
	th_cluster *c = p;
	for (int i = 0; i < c->nnodes; i++) {
		th_node *n = &c->nodes[i];
		if (n->pid <= 0 || n->stopped)
			continue;
		PGconn *conn = th_try_connect(n);
		if (!conn)
			return false;
		PGresult *r = PQexec(conn, "SELECT count(*) FROM pipeline_cluster.outbox");
		bool ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 &&
			  strcmp(PQgetvalue(r, 0, 0), "0") == 0;
		PQclear(r);
		PQfinish(conn);
		if (!ok)
			return false;
	}
	return true;
}

static void wait_outboxes_empty(th_cluster *c)
{
	cr_assert(th_wait_until(outboxes_empty, c, 30000), "outboxes did not empty");
}

static void wait_settled(th_cluster *c, int want_rows, const char *when)
{
	settle_ctx x = {c, want_rows};
	last_why[0] = 0;
	if (!th_wait_until(settled, &x, 30000)) {
		PGconn *co = th_try_connect(th_coord(c));
		if (co) {
			PGresult *r = PQexec(co, "SELECT * FROM pipeline_cluster.replication");
			for (int i = 0; PQresultStatus(r) == PGRES_TUPLES_OK && i < PQntuples(r);
			     i++) {
				fprintf(stderr, " ");
				for (int j = 0; j < PQnfields(r); j++)
					fprintf(stderr, " %s=%s", PQfname(r, j),
						PQgetvalue(r, i, j));
				fprintf(stderr, "\n");
			}
			PQclear(r);
			PQfinish(co);
		}
		cr_assert_fail("%s: not settled within 30 s: %s", when, last_why);
	}
}

static int worker_index(th_cluster *c, const char *name)
{
	for (int i = 1; i < c->nnodes; i++)
		if (strcmp(c->nodes[i].name, name) == 0)
			return i;
	cr_assert_fail("no worker %s", name);
	return -1;
}

/* Placement of view v at conn: prim[s] and repl[s] are worker indexes. */
static void placement(th_cluster *c, PGconn *conn, int *prim, int *repl)
{
	PGresult *r = th_exec_ok(conn, "SELECT shard_id, owner, shard_type FROM "
				       "pipeline_cluster.shards WHERE continuous_view = 'v'");
	cr_assert_eq(PQntuples(r), 2 * NSHARDS);
	for (int s = 0; s < NSHARDS; s++)
		prim[s] = repl[s] = -1;
	for (int i = 0; i < PQntuples(r); i++) {
		int s = atoi(PQgetvalue(r, i, 0));
		cr_assert(s >= 0 && s < NSHARDS);
		int w = worker_index(c, PQgetvalue(r, i, 1));
		if (strcmp(PQgetvalue(r, i, 2), "primary") == 0)
			prim[s] = w;
		else
			repl[s] = w;
	}
	PQclear(r);
	for (int s = 0; s < NSHARDS; s++)
		cr_assert(prim[s] > 0 && repl[s] > 0 && prim[s] != repl[s], "v_%d placement", s);
}

/* snapshots of the replication rows whose replica is name: min and max over them. */
static int repl_snapshots(PGconn *co, const char *replica, int64_t *min, int64_t *max)
{
	PGresult *r = th_exec_okf(co,
				  "SELECT shard, snapshots FROM pipeline_cluster.replication "
				  "WHERE replica = '%s'",
				  replica);
	int n = PQntuples(r);
	*min = INT64_MAX;
	*max = INT64_MIN;
	for (int i = 0; i < n; i++) {
		cr_assert(!PQgetisnull(r, i, 1), "%s: snapshots is NULL", PQgetvalue(r, i, 0));
		int64_t v = atoll(PQgetvalue(r, i, 1));
		*min = v < *min ? v : *min;
		*max = v > *max ? v : *max;
	}
	PQclear(r);
	return n;
}

/* Collected notices (WARNINGs) of a connection. */
typedef struct notices {
	char text[2048];
	int n;
} notices;

static void notice_cb(void *arg, const PGresult *r)
{
	notices *x = arg;
	const char *sev = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
	const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
	size_t len = strlen(x->text);
	snprintf(x->text + len, sizeof x->text - len, "%s%s: %s", x->n ? "\n" : "", sev ? sev : "?",
		 msg ? msg : "");
	x->n++;
}

/* The shard ids listed after prefix in msg ("v_1, v_4"), as a set. */
static int parse_shards(const char *msg, const char *prefix, bool *set)
{
	for (int s = 0; s < NSHARDS; s++)
		set[s] = false;
	const char *p = strstr(msg, prefix);
	if (!p)
		return -1;
	p += strlen(prefix);
	int n = 0;
	for (;;) {
		int s, used = 0;
		if (sscanf(p, "v_%d%n", &s, &used) != 1 || s < 0 || s >= NSHARDS)
			return -1;
		set[s] = true;
		n++;
		p += used;
		if (strncmp(p, ", ", 2) != 0)
			break;
		p += 2;
	}
	return n;
}

/* ---- 1. replicas hold the data; reads fail over ------------------------------------------- */

Test(replication, replicas_serve_reads_of_a_dead_worker, .fini = th_fini, .timeout = 120)
{
	th_cluster *c = th_cluster_start(3, &fast);
	PGconn *co = th_connect(th_coord(c));
	create_schema(co, "");
	model *m = model_alloc(3000);
	uint64_t id = 1;
	ingest(co, m, &id, 8, 600, NULL);
	int prim[NSHARDS], repl[NSHARDS];
	placement(c, co, prim, repl);
	wait_settled(c, NSHARDS, "after the first ingest");
	th_run(co, "SET pipeline_cluster.primary_only = on");
	cr_assert_eq(view_diff(co, m, NULL, "all up, primaries"), 0);

	for (int w = 1; w <= 3; w++) {
		th_node *dead = th_worker(c, w);
		th_node *other = th_worker(c, w % 3 + 1);
		bool mine[NSHARDS];
		int nmine = 0;
		for (int s = 0; s < NSHARDS; s++)
			nmine += mine[s] = prim[s] == w;
		cr_assert_gt(nmine, 0, "%s has no primary", dead->name);
		bool rest[NSHARDS];
		for (int s = 0; s < NSHARDS; s++)
			rest[s] = !mine[s];
		cr_assert_gt(model_groups(m, mine), 0, "no data on %s's shards", dead->name);

		th_kill_node(c, dead, SIGKILL);
		wait_state(th_coord(c), dead->name, "down");
		wait_state(other, dead->name, "down");

		PGconn *readers[2] = {co, th_connect(other)};
		const char *rname[2] = {"coordinator", other->name};
		for (int i = 0; i < 2; i++) {
			PGconn *rc = readers[i];
			char what[128];
			snprintf(what, sizeof what, "%s down, read at %s, primary_only off",
				 dead->name, rname[i]);
			assert_exact(rc, m, what);

			/* primary_only: the dead node's shards have no copy to read */
			th_run(rc, "SET pipeline_cluster.primary_only = on");
			PGresult *r = th_exec_err(rc, "SELECT k, n FROM v", "57P03");
			const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
			int s = -1;
			cr_assert(msg && sscanf(msg, "shard v_%d is unavailable", &s) == 1,
				  "%s: error %s", what, msg);
			cr_assert(s >= 0 && s < NSHARDS && mine[s],
				  "%s: the error names v_%d, not a shard of %s: %s", what, s,
				  dead->name, msg);
			char want[64];
			snprintf(want, sizeof want, "its primary %s is down", dead->name);
			cr_assert(strstr(msg, want), "%s: %s", what, msg);
			PQclear(r);

			/* skip_unavailable: the other shards, exactly, and a WARNING naming the
			 * skipped ones */
			notices nt = {{0}, 0};
			PQnoticeReceiver old = PQsetNoticeReceiver(rc, notice_cb, &nt);
			th_run(rc, "SET pipeline_cluster.skip_unavailable = on");
			nt.text[0] = 0;
			nt.n = 0;
			snprintf(what, sizeof what, "%s down, read at %s, skip_unavailable",
				 dead->name, rname[i]);
			int d = view_diff(rc, m, rest, what);
			cr_assert_eq(d, 0, "%s: %d rows differ", what, d);
			cr_assert_eq(nt.n, 1, "%s: %d notices: %s", what, nt.n, nt.text);
			cr_assert(strncmp(nt.text, "WARNING: ", 9) == 0, "%s: %s", what, nt.text);
			bool skipped[NSHARDS];
			cr_assert_eq(parse_shards(nt.text, "skipped unavailable shards: ", skipped),
				     nmine, "%s: %s", what, nt.text);
			for (int k = 0; k < NSHARDS; k++)
				cr_assert_eq(skipped[k], mine[k], "%s: v_%d in %s", what, k,
					     nt.text);
			PQsetNoticeReceiver(rc, old, NULL);
			th_run(rc, "RESET pipeline_cluster.skip_unavailable");
			th_run(rc, "RESET pipeline_cluster.primary_only");

			/* reachable is false exactly for the dead node's copies */
			r = th_exec_ok(rc, "SELECT owner, reachable FROM pipeline_cluster.shards "
					   "WHERE continuous_view = 'v'");
			cr_assert_eq(PQntuples(r), 2 * NSHARDS);
			for (int k = 0; k < PQntuples(r); k++)
				cr_assert_str_eq(PQgetvalue(r, k, 1),
						 strcmp(PQgetvalue(r, k, 0), dead->name) == 0 ? "f"
											      : "t",
						 "%s: copy on %s reachable=%s", what,
						 PQgetvalue(r, k, 0), PQgetvalue(r, k, 1));
			PQclear(r);
			cr_assert_eq(th_query_intf(rc,
						   "SELECT count(*) FROM pipeline_cluster.nodes "
						   "WHERE name = '%s' AND NOT reachable",
						   dead->name),
				     1, "%s: nodes.reachable", what);
		}
		PQfinish(readers[1]);

		th_restart_node(c, dead);
		wait_state_everywhere(c, dead->name, "up");
		wait_settled(c, NSHARDS, "after a restart");
		th_run(co, "SET pipeline_cluster.primary_only = on");
		cr_assert_eq(view_diff(co, m, NULL, "after a restart, primaries"), 0);
	}
	model_free(m);
	PQfinish(co);
	th_cluster_stop(c);
}

/* ---- 2, 3. catch-up by log and by snapshot ------------------------------------------------ */

/*
 * Kill the worker holding replicas `victim`, ingest (at sync_receive) nstmts statements of
 * nrows rows into the shards it replicates, restart it, settle, and check: its streams' snapshot
 * counts (want_snapshots: 0 exactly, or at least 1), then its copies are exact: read at the
 * victim itself (local copies first), then with each primary of a shard it replicates killed
 * in turn, at the victim and at the coordinator.
 */
static void catch_up(th_cluster *c, model *m, int victim, int nstmts, int nrows,
		     bool want_snapshots)
{
	PGconn *co = th_connect(th_coord(c));
	uint64_t id = 1;
	ingest(co, m, &id, 4, 500, NULL);
	int prim[NSHARDS], repl[NSHARDS];
	placement(c, co, prim, repl);
	th_node *vn = th_worker(c, victim);
	bool held[NSHARDS];
	int nheld = 0;
	for (int s = 0; s < NSHARDS; s++)
		nheld += held[s] = repl[s] == victim;
	cr_assert_gt(nheld, 0, "%s holds no replica", vn->name);
	wait_settled(c, NSHARDS, "before the kill");
	int64_t smin, smax;
	cr_assert_eq(repl_snapshots(co, vn->name, &smin, &smax), nheld);

	th_kill_node(c, vn, SIGKILL);
	wait_state(th_coord(c), vn->name, "down");
	th_run(co, "SET pipeline_cluster.insert_level = sync_receive");
	ingest(co, m, &id, nstmts, nrows, held);
	ingest(co, m, &id, 2, 500, NULL); /* and some everywhere */
	/* the rows are at their primaries (or held as hints) before the victim returns */
	wait_outboxes_empty(c);
	th_restart_node(c, vn);
	wait_state_everywhere(c, vn->name, "up");
	wait_settled(c, NSHARDS, "after the restart");
	cr_assert_eq(repl_snapshots(co, vn->name, &smin, &smax), nheld);
	if (want_snapshots)
		cr_assert_geq(smin, 1, "a stream to %s caught up without a snapshot", vn->name);
	else
		cr_assert_eq(smax, 0, "a stream to %s needed %lld snapshots", vn->name,
			     (long long)smax);

	PGconn *vc = th_connect(vn);
	assert_exact(vc, m, "at the restarted replica holder, all up");
	for (int w = 1; w <= 3; w++) {
		bool is_prim = false;
		for (int s = 0; s < NSHARDS; s++)
			is_prim |= held[s] && prim[s] == w;
		if (!is_prim)
			continue;
		th_node *pn = th_worker(c, w);
		th_kill_node(c, pn, SIGKILL);
		wait_state(th_coord(c), pn->name, "down");
		wait_state(vn, pn->name, "down");
		char what[128];
		snprintf(what, sizeof what, "primary %s down, read at %s", pn->name, vn->name);
		assert_exact(vc, m, what);
		snprintf(what, sizeof what, "primary %s down, read at the coordinator", pn->name);
		assert_exact(co, m, what);
		th_restart_node(c, pn);
		wait_state_everywhere(c, pn->name, "up");
	}
	wait_settled(c, NSHARDS, "at the end");
	th_run(co, "SET pipeline_cluster.primary_only = on");
	cr_assert_eq(view_diff(co, m, NULL, "at the end, primaries"), 0);
	PQfinish(vc);
	PQfinish(co);
}

Test(replication, replica_catches_up_by_log, .fini = th_fini, .timeout = 120)
{
	th_cluster *c = th_cluster_start(3, &fast);
	PGconn *co = th_connect(th_coord(c));
	create_schema(co, "");
	PQfinish(co);
	model *m = model_alloc(5000);
	catch_up(c, m, 2, 10, 400, false);
	model_free(m);
	th_cluster_stop(c);
}

Test(replication, replica_catches_up_by_snapshot, .fini = th_fini, .timeout = 120)
{
	th_cluster *c = th_cluster_start(3, &fast_small_buffer);
	PGconn *co = th_connect(th_coord(c));
	create_schema(co, "");
	PQfinish(co);
	/* ~120k mostly distinct groups of ~60-byte keys into the two or so shards the victim
	 * replicates: several MB of change records per shard, well over 1MB */
	model *m = model_alloc(1000000);
	catch_up(c, m, 2, 40, 3000, true);
	model_free(m);
	th_cluster_stop(c);
}

/* ---- 4. sync survives a lost disk --------------------------------------------------------- */

Test(replication, sync_view_survives_a_lost_disk, .fini = th_fini, .timeout = 120)
{
	th_cluster *c = th_cluster_start(3, &fast);
	PGconn *co = th_connect(th_coord(c));
	create_schema(co, ", replication = 'sync'");
	model *m = model_alloc(4000);
	uint64_t id = 1;
	/* every statement acknowledged at sync_commit: on the primaries and their replicas */
	ingest(co, m, &id, 10, 500, NULL);
	int prim[NSHARDS], repl[NSHARDS];
	placement(c, co, prim, repl);
	const int victim = 2;
	th_node *vn = th_worker(c, victim);

	/* no wait for replication to settle: sync acknowledged means replicated */
	th_kill_node(c, vn, SIGKILL);
	th_rmtree(vn->dir);
	wait_state(th_coord(c), vn->name, "down");
	th_run(co, "SELECT pipeline_cluster.remove_node('w2')");
	cr_assert_eq(th_query_int(co, "SELECT count(*) FROM pipeline_cluster.shards WHERE owner "
				      "= 'w2'"),
		     0);
	th_run(co, "SET pipeline_cluster.primary_only = on");
	cr_assert_eq(view_diff(co, m, NULL, "after remove_node, primaries"), 0,
		     "acknowledged rows lost with w2's disk");
	assert_exact(co, m, "after remove_node, any copy");

	/* keep ingesting: the promoted primaries replicate to the new copies */
	ingest(co, m, &id, 6, 500, NULL);
	wait_settled(c, NSHARDS, "after remove_node");
	PGresult *r = th_exec_ok(co, "SELECT shard_id, \"primary\", replica, snapshots FROM "
				     "pipeline_cluster.replication");
	cr_assert_eq(PQntuples(r), NSHARDS);
	int nnew = 0;
	for (int i = 0; i < PQntuples(r); i++) {
		int s = atoi(PQgetvalue(r, i, 0));
		int p = worker_index(c, PQgetvalue(r, i, 1));
		int rp = worker_index(c, PQgetvalue(r, i, 2));
		cr_assert(p != victim && rp != victim);
		if (rp != prim[s] && rp != repl[s]) {
			nnew++;
			cr_assert_geq(atoll(PQgetvalue(r, i, 3)), 1,
				      "new copy of v_%d on %s got no snapshot", s,
				      PQgetvalue(r, i, 2));
		}
	}
	PQclear(r);
	cr_assert_gt(nnew, 0, "remove_node placed no new copy");
	th_run(co, "SET pipeline_cluster.primary_only = on");
	cr_assert_eq(view_diff(co, m, NULL, "after more ingest, primaries"), 0);
	/* and each live worker's copies (local first) */
	for (int w = 1; w <= 3; w++) {
		if (w == victim)
			continue;
		PGconn *wc = th_connect(th_worker(c, w));
		char what[64];
		snprintf(what, sizeof what, "after more ingest, read at %s", th_worker(c, w)->name);
		assert_exact(wc, m, what);
		PQfinish(wc);
	}
	model_free(m);
	PQfinish(co);
	th_cluster_stop(c);
}

/* ---- 5. a hung replica holder ------------------------------------------------------------- */

/* Watches a node's state at the coordinator from its own thread (raw libpq only): the
 * monotonic time it was first seen down. */
typedef struct down_watch {
	int port; /* the coordinator's SQL port */
	char name[64];
	int64_t down_us; /* 0 until seen (atomic) */
	bool stop;	 /* atomic */
	pthread_t th;
} down_watch;

typedef struct down_poll {
	down_watch *w;
	PGconn *conn;
	const char *sql;
} down_poll;

/* Seen down (its time noted), or told to stop. */
static bool down_seen(void *arg)
{
	down_poll *d = arg;
	if (__atomic_load_n(&d->w->stop, __ATOMIC_ACQUIRE))
		return true;
	PGresult *r = PQexec(d->conn, d->sql);
	bool down = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 &&
		    strcmp(PQgetvalue(r, 0, 0), "down") == 0;
	PQclear(r);
	if (down)
		__atomic_store_n(&d->w->down_us, tally_mono_us(), __ATOMIC_RELEASE);
	else if (PQstatus(d->conn) != CONNECTION_OK)
		PQreset(d->conn);
	return down;
}

static void *down_watch_main(void *arg)
{
	down_watch *w = arg;
	char ci[160];
	snprintf(ci, sizeof ci, "host=127.0.0.1 port=%d user=tally dbname=tally connect_timeout=5",
		 w->port);
	char sql[160];
	snprintf(sql, sizeof sql, "SELECT state FROM pipeline_cluster.nodes WHERE name = '%s'",
		 w->name);
	down_poll d = {w, PQconnectdb(ci), sql};
	while (!th_wait_until(down_seen, &d, 60000))
		;
	PQfinish(d.conn);
	return NULL;
}

Test(replication, sync_writes_go_on_once_a_hung_replica_is_down, .fini = th_fini, .timeout = 120)
{
	th_cluster *c = th_cluster_start(3, &fast);
	PGconn *co = th_connect(th_coord(c));
	create_schema(co, ", replication = 'sync'");
	model *m = model_alloc(4000);
	uint64_t id = 1;
	ingest(co, m, &id, 4, 500, NULL);
	int prim[NSHARDS], repl[NSHARDS];
	placement(c, co, prim, repl);
	const int victim = 3;
	th_node *vn = th_worker(c, victim);
	/* Write only to shards whose primary is not the hung node (this test is about the sync
	 * wait for a hung replica, not about rerouting), among them the ones it replicates. */
	bool allowed[NSHARDS];
	int nrep = 0;
	for (int s = 0; s < NSHARDS; s++) {
		allowed[s] = prim[s] != victim;
		nrep += allowed[s] && repl[s] == victim;
	}
	cr_assert_gt(nrep, 0, "%s replicates no shard", vn->name);
	wait_settled(c, NSHARDS, "before SIGSTOP");

	down_watch dw = {.port = th_coord(c)->sql_port};
	snprintf(dw.name, sizeof dw.name, "%s", vn->name);
	cr_assert_eq(pthread_create(&dw.th, NULL, down_watch_main, &dw), 0);
	th_kill_node(c, vn, SIGSTOP);
	int64_t t0 = tally_mono_us();
	int acked = 0, failed = 0, after = 0;
	int64_t t_first_done = 0, t_resumed = 0, t_down = 0;
	stmt s = {0};
	/* Until the node is marked down and 5 statements sent after that went through. */
	while (after < 5) {
		cr_assert_lt(tally_mono_us() - t0, 60 * 1000000ll, "writes did not resume");
		stmt_build(&s, m, id++, 300, allowed);
		int64_t ts = tally_mono_us();
		PGresult *r = stmt_send(co, &s);
		int64_t te = tally_mono_us();
		t_down = __atomic_load_n(&dw.down_us, __ATOMIC_ACQUIRE);
		if (!t_first_done)
			t_first_done = te;
		if (PQresultStatus(r) == PGRES_COMMAND_OK) {
			acked++;
			if (t_down && !t_resumed)
				t_resumed = te; /* the write in flight when it went down returned */
			after += t_down && ts > t_down;
		} else {
			/* 57P03 at sync_commit: the rows are durable in the origin's outbox and
			 * are applied in full later, so the test counts them and does not send
			 * them again (that would be a new statement, counted twice) */
			const char *st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
			cr_assert(st && strcmp(st, "57P03") == 0, "statement failed: %s",
				  PQresultErrorMessage(r));
			const char *detail = PQresultErrorField(r, PG_DIAG_MESSAGE_DETAIL);
			cr_assert(detail && strstr(detail, "will be applied in full"),
				  "57P03 without the outbox promise: %s", PQresultErrorMessage(r));
			cr_assert(
			    !t_down || ts < t_down,
			    "a statement sent %lld ms after the node was marked down failed: %s",
			    (long long)(ts - t_down) / 1000, PQresultErrorMessage(r));
			failed++;
		}
		model_apply(m, &s);
		PQclear(r);
	}
	__atomic_store_n(&dw.stop, true, __ATOMIC_RELEASE);
	pthread_join(dw.th, NULL);
	fprintf(stderr,
		"replication: hung replica: %d acked, %d failed (57P03); marked down %lld ms after "
		"SIGSTOP; first statement returned after %lld ms, writes resumed %lld ms after "
		"down\n",
		acked, failed, (long long)(t_down - t0) / 1000,
		(long long)(t_first_done - t0) / 1000, (long long)(t_resumed - t_down) / 1000);
	/* sync: the first statement wrote to shards the hung node replicates, so it cannot
	 * have been acknowledged before the node could be declared down (its last heartbeat
	 * was at most 100 ms before SIGSTOP, failure_timeout is 600 ms) */
	cr_assert_geq(t_first_done - t0, 300000ll,
		      "a sync write was acknowledged %lld ms after its replica hung",
		      (long long)(t_first_done - t0) / 1000);
	/* writes for every shard at sync_receive: the hung node's primaries get theirs from
	 * the outbox once it is back */
	th_run(co, "SET pipeline_cluster.insert_level = sync_receive");
	for (int i = 0; i < 3; i++) {
		stmt_build(&s, m, id++, 500, NULL);
		stmt_ok(co, m, &s);
	}
	th_run(co, "RESET pipeline_cluster.insert_level");
	stmt_free(&s);

	th_kill_node(c, vn, SIGCONT);
	wait_state_everywhere(c, vn->name, "up");
	ingest(co, m, &id, 3, 500, NULL);
	wait_settled(c, NSHARDS, "after SIGCONT");
	th_run(co, "SET pipeline_cluster.primary_only = on");
	cr_assert_eq(view_diff(co, m, NULL, "after SIGCONT, primaries"), 0);
	PGconn *vc = th_connect(vn);
	assert_exact(vc, m, "after SIGCONT, read at the hung node");
	PQfinish(vc);
	model_free(m);
	PQfinish(co);
	th_cluster_stop(c);
	/* Last, so the exactness checks above run anyway: a sync write waiting for the hung
	 * replica returns once the map marks it down (the map reaches the primaries within
	 * milliseconds), not later. */
	cr_assert_leq(t_resumed - t_down, 500000ll,
		      "sync writes stalled %lld ms beyond the moment the hung replica was marked "
		      "down",
		      (long long)(t_resumed - t_down) / 1000);
}
