/*
 * test_codec.c - node-to-node message codec: round trips of every body, rejection of every
 * truncated prefix and of trailing bytes, header validation, and golden bytes that pin the
 * wire format documented in docs/wire-protocol.md.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>

#include "tally/codec.h"

/* Each builder writes one complete message into b. */
typedef void (*build_fn)(tally_buf *b);
/* Each parser decodes a body from r (positioned after the header) and checks the values;
 * returns 0 only when the body decoded and the reader is fully consumed. */
typedef int (*parse_fn)(tally_rd *r, bool check);

static const tally_msg_register reg_in = {"w1", "tcp://127.0.0.1:40123", "127.0.0.1:6433", 42};
static const tally_msg_heartbeat hb_in = {7, 3, 99, 123456789};
static const tally_msg_apply apply_in = {2, 5, 1000001, 999990, 77, 6, 2};
static const uint8_t read_key[] = {1, 2, 0, 4};

static void build_error(tally_buf *b)
{
	tally_msg_begin(b, TALLY_MSG_ERROR, 11, 12);
	tally_msg_put_error(b, "42P01", "relation \"v\" does not exist");
	tally_msg_end(b);
}
static int parse_error(tally_rd *r, bool check)
{
	char st[6], msg[128];
	if (tally_msg_get_error(r, st, msg, sizeof msg) || tally_msg_done(r))
		return -1;
	if (check) {
		cr_assert_str_eq(st, "42P01");
		cr_assert_str_eq(msg, "relation \"v\" does not exist");
	}
	return 0;
}

static void build_register(tally_buf *b)
{
	tally_msg_begin(b, TALLY_MSG_REGISTER, 1, 0);
	tally_msg_put_register(b, &reg_in);
	tally_msg_end(b);
}
static int parse_register(tally_rd *r, bool check)
{
	tally_msg_register m;
	if (tally_msg_get_register(r, &m) || tally_msg_done(r))
		return -1;
	if (check) {
		cr_assert_str_eq(m.name, reg_in.name);
		cr_assert_str_eq(m.data_addr, reg_in.data_addr);
		cr_assert_str_eq(m.sql_addr, reg_in.sql_addr);
		cr_assert_eq(m.incarnation, reg_in.incarnation);
	}
	return 0;
}

static void build_heartbeat(tally_buf *b)
{
	tally_msg_begin(b, TALLY_MSG_HEARTBEAT, 2, 5);
	tally_msg_put_heartbeat(b, &hb_in);
	tally_msg_end(b);
}
static int parse_heartbeat(tally_rd *r, bool check)
{
	tally_msg_heartbeat m;
	if (tally_msg_get_heartbeat(r, &m) || tally_msg_done(r))
		return -1;
	if (check)
		cr_assert(m.node_id == hb_in.node_id && m.incarnation == hb_in.incarnation &&
			  m.known_epoch == hb_in.known_epoch && m.mem_bytes == hb_in.mem_bytes);
	return 0;
}

/* APPLY with two groups: str key + an opaque 3-byte "state" each (the caller's part). */
static void build_apply(tally_buf *b)
{
	tally_msg_begin(b, TALLY_MSG_APPLY, 3, 9);
	tally_msg_put_apply(b, &apply_in);
	for (int g = 0; g < 2; g++) {
		uint8_t key[2] = {(uint8_t)g, 0xAA};
		tally_buf_put_str(b, (const char *)key, 2);
		tally_buf_append(b, "st", 2);
		tally_buf_putc(b, (uint8_t)g);
	}
	tally_msg_end(b);
}
static int parse_apply(tally_rd *r, bool check)
{
	tally_msg_apply m;
	if (tally_msg_get_apply(r, &m))
		return -1;
	for (uint32_t g = 0; g < m.ngroups; g++) {
		const uint8_t *k, *st;
		uint32_t kl;
		if (tally_rd_str(r, &k, &kl, 64) || tally_rd_bytes(r, &st, 3))
			return -1;
		if (check)
			cr_assert(kl == 2 && k[0] == g && k[1] == 0xAA && st[2] == g);
	}
	if (tally_msg_done(r))
		return -1;
	if (check)
		cr_assert(m.origin == apply_in.origin && m.home_shard == apply_in.home_shard &&
			  m.seq == apply_in.seq && m.floor == apply_in.floor &&
			  m.view_id == apply_in.view_id &&
			  m.target_shard == apply_in.target_shard && m.ngroups == 2);
	return 0;
}

