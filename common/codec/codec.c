/*
 * codec.c - encoding and decoding of node-to-node messages: the common 28-byte header and the
 * fixed bodies (ERROR, REGISTER, HEARTBEAT, APPLY, READ). Writers append to a tally_buf;
 * readers work on a bounds-checked tally_rd and fail on truncation, oversized strings, bad
 * enum values and (through tally_msg_done) trailing bytes. Nothing here allocates on the
 * read side: strings are copied into the caller's fixed-size fields or pointed to in place.
 */
#include "tally/codec.h"
#include "tally/ring.h"

#include <stdio.h>

void tally_msg_begin(tally_buf *b, uint8_t type, uint64_t req_id, uint64_t epoch)
{
	tally_buf_reset(b);
	tally_buf_put_u16(b, TALLY_MSG_MAGIC);
	tally_buf_putc(b, TALLY_MSG_VERSION);
	tally_buf_putc(b, type);
	tally_buf_put_u16(b, 0); /* flags */
	tally_buf_put_u16(b, 0); /* reserved */
	tally_buf_put_u64(b, req_id);
	tally_buf_put_u64(b, epoch);
	tally_buf_put_u32(b, 0); /* body length, patched by tally_msg_end */
}

void tally_msg_end(tally_buf *b)
{
	if (b->len < TALLY_MSG_HDR)
		return;
	tally_put_be32(b->data + TALLY_MSG_HDR - 4, (uint32_t)(b->len - TALLY_MSG_HDR));
}

static bool msg_type_known(uint8_t t)
{
	return t >= TALLY_MSG_ERROR && t <= TALLY_MSG_TYPE_LAST;
}

int tally_msg_open(const void *p, size_t len, tally_msg_hdr *h, tally_rd *r)
{
	if (!p || len < TALLY_MSG_HDR || len > TALLY_MSG_MAX)
		return -1;
	const uint8_t *b = p;
	if (tally_be16(b) != TALLY_MSG_MAGIC || b[2] != TALLY_MSG_VERSION || !msg_type_known(b[3]))
		return -1;
	if (tally_be16(b + 6) != 0) /* reserved */
		return -1;
	uint32_t body_len = tally_be32(b + 24);
	if ((size_t)body_len != len - TALLY_MSG_HDR)
		return -1;
	h->type = b[3];
	h->flags = tally_be16(b + 4);
	h->req_id = tally_be64(b + 8);
	h->epoch = tally_be64(b + 16);
	h->body_len = body_len;
	tally_rd_init(r, b + TALLY_MSG_HDR, body_len);
	return 0;
}

int tally_msg_done(const tally_rd *r)
{
	return (!r->bad && r->off == r->len) ? 0 : -1;
}

/* ---- strings ---------------------------------------------------------------------------- */

static void msg_put_cstr(tally_buf *b, const char *s, size_t maxlen)
{
	size_t n = s ? strnlen(s, maxlen) : 0;
	tally_buf_put_str(b, s ? s : "", (uint32_t)n);
}

/* Read a length-prefixed string into dst (dstsz bytes incl. NUL). Rejects strings that do
 * not fit and strings with embedded NUL bytes (they would be silently cut). dst is written
 * only on success. */
static int msg_get_cstr(tally_rd *r, char *dst, size_t dstsz)
{
	const uint8_t *p;
	uint32_t n;
	if (dstsz == 0)
		return -1;
	uint32_t max = dstsz - 1 > UINT32_MAX ? UINT32_MAX : (uint32_t)(dstsz - 1);
	if (tally_rd_str(r, &p, &n, max))
		return -1;
	if (memchr(p, 0, n)) {
		r->bad = true;
		return -1;
	}
	memcpy(dst, p, n);
	dst[n] = 0;
	return 0;
}

/* ---- ERROR -------------------------------------------------------------------------------- */

void tally_msg_put_error(tally_buf *b, const char *sqlstate, const char *message)
{
	char st[5] = {'X', 'X', '0', '0', '0'};
	if (sqlstate && strlen(sqlstate) == 5)
		memcpy(st, sqlstate, 5);
	tally_buf_append(b, st, 5);
	msg_put_cstr(b, message, TALLY_MSG_MAX / 2);
}

int tally_msg_get_error(tally_rd *r, char sqlstate[6], char *message, size_t msgsz)
{
	const uint8_t *st;
	if (r->bad || tally_rd_bytes(r, &st, 5))
		return -1;
	for (int i = 0; i < 5; i++) {
		bool ok = (st[i] >= '0' && st[i] <= '9') || (st[i] >= 'A' && st[i] <= 'Z');
		if (!ok) {
			r->bad = true;
			return -1;
		}
	}
	/* Decode the message into place first, then the state, so nothing is written on error
	 * except the message buffer (which msg_get_cstr writes only on success). */
	if (msg_get_cstr(r, message, msgsz))
		return -1;
	memcpy(sqlstate, st, 5);
	sqlstate[5] = 0;
	return 0;
}

/* ---- REGISTER ----------------------------------------------------------------------------- */

void tally_msg_put_register(tally_buf *b, const tally_msg_register *m)
{
	msg_put_cstr(b, m->name, sizeof m->name - 1);
	msg_put_cstr(b, m->data_addr, sizeof m->data_addr - 1);
	msg_put_cstr(b, m->sql_addr, sizeof m->sql_addr - 1);
	tally_buf_put_u64(b, m->incarnation);
}

