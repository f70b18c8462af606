/* Test entry points for the ops kernels (norms, activations, RoPE,
 * attention, elementwise helpers). Thin wrappers: validate numpy inputs
 * (float32 / int64 / int32, made C-contiguous), allocate new outputs,
 * release the GIL around the kernel. Shape errors are ValueErrors naming the
 * argument and both shapes; dtype errors are TypeErrors. */
#include "argcheck.h"
#include "bindings.h"
#include "kernels.h"

#include <stdio.h>
#include <string.h>

/* ------------------------------------------------------------ helpers */

/* "(2, 3)" style shape string of an array, into buf. */
static const char *shape_str(PyArrayObject *a, char *buf, size_t n) {
    int nd = PyArray_NDIM(a);
    npy_intp *sh = PyArray_DIMS(a);
    size_t pos = 0;
    pos += (size_t)snprintf(buf + pos, n - pos, "(");
    for (int i = 0; i < nd && pos < n; i++)
        pos += (size_t)snprintf(buf + pos, n - pos, "%s%lld", i ? ", " : "", (long long)sh[i]);
    if (pos < n) pos += (size_t)snprintf(buf + pos, n - pos, nd == 1 ? ",)" : ")");
    return buf;
}

/* Convert `obj` to an aligned C-contiguous array of `type` with ndim in
 * [ndmin, ndmax]. ndarrays must already have that dtype (no silent casts of
 * float64 model data); lists are converted. New reference or NULL + error. */
static PyArrayObject *get_array(PyObject *obj, const char *name, int type, int ndmin, int ndmax) {
    if (obj == NULL || obj == Py_None) {
        PyErr_Format(PyExc_TypeError, "%s: expected an array, got None", name);
        return NULL;
    }
    if (PyArray_Check(obj) && PyArray_TYPE((PyArrayObject *)obj) != type) {
        PyArray_Descr *want = PyArray_DescrFromType(type);
        PyObject *wn = want ? PyObject_Str((PyObject *)want) : NULL;
        PyObject *gn = PyObject_Str((PyObject *)PyArray_DESCR((PyArrayObject *)obj));
        PyErr_Format(PyExc_TypeError, "%s must have dtype %S, got %S", name,
                     wn ? wn : Py_None, gn ? gn : Py_None);
        Py_XDECREF(want);
        Py_XDECREF(wn);
        Py_XDECREF(gn);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)PyArray_FROMANY(obj, type, 0, 0, NPY_ARRAY_IN_ARRAY);
    if (!a) return NULL;
    int nd = PyArray_NDIM(a);
    if (nd < ndmin || nd > ndmax) {
        char b[128];
        if (ndmin == ndmax)
            PyErr_Format(PyExc_ValueError, "%s must be %d-D, got shape %s", name, ndmin,
                         shape_str(a, b, sizeof b));
        else
            PyErr_Format(PyExc_ValueError, "%s must be %d-D to %d-D, got shape %s", name, ndmin,
                         ndmax, shape_str(a, b, sizeof b));
        Py_DECREF(a);
        return NULL;
    }
    return a;
}

static PyArrayObject *get_f32(PyObject *obj, const char *name, int ndmin, int ndmax) {
    return get_array(obj, name, NPY_FLOAT32, ndmin, ndmax);
}

/* Raise ValueError "<name> has shape S; expected <what>". Returns NULL. */
static void *shape_error(PyArrayObject *a, const char *name, const char *what) {
    char b[128];
    PyErr_Format(PyExc_ValueError, "%s has shape %s; expected %s", name, shape_str(a, b, sizeof b),
                 what);
    return NULL;
}

static PyArrayObject *new_f32(int nd, const npy_intp *dims) {
    return (PyArrayObject *)PyArray_SimpleNew(nd, (npy_intp *)dims, NPY_FLOAT32);
}

/* Steal a (new reference) or return a new reference to None. */
static PyObject *or_none(PyArrayObject *a) {
    if (a) return (PyObject *)a;
    Py_INCREF(Py_None);
    return Py_None;
}

static float *F(PyArrayObject *a) { return a ? (float *)PyArray_DATA(a) : NULL; }

