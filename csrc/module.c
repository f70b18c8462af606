/* glassbox._C: module definition. Merges the method tables of the binding
 * files, selects the SIMD path once at import, and exposes ISA control. */
#define GLASSBOX_NUMPY_IMPORT
#include "bindings.h"
#include "kernels.h"

static PyObject *py_isa(PyObject *self, PyObject *noargs) {
    return PyUnicode_FromString(gb_isa_name(gb_isa_current()));
}

static int parse_isa(const char *name, gb_isa *out) {
    for (int i = 0; i < GB_ISA_COUNT; i++) {
        if (strcmp(name, gb_isa_name((gb_isa)i)) == 0) {
            *out = (gb_isa)i;
            return 0;
        }
    }
    PyErr_Format(PyExc_ValueError, "unknown ISA '%s' (expected scalar, avx2 or avx512)", name);
    return -1;
}

static PyObject *py_set_isa(PyObject *self, PyObject *arg) {
    const char *name = PyUnicode_AsUTF8(arg);
    gb_isa isa;
    if (!name || parse_isa(name, &isa) < 0) return NULL;
    if (gb_isa_set(isa) < 0) {
        PyErr_Format(PyExc_RuntimeError, "ISA '%s' is not supported by this CPU or build", name);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *py_isa_supported(PyObject *self, PyObject *arg) {
    const char *name = PyUnicode_AsUTF8(arg);
    gb_isa isa;
    if (!name || parse_isa(name, &isa) < 0) return NULL;
    return PyBool_FromLong(gb_isa_supported(isa));
}

static PyObject *py_num_threads(PyObject *self, PyObject *noargs) {
    return PyLong_FromLong(gb_max_threads()); /* 1 without OpenMP, and in a forked child */
}

static PyMethodDef base_methods[] = {
    {"isa", py_isa, METH_NOARGS, "isa() -> str: the SIMD path in use (scalar, avx2, avx512)."},
    {"set_isa", py_set_isa, METH_O, "set_isa(name): force a SIMD path (tests)."},
    {"isa_supported", py_isa_supported, METH_O, "isa_supported(name) -> bool."},
    {"num_threads", py_num_threads, METH_NOARGS,
     "num_threads() -> int: threads the kernels use (OpenMP's count; 1 in a serial build and in a\n"
     "process forked after import, where libgomp cannot start threads)."},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef *all_methods = NULL;

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT,
    .m_name = "glassbox._C",
    .m_doc = "glassbox compute core: C kernels and the forward engine.",
    .m_size = -1,
};

static Py_ssize_t table_len(const PyMethodDef *t) {
    Py_ssize_t n = 0;
    while (t[n].ml_name) n++;
    return n;
}

PyMODINIT_FUNC PyInit__C(void) {
    import_array();
    gb_cpu_init();
    const PyMethodDef *tables[] = {base_methods, gb_gemm_methods, gb_ops_methods};
    Py_ssize_t total = 1;
    for (size_t i = 0; i < sizeof(tables) / sizeof(tables[0]); i++) total += table_len(tables[i]);
    all_methods = PyMem_Calloc((size_t)total, sizeof(PyMethodDef));
    if (!all_methods) return PyErr_NoMemory();
    Py_ssize_t pos = 0;
    for (size_t i = 0; i < sizeof(tables) / sizeof(tables[0]); i++)
        for (Py_ssize_t j = 0; tables[i][j].ml_name; j++) all_methods[pos++] = tables[i][j];
    moduledef.m_methods = all_methods;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    if (gb_engine_bindings_init(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    const char *err = gb_isa_forced_error();
    if (err && PyErr_WarnEx(PyExc_RuntimeWarning, err, 1) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
