"""Tests for glassbox.loading: safetensors I/O, name resolution, HF->TL conversion, TL weight
processing and random init. References (torch, transformers, transformer_lens) are test-only and
every checkpoint is built locally with random weights."""
from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("transformer_lens")

from glassbox.loading import (  # noqa: E402
    RotaryRefactorError,
    SafeTensor,
    SafetensorsError,
    init_weights,
    load_pretrained_parts,
    load_safetensors,
    param_shapes,
    process_weights,
    read_safetensors,
    read_safetensors_sharded,
    refactor_factored_attn_matrices,
    resolve_model_files,
    rotary_inv_freq,
    save_safetensors,
)

warnings.filterwarnings("ignore", category=DeprecationWarning)
logging.getLogger().setLevel(logging.ERROR)


# --------------------------------------------------------------------------------------------
# fixtures: HF checkpoints with random weights (norm weights and biases random too)
# --------------------------------------------------------------------------------------------
@pytest.fixture
def workdir():
    # TL keys behaviour off substrings of the path ("llama", "gemma"): keep the path neutral.
    d = tempfile.mkdtemp(prefix="gbx_")
    assert "llama" not in d.lower() and "gemma" not in d.lower()
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def _randomize(model, seed: int, std: float = 0.2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * std
            if "ln" in name or "norm" in name:
                p.copy_(1.0 + noise)
            else:
                p.copy_(noise)


def make_gpt2(folder: Path, seed: int = 0, **kw):
    from transformers import GPT2Config, GPT2LMHeadModel

    args = dict(n_embd=80, n_head=5, n_layer=2, vocab_size=101, n_positions=48)
    args.update(kw)
    args.setdefault("n_ctx", args["n_positions"])  # TL 3.9 reads n_ctx
    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(GPT2Config(**args)).eval()
    _randomize(hf, seed)
    hf.save_pretrained(folder, safe_serialization=True)
    return hf


def make_llama_like(folder: Path, arch: str = "llama", seed: int = 0, **kw):
    from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                              Qwen2Config, Qwen2ForCausalLM)

    cls = {"llama": (LlamaConfig, LlamaForCausalLM), "mistral": (MistralConfig, MistralForCausalLM),
           "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[arch]
    args = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                intermediate_size=96, vocab_size=97, max_position_embeddings=128)
    args.update(kw)
    torch.manual_seed(seed)
    hf = cls[1](cls[0](**args)).eval()
    _randomize(hf, seed)
    hf.save_pretrained(folder, safe_serialization=True)
    return hf


def tl_reference(folder: Path, hf, **processing):
    """TL's own pipeline on the same local checkpoint: (cfg, {name: ndarray})."""
    import transformer_lens.loading_from_pretrained as tl_loading
    from transformer_lens import HookedTransformer

    fold_ln = processing.get("fold_ln", False)
    cfg = tl_loading.get_pretrained_model_config(str(folder), fold_ln=fold_ln, device="cpu")
    cfg.tokenizer_name = None  # no tokenizer files in these folders
    sd = tl_loading.get_pretrained_state_dict(str(folder), cfg, hf_model=hf)
    model = HookedTransformer(cfg)
    model.load_and_process_state_dict(sd, **processing)
    out = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()
           if not k.endswith((".mask", ".IGNORE", "rotary_sin", "rotary_cos"))}
    return model.cfg, out


def assert_sd_close(ours, ref, atol):
    assert sorted(ours) == sorted(ref), (set(ours) ^ set(ref))
    for k in ref:
        assert ours[k].shape == ref[k].shape, k
        assert ours[k].dtype == np.float32, k
        np.testing.assert_allclose(ours[k], ref[k], atol=atol, rtol=0, err_msg=k)


NO_PROCESSING = dict(fold_ln=False, center_writing_weights=False, center_unembed=False,
                     fold_value_biases=False, refactor_factored_attn_matrices=False)


# --------------------------------------------------------------------------------------------
# GPT-2 conversion and processing vs TransformerLens
# --------------------------------------------------------------------------------------------
def test_gpt2_conversion_matches_tl(workdir):
    hf = make_gpt2(workdir, n_embd=80, n_head=5, n_layer=3, scale_attn_by_inverse_layer_idx=True)
    loaded = load_pretrained_parts(str(workdir))
    tl_cfg, ref = tl_reference(workdir, hf, **NO_PROCESSING)
    assert_sd_close(loaded.state_dict, ref, 1e-6)
    for k in ("d_model", "d_head", "n_heads", "d_mlp", "n_layers", "n_ctx", "eps", "d_vocab",
              "d_vocab_out", "act_fn", "normalization_type", "positional_embedding_type",
              "scale_attn_by_inverse_layer_idx", "use_attn_scale", "original_architecture",
              "model_name", "default_prepend_bos", "n_key_value_heads", "gated_mlp", "final_rms"):
        assert loaded.config[k] == getattr(tl_cfg, k), k
    assert loaded.config["scale_attn_by_inverse_layer_idx"] is True
    for v in loaded.state_dict.values():
        assert v.flags.c_contiguous and v.dtype == np.float32
    assert loaded.source == str(workdir.resolve())


