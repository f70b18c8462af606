"""The model's own read-out: ``ln_final`` then the unembedding, in NumPy float32.

A lens is only as good as its read-out. :class:`FinalReadout` applies ``ln_final`` exactly as the
model does and multiplies by the model's ``W_U`` / ``b_U`` as TransformerLens exposes them:

* **processed models** (``from_pretrained``): ``ln_final`` is ``LNPre``/``RMSPre`` (no parameters);
  its gain (and bias) are folded into ``W_U``/``b_U``, and ``W_U`` is centred over the vocabulary;
* **unprocessed models** (``from_pretrained_no_processing``): ``ln_final`` keeps its ``w`` (and
  ``b`` for LayerNorm), applied here after normalising;
* **weights kept in their stored dtype** (bf16/f16 safetensors, GGUF): processing is *virtual*
  (:mod:`glassbox.loading.virtual`): the engine keeps RMS gains aside and applies ln_final's gain
  after ``unembed.hook_in`` (``final_gain_after_unembed_in``) and centres the logits. The
  TransformerLens-facing ``model.W_U`` reads back ``w[:, None] * W_U`` centred over the
  vocabulary — the processed matrix — so ``normalised @ W_U + b_U`` is the model's logits. That
  view is a float32 copy (``d_model * d_vocab * 4`` bytes), made once per :class:`FinalReadout`.

In every case ``FinalReadout(model).logits(resid_post_final)`` equals the model's logits (tested
for fp32, bf16-stored and GGUF models in ``tests/test_lens.py``).

Two ways to normalise a vector ``x`` that is not the final residual stream itself:

* ``"recompute"``: ln_final's statistics (mean, RMS) are recomputed from ``x`` — "read ``x`` as if
  it were the final residual stream"; gain, ln bias and ``b_U`` included. This is the logit lens
  (TransformerLens: ``accumulated_resid(apply_ln=True)``, ``apply_ln_to_stack(...,
  recompute_ln=True)``).
* ``"cached"``: ``x`` is centred (LayerNorm) and divided by the *cached* ``ln_final.hook_scale``
  of the real final residual at that position, times the gain, without ln bias or ``b_U``: the
  linear direct contribution of ``x`` to the final logits (TransformerLens's ``apply_ln_to_stack``
  without recompute and ``logit_attrs``). Components read this way add up to the final logits
  minus the constant ``b_ln @ W_U + b_U``.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from glassbox.components import Component, final_norm_kind

LN_MODES = ("recompute", "cached")


class FinalReadout:
    """``ln_final`` + unembedding of ``model`` as NumPy float32 maths (see module docstring).

    Attributes:
        kind: ln_final's TransformerLens class name (``"LN"``, ``"LNPre"``, ``"RMS"``,
            ``"RMSPre"``) or None (no final norm).
        w, b: ln_final's gain / bias still to apply ([d_model] or None: folded or absent).
        W_U: [d_model, d_vocab_out] float32, as ``model.W_U`` reads.
        b_U: [d_vocab_out] float32 (zeros when the model has none).
    """

    def __init__(self, model: Any):
        cfg = model.cfg
        self.kind: Optional[str] = final_norm_kind(cfg)
        self.eps = float(cfg.eps)
        ln = getattr(model, "ln_final", None)
        params = ln.named_parameters_np() if isinstance(ln, Component) else {}
        self.w = _f32(params.get("w"))
        self.b = _f32(params.get("b"))
        unembed = model.unembed
        self.W_U = _f32(unembed.param_np("W_U"))
        self.d_model, self.d_vocab = int(self.W_U.shape[0]), int(self.W_U.shape[1])
        b_U = unembed.param_np("b_U") if "b_U" in unembed._params else None
        self.b_U = _f32(b_U) if b_U is not None else np.zeros(self.d_vocab, np.float32)

    # -- normalisation -----------------------------------------------------------------------
    def _centre(self, x: np.ndarray) -> np.ndarray:
        if self.kind in ("LN", "LNPre"):
            return x - x.mean(-1, keepdims=True)
        return x

    def scale(self, x: np.ndarray) -> np.ndarray:
        """ln_final's ``hook_scale`` for vectors ``x`` [..., d_model] → [..., 1]."""
        x = self._centre(np.asarray(x, np.float32))
        if self.kind is None:
            return np.ones(x.shape[:-1] + (1,), np.float32)
        return np.sqrt((x * x).mean(-1, keepdims=True) + self.eps).astype(np.float32)

    def unembed_in(self, x: np.ndarray, ln_mode: str = "recompute", scale: Optional[np.ndarray] = None) -> np.ndarray:
        """What the unembedding reads for vectors ``x`` [..., d_model] (TL's processed
        ``unembed.hook_in`` when the gain is folded).

        ``ln_mode="recompute"``: ln_final with statistics from ``x`` (gain and bias applied).
        ``ln_mode="cached"``: centre, divide by ``scale`` (broadcastable to [..., 1]: the cached
        ``ln_final.hook_scale``), times the gain, no bias."""
        x = np.asarray(x, np.float32)
        if ln_mode not in LN_MODES:
            raise ValueError(f"ln_mode must be one of {LN_MODES}, got {ln_mode!r}")
        if self.kind is None:
            return x
        xc = self._centre(x)
        if ln_mode == "recompute":
            out = xc / np.sqrt((xc * xc).mean(-1, keepdims=True) + self.eps)
        else:
            if scale is None:
                raise ValueError("ln_mode='cached' needs the cached ln_final scale")
            out = xc / np.asarray(scale, np.float32)
        if self.w is not None:
            out = out * self.w
        if self.b is not None and ln_mode == "recompute":
            out = out + self.b
        return out.astype(np.float32, copy=False)

    def logits(self, x: np.ndarray, ln_mode: str = "recompute", scale: Optional[np.ndarray] = None) -> np.ndarray:
        """Lens logits of vectors ``x`` [..., d_model] → [..., d_vocab_out] float32 (``b_U``
        only with ``ln_mode="recompute"``)."""
        h = self.unembed_in(x, ln_mode, scale)
        out = h.reshape(-1, self.d_model) @ self.W_U
        if ln_mode == "recompute":
            out += self.b_U
        return out.reshape(h.shape[:-1] + (self.d_vocab,))

    def constant_logits(self) -> np.ndarray:
        """``b_ln @ W_U + b_U`` [d_vocab_out]: the part of the final logits that no residual
        component carries (what ``"cached"`` read-outs leave out)."""
        out = self.b_U.astype(np.float32).copy()
        if self.b is not None:
            out += self.b @ self.W_U
        return out


def _f32(x: Any) -> Optional[np.ndarray]:
    if x is None:
        return None
    return np.ascontiguousarray(np.asarray(x), dtype=np.float32)


__all__ = ["FinalReadout", "LN_MODES"]
