/*
 * test_crc32c.c - CRC32C: the standard check value and RFC 3720 vectors, chaining over pieces
 * equals one call, and agreement with a bit-at-a-time reference (whichever fast path the CPU
 * takes) on random buffers of many lengths and alignments, and the table path and the SSE4.2
 * path agree with each other.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>

#include "tally/core.h"

/* A private copy of the implementation, so both of its paths can be called directly. */
uint32_t crc32c_copy_for_test(uint32_t crc, const void *p, size_t n);
#define tally_crc32c crc32c_copy_for_test
#include "../../../common/core/crc32c.c"
#undef tally_crc32c

/* The definition, one bit at a time. */
static uint32_t crc32c_ref(uint32_t crc, const uint8_t *p, size_t n)
{
	uint32_t c = ~crc;
	for (size_t i = 0; i < n; i++) {
		c ^= p[i];
		for (int k = 0; k < 8; k++)
			c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
	}
	return ~c;
}

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;
static uint64_t rng_next(void)
{
	uint64_t x = rng_state;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	rng_state = x;
	return x;
}

Test(wal, crc32c_check_value, .timeout = 60)
{
	cr_assert_eq(tally_crc32c(0, "123456789", 9), 0xE3069283u);
	cr_assert_eq(tally_crc32c(0, "", 0), 0u);
	cr_assert_eq(tally_crc32c(0x12345678u, "", 0), 0x12345678u);
}

Test(wal, crc32c_rfc3720_vectors, .timeout = 60)
{
	uint8_t b[32];
	memset(b, 0, sizeof b);
	cr_assert_eq(tally_crc32c(0, b, 32), 0x8A9136AAu);
	memset(b, 0xff, sizeof b);
	cr_assert_eq(tally_crc32c(0, b, 32), 0x62A8AB43u);
	for (int i = 0; i < 32; i++)
		b[i] = (uint8_t)i;
	cr_assert_eq(tally_crc32c(0, b, 32), 0x46DD794Eu);
	for (int i = 0; i < 32; i++)
		b[i] = (uint8_t)(31 - i);
	cr_assert_eq(tally_crc32c(0, b, 32), 0x113FDB5Cu);
}

Test(wal, crc32c_chaining_equals_one_call, .timeout = 60)
{
	uint8_t buf[300];
	for (size_t i = 0; i < sizeof buf; i++)
		buf[i] = (uint8_t)rng_next();
	uint32_t whole = tally_crc32c(0, buf, sizeof buf);
	cr_assert_eq(whole, crc32c_ref(0, buf, sizeof buf));
	for (size_t cut = 0; cut <= sizeof buf; cut++) {
		uint32_t c = tally_crc32c(0, buf, cut);
		c = tally_crc32c(c, buf + cut, sizeof buf - cut);
		cr_assert_eq(c, whole, "split at %zu", cut);
	}
	/* Three pieces of odd sizes. */
	uint32_t c = tally_crc32c(0, buf, 7);
	c = tally_crc32c(c, buf + 7, 131);
	c = tally_crc32c(c, buf + 138, sizeof buf - 138);
	cr_assert_eq(c, whole);
}

Test(wal, crc32c_matches_reference_on_random_buffers, .timeout = 60)
{
	size_t cap = 70000;
	uint8_t *buf = malloc(cap + 16);
	cr_assert_not_null(buf);
	for (size_t i = 0; i < cap + 16; i++)
		buf[i] = (uint8_t)rng_next();
	for (size_t len = 0; len <= 600; len++)
		for (size_t align = 0; align < 8; align++)
			cr_assert_eq(tally_crc32c(0, buf + align, len),
				     crc32c_ref(0, buf + align, len), "len %zu align %zu", len,
				     align);
	for (int round = 0; round < 50; round++) {
		size_t len = (size_t)(rng_next() % cap);
		size_t align = (size_t)(rng_next() % 16);
		uint32_t seed = (uint32_t)rng_next();
		cr_assert_eq(tally_crc32c(seed, buf + align, len),
			     crc32c_ref(seed, buf + align, len), "len %zu align %zu", len, align);
	}
	free(buf);
}

Test(wal, crc32c_table_and_sse42_paths_agree, .timeout = 60)
{
	crc32c_copy_for_test(0, "", 0); /* builds the tables, checks the CPU */
	size_t cap = 20000;
	uint8_t *buf = malloc(cap + 16);
	cr_assert_not_null(buf);
	for (size_t i = 0; i < cap + 16; i++)
		buf[i] = (uint8_t)rng_next();
	for (int round = 0; round < 3000; round++) {
		size_t len = round < 1000 ? (size_t)round : (size_t)(rng_next() % cap);
		size_t align = (size_t)(rng_next() % 16);
		uint32_t seed = (uint32_t)rng_next();
		uint32_t want = crc32c_ref(seed, buf + align, len);
		cr_assert_eq(~crc32c_sw(~seed, buf + align, len), want, "table: len %zu align %zu",
			     len, align);
#if defined(__x86_64__)
		if (crc32c_have_sse42)
			cr_assert_eq(~crc32c_hw(~seed, buf + align, len), want,
				     "sse4.2: len %zu align %zu", len, align);
#endif
		cr_assert_eq(tally_crc32c(seed, buf + align, len), want);
	}
#if defined(__x86_64__)
	printf("crc32c: sse4.2 %s\n", crc32c_have_sse42 ? "available and checked" : "absent");
#endif
	free(buf);
}
