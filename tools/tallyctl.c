/*
 * tallyctl.c - start, stop and inspect a local tally cluster: one coordinator and N workers,
 * each a daemon with its own data directory under one cluster directory (default
 * ./tally-data). The layout (names, SQL ports, worker count, flags) is recorded in
 * DIR/cluster.conf by `up`, so that every other subcommand needs only --dir.
 *
 * Per node, DIR/<name>/ holds the node's own data, its log (stdout and stderr, appended), the
 * ready file the node writes once it serves (see the contract: pid, name, sql_port, data_addr)
 * and tallyctl.pid, the pid tallyctl started it as. A node counts as live when that pid exists,
 * is not a zombie and still has DIR/<name> among its arguments (so a recycled pid is not
 * mistaken for the node).
 *
 * The node table plus node_start / node_stop are the building blocks; up, down, start-node,
 * stop-node and restart-node are thin loops over them.
 */
#include "tally/core.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libpq-fe.h>
#include <limits.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CTL_MAX_WORKERS 64
#define CTL_MAX_SETS 32
#define CTL_POLL_US 50000
#define CTL_READY_TIMEOUT_US (30 * 1000000LL)
#define CTL_STOP_TIMEOUT_US (10 * 1000000LL)
#define CTL_KILL_TIMEOUT_US (5 * 1000000LL)
#define CTL_LOG_TAIL_LINES 25
#define CTL_DEFAULT_DIR "./tally-data"
#define CTL_DEFAULT_PORT 6432
#define CTL_DEFAULT_WORKERS 3
#define CTL_HOST "127.0.0.1"

/* exit codes */
#define CTL_EXIT_OK 0
#define CTL_EXIT_FAIL 1
#define CTL_EXIT_USAGE 2
#define CTL_EXIT_NOT_RUNNING 3

typedef enum ctl_role { CTL_COORDINATOR = 0, CTL_WORKER = 1 } ctl_role;

typedef struct ctl_node {
	char name[TALLY_NAME_MAX];
	ctl_role role;
	int sql_port;
	pid_t pid;	     /* 0 = not known to run */
	bool child;	     /* started by this process: reap it with waitpid */
	off_t log_off;	     /* size of the log when we started it (for the failure tail) */
	char data_addr[128]; /* from the ready file */
} ctl_node;

typedef struct ctl_cluster {
	char dir[PATH_MAX]; /* absolute */
	int port;
	int nworkers;
	int coord_data_port; /* the coordinator's data port once known: reused on its restart */
	char log_level[16];
	char sets[CTL_MAX_SETS][256];
	int nsets;
	int nnodes;
	ctl_node nodes[1 + CTL_MAX_WORKERS]; /* [0] is the coordinator */
} ctl_cluster;

typedef enum ctl_state { CTL_STOPPED, CTL_RUNNING, CTL_NOT_RESPONDING } ctl_state;

static const char *state_name[] = {"stopped", "running", "not responding"};

/* ---- small helpers ------------------------------------------------------------------------ */

static void ctl_sleep_us(int64_t us)
{
	struct timespec ts = {.tv_sec = us / 1000000, .tv_nsec = (us % 1000000) * 1000};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static int ctl_parse_int(const char *s, long min, long max, int *out)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max)
		return -1;
	*out = (int)v;
	return 0;
}

static void node_path(const ctl_cluster *c, const ctl_node *n, const char *file, char *out,
		      size_t outsz)
{
	if (file)
		snprintf(out, outsz, "%s/%s/%s", c->dir, n->name, file);
	else
		snprintf(out, outsz, "%s/%s", c->dir, n->name);
}

static void conninfo(int port, int timeout_s, char *out, size_t outsz)
{
	snprintf(out, outsz, "host=%s port=%d user=tally dbname=tally connect_timeout=%d", CTL_HOST,
		 port, timeout_s);
}

/* ---- the cluster table and cluster.conf --------------------------------------------------- */

static void cluster_layout(ctl_cluster *c)
{
	c->nnodes = 1 + c->nworkers;
	for (int i = 0; i < c->nnodes; i++) {
		ctl_node *n = &c->nodes[i];
		memset(n, 0, sizeof *n);
		n->role = i == 0 ? CTL_COORDINATOR : CTL_WORKER;
		if (i == 0)
			tally_strlcpy(n->name, "coordinator", sizeof n->name);
		else
			snprintf(n->name, sizeof n->name, "w%d", i);
		n->sql_port = c->port + i;
	}
}

static ctl_node *cluster_find(ctl_cluster *c, const char *name)
{
	for (int i = 0; i < c->nnodes; i++)
		if (strcmp(c->nodes[i].name, name) == 0)
			return &c->nodes[i];
	return NULL;
}

/* Write DIR/cluster.conf atomically (temp file + rename). */
static int conf_write(const ctl_cluster *c)
{
	char path[PATH_MAX + 32], tmp[PATH_MAX + 32];
	snprintf(path, sizeof path, "%s/cluster.conf", c->dir);
	snprintf(tmp, sizeof tmp, "%s/cluster.conf.tmp", c->dir);
	FILE *f = fopen(tmp, "w");
	if (!f) {
		fprintf(stderr, "tallyctl: could not write \"%s\": %s\n", tmp, strerror(errno));
		return -1;
	}
	fprintf(f, "# tally local cluster, written by tallyctl; read by status/down/start-node\n");
	fprintf(f, "port=%d\n", c->port);
	fprintf(f, "workers=%d\n", c->nworkers);
	fprintf(f, "coordinator_data_port=%d\n", c->coord_data_port);
	if (c->log_level[0])
		fprintf(f, "log_level=%s\n", c->log_level);
	for (int i = 0; i < c->nsets; i++)
		fprintf(f, "set=%s\n", c->sets[i]);
	for (int i = 0; i < c->nnodes; i++)
		fprintf(f, "node=%s %s %d\n", c->nodes[i].name,
			c->nodes[i].role == CTL_COORDINATOR ? "coordinator" : "worker",
			c->nodes[i].sql_port);
	int bad = ferror(f);
	bad |= fflush(f) != 0 || fsync(fileno(f)) != 0;
	bad |= fclose(f) != 0;
	if (bad || rename(tmp, path) != 0) {
		fprintf(stderr, "tallyctl: could not write \"%s\": %s\n", path, strerror(errno));
		unlink(tmp);
		return -1;
	}
	return 0;
}

/* Read DIR/cluster.conf into c (c->dir already set). Returns 0, or -1 with a message printed;
 * *missing is set when the file does not exist. */