int gb_parse_act_name(const char *name, gb_act *out) {
    static const struct {
        const char *name;
        gb_act act;
    } table[] = {
        {"relu", GB_ACT_RELU},           {"gelu", GB_ACT_GELU},
        {"gelu_new", GB_ACT_GELU_NEW},   {"gelu_fast", GB_ACT_GELU_FAST},
        {"gelu_pytorch_tanh", GB_ACT_GELU_PYTORCH_TANH}, {"silu", GB_ACT_SILU},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strcmp(name, table[i].name) == 0) {
            *out = table[i].act;
            return 0;
        }
    PyErr_Format(PyExc_ValueError,
                 "unknown activation '%s' (expected relu, gelu, gelu_new, gelu_fast, "
                 "gelu_pytorch_tanh or silu)",
                 name);
    return -1;
}

/* ------------------------------------------------------------- norms */

static PyObject *py_norm_scale(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "eps", "center", NULL};
    PyObject *xo;
    float eps;
    int center = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Of|p", kwlist, &xo, &eps, &center)) return NULL;
    PyArrayObject *x = get_f32(xo, "x", 2, 2);
    if (!x) return NULL;
    npy_intp M = PyArray_DIM(x, 0), D = PyArray_DIM(x, 1);
    npy_intp sdim[1] = {M};
    PyArrayObject *c = new_f32(2, PyArray_DIMS(x)), *s = new_f32(1, sdim);
    if (!c || !s) {
        Py_DECREF(x);
        Py_XDECREF(c);
        Py_XDECREF(s);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    gb_norm_scale(F(c), F(s), F(x), D, M, D, eps, center);
    Py_END_ALLOW_THREADS
    Py_DECREF(x);
    return Py_BuildValue("(NN)", c, s);
}

static PyObject *py_norm_apply(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"centred", "scale", "w", "b", NULL};
    PyObject *co, *so, *wo = Py_None, *bo = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|OO", kwlist, &co, &so, &wo, &bo)) return NULL;
    PyArrayObject *c = NULL, *s = NULL, *w = NULL, *b = NULL, *out = NULL;
    char what[96];
    if (!(c = get_f32(co, "centred", 2, 2))) goto fail;
    npy_intp M = PyArray_DIM(c, 0), D = PyArray_DIM(c, 1);
    if (!(s = get_f32(so, "scale", 1, 1))) goto fail;
    if (PyArray_DIM(s, 0) != M) {
        snprintf(what, sizeof what, "(%lld,) (rows of centred)", (long long)M);
        shape_error(s, "scale", what);
        goto fail;
    }
    snprintf(what, sizeof what, "(%lld,) (columns of centred)", (long long)D);
    if (wo != Py_None) {
        if (!(w = get_f32(wo, "w", 1, 1))) goto fail;
        if (PyArray_DIM(w, 0) != D) {
            shape_error(w, "w", what);
            goto fail;
        }
    }
    if (bo != Py_None) {
        if (!(b = get_f32(bo, "b", 1, 1))) goto fail;
        if (PyArray_DIM(b, 0) != D) {
            shape_error(b, "b", what);
            goto fail;
        }
    }
    if (!(out = new_f32(2, PyArray_DIMS(c)))) goto fail;
    Py_BEGIN_ALLOW_THREADS
    gb_norm_apply(F(out), F(c), F(s), F(w), F(b), M, D);
    Py_END_ALLOW_THREADS
    Py_DECREF(c);
    Py_DECREF(s);
    Py_XDECREF(w);
    Py_XDECREF(b);
    return (PyObject *)out;
fail:
    Py_XDECREF(c);
    Py_XDECREF(s);
    Py_XDECREF(w);
    Py_XDECREF(b);
    return NULL;
}

/* ------------------------------------------------------- activations */

static PyObject *py_activation(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "name", NULL};
    PyObject *xo;
    const char *name;
    gb_act act;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Os", kwlist, &xo, &name)) return NULL;
    if (gb_parse_act_name(name, &act) < 0) return NULL;
    PyArrayObject *x = get_f32(xo, "x", 0, NPY_MAXDIMS);
    if (!x) return NULL;
    PyArrayObject *out = new_f32(PyArray_NDIM(x), PyArray_DIMS(x));
    if (!out) {
        Py_DECREF(x);
        return NULL;
    }
    int64_t n = (int64_t)PyArray_SIZE(x);
    Py_BEGIN_ALLOW_THREADS
    gb_activation(F(out), F(x), n, act);
    Py_END_ALLOW_THREADS
    Py_DECREF(x);
    return (PyObject *)out;
}

