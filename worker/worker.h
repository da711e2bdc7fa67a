/*
 * worker.h - the worker's parts: the shard store and the worker runtime (registration,
 * heartbeats, map updates, request dispatch).
 */
#ifndef TALLY_WORKER_H
#define TALLY_WORKER_H

#include "tally/node.h"

typedef struct tally_store tally_store;

tally_store *tally_store_alloc(void);
void tally_store_free(tally_store *st);
/* Apply one APPLY batch (r positioned at its groups), decided on the map of this epoch. The
 * batch is checked completely (aggregates, every group decodes, room in the table) before
 * anything is merged, so a refused batch changes nothing. Returns 0, or -1 with err. */
int tally_store_apply(tally_store *st, const tally_view_rt *v, uint64_t epoch,
		      const tally_msg_apply *a, tally_rd *r, tally_err *err);
/* Append READ_OK's body for one shard (u32 ngroups + groups) to reply: every group, or with
 * key only the group with that encoded key (if the shard has it). */
void tally_store_read(tally_store *st, const tally_view_rt *v, uint32_t shard, const uint8_t *key,
		      uint32_t keylen, tally_buf *reply);
/* Drop shard copies of views absent from the map. */
void tally_store_sync(tally_store *st, const tally_map *m);
/* Number of groups held for a shard copy (0 if absent). */
uint64_t tally_store_groups(tally_store *st, uint64_t view_id, uint32_t shard);

typedef struct tally_worker tally_worker;
int tally_worker_start(tally_worker **out, const tally_node_config *cfg);
void tally_worker_stop(tally_worker *w);

#endif
