"""The TransformerLens API the TL demo notebooks use, against TransformerLens on identical weights.

Model methods (devices, tokens_to_residual_directions, accumulated_bias, loss_fn, flags, weight
processing methods, state dicts, input_to_embed, attn-only / shortformer models), hook points
(``add_hook(dir="fwd")`` persistence, a user's own HookedRootModule over torch modules), mixed
torch / list / NumPy inputs, and the tokenizer quirks the demos rely on. Utils live in
tests/test_tl_utils_surface.py, cache methods in tests/test_tl_cache_surface.py.

Tolerances: activations and logits ATOL = 1e-4 (fp32, O(1) values); weight-only computations 1e-5.
"""
from __future__ import annotations

import difflib
import logging
import warnings

import numpy as np
import pytest

import glassbox
import helpers_models as hm
import tl_surface_fixtures as sf
from glassbox import HookedTransformer, HookedTransformerConfig

torch = pytest.importorskip("torch")
tl = pytest.importorskip("transformer_lens")

warnings.filterwarnings("ignore", category=DeprecationWarning)
logging.getLogger().setLevel(logging.ERROR)

ATOL = 1e-4
WTOL = 1e-5


@pytest.fixture(scope="module")
def gpt2(zoo):
    return sf.gpt2_pair(zoo)


@pytest.fixture(scope="module")
def llama(fixture_root):
    return sf.llama_pair(fixture_root)


@pytest.fixture(scope="module", params=["gpt2", "llama-gqa"])
def pair(request, zoo, fixture_root):
    return sf.gpt2_pair(zoo) if request.param == "gpt2" else sf.llama_pair(fixture_root)


# ------------------------------------------------------------------------------------------
# devices: glassbox computes on the CPU, and says so instead of pretending to move


def test_device_requests_other_than_cpu_raise_and_change_nothing(gpt2):
    gb, ref = gpt2
    toks = sf.tokens(ref.cfg.d_vocab)
    before = gb(toks)
    for bad in ("cuda", "cuda:0", torch.device("cuda"), 0, "mps"):
        with pytest.raises(RuntimeError, match="CPU only"):
            gb.to(bad)
    with pytest.raises(RuntimeError, match="CPU only"):
        gb.cuda()
    with pytest.raises(RuntimeError, match="CPU only"):
        gb.mps()
    with pytest.raises(ValueError, match="float32"):
        gb.to(torch.float16)
    assert gb.to("cpu", print_details=False) is gb and gb.cpu() is gb and gb.to(torch.float32) is gb
    assert gb.to(torch.device("cpu"), print_details=False) is gb and gb.cfg.device == "cpu"
    sf.close(gb(toks), before, 0.0, "logits after refused moves")
    assert glassbox.utils.get_device() == "cpu"


def test_construction_on_a_gpu_device_raises(zoo):
    import helpers_models as hm

    with pytest.raises(RuntimeError, match="device='cuda'"):
        HookedTransformer.from_pretrained(str(zoo.folder(hm.GPT2_ODD)), device="cuda")
    with pytest.raises(RuntimeError, match="cfg.device"):
        HookedTransformer(HookedTransformerConfig(d_model=8, d_head=4, n_layers=1, n_ctx=8, d_vocab=11,
                                                  act_fn="relu", device="cuda"))


# ------------------------------------------------------------------------------------------
# model helpers


def test_tokens_to_residual_directions(pair):
    gb, ref = pair
    V = ref.cfg.d_vocab
    cases = [5, torch.tensor(7), torch.tensor([3, 4, 5]), torch.tensor([[1, 2], [3, 4], [5, 6]])]
    for t in cases:
        sf.close(gb.tokens_to_residual_directions(t), ref.tokens_to_residual_directions(t), WTOL, f"tokens {t}")
    sf.close(gb.tokens_to_residual_directions(np.array([[1, V - 1]])),
             ref.tokens_to_residual_directions(torch.tensor([[1, V - 1]])), WTOL, "NumPy tokens")
    with pytest.raises(ValueError, match="Invalid token type"):
        gb.tokens_to_residual_directions([1, 2])  # TL refuses a list too


