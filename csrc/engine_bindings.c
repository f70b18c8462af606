/*
 * The CPython side of the engine: glassbox._C.Model.
 *
 * Holds references to the weight arrays (zero copy: in-place edits of them
 * take effect on the next run), checks every argument before the GIL is
 * released, and turns the engine's hook callbacks into Python calls.
 * Contract: docs/engine-interface.md.
 */
#include "argcheck.h" /* Python.h first: it sets the feature macros */
#include "bindings.h"
#include "engine.h"

#include <string.h>

typedef struct {
    PyObject_HEAD
    gb_config cfg;
    gb_weights w;
    gb_layer_weights *layers;
    PyObject *arrays; /* dict: weight name -> the ndarray the engine points into */
    int running;      /* forwards in progress (hooks may run nested forwards) */
} GbModel;

/* ------------------------------------------------------------ helpers */
static const char *const norm_names[] = {"none", "LN", "LNPre", "RMS", "RMSPre"};
static const char *const act_names[GB_ACT_COUNT] = {"relu", "gelu", "gelu_new", "gelu_fast",
                                                    "gelu_pytorch_tanh", "silu"};

static int lookup_name(const char *what, const char *value, const char *const *names, int n,
                       int *out) {
    for (int i = 0; i < n; i++)
        if (strcmp(value, names[i]) == 0) {
            *out = i;
            return 0;
        }
    PyObject *choices = PyList_New(0);
    for (int i = 0; choices && i < n; i++) {
        PyObject *s = PyUnicode_FromString(names[i]);
        if (!s || PyList_Append(choices, s) < 0) {
            Py_XDECREF(s);
            Py_CLEAR(choices);
            break;
        }
        Py_DECREF(s);
    }
    if (choices) {
        PyErr_Format(PyExc_ValueError, "unsupported %s '%s'; supported: %R", what, value, choices);
        Py_DECREF(choices);
    }
    return -1;
}

static PyObject *cfg_item(PyObject *cfg, const char *key, int required) {
    PyObject *v = PyDict_GetItemString(cfg, key); /* borrowed */
    if (!v && required) PyErr_Format(PyExc_ValueError, "engine config is missing '%s'", key);
    return v;
}

static int cfg_int(PyObject *cfg, const char *key, int required, int64_t dflt, int64_t *out) {
    PyObject *v = cfg_item(cfg, key, required);
    if (!v) {
        if (required) return -1;
        *out = dflt;
        return 0;
    }
    if (v == Py_None) {
        *out = dflt;
        return 0;
    }
    if (PyBool_Check(v) || !PyLong_Check(v)) {
        PyErr_Format(PyExc_TypeError, "engine config '%s' must be an int, got %R", key, v);
        return -1;
    }
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow) {
        PyErr_Format(PyExc_ValueError, "engine config '%s' = %R does not fit in int64", key, v);
        return -1;
    }
    if (x == -1 && PyErr_Occurred()) return -1;
    *out = x;
    return 0;
}

static int cfg_float(PyObject *cfg, const char *key, int required, double dflt, float *out) {
    PyObject *v = cfg_item(cfg, key, required);
    if (!v) {
        if (required) return -1;
        *out = (float)dflt;
        return 0;
    }
    double x = PyFloat_AsDouble(v);
    if (x == -1.0 && PyErr_Occurred()) {
        PyErr_Format(PyExc_TypeError, "engine config '%s' must be a number, got %R", key, v);
        return -1;
    }
    *out = (float)x;
    return 0;
}

static int cfg_bool(PyObject *cfg, const char *key, int *out) {
    PyObject *v = cfg_item(cfg, key, 0);
    if (!v) {
        *out = 0;
        return 0;
    }
    int b = PyObject_IsTrue(v);
    if (b < 0) return -1;
    *out = b;
    return 0;
}

static int cfg_choice(PyObject *cfg, const char *key, const char *const *names, int n, int *out) {
    PyObject *v = cfg_item(cfg, key, 1);
    if (!v) return -1;
    if (v == Py_None) return lookup_name(key, "none", names, n, out);
    const char *s = PyUnicode_AsUTF8(v);
    if (!s) {
        PyErr_Format(PyExc_TypeError, "engine config '%s' must be a str, got %R", key, v);
        return -1;
    }
    return lookup_name(key, s, names, n, out);
}

static PyObject *shape_tuple(int ndim, const int64_t *shape) {
    PyObject *t = PyTuple_New(ndim);
    if (!t) return NULL;
    for (int i = 0; i < ndim; i++) {
        PyObject *x = PyLong_FromLongLong(shape[i]);
        if (!x) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, i, x);
    }
    return t;
}

static PyObject *array_shape_tuple(PyArrayObject *a) {
    int64_t sh[NPY_MAXDIMS];
    for (int i = 0; i < PyArray_NDIM(a); i++) sh[i] = PyArray_DIM(a, i);
    return shape_tuple(PyArray_NDIM(a), sh);
}

/* Fetch weights[name] as a float32 C-contiguous array of exactly `shape`,
 * keep a reference in self->arrays, return its data (NULL + no error when
 * optional and absent). */
static const float *weight(GbModel *self, PyObject *weights, const char *name, int required,
                           int ndim, const int64_t *shape, int *err) {
    PyObject *v = PyDict_GetItemString(weights, name);
    if (!v || v == Py_None) {
        if (required) {
            PyObject *t = shape_tuple(ndim, shape);
            if (t) {
                PyErr_Format(PyExc_ValueError, "weight '%s' is missing (expected shape %R)", name, t);
                Py_DECREF(t);
            }
            *err = 1;
        }
        return NULL;
    }
    if (!PyArray_Check(v)) {
        PyErr_Format(PyExc_TypeError, "weight '%s' must be a numpy array, got %s", name,
                     Py_TYPE(v)->tp_name);
        *err = 1;
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)v;
    if (PyArray_TYPE(a) != NPY_FLOAT32 || !PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a)) {
        PyErr_Format(PyExc_TypeError,
                     "weight '%s' must be an aligned C-contiguous float32 array, got dtype %R%s",
                     name, (PyObject *)PyArray_DESCR(a),
                     PyArray_IS_C_CONTIGUOUS(a) ? "" : " (not C-contiguous)");
        *err = 1;
        return NULL;
    }
    int ok = PyArray_NDIM(a) == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = PyArray_DIM(a, i) == shape[i];
    if (!ok) {
        PyObject *want = shape_tuple(ndim, shape), *got = array_shape_tuple(a);
        if (want && got)
            PyErr_Format(PyExc_ValueError, "weight '%s' has shape %R, expected %R", name, got, want);
        Py_XDECREF(want);
        Py_XDECREF(got);
        *err = 1;
        return NULL;
    }
    if (PyDict_SetItemString(self->arrays, name, v) < 0) {
        *err = 1;
        return NULL;
    }
    return (const float *)PyArray_DATA(a);
}

/* A float32 weight stored as TL's x @ W: [K, N] plain, or [heads, K, d] per head. */
static gb_matrix plain_matrix(const float *data, int64_t K, int64_t N) {
    gb_matrix m = {.data = data, .dtype = GB_F32, .trans = 0, .K = K, .N = N, .ld = N,
                   .group = N, .group_stride = 0};
    return m;
}
static gb_matrix per_head_matrix(const float *data, int64_t heads, int64_t K, int64_t d) {
    gb_matrix m = {.data = data, .dtype = GB_F32, .trans = 0, .K = K, .N = heads * d, .ld = d,
                   .group = d, .group_stride = K * d};
    return m;
}

