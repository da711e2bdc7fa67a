/*
 * fuzz_copy.c - fuzz target for COPY FROM STDIN data parsing. The first input byte picks the
 * format and options, which are spelled out as a real COPY statement and parsed by
 * tally_sql_parse against the fixed stream "s"; the rest is the COPY data, fed to the parser
 * in chunks whose sizes are derived from the input (so lines, quotes and escapes get split at
 * every possible place), then finished. Every row handed out is checked against the stream's
 * column types and formatted.
 *
 * Option byte: bit0 CSV, bit1 HEADER (CSV), bit2 DELIMITER '|', bit3 NULL 'NULL',
 * bit4 column list (name, k, ts), bit5 QUOTE '''' (CSV), bit6 ESCAPE '\' (CSV),
 * bit7 stop after the first row (the callback returns nonzero).
 */
#include "fuzz.h"

#include "tally/copy.h"

typedef struct copy_ctx {
	tally_buf out;
	uint64_t rows;
	bool stop_first;
} copy_ctx;

static int on_row(void *p, const tally_value *row)
{
	copy_ctx *c = p;
	for (int i = 0; i < FUZZ_STREAM_NCOLS; i++) {
		FUZZ_CHECK(row[i].isnull || row[i].type == fuzz_stream_cols[i].type);
		tally_buf_reset(&c->out);
		if (!row[i].isnull)
			tally_value_format(&row[i], &c->out);
	}
	c->rows++;
	return c->stop_first ? 7 : 0;
}

static void build_stmt(uint8_t o, char *sql, size_t sz)
{
	bool csv = o & 1;
	char opts[256];
	size_t n = 0;
	opts[0] = 0;
#define OPT(s) n += (size_t)snprintf(opts + n, sizeof opts - n, "%s%s", n ? ", " : "", s)
	OPT(csv ? "FORMAT csv" : "FORMAT text");
	if (csv && (o & 2))
		OPT("HEADER");
	if (o & 4)
		OPT("DELIMITER '|'");
	if (o & 8)
		OPT("NULL 'NULL'");
	if (csv && (o & 32))
		OPT("QUOTE ''''");
	if (csv && (o & 64))
		OPT("ESCAPE '\\'");
#undef OPT
	snprintf(sql, sz, "COPY s %s FROM STDIN WITH (%s)", (o & 16) ? "(name, k, ts)" : "", opts);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	char sql[512];
	build_stmt(data[0], sql, sizeof sql);
	const char *body = (const char *)data + 1;
	size_t len = size - 1;

	tally_arena a = {0};
	tally_stmt *stmts;
	int nst;
	tally_err err;
	tally_err_clear(&err);
	tally_copy_parser *p = NULL;
	copy_ctx cc = {.stop_first = (data[0] & 128) != 0};
	int colmap[TALLY_MAX_COLUMNS];
	int ncols;
	tally_relation stream = {"s", FUZZ_STREAM_NCOLS, fuzz_stream_cols};
	tally_relation user = stream;
	user.ncols--;
	/* Every option combination above is valid COPY syntax: failing to parse is a finding. */
	FUZZ_CHECK(tally_sql_parse(sql, &a, &stmts, &nst, &err) == 0);
	FUZZ_CHECK(nst == 1 && stmts[0].kind == TALLY_STMT_COPY);
	const tally_stmt *st = &stmts[0];
	FUZZ_CHECK(tally_sql_column_map(&user, st->u.copy.ncols,
					(const char(*)[TALLY_NAME_MAX])st->u.copy.cols, colmap,
					&ncols, &err) == 0);
	FUZZ_CHECK(tally_copy_parser_alloc(st, &stream, colmap, ncols, &p, &err) == 0);

	/* Chunk sizes: mostly small (split everywhere), sometimes large, from the input. */
	uint64_t seed = (uint64_t)data[0] * 0x100000001b3ull ^ (uint64_t)len;
	for (size_t i = 0; i < len && i < 16; i++)
		seed = seed * 31 + (uint8_t)body[i];
	size_t off = 0;
	int rc = 0;
	while (off < len) {
		uint64_t r = fuzz_rand(&seed);
		size_t chunk =
		    (r & 3) == 0 ? (size_t)(r >> 8) % 4096 + 1 : (size_t)(r >> 8) % 8 + 1;
		if (chunk > len - off)
			chunk = len - off;
		uint64_t before = tally_copy_parser_rows(p);
		tally_err_clear(&err);
		rc = tally_copy_parser_feed(p, body + off, chunk, on_row, &cc, &err);
		FUZZ_CHECK(tally_copy_parser_rows(p) >= before);
		off += chunk;
		if (rc != 0)
			break;
		/* An empty chunk must be harmless too. */
		if ((r & 0xf0) == 0x10)
			FUZZ_CHECK(tally_copy_parser_feed(p, body + off, 0, on_row, &cc, &err) ==
				   0);
	}
	if (rc == 0) {
		tally_err_clear(&err);
		rc = tally_copy_parser_finish(p, on_row, &cc, &err);
	}
	if (rc == 7)
		FUZZ_CHECK(cc.stop_first && cc.rows >= 1);
	else if (rc != 0)
		FUZZ_CHECK(tally_err_isset(&err));
	else
		FUZZ_CHECK(tally_copy_parser_rows(p) == cc.rows);
	tally_copy_parser_free(p);
	tally_buf_free(&cc.out);
	tally_arena_free(&a);
	return 0;
}
