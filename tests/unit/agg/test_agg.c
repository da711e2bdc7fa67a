/*
 * test_agg.c - aggregate partial states: result types and NULL rules, exact 128-bit sums,
 * avg as PostgreSQL's numeric division, merge of partials in any split and order equal to
 * aggregating at once, serialization round trip and truncation.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "tally/agg.h"

typedef struct slot {
	uint8_t b[TALLY_AGG_SLOT] __attribute__((aligned(16)));
} slot;

static tally_agg_spec spec(tally_agg_kind k, tally_type t)
{
	tally_agg_spec s = {k, t, TALLY_T_UNKNOWN};
	tally_err e;
	cr_assert_eq(tally_agg_resolve(&s, &e), 0, "%s", e.message);
	return s;
}

/* Finalized result as text ("NULL", or "ERROR <state>: msg"). */
static void result_str(const tally_agg_spec *s, const void *sl, char *out, size_t n)
{
	tally_value v;
	tally_err e;
	memset(&e, 0, sizeof e);
	if (tally_agg_finalize(s, sl, &v, &e)) {
		snprintf(out, n, "ERROR %s: %.200s", e.sqlstate, e.message);
		return;
	}
	cr_assert_eq(v.type, s->result_type);
	if (v.isnull) {
		snprintf(out, n, "NULL");
		return;
	}
	tally_buf b = {0};
	tally_value_format(&v, &b);
	snprintf(out, n, "%.*s", (int)b.len, (const char *)b.data);
	tally_buf_free(&b);
}

Test(agg, result_types_follow_postgres, .timeout = 30)
{
	cr_expect_eq(spec(TALLY_AGG_COUNT_STAR, TALLY_T_UNKNOWN).result_type, TALLY_T_INT8);
	cr_expect_eq(spec(TALLY_AGG_COUNT, TALLY_T_TEXT).result_type, TALLY_T_INT8);
	cr_expect_eq(spec(TALLY_AGG_SUM, TALLY_T_INT2).result_type, TALLY_T_INT8);
	cr_expect_eq(spec(TALLY_AGG_SUM, TALLY_T_INT4).result_type, TALLY_T_INT8);
	cr_expect_eq(spec(TALLY_AGG_SUM, TALLY_T_INT8).result_type, TALLY_T_NUMERIC);
	cr_expect_eq(spec(TALLY_AGG_SUM, TALLY_T_FLOAT4).result_type, TALLY_T_FLOAT4);
	cr_expect_eq(spec(TALLY_AGG_SUM, TALLY_T_FLOAT8).result_type, TALLY_T_FLOAT8);
	cr_expect_eq(spec(TALLY_AGG_AVG, TALLY_T_INT4).result_type, TALLY_T_NUMERIC);
	cr_expect_eq(spec(TALLY_AGG_AVG, TALLY_T_FLOAT4).result_type, TALLY_T_FLOAT8);
	cr_expect_eq(spec(TALLY_AGG_MIN, TALLY_T_TEXT).result_type, TALLY_T_TEXT);
	cr_expect_eq(spec(TALLY_AGG_MAX, TALLY_T_TIMESTAMPTZ).result_type, TALLY_T_TIMESTAMPTZ);
}

Test(agg, resolve_rejects_like_postgres, .timeout = 30)
{
	struct {
		tally_agg_kind k;
		tally_type t;
		const char *msg;
	} c[] = {
	    {TALLY_AGG_SUM, TALLY_T_TEXT, "function sum(text) does not exist"},
	    {TALLY_AGG_AVG, TALLY_T_BOOL, "function avg(boolean) does not exist"},
	    {TALLY_AGG_MIN, TALLY_T_BOOL, "function min(boolean) does not exist"},
	    {TALLY_AGG_MAX, TALLY_T_BOOL, "function max(boolean) does not exist"},
	    {TALLY_AGG_SUM, TALLY_T_TIMESTAMPTZ,
	     "function sum(timestamp with time zone) does not exist"},
	};
	for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
		tally_agg_spec s = {c[i].k, c[i].t, TALLY_T_UNKNOWN};
		tally_err e;
		memset(&e, 0, sizeof e);
		cr_expect_neq(tally_agg_resolve(&s, &e), 0);
		cr_expect_str_eq(e.sqlstate, "42883");
		cr_expect_str_eq(e.message, c[i].msg);
	}
	tally_agg_kind k;
	cr_expect_eq(tally_agg_lookup("SUM", 3, &k), 0);
	cr_expect_eq(k, TALLY_AGG_SUM);
	cr_expect_eq(tally_agg_lookup("sums", 4, &k), -1);
	cr_expect_str_eq(tally_agg_name(TALLY_AGG_AVG), "avg");
}

