/*
 * worker.h - the worker's parts: the shard store and the worker runtime (registration,
 * heartbeats, map updates, request dispatch).
 */
#ifndef TALLY_WORKER_H
#define TALLY_WORKER_H

#include "tally/node.h"

typedef struct tally_store tally_store;

/* A store whose snapshots live in node_dir/snap (fsync'd when fsync is on). */
tally_store *tally_store_alloc(const char *node_dir, bool fsync);
void tally_store_free(tally_store *st);
/* Apply one APPLY batch (body[0..bodylen) as received, r positioned at its groups), decided
 * on the map of this epoch, exactly once: a batch id the shard has applied before is
 * acknowledged without merging. Otherwise the batch is checked completely (aggregates, every
 * group decodes, room in the table) before anything changes, logged (TALLY_REC_APPLY) and
 * merged. *flush_lsn is what the log must have durably before the caller acknowledges.
 * Returns 0, or -1 with err (nothing changed). */
int tally_store_apply(tally_store *st, tally_wal *wal, const tally_view_rt *v, uint64_t epoch,
		      const tally_msg_apply *a, const uint8_t *body, size_t bodylen, tally_rd *r,
		      uint64_t *flush_lsn, tally_err *err);
/* Recovery: load every snapshot in node_dir/snap for views in m (others are removed). */
int tally_store_load(tally_store *st, const tally_map *m, tally_err *err);
/* Recovery: one TALLY_REC_APPLY record [lsn, end), merged unless its shard already has it. */
int tally_store_replay(tally_store *st, const tally_map *m, uint64_t lsn, uint64_t end,
		       const uint8_t *body, uint32_t len, tally_err *err);
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
} tally_store_shard_stats;
/* Counters of one shard copy; -1 if this node has no such copy. */
int tally_store_stats(tally_store *st, uint64_t view_id, uint32_t shard,
		      tally_store_shard_stats *out);

typedef struct tally_worker tally_worker;
int tally_worker_start(tally_worker **out, const tally_node_config *cfg);
void tally_worker_stop(tally_worker *w);

#endif
