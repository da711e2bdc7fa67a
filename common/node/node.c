/*
 * node.c - process lifecycle shared by the coordinator and the worker: flags, signals, the
 * RPC listener, the SQL listener, the current cluster map and the ready file that tells
 * tallyctl and tests a node is serving.
 */
#include "tally/node.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

static void node_rpc(void *ctx, const tally_msg_hdr *h, tally_rd *r, tally_buf *reply)
{
	tally_node *n = ctx;
	n->role.handle(n, h, r, reply);
	if (reply->len == 0)
		tally_rpc_reply_error(reply, h->req_id, tally_node_epoch(n),
				      TALLY_SQLSTATE_PROTOCOL, "unexpected message type %s",
				      tally_msg_type_name(h->type));
}

int tally_node_open(tally_node *n, const tally_node_config *cfg, const tally_node_role *role)
{
	memset(n, 0, sizeof *n);
	n->cfg = *cfg;
	n->role = *role;
	n->started_us = tally_now_us();
	n->incarnation = (uint64_t)n->started_us;
	pthread_mutex_init(&n->map_mu, NULL);
	pthread_mutex_init(&n->suspect_mu, NULL);
	n->map = tally_map_build(tally_xcalloc(1, sizeof(tally_catalog)));
	n->map->cat->next_id = 1;
	n->rpc = tally_rpc_alloc();
	if (mkdir(cfg->dir, 0700) != 0 && errno != EEXIST) {
		tally_log_error("could not create directory \"%s\": %s", cfg->dir, strerror(errno));
		return -1;
	}
	/* Recover before listening: no request may see shards or an outbox half loaded. */
	if (tally_node_durable_open(n) != 0)
		return -1;
	if (tally_rpc_server_open(cfg->host, cfg->data_port, cfg->rpc_threads, node_rpc, n,
				  &n->rpcsrv) != 0)
		return -1;
	if (tally_pg_server_open(cfg->host, cfg->sql_port, &tally_session_handlers, n, &n->pg) !=
	    0) {
		tally_log_error("could not listen for SQL on %s:%d", cfg->host, cfg->sql_port);
		return -1;
	}
	tally_log_info("listening: sql %s:%d, data %s", cfg->host, tally_pg_server_port(n->pg),
		       tally_rpc_server_addr(n->rpcsrv));
	return 0;
}

static void ready_path(const tally_node *n, char *buf, size_t sz, const char *suffix)
{
	snprintf(buf, sz, "%s/ready%s", n->cfg.dir, suffix);
}

void tally_node_close(tally_node *n)
{
	char path[600];
	ready_path(n, path, sizeof path, "");
	unlink(path);
	if (n->pg)
		tally_pg_server_close(n->pg);
	if (n->rpcsrv)
		tally_rpc_server_close(n->rpcsrv);
	tally_node_durable_close(n);
	tally_rpc_free(n->rpc);
	tally_map_put(n->map);
	n->map = NULL;
}

tally_map *tally_node_map(tally_node *n)
{
	pthread_mutex_lock(&n->map_mu);
	tally_map *m = n->map;
	__atomic_add_fetch(&m->refs, 1, __ATOMIC_ACQ_REL);
	pthread_mutex_unlock(&n->map_mu);
	return m;
}

void tally_node_suspect(tally_node *n, uint32_t id)
{
	int64_t until =
	    tally_mono_us() + tally_settings_ms(&n->cfg.defaults, TALLY_SET_FAILURE_TIMEOUT) * 1000;
	pthread_mutex_lock(&n->suspect_mu);
	bool was = n->suspect[id % TALLY_SUSPECT_SLOTS].id == id &&
		   n->suspect[id % TALLY_SUSPECT_SLOTS].until_us > tally_mono_us();
	n->suspect[id % TALLY_SUSPECT_SLOTS].id = id;
	n->suspect[id % TALLY_SUSPECT_SLOTS].until_us = until;
	pthread_mutex_unlock(&n->suspect_mu);
	if (!was)
		tally_log_info("suspecting node %u: a message to it got no reply", id);
}

void tally_node_unsuspect(tally_node *n, uint32_t id)
{
	pthread_mutex_lock(&n->suspect_mu);
	if (n->suspect[id % TALLY_SUSPECT_SLOTS].id == id)
		n->suspect[id % TALLY_SUSPECT_SLOTS].until_us = 0;
	pthread_mutex_unlock(&n->suspect_mu);
}

bool tally_node_suspected(tally_node *n, uint32_t id)
{
	pthread_mutex_lock(&n->suspect_mu);
	bool s = n->suspect[id % TALLY_SUSPECT_SLOTS].id == id &&
		 n->suspect[id % TALLY_SUSPECT_SLOTS].until_us > tally_mono_us();
	pthread_mutex_unlock(&n->suspect_mu);
	return s;
}

