/*
 * restart.c - the coordinator's catalog survives a restart: streams, views, placements and
 * node ids come back from DIR/catalog; while the coordinator is down, workers go on
 * ingesting and answering reads with their last map; afterwards DDL typed at a worker works
 * again and reaches every node.
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* "v_0:w1,v_0:w2,..." - every shard copy and its owner, in a stable order. */
static char *placement(PGconn *conn)
{
	PGresult *r = th_exec_ok(
	    conn, "SELECT shard, owner FROM pipeline_cluster.shards ORDER BY shard, owner");
	tally_buf b = {0};
	for (int i = 0; i < PQntuples(r); i++)
		tally_buf_printf(&b, "%s%s:%s", i ? "," : "", PQgetvalue(r, i, 0),
				 PQgetvalue(r, i, 1));
	tally_buf_putc(&b, 0);
	PQclear(r);
	cr_assert_gt(b.len, 1, "no shards listed");
	return (char *)b.data;
}

typedef struct up_ctx {
	th_cluster *c;
	int want;
} up_ctx;

static bool workers_up(void *p)
{
	up_ctx *u = p;
	PGconn *conn = th_try_connect(th_coord(u->c));
	if (!conn)
		return false;
	PGresult *r = PQexec(
	    conn,
	    "SELECT count(*) FROM pipeline_cluster.nodes WHERE role = 'worker' AND state = 'up'");
	bool ok = PQresultStatus(r) == PGRES_TUPLES_OK && atoi(PQgetvalue(r, 0, 0)) == u->want;
	PQclear(r);
	PQfinish(conn);
	return ok;
}

Test(restart, coordinator_restart_keeps_the_cluster, .fini = th_fini, .timeout = 120)
{
	th_cluster *c = th_cluster_start(3, NULL);
	PGconn *co = th_connect(th_coord(c));
	th_run(co, "CREATE STREAM s (k integer, v double precision)");
	th_run(co, "CREATE CONTINUOUS VIEW v WITH (num_shards = 4) AS SELECT k, count(*), sum(v) "
		   "FROM s GROUP BY k");
	th_run(co, "INSERT INTO s VALUES (1, 1.5), (2, 2.5), (1, 3)");
	char *shards_before = placement(co);
	PQfinish(co);

	th_kill_node(c, th_coord(c), SIGTERM);
	cr_assert_eq(WEXITSTATUS(th_coord(c)->exit_status), 0, "coordinator exit status");

	/* With the coordinator down, a worker still ingests and reads with its last map. */
	PGconn *w2 = th_connect(th_worker(c, 2));
	th_run(w2, "INSERT INTO s VALUES (1, 10), (3, 1)");
	cr_assert_eq(th_query_int(w2, "SELECT sum(count) FROM v"), 5);
	/* ... but DDL needs the coordinator and says so (within the session's rpc_timeout). */
	th_run(w2, "SET pipeline_cluster.rpc_timeout = '500ms'");
	PGresult *r = PQexec(w2, "CREATE STREAM t (x integer)");
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_SQLSTATE), "57P03");
	PQclear(r);

	th_restart_node(c, th_coord(c));
	up_ctx u = {c, 3};
	cr_assert(th_wait_until(workers_up, &u, 15000),
		  "workers did not come back up at the coordinator");

	co = th_connect(th_coord(c));
	cr_assert_eq(
	    th_query_int(co, "SELECT count(*) FROM pipeline_cluster.views WHERE name = 'v'"), 1);
	char *shards_after = placement(co);
	cr_assert_str_eq(shards_after, shards_before, "placement changed across the restart");
	cr_assert_eq(th_query_int(co, "SELECT count FROM v WHERE k = 1"), 3);

	/* DDL at a worker reaches every node again. */
	th_run(w2, "CREATE CONTINUOUS VIEW v2 AS SELECT k, max(v) FROM s GROUP BY k");
	for (int i = 1; i <= 3; i++) {
		PGconn *w = th_connect(th_worker(c, i));
		th_runf(w, "INSERT INTO s VALUES (%d, %d)", 10 + i, i);
		PQfinish(w);
	}
	cr_assert_eq(th_query_int(co, "SELECT count(*) FROM v2"), 3);
	cr_assert_eq(th_query_int(co, "SELECT sum(count) FROM v"), 8);
	free(shards_before);
	free(shards_after);
	PQfinish(w2);
	PQfinish(co);
	th_cluster_stop(c);
}