def test_tokens_to_residual_directions_of_a_string(gpt2):
    gb, ref = gpt2
    s = ref.to_str_tokens("When Mary", prepend_bos=False)[-1]
    sf.close(gb.tokens_to_residual_directions(s), ref.tokens_to_residual_directions(s), WTOL, "string token")


def test_accumulated_bias_all_head_labels_and_loss(pair):
    gb, ref = pair
    for layer in range(ref.cfg.n_layers + 1):
        for mlp_input in ((False, True) if layer < ref.cfg.n_layers else (False,)):
            for incl in (True, False):
                sf.close(gb.accumulated_bias(layer, mlp_input, incl), ref.accumulated_bias(layer, mlp_input, incl),
                         WTOL, f"accumulated_bias({layer}, {mlp_input}, {incl})")
    assert gb.all_head_labels() == ref.all_head_labels()
    toks = sf.tokens(ref.cfg.d_vocab, B=2, P=7, seed=3)
    logits = ref(toks)
    for per_token in (False, True):
        sf.close(gb.loss_fn(logits, toks, per_token=per_token), ref.loss_fn(logits, toks, per_token=per_token),
                 ATOL, "loss_fn")
    mask = torch.ones_like(toks)
    mask[0, -2:] = 0
    sf.close(gb.loss_fn(logits, toks, attention_mask=mask), ref.loss_fn(logits, toks, attention_mask=mask),
             ATOL, "loss_fn with mask")


FLAG_SETS = [("set_use_attn_result",), ("set_use_split_qkv_input",), ("set_use_hook_mlp_in",),
             ("set_use_attn_result", "set_use_split_qkv_input", "set_use_hook_mlp_in"), ("set_use_attn_in",)]


@pytest.mark.parametrize("flags", FLAG_SETS, ids=["+".join(f[8:] for f in fs) for fs in FLAG_SETS])
def test_flag_setters_add_tl_hooks(pair, flags):
    gb, ref = pair
    if "set_use_attn_in" in flags and ref.cfg.n_key_value_heads is not None:
        with pytest.raises(AssertionError):
            gb.set_use_attn_in(True)
        return
    toks = sf.tokens(ref.cfg.d_vocab, seed=2)
    try:
        for f in flags:
            getattr(gb, f)(True)
            getattr(ref, f)(True)
        _, cg = gb.run_with_cache(toks)
        _, ct = ref.run_with_cache(toks)
        assert list(cg.keys()) == list(ct.keys())
        for k in ct.keys():
            sf.close(cg[k], ct[k], ATOL, k)
    finally:
        for f in flags:
            getattr(gb, f)(False)
            getattr(ref, f)(False)


# ------------------------------------------------------------------------------------------
# weights: processing methods, state dicts


def _float_sd(model):
    """TL's parameters (its state dict also holds buffers: masks, IGNORE)."""
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_processing_methods_on_state_dicts(gpt2, zoo):
    import helpers_models as hm

    gb, ref = gpt2
    raw_tl = zoo.tl(hm.GPT2_ODD, processed=False)
    raw_gb = zoo.gb(hm.GPT2_ODD, processed=False)
    cases = [(raw_gb.fold_layer_norm, raw_tl.fold_layer_norm, _float_sd(raw_tl)),
             (lambda sd: raw_gb.fold_layer_norm(sd, fold_biases=False, center_weights=False),
              lambda sd: raw_tl.fold_layer_norm(sd, fold_biases=False, center_weights=False), _float_sd(raw_tl))]
    for name in ("center_writing_weights", "center_unembed", "fold_value_biases", "refactor_factored_attn_matrices"):
        cases.append((getattr(gb, name), getattr(ref, name), _float_sd(ref)))
    for ours, theirs, sd in cases:
        a = ours({k: v.clone() for k, v in sd.items()})
        b = theirs({k: v.clone() for k, v in sd.items()})
        common = [k for k in b if k in a]
        assert common and all(torch.is_tensor(a[k]) for k in a), "torch in, torch out"
        assert set(a) <= set(b)  # glassbox drops the folded norm weights; TL may keep them
        for k in common:
            sf.close(a[k], b[k], WTOL, k)


