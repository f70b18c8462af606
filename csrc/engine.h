/*
 * glassbox forward engine: the whole transformer forward pass for one batch,
 * in C, with a per-run plan saying what happens at every hook point.
 *
 * One engine serves GPT-2 (LayerNorm, learned positions, GELU MLP) and the
 * LLaMA family (RMSNorm, RoPE, SwiGLU, grouped-query attention); the config
 * says which, never the model's name.  Weight matrices are gb_matrix
 * descriptors so their storage dtype and layout stay the loader's business.
 *
 * The engine never touches Python: hook callbacks are plain function
 * pointers, and the bridge (engine_bindings.c) turns them into Python calls.
 */
#ifndef GLASSBOX_ENGINE_H
#define GLASSBOX_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"

/* The hook-site table: the single source of truth for hook names, in
 * TransformerLens's firing order. X(enum, name, per_layer). */
#define GB_SITE_LIST(X)                                   \
    X(EMBED, "hook_embed", 0)                             \
    X(POS_EMBED, "hook_pos_embed", 0)                     \
    X(RESID_PRE, "hook_resid_pre", 1)                     \
    X(ATTN_IN, "hook_attn_in", 1)                         \
    X(Q_INPUT, "hook_q_input", 1)                         \
    X(K_INPUT, "hook_k_input", 1)                         \
    X(V_INPUT, "hook_v_input", 1)                         \
    X(LN1_SCALE, "ln1.hook_scale", 1)                     \
    X(LN1_NORMALIZED, "ln1.hook_normalized", 1)           \
    X(Q, "attn.hook_q", 1)                                \
    X(K, "attn.hook_k", 1)                                \
    X(V, "attn.hook_v", 1)                                \
    X(ROT_Q, "attn.hook_rot_q", 1)                        \
    X(ROT_K, "attn.hook_rot_k", 1)                        \
    X(ATTN_SCORES, "attn.hook_attn_scores", 1)            \
    X(PATTERN, "attn.hook_pattern", 1)                    \
    X(Z, "attn.hook_z", 1)                                \
    X(RESULT, "attn.hook_result", 1)                      \
    X(ATTN_OUT, "hook_attn_out", 1)                       \
    X(RESID_MID, "hook_resid_mid", 1)                     \
    X(MLP_IN, "hook_mlp_in", 1)                           \
    X(LN2_SCALE, "ln2.hook_scale", 1)                     \
    X(LN2_NORMALIZED, "ln2.hook_normalized", 1)           \
    X(MLP_PRE, "mlp.hook_pre", 1)                         \
    X(MLP_PRE_LINEAR, "mlp.hook_pre_linear", 1)           \
    X(MLP_POST, "mlp.hook_post", 1)                       \
    X(MLP_OUT, "hook_mlp_out", 1)                         \
    X(RESID_POST, "hook_resid_post", 1)                   \
    X(LNF_SCALE, "ln_final.hook_scale", 0)                \
    X(LNF_NORMALIZED, "ln_final.hook_normalized", 0)      \
    X(UNEMBED_IN, "unembed.hook_in", 0)                   \
    X(UNEMBED_OUT, "unembed.hook_out", 0)

#define GB_SITE_ENUM(e, n, p) GB_SITE_##e,
typedef enum { GB_SITE_LIST(GB_SITE_ENUM) GB_SITE_COUNT } gb_site;
#undef GB_SITE_ENUM

typedef struct {
    const char *name; /* suffix after "blocks.{l}." for per-layer sites */
    int per_layer;
} gb_site_info;
extern const gb_site_info gb_sites[GB_SITE_COUNT];

typedef enum { GB_NORM_NONE = 0, GB_NORM_LN, GB_NORM_LNPRE, GB_NORM_RMS, GB_NORM_RMSPRE } gb_norm_type;
/* SHORTFORMER: learned positions added to the query and key inputs of every
 * attention layer (after ln1) instead of to the residual stream. */
