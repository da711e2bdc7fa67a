/*
 * read.c - the read path (DESIGN §8): a SELECT on a continuous view fans out one READ per
 * shard, in parallel, to one copy of each shard; the replies' partial states are merged per
 * group, finalized and handed back as rows of the view's columns for the session layer to
 * filter, sort and project. Also the pipeline_cluster.* system views.
 *
 * Copy choice (DESIGN §8): with pipeline_cluster.primary_only = off (the default) a shard is
 * read from a copy on this node if it has one, else its primary, else a replica; copies the
 * map shows down or this node suspects are passed over, and a copy that fails or does not
 * answer is replaced by the next one. A shard with no copy left fails the query with an error
 * naming it, unless pipeline_cluster.skip_unavailable is on: then it is skipped and a WARNING
 * names it. Replicas may lag their primary (asynchronous replication).
 */
#include "tally/node.h"
#include "tally/ring.h"
#include "node_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static int copy_text(tally_value *v, tally_arena *a)
{
	if (v->isnull || (v->type != TALLY_T_TEXT && v->type != TALLY_T_UNKNOWN))
		return 0;
	if (v->u.s.len == 0) {
		v->u.s.p = "";
		return 0;
	}
	char *p = tally_arena_memdup(a, v->u.s.p, v->u.s.len);
	if (!p)
		return -1;
	v->u.s.p = p;
	return 0;
}

int tally_read_pushdown_key(const tally_view_rt *v, const tally_select_plan *plan, tally_buf *out)
{
	const tally_view_plan *p = v->plan;
	if (!v->ok || p->ngroups == 0)
		return 0;
	tally_buf_reset(out);
	for (int k = 0; k < p->ngroups; k++) {
		int col = -1;
		for (int c = 0; c < p->nout && col < 0; c++)
			if (!p->out[c].is_agg && p->out[c].index == k)
				col = c;
		tally_value val;
		if (col < 0 || tally_select_eq_const(plan, col, &val) != 1)
			return 0;
		val.type = (uint8_t)p->group_types[k];
		tally_key_encode(&val, out);
	}
	return 1;
}

/* The copies of shard i in the order a reader tries them: with primary_only only the
 * primary; otherwise a copy on this node first, then the primary (it has every applied batch:
 * the least lagging), then the replicas starting at a rotating one (spreading load). */
static int copies_of(const tally_view_info *v, int i, uint32_t self, bool primary_only,
		     uint32_t rot, uint32_t *out)
{
	int n = 0, R = primary_only ? 0 : v->num_replicas;
	const uint32_t *rep = v->replicas + (size_t)i * (size_t)v->num_replicas;
	for (int r = 0; r < R; r++)
		if (self && rep[r] == self)
			out[n++] = self;
	if (!n || out[0] != v->primary[i])
		out[n++] = v->primary[i];
	for (int k = 0; k < R; k++) {
		uint32_t id = rep[(k + rot) % (uint32_t)R];
		if (n && id == out[0])
			continue;
		out[n++] = id;
	}
	return n;
}

typedef struct shard_read {
	int shard;
	uint32_t cand[TALLY_MAX_REPLICAS + 2];
	int ncand, next; /* next candidate to try */
	bool done;
	bool optional; /* asked only for hints it may hold (a key the shard does not own) */
	int behind;    /* candidate that refused as behind its primary (-1): asked again
			  without that condition once the primary did not answer either */
	bool plain;    /* this wave's call does not ask for a current copy */
	char why[300]; /* the last failure */
} shard_read;

