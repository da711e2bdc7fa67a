/*
 * ingest.c - the write path at the receiving node (DESIGN §5): every row of a statement is
 * type-checked by the caller, then for every continuous view on the stream filtered by the
 * view's WHERE, mapped to its group and folded into one partial state per group. Nothing
 * leaves the node before the whole statement has been read, so a bad row anywhere applies
 * nothing. At commit the partials are grouped by target shard, one APPLY batch per shard,
 * and handed to the outbox (outbox.c), which logs them as one record and delivers them; the
 * statement returns as pipeline_cluster.insert_level says.
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
	 * dropped meanwhile is skipped (its rows have nowhere to go). Placements of a view never
	 * change while it exists. */
	tally_map *cur = tally_node_map(n);
	const tally_catalog *cat = cur->cat;
	tally_buf *bodies = tally_xcalloc((size_t)nbatches, sizeof *bodies);
	uint32_t *ngroups = tally_xcalloc((size_t)nbatches, sizeof *ngroups);
	int nsend = 0, rc = 0;
	for (int vi = 0; vi < g->nviews && rc == 0; vi++) {
		ingest_view *iv = &g->views[vi];
		const tally_view_info *v = iv->rt->info;
		const tally_view_plan *p = iv->rt->plan;
		uint32_t S = (uint32_t)v->num_shards;
		if (iv->groups.count == 0 || !tally_catalog_view_by_id(cat, v->id))
			continue;
		int vbase = nsend;
		for (uint32_t s = 0; s < S; s++) {
			ngroups[vbase + (int)s] = 0; /* an earlier view may have used the slot */
			/* origin and seq are filled in by the outbox */
			tally_msg_apply a = {.home_shard = s, .view_id = v->id, .target_shard = s};
			tally_msg_put_apply(&bodies[vbase + (int)s], &a);
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
			tally_group_put(&bodies[vbase + (int)s], grp->key, grp->keylen, p->aggs,
					p->naggs, grp->states);
			ngroups[vbase + (int)s]++;
		}
		/* keep only the shards that got groups, in place */
		for (uint32_t s = 0; s < S; s++) {
			int idx = vbase + (int)s;
			if (ngroups[idx] == 0) {
				tally_buf_free(&bodies[idx]);
				continue;
			}
			if (bodies[idx].len > TALLY_MSG_MAX - TALLY_MSG_HDR) {
				rc = tally_err_set(err, TALLY_SQLSTATE_PROGRAM_LIMIT,
						   "batch for shard %s_%u is larger than %u bytes",
						   v->name, s, TALLY_MSG_MAX);
				tally_err_hint(err, "Split the input into smaller statements.");
				break;
			}
			tally_put_be32(bodies[idx].data + TALLY_APPLY_NGROUPS_OFF, ngroups[idx]);
			if (idx != nsend) {
				bodies[nsend] = bodies[idx];
				bodies[idx] = (tally_buf){0};
			}
			nsend++;
		}
	}
	if (rc == 0 && nsend > 0)
		rc = tally_outbox_submit(
		    n, bodies, nsend, tally_insert_level_of(&g->settings),
		    (int)tally_settings_ms(&g->settings, TALLY_SET_RPC_TIMEOUT), err);
	for (int i = 0; i < nbatches; i++)
		tally_buf_free(&bodies[i]);
	free(bodies);
	free(ngroups);
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
