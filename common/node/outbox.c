/*
 * outbox.c - the origin side of exactly-once delivery (DESIGN §5): every batch a statement
 * produces leaves this node only through its write-ahead log, and is sent to its shard's
 * primary until the primary acknowledges it.
 *
 * Concepts:
 * - A batch is an APPLY body with its id (origin log id, home shard, seq). seq counts 1, 2,
 *   3, ... per (view, home shard); it is assigned under the outbox mutex in the same critical
 *   section that appends the statement's record, so the log holds every (view, shard)
 *   sequence in order and a crash leaves no gap: recovery resumes the counters from what the
 *   log (and the checkpoint's saved counters) say.
 * - One log record per statement (TALLY_REC_OUTBOX): the statement's batches are logged all
 *   or none. Acknowledged batches are noted lazily in TALLY_REC_OUTBOX_DONE records; a crash
 *   before that note only causes a resend, which the primary recognises as a duplicate.
 * - Pending batches are kept in memory in log order (their bytes count against
 *   pipeline_cluster.outbox_limit). The oldest pending record pins the log: checkpoints do
 *   not remove segments from there on.
 *
 * Senders: OB_SENDERS threads. Each round a sender takes the oldest sendable batches that go
 * to one destination node fewer than OB_PER_DEST senders are serving (up to OB_ROUND of
 * them: two rounds overlap per destination, and a dead one holds up two senders), waits until
 * their record is durable, sends them all in parallel, and retires those acknowledged; a
 * failed batch is retried after a backoff (100 ms doubling to 2 s). Batches of a view the map
 * no longer has are discarded (their rows have nowhere to go).
 *
 * Rerouting (DESIGN §5, route()): a batch whose home shard's primary is down in the map or
 * suspected here goes to the next shard of the view whose primary is reachable, as a hint for
 * its home; once sent somewhere without an answer it is resent there while that primary is
 * reachable, and travels "in doubt" (TALLY_MSG_F_IN_DOUBT: invisible to reads until handed
 * off) anywhere else. A holder's acknowledgement caps the floors sent to the home shard below
 * that seq (persisted: flagged DONE entries and saved counters), so the home never counts a
 * hinted batch as applied before its hand-off arrives. If no primary of the view is
 * reachable, the batch waits.
 */
#include "node_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <xxhash.h>

#define OB_SENDERS 6
#define OB_PER_DEST 2 /* senders serving one destination at a time */
#define OB_ROUND 64
#define OB_BACKOFF_MIN_US 100000
#define OB_BACKOFF_MAX_US 2000000

typedef struct ob_wait {
	int remaining;
} ob_wait;

typedef struct ob_batch {
	struct ob_batch *prev, *next; /* pending list, in log order */
	struct ob_batch *hnext;	      /* id hash chain */
	uint64_t view_id, seq;
	uint32_t shard;
	uint64_t lsn, end; /* the record holding it */
	uint8_t *body;
	uint32_t len;
	ob_wait *wait; /* a sync_commit statement waiting for it, or NULL */
	int64_t logged_us, next_try_us;
	uint32_t attempts;
	bool inflight;
	bool in_doubt;	     /* sent somewhere without an answer, then elsewhere (or replayed) */
	int32_t last_target; /* shard it was last sent to without an answer, -1 none */
	uint32_t target;     /* shard this round sends it to (home, or a holder of hints) */
} ob_batch;

typedef struct seq_entry {
	uint64_t view_id; /* 0 = empty */
	uint32_t shard;
	uint64_t seq;	/* last assigned */
	uint64_t floor; /* lowest pending seq, as of round `stamp` */
	uint64_t stamp;
	uint64_t cap; /* lowest seq a holder of hints acknowledged (0 none): floors stay below */
} seq_entry;

struct tally_outbox {
	tally_node *n;
	pthread_mutex_t mu;
	pthread_cond_t work_cv; /* senders: new batches, stop */
	pthread_cond_t done_cv; /* sync_commit waiters */
	ob_batch list;		/* sentinel */
	ob_batch **buckets;
	size_t nbuckets;
	uint64_t nbatches, bytes;
	uint64_t delivered, resends;
	uint32_t busy[OB_SENDERS];
	uint64_t rounds; /* stamps seq_entry.floor */
	seq_entry *seqs;
	size_t nseqs, seqcap;
	pthread_t threads[OB_SENDERS];
	int nthreads;
	bool stopping;
};

