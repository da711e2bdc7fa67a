/*
 * ingest.c - the write path at the receiving node (DESIGN §5): every row of a statement is
 * type-checked by the caller, then for every continuous view on the stream filtered by the
 * view's WHERE, mapped to its group and folded into one partial state per group. Nothing
 * leaves the node before the whole statement has been read, so a bad row anywhere applies
 * nothing. At commit the partials are grouped by target shard and sent, one APPLY batch per
 * shard, to the shards' primaries in parallel; the statement returns once they all applied.
 *
 * Hot path notes: rows arrive as typed values; per row and view the work is one WHERE test,
 * one key encoding into a reused buffer, one hash, one probe and the aggregate updates.
 * Bare column references (the common case) skip the expression evaluator. Memory: the
 * statement arena (bounded by pipeline_cluster.statement_memory) holds the groups; a scratch
 * arena, reset every row, holds expression temporaries.
 */
#include "tally/node.h"
#include "tally/ring.h"

#include <stdio.h>
#include <stdlib.h>

typedef struct ingest_view {
	const tally_view_rt *rt;
	tally_gtab groups;
	int *group_col; /* bare column index per group expr, or -1 */
	int *agg_col;	/* bare column index per aggregate argument, -1 = expression/none */
} ingest_view;

struct tally_ingest {
	tally_node *node;
	tally_map *map;
	tally_settings settings;
	tally_arena arena;   /* statement memory: groups */
	tally_arena scratch; /* per-row temporaries */
	tally_relation rel;
	int nviews;
	ingest_view *views;
	tally_buf key;
	uint64_t nrows;
	int64_t arrival;
};

int tally_ingest_begin(tally_node *n, tally_map *m, const char *stream, const tally_settings *s,
		       tally_ingest **out, tally_err *err)
{
	tally_ingest *g = tally_xcalloc(1, sizeof *g);
	g->node = n;
	g->map = m;
	__atomic_add_fetch(&m->refs, 1, __ATOMIC_ACQ_REL);
	g->settings = *s;
	if (tally_map_stream_rel(m, stream, &g->arena, &g->rel) != 0) {
		tally_ingest_free(g);
		return tally_err_set(err, TALLY_SQLSTATE_UNDEFINED_TABLE,
				     "stream \"%s\" does not exist", stream);
	}
	g->arena.limit = (size_t)tally_settings_bytes(s, TALLY_SET_STATEMENT_MEMORY);
	g->views = tally_xcalloc((size_t)(m->cat->nviews ? m->cat->nviews : 1), sizeof *g->views);
	for (int i = 0; i < m->cat->nviews; i++) {
		const tally_view_rt *rt = &m->views[i];
		if (strcmp(rt->info->stream, stream) != 0)
			continue;
		if (!rt->ok) {
			tally_ingest_free(g);
			return tally_err_set(err, TALLY_SQLSTATE_INTERNAL, "%s", rt->error);
		}
		ingest_view *iv = &g->views[g->nviews++];
		iv->rt = rt;
		tally_gtab_init(&iv->groups, rt->plan->aggs, rt->plan->naggs, &g->arena);
		iv->group_col = tally_xcalloc((size_t)rt->plan->ngroups + 1, sizeof(int));
		iv->agg_col = tally_xcalloc((size_t)rt->plan->naggs + 1, sizeof(int));
		for (int k = 0; k < rt->plan->ngroups; k++)
			iv->group_col[k] = tally_expr_colref(rt->plan->group_exprs[k]);
		for (int k = 0; k < rt->plan->naggs; k++)
			iv->agg_col[k] =
			    rt->plan->agg_args[k] ? tally_expr_colref(rt->plan->agg_args[k]) : -1;
	}
	g->arrival = tally_now_us();
	*out = g;
	return 0;
}

const tally_relation *tally_ingest_rel(const tally_ingest *g)
{
	return &g->rel;
}
uint64_t tally_ingest_rows(const tally_ingest *g)
{
	return g->nrows;
}

static int out_of_memory(const tally_ingest *g, tally_err *err)
{
	tally_err_set(
	    err, TALLY_SQLSTATE_PROGRAM_LIMIT,
	    "statement exceeds pipeline_cluster.statement_memory (%s) while pre-aggregating",
	    g->settings.v[TALLY_SET_STATEMENT_MEMORY]);
	return tally_err_hint(err, "Split the input into smaller statements or raise the setting.");
}

