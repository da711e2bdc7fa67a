/*
 * exec.c - the executor of read queries over materialized rows (a view's merged result, a
 * system view). One pass filters rows with WHERE and either projects them or folds them into
 * groups (hash table on the canonical key encoding, aggregate slots from agg.h); then HAVING,
 * the projection of group rows, a sort on precomputed keys (qsort_r, ties broken by arrival
 * order so the result is deterministic) and LIMIT/OFFSET. The plan is only read: every byte
 * of per-execution state comes from the caller's arena (plus one scratch key buffer), so any
 * number of threads may execute the same plan at once.
 */
#include "sql_int.h"

#include <stdlib.h>
#include <xxhash.h>

/* ---- growable value arrays in an arena
 * ----------------------------------------------------------- */

typedef struct valvec {
	tally_value *v;
	size_t n, cap; /* in values */
} valvec;

static int vv_reserve(valvec *vv, size_t extra, tally_arena *a, tally_err *err)
{
	if (vv->v && vv->n + extra <= vv->cap) /* allocate once even for 0 (no NULL + 0 later) */
		return 0;
	size_t nc = vv->cap ? vv->cap * 2 : 256;
	while (nc < vv->n + extra)
		nc *= 2;
	tally_value *nv = tally_arena_alloc(a, sizeof *nv * nc);
	if (!nv)
		return tally_err_set(err, TALLY_SQLSTATE_OUT_OF_MEMORY,
				     "out of memory executing query");
	if (vv->n)
		memcpy(nv, vv->v, sizeof *nv * vv->n);
	vv->v = nv;
	vv->cap = nc;
	return 0;
}

/* ---- output collection
 * --------------------------------------------------------------------------- */

typedef struct collector {
	const tally_select_plan *p;
	tally_arena *a;
	tally_err *err;
	valvec outs; /* nrows * nout */
	valvec keys; /* nrows * nsort (only those not already outputs) */
	size_t nrows;
} collector;

/* Project one (post-aggregation or input) row; apply HAVING in aggregate mode. */
static int collect_row(collector *c, const tally_value *row)
{
	const tally_select_plan *p = c->p;
	if (p->agg && p->having) {
		int t = tally_expr_test(p->having, row, c->a, c->err);
		if (t < 0)
			return -1;
		if (t == 0)
			return 0;
	}
	if (vv_reserve(&c->outs, (size_t)p->nout, c->a, c->err) ||
	    vv_reserve(&c->keys, (size_t)p->nsort, c->a, c->err))
		return -1;
	tally_value *o = c->outs.v + c->outs.n;
	for (int i = 0; i < p->nout; i++)
		if (tally_expr_eval(p->outs[i], row, &o[i], c->a, c->err))
			return -1;
	tally_value *k = c->keys.v + c->keys.n;
	for (int i = 0; i < p->nsort; i++)
		if (tally_expr_eval(p->sort[i].e, row, &k[i], c->a, c->err))
			return -1;
	c->outs.n += (size_t)p->nout;
	c->keys.n += (size_t)p->nsort;
	c->nrows++;
	return 0;
}

/* ---- sorting
 * --------------------------------------------------------------------------------------- */

typedef struct sortctx {
	const tally_value *keys;
	const sql_sortkey *sk;
	int nsort;
} sortctx;

static int sort_cmp(const void *x, const void *y, void *arg)
{
	const sortctx *s = arg;
	size_t ia = *(const size_t *)x, ib = *(const size_t *)y;
	const tally_value *ka = s->keys + ia * (size_t)s->nsort;
	const tally_value *kb = s->keys + ib * (size_t)s->nsort;
	for (int i = 0; i < s->nsort; i++) {
		const tally_value *a = &ka[i], *b = &kb[i];
		int c;
		if (a->isnull || b->isnull) {
			if (a->isnull && b->isnull)
				continue;
			c = a->isnull ? 1 : -1; /* NULL sorts as larger */
			if (s->sk[i].nulls_first != s->sk[i].desc)
				c = -c;
		} else {
			c = tally_value_cmp(a, b);
		}
		if (s->sk[i].desc)
			c = -c;
		if (c)
			return c < 0 ? -1 : 1;
	}
	return ia < ib ? -1 : ia > ib ? 1 : 0;
}

/* ---- grouping
 * -------------------------------------------------------------------------------------- */

typedef struct group {
	uint64_t hash;
	const uint8_t *key;
	size_t keylen;
} group;

