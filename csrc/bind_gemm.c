/* Test entry points for the GEMM kernels (csrc/kernels/gemm*.c).
 *
 * _C.gemm(A, B, bias=None, *, trans=False, accumulate=None, isa=None)
 * wraps gb_gemm / gb_gemm_isa over NumPy arrays without copying them when
 * their strides can be expressed as a gb_matrix (otherwise a contiguous copy
 * is taken; results are the same). */
#include "bindings.h"
#include "kernels.h"

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
    for (int i = nd - 1; i >= 0; i--) {
        if (shape[i] <= 1) {
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
        inner_extent *= shape[i];
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
    static char *kwlist[] = {"A", "B", "bias", "trans", "accumulate", "isa", NULL};
    PyObject *A_obj, *B_obj, *bias_obj = Py_None, *acc_obj = Py_None;
    int trans = 0;
    const char *isa_name = NULL;
    PyArrayObject *A = NULL, *B = NULL, *bias = NULL, *C = NULL;
    PyObject *result = NULL;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|O$pOz", kwlist, &A_obj, &B_obj,
                                     &bias_obj, &trans, &acc_obj, &isa_name)) {
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
    B = as_strided_input(B_obj, "B", &btype, bt, 3);
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
    int64_t ast[2], bst[3];
    elem_strides(A, ast);
    elem_strides(B, bst);

    gb_matrix mat;
    memset(&mat, 0, sizeof mat);
    mat.data = PyArray_DATA(B);
    mat.dtype = btype == NPY_FLOAT32 ? GB_F32 : btype == NPY_UINT16 ? GB_BF16 : GB_F16;
    mat.trans = trans;
    if (trans) {
        /* file layout: B is [N, K] */
        if (bnd != 2) {
            PyErr_Format(PyExc_ValueError,
                         "gemm: with trans=True B must be 2-D [N, K], got %d-D", bnd);
            goto fail;
        }
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
        /* per-head [H, K, d] viewed as [K, H*d] */
        mat.K = bs[1];
        mat.N = (int64_t)bs[0] * bs[2];
        mat.ld = bst[1];
        mat.group = bs[2] > 0 ? bs[2] : 1;
        mat.group_stride = bst[0];
    }
    else {
        PyErr_Format(PyExc_ValueError,
                     "gemm: B must be 2-D [K, N] or 3-D [H, K, d], got %d-D", bnd);
        goto fail;
    }
    const int64_t M = as[0], K = as[1], N = mat.N;
    if (K != mat.K) {
        PyObject *bshape = PyObject_GetAttrString((PyObject *)B, "shape");
        if (bshape) {
            PyErr_Format(PyExc_ValueError,
                         "gemm: A has shape (%lld, %lld) but B has shape %R%s: "
                         "inner dimensions differ (%lld vs %lld)",
                         (long long)M, (long long)K, bshape,
                         trans ? " (trans=True, [N, K])" : "", (long long)K,
                         (long long)mat.K);
            Py_DECREF(bshape);
        }
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

    const float *a_ptr = (const float *)PyArray_DATA(A);
    const float *bias_ptr = bias ? (const float *)PyArray_DATA(bias) : NULL;
    float *c_ptr = (float *)PyArray_DATA(C);
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = isa_name ? gb_gemm_isa(isa, c_ptr, cst[0], a_ptr, ast[0], &mat, bias_ptr, M,
                                accumulate)
                  : gb_gemm(c_ptr, cst[0], a_ptr, ast[0], &mat, bias_ptr, M, accumulate);
    Py_END_ALLOW_THREADS
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
    return result;
}

PyMethodDef gb_gemm_methods[] = {
    {"gemm", (PyCFunction)(void (*)(void))py_gemm, METH_VARARGS | METH_KEYWORDS,
     "gemm(A, B, bias=None, *, trans=False, accumulate=None, isa=None) -> ndarray\n\n"
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
     "Raises TypeError for wrong dtypes, ValueError for shape mismatches,\n"
     "MemoryError if the kernel cannot allocate its packing buffers.\n"
     "The GIL is released while the kernel runs."},
    {NULL, NULL, 0, NULL},
};
