/*
 * remove_node.c - `SELECT pipeline_cluster.remove_node('w2')` takes a dead worker out of the
 * cluster for good: a live replica of each of its primaries is promoted, each copy slot it
 * leaves gets a new node, and the node disappears from the map. Checked from the catalog's
 * side only (pipeline_cluster.shards and .nodes): who owns which copy, not the views' data,
 * which is replication's business. Refusals change nothing: a node that is up (55000), an
 * unknown name (42704), a shard whose only copy was on the node (55000), too few live
 * workers left for num_replicas (53000).
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Fast failure detection so the tests wait for "down" briefly. */
static const th_opts fast = {.sets = {"pipeline_cluster.failure_timeout=600ms",
				      "pipeline_cluster.heartbeat_interval=100ms", NULL}};

static void wait_state(th_node *at, const char *name, const char *want)
{
	th_wait_node_state(at, name, want, 15000);
}

/* The last NOTICE a connection received. */
static char last_notice[1024];
static void notice_cb(void *arg, const PGresult *r)
{
	(void)arg;
	snprintf(last_notice, sizeof last_notice, "%s",
		 PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY)
		     ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY)
		     : "");
}

/* Every shard of view v has exactly one primary and `replicas` replicas, on distinct nodes
 * that are up and none of them named `gone`; returns how many shards were seen. */
static int check_placement(PGconn *conn, const char *v, int nshards, int replicas, const char *gone)
{
	PGresult *r = th_exec_okf(conn,
				  "SELECT shard_id, owner, shard_type, reachable FROM "
				  "pipeline_cluster.shards WHERE continuous_view = '%s' ORDER BY "
				  "shard_id, shard_type, owner",
				  v);
	cr_assert_eq(PQntuples(r), nshards * (1 + replicas), "view %s has %d shard copies", v,
		     PQntuples(r));
	for (int s = 0; s < nshards; s++) {
		int nprim = 0, nrep = 0;
		const char *owners[16];
		for (int k = 0; k <= replicas; k++) {
			int row = s * (1 + replicas) + k;
			cr_assert_eq(atoi(PQgetvalue(r, row, 0)), s);
			const char *owner = PQgetvalue(r, row, 1);
			const char *type = PQgetvalue(r, row, 2);
			nprim += strcmp(type, "primary") == 0;
			nrep += strcmp(type, "replica") == 0;
			cr_assert_str_neq(owner, gone, "%s_%d still has a %s on %s", v, s, type,
					  gone);
			cr_assert_str_eq(PQgetvalue(r, row, 3), "t",
					 "%s_%d: %s on %s is unreachable", v, s, type, owner);
			for (int q = 0; q < k; q++)
				cr_assert_str_neq(owners[q], owner, "%s_%d has two copies on %s", v,
						  s, owner);
			owners[k] = owner;
		}
		cr_assert_eq(nprim, 1, "%s_%d has %d primaries", v, s, nprim);
		cr_assert_eq(nrep, replicas, "%s_%d has %d replicas", v, s, nrep);
	}
	PQclear(r);
	return nshards;
}

static int64_t copies_on(PGconn *conn, const char *owner)
{
	return th_query_intf(
	    conn, "SELECT count(*) FROM pipeline_cluster.shards WHERE owner = '%s'", owner);
}

