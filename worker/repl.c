/*
 * repl.c - the replicator (DESIGN §6): every primary copy on this worker streams its change
 * records to each of its replicas, in order, over NNG.
 *
 * A stream is (view, shard, replica node). Its state: connecting (position unknown: the first
 * message asks for it), catching_up (a snapshot is being sent, or records are behind),
 * streaming (up to date or sending as records come), diverged (the replica has history this
 * copy lacks, e.g. this node lost its directory: never overwritten; see the log). The
 * replica's reported position is always durable on its side.
 *
 * Threads: one sender thread per replica node, so a hung replica holds up only its own
 * streams. Each round it sends at most one message per stream of its node, all in parallel:
 * a position probe, a batch of records (up to REPL_MAX_BYTES, which this node's log has
 * durably first), or the next chunk of a snapshot. Senders wake when a primary copy applies a
 * record (tally_repl_notify) and otherwise every REPL_IDLE_MS.
 *
 * Sync replication: a primary copy of a view with replication = sync answers its origin only
 * once every replica the map shows up has the record (quorum: a majority of all copies, the
 * primary counting as one); tally_repl_wait waits for that on acknowledgements.
 */
#include "worker.h"

#include <stdio.h>
#include <stdlib.h>

#define REPL_MAX_BYTES (4u << 20) /* records per message */
#define REPL_CHUNK (8u << 20)	  /* snapshot bytes per message */
#define REPL_IDLE_MS 200
#define REPL_ROUND 64 /* streams served per round by one sender */
#define REPL_BACKOFF_MAX_US 2000000

enum { RS_CONNECTING = 0, RS_CATCHING_UP, RS_STREAMING, RS_DIVERGED };
static const char *const rs_names[] = {"connecting", "catching_up", "streaming", "diverged"};

typedef struct rstream {
	uint64_t view_id;
	uint32_t shard, dest;
	int state;
	bool known; /* r_gen / r_rlsn are the replica's reported position */
	uint64_t r_gen, r_rlsn;
	uint64_t sent; /* last position sent in a message not yet answered (or answered) */
	/* the primary copy as of the last look */
	uint64_t p_gen, p_rlsn, lag_bytes;
	int64_t lag_us;
	/* a snapshot being sent */
	bool snapping;
	tally_buf snap;
	uint64_t snap_gen, snap_rlsn, snap_off;
	uint64_t snapshots;  /* snapshots sent in full */
	uint64_t dest_inc;   /* incarnation of the replica's node the position was learned from */
	bool reprobe;	     /* the replica restarted: ask its position before anything else */
	int64_t last_msg_us; /* when the last message went (keepalives when idle) */
	bool inflight, live; /* live: still wanted by the current map */
	int64_t next_try_us;
	uint32_t fails;
	bool warned;
} rstream;

typedef struct rdest {
	uint32_t id;
	pthread_t th;
} rdest;

typedef struct dest_arg {
	struct tally_repl *rp;
	uint32_t dest;
} dest_arg;

struct tally_repl {
	tally_node *n;
	tally_store *st;
	pthread_t handoff_th;
	pthread_cond_t stop_cv;	   /* the hand-off thread sleeps on it (woken to stop) */
	uint64_t handoffs, handed; /* hand-off rounds and hints handed off, since start */
	pthread_mutex_t mu;
	pthread_cond_t work_cv; /* new records, a new map, stop */
	pthread_cond_t ack_cv;	/* a replica acknowledged */
	rstream **s;
	size_t ns, cap;
	uint64_t epoch; /* map the streams were built from */
	rdest *d;
	size_t nd, dcap;
	uint64_t work; /* bumped by tally_repl_notify */
	bool stopping;
};

/* ---- streams from the map ----------------------------------------------------------------- */

static rstream *stream_find(tally_repl *rp, uint64_t view_id, uint32_t shard, uint32_t dest)
{
	for (size_t i = 0; i < rp->ns; i++)
		if (rp->s[i]->view_id == view_id && rp->s[i]->shard == shard &&
		    rp->s[i]->dest == dest)
			return rp->s[i];
	return NULL;
}

static void *dest_main(void *arg);

/* Rebuild the stream set for map m (caller holds mu): one per replica of every shard whose
 * primary this node is, and a sender thread for every replica node. Streams no longer wanted
 * go once no round uses them. */
