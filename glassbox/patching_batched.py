"""How :mod:`glassbox.patching` runs a sweep: batched variants started at the patched layer.

TransformerLens runs one full forward pass per patch. glassbox does less work and gives the same
numbers up to float rounding:

* **Batched variants.** With one of TransformerLens's patch setters (registered here by
  :mod:`glassbox.patching`, each with the activation axes it indexes), the patches of one layer
  are run together: ``n`` variants of the corrupted batch ``B`` become one engine call of
  ``n * B`` rows, and one hook call per run writes each variant's clean slice into its ``B`` rows
  (the same assignment the setter makes). Chunks are sized so one run stays within a memory
  budget (logits of ``n * B * pos * d_vocab_out`` floats dominate).
* **Start at the patched layer.** Everything before block ``l`` is the unpatched corrupted run,
  so a patch at a ``blocks.{l}.*`` hook starts at block ``l`` from the corrupted
  ``blocks.{l}.hook_resid_pre`` (cached once) with the corrupted run's attention mask. A
  ``resid_pre`` patch is written straight into that input; any other hook of block ``l``
  (``attn_out``, q/k/v/z, pattern, ``resid_mid``, ``mlp_out``...) is patched by a hook inside
  block ``l`` (for ``resid_mid`` and ``mlp_out`` the attention half of block ``l`` is recomputed
  and gives the corrupted values again).
* **Patches that change nothing.** If the clean slice equals the corrupted activation bit for
  bit (e.g. positions before the first token where clean and corrupted prompts differ), the
  patched run *is* the corrupted run: its logits are reused instead of recomputed.
* The metric is still called once per patch, in index order, on that patch's logits
  ``[B, pos, d_vocab_out]`` (a copy of the corrupted logits for unchanged patches).
* **Only the positions the metric reads.** With ``logit_positions`` ([B, k]) the batched runs
  unembed only those positions (the engine's ``logit_positions``), and every path hands the
  metric ``[B, k, d_vocab_out]``.

Any other ``patch_setter`` is a black box whose effect depends on the batch it sees, so it gets
TransformerLens's loop (one run per index, batch ``B``), still started at the patched layer. If
the model already carries hooks (they would see a different batch or be skipped), or
``fast_path=False``, the loop is TransformerLens's verbatim: full forward passes from the tokens.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from glassbox.arrays import is_torch, to_numpy, wrap

DEFAULT_MEMORY_BUDGET = 256 * 2**20
"""Bytes one batched patching run may allocate (estimate); ``$GLASSBOX_PATCHING_MEMORY_MB``
overrides it, the ``memory_budget=`` argument overrides both."""

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def block_of(hook_name: str) -> Optional[int]:
    """The block index of a ``blocks.{l}.*`` hook name, else None."""
    m = _BLOCK.match(hook_name)
    return int(m.group(1)) if m else None


def memory_budget(explicit: Optional[int] = None) -> int:
    """The memory budget in bytes: ``explicit``, else $GLASSBOX_PATCHING_MEMORY_MB, else default."""
    if explicit is not None:
        return int(explicit)
    env = os.environ.get("GLASSBOX_PATCHING_MEMORY_MB")
    if env:
        try:
            mb = float(env)
        except ValueError:
            raise ValueError(f"GLASSBOX_PATCHING_MEMORY_MB must be a number of MiB, got {env!r}") from None
        if mb <= 0:
            raise ValueError(f"GLASSBOX_PATCHING_MEMORY_MB must be positive, got {env!r}")
        return int(mb * 2**20)
    return DEFAULT_MEMORY_BUDGET


# ---------------------------------------------------------------------------------------------
# known setters
# ---------------------------------------------------------------------------------------------
class SetterSpec:
    """A patch setter whose effect is known: for ``index = [layer, i1, i2, ...]`` it assigns
    ``corrupted[key] = clean[key]`` where ``key`` is ``:`` everywhere except ``i_k`` on activation
    axis ``axes[k-1]`` (axis 0 is the batch)."""

    _known: Dict[Callable, "SetterSpec"] = {}

    def __init__(self, setter: Callable, axes: Tuple[int, ...]):
        self.setter = setter
        self.axes = tuple(axes)
        self.n_index = len(self.axes) + 1

    @classmethod
    def register(cls, setter: Callable, axes: Tuple[int, ...]) -> None:
        cls._known[setter] = cls(setter, axes)

    @classmethod
    def of(cls, setter: Callable) -> Optional["SetterSpec"]:
        """The spec of a known setter: one of glassbox's, or the TransformerLens function of the
        same name (identical semantics) when a script passes ``transformer_lens.patching``'s."""
        try:
            spec = cls._known.get(setter)
        except TypeError:  # unhashable callable: not one of ours
            return None
        if spec is None and getattr(setter, "__module__", None) == "transformer_lens.patching":
            tl_module = sys.modules.get("transformer_lens.patching")
            name = getattr(setter, "__name__", None)
            if tl_module is not None and getattr(tl_module, str(name), None) is setter:
                spec = next((s for s in cls._known.values() if s.name == name), None)
        return spec

    @property
    def name(self) -> str:
        return self.setter.__name__

    def key(self, row: Sequence[int], ndim: int) -> Tuple[Any, ...]:
        key: List[Any] = [slice(None)] * ndim
        for axis, i in zip(self.axes, row[1:]):
            key[axis] = int(i)
        return tuple(key)

    def sliced_shape(self, shape: Tuple[int, ...]) -> Tuple[int, ...]:
        return tuple(n for a, n in enumerate(shape) if a not in self.axes)

    def check_rows(self, rows: np.ndarray, model: Any, token_shape: Tuple[int, int],
                   hook_names: Dict[int, str], clean_acts: Dict[int, Any]) -> None:
        """ValueError unless every index row is valid for this setter on both activations
        (the corrupted one, of the hook's shape for the corrupted tokens, and the clean one)."""
        if rows.shape[1] != self.n_index:
            raise ValueError(f"{self.name} needs index rows of {self.n_index} entries (layer first), "
                             f"got {rows.shape[1]}")
        B, P = token_shape
        for layer, name in hook_names.items():
            corr_shape = hook_shape(model, name, B, P)
            clean_shape = tuple(int(n) for n in clean_acts[layer].shape)
            if corr_shape is None:
                continue
            sel = rows[rows[:, 0] == layer]
            for col, axis in enumerate(self.axes, start=1):
                if axis >= len(corr_shape) or axis >= len(clean_shape):
                    raise ValueError(
                        f"{self.name} indexes axis {axis} of {name!r}, but the corrupted activation has shape "
                        f"{corr_shape} and the clean one {clean_shape}")
                n = min(corr_shape[axis], clean_shape[axis])
                lo, hi = int(sel[:, col].min()), int(sel[:, col].max())
                if lo < -n or hi >= n:
                    bad = lo if lo < -n else hi
                    raise ValueError(
                        f"index {bad} (index column {col}) is out of range for axis {axis} of {name!r}: "
                        f"corrupted shape {corr_shape}, clean shape {clean_shape}")
            want, have = self.sliced_shape(corr_shape), self.sliced_shape(clean_shape)
            try:
                ok = np.broadcast_shapes(have, want) == want
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(
                    f"clean_cache[{name!r}] has shape {clean_shape}, which does not fit the corrupted "
                    f"activation {corr_shape} for {self.name} (clean and corrupted runs need the same "
                    "batch size, or a clean batch of 1, and the same length)")


