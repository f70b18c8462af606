"""Random initialisation of a fresh model, as ``HookedTransformer(cfg)`` does when ``cfg.init_weights``.

Same parameters, same distributions as TransformerLens (not the same random stream: NumPy's
generator is used). Every parameter whose name contains ``W_`` (W_E, W_pos, W_Q, W_K, W_V,
W_O, W_in, W_gate, W_out, W_U, GQA's ``_W_K``/``_W_V``) is drawn according to ``cfg.init_mode``;
biases are 0, norm weights 1 and norm biases 0.

``init_mode`` (``initializer_range`` defaults, as ``HookedTransformerConfig.__post_init__``:
``0.8 / sqrt(d_model)`` for "gpt2", else 1.0 which then acts as a gain):

* ``"gpt2"``: normal(0, initializer_range)
* ``"xavier_uniform"`` / ``"xavier_normal"``: bound/std ``gain * sqrt(6 | 2 / (fan_in + fan_out))``
* ``"kaiming_uniform"`` / ``"kaiming_normal"``: relu gain sqrt(2), fan_in mode
* ``"muP"``: normal with std 1 for names containing "embed" (TL's test matches ``unembed`` and
  ``pos_embed`` too), ``1/fan_in`` for "unembed" otherwise, ``1/sqrt(fan_in)`` elsewhere

Fans follow TL's convention (``utils.calc_fan_in_and_fan_out``): ``[in, out]`` matrices give
(in, out), ``[heads, in, out]`` attention weights give (in, heads * out).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import numpy as np

from .shapes import cfg_get, param_shapes

__all__ = ["init_weights", "calc_fan_in_and_fan_out", "INIT_MODES"]

INIT_MODES = ("gpt2", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "muP")


def calc_fan_in_and_fan_out(shape: Tuple[int, ...]) -> Tuple[int, int]:
    """TL's fan convention for a parameter shape."""
    if len(shape) == 0:
        raise ValueError("Fan in and fan out can not be computed for scalars.")
    if len(shape) == 1:
        return 1, shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    if len(shape) == 3:
        return shape[1], shape[0] * shape[2]
    raise ValueError(f"Fan in and fan out can not be computed for shape {shape} tensors.")


def _initializer_range(cfg: Any, mode: str) -> float:
    r = cfg_get(cfg, "initializer_range", -1.0)
    if r is None or r < 0:
        return 0.8 / math.sqrt(int(cfg_get(cfg, "d_model"))) if mode == "gpt2" else 1.0
    return float(r)


def init_weights(cfg: Any, seed: Optional[int] = None) -> Dict[str, np.ndarray]:
    """A freshly initialised state dict (float32, TL names) for ``cfg``.

    Args:
        cfg: dict or config object with ``HookedTransformerConfig`` fields.
        seed: NumPy seed; defaults to ``cfg.seed`` (None -> nondeterministic).
    """
    mode = cfg_get(cfg, "init_mode", "gpt2") or "gpt2"
    if mode not in INIT_MODES:
        raise ValueError(f"init_mode={mode!r} is not supported (supported: {', '.join(INIT_MODES)})")
    if seed is None:
        seed = cfg_get(cfg, "seed", None)
    rng = np.random.default_rng(seed)
    gain = _initializer_range(cfg, mode)
    relu_gain = math.sqrt(2.0)

    def normal(shape: Tuple[int, ...], std: float) -> np.ndarray:
        x = rng.standard_normal(shape, dtype=np.float32)
        x *= np.float32(std)
        return x

    def uniform(shape: Tuple[int, ...], bound: float) -> np.ndarray:
        x = rng.random(shape, dtype=np.float32)
        x *= np.float32(2 * bound)
        x -= np.float32(bound)
        return x

    sd: Dict[str, np.ndarray] = {}
    for name, shape in param_shapes(cfg).items():
        leaf = name.rsplit(".", 1)[-1]
        if "W_" not in name:
            fill = 1.0 if leaf == "w" else 0.0
            sd[name] = np.full(shape, fill, dtype=np.float32)
            continue
        fan_in, fan_out = calc_fan_in_and_fan_out(shape)
        if mode == "gpt2":
            x = normal(shape, gain)
        elif mode == "xavier_uniform":
            x = uniform(shape, gain * math.sqrt(6.0 / (fan_in + fan_out)))
        elif mode == "xavier_normal":
            x = normal(shape, gain * math.sqrt(2.0 / (fan_in + fan_out)))
        elif mode == "kaiming_uniform":
            x = uniform(shape, gain * relu_gain * math.sqrt(3.0 / fan_in))
        elif mode == "kaiming_normal":
            x = normal(shape, gain * relu_gain / math.sqrt(fan_in))
        else:  # muP, normal variant as TL's init_weights uses
            if "embed" in name:
                scale = 1.0
            elif "unembed" in name:  # unreachable, as in TL ("unembed" contains "embed")
                scale = 1.0 / fan_in
            else:
                scale = 1.0 / math.sqrt(fan_in)
            x = normal(shape, scale)
        sd[name] = x
    return sd
