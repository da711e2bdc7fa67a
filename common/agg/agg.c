/*
 * agg.c - partial aggregate states for count, sum, avg, min and max.
 *
 * Each aggregate keeps its partial state in a fixed TALLY_AGG_SLOT-byte slot owned by the
 * caller. The slot's layout depends on the aggregate's "class" (what the state holds), derived
 * from the kind and the argument type; every access goes through memcpy so that slots need no
 * particular alignment. States merge associatively and commutatively, serialize to a portable
 * big-endian form, and finalize with PostgreSQL's result types and NULL rules (see agg.h).
 *
 * Float sums use Neumaier's compensated summation (sum + compensation), so merge order changes
 * the result far less than a plain sum would; integer sums are exact in 128 bits.
 */
#include "tally/agg.h"

#include <math.h>
#include <stdlib.h>
#include <strings.h>

/* What a slot holds. */
typedef enum agg_class {
	C_COUNT, /* int64 n */
	C_ISUM,	 /* int128 sum, int64 n: sum/avg of integers */
	C_FSUM,	 /* double sum, double comp, int64 n: sum/avg of floats */
	C_NSUM,	 /* int128 m, int16 scale, int64 n: sum/avg of numeric */
	C_IMM,	 /* int64 v, has: min/max of integers and timestamps */
	C_FMM,	 /* double v, has */
	C_NMM,	 /* int128 m, int16 scale, has */
	C_TMM,	 /* heap text, has */
	C_INVALID
} agg_class;

typedef struct st_count {
	int64_t n;
} st_count;
typedef struct st_isum {
	__int128 s;
	int64_t n;
} st_isum;
typedef struct st_fsum {
	double s, c;
	int64_t n;
} st_fsum;
typedef struct st_nsum {
	__int128 m;
	int64_t n;
	int16_t scale;
} st_nsum;
typedef struct st_imm {
	int64_t v;
	uint8_t has;
} st_imm;
typedef struct st_fmm {
	double v;
	uint8_t has;
} st_fmm;
typedef struct st_nmm {
	__int128 m;
	int16_t scale;
	uint8_t has;
} st_nmm;
typedef struct st_tmm {
	char *p;
	uint32_t len, cap;
	uint8_t has;
} st_tmm;

_Static_assert(sizeof(st_isum) <= TALLY_AGG_SLOT, "slot too small");
_Static_assert(sizeof(st_nsum) <= TALLY_AGG_SLOT, "slot too small");
_Static_assert(sizeof(st_nmm) <= TALLY_AGG_SLOT, "slot too small");
_Static_assert(sizeof(st_tmm) <= TALLY_AGG_SLOT, "slot too small");

#define LOAD(st, slot) memcpy(&(st), (slot), sizeof(st))
#define STORE(slot, st) memcpy((slot), &(st), sizeof(st))

static agg_class agg_class_of(const tally_agg_spec *s)
{
	tally_type t = s->arg_type;
	switch (s->kind) {
	case TALLY_AGG_COUNT_STAR:
	case TALLY_AGG_COUNT:
		return C_COUNT;
	case TALLY_AGG_SUM:
	case TALLY_AGG_AVG:
		if (tally_type_is_int(t))
			return C_ISUM;
		if (tally_type_is_float(t))
			return C_FSUM;
		if (t == TALLY_T_NUMERIC)
			return C_NSUM;
		return C_INVALID;
	case TALLY_AGG_MIN:
	case TALLY_AGG_MAX:
		if (tally_type_is_int(t) || t == TALLY_T_TIMESTAMPTZ)
			return C_IMM;
		if (tally_type_is_float(t))
			return C_FMM;
		if (t == TALLY_T_NUMERIC)
			return C_NMM;
		if (t == TALLY_T_TEXT || t == TALLY_T_UNKNOWN)
			return C_TMM;
		return C_INVALID;
	default:
		return C_INVALID;
	}
}

/* ---- names and resolution ----------------------------------------------------------------- */

