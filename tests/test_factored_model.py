"""``model.QK`` / ``model.OV`` / ``blocks[l].attn.QK|OV`` and composition scores against
TransformerLens on identical weights: GPT-2 (processed, unprocessed, and with
``refactor_factored_attn_matrices``), Llama-GQA (8 query heads on 2 key/value heads, head_dim 14;
9 on 3), and a Llama-GQA model kept in bfloat16 (TL on the same bf16-rounded values in float32).
Plus the memory test: ``model.OV`` of a GPT-2-small-shaped model holds its factors, not the
340 MB (324 MiB) ``[12, 12, 768, 768]`` float32 product.

Tolerances, relative to the reference's largest entry (both sides float32 on the same weights):
RTOL_MM = 1e-5 for factors and products (AB, corners; weight processing differs only in float
rounding), RTOL_SVD = 1e-4 for singular values, norms, eigenvalues; composition scores (values in
[0, 1]) to ATOL_COMP = 1e-5 absolute.
"""
from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest

import helpers_llama as hl
import helpers_models as hm

torch = pytest.importorskip("torch")
pytest.importorskip("transformer_lens")
pytest.importorskip("transformers")

from glassbox import FactoredMatrix, HookedTransformer, set_array_backend, utils  # noqa: E402

warnings.filterwarnings("ignore", category=DeprecationWarning)

RTOL_MM = 1e-5
RTOL_SVD = 1e-4
ATOL_COMP = 1e-5

GQA_8x2 = hl.spec("llama-gqa-8x2-hd14", hidden_size=64, num_attention_heads=8, num_key_value_heads=2,
                  intermediate_size=100, seed=2, extra={"head_dim": 14})  # as in test_parity_llama
GQA_9x3 = hl.spec("llama-gqa-9x3", hidden_size=90, num_attention_heads=9, num_key_value_heads=3,
                  intermediate_size=131, vocab_size=103, seed=1)
BF_GQA = hl.spec("bf-llama-gqa-8x2-hd14", hidden_size=64, num_attention_heads=8, num_key_value_heads=2,
                 intermediate_size=100, seed=21, extra={"head_dim": 14})  # as in test_stored_dtype


def f64(x):
    return hm.to_np(x).astype(np.float64)


def close(got, ref, rtol, what):
    g, r = f64(got), f64(ref)
    assert g.shape == r.shape, f"{what}: shape {g.shape} != {r.shape}"
    scale = float(np.abs(r).max())
    err = float(np.abs(g - r).max())
    assert err <= rtol * scale, f"{what}: max abs error {err:.3g} > {rtol:g} * {scale:.3g}"


class Pairs:
    """(glassbox, TL) model pairs on identical weights, built once per session."""

    def __init__(self, zoo, root):
        self.zoo, self.root, self._c = zoo, root, {}

    def _get(self, key, make):
        if key not in self._c:
            self._c[key] = make()
        return self._c[key]

    def gpt2(self, processed=True):
        return self.zoo.gb(hm.GPT2_ODD, processed=processed), self.zoo.tl(hm.GPT2_ODD, processed=processed)

    def gpt2_refactored(self):
        def make():
            from transformer_lens import HookedTransformer as TLModel
            from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

            folder = self.zoo.folder(hm.GPT2_ODD)
            hf = self.zoo.hf(hm.GPT2_ODD)
            cfg = hm.tl_config(hf, processed=True)
            tl = TLModel(cfg, move_to_device=False)
            tl.load_and_process_state_dict(convert_gpt2_weights(hf, cfg), refactor_factored_attn_matrices=True)
            gb = HookedTransformer.from_pretrained(str(folder), refactor_factored_attn_matrices=True)
            return gb, tl

        return self._get("refactor", make)

    def llama(self, spec):
        def make():
            folder = hl.save_folder(spec, self.root / "llama" / spec.key())
            return HookedTransformer.from_pretrained(str(folder)), hl.load_tl(hl.load_hf(folder))

        return self._get(("llama", spec), make)

    def bf16(self):
        def make():
            folder = hl.save_folder(BF_GQA, self.root / "stored" / f"{BF_GQA.key()}-bfloat16", dtype="bfloat16")
            gb = HookedTransformer.from_pretrained(str(folder), dtype="bfloat16")
            assert gb.has_stored_weights
            return gb, hl.load_tl(hl.load_hf(folder, dtype="float32"))

        return self._get("bf16", make)


