/*
 * test_catalog.c - the cluster map: encode/decode round trip, rejection of truncated,
 * trailing and inconsistent blobs, deep copies, lookups and the coordinator's mutators.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>

#include "tally/catalog.h"
#include "tally/ring.h"

static tally_node_info node(const char *name, int port)
{
	tally_node_info n;
	memset(&n, 0, sizeof n);
	tally_strlcpy(n.name, name, sizeof n.name);
	snprintf(n.data_addr, sizeof n.data_addr, "tcp://127.0.0.1:%d", port);
	snprintf(n.sql_addr, sizeof n.sql_addr, "127.0.0.1:%d", port + 1);
	n.state = TALLY_NODE_UP;
	n.incarnation = (uint64_t)port * 3;
	n.last_heartbeat_us = 1700000000000000ll + port;
	return n;
}

static const tally_column cols[] = {{"k", TALLY_T_INT4},
				    {"v", TALLY_T_FLOAT8},
				    {"name", TALLY_T_TEXT},
				    {"ts", TALLY_T_TIMESTAMPTZ}};

/* A catalog with 3 nodes, 2 streams and 3 views placed by the ring. */
static tally_catalog *sample(void)
{
	tally_catalog *c = tally_catalog_alloc();
	tally_err err;
	c->epoch = 17;
	cr_assert_eq(tally_catalog_upsert_node(c, &(tally_node_info){0}), 0);
	const char *names[] = {"w1", "w2", "w3"};
	for (int i = 0; i < 3; i++) {
		tally_node_info n = node(names[i], 40000 + 10 * i);
		cr_assert_eq(tally_catalog_upsert_node(c, &n), (uint32_t)i + 1);
	}
	c->nodes[2].state = TALLY_NODE_DOWN;
	cr_assert_eq(tally_catalog_add_stream(c, "s", 4, cols, &err), 0, "%s", err.message);
	cr_assert_eq(tally_catalog_add_stream(c, "t", 1, cols, &err), 0, "%s", err.message);

	tally_ring_member m[3];
	for (int i = 0; i < 3; i++)
		m[i] = (tally_ring_member){c->nodes[i].id, c->nodes[i].name, 1};
	const char *vnames[] = {"v", "v2", "counts"};
	const int shards[] = {3, 8, 1};
	const int reps[] = {1, 2, 0};
	for (int i = 0; i < 3; i++) {
		tally_view_info v;
		memset(&v, 0, sizeof v);
		tally_strlcpy(v.name, vnames[i], sizeof v.name);
		tally_strlcpy(v.stream, i == 2 ? "t" : "s", sizeof v.stream);
		v.query_text = i == 0 ? "SELECT k, count(*) FROM s GROUP BY k" : "SELECT 1";
		v.num_shards = shards[i];
		v.num_replicas = reps[i];
		v.sharding_policy =
		    i == 1 ? TALLY_POLICY_WRITE_OPTIMIZED : TALLY_POLICY_READ_OPTIMIZED;
		v.replication = (uint8_t)i; /* async, sync, quorum */
		uint32_t prim[8], rp[16];
		cr_assert_eq(
		    tally_ring_place(m, 3, v.name, v.num_shards, v.num_replicas, 0, prim, rp, &err),
		    0);
		v.primary = prim;
		v.replicas = rp;
		cr_assert_eq(tally_catalog_add_view(c, &v, &err), 0, "%s", err.message);
	}
	return c;
}