int tally_read_view(tally_node *n, tally_map *m, const tally_view_rt *rt, const tally_settings *s,
		    const uint8_t *key, uint32_t keylen, tally_arena *a, tally_value **rows,
		    size_t *nrows, tally_err *warning, tally_err *err)
{
	if (!rt->ok)
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL, "%s", rt->error);
	const tally_view_info *v = rt->info;
	const tally_view_plan *p = rt->plan;
	const tally_catalog *cat = m->cat;
	bool skip = tally_settings_bool(s, TALLY_SET_SKIP_UNAVAILABLE);
	bool primary_only = tally_settings_bool(s, TALLY_SET_PRIMARY_ONLY);
	static uint32_t rotor; /* spreads reads over replicas; races only skew the spread */
	uint32_t rot = __atomic_fetch_add(&rotor, 1, __ATOMIC_RELAXED);
	int S = v->num_shards;
	/* A full group key of a read_optimized view lives in one shard; the others are asked
	 * for the key too, but only for hints of it they may hold while that shard's primary
	 * is or was down (DESIGN §5): if they cannot be read, nobody is told. */
	int only = -1;
	if (key && v->sharding_policy == TALLY_POLICY_READ_OPTIMIZED)
		only = (int)tally_ring_shard_of(tally_group_hash(key, keylen), (uint32_t)S);
	shard_read *sr = tally_xcalloc((size_t)S, sizeof *sr);
	int nsr = 0;
	for (int i = 0; i < S; i++) {
		shard_read *x = &sr[nsr++];
		x->shard = i;
		x->optional = only >= 0 && i != only;
		x->behind = -1;
		x->ncand = copies_of(v, i, tally_node_id(n), primary_only, rot, x->cand);
	}
	tally_rpc_call *calls = tally_xcalloc((size_t)S, sizeof *calls);
	int *of_call = tally_xcalloc((size_t)S, sizeof(int));
	int *cand_of_call = tally_xcalloc((size_t)S, sizeof(int));
	uint32_t *node_of_call = tally_xcalloc((size_t)S, sizeof(uint32_t));
	int rc = 0, ncalls = 0;
	tally_buf skipped = {0};
	int nskipped = 0;
	tally_gtab t;
	tally_gtab_init(&t, p->aggs, p->naggs, a);
	/* Waves: every shard not read yet asks its next reachable copy; a copy that fails or
	 * does not answer is replaced by the next one in the following wave. */
	for (int wave = 0; rc == 0; wave++) {
		ncalls = 0;
		bool fallback = true;
		for (int k = 0; k < nsr && rc == 0; k++) {
			shard_read *x = &sr[k];
			if (x->done)
				continue;
			const tally_node_info *pn = NULL;
			x->plain = false;
			while (x->next < x->ncand) {
				const tally_node_info *ni =
				    tally_catalog_node(cat, x->cand[x->next++]);
				if (tally_node_reachable(n, ni)) {
					pn = ni;
					break;
				}
				if (!x->why[0] || wave == 0)
					snprintf(x->why, sizeof x->why, "%s %s is %s",
						 ni && ni->id == v->primary[x->shard]
						     ? "its primary"
						     : "replica",
						 ni ? ni->name : "?",
						 ni && ni->state == TALLY_NODE_UP ? "not answering"
										  : "down");
			}
			int cand = x->next - 1;
			if (!pn && x->behind >= 0) {
				/* every other copy failed: a replica behind its primary is better
				 * than nothing (DESIGN §8: replicas may lag) */
				cand = x->behind;
				pn = tally_catalog_node(cat, x->cand[cand]);
				x->behind = -1;
				x->plain = true;
				if (!tally_node_reachable(n, pn))
					pn = NULL;
			}
			if (!pn) {
				x->done = true;
				if (x->optional)
					continue;
				if (!skip) {
					rc = tally_err_set(
					    err, TALLY_SQLSTATE_UNAVAILABLE,
					    "shard %s_%d is unavailable: %s%s", v->name, x->shard,
					    x->why,
					    primary_only
						? " (pipeline_cluster.primary_only is on)"
						: (x->ncand > 1 ? " and no other copy is reachable"
								: ""));
					tally_err_hint(err,
						       "SET pipeline_cluster.skip_unavailable = on "
						       "to read the other shards.");
					break;
				}
				tally_buf_printf(&skipped, "%s%s_%d", nskipped++ ? ", " : "",
						 v->name, x->shard);
				continue;
			}
			tally_rpc_call *c = &calls[ncalls];
			tally_buf req = c->req;
			memset(c, 0, sizeof *c);
			c->req = req;
			tally_msg_begin(&c->req, TALLY_MSG_READ, tally_node_next_req(n),
					cat->epoch);
			tally_msg_read r = {.view_id = v->id,
					    .shard = (uint32_t)x->shard,
					    .has_key = key != NULL,
					    .key = key,
					    .keylen = keylen};
			tally_msg_put_read(&c->req, &r);
			/* a replica read while its primary is reachable must be current (else the
			 * primary answers); with the primary gone, any copy will do */
			if (!x->plain && pn->id != v->primary[x->shard] &&
			    tally_node_reachable(n, tally_catalog_node(cat, v->primary[x->shard])))
				tally_put_be16(c->req.data + 4, TALLY_MSG_F_CURRENT);
			tally_msg_end(&c->req);
			c->addr = pn->data_addr;
			c->peer = pn->name;
			fallback &= x->next < x->ncand;
			node_of_call[ncalls] = pn->id;
			cand_of_call[ncalls] = cand;
			of_call[ncalls++] = k;
		}
		if (rc != 0 || ncalls == 0)
			break;
		/* When every shard of the wave has another copy to try, a copy that has not
		 * answered within failure_timeout is given up for the next one. */
		int timeout = (int)tally_settings_ms(s, TALLY_SET_RPC_TIMEOUT);
		int ft = (int)tally_settings_ms(s, TALLY_SET_FAILURE_TIMEOUT);
		tally_rpc_call_many(n->rpc, calls, ncalls, fallback && ft < timeout ? ft : timeout);
		for (int i = 0; i < ncalls && rc == 0; i++) {
			tally_rpc_call *c = &calls[i];
			shard_read *x = &sr[of_call[i]];
			tally_node_note_call(n, node_of_call[i], c);
			if (c->rc != 0 && !x->plain && strstr(c->errmsg, "is behind its primary"))
				x->behind = cand_of_call[i];
			if (c->rc != 0) {
				snprintf(x->why, sizeof x->why, "could not read it from %s: %s",
					 c->peer, c->errmsg);
				continue; /* the next copy, in the next wave */
			}
			x->done = true;
			uint32_t ng;
			if (c->hdr.type != TALLY_MSG_READ_OK || tally_rd_u32(&c->body, &ng) != 0) {
				rc = tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
						   "malformed reply from node %s", c->peer);
				break;
			}
			for (uint32_t k = 0; k < ng; k++) {
				int mr = tally_group_merge_encoded(&t, &c->body);
				if (mr != 0) {
					rc = mr == -2
						 ? tally_err_set(err, TALLY_SQLSTATE_OUT_OF_MEMORY,
								 "out of memory merging shard "
								 "%s_%d",
								 v->name, x->shard)
						 : tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
								 "malformed shard data from "
								 "node %s",
								 c->peer);
					break;
				}
			}
			if (rc == 0 && tally_msg_done(&c->body) != 0)
				rc = tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
						   "malformed shard data from node %s", c->peer);
		}
		tally_rpc_calls_done(calls, ncalls);
	}
	if (rc == 0) {
		size_t ncol = (size_t)p->nout;
		tally_value *out =
		    tally_arena_alloc(a, (t.count ? t.count : 1) * ncol * sizeof *out);
		tally_value *gv = tally_arena_alloc(a, (size_t)(p->ngroups + 1) * sizeof *gv);
		if (!out || !gv) {
			rc = tally_err_set(err, TALLY_SQLSTATE_OUT_OF_MEMORY,
					   "out of memory reading view %s", v->name);
		}
		size_t r = 0;
		for (size_t i = 0; rc == 0 && i < t.cap; i++) {
			tally_group *grp = t.slots[i].g;
			if (!grp)
				continue;
			tally_rd kr;
			tally_rd_init(&kr, grp->key, grp->keylen);
			for (int k = 0; k < p->ngroups; k++) {
				if (tally_key_decode(&kr, &gv[k]) != 0) {
					rc = tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
							   "malformed group key in view %s",
							   v->name);
					break;
				}
				gv[k].type = (uint8_t)p->group_types[k];
			}
			for (size_t c = 0; rc == 0 && c < ncol; c++) {
				const tally_view_out *o = &p->out[c];
				tally_value *dst = &out[r * ncol + c];
				if (!o->is_agg) {
					*dst = gv[o->index];
				} else if (tally_agg_finalize(&p->aggs[o->index],
							      grp->states +
								  (size_t)o->index * TALLY_AGG_SLOT,
							      dst, err) != 0) {
					rc = -1;
				}
				if (rc == 0 && copy_text(dst, a) != 0)
					rc = tally_err_set(err, TALLY_SQLSTATE_OUT_OF_MEMORY,
							   "out of memory");
			}
			r++;
		}
		*rows = out;
		*nrows = r;
	}
	tally_gtab_fini(&t);
	if (rc == 0 && nskipped && warning) {
		tally_err_set(warning, TALLY_SQLSTATE_UNAVAILABLE,
			      "skipped unavailable shards: %.*s", (int)skipped.len,
			      (const char *)skipped.data);
		warning->severity = TALLY_SEV_WARNING;
	}
	for (int i = 0; i < S; i++)
		tally_buf_free(&calls[i].req);
	tally_buf_free(&skipped);
	free(calls);
	free(of_call);
	free(cand_of_call);
	free(node_of_call);
	free(sr);
	return rc;
}

