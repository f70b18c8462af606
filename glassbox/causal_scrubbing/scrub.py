"""Batched evaluation of causal-scrubbing hypotheses on a glassbox ``HookedTransformer``.

Scheme (see ``docs/causal-scrubbing.md``):

1. **One clean pass over the dataset** (``run_with_cache`` with a ``names_filter`` of only the
   activations the hypothesis needs, in chunks of ``batch_size``): every value the scrub
   takes from an *unmodified* run — each node's input residual on its random input, each
   child's term on the parent's random input, each leaf's term on its own input — is a
   clean activation of some dataset input, so it is gathered by index from this cache. The
   pass also gives the unscrubbed metric. It is shared by all seeds, by the random baseline
   and (with :class:`CausalScrubber`) by every hypothesis evaluated on the same dataset.
2. **Per seed, one batched single-layer run per non-leaf attention/MLP node**, children before
   parents: the node's input residual (per q/k/v input for attention) is assembled in NumPy
   for all ``N`` references at once and the layer is run from it
   (``run_with_hooks(..., start_at_layer=l, stop_at_layer=l+1)``), splicing the assembled
   values in with hooks and capturing the node's output. Residual-stream nodes are sums and
   need no run.
3. **One batched unembedding run** (``start_at_layer=n_layers``) from the assembled final
   residual, and the metric on the reference tokens.
"""
from __future__ import annotations

import time
from typing import Any, Dict, Optional, Sequence

import numpy as np

from glassbox.arrays import get_array_backend, set_array_backend, to_numpy
from glassbox.causal_scrubbing.compile import CNode, Compiled, Key, base_key, compile_hypothesis, term_key
from glassbox.causal_scrubbing.hypothesis import Hypothesis
from glassbox.causal_scrubbing.metrics import Metric, call_metric, resolve_metric
from glassbox.causal_scrubbing.result import ScrubResult
from glassbox.causal_scrubbing.sampling import (SamplingPlan, check_references, check_seeds, check_tokens,
                                                draw_plan)


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