/* Two same-shape float32 arrays (names na, nb). */
static int get_pair(PyObject *ao, PyObject *bo, const char *na, const char *nb,
                    PyArrayObject **a, PyArrayObject **b) {
    *a = get_f32(ao, na, 0, NPY_MAXDIMS);
    if (!*a) return -1;
    *b = get_f32(bo, nb, 0, NPY_MAXDIMS);
    if (!*b) {
        Py_CLEAR(*a);
        return -1;
    }
    if (!PyArray_SAMESHAPE(*a, *b)) {
        char s1[128];
        char what[160];
        snprintf(what, sizeof what, "the shape of %s %s", na, shape_str(*a, s1, sizeof s1));
        shape_error(*b, nb, what);
        Py_CLEAR(*a);
        Py_CLEAR(*b);
        return -1;
    }
    return 0;
}

static PyObject *py_gated_activation(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"gate", "up", "name", NULL};
    PyObject *go, *uo;
    const char *name;
    gb_act act;
    PyArrayObject *g, *u;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOs", kwlist, &go, &uo, &name)) return NULL;
    if (gb_parse_act_name(name, &act) < 0) return NULL;
    if (get_pair(go, uo, "gate", "up", &g, &u) < 0) return NULL;
    PyArrayObject *out = new_f32(PyArray_NDIM(g), PyArray_DIMS(g));
    if (out) {
        int64_t n = (int64_t)PyArray_SIZE(g);
        Py_BEGIN_ALLOW_THREADS
        gb_gated_activation(F(out), F(g), F(u), n, act);
        Py_END_ALLOW_THREADS
    }
    Py_DECREF(g);
    Py_DECREF(u);
    return (PyObject *)out;
}

/* ------------------------------------------------------ elementwise */

static PyObject *py_add(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"a", "b", NULL};
    PyObject *ao, *bo;
    PyArrayObject *a, *b;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO", kwlist, &ao, &bo)) return NULL;
    if (get_pair(ao, bo, "a", "b", &a, &b) < 0) return NULL;
    PyArrayObject *out = new_f32(PyArray_NDIM(a), PyArray_DIMS(a));
    if (out) {
        int64_t n = (int64_t)PyArray_SIZE(a);
        Py_BEGIN_ALLOW_THREADS
        gb_add(F(out), F(a), F(b), n);
        Py_END_ALLOW_THREADS
    }
    Py_DECREF(a);
    Py_DECREF(b);
    return (PyObject *)out;
}

static PyObject *py_embed(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"W_E", "tokens", NULL};
    PyObject *wo, *to;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO", kwlist, &wo, &to)) return NULL;
    PyArrayObject *W = get_f32(wo, "W_E", 2, 2);
    if (!W) return NULL;
    PyArrayObject *t = get_array(to, "tokens", NPY_INT64, 1, 1);
    if (!t) {
        Py_DECREF(W);
        return NULL;
    }
    npy_intp V = PyArray_DIM(W, 0), D = PyArray_DIM(W, 1), M = PyArray_DIM(t, 0);
    const int64_t *tok = (const int64_t *)PyArray_DATA(t);
    for (npy_intp m = 0; m < M; m++)
        if (tok[m] < 0 || tok[m] >= V) {
            PyErr_Format(PyExc_ValueError, "tokens[%lld] = %lld is out of range for W_E with %lld rows",
                         (long long)m, (long long)tok[m], (long long)V);
            Py_DECREF(W);
            Py_DECREF(t);
            return NULL;
        }
    npy_intp dims[2] = {M, D};
    PyArrayObject *out = new_f32(2, dims);
    if (out) {
        Py_BEGIN_ALLOW_THREADS
        gb_embed(F(out), F(W), tok, M, D);
        Py_END_ALLOW_THREADS
    }
    Py_DECREF(W);
    Py_DECREF(t);
    return (PyObject *)out;
}

/* ------------------------------------------------------------- RoPE */

