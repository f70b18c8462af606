"""Run TransformerLens's demo notebooks twice — with TransformerLens, and with ``glassbox`` swapped
in on the import lines only — and compare what every cell prints.

This file holds no TransformerLens code: it reads the notebooks from a folder you point it at
(``--notebooks``; fetch TransformerLens's repository and export ``demos/*.ipynb`` from the tag you
want, see docs/tl-demos.md) and needs the offline model stand-ins built by ``make_models.py``.

Each (notebook, library) pair runs in a fresh Python process, cell by cell, in an in-process
IPython shell (so ``get_ipython()``, magics and ``display`` behave as in Jupyter):

* ``%pip`` / ``!cmd`` lines are not executed (a note is printed instead); ``%autoreload`` is a
  no-op; ``GITHUB_ACTIONS=true`` as in TransformerLens's own notebook CI.
* Before every cell the torch / NumPy / ``random`` generators are re-seeded from the cell's
  index, so both runs draw the same random tokens whatever the libraries consume internally.
* What a cell shows is recorded: stdout, the value of its last expression, every plotly figure's
  data (``Figure.show`` records instead of rendering), every circuitsvis / pysvelte / neel_plotly
  call's arrays (no HTML is rendered), and ``display()``-ed objects.
* The glassbox run rewrites ``transformer_lens`` to ``glassbox`` in ``import`` / ``from`` lines and
  nowhere else.

Comparison: text must be equal once numbers are taken out (``transformer_lens`` in module paths
is read as ``glassbox``; autograd annotations — ``grad_fn=<…>``, ``requires_grad=True`` — are ignored,
glassbox has no autograd); numbers match with ``rtol=1e-3`` (plus ``atol=1e-5``, and one unit of
the last printed digit for rounded prints); arrays likewise, elementwise, with an absolute slack of
1e-4 of the array's largest magnitude. Cells that need
gradients, the network or a UI toolkit are listed in :data:`EXCLUDED` and not run.

Usage::

    python tests/tl_demos/make_models.py /work/tl-src/hf
    python tests/tl_demos/run_tl_demos.py --notebooks /work/tl-src/demos --hf-home /work/tl-src/hf \\
        --out /work/tl-src/results [--only Main_Demo] [--libs tl,gb] [--reuse]
    python tests/tl_demos/run_tl_demos.py --out /work/tl-src/results --report
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent

NOTEBOOKS = [
    "Main_Demo",
    "Exploratory_Analysis_Demo",
    "Activation_Patching_in_TL_Demo",
    "Head_Detector_Demo",
    "Interactive_Neuroscope",
    "Patchscopes_Generation_Demo",
    "ARENA_Content",
    "Attribution_Patching_Demo",
]

_GRAD = "gradients (backward hooks / .backward())"
_GRAD_DEP = "uses the gradient caches of an excluded cell"
_NET = "network (real pretrained checkpoint from the hub)"
_UI = "UI toolkit (gradio) and a public share link"

#: (notebook, code-cell index) -> reason; indices count code cells only, from 0
EXCLUDED: Dict[Tuple[str, int], str] = {
    ("Main_Demo", 57): _NET + ": get_checkpoint_labels lists the checkpoint files of hub repos",
    ("Main_Demo", 58): _NET + ": solu-2l checkpoints (TL's own checkpoint format)",
    ("Main_Demo", 59): _NET + ": solu-2l checkpoints",
    ("Main_Demo", 60): _NET + ": plots the solu-2l results",
    ("Activation_Patching_in_TL_Demo", 18): _NET + ": attn-only-2l (TL's own checkpoint format)",
    ("Activation_Patching_in_TL_Demo", 19): _NET + ": attn-only-2l",
    ("Activation_Patching_in_TL_Demo", 20): _NET + ": attn-only-2l",
    ("Activation_Patching_in_TL_Demo", 21): _NET + ": attn-only-2l",
    ("Activation_Patching_in_TL_Demo", 22): _NET + ": attn-only-2l",
    ("Activation_Patching_in_TL_Demo", 23): _NET + ": attn-only-2l",
    ("Interactive_Neuroscope", 8): _UI,
    ("Interactive_Neuroscope", 9): _UI,
    ("Attribution_Patching_Demo", 11): _GRAD,
    **{("Attribution_Patching_Demo", i): _GRAD_DEP
       for i in (12, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 28, 29, 31, 32, 35, 36)},
}

_SLOW = "not run by default (pass --all): {} forward passes, hours on a shared 2-core machine"

#: (notebook, code-cell index) -> reason: runnable, but too slow to run routinely here; --all runs them
SLOW: Dict[Tuple[str, int], str] = {
    ("Activation_Patching_in_TL_Demo", 14): _SLOW.format("2 304"),
    ("Activation_Patching_in_TL_Demo", 17): _SLOW.format("11 520"),
    ("Attribution_Patching_Demo", 34): _SLOW.format("11 520"),
    ("Patchscopes_Generation_Demo", 19): _SLOW.format("2 880 (144 x 20 generation steps)"),
}

_IMPORT_LINE = re.compile(r"^(\s*)(from|import)(\s+)(.*)$")


def code_cells(nb_path: Path) -> List[str]:
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def swap_imports(source: str) -> str:
    """``transformer_lens`` -> ``glassbox`` on import lines (and their parenthesised
    continuations) only."""
    out, in_import = [], False
    for line in source.split("\n"):
        m = _IMPORT_LINE.match(line)
        if m or in_import:
            line = re.sub(r"\btransformer_lens\b", "glassbox", line)
            if m:
                in_import = "(" in line and ")" not in line
            elif ")" in line:
                in_import = False
        out.append(line)
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------
# worker: runs one notebook with one library, in this process


class Recorder:
    """Collects what a cell shows besides stdout."""

    def __init__(self) -> None:
        self.events: List[Any] = []

    def add(self, kind: str, payload: Any) -> None:
        self.events.append({"kind": kind, "data": payload})


REC = Recorder()


def to_plain(x: Any, depth: int = 0) -> Any:
    """JSON-able, comparable form of a value: arrays become {"shape", "values"} (complex as
    [re, im] pairs), containers recurse, everything else is its str()."""
    if depth > 6:
        return str(x)
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None
    mod = type(x).__module__ or ""
    if mod.startswith("torch") and hasattr(x, "detach") and hasattr(x, "shape"):
        t = x.detach().cpu()
        if t.dtype.is_floating_point and str(t.dtype) in ("torch.bfloat16", "torch.float16"):
            t = t.float()
        x = t.numpy()
    if np is not None and isinstance(x, np.generic):
        x = np.asarray(x)
    if np is not None and isinstance(x, np.ndarray):
        if x.dtype.kind in "biuf":
            return {"shape": list(x.shape), "dtype": x.dtype.kind,
                    "values": [None if not math.isfinite(v) else v for v in x.astype(float).ravel().tolist()]
                    if x.dtype.kind == "f" else x.astype(float).ravel().tolist(),
                    "nonfinite": [str(v) for v in x.ravel().tolist() if isinstance(v, float) and not math.isfinite(v)][:20]}
        if x.dtype.kind == "c":
            return {"shape": list(x.shape), "dtype": "c",
                    "values": [float(v) for c in x.ravel().tolist() for v in (c.real, c.imag)]}
        return {"shape": list(x.shape), "dtype": "o", "items": [to_plain(v, depth + 1) for v in x.ravel().tolist()[:2000]]}
    if type(x).__name__ == "Size" and mod.startswith("torch"):
        return {"size": list(x)}
    if isinstance(x, (bool, int, float)) or x is None:
        return x
    if isinstance(x, str):
        return {"str": x}
    if isinstance(x, (list, tuple)):
        return {"seq": [to_plain(v, depth + 1) for v in x[:5000]], "type": type(x).__name__}
    if isinstance(x, dict):
        return {"dict": {str(k): to_plain(v, depth + 1) for k, v in list(x.items())[:2000]}}
    if type(x).__name__ in ("FactoredMatrix",):
        return {"repr": repr(x)}
    return {"repr": repr(x)[:4000]}


def _install_recorders() -> None:
    """Plotly, circuitsvis, pysvelte and neel_plotly record their data instead of rendering."""
    try:
        import plotly.basedatatypes as bdt

        def show(self, *args, **kwargs):
            d = self.to_plotly_json()
            traces = []
            for tr in d.get("data", []):
                traces.append({k: to_plain(tr[k]) for k in ("x", "y", "z", "text", "hovertext")
                               if k in tr and tr[k] is not None})
            title = d.get("layout", {}).get("title", {})
            REC.add("plotly", {"traces": traces, "title": to_plain(title.get("text") if isinstance(title, dict) else title)})

        bdt.BaseFigure.show = show
    except ImportError:
        pass

    class _Rendered:
        def __init__(self, name):
            self.name = name

        def show_code(self):
            return f"<div>{self.name}</div>"

        def _repr_html_(self):
            return self.show_code()

        def __str__(self):
            return self.show_code()

        def __repr__(self):
            return f"<rendered {self.name}>"

    def render(react_element_name, **kwargs):
        REC.add("circuitsvis", {"element": react_element_name,
                                "props": {k: to_plain(v) for k, v in kwargs.items()}})
        return _Rendered(react_element_name)

    try:
        import circuitsvis  # noqa: F401
        import importlib

        for mod in ("attention", "activations", "logits", "examples", "tokens", "topk_tokens",
                    "topk_samples", "utils.render"):
            try:
                m = importlib.import_module(f"circuitsvis.{mod}")
            except ImportError:
                continue
            if hasattr(m, "render"):
                m.render = render
    except ImportError:
        pass


def _stub_modules(stub_dir: Path) -> None:
    """Minimal neel_plotly / pysvelte (not on PyPI): record the arrays they are given; gradio (a
    UI toolkit, not installed here): importable only (its cells are excluded)."""
    stub_dir.mkdir(parents=True, exist_ok=True)
    (stub_dir / "neel_plotly.py").write_text(
        '"""Stand-in for neel_plotly (not on PyPI): records the data of each plot."""\n'
        "from run_tl_demos import REC, to_plain\n\n"
        "def _rec(kind, *args, **kwargs):\n"
        "    keep = {k: to_plain(v) for k, v in kwargs.items() if k in ('x', 'y', 'title', 'facet_labels', 'hover', 'hover_name')}\n"
        "    REC.add('neel_plotly.' + kind, {'args': [to_plain(a) for a in args], 'kwargs': keep})\n\n"
        "def imshow(*a, **k):\n    _rec('imshow', *a, **k)\n\n"
        "def line(*a, **k):\n    _rec('line', *a, **k)\n\n"
        "def scatter(*a, **k):\n    _rec('scatter', *a, **k)\n")
    (stub_dir / "gradio.py").write_text(
        '"""Stand-in for gradio (not installed): importable, but any UI use raises."""\n'
        "def __getattr__(name):\n"
        "    raise ImportError(f'gradio is not installed (runner stand-in); gradio.{name} is unavailable')\n")
    (stub_dir / "pysvelte.py").write_text(
        '"""Stand-in for pysvelte (not on PyPI): records the arrays of each visualisation."""\n'
        "from run_tl_demos import REC, to_plain\n\n"
        "class AttentionMulti:\n"
        "    def __init__(self, **kwargs):\n"
        "        REC.add('pysvelte.AttentionMulti', {k: to_plain(v) for k, v in kwargs.items()})\n"
        "    def __repr__(self):\n        return '<pysvelte.AttentionMulti>'\n")


def _make_shell():
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()

    def skipped(kind):
        def magic(line, cell=None):
            print(f"[runner: {kind} {line.split()[0] if line.split() else ''} not executed]")
        return magic

    shell.register_magic_function(skipped("%pip"), "line", "pip")
    shell.register_magic_function(lambda line: None, "line", "autoreload")
    shell.system = lambda cmd: print("[runner: shell command not executed]")
    shell.getoutput = lambda cmd, split=True: []
    em = shell.extension_manager
    if not hasattr(em, "load"):  # older notebooks call ExtensionManager.load (removed in IPython 8)
        em.load = lambda name: None

    from IPython.core.displaypub import DisplayPublisher

    class Pub(DisplayPublisher):
        def publish(self, data, metadata=None, source=None, **kw):
            REC.add("display", {"text": (data or {}).get("text/plain", "")})

        def clear_output(self, wait=False):
            pass

    shell.display_pub = Pub(shell=shell)
    dh = shell.displayhook
    dh.write_output_prompt = lambda: None
    dh.write_format_data = lambda *a, **k: None
    return shell


def _seed(nb: str, idx: int) -> None:
    seed = (sum(map(ord, nb)) * 1000 + idx) % (2**31)
    import random

    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover
        pass


def _drop_editable_finders() -> None:
    """Use only the glassbox found on sys.path (the tree under test): an editable install's
    meta-path finder would otherwise supply submodules missing from that tree from wherever the
    install points (e.g. a newer checkout)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]