def test_refactored_model_computes_as_tl(zoo):
    """Refactoring changes the factors, not the model: logits, patterns and every residual hook
    equal TL's refactored model; the factors themselves equal TL's given TL's input weights
    (the SVD signs of near-identical inputs can differ, see docs/tl-demos.md)."""
    import helpers_models as hm

    gb = HookedTransformer.from_pretrained(str(zoo.folder(hm.GPT2_ODD)), refactor_factored_attn_matrices=True)
    ref = zoo.tl(hm.GPT2_ODD)
    sd = ref.refactor_factored_attn_matrices(_float_sd(ref))
    toks = sf.tokens(ref.cfg.d_vocab, seed=4)
    _, cg = gb.run_with_cache(toks)
    _, ct = ref.run_with_cache(toks)
    for k in ct.keys():
        if not k.endswith(("hook_q", "hook_k", "hook_v", "hook_z")):
            sf.close(cg[k], ct[k], ATOL, k)
    qk_g = gb.W_Q @ gb.W_K.transpose(-1, -2)
    qk_t = ref.W_Q @ ref.W_K.transpose(-1, -2)
    sf.close(qk_g, qk_t, WTOL, "W_Q W_K^T")
    mine = gb.refactor_factored_attn_matrices(_float_sd(ref))
    for k in ("blocks.0.attn.W_Q", "blocks.1.attn.W_K", "blocks.2.attn.W_V", "blocks.2.attn.W_O"):
        sf.close(mine[k], sd[k], WTOL, k)


def test_process_weights_and_load_and_process_state_dict(zoo):
    import helpers_models as hm

    ref = zoo.tl(hm.GPT2_ODD)
    raw = zoo.tl(hm.GPT2_ODD, processed=False)
    toks = sf.tokens(ref.cfg.d_vocab, seed=5)
    m = zoo.gb(hm.GPT2_ODD, processed=False, fresh=True)
    m.process_weights_()
    assert m.cfg.normalization_type == "LNPre"
    sf.close(m(toks), ref(toks), ATOL, "process_weights_")
    m2 = zoo.gb(hm.GPT2_ODD, processed=False, fresh=True)
    m2.load_and_process_state_dict(_float_sd(raw))
    sf.close(m2(toks), ref(toks), ATOL, "load_and_process_state_dict")


def test_state_dict_and_named_parameters_as_tl(pair):
    gb, ref = pair
    names_t = [n for n, _ in ref.named_parameters()]
    assert [n for n, _ in gb.named_parameters()] == names_t
    sd_g, sd_t = gb.state_dict(), _float_sd(ref)
    assert list(sd_g) == [k for k in sd_t if k in names_t]
    for k in sd_g:
        sf.close(sd_g[k], sd_t[k], WTOL, k)
    assert list(gb.state_dict(prefix="m.")) == ["m." + k for k in sd_g]
    sd = {k: v for k, v in sd_g.items() if not k.endswith("b_O")}
    filled = gb.fill_missing_keys(sd)
    assert list(filled) == list(sd) and set(filled) == set(sd_g)


def test_input_to_embed(gpt2):
    gb, ref = gpt2
    for inp in (["When Mary and John", "The quick brown fox jumps"], sf.tokens(ref.cfg.d_vocab, seed=6)):
        a, b = gb.input_to_embed(inp), ref.input_to_embed(inp)
        sf.close(a[0], b[0], ATOL, "residual")
        sf.close(a[1], b[1], 0, "tokens")
        assert a[2] is None and b[2] is None and (a[3] is None) == (b[3] is None)


