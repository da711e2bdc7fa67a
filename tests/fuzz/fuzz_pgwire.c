/*
 * fuzz_pgwire.c - fuzz target for the PostgreSQL protocol server. One tally_pg_server runs
 * for the whole process on 127.0.0.1 (any free port) with a trivial handler: every query is
 * answered with one row, a query starting with "copy" reads COPY data until CopyDone or an
 * error. Each input is one client connection: its bytes are written as they are (startup
 * packet, messages, garbage), the write side is shut down, and the answer is read until the
 * server closes the connection or 2 s pass. The server must then still serve a new client
 * (an SSLRequest is answered 'N') and every connection thread must have ended.
 *
 * Set TALLY_FUZZ_PGWIRE_ABORT_ON_HANG=1 to abort (a finding) when the server does not close
 * a connection within the deadline after the client's end of input.
 */
#include "fuzz.h"

#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tally/pgwire.h"

#define DEADLINE_US 2000000

static void *h_open(void *server_ctx, tally_pg_conn *c, const char *user, const char *database,
		    tally_err *err)
{
	(void)server_ctx;
	(void)c;
	(void)err;
	FUZZ_CHECK(user && database);
	char *s = tally_xmalloc(1);
	*s = 'I';
	return s;
}

static void h_close(void *session)
{
	free(session);
}

static char h_txn(void *session)
{
	return *(char *)session;
}

static void h_query(void *session, tally_pg_conn *c, const char *sql)
{
	char *txn = session;
	tally_err e;
	tally_err_clear(&e);
	if (strncasecmp(sql, "copy", 4) == 0) {
		if (tally_pg_copy_in_begin(c, 2) != 0)
			return;
		size_t total = 0;
		for (;;) {
			const char *d;
			size_t n;
			int rc = tally_pg_copy_read(c, &d, &n, &e);
			if (rc < 0) {
				FUZZ_CHECK(tally_err_isset(&e));
				tally_pg_send_error(c, &e);
				return;
			}
			if (rc == 1)
				break;
			FUZZ_CHECK(n == 0 || d != NULL);
			total += n;
		}
		char tag[48];
		snprintf(tag, sizeof tag, "COPY %zu", total);
		tally_pg_send_command_complete(c, tag);
		return;
	}
	if (strncasecmp(sql, "begin", 5) == 0)
		*txn = 'T';
	else if (strncasecmp(sql, "commit", 6) == 0)
		*txn = 'I';
	else if (strncasecmp(sql, "error", 5) == 0) {
		tally_err_set(&e, TALLY_SQLSTATE_SYNTAX, "syntax error at or near \"%.20s\"", sql);
		e.position = 1;
		tally_pg_send_error(c, &e);
		if (*txn == 'T')
			*txn = 'E';
		return;
	}
	tally_pg_col col = {"q", TALLY_OID_TEXT, -1};
	tally_pg_send_row_description(c, 1, &col);
	const char *v = sql;
	uint32_t len = (uint32_t)strlen(sql);
	tally_pg_send_data_row(c, 1, &v, &len);
	tally_pg_send_command_complete(c, "SELECT 1");
}

static const tally_pg_handlers handlers = {
    .session_open = h_open, .query = h_query, .txn_status = h_txn, .session_close = h_close};

static tally_pg_server *srv; /* one server for the process, started once */
static int srv_port;
static bool abort_on_hang;
static pthread_once_t srv_once = PTHREAD_ONCE_INIT;

static void srv_start(void)
{
	signal(SIGPIPE, SIG_IGN); /* as the real nodes do */
	tally_log_set_level(TALLY_LOG_ERROR);
	const char *h = getenv("TALLY_FUZZ_PGWIRE_ABORT_ON_HANG");
	abort_on_hang = h && h[0] == '1';
	FUZZ_CHECK(tally_pg_server_open("127.0.0.1", 0, &handlers, NULL, &srv) == 0);
	srv_port = tally_pg_server_port(srv);
	FUZZ_CHECK(srv_port > 0);
}

static int dial(void)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	FUZZ_CHECK(fd >= 0);
	struct sockaddr_in sa;
	memset(&sa, 0, sizeof sa);
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t)srv_port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	/* Close with RST: thousands of connections a second would otherwise use up the
	 * ephemeral ports in TIME_WAIT and make connect fail (EADDRNOTAVAIL). */
	struct linger lg = {1, 0};
	FUZZ_CHECK(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0);
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
		fprintf(stderr, "fuzz_pgwire: connect to the server failed: %s\n", strerror(errno));
		abort();
	}
	return fd;
}

/* Write data (reading and discarding replies meanwhile, so that neither side blocks on a
 * full socket buffer), shut down the write side, read until EOF. Returns 0 at EOF, -1 when
 * the deadline passed first. */
static int exchange(int fd, const uint8_t *data, size_t size)
{
	int64_t deadline = tally_mono_us() + DEADLINE_US;
	size_t off = 0;
	bool wr_done = false;
	char buf[16384];
	for (;;) {
		if (!wr_done && off == size) {
			shutdown(fd, SHUT_WR);
			wr_done = true;
		}
		int64_t left = deadline - tally_mono_us();
		if (left <= 0)
			return -1;
		struct pollfd p = {fd, (short)(POLLIN | (wr_done ? 0 : POLLOUT)), 0};
		int rc = poll(&p, 1, (int)(left / 1000) + 1);
		if (rc < 0 && errno == EINTR)
			continue;
		if (rc <= 0)
			continue;
		if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
			ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
			if (n == 0)
				return 0;
			if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
				return 0; /* reset by the server: the connection is over */
		}
		if (!wr_done && (p.revents & POLLOUT)) {
			ssize_t n = send(fd, data + off, size - off, MSG_DONTWAIT | MSG_NOSIGNAL);
			if (n > 0)
				off += (size_t)n;
			else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
				wr_done = true; /* the server closed; read what is left */
		}
	}
}

/* The server still accepts and serves a client: SSLRequest is answered 'N'. */
static void check_alive(void)
{
	int fd = dial();
	static const uint8_t ssl_req[8] = {0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f};
	FUZZ_CHECK(send(fd, ssl_req, sizeof ssl_req, MSG_NOSIGNAL) == (ssize_t)sizeof ssl_req);
	char c = 0;
	struct pollfd p = {fd, POLLIN, 0};
	/* Generous: under connection churn a port reused from TIME_WAIT can cost a SYN retry. */
	FUZZ_CHECK(poll(&p, 1, 10000) == 1);
	FUZZ_CHECK(recv(fd, &c, 1, 0) == 1 && c == 'N');
	close(fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	pthread_once(&srv_once, srv_start);
	int fd = dial();
	int rc = exchange(fd, data, size);
	close(fd);
	if (rc != 0) {
		fprintf(stderr,
			"fuzz_pgwire: server did not close the connection within 2 s "
			"(input of %zu bytes)\n",
			size);
		if (abort_on_hang)
			abort();
	}
	check_alive();
	/* Every connection thread ends once its client is gone. */
	int64_t deadline = tally_mono_us() + DEADLINE_US;
	while (tally_pg_server_nconns(srv) > 0) {
		if (tally_mono_us() > deadline) {
			fprintf(stderr,
				"fuzz_pgwire: %d connection(s) still open 2 s after their "
				"clients left (input of %zu bytes)\n",
				tally_pg_server_nconns(srv), size);
			if (abort_on_hang)
				abort();
			break;
		}
		usleep(200);
	}
	return 0;
}