static PyObject *py_rope(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "n_heads", "d_head", "rotary_dim", "positions", "inv_freq",
                             "adjacent", NULL};
    PyObject *xo, *po, *fo, *nho, *dho, *Ro;
    int64_t nh, dh, R, cols;
    int adjacent = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOO|p", kwlist, &xo, &nho, &dho, &Ro, &po, &fo,
                                     &adjacent))
        return NULL;
    if (gb_arg_i64(nho, "rope", "n_heads", INT64_MIN, &nh) < 0 ||
        gb_arg_i64(dho, "rope", "d_head", INT64_MIN, &dh) < 0 ||
        gb_arg_i64(Ro, "rope", "rotary_dim", INT64_MIN, &R) < 0)
        return NULL;
    if (nh < 0 || dh < 0 || R < 0 || R % 2 != 0 || R > dh) {
        PyErr_Format(PyExc_ValueError,
                     "need n_heads >= 0, d_head >= 0 and rotary_dim even in [0, d_head]; got "
                     "n_heads=%lld d_head=%lld rotary_dim=%lld",
                     (long long)nh, (long long)dh, (long long)R);
        return NULL;
    }
    if (gb_mul(nh, dh, &cols, "rope", "n_heads * d_head") < 0) return NULL;
    PyArrayObject *x = NULL, *p = NULL, *f = NULL, *out = NULL;
    char what[128];
    if (!(x = get_f32(xo, "x", 2, 2))) goto fail;
    npy_intp M = PyArray_DIM(x, 0), C = PyArray_DIM(x, 1);
    if (C < cols) {
        snprintf(what, sizeof what, "(M, >= n_heads*d_head = %lld)", (long long)cols);
        shape_error(x, "x", what);
        goto fail;
    }
    if (!(p = get_array(po, "positions", NPY_INT64, 1, 1))) goto fail;
    if (PyArray_DIM(p, 0) != M) {
        snprintf(what, sizeof what, "(%lld,) (rows of x)", (long long)M);
        shape_error(p, "positions", what);
        goto fail;
    }
    if (!(f = get_f32(fo, "inv_freq", 1, 1))) goto fail;
    if (PyArray_DIM(f, 0) != R / 2) {
        snprintf(what, sizeof what, "(%lld,) (rotary_dim / 2)", (long long)(R / 2));
        shape_error(f, "inv_freq", what);
        goto fail;
    }
    /* rotate a copy: the kernel works in place */
    if (!(out = (PyArrayObject *)PyArray_NewCopy(x, NPY_CORDER))) goto fail;
    Py_BEGIN_ALLOW_THREADS
    gb_rope(F(out), C, M, nh, dh, R, (const int64_t *)PyArray_DATA(p), F(f), adjacent);
    Py_END_ALLOW_THREADS
    Py_DECREF(x);
    Py_DECREF(p);
    Py_DECREF(f);
    return (PyObject *)out;
fail:
    Py_XDECREF(x);
    Py_XDECREF(p);
    Py_XDECREF(f);
    return NULL;
}

/* -------------------------------------------------------- attention */

typedef struct {
    PyArrayObject *q, *k, *v, *mask;
} attn_in;

static void attn_in_clear(attn_in *a) {
    Py_CLEAR(a->q);
    Py_CLEAR(a->k);
    Py_CLEAR(a->v);
    Py_CLEAR(a->mask);
}

/* Check sizes, then q [B*P, >= H*d], k/v [B*K, >= G*d], key_mask [B, K]
 * (any of q, k, v NULL-object skipped). Fills s (ld* from the arrays). */