Test(remove_node, promotes_and_replaces_copies, .fini = th_fini, .timeout = 180)
{
	th_cluster *c = th_cluster_start(4, &fast);
	PGconn *co = th_connect(th_coord(c));
	PQsetNoticeReceiver(co, notice_cb, NULL);
	th_run(co, "CREATE STREAM s (k integer, v double precision)");
	th_run(co, "CREATE CONTINUOUS VIEW a WITH (num_shards = 8, num_replicas = 1) AS "
		   "SELECT k, count(*) FROM s GROUP BY k");
	th_run(co, "CREATE VIEW b WITH (action = materialize, num_shards = 8, num_replicas = 1, "
		   "replication = 'sync') AS SELECT k, sum(v) FROM s GROUP BY k");
	check_placement(co, "a", 8, 1, "-");
	check_placement(co, "b", 8, 1, "-");
	cr_assert_gt(copies_on(co, "w2"), 0, "w2 holds no copies: the test would prove nothing");

	/* An up node and an unknown one are refused, and nothing changes. */
	PGresult *r = th_exec_err(co, "SELECT pipeline_cluster.remove_node('w2')", "55000");
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY),
			 "cannot remove node \"w2\": it is up");
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_MESSAGE_HINT),
			 "Stop it first; remove_node is for nodes that are gone for good.");
	PQclear(r);
	r = th_exec_err(co, "SELECT pipeline_cluster.remove_node('nope')", "42704");
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY),
			 "node \"nope\" does not exist");
	PQclear(r);
	PQclear(th_exec_err(co, "SELECT pipeline_cluster.remove_node(2)", "42883"));
	cr_assert_eq(th_query_int(co, "SELECT count(*) FROM pipeline_cluster.nodes WHERE role = "
				      "'worker'"),
		     4);

	/* Run 1: kill w2, remove it through a worker's SQL port. */
	th_kill_node(c, th_worker(c, 2), SIGKILL);
	wait_state(th_coord(c), "w2", "down");
	wait_state(th_worker(c, 1), "w2", "down");
	PGconn *w1 = th_connect(th_worker(c, 1));
	PQsetNoticeReceiver(w1, notice_cb, NULL);
	last_notice[0] = 0;
	r = th_exec_ok(w1, "SELECT pipeline_cluster.remove_node('w2')");
	cr_assert_eq(PQntuples(r), 1);
	cr_assert_eq(PQnfields(r), 1);
	cr_assert_str_eq(PQfname(r, 0), "remove_node");
	cr_assert_str_eq(PQgetvalue(r, 0, 0), "w2");
	cr_assert_str_eq(PQcmdStatus(r), "SELECT 1");
	PQclear(r);
	cr_assert(strstr(last_notice, "removed node \"w2\"") != NULL, "notice: %s", last_notice);
	cr_assert(strstr(last_notice, "new replica of") != NULL, "notice: %s", last_notice);
	/* The worker that ran it and the coordinator both have the new map at once. */
	PGconn *conns[2] = {w1, co};
	for (int i = 0; i < 2; i++) {
		check_placement(conns[i], "a", 8, 1, "w2");
		check_placement(conns[i], "b", 8, 1, "w2");
		cr_assert_eq(copies_on(conns[i], "w2"), 0);
		cr_assert_eq(th_query_int(conns[i], "SELECT count(*) FROM pipeline_cluster.nodes "
						    "WHERE name = 'w2'"),
			     0);
	}
	/* The other workers get it too. */
	wait_state(th_worker(c, 3), "w2", NULL);
	wait_state(th_worker(c, 4), "w2", NULL);
	/* Now it is unknown. */
	PQclear(th_exec_err(co, "SELECT pipeline_cluster.remove_node('w2')", "42704"));

	/* Run 2: kill w3, remove it at the coordinator; 2 workers remain for num_replicas 1. */
	th_kill_node(c, th_worker(c, 3), SIGKILL);
	wait_state(th_coord(c), "w3", "down");
	last_notice[0] = 0;
	/* The extended protocol (Parse/Describe/Execute) this time. */
	r = PQexecParams(co, "SELECT pipeline_cluster.remove_node('w3');", 0, NULL, NULL, NULL,
			 NULL, 0);
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQresultErrorMessage(r));
	cr_assert_eq(PQntuples(r), 1);
	cr_assert_str_eq(PQfname(r, 0), "remove_node");
	cr_assert_eq(PQftype(r, 0), TH_OID_TEXT);
	cr_assert_str_eq(PQgetvalue(r, 0, 0), "w3");
	PQclear(r);
	cr_assert(strstr(last_notice, "removed node \"w3\"") != NULL, "notice: %s", last_notice);
	for (int i = 0; i < 2; i++) {
		check_placement(conns[i], "a", 8, 1, "w3");
		check_placement(conns[i], "b", 8, 1, "w3");
		cr_assert_eq(th_query_int(conns[i], "SELECT count(*) FROM pipeline_cluster.shards "
						    "WHERE owner NOT IN ('w1', 'w4')"),
			     0);
	}
	cr_assert_eq(th_query_int(co, "SELECT count(*) FROM pipeline_cluster.nodes WHERE role = "
				      "'worker'"),
		     2);
	/* DDL keeps working on the smaller cluster. */
	th_run(w1, "CREATE CONTINUOUS VIEW c2 WITH (num_replicas = 1) AS SELECT k, count(*) "
		   "FROM s GROUP BY k");
	cr_assert_eq(th_query_int(co, "SELECT count(*) FROM pipeline_cluster.shards WHERE "
				      "continuous_view = 'c2' AND owner NOT IN ('w1', 'w4')"),
		     0);
	PQfinish(w1);
	PQfinish(co);
	th_cluster_stop(c);
}

