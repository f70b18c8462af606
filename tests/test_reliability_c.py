"""The C entry points and kernels under hostile arguments and data.

* Every ``glassbox._C`` entry point checks ranks before it reads strides and forms every size
  product with an overflow check: a 4-D operand used to write past a stack array in ``gemm``
  (AddressSanitizer: stack-buffer-overflow), sizes whose product overflows int64 used to pass
  the bounds checks wrapped and crash in the kernel (SIGSEGV). Now: ``ValueError`` /
  ``TypeError`` naming the function, the argument and the values.
* bf16 / f16 / f32 weights at odd file offsets (a legal safetensors header length) are read
  through memcpy-style loads: logits from a misaligned copy of a checkpoint are bit-identical
  to the aligned one, on the scalar and AVX2 paths, for the small-M (generation) and blocked
  GEMM paths. (The UBSan run in tests/run_sanitized.sh is what proves no misaligned load is
  left; this test proves the results.)
"""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import glassbox._C as _C
from glassbox import HookedTransformer, HookedTransformerConfig
from glassbox.loading.safetensors_io import SafeTensor, bf16_to_float32, read_safetensors
from helpers_files import write_llama_folder

ISAS = [i for i in ("scalar", "avx2", "avx512") if _C.isa_supported(i)]
f32 = np.float32


def _raises(exc, match, fn, *a, **kw):
    with pytest.raises(exc, match=match):
        fn(*a, **kw)


def test_gemm_ranks_checked_before_strides():
    A = np.ones((4, 5), f32)
    for bad in (np.ones((1, 1, 5, 6), f32), np.ones((1, 1, 1, 1, 5, 6), f32), np.ones(5, f32)):
        _raises(ValueError, rf"B must be 2-D \[K, N\] or 3-D \[H, K, d\], got {bad.ndim}-D", _C.gemm, A, bad)
    _raises(ValueError, r"with trans=True B must be 2-D \[N, K\], got 4-D", _C.gemm, A,
            np.ones((1, 1, 6, 5), f32), trans=True)
    _raises(ValueError, r"A must be 2-D \[M, K\], got 4-D", _C.gemm, np.ones((1, 1, 4, 5), f32), np.ones((5, 6), f32))
    # non-contiguous 4-D views too (they are copied first: the copy is still 4-D)
    _raises(ValueError, "got 4-D", _C.gemm, A, np.ones((2, 2, 5, 12), f32)[:, :, :, ::2])


def test_gemm_sizes_checked():
    A = np.ones((4, 64), f32)
    raw = np.zeros((3, 68), np.uint8)  # 2 Q8_0 blocks per row
    _raises(ValueError, r"gemm: K = 1180591620717411303424 does not fit in int64", _C.gemm, A, raw,
            trans=True, dtype="Q8_0", K=2**70)
    _raises(TypeError, r"gemm: K must be an integer, got float", _C.gemm, A, raw, trans=True, dtype="Q8_0", K=64.0)
    _raises(ValueError, r"K=-32 is not a multiple", _C.gemm, A, raw, trans=True, dtype="Q8_0", K=-32)
    # empty arrays (numpy gives them zero strides) are still fine
    assert _C.gemm(np.zeros((0, 5), f32), np.ones((5, 3), f32)).shape == (0, 3)
    assert _C.gemm(np.ones((2, 0), f32), np.ones((0, 3), f32)).tolist() == [[0.0] * 3] * 2


def test_embed_rows_and_dequantize_sizes_checked():
    table = np.zeros((3, 16), np.uint8)
    _raises(ValueError, r"a F32 row of D=4611686018427387904 elements would take more than 2\*\*63 bytes",
            _C.embed_rows, table, "F32", np.array([0]), 2**62)
    _raises(ValueError, r"embed_rows: D = 1267650600228229401496703205376 does not fit in int64",
            _C.embed_rows, table, "F32", np.array([0]), 2**100)
    _raises(TypeError, r"embed_rows: D must be an integer, got str", _C.embed_rows, table, "F32", np.array([0]), "4")
    assert _C.embed_rows(table, "F32", np.array([2, 0]), 4).shape == (2, 4)
    assert _C.dequantize(np.zeros((3, 34), np.uint8), "Q8_0").shape == (3, 32)