Test(agg, null_rules, .timeout = 30)
{
	tally_agg_kind kinds[] = {TALLY_AGG_COUNT_STAR, TALLY_AGG_COUNT, TALLY_AGG_SUM,
				  TALLY_AGG_AVG,	TALLY_AGG_MIN,	 TALLY_AGG_MAX};
	const char *want_empty[] = {"0", "0", "NULL", "NULL", "NULL", "NULL"};
	const char *want_nulls[] = {"3", "0", "NULL", "NULL", "NULL", "NULL"};
	for (int i = 0; i < 6; i++) {
		tally_agg_spec s = spec(kinds[i], TALLY_T_INT4);
		slot sl;
		char out[300];
		tally_agg_init(&s, sl.b);
		result_str(&s, sl.b, out, sizeof out);
		cr_expect_str_eq(out, want_empty[i], "%s empty", tally_agg_name(kinds[i]));
		tally_value n = tally_null(TALLY_T_INT4);
		for (int j = 0; j < 3; j++)
			tally_agg_update(&s, sl.b, &n);
		result_str(&s, sl.b, out, sizeof out);
		cr_expect_str_eq(out, want_nulls[i], "%s of NULLs", tally_agg_name(kinds[i]));
	}
}

Test(agg, sum_of_int64_beyond_64_bits_is_exact, .timeout = 30)
{
	tally_agg_spec s = spec(TALLY_AGG_SUM, TALLY_T_INT8);
	slot sl;
	char out[300];
	tally_agg_init(&s, sl.b);
	for (int i = 0; i < 4; i++)
		tally_agg_update_i64(&s, sl.b, INT64_MAX);
	result_str(&s, sl.b, out, sizeof out);
	cr_expect_str_eq(out, "36893488147419103228");
	tally_agg_spec a = spec(TALLY_AGG_AVG, TALLY_T_INT8);
	tally_agg_init(&a, sl.b);
	for (int i = 0; i < 3; i++)
		tally_agg_update_i64(&a, sl.b, INT64_MAX);
	result_str(&a, sl.b, out, sizeof out);
	cr_expect_str_eq(out, "9223372036854775807");
}

Test(agg, sum_int4_overflowing_bigint_fails_at_finalize, .timeout = 30)
{
	tally_agg_spec s = spec(TALLY_AGG_SUM, TALLY_T_INT4);
	slot a, b;
	char out[300];
	tally_agg_init(&s, a.b);
	tally_agg_update_i64(&s, a.b, INT32_MAX);
	/* a partial holding INT64_MAX (as many merged int4 rows would) */
	tally_agg_spec s8 = spec(TALLY_AGG_SUM, TALLY_T_INT8);
	(void)s8;
	tally_agg_init(&s, b.b);
	for (int i = 0; i < 4; i++)
		tally_agg_update_i64(&s, b.b, INT64_MAX / 4);
	tally_agg_merge(&s, a.b, b.b);
	result_str(&s, a.b, out, sizeof out);
	cr_expect_str_eq(out, "ERROR 22003: bigint out of range");
}