static int conf_read(ctl_cluster *c, bool *missing)
{
	char path[PATH_MAX + 32];
	snprintf(path, sizeof path, "%s/cluster.conf", c->dir);
	*missing = false;
	FILE *f = fopen(path, "r");
	if (!f) {
		if (errno == ENOENT) {
			*missing = true;
			fprintf(stderr,
				"tallyctl: no cluster in \"%s\" (no cluster.conf; start one with "
				"tallyctl up)\n",
				c->dir);
		} else {
			fprintf(stderr, "tallyctl: could not read \"%s\": %s\n", path,
				strerror(errno));
		}
		return -1;
	}
	char line[512];
	int lineno = 0, rc = 0;
	c->port = CTL_DEFAULT_PORT;
	c->nworkers = -1;
	c->nsets = 0;
	c->nnodes = 0;
	c->log_level[0] = 0;
	c->coord_data_port = 0;
	while (fgets(line, sizeof line, f)) {
		lineno++;
		line[strcspn(line, "\r\n")] = 0;
		if (!line[0] || line[0] == '#')
			continue;
		char *eq = strchr(line, '=');
		if (!eq) {
			rc = -1;
			break;
		}
		*eq = 0;
		const char *k = line, *v = eq + 1;
		if (strcmp(k, "port") == 0) {
			rc = ctl_parse_int(v, 1, 65535, &c->port);
		} else if (strcmp(k, "workers") == 0) {
			rc = ctl_parse_int(v, 0, CTL_MAX_WORKERS, &c->nworkers);
		} else if (strcmp(k, "coordinator_data_port") == 0) {
			rc = ctl_parse_int(v, 0, 65535, &c->coord_data_port);
		} else if (strcmp(k, "log_level") == 0) {
			tally_strlcpy(c->log_level, v, sizeof c->log_level);
		} else if (strcmp(k, "set") == 0) {
			if (c->nsets < CTL_MAX_SETS)
				tally_strlcpy(c->sets[c->nsets++], v, sizeof c->sets[0]);
		} else if (strcmp(k, "node") == 0) {
			char name[TALLY_NAME_MAX], role[32];
			int port;
			if (c->nnodes >= 1 + CTL_MAX_WORKERS ||
			    sscanf(v, "%63s %31s %d", name, role, &port) != 3) {
				rc = -1;
				break;
			}
			ctl_node *n = &c->nodes[c->nnodes++];
			memset(n, 0, sizeof *n);
			tally_strlcpy(n->name, name, sizeof n->name);
			n->role = strcmp(role, "coordinator") == 0 ? CTL_COORDINATOR : CTL_WORKER;
			n->sql_port = port;
		}
		/* unknown keys are ignored: newer tallyctl versions may add some */
		if (rc)
			break;
	}
	fclose(f);
	if (rc == 0 && c->nworkers < 0)
		rc = -1;
	if (rc == 0 && c->nnodes == 0)
		cluster_layout(c);
	if (rc == 0 && (c->nnodes < 1 || c->nodes[0].role != CTL_COORDINATOR))
		rc = -1;
	if (rc) {
		fprintf(stderr, "tallyctl: invalid cluster file \"%s\" (line %d)\n", path, lineno);
		return -1;
	}
	return 0;
}

/* Hold an exclusive lock on DIR for this process's lifetime (close-on-exec, so the daemons we
 * start do not inherit it). */
static int cluster_lock(const ctl_cluster *c)
{
	char path[PATH_MAX + 32];
	snprintf(path, sizeof path, "%s/.tallyctl.lock", c->dir);
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0) {
		fprintf(stderr, "tallyctl: could not open \"%s\": %s\n", path, strerror(errno));
		return -1;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
		fprintf(stderr, "tallyctl: another tallyctl is working on \"%s\"\n", c->dir);
		close(fd);
		return -1;
	}
	return 0; /* fd intentionally kept open until exit */
}

/* Resolve DIR to an absolute path; create it when create is set. */
static int cluster_dir(ctl_cluster *c, const char *dir, bool create)
{
	if (create && tally_mkdir_p(dir, 0755) != 0) {
		fprintf(stderr, "tallyctl: could not create directory \"%s\": %s\n", dir,
			strerror(errno));
		return -1;
	}
	if (!realpath(dir, c->dir)) {
		if (errno == ENOENT)
			fprintf(stderr,
				"tallyctl: no cluster in \"%s\" (directory does not exist)\n", dir);
		else
			fprintf(stderr, "tallyctl: could not resolve \"%s\": %s\n", dir,
				strerror(errno));
		return -1;
	}
	return 0;
}

/* ---- process liveness --------------------------------------------------------------------- */

static pid_t pidfile_read(const ctl_cluster *c, const ctl_node *n)
{
	char path[PATH_MAX + 80];
	node_path(c, n, "tallyctl.pid", path, sizeof path);
	FILE *f = fopen(path, "r");
	if (!f)
		return 0;
	long pid = 0;
	if (fscanf(f, "%ld", &pid) != 1 || pid <= 1 || pid > INT_MAX)
		pid = 0;
	fclose(f);
	return (pid_t)pid;
}

static void pidfile_write(const ctl_cluster *c, const ctl_node *n)
{
	char path[PATH_MAX + 80], tmp[PATH_MAX + 90];
	node_path(c, n, "tallyctl.pid", path, sizeof path);
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	FILE *f = fopen(tmp, "w");
	if (!f)
		return;
	fprintf(f, "%ld\n", (long)n->pid);
	if (fclose(f) == 0)
		rename(tmp, path);
}

static void pidfile_remove(const ctl_cluster *c, const ctl_node *n)
{
	char path[PATH_MAX + 80];
	node_path(c, n, "tallyctl.pid", path, sizeof path);
	unlink(path);
}

/* Is pid a live (non-zombie) process that has DIR/<name> among its arguments? */
static bool pid_is_node(const ctl_cluster *c, const ctl_node *n, pid_t pid)
{
	if (pid <= 1)
		return false;
	if (kill(pid, 0) != 0 && errno != EPERM)
		return false;
	char path[64], buf[8192];
	snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return false;
	size_t len = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[len] = 0;
	char *rp = strrchr(buf, ')'); /* state follows the parenthesised command name */
	if (!rp || rp[1] != ' ' || rp[2] == 'Z' || rp[2] == 'X')
		return false;

	snprintf(path, sizeof path, "/proc/%ld/cmdline", (long)pid);
	f = fopen(path, "r");
	if (!f)
		return false;
	len = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[len] = 0;
	char want[PATH_MAX + 80];
	node_path(c, n, NULL, want, sizeof want);
	for (size_t off = 0; off < len; off += strlen(buf + off) + 1)
		if (strcmp(buf + off, want) == 0)
			return true;
	return false;
}

