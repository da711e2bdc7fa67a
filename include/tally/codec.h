/*
 * codec.h - node-to-node messages carried over NNG (req/rep over TCP).
 *
 * Every message starts with the same 28-byte header, integers big-endian:
 *
 *   magic u16 = 0x544C ("TL") | version u8 = 1 | type u8 | flags u16 | reserved u16 (0)
 *   request id u64 | sender epoch u64 | body length u32
 *
 * followed by exactly `body length` bytes of body. Decoders check every bound and reject
 * truncated input and trailing bytes. docs/wire-protocol.md lists every message.
 */
#ifndef TALLY_CODEC_H
#define TALLY_CODEC_H

#include "tally/core.h"

#define TALLY_MSG_MAGIC 0x544C
#define TALLY_MSG_VERSION 2 /* 2: APPLY's origin is a u64 log id and it carries a floor */
#define TALLY_MSG_HDR 28
#define TALLY_MSG_MAX (256u << 20) /* NNG_OPT_RECVMAXSZ on every socket */

typedef enum tally_msg_type {
	TALLY_MSG_ERROR = 1,	    /* reply: sqlstate + message */
	TALLY_MSG_OK = 2,	    /* reply: empty body or type-specific */
	TALLY_MSG_REGISTER = 3,	    /* worker -> coordinator */
	TALLY_MSG_REGISTER_OK = 4,  /* node id + catalog */
	TALLY_MSG_HEARTBEAT = 5,    /* worker -> coordinator */
	TALLY_MSG_HEARTBEAT_OK = 6, /* epoch (+ catalog when newer than the sender's) */
	TALLY_MSG_MAP_PUSH = 7,	    /* coordinator -> worker: catalog */
	TALLY_MSG_DDL = 8,	    /* any node -> coordinator: one DDL statement text */
	TALLY_MSG_DDL_OK = 9,	    /* command tag + catalog */
	TALLY_MSG_GET_MAP = 10,	    /* any node -> coordinator */
	TALLY_MSG_MAP = 11,	    /* catalog */
	TALLY_MSG_APPLY = 12,	    /* origin -> primary: one batch */
	TALLY_MSG_APPLY_OK = 13,
	TALLY_MSG_READ = 14,	  /* reader -> copy holder: one shard */
	TALLY_MSG_READ_OK = 15,	  /* groups and states */
	TALLY_MSG_REPL = 16,	  /* primary -> replica: a shard's change records in order */
	TALLY_MSG_REPL_SNAP = 17, /* primary -> replica: one chunk of a shard snapshot */
	TALLY_MSG_REPL_OK = 18,	  /* replica's durable position */
	TALLY_MSG_STATUS = 19,	  /* any node -> worker: replication status rows */
	TALLY_MSG_STATUS_OK = 20,
	TALLY_MSG_POS = 21,    /* coordinator -> worker: a shard copy's position */
	TALLY_MSG_POS_OK = 22, /* u8 has, u64 gen, u64 rlsn */
} tally_msg_type;
#define TALLY_MSG_TYPE_LAST TALLY_MSG_POS_OK

typedef struct tally_msg_hdr {
	uint8_t type;
	uint16_t flags;
	uint64_t req_id;
	uint64_t epoch;
	uint32_t body_len;
} tally_msg_hdr;

/* Start a message in b (reset first): header with a zero body length. */
void tally_msg_begin(tally_buf *b, uint8_t type, uint64_t req_id, uint64_t epoch);
/* Patch the body length after the body was appended. */
void tally_msg_end(tally_buf *b);
/* Validate and decode the header of a received message: magic, version, known type, body
 * length equal to len - TALLY_MSG_HDR. On success r is positioned at the body. */
int tally_msg_open(const void *p, size_t len, tally_msg_hdr *h, tally_rd *r);
/* Succeeds only if r was fully consumed without error (no trailing bytes). */
int tally_msg_done(const tally_rd *r);

/* ---- bodies -------------------------------------------------------------------------------- */

/* ERROR: sqlstate (5 bytes) + str message. */
void tally_msg_put_error(tally_buf *b, const char *sqlstate, const char *message);
int tally_msg_get_error(tally_rd *r, char sqlstate[6], char *message, size_t msgsz);

/* REGISTER: str name, str data_addr, str sql_addr, u64 incarnation. */
typedef struct tally_msg_register {
	char name[64];
	char data_addr[128];
	char sql_addr[128];
	uint64_t incarnation;
} tally_msg_register;
void tally_msg_put_register(tally_buf *b, const tally_msg_register *m);
int tally_msg_get_register(tally_rd *r, tally_msg_register *m);

