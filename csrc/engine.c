/*
 * The forward pass. One function per stage (embed, attention block, MLP
 * block, final norm and unembed), each a flat list of kernel calls with the
 * hook points in TransformerLens's firing order between them.
 *
 * Shapes: M = B * P rows (batch-major); D d_model, H query heads, G kv heads,
 * d d_head, Dm d_mlp, V d_vocab_out.  Activations are row-major [M, ...], which
 * is exactly TransformerLens's [batch, pos, ...] layout, so a hook sees the
 * engine's buffer without any transposition -- except attention scores and
 * pattern, which the attention kernels keep in TL's [B, H, P, K] order.
 *
 * KV cache (gb_run.kv_keys): the P new positions' rotated keys and values are
 * appended to the caller's [B, capacity, G, d] buffers and the attention
 * reads rows [0, past + P) of those buffers in place; K = past + P.
 */
#include <math.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <string.h>
#include <stdio.h>

#include "engine.h"

#define GB_SITE_INFO(e, n, p) {n, p},
const gb_site_info gb_sites[GB_SITE_COUNT] = {GB_SITE_LIST(GB_SITE_INFO)};
#undef GB_SITE_INFO

_Static_assert(GB_SITE_COUNT == 32, "hook-site table and enum out of step");

/* ------------------------------------------------------------ run state */
typedef struct {
    const gb_config *cfg;
    const gb_weights *w;
    const gb_plan *plan;
    const gb_run *run;
    int64_t B, P, M;
    int64_t past, K;    /* KV cache: positions before this run, keys attended (past + P) */
    int64_t *positions; /* [M], owned when the run gave none */
    int64_t ln_rows;    /* rows of one ln1 output: M, or M * max(H, G) with per-head inputs */
    /* scratch, allocated once per run */
    float *resid;   /* [M, D] */
    float *tmp;     /* [M, D]: embed / attn_out / mlp_out / norm scratch */
    float *normed;  /* [3][ln_rows, D]: ln1 outputs for q, k, v (or [1][M, D]) */
    float *scale;   /* [3][ln_rows] */
    float *heads_in;/* [3][M * nh_max * D]: attn_in / q,k,v split inputs */
    float *q, *k, *v, *z; /* [M, H*d], [M, G*d], [M, G*d], [M, H*d] */
    float *scores, *pattern; /* [B, H, P, K] when a hook calls back there */
    float *keys_all; /* [2][B, K, G*d]: every rotated key and value, for hook_rot_k with a KV cache */
    float *result;  /* [M, H, D] when use_attn_result */
    float *mlp_a, *mlp_b; /* [M, Dm] each */
    const float *sf_pos; /* shortformer: [M, D] positional embedding for the q/k inputs, or NULL */
    float *sf_own;       /* sf_pos when the engine computed it (owned) */
    float *sf_in;        /* shortformer: [ln_rows, D] scratch, ln1 output + sf_pos */
} gb_state;

static inline int64_t slot(const gb_state *s, int site, int64_t layer) {
    return (int64_t)site * (s->cfg->n_layers + 1) + (layer + 1);
}
static inline int mode_of(const gb_state *s, int site, int64_t layer) {
    return s->plan && s->plan->mode ? s->plan->mode[slot(s, site, layer)] : GB_HOOK_NONE;
}

/* Fused GEMM epilogues (kernels.h's gb_epilogue), process-wide, each switchable: the residual
 * adds (on by default) and the activations, bias + act and act(gate) * up (off by default:
 * on the Xeon of session 10 they measured 1-3% slower at two threads than the separate
 * pass, see docs/performance.md). Either way the results are bitwise the same. */
static atomic_int g_fuse_residual = 1, g_fuse_activation = 0;
void gb_set_fused_epilogues(int residual, int activation) {
    g_fuse_residual = residual ? 1 : 0;
    g_fuse_activation = activation ? 1 : 0;
}
void gb_fused_epilogues(int *residual, int *activation) {
    *residual = g_fuse_residual;
    *activation = g_fuse_activation;
}

/* The residual add can ride on the GEMM that produces attn_out / mlp_out unless a hook there
 * may edit that output before it is added (a cache hook only reads it). */
static inline int fuse_residual(const gb_state *s, int site, int64_t layer) {
    return g_fuse_residual && mode_of(s, site, layer) != GB_HOOK_CALL;
}

/* Fire a hook point: copy into the cache, or call back. `last` is 0 for the
 * first two of ln1's three calls (the cache keeps the last one, as TL's does). */
static int fire(gb_state *s, int site, int64_t layer, int call_index, float *data, int ndim,
                const int64_t *shape, int last) {
    int mode = mode_of(s, site, layer);
    if (mode == GB_HOOK_NONE) return 0;
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    if (mode == GB_HOOK_CACHE) {
        if (last) memcpy(s->plan->cache[slot(s, site, layer)], data, (size_t)n * sizeof(float));
        return 0;
    }
    return s->plan->call(s->plan->ctx, site, (int)layer, call_index, data, ndim, shape) ? -1 : 0;
}