typedef struct groupset {
	group *g; /* ngroups entries */
	size_t n, cap;
	uint32_t *tab;	/* open addressing: index+1, 0 = empty */
	size_t tabsz;	/* power of two */
	valvec vals;	/* n * p->ngroups */
	uint8_t *slots; /* n * naggs * TALLY_AGG_SLOT */
	size_t slotcap; /* in groups */
} groupset;

static int gs_grow_table(groupset *gs, tally_arena *a, tally_err *err)
{
	size_t nsz = gs->tabsz ? gs->tabsz * 2 : 1024;
	uint32_t *nt = tally_arena_alloc(a, sizeof *nt * nsz);
	if (!nt)
		return tally_err_set(err, TALLY_SQLSTATE_OUT_OF_MEMORY,
				     "out of memory grouping rows");
	memset(nt, 0, sizeof *nt * nsz);
	for (size_t i = 0; i < gs->n; i++) {
		size_t h = (size_t)gs->g[i].hash & (nsz - 1);
		while (nt[h])
			h = (h + 1) & (nsz - 1);
		nt[h] = (uint32_t)(i + 1);
	}
	gs->tab = nt;
	gs->tabsz = nsz;
	return 0;
}

static void gs_release(const tally_select_plan *p, groupset *gs)
{
	for (size_t i = 0; i < gs->n; i++)
		for (int k = 0; k < p->naggs; k++)
			tally_agg_release(&p->aggs[k],
					  gs->slots +
					      (i * (size_t)p->naggs + (size_t)k) * TALLY_AGG_SLOT);
	gs->n = 0;
}

/* Find or add the group of vals (p->ngroups values) whose encoded key is key/keylen. */
static int gs_lookup(const tally_select_plan *p, groupset *gs, const tally_value *vals,
		     const uint8_t *key, size_t keylen, tally_arena *a, tally_err *err, size_t *out)
{
	if (!key)
		key = (const uint8_t *)"";
	uint64_t h = XXH3_64bits(key, keylen);
	if (gs->tabsz == 0 || (gs->n + 1) * 4 > gs->tabsz * 3) {
		if (gs_grow_table(gs, a, err))
			return -1;
	}
	size_t i = (size_t)h & (gs->tabsz - 1);
	while (gs->tab[i]) {
		const group *g = &gs->g[gs->tab[i] - 1];
		if (g->hash == h && g->keylen == keylen && memcmp(g->key, key, keylen) == 0) {
			*out = gs->tab[i] - 1;
			return 0;
		}
		i = (i + 1) & (gs->tabsz - 1);
	}
	if (gs->n >= UINT32_MAX - 1)
		return tally_err_set(err, TALLY_SQLSTATE_PROGRAM_LIMIT, "too many groups");
	if (gs->n == gs->cap) {
		size_t nc = gs->cap ? gs->cap * 2 : 64;
		group *ng = tally_arena_alloc(a, sizeof *ng * nc);
		size_t slotsz = (size_t)p->naggs * TALLY_AGG_SLOT;
		uint8_t *ns = slotsz ? tally_arena_alloc(a, slotsz * nc) : NULL;
		if (!ng || (slotsz && !ns))
			return tally_err_set(err, TALLY_SQLSTATE_OUT_OF_MEMORY,
					     "out of memory grouping rows");
		if (gs->n) {
			memcpy(ng, gs->g, sizeof *ng * gs->n);
			if (slotsz)
				memcpy(ns, gs->slots, slotsz * gs->n);
		}
		gs->g = ng;
		gs->slots = ns;
		gs->cap = nc;
	}
	if (vv_reserve(&gs->vals, (size_t)p->ngroups, a, err))
		return -1;
	size_t gi = gs->n;
	group *g = &gs->g[gi];
	g->hash = h;
	g->key = keylen ? tally_arena_memdup(a, key, keylen) : (const uint8_t *)"";
	g->keylen = keylen;
	if (!g->key)
		return tally_err_set(err, TALLY_SQLSTATE_OUT_OF_MEMORY,
				     "out of memory grouping rows");
	if (p->ngroups)
		memcpy(gs->vals.v + gs->vals.n, vals, sizeof *vals * (size_t)p->ngroups);
	gs->vals.n += (size_t)p->ngroups;
	for (int k = 0; k < p->naggs; k++)
		tally_agg_init(&p->aggs[k],
			       gs->slots + (gi * (size_t)p->naggs + (size_t)k) * TALLY_AGG_SLOT);
	gs->n++;
	gs->tab[i] = (uint32_t)(gi + 1);
	*out = gi;
	return 0;
}

