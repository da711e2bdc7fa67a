/*
 * group.h - a hash table of groups (encoded group key -> aggregate slots), shared by ingest
 * pre-aggregation, the workers' shard store and the read path's merge.
 */
#ifndef TALLY_GROUP_H
#define TALLY_GROUP_H

#include "tally/agg.h"

#define TALLY_GROUP_KEY_MAX (4u << 20) /* encoded group key: 4 MiB */

typedef struct tally_group {
	uint64_t hash;
	uint32_t keylen;
	uint8_t *key;		       /* points after the states */
	_Alignas(16) uint8_t states[]; /* naggs * TALLY_AGG_SLOT, then the key */
} tally_group;

typedef struct tally_gslot {
	uint64_t hash;
	tally_group *g;
} tally_gslot;

typedef struct tally_gtab {
	const tally_agg_spec *aggs; /* borrowed; must outlive the table */
	int naggs;
	tally_arena *arena; /* where entries are allocated (borrowed) */
	tally_gslot *slots;
	size_t cap, count;
} tally_gtab;

void tally_gtab_init(tally_gtab *t, const tally_agg_spec *aggs, int naggs, tally_arena *a);
/* Release text states and the slot array (entries go with the arena). */
void tally_gtab_fini(tally_gtab *t);
/* Find the group with this key; with create, add it (states initialised). NULL when not
 * found (create=false) or out of memory / arena limit (create=true). */
tally_group *tally_gtab_lookup(tally_gtab *t, const uint8_t *key, uint32_t keylen, uint64_t hash,
			       bool create);
/* Make room for extra more groups without growing the slot array later (so a batch either
 * fits before its first group is merged or fails untouched). -1 if out of memory. */
int tally_gtab_reserve(tally_gtab *t, size_t extra);
/* XXH3_64bits of the encoded key: the group hash. */
uint64_t tally_group_hash(const uint8_t *key, size_t len);
/* Read one encoded group (as tally_group_put writes it) and merge it in. -1 malformed input,
 * -2 out of memory. */
int tally_group_merge_encoded(tally_gtab *t, tally_rd *r);

/* Encode one group (u32 key length, key, then each aggregate's state) as APPLY and READ_OK
 * carry it. */
void tally_group_put(tally_buf *b, const uint8_t *key, uint32_t keylen, const tally_agg_spec *aggs,
		     int naggs, const uint8_t *states);

#endif
