/* Test entry points for the GEMM kernels (csrc/kernels/gemm*.c) and the
 * GGUF block decoders (csrc/kernels/quant.c).
 *
 * _C.gemm(A, B, bias=None, *, trans=False, accumulate=None, isa=None,
 *         dtype=None, K=None)
 * wraps gb_gemm / gb_gemm_isa over NumPy arrays without copying them when
 * their strides can be expressed as a gb_matrix (otherwise a contiguous copy
 * is taken; results are the same).  With dtype="Q4_K" etc., B is raw GGUF
 * bytes: uint8 [N, row_bytes] in the file layout (trans=True).
 * _C.dequantize(raw, dtype) and _C.embed_rows(table, dtype, tokens, D) wrap
 * gb_dequantize_row / gb_embed_rows. */
#include "argcheck.h"
#include "bindings.h"
#include "kernels.h"

#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------- dtype names */

static const char *const dtype_names[GB_DTYPE_COUNT] = {
    "F32", "BF16", "F16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K"};
#define DTYPE_LIST "F32, BF16, F16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K"

static int
ascii_ieq(const char *a, const char *b)
{
    for (; *a && *b; a++, b++) {
        char x = *a, y = *b;
        if (x >= 'a' && x <= 'z') {
            x = (char)(x - 'a' + 'A');
        }
        if (y >= 'a' && y <= 'z') {
            y = (char)(y - 'a' + 'A');
        }
        if (x != y) {
            return 0;
        }
    }
    return *a == *b;
}

/* gb_dtype for a name (case-insensitive), or -1 with ValueError. */
static int
parse_dtype_name(const char *fn, const char *name)
{
    for (int i = 0; i < GB_DTYPE_COUNT; i++) {
        if (ascii_ieq(name, dtype_names[i])) {
            return i;
        }
    }
    PyErr_Format(PyExc_ValueError, "%s: unknown dtype '%s' (expected one of " DTYPE_LIST ")",
                 fn, name);
    return -1;
}

/* New reference to `obj` as a 2-D uint8 array of raw rows of `dtype`
 * ([rows, row_bytes], row_bytes a whole number of blocks), C-contiguous.
 * NULL with TypeError / ValueError naming `fn`, `name` and the shapes. */
static PyArrayObject *
raw_rows(PyObject *obj, const char *fn, const char *name, int dtype)
{
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError,
                     "%s: %s must be a numpy.ndarray of uint8 (raw %s bytes), got %s", fn,
                     name, dtype_names[dtype], Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != NPY_UINT8) {
        PyErr_Format(PyExc_TypeError,
                     "%s: %s must be uint8 raw %s bytes [rows, row_bytes], got dtype %S",
                     fn, name, dtype_names[dtype], (PyObject *)PyArray_DESCR(a));
        return NULL;
    }
    if (PyArray_NDIM(a) != 2) {
        PyErr_Format(PyExc_ValueError,
                     "%s: %s must be 2-D [rows, row_bytes] raw %s bytes, got %d-D", fn,
                     name, dtype_names[dtype], PyArray_NDIM(a));
        return NULL;
    }
    const int64_t bb = gb_dtype_block_bytes(dtype), be = gb_dtype_block_elems(dtype);
    const int64_t rb = PyArray_DIM(a, 1);
    if (rb % bb != 0) {
        PyErr_Format(PyExc_ValueError,
                     "%s: %s has shape (%lld, %lld): %lld bytes per row is not a whole "
                     "number of %s blocks (%lld bytes per %lld elements)",
                     fn, name, (long long)PyArray_DIM(a, 0), (long long)rb, (long long)rb,
                     dtype_names[dtype], (long long)bb, (long long)be);
        return NULL;
    }
    return (PyArrayObject *)PyArray_FROM_OTF(obj, NPY_UINT8, NPY_ARRAY_IN_ARRAY);
}

/* Element strides of `a` (ndim <= 3) into out[], or -1 if the array cannot be
 * described by non-negative element strides with a unit innermost stride.
 * Dimensions of extent <= 1 have no meaningful stride: report the extent of
 * the next dimension's row so the kernel's index arithmetic stays in bounds. */
