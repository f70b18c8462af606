"""TransformerLens's weight processing, on NumPy state dicts (TL names and layouts).

These functions reproduce ``HookedTransformer.from_pretrained``'s processing (TL 3.9,
``ProcessWeights``): the maths is done in float32 as TL does, arrays of other float dtypes are
up-cast for the computation and cast back. Each function returns a new dict and never writes
into the arrays it was given (untouched arrays are shared with the input).

``cfg`` is a dict of ``HookedTransformerConfig`` fields or any config object with those attributes.

One deliberate difference from TL 3.9: after ``fold_ln`` the now parameter-free norm entries
(``ln1.w/b``, ``ln2.w/b``, ``ln_final.w/b``) are removed from the state dict instead of being
reset to 1/0, matching the parameter set of a model whose norms are ``LNPre``/``RMSPre``
(which is what TL's ``state_dict()`` shows after loading).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

import numpy as np

from .shapes import cfg_get

__all__ = [
    "fold_layer_norm",
    "center_writing_weights",
    "center_unembed",
    "fold_value_biases",
    "refactor_factored_attn_matrices",
    "process_weights",
    "RotaryRefactorError",
]

StateDict = Dict[str, np.ndarray]


class RotaryRefactorError(ValueError, AssertionError):
    """``refactor_factored_attn_matrices`` on a rotary model (TL raises ``AssertionError``)."""


def _f32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _key(sd: Mapping[str, Any], layer: int, name: str) -> str:
    """``blocks.{l}.attn.{name}``, or TL's GQA spelling ``_{name}`` when only that exists."""
    plain = f"blocks.{layer}.attn.{name}"
    if plain in sd:
        return plain
    under = f"blocks.{layer}.attn._{name}"
    return under if under in sd else plain


def fold_layer_norm(sd: Mapping[str, np.ndarray], cfg: Any, fold_biases: bool = True,
                    center_weights: bool = True) -> StateDict:
    """Fold each norm's weight (and bias) into the linear maps that read its output.

    For a norm ``n(x) * w + b`` feeding ``y @ W + c``: ``W' = w[:, None] * W`` and
    ``c' = c + b @ W``. ln1 folds into W_Q, W_K, W_V (and b_Q, b_K, b_V; GQA's ``_W_K/_W_V`` are
    folded un-repeated), ln2 into W_in and W_gate (and b_in), ln_final into W_U (and b_U unless
    ``final_rms``). With ``center_weights`` the reading weights W_Q, W_K, W_V, W_in (not W_gate)
    and W_U then have their mean over the d_model axis removed, which LayerNorm's centring makes
    a no-op. RMSNorm models use ``fold_biases=False, center_weights=False``.
    The folded norm parameters are dropped from the returned dict.
    """
    out: StateDict = dict(sd)
    L = int(cfg_get(cfg, "n_layers"))
    attn_only = bool(cfg_get(cfg, "attn_only", False))
    gated = bool(cfg_get(cfg, "gated_mlp", False))
    for l in range(L):
        p = f"blocks.{l}."
        w = out.pop(p + "ln1.w", None)
        b = out.pop(p + "ln1.b", None)
        if _key(out, l, "W_Q") in out:
            for n in "QKV":
                wk, bk = _key(out, l, f"W_{n}"), _key(out, l, f"b_{n}")
                W = _f32(out[wk])
                if w is not None:
                    if fold_biases and b is not None:
                        bias = _f32(out[bk]) if bk in out else np.zeros((W.shape[0], W.shape[2]), np.float32)
                        out[bk] = bias + (W * _f32(b)[None, :, None]).sum(-2)
                    W = W * _f32(w)[None, :, None]
                if center_weights:
                    W = W - W.mean(1, keepdims=True)
                out[wk] = W
        if attn_only:
            continue
        w = out.pop(p + "ln2.w", None)
        b = out.pop(p + "ln2.b", None)
        kin = p + "mlp.W_in"
        if w is not None and kin in out:
            W_in = _f32(out[kin])
            if fold_biases and b is not None:
                b_in = _f32(out[p + "mlp.b_in"]) if p + "mlp.b_in" in out else np.zeros(W_in.shape[1], np.float32)
                out[p + "mlp.b_in"] = b_in + (W_in * _f32(b)[:, None]).sum(-2)
            out[kin] = W_in * _f32(w)[:, None]
            if gated and p + "mlp.W_gate" in out:
                # (an LN bias would also need a gate bias, which TL's GatedMLP does not have)
                out[p + "mlp.W_gate"] = _f32(out[p + "mlp.W_gate"]) * _f32(w)[:, None]
        if center_weights and kin in out:
            W_in = _f32(out[kin])
            out[kin] = W_in - W_in.mean(0, keepdims=True)

    w = out.pop("ln_final.w", None)
    b = out.pop("ln_final.b", None)
    if w is not None and "unembed.W_U" in out:
        W_U = _f32(out["unembed.W_U"])
        if not cfg_get(cfg, "final_rms", False) and fold_biases and b is not None:
            b_U = _f32(out["unembed.b_U"]) if "unembed.b_U" in out else np.zeros(W_U.shape[1], np.float32)
            out["unembed.b_U"] = b_U + (W_U * _f32(b)[:, None]).sum(-2)
        W_U = W_U * _f32(w)[:, None]
        if center_weights:
            W_U = W_U - W_U.mean(0, keepdims=True)
        out["unembed.W_U"] = W_U
    return out