static int exec_agg(const tally_select_plan *p, const tally_value *rows, size_t nrows, size_t ncol,
		    collector *c)
{
	tally_arena *a = c->a;
	tally_err *err = c->err;
	groupset gs;
	memset(&gs, 0, sizeof gs);
	tally_buf key = {0};
	int rc = -1;
	tally_value *gv = tally_arena_alloc(a, sizeof *gv * (size_t)(p->ngroups + 1));
	tally_value *aggrow =
	    tally_arena_alloc(a, sizeof *aggrow * (size_t)(p->ngroups + p->naggs + 1));
	if (!gv || !aggrow) {
		tally_err_set(err, TALLY_SQLSTATE_OUT_OF_MEMORY, "out of memory");
		goto out;
	}
	for (size_t r = 0; r < nrows; r++) {
		const tally_value *row = rows + r * ncol;
		if (p->where) {
			int t = tally_expr_test(p->where, row, a, err);
			if (t < 0)
				goto out;
			if (t == 0)
				continue;
		}
		tally_buf_reset(&key);
		for (int g = 0; g < p->ngroups; g++) {
			if (tally_expr_eval(p->groups[g], row, &gv[g], a, err))
				goto out;
			tally_key_encode(&gv[g], &key);
		}
		size_t gi;
		if (gs_lookup(p, &gs, gv, key.data ? key.data : (const uint8_t *)"", key.len, a,
			      err, &gi))
			goto out;
		for (int k = 0; k < p->naggs; k++) {
			void *slot =
			    gs.slots + (gi * (size_t)p->naggs + (size_t)k) * TALLY_AGG_SLOT;
			if (!p->agg_args[k]) {
				tally_agg_update(&p->aggs[k], slot, NULL);
				continue;
			}
			tally_value v;
			if (tally_expr_eval(p->agg_args[k], row, &v, a, err))
				goto out;
			tally_agg_update(&p->aggs[k], slot, &v);
		}
	}
	/* without GROUP BY an aggregate query returns one row even over no input */
	if (gs.n == 0 && p->ngroups == 0) {
		size_t gi;
		tally_buf_reset(&key);
		if (gs_lookup(p, &gs, gv, (const uint8_t *)"", 0, a, err, &gi))
			goto out;
	}
	for (size_t gi = 0; gi < gs.n; gi++) {
		if (p->ngroups)
			memcpy(aggrow, gs.vals.v + gi * (size_t)p->ngroups,
			       sizeof *aggrow * (size_t)p->ngroups);
		for (int k = 0; k < p->naggs; k++) {
			tally_value *v = &aggrow[p->ngroups + k];
			const void *slot =
			    gs.slots + (gi * (size_t)p->naggs + (size_t)k) * TALLY_AGG_SLOT;
			if (tally_agg_finalize(&p->aggs[k], slot, v, err))
				goto out;
			if (!v->isnull && (v->type == TALLY_T_TEXT || v->type == TALLY_T_UNKNOWN)) {
				/* text results point into the slot, which is released below */
				v->u.s.p = tally_arena_memdup(a, v->u.s.p ? v->u.s.p : "",
							      v->u.s.len ? v->u.s.len : 1);
			}
		}
		if (collect_row(c, aggrow))
			goto out;
	}
	rc = 0;
out:
	gs_release(p, &gs);
	tally_buf_free(&key);
	return rc;
}