def hook_shape(model: Any, name: str, B: int, P: int) -> Optional[Tuple[int, ...]]:
    """The activation shape at hook ``name`` for a [B, P] token batch (None if not an engine site)."""
    engine = model._get_engine()
    site = model._site_of.get(name)
    if site is None:
        return None
    return tuple(int(n) for n in engine.hook_shape(site[0], B, P))


# ---------------------------------------------------------------------------------------------
# the sweep
# ---------------------------------------------------------------------------------------------
@dataclass
class SweepRequest:
    """Everything one call of ``generic_activation_patch`` asks for (validated)."""

    model: Any
    corrupted_input: Any          # as the caller gave it (TransformerLens's loop runs on it)
    tokens: np.ndarray            # int64 [B, P]
    mask: Optional[np.ndarray]    # the attention mask a forward on `tokens` uses, or None
    torch_mode: bool
    rows: np.ndarray              # int64 [n, k], first column = layer
    hook_names: Dict[int, str]    # layer -> hook name
    clean_acts: Dict[int, Any]    # layer -> clean activation (as stored in the cache)
    metric: Callable[[Any], Any]
    setter: Callable
    spec: Optional[SetterSpec]
    out: np.ndarray               # float32, written in place
    flat: bool
    fast_path: bool
    memory_budget: Optional[int]
    max_variants_per_run: Optional[int]
    logit_positions: Optional[np.ndarray] = None  # int64 [B, k]: the positions the metric reads

    def select(self, logits: Any) -> np.ndarray:
        """The metric's positions of full logits [B, pos, V] (all of them without
        ``logit_positions``), as NumPy."""
        lg = to_numpy(logits)
        if self.logit_positions is None:
            return lg
        return np.ascontiguousarray(lg[np.arange(lg.shape[0])[:, None], self.logit_positions])

    def store(self, c: int, row: Sequence[int], value: Any) -> None:
        v = metric_value(value)
        if self.flat:
            self.out[c] = v
        else:
            self.out[tuple(int(i) for i in row)] = v


