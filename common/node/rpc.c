/*
 * rpc.c - node-to-node request/reply over NNG (req0/rep0 on TCP).
 *
 * Client: one req0 socket per peer address, dialed in the background so NNG reconnects by
 * itself; each call opens its own context, so any number of threads can have requests in
 * flight on one socket. tally_rpc_call_many starts every send, then every receive, and waits
 * for them all: a fan-out costs one round trip, not one per peer. Automatic resend is off:
 * a request is delivered at most once by the transport (exactly-once comes from batch ids).
 *
 * Deadlines are ours, not NNG's: NNG 1.5's aio timeouts can fire arbitrarily late (its
 * expiration queue is not kept in order, nanomsg/nng#1486), which stalled heartbeats for tens
 * of seconds and hung shutdowns. Each aio completes into a callback that signals a condvar;
 * the caller waits on it with its own deadline and cancels the aio when it passes
 * (nng_aio_cancel completes it at once, through the protocol's cancel function).
 *
 * Server: one rep0 socket and a pool of service threads, each owning one context and looping
 * receive -> handle -> reply. Handlers run on those threads, never inside NNG callbacks.
 */
#include "tally/node.h"

#include <nng/protocol/reqrep0/rep.h>
#include <nng/protocol/reqrep0/req.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* nng_close, but give up after ms: NNG 1.5 can wedge a socket (see below), and a node
 * shutting down must not hang on it: everything durable is on disk by then or after. */
typedef struct close_job {
	nng_socket sock;
	bool done;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int refs; /* the closer thread and the waiter; the last one frees */
} close_job;

static void close_job_put(close_job *j)
{
	pthread_mutex_lock(&j->mu);
	bool last = --j->refs == 0;
	pthread_mutex_unlock(&j->mu);
	if (last) {
		pthread_cond_destroy(&j->cv);
		pthread_mutex_destroy(&j->mu);
		free(j);
	}
}

static void *close_main(void *arg)
{
	close_job *j = arg;
	nng_close(j->sock);
	pthread_mutex_lock(&j->mu);
	j->done = true;
	pthread_cond_broadcast(&j->cv);
	pthread_mutex_unlock(&j->mu);
	close_job_put(j);
	return NULL;
}

static void close_bounded(nng_socket sock, int ms, const char *what)
{
	close_job *j = tally_xcalloc(1, sizeof *j);
	j->sock = sock;
	j->refs = 2;
	pthread_mutex_init(&j->mu, NULL);
	tally_cond_init_mono(&j->cv);
	pthread_t th;
	if (pthread_create(&th, NULL, close_main, j) != 0) {
		j->refs = 1;
		nng_close(sock);
		close_job_put(j);
		return;
	}
	pthread_detach(th);
	int64_t deadline = tally_mono_us() + (int64_t)ms * 1000;
	pthread_mutex_lock(&j->mu);
	while (!j->done && tally_mono_us() < deadline) {
		struct timespec ts = tally_mono_ts(deadline);
		pthread_cond_timedwait(&j->cv, &j->mu, &ts);
	}
	bool done = j->done;
	pthread_mutex_unlock(&j->mu);
	if (!done)
		tally_log_warn(
		    "rpc: closing the %s socket did not finish in %d ms; going on without", what,
		    ms);
	close_job_put(j);
}

/* Close a replaced socket later, in the background: by then every call that took it before
 * the replacement has finished (their deadlines are far shorter), so no context of ours is
 * in use on it when it closes. */
static void *retire_main(void *arg)
{
	nng_socket *s = arg;
	struct timespec ts = {15, 0};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
	nng_close(*s);
	free(s);
	return NULL;
}

static void rpc_retire(nng_socket sock)
{
	nng_socket *s = tally_xmalloc(sizeof *s);
	*s = sock;
	pthread_t th;
	if (pthread_create(&th, NULL, retire_main, s) != 0) {
		free(s); /* left open: better than blocking here */
		return;
	}
	pthread_detach(th);
}

typedef struct peer {
	char addr[128];
	nng_socket sock;
	int send_timeouts; /* sends in a row that found no connection in time */
} peer;

struct tally_rpc {
	pthread_mutex_t mu;
	peer *peers;
	int npeers, cap;
};

tally_rpc *tally_rpc_alloc(void)
{
	tally_rpc *r = tally_xcalloc(1, sizeof *r);
	pthread_mutex_init(&r->mu, NULL);
	return r;
}

