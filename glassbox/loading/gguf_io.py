"""Load a GGUF file (llama.cpp's format) as a :class:`~glassbox.loading.pretrained.LoadedModel`.

The file is memory-mapped and its header parsed by :mod:`.gguf_header`. Matrix weights stay as stored (F32, F16,
BF16 or quantisation blocks Q8_0, Q4_0, Q4_1, Q4_K, Q6_K) and become
:class:`~glassbox.loading.stored.StoredMatrix` objects over the mapped bytes; norm weights and
biases become float32 arrays. The config is read from the GGUF metadata and converted by the same
adapters (:mod:`.arch_llama`, :mod:`.arch_gpt2`) that convert an HF ``config.json``, so the TL
config fields are exactly those of the equivalent HF checkpoint.

GGUF tensor names -> TL keys (``{arch}`` is ``llama`` or ``gpt2``):

==========================  ======================  =====================================
GGUF tensor                 TL key                  StoredMatrix kind (stored rows x cols)
==========================  ======================  =====================================
``token_embd``              ``embed.W_E``           table [V, D]
``position_embd`` (gpt2)    ``pos_embed.W_pos``     float32 array [n_ctx, D]
``blk.N.attn_q``            ``attn.W_Q``            heads_in [H d, D] (RoPE rows un-permuted)
``blk.N.attn_k / attn_v``   ``attn.(_)W_K / W_V``   heads_in [G d, D] (K rows un-permuted)
``blk.N.attn_qkv`` (gpt2)   ``attn.W_Q/W_K/W_V``    heads_in, three row slices of [3D, D]
``blk.N.attn_output``       ``attn.W_O``            heads_out [D, H d]
``blk.N.ffn_gate / ffn_up`` ``mlp.W_gate / W_in``   transposed [M, D]
``blk.N.ffn_down``          ``mlp.W_out``           transposed [D, M]
``output`` (or tied)        ``unembed.W_U``         transposed [V, D] (``token_embd``'s storage when tied)
``*_norm`` / ``*.bias``     ``ln*.w/b``, ``b_*``    float32 arrays
==========================  ======================  =====================================

GGUF lists dimensions innermost first (``ne[0]`` is the length of a stored row), so an
``nn.Linear`` weight ``[out, in]`` is reported by ``gguf`` with ``tensor.shape == [in, out]``.

RoPE: llama.cpp's HF->GGUF conversion of the ``llama`` architecture reorders, within each head,
the rows of ``q_proj`` / ``k_proj`` (and their biases) from HF's half-split rotary layout to
adjacent pairs: GGUF row ``2 i + j`` of a head is HF row ``j * d/2 + i``. Rows are independent
(each row is a run of quantisation blocks along ``D``), so we undo it by reordering whole stored
rows -- a quantised copy of W_Q and W_K per layer -- and keep ``rotary_adjacent_pairs=False``.
"""
from __future__ import annotations

import atexit
import math
import os
import shutil
import tempfile
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..config.validation import FieldReader
from .stored import BLOCK_DTYPES, FLOAT_DTYPES, StoredMatrix, row_bytes

__all__ = [
    "GGUF_ARCHITECTURES",
    "SUPPORTED_TENSOR_TYPES",
    "GGUFModelFile",
    "open_gguf",
    "gguf_hf_config",
    "load_gguf",
    "unpermute_rope_rows",
]

#: GGUF ``general.architecture`` -> the HF architecture whose adapter converts its config.
GGUF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel"}

#: tensor types kept as stored (StoredMatrix dtypes).
SUPPORTED_TENSOR_TYPES = FLOAT_DTYPES + BLOCK_DTYPES

# metadata arrays that are big and only read on demand (the tokenizer's)
_BIG_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
               "tokenizer.ggml.scores", "tokenizer.ggml.precompiled_charsmap")


