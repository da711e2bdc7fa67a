/*
 * ring.h - consistent-hash ring with bounded loads: where each shard copy of a view lives.
 *
 * Every member node owns `vnodes * weight` points XXH64("<name>#<k>", seed 0), k = 0.. .
 * Shard i of view V sits at XXH64("<V>/<i>", seed 0). Shards are placed in order i = 0..S-1:
 * walking clockwise from the shard's point, the primary is the first node whose primary count
 * for this view is below ceil(1.25 * S / n); then the replicas are the next num_replicas
 * distinct nodes (never the primary, never twice) whose replica count is below
 * ceil(1.25 * S * R / n), falling back to ignoring the bound only if every node is at it.
 * The result depends only on the member set (not its order) and the view.
 */
#ifndef TALLY_RING_H
#define TALLY_RING_H

#include "tally/core.h"

#define TALLY_RING_VNODES 64
#define TALLY_MAX_SHARDS 1024
#define TALLY_MAX_REPLICAS 15

typedef struct tally_ring_member {
	uint32_t id;	  /* node id, returned in placements */
	const char *name; /* hashed for ring points */
	uint32_t weight;  /* >= 1; points = vnodes * weight */
} tally_ring_member;

/* Place num_shards shards with num_replicas replicas each. primary[i] is the node id of shard
 * i's primary; replicas[i * num_replicas + r] its r-th replica. Errors: 22023 when
 * num_replicas + 1 > nmembers (`num_replicas 3 requires at least 4 worker nodes, the cluster
 * has 3`), num_shards out of 1..TALLY_MAX_SHARDS, or no members. vnodes 0 = default. */
int tally_ring_place(const tally_ring_member *members, int nmembers, const char *view,
		     int num_shards, int num_replicas, int vnodes, uint32_t *primary,
		     uint32_t *replicas, tally_err *err);

/* Choose the node for one new copy of shard `shard` of view `view` (a replica slot freed when
 * a node leaves for good): walking clockwise from the shard's point (the same point
 * tally_ring_place starts from), the first member that holds no copy of the shard yet
 * (neither primary[shard] nor any replicas[shard * num_replicas + r]) and whose replica count
 * for the view (counted over `replicas`) is below ceil(1.25 * S * R / nmembers); if every
 * candidate is at the bound, the first candidate ignoring it. members are the nodes that may
 * take the copy (the caller passes the ones that are up); entries of primary/replicas naming
 * other nodes (or 0 for the slot being filled) are simply not counted. Deterministic given
 * the member set and the placement. *out = the chosen node id. Errors: 53000 when every
 * member already holds a copy of the shard; 22023 for bad arguments (as tally_ring_place). */
int tally_ring_replace(const tally_ring_member *members, int nmembers, const char *view,
		       int num_shards, int num_replicas, const uint32_t *primary,
		       const uint32_t *replicas, int shard, int vnodes, uint32_t *out,
		       tally_err *err);

/* Shard owning a group hash with S shards: the range [i*2^64/S, (i+1)*2^64/S). */
static inline uint32_t tally_ring_shard_of(uint64_t hash, uint32_t nshards)
{
	return (uint32_t)(((unsigned __int128)hash * nshards) >> 64);
}

/* Number of shards from the options: explicit num_shards wins; else shard_factor percent of
 * nnodes (at least 1); else nnodes. */
int tally_ring_num_shards(int num_shards, int shard_factor, int nnodes);

#endif
