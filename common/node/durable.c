/*
 * durable.c - a node's durable state and its life cycle (DESIGN §9): the node state file,
 * the write-ahead log, recovery at start and checkpoints while running.
 *
 * DIR/node.state (replaced atomically) holds the node's log id (its origin id in batch ids,
 * drawn when the directory was created), the redo LSN of the last checkpoint (recovery
 * replays the log from there) and the outbox's seq counters at that checkpoint. The log lives
 * in DIR/wal.
 *
 * Recovery: read the state file, open the log, let the role load its saved state (the
 * worker's map and shard snapshots), replay the log from the redo LSN (outbox records here,
 * the worker's apply records through the role), then start the outbox senders and the
 * checkpoint thread. A corrupt state file or a log corrupt in its middle stops the node:
 * serving wrong numbers is worse than not serving.
 *
 * Checkpoint: note the log's end L, let the role snapshot what changed (everything before L
 * is then in snapshots), take the oldest record a pending outbox batch is in, O; the new redo
 * LSN is min(L, O); write the state file, then remove the log segments before it. It runs
 * every pipeline_cluster.checkpoint_interval, or sooner once pipeline_cluster.max_wal_size
 * bytes were logged since the last one, and at a clean shutdown.
 */
#include "node_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <unistd.h>
#include <sys/stat.h>

#define STATE_MAGIC 0x544E5354u /* "TNST" */
#define STATE_VERSION 1

static uint64_t new_log_id(void)
{
	uint64_t id = 0;
	while (id == 0)
		if (getrandom(&id, sizeof id, 0) != (ssize_t)sizeof id)
			id = (uint64_t)tally_now_us() ^ ((uint64_t)getpid() << 40);
	return id;
}

static int state_write(tally_node *n, uint64_t redo, tally_err *err)
{
	tally_buf b = {0};
	tally_buf_put_u32(&b, STATE_MAGIC);
	tally_buf_put_u32(&b, STATE_VERSION);
	tally_buf_put_u64(&b, n->log_id);
	tally_buf_put_u64(&b, redo);
	tally_outbox_seqs_put(n->outbox, &b);
	tally_buf_put_u32(&b, tally_crc32c(0, b.data, b.len));
	int rc = tally_file_replace(n->cfg.dir, "node.state", b.data, b.len, true);
	if (rc != 0)
		tally_err_set(err, TALLY_SQLSTATE_INTERNAL, "could not write \"%s/node.state\": %s",
			      n->cfg.dir, strerror(errno));
	tally_buf_free(&b);
	return rc;
}

static int state_read(tally_node *n, uint64_t *redo, tally_err *err)
{
	char path[600];
	snprintf(path, sizeof path, "%s/node.state", n->cfg.dir);
	tally_buf b = {0};
	int rc = tally_file_read(path, &b);
	if (rc < 0) {
		tally_err_set(err, TALLY_SQLSTATE_INTERNAL, "could not read \"%s\": %s", path,
			      strerror(errno));
		goto out;
	}
	if (rc == 1) {
		/* A new directory: draw the log id, the origin id of this node's batches. */
		uint64_t id = new_log_id();
		n->log_id = id;
		n->fresh_dir = true;
		*redo = 0;
		rc = state_write(n, 0, err);
		if (rc == 0)
			tally_log_info("new data directory: log id %016llx",
				       (unsigned long long)id);
		goto out;
	}
	tally_rd r;
	tally_rd_init(&r, b.data, b.len);
	uint32_t magic, version, crc;
	rc = -1;
	if (b.len < 28 || tally_crc32c(0, b.data, b.len - 4) != tally_be32(b.data + b.len - 4) ||
	    tally_rd_u32(&r, &magic) || magic != STATE_MAGIC || tally_rd_u32(&r, &version) ||
	    version != STATE_VERSION || tally_rd_u64(&r, &n->log_id) || tally_rd_u64(&r, redo) ||
	    tally_outbox_seqs_get(n->outbox, &r) != 0 || tally_rd_u32(&r, &crc) ||
	    tally_msg_done(&r) != 0) {
		tally_err_set(err, TALLY_SQLSTATE_DATA_CORRUPTED,
			      "node state file \"%s\" is corrupt", path);
		tally_err_hint(err, "The node refuses to start rather than count events twice or "
				    "lose them. Restore the directory from a backup, or remove it "
				    "to start this node empty.");
		goto out;
	}
	rc = 0;
out:
	tally_buf_free(&b);
	return rc;
}