static int fire3(gb_state *s, int site, int64_t layer, float *data, int64_t a, int64_t b,
                 int64_t c) {
    int64_t shape[3] = {a, b, c};
    return fire(s, site, layer, 0, data, 3, shape, 1);
}
static int fire4(gb_state *s, int site, int64_t layer, int call_index, float *data, int64_t a,
                 int64_t b, int64_t c, int64_t d, int last) {
    int64_t shape[4] = {a, b, c, d};
    return fire(s, site, layer, call_index, data, 4, shape, last);
}

static void *xmalloc(size_t n, int *failed) {
    if (n == 0) n = 1;
    void *p = aligned_alloc(64, (n + 63) / 64 * 64);
    if (!p) *failed = 1;
    return p;
}

/* out[m, :] = x[m, :] * w + b (norm's affine part, after hook_normalized). */
static void affine(float *out, const float *x, const float *w, const float *b, int64_t rows,
                   int64_t D) {
    if (!w && !b) {
        if (out != x) memcpy(out, x, (size_t)(rows * D) * sizeof(float));
        return;
    }
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (rows * D > 32768) num_threads(gb_team_size())
#endif
    for (int64_t m = 0; m < rows; m++) {
        const float *xr = x + m * D;
        float *o = out + m * D;
        for (int64_t i = 0; i < D; i++) o[i] = xr[i] * (w ? w[i] : 1.0f) + (b ? b[i] : 0.0f);
    }
}

static int norm_centres(int type) { return type == GB_NORM_LN || type == GB_NORM_LNPRE; }

/* One norm application on `rows` = M * nh rows of width D (nh = 1 for the
 * residual, nh heads for TL's per-head attn_in / split q,k,v inputs):
 * x -> out, firing hook_scale [B, P, (nh,) 1] and hook_normalized
 * [B, P, (nh,) D] (the unit-scale vector, before the affine w, b: TL's
 * order).  With no hook calling back, the fused kernel runs. */
static int apply_norm(gb_state *s, int type, const float *w, const float *b, float *out,
                      float *scale, const float *x, int64_t nh, int site_scale,
                      int site_norm, int64_t layer, int call_index, int last) {
    const int64_t D = s->cfg->d_model, rows = s->M * nh;
    if (type == GB_NORM_NONE) {
        if (out != x) memcpy(out, x, (size_t)(rows * D) * sizeof(float));
        return 0;
    }
    if (type == GB_NORM_LNPRE || type == GB_NORM_RMSPRE) w = b = NULL;
    gb_norm_scale(out, scale, x, D, rows, D, s->cfg->eps, norm_centres(type));
    int ms = mode_of(s, site_scale, layer), mn = mode_of(s, site_norm, layer);
    if (ms == GB_HOOK_NONE && mn == GB_HOOK_NONE) {
        gb_norm_apply(out, out, scale, w, b, rows, D);
        return 0;
    }
    int nd = nh == 1 ? 3 : 4;
    int64_t sh_scale[4] = {s->B, s->P, nh, 1}, sh_norm[4] = {s->B, s->P, nh, D};
    if (nh == 1) {
        sh_scale[2] = 1;
        sh_norm[2] = D;
    }
    if (fire(s, site_scale, layer, call_index, scale, nd, sh_scale, last)) return -1;
    gb_norm_apply(out, out, scale, NULL, NULL, rows, D);
    if (fire(s, site_norm, layer, call_index, out, nd, sh_norm, last)) return -1;
    affine(out, out, w, b, rows, D);
    return 0;
}

/* Columns [h*d, (h+1)*d) of a [K, N] weight: head h's [K, d] block. */
static gb_matrix head_block(const gb_matrix *W, int64_t h, int64_t d) {
    gb_matrix m = *W;
    int64_t offset; /* bytes */
    if (W->trans) {
        offset = h * d * gb_dtype_row_bytes(W->dtype, W->ld); /* rows of [N, K] storage */
    } else if (W->group == d) {
        offset = h * W->group_stride * gb_dtype_block_bytes(W->dtype); /* [H, K, d] storage */
    } else {
        offset = h * d * gb_dtype_block_bytes(W->dtype); /* plain [K, N] storage */
    }
    m.data = (const char *)W->data + offset;
    m.N = d;
    if (!W->trans) {
        m.group = d;
        m.group_stride = 0;
    }
    return m;
}

/* Rows [h*d, (h+1)*d) of a [K, N] weight (W_O's head h, for hook_result).
 * Returns 0 when the slice cannot be addressed: quantised storage whose
 * blocks straddle a head boundary along K. */
static int head_rows(gb_matrix *m, const gb_matrix *W, int64_t h, int64_t d) {
    *m = *W;
    int64_t offset; /* bytes */
    if (W->trans) {
        if ((h * d) % gb_dtype_block_elems(W->dtype)) return 0;
        offset = gb_dtype_row_bytes(W->dtype, h * d);
    } else {
        offset = h * d * W->ld * gb_dtype_block_bytes(W->dtype);
    }
    m->data = (const char *)W->data + offset;
    m->K = d;
    return 1;
}

/* --------------------------------------------------------------- stages */
/* 1 unless the run's mask hides new position m = b * P + i (its key index is
 * past + i in the [B, K] mask). */
static inline int new_row_visible(const gb_state *s, int64_t m) {
    const int32_t *mask = s->run->attn_mask;
    return !mask || mask[(m / s->P) * s->K + s->past + m % s->P] != 0;
}

