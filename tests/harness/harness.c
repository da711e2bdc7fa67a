/*
 * harness.c - starting, watching and stopping tally node processes for integration tests.
 *
 * A cluster lives in one mkdtemp directory under /tmp; each node gets its own --dir inside it
 * and its stderr goes to <dir>/<name>.log. A node is ready when its DIR/ready file names the
 * pid we started; the cluster is ready when the coordinator lists every worker as 'up'.
 * Clusters still running are remembered here (one test process, one thread) so that the
 * th_fini fixture can shut them down when a test aborted half-way.
 */
#include "harness.h"
#include "harness_int.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <netinet/in.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#define TH_MAX_LIVE 8

/* Clusters started and not yet stopped; only the test's main thread touches this. */
static th_cluster *live_clusters[TH_MAX_LIVE];

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void th_poll_pause(int ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

void th_fault_gap(int ms)
{
	th_poll_pause(ms);
}

bool th_wait_until(bool (*cond)(void *ctx), void *ctx, int deadline_ms)
{
	int64_t end = mono_ms() + deadline_ms;
	for (;;) {
		if (cond(ctx))
			return true;
		if (mono_ms() >= end)
			return cond(ctx);
		th_poll_pause(20);
	}
}

bool th_wait_pid(pid_t pid, int *status, int deadline_ms)
{
	int64_t end = mono_ms() + deadline_ms;
	for (;;) {
		int st = 0;
		pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid) {
			if (status)
				*status = st;
			return true;
		}
		if (r < 0 && errno == ECHILD) {
			if (status)
				*status = -1;
			return true;
		}
		if (mono_ms() >= end)
			return false;
		th_poll_pause(10);
	}
}

bool th_postgres_user(uid_t *uid, gid_t *gid)
{
	struct passwd *pw = getpwnam("postgres");
	if (!pw) {
		/* The postgresql package creates it; make one if the package did not. */
		int st = system("useradd --system --no-create-home postgres >/dev/null 2>&1");
		(void)st;
		pw = getpwnam("postgres");
	}
	if (!pw)
		return false;
	*uid = pw->pw_uid;
	*gid = pw->pw_gid;
	return true;
}

pid_t th_spawn(const char *path, char *const argv[], const char *log_path, bool as_postgres)
{
	uid_t uid = 0;
	gid_t gid = 0;
	if (as_postgres && !th_postgres_user(&uid, &gid))
		return -1;
	pid_t parent = getpid();
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	if (pid != 0)
		return pid;
	/* child */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent)
		_exit(126);
	setpgid(0, 0); /* a terminal's ^C goes to the test, which then stops us cleanly */
	int in = open("/dev/null", O_RDONLY);
	int out = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (in < 0 || out < 0)
		_exit(125);
	dup2(in, 0);
	dup2(out, 1);
	dup2(out, 2);
	if (in > 2)
		close(in);
	if (out > 2)
		close(out);
	if (as_postgres) {
		if (setgroups(0, NULL) != 0 || setgid(gid) != 0 || setuid(uid) != 0)
			_exit(124);
	}
	signal(SIGPIPE, SIG_DFL);
	execv(path, argv);
	fprintf(stderr, "harness: cannot exec %s: %s\n", path, strerror(errno));
	_exit(127);
}

void th_print_tail(const char *path, int lines, const char *prefix)
{
	char *s = th_read_file(path);
	if (!s) {
		fprintf(stderr, "%s(no log at %s)\n", prefix, path);
		return;
	}
	size_t n = strlen(s);
	size_t i = n;
	int seen = 0;
	if (i > 0 && s[i - 1] == '\n')
		i--;
	while (i > 0) {
		if (s[i - 1] == '\n' && ++seen >= lines)
			break;
		i--;
	}
	fprintf(stderr, "%s--- last %d lines of %s ---\n", prefix, lines, path);
	char *line = s + i;
	while (*line) {
		char *nl = strchr(line, '\n');
		if (nl)
			*nl = 0;
		fprintf(stderr, "%s%s\n", prefix, line);
		if (!nl)
			break;
		line = nl + 1;
	}
	free(s);
}