static void sync_streams(tally_repl *rp, const tally_map *m)
{
	uint32_t self = tally_node_id(rp->n);
	rp->epoch = m->cat->epoch;
	for (size_t i = 0; i < rp->ns; i++)
		rp->s[i]->live = false;
	for (int vi = 0; self && vi < m->cat->nviews; vi++) {
		const tally_view_info *v = &m->cat->views[vi];
		for (int sh = 0; sh < v->num_shards; sh++) {
			if (v->primary[sh] != self)
				continue;
			for (int r = 0; r < v->num_replicas; r++) {
				uint32_t dest = v->replicas[sh * v->num_replicas + r];
				rstream *x = stream_find(rp, v->id, (uint32_t)sh, dest);
				if (!x) {
					x = tally_xcalloc(1, sizeof *x);
					x->view_id = v->id;
					x->shard = (uint32_t)sh;
					x->dest = dest;
					if (rp->ns == rp->cap) {
						rp->cap = rp->cap ? rp->cap * 2 : 32;
						rp->s =
						    tally_xrealloc(rp->s, rp->cap * sizeof *rp->s);
					}
					rp->s[rp->ns++] = x;
				}
				x->live = true;
				/* a replica that restarted is asked for its position again (and so
				 * hears from its primary before it counts as caught up) */
				const tally_node_info *dn = tally_catalog_node(m->cat, dest);
				if (dn && dn->incarnation != x->dest_inc) {
					x->dest_inc = dn->incarnation;
					x->reprobe = true; /* (a round in flight finishes first) */
					x->next_try_us = 0;
					if (x->state != RS_DIVERGED)
						x->state = RS_CONNECTING;
				}
				bool have = false;
				for (size_t k = 0; k < rp->nd; k++)
					have |= rp->d[k].id == dest;
				if (!have) {
					if (rp->nd == rp->dcap) {
						rp->dcap = rp->dcap ? rp->dcap * 2 : 16;
						rp->d =
						    tally_xrealloc(rp->d, rp->dcap * sizeof *rp->d);
					}
					rdest *d = &rp->d[rp->nd++];
					d->id = dest;
					dest_arg *da = tally_xmalloc(sizeof *da);
					da->rp = rp;
					da->dest = dest;
					pthread_create(&d->th, NULL, dest_main, da);
				}
			}
		}
	}
	/* drop streams no longer wanted (a round in flight keeps its own) */
	size_t j = 0;
	for (size_t i = 0; i < rp->ns; i++) {
		rstream *x = rp->s[i];
		if (x->live || x->inflight) {
			rp->s[j++] = x;
			continue;
		}
		tally_buf_free(&x->snap);
		free(x);
	}
	rp->ns = j;
}

/* ---- one sender per replica node ---------------------------------------------------------- */

typedef struct pick {
	rstream *x;
	int kind; /* 0 probe / keepalive, 1 records, 2 snapshot chunk */
	tally_buf recs;
	uint32_t nrec;
	uint64_t gen, first, last_end;
	uint64_t p_gen, p_rlsn; /* the primary copy's position, told to the replica */
} pick;

#define REPL_KEEPALIVE_US 500000 /* an idle stream tells its replica where the primary is */

static void backoff(rstream *x, int64_t now)
{
	x->fails++;
	int64_t b = 100000LL << (x->fails < 5 ? x->fails : 5);
	x->next_try_us = now + (b > REPL_BACKOFF_MAX_US ? REPL_BACKOFF_MAX_US : b);
}

/* Decide what stream x needs next (without rp->mu: the store locks its shard; x is in flight,
 * so only this thread changes it). Returns 1 if a message should go, 0 if nothing (up to
 * date, no copy yet, diverged, or an error that backs off). */