def parse_cells(spec: str) -> Optional[set]:
    """``"0-11,14"`` -> {0, ..., 11, 14}; ``""`` -> None (every cell)."""
    if not spec:
        return None
    out = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(f"--cells: {part!r} is not an index or a range like 0-11")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def worker(nb_path: Path, nb_name: str, lib: str, out_path: Path, stub_dir: Path, run_slow: bool = False,
           only_cells: Optional[set] = None) -> None:
    _drop_editable_finders()
    os.environ["GITHUB_ACTIONS"] = "true"
    sys.path.insert(0, str(HERE))
    _stub_modules(stub_dir)
    sys.path.insert(0, str(stub_dir))
    import run_tl_demos as me  # the stubs import REC from the module, not from __main__

    global REC
    REC = me.REC
    me._install_recorders()
    shell = _make_shell()
    cells = code_cells(nb_path)
    records = []
    for idx, src in enumerate(cells):
        rec: Dict[str, Any] = {"index": idx}
        reason = EXCLUDED.get((nb_name, idx))
        if reason:
            rec.update(status="excluded", reason=reason)
            records.append(rec)
            continue
        if only_cells is not None and idx not in only_cells:
            rec.update(status="skipped", reason="not among --cells")
            records.append(rec)
            continue
        if not run_slow and only_cells is None and (nb_name, idx) in SLOW:
            rec.update(status="skipped", reason=SLOW[(nb_name, idx)])
            records.append(rec)
            continue
        if lib == "gb":
            src = swap_imports(src)
        _seed(nb_name, idx)
        REC.events = []
        out, err = io.StringIO(), io.StringIO()
        t0 = time.time()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                res = shell.run_cell(src, store_history=False)
            except BaseException as exc:  # pragma: no cover - shell itself failed
                res = None
                rec["error"] = f"{type(exc).__name__}: {exc}"
        rec["seconds"] = round(time.time() - t0, 2)
        if res is not None:
            exc = res.error_before_exec or res.error_in_exec
            if exc is not None:
                tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                rec["error"] = f"{type(exc).__name__}: {exc}"[:2000]
                rec["traceback"] = tb[-4000:]
            elif res.result is not None:
                rec["result"] = to_plain(res.result)
        rec["status"] = "error" if "error" in rec else "ok"
        rec["stdout"] = out.getvalue()[-200000:]
        rec["stderr"] = err.getvalue()[-3000:]
        rec["events"] = list(REC.events)
        records.append(rec)
        out_path.write_text(json.dumps({"notebook": nb_name, "lib": lib, "cells": records}))
        print(f"[{lib}] {nb_name} cell {idx}: {rec['status']} ({rec['seconds']} s)"
              + (f" {rec.get('error', '')[:200]}" if rec["status"] == "error" else ""), file=sys.__stdout__,
              flush=True)
    out_path.write_text(json.dumps({"notebook": nb_name, "lib": lib, "cells": records, "complete": True}))