int tally_ingest_row(tally_ingest *g, tally_value *row, tally_err *err)
{
	row[g->rel.ncols - 1] = tally_int(TALLY_T_TIMESTAMPTZ, g->arrival);
	g->nrows++;
	for (int vi = 0; vi < g->nviews; vi++) {
		ingest_view *iv = &g->views[vi];
		const tally_view_plan *p = iv->rt->plan;
		if (p->where) {
			int t = tally_expr_test(p->where, row, &g->scratch, err);
			if (t < 0)
				return -1;
			if (t == 0)
				continue;
		}
		tally_buf_reset(&g->key);
		for (int k = 0; k < p->ngroups; k++) {
			if (iv->group_col[k] >= 0) {
				tally_value v = row[iv->group_col[k]];
				v.type = (uint8_t)p->group_types[k];
				tally_key_encode(&v, &g->key);
			} else {
				tally_value v;
				if (tally_expr_eval(p->group_exprs[k], row, &v, &g->scratch, err) !=
				    0)
					return -1;
				v.type = (uint8_t)p->group_types[k];
				tally_key_encode(&v, &g->key);
			}
		}
		if (g->key.len > TALLY_GROUP_KEY_MAX)
			return tally_err_set(err, TALLY_SQLSTATE_PROGRAM_LIMIT,
					     "group key of continuous view \"%s\" is %zu bytes, "
					     "more than the limit of %u",
					     iv->rt->info->name, g->key.len, TALLY_GROUP_KEY_MAX);
		uint64_t h = tally_group_hash(g->key.data, g->key.len);
		tally_group *grp =
		    tally_gtab_lookup(&iv->groups, g->key.data, (uint32_t)g->key.len, h, true);
		if (!grp)
			return out_of_memory(g, err);
		for (int k = 0; k < p->naggs; k++) {
			const tally_agg_spec *s = &p->aggs[k];
			uint8_t *slot = grp->states + (size_t)k * TALLY_AGG_SLOT;
			if (s->kind == TALLY_AGG_COUNT_STAR) {
				tally_agg_update(s, slot, NULL);
			} else if (iv->agg_col[k] >= 0) {
				tally_agg_update(s, slot, &row[iv->agg_col[k]]);
			} else {
				tally_value v;
				if (tally_expr_eval(p->agg_args[k], row, &v, &g->scratch, err) != 0)
					return -1;
				tally_agg_update(s, slot, &v);
			}
		}
	}
	if (g->scratch.used > (1u << 20))
		tally_arena_reset(&g->scratch);
	return 0;
}

/* Pick the target shard of a write_optimized batch: a shard whose primary is this node if
 * there is one, else rotate over all shards. */
static uint32_t write_opt_shard(tally_node *n, const tally_view_info *v)
{
	static uint32_t rot;
	uint32_t start = __atomic_fetch_add(&rot, 1, __ATOMIC_RELAXED);
	for (int i = 0; i < v->num_shards; i++) {
		uint32_t s = (start + (uint32_t)i) % (uint32_t)v->num_shards;
		if (tally_node_id(n) != 0 && v->primary[s] == tally_node_id(n))
			return s;
	}
	return start % (uint32_t)v->num_shards;
}

