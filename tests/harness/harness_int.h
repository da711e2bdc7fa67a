/*
 * harness_int.h - what the harness's own files share and tests do not need.
 */
#ifndef TALLY_TEST_HARNESS_INT_H
#define TALLY_TEST_HARNESS_INT_H

#include <stdbool.h>
#include "tally/core.h"
#include <sys/types.h>

/* fork + exec path with argv; stdin from /dev/null, stdout and stderr appended to log_path.
 * When as_postgres, the child switches to user postgres first. The child dies with us
 * (PR_SET_PDEATHSIG). Returns the pid or -1. */
pid_t th_spawn(const char *path, char *const argv[], const char *log_path, bool as_postgres);
/* uid/gid of the unprivileged user the oracle runs as (created if missing); false if none. */
bool th_postgres_user(uid_t *uid, gid_t *gid);
/* Stop every oracle still running (for th_fini); false if one failed. */
bool th_oracle_stop_all_quiet(void);
/* Sleep about ms milliseconds: only inside deadline-bound polling loops. */
void th_poll_pause(int ms);
/* Last `lines` lines of a file to stderr, each prefixed. */
void th_print_tail(const char *path, int lines, const char *prefix);

#endif
