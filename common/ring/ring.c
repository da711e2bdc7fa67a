/*
 * ring.c - consistent-hash placement of a view's shard copies on the member nodes.
 *
 * Each member owns vnodes * weight points XXH64("<name>#<k>") on a 64-bit ring. Shard i of view
 * V starts at XXH64("<V>/<i>") and walks clockwise: the primary is the first node still below
 * the view's primary bound ceil(1.25 * S / n), the replicas the next distinct nodes below the
 * replica bound ceil(1.25 * S * R / n) (consistent hashing with bounded loads). Members are
 * sorted by name first and ties between equal points are broken by that order, so the result
 * depends only on the member set; member ids are only ever output, never hashed.
 *
 * When a node leaves for good, tally_ring_replace fills each copy slot it leaves with the
 * first node clockwise from the shard's point that holds no copy of that shard, under the
 * same replica bound; shards whose copies are elsewhere do not move.
 */
#include "tally/ring.h"

#include <stdio.h>
#include <stdlib.h>
#include <xxhash.h>

/* Bounds on the ring's size: a hostile or mistaken weight must not allocate without limit. */
#define RING_MAX_MEMBERS 4096
#define RING_MAX_POINTS (1u << 22)

typedef struct ring_point {
	uint64_t hash;
	uint32_t member; /* index into the name-sorted member order */
} ring_point;

static int ring_member_cmp(const void *a, const void *b)
{
	const tally_ring_member *x = *(const tally_ring_member *const *)a;
	const tally_ring_member *y = *(const tally_ring_member *const *)b;
	return strcmp(x->name, y->name);
}

static int ring_point_cmp(const void *a, const void *b)
{
	const ring_point *x = a, *y = b;
	if (x->hash != y->hash)
		return x->hash < y->hash ? -1 : 1;
	return x->member < y->member ? -1 : x->member > y->member;
}

/* First point with hash >= h, wrapping to 0. */
static size_t ring_lower_bound(const ring_point *pts, size_t npts, uint64_t h)
{
	size_t lo = 0, hi = npts;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (pts[mid].hash < h)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo == npts ? 0 : lo;
}

static uint64_t ring_hash_fmt(char *tmp, size_t tmpsz, const char *a, char sep, long k)
{
	int n = snprintf(tmp, tmpsz, "%s%c%ld", a, sep, k);
	if (n < 0)
		n = 0;
	if ((size_t)n >= tmpsz)
		n = (int)tmpsz - 1;
	return XXH64(tmp, (size_t)n, 0);
}

/* ceil(5 * a / (4 * n)) computed in integers. */
static uint32_t ring_bound(uint64_t a, uint64_t n)
{
	return (uint32_t)((5 * a + 4 * n - 1) / (4 * n));
}

/* A ring built from a member set: members sorted by name, their points sorted by hash, and
 * a scratch buffer for hashing "<view>/<i>". */
typedef struct ring_built {
	const tally_ring_member **sorted;
	size_t n;
	ring_point *pts;
	size_t npts;
	char *tmp;
	size_t tmpsz;
} ring_built;

static void ring_built_free(ring_built *rb)
{
	free(rb->pts);
	free(rb->tmp);
	free(rb->sorted);
	memset(rb, 0, sizeof *rb);
}

static int ring_check_members(const tally_ring_member *members, int nmembers, tally_err *err)
{
	if (!members || nmembers <= 0)
		return tally_err_set(err, TALLY_SQLSTATE_INVALID_PARAMETER,
				     "cannot place shards: the cluster has no worker nodes");
	if (nmembers > RING_MAX_MEMBERS)
		return tally_err_set(err, TALLY_SQLSTATE_INVALID_PARAMETER,
				     "cannot place shards on %d worker nodes, the limit is %d",
				     nmembers, RING_MAX_MEMBERS);
	return 0;
}