static const char *const dtype_names[GB_DTYPE_COUNT] = {"F32",  "BF16", "F16",  "Q8_0",
                                                         "Q4_0", "Q4_1", "Q4_K", "Q6_K"};

/* A matrix weight for x @ W with W logically [K, N]. Either a float32 ndarray
 * in TL layout (`tl_kind`: 0 plain [K, N], 1 per-head [heads, K, d], 2 per-head
 * [heads, d, N] = plain [heads*d, N]) or ("rows", storage, dtype, N, K) in the
 * file layout. Returns 1 if found, 0 if absent and optional, -1 on error. */
enum { TL_PLAIN = 0, TL_HEADS_IN = 1, TL_HEADS_OUT = 2 };
static int matrix_weight(GbModel *self, PyObject *weights, const char *name, int required,
                         int tl_kind, int64_t heads, int64_t K, int64_t N, gb_matrix *out) {
    PyObject *v = PyDict_GetItemString(weights, name);
    int err = 0;
    if (v && PyTuple_Check(v)) {
        PyObject *storage, *tag, *rows_o, *cols_o;
        const char *dtype_s;
        int64_t rows, cols;
        if (!PyArg_ParseTuple(v, "OOsOO", &tag, &storage, &dtype_s, &rows_o, &cols_o) ||
            !PyUnicode_Check(tag) || PyUnicode_CompareWithASCIIString(tag, "rows") != 0) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError,
                         "weight '%s' must be a float32 array or (\"rows\", storage, dtype, n_rows, n_cols)",
                         name);
            return -1;
        }
        if (gb_arg_i64(rows_o, name, "n_rows", 0, &rows) < 0 ||
            gb_arg_i64(cols_o, name, "n_cols", 0, &cols) < 0)
            return -1;
        int dt = 0;
        if (lookup_name("weight dtype", dtype_s, dtype_names, GB_DTYPE_COUNT, &dt)) return -1;
        if (rows != N || cols != K) {
            PyErr_Format(PyExc_ValueError, "weight '%s' stored as [%lld, %lld] rows, expected [%lld, %lld]",
                         name, (long long)rows, (long long)cols, (long long)N, (long long)K);
            return -1;
        }
        if (K % gb_dtype_block_elems(dt)) {
            PyErr_Format(PyExc_ValueError, "weight '%s': %s rows need a multiple of %lld elements, got %lld",
                         name, dtype_s, (long long)gb_dtype_block_elems(dt), (long long)K);
            return -1;
        }
        if (!PyArray_Check(storage) || !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)storage)) {
            PyErr_Format(PyExc_TypeError, "weight '%s': storage must be a C-contiguous numpy array", name);
            return -1;
        }
        int64_t want, rb = gb_dtype_row_bytes(dt, K);
        if (rb < 0) {
            PyErr_Format(PyExc_ValueError, "weight '%s': a %s row of %lld elements does not fit in int64 bytes",
                         name, dtype_s, (long long)K);
            return -1;
        }
        if (gb_mul(N, rb, &want, name, "the bytes of its stored rows (n_rows * row bytes)") < 0) return -1;
        if ((int64_t)PyArray_NBYTES((PyArrayObject *)storage) != want) {
            PyErr_Format(PyExc_ValueError, "weight '%s': %s storage of [%lld, %lld] needs %lld bytes, got %lld",
                         name, dtype_s, (long long)N, (long long)K, (long long)want,
                         (long long)PyArray_NBYTES((PyArrayObject *)storage));
            return -1;
        }
        if (PyDict_SetItemString(self->arrays, name, storage) < 0) return -1;
        gb_matrix m = {.data = PyArray_DATA((PyArrayObject *)storage), .dtype = dt, .trans = 1,
                       .K = K, .N = N, .ld = K, .group = 0, .group_stride = 0};
        *out = m;
        return 1;
    }
    const float *p;
    if (tl_kind == TL_HEADS_IN) {
        int64_t sh[3] = {heads, K, N / heads};
        p = weight(self, weights, name, required, 3, sh, &err);
        if (p) *out = per_head_matrix(p, heads, K, N / heads);
    } else if (tl_kind == TL_HEADS_OUT) {
        int64_t sh[3] = {heads, K / heads, N};
        p = weight(self, weights, name, required, 3, sh, &err);
        if (p) *out = plain_matrix(p, K, N);
    } else {
        int64_t sh[2] = {K, N};
        p = weight(self, weights, name, required, 2, sh, &err);
        if (p) *out = plain_matrix(p, K, N);
    }
    return err ? -1 : (p ? 1 : 0);
}