static void assert_same(const tally_catalog *a, const tally_catalog *b)
{
	cr_assert_eq(a->epoch, b->epoch);
	cr_assert_eq(a->next_id, b->next_id);
	cr_assert_eq(a->nnodes, b->nnodes);
	for (int i = 0; i < a->nnodes; i++) {
		const tally_node_info *x = &a->nodes[i], *y = &b->nodes[i];
		cr_assert_eq(x->id, y->id);
		cr_assert_str_eq(x->name, y->name);
		cr_assert_str_eq(x->data_addr, y->data_addr);
		cr_assert_str_eq(x->sql_addr, y->sql_addr);
		cr_assert_eq(x->state, y->state);
		cr_assert_eq(x->incarnation, y->incarnation);
		cr_assert_eq(x->last_heartbeat_us, y->last_heartbeat_us);
	}
	cr_assert_eq(a->nstreams, b->nstreams);
	for (int i = 0; i < a->nstreams; i++) {
		const tally_stream_info *x = &a->streams[i], *y = &b->streams[i];
		cr_assert_eq(x->id, y->id);
		cr_assert_str_eq(x->name, y->name);
		cr_assert_eq(x->ncols, y->ncols);
		for (int k = 0; k < x->ncols; k++) {
			cr_assert_str_eq(x->cols[k].name, y->cols[k].name);
			cr_assert_eq(x->cols[k].type, y->cols[k].type);
		}
	}
	cr_assert_eq(a->nviews, b->nviews);
	for (int i = 0; i < a->nviews; i++) {
		const tally_view_info *x = &a->views[i], *y = &b->views[i];
		cr_assert_eq(x->id, y->id);
		cr_assert_str_eq(x->name, y->name);
		cr_assert_str_eq(x->stream, y->stream);
		cr_assert_str_eq(x->query_text, y->query_text);
		cr_assert_eq(x->num_shards, y->num_shards);
		cr_assert_eq(x->num_replicas, y->num_replicas);
		cr_assert_eq(x->sharding_policy, y->sharding_policy);
		cr_assert_eq(x->replication, y->replication);
		cr_assert_arr_eq(x->primary, y->primary, (size_t)x->num_shards * sizeof(uint32_t));
		cr_assert_arr_eq(x->replicas, y->replicas,
				 (size_t)x->num_shards * (size_t)x->num_replicas *
				     sizeof(uint32_t));
	}
}

Test(catalog, round_trip, .timeout = 30)
{
	tally_catalog *c = sample();
	tally_buf b = {0};
	tally_catalog_encode(c, &b);
	tally_catalog *d = NULL;
	cr_assert_eq(tally_catalog_decode(b.data, b.len, &d), 0);
	cr_assert_not_null(d);
	assert_same(c, d);
	cr_assert_eq(d->nnodes, 3);
	cr_assert_eq(d->nviews, 3);
	cr_assert_eq(d->nodes[2].state, TALLY_NODE_DOWN);
	/* Re-encoding gives the same bytes. */
	tally_buf b2 = {0};
	tally_catalog_encode(d, &b2);
	cr_assert_eq(b.len, b2.len);
	cr_assert_arr_eq(b.data, b2.data, b.len);
	tally_catalog_free(d);
	tally_catalog_free(c);
	tally_buf_free(&b);
	tally_buf_free(&b2);
}

Test(catalog, empty_round_trip, .timeout = 30)
{
	tally_catalog *c = tally_catalog_alloc();
	tally_buf b = {0};
	tally_catalog_encode(c, &b);
	tally_catalog *d = NULL;
	cr_assert_eq(tally_catalog_decode(b.data, b.len, &d), 0);
	assert_same(c, d);
	cr_assert_eq(d->next_id, 1);
	tally_catalog_free(d);
	tally_catalog_free(c);
	tally_buf_free(&b);
	tally_catalog_free(NULL);
}

Test(catalog, every_truncated_prefix_rejected, .timeout = 30)
{
	tally_catalog *c = sample();
	tally_buf b = {0};
	tally_catalog_encode(c, &b);
	for (size_t n = 0; n < b.len; n++) {
		uint8_t *cut = malloc(n ? n : 1);
		memcpy(cut, b.data, n);
		tally_catalog *d = (tally_catalog *)0x1;
		cr_assert_neq(tally_catalog_decode(cut, n, &d), 0, "prefix %zu of %zu accepted", n,
			      b.len);
		cr_assert_eq(d, (tally_catalog *)0x1, "out written on failure");
		free(cut);
	}
	/* One trailing byte too. */
	tally_buf_putc(&b, 0);
	tally_catalog *d = NULL;
	cr_assert_neq(tally_catalog_decode(b.data, b.len, &d), 0);
	cr_assert_neq(tally_catalog_decode(NULL, 0, &d), 0);
	tally_catalog_free(c);
	tally_buf_free(&b);
}

/* Encode, let mutate() break the catalog, and expect decode to refuse it. */
static void expect_rejected(void (*mutate)(tally_catalog *), const char *what)
{
	tally_catalog *c = sample();
	mutate(c);
	tally_buf b = {0};
	tally_catalog_encode(c, &b);
	tally_catalog *d = NULL;
	cr_assert_neq(tally_catalog_decode(b.data, b.len, &d), 0, "%s accepted", what);
	tally_catalog_free(c);
	tally_buf_free(&b);
}

