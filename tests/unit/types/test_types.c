/*
 * test_types.c - SQL value input/output, casts, comparison, group-key encoding, numeric
 * averages and date_trunc. Every golden value was checked against PostgreSQL 15
 * (TimeZone UTC, DateStyle ISO, extra_float_digits 1).
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "tally/types.h"

/* Parse s as type t and return its output text ("ERROR: <message>" on failure); static buffer. */
static const char *roundtrip(tally_type t, const char *s)
{
	static char out[600];
	tally_value v;
	tally_err e;
	memset(&e, 0, sizeof e);
	if (tally_value_parse(t, s, strlen(s), &v, &e)) {
		snprintf(out, sizeof out, "ERROR %s: %s", e.sqlstate, e.message);
		return out;
	}
	tally_buf b = {0};
	tally_value_format(&v, &b);
	snprintf(out, sizeof out, "%.*s", (int)b.len, (const char *)b.data);
	tally_buf_free(&b);
	return out;
}

struct golden {
	tally_type t;
	const char *in;
	const char *out;
};

static void check_goldens(const struct golden *g, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		const char *got = roundtrip(g[i].t, g[i].in);
		cr_expect_str_eq(got, g[i].out, "%s '%s': got '%s' want '%s'",
				 tally_type_name(g[i].t), g[i].in, got, g[i].out);
	}
}

Test(types, integer_input_matches_postgres, .timeout = 30)
{
	static const struct golden g[] = {
	    {TALLY_T_INT4, " 12 ", "12"},
	    {TALLY_T_INT4, "-0", "0"},
	    {TALLY_T_INT4, "+5", "5"},
	    {TALLY_T_INT4, "2147483647", "2147483647"},
	    {TALLY_T_INT4, "-2147483648", "-2147483648"},
	    {TALLY_T_INT4, "2147483648",
	     "ERROR 22003: value \"2147483648\" is out of range for type integer"},
	    {TALLY_T_INT4, "99999999999",
	     "ERROR 22003: value \"99999999999\" is out of range for type integer"},
	    {TALLY_T_INT4, "abc", "ERROR 22P02: invalid input syntax for type integer: \"abc\""},
	    {TALLY_T_INT4, "", "ERROR 22P02: invalid input syntax for type integer: \"\""},
	    {TALLY_T_INT4, "1.5", "ERROR 22P02: invalid input syntax for type integer: \"1.5\""},
	    {TALLY_T_INT4, "0x10", "ERROR 22P02: invalid input syntax for type integer: \"0x10\""},
	    {TALLY_T_INT4, "1_000",
	     "ERROR 22P02: invalid input syntax for type integer: \"1_000\""},
	    {TALLY_T_INT4, " - 1", "ERROR 22P02: invalid input syntax for type integer: \" - 1\""},
	    {TALLY_T_INT2, "32767", "32767"},
	    {TALLY_T_INT2, "-32768", "-32768"},
	    {TALLY_T_INT2, "32768",
	     "ERROR 22003: value \"32768\" is out of range for type smallint"},
	    {TALLY_T_INT2, "x", "ERROR 22P02: invalid input syntax for type smallint: \"x\""},
	    {TALLY_T_INT8, "9223372036854775807", "9223372036854775807"},
	    {TALLY_T_INT8, "-9223372036854775808", "-9223372036854775808"},
	    {TALLY_T_INT8, "9223372036854775808",
	     "ERROR 22003: value \"9223372036854775808\" is out of range for type bigint"},
	    {TALLY_T_INT8, "12x", "ERROR 22P02: invalid input syntax for type bigint: \"12x\""},
	};
	check_goldens(g, sizeof g / sizeof g[0]);
}

