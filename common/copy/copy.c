/*
 * copy.c - COPY FROM STDIN data parser (text and CSV formats), PostgreSQL-compatible.
 *
 * Input arrives as arbitrary chunks. Records that lie wholly inside a chunk are parsed in place
 * (no copy); only a record cut by a chunk boundary is gathered in `carry`, together with the
 * state of the record-end scanner so that a long record is scanned once, not once per chunk.
 *
 * A record is split into fields (offsets into the record), fields without escapes point
 * straight into the input, escaped fields are decoded into a per-record scratch buffer reserved
 * up front (so earlier fields never move), and each field is converted with tally_value_parse
 * for its target column. Errors carry PostgreSQL's wording and, in err->detail, its CONTEXT line
 * `COPY s, line N, column c: "value"`. Line numbers count physical lines, as PostgreSQL does.
 */
#include "tally/copy.h"

#include <stdio.h>
#include <stdlib.h>

/* Record-end scanner states. */
enum {
	SC_TEXT =
	    0,	/* text format: nothing pending (a trailing backslash is found by looking back) */
	SC_OUT, /* CSV: outside quotes */
	SC_IN,	/* CSV: inside quotes */
	SC_IN_PEND, /* CSV: inside quotes, just saw the escape character */
};

typedef struct field {
	uint32_t off, len; /* raw bytes in the record */
	bool quoted;	   /* CSV: a quote appeared (never NULL then) */
	bool escaped;	   /* needs decoding */
} field;

struct tally_copy_parser {
	/* options */
	bool csv, header;
	char delim, quote, escape;
	char *null_str;
	uint32_t null_len;
	/* target */
	char stream[TALLY_NAME_MAX];
	int nstream;		       /* stream->ncols (arrival_timestamp included) */
	int nlisted;		       /* fields per record */
	int *colmap;		       /* nlisted entries */
	tally_type *types;	       /* per listed field */
	tally_type *stypes;	       /* per stream column */
	char (*names)[TALLY_NAME_MAX]; /* per listed field */
	/* state */
	tally_value *row;  /* nstream values */
	field *fields;	   /* up to nlisted + 1 */
	tally_buf carry;   /* partial record */
	int scan_state;	   /* scanner state at the end of carry */
	uint32_t carry_nl; /* newlines inside carry (CSV quoted fields) */
	tally_buf scratch; /* decoded fields of the current record */
	uint64_t lineno;   /* physical lines consumed before the current record */
	uint64_t rows;
	bool header_pending;
	bool done; /* saw \. */
	bool failed;
};

/* ---- allocation --------------------------------------------------------------------------- */

int tally_copy_parser_alloc(const tally_stmt *st, const tally_relation *stream, const int *colmap,
			    int ncols, tally_copy_parser **out, tally_err *err)
{
	tally_copy_parser *p;
	const char *nul;

	if (!st || st->kind != TALLY_STMT_COPY || !stream || ncols < 0 ||
	    ncols > TALLY_MAX_COLUMNS || stream->ncols <= 0 || stream->ncols > TALLY_MAX_COLUMNS)
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL, "invalid COPY parser arguments");
	for (int i = 0; i < ncols; i++)
		if (colmap[i] < 0 || colmap[i] >= stream->ncols)
			return tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
					     "invalid COPY column map entry %d", colmap[i]);
	p = tally_xcalloc(1, sizeof *p);
	p->csv = st->u.copy.format == TALLY_COPY_CSV;
	p->header = st->u.copy.header;
	p->header_pending = p->header;
	p->delim = st->u.copy.delimiter ? st->u.copy.delimiter : (p->csv ? ',' : '\t');
	p->quote = st->u.copy.quote ? st->u.copy.quote : '"';
	p->escape = st->u.copy.escape ? st->u.copy.escape : p->quote;
	nul = st->u.copy.null_string ? st->u.copy.null_string : (p->csv ? "" : "\\N");
	p->null_str = tally_xstrdup(nul);
	p->null_len = (uint32_t)strlen(nul);
	tally_strlcpy(p->stream, stream->name ? stream->name : "", sizeof p->stream);
	p->nstream = stream->ncols;
	p->nlisted = ncols;
	p->colmap = tally_xcalloc((size_t)ncols + 1, sizeof *p->colmap);
	p->types = tally_xcalloc((size_t)ncols + 1, sizeof *p->types);
	p->names = tally_xcalloc((size_t)ncols + 1, sizeof *p->names);
	for (int i = 0; i < ncols; i++) {
		p->colmap[i] = colmap[i];
		p->types[i] = stream->cols[colmap[i]].type;
		tally_strlcpy(p->names[i], stream->cols[colmap[i]].name, TALLY_NAME_MAX);
	}
	p->stypes = tally_xcalloc((size_t)stream->ncols, sizeof *p->stypes);
	for (int c = 0; c < stream->ncols; c++)
		p->stypes[c] = stream->cols[c].type;
	p->row = tally_xcalloc((size_t)stream->ncols, sizeof *p->row);
	p->fields = tally_xcalloc((size_t)ncols + 2, sizeof *p->fields);
	p->scan_state = p->csv ? SC_OUT : SC_TEXT;
	*out = p;
	return 0;
}