bool tally_node_reachable(tally_node *n, const tally_node_info *ni)
{
	return ni && ni->state == TALLY_NODE_UP && !tally_node_suspected(n, ni->id);
}

void tally_node_note_call(tally_node *n, uint32_t id, const tally_rpc_call *c)
{
	if (c->rc != 0 && !c->reply)
		tally_node_suspect(n, id);
	else if (c->reply)
		tally_node_unsuspect(n, id);
}

uint64_t tally_node_epoch(tally_node *n)
{
	pthread_mutex_lock(&n->map_mu);
	uint64_t e = n->map->cat->epoch;
	pthread_mutex_unlock(&n->map_mu);
	return e;
}

bool tally_node_install_map(tally_node *n, tally_catalog *cat)
{
	pthread_mutex_lock(&n->map_mu);
	bool newer = cat->epoch > n->map->cat->epoch;
	pthread_mutex_unlock(&n->map_mu);
	if (!newer) {
		tally_catalog_free(cat);
		return false;
	}
	/* Analyze outside the lock; install only if still newest. */
	tally_map *m = tally_map_build(cat);
	pthread_mutex_lock(&n->map_mu);
	tally_map *old = NULL;
	if (m->cat->epoch > n->map->cat->epoch) {
		old = n->map;
		n->map = m;
		m = NULL;
	}
	pthread_mutex_unlock(&n->map_mu);
	if (old) {
		/* A peer that restarted (new incarnation, perhaps a new address) is no longer
		 * suspected for what its previous process did not answer. */
		const tally_catalog *nc = n->map->cat;
		for (int i = 0; i < nc->nnodes; i++) {
			const tally_node_info *was = tally_catalog_node(old->cat, nc->nodes[i].id);
			if (was && was->incarnation != nc->nodes[i].incarnation)
				tally_node_unsuspect(n, nc->nodes[i].id);
		}
	}
	tally_map_put(old);
	if (m) {
		tally_map_put(m);
		return false;
	}
	return true;
}

uint64_t tally_node_next_req(tally_node *n)
{
	return __atomic_add_fetch(&n->next_req, 1, __ATOMIC_RELAXED);
}

int tally_node_write_ready(tally_node *n)
{
	char tmp[600], path[600];
	ready_path(n, tmp, sizeof tmp, ".tmp");
	ready_path(n, path, sizeof path, "");
	FILE *f = fopen(tmp, "w");
	if (!f) {
		tally_log_error("could not write \"%s\": %s", tmp, strerror(errno));
		return -1;
	}
	fprintf(f, "pid=%d\nname=%s\nsql_port=%d\ndata_addr=%s\n", (int)getpid(), n->cfg.name,
		tally_pg_server_port(n->pg), tally_rpc_server_addr(n->rpcsrv));
	fflush(f);
	fsync(fileno(f));
	fclose(f);
	if (rename(tmp, path) != 0) {
		tally_log_error("could not rename \"%s\": %s", tmp, strerror(errno));
		return -1;
	}
	return 0;
}

static int parse_port(const char *s, int *out)
{
	char *end;
	long v = strtol(s, &end, 10);
	if (*s == 0 || *end || v < 0 || v > 65535)
		return -1;
	*out = (int)v;
	return 0;
}

int tally_node_parse_args(int argc, char **argv, tally_node_config *cfg, const char *usage)
{
	for (int i = 1; i < argc; i += 2) { /* every option takes one value */
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			fputs(usage, stdout);
			exit(0);
		}
		if (!v) {
			fprintf(stderr, "%s: missing value for %s\n%s", argv[0], a, usage);
			return 2;
		}
		if (strcmp(a, "--dir") == 0) {
			tally_strlcpy(cfg->dir, v, sizeof cfg->dir);
		} else if (strcmp(a, "--host") == 0) {
			tally_strlcpy(cfg->host, v, sizeof cfg->host);
		} else if (strcmp(a, "--port") == 0) {
			if (parse_port(v, &cfg->sql_port)) {
				fprintf(stderr, "%s: invalid port \"%s\"\n", argv[0], v);
				return 2;
			}
		} else if (strcmp(a, "--data-port") == 0) {
			if (parse_port(v, &cfg->data_port)) {
				fprintf(stderr, "%s: invalid port \"%s\"\n", argv[0], v);
				return 2;
			}
		} else if (strcmp(a, "--name") == 0) {
			if (strlen(v) >= TALLY_NAME_MAX || !*v) {
				fprintf(stderr, "%s: invalid node name \"%s\"\n", argv[0], v);
				return 2;
			}
			tally_strlcpy(cfg->name, v, sizeof cfg->name);
		} else if (strcmp(a, "--coordinator") == 0) {
			tally_strlcpy(cfg->coordinator_addr, v, sizeof cfg->coordinator_addr);
		} else if (strcmp(a, "--log-level") == 0) {
			static const char *lv[] = {"debug", "info", "warning", "error"};
			int found = -1;
			for (int k = 0; k < 4; k++)
				if (strcmp(v, lv[k]) == 0)
					found = k;
			if (found < 0) {
				fprintf(stderr, "%s: invalid log level \"%s\"\n", argv[0], v);
				return 2;
			}
			tally_log_set_level((tally_log_level)found);
		} else if (strcmp(a, "--set") == 0) {
			const char *eq = strchr(v, '=');
			char name[128];
			if (!eq || (size_t)(eq - v) >= sizeof name) {
				fprintf(stderr, "%s: --set expects name=value, got \"%s\"\n",
					argv[0], v);
				return 2;
			}
			memcpy(name, v, (size_t)(eq - v));
			name[eq - v] = 0;
			int id = tally_settings_lookup(name);
			tally_err err;
			if (id < 0) {
				fprintf(stderr, "%s: unrecognized configuration parameter \"%s\"\n",
					argv[0], name);
				return 2;
			}
			if (tally_settings_set(&cfg->defaults, NULL, id, eq + 1, &err) != 0) {
				fprintf(stderr, "%s: %s\n", argv[0], err.message);
				return 2;
			}
		} else {
			fprintf(stderr, "%s: unknown option \"%s\"\n%s", argv[0], a, usage);
			return 2;
		}
	}
	if (!cfg->dir[0]) {
		fprintf(stderr, "%s: --dir is required\n%s", argv[0], usage);
		return 2;
	}
	return 0;
}