static int attn_validate(gb_attn_shape *s, attn_in *in, PyObject *qo, PyObject *ko, PyObject *vo,
                         PyObject *mo) {
    char what[160];
    if (s->B < 0 || s->P < 0 || s->K < 0 || s->H < 1 || s->G < 1 || s->d < 1 || s->H % s->G ||
        s->K < s->P) {
        PyErr_Format(PyExc_ValueError,
                     "need B, P >= 0, K >= P, H >= 1, G >= 1, H %% G == 0, d >= 1; got B=%lld "
                     "P=%lld K=%lld H=%lld G=%lld d=%lld",
                     (long long)s->B, (long long)s->P, (long long)s->K, (long long)s->H,
                     (long long)s->G, (long long)s->d);
        return -1;
    }
    /* every product the kernels index with or allocate by, checked */
    int64_t BP, BK, Hd, Gd, BHP, BHPK, zbytes, sbytes;
    if (gb_mul(s->B, s->P, &BP, "attention", "B * P") < 0 ||
        gb_mul(s->B, s->K, &BK, "attention", "B * K") < 0 ||
        gb_mul(s->H, s->d, &Hd, "attention", "H * d") < 0 ||
        gb_mul(s->G, s->d, &Gd, "attention", "G * d") < 0 ||
        gb_mul(BP, Hd, &zbytes, "attention", "B * P * H * d (z)") < 0 ||
        gb_f32_bytes(zbytes, &zbytes, "attention", "the bytes of z") < 0 ||
        gb_mul3(s->B, s->H, s->P, &BHP, "attention", "B * H * P") < 0 ||
        gb_mul(BHP, s->K, &BHPK, "attention", "B * H * P * K (scores)") < 0 ||
        gb_f32_bytes(BHPK, &sbytes, "attention", "the bytes of scores") < 0)
        return -1;
    s->ldq = Hd;
    s->ldk = s->ldv = Gd;
    s->ldz = Hd;
    s->key_mask = NULL;
    struct {
        PyObject *o;
        PyArrayObject **a;
        const char *name;
        int64_t rows, cols;
        int64_t *ld;
    } t[3] = {{qo, &in->q, "q", BP, Hd, &s->ldq},
              {ko, &in->k, "k", BK, Gd, &s->ldk},
              {vo, &in->v, "v", BK, Gd, &s->ldv}};
    for (int i = 0; i < 3; i++) {
        if (!t[i].o) continue;
        if (!(*t[i].a = get_f32(t[i].o, t[i].name, 2, 2))) return -1;
        if (PyArray_DIM(*t[i].a, 0) != t[i].rows || PyArray_DIM(*t[i].a, 1) < t[i].cols) {
            snprintf(what, sizeof what, "(%s = %lld, >= %s = %lld)", i == 0 ? "B*P" : "B*K",
                     (long long)t[i].rows, i == 0 ? "H*d" : "G*d", (long long)t[i].cols);
            shape_error(*t[i].a, t[i].name, what);
            return -1;
        }
        *t[i].ld = PyArray_DIM(*t[i].a, 1);
    }
    if (mo && mo != Py_None) {
        if (!(in->mask = get_array(mo, "key_mask", NPY_INT32, 2, 2))) return -1;
        if (PyArray_DIM(in->mask, 0) != s->B || PyArray_DIM(in->mask, 1) != s->K) {
            snprintf(what, sizeof what, "(B, K) = (%lld, %lld)", (long long)s->B, (long long)s->K);
            shape_error(in->mask, "key_mask", what);
            return -1;
        }
        s->key_mask = (const int32_t *)PyArray_DATA(in->mask);
    }
    return 0;
}

/* B, P, K, H, G, d (and the optional window) from Python objects, named in errors. */
static int attn_sizes(PyObject *const *so, PyObject *wo, gb_attn_shape *s) {
    static const char *const names[6] = {"B", "P", "K", "H", "G", "d"};
    int64_t *dst[6] = {&s->B, &s->P, &s->K, &s->H, &s->G, &s->d};
    for (int i = 0; i < 6; i++)
        if (gb_arg_i64(so[i], "attention", names[i], INT64_MIN, dst[i]) < 0) return -1;
    s->window = 0;
    if (wo && gb_arg_i64(wo, "attention", "window", INT64_MIN, &s->window) < 0) return -1;
    return 0;
}

static PyObject *py_attention(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"q", "k", "v", "B", "P", "K", "H", "G", "d", "inv_scale", "window",
                             "key_mask", "want_scores", "want_pattern", "want_z", NULL};
    PyObject *qo, *ko, *vo, *mo = Py_None, *so[6], *wo = NULL;
    float inv_scale;
    int want_s = 0, want_p = 0, want_z = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOOOOf|OOppp", kwlist, &qo, &ko, &vo, &so[0],
                                     &so[1], &so[2], &so[3], &so[4], &so[5], &inv_scale, &wo, &mo,
                                     &want_s, &want_p, &want_z))
        return NULL;
    gb_attn_shape s = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, inv_scale, 0, NULL, 0};
    if (attn_sizes(so, wo, &s) < 0) return NULL;
    const int64_t B = s.B, P = s.P, K = s.K, H = s.H, d = s.d;
    attn_in in = {NULL, NULL, NULL, NULL};
    PyArrayObject *z = NULL, *sc = NULL, *pa = NULL;
    if (attn_validate(&s, &in, qo, ko, vo, mo) < 0) goto fail;
    npy_intp zd[2] = {B * P, H * d}, sd[4] = {B, H, P, K};
    if (want_z && !(z = new_f32(2, zd))) goto fail;
    if (want_s && !(sc = new_f32(4, sd))) goto fail;
    if (want_p && !(pa = new_f32(4, sd))) goto fail;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = gb_attention(F(z), F(sc), F(pa), F(in.q), F(in.k), F(in.v), &s);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        PyErr_NoMemory();
        goto fail;
    }
    attn_in_clear(&in);
    return Py_BuildValue("(NNN)", or_none(z), or_none(sc), or_none(pa));