PROCESSING_COMBOS = [
    dict(fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True),
    dict(fold_ln=True, center_writing_weights=False, center_unembed=False, fold_value_biases=False),
    dict(fold_ln=False, center_writing_weights=True, center_unembed=True, fold_value_biases=False),
    dict(fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=True),
    dict(fold_ln=True, center_writing_weights=False, center_unembed=True, fold_value_biases=True),
    dict(fold_ln=False, center_writing_weights=True, center_unembed=False, fold_value_biases=True),
]


@pytest.mark.parametrize("flags", PROCESSING_COMBOS, ids=lambda f: "-".join(k for k, v in f.items() if v) or "none")
def test_gpt2_processing_matches_tl(workdir, flags):
    hf = make_gpt2(workdir, n_embd=65, n_head=5, n_layer=3, vocab_size=301, n_positions=40, seed=3)
    loaded = load_pretrained_parts(str(workdir))
    sd, updated = process_weights(loaded.state_dict, loaded.config, **flags)
    tl_cfg, ref = tl_reference(workdir, hf, **flags)
    assert_sd_close(sd, ref, 1e-5)
    cfg = {**loaded.config, **updated}
    assert cfg["normalization_type"] == tl_cfg.normalization_type
    # processing never writes into its input
    again = load_pretrained_parts(str(workdir))
    for k, v in again.state_dict.items():
        np.testing.assert_array_equal(loaded.state_dict[k], v)


def test_processing_preserves_logits(workdir):
    """fold_ln & co. keep log-probs: check with TL's model on both state dicts."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    make_gpt2(workdir, n_embd=48, n_head=4, n_layer=2, vocab_size=60, seed=5)
    loaded = load_pretrained_parts(str(workdir))
    sd, upd = process_weights(loaded.state_dict, loaded.config)

    def run(cfg_dict, state):
        keep = {k: v for k, v in cfg_dict.items() if k not in ("dtype", "tie_word_embeddings")}
        model = HookedTransformer(HookedTransformerConfig(**keep, device="cpu"))
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=False)
        toks = torch.tensor([[1, 5, 9, 33, 2, 59]])
        return torch.log_softmax(model(toks), -1).detach().numpy()

    a = run(loaded.config, loaded.state_dict)
    b = run({**loaded.config, **upd}, sd)
    np.testing.assert_allclose(a, b, atol=2e-4)


def test_refactor_factored_attn_matrices_matches_tl(workdir):
    flags = dict(fold_ln=True, center_writing_weights=True, center_unembed=True,
                 fold_value_biases=True, refactor_factored_attn_matrices=True)
    hf = make_gpt2(workdir, n_embd=40, n_head=4, n_layer=2, vocab_size=50, seed=7)
    loaded = load_pretrained_parts(str(workdir))
    sd, _ = process_weights(loaded.state_dict, loaded.config, **flags)
    _, ref = tl_reference(workdir, hf, **flags)
    assert sorted(sd) == sorted(ref)
    for l in range(2):
        p = f"blocks.{l}.attn."
        # invariant products
        for ours, theirs in ((sd, ref),):
            qk_o = np.einsum("hmd,hnd->hmn", np.concatenate([ours[p + "W_Q"], ours[p + "b_Q"][:, None]], 1),
                             np.concatenate([ours[p + "W_K"], ours[p + "b_K"][:, None]], 1))
            qk_t = np.einsum("hmd,hnd->hmn", np.concatenate([theirs[p + "W_Q"], theirs[p + "b_Q"][:, None]], 1),
                             np.concatenate([theirs[p + "W_K"], theirs[p + "b_K"][:, None]], 1))
            np.testing.assert_allclose(qk_o, qk_t, atol=1e-4)
            np.testing.assert_allclose(ours[p + "W_V"] @ ours[p + "W_O"], theirs[p + "W_V"] @ theirs[p + "W_O"], atol=1e-4)
        np.testing.assert_allclose(sd[p + "b_O"], ref[p + "b_O"], atol=1e-5)
        np.testing.assert_array_equal(sd[p + "b_V"], 0)
        # same factors up to the sign of each singular vector
        for name in ("W_Q", "W_K", "W_V"):
            a, b = sd[p + name], ref[p + name]
            sign = np.sign(np.einsum("hmd,hmd->hd", a, b))[:, None, :]
            np.testing.assert_allclose(a * sign, b, atol=1e-4, err_msg=p + name)
        sign = np.sign(np.einsum("hdm,hdm->hd", sd[p + "W_O"], ref[p + "W_O"]))[:, :, None]
        np.testing.assert_allclose(sd[p + "W_O"] * sign, ref[p + "W_O"], atol=1e-4)
    for k in ref:
        if ".attn." not in k:
            np.testing.assert_allclose(sd[k], ref[k], atol=1e-5, err_msg=k)


def test_refactor_refuses_rotary():
    cfg = dict(n_layers=1, positional_embedding_type="rotary")
    with pytest.raises(AssertionError, match="rotary"):
        refactor_factored_attn_matrices({}, cfg)
    with pytest.raises(ValueError):
        refactor_factored_attn_matrices({}, cfg)
    assert issubclass(RotaryRefactorError, ValueError)


def test_gpt2_real_shape(workdir):
    """One checkpoint at the real gpt2 shape (124M params), processed with TL's defaults."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_ctx=1024)).eval()
    with torch.no_grad():
        for l in range(12):
            hf.transformer.h[l].ln_1.weight.normal_(1.0, 0.1)
            hf.transformer.h[l].ln_1.bias.normal_(0.0, 0.1)
        hf.transformer.ln_f.bias.normal_(0.0, 0.1)
    hf.save_pretrained(workdir, safe_serialization=True)
    loaded = load_pretrained_parts(str(workdir))
    assert loaded.config["d_model"] == 768 and loaded.config["n_ctx"] == 1024
    assert loaded.config["d_vocab"] == 50257 and loaded.config["model_name"] == workdir.name
    sd, upd = process_weights(loaded.state_dict, loaded.config)
    _, ref = tl_reference(workdir, hf, fold_ln=True, center_writing_weights=True,
                          center_unembed=True, fold_value_biases=True)
    assert_sd_close(sd, ref, 1e-5)
    assert upd == {"normalization_type": "LNPre"}