void tally_rpc_free(tally_rpc *r)
{
	if (!r)
		return;
	for (int i = 0; i < r->npeers; i++)
		close_bounded(r->peers[i].sock, 2000, r->peers[i].addr);
	free(r->peers);
	pthread_mutex_destroy(&r->mu);
	free(r);
}

static int rpc_socket(tally_rpc *r, const char *addr, nng_socket *out)
{
	pthread_mutex_lock(&r->mu);
	for (int i = 0; i < r->npeers; i++) {
		if (strcmp(r->peers[i].addr, addr) == 0) {
			*out = r->peers[i].sock;
			pthread_mutex_unlock(&r->mu);
			return 0;
		}
	}
	nng_socket s;
	int rv = nng_req0_open(&s);
	if (rv == 0) {
		nng_socket_set_size(s, NNG_OPT_RECVMAXSZ, TALLY_MSG_MAX);
		nng_socket_set_ms(s, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
		nng_socket_set_ms(s, NNG_OPT_RECONNMINT, 20);
		nng_socket_set_ms(s, NNG_OPT_RECONNMAXT, 500);
		rv = nng_dial(s, addr, NULL, NNG_FLAG_NONBLOCK);
		if (rv != 0)
			nng_close(s);
	}
	if (rv != 0) {
		pthread_mutex_unlock(&r->mu);
		return rv;
	}
	if (r->npeers == r->cap) {
		r->cap = r->cap ? r->cap * 2 : 8;
		r->peers = tally_xrealloc(r->peers, (size_t)r->cap * sizeof *r->peers);
	}
	tally_strlcpy(r->peers[r->npeers].addr, addr, sizeof r->peers[r->npeers].addr);
	r->peers[r->npeers].sock = s;
	r->peers[r->npeers].send_timeouts = 0;
	r->npeers++;
	*out = s;
	pthread_mutex_unlock(&r->mu);
	return 0;
}

static void call_fail(tally_rpc_call *c, int rv, const char *what)
{
	c->rc = -1;
	tally_strlcpy(c->sqlstate, TALLY_SQLSTATE_UNAVAILABLE, sizeof c->sqlstate);
	snprintf(c->errmsg, sizeof c->errmsg, "could not %s node %s (%s): %s", what,
		 c->peer ? c->peer : "?", c->addr, nng_strerror(rv));
}

/* Completion token of one call's aio. The callback and the waiter share it under tok_mu; if
 * the waiter gives up on an operation NNG never completes, it marks the token abandoned and
 * the callback (should it ever run) frees it. One mutex and condvar serve every call: a
 * completion wakes all waiting callers, each rechecks its own tokens. */
typedef struct rpc_tok {
	bool done;
	bool abandoned;
} rpc_tok;

static pthread_mutex_t tok_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t tok_cv;
static pthread_once_t tok_once = PTHREAD_ONCE_INIT;

static void tok_init(void)
{
	tally_cond_init_mono(&tok_cv);
}

/* Runs on an NNG thread when a call's send or receive completes. */
static void rpc_aio_done(void *arg)
{
	rpc_tok *t = arg;
	pthread_mutex_lock(&tok_mu);
	if (t->abandoned) {
		pthread_mutex_unlock(&tok_mu);
		free(t);
		return;
	}
	t->done = true;
	pthread_cond_broadcast(&tok_cv);
	pthread_mutex_unlock(&tok_mu);
}

/* Start an operation on c's aio (op is nng_ctx_send or nng_ctx_recv). */
static void rpc_start(tally_rpc_call *c, void (*op)(nng_ctx, nng_aio *), int timeout_ms)
{
	rpc_tok *t = c->tok;
	pthread_mutex_lock(&tok_mu);
	t->done = false;
	pthread_mutex_unlock(&tok_mu);
	nng_aio_set_timeout(c->aio, timeout_ms);
	op(c->ctx, c->aio);
}

/* A peer socket that would not complete a cancelled operation is wedged: forget it (it is
 * leaked, not closed: closing it could hang too) so that the next call dials a new one. */
static void rpc_forget(tally_rpc *r, const char *addr)
{
	pthread_mutex_lock(&r->mu);
	for (int i = 0; i < r->npeers; i++) {
		if (strcmp(r->peers[i].addr, addr) == 0) {
			r->peers[i] = r->peers[--r->npeers];
			break;
		}
	}
	pthread_mutex_unlock(&r->mu);
}

/* After a send: one that found no connection for its whole timeout counts against the
 * socket. NNG 1.5's dialer can stay stuck after its peer restarted on the same address, so
 * after three in a row the socket is replaced by a fresh one. */
static void rpc_note_send(tally_rpc *r, const char *addr, bool timed_out)
{
	pthread_mutex_lock(&r->mu);
	for (int i = 0; i < r->npeers; i++) {
		if (strcmp(r->peers[i].addr, addr) != 0)
			continue;
		if (!timed_out) {
			r->peers[i].send_timeouts = 0;
		} else if (++r->peers[i].send_timeouts >= 3) {
			tally_log_warn("rpc: no connection to %s for three sends in a row; dialing "
				       "it again on a new socket",
				       addr);
			rpc_retire(r->peers[i].sock);
			r->peers[i] = r->peers[--r->npeers];
		}
		break;
	}
	pthread_mutex_unlock(&r->mu);
}

/* Wait until c's operation completes; at the deadline cancel it. NNG 1.5 normally completes
 * a cancelled operation at once; one that still has not completed 2 s later is abandoned
 * (returns false: its aio and context are leaked, and its socket replaced). */
static bool rpc_wait(tally_rpc *r, tally_rpc_call *c, int64_t deadline_us)
{
	rpc_tok *t = c->tok;
	bool cancelled = false;
	pthread_mutex_lock(&tok_mu);
	while (!t->done) {
		if (tally_mono_us() >= deadline_us) {
			if (cancelled) {
				t->abandoned = true;
				pthread_mutex_unlock(&tok_mu);
				tally_log_warn(
				    "rpc: an operation to %s did not complete when cancelled; "
				    "abandoning it and its connection",
				    c->addr);
				c->tok = NULL;
				c->aio = NULL;
				c->ctx_open = false;
				rpc_forget(r, c->addr);
				return false;
			}
			pthread_mutex_unlock(&tok_mu);
			c->cancelled = cancelled = true;
			nng_aio_cancel(c->aio);
			pthread_mutex_lock(&tok_mu);
			deadline_us = tally_mono_us() + 2000000;
			continue;
		}
		struct timespec ts = tally_mono_ts(deadline_us);
		pthread_cond_timedwait(&tok_cv, &tok_mu, &ts);
	}
	pthread_mutex_unlock(&tok_mu);
	return true;
}

/* The result of c's completed operation; a cancellation of ours reads as a timeout. */
static int rpc_result(const tally_rpc_call *c)
{
	int rv = nng_aio_result(c->aio);
	return rv == NNG_ECANCELED && c->cancelled ? NNG_ETIMEDOUT : rv;
}

void tally_rpc_call_many(tally_rpc *r, tally_rpc_call *calls, int n, int timeout_ms)
{
	pthread_once(&tok_once, tok_init);
	int64_t deadline = tally_mono_us() + (int64_t)timeout_ms * 1000;
	for (int i = 0; i < n; i++) {
		tally_rpc_call *c = &calls[i];
		c->rc = 1; /* pending */
		c->reply = NULL;
		c->ctx_open = false;
		c->aio = NULL;
		c->tok = NULL;
		c->cancelled = false;
		c->errmsg[0] = 0;
		c->sqlstate[0] = 0;
		nng_socket s;
		int rv = rpc_socket(r, c->addr, &s);
		if (rv == 0)
			rv = nng_ctx_open(&c->ctx, s);
		if (rv != 0) {
			call_fail(c, rv, "connect to");
			continue;
		}
		c->ctx_open = true;
		c->tok = tally_xcalloc(1, sizeof(rpc_tok));
		if ((rv = nng_aio_alloc(&c->aio, rpc_aio_done, c->tok)) != 0) {
			call_fail(c, rv, "send to");
			continue;
		}
		nng_msg *m;
		if ((rv = nng_msg_alloc(&m, c->req.len)) != 0) {
			call_fail(c, rv, "send to");
			continue;
		}
		memcpy(nng_msg_body(m), c->req.data, c->req.len);
		nng_aio_set_msg(c->aio, m);
		rpc_start(c, nng_ctx_send, timeout_ms);
	}
	for (int i = 0; i < n; i++) {
		tally_rpc_call *c = &calls[i];
		if (c->rc != 1)
			continue;
		if (!rpc_wait(r, c, deadline)) {
			call_fail(c, NNG_ETIMEDOUT, "send to");
			continue;
		}
		int rv = rpc_result(c);
		rpc_note_send(r, c->addr, rv == NNG_ETIMEDOUT);
		if (rv != 0) {
			nng_msg *m = nng_aio_get_msg(c->aio);
			if (m)
				nng_msg_free(m);
			call_fail(c, rv, "send to");
			continue;
		}
		rpc_start(c, nng_ctx_recv, timeout_ms);
	}
	deadline = tally_mono_us() + (int64_t)timeout_ms * 1000;
	for (int i = 0; i < n; i++) {
		tally_rpc_call *c = &calls[i];
		if (c->rc != 1)
			continue;
		if (!rpc_wait(r, c, deadline)) {
			call_fail(c, NNG_ETIMEDOUT, "get a reply in time from");
			continue;
		}
		int rv = rpc_result(c);
		if (rv != 0) {
			call_fail(c, rv,
				  rv == NNG_ETIMEDOUT ? "get a reply in time from"
						      : "receive from");
			continue;
		}
		c->reply = nng_aio_get_msg(c->aio);
		if (tally_msg_open(nng_msg_body(c->reply), nng_msg_len(c->reply), &c->hdr,
				   &c->body) != 0) {
			c->rc = -1;
			tally_strlcpy(c->sqlstate, TALLY_SQLSTATE_INTERNAL, sizeof c->sqlstate);
			snprintf(c->errmsg, sizeof c->errmsg, "malformed reply from node %s",
				 c->peer ? c->peer : c->addr);
			continue;
		}
		if (c->hdr.type == TALLY_MSG_ERROR) {
			c->rc = -1;
			if (tally_msg_get_error(&c->body, c->sqlstate, c->errmsg,
						sizeof c->errmsg) != 0) {
				tally_strlcpy(c->sqlstate, TALLY_SQLSTATE_INTERNAL,
					      sizeof c->sqlstate);
				snprintf(c->errmsg, sizeof c->errmsg,
					 "malformed error reply from node %s",
					 c->peer ? c->peer : c->addr);
			}
			continue;
		}
		c->rc = 0;
	}
}

void tally_rpc_calls_done(tally_rpc_call *calls, int n)
{
	for (int i = 0; i < n; i++) {
		tally_rpc_call *c = &calls[i];
		if (c->reply)
			nng_msg_free(c->reply);
		c->reply = NULL;
		if (c->aio)
			nng_aio_free(c->aio); /* waits for a callback still running */
		c->aio = NULL;
		free(c->tok);
		c->tok = NULL;
		if (c->ctx_open)
			nng_ctx_close(c->ctx);
		c->ctx_open = false;
	}
}

/* ---- server ---------------------------------------------------------------------------------- */

struct tally_rpc_server {
	nng_socket sock;
	nng_listener listener;
	char addr[128];
	int nthreads;
	pthread_t *threads;
	tally_rpc_handler fn;
	void *ctx;
	int stopping;	    /* atomic */
	pthread_mutex_t mu; /* guards aios */
	nng_aio **aios;	    /* each service thread's receive aio while it runs */
	int next_slot;	    /* atomic: service threads claim their slot */
	int exited;	    /* atomic: service threads gone */
};

/* Service threads wait for requests without waking up in between (each wake-up costs NNG's
 * timer thread): a shutdown cancels their receives. The socket is closed only after they are
 * all gone, because NNG 1.5 can crash on a context used while its socket closes. The timeout
 * is a safety net for a cancel that came just before a receive began. */
#define RPC_POLL_MS 5000

void tally_rpc_reply_error(tally_buf *b, uint64_t req_id, uint64_t epoch, const char *sqlstate,
			   const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	tally_msg_begin(b, TALLY_MSG_ERROR, req_id, epoch);
	tally_msg_put_error(b, sqlstate, msg);
	tally_msg_end(b);
}

static void *service_main(void *arg)
{
	tally_rpc_server *s = arg;
	nng_ctx ctx;
	nng_aio *aio;
	if (nng_ctx_open(&ctx, s->sock) != 0 || nng_aio_alloc(&aio, NULL, NULL) != 0) {
		tally_log_error("rpc: could not open a service context");
		__atomic_add_fetch(&s->exited, 1, __ATOMIC_RELEASE);
		return NULL;
	}
	int slot = __atomic_fetch_add(&s->next_slot, 1, __ATOMIC_RELAXED);
	pthread_mutex_lock(&s->mu);
	s->aios[slot] = aio;
	pthread_mutex_unlock(&s->mu);
	tally_buf reply = {0};
	while (!__atomic_load_n(&s->stopping, __ATOMIC_ACQUIRE)) {
		nng_aio_set_timeout(aio, RPC_POLL_MS);
		nng_ctx_recv(ctx, aio);
		nng_aio_wait(aio);
		int rv = nng_aio_result(aio);
		if (rv == NNG_ECLOSED)
			break;
		if (rv != 0)
			continue; /* timeout: look at stopping again */
		nng_msg *m = nng_aio_get_msg(aio);
		tally_msg_hdr h;
		tally_rd r;
		tally_buf_reset(&reply);
		if (tally_msg_open(nng_msg_body(m), nng_msg_len(m), &h, &r) != 0) {
			/* Garbage from a peer: log and drop it; the peer gets no reply. */
			tally_log_warn("rpc: dropped a malformed message of %zu bytes",
				       nng_msg_len(m));
			nng_msg_free(m);
			continue;
		}
		s->fn(s->ctx, &h, &r, &reply);
		nng_msg_free(m);
		if (reply.len == 0)
			continue;
		nng_msg *out;
		if (nng_msg_alloc(&out, reply.len) != 0)
			continue;
		memcpy(nng_msg_body(out), reply.data, reply.len);
		nng_aio_set_msg(aio, out);
		nng_aio_set_timeout(aio, 5000);
		nng_ctx_send(ctx, aio);
		nng_aio_wait(aio);
		if (nng_aio_result(aio) != 0)
			nng_msg_free(out);
		if (reply.cap > (8u << 20))
			tally_buf_free(&reply); /* don't pin a large read reply */
	}
	tally_buf_free(&reply);
	pthread_mutex_lock(&s->mu);
	s->aios[slot] = NULL;
	pthread_mutex_unlock(&s->mu);
	nng_aio_free(aio);
	nng_ctx_close(ctx);
	__atomic_add_fetch(&s->exited, 1, __ATOMIC_RELEASE);
	return NULL;
}

int tally_rpc_server_open(const char *host, int port, int nthreads, tally_rpc_handler fn, void *ctx,
			  tally_rpc_server **out)
{
	tally_rpc_server *s = tally_xcalloc(1, sizeof *s);
	s->fn = fn;
	s->ctx = ctx;
	int rv = nng_rep0_open(&s->sock);
	if (rv != 0) {
		tally_log_error("rpc: could not open socket: %s", nng_strerror(rv));
		free(s);
		return -1;
	}
	nng_socket_set_size(s->sock, NNG_OPT_RECVMAXSZ, TALLY_MSG_MAX);
	char url[160];
	snprintf(url, sizeof url, "tcp://%s:%d", host, port);
	if ((rv = nng_listen(s->sock, url, &s->listener, 0)) != 0) {
		tally_log_error("rpc: could not listen on %s: %s", url, nng_strerror(rv));
		nng_close(s->sock);
		free(s);
		return -1;
	}
	int bound = 0;
	nng_listener_get_int(s->listener, NNG_OPT_TCP_BOUND_PORT, &bound);
	snprintf(s->addr, sizeof s->addr, "tcp://%s:%d", host, bound);
	s->nthreads = nthreads > 0 ? nthreads : 4;
	s->threads = tally_xcalloc((size_t)s->nthreads, sizeof *s->threads);
	s->aios = tally_xcalloc((size_t)s->nthreads, sizeof *s->aios);
	pthread_mutex_init(&s->mu, NULL);
	for (int i = 0; i < s->nthreads; i++)
		pthread_create(&s->threads[i], NULL, service_main, s);
	*out = s;
	return 0;
}

const char *tally_rpc_server_addr(const tally_rpc_server *s)
{
	return s->addr;
}

void tally_rpc_server_close(tally_rpc_server *s)
{
	if (!s)
		return;
	__atomic_store_n(&s->stopping, 1, __ATOMIC_RELEASE);
	/* wake the service threads; again until they are gone (a receive may begin just after a
	 * cancel) */
	int64_t deadline = tally_mono_us() + (int64_t)RPC_POLL_MS * 1000 + 1000000;
	while (__atomic_load_n(&s->exited, __ATOMIC_ACQUIRE) < s->nthreads &&
	       tally_mono_us() < deadline) {
		pthread_mutex_lock(&s->mu);
		for (int i = 0; i < s->nthreads; i++)
			if (s->aios[i])
				nng_aio_cancel(s->aios[i]);
		pthread_mutex_unlock(&s->mu);
		usleep(10000);
	}
	for (int i = 0; i < s->nthreads; i++)
		pthread_join(s->threads[i], NULL);
	close_bounded(s->sock, 3000, "server");
	free(s->threads);
	free(s->aios);
	pthread_mutex_destroy(&s->mu);
	free(s);
}
