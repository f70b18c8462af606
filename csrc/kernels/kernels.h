/*
 * glassbox compute kernels: pure C11, no Python.
 *
 * Conventions
 *  - Every array is row-major fp32 unless its type says otherwise.
 *  - Argument order: outputs first, then inputs, then weights, then sizes.
 *  - Sizes and strides are int64_t (element counts, not bytes).
 *  - Kernels parallelise internally with OpenMP (when compiled with it) over
 *    independent rows / tiles: no reduction ever crosses threads, so results
 *    are bitwise identical for any thread count.
 *  - Each SIMD kernel has a scalar reference; the ISA is chosen once at start
 *    (gb_cpu_init) from CPU features and may be forced with GLASSBOX_ISA.
 */
#ifndef GLASSBOX_KERNELS_H
#define GLASSBOX_KERNELS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ ISA */
typedef enum {
    GB_ISA_SCALAR = 0, /* portable C reference, every platform */
    GB_ISA_AVX2 = 1,   /* x86-64 AVX2 + FMA */
    GB_ISA_AVX512 = 2, /* x86-64 AVX-512F */
    GB_ISA_COUNT
} gb_isa;

/* Pick the best ISA this CPU supports, unless the environment variable
 * GLASSBOX_ISA (scalar|avx2|avx512) forces one. Idempotent. Returns the ISA
 * chosen. A forced ISA the CPU lacks falls back to the best supported one and
 * gb_isa_forced_error() returns a message saying so (NULL otherwise). */
gb_isa gb_cpu_init(void);
gb_isa gb_isa_current(void);
const char *gb_isa_name(gb_isa isa);
/* 1 if this CPU (and this build) can run `isa`. */
int gb_isa_supported(gb_isa isa);
/* Select an ISA at run time (tests). Returns 0 on success, -1 if unsupported. */
int gb_isa_set(gb_isa isa);
const char *gb_isa_forced_error(void);

/* -------------------------------------------------------------- threads */
/* Threads a kernel may use: omp_get_max_threads(), or 1 in a process forked after glassbox
 * was imported (libgomp's pool cannot start threads in a forked child: a larger team would
 * hang).  Every parallel region passes it (or a count derived from it) to num_threads(). */
int gb_max_threads(void);
/* 1 in a forked child (see gb_max_threads). */
int gb_in_forked_child(void);
/* Process-wide thread count for the kernels (glassbox.set_num_threads): n >= 1 replaces
 * OpenMP's count, 0 restores it.  Returns -1 for n < 0. */
int gb_set_max_threads(int n);
/* Threads worth using for `work` multiply-adds (or element operations x 8 for memory-bound
 * loops): 1 below about a million (a fork/join and its barrier cost more than they save,
 * and with a busy machine a descheduled second thread stalls the first at the barrier),
 * otherwise gb_max_threads(), never more than work / 2^20. */
int gb_threads_for(int64_t work);
/* Busy-machine back-off (cpu.c): after a parallel region, the calling thread's work time and
 * its wait at the closing barrier; three long waits in a row make gb_threads_for and
 * gb_team_size return 1 for 2 s (cpu.c). */
void gb_note_barrier_wait(int64_t work_ns, int64_t wait_ns);
/* The same for a region that started at t_start_ns (gb_now_ns) in which the calling thread
 * worked busy_ns: its wait is the rest of the elapsed time. */
void gb_note_region(int64_t t_start_ns, int64_t busy_ns);
int gb_machine_busy(void);
void gb_reset_busy(void); /* forget the back-off state (tests) */
/* The team for a kernel's parallel region: gb_max_threads(), or 1 while the machine is busy. */
int gb_team_size(void);
int64_t gb_now_ns(void);

/* A 64-byte aligned scratch buffer of >= bytes owned by the calling thread, reused by its
 * next call (so: never hold it across another call that may use it).  NULL if out of memory
 * or unsupported: the caller then allocates and frees its own. */
void *gb_workspace(size_t bytes);

/* ------------------------------------------------------ ceilings (probe.c) */
/* fp32 FMA throughput of `isa` on `nthreads` threads, `iters` loop steps per thread. */
int gb_probe_fma(gb_isa isa, int64_t iters, int nthreads, double *gflops, double *checksum);
/* Read bandwidth of summing p[0, n) on `nthreads` threads (disjoint halves). */
int gb_probe_read(const float *p, int64_t n, int nthreads, double *gbps, double *checksum);

