/*
 * store.c - the worker's shard copies: for every (view, shard) this node holds, a hash table
 * of groups and their merged partial states, the shard's dedup state, and its snapshots.
 *
 * Exactly once (DESIGN §5): every batch carries its id (origin log id, home shard, seq). A
 * shard keeps, per origin, the highest seq up to which it applied every batch ("hi") and the
 * few it applied above that (batches overtake each other in flight). A batch already applied
 * is acknowledged again without being merged.
 *
 * Durability (DESIGN §9): a change is appended to the node's log (TALLY_REC_SHARD: the copy's
 * history id and position, then the change records, e.g. the APPLY body as received) and
 * merged in the same critical section under the shard's mutex, so the log order of a shard's
 * records is its merge order; the primary acknowledges once the log has it durably. A
 * checkpoint writes each changed shard to DIR/snap/<view>-<shard>.snap (temp file, fsync,
 * rename, fsync of the directory): header, history id and position, the aggregates'
 * signature, the end LSN of the last record it includes, the dedup state, every group, the
 * hints and their dedup state, and a CRC32C over all of it. Recovery loads the snapshots and
 * then replays the log records after each shard's LSN.
 *
 * Replication (DESIGN §6): every change a primary copy makes is a numbered record of its
 * history (gen, rlsn); the latest are kept in memory for the replicas (repl.c streams them);
 * a replica applies them in order, or takes a snapshot of the whole copy. Hints (DESIGN §5):
 * batches for another shard of the view are kept apart per batch, deduplicated per home
 * shard, visible to reads unless in doubt, and handed off to the home shard's primary.
 *
 * Concurrency: a shard copy is changed by one batch at a time under its own mutex; the lock
 * is taken once per batch, never per event. The shard directory is read-mostly behind a
 * rwlock.
 */
#include "worker.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#define SNAP_MAGIC 0x54534E50u /* "TSNP" */
#define SNAP_VERSION 3	       /* 2: gen and rlsn after the LSN; 3: hints after the groups */
#define DEDUP_ABOVE_MAX 65536  /* out-of-order batches one origin may have above its hi */

typedef struct dedup {
	uint64_t origin; /* 0 = empty slot */
	uint64_t hi;	 /* every seq <= hi was applied */
	uint32_t nabove, capabove;
	uint64_t *above; /* applied seqs > hi + 1, sorted */
} dedup;

/* One change record a primary copy keeps for its replicas (DESIGN §6). */
typedef struct rrec {
	uint64_t rlsn; /* position in the shard's history */
	uint64_t end;  /* end LSN of the node's log record holding it */
	int64_t us;    /* when it was applied (monotonic) */
	uint32_t len;
	uint8_t kind; /* TALLY_SREC_* */
	uint8_t *data;
} rrec;

typedef struct ddtab {
	dedup *dd; /* open addressing by origin */
	size_t ndd, ddcap;
} ddtab;

typedef struct shard {
	uint64_t view_id;
	uint32_t shard;
	pthread_mutex_t mu;
	tally_agg_spec *aggs; /* copied: the map that described the view may go away */
	int naggs;
	tally_arena arena;
	tally_gtab groups;
	ddtab own;	      /* batches applied to this shard's own groups, by origin */
	uint64_t applied_lsn; /* end LSN of the last record merged */
	uint64_t snap_lsn;    /* applied_lsn the snapshot on disk covers */
	uint64_t batches;     /* applied since start (not counting duplicates) */
	uint64_t duplicates;  /* batches recognised as already applied */
	/* replication: the history this copy belongs to and its position in it */
	uint64_t gen;  /* 0 = none yet; low 16 bits: node id of the primary that began it */
	uint64_t rlsn; /* change records applied in that history */
	rrec *rb;      /* records kept for replicas: a ring of rb_cap, rb_n from rb_head */
	size_t rb_head, rb_n, rb_cap;
	uint64_t rb_bytes;
	bool retired; /* replaced by a snapshot from the primary: never written to disk again */
	/* a replica's last word from its primary: where the primary copy was, and when */
	uint64_t pri_gen, pri_rlsn;
	int64_t pri_us;
	/* hints (DESIGN §5): batches for other shards of the view (their home), kept apart */
	struct hint *hints;
	size_t nhints, caphints;
	tally_arena harena;
	tally_gtab hvis; /* the visible hints merged, for reads */
	struct hdd *hdd; /* hint dedup per home shard */
	size_t nhdd;
} shard;

enum { HINT_VISIBLE = 0, HINT_IN_DOUBT = 1, HINT_HANDOFF = 2 };
enum { HOP_HANDOFF = 2, HOP_DROP = 3, HOP_REVERT = 4 };

typedef struct hint {
	uint64_t origin, seq;
	uint32_t home;
	uint8_t state, prior; /* prior: the state before a hand-off began */
	uint32_t len;
	uint8_t *body; /* the APPLY body as received */
} hint;

struct hdd {
	uint32_t home;
	ddtab t;
};

struct tally_store {
	pthread_rwlock_t mu; /* prefers writers: a steady stream of applies must not starve sync */
	shard **shards;
	int n, cap;
	shard *
	    *dropped; /* dropped by sync; freed by the next checkpoint (which may be using them) */
	int ndropped, capdropped;
	uint64_t synced_epoch; /* epoch of the last map tally_store_sync applied */
	char dir[600];	       /* DIR/snap */
	bool fsync;
	uint64_t keep_bytes;	 /* change records a primary copy keeps for its replicas */
	pthread_mutex_t snap_mu; /* one snapshot file written at a time; orders retirement */
};

tally_store *tally_store_alloc(const char *node_dir, bool fsync, uint64_t keep_bytes)
{
	tally_store *st = tally_xcalloc(1, sizeof *st);
	st->keep_bytes = keep_bytes;
	pthread_mutex_init(&st->snap_mu, NULL);
	pthread_rwlockattr_t ra;
	pthread_rwlockattr_init(&ra);
	pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&st->mu, &ra);
	pthread_rwlockattr_destroy(&ra);
	snprintf(st->dir, sizeof st->dir, "%s/snap", node_dir);
	st->fsync = fsync;
	return st;
}

static void dd_free(ddtab *t);

static void rb_clear(shard *s)
{
	for (size_t i = 0; i < s->rb_n; i++) {
		rrec *x = &s->rb[(s->rb_head + i) % s->rb_cap];
		free(x->data);
	}
	free(s->rb);
	s->rb = NULL;
	s->rb_head = s->rb_n = s->rb_cap = 0;
	s->rb_bytes = 0;
}

static void hints_free(shard *s)
{
	for (size_t i = 0; i < s->nhints; i++)
		free(s->hints[i].body);
	free(s->hints);
	s->hints = NULL;
	s->nhints = s->caphints = 0;
	for (size_t i = 0; i < s->nhdd; i++)
		dd_free(&s->hdd[i].t);
	free(s->hdd);
	s->hdd = NULL;
	s->nhdd = 0;
	tally_gtab_fini(&s->hvis);
	tally_arena_free(&s->harena);
}

static void shard_free(shard *s)
{
	hints_free(s);
	rb_clear(s);
	tally_gtab_fini(&s->groups);
	tally_arena_free(&s->arena);
	dd_free(&s->own);
	pthread_mutex_destroy(&s->mu);
	free(s->aggs);
	free(s);
}

void tally_store_free(tally_store *st)
{
	if (!st)
		return;
	for (int i = 0; i < st->n; i++)
		shard_free(st->shards[i]);
	for (int i = 0; i < st->ndropped; i++)
		shard_free(st->dropped[i]);
	free(st->shards);
	free(st->dropped);
	pthread_rwlock_destroy(&st->mu);
	pthread_mutex_destroy(&st->snap_mu);
	free(st);
}

/* ---- dedup -------------------------------------------------------------------------------- */

static void dd_free(ddtab *t)
{
	for (size_t i = 0; i < t->ddcap; i++)
		free(t->dd[i].above);
	free(t->dd);
	memset(t, 0, sizeof *t);
}

static dedup *dd_find(ddtab *s, uint64_t origin, bool create)
{
	if (create && (s->ndd + 1) * 2 > s->ddcap) {
		size_t ncap = s->ddcap ? s->ddcap * 2 : 8;
		dedup *nt = tally_xcalloc(ncap, sizeof *nt);
		for (size_t i = 0; i < s->ddcap; i++) {
			if (!s->dd[i].origin)
				continue;
			size_t j = (size_t)(s->dd[i].origin * 0x9E3779B97F4A7C15ull) & (ncap - 1);
			while (nt[j].origin)
				j = (j + 1) & (ncap - 1);
			nt[j] = s->dd[i];
		}
		free(s->dd);
		s->dd = nt;
		s->ddcap = ncap;
	}
	if (!s->ddcap)
		return NULL;
	size_t j = (size_t)(origin * 0x9E3779B97F4A7C15ull) & (s->ddcap - 1);
	while (s->dd[j].origin && s->dd[j].origin != origin)
		j = (j + 1) & (s->ddcap - 1);
	if (s->dd[j].origin)
		return &s->dd[j];
	if (!create)
		return NULL;
	s->dd[j].origin = origin;
	s->ndd++;
	return &s->dd[j];
}

static bool dd_seen(ddtab *s, uint64_t origin, uint64_t seq)
{
	dedup *d = dd_find(s, origin, false);
	if (!d)
		return false;
	if (seq <= d->hi)
		return true;
	uint32_t lo = 0, hi = d->nabove;
	while (lo < hi) {
		uint32_t mid = (lo + hi) / 2;
		if (d->above[mid] == seq)
			return true;
		if (d->above[mid] < seq)
			lo = mid + 1;
		else
			hi = mid;
	}
	return false;
}

/* The origin says every seq below floor was acknowledged (by this shard, perhaps in an
 * incarnation whose state was lost): count them as applied, so the contiguous mark never
 * waits for batches that will not come. */