static void build_read_key(tally_buf *b)
{
	tally_msg_read m = {88, 3, 1, read_key, sizeof read_key};
	tally_msg_begin(b, TALLY_MSG_READ, 4, 10);
	tally_msg_put_read(b, &m);
	tally_msg_end(b);
}
static int parse_read_key(tally_rd *r, bool check)
{
	tally_msg_read m;
	if (tally_msg_get_read(r, &m) || tally_msg_done(r))
		return -1;
	if (check) {
		cr_assert(m.view_id == 88 && m.shard == 3 && m.has_key == 1);
		cr_assert_eq(m.keylen, sizeof read_key);
		cr_assert_arr_eq(m.key, read_key, sizeof read_key);
	}
	return 0;
}

static void build_read_nokey(tally_buf *b)
{
	tally_msg_read m = {89, 0, 0, NULL, 0};
	tally_msg_begin(b, TALLY_MSG_READ, 5, 10);
	tally_msg_put_read(b, &m);
	tally_msg_end(b);
}
static int parse_read_nokey(tally_rd *r, bool check)
{
	tally_msg_read m;
	if (tally_msg_get_read(r, &m) || tally_msg_done(r))
		return -1;
	if (check)
		cr_assert(m.view_id == 89 && m.shard == 0 && m.has_key == 0 && m.keylen == 0);
	return 0;
}

static const struct {
	const char *name;
	uint8_t type;
	build_fn build;
	parse_fn parse;
} cases[] = {
    {"ERROR", TALLY_MSG_ERROR, build_error, parse_error},
    {"REGISTER", TALLY_MSG_REGISTER, build_register, parse_register},
    {"HEARTBEAT", TALLY_MSG_HEARTBEAT, build_heartbeat, parse_heartbeat},
    {"APPLY", TALLY_MSG_APPLY, build_apply, parse_apply},
    {"READ", TALLY_MSG_READ, build_read_key, parse_read_key},
    {"READ", TALLY_MSG_READ, build_read_nokey, parse_read_nokey},
};
#define NCASES (sizeof cases / sizeof cases[0])

/* Decode a whole message: header then body. */
static int decode(const uint8_t *p, size_t n, int c, bool check)
{
	tally_msg_hdr h;
	tally_rd r;
	if (tally_msg_open(p, n, &h, &r))
		return -1;
	if (h.type != cases[c].type)
		return -1;
	return cases[c].parse(&r, check);
}

Test(codec, round_trip_every_message, .timeout = 30)
{
	for (size_t c = 0; c < NCASES; c++) {
		tally_buf b = {0};
		cases[c].build(&b);
		tally_msg_hdr h;
		tally_rd r;
		cr_assert_eq(tally_msg_open(b.data, b.len, &h, &r), 0, "%s", cases[c].name);
		cr_assert_eq(h.type, cases[c].type);
		cr_assert_eq(h.body_len, b.len - TALLY_MSG_HDR);
		cr_assert_eq(decode(b.data, b.len, (int)c, true), 0, "%s", cases[c].name);
		cr_assert_str_eq(tally_msg_type_name(h.type), cases[c].name);
		tally_buf_free(&b);
	}
}

Test(codec, header_fields_round_trip, .timeout = 30)
{
	tally_buf b = {0};
	tally_msg_begin(&b, TALLY_MSG_OK, 0xDEADBEEFCAFEF00Dull, UINT64_MAX - 1);
	tally_msg_end(&b);
	tally_msg_hdr h;
	tally_rd r;
	cr_assert_eq(b.len, TALLY_MSG_HDR);
	cr_assert_eq(tally_msg_open(b.data, b.len, &h, &r), 0);
	cr_assert_eq(h.req_id, 0xDEADBEEFCAFEF00Dull);
	cr_assert_eq(h.epoch, UINT64_MAX - 1);
	cr_assert_eq(h.flags, 0);
	cr_assert_eq(h.body_len, 0);
	cr_assert_eq(tally_msg_done(&r), 0);
	/* Reusing a buffer starts over. */
	build_heartbeat(&b);
	tally_msg_begin(&b, TALLY_MSG_GET_MAP, 1, 1);
	tally_msg_end(&b);
	cr_assert_eq(b.len, TALLY_MSG_HDR);
	tally_buf_free(&b);
}

