/*
 * coordinator.c - the coordinator node. It owns the authoritative catalog (nodes, streams,
 * views, placements) under one mutex; every change bumps the epoch and is published to every
 * live worker (MAP_PUSH) before the change is acknowledged, so a DDL statement that returned
 * is visible at every node. Workers register (REGISTER) and heartbeat (HEARTBEAT); the failure
 * detector marks a worker down after pipeline_cluster.failure_timeout of silence and publishes
 * that too. The coordinator is also a full SQL endpoint (an origin for ingest and a reader).
 */
#include "coordinator.h"
#include "tally/ring.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <strings.h>

/* A replica copy's position, asked before remove_node promotes one (DESIGN §7). */
typedef struct copy_pos {
	uint64_t view_id;
	uint32_t shard, node;
	uint64_t gen, rlsn;
} copy_pos;

struct tally_coord {
	tally_node node;
	pthread_mutex_t mu; /* guards cat and pos */
	tally_catalog *cat;
	copy_pos *pos; /* answers gathered for the remove_node being planned */
	size_t npos;
	pthread_mutex_t remove_mu; /* one remove_node at a time (it owns pos) */
	pthread_t fd_thread;
	pthread_t push_thread; /* publishes what the failure detector decided */
	pthread_cond_t push_cv;
	bool push_pending; /* guarded by stop_mu */
	pthread_mutex_t stop_mu;
	pthread_cond_t stop_cv;
	bool stopping;
};

/* ---- the catalog on disk ----------------------------------------------------------------------
 *
 * DIR/catalog holds the encoded catalog (tally_catalog_encode, which carries its own magic and
 * version). It is replaced atomically: write DIR/catalog.tmp, fsync it, rename it over
 * DIR/catalog, fsync the directory. A restarted coordinator resumes the same cluster. */

static int catalog_save(tally_coord *c)
{
	tally_buf enc = {0};
	tally_catalog_encode(c->cat, &enc);
	int rc = tally_file_replace(c->node.cfg.dir, "catalog", enc.data, enc.len, true);
	if (rc != 0)
		tally_log_error("could not write the catalog to \"%s/catalog\": %s",
				c->node.cfg.dir, strerror(errno));
	tally_buf_free(&enc);
	return rc;
}

/* Load DIR/catalog if there is one. 0 = loaded or absent, -1 = present but unreadable (the
 * coordinator then refuses to start rather than forget the cluster). */
static int catalog_load(tally_coord *c, const char *dir)
{
	char path[600];
	snprintf(path, sizeof path, "%s/catalog", dir);
	tally_buf b = {0};
	int rrc = tally_file_read(path, &b);
	if (rrc == 1)
		return 0;
	tally_catalog *cat = NULL;
	if (rrc != 0 || tally_catalog_decode(b.data, b.len, &cat) != 0) {
		tally_log_error("the catalog in \"%s\" is corrupt or unreadable; refusing to start",
				path);
		tally_buf_free(&b);
		return -1;
	}
	tally_buf_free(&b);
	/* Give every known worker a full failure timeout to heartbeat the new incarnation. */
	int64_t now = tally_now_us();
	for (int i = 0; i < cat->nnodes; i++)
		cat->nodes[i].last_heartbeat_us = now;
	/* Epochs count from the cluster's creation time in microseconds, one per change, and
	 * node up/down changes are not saved (see publish_locked): now is past every epoch the
	 * workers can have seen. */
	cat->epoch = cat->epoch + 1 > (uint64_t)now ? cat->epoch + 1 : (uint64_t)now;
	tally_catalog_free(c->cat);
	c->cat = cat;
	tally_log_info("loaded the catalog: %d workers, %d streams, %d views, epoch %llu",
		       cat->nnodes, cat->nstreams, cat->nviews, (unsigned long long)cat->epoch);
	return 0;
}

/* Recovery of the coordinator's own outbox needs the views its batches are for: install the
 * loaded catalog as the map before the log is replayed. */
static int coord_recover(tally_node *n, tally_err *err)
{
	(void)err;
	tally_coord *c = n->role.ctx;
	tally_node_install_map(n, tally_catalog_clone(c->cat));
	return 0;
}

/* A change to the catalog (caller holds c->mu and has bumped the epoch): persist it (if
 * persist) and install it as this node's map. Pushing it to the workers is push_map's job,
 * done after the lock is released. A node going down or up is not persisted: it is runtime
 * state (a restarted coordinator gives every worker a full failure timeout), and an fsync
 * under c->mu on a busy disk would hold every heartbeat up and make other workers look down
 * in turn. */
static void publish_locked(tally_coord *c, bool persist)
{
	if (persist)
		catalog_save(c);
	tally_node_install_map(&c->node, tally_catalog_clone(c->cat));
}

/* Push the current catalog to every live worker but skip_node and wait for their
 * acknowledgements (bounded). Called without c->mu, so a hung worker cannot stall heartbeats;
 * concurrent pushes may arrive out of order, and workers keep only the newest epoch. */
