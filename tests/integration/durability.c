/*
 * durability.c - acknowledged rows survive kill -9 (DESIGN §5, §7, §9): while four clients
 * ingest through every node, random nodes (workers, the coordinator, the node a client is
 * connected to) are killed with SIGKILL and restarted; after the cluster settles every
 * acknowledged statement must be in the views exactly once, every failed statement in full
 * or not at all, and every view must equal PostgreSQL's GROUP BY over the same rows at every
 * node. Also: a failed statement is all-or-nothing in both directions (a bad row applies
 * nothing; a sync_commit statement that timed out is applied in full later), and a worker
 * keeps its state across a clean stop and a kill -9.
 *
 * The random test prints its seed; TALLY_FAULT_SEED=<seed> replays the same choices (the
 * timing of the processes still varies). The soak test runs only when TALLY_FAULT_MINUTES is
 * set (tools/fault-soak.sh): the same engine for that many minutes, checking every
 * TALLY_FAULT_ROUNDS rounds (default 20), victims down for up to TALLY_FAULT_MAX_DOWN_MS
 * (default 1000; more than the 2 s failure_timeout makes the coordinator mark them down).
 */
#include "faults.h"
#include "harness.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static void run_random(double minutes, int rounds, int max_down_ms)
{
	th_oracle *o = th_oracle_start();
	PGconn *oc = th_oracle_connect(o);
	th_cluster *c = th_cluster_start(3, NULL);
	th_faults *f = th_faults_alloc(c, oc);
	th_faults_opts opts = {.rounds = rounds,
			       .minutes = minutes,
			       .seed = th_faults_seed(),
			       .clients = 4,
			       .max_down_ms = max_down_ms};
	fprintf(stderr, "durability: seed %llu (TALLY_FAULT_SEED=%llu replays it)\n",
		(unsigned long long)opts.seed, (unsigned long long)opts.seed);
	th_faults_summary s;
	th_faults_run(f, &opts, &s);
	cr_assert_geq(s.rounds, 10, "only %d kill points", s.rounds);
	cr_assert_gt(s.faults_worker + s.faults_origin, 0, "no worker was killed");
	cr_assert_gt(s.faults_coordinator, 0, "the coordinator was never killed");
	cr_assert_gt(s.faults_origin, 0, "no origin node was killed under its clients");
	cr_assert_gt(s.stmts_acked, 0, "nothing was acknowledged");
	th_faults_assert_clean(&s, "after the fault run", false);
	th_faults_free(f);
	PQfinish(oc);
	th_cluster_stop(c);
	th_oracle_stop(o);
}

Test(durability, kill9_random_points_exact_against_oracle, .fini = th_fini, .timeout = 420)
{
	run_random(0, 12, 1000);
}

/* The long run of tools/fault-soak.sh; skipped unless TALLY_FAULT_MINUTES is set. The
 * timeout is a day, the most the tool accepts. */
Test(durability, soak, .fini = th_fini, .timeout = 90000)
{
	const char *m = getenv("TALLY_FAULT_MINUTES");
	if (!m || !*m)
		cr_skip_test("TALLY_FAULT_MINUTES is not set (tools/fault-soak.sh sets it)");
	double minutes = atof(m);
	cr_assert(minutes > 0 && minutes <= 1440, "TALLY_FAULT_MINUTES=%s out of (0, 1440]", m);
	const char *r = getenv("TALLY_FAULT_ROUNDS");
	int rounds = r && *r ? atoi(r) : 20;
	cr_assert(rounds >= 1, "TALLY_FAULT_ROUNDS=%s", r);
	const char *d = getenv("TALLY_FAULT_MAX_DOWN_MS");
	int max_down_ms = d && *d ? atoi(d) : 1000;
	cr_assert(max_down_ms >= 1 && max_down_ms <= 600000, "TALLY_FAULT_MAX_DOWN_MS=%s", d);
	run_random(minutes, rounds < 10 ? 10 : rounds, max_down_ms);
}

/* A statement id whose statement has at least min_rows rows (ids skipped are never sent). */
static uint64_t stmt_with_rows(th_faults *f, int min_rows)
{
	for (;;) {
		uint64_t stmt = th_faults_next_stmt(f);
		if (th_faults_stmt_rows(stmt, NULL) >= min_rows)
			return stmt;
	}
}