static void m_unknown_primary(tally_catalog *c)
{
	c->views[0].primary[1] = 99;
}
static void m_unknown_replica(tally_catalog *c)
{
	c->views[1].replicas[3] = 0;
}
static void m_dup_node_id(tally_catalog *c)
{
	c->nodes[1].id = c->nodes[0].id;
}
static void m_dup_node_name(tally_catalog *c)
{
	strcpy(c->nodes[1].name, "w1");
}
static void m_dup_stream_view(tally_catalog *c)
{
	strcpy(c->views[2].name, "s");
}
static void m_dup_view(tally_catalog *c)
{
	strcpy(c->views[2].name, "v");
}
static void m_zero_node_id(tally_catalog *c)
{
	c->nodes[0].id = 0;
}
static void m_bad_state(tally_catalog *c)
{
	c->nodes[0].state = 7;
}
static void m_bad_type(tally_catalog *c)
{
	c->streams[0].cols[1].type = TALLY_T_COUNT_;
}
static void m_bad_policy(tally_catalog *c)
{
	c->views[0].sharding_policy = 2;
}
static void m_empty_name(tally_catalog *c)
{
	c->streams[1].name[0] = 0;
}

Test(catalog, inconsistent_data_rejected, .timeout = 30)
{
	expect_rejected(m_unknown_primary, "unknown primary node");
	expect_rejected(m_unknown_replica, "unknown replica node");
	expect_rejected(m_dup_node_id, "duplicate node id");
	expect_rejected(m_dup_node_name, "duplicate node name");
	expect_rejected(m_dup_stream_view, "view named like a stream");
	expect_rejected(m_dup_view, "duplicate view");
	expect_rejected(m_zero_node_id, "node id 0");
	expect_rejected(m_bad_state, "bad node state");
	expect_rejected(m_bad_type, "bad column type");
	expect_rejected(m_bad_policy, "bad policy");
	expect_rejected(m_empty_name, "empty stream name");
}

Test(catalog, counts_beyond_limits_rejected, .timeout = 30)
{
	/* Hand-built blobs: header then a huge count and no data behind it. */
	tally_buf b = {0};
	tally_catalog *d = NULL;
	uint32_t counts[] = {1025, 0xFFFFFFFFu, 3};
	for (size_t i = 0; i < 3; i++) {
		tally_buf_reset(&b);
		tally_buf_put_u32(&b, 0x544C4354u);
		tally_buf_put_u32(&b, 1);
		tally_buf_put_u64(&b, 1);
		tally_buf_put_u64(&b, 1);
		tally_buf_put_u32(&b, counts[i]);
		cr_assert_neq(tally_catalog_decode(b.data, b.len, &d), 0);
	}
	/* Wrong magic, wrong version. */
	tally_catalog *c = tally_catalog_alloc();
	tally_buf_reset(&b);
	tally_catalog_encode(c, &b);
	cr_assert_eq(tally_catalog_decode(b.data, b.len, &d), 0);
	tally_catalog_free(d);
	b.data[7] = 3;
	cr_assert_neq(tally_catalog_decode(b.data, b.len, &d), 0);
	b.data[7] = 0;
	cr_assert_neq(tally_catalog_decode(b.data, b.len, &d), 0);
	b.data[7] = 2;
	b.data[0] = 'X';
	cr_assert_neq(tally_catalog_decode(b.data, b.len, &d), 0);
	tally_catalog_free(c);

	/* A view with 1025 shards is refused even though the bytes are all there. */
	c = sample();
	tally_view_info *v = &c->views[2];
	free(v->primary);
	v->num_shards = TALLY_MAX_SHARDS + 1;
	v->primary = calloc((size_t)v->num_shards, sizeof(uint32_t));
	for (int i = 0; i < v->num_shards; i++)
		v->primary[i] = 1;
	tally_buf_reset(&b);
	tally_catalog_encode(c, &b);
	cr_assert_neq(tally_catalog_decode(b.data, b.len, &d), 0);
	v->num_shards = TALLY_MAX_SHARDS;
	tally_buf_reset(&b);
	tally_catalog_encode(c, &b);
	cr_assert_eq(tally_catalog_decode(b.data, b.len, &d), 0);
	tally_catalog_free(d);
	tally_catalog_free(c);
	tally_buf_free(&b);
}

