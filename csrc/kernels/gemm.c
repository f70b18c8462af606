/*
 * GEMM: C[M, N] = (accumulate ? C : 0) + A[M, K] . B(K, N) + bias[N]
 *
 * This file holds
 *  - the scalar reference (GB_ISA_SCALAR): plain loops, fp32 sums in k order;
 *    it is the oracle the SIMD paths are tested against and the only path on
 *    non-x86 builds;
 *  - B packing: any gb_matrix layout / dtype -> fp32 panels [kc][NR] with the
 *    columns past N zero-padded (bf16 / f16 are widened here and GGUF block
 *    types (trans == 1 only) are decoded here, panel by panel and only over
 *    the panel's K range, by quant.c's decoders; the microkernels only ever
 *    see fp32).  For block types the K blocks are whole quant blocks (KC
 *    rounded down to a multiple of 32 / 256);
 *  - small-M paths for x @ W^T on AVX2 (M <= 4, generation): fp32 and bf16 W
 *    are read in place (bf16 widened in registers); block-type W is decoded 4 rows at a time into a per-thread
 *    buffer and fed to the same dot kernel;
 *  - the blocked driver (GotoBLAS/BLIS style) shared by the SIMD paths, which
 *    supply a "panel" function (gemm_avx2.c, gemm_avx512.c) that runs their
 *    register-blocked microkernel over rows of A against one packed panel.
 *
 * Blocking (per ISA: MR x NR register tile, KC depth):
 *   for each K block [k0, k0 + kc)                (sequential, all threads)
 *     for each round of up to GB_GEMM_NC columns
 *       parallel: pack B(k0:k0+kc, round's panels) -> shared buffer [np][kc][NR]
 *       parallel over items (M chunk mc, panel j), dynamic schedule (a thread
 *       descheduled by a busy machine does not hold the others at the barrier)
 *         pack A(chunk mc, k0:k0+kc) into the thread's A block when mc changes
 *         for each MR-row tile of chunk mc: microkernel (kc x NR panel in L1)
 *   The A block of a chunk (rows x kc) stays in L2 while a thread walks its
 *   panels.  Microkernels start their accumulators from C for every K block
 *   after the first, so each C element is one unbroken FMA chain over k:
 *   results depend on neither KC nor the thread count nor the partition
 *   (every C element is written by exactly one thread per K block).
 */
#include <stdlib.h>
#include <string.h>

#include "act_body.h"
#include "kernels.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* ------------------------------------------------------------- scratch */

/* A kernel's float scratch: the calling thread's reused workspace, or (when that cannot grow)
 * a buffer of its own, returned in *owned for the caller to free (NULL otherwise). */
static float *scratch(size_t bytes, float **owned) {
    float *p = gb_workspace(bytes);
    *owned = NULL;
    if (!p) p = *owned = aligned_alloc(64, (bytes + 63) / 64 * 64);
    return p;
}

/* ------------------------------------------------------- element widening */

static inline float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16; /* bf16 is the top half of an fp32 */
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* IEEE 754 binary16 -> binary32, exact for every input (portable C). */
static inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign; /* +-0 */
        } else {
            /* subnormal: mant * 2^-24, exact in fp32 */
            float f = (float)mant * 5.9604644775390625e-8f;
            memcpy(&bits, &f, sizeof bits);
            bits |= sign;
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13); /* inf, nan (payload kept) */
    } else {
        bits = sign | ((exp + (127 - 15)) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Element i of a float32 / 16-bit array at `base`, which need not be aligned: weights kept as
 * stored are views of a file mapping, and a safetensors data buffer starts at 8 + header
 * length, which may be any byte offset.  memcpy is the defined way to read them (compilers
 * turn it into a plain unaligned load). */
static inline float ld_f32(const void *base, int64_t i) {
    float f;
    memcpy(&f, (const char *)base + i * (int64_t)sizeof f, sizeof f);
    return f;
}
static inline uint16_t ld_u16(const void *base, int64_t i) {
    uint16_t h;
    memcpy(&h, (const char *)base + i * (int64_t)sizeof h, sizeof h);
    return h;
}

/* B element at flat offset `off` of B->data, widened to fp32. */
static inline float load_elem(const void *data, int dtype, int64_t off) {
    switch (dtype) {
    case GB_BF16:
        return bf16_to_f32(ld_u16(data, off));
    case GB_F16:
        return f16_to_f32(ld_u16(data, off));
    default:
        return ld_f32(data, off);
    }
}

/* Flat offset of B(k, n) (see gb_matrix in kernels.h). */
static inline int64_t b_offset(const gb_matrix *B, int64_t k, int64_t n) {
    if (B->trans) return n * B->ld + k;
    return (n / B->group) * B->group_stride + k * B->ld + (n % B->group);
}

static int dtype_ok(int dtype) { return dtype >= GB_F32 && dtype < GB_DTYPE_COUNT; }

/* GGUF block types (quant.c): only in the file layout, decoded a whole
 * number of blocks at a time. */
static int is_block(int dtype) { return dtype >= GB_Q8_0 && dtype < GB_DTYPE_COUNT; }

/* quant.c (internal): decode n elements of a stored row with the given ISA's
 * decoders (bit-identical results for every ISA). */
void gb_dequantize_row_isa(gb_isa isa, float *dst, const void *src, int dtype, int64_t n);

/* Bytes from one stored row of a block-type B to the next. */
static inline int64_t block_row_bytes(const gb_matrix *B) {
    return gb_dtype_row_bytes(B->dtype, B->ld);
}

/* ------------------------------------------------------ scalar reference */

/* Block-type B (file layout): parallel over the N stored rows; each thread
 * decodes row n once into its own K-float buffer, then forms every C[m, n]
 * as the same k-ordered fp32 sum as the float path below (so the result is
 * bitwise the scalar GEMM of the dequantised matrix). */
static int gemm_scalar_blocks(float *C, int64_t ldc, const float *A, int64_t lda,
                              const gb_matrix *B, const float *bias, int64_t M,
                              int accumulate) {
    const int64_t K = B->K, N = B->N, rb = block_row_bytes(B);
    const uint8_t *data = (const uint8_t *)B->data;
    const int nthreads = gb_threads_for(M * N * K);
    float *rows = malloc((size_t)nthreads * (size_t)K * sizeof(float));
    if (!rows) return -1;
    const gb_stop_flag *stop = gb_stop_token();
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads)
#endif
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *w = rows + (size_t)tid * (size_t)K;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 16)
#endif
        for (int64_t n = 0; n < N; n++) {
            if (gb_stop_requested(stop)) continue; /* interrupted: C is discarded */
            gb_dequantize_row_isa(GB_ISA_SCALAR, w, data + n * rb, B->dtype, K);
            for (int64_t m = 0; m < M; m++) {
                const float *a = A + m * lda;
                float s = 0.0f;
                for (int64_t k = 0; k < K; k++) s += a[k] * w[k];
                float out = accumulate ? C[m * ldc + n] + s : s;
                C[m * ldc + n] = bias ? out + bias[n] : out;
            }
        }
    }
    free(rows);
    return 0;
}

