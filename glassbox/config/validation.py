"""Checks of configuration values, shared by ``HookedTransformerConfig`` and the loaders.

Two layers, each raising ``ValueError`` that names where the value came from, the field and the
bad value (instead of a ``TypeError`` from ``int(None)``, a ``ZeroDivisionError`` from
``d_model % n_heads`` or a multi-gigabyte allocation from an absurd ``rotary_dim``):

* :class:`FieldReader` reads typed fields from a raw source -- an HF ``config.json`` dict or GGUF
  metadata -- for the architecture adapters (:mod:`glassbox.loading.arch_gpt2`,
  :mod:`glassbox.loading.arch_llama`, :mod:`glassbox.loading.gguf_io`);
* :func:`check_config_fields` checks a set of ``HookedTransformerConfig`` field values for
  the invariants the engine relies on (positive sizes, heads divisible by key/value heads,
  an even ``rotary_dim`` within ``d_head``, ...). ``HookedTransformerConfig.__post_init__``
  calls it, and so does the loader on the converted config (with the file's name).
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Mapping, Optional

__all__ = ["InvalidConfigError", "FieldReader", "as_int", "check_config_fields"]


class InvalidConfigError(ValueError, AssertionError):
    """A configuration value is invalid. A ``ValueError``; also an ``AssertionError`` because
    TransformerLens asserts some of the same conditions (code that catches TL's exception keeps
    working)."""


_REQUIRED = object()
_INT64_MAX = 2**63 - 1


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def as_int(value: Any, what: str, *, minimum: Optional[int] = 1,
           maximum: Optional[int] = None) -> int:
    """``value`` as an ``int`` (ints, NumPy integers and integral floats such as ``4096.0``;
    never bools, strings or None), checked against ``minimum`` / ``maximum`` and to fit in
    int64; else
    :class:`InvalidConfigError` ``"{what} must be ..."``."""
    if isinstance(value, bool) or value is None:
        ok = None
    elif isinstance(value, numbers.Integral):
        ok = int(value)
    elif isinstance(value, float) and math.isfinite(value) and value == int(value):
        ok = int(value)
    else:
        ok = None
    bound = ("a positive integer" if minimum == 1 else
             "a non-negative integer" if minimum == 0 else
             f"an integer >= {minimum}" if minimum is not None else "an integer")
    if maximum is not None:
        bound = f"an integer in [{minimum}, {maximum}]" if minimum is not None else f"an integer <= {maximum}"
    if ok is None or (minimum is not None and ok < minimum) or (maximum is not None and ok > maximum):
        raise InvalidConfigError(f"{what} must be {bound}, got {_describe(value)}")
    if not -_INT64_MAX - 1 <= ok <= _INT64_MAX:  # sizes reach NumPy and the C engine as int64
        raise InvalidConfigError(f"{what} must be {bound} that fits in int64, got {_describe(value)}")
    return ok


def _as_float(value: Any, what: str, *, minimum: Optional[float] = None, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise InvalidConfigError(f"{what} must be a finite number, got {_describe(value)}")
    x = float(value)
    if positive and not x > 0:
        raise InvalidConfigError(f"{what} must be positive, got {value!r}")
    if minimum is not None and x < minimum:
        raise InvalidConfigError(f"{what} must be >= {minimum}, got {value!r}")
    return x


class FieldReader:
    """Typed reads of fields from ``values`` (a ``config.json`` dict, GGUF metadata, ...).

    ``where`` prefixes every message (``"config.json"``, a file path); ``prefix`` is prepended
    to keys (GGUF: ``"llama."``). A field that is absent, or ``None`` (JSON ``null``), takes the
    ``default``; without one it is an error naming the field.
    """

    def __init__(self, values: Mapping[str, Any], where: str = "config.json", prefix: str = ""):
        self.values, self.where, self.prefix = values, where, prefix

    def _what(self, key: str) -> str:
        return f"{self.where}: field {self.prefix + key!r}"

    def _get(self, key: str, default: Any) -> Any:
        value = self.values.get(self.prefix + key)
        if value is None:
            if default is _REQUIRED:
                state = "is null" if (self.prefix + key) in self.values else "is missing"
                raise InvalidConfigError(f"{self._what(key)} {state}; it is required")
            return default
        return value

    def has(self, key: str) -> bool:
        return self.values.get(self.prefix + key) is not None

    def int(self, key: str, default: Any = _REQUIRED, *, minimum: Optional[int] = 1,
            maximum: Optional[int] = None) -> Any:
        value = self._get(key, default)
        if value is default and default is not _REQUIRED:
            return default
        return as_int(value, self._what(key), minimum=minimum, maximum=maximum)

    def float(self, key: str, default: Any = _REQUIRED, *, minimum: Optional[float] = None,
              positive: bool = False) -> Any:
        value = self._get(key, default)
        if value is default and default is not _REQUIRED:
            return default
        return _as_float(value, self._what(key), minimum=minimum, positive=positive)

    def bool(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, (bool, numbers.Integral)) or int(value) not in (0, 1):
            raise InvalidConfigError(f"{self._what(key)} must be true or false, got {_describe(value)}")
        return bool(value)

    def str(self, key: str, default: Any = _REQUIRED) -> Any:
        value = self._get(key, default)
        if value is default and default is not _REQUIRED:
            return default
        if not isinstance(value, str):
            raise InvalidConfigError(f"{self._what(key)} must be a string, got {_describe(value)}")
        return value

    def fail(self, message: str) -> InvalidConfigError:
        return InvalidConfigError(f"{self.where}: {message}")


def _get(cfg: Any, name: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def check_config_fields(cfg: Any, where: str = "HookedTransformerConfig") -> None:
    """Raise :class:`InvalidConfigError` unless the ``HookedTransformerConfig`` field values in
    ``cfg`` (a dict or a config object, after ``n_heads`` / ``d_mlp`` / ``rotary_dim`` are
    derived) describe a model the engine can run: positive ``d_model``, ``d_head``, ``n_heads``,
    ``n_ctx`` (and ``d_mlp`` unless attention-only), ``n_layers >= 0``, ``d_vocab`` /
    ``d_vocab_out`` positive or -1 (unset), ``n_key_value_heads`` a positive divisor of
    ``n_heads``, a rotary model's ``rotary_dim`` even and in ``[2, d_head]``, a positive
    ``window_size`` for local attention, a finite ``eps >= 0`` and a positive ``rotary_base``.
    The message names ``where``, the field and the value.
    """
    def what(field: str) -> str:
        return f"{where}: {field}"

    D = as_int(_get(cfg, "d_model"), what("d_model"))
    d = as_int(_get(cfg, "d_head"), what("d_head"))
    H = as_int(_get(cfg, "n_heads"), what("n_heads"))
    as_int(_get(cfg, "n_layers"), what("n_layers"), minimum=0)
    as_int(_get(cfg, "n_ctx"), what("n_ctx"))
    if not _get(cfg, "attn_only", False):
        as_int(_get(cfg, "d_mlp"), what("d_mlp"))
    for field in ("d_vocab", "d_vocab_out"):
        v = _get(cfg, field, -1)
        if v != -1:
            as_int(v, what(field) + " (-1 when unset)")
    G = _get(cfg, "n_key_value_heads")
    if G is not None:
        G = as_int(G, what("n_key_value_heads"))
        if H % G:
            raise InvalidConfigError(f"{where}: n_heads={H} must be a multiple of "
                                     f"n_key_value_heads={G} (grouped-query attention shares each "
                                     f"key/value head among n_heads / n_key_value_heads query heads)")
    if _get(cfg, "positional_embedding_type", "standard") == "rotary":
        R = as_int(_get(cfg, "rotary_dim"), what("rotary_dim"), minimum=2, maximum=d)
        if R % 2:
            raise InvalidConfigError(f"{where}: rotary_dim={R} must be even (RoPE rotates pairs)")
        _as_float(_get(cfg, "rotary_base", 10000), what("rotary_base"), positive=True)
    if _get(cfg, "use_local_attn", False) or _get(cfg, "window_size") is not None:
        as_int(_get(cfg, "window_size"), what("window_size"))
    _as_float(_get(cfg, "eps", 1e-5), what("eps"), minimum=0.0)
    del D  # checked; no relation to n_heads * d_head is required (TransformerLens allows any)
