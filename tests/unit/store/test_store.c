/*
 * test_store.c - the worker's shard store (worker/store.c): exactly-once apply by batch id
 * (in and out of order), refused batches that leave no trace, snapshots (round trip,
 * corruption, dropped views, changed aggregates), recovery by loading the snapshots and
 * replaying the log after them, replication of a shard copy (records, snapshots, diverged
 * histories, promotion) and hints held for another shard (reads, hand-off, recovery).
 *
 * Every test runs on a fresh directory under /tmp with a real log (fsync off), a catalog of
 * one worker (node 1) holding both shards of view v = SELECT k, count(*), sum(v), min(v),
 * max(v) FROM s GROUP BY k, and a model of what each shard must hold, computed here from the
 * rows sent. Replication tests use a map of two workers (node 2 holds a replica of both
 * shards) and a second store with its own directory and log for the replica.
 */
#include "../../../worker/worker.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define VIEW_SQL "SELECT k, count(*), sum(v), min(v), max(v) FROM s GROUP BY k"
#define NSHARDS 2
#define KEYS 64 /* group keys k in [-KEYS/2, KEYS/2) */
#define MAX_AGGS 8

/* ---- fixture ------------------------------------------------------------------------------ */

typedef struct fx {
	char dir[64];
	char waldir[128];
	tally_wal *wal;
	tally_map *map;
	const tally_view_rt *v;
	tally_store *st;
} fx;

static int replay_noop(void *ctx, uint8_t type, uint64_t lsn, const uint8_t *data, uint32_t len,
		       tally_err *err)
{
	(void)ctx, (void)type, (void)lsn, (void)data, (void)len, (void)err;
	return 0;
}

/* A map at epoch with node 1 and stream s(k integer, v bigint); with view_sql, also view v
 * over 2 shards whose primary is node 1 (its id is 2: ids are handed out in order). With
 * nrep = 1 the map has a second node w2 (id 2) holding a replica of both shards. */
static tally_map *map_build(uint64_t epoch, const char *view_sql, int nrep)
{
	tally_catalog *c = tally_catalog_alloc();
	c->epoch = epoch;
	for (uint32_t id = 1; id <= (nrep ? 2u : 1u); id++) {
		tally_node_info n;
		memset(&n, 0, sizeof n);
		snprintf(n.name, sizeof n.name, "w%u", id);
		snprintf(n.data_addr, sizeof n.data_addr, "tcp://127.0.0.1:%u", 2 * id - 1);
		snprintf(n.sql_addr, sizeof n.sql_addr, "127.0.0.1:%u", 2 * id);
		n.state = TALLY_NODE_UP;
		cr_assert_eq(tally_catalog_upsert_node(c, &n), id);
	}
	static const tally_column cols[] = {{"k", TALLY_T_INT4}, {"v", TALLY_T_INT8}};
	tally_err err;
	tally_err_clear(&err);
	cr_assert_eq(tally_catalog_add_stream(c, "s", 2, cols, &err), 0, "%s", err.message);
	if (!view_sql)
		c->next_id = 3; /* as after view 2 was dropped: ids are never reused */
	if (view_sql) {
		uint32_t prim[NSHARDS] = {1, 1}, reps[NSHARDS] = {2, 2};
		tally_view_info vi;
		memset(&vi, 0, sizeof vi);
		tally_strlcpy(vi.name, "v", sizeof vi.name);
		tally_strlcpy(vi.stream, "s", sizeof vi.stream);
		vi.query_text = (char *)view_sql;
		vi.num_shards = NSHARDS;
		vi.num_replicas = nrep;
		vi.replicas = nrep ? reps : NULL;
		vi.sharding_policy = TALLY_POLICY_READ_OPTIMIZED;
		vi.primary = prim;
		cr_assert_eq(tally_catalog_add_view(c, &vi, &err), 0, "%s", err.message);
	}
	tally_map *m = tally_map_build(c);
	if (view_sql) {
		const tally_view_rt *v = tally_map_view(m, "v");
		cr_assert_not_null(v);
		cr_assert(v->ok, "%s", v->error);
		cr_assert_eq(v->info->id, 2);
		cr_assert_leq(v->plan->naggs, MAX_AGGS);
	}
	return m;
}

static tally_map *map_make(uint64_t epoch, const char *view_sql)
{
	return map_build(epoch, view_sql, 0);
}

static void wal_open(fx *f, tally_wal_replay_fn fn, void *ctx)
{
	tally_wal_options o = {.dir = f->waldir, .fsync = false};
	tally_err err;
	tally_err_clear(&err);
	cr_assert_eq(tally_wal_open(&o, &f->wal, &err), 0, "%s", err.message);
	cr_assert_eq(tally_wal_replay(f->wal, 0, fn ? fn : replay_noop, ctx, &err), 0, "%s",
		     err.message);
}

/* A fixture whose map has nrep replicas per shard and whose store keeps up to keep bytes of
 * change records for them. */
static void fx_open_ex(fx *f, int nrep, uint64_t keep)
{
	memset(f, 0, sizeof *f);
	tally_strlcpy(f->dir, "/tmp/tally_store_XXXXXX", sizeof f->dir);
	cr_assert_not_null(mkdtemp(f->dir));
	snprintf(f->waldir, sizeof f->waldir, "%s/wal", f->dir);
	wal_open(f, NULL, NULL);
	f->map = map_build(1, VIEW_SQL, nrep);
	f->v = tally_map_view(f->map, "v");
	f->st = tally_store_alloc(f->dir, false, keep);
}

static void fx_open(fx *f)
{
	fx_open_ex(f, 0, 64u << 20);
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb, (void)flag, (void)ftw;
	return remove(path);
}

