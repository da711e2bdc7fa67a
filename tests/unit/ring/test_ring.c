/*
 * test_ring.c - placement on the hash ring: determinism, replica rules, bounded loads,
 * movement when a node joins, refusal of impossible replica counts, and shard ranges.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>

#include "tally/ring.h"

/* A small deterministic PRNG so failures reproduce. */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rng_next(void)
{
	uint64_t x = rng_state;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	rng_state = x;
	return x;
}
static int rng_range(int lo, int hi) /* inclusive */
{
	return lo + (int)(rng_next() % (uint64_t)(hi - lo + 1));
}

typedef struct members {
	int n;
	char names[16][32];
	tally_ring_member m[16];
} members;

static void members_make(members *ms, int n, bool random_names)
{
	ms->n = n;
	for (int i = 0; i < n; i++) {
		if (random_names)
			snprintf(ms->names[i], sizeof ms->names[i], "node-%d-%08llx", i,
				 (unsigned long long)(rng_next() & 0xffffffffu));
		else
			snprintf(ms->names[i], sizeof ms->names[i], "w%d", i + 1);
		ms->m[i].id = (uint32_t)(100 + i * 7);
		ms->m[i].name = ms->names[i];
		ms->m[i].weight = 1;
	}
}

Test(ring, deterministic_for_any_member_order, .timeout = 30)
{
	members ms;
	members_make(&ms, 7, false);
	uint32_t p1[40], r1[80], p2[40], r2[80];
	tally_err err;
	cr_assert_eq(tally_ring_place(ms.m, ms.n, "v", 40, 2, 0, p1, r1, &err), 0, "%s",
		     err.message);
	for (int round = 0; round < 50; round++) {
		tally_ring_member sh[16];
		memcpy(sh, ms.m, sizeof(tally_ring_member) * (size_t)ms.n);
		for (int i = ms.n - 1; i > 0; i--) {
			int j = rng_range(0, i);
			tally_ring_member t = sh[i];
			sh[i] = sh[j];
			sh[j] = t;
		}
		memset(p2, 0, sizeof p2);
		memset(r2, 0, sizeof r2);
		cr_assert_eq(tally_ring_place(sh, ms.n, "v", 40, 2, 0, p2, r2, &err), 0);
		cr_assert_arr_eq(p1, p2, sizeof p1, "primaries depend on member order");
		cr_assert_arr_eq(r1, r2, sizeof r1, "replicas depend on member order");
	}
	/* A different view gets a different placement (not a constant function). */
	cr_assert_eq(tally_ring_place(ms.m, ms.n, "other_view", 40, 2, 0, p2, r2, &err), 0);
	cr_assert(memcmp(p1, p2, sizeof p1) != 0 || memcmp(r1, r2, sizeof r1) != 0);
}

Test(ring, ids_are_output_only, .timeout = 30)
{
	/* The same names with other ids give the same placement up to renaming the ids. */
	members a, b;
	members_make(&a, 5, false);
	members_make(&b, 5, false);
	for (int i = 0; i < 5; i++)
		b.m[i].id = 1000 + (uint32_t)i;
	uint32_t pa[20], pb[20], ra[20], rb[20];
	cr_assert_eq(tally_ring_place(a.m, 5, "v", 20, 1, 0, pa, ra, NULL), 0);
	cr_assert_eq(tally_ring_place(b.m, 5, "v", 20, 1, 0, pb, rb, NULL), 0);
	for (int i = 0; i < 20; i++) {
		cr_assert_eq((pa[i] - 100) / 7, pb[i] - 1000);
		cr_assert_eq((ra[i] - 100) / 7, rb[i] - 1000);
	}
}

