/*
 * types.c - SQL scalar types: PostgreSQL-compatible text input and output, casts, the total
 * order used by ORDER BY and min/max, the canonical group-key encoding, exact numeric averages
 * and date_trunc.
 *
 * Every behaviour here is checked against PostgreSQL 15 (TimeZone UTC, DateStyle ISO,
 * extra_float_digits 1): same accepted inputs, same output text, same error wording.
 */
#include "tally/types.h"

#include "float_fmt.h"

#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

/* ---- type catalogue ----------------------------------------------------------------------- */

const char *tally_type_name(tally_type t)
{
	switch (t) {
	case TALLY_T_BOOL:
		return "boolean";
	case TALLY_T_INT2:
		return "smallint";
	case TALLY_T_INT4:
		return "integer";
	case TALLY_T_INT8:
		return "bigint";
	case TALLY_T_FLOAT4:
		return "real";
	case TALLY_T_FLOAT8:
		return "double precision";
	case TALLY_T_NUMERIC:
		return "numeric";
	case TALLY_T_TEXT:
		return "text";
	case TALLY_T_TIMESTAMPTZ:
		return "timestamp with time zone";
	case TALLY_T_UNKNOWN:
	default:
		return "unknown";
	}
}

uint32_t tally_type_oid(tally_type t)
{
	switch (t) {
	case TALLY_T_BOOL:
		return TALLY_OID_BOOL;
	case TALLY_T_INT2:
		return TALLY_OID_INT2;
	case TALLY_T_INT4:
		return TALLY_OID_INT4;
	case TALLY_T_INT8:
		return TALLY_OID_INT8;
	case TALLY_T_FLOAT4:
		return TALLY_OID_FLOAT4;
	case TALLY_T_FLOAT8:
		return TALLY_OID_FLOAT8;
	case TALLY_T_NUMERIC:
		return TALLY_OID_NUMERIC;
	case TALLY_T_TIMESTAMPTZ:
		return TALLY_OID_TIMESTAMPTZ;
	case TALLY_T_TEXT:
	case TALLY_T_UNKNOWN: /* untyped literals come out as text since PostgreSQL 10 */
	default:
		return TALLY_OID_TEXT;
	}
}

int16_t tally_type_len(tally_type t)
{
	switch (t) {
	case TALLY_T_BOOL:
		return 1;
	case TALLY_T_INT2:
		return 2;
	case TALLY_T_INT4:
	case TALLY_T_FLOAT4:
		return 4;
	case TALLY_T_INT8:
	case TALLY_T_FLOAT8:
	case TALLY_T_TIMESTAMPTZ:
		return 8;
	default:
		return -1;
	}
}

static const struct {
	const char *name;
	tally_type type;
} type_names[] = {
    {"int", TALLY_T_INT4},
    {"int4", TALLY_T_INT4},
    {"integer", TALLY_T_INT4},
    {"smallint", TALLY_T_INT2},
    {"int2", TALLY_T_INT2},
    {"bigint", TALLY_T_INT8},
    {"int8", TALLY_T_INT8},
    {"real", TALLY_T_FLOAT4},
    {"float4", TALLY_T_FLOAT4},
    {"double precision", TALLY_T_FLOAT8},
    {"float8", TALLY_T_FLOAT8},
    {"float", TALLY_T_FLOAT8},
    {"boolean", TALLY_T_BOOL},
    {"bool", TALLY_T_BOOL},
    {"text", TALLY_T_TEXT},
    {"varchar", TALLY_T_TEXT},
    {"character varying", TALLY_T_TEXT},
    {"timestamptz", TALLY_T_TIMESTAMPTZ},
    {"timestamp", TALLY_T_TIMESTAMPTZ},
    {"timestamp with time zone", TALLY_T_TIMESTAMPTZ},
    {"timestamp without time zone", TALLY_T_TIMESTAMPTZ},
    {"numeric", TALLY_T_NUMERIC},
    {"decimal", TALLY_T_NUMERIC},
};

tally_type tally_type_from_name(const char *name)
{
	if (!name)
		return TALLY_T_UNKNOWN;
	for (size_t i = 0; i < sizeof type_names / sizeof type_names[0]; i++)
		if (strcasecmp(name, type_names[i].name) == 0)
			return type_names[i].type;
	return TALLY_T_UNKNOWN;
}

/* ---- input -------------------------------------------------------------------------------- */

static bool is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* Quote at most this many bytes of an offending value in a message (the message buffer is
 * 512 bytes; PostgreSQL quotes it whole). */
#define QUOTE_MAX 400

static int err_syntax(tally_err *err, const char *sqlstate, const char *tname, const char *s,
		      size_t len)
{
	int n = len > QUOTE_MAX ? QUOTE_MAX : (int)len;
	return tally_err_set(err, sqlstate, "invalid input syntax for type %s: \"%.*s\"", tname, n,
			     s);
}

static int parse_int(tally_type t, const char *s, size_t len, tally_value *out, tally_err *err)
{
	const char *p = s, *end = s + len;
	int64_t lo, hi;
	bool neg = false;
	uint64_t acc = 0, lim;

	switch (t) {
	case TALLY_T_INT2:
		lo = INT16_MIN, hi = INT16_MAX;
		break;
	case TALLY_T_INT4:
		lo = INT32_MIN, hi = INT32_MAX;
		break;
	default:
		lo = INT64_MIN, hi = INT64_MAX;
		break;
	}
	while (p < end && is_space(*p))
		p++;
	if (p < end && (*p == '-' || *p == '+'))
		neg = (*p++ == '-');
	if (p == end || (unsigned)(*p - '0') > 9)
		goto syntax;
	lim = neg ? (uint64_t)(-(lo + 1)) + 1 : (uint64_t)hi;
	while (p < end && (unsigned)(*p - '0') <= 9) {
		unsigned d = (unsigned)(*p++ - '0');
		if (acc > (lim - d) / 10)
			goto range;
		acc = acc * 10 + d;
	}
	while (p < end && is_space(*p))
		p++;
	if (p != end)
		goto syntax;
	out->type = (uint8_t)t;
	out->isnull = 0;
	out->u.i = neg ? (int64_t)(0 - acc) : (int64_t)acc;
	return 0;
syntax:
	return err_syntax(err, TALLY_SQLSTATE_INVALID_TEXT, tally_type_name(t), s, len);
range : {
	int n = len > QUOTE_MAX ? QUOTE_MAX : (int)len;
	return tally_err_set(err, TALLY_SQLSTATE_OUT_OF_RANGE,
			     "value \"%.*s\" is out of range for type %s", n, s,
			     tally_type_name(t));
}
}

