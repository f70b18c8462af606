"""scripts/train_embedded_models.py: the recipe each model card states is the one the script runs.

The shipped models are trained by hand (minutes to tens of minutes), never in CI. What CI can
check: every command a model card gives parses with the script's own command line and agrees
with the run's ``training.json`` (steps, learning rate, batches, data, schedule, weight decay,
heads, tied or untied unembedding), and the script's ``train()`` still runs with those options
(a few steps on tiny batches).
"""
from __future__ import annotations

import importlib.util
import json
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "glassbox" / "models"
SCRIPT = "scripts/train_embedded_models.py"


def _script():
    spec = importlib.util.spec_from_file_location("train_embedded_models", ROOT / SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _card_commands(folder: Path) -> list:
    """The argument lists of the card's training commands (in order)."""
    out = []
    for line in (folder / "README.md").read_text().splitlines():
        if SCRIPT in line and line.lstrip().startswith("OMP_NUM_THREADS=1 python"):
            words = shlex.split(line)
            out.append(words[words.index(SCRIPT) + 1:])
    return out


def _expect(args, info: dict, cfg: dict, kind: str) -> None:
    assert args.steps == info["steps"] and args.lr == pytest.approx(info["lr"])
    assert args.batch_ioi == info["batch_ioi"] and args.batch_induction == info["batch_induction"]
    assert args.alphabet == info.get("alphabet", 0)
    assert args.schedule == info.get("schedule", "cosine")
    assert args.alphabet_until == pytest.approx(info.get("alphabet_until", 1.0))
    assert args.weight_decay == pytest.approx(info.get("weight_decay", 0.05))
    if kind == "gpt2":
        assert args.untied == (not cfg.get("tie_word_embeddings", True))
        assert (args.heads or 4) == cfg["n_head"] == info.get("n_heads", cfg["n_head"])


@pytest.mark.parametrize("kind, folder", [("gpt2", "tiny-gpt2-ioi"), ("llama", "tiny-llama-ioi")])
def test_card_commands_match_the_training_run(kind, folder):
    mod = _script()
    path = MODELS / folder
    info = json.loads((path / "training.json").read_text())
    cfg = json.loads((path / "config.json").read_text())
    cmds = _card_commands(path)
    assert cmds, f"{folder}/README.md gives no training command"
    parser = mod.build_parser()
    first = parser.parse_args(cmds[0])
    assert first.only == [kind] and not first.resume
    assert (first.induction_data == "distinct") == (info.get("induction_data") == "distinct")
    _expect(first, info, cfg, kind)
    # a second phase (--resume) is stated iff the run had one
    assert (len(cmds) == 2) == ("resume" in info), cmds
    if "resume" in info:
        second = parser.parse_args(cmds[1])
        assert second.resume and second.only == [kind]
        _expect(second, {**info["resume"], "weight_decay": info["resume"].get("weight_decay", 0.05)}, cfg, kind)


def test_train_runs_with_the_card_options():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    mod = _script()
    tok = mod.build_tokenizer()
    model, info = mod.train("gpt2", tok, steps=4, lr=2e-3, b_ioi=2, b_ind=2, log_every=1000,
                            distinct=True, alphabet=8, alphabet_until=0.5, untied=True, n_heads=2,
                            weight_decay=0.05)
    assert model.config.n_head == 2 and not model.config.tie_word_embeddings
    assert info["n_heads"] == 2 and info["alphabet_until"] == 0.5 and info["induction_data"] == "distinct"
    assert info["steps"] == 4 and info["weight_decay"] == 0.05
    for key in ("final_ioi_loss", "final_induction_loss", "seconds", "parameters"):
        assert key in info
