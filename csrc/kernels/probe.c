/* Machine ceilings measured in-process, for the benchmarks (benchmarks/suite.py): the fp32
 * FMA throughput of an ISA and the read bandwidth of a buffer, on the threads the kernels use.
 * A benchmark reports its GEMM as a fraction of the FMA peak measured in the same run (the CPU,
 * its clock and the other load on the machine differ between runs), and its decode GEMV as a
 * fraction of the measured read bandwidth.
 *
 * FMA: each thread runs `iters` steps of ACC independent FMA chains (more than latency x
 * pipes, so the pipes stay full: AVX2 12 x 8 lanes, AVX-512 24 x 16 lanes, scalar 8 chains),
 * between two barriers; GFLOP/s = 2 * lanes * ACC * iters * threads / wall time.
 * Read: the threads sum disjoint contiguous halves of the buffer with 4 vector accumulators.
 * The sums are returned so the loops cannot be optimised away. */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* clock_gettime under -std=c11 */
#endif
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "kernels.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---------------------------------------------------------------- FMA loops (one thread) */

static float fma_scalar(int64_t iters, float seed) {
    /* 8 chains; the build has no -ffast-math and no -mfma for this file, so these stay scalar
     * multiply-adds (what the scalar path's kernels do). */
    float a[8], m = 0.999999f, c = 1e-7f;
    for (int i = 0; i < 8; i++) a[i] = seed + (float)i;
    for (int64_t t = 0; t < iters; t++)
        for (int i = 0; i < 8; i++) a[i] = a[i] * m + c;
    float s = 0.0f;
    for (int i = 0; i < 8; i++) s += a[i];
    return s;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma")
static float fma_avx2(int64_t iters, float seed) {
    const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
#define A2(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#define DECL(i) __m256 a##i = _mm256_set1_ps(seed + (float)(i));
    A2(DECL)
#undef DECL
    for (int64_t t = 0; t < iters; t++) {
#define STEP(i) a##i = _mm256_fmadd_ps(a##i, m, c);
        A2(STEP)
#undef STEP
    }
    __m256 s = _mm256_setzero_ps();
#define SUM(i) s = _mm256_add_ps(s, a##i);
    A2(SUM)
#undef SUM
#undef A2
    float out[8];
    _mm256_storeu_ps(out, s);
    return out[0] + out[7];
}

static double read_avx2(const float *p, int64_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_add_ps(s0, _mm256_loadu_ps(p + i));
        s1 = _mm256_add_ps(s1, _mm256_loadu_ps(p + i + 8));
        s2 = _mm256_add_ps(s2, _mm256_loadu_ps(p + i + 16));
        s3 = _mm256_add_ps(s3, _mm256_loadu_ps(p + i + 24));
    }
    float out[8];
    _mm256_storeu_ps(out, _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    double s = 0.0;
    for (int j = 0; j < 8; j++) s += out[j];
    for (; i < n; i++) s += p[i];
    return s;
}
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
static float fma_avx512(int64_t iters, float seed) {
    const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
#define A5(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) \
              X(12) X(13) X(14) X(15) X(16) X(17) X(18) X(19) X(20) X(21) X(22) X(23)
#define DECL(i) __m512 a##i = _mm512_set1_ps(seed + (float)(i));
    A5(DECL)
#undef DECL
    for (int64_t t = 0; t < iters; t++) {
#define STEP(i) a##i = _mm512_fmadd_ps(a##i, m, c);
        A5(STEP)
#undef STEP
    }
    __m512 s = _mm512_setzero_ps();
#define SUM(i) s = _mm512_add_ps(s, a##i);
    A5(SUM)
#undef SUM
#undef A5
    return _mm512_reduce_add_ps(s);
}
#pragma GCC pop_options
#endif

static double read_scalar(const float *p, int64_t n) {
    float s[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int u = 0; u < 8; u++) s[u] += p[i + u];
    double t = 0.0;
    for (int u = 0; u < 8; u++) t += s[u];
    for (; i < n; i++) t += p[i];
    return t;
}

/* flops per iteration of one thread's loop for `isa` */
static double fma_flops_per_iter(gb_isa isa) {
    switch (isa) {
    case GB_ISA_AVX2: return 2.0 * 8 * 12;
    case GB_ISA_AVX512: return 2.0 * 16 * 24;
    default: return 2.0 * 8;
    }
}

int gb_probe_fma(gb_isa isa, int64_t iters, int nthreads, double *gflops, double *checksum) {
    if (iters < 1 || nthreads < 1 || !gb_isa_supported(isa)) return -1;
    double t0 = 0.0, t1 = 0.0, sum = 0.0;
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads) reduction(+ : sum)
#endif
    {
#ifdef _OPENMP
#pragma omp barrier
#pragma omp master
#endif
        t0 = now_s();
#ifdef _OPENMP
#pragma omp barrier
#endif
        float r;
        switch (isa) {
#if defined(__x86_64__) && defined(__GNUC__)
        case GB_ISA_AVX2: r = fma_avx2(iters, 1.0f); break;
        case GB_ISA_AVX512: r = fma_avx512(iters, 1.0f); break;
#endif
        default: r = fma_scalar(iters, 1.0f); break;
        }
        sum += r;
#ifdef _OPENMP
#pragma omp barrier
#pragma omp master
#endif
        t1 = now_s();
    }
    int used = nthreads;
#ifndef _OPENMP
    used = 1;
#endif
    *gflops = fma_flops_per_iter(isa) * (double)iters * used / (t1 - t0) * 1e-9;
    *checksum = sum;
    return 0;
}

int gb_probe_read(const float *p, int64_t n, int nthreads, double *gbps, double *checksum) {
    if (n < 0 || nthreads < 1) return -1;
    const int use_avx2 = gb_isa_current() != GB_ISA_SCALAR;
    double sum = 0.0;
    const double t0 = now_s();
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nthreads) reduction(+ : sum)
#endif
    for (int t = 0; t < nthreads; t++) {
        const int64_t lo = n * t / nthreads, hi = n * (t + 1) / nthreads;
#if defined(__x86_64__) && defined(__GNUC__)
        sum += use_avx2 ? read_avx2(p + lo, hi - lo) : read_scalar(p + lo, hi - lo);
#else
        (void)use_avx2;
        sum += read_scalar(p + lo, hi - lo);
#endif
    }
    const double t1 = now_s();
    *gbps = (double)n * sizeof(float) / (t1 - t0) * 1e-9;
    *checksum = sum;
    return 0;
}