static int parse_float(tally_type t, const char *s, size_t len, tally_value *out, tally_err *err)
{
	char stack[128];
	char *buf = stack, *endp;
	const char *p;
	double d;
	int rc = -1;

	if (len >= sizeof stack)
		buf = tally_xmalloc(len + 1);
	memcpy(buf, s, len);
	buf[len] = 0;
	if (memchr(s, 0, len))
		goto syntax;
	p = buf;
	while (*p && is_space(*p))
		p++;
	if (*p == 0)
		goto syntax;
	errno = 0;
	if (t == TALLY_T_FLOAT4) {
		float f = strtof(p, &endp);
		d = f;
		if (endp != p && errno == ERANGE && (f == 0.0f || isinf(f)))
			goto range;
	} else {
		d = strtod(p, &endp);
		if (endp != p && errno == ERANGE && (d == 0.0 || isinf(d)))
			goto range;
	}
	if (endp == p)
		goto syntax;
	while (*endp && is_space(*endp))
		endp++;
	if (*endp)
		goto syntax;
	out->type = (uint8_t)t;
	out->isnull = 0;
	out->u.f = d;
	rc = 0;
	goto done;
syntax:
	err_syntax(err, TALLY_SQLSTATE_INVALID_TEXT, tally_type_name(t), s, len);
	goto done;
range : {
	int n = len > QUOTE_MAX ? QUOTE_MAX : (int)len;
	tally_err_set(err, TALLY_SQLSTATE_OUT_OF_RANGE, "\"%.*s\" is out of range for type %s", n,
		      s, tally_type_name(t));
}
done:
	if (buf != stack)
		free(buf);
	return rc;
}

static int parse_bool(const char *s, size_t len, tally_value *out, tally_err *err)
{
	const char *p = s;
	size_t n = len;
	int r = -1;

	while (n > 0 && is_space(*p))
		p++, n--;
	while (n > 0 && is_space(p[n - 1]))
		n--;
	if (n > 0) {
		switch (*p) {
		case 't':
		case 'T':
			if (n <= 4 && strncasecmp(p, "true", n) == 0)
				r = 1;
			break;
		case 'f':
		case 'F':
			if (n <= 5 && strncasecmp(p, "false", n) == 0)
				r = 0;
			break;
		case 'y':
		case 'Y':
			if (n <= 3 && strncasecmp(p, "yes", n) == 0)
				r = 1;
			break;
		case 'n':
		case 'N':
			if (n <= 2 && strncasecmp(p, "no", n) == 0)
				r = 0;
			break;
		case 'o':
		case 'O':
			/* "o" alone is ambiguous */
			if (n >= 2 && n <= 2 && strncasecmp(p, "on", n) == 0)
				r = 1;
			else if (n >= 2 && n <= 3 && strncasecmp(p, "off", n) == 0)
				r = 0;
			break;
		case '1':
			if (n == 1)
				r = 1;
			break;
		case '0':
			if (n == 1)
				r = 0;
			break;
		default:
			break;
		}
	}
	if (r < 0)
		return err_syntax(err, TALLY_SQLSTATE_INVALID_TEXT, "boolean", s, len);
	*out = tally_bool(r == 1);
	return 0;
}

/* ---- calendar ----------------------------------------------------------------------------- */

#define USECS_PER_SEC INT64_C(1000000)
#define USECS_PER_DAY INT64_C(86400000000)

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
	y -= m <= 2;
	int64_t era = (y >= 0 ? y : y - 399) / 400;
	int64_t yoe = y - era * 400;
	int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, int *m, int *d)
{
	z += 719468;
	int64_t era = (z >= 0 ? z : z - 146096) / 146097;
	int64_t doe = z - era * 146097;
	int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	int64_t mp = (5 * doy + 2) / 153;
	*d = (int)(doy - (153 * mp + 2) / 5 + 1);
	*m = (int)(mp < 10 ? mp + 3 : mp - 9);
	*y = yoe + era * 400 + (*m <= 2);
}

