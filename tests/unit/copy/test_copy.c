/*
 * test_copy.c - COPY FROM STDIN parsing: text escapes, CSV quoting, multi-line quoted fields,
 * HEADER, custom delimiter / NULL / quote / escape, chunk boundaries anywhere, error wording
 * and CONTEXT lines (checked against PostgreSQL 15).
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>

#include "tally/copy.h"

static const tally_column cols[] = {
    {"k", TALLY_T_INT4},
    {"v", TALLY_T_FLOAT8},
    {"name", TALLY_T_TEXT},
    {"arrival_timestamp", TALLY_T_TIMESTAMPTZ},
};
static const tally_relation rel = {"s", 4, cols};

typedef struct opts {
	bool csv, header;
	char delim, quote, escape;
	const char *null_string;
	int ncols;
	int colmap[4];
} opts;

static tally_stmt make_stmt(const opts *o)
{
	tally_stmt st;
	memset(&st, 0, sizeof st);
	st.kind = TALLY_STMT_COPY;
	strcpy(st.u.copy.stream, "s");
	st.u.copy.format = o->csv ? TALLY_COPY_CSV : TALLY_COPY_TEXT;
	st.u.copy.delimiter = o->delim ? o->delim : (o->csv ? ',' : '\t');
	st.u.copy.null_string = o->null_string ? o->null_string : (o->csv ? "" : "\\N");
	st.u.copy.header = o->header;
	st.u.copy.quote = o->quote ? o->quote : '"';
	st.u.copy.escape = o->escape ? o->escape : st.u.copy.quote;
	return st;
}

typedef struct collect {
	tally_buf out;
	int stop_after; /* 0 = never */
	int seen;
} collect;

static int on_row(void *ctx, const tally_value *row)
{
	collect *c = ctx;
	for (int i = 0; i < rel.ncols; i++) {
		if (i)
			tally_buf_putc(&c->out, '|');
		if (row[i].isnull) {
			tally_buf_append(&c->out, "NULL", 4);
		} else {
			cr_assert_eq(row[i].type, cols[i].type);
			tally_buf_putc(&c->out, '[');
			tally_value_format(&row[i], &c->out);
			tally_buf_putc(&c->out, ']');
		}
	}
	tally_buf_putc(&c->out, '\n');
	c->seen++;
	return c->stop_after && c->seen >= c->stop_after ? 7 : 0;
}

/* Parse `in` split into chunks at the given cut offsets (sorted, may repeat); return the
 * collected rows or "ERROR <state>: <message> / <detail>" (heap string). */
static char *run_cuts(const opts *o, const char *in, size_t len, const size_t *cuts, int ncuts,
		      uint64_t *nrows)
{
	tally_stmt st = make_stmt(o);
	int defmap[3] = {0, 1, 2};
	const int *map = o->ncols ? o->colmap : defmap;
	int n = o->ncols ? o->ncols : 3;
	tally_copy_parser *p;
	tally_err e;
	collect c;
	memset(&c, 0, sizeof c);
	memset(&e, 0, sizeof e);
	cr_assert_eq(tally_copy_parser_alloc(&st, &rel, map, n, &p, &e), 0, "%s", e.message);
	size_t prev = 0;
	int rc = 0;
	for (int i = 0; i <= ncuts && rc == 0; i++) {
		size_t to = i < ncuts ? cuts[i] : len;
		rc = tally_copy_parser_feed(p, in + prev, to - prev, on_row, &c, &e);
		prev = to;
	}
	if (rc == 0)
		rc = tally_copy_parser_finish(p, on_row, &c, &e);
	if (nrows)
		*nrows = tally_copy_parser_rows(p);
	tally_copy_parser_free(p);
	char *res;
	if (rc < 0) {
		size_t sz = strlen(e.message) + strlen(e.detail) + strlen(e.hint) + 48;
		res = malloc(sz);
		snprintf(res, sz, "ERROR %s: %s / %s%s%s", e.sqlstate, e.message, e.detail,
			 e.hint[0] ? " / hint: " : "", e.hint);
	} else {
		res = malloc(c.out.len + 16);
		memcpy(res, c.out.data ? (char *)c.out.data : "", c.out.len);
		res[c.out.len] = 0;
		if (rc > 0)
			strcat(res, "STOP");
	}
	tally_buf_free(&c.out);
	return res;
}