/* ------------------------------------------------------------- Model */
static void Model_dealloc(GbModel *self) {
    PyMem_Free(self->layers);
    Py_XDECREF(self->arrays);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int parse_flags(gb_config *c, PyObject *cfg) {
    return cfg_bool(cfg, "use_attn_result", &c->use_attn_result) ||
           cfg_bool(cfg, "use_split_qkv_input", &c->use_split_qkv_input) ||
           cfg_bool(cfg, "use_attn_in", &c->use_attn_in) ||
           cfg_bool(cfg, "use_hook_mlp_in", &c->use_hook_mlp_in);
}

static int check_flags(const gb_config *c) {
    if (c->use_attn_in && c->n_kv_heads != c->n_heads) {
        PyErr_Format(PyExc_ValueError,
                     "use_attn_in is not supported with grouped-query attention "
                     "(n_key_value_heads=%lld < n_heads=%lld), as in TransformerLens",
                     (long long)c->n_kv_heads, (long long)c->n_heads);
        return -1;
    }
    return 0;
}

static int Model_init(GbModel *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"cfg", "weights", NULL};
    PyObject *cfg, *weights;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!", kwlist, &PyDict_Type, &cfg, &PyDict_Type,
                                     &weights))
        return -1;
    if (self->running) {
        PyErr_SetString(PyExc_RuntimeError, "cannot re-initialise a Model while it runs");
        return -1;
    }
    gb_config c;
    memset(&c, 0, sizeof c);
    int64_t tmp;
    if (cfg_int(cfg, "n_layers", 1, 0, &c.n_layers) || cfg_int(cfg, "d_model", 1, 0, &c.d_model) ||
        cfg_int(cfg, "n_heads", 1, 0, &c.n_heads) || cfg_int(cfg, "d_head", 1, 0, &c.d_head) ||
        cfg_int(cfg, "d_mlp", 1, 0, &c.d_mlp) || cfg_int(cfg, "d_vocab", 1, 0, &c.d_vocab) ||
        cfg_int(cfg, "n_ctx", 1, 0, &c.n_ctx) ||
        cfg_int(cfg, "n_key_value_heads", 0, c.n_heads, &c.n_kv_heads) ||
        cfg_float(cfg, "eps", 1, 0, &c.eps) ||
        cfg_choice(cfg, "normalization_type", norm_names, 5, &c.norm) ||
        cfg_choice(cfg, "final_normalization_type", norm_names, 5, &c.final_norm) ||
        cfg_choice(cfg, "act_fn", act_names, GB_ACT_COUNT, &c.act) ||
        cfg_bool(cfg, "gated_mlp", &c.gated_mlp) || cfg_bool(cfg, "attn_only", &c.attn_only) ||
        cfg_float(cfg, "attn_scale", 1, 0, &c.attn_scale) ||
        cfg_bool(cfg, "scale_attn_by_inverse_layer_idx", &c.scale_attn_by_inverse_layer_idx) ||
        cfg_int(cfg, "rotary_dim", 0, 0, &c.rotary_dim) ||
        cfg_bool(cfg, "rotary_adjacent_pairs", &c.rotary_adjacent_pairs) ||
        cfg_int(cfg, "window_size", 0, 0, &tmp) || parse_flags(&c, cfg) ||
        cfg_bool(cfg, "center_unembed_logits", &c.center_unembed_logits) ||
        cfg_bool(cfg, "final_gain_after_unembed_in", &c.final_gain_after_unembed_in))
        return -1;
    c.window = tmp;
    {
        static const char *const pos_names[] = {"standard", "rotary", "shortformer"};
        if (cfg_choice(cfg, "positional_embedding_type", pos_names, 3, &c.pos)) return -1;
    }
    if (c.n_layers < 0 || c.d_model <= 0 || c.n_heads <= 0 || c.d_head <= 0 || c.d_mlp <= 0 ||
        c.d_vocab <= 0 || c.n_ctx <= 0 || c.n_kv_heads <= 0 || c.n_heads % c.n_kv_heads != 0) {
        PyErr_Format(PyExc_ValueError,
                     "invalid engine sizes: n_layers=%lld d_model=%lld n_heads=%lld "
                     "n_key_value_heads=%lld d_head=%lld d_mlp=%lld d_vocab=%lld n_ctx=%lld "
                     "(all must be positive and n_heads a multiple of n_key_value_heads)",
                     (long long)c.n_layers, (long long)c.d_model, (long long)c.n_heads,
                     (long long)c.n_kv_heads, (long long)c.d_head, (long long)c.d_mlp,
                     (long long)c.d_vocab, (long long)c.n_ctx);
        return -1;
    }
    {
        /* products of config sizes that shape weights and per-token buffers: checked here so
         * that no shape check below compares against a wrapped product */
        int64_t t;
        if (gb_mul(c.n_heads, c.d_head, &t, "Model", "n_heads * d_head") < 0 ||
            gb_mul(c.n_kv_heads, c.d_head, &t, "Model", "n_key_value_heads * d_head") < 0 ||
            gb_mul3(c.n_heads, c.d_head, c.d_model, &t, "Model", "n_heads * d_head * d_model") < 0 ||
            gb_mul(c.d_vocab, c.d_model, &t, "Model", "d_vocab * d_model") < 0 ||
            gb_mul(c.d_mlp, c.d_model, &t, "Model", "d_mlp * d_model") < 0 ||
            gb_mul(c.n_ctx, c.d_model, &t, "Model", "n_ctx * d_model") < 0 ||
            gb_mul3(c.n_heads > c.n_kv_heads ? c.n_heads : c.n_kv_heads, c.d_model, 3, &t, "Model",
                    "3 * max(n_heads, n_key_value_heads) * d_model") < 0)
            return -1;
    }
    if (!(c.attn_scale > 0.0f)) {
        PyErr_Format(PyExc_ValueError, "attn_scale must be positive, got %R",
                     PyDict_GetItemString(cfg, "attn_scale"));
        return -1;
    }
    if (c.pos == GB_POS_ROTARY &&
        (c.rotary_dim <= 0 || c.rotary_dim > c.d_head || c.rotary_dim % 2)) {
        PyErr_Format(PyExc_ValueError, "rotary_dim=%lld must be even and in (0, d_head=%lld]",
                     (long long)c.rotary_dim, (long long)c.d_head);
        return -1;
    }
    if (check_flags(&c)) return -1;

    /* every layer has its own attention weights: a layer count the weights cannot back is an
     * error here, not a MemoryError from allocating per-layer tables for it */
    if (c.n_layers > PyDict_Size(weights)) {
        PyErr_Format(PyExc_ValueError,
                     "Model: n_layers = %lld but weights holds only %zd entries (each layer needs "
                     "its own attention and MLP weights)",
                     (long long)c.n_layers, PyDict_Size(weights));
        return -1;
    }
    const int64_t L = c.n_layers, D = c.d_model, H = c.n_heads, G = c.n_kv_heads, d = c.d_head,
                  Dm = c.d_mlp;
    PyObject *arrays = PyDict_New();
    gb_layer_weights *layers = PyMem_Calloc((size_t)(L ? L : 1), sizeof(gb_layer_weights));
    if (!arrays || !layers) {
        Py_XDECREF(arrays);
        PyMem_Free(layers);
        PyErr_NoMemory();
        return -1;
    }
    Py_XSETREF(self->arrays, arrays);
    PyMem_Free(self->layers);
    self->layers = layers;
    self->cfg = c;
    memset(&self->w, 0, sizeof self->w);
    self->w.layers = layers;

    int err = 0;
    gb_weights *w = &self->w;
    int64_t sh_VD[2] = {c.d_vocab, D}, sh_ND[2] = {c.n_ctx, D}, sh_D[1] = {D};
    {
        gb_matrix E;
        /* the embedding is a lookup table: as a "matrix" it is [D, V] in TL
         * layout terms, or V stored rows of D values */
        PyObject *ev = PyDict_GetItemString(weights, "embed.W_E");
        if (ev && PyTuple_Check(ev)) {
            if (matrix_weight(self, weights, "embed.W_E", 1, TL_PLAIN, 0, D, c.d_vocab, &E) < 0) err = 1;
            else { w->W_E = E.data; w->W_E_dtype = E.dtype; }
        } else {
            w->W_E = weight(self, weights, "embed.W_E", 1, 2, sh_VD, &err);
            w->W_E_dtype = GB_F32;
        }
    }
    if (!err && c.pos != GB_POS_ROTARY) w->W_pos = weight(self, weights, "pos_embed.W_pos", 1, 2, sh_ND, &err);
    if (!err && c.pos == GB_POS_ROTARY) {
        int64_t sh[1] = {c.rotary_dim / 2};
        w->rotary_inv_freq = weight(self, weights, "rotary_inv_freq", 1, 1, sh, &err);
    }
    int has_w = c.final_norm == GB_NORM_LN || c.final_norm == GB_NORM_RMS;
    if (!err && has_w) w->lnf_w = weight(self, weights, "ln_final.w", 1, 1, sh_D, &err);
    if (!err && c.final_norm == GB_NORM_LN) w->lnf_b = weight(self, weights, "ln_final.b", 0, 1, sh_D, &err);
    PyObject *WU = err ? NULL : PyDict_GetItemString(weights, "unembed.W_U");
    if (!err) {
        if (WU && PyTuple_Check(WU) && PyTuple_GET_SIZE(WU) == 5) {
            int64_t rows = 0;
            if (gb_arg_i64(PyTuple_GET_ITEM(WU, 3), "unembed.W_U", "n_rows", 0, &rows) < 0) err = 1;
            c.d_vocab_out = rows;
        } else if (WU && PyArray_Check(WU) && PyArray_NDIM((PyArrayObject *)WU) == 2) {
            c.d_vocab_out = PyArray_DIM((PyArrayObject *)WU, 1);
        } else {
            PyErr_SetString(PyExc_ValueError,
                            "weight 'unembed.W_U' must be a 2-D float32 array [d_model, d_vocab_out] "
                            "or (\"rows\", storage, dtype, d_vocab_out, d_model)");
            err = 1;
        }
        self->cfg.d_vocab_out = c.d_vocab_out;
        if (!err && matrix_weight(self, weights, "unembed.W_U", 1, TL_PLAIN, 0, D, c.d_vocab_out, &w->W_U) < 0) err = 1;
        if (!err) {
            int64_t shb[1] = {c.d_vocab_out};
            w->b_U = weight(self, weights, "unembed.b_U", 0, 1, shb, &err);
        }
    }
    int blk_has_w = c.norm == GB_NORM_LN || c.norm == GB_NORM_RMS;
    for (int64_t l = 0; !err && l < L; l++) {
        gb_layer_weights *lw = &layers[l];
        char name[96];
#define NAME(suffix) (snprintf(name, sizeof name, "blocks.%lld." suffix, (long long)l), name)
        int64_t sbQ[2] = {H, d}, sbK[2] = {G, d}, sM[1] = {Dm};
        if (blk_has_w) {
            lw->ln1_w = weight(self, weights, NAME("ln1.w"), 1, 1, sh_D, &err);
            if (!err && !c.attn_only) lw->ln2_w = weight(self, weights, NAME("ln2.w"), 1, 1, sh_D, &err);
            if (!err && c.norm == GB_NORM_LN) {
                lw->ln1_b = weight(self, weights, NAME("ln1.b"), 0, 1, sh_D, &err);
                if (!err && !c.attn_only) lw->ln2_b = weight(self, weights, NAME("ln2.b"), 0, 1, sh_D, &err);
            }
        }
        if (!err && matrix_weight(self, weights, NAME("attn.W_Q"), 1, TL_HEADS_IN, H, D, H * d, &lw->W_Q) < 0) err = 1;
        if (!err && matrix_weight(self, weights, NAME("attn.W_K"), 1, TL_HEADS_IN, G, D, G * d, &lw->W_K) < 0) err = 1;
        if (!err && matrix_weight(self, weights, NAME("attn.W_V"), 1, TL_HEADS_IN, G, D, G * d, &lw->W_V) < 0) err = 1;
        if (!err && matrix_weight(self, weights, NAME("attn.W_O"), 1, TL_HEADS_OUT, H, H * d, D, &lw->W_O) < 0) err = 1;
        if (!err) lw->b_Q = weight(self, weights, NAME("attn.b_Q"), 0, 2, sbQ, &err);
        if (!err) lw->b_K = weight(self, weights, NAME("attn.b_K"), 0, 2, sbK, &err);
        if (!err) lw->b_V = weight(self, weights, NAME("attn.b_V"), 0, 2, sbK, &err);
        if (!err) lw->b_O = weight(self, weights, NAME("attn.b_O"), 0, 1, sh_D, &err);
        if (c.attn_only) continue; /* no MLP weights */
        if (!err && matrix_weight(self, weights, NAME("mlp.W_in"), 1, TL_PLAIN, 0, D, Dm, &lw->W_in) < 0) err = 1;
        if (!err && c.gated_mlp &&
            matrix_weight(self, weights, NAME("mlp.W_gate"), 1, TL_PLAIN, 0, D, Dm, &lw->W_gate) < 0) err = 1;
        if (!err && matrix_weight(self, weights, NAME("mlp.W_out"), 1, TL_PLAIN, 0, Dm, D, &lw->W_out) < 0) err = 1;
        if (!err) lw->b_in = weight(self, weights, NAME("mlp.b_in"), 0, 1, sM, &err);
        if (!err) lw->b_out = weight(self, weights, NAME("mlp.b_out"), 0, 1, sh_D, &err);
#undef NAME
    }
    if (err) {
        /* leave the object unusable rather than half-initialised */
        self->cfg.n_layers = -1;
        return -1;
    }
    return 0;
}

