/*
 * crc32c.c - CRC32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of disk
 * records (the write-ahead log). On x86-64 CPUs with SSE4.2 the crc32 instruction does the
 * work 8 bytes at a time; elsewhere a slicing-by-8 table does. Both give the same result:
 * tally_crc32c(0, "123456789", 9) == 0xE3069283, and feeding a buffer in pieces (passing the
 * previous result as crc) equals one call over all of it.
 *
 * The tables are computed once (pthread_once) and then only read; the CPU check is done
 * once the same way. That is the only global state here. tests/unit/wal/test_crc32c.c
 * includes this file to compare both paths directly.
 */
#include "tally/core.h"

#include <pthread.h>

#define CRC32C_POLY 0x82F63B78u

static uint32_t crc32c_table[8][256];
static pthread_once_t crc32c_once = PTHREAD_ONCE_INIT;
#if defined(__x86_64__)
static bool crc32c_have_sse42;
#endif

static void crc32c_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = (c & 1) ? (c >> 1) ^ CRC32C_POLY : c >> 1;
		crc32c_table[0][i] = c;
	}
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = crc32c_table[0][i];
		for (int t = 1; t < 8; t++) {
			c = crc32c_table[0][c & 0xff] ^ (c >> 8);
			crc32c_table[t][i] = c;
		}
	}
#if defined(__x86_64__)
	__builtin_cpu_init();
	crc32c_have_sse42 = __builtin_cpu_supports("sse4.2");
#endif
}

/* Slicing-by-8 over the raw (not inverted) register value. */
static uint32_t crc32c_sw(uint32_t c, const uint8_t *p, size_t n)
{
	while (n > 0 && ((uintptr_t)p & 7) != 0) {
		c = crc32c_table[0][(c ^ *p++) & 0xff] ^ (c >> 8);
		n--;
	}
	while (n >= 8) {
		/* Little-endian assembly of the word, independent of the host's byte order. */
		uint32_t lo = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
				   (uint32_t)p[3] << 24);
		c = crc32c_table[7][lo & 0xff] ^ crc32c_table[6][(lo >> 8) & 0xff] ^
		    crc32c_table[5][(lo >> 16) & 0xff] ^ crc32c_table[4][lo >> 24] ^
		    crc32c_table[3][p[4]] ^ crc32c_table[2][p[5]] ^ crc32c_table[1][p[6]] ^
		    crc32c_table[0][p[7]];
		p += 8;
		n -= 8;
	}
	while (n-- > 0)
		c = crc32c_table[0][(c ^ *p++) & 0xff] ^ (c >> 8);
	return c;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t c, const uint8_t *p, size_t n)
{
	while (n > 0 && ((uintptr_t)p & 7) != 0) {
		c = __builtin_ia32_crc32qi(c, *p++);
		n--;
	}
	uint64_t c64 = c;
	while (n >= 8) {
		uint64_t v;
		memcpy(&v, p, 8);
		c64 = __builtin_ia32_crc32di(c64, v);
		p += 8;
		n -= 8;
	}
	c = (uint32_t)c64;
	while (n-- > 0)
		c = __builtin_ia32_crc32qi(c, *p++);
	return c;
}
#endif

uint32_t tally_crc32c(uint32_t crc, const void *p, size_t n)
{
	pthread_once(&crc32c_once, crc32c_init);
	uint32_t c = ~crc;
	if (n == 0)
		return crc;
#if defined(__x86_64__)
	if (crc32c_have_sse42)
		return ~crc32c_hw(c, (const uint8_t *)p, n);
#endif
	return ~crc32c_sw(c, (const uint8_t *)p, n);
}
