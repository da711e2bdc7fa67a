/*
 * map.c - the cluster map as one node knows it: an immutable snapshot of the catalog with
 * every continuous view analyzed against its stream, shared by reference between sessions.
 * A new epoch builds a new snapshot; the old one lives until its last reader lets go.
 */
#include "tally/node.h"

#include <stdio.h>
#include <stdlib.h>

static int stream_relation(const tally_stream_info *s, tally_arena *a, tally_relation *out,
			   tally_column **cols_out)
{
	tally_column *cols = tally_arena_alloc(a, (size_t)(s->ncols + 1) * sizeof *cols);
	if (!cols)
		return -1;
	memcpy(cols, s->cols, (size_t)s->ncols * sizeof *cols);
	memset(&cols[s->ncols], 0, sizeof cols[0]);
	tally_strlcpy(cols[s->ncols].name, "arrival_timestamp", TALLY_NAME_MAX);
	cols[s->ncols].type = TALLY_T_TIMESTAMPTZ;
	out->name = s->name;
	out->ncols = s->ncols + 1;
	out->cols = cols;
	if (cols_out)
		*cols_out = cols;
	return 0;
}

static void view_build(tally_view_rt *rt, const tally_catalog *cat, const tally_view_info *v,
		       tally_arena *a)
{
	memset(rt, 0, sizeof *rt);
	rt->info = v;
	rt->stream = tally_catalog_stream(cat, v->stream);
	if (!rt->stream) {
		snprintf(rt->error, sizeof rt->error, "stream \"%s\" of view \"%s\" is missing",
			 v->stream, v->name);
		return;
	}
	stream_relation(rt->stream, a, &rt->stream_rel, &rt->stream_cols);
	tally_err err;
	tally_err_clear(&err);
	tally_stmt *st;
	int nst;
	if (tally_sql_parse(v->query_text, a, &st, &nst, &err) != 0 || nst < 1 ||
	    st[0].kind != TALLY_STMT_SELECT ||
	    tally_view_analyze(st[0].u.select.query, &rt->stream_rel, a, &rt->plan, &err) != 0) {
		snprintf(rt->error, sizeof rt->error, "view \"%s\" cannot be analyzed here: %s",
			 v->name, err.message[0] ? err.message : "not a SELECT");
		return;
	}
	rt->out_cols = tally_arena_alloc(a, (size_t)rt->plan->nout * sizeof *rt->out_cols);
	for (int i = 0; i < rt->plan->nout; i++) {
		memset(&rt->out_cols[i], 0, sizeof rt->out_cols[i]);
		tally_strlcpy(rt->out_cols[i].name, rt->plan->out[i].name, TALLY_NAME_MAX);
		rt->out_cols[i].type = rt->plan->out[i].type;
	}
	rt->out_rel.name = v->name;
	rt->out_rel.ncols = rt->plan->nout;
	rt->out_rel.cols = rt->out_cols;
	rt->ok = true;
}

tally_map *tally_map_build(tally_catalog *cat)
{
	tally_map *m = tally_xcalloc(1, sizeof *m);
	m->refs = 1;
	m->cat = cat;
	m->views = tally_xcalloc((size_t)(cat->nviews ? cat->nviews : 1), sizeof *m->views);
	for (int i = 0; i < cat->nviews; i++) {
		view_build(&m->views[i], cat, &cat->views[i], &m->arena);
		if (!m->views[i].ok)
			tally_log_warn("%s", m->views[i].error);
	}
	return m;
}

void tally_map_put(tally_map *m)
{
	if (!m)
		return;
	if (__atomic_sub_fetch(&m->refs, 1, __ATOMIC_ACQ_REL) != 0)
		return;
	tally_catalog_free(m->cat);
	free(m->views);
	tally_arena_free(&m->arena);
	free(m);
}

const tally_view_rt *tally_map_view(const tally_map *m, const char *name)
{
	for (int i = 0; i < m->cat->nviews; i++)
		if (strcmp(m->cat->views[i].name, name) == 0)
			return &m->views[i];
	return NULL;
}

const tally_view_rt *tally_map_view_by_id(const tally_map *m, uint64_t id)
{
	for (int i = 0; i < m->cat->nviews; i++)
		if (m->cat->views[i].id == id)
			return &m->views[i];
	return NULL;
}

int tally_map_stream_rel(const tally_map *m, const char *name, tally_arena *a, tally_relation *out)
{
	const tally_stream_info *s = tally_catalog_stream(m->cat, name);
	if (!s)
		return -1;
	return stream_relation(s, a, out, NULL);
}
