/* Argument checking shared by the glassbox._C entry points (bind_*.c, engine_bindings.c).
 *
 * Sizes that come from Python are converted with gb_arg_i64 (a ValueError naming the argument
 * for anything that is not an integer in range, instead of PyArg's anonymous OverflowError),
 * and every product of sizes that the kernels will use as an index or an allocation size is
 * formed with gb_mul (an overflow is a ValueError naming the operands, never a wrapped
 * product that passes a bounds check and then indexes past an array). */
#ifndef GLASSBOX_ARGCHECK_H
#define GLASSBOX_ARGCHECK_H

#include "bindings.h"

#include <stdint.h>

/* *out = a * b. 0, or -1 with ValueError "<fn>: <what> = a * b overflows int64" (also when a
 * product of non-negative sizes would be negative). */
static inline int gb_mul(int64_t a, int64_t b, int64_t *out, const char *fn, const char *what) {
    int64_t r;
    if (__builtin_mul_overflow(a, b, &r) || (a >= 0 && b >= 0 && r < 0)) {
        PyErr_Format(PyExc_ValueError, "%s: %s = %lld * %lld overflows int64", fn, what,
                     (long long)a, (long long)b);
        return -1;
    }
    *out = r;
    return 0;
}

/* *out = a * b * c (see gb_mul). */
static inline int gb_mul3(int64_t a, int64_t b, int64_t c, int64_t *out, const char *fn,
                          const char *what) {
    int64_t ab;
    if (__builtin_mul_overflow(a, b, &ab) || __builtin_mul_overflow(ab, c, out) || *out < 0) {
        PyErr_Format(PyExc_ValueError, "%s: %s = %lld * %lld * %lld overflows int64", fn, what,
                     (long long)a, (long long)b, (long long)c);
        return -1;
    }
    return 0;
}

/* The number of bytes of n float32 values, checked (see gb_mul). */
static inline int gb_f32_bytes(int64_t n, int64_t *out, const char *fn, const char *what) {
    return gb_mul(n, (int64_t)sizeof(float), out, fn, what);
}

/* `obj` (a Python int or anything with __index__) as an int64 >= min_value into *out.
 * 0, or -1 with TypeError (not an integer) / ValueError (out of range) naming fn and name. */
static inline int gb_arg_i64(PyObject *obj, const char *fn, const char *name, int64_t min_value,
                             int64_t *out) {
    if (PyBool_Check(obj) || (!PyLong_Check(obj) && !PyIndex_Check(obj))) {
        PyErr_Format(PyExc_TypeError, "%s: %s must be an integer, got %s", fn, name,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    PyObject *i = PyNumber_Index(obj);
    if (!i) return -1;
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(i, &overflow);
    if (v == -1 && !overflow && PyErr_Occurred()) {
        Py_DECREF(i);
        return -1;
    }
    if (overflow || v < min_value) {
        if (min_value == INT64_MIN || overflow)
            PyErr_Format(PyExc_ValueError, "%s: %s = %R does not fit in int64", fn, name, i);
        else
            PyErr_Format(PyExc_ValueError, "%s: %s = %R must be >= %lld", fn, name, i,
                         (long long)min_value);
        Py_DECREF(i);
        return -1;
    }
    Py_DECREF(i);
    *out = (int64_t)v;
    return 0;
}

#endif