void tally_copy_parser_free(tally_copy_parser *p)
{
	if (!p)
		return;
	free(p->null_str);
	free(p->colmap);
	free(p->types);
	free(p->stypes);
	free(p->names);
	free(p->row);
	free(p->fields);
	tally_buf_free(&p->carry);
	tally_buf_free(&p->scratch);
	free(p);
}

uint64_t tally_copy_parser_rows(const tally_copy_parser *p)
{
	return p->rows;
}
uint64_t tally_copy_parser_line(const tally_copy_parser *p)
{
	return p->lineno;
}

/* ---- errors ------------------------------------------------------------------------------- */

/* PostgreSQL prints at most 100 bytes of a value or line in the CONTEXT (then "..."). */
#define DISPLAY_MAX 100

static int display_len(const char *s, uint32_t len, bool *cut)
{
	if (len <= DISPLAY_MAX) {
		*cut = false;
		return (int)len;
	}
	uint32_t n = DISPLAY_MAX;
	while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80) /* don't split a UTF-8 character */
		n--;
	*cut = true;
	return (int)n;
}

static void ctx_line(tally_copy_parser *p, tally_err *err, uint64_t line, const char *rec,
		     uint32_t len)
{
	bool cut;
	int n = display_len(rec, len, &cut);
	tally_err_detail(err, "COPY %s, line %llu: \"%.*s%s\"", p->stream, (unsigned long long)line,
			 n, rec, cut ? "..." : "");
}

static void ctx_col(tally_copy_parser *p, tally_err *err, uint64_t line, int f, const char *v,
		    uint32_t len)
{
	bool cut;
	int n = display_len(v, len, &cut);
	tally_err_detail(err, "COPY %s, line %llu, column %s: \"%.*s%s\"", p->stream,
			 (unsigned long long)line, p->names[f], n, v, cut ? "..." : "");
}

/* ---- field decoding ----------------------------------------------------------------------- */

static inline int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decode text-format escapes of s[0..n) into out; returns the decoded length (<= n). */
static uint32_t text_unescape(const char *s, uint32_t n, char *out)
{
	uint32_t i = 0, o = 0;
	while (i < n) {
		char c = s[i++];
		if (c != '\\' || i >= n) {
			out[o++] = c;
			continue;
		}
		c = s[i++];
		switch (c) {
		case 'b':
			out[o++] = '\b';
			break;
		case 'f':
			out[o++] = '\f';
			break;
		case 'n':
			out[o++] = '\n';
			break;
		case 'r':
			out[o++] = '\r';
			break;
		case 't':
			out[o++] = '\t';
			break;
		case 'v':
			out[o++] = '\v';
			break;
		case '0':
		case '1':
		case '2':
		case '3':
		case '4':
		case '5':
		case '6':
		case '7': {
			int v = c - '0';
			if (i < n && s[i] >= '0' && s[i] <= '7') {
				v = v * 8 + (s[i++] - '0');
				if (i < n && s[i] >= '0' && s[i] <= '7')
					v = v * 8 + (s[i++] - '0');
			}
			out[o++] = (char)(v & 0377);
			break;
		}
		case 'x':
			if (i < n && hexval(s[i]) >= 0) {
				int v = hexval(s[i++]);
				if (i < n && hexval(s[i]) >= 0)
					v = v * 16 + hexval(s[i++]);
				out[o++] = (char)v;
			} else {
				out[o++] = 'x';
			}
			break;
		default:
			out[o++] = c; /* \\, \<delimiter>, and any other character as itself */
			break;
		}
	}
	return o;
}

