/* MLP activations, elementwise, with the formulas PyTorch / TransformerLens /
 * HF use:
 *   relu            max(x, 0)
 *   gelu            0.5 x (1 + erf(x / sqrt 2))                 (torch F.gelu; libm erff)
 *   gelu_new        0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))  (GPT-2)
 *   gelu_pytorch_tanh  same formula as gelu_new
 *   gelu_fast       0.5 x (1 + tanh(0.7978845608 x (1 + 0.044715 x^2)))  (TL)
 *   silu            x sigmoid(x)
 * tanh and sigmoid come from fastmath.h (a vectorisable exp; absolute error
 * < 2e-7 against libm), so these loops vectorise: libm's tanhf made gelu_new
 * ~20% of a GPT-2 forward. Each loop is built twice, portable and AVX2+FMA,
 * chosen by gb_isa_current(); both give identical results (no contraction).
 * Work is split into contiguous chunks across threads. */
#include <math.h>

#include "fastmath.h"
#include "kernels.h"

#define GB_ACT_PAR_MIN ((int64_t)1 << 14)
#define GB_ACT_CHUNK ((int64_t)1 << 12)

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

static void act_range_portable(float *out, const float *x, const float *up, int64_t n, gb_act act) {
    act_range_body(out, x, up, n, act);
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2,fma"))) static void act_range_avx2(float *out, const float *x,
                                                               const float *up, int64_t n,
                                                               gb_act act) {
    act_range_body(out, x, up, n, act);
}
#endif

typedef void (*act_range_fn)(float *, const float *, const float *, int64_t, gb_act);

static act_range_fn act_range_for_isa(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (gb_isa_current() >= GB_ISA_AVX2) return act_range_avx2;
#endif
    return act_range_portable;
}

void gb_act_range(float *out, const float *x, const float *up, int64_t n, gb_act act) {
    act_range_for_isa()(out, x, up, n, act);
}

static void act_chunks(float *out, const float *x, const float *up, int64_t n, gb_act act) {
    act_range_fn range = act_range_for_isa();
    int64_t nchunks = (n + GB_ACT_CHUNK - 1) / GB_ACT_CHUNK;
    const gb_stop_flag *stop = gb_stop_token();
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n >= GB_ACT_PAR_MIN) num_threads(gb_team_size())
#endif
    for (int64_t c = 0; c < nchunks; c++) {
        if (gb_stop_requested(stop)) continue; /* interrupted: the caller discards the result */
        int64_t lo = c * GB_ACT_CHUNK;
        int64_t len = (lo + GB_ACT_CHUNK < n ? lo + GB_ACT_CHUNK : n) - lo;
        range(out + lo, x + lo, up ? up + lo : NULL, len, act);
    }
}

/* out[i] = act(x[i]) for i < n; out may alias x. */
void gb_activation(float *out, const float *x, int64_t n, gb_act act) {
    act_chunks(out, x, NULL, n, act);
}

/* Gated MLP (LLaMA): out[i] = act(gate[i]) * up[i]; out may alias either
 * input (element i is only read before element i is written). */
void gb_gated_activation(float *out, const float *gate, const float *up, int64_t n, gb_act act) {
    act_chunks(out, gate, up, n, act);
}
