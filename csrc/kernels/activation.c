/* MLP activations, elementwise, with the exact formulas PyTorch /
 * TransformerLens / HF use (libm tanhf / erff / expf, so results match the
 * references to ~1 ulp of the transcendental):
 *   relu            max(x, 0)
 *   gelu            0.5 x (1 + erf(x / sqrt 2))                 (torch F.gelu)
 *   gelu_new        0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))  (GPT-2)
 *   gelu_pytorch_tanh  same formula as gelu_new
 *   gelu_fast       0.5 x (1 + tanh(0.7978845608 x (1 + 0.044715 x^2)))  (TL)
 *   silu            x / (1 + exp(-x))
 * Work is split into contiguous chunks across threads. */
#include <math.h>

#include "kernels.h"

#define GB_ACT_PAR_MIN ((int64_t)1 << 14)
#define GB_ACT_CHUNK ((int64_t)1 << 12)

static const float k_sqrt_2_over_pi = 0.7978845608028654f; /* sqrt(2/pi) */
static const float k_inv_sqrt2 = 0.7071067811865476f;      /* 1/sqrt(2)  */

static inline float act_one(float x, gb_act act) {
    switch (act) {
    case GB_ACT_RELU:
        return x > 0.0f ? x : 0.0f;
    case GB_ACT_GELU:
        return 0.5f * x * (1.0f + erff(x * k_inv_sqrt2));
    case GB_ACT_GELU_NEW:
    case GB_ACT_GELU_PYTORCH_TANH:
        return 0.5f * x * (1.0f + tanhf(k_sqrt_2_over_pi * (x + 0.044715f * x * x * x)));
    case GB_ACT_GELU_FAST:
        return 0.5f * x * (1.0f + tanhf(x * 0.7978845608f * (1.0f + 0.044715f * x * x)));
    case GB_ACT_SILU:
        return x / (1.0f + expf(-x));
    default:
        return x;
    }
}

/* Apply one activation to a contiguous range; the switch is hoisted out of
 * the loop (one loop per activation) so each loop body is branch-free. */
static void act_range(float *out, const float *x, int64_t n, gb_act act) {
    switch (act) {
    case GB_ACT_RELU:
        for (int64_t i = 0; i < n; i++) out[i] = x[i] > 0.0f ? x[i] : 0.0f;
        break;
    case GB_ACT_GELU:
        for (int64_t i = 0; i < n; i++) out[i] = act_one(x[i], GB_ACT_GELU);
        break;
    case GB_ACT_GELU_NEW:
    case GB_ACT_GELU_PYTORCH_TANH:
        for (int64_t i = 0; i < n; i++) out[i] = act_one(x[i], GB_ACT_GELU_NEW);
        break;
    case GB_ACT_GELU_FAST:
        for (int64_t i = 0; i < n; i++) out[i] = act_one(x[i], GB_ACT_GELU_FAST);
        break;
    case GB_ACT_SILU:
        for (int64_t i = 0; i < n; i++) out[i] = act_one(x[i], GB_ACT_SILU);
        break;
    default:
        if (out != x)
            for (int64_t i = 0; i < n; i++) out[i] = x[i];
        break;
    }
}

/* out[i] = act(x[i]) for i < n; out may alias x. */
void gb_activation(float *out, const float *x, int64_t n, gb_act act) {
    int64_t nchunks = (n + GB_ACT_CHUNK - 1) / GB_ACT_CHUNK;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n >= GB_ACT_PAR_MIN)
#endif
    for (int64_t c = 0; c < nchunks; c++) {
        int64_t lo = c * GB_ACT_CHUNK;
        int64_t len = (lo + GB_ACT_CHUNK < n ? lo + GB_ACT_CHUNK : n) - lo;
        act_range(out + lo, x + lo, len, act);
    }
}

/* Gated MLP (LLaMA): out[i] = act(gate[i]) * up[i]; out may alias either
 * input (element i is only read before element i is written). act() is
 * rounded to float before the product, as torch's act(gate) * up does. */
void gb_gated_activation(float *out, const float *gate, const float *up,
                         int64_t n, gb_act act) {
    int64_t nchunks = (n + GB_ACT_CHUNK - 1) / GB_ACT_CHUNK;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n >= GB_ACT_PAR_MIN)
#endif
    for (int64_t c = 0; c < nchunks; c++) {
        int64_t lo = c * GB_ACT_CHUNK;
        int64_t hi = lo + GB_ACT_CHUNK < n ? lo + GB_ACT_CHUNK : n;
        switch (act) {
        case GB_ACT_SILU: /* the LLaMA case, kept as its own loop */
            for (int64_t i = lo; i < hi; i++) {
                float g = gate[i];
                float a = g / (1.0f + expf(-g));
                out[i] = a * up[i];
            }
            break;
        default:
            for (int64_t i = lo; i < hi; i++) {
                float a = act_one(gate[i], act);
                out[i] = a * up[i];
            }
            break;
        }
    }
}
