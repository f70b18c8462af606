"""TransformerLens weight processing for models whose matrices stay in their stored dtype.

``from_pretrained`` processes weights by default (``fold_ln``, ``center_writing_weights``,
``center_unembed``, ``fold_value_biases``). TransformerLens does this by rewriting the weight
matrices. A model loaded with ``dtype="bfloat16"``/``"float16"``/``"auto"`` (or from GGUF) keeps
its matrices as :class:`~glassbox.loading.stored.StoredMatrix` — bf16/f16 rows or quantised blocks
read in place by the C engine — and rewriting them would need float32 copies (2x the memory) or
re-rounding (a precision loss TransformerLens itself warns about). Instead the processing is
*virtual*: the model computes exactly what TransformerLens's processed model computes, and every
TransformerLens-facing accessor shows the processed weights, while the stored matrices are never
edited:

* ``fold_ln`` (RMSNorm models): folding only moves each norm's gain ``w`` into the matrices that
  read the norm's output (``W_Q, W_K, W_V`` for ln1, ``W_in, W_gate`` for ln2, ``W_U`` for
  ln_final), and ``hook_normalized`` is ``x / scale`` *before* the gain in both the ``RMS`` and
  the ``RMSPre`` module, so hooks see the same values either way. The gains are therefore kept
  aside and handed to the engine, which still runs an ``RMS`` norm, while ``cfg.normalization_type``
  says ``"RMSPre"`` (as after TransformerLens's processing), the norm modules have no parameters,
  and ``W_Q``, ``blocks[l].attn.W_Q``, ``state_dict()`` … return the folded product
  ``w[:, None] * W`` (a float32 copy).
* ``center_writing_weights``: skipped for RMSNorm models, as in TransformerLens.
* ``center_unembed``: the engine subtracts each position's mean over the vocabulary from the
  logits (``center_unembed_logits``) — exactly the per-position shift that TransformerLens's
  centred ``W_U`` produces; ``W_U`` reads back centred over the vocabulary, ``b_U`` (small,
  float32) is centred for real.
* ``fold_value_biases``: works on the small float32 biases: ``b_O += sum_h b_V[h] @ W_O[h]`` with
  ``W_O`` dequantised once per layer at load, then ``b_V = 0`` (Qwen2 has value biases).
* ``refactor_factored_attn_matrices``: refused (it rewrites W_Q/W_K/W_V/W_O; and for rotary models
  TransformerLens refuses it too).

LayerNorm models (GPT-2) are always loaded as float32 and processed for real.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from .processing import RotaryRefactorError
from .shapes import cfg_get
from .stored import StoredMatrix

__all__ = ["VirtualProcessing", "process_weights_virtual", "has_stored"]

#: which norm feeds which matrix, and the TL axis carrying d_model
_READERS = {
    "ln1": (("attn.W_Q", 1), ("attn.W_K", 1), ("attn.W_V", 1), ("attn._W_K", 1), ("attn._W_V", 1)),
    "ln2": (("mlp.W_in", 0), ("mlp.W_gate", 0)),
}
_KINDS = {"W_Q": "heads_in", "W_K": "heads_in", "W_V": "heads_in", "_W_K": "heads_in",
          "_W_V": "heads_in", "W_O": "heads_out", "W_in": "transposed", "W_gate": "transposed",
          "W_out": "transposed", "W_U": "transposed", "W_E": "table"}


def has_stored(sd: Mapping[str, Any]) -> bool:
    """True if any entry of the state dict is a :class:`StoredMatrix`."""
    return any(isinstance(v, StoredMatrix) for v in sd.values())


@dataclass
class VirtualProcessing:
    """What virtual weight processing did, for the engine and for the TL-facing accessors.

    Attributes:
        norm_weights: the folded norm gains (``"blocks.{l}.ln1.w"``, ``"ln_final.w"``, …),
            passed to the engine, which keeps running ``RMS`` norms.
        scales: ``{TL parameter name: (norm weight name, d_model axis)}``: the TL view of that
            stored matrix is multiplied by the gain along that axis.
        center_unembed: the engine centres the logits over the vocabulary and ``W_U`` reads back
            centred.
    """

    norm_weights: Dict[str, np.ndarray] = field(default_factory=dict)
    scales: Dict[str, Tuple[str, int]] = field(default_factory=dict)
    center_unembed: bool = False

    @property
    def engine_normalization_type(self) -> Optional[str]:
        """``"RMS"`` when block norms were folded virtually, else None (use the cfg's)."""
        return "RMS" if any(".ln1." in k or ".ln2." in k for k in self.norm_weights) else None

    @property
    def engine_final_normalization_type(self) -> Optional[str]:
        return "RMS" if "ln_final.w" in self.norm_weights else None

    def copy(self) -> "VirtualProcessing":
        return VirtualProcessing(dict(self.norm_weights), dict(self.scales), self.center_unembed)

    def view(self, name: str, value: Any) -> np.ndarray:
        """The TL-layout float32 value of parameter ``name`` as processing defines it (a copy for
        a :class:`StoredMatrix`; arrays are returned as they are)."""
        if not isinstance(value, StoredMatrix):
            return value
        arr = value.to_tl()
        spec = self.scales.get(name)
        if spec is not None:
            w_name, axis = spec
            shape = [1] * arr.ndim
            shape[axis] = -1
            arr *= self.norm_weights[w_name].reshape(shape)
        if self.center_unembed and name == "unembed.W_U":
            arr -= arr.mean(-1, keepdims=True)
        return arr


def _as_stored(sd: Dict[str, Any], name: str, cfg: Any) -> None:
    """Make ``sd[name]`` a StoredMatrix (a float32 one if it was an array) so it can be scaled
    virtually alongside the stored ones."""
    v = sd[name]
    if isinstance(v, StoredMatrix):
        return
    leaf = name.rsplit(".", 1)[-1]
    kind = _KINDS[leaf]
    heads = np.shape(v)[0] if kind in ("heads_in", "heads_out") else 0
    sd[name] = StoredMatrix.from_tl(np.asarray(v, dtype=np.float32), kind, heads)


def process_weights_virtual(
    sd: Mapping[str, Any],
    cfg: Any,
    fold_ln: bool = True,
    center_writing_weights: bool = True,
    center_unembed: bool = True,
    fold_value_biases: bool = True,
    refactor_factored_attn_matrices: bool = False,
    base: Optional[VirtualProcessing] = None,
) -> Tuple[Dict[str, Any], Dict[str, Any], VirtualProcessing]:
    """TL's ``from_pretrained`` processing without editing stored matrices (module docstring).

    Returns ``(state_dict, updated_cfg_fields, virtual)``: the state dict holds the same
    StoredMatrix objects (never modified) and new float32 biases; ``updated_cfg_fields`` is
    ``{"normalization_type": "RMSPre"}`` after folding; ``virtual`` tells the engine and the
    accessors what was folded. ``base``: the virtual processing already applied (re-processing).

    Raises:
        RotaryRefactorError: ``refactor_factored_attn_matrices`` on a rotary model.
        ValueError: ``refactor_factored_attn_matrices`` otherwise, or ``fold_ln`` /
            ``center_writing_weights`` on a LayerNorm model (not representable virtually).
    """
    norm = cfg_get(cfg, "normalization_type", "RMS")
    if refactor_factored_attn_matrices:
        if cfg_get(cfg, "positional_embedding_type", "standard") == "rotary":
            raise RotaryRefactorError(
                "refactor_factored_attn_matrices=True is not possible for a rotary model: "
                "with rotary embeddings the QK circuit depends on the query and key positions, "
                "so W_Q @ W_K^T cannot be re-factored (TransformerLens refuses it as well)")
        raise ValueError("refactor_factored_attn_matrices=True rewrites W_Q/W_K/W_V/W_O, which are "
                         "kept in their stored dtype; load with dtype='float32' to use it")
    if norm in ("LN", "LNPre") and (fold_ln or center_writing_weights):
        raise ValueError("virtual weight processing supports RMSNorm models only; load LayerNorm "
                         "models with dtype='float32'")
    out: Dict[str, Any] = dict(sd)
    virtual = base.copy() if base is not None else VirtualProcessing()
    updated: Dict[str, Any] = {}
    L = int(cfg_get(cfg, "n_layers"))

    if fold_ln and norm == "RMS" and any(k.endswith((".ln1.w", ".ln2.w", "ln_final.w")) for k in out):
        for l in range(L):
            for ln, readers in _READERS.items():
                w_name = f"blocks.{l}.{ln}.w"
                w = out.pop(w_name, None)
                if w is None:
                    continue
                virtual.norm_weights[w_name] = np.ascontiguousarray(w, dtype=np.float32)
                for suffix, axis in readers:
                    name = f"blocks.{l}.{suffix}"
                    if name in out:
                        _as_stored(out, name, cfg)
                        virtual.scales[name] = (w_name, axis)
        w = out.pop("ln_final.w", None)
        if w is not None:
            virtual.norm_weights["ln_final.w"] = np.ascontiguousarray(w, dtype=np.float32)
            _as_stored(out, "unembed.W_U", cfg)
            virtual.scales["unembed.W_U"] = ("ln_final.w", 0)
        updated["normalization_type"] = "RMSPre"

    if center_unembed and not virtual.center_unembed:
        softcap = cfg_get(cfg, "output_logits_soft_cap", -1.0)
        if softcap is None or float(softcap) <= 0:
            _as_stored(out, "unembed.W_U", cfg)
            virtual.center_unembed = True
            if "unembed.b_U" in out:
                b_U = np.asarray(out["unembed.b_U"], dtype=np.float32)
                out["unembed.b_U"] = b_U - b_U.mean()

    if fold_value_biases:
        H = int(cfg_get(cfg, "n_heads"))
        for l in range(L):
            p = f"blocks.{l}.attn."
            kb = p + "_b_V" if p + "_b_V" in out else p + "b_V"
            if kb not in out:
                continue
            b_V = np.asarray(out[kb], dtype=np.float32)
            if not b_V.any():
                continue
            W_O = out[p + "W_O"]
            W_O = W_O.to_tl() if isinstance(W_O, StoredMatrix) else np.asarray(W_O, np.float32)
            b_rep = np.repeat(b_V, H // b_V.shape[0], axis=0)
            b_O = np.asarray(out.get(p + "b_O", np.zeros(W_O.shape[-1], np.float32)), dtype=np.float32)
            out[p + "b_O"] = (b_O + np.einsum("hd,hdm->m", b_rep, W_O)).astype(np.float32)
            out[kb] = np.zeros_like(b_V)
            del W_O
    return out, updated, virtual
