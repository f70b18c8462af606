"""API behaviour of glassbox's TransformerLens surface (not numerical parity, see the parity tests).

Pure-Python parts (get_act_name, ActivationCache indexing, hook bookkeeping, module tree) run
without the C extension; the rest needs ``glassbox._C`` and compares against TransformerLens on
tiny configs with identical weights.
"""
from __future__ import annotations

import numpy as np
import pytest

import glassbox
from glassbox import ActivationCache, HookedTransformer, HookedTransformerConfig, utils

torch = pytest.importorskip("torch")
tl = pytest.importorskip("transformer_lens")

import warnings  # noqa: E402

warnings.filterwarnings("ignore", category=DeprecationWarning)


def _has_engine() -> bool:
    try:
        from glassbox import _C
    except ImportError:
        return False
    return hasattr(_C, "Model")


needs_engine = pytest.mark.skipif(not _has_engine(), reason="glassbox._C engine not built")

GPT2_CFG = dict(d_model=16, d_head=4, n_layers=2, n_ctx=12, d_vocab=40, act_fn="gelu_new", seed=1)
LLAMA_CFG = dict(
    d_model=16, d_head=4, n_heads=4, n_layers=2, n_ctx=12, d_vocab=40, act_fn="silu", normalization_type="RMS",
    positional_embedding_type="rotary", gated_mlp=True, n_key_value_heads=2, final_rms=True, seed=2,
)


def _pair(cfg: dict, **flags):
    """(glassbox model, TL model) with the same (TL-initialised) weights."""
    ref = tl.HookedTransformer(tl.HookedTransformerConfig(**cfg, **flags))
    ours = HookedTransformer(HookedTransformerConfig(**cfg, **flags))
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def _tokens(cfg, B=2, P=7, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, cfg["d_vocab"], size=(B, P)))


# ------------------------------------------------------------------------------------------
# utils.get_act_name
# ------------------------------------------------------------------------------------------
ACT_NAME_CASES = [
    ("embed",), ("pos_embed",), ("k6",), ("scale4ln1",), ("pre5",), ("k", 6, "a"), ("pre", 2),
    ("normalized", 27, "ln2"), ("scale",), ("normalized",), ("resid_pre", 3), ("resid_post", 0),
    ("attn", 1), ("attn_logits", 0), ("key", 2), ("query", 2), ("value", 2), ("mlp_pre", 1),
    ("mlp_post", 1), ("pattern", 0, "attn"), ("z", 3, "b"), ("attn_out", 4, "block"),
    ("mlp_out", 1), ("rot_k", 0), ("pre_linear", 1), ("result", 2), ("scale", 3, "ln1"),
    ("blocks.0.attn.hook_z",), ("hook_embed",), ("attn_scores", 5), ("q", 0, "attention"),
    ("resid_mid", 1, "m"), ("scale", None, "ln_final"), ("mid", 0),
]


@pytest.mark.parametrize("args", ACT_NAME_CASES, ids=lambda a: "-".join(map(str, a)))
def test_get_act_name_matches_transformer_lens(args):
    from transformer_lens.utilities import get_act_name as tl_get_act_name

    assert utils.get_act_name(*args) == tl_get_act_name(*args)


def test_utilities_reexports_utils():
    assert glassbox.utilities.get_act_name is utils.get_act_name
    from glassbox.HookedTransformerConfig import HookedTransformerConfig as C2
    from glassbox.config import HookedTransformerConfig as C3

    assert C2 is C3 is HookedTransformerConfig