static void fx_close(fx *f)
{
	tally_store_free(f->st);
	if (f->wal)
		tally_wal_close(f->wal);
	tally_map_put(f->map);
	nftw(f->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- batches and the model ---------------------------------------------------------------- */

typedef struct row {
	int32_t k;
	int64_t v;
} row;

typedef struct pgroup {
	int32_t k;
	_Alignas(16) uint8_t states[MAX_AGGS * TALLY_AGG_SLOT];
} pgroup;

/* The APPLY body of batch (origin, seq) for home shard sh sent to shard target of view v (a
 * hint when they differ): the rows pre-aggregated into one group per k, as an origin's ingest
 * would send them. */
static void batch_make_to(const tally_view_rt *v, uint64_t origin, uint64_t seq, uint32_t sh,
			  uint32_t target, const row *rows, int n, tally_buf *out)
{
	const tally_agg_spec *aggs = v->plan->aggs;
	int naggs = v->plan->naggs;
	pgroup *g = calloc((size_t)(n ? n : 1), sizeof *g);
	cr_assert_not_null(g);
	int ng = 0;
	for (int i = 0; i < n; i++) {
		int j = 0;
		while (j < ng && g[j].k != rows[i].k)
			j++;
		if (j == ng) {
			g[ng].k = rows[i].k;
			for (int a = 0; a < naggs; a++)
				tally_agg_init(&aggs[a], g[ng].states + a * TALLY_AGG_SLOT);
			ng++;
		}
		tally_value val = tally_int(TALLY_T_INT8, rows[i].v);
		for (int a = 0; a < naggs; a++)
			tally_agg_update(&aggs[a], g[j].states + a * TALLY_AGG_SLOT,
					 aggs[a].kind == TALLY_AGG_COUNT_STAR ? NULL : &val);
	}
	tally_buf_reset(out);
	tally_msg_apply a = {.origin = origin,
			     .home_shard = sh,
			     .seq = seq,
			     .view_id = v->info->id,
			     .target_shard = target,
			     .ngroups = (uint32_t)ng};
	tally_msg_put_apply(out, &a);
	tally_buf key = {0};
	for (int j = 0; j < ng; j++) {
		tally_buf_reset(&key);
		tally_value kv = tally_int(TALLY_T_INT4, g[j].k);
		tally_key_encode(&kv, &key);
		tally_group_put(out, key.data, (uint32_t)key.len, aggs, naggs, g[j].states);
		for (int k = 0; k < naggs; k++)
			tally_agg_release(&aggs[k], g[j].states + k * TALLY_AGG_SLOT);
	}
	tally_buf_free(&key);
	free(g);
}

static void batch_make(const tally_view_rt *v, uint64_t origin, uint64_t seq, uint32_t sh,
		       const row *rows, int n, tally_buf *out)
{
	batch_make_to(v, origin, seq, sh, sh, rows, n, out);
}

/* Apply an APPLY body as the worker's request handler does: header, then the store. */
static int apply_body(fx *f, const tally_view_rt *v, const uint8_t *body, size_t len,
		      tally_err *err)
{
	tally_err_clear(err);
	tally_rd r;
	tally_rd_init(&r, body, len);
	tally_msg_apply a;
	if (tally_msg_get_apply(&r, &a) != 0)
		return tally_err_set(err, TALLY_SQLSTATE_PROTOCOL, "bad APPLY header");
	uint64_t lsn = 0, rlsn = 0;
	int rc = tally_store_apply(f->st, f->wal, v, f->map->cat->epoch, 1, 0, &a, body, len, &r,
				   &lsn, &rlsn, err);
	if (rc == 0)
		cr_assert_gt(lsn, 0, "an acknowledged batch must name an LSN to flush");
	else
		cr_assert(tally_err_isset(err), "a refused batch must say why");
	return rc;
}

static int apply_buf(fx *f, const tally_buf *b, tally_err *err)
{
	return apply_body(f, f->v, b->data, b->len, err);
}

typedef struct agg_model {
	int64_t count, min, max;
	__int128 sum;
} agg_model;

typedef struct model {
	agg_model g[NSHARDS][KEYS];
} model;

static void model_add(model *m, uint32_t sh, const row *rows, int n)
{
	for (int i = 0; i < n; i++) {
		agg_model *e = &m->g[sh][rows[i].k + KEYS / 2];
		if (e->count == 0 || rows[i].v < e->min)
			e->min = rows[i].v;
		if (e->count == 0 || rows[i].v > e->max)
			e->max = rows[i].v;
		e->count++;
		e->sum += rows[i].v;
	}
}

/* Build, apply (must succeed) and account one batch. */
static void send_rows(fx *f, model *m, uint64_t origin, uint64_t seq, uint32_t sh, const row *rows,
		      int n)
{
	tally_buf b = {0};
	tally_err err;
	batch_make(f->v, origin, seq, sh, rows, n, &b);
	cr_assert_eq(apply_buf(f, &b, &err), 0, "batch (%llu, %llu) to shard %u: %s",
		     (unsigned long long)origin, (unsigned long long)seq, sh, err.message);
	if (m)
		model_add(m, sh, rows, n);
	tally_buf_free(&b);
}

static tally_store_shard_stats stats_of(tally_store *st, uint32_t sh)
{
	tally_store_shard_stats s;
	memset(&s, 0, sizeof s);
	cr_assert_eq(tally_store_stats(st, 2, sh, &s), 0, "no copy of shard %u", sh);
	return s;
}

/* The shard's groups, read and decoded, equal the model exactly (count, sum, min, max). */
static void check_shard(tally_store *st, const tally_view_rt *v, uint32_t sh, const model *m)
{
	tally_buf b = {0};
	tally_store_read(st, v, sh, NULL, 0, &b);
	tally_rd r;
	tally_rd_init(&r, b.data, b.len);
	uint32_t ng;
	cr_assert_eq(tally_rd_u32(&r, &ng), 0);
	uint32_t want = 0;
	for (int i = 0; i < KEYS; i++)
		want += m->g[sh][i].count > 0;
	cr_assert_eq(ng, want, "shard %u holds %u groups, expected %u", sh, ng, want);
	bool seen[KEYS] = {0};
	const tally_agg_spec *aggs = v->plan->aggs;
	for (uint32_t i = 0; i < ng; i++) {
		const uint8_t *kp;
		uint32_t kl;
		cr_assert_eq(tally_rd_str(&r, &kp, &kl, TALLY_GROUP_KEY_MAX), 0);
		tally_rd kr;
		tally_rd_init(&kr, kp, kl);
		tally_value kv;
		cr_assert_eq(tally_key_decode(&kr, &kv), 0);
		cr_assert_eq(kv.type, TALLY_T_INT4);
		cr_assert(kv.u.i >= -KEYS / 2 && kv.u.i < KEYS / 2, "key %lld", (long long)kv.u.i);
		int idx = (int)kv.u.i + KEYS / 2;
		cr_assert_not(seen[idx], "group %lld twice", (long long)kv.u.i);
		seen[idx] = true;
		const agg_model *e = &m->g[sh][idx];
		cr_assert_gt(e->count, 0, "shard %u has group %lld it never got", sh,
			     (long long)kv.u.i);
		for (int a = 0; a < v->plan->naggs; a++) {
			_Alignas(16) uint8_t slot[TALLY_AGG_SLOT];
			cr_assert_eq(tally_agg_deserialize(&aggs[a], &r, slot), 0);
			tally_value out;
			cr_assert_eq(tally_agg_finalize(&aggs[a], slot, &out, NULL), 0);
			cr_assert_not(out.isnull);
			__int128 got = out.type == TALLY_T_NUMERIC ? out.u.n.m : out.u.i;
			if (out.type == TALLY_T_NUMERIC)
				cr_assert_eq(out.u.n.scale, 0);
			__int128 exp = 0;
			switch (aggs[a].kind) {
			case TALLY_AGG_COUNT_STAR:
			case TALLY_AGG_COUNT:
				exp = e->count;
				break;
			case TALLY_AGG_SUM:
				exp = e->sum;
				break;
			case TALLY_AGG_MIN:
				exp = e->min;
				break;
			case TALLY_AGG_MAX:
				exp = e->max;
				break;
			default:
				cr_assert_fail("unexpected aggregate");
			}
			cr_assert(got == exp,
				  "shard %u group %lld aggregate %d: got %lld, want %lld", sh,
				  (long long)kv.u.i, a, (long long)got, (long long)exp);
			tally_agg_release(&aggs[a], slot);
		}
	}
	cr_assert_eq(tally_rd_left(&r), 0);
	cr_assert_not(r.bad);
	tally_buf_free(&b);
}

typedef struct span {
	const uint8_t *key, *p;
	uint32_t keylen;
	size_t len;
} span;

static int span_cmp(const void *x, const void *y)
{
	const span *a = x, *b = y;
	uint32_t n = a->keylen < b->keylen ? a->keylen : b->keylen;
	int c = memcmp(a->key, b->key, n);
	return c ? c : (a->keylen > b->keylen) - (a->keylen < b->keylen);
}

/* tally_store_read's reply for one shard with its groups sorted by key: equal dumps mean
 * the same groups with byte-identical states. */
static void dump_sorted(tally_store *st, const tally_view_rt *v, uint32_t sh, tally_buf *out)
{
	tally_buf b = {0};
	tally_store_read(st, v, sh, NULL, 0, &b);
	tally_rd r;
	tally_rd_init(&r, b.data, b.len);
	uint32_t ng;
	cr_assert_eq(tally_rd_u32(&r, &ng), 0);
	span *sp = calloc(ng ? ng : 1, sizeof *sp);
	cr_assert_not_null(sp);
	for (uint32_t i = 0; i < ng; i++) {
		sp[i].p = r.p + r.off;
		cr_assert_eq(tally_rd_str(&r, &sp[i].key, &sp[i].keylen, TALLY_GROUP_KEY_MAX), 0);
		for (int a = 0; a < v->plan->naggs; a++) {
			_Alignas(16) uint8_t slot[TALLY_AGG_SLOT];
			cr_assert_eq(tally_agg_deserialize(&v->plan->aggs[a], &r, slot), 0);
			tally_agg_release(&v->plan->aggs[a], slot);
		}
		sp[i].len = (size_t)(r.p + r.off - sp[i].p);
	}
	cr_assert_eq(tally_rd_left(&r), 0);
	qsort(sp, ng, sizeof *sp, span_cmp);
	tally_buf_reset(out);
	tally_buf_put_u32(out, ng);
	for (uint32_t i = 0; i < ng; i++)
		tally_buf_append(out, sp[i].p, sp[i].len);
	free(sp);
	tally_buf_free(&b);
}

static void assert_same_dump(const tally_buf *a, const tally_buf *b, const char *what)
{
	cr_assert_eq(a->len, b->len, "%s: dumps differ in length (%zu vs %zu)", what, a->len,
		     b->len);
	cr_assert(a->len == 0 || memcmp(a->data, b->data, a->len) == 0, "%s: dumps differ", what);
}

static int snap_count(const fx *f)
{
	char path[256];
	snprintf(path, sizeof path, "%s/snap", f->dir);
	DIR *d = opendir(path);
	if (!d)
		return 0;
	int n = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		size_t nl = strlen(de->d_name);
		n += nl > 5 && strcmp(de->d_name + nl - 5, ".snap") == 0;
	}
	closedir(d);
	return n;
}

/* Path of the snapshot of view 2, shard sh (as store.c names it). */
static void snap_path(const fx *f, uint32_t sh, char *out, size_t sz)
{
	snprintf(out, sz, "%s/snap/%016llx-%u.snap", f->dir, 2ull, sh);
}

/* Random rows spread over the keys; batches go to the shard owning each key (k mod 2). A
 * "workload" applies nb batches from 3 origins to both shards with per-(origin, shard)
 * sequences 1, 2, 3, ... */
typedef struct workload {
	uint64_t next[4][NSHARDS]; /* next seq per origin index and shard */
	tally_buf *bodies;	   /* every batch sent, for resending */
	int nbodies, cap;
} workload;

static const uint64_t origins[3] = {0x1111, 0x2222222222ull, 0xFEDCBA9876543210ull};

static void work_send(fx *f, model *m, workload *w, int nb, int rows_total)
{
	int per = rows_total / nb;
	row rows[256];
	cr_assert_leq(per, 256);
	for (int b = 0; b < nb; b++) {
		int o = rand() % 3;
		uint32_t sh = (uint32_t)(rand() % NSHARDS);
		int n = 0;
		for (int i = 0; i < per; i++) {
			int32_t k = (int32_t)(rand() % (KEYS / 2)) * 2 + (int32_t)sh - KEYS / 2;
			int64_t v = ((int64_t)rand() << 20) - ((int64_t)rand() << 19);
			rows[n++] = (row){k, v};
		}
		uint64_t seq = ++w->next[o][sh];
		if (w->nbodies == w->cap) {
			w->cap = w->cap ? w->cap * 2 : 64;
			w->bodies = realloc(w->bodies, (size_t)w->cap * sizeof *w->bodies);
			cr_assert_not_null(w->bodies);
		}
		tally_buf *body = &w->bodies[w->nbodies++];
		memset(body, 0, sizeof *body);
		batch_make(f->v, origins[o], seq, sh, rows, n, body);
		tally_err err;
		cr_assert_eq(apply_buf(f, body, &err), 0, "%s", err.message);
		model_add(m, sh, rows, n);
	}
}

static void work_free(workload *w)
{
	for (int i = 0; i < w->nbodies; i++)
		tally_buf_free(&w->bodies[i]);
	free(w->bodies);
}

/* Recovery's replay callback: APPLY records go to the store, as the worker's hook does. */
typedef struct replay_ctx {
	tally_store *st;
	const tally_map *map;
	int records;
	tally_buf *saved; /* copies of (lsn, len, body) when set */
	uint32_t self;	  /* the node replaying (0: node 1) */
} replay_ctx;

static int replay_store(void *ctx, uint8_t type, uint64_t lsn, const uint8_t *data, uint32_t len,
			tally_err *err)
{
	replay_ctx *c = ctx;
	if (type != TALLY_REC_APPLY && type != TALLY_REC_SHARD)
		return tally_err_set(err, TALLY_SQLSTATE_DATA_CORRUPTED, "record type %u", type);
	/* (a shard record without changes only begins a history: not counted) */
	if (type != TALLY_REC_SHARD || len < 32 || tally_be32(data + 28) != 0)
		c->records++;
	if (c->saved) {
		tally_buf_putc(c->saved, type);
		tally_buf_put_u64(c->saved, lsn);
		tally_buf_put_str(c->saved, (const char *)data, len);
	}
	return tally_store_replay(c->st, c->map, c->self ? c->self : 1, type, lsn,
				  lsn + TALLY_WAL_HDR + len, data, len, err);
}

/* Simulate a restart: close the log, drop the store, open both again, load the snapshots
 * (with load) and replay the whole log through the store. Returns the records replayed. */
static int restart_as(fx *f, bool load, tally_buf *saved, uint32_t self, uint64_t keep)
{
	tally_wal_close(f->wal);
	f->wal = NULL;
	tally_store_free(f->st);
	f->st = tally_store_alloc(f->dir, false, keep);
	tally_err err;
	tally_err_clear(&err);
	if (load)
		cr_assert_eq(tally_store_load(f->st, f->map, &err), 0, "%s", err.message);
	replay_ctx c = {.st = f->st, .map = f->map, .saved = saved, .self = self};
	wal_open(f, replay_store, &c);
	return c.records;
}

static int restart(fx *f, bool load, tally_buf *saved)
{
	return restart_as(f, load, saved, 1, 64u << 20);
}

/* ---- exactly once ------------------------------------------------------------------------- */

Test(store, same_batch_id_merges_once, .timeout = 60)
{
	fx f;
	fx_open(&f);
	model m;
	memset(&m, 0, sizeof m);
	tally_err err;
	const row r1[] = {{2, 10}, {2, 5}, {4, -3}};
	tally_buf b = {0};
	batch_make(f.v, 7, 1, 0, r1, 3, &b);
	cr_assert_eq(apply_buf(&f, &b, &err), 0, "%s", err.message);
	model_add(&m, 0, r1, 3);
	check_shard(f.st, f.v, 0, &m);
	tally_store_shard_stats s = stats_of(f.st, 0);
	cr_assert_eq(s.batches, 1);
	cr_assert_eq(s.duplicates, 0);
	cr_assert_eq(s.groups, 2);
	uint64_t lsn1 = s.applied_lsn;
	cr_assert_gt(lsn1, 0);

	/* the very same id again: acknowledged, not merged, not logged */
	tally_wal_stats ws0, ws1;
	tally_wal_stats_get(f.wal, &ws0);
	cr_assert_eq(apply_buf(&f, &b, &err), 0, "%s", err.message);
	tally_wal_stats_get(f.wal, &ws1);
	cr_assert_eq(ws1.insert_lsn, ws0.insert_lsn, "a duplicate must not be logged");
	check_shard(f.st, f.v, 0, &m);
	s = stats_of(f.st, 0);
	cr_assert_eq(s.batches, 1);
	cr_assert_eq(s.duplicates, 1);
	cr_assert_eq(s.applied_lsn, lsn1);

	/* same seq from another origin is another batch */
	batch_make(f.v, 8, 1, 0, r1, 3, &b);
	cr_assert_eq(apply_buf(&f, &b, &err), 0, "%s", err.message);
	model_add(&m, 0, r1, 3);
	check_shard(f.st, f.v, 0, &m);
	s = stats_of(f.st, 0);
	cr_assert_eq(s.batches, 2);
	cr_assert_eq(s.duplicates, 1);
	cr_assert_eq(s.origins, 2);
	cr_assert_gt(s.applied_lsn, lsn1);

	/* dedup is per shard: origin 7's seq 1 to shard 1 applies */
	const row r2[] = {{3, 1}, {-5, 100}};
	send_rows(&f, &m, 7, 1, 1, r2, 2);
	check_shard(f.st, f.v, 1, &m);
	check_shard(f.st, f.v, 0, &m);
	cr_assert_eq(stats_of(f.st, 1).batches, 1);

	/* reading one group by its key */
	tally_buf key = {0}, reply = {0};
	tally_value kv = tally_int(TALLY_T_INT4, 2);
	tally_key_encode(&kv, &key);
	tally_store_read(f.st, f.v, 0, key.data, (uint32_t)key.len, &reply);
	cr_assert_geq(reply.len, 8);
	cr_assert_eq(tally_be32(reply.data), 1);
	cr_assert_eq(tally_be32(reply.data + 4), key.len);
	cr_assert_eq(memcmp(reply.data + 8, key.data, key.len), 0);
	tally_buf_reset(&key);
	tally_buf_reset(&reply);
	kv = tally_int(TALLY_T_INT4, 9);
	tally_key_encode(&kv, &key);
	tally_store_read(f.st, f.v, 0, key.data, (uint32_t)key.len, &reply);
	cr_assert_eq(reply.len, 4);
	cr_assert_eq(tally_be32(reply.data), 0);
	tally_store_shard_stats none;
	cr_assert_eq(tally_store_stats(f.st, 2, 5, &none), -1);
	cr_assert_eq(tally_store_stats(f.st, 99, 0, &none), -1);
	tally_buf_free(&key);
	tally_buf_free(&reply);
	tally_buf_free(&b);
	fx_close(&f);
}

Test(store, out_of_order_batches_apply_exactly_once, .timeout = 60)
{
	fx f;
	fx_open(&f);
	model m;
	memset(&m, 0, sizeof m);
	tally_err err;
	tally_buf b = {0};
	const uint64_t order[] = {3, 1, 2, 5, 4};
	for (int i = 0; i < 5; i++) {
		row r = {(int32_t)order[i] * 2, (int64_t)order[i] * 10};
		send_rows(&f, &m, 42, order[i], 0, &r, 1);
		cr_assert_eq(stats_of(f.st, 0).batches, (uint64_t)i + 1);
	}
	check_shard(f.st, f.v, 0, &m);
	for (uint64_t seq = 1; seq <= 5; seq++) {
		row r = {(int32_t)seq * 2, (int64_t)seq * 10};
		batch_make(f.v, 42, seq, 0, &r, 1, &b);
		cr_assert_eq(apply_buf(&f, &b, &err), 0, "%s", err.message);
	}
	tally_store_shard_stats s = stats_of(f.st, 0);
	cr_assert_eq(s.batches, 5);
	cr_assert_eq(s.duplicates, 5);
	check_shard(f.st, f.v, 0, &m);

	/* a gap: 7 before 6 */
	row r7 = {14, 70}, r6 = {12, 60};
	send_rows(&f, &m, 42, 7, 0, &r7, 1);
	batch_make(f.v, 42, 7, 0, &r7, 1, &b);
	cr_assert_eq(apply_buf(&f, &b, &err), 0, "%s", err.message);
	cr_assert_eq(stats_of(f.st, 0).duplicates, 6);
	cr_assert_eq(stats_of(f.st, 0).batches, 6);
	send_rows(&f, &m, 42, 6, 0, &r6, 1);
	cr_assert_eq(stats_of(f.st, 0).batches, 7);
	batch_make(f.v, 42, 6, 0, &r6, 1, &b);
	cr_assert_eq(apply_buf(&f, &b, &err), 0, "%s", err.message);
	cr_assert_eq(stats_of(f.st, 0).duplicates, 7);
	check_shard(f.st, f.v, 0, &m);

	/* a wide gap with holes filled backwards, then everything again: all duplicates */
	for (uint64_t seq = 100; seq >= 8; seq--) {
		row r = {(int32_t)(seq % 16) * 2, (int64_t)seq};
		send_rows(&f, &m, 42, seq, 0, &r, 1);
	}
	s = stats_of(f.st, 0);
	cr_assert_eq(s.batches, 100);
	for (uint64_t seq = 1; seq <= 100; seq++) {
		row r = {0, 1};
		batch_make(f.v, 42, seq, 0, &r, 1, &b);
		cr_assert_eq(apply_buf(&f, &b, &err), 0, "%s", err.message);
	}
	s = stats_of(f.st, 0);
	cr_assert_eq(s.batches, 100);
	cr_assert_eq(s.duplicates, 107);
	check_shard(f.st, f.v, 0, &m);
	tally_buf_free(&b);
	fx_close(&f);
}

/* An APPLY body with a floor (the origin's lowest unacknowledged seq when it sent it). */
static void batch_with_floor(const tally_view_rt *v, uint64_t origin, uint64_t seq, uint64_t floor,
			     uint32_t sh, const row *r, tally_buf *out)
{
	batch_make(v, origin, seq, sh, r, 1, out);
	tally_put_be64(out->data + TALLY_APPLY_FLOOR_OFF, floor);
}

Test(store, floor_counts_lower_seqs_as_applied, .timeout = 60)
{
	fx f;
	fx_open(&f);
	model m;
	memset(&m, 0, sizeof m);
	tally_err err;
	tally_buf b = {0};
	const row r = {0, 1};
	/* 5 and 7 arrive first, then 8 saying everything below 6 was acknowledged */
	send_rows(&f, &m, 5, 5, 0, &r, 1);
	send_rows(&f, &m, 5, 7, 0, &r, 1);
	batch_with_floor(f.v, 5, 8, 6, 0, &r, &b);
	cr_assert_eq(apply_buf(&f, &b, &err), 0, "%s", err.message);
	model_add(&m, 0, &r, 1);
	cr_assert_eq(stats_of(f.st, 0).batches, 3);
	/* below the floor: duplicates; 6 was not acknowledged and applies */
	for (uint64_t seq = 1; seq <= 5; seq++) {
		batch_make(f.v, 5, seq, 0, &r, 1, &b);
		cr_assert_eq(apply_buf(&f, &b, &err), 0, "%s", err.message);
	}
	cr_assert_eq(stats_of(f.st, 0).duplicates, 5);
	send_rows(&f, &m, 5, 6, 0, &r, 1);
	for (uint64_t seq = 6; seq <= 8; seq++) {
		batch_make(f.v, 5, seq, 0, &r, 1, &b);
		cr_assert_eq(apply_buf(&f, &b, &err), 0, "%s", err.message);
	}
	cr_assert_eq(stats_of(f.st, 0).duplicates, 8);
	send_rows(&f, &m, 5, 9, 0, &r, 1);
	cr_assert_eq(stats_of(f.st, 0).batches, 5);
	check_shard(f.st, f.v, 0, &m);

	/* a new origin whose first batch here is seq 1000 with floor 1000 (a shard that lost its
	 * state): the next seqs apply in order and nothing waits for 1..999 */
	batch_with_floor(f.v, 6, 1000, 1000, 1, &r, &b);
	cr_assert_eq(apply_buf(&f, &b, &err), 0, "%s", err.message);
	model_add(&m, 1, &r, 1);
	batch_with_floor(f.v, 6, 999, 0, 1, &r, &b);
	cr_assert_eq(apply_buf(&f, &b, &err), 0, "%s", err.message);
	cr_assert_eq(stats_of(f.st, 1).duplicates, 1);
	send_rows(&f, &m, 6, 1001, 1, &r, 1);
	check_shard(f.st, f.v, 1, &m);

	/* the floors are in the log: recovery without a snapshot rebuilds the same dedup state */
	restart(&f, true, NULL);
	for (uint32_t sh = 0; sh < NSHARDS; sh++)
		check_shard(f.st, f.v, sh, &m);
	batch_make(f.v, 5, 3, 0, &r, 1, &b);
	cr_assert_eq(apply_buf(&f, &b, &err), 0, "%s", err.message);
	batch_make(f.v, 6, 500, 1, &r, 1, &b);
	cr_assert_eq(apply_buf(&f, &b, &err), 0, "%s", err.message);
	cr_assert_eq(stats_of(f.st, 0).duplicates, 1);
	cr_assert_eq(stats_of(f.st, 1).duplicates, 1);
	cr_assert_eq(stats_of(f.st, 0).batches + stats_of(f.st, 1).batches, 7);
	check_shard(f.st, f.v, 0, &m);
	tally_buf_free(&b);
	fx_close(&f);
}

/* ---- refused batches ---------------------------------------------------------------------- */

static void assert_refused(fx *f, const uint8_t *body, size_t len, const model *m,
			   const tally_store_shard_stats *before, const char *what)
{
	tally_err err;
	tally_wal_stats w0, w1;
	tally_wal_stats_get(f->wal, &w0);
	cr_assert_eq(apply_body(f, f->v, body, len, &err), -1, "%s was accepted", what);
	cr_assert(err.sqlstate[0], "%s: no sqlstate", what);
	tally_wal_stats_get(f->wal, &w1);
	cr_assert_eq(w1.insert_lsn, w0.insert_lsn, "%s was logged", what);
	tally_store_shard_stats s = stats_of(f->st, 0);
	cr_assert_eq(s.batches, before->batches, "%s", what);
	cr_assert_eq(s.duplicates, before->duplicates, "%s", what);
	cr_assert_eq(s.groups, before->groups, "%s", what);
	cr_assert_eq(s.applied_lsn, before->applied_lsn, "%s", what);
	check_shard(f->st, f->v, 0, m);
}

Test(store, refused_batch_changes_nothing, .timeout = 60)
{
	fx f;
	fx_open(&f);
	model m;
	memset(&m, 0, sizeof m);
	tally_err err;
	const row r1[] = {{0, 1}, {2, 2}};
	send_rows(&f, &m, 5, 1, 0, r1, 2);
	tally_store_shard_stats before = stats_of(f.st, 0);

	/* batch 2: one group the shard has, two new ones */
	const row r2[] = {{0, 7}, {4, -8}, {6, 9}};
	tally_buf b = {0}, bad = {0};
	batch_make(f.v, 5, 2, 0, r2, 3, &b);

	/* cut short inside the last group's states */
	for (size_t cut = 1; cut <= 6; cut += 5) {
		cr_assert_gt(b.len, TALLY_APPLY_FIXED + cut);
		assert_refused(&f, b.data, b.len - cut, &m, &before, "a truncated batch");
	}
	/* more groups announced than present */
	tally_buf_reset(&bad);
	tally_buf_append(&bad, b.data, b.len);
	tally_put_be32(bad.data + TALLY_APPLY_NGROUPS_OFF, 4);
	assert_refused(&f, bad.data, bad.len, &m, &before, "a batch short of groups");
	/* fewer groups announced than present (trailing bytes) */
	tally_put_be32(bad.data + TALLY_APPLY_NGROUPS_OFF, 2);
	assert_refused(&f, bad.data, bad.len, &m, &before, "a batch with trailing groups");
	/* one byte of garbage after the groups */
	tally_buf_reset(&bad);
	tally_buf_append(&bad, b.data, b.len);
	tally_buf_putc(&bad, 0);
	assert_refused(&f, bad.data, bad.len, &m, &before, "a batch with a trailing byte");
	/* a key length running past the end in the last group */
	tally_buf_reset(&bad);
	tally_buf_append(&bad, b.data, b.len);
	size_t last = b.len;
	{
		/* find the start of the third group by walking the first two */
		tally_rd r;
		tally_rd_init(&r, b.data + TALLY_APPLY_FIXED, b.len - TALLY_APPLY_FIXED);
		for (int g = 0; g < 2; g++) {
			const uint8_t *kp;
			uint32_t kl;
			cr_assert_eq(tally_rd_str(&r, &kp, &kl, TALLY_GROUP_KEY_MAX), 0);
			for (int a = 0; a < f.v->plan->naggs; a++) {
				_Alignas(16) uint8_t slot[TALLY_AGG_SLOT];
				cr_assert_eq(tally_agg_deserialize(&f.v->plan->aggs[a], &r, slot),
					     0);
			}
		}
		last = TALLY_APPLY_FIXED + r.off;
	}
	tally_put_be32(bad.data + last, 0x00FFFFFF);
	assert_refused(&f, bad.data, bad.len, &m, &before, "a batch with a bad key length");

	/* the dedup state did not note the refused id: the good batch 2 applies now */
	cr_assert_eq(apply_buf(&f, &b, &err), 0, "%s", err.message);
	model_add(&m, 0, r2, 3);
	check_shard(f.st, f.v, 0, &m);
	tally_store_shard_stats s = stats_of(f.st, 0);
	cr_assert_eq(s.batches, 2);
	cr_assert_eq(s.duplicates, 0);
	cr_assert_eq(s.groups, 4);
	cr_assert_eq(apply_buf(&f, &b, &err), 0, "%s", err.message);
	cr_assert_eq(stats_of(f.st, 0).duplicates, 1);
	check_shard(f.st, f.v, 0, &m);
	tally_buf_free(&b);
	tally_buf_free(&bad);
	fx_close(&f);
}

/* ---- snapshots and recovery --------------------------------------------------------------- */

Test(store, snapshot_round_trip, .timeout = 60)
{
	fx f;
	fx_open(&f);
	srand(1234);
	model m;
	memset(&m, 0, sizeof m);
	workload w = {0};
	work_send(&f, &m, &w, 100, 2000);
	/* leave holes in some sequences so the dedup state has seqs above its contiguous hi */
	const row hr = {0, 5};
	uint64_t hole_seq[3];
	for (int o = 0; o < 3; o++) {
		hole_seq[o] = w.next[o][0] + 1;
		w.next[o][0] += 3; /* seq hole_seq is skipped; the next two are applied */
		send_rows(&f, &m, origins[o], hole_seq[o] + 1, 0, &hr, 1);
		send_rows(&f, &m, origins[o], hole_seq[o] + 2, 0, &hr, 1);
	}
	for (uint32_t sh = 0; sh < NSHARDS; sh++)
		check_shard(f.st, f.v, sh, &m);
	tally_err err;
	tally_err_clear(&err);
	cr_assert_eq(tally_store_checkpoint(f.st, f.wal, &err), 0, "%s", err.message);
	cr_assert_eq(snap_count(&f), 2);
	tally_buf dump_old[NSHARDS] = {{0}}, dump_new = {0};
	tally_store_shard_stats old[NSHARDS];
	for (uint32_t sh = 0; sh < NSHARDS; sh++) {
		dump_sorted(f.st, f.v, sh, &dump_old[sh]);
		old[sh] = stats_of(f.st, sh);
		cr_assert_eq(old[sh].snapshot_lsn, old[sh].applied_lsn);
	}

	tally_store_free(f.st);
	f.st = tally_store_alloc(f.dir, false, 64u << 20);
	cr_assert_eq(tally_store_load(f.st, f.map, &err), 0, "%s", err.message);
	for (uint32_t sh = 0; sh < NSHARDS; sh++) {
		dump_sorted(f.st, f.v, sh, &dump_new);
		assert_same_dump(&dump_old[sh], &dump_new, "after load");
		check_shard(f.st, f.v, sh, &m);
		tally_store_shard_stats s = stats_of(f.st, sh);
		cr_assert_eq(s.applied_lsn, old[sh].applied_lsn);
		cr_assert_eq(s.snapshot_lsn, old[sh].applied_lsn);
		cr_assert_eq(s.groups, old[sh].groups);
		cr_assert_eq(s.origins, old[sh].origins);
	}
	/* every old id is a duplicate */
	for (int i = 0; i < w.nbodies; i++)
		cr_assert_eq(apply_buf(&f, &w.bodies[i], &err), 0, "%s", err.message);
	uint64_t dups = 0;
	for (uint32_t sh = 0; sh < NSHARDS; sh++) {
		tally_store_shard_stats s = stats_of(f.st, sh);
		cr_assert_eq(s.batches, 0);
		dups += s.duplicates;
		dump_sorted(f.st, f.v, sh, &dump_new);
		assert_same_dump(&dump_old[sh], &dump_new, "after resending");
	}
	cr_assert_eq(dups, (uint64_t)w.nbodies);
	/* the ids noted above the contiguous part survived too, and the holes still apply */
	for (int o = 0; o < 3; o++) {
		tally_buf b = {0};
		batch_make(f.v, origins[o], hole_seq[o] + 2, 0, &hr, 1, &b);
		cr_assert_eq(apply_buf(&f, &b, &err), 0, "%s", err.message);
		tally_buf_free(&b);
		send_rows(&f, &m, origins[o], hole_seq[o], 0, &hr, 1);
		send_rows(&f, &m, origins[o], w.next[o][0] + 1, 0, &hr, 1);
		send_rows(&f, &m, origins[o], w.next[o][1] + 1, 1, &hr, 1);
	}
	cr_assert_eq(stats_of(f.st, 0).batches, 6);
	cr_assert_eq(stats_of(f.st, 1).batches, 3);
	for (uint32_t sh = 0; sh < NSHARDS; sh++)
		check_shard(f.st, f.v, sh, &m);

	/* nothing changed since a checkpoint -> the file is not rewritten; changed -> it is */
	cr_assert_eq(tally_store_checkpoint(f.st, f.wal, &err), 0, "%s", err.message);
	for (uint32_t sh = 0; sh < NSHARDS; sh++) {
		tally_store_shard_stats s = stats_of(f.st, sh);
		cr_assert_eq(s.snapshot_lsn, s.applied_lsn);
	}
	for (uint32_t sh = 0; sh < NSHARDS; sh++)
		tally_buf_free(&dump_old[sh]);
	tally_buf_free(&dump_new);
	work_free(&w);
	fx_close(&f);
}

Test(store, replay_after_snapshot_skips_what_it_holds, .timeout = 60)
{
	fx f;
	fx_open(&f);
	srand(99);
	model m;
	memset(&m, 0, sizeof m);
	workload w = {0};
	work_send(&f, &m, &w, 60, 1200); /* A */
	tally_err err;
	tally_err_clear(&err);
	cr_assert_eq(tally_store_checkpoint(f.st, f.wal, &err), 0, "%s", err.message);
	tally_store_shard_stats a_stats[NSHARDS];
	for (uint32_t sh = 0; sh < NSHARDS; sh++)
		a_stats[sh] = stats_of(f.st, sh);
	int na = w.nbodies;
	work_send(&f, &m, &w, 40, 800); /* B */
	/* resending some of A after the checkpoint changes nothing */
	for (int i = 0; i < 10; i++)
		cr_assert_eq(apply_buf(&f, &w.bodies[i], &err), 0, "%s", err.message);
	tally_buf live[NSHARDS] = {{0}}, now = {0};
	tally_store_shard_stats ls[NSHARDS];
	for (uint32_t sh = 0; sh < NSHARDS; sh++) {
		dump_sorted(f.st, f.v, sh, &live[sh]);
		ls[sh] = stats_of(f.st, sh);
		check_shard(f.st, f.v, sh, &m);
	}
	int records = restart(&f, true, NULL);
	cr_assert_eq(records, w.nbodies, "the log holds every applied batch once");
	for (uint32_t sh = 0; sh < NSHARDS; sh++) {
		dump_sorted(f.st, f.v, sh, &now);
		assert_same_dump(&live[sh], &now, "after recovery");
		check_shard(f.st, f.v, sh, &m);
		tally_store_shard_stats s = stats_of(f.st, sh);
		cr_assert_eq(s.applied_lsn, ls[sh].applied_lsn);
		cr_assert_eq(s.snapshot_lsn, a_stats[sh].applied_lsn);
		/* only B's batches were merged by replay: A's came from the snapshot */
		cr_assert_eq(s.batches, ls[sh].batches - a_stats[sh].batches, "shard %u", sh);
	}
	/* the recovered dedup state knows A and B */
	for (int i = 0; i < w.nbodies; i++)
		cr_assert_eq(apply_buf(&f, &w.bodies[i], &err), 0, "%s", err.message);
	uint64_t dups = 0;
	for (uint32_t sh = 0; sh < NSHARDS; sh++) {
		dups += stats_of(f.st, sh).duplicates;
		dump_sorted(f.st, f.v, sh, &now);
		assert_same_dump(&live[sh], &now, "after resending A and B");
	}
	cr_assert_eq(dups, (uint64_t)w.nbodies);
	cr_assert_gt(w.nbodies, na);
	for (uint32_t sh = 0; sh < NSHARDS; sh++)
		tally_buf_free(&live[sh]);
	tally_buf_free(&now);
	work_free(&w);
	fx_close(&f);
}

Test(store, replay_without_snapshot_equals_live_store, .timeout = 60)
{
	fx f;
	fx_open(&f);
	srand(7);
	model m;
	memset(&m, 0, sizeof m);
	workload w = {0};
	work_send(&f, &m, &w, 80, 2000);
	tally_buf live[NSHARDS] = {{0}}, now = {0};
	tally_store_shard_stats ls[NSHARDS];
	for (uint32_t sh = 0; sh < NSHARDS; sh++) {
		dump_sorted(f.st, f.v, sh, &live[sh]);
		ls[sh] = stats_of(f.st, sh);
	}
	tally_buf saved = {0};
	int records = restart(&f, true, &saved); /* nothing to load: no snapshot dir */
	cr_assert_eq(records, w.nbodies);
	for (uint32_t sh = 0; sh < NSHARDS; sh++) {
		dump_sorted(f.st, f.v, sh, &now);
		assert_same_dump(&live[sh], &now, "after replay");
		check_shard(f.st, f.v, sh, &m);
		tally_store_shard_stats s = stats_of(f.st, sh);
		cr_assert_eq(s.batches, ls[sh].batches);
		cr_assert_eq(s.applied_lsn, ls[sh].applied_lsn);
		cr_assert_eq(s.snapshot_lsn, 0);
	}
	/* replaying the same records again (a second recovery pass) merges nothing */
	tally_rd r;
	tally_rd_init(&r, saved.data, saved.len);
	tally_err err;
	tally_err_clear(&err);
	while (tally_rd_left(&r) > 0) {
		uint64_t lsn;
		uint8_t type;
		const uint8_t *p;
		uint32_t len;
		cr_assert_eq(tally_rd_u8(&r, &type), 0);
		cr_assert_eq(tally_rd_u64(&r, &lsn), 0);
		cr_assert_eq(tally_rd_str(&r, &p, &len, TALLY_WAL_RECORD_MAX), 0);
		cr_assert_eq(tally_store_replay(f.st, f.map, 1, type, lsn,
						lsn + TALLY_WAL_HDR + len, p, len, &err),
			     0, "%s", err.message);
	}
	for (uint32_t sh = 0; sh < NSHARDS; sh++) {
		dump_sorted(f.st, f.v, sh, &now);
		assert_same_dump(&live[sh], &now, "after a second replay");
		cr_assert_eq(stats_of(f.st, sh).batches, ls[sh].batches);
	}
	/* a record positioned before what the shard covers is already in it, even with an id
	 * the dedup state does not list (the log position decides) */
	tally_buf fresh = {0};
	const row fr = {0, 1000};
	batch_make(f.v, 0xABCDEF, 1, 0, &fr, 1, &fresh);
	cr_assert_eq(tally_store_replay(f.st, f.map, 1, TALLY_REC_APPLY, 1,
					1 + TALLY_WAL_HDR + (uint32_t)fresh.len, fresh.data,
					(uint32_t)fresh.len, &err),
		     0, "%s", err.message);
	dump_sorted(f.st, f.v, 0, &now);
	assert_same_dump(&live[0], &now, "after an old record");
	/* the same record after the shard's position is new and merges */
	uint64_t at = stats_of(f.st, 0).applied_lsn;
	cr_assert_eq(tally_store_replay(f.st, f.map, 1, TALLY_REC_APPLY, at,
					at + TALLY_WAL_HDR + (uint32_t)fresh.len, fresh.data,
					(uint32_t)fresh.len, &err),
		     0, "%s", err.message);
	model_add(&m, 0, &fr, 1);
	check_shard(f.st, f.v, 0, &m);
	cr_assert_eq(stats_of(f.st, 0).applied_lsn, at + TALLY_WAL_HDR + fresh.len);
	tally_buf_free(&fresh);
	/* a record that does not decode is corruption, not a crash */
	uint8_t junk[5] = {1, 2, 3, 4, 5};
	cr_assert_eq(tally_store_replay(f.st, f.map, 1, TALLY_REC_APPLY, 1, 1 + TALLY_WAL_HDR + 5,
					junk, 5, &err),
		     -1);
	cr_assert_str_eq(err.sqlstate, TALLY_SQLSTATE_DATA_CORRUPTED);
	for (uint32_t sh = 0; sh < NSHARDS; sh++)
		tally_buf_free(&live[sh]);
	tally_buf_free(&now);
	tally_buf_free(&saved);
	work_free(&w);
	fx_close(&f);
}

/* ---- damaged and stale snapshots ---------------------------------------------------------- */

static void write_file(const char *path, const uint8_t *p, size_t n)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	cr_assert_geq(fd, 0);
	cr_assert_eq(tally_write_all(fd, p, n), 0);
	close(fd);
}

