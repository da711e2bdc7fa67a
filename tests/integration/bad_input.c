/*
 * bad_input.c - integration tests of what nodes do with bad input: statements outside the
 * surface, syntax errors with positions, unknown objects, values of the wrong type or out of
 * range, a failing row in the middle of a statement (nothing of it applied), clients that
 * vanish mid-COPY, and garbage bytes on the SQL port and on the NNG data port. After all of it
 * every node must still serve, and exit 0 on SIGTERM (checked by th_cluster_stop).
 */
#include "harness.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void connect_all(th_cluster *c, PGconn **conns)
{
	for (int i = 0; i < c->nnodes; i++)
		conns[i] = th_connect(&c->nodes[i]);
}

static void finish_all(th_cluster *c, PGconn **conns)
{
	for (int i = 0; i < c->nnodes; i++)
		PQfinish(conns[i]);
}

static PGresult *errf(PGconn *conn, const char *state, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static PGresult *errf(PGconn *conn, const char *state, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *sql = NULL;
	cr_assert(vasprintf(&sql, fmt, ap) >= 0);
	va_end(ap);
	PGresult *r = th_exec_err(conn, sql, state);
	free(sql);
	return r;
}

/* Message, detail, context and hint of an error, in one string. */
static void error_text(const PGresult *r, char *out, size_t outsz)
{
	const int fields[] = {PG_DIAG_MESSAGE_PRIMARY, PG_DIAG_MESSAGE_DETAIL, PG_DIAG_CONTEXT,
			      PG_DIAG_MESSAGE_HINT};
	out[0] = 0;
	for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
		const char *f = PQresultErrorField(r, fields[i]);
		if (f)
			snprintf(out + strlen(out), outsz - strlen(out), "%s | ", f);
	}
}

/* Does s contain word as a whole word (not inside an identifier or a longer number)? */
static bool has_word(const char *s, const char *word)
{
	size_t n = strlen(word);
	for (const char *p = strstr(s, word); p; p = strstr(p + 1, word)) {
		bool left = p == s || !(isalnum((unsigned char)p[-1]) || p[-1] == '_');
		bool right = !(isalnum((unsigned char)p[n]) || p[n] == '_');
		if (left && right)
			return true;
	}
	return false;
}

/* Sum of the count column over all rows of a (k, count) view, from one node. */
static long view_total(PGconn *conn, const char *view)
{
	PGresult *r = th_exec_okf(conn, "SELECT count FROM %s", view);
	long t = 0;
	for (int i = 0; i < PQntuples(r); i++)
		t += atol(PQgetvalue(r, i, 0));
	PQclear(r);
	return t;
}

static void expect_totals(th_cluster *c, PGconn **conns, const char *view, long want)
{
	for (int b = 0; b < c->nnodes; b++) {
		long got = view_total(conns[b], view);
		cr_assert_eq(got, want, "%s total at %s: %ld, want %ld", view, c->nodes[b].name,
			     got, want);
	}
}