static int embed_stage(gb_state *s) {
    const gb_config *c = s->cfg;
    const int64_t D = c->d_model, M = s->M;
    if (s->run->embeds_in) { /* token embeddings given: TL's generate from embeds */
        memcpy(s->resid, s->run->residual_in, (size_t)(M * D) * sizeof(float));
    } else {
        if (s->w->W_E_dtype == GB_F32)
            gb_embed(s->resid, (const float *)s->w->W_E, s->run->tokens, M, D);
        else
            gb_embed_rows(s->resid, s->w->W_E, s->w->W_E_dtype, s->run->tokens, M, D);
        if (fire3(s, GB_SITE_EMBED, -1, s->resid, s->B, s->P, D)) return -1;
    }
    if (c->pos == GB_POS_STANDARD || c->pos == GB_POS_SHORTFORMER) {
        /* shortformer keeps its positional embedding out of the residual */
        float *pe = c->pos == GB_POS_SHORTFORMER ? s->sf_own : s->tmp;
        for (int64_t m = 0; m < M; m++) {
            if (!new_row_visible(s, m))
                memset(pe + m * D, 0, (size_t)D * sizeof(float));
            else
                memcpy(pe + m * D, s->w->W_pos + s->positions[m] * D, (size_t)D * sizeof(float));
        }
        if (fire3(s, GB_SITE_POS_EMBED, -1, pe, s->B, s->P, D)) return -1;
        if (c->pos == GB_POS_STANDARD) gb_add(s->resid, s->resid, pe, M * D);
    }
    return 0;
}

/* y[:, head h] = x_h @ W[h] + b[h] for per-head inputs x [M, nh, D]. */
static int project_per_head(float *y, const float *x, const gb_matrix *W, const float *bias,
                            int64_t M, int64_t nh, int64_t D, int64_t d) {
    for (int64_t h = 0; h < nh; h++) {
        gb_matrix Wh = head_block(W, h, d);
        if (gb_gemm(y + h * d, nh * d, x + h * D, nh * D, &Wh, bias ? bias + h * d : NULL, M, 0))
            return -2;
    }
    return 0;
}

