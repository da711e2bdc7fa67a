/*
 * worker.c - the worker node: registers with the coordinator (retrying until it answers),
 * heartbeats it every pipeline_cluster.heartbeat_interval, takes cluster maps it pushes or
 * returns, and serves node-to-node requests: APPLY (merge a batch into a primary shard copy,
 * or keep it as a hint for another shard; with sync/quorum replication, answer once the
 * replicas have it), READ (return a shard copy's partial states; a replica only when it can
 * vouch for what it has), REPL / REPL_SNAP (a replica copy's change records or snapshot from
 * its primary), STATUS (replication streams and hints, for the system views), POS (a copy's
 * position, for remove_node) and MAP_PUSH. DDL typed at the worker is forwarded to the
 * coordinator; the reply carries the new map, installed before the client hears back. The
 * replicator and the hand-off thread are in repl.c.
 *
 * Registration state machine: UNREGISTERED -> (REGISTER ok) -> REGISTERED; a heartbeat the
 * coordinator refuses as unknown (it restarted) sends the worker back to UNREGISTERED.
 */
#include "worker.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

typedef enum { W_UNREGISTERED = 0, W_REGISTERED } wstate;

/* A snapshot arriving in chunks from a primary (replica side). */
typedef struct snap_in {
	uint64_t view_id;
	uint32_t shard;
	uint64_t gen, rlsn, total;
	tally_buf buf;
	int64_t touched_us;
} snap_in;

struct tally_worker {
	tally_node node;
	tally_store *store;
	tally_repl *repl; /* set once started (atomic) */
	pthread_mutex_t snap_mu;
	snap_in *snaps;
	size_t nsnaps;
	pthread_mutex_t map_mu; /* orders saving and installing maps */
	pthread_t hb_thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool stopping;
	wstate state;
	bool ready_written;
};

static int coord_call(tally_worker *w, tally_buf *req, tally_rpc_call *c, int timeout_ms)
{
	memset(c, 0, sizeof *c);
	c->addr = w->node.cfg.coordinator_addr;
	c->peer = "coordinator";
	c->req = *req;
	tally_rpc_call_many(w->node.rpc, c, 1, timeout_ms);
	return c->rc;
}

/* Take a newer map: save it to DIR/map first (a map any request may have used must be on
 * disk, so recovery never meets a batch of a view its saved map does not know), then install
 * it and drop shards of views it no longer has. Takes ownership of cat. */
static void take_map(tally_worker *w, tally_catalog *cat)
{
	tally_node *n = &w->node;
	pthread_mutex_lock(&w->map_mu);
	if (cat->epoch > tally_node_epoch(n)) {
		tally_buf enc = {0};
		tally_catalog_encode(cat, &enc);
		int rc = tally_file_replace(n->cfg.dir, "map", enc.data, enc.len,
					    tally_settings_bool(&n->cfg.defaults, TALLY_SET_FSYNC));
		tally_buf_free(&enc);
		if (rc != 0) {
			/* Not installed: a map in use must be on disk. The next heartbeat or a
			 * peer's request tries again. */
			tally_log_error("could not save the cluster map to \"%s/map\": %s",
					n->cfg.dir, strerror(errno));
			tally_catalog_free(cat);
			pthread_mutex_unlock(&w->map_mu);
			return;
		}
	}
	if (tally_node_install_map(n, cat)) {
		tally_map *m = tally_node_map(n);
		tally_store_sync(w->store, m);
		tally_log_debug("installed cluster map epoch %llu",
				(unsigned long long)m->cat->epoch);
		tally_map_put(m);
		tally_repl *rp = __atomic_load_n(&w->repl, __ATOMIC_ACQUIRE);
		if (rp)
			tally_repl_map_changed(rp);
	}
	pthread_mutex_unlock(&w->map_mu);
}

static int install_from(tally_worker *w, tally_rd *r)
{
	const uint8_t *p;
	uint32_t n;
	if (tally_rd_str(r, &p, &n, TALLY_MSG_MAX) != 0)
		return -1;
	tally_catalog *cat;
	if (tally_catalog_decode(p, n, &cat) != 0)
		return -1;
	take_map(w, cat);
	return 0;
}