Test(bad_input, errors_carry_sqlstate_and_position, .fini = th_fini, .timeout = 120)
{
	th_cluster *c = th_cluster_start(2, NULL);
	PGconn *conns[TH_MAX_NODES];
	connect_all(c, conns);
	for (int d = 0; d < 2; d++) {
		PGconn *a = conns[d == 0 ? 0 : 1];
		th_runf(a,
			"CREATE STREAM b%d (k integer, v integer, s smallint, t text, "
			"ts timestamptz)",
			d);
		th_runf(a, "CREATE CONTINUOUS VIEW bv%d AS SELECT k, count(*) FROM b%d GROUP BY k",
			d, d);
		/* statements outside the surface */
		const char *unsupported[] = {"VACUUM", "CREATE TABLE t (a integer)",
					     "CREATE INDEX i ON b0 (k)", "LISTEN x", "TRUNCATE b0"};
		for (size_t i = 0; i < sizeof unsupported / sizeof unsupported[0]; i++)
			PQclear(th_exec_err(a, unsupported[i], "0A000"));
		/* syntax errors point at the offending token */
		const struct {
			const char *sql, *at;
		} syn[] = {
		    {"SELECT k, FROM bv0", "FROM"},
		    {"CREATE STREAM zz (k integer,, v text)", ", v"},
		    {"INSERT INTO b0 (k) VALUES (1", NULL},
		    {"SELEC * FROM bv0", "SELEC"},
		};
		for (size_t i = 0; i < sizeof syn / sizeof syn[0]; i++) {
			PGresult *r = th_exec_err(a, syn[i].sql, "42601");
			const char *pos = PQresultErrorField(r, PG_DIAG_STATEMENT_POSITION);
			cr_assert(pos != NULL, "no position for: %s", syn[i].sql);
			int want = syn[i].at ? (int)(strstr(syn[i].sql, syn[i].at) - syn[i].sql) + 1
					     : (int)strlen(syn[i].sql) + 1;
			cr_assert_eq(atoi(pos), want, "position %s for: %s (want %d)", pos,
				     syn[i].sql, want);
			PQclear(r);
		}
		/* unknown objects */
		PQclear(errf(a, "42P01", "SELECT * FROM nosuch%d", d));
		PQclear(errf(a, "42P01", "INSERT INTO nosuch%d (k) VALUES (1)", d));
		PQclear(errf(a, "42P01", "COPY nosuch%d FROM STDIN", d));
		PQclear(errf(a, "42703", "SELECT nope FROM bv%d", d));
		PQclear(errf(a, "42703", "SELECT * FROM bv%d WHERE nope = 1", d));
		PQclear(errf(a, "42703", "INSERT INTO b%d (k, nope) VALUES (1, 2)", d));
		PQclear(errf(a, "42703", "COPY b%d (nope) FROM STDIN", d));
		/* wrong types: the row and the column are named */
		PGresult *r = errf(a, "22P02",
				   "INSERT INTO b%d (k, v) VALUES (1, 1), (2, 2), "
				   "(3, 'x'), (4, 4)",
				   d);
		char txt[2048];
		error_text(r, txt, sizeof txt);
		cr_assert(strstr(txt, "\"x\"") != NULL, "error should quote the value: %s", txt);
		/* the bad value is located: by its position in the statement (as PostgreSQL does
		 * for VALUES), or by naming row 3 and column v */
		const char *pos = PQresultErrorField(r, PG_DIAG_STATEMENT_POSITION);
		char *stmt = NULL;
		cr_assert(asprintf(&stmt,
				   "INSERT INTO b%d (k, v) VALUES (1, 1), (2, 2), (3, 'x'), "
				   "(4, 4)",
				   d) > 0);
		bool located = (pos && atoi(pos) >= 1 && (size_t)atoi(pos) <= strlen(stmt) &&
				strncmp(stmt + atoi(pos) - 1, "'x'", 3) == 0) ||
			       (has_word(txt, "3") && has_word(txt, "v"));
		cr_assert(located, "error should locate row 3 column v (position %s): %s",
			  pos ? pos : "none", txt);
		free(stmt);
		PQclear(r);
		PQclear(errf(a, "22P02", "INSERT INTO b%d (k) VALUES ('1.5')", d));
		PQclear(errf(a, "22P02", "INSERT INTO b%d (k) VALUES ('')", d));
		PQclear(errf(a, "22007", "INSERT INTO b%d (ts) VALUES ('yesterday-ish')", d));
		/* out of range */
		PQclear(errf(a, "22003", "INSERT INTO b%d (k) VALUES (2147483648)", d));
		PQclear(errf(a, "22003", "INSERT INTO b%d (k) VALUES (-2147483649)", d));
		PQclear(errf(a, "22003", "INSERT INTO b%d (s) VALUES (32768)", d));
		PQclear(errf(a, "22003", "INSERT INTO b%d (k) VALUES ('99999999999')", d));
		/* in range at the edges */
		th_runf(a,
			"INSERT INTO b%d (k, s) VALUES (2147483647, 32767), (-2147483648, -32768)",
			d);
		/* nothing of the failed statements was applied */
		expect_totals(c, conns, d == 0 ? "bv0" : "bv1", 2);
	}
	finish_all(c, conns);
	th_cluster_stop(c);
}

