/*
 * Body of the SIMD int8 dot kernel, included by quant_dot.c once per instruction set with
 * GB_I8DOT_NAME (the function's name) and GB_I8DOT(u, s) (eight int32 lanes, lane l the sum
 * of the products of bytes 4l..4l+3 of u8 u and s8 s) defined, and GB_I8DOT_WIDE when
 * GB_I8DOT has no int16 intermediate (VNNI: Q8_0 as w + 128, corrected by 128 * sum(x)),
 * inside that set's target pragma.  Contract and arithmetic: see int8_dot_scalar in
 * quant_dot.c; this computes the same values in the same order, four weight rows at a time
 * with one fp32 lane per output.
 */

#define GB_I8_CAT2(a, b) a##b
#define GB_I8_CAT(a, b) GB_I8_CAT2(a, b)

/* The block scales of four rows as fp32 (F16C conversion: exact): dw (the f16 at byte 0) and,
 * for Q4_1, mw (the f16 at byte 2).  One 4-byte load per row reads both (for Q8_0 / Q4_0 the
 * upper two bytes are quants, in the block, unused); one conversion of the eight halves. */
static inline __attribute__((always_inline)) __m128 GB_I8_CAT(GB_I8DOT_NAME, _scales4)(
    const uint8_t *p0, const uint8_t *p1, const uint8_t *p2, const uint8_t *p3, __m128 *mw) {
    int32_t w0, w1, w2, w3;
    memcpy(&w0, p0, 4);
    memcpy(&w1, p1, 4);
    memcpy(&w2, p2, 4);
    memcpy(&w3, p3, 4);
    const __m256 h = _mm256_cvtph_ps(_mm_setr_epi32(w0, w1, w2, w3)); /* d0 m0 d1 m1 d2 m2 d3 m3 */
    const __m128 lo = _mm256_castps256_ps128(h), hi = _mm256_extractf128_ps(h, 1);
    *mw = _mm_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1));
    return _mm_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
}

/* lane j of the result = the sum of v_j's 8 int32 lanes (exact integer sums) */
static inline __attribute__((always_inline)) __m128i GB_I8_CAT(GB_I8DOT_NAME, _hsum4)(
    __m256i v0, __m256i v1, __m256i v2, __m256i v3) {
    const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(v0, v1), _mm256_hadd_epi32(v2, v3));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