static int do_register(tally_worker *w)
{
	tally_node *n = &w->node;
	tally_buf req = {0};
	tally_msg_begin(&req, TALLY_MSG_REGISTER, tally_node_next_req(n), tally_node_epoch(n));
	tally_msg_register m;
	memset(&m, 0, sizeof m);
	tally_strlcpy(m.name, n->cfg.name, sizeof m.name);
	tally_strlcpy(m.data_addr, tally_rpc_server_addr(n->rpcsrv), sizeof m.data_addr);
	snprintf(m.sql_addr, sizeof m.sql_addr, "%s:%d", n->cfg.host, tally_pg_server_port(n->pg));
	m.incarnation = n->incarnation;
	tally_msg_put_register(&req, &m);
	tally_msg_end(&req);
	tally_rpc_call c;
	/* The coordinator answers once it has pushed the new address to the other workers
	 * (up to 2 s for a dead one it has not marked down yet). */
	int rc = coord_call(w, &req, &c, 5000);
	if (rc == 0) {
		uint32_t id;
		/* The id is set before the map is installed: a request that finds this node the
		 * primary in the new map must also find the id that says so. */
		if (c.hdr.type != TALLY_MSG_REGISTER_OK || tally_rd_u32(&c.body, &id) != 0 ||
		    (__atomic_store_n(&n->node_id, id, __ATOMIC_RELEASE),
		     install_from(w, &c.body)) != 0 ||
		    tally_msg_done(&c.body) != 0) {
			tally_log_warn("malformed REGISTER reply from the coordinator");
			rc = -1;
		} else {
			tally_log_info(
			    "registered with the coordinator as node %u (incarnation %llu)", id,
			    (unsigned long long)n->incarnation);
		}
	} else {
		tally_log_debug("register: %s", c.errmsg);
		if (c.sqlstate[0] && strcmp(c.sqlstate, TALLY_SQLSTATE_UNAVAILABLE) != 0)
			tally_log_warn("the coordinator refused registration: %s", c.errmsg);
	}
	tally_rpc_calls_done(&c, 1);
	tally_buf_free(&req);
	return rc;
}

static int do_heartbeat(tally_worker *w)
{
	tally_node *n = &w->node;
	tally_buf req = {0};
	tally_msg_begin(&req, TALLY_MSG_HEARTBEAT, tally_node_next_req(n), tally_node_epoch(n));
	tally_msg_heartbeat hb = {.node_id = tally_node_id(n),
				  .incarnation = n->incarnation,
				  .known_epoch = tally_node_epoch(n),
				  .mem_bytes = 0};
	tally_msg_put_heartbeat(&req, &hb);
	tally_msg_end(&req);
	tally_rpc_call c;
	int rc = coord_call(w, &req, &c, 1000);
	if (rc == 0) {
		uint64_t epoch;
		uint8_t has_map;
		if (c.hdr.type != TALLY_MSG_HEARTBEAT_OK || tally_rd_u64(&c.body, &epoch) != 0 ||
		    tally_rd_u8(&c.body, &has_map) != 0 ||
		    (has_map && install_from(w, &c.body) != 0)) {
			tally_log_warn("malformed HEARTBEAT reply from the coordinator");
		}
	} else if (strcmp(c.sqlstate, TALLY_SQLSTATE_UNDEFINED_OBJECT) == 0) {
		/* the coordinator does not know us (it restarted): register again */
		tally_log_info("the coordinator does not know this node; registering again");
		rc = 1;
	}
	tally_rpc_calls_done(&c, 1);
	tally_buf_free(&req);
	return rc;
}

/* Shard copies the catalog places on the node called name. */
static int copies_placed(const tally_catalog *cat, const char *name)
{
	const tally_node_info *self = tally_catalog_node_by_name(cat, name);
	int copies = 0;
	for (int i = 0; self && i < cat->nviews; i++) {
		const tally_view_info *v = &cat->views[i];
		for (int s = 0; s < v->num_shards; s++) {
			copies += v->primary[s] == self->id;
			for (int r = 0; r < v->num_replicas; r++)
				copies += v->replicas[s * v->num_replicas + r] == self->id;
		}
	}
	return copies;
}

/* A worker that started with an empty data directory but which the cluster map gives shard
 * copies lost its data (a disk replaced, a directory removed): serving those copies empty
 * would answer reads wrongly, and its replicas hold the data. It refuses to run, and leaves
 * its directory new so that the next start refuses too. Returns 0 if all is well. */
static int lost_directory(tally_worker *w, const tally_catalog *cat, tally_err *err)
{
	tally_node *n = &w->node;
	int copies = n->fresh_dir ? copies_placed(cat, n->cfg.name) : 0;
	if (copies == 0)
		return 0;
	char path[600];
	snprintf(path, sizeof path, "%s/node.state", n->cfg.dir);
	unlink(path);
	snprintf(path, sizeof path, "%s/map", n->cfg.dir);
	unlink(path);
	tally_err_set(err, "55000",
		      "the data directory \"%s\" is new, but the cluster map places %d shard "
		      "copies on node %s: its data was lost",
		      n->cfg.dir, copies, n->cfg.name);
	return tally_err_hint(err,
			      "Remove the node with SELECT pipeline_cluster.remove_node('%s') "
			      "(its replicas hold the data) and start it under a new name, or "
			      "restore its directory.",
			      n->cfg.name);
}

/* After registering (when the coordinator could not be asked before): the same check. */
static void refuse_lost_directory(tally_worker *w)
{
	tally_map *m = tally_node_map(&w->node);
	tally_err err;
	tally_err_clear(&err);
	int rc = lost_directory(w, m->cat, &err);
	tally_map_put(m);
	if (rc == 0)
		return;
	tally_log_error("%s. %s Exiting.", err.message, err.hint);
	_exit(1);
}