/* Refresh n->pid: 0 unless the node process is alive. Reaps our own children. */
static bool node_alive(const ctl_cluster *c, ctl_node *n)
{
	if (n->pid == 0) {
		n->pid = pidfile_read(c, n);
		n->child = false;
	}
	if (n->pid == 0)
		return false;
	if (n->child) {
		int st;
		if (waitpid(n->pid, &st, WNOHANG) == n->pid) {
			n->pid = 0;
			n->child = false;
			return false;
		}
	}
	if (!pid_is_node(c, n, n->pid)) {
		n->pid = 0;
		n->child = false;
		return false;
	}
	return true;
}

static bool sql_answers(int port)
{
	char ci[256];
	conninfo(port, 2, ci, sizeof ci);
	PGconn *conn = PQconnectdb(ci);
	bool ok = false;
	if (PQstatus(conn) == CONNECTION_OK) {
		PGresult *r = PQexec(conn, "SELECT 1");
		ok = PQresultStatus(r) == PGRES_TUPLES_OK;
		PQclear(r);
	}
	PQfinish(conn);
	return ok;
}

static ctl_state node_state(const ctl_cluster *c, ctl_node *n)
{
	if (!node_alive(c, n))
		return CTL_STOPPED;
	return sql_answers(n->sql_port) ? CTL_RUNNING : CTL_NOT_RESPONDING;
}

/* ---- ready files and logs ----------------------------------------------------------------- */

typedef struct ctl_ready {
	long pid;
	int sql_port;
	char name[TALLY_NAME_MAX];
	char data_addr[128];
} ctl_ready;

static int ready_read(const ctl_cluster *c, const ctl_node *n, ctl_ready *out)
{
	char path[PATH_MAX + 80];
	node_path(c, n, "ready", path, sizeof path);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	memset(out, 0, sizeof *out);
	char line[256];
	while (fgets(line, sizeof line, f)) {
		line[strcspn(line, "\r\n")] = 0;
		if (strncmp(line, "pid=", 4) == 0)
			out->pid = strtol(line + 4, NULL, 10);
		else if (strncmp(line, "sql_port=", 9) == 0)
			out->sql_port = (int)strtol(line + 9, NULL, 10);
		else if (strncmp(line, "name=", 5) == 0)
			tally_strlcpy(out->name, line + 5, sizeof out->name);
		else if (strncmp(line, "data_addr=", 10) == 0)
			tally_strlcpy(out->data_addr, line + 10, sizeof out->data_addr);
	}
	fclose(f);
	return out->pid > 0 && out->data_addr[0] ? 0 : -1;
}

static void ready_remove(const ctl_cluster *c, const ctl_node *n)
{
	char path[PATH_MAX + 80];
	node_path(c, n, "ready", path, sizeof path);
	unlink(path);
}

static int addr_port(const char *addr)
{
	const char *colon = strrchr(addr, ':');
	int port;
	if (!colon || ctl_parse_int(colon + 1, 1, 65535, &port) != 0)
		return 0;
	return port;
}

/* Print the last lines the node logged since we started it. */
static void log_tail(const ctl_cluster *c, const ctl_node *n)
{
	char path[PATH_MAX + 80];
	node_path(c, n, "log", path, sizeof path);
	FILE *f = fopen(path, "r");
	if (!f) {
		fprintf(stderr, "  (no log at %s)\n", path);
		return;
	}
	fseeko(f, 0, SEEK_END);
	off_t end = ftello(f);
	off_t start = n->log_off;
	if (end - start > 64 * 1024)
		start = end - 64 * 1024;
	if (start < 0 || start > end)
		start = 0;
	size_t len = (size_t)(end - start);
	char *buf = tally_xmalloc(len + 1);
	fseeko(f, start, SEEK_SET);
	len = fread(buf, 1, len, f);
	fclose(f);
	buf[len] = 0;
	int lines = 0;
	size_t from = len;
	while (from > 0) {
		if (buf[from - 1] == '\n' && from != len && ++lines >= CTL_LOG_TAIL_LINES)
			break;
		from--;
	}
	fprintf(stderr, "---- last lines of %s ----\n", path);
	fputs(buf + from, stderr);
	if (len && buf[len - 1] != '\n')
		fputc('\n', stderr);
	fprintf(stderr, "----\n");
	free(buf);
}

/* ---- start and stop one node -------------------------------------------------------------- */

static int find_bin(const char *name, char *out, size_t outsz)
{
	const char *env = getenv("TALLY_BIN_DIR");
	if (env && env[0]) {
		snprintf(out, outsz, "%s/%s", env, name);
		if (access(out, X_OK) == 0)
			return 0;
	}
	char self[PATH_MAX];
	ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
	if (len > 0) {
		self[len] = 0;
		char *slash = strrchr(self, '/');
		if (slash) {
			*slash = 0;
			snprintf(out, outsz, "%s/%s", self, name);
			if (access(out, X_OK) == 0)
				return 0;
		}
	}
	fprintf(stderr,
		"tallyctl: cannot find the %s binary next to tallyctl nor in $TALLY_BIN_DIR\n",
		name);
	return -1;
}

/* Fork and exec one node as a daemon (own session, stdin /dev/null, stdout and stderr appended
 * to its log). coord_addr is the coordinator's data address (workers); data_port the node's
 * data port (0 = any). Does not wait for it to be ready. */
