"""ActivationCache analysis methods vs TransformerLens, on identical weights (GPT-2 and Llama-GQA).

Every option the TL demos use (and the rest of each signature): apply_ln_to_stack, accumulated_resid,
decompose_resid, stack_head_results, get_neuron_results, stack_neuron_results (incl.
project_output_onto and folded LN), get_full_resid_decomposition, logit_attrs, stack_activation,
remove_batch_dim / apply_slice_to_batch_dim. Labels must be equal; values within ATOL = 1e-4
absolute (fp32 activations of O(1); the projected stacks, which sum d_model products, 5e-4).
"""
from __future__ import annotations

import logging
import warnings

import pytest

import tl_surface_fixtures as sf

torch = pytest.importorskip("torch")
pytest.importorskip("transformer_lens")

warnings.filterwarnings("ignore", category=DeprecationWarning)
logging.getLogger().setLevel(logging.ERROR)

ATOL = 1e-4
ATOL_PROJ = 5e-4


@pytest.fixture(scope="module", params=["gpt2", "llama-gqa"])
def caches(request, zoo, fixture_root):
    """(glassbox cache, TL cache, model pair) of one batch run, batch dim kept."""
    gb, tl = sf.gpt2_pair(zoo) if request.param == "gpt2" else sf.llama_pair(fixture_root)
    toks = sf.tokens(tl.cfg.d_vocab, B=3, P=8, seed=1)
    _, cg = gb.run_with_cache(toks)
    _, ct = tl.run_with_cache(toks)
    return cg, ct, gb, tl


def _same(got, ref, atol=ATOL, what=""):
    if isinstance(ref, tuple):
        assert list(got[1]) == list(ref[1]), f"{what}: labels differ"
        got, ref = got[0], ref[0]
    sf.close(got, ref, atol, what)


APPLY_LN = [
    dict(), dict(layer=-1), dict(layer=0), dict(layer=1), dict(layer=1, mlp_input=True),
    dict(layer=None, pos_slice=-1), dict(layer=2, pos_slice=[0, 3, 5]), dict(layer=1, pos_slice=(1, 6)),
    dict(batch_slice=1), dict(batch_slice=[0, 2], pos_slice=-2), dict(recompute_ln=True),
    dict(layer=-1, recompute_ln=True, pos_slice=-1),
]


@pytest.mark.parametrize("kw", APPLY_LN, ids=[str(k) for k in APPLY_LN])
def test_apply_ln_to_stack(caches, kw):
    cg, ct, gb, tl = caches
    stack_t = torch.stack([ct["resid_pre", 1], ct["attn_out", 0], ct["mlp_out", 1]])
    pos = kw.get("pos_slice")
    stack_g = stack_t.clone()
    if pos is not None:  # callers hand a stack already sliced to the positions they ask for
        from transformer_lens.utilities import Slice

        stack_t = Slice(pos).apply(stack_t, dim=-2)
        stack_g = stack_t.clone()
    _same(cg.apply_ln_to_stack(stack_g, **kw), ct.apply_ln_to_stack(stack_t, **kw), what=str(kw))


def test_apply_ln_to_stack_without_batch_dim(caches):
    cg, ct, gb, tl = caches
    toks = sf.tokens(tl.cfg.d_vocab, B=1, P=6, seed=4)
    _, g1 = gb.run_with_cache(toks, remove_batch_dim=True)
    _, t1 = tl.run_with_cache(toks, remove_batch_dim=True)
    stack = torch.stack([t1["resid_post", 0], t1["embed"]])
    for kw in (dict(has_batch_dim=False), dict(has_batch_dim=False, layer=1, mlp_input=True)):
        _same(g1.apply_ln_to_stack(stack.clone(), **kw), t1.apply_ln_to_stack(stack.clone(), **kw), what=str(kw))


RESID = [
    ("accumulated_resid", dict(layer=-1, incl_mid=True, pos_slice=-1, return_labels=True)),
    ("accumulated_resid", dict(layer=2, apply_ln=True, return_labels=True)),
    ("accumulated_resid", dict(layer=1, mlp_input=True, return_labels=True)),
    ("accumulated_resid", dict(apply_ln=True, pos_slice=[1, 2])),
    ("decompose_resid", dict(layer=-1, pos_slice=-1, return_labels=True)),
    ("decompose_resid", dict(layer=2, mode="attn", apply_ln=True, return_labels=True)),
    ("decompose_resid", dict(layer=1, mlp_input=True, mode="mlp", incl_embeds=False, return_labels=True)),
    ("stack_head_results", dict(layer=-1, pos_slice=-1, return_labels=True)),
    ("stack_head_results", dict(layer=2, incl_remainder=True, apply_ln=True, return_labels=True)),
    ("stack_head_results", dict(layer=0, return_labels=True)),
]


@pytest.mark.parametrize("method,kw", RESID, ids=[f"{m}-{k}" for m, k in RESID])
def test_residual_stacks(caches, method, kw):
    cg, ct, gb, tl = caches
    _same(getattr(cg, method)(**kw), getattr(ct, method)(**kw), what=f"{method}{kw}")