def metric_value(x: Any) -> float:
    """A patching metric's result as a float (``.item()`` of a one-element tensor / array)."""
    if isinstance(x, (bool, int, float, np.integer, np.floating)):
        return float(x)
    if is_torch(x):
        if x.numel() != 1:
            raise ValueError(f"patching_metric must return a scalar, got a tensor of shape {tuple(x.shape)}")
        return float(x.item())
    arr = np.asarray(x)
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise TypeError(f"patching_metric must return a number, got {type(x).__name__}")
    if arr.size != 1:
        raise ValueError(f"patching_metric must return a scalar, got an array of shape {tuple(arr.shape)}")
    return float(arr.reshape(()))


def model_has_hooks(model: Any) -> bool:
    return any(hp.fwd_hooks for hp in model.hook_dict.values())


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is optional
        return _NoBar()
    return tqdm(total=total)


def run_sweep(req: SweepRequest) -> None:
    """Fill ``req.out`` (see the module docstring for which path runs)."""
    bar = _progress(len(req.rows))
    try:
        if not len(req.rows):
            return
        if not req.fast_path or model_has_hooks(req.model):
            _loop_full(req, bar)
        elif req.spec is not None:
            _batched(req, bar)
        else:
            _loop_from_layer(req, bar)
    finally:
        bar.close()


def _setter_hook(req: SweepRequest, index: List[int], clean: Any) -> Callable:
    def patching_hook(corrupted_activation: Any, hook: Any) -> Any:
        return req.setter(corrupted_activation, index, clean)

    return patching_hook


def _loop_full(req: SweepRequest, bar: Any) -> None:
    """TransformerLens's loop: one full forward from the tokens per index row."""
    for c, row in enumerate(req.rows):
        index = [int(i) for i in row]
        name = req.hook_names[index[0]]
        hook = _setter_hook(req, index, req.clean_acts[index[0]])
        logits = req.model.run_with_hooks(req.corrupted_input, fwd_hooks=[(name, hook)])
        if req.logit_positions is not None:
            logits = wrap(req.select(logits), req.torch_mode)
        req.store(c, index, req.metric(logits))
        bar.update(1)


def _reference(req: SweepRequest, names: Sequence[str]) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """The unpatched corrupted run: the metric's logits (``req.select``) and the activations
    ``names`` (NumPy)."""
    names = sorted(set(names))
    logits, cache = req.model.run_with_cache(req.tokens, names_filter=names, attention_mask=req.mask)
    return req.select(logits), {n: to_numpy(cache[n]) for n in names if n in cache}


def _start_names(req: SweepRequest) -> Dict[int, Optional[int]]:
    return {layer: block_of(name) for layer, name in req.hook_names.items()}


def _tiled_mask(req: SweepRequest, n: int) -> Dict[str, Any]:
    if req.mask is None:
        return {}
    return {"attention_mask": np.tile(req.mask, (n, 1))}


def _loop_from_layer(req: SweepRequest, bar: Any) -> None:
    """TransformerLens's loop for an arbitrary setter (one run of batch B per index row), each run
    starting at the patched block from the corrupted residual stream."""
    starts = _start_names(req)
    _, ref = _reference(req, [f"blocks.{s}.hook_resid_pre" for s in starts.values() if s is not None])
    for c, row in enumerate(req.rows):
        index = [int(i) for i in row]
        name = req.hook_names[index[0]]
        hook = _setter_hook(req, index, req.clean_acts[index[0]])
        start = starts[index[0]]
        if start is None:
            logits = req.model.run_with_hooks(req.corrupted_input, fwd_hooks=[(name, hook)])
        else:
            resid = wrap(ref[f"blocks.{start}.hook_resid_pre"].copy(), req.torch_mode)
            logits = req.model.run_with_hooks(resid, start_at_layer=start, fwd_hooks=[(name, hook)],
                                              **_tiled_mask(req, 1))
        if req.logit_positions is not None:
            logits = wrap(req.select(logits), req.torch_mode)
        req.store(c, index, req.metric(logits))
        bar.update(1)