Test(types, float_output_is_shortest_like_postgres, .timeout = 30)
{
	static const struct golden g[] = {
	    {TALLY_T_FLOAT8, "0.1", "0.1"},
	    {TALLY_T_FLOAT8, "1e100", "1e+100"},
	    {TALLY_T_FLOAT8, "1.5e-7", "1.5e-07"},
	    {TALLY_T_FLOAT8, "123456789012345680", "1.2345678901234568e+17"},
	    {TALLY_T_FLOAT8, "1e15", "1e+15"},
	    {TALLY_T_FLOAT8, "1e14", "100000000000000"},
	    {TALLY_T_FLOAT8, "1e10", "10000000000"},
	    {TALLY_T_FLOAT8, "0.0001", "0.0001"},
	    {TALLY_T_FLOAT8, "0.00001", "1e-05"},
	    {TALLY_T_FLOAT8, "-0", "-0"},
	    {TALLY_T_FLOAT8, "5e-324", "5e-324"},
	    {TALLY_T_FLOAT8, "1.7976931348623157e308", "1.7976931348623157e+308"},
	    {TALLY_T_FLOAT8, "  12.5  ", "12.5"},
	    {TALLY_T_FLOAT8, "3.610897683334488e17", "3.6108976833344883e+17"},
	    {TALLY_T_FLOAT8, "0x10", "16"},
	    {TALLY_T_FLOAT8, "NaN", "NaN"},
	    {TALLY_T_FLOAT8, "nan", "NaN"},
	    {TALLY_T_FLOAT8, "Infinity", "Infinity"},
	    {TALLY_T_FLOAT8, "-INFINITY", "-Infinity"},
	    {TALLY_T_FLOAT8, " inf", "Infinity"},
	    {TALLY_T_FLOAT8, "-inf", "-Infinity"},
	    {TALLY_T_FLOAT8, "1e999",
	     "ERROR 22003: \"1e999\" is out of range for type double precision"},
	    {TALLY_T_FLOAT8, "1e-400",
	     "ERROR 22003: \"1e-400\" is out of range for type double precision"},
	    {TALLY_T_FLOAT8, "abc",
	     "ERROR 22P02: invalid input syntax for type double precision: \"abc\""},
	    {TALLY_T_FLOAT8, "  ",
	     "ERROR 22P02: invalid input syntax for type double precision: \"  \""},
	    {TALLY_T_FLOAT4, "0.1", "0.1"},
	    {TALLY_T_FLOAT4, "1e6", "1e+06"},
	    {TALLY_T_FLOAT4, "123456", "123456"},
	    {TALLY_T_FLOAT4, "12345678", "1.2345678e+07"},
	    {TALLY_T_FLOAT4, "72824784.47867934", "7.2824784e+07"},
	    {TALLY_T_FLOAT4, "3.4e38", "3.4e+38"},
	    {TALLY_T_FLOAT4, "1e39", "ERROR 22003: \"1e39\" is out of range for type real"},
	    {TALLY_T_FLOAT4, "1e-50", "ERROR 22003: \"1e-50\" is out of range for type real"},
	};
	check_goldens(g, sizeof g / sizeof g[0]);
}

Test(types, float_output_round_trips_random_bits, .timeout = 30)
{
	srand(7);
	for (int i = 0; i < 20000; i++) {
		uint64_t bits =
		    ((uint64_t)rand() << 42) ^ ((uint64_t)rand() << 21) ^ (uint64_t)rand();
		double d;
		memcpy(&d, &bits, 8);
		if (!isfinite(d))
			continue;
		tally_value v = tally_float(TALLY_T_FLOAT8, d), back;
		tally_buf b = {0};
		tally_value_format(&v, &b);
		cr_assert_eq(
		    tally_value_parse(TALLY_T_FLOAT8, (const char *)b.data, b.len, &back, NULL), 0);
		cr_assert(back.u.f == d, "%.17g printed as %.*s", d, (int)b.len, b.data);
		tally_buf_free(&b);
	}
}

Test(types, boolean_input_prefixes, .timeout = 30)
{
	static const struct golden g[] = {
	    {TALLY_T_BOOL, "t", "t"},
	    {TALLY_T_BOOL, "tr", "t"},
	    {TALLY_T_BOOL, "TRUE", "t"},
	    {TALLY_T_BOOL, " yes ", "t"},
	    {TALLY_T_BOOL, "y", "t"},
	    {TALLY_T_BOOL, "on", "t"},
	    {TALLY_T_BOOL, "1", "t"},
	    {TALLY_T_BOOL, "f", "f"},
	    {TALLY_T_BOOL, "n", "f"},
	    {TALLY_T_BOOL, "no", "f"},
	    {TALLY_T_BOOL, "of", "f"},
	    {TALLY_T_BOOL, "OFF", "f"},
	    {TALLY_T_BOOL, "0", "f"},
	    {TALLY_T_BOOL, "o", "ERROR 22P02: invalid input syntax for type boolean: \"o\""},
	    {TALLY_T_BOOL, "2", "ERROR 22P02: invalid input syntax for type boolean: \"2\""},
	    {TALLY_T_BOOL, "truex",
	     "ERROR 22P02: invalid input syntax for type boolean: \"truex\""},
	    {TALLY_T_BOOL, "", "ERROR 22P02: invalid input syntax for type boolean: \"\""},
	};
	check_goldens(g, sizeof g / sizeof g[0]);
}

