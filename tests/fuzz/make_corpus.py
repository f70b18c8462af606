"""Regenerate the seed corpora of ``tests/fuzz/corpus/`` (small valid files + a few malformed).

``python tests/fuzz/make_corpus.py`` (needs numpy and the ``gguf`` package). Deterministic.
"""
from __future__ import annotations

import json
import random
import struct
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE.parent))

from glassbox.loading.safetensors_io import SafeTensor, float32_to_bf16, save_safetensors  # noqa: E402


def _out(name: str) -> Path:
    p = HERE / "corpus" / name
    p.mkdir(parents=True, exist_ok=True)
    for f in p.iterdir():
        f.unlink()
    return p


def safetensors() -> None:
    out = _out("safetensors")
    rng = np.random.default_rng(0)
    save_safetensors(out / "small.safetensors", {
        "w": rng.standard_normal((3, 4)).astype(np.float32),
        "h": rng.standard_normal((2, 2)).astype(np.float16),
        "b": SafeTensor(float32_to_bf16(rng.standard_normal(5).astype(np.float32)), "BF16"),
        "i": np.arange(3, dtype=np.int64), "m": np.array([True, False]),
        "e": np.zeros((0, 3), np.float32), "s": np.float32(2.0).reshape(()),
    }, metadata={"format": "pt"})
    save_safetensors(out / "one.safetensors", {"x": np.ones(2, np.float32)})
    good = (out / "one.safetensors").read_bytes()
    (out / "truncated.safetensors").write_bytes(good[:-3])
    hdr = b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}'
    (out / "overlap.safetensors").write_bytes(struct.pack("<Q", len(hdr)) + hdr + bytes(12))
    hdr = b'{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}}'
    (out / "overflow.safetensors").write_bytes(struct.pack("<Q", len(hdr)) + hdr)
    (out / "odd_offset.safetensors").write_bytes(
        struct.pack("<Q", 53) + b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}' + bytes(8))