/* Decode a CSV field: quoted sections lose their quotes, escape+quote/escape inside quotes
 * yields the second character. */
static uint32_t csv_unescape(const tally_copy_parser *p, const char *s, uint32_t n, char *out)
{
	uint32_t i = 0, o = 0;
	bool in = false;
	while (i < n) {
		char c = s[i++];
		if (!in) {
			if (c == p->quote)
				in = true;
			else
				out[o++] = c;
			continue;
		}
		if (c == p->escape && i < n && (s[i] == p->quote || s[i] == p->escape)) {
			out[o++] = s[i++];
			continue;
		}
		if (c == p->quote) {
			in = false;
			continue;
		}
		out[o++] = c;
	}
	return o;
}

/* ---- encoding ---------------------------------------------------------------------------- */

/* Any NUL or non-ASCII byte? (cheap pre-check; the loop vectorizes) */
static bool needs_utf8_check(const char *s, uint32_t n)
{
	unsigned acc = 0;
	for (uint32_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		acc |= (c >= 0x80) | (c == 0);
	}
	return acc != 0;
}

/* Offset of the first invalid UTF-8 sequence (or NUL) in s[0..n), or -1. */
static long utf8_invalid_at(const char *s, uint32_t n)
{
	const unsigned char *u = (const unsigned char *)s;
	uint32_t i = 0;
	while (i < n) {
		unsigned c = u[i];
		uint32_t l;
		if (c == 0)
			return (long)i;
		if (c < 0x80) {
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf)
			l = 2;
		else if (c >= 0xe0 && c <= 0xef)
			l = 3;
		else if (c >= 0xf0 && c <= 0xf4)
			l = 4;
		else
			return (long)i;
		if (i + l > n)
			return (long)i;
		for (uint32_t k = 1; k < l; k++)
			if ((u[i + k] & 0xc0) != 0x80)
				return (long)i;
		/* overlong, surrogate and beyond-U+10FFFF forms */
		if ((c == 0xe0 && u[i + 1] < 0xa0) || (c == 0xed && u[i + 1] > 0x9f) ||
		    (c == 0xf0 && u[i + 1] < 0x90) || (c == 0xf4 && u[i + 1] > 0x8f))
			return (long)i;
		i += l;
	}
	return -1;
}

/* PostgreSQL's report_invalid_encoding: the bytes of the bad character. */
static int utf8_error(tally_err *err, const char *s, uint32_t n, long at)
{
	const unsigned char *u = (const unsigned char *)s + at;
	uint32_t left = n - (uint32_t)at, l = 1;
	char hex[32];
	int o = 0;
	if (u[0] >= 0xc0 && u[0] <= 0xdf)
		l = 2;
	else if (u[0] >= 0xe0 && u[0] <= 0xef)
		l = 3;
	else if (u[0] >= 0xf0 && u[0] <= 0xf7)
		l = 4;
	if (l > left)
		l = left;
	for (uint32_t k = 0; k < l; k++)
		o += snprintf(hex + o, sizeof hex - (size_t)o, "%s0x%02x", k ? " " : "", u[k]);
	return tally_err_set(err, "22021", "invalid byte sequence for encoding \"UTF8\": %s", hex);
}

/* ---- record parsing ----------------------------------------------------------------------- */

