/*
 * GGUF / ggml block formats: geometry, row dequantisation, embedding gather.
 *
 * Every format is decoded exactly as the `gguf` Python package's numpy
 * reference (gguf/quants.py) does it, in fp32 with the same operations in the
 * same order, so results are bit-identical to gguf.quants.dequantize():
 *   Q8_0  (34 B / 32):  f16 d | 32 x int8 q                  x = q * d
 *   Q4_0  (18 B / 32):  f16 d | 16 B: elem i low nibble of byte i, elem i+16
 *                       high nibble                           x = d * (q - 8)
 *   Q4_1  (20 B / 32):  f16 d | f16 m | 16 B nibbles as Q4_0  x = (d * q) + m
 *   Q4_K (144 B / 256): f16 d | f16 dmin | 12 B packed 6-bit scales/mins |
 *                       128 B nibbles: sub-block j (32 elems) = nibble (j & 1)
 *                       of bytes [32 * (j / 2), +32)
 *                       x = (d * sc[j]) * q - (dmin * mn[j])
 *   Q6_K (210 B / 256): 128 B ql | 64 B qh | 16 x int8 scales | f16 d
 *                       element i = 128 h + 32 t + l (h < 2, t < 4, l < 32):
 *                         low 4 bits: nibble (t >> 1) of ql[64 h + 32 (t & 1) + l]
 *                         high 2 bits: bits 2t..2t+1 of qh[32 h + l]
 *                       x = (d * scales[i / 16]) * (q - 32)
 * Every product / difference is a separate fp32 operation (the build uses
 * -std=c11, i.e. -ffp-contract=off: no FMA contraction), and the f16 -> f32
 * conversion is exact, so the results match numpy bit for bit.
 *
 * The scalar decoders here are the reference; gemm_avx2.c has AVX2 versions of
 * the block decoders (same arithmetic, 8 lanes at a time), used when the
 * selected ISA allows.  Multi-byte fields are read byte by byte (little
 * endian, as the files store them), so no alignment is assumed anywhere.
 */
#include <string.h>

#include "kernels.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* Internal (shared with gemm.c / gemm_avx2.c): a row decoder for a given ISA.
 * GB_ISA_SCALAR uses the reference decoders below; AVX2 / AVX-512 use the AVX2
 * block decoders.  Bit-identical results whichever is used. */
void gb_dequantize_row_isa(gb_isa isa, float *dst, const void *src, int dtype, int64_t n);
#if defined(__x86_64__) && defined(__GNUC__)
/* gemm_avx2.c: decode nblocks consecutive blocks of a block dtype. */
void gb_dequantize_blocks_avx2(float *dst, const uint8_t *src, int dtype, int64_t nblocks);
#endif

/* ------------------------------------------------------------- geometry */

int64_t gb_dtype_block_elems(int dtype) {
    switch (dtype) {
    case GB_F32:
    case GB_BF16:
    case GB_F16:
        return 1;
    case GB_Q8_0:
    case GB_Q4_0:
    case GB_Q4_1:
        return 32;
    case GB_Q4_K:
    case GB_Q6_K:
        return 256;
    default:
        return 0;
    }
}

int64_t gb_dtype_block_bytes(int dtype) {
    switch (dtype) {
    case GB_F32: return 4;
    case GB_BF16: return 2;
    case GB_F16: return 2;
    case GB_Q8_0: return 2 + 32;
    case GB_Q4_0: return 2 + 16;
    case GB_Q4_1: return 2 + 2 + 16;
    case GB_Q4_K: return 2 + 2 + 12 + 128;
    case GB_Q6_K: return 128 + 64 + 16 + 2;
    default: return 0;
    }
}

/* -1 for an unknown dtype, an n that is not a whole number of blocks, or a byte count that
 * does not fit in int64. */
int64_t gb_dtype_row_bytes(int dtype, int64_t n) {
    const int64_t be = gb_dtype_block_elems(dtype);
    if (be <= 0 || n < 0 || n % be != 0) return -1;
    int64_t bytes;
    if (__builtin_mul_overflow(n / be, gb_dtype_block_bytes(dtype), &bytes)) return -1;
    return bytes;
}

/* ------------------------------------------------------ scalar decoders */

static inline uint16_t rd16(const uint8_t *p) {
    return (uint16_t)(p[0] | ((uint16_t)p[1] << 8));
}