def test_loss_and_slice_helpers_match_tl():
    from transformer_lens import utilities as tlu

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
    tokens = rng.integers(0, 7, size=(2, 5))
    mask = np.array([[1, 1, 1, 1, 0], [0, 1, 1, 1, 1]])
    for kw in ({}, {"per_token": True}):
        ref = tlu.lm_cross_entropy_loss(torch.from_numpy(logits), torch.from_numpy(tokens), **kw).numpy()
        np.testing.assert_allclose(utils.lm_cross_entropy_loss(logits, tokens, **kw), ref, rtol=1e-5, atol=1e-6)
        ref_m = tlu.lm_cross_entropy_loss(torch.from_numpy(logits), torch.from_numpy(tokens), torch.from_numpy(mask), **kw)
        np.testing.assert_allclose(utils.lm_cross_entropy_loss(logits, tokens, mask, **kw), ref_m.numpy(), rtol=1e-5, atol=1e-6)
    loss = utils.lm_cross_entropy_loss(logits, tokens)
    assert isinstance(loss, np.ndarray) and loss.ndim == 0 and isinstance(loss.item(), float)
    t = torch.from_numpy(logits)
    assert isinstance(utils.lm_cross_entropy_loss(t, torch.from_numpy(tokens)), torch.Tensor)
    np.testing.assert_allclose(utils.lm_accuracy(logits, tokens), tlu.lm_accuracy(t, torch.from_numpy(tokens)).numpy())
    x = np.arange(24).reshape(2, 3, 4)
    for s in (None, 1, (0, 2), [0, 2], slice(1, None)):
        ref = tlu.Slice(s).apply(torch.from_numpy(x), dim=-2).numpy()
        np.testing.assert_array_equal(utils.Slice(s).apply(x, dim=-2), ref)
    assert utils.Slice.unwrap(2).apply(x, dim=1).shape == (2, 1, 4)
    np.testing.assert_array_equal(
        utils.get_offset_position_ids(0, mask), tlu.get_offset_position_ids(0, torch.from_numpy(mask)).numpy()
    )
    np.testing.assert_allclose(utils.gelu_new(logits), tlu.gelu_new(t).numpy(), rtol=1e-6, atol=1e-6)
    assert utils.get_corner(x, 2).shape == (2, 2, 2)


# ------------------------------------------------------------------------------------------
# module tree, hook bookkeeping (pure Python)
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [GPT2_CFG, LLAMA_CFG], ids=["gpt2", "llama-gqa"])
def test_module_tree_and_state_dict_match_tl(cfg):
    ours, ref = _pair(cfg, use_hook_tokens=True)
    assert list(ours.mod_dict) == list(ref.mod_dict)
    assert list(ours.hook_dict) == list(ref.hook_dict)
    ref_keys = [k for k in ref.state_dict() if not k.endswith(("mask", "IGNORE", "rotary_sin", "rotary_cos"))]
    assert list(ours.state_dict()) == ref_keys
    for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O", "W_in", "W_out", "b_in", "b_out", "W_E", "W_U", "b_U"):
        np.testing.assert_array_equal(getattr(ours, name).numpy(), getattr(ref, name).detach().numpy(), err_msg=name)
    assert ours.blocks[0].attn.hook_z.name == "blocks.0.attn.hook_z"
    assert ours.blocks[1].attn.hook_z.layer() == 1
    assert ours.all_head_labels() == ref.all_head_labels()
    np.testing.assert_allclose(ours.accumulated_bias(2, include_mlp_biases=True).numpy(), ref.accumulated_bias(2).detach().numpy(), atol=1e-6)


def test_weights_are_views_and_assignment_copies():
    model = HookedTransformer(GPT2_CFG)
    W = model.blocks[0].attn.W_Q
    W[0, 0, 0] = 123.0
    assert model.blocks[0].attn._params["W_Q"][0, 0, 0] == 123.0
    model.blocks[0].attn.W_Q = torch.zeros_like(W)
    assert float(model.blocks[0].attn._params["W_Q"].sum()) == 0.0
    assert W.sum().item() == 0.0  # same buffer


def _noop(x, hook):
    return None


