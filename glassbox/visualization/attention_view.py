"""Interactive attention-pattern view: one self-contained HTML fragment (Jupyter) or page (file).

>>> logits, cache = model.run_with_cache(tokens)                          # doctest: +SKIP
>>> view = glassbox.visualization.attention_view(cache, tokens)           # doctest: +SKIP
>>> view                         # renders in Jupyter: layer/head selectors, heatmap, head grid  # doctest: +SKIP
>>> view.save("attention.html")  # a standalone page; open attention.html#layer=5&head=1   # doctest: +SKIP

Everything the page needs is inlined (CSS, our own JavaScript, the data); it makes no network
request and works offline. Weights are embedded rounded to ``digits`` decimals (default 3) as
varints (see :mod:`glassbox.visualization.attention_data`): a GPT-2-shaped view (12 layers x 12
heads x 64 tokens, causal) is about 0.45 MB at 3 digits.
"""
from __future__ import annotations

import html
import json
import uuid
import warnings
from pathlib import Path
from typing import Any, List, Optional, Sequence, Union

import numpy as np

from glassbox.arrays import is_torch, to_numpy
from glassbox.visualization import _attention_assets as assets
from glassbox.visualization.attention_data import check_patterns, encode, patterns_from_array, patterns_from_cache

#: warn when a page would be larger than this
WARN_BYTES = 32 * 1024 * 1024


def _json_for_script(obj: Any) -> str:
    """JSON that is safe inside ``<script type="application/json">``: no ``<``, ``>``, ``&`` (so no
    ``</script>`` or ``<!--``) and ASCII only (no U+2028/U+2029)."""
    text = json.dumps(obj, ensure_ascii=True, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _str_tokens(tokens: Any, model: Any, batch: int, n_keys: int) -> List[str]:
    if tokens is None:
        return [str(i) for i in range(n_keys)]
    if isinstance(tokens, (list, tuple)) and all(isinstance(t, str) for t in tokens) and len(tokens) == n_keys:
        return list(tokens)
    if isinstance(tokens, str) or is_torch(tokens) or isinstance(tokens, np.ndarray) or (
            isinstance(tokens, (list, tuple)) and tokens and all(isinstance(t, (int, np.integer)) for t in tokens)):
        has_tok = model is not None and getattr(model, "tokenizer", None) is not None
        if isinstance(tokens, str):
            if not has_tok:
                raise ValueError("tokens given as text need a model with a tokenizer (model=...); or pass a list of strings")
            return list(model.to_str_tokens(tokens))
        ids = np.asarray(to_numpy(tokens))
        if ids.ndim == 2:
            if not -ids.shape[0] <= batch < ids.shape[0]:
                raise ValueError(f"batch={batch} is out of range for tokens of shape {tuple(ids.shape)}")
            ids = ids[batch]
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"tokens must be ids [pos] / [batch, pos], text or a list of strings, got shape {tuple(ids.shape)}")
        if len(ids) != n_keys:
            raise ValueError(f"tokens has {len(ids)} ids for {n_keys} key positions")
        return list(model.to_str_tokens(ids)) if has_tok else [str(int(i)) for i in ids]
    if isinstance(tokens, (list, tuple)):
        raise ValueError(f"tokens must have one string per key position ({n_keys}), got {len(tokens)} items")
    raise TypeError(f"tokens must be a list of strings, ids, text or None, got {type(tokens).__name__}")


