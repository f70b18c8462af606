"""Key/value caches for generation: TransformerLens's ``HookedTransformerKeyValueCache``.

A :class:`HookedTransformerKeyValueCache` holds, for every layer, the keys and values of the
positions a model has already processed, so that ``model(new_tokens, past_kv_cache=cache)`` runs
the new positions only: they attend to the cached positions and to each other (causally), with
positions continuing from the cache (learned positions offset by the cache length, RoPE at the
absolute positions) and the padding mask of the earlier positions kept in
``previous_attention_mask``. ``generate(..., use_past_kv_cache=True)`` (the default) builds one.

Names and behaviour are TransformerLens's (the 2.x module path ``past_key_value_caching`` with
``HookedTransformerKeyValueCache`` / ``HookedTransformerKeyValueCacheEntry``; 3.x calls the same
classes ``TransformerLensKeyValueCache`` / ``TransformerLensKeyValueCacheEntry``, aliases below):
``init_cache(cfg, device, batch_size)``, ``entries`` (one per layer, also ``cache[l]``) with
``past_keys`` / ``past_values`` [batch, pos_so_far, n_kv_heads, d_head], ``frozen`` with
``freeze()`` / ``unfreeze()`` (a frozen cache is read but not extended: run many continuations of
one prefix), ``append_attention_mask`` and ``previous_attention_mask`` [batch, pos_so_far].

How it is stored: each entry owns float32 NumPy buffers [batch, capacity, n_kv_heads, d_head]
that the C engine reads in place and writes the new positions into (no copy of the cached
positions per step); ``past_keys`` is a view of the first ``pos_so_far`` rows (a torch tensor
sharing memory when the caller works in torch). Capacity grows by doubling when needed
(``init_cache(..., capacity=n)`` preallocates). Grouped-query models store the kv heads only,
never repeated. Differences from TransformerLens, both deliberate:

* **Keys are stored after RoPE** (rotary models). TransformerLens caches keys before the
  rotation and rotates all of them again at every step; the values that reach the attention are
  the same, and ``hook_rot_k`` still sees every key rotated, [batch, pos_so_far + new, kv_heads,
  d_head], as in TransformerLens. So for rotary models ``past_keys`` holds rotated keys (as
  Hugging Face's caches do); for GPT-2-style models it equals TransformerLens's.
* **A failed forward leaves the cache unchanged.** The new positions are committed (and the
  attention mask extended) only after the whole forward pass succeeded; an exception in a hook,
  Ctrl-C or bad input leaves the cache as it was. TransformerLens appends layer by layer.

A cache checks that it fits the model it is used with (batch size, layers, kv heads, d_head) and,
once it holds positions, that it is the same model that filled it.
"""
from __future__ import annotations

import weakref
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from glassbox.arrays import is_torch, to_numpy, wants_torch, wrap

__all__ = [
    "HookedTransformerKeyValueCache",
    "HookedTransformerKeyValueCacheEntry",
    "TransformerLensKeyValueCache",
    "TransformerLensKeyValueCacheEntry",
]


def _cfg_get(cfg: Any, name: str, default: Any = None) -> Any:
    if isinstance(cfg, dict):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def kv_heads_of(cfg: Any) -> int:
    """Key/value heads per layer the cache stores: ``n_key_value_heads`` (GQA), else ``n_heads``
    (also when ``ungroup_grouped_query_attention`` repeats the kv heads)."""
    G = _cfg_get(cfg, "n_key_value_heads")
    if G is None or _cfg_get(cfg, "ungroup_grouped_query_attention", False):
        G = _cfg_get(cfg, "n_heads")
    return int(G)