Test(agg, avg_matches_postgres_numeric_division, .timeout = 30)
{
	struct {
		int64_t v[4];
		int n;
		const char *want;
	} c[] = {
	    {{1, 2}, 2, "1.5000000000000000"},
	    {{1, 2, 2}, 3, "1.6666666666666667"},
	    {{100000000000000000, 100000000000000001}, 2, "100000000000000001"},
	    {{-1, -2}, 2, "-1.5000000000000000"},
	    {{0, 0, 0}, 3, "0.00000000000000000000"},
	    {{1, 0, 0, 0}, 4, "0.25000000000000000000"},
	};
	for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
		tally_agg_spec s = spec(TALLY_AGG_AVG, TALLY_T_INT8);
		slot sl;
		char out[300];
		tally_agg_init(&s, sl.b);
		for (int j = 0; j < c[i].n; j++)
			tally_agg_update_i64(&s, sl.b, c[i].v[j]);
		result_str(&s, sl.b, out, sizeof out);
		cr_expect_str_eq(out, c[i].want, "case %zu", i);
	}
	/* avg of numeric (a view's sum(bigint) column read back): PostgreSQL scale rules */
	struct {
		int64_t m[3];
		int scale[3];
		int n;
		const char *want;
	} d[] = {
	    {{15, 225}, {1, 2}, 2, "1.8750000000000000"},
	    {{1, 2, 0}, {3, 3, 1}, 3, "0.00100000000000000000"},
	    {{123456789, 1}, {4, 4}, 2, "6172.8395000000000000"},
	};
	for (size_t i = 0; i < sizeof d / sizeof d[0]; i++) {
		tally_agg_spec s = spec(TALLY_AGG_AVG, TALLY_T_NUMERIC);
		slot sl;
		char out[300];
		tally_agg_init(&s, sl.b);
		for (int j = 0; j < d[i].n; j++) {
			tally_value v;
			memset(&v, 0, sizeof v);
			v.type = TALLY_T_NUMERIC;
			v.u.n.m = d[i].m[j];
			v.u.n.scale = (int16_t)d[i].scale[j];
			tally_agg_update(&s, sl.b, &v);
		}
		result_str(&s, sl.b, out, sizeof out);
		cr_expect_str_eq(out, d[i].want, "numeric case %zu", i);
	}
}

Test(agg, float_sum_avg_and_real_rounding, .timeout = 30)
{
	tally_agg_spec s = spec(TALLY_AGG_SUM, TALLY_T_FLOAT8);
	slot sl;
	char out[300];
	tally_agg_init(&s, sl.b);
	tally_agg_update_f64(&s, sl.b, 1e100);
	tally_agg_update_f64(&s, sl.b, 1.0);
	tally_agg_update_f64(&s, sl.b, -1e100);
	result_str(&s, sl.b, out, sizeof out);
	cr_expect_str_eq(out, "1"); /* compensated */
	tally_agg_init(&s, sl.b);
	tally_agg_update_f64(&s, sl.b, INFINITY);
	tally_agg_update_f64(&s, sl.b, 1.0);
	result_str(&s, sl.b, out, sizeof out);
	cr_expect_str_eq(out, "Infinity");
	tally_agg_spec r = spec(TALLY_AGG_SUM, TALLY_T_FLOAT4);
	tally_agg_init(&r, sl.b);
	tally_value v = tally_float(TALLY_T_FLOAT4, (double)0.1f);
	for (int i = 0; i < 3; i++)
		tally_agg_update(&r, sl.b, &v);
	result_str(&r, sl.b, out, sizeof out);
	cr_expect_str_eq(out, "0.3");
	tally_agg_spec a = spec(TALLY_AGG_AVG, TALLY_T_FLOAT8);
	tally_agg_init(&a, sl.b);
	tally_agg_update_f64(&a, sl.b, 1.0);
	tally_agg_update_f64(&a, sl.b, 2.0);
	result_str(&a, sl.b, out, sizeof out);
	cr_expect_str_eq(out, "1.5");
	tally_agg_spec mx = spec(TALLY_AGG_MAX, TALLY_T_FLOAT8),
		       mn = spec(TALLY_AGG_MIN, TALLY_T_FLOAT8);
	slot s2;
	tally_agg_init(&mx, sl.b);
	tally_agg_init(&mn, s2.b);
	double xs[] = {NAN, 3, -1};
	for (int i = 0; i < 3; i++) {
		tally_agg_update_f64(&mx, sl.b, xs[i]);
		tally_agg_update_f64(&mn, s2.b, xs[i]);
	}
	result_str(&mx, sl.b, out, sizeof out);
	cr_expect_str_eq(out, "NaN");
	result_str(&mn, s2.b, out, sizeof out);
	cr_expect_str_eq(out, "-1");
}

/* ---- merge property ---------------------------------------------------------------------- */

