/*
 * fuzz_codec.c - fuzz target for the node-to-node wire codec. The input is first taken as a
 * whole message: tally_msg_open, then the body decoder its type calls for (ERROR, REGISTER,
 * HEARTBEAT, APPLY and READ_OK with their groups merged into a group table, READ, the
 * catalog-carrying replies, DDL_OK). Independently of the header, the bytes after the first
 * are run through every body decoder, through tally_group_merge_encoded with a fixed list of
 * aggregates (every kind, several argument types, text min/max included) and through a
 * tally_key_decode loop, so the fuzzer does not have to find a valid header to reach them.
 * Decoded values, merged states and finalized aggregates are formatted; a decoded key is
 * re-encoded and must decode to the same value again.
 */
#include "fuzz.h"

#include "tally/catalog.h"
#include "tally/codec.h"
#include "tally/group.h"
#include "tally/node.h"

static const tally_agg_spec agg_template[] = {
    {TALLY_AGG_COUNT_STAR, TALLY_T_UNKNOWN, 0}, {TALLY_AGG_COUNT, TALLY_T_TEXT, 0},
    {TALLY_AGG_SUM, TALLY_T_INT4, 0},		{TALLY_AGG_SUM, TALLY_T_INT8, 0},
    {TALLY_AGG_SUM, TALLY_T_FLOAT8, 0},		{TALLY_AGG_SUM, TALLY_T_FLOAT4, 0},
    {TALLY_AGG_AVG, TALLY_T_INT2, 0},		{TALLY_AGG_AVG, TALLY_T_INT8, 0},
    {TALLY_AGG_AVG, TALLY_T_FLOAT8, 0},		{TALLY_AGG_MIN, TALLY_T_TEXT, 0},
    {TALLY_AGG_MAX, TALLY_T_TEXT, 0},		{TALLY_AGG_MIN, TALLY_T_TIMESTAMPTZ, 0},
    {TALLY_AGG_MAX, TALLY_T_FLOAT4, 0},		{TALLY_AGG_MIN, TALLY_T_INT8, 0},
    {TALLY_AGG_MAX, TALLY_T_NUMERIC, 0},	{TALLY_AGG_SUM, TALLY_T_NUMERIC, 0},
};
#define NAGG_TEMPLATE ((int)(sizeof agg_template / sizeof agg_template[0]))

/* Which aggregates the groups carry: a few fixed lists, picked by the input. */
static const int agg_lists[][5] = {
    {0, -1},	      {0, 2, 9, -1},   {1, 3, 4, 10, -1}, {5, 6, 7, 8, -1},
    {11, 12, 13, -1}, {14, 15, 0, -1}, {9, 10, 9, -1},	  {-1},
};
#define NLISTS ((int)(sizeof agg_lists / sizeof agg_lists[0]))

static void fmt(const tally_value *v, tally_buf *b)
{
	tally_buf_reset(b);
	if (!v->isnull)
		tally_value_format(v, b);
}