# --------------------------------------------------------------------------------------------
# GPT-2 checkpoint variants
# --------------------------------------------------------------------------------------------
def test_gpt2_unprefixed_keys_and_extra_buffers(workdir):
    """The hub's gpt2 model.safetensors has no 'transformer.' prefix, no lm_head, extra attn.bias."""
    hf = make_gpt2(workdir / "a")
    ref = load_pretrained_parts(str(workdir / "a")).state_dict
    tensors = {k.replace("transformer.", ""): v.numpy() for k, v in hf.state_dict().items()
               if not k.startswith("lm_head")}
    tensors["h.0.attn.bias"] = np.tril(np.ones((1, 1, 48, 48), dtype=np.float32))
    (workdir / "b").mkdir()
    save_safetensors(workdir / "b" / "model.safetensors", tensors, metadata={"format": "pt"})
    shutil.copy(workdir / "a" / "config.json", workdir / "b" / "config.json")
    got = load_pretrained_parts(str(workdir / "b")).state_dict
    assert_sd_close(got, ref, 0)


def test_gpt2_n_ctx_first_n_layers(workdir):
    make_gpt2(workdir, n_layer=3)
    full = load_pretrained_parts(str(workdir))
    part = load_pretrained_parts(str(workdir), n_ctx=20, first_n_layers=2)
    assert part.config["n_ctx"] == 20 and part.config["n_layers"] == 2
    assert part.state_dict["pos_embed.W_pos"].shape == (20, 80)
    np.testing.assert_array_equal(part.state_dict["pos_embed.W_pos"], full.state_dict["pos_embed.W_pos"][:20])
    assert not any(k.startswith("blocks.2.") for k in part.state_dict)
    with pytest.raises(ValueError, match="n_ctx=100 exceeds"):
        load_pretrained_parts(str(workdir), n_ctx=100)
    with pytest.raises(ValueError, match="first_n_layers"):
        load_pretrained_parts(str(workdir), first_n_layers=4)
    with pytest.raises(ValueError, match="float32"):
        load_pretrained_parts(str(workdir), dtype="int8")
    # GPT-2 weights are not kept in a reduced dtype: bfloat16 loads them as float32 (with a warning)
    half = load_pretrained_parts(str(workdir), dtype="bfloat16")
    assert half.config["dtype"] == "float32" and half.state_dict["embed.W_E"].dtype == np.float32
    assert load_pretrained_parts(str(workdir), dtype=np.float32).config["dtype"] == "float32"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_checkpoints_widen_to_float32(workdir, dtype):
    hf = make_gpt2(workdir / "ref")
    hf.to(dtype).save_pretrained(workdir / "half", safe_serialization=True)
    got = load_pretrained_parts(str(workdir / "half")).state_dict
    wte = hf.transformer.wte.weight.detach().float().numpy()
    np.testing.assert_array_equal(got["embed.W_E"], wte)
    np.testing.assert_array_equal(got["unembed.W_U"], wte.T)
    assert all(v.dtype == np.float32 for v in got.values())