Test(codec, every_truncated_prefix_rejected, .timeout = 30)
{
	for (size_t c = 0; c < NCASES; c++) {
		tally_buf b = {0};
		cases[c].build(&b);
		for (size_t n = 0; n < b.len; n++) {
			/* As sent: the header claims the full body. */
			uint8_t *cut = malloc(n ? n : 1);
			memcpy(cut, b.data, n);
			cr_assert_neq(decode(cut, n, (int)c, false), 0, "%s prefix %zu accepted",
				      cases[c].name, n);
			/* Re-framed: the header is patched to the shorter body, so the body
			 * decoder itself must notice. */
			if (n >= TALLY_MSG_HDR) {
				tally_put_be32(cut + 24, (uint32_t)(n - TALLY_MSG_HDR));
				cr_assert_neq(decode(cut, n, (int)c, false), 0,
					      "%s body prefix %zu accepted", cases[c].name, n);
			}
			free(cut);
		}
		tally_buf_free(&b);
	}
}

Test(codec, trailing_byte_rejected, .timeout = 30)
{
	for (size_t c = 0; c < NCASES; c++) {
		tally_buf b = {0};
		cases[c].build(&b);
		tally_buf_putc(&b, 0);
		/* Header not patched: length mismatch. */
		cr_assert_neq(decode(b.data, b.len, (int)c, false), 0, "%s", cases[c].name);
		/* Header patched: the body has a byte left over. */
		tally_msg_end(&b);
		cr_assert_neq(decode(b.data, b.len, (int)c, false), 0, "%s", cases[c].name);
		tally_buf_free(&b);
	}
}

Test(codec, bad_header_rejected, .timeout = 30)
{
	tally_buf b = {0};
	build_heartbeat(&b);
	tally_msg_hdr h;
	tally_rd r;
	struct {
		size_t off;
		uint8_t val;
	} bad[] = {
	    {0, 0x00}, {1, 0x4D}, {2, 0}, {2, 1}, {2, 3}, {3, 0}, {3, TALLY_MSG_TYPE_LAST + 1},
	    {3, 255},  {6, 1},	  {7, 1}};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		uint8_t save = b.data[bad[i].off];
		b.data[bad[i].off] = bad[i].val;
		cr_assert_neq(tally_msg_open(b.data, b.len, &h, &r), 0, "byte %zu = %u accepted",
			      bad[i].off, bad[i].val);
		b.data[bad[i].off] = save;
	}
	cr_assert_eq(tally_msg_open(b.data, b.len, &h, &r), 0);
	cr_assert_neq(tally_msg_open(NULL, 0, &h, &r), 0);
	/* Every known type opens. */
	for (int t = TALLY_MSG_ERROR; t <= TALLY_MSG_TYPE_LAST; t++) {
		tally_msg_begin(&b, (uint8_t)t, 1, 1);
		tally_msg_end(&b);
		cr_assert_eq(tally_msg_open(b.data, b.len, &h, &r), 0);
		cr_assert_str_neq(tally_msg_type_name((uint8_t)t), "UNKNOWN");
	}
	cr_assert_str_eq(tally_msg_type_name(99), "UNKNOWN");
	tally_buf_free(&b);
}