/* Oracle: each C element is an fp32 sum over k in increasing order, then
 * C = (accumulate ? C : 0) + sum + bias.  Rows are independent, so OpenMP
 * over rows does not change results. */
static int gemm_scalar(float *C, int64_t ldc, const float *A, int64_t lda,
                       const gb_matrix *B, const float *bias, int64_t M,
                       int accumulate) {
    const int64_t K = B->K, N = B->N;
    const void *data = B->data;
    const int dtype = B->dtype;
    if (is_block(dtype)) return gemm_scalar_blocks(C, ldc, A, lda, B, bias, M, accumulate);
    const gb_stop_flag *stop = gb_stop_token();
    if (B->trans) {
        /* B(k, n) = data[n*ld + k]: a dot product along contiguous memory. */
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(gb_threads_for(M * N * K))
#endif
        for (int64_t m = 0; m < M; m++) {
            const float *a = A + m * lda;
            float *c = C + m * ldc;
            for (int64_t n = 0; n < N; n++) {
                if (gb_stop_requested(stop)) break; /* interrupted: C is discarded */
                float s = 0.0f;
                for (int64_t k = 0; k < K; k++)
                    s += a[k] * load_elem(data, dtype, n * B->ld + k);
                float out = accumulate ? c[n] + s : s;
                c[n] = bias ? out + bias[n] : out;
            }
        }
        return 0;
    }
    /* trans == 0: walk B row by row (contiguous within a group) and keep the
     * per-column sums in a row buffer; same summation order as above. */
    const int nthreads = gb_threads_for(M * N * K);
    float *sums = malloc((size_t)nthreads * (size_t)(N > 0 ? N : 1) * sizeof(float));
    if (!sums) return -1;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nthreads)
#endif
    for (int64_t m = 0; m < M; m++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *s = sums + (int64_t)tid * N;
        const float *a = A + m * lda;
        float *c = C + m * ldc;
        for (int64_t n = 0; n < N; n++) s[n] = 0.0f;
        for (int64_t k = 0; k < K; k++) {
            if (gb_stop_requested(stop)) break; /* interrupted: C is discarded */
            const float ak = a[k];
            for (int64_t n = 0; n < N; n++)
                s[n] += ak * load_elem(data, dtype, b_offset(B, k, n));
        }
        for (int64_t n = 0; n < N; n++) {
            float out = accumulate ? c[n] + s[n] : s[n];
            c[n] = bias ? out + bias[n] : out;
        }
    }
    free(sums);
    return 0;
}

/* ------------------------------------------------------------- B packing */

#define GB_MAX_NR 64

/* dst[k*NR + j] = B(k0 + k, n0 + j) widened to fp32, for k < kc, j < nr;
 * dst[k*NR + j] = 0 for nr <= j < NR (edge panel padding).
 * Block types: k0 and kc are whole blocks (the driver aligns its K blocks),
 * and each row's kc elements are decoded into `scratch` (>= kc floats) and
 * then copied down the panel column: only this panel's K range is decoded. */
