/* Causal multi-head attention with GQA, sliding window and a padding key
 * mask (semantics: see gb_attn_shape in kernels.h).
 *
 * Work unit: one query row r = (b, h, i), r = (b*H + h)*P + i, so rows of the
 * same head are consecutive and a thread's chunk reuses one kv head's K/V
 * from cache. Rows are independent: OpenMP splits rows (dynamic schedule,
 * causal rows differ in length) and nothing is reduced across threads, so
 * results do not depend on the thread count.
 *
 * Per row (query position qpos = i + K - P):
 *   visible keys j lie in [jlo, jhi): jhi = qpos + 1 (causal),
 *   jlo = qpos - window + 1 with a sliding window (else 0), minus keys with
 *   key_mask[b, j] == 0.  Keys outside [jlo, jhi) are never touched.
 *   s_j = (q . k_j) * inv_scale        (-inf when masked)
 *   p_j = exp(s_j - max) / sum          (row with no visible key: all 0)
 *   z   = sum_j p_j v_j                 (skipping p_j == 0)
 * The fused path keeps s/p in a K-float scratch row per thread unless the
 * caller wants them materialised ([B, H, P, K]); then it works in place in
 * the caller's rows. The split steps run the same row code.
 *
 * SIMD: the row kernels are written as lane-wise loops (8 independent
 * accumulators: GCC vectorises them without reassociation, so every ISA
 * gives bitwise the same result) and instantiated twice: baseline x86-64
 * (SSE2) / portable C, and a target("avx2,fma") clone chosen at run time
 * from gb_isa_current(). The exp used by the softmax is a branch-free,
 * vectorisable Cody-Waite + polynomial exp (rel. error ~1 ulp). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fastmath.h"
#include "kernels.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define GB_LANES 8
/* Below this many multiply-adds (rows * K * d) run serially. */
#define GB_ATTN_PAR_MIN ((int64_t)1 << 16)


/* ------------------------------------------------------------ helpers */

/* a . b over n floats, lane-wise; lanes combined in a fixed tree order. */
GB_INLINE float dot_lanes(const float *a, const float *b, int64_t n) {
    float acc[GB_LANES] = {0};
    int64_t i = 0;
    for (; i + GB_LANES <= n; i += GB_LANES)
        for (int u = 0; u < GB_LANES; u++) acc[u] += a[i + u] * b[i + u];
    float tail = 0.0f;
    for (; i < n; i++) tail += a[i] * b[i];
    return (((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))) +
           tail;
}

