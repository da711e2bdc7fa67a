/*
 * fuzz_seedgen.c - writes the binary seed corpora at build time with the real encoders, so
 * that no binary file is committed and the seeds follow the formats as they change:
 *   codec/    one message of every type (headers by tally_msg_begin/end, bodies by the
 *             tally_msg_put_* functions, groups by tally_group_put, keys by tally_key_encode)
 *   catalog/  encoded catalogs: empty, nodes only, streams and views with placements
 *   pgwire/   client sessions as libpq sends them: startup, simple queries, the extended
 *             protocol, COPY, SSLRequest, CancelRequest, Terminate
 *
 * usage: fuzz_seedgen <output root>
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "tally/catalog.h"
#include "tally/codec.h"
#include "tally/group.h"
#include "tally/node.h"

static const char *root;

static void put_file(const char *dir, const char *name, const void *p, size_t n)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/%s", root, dir);
	if (mkdir(path, 0777) != 0 && errno != EEXIST) {
		perror(path);
		exit(1);
	}
	snprintf(path, sizeof path, "%s/%s/%s", root, dir, name);
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0) {
		perror(path);
		exit(1);
	}
}

/* ---- codec ---------------------------------------------------------------------------------- */

/* Groups keyed (int4, text) with the aggregates of fuzz_codec's list picked by flags 1:
 * count(*), sum(int4), min(text). */
static void put_groups(tally_buf *b, int ngroups)
{
	tally_agg_spec aggs[3] = {{TALLY_AGG_COUNT_STAR, TALLY_T_UNKNOWN, 0},
				  {TALLY_AGG_SUM, TALLY_T_INT4, 0},
				  {TALLY_AGG_MIN, TALLY_T_TEXT, 0}};
	tally_err err;
	for (int k = 0; k < 3; k++)
		tally_agg_resolve(&aggs[k], &err);
	_Alignas(16) uint8_t states[3 * TALLY_AGG_SLOT];
	tally_buf key = {0};
	for (int g = 0; g < ngroups; g++) {
		for (int k = 0; k < 3; k++)
			tally_agg_init(&aggs[k], states + k * TALLY_AGG_SLOT);
		for (int i = 0; i <= g; i++) {
			tally_value v = tally_int(TALLY_T_INT4, 1000 * i - 7);
			tally_value t = tally_text(i & 1 ? "zeta" : "alpha", i & 1 ? 4 : 5);
			tally_agg_update(&aggs[0], states, NULL);
			tally_agg_update(&aggs[1], states + TALLY_AGG_SLOT, &v);
			tally_agg_update(&aggs[2], states + 2 * TALLY_AGG_SLOT, &t);
		}
		tally_buf_reset(&key);
		tally_value k1 = tally_int(TALLY_T_INT4, g);
		tally_value k2 = g == 1 ? tally_null(TALLY_T_TEXT) : tally_text("grp", 3);
		tally_key_encode(&k1, &key);
		tally_key_encode(&k2, &key);
		tally_group_put(b, key.data, (uint32_t)key.len, aggs, 3, states);
		for (int k = 0; k < 3; k++)
			tally_agg_release(&aggs[k], states + k * TALLY_AGG_SLOT);
	}
	tally_buf_free(&key);
}