/* Split rec[0..len) into fields; returns the number of fields, or -1 for an unterminated quote
 * (CSV). Stops counting beyond nlisted + 1 (that is already "extra data"). */
static int split_text(tally_copy_parser *p, const char *rec, uint32_t len)
{
	int nf = 0, maxf = p->nlisted + 1;
	uint32_t i = 0;
	const char d = p->delim;
	for (;;) {
		uint32_t start = i;
		bool esc = false;
		while (i < len) {
			char c = rec[i];
			if (c == d)
				break;
			if (c == '\\') {
				esc = true;
				i += 2;
				if (i > len)
					i = len;
				continue;
			}
			i++;
		}
		if (nf < maxf) {
			p->fields[nf].off = start;
			p->fields[nf].len = i - start;
			p->fields[nf].quoted = false;
			p->fields[nf].escaped = esc;
		}
		nf++;
		if (i >= len)
			break;
		i++; /* delimiter */
	}
	return nf;
}

static int split_csv(tally_copy_parser *p, const char *rec, uint32_t len)
{
	int nf = 0, maxf = p->nlisted + 1;
	uint32_t i = 0;
	const char d = p->delim, q = p->quote, e = p->escape;
	for (;;) {
		uint32_t start = i;
		bool quoted = false, in = false;
		while (i < len) {
			char c = rec[i];
			if (in) {
				if (c == e && i + 1 < len && (rec[i + 1] == q || rec[i + 1] == e)) {
					i += 2;
					continue;
				}
				if (c == q)
					in = false;
				i++;
				continue;
			}
			if (c == d)
				break;
			if (c == q)
				in = quoted = true;
			i++;
		}
		if (in)
			return -1;
		if (nf < maxf) {
			p->fields[nf].off = start;
			p->fields[nf].len = i - start;
			p->fields[nf].quoted = quoted;
			p->fields[nf].escaped = quoted;
		}
		nf++;
		if (i >= len)
			break;
		i++;
	}
	return nf;
}

/* Parse one complete record (line end stripped). `nl` is the number of newlines inside it
 * (CSV quoted fields); `raw_len` includes the line end, for error display. */
static int parse_record(tally_copy_parser *p, const char *rec, uint32_t len, uint32_t nl,
			tally_copy_row_fn fn, void *ctx, tally_err *err)
{
	uint64_t line = p->lineno + 1 + nl;
	int nf;

	p->lineno = line;
	if (p->header_pending) {
		p->header_pending = false;
		return 0;
	}
	/* end-of-data marker: a line holding only \. */
	if (len == 2 && rec[0] == '\\' && rec[1] == '.') {
		p->done = true;
		return 0;
	}
	if (needs_utf8_check(rec, len)) {
		long at = utf8_invalid_at(rec, len);
		if (at >= 0) {
			utf8_error(err, rec, len, at);
			tally_err_detail(err, "COPY %s, line %llu", p->stream,
					 (unsigned long long)line);
			return -1;
		}
	}
	nf = p->csv ? split_csv(p, rec, len) : split_text(p, rec, len);
	if (nf < 0) {
		tally_err_set(err, TALLY_SQLSTATE_BAD_COPY, "unterminated CSV quoted field");
		ctx_line(p, err, line, rec, len);
		return -1;
	}
	if (nf > p->nlisted) {
		tally_err_set(err, TALLY_SQLSTATE_BAD_COPY,
			      "extra data after last expected column");
		ctx_line(p, err, line, rec, len);
		return -1;
	}
	/* decoded fields never exceed the raw record: reserve once, nothing moves afterwards */
	tally_buf_reset(&p->scratch);
	if (tally_buf_reserve(&p->scratch, len + 1))
		return tally_err_set(err, TALLY_SQLSTATE_OUT_OF_MEMORY, "out of memory");
	for (int c = 0; c < p->nstream; c++)
		p->row[c] = tally_null(p->stypes[c]);
	for (int f = 0; f < p->nlisted; f++) {
		int col = p->colmap[f];
		tally_type t = p->types[f];
		if (f >= nf) {
			tally_err_set(err, TALLY_SQLSTATE_BAD_COPY,
				      "missing data for column \"%s\"", p->names[f]);
			ctx_line(p, err, line, rec, len);
			return -1;
		}
		const field *fd = &p->fields[f];
		const char *v = rec + fd->off;
		uint32_t vl = fd->len;
		if (!fd->quoted && vl == p->null_len && memcmp(v, p->null_str, vl) == 0) {
			p->row[col] = tally_null(t);
			continue;
		}
		if (fd->escaped) {
			char *o = (char *)p->scratch.data + p->scratch.len;
			vl = p->csv ? csv_unescape(p, v, vl, o) : text_unescape(v, vl, o);
			p->scratch.len += vl;
			v = o;
			/* escapes can produce any byte: check what they made */
			if (!p->csv && needs_utf8_check(v, vl)) {
				long at = utf8_invalid_at(v, vl);
				if (at >= 0) {
					utf8_error(err, v, vl, at);
					ctx_line(p, err, line, rec, len);
					return -1;
				}
			}
		}
		if (tally_value_parse(t, v, vl, &p->row[col], err)) {
			ctx_col(p, err, line, f, v, vl);
			return -1;
		}
	}
	p->rows++;
	int rc = fn ? fn(ctx, p->row) : 0;
	return rc;
}