static void assert_load_fails(fx *f, const tally_map *m, const char *path, const char *why)
{
	tally_store *st = tally_store_alloc(f->dir, false, 64u << 20);
	tally_err err;
	tally_err_clear(&err);
	cr_assert_eq(tally_store_load(st, m, &err), -1, "%s: loaded", why);
	cr_assert_str_eq(err.sqlstate, TALLY_SQLSTATE_DATA_CORRUPTED, "%s: %s", why, err.message);
	cr_assert_not_null(strstr(err.message, path), "%s: message does not name the file: %s", why,
			   err.message);
	tally_store_free(st);
}

Test(store, corrupt_snapshot_is_refused, .timeout = 60)
{
	fx f;
	fx_open(&f);
	srand(5);
	model m;
	memset(&m, 0, sizeof m);
	workload w = {0};
	work_send(&f, &m, &w, 20, 400);
	tally_err err;
	tally_err_clear(&err);
	cr_assert_eq(tally_store_checkpoint(f.st, f.wal, &err), 0, "%s", err.message);
	cr_assert_eq(snap_count(&f), 2);
	char path[256];
	snap_path(&f, 1, path, sizeof path);
	tally_buf orig = {0}, dmg = {0};
	cr_assert_eq(tally_file_read(path, &orig), 0, "cannot read %s", path);
	cr_assert_gt(orig.len, 64);

	const size_t flips[] = {0, 13, orig.len / 2, orig.len - 5, orig.len - 1};
	for (size_t i = 0; i < sizeof flips / sizeof flips[0]; i++) {
		tally_buf_reset(&dmg);
		tally_buf_append(&dmg, orig.data, orig.len);
		dmg.data[flips[i]] ^= 0x20;
		write_file(path, dmg.data, dmg.len);
		assert_load_fails(&f, f.map, path, "a flipped byte");
	}
	const size_t cuts[] = {1, 4, orig.len / 3, orig.len - 1, orig.len};
	for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
		write_file(path, orig.data, orig.len - cuts[i]);
		assert_load_fails(&f, f.map, path, "a truncated file");
	}
	/* the intact file loads again */
	write_file(path, orig.data, orig.len);
	tally_store *st = tally_store_alloc(f.dir, false, 64u << 20);
	cr_assert_eq(tally_store_load(st, f.map, &err), 0, "%s", err.message);
	for (uint32_t sh = 0; sh < NSHARDS; sh++)
		check_shard(st, f.v, sh, &m);
	tally_store_free(st);
	/* a leftover temp file of an interrupted checkpoint is removed, not loaded */
	char tmp[300];
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	write_file(tmp, (const uint8_t *)"junk", 4);
	st = tally_store_alloc(f.dir, false, 64u << 20);
	cr_assert_eq(tally_store_load(st, f.map, &err), 0, "%s", err.message);
	cr_assert_neq(access(tmp, F_OK), 0, "the temp file is still there");
	tally_store_free(st);
	tally_buf_free(&orig);
	tally_buf_free(&dmg);
	work_free(&w);
	fx_close(&f);
}