/* ------------------------------------------------------------ stopping */
/* Long kernels (GEMM, attention) poll a stop flag per block of work and skip the rest of
 * their work once it is raised (their output is then garbage: the caller must discard it).
 * The flag is only visible to calls made from a thread that armed it (gb_stop_arm(1)): a
 * kernel takes gb_stop_token() once, in the calling thread, and its OpenMP workers poll
 * through that pointer.  gb_stop_request() is async-signal-safe (the bridge's SIGINT
 * handler calls it). */
typedef atomic_int gb_stop_flag;
const gb_stop_flag *gb_stop_token(void);
static inline int gb_stop_requested(const gb_stop_flag *token) {
    return atomic_load_explicit(token, memory_order_relaxed) != 0;
}
void gb_stop_arm(int on);
void gb_stop_request(void);
void gb_stop_clear(void);
int gb_stop_pending(void);

/* ----------------------------------------------------------------- GEMM */
/* Weight storage types. Floating types work in both layouts; the GGUF block
 * types (ggml's block formats, weights only) only in the file layout
 * (trans == 1), where each of the N stored rows is a run of blocks along K.
 * All are widened / dequantised to fp32 inside the GEMM's packing step, never
 * expanded in RAM. */
typedef enum {
    GB_F32 = 0,
    GB_BF16 = 1,
    GB_F16 = 2,
    GB_Q8_0 = 3, /* 32 elems: f16 d, 32 x int8 q;            x = d * q              */
    GB_Q4_0 = 4, /* 32 elems: f16 d, 16 bytes of nibbles;    x = d * (q - 8)        */
    GB_Q4_1 = 5, /* 32 elems: f16 d, f16 m, 16 bytes;        x = d * q + m          */
    GB_Q4_K = 6, /* 256 elems: f16 d, f16 dmin, 12 B scales, 128 B nibbles          */
    GB_Q6_K = 7, /* 256 elems: 128 B low 4 bits, 64 B high 2 bits, 16 int8 scales, f16 d */
    GB_DTYPE_COUNT
} gb_dtype;

/* Elements per block (1 for float types) and bytes per block. */
int64_t gb_dtype_block_elems(int dtype);
int64_t gb_dtype_block_bytes(int dtype);
/* Bytes of one stored row of n elements (n a multiple of the block size). */
int64_t gb_dtype_row_bytes(int dtype, int64_t n);
/* dst[0:n] = the n elements (n a multiple of the block size) stored at src. */
void gb_dequantize_row(float *dst, const void *src, int dtype, int64_t n);
/* IEEE binary16 -> binary32, exact for every bit pattern. */
float gb_half_to_float(uint16_t h);
/* out[m, :] = row tokens[m] of a [V, D] table stored as rows of `dtype`
 * (an embedding gather that widens / dequantises one row at a time). */
void gb_embed_rows(float *out, const void *table, int dtype, const int64_t *tokens,
                   int64_t M, int64_t D);

/* A logical K x N right-hand matrix B, described without copying it.
 *  trans == 0 ("x @ W", TransformerLens layout, possibly per-head):
 *      B(k, n) = data[(n / group) * group_stride + k * ld + (n % group)]
 *      plain [K, N] row-major: group = N, group_stride = 0, ld = N
 *      TL per-head W_Q [H, D, d] seen as [D, H*d]: group = d,
 *      group_stride = D*d, ld = d
 *  trans == 1 ("x @ W^T", file layout [out, in] as in HF nn.Linear / GGUF):
 *      B(k, n) = data[n * ld + k]           (float types; ld in elements)
 *      block types: row n starts at byte n * gb_dtype_row_bytes(dtype, ld)
 *      and holds ld >= K elements (ld a multiple of the block size)
 */
typedef struct {
    const void *data;
    int dtype;   /* gb_dtype */
    int trans;   /* 0 or 1, see above */
    int64_t K, N;
    int64_t ld;
    int64_t group;        /* trans == 0 only */
    int64_t group_stride; /* trans == 0 only */
} gb_matrix;

/* C[m, n] = (accumulate ? C[m, n] : 0) + sum_k A[m, k] * B(k, n) + bias[n]
 * for m < M, n < B->N, k < B->K.  A has row stride lda, C row stride ldc.
 * bias may be NULL. Returns 0, or -1 if out of memory (C then undefined). */
int gb_gemm(float *C, int64_t ldc, const float *A, int64_t lda,
            const gb_matrix *B, const float *bias, int64_t M, int accumulate);

/* The same with a given ISA (tests compare each against GB_ISA_SCALAR). */
int gb_gemm_isa(gb_isa isa, float *C, int64_t ldc, const float *A, int64_t lda,
                const gb_matrix *B, const float *bias, int64_t M, int accumulate);