/* Validate the members and vnodes and build their ring; on error rb holds nothing. */
static int ring_build(const tally_ring_member *members, int nmembers, const char *view, int vnodes,
		      ring_built *rb, tally_err *err)
{
	memset(rb, 0, sizeof *rb);
	if (ring_check_members(members, nmembers, err))
		return -1;
	if (vnodes < 0)
		return tally_err_set(err, TALLY_SQLSTATE_INVALID_PARAMETER,
				     "invalid number of ring points per node: %d", vnodes);
	if (vnodes == 0)
		vnodes = TALLY_RING_VNODES;

	size_t n = (size_t)nmembers;
	size_t npts = 0;
	size_t maxname = strlen(view);
	for (size_t m = 0; m < n; m++) {
		if (!members[m].name || !members[m].name[0])
			return tally_err_set(err, TALLY_SQLSTATE_INVALID_PARAMETER,
					     "cannot place shards: worker node %u has no name",
					     members[m].id);
		uint64_t w = members[m].weight ? members[m].weight : 1;
		uint64_t p = w * (uint64_t)vnodes;
		if (p > RING_MAX_POINTS || npts + p > RING_MAX_POINTS)
			return tally_err_set(err, TALLY_SQLSTATE_INVALID_PARAMETER,
					     "cannot place shards: the ring would have more than "
					     "%u points",
					     RING_MAX_POINTS);
		npts += (size_t)p;
		size_t l = strlen(members[m].name);
		if (l > maxname)
			maxname = l;
	}

	rb->sorted = tally_xcalloc(n, sizeof *rb->sorted);
	for (size_t m = 0; m < n; m++)
		rb->sorted[m] = &members[m];
	qsort(rb->sorted, n, sizeof *rb->sorted, ring_member_cmp);
	for (size_t m = 1; m < n; m++) {
		if (strcmp(rb->sorted[m - 1]->name, rb->sorted[m]->name) == 0) {
			tally_err_set(err, TALLY_SQLSTATE_INVALID_PARAMETER,
				      "cannot place shards: worker node name \"%s\" appears twice",
				      rb->sorted[m]->name);
			ring_built_free(rb);
			return -1;
		}
	}

	/* Room for "<name>#<k>" or "<view>/<i>" with any int. */
	rb->n = n;
	rb->tmpsz = maxname + 32;
	rb->tmp = tally_xmalloc(rb->tmpsz);
	rb->pts = tally_xcalloc(npts, sizeof *rb->pts);
	rb->npts = npts;
	size_t np = 0;
	for (size_t m = 0; m < n; m++) {
		uint64_t w = rb->sorted[m]->weight ? rb->sorted[m]->weight : 1;
		long cnt = (long)(w * (uint64_t)vnodes);
		for (long k = 0; k < cnt; k++) {
			rb->pts[np].hash =
			    ring_hash_fmt(rb->tmp, rb->tmpsz, rb->sorted[m]->name, '#', k);
			rb->pts[np].member = (uint32_t)m;
			np++;
		}
	}
	qsort(rb->pts, npts, sizeof *rb->pts, ring_point_cmp);
	return 0;
}

/* Index of shard i's starting point for view. */
static size_t ring_shard_start(ring_built *rb, const char *view, int i)
{
	uint64_t h = ring_hash_fmt(rb->tmp, rb->tmpsz, view, '/', i);
	return ring_lower_bound(rb->pts, rb->npts, h);
}

static int ring_check_counts(int num_shards, int num_replicas, tally_err *err)
{
	if (num_shards < 1 || num_shards > TALLY_MAX_SHARDS) {
		tally_err_set(err, TALLY_SQLSTATE_INVALID_PARAMETER,
			      "value %d out of bounds for option \"num_shards\"", num_shards);
		return tally_err_detail(err, "Valid values are between \"1\" and \"%d\".",
					TALLY_MAX_SHARDS);
	}
	if (num_replicas < 0 || num_replicas > TALLY_MAX_REPLICAS) {
		tally_err_set(err, TALLY_SQLSTATE_INVALID_PARAMETER,
			      "value %d out of bounds for option \"num_replicas\"", num_replicas);
		return tally_err_detail(err, "Valid values are between \"0\" and \"%d\".",
					TALLY_MAX_REPLICAS);
	}
	return 0;
}

