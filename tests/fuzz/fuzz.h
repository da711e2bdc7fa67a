/*
 * fuzz.h - what every fuzz target shares: the libFuzzer entry point (renamed per target by
 * -DLLVMFuzzerTestOneInput=fuzz_<name>_one when the targets are linked together into
 * fuzz_smoke) and the fixed relations and rows the SQL, COPY and codec targets run against.
 */
#ifndef TALLY_FUZZ_H
#define TALLY_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "tally/sql.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* An invariant of the code under test does not hold: report and abort (a finding). */
#define FUZZ_CHECK(cond)                                                                           \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: fuzz invariant failed: %s\n", __FILE__, __LINE__,  \
				#cond);                                                            \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

/* The stream "s" as ingest sees it: user columns of every type, then arrival_timestamp. */
static const tally_column fuzz_stream_cols[] = {
    {"k", TALLY_T_INT4},     {"v", TALLY_T_FLOAT8}, {"name", TALLY_T_TEXT},
    {"flag", TALLY_T_BOOL},  {"big", TALLY_T_INT8}, {"ts", TALLY_T_TIMESTAMPTZ},
    {"small", TALLY_T_INT2}, {"r", TALLY_T_FLOAT4}, {"arrival_timestamp", TALLY_T_TIMESTAMPTZ},
};
#define FUZZ_STREAM_NCOLS ((int)(sizeof fuzz_stream_cols / sizeof fuzz_stream_cols[0]))

/* Cheap deterministic generator (splitmix64) for input-derived choices. */
static inline uint64_t fuzz_rand(uint64_t *s)
{
	uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

#endif