static int node_spawn(ctl_cluster *c, ctl_node *n, const char *coord_addr, int data_port)
{
	char bin[PATH_MAX + 32];
	if (find_bin(n->role == CTL_COORDINATOR ? "tally-coordinator" : "tally-worker", bin,
		     sizeof bin) != 0)
		return -1;
	char dir[PATH_MAX + 80], logpath[PATH_MAX + 80];
	node_path(c, n, NULL, dir, sizeof dir);
	node_path(c, n, "log", logpath, sizeof logpath);
	if (tally_mkdir_p(dir, 0755) != 0) {
		fprintf(stderr, "tallyctl: could not create directory \"%s\": %s\n", dir,
			strerror(errno));
		return -1;
	}
	ready_remove(c, n); /* a stale one from a killed run must not count */

	int logfd = open(logpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (logfd < 0) {
		fprintf(stderr, "tallyctl: could not open \"%s\": %s\n", logpath, strerror(errno));
		return -1;
	}
	struct stat st;
	n->log_off = fstat(logfd, &st) == 0 ? st.st_size : 0;
	char stamp[64];
	time_t now = time(NULL);
	struct tm tm;
	strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", localtime_r(&now, &tm));
	dprintf(logfd, "---- tallyctl: starting %s at %s ----\n", n->name, stamp);

	char sqlport[16], dataport[16];
	snprintf(sqlport, sizeof sqlport, "%d", n->sql_port);
	snprintf(dataport, sizeof dataport, "%d", data_port);
	const char *argv[24 + 2 * CTL_MAX_SETS];
	int argc = 0;
	argv[argc++] = bin;
	if (n->role == CTL_WORKER) {
		argv[argc++] = "--name";
		argv[argc++] = n->name;
		argv[argc++] = "--coordinator";
		argv[argc++] = coord_addr;
	}
	argv[argc++] = "--dir";
	argv[argc++] = dir;
	argv[argc++] = "--host";
	argv[argc++] = CTL_HOST;
	argv[argc++] = "--port";
	argv[argc++] = sqlport;
	argv[argc++] = "--data-port";
	argv[argc++] = dataport;
	for (int i = 0; i < c->nsets; i++) {
		argv[argc++] = "--set";
		argv[argc++] = c->sets[i];
	}
	if (c->log_level[0]) {
		argv[argc++] = "--log-level";
		argv[argc++] = c->log_level;
	}
	argv[argc] = NULL;

	int pfd[2];
	if (pipe2(pfd, O_CLOEXEC) != 0) {
		fprintf(stderr, "tallyctl: could not create a pipe: %s\n", strerror(errno));
		close(logfd);
		return -1;
	}
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	if (pid < 0) {
		fprintf(stderr, "tallyctl: could not fork: %s\n", strerror(errno));
		close(pfd[0]);
		close(pfd[1]);
		close(logfd);
		return -1;
	}
	if (pid == 0) {
		/* child: only async-signal-safe calls until exec */
		setsid();
		sigset_t all;
		sigemptyset(&all);
		sigprocmask(SIG_SETMASK, &all, NULL);
		signal(SIGINT, SIG_DFL);
		signal(SIGTERM, SIG_DFL);
		signal(SIGHUP, SIG_DFL);
		signal(SIGPIPE, SIG_DFL);
		int nullfd = open("/dev/null", O_RDONLY);
		if (nullfd >= 0 && nullfd != 0) {
			dup2(nullfd, 0);
			close(nullfd);
		}
		dup2(logfd, 1);
		dup2(logfd, 2);
		if (chdir(dir) != 0) {
			/* not fatal: every path we pass is absolute */
		}
		execv(bin, (char *const *)argv);
		int e = errno;
		ssize_t w = write(pfd[1], &e, sizeof e);
		(void)w;
		_exit(127);
	}
	close(pfd[1]);
	close(logfd);
	int e = 0;
	ssize_t r;
	while ((r = read(pfd[0], &e, sizeof e)) < 0 && errno == EINTR)
		;
	close(pfd[0]);
	if (r == (ssize_t)sizeof e) {
		waitpid(pid, NULL, 0);
		fprintf(stderr, "tallyctl: could not execute \"%s\": %s\n", bin, strerror(e));
		return -1;
	}
	n->pid = pid;
	n->child = true;
	n->data_addr[0] = 0;
	pidfile_write(c, n);
	return 0;
}

/* Wait until the node's ready file names its pid; fail if it exits or the deadline passes.
 * Prints the error and the node's log tail on failure. */
static int node_wait_ready(const ctl_cluster *c, ctl_node *n, int64_t deadline)
{
	for (;;) {
		ctl_ready rd;
		if (ready_read(c, n, &rd) == 0 && rd.pid == (long)n->pid) {
			tally_strlcpy(n->data_addr, rd.data_addr, sizeof n->data_addr);
			return 0;
		}
		if (n->child) {
			int st;
			if (waitpid(n->pid, &st, WNOHANG) == n->pid) {
				if (WIFEXITED(st))
					fprintf(stderr,
						"tallyctl: %s exited with status %d before it "
						"was ready\n",
						n->name, WEXITSTATUS(st));
				else
					fprintf(
					    stderr,
					    "tallyctl: %s was killed by signal %d before it was "
					    "ready\n",
					    n->name, WIFSIGNALED(st) ? WTERMSIG(st) : 0);
				n->pid = 0;
				n->child = false;
				pidfile_remove(c, n);
				log_tail(c, n);
				return -1;
			}
		} else if (!node_alive(c, n)) {
			fprintf(stderr, "tallyctl: %s exited before it was ready\n", n->name);
			log_tail(c, n);
			return -1;
		}
		if (tally_mono_us() >= deadline) {
			fprintf(stderr, "tallyctl: %s was not ready after %lld s\n", n->name,
				(long long)(CTL_READY_TIMEOUT_US / 1000000));
			log_tail(c, n);
			return -1;
		}
		ctl_sleep_us(CTL_POLL_US);
	}
}

typedef enum ctl_stop_result {
	CTL_STOP_NOT_RUNNING,
	CTL_STOP_STOPPED, /* exited after the signal */
	CTL_STOP_KILLED,  /* needed SIGKILL after the timeout */
	CTL_STOP_FAILED,  /* still there after SIGKILL */
} ctl_stop_result;

static bool wait_gone(const ctl_cluster *c, ctl_node *n, int64_t timeout_us)
{
	int64_t deadline = tally_mono_us() + timeout_us;
	while (node_alive(c, n)) {
		if (tally_mono_us() >= deadline)
			return false;
		ctl_sleep_us(CTL_POLL_US / 5);
	}
	return true;
}

/* Send sig (SIGTERM or SIGKILL) to a node and wait up to timeout_us for it to exit; escalate to
 * SIGKILL after that. */
static ctl_stop_result node_stop_signalled(const ctl_cluster *c, ctl_node *n, int sig,
					   int64_t timeout_us);

static ctl_stop_result node_stop(const ctl_cluster *c, ctl_node *n, int sig, int64_t timeout_us)
{
	if (!node_alive(c, n)) {
		pidfile_remove(c, n);
		return CTL_STOP_NOT_RUNNING;
	}
	kill(n->pid, sig);
	return node_stop_signalled(c, n, sig, timeout_us);
}

/* The rest of node_stop, once sig has been sent to the live node n. */
static ctl_stop_result node_stop_signalled(const ctl_cluster *c, ctl_node *n, int sig,
					   int64_t timeout_us)
{
	ctl_stop_result res = CTL_STOP_STOPPED;
	if (!wait_gone(c, n, timeout_us)) {
		res = CTL_STOP_KILLED;
		if (n->pid)
			kill(n->pid, SIGKILL);
		if (!wait_gone(c, n, CTL_KILL_TIMEOUT_US))
			return CTL_STOP_FAILED;
	}
	if (sig == SIGKILL)
		res = CTL_STOP_KILLED;
	pidfile_remove(c, n);
	if (res == CTL_STOP_KILLED)
		ready_remove(c, n); /* a killed node could not remove it */
	return res;
}

static void report_stop(const ctl_node *n, pid_t pid, ctl_stop_result r)
{
	switch (r) {
	case CTL_STOP_NOT_RUNNING:
		printf("%-12s not running\n", n->name);
		break;
	case CTL_STOP_STOPPED:
		printf("%-12s stopped (pid %ld)\n", n->name, (long)pid);
		break;
	case CTL_STOP_KILLED:
		printf("%-12s killed (pid %ld)\n", n->name, (long)pid);
		break;
	case CTL_STOP_FAILED:
		printf("%-12s could not be stopped (pid %ld)\n", n->name, (long)pid);
		break;
	}
}

/* Start node n and wait until it is ready. Workers need the coordinator's data address: from
 * its ready file if it runs, else from the recorded coordinator data port. */
static int node_start(ctl_cluster *c, ctl_node *n, bool wait)
{
	char coord_addr[160] = "";
	int data_port = 0;
	if (n->role == CTL_WORKER) {
		ctl_ready rd;
		if (ready_read(c, &c->nodes[0], &rd) == 0 && node_alive(c, &c->nodes[0]))
			tally_strlcpy(coord_addr, rd.data_addr, sizeof coord_addr);
		else if (c->coord_data_port > 0)
			snprintf(coord_addr, sizeof coord_addr, "tcp://%s:%d", CTL_HOST,
				 c->coord_data_port);
		else {
			fprintf(stderr, "tallyctl: the coordinator is not running and its data "
					"address is unknown; start it first\n");
			return -1;
		}
	} else {
		data_port = c->coord_data_port;
	}
	if (node_spawn(c, n, coord_addr, data_port) != 0)
		return -1;
	if (!wait)
		return 0;
	return node_wait_ready(c, n, tally_mono_us() + CTL_READY_TIMEOUT_US);
}

/* ---- port checks and cluster membership --------------------------------------------------- */

static bool port_free(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return true; /* let the node report it */
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	inet_pton(AF_INET, CTL_HOST, &sa.sin_addr);
	bool ok = bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
	close(fd);
	return ok;
}

/* Wait until the coordinator lists every worker of the table as up. */
static int wait_workers_up(ctl_cluster *c, int64_t deadline)
{
	char ci[256];
	conninfo(c->nodes[0].sql_port, 2, ci, sizeof ci);
	PGconn *conn = NULL;
	char last[512] = "no answer yet";
	for (;;) {
		for (int i = 0; i < c->nnodes; i++) {
			if (!node_alive(c, &c->nodes[i])) {
				fprintf(stderr,
					"tallyctl: %s exited while the cluster was starting\n",
					c->nodes[i].name);
				log_tail(c, &c->nodes[i]);
				PQfinish(conn);
				return -1;
			}
		}
		if (!conn || PQstatus(conn) != CONNECTION_OK) {
			PQfinish(conn);
			conn = PQconnectdb(ci);
			if (PQstatus(conn) != CONNECTION_OK)
				snprintf(last, sizeof last, "%s", PQerrorMessage(conn));
		}
		if (PQstatus(conn) == CONNECTION_OK) {
			PGresult *r =
			    PQexec(conn, "SELECT name, state FROM pipeline_cluster.nodes");
			if (PQresultStatus(r) == PGRES_TUPLES_OK) {
				int up = 0;
				for (int i = 1; i < c->nnodes; i++)
					for (int j = 0; j < PQntuples(r); j++)
						if (strcmp(PQgetvalue(r, j, 0), c->nodes[i].name) ==
							0 &&
						    strcmp(PQgetvalue(r, j, 1), "up") == 0) {
							up++;
							break;
						}
				snprintf(last, sizeof last, "%d of %d workers up", up,
					 c->nnodes - 1);
				if (up == c->nnodes - 1) {
					PQclear(r);
					PQfinish(conn);
					return 0;
				}
			} else {
				snprintf(last, sizeof last, "%s", PQresultErrorMessage(r));
			}
			PQclear(r);
		}
		if (tally_mono_us() >= deadline) {
			last[strcspn(last, "\n")] = 0;
			fprintf(stderr,
				"tallyctl: the coordinator did not list every worker as up "
				"within %lld s (%s)\n",
				(long long)(CTL_READY_TIMEOUT_US / 1000000), last);
			log_tail(c, &c->nodes[0]);
			PQfinish(conn);
			return -1;
		}
		ctl_sleep_us(CTL_POLL_US);
	}
}

/* ---- option parsing ----------------------------------------------------------------------- */

static const char *usage_main =
    "usage: tallyctl COMMAND [options]\n"
    "\n"
    "Start, stop and inspect a local tally cluster (one coordinator, N workers).\n"
    "\n"
    "commands:\n"
    "  up             start a cluster\n"
    "  status         show every node's state and the coordinator's node list\n"
    "  down           stop every node (workers first)\n"
    "  start-node     start one node of the cluster\n"
    "  stop-node      stop one node\n"
    "  restart-node   stop then start one node\n"
    "\n"
    "Run 'tallyctl COMMAND --help' for a command's options.\n"
    "Exit status: 0 ok, 1 failure, 2 bad usage, 3 (status) not every node running.\n";

static const char *usage_up =
    "usage: tallyctl up [--workers N] [--dir DIR] [--port P] [--set NAME=VALUE]...\n"
    "                   [--log-level LEVEL]\n"
    "\n"
    "Start a coordinator (SQL on port P) and N workers w1..wN (SQL on P+1..P+N) as daemons\n"
    "in DIR/<node>, wait until the coordinator lists every worker as up, and print how to\n"
    "connect to each node. Node logs go to DIR/<node>/log.\n"
    "\n"
    "  --workers N        number of workers (default 3, at most 64)\n"
    "  --dir DIR          cluster directory (default ./tally-data)\n"
    "  --port P           coordinator SQL port (default 6432)\n"
    "  --set NAME=VALUE   node setting, passed to every node (repeatable)\n"
    "  --log-level LEVEL  debug, info, warning or error\n";

static const char *usage_status =
    "usage: tallyctl status [--dir DIR]\n"
    "\n"
    "Print each node's pid, SQL port and state (running, stopped, not responding) and, when\n"
    "the coordinator answers, its pipeline_cluster.nodes view.\n"
    "Exit status 0 if every node is running, 3 if not.\n";

static const char *usage_down = "usage: tallyctl down [--dir DIR]\n"
				"\n"
				"Stop every node with SIGTERM, workers first and the coordinator "
				"last, waiting up to\n"
				"10 s for each before SIGKILL.\n";

static const char *usage_start_node =
    "usage: tallyctl start-node NAME [--dir DIR] [--no-wait]\n"
    "\n"
    "Start one node of the cluster (coordinator, w1, ...) with the flags of 'up' and wait\n"
    "until it is ready (unless --no-wait).\n";

static const char *usage_stop_node =
    "usage: tallyctl stop-node NAME [--dir DIR] [--kill]\n"
    "\n"
    "Stop one node: SIGTERM and wait up to 10 s (then SIGKILL), or SIGKILL at once with\n"
    "--kill.\n";

static const char *usage_restart_node =
    "usage: tallyctl restart-node NAME [--dir DIR] [--kill]\n"
    "\n"
    "Stop one node (SIGKILL with --kill) and start it again, waiting until it is ready.\n";

typedef struct ctl_opts {
	const char *dir;
	int workers;
	int port;
	bool kill;
	bool no_wait;
	const char *log_level;
	const char *sets[CTL_MAX_SETS];
	int nsets;
	const char *name; /* positional NAME */
} ctl_opts;

enum { OPT_WORKERS = 1000, OPT_DIR, OPT_PORT, OPT_KILL, OPT_NO_WAIT, OPT_SET, OPT_LOG_LEVEL };

/* Parse argv (argv[0] is the command name). allowed: the OPT_ values this command takes;
 * npos: 1 if it takes NAME. Returns 0, 1 (help printed) or 2 (usage error printed). */
static int parse_opts(int argc, char **argv, const char *usage, const int *allowed, int npos,
		      ctl_opts *o)
{
	static const struct option longopts[] = {
	    {"workers", required_argument, NULL, OPT_WORKERS},
	    {"dir", required_argument, NULL, OPT_DIR},
	    {"port", required_argument, NULL, OPT_PORT},
	    {"kill", no_argument, NULL, OPT_KILL},
	    {"no-wait", no_argument, NULL, OPT_NO_WAIT},
	    {"set", required_argument, NULL, OPT_SET},
	    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	const char *cmd = argv[0];
	optind = 1;
	opterr = 0;
	int ch;
	while ((ch = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
		if (ch == 'h') {
			fputs(usage, stdout);
			return 1;
		}
		if (ch == '?' || ch == ':') {
			const char *bad = argv[optind - 1];
			if (ch == ':')
				fprintf(stderr, "tallyctl %s: option %s needs a value\n", cmd, bad);
			else
				fprintf(stderr, "tallyctl %s: unknown option %s\n", cmd, bad);
			fprintf(stderr, "Try 'tallyctl %s --help'.\n", cmd);
			return 2;
		}
		bool ok = false;
		for (const int *a = allowed; *a; a++)
			ok |= *a == ch;
		if (!ok) {
			fprintf(stderr, "tallyctl %s: unknown option %s\n", cmd, argv[optind - 1]);
			fprintf(stderr, "Try 'tallyctl %s --help'.\n", cmd);
			return 2;
		}
		switch (ch) {
		case OPT_WORKERS:
			if (ctl_parse_int(optarg, 1, CTL_MAX_WORKERS, &o->workers) != 0) {
				fprintf(stderr,
					"tallyctl %s: invalid --workers \"%s\" (expected 1..%d)\n",
					cmd, optarg, CTL_MAX_WORKERS);
				return 2;
			}
			break;
		case OPT_DIR:
			if (!optarg[0]) {
				fprintf(stderr, "tallyctl %s: --dir must not be empty\n", cmd);
				return 2;
			}
			o->dir = optarg;
			break;
		case OPT_PORT:
			if (ctl_parse_int(optarg, 1, 65535, &o->port) != 0) {
				fprintf(stderr,
					"tallyctl %s: invalid --port \"%s\" (expected 1..65535)\n",
					cmd, optarg);
				return 2;
			}
			break;
		case OPT_KILL:
			o->kill = true;
			break;
		case OPT_NO_WAIT:
			o->no_wait = true;
			break;
		case OPT_SET:
			if (!strchr(optarg, '=') || optarg[0] == '=' || strlen(optarg) >= 256 ||
			    strchr(optarg, '\n')) {
				fprintf(stderr,
					"tallyctl %s: invalid --set \"%s\" (expected NAME=VALUE)\n",
					cmd, optarg);
				return 2;
			}
			if (o->nsets >= CTL_MAX_SETS) {
				fprintf(stderr,
					"tallyctl %s: too many --set options (at most %d)\n", cmd,
					CTL_MAX_SETS);
				return 2;
			}
			o->sets[o->nsets++] = optarg;
			break;
		case OPT_LOG_LEVEL:
			if (strcmp(optarg, "debug") != 0 && strcmp(optarg, "info") != 0 &&
			    strcmp(optarg, "warning") != 0 && strcmp(optarg, "error") != 0) {
				fprintf(stderr,
					"tallyctl %s: invalid --log-level \"%s\" (expected debug, "
					"info, "
					"warning or error)\n",
					cmd, optarg);
				return 2;
			}
			o->log_level = optarg;
			break;
		}
	}
	int left = argc - optind;
	if (left > npos) {
		fprintf(stderr, "tallyctl %s: unexpected argument \"%s\"\n", cmd,
			argv[optind + npos]);
		fprintf(stderr, "Try 'tallyctl %s --help'.\n", cmd);
		return 2;
	}
	if (left < npos) {
		fprintf(stderr, "tallyctl %s: missing node name\n", cmd);
		fprintf(stderr, "Try 'tallyctl %s --help'.\n", cmd);
		return 2;
	}
	if (npos)
		o->name = argv[optind];
	return 0;
}

/* ---- commands ----------------------------------------------------------------------------- */

static void print_connections(const ctl_cluster *c)
{
	for (int i = 0; i < c->nnodes; i++)
		printf("%-12s host=%s port=%d user=tally dbname=tally\n", c->nodes[i].name,
		       CTL_HOST, c->nodes[i].sql_port);
}

/* Stop the nodes that this process started (workers first). */
static void stop_started(ctl_cluster *c)
{
	for (int i = c->nnodes - 1; i >= 0; i--)
		if (c->nodes[i].child && c->nodes[i].pid)
			node_stop(c, &c->nodes[i], SIGTERM, CTL_STOP_TIMEOUT_US);
}

static int cmd_up(int argc, char **argv)
{
	static const int allowed[] = {OPT_WORKERS, OPT_DIR, OPT_PORT, OPT_SET, OPT_LOG_LEVEL, 0};
	ctl_opts o = {
	    .dir = CTL_DEFAULT_DIR, .workers = CTL_DEFAULT_WORKERS, .port = CTL_DEFAULT_PORT};
	int rc = parse_opts(argc, argv, usage_up, allowed, 0, &o);
	if (rc)
		return rc == 1 ? CTL_EXIT_OK : CTL_EXIT_USAGE;
	if (o.port + o.workers > 65535) {
		fprintf(stderr, "tallyctl up: --port %d leaves no room for %d worker ports\n",
			o.port, o.workers);
		return CTL_EXIT_USAGE;
	}

	ctl_cluster c;
	memset(&c, 0, sizeof c);
	if (cluster_dir(&c, o.dir, true) != 0 || cluster_lock(&c) != 0)
		return CTL_EXIT_FAIL;

	/* Refuse if any node of the recorded layout, or of the new one, is alive. */
	ctl_cluster old;
	memset(&old, 0, sizeof old);
	tally_strlcpy(old.dir, c.dir, sizeof old.dir);
	bool missing;
	char conf[PATH_MAX + 32];
	snprintf(conf, sizeof conf, "%s/cluster.conf", c.dir);
	if (access(conf, F_OK) == 0 && conf_read(&old, &missing) == 0) {
		for (int i = 0; i < old.nnodes; i++)
			if (node_alive(&old, &old.nodes[i])) {
				fprintf(stderr,
					"tallyctl: cluster already running in %s (%s has pid "
					"%ld); stop it with: tallyctl down --dir %s\n",
					c.dir, old.nodes[i].name, (long)old.nodes[i].pid, c.dir);
				return CTL_EXIT_FAIL;
			}
	}
	c.port = o.port;
	c.nworkers = o.workers;
	if (o.log_level)
		tally_strlcpy(c.log_level, o.log_level, sizeof c.log_level);
	for (int i = 0; i < o.nsets; i++)
		tally_strlcpy(c.sets[c.nsets++], o.sets[i], sizeof c.sets[0]);
	cluster_layout(&c);
	for (int i = 0; i < c.nnodes; i++)
		if (node_alive(&c, &c.nodes[i])) {
			fprintf(stderr,
				"tallyctl: cluster already running in %s (%s has pid %ld)\n", c.dir,
				c.nodes[i].name, (long)c.nodes[i].pid);
			return CTL_EXIT_FAIL;
		}
	for (int i = 0; i < c.nnodes; i++)
		if (!port_free(c.nodes[i].sql_port)) {
			fprintf(stderr,
				"tallyctl: port %d for %s is already in use (choose another "
				"with --port)\n",
				c.nodes[i].sql_port, c.nodes[i].name);
			return CTL_EXIT_FAIL;
		}
	if (conf_write(&c) != 0)
		return CTL_EXIT_FAIL;

	/* The coordinator first: workers need its data address. */
	ctl_node *co = &c.nodes[0];
	if (node_spawn(&c, co, "", 0) != 0 ||
	    node_wait_ready(&c, co, tally_mono_us() + CTL_READY_TIMEOUT_US) != 0)
		goto fail;
	c.coord_data_port = addr_port(co->data_addr);
	if (conf_write(&c) != 0)
		goto fail;

	for (int i = 1; i < c.nnodes; i++)
		if (node_spawn(&c, &c.nodes[i], co->data_addr, 0) != 0)
			goto fail;
	int64_t deadline = tally_mono_us() + CTL_READY_TIMEOUT_US;
	for (int i = 1; i < c.nnodes; i++)
		if (node_wait_ready(&c, &c.nodes[i], deadline) != 0)
			goto fail;
	if (wait_workers_up(&c, deadline) != 0)
		goto fail;

	printf("tally cluster up in %s: coordinator and %d worker%s\n", c.dir, c.nworkers,
	       c.nworkers == 1 ? "" : "s");
	print_connections(&c);
	printf("connect with: psql \"host=%s port=%d user=tally dbname=tally\"\n", CTL_HOST,
	       c.port);
	return CTL_EXIT_OK;

fail:
	fprintf(stderr, "tallyctl: stopping the nodes started so far\n");
	stop_started(&c);
	return CTL_EXIT_FAIL;
}

/* Open DIR and read its layout for status, down and the node commands. */
static int open_cluster(ctl_cluster *c, const char *dir, bool lock)
{
	bool missing;
	if (cluster_dir(c, dir, false) != 0)
		return -1;
	if (conf_read(c, &missing) != 0)
		return -1;
	if (lock && cluster_lock(c) != 0)
		return -1;
	return 0;
}

static void print_result_table(PGresult *r)
{
	int nf = PQnfields(r), nt = PQntuples(r);
	int *w = tally_xcalloc((size_t)(nf ? nf : 1), sizeof *w);
	for (int f = 0; f < nf; f++) {
		w[f] = (int)strlen(PQfname(r, f));
		for (int t = 0; t < nt; t++) {
			int l = PQgetlength(r, t, f);
			if (l > w[f])
				w[f] = l;
		}
	}
	for (int f = 0; f < nf; f++)
		printf("%s%-*s", f ? " | " : " ", w[f], PQfname(r, f));
	printf("\n");
	for (int f = 0; f < nf; f++) {
		printf("%s", f ? "-+-" : "-");
		for (int i = 0; i < w[f]; i++)
			putchar('-');
	}
	printf("\n");
	for (int t = 0; t < nt; t++) {
		for (int f = 0; f < nf; f++)
			printf("%s%-*s", f ? " | " : " ", w[f], PQgetvalue(r, t, f));
		printf("\n");
	}
	printf("(%d row%s)\n", nt, nt == 1 ? "" : "s");
	free(w);
}

static int cmd_status(int argc, char **argv)
{
	static const int allowed[] = {OPT_DIR, 0};
	ctl_opts o = {.dir = CTL_DEFAULT_DIR};
	int rc = parse_opts(argc, argv, usage_status, allowed, 0, &o);
	if (rc)
		return rc == 1 ? CTL_EXIT_OK : CTL_EXIT_USAGE;
	ctl_cluster c;
	memset(&c, 0, sizeof c);
	if (open_cluster(&c, o.dir, false) != 0)
		return CTL_EXIT_NOT_RUNNING;

	printf("cluster %s\n", c.dir);
	printf("%-12s %-8s %-9s %s\n", "node", "pid", "sql port", "state");
	bool all = true;
	ctl_state cs = CTL_STOPPED;
	for (int i = 0; i < c.nnodes; i++) {
		ctl_node *n = &c.nodes[i];
		ctl_state s = node_state(&c, n);
		if (i == 0)
			cs = s;
		all &= s == CTL_RUNNING;
		char pid[16] = "-";
		if (n->pid)
			snprintf(pid, sizeof pid, "%ld", (long)n->pid);
		printf("%-12s %-8s %-9d %s\n", n->name, pid, n->sql_port, state_name[s]);
	}
	if (cs == CTL_RUNNING) {
		char ci[256];
		conninfo(c.nodes[0].sql_port, 2, ci, sizeof ci);
		PGconn *conn = PQconnectdb(ci);
		if (PQstatus(conn) == CONNECTION_OK) {
			PGresult *r =
			    PQexec(conn, "SELECT * FROM pipeline_cluster.nodes ORDER BY node_id");
			if (PQresultStatus(r) != PGRES_TUPLES_OK) {
				PQclear(r);
				r = PQexec(conn, "SELECT * FROM pipeline_cluster.nodes");
			}
			printf("\npipeline_cluster.nodes (as the coordinator sees them):\n");
			if (PQresultStatus(r) == PGRES_TUPLES_OK)
				print_result_table(r);
			else
				printf("  (could not read it: %.*s)\n",
				       (int)strcspn(PQresultErrorMessage(r), "\n"),
				       PQresultErrorMessage(r));
			PQclear(r);
		}
		PQfinish(conn);
	}
	return all ? CTL_EXIT_OK : CTL_EXIT_NOT_RUNNING;
}

static int cmd_down(int argc, char **argv)
{
	static const int allowed[] = {OPT_DIR, 0};
	ctl_opts o = {.dir = CTL_DEFAULT_DIR};
	int rc = parse_opts(argc, argv, usage_down, allowed, 0, &o);
	if (rc)
		return rc == 1 ? CTL_EXIT_OK : CTL_EXIT_USAGE;
	ctl_cluster c;
	memset(&c, 0, sizeof c);
	if (open_cluster(&c, o.dir, true) != 0)
		return CTL_EXIT_FAIL;

	/* SIGTERM every worker at once, then wait for each; the coordinator last. */
	pid_t pids[1 + CTL_MAX_WORKERS];
	for (int i = 1; i < c.nnodes; i++) {
		ctl_node *n = &c.nodes[i];
		pids[i] = node_alive(&c, n) ? n->pid : 0;
		if (pids[i])
			kill(pids[i], SIGTERM);
	}
	bool ok = true;
	for (int i = 1; i < c.nnodes; i++) {
		ctl_stop_result r = CTL_STOP_NOT_RUNNING;
		if (pids[i])
			r = node_stop_signalled(&c, &c.nodes[i], SIGTERM, CTL_STOP_TIMEOUT_US);
		else
			pidfile_remove(&c, &c.nodes[i]);
		ok &= r != CTL_STOP_FAILED;
		report_stop(&c.nodes[i], pids[i], r);
	}
	pid_t cpid = node_alive(&c, &c.nodes[0]) ? c.nodes[0].pid : 0;
	ctl_stop_result r = node_stop(&c, &c.nodes[0], SIGTERM, CTL_STOP_TIMEOUT_US);
	ok &= r != CTL_STOP_FAILED;
	report_stop(&c.nodes[0], cpid, r);
	return ok ? CTL_EXIT_OK : CTL_EXIT_FAIL;
}

typedef enum { NODE_START, NODE_STOP, NODE_RESTART } node_cmd;

static int cmd_node(int argc, char **argv, node_cmd what)
{
	static const int allowed_start[] = {OPT_DIR, OPT_NO_WAIT, 0};
	static const int allowed_stop[] = {OPT_DIR, OPT_KILL, 0};
	const char *usage = what == NODE_START	? usage_start_node
			    : what == NODE_STOP ? usage_stop_node
						: usage_restart_node;
	ctl_opts o = {.dir = CTL_DEFAULT_DIR};
	int rc =
	    parse_opts(argc, argv, usage, what == NODE_START ? allowed_start : allowed_stop, 1, &o);
	if (rc)
		return rc == 1 ? CTL_EXIT_OK : CTL_EXIT_USAGE;
	ctl_cluster c;
	memset(&c, 0, sizeof c);
	if (open_cluster(&c, o.dir, true) != 0)
		return CTL_EXIT_FAIL;
	ctl_node *n = cluster_find(&c, o.name);
	if (!n) {
		fprintf(stderr, "tallyctl %s: no node \"%s\" in %s (nodes:", argv[0], o.name,
			c.dir);
		for (int i = 0; i < c.nnodes; i++)
			fprintf(stderr, " %s", c.nodes[i].name);
		fprintf(stderr, ")\n");
		return CTL_EXIT_USAGE;
	}
	if (what == NODE_STOP || what == NODE_RESTART) {
		pid_t pid = node_alive(&c, n) ? n->pid : 0;
		ctl_stop_result r =
		    node_stop(&c, n, o.kill ? SIGKILL : SIGTERM, CTL_STOP_TIMEOUT_US);
		report_stop(n, pid, r);
		if (r == CTL_STOP_FAILED)
			return CTL_EXIT_FAIL;
		if (what == NODE_STOP)
			return CTL_EXIT_OK;
	} else if (node_alive(&c, n)) {
		fprintf(stderr, "tallyctl: %s is already running (pid %ld)\n", n->name,
			(long)n->pid);
		return CTL_EXIT_FAIL;
	}
	/* A node just killed may still hold its port for a moment: the kernel releases its
	 * memory (which can take a while for a big one) before it closes its sockets. */
	int64_t port_deadline = tally_mono_us() + 5000000;
	while (!port_free(n->sql_port) && tally_mono_us() < port_deadline)
		ctl_sleep_us(CTL_POLL_US / 5);
	if (!port_free(n->sql_port)) {
		fprintf(stderr, "tallyctl: port %d for %s is already in use\n", n->sql_port,
			n->name);
		return CTL_EXIT_FAIL;
	}
	if (node_start(&c, n, !o.no_wait) != 0) {
		if (n->pid)
			node_stop(&c, n, SIGTERM, CTL_STOP_TIMEOUT_US);
		return CTL_EXIT_FAIL;
	}
	if (n->role == CTL_COORDINATOR && n->data_addr[0]) {
		int port = addr_port(n->data_addr);
		if (port && port != c.coord_data_port) {
			c.coord_data_port = port;
			conf_write(&c);
		}
	}
	printf("%-12s %s (pid %ld)  host=%s port=%d user=tally dbname=tally\n", n->name,
	       o.no_wait ? "started" : "ready", (long)n->pid, CTL_HOST, n->sql_port);
	return CTL_EXIT_OK;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fputs(usage_main, stderr);
		return CTL_EXIT_USAGE;
	}
	const char *cmd = argv[1];
	if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
		fputs(usage_main, stdout);
		return CTL_EXIT_OK;
	}
	/* SIGPIPE when stdout is a closed pipe should not kill us halfway through a stop. */
	signal(SIGPIPE, SIG_IGN);
	if (strcmp(cmd, "up") == 0)
		return cmd_up(argc - 1, argv + 1);
	if (strcmp(cmd, "status") == 0)
		return cmd_status(argc - 1, argv + 1);
	if (strcmp(cmd, "down") == 0)
		return cmd_down(argc - 1, argv + 1);
	if (strcmp(cmd, "start-node") == 0)
		return cmd_node(argc - 1, argv + 1, NODE_START);
	if (strcmp(cmd, "stop-node") == 0)
		return cmd_node(argc - 1, argv + 1, NODE_STOP);
	if (strcmp(cmd, "restart-node") == 0)
		return cmd_node(argc - 1, argv + 1, NODE_RESTART);
	fprintf(stderr, "tallyctl: unknown command \"%s\"\n", cmd);
	fputs(usage_main, stderr);
	return CTL_EXIT_USAGE;
}