static int model_ready(GbModel *self) {
    if (self->cfg.n_layers < 0 || !self->arrays) {
        PyErr_SetString(PyExc_RuntimeError, "Model was not initialised successfully");
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------- hook trampoline */
typedef struct {
    PyThreadState *tstate;
    PyObject *callback;
    int armed; /* Ctrl-C stops this run's kernels (interrupt.c) */
} call_ctx;

static PyObject *site_name(int site, int layer) {
    if (gb_sites[site].per_layer) return PyUnicode_FromFormat("blocks.%d.%s", layer, gb_sites[site].name);
    return PyUnicode_FromString(gb_sites[site].name);
}

static int bridge_call(void *vctx, int site, int layer, int call_index, float *data, int ndim,
                       const int64_t *shape) {
    call_ctx *ctx = vctx;
    if (ctx->armed && gb_interrupt_pending()) return -1; /* kernels stopped: no partial result to hooks */
    PyEval_RestoreThread(ctx->tstate);
    int rc = -1;
    npy_intp dims[4];
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        dims[i] = (npy_intp)shape[i];
        n *= shape[i];
    }
    PyObject *res = NULL, *conv = NULL;
    PyObject *arr = PyArray_SimpleNew(ndim, dims, NPY_FLOAT32);
    if (!arr) goto out;
    memcpy(PyArray_DATA((PyArrayObject *)arr), data, (size_t)n * sizeof(float));
    res = PyObject_CallFunction(ctx->callback, "iiiO", site, layer, call_index, arr);
    if (!res) goto out;
    PyArrayObject *src = (PyArrayObject *)arr;
    if (res != Py_None) {
        conv = PyArray_FROM_OTF(res, NPY_FLOAT32, NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
        if (!conv) goto out;
        src = (PyArrayObject *)conv;
        int ok = PyArray_NDIM(src) == ndim;
        for (int i = 0; ok && i < ndim; i++) ok = PyArray_DIM(src, i) == dims[i];
        if (!ok) {
            PyObject *name = site_name(site, layer), *want = shape_tuple(ndim, shape),
                     *got = array_shape_tuple(src);
            if (name && want && got)
                PyErr_Format(PyExc_ValueError,
                             "hook at '%U' returned an array of shape %R; the activation has shape %R",
                             name, got, want);
            Py_XDECREF(name);
            Py_XDECREF(want);
            Py_XDECREF(got);
            goto out;
        }
    }
    memcpy(data, PyArray_DATA(src), (size_t)n * sizeof(float));
    rc = 0;
out:
    Py_XDECREF(conv);
    Py_XDECREF(res);
    Py_XDECREF(arr);
    ctx->tstate = PyEval_SaveThread();
    return rc;
}

static int bridge_poll(void *vctx) {
    call_ctx *ctx = vctx;
    if (ctx->armed && gb_interrupt_pending()) return 1; /* kernels stopped: gb_interrupt_end raises */
    PyEval_RestoreThread(ctx->tstate);
    int rc = PyErr_CheckSignals();
    ctx->tstate = PyEval_SaveThread();
    return rc < 0;
}

static int parse_site_layer(GbModel *self, PyObject *key, int *site, int *layer) {
    if (!PyTuple_Check(key) || PyTuple_GET_SIZE(key) != 2 ||
        !PyArg_ParseTuple(key, "ii", site, layer)) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "hook key must be a (site_id, layer) pair of ints, got %R", key);
        return -1;
    }
    if (*site < 0 || *site >= GB_SITE_COUNT) {
        PyErr_Format(PyExc_ValueError, "unknown hook site id %d", *site);
        return -1;
    }
    int per_layer = gb_sites[*site].per_layer;
    if ((per_layer && (*layer < 0 || *layer >= self->cfg.n_layers)) || (!per_layer && *layer != -1)) {
        PyErr_Format(PyExc_ValueError, "layer %d is not valid for hook site '%s' (model has %lld layers)",
                     *layer, gb_sites[*site].name, (long long)self->cfg.n_layers);
        return -1;
    }
    if (!gb_site_active(&self->cfg, *site)) {
        PyErr_Format(PyExc_ValueError, "hook point '%s' does not fire for this model and its flags",
                     gb_sites[*site].name);
        return -1;
    }
    return 0;
}