def test_single_file_and_sharded_checkpoints(workdir):
    hf = make_gpt2(workdir / "one", n_layer=3)
    ref = load_pretrained_parts(str(workdir / "one")).state_dict
    # a .safetensors file next to config.json
    got = load_pretrained_parts(str(workdir / "one" / "model.safetensors"))
    assert_sd_close(got.state_dict, ref, 0)
    # sharded via model.safetensors.index.json
    hf.save_pretrained(workdir / "sharded", safe_serialization=True, max_shard_size="60KB")
    files = sorted(os.listdir(workdir / "sharded"))
    assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) > 1
    assert_sd_close(load_pretrained_parts(str(workdir / "sharded")).state_dict, ref, 0)
    assert_sd_close(load_pretrained_parts(str(workdir / "sharded" / "model.safetensors.index.json")).state_dict, ref, 0)
    # the index reader alone, against the safetensors library
    from safetensors.numpy import load_file

    index = workdir / "sharded" / "model.safetensors.index.json"
    tensors = read_safetensors_sharded(index)
    weight_map = json.loads(index.read_text())["weight_map"]
    assert set(tensors) == set(weight_map)
    for shard in set(weight_map.values()):
        for k, v in load_file(str(workdir / "sharded" / shard)).items():
            np.testing.assert_array_equal(tensors[k].numpy(), v)
    # a missing shard, and an index pointing at a shard lacking the tensor
    shard = sorted(set(weight_map.values()))[-1]
    os.rename(workdir / "sharded" / shard, workdir / "sharded" / "moved")
    with pytest.raises(FileNotFoundError, match=shard):
        load_pretrained_parts(str(workdir / "sharded"))
    os.rename(workdir / "sharded" / "moved", workdir / "sharded" / shard)
    idx = json.loads(index.read_text())
    first = sorted(set(weight_map.values()))[0]
    victim = next(k for k, v in weight_map.items() if v == shard)
    idx["weight_map"][victim] = first
    index.write_text(json.dumps(idx))
    with pytest.raises(SafetensorsError, match=victim.replace(".", r"\.")):
        read_safetensors_sharded(index)


def test_tokenizer_files_reported(workdir):
    make_gpt2(workdir)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (workdir / name).write_text("{}")
    loaded = load_pretrained_parts(str(workdir))
    assert loaded.tokenizer_dir == str(workdir.resolve())
    assert sorted(loaded.tokenizer_files) == ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    assert loaded.tokenizer_files["tokenizer.json"] == str(workdir.resolve() / "tokenizer.json")
    (workdir / "tokenizer.json").unlink()
    (workdir / "tokenizer_config.json").unlink()
    (workdir / "special_tokens_map.json").unlink()
    bare = load_pretrained_parts(str(workdir))
    assert bare.tokenizer_dir is None and bare.tokenizer_files == {}


# --------------------------------------------------------------------------------------------
# LLaMA family vs TransformerLens
# --------------------------------------------------------------------------------------------
LLAMA_CASES = {
    "llama-gqa-llama3rope": ("llama", dict(rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32})),
    "llama-mha-tied": ("llama", dict(num_key_value_heads=4, tie_word_embeddings=True)),
    "mistral-window": ("mistral", dict(sliding_window=16, rope_theta=1e6)),
    "qwen2-bias": ("qwen2", dict(rope_theta=1e6)),
}


@pytest.mark.parametrize("case", sorted(LLAMA_CASES))
def test_llama_family_matches_tl(workdir, case):
    arch, kw = LLAMA_CASES[case]
    hf = make_llama_like(workdir, arch, seed=11, **kw)
    loaded = load_pretrained_parts(str(workdir))
    cfg = loaded.config
    tl_cfg, ref = tl_reference(workdir, hf, **NO_PROCESSING)
    for k in ("d_model", "d_head", "n_heads", "d_mlp", "n_layers", "n_ctx", "eps", "d_vocab",
              "act_fn", "n_key_value_heads", "normalization_type", "positional_embedding_type",
              "rotary_dim", "rotary_adjacent_pairs", "final_rms", "gated_mlp", "rotary_base",
              "use_NTK_by_parts_rope", "NTK_by_parts_factor", "NTK_by_parts_low_freq_factor",
              "NTK_by_parts_high_freq_factor", "NTK_original_ctx_len", "window_size",
              "use_local_attn", "attn_types", "default_prepend_bos", "original_architecture"):
        assert cfg[k] == getattr(tl_cfg, k), (k, cfg[k], getattr(tl_cfg, k))
    if case == "llama-mha-tied":
        assert cfg["n_key_value_heads"] is None and "blocks.0.attn.W_K" in loaded.state_dict
        assert "lm_head.weight" not in read_safetensors(workdir / "model.safetensors")
        np.testing.assert_array_equal(loaded.state_dict["unembed.W_U"], loaded.state_dict["embed.W_E"].T)
    else:
        assert cfg["n_key_value_heads"] == 2 and loaded.state_dict["blocks.0.attn._W_K"].shape == (2, 64, 16)
    assert_sd_close(loaded.state_dict, ref, 1e-6)
    if arch == "qwen2":
        assert np.abs(loaded.state_dict["blocks.1.attn._b_K"]).max() > 0
    # processed with TL's defaults (RMS: fold weights only, no centring of writing weights)
    flags = dict(fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True)
    sd, upd = process_weights(loaded.state_dict, cfg, **flags)
    tl_cfg2, ref2 = tl_reference(workdir, hf, **flags)
    assert upd["normalization_type"] == tl_cfg2.normalization_type == "RMSPre"
    assert_sd_close(sd, ref2, 1e-5)


