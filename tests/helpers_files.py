"""Checkpoint files built byte by byte for the reliability tests (numpy only: no torch, no hub).

* :func:`write_llama_folder` -- ``config.json`` + ``model.safetensors`` of a tiny random
  LLaMA-family model (GQA), matrices in BF16 (or F32), written with glassbox's own writer;
* :func:`gguf_bytes` -- a GGUF file from explicit metadata and tensor-directory entries, with
  every field under the caller's control (counts, offsets, dims, types), so that each kind of
  corrupt header can be produced exactly;
* :func:`write_llama_gguf` -- a valid tiny ``llama`` GGUF (F32 or Q8_0 matrices) whose
  metadata values can be overridden one by one.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

# GGUF metadata value types and ggml tensor types used here
U32, I32, F32_T, BOOL_T, STR, ARR, U64 = 4, 5, 6, 7, 8, 9, 10
GGML_F32, GGML_Q8_0, GGML_Q4_K = 0, 8, 12


def llama_config(D: int = 64, H: int = 4, G: int = 2, L: int = 2, M: int = 96, V: int = 101,
                 **extra: Any) -> Dict[str, Any]:
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": D,
           "num_attention_heads": H, "num_key_value_heads": G, "num_hidden_layers": L,
           "intermediate_size": M, "vocab_size": V, "max_position_embeddings": 64,
           "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
    cfg.update(extra)
    return cfg


def write_llama_folder(folder: Path, *, dtype: str = "BF16", seed: int = 0,
                       config: Optional[Dict[str, Any]] = None) -> Path:
    """A tiny LLaMA checkpoint folder (no tokenizer): random matrices in ``dtype`` (BF16/F32),
    norm weights float32."""
    from glassbox.loading.safetensors_io import SafeTensor, float32_to_bf16, save_safetensors

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = config or llama_config()
    D, H, G = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    L, M, V = cfg["num_hidden_layers"], cfg["intermediate_size"], cfg["vocab_size"]
    d = D // H
    (folder / "config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(seed)
    t: Dict[str, Any] = {}

    def mat(name: str, shape: Tuple[int, int], s: float = 0.15) -> None:
        x = (rng.standard_normal(shape) * s).astype(np.float32)
        t[name] = SafeTensor(float32_to_bf16(x), "BF16") if dtype == "BF16" else x

    def gain(name: str) -> None:
        t[name] = (1 + 0.2 * rng.standard_normal(D)).astype(np.float32)

    mat("model.embed_tokens.weight", (V, D), 1.0)
    for l in range(L):
        p = f"model.layers.{l}."
        gain(p + "input_layernorm.weight")
        gain(p + "post_attention_layernorm.weight")
        mat(p + "self_attn.q_proj.weight", (H * d, D))
        mat(p + "self_attn.k_proj.weight", (G * d, D))
        mat(p + "self_attn.v_proj.weight", (G * d, D))
        mat(p + "self_attn.o_proj.weight", (D, H * d))
        mat(p + "mlp.up_proj.weight", (M, D))
        mat(p + "mlp.gate_proj.weight", (M, D))
        mat(p + "mlp.down_proj.weight", (D, M))
    gain("model.norm.weight")
    mat("lm_head.weight", (V, D))
    save_safetensors(folder / "model.safetensors", t)
    return folder


def safetensors_bytes(header: Any, data: bytes, *, header_len: Optional[int] = None,
                      raw_header: Optional[bytes] = None) -> bytes:
    """A safetensors file: 8-byte length, the JSON header (or ``raw_header``), ``data``."""
    raw = raw_header if raw_header is not None else json.dumps(header).encode()
    n = len(raw) if header_len is None else header_len
    return struct.pack("<Q", n) + raw + data


# ------------------------------------------------------------------------------------- GGUF
def _gstr(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


_FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", U32: "<I", I32: "<i", F32_T: "<f", BOOL_T: "<?",
        U64: "<Q", 11: "<q", 12: "<d"}


def _gvalue(vtype: int, value: Any) -> bytes:
    if vtype == STR:
        return _gstr(value)
    if vtype == ARR:
        etype, items = value
        return struct.pack("<IQ", etype, len(items)) + b"".join(_gvalue(etype, x) for x in items)
    return struct.pack(_FMT[vtype], value)


def gguf_bytes(kv: Sequence[Tuple[str, int, Any]], tensors: Sequence[Tuple[str, Sequence[int], int, int]],
               data: bytes, *, alignment: int = 32, n_tensors: Optional[int] = None,
               n_kv: Optional[int] = None, raw_kv: bytes = b"") -> bytes:
    """A GGUF v3 file: metadata ``kv`` (key, value type, value; arrays as ``(etype, items)``),
    tensor infos ``(name, ne innermost first, ggml type, offset)``, the data section ``data``
    placed at the first multiple of ``alignment`` after the header. ``n_tensors`` / ``n_kv``
    override the counts; ``raw_kv`` is appended verbatim after the metadata entries."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors) if n_tensors is None else n_tensors,
                                len(kv) if n_kv is None else n_kv)
    for key, vtype, value in kv:
        out += _gstr(key) + struct.pack("<I", vtype) + _gvalue(vtype, value)
    out += raw_kv
    for name, ne, ttype, offset in tensors:
        out += _gstr(name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne)
        out += struct.pack("<IQ", ttype, offset)
    out += b"\0" * (-len(out) % alignment)
    return out + data