static int prepare(tally_repl *rp, rstream *x, pick *p, uint64_t *flush_to)
{
	tally_node *n = rp->n;
	uint32_t self = tally_node_id(n);
	p->x = x;
	p->nrec = 0;
	tally_buf_reset(&p->recs);
	/* The stream's fields change under rp->mu (the status rows and sync_streams read them);
	 * the store is asked without it. */
	pthread_mutex_lock(&rp->mu);
	if (x->reprobe) {
		x->reprobe = false;
		x->known = false;
		if (x->snapping) {
			x->snapping = false; /* the new process has none of it */
			tally_buf_free(&x->snap);
		}
	}
	if (x->snapping) {
		p->kind = 2;
		pthread_mutex_unlock(&rp->mu);
		return 1;
	}
	if (!x->known) {
		pthread_mutex_unlock(&rp->mu);
		p->kind = 0;
		p->p_gen = p->p_rlsn = 0;
		tally_store_pos(rp->st, x->view_id, x->shard, &p->p_gen, &p->p_rlsn);
		return 1;
	}
	uint64_t r_gen = x->r_gen, r_rlsn = x->r_rlsn;
	pthread_mutex_unlock(&rp->mu);
	tally_repl_out o = {.recs = &p->recs};
	tally_err err;
	tally_err_clear(&err);
	int rc = tally_store_repl_fetch(rp->st, n->wal, x->view_id, x->shard, self, r_gen, r_rlsn,
					REPL_MAX_BYTES, &o, &err);
	p->p_gen = o.gen;
	p->p_rlsn = o.rlsn;
	int send = 0;
	pthread_mutex_lock(&rp->mu);
	x->p_gen = o.gen;
	x->p_rlsn = o.rlsn;
	x->lag_bytes = o.lag_bytes;
	x->lag_us = o.lag_us;
	if (rc == TALLY_REPL_RECORDS && o.nrec > 0) {
		p->kind = 1;
		p->nrec = o.nrec;
		p->gen = o.gen;
		p->first = o.first;
		p->last_end = o.last_end;
		if (o.last_end > *flush_to)
			*flush_to = o.last_end;
		x->state = r_rlsn + o.nrec >= o.rlsn ? RS_STREAMING : RS_CATCHING_UP;
		send = 1;
	} else if (rc == TALLY_REPL_RECORDS || rc == TALLY_REPL_NONE) {
		x->state = RS_STREAMING;
		if (tally_mono_us() - x->last_msg_us > REPL_KEEPALIVE_US) {
			p->kind = 0; /* up to date: a keepalive keeps the replica readable */
			send = 1;
		}
	} else if (rc == TALLY_REPL_DIVERGED) {
		if (!x->warned)
			tally_log_error(
			    "replica of shard %llu/%u on node %u has history this "
			    "primary copy lacks (its position %llu, ours %llu): not "
			    "overwriting it; if this node lost its data, remove it with "
			    "pipeline_cluster.remove_node",
			    (unsigned long long)x->view_id, x->shard, x->dest,
			    (unsigned long long)r_rlsn, (unsigned long long)o.rlsn);
		x->warned = true;
		x->state = RS_DIVERGED;
		x->known = false; /* look again later */
		x->next_try_us = tally_mono_us() + 5000000;
	} else if (rc == TALLY_REPL_SNAPSHOT) {
		pthread_mutex_unlock(&rp->mu);
		uint64_t gen, rlsn;
		tally_buf snap = {0};
		int src = tally_store_snap_encode(rp->st, n->wal, x->view_id, x->shard, self, &snap,
						  &gen, &rlsn, &err);
		pthread_mutex_lock(&rp->mu);
		if (src != 0) {
			tally_log_warn("replication: could not snapshot shard %llu/%u: %s",
				       (unsigned long long)x->view_id, x->shard, err.message);
			backoff(x, tally_mono_us());
			tally_buf_free(&snap);
		} else {
			tally_log_info("replication: sending a snapshot of shard %llu/%u (%zu "
				       "bytes, position %llu) to node %u",
				       (unsigned long long)x->view_id, x->shard, snap.len,
				       (unsigned long long)rlsn, x->dest);
			tally_buf_free(&x->snap);
			x->snap = snap;
			x->snapping = true;
			x->snap_gen = gen;
			x->snap_rlsn = rlsn;
			x->snap_off = 0;
			x->state = RS_CATCHING_UP;
			p->kind = 2;
			send = 1;
		}
	} else {
		tally_log_warn("replication: shard %llu/%u: %s", (unsigned long long)x->view_id,
			       x->shard, err.message);
		backoff(x, tally_mono_us());
	}
	pthread_mutex_unlock(&rp->mu);
	return send;
}

