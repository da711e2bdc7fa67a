/*
 * types.h - SQL types and values: text input (as PostgreSQL parses it), text output (as
 * PostgreSQL prints it), comparison, and the canonical type-tagged encoding of group keys.
 *
 * Values are small tagged structs passed by value. Text payloads are borrowed pointers whose
 * lifetime is given by whoever produced the value (usually a statement arena).
 */
#ifndef TALLY_TYPES_H
#define TALLY_TYPES_H

#include "tally/core.h"

typedef enum tally_type {
	TALLY_T_UNKNOWN = 0, /* untyped literal ('abc' or NULL before resolution) */
	TALLY_T_BOOL,
	TALLY_T_INT2,
	TALLY_T_INT4,
	TALLY_T_INT8,
	TALLY_T_FLOAT4,
	TALLY_T_FLOAT8,
	TALLY_T_NUMERIC, /* results only: exact sums of bigint, avg of integers */
	TALLY_T_TEXT,
	TALLY_T_TIMESTAMPTZ,
	TALLY_T_COUNT_
} tally_type;

/* PostgreSQL type OIDs, for RowDescription. */
#define TALLY_OID_BOOL 16
#define TALLY_OID_INT8 20
#define TALLY_OID_INT2 21
#define TALLY_OID_INT4 23
#define TALLY_OID_TEXT 25
#define TALLY_OID_FLOAT4 700
#define TALLY_OID_FLOAT8 701
#define TALLY_OID_TIMESTAMPTZ 1184
#define TALLY_OID_NUMERIC 1700

/* Exact decimal: value = m / 10^scale, 0 <= scale <= 38. Covers 128-bit integer sums
 * (scale 0) and averages of integers rounded the way PostgreSQL's numeric division does. */
typedef struct tally_numeric {
	__int128 m;
	int16_t scale;
} tally_numeric;

typedef struct tally_value {
	uint8_t type;	/* tally_type */
	uint8_t isnull; /* 1 = SQL NULL (the payload is meaningless) */
	union {
		bool b;
		int64_t i;  /* INT2, INT4, INT8 (range-checked to the type) */
		double f;   /* FLOAT4 (already rounded to float), FLOAT8 */
		int64_t ts; /* TIMESTAMPTZ: microseconds since 1970-01-01 00:00:00 UTC */
		tally_numeric n;
		struct {
			const char *p; /* not NUL-terminated */
			uint32_t len;
		} s; /* TEXT and UNKNOWN */
	} u;
} tally_value;

/* Bounds documented in docs/sql.md. */
#define TALLY_TEXT_MAX (1u << 20) /* one text value: 1 MiB */

static inline tally_value tally_null(tally_type t)
{
	tally_value v;
	memset(&v, 0, sizeof v);
	v.type = (uint8_t)t;
	v.isnull = 1;
	return v;
}
static inline tally_value tally_int(tally_type t, int64_t i)
{
	tally_value v;
	memset(&v, 0, sizeof v);
	v.type = (uint8_t)t;
	v.u.i = i;
	return v;
}
static inline tally_value tally_float(tally_type t, double f)
{
	tally_value v;
	memset(&v, 0, sizeof v);
	v.type = (uint8_t)t;
	v.u.f = f;
	return v;
}
static inline tally_value tally_bool(bool b)
{
	tally_value v;
	memset(&v, 0, sizeof v);
	v.type = TALLY_T_BOOL;
	v.u.b = b;
	return v;
}
static inline tally_value tally_text(const char *p, uint32_t len)
{
	tally_value v;
	memset(&v, 0, sizeof v);
	v.type = TALLY_T_TEXT;
	v.u.s.p = p;
	v.u.s.len = len;
	return v;
}

/* SQL name of a type as PostgreSQL prints it ("integer", "double precision", "timestamp with
 * time zone", ...). */
const char *tally_type_name(tally_type t);
uint32_t tally_type_oid(tally_type t);
/* PostgreSQL's typlen for RowDescription (-1 for varlena). */
int16_t tally_type_len(tally_type t);
/* Resolve a type name as written in DDL or casts (case-insensitive; "int", "int4", "integer",
 * "smallint", "int2", "bigint", "int8", "real", "float4", "double precision", "float8",
 * "float", "boolean", "bool", "text", "varchar", "character varying", "timestamptz",
 * "timestamp", "timestamp with time zone", "timestamp without time zone", "numeric").
 * The caller joins multi-word names with single spaces. Returns TALLY_T_UNKNOWN if unknown. */
