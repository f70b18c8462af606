"""Checking a hypothesis against a model and a dataset, and flattening it for evaluation."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, FrozenSet, List, Optional, Set, Tuple

import numpy as np

from glassbox.causal_scrubbing.hypothesis import SLOTS, Hypothesis, Node, Site, _positions_text
from glassbox.causal_scrubbing.sampling import Groups, feature_codes, node_labels

Key = Tuple[str, Optional[int]]  # (hook name, head or None): one clean activation array


@dataclass
class CNode:
    """A node of the flattened tree (pre-order index ``idx``; 0 is the output)."""

    idx: int
    parent: Optional[int]
    site: Site
    node: Optional[Node]
    label: str
    mask: Optional[np.ndarray]  # [pos] bool, None = every position
    via: Optional[Tuple[str, ...]]
    groups: Optional[Groups]
    children: List[int] = field(default_factory=list)

    @property
    def is_leaf(self) -> bool:
        return self.site.kind != "root" and not self.children

    @property
    def kind(self) -> str:
        return self.site.kind


@dataclass
class Compiled:
    nodes: List[CNode]
    labels: List[str]
    n_layers: int

    def parents(self) -> List[Optional[int]]:
        return [c.parent for c in self.nodes]

    def groups(self) -> List[Optional[Groups]]:
        return [c.groups for c in self.nodes]

    def needed_keys(self) -> Set[Key]:
        """Clean activations the evaluation gathers: each non-leaf node's input residual and its
        children's terms (on its random input), each leaf's term (on its own input)."""
        keys: Set[Key] = set()
        for c in self.nodes:
            if c.is_leaf:
                keys.add(term_key(c.site))
            else:
                keys.add(base_key(c.site, self.n_layers))
                keys.update(term_key(self.nodes[k].site) for k in c.children)
        return keys


def term_key(site: Site) -> Key:
    """The clean activation a node's residual-stream term is computed from."""
    if site.kind in ("embed", "pos_embed", "resid"):
        return (site.name, None)
    if site.kind == "head":
        return (f"blocks.{site.layer}.attn.hook_z", site.head)
    if site.kind == "attn":
        return (f"blocks.{site.layer}.hook_attn_out", None)
    if site.kind == "mlp":
        return (f"blocks.{site.layer}.hook_mlp_out", None)
    raise AssertionError(site.kind)


def base_key(site: Site, n_layers: int) -> Key:
    """The residual stream a non-leaf node reads (taken on its random input)."""
    if site.kind == "root":
        return (f"blocks.{n_layers - 1}.hook_resid_post", None)
    if site.kind in ("head", "attn"):
        return (f"blocks.{site.layer}.hook_resid_pre", None)
    if site.kind == "mlp":
        return (f"blocks.{site.layer}.hook_resid_mid", None)
    if site.kind == "resid":
        return (site.name, None)
    raise AssertionError(site.kind)


def position_mask(positions: Any, P: int, desc: str) -> Optional[np.ndarray]:
    if positions is None:
        return None
    allp = np.arange(P)
    if isinstance(positions, slice):
        sel = allp[positions]
        if sel.size == 0:
            raise ValueError(f"positions {_positions_text(positions)} of {desc} select no position of "
                             f"sequences of length {P}")
    else:
        sel = np.atleast_1d(np.asarray(positions, dtype=np.int64))
        bad = sel[(sel < -P) | (sel >= P)]
        if bad.size:
            raise ValueError(f"position {int(bad[0])} of {desc} is out of range for sequences of length {P}")
        sel = sel % P
    mask = np.zeros(P, dtype=bool)
    mask[sel] = True
    return mask