/* ---- seq counters ------------------------------------------------------------------------- */

static size_t seq_slot(const seq_entry *t, size_t cap, uint64_t view_id, uint32_t shard)
{
	size_t i = (size_t)((view_id * 0x9E3779B97F4A7C15ull) ^ shard) & (cap - 1);
	while (t[i].view_id && (t[i].view_id != view_id || t[i].shard != shard))
		i = (i + 1) & (cap - 1);
	return i;
}

static seq_entry *seq_get(tally_outbox *ob, uint64_t view_id, uint32_t shard)
{
	if ((ob->nseqs + 1) * 2 > ob->seqcap) {
		size_t ncap = ob->seqcap ? ob->seqcap * 2 : 256;
		seq_entry *nt = tally_xcalloc(ncap, sizeof *nt);
		for (size_t i = 0; i < ob->seqcap; i++)
			if (ob->seqs[i].view_id)
				nt[seq_slot(nt, ncap, ob->seqs[i].view_id, ob->seqs[i].shard)] =
				    ob->seqs[i];
		free(ob->seqs);
		ob->seqs = nt;
		ob->seqcap = ncap;
	}
	size_t i = seq_slot(ob->seqs, ob->seqcap, view_id, shard);
	if (!ob->seqs[i].view_id) {
		ob->seqs[i].view_id = view_id;
		ob->seqs[i].shard = shard;
		ob->nseqs++;
	}
	return &ob->seqs[i];
}

static void seq_raise(tally_outbox *ob, uint64_t view_id, uint32_t shard, uint64_t seq)
{
	if (view_id == 0)
		return;
	seq_entry *e = seq_get(ob, view_id, shard);
	if (seq > e->seq)
		e->seq = seq;
}

/* A DONE entry or saved counter with this bit in its shard: a seq a holder of hints (not the
 * home shard) acknowledged, which caps the floors sent for that home shard. */
#define SEQ_CAP_FLAG 0x80000000u

static void cap_raise(tally_outbox *ob, uint64_t view_id, uint32_t shard, uint64_t seq)
{
	seq_entry *e = seq_get(ob, view_id, shard);
	if (!e->cap || seq < e->cap)
		e->cap = seq;
}

void tally_outbox_seqs_put(tally_outbox *ob, tally_buf *b)
{
	pthread_mutex_lock(&ob->mu);
	uint32_t n = 0;
	size_t at = b->len;
	tally_buf_put_u32(b, 0);
	for (size_t i = 0; i < ob->seqcap; i++) {
		const seq_entry *e = &ob->seqs[i];
		if (!e->view_id)
			continue;
		tally_buf_put_u64(b, e->view_id);
		tally_buf_put_u32(b, e->shard);
		tally_buf_put_u64(b, e->seq);
		n++;
		if (e->cap) {
			tally_buf_put_u64(b, e->view_id);
			tally_buf_put_u32(b, e->shard | SEQ_CAP_FLAG);
			tally_buf_put_u64(b, e->cap);
			n++;
		}
	}
	tally_put_be32(b->data + at, n);
	pthread_mutex_unlock(&ob->mu);
}

int tally_outbox_seqs_get(tally_outbox *ob, tally_rd *r)
{
	uint32_t n;
	if (tally_rd_u32(r, &n) != 0 || n > tally_rd_left(r) / 20)
		return -1;
	pthread_mutex_lock(&ob->mu);
	int rc = 0;
	for (uint32_t i = 0; i < n && rc == 0; i++) {
		uint64_t v, s;
		uint32_t sh;
		if (tally_rd_u64(r, &v) || tally_rd_u32(r, &sh) || tally_rd_u64(r, &s))
			rc = -1;
		else if (sh & SEQ_CAP_FLAG)
			cap_raise(ob, v, sh & ~SEQ_CAP_FLAG, s);
		else
			seq_raise(ob, v, sh, s);
	}
	pthread_mutex_unlock(&ob->mu);
	return rc;
}

/* ---- pending set -------------------------------------------------------------------------- */

static size_t id_hash(uint64_t view_id, uint32_t shard, uint64_t seq, size_t nb)
{
	uint64_t k[3] = {view_id, shard, seq};
	return (size_t)XXH3_64bits(k, sizeof k) & (nb - 1);
}