fail:
    attn_in_clear(&in);
    Py_XDECREF(z);
    Py_XDECREF(sc);
    Py_XDECREF(pa);
    return NULL;
}

static PyObject *py_attention_split(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"q", "k", "v", "B", "P", "K", "H", "G", "d", "inv_scale", "window",
                             "key_mask", "in_place", NULL};
    PyObject *qo, *ko, *vo, *mo = Py_None, *so[6], *wo = NULL;
    float inv_scale;
    int in_place = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOOOOf|OOp", kwlist, &qo, &ko, &vo, &so[0],
                                     &so[1], &so[2], &so[3], &so[4], &so[5], &inv_scale, &wo, &mo,
                                     &in_place))
        return NULL;
    gb_attn_shape s = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, inv_scale, 0, NULL, 0};
    if (attn_sizes(so, wo, &s) < 0) return NULL;
    const int64_t B = s.B, P = s.P, K = s.K, H = s.H, d = s.d;
    attn_in in = {NULL, NULL, NULL, NULL};
    PyArrayObject *z = NULL, *sc = NULL, *pa = NULL;
    if (attn_validate(&s, &in, qo, ko, vo, mo) < 0) goto fail;
    npy_intp zd[2] = {B * P, H * d}, sd[4] = {B, H, P, K};
    if (!(z = new_f32(2, zd)) || !(sc = new_f32(4, sd))) goto fail;
    if (!in_place && !(pa = new_f32(4, sd))) goto fail;
    float *pp = in_place ? F(sc) : F(pa);
    Py_BEGIN_ALLOW_THREADS
    gb_attn_scores(F(sc), F(in.q), F(in.k), &s);
    gb_attn_softmax(pp, F(sc), &s);
    gb_attn_apply(F(z), pp, F(in.v), &s);
    Py_END_ALLOW_THREADS
    attn_in_clear(&in);
    if (in_place) return Py_BuildValue("(NON)", z, Py_None, sc);
    return Py_BuildValue("(NNN)", z, sc, pa);
fail:
    attn_in_clear(&in);
    Py_XDECREF(z);
    Py_XDECREF(sc);
    Py_XDECREF(pa);
    return NULL;
}

/* Shape [B, H, P, K] of a 4-D scores/pattern array into s. */
static int attn4(PyArrayObject *a, gb_attn_shape *s) {
    s->B = PyArray_DIM(a, 0);
    s->H = PyArray_DIM(a, 1);
    s->P = PyArray_DIM(a, 2);
    s->K = PyArray_DIM(a, 3);
    return 0;
}

static PyObject *py_attn_softmax(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"scores", NULL};
    PyObject *so;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O", kwlist, &so)) return NULL;
    PyArrayObject *sc = get_f32(so, "scores", 4, 4);
    if (!sc) return NULL;
    gb_attn_shape s;
    memset(&s, 0, sizeof s);
    attn4(sc, &s);
    PyArrayObject *pa = new_f32(4, PyArray_DIMS(sc));
    if (pa) {
        Py_BEGIN_ALLOW_THREADS
        gb_attn_softmax(F(pa), F(sc), &s);
        Py_END_ALLOW_THREADS
    }
    Py_DECREF(sc);
    return (PyObject *)pa;
}

static PyObject *py_attn_apply(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"pattern", "v", "G", "d", NULL};
    PyObject *po, *vo, *Go, *dobj;
    int64_t G, d;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO", kwlist, &po, &vo, &Go, &dobj)) return NULL;
    if (gb_arg_i64(Go, "attn_apply", "G", INT64_MIN, &G) < 0 ||
        gb_arg_i64(dobj, "attn_apply", "d", INT64_MIN, &d) < 0)
        return NULL;
    PyArrayObject *pa = get_f32(po, "pattern", 4, 4);
    if (!pa) return NULL;
    gb_attn_shape s;
    memset(&s, 0, sizeof s);
    attn4(pa, &s);
    s.G = G;
    s.d = d;
    attn_in in = {NULL, NULL, NULL, NULL};
    PyArrayObject *z = NULL;
    if (attn_validate(&s, &in, NULL, NULL, vo, NULL) < 0) goto fail;
    npy_intp zd[2] = {s.B * s.P, s.H * s.d};
    if (!(z = new_f32(2, zd))) goto fail;
    Py_BEGIN_ALLOW_THREADS
    gb_attn_apply(F(z), F(pa), F(in.v), &s);
    Py_END_ALLOW_THREADS
    attn_in_clear(&in);
    Py_DECREF(pa);
    return (PyObject *)z;