def test_hook_contexts_levels_and_permanence():
    model = HookedTransformer(GPT2_CFG)
    name = "blocks.0.hook_resid_pre"
    hp = model.hook_dict[name]
    model.add_hook(name, _noop)
    model.add_perma_hook(name, _noop)
    with model.hooks(fwd_hooks=[(name, _noop)]):
        assert len(hp.fwd_hooks) == 3 and hp.fwd_hooks[-1].context_level == 1
        with model.hooks(fwd_hooks=[(lambda n: n.endswith("resid_pre"), _noop)]):
            assert len(hp.fwd_hooks) == 4 and hp.fwd_hooks[-1].context_level == 2
            assert model.context_level == 2
        assert len(hp.fwd_hooks) == 3
    assert len(hp.fwd_hooks) == 2 and model.context_level == 0
    assert hp.has_hooks() and hp.has_hooks(including_permanent=False)
    model.reset_hooks()
    assert len(hp.fwd_hooks) == 1 and hp.fwd_hooks[0].is_permanent
    model.reset_hooks(including_permanent=True)
    assert not hp.has_hooks()
    # prepend
    first, second = (lambda x, hook: None), (lambda x, hook: None)
    model.add_hook(name, first)
    model.add_hook(name, second, prepend=True)
    assert [h.user_hook for h in hp.fwd_hooks] == [second, first]
    assert set(model.list_hooks()) == {name}
    model.reset_hooks()
    # contexts
    hp.ctx["x"] = 1
    model.reset_hooks(clear_contexts=False)
    assert hp.ctx == {"x": 1}
    model.reset_hooks()
    assert hp.ctx == {}


def test_add_hook_errors():
    model = HookedTransformer(GPT2_CFG)
    with pytest.raises(KeyError, match="hook_resid_pre"):
        model.add_hook("blocks.0.hook_resid_pree", _noop)
    for name in ("blocks.0.attn.hook_result", "blocks.0.hook_q_input", "blocks.0.hook_mlp_in", "blocks.0.hook_attn_in"):
        with pytest.raises(AssertionError):
            model.add_hook(name, _noop)
    model.set_use_attn_result(True)
    model.add_hook("blocks.0.attn.hook_result", _noop)
    model.reset_hooks()
    with pytest.raises(NotImplementedError):
        model.add_hook("hook_embed", _noop, dir="bwd")
    gqa = HookedTransformer(LLAMA_CFG)
    with pytest.raises(AssertionError):
        gqa.set_use_attn_in(True)


def _fake_cache():
    class M:
        class cfg:
            n_layers = 3

    d = {f"blocks.{l}.{s}": np.full((1, 2, 3), l, np.float32) for l in range(3) for s in ("hook_resid_post", "attn.hook_pattern", "ln1.hook_scale")}
    d["ln_final.hook_scale"] = np.ones((1, 2, 1), np.float32)
    return ActivationCache(d, M())


def test_activation_cache_indexing():
    cache = _fake_cache()
    assert cache["resid_post", -1][0, 0, 0] == 2
    assert cache["pattern", 1][0, 0, 0] == 1
    assert cache["attn", 0] is cache["blocks.0.attn.hook_pattern"]
    assert cache["scale", 2, "ln1"] is cache["blocks.2.ln1.hook_scale"]
    assert cache["scale"] is cache["ln_final.hook_scale"]
    assert cache["pattern0"] is cache["blocks.0.attn.hook_pattern"]
    assert "blocks.0.attn.hook_pattern" in cache and len(cache) == 10
    assert list(cache) == list(cache.keys())
    with pytest.raises(KeyError):
        cache["resid_pre", 0]
    cache.remove_batch_dim()
    assert cache["resid_post", 0].shape == (2, 3) and not cache.has_batch_dim


# ------------------------------------------------------------------------------------------
# engine-backed behaviour
# ------------------------------------------------------------------------------------------
FLAG_SETS = [{}, {"use_attn_result": True, "use_split_qkv_input": True, "use_hook_mlp_in": True}, {"use_attn_in": True}]


@needs_engine
@pytest.mark.parametrize("cfg", [GPT2_CFG, LLAMA_CFG], ids=["gpt2", "llama-gqa"])
@pytest.mark.parametrize("flags", FLAG_SETS, ids=["plain", "flags", "attn_in"])
def test_run_with_cache_keys_shapes_values_match_tl(cfg, flags):
    if "use_attn_in" in flags and cfg.get("n_key_value_heads"):
        pytest.skip("attn_in is not available for GQA")
    ours, ref = _pair(cfg, **flags)
    toks = _tokens(cfg)
    logits, cache = ours.run_with_cache(toks)
    ref_logits, ref_cache = ref.run_with_cache(toks)
    assert list(cache.keys()) == list(ref_cache.keys())
    for k in ref_cache.keys():
        assert tuple(cache[k].shape) == tuple(ref_cache[k].shape), k
        np.testing.assert_allclose(cache[k].numpy(), ref_cache[k].detach().numpy(), atol=2e-4, rtol=1e-4, err_msg=k)
    np.testing.assert_allclose(logits.numpy(), ref_logits.detach().numpy(), atol=2e-4, rtol=1e-4)