# ------------------------------------------------------------------------------------------------
# comparison

_NUM = re.compile(r"(?<![\w.])[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?%?")
_HEX = re.compile(r"0x[0-9a-f]+")
_AUTOGRAD = re.compile(r",\s*(grad_fn=<\w+>|requires_grad=True)")


def _split_numbers(text: str) -> Tuple[str, List[Tuple[float, float]]]:
    """Text with numbers replaced by '#', and each number with the size of its last digit."""
    text = text.replace("transformer_lens", "glassbox")
    text = _AUTOGRAD.sub("", text)  # glassbox has no autograd: its tensors never carry a grad_fn
    text = _HEX.sub("0x?", text)
    nums = []

    def repl(m):
        s = m.group(0)
        pct = s.endswith("%")
        core = s[:-1] if pct else s
        mant = core.lower().split("e")[0]
        decimals = len(mant.split(".")[1]) if "." in mant else 0
        exp = int(core.lower().split("e")[1]) if "e" in core.lower() else 0
        ulp = 10.0 ** (exp - decimals)
        v = float(core)
        if pct:
            v, ulp = v / 100, ulp / 100
        nums.append((v, ulp))
        return "#"

    # NumPy pads printed columns to the widest number: spacing is layout, not content
    return re.sub(r"[ \t]+", " ", _NUM.sub(repl, text)), nums