static void push_map(tally_coord *c, uint32_t skip_node)
{
	tally_node *n = &c->node;
	tally_buf enc = {0};
	pthread_mutex_lock(&c->mu);
	uint64_t epoch = c->cat->epoch;
	tally_catalog_encode(c->cat, &enc);
	int nnodes = c->cat->nnodes;
	tally_rpc_call *calls = tally_xcalloc((size_t)nnodes + 1, sizeof *calls);
	char(*addr)[128] = tally_xcalloc((size_t)nnodes + 1, sizeof *addr);
	char(*name)[TALLY_NAME_MAX] = tally_xcalloc((size_t)nnodes + 1, sizeof *name);
	/* Workers marked up first, then those marked down: a worker can be alive and still not
	 * heartbeat (its way out is broken, or it was slow), and a worker that ingests with an
	 * old map sends its rows to the views it knows. The down ones get a short timeout. */
	int nc = 0, nup = 0;
	for (int pass = 0; pass < 2; pass++) {
		for (int i = 0; i < nnodes; i++) {
			const tally_node_info *ni = &c->cat->nodes[i];
			if ((ni->state == TALLY_NODE_UP) != (pass == 0) || ni->id == skip_node)
				continue;
			tally_strlcpy(addr[nc], ni->data_addr, sizeof addr[nc]);
			tally_strlcpy(name[nc], ni->name, sizeof name[nc]);
			nc++;
		}
		if (pass == 0)
			nup = nc;
	}
	pthread_mutex_unlock(&c->mu);
	for (int i = 0; i < nc; i++) {
		tally_msg_begin(&calls[i].req, TALLY_MSG_MAP_PUSH, tally_node_next_req(n), epoch);
		tally_buf_put_str(&calls[i].req, (const char *)enc.data, (uint32_t)enc.len);
		tally_msg_end(&calls[i].req);
		calls[i].addr = addr[i];
		calls[i].peer = name[i];
	}
	tally_rpc_call_many(n->rpc, calls, nup, 2000);
	tally_rpc_call_many(n->rpc, calls + nup, nc - nup, 300);
	for (int i = 0; i < nc; i++) {
		if (calls[i].rc != 0 && i < nup)
			tally_log_warn("could not publish map epoch %llu to %s: %s",
				       (unsigned long long)epoch, calls[i].peer, calls[i].errmsg);
		tally_buf_free(&calls[i].req);
	}
	tally_rpc_calls_done(calls, nc);
	free(calls);
	free(addr);
	free(name);
	tally_buf_free(&enc);
}

static void put_catalog(tally_buf *b, const tally_catalog *cat)
{
	tally_buf enc = {0};
	tally_catalog_encode(cat, &enc);
	tally_buf_put_str(b, (const char *)enc.data, (uint32_t)enc.len);
	tally_buf_free(&enc);
}

/* ---- DDL ------------------------------------------------------------------------------------- */

static int members(const tally_catalog *cat, tally_ring_member *m)
{
	int n = 0;
	for (int i = 0; i < cat->nnodes; i++) {
		if (cat->nodes[i].state != TALLY_NODE_UP)
			continue;
		m[n].id = cat->nodes[i].id;
		m[n].name = cat->nodes[i].name;
		m[n].weight = 1;
		n++;
	}
	return n;
}