/* IEEE binary16 -> binary32, exact for every bit pattern. */
static inline float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h >> 15) << 31;
    uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff, bits;
    if (e == 0x1f) {
        bits = sign | 0x7f800000u | (m << 13); /* inf / nan, payload kept */
    } else if (e != 0) {
        bits = sign | ((e + 112) << 23) | (m << 13);
    } else if (m == 0) {
        bits = sign;
    } else {
        /* subnormal: normalise the mantissa */
        int32_t ex = 113; /* 127 - 15 + 1 */
        while (!(m & 0x400)) {
            m <<= 1;
            ex--;
        }
        bits = sign | ((uint32_t)ex << 23) | ((m & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

float gb_half_to_float(uint16_t h) { return half_to_float(h); }

static void deq_q8_0(float *restrict y, const uint8_t *restrict b) {
    const float d = half_to_float(rd16(b));
    for (int i = 0; i < 32; i++) y[i] = (float)(int8_t)b[2 + i] * d;
}

static void deq_q4_0(float *restrict y, const uint8_t *restrict b) {
    const float d = half_to_float(rd16(b));
    const uint8_t *q = b + 2;
    for (int i = 0; i < 16; i++) {
        y[i] = d * (float)((int)(q[i] & 0x0f) - 8);
        y[i + 16] = d * (float)((int)(q[i] >> 4) - 8);
    }
}

static void deq_q4_1(float *restrict y, const uint8_t *restrict b) {
    const float d = half_to_float(rd16(b)), m = half_to_float(rd16(b + 2));
    const uint8_t *q = b + 4;
    for (int i = 0; i < 16; i++) {
        const float lo = d * (float)(q[i] & 0x0f), hi = d * (float)(q[i] >> 4);
        y[i] = lo + m;
        y[i + 16] = hi + m;
    }
}

/* The 8 six-bit scales and mins of a Q4_K block (12 bytes s):
 *   j < 4:  sc = s[j] & 63,                         mn = s[j+4] & 63
 *   j >= 4: sc = (s[j+4] & 15) | ((s[j-4] >> 6) << 4),
 *           mn = (s[j+4] >> 4) | ((s[j]   >> 6) << 4)                    */
static inline void q4k_scales(const uint8_t *s, int *sc, int *mn) {
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 15) | ((s[j] >> 6) << 4);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
}

static void deq_q4_k(float *restrict y, const uint8_t *restrict b) {
    const float d = half_to_float(rd16(b)), dmin = half_to_float(rd16(b + 2));
    int sc[8], mn[8];
    q4k_scales(b + 4, sc, mn);
    const uint8_t *q = b + 16;
    for (int j = 0; j < 8; j++) {
        const float ds = d * (float)sc[j], dm = dmin * (float)mn[j];
        const uint8_t *qq = q + 32 * (j >> 1);
        const int shift = (j & 1) * 4;
        for (int l = 0; l < 32; l++) {
            const float t = ds * (float)((qq[l] >> shift) & 0x0f);
            y[32 * j + l] = t - dm;
        }
    }
}

static void deq_q6_k(float *restrict y, const uint8_t *restrict b) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    const float d = half_to_float(rd16(b + 208));
    float ds[16];
    for (int i = 0; i < 16; i++) ds[i] = d * (float)sc[i];
    for (int h = 0; h < 2; h++)
        for (int t = 0; t < 4; t++) {
            const uint8_t *lo = ql + 64 * h + 32 * (t & 1), *hi = qh + 32 * h;
            const int lshift = (t >> 1) * 4, hshift = 2 * t;
            float *yy = y + 128 * h + 32 * t;
            const float *s = ds + (128 * h + 32 * t) / 16;
            for (int l = 0; l < 32; l++) {
                const int q = ((lo[l] >> lshift) & 0x0f) | (((hi[l] >> hshift) & 3) << 4);
                yy[l] = s[l >> 4] * (float)(q - 32);
            }
        }
}

typedef void (*deq_block_fn)(float *restrict, const uint8_t *restrict);

static deq_block_fn block_decoder(int dtype) {
    switch (dtype) {
    case GB_Q8_0: return deq_q8_0;
    case GB_Q4_0: return deq_q4_0;
    case GB_Q4_1: return deq_q4_1;
    case GB_Q4_K: return deq_q4_k;
    case GB_Q6_K: return deq_q6_k;
    default: return NULL;
    }
}

/* ------------------------------------------------------------- rows */

void gb_dequantize_row_isa(gb_isa isa, float *dst, const void *src, int dtype, int64_t n) {
    const uint8_t *s = (const uint8_t *)src;
    const int64_t be = gb_dtype_block_elems(dtype);
    if (be <= 0 || n <= 0) {
        if (n > 0) memset(dst, 0, (size_t)n * sizeof(float)); /* unknown dtype */
        return;
    }
    const int64_t nb = n / be, bb = gb_dtype_block_bytes(dtype);
    switch (dtype) {
    case GB_F32:
        memcpy(dst, s, (size_t)n * sizeof(float));
        return;
    case GB_BF16:
        for (int64_t i = 0; i < n; i++) {
            const uint32_t bits = (uint32_t)rd16(s + 2 * i) << 16;
            memcpy(dst + i, &bits, sizeof bits);
        }
        return;
    case GB_F16:
        for (int64_t i = 0; i < n; i++) dst[i] = half_to_float(rd16(s + 2 * i));
        return;
    default:
        break;
    }
#if defined(__x86_64__) && defined(__GNUC__)
    if (isa != GB_ISA_SCALAR) {
        gb_dequantize_blocks_avx2(dst, s, dtype, nb);
    } else
#endif
    {
        const deq_block_fn f = block_decoder(dtype);
        for (int64_t i = 0; i < nb; i++) f(dst + i * be, s + i * bb);
    }
    /* n not a whole number of blocks violates the contract: zero the tail
     * rather than leave it undefined */
    if (nb * be < n) memset(dst + nb * be, 0, (size_t)(n - nb * be) * sizeof(float));
}

void gb_dequantize_row(float *dst, const void *src, int dtype, int64_t n) {
    gb_dequantize_row_isa(gb_isa_current(), dst, src, dtype, n);
}

/* One row per token, rows independent: OpenMP over tokens.  An invalid
 * dtype / D (not a whole number of blocks) writes nothing. */
void gb_embed_rows(float *out, const void *table, int dtype, const int64_t *tokens,
                   int64_t M, int64_t D) {
    const int64_t rb = gb_dtype_row_bytes(dtype, D);
    if (rb < 0 || M <= 0 || D <= 0) return;
    const gb_isa isa = gb_isa_current();
    const uint8_t *t = (const uint8_t *)table;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (M * D >= 65536) num_threads(gb_team_size())
#endif
    for (int64_t m = 0; m < M; m++)
        gb_dequantize_row_isa(isa, out + m * D, t + tokens[m] * rb, dtype, D);
}