Test(types, timestamptz_input_output, .timeout = 30)
{
	static const struct golden g[] = {
	    {TALLY_T_TIMESTAMPTZ, "2024-01-02 03:04:05", "2024-01-02 03:04:05+00"},
	    {TALLY_T_TIMESTAMPTZ, "2024-01-02T03:04:05.123456Z", "2024-01-02 03:04:05.123456+00"},
	    {TALLY_T_TIMESTAMPTZ, "2024-01-02 03:04:05+02", "2024-01-02 01:04:05+00"},
	    {TALLY_T_TIMESTAMPTZ, "2024-01-02 03:04:05+05:30", "2024-01-01 21:34:05+00"},
	    {TALLY_T_TIMESTAMPTZ, "2024-01-02 03:04:05 +0530", "2024-01-01 21:34:05+00"},
	    {TALLY_T_TIMESTAMPTZ, "2024-01-02 03:04 -08", "2024-01-02 11:04:00+00"},
	    {TALLY_T_TIMESTAMPTZ, "2024-01-02", "2024-01-02 00:00:00+00"},
	    {TALLY_T_TIMESTAMPTZ, "  2024-01-02 03:04:05.000100  ", "2024-01-02 03:04:05.0001+00"},
	    {TALLY_T_TIMESTAMPTZ, "2024-01-02 24:00:00", "2024-01-03 00:00:00+00"},
	    {TALLY_T_TIMESTAMPTZ, "2024-01-02 23:59:60", "2024-01-03 00:00:00+00"},
	    {TALLY_T_TIMESTAMPTZ, "2024-02-29 12:00", "2024-02-29 12:00:00+00"},
	    {TALLY_T_TIMESTAMPTZ, "1969-12-31 23:59:59.999999", "1969-12-31 23:59:59.999999+00"},
	    {TALLY_T_TIMESTAMPTZ, "0001-01-01 00:00:00", "0001-01-01 00:00:00+00"},
	    {TALLY_T_TIMESTAMPTZ, "9999-12-31 23:59:59.999999", "9999-12-31 23:59:59.999999+00"},
	    {TALLY_T_TIMESTAMPTZ, "2024-01-02 03:04:05.1234565", "2024-01-02 03:04:05.123456+00"},
	    {TALLY_T_TIMESTAMPTZ, "2024-01-02 03:04:05.1234575", "2024-01-02 03:04:05.123458+00"},
	    {TALLY_T_TIMESTAMPTZ, "2024-01-02 3:4:5", "2024-01-02 03:04:05+00"},
	    {TALLY_T_TIMESTAMPTZ, "2024-1-2", "2024-01-02 00:00:00+00"},
	    {TALLY_T_TIMESTAMPTZ, "2024-01-02 03:04:05 UTC", "2024-01-02 03:04:05+00"},
	    {TALLY_T_TIMESTAMPTZ, "x",
	     "ERROR 22007: invalid input syntax for type timestamp with time zone: \"x\""},
	    {TALLY_T_TIMESTAMPTZ, "epoch",
	     "ERROR 22007: invalid input syntax for type timestamp with time zone: \"epoch\""},
	    {TALLY_T_TIMESTAMPTZ, "2024-02-30",
	     "ERROR 22008: date/time field value out of range: \"2024-02-30\""},
	    {TALLY_T_TIMESTAMPTZ, "2024-13-01",
	     "ERROR 22008: date/time field value out of range: \"2024-13-01\""},
	    {TALLY_T_TIMESTAMPTZ, "2024-01-02 24:00:01",
	     "ERROR 22008: date/time field value out of range: \"2024-01-02 24:00:01\""},
	};
	check_goldens(g, sizeof g / sizeof g[0]);
}

