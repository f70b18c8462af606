"""``LensResult``: what a lens found, as arrays, a table, records and plots."""
from __future__ import annotations

import html
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from glassbox.arrays import wrap

#: arrays with a leading component axis ([n, batch, pos, ...])
_PER_COMPONENT = ("top_tokens", "top_probs", "target_logits", "target_logprobs", "target_probs",
                  "target_ranks", "kl", "entropy", "logits")
#: arrays without it ([batch, pos, ...])
_PER_POSITION = ("target_tokens", "final_top_tokens", "final_top_probs", "final_target_probs",
                 "final_target_ranks", "final_entropy")


def _array_property(name: str, doc: str) -> property:
    def get(self: "LensResult") -> Any:
        return self._public(name)

    get.__doc__ = doc
    return property(get)


class LensResult:
    """The read-outs of a lens at every component and position.

    Arrays (NumPy, or torch tensors when the cache was in torch mode; the ``batch`` axis is absent
    when the cache had none; ``n`` = ``len(labels)``, ``pos`` = ``len(positions)``, ``T`` = number
    of targets):

    ``top_tokens`` [n, batch, pos, k] ids, largest first; ``top_probs`` [n, batch, pos, k];
    ``target_tokens`` [batch, pos, T] (-1 = no target); ``target_probs``, ``target_logprobs``,
    ``target_logits`` [n, batch, pos, T] (NaN without a target); ``target_ranks``
    [n, batch, pos, T] (0 = top-1; -1 without a target); ``kl`` [n, batch, pos] =
    KL(final || lens) in nats; ``entropy`` [n, batch, pos] in nats; ``final_top_tokens``,
    ``final_top_probs``, ``final_target_probs``, ``final_target_ranks``, ``final_entropy``: the
    same for the model's output; ``logits`` [n, batch, pos, d_vocab] with ``return_logits=True``.

    Also: ``labels`` (component names), ``positions`` (indices into the input sequence),
    ``target_names``, ``str_tokens`` (per batch item, when tokens were given), ``ln_mode``.

    Example:
        >>> res = glassbox.lens.logit_lens(cache, tokens, target="next")  # doctest: +SKIP
        >>> res                       # a table at the last position (HTML in Jupyter)  # doctest: +SKIP
        >>> res.table(pos=3)          # the same at position index 3                    # doctest: +SKIP
        >>> res.to_dict()["target_ranks"]   # nested lists, JSON-ready                # doctest: +SKIP
        >>> fig = res.plot_heatmap("rank")                                            # doctest: +SKIP
    """

    def __init__(
        self,
        arrays: Dict[str, np.ndarray],
        labels: List[str],
        what: str,
        ln_mode: str,
        target_names: List[str],
        str_tokens: Optional[List[List[str]]],
        has_batch_dim: bool,
        torch_mode: bool,
        model: Any = None,
    ):
        self._arrays = arrays
        self.labels = labels
        self.what = what
        self.ln_mode = ln_mode
        self.target_names = target_names
        self.str_tokens = str_tokens
        self.has_batch_dim = has_batch_dim
        self._torch_mode = torch_mode
        self._model = model

    # -- arrays -----------------------------------------------------------------------------
    def _np(self, name: str) -> np.ndarray:
        """Array ``name`` with the batch axis always present (internal layout)."""
        if name not in self._arrays:
            raise AttributeError(f"this LensResult has no {name!r}" + (" (pass return_logits=True)" if name == "logits" else ""))
        return self._arrays[name]

    def _public(self, name: str) -> Any:
        arr = self._np(name)
        if not self.has_batch_dim:
            arr = arr[:, 0] if name in _PER_COMPONENT else arr[0]
        return wrap(np.ascontiguousarray(arr), self._torch_mode)

    top_tokens = _array_property("top_tokens", "[n, batch, pos, k] top token ids, largest first")
    top_probs = _array_property("top_probs", "[n, batch, pos, k] their probabilities")
    target_tokens = _array_property("target_tokens", "[batch, pos, T] target ids (-1 = none)")
    target_probs = _array_property("target_probs", "[n, batch, pos, T] target probabilities (NaN = none)")
    target_logprobs = _array_property("target_logprobs", "[n, batch, pos, T] target log-probabilities")
    target_logits = _array_property("target_logits", "[n, batch, pos, T] target logits")
    target_ranks = _array_property("target_ranks", "[n, batch, pos, T] target ranks, 0 = top-1 (-1 = none)")
    kl = _array_property("kl", "[n, batch, pos] KL(final || lens) in nats")
    entropy = _array_property("entropy", "[n, batch, pos] entropy of the lens distribution in nats")
    final_top_tokens = _array_property("final_top_tokens", "[batch, pos, k] the model's top tokens")
    final_top_probs = _array_property("final_top_probs", "[batch, pos, k] their probabilities")
    final_target_probs = _array_property("final_target_probs", "[batch, pos, T] the model's target probabilities")
    final_target_ranks = _array_property("final_target_ranks", "[batch, pos, T] the model's target ranks")
    final_entropy = _array_property("final_entropy", "[batch, pos] entropy of the model's output")
    logits = _array_property("logits", "[n, batch, pos, d_vocab] lens logits (return_logits=True only)")

    @property
    def positions(self) -> np.ndarray:
        """Indices into the input sequence of the position axis."""
        return self._arrays["positions"].copy()

    @property
    def k(self) -> int:
        return int(self._arrays["top_tokens"].shape[-1])

    @property
    def batch_size(self) -> int:
        return int(self._arrays["kl"].shape[1])

    def __len__(self) -> int:
        return len(self.labels)

    # -- token strings ----------------------------------------------------------------------
    def _decode(self, ids: Sequence[int]) -> List[str]:
        ids = [int(i) for i in ids]
        if self._model is not None and getattr(self._model, "tokenizer", None) is not None and ids:
            return list(self._model.to_str_tokens(np.asarray(ids, np.int64)))
        return [f"#{i}" for i in ids]

    def _pos(self, pos: int) -> int:
        P = len(self._arrays["positions"])
        if not isinstance(pos, (int, np.integer)) or not -P <= int(pos) < P:
            raise IndexError(f"pos must index the {P} positions of this result, got {pos!r}")
        return int(pos) % P

    def _batch(self, batch: int) -> int:
        B = self.batch_size
        if not isinstance(batch, (int, np.integer)) or not -B <= int(batch) < B:
            raise IndexError(f"batch must index the {B} batch items of this result, got {batch!r}")
        return int(batch) % B

    def input_token(self, batch: int = 0, pos: int = -1) -> Optional[str]:
        """The input token string at position index ``pos`` (None without tokens)."""
        if self.str_tokens is None:
            return None
        return self.str_tokens[self._batch(batch)][int(self._arrays["positions"][self._pos(pos)])]

    def top_strs(self, batch: int = 0, pos: int = -1) -> List[List[tuple]]:
        """Per component, the top-k ``(token string, probability)`` at one position."""
        b, p = self._batch(batch), self._pos(pos)
        ids = self._arrays["top_tokens"][:, b, p]
        probs = self._arrays["top_probs"][:, b, p]
        strs = self._decode(ids.reshape(-1))
        k = ids.shape[-1]
        return [[(strs[i * k + j], float(probs[i, j])) for j in range(k)] for i in range(ids.shape[0])]

    def _target_strs(self, b: int, p: int) -> List[str]:
        ids = self._arrays["target_tokens"][b, p]
        strs = self._decode([i for i in ids if i >= 0])
        it = iter(strs)
        return [next(it) if i >= 0 else "" for i in ids]

    # -- table ------------------------------------------------------------------------------
    def _rows(self, batch: int, pos: int, k: int) -> Dict[str, Any]:
        b, p = self._batch(batch), self._pos(pos)
        k = max(1, min(k, self.k))
        tops = self.top_strs(b, p)
        A = self._arrays
        final_strs = self._decode(A["final_top_tokens"][b, p, :k])
        return {
            "b": b, "p": p, "k": k, "tops": [t[:k] for t in tops],
            "target_strs": self._target_strs(b, p),
            "probs": A["target_probs"][:, b, p], "ranks": A["target_ranks"][:, b, p],
            "kl": A["kl"][:, b, p], "entropy": A["entropy"][:, b, p],
            "final": list(zip(final_strs, A["final_top_probs"][b, p, :k].tolist())),
            "final_probs": A["final_target_probs"][b, p], "final_ranks": A["final_target_ranks"][b, p],
        }

    def _header(self, b: int, p: int) -> str:
        posn = int(self._arrays["positions"][p])
        tok = self.input_token(b, p)
        where = f"position {posn}" + (f" ({tok!r})" if tok is not None else "")
        if self.batch_size > 1 or self.has_batch_dim:
            where = f"batch {b}, " + where
        return where

    def _default_pos(self, batch: int) -> int:
        """The last position that has a target (the last position if none has)."""
        t = self._arrays["target_tokens"][self._batch(batch)]
        has = np.nonzero((t >= 0).any(-1))[0] if t.shape[-1] else np.zeros(0, int)
        return int(has[-1]) if has.size else -1

    def _target_label(self, t: int, r: Dict[str, Any]) -> str:
        name, s = self.target_names[t], r["target_strs"][t]
        fixed = name.startswith("'") or name.startswith('"') or name.startswith("#")
        return name if fixed or not s else f"{name} = {s!r}"

    def table(self, batch: int = 0, pos: Optional[int] = None, k: int = 5) -> str:
        """A plain-text table of every component at one position: target probability and rank,
        KL to the final distribution, entropy and the top-``k`` tokens.

        ``pos`` indexes ``positions``; default: the last position that has a target."""
        if pos is None:
            pos = self._default_pos(batch)
        r = self._rows(batch, pos, k)
        T = len(self.target_names)
        lines = [f"{self._header(r['b'], r['p'])}; ln_mode={self.ln_mode!r}"]
        for t in range(T):
            lines.append(f"target {t}: {self._target_label(t, r)}")
        w = max([len("component")] + [len(s) for s in self.labels])
        head = f"{'component':<{w}}"
        for t in range(T):
            head += f"  {'p(t%d)' % t:>9} {'rank%d' % t:>7}"
        head += f"  {'KL':>7} {'H':>6}  top-{r['k']}"
        lines.append(head)

        def fmt_row(label, probs, ranks, kl, ent, tops):
            row = f"{label:<{w}}"
            for t in range(T):
                pr, rk = probs[t], ranks[t]
                row += f"  {'-' if np.isnan(pr) else format(pr, '9.4f'):>9} {'-' if rk < 0 else rk:>7}"
            row += f"  {'' if kl is None else format(kl, '7.3f'):>7} {ent:6.3f}  "
            row += "  ".join(f"{s!r} {q:.3f}" for s, q in tops)
            return row

        for i, label in enumerate(self.labels):
            lines.append(fmt_row(label, r["probs"][i], r["ranks"][i], float(r["kl"][i]), float(r["entropy"][i]), r["tops"][i]))
        ent = float(self._arrays["final_entropy"][r["b"], r["p"]])
        lines.append(fmt_row("(model)", r["final_probs"], r["final_ranks"], None, ent, r["final"]))
        return "\n".join(lines)

    def __repr__(self) -> str:
        B, P = self.batch_size, len(self._arrays["positions"])
        shape = f"{len(self.labels)} components x {B} batch x {P} positions" if self.has_batch_dim else f"{len(self.labels)} components x {P} positions"
        head = f"LensResult({self.what}; {shape}; k={self.k}; targets={self.target_names})"
        if not self.labels or P == 0:
            return head
        return head + "\n" + self.table()

    def _repr_html_(self) -> str:
        return self.to_html()

    def to_html(self, batch: int = 0, pos: Optional[int] = None, k: int = 5) -> str:
        """:meth:`table` as an HTML table (self-contained, inline styles; used by Jupyter)."""
        if pos is None and self.labels and len(self._arrays["positions"]):
            pos = self._default_pos(batch)
        esc = html.escape
        B, P = self.batch_size, len(self._arrays["positions"])
        cap = esc(f"LensResult: {self.what}; {len(self.labels)} components, {B} batch, {P} positions; ln_mode={self.ln_mode!r}")
        if not self.labels or P == 0:
            return f"<div><b>{cap}</b></div>"
        r = self._rows(batch, pos, k)
        T = len(self.target_names)
        cell = "padding:1px 6px;text-align:right;font-family:monospace;"
        th = "".join(f"<th style='{cell}'>p({esc(self._target_label(t, r))})</th><th style='{cell}'>rank</th>" for t in range(T))
        rows = [f"<tr><th style='{cell}text-align:left'>component</th>{th}<th style='{cell}'>KL</th><th style='{cell}'>H</th><th style='{cell}text-align:left'>top-{r['k']}</th></tr>"]

        def chips(tops):
            return " ".join(
                f"<span style='background:rgba(33,102,172,{min(1.0, q):.2f});color:{'#fff' if q > 0.5 else '#000'};"
                f"padding:0 3px;border-radius:3px;white-space:pre'>{esc(repr(s))}&nbsp;{q:.3f}</span>" for s, q in tops)

        def tr(label, probs, ranks, kl, ent, tops):
            tds = ""
            for t in range(T):
                pr, rk = probs[t], ranks[t]
                tds += f"<td style='{cell}'>{'-' if np.isnan(pr) else format(pr, '.4f')}</td><td style='{cell}'>{'-' if rk < 0 else rk}</td>"
            kls = "" if kl is None else format(kl, ".3f")
            return (f"<tr><td style='{cell}text-align:left'>{esc(label)}</td>{tds}<td style='{cell}'>{kls}</td>"
                    f"<td style='{cell}'>{ent:.3f}</td><td style='{cell}text-align:left'>{chips(tops)}</td></tr>")

        for i, label in enumerate(self.labels):
            rows.append(tr(label, r["probs"][i], r["ranks"][i], float(r["kl"][i]), float(r["entropy"][i]), r["tops"][i]))
        ent = float(self._arrays["final_entropy"][r["b"], r["p"]])
        rows.append(tr("(model)", r["final_probs"], r["final_ranks"], None, ent, r["final"]))
        return (f"<div><div style='font-weight:bold'>{cap}</div><div>{esc(self._header(r['b'], r['p']))}</div>"
                f"<table style='border-collapse:collapse'>{''.join(rows)}</table></div>")

    # -- export -----------------------------------------------------------------------------
    def to_numpy(self) -> Dict[str, np.ndarray]:
        """Every array as NumPy, with the shapes of the attributes."""
        out = {}
        for name in _PER_COMPONENT + _PER_POSITION:
            if name in self._arrays:
                arr = self._arrays[name]
                out[name] = (arr[:, 0] if name in _PER_COMPONENT else arr[0]) if not self.has_batch_dim else arr.copy()
        out["positions"] = self.positions
        return out

    def to_dict(self) -> Dict[str, Any]:
        """Plain Python lists and strings (JSON-serialisable; NaN for missing targets becomes
        None), with the decoded top tokens (``top_strs`` [n, batch, pos, k])."""
        out: Dict[str, Any] = {"what": self.what, "ln_mode": self.ln_mode, "labels": list(self.labels),
                               "positions": self.positions.tolist(), "target_names": list(self.target_names),
                               "str_tokens": self.str_tokens, "has_batch_dim": self.has_batch_dim}
        for name, arr in self.to_numpy().items():
            if name in ("positions", "logits"):
                continue
            if arr.dtype.kind == "f":
                out[name] = np.where(np.isnan(arr), None, arr.astype(object)).tolist()
                out[name] = _floats(out[name])
            else:
                out[name] = arr.tolist()
        top = self._arrays["top_tokens"]
        strs = np.asarray(self._decode(top.reshape(-1)), dtype=object).reshape(top.shape)
        out["top_strs"] = (strs[:, 0] if not self.has_batch_dim else strs).tolist()
        return out

    def to_records(self) -> List[Dict[str, Any]]:
        """Long format, one record per (component, batch, position[, target]) — ready for
        ``pandas.DataFrame(result.to_records())``."""
        A = self._arrays
        n, B, P = A["kl"].shape
        T = len(self.target_names)
        top = A["top_tokens"]
        strs = np.asarray(self._decode(top.reshape(-1)), dtype=object).reshape(top.shape)
        recs = []
        for i in range(n):
            for b in range(B):
                t_strs = None
                for p in range(P):
                    base = {"component": self.labels[i], "index": i, "batch": b, "position": int(A["positions"][p]),
                            "token": self.input_token(b, p), "kl": float(A["kl"][i, b, p]),
                            "entropy": float(A["entropy"][i, b, p]), "top1": strs[i, b, p, 0],
                            "top1_prob": float(A["top_probs"][i, b, p, 0]), "top_strs": list(strs[i, b, p]),
                            "top_probs": A["top_probs"][i, b, p].tolist()}
                    if not self.has_batch_dim:
                        del base["batch"]
                    if T == 0:
                        recs.append(base)
                        continue
                    t_strs = self._target_strs(b, p)
                    for t in range(T):
                        rec = dict(base, target=self.target_names[t], target_token=int(A["target_tokens"][b, p, t]),
                                   target_str=t_strs[t] or None, prob=_float(A["target_probs"][i, b, p, t]),
                                   logprob=_float(A["target_logprobs"][i, b, p, t]), rank=int(A["target_ranks"][i, b, p, t]))
                        recs.append(rec)
        return recs

    # -- plots ------------------------------------------------------------------------------
    def plot_heatmap(self, metric: str = "rank", **kwargs: Any) -> Any:
        """Components x positions heatmap; see :func:`glassbox.lens.plots.plot_lens_heatmap`."""
        from glassbox.lens.plots import plot_lens_heatmap

        return plot_lens_heatmap(self, metric, **kwargs)

    def plot_lines(self, metrics: Any = ("prob", "rank", "kl"), **kwargs: Any) -> Any:
        """Per-component line plots at one position; see :func:`glassbox.lens.plots.plot_lens_lines`."""
        from glassbox.lens.plots import plot_lens_lines

        return plot_lens_lines(self, metrics, **kwargs)

    def plot_heads(self, metric: str = "rank", **kwargs: Any) -> Any:
        """Layers x heads heatmap at one position (heads results); see
        :func:`glassbox.lens.plots.plot_lens_heads`."""
        from glassbox.lens.plots import plot_lens_heads

        return plot_lens_heads(self, metric, **kwargs)


def _float(x: Any) -> Optional[float]:
    x = float(x)
    return None if np.isnan(x) else x


def _floats(x: Any) -> Any:
    if isinstance(x, list):
        return [_floats(v) for v in x]
    return None if x is None else float(x)


__all__ = ["LensResult"]
