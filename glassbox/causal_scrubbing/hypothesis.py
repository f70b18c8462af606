"""Causal-scrubbing hypotheses: a tree of :class:`Node` objects on glassbox hook points.

A hypothesis (Chan et al. 2022, "Causal Scrubbing") is a correspondence between an
interpretation and the model's computational graph. Here it is a tree whose root is the model
output (the metric is computed on the reference input) and whose nodes are model components
named by their TransformerLens hook point. The children of a node are the inputs of that node
which the hypothesis says matter; every other input of the node is resampled from a random
dataset input. Each node carries a *feature*: inputs with equal feature values are
interchangeable for that node.

Node sites (``L`` = ``n_layers``; "reads" / "writes" are points of the residual stream):

=================================  ==========================  ===================  ==========
hook name                          component                   reads                writes
=================================  ==========================  ===================  ==========
``hook_embed``                     token embedding (leaf)      the tokens           ``resid_pre 0``
``hook_pos_embed``                 positional embedding (leaf) the positions        ``resid_pre 0``
``blocks.l.attn.hook_z`` + head    one attention head's output ``resid_pre l``      ``resid_mid l``
``blocks.l.attn.hook_result`` + h  the same head (alias)       ``resid_pre l``      ``resid_mid l``
``blocks.l.hook_attn_out``         the whole attention layer   ``resid_pre l``      ``resid_mid l``
``blocks.l.hook_mlp_out``          the MLP                     ``resid_mid l``      ``resid_post l``
``blocks.l.hook_resid_pre/mid/post``  the residual stream there  (sum of all        itself
                                   (a sum node)                 upstream terms)
=================================  ==========================  ===================  ==========

A head's term in the residual stream is ``z[:, :, head] @ W_O[head]`` (its share of
``attn_out``; ``b_O`` is input-independent). ``head`` indexes query heads, also for
grouped-query attention. See ``docs/causal-scrubbing.md`` for the exact semantics.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

SLOTS = ("q", "k", "v")

Feature = Union[str, Callable[[np.ndarray], Any], Sequence[Any], np.ndarray, None]
Positions = Union[None, int, slice, Sequence[int], np.ndarray]

IDENTITY = "identity"
CONSTANT = "constant"
_FEATURE_WORDS = {IDENTITY: IDENTITY, "exact": IDENTITY, CONSTANT: CONSTANT, "all": CONSTANT}

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(attn\.hook_z|attn\.hook_result|hook_attn_out|hook_mlp_out|"
                       r"hook_resid_pre|hook_resid_mid|hook_resid_post)$")
_KIND_OF = {"attn.hook_z": "head", "attn.hook_result": "head", "hook_attn_out": "attn",
            "hook_mlp_out": "mlp", "hook_resid_pre": "resid", "hook_resid_mid": "resid",
            "hook_resid_post": "resid"}
_RESID_OFFSET = {"hook_resid_pre": 0, "hook_resid_mid": 1, "hook_resid_post": 2}

SUPPORTED_SITES = (
    "hook_embed", "hook_pos_embed", "blocks.{l}.attn.hook_z (with head=)",
    "blocks.{l}.attn.hook_result (with head=)", "blocks.{l}.hook_attn_out", "blocks.{l}.hook_mlp_out",
    "blocks.{l}.hook_resid_pre", "blocks.{l}.hook_resid_mid", "blocks.{l}.hook_resid_post",
)


@dataclass(frozen=True)
class Site:
    """Where a node sits in the residual network.

    Residual-stream points are numbered ``2*l`` (``resid_pre l``), ``2*l + 1`` (``resid_mid l``),
    ``2*l + 2`` (``resid_post l`` = ``resid_pre l+1``); the final residual (the root's input)
    is ``2*n_layers``. ``read`` is the point whose value the node's computation takes as input
    and ``write`` the first point whose value contains the node's term."""

    kind: str  # "root", "embed", "pos_embed", "head", "attn", "mlp", "resid"
    name: str
    layer: Optional[int]
    head: Optional[int]
    read: int
    write: int


def parse_site(name: Any, head: Any = None) -> Site:
    """The :class:`Site` of hook point ``name`` (with ``head`` for per-head points).

    Raises ``ValueError`` for names that are not node sites, and for a ``head`` given where
    none is allowed or missing where one is needed. Whether the layer and head exist in a
    particular model is checked when the hypothesis is scrubbed."""
    if not isinstance(name, str):
        raise TypeError(f"node name must be a hook-point name (str), got {type(name).__name__}")
    if head is not None:
        if isinstance(head, bool) or not isinstance(head, (int, np.integer)):
            raise TypeError(f"head must be an int, got {type(head).__name__} for node {name!r}")
        head = int(head)
    if name in ("hook_embed", "hook_pos_embed"):
        if head is not None:
            raise ValueError(f"node {name!r} has no heads, but head={head} was given")
        return Site("embed" if name == "hook_embed" else "pos_embed", name, None, None, 0, 0)
    m = _BLOCK_RE.match(name)
    if m is None:
        raise ValueError(
            f"{name!r} is not a causal-scrubbing node site; supported hook points are "
            + ", ".join(SUPPORTED_SITES))
    layer, suffix = int(m.group(1)), m.group(2)
    kind = _KIND_OF[suffix]
    if kind == "head":
        if head is None:
            raise ValueError(f"node {name!r} is per head: pass head=<query-head index>")
    elif head is not None:
        raise ValueError(f"node {name!r} is not per head, but head={head} was given "
                         f"(use blocks.{layer}.attn.hook_z with head= for one head)")
    if kind in ("head", "attn"):
        return Site(kind, name, layer, head, 2 * layer, 2 * layer + 1)
    if kind == "mlp":
        return Site(kind, name, layer, None, 2 * layer + 1, 2 * layer + 2)
    point = 2 * layer + _RESID_OFFSET[suffix]
    return Site("resid", name, layer, None, point, point)


def _check_positions(positions: Positions, label: str) -> Positions:
    if positions is None or isinstance(positions, slice):
        return positions
    if isinstance(positions, (bool, np.bool_)):
        raise TypeError(f"positions of {label} must be an int, a slice or a sequence of ints, got a bool")
    if isinstance(positions, (int, np.integer)):
        return int(positions)
    arr = np.asarray(positions)
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"positions of {label} must be an int, a slice or a non-empty 1-D sequence of "
                        f"ints, got {positions!r}")
    return tuple(int(p) for p in arr)