char *th_read_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	size_t cap = 4096, len = 0;
	char *buf = malloc(cap);
	size_t r;
	while (buf && (r = fread(buf + len, 1, cap - len - 1, f)) > 0) {
		len += r;
		if (cap - len < 2) {
			cap *= 2;
			char *nb = realloc(buf, cap);
			if (!nb) {
				free(buf);
				buf = NULL;
			} else {
				buf = nb;
			}
		}
	}
	fclose(f);
	if (buf)
		buf[len] = 0;
	return buf;
}

static int rmtree_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

void th_rmtree(const char *path)
{
	if (path && path[0] == '/' && strlen(path) > 5)
		nftw(path, rmtree_cb, 16, FTW_DEPTH | FTW_PHYS);
}

void th_source_path(char *out, size_t outsz, const char *rel)
{
	snprintf(out, outsz, "%s/%s", TALLY_SOURCE_DIR, rel);
}

int th_tcp_connect(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
		close(fd);
		return -1;
	}
	return fd;
}

bool th_write_all(int fd, const void *p, size_t n)
{
	const char *c = p;
	while (n > 0) {
		ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return false;
		c += w;
		n -= (size_t)w;
	}
	return true;
}

/* ---- running a helper process with captured output --------------------------------------- */

static void buf_add(char **s, size_t *len, size_t *cap, const char *p, size_t n)
{
	if (*len + n + 1 > *cap) {
		size_t nc = *cap ? *cap : 4096;
		while (nc < *len + n + 1)
			nc *= 2;
		*s = tally_xrealloc(*s, nc);
		*cap = nc;
	}
	memcpy(*s + *len, p, n);
	*len += n;
	(*s)[*len] = 0;
}

int th_run_process(char *const argv[], const char *in, char **out, char **err, int deadline_ms)
{
	int pin[2], pout[2], perr[2];
	if (pipe2(pin, O_CLOEXEC) || pipe2(pout, O_CLOEXEC) || pipe2(perr, O_CLOEXEC))
		return -1;
	pid_t parent = getpid();
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(126);
		dup2(pin[0], 0);
		dup2(pout[1], 1);
		dup2(perr[1], 2);
		signal(SIGPIPE, SIG_DFL);
		execv(argv[0], argv);
		_exit(127);
	}
	close(pin[0]);
	close(pout[1]);
	close(perr[1]);
	size_t inlen = in ? strlen(in) : 0, inoff = 0;
	int infd = pin[1];
	if (inlen == 0) {
		close(infd);
		infd = -1;
	} else {
		fcntl(infd, F_SETFL, O_NONBLOCK);
	}
	char *os = NULL, *es = NULL;
	size_t olen = 0, ocap = 0, elen = 0, ecap = 0;
	buf_add(&os, &olen, &ocap, "", 0);
	buf_add(&es, &elen, &ecap, "", 0);
	int fds[2] = {pout[0], perr[0]};
	int64_t end = mono_ms() + deadline_ms;
	bool timed_out = false;
	while (fds[0] >= 0 || fds[1] >= 0 || infd >= 0) {
		struct pollfd pf[3];
		int np = 0, idx_in = -1, idx_o = -1, idx_e = -1;
		if (infd >= 0) {
			idx_in = np;
			pf[np++] = (struct pollfd){.fd = infd, .events = POLLOUT};
		}
		if (fds[0] >= 0) {
			idx_o = np;
			pf[np++] = (struct pollfd){.fd = fds[0], .events = POLLIN};
		}
		if (fds[1] >= 0) {
			idx_e = np;
			pf[np++] = (struct pollfd){.fd = fds[1], .events = POLLIN};
		}
		int64_t left = end - mono_ms();
		if (left <= 0) {
			timed_out = true;
			break;
		}
		int r = poll(pf, (nfds_t)np, (int)(left > 100 ? 100 : left));
		if (r < 0 && errno != EINTR)
			break;
		if (r <= 0)
			continue;
		if (idx_in >= 0 && pf[idx_in].revents) {
			ssize_t w = write(infd, in + inoff, inlen - inoff);
			if (w > 0)
				inoff += (size_t)w;
			if (w < 0 && errno != EAGAIN && errno != EINTR)
				inoff = inlen;
			if (inoff >= inlen) {
				close(infd);
				infd = -1;
			}
		}
		char buf[8192];
		if (idx_o >= 0 && pf[idx_o].revents) {
			ssize_t n = read(fds[0], buf, sizeof buf);
			if (n > 0) {
				buf_add(&os, &olen, &ocap, buf, (size_t)n);
			} else if (n == 0 || errno != EINTR) {
				close(fds[0]);
				fds[0] = -1;
			}
		}
		if (idx_e >= 0 && pf[idx_e].revents) {
			ssize_t n = read(fds[1], buf, sizeof buf);
			if (n > 0) {
				buf_add(&es, &elen, &ecap, buf, (size_t)n);
			} else if (n == 0 || errno != EINTR) {
				close(fds[1]);
				fds[1] = -1;
			}
		}
	}
	if (infd >= 0)
		close(infd);
	for (int i = 0; i < 2; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	int status = -1;
	if (timed_out || !th_wait_pid(pid, &status, timed_out ? 0 : (int)(end - mono_ms() + 100))) {
		kill(pid, SIGKILL);
		th_wait_pid(pid, &status, 5000);
		status = -1;
	}
	if (out)
		*out = os;
	else
		free(os);
	if (err)
		*err = es;
	else
		free(es);
	return status;
}