static void *hb_main(void *arg)
{
	tally_worker *w = arg;
	pthread_mutex_lock(&w->mu);
	while (!w->stopping) {
		pthread_mutex_unlock(&w->mu);
		int64_t interval =
		    tally_settings_ms(&w->node.cfg.defaults, TALLY_SET_HEARTBEAT_INTERVAL);
		if (w->state == W_UNREGISTERED) {
			if (do_register(w) == 0) {
				refuse_lost_directory(w);
				w->state = W_REGISTERED;
				if (!w->ready_written && tally_node_write_ready(&w->node) == 0)
					w->ready_written = true;
			} else {
				interval = 200;
			}
		} else if (do_heartbeat(w) == 1) {
			w->state = W_UNREGISTERED;
			interval = 0;
		}
		pthread_mutex_lock(&w->mu);
		if (w->stopping)
			break;
		if (interval > 0) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			int64_t ns = ts.tv_nsec + (interval % 1000) * 1000000;
			ts.tv_sec += (time_t)(interval / 1000 + ns / 1000000000);
			ts.tv_nsec = (long)(ns % 1000000000);
			pthread_cond_timedwait(&w->cv, &w->mu, &ts);
		}
	}
	pthread_mutex_unlock(&w->mu);
	return NULL;
}

/* ---- requests ------------------------------------------------------------------------------- */

/* Ask the coordinator for the current map (a heap catalog the caller owns), or NULL. */
static tally_catalog *get_map(tally_worker *w, int timeout_ms)
{
	tally_node *n = &w->node;
	tally_buf req = {0};
	tally_msg_begin(&req, TALLY_MSG_GET_MAP, tally_node_next_req(n), tally_node_epoch(n));
	tally_msg_end(&req);
	tally_rpc_call c;
	tally_catalog *cat = NULL;
	if (coord_call(w, &req, &c, timeout_ms) == 0 && c.hdr.type == TALLY_MSG_MAP) {
		const uint8_t *p;
		uint32_t len;
		if (tally_rd_str(&c.body, &p, &len, TALLY_MSG_MAX) != 0 ||
		    tally_catalog_decode(p, len, &cat) != 0) {
			tally_log_warn("malformed MAP reply from the coordinator");
			cat = NULL;
		}
	}
	tally_rpc_calls_done(&c, 1);
	tally_buf_free(&req);
	return cat;
}

/* Ask the coordinator for the current map and take it. 0 if a map came back. */
static int fetch_map(tally_worker *w, int timeout_ms)
{
	tally_catalog *cat = get_map(w, timeout_ms);
	if (!cat)
		return -1;
	take_map(w, cat);
	return 0;
}

/* The view a peer's request names, looked up in the current map (*m, a reference the caller
 * releases). A view we have not heard of, from a peer whose map is newer than ours (its header
 * epoch says so), means a map push to us was slow or lost: the map is fetched from the
 * coordinator and the lookup repeated. NULL if the view is unknown still. */
static const tally_view_rt *request_view(tally_worker *w, const tally_msg_hdr *h, uint64_t view_id,
					 tally_map **m)
{
	tally_node *n = &w->node;
	*m = tally_node_map(n);
	const tally_view_rt *v = tally_map_view_by_id(*m, view_id);
	if (v || h->epoch <= (*m)->cat->epoch)
		return v;
	tally_map_put(*m);
	fetch_map(w, 1000);
	*m = tally_node_map(n);
	return tally_map_view_by_id(*m, view_id);
}

/* After a primary copy applied a record at position rlsn: wake the replicator, and for
 * replication = sync / quorum wait for the replicas (within the origin's send timeout). */
static int replicated(tally_worker *w, const tally_view_rt *v, uint32_t shard, uint64_t rlsn,
		      tally_err *err)
{
	tally_repl *rp = __atomic_load_n(&w->repl, __ATOMIC_ACQUIRE);
	if (!rp || v->info->num_replicas == 0)
		return 0;
	tally_repl_notify(rp);
	uint64_t gen, pos;
	if (v->info->replication == TALLY_REPL_ASYNC ||
	    tally_store_pos(w->store, v->info->id, shard, &gen, &pos) != 0)
		return 0;
	return tally_repl_wait(rp, v->info, shard, gen, rlsn, 1500, err);
}

static void handle_apply(tally_worker *w, const tally_msg_hdr *h, tally_rd *r, tally_buf *reply)
{
	tally_node *n = &w->node;
	tally_msg_apply a;
	const uint8_t *body = r->p + r->off;
	size_t bodylen = tally_rd_left(r);
	if (tally_msg_get_apply(r, &a) != 0) {
		tally_rpc_reply_error(reply, h->req_id, tally_node_epoch(n),
				      TALLY_SQLSTATE_PROTOCOL, "malformed APPLY");
		return;
	}
	tally_map *m;
	const tally_view_rt *v = request_view(w, h, a.view_id, &m);
	tally_err err;
	tally_err_clear(&err);
	uint64_t lsn = 0, rlsn = 0;
	if (!v) {
		tally_rpc_reply_error(
		    reply, h->req_id, m->cat->epoch, TALLY_SQLSTATE_UNDEFINED_TABLE,
		    "node %s does not know view id %llu (map epoch %llu)", n->cfg.name,
		    (unsigned long long)a.view_id, (unsigned long long)m->cat->epoch);
	} else if (!v->ok) {
		tally_rpc_reply_error(reply, h->req_id, m->cat->epoch, TALLY_SQLSTATE_INTERNAL,
				      "%s", v->error);
	} else if (a.target_shard >= (uint32_t)v->info->num_shards ||
		   a.home_shard >= (uint32_t)v->info->num_shards ||
		   v->info->primary[a.target_shard] != tally_node_id(n)) {
		tally_rpc_reply_error(reply, h->req_id, m->cat->epoch, TALLY_SQLSTATE_UNAVAILABLE,
				      "node %s is not the primary of shard %s_%u", n->cfg.name,
				      v->info->name, a.target_shard);
	} else if (tally_store_apply(w->store, n->wal, v, m->cat->epoch, tally_node_id(n), h->flags,
				     &a, body, bodylen, r, &lsn, &rlsn, &err) != 0 ||
		   tally_wal_flush(n->wal, lsn, -1, &err) != 0 ||
		   replicated(w, v, a.target_shard, rlsn, &err) != 0) {
		tally_rpc_reply_error(reply, h->req_id, m->cat->epoch, err.sqlstate, "%s",
				      err.message);
	} else {
		tally_msg_begin(reply, TALLY_MSG_APPLY_OK, h->req_id, m->cat->epoch);
		tally_msg_end(reply);
	}
	tally_map_put(m);
}

