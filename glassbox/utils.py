"""Utilities mirroring ``transformer_lens.utils`` / ``transformer_lens.utilities``.

Array helpers accept NumPy arrays or torch tensors and answer in the kind they
were given (see :mod:`glassbox.arrays`). The main entry points:

* :func:`get_act_name` – shorthand ("k6", "scale4ln1", ("pattern", 0)) to full
  hook names such as ``blocks.6.attn.hook_k``.
* :func:`lm_cross_entropy_loss`, :func:`lm_accuracy` – next-token metrics.
* :class:`Slice` – TransformerLens's "slice that can keep a dim" helper.
* :func:`test_prompt` – prints how a model ranks an answer after a prompt.
"""
from __future__ import annotations

import math
import re
from typing import Any, Optional, Sequence, Union

import numpy as np

from glassbox.arrays import is_torch, like, to_numpy, wrap

USE_DEFAULT_VALUE = None
"""Sentinel meaning "use the model's default" (``None``, as in TransformerLens)."""

SliceInput = Optional[Union[int, tuple, slice, list, np.ndarray, Any]]

# ---------------------------------------------------------------------------------------------
# Hook names
# ---------------------------------------------------------------------------------------------
_LAYER_TYPE_ALIASES = {
    "a": "attn",
    "m": "mlp",
    "b": "",
    "block": "",
    "blocks": "",
    "attention": "attn",
}
_ACT_NAME_ALIASES = {
    "attn": "pattern",
    "attn_logits": "attn_scores",
    "key": "k",
    "query": "q",
    "value": "v",
    "mlp_pre": "pre",
    "mlp_mid": "mid",
    "mlp_post": "post",
}
_ATTN_ACTS = {"k", "v", "q", "z", "rot_k", "rot_q", "result", "pattern", "attn_scores"}
_MLP_ACTS = {"pre", "post", "mid", "pre_linear"}
_COMPACT = re.compile(r"([a-z]+)(\d+)([a-z]?.*)")


def get_act_name(
    name: str,
    layer: Optional[Union[int, str]] = None,
    layer_type: Optional[str] = None,
) -> str:
    """Full hook name from a shorthand.

    ``get_act_name("k", 6)`` → ``"blocks.6.attn.hook_k"``; ``get_act_name("k6")`` is the
    same; ``get_act_name("scale4ln1")`` → ``"blocks.4.ln1.hook_scale"``;
    ``get_act_name("embed")`` → ``"hook_embed"``; ``get_act_name("scale")`` →
    ``"ln_final.hook_scale"``. A name containing a dot or starting with ``hook_`` is
    returned as is when no layer/layer_type is given.
    """
    if layer is None and layer_type is None and ("." in name or name.startswith("hook_")):
        return name
    compact = _COMPACT.match(name)
    if compact is not None:
        name, layer, layer_type = compact.group(1), compact.group(2), compact.group(3)
    name = _ACT_NAME_ALIASES.get(name, name)
    if name in _ATTN_ACTS:
        layer_type = "attn"
    elif name in _MLP_ACTS:
        layer_type = "mlp"
    elif layer_type in _LAYER_TYPE_ALIASES:
        layer_type = _LAYER_TYPE_ALIASES[layer_type]
    parts = []
    if layer is not None:
        parts.append(f"blocks.{layer}")
    if layer_type:
        parts.append(str(layer_type))
    parts.append(f"hook_{name}")
    full = ".".join(parts)
    if name in ("scale", "normalized") and layer is None:
        full = "ln_final." + full
    return full


# ---------------------------------------------------------------------------------------------
# Array helpers
# ---------------------------------------------------------------------------------------------
def to_numpy_(x: Any) -> np.ndarray:  # pragma: no cover - alias kept private
    return to_numpy(x)


def remove_batch_dim(tensor: Any) -> Any:
    """Drop a leading batch dimension of size 1 (otherwise return unchanged)."""
    if tensor.shape[0] == 1:
        return tensor[0]
    return tensor