def test_rope_sizes_checked():
    x, pos, inv = np.ones((3, 8), f32), np.zeros(3, np.int64), np.ones(1, f32)
    _raises(ValueError, r"rope: n_heads \* d_head = 4611686018427387904 \* 4 overflows int64",
            _C.rope, x, 2**62, 4, 2, pos, inv)
    _raises(ValueError, r"rope: n_heads = 36893488147419103232 does not fit in int64", _C.rope, x, 2**65, 4, 2, pos, inv)
    _raises(TypeError, r"rope: n_heads must be an integer, got bool", _C.rope, x, True, 4, 2, pos, inv)
    _raises(ValueError, r"expected \(M, >= n_heads\*d_head = 16\)", _C.rope, x, 4, 4, 2, pos, inv)


def test_attention_sizes_checked():
    q = k = v = np.ones((4, 8), f32)
    _raises(ValueError, r"attention: B \* P = 4611686018427387904 \* 4 overflows int64",
            _C.attention, q, k, v, 2**62, 4, 4, 1, 1, 8, 1.0)
    _raises(ValueError, r"attention: H \* d = 1099511627776 \* 1099511627776 overflows int64",
            _C.attention, q, k, v, 1, 4, 4, 2**40, 2**40, 2**40, 1.0)
    _raises(ValueError, r"attention: B \* H \* P \* K \(scores\) = 1099511627776 \* 1099511627776 overflows",
            _C.attention, q, k, v, 1, 2**20, 2**40, 2**20, 1, 1, 1.0)
    _raises(ValueError, r"attention: window = \d+ does not fit in int64",
            _C.attention, q, k, v, 1, 4, 4, 1, 1, 8, 1.0, window=2**80)
    _raises(ValueError, r"attention: B \* P = .* overflows",
            _C.attention_split, q, k, v, 2**62, 4, 4, 1, 1, 8, 1.0)
    _raises(ValueError, r"B \* P \* H \* d \(z\) = 4 \* 4611686018427387904 overflows",
            _C.attn_apply, np.ones((1, 1, 4, 4), f32), np.ones((4, 8), f32), 1, 2**62)
    _raises(ValueError, r"attn_apply: G = \d+ does not fit", _C.attn_apply, np.ones((1, 1, 4, 4), f32),
            np.ones((4, 8), f32), 2**64, 8)
    z, _, _ = _C.attention(q, k, v, 1, 4, 4, 1, 1, 8, 1.0)  # still works
    assert z.shape == (4, 8)


def _engine_parts():
    cfg = HookedTransformerConfig(d_model=16, d_head=4, n_layers=1, n_ctx=8, d_vocab=11, act_fn="gelu_new")
    m = HookedTransformer(cfg)
    return m, m._engine_cfg(), m._engine_weights()


@pytest.mark.parametrize("changes,exc,match", [
    ({"n_heads": 2**40, "d_head": 2**40}, ValueError, r"Model: n_heads \* d_head = 1099511627776 \* 1099511627776 overflows"),
    ({"d_vocab": 2**61}, ValueError, r"Model: d_vocab \* d_model = 2305843009213693952 \* 16 overflows"),
    ({"d_mlp": 2**62}, ValueError, r"Model: d_mlp \* d_model = .* overflows"),
    ({"n_ctx": 2**70}, ValueError, r"engine config 'n_ctx' = 1180591620717411303424 does not fit in int64"),
    ({"n_layers": "2"}, TypeError, r"engine config 'n_layers' must be an int, got '2'"),
    ({"n_heads": True}, TypeError, r"engine config 'n_heads' must be an int, got True"),
])
def test_engine_constructor_sizes_checked(changes, exc, match):
    _, cfg, w = _engine_parts()
    with pytest.raises(exc, match=match):
        _C.Model({**cfg, **changes}, w)