static char *run(const opts *o, const char *in)
{
	return run_cuts(o, in, strlen(in), NULL, 0, NULL);
}

/* The same result for every single split point and for byte-at-a-time feeding. */
static void check(const opts *o, const char *in, const char *want)
{
	size_t len = strlen(in);
	char *got = run(o, in);
	cr_assert_str_eq(got, want, "input <%s>", in);
	free(got);
	for (size_t cut = 0; cut <= len; cut++) {
		got = run_cuts(o, in, len, &cut, 1, NULL);
		cr_assert_str_eq(got, want, "input <%s> cut at %zu", in, cut);
		free(got);
	}
	size_t *all = malloc((len + 1) * sizeof *all);
	for (size_t i = 0; i <= len; i++)
		all[i] = i;
	got = run_cuts(o, in, len, all, (int)len + 1, NULL);
	cr_assert_str_eq(got, want, "input <%s> byte by byte", in);
	free(got);
	free(all);
}

Test(copy, text_basic_rows, .timeout = 30)
{
	opts o = {0};
	check(&o, "1\t2.5\tabc\n2\t-1e3\tdef\n", "[1]|[2.5]|[abc]|NULL\n[2]|[-1000]|[def]|NULL\n");
	check(&o, "1\t2.5\tabc\r\n2\t3\tx\r\n", "[1]|[2.5]|[abc]|NULL\n[2]|[3]|[x]|NULL\n");
	/* last line without newline is parsed at finish */
	check(&o, "1\t2\ta\n3\t4\tb", "[1]|[2]|[a]|NULL\n[3]|[4]|[b]|NULL\n");
	check(&o, "", "");
}

Test(copy, text_escapes_and_null, .timeout = 30)
{
	opts o = {0};
	check(&o, "1\t\\N\t\\N\n", "[1]|NULL|NULL|NULL\n");
	/* \x41 \101 \\ \N-inside-a-field (not NULL) as PostgreSQL decodes them */
	check(&o, "1\t2\t\\x41\\101\\\\\\N\n", "[1]|[2]|[AA\\N]|NULL\n");
	check(&o, "1\t2\ta\\tb\\nc\\rd\\\\e\n", "[1]|[2]|[a\tb\nc\rd\\e]|NULL\n");
	check(&o, "1\t2\ta\\\tb\n", "[1]|[2]|[a\tb]|NULL\n"); /* escaped delimiter */
	check(&o, "1\t2\t\\b\\f\\v\\q\\xg\\7\n", "[1]|[2]|[\b\f\vqxg\a]|NULL\n");
	/* backslash-newline is a data newline (line 1-2 form one row) */
	check(&o, "1\t2\ta\\\nb\n3\t4\tc\n", "[1]|[2]|[a\nb]|NULL\n[3]|[4]|[c]|NULL\n");
	/* empty string is not NULL in text format */
	check(&o, "1\t2\t\n", "[1]|[2]|[]|NULL\n");
	/* an escaped backslash before the newline does not escape it */
	check(&o, "1\t2\ta\\\\\n3\t4\tb\n", "[1]|[2]|[a\\]|NULL\n[3]|[4]|[b]|NULL\n");
}

