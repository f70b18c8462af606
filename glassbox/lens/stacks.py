"""What a lens reads: stacks of d_model vectors taken from an ``ActivationCache``, with labels.

Labels follow TransformerLens's ``ActivationCache`` methods: ``"{l}_pre"`` / ``"{l}_mid"`` /
``"{l}_post"`` / ``"final_post"`` for the residual stream (``accumulated_resid``),
``"embed"``, ``"pos_embed"``, ``"{l}_attn_out"``, ``"{l}_mlp_out"`` for components
(``decompose_resid``) and ``"L{l}H{h}"`` for heads (``stack_head_results``; for grouped-query
attention these are the query heads, ``n_heads`` of them).
"""
from __future__ import annotations

from typing import Any, List, Sequence, Tuple, Union

import numpy as np

from glassbox.arrays import to_numpy

RESID_SITES = ("resid_pre", "resid_mid", "resid_post")
COMPONENT_SITES = ("attn_out", "mlp_out", "heads", "decompose")
_SUFFIX = {"resid_pre": "pre", "resid_mid": "mid", "resid_post": "post"}


def _np(x: Any) -> np.ndarray:
    return np.asarray(to_numpy(x), dtype=np.float32)


def _sites(sites: Union[str, Sequence[str]], allowed: Sequence[str], what: str) -> List[str]:
    names = [sites] if isinstance(sites, str) else list(sites)
    if not names:
        raise ValueError(f"{what} must name at least one of {tuple(allowed)}")
    for s in names:
        if not isinstance(s, str) or s not in allowed:
            raise ValueError(f"{what} must be one of {tuple(allowed)} (or a list of them), got {s!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"{what} lists a site twice: {names}")
    return names


def _layers(layers: Any, n_layers: int) -> List[int]:
    if layers is None:
        return list(range(n_layers))
    if isinstance(layers, (int, np.integer)) and not isinstance(layers, bool):
        layers = [layers]
    out = []
    for l in layers:
        if not isinstance(l, (int, np.integer)) or isinstance(l, bool) or not -n_layers <= int(l) < n_layers:
            raise ValueError(f"layers must be layer indices in [-{n_layers}, {n_layers}), got {l!r}")
        out.append(int(l) % n_layers)
    return out


def residual_stack(cache: Any, sites: Union[str, Sequence[str]], incl_mid: bool, layers: Any) -> Tuple[np.ndarray, List[str]]:
    """Residual-stream vectors → ([n, *bp, d_model], labels).

    ``sites="accumulated"``: ``cache.accumulated_resid(incl_mid=incl_mid)`` — ``resid_pre`` of
    every layer (``resid_mid`` too with ``incl_mid``) then the final ``resid_post``;
    otherwise one or more of ``"resid_pre"``, ``"resid_mid"``, ``"resid_post"`` at each of
    ``layers`` (all by default), ordered by layer then by the order given."""
    L = cache.model.cfg.n_layers
    if isinstance(sites, str) and sites == "accumulated":
        if layers is not None:
            raise ValueError("layers= selects layers for explicit sites; with sites='accumulated' use sites=['resid_pre', ...]")
        stack, labels = cache.accumulated_resid(incl_mid=incl_mid, return_labels=True)
        return _np(stack), list(labels)
    names = _sites(sites, RESID_SITES + ("accumulated",), "sites")
    if "accumulated" in names:
        raise ValueError("sites='accumulated' cannot be combined with other sites")
    parts, labels = [], []
    for l in _layers(layers, L):
        for s in names:
            parts.append(_np(cache[(s, l)]))
            labels.append(f"{l}_{_SUFFIX[s]}")
    return np.stack(parts), labels


def component_stack(cache: Any, components: Union[str, Sequence[str]], layers: Any) -> Tuple[np.ndarray, List[str]]:
    """Residual components → ([n, *bp, d_model], labels).

    ``"attn_out"`` / ``"mlp_out"`` at each of ``layers`` (a list of both interleaves them per
    layer); ``"heads"``: every head's output (``cache.stack_head_results``, which computes
    ``hook_result`` from ``z`` and ``W_O`` when it is not cached, as TransformerLens does);
    ``"decompose"``: ``cache.decompose_resid()`` (embeddings and every attn_out / mlp_out)."""
    L = cache.model.cfg.n_layers
    names = _sites(components, COMPONENT_SITES, "components")
    if ("heads" in names or "decompose" in names) and len(names) > 1:
        raise ValueError(f"components={names}: 'heads' and 'decompose' cannot be combined with other components")
    if names == ["decompose"]:
        if layers is not None:
            raise ValueError("layers= does not apply to components='decompose'")
        stack, labels = cache.decompose_resid(return_labels=True)
        return _np(stack), list(labels)
    if names == ["heads"]:
        return head_stack(cache, _layers(layers, L))
    parts, labels = [], []
    for l in _layers(layers, L):
        for s in names:
            parts.append(_np(cache[(s, l)]))
            labels.append(f"{l}_{s}")
    return np.stack(parts), labels


def head_stack(cache: Any, layers: List[int]) -> Tuple[np.ndarray, List[str]]:
    """Every head's output at ``layers`` → ([len(layers) * n_heads, *bp, d_model], ``"L{l}H{h}"``).

    Uses the cached ``attn.hook_result`` when the run had ``use_attn_result``; otherwise computes
    ``z[..., h, :] @ W_O[h]`` (without ``b_O``) as ``ActivationCache.compute_head_results`` does,
    without adding entries to the cache."""
    parts, labels = [], []
    for l in layers:
        name = f"blocks.{l}.attn.hook_result"
        if name in cache:
            res = _np(cache[name])  # [*bp, H, D]
        else:
            z = _np(cache[("z", l)])  # [*bp, H, d]
            W_O = np.asarray(cache.model.blocks[l].attn.param_np("W_O"), np.float32)  # [H, d, D]
            res = np.einsum("...hd,hdm->...hm", z, W_O)
        parts.append(np.moveaxis(res, -2, 0))
        labels += [f"L{l}H{h}" for h in range(res.shape[-2])]
    return np.concatenate(parts, axis=0).astype(np.float32, copy=False), labels


__all__ = ["head_stack", "residual_stack", "component_stack", "RESID_SITES", "COMPONENT_SITES"]
