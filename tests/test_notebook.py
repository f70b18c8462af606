"""The study notebook (notebooks/glassbox_llms.ipynb) runs top to bottom, unchanged, for a
GPT-2-architecture model and a LLaMA-family model, and produces plausible key outputs.

Executed with nbclient through notebooks/run_notebook.py (kernel = this interpreter, a kernel
spec in a temporary folder). Each run takes minutes (SmolLM2 has 30 layers): the models are the
notebook's offline defaults, ``gpt2`` (the HF cache's GPT-2, else the embedded
glassbox/tiny-gpt2-ioi) and ``llama`` (SmolLM2-135M GGUF, else glassbox/tiny-llama-ioi).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "glassbox_llms.ipynb"


def _runner():
    spec = importlib.util.spec_from_file_location("run_notebook", ROOT / "notebooks" / "run_notebook.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_one_parameters_cell_naming_the_model():
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    first = [ln for ln in tagged[0].source.splitlines() if "=" in ln and not ln.lstrip().startswith("#")][0]
    name, value = (s.strip() for s in first.split("#")[0].split("=", 1))
    assert name == "MODEL" and value[0] in "\"'"
    # committed notebook: no outputs (the executed copies live in notebooks/executed/)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    # no branch on the architecture in the analysis cells
    for c in nb.cells:
        if c.cell_type == "code":
            assert "is_llama" not in c.source and "== \"LlamaForCausalLM\"" not in c.source


def _check(summary, nb):
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert summary, "the summary cell did not print its JSON"
    m = summary["model"]
    # plots rendered: PNG outputs, and the attention view's HTML inline
    pngs = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
    assert pngs >= 6, pngs
    html = [o["data"]["text/html"] for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if "text/html" in o.get("data", {})]
    assert any("gbav-wrap" in (h if isinstance(h, str) else "".join(h)) for h in html), "attention view not inline"
    # logit lens: one read-out per layer + final, the final read-out is the model's output
    ll = summary["logit_lens"]
    assert len(ll["rank_last_pos"]) == m["n_layers"] + 1
    # activation patching: the heatmaps exist with the right shapes, and the endpoints differ
    p = summary["patching"]
    assert p["resid_shape"][0] == m["n_layers"] and p["heads_shape"] == [m["n_layers"], m["n_heads"]]
    assert abs(p["clean_logit_diff"] - p["corrupted_logit_diff"]) > 1e-3, p
    # patching resid_pre at layer 0 at the swapped token restores the clean run exactly
    assert p["resid_layer0_swap"] == pytest.approx(p["clean_logit_diff"], abs=1e-3)
    # causal scrubbing: fractions in [0, 1], the induction-head hypothesis beats the wrong one
    s = summary["scrubbing"]
    for k in ("true", "wrong"):
        assert -0.02 <= s[k]["fraction_recovered"] <= 1.02, (k, s[k])
    assert s["true"]["fraction_recovered"] > s["wrong"]["fraction_recovered"], s
    # architecture read from the model, section 4 measured for both libraries
    a = summary["architecture"]
    assert a["n_params"] > 0 and a["weight_bytes"] > 0
    probes = summary["transformer_lens"]["probes"]
    assert any(r["library"] == "glassbox" and all(st.get("ok") for st in r["steps"]) for r in probes)
    assert summary["modules"] and "glassbox.lens" in summary["modules"]
    return m


@pytest.mark.parametrize("model, family", [("gpt2", "GPT2LMHeadModel"), ("llama", "LlamaForCausalLM")])
def test_notebook_runs(model, family, tmp_path):
    run = _runner()
    out = tmp_path / f"nb_{model}.ipynb"
    summary = run.execute(model, out, timeout=900)
    nb = nbformat.read(str(out), as_version=4)
    m = _check(summary, nb)
    assert m["architecture"] == family
    if family == "LlamaForCausalLM":
        a = summary["architecture"]
        assert a["normalization"].startswith("RMS") and a["gated_mlp"] and a["positional"] == "rotary"
        assert a["rotary_hooks"] and a["gated_hooks"]
    json.dumps(summary)  # serialisable
    assert np.isfinite(summary["timings"]["total"])