static int replay_record(void *ctx, uint8_t type, uint64_t lsn, const uint8_t *p, uint32_t len,
			 tally_err *err)
{
	tally_node *n = ctx;
	uint64_t end = lsn + TALLY_WAL_HDR + len;
	n->recovery_records++;
	if (type == TALLY_REC_OUTBOX || type == TALLY_REC_OUTBOX_DONE)
		return tally_outbox_replay(n->outbox, type, lsn, end, p, len, err);
	if (n->role.replay)
		return n->role.replay(n, type, lsn, end, p, len, err);
	return tally_err_set(err, TALLY_SQLSTATE_DATA_CORRUPTED,
			     "unexpected record type %u at log position %llu", type,
			     (unsigned long long)lsn);
}

static void *ckpt_main(void *arg)
{
	tally_node *n = arg;
	const tally_settings *d = &n->cfg.defaults;
	int64_t interval_us = tally_settings_ms(d, TALLY_SET_CHECKPOINT_INTERVAL) * 1000;
	uint64_t max_wal = (uint64_t)tally_settings_bytes(d, TALLY_SET_MAX_WAL_SIZE);
	int64_t last = tally_mono_us();
	pthread_mutex_lock(&n->ckpt_mu);
	while (!n->ckpt_stopping) {
		struct timespec ts = tally_mono_ts(tally_mono_us() + 200000);
		pthread_cond_timedwait(&n->ckpt_cv, &n->ckpt_mu, &ts);
		if (n->ckpt_stopping)
			break;
		tally_wal_stats st;
		tally_wal_stats_get(n->wal, &st);
		if (st.broken) {
			/* Nothing can be logged any more: every apply and statement here would
			 * fail while peers keep sending. Go down (as PostgreSQL PANICs) so the
			 * cluster sees this node down and it can be restarted. */
			tally_log_error(
			    "the write-ahead log failed; exiting (restart the node once "
			    "the cause, e.g. a full disk, is fixed)");
			_exit(70);
		}
		/* Log written since the last checkpoint began (not since the redo point: an
		 * undelivered batch can pin that far back, and checkpointing would free
		 * nothing). */
		bool due = tally_mono_us() - last >= interval_us ||
			   st.insert_lsn - n->ckpt_insert >= max_wal;
		if (!due || st.insert_lsn == n->ckpt_insert)
			continue; /* nothing logged since the last one: nothing to do */
		pthread_mutex_unlock(&n->ckpt_mu);
		tally_err err;
		tally_err_clear(&err);
		if (tally_node_checkpoint(n, &err) != 0)
			tally_log_error("checkpoint failed: %s", err.message);
		last = tally_mono_us();
		pthread_mutex_lock(&n->ckpt_mu);
	}
	pthread_mutex_unlock(&n->ckpt_mu);
	return NULL;
}

int tally_node_checkpoint(tally_node *n, tally_err *err)
{
	static pthread_mutex_t one = PTHREAD_MUTEX_INITIALIZER; /* one checkpoint at a time */
	pthread_mutex_lock(&one);
	int64_t t0 = tally_mono_us();
	tally_wal_stats st;
	tally_wal_stats_get(n->wal, &st);
	uint64_t redo = st.insert_lsn;
	int rc = 0;
	pthread_mutex_lock(&n->ckpt_mu);
	n->ckpt_insert = st.insert_lsn;
	pthread_mutex_unlock(&n->ckpt_mu);
	/* Everything before the redo point must be on disk before anything says so (the state
	 * file, snapshots): otherwise a crash could cut records they count as written. */
	rc = tally_wal_flush(n->wal, redo, -1, err);
	if (rc == 0 && n->role.checkpoint)
		rc = n->role.checkpoint(n, err);
	if (rc == 0) {
		uint64_t ob = tally_outbox_min_lsn(n->outbox);
		if (ob < redo)
			redo = ob;
		rc = state_write(n, redo, err);
	}
	if (rc == 0) {
		tally_wal_truncate(n->wal, redo);
		pthread_mutex_lock(&n->ckpt_mu);
		n->ckpt_redo = redo;
		n->ckpt_count++;
		n->ckpt_last_us = tally_now_us();
		n->ckpt_last_ms = (tally_mono_us() - t0) / 1000;
		pthread_mutex_unlock(&n->ckpt_mu);
		tally_log_debug("checkpoint: redo %llu in %lld ms", (unsigned long long)redo,
				(long long)((tally_mono_us() - t0) / 1000));
	}
	pthread_mutex_unlock(&one);
	return rc;
}