static void handle_read(tally_worker *w, const tally_msg_hdr *h, tally_rd *r, tally_buf *reply)
{
	tally_node *n = &w->node;
	tally_msg_read q;
	if (tally_msg_get_read(r, &q) != 0 || tally_msg_done(r) != 0) {
		tally_rpc_reply_error(reply, h->req_id, tally_node_epoch(n),
				      TALLY_SQLSTATE_PROTOCOL, "malformed READ");
		return;
	}
	tally_map *m;
	const tally_view_rt *v = request_view(w, h, q.view_id, &m);
	if (!v || !v->ok || q.shard >= (uint32_t)v->info->num_shards) {
		tally_rpc_reply_error(reply, h->req_id, m->cat->epoch,
				      TALLY_SQLSTATE_UNDEFINED_TABLE,
				      "node %s has no shard %u of view id %llu", n->cfg.name,
				      q.shard, (unsigned long long)q.view_id);
	} else if ((h->flags & TALLY_MSG_F_CURRENT) &&
		   tally_store_current(w->store, v->info->id, q.shard) != 1) {
		tally_rpc_reply_error(reply, h->req_id, m->cat->epoch, TALLY_SQLSTATE_UNAVAILABLE,
				      "the copy of shard %s_%u on %s is behind its primary",
				      v->info->name, q.shard, n->cfg.name);
	} else if (v->info->primary[q.shard] != tally_node_id(n) &&
		   tally_store_servable(w->store, v->info->id, q.shard) != 1) {
		/* an empty replica that may be waiting for its first records or snapshot (e.g. a
		 * new copy after remove_node): it cannot tell what it lacks */
		tally_rpc_reply_error(reply, h->req_id, m->cat->epoch, TALLY_SQLSTATE_UNAVAILABLE,
				      "the copy of shard %s_%u on %s has not caught up with its "
				      "primary",
				      v->info->name, q.shard, n->cfg.name);
	} else {
		tally_msg_begin(reply, TALLY_MSG_READ_OK, h->req_id, m->cat->epoch);
		tally_store_read(w->store, v, q.shard, q.has_key ? q.key : NULL, q.keylen, reply);
		tally_msg_end(reply);
		if (reply->len > TALLY_MSG_MAX) {
			/* the reader's socket would drop it and the reader wait for nothing */
			size_t len = reply->len;
			tally_buf_reset(reply);
			tally_rpc_reply_error(
			    reply, h->req_id, m->cat->epoch, TALLY_SQLSTATE_PROGRAM_LIMIT,
			    "shard %s_%u is too large to read in one message (%zu bytes, "
			    "the limit is %u)",
			    v->info->name, q.shard, len, TALLY_MSG_MAX);
		}
	}
	tally_map_put(m);
}

/* ---- replication, replica side (DESIGN §6) ----------------------------------------------- */

static bool placed(const tally_view_info *v, uint32_t sh, uint32_t from, uint32_t self)
{
	if (sh >= (uint32_t)v->num_shards || v->primary[sh] != from || self == 0)
		return false;
	for (int r = 0; r < v->num_replicas; r++)
		if (v->replicas[sh * (uint32_t)v->num_replicas + (uint32_t)r] == self)
			return true;
	return false;
}

/* The view of a replication message from node `from` for shard sh: taken only if the map says
 * `from` is the shard's primary and this node one of its replicas (a sender with a newer map
 * makes this node fetch its map first). NULL with err otherwise; *m is released by the
 * caller. */
