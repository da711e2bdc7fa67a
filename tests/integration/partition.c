/*
 * partition.c - a worker cut off from the network and healed (DESIGN §5, §7, §8, issue 4).
 *
 * The test makes its own small network: a namespace and a veth pair (host side
 * 10.211.X.1/24, namespace side 10.211.X.2/24, X from the test's pid), runs the coordinator
 * and w1, w2 in the root namespace on the host-side address and w3 inside the namespace. It
 * ingests, cuts w3 off by taking its side of the veth down (the process keeps running, it
 * just cannot reach anyone: a partition, not a crash), and checks that the coordinator marks
 * it down and that writes and reads (primary_only = off) go on at the other nodes, that a
 * primary of w3 gets its writes rerouted as hints; then heals the link and checks that w3 is
 * up again, the hints are handed off, every shard balanced, replication caught up, and every
 * statement and every copy of every view exact against a PostgreSQL oracle.
 *
 * It needs root and ip(8); otherwise it is skipped. The namespace and the veth pair are
 * removed by the .fini fixture even when the test fails.
 */
#include "faults.h"
#include "harness.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* The network this test made, for the .fini fixture (one test at a time per process). */
static struct {
	bool made;
	char ip[32];
	char ns[32];
	char host_if[16];
	char ns_if[16];
	char host_addr[32];
	char ns_addr[32];
	bool run_netns_made; /* /run/netns did not exist before: ip netns add made (and mounted) it
			      */
} net;

static const char *ip_path(void)
{
	if (access("/usr/sbin/ip", X_OK) == 0)
		return "/usr/sbin/ip";
	if (access("/sbin/ip", X_OK) == 0)
		return "/sbin/ip";
	if (access("/usr/bin/ip", X_OK) == 0)
		return "/usr/bin/ip";
	return NULL;
}