def test_engine_stored_rows_checked():
    m, cfg, w = _engine_parts()
    store = np.zeros((11, 16), f32)
    for rows, cols, exc, match in [
        (2**70, 16, ValueError, r"unembed.W_U: n_rows = 1180591620717411303424 does not fit in int64"),
        (-1, 16, ValueError, r"unembed.W_U: n_rows = -1 must be >= 0"),
        ("11", 16, TypeError, r"unembed.W_U: n_rows must be an integer, got str"),
        (11, 48, ValueError, r"weight 'unembed.W_U' stored as \[11, 48\] rows, expected \[11, 16\]"),
    ]:
        with pytest.raises(exc, match=match):
            _C.Model(cfg, {**w, "unembed.W_U": ("rows", store, "F32", rows, cols)})
    with pytest.raises(ValueError, match=r"Q8_0 rows need a multiple of 32 elements, got 16"):
        _C.Model(cfg, {**w, "unembed.W_U": ("rows", np.zeros((11, 18), np.uint8), "Q8_0", 11, 16)})
    with pytest.raises(ValueError, match=r"F32 storage of \[11, 16\] needs 704 bytes, got 700"):
        _C.Model(cfg, {**w, "unembed.W_U": ("rows", np.zeros(700, np.uint8), "F32", 11, 16)})
    eng = _C.Model(cfg, {**w, "unembed.W_U": ("rows", np.ascontiguousarray(m.W_U.T), "F32", 11, 16)})
    out = eng.forward(np.array([[1, 2, 3]]))
    np.testing.assert_allclose(out, m(np.array([[1, 2, 3]])), rtol=1e-5, atol=1e-5)


# -------------------------------------------------------------------- misaligned file data
def _rewrite(src, dst, pad: int, convert=None) -> None:
    """Rewrite a safetensors file with its header padded by ``pad`` bytes (so the data buffer
    starts at an odd offset), tensors optionally converted by ``convert(name, SafeTensor)``."""
    tensors = read_safetensors(src)
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name]
        if convert is not None:
            t = convert(name, t)
        raw = np.ascontiguousarray(t.data).tobytes()
        header[name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    text = json.dumps(header).encode()
    text += b" " * ((pad - len(text)) % 8)
    with open(dst, "wb") as fh:
        fh.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def _mixed(name: str, t: SafeTensor) -> SafeTensor:
    """q_proj and lm_head as F32, up_proj as F16, the rest kept BF16 (dtype="auto" keeps all)."""
    if t.dtype != "BF16":
        return t
    if "q_proj" in name or name == "lm_head.weight":
        return SafeTensor(bf16_to_float32(t.data), "F32")
    if "up_proj" in name:
        return SafeTensor(bf16_to_float32(t.data).astype(np.float16), "F16")
    return t


@pytest.fixture(scope="module")
def aligned_and_odd(tmp_path_factory):
    root = tmp_path_factory.mktemp("misaligned")
    src = write_llama_folder(root / "src") / "model.safetensors"
    out = {}
    for name, pad in (("aligned", 0), ("odd", 3), ("odd2", 5)):
        folder = root / name
        folder.mkdir()
        (folder / "config.json").write_text((root / "src" / "config.json").read_text())
        _rewrite(src, folder / "model.safetensors", pad, _mixed)
        out[name] = folder
    return out


@pytest.mark.parametrize("isa", ISAS)
def test_misaligned_weights_compute_exactly_as_aligned(aligned_and_odd, isa):
    prev = _C.isa()
    _C.set_isa(isa)
    try:
        models = {k: HookedTransformer.from_pretrained(str(v), dtype="auto") for k, v in aligned_and_odd.items()}
        odd_st = models["odd"]._state_dict_np()
        W_Q, W_up, W_K = odd_st["blocks.0.attn.W_Q"], odd_st["blocks.0.mlp.W_in"], odd_st["blocks.0.attn._W_K"]
        assert (W_Q.dtype, W_up.dtype, W_K.dtype) == ("F32", "F16", "BF16")
        assert W_Q.storage.ctypes.data % 4 and W_up.storage.ctypes.data % 2 and W_K.storage.ctypes.data % 2
        rng = np.random.default_rng(0)
        for P in (1, 3, 17, 40):  # small-M dot paths (M <= 4) and the blocked GEMM
            tok = rng.integers(0, 101, size=(1, P))
            ref = models["aligned"](tok)
            for k in ("odd", "odd2"):
                np.testing.assert_array_equal(models[k](tok), ref, err_msg=f"{k} P={P}")
    finally:
        _C.set_isa(prev)
