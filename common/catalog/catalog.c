/*
 * catalog.c - the cluster map as a value: its binary encoding (what the coordinator persists
 * and publishes), validation on decode, deep copies, lookups, and the mutators the coordinator
 * applies to its private copy before publishing a new epoch.
 *
 * Encoding, all integers big-endian, strings as u32 length + bytes (no NUL):
 *
 *   u32 magic "TLCT" | u32 version (2) | u64 epoch | u64 next_id
 *   u32 nnodes,   per node:   u32 id, str name, str data_addr, str sql_addr, u8 state,
 *                             u64 incarnation, i64 last_heartbeat_us
 *   u32 nstreams, per stream: u64 id, str name, u32 ncols, per column: str name, u8 type
 *   u32 nviews,   per view:   u64 id, str name, str stream, str query_text, u32 num_shards,
 *                             u32 num_replicas, u8 sharding_policy, u8 replication,
 *                             u32 primary[num_shards], u32 replicas[num_shards * num_replicas]
 *
 * Version 1 is the same without the replication byte; it still decodes (as async), so a data
 * directory written before views had a replication mode loads.
 *
 * The decoder bounds every count before allocating (also by the bytes left, so a short blob
 * cannot make it allocate much), and rejects duplicate names or node ids, unknown enum
 * values, placements naming nodes absent from the catalog, and trailing bytes.
 */
#include "tally/catalog.h"

#include <stdlib.h>

#include "tally/ring.h"

#define CATALOG_MAGIC 0x544C4354u /* "TLCT" */
#define CATALOG_VERSION 2
#define CATALOG_VERSION_V1 1 /* no replication byte */
#define CATALOG_MAX_NODES 1024
#define CATALOG_MAX_RELS 100000
#define CATALOG_MAX_QUERY (1u << 20)

/* Smallest encodings, used to bound counts by the bytes left. */
#define NODE_MIN_BYTES (4 + 4 + 4 + 4 + 1 + 8 + 8)
#define STREAM_MIN_BYTES (8 + 4 + 4)
#define COLUMN_MIN_BYTES (4 + 1)
#define VIEW_MIN_BYTES (8 + 4 + 4 + 4 + 4 + 4 + 1 + 4)

/* ---- encoding ----------------------------------------------------------------------------- */

static void cat_put_name(tally_buf *b, const char *s, size_t max)
{
	tally_buf_put_str(b, s, (uint32_t)strnlen(s, max - 1));
}

void tally_catalog_encode(const tally_catalog *c, tally_buf *b)
{
	tally_buf_put_u32(b, CATALOG_MAGIC);
	tally_buf_put_u32(b, CATALOG_VERSION);
	tally_buf_put_u64(b, c->epoch);
	tally_buf_put_u64(b, c->next_id);
	tally_buf_put_u32(b, (uint32_t)c->nnodes);
	for (int i = 0; i < c->nnodes; i++) {
		const tally_node_info *n = &c->nodes[i];
		tally_buf_put_u32(b, n->id);
		cat_put_name(b, n->name, sizeof n->name);
		cat_put_name(b, n->data_addr, sizeof n->data_addr);
		cat_put_name(b, n->sql_addr, sizeof n->sql_addr);
		tally_buf_putc(b, n->state);
		tally_buf_put_u64(b, n->incarnation);
		tally_buf_put_u64(b, (uint64_t)n->last_heartbeat_us);
	}
	tally_buf_put_u32(b, (uint32_t)c->nstreams);
	for (int i = 0; i < c->nstreams; i++) {
		const tally_stream_info *s = &c->streams[i];
		tally_buf_put_u64(b, s->id);
		cat_put_name(b, s->name, sizeof s->name);
		tally_buf_put_u32(b, (uint32_t)s->ncols);
		for (int k = 0; k < s->ncols; k++) {
			cat_put_name(b, s->cols[k].name, sizeof s->cols[k].name);
			tally_buf_putc(b, (uint8_t)s->cols[k].type);
		}
	}
	tally_buf_put_u32(b, (uint32_t)c->nviews);
	for (int i = 0; i < c->nviews; i++) {
		const tally_view_info *v = &c->views[i];
		const char *q = v->query_text ? v->query_text : "";
		tally_buf_put_u64(b, v->id);
		cat_put_name(b, v->name, sizeof v->name);
		cat_put_name(b, v->stream, sizeof v->stream);
		tally_buf_put_str(b, q, (uint32_t)strlen(q));
		tally_buf_put_u32(b, (uint32_t)v->num_shards);
		tally_buf_put_u32(b, (uint32_t)v->num_replicas);
		tally_buf_putc(b, (uint8_t)v->sharding_policy);
		tally_buf_putc(b, v->replication);
		for (int k = 0; k < v->num_shards; k++)
			tally_buf_put_u32(b, v->primary[k]);
		for (int k = 0; k < v->num_shards * v->num_replicas; k++)
			tally_buf_put_u32(b, v->replicas[k]);
	}
}