Test(codec, oversized_strings_rejected, .timeout = 30)
{
	/* A REGISTER whose name is 64 bytes does not fit name[64]. */
	tally_buf b = {0};
	char longname[65];
	memset(longname, 'a', 64);
	longname[64] = 0;
	tally_msg_begin(&b, TALLY_MSG_REGISTER, 1, 0);
	tally_buf_put_str(&b, longname, 64);
	tally_buf_put_str(&b, "x", 1);
	tally_buf_put_str(&b, "y", 1);
	tally_buf_put_u64(&b, 1);
	tally_msg_end(&b);
	tally_msg_hdr h;
	tally_rd r;
	tally_msg_register m;
	memset(&m, 0x5A, sizeof m);
	cr_assert_eq(tally_msg_open(b.data, b.len, &h, &r), 0);
	cr_assert_neq(tally_msg_get_register(&r, &m), 0);
	cr_assert_eq((uint8_t)m.name[0], 0x5A, "output written on failure");

	/* 63 bytes fit. */
	tally_msg_begin(&b, TALLY_MSG_REGISTER, 1, 0);
	tally_buf_put_str(&b, longname, 63);
	tally_buf_put_str(&b, "x", 1);
	tally_buf_put_str(&b, "y", 1);
	tally_buf_put_u64(&b, 1);
	tally_msg_end(&b);
	cr_assert_eq(tally_msg_open(b.data, b.len, &h, &r), 0);
	cr_assert_eq(tally_msg_get_register(&r, &m), 0);
	cr_assert_eq(strlen(m.name), 63);

	/* An embedded NUL is rejected rather than silently cut. */
	tally_msg_begin(&b, TALLY_MSG_REGISTER, 1, 0);
	tally_buf_put_str(&b, "w\0x", 3);
	tally_buf_put_str(&b, "x", 1);
	tally_buf_put_str(&b, "y", 1);
	tally_buf_put_u64(&b, 1);
	tally_msg_end(&b);
	cr_assert_eq(tally_msg_open(b.data, b.len, &h, &r), 0);
	cr_assert_neq(tally_msg_get_register(&r, &m), 0);

	/* ERROR message longer than the caller's buffer. */
	tally_msg_begin(&b, TALLY_MSG_ERROR, 1, 0);
	tally_msg_put_error(&b, "XX000", "0123456789");
	tally_msg_end(&b);
	char st[6], msg[10];
	cr_assert_eq(tally_msg_open(b.data, b.len, &h, &r), 0);
	cr_assert_neq(tally_msg_get_error(&r, st, msg, sizeof msg), 0);
	char msg11[11];
	cr_assert_eq(tally_msg_open(b.data, b.len, &h, &r), 0);
	cr_assert_eq(tally_msg_get_error(&r, st, msg11, sizeof msg11), 0);
	cr_assert_str_eq(msg11, "0123456789");

	/* A bad SQLSTATE character. */
	tally_msg_begin(&b, TALLY_MSG_ERROR, 1, 0);
	tally_buf_append(&b, "42p01", 5);
	tally_buf_put_str(&b, "m", 1);
	tally_msg_end(&b);
	cr_assert_eq(tally_msg_open(b.data, b.len, &h, &r), 0);
	cr_assert_neq(tally_msg_get_error(&r, st, msg11, sizeof msg11), 0);
	tally_buf_free(&b);
}

Test(codec, bad_body_values_rejected, .timeout = 30)
{
	tally_buf b = {0};
	tally_msg_hdr h;
	tally_rd r;
	/* APPLY claiming more groups than bytes remain. */
	tally_msg_apply a = apply_in;
	a.ngroups = 1000;
	tally_msg_begin(&b, TALLY_MSG_APPLY, 1, 1);
	tally_msg_put_apply(&b, &a);
	tally_buf_put_str(&b, "k", 1);
	tally_msg_end(&b);
	tally_msg_apply out;
	cr_assert_eq(tally_msg_open(b.data, b.len, &h, &r), 0);
	cr_assert_neq(tally_msg_get_apply(&r, &out), 0);
	/* READ with has_key = 2. */
	tally_msg_begin(&b, TALLY_MSG_READ, 1, 1);
	tally_buf_put_u64(&b, 1);
	tally_buf_put_u32(&b, 0);
	tally_buf_putc(&b, 2);
	tally_msg_end(&b);
	tally_msg_read rd;
	cr_assert_eq(tally_msg_open(b.data, b.len, &h, &r), 0);
	cr_assert_neq(tally_msg_get_read(&r, &rd), 0);
	/* A shard beyond the maximum. */
	tally_msg_read big = {1, 5000, 0, NULL, 0};
	tally_msg_begin(&b, TALLY_MSG_READ, 1, 1);
	tally_msg_put_read(&b, &big);
	tally_msg_end(&b);
	cr_assert_eq(tally_msg_open(b.data, b.len, &h, &r), 0);
	cr_assert_neq(tally_msg_get_read(&r, &rd), 0);
	tally_buf_free(&b);
}