/* Run ip with args (NULL-ended); in the namespace when in_ns. Returns true on exit 0. */
static bool ip_run(bool in_ns, const char *const args[], bool quiet)
{
	const char *argv[24];
	int n = 0;
	argv[n++] = net.ip;
	if (in_ns) {
		argv[n++] = "netns";
		argv[n++] = "exec";
		argv[n++] = net.ns;
		argv[n++] = net.ip;
	}
	for (int i = 0; args[i] && n < 23; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	char *err = NULL;
	int st = th_run_process((char *const *)argv, NULL, NULL, &err, 10000);
	bool ok = st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
	if (!ok && !quiet) {
		fprintf(stderr, "partition: `%s", net.ip);
		for (int i = 1; argv[i]; i++)
			fprintf(stderr, " %s", argv[i]);
		fprintf(stderr, "` failed (status %d): %s\n", st, err ? err : "");
	}
	free(err);
	return ok;
}

#define IP(...) ip_run(false, (const char *const[]){__VA_ARGS__, NULL}, false)
#define IP_NS(...) ip_run(true, (const char *const[]){__VA_ARGS__, NULL}, false)

static void net_cleanup(void)
{
	if (!net.made)
		return;
	/* deleting one end of the pair deletes both */
	ip_run(false, (const char *const[]){"link", "del", net.host_if, NULL}, true);
	ip_run(false, (const char *const[]){"netns", "del", net.ns, NULL}, true);
	net.made = false;
	/* leave the machine as we found it: ip netns add mounts /run/netns on itself */
	if (net.run_netns_made && rmdir("/run/netns") != 0) {
		umount2("/run/netns", MNT_DETACH);
		rmdir("/run/netns");
	}
}

static void partition_fini(void)
{
	th_fini(); /* the nodes first: w3 lives in the namespace */
	net_cleanup();
}

/* Make the namespace and the veth pair; false (with the reason printed) if not possible. */
static bool net_make(void)
{
	const char *ip = ip_path();
	if (!ip)
		return false;
	int pid = (int)getpid();
	snprintf(net.ip, sizeof net.ip, "%s", ip);
	snprintf(net.ns, sizeof net.ns, "tally-part-%d", pid);
	snprintf(net.host_if, sizeof net.host_if, "tpt%dh", pid % 10000000);
	snprintf(net.ns_if, sizeof net.ns_if, "tpt%dn", pid % 10000000);
	int x = 100 + pid % 100;
	snprintf(net.host_addr, sizeof net.host_addr, "10.211.%d.1", x);
	snprintf(net.ns_addr, sizeof net.ns_addr, "10.211.%d.2", x);
	char host_cidr[40], ns_cidr[40];
	snprintf(host_cidr, sizeof host_cidr, "%s/24", net.host_addr);
	snprintf(ns_cidr, sizeof ns_cidr, "%s/24", net.ns_addr);
	struct stat sb;
	net.run_netns_made = stat("/run/netns", &sb) != 0;
	if (!IP("netns", "add", net.ns))
		return false;
	net.made = true;
	return IP("link", "add", net.host_if, "type", "veth", "peer", "name", net.ns_if) &&
	       IP("link", "set", net.ns_if, "netns", net.ns) &&
	       IP("addr", "add", host_cidr, "dev", net.host_if) &&
	       IP("link", "set", net.host_if, "up") &&
	       IP_NS("addr", "add", ns_cidr, "dev", net.ns_if) &&
	       IP_NS("link", "set", net.ns_if, "up") && IP_NS("link", "set", "lo", "up");
}

typedef struct state_ctx {
	th_cluster *c;
	const char *name;
	const char *want;
} state_ctx;

static bool node_in_state(void *arg)
{
	state_ctx *x = arg;
	PGconn *conn = th_try_connect(th_coord(x->c));
	if (!conn)
		return false;
	PGresult *r = PQexec(conn, "SELECT name, state FROM pipeline_cluster.nodes");
	bool ok = false;
	for (int i = 0; PQresultStatus(r) == PGRES_TUPLES_OK && i < PQntuples(r); i++)
		ok = ok || (strcmp(PQgetvalue(r, i, 0), x->name) == 0 &&
			    strcmp(PQgetvalue(r, i, 1), x->want) == 0);
	PQclear(r);
	PQfinish(conn);
	return ok;
}

typedef struct hints_ctx {
	th_cluster *c;
	th_faults *f;
	int held;
} hints_ctx;

/* Does the coordinator list a hint of one of the engine's views? */
static bool some_hint(void *arg)
{
	hints_ctx *x = arg;
	PGconn *conn = th_try_connect(th_coord(x->c));
	if (!conn)
		return false;
	PGresult *r = PQexec(conn, "SELECT continuous_view FROM pipeline_cluster.hints");
	x->held = 0;
	for (int i = 0; PQresultStatus(r) == PGRES_TUPLES_OK && i < PQntuples(r); i++)
		for (int v = 0; v < 3; v++)
			x->held += strcmp(PQgetvalue(r, i, 0), th_faults_view(x->f, v)) == 0;
	PQclear(r);
	PQfinish(conn);
	return x->held > 0;
}

/* Is w3 the primary of a shard of a read_optimized view of the engine? */
static bool w3_has_primary(PGconn *co, th_faults *f)
{
	PGresult *r = th_exec_ok(co, "SELECT continuous_view, owner, shard_type, sharding_policy "
				     "FROM pipeline_cluster.shards");
	bool yes = false;
	for (int i = 0; i < PQntuples(r); i++)
		for (int v = 0; v < 3; v++)
			yes = yes || (strcmp(PQgetvalue(r, i, 0), th_faults_view(f, v)) == 0 &&
				      strcmp(PQgetvalue(r, i, 1), "w3") == 0 &&
				      strcmp(PQgetvalue(r, i, 2), "primary") == 0 &&
				      strcmp(PQgetvalue(r, i, 3), "read_optimized") == 0);
	PQclear(r);
	return yes;
}

Test(partition, worker_cut_off_then_healed_exact, .fini = partition_fini, .timeout = 120)
{
	if (geteuid() != 0)
		cr_skip_test("needs root for network namespaces");
	if (!ip_path())
		cr_skip_test("ip(8) is not installed");
	if (!net_make()) {
		/* e.g. a chroot or container that cannot mount or enter namespaces: the reason
		 * was printed above */
		net_cleanup();
		cr_skip_test("this machine cannot make the network namespace %s and veth %s/%s",
			     net.ns, net.host_if, net.ns_if);
	}

	th_opts opts = {.sets = {"pipeline_cluster.failure_timeout=600ms",
				 "pipeline_cluster.heartbeat_interval=100ms", NULL}};
	for (int i = 0; i <= 2; i++)
		opts.hosts[i] = net.host_addr;
	opts.hosts[3] = net.ns_addr;
	opts.netns[3] = net.ns;
	th_oracle *o = th_oracle_start();
	PGconn *oc = th_oracle_connect(o);
	th_cluster *c = th_cluster_start(3, &opts);
	th_node *w3 = th_worker(c, 3);
	cr_assert_str_eq(w3->host, net.ns_addr);
	th_faults *f = th_faults_alloc_replicas(c, oc, 1);
	PGconn *co = th_connect(th_coord(c));
	PGconn *c3 = th_connect(w3);
	cr_assert_eq(th_faults_ingest(f, co, 0, 10), 10, "statements at the coordinator");
	cr_assert_eq(th_faults_ingest(f, c3, 3, 10), 10, "statements at w3 in the namespace");
	PQfinish(c3);
	cr_assert(th_faults_settle(f, 60000), "cluster did not settle before the partition");
	th_faults_summary s = {0};
	th_faults_check(f, &s);
	th_faults_assert_clean(&s, "before the partition", true);
	bool w3_primary = w3_has_primary(co, f);

	/* cut: w3 keeps running, unreachable */
	int64_t t0 = tally_mono_us();
	cr_assert(IP_NS("link", "set", net.ns_if, "down"), "could not take the link down");
	state_ctx st = {.c = c, .name = "w3", .want = "down"};
	cr_assert(th_wait_until(node_in_state, &st, 15000),
		  "w3 not marked down 15 s after the cut");
	fprintf(stderr, "partition: w3 marked down %.0f ms after the cut\n",
		(double)(tally_mono_us() - t0) / 1000.0);

	/* writes and reads go on at the other nodes */
	th_node *others[3] = {th_coord(c), th_worker(c, 1), th_worker(c, 2)};
	for (int i = 0; i < 3; i++) {
		PGconn *wc = th_connect(others[i]);
		th_run(wc, "SET pipeline_cluster.insert_level = 'sync_receive'");
		th_run(wc, "SET pipeline_cluster.primary_only = off");
		int idx = (int)(others[i] - c->nodes);
		cr_assert_eq(th_faults_ingest(f, wc, idx, 15), 15, "writes at %s during the cut",
			     others[i]->name);
		for (int v = 0; v < 3; v++) {
			char sql[96];
			snprintf(sql, sizeof sql, "SELECT * FROM %s", th_faults_view(f, v));
			PGresult *r = th_exec_ok(wc, sql);
			cr_assert_gt(PQntuples(r), 0, "%s at %s during the cut: no rows", sql,
				     others[i]->name);
			PQclear(r);
		}
		PQfinish(wc);
	}
	hints_ctx hx = {.c = c, .f = f};
	if (w3_primary)
		cr_assert(th_wait_until(some_hint, &hx, 15000),
			  "w3 holds primaries but no hints appeared for its shards");

	/* heal: w3 up again, hints handed off, balanced, caught up, exact */
	t0 = tally_mono_us();
	cr_assert(IP_NS("link", "set", net.ns_if, "up"), "could not take the link up");
	st.want = "up";
	cr_assert(th_wait_until(node_in_state, &st, 30000), "w3 not up 30 s after healing");
	fprintf(stderr, "partition: w3 up again %.0f ms after healing (%d hints held before)\n",
		(double)(tally_mono_us() - t0) / 1000.0, hx.held);
	cr_assert(th_faults_settle(f, 60000),
		  "cluster did not settle (hints, lag, outboxes) after healing");
	th_faults_check(f, &s);
	th_faults_assert_clean(&s, "after healing", true);
	cr_assert_eq(s.stmts_acked, 10 + 10 + 45, "acknowledged statements");
	PQfinish(co);
	th_faults_free(f);
	PQfinish(oc);
	th_cluster_stop(c);
	th_oracle_stop(o);
	net_cleanup();
}