void tally_node_wait_signal(void)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	int sig;
	sigwait(&set, &sig);
	tally_log_info("received %s, shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
}

void tally_node_init_process(void)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	/* One descriptor per client connection and per peer: take the hard limit. */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

/* ---- DDL replies ------------------------------------------------------------------------------
 */

void tally_ddl_reply_put(tally_buf *b, const char *tag, const char *notice,
			 const tally_catalog *cat, const tally_err *err)
{
	if (err && tally_err_isset(err)) {
		tally_buf_putc(b, 0);
		tally_buf_put_str(b, err->sqlstate, (uint32_t)strlen(err->sqlstate));
		tally_buf_put_str(b, err->message, (uint32_t)strlen(err->message));
		tally_buf_put_str(b, err->detail, (uint32_t)strlen(err->detail));
		tally_buf_put_str(b, err->hint, (uint32_t)strlen(err->hint));
		tally_buf_put_u32(b, (uint32_t)err->position);
		return;
	}
	tally_buf_putc(b, 1);
	tally_buf_put_str(b, tag, (uint32_t)strlen(tag));
	notice = notice ? notice : "";
	tally_buf_put_str(b, notice, (uint32_t)strlen(notice));
	tally_buf cb = {0};
	tally_catalog_encode(cat, &cb);
	tally_buf_put_str(b, (const char *)cb.data, (uint32_t)cb.len);
	tally_buf_free(&cb);
}

static int rd_cstr(tally_rd *r, char *dst, size_t dstsz)
{
	const uint8_t *p;
	uint32_t n;
	if (tally_rd_str(r, &p, &n, (uint32_t)dstsz - 1) != 0)
		return -1;
	memcpy(dst, p, n);
	dst[n] = 0;
	return 0;
}

int tally_ddl_reply_get(tally_rd *r, char *tag, size_t tagsz, tally_err *notice,
			tally_catalog **cat, tally_err *err)
{
	uint8_t ok;
	if (tally_rd_u8(r, &ok) != 0)
		goto bad;
	if (!ok) {
		tally_err e;
		tally_err_clear(&e);
		uint32_t pos;
		if (rd_cstr(r, e.sqlstate, sizeof e.sqlstate) ||
		    rd_cstr(r, e.message, sizeof e.message) ||
		    rd_cstr(r, e.detail, sizeof e.detail) || rd_cstr(r, e.hint, sizeof e.hint) ||
		    tally_rd_u32(r, &pos) || tally_msg_done(r))
			goto bad;
		e.position = (int)pos;
		if (err)
			*err = e;
		return -1;
	}
	char msg[512];
	const uint8_t *cp;
	uint32_t cn;
	if (rd_cstr(r, tag, tagsz) || rd_cstr(r, msg, sizeof msg) ||
	    tally_rd_str(r, &cp, &cn, TALLY_MSG_MAX) || tally_msg_done(r))
		goto bad;
	if (tally_catalog_decode(cp, cn, cat) != 0)
		goto bad;
	if (notice) {
		tally_err_clear(notice);
		if (msg[0]) {
			tally_err_set(notice, "00000", "%s", msg);
			notice->severity = TALLY_SEV_NOTICE;
		}
	}
	return 0;
bad:
	return tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
			     "malformed DDL reply from the coordinator");
}