static void assert_bytes(const tally_buf *b, const uint8_t *want, size_t n)
{
	if (b->len != n || memcmp(b->data, want, n) != 0) {
		for (size_t i = 0; i < b->len; i++)
			fprintf(stderr, "%02x%s", b->data[i], (i + 1) % 16 ? " " : "\n");
		fprintf(stderr, "\n");
	}
	cr_assert_eq(b->len, n, "length %zu, want %zu", b->len, n);
	cr_assert_arr_eq(b->data, want, n);
}

Test(codec, golden_header_bytes, .timeout = 30)
{
	tally_buf b = {0};
	tally_msg_begin(&b, TALLY_MSG_HEARTBEAT, 0x0102030405060708ull, 0x1112131415161718ull);
	tally_msg_end(&b);
	static const uint8_t want[] = {
	    0x54, 0x4C,					    /* magic "TL" */
	    0x02,					    /* version */
	    0x05,					    /* type HEARTBEAT */
	    0x00, 0x00,					    /* flags */
	    0x00, 0x00,					    /* reserved */
	    0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, /* request id */
	    0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, /* epoch */
	    0x00, 0x00, 0x00, 0x00,			    /* body length */
	};
	assert_bytes(&b, want, sizeof want);
	tally_buf_free(&b);
}

Test(codec, golden_apply_bytes, .timeout = 30)
{
	tally_buf b = {0};
	tally_msg_apply m = {.origin = 0x0A0B0C0D00000003ull,
			     .home_shard = 1,
			     .seq = 258,
			     .floor = 250,
			     .view_id = 7,
			     .target_shard = 2,
			     .ngroups = 1};
	tally_msg_begin(&b, TALLY_MSG_APPLY, 9, 4);
	tally_msg_put_apply(&b, &m);
	tally_buf_put_str(&b, "ab", 2); /* one group: key "ab" ... */
	tally_buf_putc(&b, 0xFF);	/* ... and a one-byte state */
	tally_msg_end(&b);
	static const uint8_t want[] = {
	    /* header */
	    0x54, 0x4C, 0x02, 0x0C, 0x00, 0x00, 0x00, 0x00, /* TL v2 APPLY flags rsvd */
	    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, /* request id 9 */
	    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, /* epoch 4 */
	    0x00, 0x00, 0x00, 0x33,			    /* body length 51 */
	    /* body */
	    0x0A, 0x0B, 0x0C, 0x0D, 0x00, 0x00, 0x00, 0x03, /* origin (log id) */
	    0x00, 0x00, 0x00, 0x01,			    /* home shard 1 */
	    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, /* seq 258 */
	    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFA, /* floor 250 */
	    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, /* view id 7 */
	    0x00, 0x00, 0x00, 0x02,			    /* target shard 2 */
	    0x00, 0x00, 0x00, 0x01,			    /* ngroups 1 */
	    0x00, 0x00, 0x00, 0x02, 0x61, 0x62,		    /* key "ab" */
	    0xFF,					    /* state */
	};
	assert_bytes(&b, want, sizeof want);
	tally_msg_hdr h;
	tally_rd r;
	tally_msg_apply out;
	cr_assert_eq(tally_msg_open(want, sizeof want, &h, &r), 0);
	cr_assert_eq(tally_msg_get_apply(&r, &out), 0);
	cr_assert_eq(out.seq, 258);
	cr_assert_eq(out.origin, 0x0A0B0C0D00000003ull);
	cr_assert_eq(tally_be64(want + TALLY_MSG_HDR + TALLY_APPLY_SEQ_OFF), 258);
	cr_assert_eq(tally_be64(want + TALLY_MSG_HDR + TALLY_APPLY_FLOOR_OFF), 250);
	cr_assert_eq(tally_be64(want + TALLY_MSG_HDR + TALLY_APPLY_VIEW_OFF), 7);
	cr_assert_eq(tally_be32(want + TALLY_MSG_HDR + TALLY_APPLY_HOME_OFF), 1);
	cr_assert_eq(tally_be32(want + TALLY_MSG_HDR + TALLY_APPLY_NGROUPS_OFF), 1);
	cr_assert_eq(sizeof want - TALLY_MSG_HDR - 7, TALLY_APPLY_FIXED);
	cr_assert_eq(tally_rd_left(&r), 7);
	tally_buf_free(&b);
}