typedef enum { GB_POS_STANDARD = 0, GB_POS_ROTARY = 1, GB_POS_SHORTFORMER = 2 } gb_pos_type;

typedef struct {
    int64_t n_layers, d_model, n_heads, n_kv_heads, d_head, d_mlp, d_vocab, d_vocab_out, n_ctx;
    int norm;       /* gb_norm_type of ln1 / ln2 */
    int final_norm; /* gb_norm_type of ln_final */
    float eps;
    int pos;        /* gb_pos_type */
    int act;        /* gb_act */
    int gated_mlp;
    int attn_only; /* blocks have no ln2 / MLP: resid_post = resid_pre + attn_out */
    float attn_scale;
    int scale_attn_by_inverse_layer_idx;
    int64_t rotary_dim;
    int rotary_adjacent_pairs;
    int64_t window; /* sliding window; <= 0 none */
    /* TransformerLens flag-gated hook points */
    int use_attn_result, use_split_qkv_input, use_attn_in, use_hook_mlp_in;
    /* subtract each position's mean over the vocabulary from the logits
     * (TL's center_unembed without editing a W_U kept quantised) */
    int center_unembed_logits;
    /* apply ln_final's gain after unembed.hook_in (TL's fold_ln applied
     * without editing a W_U kept quantised: hook_in sees the normalized
     * vector, as in TL's processed model whose W_U carries the gain) */
    int final_gain_after_unembed_in;
} gb_config;

typedef struct {
    const float *ln1_w, *ln1_b, *ln2_w, *ln2_b; /* [D] each, NULL when absent */
    gb_matrix W_Q, W_K, W_V;                   /* [D, H*d], [D, G*d], [D, G*d] */
    const float *b_Q, *b_K, *b_V;              /* [H*d], [G*d], [G*d] or NULL */
    gb_matrix W_O;                             /* [H*d, D] */
    const float *b_O;                          /* [D] or NULL */
    gb_matrix W_in, W_gate, W_out;             /* [D, M], [D, M] (gated), [M, D] */
    const float *b_in, *b_out;                 /* [M], [D] or NULL */
} gb_layer_weights;

typedef struct {
    const void *W_E;              /* [d_vocab, D] rows of W_E_dtype (a lookup table) */
    int W_E_dtype;                /* gb_dtype */
    const float *W_pos;           /* [n_ctx, D], standard positions */
    const float *rotary_inv_freq; /* [rotary_dim / 2], rotary */
    const float *lnf_w, *lnf_b;   /* [D] or NULL */
    gb_matrix W_U;                /* [D, V_out] */
    const float *b_U;             /* [V_out] or NULL */
    gb_layer_weights *layers;     /* [n_layers] */
} gb_weights;

/* What happens at a hook point this run. */
enum { GB_HOOK_NONE = 0, GB_HOOK_CACHE = 1, GB_HOOK_CALL = 2 };

/* Called (from the engine's own thread, never inside a parallel region) for a
 * GB_HOOK_CALL site. `data` is the engine's buffer holding the activation
 * with the given shape (C order); the callee may overwrite it in place.
 * Returns 0, or -1 to abort the run. */
typedef int (*gb_hook_fn)(void *ctx, int site, int layer, int call_index,
                          float *data, int ndim, const int64_t *shape);
/* Polled between layers; nonzero aborts the run (e.g. Ctrl-C). */
typedef int (*gb_poll_fn)(void *ctx);

typedef struct {
    /* Indexed [site * (n_layers + 1) + (layer + 1)], layer = -1 for global
     * sites.  mode: GB_HOOK_*; cache: destination for GB_HOOK_CACHE, with
     * exactly gb_hook_shape()'s size. */
    const uint8_t *mode;
    float *const *cache;
    gb_hook_fn call;
    gb_poll_fn poll;
    void *ctx;
} gb_plan;