ATTN_ONLY = [dict(normalization_type=None, positional_embedding_type="shortformer", attn_only=True),
             dict(normalization_type="LN", positional_embedding_type="shortformer", attn_only=True,
                  use_split_qkv_input=True, use_attn_result=True),
             dict(normalization_type="LN", positional_embedding_type="standard", attn_only=True, use_attn_in=True),
             dict(normalization_type="LN", positional_embedding_type="shortformer")]


@pytest.mark.parametrize("extra", ATTN_ONLY, ids=["attn-only-shortformer-nonorm", "attn-only-shortformer-split",
                                                   "attn-only-standard-attn_in", "shortformer-mlp"])
def test_attn_only_and_shortformer_models_vs_tl(extra):
    """ARENA / attn-only-2l style models: every hook, logits, and a run from a residual with and
    without shortformer_pos_embed, on TL-initialised weights (randomised a little more)."""
    kw = dict(d_model=48, d_head=8, n_heads=6, n_layers=2, n_ctx=32, d_vocab=97, act_fn="gelu", seed=5, **extra)
    ref = tl.HookedTransformer(tl.HookedTransformerConfig(**kw))
    g = torch.Generator().manual_seed(0)
    sd = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in _float_sd(ref).items()}
    ref.load_state_dict(sd, strict=False)
    gb = HookedTransformer(HookedTransformerConfig(**kw))
    gb.load_state_dict({k: v.numpy() for k, v in sd.items()})
    toks = sf.tokens(97, B=2, P=11, seed=7)
    lt, ct = ref.run_with_cache(toks)
    lg, cg = gb.run_with_cache(toks)
    assert list(cg.keys()) == list(ct.keys())
    for k in ct.keys():
        sf.close(cg[k], ct[k], ATOL, k)
    sf.close(lg, lt, ATOL, "logits")
    resid = ct["blocks.1.hook_resid_pre"]
    sfpe = ct["hook_pos_embed"] if kw["positional_embedding_type"] == "shortformer" else None
    sf.close(gb(resid, start_at_layer=1, shortformer_pos_embed=sfpe),
             ref(resid, start_at_layer=1, shortformer_pos_embed=sfpe), ATOL, "start_at_layer")
    sf.close(gb(resid, start_at_layer=1), ref(resid, start_at_layer=1), ATOL, "start_at_layer, no pos embed")
    if sfpe is not None:
        assert gb.input_to_embed(toks)[2] is not None
        sf.close(gb.input_to_embed(toks)[2], ref.input_to_embed(toks)[2], WTOL, "shortformer_pos_embed")


def test_config_tokenizer_name_is_loaded(zoo):
    import helpers_models as hm

    folder = str(zoo.folder(hm.GPT2_ODD))
    m = HookedTransformer(HookedTransformerConfig(d_model=16, d_head=4, n_layers=1, n_ctx=32, d_vocab=301,
                                                  act_fn="gelu", tokenizer_name=folder, seed=1))
    ref = zoo.tl(hm.GPT2_ODD)
    assert m.to_tokens("When Mary and John").tolist() == ref.to_tokens("When Mary and John").tolist()
    with pytest.raises(OSError, match="cannot load the tokenizer"):
        HookedTransformer(HookedTransformerConfig(d_model=16, d_head=4, n_layers=1, n_ctx=32, d_vocab=301,
                                                  act_fn="gelu", tokenizer_name="no-such-org/no-such-model"))


# ------------------------------------------------------------------------------------------
# hooks