/* kv_cache=(keys, values, past): sequences of n_layers writable float32
 * C-contiguous arrays [B, capacity, G, d] (one capacity for all), and the
 * number of positions already stored. References go to `keep`. */
static int parse_kv_cache(GbModel *self, PyObject *kv, int64_t B, int64_t P, PyObject *keep,
                          float **keys, float **values, int64_t *past, int64_t *cap) {
    const gb_config *c = &self->cfg;
    const int64_t L = c->n_layers, G = c->n_kv_heads, d = c->d_head;
    PyObject *ko, *vo;
    long long n_past;
    if (!PyTuple_Check(kv) || !PyArg_ParseTuple(kv, "OOL", &ko, &vo, &n_past)) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "kv_cache must be a tuple (keys, values, past) of two "
                                         "per-layer sequences of arrays and an int");
        return -1;
    }
    PyObject *seqs[2] = {ko, vo};
    const char *what[2] = {"keys", "values"};
    *cap = -1;
    for (int w = 0; w < 2; w++) {
        PyObject *seq = PySequence_Fast(seqs[w], "kv_cache keys / values must be sequences of arrays");
        if (!seq) return -1;
        if (PySequence_Fast_GET_SIZE(seq) != L) {
            PyErr_Format(PyExc_ValueError, "kv_cache %s has %zd layers, the model has %lld", what[w],
                         PySequence_Fast_GET_SIZE(seq), (long long)L);
            Py_DECREF(seq);
            return -1;
        }
        for (int64_t l = 0; l < L; l++) {
            PyObject *a = PySequence_Fast_GET_ITEM(seq, l);
            PyArrayObject *arr = (PyArrayObject *)a;
            int ok = PyArray_Check(a) && PyArray_TYPE(arr) == NPY_FLOAT32 && PyArray_IS_C_CONTIGUOUS(arr) &&
                     PyArray_ISWRITEABLE(arr) && PyArray_ISALIGNED(arr) && PyArray_NDIM(arr) == 4;
            if (ok && *cap < 0) *cap = PyArray_DIM(arr, 1);
            ok = ok && PyArray_DIM(arr, 0) == B && PyArray_DIM(arr, 1) == *cap && PyArray_DIM(arr, 2) == G &&
                 PyArray_DIM(arr, 3) == d;
            if (!ok) {
                PyObject *got = PyArray_Check(a) ? array_shape_tuple(arr) : PyUnicode_FromString(Py_TYPE(a)->tp_name);
                if (got)
                    PyErr_Format(PyExc_ValueError,
                                 "kv_cache %s[%lld] must be a writable C-contiguous float32 array of shape "
                                 "(batch=%lld, capacity=%lld, n_kv_heads=%lld, d_head=%lld), got %R",
                                 what[w], (long long)l, (long long)B, (long long)(*cap < 0 ? 0 : *cap),
                                 (long long)G, (long long)d, got);
                Py_XDECREF(got);
                Py_DECREF(seq);
                return -1;
            }
            if (PyList_Append(keep, a) < 0) {
                Py_DECREF(seq);
                return -1;
            }
            (w == 0 ? keys : values)[l] = PyArray_DATA(arr);
        }
        Py_DECREF(seq);
    }
    if (L == 0) *cap = n_past + P;
    if (n_past < 0 || P > *cap - n_past) {
        PyErr_Format(PyExc_ValueError,
                     "kv_cache of capacity %lld holds %lld positions and cannot take %lld more",
                     (long long)*cap, n_past, (long long)P);
        return -1;
    }
    *past = n_past;
    return 0;
}