Test(copy, text_end_of_data_marker, .timeout = 30)
{
	opts o = {0};
	check(&o, "1\t2\ta\n\\.\n9\t9\tignored\n", "[1]|[2]|[a]|NULL\n");
	check(&o, "1\t2\ta\r\n\\.\r\n9\t9\tignored\r\n", "[1]|[2]|[a]|NULL\n");
	check(&o, "1\t2\ta\r\\.\r9\t9\tignored\r", "[1]|[2]|[a]|NULL\n");
	check(&o, "\\.\n", "");
	/* PostgreSQL 15: without a line end after it, the marker is corrupt */
	check(&o, "1\t2\ta\n\\.", "ERROR 22P04: end-of-copy marker corrupt / COPY s, line 2");
	check(&o, "1\t2\ta\n\\.\r\n",
	      "ERROR 22P04: end-of-copy marker does not match previous newline style / COPY s, "
	      "line 2");
	check(&o, "1\t2\ta\r\n\\.\n",
	      "ERROR 22P04: end-of-copy marker does not match previous newline style / COPY s, "
	      "line 2");
}

Test(copy, text_marker_inside_a_line, .timeout = 30)
{
	/* text format: "\." anywhere (not escaped) is the marker: followed by the line end it ends
	 * the data after the row before it, otherwise it is corrupt (PostgreSQL 15) */
	opts o = {0};
	check(&o, "1\t2\ta\\.b\n", "ERROR 22P04: end-of-copy marker corrupt / COPY s, line 1");
	check(&o, "1\t2\ta\n3\t4\tb\\.x\n",
	      "ERROR 22P04: end-of-copy marker corrupt / COPY s, line 2");
	check(&o, "1\t2\ta\\.", "ERROR 22P04: end-of-copy marker corrupt / COPY s, line 1");
	check(&o, "\\.x\n", "ERROR 22P04: end-of-copy marker corrupt / COPY s, line 1");
	check(&o, "1\t2\ta\\.\n2\t3\tb\n", "[1]|[2]|[a]|NULL\n");
	check(&o, "1\t2\t\\.\n", "[1]|[2]|[]|NULL\n");
	check(
	    &o, "\t\\.\n",
	    "ERROR 22P02: invalid input syntax for type integer: \"\" / COPY s, line 1, column k: "
	    "\"\"");
	/* an escaped backslash before the dot is data */
	check(&o, "1\t2\ta\\\\.b\n", "[1]|[2]|[a\\.b]|NULL\n");
	/* CSV: only at the start of a record, and only when followed by the line end */
	opts c = {.csv = true};
	check(&c, "1,2,a\\.b\n", "[1]|[2]|[a\\.b]|NULL\n");
	check(&c, "1,2,a\n\\.\n9,9,z\n", "[1]|[2]|[a]|NULL\n");
	check(&c, "1,2,a\r\n\\.\r\n9,9,z\r\n", "[1]|[2]|[a]|NULL\n");
	check(&c, "1,2,a\r\\.\r9,9,z\r", "[1]|[2]|[a]|NULL\n");
	check(&c, "1,2,\"a\n\\.\n\"\n", "[1]|[2]|[a\n\\.\n]|NULL\n");
	check(&c, "1,2,a\n\\.",
	      "ERROR 22P02: invalid input syntax for type integer: \"\\.\" / COPY s, line 2, "
	      "column k: \"\\.\"");
	check(&c, "1,2,a\n\\.x\n",
	      "ERROR 22P02: invalid input syntax for type integer: \"\\.x\" / COPY s, line 2, "
	      "column k: \"\\.x\"");
	check(&c, "1,2,a\n\\.\r\n",
	      "ERROR 22P04: end-of-copy marker does not match previous newline style / COPY s, "
	      "line 2");
	check(&c, "1,2,a\r\n\\.\n",
	      "ERROR 22P04: unquoted newline found in data / COPY s, line 2 / hint: Use quoted CSV "
	      "field to represent newline.");
}