def _q8_0(x: np.ndarray) -> bytes:
    """Q8_0 blocks of a float32 matrix (rows a multiple of 32): f16 scale + 32 int8 per block."""
    blocks = x.reshape(-1, 32)
    d = np.abs(blocks).max(axis=1) / 127.0
    d[d == 0] = 1.0
    q = np.clip(np.round(blocks / d[:, None]), -127, 127).astype(np.int8)
    out = bytearray()
    for di, qi in zip(d.astype(np.float16), q):
        out += di.tobytes() + qi.tobytes()
    return bytes(out)


def llama_gguf_parts(*, D: int = 64, H: int = 4, G: int = 2, L: int = 2, M: int = 96,
                     V: int = 101, qtype: int = GGML_F32, seed: int = 0, alignment: int = 32,
                     meta: Optional[Dict[str, Tuple[int, Any]]] = None,
                     ) -> Tuple[List[Tuple[str, int, Any]], List[Tuple[str, Tuple[int, ...], int, int]], bytes]:
    """``(kv, tensor infos, data)`` of a valid tiny llama GGUF. ``meta`` overrides or adds
    metadata ``{key: (type, value)}`` (value None removes the key)."""
    rng = np.random.default_rng(seed)
    d = D // H
    kv: Dict[str, Tuple[int, Any]] = {
        "general.architecture": (STR, "llama"), "general.name": (STR, "tiny"),
        "general.alignment": (U32, alignment),
        "llama.embedding_length": (U32, D), "llama.block_count": (U32, L),
        "llama.feed_forward_length": (U32, M), "llama.context_length": (U32, 64),
        "llama.attention.head_count": (U32, H), "llama.attention.head_count_kv": (U32, G),
        "llama.rope.dimension_count": (U32, d), "llama.rope.freq_base": (F32_T, 10000.0),
        "llama.attention.layer_norm_rms_epsilon": (F32_T, 1e-5),
    }
    for key, tv in (meta or {}).items():
        if tv is None:
            kv.pop(key, None)
        else:
            kv[key] = tv
    shapes: List[Tuple[str, Tuple[int, ...], bool]] = [("token_embd.weight", (V, D), True)]
    for l in range(L):
        b = f"blk.{l}."
        shapes += [(b + "attn_norm.weight", (D,), False), (b + "attn_q.weight", (H * d, D), True),
                   (b + "attn_k.weight", (G * d, D), True), (b + "attn_v.weight", (G * d, D), True),
                   (b + "attn_output.weight", (D, H * d), True), (b + "ffn_norm.weight", (D,), False),
                   (b + "ffn_up.weight", (M, D), True), (b + "ffn_gate.weight", (M, D), True),
                   (b + "ffn_down.weight", (D, M), True)]
    shapes += [("output_norm.weight", (D,), False), ("output.weight", (V, D), True)]
    infos, blob = [], bytearray()
    for name, shape, is_matrix in shapes:
        x = (rng.standard_normal(shape) * (0.15 if is_matrix else 0.2)).astype(np.float32)
        if not is_matrix:
            x += 1.0
        if is_matrix and qtype == GGML_Q8_0:
            raw, ttype = _q8_0(x), GGML_Q8_0
        else:
            raw, ttype = x.tobytes(), GGML_F32
        blob += b"\0" * (-len(blob) % alignment)
        infos.append((name, tuple(reversed(shape)), ttype, len(blob)))
        blob += raw
    return [(k, t, v) for k, (t, v) in kv.items()], infos, bytes(blob)


def write_llama_gguf(path: Path, **kw: Any) -> Path:
    """A valid tiny llama GGUF at ``path`` (see :func:`llama_gguf_parts` for the options)."""
    kv, infos, data = llama_gguf_parts(**kw)
    Path(path).write_bytes(gguf_bytes(kv, infos, data, alignment=kw.get("alignment", 32)))
    return Path(path)


def worktree_env() -> Dict[str, str]:
    """Environment for a child Python that imports this checkout's glassbox first."""
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env