class CausalScrubber:
    """Evaluates causal-scrubbing hypotheses for one model, dataset and metric.

    Args:
        model: a glassbox ``HookedTransformer`` (GPT-2 or LLaMA family). It must have no hooks
            attached while scrubbing; its hooks and flags are left exactly as they were, also
            when an error is raised.
        tokens: the dataset, token ids [n_data, pos] (unpadded, equal lengths, n_data >= 2).
            Every input is a reference input by default and inputs are resampled from it.
        metric: ``"loss"`` (mean next-token cross-entropy per input) or
            ``metric(logits, tokens, indices) -> [batch]`` (see :mod:`.metrics`).
        batch_size: sequences per engine call.

    Clean activations are cached across :meth:`scrub` calls (only the hook points a new
    hypothesis adds are computed); call :meth:`clear_cache` after editing the weights.

    >>> scrubber = CausalScrubber(model, tokens)            # doctest: +SKIP
    >>> scrubber.scrub(hypothesis, seeds=5)                 # doctest: +SKIP
    """

    def __init__(self, model: Any, tokens: Any, metric: Any = "loss", batch_size: int = 64):
        for attr in ("cfg", "hook_dict", "run_with_cache", "run_with_hooks", "set_use_split_qkv_input"):
            if not hasattr(model, attr):
                raise TypeError(f"model must be a glassbox HookedTransformer, got {type(model).__name__} "
                                f"(no {attr!r})")
        self.model = model
        self.tokens = check_tokens(tokens)
        self._check_tokens_fit()
        self.metric: Metric = resolve_metric(metric)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.batch_size = int(batch_size)
        self._clean: Dict[Key, np.ndarray] = {}
        self._model_metric: Optional[np.ndarray] = None
        self._W_O: Dict[int, np.ndarray] = {}  # float32 copies of W_O per layer, during one scrub
        self.forward_calls = 0

    # -- public ----------------------------------------------------------------------------------
    @property
    def n_data(self) -> int:
        return int(self.tokens.shape[0])

    def clear_cache(self) -> None:
        """Forget the cached clean activations and unscrubbed metric (after weight edits)."""
        self._clean.clear()
        self._model_metric = None

    def scrub(self, hypothesis: Hypothesis, seeds: Any = 1, references: Optional[Sequence[int]] = None,
              keep_plans: bool = False) -> ScrubResult:
        """Scrub ``hypothesis``: its expected metric, the random baseline and the fraction recovered.

        Args:
            hypothesis: the :class:`Hypothesis`.
            seeds: the number of seeds (``k`` -> seeds ``0..k-1``) or a list of seeds. Each seed
                draws one sampling plan (see :mod:`.sampling`); the spread over seeds is reported.
            references: dataset indices of the reference inputs (default: all, in order).
            keep_plans: keep each seed's :class:`SamplingPlan` (and the baseline's) in the result.
        """
        t0, c0 = time.perf_counter(), time.process_time()
        seed_list = check_seeds(seeds)
        refs = check_references(references, self.n_data)
        compiled = compile_hypothesis(hypothesis, self.model, self.tokens)
        baseline = compile_hypothesis(hypothesis.constant(), self.model, self.tokens)
        self._check_no_hooks()
        calls0 = self.forward_calls
        prev_backend = get_array_backend()
        set_array_backend("numpy")
        try:
            self._ensure_clean(compiled.needed_keys())
            t1 = time.perf_counter()
            self._W_O = {}
            scrubbed, random, plans, rplans = [], [], [], []
            for seed in seed_list:
                plan = draw_plan(compiled.groups(), compiled.parents(), refs, self.n_data, seed, compiled.labels)
                rplan = draw_plan(baseline.groups(), baseline.parents(), refs, self.n_data, seed, baseline.labels)
                scrubbed.append(self._evaluate(compiled, plan))
                random.append(self._evaluate(baseline, rplan))
                if keep_plans:
                    plans.append(plan)
                    rplans.append(rplan)
        finally:
            set_array_backend(prev_backend)
            self._W_O = {}
        t2 = time.perf_counter()
        name = getattr(self.metric, "__name__", type(self.metric).__name__)
        return ScrubResult(
            hypothesis=hypothesis.describe(),
            metric=name,
            seeds=seed_list,
            references=refs,
            metric_model=float(self._model_metric[refs].mean()),
            per_example_model=self._model_metric[refs].copy(),
            per_example_scrubbed=np.stack(scrubbed),
            per_example_random=np.stack(random),
            plans=plans if keep_plans else None,
            random_plans=rplans if keep_plans else None,
            timings={"clean_s": t1 - t0, "scrub_s": t2 - t1, "total_s": t2 - t0,
                     "cpu_s": time.process_time() - c0, "forward_calls": float(self.forward_calls - calls0)},
        )

    # -- checks ----------------------------------------------------------------------------------
    def _check_tokens_fit(self) -> None:
        cfg = self.model.cfg
        lo, hi = int(self.tokens.min()), int(self.tokens.max())
        V = int(cfg.d_vocab)
        if lo < 0 or hi >= V:
            raise ValueError(f"tokens contain id {lo if lo < 0 else hi}, out of range for d_vocab={V}")
        if cfg.positional_embedding_type == "standard" and self.tokens.shape[1] > cfg.n_ctx:
            raise ValueError(f"sequences of {self.tokens.shape[1]} tokens are longer than n_ctx={cfg.n_ctx}")

    def _check_no_hooks(self) -> None:
        attached = [name for name, hp in self.model.hook_dict.items() if hp.fwd_hooks]
        if attached:
            shown = ", ".join(attached[:5]) + (", ..." if len(attached) > 5 else "")
            raise ValueError(
                f"the model has hooks attached at {shown}; causal scrubbing runs the model with its own "
                f"hooks and would mix them with yours. Remove them first (model.reset_hooks(), or "
                f"model.reset_hooks(including_permanent=True) for permanent hooks)")

    # -- clean pass ------------------------------------------------------------------------------
    def _ensure_clean(self, keys) -> None:
        """Cache the clean activations ``keys`` for the whole dataset (and, the first time, the
        unscrubbed metric, computed from the cached final residual like every scrubbed one)."""
        L = int(self.model.cfg.n_layers)
        root_key: Key = (f"blocks.{L - 1}.hook_resid_post", None)
        need_metric = self._model_metric is None
        keys = set(keys) | ({root_key} if need_metric else set())
        missing = sorted((k for k in keys if k not in self._clean), key=lambda k: (k[0], -1 if k[1] is None else k[1]))
        if missing:
            names = sorted({k[0] for k in missing})
            layers = [int(n.split(".")[1]) for n in names if n.startswith("blocks.")]
            stop = (max(layers) + 1) if layers else 1  # no further than needed, never the unembedding
            store: Dict[Key, np.ndarray] = {}
            for sl in _chunks(self.n_data, self.batch_size):
                toks = self.tokens[sl]
                _, cache = self.model.run_with_cache(toks, names_filter=names, stop_at_layer=stop,
                                                     attention_mask=np.ones_like(toks))
                self.forward_calls += 1
                for key in missing:
                    act = to_numpy(cache[key[0]])
                    if key[1] is not None:
                        act = act[:, :, key[1]]
                    if key not in store:
                        store[key] = np.empty((self.n_data,) + act.shape[1:], dtype=np.float32)
                    store[key][sl] = act
            self._clean.update(store)
        if need_metric:
            self._model_metric = self._run_output(self._clean[root_key], np.arange(self.n_data))

    # -- evaluation ------------------------------------------------------------------------------
    def _W_O_of(self, layer: int) -> np.ndarray:
        if layer not in self._W_O:
            self._W_O[layer] = np.ascontiguousarray(to_numpy(self.model.blocks[layer].attn.W_O), dtype=np.float32)
        return self._W_O[layer]

    def _delta(self, child: CNode, r: np.ndarray, plan: SamplingPlan, scr: Dict[int, np.ndarray]) -> np.ndarray:
        """``child``'s scrubbed term minus its term on the parent's random inputs ``r``, masked to
        the child's positions: what the edge child -> parent adds to the parent's input."""
        clean = self._clean[term_key(child.site)]
        value = scr.pop(child.idx) if not child.is_leaf else clean[plan.inputs[child.idx]]
        d = value - clean[r]
        if child.kind == "head":
            d = d @ self._W_O_of(child.site.layer)[child.site.head]
        if child.mask is not None:
            d[:, ~child.mask] = 0.0
        return d

    def _evaluate(self, compiled: Compiled, plan: SamplingPlan) -> np.ndarray:
        """Per-reference metric under ``plan`` (children always have larger pre-order indices than
        their parent, so a reverse sweep computes every child before its parent)."""
        scr: Dict[int, np.ndarray] = {}
        L = compiled.n_layers
        for cn in reversed(compiled.nodes):
            if cn.is_leaf:
                continue
            r = plan.random[cn.idx]
            base = self._clean[base_key(cn.site, L)][r]
            kids = [compiled.nodes[k] for k in cn.children]
            deltas = [(k, self._delta(k, r, plan, scr)) for k in kids]
            if cn.kind in ("head", "attn") and any(k.via is not None for k in kids):
                slot_inputs = {}
                for slot in ("q", "k", "v"):
                    R = base.copy()
                    for k, d in deltas:
                        if k.via is None or slot in k.via:
                            R += d
                    slot_inputs[slot] = R
                scr[cn.idx] = self._run_attention(cn, slot_inputs, split=True)
                continue
            R = base
            for _, d in deltas:
                R += d
            if cn.kind in ("head", "attn"):
                scr[cn.idx] = self._run_attention(cn, {"q": R, "k": R, "v": R}, split=False)
            elif cn.kind == "resid":
                scr[cn.idx] = R
            elif cn.kind == "mlp":
                scr[cn.idx] = self._run_mlp(cn.site.layer, R)
            else:  # root
                return self._run_output(R, plan.inputs[0])
        raise AssertionError("the output node was not evaluated")

    def _run_attention(self, cn: CNode, R: Dict[str, np.ndarray], split: bool) -> np.ndarray:
        """Output of an attention node (one head's z [N, pos, d_head], or attn_out [N, pos, d_model])
        computed from its q/k/v input residuals ``R`` (the same array thrice unless ``split``)."""
        model, l, head = self.model, cn.site.layer, cn.site.head
        cfg = model.cfg
        N = R["q"].shape[0]
        if cn.kind == "head":
            out = np.empty((N,) + R["q"].shape[1:2] + (int(cfg.d_head),), dtype=np.float32)
            cap_name = f"blocks.{l}.attn.hook_z"
        else:
            out = np.empty(R["q"].shape, dtype=np.float32)
            cap_name = f"blocks.{l}.hook_attn_out"
        slot_index = {"q": head, "k": None, "v": None}
        if head is not None:  # k/v inputs are per kv head under grouped-query attention
            n_kv = cfg.n_heads if (cfg.n_key_value_heads is None or cfg.ungroup_grouped_query_attention) \
                else cfg.n_key_value_heads
            slot_index["k"] = slot_index["v"] = head // (cfg.n_heads // n_kv)
        prev_split = bool(cfg.use_split_qkv_input)
        if split and not prev_split:
            model.set_use_split_qkv_input(True)
        try:
            for sl in _chunks(N, self.batch_size):
                hooks = []
                if split:
                    for slot in ("q", "k", "v"):
                        hooks.append((f"blocks.{l}.hook_{slot}_input", _splice(R[slot][sl], slot_index[slot])))
                hooks.append((cap_name, _capture(out, sl, head)))
                model.run_with_hooks(R["q"][sl], start_at_layer=l, stop_at_layer=l + 1, fwd_hooks=hooks)
                self.forward_calls += 1
        finally:
            if split and not prev_split:
                model.set_use_split_qkv_input(False)
        return out

    def _run_mlp(self, layer: int, R: np.ndarray) -> np.ndarray:
        """``hook_mlp_out`` of ``layer`` with its input ``hook_resid_mid`` set to ``R``."""
        out = np.empty(R.shape, dtype=np.float32)
        for sl in _chunks(R.shape[0], self.batch_size):
            hooks = [(f"blocks.{layer}.hook_resid_mid", _splice(R[sl], ...)),
                     (f"blocks.{layer}.hook_mlp_out", _capture(out, sl, None))]
            self.model.run_with_hooks(R[sl], start_at_layer=layer, stop_at_layer=layer + 1, fwd_hooks=hooks)
            self.forward_calls += 1
        return out

    def _logit_positions(self) -> Optional[np.ndarray]:
        """The positions the metric reads (its ``logit_positions(n_pos)``), or None for all."""
        fn = getattr(self.metric, "logit_positions", None)
        if fn is None:
            return None
        P = self.tokens.shape[1]
        pos = fn(P) if callable(fn) else fn
        if pos is None:
            return None
        arr = np.atleast_1d(np.asarray(pos))
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer) or arr.size == 0 \
                or arr.min() < -P or arr.max() >= P:
            raise ValueError(f"metric.logit_positions gave {pos!r}, not positions of sequences of length {P}")
        return np.unique(arr % P)

    def _run_output(self, R: np.ndarray, refs: np.ndarray) -> np.ndarray:
        """The metric on the logits computed from the final residual ``R`` [N, pos, d_model], with
        the reference tokens. ``ln_final`` and the unembedding act per position, so when the metric
        declares the positions it reads only those are unembedded (the rest of the logits it
        receives are zero). Chunks hold at most ~2**25 logits (128 MiB)."""
        L = self.model.cfg.n_layers
        P, V = R.shape[1], int(self.model.cfg.d_vocab_out)
        pos = self._logit_positions()
        n_pos = P if pos is None else pos.size
        size = max(1, min(self.batch_size, (1 << 25) // max(1, n_pos * V)))
        values = np.empty(R.shape[0], dtype=np.float64)
        for sl in _chunks(R.shape[0], size):
            if pos is None:
                logits = to_numpy(self.model(R[sl], start_at_layer=L))
            else:
                logits = np.zeros((sl.stop - sl.start, P, V), dtype=np.float32)
                logits[:, pos] = to_numpy(self.model(np.ascontiguousarray(R[sl][:, pos]), start_at_layer=L))
            self.forward_calls += 1
            values[sl] = call_metric(self.metric, logits, self.tokens[refs[sl]], refs[sl])
        return values


def _splice(value: np.ndarray, index: Any):
    """A hook writing ``value`` into the activation: the whole of it (``...``), one head of a
    per-head input (int), or every head (None: broadcast over the head axis)."""

    def splice(act, hook):
        a = to_numpy(act)
        if index is ...:
            a[...] = value
        elif index is None:
            a[...] = value[:, :, None, :]
        else:
            a[:, :, index, :] = value

    return splice


def _capture(out: np.ndarray, sl: slice, head: Optional[int]):
    def capture(act, hook):
        a = to_numpy(act)
        out[sl] = a if head is None else a[:, :, head]

    return capture


def causal_scrub(model: Any, tokens: Any, hypothesis: Hypothesis, metric: Any = "loss", seeds: Any = 1,
                 references: Optional[Sequence[int]] = None, batch_size: int = 64,
                 keep_plans: bool = False) -> ScrubResult:
    """Causal scrubbing of ``hypothesis`` on ``model`` over the dataset ``tokens`` [n_data, pos].

    Returns a :class:`ScrubResult`: the scrubbed expected metric, the unscrubbed model's, the
    random baseline's (the same tree with every node resampled at random), the fraction of
    the metric recovered ``(random - scrubbed) / (random - model)``, and their spread over
    ``seeds``. One-shot form of :class:`CausalScrubber` (which reuses the clean activations
    across hypotheses).

    Example — is induction head 1.4 explained by the previous-token head 0.2 feeding its keys,
    and the token embedding feeding its queries and values? (tokens: repeated random sequences)::

        import glassbox.causal_scrubbing as cs
        prev = cs.Node("blocks.0.attn.hook_z", head=2, via="k",
                       children=[cs.Node("hook_embed"), cs.Node("hook_pos_embed")])
        hyp = cs.Hypothesis([cs.Node("blocks.1.attn.hook_z", head=4, children=[
            prev, cs.Node("hook_embed", via=("q", "v"))])])
        result = cs.causal_scrub(model, tokens, hyp, seeds=5)
        print(result)                     # fraction recovered, mean ± std over seeds
    """
    return CausalScrubber(model, tokens, metric=metric, batch_size=batch_size).scrub(
        hypothesis, seeds=seeds, references=references, keep_plans=keep_plans)