const char *tally_agg_name(tally_agg_kind k)
{
	switch (k) {
	case TALLY_AGG_COUNT_STAR:
	case TALLY_AGG_COUNT:
		return "count";
	case TALLY_AGG_SUM:
		return "sum";
	case TALLY_AGG_AVG:
		return "avg";
	case TALLY_AGG_MIN:
		return "min";
	case TALLY_AGG_MAX:
		return "max";
	default:
		return NULL;
	}
}

int tally_agg_lookup(const char *name, size_t len, tally_agg_kind *out)
{
	static const struct {
		const char *n;
		tally_agg_kind k;
	} tab[] = {{"count", TALLY_AGG_COUNT},
		   {"sum", TALLY_AGG_SUM},
		   {"avg", TALLY_AGG_AVG},
		   {"min", TALLY_AGG_MIN},
		   {"max", TALLY_AGG_MAX}};
	for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++) {
		if (strlen(tab[i].n) == len && strncasecmp(tab[i].n, name, len) == 0) {
			*out = tab[i].k;
			return 0;
		}
	}
	return -1;
}

int tally_agg_resolve(tally_agg_spec *s, tally_err *err)
{
	tally_type t = s->arg_type;
	tally_type r = TALLY_T_UNKNOWN;
	switch (s->kind) {
	case TALLY_AGG_COUNT_STAR:
	case TALLY_AGG_COUNT:
		r = TALLY_T_INT8;
		break;
	case TALLY_AGG_SUM:
		if (t == TALLY_T_INT2 || t == TALLY_T_INT4)
			r = TALLY_T_INT8;
		else if (t == TALLY_T_INT8 || t == TALLY_T_NUMERIC)
			r = TALLY_T_NUMERIC;
		else if (tally_type_is_float(t))
			r = t;
		break;
	case TALLY_AGG_AVG:
		if (tally_type_is_int(t) || t == TALLY_T_NUMERIC)
			r = TALLY_T_NUMERIC;
		else if (tally_type_is_float(t))
			r = TALLY_T_FLOAT8;
		break;
	case TALLY_AGG_MIN:
	case TALLY_AGG_MAX:
		if (t == TALLY_T_UNKNOWN)
			r = TALLY_T_TEXT;
		else if (t != TALLY_T_BOOL && t < TALLY_T_COUNT_)
			r = t;
		break;
	default:
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL, "unknown aggregate kind %d",
				     (int)s->kind);
	}
	if (r == TALLY_T_UNKNOWN) {
		tally_err_set(err, TALLY_SQLSTATE_UNDEFINED_FUNCTION,
			      "function %s(%s) does not exist", tally_agg_name(s->kind),
			      tally_type_name(t));
		return tally_err_hint(err, "No function matches the given name and argument types. "
					   "You might need to add explicit type casts.");
	}
	s->result_type = r;
	return 0;
}

/* ---- folding ------------------------------------------------------------------------------ */

void tally_agg_init(const tally_agg_spec *s, void *slot)
{
	(void)s;
	memset(slot, 0, TALLY_AGG_SLOT);
}

/* Neumaier step: add x to (s, c). */
static inline void fsum_add(st_fsum *st, double x)
{
	double t = st->s + x;
	if (fabs(st->s) >= fabs(x))
		st->c += (st->s - t) + x;
	else
		st->c += (x - t) + st->s;
	st->s = t;
}

static inline double fsum_value(const st_fsum *st)
{
	/* once the plain sum is infinite or NaN the compensation is meaningless */
	if (!isfinite(st->s))
		return st->s;
	return st->s + st->c;
}

/* PostgreSQL float ordering: NaN above everything, equal to itself. */
static inline int fcmp(double a, double b)
{
	if (isnan(a))
		return isnan(b) ? 0 : 1;
	if (isnan(b))
		return -1;
	return a < b ? -1 : a > b ? 1 : 0;
}

static inline bool want(const tally_agg_spec *s, int cmp)
{
	return s->kind == TALLY_AGG_MIN ? cmp < 0 : cmp > 0;
}