/* gb_gemm_isa without the int8-activations mode (always the fp32 arithmetic). */
int gb_gemm_isa_float(gb_isa isa, float *C, int64_t ldc, const float *A, int64_t lda,
                      const gb_matrix *B, const float *bias, int64_t M, int accumulate);

/* A fused epilogue: what happens to each element of C after its last K block
 * and the bias, inside the GEMM's own pass over C (while the tile is still in
 * cache), instead of in a separate pass over [M, N] afterwards. In order:
 *   act >= 0, gate == NULL:  C = act(C)                 (GELU MLP, W_in)
 *   act >= 0, gate != NULL:  C = act(gate) * C          (gated MLP: C is the up
 *                                                        projection, gate [M, ldg])
 *   resid != NULL:           resid = resid + C          (residual add, [M, ldr];
 *                                                        C keeps the sum + bias)
 * Each step is the same elementwise operation, rounded the same way, as
 * gb_activation / gb_gated_activation / gb_add on the finished C, so a fused
 * GEMM is bitwise the unfused GEMM followed by those passes (tested), on every
 * path and ISA; paths that do not fuse (small M, int8, scalar) run the same
 * steps after the product. */
typedef struct {
    int act;           /* gb_act, or -1: none */
    const float *gate; /* with act: the gate values, [M, ldg] */
    int64_t ldg;
    float *resid; /* or NULL */
    int64_t ldr;
} gb_epilogue;
/* gb_gemm / gb_gemm_isa with an epilogue (ep may be NULL). */
int gb_gemm_ep(float *C, int64_t ldc, const float *A, int64_t lda, const gb_matrix *B,
               const float *bias, int64_t M, int accumulate, const gb_epilogue *ep);
int gb_gemm_isa_ep(gb_isa isa, float *C, int64_t ldc, const float *A, int64_t lda,
                   const gb_matrix *B, const float *bias, int64_t M, int accumulate,
                   const gb_epilogue *ep);

/* ------------------------------------------- int8 activations (quant_dot.c) */
/* Opt-in, process-wide: GEMMs with Q8_0 / Q4_0 / Q4_1 weights quantise the activations to
 * int8 blocks of GB_QBLOCK and use integer dot products (up to GB_INT8_DOT_ROWS rows; more
 * rows take the same quantised activations through the fp32 GEMM).  See quant_dot.c for the
 * exact arithmetic, identical on every ISA. */
#define GB_QBLOCK 32
#define GB_INT8_DOT_ROWS 8
#define GB_INT8_NR 4 /* weight rows per kernel call */
void gb_set_int8_activations(int on);
int gb_int8_activations(void);
int gb_int8_dtype(int dtype);
int gb_cpu_has_vnni(void);
const char *gb_int8_kernel_name(gb_isa isa);
/* q[0:K], d[0:K/32], qs[0:K/32] = row x[0:K] in int8 blocks (K a multiple of 32). */
void gb_quantize_act_row(int8_t *q, float *d, int32_t *qs, const float *x, int64_t K);
int gb_gemm_int8(gb_isa isa, float *C, int64_t ldc, const float *A, int64_t lda,
                 const gb_matrix *B, const float *bias, int64_t M, int accumulate);

/* ---------------------------------------------------------------- norms */
/* Per row m of x [M, D] (row stride ldx):
 *   center != 0 (LayerNorm):  c = x - mean(x);  scale = sqrt(mean(c^2) + eps)
 *   center == 0 (RMSNorm):    c = x;            scale = sqrt(mean(x^2) + eps)
 * writes centred[m, :] = c (row stride D; may alias x when ldx == D) and
 * scale[m]. Sums accumulate in double. */
void gb_norm_scale(float *centred, float *scale, const float *x, int64_t ldx,
                   int64_t M, int64_t D, float eps, int center);
/* out[m, d] = centred[m, d] / scale[m] * (w ? w[d] : 1) + (b ? b[d] : 0).
 * out may alias centred. */
void gb_norm_apply(float *out, const float *centred, const float *scale,
                   const float *w, const float *b, int64_t M, int64_t D);

/* ---------------------------------------------------------- activations */
typedef enum {
    GB_ACT_RELU = 0,
    GB_ACT_GELU = 1,              /* exact erf GELU (torch F.gelu) */
    GB_ACT_GELU_NEW = 2,          /* tanh approximation, as GPT-2 */
    GB_ACT_GELU_FAST = 3,         /* TL gelu_fast */
    GB_ACT_GELU_PYTORCH_TANH = 4, /* same formula as gelu_new */
    GB_ACT_SILU = 5,
    GB_ACT_COUNT
} gb_act;
/* out[i] = act(x[i]); out may alias x. */
void gb_activation(float *out, const float *x, int64_t n, gb_act act);
/* Gated MLP: out[i] = act(gate[i]) * up[i]; out may alias either input. */
void gb_gated_activation(float *out, const float *gate, const float *up,
                         int64_t n, gb_act act);