Test(ring, replica_never_on_primary_node, .timeout = 30)
{
	rng_state = 12345;
	for (int iter = 0; iter < 1000; iter++) {
		members ms;
		int n = rng_range(2, 12);
		members_make(&ms, n, true);
		int S = rng_range(1, 64);
		int R = rng_range(0, n - 1);
		uint32_t prim[64], reps[64 * 12];
		tally_err err;
		char view[32];
		snprintf(view, sizeof view, "view_%d", iter);
		cr_assert_eq(tally_ring_place(ms.m, n, view, S, R, 0, prim, reps, &err), 0, "%s",
			     err.message);
		for (int i = 0; i < S; i++) {
			bool known = false;
			for (int m = 0; m < n; m++)
				known |= ms.m[m].id == prim[i];
			cr_assert(known, "primary is not a member id");
			for (int r = 0; r < R; r++) {
				uint32_t id = reps[i * R + r];
				cr_assert_neq(id, prim[i], "replica on its primary (iter %d)",
					      iter);
				for (int q = 0; q < r; q++)
					cr_assert_neq(id, reps[i * R + q], "replica twice");
				known = false;
				for (int m = 0; m < n; m++)
					known |= ms.m[m].id == id;
				cr_assert(known, "replica is not a member id");
			}
		}
	}
}

Test(ring, primaries_within_bounded_load, .timeout = 30)
{
	rng_state = 777;
	for (int iter = 0; iter < 300; iter++) {
		members ms;
		int n = rng_range(2, 12);
		members_make(&ms, n, iter % 2 == 0);
		int S = rng_range(1, 200);
		int R = rng_range(0, n - 1);
		uint32_t *prim = calloc((size_t)S, sizeof *prim);
		uint32_t *reps = calloc((size_t)S * (size_t)(R + 1), sizeof *reps);
		char view[32];
		snprintf(view, sizeof view, "cv%d", iter);
		cr_assert_eq(tally_ring_place(ms.m, n, view, S, R, 0, prim, reps, NULL), 0);
		int bound = (5 * S + 4 * n - 1) / (4 * n); /* ceil(1.25 * S / n) */
		int rbound = (5 * S * R + 4 * n - 1) / (4 * n);
		for (int m = 0; m < n; m++) {
			int pc = 0, rc = 0;
			for (int i = 0; i < S; i++)
				pc += prim[i] == ms.m[m].id;
			for (int i = 0; i < S * R; i++)
				rc += reps[i] == ms.m[m].id;
			cr_assert_leq(pc, bound, "node %d has %d primaries of %d (n=%d, bound %d)",
				      m, pc, S, n, bound);
			/* Replicas may exceed their bound only in the fallback; allow one extra
			 * per shard slot would be too loose, so check the common case strictly
			 * where it cannot be forced. */
			if (R * 2 < n)
				cr_assert_leq(rc, rbound, "node %d has %d replicas", m, rc);
		}
		free(prim);
		free(reps);
	}
}

/* A shard copy moves when the new placement puts a copy of the shard on a node that held none
 * of it before (the data has to travel there); a node that keeps a copy in another role (the
 * old primary becoming the replica) moves nothing. Role changes are measured too: with
 * successor replicas a node that takes over a primary pushes the old primary into the replica
 * slot, so per-slot changes are about 1.5x the new node's share. */
Test(ring, adding_a_node_moves_few_copies, .timeout = 30)
{
	members ms;
	members_make(&ms, 4, false);
	int moved = 0, slot_changed = 0, total = 0, on_new = 0;
	for (int v = 0; v < 200; v++) {
		char view[32];
		snprintf(view, sizeof view, "view%d", v);
		uint32_t p3[16], r3[16], p4[16], r4[16];
		cr_assert_eq(tally_ring_place(ms.m, 3, view, 16, 1, 0, p3, r3, NULL), 0);
		cr_assert_eq(tally_ring_place(ms.m, 4, view, 16, 1, 0, p4, r4, NULL), 0);
		for (int i = 0; i < 16; i++) {
			moved += p4[i] != p3[i] && p4[i] != r3[i];
			moved += r4[i] != p3[i] && r4[i] != r3[i];
			slot_changed += (p3[i] != p4[i]) + (r3[i] != r4[i]);
			on_new += (p4[i] == ms.m[3].id) + (r4[i] == ms.m[3].id);
			total += 2;
		}
	}
	double frac = (double)moved / total;
	double slot_frac = (double)slot_changed / total;
	printf("ring: adding a 4th node to 3 moved %d of %d shard copies (%.1f%%); "
	       "%d copy slots changed node or role (%.1f%%); the new node holds %.1f%%\n",
	       moved, total, 100.0 * frac, slot_changed, 100.0 * slot_frac, 100.0 * on_new / total);
	cr_assert_leq(frac, 0.40, "moved %.3f of shard copies", frac);
	cr_assert_leq(slot_frac, 0.45, "%.3f of copy slots changed", slot_frac);
	/* The new node got a fair share, and most moves went to it (bounded loads shift a
	 * few copies between the old nodes too). */
	cr_assert_geq(on_new, total / 5);
	cr_assert_geq(on_new * 10, moved * 8, "%d of %d moves went to the new node", on_new, moved);
}

