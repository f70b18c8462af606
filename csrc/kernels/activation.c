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

#include "act_body.h"
#include "kernels.h"

#define GB_ACT_PAR_MIN ((int64_t)1 << 14)
#define GB_ACT_CHUNK ((int64_t)1 << 12)

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

static void act_chunks(float *out, const float *x, const float *up, int64_t n, gb_act act) {
    void (*range)(float *, const float *, const float *, int64_t, gb_act) = act_range_portable;
#if defined(__x86_64__) && defined(__GNUC__)
    if (gb_isa_current() >= GB_ISA_AVX2) range = act_range_avx2;
#endif
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
