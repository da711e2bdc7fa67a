/*
 * agg.h - aggregate partial states: one ops table per aggregate kind.
 *
 * Every aggregate of a view keeps, per group, one fixed-size slot (TALLY_AGG_SLOT bytes) that
 * holds its partial state. States merge associatively and commutatively, serialize to a
 * portable big-endian form for the wire and disk, and finalize to the SQL result with
 * PostgreSQL's result types and NULL rules:
 *
 *   count(*), count(x)  -> bigint (never NULL)
 *   sum(smallint|int)   -> bigint (kept exactly in 128 bits; "bigint out of range" at finalize)
 *   sum(bigint)         -> numeric (exact, 128-bit)
 *   sum(real)           -> real,  sum(double) -> double precision (compensated summation)
 *   avg(smallint|int|bigint) -> numeric (exact quotient, PostgreSQL's division scale)
 *   avg(real|double)    -> double precision
 *   min/max(x)          -> type of x (all types but boolean; text compares bytewise)
 *   sum/avg/min/max over no non-NULL input -> NULL
 *
 * Text min/max own a heap copy of their value: call tally_agg_release on a slot before
 * dropping it.
 */
#ifndef TALLY_AGG_H
#define TALLY_AGG_H

#include "tally/types.h"

typedef enum tally_agg_kind {
	TALLY_AGG_COUNT_STAR = 0,
	TALLY_AGG_COUNT,
	TALLY_AGG_SUM,
	TALLY_AGG_AVG,
	TALLY_AGG_MIN,
	TALLY_AGG_MAX,
} tally_agg_kind;

typedef struct tally_agg_spec {
	tally_agg_kind kind;
	tally_type arg_type;	/* TALLY_T_UNKNOWN for count(*) */
	tally_type result_type; /* set by tally_agg_resolve */
} tally_agg_spec;

#define TALLY_AGG_SLOT 32

/* Name as SQL spells it ("count", "sum", ...), NULL if not an aggregate. */
const char *tally_agg_name(tally_agg_kind k);
/* Look up an aggregate by function name (case-insensitive); -1 if not an aggregate. */
int tally_agg_lookup(const char *name, size_t len, tally_agg_kind *out);
/* Check that kind applies to arg_type and fill s->result_type. Error 42883
 * `function sum(text) does not exist` otherwise. */
int tally_agg_resolve(tally_agg_spec *s, tally_err *err);

void tally_agg_init(const tally_agg_spec *s, void *slot);
/* Fold one input value in. For COUNT_STAR arg is ignored (may be NULL). NULL args are
 * skipped. Never fails. */
void tally_agg_update(const tally_agg_spec *s, void *slot, const tally_value *arg);
/* Fast paths for the ingest loop: fold a non-NULL int64 / double. */
void tally_agg_update_i64(const tally_agg_spec *s, void *slot, int64_t v);
void tally_agg_update_f64(const tally_agg_spec *s, void *slot, double v);
/* dst := merge(dst, src). src is unchanged. */
void tally_agg_merge(const tally_agg_spec *s, void *dst, const void *src);
/* Append the portable encoding of the slot. */
void tally_agg_serialize(const tally_agg_spec *s, const void *slot, tally_buf *b);
/* Read an encoding written by tally_agg_serialize into a fresh slot (heap copy of text).
 * Returns -1 on truncated or invalid input, leaving *slot initialised and releasable. */
int tally_agg_deserialize(const tally_agg_spec *s, tally_rd *r, void *slot);
/* Merge an encoded state directly into dst (no temporary slot for fixed-size kinds). */
int tally_agg_merge_encoded(const tally_agg_spec *s, void *dst, tally_rd *r);
/* The SQL result. Text results point into the slot (valid until the slot changes).
 * Fails with 22003 `bigint out of range` when sum(int) exceeds 64 bits. */
int tally_agg_finalize(const tally_agg_spec *s, const void *slot, tally_value *out, tally_err *err);
/* Free heap memory held by the slot (text min/max); the slot is then initialised. */
void tally_agg_release(const tally_agg_spec *s, void *slot);

#endif
