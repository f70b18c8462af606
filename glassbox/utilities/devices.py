"""Device helpers with TransformerLens's names (``transformer_lens.utilities.devices``).

glassbox computes on the CPU only, so these answer for the CPU: :func:`get_device` is always
``"cpu"`` (even on a machine with a GPU — the model could not use it), and asking for another
device (``model.to("cuda")``, ``from_pretrained(device="cuda")``) is refused by
:func:`check_device` instead of being silently ignored.
"""
from __future__ import annotations

import os
import resource
import sys
import warnings
from typing import Any

__all__ = ["get_device", "warn_if_mps", "print_gpu_mem", "check_device", "device_type"]


def get_device() -> str:
    """The device glassbox computes on: ``"cpu"`` (TransformerLens: the best torch device)."""
    return "cpu"


def device_type(device: Any) -> str:
    """``"cpu"`` / ``"cuda"`` / ``"mps"`` … for a device given as a string, ``torch.device`` or
    int (CUDA ordinal); ``None`` counts as the CPU."""
    if device is None:
        return "cpu"
    if isinstance(device, bool):
        raise TypeError(f"device must be a string, torch.device or int, got {device!r}")
    if isinstance(device, int):
        return "cuda"
    typ = getattr(device, "type", None)  # torch.device
    if typ is not None:
        return str(typ)
    if isinstance(device, str):
        return device.split(":", 1)[0].strip().lower()
    raise TypeError(f"device must be a string, torch.device or int, got {type(device).__name__}")


def check_device(device: Any, what: str = "device") -> None:
    """Accept the CPU; raise for any other device (glassbox has no GPU path).

    A ``RuntimeError`` names the device and says why: with CUDA present torch could move
    tensors there, but the C engine would still compute on the CPU, so silently "moving" the
    model would be a lie.
    """
    kind = device_type(device)
    if kind == "cpu":
        return
    torch = sys.modules.get("torch")
    available = False
    if torch is not None and kind == "cuda":
        try:
            available = bool(torch.cuda.is_available())
        except Exception:  # pragma: no cover
            available = False
    if kind == "cuda" and not available:
        why = "CUDA is not available on this machine, and glassbox computes on the CPU only"
    else:
        why = "glassbox's engine computes on the CPU only"
    raise RuntimeError(f"cannot use {what}={device!r}: {why}; use device='cpu' (or leave it unset)")


def warn_if_mps(device: Any) -> None:
    """Warn when ``device`` is Apple's MPS (TransformerLens warns about MPS correctness; glassbox
    cannot use it at all)."""
    try:
        kind = device_type(device)
    except TypeError:
        return
    if kind == "mps" and os.environ.get("TRANSFORMERLENS_ALLOW_MPS", "") != "1":
        warnings.warn("MPS device requested: glassbox computes on the CPU only", UserWarning, stacklevel=2)


def print_gpu_mem(step_name: str = "") -> None:
    """Print memory in use, TransformerLens-style. glassbox has no GPU memory, so this reports
    the process's peak resident memory on the CPU."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    gib = peak / (2**30 if sys.platform == "darwin" else 2**20)
    print(f"{step_name} ~ {gib:.2f} GiB peak resident memory (CPU; glassbox uses no GPU).")
