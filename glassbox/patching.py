"""Activation patching, with TransformerLens's ``transformer_lens.patching`` API.

Activation patching runs the model on a *corrupted* input while one activation is replaced
(patched) by its value in a *clean* run, and measures with a metric on the logits how much of the
clean behaviour the patch restores. Sweeping the patch over layers, positions and heads localises
the activations that matter.

Everything here has TransformerLens's name, signature, output shape and index order:

* :func:`generic_activation_patch` — the general sweep: a ``patch_setter`` edits one activation
  (``activation_name`` at the layer given by the first index column) per index row;
* the setters (:func:`layer_pos_patch_setter`, :func:`layer_pos_head_vector_patch_setter`,
  :func:`layer_head_vector_patch_setter`, :func:`layer_head_pattern_patch_setter`,
  :func:`layer_head_pos_pattern_patch_setter`, :func:`layer_head_dest_src_pos_pattern_patch_setter`);
* one ``get_act_patch_*`` function per (activation, index axes) pair, and the three ``*_every``
  stacks (:func:`get_act_patch_block_every`, :func:`get_act_patch_attn_head_all_pos_every`,
  :func:`get_act_patch_attn_head_by_pos_every`);
* :func:`make_df_from_ranges`.

``patching_metric(patched_logits) -> scalar`` is called once per patch, in index order, on logits
of shape ``[batch, pos, d_vocab_out]`` for the corrupted batch (a torch tensor when the caller
works in torch, else a NumPy array), so a metric written for TransformerLens works unchanged. It
may return a Python number, a 0-d / one-element array or tensor.

Inputs: ``corrupted_tokens`` [batch, pos] or [pos] (torch tensor or NumPy array of ints);
``clean_cache`` from ``model.run_with_cache(clean_tokens)`` (an ``ActivationCache`` or a dict;
it must hold the patched activation). The result is float32, a torch tensor when
``corrupted_tokens`` is one (as TransformerLens returns), else a NumPy array.

How glassbox computes it (see ``docs/patching.md``): with one of the setters above, patched
variants are run as batches (all the patches of one layer, chunked to a memory budget, as one
engine call of ``n_variants * batch`` rows), each starting at the patched layer from the cached
corrupted residual stream, and a patch that leaves the activation bit-for-bit unchanged reuses
the corrupted logits. Results equal TransformerLens's per-index loop up to float rounding. With
any other ``patch_setter`` the loop is TransformerLens's (one run per index; the setter sees the
activation of the original batch), still starting at the patched layer; with hooks already on the
model, or ``fast_path=False``, it is TransformerLens's loop verbatim (full forward passes).

Extra keyword-only options of :func:`generic_activation_patch` and every ``get_act_patch_*``
(glassbox only): ``fast_path`` (default True), ``memory_budget`` (bytes per batched run; default
:data:`DEFAULT_MEMORY_BUDGET` or ``$GLASSBOX_PATCHING_MEMORY_MB``), ``max_variants_per_run``, and
``logit_positions``: the positions the metric reads (an int such as ``-1``, one per prompt
[batch], or [batch, k]); the metric then receives logits ``[batch, k, d_vocab_out]`` of those
positions, and the patched runs unembed only them (the unembedding is a large share of a patched
run: ~37% of SmolLM2-135M's head-patching sweep on a 15-token prompt).
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from glassbox import utils
from glassbox.arrays import is_torch, to_numpy, wants_torch, wrap
from glassbox.transformer.checks import logit_positions_array
from glassbox.patching_batched import (
    DEFAULT_MEMORY_BUDGET,
    SetterSpec,
    SweepRequest,
    run_sweep,
)

AxisNames = str  # one of "layer", "pos", "head_index", "head", "src_pos", "dest_pos"
_AXES = ("layer", "pos", "head_index", "head", "src_pos", "dest_pos")


# ---------------------------------------------------------------------------------------------
# index frames
# ---------------------------------------------------------------------------------------------
def _pandas():
    try:
        import pandas as pd
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("index data frames need pandas (pip install pandas)") from exc
    return pd


def make_df_from_ranges(column_max_ranges: Sequence[int], column_names: Sequence[str]) -> Any:
    """A ``pandas.DataFrame`` with one row per combination of ``range(m)`` for each column
    (cartesian product, last column varying fastest), columns named ``column_names``."""
    pd = _pandas()
    rows = list(itertools.product(*[range(int(m)) for m in column_max_ranges]))
    return pd.DataFrame(rows, columns=list(column_names))


def _axis_ranges(model: Any, activation_name: str, n_pos: int) -> Dict[str, int]:
    """Range of each axis name (TransformerLens's rule: k/v heads count
    ``n_key_value_heads`` when the config sets it)."""
    cfg = model.cfg
    heads = cfg.n_heads
    if activation_name in ("k", "v") and cfg.n_key_value_heads is not None:
        heads = cfg.n_key_value_heads
    return {"layer": cfg.n_layers, "pos": n_pos, "head_index": heads, "head": heads,
            "src_pos": n_pos, "dest_pos": n_pos}


def _index_rows(model: Any, activation_name: str, n_pos: int, index_axis_names: Any,
                index_df: Any) -> Tuple[np.ndarray, Optional[Tuple[int, ...]]]:
    """The index rows [n_rows, n_columns] (int64) and the output shape (None: flat)."""
    if index_df is None:
        if index_axis_names is None:
            raise ValueError("generic_activation_patch needs index_axis_names or index_df")
        if isinstance(index_axis_names, str):
            raise TypeError("index_axis_names must be a sequence of axis names, e.g. ('layer', 'pos'), "
                            f"got the string {index_axis_names!r}")
        names = list(index_axis_names)
        if not names:
            raise ValueError("index_axis_names must name at least one axis (the first is the layer)")
        ranges = _axis_ranges(model, activation_name, n_pos)
        bad = [n for n in names if n not in ranges]
        if bad:
            raise ValueError(f"unknown axis name(s) {bad} in index_axis_names; known: {list(_AXES)}")
        shape = tuple(ranges[n] for n in names)
        rows = np.array(list(itertools.product(*[range(m) for m in shape])), dtype=np.int64)
        return rows.reshape(-1, len(names)), shape
    if index_axis_names is not None:
        raise ValueError("pass either index_axis_names or index_df to generic_activation_patch, not both")
    values = index_df.to_numpy() if hasattr(index_df, "to_numpy") else np.asarray(to_numpy(index_df))
    values = np.asarray(values)
    if values.ndim != 2 or values.shape[1] == 0:
        raise ValueError(f"index_df must be a table with one row per patch and one column per index "
                         f"(the first is the layer), got shape {tuple(values.shape)}")
    if values.dtype.kind not in "iu":
        try:
            as_int = values.astype(np.int64)
            ok = np.array_equal(as_int, values.astype(np.float64))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"index_df must hold integer indices, got dtype {values.dtype}")
        values = as_int
    return np.ascontiguousarray(values.astype(np.int64)), None


# ---------------------------------------------------------------------------------------------
# the generic sweep
# ---------------------------------------------------------------------------------------------
def generic_activation_patch(
    model: Any,
    corrupted_tokens: Any,
    clean_cache: Any,
    patching_metric: Callable[[Any], Any],
    patch_setter: Callable[[Any, Sequence[int], Any], Any],
    activation_name: str,
    index_axis_names: Optional[Sequence[AxisNames]] = None,
    index_df: Any = None,
    return_index_df: bool = False,
    *,
    fast_path: bool = True,
    memory_budget: Optional[int] = None,
    max_variants_per_run: Optional[int] = None,
    logit_positions: Any = None,
) -> Any:
    """Patch one activation per index row and record ``patching_metric`` of the patched logits.

    For each row ``index`` of the index table (first column = layer), the corrupted run gets
    ``patch_setter(corrupted_activation, index, clean_activation)`` applied at hook
    ``utils.get_act_name(activation_name, index[0])``, where ``clean_activation`` is that hook's
    entry of ``clean_cache``; the setter returns the patched activation (or edits it in place).

    Args:
        model: the :class:`~glassbox.HookedTransformer`.
        corrupted_tokens: tokens of the corrupted run, [batch, pos] (or [pos]).
        clean_cache: activations of the clean run (``run_with_cache``), holding the patched hook.
        patching_metric: ``f(logits [batch, pos, d_vocab_out]) -> scalar``.
        patch_setter: edits the activation for one index (see the ``*_patch_setter`` functions).
        activation_name: hook shorthand, e.g. ``"resid_pre"``, ``"z"``, ``"pattern"``.
        index_axis_names: axes to sweep fully, e.g. ``("layer", "pos")``; ranges: ``layer``
            n_layers, ``pos``/``src_pos``/``dest_pos`` the corrupted length, ``head``/``head_index``
            n_heads (``n_key_value_heads`` for ``k``/``v`` when the config sets it). The output
            has one axis per name.
        index_df: instead, an explicit table of index rows (``pandas.DataFrame`` or a 2-D integer
            array); the output is then flat, one entry per row.
        return_index_df: also return the index ``DataFrame``.
        fast_path: glassbox only; False runs TransformerLens's loop verbatim (full forwards).
        memory_budget: glassbox only; bytes one batched run may use (logits dominate).
        max_variants_per_run: glassbox only; cap on patches per batched run.
        logit_positions: glassbox only; the positions the metric reads: an int (e.g. ``-1``), one
            position per prompt ([batch], e.g. each prompt's last real token), or [batch, k] /
            [1, k]. The metric then receives the logits of those positions only,
            ``[batch, k, d_vocab_out]`` (``logits[:, j]`` is position ``logit_positions[:, j]``),
            and the patched runs unembed only them — the unembedding is a large part of a
            patched run (``d_model x d_vocab_out`` per position). None: every position, as in
            TransformerLens.

    Returns:
        float32 results (torch tensor if ``corrupted_tokens`` is one), shaped by the axes or flat;
        with ``return_index_df`` the tuple ``(results, index_df)``.
    """
    from glassbox.HookedTransformer import HookedTransformer

    if not isinstance(model, HookedTransformer):
        raise TypeError(f"model must be a glassbox HookedTransformer, got {type(model).__name__}")
    if not callable(patching_metric):
        raise TypeError(f"patching_metric must be callable, got {type(patching_metric).__name__}")
    if not callable(patch_setter):
        raise TypeError(f"patch_setter must be callable, got {type(patch_setter).__name__}")
    if not isinstance(activation_name, str):
        raise TypeError(f"activation_name must be a str, got {type(activation_name).__name__}")
    if isinstance(corrupted_tokens, str) or (
            isinstance(corrupted_tokens, list) and corrupted_tokens and isinstance(corrupted_tokens[0], str)):
        raise TypeError("corrupted_tokens must be a token array [batch, pos]; convert text with model.to_tokens(...)")
    if memory_budget is not None and (not isinstance(memory_budget, (int, np.integer)) or memory_budget <= 0):
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
    if max_variants_per_run is not None and (
            not isinstance(max_variants_per_run, (int, np.integer)) or max_variants_per_run <= 0):
        raise ValueError(f"max_variants_per_run must be a positive int, got {max_variants_per_run!r}")

    torch_mode = wants_torch(corrupted_tokens)
    tokens, mask = model._input_to_tokens(corrupted_tokens, None)
    model._validate_tokens(tokens)
    n_pos = int(tokens.shape[-1])
    lpos = None if logit_positions is None else logit_positions_array(logit_positions, int(tokens.shape[0]), n_pos)
    rows, out_shape = _index_rows(model, activation_name, n_pos, index_axis_names, index_df)
    df_out = index_df
    if return_index_df and df_out is None:
        df_out = make_df_from_ranges(out_shape, list(index_axis_names))

    L = model.cfg.n_layers
    if rows.size and (rows[:, 0].min() < 0 or rows[:, 0].max() >= L):
        bad = int(rows[:, 0].min() if rows[:, 0].min() < 0 else rows[:, 0].max())
        raise ValueError(f"layer index {bad} (first index column) is out of range for n_layers={L}")
    hook_names: Dict[int, str] = {}
    clean_acts: Dict[int, Any] = {}
    for layer in sorted(set(int(x) for x in rows[:, 0])) if rows.size else []:
        name = utils.get_act_name(activation_name, layer=layer)
        if name not in model.hook_dict:
            raise ValueError(f"activation_name={activation_name!r} gives hook {name!r}, which the model does not have")
        try:
            clean = clean_cache[name]
        except KeyError:
            raise ValueError(f"clean_cache has no entry {name!r} (activation_name={activation_name!r}); "
                             "cache the clean run with model.run_with_cache(clean_tokens)") from None
        hook_names[layer] = name
        clean_acts[layer] = clean

    spec = SetterSpec.of(patch_setter)
    if spec is not None:
        spec.check_rows(rows, model, tokens.shape, hook_names, clean_acts)

    out = np.zeros(out_shape if out_shape is not None else (len(rows),), dtype=np.float32)
    request = SweepRequest(
        model=model, corrupted_input=corrupted_tokens, tokens=tokens, mask=mask, torch_mode=torch_mode,
        rows=rows, hook_names=hook_names, clean_acts=clean_acts, metric=patching_metric,
        setter=patch_setter, spec=spec, out=out, flat=out_shape is None, fast_path=bool(fast_path),
        memory_budget=memory_budget, max_variants_per_run=max_variants_per_run, logit_positions=lpos)
    run_sweep(request)
    result = wrap(out, torch_mode)
    if return_index_df:
        return result, df_out
    return result


# ---------------------------------------------------------------------------------------------
# patch setters (TransformerLens's; glassbox recognises them and batches their patches)
# ---------------------------------------------------------------------------------------------
def _clean_like(clean: Any, corrupted: Any) -> Any:
    """``clean`` as the same kind of array as ``corrupted`` (torch / NumPy), for assignment."""
    if is_torch(corrupted) and not is_torch(clean):
        import torch

        return torch.from_numpy(np.ascontiguousarray(to_numpy(clean), dtype=np.float32))
    if not is_torch(corrupted) and is_torch(clean):
        return to_numpy(clean)
    return clean


def _check_len(index: Sequence[int], n: int, what: str) -> None:
    if len(index) != n:
        raise ValueError(f"{what} needs an index of {n} entries, got {list(index)}")


def layer_pos_patch_setter(corrupted_activation: Any, index: Sequence[int], clean_activation: Any) -> Any:
    """Patch ``[:, pos]`` of an activation whose axes are [batch, pos, ...] (residual stream,
    attn_out, mlp_out, q/k/v/z for every head); ``index = [layer, pos]``."""
    _check_len(index, 2, "layer_pos_patch_setter")
    _, pos = index
    corrupted_activation[:, pos, ...] = _clean_like(clean_activation, corrupted_activation)[:, pos, ...]
    return corrupted_activation


def layer_pos_head_vector_patch_setter(corrupted_activation: Any, index: Sequence[int],
                                       clean_activation: Any) -> Any:
    """Patch ``[:, pos, head_index]`` of a [batch, pos, head_index, ...] activation (q, k, v, z,
    result); ``index = [layer, pos, head_index]``."""
    _check_len(index, 3, "layer_pos_head_vector_patch_setter")
    _, pos, head_index = index
    clean = _clean_like(clean_activation, corrupted_activation)
    corrupted_activation[:, pos, head_index] = clean[:, pos, head_index]
    return corrupted_activation


def layer_head_vector_patch_setter(corrupted_activation: Any, index: Sequence[int],
                                   clean_activation: Any) -> Any:
    """Patch ``[:, :, head_index]`` (every position) of a [batch, pos, head_index, ...]
    activation; ``index = [layer, head_index]``."""
    _check_len(index, 2, "layer_head_vector_patch_setter")
    _, head_index = index
    clean = _clean_like(clean_activation, corrupted_activation)
    corrupted_activation[:, :, head_index] = clean[:, :, head_index]
    return corrupted_activation


def layer_head_pattern_patch_setter(corrupted_activation: Any, index: Sequence[int],
                                    clean_activation: Any) -> Any:
    """Patch ``[:, head_index]`` of a [batch, head_index, dest_pos, src_pos] activation
    (attention pattern or scores); ``index = [layer, head_index]``."""
    _check_len(index, 2, "layer_head_pattern_patch_setter")
    _, head_index = index
    clean = _clean_like(clean_activation, corrupted_activation)
    corrupted_activation[:, head_index, :, :] = clean[:, head_index, :, :]
    return corrupted_activation


def layer_head_pos_pattern_patch_setter(corrupted_activation: Any, index: Sequence[int],
                                        clean_activation: Any) -> Any:
    """Patch ``[:, head_index, dest_pos]`` (one query row) of a [batch, head_index, dest_pos,
    src_pos] activation; ``index = [layer, head_index, dest_pos]``."""
    _check_len(index, 3, "layer_head_pos_pattern_patch_setter")
    _, head_index, dest_pos = index
    clean = _clean_like(clean_activation, corrupted_activation)
    corrupted_activation[:, head_index, dest_pos, :] = clean[:, head_index, dest_pos, :]
    return corrupted_activation


def layer_head_dest_src_pos_pattern_patch_setter(corrupted_activation: Any, index: Sequence[int],
                                                 clean_activation: Any) -> Any:
    """Patch the single entry ``[:, head_index, dest_pos, src_pos]`` of a [batch, head_index,
    dest_pos, src_pos] activation; ``index = [layer, head_index, dest_pos, src_pos]``."""
    _check_len(index, 4, "layer_head_dest_src_pos_pattern_patch_setter")
    _, head_index, dest_pos, src_pos = index
    clean = _clean_like(clean_activation, corrupted_activation)
    corrupted_activation[:, head_index, dest_pos, src_pos] = clean[:, head_index, dest_pos, src_pos]
    return corrupted_activation


# Activation axes (after batch) that index[1:] addresses, per known setter: the batched path
# applies exactly these assignments, variant by variant.
SetterSpec.register(layer_pos_patch_setter, (1,))
SetterSpec.register(layer_pos_head_vector_patch_setter, (1, 2))
SetterSpec.register(layer_head_vector_patch_setter, (2,))
SetterSpec.register(layer_head_pattern_patch_setter, (1,))
SetterSpec.register(layer_head_pos_pattern_patch_setter, (1, 2))
SetterSpec.register(layer_head_dest_src_pos_pattern_patch_setter, (1, 2, 3))


# ---------------------------------------------------------------------------------------------
# the specialised sweeps
# ---------------------------------------------------------------------------------------------
class _Default:
    """Marks "index_axis_names not given" (it then defaults to the function's axes, or to None
    when an ``index_df`` is given)."""

    def __repr__(self) -> str:
        return "<default axes>"


_DEFAULT_AXES = _Default()


def _specialised(name: str, setter: Callable, activation: str, axes: Tuple[str, ...],
                 what: str, shape: str) -> Callable:
    def sweep(model: Any, corrupted_tokens: Any, clean_cache: Any, patching_metric: Callable[[Any], Any],
              *, patch_setter: Callable = setter, activation_name: str = activation,
              index_axis_names: Any = _DEFAULT_AXES, index_df: Any = None, return_index_df: bool = False,
              **options: Any) -> Any:
        if index_axis_names is _DEFAULT_AXES:
            index_axis_names = None if index_df is not None else axes
        return generic_activation_patch(
            model, corrupted_tokens, clean_cache, patching_metric, patch_setter=patch_setter,
            activation_name=activation_name, index_axis_names=index_axis_names, index_df=index_df,
            return_index_df=return_index_df, **options)

    sweep.__name__ = sweep.__qualname__ = name
    sweep.__module__ = __name__
    sweep.__doc__ = f"""Activation patching of {what}: a tensor of shape {shape}.

    ``generic_activation_patch`` with ``patch_setter={setter.__name__}``,
    ``activation_name={activation!r}``, ``index_axis_names={axes!r}`` (any of them may be
    overridden by keyword, as with TransformerLens's ``functools.partial``; giving ``index_df``
    alone sweeps its rows and returns a flat result).

    Args:
        model: the HookedTransformer.
        corrupted_tokens: tokens of the corrupted run, [batch, pos].
        clean_cache: ``ActivationCache`` of the clean run.
        patching_metric: ``f(logits [batch, pos, d_vocab_out]) -> scalar``.

    Returns:
        float32 results of shape {shape} (torch tensor if ``corrupted_tokens`` is one).
    """
    return sweep


_KV_HEADS = "n_heads] (n_key_value_heads when the config sets it, as in TransformerLens)"
get_act_patch_resid_pre = _specialised(
    "get_act_patch_resid_pre", layer_pos_patch_setter, "resid_pre", ("layer", "pos"),
    "the residual stream at the start of each block, per position", "[n_layers, pos]")
get_act_patch_resid_mid = _specialised(
    "get_act_patch_resid_mid", layer_pos_patch_setter, "resid_mid", ("layer", "pos"),
    "the residual stream between attention and MLP, per position", "[n_layers, pos]")
get_act_patch_attn_out = _specialised(
    "get_act_patch_attn_out", layer_pos_patch_setter, "attn_out", ("layer", "pos"),
    "the output of each attention layer, per position", "[n_layers, pos]")
get_act_patch_mlp_out = _specialised(
    "get_act_patch_mlp_out", layer_pos_patch_setter, "mlp_out", ("layer", "pos"),
    "the output of each MLP layer, per position", "[n_layers, pos]")
get_act_patch_attn_head_out_by_pos = _specialised(
    "get_act_patch_attn_head_out_by_pos", layer_pos_head_vector_patch_setter, "z", ("layer", "pos", "head"),
    "each head's output (hook_z), per position", "[n_layers, pos, n_heads]")
get_act_patch_attn_head_q_by_pos = _specialised(
    "get_act_patch_attn_head_q_by_pos", layer_pos_head_vector_patch_setter, "q", ("layer", "pos", "head"),
    "each head's queries, per position", "[n_layers, pos, n_heads]")
get_act_patch_attn_head_k_by_pos = _specialised(
    "get_act_patch_attn_head_k_by_pos", layer_pos_head_vector_patch_setter, "k", ("layer", "pos", "head"),
    "each key head's keys, per position", "[n_layers, pos, " + _KV_HEADS)
get_act_patch_attn_head_v_by_pos = _specialised(
    "get_act_patch_attn_head_v_by_pos", layer_pos_head_vector_patch_setter, "v", ("layer", "pos", "head"),
    "each value head's values, per position", "[n_layers, pos, " + _KV_HEADS)
get_act_patch_attn_head_pattern_by_pos = _specialised(
    "get_act_patch_attn_head_pattern_by_pos", layer_head_pos_pattern_patch_setter, "pattern",
    ("layer", "head_index", "dest_pos"),
    "each head's attention pattern, per destination position", "[n_layers, n_heads, dest_pos]")
get_act_patch_attn_head_pattern_dest_src_pos = _specialised(
    "get_act_patch_attn_head_pattern_dest_src_pos", layer_head_dest_src_pos_pattern_patch_setter, "pattern",
    ("layer", "head_index", "dest_pos", "src_pos"),
    "each (destination, source) entry of each head's attention pattern",
    "[n_layers, n_heads, dest_pos, src_pos]")
get_act_patch_attn_head_out_all_pos = _specialised(
    "get_act_patch_attn_head_out_all_pos", layer_head_vector_patch_setter, "z", ("layer", "head"),
    "each head's output (hook_z) at every position at once", "[n_layers, n_heads]")
get_act_patch_attn_head_q_all_pos = _specialised(
    "get_act_patch_attn_head_q_all_pos", layer_head_vector_patch_setter, "q", ("layer", "head"),
    "each head's queries at every position at once", "[n_layers, n_heads]")
get_act_patch_attn_head_k_all_pos = _specialised(
    "get_act_patch_attn_head_k_all_pos", layer_head_vector_patch_setter, "k", ("layer", "head"),
    "each key head's keys at every position at once", "[n_layers, " + _KV_HEADS)
get_act_patch_attn_head_v_all_pos = _specialised(
    "get_act_patch_attn_head_v_all_pos", layer_head_vector_patch_setter, "v", ("layer", "head"),
    "each value head's values at every position at once", "[n_layers, " + _KV_HEADS)
get_act_patch_attn_head_pattern_all_pos = _specialised(
    "get_act_patch_attn_head_pattern_all_pos", layer_head_pattern_patch_setter, "pattern",
    ("layer", "head_index"),
    "each head's whole attention pattern", "[n_layers, n_heads]")


# ---------------------------------------------------------------------------------------------
# stacks of sweeps
# ---------------------------------------------------------------------------------------------
def _stack(parts: List[Any], torch_mode: bool, pad_to: Optional[int] = None) -> Any:
    arrs = []
    for p in parts:
        a = np.asarray(to_numpy(p), dtype=np.float32)
        if pad_to is not None and a.shape[-1] < pad_to:  # k/v under GQA: zeros for heads G..H-1
            a = np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, pad_to - a.shape[-1])])
        arrs.append(a)
    return wrap(np.ascontiguousarray(np.stack(arrs, axis=0)), torch_mode)


def get_act_patch_block_every(model: Any, corrupted_tokens: Any, clean_cache: Any,
                              metric: Callable[[Any], Any], **options: Any) -> Any:
    """Patching of ``resid_pre``, ``attn_out`` and ``mlp_out`` per (layer, position), stacked:
    shape [3, n_layers, pos]."""
    parts = [f(model, corrupted_tokens, clean_cache, metric, **options)
             for f in (get_act_patch_resid_pre, get_act_patch_attn_out, get_act_patch_mlp_out)]
    return _stack(parts, wants_torch(corrupted_tokens))


def get_act_patch_attn_head_all_pos_every(model: Any, corrupted_tokens: Any, clean_cache: Any,
                                          metric: Callable[[Any], Any], **options: Any) -> Any:
    """Patching of every head across all positions, for the output (z), q, k, v and pattern,
    stacked: shape [5, n_layers, n_heads]. Under GQA the k and v rows have n_key_value_heads
    entries and are zero-padded to n_heads at the end, as in TransformerLens."""
    fns = (get_act_patch_attn_head_out_all_pos, get_act_patch_attn_head_q_all_pos,
           get_act_patch_attn_head_k_all_pos, get_act_patch_attn_head_v_all_pos,
           get_act_patch_attn_head_pattern_all_pos)
    parts = [f(model, corrupted_tokens, clean_cache, metric, **options) for f in fns]
    return _stack(parts, wants_torch(corrupted_tokens), pad_to=model.cfg.n_heads)


def get_act_patch_attn_head_by_pos_every(model: Any, corrupted_tokens: Any, clean_cache: Any,
                                         metric: Callable[[Any], Any], **options: Any) -> Any:
    """Patching of every head at each position, for the output (z), q, k, v and pattern (per
    destination position, moved to [n_layers, pos, n_heads]), stacked: shape
    [5, n_layers, pos, n_heads]. Under GQA k and v are zero-padded to n_heads, as in
    TransformerLens."""
    fns = (get_act_patch_attn_head_out_by_pos, get_act_patch_attn_head_q_by_pos,
           get_act_patch_attn_head_k_by_pos, get_act_patch_attn_head_v_by_pos)
    parts = [f(model, corrupted_tokens, clean_cache, metric, **options) for f in fns]
    pattern = get_act_patch_attn_head_pattern_by_pos(model, corrupted_tokens, clean_cache, metric, **options)
    parts.append(np.swapaxes(np.asarray(to_numpy(pattern)), 1, 2))
    return _stack(parts, wants_torch(corrupted_tokens), pad_to=model.cfg.n_heads)


__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "make_df_from_ranges",
    "generic_activation_patch",
    "layer_pos_patch_setter",
    "layer_pos_head_vector_patch_setter",
    "layer_head_vector_patch_setter",
    "layer_head_pattern_patch_setter",
    "layer_head_pos_pattern_patch_setter",
    "layer_head_dest_src_pos_pattern_patch_setter",
    "get_act_patch_resid_pre",
    "get_act_patch_resid_mid",
    "get_act_patch_attn_out",
    "get_act_patch_mlp_out",
    "get_act_patch_attn_head_out_by_pos",
    "get_act_patch_attn_head_q_by_pos",
    "get_act_patch_attn_head_k_by_pos",
    "get_act_patch_attn_head_v_by_pos",
    "get_act_patch_attn_head_pattern_by_pos",
    "get_act_patch_attn_head_pattern_dest_src_pos",
    "get_act_patch_attn_head_out_all_pos",
    "get_act_patch_attn_head_q_all_pos",
    "get_act_patch_attn_head_k_all_pos",
    "get_act_patch_attn_head_v_all_pos",
    "get_act_patch_attn_head_pattern_all_pos",
    "get_act_patch_attn_head_all_pos_every",
    "get_act_patch_attn_head_by_pos_every",
    "get_act_patch_block_every",
]
