/*
 * fuzz_catalog.c - fuzz target for the encoded cluster map, the blob every node receives
 * from the coordinator and the coordinator reads back from disk. A blob that decodes must
 * re-encode to exactly the same bytes (the encoding is canonical; anything else means the
 * decoder accepted something lossy), the re-encoding must decode again, a clone must encode
 * identically, and the catalog must build into a node map (every view's query re-analyzed
 * against its stream), as a node does when it installs a map.
 */
#include "fuzz.h"

#include "tally/catalog.h"
#include "tally/node.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	tally_catalog *c = NULL;
	tally_log_set_level(TALLY_LOG_ERROR); /* views that fail to analyze only warn */
	if (tally_catalog_decode(data, size, &c) != 0) {
		FUZZ_CHECK(c == NULL);
		return 0;
	}
	FUZZ_CHECK(c != NULL);
	tally_buf e1 = {0}, e2 = {0}, e3 = {0};
	tally_catalog_encode(c, &e1);
	/* A version 1 blob (views without a replication byte) re-encodes as version 2, one byte
	 * longer per view; the current version's encoding is canonical. */
	bool v1 = size >= 8 && data[4] == 0 && data[5] == 0 && data[6] == 0 && data[7] == 1;
	FUZZ_CHECK(v1 || (e1.len == size && memcmp(e1.data, data, size) == 0));
	FUZZ_CHECK(!v1 || e1.len == size + (size_t)c->nviews);
	tally_catalog *d = NULL;
	FUZZ_CHECK(tally_catalog_decode(e1.data, e1.len, &d) == 0);
	tally_catalog_encode(d, &e2);
	FUZZ_CHECK(e2.len == e1.len && memcmp(e2.data, e1.data, e1.len) == 0);
	tally_catalog *k = tally_catalog_clone(c);
	tally_catalog_encode(k, &e3);
	FUZZ_CHECK(e3.len == e1.len && memcmp(e3.data, e1.data, e1.len) == 0);

	/* Lookups of every name it holds find them. */
	for (int i = 0; i < c->nnodes; i++)
		FUZZ_CHECK(tally_catalog_node(c, c->nodes[i].id) == &c->nodes[i]);
	for (int i = 0; i < c->nstreams; i++)
		FUZZ_CHECK(tally_catalog_stream(c, c->streams[i].name) == &c->streams[i]);
	for (int i = 0; i < c->nviews; i++)
		FUZZ_CHECK(tally_catalog_view_by_id(c, c->views[i].id) != NULL);

	/* Install it as a node would; tally_map_build takes ownership of the catalog. */
	tally_map *m = tally_map_build(d);
	if (m) {
		for (int i = 0; i < c->nviews; i++)
			tally_map_view(m, c->views[i].name);
		tally_map_put(m);
	} else {
		tally_catalog_free(d);
	}

	tally_catalog_free(k);
	tally_catalog_free(c);
	tally_buf_free(&e1);
	tally_buf_free(&e2);
	tally_buf_free(&e3);
	return 0;
}