/* ---- decoding ----------------------------------------------------------------------------- */

/* A non-empty string without NUL bytes that fits dst (dstsz incl. NUL). */
static int cat_get_name(tally_rd *r, char *dst, size_t dstsz, bool allow_empty)
{
	const uint8_t *p;
	uint32_t n;
	if (tally_rd_str(r, &p, &n, (uint32_t)dstsz - 1))
		return -1;
	if ((!allow_empty && n == 0) || memchr(p, 0, n)) {
		r->bad = true;
		return -1;
	}
	memcpy(dst, p, n);
	dst[n] = 0;
	return 0;
}

/* A count in 0..max that the bytes left can hold at min_bytes per element. */
static int cat_get_count(tally_rd *r, uint32_t max, size_t min_bytes, uint32_t *out)
{
	uint32_t n;
	if (tally_rd_u32(r, &n))
		return -1;
	if (n > max || (size_t)n > tally_rd_left(r) / min_bytes) {
		r->bad = true;
		return -1;
	}
	*out = n;
	return 0;
}

static int cat_strcmp(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int cat_u32cmp(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

/* 0 if the n names are pairwise distinct. */
static int cat_names_distinct(const char **names, size_t n)
{
	qsort(names, n, sizeof *names, cat_strcmp);
	for (size_t i = 1; i < n; i++)
		if (strcmp(names[i - 1], names[i]) == 0)
			return -1;
	return 0;
}

/* Cross-record checks: distinct node ids and names, distinct relation names (streams and
 * views share one namespace), placements naming known nodes. */
static int cat_validate(const tally_catalog *c)
{
	int rc = -1;
	size_t nrel = (size_t)c->nstreams + (size_t)c->nviews;
	uint32_t *ids = tally_xcalloc((size_t)c->nnodes + 1, sizeof *ids);
	const char **names = tally_xcalloc(nrel + (size_t)c->nnodes + 1, sizeof *names);

	for (int i = 0; i < c->nnodes; i++) {
		ids[i] = c->nodes[i].id;
		names[i] = c->nodes[i].name;
	}
	qsort(ids, (size_t)c->nnodes, sizeof *ids, cat_u32cmp);
	for (int i = 1; i < c->nnodes; i++)
		if (ids[i - 1] == ids[i])
			goto out;
	if (cat_names_distinct(names, (size_t)c->nnodes))
		goto out;

	size_t k = 0;
	for (int i = 0; i < c->nstreams; i++)
		names[k++] = c->streams[i].name;
	for (int i = 0; i < c->nviews; i++)
		names[k++] = c->views[i].name;
	if (cat_names_distinct(names, k))
		goto out;

	for (int i = 0; i < c->nviews; i++) {
		const tally_view_info *v = &c->views[i];
		size_t ncopies = (size_t)v->num_shards * (size_t)(v->num_replicas + 1);
		for (size_t j = 0; j < ncopies; j++) {
			uint32_t id = j < (size_t)v->num_shards
					  ? v->primary[j]
					  : v->replicas[j - (size_t)v->num_shards];
			if (!bsearch(&id, ids, (size_t)c->nnodes, sizeof *ids, cat_u32cmp))
				goto out;
		}
	}
	rc = 0;
out:
	free(names);
	free(ids);
	return rc;
}

static int cat_decode_node(tally_rd *r, tally_node_info *n)
{
	uint64_t hb;
	if (tally_rd_u32(r, &n->id) || cat_get_name(r, n->name, sizeof n->name, false) ||
	    cat_get_name(r, n->data_addr, sizeof n->data_addr, true) ||
	    cat_get_name(r, n->sql_addr, sizeof n->sql_addr, true) || tally_rd_u8(r, &n->state) ||
	    tally_rd_u64(r, &n->incarnation) || tally_rd_u64(r, &hb))
		return -1;
	n->last_heartbeat_us = (int64_t)hb;
	if (n->id == 0 || n->state > TALLY_NODE_DOWN)
		return -1;
	return 0;
}

static bool cat_type_ok(int t)
{
	return t > TALLY_T_UNKNOWN && t < TALLY_T_COUNT_;
}

static int cat_decode_stream(tally_rd *r, tally_stream_info *s)
{
	uint32_t ncols;
	if (tally_rd_u64(r, &s->id) || cat_get_name(r, s->name, sizeof s->name, false) ||
	    cat_get_count(r, TALLY_MAX_COLUMNS, COLUMN_MIN_BYTES, &ncols))
		return -1;
	s->cols = tally_xcalloc(ncols ? ncols : 1, sizeof *s->cols);
	s->ncols = (int)ncols;
	for (uint32_t k = 0; k < ncols; k++) {
		uint8_t t;
		if (cat_get_name(r, s->cols[k].name, sizeof s->cols[k].name, false) ||
		    tally_rd_u8(r, &t) || !cat_type_ok(t))
			return -1;
		s->cols[k].type = (tally_type)t;
	}
	return 0;
}

static int cat_decode_view(tally_rd *r, uint32_t version, tally_view_info *v)
{
	const uint8_t *q;
	uint32_t qlen, ns, nr;
	uint8_t policy, repl = TALLY_REPL_ASYNC;
	if (tally_rd_u64(r, &v->id) || cat_get_name(r, v->name, sizeof v->name, false) ||
	    cat_get_name(r, v->stream, sizeof v->stream, false) ||
	    tally_rd_str(r, &q, &qlen, CATALOG_MAX_QUERY) || tally_rd_u32(r, &ns) ||
	    tally_rd_u32(r, &nr) || tally_rd_u8(r, &policy))
		return -1;
	if (version >= 2 && tally_rd_u8(r, &repl))
		return -1;
	if (memchr(q, 0, qlen) || ns < 1 || ns > TALLY_MAX_SHARDS || nr > TALLY_MAX_REPLICAS ||
	    policy > TALLY_POLICY_WRITE_OPTIMIZED || repl > TALLY_REPL_QUORUM)
		return -1;
	size_t ncopies = (size_t)ns * (nr + 1);
	if (tally_rd_left(r) < ncopies * 4)
		return -1;
	v->query_text = tally_xmalloc((size_t)qlen + 1);
	memcpy(v->query_text, q, qlen);
	v->query_text[qlen] = 0;
	v->num_shards = (int)ns;
	v->num_replicas = (int)nr;
	v->sharding_policy = policy;
	v->replication = repl;
	v->primary = tally_xcalloc(ns, sizeof *v->primary);
	v->replicas = tally_xcalloc((size_t)ns * nr + 1, sizeof *v->replicas);
	for (uint32_t k = 0; k < ns; k++)
		if (tally_rd_u32(r, &v->primary[k]))
			return -1;
	for (size_t k = 0; k < (size_t)ns * nr; k++)
		if (tally_rd_u32(r, &v->replicas[k]))
			return -1;
	return 0;
}

int tally_catalog_decode(const void *p, size_t n, tally_catalog **out)
{
	tally_rd r;
	uint32_t magic, version, cnt;
	tally_catalog *c = tally_xcalloc(1, sizeof *c);

	tally_rd_init(&r, p, p ? n : 0);
	if (tally_rd_u32(&r, &magic) || tally_rd_u32(&r, &version) || magic != CATALOG_MAGIC ||
	    (version != CATALOG_VERSION && version != CATALOG_VERSION_V1) ||
	    tally_rd_u64(&r, &c->epoch) || tally_rd_u64(&r, &c->next_id))
		goto fail;

	if (cat_get_count(&r, CATALOG_MAX_NODES, NODE_MIN_BYTES, &cnt))
		goto fail;
	c->nodes = tally_xcalloc(cnt ? cnt : 1, sizeof *c->nodes);
	for (uint32_t i = 0; i < cnt; i++) {
		c->nnodes = (int)i + 1;
		if (cat_decode_node(&r, &c->nodes[i]))
			goto fail;
	}

	if (cat_get_count(&r, CATALOG_MAX_RELS, STREAM_MIN_BYTES, &cnt))
		goto fail;
	c->streams = tally_xcalloc(cnt ? cnt : 1, sizeof *c->streams);
	for (uint32_t i = 0; i < cnt; i++) {
		c->nstreams = (int)i + 1; /* counted before filling so fail frees it */
		if (cat_decode_stream(&r, &c->streams[i]))
			goto fail;
	}

	if (cat_get_count(&r, CATALOG_MAX_RELS, VIEW_MIN_BYTES, &cnt))
		goto fail;
	c->views = tally_xcalloc(cnt ? cnt : 1, sizeof *c->views);
	for (uint32_t i = 0; i < cnt; i++) {
		c->nviews = (int)i + 1;
		if (cat_decode_view(&r, version, &c->views[i]))
			goto fail;
	}

	if (r.bad || tally_rd_left(&r) != 0 || cat_validate(c))
		goto fail;
	*out = c;
	return 0;
fail:
	tally_catalog_free(c);
	return -1;
}

/* ---- lifetime ----------------------------------------------------------------------------- */

tally_catalog *tally_catalog_alloc(void)
{
	tally_catalog *c = tally_xcalloc(1, sizeof *c);
	c->next_id = 1;
	return c;
}

static void cat_view_fini(tally_view_info *v)
{
	free(v->query_text);
	free(v->primary);
	free(v->replicas);
}

void tally_catalog_free(tally_catalog *c)
{
	if (!c)
		return;
	for (int i = 0; i < c->nstreams; i++)
		free(c->streams[i].cols);
	for (int i = 0; i < c->nviews; i++)
		cat_view_fini(&c->views[i]);
	free(c->nodes);
	free(c->streams);
	free(c->views);
	free(c);
}

static void *cat_dup(const void *p, size_t n)
{
	void *q = tally_xmalloc(n ? n : 1);
	if (n && p)
		memcpy(q, p, n);
	return q;
}

/* Deep copy of v into *d (d's old contents are not freed). */
static void cat_view_copy(tally_view_info *d, const tally_view_info *v)
{
	*d = *v;
	d->query_text = tally_xstrdup(v->query_text ? v->query_text : "");
	d->primary = cat_dup(v->primary, (size_t)v->num_shards * sizeof *v->primary);
	d->replicas = cat_dup(v->replicas, (size_t)v->num_shards * (size_t)v->num_replicas *
					       sizeof *v->replicas);
}

tally_catalog *tally_catalog_clone(const tally_catalog *c)
{
	if (!c)
		return NULL;
	tally_catalog *d = tally_xcalloc(1, sizeof *d);
	*d = *c;
	d->nodes = cat_dup(c->nodes, (size_t)c->nnodes * sizeof *c->nodes);
	d->streams = cat_dup(c->streams, (size_t)c->nstreams * sizeof *c->streams);
	for (int i = 0; i < c->nstreams; i++)
		d->streams[i].cols =
		    cat_dup(c->streams[i].cols, (size_t)c->streams[i].ncols * sizeof(tally_column));
	d->views = tally_xcalloc((size_t)c->nviews + 1, sizeof *d->views);
	for (int i = 0; i < c->nviews; i++)
		cat_view_copy(&d->views[i], &c->views[i]);
	return d;
}

/* ---- lookups ------------------------------------------------------------------------------ */

const tally_node_info *tally_catalog_node(const tally_catalog *c, uint32_t id)
{
	for (int i = 0; c && i < c->nnodes; i++)
		if (c->nodes[i].id == id)
			return &c->nodes[i];
	return NULL;
}

const tally_node_info *tally_catalog_node_by_name(const tally_catalog *c, const char *name)
{
	for (int i = 0; c && name && i < c->nnodes; i++)
		if (strcmp(c->nodes[i].name, name) == 0)
			return &c->nodes[i];
	return NULL;
}

const tally_stream_info *tally_catalog_stream(const tally_catalog *c, const char *name)
{
	for (int i = 0; c && name && i < c->nstreams; i++)
		if (strcmp(c->streams[i].name, name) == 0)
			return &c->streams[i];
	return NULL;
}

const tally_view_info *tally_catalog_view(const tally_catalog *c, const char *name)
{
	for (int i = 0; c && name && i < c->nviews; i++)
		if (strcmp(c->views[i].name, name) == 0)
			return &c->views[i];
	return NULL;
}

const tally_view_info *tally_catalog_view_by_id(const tally_catalog *c, uint64_t id)
{
	for (int i = 0; c && i < c->nviews; i++)
		if (c->views[i].id == id)
			return &c->views[i];
	return NULL;
}

/* ---- mutators ----------------------------------------------------------------------------- */

static int cat_check_name(const char *name, const char *what, tally_err *err)
{
	if (!name || !name[0])
		return tally_err_set(err, TALLY_SQLSTATE_INVALID_NAME, "%s name must not be empty",
				     what);
	if (strnlen(name, TALLY_NAME_MAX) >= TALLY_NAME_MAX)
		return tally_err_set(err, TALLY_SQLSTATE_INVALID_NAME,
				     "%s name \"%.*s...\" is too long", what, TALLY_NAME_MAX - 1,
				     name);
	return 0;
}

static uint64_t cat_take_id(tally_catalog *c)
{
	if (c->next_id == 0)
		c->next_id = 1;
	return c->next_id++;
}

int tally_catalog_add_stream(tally_catalog *c, const char *name, int ncols,
			     const tally_column *cols, tally_err *err)
{
	if (cat_check_name(name, "stream", err))
		return -1;
	if (tally_catalog_stream(c, name))
		return tally_err_set(err, TALLY_SQLSTATE_DUPLICATE_TABLE,
				     "stream \"%s\" already exists", name);
	if (tally_catalog_view(c, name))
		return tally_err_set(err, TALLY_SQLSTATE_DUPLICATE_TABLE,
				     "relation \"%s\" already exists", name);
	if (ncols < 0 || ncols > TALLY_MAX_COLUMNS)
		return tally_err_set(err, TALLY_SQLSTATE_TOO_MANY_COLUMNS,
				     "streams can have at most %d columns", TALLY_MAX_COLUMNS);
	if (ncols > 0 && !cols)
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL, "stream \"%s\" has no columns",
				     name);
	for (int k = 0; k < ncols; k++) {
		if (cat_check_name(cols[k].name, "column", err))
			return -1;
		if (!cat_type_ok((int)cols[k].type))
			return tally_err_set(err, TALLY_SQLSTATE_DATATYPE_MISMATCH,
					     "column \"%s\" of stream \"%s\" has an invalid type",
					     cols[k].name, name);
	}
	if (c->nstreams + c->nviews >= CATALOG_MAX_RELS)
		return tally_err_set(err, TALLY_SQLSTATE_PROGRAM_LIMIT,
				     "cannot create stream \"%s\": the catalog is limited to %d "
				     "streams and views",
				     name, CATALOG_MAX_RELS);

	c->streams = tally_xrealloc(c->streams, ((size_t)c->nstreams + 1) * sizeof *c->streams);
	tally_stream_info *s = &c->streams[c->nstreams];
	memset(s, 0, sizeof *s);
	tally_strlcpy(s->name, name, sizeof s->name);
	s->ncols = ncols;
	s->cols = cat_dup(cols, (size_t)ncols * sizeof *cols);
	s->id = cat_take_id(c);
	c->nstreams++;
	return 0;
}

int tally_catalog_drop_stream(tally_catalog *c, const char *name)
{
	int at = -1;
	for (int i = 0; name && i < c->nstreams; i++)
		if (strcmp(c->streams[i].name, name) == 0)
			at = i;
	if (at < 0)
		return -1;
	free(c->streams[at].cols);
	memmove(&c->streams[at], &c->streams[at + 1],
		(size_t)(c->nstreams - at - 1) * sizeof *c->streams);
	c->nstreams--;

	int k = 0;
	for (int i = 0; i < c->nviews; i++) {
		if (strcmp(c->views[i].stream, name) == 0)
			cat_view_fini(&c->views[i]);
		else
			c->views[k++] = c->views[i];
	}
	c->nviews = k;
	return 0;
}

int tally_catalog_add_view(tally_catalog *c, const tally_view_info *v, tally_err *err)
{
	if (!v)
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL, "no view to add");
	if (cat_check_name(v->name, "view", err))
		return -1;
	if (tally_catalog_view(c, v->name) || tally_catalog_stream(c, v->name))
		return tally_err_set(err, TALLY_SQLSTATE_DUPLICATE_TABLE,
				     "relation \"%s\" already exists", v->name);
	if (cat_check_name(v->stream, "stream", err))
		return -1;
	if (v->num_shards < 1 || v->num_shards > TALLY_MAX_SHARDS) {
		tally_err_set(err, TALLY_SQLSTATE_INVALID_PARAMETER,
			      "value %d out of bounds for option \"num_shards\"", v->num_shards);
		return tally_err_detail(err, "Valid values are between \"1\" and \"%d\".",
					TALLY_MAX_SHARDS);
	}
	if (v->num_replicas < 0 || v->num_replicas > TALLY_MAX_REPLICAS) {
		tally_err_set(err, TALLY_SQLSTATE_INVALID_PARAMETER,
			      "value %d out of bounds for option \"num_replicas\"",
			      v->num_replicas);
		return tally_err_detail(err, "Valid values are between \"0\" and \"%d\".",
					TALLY_MAX_REPLICAS);
	}
	if (v->sharding_policy != TALLY_POLICY_READ_OPTIMIZED &&
	    v->sharding_policy != TALLY_POLICY_WRITE_OPTIMIZED)
		return tally_err_set(err, TALLY_SQLSTATE_INVALID_PARAMETER,
				     "invalid sharding_policy for view \"%s\"", v->name);
	if (v->replication > TALLY_REPL_QUORUM)
		return tally_err_set(err, TALLY_SQLSTATE_INVALID_PARAMETER,
				     "invalid replication mode for view \"%s\"", v->name);
	if (v->query_text && strlen(v->query_text) > CATALOG_MAX_QUERY)
		return tally_err_set(err, TALLY_SQLSTATE_PROGRAM_LIMIT,
				     "query of view \"%s\" is too long (limit %u bytes)", v->name,
				     CATALOG_MAX_QUERY);
	if (!v->primary || (v->num_replicas > 0 && !v->replicas))
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL, "view \"%s\" has no placement",
				     v->name);
	size_t nrep = (size_t)v->num_shards * (size_t)v->num_replicas;
	for (size_t j = 0; j < (size_t)v->num_shards + nrep; j++) {
		uint32_t id = j < (size_t)v->num_shards ? v->primary[j]
							: v->replicas[j - (size_t)v->num_shards];
		if (!tally_catalog_node(c, id))
			return tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
					     "placement of view \"%s\" names unknown node %u",
					     v->name, id);
	}
	if (c->nstreams + c->nviews >= CATALOG_MAX_RELS)
		return tally_err_set(err, TALLY_SQLSTATE_PROGRAM_LIMIT,
				     "cannot create view \"%s\": the catalog is limited to %d "
				     "streams and views",
				     v->name, CATALOG_MAX_RELS);

	c->views = tally_xrealloc(c->views, ((size_t)c->nviews + 1) * sizeof *c->views);
	tally_view_info *d = &c->views[c->nviews];
	cat_view_copy(d, v);
	d->id = cat_take_id(c);
	c->nviews++;
	return 0;
}