def center_writing_weights(sd: Mapping[str, np.ndarray], cfg: Any) -> StateDict:
    """Remove the d_model-mean of everything that writes to the residual stream.

    W_E and W_pos rows, W_O (over its d_model axis), b_O, W_out, b_out. Harmless under
    LayerNorm, which subtracts the mean of the residual anyway; TL applies it only to LN models.
    """
    out: StateDict = dict(sd)

    def centre(k: str, axis: int = -1) -> None:
        if k in out:
            x = _f32(out[k])
            out[k] = x - x.mean(axis, keepdims=True)

    centre("embed.W_E")
    if cfg_get(cfg, "positional_embedding_type", "standard") not in ("rotary", "alibi", "none"):
        centre("pos_embed.W_pos")
    attn_only = bool(cfg_get(cfg, "attn_only", False))
    for l in range(int(cfg_get(cfg, "n_layers"))):
        p = f"blocks.{l}."
        if p + "attn.W_O" in out:
            centre(p + "attn.W_O")
            centre(p + "attn.b_O")
        if not attn_only and p + "mlp.W_out" in out:
            centre(p + "mlp.W_out")
            centre(p + "mlp.b_out")
    return out


def center_unembed(sd: Mapping[str, np.ndarray], cfg: Any = None) -> StateDict:
    """Remove the mean over the vocabulary from each row of W_U and from b_U.

    Softmax is translation invariant, so log-probs are unchanged; logits shift by a
    per-position constant.
    """
    out: StateDict = dict(sd)
    if "unembed.W_U" not in out:
        raise KeyError("center_unembed: state dict has no 'unembed.W_U'")
    W_U = _f32(out["unembed.W_U"])
    out["unembed.W_U"] = W_U - W_U.mean(-1, keepdims=True)
    if "unembed.b_U" in out:
        b_U = _f32(out["unembed.b_U"])
        out["unembed.b_U"] = b_U - b_U.mean()
    return out