static void pack_panel(float *restrict dst, float *restrict scratch,
                       const gb_matrix *B, int64_t k0, int64_t kc, int64_t n0,
                       int64_t nr, int64_t NR) {
    const int dtype = B->dtype;
    const void *data = B->data;
    if (nr < NR)
        for (int64_t k = 0; k < kc; k++)
            for (int64_t j = nr; j < NR; j++) dst[k * NR + j] = 0.0f;

    if (is_block(dtype)) {
        const int64_t rb = block_row_bytes(B);
        const int64_t off = k0 / gb_dtype_block_elems(dtype) * gb_dtype_block_bytes(dtype);
        for (int64_t j = 0; j < nr; j++) {
            const uint8_t *src = (const uint8_t *)data + (n0 + j) * rb + off;
            /* the blocked driver only runs on SIMD ISAs, all of which have AVX2 */
            gb_dequantize_row_isa(GB_ISA_AVX2, scratch, src, dtype, kc);
            float *d = dst + j;
            for (int64_t k = 0; k < kc; k++) d[k * NR] = scratch[k];
        }
        return;
    }

    if (B->trans) {
        /* Source rows n are contiguous in k: read each row once and scatter
         * it down column j of the panel (the panel sits in L1). */
        for (int64_t j = 0; j < nr; j++) {
            const int64_t base = (n0 + j) * B->ld + k0;
            float *d = dst + j;
            switch (dtype) {
            case GB_F32:
                for (int64_t k = 0; k < kc; k++) d[k * NR] = ld_f32(data, base + k);
                break;
            case GB_BF16:
                for (int64_t k = 0; k < kc; k++) d[k * NR] = bf16_to_f32(ld_u16(data, base + k));
                break;
            default:
                for (int64_t k = 0; k < kc; k++) d[k * NR] = f16_to_f32(ld_u16(data, base + k));
                break;
            }
        }
        return;
    }

    /* trans == 0.  Column n lives at (n / group) * group_stride + n % group
     * plus k * ld.  When the panel's columns are consecutive in memory (all
     * in one group: the plain [K, N] case and most per-head panels) each k is
     * a contiguous row copy; otherwise gather through per-column offsets. */
    int64_t off[GB_MAX_NR];
    int contiguous = 1;
    for (int64_t j = 0; j < nr; j++) {
        const int64_t n = n0 + j;
        off[j] = (n / B->group) * B->group_stride + (n % B->group);
        if (off[j] != off[0] + j) contiguous = 0;
    }
    for (int64_t k = 0; k < kc; k++) {
        const int64_t row = (k0 + k) * B->ld;
        float *restrict d = dst + k * NR;
        if (contiguous) {
            const int64_t base = row + off[0];
            switch (dtype) {
            case GB_F32: {
                /* an inline copy: nr <= 64 floats, and a memcpy call per row of the panel
                 * cost 16% of a GEMM */
                const char *src = (const char *)data + base * (int64_t)sizeof(float);
                if (nr == 16) {
                    float t[16];
                    memcpy(t, src, sizeof t); /* fixed size: inlined as vector moves */
                    memcpy(d, t, sizeof t);
                } else {
                    for (int64_t j = 0; j < nr; j++) d[j] = ld_f32(src, j);
                }
                break;
            }
            case GB_BF16:
                for (int64_t j = 0; j < nr; j++) d[j] = bf16_to_f32(ld_u16(data, base + j));
                break;
            default:
                for (int64_t j = 0; j < nr; j++) d[j] = f16_to_f32(ld_u16(data, base + j));
                break;
            }
        } else {
            for (int64_t j = 0; j < nr; j++) d[j] = load_elem(data, dtype, row + off[j]);
        }
    }
}

/* `np` full panels of a plain fp32 B whose columns [n0, n0 + np * NR) lie in one group:
 * row by row, so that B is read in contiguous runs of np * NR floats (packing one panel at a
 * time reads NR floats per row at a stride of ld, which the prefetchers serve poorly: 10% of
 * a GEMM's time at 2.5 GB/s).  Same result as np calls of pack_panel. */
static void pack_panels_plain_f32(float *restrict dst, const gb_matrix *B, int64_t k0,
                                  int64_t kc, int64_t n0, int64_t np, int64_t NR) {
    const char *base = (const char *)B->data +
                       ((n0 / B->group) * B->group_stride + (n0 % B->group)) * (int64_t)sizeof(float);
    for (int64_t k = 0; k < kc; k++) {
        const char *src = base + (k0 + k) * B->ld * (int64_t)sizeof(float);
        for (int64_t p = 0; p < np; p++) {
            float *d = dst + p * kc * NR + k * NR;
            if (NR == 16) {
                float t[16];
                memcpy(t, src + p * 16 * (int64_t)sizeof(float), sizeof t);
                memcpy(d, t, sizeof t);
            } else {
                for (int64_t j = 0; j < NR; j++) d[j] = ld_f32(src, p * NR + j);
            }
        }
    }
}

/* -------------------------------------------------- SIMD panel functions */

/* A panel function computes, for rows [0, m) of packed A (see pack_a) and
 * one kc x NR panel of B (row stride ldb: NR when packed), the nr <= NR valid
 * columns of C:  C = (load ? C : 0) + A . Bpanel  (+ bias if bias != NULL),
 * continuing the FMA chain from C when load != 0.  Defined in the ISA files;
 * the prototype there must match this one. */
