/*
 * Int8 dot products for GGUF block weights (Q8_0, Q4_0, Q4_1): the opt-in
 * "int8 activations" mode (gb_set_int8_activations; glassbox.set_int8_activations).
 *
 * The default path decodes weight blocks to fp32 and multiplies in fp32, which
 * gives the fp32 GEMM of the dequantised matrix (what the parity tests check).
 * At a few rows (generation) that decode is most of the work.  In int8 mode the
 * activations are quantised instead, per block of 32 along K, to
 *     dx = amax / 127,  qx[i] = round_half_even(x[i] * (1 / dx)) in [-127, 127]
 * (dx = 0 and qx = 0 for an all-zero block; dx = NaN for a block holding a
 * non-finite value, so the outputs it touches are NaN), and each weight block
 * meets them as integers:
 *     Q8_0:  (dw * dx) * isum,                        isum = sum w[i] qx[i]
 *     Q4_0:  (dw * dx) * (isum - 8 * qs),             isum = sum u[i] qx[i], qs = sum qx[i]
 *     Q4_1:  (dw * dx) * isum + mw * (dx * qs)        (u the stored nibbles 0..15)
 * accumulated block by block in fp32 (one accumulator per output, blocks in
 * order), then C = (accumulate ? C : 0) + sum, + bias.  The integer sums are
 * exact (|isum| < 2^24 converts exactly), and the float operations are the same
 * separate IEEE operations in every implementation (-std=c11: no contraction),
 * so the scalar reference below, the AVX2 kernel (vpmaddubsw) and the AVX-512
 * VNNI kernel (vpdpbusd) give bitwise identical results, for any thread count.
 *
 * With more than GB_INT8_DOT_ROWS rows (prompt processing, batches) the same
 * quantised activations, dx * qx as fp32, go through the fp32 GEMM of the
 * dequantised weights: the same quantisation, so a token's activations do not
 * depend on whether it was decoded alone or in a batch beyond fp32 rounding
 * (~1e-6 relative), and the blocked GEMM keeps its speed.
 *
 * Numerics: this is llama.cpp's scheme in spirit (8-bit activation blocks),
 * not its code; outputs differ from the fp32 path by the activation rounding
 * (about 0.4% of a block's largest value per element).  Off by default.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static atomic_int int8_mode = 0;

void gb_set_int8_activations(int on) {
    atomic_store_explicit(&int8_mode, on ? 1 : 0, memory_order_relaxed);
}

int gb_int8_activations(void) { return atomic_load_explicit(&int8_mode, memory_order_relaxed); }

int gb_int8_dtype(int dtype) { return dtype == GB_Q8_0 || dtype == GB_Q4_0 || dtype == GB_Q4_1; }

/* ------------------------------------------------------- activation quantisation */

void gb_quantize_act_row(int8_t *q, float *d, int32_t *qs, const float *x, int64_t K) {
    for (int64_t b = 0; b < K / GB_QBLOCK; b++) {
        const float *xb = x + b * GB_QBLOCK;
        int8_t *qb = q + b * GB_QBLOCK;
        float amax = 0.0f;
        int finite = 1;
        for (int i = 0; i < GB_QBLOCK; i++) {
            const float a = fabsf(xb[i]);
            if (!(a <= 3.4028234663852886e38f)) finite = 0; /* inf or nan */
            else if (a > amax) amax = a;
        }
        if (!finite) {
            memset(qb, 0, GB_QBLOCK);
            d[b] = NAN;
            qs[b] = 0;
            continue;
        }
        const float db = amax / 127.0f;
        const float id = db > 0.0f ? 1.0f / db : 0.0f;
        int32_t s = 0;
        for (int i = 0; i < GB_QBLOCK; i++) {
            float v = nearbyintf(xb[i] * id); /* round half to even (default rounding mode) */
            if (v > 127.0f) v = 127.0f;
            if (v < -127.0f) v = -127.0f;
            qb[i] = (int8_t)v;
            s += qb[i];
        }
        d[b] = db;
        qs[b] = s;
    }
}

/* ------------------------------------------------------------- scalar reference */

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | ((uint16_t)p[1] << 8)); }

