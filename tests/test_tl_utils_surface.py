"""``glassbox.utils`` / ``glassbox.utilities`` against ``transformer_lens.utilities`` on the same inputs.

Every name TL's utils module exports exists in glassbox's (composition_scores comes with the
FactoredMatrix work); the helpers the demos call — to_numpy, get_corner, remove_batch_dim, Slice,
test_prompt, lm_accuracy, tokenize_and_concatenate, get_device — and the rest give TL's answers
(array helpers exactly; losses within 1e-5; printed output character for character). Initialisers
draw exactly TL's values from torch's generator.
"""
from __future__ import annotations

import contextlib
import io
import json
import warnings

import numpy as np
import pytest

import glassbox.utils as gu
import tl_surface_fixtures as sf

torch = pytest.importorskip("torch")
pytest.importorskip("transformer_lens")
warnings.filterwarnings("ignore", category=DeprecationWarning)
import transformer_lens.utilities as tu  # noqa: E402


def test_every_tl_utils_name_exists():
    import transformer_lens.utils as tl_utils

    wanted = set(tl_utils.__all__) - {"composition_scores"}  # FactoredMatrix work (branch factored-matrix)
    missing = sorted(n for n in wanted if not hasattr(gu, n))
    assert not missing, missing
    import glassbox.utilities as gutil

    assert all(hasattr(gutil, n) for n in wanted)


def test_array_helpers():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 5, 6, generator=g)
    sf.close(gu.get_corner(x), tu.get_corner(x), 0, "get_corner")
    sf.close(gu.get_corner(x, 2), tu.get_corner(x, 2), 0, "get_corner(2)")
    sf.close(gu.remove_batch_dim(x), tu.remove_batch_dim(x), 0, "remove_batch_dim")
    sf.close(gu.transpose(x), tu.transpose(x), 0, "transpose")
    assert isinstance(gu.to_numpy(x), np.ndarray) and np.array_equal(gu.to_numpy(x), tu.to_numpy(x))
    assert np.array_equal(gu.to_numpy([1, 2]), tu.to_numpy([1, 2]))
    sq, tri = torch.randn(4, 4, generator=g), torch.tril(torch.randn(4, 4, generator=g))
    for m in (sq, tri, torch.randn(3, 4, generator=g), torch.randn(2, 2, 2, generator=g)):
        assert gu.is_square(m) == tu.is_square(m) and gu.is_lower_triangular(m) == tu.is_lower_triangular(m)
    r = torch.randn(2, 3, 5, generator=g)
    sf.close(gu.repeat_along_head_dimension(r, 4), tu.repeat_along_head_dimension(r, 4), 0, "repeat heads")
    d = {"blocks.0.attn.W_Q": 1, "blocks.0.mlp.W_in": 2, "blocks.1.attn.W_Q": 3}
    assert gu.filter_dict_by_prefix(d, "blocks.0") == tu.filter_dict_by_prefix(d, "blocks.0")
    assert gu.filter_dict_by_prefix(d, "blocks.0.") == tu.filter_dict_by_prefix(d, "blocks.0.")
    for rev in (False, True):
        sf.close(gu.get_cumsum_along_dim(r, 1, rev), tu.get_cumsum_along_dim(r, 1, rev), 1e-6, "cumsum")


def test_nested_attrs(zoo):
    import helpers_models as hm

    gb = zoo.gb(hm.GPT2_ODD)
    assert gu.get_nested_attr(gb, "blocks.1.attn") is gb.blocks[1].attn
    old = gb.cfg.default_prepend_bos
    try:
        gu.set_nested_attr(gb, "cfg.default_prepend_bos", not old)
        assert gb.cfg.default_prepend_bos is (not old)
    finally:
        gb.cfg.default_prepend_bos = old


def test_activations_and_losses():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 7, generator=g)
    for name in ("gelu_new", "gelu_fast", "solu"):
        sf.close(getattr(gu, name)(x), getattr(tu, name)(x), 1e-6, name)
        sf.close(getattr(gu, name)(x.numpy()), getattr(tu, name)(x), 1e-6, name + " (NumPy)")
    logits = torch.randn(2, 6, 11, generator=g)
    toks = torch.randint(0, 11, (2, 6), generator=g)
    mask = torch.ones_like(toks)
    mask[1, 4:] = 0
    for kw in (dict(), dict(per_token=True), dict(attention_mask=mask), dict(attention_mask=mask, per_token=True)):
        sf.close(gu.lm_cross_entropy_loss(logits, toks, **kw), tu.lm_cross_entropy_loss(logits, toks, **kw), 1e-5, str(kw))
        sf.close(gu.lm_cross_entropy_loss(logits.numpy(), toks.numpy(), **{k: (v.numpy() if hasattr(v, "numpy") else v)
                                                                           for k, v in kw.items()}),
                 tu.lm_cross_entropy_loss(logits, toks, **kw), 1e-5, f"NumPy {kw}")
    for per_token in (False, True):
        sf.close(gu.lm_accuracy(logits, toks, per_token), tu.lm_accuracy(logits, toks, per_token), 0, "lm_accuracy")


SLICES = [None, 2, -1, [0, 3], (1, 4), (None, None, 2), slice(1, None), torch.tensor([1, 2]), np.array([0, 4])]


