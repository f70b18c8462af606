/* Run-time ISA selection: once at import, from CPU features (never from the
 * vendor or family), overridable with GLASSBOX_ISA for tests.  Also the process-wide
 * state every kernel consults: how many threads it may use (1 in a forked child), and the
 * stop flag that makes a long kernel return early when the run is interrupted. */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* clock_gettime under -std=c11 */
#endif
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <time.h>

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#define GB_HAVE_ATFORK 1
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels.h"

/* ------------------------------------------------------------ threads after fork */
/* libgomp's thread pool does not survive fork(): the child inherits the pool's bookkeeping
 * but not its threads, so the first parallel region with more than one thread waits forever
 * for them.  A child therefore runs every kernel on its calling thread (a one-thread region
 * never touches the pool).  Set in the child by the pthread_atfork handler registered in
 * gb_cpu_init, i.e. for every fork the process makes after glassbox._C was imported
 * (os.fork, multiprocessing's "fork" start method); inherited by grandchildren. */
static volatile int forked_child = 0;

#ifdef GB_HAVE_ATFORK
static void after_fork_in_child(void) { forked_child = 1; }
#endif

/* glassbox.set_num_threads: 0 = OpenMP's own count (OMP_NUM_THREADS, else the cores).  A
 * process-wide value, not OpenMP's per-thread ICV, so it holds for kernels called from any
 * Python thread. */
static atomic_int thread_override = 0;

int gb_set_max_threads(int n) {
    if (n < 0) return -1;
    atomic_store_explicit(&thread_override, n, memory_order_relaxed);
    return 0;
}

int gb_max_threads(void) {
#ifdef _OPENMP
    if (forked_child) return 1;
    const int n = atomic_load_explicit(&thread_override, memory_order_relaxed);
    return n > 0 ? n : omp_get_max_threads();
#else
    return 1;
#endif
}

/* ----------------------------------------------------- busy-machine back-off */
/* With more runnable threads than cores (another CPU-bound process on a 2-core machine), the
 * OS deschedules one of our threads for a whole time slice now and then, and every parallel
 * region ends with a barrier that waits for it: the regions of a forward then cost more than
 * one thread doing all the work.  The big kernels report, after each region, how long the
 * calling thread worked and how long it then waited at the closing barrier
 * (gb_note_barrier_wait); a wait over a quarter of the work it followed (and > 0.5 ms) means a
 * descheduled thread.  GB_BUSY_STRIKES such regions in a row (any region without one resets
 * the count) mean a busy machine, and the kernels then use one thread for the next 2 s, after
 * which they try again.  On an idle machine the waits are microseconds and nothing changes.
 * One late region alone is not enough: in a VM the hypervisor now and then takes a vCPU away
 * for a few ms (measured on AMD Zen 5: about 1 region in 50 of a GPT-2 forward on an
 * otherwise idle machine), and backing off for 2 s on each of those cost a third of the
 * forward's speed.  GLASSBOX_ADAPTIVE_THREADS=0 turns this off. */
#define GB_BUSY_STRIKES 3
static atomic_llong busy_until_ns = 0;
static atomic_int busy_strikes = 0;
static int adaptive = -1; /* -1: not read yet */

int64_t gb_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void gb_note_barrier_wait(int64_t work_ns, int64_t wait_ns) {
    if (adaptive < 0) {
        const char *e = getenv("GLASSBOX_ADAPTIVE_THREADS");
        adaptive = !(e && e[0] == '0');
    }
    if (!adaptive) return;
    if (!(wait_ns > 500000 && wait_ns > work_ns / 4)) { /* (no 4 * wait_ns: it could overflow) */
        atomic_store_explicit(&busy_strikes, 0, memory_order_relaxed);
        return;
    }
    if (atomic_fetch_add_explicit(&busy_strikes, 1, memory_order_relaxed) + 1 >= GB_BUSY_STRIKES) {
        atomic_store_explicit(&busy_strikes, 0, memory_order_relaxed);
        atomic_store_explicit(&busy_until_ns, gb_now_ns() + 2000000000, memory_order_relaxed);
    }
}

void gb_note_region(int64_t t_start_ns, int64_t busy_ns) {
    gb_note_barrier_wait(busy_ns, gb_now_ns() - t_start_ns - busy_ns);
}

void gb_reset_busy(void) {
    atomic_store_explicit(&busy_strikes, 0, memory_order_relaxed);
    atomic_store_explicit(&busy_until_ns, 0, memory_order_relaxed);
}

int gb_machine_busy(void) {
    const long long until = atomic_load_explicit(&busy_until_ns, memory_order_relaxed);
    return until != 0 && gb_now_ns() < until;
}

int gb_team_size(void) { return gb_machine_busy() ? 1 : gb_max_threads(); }

int gb_threads_for(int64_t work) {
    const int max = gb_max_threads();
    if (max <= 1 || work < ((int64_t)1 << 20)) return 1;
    if (gb_machine_busy()) return 1;
    const int64_t cap = work >> 20;
    return cap < max ? (int)cap : max;
}