static tally_catalog *sample_catalog(int nviews)
{
	tally_catalog *c = tally_catalog_alloc();
	tally_err err;
	c->epoch = 42;
	const char *names[] = {"w1", "w2", "w3"};
	for (int i = 0; i < 3; i++) {
		tally_node_info n;
		memset(&n, 0, sizeof n);
		snprintf(n.name, sizeof n.name, "%s", names[i]);
		snprintf(n.data_addr, sizeof n.data_addr, "tcp://127.0.0.1:%d", 40000 + i);
		snprintf(n.sql_addr, sizeof n.sql_addr, "127.0.0.1:%d", 6433 + i);
		n.state = i == 2 ? TALLY_NODE_DOWN : TALLY_NODE_UP;
		n.incarnation = 7 + (uint64_t)i;
		n.last_heartbeat_us = 1700000000000000ll + i;
		tally_catalog_upsert_node(c, &n);
	}
	if (nviews < 0)
		return c;
	static const tally_column cols[] = {{"k", TALLY_T_INT4},
					    {"v", TALLY_T_FLOAT8},
					    {"name", TALLY_T_TEXT},
					    {"ts", TALLY_T_TIMESTAMPTZ},
					    {"big", TALLY_T_INT8}};
	if (tally_catalog_add_stream(c, "s", 5, cols, &err) != 0 ||
	    tally_catalog_add_stream(c, "t", 1, cols, &err) != 0) {
		fprintf(stderr, "seedgen: %s\n", err.message);
		exit(1);
	}
	static const char *queries[] = {
	    "SELECT k, count(*), sum(v), avg(big), min(name), max(ts) FROM s GROUP BY k",
	    "SELECT date_trunc('minute', ts) AS m, name, count(*) FROM s WHERE k > 0 GROUP BY 1, 2",
	    "SELECT count(*) FROM t",
	};
	for (int i = 0; i < nviews && i < 3; i++) {
		tally_view_info v;
		memset(&v, 0, sizeof v);
		snprintf(v.name, sizeof v.name, "v%d", i);
		snprintf(v.stream, sizeof v.stream, "%s", i == 2 ? "t" : "s");
		v.query_text = (char *)queries[i];
		v.num_shards = 1 + 2 * i;
		v.num_replicas = i == 1 ? 1 : 0;
		v.sharding_policy =
		    i == 1 ? TALLY_POLICY_WRITE_OPTIMIZED : TALLY_POLICY_READ_OPTIMIZED;
		uint32_t prim[8], rep[8];
		for (int s = 0; s < v.num_shards; s++) {
			prim[s] = (uint32_t)(s % 3) + 1;
			rep[s] = (uint32_t)((s + 1) % 3) + 1;
		}
		v.primary = prim;
		v.replicas = rep;
		if (tally_catalog_add_view(c, &v, &err) != 0) {
			fprintf(stderr, "seedgen: %s\n", err.message);
			exit(1);
		}
	}
	return c;
}