static uint64_t rng_state = 88172645463325252ull;
static uint64_t rnd(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

static char text_pool[64][8];

static tally_value random_value(tally_type t)
{
	if (rnd() % 7 == 0)
		return tally_null(t);
	int64_t r = (int64_t)(rnd() >> 1);
	switch (t) {
	case TALLY_T_INT2:
		return tally_int(t, (int16_t)r);
	case TALLY_T_INT4:
		return tally_int(t, (int32_t)r);
	case TALLY_T_INT8:
		return tally_int(t,
				 rnd() % 3 ? (int64_t)rnd() : (rnd() & 1 ? INT64_MAX : INT64_MIN));
	case TALLY_T_FLOAT4:
		/* dyadic values: every partial sum is exact, so any merge order gives one answer */
		return tally_float(t, (double)((int32_t)(r % 20001) - 10000) / 8.0);
	case TALLY_T_FLOAT8:
		return tally_float(t, (double)((int64_t)(r % 2000001) - 1000000) / 64.0);
	case TALLY_T_TIMESTAMPTZ: {
		tally_value v = tally_int(TALLY_T_INT8, (int64_t)(rnd() % 4000000000000000ull));
		v.type = TALLY_T_TIMESTAMPTZ;
		return v;
	}
	case TALLY_T_TEXT: {
		const char *p = text_pool[rnd() % 64];
		return tally_text(p, (uint32_t)strlen(p));
	}
	default:
		return tally_null(t);
	}
}

/* Aggregate vals[lo..hi) into a fresh slot, sometimes through a serialize round trip. */
static void partial(const tally_agg_spec *s, const tally_value *vals, int lo, int hi, slot *out)
{
	tally_agg_init(s, out->b);
	for (int i = lo; i < hi; i++)
		tally_agg_update(s, out->b, &vals[i]);
	if (rnd() & 1) {
		tally_buf b = {0};
		tally_rd r;
		slot tmp;
		tally_agg_serialize(s, out->b, &b);
		tally_rd_init(&r, b.data, b.len);
		cr_assert_eq(tally_agg_deserialize(s, &r, tmp.b), 0);
		cr_assert_eq(tally_rd_left(&r), 0);
		tally_agg_release(s, out->b);
		*out = tmp;
		tally_buf_free(&b);
	}
}

Test(agg, merging_partials_split_any_way_equals_aggregating_at_once, .timeout = 60)
{
	tally_type types[] = {TALLY_T_INT2,   TALLY_T_INT4, TALLY_T_INT8,	TALLY_T_FLOAT4,
			      TALLY_T_FLOAT8, TALLY_T_TEXT, TALLY_T_TIMESTAMPTZ};
	tally_agg_kind kinds[] = {TALLY_AGG_COUNT_STAR, TALLY_AGG_COUNT, TALLY_AGG_SUM,
				  TALLY_AGG_AVG,	TALLY_AGG_MIN,	 TALLY_AGG_MAX};
	for (int i = 0; i < 64; i++) {
		int len = 1 + (int)(rnd() % 6);
		for (int j = 0; j < len; j++)
			text_pool[i][j] = (char)(rnd() % 3 ? 'a' + rnd() % 4 : 0xC0 + rnd() % 4);
		text_pool[i][len] = 0;
	}
	enum { N = 300 };
	tally_value vals[N];
	for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
		for (size_t ki = 0; ki < sizeof kinds / sizeof kinds[0]; ki++) {
			tally_agg_spec s = {kinds[ki], types[ti], TALLY_T_UNKNOWN};
			if (tally_agg_resolve(&s, NULL))
				continue; /* sum(text) etc. */
			for (int round = 0; round < 20; round++) {
				int n = (int)(rnd() % N);
				for (int i = 0; i < n; i++)
					vals[i] = random_value(types[ti]);
				slot whole;
				char want[300], got[300];
				partial(&s, vals, 0, n, &whole);
				result_str(&s, whole.b, want, sizeof want);
				/* random split into up to 8 parts */
				int cuts[10], nc = 0;
				cuts[nc++] = 0;
				int parts = 1 + (int)(rnd() % 8);
				for (int p = 1; p < parts; p++)
					cuts[nc++] = n ? (int)(rnd() % (uint64_t)(n + 1)) : 0;
				cuts[nc++] = n;
				for (int a = 1; a < nc - 1; a++) /* sort inner cuts */
					for (int b = a + 1; b < nc - 1; b++)
						if (cuts[b] < cuts[a]) {
							int t = cuts[a];
							cuts[a] = cuts[b];
							cuts[b] = t;
						}
				slot ps[10];
				for (int p = 0; p + 1 < nc; p++)
					partial(&s, vals, cuts[p], cuts[p + 1], &ps[p]);
				/* random merge order, sometimes merging through the encoded form */
				int order[10], np = nc - 1;
				for (int p = 0; p < np; p++)
					order[p] = p;
				for (int p = np - 1; p > 0; p--) {
					int q = (int)(rnd() % (uint64_t)(p + 1)), t = order[p];
					order[p] = order[q];
					order[q] = t;
				}
				slot acc;
				tally_agg_init(&s, acc.b);
				for (int p = 0; p < np; p++) {
					if (rnd() & 1) {
						tally_agg_merge(&s, acc.b, ps[order[p]].b);
					} else {
						tally_buf b = {0};
						tally_rd r;
						tally_agg_serialize(&s, ps[order[p]].b, &b);
						tally_rd_init(&r, b.data, b.len);
						cr_assert_eq(tally_agg_merge_encoded(&s, acc.b, &r),
							     0);
						tally_buf_free(&b);
					}
				}
				result_str(&s, acc.b, got, sizeof got);
				cr_assert_str_eq(got, want, "%s(%s) n=%d parts=%d",
						 tally_agg_name(s.kind),
						 tally_type_name(s.arg_type), n, np);
				for (int p = 0; p < np; p++)
					tally_agg_release(&s, ps[p].b);
				tally_agg_release(&s, acc.b);
				tally_agg_release(&s, whole.b);
			}
		}
	}
}

