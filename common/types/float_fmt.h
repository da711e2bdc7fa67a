/*
 * float_fmt.h - private to common/types: shortest round-trip decimal conversion of binary64 and
 * binary32 values (the Ryu algorithm), laid out as PostgreSQL 12+ float8out/float4out do.
 */
#ifndef TALLY_TYPES_FLOAT_FMT_H
#define TALLY_TYPES_FLOAT_FMT_H

#include <stdbool.h>
#include <stdint.h>

/* A finite nonzero magnitude as digits * 10^exp10; digits has no trailing zeros and ndigits
 * decimal digits (1..17). */
typedef struct tally_float_dec {
	uint64_t digits;
	int32_t exp10;
	int32_t ndigits;
} tally_float_dec;

/* Shortest decimal that reads back as |d| (|f|), nearest to it among the shortest, never one
 * lying exactly halfway to a neighbour (PostgreSQL's Ryu). d (f) must be finite and nonzero. */
tally_float_dec tally_types_float_dec64(double d);
tally_float_dec tally_types_float_dec32(float f);

/* PostgreSQL's text for finite nonzero d (single: the float4 value (float)d, which must equal
 * d): fixed notation when the decimal exponent is in [-4, 15) ([-4, 6) for real), else
 * d.ddde+XX. Writes a NUL-terminated string of at most 25 bytes; returns its length. */
int tally_types_float_shortest(double d, bool single, char *out);

#endif
