"""Fixture builders for the parity tests.

Everything here is built locally (no model hub): GPT-2 checkpoints in the Hugging Face folder
layout with random weights, a byte-level BPE tokenizer trained on fixed English text, and the
reference implementations (HF ``GPT2LMHeadModel`` and TransformerLens ``HookedTransformer``)
built from the very same weights.

Random weights are deliberately *not* HF's init: HF sets LayerNorm to (w=1, b=0) and every bias
to 0, which would hide a transposed LN weight or a forgotten bias. We draw all of them at random.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, asdict
from pathlib import Path

import numpy as np

EOT = "<|endoftext|>"

# Fixed English text for training the tokenizer and for test prompts.
CORPUS = """\
When Mary and John went to the store, John gave a drink to Mary. The quick brown fox jumps over
the lazy dog. In mechanistic interpretability we study the internal computations of neural
networks: attention heads move information between positions, and multilayer perceptrons
transform it in place. The residual stream is the sum of the outputs of every previous layer.
An induction head looks for the previous occurrence of the current token and predicts the token
that came after it. Activation patching replaces an activation from a corrupted run with the one
from a clean run and measures how much of the behaviour is restored. Logit lens reads the
residual stream through the unembedding at every layer. Once upon a time there was a little
girl who lived in a village near the forest. Whenever she went out, the little girl wore a red
riding cloak, so everyone in the village called her Little Red Riding Hood. One morning she asked
her mother if she could go to visit her grandmother as it had been a while since they had seen
each other. The weather was fine, the birds were singing and the sun was shining on the hills.
Python is a programming language that lets you work quickly and integrate systems effectively.
Numbers such as 1, 2, 3, 42, 1024 and 50257 appear in configuration files; so do names like
gpt2, layer_norm_epsilon and n_positions. It was the best of times, it was the worst of times,
it was the age of wisdom, it was the age of foolishness, it was the epoch of belief, it was the
epoch of incredulity, it was the season of Light, it was the season of Darkness.
"""

PROMPTS = [
    "When Mary and John went to the store, John gave a drink to",
    "The quick brown fox",
    "An induction head looks for the previous occurrence of the current token.",
    "It was the best of times, it was the worst of times, it was the age of wisdom",
]


@dataclass(frozen=True)
class GPT2Spec:
    """A GPT-2 shape. `init_std` is the std of the random matrices."""

    name: str
    n_layer: int
    n_embd: int
    n_head: int
    vocab_size: int
    n_positions: int
    seed: int = 0
    init_std: float = 0.02
    scale_attn_by_inverse_layer_idx: bool = False
    activation_function: str = "gelu_new"

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True) + "|v3"
        return self.name + "-" + hashlib.sha1(blob.encode()).hexdigest()[:10]


# (a) the real gpt2 shape
GPT2_REAL = GPT2Spec("gpt2-real", n_layer=12, n_embd=768, n_head=12, vocab_size=50257,
                     n_positions=1024, seed=1, init_std=0.03)
# (b) small odd shapes: d_head 13, odd vocab, short context
GPT2_ODD = GPT2Spec("gpt2-odd", n_layer=3, n_embd=65, n_head=5, vocab_size=301,
                    n_positions=64, seed=2, init_std=0.12)
GPT2_ODD2 = GPT2Spec("gpt2-odd2", n_layer=2, n_embd=36, n_head=3, vocab_size=300,
                     n_positions=40, seed=3, init_std=0.15,
                     scale_attn_by_inverse_layer_idx=True)


def cache_root(default: Path) -> Path:
    """Where fixtures go: $GLASSBOX_TEST_CACHE if set (reused across runs), else `default`."""
    env = os.environ.get("GLASSBOX_TEST_CACHE")
    return Path(env) if env else Path(default)


# ------------------------------------------------------------------------------------------
# tokenizer


def build_tokenizer_json(vocab_size: int) -> str:
    """A GPT-2-style byte-level BPE trained on CORPUS, serialised as tokenizer.json text.

    The model has `vocab_size` ids: trained tokens first, then filler tokens that no merge can
    produce (when the corpus is too small to train that many merges), and `<|endoftext|>` last
    (id vocab_size - 1, as in GPT-2 where it is 50256)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    n_regular = vocab_size - 1
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=n_regular,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    # Repeat the corpus with variations so that there is enough material for merges.
    lines = CORPUS.split("\n")
    texts = [CORPUS] + [" ".join(reversed(l.split())) for l in lines if l]
    tok.train_from_iterator(texts, trainer=trainer)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    merges = spec["model"]["merges"]
    assert len(vocab) <= n_regular, (len(vocab), n_regular)
    i = 0
    while len(vocab) < n_regular:
        filler = f"<|unused_{i}|>"
        vocab[filler] = len(vocab)
        i += 1
    bpe = models.BPE(vocab=vocab, merges=[tuple(m) if isinstance(m, list) else tuple(m.split(" "))
                                          for m in merges])
    out = Tokenizer(bpe)
    out.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    out.decoder = decoders.ByteLevel()
    out.post_processor = processors.ByteLevel(trim_offsets=False)
    out.add_special_tokens([EOT])
    assert out.token_to_id(EOT) == vocab_size - 1, out.token_to_id(EOT)
    assert out.get_vocab_size() == vocab_size
    return out.to_str()


