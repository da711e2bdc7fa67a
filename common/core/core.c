/*
 * core.c - errors, byte buffers, bounds-checked readers, arenas, logging and clocks: the
 * small shared pieces every other module builds on.
 */
#include "tally/core.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* ---- errors ----------------------------------------------------------------------------- */

int tally_err_set(tally_err *e, const char *sqlstate, const char *fmt, ...)
{
	if (!e)
		return -1;
	memset(e, 0, sizeof *e);
	tally_strlcpy(e->sqlstate, sqlstate, sizeof e->sqlstate);
	e->severity = TALLY_SEV_ERROR;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(e->message, sizeof e->message, fmt, ap);
	va_end(ap);
	return -1;
}

int tally_err_detail(tally_err *e, const char *fmt, ...)
{
	if (!e)
		return -1;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(e->detail, sizeof e->detail, fmt, ap);
	va_end(ap);
	return -1;
}

int tally_err_hint(tally_err *e, const char *fmt, ...)
{
	if (!e)
		return -1;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(e->hint, sizeof e->hint, fmt, ap);
	va_end(ap);
	return -1;
}

void tally_err_clear(tally_err *e)
{
	if (e)
		memset(e, 0, sizeof *e);
}

/* ---- allocation --------------------------------------------------------------------------- */

static void oom(size_t n)
{
	fprintf(stderr, "tally: out of memory allocating %zu bytes\n", n);
	abort();
}

void *tally_xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p)
		oom(n);
	return p;
}

void *tally_xcalloc(size_t n, size_t m)
{
	void *p = calloc(n ? n : 1, m ? m : 1);
	if (!p)
		oom(n * m);
	return p;
}

void *tally_xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n ? n : 1);
	if (!q)
		oom(n);
	return q;
}

char *tally_xstrdup(const char *s)
{
	size_t n = strlen(s) + 1;
	char *p = tally_xmalloc(n);
	memcpy(p, s, n);
	return p;
}

size_t tally_strlcpy(char *dst, const char *src, size_t dstsz)
{
	size_t n = strlen(src);
	if (dstsz) {
		size_t c = n < dstsz - 1 ? n : dstsz - 1;
		memcpy(dst, src, c);
		dst[c] = 0;
	}
	return n;
}

/* ---- buffers ------------------------------------------------------------------------------ */

int tally_buf_reserve(tally_buf *b, size_t extra)
{
	if (extra > TALLY_BUF_MAX || b->len > TALLY_BUF_MAX - extra)
		return -1;
	size_t need = b->len + extra;
	if (need <= b->cap)
		return 0;
	size_t cap = b->cap ? b->cap : 256;
	while (cap < need)
		cap *= 2;
	b->data = tally_xrealloc(b->data, cap);
	b->cap = cap;
	return 0;
}

void tally_buf_free(tally_buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

void tally_buf_append(tally_buf *b, const void *p, size_t n)
{
	if (tally_buf_reserve(b, n) != 0)
		oom(n);
	if (n)
		memcpy(b->data + b->len, p, n);
	b->len += n;
}

void tally_buf_printf(tally_buf *b, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char tmp[256];
	int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n < sizeof tmp) {
		tally_buf_append(b, tmp, (size_t)n);
		return;
	}
	if (tally_buf_reserve(b, (size_t)n + 1) != 0)
		oom((size_t)n);
	va_start(ap, fmt);
	vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
}

void tally_buf_put_u16(tally_buf *b, uint16_t v)
{
	uint8_t t[2];
	tally_put_be16(t, v);
	tally_buf_append(b, t, 2);
}

void tally_buf_put_u32(tally_buf *b, uint32_t v)
{
	uint8_t t[4];
	tally_put_be32(t, v);
	tally_buf_append(b, t, 4);
}

void tally_buf_put_u64(tally_buf *b, uint64_t v)
{
	uint8_t t[8];
	tally_put_be64(t, v);
	tally_buf_append(b, t, 8);
}

void tally_buf_put_str(tally_buf *b, const char *s, uint32_t n)
{
	tally_buf_put_u32(b, n);
	tally_buf_append(b, s, n);
}

/* ---- readers ------------------------------------------------------------------------------ */

static inline int rd_need(tally_rd *r, size_t n)
{
	if (r->bad || r->len - r->off < n) {
		r->bad = true;
		return -1;
	}
	return 0;
}

int tally_rd_u8(tally_rd *r, uint8_t *v)
{
	if (rd_need(r, 1))
		return -1;
	*v = r->p[r->off++];
	return 0;
}

int tally_rd_u16(tally_rd *r, uint16_t *v)
{
	if (rd_need(r, 2))
		return -1;
	*v = tally_be16(r->p + r->off);
	r->off += 2;
	return 0;
}

int tally_rd_u32(tally_rd *r, uint32_t *v)
{
	if (rd_need(r, 4))
		return -1;
	*v = tally_be32(r->p + r->off);
	r->off += 4;
	return 0;
}

