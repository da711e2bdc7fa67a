/*
 * worker.h - the worker's parts: the shard store and the worker runtime (registration,
 * heartbeats, map updates, request dispatch).
 */
#ifndef TALLY_WORKER_H
#define TALLY_WORKER_H

#include "tally/node.h"

typedef struct tally_store tally_store;

/* A store whose snapshots live in node_dir/snap (fsync'd when fsync is on); each primary copy
 * keeps up to keep_bytes of its latest change records for its replicas. */
tally_store *tally_store_alloc(const char *node_dir, bool fsync, uint64_t keep_bytes);
void tally_store_free(tally_store *st);
/* Apply one APPLY batch (body[0..bodylen) as received, r positioned at its groups) to the
 * primary copy this node (self) holds, decided on the map of this epoch, exactly once: a batch
 * id the shard has applied before is acknowledged without merging. Otherwise the batch is
 * checked completely (aggregates, every group decodes, room in the table) before anything
 * changes, logged (TALLY_REC_SHARD, the next position of the copy's history, which this node
 * begins if it is not its author yet) and merged, and kept for the replicas. *flush_lsn is
 * what the log must have durably before the caller acknowledges, *rlsn the position the
 * replicas must reach for sync replication. A batch whose home shard is not its target is a
 * hint (DESIGN §5): kept apart, per batch, visible to reads unless flags has
 * TALLY_MSG_F_IN_DOUBT, deduplicated per home shard. Returns 0, or -1 with err (nothing
 * changed). */
int tally_store_apply(tally_store *st, tally_wal *wal, const tally_view_rt *v, uint64_t epoch,
		      uint32_t self, unsigned flags, const tally_msg_apply *a, const uint8_t *body,
		      size_t bodylen, tally_rd *r, uint64_t *flush_lsn, uint64_t *rlsn,
		      tally_err *err);
/* Recovery: load every snapshot in node_dir/snap for views in m (others are removed). */
int tally_store_load(tally_store *st, const tally_map *m, tally_err *err);
/* Recovery: one TALLY_REC_SHARD (or older TALLY_REC_APPLY) record [lsn, end), merged unless
 * its shard's snapshot already has it. Primary copies of this node (self) keep the records
 * replayed for their replicas. */
int tally_store_replay(tally_store *st, const tally_map *m, uint32_t self, uint8_t type,
		       uint64_t lsn, uint64_t end, const uint8_t *body, uint32_t len,
		       tally_err *err);
/* Snapshot every shard changed since its last snapshot (each renamed into place only once wal
 * has durably every record it covers); remove snapshots of shards gone. Not concurrently
 * with itself (the node runs one checkpoint at a time). */
int tally_store_checkpoint(tally_store *st, tally_wal *wal, tally_err *err);
/* The highest log position any shard copy has applied (0 if none). */
uint64_t tally_store_max_lsn(tally_store *st);
/* Append READ_OK's body for one shard (u32 ngroups + groups) to reply: every group, or with
 * key only the group with that encoded key (if the shard has it). */
void tally_store_read(tally_store *st, const tally_view_rt *v, uint32_t shard, const uint8_t *key,
		      uint32_t keylen, tally_buf *reply);
/* Drop shard copies of views absent from the map. */
void tally_store_sync(tally_store *st, const tally_map *m);

typedef struct tally_store_shard_stats {
	uint64_t groups, batches, duplicates, applied_lsn, snapshot_lsn, origins;
	uint64_t gen, rlsn, kept_records, kept_bytes;
} tally_store_shard_stats;
/* Counters of one shard copy; -1 if this node has no such copy. */
int tally_store_stats(tally_store *st, uint64_t view_id, uint32_t shard,
		      tally_store_shard_stats *out);

/* ---- replication (DESIGN §6) ---- */

/* A copy's history identity and position; -1 if this node has no such copy. */
int tally_store_pos(tally_store *st, uint64_t view_id, uint32_t shard, uint64_t *gen,
		    uint64_t *rlsn);