def _check_via(via: Any, label: str) -> Optional[Tuple[str, ...]]:
    if via is None:
        return None
    items = (via,) if isinstance(via, str) else tuple(via)
    if not items or any(s not in SLOTS for s in items):
        raise ValueError(f"via of {label} must be None or one or more of 'q', 'k', 'v', got {via!r}")
    out = tuple(s for s in SLOTS if s in items)
    return None if out == SLOTS else out


def _check_feature(feature: Feature, label: str) -> Feature:
    if feature is None:
        return IDENTITY
    if isinstance(feature, str):
        if feature not in _FEATURE_WORDS:
            raise ValueError(f"feature of {label} must be a function, an array, or one of "
                             f"{sorted(_FEATURE_WORDS)}, got {feature!r}")
        return _FEATURE_WORDS[feature]
    return feature


class Node:
    """One node of a causal-scrubbing hypothesis: a model component and its feature.

    Args:
        name: the hook point of the component (see the module docstring for the sites), e.g.
            ``"blocks.1.attn.hook_z"``, ``"blocks.0.hook_mlp_out"``, ``"blocks.2.hook_resid_pre"``,
            ``"hook_embed"``.
        head: the query-head index for ``attn.hook_z`` / ``attn.hook_result`` nodes.
        feature: which dataset inputs are equivalent for this node. ``"identity"`` (default:
            only the input itself), ``"constant"`` (every input), a function
            ``f(tokens [n_data, pos]) -> n_data values`` (1-D, or 2-D rows compared whole)
            evaluated once on the dataset, or those values directly (length ``n_data``).
        positions: the sequence positions where the node's output is claimed (int, slice or
            ints; negatives count from the end; None = every position). At other positions its
            contribution to the parent is treated as unmentioned.
        children: the inputs of this node that the hypothesis says matter (Nodes upstream of it).
        via: for children of an attention node, which of the parent's inputs this child feeds:
            ``"q"``, ``"k"``, ``"v"`` or several; None = all three (the whole input).
        label: an optional human name used in reprs ("induction head").

    A childless node is computed entirely on the input sampled for it (the hypothesis claims
    its whole upstream computation); a node with children has every input that no child
    claims computed on a random dataset input.

    Example — the induction head 1.4 reads the previous-token head 0.2 through its keys, and
    the current token through its queries; the previous-token head reads the embeddings::

        prev = Node("blocks.0.attn.hook_z", head=2, via="k", children=[
                   Node("hook_embed"), Node("hook_pos_embed")])
        ind = Node("blocks.1.attn.hook_z", head=4, label="induction", children=[
                   prev, Node("hook_embed", via="q"), Node("hook_embed", via="v")])
        hyp = Hypothesis([ind])
    """

    def __init__(self, name: str, head: Optional[int] = None, *, feature: Feature = IDENTITY,
                 positions: Positions = None, children: Sequence["Node"] = (), via: Any = None,
                 label: Optional[str] = None):
        self.site = parse_site(name, head)
        self.name = name
        self.head = None if head is None else int(head)
        desc = self.describe_site()
        self.positions = _check_positions(positions, desc)
        self.feature = _check_feature(feature, desc)
        self.via = _check_via(via, desc)
        if label is not None and not isinstance(label, str):
            raise TypeError(f"label of {desc} must be a str, got {type(label).__name__}")
        self.label = label
        if isinstance(children, Node):
            children = [children]
        children = list(children)
        for c in children:
            if not isinstance(c, Node):
                raise TypeError(f"children of {desc} must be Nodes, got {type(c).__name__}")
        if children and self.site.kind in ("embed", "pos_embed"):
            raise ValueError(f"{desc} reads no other component, so it cannot have children")
        self.children: List[Node] = children

    def describe_site(self) -> str:
        s = self.name if self.head is None else f"{self.name}[head {self.head}]"
        return s if getattr(self, "label", None) is None else f"{self.label} ({s})"

    def _line(self) -> str:
        bits = [self.describe_site()]
        if self.via is not None:
            bits.append("via " + "+".join(self.via))
        if self.positions is not None:
            bits.append(f"positions {_positions_text(self.positions)}")
        bits.append(f"feature {_feature_text(self.feature)}")
        return ", ".join(bits)

    def __repr__(self) -> str:
        extra = f", {len(self.children)} children" if self.children else ""
        return f"Node({self._line()}{extra})"