static int ncmp(__int128 am, int as, __int128 bm, int bs)
{
	tally_value a, b;
	memset(&a, 0, sizeof a);
	memset(&b, 0, sizeof b);
	a.type = b.type = TALLY_T_NUMERIC;
	a.u.n.m = am;
	a.u.n.scale = (int16_t)as;
	b.u.n.m = bm;
	b.u.n.scale = (int16_t)bs;
	return tally_value_cmp(&a, &b);
}

/* Saturating arithmetic for merges. States arrive from peers and disk, so counts and sums may
 * hold any value; real input cannot get near these bounds (2^63 events, 2^127 for integer
 * sums), but malformed input must not be undefined behaviour. Saturated states stay valid. */
#define INT128_MAX_ ((__int128)(((unsigned __int128)1 << 127) - 1))
#define INT128_MIN_ (-INT128_MAX_ - 1)

static int64_t add_sat64(int64_t a, int64_t b)
{
	int64_t r;
	if (__builtin_add_overflow(a, b, &r))
		return b > 0 ? INT64_MAX : INT64_MIN;
	return r;
}

static __int128 add_sat128(__int128 a, __int128 b)
{
	__int128 r;
	if (__builtin_add_overflow(a, b, &r))
		return b > 0 ? INT128_MAX_ : INT128_MIN_;
	return r;
}

static __int128 mul_sat128(__int128 a, __int128 b)
{
	__int128 r;
	if (__builtin_mul_overflow(a, b, &r))
		return (a < 0) != (b < 0) ? INT128_MIN_ : INT128_MAX_;
	return r;
}

static __int128 pow10_128(int k)
{
	__int128 r = 1;
	while (k-- > 0)
		r = mul_sat128(r, 10);
	return r;
}

/* Add (m, scale) into a numeric sum, bringing both to the larger scale. */
static void nsum_add(st_nsum *st, __int128 m, int scale)
{
	if (st->n == 0 && st->m == 0) {
		st->m = m;
		st->scale = (int16_t)scale;
		return;
	}
	if (scale > st->scale) {
		st->m = mul_sat128(st->m, pow10_128(scale - st->scale));
		st->scale = (int16_t)scale;
	} else if (scale < st->scale) {
		m = mul_sat128(m, pow10_128(st->scale - scale));
	}
	st->m = add_sat128(st->m, m);
}

static void text_set(st_tmm *st, const char *p, uint32_t len)
{
	if (len > st->cap || !st->p) {
		uint32_t cap = len < 16 ? 16 : len;
		st->p = tally_xrealloc(st->p, cap);
		st->cap = cap;
	}
	if (len)
		memcpy(st->p, p, len);
	st->len = len;
	st->has = 1;
}

static int text_cmp(const char *a, uint32_t al, const char *b, uint32_t bl)
{
	uint32_t n = al < bl ? al : bl;
	int c = n ? memcmp(a, b, n) : 0;
	if (c)
		return c;
	return al < bl ? -1 : al > bl ? 1 : 0;
}

static int64_t val_i64(const tally_value *v)
{
	if (tally_type_is_float((tally_type)v->type))
		return (int64_t)v->u.f;
	return v->u.i; /* ints and timestamps share the representation */
}

static double val_f64(const tally_value *v)
{
	if (tally_type_is_float((tally_type)v->type))
		return v->u.f;
	if (v->type == TALLY_T_NUMERIC)
		return tally_numeric_to_double(v->u.n);
	return (double)v->u.i;
}