class GGUFModelFile:
    """An opened GGUF file: metadata access and tensors as raw stored rows.

    Use :func:`open_gguf` to create one; it turns every parse failure into ``ValueError``.
    """

    def __init__(self, path: str, fields: Dict[str, Any], tensors: List[Any], data_offset: int):
        self.path = path
        self.data_offset = data_offset  # where the tensor data starts (end of the header)
        self.fields = fields
        self.tensors = {t.name: t for t in tensors}
        self._size = os.path.getsize(path)

    # -- metadata -------------------------------------------------------------------------
    def __contains__(self, key: str) -> bool:
        return key in self.fields

    def get(self, key: str, default: Any = None) -> Any:
        """The metadata value ``key`` (str, int, float, bool or list), or ``default``."""
        return self.fields.get(key, default)

    def require(self, key: str) -> Any:
        """The metadata value ``key``; ``ValueError`` naming the file when it is absent."""
        if key not in self.fields:
            raise ValueError(f"{self.path}: GGUF metadata key {key!r} is missing")
        return self.fields[key]

    def metadata(self) -> Dict[str, Any]:
        """All metadata except the big tokenizer arrays (given as their length)."""
        return {key: f"<{len(v)} items>" if key in _BIG_ARRAYS else v for key, v in self.fields.items()}

    @property
    def architecture(self) -> str:
        return str(self.require("general.architecture"))

    # -- tensors --------------------------------------------------------------------------
    def has(self, name: str) -> bool:
        return name in self.tensors

    def tensor_type(self, name: str) -> str:
        return self.tensors[name].type_name

    def dims(self, name: str) -> Tuple[int, ...]:
        """Dimensions outermost first (numpy order): ``(rows, cols)`` for a matrix."""
        return tuple(int(x) for x in reversed(self.tensors[name].ne))

    def _tensor(self, name: str):
        t = self.tensors.get(name)
        if t is None:
            raise ValueError(f"{self.path}: tensor {name!r} is missing from the GGUF file "
                             f"({self.architecture} needs it)")
        kind = t.type_name
        if kind not in SUPPORTED_TENSOR_TYPES:
            raise ValueError(f"{self.path}: tensor {name!r} has type {kind}, which glassbox cannot "
                             f"load; supported types: {', '.join(SUPPORTED_TENSOR_TYPES)}")
        if t.data_offset + t.n_bytes > self._size or t.data.nbytes != t.n_bytes:
            raise ValueError(f"{self.path}: tensor {name!r} extends past the end of the file "
                             f"(truncated GGUF?)")
        return t

    def matrix(self, name: str, shape: Tuple[int, int]) -> Tuple[np.ndarray, str]:
        """``(storage, dtype)`` of the 2-D tensor ``name`` with ``shape == (rows, cols)``.

        ``storage`` is a view of the mapped file: ``float32``/``float16``/``uint16`` (BF16)
        ``[rows, cols]`` for float types, ``uint8`` ``[rows, row_bytes]`` for block types.
        """
        t = self._tensor(name)
        dims = self.dims(name)
        if dims != tuple(shape):
            raise ValueError(f"{self.path}: tensor {name!r} has shape {dims} (rows, cols) but the "
                             f"GGUF metadata implies {tuple(shape)}")
        return self._rows(t, *shape)

    def _rows(self, t: Any, rows: int, cols: int) -> Tuple[np.ndarray, str]:
        name, dtype = t.name, t.type_name
        raw = t.data
        try:
            want = rows * row_bytes(dtype, cols)
        except ValueError as exc:
            raise ValueError(f"{self.path}: tensor {name!r} ({dtype}, rows of {cols} elements): {exc}") from None
        if raw.nbytes != want:
            raise ValueError(f"{self.path}: tensor {name!r} holds {raw.nbytes} bytes, expected "
                             f"{want} for {dtype} [{rows}, {cols}]")
        if dtype == "F32":
            return raw.view("<f4").reshape(rows, cols), dtype
        if dtype == "F16":
            return raw.view("<f2").reshape(rows, cols), dtype
        if dtype == "BF16":
            return raw.view("<u2").reshape(rows, cols), dtype
        return raw.reshape(rows, -1), dtype

    def vector(self, name: str, shape: Tuple[int, ...]) -> np.ndarray:
        """The tensor ``name`` as a new float32 array of ``shape`` (norm weights, biases, W_pos)."""
        t = self._tensor(name)
        n = 1
        for s in shape:
            n *= int(s)
        if t.n_elements != n:
            raise ValueError(f"{self.path}: tensor {name!r} has shape {self.dims(name)} but the GGUF "
                             f"metadata implies {tuple(shape)}")
        cols = int(t.ne[0]) if t.ne else 1  # ne[0]: the innermost dimension
        if n == 0:
            return np.zeros(shape, dtype=np.float32)
        storage, dtype = self._rows(t, n // cols, cols)
        return _dequantize(storage, dtype, n // cols, cols).reshape(shape)

    def optional_vector(self, name: str, shape: Tuple[int, ...]) -> Optional[np.ndarray]:
        return self.vector(name, shape) if name in self.tensors else None


def _dequantize(storage: np.ndarray, dtype: str, rows: int, cols: int) -> np.ndarray:
    if dtype in FLOAT_DTYPES:
        return StoredMatrix(storage, dtype, rows, cols, "table").dequantize()
    import gguf  # small vectors only (W_pos, biases): numpy dequantiser

    return np.asarray(gguf.quants.dequantize(storage, gguf.GGMLQuantizationType[dtype]),
                      dtype=np.float32).reshape(rows, cols)


def open_gguf(path: str) -> GGUFModelFile:
    """Open (memory-map) a GGUF file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a GGUF file, truncated or corrupt header, big-endian file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such GGUF file")
    from .gguf_header import read_gguf

    try:
        fields, tensors, data_offset = read_gguf(path)
    except ValueError:
        raise
    except Exception as exc:  # anything else a corrupt header provokes
        raise ValueError(f"{path}: corrupt or truncated GGUF file ({type(exc).__name__}: {exc})") from None
    return GGUFModelFile(path, fields, tensors, data_offset)


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------
def _llama3_rope(f: GGUFModelFile, base: float, rot_dim: int) -> Dict[str, Any]:
    """Recover Llama-3.1-style rope scaling from a ``rope_freqs`` tensor (per-frequency divisors)."""
    freqs = f.vector("rope_freqs.weight", (rot_dim // 2,)).astype(np.float64)
    if np.allclose(freqs, 1.0):
        return {}
    factor = float(freqs.max())
    inv = 1.0 / base ** (np.arange(0, rot_dim, 2, dtype=np.float64) / rot_dim)
    wavelen = 2 * math.pi / inv
    for orig in (8192, 4096, 2048, 16384, 32768, 131072):
        for lo, hi in ((1.0, 4.0), (1.0, 2.0), (2.0, 4.0)):
            smooth = (orig / wavelen - lo) / (hi - lo)
            want = np.where(wavelen < orig / hi, 1.0,
                            np.where(wavelen > orig / lo, factor, 1.0 / ((1 - smooth) / factor + smooth)))
            if np.allclose(want, freqs, rtol=1e-4):
                return {"rope_type": "llama3", "factor": factor, "low_freq_factor": lo,
                        "high_freq_factor": hi, "original_max_position_embeddings": orig}
    raise ValueError(f"{f.path}: tensor 'rope_freqs.weight' holds per-frequency RoPE factors that are "
                     f"not Llama-3 NTK-by-parts scaling; glassbox cannot represent them")


def gguf_hf_config(f: GGUFModelFile) -> Dict[str, Any]:
    """An HF ``config.json``-style dict equivalent to the GGUF metadata.

    It is what :func:`glassbox.loading.pretrained.convert_hf_config` turns into TL fields, so a
    GGUF and the HF checkpoint it was converted from get the same TL config.
    """
    arch = f.architecture
    if arch not in GGUF_ARCHITECTURES:
        raise ValueError(f"{f.path}: GGUF architecture {arch!r} is not supported by glassbox; "
                         f"supported: {', '.join(sorted(GGUF_ARCHITECTURES))}")
    # every metadata value checked (type, range) before it sizes anything: a bad value is a
    # ValueError naming the file and the key
    r = FieldReader(f.fields, f.path, prefix=f"{arch}.")
    k = lambda name: f"{arch}.{name}"  # noqa: E731
    if not f.has("token_embd.weight"):
        raise ValueError(f"{f.path}: tensor 'token_embd.weight' is missing from the GGUF file")
    dims = f.dims("token_embd.weight")
    if len(dims) != 2:
        raise ValueError(f"{f.path}: tensor 'token_embd.weight' has dimensions {dims}, expected "
                         f"(vocab, embedding_length)")
    V, D_emb = dims
    D = r.int("embedding_length")
    if D_emb != D:
        raise ValueError(f"{f.path}: token_embd.weight has {D_emb} columns but {k('embedding_length')}={D}")
    H = r.int("attention.head_count")
    L = r.int("block_count", minimum=0)
    n_blocks = len({n.split(".", 2)[1] for n in f.tensors if n.startswith("blk.") and n.count(".") >= 2})
    if L > n_blocks:
        raise ValueError(f"{f.path}: {k('block_count')}={L} but the file holds tensors for "
                         f"{n_blocks} blocks")
    M = r.int("feed_forward_length")
    n_ctx = r.int("context_length", None)
    tied = not f.has("output.weight")
    name = f.get("general.name")
    if arch == "gpt2":
        if D % H:
            raise r.fail(f"{k('embedding_length')}={D} is not divisible by {k('attention.head_count')}={H}")
        n_pos = f.dims("position_embd.weight")[0] if f.has("position_embd.weight") else n_ctx
        if n_pos is None:
            raise ValueError(f"{f.path}: gpt2 GGUF file has neither 'position_embd.weight' nor "
                             f"{k('context_length')}")
        return {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "n_embd": D, "n_head": H, "n_layer": L, "n_inner": M,
            "n_ctx": int(n_ctx or n_pos), "n_positions": int(n_pos or n_ctx),
            "layer_norm_epsilon": r.float("attention.layer_norm_epsilon", 1e-5, minimum=0.0),
            "vocab_size": V, "activation_function": "gelu_new", "tie_word_embeddings": tied,
            "_name_or_path": name,
        }
    G = r.int("attention.head_count_kv", H)
    if H % G:
        raise r.fail(f"{k('attention.head_count')}={H} is not a multiple of "
                     f"{k('attention.head_count_kv')}={G}")
    if not r.has("attention.key_length") and D % H:
        raise r.fail(f"{k('embedding_length')}={D} is not divisible by {k('attention.head_count')}={H} "
                     f"(and {k('attention.key_length')} is not given)")
    d = r.int("attention.key_length", D // H)
    d_v = r.int("attention.value_length", d)
    if d_v != d:
        raise r.fail(f"{k('attention.value_length')}={d_v} differs from {k('attention.key_length')}={d}: "
                     f"glassbox needs equal query/key and value head sizes")
    rot = r.int("rope.dimension_count", d, minimum=2, maximum=d)
    if rot % 2:
        raise r.fail(f"{k('rope.dimension_count')}={rot} must be even (RoPE rotates pairs)")
    base = r.float("rope.freq_base", 10000.0, positive=True)
    hf: Dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": D, "num_attention_heads": H, "num_key_value_heads": G, "head_dim": d,
        "num_hidden_layers": L, "intermediate_size": M,
        "max_position_embeddings": int(n_ctx or 2048),
        "rms_norm_eps": r.float("attention.layer_norm_rms_epsilon", 1e-6, minimum=0.0),
        "vocab_size": V, "hidden_act": "silu", "rope_theta": base,
        "tie_word_embeddings": tied, "_name_or_path": name,
    }
    if rot != d:
        hf["partial_rotary_factor"] = rot / d
    scaling = str(r.str("rope.scaling.type", "none") or "none").lower()
    if scaling == "linear":
        hf["rope_scaling"] = {"rope_type": "linear", "factor": r.float("rope.scaling.factor", positive=True)}
    elif scaling not in ("none", ""):
        raise ValueError(f"{f.path}: {k('rope.scaling.type')}={scaling!r} is not supported "
                         f"(supported: none, linear, and Llama-3 'rope_freqs' factors)")
    if f.has("rope_freqs.weight"):
        llama3 = _llama3_rope(f, base, rot)
        if llama3:
            hf["rope_scaling"] = llama3
    return hf


# ---------------------------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------------------------
def unpermute_rope_rows(n_rows: int, n_heads: int) -> np.ndarray:
    """Row order that undoes llama.cpp's q/k permutation: ``hf[r] = gguf[perm[r]]``.

    Within each head of ``d = n_rows / n_heads`` rows, HF row ``j * d/2 + i`` (``j`` in {0, 1})
    is GGUF row ``2 i + j``.
    """
    d = n_rows // n_heads
    if n_heads * d != n_rows or d % 2:
        raise ValueError(f"cannot un-permute {n_rows} rows as {n_heads} rotary heads")
    half = d // 2
    j, i = np.divmod(np.arange(d), half)
    within = 2 * i + j
    return (np.arange(n_heads)[:, None] * d + within[None, :]).reshape(-1)


def _stored(f: GGUFModelFile, name: str, rows: int, cols: int, kind: str, n_heads: int = 0,
            rope_heads: int = 0) -> StoredMatrix:
    storage, dtype = f.matrix(name, (rows, cols))
    if rope_heads:
        storage = np.ascontiguousarray(storage[unpermute_rope_rows(rows, rope_heads)])
    return StoredMatrix(storage, dtype, rows, cols, kind, n_heads, name=f"{f.path}: {name}")


def _convert_llama(f: GGUFModelFile, cfg: Dict[str, Any]) -> Dict[str, Any]:
    D, H, d, M = cfg["d_model"], cfg["n_heads"], cfg["d_head"], cfg["d_mlp"]
    V, L = cfg["d_vocab"], cfg["n_layers"]
    G = cfg["n_key_value_heads"] or H
    kv = "_" if cfg["n_key_value_heads"] is not None else ""
    zeros = lambda *s: np.zeros(s, dtype=np.float32)  # noqa: E731
    sd: Dict[str, Any] = {}
    emb_storage, emb_dtype = f.matrix("token_embd.weight", (V, D))
    sd["embed.W_E"] = StoredMatrix(emb_storage, emb_dtype, V, D, "table")
    for l in range(L):
        g, b = f"blk.{l}.", f"blocks.{l}."
        sd[b + "ln1.w"] = f.vector(g + "attn_norm.weight", (D,))
        sd[b + "attn.W_Q"] = _stored(f, g + "attn_q.weight", H * d, D, "heads_in", H, rope_heads=H)
        sd[b + f"attn.{kv}W_K"] = _stored(f, g + "attn_k.weight", G * d, D, "heads_in", G, rope_heads=G)
        sd[b + f"attn.{kv}W_V"] = _stored(f, g + "attn_v.weight", G * d, D, "heads_in", G)
        for t, key, n, rope in (("attn_q", "b_Q", H, True), ("attn_k", f"{kv}b_K", G, True),
                                ("attn_v", f"{kv}b_V", G, False)):
            bias = f.optional_vector(g + t + ".bias", (n * d,))
            if bias is not None and rope:
                bias = bias[unpermute_rope_rows(n * d, n)]
            sd[b + "attn." + key] = zeros(n, d) if bias is None else np.ascontiguousarray(bias.reshape(n, d))
        sd[b + "attn.W_O"] = _stored(f, g + "attn_output.weight", D, H * d, "heads_out", H)
        b_O = f.optional_vector(g + "attn_output.bias", (D,))
        sd[b + "attn.b_O"] = zeros(D) if b_O is None else b_O
        sd[b + "ln2.w"] = f.vector(g + "ffn_norm.weight", (D,))
        sd[b + "mlp.W_in"] = _stored(f, g + "ffn_up.weight", M, D, "transposed")
        sd[b + "mlp.W_gate"] = _stored(f, g + "ffn_gate.weight", M, D, "transposed")
        sd[b + "mlp.b_in"] = zeros(M)
        sd[b + "mlp.W_out"] = _stored(f, g + "ffn_down.weight", D, M, "transposed")
        sd[b + "mlp.b_out"] = zeros(D)
    sd["ln_final.w"] = f.vector("output_norm.weight", (D,))
    _unembed(f, sd, emb_storage, emb_dtype, V, D)
    return sd


def _unembed(f: GGUFModelFile, sd: Dict[str, Any], emb: np.ndarray, emb_dtype: str, V: int, D: int) -> None:
    if f.has("output.weight"):
        sd["unembed.W_U"] = _stored(f, "output.weight", V, D, "transposed")
    else:  # tied: the embedding table's storage, read as lm_head rows
        sd["unembed.W_U"] = StoredMatrix(emb, emb_dtype, V, D, "transposed")
    sd["unembed.b_U"] = np.zeros(V, dtype=np.float32)


def _convert_gpt2(f: GGUFModelFile, cfg: Dict[str, Any], hf: Dict[str, Any]) -> Dict[str, Any]:
    D, H, d, M = cfg["d_model"], cfg["n_heads"], cfg["d_head"], cfg["d_mlp"]
    V, L, N = cfg["d_vocab"], cfg["n_layers"], cfg["n_ctx"]
    sd: Dict[str, Any] = {}
    emb_storage, emb_dtype = f.matrix("token_embd.weight", (V, D))
    sd["embed.W_E"] = StoredMatrix(emb_storage, emb_dtype, V, D, "table")
    n_pos = int(hf["n_positions"])
    if N > n_pos:
        raise ValueError(f"n_ctx={N} exceeds the {n_pos} learned positions in position_embd.weight")
    sd["pos_embed.W_pos"] = np.ascontiguousarray(f.vector("position_embd.weight", (n_pos, D))[:N])
    for l in range(L):
        g, b = f"blk.{l}.", f"blocks.{l}."
        sd[b + "ln1.w"] = f.vector(g + "attn_norm.weight", (D,))
        sd[b + "ln1.b"] = f.vector(g + "attn_norm.bias", (D,))
        qkv, dtype = f.matrix(g + "attn_qkv.weight", (3 * D, D))
        bias = f.vector(g + "attn_qkv.bias", (3 * D,)).reshape(3, H, d)
        for i, n in enumerate("QKV"):
            sd[b + f"attn.W_{n}"] = StoredMatrix(qkv[i * D:(i + 1) * D], dtype, D, D, "heads_in", H)
            sd[b + f"attn.b_{n}"] = np.ascontiguousarray(bias[i])
        sd[b + "attn.W_O"] = _stored(f, g + "attn_output.weight", D, D, "heads_out", H)
        sd[b + "attn.b_O"] = f.vector(g + "attn_output.bias", (D,))
        sd[b + "ln2.w"] = f.vector(g + "ffn_norm.weight", (D,))
        sd[b + "ln2.b"] = f.vector(g + "ffn_norm.bias", (D,))
        sd[b + "mlp.W_in"] = _stored(f, g + "ffn_up.weight", M, D, "transposed")
        sd[b + "mlp.b_in"] = f.vector(g + "ffn_up.bias", (M,))
        sd[b + "mlp.W_out"] = _stored(f, g + "ffn_down.weight", D, M, "transposed")
        sd[b + "mlp.b_out"] = f.vector(g + "ffn_down.bias", (D,))
    sd["ln_final.w"] = f.vector("output_norm.weight", (D,))
    sd["ln_final.b"] = f.vector("output_norm.bias", (D,))
    _unembed(f, sd, emb_storage, emb_dtype, V, D)
    return sd


# ---------------------------------------------------------------------------------------------
# tokenizer files
# ---------------------------------------------------------------------------------------------
_TMP_DIRS: List[str] = []


def _cleanup_tmp() -> None:
    for p in _TMP_DIRS:
        shutil.rmtree(p, ignore_errors=True)


def _tokenizer_files(f: GGUFModelFile) -> Tuple[Optional[str], Dict[str, str]]:
    from .gguf_tokenizer import has_tokenizer, write_tokenizer_files

    if not has_tokenizer(f):
        return None, {}
    folder = tempfile.mkdtemp(prefix="glassbox-gguf-tokenizer-")
    if not _TMP_DIRS:
        atexit.register(_cleanup_tmp)
    _TMP_DIRS.append(folder)
    return folder, write_tokenizer_files(f, folder)


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------
def load_gguf(path: str, *, n_ctx: Optional[int] = None, first_n_layers: Optional[int] = None,
              tokenizer: bool = True, keep_stored: bool = True, copy_weights: bool = False):
    """Load a GGUF checkpoint as a :class:`~glassbox.loading.pretrained.LoadedModel`.

    Args:
        path: the ``.gguf`` file (architectures ``llama`` -- including Mistral-style files -- and ``gpt2``).
        n_ctx: override the context length (for gpt2, extra rows of ``W_pos`` are dropped).
        first_n_layers: keep only the first n blocks.
        tokenizer: also build the tokenizer from the GGUF metadata, written as ``tokenizer.json``
            and ``tokenizer_config.json`` into a temporary folder (``tokenizer_dir``) removed at exit.
        keep_stored: False dequantises every matrix to a float32 TL-layout array (RAM x ~4-8)
            instead of keeping :class:`StoredMatrix` objects.
        copy_weights: copy the matrices kept as stored into RAM (the file size) instead of
            leaving them memory-mapped, so that later changes to the file cannot affect the
            model (see :mod:`glassbox.loading.mapped`).

    Returns:
        ``LoadedModel`` whose ``state_dict`` holds :class:`StoredMatrix` objects for the matrix
        weights (see the module docstring) and float32 arrays for the rest; ``hf_config`` is the
        HF-style config derived from the metadata plus ``"gguf_metadata"``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a GGUF / corrupt / truncated file, unsupported architecture or tensor
            type (the message names the tensor and the supported types), inconsistent shapes.
    """
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    f = open_gguf(path)
    try:
        loaded = _load(f, path, n_ctx, first_n_layers, tokenizer)
    except (TypeError, KeyError, IndexError, OverflowError, AttributeError, ZeroDivisionError) as exc:
        # metadata of the wrong type / shape (a corrupt or hand-made file)
        raise ValueError(f"{path}: malformed GGUF file ({type(exc).__name__}: {exc})") from None
    if not keep_stored:
        loaded.state_dict = {k: v.to_tl() if isinstance(v, StoredMatrix) else v
                             for k, v in loaded.state_dict.items()}
    if copy_weights:
        from .mapped import copy_to_memory

        loaded.state_dict = copy_to_memory(loaded.state_dict)
    return loaded


def _load(f: GGUFModelFile, path: str, n_ctx: Optional[int], first_n_layers: Optional[int],
          tokenizer: bool):
    from .pretrained import LoadedModel, apply_overrides, convert_hf_config
    from .shapes import check_state_dict

    hf = gguf_hf_config(f)
    stem = os.path.basename(path)[: -len(".gguf")] if path.endswith(".gguf") else os.path.basename(path)
    cfg = convert_hf_config(hf, model_name=stem, tokenizer_name=path, where=path)
    apply_overrides(cfg, n_ctx=n_ctx, first_n_layers=first_n_layers)
    if f.architecture == "gpt2":
        sd = _convert_gpt2(f, cfg, hf)
    else:
        sd = _convert_llama(f, cfg)
    check_state_dict(sd, cfg, what=f"{path}: converted state dict")
    tok_dir, tok_files = _tokenizer_files(f) if tokenizer else (None, {})
    hf = dict(hf, gguf_metadata=f.metadata())
    return LoadedModel(config=cfg, state_dict=sd, tokenizer_dir=tok_dir, tokenizer_files=tok_files,
                       source=path, hf_config=hf)