int gb_in_forked_child(void) { return forked_child; }

/* ---------------------------------------------------------- GEMM workspace */
/* One growing, 64-byte aligned buffer per calling thread, kept between calls: a GEMM's packed
 * B round and A blocks are ~8 MB, and fresh buffers of that size come from mmap, so each call
 * paid for page faults and the kernel zeroing the pages (12% of a GPT-2 forward in perf).
 * Freed when the thread exits (pthread key destructor). */
#ifdef GB_HAVE_ATFORK
static pthread_key_t ws_key;
static pthread_once_t ws_once = PTHREAD_ONCE_INIT;
typedef struct { void *p; size_t n; } gb_ws;
static void ws_free(void *v) {
    gb_ws *w = v;
    if (w) free(w->p);
    free(w);
}
static void ws_init(void) { (void)pthread_key_create(&ws_key, ws_free); }
#endif

void *gb_workspace(size_t bytes) {
#ifdef GB_HAVE_ATFORK
    if (pthread_once(&ws_once, ws_init) != 0) return NULL;
    gb_ws *w = pthread_getspecific(ws_key);
    if (!w) {
        w = calloc(1, sizeof *w);
        if (!w || pthread_setspecific(ws_key, w) != 0) {
            free(w);
            return NULL;
        }
    }
    if (w->n < bytes) {
        free(w->p);
        w->n = 0;
        const size_t n = (bytes + 4095) / 4096 * 4096;
        w->p = aligned_alloc(64, n);
        if (!w->p) return NULL;
        w->n = n;
    }
    return w->p;
#else
    (void)bytes;
    return NULL; /* callers fall back to malloc */
#endif
}

/* ---------------------------------------------------------------- stop flag */
static atomic_int stop_flag = 0;
static const atomic_int never_stop = 0;
static _Thread_local int stop_armed = 0; /* this thread runs an interruptible call */

const gb_stop_flag *gb_stop_token(void) { return stop_armed ? &stop_flag : &never_stop; }
void gb_stop_arm(int on) { stop_armed = on; }
void gb_stop_request(void) { atomic_store_explicit(&stop_flag, 1, memory_order_relaxed); }
void gb_stop_clear(void) { atomic_store_explicit(&stop_flag, 0, memory_order_relaxed); }
int gb_stop_pending(void) { return atomic_load_explicit(&stop_flag, memory_order_relaxed) != 0; }

static gb_isa current_isa = GB_ISA_SCALAR;
static int initialised = 0;
static char forced_error[160];

static const char *const isa_names[GB_ISA_COUNT] = {"scalar", "avx2", "avx512"};

const char *gb_isa_name(gb_isa isa) {
    return (isa >= 0 && isa < GB_ISA_COUNT) ? isa_names[isa] : "unknown";
}

int gb_isa_supported(gb_isa isa) {
    switch (isa) {
    case GB_ISA_SCALAR:
        return 1;
#if defined(__x86_64__) && defined(__GNUC__)
    case GB_ISA_AVX2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case GB_ISA_AVX512:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
               __builtin_cpu_supports("fma");
#endif
    default:
        return 0;
    }
}

static gb_isa best_isa(void) {
    for (int i = GB_ISA_COUNT - 1; i > 0; i--)
        if (gb_isa_supported((gb_isa)i)) return (gb_isa)i;
    return GB_ISA_SCALAR;
}

gb_isa gb_cpu_init(void) {
    if (initialised) return current_isa;
    initialised = 1;
#ifdef GB_HAVE_ATFORK
    static int atfork_registered = 0;
    if (!atfork_registered) atfork_registered = pthread_atfork(NULL, NULL, after_fork_in_child) == 0;
#endif
    current_isa = best_isa();
    const char *env = getenv("GLASSBOX_ISA");
    if (env && *env) {
        int found = 0;
        for (int i = 0; i < GB_ISA_COUNT; i++) {
            if (strcmp(env, isa_names[i]) == 0) {
                found = 1;
                if (gb_isa_supported((gb_isa)i)) {
                    current_isa = (gb_isa)i;
                } else {
                    snprintf(forced_error, sizeof forced_error,
                             "GLASSBOX_ISA=%s is not supported by this CPU or build; using %s",
                             env, isa_names[current_isa]);
                }
            }
        }
        if (!found)
            snprintf(forced_error, sizeof forced_error,
                     "GLASSBOX_ISA=%s is not one of scalar, avx2, avx512; using %s", env,
                     isa_names[current_isa]);
    }
    return current_isa;
}

gb_isa gb_isa_current(void) { return current_isa; }

int gb_isa_set(gb_isa isa) {
    if (isa < 0 || isa >= GB_ISA_COUNT || !gb_isa_supported(isa)) return -1;
    current_isa = isa;
    initialised = 1;
    return 0;
}

const char *gb_isa_forced_error(void) { return forced_error[0] ? forced_error : NULL; }
