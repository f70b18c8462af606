/* Shared declarations for the glassbox._C bridge files (CPython side only). */
#ifndef GLASSBOX_BINDINGS_H
#define GLASSBOX_BINDINGS_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#ifndef GLASSBOX_NUMPY_IMPORT
#define NO_IMPORT_ARRAY
#endif
#define PY_ARRAY_UNIQUE_SYMBOL glassbox_ARRAY_API
#include <numpy/arrayobject.h>

#include "kernels.h"

/* Kernel entry points for tests, one table per binding file, each ending in
 * a {NULL} sentinel. module.c merges them into the module's method table. */
extern PyMethodDef gb_gemm_methods[];
extern PyMethodDef gb_ops_methods[];

/* Activation name (relu, gelu, gelu_new, gelu_fast, gelu_pytorch_tanh, silu) -> gb_act;
 * -1 with ValueError naming it if unknown (bind_ops.c). */
int gb_parse_act_name(const char *name, gb_act *out);

/* Ctrl-C inside kernels (interrupt.c). Around a call that releases the GIL and runs long
 * kernels: armed = gb_interrupt_begin() before (GIL held), then gb_interrupt_end(armed) after
 * (GIL held again) returns -1 with KeyboardInterrupt (or the run's own exception) set if the
 * kernels were stopped: the call's result must then be discarded. gb_interrupt_pending() is
 * true once a stop was requested (callable without the GIL). */
int gb_interrupt_begin(void);
int gb_interrupt_end(int armed);
int gb_interrupt_pending(void);

/* Engine class (engine_bindings.c). */
extern PyTypeObject GbModelType;
int gb_engine_bindings_init(PyObject *module);

#endif