static int days_in_month(int64_t y, int m)
{
	static const int dm[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
		return 29;
	return dm[m - 1];
}

static int64_t floor_div(int64_t a, int64_t b)
{
	int64_t q = a / b;
	if ((a % b != 0) && ((a < 0) != (b < 0)))
		q--;
	return q;
}

/* Read 1..maxd digits; returns the count read (0 = none). */
static int read_digits(const char **pp, const char *end, int maxd, int64_t *v)
{
	const char *p = *pp;
	int n = 0;
	int64_t acc = 0;
	while (p < end && n < maxd && (unsigned)(*p - '0') <= 9) {
		acc = acc * 10 + (*p - '0');
		p++, n++;
	}
	*pp = p;
	*v = acc;
	return n;
}

static int parse_ts(const char *s, size_t len, tally_value *out, tally_err *err)
{
	const char *p = s, *end = s + len;
	int64_t year, mon, day, hour = 0, min = 0, sec = 0, usec = 0, zone_sec = 0, v;
	bool range_err = false;

	while (p < end && is_space(*p))
		p++;
	while (end > p && is_space(end[-1]))
		end--;
	if (read_digits(&p, end, 6, &year) < 1 || p >= end || *p != '-')
		goto syntax;
	p++;
	if (read_digits(&p, end, 2, &mon) < 1 || p >= end || *p != '-')
		goto syntax;
	p++;
	if (read_digits(&p, end, 2, &day) < 1)
		goto syntax;
	if (p < end && (*p == 'T' || *p == 't' || *p == ' ')) {
		const char *q = p + 1;
		while (*p == ' ' && q < end && *q == ' ')
			q++;
		if (q < end && (unsigned)(*q - '0') <= 9) {
			p = q;
			if (read_digits(&p, end, 2, &hour) < 1 || p >= end || *p != ':')
				goto syntax;
			p++;
			if (read_digits(&p, end, 2, &min) < 1)
				goto syntax;
			if (p < end && *p == ':') {
				p++;
				if (read_digits(&p, end, 2, &sec) < 1)
					goto syntax;
				if (p < end && *p == '.') {
					/* fraction: round to microseconds like PostgreSQL (rint) */
					int64_t scale = 100000;
					int nd = 0;
					bool more = false, half = false, sticky = false;
					p++;
					while (p < end && (unsigned)(*p - '0') <= 9) {
						int dg = *p - '0';
						if (nd < 6) {
							usec += dg * scale;
							scale /= 10;
						} else if (nd == 6) {
							more = true;
							half = dg >= 5;
							sticky = dg > 5;
						} else if (dg != 0) {
							sticky = true;
						}
						nd++, p++;
					}
					(void)more;
					if (half && (sticky || (usec & 1)))
						usec++;
				}
			}
		} else if (*p == 'T' || *p == 't') {
			goto syntax;
		}
	}
	/* optional zone */
	while (p < end && *p == ' ')
		p++;
	if (p < end) {
		if ((*p == 'Z' || *p == 'z') && p + 1 == end) {
			p++;
		} else if (end - p == 3 &&
			   (strncasecmp(p, "UTC", 3) == 0 || strncasecmp(p, "GMT", 3) == 0)) {
			p = end;
		} else if (*p == '+' || *p == '-') {
			int sign = *p == '-' ? -1 : 1;
			int64_t zh, zm = 0;
			int nd;
			p++;
			nd = read_digits(&p, end, 4, &v);
			if (nd == 1 || nd == 2) {
				zh = v;
				if (p < end && *p == ':') {
					p++;
					if (read_digits(&p, end, 2, &zm) != 2)
						goto syntax;
				}
			} else if (nd == 4) {
				zh = v / 100;
				zm = v % 100;
			} else {
				goto syntax;
			}
			if (zh > 15 || zm > 59)
				goto range_tz;
			zone_sec = sign * (zh * 3600 + zm * 60);
		} else {
			goto syntax;
		}
	}
	if (p != end)
		goto syntax;
	/* field ranges as PostgreSQL's ValidateDate / DecodeTime */
	if (year < 1 || year > 9999 || mon < 1 || mon > 12 || day < 1 ||
	    day > days_in_month(year, (int)mon))
		range_err = true;
	if (hour > 24 || min > 59 || sec > 60 || (hour == 24 && (min > 0 || sec > 0 || usec > 0)) ||
	    (sec == 60 && usec > 0))
		range_err = true;
	if (range_err)
		goto range;
	{
		int64_t days = days_from_civil(year, (int)mon, (int)day);
		int64_t t = days * USECS_PER_DAY + ((hour * 60 + min) * 60 + sec) * USECS_PER_SEC +
			    usec - zone_sec * USECS_PER_SEC;
		out->type = TALLY_T_TIMESTAMPTZ;
		out->isnull = 0;
		out->u.ts = t;
	}
	return 0;
syntax:
	return err_syntax(err, TALLY_SQLSTATE_DATETIME_FORMAT, "timestamp with time zone", s, len);
range : {
	int n = len > QUOTE_MAX ? QUOTE_MAX : (int)len;
	tally_err_set(err, TALLY_SQLSTATE_DATETIME_OVERFLOW,
		      "date/time field value out of range: \"%.*s\"", n, s);
	return -1;
}
range_tz : {
	int n = len > QUOTE_MAX ? QUOTE_MAX : (int)len;
	return tally_err_set(err, TALLY_SQLSTATE_DATETIME_OVERFLOW,
			     "time zone displacement out of range: \"%.*s\"", n, s);
}
}

/* numeric input: [sign] digits [. digits] [e[sign]digits], surrounding whitespace. */
static int parse_numeric(const char *s, size_t len, tally_value *out, tally_err *err)
{
	const char *p = s, *end = s + len;
	bool neg = false, any = false;
	__int128 m = 0;
	int scale = 0;
	int64_t ex = 0;
	const __int128 lim = (((__int128)1) << 125);

	while (p < end && is_space(*p))
		p++;
	while (end > p && is_space(end[-1]))
		end--;
	if (p < end && (*p == '-' || *p == '+'))
		neg = *p++ == '-';
	while (p < end && (unsigned)(*p - '0') <= 9) {
		if (m > lim / 10)
			goto range;
		m = m * 10 + (*p++ - '0');
		any = true;
	}
	if (p < end && *p == '.') {
		p++;
		while (p < end && (unsigned)(*p - '0') <= 9) {
			if (m > lim / 10 || scale >= 38)
				goto range;
			m = m * 10 + (*p++ - '0');
			scale++;
			any = true;
		}
	}
	if (!any)
		goto syntax;
	if (p < end && (*p == 'e' || *p == 'E')) {
		bool eneg = false;
		int64_t e;
		p++;
		if (p < end && (*p == '-' || *p == '+'))
			eneg = *p++ == '-';
		if (read_digits(&p, end, 4, &e) < 1)
			goto syntax;
		ex = eneg ? -e : e;
	}
	if (p != end)
		goto syntax;
	/* apply exponent */
	while (ex > 0) {
		if (scale > 0) {
			scale--;
		} else {
			if (m > lim / 10)
				goto range;
			m *= 10;
		}
		ex--;
	}
	while (ex < 0) {
		if (scale >= 38 || m > lim / 10)
			goto range;
		m *= 10;
		scale++;
		ex++;
	}
	out->type = TALLY_T_NUMERIC;
	out->isnull = 0;
	out->u.n.m = neg ? -m : m;
	out->u.n.scale = (int16_t)scale;
	return 0;
syntax:
	return err_syntax(err, TALLY_SQLSTATE_INVALID_TEXT, "numeric", s, len);
range:
	return tally_err_set(err, TALLY_SQLSTATE_OUT_OF_RANGE, "value overflows numeric format");
}

int tally_value_parse(tally_type t, const char *s, size_t len, tally_value *out, tally_err *err)
{
	switch (t) {
	case TALLY_T_INT2:
	case TALLY_T_INT4:
	case TALLY_T_INT8:
		return parse_int(t, s, len, out, err);
	case TALLY_T_FLOAT4:
	case TALLY_T_FLOAT8:
		return parse_float(t, s, len, out, err);
	case TALLY_T_BOOL:
		return parse_bool(s, len, out, err);
	case TALLY_T_TIMESTAMPTZ:
		return parse_ts(s, len, out, err);
	case TALLY_T_NUMERIC:
		return parse_numeric(s, len, out, err);
	case TALLY_T_TEXT:
	case TALLY_T_UNKNOWN:
		if (len > TALLY_TEXT_MAX)
			return tally_err_set(
			    err, TALLY_SQLSTATE_PROGRAM_LIMIT,
			    "text value of %zu bytes exceeds the limit of %u bytes", len,
			    TALLY_TEXT_MAX);
		*out = tally_text(s, (uint32_t)len);
		out->type = (uint8_t)t;
		return 0;
	default:
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL,
				     "cannot parse a value of type %s", tally_type_name(t));
	}
}