def fold_value_biases(sd: Mapping[str, np.ndarray], cfg: Any) -> StateDict:
    """Move the value biases into the output bias: ``b_O' = b_O + sum_h b_V[h] @ W_O[h]``, ``b_V = 0``.

    Exact because every attention pattern row sums to 1. Under GQA the ``_b_V`` of each kv head
    counts once per query head it serves.
    """
    out: StateDict = dict(sd)
    H = int(cfg_get(cfg, "n_heads"))
    for l in range(int(cfg_get(cfg, "n_layers"))):
        kb = _key(out, l, "b_V")
        if kb not in out:
            continue
        b_V = _f32(out[kb])
        if b_V.size == 0:
            continue
        W_O = _f32(out[f"blocks.{l}.attn.W_O"])
        b_rep = np.repeat(b_V, H // b_V.shape[0], axis=0) if b_V.shape[0] != H else b_V
        kO = f"blocks.{l}.attn.b_O"
        b_O = _f32(out[kO]) if kO in out else np.zeros(W_O.shape[-1], np.float32)
        out[kO] = b_O + (b_rep[:, :, None] * W_O).sum((0, 1))
        out[kb] = np.zeros_like(b_V)
    return out


def _factored_svd(A: np.ndarray, B: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SVD of ``A @ B`` (batched) without forming it, as TL's ``FactoredMatrix.svd``: (U, S, V)."""
    Ua, Sa, Vha = np.linalg.svd(A, full_matrices=False)
    Ub, Sb, Vhb = np.linalg.svd(B, full_matrices=False)
    middle = Sa[..., :, None] * (Vha @ Ub) * Sb[..., None, :]
    Um, Sm, Vhm = np.linalg.svd(middle, full_matrices=False)
    return Ua @ Um, Sm, np.swapaxes(Vhb, -1, -2) @ np.swapaxes(Vhm, -1, -2)


def _refactor_layer_torch(out: StateDict, p: str) -> None:
    """One layer of :func:`refactor_factored_attn_matrices` in float32 torch, in TransformerLens's
    order of operations. SVD signs are a property of the LAPACK call, not of the maths: doing the
    very same float32 ``torch.linalg.svd`` calls as TL gives TL's factors, so hook_q/k/v/z match
    TL's refactored model and not just its products."""
    import torch

    def svd(A, B):
        Ua, Sa, Vha = torch.linalg.svd(A, full_matrices=False)
        Ub, Sb, Vhb = torch.linalg.svd(B, full_matrices=False)
        middle = Sa[..., :, None] * Vha @ Ub * Sb[..., None, :]
        Um, Sm, Vhm = torch.linalg.svd(middle, full_matrices=False)
        return Ua @ Um, Sm, Vhb.transpose(-1, -2) @ Vhm.transpose(-1, -2)

    t = {k: torch.from_numpy(np.ascontiguousarray(out[p + k], dtype=np.float32))
         for k in ("W_Q", "b_Q", "W_K", "b_K", "W_V", "W_O", "b_V", "b_O")}
    q_eff = torch.cat([t["W_Q"], t["b_Q"][:, None, :]], dim=1)
    k_eff = torch.cat([t["W_K"], t["b_K"][:, None, :]], dim=1)
    U, S, V = svd(q_eff, k_eff.transpose(-1, -2))
    q_even = U * S.sqrt()[..., None, :]
    k_even = (S.sqrt()[..., :, None] * V.transpose(-1, -2)).transpose(-1, -2)
    out[p + "W_Q"], out[p + "b_Q"] = q_even[:, :-1, :].numpy().copy(), q_even[:, -1, :].numpy().copy()
    out[p + "W_K"], out[p + "b_K"] = k_even[:, :-1, :].numpy().copy(), k_even[:, -1, :].numpy().copy()
    out[p + "b_O"] = (t["b_O"] + (t["b_V"][:, :, None] * t["W_O"]).sum(1).sum(0)).numpy().copy()
    out[p + "b_V"] = np.zeros(tuple(t["b_V"].shape), np.float32)
    U, S, V = svd(t["W_V"], t["W_O"])
    out[p + "W_V"] = (U @ S.diag_embed()).numpy().copy()
    out[p + "W_O"] = V.transpose(-1, -2).contiguous().numpy().copy()


def refactor_factored_attn_matrices(sd: Mapping[str, np.ndarray], cfg: Any) -> StateDict:
    """Re-factor each head's QK and OV circuits into an "even", orthogonal form (TL's method).

    QK: with biases appended as an extra input row, ``[W_Q; b_Q] @ [W_K; b_K]^T = U S V^T`` is
    re-split as ``W_Q = U sqrt(S)``, ``W_K = V sqrt(S)``. OV: ``b_V`` is folded into ``b_O``,
    then ``W_V @ W_O = U S V^T`` gives ``W_V = U S``, ``W_O = V^T``. Every product the model
    computes is unchanged (up to float error). With torch installed the SVDs are torch's float32 ones,
    in TL's order (the factors, not only their products, are TL's); without it NumPy float64 (the
    factors may then differ from TL's by the sign of singular-vector pairs).

    Raises:
        RotaryRefactorError: (an ``AssertionError`` and ``ValueError``) for rotary models, where
            the QK matrix depends on the positions of query and key.
    """
    if cfg_get(cfg, "positional_embedding_type", "standard") == "rotary":
        raise RotaryRefactorError(
            "You can't refactor the QK circuit when using rotary embeddings (as the QK matrix "
            "depends on the position of the query and key)")
    out: StateDict = dict(sd)
    try:
        import torch  # noqa: F401  (optional: TL's own SVDs when it is there)

        use_torch = True
    except ImportError:
        use_torch = False
    for l in range(int(cfg_get(cfg, "n_layers"))):
        p = f"blocks.{l}.attn."
        if p + "W_Q" not in out:
            continue
        if use_torch:
            _refactor_layer_torch(out, p)
            continue
        dtype = np.float64
        W_Q, b_Q = out[p + "W_Q"].astype(dtype), out[p + "b_Q"].astype(dtype)
        W_K, b_K = out[p + "W_K"].astype(dtype), out[p + "b_K"].astype(dtype)
        q_eff = np.concatenate([W_Q, b_Q[:, None, :]], axis=1)
        k_eff = np.concatenate([W_K, b_K[:, None, :]], axis=1)
        U, S, V = _factored_svd(q_eff, np.swapaxes(k_eff, -1, -2))
        rs = np.sqrt(S)[..., None, :]
        q_even, k_even = U * rs, V * rs
        out[p + "W_Q"] = np.ascontiguousarray(q_even[:, :-1, :], dtype=np.float32)
        out[p + "b_Q"] = np.ascontiguousarray(q_even[:, -1, :], dtype=np.float32)
        out[p + "W_K"] = np.ascontiguousarray(k_even[:, :-1, :], dtype=np.float32)
        out[p + "b_K"] = np.ascontiguousarray(k_even[:, -1, :], dtype=np.float32)

        W_V, W_O = out[p + "W_V"].astype(dtype), out[p + "W_O"].astype(dtype)
        b_V, b_O = out[p + "b_V"].astype(dtype), out[p + "b_O"].astype(dtype)
        out[p + "b_O"] = (b_O + (b_V[:, :, None] * W_O).sum((0, 1))).astype(np.float32)
        out[p + "b_V"] = np.zeros(b_V.shape, np.float32)
        U, S, V = _factored_svd(W_V, W_O)
        out[p + "W_V"] = np.ascontiguousarray(U * S[..., None, :], dtype=np.float32)
        out[p + "W_O"] = np.ascontiguousarray(np.swapaxes(V, -1, -2), dtype=np.float32)
    return out


_fold_layer_norm = fold_layer_norm
_center_writing_weights = center_writing_weights
_center_unembed = center_unembed
_fold_value_biases = fold_value_biases
_refactor_factored_attn_matrices = refactor_factored_attn_matrices


def process_weights(
    sd: Mapping[str, np.ndarray],
    cfg: Any,
    fold_ln: bool = True,
    center_writing_weights: bool = True,
    center_unembed: bool = True,
    fold_value_biases: bool = True,
    refactor_factored_attn_matrices: bool = False,
) -> Tuple[StateDict, Dict[str, Any]]:
    """Apply TL's ``from_pretrained`` processing; returns ``(state_dict, updated_cfg_fields)``.

    Order (as ``HookedTransformer.load_and_process_state_dict``): fold_ln -> center_writing_weights
    -> center_unembed -> fold_value_biases (then ``b_O`` is re-centred for LN models) ->
    refactor_factored_attn_matrices. TL's automatic skips apply: LN models fold biases and centre;
    RMS models fold the gains only (W_gate too) and skip ``center_writing_weights``; shortformer
    models skip fold_ln and both centrings; an output logit softcap skips ``center_unembed``;
    ``fold_ln`` is skipped when there is no norm or no norm weights in the state dict.

    ``updated_cfg_fields`` holds the config changes the caller must apply, i.e.
    ``{"normalization_type": "LNPre"}`` (or ``"RMSPre"``) after folding.
    """
    norm = cfg_get(cfg, "normalization_type", "LN")
    pos = cfg_get(cfg, "positional_embedding_type", "standard")
    if pos == "shortformer":
        fold_ln = center_writing_weights = center_unembed = False
    softcap = cfg_get(cfg, "output_logits_soft_cap", -1.0)
    if center_unembed and softcap is not None and float(softcap) > 0:
        center_unembed = False
    if fold_ln and norm not in ("LN", "LNPre", "RMS", "RMSPre"):
        fold_ln = False
    if fold_ln and not any(k.endswith((".ln1.w", ".ln2.w", "ln_final.w")) for k in sd):
        fold_ln = False

    original: Dict[str, np.dtype] = {}
    work: StateDict = {}
    for k, v in sd.items():
        v = np.asarray(v)
        if np.issubdtype(v.dtype, np.floating) and v.dtype != np.float32:
            original[k] = v.dtype
            v = v.astype(np.float32)
        work[k] = v

    updated: Dict[str, Any] = {}
    is_ln = norm in ("LN", "LNPre")
    if fold_ln:
        if is_ln:
            work = _fold_layer_norm(work, cfg, fold_biases=True, center_weights=True)
            updated["normalization_type"] = "LNPre"
        else:
            work = _fold_layer_norm(work, cfg, fold_biases=False, center_weights=False)
            updated["normalization_type"] = "RMSPre"
    if center_writing_weights and is_ln and not cfg_get(cfg, "final_rms", False):
        work = _center_writing_weights(work, cfg)
    if center_unembed:
        work = _center_unembed(work, cfg)
    if fold_value_biases:
        work = _fold_value_biases(work, cfg)
        if center_writing_weights and is_ln:
            for l in range(int(cfg_get(cfg, "n_layers"))):
                k = f"blocks.{l}.attn.b_O"
                if k in work:
                    work[k] = work[k] - work[k].mean()
    if refactor_factored_attn_matrices:
        work = _refactor_factored_attn_matrices(work, cfg)

    for k, dt in original.items():
        if k in work:
            work[k] = work[k].astype(dt)
    for k, v in work.items():
        if not v.flags.c_contiguous:
            work[k] = np.ascontiguousarray(v)
    return work, updated
