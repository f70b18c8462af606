/* The activations' element loop, shared by activation.c (gb_activation,
 * gb_gated_activation) and gemm.c (the fused epilogue's tile rows), so both
 * compile the same operations: the fused GEMM is bitwise the separate pass.
 * Internal to the kernels. */
#ifndef GLASSBOX_ACT_BODY_H
#define GLASSBOX_ACT_BODY_H

#include <math.h>

#include "fastmath.h"
#include "kernels.h"

static const float k_sqrt_2_over_pi = 0.7978845608028654f; /* sqrt(2/pi) */
static const float k_inv_sqrt2 = 0.7071067811865476f;      /* 1/sqrt(2)  */

GB_INLINE float act_one(float x, gb_act act) {
    switch (act) {
    case GB_ACT_RELU:
        return x > 0.0f ? x : 0.0f;
    case GB_ACT_GELU:
        return 0.5f * x * (1.0f + erff(x * k_inv_sqrt2));
    case GB_ACT_GELU_NEW:
    case GB_ACT_GELU_PYTORCH_TANH:
        return 0.5f * x * (1.0f + tanh_fast(k_sqrt_2_over_pi * (x + 0.044715f * x * x * x)));
    case GB_ACT_GELU_FAST:
        return 0.5f * x * (1.0f + tanh_fast(x * 0.7978845608f * (1.0f + 0.044715f * x * x)));
    case GB_ACT_SILU:
        return x * sigmoid_fast(x);
    default:
        return x;
    }
}

/* One loop per activation (the switch hoisted out), so each body is
 * branch-free; act() is rounded to float before the gated product, as
 * torch's act(gate) * up does. `up == NULL`: plain activation. */
GB_INLINE void act_range_body(float *out, const float *x, const float *up, int64_t n, gb_act act) {
#define GB_ACT_LOOP(A)                                                        \
    do {                                                                      \
        if (up)                                                               \
            for (int64_t i = 0; i < n; i++) out[i] = act_one(x[i], A) * up[i]; \
        else                                                                  \
            for (int64_t i = 0; i < n; i++) out[i] = act_one(x[i], A);        \
    } while (0)
    switch (act) {
    case GB_ACT_RELU: GB_ACT_LOOP(GB_ACT_RELU); break;
    case GB_ACT_GELU: GB_ACT_LOOP(GB_ACT_GELU); break;
    case GB_ACT_GELU_NEW:
    case GB_ACT_GELU_PYTORCH_TANH: GB_ACT_LOOP(GB_ACT_GELU_NEW); break;
    case GB_ACT_GELU_FAST: GB_ACT_LOOP(GB_ACT_GELU_FAST); break;
    case GB_ACT_SILU: GB_ACT_LOOP(GB_ACT_SILU); break;
    default:
        if (up)
            for (int64_t i = 0; i < n; i++) out[i] = x[i] * up[i];
        else if (out != x)
            for (int64_t i = 0; i < n; i++) out[i] = x[i];
        break;
    }
#undef GB_ACT_LOOP
}

#endif /* GLASSBOX_ACT_BODY_H */