static void dd_floor(ddtab *s, uint64_t origin, uint64_t floor)
{
	if (floor <= 1)
		return;
	dedup *d = dd_find(s, origin, true);
	if (floor - 1 <= d->hi)
		return;
	d->hi = floor - 1;
	uint32_t k = 0;
	while (k < d->nabove && d->above[k] <= d->hi + 1) {
		if (d->above[k] == d->hi + 1)
			d->hi++;
		k++;
	}
	if (k) {
		memmove(d->above, d->above + k, (size_t)(d->nabove - k) * sizeof *d->above);
		d->nabove -= k;
	}
}

/* Room to note one more batch of origin above its hi (as raised by floor)? */
static bool dd_has_room(ddtab *s, uint64_t origin, uint64_t seq, uint64_t floor)
{
	dedup *d = dd_find(s, origin, false);
	uint64_t hi = d ? d->hi : 0;
	if (floor > 1 && floor - 1 > hi)
		hi = floor - 1;
	return !d || seq == hi + 1 || d->nabove < DEDUP_ABOVE_MAX;
}

static void dd_add(ddtab *s, uint64_t origin, uint64_t seq)
{
	dedup *d = dd_find(s, origin, true);
	if (seq <= d->hi)
		return;
	if (seq == d->hi + 1) {
		dd_floor(s, origin, seq + 1);
		return;
	}
	uint32_t pos = d->nabove;
	while (pos > 0 && d->above[pos - 1] > seq)
		pos--;
	if (pos > 0 && d->above[pos - 1] == seq)
		return;
	if (d->nabove == d->capabove) {
		d->capabove = d->capabove ? d->capabove * 2 : 8;
		d->above = tally_xrealloc(d->above, (size_t)d->capabove * sizeof *d->above);
	}
	memmove(d->above + pos + 1, d->above + pos, (size_t)(d->nabove - pos) * sizeof *d->above);
	d->above[pos] = seq;
	d->nabove++;
}

/* ---- shard directory ---------------------------------------------------------------------- */

static shard *find(tally_store *st, uint64_t view_id, uint32_t sh)
{
	for (int i = 0; i < st->n; i++)
		if (st->shards[i]->view_id == view_id && st->shards[i]->shard == sh)
			return st->shards[i];
	return NULL;
}

static shard *shard_alloc(const tally_view_rt *v, uint32_t sh)
{
	shard *s = tally_xcalloc(1, sizeof *s);
	s->view_id = v->info->id;
	s->shard = sh;
	pthread_mutex_init(&s->mu, NULL);
	s->naggs = v->plan->naggs;
	s->aggs = tally_xcalloc((size_t)s->naggs + 1, sizeof *s->aggs);
	memcpy(s->aggs, v->plan->aggs, (size_t)s->naggs * sizeof *s->aggs);
	tally_gtab_init(&s->groups, s->aggs, s->naggs, &s->arena);
	tally_gtab_init(&s->hvis, s->aggs, s->naggs, &s->harena);
	return s;
}

static void table_add(tally_store *st, shard *s)
{
	if (st->n == st->cap) {
		st->cap = st->cap ? st->cap * 2 : 16;
		st->shards = tally_xrealloc(st->shards, (size_t)st->cap * sizeof *st->shards);
	}
	st->shards[st->n++] = s;
}

/* Keep s for freeing at the next checkpoint (caller holds st->mu for writing). */
static void retire(tally_store *st, shard *s)
{
	if (st->ndropped == st->capdropped) {
		st->capdropped = st->capdropped ? st->capdropped * 2 : 16;
		st->dropped =
		    tally_xrealloc(st->dropped, (size_t)st->capdropped * sizeof *st->dropped);
	}
	st->dropped[st->ndropped++] = s;
}

static shard *shard_new(tally_store *st, const tally_view_rt *v, uint32_t sh)
{
	shard *s = shard_alloc(v, sh);
	table_add(st, s);
	return s;
}

/* ---- change records kept for replicas ------------------------------------------------------ */

static void rb_pop(shard *s)
{
	rrec *x = &s->rb[s->rb_head];
	s->rb_bytes -= x->len;
	free(x->data);
	s->rb_head = (s->rb_head + 1) % s->rb_cap;
	s->rb_n--;
}

/* Keep record rlsn (a copy of data) for the replicas, dropping the oldest beyond keep bytes:
 * a replica that needs those gets a snapshot instead. */
static void rb_push(shard *s, uint64_t keep, uint64_t rlsn, uint64_t end, uint8_t kind,
		    const uint8_t *data, uint32_t len)
{
	if (s->rb_n && s->rb[(s->rb_head + s->rb_n - 1) % s->rb_cap].rlsn + 1 != rlsn)
		rb_clear(s); /* not contiguous (history changed): start over */
	if (s->rb_n == s->rb_cap) {
		size_t ncap = s->rb_cap ? s->rb_cap * 2 : 64;
		rrec *nr = tally_xcalloc(ncap, sizeof *nr);
		for (size_t i = 0; i < s->rb_n; i++)
			nr[i] = s->rb[(s->rb_head + i) % s->rb_cap];
		free(s->rb);
		s->rb = nr;
		s->rb_head = 0;
		s->rb_cap = ncap;
	}
	rrec *x = &s->rb[(s->rb_head + s->rb_n) % s->rb_cap];
	x->rlsn = rlsn;
	x->end = end;
	x->us = tally_mono_us();
	x->kind = kind;
	x->len = len;
	x->data = tally_xmalloc(len ? len : 1);
	if (len)
		memcpy(x->data, data, len);
	s->rb_n++;
	s->rb_bytes += len;
	while (s->rb_n > 1 && s->rb_bytes > keep)
		rb_pop(s);
}

/* A new history identity for a copy this node (self) becomes the primary of. */
static uint64_t gen_new(uint32_t self)
{
	uint64_t r = 0;
	while ((r >> 16) == 0)
		if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
			r = (uint64_t)tally_now_us() << 16;
	return (r & ~0xFFFFull) | (self & 0xFFFFu);
}

static bool gen_mine(uint64_t gen, uint32_t self)
{
	return gen != 0 && (gen & 0xFFFFu) == (self & 0xFFFFu);
}

/* Append one TALLY_REC_SHARD record: header + n records (kinds[i], bodies[i]). */
static int log_shard(tally_wal *wal, const shard *s, uint64_t gen, uint64_t first, uint32_t n,
		     const uint8_t *kinds, const struct iovec *bodies, uint64_t *start,
		     uint64_t *end, tally_err *err)
{
	uint8_t hdr[32];
	tally_put_be64(hdr, s->view_id);
	tally_put_be32(hdr + 8, s->shard);
	tally_put_be64(hdr + 12, gen);
	tally_put_be64(hdr + 20, first);
	tally_put_be32(hdr + 28, n);
	struct iovec stackv[1 + 2 * 16];
	uint8_t stackh[5 * 16];
	struct iovec *iov = n <= 16 ? stackv : tally_xcalloc(1 + 2 * (size_t)n, sizeof *iov);
	uint8_t *rh = n <= 16 ? stackh : tally_xmalloc(5 * (size_t)n);
	iov[0] = (struct iovec){hdr, sizeof hdr};
	for (uint32_t i = 0; i < n; i++) {
		rh[5 * i] = kinds[i];
		tally_put_be32(rh + 5 * i + 1, (uint32_t)bodies[i].iov_len);
		iov[1 + 2 * i] = (struct iovec){rh + 5 * i, 5};
		iov[2 + 2 * i] = bodies[i];
	}
	int rc = tally_wal_append(wal, TALLY_REC_SHARD, iov, 1 + 2 * (int)n, start, end, err);
	if (n > 16) {
		free(iov);
		free(rh);
	}
	return rc;
}

/* Make this node (self) the author of s's history if it is not yet (a new primary copy, or a
 * replica promoted): a new gen, logged (as a record with no changes) before any change made
 * under it. Caller holds s->mu. */
static int ensure_gen(shard *s, tally_wal *wal, uint32_t self, tally_err *err)
{
	if (gen_mine(s->gen, self))
		return 0;
	uint64_t gen = gen_new(self), start, end;
	if (log_shard(wal, s, gen, s->rlsn + 1, 0, NULL, NULL, &start, &end, err) != 0)
		return -1;
	if (s->gen)
		tally_log_info("shard %llu/%u: this node is its primary now; new history %016llx "
			       "from position %llu",
			       (unsigned long long)s->view_id, s->shard, (unsigned long long)gen,
			       (unsigned long long)s->rlsn);
	s->gen = gen;
	s->applied_lsn = end;
	rb_clear(s);
	return 0;
}

/* Find (and with create, make) a shard copy. Returns with st->mu read-locked: the caller
 * releases it when done with the shard, so tally_store_sync cannot free it underneath. A
 * request decided on a map older than the last sync does not create shards: its view may be
 * the one that sync just dropped. */
static shard *get_locked(tally_store *st, const tally_view_rt *v, uint64_t epoch, uint32_t sh,
			 bool create)
{
	pthread_rwlock_rdlock(&st->mu);
	shard *s = find(st, v->info->id, sh);
	if (s || !create)
		return s;
	pthread_rwlock_unlock(&st->mu);
	pthread_rwlock_wrlock(&st->mu);
	s = find(st, v->info->id, sh);
	if (!s && epoch >= st->synced_epoch)
		shard_new(st, v, sh);
	pthread_rwlock_unlock(&st->mu);
	pthread_rwlock_rdlock(&st->mu);
	return find(st, v->info->id, sh); /* NULL if the view is gone */
}

/* Copy sh of v for a change, made if missing: returned with st->mu read-locked and its own
 * mutex held (the caller releases both), or NULL with err and nothing held if the view was
 * dropped. */
