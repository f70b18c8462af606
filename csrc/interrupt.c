/* Ctrl-C inside long kernels.
 *
 * While the engine computes, the GIL is released and Python only sees a SIGINT when the
 * engine next polls (between layers): on a wide layer that took seconds.  For the duration of
 * an interruptible call, a C SIGINT handler chained in front of CPython's raises the kernels'
 * stop flag (kernels/cpu.c: gb_stop_request, async-signal-safe) and then runs CPython's own
 * handler, which schedules KeyboardInterrupt as usual.  GEMM and attention poll the flag per
 * block of work and skip the rest, the engine reaches its next poll within milliseconds, and
 * the run ends with KeyboardInterrupt; its partial result is never returned.
 *
 * The handler is installed only when a SIGINT would raise KeyboardInterrupt in the calling
 * thread: the main thread, with Python's SIGINT handler being signal.default_int_handler.
 * Elsewhere (other threads, a custom or ignored handler) nothing changes: the run is never cut
 * short, so no partial result can be mistaken for a complete one.
 *
 * The model stays usable: the flag is cleared when the outermost interruptible call ends, and
 * the previous handler restored (unless Python installed another one meanwhile). */
#include "bindings.h"
#include "kernels.h"

#if defined(__unix__) || defined(__APPLE__)
#define GB_HAVE_SIGACTION 1
#include <errno.h>
#include <signal.h>
#include <string.h>
#endif

#ifdef GB_HAVE_SIGACTION
static struct sigaction previous; /* the handler ours chains to (CPython's) */
static int depth = 0;             /* nesting of armed calls; protected by the GIL */
static unsigned long armed_thread; /* the thread that armed (nested calls must be on it) */

static void on_sigint(int sig, siginfo_t *info, void *uctx) {
    const int saved = errno;
    gb_stop_request();
    if (previous.sa_flags & SA_SIGINFO) {
        if (previous.sa_sigaction) previous.sa_sigaction(sig, info, uctx);
    } else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN &&
               previous.sa_handler != NULL) {
        previous.sa_handler(sig);
    }
    errno = saved;
}

static int installed_is_ours(void) {
    struct sigaction cur;
    if (sigaction(SIGINT, NULL, &cur) != 0) return 0;
    return (cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_sigint;
}

/* 1 if a SIGINT now would raise KeyboardInterrupt in this thread; 0 otherwise (or -1 with an
 * exception if the signal module misbehaves).  The functions it needs are looked up once
 * (_signal.getsignal: no enum wrapping, ~0.2 us a call). */
static int sigint_raises_here(void) {
    static PyObject *main_thread, *getsignal, *default_int_handler;
    if (!main_thread) {
        PyObject *threading = PyImport_ImportModule("threading");
        PyObject *sig = PyImport_ImportModule("_signal");
        if (!sig) {
            PyErr_Clear();
            sig = PyImport_ImportModule("signal");
        }
        if (threading && sig) {
            main_thread = PyObject_GetAttrString(threading, "main_thread");
            getsignal = PyObject_GetAttrString(sig, "getsignal");
            default_int_handler = PyObject_GetAttrString(sig, "default_int_handler");
        }
        Py_XDECREF(threading);
        Py_XDECREF(sig);
        if (!main_thread || !getsignal || !default_int_handler) {
            Py_CLEAR(main_thread);
            Py_CLEAR(getsignal);
            Py_CLEAR(default_int_handler);
            return -1;
        }
    }
    PyObject *main = PyObject_CallNoArgs(main_thread);
    if (!main) return -1;
    PyObject *ident = PyObject_GetAttrString(main, "ident");
    Py_DECREF(main);
    if (!ident) return -1;
    unsigned long main_id = PyLong_AsUnsignedLong(ident);
    Py_DECREF(ident);
    if (main_id == (unsigned long)-1 && PyErr_Occurred()) return -1;
    if (main_id != PyThread_get_thread_ident()) return 0;
    PyObject *handler = PyObject_CallFunction(getsignal, "i", SIGINT);
    if (!handler) return -1;
    const int here = handler == default_int_handler;
    Py_DECREF(handler);
    return here;
}
#endif

int gb_interrupt_begin(void) {
#ifdef GB_HAVE_SIGACTION
    if (depth > 0) { /* nested (a hook running another forward) on the armed thread */
        if (PyThread_get_thread_ident() != armed_thread) return 0;
        depth++;
        return 1;
    }
    int here = sigint_raises_here();
    if (here < 0) {
        PyErr_Clear(); /* never fail a run over this: it just stays uninterruptible */
        return 0;
    }
    if (!here) return 0;
    struct sigaction ours;
    memset(&ours, 0, sizeof ours);
    if (sigaction(SIGINT, NULL, &previous) != 0) return 0;
    ours.sa_sigaction = on_sigint;
    ours.sa_flags = (previous.sa_flags | SA_SIGINFO) & ~(SA_RESETHAND | SA_NODEFER);
    ours.sa_mask = previous.sa_mask;
    gb_stop_clear();
    if (sigaction(SIGINT, &ours, NULL) != 0) return 0;
    depth = 1;
    armed_thread = PyThread_get_thread_ident();
    gb_stop_arm(1);
    return 1;
#else
    return 0;
#endif
}

int gb_interrupt_end(int armed) {
#ifdef GB_HAVE_SIGACTION
    if (!armed) return 0;
    const int stopped = gb_stop_pending();
    if (--depth == 0) {
        if (installed_is_ours()) sigaction(SIGINT, &previous, NULL);
        gb_stop_arm(0);
        gb_stop_clear();
    }
    if (!stopped) return 0;
    if (PyErr_Occurred()) return -1; /* the run's own error (a hook's KeyboardInterrupt...) */
    if (PyErr_CheckSignals() < 0) return -1;
    /* the Python handler already ran (e.g. a hook caught its KeyboardInterrupt) but the
     * kernels had stopped: the result is incomplete, so the run must not return it */
    PyErr_SetString(PyExc_KeyboardInterrupt,
                    "interrupted (SIGINT) during the forward pass; its result was discarded");
    return -1;
#else
    (void)armed;
    return 0;
#endif
}

int gb_interrupt_pending(void) { return gb_stop_pending(); }
