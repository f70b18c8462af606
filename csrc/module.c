/* glassbox._C: module definition. Merges the method tables of the binding
 * files, selects the SIMD path once at import, and exposes ISA control. */
#define GLASSBOX_NUMPY_IMPORT
#include "bindings.h"
#include "engine.h"
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

static PyObject *py_set_num_threads(PyObject *self, PyObject *arg) {
    if (!PyLong_Check(arg) || PyBool_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "set_num_threads: n must be an int, got %s",
                     Py_TYPE(arg)->tp_name);
        return NULL;
    }
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 0 || n > 4096) {
        PyErr_Format(PyExc_ValueError,
                     "set_num_threads: n=%ld is out of range (1..4096 threads, or 0 for OpenMP's "
                     "default)", n);
        return NULL;
    }
    gb_set_max_threads((int)n);
    Py_RETURN_NONE;
}

static PyObject *py_set_int8_activations(PyObject *self, PyObject *arg) {
    if (!PyBool_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "set_int8_activations: enabled must be a bool, got %s",
                     Py_TYPE(arg)->tp_name);
        return NULL;
    }
    gb_set_int8_activations(arg == Py_True);
    Py_RETURN_NONE;
}

static PyObject *py_set_fused_epilogues(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"residual", "activation", NULL};
    PyObject *r = NULL, *a = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|$OO", kwlist, &r, &a)) return NULL;
    int cur_r, cur_a;
    gb_fused_epilogues(&cur_r, &cur_a);
    if ((r && !PyBool_Check(r)) || (a && !PyBool_Check(a))) {
        PyErr_Format(PyExc_TypeError, "set_fused_epilogues: %s must be a bool, got %s",
                     r && !PyBool_Check(r) ? "residual" : "activation",
                     Py_TYPE(r && !PyBool_Check(r) ? r : a)->tp_name);
        return NULL;
    }
    gb_set_fused_epilogues(r ? r == Py_True : cur_r, a ? a == Py_True : cur_a);
    Py_RETURN_NONE;
}

static PyObject *py_fused_epilogues(PyObject *self, PyObject *noargs) {
    int r, a;
    gb_fused_epilogues(&r, &a);
    return Py_BuildValue("{s:O,s:O}", "residual", r ? Py_True : Py_False, "activation",
                         a ? Py_True : Py_False);
}

static PyObject *py_int8_activations(PyObject *self, PyObject *noargs) {
    return PyBool_FromLong(gb_int8_activations());
}

static PyObject *py_int8_kernel(PyObject *self, PyObject *args) {
    const char *name = NULL;
    if (!PyArg_ParseTuple(args, "|z:int8_kernel", &name)) return NULL;
    gb_isa isa = gb_isa_current();
    if (name && parse_isa(name, &isa) < 0) return NULL;
    return PyUnicode_FromString(gb_int8_kernel_name(isa));
}

static PyObject *py_probe_fma(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"iters", "threads", "isa", NULL};
    long long iters = 20000000;
    int threads = 0;
    const char *isa_name = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|Liz:probe_fma", kwlist, &iters, &threads,
                                     &isa_name))
        return NULL;
    gb_isa isa = gb_isa_current();
    if (isa_name && parse_isa(isa_name, &isa) < 0) return NULL;
    if (iters < 1 || threads < 0) {
        PyErr_Format(PyExc_ValueError, "probe_fma: iters=%lld and threads=%d must be positive",
                     iters, threads);
        return NULL;
    }
    if (!gb_isa_supported(isa)) {
        PyErr_Format(PyExc_RuntimeError, "probe_fma: ISA '%s' is not supported here",
                     gb_isa_name(isa));
        return NULL;
    }
    if (threads == 0) threads = gb_max_threads();
    double gflops = 0.0, check = 0.0;
    Py_BEGIN_ALLOW_THREADS
    gb_probe_fma(isa, (int64_t)iters, threads, &gflops, &check);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(dd)", gflops, check);
}