static PyObject *Model_forward(GbModel *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"tokens", "residual", "attention_mask", "positions", "start_at_layer",
                             "stop_at_layer", "final_norm", "unembed", "cache", "hooks", "callback",
                             "embeds", "kv_cache", "shortformer_pos_embed", "logit_positions", NULL};
    PyObject *tokens_o = Py_None, *resid_o = Py_None, *mask_o = Py_None, *pos_o = Py_None,
             *stop_o = Py_None, *cache_o = Py_None, *hooks_o = Py_None, *cb = Py_None,
             *embeds_o = Py_None, *kv_o = Py_None, *sfpos_o = Py_None, *lpos_o = Py_None;
    Py_ssize_t start = 0;
    int final_norm = 1, unembed = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O$OOOnOppOOOOOOO", kwlist, &tokens_o, &resid_o,
                                     &mask_o, &pos_o, &start, &stop_o, &final_norm, &unembed,
                                     &cache_o, &hooks_o, &cb, &embeds_o, &kv_o, &sfpos_o, &lpos_o))
        return NULL;
    if (model_ready(self)) return NULL;
    const gb_config *c = &self->cfg;
    const int64_t L = c->n_layers, D = c->d_model;

    PyArrayObject *tokens = NULL, *resid = NULL, *mask = NULL, *pos = NULL, *out = NULL, *sfpos = NULL,
                  *lpos = NULL;
    int64_t *logit_rows = NULL, n_logit_rows = 0, k_logit = 0;
    PyObject *keep = NULL; /* references held for the run */
    uint8_t *mode = NULL;
    float **cache = NULL;
    float **kv_keys = NULL, **kv_values = NULL;
    int64_t past = 0, kv_cap = 0;
    PyObject *result = NULL;
    int64_t B = 0, P = 0;
    int embeds_in = embeds_o != Py_None;

    int64_t stop = L;
    if (stop_o != Py_None) {
        stop = PyLong_AsLongLong(stop_o);
        if (stop == -1 && PyErr_Occurred()) return NULL;
    }
    if (start < 0 || start > L || stop < start || stop > L) {
        PyErr_Format(PyExc_ValueError,
                     "start_at_layer=%zd, stop_at_layer=%lld out of range for a %lld-layer model",
                     start, (long long)stop, (long long)L);
        return NULL;
    }

    if (embeds_in && (resid_o != Py_None || tokens_o != Py_None || start != 0)) {
        PyErr_SetString(PyExc_ValueError, "embeds is an alternative to tokens and residual, and runs from layer 0");
        return NULL;
    }
    if (resid_o != Py_None || embeds_in) {
        resid = (PyArrayObject *)PyArray_FROM_OTF(embeds_in ? embeds_o : resid_o, NPY_FLOAT32,
                                                  NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
        if (!resid) goto fail;
        if (PyArray_NDIM(resid) != 3 || PyArray_DIM(resid, 2) != D) {
            PyObject *got = array_shape_tuple(resid);
            if (got) PyErr_Format(PyExc_ValueError, "%s must have shape [batch, pos, %lld], got %R",
                                  embeds_in ? "embeds" : "residual", (long long)D, got);
            Py_XDECREF(got);
            goto fail;
        }
        B = PyArray_DIM(resid, 0);
        P = PyArray_DIM(resid, 1);
    } else {
        if (tokens_o == Py_None) {
            PyErr_SetString(PyExc_ValueError, "forward needs tokens or a residual");
            goto fail;
        }
        if (start != 0) {
            PyErr_SetString(PyExc_ValueError, "start_at_layer > 0 needs the residual entering that block");
            goto fail;
        }
        tokens = (PyArrayObject *)PyArray_FROM_OTF(tokens_o, NPY_INT64, NPY_ARRAY_IN_ARRAY);
        if (!tokens) goto fail;
        if (PyArray_NDIM(tokens) != 2) {
            PyObject *got = array_shape_tuple(tokens);
            if (got) PyErr_Format(PyExc_ValueError, "tokens must have shape [batch, pos], got %R", got);
            Py_XDECREF(got);
            goto fail;
        }
        B = PyArray_DIM(tokens, 0);
        P = PyArray_DIM(tokens, 1);
        const int64_t *t = PyArray_DATA(tokens);
        for (int64_t i = 0; i < B * P; i++) {
            if (t[i] < 0 || t[i] >= c->d_vocab) {
                PyErr_Format(PyExc_ValueError,
                             "token id %lld at [batch %lld, pos %lld] is out of range [0, %lld)",
                             (long long)t[i], (long long)(i / P), (long long)(i % P), (long long)c->d_vocab);
                goto fail;
            }
        }
    }
    if (sfpos_o != Py_None) {
        if (c->pos != GB_POS_SHORTFORMER || !resid) {
            PyErr_SetString(PyExc_ValueError, "shortformer_pos_embed is only used by shortformer models "
                                              "run from a residual (start_at_layer)");
            goto fail;
        }
        sfpos = (PyArrayObject *)PyArray_FROM_OTF(sfpos_o, NPY_FLOAT32, NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
        if (!sfpos) goto fail;
        if (PyArray_NDIM(sfpos) != 3 || PyArray_DIM(sfpos, 0) != B || PyArray_DIM(sfpos, 1) != P ||
            PyArray_DIM(sfpos, 2) != D) {
            PyObject *got = array_shape_tuple(sfpos);
            if (got) PyErr_Format(PyExc_ValueError, "shortformer_pos_embed has shape %R, expected (%lld, %lld, %lld)",
                                  got, (long long)B, (long long)P, (long long)D);
            Py_XDECREF(got);
            goto fail;
        }
    }
    keep = PyList_New(0);
    if (!keep) goto fail;
    if (kv_o != Py_None) {
        kv_keys = PyMem_Calloc((size_t)(L ? L : 1), sizeof(float *));
        kv_values = PyMem_Calloc((size_t)(L ? L : 1), sizeof(float *));
        if (!kv_keys || !kv_values) {
            PyErr_NoMemory();
            goto fail;
        }
        if (parse_kv_cache(self, kv_o, B, P, keep, kv_keys, kv_values, &past, &kv_cap)) goto fail;
    }
    const int64_t K = past + P; /* keys attended: cached + new */
    if (c->pos != GB_POS_ROTARY && K > c->n_ctx && pos_o == Py_None) {
        if (past)
            PyErr_Format(PyExc_ValueError, "%lld cached + %lld new positions exceed the model's context n_ctx=%lld",
                         (long long)past, (long long)P, (long long)c->n_ctx);
        else
            PyErr_Format(PyExc_ValueError, "sequence length %lld exceeds the model's context n_ctx=%lld",
                         (long long)P, (long long)c->n_ctx);
        goto fail;
    }
    if (mask_o != Py_None) {
        mask = (PyArrayObject *)PyArray_FROM_OTF(mask_o, NPY_INT32, NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
        if (!mask) goto fail;
        if (PyArray_NDIM(mask) != 2 || PyArray_DIM(mask, 0) != B || PyArray_DIM(mask, 1) != K) {
            PyObject *got = array_shape_tuple(mask);
            if (got) PyErr_Format(PyExc_ValueError, "attention_mask has shape %R, expected (%lld, %lld)%s", got,
                                  (long long)B, (long long)K, past ? " (cached + new positions)" : "");
            Py_XDECREF(got);
            goto fail;
        }
    }
    if (pos_o != Py_None) {
        pos = (PyArrayObject *)PyArray_FROM_OTF(pos_o, NPY_INT64, NPY_ARRAY_IN_ARRAY);
        if (!pos) goto fail;
        if (PyArray_NDIM(pos) != 2 || PyArray_DIM(pos, 0) != B || PyArray_DIM(pos, 1) != P) {
            PyObject *got = array_shape_tuple(pos);
            if (got) PyErr_Format(PyExc_ValueError, "positions has shape %R, expected (%lld, %lld)", got, (long long)B, (long long)P);
            Py_XDECREF(got);
            goto fail;
        }
        const int64_t *p = PyArray_DATA(pos);
        for (int64_t i = 0; i < B * P; i++) {
            if (p[i] < 0 || (c->pos != GB_POS_ROTARY && p[i] >= c->n_ctx)) {
                PyErr_Format(PyExc_ValueError, "position id %lld at [batch %lld, pos %lld] is out of range [0, %lld)",
                             (long long)p[i], (long long)(i / P), (long long)(i % P), (long long)c->n_ctx);
                goto fail;
            }
        }
    }

    if (lpos_o != Py_None) {
        /* unembed only these positions: int64 [B, k], each in [0, P) */
        if (stop != L || !unembed) {
            PyErr_SetString(PyExc_ValueError, "logit_positions needs the unembed (stop_at_layer=None, unembed=True)");
            goto fail;
        }
        lpos = (PyArrayObject *)PyArray_FROM_OTF(lpos_o, NPY_INT64, NPY_ARRAY_IN_ARRAY);
        if (!lpos) goto fail;
        if (PyArray_NDIM(lpos) != 2 || PyArray_DIM(lpos, 0) != B) {
            PyObject *got = array_shape_tuple(lpos);
            if (got) PyErr_Format(PyExc_ValueError, "logit_positions must have shape [%lld, k], got %R",
                                  (long long)B, got);
            Py_XDECREF(got);
            goto fail;
        }
        k_logit = PyArray_DIM(lpos, 1);
        if (gb_mul(B, k_logit, &n_logit_rows, "logit_positions", "rows") < 0) goto fail;
        logit_rows = PyMem_Malloc((size_t)(n_logit_rows ? n_logit_rows : 1) * sizeof(int64_t));
        if (!logit_rows) {
            PyErr_NoMemory();
            goto fail;
        }
        const int64_t *lp = PyArray_DATA(lpos);
        for (int64_t i = 0; i < n_logit_rows; i++) {
            if (lp[i] < 0 || lp[i] >= P) {
                PyErr_Format(PyExc_ValueError, "logit position %lld at [batch %lld, %lld] is out of range [0, %lld)",
                             (long long)lp[i], (long long)(i / k_logit), (long long)(i % k_logit), (long long)P);
                goto fail;
            }
            logit_rows[i] = (i / k_logit) * P + lp[i];
        }
    }

    /* the plan */
    const size_t nslots = (size_t)GB_SITE_COUNT * (size_t)(L + 1);
    mode = PyMem_Calloc(nslots, 1);
    cache = PyMem_Calloc(nslots, sizeof(float *));
    if (!mode || !cache) {
        PyErr_NoMemory();
        goto fail;
    }
    if (cache_o != Py_None) {
        if (!PyDict_Check(cache_o)) {
            PyErr_SetString(PyExc_TypeError, "cache must be a dict {(site_id, layer): ndarray}");
            goto fail;
        }
        PyObject *k, *v;
        Py_ssize_t it = 0;
        while (PyDict_Next(cache_o, &it, &k, &v)) {
            int site, layer;
            if (parse_site_layer(self, k, &site, &layer)) goto fail;
            int64_t sh[4];
            int nd = gb_hook_shape_kv(c, site, B, P, K, sh);
            int ok = PyArray_Check(v) && PyArray_TYPE((PyArrayObject *)v) == NPY_FLOAT32 &&
                     PyArray_IS_C_CONTIGUOUS((PyArrayObject *)v) && PyArray_ISWRITEABLE((PyArrayObject *)v) &&
                     PyArray_ISALIGNED((PyArrayObject *)v) && PyArray_NDIM((PyArrayObject *)v) == nd;
            for (int i = 0; ok && i < nd; i++) ok = PyArray_DIM((PyArrayObject *)v, i) == sh[i];
            if (!ok) {
                PyObject *name = site_name(site, layer), *want = shape_tuple(nd, sh);
                if (name && want)
                    PyErr_Format(PyExc_ValueError,
                                 "cache array for '%U' must be a writable C-contiguous float32 array of shape %R",
                                 name, want);
                Py_XDECREF(name);
                Py_XDECREF(want);
                goto fail;
            }
            if (PyList_Append(keep, v) < 0) goto fail;
            size_t sl = (size_t)site * (size_t)(L + 1) + (size_t)(layer + 1);
            mode[sl] = GB_HOOK_CACHE;
            cache[sl] = PyArray_DATA((PyArrayObject *)v);
        }
    }
    int any_call = 0;
    if (hooks_o != Py_None) {
        PyObject *iter = PyObject_GetIter(hooks_o), *k;
        if (!iter) goto fail;
        while ((k = PyIter_Next(iter))) {
            int site, layer;
            int bad = parse_site_layer(self, k, &site, &layer);
            Py_DECREF(k);
            if (bad) {
                Py_DECREF(iter);
                goto fail;
            }
            mode[(size_t)site * (size_t)(L + 1) + (size_t)(layer + 1)] = GB_HOOK_CALL;
            any_call = 1;
        }
        Py_DECREF(iter);
        if (PyErr_Occurred()) goto fail;
    }
    if (any_call && !PyCallable_Check(cb)) {
        PyErr_SetString(PyExc_TypeError, "hooks were given but callback is not callable");
        goto fail;
    }

    if (logit_rows) {
        const int un_in = GB_SITE_UNEMBED_IN, un_out = GB_SITE_UNEMBED_OUT;
        if (mode[(size_t)un_in * (size_t)(L + 1)] != GB_HOOK_NONE ||
            mode[(size_t)un_out * (size_t)(L + 1)] != GB_HOOK_NONE) {
            PyErr_SetString(PyExc_ValueError, "logit_positions cannot be combined with a hook or cache "
                                              "at unembed.hook_in / unembed.hook_out");
            goto fail;
        }
    }
    int64_t last = stop == L && unembed ? c->d_vocab_out : D;
    npy_intp odims[3] = {(npy_intp)B, (npy_intp)(logit_rows ? k_logit : P), (npy_intp)last};
    out = (PyArrayObject *)PyArray_SimpleNew(3, odims, NPY_FLOAT32);
    if (!out) goto fail;

    call_ctx ctx = {.tstate = NULL, .callback = cb};
    gb_plan plan = {.mode = mode, .cache = cache, .call = bridge_call, .poll = bridge_poll, .ctx = &ctx};
    gb_run run = {
        .B = B, .P = P,
        .tokens = tokens ? PyArray_DATA(tokens) : NULL,
        .residual_in = resid ? PyArray_DATA(resid) : NULL,
        .embeds_in = embeds_in,
        .kv_keys = kv_keys, .kv_values = kv_values, .past = past, .kv_cap = kv_cap,
        .attn_mask = mask ? PyArray_DATA(mask) : NULL,
        .positions = pos ? PyArray_DATA(pos) : NULL,
        .shortformer_pos = sfpos ? PyArray_DATA(sfpos) : NULL,
        .start_layer = start, .stop_layer = stop,
        .final_norm = final_norm, .unembed = unembed,
        .out = PyArray_DATA(out),
        .logit_rows = logit_rows, .n_logit_rows = n_logit_rows,
    };
    char errbuf[256] = {0};
    Py_INCREF(self); /* a hook may drop the last other reference */
    self->running++;
    const int armed = gb_interrupt_begin(); /* Ctrl-C stops the kernels, not just between layers */
    ctx.armed = armed;
    ctx.tstate = PyEval_SaveThread();
    int rc = gb_forward(c, &self->w, &plan, &run, errbuf, sizeof errbuf);
    PyEval_RestoreThread(ctx.tstate);
    const int interrupted = gb_interrupt_end(armed) < 0;
    self->running--;
    Py_DECREF(self);
    if (interrupted) {
        goto fail; /* KeyboardInterrupt (or the run's own exception) is set */
    } else if (rc == GB_ERR_NOMEM) {
        PyErr_NoMemory();
        goto fail;
    } else if (rc == GB_ERR_ARG) {
        PyErr_SetString(PyExc_ValueError, errbuf);
        goto fail;
    } else if (rc != GB_OK) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, "forward aborted by a hook");
        goto fail;
    }
    result = (PyObject *)out;
    out = NULL;
fail:
    Py_XDECREF(out);
    Py_XDECREF(tokens);
    Py_XDECREF(resid);
    Py_XDECREF(mask);
    Py_XDECREF(pos);
    Py_XDECREF(sfpos);
    Py_XDECREF(lpos);
    PyMem_Free(logit_rows);
    Py_XDECREF(keep);
    PyMem_Free(mode);
    PyMem_Free(cache);
    PyMem_Free(kv_keys);
    PyMem_Free(kv_values);
    return result;
}