Test(types, numeric_avg_uses_postgres_division_scale, .timeout = 30)
{
	static const struct {
		__int128 sum;
		int64_t count;
		const char *want;
	} c[] = {
	    {3, 2, "1.5000000000000000"},
	    {5, 3, "1.6666666666666667"},
	    {200000000000000001, 2, "100000000000000001"},
	    {-3, 2, "-1.5000000000000000"},
	    {0, 3, "0.00000000000000000000"},
	    {(__int128)INT64_MAX * 3, 3, "9223372036854775807"},
	    {1, 7, "0.14285714285714285714"},
	    {12345, 7, "1763.5714285714285714"},
	    {-5, 2, "-2.5000000000000000"},
	    {2, 3, "0.66666666666666666667"},
	    {1, 1000000000000000000, "0.000000000000000001000000000000000000"},
	};
	for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
		tally_value v;
		memset(&v, 0, sizeof v);
		v.type = TALLY_T_NUMERIC;
		v.u.n = tally_numeric_avg(c[i].sum, c[i].count);
		tally_buf b = {0};
		tally_value_format(&v, &b);
		cr_expect(b.len == strlen(c[i].want) && memcmp(b.data, c[i].want, b.len) == 0,
			  "case %zu: got %.*s want %s", i, (int)b.len, b.data, c[i].want);
		tally_buf_free(&b);
	}
}

Test(types, date_trunc_units, .timeout = 30)
{
	static const struct {
		const char *unit, *in, *want;
	} c[] = {
	    {"microseconds", "2024-05-17 13:45:12.345678", "2024-05-17 13:45:12.345678+00"},
	    {"milliseconds", "2024-05-17 13:45:12.345678", "2024-05-17 13:45:12.345+00"},
	    {"second", "2024-05-17 13:45:12.345678", "2024-05-17 13:45:12+00"},
	    {"MINUTE", "2024-05-17 13:45:12.345678", "2024-05-17 13:45:00+00"},
	    {"hour", "2024-05-17 13:45:12.345678", "2024-05-17 13:00:00+00"},
	    {"day", "2024-05-17 13:45:12.345678", "2024-05-17 00:00:00+00"},
	    {"week", "2024-05-17 13:45:12.345678", "2024-05-13 00:00:00+00"},
	    {"month", "2024-05-17 13:45:12.345678", "2024-05-01 00:00:00+00"},
	    {"quarter", "2024-05-17 13:45:12.345678", "2024-04-01 00:00:00+00"},
	    {"year", "2024-05-17 13:45:12.345678", "2024-01-01 00:00:00+00"},
	    {"decade", "2024-05-17 13:45:12.345678", "2020-01-01 00:00:00+00"},
	    {"century", "2024-05-17 13:45:12.345678", "2001-01-01 00:00:00+00"},
	    {"millennium", "2024-05-17 13:45:12.345678", "2001-01-01 00:00:00+00"},
	    {"week", "1970-01-01", "1969-12-29 00:00:00+00"},
	    {"century", "2000-06-01", "1901-01-01 00:00:00+00"},
	    {"millennium", "2000-06-01", "1001-01-01 00:00:00+00"},
	    {"decade", "1969-12-31 23:00", "1960-01-01 00:00:00+00"},
	    {"second", "1969-12-31 23:59:59.5", "1969-12-31 23:59:59+00"},
	};
	for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
		tally_value v;
		int64_t t;
		cr_assert_eq(
		    tally_value_parse(TALLY_T_TIMESTAMPTZ, c[i].in, strlen(c[i].in), &v, NULL), 0);
		cr_assert_eq(tally_ts_trunc(c[i].unit, strlen(c[i].unit), v.u.ts, &t, NULL), 0);
		v.u.ts = t;
		tally_buf b = {0};
		tally_value_format(&v, &b);
		cr_expect(b.len == strlen(c[i].want) && memcmp(b.data, c[i].want, b.len) == 0,
			  "%s(%s): got %.*s", c[i].unit, c[i].in, (int)b.len, b.data);
		tally_buf_free(&b);
	}
	tally_err e;
	int64_t t;
	cr_assert_neq(tally_ts_trunc("foo", 3, 0, &t, &e), 0);
	cr_expect_str_eq(e.sqlstate, "22023");
	cr_expect_str_eq(e.message,
			 "unit \"foo\" not recognized for type timestamp with time zone");
}