Test(copy, line_end_style_follows_the_first_line, .timeout = 30)
{
	/* PostgreSQL 15: \n, \r\n or bare \r files load; another line end is an error */
	opts o = {0};
	check(&o, "1\t2\ta\r2\t3\tb\r", "[1]|[2]|[a]|NULL\n[2]|[3]|[b]|NULL\n");
	check(&o, "1\t2\ta\r2\t3\tb", "[1]|[2]|[a]|NULL\n[2]|[3]|[b]|NULL\n");
	check(&o, "1\t2\ta\r", "[1]|[2]|[a]|NULL\n");
	check(&o, "1\t2\ta\\\rb\r\n", "[1]|[2]|[a\rb]|NULL\n");
	check(&o, "1\t2\ta\\\nb\r2\t3\tc\r", "[1]|[2]|[a\nb]|NULL\n[2]|[3]|[c]|NULL\n");
	const char *cr = " / hint: Use \"\\r\" to represent carriage return.";
	const char *nl = " / hint: Use \"\\n\" to represent newline.";
	char want[256];
	snprintf(want, sizeof want,
		 "ERROR 22P04: literal carriage return found in data / COPY s, line 2%s", cr);
	check(&o, "1\t2\ta\n2\t3\tb\r\n", want);
	check(&o, "1\t2\ta\r\n2\t3\tb\r", want);
	check(&o, "1\t2\ta\r\n2\t3\tb\rc\r\n", want);
	snprintf(want, sizeof want, "ERROR 22P04: literal newline found in data / COPY s, line 2%s",
		 nl);
	check(&o, "1\t2\ta\r\n2\t3\tb\n", want);
	check(&o, "1\t2\ta\r2\t3\tb\n", want);
	check(&o, "1\t1\ta\r\n2\t2\tb\\\r\nc\n3\tzz\te\r\n", want);
	/* an escaped \r on a \n file is data, so the \n after it ends the line */
	check(&o, "1\t2\ta\\\r2\t3\tb\n",
	      "ERROR 22P04: extra data after last expected column / COPY s, line 1: "
	      "\"1\t2\ta\\\r2\t3\tb\"");
	opts c = {.csv = true};
	check(&c, "1,2,a\r2,3,b\r", "[1]|[2]|[a]|NULL\n[2]|[3]|[b]|NULL\n");
	check(&c, "1,2,\"a\rb\"\n2,3,\"b\r\nc\"\n", "[1]|[2]|[a\rb]|NULL\n[2]|[3]|[b\r\nc]|NULL\n");
	check(&c, "1,2,\"a\nb\"\r2,3,\"b\nc\"\r", "[1]|[2]|[a\nb]|NULL\n[2]|[3]|[b\nc]|NULL\n");
	cr = " / hint: Use quoted CSV field to represent carriage return.";
	nl = " / hint: Use quoted CSV field to represent newline.";
	snprintf(want, sizeof want,
		 "ERROR 22P04: unquoted carriage return found in data / COPY s, line 2%s", cr);
	check(&c, "1,2,a\n2,3,b\r\n", want);
	check(&c, "1,2,a\r\n2,3,b\rc\r\n", want);
	snprintf(want, sizeof want,
		 "ERROR 22P04: unquoted newline found in data / COPY s, line 2%s", nl);
	check(&c, "1,2,a\r\n2,3,b\n", want);
	check(&c, "1,2,a\r2,3,b\n", want);
	/* the line counts the quoted line ends passed before the bad one */
	snprintf(want, sizeof want,
		 "ERROR 22P04: unquoted newline found in data / COPY s, line 3%s", nl);
	check(&c, "1,2,a\r2,3,\"b\rc\"\nx\r", want);
}

