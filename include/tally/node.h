/*
 * node.h - the runtime every tally process shares: settings, the cluster map as this node
 * knows it, node-to-node RPC over NNG, and the SQL session layer (ingest at any node, reads
 * at any node). The coordinator and the worker plug their role-specific parts in through
 * tally_node_role.
 *
 * Threads: the pgwire server runs one thread per client connection; the RPC server runs a
 * fixed pool of service threads, each owning one NNG rep context; role code may run more
 * (the worker's heartbeat thread, the coordinator's failure detector).
 */
#ifndef TALLY_NODE_H
#define TALLY_NODE_H

#include "tally/catalog.h"
#include "tally/codec.h"
#include "tally/group.h"
#include "tally/pgwire.h"
#include "tally/wal.h"

#include <nng/nng.h>
#include <pthread.h>

/* ---- settings -------------------------------------------------------------------------------- */

typedef enum tally_setting_id {
	TALLY_SET_PRIMARY_ONLY = 0,
	TALLY_SET_SKIP_UNAVAILABLE,
	TALLY_SET_INSERT_LEVEL,
	TALLY_SET_NUM_REPLICAS,
	TALLY_SET_FAILURE_TIMEOUT,
	TALLY_SET_HEARTBEAT_INTERVAL,
	TALLY_SET_FSYNC,
	TALLY_SET_STATEMENT_MEMORY,
	TALLY_SET_RPC_TIMEOUT,
	TALLY_SET_CHECKPOINT_INTERVAL,
	TALLY_SET_MAX_WAL_SIZE,
	TALLY_SET_WAL_SEGMENT_SIZE,
	TALLY_SET_OUTBOX_LIMIT,
	TALLY_SET_REPLICATION_BUFFER,
	/* standard PostgreSQL settings drivers send */
	TALLY_SET_CLIENT_ENCODING,
	TALLY_SET_DATESTYLE,
	TALLY_SET_TIMEZONE,
	TALLY_SET_APPLICATION_NAME,
	TALLY_SET_EXTRA_FLOAT_DIGITS,
	TALLY_SET_SEARCH_PATH,
	TALLY_SET_STATEMENT_TIMEOUT,
	TALLY_SET_SERVER_VERSION,
	TALLY_SET_SERVER_ENCODING,
	TALLY_SET_STANDARD_CONFORMING_STRINGS,
	TALLY_SET_INTEGER_DATETIMES,
	TALLY_SET_TRANSACTION_ISOLATION,
	TALLY_SET_COUNT_
} tally_setting_id;

#define TALLY_SETTING_VALUE_MAX 128

typedef struct tally_settings {
	char v[TALLY_SET_COUNT_][TALLY_SETTING_VALUE_MAX];
} tally_settings;

/* Fill s with the built-in defaults. */
void tally_settings_defaults(tally_settings *s);
/* Look a setting up by name (case-insensitive); -1 if unknown. */
int tally_settings_lookup(const char *name);
const char *tally_settings_name(int id);
/* Validate and normalise value for setting id, then store it. NULL value = reset to dflt.
 * Errors: 22023 `invalid value for parameter "x": "y"` (with the accepted values as hint),
 * 55P02 for read-only settings. */
int tally_settings_set(tally_settings *s, const tally_settings *dflt, int id, const char *value,
		       tally_err *err);
bool tally_settings_bool(const tally_settings *s, int id);
/* Durations in milliseconds ("2s", "250ms", "2000"). Sizes in bytes ("1GB", "64MB"). */
int64_t tally_settings_ms(const tally_settings *s, int id);
int64_t tally_settings_bytes(const tally_settings *s, int id);
/* Short description used by SHOW ALL and docs. */
const char *tally_settings_describe(int id);

/* ---- cluster map as known to this node --------------------------------------------------------
 */