@pytest.mark.parametrize("scaling", [None, {"rope_type": "linear", "factor": 4.0},
                                     {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64}])
def test_rotary_inv_freq_matches_hf(workdir, scaling):
    kw = dict(rope_theta=50000.0, hidden_size=128, num_attention_heads=2)
    if scaling:
        kw["rope_scaling"] = scaling
    hf = make_llama_like(workdir, "llama", **kw)
    cfg = load_pretrained_parts(str(workdir)).config
    ours = rotary_inv_freq(cfg)
    np.testing.assert_allclose(ours, hf.model.rotary_emb.inv_freq.numpy(), rtol=1e-6)
    if scaling and scaling["rope_type"] == "linear":
        assert cfg["rotary_scaling_factor"] == 4.0


def test_llama_head_dim_and_bias_options(workdir):
    """head_dim != hidden/heads (TL 3.9's LLaMA branch ignores it) and attention_bias=True."""
    hf = make_llama_like(workdir, "llama", head_dim=24, attention_bias=True)
    loaded = load_pretrained_parts(str(workdir))
    sd, cfg = loaded.state_dict, loaded.config
    assert cfg["d_head"] == 24 and cfg["rotary_dim"] == 24
    assert sd["blocks.0.attn.W_Q"].shape == (4, 64, 24) and sd["blocks.0.attn.W_O"].shape == (4, 24, 64)
    attn = hf.model.layers[1].self_attn
    np.testing.assert_array_equal(sd["blocks.1.attn.b_Q"], attn.q_proj.bias.detach().numpy().reshape(4, 24))
    np.testing.assert_array_equal(sd["blocks.1.attn._b_V"], attn.v_proj.bias.detach().numpy().reshape(2, 24))
    np.testing.assert_array_equal(sd["blocks.1.attn.b_O"], attn.o_proj.bias.detach().numpy())
    # GQA value biases fold into b_O with each kv head counted once per query head
    folded, _ = process_weights(sd, cfg, fold_ln=False, center_writing_weights=False,
                                center_unembed=False, fold_value_biases=True)
    b_V = np.repeat(sd["blocks.1.attn._b_V"], 2, axis=0)
    want = sd["blocks.1.attn.b_O"] + np.einsum("hd,hdm->m", b_V, sd["blocks.1.attn.W_O"])
    np.testing.assert_allclose(folded["blocks.1.attn.b_O"], want, atol=1e-5)
    np.testing.assert_array_equal(folded["blocks.1.attn._b_V"], 0)


# --------------------------------------------------------------------------------------------
# Hub cache resolution
# --------------------------------------------------------------------------------------------
def _populate_cache(cache: Path, repo: str, src: Path, rev: str = "0123456789abcdef0123456789abcdef01234567"):
    root = cache / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / rev
    snap.mkdir(parents=True)
    for f in src.iterdir():
        shutil.copy(f, snap / f.name)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(rev)
    return snap


def test_hub_cache_resolution(workdir, monkeypatch):
    make_gpt2(workdir / "src")
    (workdir / "src" / "tokenizer.json").write_text("{}")
    cache = workdir / "hub"
    snap = _populate_cache(cache, "openai-community/gpt2", workdir / "src")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ref = load_pretrained_parts(str(workdir / "src")).state_dict
    for name in ("gpt2", "GPT2-Small", "openai-community/gpt2"):
        loaded = load_pretrained_parts(name)
        assert loaded.source == str(snap)
        assert loaded.config["model_name"] == "gpt2" and loaded.config["tokenizer_name"] == "gpt2"
        assert loaded.tokenizer_files["tokenizer.json"] == str(snap / "tokenizer.json")
        assert_sd_close(loaded.state_dict, ref, 0)
    # the legacy short repo id layout (models--gpt2) is accepted too
    shutil.rmtree(cache)
    _populate_cache(cache, "gpt2", workdir / "src")
    assert load_pretrained_parts("gpt2").config["model_name"] == "gpt2"
    # any repo id whose config names a supported architecture loads (no allow-list)
    _populate_cache(cache, "someone/tiny-gpt2", workdir / "src")
    files = resolve_model_files("someone/tiny-gpt2")
    assert files.repo_id == "someone/tiny-gpt2" and files.official_name == "someone/tiny-gpt2"
    assert load_pretrained_parts("someone/tiny-gpt2").config["model_name"] == "tiny-gpt2"
    # not cached + offline: a clear error saying how to get it
    with pytest.raises(OSError, match="not in the local Hugging Face cache") as err:
        load_pretrained_parts("gpt2-medium")
    assert "openai-community/gpt2-medium" in str(err.value) and "HF_HUB_OFFLINE" in str(err.value)