Test(copy, line_numbers_count_records_like_postgres, .timeout = 30)
{
	/* PostgreSQL 15 counts one line per record: an escaped newline in text format does not
	 * count; in CSV a quoted \n counts in a \n file except in the first record (the line-end
	 * style is not known while it is read), a quoted \r counts in \r and \r\n files */
	opts o = {0};
	check(&o, "1\tab\\\ncd\t1\n2\tx\n",
	      "ERROR 22P02: invalid input syntax for type double precision: \"ab\ncd\" / COPY s, "
	      "line 1, column v: \"ab\ncd\"");
	check(
	    &o, "1\t1\tab\\\ncd\n2\tx\tq\n",
	    "ERROR 22P02: invalid input syntax for type double precision: \"x\" / COPY s, line 2, "
	    "column v: \"x\"");
	check(
	    &o, "1\t1\ta\n2\t2\tb\\\nc\\\nd\n3\tzz\te\n",
	    "ERROR 22P02: invalid input syntax for type double precision: \"zz\" / COPY s, line 3, "
	    "column v: \"zz\"");
	opts c = {.csv = true};
	const char *zz = "ERROR 22P02: invalid input syntax for type double precision: \"zz\" / "
			 "COPY s, line %d, column v: \"zz\"";
	struct {
		const char *in;
		int line;
	} cases[] = {
	    {"1,1,\"ab\ncd\"\n2,zz,q\n", 2},	   {"1,1,\"ab\rcd\"\n2,zz,q\n", 3},
	    {"1,1,a\n2,2,\"x\ny\"\n3,zz,e\n", 4},  {"1,1,a\n2,2,\"x\ry\"\n3,zz,e\n", 3},
	    {"1,1,\"ab\r\ncd\"\r\n2,zz,q\r\n", 3}, {"1,1,\"ab\rcd\"\r2,zz,q\r", 3},
	    {"1,1,\"ab\ncd\"\r2,zz,q\r", 2},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char want[256];
		snprintf(want, sizeof want, zz, cases[i].line);
		check(&c, cases[i].in, want);
	}
	check(&c, "1,1,a\n2,2,\"x\ny\n",
	      "ERROR 22P04: unterminated CSV quoted field / COPY s, line 4: \"2,2,\"x\ny\n\"");
}

/* tally_copy_parser_line: the line of the last row handed out, as in PostgreSQL's context */
static int remember_line(void *ctx, const tally_value *row)
{
	(void)row;
	tally_buf *b = ((void **)ctx)[0];
	const tally_copy_parser *p = ((void **)ctx)[1];
	tally_buf_printf(b, "%llu ", (unsigned long long)tally_copy_parser_line(p));
	return 0;
}

Test(copy, parser_line_is_the_record_line, .timeout = 30)
{
	opts o = {0};
	tally_stmt st = make_stmt(&o);
	int map[3] = {0, 1, 2};
	tally_copy_parser *p;
	tally_err e;
	tally_buf b = {0};
	cr_assert_eq(tally_copy_parser_alloc(&st, &rel, map, 3, &p, &e), 0);
	void *ctx[2] = {&b, p};
	const char *in = "1\t2\ta\\\nb\n2\t3\tc\\\nd\\\ne\n3\t4\tf";
	cr_assert_eq(tally_copy_parser_feed(p, in, strlen(in), remember_line, ctx, &e), 0);
	cr_assert_eq(tally_copy_parser_finish(p, remember_line, ctx, &e), 0);
	tally_buf_putc(&b, 0);
	cr_expect_str_eq((const char *)b.data, "1 2 3 ");
	tally_copy_parser_free(p);
	tally_buf_free(&b);
}

Test(copy, long_backslash_line_in_small_chunks_is_linear, .timeout = 10)
{
	/* a carried record must not be rescanned per chunk: 1 MB of backslashes in 10-byte
	 * chunks (quadratic, this took minutes) */
	opts o = {0};
	size_t n = 1 << 20;
	char *in = malloc(n + 16);
	memcpy(in, "1\t2\t", 4);
	for (size_t i = 4; i < n; i++)
		in[i] = '\\';
	/* an even run: the newline is not escaped; decoded it is n/2 - 2 backslashes */
	size_t len = n;
	if ((len - 4) % 2)
		in[len++] = '\\';
	in[len++] = '\n';
	tally_stmt st = make_stmt(&o);
	int map[3] = {0, 1, 2};
	tally_copy_parser *p;
	tally_err e;
	collect c;
	memset(&c, 0, sizeof c);
	cr_assert_eq(tally_copy_parser_alloc(&st, &rel, map, 3, &p, &e), 0);
	for (size_t off = 0; off < len; off += 10) {
		size_t l = len - off < 10 ? len - off : 10;
		cr_assert_eq(tally_copy_parser_feed(p, in + off, l, on_row, &c, &e), 0, "%s",
			     e.message);
	}
	cr_assert_eq(tally_copy_parser_finish(p, on_row, &c, &e), 0, "%s", e.message);
	cr_expect_eq(c.seen, 1);
	cr_expect_eq(c.out.len, strlen("[1]|[2]|[]|NULL\n") + (len - 5) / 2);
	tally_copy_parser_free(p);
	tally_buf_free(&c.out);
	free(in);
}

