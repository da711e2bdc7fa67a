/*
 * fuzz_smoke.c - runs every fuzz target without libFuzzer, in the ordinary test suite: first
 * every file of the target's seed corpora (tests/fuzz/corpus/<name>/ and the binary seeds
 * fuzz_seedgen writes into the build tree), then a fixed number of deterministic
 * pseudo-random mutations of those seeds (bit flips, interesting bytes, insertions,
 * deletions, duplications, splices, truncations). Same seed, same inputs, every run: a
 * failure reproduces with the printed target and iteration; on a crash (abort, segfault) the
 * input is also written to fuzz-smoke-crash-<target>.bin in the current directory, ready to
 * be replayed by the libFuzzer binary (fuzz_<target> file) or kept as a corpus file.
 *
 * usage: fuzz_smoke [-t target] [-n iterations] [-s seed] [-w iteration] corpus_root...
 */
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fuzz_targets.h"

typedef struct target {
	const char *name;
	int (*one)(const uint8_t *data, size_t size);
	long iters; /* default mutation count: all targets take ~10 s in Release (2 cores) */
} target;

static const target targets[] = {
    {"sql", fuzz_sql_one, 500000},     {"copy", fuzz_copy_one, 500000},
    {"codec", fuzz_codec_one, 300000}, {"catalog", fuzz_catalog_one, 500000},
    {"pgwire", fuzz_pgwire_one, 3000},
};
#define NTARGETS (sizeof targets / sizeof targets[0])
#define SMOKE_MAX_INPUT (64u << 10)

typedef struct input {
	uint8_t *p;
	size_t n;
	char *path;
} input;

typedef struct corpus {
	input *v;
	size_t n, cap;
} corpus;

static uint64_t rng;

/* What is running, for the crash handler (written before each input; read only there). */
static const char *cur_target = "";
static long cur_iter;
static const uint8_t *cur_data;
static size_t cur_len;

static void put_str(int fd, const char *s)
{
	(void)!write(fd, s, strlen(s));
}

static void on_crash(int sig)
{
	char path[128] = "fuzz-smoke-crash-";
	strncat(path, cur_target, 64);
	strcat(path, ".bin");
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd >= 0) {
		(void)!write(fd, cur_data, cur_len);
		close(fd);
	}
	char num[32];
	int i = (int)sizeof num;
	num[--i] = 0;
	long v = cur_iter < 0 ? -cur_iter - 1 : cur_iter;
	do
		num[--i] = (char)('0' + v % 10);
	while ((v /= 10) && i > 1);
	put_str(2, "fuzz_smoke: crash in target ");
	put_str(2, cur_target);
	put_str(2, cur_iter < 0 ? " on seed #" : " at mutation ");
	put_str(2, num + i);
	put_str(2, ", input written to ");
	put_str(2, path);
	put_str(2, "\n");
	signal(sig, SIG_DFL);
	raise(sig);
}