typedef struct gone_ctx {
	th_cluster *c;
	int worker;
} gone_ctx;

/* The worker has taken the new cluster's map: the old view is gone there. */
static bool old_view_gone(void *p)
{
	gone_ctx *g = p;
	PGconn *conn = th_try_connect(th_worker(g->c, g->worker));
	if (!conn)
		return false;
	PGresult *r = PQexec(conn, "SELECT count(*) FROM pipeline_cluster.views WHERE name = 'v'");
	bool gone = PQresultStatus(r) == PGRES_TUPLES_OK && atoi(PQgetvalue(r, 0, 0)) == 0;
	PQclear(r);
	PQfinish(conn);
	return gone;
}

/* A coordinator that lost its catalog file starts a new cluster: the workers must follow it
 * (its epochs are newer) and drop the old shards, and a new view reusing the old name must
 * not inherit their groups. */
Test(restart, coordinator_without_catalog_starts_over_cleanly, .fini = th_fini, .timeout = 120)
{
	th_cluster *c = th_cluster_start(2, NULL);
	PGconn *co = th_connect(th_coord(c));
	th_run(co, "CREATE STREAM s (k integer, v integer)");
	th_run(co, "CREATE CONTINUOUS VIEW v AS SELECT k, count(*), sum(v) FROM s GROUP BY k");
	th_run(co, "INSERT INTO s VALUES (1, 10), (2, 20), (1, 30)");
	PQfinish(co);

	th_kill_node(c, th_coord(c), SIGTERM);
	char path[600];
	snprintf(path, sizeof path, "%s/catalog", th_coord(c)->dir);
	cr_assert_eq(unlink(path), 0, "no catalog file at %s", path);
	th_restart_node(c, th_coord(c));
	up_ctx u = {c, 2};
	cr_assert(th_wait_until(workers_up, &u, 15000), "workers did not join the new cluster");
	for (int i = 1; i <= 2; i++) {
		gone_ctx g = {c, i};
		cr_assert(th_wait_until(old_view_gone, &g, 10000), "w%d kept the old map", i);
	}

	co = th_connect(th_coord(c));
	th_run(co, "CREATE STREAM s (k integer, x double precision)");
	th_run(co, "CREATE CONTINUOUS VIEW v AS SELECT k, count(*), avg(x) FROM s GROUP BY k");
	PGconn *w1 = th_connect(th_worker(c, 1));
	th_run(w1, "INSERT INTO s VALUES (1, 1.5), (3, 2.5)");
	cr_assert_eq(th_query_int(co, "SELECT count(*) FROM v"), 2,
		     "old groups leaked into the new view");
	cr_assert_eq(th_query_int(co, "SELECT count FROM v WHERE k = 1"), 1);
	char *avg = th_query_str(w1, "SELECT avg FROM v WHERE k = 3");
	cr_assert_str_eq(avg, "2.5");
	free(avg);
	PQfinish(w1);
	PQfinish(co);
	th_cluster_stop(c);
}

/* Snapshot files in a worker's directory (of one view id, or of all with view_id 0). */
static int snapshot_files(const th_node *n, uint64_t view_id)
{
	char dir[600], prefix[32];
	snprintf(dir, sizeof dir, "%s/snap", n->dir);
	snprintf(prefix, sizeof prefix, "%016llx-", (unsigned long long)view_id);
	DIR *d = opendir(dir);
	int count = 0;
	struct dirent *de;
	while (d && (de = readdir(d)))
		count += strstr(de->d_name, ".snap") != NULL &&
			 (view_id == 0 || strncmp(de->d_name, prefix, strlen(prefix)) == 0);
	if (d)
		closedir(d);
	return count;
}

typedef struct snaps_ctx {
	const th_node *n;
	uint64_t view_id;
} snaps_ctx;

static bool no_snapshots_of(void *p)
{
	snaps_ctx *s = p;
	return snapshot_files(s->n, s->view_id) == 0;
}

typedef struct views_ctx {
	th_cluster *c;
	int worker;
	const char *want; /* "name:num_shards,..." */
} views_ctx;

/* "name:num_shards:query,..." of the views a node knows (heap string; NULL if it does not
 * answer). */