static PyObject *Model_hook_shape(GbModel *self, PyObject *args) {
    int site;
    long long B, P, K = -1;
    if (!PyArg_ParseTuple(args, "iLL|L", &site, &B, &P, &K)) return NULL;
    if (model_ready(self)) return NULL;
    if (site < 0 || site >= GB_SITE_COUNT) {
        PyErr_Format(PyExc_ValueError, "unknown hook site id %d", site);
        return NULL;
    }
    if (K < 0) K = P;
    if (B < 0 || P < 0 || K < P) {
        PyErr_Format(PyExc_ValueError, "hook_shape needs 0 <= P <= K and B >= 0, got B=%lld P=%lld K=%lld", B, P, K);
        return NULL;
    }
    int64_t sh[4];
    int nd = gb_hook_shape_kv(&self->cfg, site, B, P, K, sh);
    return shape_tuple(nd, sh);
}

static PyObject *Model_embed_tokens(GbModel *self, PyObject *arg) {
    if (model_ready(self)) return NULL;
    PyArrayObject *t = (PyArrayObject *)PyArray_FROM_OTF(arg, NPY_INT64, NPY_ARRAY_IN_ARRAY);
    if (!t) return NULL;
    const gb_config *c = &self->cfg;
    const int nd = PyArray_NDIM(t);
    if (nd < 1 || nd > 2) {
        PyObject *got = array_shape_tuple(t);
        if (got) PyErr_Format(PyExc_ValueError, "tokens must have shape [batch, pos] or [pos], got %R", got);
        Py_XDECREF(got);
        Py_DECREF(t);
        return NULL;
    }
    const int64_t n = PyArray_SIZE(t);
    const int64_t *ids = PyArray_DATA(t);
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= c->d_vocab) {
            PyErr_Format(PyExc_ValueError, "token id %lld is out of range [0, %lld)", (long long)ids[i],
                         (long long)c->d_vocab);
            Py_DECREF(t);
            return NULL;
        }
    npy_intp dims[3];
    for (int i = 0; i < nd; i++) dims[i] = PyArray_DIM(t, i);
    dims[nd] = (npy_intp)c->d_model;
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(nd + 1, dims, NPY_FLOAT32);
    if (!out) {
        Py_DECREF(t);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    if (self->w.W_E_dtype == GB_F32)
        gb_embed(PyArray_DATA(out), (const float *)self->w.W_E, ids, n, c->d_model);
    else
        gb_embed_rows(PyArray_DATA(out), self->w.W_E, self->w.W_E_dtype, ids, n, c->d_model);
    Py_END_ALLOW_THREADS
    Py_DECREF(t);
    return (PyObject *)out;
}