/* -------------------------------------------------------------- helpers */
/* out[i] = a[i] + b[i]; out may alias a or b. */
void gb_add(float *out, const float *a, const float *b, int64_t n);
/* out[m, :] = W_E[tokens[m], :] for m < M (tokens already range-checked). */
void gb_embed(float *out, const float *W_E, const int64_t *tokens, int64_t M,
              int64_t D);

/* ----------------------------------------------------------------- RoPE */
/* In-place rotary embedding on x: M rows (row stride ldx), each holding
 * n_heads heads of d_head values (head h at column h * d_head).
 * Only the first rotary_dim (even, <= d_head) values of each head rotate.
 * angle(m, i) = (float)positions[m] * inv_freq[i], i < rotary_dim / 2,
 * computed in fp32 as HF and TransformerLens do.
 *  adjacent == 0 (HF LLaMA / GPT-NeoX half split): pairs (x[i], x[i + R/2])
 *  adjacent == 1 (GPT-J / Meta): pairs (x[2i], x[2i + 1])
 * out_a = a cos - b sin;  out_b = b cos + a sin. */
void gb_rope(float *x, int64_t ldx, int64_t M, int64_t n_heads, int64_t d_head,
             int64_t rotary_dim, const int64_t *positions,
             const float *inv_freq, int adjacent);

/* ------------------------------------------------------------ attention */
/* Attention for B sequences, H query heads and G key/value heads (H % G == 0;
 * query head h reads kv head h / (H / G), never copying K/V per query head).
 *   q: [B*P, ldq], head h at column h*d;   k, v: [B*K, ldk] / [B*K, ldv],
 *   kv head g at column g*d.  Query i of sequence b sits at key index
 *   i + (K - P) (so K == P without a KV cache).
 * Mask: key j is visible to query i iff  j <= i + (K - P)   (causal)
 *   and (key_mask == NULL || key_mask[b*K + j] != 0)        (padding)
 *   and (window <= 0 || (i + K - P) - j < window)           (sliding window)
 * scores = q.k * inv_scale, masked entries -inf; pattern = softmax over keys
 * with the row maximum subtracted; a row with no visible key gets pattern 0
 * (TransformerLens turns its NaN rows into 0); z[b*P+i, h*d:] = pattern @ v.
 * Outputs scores / pattern are [B, H, P, K] and may be NULL (not wanted);
 * z is [B*P, ldz] and may be NULL (not wanted).
 * kv_rows: rows of k / v from one sequence to the next (0 means K). A KV
 * cache [B, capacity, G, d] is read in place with kv_rows = capacity; only
 * its first K rows per sequence are touched. */
typedef struct {
    int64_t B, P, K, H, G, d;
    int64_t ldq, ldk, ldv, ldz;
    float inv_scale;
    int64_t window;         /* <= 0: no sliding window */
    const int32_t *key_mask; /* [B, K] or NULL */
    int64_t kv_rows;         /* k / v rows between sequences; 0: K */
} gb_attn_shape;

/* One call: scores, softmax, z; materialises scores/pattern only when the
 * pointers are non-NULL (otherwise per-thread scratch). Prefill (P >= 8) runs
 * blocks of query rows through the packed GEMM; fewer rows (generation) run a
 * per-row kernel, which the environment variable GLASSBOX_ATTN_ROWS forces
 * for every call (tests). Returns 0 or -1 on OOM. */
int gb_attention(float *z, float *scores, float *pattern, const float *q,
                 const float *k, const float *v, const gb_attn_shape *s);
/* Split steps, for when a hook may edit scores or pattern in between. */
void gb_attn_scores(float *scores, const float *q, const float *k,
                    const gb_attn_shape *s);
/* pattern = masked softmax of scores (both [B, H, P, K]); entries that are
 * -inf (or NaN rows) give 0.  pattern may alias scores. */
void gb_attn_softmax(float *pattern, const float *scores, const gb_attn_shape *s);
void gb_attn_apply(float *z, const float *pattern, const float *v,
                   const gb_attn_shape *s);

#ifdef __cplusplus
}
#endif
#endif /* GLASSBOX_KERNELS_H */