/* C[m, j] for rows n0 + j (j < r) of W: rows[j] point at each weight row. */
static void int8_dot_scalar(float *C, int64_t ldc, const int8_t *qa, const float *da,
                            const int32_t *qsa, int64_t K, int64_t mr,
                            const uint8_t *const rows[GB_INT8_NR], int64_t r, int dtype,
                            int accumulate, const float *bias) {
    const int64_t kb = K / GB_QBLOCK, bb = gb_dtype_block_bytes(dtype);
    for (int64_t m = 0; m < mr; m++) {
        for (int64_t j = 0; j < r; j++) {
            float acc = accumulate ? C[m * ldc + j] : 0.0f;
            for (int64_t b = 0; b < kb; b++) {
                const uint8_t *p = rows[j] + b * bb;
                const int8_t *x = qa + m * K + b * GB_QBLOCK;
                const float dx = da[m * kb + b], dw = gb_half_to_float(rd16(p));
                int32_t isum = 0;
                if (dtype == GB_Q8_0) {
                    for (int i = 0; i < GB_QBLOCK; i++) isum += (int32_t)(int8_t)p[2 + i] * x[i];
                    acc = acc + (dw * dx) * (float)isum;
                } else {
                    const uint8_t *nib = p + (dtype == GB_Q4_1 ? 4 : 2);
                    for (int i = 0; i < 16; i++)
                        isum += (int32_t)(nib[i] & 15) * x[i] + (int32_t)(nib[i] >> 4) * x[i + 16];
                    if (dtype == GB_Q4_0) {
                        acc = acc + (dw * dx) * (float)(isum - 8 * qsa[m * kb + b]);
                    } else {
                        const float mw = gb_half_to_float(rd16(p + 2));
                        acc = acc + ((dw * dx) * (float)isum + mw * (dx * (float)qsa[m * kb + b]));
                    }
                }
            }
            C[m * ldc + j] = bias ? acc + bias[j] : acc;
        }
    }
}

/* ------------------------------------------------------------- SIMD kernels (x86-64) */

typedef void (*int8_dot_fn)(float *C, int64_t ldc, const int8_t *qa, const float *da,
                            const int32_t *qsa, int64_t K, int64_t mr,
                            const uint8_t *const rows[GB_INT8_NR], int64_t r, int dtype,
                            int accumulate, const float *bias);

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* gb_quantize_act_row with AVX2, the same values: the block maximum of |x| is exact in any
 * order, and the products, rounding (vroundps in the current mode, as nearbyintf) and clamps
 * are the same IEEE operations. */
#pragma GCC push_options
#pragma GCC target("avx2,fma")
static void quantize_act_row_avx2(int8_t *q, float *d, int32_t *qs, const float *x, int64_t K) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 fmax = _mm256_set1_ps(3.4028234663852886e38f);
    const __m256 hi = _mm256_set1_ps(127.0f), lo = _mm256_set1_ps(-127.0f);
    for (int64_t b = 0; b < K / GB_QBLOCK; b++) {
        const float *xb = x + b * GB_QBLOCK;
        __m256 v[4], amax = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
        for (int i = 0; i < 4; i++) {
            v[i] = _mm256_loadu_ps(xb + 8 * i);
            const __m256 a = _mm256_and_ps(v[i], absmask);
            bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, fmax, _CMP_NLE_UQ)); /* inf or nan */
            amax = _mm256_max_ps(amax, a);
        }
        if (_mm256_movemask_ps(bad)) {
            memset(q + b * GB_QBLOCK, 0, GB_QBLOCK);
            d[b] = NAN;
            qs[b] = 0;
            continue;
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
        const float db = _mm_cvtss_f32(m4) / 127.0f;
        const __m256 id = _mm256_set1_ps(db > 0.0f ? 1.0f / db : 0.0f);
        __m256i iv[4];
        for (int i = 0; i < 4; i++) {
            __m256 r = _mm256_round_ps(_mm256_mul_ps(v[i], id), _MM_FROUND_CUR_DIRECTION);
            r = _mm256_max_ps(_mm256_min_ps(r, hi), lo);
            iv[i] = _mm256_cvtps_epi32(r); /* integral already: exact */
        }
        /* int32 -> int8 in order: packs interleave 128-bit lanes, the permute undoes it */
        const __m256i w01 = _mm256_packs_epi32(iv[0], iv[1]), w23 = _mm256_packs_epi32(iv[2], iv[3]);
        const __m256i b8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(w01, w23),
                                                       _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(q + b * GB_QBLOCK), b8);
        __m256i sum = _mm256_add_epi32(_mm256_add_epi32(iv[0], iv[1]), _mm256_add_epi32(iv[2], iv[3]));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(1, 0, 3, 2)));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(2, 3, 0, 1)));
        d[b] = db;
        qs[b] = _mm_cvtsi128_si32(s4);
    }
}
#pragma GCC pop_options