Test(bad_input, failed_statement_applies_nothing, .fini = th_fini, .timeout = 120)
{
	th_cluster *c = th_cluster_start(2, NULL);
	PGconn *conns[TH_MAX_NODES];
	connect_all(c, conns);
	for (int d = 0; d < 2; d++) {
		PGconn *a = conns[d == 0 ? 0 : 1];
		char all[16], div[16], sql[128];
		snprintf(all, sizeof all, "fa%d", d);
		snprintf(div, sizeof div, "fd%d", d);
		th_runf(a, "CREATE STREAM f%d (k integer, v integer)", d);
		th_runf(a, "CREATE CONTINUOUS VIEW %s AS SELECT k, count(*) FROM f%d GROUP BY k",
			all, d);
		th_runf(a,
			"CREATE CONTINUOUS VIEW %s AS SELECT k, count(*) FROM f%d WHERE 10 / v > 1 "
			"GROUP BY k",
			div, d);
		th_runf(a, "INSERT INTO f%d VALUES (1, 1), (2, 2)", d);
		expect_totals(c, conns, all, 2);
		expect_totals(c, conns, div, 2);
		/* division by zero in a view's WHERE fails the whole statement */
		PQclear(errf(a, "22012", "INSERT INTO f%d VALUES (1, 5), (2, 0), (3, 3)", d));
		expect_totals(c, conns, all, 2);
		expect_totals(c, conns, div, 2);

		/* a bad row in the middle of a 1000-row COPY: nothing applied */
		size_t cap = 1000 * 32, len = 0;
		char *data = tally_xmalloc(cap);
		for (int i = 1; i <= 1000; i++)
			len += (size_t)snprintf(data + len, cap - len, "%d\t%s\n", i % 7,
						i == 501 ? "bad" : "1");
		snprintf(sql, sizeof sql, "COPY f%d FROM STDIN", d);
		PGresult *r = th_copy_in(a, sql, data, len, 4096);
		cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR, "bad COPY accepted: %s",
			     PQcmdStatus(r));
		cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_SQLSTATE), "22P02");
		char txt[2048];
		error_text(r, txt, sizeof txt);
		cr_assert(has_word(txt, "501"), "error should name line 501: %s", txt);
		PQclear(r);
		/* CSV with a missing column and with an extra column */
		const char *short_csv = "1,1\n2\n";
		snprintf(sql, sizeof sql, "COPY f%d FROM STDIN WITH (FORMAT csv)", d);
		r = th_copy_in(a, sql, short_csv, strlen(short_csv), 0);
		cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
		cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_SQLSTATE), "22P04");
		PQclear(r);
		const char *long_tsv = "1\t1\n2\t2\t2\n";
		snprintf(sql, sizeof sql, "COPY f%d FROM STDIN", d);
		r = th_copy_in(a, sql, long_tsv, strlen(long_tsv), 0);
		cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
		cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_SQLSTATE), "22P04");
		PQclear(r);
		/* a COPY whose rows divide by zero in the view */
		const char *zero = "4\t1\n4\t0\n";
		r = th_copy_in(a, sql, zero, strlen(zero), 0);
		cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
		cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_SQLSTATE), "22012");
		PQclear(r);
		expect_totals(c, conns, all, 2);
		expect_totals(c, conns, div, 2);

		/* the same connection still works, for COPY and INSERT */
		len = 0;
		for (int i = 1; i <= 1000; i++)
			len += (size_t)snprintf(data + len, cap - len, "%d\t1\n", i % 7);
		th_copy_ok(a, sql, data, len, 1000);
		free(data);
		th_runf(a, "INSERT INTO f%d VALUES (9, 1)", d);
		expect_totals(c, conns, all, 1003);
		expect_totals(c, conns, div, 1003);
	}
	finish_all(c, conns);
	th_cluster_stop(c);
}

/* ---- raw PostgreSQL protocol, to misbehave as no library would ---------------------------- */

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Read one backend message within deadline_ms; returns its type or -1 (EOF, error, timeout). */
static int raw_read_msg(int fd, int deadline_ms)
{
	int64_t end = now_ms() + deadline_ms;
	uint8_t hdr[5];
	size_t got = 0;
	uint32_t need = 0;
	static uint8_t body[1 << 16];
	for (int phase = 0; phase < 2;) {
		size_t want = phase == 0 ? 5 : need;
		uint8_t *dst = phase == 0 ? hdr : body;
		if (got == want) {
			if (phase == 0) {
				need = ((uint32_t)hdr[1] << 24 | (uint32_t)hdr[2] << 16 |
					(uint32_t)hdr[3] << 8 | hdr[4]) -
				       4;
				if (need > sizeof body)
					return -1;
			}
			phase++;
			got = 0;
			continue;
		}
		struct pollfd p = {.fd = fd, .events = POLLIN};
		int left = (int)(end - now_ms());
		if (left <= 0 || poll(&p, 1, left) <= 0)
			return -1;
		ssize_t n = read(fd, dst + got, want - got);
		if (n <= 0)
			return -1;
		got += (size_t)n;
	}
	return hdr[0];
}