typedef void (*gb_gemm_panel_fn)(const float *Bp, int64_t ldb, int64_t kc,
                                 int64_t nr, const float *Ap, int64_t m,
                                 float *C, int64_t ldc, int load,
                                 const float *bias);

typedef struct {
    gb_gemm_panel_fn panel;
    int64_t mr, nr, kc; /* register tile MR x NR, K block */
    int64_t mc;         /* max rows per M chunk (A block of mc x kc in L2) */
} gb_gemm_kernel;

#if defined(__x86_64__) && defined(__GNUC__)
void gb_gemm_panel_avx2(const float *Bp, int64_t ldb, int64_t kc, int64_t nr,
                        const float *Ap, int64_t m, float *C, int64_t ldc,
                        int load, const float *bias);
void gb_gemm_panel_avx512(const float *Bp, int64_t ldb, int64_t kc, int64_t nr,
                          const float *Ap, int64_t m, float *C, int64_t ldc,
                          int load, const float *bias);
void gb_gemm_dot_avx2(float *C, int64_t ldc, const float *A, int64_t lda,
                      const float *W, int64_t ldw, int64_t M, int64_t K,
                      int64_t n0, int64_t n1, int accumulate, const float *bias);

void gb_gemm_dot_bf16_avx2(float *C, int64_t ldc, const float *A, int64_t lda,
                           const uint16_t *W, int64_t ldw, int64_t M, int64_t K,
                           int64_t n0, int64_t n1, int accumulate, const float *bias);

void gb_gemm_rows_plain_avx2(float *C, int64_t ldc, const float *A, int64_t lda,
                             const float *Bg, int64_t ldb, int64_t M, int64_t K, int64_t nb,
                             int accumulate, const float *bias, float *acc);

/* Threads for the few-row paths below: they are bound by reading (or decoding) the weights,
 * not by FMAs, so each weight element counts as 8 multiply-adds toward gb_threads_for's
 * threshold (the int8 path's factor, quant_dot.c).  Counted as FMAs, a 768 x 768 or 576 x 576
 * decode GEMV ran on one thread while the other waited: GPT-2's W_Q/W_K/W_V/W_O, a third of
 * its bytes per token. */
static int stream_threads(int64_t M, int64_t N, int64_t K) {
    const int64_t fmas = M * N * K, reads = N * K * 8;
    return gb_threads_for(fmas > reads ? fmas : reads);
}

/* Small-M fp32 x @ W with W in the [K, N] layout (TransformerLens's W_in, W_out, W_U and the
 * per-head [H, d_model, d_head] panels: B->group columns contiguous per row).  Work items are
 * column blocks inside one group, as wide as possible (each thread then streams long
 * contiguous runs of every row of B: the whole row when it fits the block cap) but at least
 * one per thread; rows of A in fours. */
#define GB_PLAIN_NB_MAX 8192 /* floats per row of a block: 4 x 32 KB of accumulators */
static int gemm_rows_plain_avx2(float *C, int64_t ldc, const float *A, int64_t lda,
                                const gb_matrix *B, const float *bias, int64_t M,
                                int accumulate) {
    const int64_t N = B->N, K = B->K, G = B->group < N ? B->group : N;
    const int nthreads = stream_threads(M, N, K);
    const int64_t ngroups = (N + G - 1) / G;
    /* pieces per group: enough for every thread and for the block cap, and (when it costs
     * no more than a few narrower blocks) a total that the threads share evenly: the 50257
     * columns of W_U in 7 blocks left one of two threads a block behind the other */
    int64_t pieces = ngroups < nthreads ? (nthreads + ngroups - 1) / ngroups : 1;
    if ((G + pieces - 1) / pieces > GB_PLAIN_NB_MAX) pieces = (G + GB_PLAIN_NB_MAX - 1) / GB_PLAIN_NB_MAX;
    for (int extra = 0; extra < nthreads && (ngroups * pieces) % nthreads && pieces * 8 < G; extra++)
        pieces++;
    int64_t nb = (G + pieces - 1) / pieces;
    nb = (nb + 7) / 8 * 8;
    const int64_t per_group = (G + nb - 1) / nb, items = ngroups * per_group;
    const size_t bytes = (size_t)nthreads * 4 * (size_t)nb * sizeof(float);
    float *owned, *bufs = scratch(bytes, &owned);
    if (!bufs) return -1;
    const gb_stop_flag *stop = gb_stop_token();
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads)
#endif
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *acc = bufs + (size_t)tid * 4 * (size_t)nb;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t it = 0; it < items; it++) {
            if (gb_stop_requested(stop)) continue; /* interrupted: C is discarded */
            const int64_t g = it / per_group, j0 = (it % per_group) * nb;
            const int64_t gcols = N - g * G < G ? N - g * G : G;
            if (j0 >= gcols) continue;
            const int64_t w = gcols - j0 < nb ? gcols - j0 : nb;
            const int64_t n0 = g * G + j0;
            const float *Bg = (const float *)B->data + g * B->group_stride + j0;
            for (int64_t m0 = 0; m0 < M; m0 += 4) {
                const int64_t mr = M - m0 < 4 ? M - m0 : 4;
                gb_gemm_rows_plain_avx2(C + m0 * ldc + n0, ldc, A + m0 * lda, lda, Bg, B->ld, mr,
                                        K, w, accumulate, bias ? bias + n0 : NULL, acc);
            }
        }
    }
    free(owned);
    return 0;
}