def get_corner(tensor: Any, n: int = 3) -> Any:
    """The top-left ``n`` x ... x ``n`` corner of an array (FactoredMatrix: of its AB)."""
    if hasattr(tensor, "AB") and not hasattr(tensor, "ndim"):
        tensor = tensor.AB
    return tensor[tuple(slice(n) for _ in range(tensor.ndim))]


def get_matrix_corner(tensor: Any, n: int = 3) -> Any:
    """Like :func:`get_corner`, also accepting a FactoredMatrix (uses ``get_corner``)."""
    if hasattr(tensor, "get_corner"):
        return tensor.get_corner(n)
    return get_corner(tensor, n)


def composition_scores(left: Any, right: Any, broadcast_dims: bool = True) -> Any:
    """Composition scores ``|L R|_F / (|L|_F |R|_F)`` of FactoredMatrix (or dense) circuits, e.g.
    ``composition_scores(model.OV, model.QK)`` -> ``[n_layers, n_heads, n_layers, n_heads]``.
    See :func:`glassbox.utilities.matrix.composition_scores`."""
    from glassbox.utilities.matrix import composition_scores as scores

    return scores(left, right, broadcast_dims=broadcast_dims)


def transpose(tensor: Any) -> Any:
    """Swap the last two dimensions."""
    if is_torch(tensor):
        return tensor.transpose(-1, -2)
    return np.swapaxes(tensor, -1, -2)


def get_cumsum_along_dim(tensor: Any, dim: int, reverse: bool = False) -> Any:
    """Cumulative sum along ``dim`` (from the end if ``reverse``)."""
    arr = to_numpy(tensor)
    if reverse:
        arr = np.flip(arr, axis=dim)
    out = np.cumsum(arr, axis=dim)
    if reverse:
        out = np.flip(out, axis=dim)
    return like(np.ascontiguousarray(out), tensor)


def get_offset_position_ids(past_kv_pos_offset: int, attention_mask: Any) -> Any:
    """Position ids for a (left-)padded batch: ``cumsum(mask) - 1`` clamped at 0,
    dropping the first ``past_kv_pos_offset`` columns."""
    mask = to_numpy(attention_mask).astype(np.int64)
    pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    return like(np.ascontiguousarray(pos[:, past_kv_pos_offset:]), attention_mask)


def gelu_new(x: Any) -> Any:
    """GPT-2's tanh approximation of GELU."""
    if is_torch(x):
        torch = __import__("torch")
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))
    x = np.asarray(x)
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * np.power(x, 3.0))))