/* ---- system views ------------------------------------------------------------------------- */

static tally_value text_val(tally_arena *a, const char *s)
{
	size_t n = strlen(s);
	return tally_text(tally_arena_strndup(a, s, n), (uint32_t)n);
}

static void set_cols(tally_arena *a, tally_relation *rel, const char *name, int ncols,
		     const char *const *names, const tally_type *types)
{
	tally_column *c = tally_arena_alloc(a, (size_t)ncols * sizeof *c);
	for (int i = 0; i < ncols; i++) {
		memset(&c[i], 0, sizeof c[i]);
		tally_strlcpy(c[i].name, names[i], TALLY_NAME_MAX);
		c[i].type = types[i];
	}
	rel->name = name;
	rel->ncols = ncols;
	rel->cols = c;
}

static int64_t self_rss(void)
{
	FILE *f = fopen("/proc/self/statm", "r");
	long pages = 0, rss = 0;
	if (!f)
		return -1;
	if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
		rss = -1;
	fclose(f);
	return rss < 0 ? -1 : (int64_t)rss * sysconf(_SC_PAGESIZE);
}

static const char *policy_name(int p)
{
	return p == TALLY_POLICY_WRITE_OPTIMIZED ? "write_optimized" : "read_optimized";
}

/* One status row of a replica stream, as a primary node reported it. */
typedef struct repl_status {
	uint64_t view_id;
	uint32_t shard, primary, replica;
	const char *state;
	uint64_t prim, sent, applied, lag_records, lag_bytes, lag_ms, snapshots;
} repl_status;

/* Hints one node's copy holds for a home shard, as it reported them. */
typedef struct hint_status {
	uint64_t view_id;
	uint32_t node, shard, home, visible, in_doubt, handing_off;
	uint64_t bytes;
} hint_status;

typedef struct cluster_status {
	repl_status *st;
	size_t nst;
	hint_status *hs;
	size_t nhs;
	bool *answered; /* [cat->nnodes]: the node answered */
} cluster_status;

static void status_free(cluster_status *cs)
{
	free(cs->st);
	free(cs->hs);
	free(cs->answered);
}

