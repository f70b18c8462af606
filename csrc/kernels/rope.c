/* Rotary position embedding, in place.
 * x: M rows (row stride ldx), each n_heads heads of d_head values; the first
 * rotary_dim (R, even) values of each head rotate, the rest pass through.
 * For row m and frequency i < R/2:
 *   angle = (float)positions[m] * inv_freq[i]   (one fp32 product, as HF's
 *           inv_freq @ position matmul with K = 1 and TL's einsum compute it)
 *   c = cosf(angle), s = sinf(angle)
 *   half split (adjacent == 0, HF LLaMA / NeoX):  a = x[i], b = x[i + R/2]
 *   adjacent pairs (adjacent == 1, GPT-J):        a = x[2i], b = x[2i + 1]
 *   a' = a c - b s,  b' = b c + a s
 * (HF computes a*cos + (-b)*sin: identical in fp32, negation is exact.)
 * cos/sin depend only on the row, so they are computed once per row for a
 * block of frequencies (on the stack) and reused across heads. */
#include <math.h>

#include "kernels.h"

/* frequencies per stack block: R/2 <= 128 for every model we know of, so one
 * block normally covers the row; larger R just loops. */
#define GB_ROPE_BLOCK 128
#define GB_ROPE_PAR_MIN ((int64_t)1 << 13)

void gb_rope(float *x, int64_t ldx, int64_t M, int64_t n_heads, int64_t d_head,
             int64_t rotary_dim, const int64_t *positions,
             const float *inv_freq, int adjacent) {
    const int64_t half = rotary_dim / 2;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (M * n_heads * rotary_dim >= GB_ROPE_PAR_MIN) num_threads(gb_team_size())
#endif
    for (int64_t m = 0; m < M; m++) {
        float c[GB_ROPE_BLOCK], s[GB_ROPE_BLOCK];
        const float pos = (float)positions[m];
        float *row = x + m * ldx;
        for (int64_t f0 = 0; f0 < half; f0 += GB_ROPE_BLOCK) {
            const int64_t nf = half - f0 < GB_ROPE_BLOCK ? half - f0 : GB_ROPE_BLOCK;
            for (int64_t i = 0; i < nf; i++) {
                const float ang = pos * inv_freq[f0 + i];
                c[i] = cosf(ang);
                s[i] = sinf(ang);
            }
            for (int64_t h = 0; h < n_heads; h++) {
                float *hx = row + h * d_head;
                if (!adjacent) {
                    float *xa = hx + f0, *xb = hx + half + f0;
                    for (int64_t i = 0; i < nf; i++) {
                        const float a = xa[i], b = xb[i];
                        xa[i] = a * c[i] - b * s[i];
                        xb[i] = b * c[i] + a * s[i];
                    }
                } else {
                    float *xp = hx + 2 * f0;
                    for (int64_t i = 0; i < nf; i++) {
                        const float a = xp[2 * i], b = xp[2 * i + 1];
                        xp[2 * i] = a * c[i] - b * s[i];
                        xp[2 * i + 1] = b * c[i] + a * s[i];
                    }
                }
            }
        }
    }
}
