/* Elementwise helpers: residual add and token embedding lookup. */
#include <string.h>

#include "kernels.h"

/* Below this many elements the OpenMP fork/join costs more than the work. */
#define GB_EW_PAR_MIN ((int64_t)1 << 16)
/* Chunk so every thread streams a contiguous block (and vectorises). */
#define GB_EW_CHUNK ((int64_t)1 << 14)

/* out[i] = a[i] + b[i], n elements; out may alias a or b (element i is read
 * before it is written, and no other element depends on it). */
void gb_add(float *out, const float *a, const float *b, int64_t n) {
    int64_t nchunks = (n + GB_EW_CHUNK - 1) / GB_EW_CHUNK;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n >= GB_EW_PAR_MIN) num_threads(gb_team_size())
#endif
    for (int64_t c = 0; c < nchunks; c++) {
        int64_t lo = c * GB_EW_CHUNK;
        int64_t hi = lo + GB_EW_CHUNK < n ? lo + GB_EW_CHUNK : n;
        for (int64_t i = lo; i < hi; i++) out[i] = a[i] + b[i];
    }
}

/* out [M, D] row m = W_E [vocab, D] row tokens[m]. Token ids are trusted
 * (the caller range-checks them once, outside the kernel). */
void gb_embed(float *out, const float *W_E, const int64_t *tokens, int64_t M,
              int64_t D) {
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (M * D >= GB_EW_PAR_MIN) num_threads(gb_team_size())
#endif
    for (int64_t m = 0; m < M; m++)
        memcpy(out + m * D, W_E + tokens[m] * D, (size_t)D * sizeof(float));
}