static bool raw_read_until(int fd, int type, int deadline_ms)
{
	int64_t end = now_ms() + deadline_ms;
	for (;;) {
		int left = (int)(end - now_ms());
		int t = raw_read_msg(fd, left > 0 ? left : 0);
		if (t < 0)
			return false;
		if (t == type)
			return true;
	}
}

static int raw_startup(int port)
{
	int fd = th_tcp_connect(port);
	cr_assert(fd >= 0, "connect to %d", port);
	uint8_t pkt[128];
	const char params[] = "user\0tally\0database\0tally\0";
	uint32_t len = 8 + sizeof params; /* includes the final NUL */
	tally_put_be32(pkt, len);
	tally_put_be32(pkt + 4, 196608);
	memcpy(pkt + 8, params, sizeof params);
	cr_assert(th_write_all(fd, pkt, len));
	cr_assert(raw_read_until(fd, 'Z', 10000), "no ReadyForQuery on the raw connection");
	return fd;
}

static void raw_send(int fd, char type, const void *body, size_t n)
{
	uint8_t hdr[5];
	hdr[0] = (uint8_t)type;
	tally_put_be32(hdr + 1, (uint32_t)(n + 4));
	th_write_all(fd, hdr, 5);
	th_write_all(fd, body, n);
}

/* Wait for the server to close the connection (EOF or reset) within deadline_ms. */
static bool raw_wait_closed(int fd, int deadline_ms)
{
	int64_t end = now_ms() + deadline_ms;
	char buf[4096];
	for (;;) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		int left = (int)(end - now_ms());
		if (left <= 0)
			return false;
		if (poll(&p, 1, left) <= 0)
			continue;
		ssize_t n = read(fd, buf, sizeof buf);
		if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN))
			return true;
	}
}

struct drained {
	int fd;
	pid_t pid;
	bool exited;
};

/* psql has read everything we wrote to its stdin (or has already exited). */
static bool pipe_drained(void *arg)
{
	struct drained *d = arg;
	int n = 0, st;
	if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
		d->exited = true;
		return true;
	}
	return ioctl(d->fd, FIONREAD, &n) == 0 && n == 0;
}

Test(bad_input, vanished_clients_apply_nothing, .fini = th_fini, .timeout = 120)
{
	th_cluster *c = th_cluster_start(2, NULL);
	PGconn *conns[TH_MAX_NODES];
	connect_all(c, conns);
	for (int d = 0; d < 2; d++) {
		th_node *n = d == 0 ? th_coord(c) : th_worker(c, 1);
		PGconn *a = conns[d == 0 ? 0 : 1];
		char view[16];
		snprintf(view, sizeof view, "gv%d", d);
		th_runf(a, "CREATE STREAM g%d (k integer, v integer)", d);
		th_runf(a, "CREATE CONTINUOUS VIEW gv%d AS SELECT k, count(*) FROM g%d GROUP BY k",
			d, d);
		/* 1: a raw client sends half a COPY and hangs up (write side closed) */
		int fd = raw_startup(n->sql_port);
		char q[64];
		int ql = snprintf(q, sizeof q, "COPY g%d FROM STDIN", d);
		raw_send(fd, 'Q', q, (size_t)ql + 1);
		cr_assert(raw_read_until(fd, 'G', 10000), "no CopyInResponse");
		for (int i = 0; i < 500; i++) {
			char row[32];
			int rl = snprintf(row, sizeof row, "%d\t%d\n", i % 5, i);
			raw_send(fd, 'd', row, (size_t)rl);
		}
		shutdown(fd, SHUT_WR);
		cr_assert(raw_wait_closed(fd, 10000), "server kept a half-closed COPY open");
		close(fd);
		expect_totals(c, conns, view, 0);
		/* 2: the same, but the socket is simply closed mid-message */
		fd = raw_startup(n->sql_port);
		raw_send(fd, 'Q', q, (size_t)ql + 1);
		cr_assert(raw_read_until(fd, 'G', 10000));
		raw_send(fd, 'd', "1\t1\n", 4);
		th_write_all(fd,
			     "d\0\0\0\x20"
			     "2\t",
			     7); /* a CopyData cut short */
		close(fd);
		/* 3: a psql child killed in the middle of a COPY */
		char copy_cmd[64];
		snprintf(copy_cmd, sizeof copy_cmd, "COPY g%d FROM STDIN", d);
		char port[16];
		snprintf(port, sizeof port, "%d", n->sql_port);
		int pin[2];
		cr_assert(pipe(pin) == 0);
		pid_t pid = fork();
		cr_assert(pid >= 0);
		if (pid == 0) {
			dup2(pin[0], 0);
			close(pin[1]);
			int devnull = open("/dev/null", O_WRONLY);
			dup2(devnull, 1);
			execl("/usr/bin/psql", "psql", "-X", "-h", "127.0.0.1", "-p", port, "-U",
			      "tally", "-d", "tally", "-c", copy_cmd, (char *)NULL);
			_exit(127);
		}
		close(pin[0]);
		for (int i = 0; i < 2000; i++) {
			char row[32];
			int rl = snprintf(row, sizeof row, "%d\t%d\n", i % 5, i);
			if (write(pin[1], row, (size_t)rl) != rl)
				break; /* psql gave up early: fine, it is killed below anyway */
		}
		struct drained dr = {pin[1], pid, false};
		cr_assert(th_wait_until(pipe_drained, &dr, 10000), "psql did not read its input");
		if (!dr.exited) {
			kill(pid, SIGKILL);
			int st;
			cr_assert(th_wait_pid(pid, &st, 10000));
		}
		close(pin[1]);

		/* the node serves a new client, and none of those rows counted */
		PGconn *fresh = th_connect(n);
		th_runf(fresh, "INSERT INTO g%d VALUES (7, 7)", d);
		PQfinish(fresh);
		expect_totals(c, conns, view, 1);
	}
	finish_all(c, conns);
	for (int i = 0; i < c->nnodes; i++)
		cr_assert(th_node_alive(&c->nodes[i]), "%s died", c->nodes[i].name);
	th_cluster_stop(c);
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

static void random_bytes(uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)rng();
}