@pytest.fixture(scope="session")
def pairs(zoo, fixture_root):
    (fixture_root / "llama").mkdir(exist_ok=True)
    (fixture_root / "stored").mkdir(exist_ok=True)
    return Pairs(zoo, fixture_root)


MODELS = ["gpt2", "gpt2-unprocessed", "llama-gqa-8x2", "llama-gqa-9x3", "llama-gqa-bf16"]


def get_pair(pairs, name):
    return {"gpt2": lambda: pairs.gpt2(True), "gpt2-unprocessed": lambda: pairs.gpt2(False),
            "llama-gqa-8x2": lambda: pairs.llama(GQA_8x2), "llama-gqa-9x3": lambda: pairs.llama(GQA_9x3),
            "llama-gqa-bf16": pairs.bf16}[name]()


@pytest.mark.parametrize("name", MODELS)
def test_qk_ov_match_transformer_lens(pairs, name):
    gb, tl = get_pair(pairs, name)
    for circuit in ("QK", "OV"):
        g, t = getattr(gb, circuit), getattr(tl, circuit)
        assert isinstance(g, FactoredMatrix), type(g)
        assert repr(g) == repr(t)
        assert isinstance(g.A, torch.Tensor) and g.A.dtype == torch.float32
        # the factors themselves: this pins which of W_K / W_V is repeated for GQA, and how
        close(g.A, t.A, RTOL_MM, f"{circuit}.A")
        close(g.B, t.B, RTOL_MM, f"{circuit}.B")
        close(g.AB, t.AB, RTOL_MM, f"{circuit}.AB")
        close(g.S, t.S, RTOL_SVD, f"{circuit}.S")
        close(g.norm(), t.norm(), RTOL_SVD, f"{circuit}.norm()")
        close(g.get_corner(4), t.get_corner(4), RTOL_MM, f"{circuit}.get_corner(4)")
        close(g[1, 2].AB, t[1, 2].AB, RTOL_MM, f"{circuit}[1, 2].AB")
        for layer in range(gb.cfg.n_layers):
            gl, tl_l = getattr(gb.blocks[layer].attn, circuit), getattr(tl.blocks[layer].attn, circuit)
            assert isinstance(gl, FactoredMatrix) and tuple(gl.shape) == tuple(tl_l.shape)
            close(gl.AB, tl_l.AB, RTOL_MM, f"blocks[{layer}].attn.{circuit}.AB")
            close(gl.S, tl_l.S, RTOL_SVD, f"blocks[{layer}].attn.{circuit}.S")


def test_full_ov_circuit_stays_factored(pairs):
    """W_E @ OV[l, h] @ W_U, the [d_vocab, d_vocab] full OV circuit, as TL factors it."""
    gb, tl = pairs.gpt2()
    got, ref = gb.W_E @ gb.OV[1, 2] @ gb.W_U, tl.W_E @ tl.OV[1, 2] @ tl.W_U
    assert isinstance(got, FactoredMatrix) and got.mdim == ref.mdim == gb.cfg.d_head
    close(got.A, ref.A, RTOL_MM, "full OV circuit A")
    close(got.B, ref.B, RTOL_MM, "full OV circuit B")
    close(got.S, ref.S, RTOL_SVD, "full OV circuit S")
    v = torch.zeros(gb.cfg.d_vocab)
    v[7] = 1.0
    close(v @ got, v @ ref, RTOL_MM, "token 7 through the full OV circuit")


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa-8x2"])
def test_ov_eigenvalues_match_transformer_lens(pairs, name):
    """Copying scores use OV eigenvalues: compare each head's (mdim complex values, matched)."""
    gb, tl = get_pair(pairs, name)
    ev = hm.to_np(gb.OV.eigenvalues).astype(np.complex128)
    tev = hm.to_np(tl.OV.eigenvalues).astype(np.complex128)
    assert ev.shape == tev.shape
    scale = float(np.abs(tev).max())
    for idx in np.ndindex(ev.shape[:-1]):
        got = list(ev[idx])
        for r in tev[idx]:
            j = int(np.argmin(np.abs(np.array(got) - r)))
            assert abs(got.pop(j) - r) <= RTOL_SVD * scale, f"OV{idx} eigenvalue {r}"