static int
elem_strides(PyArrayObject *a, int64_t *out)
{
    const int nd = PyArray_NDIM(a);
    const npy_intp *shape = PyArray_DIMS(a), *st = PyArray_STRIDES(a);
    const npy_intp isz = PyArray_ITEMSIZE(a);
    int64_t inner_extent = 1;
    const int empty = PyArray_SIZE(a) == 0; /* numpy may give an empty array zero strides */
    for (int i = nd - 1; i >= 0; i--) {
        if (shape[i] <= 1 || empty) {
            out[i] = inner_extent;
        }
        else {
            if (st[i] < 0 || st[i] % isz != 0) {
                return -1;
            }
            out[i] = st[i] / isz;
            if (i == nd - 1 && out[i] != 1) {
                return -1;
            }
        }
        inner_extent *= shape[i] > 0 ? shape[i] : 1;
    }
    return 0;
}

/* New reference to `obj` as an ndarray of exactly `dtype` with usable
 * strides (a C-contiguous copy when needed); NULL with TypeError if obj is
 * not an ndarray of that dtype. */
static PyArrayObject *
as_strided_input(PyObject *obj, const char *name, int *typenum_out,
                 const int *allowed, int nallowed)
{
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "gemm: %s must be a numpy.ndarray, got %s",
                     name, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    int t = PyArray_TYPE(a), ok = 0;
    for (int i = 0; i < nallowed; i++) {
        ok |= PyArray_EquivTypenums(t, allowed[i]) ? 1 : 0;
        if (PyArray_EquivTypenums(t, allowed[i])) {
            t = allowed[i];
        }
    }
    if (!ok || !PyArray_ISNOTSWAPPED(a)) {
        PyErr_Format(PyExc_TypeError, "gemm: %s has unsupported dtype %S", name,
                     (PyObject *)PyArray_DESCR(a));
        return NULL;
    }
    if (typenum_out) {
        *typenum_out = t;
    }
    int64_t st[NPY_MAXDIMS];
    if (PyArray_NDIM(a) <= 3 && PyArray_ISALIGNED(a) && elem_strides(a, st) == 0) {
        Py_INCREF(a);
        return a;
    }
    return (PyArrayObject *)PyArray_NewCopy(a, NPY_CORDER);
}

/* The byte range [*lo, *hi) an array's elements span; 0 if it has none. */
static int
byte_span(PyArrayObject *a, const char **lo, const char **hi)
{
    npy_intp down = 0, up = PyArray_ITEMSIZE(a);
    for (int i = 0; i < PyArray_NDIM(a); i++) {
        if (PyArray_DIM(a, i) == 0) return 0;
        npy_intp span = (PyArray_DIM(a, i) - 1) * PyArray_STRIDE(a, i);
        if (span < 0) down += span; else up += span;
    }
    *lo = (const char *)PyArray_DATA(a) + down;
    *hi = (const char *)PyArray_DATA(a) + up;
    return 1;
}

/* 1 if the byte ranges spanned by two arrays intersect (a conservative test). */
static int
overlaps(PyArrayObject *a, PyArrayObject *b)
{
    const char *alo, *ahi, *blo, *bhi;
    if (!byte_span(a, &alo, &ahi) || !byte_span(b, &blo, &bhi)) return 0;
    return alo < bhi && blo < ahi;
}

static int
parse_isa_name(const char *name, gb_isa *out)
{
    for (int i = 0; i < GB_ISA_COUNT; i++) {
        if (strcmp(name, gb_isa_name((gb_isa)i)) == 0) {
            *out = (gb_isa)i;
            return 0;
        }
    }
    PyErr_Format(PyExc_ValueError,
                 "gemm: unknown isa '%s' (expected scalar, avx2 or avx512)", name);
    return -1;
}