Test(catalog, clone_is_deep, .timeout = 30)
{
	tally_catalog *c = sample();
	tally_catalog *d = tally_catalog_clone(c);
	assert_same(c, d);
	d->views[0].primary[0] = 12345;
	d->streams[0].cols[0].type = TALLY_T_BOOL;
	d->views[0].query_text[0] = 'X';
	cr_assert_neq(c->views[0].primary[0], 12345);
	cr_assert_eq(c->streams[0].cols[0].type, TALLY_T_INT4);
	cr_assert_eq(c->views[0].query_text[0], 'S');
	tally_err err;
	cr_assert_eq(tally_catalog_add_stream(d, "new", 1, cols, &err), 0);
	cr_assert_null(tally_catalog_stream(c, "new"));
	tally_catalog_free(d);
	tally_catalog_free(c);
}

Test(catalog, lookups, .timeout = 30)
{
	tally_catalog *c = sample();
	cr_assert_str_eq(tally_catalog_node(c, 2)->name, "w2");
	cr_assert_null(tally_catalog_node(c, 4));
	cr_assert_eq(tally_catalog_node_by_name(c, "w3")->id, 3);
	cr_assert_null(tally_catalog_node_by_name(c, "W3"));
	cr_assert_eq(tally_catalog_stream(c, "s")->ncols, 4);
	cr_assert_null(tally_catalog_stream(c, "v"));
	const tally_view_info *v = tally_catalog_view(c, "v2");
	cr_assert_not_null(v);
	cr_assert_eq(tally_catalog_view_by_id(c, v->id), v);
	cr_assert_null(tally_catalog_view_by_id(c, 999));
	cr_assert_null(tally_catalog_view(c, "s"));
	/* ids: streams 1, 2, views 3, 4, 5 in order of creation. */
	cr_assert_eq(tally_catalog_stream(c, "s")->id, 1);
	cr_assert_eq(tally_catalog_stream(c, "t")->id, 2);
	cr_assert_eq(tally_catalog_view(c, "v")->id, 3);
	cr_assert_eq(tally_catalog_view(c, "counts")->id, 5);
	cr_assert_eq(c->next_id, 6);
	tally_catalog_free(c);
}

Test(catalog, mutator_errors, .timeout = 30)
{
	tally_catalog *c = sample();
	tally_err err;
	uint64_t epoch = c->epoch;

	cr_assert_neq(tally_catalog_add_stream(c, "s", 1, cols, &err), 0);
	cr_assert_str_eq(err.sqlstate, "42P07");
	cr_assert_str_eq(err.message, "stream \"s\" already exists");
	cr_assert_neq(tally_catalog_add_stream(c, "v", 1, cols, &err), 0);
	cr_assert_str_eq(err.sqlstate, "42P07");
	cr_assert_str_eq(err.message, "relation \"v\" already exists");

	tally_view_info v = c->views[0]; /* borrowed arrays; add_view copies */
	cr_assert_neq(tally_catalog_add_view(c, &v, &err), 0);
	cr_assert_str_eq(err.sqlstate, "42P07");
	cr_assert_str_eq(err.message, "relation \"v\" already exists");
	strcpy(v.name, "t");
	cr_assert_neq(tally_catalog_add_view(c, &v, &err), 0);
	cr_assert_str_eq(err.message, "relation \"t\" already exists");

	strcpy(v.name, "fresh");
	v.num_shards = 0;
	cr_assert_neq(tally_catalog_add_view(c, &v, &err), 0);
	cr_assert_str_eq(err.sqlstate, "22023");
	v.num_shards = c->views[0].num_shards;
	uint32_t bad[3] = {1, 2, 42};
	v.primary = bad;
	cr_assert_neq(tally_catalog_add_view(c, &v, &err), 0);
	cr_assert_null(tally_catalog_view(c, "fresh"));
	v.primary = c->views[0].primary;

	tally_column many[TALLY_MAX_COLUMNS + 1];
	memset(many, 0, sizeof many);
	for (int i = 0; i <= TALLY_MAX_COLUMNS; i++) {
		snprintf(many[i].name, sizeof many[i].name, "c%d", i);
		many[i].type = TALLY_T_INT8;
	}
	cr_assert_neq(tally_catalog_add_stream(c, "wide", TALLY_MAX_COLUMNS + 1, many, &err), 0);
	cr_assert_str_eq(err.sqlstate, "54011");
	cr_assert_eq(tally_catalog_add_stream(c, "wide", TALLY_MAX_COLUMNS, many, &err), 0);
	cr_assert_neq(tally_catalog_add_stream(c, "", 1, cols, &err), 0);

	uint64_t next = c->next_id;
	cr_assert_eq(tally_catalog_add_view(c, &v, &err), 0, "%s", err.message);
	cr_assert_eq(tally_catalog_view(c, "fresh")->id, next);
	cr_assert_eq(c->next_id, next + 1);
	cr_assert_eq(c->epoch, epoch, "mutators must not bump the epoch");

	/* The result still encodes into something decodable. */
	tally_buf b = {0};
	tally_catalog_encode(c, &b);
	tally_catalog *d = NULL;
	cr_assert_eq(tally_catalog_decode(b.data, b.len, &d), 0);
	assert_same(c, d);
	tally_catalog_free(d);
	tally_buf_free(&b);
	tally_catalog_free(c);
}