/* Four weight rows (rows[0..3]) against mr <= 4 activation rows; r <= 4 outputs stored. */
static inline __attribute__((always_inline)) void
GB_I8_CAT(GB_I8DOT_NAME, _dtype)(const int dtype, float *C, int64_t ldc, const int8_t *qa,
                                 const float *da, const int32_t *qsa, int64_t K, const int mr,
                                 const uint8_t *const *rows, int64_t r, int accumulate,
                                 const float *bias) {
    const int64_t kb = K / GB_QBLOCK;
    const int64_t bb = dtype == GB_Q8_0 ? 34 : dtype == GB_Q4_0 ? 18 : 20;
    const int64_t off = dtype == GB_Q4_1 ? 4 : 2; /* the quants after the block's scale(s) */
    const __m128i low4 = _mm_set1_epi8(15);
    __m128 acc[4];
    for (int m = 0; m < 4; m++) {
        acc[m] = _mm_setzero_ps();
        if (accumulate && m < mr) {
            float t[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            for (int64_t j = 0; j < r; j++) t[j] = C[m * ldc + j];
            acc[m] = _mm_loadu_ps(t);
        }
    }
    const uint8_t *p0 = rows[0], *p1 = rows[1], *p2 = rows[2], *p3 = rows[3];
    for (int64_t b = 0; b < kb; b++, p0 += bb, p1 += bb, p2 += bb, p3 += bb) {
        __m128 mw;
        const __m128 dw = GB_I8_CAT(GB_I8DOT_NAME, _scales4)(p0, p1, p2, p3, &mw);
        __m256i u0, u1, u2, u3;
        if (dtype == GB_Q8_0) {
            u0 = _mm256_loadu_si256((const __m256i *)(p0 + off));
            u1 = _mm256_loadu_si256((const __m256i *)(p1 + off));
            u2 = _mm256_loadu_si256((const __m256i *)(p2 + off));
            u3 = _mm256_loadu_si256((const __m256i *)(p3 + off));
#ifdef GB_I8DOT_WIDE
            const __m256i bias128 = _mm256_set1_epi8((char)0x80); /* s8 w -> u8 w + 128 */
            u0 = _mm256_xor_si256(u0, bias128);
            u1 = _mm256_xor_si256(u1, bias128);
            u2 = _mm256_xor_si256(u2, bias128);
            u3 = _mm256_xor_si256(u3, bias128);
#endif
        } else {
#define GB_I8_NIBBLES(p)                                                        \
    _mm256_set_m128i(                                                           \
        _mm_and_si128(_mm_srli_epi16(_mm_loadu_si128((const __m128i *)((p) + off)), 4), low4), \
        _mm_and_si128(_mm_loadu_si128((const __m128i *)((p) + off)), low4))
            u0 = GB_I8_NIBBLES(p0);
            u1 = GB_I8_NIBBLES(p1);
            u2 = GB_I8_NIBBLES(p2);
            u3 = GB_I8_NIBBLES(p3);
#undef GB_I8_NIBBLES
        }
        for (int m = 0; m < 4; m++) {
            if (m >= mr) break;
            const __m256i x = _mm256_loadu_si256((const __m256i *)(qa + m * K + b * GB_QBLOCK));
            __m256i s0, s1, s2, s3;
            /* (with GB_I8DOT_WIDE, Q8_0 takes the plain path: w + 128 as u8 against x, less
             * 128 * sum(x) below) */
#ifndef GB_I8DOT_WIDE
            if (dtype == GB_Q8_0) {
                /* w * x = |w| * (x with w's sign): u8 x s8 without int16 overflow */
                s0 = GB_I8DOT(_mm256_sign_epi8(u0, u0), _mm256_sign_epi8(x, u0));
                s1 = GB_I8DOT(_mm256_sign_epi8(u1, u1), _mm256_sign_epi8(x, u1));
                s2 = GB_I8DOT(_mm256_sign_epi8(u2, u2), _mm256_sign_epi8(x, u2));
                s3 = GB_I8DOT(_mm256_sign_epi8(u3, u3), _mm256_sign_epi8(x, u3));
            } else
#endif
            {
                s0 = GB_I8DOT(u0, x);
                s1 = GB_I8DOT(u1, x);
                s2 = GB_I8DOT(u2, x);
                s3 = GB_I8DOT(u3, x);
            }
            __m128i isum = GB_I8_CAT(GB_I8DOT_NAME, _hsum4)(s0, s1, s2, s3);
            const float dx = da[m * kb + b];
            const int32_t qs = qsa[m * kb + b];
            if (dtype == GB_Q4_0) isum = _mm_sub_epi32(isum, _mm_set1_epi32(8 * qs));
#ifdef GB_I8DOT_WIDE
            if (dtype == GB_Q8_0) isum = _mm_sub_epi32(isum, _mm_set1_epi32(128 * qs));
#endif
            __m128 term = _mm_mul_ps(_mm_mul_ps(dw, _mm_set1_ps(dx)), _mm_cvtepi32_ps(isum));
            if (dtype == GB_Q4_1)
                term = _mm_add_ps(term, _mm_mul_ps(mw, _mm_set1_ps(dx * (float)qs)));
            acc[m] = _mm_add_ps(acc[m], term);
        }
    }
    for (int m = 0; m < 4; m++) {
        if (m >= mr) break;
        float t[4];
        _mm_storeu_ps(t, acc[m]);
        for (int64_t j = 0; j < r; j++) C[m * ldc + j] = bias ? t[j] + bias[j] : t[j];
    }
}

/* dtype and row count as compile-time constants, so the accumulators stay in registers */
#define GB_I8_CASE(dt, n)                                                                  \
    GB_I8_CAT(GB_I8DOT_NAME, _dtype)(dt, C, ldc, qa, da, qsa, K, n, rows, r, accumulate, bias)
#define GB_I8_ROWS(dt)                                                                     \
    switch (mr) {                                                                          \
    case 1: GB_I8_CASE(dt, 1); break;                                                      \
    case 2: GB_I8_CASE(dt, 2); break;                                                      \
    case 3: GB_I8_CASE(dt, 3); break;                                                      \
    default: GB_I8_CASE(dt, 4); break;                                                     \
    }

static void GB_I8DOT_NAME(float *C, int64_t ldc, const int8_t *qa, const float *da,
                          const int32_t *qsa, int64_t K, int64_t mr,
                          const uint8_t *const rows[GB_INT8_NR], int64_t r, int dtype,
                          int accumulate, const float *bias) {
    switch (dtype) {
    case GB_Q8_0: GB_I8_ROWS(GB_Q8_0); break;
    case GB_Q4_0: GB_I8_ROWS(GB_Q4_0); break;
    default: GB_I8_ROWS(GB_Q4_1); break;
    }
}
#undef GB_I8_ROWS
#undef GB_I8_CASE

#undef GB_I8_CAT
#undef GB_I8_CAT2