static void build(tally_repl *rp, pick *p, tally_buf *req, uint64_t epoch)
{
	rstream *x = p->x;
	uint32_t self = tally_node_id(rp->n);
	if (p->kind == 2) {
		tally_msg_begin(req, TALLY_MSG_REPL_SNAP, tally_node_next_req(rp->n), epoch);
		tally_buf_put_u32(req, self);
		tally_buf_put_u64(req, x->view_id);
		tally_buf_put_u32(req, x->shard);
		tally_buf_put_u64(req, x->snap_gen);
		tally_buf_put_u64(req, x->snap_rlsn);
		tally_buf_put_u64(req, x->snap.len);
		tally_buf_put_u64(req, x->snap_off);
		size_t left = x->snap.len - x->snap_off;
		uint32_t cl = left > REPL_CHUNK ? REPL_CHUNK : (uint32_t)left;
		tally_buf_put_str(req, x->snap.data + x->snap_off, cl);
	} else {
		tally_msg_begin(req, TALLY_MSG_REPL, tally_node_next_req(rp->n), epoch);
		tally_buf_put_u32(req, self);
		tally_buf_put_u64(req, x->view_id);
		tally_buf_put_u32(req, x->shard);
		tally_buf_put_u64(req, p->kind == 1 ? p->gen : p->p_gen);
		tally_buf_put_u64(req, p->kind == 1 ? p->first : 0);
		tally_buf_put_u64(req, p->p_rlsn);
		tally_buf_put_u32(req, p->nrec);
		if (p->nrec)
			tally_buf_append(req, p->recs.data, p->recs.len);
	}
	tally_msg_end(req);
}

/* Take a reply (caller holds mu). */
static void take_reply(pick *p, tally_rpc_call *c, int64_t now)
{
	rstream *x = p->x;
	uint64_t gen, rlsn, have;
	if (c->rc != 0 || c->hdr.type != TALLY_MSG_REPL_OK || tally_rd_u64(&c->body, &gen) ||
	    tally_rd_u64(&c->body, &rlsn) || tally_rd_u64(&c->body, &have) ||
	    tally_msg_done(&c->body) != 0) {
		if (x->fails == 0 || x->fails % 20 == 0)
			tally_log_warn("replication of shard %llu/%u to %s: %s",
				       (unsigned long long)x->view_id, x->shard, c->peer,
				       c->rc ? c->errmsg : "malformed reply");
		x->known = false;
		if (x->snapping) {
			x->snapping = false;
			tally_buf_free(&x->snap);
		}
		if (x->state != RS_DIVERGED)
			x->state = RS_CONNECTING;
		backoff(x, now);
		return;
	}
	x->fails = 0;
	x->warned = false;
	x->next_try_us = 0;
	if (x->reprobe)
		return; /* answered by the node's previous process: ask again */
	x->known = true;
	x->r_gen = gen;
	x->r_rlsn = rlsn;
	if (p->kind == 1)
		x->sent = p->first + p->nrec - 1;
	if (x->snapping) {
		if (have >= x->snap.len && gen == x->snap_gen) {
			x->snapping = false;
			tally_buf_free(&x->snap);
			x->state = RS_STREAMING;
			x->snapshots++;
		} else if (have < x->snap.len) {
			x->snap_off = have; /* the replica says where to go on */
		} else {
			x->snapping = false; /* it took something else meanwhile: look again */
			tally_buf_free(&x->snap);
			x->known = false;
		}
	}
}