Test(remove_node, refusals_change_nothing, .fini = th_fini, .timeout = 180)
{
	th_cluster *c = th_cluster_start(3, &fast);
	PGconn *co = th_connect(th_coord(c));
	th_run(co, "CREATE STREAM s (k integer)");
	th_run(co, "CREATE CONTINUOUS VIEW r0 WITH (num_shards = 3, num_replicas = 0) AS "
		   "SELECT k, count(*) FROM s GROUP BY k");
	th_run(co, "CREATE CONTINUOUS VIEW r2 WITH (num_shards = 4, num_replicas = 2) AS "
		   "SELECT k, count(*) FROM s GROUP BY k");
	/* Kill the node holding r0_0, the only copy of that shard. */
	char *victim = th_query_str(co, "SELECT owner FROM pipeline_cluster.shards WHERE shard = "
					"'r0_0'");
	int vi = 0;
	for (int i = 1; i <= 3; i++)
		if (strcmp(th_worker(c, i)->name, victim) == 0)
			vi = i;
	cr_assert_gt(vi, 0, "r0_0 is on %s", victim);
	PGresult *before = th_exec_ok(co, "SELECT shard, owner, shard_type FROM "
					  "pipeline_cluster.shards ORDER BY 1, 2, 3");
	th_kill_node(c, th_worker(c, vi), SIGKILL);
	wait_state(th_coord(c), victim, "down");

	char sql[128];
	snprintf(sql, sizeof sql, "SELECT pipeline_cluster.remove_node('%s')", victim);
	PGresult *r = th_exec_err(co, sql, "55000");
	char want[256];
	snprintf(want, sizeof want,
		 "cannot remove node \"%s\": shard r0_0 has no live copy to "
		 "promote",
		 victim);
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY), want);
	PQclear(r);

	/* Without r0, r2 needs 3 live workers for its 3 copies and only 2 would remain. */
	th_run(co, "DROP CONTINUOUS VIEW r0");
	r = th_exec_err(co, sql, "53000");
	snprintf(want, sizeof want,
		 "cannot remove node \"%s\": view \"r2\" needs 3 nodes that are up, and 2 "
		 "would remain",
		 victim);
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY), want);
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_MESSAGE_HINT), "Add a worker first.");
	PQclear(r);
	/* The same from a worker. */
	PGconn *w = th_connect(th_worker(c, vi == 1 ? 2 : 1));
	PQclear(th_exec_err(w, sql, "53000"));
	PQfinish(w);

	/* Nothing moved: r2's copies are where they were and the node is still listed. */
	PGresult *after = th_exec_ok(co, "SELECT shard, owner, shard_type FROM "
					 "pipeline_cluster.shards ORDER BY 1, 2, 3");
	int nb = 0;
	for (int i = 0; i < PQntuples(before); i++) {
		if (strncmp(PQgetvalue(before, i, 0), "r2_", 3) != 0)
			continue;
		cr_assert_lt(nb, PQntuples(after));
		for (int k = 0; k < 3; k++)
			cr_assert_str_eq(PQgetvalue(before, i, k), PQgetvalue(after, nb, k));
		nb++;
	}
	cr_assert_eq(nb, 12);
	cr_assert_eq(PQntuples(after), 12);
	PQclear(before);
	PQclear(after);
	cr_assert_eq(th_query_intf(co,
				   "SELECT count(*) FROM pipeline_cluster.nodes WHERE name = "
				   "'%s' AND state = 'down'",
				   victim),
		     1);
	free(victim);
	PQfinish(co);
	th_cluster_stop(c);
}