/* HEARTBEAT: u32 node id, u64 incarnation, u64 known epoch, u64 memory bytes. */
typedef struct tally_msg_heartbeat {
	uint32_t node_id;
	uint64_t incarnation;
	uint64_t known_epoch;
	uint64_t mem_bytes;
} tally_msg_heartbeat;
void tally_msg_put_heartbeat(tally_buf *b, const tally_msg_heartbeat *m);
int tally_msg_get_heartbeat(tally_rd *r, tally_msg_heartbeat *m);

/* APPLY: batch id (u64 origin, u32 home shard, u64 seq), u64 floor, u64 view id, u32 target
 * shard, u32 ngroups, then the groups (body offsets below). The origin is the origin node's
 * log id: a random nonzero 64-bit number drawn when its data directory was created, so a node
 * that loses its directory starts a new batch sequence. floor is the origin's lowest seq still
 * unacknowledged for (view, home shard) when it sent this batch (0 = unknown): every lower
 * seq was acknowledged by a primary, so the receiver may count them as applied (its dedup
 * state then never waits for batches it will not get, e.g. after it lost its directory).
 * Groups: for each, str key (tally_key_encode of the group values) followed by the view's
 * aggregate states (tally_agg_serialize, in order). The groups are left in the reader for the
 * caller, who knows the view's aggregates. */
#define TALLY_APPLY_HOME_OFF 8
#define TALLY_APPLY_SEQ_OFF 12
#define TALLY_APPLY_FLOOR_OFF 20
#define TALLY_APPLY_VIEW_OFF 28
#define TALLY_APPLY_TARGET_OFF 36
#define TALLY_APPLY_NGROUPS_OFF 40
#define TALLY_APPLY_FIXED 44
typedef struct tally_msg_apply {
	uint64_t origin;
	uint32_t home_shard;
	uint64_t seq;
	uint64_t floor;
	uint64_t view_id;
	uint32_t target_shard;
	uint32_t ngroups;
} tally_msg_apply;
void tally_msg_put_apply(tally_buf *b, const tally_msg_apply *m);
int tally_msg_get_apply(tally_rd *r, tally_msg_apply *m);

/* READ: u64 view id, u32 shard, u8 has_key, [str key prefix filter: exact group key]. */
typedef struct tally_msg_read {
	uint64_t view_id;
	uint32_t shard;
	uint8_t has_key;
	const uint8_t *key; /* points into the message */
	uint32_t keylen;
} tally_msg_read;
void tally_msg_put_read(tally_buf *b, const tally_msg_read *m);
int tally_msg_get_read(tally_rd *r, tally_msg_read *m);

/* READ_OK: u32 ngroups, then groups as in APPLY.
 *
 * Replication (DESIGN §6). Every shard copy has a history identity gen (nonzero; its low 16
 * bits are the node id of the primary that began it) and a position rlsn (change records
 * applied in that history, 1, 2, 3, ...).
 * REPL: u32 primary node id, u64 view id, u32 shard, u64 gen, u64 first rlsn, u64 the primary
 *   copy's position (history gen), u32 nrec, then nrec x (u8 kind, str record); nrec = 0 asks
 *   for the position only (and tells the replica how far the primary is: a keepalive).
 * REPL_SNAP: u32 primary node id, u64 view id, u32 shard, u64 gen, u64 rlsn, u64 total bytes,
 *   u64 offset, str chunk: the shard's state as of rlsn (the snapshot file format).
 * REPL_OK: u64 gen, u64 rlsn (the replica's durable position), u64 snapshot bytes received.
 * STATUS: empty. STATUS_OK: u32 n, n x (u64 view, u32 shard, u32 replica node id, str state,
 *   u64 primary rlsn, u64 sent rlsn, u64 applied rlsn, u64 lag records, u64 lag bytes,
 *   i64 lag ms, u64 snapshots sent), then u32 m, m x (u64 view, u32 shard holding hints,
 *   u32 home shard, u32 visible, u32 in doubt, u32 being handed off, u64 bytes).
 * POS: u64 view id, u32 shard. POS_OK: u8 has copy, u64 gen, u64 rlsn. */
enum {
	TALLY_SREC_APPLY = 1,	   /* an APPLY body merged into the shard's own groups */
	TALLY_SREC_HINT = 2,	   /* u8 state (0 visible, 1 in doubt), APPLY body for another
				      shard of the view (its home), kept apart (DESIGN §5) */
	TALLY_SREC_HINT_STATE = 3, /* u32 n, n x (u32 home, u64 origin, u64 seq, u8 op): hints
				      being handed off (2), handed off (3), back (4) */
};
/* APPLY header flag: the batch is in doubt (sent before to another shard without an answer). */
#define TALLY_MSG_F_IN_DOUBT 0x0001
/* READ header flag: answer only if this copy is current (a replica that had every record of
 * its primary at its last contact, less than a moment ago); else 57P03. */
#define TALLY_MSG_F_CURRENT 0x0002

const char *tally_msg_type_name(uint8_t type);

#endif
