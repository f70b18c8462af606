"""Visualisation of attention patterns: an interactive self-contained HTML view and static
matplotlib heatmaps.

* :func:`attention_view` → :class:`AttentionView`: layer and head selectors, the selected head's
  pattern with the tokens on both axes (queries as rows, keys as columns), the weight and the
  (query token, key token) pair on hover, and a grid of every head of the layer (click one to
  select it). It renders inline in Jupyter (``_repr_html_``) and ``.save(path)`` writes a
  standalone page; all CSS/JavaScript is inlined (no network).
* :func:`plot_attention_pattern` (one head) and :func:`plot_attention_heads` (a layer's heads)
  return matplotlib Figures.

Example:
    >>> logits, cache = model.run_with_cache(tokens)                           # doctest: +SKIP
    >>> from glassbox.visualization import attention_view
    >>> view = attention_view(cache, tokens, layer=5, head=1)                  # doctest: +SKIP
    >>> view.save("attention.html")                                            # doctest: +SKIP
    >>> view.plot_heads(5).savefig("layer5.png")                               # doctest: +SKIP
"""
from glassbox.visualization.attention_plots import plot_attention_heads, plot_attention_pattern
from glassbox.visualization.attention_view import AttentionView, attention_view

__all__ = ["attention_view", "AttentionView", "plot_attention_pattern", "plot_attention_heads"]