/* y += a * x over n floats (vectorises directly). */
GB_INLINE void axpy(float *restrict y, float a, const float *restrict x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

/* max over s[0, n); sets *bad if any entry is NaN or +inf (torch's softmax
 * then yields NaN for the whole row, which TransformerLens turns into 0). */
GB_INLINE float row_max(const float *s, int64_t n, int *bad) {
    float m = -INFINITY;
    int nan = 0;
    for (int64_t j = 0; j < n; j++) {
        float x = s[j];
        nan |= (x != x) | (x == INFINITY);
        m = x > m ? x : m;
    }
    *bad = nan;
    return m;
}

/* p[j] = exp(s[j] - m) / sum for j < n, given the row maximum m (finite).
 * p may alias s. Returns nothing: the row is normalised in place. */
GB_INLINE void softmax_finish(float *p, const float *s, int64_t n, float m) {
    float acc[GB_LANES] = {0};
    int64_t j = 0;
    for (; j + GB_LANES <= n; j += GB_LANES)
        for (int u = 0; u < GB_LANES; u++) {
            float e = exp_nonpos(s[j + u] - m);
            p[j + u] = e;
            acc[u] += e;
        }
    float tail = 0.0f;
    for (; j < n; j++) {
        float e = exp_nonpos(s[j] - m);
        p[j] = e;
        tail += e;
    }
    float sum = (((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))) +
                tail;
    /* sum >= 1 (the max contributes exp(0) = 1), so the reciprocal is safe */
    float rinv = 1.0f / sum;
    for (j = 0; j < n; j++) p[j] *= rinv;
}

static void fill(float *x, float v, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = v;
}

/* ------------------------------------------------------------ row context */

typedef struct {
    const gb_attn_shape *s;
    const float *q, *k, *v;
    float *z, *scores, *pattern; /* any may be NULL */
    int64_t rep;                 /* H / G query heads per kv head */
} attn_ctx;

/* Rows of k / v from one sequence to the next. */
static inline int64_t kv_rows(const gb_attn_shape *s) { return s->kv_rows > 0 ? s->kv_rows : s->K; }

/* Visible key range [*jlo, *jhi) of query i (before the padding mask). */
static inline void key_range(const gb_attn_shape *s, int64_t i, int64_t *jlo, int64_t *jhi) {
    int64_t qpos = i + (s->K - s->P);
    int64_t hi = qpos + 1;
    if (hi > s->K) hi = s->K;
    if (hi < 0) hi = 0;
    int64_t lo = 0;
    if (s->window > 0) lo = qpos - s->window + 1;
    if (lo < 0) lo = 0;
    if (lo > hi) lo = hi;
    *jlo = lo;
    *jhi = hi;
}

/* Scores of row r into srow[jlo, jhi) (masked keys -inf); the rest of srow
 * is left alone. Returns the row maximum; *bad as in row_max. */
GB_INLINE float scores_range(const attn_ctx *c, int64_t b, int64_t h, int64_t i, int64_t jlo,
                             int64_t jhi, float *srow, int *bad) {
    const gb_attn_shape *s = c->s;
    const int64_t d = s->d, g = h / c->rep;
    const float *qr = c->q + (b * s->P + i) * s->ldq + h * d;
    const float *kb = c->k + (b * kv_rows(s)) * s->ldk + g * d;
    const int32_t *km = s->key_mask ? s->key_mask + b * s->K : NULL;
    const float inv_scale = s->inv_scale;
    float m = -INFINITY;
    int nan = 0;
    for (int64_t j = jlo; j < jhi; j++) {
        float x;
        if (km && km[j] == 0)
            x = -INFINITY;
        else
            x = dot_lanes(qr, kb + j * s->ldk, d) * inv_scale;
        srow[j] = x;
        nan |= (x != x) | (x == INFINITY);
        m = x > m ? x : m;
    }
    *bad = nan;
    return m;
}

/* z row (b, i, head h) = sum_j prow[j] v_j over j in [jlo, jhi), p != 0. */
GB_INLINE void apply_range(const attn_ctx *c, float *zr, int64_t b, int64_t h, const float *prow,
                           int64_t jlo, int64_t jhi) {
    const gb_attn_shape *s = c->s;
    const int64_t d = s->d, g = h / c->rep;
    const float *vb = c->v + (b * kv_rows(s)) * s->ldv + g * d;
    fill(zr, 0.0f, d);
    for (int64_t j = jlo; j < jhi; j++) {
        float p = prow[j];
        if (p != 0.0f) axpy(zr, p, vb + j * s->ldv, d);
    }
}

/* Decode row index r into (b, h, i). */
static inline void row_coords(const gb_attn_shape *s, int64_t r, int64_t *b, int64_t *h,
                              int64_t *i) {
    *i = r % s->P;
    int64_t bh = r / s->P;
    *h = bh % s->H;
    *b = bh / s->H;
}

/* Fused row: scores -> softmax -> z. scratch: K floats, used for the
 * scores/pattern row the caller does not materialise (NULL when the caller
 * materialises the pattern). */
GB_INLINE void fused_row_impl(const attn_ctx *c, int64_t r, float *scratch) {
    const gb_attn_shape *s = c->s;
    const int64_t K = s->K;
    int64_t b, h, i, jlo, jhi;
    row_coords(s, r, &b, &h, &i);
    key_range(s, i, &jlo, &jhi);
    float *srow = c->scores ? c->scores + r * K : (c->pattern ? c->pattern + r * K : scratch);
    float *prow = c->pattern ? c->pattern + r * K : (c->scores ? scratch : srow);
    float *zr = c->z ? c->z + (b * s->P + i) * s->ldz + h * s->d : NULL;

    int bad;
    float m = scores_range(c, b, h, i, jlo, jhi, srow, &bad);
    if (c->scores) {
        fill(c->scores + r * K, -INFINITY, jlo);
        fill(c->scores + r * K + jhi, -INFINITY, K - jhi);
    }
    if (bad || m == -INFINITY) { /* no visible key, or NaN/inf scores */
        if (c->pattern) fill(c->pattern + r * K, 0.0f, K);
        if (zr) fill(zr, 0.0f, s->d);
        return;
    }
    if (!c->pattern && !zr) return; /* only scores wanted */
    softmax_finish(prow + jlo, srow + jlo, jhi - jlo, m);
    if (c->pattern) {
        fill(c->pattern + r * K, 0.0f, jlo);
        fill(c->pattern + r * K + jhi, 0.0f, K - jhi);
    }
    if (zr) apply_range(c, zr, b, h, prow, jlo, jhi);
}

/* Split step 1: scores row r, all K entries (masked -inf). */
GB_INLINE void scores_row_impl(const attn_ctx *c, int64_t r) {
    const gb_attn_shape *s = c->s;
    int64_t b, h, i, jlo, jhi;
    row_coords(s, r, &b, &h, &i);
    key_range(s, i, &jlo, &jhi);
    float *srow = c->scores + r * s->K;
    int bad;
    (void)scores_range(c, b, h, i, jlo, jhi, srow, &bad);
    fill(srow, -INFINITY, jlo);
    fill(srow + jhi, -INFINITY, s->K - jhi);
}

/* Split step 2: softmax of a full (possibly hook-edited) scores row. No
 * re-masking: TransformerLens applies the mask before hook_attn_scores, so
 * whatever the hook leaves is what softmax sees. prow may alias srow. */
GB_INLINE void softmax_row_impl(const attn_ctx *c, int64_t r) {
    const int64_t K = c->s->K;
    const float *srow = c->scores + r * K;
    float *prow = c->pattern + r * K;
    int bad;
    float m = row_max(srow, K, &bad);
    if (bad || m == -INFINITY) {
        fill(prow, 0.0f, K);
        return;
    }
    softmax_finish(prow, srow, K, m);
}

/* Split step 3: z row from a full (possibly hook-edited) pattern row. */
GB_INLINE void apply_row_impl(const attn_ctx *c, int64_t r) {
    const gb_attn_shape *s = c->s;
    int64_t b, h, i;
    row_coords(s, r, &b, &h, &i);
    float *zr = c->z + (b * s->P + i) * s->ldz + h * s->d;
    apply_range(c, zr, b, h, c->pattern + r * s->K, 0, s->K);
}

/* ------------------------------------------------------- ISA instances */

typedef void (*fused_fn)(const attn_ctx *, int64_t, float *);
typedef void (*row_fn)(const attn_ctx *, int64_t);

static void fused_row_scalar(const attn_ctx *c, int64_t r, float *scr) { fused_row_impl(c, r, scr); }
static void scores_row_scalar(const attn_ctx *c, int64_t r) { scores_row_impl(c, r); }
static void softmax_row_scalar(const attn_ctx *c, int64_t r) { softmax_row_impl(c, r); }
static void apply_row_scalar(const attn_ctx *c, int64_t r) { apply_row_impl(c, r); }

#if defined(__x86_64__) && defined(__GNUC__)
#define GB_HAVE_AVX2_ATTN 1
#define GB_AVX2 __attribute__((target("avx2,fma")))
GB_AVX2 static void fused_row_avx2(const attn_ctx *c, int64_t r, float *scr) { fused_row_impl(c, r, scr); }
GB_AVX2 static void scores_row_avx2(const attn_ctx *c, int64_t r) { scores_row_impl(c, r); }
GB_AVX2 static void softmax_row_avx2(const attn_ctx *c, int64_t r) { softmax_row_impl(c, r); }
GB_AVX2 static void apply_row_avx2(const attn_ctx *c, int64_t r) { apply_row_impl(c, r); }
#endif

__attribute__((unused)) static int use_avx2(void) {
#ifdef GB_HAVE_AVX2_ATTN
    return gb_isa_current() >= GB_ISA_AVX2;
#else
    return 0;
#endif
}

static fused_fn pick_fused(void) {
#ifdef GB_HAVE_AVX2_ATTN
    if (use_avx2()) return fused_row_avx2;
#endif
    return fused_row_scalar;
}

static row_fn pick_row(int which) {
#ifdef GB_HAVE_AVX2_ATTN
    if (use_avx2()) return which == 0 ? scores_row_avx2 : which == 1 ? softmax_row_avx2 : apply_row_avx2;
#endif
    return which == 0 ? scores_row_scalar : which == 1 ? softmax_row_scalar : apply_row_scalar;
}

/* Run fn over all B*H*P rows; `work` (multiply-adds) gates parallelism. */
static void run_rows(row_fn fn, const attn_ctx *c, int64_t work) {
    const int64_t R = c->s->B * c->s->H * c->s->P;
    const gb_stop_flag *stop = gb_stop_token();
    (void)work;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 4) if (work >= GB_ATTN_PAR_MIN) num_threads(gb_team_size())
#endif
    for (int64_t r = 0; r < R; r++) {
        if (gb_stop_requested(stop)) continue; /* interrupted: the caller discards the result */
        fn(c, r);
    }
}