static void *dest_main(void *arg)
{
	dest_arg da = *(dest_arg *)arg;
	free(arg);
	tally_repl *rp = da.rp;
	tally_node *n = rp->n;
	pick *picks = tally_xcalloc(REPL_ROUND, sizeof *picks);
	tally_rpc_call *calls = tally_xcalloc(REPL_ROUND, sizeof *calls);
	tally_buf *reqs = tally_xcalloc(REPL_ROUND, sizeof *reqs);
	size_t rot = 0;
	pthread_mutex_lock(&rp->mu);
	while (!rp->stopping) {
		tally_map *m = tally_node_map(n);
		if (m->cat->epoch != rp->epoch)
			sync_streams(rp, m);
		rot += REPL_ROUND;
		const tally_node_info *dn = tally_catalog_node(m->cat, da.dest);
		bool up = dn && dn->state == TALLY_NODE_UP;
		int64_t now = tally_mono_us();
		uint64_t work = rp->work;
		/* the streams of this node due now */
		rstream *cand[REPL_ROUND];
		int nc = 0;
		/* start where the last round stopped, so no stream waits behind others */
		for (size_t j = 0; up && j < rp->ns && nc < REPL_ROUND; j++) {
			rstream *x = rp->s[(j + rot) % rp->ns];
			if (x->dest == da.dest && x->live && !x->inflight &&
			    x->next_try_us <= now) {
				x->inflight = true;
				cand[nc++] = x;
			}
		}
		pthread_mutex_unlock(&rp->mu);
		/* what each needs (the store locks its shard; not under rp->mu) */
		int np = 0;
		uint64_t flush_to = 0;
		for (int i = 0; i < nc; i++) {
			if (prepare(rp, cand[i], &picks[np], &flush_to))
				np++;
			else {
				pthread_mutex_lock(&rp->mu);
				cand[i]->inflight = false;
				pthread_mutex_unlock(&rp->mu);
			}
		}
		bool durable = true;
		if (np && flush_to) {
			tally_err err;
			tally_err_clear(&err);
			durable = tally_wal_flush(n->wal, flush_to, -1, &err) == 0;
		}
		if (np && durable) {
			for (int i = 0; i < np; i++) {
				build(rp, &picks[i], &reqs[i], m->cat->epoch);
				picks[i].x->last_msg_us = tally_mono_us();
				memset(&calls[i], 0, sizeof calls[i]);
				calls[i].addr = dn->data_addr;
				calls[i].peer = dn->name;
				calls[i].req = reqs[i];
			}
			/* short unless a snapshot chunk goes: a dead replica's old address must not
			 * hold up its new one for long */
			bool chunk = false;
			for (int i = 0; i < np; i++)
				chunk |= picks[i].kind == 2;
			int timeout =
			    (int)tally_settings_ms(&n->cfg.defaults, TALLY_SET_RPC_TIMEOUT);
			int cap = chunk ? 5000 : 2000;
			tally_rpc_call_many(n->rpc, calls, np, timeout > cap ? cap : timeout);
		}
		pthread_mutex_lock(&rp->mu);
		now = tally_mono_us();
		for (int i = 0; i < np; i++) {
			if (durable)
				take_reply(&picks[i], &calls[i], now);
			else
				backoff(picks[i].x, now);
			picks[i].x->inflight = false;
		}
		pthread_mutex_unlock(&rp->mu);
		if (np && durable)
			tally_rpc_calls_done(calls, np);
		/* records every replica has are not kept any longer */
		for (int i = 0; i < np; i++)
			if (picks[i].kind == 1 || picks[i].kind == 2)
				tally_repl_trim_shard(rp, picks[i].x->view_id, picks[i].x->shard);
		pthread_mutex_lock(&rp->mu);
		pthread_cond_broadcast(&rp->ack_cv);
		tally_map_put(m);
		if (np == 0 && !rp->stopping && rp->work == work) {
			struct timespec ts = tally_mono_ts(tally_mono_us() + REPL_IDLE_MS * 1000);
			pthread_cond_timedwait(&rp->work_cv, &rp->mu, &ts);
		}
	}
	pthread_mutex_unlock(&rp->mu);
	for (int i = 0; i < REPL_ROUND; i++) {
		tally_buf_free(&reqs[i]);
		tally_buf_free(&picks[i].recs);
	}
	free(reqs);
	free(picks);
	free(calls);
	return NULL;
}

/* Wait until the replicas mode needs have position rlsn of history gen. */
static int wait_replicas(tally_repl *rp, const tally_view_info *v, uint32_t shard, uint64_t gen,
			 uint64_t rlsn, int mode, int timeout_ms, tally_err *err)
{
	if (mode == TALLY_REPL_ASYNC || v->num_replicas == 0)
		return 0;
	int64_t deadline = tally_mono_us() + (int64_t)timeout_ms * 1000;
	int need = 0, have = 0;
	pthread_mutex_lock(&rp->mu);
	for (;;) {
		tally_map *m = tally_node_map(rp->n);
		int up = 0;
		have = 0;
		for (int r = 0; r < v->num_replicas; r++) {
			uint32_t id = v->replicas[shard * (uint32_t)v->num_replicas + (uint32_t)r];
			const tally_node_info *ni = tally_catalog_node(m->cat, id);
			bool is_up = ni && ni->state == TALLY_NODE_UP;
			up += is_up;
			rstream *x = stream_find(rp, v->id, shard, id);
			if (x && x->known && x->r_gen == gen && x->r_rlsn >= rlsn)
				have++;
		}
		tally_map_put(m);
		/* sync: every replica that is up; quorum: a majority of all copies */
		need = mode == TALLY_REPL_SYNC ? up : (v->num_replicas + 1) / 2;
		if (have >= need || rp->stopping || tally_mono_us() >= deadline)
			break;
		struct timespec ts = tally_mono_ts(deadline);
		pthread_cond_timedwait(&rp->ack_cv, &rp->mu, &ts);
	}
	pthread_mutex_unlock(&rp->mu);
	if (have >= need)
		return 0;
	tally_err_set(err, TALLY_SQLSTATE_UNAVAILABLE,
		      "shard %s_%u: %d of the %d replica acknowledgements %s replication needs "
		      "arrived within %d ms",
		      v->name, shard, have, need, mode == TALLY_REPL_SYNC ? "sync" : "quorum",
		      timeout_ms);
	return tally_err_detail(err, "The batch is durable on the primary and will be "
				     "acknowledged when its replicas have it.");
}