int tally_select_exec(const tally_select_plan *p, const tally_value *rows, size_t nrows,
		      tally_arena *a, tally_value **out_rows, size_t *out_nrows, tally_err *err)
{
	collector c;
	memset(&c, 0, sizeof c);
	c.p = p;
	c.a = a;
	c.err = err;
	static const tally_value empty_row[1];
	size_t ncol = p->in_ncols < 0 ? 0 : (size_t)p->in_ncols;
	if (p->in_ncols < 0) {
		/* SELECT without FROM reads one empty row */
		rows = empty_row;
		nrows = 1;
	}
	if (p->agg) {
		if (exec_agg(p, rows, nrows, ncol, &c))
			return -1;
	} else {
		/* without ORDER BY we can stop once OFFSET + LIMIT rows are in */
		size_t stop = (size_t)-1;
		if (p->nsort == 0 && p->limit >= 0)
			stop = (size_t)p->limit + (size_t)p->offset;
		/* At most min(nrows, stop) rows come out: size the vectors once instead of
		 * doubling them through the arena. */
		size_t most = nrows < stop ? nrows : stop;
		if (vv_reserve(&c.outs, most * (size_t)p->nout, a, err) ||
		    vv_reserve(&c.keys, most * (size_t)p->nsort, a, err))
			return -1;
		for (size_t r = 0; r < nrows && c.nrows < stop; r++) {
			const tally_value *row = rows + r * ncol;
			if (p->where) {
				int t = tally_expr_test(p->where, row, a, err);
				if (t < 0)
					return -1;
				if (t == 0)
					continue;
			}
			if (collect_row(&c, row))
				return -1;
		}
	}
	size_t n = c.nrows;
	size_t *idx = tally_arena_alloc(a, sizeof *idx * (n ? n : 1));
	if (!idx)
		return tally_err_set(err, TALLY_SQLSTATE_OUT_OF_MEMORY, "out of memory");
	for (size_t i = 0; i < n; i++)
		idx[i] = i;
	if (p->nsort && n > 1) {
		sortctx s = {c.keys.v, p->sort, p->nsort};
		qsort_r(idx, n, sizeof *idx, sort_cmp, &s);
	}
	size_t start = (size_t)p->offset < n ? (size_t)p->offset : n;
	size_t end = n;
	if (p->limit >= 0 && (size_t)p->limit < end - start)
		end = start + (size_t)p->limit;
	size_t cnt = end - start;
	tally_value *res = tally_arena_alloc(a, sizeof *res * (cnt * (size_t)p->nout + 1));
	if (!res)
		return tally_err_set(err, TALLY_SQLSTATE_OUT_OF_MEMORY, "out of memory");
	for (size_t i = 0; i < cnt; i++)
		if (p->nout)
			memcpy(res + i * (size_t)p->nout,
			       c.outs.v + idx[start + i] * (size_t)p->nout,
			       sizeof *res * (size_t)p->nout);
	*out_rows = res;
	*out_nrows = cnt;
	return 0;
}

/* ---- equality pushdown
 * ----------------------------------------------------------------------------- */

/* Convert a constant to the column's type without an arena, only when exactly representable. */
static bool exact_convert(const tally_value *c, tally_type t, tally_value *out)
{
	if (c->type == t) {
		*out = *c;
		return true;
	}
	if (tally_type_is_int(t)) {
		int64_t i;
		if (tally_type_is_int((tally_type)c->type)) {
			i = c->u.i;
		} else if (tally_type_is_float((tally_type)c->type)) {
			double d = c->u.f;
			if (!(d >= -9.2233720368547758e18 && d < 9.2233720368547758e18) ||
			    d != (double)(int64_t)d)
				return false;
			i = (int64_t)d;
		} else {
			return false;
		}
		if ((t == TALLY_T_INT2 && (i < INT16_MIN || i > INT16_MAX)) ||
		    (t == TALLY_T_INT4 && (i < INT32_MIN || i > INT32_MAX)))
			return false;
		*out = tally_int(t, i);
		return true;
	}
	if (tally_type_is_float(t) &&
	    (tally_type_is_int((tally_type)c->type) || tally_type_is_float((tally_type)c->type))) {
		double d = tally_type_is_int((tally_type)c->type) ? (double)c->u.i : c->u.f;
		if (t == TALLY_T_FLOAT4)
			d = (float)d;
		*out = tally_float(t, d);
		return tally_value_cmp(out, c) == 0;
	}
	return false;
}

int tally_select_eq_const(const tally_select_plan *p, int col, tally_value *v)
{
	if (!p || !p->where)
		return 0;
	const tally_expr *w = p->where;
	int n = w->kind == X_AND ? w->nargs : 1;
	for (int i = 0; i < n; i++) {
		const tally_expr *e = w->kind == X_AND ? w->args[i] : w;
		if (e->kind != X_CMP || e->op != OP_EQ)
			continue;
		const tally_expr *l = e->args[0], *r = e->args[1];
		if (r->kind == X_COL && l->kind == X_CONST) {
			const tally_expr *t = l;
			l = r;
			r = t;
		}
		if (l->kind != X_COL || l->col != col || r->kind != X_CONST || r->val.isnull)
			continue;
		if (exact_convert(&r->val, l->type, v))
			return 1;
	}
	return 0;
}