static attn_ctx make_ctx(const gb_attn_shape *s, float *z, float *scores, float *pattern,
                         const float *q, const float *k, const float *v) {
    attn_ctx c;
    c.s = s;
    c.q = q;
    c.k = k;
    c.v = v;
    c.z = z;
    c.scores = scores;
    c.pattern = pattern;
    c.rep = (s->G > 0 && s->H >= s->G) ? s->H / s->G : 1;
    return c;
}

/* ------------------------------------------------------------ public API */

/* ------------------------------------------------- blocked (prefill) path */

/* Query rows per block: a block's scores [QB, keys] live in per-thread
 * scratch, and each K / V row is read once per block instead of once per
 * query row. */
#define GB_ATTN_QB 64
/* Below this many query rows the per-row path is used (generation). */
#define GB_ATTN_BLOCKED_MIN_P 8

/* Prefill: per (sequence, head, block of query rows), S = q K^T and z = P V
 * through the packed GEMM, masking and softmax per row in between. Same
 * semantics as the per-row path (gb_attention's contract). */
static int attention_blocked(float *z, float *scores, float *pattern, const float *q,
                             const float *k, const float *v, const gb_attn_shape *s) {
    const int64_t B = s->B, H = s->H, P = s->P, K = s->K, d = s->d, rep = s->H / s->G;
    const int64_t QB = P < GB_ATTN_QB ? P : GB_ATTN_QB;
    const int64_t nqb = (P + QB - 1) / QB, tasks = B * H * nqb;
    int nthreads = 1;
#ifdef _OPENMP
    if (tasks > 1 && tasks * QB * K * d >= GB_ATTN_PAR_MIN) nthreads = gb_team_size();
#endif
    float *buf = (float *)malloc((size_t)(nthreads * QB * K) * sizeof(float));
    if (!buf) return -1;
    int failed = 0;
    const gb_stop_flag *stop = gb_stop_token();
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (nthreads > 1) reduction(|| : failed)
#endif
    for (int64_t t = 0; t < tasks; t++) {
        if (gb_stop_requested(stop)) continue; /* interrupted: the caller discards the result */
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        const int64_t b = t / (H * nqb), h = (t / nqb) % H, i0 = (t % nqb) * QB;
        const int64_t rows = (i0 + QB < P ? i0 + QB : P) - i0, g = h / rep;
        int64_t jlo, jhi, lo, hi;
        key_range(s, i0, &jlo, &hi);
        key_range(s, i0 + rows - 1, &lo, &jhi);
        if (jhi < jlo) jhi = jlo;
        const int64_t nk = jhi - jlo; /* keys [jlo, jhi) cover every row of the block */
        float *S = buf + (int64_t)tid * QB * K; /* [rows, nk] */
        if (nk > 0) {
            gb_matrix Km = {.data = k + (b * kv_rows(s) + jlo) * s->ldk + g * d, .dtype = GB_F32, .trans = 1,
                            .K = d, .N = nk, .ld = s->ldk, .group = 0, .group_stride = 0};
            if (gb_gemm(S, nk, q + (b * P + i0) * s->ldq + h * d, s->ldq, &Km, NULL, rows, 0)) {
                failed = 1;
                continue;
            }
        }
        for (int64_t r = 0; r < rows; r++) {
            const int64_t i = i0 + r;
            float *srow = S + r * nk;
            key_range(s, i, &lo, &hi);
            for (int64_t j = jlo; j < jhi; j++) {
                int visible = j >= lo && j < hi && (!s->key_mask || s->key_mask[b * K + j]);
                srow[j - jlo] = visible ? srow[j - jlo] * s->inv_scale : -INFINITY;
            }
            const int64_t out_row = ((b * H + h) * P + i) * K;
            if (scores) {
                fill(scores + out_row, -INFINITY, jlo);
                memcpy(scores + out_row + jlo, srow, (size_t)nk * sizeof(float));
                fill(scores + out_row + jhi, -INFINITY, K - jhi);
            }
            int bad = 0;
            float m = row_max(srow, nk, &bad);
            if (bad || m == -INFINITY)
                fill(srow, 0.0f, nk); /* no visible key (or NaN/inf): TL's NaN -> 0 */
            else
                softmax_finish(srow, srow, nk, m);
            if (pattern) {
                fill(pattern + out_row, 0.0f, jlo);
                memcpy(pattern + out_row + jlo, srow, (size_t)nk * sizeof(float));
                fill(pattern + out_row + jhi, 0.0f, K - jhi);
            }
        }
        if (!z) continue;
        float *zb = z + (b * P + i0) * s->ldz + h * d;
        if (nk == 0) {
            for (int64_t r = 0; r < rows; r++) fill(zb + r * s->ldz, 0.0f, d);
            continue;
        }
        gb_matrix Vm = {.data = v + (b * kv_rows(s) + jlo) * s->ldv + g * d, .dtype = GB_F32, .trans = 0,
                        .K = nk, .N = d, .ld = s->ldv, .group = d, .group_stride = 0};
        if (gb_gemm(zb, s->ldz, S, nk, &Vm, NULL, rows, 0)) failed = 1;
    }
    free(buf);
    return failed ? -1 : 0;
}