tally_type tally_type_from_name(const char *name);
static inline bool tally_type_is_int(tally_type t)
{
	return t == TALLY_T_INT2 || t == TALLY_T_INT4 || t == TALLY_T_INT8;
}
static inline bool tally_type_is_float(tally_type t)
{
	return t == TALLY_T_FLOAT4 || t == TALLY_T_FLOAT8;
}
static inline bool tally_type_is_numeric_kind(tally_type t)
{
	return tally_type_is_int(t) || tally_type_is_float(t) || t == TALLY_T_NUMERIC;
}

/* Parse PostgreSQL text input for type t (the same input PostgreSQL's type input functions
 * accept: surrounding whitespace for numbers, 'true'/'t'/'yes'/'on'/'1' and prefixes for
 * booleans, 'NaN'/'Infinity' for floats, ISO timestamps with optional time zone offset, 'Z',
 * 'T' separator, fractional seconds; a timestamp without zone is taken as UTC; 'epoch',
 * 'infinity' are refused). Text input is copied by reference (out->u.s.p = s).
 * Errors as PostgreSQL words them, e.g. invalid input syntax for type integer: "abc"
 * (22P02) and value "99999999999" is out of range for type integer (22003).
 * Does not handle NULL: the caller decides what text means NULL. */
int tally_value_parse(tally_type t, const char *s, size_t len, tally_value *out, tally_err *err);

/* Append the PostgreSQL text output of v (not NULL) to b: integers in decimal; floats in
 * shortest round-trip form like PostgreSQL 12+ ("1.5", "1e+100", "NaN", "Infinity",
 * "-Infinity", "-0"); booleans "t"/"f"; timestamptz "2024-01-02 03:04:05.123456+00" (UTC,
 * fraction trimmed of trailing zeros and omitted when 0); numeric with exactly `scale`
 * fractional digits. */
void tally_value_format(const tally_value *v, tally_buf *b);

/* Convert v to type t with PostgreSQL's cast rules (int<->int with range checks, int->float,
 * float->int rounding half away from zero with range check, anything->text via output,
 * text/unknown->anything via input, numeric->float). NULL stays NULL of type t. Text results
 * are allocated in arena a. */
int tally_value_cast(const tally_value *v, tally_type t, tally_value *out, tally_arena *a,
		     tally_err *err);

/* Total order used by ORDER BY, min/max and comparisons: both values non-NULL and of
 * comparable types (all numeric kinds compare with each other exactly enough: ints exactly,
 * int vs float as PostgreSQL would after promotion; text by bytes (C collation); NaN greater
 * than every other float, equal to NaN). Returns <0, 0, >0. */
int tally_value_cmp(const tally_value *a, const tally_value *b);

/* Canonical type-tagged encoding of one value, for group keys: a tag byte (0 for NULL, else
 * the tally_type), then INT2/INT4/INT8/TIMESTAMPTZ as 8 bytes big-endian, FLOAT as the 8-byte
 * big-endian IEEE bits of the double with -0.0 normalised to 0.0 and every NaN to one NaN,
 * BOOL as 1 byte, TEXT as u32 length + bytes. */
void tally_key_encode(const tally_value *v, tally_buf *b);
/* Decode one value at r into out (text points into r's memory). */
int tally_key_decode(tally_rd *r, tally_value *out);

/* Numeric helpers. */
/* Exact quotient sum/count rounded half away from zero to PostgreSQL's select_div_scale for
 * numeric division of an integer by a positive integer (what avg(integer) returns). */
tally_numeric tally_numeric_avg(__int128 sum, int64_t count);
/* The same for a numeric sum with a fraction (avg(numeric)): PostgreSQL's numeric_div of sum by a
 * positive count, result scale at least sum.scale, capped to 38 digits. count <= 0 gives 0. */
tally_numeric tally_numeric_div_count(tally_numeric sum, int64_t count);
double tally_numeric_to_double(tally_numeric n);

/* Time helpers. */
/* date_trunc(unit, ts) in UTC. unit case-insensitive: microseconds, milliseconds, second,
 * minute, hour, day, week (ISO, Monday), month, quarter, year, decade, century, millennium.
 * Unknown unit: 22023 error `unit "x" not recognized for type timestamp with time zone`. */
int tally_ts_trunc(const char *unit, size_t unitlen, int64_t ts, int64_t *out, tally_err *err);

#endif
