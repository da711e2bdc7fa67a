/*
 * catalog.h - the cluster map: nodes, streams, views and their shard placements, versioned by
 * an epoch. The coordinator owns the authoritative copy and publishes it to every node as an
 * encoded blob; each node decodes it into an immutable tally_catalog that readers share.
 */
#ifndef TALLY_CATALOG_H
#define TALLY_CATALOG_H

#include "tally/sql.h"

typedef enum tally_node_state {
	TALLY_NODE_UP = 0,
	TALLY_NODE_DOWN = 1,
} tally_node_state;

typedef struct tally_node_info {
	uint32_t id; /* 1.. ; the coordinator itself is not a member node */
	char name[TALLY_NAME_MAX];
	char data_addr[128]; /* "tcp://127.0.0.1:40123" */
	char sql_addr[128];  /* "127.0.0.1:6433" */
	uint8_t state;	     /* tally_node_state */
	uint64_t incarnation;
	int64_t last_heartbeat_us; /* wall clock, 0 = never */
} tally_node_info;

typedef struct tally_stream_info {
	uint64_t id;
	char name[TALLY_NAME_MAX];
	int ncols; /* user columns; arrival_timestamp is implicit and not listed */
	tally_column *cols;
} tally_stream_info;

/* How a view's primaries acknowledge a batch (DESIGN §6): async once applied on the primary,
 * sync once every live copy has it, quorum once a majority of copies has it. */
typedef enum tally_replication_mode {
	TALLY_REPL_ASYNC = 0,
	TALLY_REPL_SYNC = 1,
	TALLY_REPL_QUORUM = 2,
} tally_replication_mode;

typedef struct tally_view_info {
	uint64_t id;
	char name[TALLY_NAME_MAX];
	char stream[TALLY_NAME_MAX];
	char *query_text; /* "SELECT ...", re-analyzed by every node */
	int num_shards;
	int num_replicas;
	int sharding_policy; /* tally_sharding_policy */
	uint8_t replication; /* tally_replication_mode */
	uint32_t *primary;   /* [num_shards] node ids */
	uint32_t *replicas;  /* [num_shards * num_replicas] node ids */
} tally_view_info;

typedef struct tally_catalog {
	uint64_t epoch;
	uint64_t next_id; /* next stream/view id */
	int nnodes;
	tally_node_info *nodes;
	int nstreams;
	tally_stream_info *streams;
	int nviews;
	tally_view_info *views;
} tally_catalog;

/* Encode c (big-endian, versioned: the current version is 2) into b. */
void tally_catalog_encode(const tally_catalog *c, tally_buf *b);
/* Decode an encoded catalog into a fresh heap object. Rejects truncated, trailing or
 * inconsistent data (counts beyond limits, placements naming unknown nodes, replication modes
 * other than tally_replication_mode). Accepts version 1 (written before views had a
 * replication mode; they decode as TALLY_REPL_ASYNC) and version 2. Limits: nodes
 * <= 1024, streams + views each <= 100000, columns <= TALLY_MAX_COLUMNS, shards 1..
 * TALLY_MAX_SHARDS, replicas <= TALLY_MAX_REPLICAS, query text <= 1 MiB; node ids nonzero and
 * distinct, node names distinct, stream and view names distinct from each other. */
int tally_catalog_decode(const void *p, size_t n, tally_catalog **out);
/* An empty catalog (epoch 0, next_id 1, no nodes/streams/views); free with
 * tally_catalog_free. A zeroed heap tally_catalog is valid too. */
tally_catalog *tally_catalog_alloc(void);
tally_catalog *tally_catalog_clone(const tally_catalog *c);
void tally_catalog_free(tally_catalog *c);

const tally_node_info *tally_catalog_node(const tally_catalog *c, uint32_t id);
const tally_node_info *tally_catalog_node_by_name(const tally_catalog *c, const char *name);
const tally_stream_info *tally_catalog_stream(const tally_catalog *c, const char *name);
const tally_view_info *tally_catalog_view(const tally_catalog *c, const char *name);
const tally_view_info *tally_catalog_view_by_id(const tally_catalog *c, uint64_t id);

/* Mutators used by the coordinator on its private copy (names are case-sensitive, already
 * normalised by the parser). They take ownership of nothing; arrays are copied. */
int tally_catalog_add_stream(tally_catalog *c, const char *name, int ncols,
			     const tally_column *cols, tally_err *err);
int tally_catalog_drop_stream(tally_catalog *c, const char *name); /* views too */
int tally_catalog_add_view(tally_catalog *c, const tally_view_info *v, tally_err *err);
int tally_catalog_drop_view(tally_catalog *c, const char *name);
/* add_stream: 42P07 `stream "s" already exists` / `relation "s" already exists` (a view has the
 * name), 54011 beyond TALLY_MAX_COLUMNS. add_view: 42P07 `relation "v" already exists`, 22023 for
 * out-of-range num_shards/num_replicas or an unknown replication mode, XX000 when the placement
 * names a node not in c. Both assign id = next_id++ (v->id is ignored). drop_*: 0 if dropped, -1 if
 * no such name. Mutators never change the epoch. Pointers from the lookups are invalidated by any
 * mutator. */
/* Add or update a node by name (a new name gets max id + 1; an existing one keeps its id and
 * takes n's other fields); returns its id, or 0 if n->name is empty/too long or the catalog
 * already has 1024 nodes. */
uint32_t tally_catalog_upsert_node(tally_catalog *c, const tally_node_info *n);
/* Delete node id from the node list. Returns 0, or -1 (nothing changed) if there is no such
 * node or a shard copy of some view is still placed on it (move those first). */
int tally_catalog_remove_node(tally_catalog *c, uint32_t id);

#endif
