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
 * `COPY s, line N, column c: "value"`.
 *
 * As in PostgreSQL (copyfromparse.c): the first line's end (\n, \r\n or \r) fixes the line-end
 * style and any other unescaped (text) or unquoted (CSV) line end is an error; "\." ends the
 * data (anywhere in text format, only at the start of a record in CSV); line numbers count one
 * line per record, plus, in CSV, each quoted \n of a \n file (\r otherwise, and in the first
 * record, whose style is not known yet while it is read).
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

/* Line-end style, decided by the first line as PostgreSQL does; any other line end is an
 * error (unless escaped in text format or quoted in CSV). */
enum {
	EOL_UNKNOWN = 0,
	EOL_NL,
	EOL_CR,
	EOL_CRNL,
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
	uint32_t carry_nl; /* lines counted inside carry (CSV quoted line ends) */
	size_t carry_bs;   /* backslashes ending carry (text format) */
	int eol;	   /* EOL_* */
	bool cr_pending;   /* first line: carry ends with an unescaped \r, \r\n or \r alone? */
	char term[2];	   /* line end of the record being parsed (for "\." checks) */
	uint32_t term_len;
	tally_buf scratch; /* decoded fields of the current record */
	uint64_t lineno;   /* lines (as PostgreSQL counts them) up to the last record parsed */
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

/* ---- line ends and the end-of-data marker ------------------------------------------------- */

/* A line-end character that does not match the style of the first line (PostgreSQL's wording,
 * hint and context: the line number without the line). */
static int eol_error(const tally_copy_parser *p, tally_err *err, char c, uint64_t line)
{
	if (c == '\r') {
		tally_err_set(err, TALLY_SQLSTATE_BAD_COPY, "%s carriage return found in data",
			      p->csv ? "unquoted" : "literal");
		tally_err_hint(err, "%s",
			       p->csv ? "Use quoted CSV field to represent carriage return."
				      : "Use \"\\r\" to represent carriage return.");
	} else {
		tally_err_set(err, TALLY_SQLSTATE_BAD_COPY, "%s newline found in data",
			      p->csv ? "unquoted" : "literal");
		tally_err_hint(err, "%s",
			       p->csv ? "Use quoted CSV field to represent newline."
				      : "Use \"\\n\" to represent newline.");
	}
	return tally_err_detail(err, "COPY %s, line %llu", p->stream, (unsigned long long)line);
}

/* PostgreSQL's test of what follows a "\." (anywhere in text format, at the start of a record
 * in CSV): it reads the bytes rec[k..len), then the record's line end (p->term), then NULs at
 * the end of the data. Returns 1 for the end-of-data marker, 0 when the bytes are ordinary
 * data (CSV only: text format has no other meaning for "\."), -1 with err set. */
static int marker_check(const tally_copy_parser *p, const char *rec, uint32_t k, uint32_t len,
			uint64_t line, tally_err *err)
{
	const char *msg = NULL;
	char c[2];
	for (int i = 0; i < 2; i++, k++)
		c[i] = k < len ? rec[k] : (k - len < p->term_len ? p->term[k - len] : '\0');
	char c2 = c[0];
	if (p->eol == EOL_CRNL) {
		if (c[0] == '\n')
			msg = "end-of-copy marker does not match previous newline style";
		else if (c[0] != '\r')
			msg = "end-of-copy marker corrupt";
		c2 = c[1];
	}
	if (!msg && c2 != '\r' && c2 != '\n')
		msg = "end-of-copy marker corrupt";
	if (msg && p->csv)
		return 0;
	if (!msg && (((p->eol == EOL_NL || p->eol == EOL_CRNL) && c2 != '\n') ||
		     (p->eol == EOL_CR && c2 != '\r')))
		msg = "end-of-copy marker does not match previous newline style";
	if (msg) {
		tally_err_set(err, TALLY_SQLSTATE_BAD_COPY, "%s", msg);
		return tally_err_detail(err, "COPY %s, line %llu", p->stream,
					(unsigned long long)line);
	}
	return 1;
}

/* ---- record parsing ----------------------------------------------------------------------- */

/* Split rec[0..*lenp) into fields; returns the number of fields (counting stops beyond
 * nlisted + 1: that is already "extra data"), or -1 with err set for a line-end character of
 * another style than the first line's or a bad "\.". A valid "\." ends the data: the record
 * stops there (*lenp is cut) and p->done is set. */
static int split_text(tally_copy_parser *p, const char *rec, uint32_t *lenp, uint64_t line,
		      tally_err *err)
{
	int nf = 0, maxf = p->nlisted + 1;
	uint32_t i = 0, len = *lenp;
	const char d = p->delim, bad = p->eol == EOL_CR ? '\n' : '\r';
	for (;;) {
		uint32_t start = i;
		bool esc = false;
		while (i < len) {
			char c = rec[i];
			if (c == d)
				break;
			if (c == '\\') {
				if (i + 1 < len && rec[i + 1] == '.') {
					if (marker_check(p, rec, i + 2, len, line, err) < 0)
						return -1;
					*lenp = len = i;
					p->done = true;
					break;
				}
				esc = true;
				i += 2;
				if (i > len)
					i = len;
				continue;
			}
			if (c == bad)
				return eol_error(p, err, c, line);
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

static long csv_scan(const tally_copy_parser *p, const char *s, size_t n, int *state, uint32_t *nl);

/* As split_text for CSV; -2 for an unterminated quote. `first` is the record's first line
 * (for errors: PostgreSQL counts the lines passed so far). */
static int split_csv(tally_copy_parser *p, const char *rec, uint32_t len, uint64_t first,
		     tally_err *err)
{
	int nf = 0, maxf = p->nlisted + 1;
	uint32_t i = 0;
	const char d = p->delim, q = p->quote, e = p->escape;
	const char bad = p->eol == EOL_CR ? '\n' : '\r';
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
			else if (c == bad) {
				int st = SC_OUT;
				uint32_t nl = 0;
				csv_scan(p, rec, i, &st, &nl);
				return eol_error(p, err, c, first + nl);
			}
			i++;
		}
		if (in)
			return -2;
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

/* Parse one complete record (line end stripped; p->term says what ended it). `nl` is the
 * number of lines PostgreSQL counts inside it (CSV quoted line ends); `bare_nl`: it ended with
 * a \n lacking the \r of a \r\n file. */
static int parse_record(tally_copy_parser *p, const char *rec, uint32_t len, uint32_t nl,
			bool bare_nl, tally_copy_row_fn fn, void *ctx, tally_err *err)
{
	uint64_t first = p->lineno + 1, line = first + nl;
	int nf;

	p->lineno = line;
	if (needs_utf8_check(rec, len)) {
		long at = utf8_invalid_at(rec, len);
		if (at >= 0) {
			utf8_error(err, rec, len, at);
			tally_err_detail(err, "COPY %s, line %llu", p->stream,
					 (unsigned long long)line);
			return -1;
		}
	}
	/* CSV: "\." is the end-of-data marker only at the start of a record */
	if (p->csv && len >= 2 && rec[0] == '\\' && rec[1] == '.') {
		int m = marker_check(p, rec, 2, len, first, err);
		if (m < 0)
			return -1;
		if (m > 0) {
			p->done = true;
			return 0;
		}
	}
	nf = p->csv ? split_csv(p, rec, len, first, err) : split_text(p, rec, &len, line, err);
	if (nf == -1)
		return -1;
	if (bare_nl)
		return eol_error(p, err, '\n', line);
	if (p->done && len == 0) /* "\." alone */
		return 0;
	if (p->header_pending) {
		p->header_pending = false;
		return 0;
	}
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

/* Text format: is the character at s[i] escaped by an odd run of backslashes before it?
 * `pre_run` is the number of backslashes ending the carried prefix (when the run reaches
 * s[0]). */
static bool text_nl_escaped(const char *s, size_t i, size_t pre_run)
{
	size_t run = 0;
	while (run < i && s[i - 1 - run] == '\\')
		run++;
	if (run == i)
		run += pre_run;
	return (run & 1) != 0;
}

/* CSV: advance the scanner over s[0..n); return the index of the line-end character ending
 * the record or -1. *state and *nl (line ends inside quotes that PostgreSQL counts: \n in a
 * \n file, \r otherwise, including while the first line's style is not known) are updated. */
static long csv_scan(const tally_copy_parser *p, const char *s, size_t n, int *state, uint32_t *nl)
{
	int st = *state;
	const char q = p->quote, e = p->escape;
	const char t1 = p->eol == EOL_CR ? '\r' : '\n', t2 = p->eol == EOL_UNKNOWN ? '\r' : t1;
	const char cnt = p->eol == EOL_NL ? '\n' : '\r';
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
	again:
		switch (st) {
		case SC_OUT:
			if (c == t1 || c == t2) {
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
			else if (c == cnt)
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
	/* backslashes ending the carry, kept up to date so that the next chunk need not look
	 * back over the whole carry (a long run would make that quadratic) */
	size_t run = 0;
	while (run < n && s[n - 1 - run] == '\\')
		run++;
	p->carry_bs = run == n ? p->carry_bs + n : run;
	return 0;
}

static void carry_reset(tally_copy_parser *p)
{
	tally_buf_reset(&p->carry);
	p->carry_nl = 0;
	p->carry_bs = 0;
	p->scan_state = p->csv ? SC_OUT : SC_TEXT;
}

/* A record ended by the line-end character `term` ('\n', '\r', or 0 at the end of the data;
 * rec excludes it): take off the \r of a \r\n line end and parse it. */
static int finish_record(tally_copy_parser *p, const char *rec, size_t len, uint32_t nl, char term,
			 tally_copy_row_fn fn, void *ctx, tally_err *err)
{
	bool bare_nl = false;
	if (len > TALLY_COPY_LINE_MAX)
		return tally_err_set(err, TALLY_SQLSTATE_PROGRAM_LIMIT,
				     "COPY line %llu is longer than the limit of %u bytes",
				     (unsigned long long)(p->lineno + 1), TALLY_COPY_LINE_MAX);
	p->term_len = 0;
	if (term == '\n' && p->eol == EOL_CRNL) {
		/* the \r before an unquoted \n is unquoted too */
		if (len > 0 && rec[len - 1] == '\r' &&
		    (p->csv || !text_nl_escaped(rec, len - 1, 0))) {
			len--;
			p->term[p->term_len++] = '\r';
		} else {
			bare_nl = true;
		}
	}
	if (term)
		p->term[p->term_len++] = term;
	return parse_record(p, rec, (uint32_t)len, nl, bare_nl, fn, ctx, err);
}

/* Find the end of the record starting at s, or continuing the carry (its scanner state in
 * *state, `pre_run` backslashes ending it). Returns the index of the line-end character ending
 * it, or -1 with *state / *nl as after scanning s[0..n). */
static long find_record_end(const tally_copy_parser *p, const char *s, size_t n, size_t pre_run,
			    int *state, uint32_t *nl)
{
	if (p->csv)
		return csv_scan(p, s, n, state, nl);
	if (p->eol == EOL_UNKNOWN) {
		/* first line: the first unescaped \n or \r */
		bool esc = (pre_run & 1) != 0;
		for (size_t i = 0; i < n; i++) {
			char c = s[i];
			if (esc)
				esc = false;
			else if (c == '\\')
				esc = true;
			else if (c == '\n' || c == '\r')
				return (long)i;
		}
		return -1;
	}
	const char t = p->eol == EOL_CR ? '\r' : '\n';
	size_t from = 0;
	for (;;) {
		const char *q = memchr(s + from, t, n - from);
		if (!q)
			return -1;
		size_t i = (size_t)(q - s);
		if (!text_nl_escaped(s, i, pre_run))
			return (long)i;
		from = i + 1;
	}
}

/* The first line's end decides the file's line-end style, as in PostgreSQL: \n, \r\n or \r.
 * *end (at a \r followed by \n) moves to the \n. Returns false when the \r is the last byte
 * so far (the next byte decides). */
static bool resolve_eol(tally_copy_parser *p, const char *s, size_t n, long *end)
{
	if (p->eol != EOL_UNKNOWN)
		return true;
	if (s[*end] == '\n') {
		p->eol = EOL_NL;
		return true;
	}
	if ((size_t)*end + 1 == n)
		return false;
	if (s[*end + 1] == '\n') {
		p->eol = EOL_CRNL;
		(*end)++;
	} else {
		p->eol = EOL_CR;
	}
	return true;
}

int tally_copy_parser_feed(tally_copy_parser *p, const char *data, size_t len, tally_copy_row_fn fn,
			   void *ctx, tally_err *err)
{
	size_t pos = 0;
	int rc;

	if (p->failed)
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
				     "COPY parser used after an error");
	while (pos < len && !p->done) {
		const char *s = data + pos;
		size_t n = len - pos;
		if (p->cr_pending) {
			/* the first line's \r ended the previous chunk: this byte tells \r\n from
			 * \r */
			bool crnl = s[0] == '\n';
			p->cr_pending = false;
			p->eol = crnl ? EOL_CRNL : EOL_CR;
			rc = finish_record(p, (const char *)p->carry.data,
					   crnl ? p->carry.len : p->carry.len - 1, p->carry_nl,
					   crnl ? '\n' : '\r', fn, ctx, err);
			carry_reset(p);
			pos += crnl ? 1 : 0;
		} else {
			bool carrying = p->carry.len > 0;
			int st = carrying ? p->scan_state : (p->csv ? SC_OUT : SC_TEXT);
			uint32_t nl = 0;
			long end = find_record_end(p, s, n, carrying ? p->carry_bs : 0, &st, &nl);
			bool pend = end >= 0 && !resolve_eol(p, s, n, &end);
			if (end < 0 || pend) {
				p->scan_state = st;
				p->carry_nl += nl;
				p->cr_pending = pend;
				if (carry_append(p, s, n, err))
					goto fail;
				return 0;
			}
			if (carrying) {
				if (carry_append(p, s, (size_t)end, err))
					goto fail;
				rc = finish_record(p, (const char *)p->carry.data, p->carry.len,
						   p->carry_nl + nl, s[end], fn, ctx, err);
				carry_reset(p);
			} else {
				rc = finish_record(p, s, (size_t)end, nl, s[end], fn, ctx, err);
			}
			pos += (size_t)end + 1;
		}
		if (rc) {
			if (rc < 0)
				goto fail;
			return rc;
		}
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
	if (p->cr_pending) {
		/* the data ends with the first line's \r: a \r file */
		p->cr_pending = false;
		p->eol = EOL_CR;
		rc = finish_record(p, (const char *)p->carry.data, p->carry.len - 1, p->carry_nl,
				   '\r', fn, ctx, err);
	} else if (p->csv && (p->scan_state == SC_IN ||
			      (p->scan_state == SC_IN_PEND && p->escape != p->quote))) {
		/* still inside quotes at the end of the data */
		uint64_t line = p->lineno + 1 + p->carry_nl;
		tally_err_set(err, TALLY_SQLSTATE_BAD_COPY, "unterminated CSV quoted field");
		ctx_line(p, err, line, (const char *)p->carry.data, (uint32_t)p->carry.len);
		rc = -1;
	} else {
		rc = finish_record(p, (const char *)p->carry.data, p->carry.len, p->carry_nl, 0, fn,
				   ctx, err);
	}
	carry_reset(p);
	if (rc < 0)
		p->failed = true;
	return rc;
}