/* Small-M x @ W^T on AVX2 with W in the file layout [N, K], fp32 or bf16 (widened in
 * registers): dot products over column blocks of 64 (no packing, W read once, contiguously,
 * from the mapping when kept as stored).  Each C element is computed by one thread in a
 * fixed order. */
static int gemm_dot_avx2(float *C, int64_t ldc, const float *A, int64_t lda,
                         const gb_matrix *B, const float *bias, int64_t M,
                         int accumulate) {
    const int64_t N = B->N, NB = 64, nblocks = (N + NB - 1) / NB;
    const int bf16 = B->dtype == GB_BF16;
    const gb_stop_flag *stop = gb_stop_token();
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(stream_threads(M, N, B->K))
#endif
    for (int64_t blk = 0; blk < nblocks; blk++) {
        if (gb_stop_requested(stop)) continue; /* interrupted: C is discarded */
        const int64_t n0 = blk * NB, n1 = n0 + NB < N ? n0 + NB : N;
        for (int64_t m0 = 0; m0 < M; m0 += 4) { /* rows in fours: W is read once per four */
            const int64_t mr = M - m0 < 4 ? M - m0 : 4;
            if (bf16)
                gb_gemm_dot_bf16_avx2(C + m0 * ldc, ldc, A + m0 * lda, lda, (const uint16_t *)B->data,
                                      B->ld, mr, B->K, n0, n1, accumulate, bias);
            else
                gb_gemm_dot_avx2(C + m0 * ldc, ldc, A + m0 * lda, lda, (const float *)B->data,
                                 B->ld, mr, B->K, n0, n1, accumulate, bias);
        }
    }
    return 0;
}

/* Small-M x @ W^T with a block-type W on AVX2: per 64-column block, rows are
 * decoded 4 at a time into a per-thread buffer [4][K] and fed to the same
 * dot-product kernel as fp32 W (so results equal the fp32 path on the
 * dequantised matrix).  Each C element belongs to one thread. */
static int gemm_dot_blocks_avx2(float *C, int64_t ldc, const float *A, int64_t lda,
                                const gb_matrix *B, const float *bias, int64_t M,
                                int accumulate) {
    const int64_t N = B->N, K = B->K, NB = 64, RB = 4, nblocks = (N + NB - 1) / NB;
    const int64_t rb = block_row_bytes(B);
    const uint8_t *data = (const uint8_t *)B->data;
    const int nthreads = stream_threads(M, N, K);
    const size_t per_thread = ((size_t)(RB * K) + 15) / 16 * 16; /* 64 B multiples */
    const size_t bytes = (size_t)nthreads * per_thread * sizeof(float);
    float *owned, *bufs = scratch(bytes, &owned);
    if (!bufs) return -1;
    const gb_stop_flag *stop = gb_stop_token();
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads)
#endif
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *w = bufs + (size_t)tid * per_thread;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t blk = 0; blk < nblocks; blk++) {
            if (gb_stop_requested(stop)) continue; /* interrupted: C is discarded */
            const int64_t n1 = blk * NB + NB < N ? blk * NB + NB : N;
            for (int64_t n0 = blk * NB; n0 < n1; n0 += RB) {
                const int64_t r = n1 - n0 < RB ? n1 - n0 : RB;
                for (int64_t i = 0; i < r; i++)
                    gb_dequantize_row_isa(GB_ISA_AVX2, w + i * K, data + (n0 + i) * rb,
                                          B->dtype, K);
                for (int64_t m0 = 0; m0 < M; m0 += 4)
                    gb_gemm_dot_avx2(C + m0 * ldc + n0, ldc, A + m0 * lda, lda, w, K,
                                     M - m0 < 4 ? M - m0 : 4, K, 0, r, accumulate,
                                     bias ? bias + n0 : NULL);
            }
        }
    }
    free(owned);
    return 0;
}

/* Tile shapes; gemm_avx2.c / gemm_avx512.c hard-code the same MR and NR. */
#ifndef GB_AVX2_KC /* overridable for tuning experiments only */
#define GB_AVX2_KC 384
#define GB_AVX2_MC 480
#endif
static const gb_gemm_kernel kernel_avx2 = {gb_gemm_panel_avx2, 6, 16, GB_AVX2_KC, GB_AVX2_MC};
#ifndef GB_AVX512_KC /* overridable for tuning experiments only */
#define GB_AVX512_KC 384
#define GB_AVX512_MC 192
#endif
static const gb_gemm_kernel kernel_avx512 = {gb_gemm_panel_avx512, 8, 48, GB_AVX512_KC, GB_AVX512_MC};
#endif

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* Pack rows [0, rows) x columns [0, kc) of A (row stride lda) as MR-row
 * micro-panels: dst[(i / MR) * kc * MR + k * MR + i % MR] = A[i, k], rows past
 * `rows` zero.  The microkernel then broadcasts from one sequential stream
 * instead of MR strided rows. */