def test_hook_point_add_hook_persists_through_run_with_cache_as_in_tl(gpt2):
    """Exploratory_Analysis_Demo: a hook added with HookPoint.add_hook stays on the model after
    run_with_cache (which only removes its own context's hooks), in TL and in glassbox."""
    gb, ref = gpt2
    toks = sf.tokens(ref.cfg.d_vocab, seed=8)

    def ablate(z, hook):
        z[:, -1, 1, :] = 0
        return z

    try:
        gb.blocks[1].attn.hook_z.add_hook(ablate, dir="fwd")
        ref.blocks[1].attn.hook_z.add_hook(ablate, dir="fwd")
        lg, cg = gb.run_with_cache(toks)
        lt, ct = ref.run_with_cache(toks)
        sf.close(lg, lt, ATOL, "ablated logits")
        sf.close(cg["z", 1], ct["z", 1], ATOL, "ablated z")
        assert len(gb.blocks[1].attn.hook_z.fwd_hooks) == len(ref.blocks[1].attn.hook_z.fwd_hooks) == 1
        sf.close(gb(toks), ref(toks), ATOL, "hook still active")
    finally:
        gb.reset_hooks()
        ref.reset_hooks()
    sf.close(gb(toks), ref(toks), ATOL, "after reset_hooks")


def _two_layer_model(hp_module):
    """Main_Demo's toy model, written against either library's HookPoint / HookedRootModule."""
    nn = torch.nn

    class SquareThenAdd(nn.Module):
        def __init__(self, offset):
            super().__init__()
            self.offset = nn.Parameter(torch.tensor(offset))
            self.hook_square = hp_module.HookPoint()

        def forward(self, x):
            return self.offset + self.hook_square(x * x)

    class TwoLayerModel(hp_module.HookedRootModule):
        def __init__(self):
            super().__init__()
            self.layer1 = SquareThenAdd(3.0)
            self.layer2 = SquareThenAdd(-4.0)
            self.hook_in = hp_module.HookPoint()
            self.hook_mid = hp_module.HookPoint()
            self.hook_out = hp_module.HookPoint()
            super().setup()

        def forward(self, x):
            return self.hook_out(self.layer2(self.hook_mid(self.layer1(self.hook_in(x)))))

    return TwoLayerModel()


def test_user_hooked_root_module_over_torch_modules():
    import transformer_lens.hook_points as tl_hp

    import glassbox.hook_points as gb_hp

    ours, theirs = _two_layer_model(gb_hp), _two_layer_model(tl_hp)
    x = torch.tensor([1.5, -2.0])
    og, cg = ours.run_with_cache(x)
    ot, ct = theirs.run_with_cache(x)
    assert list(cg) == list(ct) == ["hook_in", "layer1.hook_square", "hook_mid", "layer2.hook_square", "hook_out"]
    for k in ct:
        sf.close(cg[k], ct[k], 0.0, k)
    assert set(ours.hook_dict) == set(theirs.hook_dict)
    names = []

    def zero(t, hook):
        names.append(hook.name)
        return torch.zeros_like(t)

    sf.close(ours.run_with_hooks(x, fwd_hooks=[("layer2.hook_square", zero)]),
             theirs.run_with_hooks(x, fwd_hooks=[("layer2.hook_square", zero)]), 0.0, "run_with_hooks")
    assert names == ["layer2.hook_square"] * 2
    _, only = ours.run_with_cache(x, names_filter=lambda n: n.endswith("square"))
    assert list(only) == ["layer1.hook_square", "layer2.hook_square"]


# ------------------------------------------------------------------------------------------
# mixed inputs and tokenizer quirks


def test_lists_tensors_and_arrays_mix_as_in_tl(gpt2):
    gb, ref = gpt2
    toks = sf.tokens(ref.cfg.d_vocab, B=1, P=6, seed=9)
    as_list = toks[0].tolist()
    sf.close(gb(as_list), ref(toks), ATOL, "tokens as a list of ints")
    out_np = gb(toks.numpy())
    assert isinstance(out_np, np.ndarray)
    logits = gb(toks)
    idx = torch.tensor([[3, 5]])
    sf.close(logits[:, -1].gather(-1, idx), ref(toks)[:, -1].gather(-1, idx), ATOL, "gather with a torch index")
    rows = gb(torch.cat([toks, toks]))[[1, 0]]
    sf.close(rows, ref(torch.cat([toks, toks]))[[1, 0]], ATOL, "list index on the batch axis")