/* Garbage at the SQL port of node n; asserts the node drops what it must drop. */
static void sql_port_garbage(th_node *n)
{
	static uint8_t junk[65536];
	/* random bytes, several times */
	for (int i = 0; i < 5; i++) {
		int fd = th_tcp_connect(n->sql_port);
		cr_assert(fd >= 0);
		random_bytes(junk, sizeof junk);
		th_write_all(fd, junk, (size_t)(1 + rng() % sizeof junk));
		close(fd);
	}
	/* a startup packet claiming 2 GB */
	int fd = th_tcp_connect(n->sql_port);
	cr_assert(fd >= 0);
	uint8_t big[8];
	tally_put_be32(big, 0x7fffffff);
	tally_put_be32(big + 4, 196608);
	th_write_all(fd, big, 8);
	cr_assert(raw_wait_closed(fd, 10000), "%s kept a 2 GB startup packet open", n->name);
	close(fd);
	/* a startup packet with a tiny length */
	fd = th_tcp_connect(n->sql_port);
	tally_put_be32(big, 2);
	th_write_all(fd, big, 4);
	cr_assert(raw_wait_closed(fd, 10000), "%s kept a 2-byte startup packet open", n->name);
	close(fd);
	/* an unknown protocol version */
	fd = th_tcp_connect(n->sql_port);
	tally_put_be32(big, 8);
	tally_put_be32(big + 4, 0x00090000);
	th_write_all(fd, big, 8);
	cr_assert(raw_wait_closed(fd, 10000), "%s accepted protocol 9.0", n->name);
	close(fd);
	/* after startup: a query claiming 2 GB, one with a length below 4, an unknown type */
	const uint8_t bad_msgs[][5] = {
	    {'Q', 0x7f, 0xff, 0xff, 0xf0},
	    {'Q', 0, 0, 0, 2},
	    {'\x01', 0, 0, 0, 4},
	};
	for (size_t i = 0; i < sizeof bad_msgs / sizeof bad_msgs[0]; i++) {
		fd = raw_startup(n->sql_port);
		th_write_all(fd, bad_msgs[i], 5);
		cr_assert(raw_wait_closed(fd, 10000), "%s kept bad message %zu open", n->name, i);
		close(fd);
	}
	/* a query that is not NUL-terminated inside its frame, then garbage */
	fd = raw_startup(n->sql_port);
	raw_send(fd, 'Q', "SELECT", 6);
	random_bytes(junk, 4096);
	th_write_all(fd, junk, 4096);
	close(fd);
	/* SSLRequest then garbage */
	fd = th_tcp_connect(n->sql_port);
	tally_put_be32(big, 8);
	tally_put_be32(big + 4, 80877103);
	th_write_all(fd, big, 8);
	random_bytes(junk, 1024);
	th_write_all(fd, junk, 1024);
	close(fd);
}