@needs_engine
def test_ungroup_gqa_and_flag_setters():
    ours, ref = _pair(LLAMA_CFG)
    ours.set_ungroup_grouped_query_attention(True)
    ref.set_ungroup_grouped_query_attention(True)
    toks = _tokens(LLAMA_CFG)
    _, cache = ours.run_with_cache(toks)
    _, ref_cache = ref.run_with_cache(toks)
    for k in ("blocks.0.attn.hook_k", "blocks.0.attn.hook_v", "blocks.1.attn.hook_rot_k"):
        assert tuple(cache[k].shape) == tuple(ref_cache[k].shape)
        np.testing.assert_allclose(cache[k].numpy(), ref_cache[k].detach().numpy(), atol=2e-4, rtol=1e-4)
    ours.set_use_attn_result(True)
    _, cache = ours.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_result"))
    assert list(cache.keys()) == ["blocks.0.attn.hook_result", "blocks.1.attn.hook_result"]


def _run_isolated(code: str) -> None:
    """Run ``code`` in a fresh interpreter, so an engine crash fails one test instead of
    killing the session."""
    import os
    import subprocess
    import sys
    import textwrap

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(glassbox.__file__))] + sys.path))
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, f"exit code {res.returncode}\nstdout:\n{res.stdout[-2000:]}\nstderr:\n{res.stderr[-4000:]}"


_ISOLATED_PRELUDE = f"""
import warnings; warnings.simplefilter("ignore")
import numpy as np, torch
from glassbox import HookedTransformer
cfg = {GPT2_CFG!r}
toks = torch.from_numpy(np.random.default_rng(0).integers(0, cfg["d_vocab"], size=(2, 7)))
def noop(x, hook):
    return None
"""


@needs_engine
def test_fast_cache_equals_hooked_cache():
    _run_isolated(_ISOLATED_PRELUDE + """
model = HookedTransformer(cfg)
_, fast = model.run_with_cache(toks)
with model.hooks(fwd_hooks=[(lambda n: True, noop)]):   # every point goes through Python
    _, slow = model.run_with_cache(toks)
assert list(fast.keys()) == list(slow.keys())
for k in fast.keys():
    np.testing.assert_array_equal(fast[k].numpy(), slow[k].numpy(), err_msg=k)
""")


@needs_engine
def test_hook_order_prepend_and_ln1_fires_three_times():
    _run_isolated(_ISOLATED_PRELUDE + """
model = HookedTransformer(cfg)
calls = []
model.add_hook("blocks.0.hook_resid_pre", lambda x, hook: calls.append("a"))
model.add_hook("blocks.0.hook_resid_pre", lambda x, hook: calls.append("b"), prepend=True)
model.add_hook("blocks.0.ln1.hook_scale", lambda x, hook: calls.append(hook.name))
model(toks)
model.reset_hooks()
assert calls == ["b", "a"] + ["blocks.0.ln1.hook_scale"] * 3, calls
""")


