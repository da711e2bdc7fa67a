/*
 * files.c - small helpers every durable part shares: write-everything, atomic replace (temp
 * file, fsync, rename, fsync of the directory), read-whole-file, and monotonic-clock
 * condvars for their deadline waits.
 */
#include "tally/core.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void tally_cond_init_mono(pthread_cond_t *cv)
{
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(cv, &ca);
	pthread_condattr_destroy(&ca);
}

struct timespec tally_mono_ts(int64_t deadline_us)
{
	struct timespec ts = {(time_t)(deadline_us / 1000000),
			      (long)(deadline_us % 1000000) * 1000};
	return ts;
}

int tally_write_all(int fd, const void *p, size_t n)
{
	const uint8_t *b = p;
	while (n) {
		ssize_t w = write(fd, b, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -1;
		if (w == 0) {
			errno = EIO;
			return -1;
		}
		b += w;
		n -= (size_t)w;
	}
	return 0;
}

int tally_mkdir_p(const char *dir, unsigned mode)
{
	char path[4096];
	if (tally_strlcpy(path, dir, sizeof path) >= sizeof path) {
		errno = ENAMETOOLONG;
		return -1;
	}
	for (char *p = path + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(path, (mode_t)mode) != 0 && errno != EEXIST)
			return -1;
		*p = '/';
	}
	if (mkdir(path, (mode_t)mode) != 0 && errno != EEXIST)
		return -1;
	struct stat st;
	if (stat(path, &st) != 0)
		return -1;
	if (!S_ISDIR(st.st_mode)) {
		errno = ENOTDIR;
		return -1;
	}
	return 0;
}

int tally_dir_sync(const char *dir)
{
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return -1;
	int rc = fsync(dfd);
	int e = errno;
	close(dfd);
	errno = e;
	return rc;
}

int tally_file_replace(const char *dir, const char *name, const void *p, size_t n, bool sync)
{
	char tmp[1024], path[1024];
	if (snprintf(tmp, sizeof tmp, "%s/%s.tmp", dir, name) >= (int)sizeof tmp ||
	    snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path) {
		errno = ENAMETOOLONG;
		return -1;
	}
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -1;
	if (tally_write_all(fd, p, n) != 0 || (sync && fsync(fd) != 0)) {
		int e = errno;
		close(fd);
		unlink(tmp);
		errno = e;
		return -1;
	}
	if (close(fd) != 0 || rename(tmp, path) != 0) {
		int e = errno;
		unlink(tmp);
		errno = e;
		return -1;
	}
	return sync ? tally_dir_sync(dir) : 0;
}

int tally_file_read(const char *path, tally_buf *b)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 1 : -1;
	struct stat st;
	if (fstat(fd, &st) == 0 && st.st_size > 0 &&
	    tally_buf_reserve(b, (size_t)st.st_size) != 0) {
		close(fd);
		errno = EFBIG;
		return -1;
	}
	for (;;) {
		if (tally_buf_reserve(b, 65536) != 0) {
			close(fd);
			errno = EFBIG;
			return -1;
		}
		ssize_t r = read(fd, b->data + b->len, b->cap - b->len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			int e = errno;
			close(fd);
			errno = e;
			return -1;
		}
		if (r == 0)
			break;
		b->len += (size_t)r;
	}
	close(fd);
	return 0;
}