Test(agg, at_once_result_matches_a_direct_computation, .timeout = 30)
{
	/* min/max/sum/count over ints against a plain loop */
	enum { N = 1000 };
	int64_t xs[N];
	__int128 sum = 0;
	int64_t mn = INT64_MAX, mx = INT64_MIN;
	tally_agg_spec ss = spec(TALLY_AGG_SUM, TALLY_T_INT8),
		       smin = spec(TALLY_AGG_MIN, TALLY_T_INT8),
		       smax = spec(TALLY_AGG_MAX, TALLY_T_INT8),
		       sc = spec(TALLY_AGG_COUNT, TALLY_T_INT8);
	slot a, b, c, d;
	tally_agg_init(&ss, a.b);
	tally_agg_init(&smin, b.b);
	tally_agg_init(&smax, c.b);
	tally_agg_init(&sc, d.b);
	for (int i = 0; i < N; i++) {
		xs[i] = (int64_t)rnd();
		sum += xs[i];
		mn = xs[i] < mn ? xs[i] : mn;
		mx = xs[i] > mx ? xs[i] : mx;
		tally_agg_update_i64(&ss, a.b, xs[i]);
		tally_agg_update_i64(&smin, b.b, xs[i]);
		tally_agg_update_i64(&smax, c.b, xs[i]);
		tally_value v = tally_int(TALLY_T_INT8, xs[i]);
		tally_agg_update(&sc, d.b, &v);
	}
	tally_value v;
	cr_assert_eq(tally_agg_finalize(&ss, a.b, &v, NULL), 0);
	cr_expect(v.u.n.m == sum && v.u.n.scale == 0);
	cr_assert_eq(tally_agg_finalize(&smin, b.b, &v, NULL), 0);
	cr_expect_eq(v.u.i, mn);
	cr_assert_eq(tally_agg_finalize(&smax, c.b, &v, NULL), 0);
	cr_expect_eq(v.u.i, mx);
	cr_assert_eq(tally_agg_finalize(&sc, d.b, &v, NULL), 0);
	cr_expect_eq(v.u.i, N);
}

/* ---- serialization ------------------------------------------------------------------------ */

