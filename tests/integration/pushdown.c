/*
 * pushdown.c - reads that pin the whole group key of a read_optimized view (`WHERE k = 1 AND
 * g = 'a'`) are answered by the one shard owning that group (DESIGN §8.4), with the same
 * result as a full read. Shown with a worker down: a pinned read of a group on a live shard
 * succeeds, while a full read fails naming the unavailable shard, and succeeds partially with
 * pipeline_cluster.skip_unavailable and a WARNING.
 */
#include "harness.h"
#include "tally/group.h"
#include "tally/ring.h"
#include "tally/types.h"

#include <criterion/criterion.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#define NK 60
#define NSHARDS 6

/* The shard owning group (k, g) as the cluster computes it. */
static int shard_of(int k, const char *g)
{
	tally_buf key = {0};
	tally_value kv = tally_int(TALLY_T_INT4, k);
	tally_value gv = tally_text(g, (uint32_t)strlen(g));
	tally_key_encode(&kv, &key);
	tally_key_encode(&gv, &key);
	int s = (int)tally_ring_shard_of(tally_group_hash(key.data, key.len), NSHARDS);
	tally_buf_free(&key);
	return s;
}

typedef struct down_ctx {
	PGconn *conn;
	const char *name;
} down_ctx;

static bool node_down(void *p)
{
	down_ctx *d = p;
	char sql[160];
	snprintf(sql, sizeof sql, "SELECT state FROM pipeline_cluster.nodes WHERE name = '%s'",
		 d->name);
	PGresult *r = PQexec(d->conn, sql);
	bool down = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 &&
		    strcmp(PQgetvalue(r, 0, 0), "down") == 0;
	PQclear(r);
	return down;
}

Test(pushdown, full_key_reads_one_shard, .fini = th_fini, .timeout = 120)
{
	th_opts o = {.sets = {"pipeline_cluster.failure_timeout=600ms",
			      "pipeline_cluster.heartbeat_interval=100ms", NULL}};
	th_cluster *c = th_cluster_start(3, &o);
	PGconn *co = th_connect(th_coord(c));
	th_run(co, "CREATE STREAM s (k integer, g text, v bigint)");
	th_runf(co,
		"CREATE CONTINUOUS VIEW v WITH (num_shards = %d, num_replicas = 0) AS "
		"SELECT k, g, count(*), sum(v) FROM s GROUP BY k, g",
		NSHARDS);
	tally_buf data = {0};
	for (int k = 0; k < NK; k++)
		for (int i = 0; i <= k % 5; i++)
			tally_buf_printf(&data, "%d\t%s\t%d\n", k, k % 2 ? "a" : "b", k * 10 + i);
	th_copy_ok(co, "COPY s FROM STDIN", (const char *)data.data, data.len, 180);
	tally_buf_free(&data);

	/* Pinned reads equal what a full read says, for every group, and miss nothing. */
	for (int k = 0; k < NK; k++) {
		const char *g = k % 2 ? "a" : "b";
		int64_t n = k % 5 + 1;
		int64_t sum = 0;
		for (int i = 0; i < n; i++)
			sum += k * 10 + i;
		cr_assert_eq(
		    th_query_intf(co, "SELECT count FROM v WHERE k = %d AND g = '%s'", k, g), n);
		cr_assert_eq(th_query_intf(co, "SELECT sum FROM v WHERE g = '%s' AND k = %d", g, k),
			     sum);
		cr_assert_eq(th_query_intf(co, "SELECT count(*) FROM v WHERE k = %d AND g = '%s'",
					   k, k % 2 ? "b" : "a"),
			     0);
	}
	cr_assert_eq(th_query_int(co, "SELECT count(*) FROM v WHERE k = 7"),
		     1); /* partial key: full read */

	/* Take w3 down for good and wait until the coordinator says so. */
	PGresult *r =
	    th_exec_ok(co, "SELECT shard_id, owner FROM pipeline_cluster.shards ORDER BY shard_id");
	cr_assert_eq(PQntuples(r), NSHARDS);
	char owner[NSHARDS][16];
	for (int i = 0; i < NSHARDS; i++)
		snprintf(owner[i], sizeof owner[i], "%s", PQgetvalue(r, i, 1));
	PQclear(r);
	th_kill_node(c, th_worker(c, 3), SIGKILL);
	down_ctx d = {co, "w3"};
	cr_assert(th_wait_until(node_down, &d, 10000), "w3 was not marked down");

	int live = 0, dead = 0;
	for (int k = 0; k < NK; k++) {
		const char *g = k % 2 ? "a" : "b";
		char sql[128];
		snprintf(sql, sizeof sql, "SELECT count FROM v WHERE k = %d AND g = '%s'", k, g);
		if (strcmp(owner[shard_of(k, g)], "w3") == 0) {
			PQclear(th_exec_err(co, sql, "57P03"));
			dead++;
		} else {
			cr_assert_eq(th_query_int(co, sql), k % 5 + 1);
			live++;
		}
	}
	cr_assert_gt(live, 0);
	bool w3_has_primary = false;
	for (int i = 0; i < NSHARDS; i++)
		w3_has_primary |= strcmp(owner[i], "w3") == 0;
	if (w3_has_primary) {
		cr_assert_gt(dead, 0);
		r = th_exec_err(co, "SELECT * FROM v", "57P03");
		cr_assert(strstr(PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY), "v_") != NULL,
			  "the error names the shard: %s",
			  PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY));
		PQclear(r);
		th_run(co, "SET pipeline_cluster.skip_unavailable = on");
		cr_assert_eq(th_query_int(co, "SELECT count(*) FROM v WHERE k >= 0"), live);
	}
	PQfinish(co);
	th_cluster_stop(c);
}