def test_hub_cache_explicit_cache_dir(workdir, monkeypatch):
    make_gpt2(workdir / "src")
    _populate_cache(workdir / "elsewhere", "distilbert/distilgpt2", workdir / "src")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    loaded = load_pretrained_parts("distil-gpt2", cache_dir=str(workdir / "elsewhere"))
    assert loaded.config["model_name"] == "distilgpt2"


# --------------------------------------------------------------------------------------------
# safetensors reader/writer vs the safetensors library
# --------------------------------------------------------------------------------------------
def _sample_tensors():
    rng = np.random.default_rng(0)
    return {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "f16": rng.standard_normal((7,)).astype(np.float16),
        "f64": rng.standard_normal((2, 2, 2)),
        "i64": np.arange(6, dtype=np.int64).reshape(2, 3),
        "i32": np.arange(-3, 3, dtype=np.int32),
        "u8": np.arange(10, dtype=np.uint8),
        "b": np.array([True, False, True]),
        "scalar": np.array(3.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }


def test_reader_matches_safetensors_library(workdir):
    from safetensors.numpy import load_file, save_file

    t = _sample_tensors()
    save_file(t, str(workdir / "lib.safetensors"), metadata={"format": "np"})
    ours = read_safetensors(workdir / "lib.safetensors")
    assert set(ours) == set(t)
    for k, v in t.items():
        assert ours[k].data.dtype == v.dtype and ours[k].shape == v.shape, k
        np.testing.assert_array_equal(ours[k].numpy(), v)
    # zero-copy: views of a copy-on-write memmap; writing does not touch the file
    arr = ours["f32"].data
    assert type(arr) is np.ndarray and not arr.flags.owndata and arr.flags.writeable
    from glassbox.loading.mapped import MappedFile, mapped_file_of

    mf = mapped_file_of(arr)  # the .base chain ends in the file's copy-on-write mapping
    assert isinstance(mf, MappedFile) and mf.path == str(workdir / "lib.safetensors")
    arr[0, 0] = 1234.0
    np.testing.assert_array_equal(load_file(str(workdir / "lib.safetensors"))["f32"], t["f32"])
    # our writer, read back by the library
    save_safetensors(workdir / "ours.safetensors", t, metadata={"k": "v"})
    back = load_file(str(workdir / "ours.safetensors"))
    for k, v in t.items():
        np.testing.assert_array_equal(back[k], v)
    assert load_safetensors(workdir / "ours.safetensors", dtype=np.float32)["f16"].dtype == np.float32


def test_bf16_stays_bf16(workdir):
    from safetensors.torch import save_file

    x = torch.randn(4, 6)
    save_file({"w": x.bfloat16(), "h": x.half()}, str(workdir / "bf.safetensors"))
    t = read_safetensors(workdir / "bf.safetensors")
    assert t["w"].dtype == "BF16" and t["w"].data.dtype == np.uint16 and t["w"].is_bf16
    np.testing.assert_array_equal(t["w"].numpy(), x.bfloat16().float().numpy())
    np.testing.assert_array_equal(t["h"].numpy(), x.half().numpy())
    # round trip through our writer keeps the bits
    save_safetensors(workdir / "bf2.safetensors", {"w": SafeTensor(t["w"].data, "BF16")})
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(workdir / "bf2.safetensors"))["w"], x.bfloat16())


def _write_raw(path: Path, header: dict, data: bytes, header_len: int = None) -> Path:
    raw = json.dumps(header).encode()
    n = len(raw) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + raw + data)
    return path