Test(catalog, drop_stream_drops_its_views, .timeout = 30)
{
	tally_catalog *c = sample();
	cr_assert_eq(tally_catalog_drop_stream(c, "s"), 0);
	cr_assert_null(tally_catalog_stream(c, "s"));
	cr_assert_null(tally_catalog_view(c, "v"));
	cr_assert_null(tally_catalog_view(c, "v2"));
	cr_assert_not_null(tally_catalog_view(c, "counts"));
	cr_assert_eq(c->nviews, 1);
	cr_assert_eq(c->nstreams, 1);
	cr_assert_neq(tally_catalog_drop_stream(c, "s"), 0);
	cr_assert_eq(tally_catalog_drop_view(c, "counts"), 0);
	cr_assert_neq(tally_catalog_drop_view(c, "counts"), 0);
	cr_assert_eq(c->nviews, 0);
	/* The name is free again; ids keep increasing. */
	tally_err err;
	uint64_t next = c->next_id;
	cr_assert_eq(tally_catalog_add_stream(c, "s", 2, cols, &err), 0);
	cr_assert_eq(tally_catalog_stream(c, "s")->id, next);
	tally_catalog_free(c);
}

Test(catalog, upsert_node_keeps_ids, .timeout = 30)
{
	tally_catalog *c = tally_catalog_alloc();
	tally_node_info a = node("w1", 1000), b = node("w2", 2000);
	cr_assert_eq(tally_catalog_upsert_node(c, &a), 1);
	cr_assert_eq(tally_catalog_upsert_node(c, &b), 2);
	a.incarnation = 99;
	a.state = TALLY_NODE_DOWN;
	strcpy(a.data_addr, "tcp://127.0.0.1:5555");
	a.id = 77; /* ignored */
	cr_assert_eq(tally_catalog_upsert_node(c, &a), 1);
	cr_assert_eq(c->nnodes, 2);
	const tally_node_info *n = tally_catalog_node_by_name(c, "w1");
	cr_assert_eq(n->id, 1);
	cr_assert_eq(n->incarnation, 99);
	cr_assert_eq(n->state, TALLY_NODE_DOWN);
	cr_assert_str_eq(n->data_addr, "tcp://127.0.0.1:5555");
	/* The next new node gets max + 1 even after gaps. */
	c->nodes[1].id = 10;
	tally_node_info w3 = node("w3", 3000);
	cr_assert_eq(tally_catalog_upsert_node(c, &w3), 11);
	tally_catalog_free(c);
}

/* Random corruption: decode either refuses the blob or returns a catalog that re-encodes to
 * the same bytes (so nothing was silently cut or invented). Run under ASan this also shows
 * that no corruption reads out of bounds. */
