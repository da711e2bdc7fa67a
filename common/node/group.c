/*
 * group.c - a hash table of groups: encoded group key -> the view's aggregate slots. Used
 * by ingest (one table per view per statement), by the shard store on workers, and by the
 * read path to merge shard replies. Keys and slots live in one arena-allocated entry; the
 * table itself is open addressing on the 64-bit group hash.
 */
#include "tally/group.h"

#include <stdlib.h>
#include <xxhash.h>

void tally_gtab_init(tally_gtab *t, const tally_agg_spec *aggs, int naggs, tally_arena *a)
{
	memset(t, 0, sizeof *t);
	t->aggs = aggs;
	t->naggs = naggs;
	t->arena = a;
}

void tally_gtab_fini(tally_gtab *t)
{
	bool has_text = false;
	for (int i = 0; i < t->naggs; i++)
		if ((t->aggs[i].kind == TALLY_AGG_MIN || t->aggs[i].kind == TALLY_AGG_MAX) &&
		    t->aggs[i].arg_type == TALLY_T_TEXT)
			has_text = true;
	if (has_text) {
		for (size_t i = 0; i < t->cap; i++) {
			tally_group *g = t->slots[i].g;
			if (!g)
				continue;
			for (int k = 0; k < t->naggs; k++)
				tally_agg_release(&t->aggs[k],
						  g->states + (size_t)k * TALLY_AGG_SLOT);
		}
	}
	free(t->slots);
	t->slots = NULL;
	t->cap = t->count = 0;
}

static int gtab_grow(tally_gtab *t)
{
	size_t ncap = t->cap ? t->cap * 2 : 64;
	tally_gslot *ns = calloc(ncap, sizeof *ns);
	if (!ns)
		return -1;
	for (size_t i = 0; i < t->cap; i++) {
		tally_group *g = t->slots[i].g;
		if (!g)
			continue;
		size_t j = t->slots[i].hash & (ncap - 1);
		while (ns[j].g)
			j = (j + 1) & (ncap - 1);
		ns[j] = t->slots[i];
	}
	free(t->slots);
	t->slots = ns;
	t->cap = ncap;
	return 0;
}

int tally_gtab_reserve(tally_gtab *t, size_t extra)
{
	while ((t->count + extra) * 2 > t->cap)
		if (gtab_grow(t) != 0)
			return -1;
	return 0;
}

tally_group *tally_gtab_lookup(tally_gtab *t, const uint8_t *key, uint32_t keylen, uint64_t hash,
			       bool create)
{
	if (t->cap) {
		size_t j = hash & (t->cap - 1);
		for (;;) {
			tally_gslot *s = &t->slots[j];
			if (!s->g)
				break;
			if (s->hash == hash && s->g->keylen == keylen &&
			    memcmp(s->g->key, key, keylen) == 0)
				return s->g;
			j = (j + 1) & (t->cap - 1);
		}
	}
	if (!create)
		return NULL;
	if ((t->count + 1) * 2 > t->cap && gtab_grow(t) != 0)
		return NULL;
	size_t ssz = (size_t)t->naggs * TALLY_AGG_SLOT;
	tally_group *g = tally_arena_alloc(t->arena, sizeof *g + ssz + keylen);
	if (!g)
		return NULL;
	g->hash = hash;
	g->keylen = keylen;
	g->key = g->states + ssz;
	memcpy(g->key, key, keylen);
	for (int k = 0; k < t->naggs; k++)
		tally_agg_init(&t->aggs[k], g->states + (size_t)k * TALLY_AGG_SLOT);
	size_t j = hash & (t->cap - 1);
	while (t->slots[j].g)
		j = (j + 1) & (t->cap - 1);
	t->slots[j].g = g;
	t->slots[j].hash = hash;
	t->count++;
	return g;
}

uint64_t tally_group_hash(const uint8_t *key, size_t len)
{
	return XXH3_64bits(key, len);
}

void tally_group_put(tally_buf *b, const uint8_t *key, uint32_t keylen, const tally_agg_spec *aggs,
		     int naggs, const uint8_t *states)
{
	tally_buf_put_str(b, (const char *)key, keylen);
	for (int k = 0; k < naggs; k++)
		tally_agg_serialize(&aggs[k], states + (size_t)k * TALLY_AGG_SLOT, b);
}

int tally_group_merge_encoded(tally_gtab *t, tally_rd *r)
{
	const uint8_t *key;
	uint32_t keylen;
	if (tally_rd_str(r, &key, &keylen, TALLY_GROUP_KEY_MAX) != 0)
		return -1;
	tally_group *g = tally_gtab_lookup(t, key, keylen, tally_group_hash(key, keylen), true);
	if (!g)
		return -2;
	for (int k = 0; k < t->naggs; k++)
		if (tally_agg_merge_encoded(&t->aggs[k], g->states + (size_t)k * TALLY_AGG_SLOT,
					    r) != 0)
			return -1;
	return 0;
}