static void pack_a(float *restrict dst, const float *A, int64_t lda,
                   int64_t rows, int64_t kc, int64_t MR) {
    for (int64_t i0 = 0; i0 < rows; i0 += MR) {
        float *restrict d = dst + i0 * kc;
        const int64_t mr = rows - i0 < MR ? rows - i0 : MR;
        for (int64_t r = 0; r < mr; r++) {
            const float *a = A + (i0 + r) * lda;
            for (int64_t k = 0; k < kc; k++) d[k * MR + r] = a[k];
        }
        for (int64_t r = mr; r < MR; r++)
            for (int64_t k = 0; k < kc; k++) d[k * MR + r] = 0.0f;
    }
}

/* Columns of B packed per round: the K block's panels for NC columns are packed once into a
 * buffer shared by the threads (kc x NC floats: 6 MB at kc = 384), then every M chunk runs
 * against them.  Packing per (M chunk, panel) instead would read B once per M chunk. */
#define GB_GEMM_NC 4096

/* The epilogue (kernels.h) on rows [m0, m1) x columns [n0, n1) of a finished C: the
 * activations' own element loop (act_body.h) inlined, built portable and AVX2+FMA as
 * activation.c builds it and chosen by the same test, so the values are those of
 * gb_activation / gb_gated_activation. */
GB_INLINE void epilogue_rows_body(const gb_epilogue *ep, float *C, int64_t ldc, int64_t m0,
                                  int64_t m1, int64_t n0, int64_t n1) {
    const int64_t n = n1 - n0;
    for (int64_t m = m0; m < m1; m++) {
        float *c = C + m * ldc + n0;
        if (ep->act >= 0) {
            const float *g = ep->gate ? ep->gate + m * ep->ldg + n0 : NULL;
            act_range_body(c, g ? g : c, g ? c : NULL, n, (gb_act)ep->act);
        }
        if (ep->resid) {
            float *r = ep->resid + m * ep->ldr + n0;
            for (int64_t i = 0; i < n; i++) r[i] = r[i] + c[i];
        }
    }
}

static void epilogue_rows_portable(const gb_epilogue *ep, float *C, int64_t ldc, int64_t m0,
                                   int64_t m1, int64_t n0, int64_t n1) {
    epilogue_rows_body(ep, C, ldc, m0, m1, n0, n1);
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2,fma"))) static void epilogue_rows_avx2(
    const gb_epilogue *ep, float *C, int64_t ldc, int64_t m0, int64_t m1, int64_t n0,
    int64_t n1) {
    epilogue_rows_body(ep, C, ldc, m0, m1, n0, n1);
}
#endif

static void epilogue_block(const gb_epilogue *ep, float *C, int64_t ldc, int64_t m0, int64_t m1,
                           int64_t n0, int64_t n1) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (gb_isa_current() >= GB_ISA_AVX2) {
        epilogue_rows_avx2(ep, C, ldc, m0, m1, n0, n1);
        return;
    }
#endif
    epilogue_rows_portable(ep, C, ldc, m0, m1, n0, n1);
}

/* The epilogue as a pass of its own over all of C, for the paths that do not fuse it. */
static void epilogue_after(const gb_epilogue *ep, float *C, int64_t ldc, int64_t M, int64_t N) {
    const gb_stop_flag *stop = gb_stop_token();
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (M * N >= ((int64_t)1 << 15) && M > 1) \
    num_threads(gb_team_size())
#endif
    for (int64_t m = 0; m < M; m++) {
        if (gb_stop_requested(stop)) continue; /* interrupted: C is discarded */
        epilogue_block(ep, C, ldc, m, m + 1, 0, N);
    }
}