/* A view analyzed on this node: its catalog entry plus the plan its SELECT compiles to. */
typedef struct tally_view_rt {
	const tally_view_info *info;
	const tally_stream_info *stream;
	tally_relation stream_rel; /* stream columns + arrival_timestamp */
	tally_column *stream_cols;
	tally_view_plan *plan;
	tally_relation out_rel; /* the view's output columns */
	tally_column *out_cols;
	bool ok; /* false if the view failed to analyze here (version skew); reads/ingest error */
	char error[256];
} tally_view_rt;

/* An immutable snapshot: catalog + analyzed views. Reference-counted: tally_map_get returns
 * a reference the caller must release with tally_map_put. */
typedef struct tally_map {
	int refs; /* atomic */
	tally_catalog *cat;
	tally_view_rt *views; /* [cat->nviews], same order */
	tally_arena arena;
} tally_map;

tally_map *tally_map_build(tally_catalog *cat); /* takes ownership of cat */
void tally_map_put(tally_map *m);
const tally_view_rt *tally_map_view(const tally_map *m, const char *name);
const tally_view_rt *tally_map_view_by_id(const tally_map *m, uint64_t id);
/* The stream's relation (columns + arrival_timestamp) in arena a. */
int tally_map_stream_rel(const tally_map *m, const char *name, tally_arena *a, tally_relation *out);

/* ---- RPC --------------------------------------------------------------------------------- */

typedef struct tally_rpc tally_rpc; /* client side: one req socket per peer address */

tally_rpc *tally_rpc_alloc(void);
void tally_rpc_free(tally_rpc *r);

typedef struct tally_rpc_call {
	const char *addr; /* peer data address */
	const char *peer; /* name for errors ("w2") */
	tally_buf req;	  /* full request message (header + body), owned by the caller */
	/* results */
	int rc;		   /* 0 = reply received */
	nng_msg *reply;	   /* owned by the caller after the call: nng_msg_free */
	tally_msg_hdr hdr; /* reply header */
	tally_rd body;	   /* reply body reader (into reply) */
	char errmsg[512];  /* transport or remote error text when rc != 0 */
	char sqlstate[6];  /* remote ERROR's sqlstate, or 57P03 for transport failures */
	/* private */
	nng_ctx ctx;
	nng_aio *aio;
	bool ctx_open;
	void *tok;	/* completion token shared with the aio callback (heap) */
	bool cancelled; /* our deadline passed and we cancelled the operation */
} tally_rpc_call;

/* Send every request in parallel and wait for each reply (timeout_ms each). A reply of type
 * TALLY_MSG_ERROR sets rc = -1 with the remote sqlstate/message. Never blocks longer than about
 * 2 * timeout_ms. */
void tally_rpc_call_many(tally_rpc *r, tally_rpc_call *calls, int n, int timeout_ms);
/* Release replies and private state of the calls (not their req buffers). */
void tally_rpc_calls_done(tally_rpc_call *calls, int n);

typedef struct tally_rpc_server tally_rpc_server;
/* Handler: decode req (header h, body r), append the whole reply message (header + body) to
 * reply. Runs on a service thread; must not block for long. */
typedef void (*tally_rpc_handler)(void *ctx, const tally_msg_hdr *h, tally_rd *r, tally_buf *reply);
/* Listen on tcp://host:port (0 = any) with nthreads service threads. */
int tally_rpc_server_open(const char *host, int port, int nthreads, tally_rpc_handler fn, void *ctx,
			  tally_rpc_server **out);
