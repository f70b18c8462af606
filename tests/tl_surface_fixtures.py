"""Model pairs for the TL-surface tests: (glassbox model, TransformerLens model) on identical weights.

* GPT-2: the zoo's ``GPT2_ODD`` folder (3 layers, 5 heads of d_head 13, vocab 301, a trained
  byte-level BPE tokenizer), both loaded processed (TL through its own converter and processing).
* Llama-GQA: a small LLaMA checkpoint (6 query / 2 key-value heads, RMSNorm, RoPE, SwiGLU),
  glassbox from the folder, TL through ``helpers_llama.load_tl`` (TL's converter).

Models are shared across a module: a test that changes flags or adds hooks undoes it.
"""
from __future__ import annotations

import numpy as np

import helpers_llama as hl
import helpers_models as hm

LLAMA_GQA = hl.spec("surface-llama-gqa", hidden_size=48, num_attention_heads=6, num_key_value_heads=2,
                    intermediate_size=80, vocab_size=97, max_position_embeddings=64, seed=11)


def gpt2_pair(zoo):
    return zoo.gb(hm.GPT2_ODD), zoo.tl(hm.GPT2_ODD)


def llama_pair(fixture_root):
    from glassbox import HookedTransformer

    folder = hl.save_folder(LLAMA_GQA, fixture_root / "llama" / LLAMA_GQA.key())
    return HookedTransformer.from_pretrained(str(folder)), hl.load_tl(hl.load_hf(folder))


def tokens(vocab: int, B: int = 2, P: int = 9, seed: int = 0):
    import torch

    return torch.from_numpy(np.random.default_rng(seed).integers(1, vocab, size=(B, P)))


def close(got, ref, atol: float, what: str = "") -> None:
    g, r = hm.to_np(got), hm.to_np(ref)
    assert g.shape == r.shape, f"{what}: shape {g.shape} vs TL {r.shape}"
    d = hm.max_abs_diff(g, r)
    assert d <= atol, f"{what}: max |glassbox - TL| = {d:.3g} > {atol}"
