/* test_node.c - unit tests of the node runtime's pure parts: settings and the group table. */
#include "tally/node.h"

#include <criterion/criterion.h>
#include <stdlib.h>

Test(settings, defaults_and_lookup, .timeout = 10)
{
	tally_settings s;
	tally_settings_defaults(&s);
	int id = tally_settings_lookup("PIPELINE_CLUSTER.primary_only");
	cr_assert_eq(id, TALLY_SET_PRIMARY_ONLY);
	cr_assert_str_eq(s.v[id], "off");
	cr_assert_str_eq(s.v[TALLY_SET_INSERT_LEVEL], "sync_receive");
	cr_assert_eq(tally_settings_ms(&s, TALLY_SET_FAILURE_TIMEOUT), 2000);
	cr_assert_eq(tally_settings_ms(&s, TALLY_SET_HEARTBEAT_INTERVAL), 250);
	cr_assert_eq(tally_settings_bytes(&s, TALLY_SET_STATEMENT_MEMORY), 1LL << 30);
	cr_assert_eq(tally_settings_lookup("no_such_thing"), -1);
}

Test(settings, set_normalises_and_rejects, .timeout = 10)
{
	tally_settings s, d;
	tally_settings_defaults(&s);
	tally_settings_defaults(&d);
	tally_err err;
	cr_assert_eq(tally_settings_set(&s, &d, TALLY_SET_PRIMARY_ONLY, "TRUE", &err), 0);
	cr_assert_str_eq(s.v[TALLY_SET_PRIMARY_ONLY], "on");
	cr_assert(tally_settings_bool(&s, TALLY_SET_PRIMARY_ONLY));
	cr_assert_neq(tally_settings_set(&s, &d, TALLY_SET_PRIMARY_ONLY, "maybe", &err), 0);
	cr_assert_str_eq(err.sqlstate, TALLY_SQLSTATE_INVALID_PARAMETER);
	cr_assert_str_eq(
	    err.message,
	    "invalid value for parameter \"pipeline_cluster.primary_only\": \"maybe\"");
	cr_assert_eq(tally_settings_set(&s, &d, TALLY_SET_INSERT_LEVEL, "ASYNC", &err), 0);
	cr_assert_str_eq(s.v[TALLY_SET_INSERT_LEVEL], "async");
	cr_assert_neq(tally_settings_set(&s, &d, TALLY_SET_INSERT_LEVEL, "sometimes", &err), 0);
	cr_assert_eq(tally_settings_set(&s, &d, TALLY_SET_FAILURE_TIMEOUT, "5s", &err), 0);
	cr_assert_eq(tally_settings_ms(&s, TALLY_SET_FAILURE_TIMEOUT), 5000);
	cr_assert_neq(tally_settings_set(&s, &d, TALLY_SET_FAILURE_TIMEOUT, "5 parsecs", &err), 0);
	cr_assert_neq(tally_settings_set(&s, &d, TALLY_SET_NUM_REPLICAS, "99", &err), 0);
	cr_assert_neq(tally_settings_set(&s, &d, TALLY_SET_SERVER_VERSION, "16", &err), 0);
	cr_assert_str_eq(err.sqlstate, "55P02");
	/* reset goes back to the node default, not the built-in one */
	cr_assert_eq(tally_settings_set(&d, NULL, TALLY_SET_PRIMARY_ONLY, "on", &err), 0);
	cr_assert_eq(tally_settings_set(&s, &d, TALLY_SET_PRIMARY_ONLY, NULL, &err), 0);
	cr_assert_str_eq(s.v[TALLY_SET_PRIMARY_ONLY], "on");
}

/* Merging groups through the wire encoding equals folding every value into one table. */
Test(group, merge_encoded_equals_direct, .timeout = 30)
{
	tally_agg_spec aggs[3] = {
	    {.kind = TALLY_AGG_COUNT_STAR, .arg_type = TALLY_T_UNKNOWN},
	    {.kind = TALLY_AGG_SUM, .arg_type = TALLY_T_INT8},
	    {.kind = TALLY_AGG_MAX, .arg_type = TALLY_T_INT8},
	};
	for (int i = 0; i < 3; i++)
		cr_assert_eq(tally_agg_resolve(&aggs[i], NULL), 0);
	tally_arena a1 = {0}, a2 = {0}, a3 = {0};
	tally_gtab direct, part1, merged;
	tally_gtab_init(&direct, aggs, 3, &a1);
	tally_gtab_init(&part1, aggs, 3, &a2);
	tally_gtab_init(&merged, aggs, 3, &a3);
	srand(7);
	tally_buf key = {0};
	for (int i = 0; i < 20000; i++) {
		int64_t k = rand() % 500, v = (int64_t)rand() - RAND_MAX / 2;
		tally_value kv = tally_int(TALLY_T_INT8, k), vv = tally_int(TALLY_T_INT8, v);
		tally_buf_reset(&key);
		tally_key_encode(&kv, &key);
		uint64_t h = tally_group_hash(key.data, key.len);
		tally_gtab *targets[2] = {&direct, &part1};
		for (int t = 0; t < 2; t++) {
			tally_group *g =
			    tally_gtab_lookup(targets[t], key.data, (uint32_t)key.len, h, true);
			cr_assert_not_null(g);
			tally_agg_update(&aggs[0], g->states, NULL);
			tally_agg_update(&aggs[1], g->states + TALLY_AGG_SLOT, &vv);
			tally_agg_update(&aggs[2], g->states + 2 * TALLY_AGG_SLOT, &vv);
		}
		if (i % 5000 == 4999) { /* ship part1 and start over: several partials per group */
			tally_buf wire = {0};
			for (size_t s = 0; s < part1.cap; s++)
				if (part1.slots[s].g)
					tally_group_put(&wire, part1.slots[s].g->key,
							part1.slots[s].g->keylen, aggs, 3,
							part1.slots[s].g->states);
			tally_rd r;
			tally_rd_init(&r, wire.data, wire.len);
			for (size_t s = 0; s < part1.count; s++)
				cr_assert_eq(tally_group_merge_encoded(&merged, &r), 0);
			cr_assert_eq(tally_rd_left(&r), 0);
			tally_buf_free(&wire);
			tally_gtab_fini(&part1);
			tally_arena_reset(&a2);
			tally_gtab_init(&part1, aggs, 3, &a2);
		}
	}
	cr_assert_eq(merged.count, direct.count);
	for (size_t s = 0; s < direct.cap; s++) {
		tally_group *g = direct.slots[s].g;
		if (!g)
			continue;
		tally_group *m = tally_gtab_lookup(&merged, g->key, g->keylen, g->hash, false);
		cr_assert_not_null(m);
		for (int k = 0; k < 3; k++) {
			tally_value x, y;
			cr_assert_eq(
			    tally_agg_finalize(&aggs[k], g->states + k * TALLY_AGG_SLOT, &x, NULL),
			    0);
			cr_assert_eq(
			    tally_agg_finalize(&aggs[k], m->states + k * TALLY_AGG_SLOT, &y, NULL),
			    0);
			cr_assert_eq(tally_value_cmp(&x, &y), 0, "aggregate %d differs", k);
		}
	}
	tally_rd bad;
	uint8_t junk[3] = {0, 0, 9};
	tally_rd_init(&bad, junk, sizeof junk);
	cr_assert_eq(tally_group_merge_encoded(&merged, &bad), -1);
	tally_buf_free(&key);
	tally_gtab_fini(&direct);
	tally_gtab_fini(&part1);
	tally_gtab_fini(&merged);
	tally_arena_free(&a1);
	tally_arena_free(&a2);
	tally_arena_free(&a3);
}