def test_stack_head_results_remainder_at_layer_0(caches):
    """Deliberate difference: with no heads before layer 0 the remainder is the whole residual
    entering block 0 (resid_pre 0). TransformerLens reads ``resid_post`` of layer ``layer - 1``,
    i.e. of the *last* layer (-1), here."""
    cg, ct, gb, tl = caches
    stack, labels = cg.stack_head_results(layer=0, incl_remainder=True, return_labels=True)
    assert labels == ["remainder"] and stack.shape[0] == 1
    sf.close(stack[0], ct["resid_pre", 0], ATOL, "remainder at layer 0")


NEURONS = [
    dict(layer=2), dict(layer=-1, neuron_slice=[1, 5, 9], return_labels=True),
    dict(layer=2, pos_slice=-1, incl_remainder=True, return_labels=True),
    dict(layer=2, apply_ln=True, incl_remainder=True),
    dict(layer=2, project="2d", apply_ln=True, incl_remainder=True, return_labels=True),
    dict(layer=1, project="1d", pos_slice=[0, 2]),
    dict(layer=2, project="2d", neuron_slice=(3, 20), pos_slice=-1, apply_ln=True),
]


def _projection(kw, d_model):
    kw = dict(kw)
    p = kw.pop("project", None)
    g = torch.Generator().manual_seed(3)
    if p == "2d":
        kw["project_output_onto"] = torch.randn(d_model, 3, generator=g)
    elif p == "1d":
        kw["project_output_onto"] = torch.randn(d_model, generator=g)
    return kw


@pytest.mark.parametrize("kw", NEURONS, ids=[str(k) for k in NEURONS])
def test_stack_neuron_results(caches, kw):
    cg, ct, gb, tl = caches
    kw = _projection(kw, tl.cfg.d_model)
    atol = ATOL_PROJ if "project_output_onto" in kw else ATOL
    _same(cg.stack_neuron_results(**kw), ct.stack_neuron_results(**kw), atol, str(kw))


@pytest.mark.parametrize("kw", [dict(layer=1), dict(layer=0, neuron_slice=[2, 3], pos_slice=-1),
                                dict(layer=1, neuron_slice=4), dict(layer=1, project="2d"),
                                dict(layer=0, project="1d", pos_slice=(2, 5))])
def test_get_neuron_results(caches, kw):
    cg, ct, gb, tl = caches
    kw = _projection(kw, tl.cfg.d_model)
    _same(cg.get_neuron_results(**kw), ct.get_neuron_results(**kw), ATOL_PROJ, str(kw))


FULL = [
    dict(), dict(layer=1, mlp_input=True), dict(expand_neurons=False, apply_ln=True),
    dict(layer=2, apply_ln=True, pos_slice=-1, project="2d"),
    dict(layer=1, project="1d", expand_neurons=False, apply_ln=True, mlp_input=True),
    dict(layer=0, pos_slice=[1, 4]),
]


@pytest.mark.parametrize("kw", FULL, ids=[str(k) for k in FULL])
def test_get_full_resid_decomposition(caches, kw):
    cg, ct, gb, tl = caches
    kw = _projection(kw, tl.cfg.d_model)
    _same(cg.get_full_resid_decomposition(return_labels=True, **kw),
          ct.get_full_resid_decomposition(return_labels=True, **kw), ATOL_PROJ, str(kw))


def test_full_decomposition_sums_to_the_residual(caches):
    """Independent check: the components add up to resid_pre of the layer (TL's own property)."""
    cg, ct, gb, tl = caches
    L = gb.cfg.n_layers
    for layer, target in ((1, cg["resid_pre", 1]), (L, cg["resid_post", L - 1])):
        parts = cg.get_full_resid_decomposition(layer)
        sf.close(parts.sum(0), target, 2e-4, f"sum of components, layer {layer}")
    parts = cg.get_full_resid_decomposition(1, mlp_input=True, expand_neurons=False)
    sf.close(parts.sum(0), cg["resid_mid", 1], 2e-4, "sum of components, mlp input of layer 1")


def test_logit_attrs(caches):
    cg, ct, gb, tl = caches
    stack, _ = ct.decompose_resid(layer=-1, return_labels=True)
    V = tl.cfg.d_vocab
    B, P = stack.shape[1:3]
    toks = torch.randint(0, V, (B, P), generator=torch.Generator().manual_seed(5))
    bad = torch.randint(0, V, (B, P), generator=torch.Generator().manual_seed(6))
    for args in ((toks,), (toks, bad), (7,), (7, 9), (torch.tensor(7),)):
        _same(cg.logit_attrs(stack.clone(), *args), ct.logit_attrs(stack.clone(), *args), what=f"logit_attrs{len(args)}")
    last = stack[:, :, -1]
    _same(cg.logit_attrs(last.clone(), toks[:, -1], bad[:, -1], pos_slice=-1),
          ct.logit_attrs(last.clone(), toks[:, -1], bad[:, -1], pos_slice=-1), what="pos_slice=-1")


def test_stack_activation_and_batch_slicing(caches):
    cg, ct, gb, tl = caches
    for args in (("pattern",), ("resid_post", 2), ("scale", -1, "ln2"), ("z",)):
        _same(cg.stack_activation(*args), ct.stack_activation(*args), what=str(args))
    for sl in (1, [0, 2], (0, 2)):
        a, b = cg.apply_slice_to_batch_dim(sl), ct.apply_slice_to_batch_dim(sl)
        assert a.has_batch_dim == b.has_batch_dim and list(a.keys()) == list(b.keys())
        _same(a["resid_post", 1], b["resid_post", 1], what=f"batch slice {sl}")
