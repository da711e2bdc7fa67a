/*
 * oracle.c - a throw-away PostgreSQL 15 server for computing expected results.
 *
 * initdb into a temp dir (C locale, UTF8, trust auth), then `postgres` listening only on a
 * unix socket in that dir, fsync off. PostgreSQL refuses to run as root, so under root both
 * run as user postgres (the directory is chown'ed to it). Stopped with SIGINT (fast
 * shutdown). The server dies with the test process if the test aborts.
 */
#include "harness.h"
#include "harness_int.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define TH_MAX_ORACLES 4

/* Oracles started and not yet stopped; the test's main thread only. */
static th_oracle *live_oracles[TH_MAX_ORACLES];

static void pg_bindir(char *out, size_t outsz)
{
	const char *candidates[] = {"/usr/lib/postgresql/15/bin", NULL};
	for (int i = 0; candidates[i]; i++) {
		char p[512];
		snprintf(p, sizeof p, "%s/postgres", candidates[i]);
		if (access(p, X_OK) == 0) {
			snprintf(out, outsz, "%s", candidates[i]);
			return;
		}
	}
	FILE *f = popen("pg_config --bindir 2>/dev/null", "r");
	out[0] = 0;
	if (f) {
		if (fgets(out, (int)outsz, f))
			out[strcspn(out, "\n")] = 0;
		pclose(f);
	}
}

static void oracle_fail(th_oracle *o, const char *what)
{
	o->failed = true;
	char log[600];
	snprintf(log, sizeof log, "%s/postgres.log", o->dir);
	th_print_tail(log, 20, "[oracle] ");
	cr_assert_fail("oracle: %s (dir kept: %s)", what, o->dir);
}

th_oracle *th_oracle_start(void)
{
	th_oracle *o = tally_xcalloc(1, sizeof *o);
	char bindir[512], bin[600], data[600], log[600];
	pg_bindir(bindir, sizeof bindir);
	cr_assert(bindir[0], "PostgreSQL server binaries not found");
	snprintf(o->dir, sizeof o->dir, "/tmp/tally-oracle-XXXXXX");
	cr_assert(mkdtemp(o->dir) != NULL, "mkdtemp: %s", strerror(errno));
	bool as_pg = geteuid() == 0;
	if (as_pg) {
		uid_t uid;
		gid_t gid;
		cr_assert(th_postgres_user(&uid, &gid), "no user postgres to run the oracle as");
		cr_assert(chown(o->dir, uid, gid) == 0, "chown %s: %s", o->dir, strerror(errno));
	}
	snprintf(data, sizeof data, "%s/data", o->dir);
	snprintf(log, sizeof log, "%s/postgres.log", o->dir);
	snprintf(bin, sizeof bin, "%s/initdb", bindir);
	{
		const char *argv[] = {bin,  "-D",	data,		"--locale=C", "-E", "UTF8",
				      "-U", "postgres", "--auth=trust", "--no-sync",  NULL};
		pid_t pid = th_spawn(bin, (char *const *)argv, log, as_pg);
		cr_assert(pid > 0, "cannot start initdb");
		int st = 0;
		if (!th_wait_pid(pid, &st, 120000)) {
			kill(pid, SIGKILL);
			th_wait_pid(pid, &st, 5000);
			oracle_fail(o, "initdb timed out");
		}
		if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0))
			oracle_fail(o, "initdb failed");
	}
	/* The socket lives in our own directory, so any port number is free there. */
	o->port = 5432;
	snprintf(bin, sizeof bin, "%s/postgres", bindir);
	char port[16];
	snprintf(port, sizeof port, "%d", o->port);
	const char *argv[] = {bin,
			      "-D",
			      data,
			      "-k",
			      o->dir,
			      "-p",
			      port,
			      "-c",
			      "listen_addresses=",
			      "-c",
			      "fsync=off",
			      "-c",
			      "synchronous_commit=off",
			      "-c",
			      "full_page_writes=off",
			      "-c",
			      "shared_buffers=64MB",
			      "-c",
			      "max_connections=20",
			      NULL};
	o->pid = th_spawn(bin, (char *const *)argv, log, as_pg);
	cr_assert(o->pid > 0, "cannot start postgres");
	for (int i = 0; i < TH_MAX_ORACLES; i++)
		if (!live_oracles[i]) {
			live_oracles[i] = o;
			break;
		}
	/* Poll until it accepts connections (deadline 60 s). */
	for (int waited = 0;; waited += 50) {
		PGconn *c = NULL;
		char ci[700];
		snprintf(ci, sizeof ci, "host=%s port=%d user=postgres dbname=postgres", o->dir,
			 o->port);
		c = PQconnectdb(ci);
		bool ok = PQstatus(c) == CONNECTION_OK;
		PQfinish(c);
		if (ok)
			break;
		int st;
		if (waitpid(o->pid, &st, WNOHANG) == o->pid) {
			o->pid = 0;
			oracle_fail(o, "postgres exited at start");
		}
		if (waited > 60000)
			oracle_fail(o, "postgres not accepting connections after 60 s");
		th_poll_pause(50);
	}
	return o;
}

PGconn *th_oracle_connect(const th_oracle *o)
{
	char ci[700];
	snprintf(ci, sizeof ci,
		 "host=%s port=%d user=postgres dbname=postgres options='-c TimeZone=UTC'", o->dir,
		 o->port);
	PGconn *c = PQconnectdb(ci);
	if (PQstatus(c) != CONNECTION_OK) {
		char msg[512];
		snprintf(msg, sizeof msg, "%s", PQerrorMessage(c));
		PQfinish(c);
		cr_assert_fail("cannot connect to the oracle: %s", msg);
	}
	return c;
}

static bool oracle_stop(th_oracle *o)
{
	bool ok = !o->failed;
	if (o->pid > 0) {
		kill(o->pid, SIGINT);
		int st = 0;
		if (!th_wait_pid(o->pid, &st, 30000)) {
			kill(o->pid, SIGKILL);
			th_wait_pid(o->pid, &st, 5000);
			ok = false;
			fprintf(stderr, "harness: oracle did not stop within 30 s\n");
		}
		o->pid = 0;
	}
	for (int i = 0; i < TH_MAX_ORACLES; i++)
		if (live_oracles[i] == o)
			live_oracles[i] = NULL;
	if (ok)
		th_rmtree(o->dir);
	else
		fprintf(stderr, "harness: oracle dir kept: %s\n", o->dir);
	return ok;
}

void th_oracle_stop(th_oracle *o)
{
	if (!o)
		return;
	bool ok = oracle_stop(o);
	free(o);
	cr_assert(ok, "oracle did not stop cleanly");
}

bool th_oracle_stop_all_quiet(void)
{
	bool ok = true;
	for (int i = 0; i < TH_MAX_ORACLES; i++)
		if (live_oracles[i]) {
			th_oracle *o = live_oracles[i];
			ok = oracle_stop(o) && ok;
			free(o);
		}
	return ok;
}