Test(durability, failed_statement_all_or_nothing, .fini = th_fini, .timeout = 180)
{
	th_oracle *o = th_oracle_start();
	PGconn *oc = th_oracle_connect(o);
	th_cluster *c = th_cluster_start(3, NULL);
	th_faults *f = th_faults_alloc(c, oc);
	th_faults_summary s = {0};
	PGconn *w1 = th_connect(th_worker(c, 1));
	cr_assert_eq(th_faults_ingest(f, w1, 1, 6), 6, "good statements before");

	/* (a) a bad value in row 250 fails the statement, INSERT and COPY alike: nothing of
	 * it is applied */
	tally_buf b = {0};
	uint64_t bad_insert = stmt_with_rows(f, 260);
	th_faults_stmt_text(bad_insert, false, 250, &b);
	PQclear(th_exec_err(w1, (const char *)b.data, "22P02"));
	th_faults_record(f, bad_insert, TH_FAULTS_FAILED, 1);
	uint64_t bad_copy = stmt_with_rows(f, 260);
	th_faults_stmt_text(bad_copy, true, 250, &b);
	PGresult *r = th_copy_in(w1, th_faults_copy_sql(), (const char *)b.data, b.len, 0);
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR, "COPY with a bad row succeeded");
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_SQLSTATE), "22P02");
	PQclear(r);
	th_faults_record(f, bad_copy, TH_FAULTS_FAILED, 1);
	cr_assert_eq(th_faults_ingest(f, w1, 1, 2), 2, "good statements after");
	cr_assert(th_faults_settle(f, 60000), "cluster did not settle");
	th_faults_check(f, &s);
	th_faults_assert_clean(&s, "after the bad-row statements", true);
	cr_assert_eq(th_faults_outcome_of(f, bad_insert), TH_FAULTS_FAILED_ABSENT,
		     "INSERT with a bad row was (partly) applied");
	cr_assert_eq(th_faults_outcome_of(f, bad_copy), TH_FAULTS_FAILED_ABSENT,
		     "COPY with a bad row was (partly) applied");

	/* (b) sync_commit with a stopped primary: the statement fails after rpc_timeout, but
	 * its batches stay in the outbox and are applied in full once the primary is back */
	th_run(w1, "SET pipeline_cluster.insert_level = 'sync_commit'");
	th_run(w1, "SET pipeline_cluster.rpc_timeout = '500ms'");
	th_node *w3 = th_worker(c, 3);
	th_kill_node(c, w3, SIGSTOP);
	uint64_t failed = 0;
	for (int i = 0; i < 20 && !failed; i++) {
		uint64_t stmt = th_faults_next_stmt(f);
		th_faults_stmt_text(stmt, i % 2 == 1, 0, &b);
		if (i % 2 == 1)
			r = th_copy_in(w1, th_faults_copy_sql(), (const char *)b.data, b.len, 0);
		else
			r = PQexec(w1, (const char *)b.data);
		bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
		if (!ok)
			fprintf(stderr, "durability: stmt %llu failed as expected: %s",
				(unsigned long long)stmt, PQresultErrorMessage(r));
		PQclear(r);
		th_faults_record(f, stmt, ok ? TH_FAULTS_ACKED : TH_FAULTS_FAILED, 1);
		if (!ok)
			failed = stmt;
	}
	th_kill_node(c, w3, SIGCONT);
	cr_assert(failed, "no sync_commit statement failed with w3 stopped");
	cr_assert_eq(PQstatus(w1), CONNECTION_OK, "the failed statement broke the connection");
	cr_assert(th_faults_settle(f, 60000), "cluster did not settle after SIGCONT");
	th_faults_check(f, &s);
	th_faults_assert_clean(&s, "after the sync_commit timeout", true);
	cr_assert_eq(th_faults_outcome_of(f, failed), TH_FAULTS_FAILED_APPLIED,
		     "sync_commit statement %llu that timed out was not applied in full later",
		     (unsigned long long)failed);

	tally_buf_free(&b);
	PQfinish(w1);
	th_faults_free(f);
	PQfinish(oc);
	th_cluster_stop(c);
	th_oracle_stop(o);
}