Test(catalog, corrupted_blobs_never_crash, .timeout = 60)
{
	tally_catalog *c = sample();
	tally_buf b = {0}, again = {0};
	tally_catalog_encode(c, &b);
	uint8_t *copy = malloc(b.len);
	uint64_t x = 88172645463325252ull;
	int accepted = 0;
	for (int iter = 0; iter < 20000; iter++) {
		memcpy(copy, b.data, b.len);
		int flips = 1 + iter % 4;
		for (int f = 0; f < flips; f++) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			copy[(x >> 8) % b.len] = (uint8_t)x;
		}
		tally_catalog *d = NULL;
		if (tally_catalog_decode(copy, b.len, &d) == 0) {
			accepted++;
			tally_buf_reset(&again);
			tally_catalog_encode(d, &again);
			cr_assert_eq(again.len, b.len);
			cr_assert_arr_eq(again.data, copy, b.len);
			tally_catalog_free(d);
		}
	}
	cr_assert_lt(accepted, 20000, "corruption never detected");
	free(copy);
	tally_buf_free(&again);
	tally_buf_free(&b);
	tally_catalog_free(c);
}

/* ---- version 2: the replication mode ----------------------------------------------------------
 */

/* A one-node, one-stream, one-view catalog written by hand in the given version (1 has no
 * replication byte), so the tests pin the format rather than re-use the encoder. */
static void hand_blob(tally_buf *b, uint32_t version, uint8_t repl)
{
	tally_buf_put_u32(b, 0x544C4354u);
	tally_buf_put_u32(b, version);
	tally_buf_put_u64(b, 9);  /* epoch */
	tally_buf_put_u64(b, 30); /* next_id */
	tally_buf_put_u32(b, 1);
	tally_buf_put_u32(b, 4); /* node id */
	tally_buf_put_str(b, "w1", 2);
	tally_buf_put_str(b, "tcp://127.0.0.1:1", 17);
	tally_buf_put_str(b, "127.0.0.1:2", 11);
	tally_buf_putc(b, TALLY_NODE_DOWN);
	tally_buf_put_u64(b, 5);
	tally_buf_put_u64(b, 6);
	tally_buf_put_u32(b, 1);
	tally_buf_put_u64(b, 10); /* stream id */
	tally_buf_put_str(b, "s", 1);
	tally_buf_put_u32(b, 1);
	tally_buf_put_str(b, "k", 1);
	tally_buf_putc(b, TALLY_T_INT4);
	tally_buf_put_u32(b, 1);
	tally_buf_put_u64(b, 11); /* view id */
	tally_buf_put_str(b, "v", 1);
	tally_buf_put_str(b, "s", 1);
	tally_buf_put_str(b, "SELECT 1", 8);
	tally_buf_put_u32(b, 2); /* shards */
	tally_buf_put_u32(b, 0); /* replicas */
	tally_buf_putc(b, TALLY_POLICY_WRITE_OPTIMIZED);
	if (version >= 2)
		tally_buf_putc(b, repl);
	tally_buf_put_u32(b, 4);
	tally_buf_put_u32(b, 4);
}

Test(catalog, replication_mode_round_trips, .timeout = 30)
{
	for (int mode = TALLY_REPL_ASYNC; mode <= TALLY_REPL_QUORUM; mode++) {
		tally_buf b = {0}, b2 = {0};
		hand_blob(&b, 2, (uint8_t)mode);
		tally_catalog *d = NULL;
		cr_assert_eq(tally_catalog_decode(b.data, b.len, &d), 0, "mode %d", mode);
		cr_assert_eq(d->nviews, 1);
		cr_assert_eq(d->views[0].replication, mode);
		cr_assert_eq(d->views[0].sharding_policy, TALLY_POLICY_WRITE_OPTIMIZED);
		/* The encoder writes exactly the hand-made version 2 bytes. */
		tally_catalog_encode(d, &b2);
		cr_assert_eq(b.len, b2.len);
		cr_assert_arr_eq(b.data, b2.data, b.len);
		tally_catalog_free(d);
		tally_buf_free(&b);
		tally_buf_free(&b2);
	}
}

