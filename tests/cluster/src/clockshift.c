/*
 * clockshift: moves the wall clock of one process by an offset read from a file, for
 * Cluster::start_with_fake_clocks. Preloaded (LD_PRELOAD) into one Redis node so that
 * a test can step that node's clock while the others keep real time.
 *
 * Why not Debian's libfaketime: it cannot start redis-server. Its initialisation
 * allocates (dlsym's error message), and jemalloc, which redis-server uses, calls into
 * libfaketime (pthread_cond_init, clock_gettime) while initialising itself, so the
 * process deadlocks or reports "Unexpected recursive calls to clock_gettime()"
 * (libfaketime issues #130, #327, #478). This library allocates nothing and resolves
 * no symbol: the real clocks come from the clock_gettime system call.
 *
 * FREDLOCK_CLOCK_OFFSET_FILE names a file holding a signed decimal number of
 * milliseconds ("0", "+30000", "-500"). It is read again on every wall-clock call, so
 * a write (best an atomic rename) takes effect at the process's next call. A missing
 * or unreadable file means offset 0.
 *
 * Shifted: clock_gettime(CLOCK_REALTIME, CLOCK_REALTIME_COARSE, CLOCK_TAI),
 * gettimeofday, time. Not shifted: the monotonic and boot-time clocks, so timers and
 * Redis's latency measurements keep running as before; only what reads the wall clock
 * (key expiry in Redis 7, TIME, INFO's uptime) jumps.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static long long offset_ms(void) {
    const char *path = getenv("FREDLOCK_CLOCK_OFFSET_FILE");
    if (path == NULL) {
        return 0;
    }
    /* The callers of the clock do not expect errno to change. */
    int saved = errno;
    char buf[32];
    ssize_t n = -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        n = read(fd, buf, sizeof buf - 1);
        close(fd);
    }
    errno = saved;
    long long v = 0;
    int negative = 0;
    ssize_t i = 0;
    if (n > 0 && (buf[0] == '-' || buf[0] == '+')) {
        negative = buf[0] == '-';
        i = 1;
    }
    for (; i < n && buf[i] >= '0' && buf[i] <= '9'; i++) {
        v = v * 10 + (buf[i] - '0');
    }
    return negative ? -v : v;
}

static int real_clock(clockid_t id, struct timespec *ts) {
    return (int)syscall(SYS_clock_gettime, id, ts);
}

static void shift(struct timespec *ts) {
    long long ms = offset_ms();
    long long ns = (long long)ts->tv_nsec + (ms % 1000) * 1000000LL;
    long long sec = (long long)ts->tv_sec + ms / 1000;
    if (ns < 0) {
        ns += 1000000000LL;
        sec -= 1;
    } else if (ns >= 1000000000LL) {
        ns -= 1000000000LL;
        sec += 1;
    }
    ts->tv_sec = (time_t)sec;
    ts->tv_nsec = (long)ns;
}

static int is_wall_clock(clockid_t id) {
    return id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE || id == CLOCK_TAI;
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    int r = real_clock(id, ts);
    if (r == 0 && is_wall_clock(id)) {
        shift(ts);
    }
    return r;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
    struct timespec ts;
    if (real_clock(CLOCK_REALTIME, &ts) != 0) {
        return -1;
    }
    shift(&ts);
    /* glibc declares tv non-null. */
    tv->tv_sec = ts.tv_sec;
    tv->tv_usec = ts.tv_nsec / 1000;
    if (tz != NULL) {
        struct timezone *z = tz;
        z->tz_minuteswest = 0;
        z->tz_dsttime = 0;
    }
    return 0;
}

time_t time(time_t *out) {
    struct timespec ts;
    if (real_clock(CLOCK_REALTIME, &ts) != 0) {
        return (time_t)-1;
    }
    shift(&ts);
    if (out != NULL) {
        *out = ts.tv_sec;
    }
    return ts.tv_sec;
}
