/*
 * fuzz_targets.h - the fuzz targets' entry points as fuzz_smoke links them: each target file
 * is compiled with -DLLVMFuzzerTestOneInput=fuzz_<name>_one.
 */
#ifndef TALLY_FUZZ_TARGETS_H
#define TALLY_FUZZ_TARGETS_H

#include <stddef.h>
#include <stdint.h>

int fuzz_sql_one(const uint8_t *data, size_t size);
int fuzz_copy_one(const uint8_t *data, size_t size);
int fuzz_codec_one(const uint8_t *data, size_t size);
int fuzz_catalog_one(const uint8_t *data, size_t size);
int fuzz_pgwire_one(const uint8_t *data, size_t size);

#endif
