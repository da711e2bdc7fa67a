/*
 * copy.h - COPY FROM STDIN data parsing, text and CSV formats, as PostgreSQL reads them.
 *
 * The client's CopyData messages arrive as arbitrary chunks: a line may be split across
 * chunks. The parser buffers at most one partial line (bounded by TALLY_COPY_LINE_MAX) and
 * hands out complete rows as typed values.
 *
 * Text format: fields separated by the delimiter (default tab), NULL as the null string
 * (default \N), backslash escapes \b \f \n \r \t \v \\ \ooo \xhh and \<delimiter>; a line
 * "\." ends the data. CSV: fields separated by the delimiter (default ','), quoted with
 * `quote`, `escape` doubling inside quotes, an unquoted empty field (or the null string) is
 * NULL while a quoted empty string is '', quoted fields may span lines, optional HEADER line
 * skipped. As in PostgreSQL, the first line's end (\n, \r\n or a bare \r) sets the line-end
 * style of the data and any other unescaped/unquoted line end is a 22P04 error; in text format
 * "\." anywhere must be followed by the line end ("end-of-copy marker corrupt" otherwise).
 * Line numbers (error context, tally_copy_parser_line) are PostgreSQL's: one per record (plus
 * the header), and in CSV the quoted line ends it counts.
 */
#ifndef TALLY_COPY_H
#define TALLY_COPY_H

#include "tally/sql.h"

#define TALLY_COPY_LINE_MAX (16u << 20) /* one row: 16 MiB */

typedef struct tally_copy_parser tally_copy_parser;

/* Create a parser for rows of `stream` with the statement's options (st->kind == COPY).
 * colmap/ncols as from tally_sql_column_map: field i goes to stream column colmap[i]; stream
 * columns not listed are NULL. */
int tally_copy_parser_alloc(const tally_stmt *st, const tally_relation *stream, const int *colmap,
			    int ncols, tally_copy_parser **out, tally_err *err);
void tally_copy_parser_free(tally_copy_parser *p);

/* Row callback: row has stream->ncols values (text values point into parser memory valid
 * only during the call). Return 0 to go on, nonzero to stop (the value is returned by
 * tally_copy_parser_feed/finish). */
typedef int (*tally_copy_row_fn)(void *ctx, const tally_value *row);

/* Feed one chunk; complete rows are parsed and passed to fn in order. Errors (22P02 bad
 * value, 22P04 missing data for column "x" / extra data after last expected column,
 * 54000 row too long) carry detail `COPY s, line N, column c: "value"` like PostgreSQL's
 * context line. After an error the parser must be freed. */
int tally_copy_parser_feed(tally_copy_parser *p, const char *data, size_t len, tally_copy_row_fn fn,
			   void *ctx, tally_err *err);
/* End of data (CopyDone): parse a final line without a newline, fail on an open quote. */
int tally_copy_parser_finish(tally_copy_parser *p, tally_copy_row_fn fn, void *ctx, tally_err *err);
/* Rows parsed so far (for "COPY n"). */
uint64_t tally_copy_parser_rows(const tally_copy_parser *p);
/* Line number (counted as PostgreSQL does, see above) of the last row handed to the row
 * callback (for error context). */
uint64_t tally_copy_parser_line(const tally_copy_parser *p);

#endif