int tally_node_durable_open(tally_node *n)
{
	tally_err err;
	tally_err_clear(&err);
	int64_t t0 = tally_mono_us();
	pthread_mutex_init(&n->ckpt_mu, NULL);
	tally_cond_init_mono(&n->ckpt_cv);
	n->outbox = tally_outbox_alloc(n);
	uint64_t redo = 0;
	char waldir[600];
	snprintf(waldir, sizeof waldir, "%s/wal", n->cfg.dir);
	const tally_settings *d = &n->cfg.defaults;
	tally_wal_options o = {
	    .dir = waldir,
	    .segment_size = (uint64_t)tally_settings_bytes(d, TALLY_SET_WAL_SEGMENT_SIZE),
	    .fsync = tally_settings_bool(d, TALLY_SET_FSYNC),
	};
	if (state_read(n, &redo, &err) != 0 || tally_wal_open(&o, &n->wal, &err) != 0)
		goto fail;
	if (n->role.recover && n->role.recover(n, &err) != 0)
		goto fail;
	if (tally_wal_replay(n->wal, redo, replay_record, n, &err) != 0)
		goto fail;
	tally_wal_stats ws;
	tally_wal_stats_get(n->wal, &ws);
	if (ws.insert_lsn < redo) {
		tally_err_set(&err, TALLY_SQLSTATE_DATA_CORRUPTED,
			      "the write-ahead log ends at position %llu, before the last "
			      "checkpoint's %llu",
			      (unsigned long long)ws.insert_lsn, (unsigned long long)redo);
		tally_err_hint(&err, "Restore the directory from a backup, or remove it to start "
				     "this node empty.");
		goto fail;
	}
	if (n->role.check && n->role.check(n, ws.insert_lsn, &err) != 0)
		goto fail;
	if (ws.cut_bytes > 0) {
		/* Records were cut. With fsync off some of them may have been sent and applied
		 * already, and their seqs would now be handed out again: start a new batch
		 * sequence under a new origin id (pending batches keep theirs). */
		uint64_t old = n->log_id;
		n->log_id = new_log_id();
		if (state_write(n, redo, &err) != 0)
			goto fail;
		tally_log_warn("the log lost its last %llu bytes: new log id %016llx (was %016llx)",
			       (unsigned long long)ws.cut_bytes, (unsigned long long)n->log_id,
			       (unsigned long long)old);
	}
	n->ckpt_redo = redo;
	n->recovery_ms = (tally_mono_us() - t0) / 1000;
	uint64_t batches, bytes, dl, rs;
	tally_outbox_totals(n->outbox, &batches, &bytes, &dl, &rs);
	tally_log_info("recovered in %lld ms: %llu log records replayed from position %llu, "
		       "%llu undelivered batches in the outbox",
		       (long long)n->recovery_ms, (unsigned long long)n->recovery_records,
		       (unsigned long long)redo, (unsigned long long)batches);
	tally_outbox_start(n->outbox);
	pthread_create(&n->ckpt_thread, NULL, ckpt_main, n);
	n->ckpt_running = true;
	return 0;
fail:
	tally_log_error("%s", err.message);
	if (err.detail[0])
		tally_log_error("detail: %s", err.detail);
	if (err.hint[0])
		tally_log_error("hint: %s", err.hint);
	return -1;
}

void tally_node_durable_close(tally_node *n)
{
	bool recovered = n->ckpt_running;
	if (n->ckpt_running) {
		pthread_mutex_lock(&n->ckpt_mu);
		n->ckpt_stopping = true;
		pthread_cond_broadcast(&n->ckpt_cv);
		pthread_mutex_unlock(&n->ckpt_mu);
		pthread_join(n->ckpt_thread, NULL);
		n->ckpt_running = false;
	}
	if (n->outbox)
		tally_outbox_stop(n->outbox);
	if (recovered) {
		/* never after a failed recovery: it would move the redo point past records that
		 * were not replayed */
		tally_err err;
		tally_err_clear(&err);
		if (tally_node_checkpoint(n, &err) != 0)
			tally_log_warn("final checkpoint failed: %s", err.message);
	}
	if (n->wal)
		tally_wal_close(n->wal);
	n->wal = NULL;
	tally_outbox_free(n->outbox);
	n->outbox = NULL;
}