Test(store, dropped_view_snapshots_and_shards_go, .timeout = 60)
{
	fx f;
	fx_open(&f);
	srand(11);
	model m;
	memset(&m, 0, sizeof m);
	workload w = {0};
	work_send(&f, &m, &w, 20, 400);
	tally_err err;
	tally_err_clear(&err);
	cr_assert_eq(tally_store_checkpoint(f.st, f.wal, &err), 0, "%s", err.message);
	cr_assert_eq(snap_count(&f), 2);

	/* the map drops the view: sync drops the shards, the next checkpoint their files */
	tally_map *gone = map_make(2, NULL);
	tally_store_sync(f.st, gone);
	tally_store_shard_stats s;
	cr_assert_eq(tally_store_stats(f.st, 2, 0, &s), -1);
	cr_assert_eq(tally_store_stats(f.st, 2, 1, &s), -1);
	cr_assert_eq(snap_count(&f), 2);
	cr_assert_eq(tally_store_checkpoint(f.st, f.wal, &err), 0, "%s", err.message);
	cr_assert_eq(snap_count(&f), 0);
	/* a batch decided on the older map does not bring the shard back */
	tally_buf b = {0};
	const row r = {0, 1};
	batch_make(f.v, 3, 1, 0, &r, 1, &b);
	cr_assert_eq(apply_buf(&f, &b, &err), -1);
	cr_assert_str_eq(err.sqlstate, TALLY_SQLSTATE_UNDEFINED_TABLE);
	cr_assert_eq(tally_store_stats(f.st, 2, 0, &s), -1);
	/* nor does replaying a record of it with the new map */
	cr_assert_eq(tally_store_replay(f.st, gone, 1, TALLY_REC_APPLY, 1,
					1 + TALLY_WAL_HDR + (uint32_t)b.len, b.data,
					(uint32_t)b.len, &err),
		     0, "%s", err.message);
	cr_assert_eq(tally_store_stats(f.st, 2, 0, &s), -1);

	/* snapshots on disk of a view the map no longer has: load removes them */
	tally_store_free(f.st);
	f.st = tally_store_alloc(f.dir, false, 64u << 20);
	memset(&m, 0, sizeof m);
	work_free(&w);
	memset(&w, 0, sizeof w);
	work_send(&f, &m, &w, 10, 100);
	cr_assert_eq(tally_store_checkpoint(f.st, f.wal, &err), 0, "%s", err.message);
	cr_assert_eq(snap_count(&f), 2);
	/* a map that is older than the view (its next id not past it) says nothing about it:
	 * load and replay refuse instead of treating the view as dropped */
	tally_map *old = map_make(1, NULL);
	old->cat->next_id = 2;
	tally_store *st = tally_store_alloc(f.dir, false, 64u << 20);
	cr_assert_eq(tally_store_load(st, old, &err), -1, "a snapshot newer than the map loaded");
	cr_assert_str_eq(err.sqlstate, TALLY_SQLSTATE_DATA_CORRUPTED);
	cr_assert_eq(snap_count(&f), 2, "snapshots of a view newer than the map were removed");
	tally_store_free(st);
	st = tally_store_alloc(f.dir, false, 64u << 20);
	tally_err_clear(&err);
	cr_assert_eq(tally_store_replay(st, old, 1, TALLY_REC_APPLY, 1,
					1 + TALLY_WAL_HDR + (uint32_t)b.len, b.data,
					(uint32_t)b.len, &err),
		     -1, "a record of a view newer than the map was skipped");
	cr_assert_str_eq(err.sqlstate, TALLY_SQLSTATE_DATA_CORRUPTED);
	tally_store_free(st);
	tally_map_put(old);
	st = tally_store_alloc(f.dir, false, 64u << 20);
	cr_assert_eq(tally_store_load(st, gone, &err), 0, "%s", err.message);
	cr_assert_eq(tally_store_stats(st, 2, 0, &s), -1);
	cr_assert_eq(tally_store_stats(st, 2, 1, &s), -1);
	cr_assert_eq(snap_count(&f), 0);
	tally_store_free(st);
	tally_map_put(gone);
	tally_buf_free(&b);
	work_free(&w);
	fx_close(&f);
}

Test(store, changed_aggregates_are_refused, .timeout = 60)
{
	fx f;
	fx_open(&f);
	srand(3);
	model m;
	memset(&m, 0, sizeof m);
	workload w = {0};
	work_send(&f, &m, &w, 20, 400);
	tally_err err;
	tally_err_clear(&err);
	cr_assert_eq(tally_store_checkpoint(f.st, f.wal, &err), 0, "%s", err.message);
	char path[256];
	snap_path(&f, 0, path, sizeof path);

	/* same view id, same number of aggregates in another order */
	tally_map *swapped =
	    map_make(2, "SELECT k, count(*), sum(v), max(v), min(v) FROM s GROUP BY k");
	assert_load_fails(&f, swapped, "/snap/", "min/max swapped");
	/* fewer aggregates */
	tally_map *fewer = map_make(2, "SELECT k, count(*), sum(v) FROM s GROUP BY k");
	assert_load_fails(&f, fewer, "/snap/", "fewer aggregates");
	/* another argument type */
	tally_map *other =
	    map_make(2, "SELECT k, count(*), sum(k), min(v), max(v) FROM s GROUP BY k");
	assert_load_fails(&f, other, "/snap/", "sum over another column type");
	(void)path;

	/* live: a batch decided on the other definition is refused by the shard */
	const tally_view_rt *sv = tally_map_view(swapped, "v");
	tally_buf b = {0};
	const row r = {0, 1};
	batch_make(sv, 9, 1, 0, &r, 1, &b);
	tally_store_shard_stats before = stats_of(f.st, 0);
	tally_wal_stats w0, w1;
	tally_wal_stats_get(f.wal, &w0);
	cr_assert_eq(apply_body(&f, sv, b.data, b.len, &err), -1);
	tally_wal_stats_get(f.wal, &w1);
	cr_assert_eq(w1.insert_lsn, w0.insert_lsn);
	cr_assert_eq(stats_of(f.st, 0).batches, before.batches);
	check_shard(f.st, f.v, 0, &m);
	/* and the intact definition still loads what was saved */
	tally_store *st = tally_store_alloc(f.dir, false, 64u << 20);
	cr_assert_eq(tally_store_load(st, f.map, &err), 0, "%s", err.message);
	for (uint32_t sh = 0; sh < NSHARDS; sh++)
		check_shard(st, f.v, sh, &m);
	tally_store_free(st);
	tally_map_put(swapped);
	tally_map_put(fewer);
	tally_map_put(other);
	tally_buf_free(&b);
	work_free(&w);
	fx_close(&f);
}

/* A snapshot whose checksum is right but whose contents do not add up is refused too: the
 * reader checks every count against what is left instead of trusting the file. */
static void reseal(tally_buf *b)
{
	tally_put_be32(b->data + b->len - 4, tally_crc32c(0, b->data, b->len - 4));
}