static void restart_and_check(th_cluster *c, th_faults *f, th_node *n, int sig,
			      th_faults_summary *s)
{
	th_kill_node(c, n, sig);
	if (sig == SIGTERM)
		cr_assert(WIFEXITED(n->exit_status) && WEXITSTATUS(n->exit_status) == 0,
			  "%s did not exit 0 on SIGTERM", n->name);
	th_restart_node(c, n);
	cr_assert(th_faults_wait_up(f, 30000), "%s did not come back up", n->name);
	cr_assert(th_faults_settle(f, 60000), "cluster did not settle after restarting %s",
		  n->name);
	th_faults_check(f, s);
	char when[64];
	snprintf(when, sizeof when, "after %s of %s", sig == SIGTERM ? "SIGTERM" : "SIGKILL",
		 n->name);
	th_faults_assert_clean(s, when, true);
}

Test(durability, worker_restart_keeps_state, .fini = th_fini, .timeout = 240)
{
	th_oracle *o = th_oracle_start();
	PGconn *oc = th_oracle_connect(o);
	th_cluster *c = th_cluster_start(3, NULL);
	th_faults *f = th_faults_alloc(c, oc);
	th_faults_summary s = {0};

	PGconn *co = th_connect(th_coord(c));
	PGconn *w2 = th_connect(th_worker(c, 2));
	cr_assert_eq(th_faults_ingest(f, co, 0, 30), 30);
	cr_assert_eq(th_faults_ingest(f, w2, 2, 30), 30);
	PQfinish(w2);
	cr_assert(th_faults_settle(f, 60000), "cluster did not settle");
	th_faults_check(f, &s);
	th_faults_assert_clean(&s, "before any restart", true);
	long acked = s.stmts_acked;

	/* a clean stop loses nothing */
	restart_and_check(c, f, th_worker(c, 1), SIGTERM, &s);
	cr_assert_eq(s.stmts_acked, acked);

	/* kill -9 right after acknowledged statements the victim itself received */
	PGconn *w3 = th_connect(th_worker(c, 3));
	cr_assert_eq(th_faults_ingest(f, w3, 3, 30), 30);
	cr_assert_eq(th_faults_ingest(f, co, 0, 10), 10);
	PQfinish(w3);
	restart_and_check(c, f, th_worker(c, 3), SIGKILL, &s);
	cr_assert_eq(s.stmts_acked, acked + 40);

	/* and a primary that was killed while others sent it data */
	w2 = th_connect(th_worker(c, 2));
	cr_assert_eq(th_faults_ingest(f, w2, 2, 20), 20);
	PQfinish(w2);
	restart_and_check(c, f, th_worker(c, 1), SIGKILL, &s);
	cr_assert_eq(s.stmts_acked, acked + 60);

	PQfinish(co);
	th_faults_free(f);
	PQfinish(oc);
	th_cluster_stop(c);
	th_oracle_stop(o);
}

/* The path of the first (lowest LSN) or last segment file in a node's log directory. */
static void segment_path(const th_node *n, bool last, char *out, size_t outsz)
{
	char dir[600];
	snprintf(dir, sizeof dir, "%s/wal", n->dir);
	DIR *d = opendir(dir);
	cr_assert(d, "no log directory %s", dir);
	char best[64] = "";
	struct dirent *de;
	while ((de = readdir(d))) {
		size_t l = strlen(de->d_name);
		if (l != 20 || strcmp(de->d_name + 16, ".wal") != 0)
			continue;
		if (!best[0] ||
		    (last ? strcmp(de->d_name, best) > 0 : strcmp(de->d_name, best) < 0))
			snprintf(best, sizeof best, "%s", de->d_name);
	}
	closedir(d);
	cr_assert(best[0], "no segment in %s", dir);
	snprintf(out, outsz, "%s/%s", dir, best);
}

static long file_size(const char *path)
{
	struct stat st;
	cr_assert_eq(stat(path, &st), 0, "stat %s", path);
	return (long)st.st_size;
}

static void flip_byte(const char *path, long off)
{
	int fd = open(path, O_RDWR);
	cr_assert_geq(fd, 0, "open %s", path);
	uint8_t b;
	cr_assert_eq(pread(fd, &b, 1, off), 1);
	b ^= 0x5A;
	cr_assert_eq(pwrite(fd, &b, 1, off), 1);
	close(fd);
}

