/*
 * harness_test.c - self test of the integration-test harness: process start/ready/stop
 * mechanics with fake node scripts, and the PostgreSQL oracle plus result comparison.
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A fake node: parses --dir/--name, writes DIR/ready atomically, removes it and exits 0 on
 * SIGTERM (exit 3 if --set fail=1 was given, to check that stop reports it). */
static const char fake_node[] =
    "#!/bin/sh\n"
    "dir=; name=coordinator; code=0\n"
    "while [ $# -gt 0 ]; do case \"$1\" in --dir) dir=$2; shift;; --name) name=$2; shift;;\n"
    "  --set) [ \"$2\" = fail=1 ] && code=3; shift;; esac; shift; done\n"
    "trap 'rm -f \"$dir/ready\"; exit $code' TERM\n"
    "mkdir -p \"$dir\"\n"
    "printf 'pid=%s\\nname=%s\\nsql_port=%s\\ndata_addr=tcp://127.0.0.1:%s\\n' $$ \"$name\" 5999 "
    "6999 "
    "> \"$dir/ready.tmp\" && mv \"$dir/ready.tmp\" \"$dir/ready\"\n"
    "while :; do sleep 1 & wait $!; done\n";

static char fake_dir[64];

static void make_fakes(void)
{
	snprintf(fake_dir, sizeof fake_dir, "/tmp/tally-fake-XXXXXX");
	cr_assert(mkdtemp(fake_dir));
	const char *names[] = {"tally-coordinator", "tally-worker"};
	for (int i = 0; i < 2; i++) {
		char p[128];
		snprintf(p, sizeof p, "%s/%s", fake_dir, names[i]);
		FILE *f = fopen(p, "w");
		cr_assert(f);
		fputs(fake_node, f);
		fclose(f);
		chmod(p, 0755);
	}
}

static void fini(void)
{
	th_fini();
	if (fake_dir[0])
		th_rmtree(fake_dir);
}

Test(harness, fake_cluster_starts_and_stops_cleanly, .init = make_fakes, .fini = fini,
     .timeout = 60)
{
	th_opts o = {.bin_dir = fake_dir, .no_wait_up = true};
	th_cluster *c = th_cluster_start(3, &o);
	cr_assert_eq(c->nnodes, 4);
	for (int i = 0; i < c->nnodes; i++) {
		cr_assert(th_node_alive(&c->nodes[i]));
		cr_assert_eq(c->nodes[i].sql_port, 5999);
		cr_assert_eq(c->nodes[i].data_port, 6999);
	}
	cr_assert_str_eq(th_worker(c, 2)->name, "w2");
	char dir[512];
	snprintf(dir, sizeof dir, "%s", c->dir);
	th_kill_node(c, th_worker(c, 1), SIGKILL);
	cr_assert(!th_node_alive(th_worker(c, 1)));
	th_restart_node(c, th_worker(c, 1));
	cr_assert(th_node_alive(th_worker(c, 1)));
	th_kill_node(c, th_worker(c, 2), SIGSTOP);
	th_cluster_stop(c);
	cr_assert(access(dir, F_OK) != 0, "cluster dir removed after a clean stop");
}

Test(harness, stop_reports_bad_exit_status, .init = make_fakes, .fini = fini, .timeout = 60)
{
	th_opts o = {.bin_dir = fake_dir, .no_wait_up = true, .sets = {"fail=1"}};
	th_cluster *c = th_cluster_start(1, &o);
	char dir[512];
	snprintf(dir, sizeof dir, "%s", c->dir);
	cr_assert_not(th_cluster_stop_quiet(c));
	cr_assert(access(dir, F_OK) == 0, "dir kept on failure");
	th_rmtree(dir);
}

Test(harness, process_capture, .timeout = 30)
{
	char *out = NULL, *err = NULL;
	char *const argv[] = {"/bin/sh", "-c", "cat; echo oops >&2; exit 4", NULL};
	int st = th_run_process(argv, "hello\n", &out, &err, 10000);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 4);
	cr_assert_str_eq(out, "hello\n");
	cr_assert_str_eq(err, "oops\n");
	free(out);
	free(err);
}

static bool flag_after_three(void *ctx)
{
	int *n = ctx;
	return ++*n >= 3;
}

Test(harness, wait_until_polls, .timeout = 30)
{
	int n = 0;
	cr_assert(th_wait_until(flag_after_three, &n, 5000));
	cr_assert_eq(n, 3);
}

Test(harness, oracle_runs_and_compare_detects_differences, .fini = th_fini, .timeout = 120)
{
	th_oracle *o = th_oracle_start();
	PGconn *a = th_oracle_connect(o);
	PGconn *b = th_oracle_connect(o);
	char *tz = th_query_str(a, "SHOW TimeZone");
	cr_assert_str_eq(tz, "UTC");
	free(tz);
	th_run(a, "CREATE TABLE t (k int, g text, v float8)");
	const char *rows = "1\ta\t0.1\n2\tb\t0.2\n2\t\\N\t-1e300\n";
	th_copy_ok(a, "COPY t FROM STDIN", rows, strlen(rows), 3);
	int keys[] = {0, 1};
	int n =
	    th_oracle_compare(a, b, "SELECT k, g, sum(v) FROM t GROUP BY k, g",
			      "SELECT k, g, sum(v) FROM t GROUP BY g, k ORDER BY 1 DESC", keys, 2);
	cr_assert_eq(n, 3);
	/* floats within 1e-9 relative are equal; a different row is not */
	PGresult *r1 = th_exec_ok(a, "SELECT 1::int AS k, 0.3::float8 AS v");
	PGresult *r2 = th_exec_ok(b, "SELECT 1::int AS k, (0.1::float8 + 0.2::float8) AS v");
	cr_assert_eq(th_compare_results(r1, r2, keys, 1, "float tolerance"), 0);
	PGresult *r3 = th_exec_ok(b, "SELECT 1::int AS k, 0.30001::float8 AS v");
	cr_assert_gt(th_compare_results(r1, r3, keys, 1, "float mismatch"), 0);
	PGresult *r4 = th_exec_ok(b, "SELECT 1::int AS k, 0.3::numeric AS v");
	cr_assert_gt(th_compare_results(r1, r4, keys, 1, "type mismatch"), 0);
	PGresult *r5 = th_exec_ok(b, "SELECT 2::int AS k, 0.3::float8 AS v");
	cr_assert_gt(th_compare_results(r1, r5, keys, 1, "key mismatch"), 0);
	PQclear(r1);
	PQclear(r2);
	PQclear(r3);
	PQclear(r4);
	PQclear(r5);
	PQclear(th_exec_err(a, "SELECT * FROM nope", "42P01"));
	PQfinish(a);
	PQfinish(b);
	th_oracle_stop(o);
}