Test(copy, csv_quoting, .timeout = 30)
{
	opts o = {.csv = true};
	check(&o, "1,2,abc\n", "[1]|[2]|[abc]|NULL\n");
	check(&o, "1,2,\"a,b\"\n", "[1]|[2]|[a,b]|NULL\n");
	check(&o, "1,2,\"say \"\"hi\"\"\"\n", "[1]|[2]|[say \"hi\"]|NULL\n");
	/* unquoted empty is NULL, quoted empty is '' */
	check(&o, "1,,\"\"\n2,\"3\",\n", "[1]|NULL|[]|NULL\n[2]|[3]|NULL|NULL\n");
	/* quotes may start anywhere in a field */
	check(&o, "1,2,a\"b,c\"d\n", "[1]|[2]|[ab,cd]|NULL\n");
	check(&o, "1,2,x\r\n3,4,y\r\n", "[1]|[2]|[x]|NULL\n[3]|[4]|[y]|NULL\n");
	/* backslashes are ordinary characters in CSV */
	check(&o, "1,2,a\\nb\n", "[1]|[2]|[a\\nb]|NULL\n");
	check(&o, "1,2,last", "[1]|[2]|[last]|NULL\n");
}

Test(copy, csv_multi_line_quoted_fields, .timeout = 30)
{
	opts o = {.csv = true};
	check(&o, "1,2,\"ab\ncd\"\n3,4,\"\r\n\"\n", "[1]|[2]|[ab\ncd]|NULL\n[3]|[4]|[\r\n]|NULL\n");
	check(&o, "1,2,\"a\n\n,\"\"\n\"\n", "[1]|[2]|[a\n\n,\"\n]|NULL\n");
}

Test(copy, csv_header_delimiter_null_quote_escape, .timeout = 30)
{
	opts h = {.csv = true, .header = true};
	check(&h, "k,v,name\n1,2,a\n", "[1]|[2]|[a]|NULL\n");
	check(&h, "k,v,\"multi\nline header\"\n1,2,a\n", "[1]|[2]|[a]|NULL\n");
	opts d = {.csv = true, .delim = '|', .null_string = "NA"};
	check(&d, "1|NA|\n2|\"NA\"|x\n",
	      "ERROR 22P02: invalid input syntax for type double "
	      "precision: \"NA\" / COPY s, line 2, column v: \"NA\"");
	check(&d, "1|NA|\n2|3|\"NA\"\n", "[1]|NULL|[]|NULL\n[2]|[3]|[NA]|NULL\n");
	opts q = {.csv = true, .quote = '\'', .escape = '\\'};
	check(&q, "1,2,'it\\'s, \\\\ fine'\n", "[1]|[2]|[it's, \\ fine]|NULL\n");
	check(&q, "1,2,'a\\b'\n", "[1]|[2]|[a\\b]|NULL\n");
	opts t = {.delim = ',', .null_string = ""};
	check(&t, "1,,x\n", "[1]|NULL|[x]|NULL\n");
}

Test(copy, column_list_maps_fields_and_leaves_others_null, .timeout = 30)
{
	opts o = {.ncols = 2, .colmap = {2, 0}};
	check(&o, "abc\t5\n", "[5]|NULL|[abc]|NULL\n");
	opts one = {.ncols = 1, .colmap = {1}};
	check(&one, "1.5\n\n",
	      "ERROR 22P02: invalid input syntax for type double precision: \"\" "
	      "/ COPY s, line 2, column v: \"\"");
}