Test(ring, refuses_too_many_replicas, .timeout = 30)
{
	members ms;
	members_make(&ms, 3, false);
	uint32_t p[4] = {7, 7, 7, 7}, r[16] = {0};
	tally_err err;
	memset(&err, 0, sizeof err);
	cr_assert_neq(tally_ring_place(ms.m, 3, "v", 4, 3, 0, p, r, &err), 0);
	cr_assert_str_eq(err.sqlstate, "22023");
	cr_assert_str_eq(err.message,
			 "num_replicas 3 requires at least 4 worker nodes, the cluster has 3");
	cr_assert_eq(p[0], 7, "output written on failure");
	cr_assert_neq(tally_ring_place(ms.m, 1, "v", 4, 1, 0, p, r, &err), 0);
	cr_assert_str_eq(err.message,
			 "num_replicas 1 requires at least 2 worker nodes, the cluster has 1");
	/* n - 1 replicas is fine: every node holds every shard. */
	cr_assert_eq(tally_ring_place(ms.m, 3, "v", 4, 2, 0, p, r, &err), 0);
}

Test(ring, rejects_bad_arguments, .timeout = 30)
{
	members ms;
	members_make(&ms, 3, false);
	uint32_t p[8], r[8];
	tally_err err;
	cr_assert_neq(tally_ring_place(ms.m, 0, "v", 4, 0, 0, p, r, &err), 0);
	cr_assert_str_eq(err.sqlstate, "22023");
	cr_assert_neq(tally_ring_place(ms.m, 3, "v", 0, 0, 0, p, r, &err), 0);
	cr_assert_str_eq(err.sqlstate, "22023");
	cr_assert_neq(tally_ring_place(ms.m, 3, "v", TALLY_MAX_SHARDS + 1, 0, 0, p, r, &err), 0);
	cr_assert_str_eq(err.sqlstate, "22023");
	cr_assert_neq(tally_ring_place(ms.m, 3, "v", 4, -1, 0, p, r, &err), 0);
	ms.names[1][0] = 'w';
	ms.names[1][1] = '1'; /* duplicate of w1 */
	cr_assert_neq(tally_ring_place(ms.m, 3, "v", 4, 0, 0, p, r, &err), 0);
	cr_assert_str_eq(err.sqlstate, "22023");
}

Test(ring, single_node_and_max_shards, .timeout = 30)
{
	members ms;
	members_make(&ms, 1, false);
	static uint32_t p[TALLY_MAX_SHARDS];
	cr_assert_eq(tally_ring_place(ms.m, 1, "big", TALLY_MAX_SHARDS, 0, 0, p, NULL, NULL), 0);
	for (int i = 0; i < TALLY_MAX_SHARDS; i++)
		cr_assert_eq(p[i], ms.m[0].id);
}

Test(ring, weight_shifts_load, .timeout = 30)
{
	/* A heavier node owns more points; with bounded loads it still stays under the bound. */
	members ms;
	members_make(&ms, 3, false);
	ms.m[0].weight = 4;
	uint32_t p[300];
	cr_assert_eq(tally_ring_place(ms.m, 3, "wv", 300, 0, 0, p, NULL, NULL), 0);
	int c0 = 0;
	for (int i = 0; i < 300; i++)
		c0 += p[i] == ms.m[0].id;
	cr_assert_gt(c0, 100);
	cr_assert_leq(c0, 125);
}