static char *views_of(const th_node *n)
{
	PGconn *conn = th_try_connect(n);
	if (!conn)
		return NULL;
	PGresult *r =
	    PQexec(conn, "SELECT name, num_shards, query FROM pipeline_cluster.views ORDER BY 1");
	tally_buf b = {0};
	for (int i = 0; PQresultStatus(r) == PGRES_TUPLES_OK && i < PQntuples(r); i++)
		tally_buf_printf(&b, "%s%s:%s:%s", i ? "," : "", PQgetvalue(r, i, 0),
				 PQgetvalue(r, i, 1), PQgetvalue(r, i, 2));
	tally_buf_putc(&b, 0);
	PQclear(r);
	PQfinish(conn);
	return (char *)b.data;
}

static bool views_are(void *p)
{
	views_ctx *v = p;
	char *got = views_of(th_worker(v->c, v->worker));
	bool ok = got && strcmp(got, v->want) == 0;
	free(got);
	return ok;
}

/* A view dropped and one created while a worker was down are right on that worker once it
 * is back: the dropped view's shards (recovered from its snapshots) go, with their files at
 * the next checkpoint; a new view of the same name has none of the old groups; the worker
 * ingests and reads the new one at once. */
Test(restart, views_changed_while_a_worker_was_down, .fini = th_fini, .timeout = 180)
{
	th_opts o = {.sets = {"pipeline_cluster.checkpoint_interval=300ms"}};
	th_cluster *c = th_cluster_start(2, &o);
	PGconn *co = th_connect(th_coord(c));
	th_run(co, "CREATE STREAM s (k integer, v integer)");
	th_run(co, "CREATE CONTINUOUS VIEW v WITH (num_shards = 4) AS SELECT k, count(*), sum(v) "
		   "FROM s GROUP BY k");
	th_run(co, "CREATE CONTINUOUS VIEW keep WITH (num_shards = 2) AS SELECT k, count(*) FROM s "
		   "GROUP BY k");
	th_run(co, "INSERT INTO s VALUES (1, 10), (2, 20), (3, 30), (4, 40), (5, 50), (6, 60)");
	th_node *w1 = th_worker(c, 1);
	/* the periodic checkpoint writes w1's shards to snapshots; a clean stop writes the rest */
	uint64_t old_v = (uint64_t)th_query_int(co, "SELECT id FROM pipeline_cluster.views WHERE "
						    "name = 'v'");
	th_kill_node(c, w1, SIGTERM);
	cr_assert_gt(snapshot_files(w1, old_v), 0, "w1 wrote no snapshot of v");

	th_run(co, "DROP CONTINUOUS VIEW v");
	th_run(co, "CREATE CONTINUOUS VIEW v WITH (num_shards = 3) AS SELECT k, max(v) FROM s "
		   "GROUP BY k");
	th_run(co, "CREATE CONTINUOUS VIEW added AS SELECT v, count(*) FROM s GROUP BY v");
	th_restart_node(c, w1);
	up_ctx u = {c, 2};
	cr_assert(th_wait_until(workers_up, &u, 15000), "w1 did not come back up");
	char *want = views_of(th_coord(c));
	cr_assert(want && strstr(want, "added:") && strstr(want, "v:3:"), "coordinator: %s", want);
	views_ctx vc = {c, 1, want};
	cr_assert(th_wait_until(views_are, &vc, 20000), "w1 does not have the new views: %s", want);
	free(want);

	/* placed only on w2 while w1 was down: w1 ingests into them and reads them at once */
	PGconn *c1 = th_connect(w1);
	th_run(c1, "INSERT INTO s VALUES (1, 5), (7, 70)");
	cr_assert_eq(th_query_int(c1, "SELECT count(*) FROM v"), 2, "old groups in the new v");
	cr_assert_eq(th_query_int(c1, "SELECT max FROM v WHERE k = 7"), 70);
	cr_assert_eq(th_query_int(c1, "SELECT sum(count) FROM keep"), 8);
	cr_assert_eq(th_query_int(c1, "SELECT count(*) FROM added"), 2);
	cr_assert_eq(th_query_int(co, "SELECT sum(count) FROM keep"), 8);

	/* the dropped view's snapshots go at the next checkpoint */
	snaps_ctx sc = {w1, old_v};
	cr_assert(th_wait_until(no_snapshots_of, &sc, 10000),
		  "%d snapshots of the dropped view are still there", snapshot_files(w1, old_v));
	cr_assert_gt(snapshot_files(w1, 0), 0, "the other views' snapshots went too");
	PQfinish(c1);
	PQfinish(co);
	th_cluster_stop(c);
}