def _close(a: float, b: float, slack: float = 0.0) -> bool:
    """|a - b| <= 1e-5 + 1e-3 |b|, or <= ``slack`` (one unit of the last printed digit for text,
    1e-4 of the array's largest magnitude for arrays)."""
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= max(1e-5 + 1e-3 * abs(b), 1.0001 * slack)


def compare_text(a: str, b: str) -> Optional[str]:
    ta, na = _split_numbers(a)
    tb, nb = _split_numbers(b)
    if ta != tb:
        la, lb = ta.splitlines(), tb.splitlines()
        for i, (x, y) in enumerate(zip(la, lb)):
            if x != y:
                return f"text differs at line {i}: {y[:150]!r} (TL) vs {x[:150]!r} (glassbox)"
        return f"text differs: {len(lb)} lines (TL) vs {len(la)} (glassbox)"
    for i, ((x, ux), (y, uy)) in enumerate(zip(na, nb)):
        if not _close(x, y, max(ux, uy)):
            return f"number {i} differs: {y} (TL) vs {x} (glassbox)"
    return None


def _decode_typed_arrays(x: Any) -> Any:
    """Plotly >= 6 serialises arrays as {"dtype", "bdata" (base64), "shape"}: back to values."""
    if isinstance(x, dict):
        d = x.get("dict")
        if isinstance(d, dict) and "bdata" in d and "dtype" in d:
            import base64

            import numpy as np

            raw = base64.b64decode(d["bdata"]["str"])
            arr = np.frombuffer(raw, dtype=np.dtype(d["dtype"]["str"]))
            shape = d.get("shape")
            if shape is not None:
                arr = arr.reshape([int(v) for v in str(shape.get("str", shape)).split(",") if v.strip()])
            return to_plain(arr)
        return {k: _decode_typed_arrays(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_decode_typed_arrays(v) for v in x]
    return x


def compare_plain(a: Any, b: Any, path: str = "") -> Optional[str]:
    """None if glassbox's `a` matches TL's `b`, else where and how they differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        if "values" in a and "values" in b:
            if a.get("shape") != b.get("shape"):
                return f"{path}: shape {b.get('shape')} (TL) vs {a.get('shape')} (glassbox)"
            if a.get("dtype") != b.get("dtype") and {a.get("dtype"), b.get("dtype")} - {"f", "i", "u", "b"}:
                return f"{path}: dtype {b.get('dtype')} (TL) vs {a.get('dtype')} (glassbox)"
            finite = [abs(v) for v in b["values"] if v is not None]
            floor = 1e-4 * max(finite) if finite else 0.0  # arrays: also 1e-4 of the array's largest |value|
            bad = [(i, x, y) for i, (x, y) in enumerate(zip(a["values"], b["values"]))
                   if not _close(x, y, floor)]
            if bad:
                i, x, y = bad[0]
                return f"{path}: {len(bad)} of {len(a['values'])} values differ, e.g. [{i}] {y} (TL) vs {x} (glassbox)"
            return None
        if "str" in a and "str" in b:
            d = compare_text(a["str"], b["str"])
            return f"{path}: {d}" if d else None
        if "repr" in a and "repr" in b:
            d = compare_text(a["repr"], b["repr"])
            return f"{path}: {d}" if d else None
        if set(a) != set(b):
            return f"{path}: {sorted(b)} (TL) vs {sorted(a)} (glassbox)"
        for k in b:
            d = compare_plain(a[k], b[k], f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}: {len(b)} items (TL) vs {len(a)} (glassbox)"
        for i, (x, y) in enumerate(zip(a, b)):
            d = compare_plain(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return None if _close(float(a), float(b)) else f"{path}: {b} (TL) vs {a} (glassbox)"
    if a != b:
        return f"{path}: {str(b)[:100]} (TL) vs {str(a)[:100]} (glassbox)"
    return None


def compare_cell(g: Dict[str, Any], t: Dict[str, Any]) -> Tuple[str, str]:
    """(verdict, detail): verdict in same / differs / fails / both-fail / excluded / tl-only-fails."""
    if t.get("status") == "excluded":
        return "excluded", t.get("reason", "")
    if t.get("status") == "skipped" or g.get("status") == "skipped":
        return "skipped", t.get("reason") or g.get("reason", "")
    if g.get("status") == "error" and t.get("status") == "error":
        eg, et = g["error"].split(":")[0], t["error"].split(":")[0]
        return "both-fail", f"TL: {t['error'][:150]} | glassbox: {g['error'][:150]}" + ("" if eg == et else " (different errors)")
    if g.get("status") == "error":
        return "fails", g["error"][:300]
    if t.get("status") == "error":
        return "tl-only-fails", t["error"][:300]
    d = compare_text(g.get("stdout", ""), t.get("stdout", ""))
    if d:
        return "differs", "stdout: " + d
    d = compare_plain(_decode_typed_arrays(g.get("result")), _decode_typed_arrays(t.get("result")), "result")
    if d:
        return "differs", d
    ge, te = g.get("events", []), t.get("events", [])
    if len(ge) != len(te):
        return "differs", f"{len(te)} displayed objects (TL) vs {len(ge)} (glassbox)"
    for i, (x, y) in enumerate(zip(ge, te)):
        d = compare_plain(_decode_typed_arrays(x), _decode_typed_arrays(y), f"display[{i}]")
        if d:
            return "differs", d
    return "same", ""


def report(out_dir: Path, names: List[str], suffix: str = "", notebooks: Optional[Path] = None) -> str:
    lines = ["| notebook | cells | excluded | not run (slow) | same | differ | fail (glassbox only) | fail (both) |",
             "|---|---|---|---|---|---|---|---|"]
    details = []
    totals = [0] * 7
    for nb in names:
        tp, gp = out_dir / f"{nb}.tl.json", out_dir / f"{nb}.gb{suffix}.json"
        if not tp.exists() or not gp.exists():
            lines.append(f"| {nb} | (not run) | | | | | | |")
            continue
        t_doc = json.loads(tp.read_text())
        t = t_doc["cells"]
        if not t_doc.get("complete"):  # a stopped reference run: the cells it did not reach
            n = len(code_cells(notebooks / f"{nb}.ipynb")) if notebooks else len(t)
            t = t + [{"index": i, "status": "skipped", "reason": "the TransformerLens reference run was stopped before this cell"}
                     for i in range(len(t), n)]
        g = {c["index"]: c for c in json.loads(gp.read_text())["cells"]}
        counts = dict.fromkeys(["excluded", "skipped", "same", "differs", "fails", "both-fail", "tl-only-fails"], 0)
        for tc in t:
            gc = g.get(tc["index"], {"status": "error", "error": "not run (worker stopped)"})
            if (nb, tc["index"]) in EXCLUDED:
                tc = {"index": tc["index"], "status": "excluded", "reason": EXCLUDED[(nb, tc["index"])]}
            verdict, detail = compare_cell(gc, tc)
            counts[verdict] += 1
            if verdict not in ("same",):
                details.append(f"- {nb} cell {tc['index']}: **{verdict}** {detail}")
        row = [len(t), counts["excluded"], counts["skipped"], counts["same"], counts["differs"],
               counts["fails"] + counts["tl-only-fails"], counts["both-fail"]]
        totals = [a + b for a, b in zip(totals, row)]
        lines.append(f"| {nb} | " + " | ".join(map(str, row)) + " |")
    lines.append("| **total** | " + " | ".join(map(str, totals)) + " |")
    return "\n".join(lines) + "\n\n" + "\n".join(details) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--notebooks", type=Path, help="folder holding the demo .ipynb files")
    ap.add_argument("--hf-home", type=Path, help="HF_HOME built by make_models.py")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only", default="", help="comma-separated notebook names")
    ap.add_argument("--libs", default="tl,gb")
    ap.add_argument("--suffix", default="", help="tag for the glassbox result files (e.g. -before)")
    ap.add_argument("--reuse", action="store_true", help="keep complete result files")
    ap.add_argument("--report", action="store_true", help="only print the comparison")
    ap.add_argument("--timeout", type=int, default=4 * 3600)
    ap.add_argument("--all", action="store_true", help="also run the slow cells (see SLOW)")
    ap.add_argument("--cells", default="", help="run only these code cells, e.g. 0-11,14 (slow ones "
                    "included; the rest are recorded as skipped) -- use a separate --out")
    ap.add_argument("--worker", nargs=4, metavar=("NB_PATH", "NB_NAME", "LIB", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        nb_path, nb_name, lib, out = a.worker
        worker(Path(nb_path), nb_name, lib, Path(out), a.out / "stubs", run_slow=a.all,
               only_cells=parse_cells(a.cells))
        return
    names = [n for n in a.only.split(",") if n] or NOTEBOOKS
    a.out.mkdir(parents=True, exist_ok=True)
    if not a.report:
        env = dict(os.environ, HF_HOME=str(a.hf_home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   TOKENIZERS_PARALLELISM="false", HF_HUB_DISABLE_PROGRESS_BARS="1",
                   PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
        env.setdefault("OMP_NUM_THREADS", "1")
        for nb in names:
            for lib in a.libs.split(","):
                out = a.out / f"{nb}.{lib}{a.suffix if lib == 'gb' else ''}.json"
                if a.reuse and out.exists() and json.loads(out.read_text()).get("complete"):
                    continue
                cmd = [sys.executable, str(Path(__file__).resolve()), "--out", str(a.out)] + (["--all"] if a.all else []) + (
                       [f"--cells={a.cells}"] if a.cells else []) + [
                       "--worker", str(a.notebooks / f"{nb}.ipynb"), nb, lib, str(out)]
                try:
                    subprocess.run(cmd, env=env, timeout=a.timeout, check=False)
                except subprocess.TimeoutExpired:
                    print(f"{nb} [{lib}] timed out", flush=True)
    print(report(a.out, names, a.suffix, a.notebooks))


if __name__ == "__main__":
    main()
