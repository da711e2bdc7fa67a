/*
 * settings.c - the pipeline_cluster.* settings and the standard PostgreSQL parameters drivers
 * send. A tally_settings holds every value as normalised text; node defaults come from flags
 * (--set), sessions copy them and change their own copy with SET / RESET.
 */
#include "tally/node.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

typedef enum { K_BOOL, K_ENUM, K_INT, K_MS, K_BYTES, K_TEXT, K_READONLY } kind_t;

typedef struct {
	const char *name;
	kind_t kind;
	const char *dflt;
	const char *choices; /* K_ENUM: '|'-separated */
	int64_t min, max;    /* K_INT / K_MS / K_BYTES */
	const char *desc;
	bool node_only; /* set per node (--set) only: sessions get 55P02 */
} setting_def;

static const setting_def defs[TALLY_SET_COUNT_] = {
    [TALLY_SET_PRIMARY_ONLY] = {"pipeline_cluster.primary_only", K_BOOL, "off", NULL, 0, 0,
				"read only primary shard copies"},
    [TALLY_SET_SKIP_UNAVAILABLE] = {"pipeline_cluster.skip_unavailable", K_BOOL, "off", NULL, 0, 0,
				    "answer reads from the reachable shards, with a warning"},
    [TALLY_SET_INSERT_LEVEL] = {"pipeline_cluster.insert_level", K_ENUM, "sync_receive",
				"sync_receive|sync_commit|async", 0, 0,
				"when an INSERT or COPY returns"},
    [TALLY_SET_NUM_REPLICAS] = {"pipeline_cluster.num_replicas", K_INT, "1", NULL, 0, 15,
				"default replica copies per shard of new views"},
    [TALLY_SET_FAILURE_TIMEOUT] = {"pipeline_cluster.failure_timeout", K_MS, "2s", NULL, 100,
				   3600000, "silence after which a node is marked down"},
    [TALLY_SET_HEARTBEAT_INTERVAL] = {"pipeline_cluster.heartbeat_interval", K_MS, "250ms", NULL,
				      10, 60000, "how often workers heartbeat the coordinator"},
    [TALLY_SET_FSYNC] = {"pipeline_cluster.fsync", K_BOOL, "on", NULL, 0, 0,
			 "fdatasync the write-ahead log before acknowledging", true},
    [TALLY_SET_CHECKPOINT_INTERVAL] = {"pipeline_cluster.checkpoint_interval", K_MS, "30s", NULL,
				       100, 86400000,
				       "time between checkpoints (shard snapshots, log removal)",
				       true},
    [TALLY_SET_MAX_WAL_SIZE] = {"pipeline_cluster.max_wal_size", K_BYTES, "256MB", NULL, 1 << 20,
				(int64_t)1 << 40,
				"log written since the last checkpoint that starts the next one",
				true},
    [TALLY_SET_WAL_SEGMENT_SIZE] = {"pipeline_cluster.wal_segment_size", K_BYTES, "64MB", NULL,
				    64 << 10, (int64_t)1 << 30,
				    "size at which the log starts a new segment file", true},
    [TALLY_SET_OUTBOX_LIMIT] = {"pipeline_cluster.outbox_limit", K_BYTES, "1GB", NULL, 1 << 20,
				(int64_t)1 << 40,
				"undelivered batch bytes after which ingest is refused", true},
    [TALLY_SET_REPLICATION_BUFFER] = {"pipeline_cluster.replication_buffer", K_BYTES, "64MB", NULL,
				      1 << 20, (int64_t)1 << 40,
				      "latest change records a primary shard copy keeps for "
				      "replicas that are behind (beyond: a snapshot)",
				      true},
    [TALLY_SET_STATEMENT_MEMORY] = {"pipeline_cluster.statement_memory", K_BYTES, "1GB", NULL,
				    1 << 20, (int64_t)1 << 40,
				    "memory one statement may use to pre-aggregate its rows"},
    [TALLY_SET_RPC_TIMEOUT] = {"pipeline_cluster.rpc_timeout", K_MS, "10s", NULL, 10, 3600000,
			       "how long a node waits for a peer's reply"},
    [TALLY_SET_CLIENT_ENCODING] = {"client_encoding", K_ENUM, "UTF8", "UTF8|UNICODE|SQL_ASCII", 0,
				   0, "client character set (UTF8 only)"},
    [TALLY_SET_DATESTYLE] = {"datestyle", K_TEXT, "ISO, MDY", NULL, 0, 0, "date output style"},
    [TALLY_SET_TIMEZONE] = {"timezone", K_ENUM, "UTC", "UTC|GMT|Etc/UTC|Z|ZULU", 0, 0,
			    "time zone (UTC only)"},
    [TALLY_SET_APPLICATION_NAME] = {"application_name", K_TEXT, "", NULL, 0, 0,
				    "client application name"},
    [TALLY_SET_EXTRA_FLOAT_DIGITS] =
	{"extra_float_digits", K_INT, "1", NULL, -15, 3,
	 "accepted for compatibility; output is always shortest-exact"},
    [TALLY_SET_SEARCH_PATH] = {"search_path", K_TEXT, "\"$user\", public", NULL, 0, 0,
			       "accepted for compatibility"},
    [TALLY_SET_STATEMENT_TIMEOUT] = {"statement_timeout", K_MS, "0", NULL, 0, INT32_MAX,
				     "accepted for compatibility"},
    [TALLY_SET_SERVER_VERSION] = {"server_version", K_READONLY, "15.0", NULL, 0, 0,
				  "PostgreSQL version tally answers as"},
    [TALLY_SET_SERVER_ENCODING] = {"server_encoding", K_READONLY, "UTF8", NULL, 0, 0,
				   "server character set"},
    [TALLY_SET_STANDARD_CONFORMING_STRINGS] = {"standard_conforming_strings", K_READONLY, "on",
					       NULL, 0, 0, "backslashes are literal in strings"},
    [TALLY_SET_INTEGER_DATETIMES] = {"integer_datetimes", K_READONLY, "on", NULL, 0, 0,
				     "timestamps are 64-bit integers"},
    [TALLY_SET_TRANSACTION_ISOLATION] = {"transaction_isolation", K_READONLY, "read committed",
					 NULL, 0, 0, "accepted for compatibility"},
};