/* Garbage at a node's NNG data port: raw bytes, and SP handshakes of several protocols
 * followed by oversized and malformed messages. */
static void data_port_garbage(th_node *n)
{
	static uint8_t junk[16384];
	for (int i = 0; i < 3; i++) {
		int fd = th_tcp_connect(n->data_port);
		cr_assert(fd >= 0, "connect to %s's data port %d", n->name, n->data_port);
		random_bytes(junk, sizeof junk);
		th_write_all(fd, junk, sizeof junk);
		close(fd);
	}
	const uint16_t protos[] = {0x10, 0x11, 0x20, 0x21, 0x30, 0x31,
				   0x50, 0x51, 0x62, 0x63, 0x70};
	for (size_t i = 0; i < sizeof protos / sizeof protos[0]; i++) {
		for (int variant = 0; variant < 3; variant++) {
			int fd = th_tcp_connect(n->data_port);
			cr_assert(fd >= 0);
			uint8_t hs[8] = {
			    0, 'S', 'P', 0, (uint8_t)(protos[i] >> 8), (uint8_t)protos[i], 0, 0};
			th_write_all(fd, hs, 8);
			uint8_t msg[8 + 256];
			if (variant == 0) {
				tally_put_be64(msg, 0x7fffffffffffffffull); /* huge */
				th_write_all(fd, msg, 8);
			} else {
				/* a small message: (request id) + random or header-like garbage */
				size_t len = variant == 1 ? 256 : 40;
				tally_put_be64(msg, len);
				random_bytes(msg + 8, len);
				tally_put_be32(msg + 8, 0x80000001u);
				if (variant == 2) {
					/* plausible header with an absurd body length */
					tally_put_be32(msg + 12, 0x54414c59u);
					tally_put_be32(msg + 28, 0xfffffff0u);
				}
				th_write_all(fd, msg, 8 + len);
			}
			raw_wait_closed(fd, 200); /* give it a moment to choke, if it will */
			close(fd);
		}
	}
}

Test(bad_input, garbage_on_sql_and_data_ports, .fini = th_fini, .timeout = 180)
{
	th_cluster *c = th_cluster_start(2, NULL);
	PGconn *a = th_connect(th_coord(c));
	th_run(a, "CREATE STREAM z (k integer)");
	th_run(a, "CREATE CONTINUOUS VIEW zv AS SELECT k, count(*) FROM z GROUP BY k");
	th_run(a, "INSERT INTO z VALUES (1), (2)");
	for (int i = 0; i < c->nnodes; i++)
		sql_port_garbage(&c->nodes[i]);
	for (int i = 0; i < c->nnodes; i++)
		data_port_garbage(&c->nodes[i]);
	/* every node is alive, serves SQL, ingests and reads across the cluster */
	PGconn *conns[TH_MAX_NODES];
	for (int i = 0; i < c->nnodes; i++) {
		cr_assert(th_node_alive(&c->nodes[i]), "%s died", c->nodes[i].name);
		conns[i] = th_connect(&c->nodes[i]);
		th_run(conns[i], "INSERT INTO z VALUES (3)");
	}
	PQfinish(a);
	for (int i = 0; i < c->nnodes; i++) {
		PGresult *r = th_exec_ok(conns[i], "SELECT k, count FROM zv ORDER BY k");
		cr_assert_eq(PQntuples(r), 3);
		char want[16];
		snprintf(want, sizeof want, "%d", c->nnodes);
		cr_assert_str_eq(PQgetvalue(r, 2, 1), want);
		PQclear(r);
		r = th_exec_ok(conns[i], "SELECT name, state FROM pipeline_cluster.nodes");
		for (int row = 0; row < PQntuples(r); row++)
			cr_assert_str_eq(PQgetvalue(r, row, 1), "up", "%s is %s",
					 PQgetvalue(r, row, 0), PQgetvalue(r, row, 1));
		PQclear(r);
	}
	finish_all(c, conns);
	for (int i = 0; i < c->nnodes; i++)
		cr_assert(th_node_alive(&c->nodes[i]), "%s died", c->nodes[i].name);
	th_cluster_stop(c);
}
