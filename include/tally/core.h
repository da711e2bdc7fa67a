/*
 * core.h - the small things every module uses: SQL-facing errors, growable byte buffers,
 * per-statement arenas, logging, clocks and big-endian helpers.
 *
 * Conventions (see ../shared/spec/STYLE.md): fallible functions return 0 on success and a
 * nonzero value on failure; SQL-facing failures are described in a tally_err that the caller
 * owns and that is sent to the client in exactly one place (the session layer).
 */
#ifndef TALLY_CORE_H
#define TALLY_CORE_H

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define TALLY_NAME_MAX 64 /* identifiers, incl. NUL (PostgreSQL: 63 bytes) */

/* ---- SQL-facing errors -------------------------------------------------------------------- */

/* PostgreSQL SQLSTATE codes we use. */
#define TALLY_SQLSTATE_SYNTAX "42601"	       /* syntax_error */
#define TALLY_SQLSTATE_UNDEFINED_TABLE "42P01" /* undefined_table */
#define TALLY_SQLSTATE_UNDEFINED_COLUMN "42703"
#define TALLY_SQLSTATE_UNDEFINED_FUNCTION "42883"
#define TALLY_SQLSTATE_UNDEFINED_OBJECT "42704"
#define TALLY_SQLSTATE_DUPLICATE_TABLE "42P07"
#define TALLY_SQLSTATE_DUPLICATE_OBJECT "42710"
#define TALLY_SQLSTATE_DUPLICATE_COLUMN "42701"
#define TALLY_SQLSTATE_AMBIGUOUS_COLUMN "42702"
#define TALLY_SQLSTATE_DATATYPE_MISMATCH "42804"
#define TALLY_SQLSTATE_GROUPING "42803"	       /* grouping_error */
#define TALLY_SQLSTATE_INVALID_TEXT "22P02"    /* invalid_text_representation */
#define TALLY_SQLSTATE_DATETIME_FORMAT "22007" /* invalid_datetime_format */
#define TALLY_SQLSTATE_DATETIME_OVERFLOW "22008"
#define TALLY_SQLSTATE_OUT_OF_RANGE "22003" /* numeric_value_out_of_range */
#define TALLY_SQLSTATE_DIVISION_BY_ZERO "22012"
#define TALLY_SQLSTATE_STRING_TOO_LONG "22001"
#define TALLY_SQLSTATE_NOT_NULL "23502"
#define TALLY_SQLSTATE_BAD_COPY "22P04"		 /* bad_copy_file_format */
#define TALLY_SQLSTATE_INVALID_PARAMETER "22023" /* invalid_parameter_value */
#define TALLY_SQLSTATE_FEATURE_NOT_SUPPORTED "0A000"
#define TALLY_SQLSTATE_UNDEFINED_PARAMETER "42704"
#define TALLY_SQLSTATE_WRONG_OBJECT_TYPE "42809"
#define TALLY_SQLSTATE_PROTOCOL "08P01" /* protocol_violation */
#define TALLY_SQLSTATE_CONNECTION "08006"
#define TALLY_SQLSTATE_PROGRAM_LIMIT "54000"
#define TALLY_SQLSTATE_TOO_MANY_COLUMNS "54011"
#define TALLY_SQLSTATE_OUT_OF_MEMORY "53200"
#define TALLY_SQLSTATE_UNAVAILABLE "57P03" /* cannot_connect_now: shard/node unavailable */
#define TALLY_SQLSTATE_QUERY_CANCELED "57014"
#define TALLY_SQLSTATE_IN_FAILED_TXN "25P02"
#define TALLY_SQLSTATE_INTERNAL "XX000"
#define TALLY_SQLSTATE_DATA_CORRUPTED "XX001"
#define TALLY_SQLSTATE_INVALID_NAME "42602"
#define TALLY_SQLSTATE_INVALID_DEFINITION "42P17" /* invalid_object_definition */
#define TALLY_SQLSTATE_INSUFFICIENT_RESOURCES "53000"

typedef enum tally_severity {
	TALLY_SEV_ERROR = 0,
	TALLY_SEV_FATAL,
	TALLY_SEV_WARNING,
	TALLY_SEV_NOTICE,
} tally_severity;