static int attention_stage(gb_state *s, int64_t l) {
    const gb_config *c = s->cfg;
    const gb_layer_weights *lw = &s->w->layers[l];
    const int64_t D = c->d_model, H = c->n_heads, G = c->n_kv_heads, d = c->d_head;
    const int64_t M = s->M, B = s->B, P = s->P;
    const int64_t nh_max = H > G ? H : G;
    int rc;

    /* q, k, v inputs: shared residual, or per-head copies (attn_in / split). */
    const float *in[3] = {s->resid, s->resid, s->resid};
    int64_t nh[3] = {1, 1, 1};
    if (c->use_attn_in) {
        float *a = s->heads_in;
        for (int64_t m = 0; m < M; m++)
            for (int64_t h = 0; h < H; h++)
                memcpy(a + (m * H + h) * D, s->resid + m * D, (size_t)D * sizeof(float));
        if (fire4(s, GB_SITE_ATTN_IN, l, 0, a, B, P, H, D, 1)) return -1;
        for (int i = 0; i < 3; i++) { in[i] = a; nh[i] = H; }
    }
    if (c->use_split_qkv_input) {
        const int sites[3] = {GB_SITE_Q_INPUT, GB_SITE_K_INPUT, GB_SITE_V_INPUT};
        for (int i = 0; i < 3; i++) {
            int64_t n = i == 0 ? H : G;
            float *a = s->heads_in + (size_t)i * M * nh_max * D;
            for (int64_t m = 0; m < M; m++)
                for (int64_t h = 0; h < n; h++)
                    memcpy(a + (m * n + h) * D, s->resid + m * D, (size_t)D * sizeof(float));
            if (fire4(s, sites[i], l, 0, a, B, P, n, D, 1)) return -1;
            in[i] = a;
            nh[i] = n;
        }
    }

    /* ln1: TL runs it three times (q, k, v inputs). Computed once when the
     * inputs are shared and no hook calls back at its points. */
    int ln_calls = mode_of(s, GB_SITE_LN1_SCALE, l) == GB_HOOK_CALL ||
                   mode_of(s, GB_SITE_LN1_NORMALIZED, l) == GB_HOOK_CALL;
    int per_head = c->use_attn_in || c->use_split_qkv_input;
    const float *normed[3];
    if (!per_head && !ln_calls) {
        if (apply_norm(s, c->norm, lw->ln1_w, lw->ln1_b, s->normed, s->scale, s->resid, 1,
                       GB_SITE_LN1_SCALE, GB_SITE_LN1_NORMALIZED, l, 2, 1))
            return -1;
        normed[0] = normed[1] = normed[2] = s->normed;
    } else {
        for (int i = 0; i < 3; i++) {
            float *o = s->normed + (size_t)(i * s->ln_rows * D);
            if (apply_norm(s, c->norm, lw->ln1_w, lw->ln1_b, o, s->scale + (size_t)(i * s->ln_rows),
                           in[i], nh[i], GB_SITE_LN1_SCALE, GB_SITE_LN1_NORMALIZED, l, i, i == 2))
                return -1;
            normed[i] = o;
        }
    }

    /* q, k, v projections */
    const gb_matrix *Ws[3] = {&lw->W_Q, &lw->W_K, &lw->W_V};
    const float *bs[3] = {lw->b_Q, lw->b_K, lw->b_V};
    float *outs[3] = {s->q, s->k, s->v};
    const int64_t heads[3] = {H, G, G};
    for (int i = 0; i < 3; i++) {
        const float *x = normed[i];
        if (i < 2 && s->sf_pos) {
            /* shortformer: q and k read ln1(x) + pos_embed (per head: the same row for each) */
            float *y = s->sf_in;
            for (int64_t r = 0; r < M * nh[i]; r++) {
                const float *pr = s->sf_pos + (r / nh[i]) * D;
                for (int64_t j = 0; j < D; j++) y[r * D + j] = x[r * D + j] + pr[j];
            }
            x = y;
        }
        if (nh[i] == 1) {
            if (gb_gemm(outs[i], heads[i] * d, x, D, Ws[i], bs[i], M, 0)) return -2;
        } else {
            rc = project_per_head(outs[i], x, Ws[i], bs[i], M, nh[i], D, d);
            if (rc) return rc;
        }
    }
    if (fire4(s, GB_SITE_Q, l, 0, s->q, B, P, H, d, 1) ||
        fire4(s, GB_SITE_K, l, 0, s->k, B, P, G, d, 1) ||
        fire4(s, GB_SITE_V, l, 0, s->v, B, P, G, d, 1))
        return -1;

    const int rotary = c->pos == GB_POS_ROTARY;
    const float *keys = s->k, *values = s->v; /* what the attention reads */
    int64_t kv_rows = P;                       /* their rows per sequence */
    const int64_t K = s->K;
    if (rotary) {
        gb_rope(s->q, H * d, M, H, d, c->rotary_dim, s->positions, s->w->rotary_inv_freq,
                c->rotary_adjacent_pairs);
        if (fire4(s, GB_SITE_ROT_Q, l, 0, s->q, B, P, H, d, 1)) return -1;
        gb_rope(s->k, G * d, M, G, d, c->rotary_dim, s->positions, s->w->rotary_inv_freq,
                c->rotary_adjacent_pairs);
        if (!s->run->kv_keys && fire4(s, GB_SITE_ROT_K, l, 0, s->k, B, P, G, d, 1)) return -1;
    }
    if (s->run->kv_keys) {
        /* append: the new keys (rotated) and values go to rows [past, K) of
         * the cache, and the attention reads the cache's rows [0, K) */
        float *ck = s->run->kv_keys[l], *cv = s->run->kv_values[l];
        const int64_t cap = s->run->kv_cap, row = G * d;
        for (int64_t b = 0; b < B; b++) {
            memcpy(ck + (b * cap + s->past) * row, s->k + b * P * row, (size_t)(P * row) * sizeof(float));
            memcpy(cv + (b * cap + s->past) * row, s->v + b * P * row, (size_t)(P * row) * sizeof(float));
        }
        keys = ck;
        values = cv;
        kv_rows = cap;
        if (rotary && mode_of(s, GB_SITE_ROT_K, l) != GB_HOOK_NONE) {
            /* TL rotates every key (cached and new) and hooks them all,
             * [B, K, G, d]; an edit there changes this run only (TL's cache
             * keeps unrotated keys and rotates them afresh), so the hook gets
             * a copy and the attention reads the (possibly edited) copy, and
             * the values likewise packed [B, K] (one row stride for both). */
            float *vk = s->keys_all + B * K * row;
            for (int64_t b = 0; b < B; b++) {
                memcpy(s->keys_all + b * K * row, ck + b * cap * row, (size_t)(K * row) * sizeof(float));
                memcpy(vk + b * K * row, cv + b * cap * row, (size_t)(K * row) * sizeof(float));
            }
            if (fire4(s, GB_SITE_ROT_K, l, 0, s->keys_all, B, K, G, d, 1)) return -1;
            keys = s->keys_all;
            values = vk;
            kv_rows = K;
        }
    }

    float scale = c->attn_scale;
    if (c->scale_attn_by_inverse_layer_idx) scale *= (float)(l + 1);
    gb_attn_shape as = {
        .B = B, .P = P, .K = K, .H = H, .G = G, .d = d,
        .ldq = H * d, .ldk = G * d, .ldv = G * d, .ldz = H * d,
        .inv_scale = 1.0f / scale, .window = c->window, .key_mask = s->run->attn_mask,
        .kv_rows = kv_rows,
    };
    int msc = mode_of(s, GB_SITE_ATTN_SCORES, l), mpa = mode_of(s, GB_SITE_PATTERN, l);
    if (msc == GB_HOOK_CALL || mpa == GB_HOOK_CALL) {
        gb_attn_scores(s->scores, s->q, keys, &as);
        if (fire4(s, GB_SITE_ATTN_SCORES, l, 0, s->scores, B, H, P, K, 1)) return -1;
        gb_attn_softmax(s->pattern, s->scores, &as);
        if (fire4(s, GB_SITE_PATTERN, l, 0, s->pattern, B, H, P, K, 1)) return -1;
        gb_attn_apply(s->z, s->pattern, values, &as);
    } else {
        /* cached-only scores/pattern are written straight into the cache */
        float *sc = msc == GB_HOOK_CACHE ? s->plan->cache[slot(s, GB_SITE_ATTN_SCORES, l)] : NULL;
        float *pa = mpa == GB_HOOK_CACHE ? s->plan->cache[slot(s, GB_SITE_PATTERN, l)] : NULL;
        if (gb_attention(s->z, sc, pa, s->q, keys, values, &as)) return -2;
    }
    if (fire4(s, GB_SITE_Z, l, 0, s->z, B, P, H, d, 1)) return -1;

    float *attn_out = s->tmp;
    int added = 0; /* resid += attn_out already done inside W_O's GEMM */
    if (c->use_attn_result) {
        /* per-head results [M, H, D] without b_O, then their sum + b_O */
        for (int64_t h = 0; h < H; h++) {
            gb_matrix Wh;
            if (head_rows(&Wh, &lw->W_O, h, d)) {
                if (gb_gemm(s->result + h * D, H * D, s->z + h * d, H * d, &Wh, NULL, M, 0))
                    return -2;
            } else {
                /* head h's rows are not addressable in the quantised storage:
                 * multiply the whole W_O by z with every other head zeroed */
                float *zh = s->q; /* q is dead after the attention */
                memset(zh, 0, (size_t)(M * H * d) * sizeof(float));
                for (int64_t m = 0; m < M; m++)
                    memcpy(zh + m * H * d + h * d, s->z + m * H * d + h * d, (size_t)d * sizeof(float));
                if (gb_gemm(s->result + h * D, H * D, zh, H * d, &lw->W_O, NULL, M, 0)) return -2;
            }
        }
        if (fire4(s, GB_SITE_RESULT, l, 0, s->result, B, P, H, D, 1)) return -1;
        for (int64_t m = 0; m < M; m++) {
            float *o = attn_out + m * D;
            for (int64_t i = 0; i < D; i++) o[i] = lw->b_O ? lw->b_O[i] : 0.0f;
            for (int64_t h = 0; h < H; h++) {
                const float *r = s->result + (m * H + h) * D;
                for (int64_t i = 0; i < D; i++) o[i] += r[i];
            }
        }
    } else {
        added = fuse_residual(s, GB_SITE_ATTN_OUT, l);
        gb_epilogue ep = {.act = -1, .resid = added ? s->resid : NULL, .ldr = D};
        if (gb_gemm_ep(attn_out, D, s->z, H * d, &lw->W_O, lw->b_O, M, 0, &ep)) return -2;
    }
    if (fire3(s, GB_SITE_ATTN_OUT, l, attn_out, B, P, D)) return -1;
    if (!added) gb_add(s->resid, s->resid, attn_out, M * D);
    if (c->attn_only) return fire3(s, GB_SITE_RESID_POST, l, s->resid, B, P, D);
    return fire3(s, GB_SITE_RESID_MID, l, s->resid, B, P, D);
}

