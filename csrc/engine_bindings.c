/* Placeholder until the engine lands. */
#include "bindings.h"
int gb_engine_bindings_init(PyObject *module) { return 0; }