static shard *lock_for_change(tally_store *st, const tally_view_rt *v, uint64_t epoch, uint32_t sh,
			      tally_err *err)
{
	shard *s = get_locked(st, v, epoch, sh, true);
	if (!s) {
		pthread_rwlock_unlock(&st->mu);
		tally_err_set(err, TALLY_SQLSTATE_UNDEFINED_TABLE,
			      "continuous view \"%s\" was dropped", v->info->name);
		return NULL;
	}
	pthread_mutex_lock(&s->mu);
	return s;
}

/* Walk a batch's groups without changing anything: every key and state must decode with the
 * shard's own aggregates. */
static int validate(const tally_agg_spec *aggs, int naggs, uint32_t ngroups, tally_rd r)
{
	_Alignas(16) uint8_t slot[TALLY_AGG_SLOT];
	for (uint32_t i = 0; i < ngroups; i++) {
		const uint8_t *key;
		uint32_t keylen;
		if (tally_rd_str(&r, &key, &keylen, TALLY_GROUP_KEY_MAX) != 0)
			return -1;
		for (int k = 0; k < naggs; k++) {
			int rc = tally_agg_deserialize(&aggs[k], &r, slot);
			tally_agg_release(&aggs[k], slot);
			if (rc != 0)
				return -1;
		}
	}
	return tally_msg_done(&r);
}

/* Check a batch completely, then merge it (caller holds s->mu). All checks come before the
 * first merge, so a refused batch changes nothing. */
static int merge_batch(shard *s, const tally_view_rt *v, const tally_msg_apply *a, tally_rd *r,
		       tally_err *err)
{
	if (s->naggs != v->plan->naggs ||
	    memcmp(s->aggs, v->plan->aggs, (size_t)s->naggs * sizeof *s->aggs) != 0)
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
				     "shard %s_%u holds another definition of the view",
				     v->info->name, a->target_shard);
	if (validate(s->aggs, s->naggs, a->ngroups, *r) != 0)
		return tally_err_set(err, TALLY_SQLSTATE_PROTOCOL,
				     "malformed batch for shard %s_%u", v->info->name,
				     a->target_shard);
	if (tally_gtab_reserve(&s->groups, a->ngroups) != 0)
		return tally_err_set(err, TALLY_SQLSTATE_OUT_OF_MEMORY,
				     "out of memory applying to shard %s_%u", v->info->name,
				     a->target_shard);
	return 0;
}

static int merge_groups(shard *s, const tally_view_rt *v, const tally_msg_apply *a, tally_rd *r)
{
	for (uint32_t i = 0; i < a->ngroups; i++) {
		if (tally_group_merge_encoded(&s->groups, r) != 0) {
			/* only an allocation of a new group's entry can fail here */
			tally_log_error("shard %s_%u: out of memory in the middle of a batch",
					v->info->name, a->target_shard);
			return -1;
		}
	}
	return 0;
}

static int apply_rec(shard *s, const tally_view_rt *v, uint8_t kind, const uint8_t *p, uint32_t len,
		     bool check, tally_err *err);
static int primary_change(tally_store *st, tally_wal *wal, shard *s, const tally_view_rt *v,
			  uint32_t self, uint8_t kind, const uint8_t *p, uint32_t len,
			  uint64_t *flush_lsn, uint64_t *rlsn, tally_err *err);

/* ---- hints (DESIGN §5) --------------------------------------------------------------------- */

static ddtab *hint_dd(shard *s, uint32_t home, bool create)
{
	for (size_t i = 0; i < s->nhdd; i++)
		if (s->hdd[i].home == home)
			return &s->hdd[i].t;
	if (!create)
		return NULL;
	s->hdd = tally_xrealloc(s->hdd, (s->nhdd + 1) * sizeof *s->hdd);
	memset(&s->hdd[s->nhdd], 0, sizeof s->hdd[s->nhdd]);
	s->hdd[s->nhdd].home = home;
	return &s->hdd[s->nhdd++].t;
}

static bool hint_seen(shard *s, uint32_t home, uint64_t origin, uint64_t seq)
{
	ddtab *t = hint_dd(s, home, false);
	return t && dd_seen(t, origin, seq);
}

/* Merge a hint's groups into the visible table (validated before). */
static int hvis_merge(shard *s, const uint8_t *body, uint32_t len)
{
	tally_rd r;
	tally_rd_init(&r, body, len);
	tally_msg_apply a;
	if (tally_msg_get_apply(&r, &a) != 0)
		return -1;
	for (uint32_t i = 0; i < a.ngroups; i++)
		if (tally_group_merge_encoded(&s->hvis, &r) != 0)
			return -1;
	return 0;
}

/* The visible table again from the visible hints (after hints were hidden or dropped). */
static void hvis_rebuild(shard *s)
{
	tally_gtab_fini(&s->hvis);
	tally_arena_free(&s->harena);
	tally_gtab_init(&s->hvis, s->aggs, s->naggs, &s->harena);
	for (size_t i = 0; i < s->nhints; i++)
		if (s->hints[i].state == HINT_VISIBLE &&
		    hvis_merge(s, s->hints[i].body, s->hints[i].len) != 0)
			tally_log_error("shard %llu/%u: out of memory rebuilding its hints",
					(unsigned long long)s->view_id, s->shard);
}

/* Keep a hint (a copy of body); its batch id goes into the home shard's hint dedup. */
static int hint_keep(shard *s, uint8_t state, const uint8_t *body, uint32_t len)
{
	tally_rd r;
	tally_rd_init(&r, body, len);
	tally_msg_apply a;
	if (tally_msg_get_apply(&r, &a) != 0)
		return -1;
	if (s->nhints == s->caphints) {
		s->caphints = s->caphints ? s->caphints * 2 : 16;
		s->hints = tally_xrealloc(s->hints, s->caphints * sizeof *s->hints);
	}
	hint *h = &s->hints[s->nhints++];
	h->origin = a.origin;
	h->seq = a.seq;
	h->home = a.home_shard;
	h->state = h->prior = state;
	h->len = len;
	h->body = tally_xmalloc(len ? len : 1);
	memcpy(h->body, body, len);
	ddtab *t = hint_dd(s, a.home_shard, true);
	dd_floor(t, a.origin, a.floor);
	dd_add(t, a.origin, a.seq);
	if (state == HINT_VISIBLE && hvis_merge(s, body, len) != 0)
		return -1;
	return 0;
}

/* A hint from a snapshot: checked like one from the log, then kept in its saved state. */
static int hint_load(shard *s, uint8_t state, uint8_t prior, const uint8_t *body, uint32_t len)
{
	tally_rd r;
	tally_rd_init(&r, body, len);
	tally_msg_apply a;
	if (tally_msg_get_apply(&r, &a) != 0 || a.view_id != s->view_id ||
	    a.target_shard != s->shard || a.home_shard == s->shard ||
	    validate(s->aggs, s->naggs, a.ngroups, r) != 0 ||
	    hint_keep(s, state == HINT_VISIBLE ? HINT_VISIBLE : HINT_IN_DOUBT, body, len) != 0)
		return -1;
	s->hints[s->nhints - 1].state = state;
	s->hints[s->nhints - 1].prior = prior;
	return 0;
}

typedef struct hint_id {
	uint32_t home;
	uint64_t origin, seq;
	uint8_t op;
} hint_id;

static int hint_id_cmp(const void *pa, const void *pb)
{
	const hint_id *a = pa, *b = pb;
	if (a->home != b->home)
		return a->home < b->home ? -1 : 1;
	if (a->origin != b->origin)
		return a->origin < b->origin ? -1 : 1;
	return a->seq < b->seq ? -1 : a->seq > b->seq;
}

/* Apply a HINT_STATE record's operations (ids sorted). */
static void hint_ops(shard *s, hint_id *ids, size_t n)
{
	qsort(ids, n, sizeof *ids, hint_id_cmp);
	bool rebuild = false;
	size_t j = 0;
	for (size_t i = 0; i < s->nhints; i++) {
		hint *h = &s->hints[i];
		hint_id key = {.home = h->home, .origin = h->origin, .seq = h->seq};
		const hint_id *op = bsearch(&key, ids, n, sizeof *ids, hint_id_cmp);
		if (op && op->op == HOP_HANDOFF && h->state != HINT_HANDOFF) {
			rebuild |= h->state == HINT_VISIBLE;
			h->prior = h->state;
			h->state = HINT_HANDOFF;
		} else if (op && op->op == HOP_REVERT && h->state == HINT_HANDOFF) {
			/* it may have reached the home shard already (its answer got lost): from
			 * now on it is in doubt, never visible again (DESIGN §5) */
			h->state = HINT_IN_DOUBT;
		} else if (op && op->op == HOP_DROP) {
			rebuild |= h->state == HINT_VISIBLE;
			free(h->body);
			continue;
		}
		s->hints[j++] = *h;
	}
	s->nhints = j;
	if (rebuild)
		hvis_rebuild(s);
}

static int parse_hint_ops(const uint8_t *p, uint32_t len, hint_id **out, size_t *n)
{
	tally_rd r;
	tally_rd_init(&r, p, len);
	uint32_t k;
	if (tally_rd_u32(&r, &k) || k > tally_rd_left(&r) / 21)
		return -1;
	hint_id *ids = tally_xcalloc((size_t)k + 1, sizeof *ids);
	for (uint32_t i = 0; i < k; i++) {
		if (tally_rd_u32(&r, &ids[i].home) || tally_rd_u64(&r, &ids[i].origin) ||
		    tally_rd_u64(&r, &ids[i].seq) || tally_rd_u8(&r, &ids[i].op) ||
		    ids[i].op < HOP_HANDOFF || ids[i].op > HOP_REVERT) {
			free(ids);
			return -1;
		}
	}
	if (tally_msg_done(&r) != 0) {
		free(ids);
		return -1;
	}
	*out = ids;
	*n = k;
	return 0;
}