static PyObject *
py_gemm(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"A", "B", "bias", "trans", "accumulate", "isa", "dtype", "K",
                             "act", "gate", "residual", NULL};
    PyObject *A_obj, *B_obj, *bias_obj = Py_None, *acc_obj = Py_None, *K_obj = Py_None;
    PyObject *gate_obj = Py_None, *resid_obj = Py_None;
    int trans = 0;
    const char *isa_name = NULL, *dtype_name = NULL, *act_name = NULL;
    PyArrayObject *A = NULL, *B = NULL, *bias = NULL, *C = NULL, *gate = NULL, *resid = NULL;
    PyObject *result = NULL;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|O$pOzzOzOO", kwlist, &A_obj, &B_obj,
                                     &bias_obj, &trans, &acc_obj, &isa_name, &dtype_name,
                                     &K_obj, &act_name, &gate_obj, &resid_obj)) {
        return NULL;
    }
    gb_epilogue ep = {-1, NULL, 0, NULL, 0};
    if (act_name) {
        gb_act act;
        if (gb_parse_act_name(act_name, &act) < 0) {
            return NULL;
        }
        ep.act = (int)act;
    }
    if (gate_obj != Py_None && !act_name) {
        PyErr_SetString(PyExc_ValueError, "gemm: gate= needs act= (C = act(gate) * (A @ B'))");
        return NULL;
    }
    int raw_dtype = -1; /* dtype= given: B is raw bytes of that gb_dtype */
    if (dtype_name) {
        raw_dtype = parse_dtype_name("gemm", dtype_name);
        if (raw_dtype < 0) {
            return NULL;
        }
        if (!trans) {
            PyErr_Format(PyExc_ValueError,
                         "gemm: dtype='%s' (raw bytes) needs trans=True: B is stored in "
                         "the file layout [N, row_bytes]",
                         dtype_names[raw_dtype]);
            return NULL;
        }
    }
    else if (K_obj != Py_None) {
        PyErr_SetString(PyExc_ValueError, "gemm: K= is only used with dtype= (raw bytes)");
        return NULL;
    }
    gb_isa isa = gb_isa_current();
    if (isa_name) {
        if (parse_isa_name(isa_name, &isa) < 0) {
            return NULL;
        }
        if (!gb_isa_supported(isa)) {
            PyErr_Format(PyExc_ValueError,
                         "gemm: isa '%s' is not supported by this CPU or build",
                         isa_name);
            return NULL;
        }
    }

    const int f32[] = {NPY_FLOAT32};
    const int bt[] = {NPY_FLOAT32, NPY_UINT16, NPY_FLOAT16};
    int btype = NPY_FLOAT32;
    A = as_strided_input(A_obj, "A", NULL, f32, 1);
    if (!A) {
        goto fail;
    }
    if (raw_dtype >= 0) {
        B = raw_rows(B_obj, "gemm", "B", raw_dtype);
    }
    else {
        B = as_strided_input(B_obj, "B", &btype, bt, 3);
    }
    if (!B) {
        goto fail;
    }
    if (PyArray_NDIM(A) != 2) {
        PyErr_Format(PyExc_ValueError, "gemm: A must be 2-D [M, K], got %d-D",
                     PyArray_NDIM(A));
        goto fail;
    }
    const npy_intp *as = PyArray_DIMS(A), *bs = PyArray_DIMS(B);
    const int bnd = PyArray_NDIM(B);
    /* ranks first: the stride arrays below hold 2 (A) and 3 (B) entries */
    if (raw_dtype < 0 && trans && bnd != 2) {
        PyErr_Format(PyExc_ValueError,
                     "gemm: with trans=True B must be 2-D [N, K], got %d-D", bnd);
        goto fail;
    }
    if (raw_dtype < 0 && (bnd < 2 || bnd > 3)) {
        PyErr_Format(PyExc_ValueError,
                     "gemm: B must be 2-D [K, N] or 3-D [H, K, d], got %d-D", bnd);
        goto fail;
    }
    int64_t ast[2], bst[3];
    if (elem_strides(A, ast) < 0 || (raw_dtype < 0 && elem_strides(B, bst) < 0)) {
        /* as_strided_input made them contiguous: cannot happen */
        PyErr_SetString(PyExc_RuntimeError, "gemm: internal error (strides)");
        goto fail;
    }

    gb_matrix mat;
    memset(&mat, 0, sizeof mat);
    mat.data = PyArray_DATA(B);
    mat.dtype = btype == NPY_FLOAT32 ? GB_F32 : btype == NPY_UINT16 ? GB_BF16 : GB_F16;
    mat.trans = trans;
    if (raw_dtype >= 0) {
        /* raw rows [N, row_bytes] (C-contiguous after raw_rows) */
        const int64_t be = gb_dtype_block_elems(raw_dtype);
        const int64_t bb = gb_dtype_block_bytes(raw_dtype);
        const int64_t row_elems = (int64_t)bs[1] / bb * be;
        int64_t Kb = row_elems;
        if (K_obj != Py_None) {
            if (gb_arg_i64(K_obj, "gemm", "K", INT64_MIN, &Kb) < 0) {
                goto fail;
            }
            if (Kb < 0 || Kb > row_elems || Kb % be != 0) {
                PyErr_Format(PyExc_ValueError,
                             "gemm: K=%lld is not a multiple of the %s block size %lld "
                             "in [0, %lld] (B has shape (%lld, %lld): %lld elements per row)",
                             (long long)Kb, dtype_names[raw_dtype], (long long)be,
                             (long long)row_elems, (long long)bs[0], (long long)bs[1],
                             (long long)row_elems);
                goto fail;
            }
        }
        mat.dtype = raw_dtype;
        mat.N = bs[0];
        mat.K = Kb;
        mat.ld = row_elems;
    }
    else if (trans) {
        /* file layout: B is [N, K] (2-D, checked above) */
        mat.N = bs[0];
        mat.K = bs[1];
        mat.ld = bst[0];
    }
    else if (bnd == 2) {
        /* plain [K, N] */
        mat.K = bs[0];
        mat.N = bs[1];
        mat.ld = bst[0];
        mat.group = mat.N > 0 ? mat.N : 1;
        mat.group_stride = 0;
    }
    else if (bnd == 3) {
        /* per-head [H, K, d] viewed as [K, H*d] (with K = 0 numpy allows any H, d) */
        mat.K = bs[1];
        if (gb_mul(bs[0], bs[2], &mat.N, "gemm", "N (H * d of B [H, K, d])") < 0) {
            goto fail;
        }
        mat.ld = bst[1];
        mat.group = bs[2] > 0 ? bs[2] : 1;
        mat.group_stride = bst[0];
    }
    const int64_t M = as[0], K = as[1], N = mat.N;
    int64_t MN;
    if (gb_mul(M, N, &MN, "gemm", "M * N (rows of A times columns of B)") < 0 ||
        gb_f32_bytes(MN, &MN, "gemm", "the bytes of the [M, N] result") < 0) {
        goto fail;
    }
    if (K != mat.K) {
        PyObject *bshape = PyObject_GetAttrString((PyObject *)B, "shape");
        if (bshape && raw_dtype >= 0) {
            PyErr_Format(PyExc_ValueError,
                         "gemm: A has shape (%lld, %lld) but B (raw %s bytes, shape %R) "
                         "holds K = %lld elements per row: inner dimensions differ",
                         (long long)M, (long long)K, dtype_names[raw_dtype], bshape,
                         (long long)mat.K);
        }
        else if (bshape) {
            PyErr_Format(PyExc_ValueError,
                         "gemm: A has shape (%lld, %lld) but B has shape %R%s: "
                         "inner dimensions differ (%lld vs %lld)",
                         (long long)M, (long long)K, bshape,
                         trans ? " (trans=True, [N, K])" : "", (long long)K,
                         (long long)mat.K);
        }
        Py_XDECREF(bshape);
        goto fail;
    }

    if (bias_obj != Py_None) {
        bias = as_strided_input(bias_obj, "bias", NULL, f32, 1);
        if (!bias) {
            goto fail;
        }
        if (PyArray_NDIM(bias) != 1 || PyArray_DIM(bias, 0) != N) {
            PyObject *shp = PyObject_GetAttrString((PyObject *)bias, "shape");
            if (shp) {
                PyErr_Format(PyExc_ValueError,
                             "gemm: bias has shape %R, expected (%lld,)", shp,
                             (long long)N);
                Py_DECREF(shp);
            }
            goto fail;
        }
    }

    int accumulate = 0;
    int64_t cst[2];
    if (acc_obj != Py_None) {
        /* accumulate in place into an existing [M, N] float32 array */
        if (!PyArray_Check(acc_obj) ||
            PyArray_TYPE((PyArrayObject *)acc_obj) != NPY_FLOAT32) {
            PyErr_SetString(PyExc_TypeError,
                            "gemm: accumulate must be a float32 numpy.ndarray");
            goto fail;
        }
        C = (PyArrayObject *)acc_obj;
        Py_INCREF(C);
        if (PyArray_NDIM(C) != 2 || PyArray_DIM(C, 0) != M || PyArray_DIM(C, 1) != N) {
            PyObject *shp = PyObject_GetAttrString((PyObject *)C, "shape");
            if (shp) {
                PyErr_Format(PyExc_ValueError,
                             "gemm: accumulate has shape %R, expected (%lld, %lld)",
                             shp, (long long)M, (long long)N);
                Py_DECREF(shp);
            }
            goto fail;
        }
        if (!PyArray_ISWRITEABLE(C) || !PyArray_ISALIGNED(C) ||
            !PyArray_ISNOTSWAPPED(C) || elem_strides(C, cst) < 0 ||
            (M > 1 && cst[0] < N)) {
            PyErr_SetString(PyExc_ValueError,
                            "gemm: accumulate must be writeable, aligned, native "
                            "float32 with unit column stride and non-overlapping rows");
            goto fail;
        }
        accumulate = 1;
    }
    else {
        npy_intp dims[2] = {(npy_intp)M, (npy_intp)N};
        C = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_FLOAT32);
        if (!C) {
            goto fail;
        }
        elem_strides(C, cst);
    }

    /* epilogue operands: [M, N] float32, unit column stride */
    if (gate_obj != Py_None) {
        gate = as_strided_input(gate_obj, "gate", NULL, f32, 1);
        int64_t gst[2];
        if (!gate) {
            goto fail;
        }
        if (PyArray_NDIM(gate) != 2 || PyArray_DIM(gate, 0) != M || PyArray_DIM(gate, 1) != N ||
            elem_strides(gate, gst) < 0) {
            PyErr_Format(PyExc_ValueError, "gemm: gate must be float32 [%lld, %lld]",
                         (long long)M, (long long)N);
            goto fail;
        }
        ep.gate = (const float *)PyArray_DATA(gate);
        ep.ldg = gst[0];
    }
    if (resid_obj != Py_None) {
        int64_t rst[2];
        if (!PyArray_Check(resid_obj) ||
            PyArray_TYPE((PyArrayObject *)resid_obj) != NPY_FLOAT32) {
            PyErr_SetString(PyExc_TypeError, "gemm: residual must be a float32 numpy.ndarray");
            goto fail;
        }
        resid = (PyArrayObject *)resid_obj;
        Py_INCREF(resid);
        if (PyArray_NDIM(resid) != 2 || PyArray_DIM(resid, 0) != M ||
            PyArray_DIM(resid, 1) != N || !PyArray_ISWRITEABLE(resid) ||
            !PyArray_ISALIGNED(resid) || !PyArray_ISNOTSWAPPED(resid) ||
            elem_strides(resid, rst) < 0 || (M > 1 && rst[0] < N) ||
            overlaps(resid, C) || overlaps(resid, A) || (gate && overlaps(resid, gate))) {
            PyErr_Format(PyExc_ValueError,
                         "gemm: residual must be a writeable float32 [%lld, %lld] array with "
                         "unit column stride, sharing no memory with A, gate or the output",
                         (long long)M, (long long)N);
            goto fail;
        }
        ep.resid = (float *)PyArray_DATA(resid);
        ep.ldr = rst[0];
    }

    const float *a_ptr = (const float *)PyArray_DATA(A);
    const float *bias_ptr = bias ? (const float *)PyArray_DATA(bias) : NULL;
    float *c_ptr = (float *)PyArray_DATA(C);
    int rc;
    /* Ctrl-C stops a long product (not one accumulating into the caller's array: that would
     * leave it half updated) */
    const int armed = accumulate || resid ? 0 : gb_interrupt_begin();
    Py_BEGIN_ALLOW_THREADS
    rc = gb_gemm_isa_ep(isa, c_ptr, cst[0], a_ptr, ast[0], &mat, bias_ptr, M, accumulate,
                        &ep);
    Py_END_ALLOW_THREADS
    if (gb_interrupt_end(armed) < 0) {
        goto fail;
    }
    if (rc != 0) {
        PyErr_SetString(PyExc_MemoryError, "gemm: kernel failed (out of memory)");
        goto fail;
    }
    result = (PyObject *)C;
    C = NULL;