/* ---- record boundaries -------------------------------------------------------------------- */

/* Text format: is the newline at s[i] escaped by an odd run of backslashes before it? `pre`
 * is the number of backslashes ending the carried prefix (when the run reaches s[0]). */
static bool text_nl_escaped(const char *s, size_t i, size_t pre_run)
{
	size_t run = 0;
	while (run < i && s[i - 1 - run] == '\\')
		run++;
	if (run == i)
		run += pre_run;
	return (run & 1) != 0;
}

static size_t trailing_backslashes(const tally_buf *b)
{
	size_t run = 0;
	while (run < b->len && b->data[b->len - 1 - run] == '\\')
		run++;
	return run;
}

/* CSV: advance the scanner over s[0..n); return the index of the record-ending newline or -1.
 * *state and *nl (newlines passed inside quotes) are updated. */
static long csv_scan(const tally_copy_parser *p, const char *s, size_t n, int *state, uint32_t *nl)
{
	int st = *state;
	const char q = p->quote, e = p->escape;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
	again:
		switch (st) {
		case SC_OUT:
			if (c == '\n') {
				*state = SC_OUT;
				return (long)i;
			}
			if (c == q)
				st = SC_IN;
			break;
		case SC_IN:
			if (c == e)
				st = SC_IN_PEND;
			else if (c == q)
				st = SC_OUT;
			else if (c == '\n')
				(*nl)++;
			break;
		case SC_IN_PEND:
			if (c == q || c == e) {
				st = SC_IN;
				break;
			}
			/* escape == quote: that was the closing quote; else a literal escape char
			 */
			st = e == q ? SC_OUT : SC_IN;
			goto again;
		default:
			st = SC_OUT;
			goto again;
		}
	}
	*state = st;
	return -1;
}

static int carry_append(tally_copy_parser *p, const char *s, size_t n, tally_err *err)
{
	if (p->carry.len + n > TALLY_COPY_LINE_MAX)
		return tally_err_set(err, TALLY_SQLSTATE_PROGRAM_LIMIT,
				     "COPY line %llu is longer than the limit of %u bytes",
				     (unsigned long long)(p->lineno + 1), TALLY_COPY_LINE_MAX);
	tally_buf_append(&p->carry, s, n);
	return 0;
}

/* Strip a line end's \r (when it is not escaped data) and parse the record. */
static int finish_record(tally_copy_parser *p, const char *rec, size_t len, uint32_t nl,
			 tally_copy_row_fn fn, void *ctx, tally_err *err)
{
	if (len > TALLY_COPY_LINE_MAX)
		return tally_err_set(err, TALLY_SQLSTATE_PROGRAM_LIMIT,
				     "COPY line %llu is longer than the limit of %u bytes",
				     (unsigned long long)(p->lineno + 1), TALLY_COPY_LINE_MAX);
	if (len > 0 && rec[len - 1] == '\r') {
		if (p->csv || !text_nl_escaped(rec, len - 1, 0))
			len--;
	}
	return parse_record(p, rec, (uint32_t)len, nl, fn, ctx, err);
}