int tally_repl_wait(tally_repl *rp, const tally_view_info *v, uint32_t shard, uint64_t gen,
		    uint64_t rlsn, int timeout_ms, tally_err *err)
{
	return wait_replicas(rp, v, shard, gen, rlsn, v->replication, timeout_ms, err);
}

/* ---- hinted hand-off (DESIGN §5) ----------------------------------------------------------- */

#define HANDOFF_ROUND 64

/* Hand the hints for home held by this node's primary copy (v, shard) to home's primary, in
 * rounds: they stop being visible here first (so no read counts them twice), each goes as an
 * APPLY with its original id (the home primary applies those it has not seen and
 * acknowledges the rest), and those acknowledged are dropped. If the home primary stops
 * answering, the rest become visible here again. Returns the number handed off, -1 on
 * failure. */
static int handoff_one(tally_repl *rp, const tally_map *m, const tally_view_rt *v, uint32_t shard,
		       uint32_t home, const tally_node_info *dest)
{
	tally_node *n = rp->n;
	uint32_t self = tally_node_id(n);
	tally_err err;
	tally_err_clear(&err);
	int rc = 0, total = 0;
	uint64_t lsn = 0, rlsn = 0, gen, pos;
	tally_buf bodies[HANDOFF_ROUND];
	memset(bodies, 0, sizeof bodies);
	if (tally_store_hint_op(rp->st, n->wal, v, shard, self, home, TALLY_HINT_OP_HANDOFF, NULL,
				0, &lsn, &rlsn, &err) != 0 ||
	    (lsn && tally_wal_flush(n->wal, lsn, -1, &err) != 0)) {
		tally_log_warn("hand-off of shard %s_%u's hints: %s", v->info->name, home,
			       err.message);
		return -1;
	}
	/* Every live replica of this copy hides them too before the home shard gets them, or a
	 * read served by a replica would count them twice. */
	if (rlsn && tally_store_pos(rp->st, v->info->id, shard, &gen, &pos) == 0 &&
	    wait_replicas(rp, v->info, shard, gen, rlsn, TALLY_REPL_SYNC, 2000, &err) != 0) {
		tally_log_warn("hand-off of shard %s_%u's hints: %s", v->info->name, home,
			       err.message);
		rc = -1;
		goto revert;
	}
	tally_hint_ref ids[HANDOFF_ROUND], done[HANDOFF_ROUND];
	tally_rpc_call calls[HANDOFF_ROUND];
	for (; rc == 0;) {
		size_t k = tally_store_hint_take(rp->st, v->info->id, shard, home, HANDOFF_ROUND,
						 bodies, ids);
		if (k == 0)
			break;
		for (size_t i = 0; i < k; i++) {
			/* the batch as the origin made it, now addressed to its home */
			tally_buf req = {0};
			tally_msg_begin(&req, TALLY_MSG_APPLY, tally_node_next_req(n),
					m->cat->epoch);
			tally_buf_append(&req, bodies[i].data, bodies[i].len);
			tally_put_be32(req.data + TALLY_MSG_HDR + TALLY_APPLY_TARGET_OFF, home);
			tally_put_be64(req.data + TALLY_MSG_HDR + TALLY_APPLY_FLOOR_OFF, 0);
			tally_msg_end(&req);
			memset(&calls[i], 0, sizeof calls[i]);
			calls[i].addr = dest->data_addr;
			calls[i].peer = dest->name;
			calls[i].req = req;
		}
		tally_rpc_call_many(n->rpc, calls, (int)k, 2000);
		size_t nd = 0;
		const char *why = NULL;
		for (size_t i = 0; i < k; i++) {
			tally_node_note_call(n, dest->id, &calls[i]);
			if (calls[i].rc == 0 && calls[i].hdr.type == TALLY_MSG_APPLY_OK)
				done[nd++] = ids[i];
			else if (!why)
				why = calls[i].errmsg;
		}
		if (why)
			tally_log_warn("hand-off of hints for shard %s_%u to %s: %s", v->info->name,
				       home, dest->name, why);
		tally_rpc_calls_done(calls, (int)k);
		for (size_t i = 0; i < k; i++)
			tally_buf_free(&calls[i].req);
		if (nd &&
		    (tally_store_hint_op(rp->st, n->wal, v, shard, self, home, TALLY_HINT_OP_DROP,
					 done, nd, &lsn, &rlsn, &err) != 0 ||
		     tally_wal_flush(n->wal, lsn, -1, &err) != 0)) {
			tally_log_warn("hand-off of shard %s_%u's hints: %s", v->info->name, home,
				       err.message);
			rc = -1;
			break;
		}
		total += (int)nd;
		if (nd < k) {
			rc = -1;
			break;
		}
	}
revert:
	if (rc != 0 && tally_store_hint_op(rp->st, n->wal, v, shard, self, home,
					   TALLY_HINT_OP_REVERT, NULL, 0, &lsn, &rlsn, &err) != 0)
		tally_log_warn("hand-off of shard %s_%u's hints: %s", v->info->name, home,
			       err.message);
	for (int i = 0; i < HANDOFF_ROUND; i++)
		tally_buf_free(&bodies[i]);
	if (total || rc == 0)
		tally_repl_notify(rp);
	return rc == 0 ? total : -1;
}