/* Merge up to ngroups encoded groups (or until the reader fails/empties) and finalize. */
static void merge_groups(tally_rd *r, uint32_t ngroups, int list, tally_buf *b)
{
	tally_agg_spec aggs[5];
	int naggs = 0;
	for (int i = 0; agg_lists[list][i] >= 0; i++) {
		aggs[naggs] = agg_template[agg_lists[list][i]];
		tally_err err;
		if (tally_agg_resolve(&aggs[naggs], &err) == 0)
			naggs++;
	}
	tally_arena a = {0};
	a.limit = 256u << 20;
	tally_gtab t;
	tally_gtab_init(&t, aggs, naggs, &a);
	for (uint32_t g = 0; g < ngroups && tally_rd_left(r) > 0; g++) {
		int rc = tally_group_merge_encoded(&t, r);
		FUZZ_CHECK(rc == 0 || rc == -1 || rc == -2);
		if (rc != 0)
			break;
	}
	for (size_t i = 0; i < t.cap; i++) {
		tally_group *grp = t.slots[i].g;
		if (!grp)
			continue;
		FUZZ_CHECK(grp->keylen <= TALLY_GROUP_KEY_MAX);
		for (int k = 0; k < naggs; k++) {
			uint8_t *slot = grp->states + (size_t)k * TALLY_AGG_SLOT;
			tally_value v;
			tally_err err;
			tally_err_clear(&err);
			if (tally_agg_finalize(&aggs[k], slot, &v, &err) == 0) {
				FUZZ_CHECK(v.isnull || v.type == aggs[k].result_type);
				fmt(&v, b);
			} else {
				FUZZ_CHECK(tally_err_isset(&err));
			}
			/* The state serializes and reads back. */
			tally_buf_reset(b);
			tally_agg_serialize(&aggs[k], slot, b);
			tally_rd sr;
			tally_rd_init(&sr, b->data, b->len);
			_Alignas(16) uint8_t copy[TALLY_AGG_SLOT];
			int drc = tally_agg_deserialize(&aggs[k], &sr, copy);
			if (drc != 0 || tally_rd_left(&sr) != 0) {
				fprintf(stderr, "fuzz_codec: %s(%s) state serializes to",
					tally_agg_name(aggs[k].kind),
					tally_type_name(aggs[k].arg_type));
				for (size_t j = 0; j < b->len && j < 64; j++)
					fprintf(stderr, " %02x", b->data[j]);
				fprintf(stderr, " which does not read back (rc %d, %zu left)\n",
					drc, tally_rd_left(&sr));
			}
			FUZZ_CHECK(drc == 0 && tally_rd_left(&sr) == 0);
			/* Merging into an empty state gives the same state. */
			_Alignas(16) uint8_t fresh[TALLY_AGG_SLOT];
			tally_agg_init(&aggs[k], fresh);
			tally_agg_merge(&aggs[k], fresh, copy);
			tally_buf_reset(b);
			tally_agg_serialize(&aggs[k], fresh, b);
			size_t n1 = b->len;
			tally_agg_serialize(&aggs[k], slot, b);
			FUZZ_CHECK(b->len == 2 * n1 && memcmp(b->data, b->data + n1, n1) == 0);
			tally_agg_release(&aggs[k], fresh);
			tally_agg_release(&aggs[k], copy);
		}
	}
	tally_gtab_fini(&t);
	tally_arena_free(&a);
}

static void keys(const uint8_t *p, size_t n, tally_buf *b)
{
	tally_rd r;
	tally_rd_init(&r, p, n);
	tally_buf enc = {0};
	while (tally_rd_left(&r) > 0) {
		tally_value v;
		if (tally_key_decode(&r, &v) != 0)
			break;
		FUZZ_CHECK(v.type < TALLY_T_COUNT_);
		fmt(&v, b);
		/* Re-encoding a decoded key value and decoding it again gives the same value. */
		tally_buf_reset(&enc);
		tally_key_encode(&v, &enc);
		tally_rd r2;
		tally_rd_init(&r2, enc.data, enc.len);
		tally_value w;
		FUZZ_CHECK(tally_key_decode(&r2, &w) == 0 && tally_rd_left(&r2) == 0);
		FUZZ_CHECK(w.isnull == v.isnull);
		if (!v.isnull) {
			FUZZ_CHECK(w.type == v.type);
			if (v.type == TALLY_T_BOOL)
				FUZZ_CHECK(v.u.b == w.u.b);
			else
				FUZZ_CHECK(tally_value_cmp(&v, &w) == 0);
		}
	}
	tally_buf_free(&enc);
}

static void catalog_str(tally_rd *r)
{
	const uint8_t *p;
	uint32_t n;
	if (tally_rd_str(r, &p, &n, TALLY_MSG_MAX) != 0)
		return;
	tally_catalog *c = NULL;
	if (tally_catalog_decode(p, n, &c) == 0)
		tally_catalog_free(c);
}