static const char *cast_str(tally_value v, tally_type t)
{
	static char out[600];
	tally_arena a = {0};
	tally_value r;
	tally_err e;
	memset(&e, 0, sizeof e);
	if (tally_value_cast(&v, t, &r, &a, &e)) {
		snprintf(out, sizeof out, "ERROR %s: %s", e.sqlstate, e.message);
	} else if (r.isnull) {
		snprintf(out, sizeof out, "NULL");
	} else {
		tally_buf b = {0};
		tally_value_format(&r, &b);
		snprintf(out, sizeof out, "%s:%.*s", tally_type_name((tally_type)r.type),
			 (int)b.len, b.data);
		tally_buf_free(&b);
	}
	tally_arena_free(&a);
	return out;
}

Test(types, casts_follow_postgres_rules, .timeout = 30)
{
	cr_expect_str_eq(cast_str(tally_int(TALLY_T_INT4, 40000), TALLY_T_INT2),
			 "ERROR 22003: smallint out of range");
	cr_expect_str_eq(cast_str(tally_int(TALLY_T_INT8, 1LL << 40), TALLY_T_INT4),
			 "ERROR 22003: integer out of range");
	cr_expect_str_eq(cast_str(tally_int(TALLY_T_INT2, 7), TALLY_T_INT8), "bigint:7");
	cr_expect_str_eq(cast_str(tally_float(TALLY_T_FLOAT8, 2.5), TALLY_T_INT4), "integer:2");
	cr_expect_str_eq(cast_str(tally_float(TALLY_T_FLOAT8, 3.5), TALLY_T_INT4), "integer:4");
	cr_expect_str_eq(cast_str(tally_float(TALLY_T_FLOAT8, -2.5), TALLY_T_INT4), "integer:-2");
	cr_expect_str_eq(cast_str(tally_float(TALLY_T_FLOAT8, 3e9), TALLY_T_INT4),
			 "ERROR 22003: integer out of range");
	cr_expect_str_eq(cast_str(tally_float(TALLY_T_FLOAT8, NAN), TALLY_T_INT8),
			 "ERROR 22003: bigint out of range");
	cr_expect_str_eq(cast_str(tally_float(TALLY_T_FLOAT8, 1e300), TALLY_T_FLOAT4),
			 "ERROR 22003: value out of range: overflow");
	cr_expect_str_eq(cast_str(tally_float(TALLY_T_FLOAT8, 0.1), TALLY_T_FLOAT4), "real:0.1");
	cr_expect_str_eq(cast_str(tally_int(TALLY_T_INT4, 5), TALLY_T_FLOAT8),
			 "double precision:5");
	cr_expect_str_eq(cast_str(tally_text("  42 ", 5), TALLY_T_INT4), "integer:42");
	cr_expect_str_eq(cast_str(tally_text("4x", 2), TALLY_T_INT4),
			 "ERROR 22P02: invalid input syntax for type integer: \"4x\"");
	cr_expect_str_eq(cast_str(tally_bool(true), TALLY_T_TEXT), "text:true");
	cr_expect_str_eq(cast_str(tally_int(TALLY_T_INT4, 5), TALLY_T_BOOL), "boolean:t");
	cr_expect_str_eq(cast_str(tally_int(TALLY_T_INT8, 5), TALLY_T_BOOL),
			 "ERROR 42846: cannot cast type bigint to boolean");
	cr_expect_str_eq(cast_str(tally_float(TALLY_T_FLOAT8, 1.5), TALLY_T_TEXT), "text:1.5");
	cr_expect_str_eq(cast_str(tally_float(TALLY_T_FLOAT8, 1.25), TALLY_T_NUMERIC),
			 "numeric:1.25");
	cr_expect_str_eq(cast_str(tally_null(TALLY_T_TEXT), TALLY_T_INT4), "NULL");
	tally_value n;
	memset(&n, 0, sizeof n);
	n.type = TALLY_T_NUMERIC;
	n.u.n.m = 25;
	n.u.n.scale = 1;
	cr_expect_str_eq(cast_str(n, TALLY_T_INT4), "integer:3");
	n.u.n.m = -25;
	cr_expect_str_eq(cast_str(n, TALLY_T_INT4), "integer:-3");
	cr_expect_str_eq(cast_str(n, TALLY_T_FLOAT8), "double precision:-2.5");
}