class Hypothesis:
    """A causal-scrubbing hypothesis: the output and the nodes it depends on.

    The root is the model output: the final residual stream goes through ``ln_final`` and the
    unembedding and the metric is computed with the *reference* input's tokens. ``children``
    are the terms of the final residual stream that the hypothesis says matter; everything
    else reaching the output is computed on a random input.

    >>> hyp = Hypothesis([Node("blocks.1.attn.hook_z", head=4, children=[Node("hook_embed")])])
    >>> print(hyp.describe())              # doctest: +SKIP

    The structure is checked here (sites, children upstream of their parent, ``via`` only under
    attention nodes, no cycles); the checks that need the model or the dataset (layers and
    heads exist, positions in range, features of the right length, children that overlap)
    happen when it is scrubbed.
    """

    def __init__(self, children: Union[Node, Sequence[Node]] = (), *, label: Optional[str] = None):
        if isinstance(children, Node):
            children = [children]
        children = list(children)
        for c in children:
            if not isinstance(c, Node):
                raise TypeError(f"Hypothesis children must be Nodes, got {type(c).__name__}")
        self.children = children
        self.label = label
        self._check_structure()

    # -- structure -----------------------------------------------------------------------------
    def _check_structure(self) -> None:
        def visit(parent_desc: str, parent_site: Optional[Site], kids: List[Node], path: List[int]) -> None:
            for c in kids:
                desc = c.describe_site()
                if id(c) in path:
                    raise ValueError(f"the hypothesis has a cycle through {desc}")
                if parent_site is None:  # root: reads the final residual, any node may feed it
                    if c.via is not None:
                        raise ValueError(f"via={c.via} is only meaningful under an attention node, "
                                         f"but {desc} is a child of the output")
                else:
                    if c.via is not None and parent_site.kind not in ("head", "attn"):
                        raise ValueError(f"via={c.via} is only meaningful under an attention node, "
                                         f"but the parent of {desc} is {parent_desc}")
                    if c.site.write > parent_site.read:
                        raise ValueError(
                            f"{desc} cannot be a child of {parent_desc}: it writes to the residual "
                            f"stream after {parent_desc} reads it")
                visit(desc, c.site, c.children, path + [id(c)])

        visit("the output", None, self.children, [])

    def walk(self) -> Iterator[Tuple[int, Optional[int], Optional[Node]]]:
        """Yield ``(index, parent_index, node)`` in pre-order (root first with node None,
        children in the order given, depth first). This order defines the sampling plan."""
        counter = [0]

        def rec(node: Optional[Node], parent: Optional[int]):
            idx = counter[0]
            counter[0] += 1
            yield idx, parent, node
            for c in (self.children if node is None else node.children):
                yield from rec(c, idx)

        yield from rec(None, None)

    def n_nodes(self) -> int:
        """Number of nodes including the root (a Node used twice counts twice)."""
        return sum(1 for _ in self.walk())

    def constant(self) -> "Hypothesis":
        """The same tree with every feature ``"constant"``: every node resampled at random.
        Scrubbing it gives the random baseline of :class:`~glassbox.causal_scrubbing.ScrubResult`."""
        def copy(n: Node) -> Node:
            return Node(n.name, n.head, feature=CONSTANT, positions=n.positions, via=n.via,
                        label=n.label, children=[copy(c) for c in n.children])

        return Hypothesis([copy(c) for c in self.children], label=self.label)

    def describe(self) -> str:
        """The tree as indented text, one node per line."""
        lines = [("output" if self.label is None else self.label) + " (metric on the reference input)"]

        def rec(kids: List[Node], prefix: str) -> None:
            for i, c in enumerate(kids):
                last = i == len(kids) - 1
                lines.append(prefix + ("└── " if last else "├── ") + c._line())
                rec(c.children, prefix + ("    " if last else "│   "))

        rec(self.children, "")
        return "\n".join(lines)

    def __repr__(self) -> str:
        name = "" if self.label is None else f"{self.label!r}, "
        return f"Hypothesis({name}{self.n_nodes() - 1} nodes)\n{self.describe()}"