int tally_rd_u64(tally_rd *r, uint64_t *v)
{
	if (rd_need(r, 8))
		return -1;
	*v = tally_be64(r->p + r->off);
	r->off += 8;
	return 0;
}

int tally_rd_bytes(tally_rd *r, const uint8_t **p, size_t n)
{
	if (rd_need(r, n))
		return -1;
	*p = r->p + r->off;
	r->off += n;
	return 0;
}

int tally_rd_str(tally_rd *r, const uint8_t **p, uint32_t *n, uint32_t max)
{
	uint32_t len;
	size_t save = r->off;
	if (tally_rd_u32(r, &len))
		return -1;
	if (len > max) {
		r->off = save;
		r->bad = true;
		return -1;
	}
	if (tally_rd_bytes(r, p, len))
		return -1;
	*n = len;
	return 0;
}

/* ---- arena -------------------------------------------------------------------------------- */

struct tally_arena_block {
	tally_arena_block *next;
	size_t size; /* usable bytes after the header */
	size_t used;
	_Alignas(16) uint8_t mem[];
};

#define ARENA_BLOCK_MIN (64u << 10)

void *tally_arena_alloc(tally_arena *a, size_t n)
{
	n = (n + 15) & ~(size_t)15;
	if (n == 0)
		n = 16;
	if (a->limit && a->used + n > a->limit)
		return NULL;
	tally_arena_block *b = a->head;
	if (!b || b->size - b->used < n) {
		/* a kept block big enough, else a new one (growing with the arena) */
		tally_arena_block **pp = &a->spare;
		while (*pp && (*pp)->size < n)
			pp = &(*pp)->next;
		if (*pp) {
			b = *pp;
			*pp = b->next;
		} else {
			size_t sz = n > ARENA_BLOCK_MIN ? n : ARENA_BLOCK_MIN;
			if (a->head && a->head->size * 2 > sz && a->head->size < (16u << 20))
				sz = a->head->size * 2;
			b = malloc(sizeof *b + sz);
			if (!b)
				return NULL;
			b->size = sz;
		}
		b->used = 0;
		b->next = a->head;
		a->head = b;
	}
	void *p = b->mem + b->used;
	b->used += n;
	a->used += n;
	return p;
}

void *tally_arena_memdup(tally_arena *a, const void *p, size_t n)
{
	void *q = tally_arena_alloc(a, n);
	if (q && n && p)
		memcpy(q, p, n);
	return q;
}

char *tally_arena_strndup(tally_arena *a, const char *s, size_t n)
{
	char *q = tally_arena_alloc(a, n + 1);
	if (q) {
		memcpy(q, s, n);
		q[n] = 0;
	}
	return q;
}

void tally_arena_reset(tally_arena *a)
{
	/* Keep blocks up to TALLY_ARENA_KEEP bytes in all (spare ones first), free the rest. */
	size_t kept = 0;
	for (tally_arena_block *b = a->spare; b; b = b->next)
		kept += b->size;
	tally_arena_block *b = a->head;
	while (b) {
		tally_arena_block *next = b->next;
		if (kept + b->size <= TALLY_ARENA_KEEP) {
			b->next = a->spare;
			a->spare = b;
			kept += b->size;
		} else {
			free(b);
		}
		b = next;
	}
	a->head = NULL;
	a->used = 0;
}

static void arena_free_list(tally_arena_block *b)
{
	while (b) {
		tally_arena_block *n = b->next;
		free(b);
		b = n;
	}
}

void tally_arena_free(tally_arena *a)
{
	arena_free_list(a->head);
	arena_free_list(a->spare);
	a->head = NULL;
	a->spare = NULL;
	a->used = 0;
}

/* ---- logging ------------------------------------------------------------------------------ */

static tally_log_level log_level = TALLY_LOG_INFO;
static char log_name[TALLY_NAME_MAX] = "tally";
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;

void tally_log_set_level(tally_log_level lvl)
{
	log_level = lvl;
}
void tally_log_set_name(const char *node_name)
{
	tally_strlcpy(log_name, node_name, sizeof log_name);
}

void tally_log(tally_log_level lvl, const char *fmt, ...)
{
	if (lvl < log_level)
		return;
	static const char *names[] = {"DEBUG", "INFO", "WARNING", "ERROR"};
	char line[2048];
	int64_t now = tally_now_us();
	time_t sec = (time_t)(now / 1000000);
	struct tm tm;
	gmtime_r(&sec, &tm);
	int n = snprintf(line, sizeof line,
			 "%04d-%02d-%02d %02d:%02d:%02d.%03d UTC %s %s: ", tm.tm_year + 1900,
			 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
			 (int)(now / 1000 % 1000), log_name, names[lvl]);
	va_list ap;
	va_start(ap, fmt);
	if (n > 0 && (size_t)n < sizeof line)
		vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
	va_end(ap);
	pthread_mutex_lock(&log_mu);
	fprintf(stderr, "%s\n", line);
	fflush(stderr);
	pthread_mutex_unlock(&log_mu);
}

/* ---- clocks ------------------------------------------------------------------------------- */

int64_t tally_now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t tally_mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}