/* AVX2: u8 x s8 products in pairs (vpmaddubsw, int16: |2 * 15 * 127| and, with the sign
 * trick for Q8_0, |2 * 128 * 127| fit without saturation), pairs of pairs (vpmaddwd). */
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define GB_I8DOT_NAME int8_dot_avx2
#define GB_I8DOT(u, s) _mm256_madd_epi16(_mm256_maddubs_epi16((u), (s)), _mm256_set1_epi16(1))
#include "quant_dot_body.h"
#undef GB_I8DOT
#undef GB_I8DOT_NAME
#pragma GCC pop_options

/* AVX-512 VNNI (256-bit form, AVX512VL): four u8 x s8 products summed into each int32 lane
 * (vpdpbusd), the same lanes as the AVX2 pair of instructions, so the same sums. */
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512vl,avx512vnni")
#define GB_I8DOT_NAME int8_dot_vnni
#define GB_I8DOT(u, s) _mm256_dpbusd_epi32(_mm256_setzero_si256(), (u), (s))
#define GB_I8DOT_WIDE 1
#include "quant_dot_body.h"
#undef GB_I8DOT_WIDE
#undef GB_I8DOT
#undef GB_I8DOT_NAME
#pragma GCC pop_options

int gb_cpu_has_vnni(void) {
    return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl");
}
#else
int gb_cpu_has_vnni(void) { return 0; }
#endif

/* the quantisation for `isa`: the AVX2 form (same values) on x86-64 AVX2 / AVX-512 */
static void quantize_act_row_isa(gb_isa isa, int8_t *q, float *d, int32_t *qs, const float *x,
                                 int64_t K) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (isa == GB_ISA_AVX512 || isa == GB_ISA_AVX2) {
        quantize_act_row_avx2(q, d, qs, x, K);
        return;
    }
#endif
    (void)isa;
    gb_quantize_act_row(q, d, qs, x, K);
}

static int8_dot_fn pick(gb_isa isa) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (isa == GB_ISA_AVX512 && gb_cpu_has_vnni()) return int8_dot_vnni;
    if (isa == GB_ISA_AVX512 || isa == GB_ISA_AVX2) return int8_dot_avx2;
#endif
    (void)isa;
    return int8_dot_scalar;
}

const char *gb_int8_kernel_name(gb_isa isa) {
    const int8_dot_fn f = pick(isa);
#if defined(__x86_64__) && defined(__GNUC__)
    if (f == int8_dot_vnni) return "avx512-vnni (vpdpbusd)";
    if (f == int8_dot_avx2) return "avx2 (vpmaddubsw)";
#endif
    (void)f;
    return "scalar";
}

/* ------------------------------------------------------------------ driver */

/* prefetch distance in groups of GB_INT8_NR rows (2 and 4 measured best, 1 and 8 worse) */
#define GB_INT8_PREFETCH_GROUPS 4