Test(types, compare_is_a_total_order, .timeout = 30)
{
	tally_value a = tally_int(TALLY_T_INT4, 3), b = tally_float(TALLY_T_FLOAT8, 3.5);
	cr_expect_lt(tally_value_cmp(&a, &b), 0);
	cr_expect_gt(tally_value_cmp(&b, &a), 0);
	tally_value nan = tally_float(TALLY_T_FLOAT8, NAN),
		    inf = tally_float(TALLY_T_FLOAT8, INFINITY);
	cr_expect_gt(tally_value_cmp(&nan, &inf), 0);
	cr_expect_eq(tally_value_cmp(&nan, &nan), 0);
	tally_value z = tally_float(TALLY_T_FLOAT8, 0.0), nz = tally_float(TALLY_T_FLOAT8, -0.0);
	cr_expect_eq(tally_value_cmp(&z, &nz), 0);
	tally_value s1 = tally_text("ab", 2), s2 = tally_text("abc", 3), s3 = tally_text("b", 1);
	cr_expect_lt(tally_value_cmp(&s1, &s2), 0);
	cr_expect_lt(tally_value_cmp(&s2, &s3), 0);
	tally_value hi = tally_text("\xff", 1);
	cr_expect_gt(tally_value_cmp(&hi, &s3), 0); /* bytewise, unsigned */
	tally_value big = tally_int(TALLY_T_INT8, INT64_MAX),
		    small = tally_int(TALLY_T_INT8, INT64_MIN);
	cr_expect_gt(tally_value_cmp(&big, &small), 0);
	tally_value n;
	memset(&n, 0, sizeof n);
	n.type = TALLY_T_NUMERIC;
	n.u.n.m = 35;
	n.u.n.scale = 1;
	cr_expect_lt(tally_value_cmp(&a, &n), 0);
	cr_expect_eq(tally_value_cmp(&n, &b), 0);
	tally_value f = tally_bool(false), t = tally_bool(true);
	cr_expect_lt(tally_value_cmp(&f, &t), 0);
}

static void key_roundtrip(tally_value v)
{
	tally_buf b = {0};
	tally_key_encode(&v, &b);
	tally_rd r;
	tally_value back;
	tally_rd_init(&r, b.data, b.len);
	cr_assert_eq(tally_key_decode(&r, &back), 0);
	cr_assert_eq(tally_rd_left(&r), 0);
	cr_assert_eq(back.isnull, v.isnull);
	if (!v.isnull) {
		cr_assert_eq(back.type, v.type);
		cr_assert_eq(tally_value_cmp(&back, &v), 0);
		tally_buf b2 = {0};
		tally_key_encode(&back, &b2);
		cr_assert(b2.len == b.len && memcmp(b2.data, b.data, b.len) == 0);
		tally_buf_free(&b2);
	}
	/* every truncated prefix is rejected */
	for (size_t cut = 0; cut < b.len; cut++) {
		tally_rd_init(&r, b.data, cut);
		cr_assert_neq(tally_key_decode(&r, &back), 0, "prefix %zu of %zu accepted", cut,
			      b.len);
	}
	tally_buf_free(&b);
}