/* Ask every reachable worker what its replication streams and hints are (in parallel). */
static void gather_status(tally_node *n, const tally_catalog *cat, tally_arena *a,
			  cluster_status *cs)
{
	memset(cs, 0, sizeof *cs);
	cs->answered = tally_xcalloc((size_t)cat->nnodes + 1, sizeof *cs->answered);
	tally_rpc_call *calls = tally_xcalloc((size_t)cat->nnodes + 1, sizeof *calls);
	int *node_of = tally_xcalloc((size_t)cat->nnodes + 1, sizeof *node_of);
	int ncalls = 0;
	for (int i = 0; i < cat->nnodes; i++) {
		const tally_node_info *ni = &cat->nodes[i];
		if (!tally_node_reachable(n, ni))
			continue;
		tally_rpc_call *c = &calls[ncalls];
		node_of[ncalls++] = i;
		tally_msg_begin(&c->req, TALLY_MSG_STATUS, tally_node_next_req(n), cat->epoch);
		tally_msg_end(&c->req);
		c->addr = ni->data_addr;
		c->peer = ni->name;
	}
	tally_rpc_call_many(n->rpc, calls, ncalls, 2000);
	size_t capst = 16, caphs = 16;
	cs->st = tally_xcalloc(capst, sizeof *cs->st);
	cs->hs = tally_xcalloc(caphs, sizeof *cs->hs);
	for (int i = 0; i < ncalls; i++) {
		tally_rpc_call *c = &calls[i];
		const tally_node_info *ni = &cat->nodes[node_of[i]];
		uint32_t k;
		if (c->rc != 0 || c->hdr.type != TALLY_MSG_STATUS_OK ||
		    tally_rd_u32(&c->body, &k) != 0)
			continue;
		bool ok = true;
		for (uint32_t j = 0; j < k && ok; j++) {
			repl_status x = {.primary = ni->id};
			const uint8_t *state;
			uint32_t statelen;
			ok = !(tally_rd_u64(&c->body, &x.view_id) ||
			       tally_rd_u32(&c->body, &x.shard) ||
			       tally_rd_u32(&c->body, &x.replica) ||
			       tally_rd_str(&c->body, &state, &statelen, 64) ||
			       tally_rd_u64(&c->body, &x.prim) || tally_rd_u64(&c->body, &x.sent) ||
			       tally_rd_u64(&c->body, &x.applied) ||
			       tally_rd_u64(&c->body, &x.lag_records) ||
			       tally_rd_u64(&c->body, &x.lag_bytes) ||
			       tally_rd_u64(&c->body, &x.lag_ms) ||
			       tally_rd_u64(&c->body, &x.snapshots));
			if (!ok)
				break;
			if (cs->nst == capst) {
				capst *= 2;
				cs->st = tally_xrealloc(cs->st, capst * sizeof *cs->st);
			}
			/* the state text points into the reply: copy it before the reply goes */
			x.state = tally_arena_strndup(a, (const char *)state, statelen);
			cs->st[cs->nst++] = x;
		}
		if (ok && tally_rd_u32(&c->body, &k) == 0) {
			for (uint32_t j = 0; j < k; j++) {
				hint_status h = {.node = ni->id};
				if (tally_rd_u64(&c->body, &h.view_id) ||
				    tally_rd_u32(&c->body, &h.shard) ||
				    tally_rd_u32(&c->body, &h.home) ||
				    tally_rd_u32(&c->body, &h.visible) ||
				    tally_rd_u32(&c->body, &h.in_doubt) ||
				    tally_rd_u32(&c->body, &h.handing_off) ||
				    tally_rd_u64(&c->body, &h.bytes)) {
					ok = false;
					break;
				}
				if (cs->nhs == caphs) {
					caphs *= 2;
					cs->hs = tally_xrealloc(cs->hs, caphs * sizeof *cs->hs);
				}
				cs->hs[cs->nhs++] = h;
			}
		}
		cs->answered[node_of[i]] = ok;
	}
	tally_rpc_calls_done(calls, ncalls);
	for (int i = 0; i < ncalls; i++)
		tally_buf_free(&calls[i].req);
	free(calls);
	free(node_of);
}

/* Does node's copy of (view, shard) hold hints? -1 if the node did not answer. */
static int holds_hints(const tally_catalog *cat, const cluster_status *cs, uint64_t view_id,
		       uint32_t shard, uint32_t node)
{
	for (int i = 0; i < cat->nnodes; i++)
		if (cat->nodes[i].id == node && !cs->answered[i])
			return -1;
	for (size_t k = 0; k < cs->nhs; k++)
		if (cs->hs[k].view_id == view_id && cs->hs[k].shard == shard &&
		    cs->hs[k].node == node)
			return 1;
	return 0;
}

/* pipeline_cluster.replication: one row per replica copy in the map, with what its primary's
 * node reports about the stream (asked now, in parallel); state 'unknown' when the primary's
 * node does not answer. */