fail:
    attn_in_clear(&in);
    Py_DECREF(pa);
    return NULL;
}

/* ------------------------------------------------------------- table */

#define KW (METH_VARARGS | METH_KEYWORDS)
#define FN(f) ((PyCFunction)(void (*)(void))(f))

PyMethodDef gb_ops_methods[] = {
    {"norm_scale", FN(py_norm_scale), KW,
     "norm_scale(x, eps, center=True) -> (centred, scale)\n"
     "x float32 [M, D]. center=True: LayerNorm (centred = x - mean), False: RMSNorm\n"
     "(centred = x). scale [M] = sqrt(mean(centred^2) + eps), sums in double."},
    {"layer_norm_scale", FN(py_norm_scale), KW,
     "layer_norm_scale(x, eps, center=True) -> (centred, scale): alias of norm_scale."},
    {"norm_apply", FN(py_norm_apply), KW,
     "norm_apply(centred, scale, w=None, b=None) -> out\n"
     "centred [M, D], scale [M], w/b [D] or None: out = centred / scale * w + b."},
    {"activation", FN(py_activation), KW,
     "activation(x, name) -> out (same shape). name: relu, gelu, gelu_new, gelu_fast,\n"
     "gelu_pytorch_tanh, silu."},
    {"gated_activation", FN(py_gated_activation), KW,
     "gated_activation(gate, up, name) -> act(gate) * up (same shapes)."},
    {"add", FN(py_add), KW, "add(a, b) -> a + b (float32, same shapes)."},
    {"embed", FN(py_embed), KW,
     "embed(W_E, tokens) -> W_E[tokens]. W_E [V, D] float32, tokens [M] int64 in [0, V)."},
    {"rope", FN(py_rope), KW,
     "rope(x, n_heads, d_head, rotary_dim, positions, inv_freq, adjacent=False) -> new array\n"
     "x [M, C >= n_heads*d_head] float32, positions [M] int64, inv_freq [rotary_dim/2]\n"
     "float32. adjacent=False: half-split pairs (HF LLaMA), True: (2i, 2i+1) (GPT-J)."},
    {"attention", FN(py_attention), KW,
     "attention(q, k, v, B, P, K, H, G, d, inv_scale, window=0, key_mask=None,\n"
     "          want_scores=False, want_pattern=False, want_z=True)\n"
     "  -> (z | None, scores | None, pattern | None)\n"
     "Fused gb_attention. q [B*P, >= H*d], k/v [B*K, >= G*d] float32 (row stride = their\n"
     "column count), key_mask [B, K] int32 or None; z [B*P, H*d]; scores/pattern\n"
     "[B, H, P, K]. Requires K >= P, H % G == 0."},
    {"attention_split", FN(py_attention_split), KW,
     "attention_split(q, k, v, B, P, K, H, G, d, inv_scale, window=0, key_mask=None,\n"
     "                in_place=False) -> (z, scores | None, pattern)\n"
     "gb_attn_scores + gb_attn_softmax + gb_attn_apply. in_place=True runs the softmax\n"
     "with pattern aliasing scores (scores then returned as None)."},
    {"attn_softmax", FN(py_attn_softmax), KW,
     "attn_softmax(scores) -> pattern. scores [B, H, P, K] float32 (already masked with\n"
     "-inf; not re-masked). Rows that are all -inf or hold NaN/+inf give 0."},
    {"attn_apply", FN(py_attn_apply), KW,
     "attn_apply(pattern, v, G, d) -> z. pattern [B, H, P, K], v [B*K, >= G*d];\n"
     "z [B*P, H*d] = pattern @ v per head (query head h reads kv head h / (H/G))."},
    {NULL, NULL, 0, NULL},
};