class HookedTransformerKeyValueCacheEntry:
    """Keys and values of one layer: ``past_keys`` / ``past_values`` [batch, pos_so_far,
    n_kv_heads, d_head] (float32), and ``frozen``.

    ``HookedTransformerKeyValueCacheEntry(past_keys, past_values, frozen=False)`` copies the given
    arrays (NumPy or torch) into the entry's own buffers; usually entries come from
    :meth:`HookedTransformerKeyValueCache.init_cache`.
    """

    def __init__(self, past_keys: Any, past_values: Any, frozen: bool = False):
        keys = np.asarray(to_numpy(past_keys), dtype=np.float32)
        values = np.asarray(to_numpy(past_values), dtype=np.float32)
        if keys.ndim != 4 or keys.shape != values.shape:
            raise ValueError(
                "past_keys and past_values must both have shape [batch, pos_so_far, n_kv_heads, d_head], "
                f"got {tuple(keys.shape)} and {tuple(values.shape)}"
            )
        B, n, G, d = keys.shape
        self._torch = wants_torch(past_keys)  # torch tensors in, torch tensors out
        self._keys = np.empty((B, n, G, d), dtype=np.float32)
        self._values = np.empty((B, n, G, d), dtype=np.float32)
        self._keys[...] = keys
        self._values[...] = values
        self._length = n
        self.frozen = bool(frozen)

    @classmethod
    def init_cache_entry(cls, cfg: Any, device: Any = None, batch_size: int = 1, *,
                         capacity: int = 0) -> "HookedTransformerKeyValueCacheEntry":
        """An empty entry for a model with config ``cfg`` (``device`` is accepted for
        TransformerLens compatibility; glassbox runs on the CPU). ``capacity``: positions to
        preallocate (the buffers grow on demand either way)."""
        B, G, d = int(batch_size), kv_heads_of(cfg), int(_cfg_get(cfg, "d_head"))
        if B <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        entry = cls(np.empty((B, 0, G, d), np.float32), np.empty((B, 0, G, d), np.float32))
        entry._torch = wants_torch()  # like weight accessors: torch when torch is importable
        if capacity:
            entry._reserve(int(capacity))
        return entry

    # -- shapes -------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return int(self._keys.shape[0])

    @property
    def n_kv_heads(self) -> int:
        return int(self._keys.shape[2])

    @property
    def d_head(self) -> int:
        return int(self._keys.shape[3])

    @property
    def capacity(self) -> int:
        """Positions the buffers hold before they have to grow."""
        return int(self._keys.shape[1])

    def __len__(self) -> int:
        """Positions stored (``past_keys.shape[1]``)."""
        return self._length

    # -- TransformerLens API ------------------------------------------------------------
    @property
    def past_keys(self) -> Any:
        """[batch, pos_so_far, n_kv_heads, d_head]: a view of the stored keys (after RoPE for
        rotary models)."""
        return wrap(self._keys[:, : self._length], self._torch)

    @past_keys.setter
    def past_keys(self, value: Any) -> None:
        self._replace(value, None)

    @property
    def past_values(self) -> Any:
        """[batch, pos_so_far, n_kv_heads, d_head]: a view of the stored values."""
        return wrap(self._values[:, : self._length], self._torch)

    @past_values.setter
    def past_values(self, value: Any) -> None:
        self._replace(None, value)

    def append(self, new_keys: Any, new_values: Any) -> Tuple[Any, Any]:
        """Keys and values so far followed by ``new_keys`` / ``new_values`` [batch, new_tokens,
        n_kv_heads, d_head]; stored unless the entry is frozen (then a fresh copy is returned)."""
        nk = np.asarray(to_numpy(new_keys), dtype=np.float32)
        nv = np.asarray(to_numpy(new_values), dtype=np.float32)
        want = (self.batch_size, self.n_kv_heads, self.d_head)
        for name, a in (("new_keys", nk), ("new_values", nv)):
            if a.ndim != 4 or (a.shape[0], a.shape[2], a.shape[3]) != want or a.shape[1] != nk.shape[1]:
                raise ValueError(
                    f"{name} must have shape [batch={want[0]}, new_tokens, n_kv_heads={want[1]}, "
                    f"d_head={want[2]}] (the same for keys and values), got {tuple(a.shape)}"
                )
        n = self._length + nk.shape[1]
        if self.frozen:
            keys = np.concatenate([self._keys[:, : self._length], nk], axis=1)
            values = np.concatenate([self._values[:, : self._length], nv], axis=1)
            return wrap(keys, self._torch), wrap(values, self._torch)
        self._reserve(n)
        self._keys[:, self._length: n] = nk
        self._values[:, self._length: n] = nv
        self._length = n
        return self.past_keys, self.past_values

    # -- internals ----------------------------------------------------------------------
    def _replace(self, keys: Any, values: Any) -> None:
        k = self._keys[:, : self._length] if keys is None else np.asarray(to_numpy(keys), np.float32)
        v = self._values[:, : self._length] if values is None else np.asarray(to_numpy(values), np.float32)
        if k.ndim != 4 or k.shape != v.shape:
            raise ValueError(
                "past_keys and past_values must keep one shape [batch, pos_so_far, n_kv_heads, d_head]; "
                f"got {tuple(k.shape)} and {tuple(v.shape)} (assign the other one first, or build a new entry)"
            )
        if is_torch(keys) or is_torch(values):
            self._torch = True
        self._keys, self._values = np.array(k, np.float32, order="C"), np.array(v, np.float32, order="C")
        self._length = int(k.shape[1])

    def _reserve(self, n: int, limit: Optional[int] = None) -> None:
        """Make room for ``n`` positions (amortised doubling; at most ``limit`` unless ``n`` is more)."""
        if n <= self.capacity:
            return
        cap = max(n, 2 * self.capacity, 16)
        if limit is not None and n <= limit:
            cap = min(cap, limit)
        B, _, G, d = self._keys.shape
        keys = np.empty((B, cap, G, d), dtype=np.float32)
        values = np.empty((B, cap, G, d), dtype=np.float32)
        keys[:, : self._length] = self._keys[:, : self._length]
        values[:, : self._length] = self._values[:, : self._length]
        self._keys, self._values = keys, values

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(batch={self.batch_size}, pos_so_far={self._length}, "
                f"n_kv_heads={self.n_kv_heads}, d_head={self.d_head}, frozen={self.frozen})")