fail:
    Py_XDECREF(A);
    Py_XDECREF(B);
    Py_XDECREF(bias);
    Py_XDECREF(C);
    Py_XDECREF(gate);
    Py_XDECREF(resid);
    return result;
}

/* --------------------------------------------- dequantize / embed_rows */

static PyObject *
py_dequantize(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"raw", "dtype", NULL};
    PyObject *raw_obj;
    const char *dtype_name;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Os", kwlist, &raw_obj, &dtype_name)) {
        return NULL;
    }
    const int dtype = parse_dtype_name("dequantize", dtype_name);
    if (dtype < 0) {
        return NULL;
    }
    PyArrayObject *raw = raw_rows(raw_obj, "dequantize", "raw", dtype);
    if (!raw) {
        return NULL;
    }
    const int64_t N = PyArray_DIM(raw, 0), rb = PyArray_DIM(raw, 1);
    const int64_t K = rb / gb_dtype_block_bytes(dtype) * gb_dtype_block_elems(dtype);
    int64_t NK;
    if (gb_mul(N, K, &NK, "dequantize", "rows * elements per row") < 0 ||
        gb_f32_bytes(NK, &NK, "dequantize", "the bytes of the float32 result") < 0) {
        Py_DECREF(raw);
        return NULL;
    }
    npy_intp dims[2] = {(npy_intp)N, (npy_intp)K};
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    int64_t *rows = out && N > 0 ? PyMem_RawMalloc((size_t)N * sizeof(int64_t)) : NULL;
    if (out && N > 0 && !rows) {
        Py_DECREF(out);
        out = (PyArrayObject *)PyErr_NoMemory();
    }
    if (out && N > 0) {
        /* the gather with tokens 0..N-1 is a parallel row-by-row decode */
        for (int64_t i = 0; i < N; i++) {
            rows[i] = i;
        }
        const void *src = PyArray_DATA(raw);
        float *dst = (float *)PyArray_DATA(out);
        Py_BEGIN_ALLOW_THREADS
        gb_embed_rows(dst, src, dtype, rows, N, K);
        Py_END_ALLOW_THREADS
    }
    PyMem_RawFree(rows);
    Py_DECREF(raw);
    return (PyObject *)out;
}