enum {
	TALLY_REPL_NONE = 1,	 /* this node has no copy (nothing applied yet) */
	TALLY_REPL_RECORDS = 0,	 /* records appended (none: the replica is up to date) */
	TALLY_REPL_SNAPSHOT = 2, /* the replica needs a snapshot */
	TALLY_REPL_DIVERGED = 3, /* the replica has what this copy lacks: never overwrite it */
};
typedef struct tally_repl_out {
	tally_buf *recs;	 /* in: records are appended here (u8 kind, str body each) */
	uint64_t gen, rlsn, end; /* the primary copy's history, position and log position */
	uint64_t first;		 /* position of the first record appended */
	uint32_t nrec;
	uint64_t last_end;  /* log position the log must have durably before sending them */
	uint64_t lag_bytes; /* kept records after the replica's position */
	int64_t lag_us;	    /* age of the oldest of them */
} tally_repl_out;
/* What the replica at (r_gen, r_rlsn) needs from this node's (self) primary copy: records
 * (up to max_bytes), a snapshot, or nothing. Makes this node the author of the copy's history
 * first if it is not (a promoted replica). Returns a TALLY_REPL_* code, or -1 with err. */
int tally_store_repl_fetch(tally_store *st, tally_wal *wal, uint64_t view_id, uint32_t shard,
			   uint32_t self, uint64_t r_gen, uint64_t r_rlsn, size_t max_bytes,
			   tally_repl_out *o, tally_err *err);
/* Forget kept records up to position upto of history gen (every replica has them). */
void tally_store_repl_trim(tally_store *st, uint64_t view_id, uint32_t shard, uint64_t gen,
			   uint64_t upto);
/* Replica side: n change records of history gen from position first (recs positioned at
 * them), in order, sent by the primary whose copy is at position prim: those the copy has
 * are skipped, the rest checked completely, logged as one record and merged. Records that do
 * not continue the copy's history change nothing. The copy's position after it in *pos_gen
 * and *pos_rlsn; *flush_lsn what the log must have durably before the caller reports that
 * position. 0, or -1 with err (nothing changed). */
int tally_store_repl_apply(tally_store *st, tally_wal *wal, const tally_view_rt *v, uint64_t epoch,
			   uint32_t shard, uint64_t gen, uint64_t first, uint64_t prim, uint32_t n,
			   tally_rd *recs, uint64_t *pos_gen, uint64_t *pos_rlsn,
			   uint64_t *flush_lsn, tally_err *err);
/* Is this replica copy current: at its primary's position (told with every REPL) as of a
 * message less than TALLY_REPLICA_CURRENT_US ago? 1 yes, 0 no, -1 no such copy. */
#define TALLY_REPLICA_CURRENT_US 1500000
int tally_store_current(tally_store *st, uint64_t view_id, uint32_t shard);
/* May this replica copy answer reads when its primary cannot: it has a history (perhaps
 * behind its primary), or it is empty and its primary said it has nothing either? An empty
 * copy that may still be waiting for its first records or snapshot may not. 1 yes, 0 no, -1
 * no such copy. */
int tally_store_servable(tally_store *st, uint64_t view_id, uint32_t shard);
/* Primary side: the copy's state (snapshot file format) into out, with its history and
 * position; the log has it durably when this returns 0. */
int tally_store_snap_encode(tally_store *st, tally_wal *wal, uint64_t view_id, uint32_t shard,
			    uint32_t self, tally_buf *out, uint64_t *gen, uint64_t *rlsn,
			    tally_err *err);
/* Replica side: replace the copy with a snapshot from its primary and write it to disk
 * before returning 0 (its position in *gen and *rlsn); -1 with err if it is malformed. */
int tally_store_snap_install(tally_store *st, tally_wal *wal, const tally_map *m, const uint8_t *p,
			     size_t len, uint64_t *gen, uint64_t *rlsn, tally_err *err);