static int mlp_stage(gb_state *s, int64_t l) {
    const gb_config *c = s->cfg;
    const gb_layer_weights *lw = &s->w->layers[l];
    const int64_t D = c->d_model, Dm = c->d_mlp, M = s->M, B = s->B, P = s->P;
    const float *x = s->resid;
    if (c->use_hook_mlp_in) {
        memcpy(s->tmp, s->resid, (size_t)(M * D) * sizeof(float));
        if (fire3(s, GB_SITE_MLP_IN, l, s->tmp, B, P, D)) return -1;
        x = s->tmp;
    }
    float *n = s->normed;
    if (apply_norm(s, c->norm, lw->ln2_w, lw->ln2_b, n, s->scale, x, 1, GB_SITE_LN2_SCALE,
                   GB_SITE_LN2_NORMALIZED, l, 0, 1))
        return -1;
    float *post = s->mlp_a; /* the activations hook_post sees and W_out reads */
    const int fuse = g_fuse_activation;
    if (c->gated_mlp) {
        if (gb_gemm(s->mlp_a, Dm, n, D, &lw->W_gate, NULL, M, 0)) return -2;
        if (fire3(s, GB_SITE_MLP_PRE, l, s->mlp_a, B, P, Dm)) return -1;
        if (fuse && mode_of(s, GB_SITE_MLP_PRE_LINEAR, l) == GB_HOOK_NONE) {
            /* act(gate) * up inside the up projection's GEMM, into mlp_b */
            gb_epilogue ep = {.act = c->act, .gate = s->mlp_a, .ldg = Dm};
            if (gb_gemm_ep(s->mlp_b, Dm, n, D, &lw->W_in, NULL, M, 0, &ep)) return -2;
            post = s->mlp_b;
        } else {
            if (gb_gemm(s->mlp_b, Dm, n, D, &lw->W_in, NULL, M, 0)) return -2;
            if (fire3(s, GB_SITE_MLP_PRE_LINEAR, l, s->mlp_b, B, P, Dm)) return -1;
            gb_gated_activation(s->mlp_a, s->mlp_a, s->mlp_b, M * Dm, (gb_act)c->act);
        }
        if (lw->b_in)
            for (int64_t m = 0; m < M; m++) gb_add(post + m * Dm, post + m * Dm, lw->b_in, Dm);
    } else if (fuse && mode_of(s, GB_SITE_MLP_PRE, l) == GB_HOOK_NONE) {
        /* bias + activation inside W_in's GEMM */
        gb_epilogue ep = {.act = c->act};
        if (gb_gemm_ep(s->mlp_a, Dm, n, D, &lw->W_in, lw->b_in, M, 0, &ep)) return -2;
    } else {
        if (gb_gemm(s->mlp_a, Dm, n, D, &lw->W_in, lw->b_in, M, 0)) return -2;
        if (fire3(s, GB_SITE_MLP_PRE, l, s->mlp_a, B, P, Dm)) return -1;
        gb_activation(s->mlp_a, s->mlp_a, M * Dm, (gb_act)c->act);
    }
    if (fire3(s, GB_SITE_MLP_POST, l, post, B, P, Dm)) return -1;
    float *out = s->tmp;
    /* resid += mlp_out inside W_out's GEMM unless a hook may edit mlp_out first */
    const int added = fuse_residual(s, GB_SITE_MLP_OUT, l);
    gb_epilogue ep = {.act = -1, .resid = added ? s->resid : NULL, .ldr = D};
    if (gb_gemm_ep(out, D, post, Dm, &lw->W_out, lw->b_out, M, 0, &ep)) return -2;
    if (fire3(s, GB_SITE_MLP_OUT, l, out, B, P, D)) return -1;
    if (!added) gb_add(s->resid, s->resid, out, M * D);
    return fire3(s, GB_SITE_RESID_POST, l, s->resid, B, P, D);
}