/* ---- output ------------------------------------------------------------------------------- */

/* Shortest round-trip decimal of d (finite, nonzero) in PostgreSQL's layout (Ryu, in
 * float_fmt.c). A real is formatted from its float value: every real value is rounded to a
 * float on input, cast and aggregation. */
static int format_float_shortest(double d, bool single, char *out)
{
	return tally_types_float_shortest(single ? (double)(float)d : d, single, out);
}

static int format_float(double d, bool single, char *out)
{
	if (isnan(d))
		return sprintf(out, "NaN");
	if (isinf(d))
		return sprintf(out, d < 0 ? "-Infinity" : "Infinity");
	if (d == 0)
		return sprintf(out, signbit(d) ? "-0" : "0");
	return format_float_shortest(d, single, out);
}

static int format_u128(unsigned __int128 u, char *out)
{
	char tmp[48];
	int n = 0;
	do {
		tmp[n++] = (char)('0' + (int)(u % 10));
		u /= 10;
	} while (u);
	for (int i = 0; i < n; i++)
		out[i] = tmp[n - 1 - i];
	out[n] = 0;
	return n;
}

static int format_numeric(tally_numeric n, char *out)
{
	char digs[48];
	unsigned __int128 u =
	    n.m < 0 ? (unsigned __int128)0 - (unsigned __int128)n.m : (unsigned __int128)n.m;
	int nd = format_u128(u, digs), scale = n.scale < 0 ? 0 : n.scale;
	char *o = out;
	if (n.m < 0)
		*o++ = '-';
	if (nd <= scale) {
		*o++ = '0';
		*o++ = '.';
		for (int i = 0; i < scale - nd; i++)
			*o++ = '0';
		memcpy(o, digs, (size_t)nd);
		o += nd;
	} else {
		memcpy(o, digs, (size_t)(nd - scale));
		o += nd - scale;
		if (scale > 0) {
			*o++ = '.';
			memcpy(o, digs + nd - scale, (size_t)scale);
			o += scale;
		}
	}
	*o = 0;
	return (int)(o - out);
}

static int format_ts(int64_t ts, char *out)
{
	int64_t days = floor_div(ts, USECS_PER_DAY);
	/* ts % USECS_PER_DAY, made non-negative: no days * USECS_PER_DAY, which overflows for
	 * timestamps near the int64 limits (a peer or a file may send any value). */
	int64_t rem = ts % USECS_PER_DAY;
	if (rem < 0)
		rem += USECS_PER_DAY;
	int64_t y;
	int m, d;
	civil_from_days(days, &y, &m, &d);
	int64_t secs = rem / USECS_PER_SEC, us = rem % USECS_PER_SEC;
	bool bc = y <= 0;
	int n = sprintf(out, "%04lld-%02d-%02d %02d:%02d:%02d", (long long)(bc ? 1 - y : y), m, d,
			(int)(secs / 3600), (int)(secs / 60 % 60), (int)(secs % 60));
	if (us) {
		int w = 6;
		while (us % 10 == 0)
			us /= 10, w--;
		n += sprintf(out + n, ".%0*d", w, (int)us);
	}
	n += sprintf(out + n, "+00");
	if (bc)
		n += sprintf(out + n, " BC");
	return n;
}

/* Format a non-text value into out (at least 64 bytes). */
static int format_scalar(const tally_value *v, char *out)
{
	switch (v->type) {
	case TALLY_T_BOOL:
		out[0] = v->u.b ? 't' : 'f';
		out[1] = 0;
		return 1;
	case TALLY_T_INT2:
	case TALLY_T_INT4:
	case TALLY_T_INT8:
		return sprintf(out, "%lld", (long long)v->u.i);
	case TALLY_T_FLOAT4:
		return format_float(v->u.f, true, out);
	case TALLY_T_FLOAT8:
		return format_float(v->u.f, false, out);
	case TALLY_T_NUMERIC:
		return format_numeric(v->u.n, out);
	case TALLY_T_TIMESTAMPTZ:
		return format_ts(v->u.ts, out);
	default:
		out[0] = 0;
		return 0;
	}
}