Test(types, key_encode_decode_round_trip_and_truncation, .timeout = 30)
{
	key_roundtrip(tally_null(TALLY_T_INT4));
	key_roundtrip(tally_bool(true));
	key_roundtrip(tally_int(TALLY_T_INT2, -5));
	key_roundtrip(tally_int(TALLY_T_INT4, 123456));
	key_roundtrip(tally_int(TALLY_T_INT8, INT64_MIN));
	key_roundtrip(tally_float(TALLY_T_FLOAT8, 2.5));
	key_roundtrip(tally_float(TALLY_T_FLOAT4, 0.5));
	key_roundtrip(tally_text("hello", 5));
	key_roundtrip(tally_text("", 0));
	tally_value ts;
	memset(&ts, 0, sizeof ts);
	ts.type = TALLY_T_TIMESTAMPTZ;
	ts.u.ts = -123456789;
	key_roundtrip(ts);
	tally_value n;
	memset(&n, 0, sizeof n);
	n.type = TALLY_T_NUMERIC;
	n.u.n.m = -((__int128)1 << 100);
	n.u.n.scale = 7;
	key_roundtrip(n);
}

Test(types, key_encoding_is_canonical, .timeout = 30)
{
	tally_buf a = {0}, b = {0};
	tally_value z = tally_float(TALLY_T_FLOAT8, 0.0), nz = tally_float(TALLY_T_FLOAT8, -0.0);
	tally_key_encode(&z, &a);
	tally_key_encode(&nz, &b);
	cr_assert(a.len == b.len && memcmp(a.data, b.data, a.len) == 0);
	tally_buf_reset(&a);
	tally_buf_reset(&b);
	tally_value n1 = tally_float(TALLY_T_FLOAT8, NAN), n2 = tally_float(TALLY_T_FLOAT8, -NAN);
	tally_key_encode(&n1, &a);
	tally_key_encode(&n2, &b);
	cr_assert(a.len == b.len && memcmp(a.data, b.data, a.len) == 0);
	tally_buf_reset(&a);
	tally_buf_reset(&b);
	/* NULL differs from every value, and types are tagged */
	tally_value nul = tally_null(TALLY_T_INT4), zero = tally_int(TALLY_T_INT4, 0),
		    zero8 = tally_int(TALLY_T_INT8, 0);
	tally_key_encode(&nul, &a);
	tally_key_encode(&zero, &b);
	cr_assert(a.len != b.len || memcmp(a.data, b.data, a.len) != 0);
	tally_buf_reset(&a);
	tally_key_encode(&zero8, &a);
	cr_assert(memcmp(a.data, b.data, a.len) != 0);
	tally_buf_free(&a);
	tally_buf_free(&b);
}

Test(types, key_decode_rejects_bad_tags_and_values, .timeout = 30)
{
	uint8_t bad_tag[] = {TALLY_T_COUNT_};
	uint8_t bad_bool[] = {TALLY_T_BOOL, 2};
	uint8_t bad_int2[] = {TALLY_T_INT2, 0, 0, 0, 0, 0, 1, 0, 0};
	uint8_t long_text[] = {TALLY_T_TEXT, 0xff, 0xff, 0xff, 0xff, 'a'};
	tally_rd r;
	tally_value v;
	tally_rd_init(&r, bad_tag, sizeof bad_tag);
	cr_expect_neq(tally_key_decode(&r, &v), 0);
	tally_rd_init(&r, bad_bool, sizeof bad_bool);
	cr_expect_neq(tally_key_decode(&r, &v), 0);
	tally_rd_init(&r, bad_int2, sizeof bad_int2);
	cr_expect_neq(tally_key_decode(&r, &v), 0);
	tally_rd_init(&r, long_text, sizeof long_text);
	cr_expect_neq(tally_key_decode(&r, &v), 0);
}

Test(types, type_names_and_oids, .timeout = 30)
{
	cr_expect_eq(tally_type_from_name("INT"), TALLY_T_INT4);
	cr_expect_eq(tally_type_from_name("double precision"), TALLY_T_FLOAT8);
	cr_expect_eq(tally_type_from_name("character varying"), TALLY_T_TEXT);
	cr_expect_eq(tally_type_from_name("timestamp"), TALLY_T_TIMESTAMPTZ);
	cr_expect_eq(tally_type_from_name("blob"), TALLY_T_UNKNOWN);
	cr_expect_str_eq(tally_type_name(TALLY_T_TIMESTAMPTZ), "timestamp with time zone");
	cr_expect_eq(tally_type_oid(TALLY_T_NUMERIC), 1700);
	cr_expect_eq(tally_type_len(TALLY_T_INT2), 2);
	cr_expect_eq(tally_type_len(TALLY_T_TEXT), -1);
}
