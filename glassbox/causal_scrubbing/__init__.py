"""Causal scrubbing (Chan, Garriga-Alonso, Goldowsky-Dill, Greenblatt, Nitishinskaya,
Radhakrishnan, Shlegeris, Thomas 2022): test an interpretability hypothesis by resampling
every activation it says is irrelevant, and measure how much of the metric survives.

A :class:`Hypothesis` is a tree of :class:`Node` objects on TransformerLens hook points
(``blocks.1.attn.hook_z`` with ``head=``, ``blocks.0.hook_mlp_out``, ``blocks.2.hook_resid_pre``,
``hook_embed``...), each with a *feature* saying which dataset inputs are interchangeable for
it. :func:`causal_scrub` evaluates it in a handful of batched forward passes and returns a
:class:`ScrubResult` (scrubbed metric, unscrubbed metric, random baseline, fraction of the
metric recovered, spread over seeds). Semantics, the treatment of unmentioned paths and of
the residual stream: ``docs/causal-scrubbing.md``.

>>> import glassbox.causal_scrubbing as cs
>>> hyp = cs.Hypothesis([cs.Node("blocks.1.attn.hook_z", head=4, children=[
...     cs.Node("blocks.0.attn.hook_z", head=2, via="k", children=[cs.Node("hook_embed")]),
...     cs.Node("hook_embed", via=("q", "v"))])])
>>> result = cs.causal_scrub(model, tokens, hyp, seeds=5)    # doctest: +SKIP
"""
from glassbox.causal_scrubbing.hypothesis import (CONSTANT, IDENTITY, SUPPORTED_SITES, Hypothesis, Node,
                                                  token_at, tokens_at)
from glassbox.causal_scrubbing.metrics import logit_diff_metric, loss_metric
from glassbox.causal_scrubbing.result import ScrubResult
from glassbox.causal_scrubbing.sampling import SamplingPlan, sampling_plan
from glassbox.causal_scrubbing.scrub import CausalScrubber, causal_scrub

__all__ = [
    "Node", "Hypothesis", "IDENTITY", "CONSTANT", "SUPPORTED_SITES", "token_at", "tokens_at",
    "causal_scrub", "CausalScrubber", "ScrubResult", "SamplingPlan", "sampling_plan",
    "loss_metric", "logit_diff_metric",
]