@needs_engine
def test_names_filter_forms():
    model = HookedTransformer(GPT2_CFG)
    toks = _tokens(GPT2_CFG)
    _, c = model.run_with_cache(toks, names_filter="blocks.1.hook_resid_post")
    assert list(c.keys()) == ["blocks.1.hook_resid_post"]
    _, c = model.run_with_cache(toks, names_filter=["blocks.1.hook_resid_post", "hook_embed"])
    assert list(c.keys()) == ["hook_embed", "blocks.1.hook_resid_post"]
    _, c = model.run_with_cache(toks, names_filter=lambda n: "pattern" in n, return_cache_object=False)
    assert isinstance(c, dict) and list(c) == ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]
    model.add_hook("blocks.0.hook_resid_mid", lambda x, hook: x * 0)  # hooked + cached: cache sees the hooked value
    _, c = model.run_with_cache(toks, names_filter=lambda n: n.endswith("resid_mid"))
    model.reset_hooks()
    _, clean = model.run_with_cache(toks, names_filter=lambda n: n.endswith("resid_mid"))
    assert float(np.abs(c["resid_mid", 0].numpy()).max()) == 0.0
    assert float(np.abs(clean["resid_mid", 0].numpy()).max()) > 0
    assert not any(hp.fwd_hooks for hp in model.hook_points())


@needs_engine
def test_run_with_cache_pos_slice_and_remove_batch_dim_match_tl():
    ours, ref = _pair(GPT2_CFG)
    toks = _tokens(GPT2_CFG, B=1)
    for kw in ({"pos_slice": -1}, {"pos_slice": (1, 4)}, {"remove_batch_dim": True}):
        _, c = ours.run_with_cache(toks, **kw)
        _, rc = ref.run_with_cache(toks, **kw)
        assert c.has_batch_dim == rc.has_batch_dim
        for k in rc.keys():
            assert tuple(c[k].shape) == tuple(rc[k].shape), (kw, k)


@needs_engine
def test_hook_in_place_edit_and_replacement_match_tl():
    ours, ref = _pair(GPT2_CFG)
    toks = _tokens(GPT2_CFG)

    def ablate_head(pattern, hook):
        pattern[:, 1] = 0.0

    def double(resid, hook):
        return resid * 2

    hooks = [("blocks.0.attn.hook_pattern", ablate_head), (utils.get_act_name("resid_mid", 1), double)]
    out = ours.run_with_hooks(toks, fwd_hooks=hooks)
    ref_out = ref.run_with_hooks(toks, fwd_hooks=hooks)
    np.testing.assert_allclose(out.numpy(), ref_out.detach().numpy(), atol=2e-4, rtol=1e-4)
    assert not (out.numpy() == ours(toks).numpy()).all()
    # numpy activations and numpy replacement
    seen = {}

    def np_hook(x, hook):
        seen["type"] = type(x)
        return np.zeros_like(x)

    out_np = ours.run_with_hooks(toks.numpy(), fwd_hooks=[("blocks.1.hook_resid_post", np_hook)])
    assert seen["type"] is np.ndarray and isinstance(out_np, np.ndarray)
    np.testing.assert_allclose(out_np, np.broadcast_to(ours.b_U.numpy(), out_np.shape), atol=1e-5)


@needs_engine
def test_wrong_shape_and_raising_hook_leave_model_usable():
    model = HookedTransformer(GPT2_CFG)
    toks = _tokens(GPT2_CFG)
    clean = model(toks).numpy().copy()
    name = "blocks.0.attn.hook_z"
    with pytest.raises(ValueError) as info:
        model.run_with_hooks(toks, fwd_hooks=[(name, lambda z, hook: z[:, :-1])])
    msg = str(info.value)
    assert name in msg and "(2, 6, 4, 4)" in msg and "(2, 7, 4, 4)" in msg

    class Boom(RuntimeError):
        pass

    err = Boom("boom")

    def raiser(x, hook):
        raise err

    with pytest.raises(Boom) as info2:
        model.run_with_hooks(toks, fwd_hooks=[("blocks.1.mlp.hook_post", raiser)])
    assert info2.value is err
    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", raiser)]), pytest.raises(Boom):
        model.run_with_cache(toks)
    assert not any(hp.fwd_hooks for hp in model.hook_points())
    np.testing.assert_array_equal(model(toks).numpy(), clean)
    # a kept activation stays unchanged after the run
    kept = {}
    model.run_with_hooks(toks, fwd_hooks=[("blocks.0.hook_resid_mid", lambda x, hook: kept.setdefault("x", x))])
    snapshot = kept["x"].clone()
    model(toks)
    model.run_with_hooks(toks, fwd_hooks=[("blocks.0.hook_resid_mid", lambda x, hook: x.zero_())])
    assert torch.equal(kept["x"], snapshot)