def _variant_bytes(model: Any, B: int, P: int, act_shape: Optional[Tuple[int, ...]],
                   n_logits: Optional[int] = None) -> int:
    """Estimated bytes one variant adds to a batched run: engine buffers per token, logits of
    ``n_logits`` positions per prompt (default all ``P``), plus the hook's activation copies."""
    cfg = model.cfg
    D, H, d, M = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp or 0
    G = cfg.n_key_value_heads or H
    per_token = (8 * D + 2 * H * d + 2 * G * d + 2 * H * P + 2 * M
                 + (H * D if cfg.use_attn_result else 0))
    act = int(np.prod(act_shape[1:])) if act_shape else 0
    logits = (P if n_logits is None else n_logits) * cfg.d_vocab_out
    return 4 * B * (P * per_token + logits + 3 * act)


def _batched(req: SweepRequest, bar: Any) -> None:
    """Known setter: each layer's patches as batched runs starting at that layer."""
    model, spec = req.model, req.spec
    B, P = (int(n) for n in req.tokens.shape)
    starts = _start_names(req)
    wanted = list(req.hook_names.values()) + [f"blocks.{s}.hook_resid_pre" for s in starts.values() if s is not None]
    ref_logits, ref = _reference(req, wanted)
    clean = {layer: np.asarray(to_numpy(a), dtype=np.float32) for layer, a in req.clean_acts.items()}
    budget = memory_budget(req.memory_budget)
    rows, n = req.rows, len(req.rows)
    c = 0
    while c < n:
        layer = int(rows[c, 0])
        name = req.hook_names[layer]
        corr = ref.get(name)
        n_logits = None if req.logit_positions is None else int(req.logit_positions.shape[1])
        cap = max(1, budget // max(1, _variant_bytes(model, B, P, None if corr is None else corr.shape, n_logits)))
        if req.max_variants_per_run is not None:
            cap = min(cap, int(req.max_variants_per_run))
        end = c + 1
        while end < n and end - c < cap and int(rows[end, 0]) == layer:
            end += 1
        _run_chunk(req, c, end, layer, name, starts[layer], corr, clean[layer], ref, ref_logits, bar)
        c = end


def _run_chunk(req: SweepRequest, c0: int, c1: int, layer: int, name: str, start: Optional[int],
               corr: Optional[np.ndarray], clean: np.ndarray, ref: Dict[str, np.ndarray],
               ref_logits: np.ndarray, bar: Any) -> None:
    spec, model = req.spec, req.model
    B = int(req.tokens.shape[0])
    chunk = req.rows[c0:c1]
    ndim_corr = corr.ndim if corr is not None else clean.ndim
    keys_corr = [spec.key(r, ndim_corr) for r in chunk]
    keys_clean = [spec.key(r, clean.ndim) for r in chunk]
    active: List[int] = []
    for j in range(len(chunk)):
        if corr is not None:
            a, b = corr[keys_corr[j]], clean[keys_clean[j]]
            if np.array_equal(a, np.broadcast_to(b, a.shape)):
                continue  # the patch changes nothing: this run is the corrupted run
        active.append(j)
    logits = None
    if active:
        nv = len(active)
        hooks: List[Tuple[str, Callable]] = []
        kwargs: Dict[str, Any] = _tiled_mask(req, nv)
        if start is not None:
            resid_name = f"blocks.{start}.hook_resid_pre"
            base = ref[resid_name]
            x = np.empty((nv,) + base.shape, dtype=np.float32)
            x[...] = base
            if name == resid_name:  # patch the input residual directly
                for jj, j in enumerate(active):
                    x[jj][keys_corr[j]] = clean[keys_clean[j]]
            x = x.reshape((nv * B,) + base.shape[1:])
            kwargs["start_at_layer"] = start
        else:
            x = np.tile(req.tokens, (nv, 1))
        if not (start is not None and name == f"blocks.{start}.hook_resid_pre"):
            def batch_hook(act: Any, hook: Any) -> None:
                a = to_numpy(act)  # shares memory with the engine's array (NumPy or CPU torch)
                for jj, j in enumerate(active):
                    a[jj * B:(jj + 1) * B][keys_corr[j]] = clean[keys_clean[j]]

            hooks.append((name, batch_hook))
        if req.logit_positions is not None:  # unembed only the positions the metric reads
            with model.hooks(fwd_hooks=hooks):
                out = model._forward(x, logit_positions=np.tile(req.logit_positions, (nv, 1)), **kwargs)
        else:
            out = model.run_with_hooks(x, fwd_hooks=hooks, **kwargs)
        logits = to_numpy(out).reshape((nv, B) + ref_logits.shape[1:])
    where = {j: jj for jj, j in enumerate(active)}
    for j, row in enumerate(chunk):
        lg = logits[where[j]] if j in where else ref_logits.copy()
        req.store(c0 + j, row, req.metric(wrap(lg, req.torch_mode)))
        bar.update(1)