int th_psql(const th_node *n, const char *const extra_args[], const char *in, char **out,
	    char **err, int deadline_ms)
{
	char port[16];
	snprintf(port, sizeof port, "%d", n->sql_port);
	const char *host = n->host[0] ? n->host : "127.0.0.1";
	const char *argv[64] = {"/usr/bin/psql", "-X", "-h",   host, "-p", port, "-U",
				"tally",	 "-d", "tally"};
	int argc = 10;
	for (int i = 0; extra_args && extra_args[i] && argc < 62; i++)
		argv[argc++] = extra_args[i];
	argv[argc] = NULL;
	return th_run_process((char *const *)argv, in, out, err, deadline_ms);
}

/* ---- nodes ------------------------------------------------------------------------------- */

static void live_add(th_cluster *c)
{
	for (int i = 0; i < TH_MAX_LIVE; i++)
		if (!live_clusters[i]) {
			live_clusters[i] = c;
			return;
		}
}

static void live_del(th_cluster *c)
{
	for (int i = 0; i < TH_MAX_LIVE; i++)
		if (live_clusters[i] == c)
			live_clusters[i] = NULL;
}

void th_node_log_tail(const th_node *n, int lines)
{
	char prefix[80];
	snprintf(prefix, sizeof prefix, "[%s] ", n->name);
	th_print_tail(n->log, lines, prefix);
}

bool th_node_alive(th_node *n)
{
	if (n->pid <= 0)
		return false;
	int st = 0;
	pid_t r = waitpid(n->pid, &st, WNOHANG);
	if (r == n->pid) {
		n->exit_status = st;
		n->pid = 0;
		return false;
	}
	return kill(n->pid, 0) == 0;
}