int tally_store_apply(tally_store *st, tally_wal *wal, const tally_view_rt *v, uint64_t epoch,
		      uint32_t self, unsigned flags, const tally_msg_apply *a, const uint8_t *body,
		      size_t bodylen, tally_rd *r, uint64_t *flush_lsn, uint64_t *rlsn,
		      tally_err *err)
{
	shard *s = lock_for_change(st, v, epoch, a->target_shard, err);
	if (!s)
		return -1;
	int rc = 0;
	bool is_hint = a->home_shard != a->target_shard;
	ddtab *dt = is_hint ? hint_dd(s, a->home_shard, false) : &s->own;
	/* (a->floor <= a->seq: the floor says nothing about this batch itself, only about lower
	 * seqs; it is taken in only with a batch that is applied or recognised.) */
	if (is_hint ? hint_seen(s, a->home_shard, a->origin, a->seq)
		    : dd_seen(&s->own, a->origin, a->seq)) {
		/* Applied before: acknowledge again, once the log has it durably (the first
		 * attempt's flush may still be running) and, for sync replication, once the
		 * replicas have everything up to here. */
		if (!is_hint)
			dd_floor(&s->own, a->origin, a->floor);
		s->duplicates++;
		*flush_lsn = s->applied_lsn;
		*rlsn = s->rlsn;
	} else if (dt && !dd_has_room(dt, a->origin, a->seq, a->floor)) {
		rc = tally_err_set(err, TALLY_SQLSTATE_INSUFFICIENT_RESOURCES,
				   "shard %s_%u has too many out-of-order batches from one origin",
				   v->info->name, a->target_shard);
	} else if (!is_hint) {
		if ((rc = merge_batch(s, v, a, r, err)) == 0)
			rc = primary_change(st, wal, s, v, self, TALLY_SREC_APPLY, body,
					    (uint32_t)bodylen, flush_lsn, rlsn, err);
	} else {
		/* A hint for another shard of the view: kept apart, in doubt if the origin
		 * sent it somewhere before without an answer. */
		uint8_t *rec = tally_xmalloc(bodylen + 1);
		rec[0] = (flags & TALLY_MSG_F_IN_DOUBT) ? HINT_IN_DOUBT : HINT_VISIBLE;
		memcpy(rec + 1, body, bodylen);
		if ((rc = apply_rec(s, v, TALLY_SREC_HINT, rec, (uint32_t)bodylen + 1, true,
				    err)) == 0)
			rc = primary_change(st, wal, s, v, self, TALLY_SREC_HINT, rec,
					    (uint32_t)bodylen + 1, flush_lsn, rlsn, err);
		free(rec);
	}
	pthread_mutex_unlock(&s->mu);
	pthread_rwlock_unlock(&st->mu);
	return rc;
}

/* Merge one change record into s (caller holds s->mu). With check, the whole record is
 * validated first (nothing changes if it is refused; room is reserved). */
static int apply_rec(shard *s, const tally_view_rt *v, uint8_t kind, const uint8_t *p, uint32_t len,
		     bool check, tally_err *err)
{
	if (kind == TALLY_SREC_HINT_STATE) {
		hint_id *ids;
		size_t n;
		if (parse_hint_ops(p, len, &ids, &n) != 0)
			return tally_err_set(err, TALLY_SQLSTATE_PROTOCOL,
					     "malformed hint record for shard %s_%u", v->info->name,
					     s->shard);
		if (!check)
			hint_ops(s, ids, n);
		free(ids);
		return 0;
	}
	uint8_t state = HINT_VISIBLE;
	if (kind == TALLY_SREC_HINT) {
		if (len < 1 || p[0] > HINT_IN_DOUBT)
			return tally_err_set(err, TALLY_SQLSTATE_PROTOCOL,
					     "malformed hint for shard %s_%u", v->info->name,
					     s->shard);
		state = p[0];
		p++;
		len--;
	} else if (kind != TALLY_SREC_APPLY) {
		return tally_err_set(err, TALLY_SQLSTATE_PROTOCOL,
				     "unknown change record kind %u for shard %s_%u", kind,
				     v->info->name, s->shard);
	}
	tally_rd r;
	tally_rd_init(&r, p, len);
	tally_msg_apply a;
	if (tally_msg_get_apply(&r, &a) != 0 || a.view_id != s->view_id ||
	    a.target_shard != s->shard ||
	    (kind == TALLY_SREC_HINT) != (a.home_shard != a.target_shard))
		return tally_err_set(err, TALLY_SQLSTATE_PROTOCOL,
				     "malformed change record for shard %s_%u", v->info->name,
				     s->shard);
	if (kind == TALLY_SREC_HINT) {
		if (check) {
			if (validate(s->aggs, s->naggs, a.ngroups, r) != 0)
				return tally_err_set(err, TALLY_SQLSTATE_PROTOCOL,
						     "malformed hint for shard %s_%u",
						     v->info->name, s->shard);
			if (state == HINT_VISIBLE && tally_gtab_reserve(&s->hvis, a.ngroups) != 0)
				return tally_err_set(err, TALLY_SQLSTATE_OUT_OF_MEMORY,
						     "out of memory applying to shard %s_%u",
						     v->info->name, s->shard);
			return 0;
		}
		if (hint_keep(s, state, p, len) != 0)
			return tally_err_set(err, TALLY_SQLSTATE_OUT_OF_MEMORY,
					     "out of memory applying to shard %s_%u", v->info->name,
					     s->shard);
		s->batches++;
		return 0;
	}
	if (check)
		return merge_batch(s, v, &a, &r, err);
	if (merge_groups(s, v, &a, &r) != 0)
		return tally_err_set(err, TALLY_SQLSTATE_OUT_OF_MEMORY,
				     "out of memory applying to shard %s_%u", v->info->name,
				     s->shard);
	dd_floor(&s->own, a.origin, a.floor);
	dd_add(&s->own, a.origin, a.seq);
	s->batches++;
	return 0;
}

/* One change made on a primary copy (caller holds s->mu, record checked): this node becomes
 * the author of the copy's history if it is not, the record is logged at the next position,
 * applied, and kept for the replicas. */
static int primary_change(tally_store *st, tally_wal *wal, shard *s, const tally_view_rt *v,
			  uint32_t self, uint8_t kind, const uint8_t *p, uint32_t len,
			  uint64_t *flush_lsn, uint64_t *rlsn, tally_err *err)
{
	if (ensure_gen(s, wal, self, err) != 0)
		return -1;
	struct iovec iov = {(void *)p, len};
	uint64_t start, end;
	if (log_shard(wal, s, s->gen, s->rlsn + 1, 1, &kind, &iov, &start, &end, err) != 0)
		return -1;
	if (apply_rec(s, v, kind, p, len, false, err) != 0) {
		/* Logged but not applied: recovery would apply it. Refuse to go on with a
		 * shard that differs from its log. */
		tally_log_error("shard %s_%u no longer matches the log (%s); exiting so that "
				"recovery rebuilds it",
				v->info->name, s->shard, err->message);
		abort();
	}
	s->applied_lsn = end;
	s->rlsn++;
	if (v->info->num_replicas > 0)
		rb_push(s, st->keep_bytes, s->rlsn, end, kind, p, len);
	*flush_lsn = end;
	*rlsn = s->rlsn;
	return 0;
}

/* Replay of a TALLY_REC_SHARD record: u64 view, u32 shard, u64 gen, u64 first, u32 n, then n x
 * (u8 kind, u32 len, body). */
static int replay_shard(tally_store *st, const tally_map *m, uint32_t self, uint64_t lsn,
			uint64_t end, const uint8_t *body, uint32_t len, tally_err *err)
{
	tally_rd r;
	tally_rd_init(&r, body, len);
	uint64_t vid, gen, first;
	uint32_t sh, n;
	if (tally_rd_u64(&r, &vid) || tally_rd_u32(&r, &sh) || tally_rd_u64(&r, &gen) ||
	    tally_rd_u64(&r, &first) || tally_rd_u32(&r, &n) || gen == 0 || first == 0 ||
	    n > tally_rd_left(&r) / 5)
		goto bad;
	const tally_view_rt *v = tally_map_view_by_id(m, vid);
	if (!v && vid >= m->cat->next_id)
		return tally_err_set(err, TALLY_SQLSTATE_DATA_CORRUPTED,
				     "log record at position %llu is for view id %llu, newer than "
				     "the saved cluster map",
				     (unsigned long long)lsn, (unsigned long long)vid);
	if (!v || !v->ok || sh >= (uint32_t)v->info->num_shards)
		return 0; /* the view was dropped */
	bool keep = v->info->num_replicas > 0 && v->info->primary[sh] == self;
	shard *s = get_locked(st, v, m->cat->epoch, sh, true);
	int rc = 0;
	if (s) {
		pthread_mutex_lock(&s->mu);
		if (lsn >= s->applied_lsn) {
			if (gen != s->gen)
				rb_clear(s);
			s->gen = gen;
			s->rlsn = first - 1;
			for (uint32_t i = 0; i < n && rc == 0; i++) {
				uint8_t kind;
				const uint8_t *p;
				uint32_t plen;
				if (tally_rd_u8(&r, &kind) ||
				    tally_rd_str(&r, &p, &plen, TALLY_MSG_MAX)) {
					rc = tally_err_set(
					    err, TALLY_SQLSTATE_DATA_CORRUPTED,
					    "malformed shard record at log position %llu",
					    (unsigned long long)lsn);
					break;
				}
				rc = apply_rec(s, v, kind, p, plen, true, err);
				if (rc == 0)
					rc = apply_rec(s, v, kind, p, plen, false, err);
				if (rc == 0) {
					s->rlsn++;
					if (keep)
						rb_push(s, st->keep_bytes, s->rlsn, end, kind, p,
							plen);
				}
			}
			s->applied_lsn = end;
		}
		pthread_mutex_unlock(&s->mu);
	}
	pthread_rwlock_unlock(&st->mu);
	return rc;
bad:
	return tally_err_set(err, TALLY_SQLSTATE_DATA_CORRUPTED,
			     "malformed shard record at log position %llu",
			     (unsigned long long)lsn);
}