static int append_name(PyObject *list, int site, int64_t layer) {
    PyObject *n = gb_sites[site].per_layer
                      ? PyUnicode_FromFormat("blocks.%lld.%s", (long long)layer, gb_sites[site].name)
                      : PyUnicode_FromString(gb_sites[site].name);
    if (!n) return -1;
    int rc = PyList_Append(list, n);
    Py_DECREF(n);
    return rc;
}

static PyObject *Model_hook_names(GbModel *self, PyObject *noargs) {
    if (model_ready(self)) return NULL;
    PyObject *list = PyList_New(0);
    if (!list) return NULL;
    const gb_config *c = &self->cfg;
    for (int s = 0; s < GB_SITE_COUNT && s < GB_SITE_RESID_PRE; s++)
        if (gb_site_active(c, s) && append_name(list, s, -1)) goto fail;
    for (int64_t l = 0; l < c->n_layers; l++)
        for (int s = GB_SITE_RESID_PRE; s <= GB_SITE_RESID_POST; s++)
            if (gb_site_active(c, s) && append_name(list, s, l)) goto fail;
    for (int s = GB_SITE_RESID_POST + 1; s < GB_SITE_COUNT; s++)
        if (gb_site_active(c, s) && append_name(list, s, -1)) goto fail;
    return list;
fail:
    Py_DECREF(list);
    return NULL;
}

static PyObject *Model_set_flags(GbModel *self, PyObject *args, PyObject *kwds) {
    if (PyTuple_GET_SIZE(args) != 0) {
        PyErr_SetString(PyExc_TypeError, "set_flags takes keyword arguments only");
        return NULL;
    }
    if (model_ready(self)) return NULL;
    if (self->running) {
        PyErr_SetString(PyExc_RuntimeError, "cannot change hook flags while a forward pass runs");
        return NULL;
    }
    static const char *const known[] = {"use_attn_result", "use_split_qkv_input", "use_attn_in",
                                        "use_hook_mlp_in"};
    if (kwds) {
        PyObject *k, *v;
        Py_ssize_t it = 0;
        while (PyDict_Next(kwds, &it, &k, &v)) {
            const char *s = PyUnicode_AsUTF8(k);
            int found = 0;
            for (size_t i = 0; s && i < sizeof known / sizeof known[0]; i++) found |= strcmp(s, known[i]) == 0;
            if (!found) {
                PyErr_Format(PyExc_TypeError, "unknown flag %R; known: use_attn_result, "
                             "use_split_qkv_input, use_attn_in, use_hook_mlp_in", k);
                return NULL;
            }
        }
    }
    gb_config c = self->cfg;
    if (kwds) {
        int *fields[] = {&c.use_attn_result, &c.use_split_qkv_input, &c.use_attn_in, &c.use_hook_mlp_in};
        for (size_t i = 0; i < 4; i++) {
            PyObject *v = PyDict_GetItemString(kwds, known[i]);
            if (!v) continue;
            int b = PyObject_IsTrue(v);
            if (b < 0) return NULL;
            *fields[i] = b;
        }
    }
    if (check_flags(&c)) return NULL;
    self->cfg = c;
    Py_RETURN_NONE;
}

static PyObject *Model_get_flags(GbModel *self, PyObject *noargs) {
    if (model_ready(self)) return NULL;
    return Py_BuildValue("{s:O,s:O,s:O,s:O}", "use_attn_result", self->cfg.use_attn_result ? Py_True : Py_False,
                         "use_split_qkv_input", self->cfg.use_split_qkv_input ? Py_True : Py_False,
                         "use_attn_in", self->cfg.use_attn_in ? Py_True : Py_False,
                         "use_hook_mlp_in", self->cfg.use_hook_mlp_in ? Py_True : Py_False);
}

static PyMethodDef Model_methods[] = {
    {"forward", (PyCFunction)(void (*)(void))Model_forward, METH_VARARGS | METH_KEYWORDS,
     "forward(tokens=None, *, residual=None, attention_mask=None, positions=None, start_at_layer=0,\n"
     "        stop_at_layer=None, final_norm=True, unembed=True, cache=None, hooks=None,\n"
     "        callback=None, embeds=None, kv_cache=None, shortformer_pos_embed=None,\n"
     "        logit_positions=None) -> ndarray\n\n"
     "Run the forward pass in C with the GIL released. See docs/engine-interface.md."},
    {"hook_shape", (PyCFunction)Model_hook_shape, METH_VARARGS,
     "hook_shape(site_id, B, P, K=P) -> tuple: the activation shape at a hook site\n"
     "(K: keys attended, past + P with a KV cache)."},
    {"embed_tokens", (PyCFunction)Model_embed_tokens, METH_O,
     "embed_tokens(tokens) -> ndarray [..., d_model]: rows of W_E (widened / dequantised)."},
    {"hook_names", (PyCFunction)Model_hook_names, METH_NOARGS,
     "hook_names() -> list[str]: hook points that fire for this config, in firing order."},
    {"set_flags", (PyCFunction)(void (*)(void))Model_set_flags, METH_VARARGS | METH_KEYWORDS,
     "set_flags(use_attn_result=, use_split_qkv_input=, use_attn_in=, use_hook_mlp_in=)."},
    {"get_flags", (PyCFunction)Model_get_flags, METH_NOARGS, "get_flags() -> dict of the hook flags."},
    {NULL, NULL, 0, NULL},
};

static PyObject *Model_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    GbModel *self = (GbModel *)type->tp_alloc(type, 0);
    if (self) self->cfg.n_layers = -1;
    return (PyObject *)self;
}

PyTypeObject GbModelType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "glassbox._C.Model",
    .tp_basicsize = sizeof(GbModel),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Model(cfg: dict, weights: dict) -- the C forward engine for one set of weights.",
    .tp_new = Model_new,
    .tp_init = (initproc)Model_init,
    .tp_dealloc = (destructor)Model_dealloc,
    .tp_methods = Model_methods,
};

int gb_engine_bindings_init(PyObject *module) {
    if (PyType_Ready(&GbModelType) < 0) return -1;
    Py_INCREF(&GbModelType);
    if (PyModule_AddObject(module, "Model", (PyObject *)&GbModelType) < 0) {
        Py_DECREF(&GbModelType);
        return -1;
    }
    PyObject *sites = PyTuple_New(GB_SITE_COUNT);
    if (!sites) return -1;
    for (int i = 0; i < GB_SITE_COUNT; i++) {
        PyObject *t = Py_BuildValue("(isO)", i, gb_sites[i].name, gb_sites[i].per_layer ? Py_True : Py_False);
        if (!t) {
            Py_DECREF(sites);
            return -1;
        }
        PyTuple_SET_ITEM(sites, i, t);
    }
    if (PyModule_AddObject(module, "HOOK_SITES", sites) < 0) {
        Py_DECREF(sites);
        return -1;
    }
    return 0;
}