@needs_engine
def test_bad_tokens_raise_value_error_and_model_stays_usable():
    model = HookedTransformer(GPT2_CFG)
    toks = _tokens(GPT2_CFG)
    clean = model(toks).numpy().copy()
    for bad in (np.array([[1, 2, 40]]), np.array([[1, -1]]), np.zeros((1, GPT2_CFG["n_ctx"] + 1), np.int64), np.zeros((1, 3), np.float32)):
        with pytest.raises(ValueError):
            model(bad)
    np.testing.assert_array_equal(model(toks).numpy(), clean)


@needs_engine
def test_return_types_and_layer_ranges_match_tl():
    ours, ref = _pair(GPT2_CFG)
    toks = _tokens(GPT2_CFG)
    for kw in ({"return_type": "loss"}, {"return_type": "loss", "loss_per_token": True}):
        np.testing.assert_allclose(ours(toks, **kw).numpy(), ref(toks, **kw).detach().numpy(), atol=2e-4, rtol=1e-4)
    both = ours(toks, return_type="both")
    assert isinstance(both, glassbox.Output) and both.loss.ndim == 0 and isinstance(both.loss.item(), float)
    assert ours(toks, return_type=None) is None
    loss_np = ours(toks.numpy(), return_type="loss")
    assert isinstance(loss_np, np.ndarray) and loss_np.ndim == 0
    for stop in (0, 1, -1, 2):
        np.testing.assert_allclose(
            ours(toks, stop_at_layer=stop).numpy(), ref(toks, stop_at_layer=stop).detach().numpy(), atol=2e-4, rtol=1e-4
        )
    resid = ours(toks, stop_at_layer=1)
    np.testing.assert_allclose(ours(resid, start_at_layer=1).numpy(), ours(toks).numpy(), atol=1e-5)
    loss = ours(resid, start_at_layer=-1, tokens=toks, return_type="loss")
    np.testing.assert_allclose(loss.numpy(), ours(toks, return_type="loss").numpy(), atol=1e-5)
    _, cache = ours.run_with_cache(toks, stop_at_layer=1)
    assert list(cache.keys())[-1] == "blocks.0.hook_resid_post"


@needs_engine
def test_hook_tokens_runs_in_python():
    model = HookedTransformer({**GPT2_CFG, "use_hook_tokens": True})
    toks = _tokens(GPT2_CFG)
    _, cache = model.run_with_cache(toks)
    assert list(cache.keys())[:2] == ["hook_tokens", "hook_embed"]
    out = model.run_with_hooks(toks, fwd_hooks=[("hook_tokens", lambda t, hook: torch.zeros_like(t))])
    np.testing.assert_allclose(out.numpy(), model(torch.zeros_like(toks)).numpy(), atol=1e-6)


@needs_engine
def test_array_backend_override():
    model = HookedTransformer(GPT2_CFG)
    toks = _tokens(GPT2_CFG)
    try:
        glassbox.set_array_backend("numpy")
        assert isinstance(model(toks), np.ndarray)
        assert isinstance(model.W_Q, np.ndarray)
    finally:
        glassbox.set_array_backend("auto")
    assert isinstance(model(toks), torch.Tensor)


# ------------------------------------------------------------------------------------------
# tokenizer (local GPT-2-style fixture folder)
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tok_folder(tmp_path_factory):
    import helpers_models as hm

    folder = tmp_path_factory.mktemp("tok")
    hm.write_tokenizer_files(folder, vocab_size=300, n_positions=32)
    return folder


def _tok_pair(folder, padding_side=None):
    import helpers_models as hm

    cfg = {**GPT2_CFG, "d_vocab": 300, "n_ctx": 32}
    ref = tl.HookedTransformer(tl.HookedTransformerConfig(**cfg), tokenizer=hm.load_hf_tokenizer(folder), default_padding_side=padding_side)
    ours = HookedTransformer(cfg, tokenizer=str(folder), default_padding_side=padding_side)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