Test(catalog, version_1_decodes_as_async, .timeout = 30)
{
	tally_buf b = {0}, b2 = {0};
	hand_blob(&b, 1, 0);
	tally_catalog *d = NULL;
	cr_assert_eq(tally_catalog_decode(b.data, b.len, &d), 0);
	cr_assert_eq(d->epoch, 9);
	cr_assert_eq(d->nnodes, 1);
	cr_assert_str_eq(d->nodes[0].name, "w1");
	cr_assert_eq(d->nviews, 1);
	cr_assert_str_eq(d->views[0].query_text, "SELECT 1");
	cr_assert_eq(d->views[0].num_shards, 2);
	cr_assert_eq(d->views[0].primary[1], 4);
	cr_assert_eq(d->views[0].replication, TALLY_REPL_ASYNC);
	/* Re-encoding writes version 2. */
	tally_catalog_encode(d, &b2);
	cr_assert_eq(b2.len, b.len + 1);
	cr_assert_eq(b2.data[7], 2);
	tally_catalog_free(d);
	/* A version 1 blob with a replication byte has a trailing byte too many... */
	tally_buf_reset(&b);
	hand_blob(&b, 2, 0);
	b.data[7] = 1;
	d = NULL;
	cr_assert_neq(tally_catalog_decode(b.data, b.len, &d), 0);
	cr_assert_null(d);
	/* ... and a version 2 blob without one is short. */
	tally_buf_reset(&b);
	hand_blob(&b, 1, 0);
	b.data[7] = 2;
	cr_assert_neq(tally_catalog_decode(b.data, b.len, &d), 0);
	/* Other versions are refused. */
	for (uint8_t v = 0; v < 6; v += 3) {
		tally_buf_reset(&b);
		hand_blob(&b, v, 0);
		cr_assert_neq(tally_catalog_decode(b.data, b.len, &d), 0, "version %u", v);
	}
	tally_buf_free(&b);
	tally_buf_free(&b2);
}

Test(catalog, unknown_replication_mode_rejected, .timeout = 30)
{
	for (int mode = 3; mode < 256; mode += 84) {
		tally_buf b = {0};
		hand_blob(&b, 2, (uint8_t)mode);
		tally_catalog *d = NULL;
		cr_assert_neq(tally_catalog_decode(b.data, b.len, &d), 0, "mode %d", mode);
		cr_assert_null(d);
		tally_buf_free(&b);
	}
	/* add_view refuses it as well. */
	tally_catalog *c = sample();
	tally_view_info v = c->views[0];
	tally_strlcpy(v.name, "v9", sizeof v.name);
	v.replication = 3;
	tally_err err;
	tally_err_clear(&err);
	cr_assert_neq(tally_catalog_add_view(c, &v, &err), 0);
	cr_assert_str_eq(err.sqlstate, "22023");
	cr_assert_null(tally_catalog_view(c, "v9"));
	tally_catalog_free(c);
}

Test(catalog, remove_node_only_when_unplaced, .timeout = 30)
{
	tally_catalog *c = sample();
	/* Every view has a copy on w3 (id 3) except possibly "counts": move them all off. */
	cr_assert_neq(tally_catalog_remove_node(c, 3), 0, "w3 still holds shard copies");
	cr_assert_eq(c->nnodes, 3);
	cr_assert_neq(tally_catalog_remove_node(c, 99), 0, "no node 99");
	for (int i = 0; i < c->nviews; i++) {
		tally_view_info *v = &c->views[i];
		for (int s = 0; s < v->num_shards; s++) {
			if (v->primary[s] == 3)
				v->primary[s] = 1;
			for (int r = 0; r < v->num_replicas; r++)
				if (v->replicas[s * v->num_replicas + r] == 3)
					v->replicas[s * v->num_replicas + r] = 2;
		}
	}
	cr_assert_eq(tally_catalog_remove_node(c, 3), 0);
	cr_assert_eq(c->nnodes, 2);
	cr_assert_null(tally_catalog_node(c, 3));
	cr_assert_not_null(tally_catalog_node_by_name(c, "w1"));
	cr_assert_not_null(tally_catalog_node_by_name(c, "w2"));
	/* The result still decodes (no placement names a missing node). */
	tally_buf b = {0};
	tally_catalog_encode(c, &b);
	tally_catalog *d = NULL;
	cr_assert_eq(tally_catalog_decode(b.data, b.len, &d), 0);
	tally_catalog_free(d);
	/* A node registering under the removed name is a new member with a new id. */
	tally_node_info n = node("w3", 45000);
	cr_assert_eq(tally_catalog_upsert_node(c, &n), 3); /* max id + 1 */
	cr_assert_eq(tally_catalog_remove_node(c, 3), 0, "holds nothing");
	tally_buf_free(&b);
	tally_catalog_free(c);
}