void tally_value_format(const tally_value *v, tally_buf *b)
{
	char tmp[96];
	if (v->type == TALLY_T_TEXT || v->type == TALLY_T_UNKNOWN) {
		tally_buf_append(b, v->u.s.p, v->u.s.len);
		return;
	}
	int n = format_scalar(v, tmp);
	tally_buf_append(b, tmp, (size_t)n);
}

/* ---- numeric helpers ---------------------------------------------------------------------- */

static __int128 pow10_i128(int k)
{
	__int128 r = 1;
	while (k-- > 0)
		r *= 10;
	return r;
}

/* Base-10000 weight and first digit of a positive magnitude (PostgreSQL NumericVar). */
static void nbase_weight(unsigned __int128 u, int *weight, int *first)
{
	int w = 0;
	if (u == 0) {
		*weight = 0;
		*first = 0;
		return;
	}
	while (u >= 10000) {
		u /= 10000;
		w++;
	}
	*weight = w;
	*first = (int)u;
}

tally_numeric tally_numeric_avg(__int128 sum, int64_t count)
{
	tally_numeric n = {sum, 0};
	return tally_numeric_div_count(n, count);
}

tally_numeric tally_numeric_div_count(tally_numeric sum, int64_t count)
{
	tally_numeric r = {0, 0};
	if (count <= 0)
		return r;
	int s = sum.scale < 0 ? 0 : sum.scale > 38 ? 38 : sum.scale;
	bool neg = sum.m < 0;
	unsigned __int128 u =
	    neg ? (unsigned __int128)0 - (unsigned __int128)sum.m : (unsigned __int128)sum.m;
	unsigned __int128 c = (unsigned __int128)count;
	int w1, f1, w2, f2;
	/* weight and first base-10000 digit of sum: align the fraction to whole groups of four
	 * decimal digits as PostgreSQL's NumericVar does */
	{
		int pad = (4 - s % 4) % 4, g = 0;
		unsigned __int128 x = u;
		bool fits = true;
		for (int i = 0; i < pad; i++) {
			if (x > ((unsigned __int128)-1) / 10) {
				fits = false;
				break;
			}
			x *= 10;
		}
		if (!fits) {
			/* drop low digits instead: they cannot change the leading group */
			x = u;
			for (int i = 0; i < 4 - pad; i++)
				x /= 10;
			g = 1;
		}
		if (x == 0) {
			w1 = 0;
			f1 = 0;
		} else {
			nbase_weight(x, &w1, &f1);
			w1 += g - (s + pad) / 4;
		}
	}
	nbase_weight(c, &w2, &f2);
	int qweight = w1 - w2;
	if (f1 <= f2)
		qweight--;
	int rscale = 16 - qweight * 4;
	if (rscale < s)
		rscale = s;
	if (rscale < 0)
		rscale = 0;
	if (rscale > 1000)
		rscale = 1000;
	unsigned __int128 q = u / c, rem = u % c;
	/* cap the scale so that the result fits 38 digits / int128 */
	{
		unsigned __int128 t = q;
		int intd = 0, cap;
		while (t) {
			t /= 10;
			intd++;
		}
		cap = 38 - (intd - s);
		if (cap > 38)
			cap = 38;
		if (rscale > cap)
			rscale = cap;
		if (rscale < s)
			rscale = s; /* cannot drop digits we already have */
	}
	for (int i = s; i < rscale; i++) {
		rem *= 10;
		q = q * 10 + rem / c;
		rem %= c;
	}
	/* round half away from zero: 2*rem >= c */
	if (rem * 2 >= c)
		q++;
	r.m = neg ? -(__int128)q : (__int128)q;
	r.scale = (int16_t)rscale;
	return r;
}

double tally_numeric_to_double(tally_numeric n)
{
	char tmp[64];
	format_numeric(n, tmp);
	return strtod(tmp, NULL);
}

/* ---- casts -------------------------------------------------------------------------------- */

static int int_range_check(tally_type t, int64_t i, tally_err *err)
{
	if ((t == TALLY_T_INT2 && (i < INT16_MIN || i > INT16_MAX)) ||
	    (t == TALLY_T_INT4 && (i < INT32_MIN || i > INT32_MAX)))
		return tally_err_set(err, TALLY_SQLSTATE_OUT_OF_RANGE, "%s out of range",
				     tally_type_name(t));
	return 0;
}

static int cannot_cast(const tally_value *v, tally_type t, tally_err *err)
{
	return tally_err_set(err, "42846", "cannot cast type %s to %s",
			     tally_type_name((tally_type)v->type), tally_type_name(t));
}