static void *handoff_main(void *arg)
{
	tally_repl *rp = arg;
	tally_node *n = rp->n;
	int64_t quiet_until = 0;
	pthread_mutex_lock(&rp->mu);
	while (!rp->stopping) {
		struct timespec ts = tally_mono_ts(tally_mono_us() + 250000);
		pthread_cond_timedwait(&rp->stop_cv, &rp->mu, &ts);
		if (rp->stopping || tally_mono_us() < quiet_until)
			continue;
		pthread_mutex_unlock(&rp->mu);
		tally_hint_row *rows;
		size_t nr = tally_store_hint_rows(rp->st, &rows);
		tally_map *m = nr ? tally_node_map(n) : NULL;
		uint32_t self = tally_node_id(n);
		bool failed = false;
		for (size_t i = 0; i < nr; i++) {
			const tally_view_rt *v = tally_map_view_by_id(m, rows[i].view_id);
			if (!v || !v->ok || rows[i].shard >= (uint32_t)v->info->num_shards ||
			    rows[i].home >= (uint32_t)v->info->num_shards ||
			    v->info->primary[rows[i].shard] != self)
				continue; /* only the holder's primary copy hands off */
			const tally_node_info *dest =
			    tally_catalog_node(m->cat, v->info->primary[rows[i].home]);
			if (!tally_node_reachable(n, dest))
				continue;
			int k = handoff_one(rp, m, v, rows[i].shard, rows[i].home, dest);
			if (k < 0) {
				failed = true;
			} else if (k > 0) {
				tally_log_info("handed %d hints for shard %s_%u over to %s", k,
					       v->info->name, rows[i].home, dest->name);
				pthread_mutex_lock(&rp->mu);
				rp->handoffs++;
				rp->handed += (uint64_t)k;
				pthread_mutex_unlock(&rp->mu);
			}
		}
		free(rows);
		if (m)
			tally_map_put(m);
		pthread_mutex_lock(&rp->mu);
		quiet_until = failed ? tally_mono_us() + 1000000 : 0;
	}
	pthread_mutex_unlock(&rp->mu);
	return NULL;
}

/* ---- public ------------------------------------------------------------------------------- */

void tally_repl_trim_shard(tally_repl *rp, uint64_t view_id, uint32_t shard)
{
	uint64_t gen = 0, min = UINT64_MAX;
	bool all = true;
	pthread_mutex_lock(&rp->mu);
	for (size_t i = 0; i < rp->ns; i++) {
		rstream *x = rp->s[i];
		if (x->view_id != view_id || x->shard != shard || !x->live)
			continue;
		if (!x->known || (gen && x->r_gen != gen)) {
			all = false;
			break;
		}
		gen = x->r_gen;
		if (x->r_rlsn < min)
			min = x->r_rlsn;
	}
	pthread_mutex_unlock(&rp->mu);
	if (all && gen && min != UINT64_MAX)
		tally_store_repl_trim(rp->st, view_id, shard, gen, min);
}