int tally_msg_get_register(tally_rd *r, tally_msg_register *m)
{
	tally_msg_register t;
	memset(&t, 0, sizeof t);
	if (r->bad || msg_get_cstr(r, t.name, sizeof t.name) ||
	    msg_get_cstr(r, t.data_addr, sizeof t.data_addr) ||
	    msg_get_cstr(r, t.sql_addr, sizeof t.sql_addr) || tally_rd_u64(r, &t.incarnation))
		return -1;
	*m = t;
	return 0;
}

/* ---- HEARTBEAT ---------------------------------------------------------------------------- */

void tally_msg_put_heartbeat(tally_buf *b, const tally_msg_heartbeat *m)
{
	tally_buf_put_u32(b, m->node_id);
	tally_buf_put_u64(b, m->incarnation);
	tally_buf_put_u64(b, m->known_epoch);
	tally_buf_put_u64(b, m->mem_bytes);
}

int tally_msg_get_heartbeat(tally_rd *r, tally_msg_heartbeat *m)
{
	tally_msg_heartbeat t;
	if (r->bad || tally_rd_u32(r, &t.node_id) || tally_rd_u64(r, &t.incarnation) ||
	    tally_rd_u64(r, &t.known_epoch) || tally_rd_u64(r, &t.mem_bytes))
		return -1;
	*m = t;
	return 0;
}

/* ---- APPLY -------------------------------------------------------------------------------- */

void tally_msg_put_apply(tally_buf *b, const tally_msg_apply *m)
{
	tally_buf_put_u64(b, m->origin);
	tally_buf_put_u32(b, m->home_shard);
	tally_buf_put_u64(b, m->seq);
	tally_buf_put_u64(b, m->floor);
	tally_buf_put_u64(b, m->view_id);
	tally_buf_put_u32(b, m->target_shard);
	tally_buf_put_u32(b, m->ngroups);
}

int tally_msg_get_apply(tally_rd *r, tally_msg_apply *m)
{
	tally_msg_apply t;
	if (r->bad || tally_rd_u64(r, &t.origin) || tally_rd_u32(r, &t.home_shard) ||
	    tally_rd_u64(r, &t.seq) || tally_rd_u64(r, &t.floor) || tally_rd_u64(r, &t.view_id) ||
	    tally_rd_u32(r, &t.target_shard) || tally_rd_u32(r, &t.ngroups))
		return -1;
	/* Every group starts with a u32 key length: a count the remaining bytes cannot hold is
	 * a lie, and callers size arrays by it. */
	if (t.ngroups > tally_rd_left(r) / 4 || t.origin == 0 || t.seq == 0 || t.floor > t.seq ||
	    t.home_shard >= TALLY_MAX_SHARDS || t.target_shard >= TALLY_MAX_SHARDS) {
		r->bad = true;
		return -1;
	}
	*m = t;
	return 0;
}

/* ---- READ --------------------------------------------------------------------------------- */

void tally_msg_put_read(tally_buf *b, const tally_msg_read *m)
{
	tally_buf_put_u64(b, m->view_id);
	tally_buf_put_u32(b, m->shard);
	tally_buf_putc(b, m->has_key ? 1 : 0);
	if (m->has_key)
		tally_buf_put_str(b, (const char *)m->key, m->keylen);
}

int tally_msg_get_read(tally_rd *r, tally_msg_read *m)
{
	tally_msg_read t;
	memset(&t, 0, sizeof t);
	if (r->bad || tally_rd_u64(r, &t.view_id) || tally_rd_u32(r, &t.shard) ||
	    tally_rd_u8(r, &t.has_key))
		return -1;
	if (t.has_key > 1 || t.shard >= TALLY_MAX_SHARDS) {
		r->bad = true;
		return -1;
	}
	if (t.has_key && tally_rd_str(r, &t.key, &t.keylen, TALLY_MSG_MAX))
		return -1;
	*m = t;
	return 0;
}

const char *tally_msg_type_name(uint8_t type)
{
	switch ((tally_msg_type)type) {
	case TALLY_MSG_ERROR:
		return "ERROR";
	case TALLY_MSG_OK:
		return "OK";
	case TALLY_MSG_REGISTER:
		return "REGISTER";
	case TALLY_MSG_REGISTER_OK:
		return "REGISTER_OK";
	case TALLY_MSG_HEARTBEAT:
		return "HEARTBEAT";
	case TALLY_MSG_HEARTBEAT_OK:
		return "HEARTBEAT_OK";
	case TALLY_MSG_MAP_PUSH:
		return "MAP_PUSH";
	case TALLY_MSG_DDL:
		return "DDL";
	case TALLY_MSG_DDL_OK:
		return "DDL_OK";
	case TALLY_MSG_GET_MAP:
		return "GET_MAP";
	case TALLY_MSG_MAP:
		return "MAP";
	case TALLY_MSG_APPLY:
		return "APPLY";
	case TALLY_MSG_APPLY_OK:
		return "APPLY_OK";
	case TALLY_MSG_READ:
		return "READ";
	case TALLY_MSG_READ_OK:
		return "READ_OK";
	case TALLY_MSG_REPL:
		return "REPL";
	case TALLY_MSG_REPL_SNAP:
		return "REPL_SNAP";
	case TALLY_MSG_REPL_OK:
		return "REPL_OK";
	case TALLY_MSG_STATUS:
		return "STATUS";
	case TALLY_MSG_STATUS_OK:
		return "STATUS_OK";
	case TALLY_MSG_POS:
		return "POS";
	case TALLY_MSG_POS_OK:
		return "POS_OK";
	}
	return "UNKNOWN";
}
