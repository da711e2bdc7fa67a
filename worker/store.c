/*
 * store.c - the worker's shard copies: for every (view, shard) this node holds, a hash table
 * of groups and their merged partial states.
 *
 * Concurrency: a shard copy is changed by one batch at a time under the shard's own mutex;
 * the lock is taken once per batch (hundreds to thousands of groups), never per event. The
 * shard directory is read-mostly behind a rwlock.
 */
#include "worker.h"

#include <stdlib.h>

typedef struct shard {
	uint64_t view_id;
	uint32_t shard;
	pthread_mutex_t mu;
	tally_agg_spec *aggs; /* copied: the map that described the view may go away */
	int naggs;
	tally_arena arena;
	tally_gtab groups;
} shard;

struct tally_store {
	pthread_rwlock_t mu;
	shard **shards;
	int n, cap;
	uint64_t synced_epoch; /* epoch of the last map tally_store_sync applied */
};

tally_store *tally_store_alloc(void)
{
	tally_store *st = tally_xcalloc(1, sizeof *st);
	pthread_rwlock_init(&st->mu, NULL);
	return st;
}

static void shard_free(shard *s)
{
	tally_gtab_fini(&s->groups);
	tally_arena_free(&s->arena);
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
	free(st->shards);
	pthread_rwlock_destroy(&st->mu);
	free(st);
}

static shard *find(tally_store *st, uint64_t view_id, uint32_t sh)
{
	for (int i = 0; i < st->n; i++)
		if (st->shards[i]->view_id == view_id && st->shards[i]->shard == sh)
			return st->shards[i];
	return NULL;
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
	if (!s && epoch >= st->synced_epoch) {
		s = tally_xcalloc(1, sizeof *s);
		s->view_id = v->info->id;
		s->shard = sh;
		pthread_mutex_init(&s->mu, NULL);
		s->naggs = v->plan->naggs;
		s->aggs = tally_xcalloc((size_t)s->naggs + 1, sizeof *s->aggs);
		memcpy(s->aggs, v->plan->aggs, (size_t)s->naggs * sizeof *s->aggs);
		tally_gtab_init(&s->groups, s->aggs, s->naggs, &s->arena);
		if (st->n == st->cap) {
			st->cap = st->cap ? st->cap * 2 : 16;
			st->shards =
			    tally_xrealloc(st->shards, (size_t)st->cap * sizeof *st->shards);
		}
		st->shards[st->n++] = s;
	}
	pthread_rwlock_unlock(&st->mu);
	pthread_rwlock_rdlock(&st->mu);
	return find(st, v->info->id, sh); /* NULL if the view is gone */
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

int tally_store_apply(tally_store *st, const tally_view_rt *v, uint64_t epoch,
		      const tally_msg_apply *a, tally_rd *r, tally_err *err)
{
	shard *s = get_locked(st, v, epoch, a->target_shard, true);
	if (!s) {
		pthread_rwlock_unlock(&st->mu);
		return tally_err_set(err, TALLY_SQLSTATE_UNDEFINED_TABLE,
				     "continuous view \"%s\" was dropped", v->info->name);
	}
	pthread_mutex_lock(&s->mu);
	int rc = 0;
	/* All checks before the first merge, so a refused batch changes nothing: the shard and
	 * the map agree on the view's aggregates, every group decodes, the table has room. */
	if (s->naggs != v->plan->naggs ||
	    memcmp(s->aggs, v->plan->aggs, (size_t)s->naggs * sizeof *s->aggs) != 0)
		rc = tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
				   "shard %s_%u holds another definition of the view",
				   v->info->name, a->target_shard);
	else if (validate(s->aggs, s->naggs, a->ngroups, *r) != 0)
		rc = tally_err_set(err, TALLY_SQLSTATE_PROTOCOL, "malformed batch for shard %s_%u",
				   v->info->name, a->target_shard);
	else if (tally_gtab_reserve(&s->groups, a->ngroups) != 0)
		rc = tally_err_set(err, TALLY_SQLSTATE_OUT_OF_MEMORY,
				   "out of memory applying to shard %s_%u", v->info->name,
				   a->target_shard);
	for (uint32_t i = 0; rc == 0 && i < a->ngroups; i++) {
		if (tally_group_merge_encoded(&s->groups, r) != 0) {
			/* only an allocation of a new group's entry can fail here */
			tally_log_error("shard %s_%u: out of memory in the middle of a batch",
					v->info->name, a->target_shard);
			rc = tally_err_set(err, TALLY_SQLSTATE_OUT_OF_MEMORY,
					   "out of memory applying to shard %s_%u", v->info->name,
					   a->target_shard);
		}
	}
	pthread_mutex_unlock(&s->mu);
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
	if (key) {
		tally_group *g = tally_gtab_lookup(&s->groups, key, keylen,
						   tally_group_hash(key, keylen), false);
		tally_buf_put_u32(reply, g ? 1 : 0);
		if (g)
			tally_group_put(reply, g->key, g->keylen, s->aggs, s->naggs, g->states);
		pthread_mutex_unlock(&s->mu);
		pthread_rwlock_unlock(&st->mu);
		return;
	}
	tally_buf_put_u32(reply, (uint32_t)s->groups.count);
	for (size_t i = 0; i < s->groups.cap; i++) {
		tally_group *g = s->groups.slots[i].g;
		if (g)
			tally_group_put(reply, g->key, g->keylen, s->aggs, s->naggs, g->states);
	}
	pthread_mutex_unlock(&s->mu);
	pthread_rwlock_unlock(&st->mu);
}

uint64_t tally_store_groups(tally_store *st, uint64_t view_id, uint32_t sh)
{
	pthread_rwlock_rdlock(&st->mu);
	shard *s = find(st, view_id, sh);
	uint64_t n = 0;
	if (s) {
		pthread_mutex_lock(&s->mu);
		n = s->groups.count;
		pthread_mutex_unlock(&s->mu);
	}
	pthread_rwlock_unlock(&st->mu);
	return n;
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
			shard_free(st->shards[i]);
	}
	st->n = j;
	pthread_rwlock_unlock(&st->mu);
}