void tally_agg_update_i64(const tally_agg_spec *s, void *slot, int64_t v)
{
	switch (agg_class_of(s)) {
	case C_COUNT: {
		st_count st;
		LOAD(st, slot);
		st.n = add_sat64(st.n, 1);
		STORE(slot, st);
		return;
	}
	case C_ISUM: {
		st_isum st;
		LOAD(st, slot);
		st.s += v;
		st.n = add_sat64(st.n, 1);
		STORE(slot, st);
		return;
	}
	case C_FSUM: {
		st_fsum st;
		LOAD(st, slot);
		fsum_add(&st, (double)v);
		st.n = add_sat64(st.n, 1);
		STORE(slot, st);
		return;
	}
	case C_NSUM: {
		st_nsum st;
		LOAD(st, slot);
		nsum_add(&st, v, 0);
		st.n = add_sat64(st.n, 1);
		STORE(slot, st);
		return;
	}
	case C_IMM: {
		st_imm st;
		LOAD(st, slot);
		if (!st.has || want(s, v < st.v ? -1 : v > st.v ? 1 : 0)) {
			st.v = v;
			st.has = 1;
			STORE(slot, st);
		}
		return;
	}
	case C_FMM:
		tally_agg_update_f64(s, slot, (double)v);
		return;
	case C_NMM: {
		st_nmm st;
		LOAD(st, slot);
		if (!st.has || want(s, ncmp(v, 0, st.m, st.scale))) {
			st.m = v;
			st.scale = 0;
			st.has = 1;
			STORE(slot, st);
		}
		return;
	}
	default:
		return;
	}
}

void tally_agg_update_f64(const tally_agg_spec *s, void *slot, double v)
{
	switch (agg_class_of(s)) {
	case C_FSUM: {
		st_fsum st;
		LOAD(st, slot);
		fsum_add(&st, v);
		st.n = add_sat64(st.n, 1);
		STORE(slot, st);
		return;
	}
	case C_FMM: {
		st_fmm st;
		LOAD(st, slot);
		if (!st.has || want(s, fcmp(v, st.v))) {
			st.v = v;
			st.has = 1;
			STORE(slot, st);
		}
		return;
	}
	case C_COUNT:
	case C_ISUM:
	case C_IMM:
		tally_agg_update_i64(s, slot, (int64_t)v);
		return;
	default:
		return;
	}
}

void tally_agg_update(const tally_agg_spec *s, void *slot, const tally_value *arg)
{
	if (s->kind == TALLY_AGG_COUNT_STAR) {
		st_count st;
		LOAD(st, slot);
		st.n = add_sat64(st.n, 1);
		STORE(slot, st);
		return;
	}
	if (!arg || arg->isnull)
		return;
	switch (agg_class_of(s)) {
	case C_COUNT:
		tally_agg_update_i64(s, slot, 0); /* counts the row; the value does not matter */
		return;
	case C_ISUM:
	case C_IMM:
		tally_agg_update_i64(s, slot, val_i64(arg));
		return;
	case C_FSUM:
	case C_FMM:
		tally_agg_update_f64(s, slot, val_f64(arg));
		return;
	case C_NSUM: {
		st_nsum st;
		LOAD(st, slot);
		if (arg->type == TALLY_T_NUMERIC)
			nsum_add(&st, arg->u.n.m, arg->u.n.scale);
		else
			nsum_add(&st, val_i64(arg), 0);
		st.n = add_sat64(st.n, 1);
		STORE(slot, st);
		return;
	}
	case C_NMM: {
		if (arg->type != TALLY_T_NUMERIC) {
			tally_agg_update_i64(s, slot, val_i64(arg));
			return;
		}
		st_nmm st;
		LOAD(st, slot);
		if (!st.has || want(s, ncmp(arg->u.n.m, arg->u.n.scale, st.m, st.scale))) {
			st.m = arg->u.n.m;
			st.scale = arg->u.n.scale;
			st.has = 1;
			STORE(slot, st);
		}
		return;
	}
	case C_TMM: {
		if (arg->type != TALLY_T_TEXT && arg->type != TALLY_T_UNKNOWN)
			return;
		st_tmm st;
		LOAD(st, slot);
		if (!st.has || want(s, text_cmp(arg->u.s.p, arg->u.s.len, st.p, st.len))) {
			text_set(&st, arg->u.s.p, arg->u.s.len);
			STORE(slot, st);
		}
		return;
	}
	default:
		return;
	}
}