int tally_catalog_drop_view(tally_catalog *c, const char *name)
{
	for (int i = 0; name && i < c->nviews; i++) {
		if (strcmp(c->views[i].name, name) == 0) {
			cat_view_fini(&c->views[i]);
			memmove(&c->views[i], &c->views[i + 1],
				(size_t)(c->nviews - i - 1) * sizeof *c->views);
			c->nviews--;
			return 0;
		}
	}
	return -1;
}

uint32_t tally_catalog_upsert_node(tally_catalog *c, const tally_node_info *n)
{
	char name[TALLY_NAME_MAX];
	if (!n || !n->name[0] || strnlen(n->name, sizeof n->name) >= sizeof n->name)
		return 0;
	tally_strlcpy(name, n->name, sizeof name);

	tally_node_info *d = (tally_node_info *)tally_catalog_node_by_name(c, name);
	if (!d) {
		if (c->nnodes >= CATALOG_MAX_NODES)
			return 0;
		uint32_t max = 0;
		for (int i = 0; i < c->nnodes; i++)
			if (c->nodes[i].id > max)
				max = c->nodes[i].id;
		if (max == UINT32_MAX)
			return 0;
		c->nodes = tally_xrealloc(c->nodes, ((size_t)c->nnodes + 1) * sizeof *c->nodes);
		d = &c->nodes[c->nnodes++];
		memset(d, 0, sizeof *d);
		d->id = max + 1;
		tally_strlcpy(d->name, name, sizeof d->name);
	}
	uint32_t id = d->id;
	*d = *n;
	d->id = id;
	memcpy(d->name, name, sizeof d->name);
	d->data_addr[sizeof d->data_addr - 1] = 0;
	d->sql_addr[sizeof d->sql_addr - 1] = 0;
	if (d->state > TALLY_NODE_DOWN)
		d->state = TALLY_NODE_DOWN;
	return id;
}

int tally_catalog_remove_node(tally_catalog *c, uint32_t id)
{
	int at = -1;
	for (int i = 0; i < c->nnodes; i++)
		if (c->nodes[i].id == id)
			at = i;
	if (at < 0)
		return -1;
	/* Refuse rather than leave a placement naming a node the catalog no longer has: decode
	 * would reject such a catalog at every node. */
	for (int i = 0; i < c->nviews; i++) {
		const tally_view_info *v = &c->views[i];
		size_t nrep = (size_t)v->num_shards * (size_t)v->num_replicas;
		for (int k = 0; k < v->num_shards; k++)
			if (v->primary[k] == id)
				return -1;
		for (size_t k = 0; k < nrep; k++)
			if (v->replicas[k] == id)
				return -1;
	}
	memmove(&c->nodes[at], &c->nodes[at + 1], (size_t)(c->nnodes - at - 1) * sizeof *c->nodes);
	c->nnodes--;
	return 0;
}
