/* Test entry points for the ops kernels (filled in by the kernel work). */
#include "bindings.h"
#include "kernels.h"

PyMethodDef gb_ops_methods[] = {
    {NULL, NULL, 0, NULL},
};