static const tally_view_rt *repl_view(tally_worker *w, const tally_msg_hdr *h, uint64_t view_id,
				      uint32_t sh, uint32_t from, tally_map **m, tally_err *err)
{
	tally_node *n = &w->node;
	const tally_view_rt *v = request_view(w, h, view_id, m);
	if (v && v->ok && !placed(v->info, sh, from, tally_node_id(n)) &&
	    h->epoch > (*m)->cat->epoch) {
		tally_map_put(*m);
		fetch_map(w, 1000);
		*m = tally_node_map(n);
		v = tally_map_view_by_id(*m, view_id);
	}
	if (!v || !v->ok) {
		tally_err_set(err, TALLY_SQLSTATE_UNDEFINED_TABLE,
			      "node %s does not know view id %llu (map epoch %llu)", n->cfg.name,
			      (unsigned long long)view_id, (unsigned long long)(*m)->cat->epoch);
		return NULL;
	}
	if (!placed(v->info, sh, from, tally_node_id(n))) {
		tally_err_set(err, TALLY_SQLSTATE_UNAVAILABLE,
			      "node %s is not a replica of shard %s_%u with node %u its primary "
			      "(map epoch %llu)",
			      n->cfg.name, v->info->name, sh, from,
			      (unsigned long long)(*m)->cat->epoch);
		return NULL;
	}
	return v;
}

static void put_pos(tally_buf *reply, const tally_msg_hdr *h, uint64_t epoch, uint64_t gen,
		    uint64_t rlsn, uint64_t have)
{
	tally_msg_begin(reply, TALLY_MSG_REPL_OK, h->req_id, epoch);
	tally_buf_put_u64(reply, gen);
	tally_buf_put_u64(reply, rlsn);
	tally_buf_put_u64(reply, have);
	tally_msg_end(reply);
}

static void handle_repl(tally_worker *w, const tally_msg_hdr *h, tally_rd *r, tally_buf *reply)
{
	tally_node *n = &w->node;
	uint32_t from, sh, nrec;
	uint64_t vid, gen, first, prim;
	if (tally_rd_u32(r, &from) || tally_rd_u64(r, &vid) || tally_rd_u32(r, &sh) ||
	    tally_rd_u64(r, &gen) || tally_rd_u64(r, &first) || tally_rd_u64(r, &prim) ||
	    tally_rd_u32(r, &nrec) || nrec > tally_rd_left(r) / 5 ||
	    (nrec && (gen == 0 || first == 0))) {
		tally_rpc_reply_error(reply, h->req_id, tally_node_epoch(n),
				      TALLY_SQLSTATE_PROTOCOL, "malformed REPL");
		return;
	}
	tally_map *m;
	tally_err err;
	tally_err_clear(&err);
	const tally_view_rt *v = repl_view(w, h, vid, sh, from, &m, &err);
	uint64_t pgen = 0, prlsn = 0, lsn = 0;
	if (!v ||
	    tally_store_repl_apply(w->store, n->wal, v, m->cat->epoch, sh, gen, first, prim, nrec,
				   r, &pgen, &prlsn, &lsn, &err) != 0 ||
	    tally_wal_flush(n->wal, lsn, -1, &err) != 0) {
		tally_rpc_reply_error(reply, h->req_id, m->cat->epoch, err.sqlstate, "%s",
				      err.message);
	} else {
		/* a transfer in progress for this shard says how far it got */
		uint64_t have = 0;
		pthread_mutex_lock(&w->snap_mu);
		for (size_t i = 0; i < w->nsnaps; i++)
			if (w->snaps[i].view_id == vid && w->snaps[i].shard == sh)
				have = w->snaps[i].buf.len;
		pthread_mutex_unlock(&w->snap_mu);
		put_pos(reply, h, m->cat->epoch, pgen, prlsn, have);
	}
	tally_map_put(m);
}

/* Snapshot transfers idle this long are dropped (their primary gave up or died). */
#define SNAP_IN_IDLE_US 60000000LL