static int sysview_replication(tally_node *n, const tally_catalog *cat, tally_arena *a,
			       tally_relation *rel, tally_value **rows, size_t *nrows)
{
	static const char *const names[] = {
	    "continuous_view", "shard",	      "shard_id",    "primary",	    "replica",
	    "state",	       "primary_lsn", "sent_lsn",    "applied_lsn", "lag_records",
	    "lag_bytes",       "lag_ms",      "replication", "snapshots"};
	static const tally_type types[] = {TALLY_T_TEXT, TALLY_T_TEXT, TALLY_T_INT2, TALLY_T_TEXT,
					   TALLY_T_TEXT, TALLY_T_TEXT, TALLY_T_INT8, TALLY_T_INT8,
					   TALLY_T_INT8, TALLY_T_INT8, TALLY_T_INT8, TALLY_T_INT8,
					   TALLY_T_TEXT, TALLY_T_INT8};
	const int nc = 14;
	set_cols(a, rel, "replication", nc, names, types);
	cluster_status cs;
	gather_status(n, cat, a, &cs);
	repl_status *st = cs.st;
	size_t nst = cs.nst;
	size_t total = 0;
	for (int i = 0; i < cat->nviews; i++)
		total += (size_t)cat->views[i].num_shards * (size_t)cat->views[i].num_replicas;
	tally_value *out = tally_arena_alloc(a, (total ? total : 1) * nc * sizeof *out);
	size_t r = 0;
	for (int i = 0; i < cat->nviews; i++) {
		const tally_view_info *v = &cat->views[i];
		for (int s = 0; s < v->num_shards; s++) {
			for (int c = 0; c < v->num_replicas; c++) {
				uint32_t rid = v->replicas[s * v->num_replicas + c];
				const tally_node_info *pn = tally_catalog_node(cat, v->primary[s]);
				const tally_node_info *rn = tally_catalog_node(cat, rid);
				const repl_status *x = NULL;
				for (size_t k = 0; k < nst && !x; k++)
					if (st[k].view_id == v->id && st[k].shard == (uint32_t)s &&
					    st[k].replica == rid && st[k].primary == v->primary[s])
						x = &st[k];
				char sh[TALLY_NAME_MAX + 16];
				snprintf(sh, sizeof sh, "%s_%d", v->name, s);
				tally_value *row = &out[r * nc];
				row[0] = text_val(a, v->name);
				row[1] = text_val(a, sh);
				row[2] = tally_int(TALLY_T_INT2, s);
				row[3] = text_val(a, pn ? pn->name : "?");
				row[4] = text_val(a, rn ? rn->name : "?");
				row[5] = text_val(a, x ? x->state : "unknown");
				if (x) {
					row[6] = tally_int(TALLY_T_INT8, (int64_t)x->prim);
					row[7] = tally_int(TALLY_T_INT8, (int64_t)x->sent);
					row[8] = tally_int(TALLY_T_INT8, (int64_t)x->applied);
					row[9] = tally_int(TALLY_T_INT8, (int64_t)x->lag_records);
					row[10] = tally_int(TALLY_T_INT8, (int64_t)x->lag_bytes);
					row[11] = tally_int(TALLY_T_INT8, (int64_t)x->lag_ms);
					row[13] = tally_int(TALLY_T_INT8, (int64_t)x->snapshots);
				} else {
					for (int k = 6; k <= 11; k++)
						row[k] = tally_null(TALLY_T_INT8);
					row[13] = tally_null(TALLY_T_INT8);
				}
				row[12] =
				    text_val(a, v->replication == TALLY_REPL_SYNC     ? "sync"
						: v->replication == TALLY_REPL_QUORUM ? "quorum"
										      : "async");
				r++;
			}
		}
	}
	status_free(&cs);
	*rows = out;
	*nrows = r;
	return 1;
}

/* pipeline_cluster.hints: the hints each reachable node's copies hold, per home shard. */
static int sysview_hints(tally_node *n, const tally_catalog *cat, tally_arena *a,
			 tally_relation *rel, tally_value **rows, size_t *nrows)
{
	static const char *const names[] = {"continuous_view", "shard",	  "owner",
					    "home_shard",      "visible", "in_doubt",
					    "handing_off",     "bytes"};
	static const tally_type types[] = {TALLY_T_TEXT, TALLY_T_TEXT, TALLY_T_TEXT, TALLY_T_TEXT,
					   TALLY_T_INT8, TALLY_T_INT8, TALLY_T_INT8, TALLY_T_INT8};
	const int nc = 8;
	set_cols(a, rel, "hints", nc, names, types);
	cluster_status cs;
	gather_status(n, cat, a, &cs);
	tally_value *out = tally_arena_alloc(a, (cs.nhs ? cs.nhs : 1) * nc * sizeof *out);
	size_t r = 0;
	for (size_t k = 0; k < cs.nhs; k++) {
		const hint_status *h = &cs.hs[k];
		const tally_view_info *v = tally_catalog_view_by_id(cat, h->view_id);
		const tally_node_info *ni = tally_catalog_node(cat, h->node);
		if (!v || !ni)
			continue;
		char sh[TALLY_NAME_MAX + 16], home[TALLY_NAME_MAX + 16];
		snprintf(sh, sizeof sh, "%s_%u", v->name, h->shard);
		snprintf(home, sizeof home, "%s_%u", v->name, h->home);
		tally_value *row = &out[r++ * nc];
		row[0] = text_val(a, v->name);
		row[1] = text_val(a, sh);
		row[2] = text_val(a, ni->name);
		row[3] = text_val(a, home);
		row[4] = tally_int(TALLY_T_INT8, h->visible);
		row[5] = tally_int(TALLY_T_INT8, h->in_doubt);
		row[6] = tally_int(TALLY_T_INT8, h->handing_off);
		row[7] = tally_int(TALLY_T_INT8, (int64_t)h->bytes);
	}
	status_free(&cs);
	*rows = out;
	*nrows = r;
	return 1;
}