void tally_settings_defaults(tally_settings *s)
{
	for (int i = 0; i < TALLY_SET_COUNT_; i++)
		tally_strlcpy(s->v[i], defs[i].dflt, sizeof s->v[i]);
}

int tally_settings_lookup(const char *name)
{
	for (int i = 0; i < TALLY_SET_COUNT_; i++)
		if (strcasecmp(defs[i].name, name) == 0)
			return i;
	return -1;
}

const char *tally_settings_name(int id)
{
	return id >= 0 && id < TALLY_SET_COUNT_ ? defs[id].name : NULL;
}
const char *tally_settings_describe(int id)
{
	return id >= 0 && id < TALLY_SET_COUNT_ ? defs[id].desc : NULL;
}

static int parse_bool(const char *v, bool *out)
{
	static const char *t[] = {"on", "true", "yes", "1", "t", "y"};
	static const char *f[] = {"off", "false", "no", "0", "f", "n"};
	for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
		if (strcasecmp(v, t[i]) == 0) {
			*out = true;
			return 0;
		}
		if (strcasecmp(v, f[i]) == 0) {
			*out = false;
			return 0;
		}
	}
	return -1;
}

/* "250ms", "2s", "1min", "2000" (ms) -> ms; "1GB", "64MB", "512kB", "1024" (bytes). */
static int parse_unit(const char *v, bool bytes, int64_t *out)
{
	char *end;
	while (isspace((unsigned char)*v))
		v++;
	if (!isdigit((unsigned char)*v) && *v != '-')
		return -1;
	errno = 0;
	long long x = strtoll(v, &end, 10);
	if (errno)
		return -1;
	while (isspace((unsigned char)*end))
		end++;
	int64_t mul = 1;
	if (*end == 0)
		mul = 1;
	else if (!bytes && strcasecmp(end, "ms") == 0)
		mul = 1;
	else if (!bytes && strcasecmp(end, "s") == 0)
		mul = 1000;
	else if (!bytes && strcasecmp(end, "min") == 0)
		mul = 60000;
	else if (!bytes && strcasecmp(end, "h") == 0)
		mul = 3600000;
	else if (bytes && strcasecmp(end, "B") == 0)
		mul = 1;
	else if (bytes && strcasecmp(end, "kB") == 0)
		mul = 1024;
	else if (bytes && strcasecmp(end, "MB") == 0)
		mul = 1024 * 1024;
	else if (bytes && strcasecmp(end, "GB") == 0)
		mul = 1024LL * 1024 * 1024;
	else if (bytes && strcasecmp(end, "TB") == 0)
		mul = 1024LL * 1024 * 1024 * 1024;
	else
		return -1;
	if (x > INT64_MAX / mul || x < INT64_MIN / mul)
		return -1;
	*out = (int64_t)x * mul;
	return 0;
}