static void codec_seeds(void)
{
	tally_buf b = {0}, body = {0};
	/* ERROR */
	tally_msg_begin(&b, TALLY_MSG_ERROR, 1, 5);
	tally_msg_put_error(&b, "42P01", "relation \"v\" does not exist");
	tally_msg_end(&b);
	put_file("codec", "error.bin", b.data, b.len);
	/* OK, GET_MAP, APPLY_OK: empty bodies */
	tally_msg_begin(&b, TALLY_MSG_OK, 2, 5);
	tally_msg_end(&b);
	put_file("codec", "ok.bin", b.data, b.len);
	/* REGISTER */
	tally_msg_register reg = {"w1", "tcp://127.0.0.1:40001", "127.0.0.1:6433", 99};
	tally_msg_begin(&b, TALLY_MSG_REGISTER, 3, 0);
	tally_msg_put_register(&b, &reg);
	tally_msg_end(&b);
	put_file("codec", "register.bin", b.data, b.len);
	/* HEARTBEAT */
	tally_msg_heartbeat hb = {1, 99, 41, 1u << 30};
	tally_msg_begin(&b, TALLY_MSG_HEARTBEAT, 4, 41);
	tally_msg_put_heartbeat(&b, &hb);
	tally_msg_end(&b);
	put_file("codec", "heartbeat.bin", b.data, b.len);
	/* APPLY with three groups (flags 0: fuzz_codec picks its aggregate list from the
	 * flags; list 1 is count(*), sum(int4), min(text), which these groups carry). */
	tally_msg_apply ap = {2, 1, 77, 70, 3, 2, 3};
	tally_msg_begin(&b, TALLY_MSG_APPLY, 5, 42);
	tally_put_be16(b.data + 4, 1);
	tally_msg_put_apply(&b, &ap);
	put_groups(&b, 3);
	tally_msg_end(&b);
	put_file("codec", "apply.bin", b.data, b.len);
	/* READ with and without a key */
	tally_buf key = {0};
	tally_value kv = tally_int(TALLY_T_INT4, 5);
	tally_key_encode(&kv, &key);
	tally_msg_read rd = {3, 1, 1, key.data, (uint32_t)key.len};
	tally_msg_begin(&b, TALLY_MSG_READ, 6, 42);
	tally_msg_put_read(&b, &rd);
	tally_msg_end(&b);
	put_file("codec", "read_key.bin", b.data, b.len);
	rd.has_key = 0;
	tally_msg_begin(&b, TALLY_MSG_READ, 7, 42);
	tally_msg_put_read(&b, &rd);
	tally_msg_end(&b);
	put_file("codec", "read.bin", b.data, b.len);
	/* READ_OK */
	tally_msg_begin(&b, TALLY_MSG_READ_OK, 8, 42);
	tally_put_be16(b.data + 4, 1);
	tally_buf_put_u32(&b, 2);
	put_groups(&b, 2);
	tally_msg_end(&b);
	put_file("codec", "read_ok.bin", b.data, b.len);
	/* Catalog carriers */
	tally_catalog *cat = sample_catalog(2);
	tally_buf cb = {0};
	tally_catalog_encode(cat, &cb);
	tally_msg_begin(&b, TALLY_MSG_REGISTER_OK, 9, 42);
	tally_buf_put_u32(&b, 1);
	tally_buf_put_str(&b, (const char *)cb.data, (uint32_t)cb.len);
	tally_msg_end(&b);
	put_file("codec", "register_ok.bin", b.data, b.len);
	tally_msg_begin(&b, TALLY_MSG_HEARTBEAT_OK, 10, 42);
	tally_buf_put_u64(&b, 42);
	tally_buf_putc(&b, 1);
	tally_buf_put_str(&b, (const char *)cb.data, (uint32_t)cb.len);
	tally_msg_end(&b);
	put_file("codec", "heartbeat_ok.bin", b.data, b.len);
	tally_msg_begin(&b, TALLY_MSG_MAP, 11, 42);
	tally_buf_put_str(&b, (const char *)cb.data, (uint32_t)cb.len);
	tally_msg_end(&b);
	put_file("codec", "map.bin", b.data, b.len);
	tally_msg_begin(&b, TALLY_MSG_DDL_OK, 12, 42);
	tally_ddl_reply_put(&b, "CREATE VIEW", "", cat, NULL);
	tally_msg_end(&b);
	put_file("codec", "ddl_ok.bin", b.data, b.len);
	tally_err err;
	tally_err_set(&err, TALLY_SQLSTATE_DUPLICATE_TABLE, "relation \"v\" already exists");
	tally_msg_begin(&b, TALLY_MSG_DDL_OK, 13, 42);
	tally_ddl_reply_put(&b, "", "", cat, &err);
	tally_msg_end(&b);
	put_file("codec", "ddl_err.bin", b.data, b.len);
	/* Raw group key of every type (reached through the header-less paths). */
	tally_buf_reset(&key);
	tally_buf_putc(&key, 0);
	tally_value vals[] = {tally_bool(true),
			      tally_int(TALLY_T_INT2, -5),
			      tally_int(TALLY_T_INT4, 123456),
			      tally_int(TALLY_T_INT8, INT64_MIN),
			      tally_float(TALLY_T_FLOAT4, 1.5),
			      tally_float(TALLY_T_FLOAT8, -0.0),
			      tally_text("hello", 5),
			      tally_int(TALLY_T_TIMESTAMPTZ, 1700000000000000ll),
			      tally_null(TALLY_T_TEXT)};
	for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++)
		tally_key_encode(&vals[i], &key);
	put_file("codec", "keys.bin", key.data, key.len);
	tally_catalog_free(cat);
	tally_buf_free(&cb);
	tally_buf_free(&key);
	tally_buf_free(&body);
	tally_buf_free(&b);
}