int tally_ring_place(const tally_ring_member *members, int nmembers, const char *view,
		     int num_shards, int num_replicas, int vnodes, uint32_t *primary,
		     uint32_t *replicas, tally_err *err)
{
	ring_built rb;
	uint32_t *pcount = NULL, *rcount = NULL;
	uint8_t *taken = NULL;
	int rc = -1;

	if (ring_check_members(members, nmembers, err))
		return -1;
	if (ring_check_counts(num_shards, num_replicas, err))
		return -1;
	if (num_replicas + 1 > nmembers)
		return tally_err_set(
		    err, TALLY_SQLSTATE_INVALID_PARAMETER,
		    "num_replicas %d requires at least %d worker nodes, the cluster "
		    "has %d",
		    num_replicas, num_replicas + 1, nmembers);
	if (!view || !primary || (num_replicas > 0 && !replicas))
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
				     "cannot place shards: missing view name or output array");
	if (ring_build(members, nmembers, view, vnodes, &rb, err))
		return -1;

	size_t n = rb.n, npts = rb.npts;
	const ring_point *pts = rb.pts;
	pcount = tally_xcalloc(n, sizeof *pcount);
	rcount = tally_xcalloc(n, sizeof *rcount);
	taken = tally_xcalloc(n, 1);
	uint32_t pbound = ring_bound((uint64_t)num_shards, n);
	uint32_t rbound = ring_bound((uint64_t)num_shards * (uint64_t)num_replicas, n);

	for (int i = 0; i < num_shards; i++) {
		size_t start = ring_shard_start(&rb, view, i);

		/* Primary: the first node below the bound. n * pbound >= 1.25 * S > the number
		 * placed so far, so one always exists; the fallback is defensive. */
		size_t ppos = start;
		uint32_t pm = pts[start].member;
		for (size_t s = 0; s < npts; s++) {
			size_t pos = (start + s) % npts;
			if (pcount[pts[pos].member] < pbound) {
				ppos = pos;
				pm = pts[pos].member;
				break;
			}
		}
		pcount[pm]++;
		primary[i] = rb.sorted[pm]->id;

		/* Replicas: walk on from the primary's point; distinct nodes, never the primary,
		 * below the bound if any such node remains, otherwise ignoring it. */
		memset(taken, 0, n);
		taken[pm] = 1;
		for (int r = 0; r < num_replicas; r++) {
			size_t found = n;
			for (int pass = 0; pass < 2 && found == n; pass++) {
				for (size_t s = 1; s <= npts; s++) {
					uint32_t m = pts[(ppos + s) % npts].member;
					if (taken[m])
						continue;
					if (pass == 0 && rcount[m] >= rbound)
						continue;
					found = m;
					break;
				}
			}
			if (found == n) {
				/* Unreachable: num_replicas < n leaves an untaken node. */
				tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
					      "could not place replica %d of shard %d", r, i);
				goto out;
			}
			taken[found] = 1;
			rcount[found]++;
			replicas[(size_t)i * (size_t)num_replicas + (size_t)r] =
			    rb.sorted[found]->id;
		}
	}
	rc = 0;
out:
	free(taken);
	free(rcount);
	free(pcount);
	ring_built_free(&rb);
	return rc;
}

int tally_ring_replace(const tally_ring_member *members, int nmembers, const char *view,
		       int num_shards, int num_replicas, const uint32_t *primary,
		       const uint32_t *replicas, int shard, int vnodes, uint32_t *out,
		       tally_err *err)
{
	ring_built rb;
	uint32_t *rcount = NULL;
	uint8_t *holds = NULL;
	int rc = -1;

	if (ring_check_counts(num_shards, num_replicas, err))
		return -1;
	if (!view || !primary || (num_replicas > 0 && !replicas) || !out)
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
				     "cannot place a shard copy: missing view name or placement");
	if (shard < 0 || shard >= num_shards)
		return tally_err_set(err, TALLY_SQLSTATE_INVALID_PARAMETER,
				     "shard %d of view \"%s\" does not exist", shard, view);
	if (ring_build(members, nmembers, view, vnodes, &rb, err))
		return -1;

	size_t n = rb.n;
	rcount = tally_xcalloc(n, sizeof *rcount);
	holds = tally_xcalloc(n, 1);
	/* Member index of each id: the sorted order is what the walk reports. */
	for (size_t m = 0; m < n; m++) {
		uint32_t id = rb.sorted[m]->id;
		if (primary[shard] == id)
			holds[m] = 1;
		for (int s = 0; s < num_shards; s++) {
			for (int r = 0; r < num_replicas; r++) {
				if (replicas[(size_t)s * (size_t)num_replicas + (size_t)r] != id)
					continue;
				rcount[m]++;
				if (s == shard)
					holds[m] = 1;
			}
		}
	}
	uint32_t rbound =
	    ring_bound((uint64_t)num_shards * (uint64_t)(num_replicas ? num_replicas : 1), n);
	size_t start = ring_shard_start(&rb, view, shard);
	size_t found = n;
	for (int pass = 0; pass < 2 && found == n; pass++) {
		for (size_t s = 0; s < rb.npts; s++) {
			uint32_t m = rb.pts[(start + s) % rb.npts].member;
			if (holds[m] || (pass == 0 && rcount[m] >= rbound))
				continue;
			found = m;
			break;
		}
	}
	if (found == n) {
		tally_err_set(err, TALLY_SQLSTATE_INSUFFICIENT_RESOURCES,
			      "cannot place a new copy of shard %s_%d: each of the %zu worker "
			      "nodes available holds one already",
			      view, shard, n);
		goto out;
	}
	*out = rb.sorted[found]->id;
	rc = 0;
out:
	free(holds);
	free(rcount);
	ring_built_free(&rb);
	return rc;
}

int tally_ring_num_shards(int num_shards, int shard_factor, int nnodes)
{
	int s;
	if (num_shards > 0)
		s = num_shards;
	else if (shard_factor > 0)
		s = (int)(((int64_t)shard_factor * (nnodes > 0 ? nnodes : 0)) / 100);
	else
		s = nnodes;
	if (s < 1)
		s = 1;
	if (s > TALLY_MAX_SHARDS)
		s = TALLY_MAX_SHARDS;
	return s;
}