def atoms(site: Site, n_heads: int) -> FrozenSet[Tuple]:
    """The residual-stream terms a node's output consists of (for overlap checks)."""
    if site.kind == "embed":
        return frozenset({("embed",)})
    if site.kind == "pos_embed":
        return frozenset({("pos_embed",)})
    if site.kind == "head":
        return frozenset({("head", site.layer, site.head)})
    if site.kind == "attn":
        return frozenset(("head", site.layer, h) for h in range(n_heads))
    if site.kind == "mlp":
        return frozenset({("mlp", site.layer)})
    s = site.write  # a residual point holds every term written at or before it
    out: Set[Tuple] = {("embed",), ("pos_embed",)}
    for l in range((s + 1) // 2):
        if 2 * l + 1 <= s:
            out.update(("head", l, h) for h in range(n_heads))
        if 2 * l + 2 <= s:
            out.add(("mlp", l))
    return frozenset(out)


def _atom_text(a: Tuple) -> str:
    if a[0] == "head":
        return f"head {a[1]}.{a[2]}"
    if a[0] == "mlp":
        return f"the MLP of layer {a[1]}"
    return {"embed": "the token embedding", "pos_embed": "the positional embedding"}[a[0]]


def _check_site_in_model(site: Site, model: Any, desc: str) -> None:
    hook_dict = model.hook_dict
    if site.name not in hook_dict:
        close = difflib.get_close_matches(site.name, list(hook_dict), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        extra = ""
        if site.kind == "pos_embed":
            extra = f" (positional_embedding_type={model.cfg.positional_embedding_type!r} has no hook_pos_embed)"
        elif site.layer is not None and site.layer >= model.cfg.n_layers:
            extra = f" (the model has {model.cfg.n_layers} layers)"
        raise ValueError(f"unknown hook point {site.name!r} for node {desc}{extra}{hint}")
    if site.kind == "head":
        H = model.cfg.n_heads
        if not 0 <= site.head < H:
            raise ValueError(f"head {site.head} of node {desc} is out of range: layer {site.layer} has "
                             f"{H} query heads (0..{H - 1})")


def compile_hypothesis(hypothesis: Hypothesis, model: Any, tokens: np.ndarray) -> Compiled:
    """Flatten and check ``hypothesis`` for ``model`` and the dataset ``tokens`` [n_data, pos].

    Raises ``ValueError`` / ``TypeError`` naming the node for: unknown hook points, heads out of
    range, positions out of range, features with the wrong number of values, and two children
    of one node (feeding the same q/k/v input) that claim the same term at the same position.
    Touches nothing on the model."""
    if not isinstance(hypothesis, Hypothesis):
        raise TypeError(f"hypothesis must be a Hypothesis, got {type(hypothesis).__name__}")
    hypothesis._check_structure()  # again: Node.children may have been edited since construction
    L, P = int(model.cfg.n_layers), int(tokens.shape[1])
    labels = node_labels(hypothesis)
    nodes: List[CNode] = []
    for idx, parent, node in hypothesis.walk():
        if node is None:
            site = Site("root", "output", None, None, 2 * L, 2 * L)
            nodes.append(CNode(idx, None, site, None, labels[idx], None, None, None))
            continue
        desc = labels[idx]
        _check_site_in_model(node.site, model, desc)
        mask = position_mask(node.positions, P, desc)
        groups = Groups(feature_codes(node.feature, tokens, desc))
        nodes.append(CNode(idx, parent, node.site, node, desc, mask, node.via, groups))
        nodes[parent].children.append(idx)
    H = int(model.cfg.n_heads)
    for parent in nodes:
        _check_overlaps(parent, nodes, H)
    return Compiled(nodes, labels, L)


def _check_overlaps(parent: CNode, nodes: List[CNode], H: int) -> None:
    kids = [nodes[k] for k in parent.children]
    attention = parent.kind in ("head", "attn")
    for i, a in enumerate(kids):
        for b in kids[i + 1:]:
            if attention:
                slots_a = set(SLOTS if a.via is None else a.via)
                slots_b = set(SLOTS if b.via is None else b.via)
                shared_slots = slots_a & slots_b
                if not shared_slots:
                    continue
            common = atoms(a.site, H) & atoms(b.site, H)
            if not common:
                continue
            both = np.ones(1, dtype=bool) if a.mask is None and b.mask is None else (
                (np.ones_like(b.mask) if a.mask is None else a.mask)
                & (np.ones_like(a.mask) if b.mask is None else b.mask))
            if not both.any():
                continue
            where = "every position" if a.mask is None and b.mask is None else (
                "position(s) " + ", ".join(str(p) for p in np.flatnonzero(both)))
            via = f" (both through its {'/'.join(s for s in SLOTS if s in shared_slots)} input)" if attention else ""
            term = _atom_text(sorted(common)[0])
            raise ValueError(
                f"children {a.label} and {b.label} of {parent.label} overlap{via}: both contain {term} "
                f"at {where}. A term of the residual stream can reach a node along one edge of the "
                f"hypothesis only; split the positions, or keep one of the two children")