def _same_text(ours, theirs, what):
    a, b = repr(ours), repr(theirs)
    if a != b:
        diff = "\n".join(difflib.unified_diff(b.splitlines(), a.splitlines(), "TL", "glassbox", lineterm="", n=1))
        raise AssertionError(f"{what}: printed text differs from TL's\n{diff[:2000]}")


def test_printing_a_model_shows_tls_module_tree(pair):
    """``print(model)`` is TransformerLens's text, character for character (``TypedModuleList``
    blocks, ``HookPoint(name=..., N fwd)``, every component's class name), also after the
    ``set_use_*`` flags add hook points, with hooks attached, and for slices and submodules."""
    gb, ref = pair
    _same_text(gb, ref, "model")
    assert type(gb.blocks).__name__ == type(ref.blocks).__name__ == "TypedModuleList"
    _same_text(gb.blocks[1:], ref.blocks[1:], "blocks[1:]")
    for name in ("embed", "unembed", "ln_final", "blocks"):
        if hasattr(ref, name):
            _same_text(getattr(gb, name), getattr(ref, name), name)
    _same_text(gb.blocks[0].attn, ref.blocks[0].attn, "blocks.0.attn")
    _same_text(gb.blocks[-1].mlp, ref.blocks[-1].mlp, "blocks.-1.mlp")
    flags = ["set_use_attn_result", "set_use_split_qkv_input", "set_use_hook_mlp_in"]
    if ref.cfg.n_key_value_heads is None:  # both refuse attn_in with grouped-query attention
        flags.append("set_use_attn_in")
    for flag in flags:
        try:
            getattr(gb, flag)(True)
            getattr(ref, flag)(True)
            _same_text(gb, ref, f"model after {flag}(True)")
        finally:
            getattr(gb, flag)(False)
            getattr(ref, flag)(False)

    def noop(t, hook):
        return None

    try:
        for m in (gb, ref):
            m.add_hook("blocks.0.hook_resid_pre", noop)
            m.add_hook("blocks.0.hook_resid_pre", noop)
            m.add_hook("blocks.1.attn.hook_pattern", noop)
        _same_text(gb, ref, "model with hooks")
        _same_text(gb.hook_dict["blocks.0.hook_resid_pre"], ref.hook_dict["blocks.0.hook_resid_pre"], "hooked HookPoint")
    finally:
        gb.reset_hooks()
        ref.reset_hooks()
    _same_text(gb, ref, "model after reset_hooks")


def test_printing_an_unprocessed_model_shows_tls_module_tree(zoo):
    """Without weight processing the norms keep their weights (``LayerNorm``, not
    ``LayerNormPre``): the printed tree is still TransformerLens's."""
    _same_text(zoo.gb(hm.GPT2_ODD, processed=False), zoo.tl(hm.GPT2_ODD, processed=False), "unprocessed GPT-2")


def test_typed_module_list_is_importable_from_tls_path(gpt2):
    from glassbox.hook_points import ModuleList
    from glassbox.utilities.typed_module_list import TypedModuleList

    gb, _ = gpt2
    assert isinstance(gb.blocks, TypedModuleList) and isinstance(gb.blocks, ModuleList)
    assert isinstance(gb.blocks[:2], TypedModuleList) and len(gb.blocks[:2]) == 2
    assert gb.blocks[1] is list(gb.blocks)[1]