Test(agg, serialization_round_trips_and_rejects_truncation, .timeout = 30)
{
	tally_type types[] = {TALLY_T_INT2,   TALLY_T_INT4, TALLY_T_INT8,	 TALLY_T_FLOAT4,
			      TALLY_T_FLOAT8, TALLY_T_TEXT, TALLY_T_TIMESTAMPTZ, TALLY_T_NUMERIC};
	tally_agg_kind kinds[] = {TALLY_AGG_COUNT_STAR, TALLY_AGG_COUNT, TALLY_AGG_SUM,
				  TALLY_AGG_AVG,	TALLY_AGG_MIN,	 TALLY_AGG_MAX};
	for (int i = 0; i < 64; i++)
		snprintf(text_pool[i], sizeof text_pool[i], "t%d", i);
	for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
		for (size_t ki = 0; ki < sizeof kinds / sizeof kinds[0]; ki++) {
			tally_agg_spec s = {kinds[ki], types[ti], TALLY_T_UNKNOWN};
			if (tally_agg_resolve(&s, NULL))
				continue;
			for (int filled = 0; filled < 2; filled++) {
				slot sl, back;
				tally_agg_init(&s, sl.b);
				for (int i = 0; filled && i < 10; i++) {
					tally_value v = random_value(types[ti]);
					if (types[ti] == TALLY_T_NUMERIC) {
						memset(&v, 0, sizeof v);
						v.type = TALLY_T_NUMERIC;
						v.u.n.m = (int64_t)rnd();
						v.u.n.scale = 2;
					}
					tally_agg_update(&s, sl.b, &v);
				}
				tally_buf b = {0}, b2 = {0};
				tally_agg_serialize(&s, sl.b, &b);
				tally_rd r;
				tally_rd_init(&r, b.data, b.len);
				cr_assert_eq(tally_agg_deserialize(&s, &r, back.b), 0);
				cr_assert_eq(tally_rd_left(&r), 0);
				tally_agg_serialize(&s, back.b, &b2);
				cr_assert(b.len == b2.len && memcmp(b.data, b2.data, b.len) == 0,
					  "%s(%s) re-encoding differs", tally_agg_name(s.kind),
					  tally_type_name(s.arg_type));
				char w[300], g[300];
				result_str(&s, sl.b, w, sizeof w);
				result_str(&s, back.b, g, sizeof g);
				cr_assert_str_eq(g, w);
				tally_agg_release(&s, back.b);
				for (size_t cut = 0; cut < b.len; cut++) {
					tally_rd_init(&r, b.data, cut);
					cr_assert_neq(tally_agg_deserialize(&s, &r, back.b), 0,
						      "%s(%s) accepted %zu of %zu bytes",
						      tally_agg_name(s.kind),
						      tally_type_name(s.arg_type), cut, b.len);
					tally_agg_release(&s, back.b); /* must be releasable */
					tally_rd_init(&r, b.data, cut);
					cr_assert_neq(tally_agg_merge_encoded(&s, sl.b, &r), 0);
				}
				tally_agg_release(&s, sl.b);
				tally_buf_free(&b);
				tally_buf_free(&b2);
			}
		}
	}
}

Test(agg, deserialize_rejects_invalid_fields, .timeout = 30)
{
	tally_agg_spec mn = spec(TALLY_AGG_MIN, TALLY_T_INT4);
	uint8_t bad_has[] = {2, 0, 0, 0, 0, 0, 0, 0, 1};
	slot sl;
	tally_rd r;
	tally_rd_init(&r, bad_has, sizeof bad_has);
	cr_expect_neq(tally_agg_deserialize(&mn, &r, sl.b), 0);
	tally_agg_spec c = spec(TALLY_AGG_COUNT, TALLY_T_INT4);
	uint8_t neg[] = {0x80, 0, 0, 0, 0, 0, 0, 0};
	tally_rd_init(&r, neg, sizeof neg);
	cr_expect_neq(tally_agg_deserialize(&c, &r, sl.b), 0);
	tally_agg_spec t = spec(TALLY_AGG_MAX, TALLY_T_TEXT);
	uint8_t huge[] = {1, 0x7f, 0xff, 0xff, 0xff, 'a'};
	tally_rd_init(&r, huge, sizeof huge);
	cr_expect_neq(tally_agg_deserialize(&t, &r, sl.b), 0);
	tally_agg_release(&t, sl.b);
}

Test(agg, text_min_max_own_their_copy, .timeout = 30)
{
	tally_agg_spec s = spec(TALLY_AGG_MAX, TALLY_T_TEXT);
	slot sl;
	char buf[16];
	char out[300];
	tally_agg_init(&s, sl.b);
	strcpy(buf, "beta");
	tally_value v = tally_text(buf, 4);
	tally_agg_update(&s, sl.b, &v);
	strcpy(buf, "alph"); /* caller's memory changes: the slot keeps its copy */
	tally_agg_update(&s, sl.b, &v);
	result_str(&s, sl.b, out, sizeof out);
	cr_expect_str_eq(out, "beta");
	v = tally_text("c", 1);
	tally_agg_update(&s, sl.b, &v);
	result_str(&s, sl.b, out, sizeof out);
	cr_expect_str_eq(out, "c");
	tally_agg_release(&s, sl.b);
	result_str(&s, sl.b, out, sizeof out);
	cr_expect_str_eq(out, "NULL");
}