/* ---- hinted hand-off (DESIGN §5) ---- */

typedef struct tally_hint_row {
	uint64_t view_id;
	uint32_t shard, home; /* the copy holding them, and the shard they are for */
	uint32_t visible, in_doubt, handing_off;
	uint64_t bytes;
} tally_hint_row;
/* What hints this node's copies hold: one row per (view, shard, home) (heap array). */
size_t tally_store_hint_rows(tally_store *st, tally_hint_row **rows);
typedef struct tally_hint_ref {
	uint64_t origin, seq;
} tally_hint_ref;
enum { TALLY_HINT_OP_HANDOFF = 2, TALLY_HINT_OP_DROP = 3, TALLY_HINT_OP_REVERT = 4 };
/* On the primary copy (view v, shard) of this node (self): begin handing off the hints for
 * home (TALLY_HINT_OP_HANDOFF: they stop being visible; ids NULL = all not yet handing off),
 * drop those handed off (DROP, ids given) or take back those a hand-off did not get through
 * (REVERT; ids NULL = all being handed off): they may have reached the home shard, so they
 * stay invisible, in doubt, until a later hand-off. Logged and replicated like any change;
 * *flush_lsn is what the log must have before the change is relied on, *rlsn its position
 * (both 0 = nothing changed). 0, or -1 with err. */
int tally_store_hint_op(tally_store *st, tally_wal *wal, const tally_view_rt *v, uint32_t shard,
			uint32_t self, uint32_t home, int op, const tally_hint_ref *ids,
			size_t nids, uint64_t *flush_lsn, uint64_t *rlsn, tally_err *err);
/* Copy up to max hints for home that are being handed off (APPLY bodies, ids). */
size_t tally_store_hint_take(tally_store *st, uint64_t view_id, uint32_t shard, uint32_t home,
			     size_t max, tally_buf *bodies, tally_hint_ref *ids);

typedef struct tally_repl tally_repl;
/* The replicator of a worker (worker/repl.c): streams the change records of its primary
 * copies to their replicas; started once the node has recovered (and has its map). */
tally_repl *tally_repl_start(tally_node *n, tally_store *st);
/* Stop the senders (waits for them; waiters in tally_repl_wait return), then free once no
 * request handler can use it any more. */
void tally_repl_stop(tally_repl *rp);
void tally_repl_free(tally_repl *rp);
/* A primary copy applied a record / the map changed: senders look again. */
void tally_repl_notify(tally_repl *rp);
void tally_repl_map_changed(tally_repl *rp);
/* Forget the records of a shard every replica acknowledged. */
void tally_repl_trim_shard(tally_repl *rp, uint64_t view_id, uint32_t shard);
/* For replication = sync / quorum: wait until the replicas the mode needs have position rlsn
 * of history gen (sync: every replica the map shows up; quorum: a majority of all copies).
 * 0, or -1 with err (57P03) after timeout_ms. Returns 0 at once for async views. */
int tally_repl_wait(tally_repl *rp, const tally_view_info *v, uint32_t shard, uint64_t gen,
		    uint64_t rlsn, int timeout_ms, tally_err *err);
typedef struct tally_repl_row {
	uint64_t view_id;
	uint32_t shard, replica;
	const char *state; /* static string */
	uint64_t primary_rlsn, sent_rlsn, applied_rlsn, lag_records, lag_bytes;
	int64_t lag_ms;
	uint64_t snapshots; /* sent in full on this stream since the primary started */
} tally_repl_row;
/* One row per replica stream of this node's primary copies (heap array). */
size_t tally_repl_rows(tally_repl *rp, tally_repl_row **rows);

typedef struct tally_worker tally_worker;
int tally_worker_start(tally_worker **out, const tally_node_config *cfg);
void tally_worker_stop(tally_worker *w);

#endif