__attribute__((unused)) static int gemm_blocked(const gb_gemm_kernel *kern, float *C, int64_t ldc,
                        const float *A, int64_t lda, const gb_matrix *B,
                        const float *bias, int64_t M, int accumulate,
                        const gb_epilogue *ep) {
    const int64_t K = B->K, N = B->N;
    const int64_t MR = kern->mr, NR = kern->nr;
    /* Block types: K blocks are whole quant blocks (KC rounded down to a
     * multiple of 32 / 256).  Results do not depend on KC. */
    const int64_t be = gb_dtype_block_elems(B->dtype);
    const int64_t KC = be > 1 ? (kern->kc >= be ? kern->kc / be * be : be) : kern->kc;
    const int nthreads = gb_threads_for(M * N * K);
    const int64_t npanels = ceil_div(N, NR);
    const int64_t NCP = GB_GEMM_NC / NR; /* panels per packing round */
    const int64_t round_panels = npanels < NCP ? npanels : NCP;
    /* M chunks: enough to bound the A block to mc rows (it stays in L2 while a B panel
     * sits in L1), and (when there are few panels) enough to give every thread work.  The
     * partition never changes results, only who computes what. */
    int64_t nmc = ceil_div(M, kern->mc);
    const int64_t want = ceil_div(2 * (int64_t)nthreads, round_panels);
    if (nmc < want) nmc = want;
    if (nmc > ceil_div(M, MR)) nmc = ceil_div(M, MR);
    const int64_t mchunk = ceil_div(ceil_div(M, nmc), MR) * MR;
    nmc = ceil_div(M, mchunk);

    /* Small M: a plain fp32 [K, N] (or in-group) panel can be read in place
     * (row stride ld) by a single pass of the microkernel, so packing would
     * only add traffic.  Larger M reuses the panel and packs it (contiguous,
     * aligned, no cache-set conflicts from a power-of-two-ish ld). */
    const int direct_ok = M <= MR && B->dtype == GB_F32 && !B->trans;

    /* Shared: the packed panels of one round [round_panels][KC][NR].  Per thread, 64-byte
     * aligned: an A block [mchunk][KC] (packed as MR-row micro-panels) and, for block
     * types, a KC-float row decode buffer. */
    const size_t shared = (size_t)round_panels * (size_t)(KC * NR);
    const size_t afl = (size_t)(mchunk * KC);
    const size_t sfl = is_block(B->dtype) ? (size_t)KC : 0;
    const size_t per_thread = (afl + sfl + 15) / 16 * 16; /* keep 64 B alignment */
    const size_t total = (shared + (size_t)nthreads * per_thread) * sizeof(float);
    float *owned, *bufs = scratch(total, &owned);
    if (!bufs) return -1;
    float *packed = bufs;
    const gb_stop_flag *stop = gb_stop_token();
    /* busy-machine detection: the calling thread's time in its own items vs the region's
     * elapsed time (the rest it spent waiting at the barriers for the other threads) */
    /* (only with enough items that an idle thread means a late one, not a lack of work) */
    const int timing = nthreads > 1 && nmc * npanels >= 16 * (int64_t)nthreads;
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
        float *abuf = bufs + shared + (size_t)tid * per_thread;
        float *sbuf = abuf + afl;
        for (int64_t k0 = 0; k0 < K; k0 += KC) {
            const int64_t kc = K - k0 < KC ? K - k0 : KC;
            const int load = k0 > 0 || accumulate;
            const float *bias_here = (k0 + kc == K) ? bias : NULL;
            int64_t packed_mc = -1; /* which M chunk abuf holds for this k0 */
            for (int64_t p0 = 0; p0 < npanels; p0 += NCP) {
                const int64_t np = npanels - p0 < NCP ? npanels - p0 : NCP;
                /* 1. pack this round's panels (each by one thread); the loop's barrier
                 *    makes them visible to all before any is used */
                /*    in groups of PG panels: a plain fp32 group whose PG panels are full and
                 *    in one group of B is packed row by row (contiguous reads) */
                const int64_t PG = 8, ngrp = (np + PG - 1) / PG;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
                for (int64_t gi = 0; gi < ngrp; gi++) {
                    if (gb_stop_requested(stop)) continue; /* interrupted: C is discarded */
                    const int64_t ti = timing && tid == 0 ? gb_now_ns() : 0;
                    const int64_t j0 = gi * PG, j1 = j0 + PG < np ? j0 + PG : np;
                    const int64_t gn0 = (p0 + j0) * NR, gn1 = (p0 + j1) * NR;
                    if (!direct_ok && B->dtype == GB_F32 && !B->trans && gn1 <= N &&
                        gn0 / B->group == (gn1 - 1) / B->group) {
                        pack_panels_plain_f32(packed + (size_t)j0 * (size_t)(kc * NR), B, k0, kc,
                                              gn0, j1 - j0, NR);
                        if (ti) busy0 += gb_now_ns() - ti;
                        continue;
                    }
                    for (int64_t j = j0; j < j1; j++) {
                        const int64_t n0 = (p0 + j) * NR;
                        const int64_t nr = N - n0 < NR ? N - n0 : NR;
                        if (direct_ok && nr == NR && n0 / B->group == (n0 + NR - 1) / B->group)
                            continue; /* read in place below */
                        pack_panel(packed + (size_t)j * (size_t)(kc * NR), sbuf, B, k0, kc, n0, nr, NR);
                    }
                    if (ti) busy0 += gb_now_ns() - ti;
                }
                /* 2. every (M chunk, panel) of the round, chunk-major so that a thread's
                 *    consecutive items share its packed A block.  Dynamic: when the
                 *    machine is busy and a thread is descheduled, the others take its items
                 *    instead of waiting for it at the barrier.  Which thread computes an
                 *    item never changes its result. */
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
                for (int64_t item = 0; item < nmc * np; item++) {
                    if (gb_stop_requested(stop)) continue; /* interrupted: C is discarded */
                    const int64_t ti = timing && tid == 0 ? gb_now_ns() : 0;
                    const int64_t mc = item / np, j = item % np;
                    const int64_t m0 = mc * mchunk;
                    const int64_t rows = M - m0 < mchunk ? M - m0 : mchunk;
                    const int64_t n0 = (p0 + j) * NR;
                    const int64_t nr = N - n0 < NR ? N - n0 : NR;
                    if (mc != packed_mc) {
                        pack_a(abuf, A + m0 * lda + k0, lda, rows, kc, MR);
                        packed_mc = mc;
                    }
                    const float *Bp = packed + (size_t)j * (size_t)(kc * NR);
                    int64_t ldb = NR;
                    if (direct_ok && nr == NR && n0 / B->group == (n0 + NR - 1) / B->group) {
                        Bp = (const float *)B->data + (n0 / B->group) * B->group_stride +
                             k0 * B->ld + n0 % B->group;
                        ldb = B->ld;
                    }
                    kern->panel(Bp, ldb, kc, nr, abuf, rows, C + m0 * ldc + n0, ldc,
                                load, bias_here ? bias_here + n0 : NULL);
                    /* the chunk's tile rows of this panel are final: the epilogue runs on
                     * them while they are in cache */
                    if (ep && k0 + kc == K) epilogue_block(ep, C, ldc, m0, m0 + rows, n0, n0 + nr);
                    if (ti) busy0 += gb_now_ns() - ti;
                }
            }
        }
    }
    if (timing) gb_note_region(t_start, busy0);
    free(owned);
    return 0;
}

