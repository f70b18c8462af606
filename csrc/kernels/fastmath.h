/* Branch-free float maths the compiler can vectorise (internal to the kernels).
 * No fast-math: every operation is IEEE and the results are identical on the
 * scalar and the AVX2 builds of a loop (-std=c11 keeps FP contraction off). */
#ifndef GLASSBOX_FASTMATH_H
#define GLASSBOX_FASTMATH_H

#include <stdint.h>
#include <string.h>

#if defined(__GNUC__)
#define GB_INLINE static inline __attribute__((always_inline))
#else
#define GB_INLINE static inline
#endif

/* exp(x) for x <= 0 (or -inf); inputs below -87 return 0 (the exact result
 * is < 1.7e-38 there, a denormal that no softmax weight can use).
 *   exp(x) = 2^n exp(r), n = round(x log2 e), r = x - n ln2 (two-part ln2),
 *   exp(r) ~ 1 + r + r^2 P(r) with a degree-5 minimax P on |r| <= ln2/2.
 * Max relative error 8.2e-8 (1.4 ulp) over [-87, 0], checked exhaustively.
 * The clamp and the flush to 0 are done on the bit patterns (for x <= 0,
 * "x < -87" is "bits(x) > bits(-87)" as unsigned): float compares could
 * trap under the default -ftrapping-math, which stops GCC if-converting and
 * so vectorising the loop. */
GB_INLINE float exp_nonpos(float x) {
    const uint32_t lo_bits = 0xC2AE0000u; /* -87.0f */
    uint32_t ux;
    memcpy(&ux, &x, sizeof ux);
    const uint32_t keep = (uint32_t)(ux <= lo_bits) * 0xFFFFFFFFu; /* x >= -87 */
    ux = (ux & keep) | (lo_bits & ~keep);
    float xc;
    memcpy(&xc, &ux, sizeof xc);
    float t = xc * 1.44269504088896341f;
    /* round to nearest via the 1.5*2^23 trick (|t| < 2^22; no fast-math, so
     * the compiler keeps it) */
    float nf = (t + 12582912.0f) - 12582912.0f;
    float r = xc - nf * 0.693359375f;
    r = r - nf * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    /* 2^n with n in [-126, 0]: exponent field n + 127 in [1, 127] */
    int32_t bits = ((int32_t)nf + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    float y = p * scale;
    uint32_t uy;
    memcpy(&uy, &y, sizeof uy);
    uy &= keep; /* x < -87 (incl. -inf) -> +0 */
    memcpy(&y, &uy, sizeof y);
    return y;
}

/* |x| and the sign of x moved onto a non-negative value, on the bit patterns
 * (float compares would stop GCC vectorising under -ftrapping-math). */
GB_INLINE float abs_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    u &= 0x7FFFFFFFu;
    memcpy(&x, &u, sizeof x);
    return x;
}
GB_INLINE float copysign_bits(float mag, float sign_of) {
    uint32_t m, s;
    memcpy(&m, &mag, sizeof m);
    memcpy(&s, &sign_of, sizeof s);
    m = (m & 0x7FFFFFFFu) | (s & 0x80000000u);
    memcpy(&mag, &m, sizeof mag);
    return mag;
}

/* tanh(x) = sign(x) (1 - e) / (1 + e), e = exp(-2|x|) in (0, 1]. Absolute
 * error < 1.5e-7 against libm's tanhf (relative error grows only for
 * |x| < 1e-3, where tanh(x) ~ x is tiny and its absolute error stays there). */
GB_INLINE float tanh_fast(float x) {
    float e = exp_nonpos(-2.0f * abs_bits(x));
    return copysign_bits((1.0f - e) / (1.0f + e), x);
}

/* sigmoid(x) = 1 / (1 + exp(-x)), from e = exp(-|x|) so exp never overflows:
 * x >= 0: 1 / (1 + e);  x < 0: e / (1 + e). */
GB_INLINE float sigmoid_fast(float x) {
    float e = exp_nonpos(-abs_bits(x));
    float r = 1.0f / (1.0f + e);
    float re = e * r;
    uint32_t ux, a, b;
    memcpy(&ux, &x, sizeof ux);
    memcpy(&a, &r, sizeof a);
    memcpy(&b, &re, sizeof b);
    const uint32_t neg = (ux >> 31) * 0xFFFFFFFFu;
    a = (a & ~neg) | (b & neg);
    memcpy(&r, &a, sizeof r);
    return r;
}

#endif /* GLASSBOX_FASTMATH_H */