static int final_stage(gb_state *s) {
    const gb_config *c = s->cfg;
    const int64_t D = c->d_model, M = s->M, V = c->d_vocab_out;
    float *x = s->resid;
    /* with the gain deferred, ln_final runs without its affine part here */
    const int defer = c->final_gain_after_unembed_in && s->run->final_norm && s->run->unembed;
    if (s->run->final_norm) {
        if (apply_norm(s, c->final_norm, defer ? NULL : s->w->lnf_w, defer ? NULL : s->w->lnf_b,
                       s->normed, s->scale, s->resid, 1, GB_SITE_LNF_SCALE,
                       GB_SITE_LNF_NORMALIZED, -1, 0, 1))
            return -1;
        x = s->normed;
    }
    if (!s->run->unembed) {
        memcpy(s->run->out, x, (size_t)(M * D) * sizeof(float));
        return 0;
    }
    const int64_t *rows = s->run->logit_rows;
    int64_t R = M; /* rows unembedded */
    float *sel = NULL;
    if (rows) {
        /* selected positions only (gb_forward checked the indices and that no hook or cache
         * is planned at the unembed sites): gather their rows, then unembed R rows */
        R = s->run->n_logit_rows;
        sel = malloc((size_t)(R > 0 ? R * D : 1) * sizeof(float));
        if (!sel) return -2;
        for (int64_t r = 0; r < R; r++) memcpy(sel + r * D, x + rows[r] * D, (size_t)D * sizeof(float));
        x = sel;
    } else if (fire3(s, GB_SITE_UNEMBED_IN, -1, x, s->B, s->P, D)) {
        return -1;
    }
    if (defer) affine(x, x, s->w->lnf_w, s->w->lnf_b, R, D);
    int rc = gb_gemm(s->run->out, V, x, D, &s->w->W_U, s->w->b_U, R, 0) ? -2 : 0;
    free(sel);
    if (rc) return rc;
    if (c->center_unembed_logits) {
        float *lg = s->run->out;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(gb_team_size())
#endif
        for (int64_t m = 0; m < R; m++) {
            double sum = 0.0;
            for (int64_t v = 0; v < V; v++) sum += lg[m * V + v];
            const float mean = (float)(sum / (double)V);
            for (int64_t v = 0; v < V; v++) lg[m * V + v] -= mean;
        }
    }
    if (rows) return 0;
    return fire3(s, GB_SITE_UNEMBED_OUT, -1, s->run->out, s->B, s->P, V);
}

static int any_call(const gb_state *s, int site, int64_t l0, int64_t l1) {
    for (int64_t l = l0; l < l1; l++)
        if (mode_of(s, site, l) == GB_HOOK_CALL) return 1;
    return 0;
}

static int any_hook(const gb_state *s, int site, int64_t l0, int64_t l1) {
    for (int64_t l = l0; l < l1; l++)
        if (mode_of(s, site, l) != GB_HOOK_NONE) return 1;
    return 0;
}

/* a * b * c * d floats as a byte count, or 0 if it overflows size_t. */
static size_t floats_bytes(int64_t a, int64_t b, int64_t c, int64_t d) {
    const int64_t f[4] = {a, b, c, d};
    size_t n = sizeof(float);
    for (int i = 0; i < 4; i++) {
        if (f[i] < 0 || (f[i] > 0 && n > SIZE_MAX / (size_t)f[i])) return 0;
        n *= (size_t)f[i];
    }
    return n;
}