class AttentionView:
    """Attention patterns [layer, head, query, key] with their tokens, shown as an interactive
    page (``_repr_html_`` in Jupyter, :meth:`save` for a file) or as matplotlib figures
    (:meth:`plot`, :meth:`plot_heads`).

    Attributes:
        patterns: float32 [n_layers, n_heads, n_queries, n_keys] (as given, NaN → 0).
        tokens: one string per key position (queries are the last ``n_queries`` of them).
        layers: the layer number of each entry of ``patterns``.
        head_labels: per layer, TransformerLens's head names ``"L{l}H{h}"`` (query heads for
            grouped-query attention; ``kv_group`` query heads share a key/value head).
    """

    def __init__(
        self,
        patterns: np.ndarray,
        tokens: Sequence[str],
        layers: Sequence[int],
        *,
        kv_group: int = 1,
        head_labels: Optional[Sequence[Sequence[str]]] = None,
        layer: Optional[int] = None,
        head: int = 0,
        digits: int = 3,
        title: Optional[str] = None,
    ):
        self.patterns = check_patterns(np.asarray(patterns, np.float32))
        n_l, n_h, n_q, n_k = self.patterns.shape
        self.tokens = [str(t) for t in tokens]
        if len(self.tokens) != n_k:
            raise ValueError(f"tokens has {len(self.tokens)} strings but the patterns have {n_k} key positions")
        self.layers = [int(l) for l in layers]
        if len(self.layers) != n_l:
            raise ValueError(f"layers names {len(self.layers)} layers for {n_l} patterns")
        if head_labels is None:
            head_labels = [[f"L{l}H{h}" for h in range(n_h)] for l in self.layers]
        self.head_labels = [[str(s) for s in row] for row in head_labels]
        if len(self.head_labels) != n_l or any(len(r) != n_h for r in self.head_labels):
            raise ValueError(f"head_labels must be {n_l} lists of {n_h} names")
        if not isinstance(kv_group, (int, np.integer)) or kv_group < 1 or n_h % kv_group:
            raise ValueError(f"kv_group must divide n_heads={n_h}, got {kv_group!r}")
        self.kv_group = int(kv_group)
        self.digits = digits
        self._enc = encode(self.patterns, digits)  # validates digits
        self.title = title
        self.layer, self.head = self._check_selection(self.layers[0] if layer is None else layer, head)

    def _check_selection(self, layer: Any, head: Any) -> tuple:
        if not isinstance(layer, (int, np.integer)) or int(layer) not in self.layers:
            raise ValueError(f"layer must be one of the view's layers {self.layers}, got {layer!r}")
        n_h = self.patterns.shape[1]
        if not isinstance(head, (int, np.integer)) or not 0 <= int(head) < n_h:
            raise ValueError(f"head must be in [0, {n_h}), got {head!r}")
        return int(layer), int(head)

    # -- HTML -------------------------------------------------------------------------------
    def _payload(self, layer: int, head: int) -> dict:
        n_l, n_h, n_q, n_k = self.patterns.shape
        return {"v": 1, "title": self.title, "tokens": self.tokens, "layers": self.layers, "heads": n_h,
                "headLabels": self.head_labels, "kvGroup": self.kv_group, "nq": n_q, "nk": n_k,
                "digits": self.digits, "init": {"layer": self.layers.index(layer), "head": head}, **self._enc}

    def to_html(self, standalone: bool = False, layer: Optional[int] = None, head: Optional[int] = None) -> str:
        """The view as HTML: a fragment with a fresh element id (for notebooks), or with
        ``standalone=True`` a complete page. ``layer``/``head`` override the initial selection
        (a ``#layer=L&head=H`` address fragment overrides both when the page loads)."""
        layer, head = self._check_selection(self.layer if layer is None else layer, self.head if head is None else head)
        rid = "gbav-" + uuid.uuid4().hex[:12]
        data = _json_for_script(self._payload(layer, head))
        fragment = (
            f'<div class="gbav-wrap">'
            f"<style>{assets.CSS.replace('__ROOT__', rid)}</style>"
            f'<div id="{rid}"><div class="gbav-hint">Attention view ({len(self.layers)} layers x '
            f"{self.patterns.shape[1]} heads, {len(self.tokens)} tokens): it needs JavaScript — in Jupyter, "
            f"trust the notebook to see it.</div></div>"
            f'<script type="application/json" id="{rid}-data">{data}</script>'
            f"<script>{assets.JS.replace('__ROOT__', rid)}</script>"
            f"</div>"
        )
        if not standalone:
            return fragment
        title = html.escape(self.title or "attention patterns")
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
                f'<meta name="viewport" content="width=device-width, initial-scale=1"></head>'
                f"<body style=\"margin:12px\">{fragment}</body></html>\n")

    def _repr_html_(self) -> str:
        return self.to_html(standalone=False)

    def save(self, path: Union[str, Path]) -> Path:
        """Write a standalone ``.html`` page (works offline). Returns the path."""
        path = Path(path)
        text = self.to_html(standalone=True)
        path.write_text(text, encoding="utf-8")
        return path

    @property
    def html_size(self) -> int:
        """Size in bytes of the standalone page."""
        return len(self.to_html(standalone=True).encode("utf-8"))

    def __repr__(self) -> str:
        n_l, n_h, n_q, n_k = self.patterns.shape
        return (f"AttentionView({n_l} layers x {n_h} heads, {n_q} queries x {n_k} keys, digits={self.digits}, "
                f"{self.html_size / 1e6:.2f} MB as HTML; show it in Jupyter or .save(path))")

    # -- static figures ---------------------------------------------------------------------
    def _index(self, layer: Optional[int]) -> int:
        layer = self.layer if layer is None else layer
        if not isinstance(layer, (int, np.integer)) or int(layer) not in self.layers:
            raise ValueError(f"layer must be one of the view's layers {self.layers}, got {layer!r}")
        return self.layers.index(int(layer))

    def plot(self, layer: Optional[int] = None, head: Optional[int] = None, **kwargs: Any) -> Any:
        """One head's pattern as a matplotlib heatmap (see :func:`plot_attention_pattern`)."""
        from glassbox.visualization.attention_plots import plot_attention_pattern

        li = self._index(layer)
        head = self.head if head is None else head
        _, head = self._check_selection(self.layers[li], head)
        kwargs.setdefault("title", self.head_labels[li][head])
        return plot_attention_pattern(self.patterns[li, head], self.tokens, **kwargs)

    def plot_heads(self, layer: Optional[int] = None, **kwargs: Any) -> Any:
        """Every head of one layer as a grid of heatmaps (see :func:`plot_attention_heads`)."""
        from glassbox.visualization.attention_plots import plot_attention_heads

        li = self._index(layer)
        kwargs.setdefault("head_labels", self.head_labels[li])
        kwargs.setdefault("title", f"layer {self.layers[li]}")
        return plot_attention_heads(self.patterns[li], self.tokens, **kwargs)