int tally_store_replay(tally_store *st, const tally_map *m, uint32_t self, uint8_t type,
		       uint64_t lsn, uint64_t end, const uint8_t *body, uint32_t len,
		       tally_err *err)
{
	if (type == TALLY_REC_SHARD)
		return replay_shard(st, m, self, lsn, end, body, len, err);
	/* TALLY_REC_APPLY: a primary's batch as logged before replication existed */
	tally_rd r;
	tally_rd_init(&r, body, len);
	tally_msg_apply a;
	if (tally_msg_get_apply(&r, &a) != 0)
		return tally_err_set(err, TALLY_SQLSTATE_DATA_CORRUPTED,
				     "malformed apply record at log position %llu",
				     (unsigned long long)lsn);
	const tally_view_rt *v = tally_map_view_by_id(m, a.view_id);
	if (!v && a.view_id >= m->cat->next_id)
		return tally_err_set(err, TALLY_SQLSTATE_DATA_CORRUPTED,
				     "log record at position %llu is for view id %llu, newer than "
				     "the saved cluster map",
				     (unsigned long long)lsn, (unsigned long long)a.view_id);
	if (!v || !v->ok || a.target_shard >= (uint32_t)v->info->num_shards)
		return 0; /* the view was dropped */
	shard *s = get_locked(st, v, m->cat->epoch, a.target_shard, true);
	int rc = 0;
	if (s) {
		pthread_mutex_lock(&s->mu);
		if (lsn >= s->applied_lsn)
			dd_floor(&s->own, a.origin, a.floor);
		if (lsn >= s->applied_lsn && !dd_seen(&s->own, a.origin, a.seq)) {
			rc = apply_rec(s, v, TALLY_SREC_APPLY, body, len, true, err);
			if (rc == 0)
				rc = apply_rec(s, v, TALLY_SREC_APPLY, body, len, false, err);
			if (rc == 0) {
				s->applied_lsn = end;
				s->rlsn++;
			}
		}
		pthread_mutex_unlock(&s->mu);
	}
	pthread_rwlock_unlock(&st->mu);
	return rc;
}

void tally_store_read(tally_store *st, const tally_view_rt *v, uint32_t sh, const uint8_t *key,
		      uint32_t keylen, tally_buf *reply)
{
	shard *s = get_locked(st, v, 0, sh, false);
	if (!s) {
		pthread_rwlock_unlock(&st->mu);
		tally_buf_put_u32(reply, 0);
		return;
	}
	pthread_mutex_lock(&s->mu);
	/* its own groups and the visible hints it holds (the reader merges equal groups) */
	const tally_gtab *tabs[2] = {&s->groups, &s->hvis};
	if (key) {
		uint64_t h = tally_group_hash(key, keylen);
		tally_group *g[2];
		uint32_t n = 0;
		for (int t = 0; t < 2; t++)
			if ((g[n] =
				 tally_gtab_lookup((tally_gtab *)tabs[t], key, keylen, h, false)))
				n++;
		tally_buf_put_u32(reply, n);
		for (uint32_t i = 0; i < n; i++)
			tally_group_put(reply, g[i]->key, g[i]->keylen, s->aggs, s->naggs,
					g[i]->states);
	} else {
		tally_buf_put_u32(reply, (uint32_t)(s->groups.count + s->hvis.count));
		for (int t = 0; t < 2; t++) {
			for (size_t i = 0; i < tabs[t]->cap; i++) {
				tally_group *g = tabs[t]->slots[i].g;
				if (g)
					tally_group_put(reply, g->key, g->keylen, s->aggs, s->naggs,
							g->states);
			}
		}
	}
	pthread_mutex_unlock(&s->mu);
	pthread_rwlock_unlock(&st->mu);
}

uint64_t tally_store_max_lsn(tally_store *st)
{
	uint64_t max = 0;
	pthread_rwlock_rdlock(&st->mu);
	for (int i = 0; i < st->n; i++) {
		pthread_mutex_lock(&st->shards[i]->mu);
		if (st->shards[i]->applied_lsn > max)
			max = st->shards[i]->applied_lsn;
		pthread_mutex_unlock(&st->shards[i]->mu);
	}
	pthread_rwlock_unlock(&st->mu);
	return max;
}

int tally_store_stats(tally_store *st, uint64_t view_id, uint32_t sh, tally_store_shard_stats *out)
{
	pthread_rwlock_rdlock(&st->mu);
	shard *s = find(st, view_id, sh);
	if (s) {
		pthread_mutex_lock(&s->mu);
		out->groups = s->groups.count;
		out->batches = s->batches;
		out->duplicates = s->duplicates;
		out->applied_lsn = s->applied_lsn;
		out->snapshot_lsn = s->snap_lsn;
		out->origins = s->own.ndd;
		out->gen = s->gen;
		out->rlsn = s->rlsn;
		out->kept_records = s->rb_n;
		out->kept_bytes = s->rb_bytes;
		pthread_mutex_unlock(&s->mu);
	}
	pthread_rwlock_unlock(&st->mu);
	return s ? 0 : -1;
}

void tally_store_sync(tally_store *st, const tally_map *m)
{
	pthread_rwlock_wrlock(&st->mu);
	if (m->cat->epoch > st->synced_epoch)
		st->synced_epoch = m->cat->epoch;
	int j = 0;
	for (int i = 0; i < st->n; i++) {
		if (tally_catalog_view_by_id(m->cat, st->shards[i]->view_id))
			st->shards[j++] = st->shards[i];
		else
			retire(st, st->shards[i]);
	}
	st->n = j;
	pthread_rwlock_unlock(&st->mu);
}

static int snap_write(shard *s, int fd, tally_buf *mem, uint64_t *lsn);
static int snap_parse(const tally_map *m, const uint8_t *p, size_t len, shard **out,
		      const char **what);
static int snap_save_locked(tally_store *st, tally_wal *wal, shard *s, tally_err *err);

/* ---- hinted hand-off (DESIGN §5) ------------------------------------------------------------ */

size_t tally_store_hint_rows(tally_store *st, tally_hint_row **rows)
{
	size_t n = 0, cap = 8;
	tally_hint_row *out = tally_xcalloc(cap, sizeof *out);
	pthread_rwlock_rdlock(&st->mu);
	for (int i = 0; i < st->n; i++) {
		shard *s = st->shards[i];
		pthread_mutex_lock(&s->mu);
		for (size_t k = 0; k < s->nhints; k++) {
			const hint *h = &s->hints[k];
			size_t j;
			for (j = 0; j < n; j++)
				if (out[j].view_id == s->view_id && out[j].shard == s->shard &&
				    out[j].home == h->home)
					break;
			if (j == n) {
				if (n == cap) {
					cap *= 2;
					out = tally_xrealloc(out, cap * sizeof *out);
				}
				out[n++] = (tally_hint_row){
				    .view_id = s->view_id, .shard = s->shard, .home = h->home};
			}
			out[j].visible += h->state == HINT_VISIBLE;
			out[j].in_doubt += h->state == HINT_IN_DOUBT;
			out[j].handing_off += h->state == HINT_HANDOFF;
			out[j].bytes += h->len;
		}
		pthread_mutex_unlock(&s->mu);
	}
	pthread_rwlock_unlock(&st->mu);
	*rows = out;
	return n;
}

int tally_store_hint_op(tally_store *st, tally_wal *wal, const tally_view_rt *v, uint32_t sh,
			uint32_t self, uint32_t home, int op, const tally_hint_ref *ids,
			size_t nids, uint64_t *flush_lsn, uint64_t *rlsn, tally_err *err)
{
	shard *s = get_locked(st, v, 0, sh, false);
	int rc = 0;
	*flush_lsn = 0;
	*rlsn = 0;
	if (!s)
		goto out;
	pthread_mutex_lock(&s->mu);
	tally_buf b = {0};
	uint32_t k = 0;
	tally_buf_put_u32(&b, 0);
	if (ids) {
		for (size_t i = 0; i < nids; i++) {
			/* only ids of hints it changes: no record for nothing */
			bool found = false;
			for (size_t j = 0; j < s->nhints && !found; j++) {
				const hint *h = &s->hints[j];
				found =
				    h->home == home && h->origin == ids[i].origin &&
				    h->seq == ids[i].seq &&
				    (op == TALLY_HINT_OP_DROP ||
				     (op == TALLY_HINT_OP_HANDOFF) != (h->state == HINT_HANDOFF));
			}
			if (!found)
				continue;
			tally_buf_put_u32(&b, home);
			tally_buf_put_u64(&b, ids[i].origin);
			tally_buf_put_u64(&b, ids[i].seq);
			tally_buf_putc(&b, (uint8_t)op);
			k++;
		}
	} else {
		/* every hint for home that the operation changes */
		for (size_t i = 0; i < s->nhints; i++) {
			const hint *h = &s->hints[i];
			if (h->home != home ||
			    (op == TALLY_HINT_OP_HANDOFF) == (h->state == HINT_HANDOFF))
				continue;
			tally_buf_put_u32(&b, home);
			tally_buf_put_u64(&b, h->origin);
			tally_buf_put_u64(&b, h->seq);
			tally_buf_putc(&b, (uint8_t)op);
			k++;
		}
	}
	tally_put_be32(b.data, k);
	if (k)
		rc = primary_change(st, wal, s, v, self, TALLY_SREC_HINT_STATE, b.data,
				    (uint32_t)b.len, flush_lsn, rlsn, err);
	tally_buf_free(&b);
	pthread_mutex_unlock(&s->mu);
out:
	pthread_rwlock_unlock(&st->mu);
	return rc;
}