/* A damaged log after kill -9: garbage after the last record is a torn tail, cut off with
 * nothing acknowledged lost; a flipped byte in the middle makes the worker refuse to start
 * (exit status 1, "write-ahead log is corrupt" naming the segment) instead of serving wrong
 * numbers; with the byte restored it starts and has everything. */
Test(durability, damaged_log_tail_cut_middle_refused, .fini = th_fini, .timeout = 240)
{
	th_oracle *o = th_oracle_start();
	PGconn *oc = th_oracle_connect(o);
	/* no checkpoint during the test: the log keeps every record */
	th_opts opts = {.sets = {"pipeline_cluster.checkpoint_interval=1h"}};
	th_cluster *c = th_cluster_start(2, &opts);
	th_faults *f = th_faults_alloc(c, oc);
	th_faults_summary s = {0};
	th_node *w1 = th_worker(c, 1);
	PGconn *conn = th_connect(th_worker(c, 2));
	cr_assert_eq(th_faults_ingest(f, conn, 2, 40), 40);
	cr_assert(th_faults_settle(f, 60000), "cluster did not settle");

	/* garbage after the last record */
	th_kill_node(c, w1, SIGKILL);
	char seg[700];
	segment_path(w1, true, seg, sizeof seg);
	long size = file_size(seg);
	cr_assert_gt(size, 1000, "the log of w1 holds too little (%ld bytes)", size);
	FILE *fp = fopen(seg, "ab");
	cr_assert(fp);
	for (int i = 0; i < 333; i++)
		fputc((i * 37 + 11) & 0xFF, fp);
	fclose(fp);
	th_restart_node(c, w1);
	cr_assert(th_faults_wait_up(f, 30000), "w1 did not come back after a garbage tail");
	cr_assert(th_faults_settle(f, 60000), "cluster did not settle");
	th_faults_check(f, &s);
	th_faults_assert_clean(&s, "after a garbage tail", true);
	char *logtxt = th_read_file(w1->log);
	cr_assert(logtxt && strstr(logtxt, "torn tail"), "the cut tail was not logged");
	free(logtxt);

	/* a flipped byte in the middle of the first segment */
	cr_assert_eq(th_faults_ingest(f, conn, 2, 20), 20);
	cr_assert(th_faults_settle(f, 60000), "cluster did not settle");
	th_kill_node(c, w1, SIGKILL);
	segment_path(w1, false, seg, sizeof seg);
	long off = 17 + 40; /* inside the first record's payload; more records follow */
	cr_assert_gt(file_size(seg), off + 1000);
	flip_byte(seg, off);
	char bin[600], port[16], dport[16];
	snprintf(bin, sizeof bin, "%s/tally-worker", c->bin_dir);
	snprintf(port, sizeof port, "%d", w1->sql_port);
	snprintf(dport, sizeof dport, "%d", w1->data_port);
	char *const argv[] = {bin,
			      "--name",
			      w1->name,
			      "--coordinator",
			      th_coord(c)->data_addr,
			      "--dir",
			      w1->dir,
			      "--host",
			      "127.0.0.1",
			      "--port",
			      port,
			      "--data-port",
			      dport,
			      NULL};
	char *err = NULL;
	int st = th_run_process(argv, NULL, NULL, &err, 30000);
	cr_assert(st != -1, "the worker with a corrupt log did not exit");
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 1, "exit status %d, stderr:\n%s", st,
		  err ? err : "");
	cr_assert(err && strstr(err, "write-ahead log is corrupt") && strstr(err, seg),
		  "no clear corruption report naming %s:\n%s", seg, err ? err : "");
	free(err);

	/* repaired, it starts and nothing is missing */
	flip_byte(seg, off);
	th_restart_node(c, w1);
	cr_assert(th_faults_wait_up(f, 30000), "w1 did not come back after the repair");
	cr_assert(th_faults_settle(f, 60000), "cluster did not settle");
	th_faults_check(f, &s);
	th_faults_assert_clean(&s, "after repairing the log", true);

	PQfinish(conn);
	th_faults_free(f);
	PQfinish(oc);
	th_cluster_stop(c);
	th_oracle_stop(o);
}