/* Find the end of the record starting at s (fresh scanner). Returns the newline index or -1;
 * *state / *nl as after scanning s[0..n) when not found. */
static long find_record_end(const tally_copy_parser *p, const char *s, size_t n, size_t pre_run,
			    int *state, uint32_t *nl)
{
	if (p->csv)
		return csv_scan(p, s, n, state, nl);
	size_t from = 0;
	for (;;) {
		const char *q = memchr(s + from, '\n', n - from);
		if (!q)
			return -1;
		size_t i = (size_t)(q - s);
		if (!text_nl_escaped(s, i, pre_run))
			return (long)i;
		(*nl)++;
		from = i + 1;
	}
}

int tally_copy_parser_feed(tally_copy_parser *p, const char *data, size_t len, tally_copy_row_fn fn,
			   void *ctx, tally_err *err)
{
	size_t pos = 0;
	int rc;

	if (p->failed)
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
				     "COPY parser used after an error");
	if (p->done)
		return 0;
	if (p->carry.len > 0) {
		int st = p->scan_state;
		uint32_t nl = 0;
		size_t pre = p->csv ? 0 : trailing_backslashes(&p->carry);
		long end = find_record_end(p, data, len, pre, &st, &nl);
		if (end < 0) {
			p->scan_state = st;
			p->carry_nl += nl;
			if (carry_append(p, data, len, err))
				goto fail;
			return 0;
		}
		if (carry_append(p, data, (size_t)end, err))
			goto fail;
		nl += p->carry_nl;
		rc = finish_record(p, (const char *)p->carry.data, p->carry.len, nl, fn, ctx, err);
		tally_buf_reset(&p->carry);
		p->carry_nl = 0;
		p->scan_state = p->csv ? SC_OUT : SC_TEXT;
		if (rc) {
			if (rc < 0)
				goto fail;
			return rc;
		}
		pos = (size_t)end + 1;
	}
	while (pos < len && !p->done) {
		int st = p->csv ? SC_OUT : SC_TEXT;
		uint32_t nl = 0;
		long end = find_record_end(p, data + pos, len - pos, 0, &st, &nl);
		if (end < 0) {
			p->scan_state = st;
			p->carry_nl = nl;
			if (carry_append(p, data + pos, len - pos, err))
				goto fail;
			return 0;
		}
		rc = finish_record(p, data + pos, (size_t)end, nl, fn, ctx, err);
		if (rc) {
			if (rc < 0)
				goto fail;
			return rc;
		}
		pos += (size_t)end + 1;
	}
	return 0;
fail:
	p->failed = true;
	return -1;
}

int tally_copy_parser_finish(tally_copy_parser *p, tally_copy_row_fn fn, void *ctx, tally_err *err)
{
	int rc;
	if (p->failed)
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
				     "COPY parser used after an error");
	if (p->done || p->carry.len == 0)
		return 0;
	if (p->csv &&
	    (p->scan_state == SC_IN || (p->scan_state == SC_IN_PEND && p->escape != p->quote))) {
		/* still inside quotes at the end of the data */
		uint64_t line = p->lineno + 1 + p->carry_nl;
		tally_err_set(err, TALLY_SQLSTATE_BAD_COPY, "unterminated CSV quoted field");
		ctx_line(p, err, line, (const char *)p->carry.data, (uint32_t)p->carry.len);
		p->failed = true;
		return -1;
	}
	rc = finish_record(p, (const char *)p->carry.data, p->carry.len, p->carry_nl, fn, ctx, err);
	tally_buf_reset(&p->carry);
	p->carry_nl = 0;
	if (rc < 0)
		p->failed = true;
	return rc;
}