void tally_agg_merge(const tally_agg_spec *s, void *dst, const void *src)
{
	switch (agg_class_of(s)) {
	case C_COUNT: {
		st_count a, b;
		LOAD(a, dst);
		LOAD(b, src);
		a.n = add_sat64(a.n, b.n);
		STORE(dst, a);
		return;
	}
	case C_ISUM: {
		st_isum a, b;
		LOAD(a, dst);
		LOAD(b, src);
		a.s = add_sat128(a.s, b.s);
		a.n = add_sat64(a.n, b.n);
		STORE(dst, a);
		return;
	}
	case C_FSUM: {
		st_fsum a, b;
		LOAD(a, dst);
		LOAD(b, src);
		fsum_add(&a, b.s);
		a.c += b.c;
		a.n = add_sat64(a.n, b.n);
		STORE(dst, a);
		return;
	}
	case C_NSUM: {
		st_nsum a, b;
		LOAD(a, dst);
		LOAD(b, src);
		if (b.n > 0) {
			nsum_add(&a, b.m, b.scale);
			a.n = add_sat64(a.n, b.n);
		}
		STORE(dst, a);
		return;
	}
	case C_IMM: {
		st_imm b;
		LOAD(b, src);
		if (b.has)
			tally_agg_update_i64(s, dst, b.v);
		return;
	}
	case C_FMM: {
		st_fmm b;
		LOAD(b, src);
		if (b.has)
			tally_agg_update_f64(s, dst, b.v);
		return;
	}
	case C_NMM: {
		st_nmm a, b;
		LOAD(a, dst);
		LOAD(b, src);
		if (b.has && (!a.has || want(s, ncmp(b.m, b.scale, a.m, a.scale))))
			STORE(dst, b);
		return;
	}
	case C_TMM: {
		st_tmm a, b;
		LOAD(a, dst);
		LOAD(b, src);
		if (b.has && (!a.has || want(s, text_cmp(b.p, b.len, a.p, a.len)))) {
			text_set(&a, b.p, b.len);
			STORE(dst, a);
		}
		return;
	}
	default:
		return;
	}
}

/* ---- serialization ------------------------------------------------------------------------ */

static void put_i128(tally_buf *b, __int128 v)
{
	unsigned __int128 u = (unsigned __int128)v;
	tally_buf_put_u64(b, (uint64_t)(u >> 64));
	tally_buf_put_u64(b, (uint64_t)u);
}

static int get_i128(tally_rd *r, __int128 *v)
{
	uint64_t hi, lo;
	if (tally_rd_u64(r, &hi) || tally_rd_u64(r, &lo))
		return -1;
	*v = (__int128)(((unsigned __int128)hi << 64) | lo);
	return 0;
}

static void put_f64(tally_buf *b, double d)
{
	uint64_t u;
	memcpy(&u, &d, 8);
	tally_buf_put_u64(b, u);
}

static int get_f64(tally_rd *r, double *d)
{
	uint64_t u;
	if (tally_rd_u64(r, &u))
		return -1;
	memcpy(d, &u, 8);
	return 0;
}

static int get_count(tally_rd *r, int64_t *n)
{
	uint64_t u;
	if (tally_rd_u64(r, &u) || u > (uint64_t)INT64_MAX)
		return -1;
	*n = (int64_t)u;
	return 0;
}

static int get_has(tally_rd *r, uint8_t *has)
{
	if (tally_rd_u8(r, has) || *has > 1)
		return -1;
	return 0;
}

