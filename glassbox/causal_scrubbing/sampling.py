"""The sampling plan of causal scrubbing: which dataset input each node is computed on.

For one seed the plan is drawn with ``rng = numpy.random.default_rng(seed)``, visiting the
hypothesis in pre-order (:meth:`Hypothesis.walk`: the root first, then each child subtree in
the order given), once for all ``N`` reference inputs at a time:

* the root's input is the reference input itself, ``x[root] = references``;
* at every other node ``c`` with parent ``n``: ``u = rng.random(N)``, and for reference ``i``
  ``x[c][i]`` is the ``floor(u[i] * m)``-th (clipped to ``m - 1``) of the ``m`` dataset inputs
  whose feature value (``c``'s feature) equals that of ``x[n][i]``, taken in increasing dataset
  order — a uniform draw among the inputs that agree with the parent's input on ``c``'s
  feature (the input itself included);
* then, at every node (root included): ``r[n] = rng.integers(0, n_data, size=N)``, the random
  input on which the inputs of ``n`` that no child claims are computed.

The draws depend only on the tree's shape, the features' values, ``n_data``, ``N`` and the
seed, so two hypotheses with the same shape and seed use the same random numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import numpy as np

from glassbox.causal_scrubbing.hypothesis import CONSTANT, IDENTITY, Hypothesis


def feature_codes(feature: Any, tokens: np.ndarray, desc: str) -> np.ndarray:
    """Integer class codes [n_data] of ``feature`` on the dataset (equal code = equivalent)."""
    n = tokens.shape[0]
    if isinstance(feature, str):
        if feature == IDENTITY:
            return np.arange(n, dtype=np.int64)
        if feature == CONSTANT:
            return np.zeros(n, dtype=np.int64)
        raise ValueError(f"unknown feature {feature!r} for {desc}")
    if callable(feature):
        try:
            values = feature(tokens.copy())
        except Exception as exc:  # name the node whose feature failed
            raise type(exc)(f"feature function of {desc} raised: {exc}") from exc
        what = "feature function of"
    else:
        values = feature
        what = "feature of"
    if hasattr(values, "detach") and hasattr(values, "numpy"):  # torch tensor
        values = values.detach().cpu().numpy()
    try:
        arr = np.asarray(values)
    except Exception as exc:
        raise TypeError(f"{what} {desc} gave values that are not an array: {exc}") from exc
    if arr.ndim == 0 or arr.shape[0] != n:
        got = "a scalar" if arr.ndim == 0 else f"{arr.shape[0]} values (shape {arr.shape})"
        raise ValueError(f"{what} {desc} gave {got}, but the dataset has {n} inputs: it must give one "
                         f"value (or one row) per input")
    if arr.ndim > 2:
        arr = arr.reshape(n, -1)
    if arr.dtype != object:
        if arr.ndim == 1:
            _, inv = np.unique(arr, return_inverse=True)
        else:
            _, inv = np.unique(arr, axis=0, return_inverse=True)
        return np.asarray(inv, dtype=np.int64).reshape(n)
    seen: dict = {}
    out = np.empty(n, dtype=np.int64)
    for i, v in enumerate(arr):
        key = tuple(v) if isinstance(v, (list, np.ndarray)) else v
        try:
            out[i] = seen.setdefault(key, len(seen))
        except TypeError as exc:
            raise TypeError(f"{what} {desc} gave an unhashable value {v!r} for input {i}") from exc
    return out


class Groups:
    """Dataset inputs grouped by feature code, each group in increasing dataset order."""

    def __init__(self, codes: np.ndarray):
        codes = np.asarray(codes, dtype=np.int64)
        self.codes = codes
        self.order = np.argsort(codes, kind="stable")
        counts = np.bincount(codes)
        self.counts = counts
        self.starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)

    def pick(self, parent_inputs: np.ndarray, u: np.ndarray) -> np.ndarray:
        """For each parent input, the ``floor(u * m)``-th input of its group (size ``m``)."""
        k = self.codes[parent_inputs]
        m = self.counts[k]
        j = np.minimum((u * m).astype(np.int64), m - 1)
        return self.order[self.starts[k] + j]


@dataclass
class SamplingPlan:
    """The inputs of one seed's scrub.

    ``inputs[n]`` [N] is the dataset index node ``n`` (pre-order index, 0 = root) is evaluated
    for, per reference input; ``random[n]`` [N] the random input its unclaimed inputs come
    from. ``labels[n]`` names the node."""

    seed: int
    labels: List[str]
    parents: List[Optional[int]]
    inputs: np.ndarray  # [n_nodes, N] int64
    random: np.ndarray  # [n_nodes, N] int64

    def __repr__(self) -> str:
        return (f"SamplingPlan(seed={self.seed}, {len(self.labels)} nodes, "
                f"{self.inputs.shape[1]} references)")


def draw_plan(groups: Sequence[Optional[Groups]], parents: Sequence[Optional[int]], references: np.ndarray,
              n_data: int, seed: int, labels: Sequence[str]) -> SamplingPlan:
    """Draw the plan for nodes in pre-order (``groups[0]``/``parents[0]`` = root, None)."""
    rng = np.random.default_rng(seed)
    n_nodes, N = len(parents), references.shape[0]
    inputs = np.empty((n_nodes, N), dtype=np.int64)
    random = np.empty((n_nodes, N), dtype=np.int64)
    for n in range(n_nodes):
        p = parents[n]
        if p is None:
            inputs[n] = references
        else:
            u = rng.random(N)
            inputs[n] = groups[n].pick(inputs[p], u)
        random[n] = rng.integers(0, n_data, size=N)
    return SamplingPlan(int(seed), list(labels), list(parents), inputs, random)


def node_labels(hypothesis: Hypothesis) -> List[str]:
    """Pre-order labels: "output", then ``"[path] site"`` with the node's tree path
    (``[0]`` first child of the output, ``[0.1]`` its second child, ...)."""
    out: List[str] = []
    paths: List[str] = []
    n_kids: List[int] = []
    for idx, parent, node in hypothesis.walk():
        n_kids.append(0)
        if node is None:
            paths.append("")
            out.append("output")
            continue
        k = n_kids[parent]
        n_kids[parent] += 1
        paths.append(f"{paths[parent]}.{k}" if paths[parent] else str(k))
        out.append(f"[{paths[idx]}] {node.describe_site()}")
    return out


def check_tokens(tokens: Any, what: str = "tokens") -> np.ndarray:
    """The dataset as an int64 array [n_data, pos] (torch, lists or NumPy accepted)."""
    if isinstance(tokens, str) or (isinstance(tokens, (list, tuple)) and tokens and isinstance(tokens[0], str)):
        raise TypeError(f"{what} must be token ids [n_data, pos]; tokenize text first with model.to_tokens")
    if hasattr(tokens, "detach") and hasattr(tokens, "numpy"):
        tokens = tokens.detach().cpu().numpy()
    arr = np.asarray(tokens)
    if arr.ndim != 2:
        raise ValueError(f"{what} must have shape [n_data, pos] (one unpadded sequence per dataset input), "
                         f"got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{what} must be integer token ids, got dtype {arr.dtype}")
    if arr.shape[0] < 2:
        raise ValueError(f"the dataset is too small to resample from: {what} has {arr.shape[0]} input(s), "
                         f"causal scrubbing needs at least 2")
    if arr.shape[1] < 1:
        raise ValueError(f"{what} has no positions (shape {arr.shape})")
    return np.ascontiguousarray(arr, dtype=np.int64)


def sampling_plan(hypothesis: Hypothesis, tokens: Any, seed: int = 0,
                  references: Optional[Sequence[int]] = None) -> SamplingPlan:
    """The plan :func:`~glassbox.causal_scrubbing.causal_scrub` uses for ``seed``.

    Needs no model: the plan depends on the hypothesis' shape, the features' values on
    ``tokens`` and the seed (see the module docstring for the procedure)."""
    toks = check_tokens(tokens)
    refs = check_references(references, toks.shape[0])
    groups, parents = [], []
    for _, parent, node in hypothesis.walk():
        parents.append(parent)
        groups.append(None if node is None else Groups(feature_codes(node.feature, toks, node.describe_site())))
    return draw_plan(groups, parents, refs, toks.shape[0], check_seed(seed), node_labels(hypothesis))


def check_references(references: Any, n_data: int) -> np.ndarray:
    if references is None:
        return np.arange(n_data, dtype=np.int64)
    arr = np.asarray(references)
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"references must be a non-empty 1-D sequence of dataset indices, got {references!r}")
    if arr.min() < 0 or arr.max() >= n_data:
        bad = int(arr.min()) if arr.min() < 0 else int(arr.max())
        raise ValueError(f"reference index {bad} is out of range for a dataset of {n_data} inputs")
    return arr.astype(np.int64)


def check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"a seed must be a non-negative int, got {seed!r}")
    return int(seed)


def check_seeds(seeds: Any) -> List[int]:
    """``seeds`` as a list: an int ``k`` means seeds ``0 .. k-1``; a sequence is used as given."""
    if isinstance(seeds, bool):
        raise ValueError(f"seeds must be a positive int or a sequence of non-negative ints, got {seeds!r}")
    if isinstance(seeds, (int, np.integer)):
        if seeds < 1:
            raise ValueError(f"seeds must be a positive int (the number of seeds) or a list of seeds, got {seeds}")
        return list(range(int(seeds)))
    try:
        out = [check_seed(s) for s in seeds]
    except TypeError:
        raise ValueError(f"seeds must be a positive int or a sequence of non-negative ints, got {seeds!r}") from None
    if not out:
        raise ValueError("seeds must not be empty")
    if len(set(out)) != len(out):
        raise ValueError(f"seeds must be distinct, got {out}")
    return out


__all__ = ["SamplingPlan", "sampling_plan", "feature_codes", "Groups", "draw_plan"]
