"""Weight initialisers with TransformerLens's names and conventions
(``transformer_lens.utilities.initialization_utils``).

They fill a torch tensor in place with torch's global generator (the same draws as
``torch.nn.init`` would make) or a NumPy array in place with ``np.random`` (or ``generator=``).
Fan-in/fan-out follow TransformerLens's weight layouts: ``[d_in, d_out]`` matrices and
``[n_heads, d_model, d_head]`` attention weights.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import numpy as np

from glassbox.arrays import is_torch

__all__ = [
    "calc_fan_in_and_fan_out",
    "calculate_gain",
    "init_xavier_uniform_",
    "init_xavier_normal_",
    "init_kaiming_uniform_",
    "init_kaiming_normal_",
]


def calc_fan_in_and_fan_out(tensor: Any) -> Tuple[int, int]:
    """(fan_in, fan_out) of an array or a shape: [n] -> (1, n); [d_in, d_out] -> (d_in, d_out);
    [n_heads, d_model, d_head] -> (d_model, n_heads * d_head)."""
    shape = tuple(tensor) if isinstance(tensor, (tuple, list)) else tuple(tensor.shape)
    if len(shape) == 0:
        raise ValueError("Fan in and fan out can not be computed for scalars.")
    if len(shape) == 1:
        return 1, int(shape[0])
    if len(shape) == 2:
        return int(shape[0]), int(shape[1])
    if len(shape) == 3:
        return int(shape[1]), int(shape[0] * shape[2])
    raise ValueError(f"Fan in and fan out can not be computed for shape {shape} tensors.")


def calculate_gain(nonlinearity: str, param: Optional[float] = None) -> float:
    """The recommended gain for a nonlinearity (torch's table): 1 for linear-like ones and
    sigmoid, 5/3 for tanh, sqrt(2) for relu, sqrt(2 / (1 + a^2)) for leaky_relu, 3/4 for selu."""
    if nonlinearity in ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                        "conv_transpose3d", "sigmoid"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"Unsupported nonlinearity {nonlinearity}")


def _uniform_(param: Any, bound: float, generator: Any = None) -> Any:
    if is_torch(param):
        import torch

        with torch.no_grad():
            return param.uniform_(-bound, bound, generator=generator)
    rng = generator if generator is not None else np.random
    param[...] = rng.uniform(-bound, bound, size=param.shape)
    return param


def _normal_(param: Any, std: float, generator: Any = None) -> Any:
    if is_torch(param):
        import torch

        with torch.no_grad():
            return param.normal_(0.0, std, generator=generator)
    rng = generator if generator is not None else np.random
    param[...] = rng.normal(0.0, std, size=param.shape)
    return param


def init_xavier_uniform_(param: Any, gain: float = 1.0, generator: Any = None) -> Any:
    """U(-b, b) with b = gain * sqrt(6 / (fan_in + fan_out)), in place."""
    fan_in, fan_out = calc_fan_in_and_fan_out(param)
    return _uniform_(param, gain * math.sqrt(6.0 / (fan_in + fan_out)), generator)


def init_xavier_normal_(param: Any, gain: float = 1.0, generator: Any = None) -> Any:
    """N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out)), in place."""
    fan_in, fan_out = calc_fan_in_and_fan_out(param)
    return _normal_(param, gain * math.sqrt(2.0 / (fan_in + fan_out)), generator)


def init_kaiming_uniform_(param: Any, a: float = 0, nonlinearity: str = "relu", gain: float = 1.0,
                          mode: str = "fan_in", generator: Any = None) -> Any:
    """U(-b, b) with b = gain * calculate_gain(nonlinearity, a) * sqrt(3 / fan), in place
    (fan = fan_in or fan_out per ``mode``)."""
    fan_in, fan_out = calc_fan_in_and_fan_out(param)
    fan = fan_in if mode == "fan_in" else fan_out
    return _uniform_(param, gain * calculate_gain(nonlinearity, a) * math.sqrt(3.0 / fan), generator)


def init_kaiming_normal_(param: Any, a: float = 0, nonlinearity: str = "relu", gain: float = 1.0,
                         mode: str = "fan_in", generator: Any = None) -> Any:
    """N(0, std^2) with std = gain * calculate_gain(nonlinearity, a) / sqrt(fan), in place."""
    fan_in, fan_out = calc_fan_in_and_fan_out(param)
    fan = fan_in if mode == "fan_in" else fan_out
    return _normal_(param, gain * calculate_gain(nonlinearity, a) * math.sqrt(1.0 / fan), generator)