static void handle_repl_snap(tally_worker *w, const tally_msg_hdr *h, tally_rd *r, tally_buf *reply)
{
	tally_node *n = &w->node;
	uint32_t from, sh, clen;
	uint64_t vid, gen, rlsn, total, off;
	const uint8_t *chunk;
	if (tally_rd_u32(r, &from) || tally_rd_u64(r, &vid) || tally_rd_u32(r, &sh) ||
	    tally_rd_u64(r, &gen) || tally_rd_u64(r, &rlsn) || tally_rd_u64(r, &total) ||
	    tally_rd_u64(r, &off) || tally_rd_str(r, &chunk, &clen, TALLY_MSG_MAX) ||
	    tally_msg_done(r) != 0 || gen == 0 || off > total || clen > total - off ||
	    total > ((uint64_t)1 << 40)) {
		tally_rpc_reply_error(reply, h->req_id, tally_node_epoch(n),
				      TALLY_SQLSTATE_PROTOCOL, "malformed REPL_SNAP");
		return;
	}
	tally_map *m;
	tally_err err;
	tally_err_clear(&err);
	const tally_view_rt *v = repl_view(w, h, vid, sh, from, &m, &err);
	if (!v) {
		tally_rpc_reply_error(reply, h->req_id, m->cat->epoch, err.sqlstate, "%s",
				      err.message);
		tally_map_put(m);
		return;
	}
	int64_t now = tally_mono_us();
	pthread_mutex_lock(&w->snap_mu);
	snap_in *si = NULL;
	for (size_t i = 0; i < w->nsnaps;) {
		snap_in *x = &w->snaps[i];
		if (x->view_id == vid && x->shard == sh) {
			si = x;
			i++;
		} else if (now - x->touched_us > SNAP_IN_IDLE_US) {
			tally_buf_free(&x->buf);
			w->snaps[i] = w->snaps[--w->nsnaps];
		} else {
			i++;
		}
	}
	if (!si) {
		w->snaps = tally_xrealloc(w->snaps, (w->nsnaps + 1) * sizeof *w->snaps);
		si = &w->snaps[w->nsnaps++];
		memset(si, 0, sizeof *si);
		si->view_id = vid;
		si->shard = sh;
	}
	if (off == 0 || si->gen != gen || si->rlsn != rlsn || si->total != total) {
		/* a new transfer */
		tally_buf_reset(&si->buf);
		si->gen = gen;
		si->rlsn = rlsn;
		si->total = total;
	}
	si->touched_us = now;
	if (off == si->buf.len)
		tally_buf_append(&si->buf, chunk, clen);
	uint64_t have = si->buf.len;
	tally_buf done = {0};
	if (have == total) {
		done = si->buf; /* installed below, outside the lock */
		si->buf = (tally_buf){0};
		*si = w->snaps[--w->nsnaps];
	}
	pthread_mutex_unlock(&w->snap_mu);
	if (have == total) {
		uint64_t pgen, prlsn;
		int rc = tally_store_snap_install(w->store, n->wal, m, done.data, done.len, &pgen,
						  &prlsn, &err);
		tally_buf_free(&done);
		if (rc != 0) {
			tally_rpc_reply_error(reply, h->req_id, m->cat->epoch, err.sqlstate, "%s",
					      err.message);
		} else {
			tally_log_info("installed a snapshot of shard %s_%u from node %u "
				       "(position %llu)",
				       v->info->name, sh, from, (unsigned long long)prlsn);
			put_pos(reply, h, m->cat->epoch, pgen, prlsn, total);
		}
	} else {
		uint64_t pgen = 0, prlsn = 0;
		tally_store_pos(w->store, vid, sh, &pgen, &prlsn);
		put_pos(reply, h, m->cat->epoch, pgen, prlsn, have);
	}
	tally_map_put(m);
}

static void handle_status(tally_worker *w, const tally_msg_hdr *h, tally_rd *r, tally_buf *reply)
{
	tally_node *n = &w->node;
	tally_repl *rp = __atomic_load_n(&w->repl, __ATOMIC_ACQUIRE);
	if (tally_msg_done(r) != 0) {
		tally_rpc_reply_error(reply, h->req_id, tally_node_epoch(n),
				      TALLY_SQLSTATE_PROTOCOL, "malformed STATUS");
		return;
	}
	tally_repl_row *rows = NULL;
	size_t nr = rp ? tally_repl_rows(rp, &rows) : 0;
	tally_msg_begin(reply, TALLY_MSG_STATUS_OK, h->req_id, tally_node_epoch(n));
	tally_buf_put_u32(reply, (uint32_t)nr);
	for (size_t i = 0; i < nr; i++) {
		tally_buf_put_u64(reply, rows[i].view_id);
		tally_buf_put_u32(reply, rows[i].shard);
		tally_buf_put_u32(reply, rows[i].replica);
		tally_buf_put_str(reply, rows[i].state, (uint32_t)strlen(rows[i].state));
		tally_buf_put_u64(reply, rows[i].primary_rlsn);
		tally_buf_put_u64(reply, rows[i].sent_rlsn);
		tally_buf_put_u64(reply, rows[i].applied_rlsn);
		tally_buf_put_u64(reply, rows[i].lag_records);
		tally_buf_put_u64(reply, rows[i].lag_bytes);
		tally_buf_put_u64(reply, (uint64_t)rows[i].lag_ms);
		tally_buf_put_u64(reply, rows[i].snapshots);
	}
	free(rows);
	tally_hint_row *hr;
	size_t nh = tally_store_hint_rows(w->store, &hr);
	tally_buf_put_u32(reply, (uint32_t)nh);
	for (size_t i = 0; i < nh; i++) {
		tally_buf_put_u64(reply, hr[i].view_id);
		tally_buf_put_u32(reply, hr[i].shard);
		tally_buf_put_u32(reply, hr[i].home);
		tally_buf_put_u32(reply, hr[i].visible);
		tally_buf_put_u32(reply, hr[i].in_doubt);
		tally_buf_put_u32(reply, hr[i].handing_off);
		tally_buf_put_u64(reply, hr[i].bytes);
	}
	free(hr);
	tally_msg_end(reply);
}

static void handle_pos(tally_worker *w, const tally_msg_hdr *h, tally_rd *r, tally_buf *reply)
{
	tally_node *n = &w->node;
	uint64_t vid, gen = 0, rlsn = 0;
	uint32_t sh;
	if (tally_rd_u64(r, &vid) || tally_rd_u32(r, &sh) || tally_msg_done(r) != 0) {
		tally_rpc_reply_error(reply, h->req_id, tally_node_epoch(n),
				      TALLY_SQLSTATE_PROTOCOL, "malformed POS");
		return;
	}
	bool has = tally_store_pos(w->store, vid, sh, &gen, &rlsn) == 0;
	tally_msg_begin(reply, TALLY_MSG_POS_OK, h->req_id, tally_node_epoch(n));
	tally_buf_putc(reply, has);
	tally_buf_put_u64(reply, gen);
	tally_buf_put_u64(reply, rlsn);
	tally_msg_end(reply);
}