Test(ring, shard_of_range_edges, .timeout = 30)
{
	cr_assert_eq(tally_ring_shard_of(0, 1), 0);
	cr_assert_eq(tally_ring_shard_of(UINT64_MAX, 1), 0);
	cr_assert_eq(tally_ring_shard_of(UINT64_MAX, TALLY_MAX_SHARDS), TALLY_MAX_SHARDS - 1);
	cr_assert_eq(tally_ring_shard_of((uint64_t)1 << 63, 2), 1);
	cr_assert_eq(tally_ring_shard_of(((uint64_t)1 << 63) - 1, 2), 0);
	for (uint32_t S = 1; S <= 200; S++) {
		cr_assert_eq(tally_ring_shard_of(0, S), 0);
		cr_assert_eq(tally_ring_shard_of(UINT64_MAX, S), S - 1);
		for (uint32_t i = 1; i < S; i++) {
			/* first hash of shard i: ceil(i * 2^64 / S) */
			unsigned __int128 num = (unsigned __int128)i << 64;
			uint64_t first = (uint64_t)((num + S - 1) / S);
			cr_assert_eq(tally_ring_shard_of(first, S), i, "S=%u i=%u", S, i);
			cr_assert_eq(tally_ring_shard_of(first - 1, S), i - 1, "S=%u i=%u", S, i);
		}
	}
}

Test(ring, num_shards_from_options, .timeout = 30)
{
	cr_assert_eq(tally_ring_num_shards(5, 50, 3), 5);
	cr_assert_eq(tally_ring_num_shards(-1, -1, 3), 3);
	cr_assert_eq(tally_ring_num_shards(-1, 50, 4), 2);
	cr_assert_eq(tally_ring_num_shards(-1, 10, 3), 1);
	cr_assert_eq(tally_ring_num_shards(-1, 100, 7), 7);
	cr_assert_eq(tally_ring_num_shards(-1, -1, 0), 1);
	cr_assert_eq(tally_ring_num_shards(0, 0, 2), 2);
}

/* ---- tally_ring_replace ------------------------------------------------------------------------
 */

/* Place S shards with R replicas on ms, then take member `gone` away the way remove_node does:
 * promote the first replica where it was primary, free its slots, and fill every freed slot
 * with tally_ring_replace over the remaining members. Returns the number of slots filled. */
static int remove_member(members *ms, int gone, const char *view, int S, int R, uint32_t *prim,
			 uint32_t *reps, uint32_t *chosen)
{
	tally_err err;
	uint32_t gid = ms->m[gone].id;
	tally_ring_member rest[16];
	int nrest = 0;
	for (int m = 0; m < ms->n; m++)
		if (m != gone)
			rest[nrest++] = ms->m[m];
	int nfilled = 0;
	for (int i = 0; i < S; i++) {
		int slot = -1;
		if (prim[i] == gid) {
			prim[i] = reps[i * R];
			reps[i * R] = 0;
			slot = 0;
		}
		for (int r = 0; r < R; r++)
			if (reps[i * R + r] == gid) {
				reps[i * R + r] = 0;
				slot = r;
			}
		if (slot < 0)
			continue;
		uint32_t id = 0;
		cr_assert_eq(
		    tally_ring_replace(rest, nrest, view, S, R, prim, reps, i, 0, &id, &err), 0,
		    "%s", err.message);
		reps[i * R + slot] = id;
		chosen[nfilled++] = id;
	}
	return nfilled;
}

Test(ring, replace_never_picks_a_holder, .timeout = 30)
{
	rng_state = 4242;
	int total = 0;
	for (int iter = 0; iter < 500; iter++) {
		members ms;
		int n = rng_range(3, 12);
		members_make(&ms, n, true);
		int S = rng_range(1, 64);
		int R = rng_range(1, n - 2);
		uint32_t prim[64], reps[64 * 12], chosen[64];
		char view[32];
		snprintf(view, sizeof view, "view_%d", iter);
		cr_assert_eq(tally_ring_place(ms.m, n, view, S, R, 0, prim, reps, NULL), 0);
		int gone = rng_range(0, n - 1);
		total += remove_member(&ms, gone, view, S, R, prim, reps, chosen);
		for (int i = 0; i < S; i++) {
			cr_assert_neq(prim[i], ms.m[gone].id);
			for (int r = 0; r < R; r++) {
				uint32_t id = reps[i * R + r];
				cr_assert_neq(id, ms.m[gone].id,
					      "a copy stayed on the removed node");
				cr_assert_neq(id, prim[i], "replica on its primary (iter %d)",
					      iter);
				for (int q = 0; q < r; q++)
					cr_assert_neq(id, reps[i * R + q],
						      "two copies on one node");
				bool known = false;
				for (int m = 0; m < n; m++)
					known |= m != gone && ms.m[m].id == id;
				cr_assert(known, "replica is not a remaining member");
			}
		}
	}
	cr_assert_gt(total, 1000, "only %d copies were replaced", total);
}