int gb_forward(const gb_config *cfg, const gb_weights *w, const gb_plan *plan, const gb_run *run,
               char *errbuf, size_t errlen) {
    gb_state st;
    memset(&st, 0, sizeof st);
    gb_state *s = &st;
    s->cfg = cfg;
    s->w = w;
    s->plan = plan;
    s->run = run;
    s->B = run->B;
    s->P = run->P;
    s->M = run->B * run->P;
    s->past = run->kv_keys ? run->past : 0;
    s->K = s->past + run->P;
    const int64_t M = s->M, D = cfg->d_model, H = cfg->n_heads, G = cfg->n_kv_heads,
                  d = cfg->d_head, Dm = cfg->d_mlp;
    const int64_t nh_max = H > G ? H : G;
    if (run->start_layer < 0 || run->stop_layer > cfg->n_layers ||
        run->start_layer > run->stop_layer) {
        snprintf(errbuf, errlen, "layers [%lld, %lld) out of range for %lld layers",
                 (long long)run->start_layer, (long long)run->stop_layer,
                 (long long)cfg->n_layers);
        return GB_ERR_ARG;
    }
    if (run->kv_keys && (!run->kv_values || run->past < 0 || run->P > run->kv_cap - run->past)) {
        snprintf(errbuf, errlen, "KV cache of capacity %lld cannot take %lld new positions after %lld",
                 (long long)run->kv_cap, (long long)run->P, (long long)run->past);
        return GB_ERR_ARG;
    }
    if (run->embeds_in && (!run->residual_in || run->start_layer != 0)) {
        snprintf(errbuf, errlen, "token embeddings as input need residual_in and start_layer 0");
        return GB_ERR_ARG;
    }
    if (run->logit_rows) {
        if (!(run->unembed && run->stop_layer == cfg->n_layers) || run->n_logit_rows < 0 ||
            mode_of(s, GB_SITE_UNEMBED_IN, -1) != GB_HOOK_NONE ||
            mode_of(s, GB_SITE_UNEMBED_OUT, -1) != GB_HOOK_NONE) {
            snprintf(errbuf, errlen, "logit rows need the unembed and no hook or cache at "
                                     "unembed.hook_in / unembed.hook_out");
            return GB_ERR_ARG;
        }
        for (int64_t r = 0; r < run->n_logit_rows; r++) {
            if (run->logit_rows[r] < 0 || run->logit_rows[r] >= M) {
                snprintf(errbuf, errlen, "logit row %lld is out of range [0, %lld)",
                         (long long)run->logit_rows[r], (long long)M);
                return GB_ERR_ARG;
            }
        }
    }
    if (M == 0) return GB_OK;
    int failed = 0;
    int per_head = cfg->use_attn_in || cfg->use_split_qkv_input;
    int64_t ln_rows = M * (per_head ? nh_max : 1);
    s->ln_rows = ln_rows;
    int ln_triple = per_head || any_call(s, GB_SITE_LN1_SCALE, run->start_layer, run->stop_layer) ||
                    any_call(s, GB_SITE_LN1_NORMALIZED, run->start_layer, run->stop_layer);
    size_t f = sizeof(float);
    s->resid = xmalloc((size_t)(M * D) * f, &failed);
    s->tmp = xmalloc((size_t)(M * D) * f, &failed);
    s->normed = xmalloc((size_t)((ln_triple ? 3 : 1) * ln_rows * D) * f, &failed);
    s->scale = xmalloc((size_t)((ln_triple ? 3 : 1) * ln_rows) * f, &failed);
    if (per_head) s->heads_in = xmalloc((size_t)(3 * M * nh_max * D) * f, &failed);
    s->q = xmalloc((size_t)(M * H * d) * f, &failed);
    s->k = xmalloc((size_t)(M * G * d) * f, &failed);
    s->v = xmalloc((size_t)(M * G * d) * f, &failed);
    s->z = xmalloc((size_t)(M * H * d) * f, &failed);
    if (any_call(s, GB_SITE_ATTN_SCORES, run->start_layer, run->stop_layer) ||
        any_call(s, GB_SITE_PATTERN, run->start_layer, run->stop_layer)) {
        size_t n = floats_bytes(s->B, H, s->P, s->K);
        if (!n) failed = 1;
        s->scores = xmalloc(n, &failed);
        s->pattern = xmalloc(n, &failed);
    }
    if (run->kv_keys && cfg->pos == GB_POS_ROTARY &&
        any_hook(s, GB_SITE_ROT_K, run->start_layer, run->stop_layer)) {
        size_t n = floats_bytes(2 * s->B, s->K, G, d); /* keys, then values */
        if (!n) failed = 1;
        s->keys_all = xmalloc(n, &failed);
    }
    if (cfg->use_attn_result) s->result = xmalloc((size_t)(M * H * D) * f, &failed);
    if (!cfg->attn_only) s->mlp_a = xmalloc((size_t)(M * Dm) * f, &failed);
    if (cfg->gated_mlp && !cfg->attn_only) s->mlp_b = xmalloc((size_t)(M * Dm) * f, &failed);
    if (cfg->pos == GB_POS_SHORTFORMER) {
        if (!run->residual_in || run->embeds_in) { /* the embed stage computes it */
            s->sf_own = xmalloc((size_t)(M * D) * f, &failed);
            s->sf_pos = s->sf_own;
        } else {
            s->sf_pos = run->shortformer_pos; /* may be NULL: no positional term, as in TL */
        }
        if (s->sf_pos) s->sf_in = xmalloc((size_t)(ln_rows * D) * f, &failed);
    }
    if (!run->positions) s->positions = xmalloc((size_t)M * sizeof(int64_t), &failed);

    int rc = GB_OK;
    if (failed) {
        rc = GB_ERR_NOMEM;
        goto done;
    }
    if (!run->positions) {
        for (int64_t m = 0; m < M; m++) s->positions[m] = s->past + m % s->P;
    } else {
        s->positions = (int64_t *)run->positions; /* read only */
    }

    if (run->residual_in && !run->embeds_in) {
        memcpy(s->resid, run->residual_in, (size_t)(M * D) * f);
    } else if ((rc = embed_stage(s)) != 0) {
        goto done;
    }
    for (int64_t l = run->start_layer; l < run->stop_layer; l++) {
        if (fire3(s, GB_SITE_RESID_PRE, l, s->resid, s->B, s->P, D)) { rc = -1; goto done; }
        if ((rc = attention_stage(s, l)) != 0) goto done;
        if (!cfg->attn_only && (rc = mlp_stage(s, l)) != 0) goto done;
        if (plan && plan->poll && plan->poll(plan->ctx)) { rc = -1; goto done; }
    }
    if (run->stop_layer == cfg->n_layers && (run->final_norm || run->unembed)) {
        rc = final_stage(s);
    } else {
        memcpy(run->out, s->resid, (size_t)(M * D) * f);
    }

done:
    if (rc == -1) rc = GB_ERR_CALLBACK;
    else if (rc == -2) rc = GB_ERR_NOMEM;
    if (!run->positions) free(s->positions);
    free(s->resid); free(s->tmp); free(s->normed); free(s->scale); free(s->heads_in);
    free(s->q); free(s->k); free(s->v); free(s->z); free(s->scores); free(s->pattern);
    free(s->keys_all);
    free(s->result); free(s->mlp_a); free(s->mlp_b); free(s->sf_own); free(s->sf_in);
    return rc;
}