static void hash_insert(tally_outbox *ob, ob_batch *b)
{
	if (ob->nbatches + 1 > ob->nbuckets) {
		size_t nb = ob->nbuckets ? ob->nbuckets * 2 : 1024;
		ob_batch **nt = tally_xcalloc(nb, sizeof *nt);
		for (size_t i = 0; i < ob->nbuckets; i++) {
			ob_batch *x = ob->buckets[i];
			while (x) {
				ob_batch *nx = x->hnext;
				size_t h = id_hash(x->view_id, x->shard, x->seq, nb);
				x->hnext = nt[h];
				nt[h] = x;
				x = nx;
			}
		}
		free(ob->buckets);
		ob->buckets = nt;
		ob->nbuckets = nb;
	}
	size_t h = id_hash(b->view_id, b->shard, b->seq, ob->nbuckets);
	b->hnext = ob->buckets[h];
	ob->buckets[h] = b;
}

static ob_batch *hash_find(tally_outbox *ob, uint64_t view_id, uint32_t shard, uint64_t seq)
{
	if (!ob->nbuckets)
		return NULL;
	for (ob_batch *x = ob->buckets[id_hash(view_id, shard, seq, ob->nbuckets)]; x; x = x->hnext)
		if (x->view_id == view_id && x->shard == shard && x->seq == seq)
			return x;
	return NULL;
}

static void pending_add(tally_outbox *ob, ob_batch *b)
{
	b->prev = ob->list.prev;
	b->next = &ob->list;
	ob->list.prev->next = b;
	ob->list.prev = b;
	hash_insert(ob, b);
	ob->nbatches++;
	ob->bytes += b->len;
}

/* Unlink b (caller holds mu) and free it; a waiting statement counts it as done. */
static void pending_remove(tally_outbox *ob, ob_batch *b)
{
	b->prev->next = b->next;
	b->next->prev = b->prev;
	ob_batch **pp = &ob->buckets[id_hash(b->view_id, b->shard, b->seq, ob->nbuckets)];
	while (*pp != b)
		pp = &(*pp)->hnext;
	*pp = b->hnext;
	ob->nbatches--;
	ob->bytes -= b->len;
	if (b->wait)
		b->wait->remaining--;
	free(b->body);
	free(b);
}

static ob_batch *batch_new(const uint8_t *body, uint32_t len, uint8_t *owned, uint64_t lsn,
			   uint64_t end)
{
	ob_batch *b = tally_xcalloc(1, sizeof *b);
	if (owned) {
		b->body = owned;
	} else {
		b->body = tally_xmalloc(len ? len : 1);
		if (len)
			memcpy(b->body, body, len);
	}
	b->len = len;
	b->shard = tally_be32(b->body + TALLY_APPLY_HOME_OFF);
	b->seq = tally_be64(b->body + TALLY_APPLY_SEQ_OFF);
	b->view_id = tally_be64(b->body + TALLY_APPLY_VIEW_OFF);
	b->lsn = lsn;
	b->end = end;
	b->logged_us = tally_now_us();
	b->last_target = -1;
	return b;
}

/* ---- public ------------------------------------------------------------------------------- */

tally_outbox *tally_outbox_alloc(tally_node *n)
{
	tally_outbox *ob = tally_xcalloc(1, sizeof *ob);
	ob->n = n;
	pthread_mutex_init(&ob->mu, NULL);
	tally_cond_init_mono(&ob->work_cv);
	tally_cond_init_mono(&ob->done_cv);
	ob->list.next = ob->list.prev = &ob->list;
	return ob;
}

void tally_outbox_free(tally_outbox *ob)
{
	if (!ob)
		return;
	tally_outbox_stop(ob);
	while (ob->list.next != &ob->list)
		pending_remove(ob, ob->list.next);
	free(ob->buckets);
	free(ob->seqs);
	pthread_cond_destroy(&ob->work_cv);
	pthread_cond_destroy(&ob->done_cv);
	pthread_mutex_destroy(&ob->mu);
	free(ob);
}

uint64_t tally_outbox_min_lsn(tally_outbox *ob)
{
	pthread_mutex_lock(&ob->mu);
	uint64_t l = ob->list.next != &ob->list ? ob->list.next->lsn : UINT64_MAX;
	pthread_mutex_unlock(&ob->mu);
	return l;
}

void tally_outbox_totals(tally_outbox *ob, uint64_t *batches, uint64_t *bytes, uint64_t *delivered,
			 uint64_t *resends)
{
	pthread_mutex_lock(&ob->mu);
	*batches = ob->nbatches;
	*bytes = ob->bytes;
	*delivered = ob->delivered;
	*resends = ob->resends;
	pthread_mutex_unlock(&ob->mu);
}