void tally_agg_serialize(const tally_agg_spec *s, const void *slot, tally_buf *b)
{
	switch (agg_class_of(s)) {
	case C_COUNT: {
		st_count st;
		LOAD(st, slot);
		tally_buf_put_u64(b, (uint64_t)st.n);
		return;
	}
	case C_ISUM: {
		st_isum st;
		LOAD(st, slot);
		put_i128(b, st.s);
		tally_buf_put_u64(b, (uint64_t)st.n);
		return;
	}
	case C_FSUM: {
		st_fsum st;
		LOAD(st, slot);
		put_f64(b, st.s);
		put_f64(b, st.c);
		tally_buf_put_u64(b, (uint64_t)st.n);
		return;
	}
	case C_NSUM: {
		st_nsum st;
		LOAD(st, slot);
		put_i128(b, st.m);
		tally_buf_put_u16(b, (uint16_t)st.scale);
		tally_buf_put_u64(b, (uint64_t)st.n);
		return;
	}
	case C_IMM: {
		st_imm st;
		LOAD(st, slot);
		tally_buf_putc(b, st.has);
		tally_buf_put_u64(b, st.has ? (uint64_t)st.v : 0);
		return;
	}
	case C_FMM: {
		st_fmm st;
		LOAD(st, slot);
		tally_buf_putc(b, st.has);
		put_f64(b, st.has ? st.v : 0.0);
		return;
	}
	case C_NMM: {
		st_nmm st;
		LOAD(st, slot);
		tally_buf_putc(b, st.has);
		put_i128(b, st.has ? st.m : 0);
		tally_buf_put_u16(b, st.has ? (uint16_t)st.scale : 0);
		return;
	}
	case C_TMM: {
		st_tmm st;
		LOAD(st, slot);
		tally_buf_putc(b, st.has);
		if (st.has)
			tally_buf_put_str(b, st.p, st.len);
		return;
	}
	default:
		return;
	}
}

int tally_agg_deserialize(const tally_agg_spec *s, tally_rd *r, void *slot)
{
	memset(slot, 0, TALLY_AGG_SLOT);
	switch (agg_class_of(s)) {
	case C_COUNT: {
		st_count st;
		if (get_count(r, &st.n))
			goto bad;
		STORE(slot, st);
		return 0;
	}
	case C_ISUM: {
		st_isum st;
		memset(&st, 0, sizeof st);
		if (get_i128(r, &st.s) || get_count(r, &st.n))
			goto bad;
		STORE(slot, st);
		return 0;
	}
	case C_FSUM: {
		st_fsum st;
		if (get_f64(r, &st.s) || get_f64(r, &st.c) || get_count(r, &st.n))
			goto bad;
		STORE(slot, st);
		return 0;
	}
	case C_NSUM: {
		st_nsum st;
		uint16_t sc;
		memset(&st, 0, sizeof st);
		if (get_i128(r, &st.m) || tally_rd_u16(r, &sc) || sc > 38 || get_count(r, &st.n))
			goto bad;
		st.scale = (int16_t)sc;
		STORE(slot, st);
		return 0;
	}
	case C_IMM: {
		st_imm st;
		uint64_t u;
		memset(&st, 0, sizeof st);
		if (get_has(r, &st.has) || tally_rd_u64(r, &u))
			goto bad;
		st.v = (int64_t)u;
		STORE(slot, st);
		return 0;
	}
	case C_FMM: {
		st_fmm st;
		memset(&st, 0, sizeof st);
		if (get_has(r, &st.has) || get_f64(r, &st.v))
			goto bad;
		STORE(slot, st);
		return 0;
	}
	case C_NMM: {
		st_nmm st;
		uint16_t sc;
		memset(&st, 0, sizeof st);
		if (get_has(r, &st.has) || get_i128(r, &st.m) || tally_rd_u16(r, &sc) || sc > 38)
			goto bad;
		st.scale = (int16_t)sc;
		STORE(slot, st);
		return 0;
	}
	case C_TMM: {
		st_tmm st;
		uint8_t has;
		const uint8_t *p;
		uint32_t n;
		memset(&st, 0, sizeof st);
		if (get_has(r, &has))
			goto bad;
		if (has) {
			if (tally_rd_str(r, &p, &n, TALLY_TEXT_MAX))
				goto bad;
			text_set(&st, (const char *)p, n);
		}
		STORE(slot, st);
		return 0;
	}
	default:
		goto bad;
	}
bad:
	memset(slot, 0, TALLY_AGG_SLOT);
	r->bad = true;
	return -1;
}

