/* main.c - tally-worker: flags, then the worker runtime until SIGTERM/SIGINT. */
#include "worker.h"

#include <stdio.h>

static const char usage[] =
    "usage: tally-worker --name NAME --dir DIR --coordinator tcp://HOST:PORT\n"
    "                    [--host 127.0.0.1] [--port SQLPORT] [--data-port PORT]\n"
    "                    [--set name=value]... [--log-level debug|info|warning|error]\n"
    "A tally data node: holds shard copies, ingests and answers SQL (PostgreSQL protocol).\n"
    "Port 0 (the default) picks a free port; DIR/ready names the ports once registered.\n";

int main(int argc, char **argv)
{
	tally_node_init_process();
	tally_node_config cfg;
	memset(&cfg, 0, sizeof cfg);
	cfg.role = TALLY_ROLE_WORKER;
	tally_strlcpy(cfg.host, "127.0.0.1", sizeof cfg.host);
	cfg.rpc_threads = 32; /* applies wait for the log (and sync replicas): many in flight pay */
	tally_settings_defaults(&cfg.defaults);
	int rc = tally_node_parse_args(argc, argv, &cfg, usage);
	if (rc)
		return rc;
	if (!cfg.name[0] || !cfg.coordinator_addr[0]) {
		fprintf(stderr, "tally-worker: --name and --coordinator are required\n%s", usage);
		return 2;
	}
	tally_log_set_name(cfg.name);
	tally_worker *w;
	if (tally_worker_start(&w, &cfg) != 0)
		return 1;
	tally_node_wait_signal();
	tally_worker_stop(w);
	tally_log_info("stopped");
	return 0;
}