int tally_settings_set(tally_settings *s, const tally_settings *dflt, int id, const char *value,
		       tally_err *err)
{
	if (id < 0 || id >= TALLY_SET_COUNT_)
		return tally_err_set(err, TALLY_SQLSTATE_UNDEFINED_OBJECT,
				     "unrecognized configuration parameter");
	const setting_def *d = &defs[id];
	if (d->kind == K_READONLY) {
		if (!value)
			return 0;
		return tally_err_set(err, "55P02", "parameter \"%s\" cannot be changed", d->name);
	}
	if (d->node_only && dflt) {
		if (!value)
			return 0;
		tally_err_set(err, "55P02",
			      "parameter \"%s\" cannot be changed without restarting the server",
			      d->name);
		return tally_err_hint(err, "Set it per node with --set %s=VALUE.", d->name);
	}
	if (!value) {
		tally_strlcpy(s->v[id], dflt ? dflt->v[id] : d->dflt, sizeof s->v[id]);
		return 0;
	}
	char norm[TALLY_SETTING_VALUE_MAX];
	if (strlen(value) >= sizeof norm)
		goto bad;
	switch (d->kind) {
	case K_BOOL: {
		bool b;
		if (parse_bool(value, &b))
			goto bad;
		tally_strlcpy(norm, b ? "on" : "off", sizeof norm);
		break;
	}
	case K_ENUM: {
		const char *c = d->choices;
		bool found = false;
		while (*c) {
			const char *bar = strchr(c, '|');
			size_t n = bar ? (size_t)(bar - c) : strlen(c);
			if (strlen(value) == n && strncasecmp(value, c, n) == 0) {
				/* the first choice spelling is canonical for encodings and zones */
				if (id == TALLY_SET_CLIENT_ENCODING || id == TALLY_SET_TIMEZONE)
					tally_strlcpy(norm, d->dflt, sizeof norm);
				else {
					memcpy(norm, c, n);
					norm[n] = 0;
				}
				found = true;
				break;
			}
			if (!bar)
				break;
			c = bar + 1;
		}
		if (!found)
			goto bad;
		break;
	}
	case K_INT: {
		char *end;
		errno = 0;
		long long x = strtoll(value, &end, 10);
		while (isspace((unsigned char)*end))
			end++;
		if (errno || *end || end == value)
			goto bad;
		if (x < d->min || x > d->max)
			return tally_err_set(
			    err, TALLY_SQLSTATE_INVALID_PARAMETER,
			    "%lld is outside the valid range for parameter \"%s\" (%lld .. %lld)",
			    x, d->name, (long long)d->min, (long long)d->max);
		snprintf(norm, sizeof norm, "%lld", x);
		break;
	}
	case K_MS:
	case K_BYTES: {
		int64_t x;
		if (parse_unit(value, d->kind == K_BYTES, &x))
			goto bad;
		if (x < d->min || x > d->max)
			return tally_err_set(err, TALLY_SQLSTATE_INVALID_PARAMETER,
					     "%s is outside the valid range for parameter \"%s\"",
					     value, d->name);
		tally_strlcpy(norm, value, sizeof norm);
		break;
	}
	default:
		tally_strlcpy(norm, value, sizeof norm);
		break;
	}
	tally_strlcpy(s->v[id], norm, sizeof s->v[id]);
	return 0;
bad:
	tally_err_set(err, TALLY_SQLSTATE_INVALID_PARAMETER,
		      "invalid value for parameter \"%s\": \"%.64s\"", d->name, value);
	if (d->kind == K_BOOL)
		tally_err_hint(err, "Use on or off.");
	else if (d->kind == K_ENUM)
		tally_err_hint(err, "Available values: %s.", d->choices);
	else if (d->kind == K_MS)
		tally_err_hint(err, "Use a duration such as 250ms, 2s or 1min.");
	else if (d->kind == K_BYTES)
		tally_err_hint(err, "Use a size such as 64MB or 1GB.");
	return -1;
}

bool tally_settings_bool(const tally_settings *s, int id)
{
	return strcmp(s->v[id], "on") == 0;
}

int64_t tally_settings_ms(const tally_settings *s, int id)
{
	int64_t x = 0;
	if (parse_unit(s->v[id], false, &x))
		parse_unit(defs[id].dflt, false, &x);
	return x;
}

int64_t tally_settings_bytes(const tally_settings *s, int id)
{
	int64_t x = 0;
	if (parse_unit(s->v[id], true, &x))
		parse_unit(defs[id].dflt, true, &x);
	return x;
}