static void worker_handle(tally_node *n, const tally_msg_hdr *h, tally_rd *r, tally_buf *reply)
{
	tally_worker *w = n->role.ctx;
	switch (h->type) {
	case TALLY_MSG_APPLY:
		handle_apply(w, h, r, reply);
		break;
	case TALLY_MSG_READ:
		handle_read(w, h, r, reply);
		break;
	case TALLY_MSG_REPL:
		handle_repl(w, h, r, reply);
		break;
	case TALLY_MSG_REPL_SNAP:
		handle_repl_snap(w, h, r, reply);
		break;
	case TALLY_MSG_STATUS:
		handle_status(w, h, r, reply);
		break;
	case TALLY_MSG_POS:
		handle_pos(w, h, r, reply);
		break;
	case TALLY_MSG_MAP_PUSH:
		if (install_from(w, r) != 0 || tally_msg_done(r) != 0) {
			tally_rpc_reply_error(reply, h->req_id, tally_node_epoch(n),
					      TALLY_SQLSTATE_PROTOCOL, "malformed MAP_PUSH");
		} else {
			tally_msg_begin(reply, TALLY_MSG_OK, h->req_id, tally_node_epoch(n));
			tally_msg_end(reply);
		}
		break;
	default:
		break; /* the node answers ERROR */
	}
}

/* DDL typed at a worker runs on the coordinator. */
static int worker_ddl(tally_node *n, const char *sql, const tally_settings *s, char *tag,
		      size_t tagsz, tally_err *notice, tally_err *err)
{
	tally_worker *w = n->role.ctx;
	tally_buf req = {0};
	tally_msg_begin(&req, TALLY_MSG_DDL, tally_node_next_req(n), tally_node_epoch(n));
	tally_buf_put_str(&req, sql, (uint32_t)strlen(sql));
	const char *nrep = s->v[TALLY_SET_NUM_REPLICAS];
	tally_buf_put_str(&req, nrep, (uint32_t)strlen(nrep));
	tally_msg_end(&req);
	tally_rpc_call c;
	/* The coordinator answers once every live worker has the new map: allow for its pushes
	 * (2 s to send, 2 s to hear back) on top of the session's rpc_timeout. */
	int rc = coord_call(w, &req, &c, (int)tally_settings_ms(s, TALLY_SET_RPC_TIMEOUT) + 5000);
	if (rc != 0) {
		tally_err_set(err, c.sqlstate[0] ? c.sqlstate : TALLY_SQLSTATE_UNAVAILABLE,
			      "could not run DDL on the coordinator: %s", c.errmsg);
		if (strstr(c.errmsg, "in time"))
			tally_err_hint(
			    err, "The coordinator may still have applied the statement: check "
				 "pipeline_cluster.streams and pipeline_cluster.views.");
	} else if (c.hdr.type != TALLY_MSG_DDL_OK) {
		rc = tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
				   "unexpected reply to DDL from the coordinator");
	} else {
		tally_catalog *cat = NULL;
		rc = tally_ddl_reply_get(&c.body, tag, tagsz, notice, &cat, err);
		if (rc == 0)
			take_map(w, cat);
	}
	tally_rpc_calls_done(&c, 1);
	tally_buf_free(&req);
	return rc;
}

/* ---- durability hooks --------------------------------------------------------------------- */

/* Does dir/sub hold anything but . and ..? */
static bool dir_has_entries(const char *dir, const char *sub)
{
	char path[700];
	snprintf(path, sizeof path, "%s/%s", dir, sub);
	DIR *d = opendir(path);
	bool any = false;
	struct dirent *de;
	while (d && !any && (de = readdir(d)))
		any = strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0;
	if (d)
		closedir(d);
	return any;
}