def write_tokenizer_files(folder: Path, vocab_size: int, n_positions: int) -> None:
    folder = Path(folder)
    text = build_tokenizer_json(vocab_size)
    (folder / "tokenizer.json").write_text(text)
    spec = json.loads(text)
    # vocab.json / merges.txt as GPT-2 ships them (slow-tokenizer files)
    vocab = dict(spec["model"]["vocab"])
    vocab[EOT] = vocab_size - 1
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    merges = spec["model"]["merges"]
    merges = [" ".join(m) if isinstance(m, list) else m for m in merges]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "add_prefix_space": False,
        "bos_token": EOT,
        "eos_token": EOT,
        "unk_token": EOT,
        "clean_up_tokenization_spaces": False,
        "model_max_length": n_positions,
        "tokenizer_class": "GPT2Tokenizer",
    }, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": EOT, "eos_token": EOT, "unk_token": EOT}, indent=2))


# ------------------------------------------------------------------------------------------
# model


def make_hf_gpt2(spec: GPT2Spec):
    """A GPT2LMHeadModel with every parameter random (LN and biases included)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        n_layer=spec.n_layer, n_embd=spec.n_embd, n_head=spec.n_head,
        vocab_size=spec.vocab_size, n_positions=spec.n_positions,
        bos_token_id=spec.vocab_size - 1, eos_token_id=spec.vocab_size - 1,
        activation_function=spec.activation_function,
        scale_attn_by_inverse_layer_idx=spec.scale_attn_by_inverse_layer_idx,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        initializer_range=spec.init_std,
    )
    torch.manual_seed(spec.seed)
    model = GPT2LMHeadModel(cfg)
    g = torch.Generator().manual_seed(spec.seed + 1000)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln_" in name:  # ln_1, ln_2, ln_f
                if name.endswith("weight"):
                    p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(spec.init_std * torch.randn(p.shape, generator=g))
        # Larger positional embeddings so that position matters.
        model.transformer.wpe.weight.mul_(3.0)
    model.eval()
    return model


def save_gpt2_folder(spec: GPT2Spec, folder: Path) -> Path:
    """Write config.json + model.safetensors + tokenizer files for `spec` into `folder`."""
    folder = Path(folder)
    done = folder / ".complete"
    if done.exists():
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    model = make_hf_gpt2(spec)
    model.save_pretrained(str(folder))
    write_tokenizer_files(folder, spec.vocab_size, spec.n_positions)
    assert (folder / "model.safetensors").exists(), list(folder.iterdir())
    done.write_text("ok")
    return folder


def load_hf(folder: Path):
    """The HF reference model, loaded from the folder with the eager attention implementation."""
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(str(folder), attn_implementation="eager")
    model.eval()
    return model


def load_hf_tokenizer(folder: Path, padding_side: str = "right"):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.padding_side = padding_side
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def tl_config(hf_model, processed: bool, **flags):
    from transformer_lens import HookedTransformerConfig
    import torch

    c = hf_model.config
    return HookedTransformerConfig(
        d_model=c.n_embd, d_head=c.n_embd // c.n_head, n_heads=c.n_head,
        d_mlp=c.n_embd * 4, n_layers=c.n_layer, n_ctx=c.n_positions,
        eps=c.layer_norm_epsilon, d_vocab=c.vocab_size, act_fn=c.activation_function,
        use_attn_scale=True, use_local_attn=False,
        scale_attn_by_inverse_layer_idx=c.scale_attn_by_inverse_layer_idx,
        normalization_type="LNPre" if processed else "LN",
        original_architecture="GPT2LMHeadModel", model_name="gpt2-fixture",
        init_weights=False, device="cpu", dtype=torch.float32, default_prepend_bos=True,
        **flags,
    )


def load_tl(hf_model, folder: Path | None = None, processed: bool = True,
            padding_side: str | None = None, **flags):
    """TransformerLens reference built offline from `hf_model` through TL's own GPT-2 conversion
    and weight processing (what `HookedTransformer.from_pretrained("gpt2", hf_model=...)` does,
    without the hub look-ups). `flags`: extra HookedTransformerConfig fields (use_hook_tokens...)."""
    from transformer_lens import HookedTransformer
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    cfg = tl_config(hf_model, processed, **flags)
    tokenizer = load_hf_tokenizer(folder) if folder is not None else None
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False,
                              default_padding_side=padding_side)
    sd = convert_gpt2_weights(hf_model, cfg)
    model.load_and_process_state_dict(
        sd, fold_ln=processed, center_writing_weights=processed, center_unembed=processed,
        fold_value_biases=processed, refactor_factored_attn_matrices=False)
    model.eval()
    return model


# ------------------------------------------------------------------------------------------
# arrays


def to_np(x) -> np.ndarray:
    """numpy view of a numpy array / torch tensor / scalar (float64 is kept as is)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def max_abs_diff(a, b) -> float:
    """max |a-b| over positions where both are finite; +inf if the non-finite masks differ."""
    a = to_np(a).astype(np.float64)
    b = to_np(b).astype(np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    fa, fb = np.isfinite(a), np.isfinite(b)
    if not np.array_equal(fa, fb):
        return float("inf")
    if not np.array_equal(a[~fa], b[~fb]):  # same signs of inf, both nan
        if not (np.isnan(a[~fa]) == np.isnan(b[~fb])).all() or not np.array_equal(
                a[~fa][~np.isnan(a[~fa])], b[~fb][~np.isnan(b[~fb])]):
            return float("inf")
    if not fa.any():
        return 0.0
    return float(np.max(np.abs(a[fa] - b[fa])))


def random_tokens(vocab: int, shape, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab, size=shape, dtype=np.int64)