Test(copy, errors_carry_postgres_context, .timeout = 30)
{
	opts o = {0};
	check(
	    &o, "1\t2.5\tabc\n2\tx\tq\n",
	    "ERROR 22P02: invalid input syntax for type double precision: \"x\" / COPY s, line 2, "
	    "column v: \"x\"");
	check(&o, "1\t2.5\n",
	      "ERROR 22P04: missing data for column \"name\" / COPY s, line 1: "
	      "\"1\t2.5\"");
	check(&o, "1\t2.5\tb\tc\n",
	      "ERROR 22P04: extra data after last expected column / COPY s, "
	      "line 1: \"1\t2.5\tb\tc\"");
	check(&o, "99999999999\t1\ta\n",
	      "ERROR 22003: value \"99999999999\" is out of range for "
	      "type integer / COPY s, line 1, column k: "
	      "\"99999999999\"");
	opts c = {.csv = true, .header = true};
	check(
	    &c, "k,v,name\n1,2,\"ab\ncd\"\n3,zz,e\n",
	    "ERROR 22P02: invalid input syntax for type double precision: \"zz\" / COPY s, line 4, "
	    "column v: \"zz\"");
	opts c2 = {.csv = true};
	/* the first record's quoted \n does not count (PostgreSQL 15) */
	check(&c2, "1,2,\"abc\n",
	      "ERROR 22P04: unterminated CSV quoted field / COPY s, line 1: "
	      "\"1,2,\"abc\n\"");
	check(&c2, "1,2,\"abc",
	      "ERROR 22P04: unterminated CSV quoted field / COPY s, line 1: "
	      "\"1,2,\"abc\"");
}

Test(copy, long_values_are_cut_in_context, .timeout = 30)
{
	opts o = {0};
	char in[400];
	memset(in, 'z', 300);
	memcpy(in + 300, "\t1\ta\n", 6);
	char *got = run(&o, in);
	cr_assert(strstr(got, "column k: \"zzzz") != NULL, "%s", got);
	cr_assert(strstr(got, "zzz...\"") != NULL, "%s", got);
	free(got);
}

Test(copy, callback_can_stop_and_rows_are_counted, .timeout = 30)
{
	opts o = {0};
	tally_stmt st = make_stmt(&o);
	int map[3] = {0, 1, 2};
	tally_copy_parser *p;
	tally_err e;
	collect c;
	memset(&c, 0, sizeof c);
	c.stop_after = 2;
	cr_assert_eq(tally_copy_parser_alloc(&st, &rel, map, 3, &p, &e), 0);
	const char *in = "1\t1\ta\n2\t2\tb\n3\t3\tc\n";
	cr_expect_eq(tally_copy_parser_feed(p, in, strlen(in), on_row, &c, &e), 7);
	cr_expect_eq(c.seen, 2);
	cr_expect_eq(tally_copy_parser_rows(p), 2);
	tally_copy_parser_free(p);
	tally_buf_free(&c.out);
	uint64_t n = 0;
	char *got = run_cuts(&o, "1\t1\ta\n2\t2\tb\n", 12, NULL, 0, &n);
	cr_expect_eq(n, 2);
	free(got);
}