int tally_value_cast(const tally_value *v, tally_type t, tally_value *out, tally_arena *a,
		     tally_err *err)
{
	tally_type from = (tally_type)v->type;
	tally_value r;

	if (v->isnull) {
		*out = tally_null(t);
		return 0;
	}
	if (from == t) {
		*out = *v;
		return 0;
	}
	memset(&r, 0, sizeof r);
	r.type = (uint8_t)t;
	if (from == TALLY_T_TEXT || from == TALLY_T_UNKNOWN) {
		if (t == TALLY_T_TEXT || t == TALLY_T_UNKNOWN) {
			*out = *v;
			out->type = (uint8_t)t;
			return 0;
		}
		if (tally_value_parse(t, v->u.s.p, v->u.s.len, &r, err))
			return -1;
		*out = r;
		return 0;
	}
	if (t == TALLY_T_TEXT || t == TALLY_T_UNKNOWN) {
		char tmp[96];
		int n;
		if (from == TALLY_T_BOOL)
			n = sprintf(tmp, "%s", v->u.b ? "true" : "false");
		else
			n = format_scalar(v, tmp);
		char *p = tally_arena_memdup(a, tmp, (size_t)n);
		if (!p)
			return tally_err_set(err, TALLY_SQLSTATE_OUT_OF_MEMORY, "out of memory");
		*out = tally_text(p, (uint32_t)n);
		out->type = (uint8_t)t;
		return 0;
	}
	if (tally_type_is_int(from)) {
		if (tally_type_is_int(t)) {
			if (int_range_check(t, v->u.i, err))
				return -1;
			r.u.i = v->u.i;
		} else if (t == TALLY_T_FLOAT4) {
			r.u.f = (float)v->u.i;
		} else if (t == TALLY_T_FLOAT8) {
			r.u.f = (double)v->u.i;
		} else if (t == TALLY_T_NUMERIC) {
			r.u.n.m = v->u.i;
			r.u.n.scale = 0;
		} else if (t == TALLY_T_BOOL && from == TALLY_T_INT4) {
			r.u.b = v->u.i != 0;
		} else {
			return cannot_cast(v, t, err);
		}
		*out = r;
		return 0;
	}
	if (tally_type_is_float(from)) {
		double d = v->u.f;
		if (tally_type_is_int(t)) {
			double x = rint(d);
			/* bounds as PostgreSQL's FLOAT8_FITS_IN_INTxx */
			bool ok;
			if (t == TALLY_T_INT2)
				ok = x >= -32768.0 && x < 32768.0;
			else if (t == TALLY_T_INT4)
				ok = x >= -2147483648.0 && x < 2147483648.0;
			else
				ok = x >= -9223372036854775808.0 && x < 9223372036854775808.0;
			if (isnan(d) || !ok)
				return tally_err_set(err, TALLY_SQLSTATE_OUT_OF_RANGE,
						     "%s out of range", tally_type_name(t));
			r.u.i = (int64_t)x;
		} else if (t == TALLY_T_FLOAT8) {
			r.u.f = d;
		} else if (t == TALLY_T_FLOAT4) {
			float f = (float)d;
			if (isinf(f) && !isinf(d))
				return tally_err_set(err, TALLY_SQLSTATE_OUT_OF_RANGE,
						     "value out of range: overflow");
			if (f == 0.0f && d != 0.0)
				return tally_err_set(err, TALLY_SQLSTATE_OUT_OF_RANGE,
						     "value out of range: underflow");
			r.u.f = f;
		} else if (t == TALLY_T_NUMERIC) {
			char tmp[64];
			if (isnan(d) || isinf(d))
				return tally_err_set(err, TALLY_SQLSTATE_FEATURE_NOT_SUPPORTED,
						     "cannot convert %s to numeric",
						     isnan(d) ? "NaN" : "infinity");
			/* PostgreSQL: DBL_DIG (15) / FLT_DIG (6) significant digits */
			int n = snprintf(tmp, sizeof tmp, "%.*g",
					 from == TALLY_T_FLOAT4 ? FLT_DIG : DBL_DIG, d);
			if (parse_numeric(tmp, (size_t)n, &r, err))
				return -1;
			/* strip the exponent-form trailing zeros numeric_in would keep: none */
		} else {
			return cannot_cast(v, t, err);
		}
		*out = r;
		return 0;
	}
	if (from == TALLY_T_NUMERIC) {
		if (tally_type_is_float(t)) {
			double d = tally_numeric_to_double(v->u.n);
			r.u.f = t == TALLY_T_FLOAT4 ? (double)(float)d : d;
		} else if (tally_type_is_int(t)) {
			/* round half away from zero */
			__int128 m = v->u.n.m, p = pow10_i128(v->u.n.scale);
			__int128 q = m / p, rem = m % p;
			if (rem < 0)
				rem = -rem;
			if (rem * 2 >= p && p > 1)
				q += m < 0 ? -1 : 1;
			if (q < INT64_MIN || q > INT64_MAX)
				return tally_err_set(err, TALLY_SQLSTATE_OUT_OF_RANGE,
						     "%s out of range", tally_type_name(t));
			if (int_range_check(t, (int64_t)q, err))
				return -1;
			r.u.i = (int64_t)q;
		} else {
			return cannot_cast(v, t, err);
		}
		*out = r;
		return 0;
	}
	if (from == TALLY_T_BOOL && t == TALLY_T_INT4) {
		r.u.i = v->u.b ? 1 : 0;
		*out = r;
		return 0;
	}
	return cannot_cast(v, t, err);
}

/* ---- comparison --------------------------------------------------------------------------- */

static int cmp_double(double a, double b)
{
	if (isnan(a))
		return isnan(b) ? 0 : 1;
	if (isnan(b))
		return -1;
	return a < b ? -1 : a > b ? 1 : 0;
}

static int cmp_i128(__int128 a, __int128 b)
{
	return a < b ? -1 : a > b ? 1 : 0;
}

/* Compare two numerics exactly when scaling fits, else via double. */
static int cmp_numeric(tally_numeric a, tally_numeric b)
{
	if (a.scale == b.scale)
		return cmp_i128(a.m, b.m);
	tally_numeric *lo = a.scale < b.scale ? &a : &b;
	int diff = abs(a.scale - b.scale);
	__int128 p = pow10_i128(diff);
	__int128 lim = (((__int128)1) << 126) / p;
	if (lo->m < lim && lo->m > -lim) {
		__int128 x = lo == &a ? a.m * p : a.m;
		__int128 y = lo == &b ? b.m * p : b.m;
		return cmp_i128(x, y);
	}
	return cmp_double(tally_numeric_to_double(a), tally_numeric_to_double(b));
}

static tally_numeric to_numeric(const tally_value *v)
{
	tally_numeric n = {v->u.i, 0};
	if (v->type == TALLY_T_NUMERIC)
		n = v->u.n;
	return n;
}