const char *tally_rpc_server_addr(const tally_rpc_server *s); /* "tcp://127.0.0.1:NNNN" */
void tally_rpc_server_close(tally_rpc_server *s);
/* Build an ERROR reply into b. */
void tally_rpc_reply_error(tally_buf *b, uint64_t req_id, uint64_t epoch, const char *sqlstate,
			   const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* ---- the node ----------------------------------------------------------------------------- */

typedef enum tally_role { TALLY_ROLE_COORDINATOR = 0, TALLY_ROLE_WORKER = 1 } tally_role;

typedef struct tally_node tally_node;

typedef struct tally_node_role {
	/* Execute one DDL statement for the cluster (coordinator: directly; worker: forwarded to
	 * the coordinator). On success fill tag (e.g. "CREATE STREAM") and, if set, a notice for
	 * the client; this node's map already includes the change when it returns. */
	int (*ddl)(tally_node *n, const char *sql, const tally_settings *s, char *tag, size_t tagsz,
		   tally_err *notice, tally_err *err);
	/* Handle a node-to-node request of a role-specific type (else the node answers ERROR). */
	void (*handle)(tally_node *n, const tally_msg_hdr *h, tally_rd *r, tally_buf *reply);
	/* Durability hooks (each may be NULL). recover: load the role's saved state (its map,
	 * shard snapshots) before the log is replayed. replay: one log record of a role type
	 * (start LSN lsn, end LSN end). checkpoint: make everything appended to the log before
	 * the call durable outside it (snapshots), so the log before that point can go. Each
	 * returns 0, or -1 with err (recovery then refuses to start the node). */
	int (*recover)(tally_node *n, tally_err *err);
	int (*replay)(tally_node *n, uint8_t type, uint64_t lsn, uint64_t end, const uint8_t *p,
		      uint32_t len, tally_err *err);
	int (*checkpoint)(tally_node *n, tally_err *err);
	/* After replay, with the end of the log: refuse (-1 with err) state the log cannot back. */
	int (*check)(tally_node *n, uint64_t log_end, tally_err *err);
	void *ctx;
} tally_node_role;

typedef struct tally_node_config {
	tally_role role;
	char name[TALLY_NAME_MAX];
	char dir[512];
	char host[64];
	int sql_port;
	int data_port;
	char coordinator_addr[128]; /* workers */
	tally_settings defaults;
	int rpc_threads;
} tally_node_config;

struct tally_node {
	tally_node_config cfg;
	tally_node_role role;
	uint32_t node_id; /* 0 for the coordinator; set once registered (atomic: tally_node_id) */
	uint64_t incarnation;
	tally_pg_server *pg;
	tally_rpc_server *rpcsrv;
	tally_rpc *rpc;
	pthread_mutex_t map_mu;
	tally_map *map;	   /* current snapshot, replaced whole; guarded by map_mu */
	uint64_t next_req; /* atomic: request ids */
	int64_t started_us;
	/* durability (durable.c, outbox.c) */
	uint64_t log_id; /* origin id of this node's batches: drawn when its directory was made */
	bool fresh_dir;	 /* this start created the directory's state */
	tally_wal *wal;
	struct tally_outbox *outbox;
	pthread_t ckpt_thread;
	bool ckpt_running;
	pthread_mutex_t ckpt_mu; /* one checkpoint at a time; guards the fields below */
	pthread_cond_t ckpt_cv;
	bool ckpt_stopping;
	uint64_t ckpt_redo;	   /* replay start of the last checkpoint */
	uint64_t ckpt_insert;	   /* end of the log when the last checkpoint began */
	uint64_t ckpt_count;	   /* checkpoints since start */
	int64_t ckpt_last_us;	   /* when the last one finished */
	int64_t ckpt_last_ms;	   /* how long it took */
	int64_t recovery_ms;	   /* how long recovery took at start */
	uint64_t recovery_records; /* records replayed at start */
	/* peers this node suspects (a message to them got no reply), by id % TALLY_SUSPECT_SLOTS */
	pthread_mutex_t suspect_mu;
	struct {
		uint32_t id;
		int64_t until_us; /* monotonic */
	} suspect[64];
};
#define TALLY_SUSPECT_SLOTS 64

int tally_node_open(tally_node *n, const tally_node_config *cfg, const tally_node_role *role);
void tally_node_close(tally_node *n);
/* Current map (a reference; release with tally_map_put). Never NULL after open. */
tally_map *tally_node_map(tally_node *n);
/* Install a new map if its epoch is newer than the current one (takes ownership of cat;
 * frees it otherwise). Returns true if installed. */
bool tally_node_install_map(tally_node *n, tally_catalog *cat);
uint64_t tally_node_epoch(tally_node *n);
/* This node's id in the cluster (0 for the coordinator and before a worker registered). */
static inline uint32_t tally_node_id(const tally_node *n)
{
	return __atomic_load_n(&n->node_id, __ATOMIC_ACQUIRE);
}
uint64_t tally_node_next_req(tally_node *n);
/* Local failure suspicion (DESIGN §7): a peer a message got no reply from is treated as down by
 * this node (for routing writes and picking read copies) for pipeline_cluster.failure_timeout,
 * or until it answers again; the coordinator's map decides for everyone. */
void tally_node_suspect(tally_node *n, uint32_t id);
void tally_node_unsuspect(tally_node *n, uint32_t id);
bool tally_node_suspected(tally_node *n, uint32_t id);
/* Up in the map and not suspected here. */
bool tally_node_reachable(tally_node *n, const tally_node_info *ni);
/* After a call: note the peer as suspected (no reply) or not (it answered). */
void tally_node_note_call(tally_node *n, uint32_t id, const tally_rpc_call *c);
/* Write DIR/ready (pid, name, sql_port, data_addr) atomically; remove it at close. */
int tally_node_write_ready(tally_node *n);

/* Parse argv common flags into cfg (role-specific flags handled by the caller first).
 * Returns 0, or prints usage/error and returns 2. */
int tally_node_parse_args(int argc, char **argv, tally_node_config *cfg, const char *usage);
/* Call first thing in main: block SIGTERM/SIGINT in every thread (tally_node_wait_signal
 * takes them) and ignore SIGPIPE. */
void tally_node_init_process(void);
/* Block until SIGTERM/SIGINT. */
void tally_node_wait_signal(void);

/* DDL replies (TALLY_MSG_DDL_OK): u8 ok; ok: str tag, str notice, str catalog; else str sqlstate,
 * message, detail, hint, u32 position. A notice (e.g. "relation already exists, skipping") may
 * accompany success. */
void tally_ddl_reply_put(tally_buf *b, const char *tag, const char *notice,
			 const tally_catalog *cat, const tally_err *err);
/* Decode: on ok fills tag/notice and *cat (heap; caller owns), returns 0; on a remote error
 * fills err and returns -1; malformed -> -1 with an internal error. */
int tally_ddl_reply_get(tally_rd *r, char *tag, size_t tagsz, tally_err *notice,
			tally_catalog **cat, tally_err *err);

/* ---- durability: log records, outbox, checkpoints (DESIGN §5, §9) --------------------------- */

/* Log record types (tally_wal payload layouts; big-endian). */
enum {
	TALLY_REC_OUTBOX = 1, /* u32 n, then n x (u32 len, APPLY body): one statement's batches */
	TALLY_REC_OUTBOX_DONE =
	    2,		     /* u32 n, then n x (u64 view, u32 home shard, u64 seq): acknowledged */
	TALLY_REC_APPLY = 3, /* worker (before replication): an APPLY body a primary applied */
	TALLY_REC_SHARD = 4, /* worker: change records of one shard copy: u64 view, u32 shard,
				u64 gen, u64 first rlsn, u32 n, n x (u8 kind, u32 len, body) */
};

typedef enum tally_insert_level {
	TALLY_INSERT_SYNC_RECEIVE = 0,
	TALLY_INSERT_SYNC_COMMIT,
	TALLY_INSERT_ASYNC,
} tally_insert_level;
tally_insert_level tally_insert_level_of(const tally_settings *s);

/* Open the data directory's durable state: DIR/node.state (log id, checkpoint), the log in
 * DIR/wal; run the role's recover hook, replay the log (outbox records here, others through
 * the role's replay hook), start the outbox senders and the checkpoint thread. Called by
 * tally_node_open before it listens. Errors (corrupt log or state, I/O) -> -1, logged. */
int tally_node_durable_open(tally_node *n);
/* Stop the senders and the checkpoint thread, write a final checkpoint, close the log. */
void tally_node_durable_close(tally_node *n);
/* Run a checkpoint now (also used by tests and at shutdown). 0, or -1 with err. */
int tally_node_checkpoint(tally_node *n, tally_err *err);

/* Submit one statement's batches (APPLY bodies with seq 0; bodies[i] is taken over and left
 * empty) through the outbox: seqs are assigned and the batches logged as one record, so a
 * crash keeps all or none of them; then, by level, wait until the record is durable
 * (sync_receive), until every batch was applied by its primary (sync_commit, at most
 * timeout_ms), or not at all (async). Delivery goes on in the background until each batch is
 * acknowledged. Errors: 53400 when the outbox is over pipeline_cluster.outbox_limit (nothing
 * logged), XX000 when the log failed (nothing acknowledged), 57P03 when sync_commit timed
 * out (the batches are logged and will still be applied in full). */
int tally_outbox_submit(tally_node *n, tally_buf *bodies, int nb, tally_insert_level level,
			int timeout_ms, tally_err *err);

typedef struct tally_outbox_row {
	uint64_t view_id;
	uint32_t shard;
	uint64_t batches, bytes;
	int64_t oldest_us; /* when the oldest waiting batch was logged (or replayed) */
	uint32_t attempts; /* failed sends of the oldest batch */
} tally_outbox_row;
/* Snapshot of what waits for delivery, one row per (view, shard); heap array (free). */
size_t tally_outbox_rows(tally_node *n, tally_outbox_row **rows);

/* ---- ingest and read, used by the session layer -------------------------------------------- */

/* Statement-scoped ingest: rows are added one by one, pre-aggregated per view and group, and
 * sent to the primaries at commit. Nothing is sent before commit, so a failed statement
 * applies nothing. */
typedef struct tally_ingest tally_ingest;
int tally_ingest_begin(tally_node *n, tally_map *m, const char *stream, const tally_settings *s,
		       tally_ingest **out, tally_err *err);
/* The stream's relation (columns + arrival_timestamp). */
const tally_relation *tally_ingest_rel(const tally_ingest *g);
/* Add one row (stream columns then arrival_timestamp, which the caller leaves NULL and
 * ingest fills). Errors from view WHERE/group expressions (22012 ...) and memory limits. */
int tally_ingest_row(tally_ingest *g, tally_value *row, tally_err *err);
int tally_ingest_commit(tally_ingest *g, tally_err *err);
void tally_ingest_free(tally_ingest *g);
uint64_t tally_ingest_rows(const tally_ingest *g);

/* Read a view: fan out to one copy per shard, merge, finalize. Rows are the view's output
 * columns, allocated in a. With key (an encoded full group key, tally_key_encode of every
 * group value), only that group is fetched: from the one shard owning it for read_optimized
 * views, from every shard otherwise. warning (may be NULL) receives a WARNING when shards were
 * skipped. */
int tally_read_view(tally_node *n, tally_map *m, const tally_view_rt *v, const tally_settings *s,
		    const uint8_t *key, uint32_t keylen, tally_arena *a, tally_value **rows,
		    size_t *nrows, tally_err *warning, tally_err *err);
/* The encoded group key a read query pins down, if its WHERE has `col = constant` for every
 * group column of the view (all of them must be output columns). Returns 1 with the key in
 * out, else 0. */
int tally_read_pushdown_key(const tally_view_rt *v, const tally_select_plan *plan, tally_buf *out);

/* System views: fill the relation description and rows. Returns 1 if name is a system view,
 * 0 if not, -1 on error. */
int tally_sysview(tally_node *n, tally_map *m, const char *name, tally_arena *a,
		  tally_relation *rel, tally_value **rows, size_t *nrows, tally_err *err);

/* The pgwire handlers of the session layer; server_ctx is the tally_node. */
extern const tally_pg_handlers tally_session_handlers;

#endif