class HookedTransformerKeyValueCache:
    """Per-layer key/value caches plus the attention mask of the cached positions
    (TransformerLens's class; see the module docstring).

    >>> cache = HookedTransformerKeyValueCache.init_cache(model.cfg, model.cfg.device, 1)  # doctest: +SKIP
    >>> logits = model(prompt_tokens, past_kv_cache=cache)        # fills the cache    # doctest: +SKIP
    >>> logits = model(next_token[:, None], past_kv_cache=cache)  # one new position   # doctest: +SKIP
    """

    def __init__(self, entries: Sequence[HookedTransformerKeyValueCacheEntry],
                 previous_attention_mask: Any = None, frozen: bool = False):
        self.entries: List[HookedTransformerKeyValueCacheEntry] = list(entries)
        if not self.entries:
            raise ValueError("a key/value cache needs one entry per layer, got none")
        B = self.entries[0].batch_size
        if previous_attention_mask is None:
            previous_attention_mask = np.ones((B, len(self.entries[0])), dtype=np.int64)
        self._torch = is_torch(previous_attention_mask) or self.entries[0]._torch
        self.previous_attention_mask = previous_attention_mask
        self.frozen = bool(frozen)
        if frozen:
            self.freeze()
        self._owner: Optional[weakref.ref] = None
        self._in_use = False

    @classmethod
    def init_cache(cls, cfg: Any, device: Any = None, batch_size: int = 1, *,
                   capacity: Optional[int] = None) -> "HookedTransformerKeyValueCache":
        """An empty cache for a model with config ``cfg`` and ``batch_size`` sequences.
        ``device`` is accepted for TransformerLens compatibility (glassbox runs on the CPU).
        ``capacity`` (glassbox extra): positions to preallocate; by default the buffers start
        empty and grow by doubling."""
        n_layers = int(_cfg_get(cfg, "n_layers"))
        cap = 0 if capacity is None else int(capacity)
        if cap < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        entries = [HookedTransformerKeyValueCacheEntry.init_cache_entry(cfg, device, batch_size, capacity=cap)
                   for _ in range(n_layers)]
        cache = cls(entries, np.empty((int(batch_size), 0), dtype=np.int64))
        cache._n_ctx = _cfg_get(cfg, "n_ctx")
        return cache

    # -- TransformerLens API ------------------------------------------------------------
    def freeze(self) -> None:
        """Stop extending the cache: later forwards read it but keep nothing new."""
        self.frozen = True
        for entry in self.entries:
            entry.frozen = True

    def unfreeze(self) -> None:
        self.frozen = False
        for entry in self.entries:
            entry.frozen = False

    @property
    def previous_attention_mask(self) -> Any:
        """[batch, pos_so_far] int64: 1 for real tokens, 0 for padding, of the cached positions."""
        return wrap(self._mask, self._torch)

    @previous_attention_mask.setter
    def previous_attention_mask(self, value: Any) -> None:
        m = np.asarray(to_numpy(value))
        if m.ndim != 2 or m.shape[0] != self.entries[0].batch_size:
            raise ValueError(
                f"previous_attention_mask must have shape [batch={self.entries[0].batch_size}, pos_so_far], "
                f"got {tuple(m.shape)}"
            )
        self._mask = np.ascontiguousarray(m.astype(np.int64))

    def append_attention_mask(self, attention_mask: Any) -> Any:
        """``previous_attention_mask`` followed by ``attention_mask`` [batch, new_tokens] (kept
        unless frozen); returned as the kind of array that came in."""
        new = np.asarray(to_numpy(attention_mask))
        if new.ndim != 2 or new.shape[0] != self._mask.shape[0]:
            raise ValueError(
                f"attention_mask must have shape [batch={self._mask.shape[0]}, new_tokens], got {tuple(new.shape)}"
            )
        updated = np.concatenate([self._mask, new.astype(np.int64)], axis=1)
        if not self.frozen:
            self._mask = updated
        return wrap(updated, is_torch(attention_mask) or (self._torch and not isinstance(attention_mask, np.ndarray)))

    def __getitem__(self, idx: int) -> HookedTransformerKeyValueCacheEntry:
        return self.entries[idx]

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[HookedTransformerKeyValueCacheEntry]:
        return iter(self.entries)

    # -- glassbox extras ----------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.entries[0].batch_size

    @property
    def fully_frozen(self) -> bool:
        """True if the cache and every entry are frozen (nothing a forward does is kept)."""
        return self.frozen and all(e.frozen for e in self.entries)

    @property
    def pos_so_far(self) -> int:
        """Positions in the cache (``entries[0].past_keys.shape[1]``)."""
        return len(self.entries[0])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n_layers={len(self.entries)}, batch={self.batch_size}, "
                f"pos_so_far={self.pos_so_far}, frozen={self.frozen})")

    # -- used by HookedTransformer.forward ----------------------------------------------
    def _check_for(self, model: Any, B: int) -> int:
        """Validate against ``model`` and a batch of ``B``; returns the cached length."""
        cfg = model.cfg
        L, G, d = cfg.n_layers, kv_heads_of(cfg), cfg.d_head
        if len(self.entries) != L:
            raise ValueError(f"past_kv_cache has {len(self.entries)} layers but the model has {L}: "
                             "it was made for another model")
        for l, e in enumerate(self.entries):
            if (e.n_kv_heads, e.d_head) != (G, d):
                raise ValueError(
                    f"past_kv_cache layer {l} stores {e.n_kv_heads} kv heads of d_head={e.d_head}, the model has "
                    f"{G} of d_head={d}: it was made for another model")
        if self.batch_size != B:
            raise ValueError(f"past_kv_cache was made for batch size {self.batch_size}, but the input has batch "
                             f"size {B}")
        lengths = {len(e) for e in self.entries}
        if len(lengths) != 1:
            raise ValueError(f"past_kv_cache entries hold different numbers of positions {sorted(lengths)}; "
                             "every layer must cache the same positions")
        n = lengths.pop()
        if self._mask.shape[1] != n:
            raise ValueError(f"past_kv_cache.previous_attention_mask covers {self._mask.shape[1]} positions but "
                             f"the cache holds {n}")
        owner = self._owner() if self._owner is not None else None
        if n > 0 and self._owner is not None and owner is not model:
            raise ValueError("past_kv_cache holds keys and values computed by another model; make a new one with "
                             "HookedTransformerKeyValueCache.init_cache(model.cfg, model.cfg.device, batch_size)")
        if self._in_use:
            raise RuntimeError("past_kv_cache is already in use by a forward pass (a hook cannot reuse it)")
        return n

    def _engine_view(self, P: int) -> Tuple[List[np.ndarray], List[np.ndarray], int]:
        """(keys, values, past) for the engine, with room for ``P`` more positions."""
        n = self.pos_so_far
        limit = getattr(self, "_n_ctx", None)
        for e in self.entries:
            e._reserve(n + P, limit)
        return [e._keys for e in self.entries], [e._values for e in self.entries], n

    def _commit(self, model: Any, P: int, new_mask: np.ndarray, torch_mode: bool) -> None:
        """After a successful forward: count the P new positions (unless frozen)."""
        for e in self.entries:
            e._torch = torch_mode
            if not e.frozen:
                e._length += P
        self._torch = torch_mode
        if not self.frozen:
            self._mask = np.concatenate([self._mask, new_mask.astype(np.int64)], axis=1)
        if self._owner is None or self._owner() is not model:
            self._owner = weakref.ref(model)


# TransformerLens 3.x names
TransformerLensKeyValueCache = HookedTransformerKeyValueCache
TransformerLensKeyValueCacheEntry = HookedTransformerKeyValueCacheEntry