Test(ring, replace_spreads_and_keeps_the_bound, .timeout = 30)
{
	members ms;
	members_make(&ms, 8, false);
	const int S = 64, R = 1;
	uint32_t prim[64], reps[64], chosen[64];
	cr_assert_eq(tally_ring_place(ms.m, 8, "spread", S, R, 0, prim, reps, NULL), 0);
	int filled = remove_member(&ms, 3, "spread", S, R, prim, reps, chosen);
	cr_assert_geq(filled, 8, "w4 held %d copies", filled);
	/* The new copies go to several nodes, not all to the removed node's ring neighbour. */
	int distinct = 0;
	for (int i = 0; i < filled; i++) {
		bool seen = false;
		for (int j = 0; j < i; j++)
			seen |= chosen[j] == chosen[i];
		distinct += !seen;
	}
	cr_assert_geq(distinct, 3, "%d new copies all went to %d nodes", filled, distinct);
	/* No remaining node holds more replicas than the bound for 7 nodes: ceil(1.25*64/7). */
	for (int m = 0; m < 8; m++) {
		int cnt = 0;
		for (int i = 0; i < S; i++)
			cnt += reps[i] == ms.m[m].id;
		cr_assert_leq(cnt, 12, "%s has %d replicas", ms.m[m].name, cnt);
	}
}

Test(ring, replace_is_deterministic, .timeout = 30)
{
	members ms;
	members_make(&ms, 6, false);
	uint32_t prim[32], reps[64];
	cr_assert_eq(tally_ring_place(ms.m, 6, "det", 32, 2, 0, prim, reps, NULL), 0);
	/* Free one replica slot of every shard and ask with the members in many orders. */
	for (int i = 0; i < 32; i++)
		reps[i * 2 + 1] = 0;
	uint32_t first[32];
	for (int i = 0; i < 32; i++)
		cr_assert_eq(
		    tally_ring_replace(ms.m, 6, "det", 32, 2, prim, reps, i, 0, &first[i], NULL),
		    0);
	for (int round = 0; round < 20; round++) {
		tally_ring_member sh[16];
		memcpy(sh, ms.m, sizeof(tally_ring_member) * 6);
		for (int i = 5; i > 0; i--) {
			int j = rng_range(0, i);
			tally_ring_member t = sh[i];
			sh[i] = sh[j];
			sh[j] = t;
		}
		for (int i = 0; i < 32; i++) {
			uint32_t id = 0;
			cr_assert_eq(
			    tally_ring_replace(sh, 6, "det", 32, 2, prim, reps, i, 0, &id, NULL),
			    0);
			cr_assert_eq(id, first[i], "shard %d: member order changed the choice", i);
		}
	}
}

Test(ring, replace_refuses_when_every_member_holds_a_copy, .timeout = 30)
{
	members ms;
	members_make(&ms, 3, false);
	uint32_t prim[4], reps[8];
	tally_err err;
	cr_assert_eq(tally_ring_place(ms.m, 3, "full", 4, 2, 0, prim, reps, NULL), 0);
	uint32_t id = 77;
	/* Every one of the three members holds a copy of shard 1: no candidate. */
	cr_assert_neq(tally_ring_replace(ms.m, 3, "full", 4, 2, prim, reps, 1, 0, &id, &err), 0);
	cr_assert_str_eq(err.sqlstate, "53000");
	cr_assert_eq(id, 77, "out changed on failure");
	/* With slot freed, the only candidate is the node that held it. */
	uint32_t was = reps[1 * 2 + 0];
	reps[1 * 2 + 0] = 0;
	cr_assert_eq(tally_ring_replace(ms.m, 3, "full", 4, 2, prim, reps, 1, 0, &id, &err), 0);
	cr_assert_eq(id, was);
	/* Bad arguments. */
	cr_assert_neq(tally_ring_replace(ms.m, 3, "full", 4, 2, prim, reps, 4, 0, &id, &err), 0);
	cr_assert_neq(tally_ring_replace(ms.m, 0, "full", 4, 2, prim, reps, 0, 0, &id, &err), 0);
	cr_assert_neq(tally_ring_replace(ms.m, 3, "full", 0, 2, prim, reps, 0, 0, &id, &err), 0);
}