static void catalog_seeds(void)
{
	tally_buf b = {0};
	tally_catalog *c = tally_catalog_alloc();
	tally_catalog_encode(c, &b);
	put_file("catalog", "empty.bin", b.data, b.len);
	tally_catalog_free(c);
	for (int n = -1; n <= 3; n += 2) {
		char name[32];
		snprintf(name, sizeof name, "views%d.bin", n < 0 ? 0 : n);
		c = sample_catalog(n < 0 ? -1 : n);
		tally_buf_reset(&b);
		tally_catalog_encode(c, &b);
		put_file("catalog", n < 0 ? "nodes.bin" : name, b.data, b.len);
		tally_catalog_free(c);
	}
	tally_buf_free(&b);
}

/* ---- pgwire ---------------------------------------------------------------------------------- */

static void pg_msg(tally_buf *b, char type, const void *p, size_t n)
{
	tally_buf_putc(b, (uint8_t)type);
	tally_buf_put_u32(b, (uint32_t)(n + 4));
	tally_buf_append(b, p, n);
}

static void pg_str(tally_buf *b, const char *s)
{
	tally_buf_append(b, s, strlen(s) + 1);
}

static void pg_startup(tally_buf *b)
{
	tally_buf m = {0};
	tally_buf_put_u32(&m, 196608); /* 3.0 */
	pg_str(&m, "user");
	pg_str(&m, "fuzz");
	pg_str(&m, "database");
	pg_str(&m, "tally");
	pg_str(&m, "application_name");
	pg_str(&m, "psql");
	tally_buf_putc(&m, 0);
	tally_buf_put_u32(b, (uint32_t)m.len + 4);
	tally_buf_append(b, m.data, m.len);
	tally_buf_free(&m);
}

static void pg_query(tally_buf *b, const char *sql)
{
	pg_msg(b, 'Q', sql, strlen(sql) + 1);
}