static int ddl_create_view(tally_coord *c, const tally_stmt *st, int default_replicas, char *notice,
			   size_t noticesz, tally_err *err)
{
	tally_catalog *cat = c->cat;
	const char *name = st->u.create_view.name;
	if (tally_catalog_view(cat, name) || tally_catalog_stream(cat, name)) {
		if (st->u.create_view.if_not_exists && tally_catalog_view(cat, name)) {
			snprintf(notice, noticesz, "relation \"%s\" already exists, skipping",
				 name);
			return 1;
		}
		return tally_err_set(err, TALLY_SQLSTATE_DUPLICATE_TABLE,
				     "relation \"%s\" already exists", name);
	}
	const char *stream = st->u.create_view.stream;
	const tally_stream_info *si = stream ? tally_catalog_stream(cat, stream) : NULL;
	if (!si) {
		if (stream && tally_catalog_view(cat, stream))
			return tally_err_set(
			    err, TALLY_SQLSTATE_WRONG_OBJECT_TYPE,
			    "continuous view \"%s\" must read from a stream, and \"%s\" is a view",
			    name, stream);
		return tally_err_set(err, TALLY_SQLSTATE_UNDEFINED_TABLE,
				     "stream \"%s\" does not exist", stream ? stream : "?");
	}
	/* Analyze here so that errors reach the user now, not at every node later. */
	tally_arena a = {0};
	tally_column *cols = tally_arena_alloc(&a, (size_t)(si->ncols + 1) * sizeof *cols);
	memcpy(cols, si->cols, (size_t)si->ncols * sizeof *cols);
	memset(&cols[si->ncols], 0, sizeof *cols);
	tally_strlcpy(cols[si->ncols].name, "arrival_timestamp", TALLY_NAME_MAX);
	cols[si->ncols].type = TALLY_T_TIMESTAMPTZ;
	tally_relation rel = {.name = si->name, .ncols = si->ncols + 1, .cols = cols};
	tally_view_plan *plan;
	int rc = tally_view_analyze(st->u.create_view.query, &rel, &a, &plan, err);
	tally_arena_free(&a);
	if (rc != 0)
		return -1;
	/* Place on the workers that are up now: a down node would get primaries nobody can
	 * write to. */
	tally_ring_member *mem = tally_xcalloc((size_t)cat->nnodes + 1, sizeof *mem);
	int nworkers = members(cat, mem);
	if (nworkers == 0) {
		free(mem);
		return tally_err_set(err, TALLY_SQLSTATE_INSUFFICIENT_RESOURCES,
				     "cannot create continuous view \"%s\": no worker node is up",
				     name);
	}
	int nshards = tally_ring_num_shards(st->u.create_view.num_shards,
					    st->u.create_view.shard_factor, nworkers);
	int nrep = st->u.create_view.num_replicas;
	if (nrep < 0) {
		nrep = default_replicas;
		if (nrep > nworkers - 1)
			nrep = nworkers - 1; /* the default adapts to small clusters */
	}
	tally_view_info v;
	memset(&v, 0, sizeof v);
	tally_strlcpy(v.name, name, sizeof v.name);
	tally_strlcpy(v.stream, si->name, sizeof v.stream);
	v.query_text = (char *)st->u.create_view.query_text;
	v.num_shards = nshards;
	v.num_replicas = nrep;
	v.sharding_policy = st->u.create_view.sharding_policy < 0
				? TALLY_POLICY_READ_OPTIMIZED
				: st->u.create_view.sharding_policy;
	v.replication = st->u.create_view.replication < 0 ? TALLY_REPL_ASYNC
							  : (uint8_t)st->u.create_view.replication;
	v.primary = tally_xcalloc((size_t)nshards, sizeof *v.primary);
	v.replicas = tally_xcalloc((size_t)nshards * (size_t)(nrep ? nrep : 1), sizeof *v.replicas);
	rc = tally_ring_place(mem, nworkers, name, nshards, nrep, 0, v.primary, v.replicas, err);
	if (rc == 0)
		rc = tally_catalog_add_view(cat, &v, err);
	free(mem);
	free(v.primary);
	free(v.replicas);
	return rc;
}

/* ---- remove_node ------------------------------------------------------------------------------
 *
 * SELECT pipeline_cluster.remove_node('X') takes a dead worker out of the cluster for good:
 * for every shard with a copy on X, a live replica becomes primary where X was primary, and
 * each copy slot X leaves (its replica slot, or the slot of the promoted replica) gets a new
 * node (tally_ring_replace). The plan is made on a clone of the catalog and replaces c->cat
 * only if every shard of every view could be handled, so a refusal changes nothing. */

/* Which replica of shard `shard` of v becomes its primary: the index of the first replica
 * whose node is up, -1 if none is. */
/* The replica of shard to promote: of those up that told their position, one on the history
 * the removed primary (gone, id gone_id) was writing (its gen's low bits name the primary that
 * began it), furthest along; then any that told its position, furthest along (positions of
 * different histories are not comparable, so only as a last resort); if none answered, the
 * first that is up. */
static int pick_promotion(tally_coord *c, const tally_view_info *v, int shard)
{
	uint32_t gone_id = v->primary[shard];
	int best = -1, best_rank = -1, first_up = -1;
	uint64_t best_rlsn = 0;
	for (int r = 0; r < v->num_replicas; r++) {
		uint32_t id = v->replicas[(size_t)shard * (size_t)v->num_replicas + (size_t)r];
		const tally_node_info *ni = tally_catalog_node(c->cat, id);
		if (!ni || ni->state != TALLY_NODE_UP)
			continue;
		if (first_up < 0)
			first_up = r;
		for (size_t k = 0; k < c->npos; k++) {
			const copy_pos *p = &c->pos[k];
			if (p->view_id != v->id || p->shard != (uint32_t)shard || p->node != id)
				continue;
			int rank = p->gen != 0 && (p->gen & 0xFFFFu) == (gone_id & 0xFFFFu);
			if (rank > best_rank || (rank == best_rank && p->rlsn > best_rlsn)) {
				best = r;
				best_rank = rank;
				best_rlsn = p->rlsn;
			}
		}
	}
	return best >= 0 ? best : first_up;
}

/* Before remove_node: ask every live replica of the node's primaries for its position (in
 * parallel, without holding c->mu: a slow worker must not hold heartbeats up). */