int tally_ingest_commit(tally_ingest *g, tally_err *err)
{
	tally_node *n = g->node;
	int nbatches = 0; /* at most one per (view, shard) */
	for (int vi = 0; vi < g->nviews; vi++)
		nbatches += g->views[vi].rt->info->num_shards;
	if (nbatches == 0 || g->nrows == 0)
		return 0;
	/* A statement may run for minutes (a long COPY): route with the map of now. A view
	 * dropped meanwhile is skipped (its rows have nowhere to go); node addresses and states
	 * are today's. Placements of a view never change while it exists. */
	tally_map *cur = tally_node_map(n);
	const tally_catalog *cat = cur->cat;
	tally_buf *reqs = tally_xcalloc((size_t)nbatches, sizeof *reqs);
	uint32_t *ngroups = tally_xcalloc((size_t)nbatches, sizeof *ngroups);
	tally_rpc_call *calls = tally_xcalloc((size_t)nbatches, sizeof *calls);
	char(*shardname)[TALLY_NAME_MAX + 8] = tally_xcalloc((size_t)nbatches, sizeof *shardname);
	uint64_t *call_view = tally_xcalloc((size_t)nbatches, sizeof *call_view);
	uint32_t *call_shard = tally_xcalloc((size_t)nbatches, sizeof *call_shard);
	int ncalls = 0, rc = 0, base = 0;
	for (int vi = 0; vi < g->nviews && rc == 0; vi++) {
		ingest_view *iv = &g->views[vi];
		const tally_view_info *v = iv->rt->info;
		const tally_view_plan *p = iv->rt->plan;
		uint32_t S = (uint32_t)v->num_shards;
		int vbase = base;
		base += (int)S;
		if (iv->groups.count == 0 || !tally_catalog_view_by_id(cat, v->id))
			continue;
		for (uint32_t s = 0; s < S; s++) {
			tally_msg_begin(&reqs[vbase + (int)s], TALLY_MSG_APPLY,
					tally_node_next_req(n), cat->epoch);
			tally_msg_apply a = {
			    .origin = tally_node_id(n),
			    .home_shard = s,
			    .seq = 0, /* taken below, only for batches that are sent */
			    .view_id = v->id,
			    .target_shard = s,
			    .ngroups = 0, /* patched below */
			};
			tally_msg_put_apply(&reqs[vbase + (int)s], &a);
		}
		uint32_t wshard =
		    v->sharding_policy == TALLY_POLICY_WRITE_OPTIMIZED ? write_opt_shard(n, v) : 0;
		for (size_t i = 0; i < iv->groups.cap; i++) {
			tally_group *grp = iv->groups.slots[i].g;
			if (!grp)
				continue;
			uint32_t s = v->sharding_policy == TALLY_POLICY_WRITE_OPTIMIZED
					 ? wshard
					 : tally_ring_shard_of(grp->hash, S);
			tally_group_put(&reqs[vbase + (int)s], grp->key, grp->keylen, p->aggs,
					p->naggs, grp->states);
			ngroups[vbase + (int)s]++;
		}
		for (uint32_t s = 0; s < S && rc == 0; s++) {
			int idx = vbase + (int)s;
			if (ngroups[idx] == 0)
				continue;
			if (reqs[idx].len > TALLY_MSG_MAX) {
				rc = tally_err_set(err, TALLY_SQLSTATE_PROGRAM_LIMIT,
						   "batch for shard %s_%u is larger than %u bytes",
						   v->name, s, TALLY_MSG_MAX);
				break;
			}
			/* ngroups (offset 28 of the APPLY body); seq is patched once all checks
			 * passed */
			tally_put_be32(reqs[idx].data + TALLY_MSG_HDR + 28, ngroups[idx]);
			tally_msg_end(&reqs[idx]);
			const tally_node_info *pn = tally_catalog_node(cat, v->primary[s]);
			if (!pn || pn->state != TALLY_NODE_UP) {
				/* Nothing has been sent yet: fail the whole statement now. */
				rc = tally_err_set(
				    err, TALLY_SQLSTATE_UNAVAILABLE,
				    "could not apply batch to shard %s_%u: its primary %s is down",
				    v->name, s, pn ? pn->name : "?");
				tally_err_detail(err, "No row of the statement was applied.");
				break;
			}
			calls[ncalls].req = reqs[idx]; /* borrowed: reqs[] owns the memory */
			call_view[ncalls] = v->id;
			call_shard[ncalls] = s;
			calls[ncalls].addr = pn->data_addr;
			calls[ncalls].peer = pn->name;
			snprintf(shardname[ncalls], sizeof shardname[ncalls], "%s_%u", v->name, s);
			ncalls++;
		}
	}
	if (rc == 0 && ncalls > 0) {
		/* Take batch seqs only for batches that are really sent, so that every
		 * (origin, view, shard) sequence stays gap-free. */
		for (int k = 0; k < ncalls; k++)
			tally_put_be64(calls[k].req.data + TALLY_MSG_HDR + 8,
				       tally_node_next_seq(n, call_view[k], call_shard[k]));
		tally_rpc_call_many(n->rpc, calls, ncalls,
				    (int)tally_settings_ms(&g->settings, TALLY_SET_RPC_TIMEOUT));
		for (int i = 0; i < ncalls; i++) {
			if (calls[i].rc != 0) {
				tally_err_set(err,
					      calls[i].sqlstate[0] ? calls[i].sqlstate
								   : TALLY_SQLSTATE_UNAVAILABLE,
					      "could not apply batch to shard %s: %s", shardname[i],
					      calls[i].errmsg);
				rc = -1;
				break;
			}
		}
		tally_rpc_calls_done(calls, ncalls);
	}
	for (int i = 0; i < nbatches; i++)
		tally_buf_free(&reqs[i]);
	free(reqs);
	free(calls);
	free(ngroups);
	free(shardname);
	free(call_view);
	free(call_shard);
	tally_map_put(cur);
	return rc;
}

void tally_ingest_free(tally_ingest *g)
{
	if (!g)
		return;
	for (int i = 0; i < g->nviews; i++) {
		tally_gtab_fini(&g->views[i].groups);
		free(g->views[i].group_col);
		free(g->views[i].agg_col);
	}
	free(g->views);
	tally_buf_free(&g->key);
	tally_arena_free(&g->arena);
	tally_arena_free(&g->scratch);
	tally_map_put(g->map);
	free(g);
}