static void pgwire_seeds(void)
{
	tally_buf b = {0}, m = {0};
	pg_startup(&b);
	pg_query(&b, "SELECT 1");
	pg_query(&b, "begin");
	pg_query(&b, "error here");
	pg_query(&b, "commit");
	pg_query(&b, "");
	pg_msg(&b, 'X', NULL, 0);
	put_file("pgwire", "simple.bin", b.data, b.len);

	/* SSLRequest, then a normal startup. */
	tally_buf_reset(&b);
	static const uint8_t ssl[8] = {0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f};
	tally_buf_append(&b, ssl, sizeof ssl);
	pg_startup(&b);
	pg_query(&b, "SELECT 'x'; SELECT 2");
	put_file("pgwire", "ssl.bin", b.data, b.len);

	/* GSSENCRequest */
	tally_buf_reset(&b);
	static const uint8_t gss[8] = {0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30};
	tally_buf_append(&b, gss, sizeof gss);
	pg_startup(&b);
	put_file("pgwire", "gss.bin", b.data, b.len);

	/* CancelRequest */
	tally_buf_reset(&b);
	tally_buf_put_u32(&b, 16);
	tally_buf_put_u32(&b, 80877102);
	tally_buf_put_u32(&b, 1234);
	tally_buf_put_u32(&b, 5678);
	put_file("pgwire", "cancel.bin", b.data, b.len);

	/* Extended protocol: Parse, Bind (two text parameters, one NULL), Describe, Execute,
	 * Close, Sync, Flush. */
	tally_buf_reset(&b);
	pg_startup(&b);
	tally_buf_reset(&m);
	pg_str(&m, "s1");
	pg_str(&m, "SELECT $1, $2");
	tally_buf_put_u16(&m, 2);
	tally_buf_put_u32(&m, 23);
	tally_buf_put_u32(&m, 25);
	pg_msg(&b, 'P', m.data, m.len);
	tally_buf_reset(&m);
	pg_str(&m, "p1");
	pg_str(&m, "s1");
	tally_buf_put_u16(&m, 1);
	tally_buf_put_u16(&m, 0);
	tally_buf_put_u16(&m, 2);
	tally_buf_put_u32(&m, 2);
	tally_buf_append(&m, "42", 2);
	tally_buf_put_u32(&m, 0xffffffffu);
	tally_buf_put_u16(&m, 1);
	tally_buf_put_u16(&m, 0);
	pg_msg(&b, 'B', m.data, m.len);
	pg_msg(&b, 'D', "Pp1", 4);
	tally_buf_reset(&m);
	pg_str(&m, "p1");
	tally_buf_put_u32(&m, 0);
	pg_msg(&b, 'E', m.data, m.len);
	pg_msg(&b, 'C', "Ss1", 4);
	pg_msg(&b, 'S', NULL, 0);
	pg_msg(&b, 'D', "Ss1", 4);
	pg_msg(&b, 'H', NULL, 0);
	pg_msg(&b, 'S', NULL, 0);
	pg_msg(&b, 'X', NULL, 0);
	put_file("pgwire", "extended.bin", b.data, b.len);

	/* Unnamed statement with a quote-bearing parameter, then an error inside Execute. */
	tally_buf_reset(&b);
	pg_startup(&b);
	tally_buf_reset(&m);
	pg_str(&m, "");
	pg_str(&m, "error $1");
	tally_buf_put_u16(&m, 0);
	pg_msg(&b, 'P', m.data, m.len);
	tally_buf_reset(&m);
	pg_str(&m, "");
	pg_str(&m, "");
	tally_buf_put_u16(&m, 0);
	tally_buf_put_u16(&m, 1);
	tally_buf_put_u32(&m, 5);
	tally_buf_append(&m, "it's", 5);
	tally_buf_put_u16(&m, 0);
	pg_msg(&b, 'B', m.data, m.len);
	tally_buf_reset(&m);
	pg_str(&m, "");
	tally_buf_put_u32(&m, 1);
	pg_msg(&b, 'E', m.data, m.len);
	pg_msg(&b, 'S', NULL, 0);
	put_file("pgwire", "extended_error.bin", b.data, b.len);

	/* COPY: data in two chunks, Flush and Sync inside, CopyDone; then CopyFail. */
	tally_buf_reset(&b);
	pg_startup(&b);
	pg_query(&b, "COPY s FROM STDIN");
	pg_msg(&b, 'd', "1\tone\n2\t", 8);
	pg_msg(&b, 'H', NULL, 0);
	pg_msg(&b, 'd', "two\n\\.\n", 7);
	pg_msg(&b, 'c', NULL, 0);
	pg_query(&b, "copy again");
	pg_msg(&b, 'd', "x\n", 2);
	pg_msg(&b, 'f', "client gave up", 15);
	pg_query(&b, "SELECT after");
	put_file("pgwire", "copy.bin", b.data, b.len);

	/* Startup with a bad protocol version; a message that is too short. */
	tally_buf_reset(&b);
	tally_buf_put_u32(&b, 8);
	tally_buf_put_u32(&b, 0x00020000);
	put_file("pgwire", "old_protocol.bin", b.data, b.len);
	tally_buf_reset(&b);
	pg_startup(&b);
	tally_buf_putc(&b, 'Q');
	tally_buf_put_u32(&b, 3);
	put_file("pgwire", "short_len.bin", b.data, b.len);
	tally_buf_free(&m);
	tally_buf_free(&b);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s <output root>\n", argv[0]);
		return 2;
	}
	root = argv[1];
	if (mkdir(root, 0777) != 0 && errno != EEXIST) {
		perror(root);
		return 1;
	}
	codec_seeds();
	catalog_seeds();
	pgwire_seeds();
	return 0;
}