Test(copy, random_rows_survive_random_chunking, .timeout = 60)
{
	/* generate rows with every kind of escape, in text and CSV, and feed in random chunks */
	srand(42);
	static const char *const eols[] = {"\n", "\r\n", "\r"};
	for (int run = 0; run < 6; run++) {
		int fmt = run % 2;
		const char *eol =
		    eols[run / 2]; /* one line-end style per file, as PostgreSQL wants */
		opts o = {.csv = fmt == 1};
		tally_buf in = {0}, want = {0};
		for (int r = 0; r < 300; r++) {
			char name[32];
			int nl = rand() % 8;
			for (int i = 0; i < nl; i++) {
				const char pool[] = "ab,\t\n\\\"x. ";
				name[i] = pool[rand() % (sizeof pool - 1)];
			}
			name[nl] = 0;
			tally_buf_printf(&in, "%d%c%d.5%c", r, o.csv ? ',' : '\t', r,
					 o.csv ? ',' : '\t');
			if (o.csv) {
				tally_buf_putc(&in, '"');
				for (int i = 0; i < nl; i++) {
					if (name[i] == '"')
						tally_buf_putc(&in, '"');
					tally_buf_putc(&in, (uint8_t)name[i]);
				}
				tally_buf_putc(&in, '"');
			} else {
				for (int i = 0; i < nl; i++) {
					if (name[i] == '\t')
						tally_buf_append(&in, "\\t", 2);
					else if (name[i] == '\n')
						tally_buf_append(&in, "\\n", 2);
					else if (name[i] == '\\')
						tally_buf_append(&in, "\\\\", 2);
					else
						tally_buf_putc(&in, (uint8_t)name[i]);
				}
			}
			tally_buf_append(&in, eol, strlen(eol));
			tally_buf_printf(&want, "[%d]|[%d.5]|[%s]|NULL\n", r, r, name);
		}
		tally_buf_putc(&want, 0);
		for (int trial = 0; trial < 50; trial++) {
			size_t cuts[64];
			int nc = rand() % 64;
			for (int i = 0; i < nc; i++)
				cuts[i] = (size_t)rand() % (in.len + 1);
			for (int i = 0; i < nc; i++)
				for (int j = i + 1; j < nc; j++)
					if (cuts[j] < cuts[i]) {
						size_t t = cuts[i];
						cuts[i] = cuts[j];
						cuts[j] = t;
					}
			char *got = run_cuts(&o, (const char *)in.data, in.len, cuts, nc, NULL);
			cr_assert_str_eq(got, (const char *)want.data, "format %d trial %d", fmt,
					 trial);
			free(got);
		}
		tally_buf_free(&in);
		tally_buf_free(&want);
	}
}

Test(copy, overlong_line_is_refused, .timeout = 30)
{
	opts o = {0};
	tally_stmt st = make_stmt(&o);
	int map[3] = {0, 1, 2};
	tally_copy_parser *p;
	tally_err e;
	cr_assert_eq(tally_copy_parser_alloc(&st, &rel, map, 3, &p, &e), 0);
	size_t chunk = 1 << 20;
	char *buf = malloc(chunk);
	memset(buf, 'a', chunk);
	int rc = 0;
	for (int i = 0; i < 20 && rc == 0; i++)
		rc = tally_copy_parser_feed(p, buf, chunk, on_row, NULL, &e);
	cr_expect_eq(rc, -1);
	cr_expect_str_eq(e.sqlstate, "54000");
	tally_copy_parser_free(p);
	free(buf);
}

Test(copy, invalid_utf8_is_rejected_like_postgres, .timeout = 30)
{
	opts o = {0};
	check(
	    &o,
	    "1\t2\tab\xc3\x28"
	    "cd\n",
	    "ERROR 22021: invalid byte sequence for encoding \"UTF8\": 0xc3 0x28 / COPY s, line 1");
	check(
	    &o, "1\t2\tab\\xc3cd\n",
	    "ERROR 22021: invalid byte sequence for encoding \"UTF8\": 0xc3 0x63 / COPY s, line 1: "
	    "\"1\t2\tab\\xc3cd\"");
	check(&o, "1\t2\tab\\000cd\n",
	      "ERROR 22021: invalid byte sequence for encoding \"UTF8\": 0x00 / COPY s, line 1: "
	      "\"1\t2\tab\\000cd\"");
	check(&o, "1\t2\t\xc3\xa9t\xc3\xa9 \\xe2\\x82\\xac\n",
	      "[1]|[2]|[\xc3\xa9t\xc3\xa9 \xe2\x82\xac]|NULL\n");
}
