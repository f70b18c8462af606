/* LayerNorm / RMSNorm split in two steps so a hook can sit between them
 * (TransformerLens's hook_scale sees the per-row scale):
 *   gb_norm_scale: centred row + scale = sqrt(mean(c^2) + eps)
 *   gb_norm_apply: out = centred / scale * w + b
 * Row sums accumulate in double (8 independent lanes, so the loop vectorises
 * without reassociating: the lane sums are then added in a fixed order and the
 * result does not depend on the thread count). */
#include <math.h>

#include "kernels.h"

#define GB_LANES 8
/* Parallelise only when there is enough work to pay for the fork. */
#define GB_NORM_PAR_MIN ((int64_t)1 << 15)

/* sum_i x[i] in double, lane-wise. */
static double sum_f64(const float *x, int64_t n) {
    double acc[GB_LANES] = {0};
    int64_t i = 0;
    for (; i + GB_LANES <= n; i += GB_LANES)
        for (int u = 0; u < GB_LANES; u++) acc[u] += (double)x[i + u];
    for (; i < n; i++) acc[i % GB_LANES] += (double)x[i];
    double s = 0.0;
    for (int u = 0; u < GB_LANES; u++) s += acc[u];
    return s;
}

/* sum_i x[i]^2 in double, lane-wise (x[i] widened before squaring, exact). */
static double sumsq_f64(const float *x, int64_t n) {
    double acc[GB_LANES] = {0};
    int64_t i = 0;
    for (; i + GB_LANES <= n; i += GB_LANES)
        for (int u = 0; u < GB_LANES; u++) {
            double t = (double)x[i + u];
            acc[u] += t * t;
        }
    for (; i < n; i++) {
        double t = (double)x[i];
        acc[i % GB_LANES] += t * t;
    }
    double s = 0.0;
    for (int u = 0; u < GB_LANES; u++) s += acc[u];
    return s;
}

/* x [M, D] (row stride ldx) -> centred [M, D] (row stride D), scale [M].
 * centred may alias x when ldx == D: each row is read (mean) before it is
 * overwritten element by element. */
void gb_norm_scale(float *centred, float *scale, const float *x, int64_t ldx,
                   int64_t M, int64_t D, float eps, int center) {
    const gb_stop_flag *stop = gb_stop_token();
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (M * D >= GB_NORM_PAR_MIN) num_threads(gb_team_size())
#endif
    for (int64_t m = 0; m < M; m++) {
        if (gb_stop_requested(stop)) continue; /* interrupted: the caller discards the result */
        const float *xr = x + m * ldx;
        float *cr = centred + m * D;
        if (center) {
            double mean = sum_f64(xr, D) / (double)D;
            /* subtract in double, round once: c is the nearest float to x-mean */
            for (int64_t i = 0; i < D; i++) cr[i] = (float)((double)xr[i] - mean);
        } else if (cr != xr) {
            for (int64_t i = 0; i < D; i++) cr[i] = xr[i];
        }
        double var = sumsq_f64(cr, D) / (double)D;
        scale[m] = (float)sqrt(var + (double)eps);
    }
}

/* out [M, D] = centred / scale[m] * w + b (w, b [D] optional). Division, not
 * multiplication by a reciprocal, to round exactly as TransformerLens's
 * x / scale does. out may alias centred. */
void gb_norm_apply(float *out, const float *centred, const float *scale,
                   const float *w, const float *b, int64_t M, int64_t D) {
    const gb_stop_flag *stop = gb_stop_token();
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (M * D >= GB_NORM_PAR_MIN) num_threads(gb_team_size())
#endif
    for (int64_t m = 0; m < M; m++) {
        if (gb_stop_requested(stop)) continue; /* interrupted: the caller discards the result */
        const float *cr = centred + m * D;
        float *o = out + m * D;
        const float s = scale[m];
        if (w && b)
            for (int64_t i = 0; i < D; i++) o[i] = cr[i] / s * w[i] + b[i];
        else if (w)
            for (int64_t i = 0; i < D; i++) o[i] = cr[i] / s * w[i];
        else if (b)
            for (int64_t i = 0; i < D; i++) o[i] = cr[i] / s + b[i];
        else
            for (int64_t i = 0; i < D; i++) o[i] = cr[i] / s;
    }
}