/* Recovery: the map this worker last had (DIR/map), then its shard snapshots. */
static int worker_recover(tally_node *n, tally_err *err)
{
	tally_worker *w = n->role.ctx;
	char path[600];
	snprintf(path, sizeof path, "%s/map", n->cfg.dir);
	tally_buf b = {0};
	int rc = tally_file_read(path, &b);
	if (rc < 0) {
		tally_buf_free(&b);
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL, "could not read \"%s\": %s",
				     path, strerror(errno));
	}
	if (rc == 0) {
		tally_catalog *cat;
		if (tally_catalog_decode(b.data, b.len, &cat) != 0) {
			tally_buf_free(&b);
			tally_err_set(err, TALLY_SQLSTATE_DATA_CORRUPTED,
				      "saved cluster map \"%s\" is corrupt", path);
			return tally_err_hint(err, "Remove the file: the worker then waits for the "
						   "map from the coordinator before it recovers.");
		}
		/* Our id from the saved map, so this node serves its shards as soon as it has
		 * recovered, even before (or without) the coordinator answering. */
		const tally_node_info *self = tally_catalog_node_by_name(cat, n->cfg.name);
		if (self)
			__atomic_store_n(&n->node_id, self->id, __ATOMIC_RELEASE);
		tally_node_install_map(n, cat);
	}
	tally_buf_free(&b);
	if (rc == 1 && (!n->fresh_dir || dir_has_entries(n->cfg.dir, "snap"))) {
		/* A directory with data but no saved map (someone removed it): the views its
		 * snapshots and log records belong to must come from the coordinator, or they
		 * would all look dropped and be deleted. */
		tally_log_warn("no saved cluster map in \"%s\": waiting for the coordinator's",
			       n->cfg.dir);
		while (fetch_map(w, 2000) != 0)
			tally_log_warn(
			    "still waiting for the cluster map from the coordinator at %s",
			    n->cfg.coordinator_addr);
	}
	if (rc == 1 && n->fresh_dir) {
		/* A new directory: unless the coordinator says this node held shard copies
		 * (then its data was lost and it must not serve them empty). */
		tally_catalog *cat = get_map(w, 2000);
		if (!cat)
			tally_log_warn("could not ask the coordinator whether node %s held data; "
				       "checking after registration",
				       n->cfg.name);
		int lost = cat ? lost_directory(w, cat, err) : 0;
		tally_catalog_free(cat);
		if (lost)
			return -1;
	}
	tally_map *m = tally_node_map(n);
	rc = tally_store_load(w->store, m, err);
	tally_map_put(m);
	return rc;
}

static int worker_replay(tally_node *n, uint8_t type, uint64_t lsn, uint64_t end, const uint8_t *p,
			 uint32_t len, tally_err *err)
{
	tally_worker *w = n->role.ctx;
	if (type != TALLY_REC_APPLY && type != TALLY_REC_SHARD)
		return tally_err_set(err, TALLY_SQLSTATE_DATA_CORRUPTED,
				     "unexpected record type %u at log position %llu", type,
				     (unsigned long long)lsn);
	tally_map *m = tally_node_map(n);
	int rc = tally_store_replay(w->store, m, tally_node_id(n), type, lsn, end, p, len, err);
	tally_map_put(m);
	return rc;
}

static int worker_checkpoint(tally_node *n, tally_err *err)
{
	tally_worker *w = n->role.ctx;
	return tally_store_checkpoint(w->store, n->wal, err);
}

/* After replay: no shard may have applied log positions the log does not have (the log lost
 * its end, or the directory was put together from different times). */
static int worker_check(tally_node *n, uint64_t log_end, tally_err *err)
{
	tally_worker *w = n->role.ctx;
	uint64_t max = tally_store_max_lsn(w->store);
	if (max <= log_end)
		return 0;
	tally_err_set(err, TALLY_SQLSTATE_DATA_CORRUPTED,
		      "shard snapshots cover log position %llu but the log ends at %llu",
		      (unsigned long long)max, (unsigned long long)log_end);
	return tally_err_hint(err,
			      "The log lost records the snapshots depend on. Restore the "
			      "directory from a backup, or remove it to start this node empty.");
}

int tally_worker_start(tally_worker **out, const tally_node_config *cfg)
{
	tally_worker *w = tally_xcalloc(1, sizeof *w);
	w->store = tally_store_alloc(
	    cfg->dir, tally_settings_bool(&cfg->defaults, TALLY_SET_FSYNC),
	    (uint64_t)tally_settings_bytes(&cfg->defaults, TALLY_SET_REPLICATION_BUFFER));
	pthread_mutex_init(&w->mu, NULL);
	pthread_mutex_init(&w->snap_mu, NULL);
	pthread_mutex_init(&w->map_mu, NULL);
	pthread_cond_init(&w->cv, NULL);
	tally_node_role role = {.ddl = worker_ddl,
				.handle = worker_handle,
				.recover = worker_recover,
				.replay = worker_replay,
				.checkpoint = worker_checkpoint,
				.check = worker_check,
				.ctx = w};
	if (tally_node_open(&w->node, cfg, &role) != 0) {
		tally_node_close(&w->node);
		tally_store_free(w->store);
		free(w);
		return -1;
	}
	__atomic_store_n(&w->repl, tally_repl_start(&w->node, w->store), __ATOMIC_RELEASE);
	pthread_create(&w->hb_thread, NULL, hb_main, w);
	*out = w;
	return 0;
}

void tally_worker_stop(tally_worker *w)
{
	pthread_mutex_lock(&w->mu);
	w->stopping = true;
	pthread_cond_broadcast(&w->cv);
	pthread_mutex_unlock(&w->mu);
	pthread_join(w->hb_thread, NULL);
	tally_repl *rp = __atomic_exchange_n(&w->repl, NULL, __ATOMIC_ACQ_REL);
	tally_repl_stop(rp);
	tally_node_close(&w->node);
	tally_repl_free(rp);
	tally_store_free(w->store);
	for (size_t i = 0; i < w->nsnaps; i++)
		tally_buf_free(&w->snaps[i].buf);
	free(w->snaps);
	pthread_mutex_destroy(&w->snap_mu);
	pthread_cond_destroy(&w->cv);
	pthread_mutex_destroy(&w->mu);
	pthread_mutex_destroy(&w->map_mu);
	free(w);
}