int gb_gemm_int8(gb_isa isa, float *C, int64_t ldc, const float *A, int64_t lda,
                 const gb_matrix *B, const float *bias, int64_t M, int accumulate) {
    const int64_t K = B->K, N = B->N, kb = K / GB_QBLOCK;
    if (!gb_int8_dtype(B->dtype) || K % GB_QBLOCK != 0) return -1;
    /* sizes: M, K, N are checked by the callers' shape validation (each fits memory already
     * holding A); the products below are bounded by M * K, A's own element count */
    if (M > GB_INT8_DOT_ROWS) {
        /* the same quantisation, through the fp32 GEMM of the dequantised weights */
        float *Aq = malloc((size_t)M * (size_t)K * sizeof(float));
        int8_t *q = malloc((size_t)K);
        float *d = malloc((size_t)kb * sizeof(float));
        int32_t *qs = malloc((size_t)kb * sizeof(int32_t));
        int rc = -1;
        if (Aq && q && d && qs) {
            for (int64_t m = 0; m < M; m++) {
                quantize_act_row_isa(isa, q, d, qs, A + m * lda, K);
                for (int64_t k = 0; k < K; k++) Aq[m * K + k] = d[k / GB_QBLOCK] * (float)q[k];
            }
            rc = gb_gemm_isa_float(isa, C, ldc, Aq, K, B, bias, M, accumulate);
        }
        free(Aq);
        free(q);
        free(d);
        free(qs);
        return rc;
    }
    int8_t *qa = malloc((size_t)M * (size_t)K + 64);
    float *da = malloc((size_t)(M * kb + 1) * sizeof(float));
    int32_t *qsa = malloc((size_t)(M * kb + 1) * sizeof(int32_t));
    if (!qa || !da || !qsa) {
        free(qa);
        free(da);
        free(qsa);
        return -1;
    }
    for (int64_t m = 0; m < M; m++)
        quantize_act_row_isa(isa, qa + m * K, da + m * kb, qsa + m * kb, A + m * lda, K);

    const int8_dot_fn dot = pick(isa);
    const int64_t rb = gb_dtype_row_bytes(B->dtype, B->ld), NB = 64, nblocks = (N + NB - 1) / NB;
    const uint8_t *data = (const uint8_t *)B->data;
    const gb_stop_flag *stop = gb_stop_token();
    /* Threads: gb_threads_for's threshold is in fp32-GEMM multiply-adds; these few-row
     * integer dots are bound by block decoding, not FMAs, so their work counts 8x (chosen by
     * measurement: SmolLM2-135M Q4_1 decode on 2 threads, 74 tok/s at 1/4x, 91 at 4x, 100 at
     * 8x; a 576 x 576 layer 16 us on one thread, 11 us on two).  Thread 0 times its share
     * and its wait at the closing barrier for the busy-machine back-off, as the blocked GEMM
     * does. */
    const int nthreads = gb_threads_for(M * N * K * 8);
    const int timing = nthreads > 1;
    const int64_t t_start = timing ? gb_now_ns() : 0;
    int64_t busy0 = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads)
#endif
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        const int64_t t0 = timing && tid == 0 ? gb_now_ns() : 0;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1) nowait
#endif
        for (int64_t blk = 0; blk < nblocks; blk++) {
            if (gb_stop_requested(stop)) continue; /* interrupted: C is discarded */
            const int64_t n1 = blk * NB + NB < N ? blk * NB + NB : N;
            for (int64_t n0 = blk * NB; n0 < n1; n0 += GB_INT8_NR) {
                const int64_t r = n1 - n0 < GB_INT8_NR ? n1 - n0 : GB_INT8_NR;
                const uint8_t *rows[GB_INT8_NR];
                for (int64_t j = 0; j < GB_INT8_NR; j++) rows[j] = data + (n0 + (j < r ? j : 0)) * rb;
                /* software prefetch of the rows GB_INT8_PREFETCH_GROUPS groups ahead: the four
                 * rows are read block by block, four short interleaved streams the hardware
                 * prefetcher does not follow from DRAM (AMD Zen 5, the 30 MB Q8_0 49152 x 576
                 * unembedding, 1 thread: 6.2 GB/s without, 35 GB/s with, the probe's 37) */
                if (n0 + GB_INT8_PREFETCH_GROUPS * GB_INT8_NR < N) {
                    const int64_t pn = n0 + GB_INT8_PREFETCH_GROUPS * GB_INT8_NR;
                    const int64_t nr = N - pn < GB_INT8_NR ? N - pn : GB_INT8_NR;
                    const uint8_t *pp = data + pn * rb;
                    for (int64_t off = 0; off < nr * rb; off += 64) __builtin_prefetch(pp + off, 0, 3);
                }
                for (int64_t m0 = 0; m0 < M; m0 += 4)
                    dot(C + m0 * ldc + n0, ldc, qa + m0 * K, da + m0 * kb, qsa + m0 * kb, K,
                        M - m0 < 4 ? M - m0 : 4, rows, r, B->dtype, accumulate,
                        bias ? bias + n0 : NULL);
            }
        }
        if (t0) busy0 = gb_now_ns() - t0;
    }
    if (timing) gb_note_region(t_start, busy0);
    free(qa);
    free(da);
    free(qsa);
    return 0;
}