def test_tokenizer_quirks_the_demos_use(gpt2):
    gb, ref = gpt2
    ids = ref.to_tokens("When Mary and John went", prepend_bos=False)[0]
    assert gb.tokenizer.batch_decode(ids) == ref.tokenizer.batch_decode(ids)  # one flat sequence
    assert gb.tokenizer.batch_decode(ids[None]) == ref.tokenizer.batch_decode(ids[None])
    assert gb.tokenizer.batch_decode(ids.tolist()) == ref.tokenizer.batch_decode(ids.tolist())
    assert sorted(gb.tokenizer.vocab.items(), key=lambda kv: kv[1])[:20] == \
        sorted(ref.tokenizer.vocab.items(), key=lambda kv: kv[1])[:20]
    assert gb.to_string(ids[2]) == ref.to_string(ids[2]) and gb.to_string(int(ids[2])) == ref.to_string(int(ids[2]))
    for form in (ids, ids.numpy(), ids[None]):
        assert gb.to_str_tokens(form) == ref.to_str_tokens(form)
    assert gb.to_str_tokens(ids.tolist()) == ref.to_str_tokens(ids)  # TL refuses a list of ids; one sequence here
    assert gb.get_token_position(int(ids[3]), ids) == ref.get_token_position(int(ids[3]), ids)


def test_new_surface_works_without_torch():
    """The helpers added for the demos (neuron / full decompositions, refactoring, input_to_embed,
    attn-only shortformer models, device checks) run with torch unimportable, in NumPy."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import sys; sys.modules['torch'] = None
        import numpy as np
        import glassbox.arrays; glassbox.arrays._torch_available = False
        import glassbox as gb, glassbox.utils as gu
        m = gb.HookedTransformer(dict(d_model=16, d_head=4, n_layers=2, n_ctx=12, d_vocab=40, act_fn="gelu_new", seed=1))
        toks = np.random.default_rng(0).integers(0, 40, (2, 5))
        logits, cache = m.run_with_cache(toks)
        assert isinstance(logits, np.ndarray)
        full = cache.get_full_resid_decomposition()
        assert np.allclose(full.sum(0), cache["resid_post", 1], atol=1e-4)
        assert cache.stack_neuron_results(2, apply_ln=True, project_output_onto=np.ones(16)).shape == (128, 2, 5)
        sd = m.refactor_factored_attn_matrices({k: np.asarray(v) for k, v in m.state_dict().items()})
        qk = lambda d: d["blocks.0.attn.W_Q"] @ np.swapaxes(d["blocks.0.attn.W_K"], -1, -2)
        assert np.allclose(qk(sd), qk(m.state_dict()), atol=1e-5)
        assert m.input_to_embed(toks)[0].shape == (2, 5, 16) and gu.get_device() == "cpu"
        try:
            m.to("cuda")
        except RuntimeError:
            pass
        else:
            raise AssertionError("to('cuda') did not raise")
        m2 = gb.HookedTransformer(dict(d_model=16, d_head=4, n_layers=2, n_ctx=12, d_vocab=40, attn_only=True,
                                       normalization_type=None, positional_embedding_type="shortformer", seed=1))
        assert m2(toks).shape == (2, 5, 40)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_get_pos_offset_and_device_placement(gpt2):
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    from glassbox.past_key_value_caching import HookedTransformerKeyValueCache

    gb, ref = gpt2
    toks = sf.tokens(ref.cfg.d_vocab, B=2, P=5, seed=10)
    kt = TransformerLensKeyValueCache.init_cache(ref.cfg, ref.cfg.device, 2)
    kg = HookedTransformerKeyValueCache.init_cache(gb.cfg, None, 2)
    assert gb.get_pos_offset(None, 2) == ref.get_pos_offset(None, 2) == 0
    ref(toks, past_kv_cache=kt)
    gb(toks, past_kv_cache=kg)
    assert gb.get_pos_offset(kg, 2) == ref.get_pos_offset(kt, 2) == 5
    with pytest.raises(ValueError, match="batch"):
        gb.get_pos_offset(kg, 3)
    gb.move_model_modules_to_device()  # the CPU: nothing to do, no error