int gb_attention(float *z, float *scores, float *pattern, const float *q,
                 const float *k, const float *v, const gb_attn_shape *s) {
    const int64_t R = s->B * s->H * s->P;
    if (R <= 0 || (!z && !scores && !pattern)) return 0;
    if (s->K <= 0) { /* no keys at all: every row is fully masked */
        if (z)
            for (int64_t m = 0; m < s->B * s->P; m++) fill(z + m * s->ldz, 0.0f, s->H * s->d);
        return 0;
    }
    if (s->P >= GB_ATTN_BLOCKED_MIN_P && getenv("GLASSBOX_ATTN_ROWS") == NULL)
        return attention_blocked(z, scores, pattern, q, k, v, s);
    attn_ctx c = make_ctx(s, z, scores, pattern, q, k, v);
    fused_fn fn = pick_fused();
    const int64_t work = R * s->K * (s->d > 0 ? s->d : 1);
    (void)work;

    /* Per-thread K-float scratch for the pattern row, unless the caller
     * materialises the pattern (then the softmax runs in its rows). */
    float *scratch = NULL;
    int64_t nthreads = 1;
    const gb_stop_flag *stop = gb_stop_token();
#ifdef _OPENMP
    if (work >= GB_ATTN_PAR_MIN) nthreads = gb_team_size();
#endif
    if (!pattern) {
        scratch = (float *)malloc((size_t)(nthreads * s->K) * sizeof(float));
        if (!scratch) return -1;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads((int)nthreads) if (nthreads > 1)
#endif
    {
        float *scr = scratch;
#ifdef _OPENMP
        if (scratch) scr = scratch + (int64_t)omp_get_thread_num() * s->K;
#pragma omp for schedule(dynamic, 4)
#endif
        for (int64_t r = 0; r < R; r++) {
            if (gb_stop_requested(stop)) continue; /* interrupted: the caller discards the result */
            fn(&c, r, scr);
        }
    }
    free(scratch);
    return 0;
}

void gb_attn_scores(float *scores, const float *q, const float *k, const gb_attn_shape *s) {
    if (s->B * s->H * s->P <= 0 || s->K <= 0) return;
    attn_ctx c = make_ctx(s, NULL, scores, NULL, q, k, NULL);
    run_rows(pick_row(0), &c, s->B * s->H * s->P * s->K * s->d);
}

void gb_attn_softmax(float *pattern, const float *scores, const gb_attn_shape *s) {
    if (s->B * s->H * s->P <= 0 || s->K <= 0) return;
    attn_ctx c = make_ctx(s, NULL, (float *)scores, pattern, NULL, NULL, NULL);
    run_rows(pick_row(1), &c, s->B * s->H * s->P * s->K * 8);
}

void gb_attn_apply(float *z, const float *pattern, const float *v, const gb_attn_shape *s) {
    if (s->B * s->H * s->P <= 0) return;
    if (s->K <= 0) {
        for (int64_t m = 0; m < s->B * s->P; m++) fill(z + m * s->ldz, 0.0f, s->H * s->d);
        return;
    }
    attn_ctx c = make_ctx(s, z, NULL, (float *)pattern, NULL, NULL, v);
    run_rows(pick_row(2), &c, s->B * s->H * s->P * s->K * s->d);
}