def test_gqa_repeats_k_and_v_heads(pairs):
    """QK's right factor is W_K^T and OV's left factor W_V, each repeat-interleaved to n_heads
    (query head h reads key/value head h // (n_heads / n_key_value_heads)), as TL."""
    gb, _ = pairs.llama(GQA_9x3)
    reps = gb.cfg.n_heads // gb.cfg.n_key_value_heads
    assert reps == 3
    qk, ov = gb.QK, gb.OV
    for layer in range(gb.cfg.n_layers):
        W_K = f64(gb.blocks[layer].attn._W_K)
        W_V = f64(gb.blocks[layer].attn._W_V)
        for h in range(gb.cfg.n_heads):
            np.testing.assert_array_equal(f64(qk.B[layer, h]), W_K[h // reps].T)
            np.testing.assert_array_equal(f64(ov.A[layer, h]), W_V[h // reps])
        np.testing.assert_array_equal(f64(qk.A[layer]), f64(gb.blocks[layer].attn.W_Q))
        np.testing.assert_array_equal(f64(ov.B[layer]), f64(gb.blocks[layer].attn.W_O))


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa-8x2", "llama-gqa-bf16"])
@pytest.mark.parametrize("mode", ["Q", "K", "V"])
def test_all_composition_scores(pairs, name, mode):
    gb, tl = get_pair(pairs, name)
    got, ref = gb.all_composition_scores(mode), tl.all_composition_scores(mode)
    assert isinstance(got, torch.Tensor) and tuple(got.shape) == tuple(ref.shape)
    L = gb.cfg.n_layers
    by_layers = f64(got).transpose(0, 2, 1, 3)  # [L1, L2, H1, H2]
    assert np.abs(by_layers[np.arange(L)[:, None] >= np.arange(L)[None, :]]).max() == 0.0  # l1 >= l2: zero
    assert np.abs(by_layers[np.arange(L)[:, None] < np.arange(L)[None, :]]).min() > 0.0
    err = float(np.abs(f64(got) - f64(ref)).max())
    assert err <= ATOL_COMP, f"all_composition_scores({mode!r}): max abs error {err:.3g}"
    right = {"Q": gb.QK, "K": gb.QK.T, "V": gb.OV}[mode]
    from transformer_lens.utilities import composition_scores as tl_scores

    tl_right = {"Q": tl.QK, "K": tl.QK.T, "V": tl.OV}[mode]
    one = utils.composition_scores(gb.OV[0], right[1])  # [H, H] for layer 0 -> layer 1
    err = float(np.abs(f64(one) - f64(tl_scores(tl.OV[0], tl_right[1]))).max())
    assert err <= ATOL_COMP


def test_all_composition_scores_bad_mode(pairs):
    gb, _ = pairs.gpt2()
    with pytest.raises(ValueError, match="mode must be one of"):
        gb.all_composition_scores("X")


def test_refactor_factored_attn_matrices(pairs):
    """The refactor re-factors W_Q/W_K and W_V/W_O but keeps every circuit: QK.AB and OV.AB equal
    the unrefactored model's and TL's refactored ones; W_V = U S, W_O = V^T afterwards."""
    gb_r, tl_r = pairs.gpt2_refactored()
    gb, _ = pairs.gpt2()
    for circuit in ("QK", "OV"):
        close(getattr(gb_r, circuit).AB, getattr(tl_r, circuit).AB, RTOL_MM, f"refactored {circuit}.AB vs TL")
        close(getattr(gb_r, circuit).AB, getattr(gb, circuit).AB, RTOL_SVD, f"refactored {circuit}.AB vs plain")
        close(getattr(gb_r, circuit).S, getattr(tl_r, circuit).S, RTOL_SVD, f"refactored {circuit}.S")
    A, B = f64(gb_r.OV.A), f64(gb_r.OV.B)
    gram = np.swapaxes(A, -1, -2) @ A  # = S^2, diagonal
    off = gram - np.eye(gram.shape[-1]) * np.diagonal(gram, axis1=-2, axis2=-1)[..., None, :]
    assert np.abs(off).max() <= 1e-4 * np.abs(gram).max()
    close(B @ np.swapaxes(B, -1, -2), np.broadcast_to(np.eye(B.shape[-2]), gram.shape), RTOL_SVD, "W_O W_O^T")
    close(np.diagonal(gram, axis1=-2, axis2=-1) ** 0.5, gb.OV.S, RTOL_SVD, "|W_V columns| == S")


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa-8x2", "llama-gqa-bf16"])
def test_numpy_backend(pairs, name):
    gb, tl = get_pair(pairs, name)
    try:
        set_array_backend("numpy")
        ov, qk = gb.OV, gb.blocks[1].attn.QK
        assert isinstance(ov.A, np.ndarray) and type(ov.shape) is tuple
        assert isinstance(ov.S, np.ndarray) and isinstance(gb.all_composition_scores("Q"), np.ndarray)
    finally:
        set_array_backend("auto")
    close(ov.AB, tl.OV.AB, RTOL_MM, "numpy OV.AB")
    close(qk.AB, tl.blocks[1].attn.QK.AB, RTOL_MM, "numpy blocks[1].attn.QK.AB")
    close(ov.S, tl.OV.S, RTOL_SVD, "numpy OV.S")


def test_stored_weights_are_not_edited(pairs):
    """bf16 models: the factors are float32 copies; computing with them leaves the model as is."""
    gb, tl = pairs.bf16()
    before = {k: f64(v).copy() for k, v in gb.state_dict().items() if k.endswith(("W_Q", "W_O"))}
    gb.OV.A.mul_(2.0)  # a user scribbling on the (copied, stacked) factors
    gb.blocks[0].attn.QK.B.mul_(2.0)  # read-only float32 copies for stored weights: a copy is made
    (2 * gb.QK).make_even()
    for k, v in gb.state_dict().items():
        if k in before:
            np.testing.assert_array_equal(f64(v), before[k])
    close(gb.OV.AB, tl.OV.AB, RTOL_MM, "OV.AB after editing a copy")


# ---------------------------------------------------------------------------------------------
# memory
GPT2_SMALL = dict(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, n_ctx=1024,
                  d_vocab=1000,  # the vocabulary plays no part in QK / OV; kept small to save time
                  act_fn="gelu_new", normalization_type="LN", seed=0)


@pytest.fixture(scope="module")
def gpt2_small_random():
    return HookedTransformer(GPT2_SMALL)


@pytest.mark.parametrize("backend", ["auto", "numpy"])
def test_ov_memory_is_factors_not_product(gpt2_small_random, backend):
    model = gpt2_small_random
    L, H, D, d = 12, 12, 768, 64
    factor_bytes = L * H * D * d * 4  # 28.3 MB
    dense_bytes = L * H * D * D * 4  # 324 MiB (340 MB)
    try:
        set_array_backend(backend)
        for circuit in ("OV", "QK"):
            tracemalloc.start()
            try:
                fm = getattr(model, circuit)
                corner = fm.get_corner(3)
                head = fm[5, 3]
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert peak <= 2 * factor_bytes + (8 << 20), (
                f"model.{circuit} allocated {peak / 2**20:.0f} MiB; its factors are "
                f"{2 * factor_bytes / 2**20:.0f} MiB and the dense product {dense_bytes / 2**20:.0f} MiB")
            assert isinstance(fm, FactoredMatrix) and tuple(fm.shape) == (L, H, D, D)
            assert tuple(fm.A.shape) == (L, H, D, d) and tuple(fm.B.shape) == (L, H, d, D)
            assert tuple(corner.shape) == (3, 3, 3, 3) and tuple(head.shape) == (D, D)
            tracemalloc.start()
            try:
                block = getattr(model.blocks[7].attn, circuit)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert isinstance(block, FactoredMatrix) and tuple(block.shape) == (H, D, D)
            assert peak <= 2 * factor_bytes // L + (1 << 20)
        if backend == "numpy":  # NumPy allocations are traced: the SVD stays O(factors) too
            fm = model.OV
            tracemalloc.start()
            try:
                S = fm.S
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert tuple(S.shape) == (L, H, d)
            assert peak <= 8 * factor_bytes, f"OV.svd() peak {peak / 2**20:.0f} MiB"
    finally:
        set_array_backend("auto")