# ---------------------------------------------------------------------------------------------
# feature helpers


def token_at(position: int) -> Callable[[np.ndarray], np.ndarray]:
    """Feature: the token at ``position`` (negatives count from the end)."""
    if isinstance(position, bool) or not isinstance(position, (int, np.integer)):
        raise TypeError(f"position must be an int, got {type(position).__name__}")
    pos = int(position)

    def feature(tokens: np.ndarray) -> np.ndarray:
        return tokens[:, pos]

    feature.__name__ = f"token_at({pos})"
    return feature


def tokens_at(positions: Sequence[int]) -> Callable[[np.ndarray], np.ndarray]:
    """Feature: the tokens at ``positions`` (inputs agree when all of them agree)."""
    pos = [int(p) for p in positions]
    if not pos:
        raise ValueError("tokens_at needs at least one position")

    def feature(tokens: np.ndarray) -> np.ndarray:
        return tokens[:, pos]

    feature.__name__ = f"tokens_at({pos})"
    return feature


def _positions_text(p: Positions) -> str:
    if isinstance(p, slice):
        return f"[{'' if p.start is None else p.start}:{'' if p.stop is None else p.stop}" + (
            "" if p.step is None else f":{p.step}") + "]"
    return str(p) if isinstance(p, int) else "[" + ", ".join(map(str, p)) + "]"


def _feature_text(f: Feature) -> str:
    if isinstance(f, str):
        return f
    if callable(f):
        return getattr(f, "__name__", type(f).__name__)
    return f"<{len(f)} values>" if hasattr(f, "__len__") else repr(f)