/* A run over P new positions of B sequences. With a KV cache the sequences
 * already hold `past` positions whose keys and values are in the cache; the
 * new positions attend to those and to each other (causally), so the key
 * length is K = past + P.  Without one, past = 0 and K = P. */
typedef struct {
    int64_t B, P;
    const int64_t *tokens;     /* [B*P], range-checked by the caller; NULL if residual_in */
    const float *residual_in;  /* [B*P*D] entering block start_layer, or NULL */
    int embeds_in;             /* residual_in holds token embeddings (start_layer 0):
                                  positions are added (hook_pos_embed), hook_embed skipped */
    const int32_t *attn_mask;  /* [B*K] 0/1 over past + new positions, or NULL */
    const int64_t *positions;  /* [B*P] of the new positions, or NULL (past..past+P-1) */
    /* shortformer with residual_in: the positional embedding [B*P*D] added to
     * the q/k inputs, or NULL for none (TL's shortformer_pos_embed argument) */
    const float *shortformer_pos;
    int64_t start_layer, stop_layer; /* blocks [start, stop) */
    int final_norm, unembed;   /* after the last block (stop == n_layers only) */
    float *out;                /* [B*P*V_out] logits, or [B*P*D] */
    /* Unembed only these rows (indices b*P + p into the B*P positions, each in
     * [0, B*P), repeats allowed), in this order: out is then [n_logit_rows *
     * V_out]. NULL: every position. Only with the unembed and no hook or cache
     * at unembed.hook_in / hook_out (ln_final still runs on every position). */
    const int64_t *logit_rows;
    int64_t n_logit_rows;
    /* KV cache (NULL: none). Per layer l, kv_keys[l] and kv_values[l] are
     * [B, kv_cap, G, d]: rows [0, past) hold the earlier positions' keys
     * (after RoPE) and values; the run writes the new positions' keys and
     * values into rows [past, past + P) of every layer it runs and reads
     * nothing beyond past + P. Requires past + P <= kv_cap. The caller
     * decides whether the new rows count (it owns the length). */
    float *const *kv_keys;
    float *const *kv_values;
    int64_t past, kv_cap;
} gb_run;

enum { GB_OK = 0, GB_ERR_CALLBACK = -1, GB_ERR_NOMEM = -2, GB_ERR_ARG = -3 };

/* Runs the forward pass. Returns GB_OK or an error code; on GB_ERR_ARG a
 * message is written to errbuf. Every buffer the engine allocated is freed on
 * every path. */
int gb_forward(const gb_config *cfg, const gb_weights *w, const gb_plan *plan,
               const gb_run *run, char *errbuf, size_t errlen);

/* Fused GEMM epilogues in the forward where no hook needs the intermediate: the residual
 * adds into W_O's and W_out's GEMMs (on by default) and bias + activation / act(gate) * up
 * into W_in's (off by default). The results are bitwise the same either way (a test).
 * Process-wide. */
void gb_set_fused_epilogues(int residual, int activation);
void gb_fused_epilogues(int *residual, int *activation);

/* 1 if `site` fires for this config (flags included; unembed sites assume the
 * unembed runs). */
int gb_site_active(const gb_config *cfg, int site);
/* Shape of the activation at `site` for a batch B x P (the cached shape;
 * ln1 sites give the last of their three calls). Returns ndim. */
int gb_hook_shape(const gb_config *cfg, int site, int64_t B, int64_t P, int64_t shape[4]);
/* The same for P new positions attending to K = past + P keys (KV cache):
 * attn_scores / pattern are [B, H, P, K] and hook_rot_k is [B, K, G, d]
 * (every key, as TransformerLens rotates the cached keys with the new ones);
 * every other site sees the new positions only. */
int gb_hook_shape_kv(const gb_config *cfg, int site, int64_t B, int64_t P, int64_t K,
                     int64_t shape[4]);

#endif /* GLASSBOX_ENGINE_H */