static int replay_outbox(tally_outbox *ob, uint64_t lsn, uint64_t end, const uint8_t *p,
			 uint32_t len, tally_err *err)
{
	tally_rd r;
	tally_rd_init(&r, p, len);
	uint32_t nb;
	if (tally_rd_u32(&r, &nb) != 0)
		goto bad;
	for (uint32_t i = 0; i < nb; i++) {
		const uint8_t *body;
		uint32_t blen;
		if (tally_rd_str(&r, &body, &blen, TALLY_MSG_MAX) != 0)
			goto bad;
		tally_rd br;
		tally_rd_init(&br, body, blen);
		tally_msg_apply a;
		if (tally_msg_get_apply(&br, &a) != 0)
			goto bad;
		ob_batch *b = batch_new(body, blen, NULL, lsn, end);
		/* it may have been sent before the restart: wherever it goes now other than
		 * where that was, it goes as in doubt */
		b->in_doubt = true;
		pending_add(ob, b);
		seq_raise(ob, a.view_id, a.home_shard, a.seq);
	}
	if (tally_msg_done(&r) == 0)
		return 0;
bad:
	return tally_err_set(err, TALLY_SQLSTATE_DATA_CORRUPTED,
			     "malformed outbox record at log position %llu",
			     (unsigned long long)lsn);
}

static int replay_done(tally_outbox *ob, uint64_t lsn, const uint8_t *p, uint32_t len,
		       tally_err *err)
{
	tally_rd r;
	tally_rd_init(&r, p, len);
	uint32_t nb;
	if (tally_rd_u32(&r, &nb) != 0 || nb > tally_rd_left(&r) / 20)
		goto bad;
	for (uint32_t i = 0; i < nb; i++) {
		uint64_t v, s;
		uint32_t sh;
		if (tally_rd_u64(&r, &v) || tally_rd_u32(&r, &sh) || tally_rd_u64(&r, &s))
			goto bad;
		if (sh & SEQ_CAP_FLAG) {
			sh &= ~SEQ_CAP_FLAG;
			cap_raise(ob, v, sh, s);
		}
		seq_raise(ob, v, sh, s);
		ob_batch *b = hash_find(ob, v, sh, s);
		if (b)
			pending_remove(ob, b);
	}
	if (tally_msg_done(&r) == 0)
		return 0;
bad:
	return tally_err_set(err, TALLY_SQLSTATE_DATA_CORRUPTED,
			     "malformed outbox acknowledgement record at log position %llu",
			     (unsigned long long)lsn);
}

int tally_outbox_replay(tally_outbox *ob, uint8_t type, uint64_t lsn, uint64_t end,
			const uint8_t *p, uint32_t len, tally_err *err)
{
	pthread_mutex_lock(&ob->mu);
	int rc = type == TALLY_REC_OUTBOX ? replay_outbox(ob, lsn, end, p, len, err)
					  : replay_done(ob, lsn, p, len, err);
	pthread_mutex_unlock(&ob->mu);
	return rc;
}

tally_insert_level tally_insert_level_of(const tally_settings *s)
{
	const char *v = s->v[TALLY_SET_INSERT_LEVEL];
	if (strcmp(v, "sync_commit") == 0)
		return TALLY_INSERT_SYNC_COMMIT;
	if (strcmp(v, "async") == 0)
		return TALLY_INSERT_ASYNC;
	return TALLY_INSERT_SYNC_RECEIVE;
}

/* Remove every batch that points to w (caller holds mu): its statement stops waiting. */
static void detach_wait(tally_outbox *ob, ob_wait *w)
{
	for (ob_batch *b = ob->list.next; b != &ob->list; b = b->next)
		if (b->wait == w)
			b->wait = NULL;
}