size_t tally_store_hint_take(tally_store *st, uint64_t view_id, uint32_t sh, uint32_t home,
			     size_t max, tally_buf *bodies, tally_hint_ref *ids)
{
	size_t n = 0;
	pthread_rwlock_rdlock(&st->mu);
	shard *s = find(st, view_id, sh);
	if (s) {
		pthread_mutex_lock(&s->mu);
		for (size_t i = 0; i < s->nhints && n < max; i++) {
			const hint *h = &s->hints[i];
			if (h->home != home || h->state != HINT_HANDOFF)
				continue;
			tally_buf_reset(&bodies[n]);
			tally_buf_append(&bodies[n], h->body, h->len);
			ids[n].origin = h->origin;
			ids[n].seq = h->seq;
			n++;
		}
		pthread_mutex_unlock(&s->mu);
	}
	pthread_rwlock_unlock(&st->mu);
	return n;
}

/* ---- replication (DESIGN §6) ------------------------------------------------------------- */

/* A copy's replication fields, read under its lock; false if this node has no such copy. */
typedef struct copy_view {
	uint64_t gen, rlsn, pri_gen, pri_rlsn;
	int64_t pri_us;
} copy_view;

static bool copy_peek(tally_store *st, uint64_t view_id, uint32_t sh, copy_view *out)
{
	pthread_rwlock_rdlock(&st->mu);
	shard *s = find(st, view_id, sh);
	if (s) {
		pthread_mutex_lock(&s->mu);
		*out = (copy_view){s->gen, s->rlsn, s->pri_gen, s->pri_rlsn, s->pri_us};
		pthread_mutex_unlock(&s->mu);
	}
	pthread_rwlock_unlock(&st->mu);
	return s != NULL;
}

int tally_store_pos(tally_store *st, uint64_t view_id, uint32_t sh, uint64_t *gen, uint64_t *rlsn)
{
	copy_view c;
	if (!copy_peek(st, view_id, sh, &c))
		return -1;
	*gen = c.gen;
	*rlsn = c.rlsn;
	return 0;
}

int tally_store_repl_fetch(tally_store *st, tally_wal *wal, uint64_t view_id, uint32_t sh,
			   uint32_t self, uint64_t r_gen, uint64_t r_rlsn, size_t max_bytes,
			   tally_repl_out *o, tally_err *err)
{
	o->gen = o->rlsn = o->end = o->first = o->last_end = o->lag_bytes = 0;
	o->nrec = 0;
	o->lag_us = 0;
	pthread_rwlock_rdlock(&st->mu);
	shard *s = find(st, view_id, sh);
	int rc = TALLY_REPL_NONE;
	if (!s)
		goto out;
	pthread_mutex_lock(&s->mu);
	if (ensure_gen(s, wal, self, err) != 0) {
		rc = -1;
		goto unlock;
	}
	o->gen = s->gen;
	o->rlsn = s->rlsn;
	o->end = s->applied_lsn;
	/* lag: the kept records after the replica's position */
	for (size_t i = s->rb_n; i > 0; i--) {
		const rrec *x = &s->rb[(s->rb_head + i - 1) % s->rb_cap];
		if (x->rlsn <= r_rlsn)
			break;
		o->lag_bytes += x->len;
		o->lag_us = tally_mono_us() - x->us;
	}
	bool same = r_gen == s->gen || r_rlsn == 0;
	if (!same && gen_mine(r_gen, self)) {
		/* The replica's history was begun by this node, but this copy is another one:
		 * this node lost its state. Never overwrite the replica with less. */
		rc = TALLY_REPL_DIVERGED;
		goto unlock;
	}
	if (same && r_rlsn > s->rlsn) {
		rc = TALLY_REPL_DIVERGED;
		goto unlock;
	}
	if (same && r_rlsn == s->rlsn) {
		rc = TALLY_REPL_RECORDS; /* up to date */
		goto unlock;
	}
	/* The records after r_rlsn, if this copy still keeps them from there. */
	if (!same || !s->rb_n || s->rb[s->rb_head].rlsn > r_rlsn + 1) {
		rc = TALLY_REPL_SNAPSHOT;
		goto unlock;
	}
	uint64_t k = r_rlsn + 1 - s->rb[s->rb_head].rlsn;
	o->first = r_rlsn + 1;
	for (; k < s->rb_n; k++) {
		const rrec *x = &s->rb[(s->rb_head + k) % s->rb_cap];
		if (o->nrec && o->recs->len + x->len + 5 > max_bytes)
			break;
		tally_buf_putc(o->recs, x->kind);
		tally_buf_put_str(o->recs, x->data, x->len);
		o->nrec++;
		o->last_end = x->end;
	}
	rc = TALLY_REPL_RECORDS;
unlock:
	pthread_mutex_unlock(&s->mu);
out:
	pthread_rwlock_unlock(&st->mu);
	return rc;
}

void tally_store_repl_trim(tally_store *st, uint64_t view_id, uint32_t sh, uint64_t gen,
			   uint64_t upto)
{
	pthread_rwlock_rdlock(&st->mu);
	shard *s = find(st, view_id, sh);
	if (s) {
		pthread_mutex_lock(&s->mu);
		if (s->gen == gen)
			while (s->rb_n && s->rb[s->rb_head].rlsn <= upto)
				rb_pop(s);
		pthread_mutex_unlock(&s->mu);
	}
	pthread_rwlock_unlock(&st->mu);
}

int tally_store_current(tally_store *st, uint64_t view_id, uint32_t sh)
{
	copy_view c;
	if (!copy_peek(st, view_id, sh, &c))
		return -1;
	return c.gen != 0 && c.gen == c.pri_gen && c.rlsn >= c.pri_rlsn &&
	       tally_mono_us() - c.pri_us < TALLY_REPLICA_CURRENT_US;
}

int tally_store_servable(tally_store *st, uint64_t view_id, uint32_t sh)
{
	copy_view c;
	if (!copy_peek(st, view_id, sh, &c))
		return -1;
	/* a copy with a history (perhaps behind: stale, not wrong), or an empty one whose primary
	 * said it has nothing either; not an empty copy that may be waiting for its first records
	 * or snapshot */
	return c.gen != 0 || (c.pri_us != 0 && c.pri_gen == 0);
}

int tally_store_repl_apply(tally_store *st, tally_wal *wal, const tally_view_rt *v, uint64_t epoch,
			   uint32_t sh, uint64_t gen, uint64_t first, uint64_t prim, uint32_t n,
			   tally_rd *recs, uint64_t *pos_gen, uint64_t *pos_rlsn,
			   uint64_t *flush_lsn, tally_err *err)
{
	shard *s = lock_for_change(st, v, epoch, sh, err);
	if (!s)
		return -1;
	int rc = 0;
	*flush_lsn = s->applied_lsn;
	/* An empty copy takes any history from its start; otherwise only the continuation of its
	 * own (the primary sends a snapshot when the histories differ). */
	bool fits = gen != 0 && (gen == s->gen ? first <= s->rlsn + 1 : s->rlsn == 0 && first == 1);
	if (fits && n > 0) {
		/* Skip what this copy has (a resend), check the rest completely, then log it
		 * as one record and merge it. */
		uint64_t skip = s->rlsn + 1 - first;
		uint32_t m = 0;
		uint8_t *kinds = tally_xmalloc((size_t)n + 1);
		struct iovec *bodies = tally_xcalloc((size_t)n + 1, sizeof *bodies);
		for (uint32_t i = 0; i < n && rc == 0; i++) {
			uint8_t kind;
			const uint8_t *p;
			uint32_t len;
			if (tally_rd_u8(recs, &kind) ||
			    tally_rd_str(recs, &p, &len, TALLY_MSG_MAX)) {
				rc = tally_err_set(err, TALLY_SQLSTATE_PROTOCOL,
						   "malformed REPL records for shard %s_%u",
						   v->info->name, sh);
			} else if (i >= skip) {
				kinds[m] = kind;
				bodies[m] = (struct iovec){(void *)p, len};
				m++;
			}
		}
		/* every record must fit the table at once: check them one by one (each check
		 * reserves room for its groups) */
		for (uint32_t i = 0; i < m && rc == 0; i++)
			rc = apply_rec(s, v, kinds[i], bodies[i].iov_base,
				       (uint32_t)bodies[i].iov_len, true, err);
		uint64_t start, end;
		if (rc == 0 && m > 0 &&
		    (rc = log_shard(wal, s, gen, s->rlsn + 1, m, kinds, bodies, &start, &end,
				    err)) == 0) {
			for (uint32_t i = 0; i < m; i++) {
				if (apply_rec(s, v, kinds[i], bodies[i].iov_base,
					      (uint32_t)bodies[i].iov_len, false, err) != 0) {
					tally_log_error("shard %s_%u no longer matches the log; "
							"exiting so that recovery rebuilds it",
							v->info->name, sh);
					abort();
				}
			}
			s->gen = gen;
			s->rlsn += m;
			s->applied_lsn = end;
			*flush_lsn = end;
		}
		free(kinds);
		free(bodies);
	}
	if (gen != 0 || n == 0) {
		/* (a primary with no copy yet tells gen 0: nothing to have) */
		s->pri_gen = gen;
		s->pri_rlsn = prim;
		s->pri_us = tally_mono_us();
	}
	*pos_gen = s->gen;
	*pos_rlsn = s->rlsn;
	pthread_mutex_unlock(&s->mu);
	pthread_rwlock_unlock(&st->mu);
	return rc;
}

int tally_store_snap_encode(tally_store *st, tally_wal *wal, uint64_t view_id, uint32_t sh,
			    uint32_t self, tally_buf *out, uint64_t *gen, uint64_t *rlsn,
			    tally_err *err)
{
	pthread_rwlock_rdlock(&st->mu);
	shard *s = find(st, view_id, sh);
	int rc = -1;
	uint64_t lsn = 0;
	if (!s) {
		tally_err_set(err, TALLY_SQLSTATE_UNDEFINED_TABLE, "no copy of shard %u", sh);
	} else {
		pthread_mutex_lock(&s->mu);
		rc = ensure_gen(s, wal, self, err);
		if (rc == 0) {
			*gen = s->gen;
			*rlsn = s->rlsn;
			tally_buf_free(out);
			rc = snap_write(s, -1, out, &lsn);
		}
		pthread_mutex_unlock(&s->mu);
	}
	pthread_rwlock_unlock(&st->mu);
	/* Never hand out state this node's log does not have durably (a crash would lose it
	 * here and leave the replica ahead). */
	if (rc == 0 && tally_wal_flush(wal, lsn, -1, err) != 0)
		rc = -1;
	return rc;
}