int tally_agg_merge_encoded(const tally_agg_spec *s, void *dst, tally_rd *r)
{
	uint8_t tmp[TALLY_AGG_SLOT] __attribute__((aligned(16)));
	if (tally_agg_deserialize(s, r, tmp))
		return -1;
	tally_agg_merge(s, dst, tmp);
	tally_agg_release(s, tmp);
	return 0;
}

/* ---- finalize ----------------------------------------------------------------------------- */

int tally_agg_finalize(const tally_agg_spec *s, const void *slot, tally_value *out, tally_err *err)
{
	tally_type rt = s->result_type;
	tally_value v;

	if (rt == TALLY_T_UNKNOWN) {
		tally_agg_spec tmp = *s;
		if (tally_agg_resolve(&tmp, err))
			return -1;
		rt = tmp.result_type;
	}
	v = tally_null(rt);
	switch (agg_class_of(s)) {
	case C_COUNT: {
		st_count st;
		LOAD(st, slot);
		v = tally_int(TALLY_T_INT8, st.n);
		break;
	}
	case C_ISUM: {
		st_isum st;
		LOAD(st, slot);
		if (st.n == 0)
			break;
		if (s->kind == TALLY_AGG_AVG) {
			v.isnull = 0;
			v.u.n = tally_numeric_avg(st.s, st.n);
		} else if (rt == TALLY_T_INT8) {
			if (st.s > INT64_MAX || st.s < INT64_MIN)
				return tally_err_set(err, TALLY_SQLSTATE_OUT_OF_RANGE,
						     "bigint out of range");
			v = tally_int(TALLY_T_INT8, (int64_t)st.s);
		} else {
			v.isnull = 0;
			v.u.n.m = st.s;
			v.u.n.scale = 0;
		}
		break;
	}
	case C_FSUM: {
		st_fsum st;
		LOAD(st, slot);
		if (st.n == 0)
			break;
		double d = fsum_value(&st);
		if (s->kind == TALLY_AGG_AVG)
			d /= (double)st.n;
		else if (rt == TALLY_T_FLOAT4)
			d = (double)(float)d;
		v = tally_float(rt, d);
		break;
	}
	case C_NSUM: {
		st_nsum st;
		LOAD(st, slot);
		if (st.n == 0)
			break;
		v.isnull = 0;
		v.u.n.m = st.m;
		v.u.n.scale = st.scale;
		if (s->kind == TALLY_AGG_AVG)
			v.u.n = tally_numeric_div_count(v.u.n, st.n);
		break;
	}
	case C_IMM: {
		st_imm st;
		LOAD(st, slot);
		if (st.has)
			v = tally_int(rt, st.v); /* u.i and u.ts share storage */
		break;
	}
	case C_FMM: {
		st_fmm st;
		LOAD(st, slot);
		if (st.has)
			v = tally_float(rt, st.v);
		break;
	}
	case C_NMM: {
		st_nmm st;
		LOAD(st, slot);
		if (st.has) {
			v.isnull = 0;
			v.u.n.m = st.m;
			v.u.n.scale = st.scale;
		}
		break;
	}
	case C_TMM: {
		st_tmm st;
		LOAD(st, slot);
		if (st.has) {
			v = tally_text(st.p ? st.p : "", st.len);
			v.type = (uint8_t)rt;
		}
		break;
	}
	default:
		return tally_err_set(err, TALLY_SQLSTATE_INTERNAL, "aggregate %s(%s) has no state",
				     tally_agg_name(s->kind), tally_type_name(s->arg_type));
	}
	*out = v;
	return 0;
}

void tally_agg_release(const tally_agg_spec *s, void *slot)
{
	if (agg_class_of(s) == C_TMM) {
		st_tmm st;
		LOAD(st, slot);
		free(st.p);
	}
	memset(slot, 0, TALLY_AGG_SLOT);
}