int tally_value_cmp(const tally_value *a, const tally_value *b)
{
	tally_type ta = (tally_type)a->type, tb = (tally_type)b->type;
	bool sa = ta == TALLY_T_TEXT || ta == TALLY_T_UNKNOWN;
	bool sb = tb == TALLY_T_TEXT || tb == TALLY_T_UNKNOWN;

	if (sa && sb) {
		uint32_t n = a->u.s.len < b->u.s.len ? a->u.s.len : b->u.s.len;
		int c = n ? memcmp(a->u.s.p, b->u.s.p, n) : 0;
		if (c)
			return c < 0 ? -1 : 1;
		return a->u.s.len < b->u.s.len ? -1 : a->u.s.len > b->u.s.len ? 1 : 0;
	}
	if (tally_type_is_numeric_kind(ta) && tally_type_is_numeric_kind(tb)) {
		if (tally_type_is_int(ta) && tally_type_is_int(tb))
			return a->u.i < b->u.i ? -1 : a->u.i > b->u.i ? 1 : 0;
		if (tally_type_is_float(ta) || tally_type_is_float(tb)) {
			double x = tally_type_is_float(ta) ? a->u.f
				   : ta == TALLY_T_NUMERIC ? tally_numeric_to_double(a->u.n)
							   : (double)a->u.i;
			double y = tally_type_is_float(tb) ? b->u.f
				   : tb == TALLY_T_NUMERIC ? tally_numeric_to_double(b->u.n)
							   : (double)b->u.i;
			return cmp_double(x, y);
		}
		return cmp_numeric(to_numeric(a), to_numeric(b));
	}
	if (ta == tb) {
		switch (ta) {
		case TALLY_T_BOOL:
			return (int)a->u.b - (int)b->u.b;
		case TALLY_T_TIMESTAMPTZ:
			return a->u.ts < b->u.ts ? -1 : a->u.ts > b->u.ts ? 1 : 0;
		default:
			return 0;
		}
	}
	/* incomparable types: a stable order by type tag */
	return ta < tb ? -1 : 1;
}

/* ---- group keys --------------------------------------------------------------------------- */

void tally_key_encode(const tally_value *v, tally_buf *b)
{
	uint8_t tmp[1 + 18];
	if (v->isnull) {
		tally_buf_putc(b, 0);
		return;
	}
	tmp[0] = v->type;
	switch (v->type) {
	case TALLY_T_BOOL:
		tmp[1] = v->u.b ? 1 : 0;
		tally_buf_append(b, tmp, 2);
		return;
	case TALLY_T_INT2:
	case TALLY_T_INT4:
	case TALLY_T_INT8:
		tally_put_be64(tmp + 1, (uint64_t)v->u.i);
		tally_buf_append(b, tmp, 9);
		return;
	case TALLY_T_TIMESTAMPTZ:
		tally_put_be64(tmp + 1, (uint64_t)v->u.ts);
		tally_buf_append(b, tmp, 9);
		return;
	case TALLY_T_FLOAT4:
	case TALLY_T_FLOAT8: {
		double d = v->u.f;
		uint64_t bits;
		if (d == 0)
			d = 0.0;
		if (isnan(d))
			d = NAN;
		memcpy(&bits, &d, 8);
		if (isnan(d))
			bits = UINT64_C(0x7ff8000000000000);
		tally_put_be64(tmp + 1, bits);
		tally_buf_append(b, tmp, 9);
		return;
	}
	case TALLY_T_NUMERIC: {
		unsigned __int128 u = (unsigned __int128)v->u.n.m;
		tally_put_be64(tmp + 1, (uint64_t)(u >> 64));
		tally_put_be64(tmp + 9, (uint64_t)u);
		tally_put_be16(tmp + 17, (uint16_t)v->u.n.scale);
		tally_buf_append(b, tmp, 19);
		return;
	}
	case TALLY_T_TEXT:
	case TALLY_T_UNKNOWN:
	default:
		tally_buf_putc(b, v->type);
		tally_buf_put_str(b, v->u.s.p, v->u.s.len);
		return;
	}
}

int tally_key_decode(tally_rd *r, tally_value *out)
{
	uint8_t tag, bb;
	uint64_t u;
	tally_value v;

	if (tally_rd_u8(r, &tag))
		return -1;
	memset(&v, 0, sizeof v);
	if (tag == 0) {
		v.isnull = 1;
		v.type = TALLY_T_UNKNOWN;
		*out = v;
		return 0;
	}
	if (tag >= TALLY_T_COUNT_)
		goto bad;
	v.type = tag;
	switch (tag) {
	case TALLY_T_BOOL:
		if (tally_rd_u8(r, &bb) || bb > 1)
			goto bad;
		v.u.b = bb;
		break;
	case TALLY_T_INT2:
	case TALLY_T_INT4:
	case TALLY_T_INT8:
		if (tally_rd_u64(r, &u))
			goto bad;
		v.u.i = (int64_t)u;
		if (int_range_check((tally_type)tag, v.u.i, NULL))
			goto bad;
		break;
	case TALLY_T_TIMESTAMPTZ:
		if (tally_rd_u64(r, &u))
			goto bad;
		v.u.ts = (int64_t)u;
		break;
	case TALLY_T_FLOAT4:
	case TALLY_T_FLOAT8: {
		double d;
		if (tally_rd_u64(r, &u))
			goto bad;
		memcpy(&d, &u, 8);
		v.u.f = d;
		break;
	}
	case TALLY_T_NUMERIC: {
		uint64_t hi, lo;
		uint16_t sc;
		if (tally_rd_u64(r, &hi) || tally_rd_u64(r, &lo) || tally_rd_u16(r, &sc) || sc > 38)
			goto bad;
		v.u.n.m = (__int128)(((unsigned __int128)hi << 64) | lo);
		v.u.n.scale = (int16_t)sc;
		break;
	}
	case TALLY_T_TEXT:
	case TALLY_T_UNKNOWN: {
		const uint8_t *p;
		uint32_t n;
		if (tally_rd_str(r, &p, &n, TALLY_TEXT_MAX))
			goto bad;
		v.u.s.p = (const char *)p;
		v.u.s.len = n;
		break;
	}
	default:
		goto bad;
	}
	*out = v;
	return 0;
bad:
	r->bad = true;
	return -1;
}