int tally_store_snap_install(tally_store *st, tally_wal *wal, const tally_map *m, const uint8_t *p,
			     size_t len, uint64_t *gen, uint64_t *rlsn, tally_err *err)
{
	shard *s;
	const char *what = NULL;
	if (snap_parse(m, p, len, &s, &what) != 0)
		return tally_err_set(err, TALLY_SQLSTATE_PROTOCOL, "bad shard snapshot: %s", what);
	if (!s)
		return tally_err_set(err, TALLY_SQLSTATE_UNDEFINED_TABLE,
				     "shard snapshot of a view this node does not have");
	if (s->gen == 0) {
		shard_free(s);
		return tally_err_set(err, TALLY_SQLSTATE_PROTOCOL,
				     "shard snapshot without history");
	}
	/* Replace the copy: records of the shard before this log position belong to the state
	 * replaced (recovery skips them), records after it to the new one. The old copy is
	 * retired under snap_mu, so no checkpoint writes it again. */
	if (tally_mkdir_p(st->dir, 0700) != 0) {
		shard_free(s);
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL, "could not create \"%s\": %s",
				     st->dir, strerror(errno));
	}
	pthread_mutex_lock(&st->snap_mu);
	pthread_rwlock_wrlock(&st->mu);
	shard *old = find(st, s->view_id, s->shard);
	tally_wal_stats ws;
	if (old)
		pthread_mutex_lock(&old->mu);
	tally_wal_stats_get(wal, &ws);
	s->applied_lsn = ws.insert_lsn;
	s->snap_lsn = 0;
	if (old) {
		for (int i = 0; i < st->n; i++)
			if (st->shards[i] == old)
				st->shards[i] = s;
		old->retired = true;
		pthread_mutex_unlock(&old->mu);
		retire(st, old);
	} else {
		table_add(st, s);
	}
	*gen = s->gen;
	*rlsn = s->rlsn;
	pthread_rwlock_unlock(&st->mu);
	int rc = snap_save_locked(st, wal, s, err);
	if (rc != 0) {
		/* The copy in memory is the new one and records of its history follow in the
		 * log, but recovery would start from the old snapshot: exit so that recovery
		 * rebuilds the old copy and the primary sends the snapshot again. */
		tally_log_error("could not write the snapshot installed for shard %llu/%u: %s; "
				"exiting so that recovery rebuilds it",
				(unsigned long long)s->view_id, s->shard, err->message);
		abort();
	}
	pthread_mutex_unlock(&st->snap_mu);
	if (rc == 0 && st->fsync && tally_dir_sync(st->dir) != 0)
		rc = tally_err_set(err, TALLY_SQLSTATE_INTERNAL, "could not fsync \"%s\": %s",
				   st->dir, strerror(errno));
	return rc;
}

/* ---- snapshots ---------------------------------------------------------------------------- */

static void snap_name(char *out, size_t sz, uint64_t view_id, uint32_t sh)
{
	snprintf(out, sz, "%016" PRIx64 "-%u.snap", view_id, sh);
}

static void aggs_put(tally_buf *b, const tally_agg_spec *aggs, int naggs)
{
	tally_buf_put_u32(b, (uint32_t)naggs);
	for (int k = 0; k < naggs; k++) {
		tally_buf_putc(b, (uint8_t)aggs[k].kind);
		tally_buf_putc(b, (uint8_t)aggs[k].arg_type);
		tally_buf_putc(b, (uint8_t)aggs[k].result_type);
	}
}

typedef struct snap_writer {
	int fd;
	tally_buf buf;
	uint32_t crc;
	int failed;
} snap_writer;

static void sw_drain(snap_writer *w, size_t keep_below)
{
	if (w->fd < 0 || w->buf.len < keep_below || w->failed)
		return;
	w->crc = tally_crc32c(w->crc, w->buf.data, w->buf.len);
	if (tally_write_all(w->fd, w->buf.data, w->buf.len) != 0)
		w->failed = errno ? errno : EIO;
	tally_buf_reset(&w->buf);
}

static void dd_put(snap_writer *w, const ddtab *t)
{
	tally_buf_put_u32(&w->buf, (uint32_t)t->ndd);
	for (size_t i = 0; i < t->ddcap; i++) {
		const dedup *d = &t->dd[i];
		if (!d->origin)
			continue;
		tally_buf_put_u64(&w->buf, d->origin);
		tally_buf_put_u64(&w->buf, d->hi);
		tally_buf_put_u32(&w->buf, d->nabove);
		for (uint32_t k = 0; k < d->nabove; k++)
			tally_buf_put_u64(&w->buf, d->above[k]);
		sw_drain(w, 1 << 20);
	}
}

static int dd_get(tally_rd *r, ddtab *t)
{
	uint32_t ndd;
	if (tally_rd_u32(r, &ndd) || ndd > tally_rd_left(r) / 20)
		return -1;
	for (uint32_t i = 0; i < ndd; i++) {
		uint64_t origin, hi;
		uint32_t na;
		if (tally_rd_u64(r, &origin) || tally_rd_u64(r, &hi) || tally_rd_u32(r, &na) ||
		    origin == 0 || na > DEDUP_ABOVE_MAX || na > tally_rd_left(r) / 8)
			return -1;
		dedup *d = dd_find(t, origin, true);
		d->hi = hi;
		for (uint32_t k = 0; k < na; k++) {
			uint64_t q;
			tally_rd_u64(r, &q);
			dd_add(t, origin, q);
		}
	}
	return 0;
}

/* Write shard s (caller holds s->mu) to fd, or with fd < 0 into *mem; returns the covered
 * LSN in *lsn. */
static int snap_write(shard *s, int fd, tally_buf *mem, uint64_t *lsn)
{
	snap_writer w = {.fd = fd};
	tally_buf_put_u32(&w.buf, SNAP_MAGIC);
	tally_buf_put_u32(&w.buf, SNAP_VERSION);
	tally_buf_put_u64(&w.buf, s->view_id);
	tally_buf_put_u32(&w.buf, s->shard);
	tally_buf_put_u64(&w.buf, s->applied_lsn);
	tally_buf_put_u64(&w.buf, s->gen);
	tally_buf_put_u64(&w.buf, s->rlsn);
	aggs_put(&w.buf, s->aggs, s->naggs);
	dd_put(&w, &s->own);
	tally_buf_put_u64(&w.buf, s->groups.count);
	for (size_t i = 0; i < s->groups.cap; i++) {
		tally_group *g = s->groups.slots[i].g;
		if (!g)
			continue;
		tally_group_put(&w.buf, g->key, g->keylen, s->aggs, s->naggs, g->states);
		sw_drain(&w, 1 << 20);
	}
	tally_buf_put_u32(&w.buf, (uint32_t)s->nhdd);
	for (size_t i = 0; i < s->nhdd; i++) {
		tally_buf_put_u32(&w.buf, s->hdd[i].home);
		dd_put(&w, &s->hdd[i].t);
	}
	tally_buf_put_u32(&w.buf, (uint32_t)s->nhints);
	for (size_t i = 0; i < s->nhints; i++) {
		tally_buf_putc(&w.buf, s->hints[i].state);
		tally_buf_putc(&w.buf, s->hints[i].prior);
		tally_buf_put_str(&w.buf, s->hints[i].body, s->hints[i].len);
		sw_drain(&w, 1 << 20);
	}
	*lsn = s->applied_lsn;
	if (fd < 0) {
		tally_buf_put_u32(&w.buf, tally_crc32c(0, w.buf.data, w.buf.len));
		*mem = w.buf;
		return 0;
	}
	sw_drain(&w, 0);
	tally_buf_put_u32(&w.buf, w.crc);
	if (!w.failed && tally_write_all(fd, w.buf.data, w.buf.len) != 0)
		w.failed = errno ? errno : EIO;
	tally_buf_free(&w.buf);
	errno = w.failed;
	return w.failed ? -1 : 0;
}

/* Write s's snapshot file, unless s was replaced (retired) meanwhile: one file at a time, so a
 * checkpoint that began with a shard a snapshot from the primary replaced cannot put the old
 * state back on disk after the new one. */
static int snap_save(tally_store *st, tally_wal *wal, shard *s, tally_err *err)
{
	pthread_mutex_lock(&st->snap_mu);
	int rc = s->retired ? 0 : snap_save_locked(st, wal, s, err);
	pthread_mutex_unlock(&st->snap_mu);
	return rc;
}

static int snap_save_locked(tally_store *st, tally_wal *wal, shard *s, tally_err *err)
{
	char name[64], tmp[800], path[800];
	snap_name(name, sizeof name, s->view_id, s->shard);
	snprintf(tmp, sizeof tmp, "%s/%s.tmp", st->dir, name);
	snprintf(path, sizeof path, "%s/%s", st->dir, name);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL, "could not create \"%s\": %s",
				     tmp, strerror(errno));
	uint64_t lsn;
	pthread_mutex_lock(&s->mu);
	int rc = snap_write(s, fd, NULL, &lsn);
	pthread_mutex_unlock(&s->mu);
	if (rc == 0 && st->fsync && fsync(fd) != 0)
		rc = -1;
	int e = errno;
	/* The snapshot must never claim log positions the log does not have durably: a crash
	 * could otherwise cut records it covers, and the log would reuse their positions for
	 * records recovery would then skip. */
	tally_err ferr;
	if (rc == 0 && tally_wal_flush(wal, lsn, -1, &ferr) != 0) {
		rc = -1;
		e = EIO;
	}
	if (close(fd) != 0 && rc == 0) {
		rc = -1;
		e = errno;
	}
	if (rc == 0 && rename(tmp, path) != 0) {
		rc = -1;
		e = errno;
	}
	if (rc != 0) {
		unlink(tmp);
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL, "could not write \"%s\": %s",
				     path, strerror(e));
	}
	pthread_mutex_lock(&s->mu);
	s->snap_lsn = lsn;
	pthread_mutex_unlock(&s->mu);
	return 0;
}