/* ---------------------------------------------------------- entry points */

static int gemm_isa(gb_isa isa, float *C, int64_t ldc, const float *A, int64_t lda,
                    const gb_matrix *B, const float *bias, int64_t M, int accumulate,
                    int allow_int8, const gb_epilogue *ep) {
    if (!B || !dtype_ok(B->dtype) || M < 0 || B->K < 0 || B->N < 0) return -1;
    if (!B->trans && B->N > 0 && B->group <= 0) return -1;
    if (is_block(B->dtype)) {
        /* file layout only; K and the row length whole blocks */
        const int64_t be = gb_dtype_block_elems(B->dtype);
        if (!B->trans || B->K % be != 0 || B->ld % be != 0 || B->ld < B->K) return -1;
    }
    if (ep && ep->act < 0 && !ep->resid) ep = NULL; /* nothing to do */
    if (ep && ep->act >= GB_ACT_COUNT) return -1;
    if (M == 0 || B->N == 0) return 0;
    int rc;
    if (B->K == 0) {
        /* empty sum: C = (accumulate ? C : 0) + bias */
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < B->N; n++) {
                float out = accumulate ? C[m * ldc + n] : 0.0f;
                C[m * ldc + n] = bias ? out + bias[n] : out;
            }
        rc = 0;
    } else if (allow_int8 && gb_int8_activations() && gb_int8_dtype(B->dtype)) {
        if (!gb_isa_supported(isa)) return -1;
        rc = gb_gemm_int8(isa, C, ldc, A, lda, B, bias, M, accumulate);
    } else {
        switch (isa) {
        case GB_ISA_SCALAR:
            rc = gemm_scalar(C, ldc, A, lda, B, bias, M, accumulate);
            break;
#if defined(__x86_64__) && defined(__GNUC__)
        case GB_ISA_AVX512:
        case GB_ISA_AVX2:
            if (!gb_isa_supported(isa)) return -1;
            /* small M (generation, one position of a sweep): bandwidth-bound, so the AVX2
             * streaming kernels, on AVX-512 CPUs too; larger M: the ISA's blocked GEMM,
             * which runs the epilogue itself */
            if (!B->trans && B->dtype == GB_F32 && M <= 8)
                rc = gemm_rows_plain_avx2(C, ldc, A, lda, B, bias, M, accumulate);
            else if (B->trans && (B->dtype == GB_F32 || B->dtype == GB_BF16) && M <= 8)
                rc = gemm_dot_avx2(C, ldc, A, lda, B, bias, M, accumulate);
            else if (is_block(B->dtype) && M <= 8)
                rc = gemm_dot_blocks_avx2(C, ldc, A, lda, B, bias, M, accumulate);
            else
                return gemm_blocked(isa == GB_ISA_AVX512 ? &kernel_avx512 : &kernel_avx2, C,
                                    ldc, A, lda, B, bias, M, accumulate, ep);
            break;
#endif
        default:
            return -1; /* an ISA this build cannot run */
        }
    }
    if (rc == 0 && ep) epilogue_after(ep, C, ldc, M, B->N);
    return rc;
}

int gb_gemm_isa_ep(gb_isa isa, float *C, int64_t ldc, const float *A, int64_t lda,
                   const gb_matrix *B, const float *bias, int64_t M, int accumulate,
                   const gb_epilogue *ep) {
    return gemm_isa(isa, C, ldc, A, lda, B, bias, M, accumulate, 1, ep);
}

int gb_gemm_ep(float *C, int64_t ldc, const float *A, int64_t lda, const gb_matrix *B,
               const float *bias, int64_t M, int accumulate, const gb_epilogue *ep) {
    return gemm_isa(gb_isa_current(), C, ldc, A, lda, B, bias, M, accumulate, 1, ep);
}

int gb_gemm_isa(gb_isa isa, float *C, int64_t ldc, const float *A, int64_t lda,
                const gb_matrix *B, const float *bias, int64_t M, int accumulate) {
    return gemm_isa(isa, C, ldc, A, lda, B, bias, M, accumulate, 1, NULL);
}

int gb_gemm_isa_float(gb_isa isa, float *C, int64_t ldc, const float *A, int64_t lda,
                      const gb_matrix *B, const float *bias, int64_t M, int accumulate) {
    return gemm_isa(isa, C, ldc, A, lda, B, bias, M, accumulate, 0, NULL);
}

int gb_gemm(float *C, int64_t ldc, const float *A, int64_t lda, const gb_matrix *B,
            const float *bias, int64_t M, int accumulate) {
    return gb_gemm_isa(gb_isa_current(), C, ldc, A, lda, B, bias, M, accumulate);
}