tally_repl *tally_repl_start(tally_node *n, tally_store *st)
{
	tally_repl *rp = tally_xcalloc(1, sizeof *rp);
	rp->n = n;
	rp->st = st;
	pthread_mutex_init(&rp->mu, NULL);
	tally_cond_init_mono(&rp->work_cv);
	tally_cond_init_mono(&rp->ack_cv);
	tally_cond_init_mono(&rp->stop_cv);
	tally_map *m = tally_node_map(n);
	pthread_mutex_lock(&rp->mu);
	sync_streams(rp, m);
	pthread_mutex_unlock(&rp->mu);
	tally_map_put(m);
	pthread_create(&rp->handoff_th, NULL, handoff_main, rp);
	return rp;
}

void tally_repl_map_changed(tally_repl *rp)
{
	tally_map *m = tally_node_map(rp->n);
	pthread_mutex_lock(&rp->mu);
	if (!rp->stopping && m->cat->epoch != rp->epoch)
		sync_streams(rp, m);
	rp->work++;
	pthread_cond_broadcast(&rp->work_cv);
	pthread_cond_broadcast(&rp->ack_cv); /* sync waits: a replica may be down now */
	pthread_mutex_unlock(&rp->mu);
	tally_map_put(m);
}

void tally_repl_notify(tally_repl *rp)
{
	pthread_mutex_lock(&rp->mu);
	rp->work++;
	pthread_cond_broadcast(&rp->work_cv);
	pthread_mutex_unlock(&rp->mu);
}

void tally_repl_stop(tally_repl *rp)
{
	if (!rp)
		return;
	pthread_mutex_lock(&rp->mu);
	rp->stopping = true;
	pthread_cond_broadcast(&rp->work_cv);
	pthread_cond_broadcast(&rp->ack_cv);
	pthread_cond_broadcast(&rp->stop_cv);
	size_t nd = rp->nd;
	pthread_mutex_unlock(&rp->mu);
	/* sync_streams does not start threads once stopping is set (map_changed checks) */
	for (size_t i = 0; i < nd; i++)
		pthread_join(rp->d[i].th, NULL);
	pthread_join(rp->handoff_th, NULL);
}

void tally_repl_free(tally_repl *rp)
{
	if (!rp)
		return;
	for (size_t i = 0; i < rp->ns; i++) {
		tally_buf_free(&rp->s[i]->snap);
		free(rp->s[i]);
	}
	free(rp->s);
	free(rp->d);
	pthread_cond_destroy(&rp->work_cv);
	pthread_cond_destroy(&rp->ack_cv);
	pthread_cond_destroy(&rp->stop_cv);
	pthread_mutex_destroy(&rp->mu);
	free(rp);
}

size_t tally_repl_rows(tally_repl *rp, tally_repl_row **rows)
{
	pthread_mutex_lock(&rp->mu);
	tally_repl_row *out = tally_xcalloc(rp->ns + 1, sizeof *out);
	size_t k = 0;
	for (size_t i = 0; i < rp->ns; i++) {
		const rstream *x = rp->s[i];
		if (!x->live)
			continue;
		tally_repl_row *r = &out[k++];
		r->view_id = x->view_id;
		r->shard = x->shard;
		r->replica = x->dest;
		r->state = rs_names[x->state];
		r->primary_rlsn = x->p_rlsn;
		r->sent_rlsn = x->sent > x->r_rlsn ? x->sent : x->r_rlsn;
		r->applied_rlsn = x->known ? x->r_rlsn : 0;
		bool same = x->known && x->r_gen == x->p_gen;
		r->lag_records =
		    same && x->p_rlsn > x->r_rlsn ? x->p_rlsn - x->r_rlsn : (same ? 0 : x->p_rlsn);
		r->lag_bytes = x->lag_bytes;
		r->lag_ms = r->lag_records ? x->lag_us / 1000 : 0;
		r->snapshots = x->snapshots;
	}
	pthread_mutex_unlock(&rp->mu);
	*rows = out;
	return k;
}