def _gguf_writer(path: Path, arch: str, seed: int, tok: str) -> None:
    """A tiny GGUF (d_model 32 / 256 for k-quants): 1 layer, random weights, tokenizer metadata."""
    import gguf

    Q = gguf.GGMLQuantizationType
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"fuzz-{arch}")
    if tok == "llama":
        tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["\u2581", "a", "\u2581a", "b"]
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores([0.0] * 259 + [-1.0, -2.0, -3.0, -4.0])
        w.add_token_types([2, 3, 3] + [6] * 256 + [1, 1, 1, 1])
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
    else:
        from glassbox.loading.gguf_tokenizer import byte_level_alphabet

        spell = byte_level_alphabet()
        tokens = [spell[b] for b in range(256)] + ["\u0120t", "he", "<|endoftext|>"]
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("llama-bpe" if arch == "llama" else "gpt-2")
        w.add_token_list(tokens)
        w.add_token_types([1] * 258 + [3])
        w.add_token_merges(["\u0120 t", "h e"])
        w.add_bos_token_id(len(tokens) - 1)
        w.add_eos_token_id(len(tokens) - 1)
    V = len(tokens)
    D, M, H = 32, 64, 2
    w.add_block_count(1)
    w.add_context_length(16)
    w.add_embedding_length(D)
    w.add_feed_forward_length(M)
    w.add_head_count(H)
    f32 = lambda *s: (0.1 * rng.standard_normal(s)).astype(np.float32)  # noqa: E731
    if arch == "llama":
        w.add_head_count_kv(1)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_rope_dimension_count(D // H)
        w.add_tensor("token_embd.weight", gguf.quants.quantize(f32(V, D), Q.Q8_0), raw_dtype=Q.Q8_0)
        w.add_tensor("blk.0.attn_norm.weight", 1 + f32(D))
        w.add_tensor("blk.0.attn_q.weight", gguf.quants.quantize(f32(D, D), Q.Q4_0), raw_dtype=Q.Q4_0)
        w.add_tensor("blk.0.attn_k.weight", f32(D // H, D).astype(np.float16))
        w.add_tensor("blk.0.attn_v.weight", gguf.quants.quantize(f32(D // H, D), Q.Q4_1), raw_dtype=Q.Q4_1)
        w.add_tensor("blk.0.attn_output.weight", f32(D, D))
        w.add_tensor("blk.0.ffn_norm.weight", 1 + f32(D))
        w.add_tensor("blk.0.ffn_gate.weight", f32(M, D))
        w.add_tensor("blk.0.ffn_up.weight", gguf.quants.quantize(f32(M, D), Q.Q8_0), raw_dtype=Q.Q8_0)
        w.add_tensor("blk.0.ffn_down.weight", f32(D, M).astype(np.float16))
        w.add_tensor("output_norm.weight", 1 + f32(D))
    else:
        w.add_layer_norm_eps(1e-5)
        w.add_tensor("token_embd.weight", f32(V, D))
        w.add_tensor("position_embd.weight", f32(16, D))
        for n in ("attn_norm", "ffn_norm"):
            w.add_tensor(f"blk.0.{n}.weight", 1 + f32(D))
            w.add_tensor(f"blk.0.{n}.bias", f32(D))
        w.add_tensor("blk.0.attn_qkv.weight", gguf.quants.quantize(f32(3 * D, D), Q.Q8_0), raw_dtype=Q.Q8_0)
        w.add_tensor("blk.0.attn_qkv.bias", f32(3 * D))
        w.add_tensor("blk.0.attn_output.weight", f32(D, D).astype(np.float16))
        w.add_tensor("blk.0.attn_output.bias", f32(D))
        w.add_tensor("blk.0.ffn_up.weight", f32(M, D))
        w.add_tensor("blk.0.ffn_up.bias", f32(M))
        w.add_tensor("blk.0.ffn_down.weight", gguf.quants.quantize(f32(D, M), Q.Q4_0), raw_dtype=Q.Q4_0)
        w.add_tensor("blk.0.ffn_down.bias", f32(D))
        w.add_tensor("output_norm.weight", 1 + f32(D))
        w.add_tensor("output_norm.bias", f32(D))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def gguf() -> None:
    out = _out("gguf")
    _gguf_writer(out / "tiny-llama.gguf", "llama", 0, "llama")
    _gguf_writer(out / "tiny-gpt2.gguf", "gpt2", 1, "gpt2")
    good = (out / "tiny-llama.gguf").read_bytes()
    (out / "truncated.gguf").write_bytes(good[: len(good) // 2])
    (out / "header-only.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0))
    (out / "bigcount.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2**40, 2**62) + bytes(16))
    tok = _out("tokenizer")
    _gguf_writer(tok / "tok-llama.gguf", "llama", 2, "llama")
    _gguf_writer(tok / "tok-bpe.gguf", "llama", 3, "gpt2")


def tokenizer() -> None:
    from helpers_models import build_tokenizer_json

    out = HERE / "corpus" / "tokenizer"
    (out / "tokenizer.json").write_text(build_tokenizer_json(300))
    wp = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [
        {"id": 0, "content": "[UNK]", "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}],
        "normalizer": {"type": "Lowercase"}, "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None, "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": {"[UNK]": 0, "hello": 1, "world": 2, "##s": 3}}}
    (out / "wordpiece.json").write_text(json.dumps(wp))
    (out / "bad-model.json").write_text('{"version":"1.0","model":{"type":"BPE","vocab":{"a":0},"merges":["a b"]}}')
    (out / "not-json.json").write_bytes(b"\xff\xfe{")


def config() -> None:
    out = _out("config")
    gpt2 = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 16, "n_head": 4,
            "n_layer": 2, "n_ctx": 32, "n_positions": 32, "vocab_size": 50, "n_inner": None,
            "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5}
    llama = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 16,
             "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
             "intermediate_size": 24, "max_position_embeddings": 64, "rms_norm_eps": 1e-6,
             "vocab_size": 40, "hidden_act": "silu", "rope_theta": 10000.0, "tie_word_embeddings": False}
    llama3 = dict(llama, head_dim=8, rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                   "original_max_position_embeddings": 32})
    mistral = dict(llama, architectures=["MistralForCausalLM"], model_type="mistral", sliding_window=4)
    for name, cfg in (("gpt2", gpt2), ("llama", llama), ("llama3", llama3), ("mistral", mistral),
                      ("linear-rope", dict(llama, rope_scaling={"type": "linear", "factor": 2.0})),
                      ("partial-rotary", dict(llama, partial_rotary_factor=0.5)),
                      ("bad-heads", dict(llama, num_key_value_heads=3)),
                      ("no-arch", {"model_type": "gpt2"})):
        (out / f"{name}.json").write_text(json.dumps(cfg, indent=1))
    (out / "list.json").write_text("[1, 2]")


def c_entry() -> None:
    out = _out("c_entry")
    for i in range(14):  # the first byte picks the entry point (7 of them)
        rng = random.Random(i)
        (out / f"seed-{i}").write_bytes(bytes([i % 7]) + bytes(rng.randrange(256) for _ in range(160)))


if __name__ == "__main__":
    safetensors()
    gguf()
    tokenizer()
    config()
    c_entry()
    total = sum(p.stat().st_size for p in (HERE / "corpus").rglob("*") if p.is_file())
    print(f"corpus: {total} bytes")