static void gather_positions(tally_coord *c, const char *name)
{
	tally_node *n = &c->node;
	pthread_mutex_lock(&c->mu);
	tally_catalog *cat = tally_catalog_clone(c->cat);
	pthread_mutex_unlock(&c->mu);
	const tally_node_info *x = tally_catalog_node_by_name(cat, name);
	size_t cap = 16, nc = 0;
	tally_rpc_call *calls = tally_xcalloc(cap, sizeof *calls);
	copy_pos *want = tally_xcalloc(cap, sizeof *want);
	for (int i = 0; x && i < cat->nviews; i++) {
		const tally_view_info *v = &cat->views[i];
		for (int s = 0; s < v->num_shards; s++) {
			if (v->primary[s] != x->id)
				continue;
			for (int r = 0; r < v->num_replicas; r++) {
				uint32_t id =
				    v->replicas[(size_t)s * (size_t)v->num_replicas + (size_t)r];
				const tally_node_info *ni = tally_catalog_node(cat, id);
				if (!ni || ni->state != TALLY_NODE_UP)
					continue;
				if (nc == cap) {
					cap *= 2;
					calls = tally_xrealloc(calls, cap * sizeof *calls);
					want = tally_xrealloc(want, cap * sizeof *want);
				}
				memset(&calls[nc], 0, sizeof calls[nc]);
				tally_msg_begin(&calls[nc].req, TALLY_MSG_POS,
						tally_node_next_req(n), cat->epoch);
				tally_buf_put_u64(&calls[nc].req, v->id);
				tally_buf_put_u32(&calls[nc].req, (uint32_t)s);
				tally_msg_end(&calls[nc].req);
				calls[nc].addr = ni->data_addr;
				calls[nc].peer = ni->name;
				want[nc] =
				    (copy_pos){.view_id = v->id, .shard = (uint32_t)s, .node = id};
				nc++;
			}
		}
	}
	tally_rpc_call_many(n->rpc, calls, (int)nc, 2000);
	size_t k = 0;
	for (size_t i = 0; i < nc; i++) {
		uint8_t has;
		if (calls[i].rc == 0 && calls[i].hdr.type == TALLY_MSG_POS_OK &&
		    tally_rd_u8(&calls[i].body, &has) == 0 &&
		    tally_rd_u64(&calls[i].body, &want[i].gen) == 0 &&
		    tally_rd_u64(&calls[i].body, &want[i].rlsn) == 0) {
			if (!has)
				want[i].rlsn = 0;
			want[k++] = want[i];
		}
	}
	tally_rpc_calls_done(calls, (int)nc);
	for (size_t i = 0; i < nc; i++)
		tally_buf_free(&calls[i].req);
	free(calls);
	tally_catalog_free(cat);
	pthread_mutex_lock(&c->mu);
	free(c->pos);
	c->pos = want;
	c->npos = k;
	pthread_mutex_unlock(&c->mu);
}