int tally_outbox_submit(tally_node *n, tally_buf *bodies, int nb, tally_insert_level level,
			int timeout_ms, tally_err *err)
{
	tally_outbox *ob = n->outbox;
	if (nb == 0)
		return 0;
	int64_t limit = tally_settings_bytes(&n->cfg.defaults, TALLY_SET_OUTBOX_LIMIT);
	uint64_t total = 0;
	for (int i = 0; i < nb; i++)
		total += bodies[i].len;
	struct iovec *iov = tally_xcalloc((size_t)nb * 2 + 1, sizeof *iov);
	uint8_t *lens = tally_xmalloc((size_t)nb * 4 + 4);
	tally_put_be32(lens, (uint32_t)nb);
	iov[0].iov_base = lens;
	iov[0].iov_len = 4;
	for (int i = 0; i < nb; i++) {
		tally_put_be32(lens + 4 + 4 * i, (uint32_t)bodies[i].len);
		iov[1 + 2 * i].iov_base = lens + 4 + 4 * i;
		iov[1 + 2 * i].iov_len = 4;
		iov[2 + 2 * i].iov_base = bodies[i].data;
		iov[2 + 2 * i].iov_len = bodies[i].len;
	}
	ob_wait w = {.remaining = nb};
	uint64_t start = 0, end = 0;
	int rc = 0;
	pthread_mutex_lock(&ob->mu);
	if (ob->bytes + total > (uint64_t)limit && ob->bytes > 0) {
		rc = tally_err_set(err, "53400",
				   "outbox is full: %llu bytes of batches wait for delivery",
				   (unsigned long long)ob->bytes);
		tally_err_detail(err, "No row of the statement was accepted.");
		tally_err_hint(err,
			       "Check pipeline_cluster.outbox for the shards whose primaries do "
			       "not take batches; pipeline_cluster.outbox_limit is %s.",
			       n->cfg.defaults.v[TALLY_SET_OUTBOX_LIMIT]);
		pthread_mutex_unlock(&ob->mu);
		goto out;
	}
	for (int i = 0; i < nb; i++) {
		uint8_t *p = bodies[i].data;
		tally_put_be64(p, n->log_id);
		seq_entry *e = seq_get(ob, tally_be64(p + TALLY_APPLY_VIEW_OFF),
				       tally_be32(p + TALLY_APPLY_HOME_OFF));
		tally_put_be64(p + TALLY_APPLY_SEQ_OFF, ++e->seq);
	}
	if (tally_wal_append(n->wal, TALLY_REC_OUTBOX, iov, nb * 2 + 1, &start, &end, err) != 0) {
		/* The log is broken for good; nothing of the statement was acknowledged. */
		pthread_mutex_unlock(&ob->mu);
		rc = -1;
		goto out;
	}
	for (int i = 0; i < nb; i++) {
		ob_batch *b = batch_new(NULL, (uint32_t)bodies[i].len, bodies[i].data, start, end);
		bodies[i] = (tally_buf){0};
		if (level == TALLY_INSERT_SYNC_COMMIT)
			b->wait = &w;
		pending_add(ob, b);
	}
	pthread_cond_broadcast(&ob->work_cv);
	pthread_mutex_unlock(&ob->mu);
	if (level == TALLY_INSERT_ASYNC)
		goto out;
	if (tally_wal_flush(n->wal, end, timeout_ms, err) != 0) {
		if (level == TALLY_INSERT_SYNC_COMMIT) {
			pthread_mutex_lock(&ob->mu);
			detach_wait(ob, &w);
			pthread_mutex_unlock(&ob->mu);
		}
		rc = -1;
		goto out;
	}
	if (level == TALLY_INSERT_SYNC_COMMIT) {
		int64_t deadline = tally_mono_us() + (int64_t)timeout_ms * 1000;
		pthread_mutex_lock(&ob->mu);
		while (w.remaining > 0 && tally_mono_us() < deadline) {
			struct timespec ts = tally_mono_ts(deadline);
			pthread_cond_timedwait(&ob->done_cv, &ob->mu, &ts);
		}
		if (w.remaining > 0) {
			detach_wait(ob, &w);
			rc = tally_err_set(err, TALLY_SQLSTATE_UNAVAILABLE,
					   "could not confirm that the primaries applied %d of the "
					   "statement's %d batches within %d ms",
					   w.remaining, nb, timeout_ms);
			tally_err_detail(err,
					 "The rows are durable in the outbox of node %s and "
					 "will be applied in full once the primaries take them.",
					 n->cfg.name);
		}
		pthread_mutex_unlock(&ob->mu);
	}
out:
	free(iov);
	free(lens);
	return rc;
}

