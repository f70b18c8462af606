"""Logit lens and activation lens: read any d_model activation through the model's own
``ln_final`` and unembedding.

* :func:`logit_lens` — the residual stream at every layer (``resid_pre`` / ``resid_mid`` /
  ``resid_post``, or TransformerLens's ``accumulated_resid`` stack), each vector normalised by
  ln_final with its own statistics ("what would the model say if it stopped here?").
* :func:`component_lens` — what each component writes: ``attn_out``, ``mlp_out``, every head
  (``stack_head_results``; query heads for GQA) or the full ``decompose_resid``; by default their
  direct contribution to the final logits (divided by the final residual's cached
  ``ln_final.hook_scale``, as TransformerLens's ``apply_ln_to_stack`` / ``logit_attrs``).
* :func:`activation_lens` — any stack of d_model vectors you computed (a patched residual, a
  steering vector added to the stream, …).

Each returns a :class:`LensResult`: top-k tokens with probabilities, the probability, log-prob,
logit and rank of target tokens, entropy and ``KL(final || lens)`` at every component and
position, as arrays (NumPy, or torch for torch-mode caches), a readable table (``repr``, and HTML in
Jupyter), ``to_dict()`` / ``to_records()``, and matplotlib plots (``plot_heatmap``,
``plot_lines``, ``plot_heads``) that return the Figure.

The read-out is the model's (:class:`FinalReadout`): for RMSNorm models ln_final's gain is applied
exactly as the model applies it — folded into ``W_U`` after ``from_pretrained``, applied from
``ln_final.w`` after ``from_pretrained_no_processing``, and through the virtual processing of
stored-dtype (bf16/f16, GGUF) weights — so the lens at the final ``resid_post`` gives the model's
logits.

Example:
    >>> import glassbox
    >>> model = glassbox.HookedTransformer.from_pretrained("gpt2")           # doctest: +SKIP
    >>> tokens = model.to_tokens("When Mary and John went to the store, John gave a drink to")  # doctest: +SKIP
    >>> logits, cache = model.run_with_cache(tokens)                         # doctest: +SKIP
    >>> res = glassbox.lens.logit_lens(cache, tokens, target=" Mary")        # doctest: +SKIP
    >>> res                                  # table at the last position     # doctest: +SKIP
    >>> res.target_ranks[-1, 0, -1, 0]       # rank 0 at final_post: the model's top token  # doctest: +SKIP
    >>> fig = res.plot_heatmap("prob")                                       # doctest: +SKIP
    >>> heads = glassbox.lens.component_lens(cache, tokens, " Mary", components="heads", pos_slice=-1)  # doctest: +SKIP
"""
from glassbox.lens.api import activation_lens, component_lens, logit_lens
from glassbox.lens.plots import plot_lens_heads, plot_lens_heatmap, plot_lens_lines
from glassbox.lens.readout import FinalReadout
from glassbox.lens.result import LensResult

__all__ = [
    "logit_lens",
    "component_lens",
    "activation_lens",
    "LensResult",
    "FinalReadout",
    "plot_lens_heatmap",
    "plot_lens_lines",
    "plot_lens_heads",
]
