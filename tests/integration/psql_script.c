/*
 * psql_script.c - runs tests/integration/script.sql through the real psql client
 * (`psql -X -v ON_ERROR_STOP=0 -A -f script.sql`) against the coordinator and then against a
 * worker, and compares psql's stdout with tests/integration/script.expected, which holds what
 * PostgreSQL semantics give for the same statements. The script drops what it creates, so it
 * runs twice on one cluster; its three deliberate errors must reach stderr.
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

static int count_substr(const char *s, const char *sub)
{
	int n = 0;
	for (const char *p = strstr(s, sub); p; p = strstr(p + 1, sub))
		n++;
	return n;
}

Test(psql_script, script_output_matches_expected, .fini = th_fini, .timeout = 120)
{
	char script[512], expected_path[512];
	th_source_path(script, sizeof script, "tests/integration/script.sql");
	th_source_path(expected_path, sizeof expected_path, "tests/integration/script.expected");
	char *expected = th_read_file(expected_path);
	cr_assert(expected != NULL, "cannot read %s", expected_path);

	/* the built-in primary_only (the script shows it); reads see the writes before them
	 * because the script's views have no replicas that could lag */
	th_opts o = {
	    .sets = {"pipeline_cluster.primary_only=off", "pipeline_cluster.num_replicas=0"}};
	th_cluster *c = th_cluster_start(2, &o);
	th_node *targets[] = {th_coord(c), th_worker(c, 1)};
	for (size_t t = 0; t < sizeof targets / sizeof targets[0]; t++) {
		const char *args[] = {"-v", "ON_ERROR_STOP=0", "-A", "-f", script, NULL};
		char *out = NULL, *err = NULL;
		int st = th_psql(targets[t], args, NULL, &out, &err, 60000);
		cr_assert(st != -1, "psql timed out at %s", targets[t]->name);
		cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "psql exit status 0x%x at %s: %s",
			  (unsigned)st, targets[t]->name, err);
		if (strcmp(out, expected) != 0) {
			char actual_path[600];
			snprintf(actual_path, sizeof actual_path, "%s/script.%s.out", c->dir,
				 targets[t]->name);
			FILE *f = fopen(actual_path, "w");
			if (f) {
				fputs(out, f);
				fclose(f);
			}
			char *diff = NULL;
			char *const dargs[] = {"/usr/bin/diff", "-u", expected_path, actual_path,
					       NULL};
			th_run_process(dargs, NULL, &diff, NULL, 10000);
			fprintf(stderr,
				"psql_script at %s: stdout differs from script.expected:\n%s\n"
				"stderr:\n%s\n",
				targets[t]->name, diff ? diff : "(no diff)", err);
			free(diff);
			c->failed = true; /* keep the dir with the actual output */
		}
		cr_assert_str_eq(out, expected, "psql output at %s (see the diff above)",
				 targets[t]->name);
		cr_assert_eq(count_substr(err, "ERROR:"), 3, "expected three errors at %s:\n%s",
			     targets[t]->name, err);
		cr_assert(strstr(err, "ps_nosuch") != NULL, "unknown view error: %s", err);
		free(out);
		free(err);
	}
	free(expected);
	th_cluster_stop(c);
}
