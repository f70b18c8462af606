"""Numerics options of glassbox's C kernels that trade exactness for speed (all off by default).

**int8 activations** (:func:`set_int8_activations`): matrix products with GGUF ``Q8_0``,
``Q4_0`` and ``Q4_1`` weights quantise the activations to int8, in blocks of 32 along the input
dimension (scale ``amax / 127``, round half to even), and multiply them with the stored weight
integers in integer dot products (AVX-512 VNNI ``vpdpbusd`` where the CPU has it, AVX2
``vpmaddubsw``, or portable C), as llama.cpp does. Generation on a Q4_1 model decodes ~2x
faster (benchmarks/README.md). Every activation then carries a rounding error of up to half its
block's step (0.4% of the block's largest magnitude), so hooks and logits differ from the
default mode, which multiplies the dequantised weights in fp32 and matches TransformerLens and
HF on the same dequantised weights. The result is bitwise the same on every ISA and thread
count, and for a row whether it is computed alone (decoding) or in a batch up to fp32 rounding
(batches of more than 8 rows run the same quantised activations through the fp32 GEMM). Other
weight types (fp32, bf16, f16, Q4_K, Q6_K) are unaffected. A non-finite activation makes the
outputs its block feeds NaN (the NaN guard, ``model.set_check_finite()``, then names the hook). See
docs/performance.md, "Numerics of bf16 and quantised weights".

The setting is process-wide (like :func:`glassbox.set_num_threads`): it applies to every model
and to runs already in progress on other Python threads.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

__all__ = ["set_int8_activations", "get_int8_activations", "int8_activations"]


def set_int8_activations(enabled: bool) -> None:
    """Turn the int8-activations mode on (``True``) or off (``False``, the default) for the
    whole process. Raises ``TypeError`` for anything but a bool (the setting is then
    unchanged)."""
    if not isinstance(enabled, bool):
        raise TypeError(f"set_int8_activations: enabled must be a bool, got "
                        f"{type(enabled).__name__}")
    from glassbox import _C

    _C.set_int8_activations(enabled)


def get_int8_activations() -> bool:
    """Whether the int8-activations mode is on."""
    from glassbox import _C

    return bool(_C.int8_activations())


@contextlib.contextmanager
def int8_activations(enabled: bool = True) -> Iterator[None]:
    """``with glassbox.int8_activations(): ...`` -- the mode for the block, restored after
    (also when the block raises)."""
    before = get_int8_activations()
    set_int8_activations(enabled)
    try:
        yield
    finally:
        set_int8_activations(before)