PROMPTS = ["The quick brown fox", "When Mary and John went to the store, John gave a drink to", "It was"]


def test_tokenizer_helpers_match_tl(tok_folder):
    ours, ref = _tok_pair(tok_folder)
    assert ours.tokenizer.bos_token_id == ours.tokenizer.eos_token_id == ours.tokenizer.pad_token_id == 299
    for kw in ({}, {"prepend_bos": False}, {"padding_side": "left"}):
        np.testing.assert_array_equal(ours.to_tokens(PROMPTS, **kw).numpy(), ref.to_tokens(PROMPTS, **kw).numpy())
    t = ours.to_tokens(PROMPTS[1])
    assert isinstance(t, torch.Tensor) and t.dtype == torch.int64
    assert ours.to_str_tokens(PROMPTS[0]) == ref.to_str_tokens(PROMPTS[0])
    assert ours.to_str_tokens(PROMPTS[:2], prepend_bos=False) == ref.to_str_tokens(PROMPTS[:2], prepend_bos=False)
    assert ours.to_string(t) == ref.to_string(t)
    assert ours.to_string(ours.to_tokens(PROMPTS)) == ref.to_string(ref.to_tokens(PROMPTS))
    assert ours.to_single_token(" the") == ref.to_single_token(" the")
    assert ours.to_single_str_token(5) == ref.to_single_str_token(5)
    assert ours.get_token_position(" the", PROMPTS[1], mode="last") == ref.get_token_position(" the", PROMPTS[1], mode="last")
    np.testing.assert_array_equal(ours.tokens_to_residual_directions(t[0, :3]).numpy(), ref.tokens_to_residual_directions(t[0, :3]).detach().numpy())
    with pytest.raises(AssertionError):
        ours.to_single_token("The quick")


@needs_engine
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_string_batches_match_tl(tok_folder, padding_side):
    ours, ref = _tok_pair(tok_folder, padding_side=padding_side)
    np.testing.assert_allclose(ours(PROMPTS).numpy(), ref(PROMPTS).detach().numpy(), atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(
        ours(PROMPTS, return_type="loss").numpy(), ref(PROMPTS, return_type="loss").detach().numpy(), atol=2e-4, rtol=1e-4
    )
    _, c = ours.run_with_cache(PROMPTS[0])
    _, rc = ref.run_with_cache(PROMPTS[0])
    assert list(c.keys()) == list(rc.keys())


@needs_engine
def test_activation_cache_analysis_methods_match_tl():
    ref = tl.HookedTransformer(tl.HookedTransformerConfig(**GPT2_CFG))
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.3)
    ours = HookedTransformer(GPT2_CFG)
    ours.load_state_dict(ref.state_dict())
    toks = _tokens(GPT2_CFG)
    _, c = ours.run_with_cache(toks)
    _, rc = ref.run_with_cache(toks)

    def close(a, b):
        np.testing.assert_allclose(a.numpy(), b.detach().numpy(), atol=2e-4, rtol=1e-4)

    close(c.accumulated_resid(apply_ln=True), rc.accumulated_resid(apply_ln=True))
    close(c.accumulated_resid(1, incl_mid=True, apply_ln=True), rc.accumulated_resid(1, incl_mid=True, apply_ln=True))
    close(c.decompose_resid(apply_ln=True), rc.decompose_resid(apply_ln=True))
    close(c.stack_head_results(apply_ln=True, incl_remainder=True), rc.stack_head_results(apply_ln=True, incl_remainder=True))
    close(c.stack_activation("pattern"), rc.stack_activation("pattern"))
    stack, rstack = c.decompose_resid()[:, :, -1], rc.decompose_resid()[:, :, -1]
    close(c.logit_attrs(stack, toks[:, -1], pos_slice=-1), rc.logit_attrs(rstack, toks[:, -1], pos_slice=-1))
    assert c.decompose_resid(return_labels=True)[1] == rc.decompose_resid(return_labels=True)[1]
    assert tuple(c.apply_slice_to_batch_dim(0)["resid_pre", 0].shape) == (7, 16)