@pytest.mark.parametrize("case,match", [
    ("tiny", "truncated safetensors file: 3 bytes"),
    ("header_past_end", "truncated safetensors file: header claims"),
    ("bad_json", "corrupt safetensors header"),
    ("not_object", "corrupt safetensors header: expected a JSON object"),
    ("missing_field", "needs dtype, shape and data_offsets"),
    ("offset_past_end", "run past the end of the data"),
    ("truncated_data", "run past the end of the data"),
    ("bad_dtype", "dtype 'F8_E4M3', which glassbox does not support"),
    ("size_mismatch", r"shape \(2, 3\) x F32 needs 24 bytes but data_offsets \[0, 16\] span 16"),
    ("bad_offsets", r"data_offsets \[24, 0\] out of order"),
    ("bad_shape", r"negative dimension in shape \[2, -3\]"),
])
def test_reader_bad_files(workdir, case, match):
    p = workdir / f"{case}.safetensors"
    good = {"x": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}
    data = bytes(24)
    if case == "tiny":
        p.write_bytes(b"abc")
    elif case == "header_past_end":
        _write_raw(p, good, data, header_len=10_000)
    elif case == "bad_json":
        raw = b"{not json"
        p.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    elif case == "not_object":
        _write_raw(p, [1, 2], data)
    elif case == "missing_field":
        _write_raw(p, {"x": {"dtype": "F32", "shape": [2, 3]}}, data)
    elif case == "offset_past_end":
        _write_raw(p, {"x": {"dtype": "F32", "shape": [2, 3], "data_offsets": [100, 124]}}, data)
    elif case == "truncated_data":
        full = workdir / "full.safetensors"
        save_safetensors(full, {"a": np.ones((50, 50), np.float32)})
        p.write_bytes(full.read_bytes()[:-100])
    elif case == "bad_dtype":
        _write_raw(p, {"x": {"dtype": "F8_E4M3", "shape": [6], "data_offsets": [0, 6]}}, data)
    elif case == "size_mismatch":
        _write_raw(p, {"x": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 16]}}, data)
    elif case == "bad_offsets":
        _write_raw(p, {"x": {"dtype": "F32", "shape": [2, 3], "data_offsets": [24, 0]}}, data)
    elif case == "bad_shape":
        _write_raw(p, {"x": {"dtype": "F32", "shape": [2, -3], "data_offsets": [0, 24]}}, data)
    with pytest.raises(SafetensorsError, match=match) as err:
        read_safetensors(p)
    assert str(p) in str(err.value)
    assert isinstance(err.value, ValueError)


def test_reader_missing_file(workdir):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        read_safetensors(workdir / "nope.safetensors")


# --------------------------------------------------------------------------------------------
# loader bad inputs
# --------------------------------------------------------------------------------------------
def test_loader_bad_inputs(workdir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(workdir / "emptycache"))
    make_gpt2(workdir / "m")
    cfg_path = workdir / "m" / "config.json"
    hf = json.loads(cfg_path.read_text())

    # config disagreeing with the weights: names the tensor and both shapes
    cfg_path.write_text(json.dumps({**hf, "n_embd": 85}))
    with pytest.raises(ValueError, match=r"'transformer\.wte\.weight' has shape \(101, 80\).*implies \(101, 85\)"):
        load_pretrained_parts(str(workdir / "m"))
    cfg_path.write_text(json.dumps({**hf, "n_inner": 100}))
    with pytest.raises(ValueError, match=r"c_fc\.weight' has shape \(80, 320\).*implies \(80, 100\)"):
        load_pretrained_parts(str(workdir / "m"))
    # unsupported architecture lists the supported ones
    cfg_path.write_text(json.dumps({**hf, "architectures": ["BertForMaskedLM"]}))
    with pytest.raises(ValueError, match="BertForMaskedLM.*GPT2LMHeadModel.*LlamaForCausalLM"):
        load_pretrained_parts(str(workdir / "m"))
    cfg_path.write_text(json.dumps({**hf, "activation_function": "quick_gelu"}))
    with pytest.raises(ValueError, match="quick_gelu"):
        load_pretrained_parts(str(workdir / "m"))
    cfg_path.write_text("{broken")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        load_pretrained_parts(str(workdir / "m"))
    cfg_path.write_text(json.dumps({k: v for k, v in hf.items() if k != "n_layer"}))
    with pytest.raises(ValueError, match="n_layer"):
        load_pretrained_parts(str(workdir / "m"))
    cfg_path.write_text(json.dumps(hf))
    # a tensor missing from the checkpoint
    from safetensors.numpy import load_file

    t = load_file(str(workdir / "m" / "model.safetensors"))
    del t["transformer.h.1.mlp.c_proj.bias"]
    save_safetensors(workdir / "m" / "model.safetensors", t)
    with pytest.raises(ValueError, match=r"'transformer\.h\.1\.mlp\.c_proj\.bias' is missing"):
        load_pretrained_parts(str(workdir / "m"))
    # folders and paths
    (workdir / "noconfig").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_pretrained_parts(str(workdir / "noconfig"))
    (workdir / "noweights").mkdir()
    shutil.copy(cfg_path, workdir / "noweights" / "config.json")
    (workdir / "noweights" / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors weights found.*pytorch_model.bin"):
        load_pretrained_parts(str(workdir / "noweights"))
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        load_pretrained_parts(str(workdir / "does" / "not" / "exist"))
    with pytest.raises(OSError, match="not in the local Hugging Face cache"):
        load_pretrained_parts("nobody/no-such-model")


def test_llama_family_bad_configs(workdir):
    make_llama_like(workdir, "llama")
    cfg_path = workdir / "config.json"
    hf = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**hf, "num_key_value_heads": 4}))
    with pytest.raises(ValueError, match=r"k_proj\.weight' has shape \(32, 64\).*implies \(64, 64\)"):
        load_pretrained_parts(str(workdir))
    cfg_path.write_text(json.dumps({**hf, "num_key_value_heads": 3}))
    with pytest.raises(ValueError, match="not a multiple"):
        load_pretrained_parts(str(workdir))
    cfg_path.write_text(json.dumps({**hf, "rope_parameters": {"rope_type": "yarn", "factor": 2.0}}))
    with pytest.raises(ValueError, match="'yarn' is not supported"):
        load_pretrained_parts(str(workdir))


