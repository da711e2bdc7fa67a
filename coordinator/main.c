/* main.c - tally-coordinator: flags, then the coordinator runtime until SIGTERM/SIGINT. */
#include "coordinator.h"

#include <stdio.h>

static const char usage[] =
    "usage: tally-coordinator --dir DIR [--host 127.0.0.1] [--port SQLPORT] [--data-port PORT]\n"
    "                         [--set name=value]... [--log-level debug|info|warning|error]\n"
    "The tally control plane and a SQL endpoint (PostgreSQL protocol, default port 6432).\n"
    "Port 0 picks a free port; DIR/ready names the ports once serving.\n";

int main(int argc, char **argv)
{
	tally_node_init_process();
	tally_node_config cfg;
	memset(&cfg, 0, sizeof cfg);
	cfg.role = TALLY_ROLE_COORDINATOR;
	tally_strlcpy(cfg.name, "coordinator", sizeof cfg.name);
	tally_strlcpy(cfg.host, "127.0.0.1", sizeof cfg.host);
	cfg.sql_port = 6432;
	cfg.rpc_threads = 32; /* map pushes may wait on a slow worker; heartbeats must not */
	tally_settings_defaults(&cfg.defaults);
	int rc = tally_node_parse_args(argc, argv, &cfg, usage);
	if (rc)
		return rc;
	tally_log_set_name("coordinator");
	tally_coord *c;
	if (tally_coord_start(&c, &cfg) != 0)
		return 1;
	tally_node_wait_signal();
	tally_coord_stop(c);
	tally_log_info("stopped");
	return 0;
}