def gelu_fast(x: Any) -> Any:
    """Faster GELU approximation (as in TransformerLens)."""
    if is_torch(x):
        torch = __import__("torch")
        return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))
    x = np.asarray(x)
    return 0.5 * x * (1.0 + np.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------
def _log_softmax_np(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def lm_cross_entropy_loss(
    logits: Any,
    tokens: Any,
    attention_mask: Any = None,
    per_token: bool = False,
) -> Any:
    """Next-token cross-entropy. ``logits`` [batch, pos, d_vocab], ``tokens`` [batch, pos].

    Returns the mean loss (0-d) over positions (and non-masked positions when
    ``attention_mask`` is given: a position counts if it and the next one are
    attended), or the per-token loss [batch, pos-1] if ``per_token``.
    """
    if is_torch(logits):
        torch = __import__("torch")
        tok = tokens if is_torch(tokens) else torch.as_tensor(np.asarray(tokens))
        tok = tok.to(device=logits.device, dtype=torch.int64)
        log_probs = torch.nn.functional.log_softmax(logits, dim=-1)
        lp = log_probs[..., :-1, :].gather(dim=-1, index=tok[..., 1:, None])[..., 0]
        if attention_mask is not None:
            m = attention_mask if is_torch(attention_mask) else torch.as_tensor(np.asarray(attention_mask))
            m = m.to(logits.device).bool()
            if tuple(m.shape) != tuple(tok.shape):
                raise ValueError(
                    f"attention_mask must have the same shape as tokens, got {tuple(m.shape)} and {tuple(tok.shape)}"
                )
            nxt = torch.logical_and(m[:, :-1], m[:, 1:])
            lp = lp.masked_fill(~nxt, 0.0)
            n = nxt.sum().item()
        else:
            n = lp.numel()
        if per_token:
            return -lp
        return -lp.sum() / n
    logits_np = to_numpy(logits)
    tok = to_numpy(tokens).astype(np.int64)
    log_probs = _log_softmax_np(logits_np[..., :-1, :])
    lp = np.take_along_axis(log_probs, tok[..., 1:, None], axis=-1)[..., 0]
    if attention_mask is not None:
        m = to_numpy(attention_mask).astype(bool)
        if m.shape != tok.shape:
            raise ValueError(
                f"attention_mask must have the same shape as tokens, got {m.shape} and {tok.shape}"
            )
        nxt = np.logical_and(m[:, :-1], m[:, 1:])
        lp = np.where(nxt, lp, 0.0)
        n = int(nxt.sum())
    else:
        n = lp.size
    if per_token:
        return (-lp).astype(np.float32)
    return np.asarray(-lp.sum() / n, dtype=np.float32)


def lm_accuracy(logits: Any, tokens: Any, per_token: bool = False) -> Any:
    """Top-1 next-token accuracy (scalar) or the per-token boolean [batch, pos-1]."""
    top = to_numpy(logits).argmax(-1)
    correct = top[:, :-1] == to_numpy(tokens)[:, 1:]
    if per_token:
        return like(correct, logits)
    return like(np.asarray(correct.sum() / correct.size, dtype=np.float32), logits)


# ---------------------------------------------------------------------------------------------
# Slice
# ---------------------------------------------------------------------------------------------
class Slice:
    """A slice along one axis that can keep or drop the axis.

    ``None`` → identity; ``int`` → index (drops the axis); ``tuple`` → ``slice(*t)``;
    ``slice`` as is; list / ndarray / tensor → gather those indices (keeps the axis).
    """

    def __init__(self, input_slice: SliceInput = None):
        if isinstance(input_slice, tuple):
            self.slice, self.mode = slice(*input_slice), "slice"
        elif isinstance(input_slice, (int, np.integer)) and not isinstance(input_slice, bool):
            self.slice, self.mode = int(input_slice), "int"
        elif isinstance(input_slice, slice):
            self.slice, self.mode = input_slice, "slice"
        elif isinstance(input_slice, (list, np.ndarray)) or is_torch(input_slice):
            self.slice, self.mode = to_numpy(input_slice), "array"
        elif input_slice is None:
            self.slice, self.mode = slice(None), "identity"
        else:
            raise ValueError(f"Invalid input_slice {input_slice}")

    def apply(self, tensor: Any, dim: int = 0) -> Any:
        """Apply the slice to axis ``dim`` (negative allowed)."""
        index = [slice(None)] * tensor.ndim
        sl = self.slice
        if self.mode == "array" and is_torch(tensor):
            sl = __import__("torch").as_tensor(sl, device=tensor.device)
        index[dim] = sl
        return tensor[tuple(index)]

    def indices(self, max_ctx: Optional[int] = None) -> np.ndarray:
        """The indices this slice selects on an axis of length ``max_ctx``."""
        if self.mode == "int":
            return np.array([self.slice], dtype=np.int64)
        if max_ctx is None:
            raise ValueError("max_ctx must be specified if slice is not an integer")
        return np.arange(max_ctx, dtype=np.int64)[self.slice]

    def __repr__(self) -> str:
        return f"Slice: {self.slice} Mode: {self.mode} "

    @classmethod
    def unwrap(cls, slice_input: Union["Slice", SliceInput]) -> "Slice":
        """Make a Slice; a bare int becomes ``[int]`` so the axis is kept."""
        if isinstance(slice_input, Slice):
            return slice_input
        if isinstance(slice_input, (int, np.integer)) and not isinstance(slice_input, bool):
            slice_input = [int(slice_input)]
        return cls(slice_input)


# ---------------------------------------------------------------------------------------------
# Tokenizer helpers (work with glassbox.tokenization.Tokenizer)
# ---------------------------------------------------------------------------------------------
def get_input_with_manually_prepended_bos(bos_token: Optional[str], input: Union[str, list]) -> Union[str, list]:
    """Prefix the BOS string to a string or to each string of a list."""
    if bos_token is None:
        return input
    if isinstance(input, str):
        return bos_token + input
    return [bos_token + s for s in input]


def get_attention_mask(tokenizer: Any, tokens: Any, prepend_bos: bool, padding_side: Optional[str] = None) -> Any:
    """1/0 mask of real tokens: trailing pads (right padding) or leading pads (left
    padding) are 0; with left padding a BOS equal to the pad id is kept."""
    tok = to_numpy(tokens).astype(np.int64)
    mask = np.ones_like(tok)
    if tokenizer is None:
        return like(mask, tokens)
    side = padding_side or tokenizer.padding_side
    not_pad = tok != tokenizer.pad_token_id
    if side == "right":
        trailing = np.flip(np.cumsum(np.flip(not_pad, -1), -1), -1) == 0
        mask[trailing] = 0
    else:
        leading = np.cumsum(not_pad, -1) == 0
        mask[leading] = 0
        if prepend_bos and tokenizer.bos_token_id == tokenizer.pad_token_id:
            pos = leading.sum(-1) - 1
            rows = np.arange(mask.shape[0])
            ok = pos >= 0
            mask[rows[ok], pos[ok]] = 1
    return like(mask, tokens)


def get_tokens_with_bos_removed(tokenizer: Any, tokens: Any, padding_side: Optional[str] = None) -> Any:
    """Remove the BOS of each row (position 0 for right padding; the first real BOS
    for left padding)."""
    if tokenizer.bos_token_id is None:
        return tokens
    side = padding_side or tokenizer.padding_side
    if side == "right":
        return tokens[..., 1:]
    tok = to_numpy(tokens)
    if tokenizer.bos_token_id == tokenizer.pad_token_id:
        leading = np.cumsum(tok != tokenizer.pad_token_id, -1) == 0
        bos_pos = leading.sum(-1) - 1
        bos_pos = np.maximum(bos_pos, 0)
    else:
        bos_pos = (tok == tokenizer.bos_token_id).argmax(-1)
    keep = np.ones(tok.shape, dtype=bool)
    keep[np.arange(tok.shape[0]), bos_pos] = False
    out = tok[keep].reshape(tok.shape[0], tok.shape[1] - 1)
    return like(np.ascontiguousarray(out), tokens)


class LocallyOverridenDefaults:
    """Context manager that temporarily overrides ``model.cfg.default_prepend_bos`` and
    ``model.tokenizer.padding_side``."""

    def __init__(self, model: Any, **overrides: Any):
        self.model = model
        self.prepend_bos = overrides.get("prepend_bos", USE_DEFAULT_VALUE)
        self.padding_side = overrides.get("padding_side", USE_DEFAULT_VALUE)
        self._saved: dict = {}

    def __enter__(self) -> "LocallyOverridenDefaults":
        # validate everything before changing anything: a rejected argument leaves the model as it was
        if self.padding_side is not None and self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")
        if self.prepend_bos is not None and not isinstance(self.prepend_bos, (bool, np.bool_)):
            raise ValueError(f"prepend_bos must be True, False or None, got {self.prepend_bos!r}")
        if self.prepend_bos is not None:
            self._saved["prepend_bos"] = self.model.cfg.default_prepend_bos
            self.model.cfg.default_prepend_bos = bool(self.prepend_bos)
        tok = getattr(self.model, "tokenizer", None)
        if self.padding_side is not None and tok is not None:
            self._saved["padding_side"] = tok.padding_side
            tok.padding_side = self.padding_side
        return self

    def __exit__(self, *exc: Any) -> None:
        if "prepend_bos" in self._saved:
            self.model.cfg.default_prepend_bos = self._saved["prepend_bos"]
        if "padding_side" in self._saved:
            self.model.tokenizer.padding_side = self._saved["padding_side"]


def override_or_use_default_value(default_flag: Any, override: Optional[Any] = None) -> Any:
    """``override`` if it is not None, else ``default_flag``."""
    return default_flag if override is None else override


# ---------------------------------------------------------------------------------------------
# Exploratory
# ---------------------------------------------------------------------------------------------
def test_prompt(
    prompt: str,
    answer: Union[str, Sequence[str]],
    model: Any,
    prepend_space_to_answer: bool = True,
    print_details: bool = True,
    prepend_bos: Optional[bool] = None,
    top_k: int = 10,
) -> None:
    """Print how the model ranks ``answer`` after ``prompt`` (rank, logit, probability per
    answer token, the top-k alternatives, and the list of ranks). Returns None."""
    answers = [answer] if isinstance(answer, str) else list(answer)
    n_answers = len(answers)
    multi = n_answers > 1
    if prepend_space_to_answer:
        answers = [a if a.startswith(" ") else " " + a for a in answers]
    prompt_tokens = to_numpy(model.to_tokens(prompt, prepend_bos=prepend_bos)).astype(np.int64)
    answer_str_lists = [model.to_str_tokens(a, prepend_bos=False) for a in answers]
    answer_tok_lists = [to_numpy(model.to_tokens(a, prepend_bos=False))[0].astype(np.int64) for a in answers]
    if multi:
        answer_tok_lists = [t[:1] for t in answer_tok_lists]
    answer_len = 1 if multi else len(answer_tok_lists[0])
    rows = [np.concatenate([prompt_tokens[0], t[:answer_len]]) for t in answer_tok_lists]
    tokens = np.stack(rows)
    prompt_str = model.to_str_tokens(prompt, prepend_bos=prepend_bos)
    prompt_len = len(prompt_str)
    if print_details:
        print("Tokenized prompt:", prompt_str)
        if multi:
            print("Tokenized answers:", answer_str_lists)
        else:
            print("Tokenized answer:", answer_str_lists[0])
    logits = to_numpy(model(tokens)).astype(np.float64)
    logits_shift = logits - logits.max(-1, keepdims=True)
    probs = np.exp(logits_shift)
    probs /= probs.sum(-1, keepdims=True)
    answer_ranks = []
    for index in range(prompt_len, prompt_len + answer_len):
        ans_tok = tokens[:, index]
        ans_str = [a[index - prompt_len] for a in answer_str_lists]
        tp = probs[:, index - 1]
        order = np.argsort(-tp, axis=-1, kind="stable")
        ranks = [int(np.where(order[i] == ans_tok[i])[0][0]) for i in range(n_answers)]
        answer_ranks.append(list(zip(ans_str, ranks)))
        if print_details:
            _rich_print(f"Performance on answer token{'s' if multi else ''}:\n" + "\n".join(
                f"[b]Rank: {ranks[i]: <8} Logit: {logits[i, index - 1, ans_tok[i]]:5.2f} "
                f"Prob: {tp[i, ans_tok[i]]:6.2%} Token: |{ans_str[i]}|[/b]" for i in range(n_answers)))
            for k in range(top_k):
                tok_id = int(order[0, k])
                print(
                    f"Top {k}th token. Logit: {logits[0, index - 1, tok_id]:5.2f} "
                    f"Prob: {tp[0, tok_id]:6.2%} Token: |{model.to_string(tok_id)}|"
                )
    shown = answer_ranks if multi else [step[0] for step in answer_ranks]
    _rich_print(f"[b]Ranks of the answer tokens:[/b] {shown}")


def _rich_print(text: str) -> None:
    """Print with ``rich`` when it is installed (bold markup, wrapping at the console width, as
    TransformerLens's test_prompt prints), else plainly without the markup."""
    try:
        from rich import print as rprint
    except ImportError:
        print(re.sub(r"\[/?b\]", "", text))
    else:
        rprint(text)


__all__ = [
    "USE_DEFAULT_VALUE",
    "Slice",
    "SliceInput",
    "LocallyOverridenDefaults",
    "get_act_name",
    "to_numpy",
    "remove_batch_dim",
    "get_corner",
    "get_matrix_corner",
    "transpose",
    "composition_scores",
    "get_cumsum_along_dim",
    "get_offset_position_ids",
    "gelu_new",
    "gelu_fast",
    "lm_cross_entropy_loss",
    "lm_accuracy",
    "get_attention_mask",
    "get_input_with_manually_prepended_bos",
    "get_tokens_with_bos_removed",
    "override_or_use_default_value",
    "test_prompt",
]


def sample_logits(final_logits: Any, top_k: Optional[int] = None, top_p: Optional[float] = None,
                  temperature: float = 1.0, freq_penalty: float = 0.0,
                  repetition_penalty: float = 1.0, tokens: Any = None) -> Any:
    """Next token ids [batch] from final-position logits [batch, d_vocab], TransformerLens's
    ``sample_logits`` (``temperature=0`` is greedy). torch logits: drawn with torch's RNG exactly
    as TransformerLens draws; NumPy logits: a NumPy draw. See :mod:`glassbox.sampling`."""
    from glassbox.sampling import sample_logits as _sample

    return _sample(final_logits, top_k=top_k, top_p=top_p, temperature=temperature,
                   freq_penalty=freq_penalty, repetition_penalty=repetition_penalty, tokens=tokens)


def solu(x: Any) -> Any:
    """SoLU activation: ``x * softmax(x)`` over the last axis."""
    if is_torch(x):
        return x * x.softmax(dim=-1)
    a = np.asarray(x, dtype=np.float64)
    e = np.exp(a - a.max(-1, keepdims=True))
    return (a * e / e.sum(-1, keepdims=True)).astype(np.asarray(x).dtype)


# The rest of TransformerLens's utilities, one module per topic (glassbox.utilities.*).
from glassbox.utilities.devices import get_device, print_gpu_mem, warn_if_mps  # noqa: E402
from glassbox.utilities.hub_utils import (  # noqa: E402
    clear_huggingface_cache, download_file_from_hf, get_dataset, is_library_available)
from glassbox.utilities.initialization import (  # noqa: E402
    calc_fan_in_and_fan_out, init_kaiming_normal_, init_kaiming_uniform_, init_xavier_normal_,
    init_xavier_uniform_)
from glassbox.utilities.tensors import (  # noqa: E402
    check_structure, filter_dict_by_prefix, get_nested_attr, is_lower_triangular, is_square,
    repeat_along_head_dimension, set_nested_attr)
from glassbox.utilities.tokenize_utils import (  # noqa: E402
    get_tokenizer_with_bos, keep_single_column, tokenize_and_concatenate)

__all__ += [
    "solu", "sample_logits", "get_device", "print_gpu_mem", "warn_if_mps", "clear_huggingface_cache",
    "download_file_from_hf", "get_dataset", "is_library_available", "calc_fan_in_and_fan_out",
    "init_kaiming_normal_", "init_kaiming_uniform_", "init_xavier_normal_", "init_xavier_uniform_",
    "check_structure", "filter_dict_by_prefix", "get_nested_attr", "is_lower_triangular", "is_square",
    "repeat_along_head_dimension", "set_nested_attr", "get_tokenizer_with_bos", "keep_single_column",
    "tokenize_and_concatenate",
]
