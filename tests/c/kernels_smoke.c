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
    /* int8 activations on Q4_1 weights (2 rows x 64): fp32 mode vs int8 mode, within the
     * activation-rounding bound sum_k |w_k| * dx / 2 (dx = block amax / 127) */
    unsigned char wq[2 * 2 * 20];
    for (int i = 0; i < (int)sizeof wq; i++) wq[i] = (unsigned char)(i * 37 + 11);
    for (int b = 0; b < 4; b++) { /* d = 0.0625 (f16 0x2C00), m = -0.5 (f16 0xB800) */
        wq[b * 20 + 0] = 0x00; wq[b * 20 + 1] = 0x2C; wq[b * 20 + 2] = 0x00; wq[b * 20 + 3] = 0xB8;
    }
    float xa[64], o32[2], o8[2], wd[128];
    for (int i = 0; i < 64; i++) xa[i] = sinf(0.9f * (float)i) * (i < 32 ? 1.0f : 3.0f);
    gb_matrix Wm = {.data = wq, .dtype = GB_Q4_1, .trans = 1, .K = 64, .N = 2, .ld = 64, .group = 2};
    int rc8 = gb_gemm(o32, 2, xa, 64, &Wm, NULL, 1, 0);
    gb_set_int8_activations(1);
    rc8 |= gb_gemm(o8, 2, xa, 64, &Wm, NULL, 1, 0);
    gb_set_int8_activations(0);
    gb_dequantize_row(wd, wq, GB_Q4_1, 64);
    gb_dequantize_row(wd + 64, wq + 40, GB_Q4_1, 64);
    double i8err = 0, i8bound = 1e-5;
    for (int n = 0; n < 2; n++) {
        double bnd = 0;
        for (int k = 0; k < 64; k++) bnd += fabs(wd[n * 64 + k]) * (k < 32 ? 1.0 : 3.0) / 127.0 / 2;
        i8err = fmax(i8err, fabs(o8[n] - o32[n]) - bnd);
    }
    printf("int8 activations (%s): %.6f %.6f vs fp32 %.6f %.6f, beyond the bound by %.3g\n",
           gb_int8_kernel_name(isa), o8[0], o8[1], o32[0], o32[1], i8err);
    return err < 1e-3 && rowerr < 1e-5 && rc8 == 0 && i8err < i8bound && o8[0] != o32[0] ? 0 : 1;
}