static PyObject *py_probe_read(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"buffer", "threads", NULL};
    PyObject *obj;
    int threads = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|i:probe_read", kwlist, &obj, &threads))
        return NULL;
    if (!PyArray_Check(obj) || PyArray_TYPE((PyArrayObject *)obj) != NPY_FLOAT32 ||
        !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)obj)) {
        PyErr_SetString(PyExc_TypeError, "probe_read: buffer must be a C-contiguous float32 array");
        return NULL;
    }
    if (threads < 0) {
        PyErr_Format(PyExc_ValueError, "probe_read: threads=%d must be >= 0", threads);
        return NULL;
    }
    if (threads == 0) threads = gb_max_threads();
    PyArrayObject *a = (PyArrayObject *)obj;
    const float *p = (const float *)PyArray_DATA(a);
    const int64_t n = (int64_t)PyArray_SIZE(a);
    double gbps = 0.0, check = 0.0;
    Py_BEGIN_ALLOW_THREADS
    gb_probe_read(p, n, threads, &gbps, &check);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(dd)", gbps, check);
}

/* The busy-machine back-off's state machine, for tests: feed it regions, read its verdict. */
static PyObject *py_note_region(PyObject *self, PyObject *args) {
    long long work_ns = 0, wait_ns = 0;
    if (!PyArg_ParseTuple(args, "LL:_note_region", &work_ns, &wait_ns)) return NULL;
    if (work_ns < 0 || wait_ns < 0) {
        PyErr_Format(PyExc_ValueError, "_note_region: work_ns=%lld and wait_ns=%lld must be >= 0",
                     work_ns, wait_ns);
        return NULL;
    }
    gb_note_barrier_wait((int64_t)work_ns, (int64_t)wait_ns);
    Py_RETURN_NONE;
}

static PyObject *py_machine_busy(PyObject *self, PyObject *noargs) {
    return PyBool_FromLong(gb_machine_busy());
}

static PyObject *py_reset_busy(PyObject *self, PyObject *noargs) {
    gb_reset_busy();
    Py_RETURN_NONE;
}

static PyMethodDef base_methods[] = {
    {"_note_region", py_note_region, METH_VARARGS,
     "_note_region(work_ns, wait_ns): report one parallel region to the busy-machine back-off\n"
     "(as the blocked GEMM does: the calling thread's work, then its wait for the others)."},
    {"_machine_busy", py_machine_busy, METH_NOARGS,
     "_machine_busy() -> bool: whether the kernels currently run on one thread (back-off)."},
    {"_reset_busy", py_reset_busy, METH_NOARGS, "_reset_busy(): clear the back-off state."},
    {"set_num_threads", py_set_num_threads, METH_O,
     "set_num_threads(n): threads every kernel may use from now on (n >= 1), process-wide;\n"
     "0 restores OpenMP's count (OMP_NUM_THREADS, else the cores)."},
    {"set_int8_activations", py_set_int8_activations, METH_O,
     "set_int8_activations(enabled): GEMMs with Q8_0/Q4_0/Q4_1 weights quantise activations\n"
     "to int8 blocks and use integer dot products (process-wide; off by default)."},
    {"set_fused_epilogues", (PyCFunction)(void (*)(void))py_set_fused_epilogues,
     METH_VARARGS | METH_KEYWORDS,
     "set_fused_epilogues(*, residual=None, activation=None): whether the forward fuses the\n"
     "residual adds into W_O's / W_out's GEMMs (default on) and bias + activation or\n"
     "act(gate) * up into W_in's (default off), where no hook needs the intermediate;\n"
     "an argument left out keeps its setting. Process-wide. Results are bitwise the same\n"
     "either way (docs/performance.md says what each measured)."},
    {"fused_epilogues", py_fused_epilogues, METH_NOARGS,
     "fused_epilogues() -> {'residual': bool, 'activation': bool}: the current settings."},
    {"int8_activations", py_int8_activations, METH_NOARGS,
     "int8_activations() -> bool: whether the int8-activations mode is on."},
    {"int8_kernel", py_int8_kernel, METH_VARARGS,
     "int8_kernel(isa=None) -> str: the int8 dot kernel the ISA (default: the one in use) runs."},
    {"probe_fma", (PyCFunction)(void (*)(void))py_probe_fma, METH_VARARGS | METH_KEYWORDS,
     "probe_fma(iters=2e7, threads=0, isa=None) -> (gflops, checksum): fp32 FMA throughput of\n"
     "the ISA (default: the one in use) on `threads` threads (0: the kernels' count)."},
    {"probe_read", (PyCFunction)(void (*)(void))py_probe_read, METH_VARARGS | METH_KEYWORDS,
     "probe_read(buffer, threads=0) -> (GB/s, checksum): read bandwidth summing a float32\n"
     "array (make it larger than the last-level cache to measure DRAM)."},
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