static PyObject *
py_embed_rows(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"table", "dtype", "tokens", "D", NULL};
    PyObject *table_obj, *tok_obj, *D_obj;
    const char *dtype_name;
    int64_t D;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OsOO", kwlist, &table_obj, &dtype_name,
                                     &tok_obj, &D_obj)) {
        return NULL;
    }
    if (gb_arg_i64(D_obj, "embed_rows", "D", INT64_MIN, &D) < 0) {
        return NULL;
    }
    const int dtype = parse_dtype_name("embed_rows", dtype_name);
    if (dtype < 0) {
        return NULL;
    }
    const int64_t be = gb_dtype_block_elems(dtype);
    if (D <= 0 || D % be != 0) {
        PyErr_Format(PyExc_ValueError,
                     "embed_rows: D=%lld is not a positive multiple of the %s block size %lld",
                     (long long)D, dtype_names[dtype], (long long)be);
        return NULL;
    }
    if (PyArray_Check(tok_obj) && !PyArray_ISINTEGER((PyArrayObject *)tok_obj)) {
        PyErr_Format(PyExc_TypeError, "embed_rows: tokens must be an integer array, got dtype %S",
                     (PyObject *)PyArray_DESCR((PyArrayObject *)tok_obj));
        return NULL;
    }
    PyArrayObject *table = raw_rows(table_obj, "embed_rows", "table", dtype);
    if (!table) {
        return NULL;
    }
    PyArrayObject *tok = NULL, *out = NULL;
    const int64_t V = PyArray_DIM(table, 0), rb = PyArray_DIM(table, 1);
    if (gb_dtype_row_bytes(dtype, D) < 0) {
        PyErr_Format(PyExc_ValueError,
                     "embed_rows: table has shape (%lld, %lld) but a %s row of D=%lld elements "
                     "would take more than 2**63 bytes",
                     (long long)V, (long long)rb, dtype_names[dtype], (long long)D);
        goto done;
    }
    if (gb_dtype_row_bytes(dtype, D) != rb) {
        PyErr_Format(PyExc_ValueError,
                     "embed_rows: table has shape (%lld, %lld) but a %s row of D=%lld "
                     "elements takes %lld bytes",
                     (long long)V, (long long)rb, dtype_names[dtype], (long long)D,
                     (long long)gb_dtype_row_bytes(dtype, D));
        goto done;
    }
    tok = (PyArrayObject *)PyArray_FROM_OTF(tok_obj, NPY_INT64, NPY_ARRAY_IN_ARRAY);
    if (!tok) {
        goto done;
    }
    if (PyArray_NDIM(tok) != 1) {
        PyErr_Format(PyExc_ValueError, "embed_rows: tokens must be 1-D [M], got %d-D",
                     PyArray_NDIM(tok));
        goto done;
    }
    const int64_t M = PyArray_DIM(tok, 0);
    int64_t MD;
    if (gb_mul(M, D, &MD, "embed_rows", "tokens * D") < 0 ||
        gb_f32_bytes(MD, &MD, "embed_rows", "the bytes of the float32 result") < 0) {
        goto done;
    }
    const int64_t *t = (const int64_t *)PyArray_DATA(tok);
    for (int64_t m = 0; m < M; m++) {
        if (t[m] < 0 || t[m] >= V) {
            PyErr_Format(PyExc_ValueError,
                         "embed_rows: tokens[%lld] = %lld is out of range for a table "
                         "with %lld rows",
                         (long long)m, (long long)t[m], (long long)V);
            goto done;
        }
    }
    npy_intp dims[2] = {(npy_intp)M, (npy_intp)D};
    out = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    if (out && M > 0) {
        const void *src = PyArray_DATA(table);
        float *dst = (float *)PyArray_DATA(out);
        Py_BEGIN_ALLOW_THREADS
        gb_embed_rows(dst, src, dtype, t, M, (int64_t)D);
        Py_END_ALLOW_THREADS
    }