int gb_site_active(const gb_config *c, int site) {
    int normed = c->norm != GB_NORM_NONE;
    switch (site) {
    case GB_SITE_POS_EMBED: return c->pos != GB_POS_ROTARY;
    case GB_SITE_RESID_MID: return !c->attn_only;
    case GB_SITE_ATTN_IN: return c->use_attn_in;
    case GB_SITE_Q_INPUT: case GB_SITE_K_INPUT: case GB_SITE_V_INPUT: return c->use_split_qkv_input;
    case GB_SITE_LN1_SCALE: case GB_SITE_LN1_NORMALIZED: return normed;
    case GB_SITE_LN2_SCALE: case GB_SITE_LN2_NORMALIZED: return normed && !c->attn_only;
    case GB_SITE_MLP_PRE: case GB_SITE_MLP_POST: case GB_SITE_MLP_OUT: return !c->attn_only;
    case GB_SITE_ROT_Q: case GB_SITE_ROT_K: return c->pos == GB_POS_ROTARY;
    case GB_SITE_RESULT: return c->use_attn_result;
    case GB_SITE_MLP_IN: return c->use_hook_mlp_in && !c->attn_only;
    case GB_SITE_MLP_PRE_LINEAR: return c->gated_mlp && !c->attn_only;
    case GB_SITE_LNF_SCALE: case GB_SITE_LNF_NORMALIZED: return c->final_norm != GB_NORM_NONE;
    default: return site >= 0 && site < GB_SITE_COUNT;
    }
}

int gb_hook_shape(const gb_config *c, int site, int64_t B, int64_t P, int64_t sh[4]) {
    return gb_hook_shape_kv(c, site, B, P, P, sh);
}

int gb_hook_shape_kv(const gb_config *c, int site, int64_t B, int64_t P, int64_t K, int64_t sh[4]) {
    const int64_t D = c->d_model, H = c->n_heads, G = c->n_kv_heads, d = c->d_head;
    sh[0] = B;
    sh[1] = P;
    switch (site) {
    case GB_SITE_ATTN_IN: case GB_SITE_Q_INPUT: sh[2] = H; sh[3] = D; return 4;
    case GB_SITE_K_INPUT: case GB_SITE_V_INPUT: sh[2] = G; sh[3] = D; return 4;
    case GB_SITE_LN1_SCALE: case GB_SITE_LN1_NORMALIZED: {
        int64_t last = c->use_split_qkv_input ? G : (c->use_attn_in ? H : 0);
        if (last) { sh[2] = last; sh[3] = site == GB_SITE_LN1_SCALE ? 1 : D; return 4; }
        sh[2] = site == GB_SITE_LN1_SCALE ? 1 : D;
        return 3;
    }
    case GB_SITE_LN2_SCALE: case GB_SITE_LNF_SCALE: sh[2] = 1; return 3;
    case GB_SITE_Q: case GB_SITE_ROT_Q: case GB_SITE_Z: sh[2] = H; sh[3] = d; return 4;
    case GB_SITE_K: case GB_SITE_V: sh[2] = G; sh[3] = d; return 4;
    case GB_SITE_ROT_K: sh[1] = K; sh[2] = G; sh[3] = d; return 4;
    case GB_SITE_ATTN_SCORES: case GB_SITE_PATTERN: sh[1] = H; sh[2] = P; sh[3] = K; return 4;
    case GB_SITE_RESULT: sh[2] = H; sh[3] = D; return 4;
    case GB_SITE_MLP_PRE: case GB_SITE_MLP_PRE_LINEAR: case GB_SITE_MLP_POST: sh[2] = c->d_mlp; return 3;
    case GB_SITE_UNEMBED_OUT: sh[2] = c->d_vocab_out; return 3;
    default: sh[2] = D; return 3;
    }
}