def attention_view(
    source: Any,
    tokens: Any = None,
    *,
    model: Any = None,
    layers: Optional[Sequence[int]] = None,
    batch: int = 0,
    layer: Optional[int] = None,
    head: int = 0,
    digits: int = 3,
    title: Optional[str] = None,
) -> AttentionView:
    """An interactive view of attention patterns.

    Args:
        source: an :class:`~glassbox.ActivationCache` (its ``blocks.{l}.attn.hook_pattern``
            entries), or patterns as an array [layer, head, query_pos, key_pos] /
            [head, query_pos, key_pos] or a list of per-layer [head, query_pos, key_pos] (NumPy or
            torch).
        tokens: a list of token strings (one per key position), token ids ([pos] or
            [batch, pos]) or the text; ids and text are decoded with ``model`` (default: the
            cache's model; ids are shown as numbers when there is no tokenizer). None: positions
            are labelled by number.
        model: the model, for decoding tokens and for grouped-query attention labels.
        layers: which layers to include (default: every layer in the cache / array).
        batch: which batch item of a batched cache.
        layer, head: the initial selection (layer = layer number; default the first shown).
        digits: decimals kept per weight (1-5; 3 is 0.001 resolution).
        title: shown above the view and as the page title.

    Heads are the query heads, labelled as TransformerLens does (``"L{l}H{h}"``); for grouped-query
    attention the tooltip adds the key/value head they share.

    Returns:
        an :class:`AttentionView`.
    """
    if hasattr(source, "cache_dict") and hasattr(source, "model"):
        model = model if model is not None else source.model
        arr, layer_ids = patterns_from_cache(source, layers, batch)
    else:
        arr, layer_ids = patterns_from_array(source)
        if layers is not None:
            layers = [layers] if isinstance(layers, (int, np.integer)) else list(layers)
            bad = [l for l in layers if not isinstance(l, (int, np.integer)) or not 0 <= int(l) < arr.shape[0]]
            if bad:
                raise ValueError(f"layers must index the {arr.shape[0]} layers of the patterns, got {bad}")
            arr, layer_ids = arr[[int(l) for l in layers]], [int(l) for l in layers]
    kv_group = 1
    cfg = getattr(model, "cfg", None)
    if cfg is not None and getattr(cfg, "n_key_value_heads", None) and cfg.n_heads == arr.shape[1]:
        kv_group = cfg.n_heads // cfg.n_key_value_heads
    str_toks = _str_tokens(tokens, model, batch, arr.shape[-1])
    view = AttentionView(arr, str_toks, layer_ids, kv_group=kv_group, layer=layer, head=head, digits=digits, title=title)
    size = len(view._enc["data"])
    if size > WARN_BYTES:
        warnings.warn(f"the attention view embeds {size / 1e6:.0f} MB of data; select fewer layers (layers=...) "
                      f"or a shorter sequence", UserWarning, stacklevel=2)
    return view


__all__ = ["AttentionView", "attention_view"]