done:
    Py_DECREF(table);
    Py_XDECREF(tok);
    return (PyObject *)out;
}

PyMethodDef gb_gemm_methods[] = {
    {"gemm", (PyCFunction)(void (*)(void))py_gemm, METH_VARARGS | METH_KEYWORDS,
     "gemm(A, B, bias=None, *, trans=False, accumulate=None, isa=None, dtype=None, K=None,\n"
     "     act=None, gate=None, residual=None) -> ndarray\n\n"
     "C = (accumulate if given else 0) + A @ B' + bias, computed by gb_gemm.\n"
     "  A: float32 [M, K] (row stride may exceed K).\n"
     "  B: float32, float16, or uint16 holding bfloat16 bits (widened to fp32\n"
     "     exactly inside the kernel). Layouts:\n"
     "     trans=False: [K, N] (x @ W), or [H, K, d] per-head weights (TL W_Q)\n"
     "                  used as [K, H*d], head h in columns h*d .. h*d+d-1;\n"
     "     trans=True:  [N, K] (x @ W.T, HF nn.Linear / file layout).\n"
     "  bias: float32 [N] or None.\n"
     "  accumulate: float32 [M, N] array to add into in place (returned), or\n"
     "     None for a new array.\n"
     "  isa: 'scalar', 'avx2', 'avx512' forces a path (ValueError if this CPU\n"
     "     lacks it); None uses the selected one (_C.isa()).\n"
     "  dtype: None, or a GGUF storage type name (" DTYPE_LIST "):\n"
     "     B is then raw uint8 bytes [N, row_bytes] in the file layout\n"
     "     (trans=True required), decoded inside the GEMM's packing step.\n"
     "  K: with dtype, the number of elements of each row used (a multiple of\n"
     "     the block size); default: all of them (row_bytes / block bytes *\n"
     "     block elements).\n"
     "  act: None or an activation name (relu, gelu, gelu_new, gelu_fast,\n"
     "     gelu_pytorch_tanh, silu): the fused epilogue C = act(C), or with\n"
     "  gate: float32 [M, N], C = act(gate) * C (gated MLP), applied after the\n"
     "     bias inside the GEMM's pass over C.\n"
     "  residual: float32 [M, N] array updated in place, residual += C (after\n"
     "     the activation); C is still returned.\n"
     "  Fused or not (small M, int8 and scalar paths apply them after the\n"
     "  product), the result is bitwise that of the separate passes.\n"
     "Raises TypeError for wrong dtypes, ValueError for shape mismatches,\n"
     "MemoryError if the kernel cannot allocate its packing buffers.\n"
     "The GIL is released while the kernel runs."},
    {"dequantize", (PyCFunction)(void (*)(void))py_dequantize, METH_VARARGS | METH_KEYWORDS,
     "dequantize(raw, dtype) -> float32 [N, K]\n\n"
     "Decode raw GGUF rows (uint8 [N, row_bytes]) of dtype " DTYPE_LIST "\n"
     "with gb_dequantize_row; bit-identical to gguf.quants.dequantize."},
    {"embed_rows", (PyCFunction)(void (*)(void))py_embed_rows, METH_VARARGS | METH_KEYWORDS,
     "embed_rows(table, dtype, tokens, D) -> float32 [M, D]\n\n"
     "Row tokens[m] of a [V, D] table stored as raw uint8 [V, row_bytes] of\n"
     "dtype, decoded straight into the output (gb_embed_rows). tokens: 1-D\n"
     "integers in [0, V)."},
    {NULL, NULL, 0, NULL},
};