size_t tally_outbox_rows(tally_node *n, tally_outbox_row **rows)
{
	tally_outbox *ob = n->outbox;
	size_t cap = 16, nr = 0;
	tally_outbox_row *out = tally_xcalloc(cap, sizeof *out);
	pthread_mutex_lock(&ob->mu);
	for (ob_batch *b = ob->list.next; b != &ob->list; b = b->next) {
		size_t i;
		for (i = 0; i < nr; i++)
			if (out[i].view_id == b->view_id && out[i].shard == b->shard)
				break;
		if (i == nr) {
			if (nr == cap) {
				cap *= 2;
				out = tally_xrealloc(out, cap * sizeof *out);
			}
			out[nr++] = (tally_outbox_row){.view_id = b->view_id,
						       .shard = b->shard,
						       .oldest_us = b->logged_us,
						       .attempts = b->attempts};
		}
		out[i].batches++;
		out[i].bytes += b->len;
	}
	pthread_mutex_unlock(&ob->mu);
	*rows = out;
	return nr;
}

/* ---- senders ------------------------------------------------------------------------------ */

static bool dest_busy(const tally_outbox *ob, uint32_t dest)
{
	int n = 0;
	for (int i = 0; i < OB_SENDERS; i++)
		n += ob->busy[i] == dest;
	return n >= OB_PER_DEST;
}

/* Which nodes are reachable, asked once per round. */
typedef struct reach_memo {
	uint32_t id[32];
	bool ok[32];
	int n;
} reach_memo;

static bool reachable(tally_outbox *ob, const tally_catalog *cat, reach_memo *rm, uint32_t id)
{
	for (int i = 0; i < rm->n; i++)
		if (rm->id[i] == id)
			return rm->ok[i];
	bool ok = tally_node_reachable(ob->n, tally_catalog_node(cat, id));
	if (rm->n < 32) {
		rm->id[rm->n] = id;
		rm->ok[rm->n++] = ok;
	}
	return ok;
}

/* Where batch b goes this round (DESIGN §5): to the shard it was last sent to without an
 * answer if that one's primary is reachable (a resend there is recognised), otherwise to its
 * home shard, otherwise to the next shard on the ring (home+1, home+2, ...) whose primary is
 * reachable, as a hint for its home. Going anywhere but where it went before makes it in
 * doubt. False if no primary of the view is reachable. */
static bool route(tally_outbox *ob, const tally_catalog *cat, const tally_view_info *v, ob_batch *b,
		  reach_memo *rm, uint32_t *target, uint32_t *dest)
{
	uint32_t S = (uint32_t)v->num_shards;
	if (b->last_target >= 0 && (uint32_t)b->last_target < S &&
	    reachable(ob, cat, rm, v->primary[b->last_target])) {
		*target = (uint32_t)b->last_target;
		*dest = v->primary[*target];
		return true;
	}
	for (uint32_t k = 0; k < S; k++) {
		uint32_t i = (b->shard + k) % S;
		if ((int32_t)i == b->last_target || !reachable(ob, cat, rm, v->primary[i]))
			continue;
		*target = i;
		*dest = v->primary[i];
		return true;
	}
	return false;
}

/* Pick the next round (caller holds mu): up to OB_ROUND sendable batches to one destination
 * that fewer than OB_PER_DEST senders serve (so a dead one holds up at most that many).
 * Batches of dropped views are removed on the way (their ids go to done). Returns the count;
 * *wake is when something not yet sendable becomes so. */
static int pick_round(tally_outbox *ob, const tally_map *m, ob_batch **pick, uint64_t *floors,
		      uint32_t *dest, tally_buf *done, uint32_t *ndone, int64_t *wake)
{
	reach_memo memo[1];
	memo->n = 0;
	int64_t now = tally_mono_us();
	int np = 0;
	*dest = 0;
	*wake = now + 200000;
	uint64_t round = ++ob->rounds;
	for (ob_batch *b = ob->list.next, *nx; b != &ob->list && np < OB_ROUND; b = nx) {
		nx = b->next;
		/* The list is in log order, so the first pending batch of a (view, shard) met in
		 * this walk has its lowest pending seq: the floor sent along with its batches. */
		seq_entry *se = seq_get(ob, b->view_id, b->shard);
		if (se->stamp != round) {
			se->stamp = round;
			se->floor = b->seq;
		}
		if (b->inflight)
			continue;
		if (b->next_try_us > now) {
			if (b->next_try_us < *wake)
				*wake = b->next_try_us;
			continue;
		}
		const tally_view_info *v = tally_catalog_view_by_id(m->cat, b->view_id);
		if (!v && b->view_id >= m->cat->next_id)
			continue; /* a view newer than this map (or no map yet): wait */
		if (!v || b->shard >= (uint32_t)v->num_shards) {
			tally_log_info("discarding a batch for shard %u of dropped view id %llu",
				       b->shard, (unsigned long long)b->view_id);
			tally_buf_put_u64(done, b->view_id);
			tally_buf_put_u32(done, b->shard);
			tally_buf_put_u64(done, b->seq);
			(*ndone)++;
			pending_remove(ob, b);
			continue;
		}
		uint32_t target, bdest;
		if (!route(ob, m->cat, v, b, memo, &target, &bdest))
			continue; /* no primary of the view is reachable: it waits */
		if (*dest && bdest != *dest)
			continue;
		if (!*dest) {
			if (dest_busy(ob, bdest))
				continue;
			*dest = bdest;
		}
		b->target = target;
		/* The home shard must not count a batch a holder took as applied before its
		 * hand-off arrives: its floor stays below the lowest such seq. A holder's own
		 * dedup of hints can take the plain floor (every lower seq was acknowledged by
		 * someone and is never sent again). */
		floors[np] =
		    target == b->shard && se->cap && se->cap < se->floor ? se->cap : se->floor;
		pick[np++] = b;
	}
	return np;
}