Test(store, inconsistent_snapshot_with_good_checksum_is_refused, .timeout = 60)
{
	fx f;
	fx_open(&f);
	srand(17);
	model m;
	memset(&m, 0, sizeof m);
	workload w = {0};
	work_send(&f, &m, &w, 30, 600);
	tally_err err;
	tally_err_clear(&err);
	cr_assert_eq(tally_store_checkpoint(f.st, f.wal, &err), 0, "%s", err.message);
	char path[256];
	snap_path(&f, 0, path, sizeof path);
	tally_buf orig = {0}, b = {0};
	cr_assert_eq(tally_file_read(path, &orig), 0);

	/* layout: magic, version, view, shard, lsn, gen, rlsn, naggs, 3 bytes per aggregate,
	 * ndd, dedup entries (origin, hi, n, n seqs), u64 ngroups, groups, crc */
	const size_t naggs_off = 44, ndd_off = 48 + 3 * (size_t)f.v->plan->naggs;
	cr_assert_eq(tally_be32(orig.data + naggs_off), (uint32_t)f.v->plan->naggs);
	uint32_t ndd = tally_be32(orig.data + ndd_off);
	cr_assert_geq(ndd, 1);
	size_t off = ndd_off + 4;
	for (uint32_t i = 0; i < ndd; i++)
		off += 20 + 8 * (size_t)tally_be32(orig.data + off + 16);
	const size_t ngroups_off = off;
	uint64_t ngroups = tally_be64(orig.data + ngroups_off);
	cr_assert_eq(ngroups, stats_of(f.st, 0).groups);

	struct {
		size_t off;
		int width; /* 4 or 8 */
		uint64_t value;
		const char *what;
	} cases[] = {
	    {4, 4, 4, "another format version"},
	    {naggs_off, 4, 5, "another aggregate count"},
	    {ndd_off, 4, 0xFFFFFFFFu, "a huge dedup count"},
	    {ndd_off, 4, ndd + 1, "one dedup entry too many"},
	    {ndd_off + 4, 8, 0, "origin 0"},
	    {ndd_off + 4 + 16, 4, 0xFFFFFFFFu, "a huge out-of-order count"},
	    {ngroups_off, 8, ngroups + 1, "one group too many"},
	    {ngroups_off, 8, ngroups - 1, "one group too few"},
	    {ngroups_off, 8, ~0ull, "a huge group count"},
	    {ngroups_off + 8, 4, 0x7FFFFFFFu, "a huge key length"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		tally_buf_reset(&b);
		tally_buf_append(&b, orig.data, orig.len);
		if (cases[i].width == 4)
			tally_put_be32(b.data + cases[i].off, (uint32_t)cases[i].value);
		else
			tally_put_be64(b.data + cases[i].off, cases[i].value);
		reseal(&b);
		write_file(path, b.data, b.len);
		assert_load_fails(&f, f.map, path, cases[i].what);
	}
	/* groups cut off before the checksum */
	tally_buf_reset(&b);
	tally_buf_append(&b, orig.data, orig.len - 9);
	tally_buf_put_u32(&b, 0);
	reseal(&b);
	write_file(path, b.data, b.len);
	assert_load_fails(&f, f.map, path, "cut groups");
	/* resealing the original bytes gives the original file, which loads */
	tally_buf_reset(&b);
	tally_buf_append(&b, orig.data, orig.len);
	reseal(&b);
	cr_assert_eq(memcmp(b.data, orig.data, orig.len), 0);
	write_file(path, b.data, b.len);
	tally_store *st = tally_store_alloc(f.dir, false, 64u << 20);
	cr_assert_eq(tally_store_load(st, f.map, &err), 0, "%s", err.message);
	check_shard(st, f.v, 0, &m);
	tally_store_free(st);
	tally_buf_free(&orig);
	tally_buf_free(&b);
	work_free(&w);
	fx_close(&f);
}

/* ---- the dedup state's size ----------------------------------------------------------------- */

static int apply_one(fx *f, uint64_t origin, uint64_t seq, uint32_t sh, tally_buf *b,
		     tally_err *err)
{
	const row r = {(int32_t)(seq % (KEYS / 2)) * 2 + (int32_t)sh - KEYS / 2, 1};
	batch_make(f->v, origin, seq, sh, &r, 1, b);
	return apply_body(f, f->v, b->data, b->len, err);
}

Test(store, dedup_state_stays_bounded_when_batches_overtake, .timeout = 60)
{
	fx f;
	fx_open(&f);
	tally_err err;
	tally_buf b = {0};
	/* every batch overtakes its predecessor: 2, 1, 4, 3, ... The ids noted above the
	 * contiguous part must fold in as the holes fill, or the origin runs out of room. */
	const uint64_t n = 70000;
	for (uint64_t i = 0; i < n / 2; i++) {
		cr_assert_eq(apply_one(&f, 77, 2 * i + 2, 0, &b, &err), 0, "seq %llu: %s",
			     (unsigned long long)(2 * i + 2), err.message);
		cr_assert_eq(apply_one(&f, 77, 2 * i + 1, 0, &b, &err), 0, "seq %llu: %s",
			     (unsigned long long)(2 * i + 1), err.message);
	}
	tally_store_shard_stats s = stats_of(f.st, 0);
	cr_assert_eq(s.batches, n);
	cr_assert_eq(s.duplicates, 0);
	cr_assert_eq(s.groups, KEYS / 2);
	cr_assert_eq(apply_one(&f, 77, n / 2, 0, &b, &err), 0, "%s", err.message);
	cr_assert_eq(stats_of(f.st, 0).duplicates, 1);
	tally_buf_free(&b);
	fx_close(&f);
}

Test(store, too_many_overtaking_batches_are_refused_until_the_hole_fills, .timeout = 60)
{
	fx f;
	fx_open(&f);
	tally_err err;
	tally_buf b = {0};
	/* seq 1 is missing; 65536 later batches are noted individually */
	const uint64_t room = 65536;
	for (uint64_t seq = 2; seq <= room + 1; seq++)
		cr_assert_eq(apply_one(&f, 88, seq, 1, &b, &err), 0, "seq %llu: %s",
			     (unsigned long long)seq, err.message);
	tally_store_shard_stats before = stats_of(f.st, 1);
	cr_assert_eq(before.batches, room);
	tally_wal_stats w0, w1;
	tally_wal_stats_get(f.wal, &w0);
	cr_assert_eq(apply_one(&f, 88, room + 2, 1, &b, &err), -1);
	cr_assert_str_eq(err.sqlstate, TALLY_SQLSTATE_INSUFFICIENT_RESOURCES);
	tally_wal_stats_get(f.wal, &w1);
	cr_assert_eq(w1.insert_lsn, w0.insert_lsn);
	cr_assert_eq(stats_of(f.st, 1).batches, before.batches);
	/* resending one already noted is still a duplicate, and another origin is unaffected */
	cr_assert_eq(apply_one(&f, 88, 1000, 1, &b, &err), 0, "%s", err.message);
	cr_assert_eq(stats_of(f.st, 1).duplicates, 1);
	cr_assert_eq(apply_one(&f, 89, 5, 1, &b, &err), 0, "%s", err.message);
	/* the hole fills: everything folds into the contiguous part, room again */
	cr_assert_eq(apply_one(&f, 88, 1, 1, &b, &err), 0, "%s", err.message);
	cr_assert_eq(apply_one(&f, 88, room + 2, 1, &b, &err), 0, "%s", err.message);
	cr_assert_eq(apply_one(&f, 88, room + 100, 1, &b, &err), 0, "%s", err.message);
	tally_store_shard_stats s = stats_of(f.st, 1);
	cr_assert_eq(s.batches, room + 4);
	cr_assert_eq(apply_one(&f, 88, room / 2, 1, &b, &err), 0, "%s", err.message);
	cr_assert_eq(stats_of(f.st, 1).duplicates, 2);
	tally_buf_free(&b);
	fx_close(&f);
}

/* A node checkpoints before its first batch arrives: nothing to write, nothing to load. */
Test(store, empty_store_checkpoints_and_loads, .timeout = 60)
{
	fx f;
	fx_open(&f);
	tally_err err;
	tally_err_clear(&err);
	cr_assert_eq(tally_store_checkpoint(f.st, f.wal, &err), 0, "%s", err.message);
	cr_assert_eq(snap_count(&f), 0);
	tally_store *st = tally_store_alloc(f.dir, false, 64u << 20);
	cr_assert_eq(tally_store_load(st, f.map, &err), 0, "%s", err.message);
	tally_store_shard_stats s;
	cr_assert_eq(tally_store_stats(st, 2, 0, &s), -1);
	tally_store_free(st);
	/* the first batch after it is applied and checkpointed as usual */
	model m;
	memset(&m, 0, sizeof m);
	const row r = {0, 3};
	send_rows(&f, &m, 1, 1, 0, &r, 1);
	cr_assert_eq(tally_store_checkpoint(f.st, f.wal, &err), 0, "%s", err.message);
	cr_assert_eq(snap_count(&f), 1);
	fx_close(&f);
}

/* ---- concurrency ---------------------------------------------------------------------------- */

typedef struct applier {
	fx *f;
	uint64_t origin;
	int nb;
	model m;
	int failures;
	char msg[256];
} applier;

/* Applies nb batches of its own origin to random shards (no Criterion asserts off the main
 * thread: failures are counted and checked after the join). */
static void *applier_run(void *p)
{
	applier *a = p;
	unsigned seed = (unsigned)a->origin;
	uint64_t next[NSHARDS] = {0};
	tally_buf b = {0};
	for (int i = 0; i < a->nb; i++) {
		uint32_t sh = (uint32_t)(rand_r(&seed) % NSHARDS);
		row rows[4];
		for (int j = 0; j < 4; j++)
			rows[j] = (row){(int32_t)(rand_r(&seed) % (KEYS / 2)) * 2 + (int32_t)sh -
					    KEYS / 2,
					(int64_t)rand_r(&seed) - RAND_MAX / 2};
		batch_make(a->f->v, a->origin, ++next[sh], sh, rows, 4, &b);
		tally_rd r;
		tally_rd_init(&r, b.data, b.len);
		tally_msg_apply m;
		tally_err err;
		tally_err_clear(&err);
		uint64_t lsn = 0, rlsn = 0;
		if (tally_msg_get_apply(&r, &m) != 0 ||
		    tally_store_apply(a->f->st, a->f->wal, a->f->v, a->f->map->cat->epoch, 1, 0, &m,
				      b.data, b.len, &r, &lsn, &rlsn, &err) != 0) {
			if (!a->failures++)
				snprintf(a->msg, sizeof a->msg, "batch %d: %s", i, err.message);
			continue;
		}
		model_add(&a->m, sh, rows, 4);
	}
	tally_buf_free(&b);
	return NULL;
}

Test(store, checkpoints_during_applies_recover_exactly, .timeout = 60)
{
	fx f;
	fx_open(&f);
	/* both shards exist before the race starts (an empty store has its own test) */
	model m;
	memset(&m, 0, sizeof m);
	const row first[] = {{-32, 1}, {-31, 2}};
	send_rows(&f, &m, 999, 1, 0, &first[0], 1);
	send_rows(&f, &m, 999, 1, 1, &first[1], 1);
	applier ap[2];
	pthread_t th[2];
	for (int i = 0; i < 2; i++) {
		memset(&ap[i], 0, sizeof ap[i]);
		ap[i].f = &f;
		ap[i].origin = 1000 + (uint64_t)i;
		ap[i].nb = 3000;
		cr_assert_eq(pthread_create(&th[i], NULL, applier_run, &ap[i]), 0);
	}
	/* checkpoint over and over while the appliers run */
	tally_err err;
	tally_err_clear(&err);
	int checkpoints = 0, failed = 0;
	uint64_t done = 0;
	const int64_t deadline = tally_mono_us() + 30 * 1000000;
	/* at least two checkpoints, even if the appliers finish during the first one */
	while ((done < 6002 || checkpoints < 2) && tally_mono_us() < deadline) {
		if (tally_store_checkpoint(f.st, f.wal, &err) != 0)
			failed++;
		checkpoints++;
		done = 0;
		for (uint32_t sh = 0; sh < NSHARDS; sh++) {
			tally_store_shard_stats s;
			if (tally_store_stats(f.st, 2, sh, &s) == 0)
				done += s.batches;
		}
		if (ap[0].failures || ap[1].failures)
			break;
	}
	for (int i = 0; i < 2; i++)
		cr_assert_eq(pthread_join(th[i], NULL), 0);
	cr_assert_eq(failed, 0, "%s", err.message);
	for (int i = 0; i < 2; i++)
		cr_assert_eq(ap[i].failures, 0, "%s", ap[i].msg);
	cr_assert_gt(checkpoints, 1);
	for (uint32_t sh = 0; sh < NSHARDS; sh++)
		for (int k = 0; k < KEYS; k++)
			for (int i = 0; i < 2; i++) {
				const agg_model *e = &ap[i].m.g[sh][k];
				agg_model *t = &m.g[sh][k];
				if (!e->count)
					continue;
				if (!t->count || e->min < t->min)
					t->min = e->min;
				if (!t->count || e->max > t->max)
					t->max = e->max;
				t->count += e->count;
				t->sum += e->sum;
			}
	tally_buf live[NSHARDS] = {{0}}, now = {0};
	for (uint32_t sh = 0; sh < NSHARDS; sh++) {
		check_shard(f.st, f.v, sh, &m);
		dump_sorted(f.st, f.v, sh, &live[sh]);
	}
	/* a crash right now: the last snapshots (taken mid-stream) plus the log give it all */
	restart(&f, true, NULL);
	for (uint32_t sh = 0; sh < NSHARDS; sh++) {
		dump_sorted(f.st, f.v, sh, &now);
		assert_same_dump(&live[sh], &now, "after recovery");
		check_shard(f.st, f.v, sh, &m);
		tally_buf_free(&live[sh]);
	}
	tally_buf_free(&now);
	fx_close(&f);
}

/* ---- replication (DESIGN §6) ------------------------------------------------------------------
 *
 * Two fixtures with maps of two nodes: the primary copies are node 1's (p), the replica copies
 * node 2's (r, its own directory and log). Records travel as worker/repl.c moves them: fetch at
 * the primary for the replica's position, apply at the replica; snapshots by encode/install. */

/* Apply one APPLY body to f's store as node self with flags (header first, as the request
 * handler does); *rlsn gets the copy's position after it. */
static int apply_ex(fx *f, uint32_t self, unsigned flags, const tally_buf *b, uint64_t *rlsn,
		    tally_err *err)
{
	tally_err_clear(err);
	tally_rd r;
	tally_rd_init(&r, b->data, b->len);
	tally_msg_apply a;
	cr_assert_eq(tally_msg_get_apply(&r, &a), 0);
	uint64_t lsn = 0, pos = 0;
	int rc = tally_store_apply(f->st, f->wal, f->v, f->map->cat->epoch, self, flags, &a,
				   b->data, b->len, &r, &lsn, &pos, err);
	if (rc == 0)
		cr_assert_gt(lsn, 0);
	if (rlsn)
		*rlsn = pos;
	return rc;
}

static void pos_of(tally_store *st, uint32_t sh, uint64_t *gen, uint64_t *rlsn)
{
	cr_assert_eq(tally_store_pos(st, 2, sh, gen, rlsn), 0, "no copy of shard %u", sh);
}

static uint64_t wal_end(const fx *f)
{
	tally_wal_stats ws;
	tally_wal_stats_get(f->wal, &ws);
	return ws.insert_lsn;
}

/* Fetch for r's position at p (node pself) into recs/o; returns the TALLY_REPL_* code. */
static int fetch_for(fx *p, uint32_t pself, uint32_t sh, uint64_t r_gen, uint64_t r_rlsn,
		     size_t max, tally_buf *recs, tally_repl_out *o)
{
	tally_err err;
	tally_err_clear(&err);
	tally_buf_reset(recs);
	memset(o, 0, sizeof *o);
	o->recs = recs;
	int rc = tally_store_repl_fetch(p->st, p->wal, 2, sh, pself, r_gen, r_rlsn, max, o, &err);
	cr_assert_geq(rc, 0, "fetch: %s", err.message);
	return rc;
}

/* Apply what a fetch returned to r; the replica's position after it in *gen, *rlsn. */
static void apply_out(fx *r, uint32_t sh, const tally_repl_out *o, uint64_t *gen, uint64_t *rlsn)
{
	tally_err err;
	tally_err_clear(&err);
	tally_rd rd;
	tally_rd_init(&rd, o->recs->data, o->recs->len);
	uint64_t fl = 0;
	cr_assert_eq(tally_store_repl_apply(r->st, r->wal, r->v, r->map->cat->epoch, sh, o->gen,
					    o->first, o->rlsn, o->nrec, &rd, gen, rlsn, &fl, &err),
		     0, "repl_apply: %s", err.message);
}

/* Encode p's copy (node pself) and install it at r; checks both report the same position. */
static void ship_snapshot(fx *p, uint32_t pself, fx *r, uint32_t sh)
{
	tally_err err;
	tally_err_clear(&err);
	tally_buf snap = {0};
	uint64_t g1 = 0, r1 = 0, g2 = 0, r2 = 0;
	cr_assert_eq(tally_store_snap_encode(p->st, p->wal, 2, sh, pself, &snap, &g1, &r1, &err), 0,
		     "snap_encode: %s", err.message);
	cr_assert_eq(
	    tally_store_snap_install(r->st, r->wal, r->map, snap.data, snap.len, &g2, &r2, &err), 0,
	    "snap_install: %s", err.message);
	cr_assert_eq(g2, g1);
	cr_assert_eq(r2, r1);
	tally_buf_free(&snap);
}

typedef struct sync_result {
	int rounds;    /* fetch/apply rounds that carried records */
	int snapshots; /* snapshots installed */
	uint32_t max_nrec;
} sync_result;

/* Bring r's copy of shard sh up to p's, as the replicator does, fetching at most max bytes
 * of records at a time. Every round must make progress. */
static sync_result sync_shard(fx *p, fx *r, uint32_t sh, size_t max)
{
	sync_result res = {0};
	tally_buf recs = {0};
	for (int guard = 0;; guard++) {
		cr_assert_lt(guard, 100000, "replication of shard %u makes no progress", sh);
		uint64_t rg = 0, rr = 0;
		(void)tally_store_pos(r->st, 2, sh, &rg, &rr);
		tally_repl_out o;
		int rc = fetch_for(p, 1, sh, rg, rr, max, &recs, &o);
		if (rc == TALLY_REPL_SNAPSHOT) {
			cr_assert_lt(res.snapshots, 3, "snapshot after snapshot");
			ship_snapshot(p, 1, r, sh);
			res.snapshots++;
			continue;
		}
		cr_assert_eq(rc, TALLY_REPL_RECORDS, "shard %u: fetch gave %d", sh, rc);
		if (o.nrec == 0) {
			cr_assert_eq(o.gen, rg);
			cr_assert_eq(o.rlsn, rr);
			break;
		}
		cr_assert_eq(o.first, rr + 1);
		cr_assert_leq(o.first + o.nrec - 1, o.rlsn);
		uint64_t ng, nr;
		apply_out(r, sh, &o, &ng, &nr);
		cr_assert_eq(ng, o.gen);
		cr_assert_eq(nr, rr + o.nrec, "replica at %llu after %u records from %llu",
			     (unsigned long long)nr, o.nrec, (unsigned long long)o.first);
		res.rounds++;
		if (o.nrec > res.max_nrec)
			res.max_nrec = o.nrec;
	}
	tally_buf_free(&recs);
	return res;
}

/* p's and r's copies of sh hold the same groups (byte for byte) at the same position. */
static void assert_same_copy(fx *p, fx *r, uint32_t sh, const char *what)
{
	tally_buf a = {0}, b = {0};
	dump_sorted(p->st, p->v, sh, &a);
	dump_sorted(r->st, r->v, sh, &b);
	char msg[128];
	snprintf(msg, sizeof msg, "%s, shard %u", what, sh);
	assert_same_dump(&a, &b, msg);
	uint64_t g1, r1, g2, r2;
	pos_of(p->st, sh, &g1, &r1);
	pos_of(r->st, sh, &g2, &r2);
	cr_assert_eq(g1, g2, "%s: gen %016llx vs %016llx", msg, (unsigned long long)g1,
		     (unsigned long long)g2);
	cr_assert_eq(r1, r2, "%s: rlsn %llu vs %llu", msg, (unsigned long long)r1,
		     (unsigned long long)r2);
	tally_buf_free(&a);
	tally_buf_free(&b);
}

Test(store, replica_catches_up_by_records_and_keeps_the_dedup_state, .timeout = 30)
{
	fx p, r;
	fx_open_ex(&p, 1, 64u << 20);
	fx_open_ex(&r, 1, 64u << 20);
	srand(23);
	model m;
	memset(&m, 0, sizeof m);
	workload w = {0};
	work_send(&p, &m, &w, 40, 800);
	/* one origin's batches overtaking each other */
	const row ro[] = {{-32, 7}, {0, -9}};
	send_rows(&p, &m, 0x77, 3, 0, &ro[0], 1);
	send_rows(&p, &m, 0x77, 1, 0, &ro[1], 1);
	send_rows(&p, &m, 0x77, 5, 0, &ro[0], 2);
	tally_store_shard_stats ps0 = stats_of(p.st, 0);
	cr_assert_gt(ps0.kept_records, 0, "a primary with replicas keeps its records");
	cr_assert_eq(ps0.kept_records, ps0.rlsn);
	cr_assert_eq(ps0.gen & 0xFFFF, 1, "the history is authored by node 1");

	/* a replica with nothing: records in several small rounds */
	for (uint32_t sh = 0; sh < NSHARDS; sh++) {
		sync_result res = sync_shard(&p, &r, sh, 600);
		cr_assert_gt(res.rounds, 1, "shard %u caught up in %d round(s)", sh, res.rounds);
		cr_assert_eq(res.snapshots, 0);
		assert_same_copy(&p, &r, sh, "after catching up");
		check_shard(r.st, r.v, sh, &m);
		tally_store_shard_stats rs = stats_of(r.st, sh), ps = stats_of(p.st, sh);
		cr_assert_eq(rs.origins, ps.origins);
		cr_assert_eq(rs.batches, ps.batches);
	}

	uint64_t gen, rl, pg, pr;
	pos_of(r.st, 0, &gen, &rl);
	tally_buf recs = {0}, before = {0}, after = {0};
	tally_repl_out o;
	/* a limit below one record still sends one */
	cr_assert_eq(fetch_for(&p, 1, 0, gen, rl - 2, 1, &recs, &o), TALLY_REPL_RECORDS);
	cr_assert_eq(o.nrec, 1);
	cr_assert_eq(o.first, rl - 1);
	cr_assert_eq(o.rlsn, rl);
	cr_assert_gt(o.lag_bytes, 0);

	/* a resend of everything it has changes nothing (not even its log) */
	cr_assert_eq(fetch_for(&p, 1, 0, gen, 0, 1u << 30, &recs, &o), TALLY_REPL_RECORDS);
	cr_assert_eq(o.first, 1);
	cr_assert_eq(o.nrec, rl);
	dump_sorted(r.st, r.v, 0, &before);
	uint64_t w0 = wal_end(&r);
	apply_out(&r, 0, &o, &pg, &pr);
	cr_assert_eq(pg, gen);
	cr_assert_eq(pr, rl);
	cr_assert_eq(wal_end(&r), w0, "a resend was logged again");
	dump_sorted(r.st, r.v, 0, &after);
	assert_same_dump(&before, &after, "after a resend");

	/* a range overlapping what it has: only the new records apply */
	work_send(&p, &m, &w, 6, 60);
	send_rows(&p, &m, 0x77, 2, 0, &ro[1], 1);
	uint64_t prl;
	pos_of(p.st, 0, &pg, &prl);
	cr_assert_gt(prl, rl);
	cr_assert_eq(fetch_for(&p, 1, 0, gen, rl - 2, 1u << 30, &recs, &o), TALLY_REPL_RECORDS);
	cr_assert_eq(o.first, rl - 1);
	cr_assert_eq(o.nrec, prl - rl + 2);
	apply_out(&r, 0, &o, &pg, &pr);
	cr_assert_eq(pr, prl);
	assert_same_copy(&p, &r, 0, "after an overlapping range");
	check_shard(r.st, r.v, 0, &m);
	rl = prl;

	/* a gap: records after one it does not have change nothing */
	work_send(&p, &m, &w, 4, 40);
	send_rows(&p, &m, 0x77, 4, 0, &ro[0], 1);
	pos_of(p.st, 0, &pg, &prl);
	cr_assert_geq(prl, rl + 2);
	cr_assert_eq(fetch_for(&p, 1, 0, gen, rl + 1, 1u << 30, &recs, &o), TALLY_REPL_RECORDS);
	cr_assert_eq(o.first, rl + 2);
	dump_sorted(r.st, r.v, 0, &before);
	w0 = wal_end(&r);
	apply_out(&r, 0, &o, &pg, &pr);
	cr_assert_eq(pg, gen);
	cr_assert_eq(pr, rl, "a gap moved the replica to %llu", (unsigned long long)pr);
	cr_assert_eq(wal_end(&r), w0);
	dump_sorted(r.st, r.v, 0, &after);
	assert_same_dump(&before, &after, "after a gap");
	for (uint32_t sh = 0; sh < NSHARDS; sh++) {
		sync_result res = sync_shard(&p, &r, sh, 600);
		cr_assert_eq(res.snapshots, 0);
		assert_same_copy(&p, &r, sh, "after the gap was filled");
		check_shard(r.st, r.v, sh, &m);
	}

	/* trimmed records are gone: a replica behind them needs a snapshot; later ones stream */
	pos_of(r.st, 0, &gen, &rl);
	tally_store_repl_trim(p.st, 2, 0, gen, rl);
	cr_assert_eq(stats_of(p.st, 0).kept_records, 0);
	cr_assert_eq(stats_of(p.st, 0).kept_bytes, 0);
	cr_assert_eq(fetch_for(&p, 1, 0, gen, rl - 1, 1u << 30, &recs, &o), TALLY_REPL_SNAPSHOT);
	cr_assert_eq(fetch_for(&p, 1, 0, gen, rl, 1u << 30, &recs, &o), TALLY_REPL_RECORDS);
	cr_assert_eq(o.nrec, 0);
	/* trimming another history's positions does nothing */
	tally_store_repl_trim(p.st, 2, 1, gen ^ 0x10000, ~0ull);
	cr_assert_gt(stats_of(p.st, 1).kept_records, 0);
	work_send(&p, &m, &w, 6, 60);
	for (uint32_t sh = 0; sh < NSHARDS; sh++) {
		sync_result res = sync_shard(&p, &r, sh, 600);
		cr_assert_eq(res.snapshots, 0);
		assert_same_copy(&p, &r, sh, "after trim");
		check_shard(r.st, r.v, sh, &m);
	}

	/* "promotion": node 2 applies as the primary; what node 1 applied is a duplicate */
	pos_of(r.st, 0, &gen, &rl);
	tally_store_shard_stats rs0 = stats_of(r.st, 0);
	tally_err err;
	int dups = 0;
	for (int i = 0; i < w.nbodies; i++) {
		if (tally_be32(w.bodies[i].data + 8) != 0)
			continue; /* (home shard, after the u64 origin) */
		w0 = wal_end(&r);
		cr_assert_eq(apply_ex(&r, 2, 0, &w.bodies[i], NULL, &err), 0, "%s", err.message);
		cr_assert_eq(wal_end(&r), w0, "a duplicate was logged");
		dups++;
	}
	cr_assert_gt(dups, 0);
	tally_buf b = {0};
	batch_make(r.v, 0x77, 2, 0, &ro[1], 1, &b); /* applied above its hi at node 1 */
	cr_assert_eq(apply_ex(&r, 2, 0, &b, NULL, &err), 0, "%s", err.message);
	tally_store_shard_stats rs1 = stats_of(r.st, 0);
	cr_assert_eq(rs1.duplicates, rs0.duplicates + (uint64_t)dups + 1);
	cr_assert_eq(rs1.batches, rs0.batches);
	pos_of(r.st, 0, &pg, &pr);
	cr_assert_eq(pg, gen, "a duplicate began a new history");
	cr_assert_eq(pr, rl);
	check_shard(r.st, r.v, 0, &m);
	/* a new batch (the hole in 0x77's seqs) begins node 2's history after the old one */
	batch_make(r.v, 0x77, 6, 0, &ro[1], 1, &b);
	uint64_t nrl = 0;
	cr_assert_eq(apply_ex(&r, 2, 0, &b, &nrl, &err), 0, "%s", err.message);
	model_add(&m, 0, &ro[1], 1);
	pos_of(r.st, 0, &pg, &pr);
	cr_assert_neq(pg, gen);
	cr_assert_eq(pg & 0xFFFF, 2, "new history %016llx not authored by node 2",
		     (unsigned long long)pg);
	cr_assert_eq(pr, rl + 1);
	cr_assert_eq(nrl, pr);
	cr_assert_eq(stats_of(r.st, 0).batches, rs0.batches + 1);
	check_shard(r.st, r.v, 0, &m);

	tally_buf_free(&b);
	tally_buf_free(&recs);
	tally_buf_free(&before);
	tally_buf_free(&after);
	work_free(&w);
	fx_close(&p);
	fx_close(&r);
}

/* One batch (origin, seq) of a few rows to each shard. */
static void one_each(fx *p, model *m, uint64_t origin, uint64_t seq)
{
	for (uint32_t sh = 0; sh < NSHARDS; sh++) {
		const row x[] = {{(int32_t)(seq % 8) * 2 + (int32_t)sh - KEYS / 2, (int64_t)seq},
				 {(int32_t)sh, -(int64_t)seq * 3}};
		send_rows(p, m, origin, seq, sh, x, 2);
	}
}

Test(store, replica_behind_the_kept_records_gets_a_snapshot, .timeout = 30)
{
	fx p, r, o3;
	fx_open_ex(&p, 1, 1); /* keeps only the latest record */
	fx_open_ex(&r, 1, 64u << 20);
	fx_open_ex(&o3, 1, 64u << 20);
	srand(29);
	model m;
	memset(&m, 0, sizeof m);
	workload w = {0};
	work_send(&p, &m, &w, 20, 400);
	for (uint32_t sh = 0; sh < NSHARDS; sh++) {
		tally_store_shard_stats ps = stats_of(p.st, sh);
		cr_assert_gt(ps.rlsn, 1);
		cr_assert_eq(ps.kept_records, 1);
	}
	uint64_t pg, prl, g, rl;
	tally_buf recs = {0};
	tally_repl_out o;
	cr_assert_eq(fetch_for(&p, 1, 0, 0, 0, 1u << 20, &recs, &o), TALLY_REPL_SNAPSHOT);
	pos_of(p.st, 0, &pg, &prl);
	cr_assert_eq(o.gen, pg);
	cr_assert_eq(o.rlsn, prl);

	/* the snapshot gives an equal copy and a file of its own */
	cr_assert_eq(snap_count(&r), 0);
	ship_snapshot(&p, 1, &r, 0);
	assert_same_copy(&p, &r, 0, "after the snapshot");
	check_shard(r.st, r.v, 0, &m);
	cr_assert_eq(snap_count(&r), 1, "install wrote no snapshot file");
	cr_assert_eq(stats_of(r.st, 0).origins, stats_of(p.st, 0).origins);
	sync_result res = sync_shard(&p, &r, 1, 1u << 20);
	cr_assert_eq(res.snapshots, 1);
	cr_assert_eq(res.rounds, 0);
	assert_same_copy(&p, &r, 1, "after the snapshot");

	/* later records stream on top of it (one at a time: only the latest is kept) */
	uint64_t next = 0;
	for (int i = 0; i < 3; i++) {
		one_each(&p, &m, 0x4444, ++next);
		for (uint32_t sh = 0; sh < NSHARDS; sh++) {
			res = sync_shard(&p, &r, sh, 1u << 20);
			cr_assert_eq(res.snapshots, 0, "shard %u: a snapshot where records do", sh);
			assert_same_copy(&p, &r, sh, "records after the snapshot");
			check_shard(r.st, r.v, sh, &m);
		}
	}
	/* (a round with records did happen on some shard) */
	pos_of(r.st, 0, &g, &rl);
	pos_of(p.st, 0, &pg, &prl);
	cr_assert_eq(rl, prl);
	tally_store_shard_stats rs = stats_of(r.st, 0);
	cr_assert_gt(rs.applied_lsn, rs.snapshot_lsn, "nothing streamed after the snapshot");

	tally_err err;
	/* the replica restarts: its snapshot files plus its log give the same copies */
	tally_buf live[NSHARDS] = {{0}}, now = {0};
	for (uint32_t sh = 0; sh < NSHARDS; sh++)
		dump_sorted(r.st, r.v, sh, &live[sh]);
	restart_as(&r, true, NULL, 2, 64u << 20);
	for (uint32_t sh = 0; sh < NSHARDS; sh++) {
		dump_sorted(r.st, r.v, sh, &now);
		assert_same_dump(&live[sh], &now, "replica after restart");
		assert_same_copy(&p, &r, sh, "replica after restart");
		check_shard(r.st, r.v, sh, &m);
		tally_buf_free(&live[sh]);
	}
	/* and it goes on streaming from there */
	one_each(&p, &m, 0x4444, ++next);
	for (uint32_t sh = 0; sh < NSHARDS; sh++) {
		res = sync_shard(&p, &r, sh, 1u << 20);
		cr_assert_eq(res.snapshots, 0);
		assert_same_copy(&p, &r, sh, "streaming after the restart");
		check_shard(r.st, r.v, sh, &m);
	}
	/* the replica's own checkpoint, more records, and another restart */
	tally_err_clear(&err);
	cr_assert_eq(tally_store_checkpoint(r.st, r.wal, &err), 0, "%s", err.message);
	one_each(&p, &m, 0x4444, ++next);
	for (uint32_t sh = 0; sh < NSHARDS; sh++)
		cr_assert_eq(sync_shard(&p, &r, sh, 1u << 20).snapshots, 0);
	restart_as(&r, true, NULL, 2, 64u << 20);
	for (uint32_t sh = 0; sh < NSHARDS; sh++) {
		assert_same_copy(&p, &r, sh, "after the replica's checkpoint and restart");
		check_shard(r.st, r.v, sh, &m);
		cr_assert_eq(sync_shard(&p, &r, sh, 1u << 20).rounds, 0);
	}

	/* a copy on another history (begun by node 3) gets a snapshot too, and then equals */
	const row x[] = {{1, 1000}, {-31, 5}};
	tally_buf b = {0};
	for (uint64_t seq = 1; seq <= 3; seq++) {
		batch_make(o3.v, 0x3333, seq, 1, x, 2, &b);
		cr_assert_eq(apply_ex(&o3, 3, 0, &b, NULL, &err), 0, "%s", err.message);
	}
	pos_of(o3.st, 1, &g, &rl);
	cr_assert_eq(g & 0xFFFF, 3);
	cr_assert_eq(rl, 3);
	cr_assert_eq(fetch_for(&p, 1, 1, g, rl, 1u << 20, &recs, &o), TALLY_REPL_SNAPSHOT);
	pos_of(p.st, 1, &pg, &prl);
	cr_assert_eq(fetch_for(&p, 1, 1, g, prl + 10, 1u << 20, &recs, &o), TALLY_REPL_SNAPSHOT,
		     "another history ahead of the primary is not this one's");
	/* its records do not continue that copy's history: they change nothing */
	cr_assert_eq(fetch_for(&p, 1, 1, pg, prl - 1, 1u << 20, &recs, &o), TALLY_REPL_RECORDS);
	cr_assert_eq(o.nrec, 1);
	uint64_t w0 = wal_end(&o3), ng, nr;
	apply_out(&o3, 1, &o, &ng, &nr);
	cr_assert_eq(ng, g);
	cr_assert_eq(nr, rl);
	cr_assert_eq(wal_end(&o3), w0);
	res = sync_shard(&p, &o3, 1, 1u << 20);
	cr_assert_eq(res.snapshots, 1);
	assert_same_copy(&p, &o3, 1, "the other history replaced");
	check_shard(o3.st, o3.v, 1, &m);

	tally_buf_free(&b);
	tally_buf_free(&now);
	tally_buf_free(&recs);
	work_free(&w);
	fx_close(&p);
	fx_close(&r);
	fx_close(&o3);
}

Test(store, replica_with_what_the_primary_lacks_is_diverged, .timeout = 30)
{
	fx p, r, p2;
	fx_open_ex(&p, 1, 64u << 20);
	fx_open_ex(&r, 1, 64u << 20);
	fx_open_ex(&p2, 1, 64u << 20);
	model m, m2;
	memset(&m, 0, sizeof m);
	memset(&m2, 0, sizeof m2);
	const row x[] = {{0, 1}, {2, 20}, {-4, 300}};
	for (uint64_t seq = 1; seq <= 5; seq++)
		send_rows(&p, &m, 0x55, seq, 0, x, 3);
	sync_result res = sync_shard(&p, &r, 0, 1u << 20);
	cr_assert_eq(res.snapshots, 0);
	uint64_t g, rl;
	pos_of(r.st, 0, &g, &rl);
	cr_assert_eq(g & 0xFFFF, 1);
	cr_assert_eq(rl, 5);

	/* node 1 lost its state: a fresh store begins another history of the shard */
	for (uint64_t seq = 1; seq <= 3; seq++)
		send_rows(&p2, &m2, 0x66, seq, 0, &x[1], 1);
	uint64_t g2, rl2;
	pos_of(p2.st, 0, &g2, &rl2);
	cr_assert_neq(g2, g);
	cr_assert_eq(g2 & 0xFFFF, 1);
	tally_buf before = {0}, after = {0}, recs = {0};
	dump_sorted(p2.st, p2.v, 0, &before);
	tally_repl_out o;
	cr_assert_eq(fetch_for(&p2, 1, 0, g, rl, 1u << 20, &recs, &o), TALLY_REPL_DIVERGED);
	cr_assert_eq(recs.len, 0);
	cr_assert_eq(fetch_for(&p2, 1, 0, g, 1, 1u << 20, &recs, &o), TALLY_REPL_DIVERGED,
		     "a replica behind on a history this node began is still not this one's");
	/* nothing overwritten at either end: the primary's copy is as it was... */
	uint64_t pg, pr;
	pos_of(p2.st, 0, &pg, &pr);
	cr_assert_eq(pg, g2);
	cr_assert_eq(pr, rl2);
	dump_sorted(p2.st, p2.v, 0, &after);
	assert_same_dump(&before, &after, "diverged primary");
	check_shard(p2.st, p2.v, 0, &m2);
	/* ...and its records, even if sent, do not apply to the replica */
	dump_sorted(r.st, r.v, 0, &before);
	cr_assert_eq(fetch_for(&p2, 1, 0, 0, 0, 1u << 20, &recs, &o), TALLY_REPL_RECORDS);
	cr_assert_eq(o.nrec, rl2);
	uint64_t w0 = wal_end(&r);
	apply_out(&r, 0, &o, &pg, &pr);
	cr_assert_eq(pg, g);
	cr_assert_eq(pr, rl);
	cr_assert_eq(wal_end(&r), w0);
	dump_sorted(r.st, r.v, 0, &after);
	assert_same_dump(&before, &after, "diverged replica");
	check_shard(r.st, r.v, 0, &m);

	/* same history, the replica ahead of the primary: diverged too */
	cr_assert_eq(fetch_for(&p, 1, 0, g, rl + 3, 1u << 20, &recs, &o), TALLY_REPL_DIVERGED);
	/* and a node without the copy says so */
	cr_assert_eq(fetch_for(&p2, 1, 1, 0, 0, 1u << 20, &recs, &o), TALLY_REPL_NONE);

	tally_buf_free(&before);
	tally_buf_free(&after);
	tally_buf_free(&recs);
	fx_close(&p);
	fx_close(&r);
	fx_close(&p2);
}

/* ---- hints (DESIGN §5) ---------------------------------------------------------------------- */

/* What a reader gets from one shard: every group of tally_store_read's reply merged per key
 * (a shard's own group and a visible hint's group for the same key come apart). */
static void read_merged(tally_store *st, const tally_view_rt *v, uint32_t sh, agg_model *out)
{
	memset(out, 0, KEYS * sizeof *out);
	tally_buf b = {0};
	tally_store_read(st, v, sh, NULL, 0, &b);
	tally_rd r;
	tally_rd_init(&r, b.data, b.len);
	uint32_t ng;
	cr_assert_eq(tally_rd_u32(&r, &ng), 0);
	const tally_agg_spec *aggs = v->plan->aggs;
	for (uint32_t i = 0; i < ng; i++) {
		const uint8_t *kp;
		uint32_t kl;
		cr_assert_eq(tally_rd_str(&r, &kp, &kl, TALLY_GROUP_KEY_MAX), 0);
		tally_rd kr;
		tally_rd_init(&kr, kp, kl);
		tally_value kv;
		cr_assert_eq(tally_key_decode(&kr, &kv), 0);
		cr_assert(kv.u.i >= -KEYS / 2 && kv.u.i < KEYS / 2);
		agg_model *e = &out[kv.u.i + KEYS / 2];
		agg_model g = {0};
		for (int a = 0; a < v->plan->naggs; a++) {
			_Alignas(16) uint8_t slot[TALLY_AGG_SLOT];
			cr_assert_eq(tally_agg_deserialize(&aggs[a], &r, slot), 0);
			tally_value val;
			cr_assert_eq(tally_agg_finalize(&aggs[a], slot, &val, NULL), 0);
			tally_agg_release(&aggs[a], slot);
			__int128 x = val.type == TALLY_T_NUMERIC ? val.u.n.m : val.u.i;
			switch (aggs[a].kind) {
			case TALLY_AGG_COUNT_STAR:
				g.count = (int64_t)x;
				break;
			case TALLY_AGG_SUM:
				g.sum = x;
				break;
			case TALLY_AGG_MIN:
				g.min = (int64_t)x;
				break;
			case TALLY_AGG_MAX:
				g.max = (int64_t)x;
				break;
			default:
				cr_assert_fail("unexpected aggregate");
			}
		}
		cr_assert_gt(g.count, 0);
		if (e->count == 0 || g.min < e->min)
			e->min = g.min;
		if (e->count == 0 || g.max > e->max)
			e->max = g.max;
		e->count += g.count;
		e->sum += g.sum;
	}
	cr_assert_eq(tally_rd_left(&r), 0);
	tally_buf_free(&b);
}

/* A reader merging shard sh of st gets exactly want (per group: count, sum, min, max). */
static void check_read(tally_store *st, const tally_view_rt *v, uint32_t sh, const agg_model *want,
		       const char *what)
{
	agg_model got[KEYS];
	read_merged(st, v, sh, got);
	for (int k = 0; k < KEYS; k++) {
		const agg_model *a = &got[k], *e = &want[k];
		cr_assert_eq(a->count, e->count, "%s: group %d counts %lld, want %lld", what,
			     k - KEYS / 2, (long long)a->count, (long long)e->count);
		if (!e->count)
			continue;
		cr_assert(a->sum == e->sum, "%s: group %d sum differs", what, k - KEYS / 2);
		cr_assert_eq(a->min, e->min, "%s: group %d min", what, k - KEYS / 2);
		cr_assert_eq(a->max, e->max, "%s: group %d max", what, k - KEYS / 2);
	}
}

/* The one hint row of (view 2, shard sh, home), or a zero row if none. */
static tally_hint_row hint_row(tally_store *st, uint32_t sh, uint32_t home)
{
	tally_hint_row *rows = NULL, out;
	memset(&out, 0, sizeof out);
	size_t n = tally_store_hint_rows(st, &rows);
	int found = 0;
	for (size_t i = 0; i < n; i++)
		if (rows[i].view_id == 2 && rows[i].shard == sh && rows[i].home == home) {
			out = rows[i];
			found++;
		}
	cr_assert_leq(found, 1, "two rows for (%u, %u)", sh, home);
	free(rows);
	return out;
}

static void check_hints(tally_store *st, uint32_t sh, uint32_t home, uint32_t visible,
			uint32_t in_doubt, uint32_t handing_off, const char *what)
{
	tally_hint_row h = hint_row(st, sh, home);
	cr_assert_eq(h.visible, visible, "%s: %u visible hints, want %u", what, h.visible, visible);
	cr_assert_eq(h.in_doubt, in_doubt, "%s: %u in doubt, want %u", what, h.in_doubt, in_doubt);
	cr_assert_eq(h.handing_off, handing_off, "%s: %u handing off, want %u", what, h.handing_off,
		     handing_off);
	cr_assert_eq(h.bytes > 0, visible + in_doubt + handing_off > 0, "%s: bytes", what);
}

static void hint_op(fx *f, uint32_t sh, uint32_t home, int op, const tally_hint_ref *ids,
		    size_t nids, bool changes)
{
	tally_err err;
	tally_err_clear(&err);
	uint64_t fl = 7, rl = 7;
	cr_assert_eq(
	    tally_store_hint_op(f->st, f->wal, f->v, sh, 1, home, op, ids, nids, &fl, &rl, &err), 0,
	    "hint op %d: %s", op, err.message);
	cr_assert_eq(fl == 0, rl == 0, "hint op %d: flush %llu, position %llu", op,
		     (unsigned long long)fl, (unsigned long long)rl);
	if (changes)
		cr_assert_gt(fl, 0, "hint op %d changed nothing", op);
	else
		cr_assert_eq(fl, 0, "hint op %d: nothing to change, yet flush %llu", op,
			     (unsigned long long)fl);
}

/* The hints being handed off for home at shard sh, as ids sorted by (origin, seq); their
 * bodies must equal those given (by id). */
static size_t take_all(fx *f, uint32_t sh, uint32_t home, tally_hint_ref *ids, size_t max,
		       const tally_buf *const *bodies_by_id, const tally_hint_ref *known,
		       size_t nknown)
{
	tally_buf bodies[8];
	memset(bodies, 0, sizeof bodies);
	cr_assert_leq(max, 8);
	size_t n = tally_store_hint_take(f->st, 2, sh, home, max, bodies, ids);
	cr_assert_leq(n, max);
	for (size_t i = 0; i < n; i++) {
		size_t j = 0;
		while (j < nknown &&
		       (known[j].origin != ids[i].origin || known[j].seq != ids[i].seq))
			j++;
		cr_assert_lt(j, nknown, "took an unknown hint (%llu, %llu)",
			     (unsigned long long)ids[i].origin, (unsigned long long)ids[i].seq);
		cr_assert_eq(bodies[i].len, bodies_by_id[j]->len);
		cr_assert_eq(memcmp(bodies[i].data, bodies_by_id[j]->data, bodies[i].len), 0,
			     "hint (%llu, %llu) body changed", (unsigned long long)ids[i].origin,
			     (unsigned long long)ids[i].seq);
	}
	for (size_t i = 0; i < 8; i++)
		tally_buf_free(&bodies[i]);
	/* sort by (origin, seq) for the comparisons */
	for (size_t i = 1; i < n; i++)
		for (size_t j = i;
		     j > 0 && (ids[j - 1].origin > ids[j].origin ||
			       (ids[j - 1].origin == ids[j].origin && ids[j - 1].seq > ids[j].seq));
		     j--) {
			tally_hint_ref t = ids[j];
			ids[j] = ids[j - 1];
			ids[j - 1] = t;
		}
	return n;
}

static void model_merge(agg_model *dst, const agg_model *src)
{
	for (int k = 0; k < KEYS; k++) {
		const agg_model *s = &src[k];
		agg_model *d = &dst[k];
		if (!s->count)
			continue;
		if (!d->count || s->min < d->min)
			d->min = s->min;
		if (!d->count || s->max > d->max)
			d->max = s->max;
		d->count += s->count;
		d->sum += s->sum;
	}
}

enum { H_A1, H_A2, H_B1, H_B2, H_N };

/* The reader's view of the holder's shard 1: its own groups and the visible hints. */
static void want_of(agg_model *want, const model *own, const model *h, const bool *vis)
{
	memset(want, 0, KEYS * sizeof *want);
	model_merge(want, own->g[1]);
	for (int i = 0; i < H_N; i++)
		if (vis[i])
			model_merge(want, h[i].g[1]);
}

/* The replica reads exactly what the holder reads, and counts the same hints. */
static void check_replica(fx *p, fx *r, const agg_model *want, const char *what)
{
	for (uint32_t sh = 0; sh < NSHARDS; sh++) {
		sync_result res = sync_shard(p, r, sh, 1u << 20);
		cr_assert_eq(res.snapshots, 0, "%s: shard %u needed a snapshot", what, sh);
		tally_hint_row a = hint_row(p->st, sh, 1 - sh), b = hint_row(r->st, sh, 1 - sh);
		cr_assert_eq(a.visible, b.visible, "%s: shard %u visible", what, sh);
		cr_assert_eq(a.in_doubt, b.in_doubt, "%s: shard %u in doubt", what, sh);
		cr_assert_eq(a.handing_off, b.handing_off, "%s: shard %u handing off", what, sh);
		cr_assert_eq(a.bytes, b.bytes, "%s: shard %u bytes", what, sh);
		agg_model x[KEYS];
		read_merged(p->st, p->v, sh, x);
		check_read(r->st, r->v, sh, x, what);
	}
	check_read(r->st, r->v, 1, want, what);
}

Test(store, hints_are_kept_apart_handed_off_and_replicated, .timeout = 30)
{
	fx p, r;
	fx_open_ex(&p, 1, 64u << 20);
	fx_open_ex(&r, 1, 64u << 20);
	tally_err err;
	/* shard 1's own groups (odd keys) */
	model own, h[H_N], c1;
	memset(&own, 0, sizeof own);
	memset(h, 0, sizeof h);
	memset(&c1, 0, sizeof c1);
	const row ro[] = {{1, 10}, {3, 20}, {-31, 30}, {1, 40}};
	send_rows(&p, &own, 0x10, 1, 1, ro, 4);
	/* hints for shard 0 held by shard 1; key 1 and 3 are groups shard 1 has too */
	static const struct {
		uint64_t origin, seq;
		row rows[3];
		int n;
		unsigned flags;
	} hs[H_N] = {
	    [H_A1] = {0xA, 1, {{0, 5}, {1, 100}, {2, -7}}, 3, 0},
	    [H_A2] = {0xA, 2, {{4, 9}, {1, -50}}, 2, TALLY_MSG_F_IN_DOUBT},
	    [H_B1] = {0xB, 1, {{0, -1000}, {6, 3}}, 2, 0},
	    [H_B2] = {0xB, 2, {{8, 11}, {3, 77}}, 2, 0},
	};
	tally_buf body[H_N] = {{0}};
	const tally_buf *bodyp[H_N];
	tally_hint_ref ref[H_N];
	for (int i = 0; i < H_N; i++) {
		batch_make_to(p.v, hs[i].origin, hs[i].seq, 0, 1, hs[i].rows, hs[i].n, &body[i]);
		model_add(&h[i], 1, hs[i].rows, hs[i].n);
		bodyp[i] = &body[i];
		ref[i] = (tally_hint_ref){hs[i].origin, hs[i].seq};
	}
	bool vis[H_N] = {0};
	agg_model want[KEYS];
	uint64_t rl0, rl;
	pos_of(p.st, 1, &(uint64_t){0}, &rl0);
	for (int i = H_A1; i <= H_B1; i++) {
		cr_assert_eq(apply_ex(&p, 1, hs[i].flags, &body[i], &rl, &err), 0, "%s",
			     err.message);
		cr_assert_eq(rl, rl0 + 1 + (uint64_t)i, "a hint is a change of the holder");
		vis[i] = !hs[i].flags;
	}
	want_of(want, &own, h, vis);
	check_read(p.st, p.v, 1, want, "visible hints");
	check_hints(p.st, 1, 0, 2, 1, 0, "three hints");
	cr_assert_eq(stats_of(p.st, 1).groups, 3, "hints went into the shard's own groups");

	/* the same hints again are duplicates: nothing changes, nothing is logged */
	for (int i = H_A1; i <= H_B1; i++) {
		uint64_t w0 = wal_end(&p);
		for (unsigned fl = 0; fl <= TALLY_MSG_F_IN_DOUBT; fl += TALLY_MSG_F_IN_DOUBT)
			cr_assert_eq(apply_ex(&p, 1, fl, &body[i], &rl, &err), 0, "%s",
				     err.message);
		cr_assert_eq(wal_end(&p), w0, "a duplicate hint was logged");
		cr_assert_eq(rl, rl0 + 3);
	}
	check_read(p.st, p.v, 1, want, "after duplicates");
	check_hints(p.st, 1, 0, 2, 1, 0, "after duplicates");
	/* a hint for shard 1 held by shard 0 (a copy with nothing else) is counted apart */
	const row rc1[] = {{-29, 4}, {1, 6}};
	tally_buf cb = {0};
	batch_make_to(p.v, 0xC, 1, 1, 0, rc1, 2, &cb);
	cr_assert_eq(apply_ex(&p, 1, 0, &cb, NULL, &err), 0, "%s", err.message);
	model_add(&c1, 0, rc1, 2);
	check_hints(p.st, 0, 1, 1, 0, 0, "hint at shard 0");
	check_hints(p.st, 1, 0, 2, 1, 0, "shard 1 after a hint at shard 0");
	check_read(p.st, p.v, 0, c1.g[0], "shard 0's hint");
	cr_assert_eq(stats_of(p.st, 0).groups, 0);
	/* all of it streams to the replica as records */
	check_replica(&p, &r, want, "hints replicated");

	/* hand-off begins: the hints stop being read and can be taken */
	hint_op(&p, 1, 0, TALLY_HINT_OP_HANDOFF, NULL, 0, true);
	check_hints(p.st, 1, 0, 0, 0, 3, "handing off");
	memset(vis, 0, sizeof vis);
	want_of(want, &own, h, vis);
	check_read(p.st, p.v, 1, want, "handing off");
	check_read(p.st, p.v, 0, c1.g[0], "shard 0 while shard 1 hands off");
	tally_hint_ref got[8];
	cr_assert_eq(take_all(&p, 1, 0, got, 8, bodyp, ref, H_N), 3);
	cr_assert(got[0].origin == 0xA && got[0].seq == 1 && got[1].origin == 0xA &&
		      got[1].seq == 2 && got[2].origin == 0xB && got[2].seq == 1,
		  "took the wrong hints");
	cr_assert_eq(take_all(&p, 1, 0, got, 2, bodyp, ref, H_N), 2);
	cr_assert_eq(take_all(&p, 0, 1, got, 8, bodyp, ref, H_N), 0,
		     "shard 0's hint is not handed off");
	hint_op(&p, 1, 0, TALLY_HINT_OP_HANDOFF, NULL, 0, false);
	check_replica(&p, &r, want, "handing off replicated");

	/* the home shard took A1: dropped; the rest may have reached it: back, in doubt */
	hint_op(&p, 1, 0, TALLY_HINT_OP_DROP, &ref[H_A1], 1, true);
	check_hints(p.st, 1, 0, 0, 0, 2, "after drop");
	cr_assert_eq(take_all(&p, 1, 0, got, 8, bodyp, ref, H_N), 2);
	cr_assert(got[0].origin == 0xA && got[0].seq == 2 && got[1].origin == 0xB &&
		      got[1].seq == 1,
		  "drop removed the wrong hints");
	check_read(p.st, p.v, 1, want, "after drop");
	check_replica(&p, &r, want, "drop replicated");
	hint_op(&p, 1, 0, TALLY_HINT_OP_REVERT, NULL, 0, true);
	check_hints(p.st, 1, 0, 0, 2, 0, "after revert");
	want_of(want, &own, h, vis);
	check_read(p.st, p.v, 1, want, "after revert");
	cr_assert_eq(take_all(&p, 1, 0, got, 8, bodyp, ref, H_N), 0);
	check_replica(&p, &r, want, "revert replicated");
	/* A1 was handed off: sent again, it is still a duplicate here */
	uint64_t w0 = wal_end(&p);
	cr_assert_eq(apply_ex(&p, 1, 0, &body[H_A1], NULL, &err), 0, "%s", err.message);
	cr_assert_eq(wal_end(&p), w0, "a dropped hint was taken again");
	check_hints(p.st, 1, 0, 0, 2, 0, "A1 again");

	/* a checkpoint (snapshot format 3), then more: B2 visible and being handed off */
	tally_err_clear(&err);
	cr_assert_eq(tally_store_checkpoint(p.st, p.wal, &err), 0, "%s", err.message);
	char path[256];
	snap_path(&p, 1, path, sizeof path);
	tally_buf file = {0};
	cr_assert_eq(tally_file_read(path, &file), 0);
	cr_assert_geq(file.len, 8);
	cr_assert_eq(tally_be32(file.data + 4), 3, "snapshot format %u", tally_be32(file.data + 4));
	tally_buf_free(&file);
	cr_assert_eq(apply_ex(&p, 1, 0, &body[H_B2], NULL, &err), 0, "%s", err.message);
	hint_op(&p, 1, 0, TALLY_HINT_OP_HANDOFF, &ref[H_B2], 1, true);
	check_hints(p.st, 1, 0, 0, 2, 1, "B2 handing off");
	check_read(p.st, p.v, 1, want, "B2 handing off");
	agg_model live[KEYS];
	read_merged(p.st, p.v, 1, live);

	/* restarts: snapshot + log, and log alone, give the same hints in the same states */
	for (int load = 1; load >= 0; load--) {
		const char *what = load ? "after snapshot + log" : "after the log alone";
		restart_as(&p, load, NULL, 1, 64u << 20);
		check_hints(p.st, 1, 0, 0, 2, 1, what);
		check_hints(p.st, 0, 1, 1, 0, 0, what);
		check_read(p.st, p.v, 1, live, what);
		check_read(p.st, p.v, 0, c1.g[0], what);
		cr_assert_eq(take_all(&p, 1, 0, got, 8, bodyp, ref, H_N), 1, "%s", what);
		cr_assert(got[0].origin == 0xB && got[0].seq == 2, "%s", what);
		w0 = wal_end(&p);
		for (int i = 0; i < H_N; i++)
			cr_assert_eq(apply_ex(&p, 1, 0, &body[i], NULL, &err), 0, "%s",
				     err.message);
		cr_assert_eq(wal_end(&p), w0, "%s: a hint was no longer a duplicate", what);
	}
	/* B2 comes back in doubt (its hand-off may have reached the home shard) */
	hint_op(&p, 1, 0, TALLY_HINT_OP_REVERT, NULL, 0, true);
	check_hints(p.st, 1, 0, 0, 3, 0, "B2 reverted");
	want_of(want, &own, h, vis);
	check_read(p.st, p.v, 1, want, "B2 reverted");
	check_replica(&p, &r, want, "after the holder's restarts");
	/* and the replica restarts to the same */
	restart_as(&r, true, NULL, 2, 64u << 20);
	check_read(r.st, r.v, 1, want, "replica restarted");
	check_hints(r.st, 1, 0, 0, 3, 0, "replica restarted");
	check_read(r.st, r.v, 0, c1.g[0], "replica restarted");
	/* the replica has the hints' dedup state: promoted, it knows them all */
	w0 = wal_end(&r);
	for (int i = 0; i < H_N; i++)
		cr_assert_eq(apply_ex(&r, 2, 0, &body[i], NULL, &err), 0, "%s", err.message);
	cr_assert_eq(apply_ex(&r, 2, 0, &cb, NULL, &err), 0, "%s", err.message);
	cr_assert_eq(wal_end(&r), w0, "a promoted replica took a hint again");
	/* a snapshot carries the hints too, in their states */
	fx r2;
	fx_open_ex(&r2, 1, 64u << 20);
	hint_op(&p, 1, 0, TALLY_HINT_OP_HANDOFF, &ref[H_B1], 1, true);
	vis[H_B1] = false;
	want_of(want, &own, h, vis);
	for (uint32_t sh = 0; sh < NSHARDS; sh++)
		ship_snapshot(&p, 1, &r2, sh);
	check_hints(r2.st, 1, 0, 0, 2, 1, "snapshot with hints");
	check_hints(r2.st, 0, 1, 1, 0, 0, "snapshot with hints");
	check_read(r2.st, r2.v, 1, want, "snapshot with hints");
	check_read(r2.st, r2.v, 0, c1.g[0], "snapshot with hints");
	check_replica(&p, &r2, want, "records after a snapshot with hints");
	fx_close(&r2);

	for (int i = 0; i < H_N; i++)
		tally_buf_free(&body[i]);
	tally_buf_free(&cb);
	fx_close(&p);
	fx_close(&r);
}

Test(store, replica_is_current_only_at_its_primarys_position, .timeout = 30)
{
	fx p, r;
	fx_open_ex(&p, 1, 1);
	fx_open_ex(&r, 1, 64u << 20);
	model m;
	memset(&m, 0, sizeof m);
	cr_assert_eq(tally_store_current(r.st, 2, 0), -1, "no copy yet");
	for (uint64_t seq = 1; seq <= 3; seq++)
		one_each(&p, &m, 0x99, seq);
	cr_assert_eq(tally_store_current(p.st, 2, 0), 0, "a primary copy never heard of one");
	/* a copy from a snapshot has heard nothing from its primary yet */
	ship_snapshot(&p, 1, &r, 0);
	assert_same_copy(&p, &r, 0, "snapshot");
	cr_assert_eq(tally_store_current(r.st, 2, 0), 0, "current before any REPL");
	uint64_t g, rl, pg, pr, fl;
	pos_of(r.st, 0, &g, &rl);
	tally_err err;
	tally_err_clear(&err);
	tally_rd rd;
	tally_rd_init(&rd, NULL, 0);
	/* an empty REPL saying the primary is where it is */
	cr_assert_eq(tally_store_repl_apply(r.st, r.wal, r.v, 1, 0, g, rl + 1, rl, 0, &rd, &pg, &pr,
					    &fl, &err),
		     0, "%s", err.message);
	cr_assert_eq(pr, rl);
	cr_assert_eq(tally_store_current(r.st, 2, 0), 1, "at its primary's position");
	/* the primary moved on: behind until the record arrives */
	one_each(&p, &m, 0x99, 4);
	tally_buf recs = {0};
	tally_repl_out o;
	cr_assert_eq(fetch_for(&p, 1, 0, g, rl, 1u << 20, &recs, &o), TALLY_REPL_RECORDS);
	cr_assert_eq(o.nrec, 1);
	tally_rd_init(&rd, NULL, 0);
	cr_assert_eq(tally_store_repl_apply(r.st, r.wal, r.v, 1, 0, g, rl + 1, o.rlsn, 0, &rd, &pg,
					    &pr, &fl, &err),
		     0, "%s", err.message);
	cr_assert_eq(tally_store_current(r.st, 2, 0), 0, "current while its primary is ahead");
	apply_out(&r, 0, &o, &pg, &pr);
	cr_assert_eq(pr, o.rlsn);
	cr_assert_eq(tally_store_current(r.st, 2, 0), 1, "not current after catching up");
	/* records of another history (with the primary's word on them) do not make it current */
	tally_rd_init(&rd, NULL, 0);
	cr_assert_eq(tally_store_repl_apply(r.st, r.wal, r.v, 1, 0, g ^ 0x10000, 1, pr, 0, &rd, &pg,
					    &pr, &fl, &err),
		     0, "%s", err.message);
	cr_assert_eq(pg, g);
	cr_assert_eq(tally_store_current(r.st, 2, 0), 0, "current on another history");
	tally_buf_free(&recs);
	fx_close(&p);
	fx_close(&r);
}