/* Append "; what" to the notice, ending it with "..." once it is full. */
static void moved_note(char *notice, size_t noticesz, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void moved_note(char *notice, size_t noticesz, const char *fmt, ...)
{
	size_t len = strlen(notice);
	if (noticesz < 8 || len + 4 >= noticesz)
		return;
	char piece[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(piece, sizeof piece, fmt, ap);
	va_end(ap);
	const char *sep = len && notice[len - 1] != ' ' ? "; " : "";
	if (len + strlen(sep) + strlen(piece) + 4 < noticesz)
		snprintf(notice + len, noticesz - len, "%s%s", sep, piece);
	else
		snprintf(notice + len, noticesz - len, "...");
}

/* Plan and apply the removal of node `name` (caller holds c->mu). On success c->cat is the
 * new catalog (epoch not yet bumped) and notice lists what moved. Errors: 42704 unknown node,
 * 55000 node up / a shard with no live copy, 53000 too few live workers. */
static int ddl_remove_node(tally_coord *c, const char *name, char *notice, size_t noticesz,
			   tally_err *err)
{
	const tally_node_info *x = tally_catalog_node_by_name(c->cat, name);
	if (!x)
		return tally_err_set(err, TALLY_SQLSTATE_UNDEFINED_OBJECT,
				     "node \"%s\" does not exist", name);
	if (x->state == TALLY_NODE_UP) {
		tally_err_set(err, "55000", "cannot remove node \"%s\": it is up", name);
		return tally_err_hint(
		    err, "Stop it first; remove_node is for nodes that are gone for good.");
	}
	uint32_t xid = x->id;
	tally_catalog *cat = tally_catalog_clone(c->cat);
	tally_ring_member *mem = tally_xcalloc((size_t)cat->nnodes + 1, sizeof *mem);
	int nup = members(cat, mem); /* X is down, so never a candidate */
	int rc = -1;
	snprintf(notice, noticesz, "removed node \"%s\": ", name);
	size_t prefix = strlen(notice);

	for (int i = 0; i < cat->nviews; i++) {
		tally_view_info *v = &cat->views[i];
		int R = v->num_replicas;
		bool affected = false;
		/* First the promotions: a shard whose only live copies were on X refuses the
		 * whole statement before anything is placed. */
		for (int s = 0; s < v->num_shards; s++) {
			bool holds = v->primary[s] == xid;
			for (int r = 0; r < R; r++)
				holds |= v->replicas[(size_t)s * (size_t)R + (size_t)r] == xid;
			affected |= holds;
			if (v->primary[s] != xid)
				continue;
			int r = pick_promotion(c, v, s);
			if (r < 0) {
				tally_err_set(err, "55000",
					      "cannot remove node \"%s\": shard %s_%d has no live "
					      "copy to promote",
					      name, v->name, s);
				tally_err_detail(err,
						 "Node \"%s\" holds the primary of shard %s_%d and "
						 "none of its %d replicas is up.",
						 name, v->name, s, R);
				tally_err_hint(
				    err,
				    "Bring a node holding a copy of shard %s_%d back, or "
				    "drop continuous view \"%s\".",
				    v->name, s, v->name);
				goto out;
			}
		}
		if (!affected)
			continue;
		if (nup < R + 1) {
			tally_err_set(
			    err, TALLY_SQLSTATE_INSUFFICIENT_RESOURCES,
			    "cannot remove node \"%s\": view \"%s\" needs %d nodes that are "
			    "up, and %d would remain",
			    name, v->name, R + 1, nup);
			tally_err_detail(err,
					 "Continuous view \"%s\" keeps num_replicas = %d copies "
					 "besides each primary.",
					 v->name, R);
			tally_err_hint(err, "Add a worker first.");
			goto out;
		}
		for (int s = 0; s < v->num_shards; s++) {
			uint32_t *rep = &v->replicas[(size_t)s * (size_t)R];
			int slot = -1;
			if (v->primary[s] == xid) {
				int r = pick_promotion(c, v, s);
				v->primary[s] = rep[r];
				rep[r] = 0;
				slot = r;
				const tally_node_info *pn = tally_catalog_node(cat, v->primary[s]);
				moved_note(notice, noticesz, "promoted %s_%d on %s", v->name, s,
					   pn ? pn->name : "?");
			} else {
				for (int r = 0; r < R; r++)
					if (rep[r] == xid) {
						rep[r] = 0;
						slot = r;
					}
			}
			if (slot < 0 || R == 0)
				continue;
			uint32_t id;
			if (tally_ring_replace(mem, nup, v->name, v->num_shards, R, v->primary,
					       v->replicas, s, 0, &id, err) != 0) {
				/* nup >= R + 1 leaves a node without a copy; keep the message
				 * about the removal if it happens anyway. */
				tally_err_set(
				    err, TALLY_SQLSTATE_INSUFFICIENT_RESOURCES,
				    "cannot remove node \"%s\": no live node can take a new "
				    "copy of shard %s_%d",
				    name, v->name, s);
				tally_err_hint(err, "Add a worker first.");
				goto out;
			}
			rep[slot] = id;
			const tally_node_info *nn = tally_catalog_node(cat, id);
			moved_note(notice, noticesz, "new replica of %s_%d on %s", v->name, s,
				   nn ? nn->name : "?");
		}
	}
	if (tally_catalog_remove_node(cat, xid) != 0) {
		tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
			      "could not remove node \"%s\": a shard copy is still placed on it",
			      name);
		goto out;
	}
	if (strlen(notice) == prefix)
		moved_note(notice, noticesz, "it held no shard copies");
	tally_log_info("%s", notice);
	tally_catalog_free(c->cat);
	c->cat = cat;
	cat = NULL;
	rc = 0;
out:
	if (rc != 0)
		notice[0] = 0;
	tally_catalog_free(cat);
	free(mem);
	return rc;
}

/* Whether the statement's second word is VIEW (CREATE VIEW / DROP VIEW, as opposed to the
 * CONTINUOUS VIEW spelling): the command tag echoes what the user typed. */
static bool second_word_is_view(const char *p)
{
	while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
		p++;
	while (*p && *p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
		p++;
	while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
		p++;
	return strncasecmp(p, "view", 4) == 0 && (p[4] == 0 || strchr(" \t\r\n", p[4]));
}

static int ddl_locked(tally_coord *c, const char *sql, int default_replicas, char *tag,
		      size_t tagsz, char *notice, size_t noticesz, bool *published, tally_err *err)
{
	*published = false;
	tally_arena a = {0};
	tally_stmt *st;
	int n, rc = -1;
	notice[0] = 0;
	if (tally_sql_parse(sql, &a, &st, &n, err) != 0)
		goto out;
	if (n != 1) {
		tally_err_set(err, TALLY_SQLSTATE_INTERNAL, "expected one DDL statement, got %d",
			      n);
		goto out;
	}
	tally_catalog *cat = c->cat;
	int changed = 0;
	switch (st->kind) {
	case TALLY_STMT_CREATE_STREAM: {
		const char *name = st->u.create_stream.name;
		tally_strlcpy(tag,
			      st->u.create_stream.foreign_table ? "CREATE FOREIGN TABLE"
								: "CREATE STREAM",
			      tagsz);
		if ((tally_catalog_stream(cat, name) || tally_catalog_view(cat, name)) &&
		    st->u.create_stream.if_not_exists) {
			snprintf(notice, noticesz, "relation \"%s\" already exists, skipping",
				 name);
			break;
		}
		if (tally_catalog_add_stream(cat, name, st->u.create_stream.ncols,
					     st->u.create_stream.cols, err) != 0)
			goto out;
		changed = 1;
		break;
	}
	case TALLY_STMT_DROP_STREAM: {
		const char *name = st->u.drop.name;
		tally_strlcpy(tag, "DROP STREAM", tagsz);
		if (!tally_catalog_stream(cat, name)) {
			if (st->u.drop.if_exists) {
				snprintf(notice, noticesz, "stream \"%s\" does not exist, skipping",
					 name);
				break;
			}
			if (tally_catalog_view(cat, name)) {
				tally_err_set(err, TALLY_SQLSTATE_WRONG_OBJECT_TYPE,
					      "\"%s\" is not a stream", name);
				tally_err_hint(
				    err, "Use DROP CONTINUOUS VIEW to remove a continuous view.");
				goto out;
			}
			tally_err_set(err, TALLY_SQLSTATE_UNDEFINED_TABLE,
				      "stream \"%s\" does not exist", name);
			goto out;
		}
		if (!st->u.drop.cascade) {
			for (int i = 0; i < cat->nviews; i++) {
				if (strcmp(cat->views[i].stream, name) == 0) {
					tally_err_set(err, "2BP01",
						      "cannot drop stream %s because other objects "
						      "depend on it",
						      name);
					tally_err_detail(err,
							 "continuous view %s depends on stream %s",
							 cat->views[i].name, name);
					tally_err_hint(err, "Use DROP ... CASCADE to drop the "
							    "dependent objects too.");
					goto out;
				}
			}
		}
		tally_catalog_drop_stream(cat, name);
		changed = 1;
		break;
	}
	case TALLY_STMT_CREATE_VIEW: {
		tally_strlcpy(
		    tag, second_word_is_view(st->text) ? "CREATE VIEW" : "CREATE CONTINUOUS VIEW",
		    tagsz);
		int r = ddl_create_view(c, st, default_replicas, notice, noticesz, err);
		if (r < 0)
			goto out;
		changed = r == 0;
		break;
	}
	case TALLY_STMT_DROP_VIEW: {
		const char *name = st->u.drop.name;
		tally_strlcpy(tag,
			      second_word_is_view(st->text) ? "DROP VIEW" : "DROP CONTINUOUS VIEW",
			      tagsz);
		if (!tally_catalog_view(cat, name)) {
			if (st->u.drop.if_exists) {
				snprintf(notice, noticesz,
					 "continuous view \"%s\" does not exist, skipping", name);
				break;
			}
			if (tally_catalog_stream(cat, name)) {
				tally_err_set(err, TALLY_SQLSTATE_WRONG_OBJECT_TYPE,
					      "\"%s\" is not a continuous view", name);
				tally_err_hint(err, "Use DROP STREAM to remove a stream.");
				goto out;
			}
			tally_err_set(err, TALLY_SQLSTATE_UNDEFINED_TABLE,
				      "continuous view \"%s\" does not exist", name);
			goto out;
		}
		tally_catalog_drop_view(cat, name);
		changed = 1;
		break;
	}
	case TALLY_STMT_REMOVE_NODE: {
		tally_strlcpy(tag, "SELECT 1", tagsz);
		if (ddl_remove_node(c, st->u.remove_node.name, notice, noticesz, err) != 0)
			goto out;
		cat = c->cat; /* replaced by the plan */
		changed = 1;
		break;
	}
	default:
		tally_err_set(err, TALLY_SQLSTATE_INTERNAL, "not a DDL statement");
		goto out;
	}
	if (changed) {
		cat->epoch++;
		publish_locked(c, true);
		*published = true;
	}
	rc = 0;
out:
	tally_arena_free(&a);
	return rc;
}

static int coord_ddl(tally_node *n, const char *sql, const tally_settings *s, char *tag,
		     size_t tagsz, tally_err *notice, tally_err *err)
{
	tally_coord *c = n->role.ctx;
	char nt[512];
	int nrep = (int)strtol(s->v[TALLY_SET_NUM_REPLICAS], NULL, 10);
	bool published;
	/* remove_node promotes the replica furthest along: ask them first */
	tally_arena pa = {0};
	tally_stmt *st;
	int nst;
	tally_err perr;
	bool removal = tally_sql_parse(sql, &pa, &st, &nst, &perr) == 0 && nst == 1 &&
		       st->kind == TALLY_STMT_REMOVE_NODE;
	/* one removal at a time: its positions must not be replaced by another's */
	if (removal) {
		pthread_mutex_lock(&c->remove_mu);
		gather_positions(c, st->u.remove_node.name);
	}
	tally_arena_free(&pa);
	pthread_mutex_lock(&c->mu);
	int rc = ddl_locked(c, sql, nrep, tag, tagsz, nt, sizeof nt, &published, err);
	if (removal) {
		free(c->pos);
		c->pos = NULL;
		c->npos = 0;
	}
	pthread_mutex_unlock(&c->mu);
	if (removal)
		pthread_mutex_unlock(&c->remove_mu);
	if (published)
		push_map(c, 0); /* every worker has the change before the client hears back */
	if (rc == 0 && nt[0] && notice) {
		tally_err_set(notice, "00000", "%s", nt);
		notice->severity = TALLY_SEV_NOTICE;
	}
	return rc;
}

/* ---- requests ------------------------------------------------------------------------------- */

static void handle_register(tally_coord *c, const tally_msg_hdr *h, tally_rd *r, tally_buf *reply)
{
	tally_msg_register m;
	if (tally_msg_get_register(r, &m) != 0 || tally_msg_done(r) != 0) {
		tally_rpc_reply_error(reply, h->req_id, 0, TALLY_SQLSTATE_PROTOCOL,
				      "malformed REGISTER");
		return;
	}
	pthread_mutex_lock(&c->mu);
	tally_node_info ni;
	memset(&ni, 0, sizeof ni);
	tally_strlcpy(ni.name, m.name, sizeof ni.name);
	tally_strlcpy(ni.data_addr, m.data_addr, sizeof ni.data_addr);
	tally_strlcpy(ni.sql_addr, m.sql_addr, sizeof ni.sql_addr);
	ni.state = TALLY_NODE_UP;
	ni.incarnation = m.incarnation;
	ni.last_heartbeat_us = tally_now_us();
	uint32_t id = tally_catalog_upsert_node(c->cat, &ni);
	if (id == 0) {
		tally_rpc_reply_error(
		    reply, h->req_id, c->cat->epoch, TALLY_SQLSTATE_PROGRAM_LIMIT,
		    "cannot register node \"%s\": the cluster is full or the name is invalid",
		    m.name);
		pthread_mutex_unlock(&c->mu);
		return;
	}
	c->cat->epoch++;
	tally_log_info("node %s registered as %u at %s (sql %s)", m.name, id, m.data_addr,
		       m.sql_addr);
	publish_locked(c, true);
	tally_msg_begin(reply, TALLY_MSG_REGISTER_OK, h->req_id, c->cat->epoch);
	tally_buf_put_u32(reply, id);
	put_catalog(reply, c->cat);
	tally_msg_end(reply);
	pthread_mutex_unlock(&c->mu);
	push_map(c, id); /* the others learn the new address; the newcomer has the reply */
}

static void handle_heartbeat(tally_coord *c, const tally_msg_hdr *h, tally_rd *r, tally_buf *reply)
{
	tally_msg_heartbeat hb;
	if (tally_msg_get_heartbeat(r, &hb) != 0 || tally_msg_done(r) != 0) {
		tally_rpc_reply_error(reply, h->req_id, 0, TALLY_SQLSTATE_PROTOCOL,
				      "malformed HEARTBEAT");
		return;
	}
	pthread_mutex_lock(&c->mu);
	tally_node_info *ni = NULL;
	for (int i = 0; i < c->cat->nnodes; i++)
		if (c->cat->nodes[i].id == hb.node_id)
			ni = &c->cat->nodes[i];
	if (!ni || ni->incarnation != hb.incarnation) {
		tally_rpc_reply_error(reply, h->req_id, c->cat->epoch,
				      TALLY_SQLSTATE_UNDEFINED_OBJECT, "unknown node %u",
				      hb.node_id);
		pthread_mutex_unlock(&c->mu);
		return;
	}
	ni->last_heartbeat_us = tally_now_us();
	bool published = false;
	if (ni->state != TALLY_NODE_UP) {
		ni->state = TALLY_NODE_UP;
		c->cat->epoch++;
		tally_log_info("node %s is up again", ni->name);
		publish_locked(c, false);
		published = true;
	}
	tally_msg_begin(reply, TALLY_MSG_HEARTBEAT_OK, h->req_id, c->cat->epoch);
	tally_buf_put_u64(reply, c->cat->epoch);
	if (hb.known_epoch < c->cat->epoch) {
		tally_buf_putc(reply, 1);
		put_catalog(reply, c->cat);
	} else {
		tally_buf_putc(reply, 0);
	}
	tally_msg_end(reply);
	pthread_mutex_unlock(&c->mu);
	if (published)
		push_map(c, hb.node_id);
}

static void handle_ddl(tally_coord *c, const tally_msg_hdr *h, tally_rd *r, tally_buf *reply)
{
	const uint8_t *p, *np;
	uint32_t len, nlen;
	if (tally_rd_str(r, &p, &len, TALLY_MSG_MAX) != 0 || tally_rd_str(r, &np, &nlen, 16) != 0 ||
	    tally_msg_done(r) != 0) {
		tally_rpc_reply_error(reply, h->req_id, 0, TALLY_SQLSTATE_PROTOCOL,
				      "malformed DDL");
		return;
	}
	char *sql = tally_xmalloc(len + 1);
	memcpy(sql, p, len);
	sql[len] = 0;
	char tag[64] = "", notice[512] = "", nrep[17];
	memcpy(nrep, np, nlen);
	nrep[nlen] = 0;
	tally_err err;
	tally_err_clear(&err);
	bool published;
	pthread_mutex_lock(&c->mu);
	int rc = ddl_locked(c, sql, (int)strtol(nrep, NULL, 10), tag, sizeof tag, notice,
			    sizeof notice, &published, &err);
	tally_msg_begin(reply, TALLY_MSG_DDL_OK, h->req_id, c->cat->epoch);
	tally_ddl_reply_put(reply, tag, notice, c->cat, rc == 0 ? NULL : &err);
	tally_msg_end(reply);
	pthread_mutex_unlock(&c->mu);
	if (published)
		push_map(c, 0);
	free(sql);
}

static void coord_handle(tally_node *n, const tally_msg_hdr *h, tally_rd *r, tally_buf *reply)
{
	tally_coord *c = n->role.ctx;
	switch (h->type) {
	case TALLY_MSG_REGISTER:
		handle_register(c, h, r, reply);
		break;
	case TALLY_MSG_HEARTBEAT:
		handle_heartbeat(c, h, r, reply);
		break;
	case TALLY_MSG_DDL:
		handle_ddl(c, h, r, reply);
		break;
	case TALLY_MSG_GET_MAP:
		pthread_mutex_lock(&c->mu);
		tally_msg_begin(reply, TALLY_MSG_MAP, h->req_id, c->cat->epoch);
		put_catalog(reply, c->cat);
		tally_msg_end(reply);
		pthread_mutex_unlock(&c->mu);
		break;
	default:
		break;
	}
}

/* ---- failure detector ------------------------------------------------------------------------ */

static void *fd_main(void *arg)
{
	tally_coord *c = arg;
	pthread_mutex_lock(&c->stop_mu);
	while (!c->stopping) {
		pthread_mutex_unlock(&c->stop_mu);
		int64_t timeout_us =
		    tally_settings_ms(&c->node.cfg.defaults, TALLY_SET_FAILURE_TIMEOUT) * 1000;
		int64_t now = tally_now_us();
		pthread_mutex_lock(&c->mu);
		bool changed = false;
		for (int i = 0; i < c->cat->nnodes; i++) {
			tally_node_info *ni = &c->cat->nodes[i];
			if (ni->state == TALLY_NODE_UP &&
			    now - ni->last_heartbeat_us > timeout_us) {
				ni->state = TALLY_NODE_DOWN;
				changed = true;
				tally_log_warn("node %s is down: no heartbeat for %lld ms",
					       ni->name,
					       (long long)((now - ni->last_heartbeat_us) / 1000));
			}
		}
		if (changed) {
			c->cat->epoch++;
			publish_locked(c, false);
		}
		pthread_mutex_unlock(&c->mu);
		pthread_mutex_lock(&c->stop_mu);
		if (changed) {
			/* Published by the pusher: a push waits up to 2 s for workers still
			 * marked up, and one of them may be the next to die (its silence must
			 * be noticed on time too). */
			c->push_pending = true;
			pthread_cond_broadcast(&c->push_cv);
		}
		if (c->stopping)
			break;
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 100 * 1000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&c->stop_cv, &c->stop_mu, &ts);
	}
	pthread_mutex_unlock(&c->stop_mu);
	return NULL;
}

static void *push_main(void *arg)
{
	tally_coord *c = arg;
	pthread_mutex_lock(&c->stop_mu);
	while (!c->stopping) {
		if (!c->push_pending) {
			pthread_cond_wait(&c->push_cv, &c->stop_mu);
			continue;
		}
		c->push_pending = false;
		pthread_mutex_unlock(&c->stop_mu);
		push_map(c, 0); /* the newest map: changes made meanwhile coalesce */
		pthread_mutex_lock(&c->stop_mu);
	}
	pthread_mutex_unlock(&c->stop_mu);
	return NULL;
}

int tally_coord_start(tally_coord **out, const tally_node_config *cfg)
{
	tally_coord *c = tally_xcalloc(1, sizeof *c);
	pthread_mutex_init(&c->mu, NULL);
	pthread_mutex_init(&c->remove_mu, NULL);
	pthread_mutex_init(&c->stop_mu, NULL);
	pthread_cond_init(&c->stop_cv, NULL);
	pthread_cond_init(&c->push_cv, NULL);
	c->cat = tally_xcalloc(1, sizeof *c->cat);
	/* A new cluster's epochs and stream/view ids start at its creation time (microseconds):
	 * a coordinator that lost its catalog file and starts over is then always newer than
	 * the maps workers still hold (they take its map and drop their old shards), and it
	 * never reuses the id of an old view for a new one. */
	c->cat->epoch = (uint64_t)tally_now_us();
	c->cat->next_id = (uint64_t)tally_now_us();
	tally_node_role role = {
	    .ddl = coord_ddl, .handle = coord_handle, .recover = coord_recover, .ctx = c};
	/* Load before listening, so no worker registers against an empty catalog. */
	if (catalog_load(c, cfg->dir) != 0) {
		tally_catalog_free(c->cat);
		free(c);
		return -1;
	}
	if (tally_node_open(&c->node, cfg, &role) != 0) {
		tally_node_close(&c->node);
		tally_catalog_free(c->cat);
		free(c);
		return -1;
	}
	pthread_mutex_lock(&c->mu);
	tally_node_install_map(&c->node, tally_catalog_clone(c->cat));
	pthread_mutex_unlock(&c->mu);
	if (tally_node_write_ready(&c->node) != 0) {
		tally_node_close(&c->node);
		tally_catalog_free(c->cat);
		free(c);
		return -1;
	}
	pthread_create(&c->fd_thread, NULL, fd_main, c);
	pthread_create(&c->push_thread, NULL, push_main, c);
	*out = c;
	return 0;
}

void tally_coord_stop(tally_coord *c)
{
	pthread_mutex_lock(&c->stop_mu);
	c->stopping = true;
	pthread_cond_broadcast(&c->stop_cv);
	pthread_cond_broadcast(&c->push_cv);
	pthread_mutex_unlock(&c->stop_mu);
	pthread_join(c->fd_thread, NULL);
	pthread_join(c->push_thread, NULL);
	tally_node_close(&c->node);
	tally_catalog_free(c->cat);
	free(c);
}
