"""How many threads glassbox's C kernels use.

The kernels are OpenMP parallel. By default they use OpenMP's count: ``OMP_NUM_THREADS`` if it
is set when the extension is first loaded, else one thread per core. :func:`set_num_threads`
changes it for the whole process, at any time, for calls from any Python thread (like
``torch.set_num_threads``). Results never depend on the thread count: threads split rows and
tiles of the output and never reduce across each other, so 1 and 2 threads give bitwise the
same activations (tested).

Small operations stay on one thread whatever the setting (a fork/join costs more than they
do; on a busy machine a descheduled second thread would stall the first at the barrier), and
the GEMMs hand out their tiles dynamically, so a thread the OS has descheduled does not hold
the others up. A process forked after the first forward (``multiprocessing``'s default start
method on Linux) runs its kernels on one thread: libgomp's thread pool does not survive
``fork``.
"""
from __future__ import annotations

import numbers

__all__ = ["set_num_threads", "get_num_threads"]


def set_num_threads(n: int) -> None:
    """Use ``n`` threads (``n >= 1``) in every kernel from now on; ``0`` restores OpenMP's
    default (``OMP_NUM_THREADS``, else the number of cores).

    Raises ``TypeError`` for a non-integer and ``ValueError`` for a negative ``n``; the current
    setting is then unchanged.
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__}")
    if n < 0 or n > 4096:
        raise ValueError(f"set_num_threads: n={n} is out of range (1..4096 threads, or 0 for "
                         "OpenMP's default)")
    from glassbox import _C

    _C.set_num_threads(int(n))


def get_num_threads() -> int:
    """The number of threads the kernels use now (1 in a process forked after the extension
    was loaded)."""
    from glassbox import _C

    return int(_C.num_threads())
