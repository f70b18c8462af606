/* Kernel smoke test in plain C (no Python): built natively and cross-built for aarch64 by
 * tests/test_portability.py, to show the portable scalar path builds and runs there. */
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include "kernels.h"
int main(void) {
    gb_isa isa = gb_cpu_init();
    printf("isa %s\n", gb_isa_name(isa));
    int64_t M = 37, K = 70, N = 53;
    float *A = malloc(M*K*4), *B = malloc(K*N*4), *C = malloc(M*N*4);
    for (int64_t i = 0; i < M*K; i++) A[i] = sinf((float)i);
    for (int64_t i = 0; i < K*N; i++) B[i] = cosf((float)i * 0.7f);
    gb_matrix Bm = {.data = B, .dtype = GB_F32, .trans = 0, .K = K, .N = N, .ld = N, .group = N};
    if (gb_gemm(C, N, A, K, &Bm, NULL, M, 0)) { printf("gemm failed\n"); return 1; }
    double err = 0;
    for (int64_t m = 0; m < M; m++) for (int64_t n = 0; n < N; n++) {
        double s = 0; for (int64_t k = 0; k < K; k++) s += (double)A[m*K+k]*B[k*N+n];
        err = fmax(err, fabs(s - C[m*N+n]));
    }
    printf("gemm max err %.3g\n", err);
    int64_t P = 20, H = 4, d = 16;
    float *q = malloc(P*H*d*4), *z = malloc(P*H*d*4), *pat = malloc(H*P*P*4);
    for (int64_t i = 0; i < P*H*d; i++) q[i] = sinf(0.3f*(float)i);
    gb_attn_shape s = {.B = 1, .P = P, .K = P, .H = H, .G = H, .d = d, .ldq = H*d, .ldk = H*d, .ldv = H*d, .ldz = H*d, .inv_scale = 0.25f};
    if (gb_attention(z, NULL, pat, q, q, q, &s)) { printf("attn failed\n"); return 1; }
    double rowerr = 0;
    for (int64_t r = 0; r < H*P; r++) { double t = 0; for (int64_t j = 0; j < P; j++) t += pat[r*P+j]; rowerr = fmax(rowerr, fabs(t-1)); }
    printf("pattern rows sum to 1 within %.3g\n", rowerr);
    float x[8] = {-3,-1,-0.1f,0,0.1f,1,3,10}, y[8];
    gb_activation(y, x, 8, GB_ACT_GELU_NEW);
    printf("gelu_new(1) = %.7f (expect 0.8411920)\n", y[5]);
    return err < 1e-3 && rowerr < 1e-5 ? 0 : 1;
}
