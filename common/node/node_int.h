/*
 * node_int.h - private interfaces between the files of common/node (not for other folders).
 */
#ifndef TALLY_NODE_INT_H
#define TALLY_NODE_INT_H

#include "tally/node.h"

typedef struct tally_outbox tally_outbox;

/* outbox.c */
tally_outbox *tally_outbox_alloc(tally_node *n);
void tally_outbox_free(tally_outbox *ob);
/* Start / stop the sender threads (stop waits for rounds in flight). */
void tally_outbox_start(tally_outbox *ob);
void tally_outbox_stop(tally_outbox *ob);
/* Replay: an OUTBOX record adds its batches to the pending set, a DONE record removes them.
 * Both also raise the seq counters to the seqs seen. */
int tally_outbox_replay(tally_outbox *ob, uint8_t type, uint64_t lsn, uint64_t end,
			const uint8_t *p, uint32_t len, tally_err *err);
/* Smallest start LSN of a record holding a pending batch, or UINT64_MAX. */
uint64_t tally_outbox_min_lsn(tally_outbox *ob);
/* The seq counters, for the node state file: u32 n, n x (u64 view, u32 shard, u64 seq). */
void tally_outbox_seqs_put(tally_outbox *ob, tally_buf *b);
int tally_outbox_seqs_get(tally_outbox *ob, tally_rd *r);
/* Counters for pipeline_cluster.wal. */
void tally_outbox_totals(tally_outbox *ob, uint64_t *batches, uint64_t *bytes, uint64_t *delivered,
			 uint64_t *resends);

#endif