/* An error (or notice) destined for a SQL client: PostgreSQL's ErrorResponse fields. */
typedef struct tally_err {
	char sqlstate[6]; /* "" means no error */
	tally_severity severity;
	int position; /* 1-based character position in the statement text, 0 = none */
	char message[512];
	char detail[512];
	char hint[256];
} tally_err;

/* Fill *e (severity ERROR, clears detail/hint/position) and return -1, so callers may write
 * `return tally_err_set(err, ...)`. e may be NULL (the error is then dropped). */
int tally_err_set(tally_err *e, const char *sqlstate, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Set the detail / hint / position of an already-set error; return -1. */
int tally_err_detail(tally_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int tally_err_hint(tally_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void tally_err_clear(tally_err *e);
static inline bool tally_err_isset(const tally_err *e)
{
	return e && e->sqlstate[0] != 0;
}

/* ---- growable byte buffer ----------------------------------------------------------------- */

/* A heap byte buffer. Zero-initialised is empty and valid. Appends abort the process only on
 * allocator failure of small sizes; tally_buf_reserve returns -1 beyond TALLY_BUF_MAX. */
typedef struct tally_buf {
	uint8_t *data;
	size_t len;
	size_t cap;
} tally_buf;

#define TALLY_BUF_MAX ((size_t)1 << 31)

int tally_buf_reserve(tally_buf *b, size_t extra); /* ensure cap >= len + extra; -1 if too big */
void tally_buf_free(tally_buf *b);		   /* releases memory; b is empty again */
static inline void tally_buf_reset(tally_buf *b)
{
	b->len = 0;
}
void tally_buf_append(tally_buf *b, const void *p, size_t n);
void tally_buf_printf(tally_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static inline void tally_buf_putc(tally_buf *b, uint8_t c)
{
	if (b->len + 1 > b->cap)
		tally_buf_reserve(b, 1);
	b->data[b->len++] = c;
}
void tally_buf_put_u16(tally_buf *b, uint16_t v); /* big-endian */
void tally_buf_put_u32(tally_buf *b, uint32_t v);
void tally_buf_put_u64(tally_buf *b, uint64_t v);
void tally_buf_put_str(tally_buf *b, const char *s, uint32_t n); /* u32 length + bytes */

/* Big-endian loads/stores. */
static inline uint16_t tally_be16(const uint8_t *p)
{
	return (uint16_t)((p[0] << 8) | p[1]);
}
static inline uint32_t tally_be32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint64_t tally_be64(const uint8_t *p)
{
	return ((uint64_t)tally_be32(p) << 32) | tally_be32(p + 4);
}
static inline void tally_put_be16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}
static inline void tally_put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}
static inline void tally_put_be64(uint8_t *p, uint64_t v)
{
	tally_put_be32(p, (uint32_t)(v >> 32));
	tally_put_be32(p + 4, (uint32_t)v);
}

/* A bounds-checked reader over a byte range. Every get fails (returns -1, sets r->bad) when
 * fewer bytes remain than asked for; once bad, every later get fails too. */
typedef struct tally_rd {
	const uint8_t *p;
	size_t len;
	size_t off;
	bool bad;
} tally_rd;

static inline void tally_rd_init(tally_rd *r, const void *p, size_t len)
{
	r->p = (const uint8_t *)p;
	r->len = len;
	r->off = 0;
	r->bad = false;
}
int tally_rd_u8(tally_rd *r, uint8_t *v);
int tally_rd_u16(tally_rd *r, uint16_t *v);
int tally_rd_u32(tally_rd *r, uint32_t *v);
int tally_rd_u64(tally_rd *r, uint64_t *v);
/* u32 length then bytes; *p points into the reader's memory. Fails if len > max. */
int tally_rd_str(tally_rd *r, const uint8_t **p, uint32_t *n, uint32_t max);
int tally_rd_bytes(tally_rd *r, const uint8_t **p, size_t n);
static inline size_t tally_rd_left(const tally_rd *r)
{
	return r->len - r->off;
}

/* ---- arena -------------------------------------------------------------------------------- */

/* A bump allocator for per-statement / per-batch memory (PostgreSQL's memory contexts).
 * Memory from it lives until tally_arena_reset or tally_arena_free. Not thread-safe: one owner.
 * tally_arena_alloc returns NULL only when the arena's limit (set by tally_arena_set_limit,
 * default unlimited) would be exceeded or the system is out of memory. */
typedef struct tally_arena_block tally_arena_block;
typedef struct tally_arena {
	tally_arena_block *head;
	tally_arena_block *spare; /* blocks kept by reset for reuse (up to TALLY_ARENA_KEEP) */
	size_t used;		  /* bytes handed out since the last reset */
	size_t limit;		  /* 0 = no limit */
} tally_arena;

/* Bytes of blocks an arena keeps across resets: a session's next statement reuses memory that
 * is already mapped instead of faulting in fresh pages. */
#define TALLY_ARENA_KEEP ((size_t)16 << 20)

void *tally_arena_alloc(tally_arena *a, size_t n); /* 16-byte aligned */
void *tally_arena_memdup(tally_arena *a, const void *p, size_t n);
char *tally_arena_strndup(tally_arena *a, const char *s, size_t n);
void tally_arena_reset(tally_arena *a); /* keeps up to TALLY_ARENA_KEEP bytes of blocks */
void tally_arena_free(tally_arena *a);

/* ---- logging ------------------------------------------------------------------------------ */

typedef enum { TALLY_LOG_DEBUG, TALLY_LOG_INFO, TALLY_LOG_WARN, TALLY_LOG_ERROR } tally_log_level;
void tally_log_set_level(tally_log_level lvl);
void tally_log_set_name(const char *node_name); /* prefix of every line */
/* One line to stderr: "2026-11-21 10:00:00.123 w1 INFO: message". Thread-safe. */
void tally_log(tally_log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define tally_log_info(...) tally_log(TALLY_LOG_INFO, __VA_ARGS__)
#define tally_log_warn(...) tally_log(TALLY_LOG_WARN, __VA_ARGS__)
#define tally_log_error(...) tally_log(TALLY_LOG_ERROR, __VA_ARGS__)
#define tally_log_debug(...) tally_log(TALLY_LOG_DEBUG, __VA_ARGS__)

/* ---- clocks ------------------------------------------------------------------------------- */

int64_t tally_now_us(void);  /* wall clock, microseconds since the Unix epoch */
int64_t tally_mono_us(void); /* monotonic clock, microseconds */
/* Initialise a condvar whose timed waits take CLOCK_MONOTONIC deadlines (tally_mono_us). */
void tally_cond_init_mono(pthread_cond_t *cv);
/* The timespec of a tally_mono_us() deadline, for pthread_cond_timedwait. */
struct timespec tally_mono_ts(int64_t deadline_us);

/* ---- checksums ---------------------------------------------------------------------------- */

/* CRC32C (Castagnoli), as used by disk records: tally_crc32c(0, p, n) checksums p[0..n); pass
 * the previous result to continue over further pieces. Uses SSE4.2 where the CPU has it. */
uint32_t tally_crc32c(uint32_t crc, const void *p, size_t n);

/* ---- files -------------------------------------------------------------------------------- */

/* Write all n bytes to fd (retrying short writes and EINTR). 0, or -1 with errno. */
int tally_write_all(int fd, const void *p, size_t n);
/* Replace dir/name atomically with p[0..n): write dir/name.tmp, fsync it (if sync), rename it
 * over dir/name, fsync dir (if sync). 0, or -1 with errno (the old file is left as it was). */
int tally_file_replace(const char *dir, const char *name, const void *p, size_t n, bool sync);
/* Read a whole file into b (appended). 0; 1 if it does not exist; -1 with errno on error. */
int tally_file_read(const char *path, tally_buf *b);
/* mkdir -p with the given mode for the directories it creates; the path must end up a
 * directory. 0, or -1 with errno (ENAMETOOLONG, ENOTDIR, ...). */
int tally_mkdir_p(const char *path, unsigned mode);
/* fsync a directory. 0, or -1 with errno. */
int tally_dir_sync(const char *dir);

/* ---- misc --------------------------------------------------------------------------------- */

/* Copy at most dstsz-1 bytes and NUL-terminate; returns strlen(src). */
size_t tally_strlcpy(char *dst, const char *src, size_t dstsz);
/* malloc/calloc/realloc that abort with a log line on failure (for small, bounded sizes only). */
void *tally_xmalloc(size_t n);
void *tally_xcalloc(size_t n, size_t m);
void *tally_xrealloc(void *p, size_t n);
char *tally_xstrdup(const char *s);

#endif