/* Every body decoder over the same bytes, each with a fresh reader. */
static void all_bodies(const uint8_t *p, size_t n, int list, tally_buf *b)
{
	tally_rd r;
	char st[6], msg[512];
	tally_rd_init(&r, p, n);
	if (tally_msg_get_error(&r, st, msg, sizeof msg) == 0) {
		FUZZ_CHECK(strlen(st) == 5 && strlen(msg) < sizeof msg);
		tally_msg_done(&r);
	}
	tally_msg_register reg;
	tally_rd_init(&r, p, n);
	if (tally_msg_get_register(&r, &reg) == 0)
		FUZZ_CHECK(strnlen(reg.name, sizeof reg.name) < sizeof reg.name &&
			   strnlen(reg.data_addr, sizeof reg.data_addr) < sizeof reg.data_addr &&
			   strnlen(reg.sql_addr, sizeof reg.sql_addr) < sizeof reg.sql_addr);
	tally_msg_heartbeat hb;
	tally_rd_init(&r, p, n);
	tally_msg_get_heartbeat(&r, &hb);
	tally_msg_apply ap;
	tally_rd_init(&r, p, n);
	if (tally_msg_get_apply(&r, &ap) == 0) {
		FUZZ_CHECK(ap.ngroups <= tally_rd_left(&r) / 4);
		merge_groups(&r, ap.ngroups, list, b);
	}
	tally_msg_read rq;
	tally_rd_init(&r, p, n);
	if (tally_msg_get_read(&r, &rq) == 0) {
		FUZZ_CHECK(rq.has_key <= 1);
		if (rq.has_key)
			FUZZ_CHECK(rq.key >= p && rq.key + rq.keylen <= p + n);
	}
	/* READ_OK: u32 ngroups then groups. */
	uint32_t ng;
	tally_rd_init(&r, p, n);
	if (tally_rd_u32(&r, &ng) == 0)
		merge_groups(&r, ng, list, b);
	/* Bare groups over the whole range, and the keys. */
	tally_rd_init(&r, p, n);
	merge_groups(&r, UINT32_MAX, (list + 3) % NLISTS, b);
	keys(p, n, b);
}

static void typed_body(const tally_msg_hdr *h, tally_rd *r, int list, tally_buf *b)
{
	char st[6], msg[512], tag[64];
	uint32_t u32;
	uint64_t u64;
	uint8_t u8;
	switch ((tally_msg_type)h->type) {
	case TALLY_MSG_ERROR:
		if (tally_msg_get_error(r, st, msg, sizeof msg) == 0)
			tally_msg_done(r);
		break;
	case TALLY_MSG_REGISTER: {
		tally_msg_register m;
		if (tally_msg_get_register(r, &m) == 0)
			tally_msg_done(r);
		break;
	}
	case TALLY_MSG_HEARTBEAT: {
		tally_msg_heartbeat m;
		if (tally_msg_get_heartbeat(r, &m) == 0)
			tally_msg_done(r);
		break;
	}
	case TALLY_MSG_APPLY: {
		tally_msg_apply m;
		if (tally_msg_get_apply(r, &m) == 0)
			merge_groups(r, m.ngroups, list, b);
		break;
	}
	case TALLY_MSG_READ: {
		tally_msg_read m;
		if (tally_msg_get_read(r, &m) == 0)
			tally_msg_done(r);
		break;
	}
	case TALLY_MSG_READ_OK:
		if (tally_rd_u32(r, &u32) == 0)
			merge_groups(r, u32, list, b);
		break;
	case TALLY_MSG_REGISTER_OK:
		if (tally_rd_u32(r, &u32) == 0)
			catalog_str(r);
		break;
	case TALLY_MSG_HEARTBEAT_OK:
		if (tally_rd_u64(r, &u64) == 0 && tally_rd_u8(r, &u8) == 0 && u8)
			catalog_str(r);
		break;
	case TALLY_MSG_MAP_PUSH:
	case TALLY_MSG_MAP:
		catalog_str(r);
		break;
	case TALLY_MSG_DDL_OK: {
		tally_err notice, err;
		tally_catalog *c = NULL;
		if (tally_ddl_reply_get(r, tag, sizeof tag, &notice, &c, &err) == 0)
			tally_catalog_free(c);
		else
			FUZZ_CHECK(c == NULL);
		break;
	}
	default:
		break;
	}
	tally_msg_done(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	tally_buf b = {0};
	tally_msg_hdr h;
	tally_rd r;
	int list = size ? data[0] % NLISTS : 0;
	if (tally_msg_open(data, size, &h, &r) == 0) {
		FUZZ_CHECK(h.body_len == size - TALLY_MSG_HDR);
		FUZZ_CHECK(strcmp(tally_msg_type_name(h.type), "UNKNOWN") != 0);
		typed_body(&h, &r, (int)(h.flags % NLISTS), &b);
	}
	if (size > 0)
		all_bodies(data + 1, size - 1, list, &b);
	tally_buf_free(&b);
	return 0;
}