int tally_sysview(tally_node *n, tally_map *m, const char *name, tally_arena *a,
		  tally_relation *rel, tally_value **rows, size_t *nrows, tally_err *err)
{
	const tally_catalog *cat = m->cat;
	if (strcmp(name, "pipeline_cluster.shards") == 0) {
		static const char *const names[] = {
		    "shard",	       "owner",	   "continuous_view", "shard_id",  "shard_type",
		    "sharding_policy", "is_local", "balanced",	      "reachable", "owner_id"};
		static const tally_type types[] = {
		    TALLY_T_TEXT, TALLY_T_TEXT, TALLY_T_TEXT, TALLY_T_INT2, TALLY_T_TEXT,
		    TALLY_T_TEXT, TALLY_T_BOOL, TALLY_T_BOOL, TALLY_T_BOOL, TALLY_T_INT4};
		const int nc = 10;
		set_cols(a, rel, "shards", nc, names, types);
		/* balanced: a read_optimized copy holding hints for other shards is not */
		cluster_status cs;
		gather_status(n, cat, a, &cs);
		size_t total = 0;
		for (int i = 0; i < cat->nviews; i++)
			total += (size_t)cat->views[i].num_shards *
				 (size_t)(1 + cat->views[i].num_replicas);
		tally_value *out = tally_arena_alloc(a, (total ? total : 1) * nc * sizeof *out);
		size_t r = 0;
		for (int i = 0; i < cat->nviews; i++) {
			const tally_view_info *v = &cat->views[i];
			for (int s = 0; s < v->num_shards; s++) {
				for (int c = 0; c <= v->num_replicas; c++) {
					uint32_t id =
					    c == 0 ? v->primary[s]
						   : v->replicas[s * v->num_replicas + c - 1];
					const tally_node_info *ni = tally_catalog_node(cat, id);
					char sh[TALLY_NAME_MAX + 16];
					snprintf(sh, sizeof sh, "%s_%d", v->name, s);
					tally_value *row = &out[r * nc];
					row[0] = text_val(a, sh);
					row[1] = text_val(a, ni ? ni->name : "?");
					row[2] = text_val(a, v->name);
					row[3] = tally_int(TALLY_T_INT2, s);
					row[4] = text_val(a, c == 0 ? "primary" : "replica");
					row[5] = text_val(a, policy_name(v->sharding_policy));
					row[6] = tally_bool(tally_node_id(n) != 0 &&
							    id == tally_node_id(n));
					int hh = v->sharding_policy == TALLY_POLICY_READ_OPTIMIZED
						     ? holds_hints(cat, &cs, v->id, (uint32_t)s, id)
						     : 0;
					row[7] =
					    hh < 0 ? tally_null(TALLY_T_BOOL) : tally_bool(hh == 0);
					row[8] = tally_bool(tally_node_reachable(n, ni));
					row[9] = tally_int(TALLY_T_INT4, id);
					r++;
				}
			}
		}
		status_free(&cs);
		*rows = out;
		*nrows = r;
		return 1;
	}
	if (strcmp(name, "pipeline_cluster.nodes") == 0) {
		static const char *const names[] = {"name",	   "role",	     "node_id",
						    "state",	   "sql_addr",	     "data_addr",
						    "incarnation", "last_heartbeat", "primaries",
						    "replicas",	   "memory_bytes",   "reachable"};
		static const tally_type types[] = {TALLY_T_TEXT, TALLY_T_TEXT,	      TALLY_T_INT4,
						   TALLY_T_TEXT, TALLY_T_TEXT,	      TALLY_T_TEXT,
						   TALLY_T_INT8, TALLY_T_TIMESTAMPTZ, TALLY_T_INT4,
						   TALLY_T_INT4, TALLY_T_INT8,	      TALLY_T_BOOL};
		const int nc = 12;
		set_cols(a, rel, "nodes", nc, names, types);
		tally_value *out =
		    tally_arena_alloc(a, (size_t)(cat->nnodes + 1) * nc * sizeof *out);
		/* the coordinator first */
		tally_value *row = out;
		bool self_coord = n->cfg.role == TALLY_ROLE_COORDINATOR;
		row[0] = text_val(a, "coordinator");
		row[1] = text_val(a, "coordinator");
		row[2] = tally_int(TALLY_T_INT4, 0);
		row[3] = text_val(a, "up");
		if (self_coord) {
			char sql[96];
			snprintf(sql, sizeof sql, "%s:%d", n->cfg.host,
				 tally_pg_server_port(n->pg));
			row[4] = text_val(a, sql);
			row[5] = text_val(a, tally_rpc_server_addr(n->rpcsrv));
			row[6] = tally_int(TALLY_T_INT8, (int64_t)n->incarnation);
		} else {
			row[4] = tally_null(TALLY_T_TEXT);
			row[5] = text_val(a, n->cfg.coordinator_addr);
			row[6] = tally_null(TALLY_T_INT8);
		}
		row[7] = tally_null(TALLY_T_TIMESTAMPTZ);
		row[8] = tally_int(TALLY_T_INT4, 0);
		row[9] = tally_int(TALLY_T_INT4, 0);
		row[11] = tally_bool(true);
		row[10] =
		    self_coord ? tally_int(TALLY_T_INT8, self_rss()) : tally_null(TALLY_T_INT8);
		for (int i = 0; i < cat->nnodes; i++) {
			const tally_node_info *ni = &cat->nodes[i];
			row = &out[(size_t)(i + 1) * nc];
			int prim = 0, repl = 0;
			for (int k = 0; k < cat->nviews; k++) {
				const tally_view_info *v = &cat->views[k];
				for (int s = 0; s < v->num_shards; s++) {
					prim += v->primary[s] == ni->id;
					for (int c = 0; c < v->num_replicas; c++)
						repl +=
						    v->replicas[s * v->num_replicas + c] == ni->id;
				}
			}
			row[0] = text_val(a, ni->name);
			row[1] = text_val(a, "worker");
			row[2] = tally_int(TALLY_T_INT4, ni->id);
			row[3] = text_val(a, ni->state == TALLY_NODE_UP ? "up" : "down");
			row[4] = text_val(a, ni->sql_addr);
			row[5] = text_val(a, ni->data_addr);
			row[6] = tally_int(TALLY_T_INT8, (int64_t)ni->incarnation);
			row[7] = ni->last_heartbeat_us
				     ? tally_int(TALLY_T_TIMESTAMPTZ, ni->last_heartbeat_us)
				     : tally_null(TALLY_T_TIMESTAMPTZ);
			row[8] = tally_int(TALLY_T_INT4, prim);
			row[9] = tally_int(TALLY_T_INT4, repl);
			row[10] = ni->id == tally_node_id(n) ? tally_int(TALLY_T_INT8, self_rss())
							     : tally_null(TALLY_T_INT8);
			row[11] =
			    tally_bool(ni->id == tally_node_id(n) || tally_node_reachable(n, ni));
		}
		*rows = out;
		*nrows = (size_t)cat->nnodes + 1;
		return 1;
	}
	if (strcmp(name, "pipeline_cluster.replication") == 0)
		return sysview_replication(n, cat, a, rel, rows, nrows);
	if (strcmp(name, "pipeline_cluster.hints") == 0)
		return sysview_hints(n, cat, a, rel, rows, nrows);
	if (strcmp(name, "pipeline_cluster.views") == 0) {
		static const char *const names[] = {"name",	    "stream",	       "num_shards",
						    "num_replicas", "sharding_policy", "query",
						    "id",	    "replication"};
		static const tally_type types[] = {TALLY_T_TEXT, TALLY_T_TEXT, TALLY_T_INT4,
						   TALLY_T_INT4, TALLY_T_TEXT, TALLY_T_TEXT,
						   TALLY_T_INT8, TALLY_T_TEXT};
		const int nc = 8;
		set_cols(a, rel, "views", nc, names, types);
		tally_value *out =
		    tally_arena_alloc(a, (size_t)(cat->nviews + 1) * nc * sizeof *out);
		for (int i = 0; i < cat->nviews; i++) {
			const tally_view_info *v = &cat->views[i];
			tally_value *row = &out[(size_t)i * nc];
			row[0] = text_val(a, v->name);
			row[1] = text_val(a, v->stream);
			row[2] = tally_int(TALLY_T_INT4, v->num_shards);
			row[3] = tally_int(TALLY_T_INT4, v->num_replicas);
			row[4] = text_val(a, policy_name(v->sharding_policy));
			row[5] = text_val(a, v->query_text);
			row[6] = tally_int(TALLY_T_INT8, (int64_t)v->id);
			row[7] = text_val(a, v->replication == TALLY_REPL_SYNC	   ? "sync"
					     : v->replication == TALLY_REPL_QUORUM ? "quorum"
										   : "async");
		}
		*rows = out;
		*nrows = (size_t)cat->nviews;
		return 1;
	}
	if (strcmp(name, "pipeline_cluster.streams") == 0) {
		static const char *const names[] = {"name", "columns"};
		static const tally_type types[] = {TALLY_T_TEXT, TALLY_T_TEXT};
		const int nc = 2;
		set_cols(a, rel, "streams", nc, names, types);
		tally_value *out =
		    tally_arena_alloc(a, (size_t)(cat->nstreams + 1) * nc * sizeof *out);
		for (int i = 0; i < cat->nstreams; i++) {
			const tally_stream_info *st = &cat->streams[i];
			tally_buf b = {0};
			for (int c = 0; c < st->ncols; c++)
				tally_buf_printf(&b, "%s%s %s", c ? ", " : "", st->cols[c].name,
						 tally_type_name(st->cols[c].type));
			tally_buf_putc(&b, 0);
			out[(size_t)i * nc] = text_val(a, st->name);
			out[(size_t)i * nc + 1] = text_val(a, (const char *)b.data);
			tally_buf_free(&b);
		}
		*rows = out;
		*nrows = (size_t)cat->nstreams;
		return 1;
	}
	if (strcmp(name, "pipeline_cluster.outbox") == 0) {
		/* this node's undelivered batches, per destination shard */
		static const char *const names[] = {"node",  "shard",  "owner",	  "batches",
						    "bytes", "oldest", "attempts"};
		static const tally_type types[] = {TALLY_T_TEXT, TALLY_T_TEXT, TALLY_T_TEXT,
						   TALLY_T_INT8, TALLY_T_INT8, TALLY_T_TIMESTAMPTZ,
						   TALLY_T_INT4};
		const int nc = 7;
		set_cols(a, rel, "outbox", nc, names, types);
		tally_outbox_row *ob;
		size_t nr = tally_outbox_rows(n, &ob);
		tally_value *out = tally_arena_alloc(a, (nr + 1) * nc * sizeof *out);
		for (size_t i = 0; i < nr; i++) {
			tally_value *row = &out[i * nc];
			const tally_view_info *v = tally_catalog_view_by_id(cat, ob[i].view_id);
			char sh[TALLY_NAME_MAX + 32];
			if (v)
				snprintf(sh, sizeof sh, "%s_%u", v->name, ob[i].shard);
			else
				snprintf(sh, sizeof sh, "view %llu shard %u",
					 (unsigned long long)ob[i].view_id, ob[i].shard);
			const tally_node_info *pn =
			    v && ob[i].shard < (uint32_t)v->num_shards
				? tally_catalog_node(cat, v->primary[ob[i].shard])
				: NULL;
			row[0] = text_val(a, n->cfg.name);
			row[1] = text_val(a, sh);
			row[2] = pn ? text_val(a, pn->name) : tally_null(TALLY_T_TEXT);
			row[3] = tally_int(TALLY_T_INT8, (int64_t)ob[i].batches);
			row[4] = tally_int(TALLY_T_INT8, (int64_t)ob[i].bytes);
			row[5] = tally_int(TALLY_T_TIMESTAMPTZ, ob[i].oldest_us);
			row[6] = tally_int(TALLY_T_INT4, (int32_t)ob[i].attempts);
		}
		free(ob);
		*rows = out;
		*nrows = nr;
		return 1;
	}
	if (strcmp(name, "pipeline_cluster.wal") == 0) {
		/* this node's write-ahead log, checkpoints and outbox */
		static const char *const names[] = {
		    "node",	   "log_id",	       "insert_lsn",	  "flushed_lsn",
		    "redo_lsn",	   "segments",	       "disk_bytes",	  "writes",
		    "fsyncs",	   "checkpoints",      "last_checkpoint", "last_checkpoint_ms",
		    "recovery_ms", "recovery_records", "outbox_batches",  "outbox_bytes",
		    "delivered",   "resends"};
		static const tally_type types[] = {
		    TALLY_T_TEXT,	 TALLY_T_TEXT, TALLY_T_INT8, TALLY_T_INT8, TALLY_T_INT8,
		    TALLY_T_INT8,	 TALLY_T_INT8, TALLY_T_INT8, TALLY_T_INT8, TALLY_T_INT8,
		    TALLY_T_TIMESTAMPTZ, TALLY_T_INT8, TALLY_T_INT8, TALLY_T_INT8, TALLY_T_INT8,
		    TALLY_T_INT8,	 TALLY_T_INT8, TALLY_T_INT8};
		const int nc = 18;
		set_cols(a, rel, "wal", nc, names, types);
		tally_value *row = tally_arena_alloc(a, nc * sizeof *row);
		tally_wal_stats ws;
		tally_wal_stats_get(n->wal, &ws);
		uint64_t ob, obb, dl, rs;
		tally_outbox_totals(n->outbox, &ob, &obb, &dl, &rs);
		char id[24];
		snprintf(id, sizeof id, "%016llx", (unsigned long long)n->log_id);
		pthread_mutex_lock(&n->ckpt_mu);
		uint64_t redo = n->ckpt_redo, ncp = n->ckpt_count;
		int64_t last = n->ckpt_last_us, last_ms = n->ckpt_last_ms;
		pthread_mutex_unlock(&n->ckpt_mu);
		row[0] = text_val(a, n->cfg.name);
		row[1] = text_val(a, id);
		row[2] = tally_int(TALLY_T_INT8, (int64_t)ws.insert_lsn);
		row[3] = tally_int(TALLY_T_INT8, (int64_t)ws.flushed_lsn);
		row[4] = tally_int(TALLY_T_INT8, (int64_t)redo);
		row[5] = tally_int(TALLY_T_INT8, (int64_t)ws.segments);
		row[6] = tally_int(TALLY_T_INT8, (int64_t)ws.disk_bytes);
		row[7] = tally_int(TALLY_T_INT8, (int64_t)ws.writes);
		row[8] = tally_int(TALLY_T_INT8, (int64_t)ws.fsyncs);
		row[9] = tally_int(TALLY_T_INT8, (int64_t)ncp);
		row[10] =
		    last ? tally_int(TALLY_T_TIMESTAMPTZ, last) : tally_null(TALLY_T_TIMESTAMPTZ);
		row[11] = last ? tally_int(TALLY_T_INT8, last_ms) : tally_null(TALLY_T_INT8);
		row[12] = tally_int(TALLY_T_INT8, n->recovery_ms);
		row[13] = tally_int(TALLY_T_INT8, (int64_t)n->recovery_records);
		row[14] = tally_int(TALLY_T_INT8, (int64_t)ob);
		row[15] = tally_int(TALLY_T_INT8, (int64_t)obb);
		row[16] = tally_int(TALLY_T_INT8, (int64_t)dl);
		row[17] = tally_int(TALLY_T_INT8, (int64_t)rs);
		*rows = row;
		*nrows = 1;
		return 1;
	}
	(void)err;
	return 0;
}