static void cluster_fail(th_cluster *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Report, keep the directory, and abort the test (nodes die with us or at th_fini). */
static void cluster_fail(th_cluster *c, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	c->failed = true;
	fprintf(stderr, "harness: %s (cluster dir kept: %s)\n", msg, c->dir);
	for (int i = 0; i < c->nnodes; i++)
		th_node_log_tail(&c->nodes[i], 15);
	cr_assert_fail("%s", msg);
}

static const char *node_binary(const th_cluster *c, const th_node *n, char *buf, size_t bufsz)
{
	snprintf(buf, bufsz, "%s/%s", c->bin_dir,
		 n->is_coordinator ? "tally-coordinator" : "tally-worker");
	return buf;
}

static void node_spawn(th_cluster *c, th_node *n, bool reuse_ports)
{
	char bin[600], port[16], dport[16];
	const char *argv[28 + 2 * TH_MAX_SETS];
	int argc = 0;
	int idx = (int)(n - c->nodes);
	const char *host = c->opts.hosts[idx] ? c->opts.hosts[idx] : "127.0.0.1";
	const char *netns = c->opts.netns[idx];
	const char *path = bin;
	node_binary(c, n, bin, sizeof bin);
	snprintf(n->host, sizeof n->host, "%s", host);
	snprintf(port, sizeof port, "%d", reuse_ports ? n->sql_port : 0);
	snprintf(dport, sizeof dport, "%d", reuse_ports ? n->data_port : 0);
	if (netns) {
		/* ip execs the node in the namespace: the pid stays the node's */
		path = access("/usr/sbin/ip", X_OK) == 0 ? "/usr/sbin/ip" : "/sbin/ip";
		argv[argc++] = path;
		argv[argc++] = "netns";
		argv[argc++] = "exec";
		argv[argc++] = netns;
	}
	argv[argc++] = bin;
	if (!n->is_coordinator) {
		argv[argc++] = "--name";
		argv[argc++] = n->name;
		argv[argc++] = "--coordinator";
		argv[argc++] = c->nodes[0].data_addr;
	}
	argv[argc++] = "--dir";
	argv[argc++] = n->dir;
	argv[argc++] = "--host";
	argv[argc++] = host;
	argv[argc++] = "--port";
	argv[argc++] = port;
	argv[argc++] = "--data-port";
	argv[argc++] = dport;
	argv[argc++] = "--log-level";
	argv[argc++] = c->opts.log_level ? c->opts.log_level : "warning";
	/* Tests read what they just wrote: statements return once the primaries applied them,
	 * and reads go to the primaries (replicas may lag: DESIGN §8). A test's own sets come
	 * after and win; tests of replica reads set primary_only=off. */
	argv[argc++] = "--set";
	argv[argc++] = "pipeline_cluster.insert_level=sync_commit";
	argv[argc++] = "--set";
	argv[argc++] = "pipeline_cluster.primary_only=on";
	for (int i = 0; i < TH_MAX_SETS && c->opts.sets[i]; i++) {
		argv[argc++] = "--set";
		argv[argc++] = c->opts.sets[i];
	}
	argv[argc] = NULL;
	mkdir(n->dir, 0755);
	char ready[600];
	snprintf(ready, sizeof ready, "%s/ready", n->dir);
	unlink(ready); /* a SIGKILLed node leaves its old one */
	n->stopped = false;
	n->exit_status = -1;
	n->pid = th_spawn(path, (char *const *)argv, n->log, false);
	if (n->pid < 0) {
		n->pid = 0;
		cluster_fail(c, "cannot start %s", bin);
	}
}

/* Parse DIR/ready; true once it exists, is complete and names our pid. */
static bool node_read_ready(th_node *n)
{
	char path[600];
	snprintf(path, sizeof path, "%s/ready", n->dir);
	char *s = th_read_file(path);
	if (!s)
		return false;
	long pid = -1, sql_port = -1;
	char data_addr[128] = "", name[64] = "";
	char *save = NULL;
	for (char *line = strtok_r(s, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		if (strncmp(line, "pid=", 4) == 0)
			pid = strtol(line + 4, NULL, 10);
		else if (strncmp(line, "sql_port=", 9) == 0)
			sql_port = strtol(line + 9, NULL, 10);
		else if (strncmp(line, "data_addr=", 10) == 0)
			snprintf(data_addr, sizeof data_addr, "%s", line + 10);
		else if (strncmp(line, "name=", 5) == 0)
			snprintf(name, sizeof name, "%s", line + 5);
	}
	free(s);
	if (pid != (long)n->pid || sql_port <= 0 || sql_port > 65535 || !data_addr[0])
		return false;
	const char *colon = strrchr(data_addr, ':');
	if (strncmp(data_addr, "tcp://", 6) != 0 || !colon)
		return false;
	n->sql_port = (int)sql_port;
	n->data_port = atoi(colon + 1);
	snprintf(n->data_addr, sizeof n->data_addr, "%s", data_addr);
	if (name[0] && strcmp(name, n->name) != 0)
		fprintf(stderr, "harness: %s's ready file says name=%s\n", n->name, name);
	return true;
}

static void node_wait_ready(th_cluster *c, th_node *n)
{
	int timeout = c->opts.ready_timeout_ms > 0 ? c->opts.ready_timeout_ms : 20000;
	int64_t end = mono_ms() + timeout;
	for (;;) {
		if (node_read_ready(n))
			return;
		if (!th_node_alive(n))
			cluster_fail(c, "%s exited before it was ready (status 0x%x)", n->name,
				     (unsigned)n->exit_status);
		if (mono_ms() >= end)
			cluster_fail(c, "%s not ready after %d ms", n->name, timeout);
		th_poll_pause(20);
	}
}

struct up_ctx {
	th_cluster *c;
	PGconn *conn;
	char last[512];
};

/* Does pipeline_cluster.nodes at the coordinator show every running worker 'up'? */
static bool all_workers_up(void *arg)
{
	struct up_ctx *u = arg;
	if (!u->conn || PQstatus(u->conn) != CONNECTION_OK) {
		if (u->conn)
			PQfinish(u->conn);
		u->conn = th_try_connect(&u->c->nodes[0]);
		if (!u->conn) {
			snprintf(u->last, sizeof u->last, "cannot connect to the coordinator");
			return false;
		}
	}
	PGresult *r = PQexec(u->conn, "SELECT name, state FROM pipeline_cluster.nodes");
	if (PQresultStatus(r) != PGRES_TUPLES_OK) {
		snprintf(u->last, sizeof u->last, "pipeline_cluster.nodes: %s",
			 PQresultErrorMessage(r));
		PQclear(r);
		return false;
	}
	bool ok = true;
	for (int i = 1; i < u->c->nnodes && ok; i++) {
		th_node *n = &u->c->nodes[i];
		if (n->pid <= 0)
			continue;
		bool found = false;
		for (int row = 0; row < PQntuples(r); row++)
			if (strcmp(PQgetvalue(r, row, 0), n->name) == 0 &&
			    strcmp(PQgetvalue(r, row, 1), "up") == 0)
				found = true;
		if (!found) {
			snprintf(u->last, sizeof u->last, "worker %s is not 'up'", n->name);
			ok = false;
		}
	}
	PQclear(r);
	return ok;
}

static void cluster_wait_up(th_cluster *c)
{
	if (c->opts.no_wait_up)
		return;
	struct up_ctx u = {.c = c};
	bool ok = th_wait_until(all_workers_up, &u, 20000);
	if (u.conn)
		PQfinish(u.conn);
	if (!ok)
		cluster_fail(c, "cluster not up after 20 s: %s", u.last);
}

th_cluster *th_cluster_start(int nworkers, const th_opts *opts)
{
	cr_assert(nworkers >= 0 && nworkers < TH_MAX_NODES, "bad worker count %d", nworkers);
	signal(SIGPIPE, SIG_IGN);
	th_cluster *c = tally_xcalloc(1, sizeof *c);
	if (opts)
		c->opts = *opts;
	const char *bin = c->opts.bin_dir ? c->opts.bin_dir : getenv("TALLY_TEST_BIN_DIR");
	snprintf(c->bin_dir, sizeof c->bin_dir, "%s", bin && *bin ? bin : TALLY_BIN_DIR);
	snprintf(c->dir, sizeof c->dir, "/tmp/tally-test-XXXXXX");
	cr_assert(mkdtemp(c->dir) != NULL, "mkdtemp: %s", strerror(errno));
	c->nnodes = 1 + nworkers;
	char root[sizeof c->dir]; /* a copy: gcc cannot tell c->dir from n->dir inside *c */
	memcpy(root, c->dir, sizeof root);
	for (int i = 0; i < c->nnodes; i++) {
		th_node *n = &c->nodes[i];
		n->is_coordinator = i == 0;
		char name[sizeof n->name];
		if (i == 0)
			snprintf(name, sizeof name, "coordinator");
		else
			snprintf(name, sizeof name, "w%d", i);
		memcpy(n->name, name, sizeof n->name);
		snprintf(n->dir, sizeof n->dir, "%s/%s", root, name);
		snprintf(n->log, sizeof n->log, "%s/%s.log", root, name);
		n->exit_status = -1;
	}
	live_add(c);
	node_spawn(c, &c->nodes[0], false);
	node_wait_ready(c, &c->nodes[0]);
	for (int i = 1; i < c->nnodes; i++)
		node_spawn(c, &c->nodes[i], false);
	for (int i = 1; i < c->nnodes; i++)
		node_wait_ready(c, &c->nodes[i]);
	cluster_wait_up(c);
	return c;
}

/* A node that does not exit when told: append every thread's stack to its log (gdb, if the
 * machine has it), so the hang can be diagnosed from the kept directory. */
void th_node_dump_stacks(const th_node *n)
{
	if (access("/usr/bin/gdb", X_OK) != 0)
		return;
	char pid[32], *out = NULL;
	snprintf(pid, sizeof pid, "%d", (int)n->pid);
	char *const argv[] = {"/usr/bin/gdb",	     "-p", pid, "-batch", "-nx", "-ex",
			      "thread apply all bt", NULL};
	th_run_process(argv, NULL, &out, NULL, 60000);
	FILE *f = fopen(n->log, "a");
	if (f && out) {
		fprintf(f, "---- harness: stacks of %s (pid %s), which did not exit ----\n%s\n",
			n->name, pid, out);
		fprintf(stderr, "harness: stacks of %s appended to %s\n", n->name, n->log);
	}
	if (f)
		fclose(f);
	free(out);
}

void th_kill_node(th_cluster *c, th_node *n, int sig)
{
	if (n->pid <= 0)
		cluster_fail(c, "th_kill_node: %s is not running", n->name);
	if (sig == SIGCONT)
		n->stopped = false;
	if (kill(n->pid, sig) != 0)
		cluster_fail(c, "kill(%s, %d): %s", n->name, sig, strerror(errno));
	if (sig == SIGSTOP) {
		n->stopped = true;
		return;
	}
	if (sig == SIGKILL || sig == SIGTERM || sig == SIGINT) {
		if (n->stopped)
			kill(n->pid, SIGCONT);
		int st = 0;
		if (!th_wait_pid(n->pid, &st, 20000)) {
			th_node_dump_stacks(n);
			cluster_fail(c, "%s did not exit within 20 s of signal %d", n->name, sig);
		}
		n->exit_status = st;
		n->pid = 0;
		n->stopped = false;
		if (sig != SIGKILL && !(WIFEXITED(st) && WEXITSTATUS(st) == 0))
			cluster_fail(c, "%s exited with status 0x%x after signal %d", n->name,
				     (unsigned)st, sig);
	}
}

void th_restart_node(th_cluster *c, th_node *n)
{
	if (n->pid > 0)
		cluster_fail(c, "th_restart_node: %s is still running", n->name);
	node_spawn(c, n, true);
	node_wait_ready(c, n);
}

/* Stop everything; returns false (with a report) on any failure. */
static bool cluster_stop(th_cluster *c, char *why, size_t whysz)
{
	bool ok = !c->failed;
	why[0] = 0;
	if (c->failed)
		snprintf(why, whysz, "cluster failed earlier");
	for (int i = c->nnodes - 1; i >= 0; i--) {
		th_node *n = &c->nodes[i];
		if (n->pid <= 0)
			continue;
		if (n->stopped)
			kill(n->pid, SIGCONT);
		kill(n->pid, SIGTERM);
	}
	int64_t end = mono_ms() + 20000;
	for (int i = 0; i < c->nnodes; i++) {
		th_node *n = &c->nodes[i];
		if (n->pid <= 0)
			continue;
		int left = (int)(end - mono_ms());
		int st = 0;
		if (!th_wait_pid(n->pid, &st, left > 0 ? left : 0)) {
			ok = false;
			snprintf(why + strlen(why), whysz - strlen(why),
				 "%s did not exit within 20 s of SIGTERM; ", n->name);
			th_node_dump_stacks(n);
			kill(n->pid, SIGKILL);
			th_wait_pid(n->pid, &st, 5000);
			n->pid = 0;
			continue;
		}
		n->pid = 0;
		n->exit_status = st;
		if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
			ok = false;
			if (WIFSIGNALED(st))
				snprintf(why + strlen(why), whysz - strlen(why),
					 "%s died of signal %d; ", n->name, WTERMSIG(st));
			else
				snprintf(why + strlen(why), whysz - strlen(why),
					 "%s exited with status %d; ", n->name,
					 WIFEXITED(st) ? WEXITSTATUS(st) : -1);
			continue;
		}
		char ready[600];
		snprintf(ready, sizeof ready, "%s/ready", n->dir);
		if (access(ready, F_OK) == 0) {
			ok = false;
			snprintf(why + strlen(why), whysz - strlen(why),
				 "%s left its ready file behind; ", n->name);
		}
	}
	/* A sanitizer report in a node's log fails the run even when the node exited 0. */
	static const char *const sanitizer[] = {"ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
						"runtime error:", "WARNING: ThreadSanitizer"};
	for (int i = 0; i < c->nnodes; i++) {
		char *log = th_read_file(c->nodes[i].log);
		for (size_t k = 0; log && k < sizeof sanitizer / sizeof sanitizer[0]; k++)
			if (strstr(log, sanitizer[k])) {
				ok = false;
				snprintf(why + strlen(why), whysz - strlen(why),
					 "%s's log has a sanitizer report (%s); ", c->nodes[i].name,
					 sanitizer[k]);
			}
		free(log);
	}
	live_del(c);
	if (ok) {
		th_rmtree(c->dir);
	} else {
		fprintf(stderr, "harness: cluster stop failed: %s\nharness: cluster dir kept: %s\n",
			why, c->dir);
		for (int i = 0; i < c->nnodes; i++)
			th_node_log_tail(&c->nodes[i], 20);
	}
	return ok;
}

void th_cluster_stop(th_cluster *c)
{
	if (!c)
		return;
	char why[2048];
	bool ok = cluster_stop(c, why, sizeof why);
	free(c);
	cr_assert(ok, "cluster stop: %s", why);
}

bool th_cluster_stop_quiet(th_cluster *c)
{
	if (!c)
		return true;
	char why[2048];
	bool ok = cluster_stop(c, why, sizeof why);
	free(c);
	return ok;
}

void th_fini(void)
{
	for (int i = 0; i < TH_MAX_LIVE; i++) {
		th_cluster *c = live_clusters[i];
		if (!c)
			continue;
		c->failed = true; /* the test did not stop it: it aborted */
		th_cluster_stop_quiet(c);
	}
	th_oracle_stop_all_quiet();
}