static void log_done(tally_outbox *ob, tally_buf *done, uint32_t ndone)
{
	if (ndone == 0)
		return;
	uint8_t cnt[4];
	tally_put_be32(cnt, ndone);
	struct iovec iov[2] = {{cnt, 4}, {done->data, done->len}};
	uint64_t s, e;
	tally_err err;
	tally_err_clear(&err);
	if (tally_wal_append(ob->n->wal, TALLY_REC_OUTBOX_DONE, iov, 2, &s, &e, &err) != 0)
		tally_log_warn("could not log delivered batches: %s", err.message);
}

static void *sender_main(void *arg)
{
	tally_outbox *ob = arg;
	tally_node *n = ob->n;
	int slot = -1;
	ob_batch *pick[OB_ROUND];
	uint64_t floors[OB_ROUND];
	tally_rpc_call *calls = tally_xcalloc(OB_ROUND, sizeof *calls);
	tally_buf reqs[OB_ROUND];
	memset(reqs, 0, sizeof reqs);
	tally_buf done = {0};
	pthread_mutex_lock(&ob->mu);
	for (int i = 0; i < ob->nthreads; i++)
		if (pthread_equal(ob->threads[i], pthread_self()))
			slot = i;
	while (!ob->stopping) {
		tally_map *m = tally_node_map(n);
		uint32_t dest, ndone = 0;
		int64_t wake;
		tally_buf_reset(&done);
		int np = pick_round(ob, m, pick, floors, &dest, &done, &ndone, &wake);
		if (np == 0) {
			if (ndone) {
				pthread_cond_broadcast(&ob->done_cv);
				pthread_mutex_unlock(&ob->mu);
				log_done(ob, &done, ndone);
				pthread_mutex_lock(&ob->mu);
			} else {
				struct timespec ts = tally_mono_ts(wake);
				pthread_cond_timedwait(&ob->work_cv, &ob->mu, &ts);
			}
			pthread_mutex_unlock(&ob->mu);
			tally_map_put(m);
			pthread_mutex_lock(&ob->mu);
			continue;
		}
		uint64_t maxend = 0;
		for (int i = 0; i < np; i++) {
			pick[i]->inflight = true;
			if (pick[i]->end > maxend)
				maxend = pick[i]->end;
		}
		if (slot >= 0)
			ob->busy[slot] = dest;
		pthread_mutex_unlock(&ob->mu);

		const tally_node_info *pn = tally_catalog_node(m->cat, dest);
		tally_err err;
		tally_err_clear(&err);
		bool durable = tally_wal_flush(n->wal, maxend, -1, &err) == 0;
		/* A resend costs little (the primary recognises it), a dead peer the map still
		 * shows up costs this long per round: keep it short. */
		int timeout = (int)tally_settings_ms(&n->cfg.defaults, TALLY_SET_RPC_TIMEOUT);
		if (timeout > 2000)
			timeout = 2000;
		for (int i = 0; i < np && durable; i++) {
			tally_buf_reset(&reqs[i]);
			tally_msg_begin(&reqs[i], TALLY_MSG_APPLY, tally_node_next_req(n),
					m->cat->epoch);
			tally_buf_append(&reqs[i], pick[i]->body, pick[i]->len);
			tally_put_be64(reqs[i].data + TALLY_MSG_HDR + TALLY_APPLY_FLOOR_OFF,
				       floors[i]);
			tally_put_be32(reqs[i].data + TALLY_MSG_HDR + TALLY_APPLY_TARGET_OFF,
				       pick[i]->target);
			/* sent before elsewhere without an answer: it may be applied there */
			if (pick[i]->last_target >= 0 &&
			    (uint32_t)pick[i]->last_target != pick[i]->target)
				pick[i]->in_doubt = true;
			if (pick[i]->in_doubt && pick[i]->target != pick[i]->shard)
				tally_put_be16(reqs[i].data + 4, TALLY_MSG_F_IN_DOUBT);
			tally_msg_end(&reqs[i]);
			memset(&calls[i], 0, sizeof calls[i]);
			calls[i].addr = pn->data_addr;
			calls[i].peer = pn->name;
			calls[i].req = reqs[i];
		}
		if (durable) {
			tally_rpc_call_many(n->rpc, calls, np, timeout);
			for (int i = 0; i < np; i++)
				tally_node_note_call(n, dest, &calls[i]);
		} else
			tally_log_error("outbox: the log failed: %s", err.message);

		pthread_mutex_lock(&ob->mu);
		int64_t now = tally_mono_us();
		int nfailed = 0, first_failed = -1;
		uint32_t max_attempts = 0;
		for (int i = 0; i < np; i++) {
			ob_batch *b = pick[i];
			bool ok =
			    durable && calls[i].rc == 0 && calls[i].hdr.type == TALLY_MSG_APPLY_OK;
			if (ok) {
				/* a holder of hints took it: floors for its home stay below it
				 * (the home shard has not seen it yet) */
				bool hinted = b->target != b->shard;
				if (hinted)
					cap_raise(ob, b->view_id, b->shard, b->seq);
				tally_buf_put_u64(&done, b->view_id);
				tally_buf_put_u32(&done, b->shard | (hinted ? SEQ_CAP_FLAG : 0));
				tally_buf_put_u64(&done, b->seq);
				ndone++;
				ob->delivered++;
				pending_remove(ob, b);
				continue;
			}
			b->inflight = false;
			if (durable)
				b->last_target = (int32_t)b->target;
			b->attempts++;
			ob->resends++;
			int64_t backoff = OB_BACKOFF_MIN_US
					  << (b->attempts < 6 ? b->attempts - 1 : 5);
			if (backoff > OB_BACKOFF_MAX_US)
				backoff = OB_BACKOFF_MAX_US;
			b->next_try_us = now + backoff;
			if (first_failed < 0)
				first_failed = i;
			if (b->attempts > max_attempts)
				max_attempts = b->attempts;
			nfailed++;
		}
		/* one line per failed round, and then only now and then for a long outage */
		if (durable && nfailed && (max_attempts == 1 || max_attempts % 20 == 0))
			tally_log_warn("outbox: %d of %d batches not applied by %s (attempt %u), "
				       "will retry: %s",
				       nfailed, np, pn->name, max_attempts,
				       calls[first_failed].errmsg);
		if (durable)
			tally_rpc_calls_done(calls, np);
		if (slot >= 0)
			ob->busy[slot] = 0;
		pthread_cond_broadcast(&ob->done_cv);
		pthread_cond_broadcast(&ob->work_cv); /* the destination is free again */
		pthread_mutex_unlock(&ob->mu);
		log_done(ob, &done, ndone);
		tally_map_put(m);
		pthread_mutex_lock(&ob->mu);
	}
	pthread_mutex_unlock(&ob->mu);
	for (int i = 0; i < OB_ROUND; i++)
		tally_buf_free(&reqs[i]);
	tally_buf_free(&done);
	free(calls);
	return NULL;
}

void tally_outbox_start(tally_outbox *ob)
{
	pthread_mutex_lock(&ob->mu);
	for (int i = 0; i < OB_SENDERS; i++)
		pthread_create(&ob->threads[i], NULL, sender_main, ob);
	ob->nthreads = OB_SENDERS;
	pthread_mutex_unlock(&ob->mu);
}

void tally_outbox_stop(tally_outbox *ob)
{
	pthread_mutex_lock(&ob->mu);
	ob->stopping = true;
	pthread_cond_broadcast(&ob->work_cv);
	int nt = ob->nthreads;
	ob->nthreads = 0;
	pthread_mutex_unlock(&ob->mu);
	for (int i = 0; i < nt; i++)
		pthread_join(ob->threads[i], NULL);
}