/* ---- date_trunc --------------------------------------------------------------------------- */

enum ts_unit {
	U_USEC,
	U_MSEC,
	U_SEC,
	U_MIN,
	U_HOUR,
	U_DAY,
	U_WEEK,
	U_MONTH,
	U_QUARTER,
	U_YEAR,
	U_DECADE,
	U_CENTURY,
	U_MILLENNIUM
};

static const struct {
	const char *name;
	enum ts_unit u;
} ts_units[] = {
    {"microsecond", U_USEC},
    {"microseconds", U_USEC},
    {"usec", U_USEC},
    {"usecs", U_USEC},
    {"useconds", U_USEC},
    {"us", U_USEC},
    {"millisecond", U_MSEC},
    {"milliseconds", U_MSEC},
    {"msec", U_MSEC},
    {"msecs", U_MSEC},
    {"mseconds", U_MSEC},
    {"ms", U_MSEC},
    {"second", U_SEC},
    {"seconds", U_SEC},
    {"sec", U_SEC},
    {"secs", U_SEC},
    {"s", U_SEC},
    {"minute", U_MIN},
    {"minutes", U_MIN},
    {"min", U_MIN},
    {"mins", U_MIN},
    {"m", U_MIN},
    {"hour", U_HOUR},
    {"hours", U_HOUR},
    {"hr", U_HOUR},
    {"hrs", U_HOUR},
    {"h", U_HOUR},
    {"day", U_DAY},
    {"days", U_DAY},
    {"d", U_DAY},
    {"week", U_WEEK},
    {"weeks", U_WEEK},
    {"w", U_WEEK},
    {"month", U_MONTH},
    {"months", U_MONTH},
    {"mon", U_MONTH},
    {"mons", U_MONTH},
    {"quarter", U_QUARTER},
    {"qtr", U_QUARTER},
    {"year", U_YEAR},
    {"years", U_YEAR},
    {"yr", U_YEAR},
    {"yrs", U_YEAR},
    {"y", U_YEAR},
    {"decade", U_DECADE},
    {"decades", U_DECADE},
    {"dec", U_DECADE},
    {"decs", U_DECADE},
    {"century", U_CENTURY},
    {"centuries", U_CENTURY},
    {"c", U_CENTURY},
    {"cent", U_CENTURY},
    {"millennium", U_MILLENNIUM},
    {"millennia", U_MILLENNIUM},
    {"mil", U_MILLENNIUM},
    {"mils", U_MILLENNIUM},
};

int tally_ts_trunc(const char *unit, size_t unitlen, int64_t ts, int64_t *out, tally_err *err)
{
	int idx = -1;
	for (size_t i = 0; i < sizeof ts_units / sizeof ts_units[0]; i++) {
		if (strlen(ts_units[i].name) == unitlen &&
		    strncasecmp(ts_units[i].name, unit, unitlen) == 0) {
			idx = (int)i;
			break;
		}
	}
	if (idx < 0) {
		int n = unitlen > 200 ? 200 : (int)unitlen;
		return tally_err_set(
		    err, TALLY_SQLSTATE_INVALID_PARAMETER,
		    "unit \"%.*s\" not recognized for type timestamp with time zone", n, unit);
	}
	enum ts_unit u = ts_units[idx].u;
	int64_t days = floor_div(ts, USECS_PER_DAY), y;
	int m, d;
	switch (u) {
	case U_USEC:
		*out = ts;
		return 0;
	case U_MSEC:
		*out = floor_div(ts, 1000) * 1000;
		return 0;
	case U_SEC:
		*out = floor_div(ts, USECS_PER_SEC) * USECS_PER_SEC;
		return 0;
	case U_MIN:
		*out = floor_div(ts, 60 * USECS_PER_SEC) * 60 * USECS_PER_SEC;
		return 0;
	case U_HOUR:
		*out = floor_div(ts, 3600 * USECS_PER_SEC) * 3600 * USECS_PER_SEC;
		return 0;
	case U_DAY:
		*out = days * USECS_PER_DAY;
		return 0;
	case U_WEEK: {
		/* 1970-01-01 was a Thursday: Monday-based weekday = (days + 3) mod 7 */
		int64_t wd = days + 3 - floor_div(days + 3, 7) * 7;
		*out = (days - wd) * USECS_PER_DAY;
		return 0;
	}
	default:
		break;
	}
	civil_from_days(days, &y, &m, &d);
	switch (u) {
	case U_MONTH:
		break;
	case U_QUARTER:
		m = (m - 1) / 3 * 3 + 1;
		break;
	case U_YEAR:
		m = 1;
		break;
	case U_DECADE:
		m = 1;
		/* PostgreSQL: year - year % 10 for AD years, (year - 8) / 10 * 10 for BC */
		if (y > 0)
			y = y / 10 * 10;
		else
			y = -((8 - (y - 1)) / 10) * 10;
		break;
	case U_CENTURY:
		m = 1;
		if (y > 0)
			y = ((y + 99) / 100) * 100 - 99;
		else
			y = -((99 - (y - 1)) / 100) * 100 + 1;
		break;
	case U_MILLENNIUM:
		m = 1;
		if (y > 0)
			y = ((y + 999) / 1000) * 1000 - 999;
		else
			y = -((999 - (y - 1)) / 1000) * 1000 + 1;
		break;
	default:
		break;
	}
	*out = days_from_civil(y, m, 1) * USECS_PER_DAY;
	return 0;
}