# --------------------------------------------------------------------------------------------
# init_weights vs HookedTransformer(cfg)
# --------------------------------------------------------------------------------------------
INIT_CFGS = {
    "gpt2-like": dict(d_model=64, d_head=16, n_heads=4, n_layers=2, n_ctx=32, d_mlp=256, d_vocab=100,
                      act_fn="gelu_new", normalization_type="LN"),
    "llama-gqa": dict(d_model=64, d_head=16, n_heads=4, n_layers=2, n_ctx=32, d_mlp=96, d_vocab=100,
                      act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
                      n_key_value_heads=2, gated_mlp=True, final_rms=True),
    "attn-only-lnpre": dict(d_model=32, d_head=8, n_heads=4, n_layers=1, n_ctx=16, d_vocab=50,
                            attn_only=True, normalization_type="LNPre", d_vocab_out=7),
}


@pytest.mark.parametrize("name", sorted(INIT_CFGS))
def test_init_weights_matches_tl_parameter_set(name):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = INIT_CFGS[name]
    tl = HookedTransformer(HookedTransformerConfig(**cfg, device="cpu"))
    ref = {k: tuple(v.shape) for k, v in tl.named_parameters()}
    sd = init_weights(cfg, seed=0)
    assert {k: v.shape for k, v in sd.items()} == ref
    assert {k: tuple(v) for k, v in param_shapes(cfg).items()} == ref
    std = 0.8 / np.sqrt(cfg["d_model"])
    for k, v in sd.items():
        assert v.dtype == np.float32
        if "W_" in k:
            assert abs(v.std() - std) < 0.15 * std, k
        elif k.endswith(".w"):
            np.testing.assert_array_equal(v, 1)
        else:
            np.testing.assert_array_equal(v, 0)
    np.testing.assert_array_equal(init_weights(cfg, seed=0)["embed.W_E"], sd["embed.W_E"])


def test_init_modes():
    base = dict(d_model=64, d_head=16, n_heads=4, n_layers=1, n_ctx=16, d_mlp=128, d_vocab=50,
                act_fn="relu")
    sd = init_weights({**base, "init_mode": "xavier_uniform", "initializer_range": 1.0}, seed=1)
    bound = np.sqrt(6.0 / (64 + 128))
    assert np.abs(sd["blocks.0.mlp.W_in"]).max() <= bound and np.abs(sd["blocks.0.mlp.W_in"]).max() > 0.9 * bound
    bound_q = np.sqrt(6.0 / (64 + 4 * 16))
    assert np.abs(sd["blocks.0.attn.W_Q"]).max() <= bound_q
    sd = init_weights({**base, "init_mode": "kaiming_normal"}, seed=1)
    assert abs(sd["blocks.0.mlp.W_out"].std() - np.sqrt(2.0 / 128)) < 0.1 * np.sqrt(2.0 / 128)
    sd = init_weights({**base, "initializer_range": 0.02}, seed=1)
    assert abs(sd["blocks.0.mlp.W_out"].std() - 0.02) < 0.002
    with pytest.raises(ValueError, match="init_mode"):
        init_weights({**base, "init_mode": "orthogonal"})


def test_processing_accepts_config_objects(workdir):
    """cfg may be a config object (TL's or glassbox's HookedTransformerConfig), not only a dict."""
    from transformer_lens import HookedTransformerConfig

    make_llama_like(workdir, "qwen2", seed=4)
    loaded = load_pretrained_parts(str(workdir))
    keep = {k: v for k, v in loaded.config.items() if k not in ("dtype", "tie_word_embeddings")}
    obj = HookedTransformerConfig(**keep, device="cpu")
    a, ua = process_weights(loaded.state_dict, obj)
    b, ub = process_weights(loaded.state_dict, loaded.config)
    assert ua == ub == {"normalization_type": "RMSPre"}
    assert_sd_close(a, b, 0)
    assert {k: v.shape for k, v in init_weights(obj, seed=0).items()} == {
        k: v.shape for k, v in init_weights(loaded.config, seed=0).items()}