@pytest.mark.parametrize("s", SLICES, ids=[repr(s) for s in SLICES])
def test_slice(s):
    x = torch.arange(5 * 6 * 7).reshape(5, 6, 7)
    for dim in (0, 1, -1):
        sf.close(gu.Slice(s).apply(x, dim=dim), tu.Slice(s).apply(x, dim=dim), 0, f"Slice({s!r}) dim {dim}")
    assert gu.Slice(s).mode == tu.Slice(s).mode
    if not isinstance(s, (torch.Tensor, np.ndarray, list)):
        assert list(gu.Slice(s).indices(6)) == list(np.asarray(tu.Slice(s).indices(6)))


def test_initialisers_draw_tls_values():
    for shape in ((5, 7), (3, 5, 4), (6,)):
        assert gu.calc_fan_in_and_fan_out(torch.empty(shape)) == tu.calc_fan_in_and_fan_out(torch.empty(shape))
        for name, kw in (("init_xavier_uniform_", {}), ("init_xavier_normal_", {"gain": 0.5}),
                         ("init_kaiming_uniform_", {"nonlinearity": "relu"}),
                         ("init_kaiming_normal_", {"a": 0.1, "nonlinearity": "leaky_relu", "mode": "fan_out"})):
            a, b = torch.empty(shape), torch.empty(shape)
            torch.manual_seed(3)
            getattr(gu, name)(a, **kw)
            torch.manual_seed(3)
            getattr(tu, name)(b, **kw)
            sf.close(a, b, 0, f"{name}{shape}")
    arr = np.zeros((64, 32), np.float32)
    gu.init_xavier_uniform_(arr, generator=np.random.default_rng(0))
    bound = np.sqrt(6 / 96)
    assert np.abs(arr).max() <= bound and np.abs(arr).max() > 0.9 * bound  # NumPy arrays in place


def test_check_structure_prints_as_tl():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(4, 4, generator=g)
    for b in (a * 2, a.flip(0), a.flip(1)):
        outs = []
        for fn in (gu.check_structure, tu.check_structure):
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                fn(a, b, verbose=True)
            outs.append(buf.getvalue())
        assert outs[0] == outs[1]


def test_test_prompt_prints_as_tl(zoo):
    import helpers_models as hm

    gb, ref = zoo.gb(hm.GPT2_ODD), zoo.tl(hm.GPT2_ODD)
    for args, kw in ((("When Mary and John went to the store, John gave a drink to", "Mary"), {}),
                     (("The quick brown", " fox jumps"), {"prepend_bos": False, "top_k": 3}),
                     (("It was the best of", ["times", "worst"]), {"print_details": True}),
                     (("An induction head", "looks"), {"print_details": False})):
        outs = []
        for fn, model in ((gu.test_prompt, gb), (tu.test_prompt, ref)):
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                fn(*args, model, **kw)
            outs.append(buf.getvalue())
        assert outs[0] == outs[1], f"{args}: glassbox printed\n{outs[0]}\nTL printed\n{outs[1]}"


def test_tokenize_and_concatenate(zoo):
    datasets = pytest.importorskip("datasets")
    import helpers_models as hm

    gb, ref = zoo.gb(hm.GPT2_ODD), zoo.tl(hm.GPT2_ODD)
    texts = [line for line in hm.CORPUS.split("\n") if line] * 3
    ds = datasets.Dataset.from_dict({"text": texts, "meta": list(range(len(texts)))})
    for kw in (dict(max_length=16), dict(max_length=9, add_bos_token=False), dict(max_length=500)):
        a = gu.tokenize_and_concatenate(ds, gb.tokenizer, num_proc=None, **kw)
        b = tu.tokenize_and_concatenate(ds, ref.tokenizer, num_proc=None, **kw)
        assert a.column_names == b.column_names == ["tokens"]
        sf.close(a["tokens"], b["tokens"], 0, str(kw))
    # a plain list of texts: the documents joined by EOS, cut into rows of 15, BOS first (NumPy)
    rows = gu.tokenize_and_concatenate(texts, gb.tokenizer, max_length=16)
    eos = gb.tokenizer.eos_token_id
    stream = []
    for i, t in enumerate(texts):
        stream += gb.tokenizer.encode(t, add_special_tokens=False) + ([eos] if i < len(texts) - 1 else [])
    n = len(stream) // 15
    expect = np.concatenate([np.full((n, 1), gb.tokenizer.bos_token_id), np.array(stream[: n * 15]).reshape(n, 15)], 1)
    assert isinstance(rows, np.ndarray) and np.array_equal(rows, expect)


def test_devices_and_hub_helpers(tmp_path, monkeypatch):
    assert gu.get_device() == "cpu"
    gu.warn_if_mps("cpu")
    with pytest.warns(UserWarning, match="MPS"):
        gu.warn_if_mps("mps")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        gu.print_gpu_mem("step")
    assert buf.getvalue().startswith("step ~ ")
    assert gu.is_library_available("numpy") and not gu.is_library_available("no_such_library_xyz")
    with pytest.raises(ValueError, match="not supported"):
        gu.get_dataset("no-such-dataset")
    # download_file_from_hf through a local cache (offline): JSON files come back parsed
    repo = tmp_path / "hub" / "models--someone--thing"
    snap = repo / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    (snap / "config.json").write_text(json.dumps({"n_layers": 3}))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert gu.download_file_from_hf("someone/thing", "config.json", cache_dir=str(tmp_path / "hub")) == {"n_layers": 3}
    tok = gu.get_tokenizer_with_bos(_gpt2_tokenizer())
    assert tok.add_bos_token


def _gpt2_tokenizer():
    from glassbox.tokenization import Tokenizer
    from tokenizers import Tokenizer as T, models, pre_tokenizers

    t = T(models.BPE(vocab={"a": 0, "b": 1, "<|endoftext|>": 2}, merges=[]))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return Tokenizer.wrap(t)