int tally_store_checkpoint(tally_store *st, tally_wal *wal, tally_err *err)
{
	if (mkdir(st->dir, 0700) != 0 && errno != EEXIST)
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL, "could not create \"%s\": %s",
				     st->dir, strerror(errno));
	/* Work on a copy of the shard list, without holding the store's lock while writing
	 * (a map change must not wait for snapshots). A shard dropped meanwhile stays allocated
	 * until the next checkpoint frees it here. */
	pthread_rwlock_wrlock(&st->mu);
	for (int i = 0; i < st->ndropped; i++)
		shard_free(st->dropped[i]);
	st->ndropped = 0;
	int n = st->n;
	shard **list = tally_xcalloc((size_t)n + 1, sizeof *list);
	if (n)
		memcpy(list, st->shards, (size_t)n * sizeof *list);
	pthread_rwlock_unlock(&st->mu);
	int rc = 0, written = 0;
	for (int i = 0; i < n && rc == 0; i++) {
		shard *s = list[i];
		pthread_mutex_lock(&s->mu);
		bool dirty = s->applied_lsn != s->snap_lsn;
		pthread_mutex_unlock(&s->mu);
		if (dirty) {
			rc = snap_save(st, wal, s, err);
			written++;
		}
	}
	free(list);
	pthread_rwlock_rdlock(&st->mu);
	/* Snapshots of shards this node no longer holds (dropped views) go. */
	DIR *d = rc == 0 ? opendir(st->dir) : NULL;
	struct dirent *de;
	while (d && (de = readdir(d))) {
		uint64_t vid;
		uint32_t sh;
		char tail[8];
		if (sscanf(de->d_name, "%16" SCNx64 "-%u.%7s", &vid, &sh, tail) == 3 &&
		    strcmp(tail, "snap") == 0 && !find(st, vid, sh)) {
			char path[900];
			snprintf(path, sizeof path, "%s/%s", st->dir, de->d_name);
			unlink(path);
			written++;
		}
	}
	if (d)
		closedir(d);
	pthread_rwlock_unlock(&st->mu);
	if (rc == 0 && written && st->fsync && tally_dir_sync(st->dir) != 0)
		rc = tally_err_set(err, TALLY_SQLSTATE_INTERNAL, "could not fsync \"%s\": %s",
				   st->dir, strerror(errno));
	return rc;
}

/* Parse a snapshot (file format) into a new detached shard (*out), checked against its view in
 * m. Returns 0 (with *out NULL when its view was dropped or the shard no longer exists), or -1
 * with *what saying what is wrong. */
static int snap_parse(const tally_map *m, const uint8_t *p, size_t len, shard **out,
		      const char **what)
{
	*out = NULL;
	tally_rd r;
	uint32_t magic = 0, version = 0, sh = 0, naggs = 0;
	uint64_t vid = 0, lsn = 0, ngroups = 0, gen = 0, rlsn = 0;
	if (len < 8 || tally_crc32c(0, p, len - 4) != tally_be32(p + len - 4)) {
		*what = "bad checksum or truncated file";
		return -1;
	}
	tally_rd_init(&r, p, len - 4);
	if (tally_rd_u32(&r, &magic) || magic != SNAP_MAGIC || tally_rd_u32(&r, &version) ||
	    (version < 1 || version > SNAP_VERSION) || tally_rd_u64(&r, &vid) ||
	    tally_rd_u32(&r, &sh) || tally_rd_u64(&r, &lsn) ||
	    (version >= 2 && (tally_rd_u64(&r, &gen) || tally_rd_u64(&r, &rlsn))) ||
	    tally_rd_u32(&r, &naggs)) {
		*what = "bad header";
		return -1;
	}
	const tally_view_rt *v = tally_map_view_by_id(m, vid);
	if (!v && vid >= m->cat->next_id) {
		*what = "its view is newer than the saved cluster map";
		return -1;
	}
	if (!v || !v->ok || sh >= (uint32_t)v->info->num_shards)
		return 0; /* a view dropped while this node was down or before its checkpoint */
	tally_buf want = {0};
	aggs_put(&want, v->plan->aggs, v->plan->naggs);
	const uint8_t *got;
	bool same = naggs == (uint32_t)v->plan->naggs &&
		    tally_rd_bytes(&r, &got, (size_t)naggs * 3) == 0 &&
		    memcmp(got, want.data + 4, (size_t)naggs * 3) == 0;
	tally_buf_free(&want);
	if (!same) {
		*what = "its aggregates differ from the view's";
		return -1;
	}
	shard *s = shard_alloc(v, sh);
	if (dd_get(&r, &s->own) != 0) {
		*what = "bad dedup state";
		goto corrupt;
	}
	if (tally_rd_u64(&r, &ngroups) || ngroups > tally_rd_left(&r) / 4 ||
	    tally_gtab_reserve(&s->groups, (size_t)ngroups) != 0) {
		*what = "bad group count";
		goto corrupt;
	}
	for (uint64_t i = 0; i < ngroups; i++) {
		if (tally_group_merge_encoded(&s->groups, &r) != 0) {
			*what = "bad group";
			goto corrupt;
		}
	}
	uint32_t nh = 0;
	if (version >= 3) {
		if (tally_rd_u32(&r, &nh) || nh > tally_rd_left(&r) / 8) {
			*what = "bad hint state";
			goto corrupt;
		}
		for (uint32_t i = 0; i < nh; i++) {
			uint32_t home;
			if (tally_rd_u32(&r, &home) || home >= (uint32_t)v->info->num_shards ||
			    hint_dd(s, home, false) || dd_get(&r, hint_dd(s, home, true)) != 0) {
				*what = "bad hint state";
				goto corrupt;
			}
		}
		if (tally_rd_u32(&r, &nh) || nh > tally_rd_left(&r) / 6) {
			*what = "bad hints";
			goto corrupt;
		}
		for (uint32_t i = 0; i < nh; i++) {
			uint8_t state, prior;
			const uint8_t *b;
			uint32_t blen;
			if (tally_rd_u8(&r, &state) || tally_rd_u8(&r, &prior) ||
			    tally_rd_str(&r, &b, &blen, TALLY_MSG_MAX) || state > HINT_HANDOFF ||
			    prior > HINT_IN_DOUBT || hint_load(s, state, prior, b, blen) != 0) {
				*what = "bad hint";
				goto corrupt;
			}
		}
	}
	if (tally_rd_left(&r) != 0) {
		*what = "trailing bytes";
		goto corrupt;
	}
	s->applied_lsn = s->snap_lsn = lsn;
	s->gen = gen;
	s->rlsn = rlsn;
	*out = s;
	return 0;
corrupt:
	shard_free(s);
	return -1;
}

/* Load one snapshot file (mapped) into the store. */
static int snap_load(tally_store *st, const tally_map *m, const char *path, tally_err *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat sb;
	if (fd < 0 || fstat(fd, &sb) != 0) {
		if (fd >= 0)
			close(fd);
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL, "could not open \"%s\": %s",
				     path, strerror(errno));
	}
	size_t len = (size_t)sb.st_size;
	const uint8_t *p = len ? mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
	close(fd);
	if (len && p == MAP_FAILED)
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL, "could not map \"%s\": %s", path,
				     strerror(errno));
	int rc = 0;
	const char *what = NULL;
	shard *s;
	if (snap_parse(m, p, len, &s, &what) != 0) {
		tally_err_set(err, TALLY_SQLSTATE_DATA_CORRUPTED,
			      "shard snapshot \"%s\" is corrupt: %s", path, what);
		tally_err_hint(err, "The node refuses to start rather than serve wrong results. "
				    "Restore the directory from a backup, or remove it to start "
				    "this node empty.");
		rc = -1;
	} else if (!s) {
		unlink(path); /* its view was dropped */
	} else {
		/* nobody else sees the store during recovery */
		pthread_rwlock_wrlock(&st->mu);
		shard *old = find(st, s->view_id, s->shard);
		if (old) {
			for (int i = 0; i < st->n; i++)
				if (st->shards[i] == old)
					st->shards[i] = s;
			shard_free(old);
		} else {
			table_add(st, s);
		}
		pthread_rwlock_unlock(&st->mu);
	}
	if (len)
		munmap((void *)p, len);
	return rc;
}

int tally_store_load(tally_store *st, const tally_map *m, tally_err *err)
{
	DIR *d = opendir(st->dir);
	if (!d)
		return errno == ENOENT
			   ? 0
			   : tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
					   "could not open \"%s\": %s", st->dir, strerror(errno));
	int rc = 0;
	struct dirent *de;
	while (rc == 0 && (de = readdir(d))) {
		char path[900];
		size_t nl = strlen(de->d_name);
		snprintf(path, sizeof path, "%s/%s", st->dir, de->d_name);
		if (nl > 4 && strcmp(de->d_name + nl - 4, ".tmp") == 0)
			unlink(path); /* a checkpoint interrupted before its rename */
		else if (nl > 5 && strcmp(de->d_name + nl - 5, ".snap") == 0)
			rc = snap_load(st, m, path, err);
	}
	closedir(d);
	pthread_rwlock_wrlock(&st->mu);
	if (m->cat->epoch > st->synced_epoch)
		st->synced_epoch = m->cat->epoch;
	pthread_rwlock_unlock(&st->mu);
	return rc;
}