static uint64_t next(void)
{
	uint64_t z = (rng += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

static size_t below(size_t n)
{
	return n ? (size_t)(next() % n) : 0;
}

static int cmp_input(const void *a, const void *b)
{
	return strcmp(((const input *)a)->path, ((const input *)b)->path);
}

static void load_dir(corpus *c, const char *root, const char *name)
{
	char dir[4096];
	snprintf(dir, sizeof dir, "%s/%s", root, name);
	DIR *d = opendir(dir);
	if (!d)
		return;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		char path[8192];
		snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
		FILE *f = fopen(path, "rb");
		if (!f)
			continue;
		uint8_t *buf = malloc(SMOKE_MAX_INPUT);
		size_t n = fread(buf, 1, SMOKE_MAX_INPUT, f);
		fclose(f);
		if (c->n == c->cap) {
			c->cap = c->cap ? c->cap * 2 : 64;
			c->v = realloc(c->v, c->cap * sizeof *c->v);
		}
		c->v[c->n++] = (input){buf, n, strdup(path)};
	}
	closedir(d);
}

static const uint8_t interesting[] = {0,   1,	0x7f, 0x80, 0xff, '\n', '\r', '\t', '\\', '"', '\'',
				      ',', '|', ';',  '(',  ')',  '*',	'-',  '.',  'e',  'N', ' '};

/* Apply 1..4 random edits to buf (len *n, capacity SMOKE_MAX_INPUT). */
static void mutate(uint8_t *buf, size_t *n, const corpus *c)
{
	int edits = 1 + (int)below(4);
	for (int k = 0; k < edits; k++) {
		size_t len = *n;
		switch (below(9)) {
		case 0: /* bit flip */
			if (len)
				buf[below(len)] ^= (uint8_t)(1u << below(8));
			break;
		case 1: /* random byte */
			if (len)
				buf[below(len)] = (uint8_t)next();
			break;
		case 2: /* interesting byte */
			if (len)
				buf[below(len)] = interesting[below(sizeof interesting)];
			break;
		case 3: { /* insert 1..8 bytes */
			size_t m = 1 + below(8), at = below(len + 1);
			if (len + m > SMOKE_MAX_INPUT)
				break;
			memmove(buf + at + m, buf + at, len - at);
			for (size_t i = 0; i < m; i++)
				buf[at + i] = (next() & 1) ? interesting[below(sizeof interesting)]
							   : (uint8_t)next();
			*n = len + m;
			break;
		}
		case 4: { /* delete a range */
			if (!len)
				break;
			size_t at = below(len), m = 1 + below(len - at < 16 ? len - at : 16);
			memmove(buf + at, buf + at + m, len - at - m);
			*n = len - m;
			break;
		}
		case 5: { /* duplicate a range */
			if (!len)
				break;
			size_t at = below(len), m = 1 + below(len - at), to = below(len + 1);
			if (len + m > SMOKE_MAX_INPUT)
				break;
			uint8_t tmp[256];
			if (m > sizeof tmp)
				m = sizeof tmp;
			memcpy(tmp, buf + at, m);
			memmove(buf + to + m, buf + to, len - to);
			memcpy(buf + to, tmp, m);
			*n = len + m;
			break;
		}
		case 6: { /* splice: our head, another seed's tail */
			const input *o = &c->v[below(c->n)];
			size_t at = below(len + 1), from = below(o->n + 1);
			size_t m = o->n - from;
			if (at + m > SMOKE_MAX_INPUT)
				m = SMOKE_MAX_INPUT - at;
			memcpy(buf + at, o->p + from, m);
			*n = at + m;
			break;
		}
		case 7: /* truncate */
			*n = below(len + 1);
			break;
		case 8: { /* big-endian length-ish word: 0, 1, huge, or off by one */
			if (len < 4)
				break;
			size_t at = below(len - 3);
			static const uint32_t w[] = {0, 1, 0x7fffffff, 0xffffffff, 0x10000, 4};
			uint32_t v = w[below(sizeof w / sizeof w[0])];
			buf[at] = (uint8_t)(v >> 24);
			buf[at + 1] = (uint8_t)(v >> 16);
			buf[at + 2] = (uint8_t)(v >> 8);
			buf[at + 3] = (uint8_t)v;
			break;
		}
		}
	}
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	const char *only = NULL;
	long iters = -1, write_at = -1;
	uint64_t seed = 0x7a11f022;
	int opt;
	while ((opt = getopt(argc, argv, "t:n:s:w:")) != -1) {
		switch (opt) {
		case 't':
			only = optarg;
			break;
		case 'n':
			iters = atol(optarg);
			break;
		case 's':
			seed = strtoull(optarg, NULL, 0);
			break;
		case 'w':
			write_at = atol(optarg);
			break;
		default:
			fprintf(stderr,
				"usage: %s [-t target] [-n iterations] [-s seed] [-w iteration] "
				"corpus_root...\n",
				argv[0]);
			return 2;
		}
	}
	const char *env = getenv("TALLY_FUZZ_SMOKE_ITERS");
	if (iters < 0 && env)
		iters = atol(env);
	signal(SIGABRT, on_crash);
	signal(SIGSEGV, on_crash);
	signal(SIGBUS, on_crash);
	signal(SIGFPE, on_crash);
	int failures = 0;
	uint8_t *buf = malloc(SMOKE_MAX_INPUT);
	for (size_t t = 0; t < NTARGETS; t++) {
		if (only && strcmp(only, targets[t].name) != 0)
			continue;
		/* Each target in its own process: a crash in one does not hide the others. */
		fflush(stdout);
		pid_t pid = fork();
		if (pid < 0) {
			perror("fork");
			return 1;
		}
		if (pid > 0) {
			int status;
			while (waitpid(pid, &status, 0) < 0)
				;
			if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
				fprintf(stderr, "fuzz_smoke: target %s FAILED\n", targets[t].name);
				failures++;
			}
			continue;
		}
		corpus c = {0};
		for (int i = optind; i < argc; i++)
			load_dir(&c, argv[i], targets[t].name);
		if (c.n == 0) {
			fprintf(stderr, "fuzz_smoke: no seeds for target %s\n", targets[t].name);
			_exit(1);
		}
		qsort(c.v, c.n, sizeof *c.v, cmp_input);
		double t0 = now_s();
		cur_target = targets[t].name;
		for (size_t i = 0; i < c.n; i++) {
			cur_iter = -(long)i - 1;
			cur_data = c.v[i].p;
			cur_len = c.v[i].n;
			targets[t].one(c.v[i].p, c.v[i].n);
		}
		long n = iters >= 0 ? iters : targets[t].iters;
		rng = seed ^ (uint64_t)t * 0x1000193;
		for (long i = 0; i < n; i++) {
			const input *s = &c.v[below(c.n)];
			size_t len = s->n;
			memcpy(buf, s->p, len);
			mutate(buf, &len, &c);
			if (i == write_at) {
				char path[64];
				snprintf(path, sizeof path, "fuzz-%s-%ld.bin", targets[t].name, i);
				FILE *f = fopen(path, "wb");
				if (f) {
					fwrite(buf, 1, len, f);
					fclose(f);
					printf("wrote %s (%zu bytes)\n", path, len);
				}
			}
			cur_iter = i;
			cur_data = buf;
			cur_len = len;
			targets[t].one(buf, len);
		}
		printf("fuzz_smoke: %-8s %4zu seeds + %6ld mutations in %.2f s\n", targets[t].name,
		       c.n, n, now_s() - t0);
		fflush(stdout);
		for (size_t i = 0; i < c.n; i++) {
			free(c.v[i].p);
			free(c.v[i].path);
		}
		free(c.v);
		free(buf);
		exit(0); /* through exit: LeakSanitizer checks the child */
	}
	free(buf);
	return failures ? 1 : 0;
}
