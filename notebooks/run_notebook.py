"""Execute the study notebook and write it, outputs included, under ``notebooks/executed/``.

    python notebooks/run_notebook.py                    # both defaults: gpt2 and llama
    python notebooks/run_notebook.py --model llama      # one model
    python notebooks/run_notebook.py --model path/to/model.gguf --out /tmp/x.ipynb

``--model`` is what the notebook's ``MODEL`` parameter takes (``"gpt2"``, ``"llama"``, a hub name
from the local HF cache, a folder, a ``.gguf``). Parameters are injected papermill-style: a cell
tagged ``injected-parameters`` is inserted after the cell tagged ``parameters``, which is left as
it is. The kernel is this interpreter (a kernel spec written to a temporary folder, so nothing
needs ``ipykernel install``), its working folder ``notebooks/``, and the repository root is put
first on its ``PYTHONPATH`` so the notebook imports this checkout's glassbox. A cell error stops
the run with a non-zero exit status (the partly executed notebook is still written, to inspect).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NOTEBOOK = HERE / "glassbox_llms.ipynb"
EXECUTED = HERE / "executed"
DEFAULT_MODELS = ("gpt2", "llama")
KERNEL_NAME = "glassbox-study-python"
SUMMARY_MARK = "GLASSBOX_SUMMARY "


def _kernel_spec_dir(tmp: str) -> str:
    """A Jupyter data folder holding one kernel spec that runs ``sys.executable``."""
    spec = Path(tmp) / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python ({sys.executable})", "language": "python"}))
    return tmp


def inject_parameters(nb: Any, params: Dict[str, Any]) -> None:
    """Insert an ``injected-parameters`` cell after the (single) ``parameters`` cell."""
    import nbformat

    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        raise ValueError(f"the notebook must have exactly one cell tagged 'parameters', found {len(tagged)}")
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    if params:
        src = "# Parameters\n" + "".join(f"{k} = {v!r}\n" for k, v in params.items())
        cell = nbformat.v4.new_code_cell(src)
        cell.metadata["tags"] = ["injected-parameters"]
        nb.cells.insert(tagged[0] + 1, cell)


def execute(model: Optional[str], out: Path, timeout: int = 900, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Run the notebook with ``MODEL=model`` (None: the notebook's own default) and write it to
    ``out``. Returns the notebook's summary (the JSON its last cell prints) plus ``seconds``.
    Raises ``nbclient.exceptions.CellExecutionError`` on the first cell error."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    params = dict(extra or {})
    if model is not None:
        params = {"MODEL": model, **params}
    inject_parameters(nb, params)
    env_keep = {k: os.environ.get(k) for k in ("JUPYTER_PATH", "PYTHONPATH")}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="glassbox-kernel-") as tmp:
        os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (_kernel_spec_dir(tmp), env_keep["JUPYTER_PATH"]) if p)
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env_keep["PYTHONPATH"]) if p)
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "Python 3", "language": "python"}
        client = NotebookClient(nb, timeout=timeout, kernel_name=KERNEL_NAME,
                                resources={"metadata": {"path": str(HERE)}})
        try:
            client.execute()
        finally:
            for k, v in env_keep.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
            out.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, str(out))
    summary = read_summary(nb)
    summary["seconds"] = time.perf_counter() - t0
    return summary


def read_summary(nb: Any) -> Dict[str, Any]:
    """The JSON the notebook's ``summary`` cell printed (``{}`` if it did not run)."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for o in cell.get("outputs", []):
            text = o.get("text", "") if o.get("output_type") == "stream" else ""
            for line in text.splitlines():
                if line.startswith(SUMMARY_MARK):
                    return json.loads(line[len(SUMMARY_MARK):])
    return {}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", help="MODEL parameter (repeatable; default: gpt2 and llama)")
    ap.add_argument("--out", type=Path, help="output notebook (only with one --model)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    args = ap.parse_args(argv)
    models = args.model or list(DEFAULT_MODELS)
    if args.out and len(models) != 1:
        ap.error("--out needs exactly one --model")
    status = 0
    for m in models:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(m).name.replace(".gguf", ""))
        out = args.out or EXECUTED / f"glassbox_llms_{safe}.ipynb"
        print(f"running the notebook with MODEL={m!r} -> {out}", flush=True)
        try:
            s = execute(m, out, timeout=args.timeout)
        except Exception as exc:  # a cell error: report it, keep going with the next model
            print(f"  FAILED: {type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}")
            status = 1
            continue
        print(f"  done in {s['seconds']:.0f} s: {s.get('model', {}).get('name')} "
              f"({s.get('model', {}).get('architecture')})")
    return status


if __name__ == "__main__":
    sys.exit(main())
