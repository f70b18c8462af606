"""Bad input: every failure is a Python exception with a useful message (never a crash), and the
model keeps working afterwards (the next forward gives the same logits as before, atol 1e-6).

File-parser failures are exercised in a subprocess so that a crash (SIGSEGV/SIGBUS on a truncated
memory map) fails the test instead of killing the test run.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import helpers_models as hm
from helpers_models import GPT2_ODD, max_abs_diff, to_np

SPEC = GPT2_ODD


@pytest.fixture(scope="module")
def model(zoo):
    m = zoo.gb(SPEC)
    yield m
    m.reset_hooks(including_permanent=True)


@pytest.fixture(scope="module")
def toks():
    return hm.random_tokens(SPEC.vocab_size, (2, 12), seed=31)


@pytest.fixture(scope="module")
def baseline(model, toks):
    return to_np(model(toks)).copy()


def still_works(model, toks, baseline):
    out = to_np(model(toks))
    err = max_abs_diff(out, baseline)
    assert err <= 1e-6, f"model changed after an error: max abs diff {err:.3g}"
    _, cache = model.run_with_cache(toks)
    assert len(cache) > 0


# ------------------------------------------------------------------------------------------
# tokens


@pytest.mark.parametrize("bad", [SPEC.vocab_size, SPEC.vocab_size + 1000, -1, -SPEC.vocab_size])
def test_token_id_out_of_range(model, toks, baseline, bad):
    t = toks.copy()
    t[1, 5] = bad
    with pytest.raises((ValueError, IndexError)) as ei:
        model(t)
    msg = str(ei.value)
    assert str(bad) in msg or "range" in msg.lower() or "vocab" in msg.lower(), msg
    still_works(model, toks, baseline)


def test_sequence_longer_than_n_ctx(model, toks, baseline):
    t = hm.random_tokens(SPEC.vocab_size, (1, SPEC.n_positions + 1), seed=32)
    with pytest.raises(ValueError) as ei:
        model(t)
    msg = str(ei.value)
    assert str(SPEC.n_positions) in msg or "n_ctx" in msg, msg
    with pytest.raises(ValueError):
        model.run_with_cache(t)
    # exactly n_ctx is fine
    ok = hm.random_tokens(SPEC.vocab_size, (1, SPEC.n_positions), seed=33)
    assert to_np(model(ok)).shape == (1, SPEC.n_positions, SPEC.vocab_size)
    still_works(model, toks, baseline)


def test_bad_token_dtype_and_rank(model, toks, baseline):
    with pytest.raises((ValueError, TypeError)):
        model(toks.astype(np.float32) + 0.5)
    with pytest.raises((ValueError, TypeError)):
        model(toks[None])  # rank 3 int tokens
    still_works(model, toks, baseline)


def test_bad_attention_mask_shape(model, toks, baseline):
    with pytest.raises((ValueError, RuntimeError, AssertionError)) as ei:
        model(toks, attention_mask=np.ones((2, 5), dtype=np.int64))
    assert "(2, 5)" in str(ei.value) or "2, 5" in str(ei.value), str(ei.value)
    still_works(model, toks, baseline)


# ------------------------------------------------------------------------------------------
# hooks


def test_unknown_hook_name_suggests_closest(model, toks, baseline):
    def f(x, hook):
        return None

    with pytest.raises((KeyError, ValueError)) as ei:
        model.run_with_hooks(toks, fwd_hooks=[("blocks.0.attn.hook_zz", f)])
    assert "blocks.0.attn.hook_z" in str(ei.value), str(ei.value)
    with pytest.raises((KeyError, ValueError)) as ei:
        model.add_hook("blocks.1.hook_resid_prе", f)  # Cyrillic 'е'
    assert "blocks.1.hook_resid_pre" in str(ei.value), str(ei.value)
    still_works(model, toks, baseline)


@pytest.mark.parametrize("name", ["blocks.1.hook_resid_mid", "blocks.0.attn.hook_pattern",
                                  "blocks.2.ln1.hook_scale"])
def test_hook_returning_wrong_shape(model, toks, baseline, name):
    def bad(x, hook):
        return x[..., :-1]

    with pytest.raises(ValueError) as ei:
        model.run_with_hooks(toks, fwd_hooks=[(name, bad)])
    msg = str(ei.value)
    full = [2, 12]
    shapes = {"blocks.1.hook_resid_mid": [2, 12, SPEC.n_embd],
              "blocks.0.attn.hook_pattern": [2, SPEC.n_head, 12, 12],
              "blocks.2.ln1.hook_scale": [2, 12, 1]}[name]
    got = shapes[:-1] + [shapes[-1] - 1]
    assert name in msg, f"message does not name the hook: {msg}"

    def has_shape(s):
        return ", ".join(map(str, s)) in msg or "x".join(map(str, s)) in msg

    assert has_shape(shapes) and has_shape(got), f"message lacks both shapes {shapes}/{got}: {msg}"
    still_works(model, toks, baseline)


def test_hook_returning_non_array(model, toks, baseline):
    with pytest.raises((ValueError, TypeError)) as ei:
        model.run_with_hooks(toks, fwd_hooks=[("blocks.0.hook_mlp_out", lambda x, hook: "nope")])
    assert "blocks.0.hook_mlp_out" in str(ei.value)
    still_works(model, toks, baseline)


class Boom(Exception):
    pass


@pytest.mark.parametrize("name", ["hook_embed", "blocks.1.attn.hook_z", "blocks.0.ln1.hook_scale",
                                  "ln_final.hook_normalized"])
def test_hook_raising_propagates_unchanged(model, toks, baseline, name):
    err = Boom("from the hook")

    def raiser(x, hook):
        raise err

    with pytest.raises(Boom) as ei:
        model.run_with_hooks(toks, fwd_hooks=[(name, raiser)])
    assert ei.value is err, "the original exception object must reach the caller"
    # run_with_cache with a hook attached through hooks() as well
    with pytest.raises(Boom):
        with model.hooks(fwd_hooks=[(name, raiser)]):
            model.run_with_cache(toks)
    # the failed runs must not leave hooks attached
    still_works(model, toks, baseline)


def test_hook_raising_with_kept_reference(model, toks, baseline):
    """A hook keeps the activation and then raises later: no crash, the kept array stays valid."""
    kept = {}

    def keep(x, hook):
        kept["x"] = x
        kept["copy"] = np.array(x, copy=True)

    def raiser(x, hook):
        raise KeyboardInterrupt  # BaseException subclasses too

    with pytest.raises(KeyboardInterrupt):
        model.run_with_hooks(toks, fwd_hooks=[("blocks.0.hook_resid_post", keep),
                                              ("blocks.2.hook_resid_pre", raiser)])
    np.testing.assert_array_equal(to_np(kept["x"]), kept["copy"])
    still_works(model, toks, baseline)


def test_add_hook_flag_gated_without_flag_asserts(model, toks, baseline):
    """TL: model.add_hook on a flag-gated hook point with its flag off raises AssertionError."""
    with pytest.raises(AssertionError):
        model.add_hook("blocks.0.attn.hook_result", lambda x, hook: None)
    model.reset_hooks()
    still_works(model, toks, baseline)


# ------------------------------------------------------------------------------------------
# files (run in a subprocess: a crash must not take the test session down)


_LOAD_SCRIPT = textwrap.dedent("""
    import sys, traceback
    from glassbox import HookedTransformer
    try:
        m = HookedTransformer.from_pretrained_no_processing(sys.argv[1])
        import numpy as np
        out = m(np.zeros((1, 4), dtype=np.int64))
        print("LOADED", flush=True)
    except BaseException as e:
        std = (ValueError, OSError, KeyError, NotImplementedError, RuntimeError, EOFError)
        print("EXC", type(e).__name__, "STD" if isinstance(e, std) else "NONSTD", flush=True)
        print("MSG", str(e).replace("\\n", " "), flush=True)
""")


def load_in_subprocess(path, tmp_path):
    script = tmp_path / "load.py"
    script.write_text(_LOAD_SCRIPT)
    r = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert r.returncode == 0, (f"loader crashed (exit {r.returncode}) on {path}:\n"
                               f"{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return r.stdout


def copy_folder(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".complete"))
    return dst


def expect_clean_error(out, *words):
    assert "LOADED" not in out, f"a broken checkpoint loaded without error:\n{out}"
    assert "EXC" in out, out
    exc, kind = re.search(r"EXC (\w+) (\w+)", out).groups()
    assert kind == "STD", (f"{exc} is not a ValueError/OSError/KeyError/NotImplementedError/"
                           f"RuntimeError/EOFError:\n{out}")
    msg = out.split("MSG", 1)[1] if "MSG" in out else ""
    if words:
        assert any(w.lower() in msg.lower() for w in words), f"message lacks any of {words}: {msg}"


def test_loads_ok_in_subprocess(odd_folder, tmp_path):
    """Control for the file tests below: the intact folder loads."""
    out = load_in_subprocess(odd_folder, tmp_path)
    assert "LOADED" in out, out


def test_unsupported_architecture(odd_folder, tmp_path):
    d = copy_folder(odd_folder, tmp_path / "bert")
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["BertForMaskedLM"]
    cfg["model_type"] = "bert"
    (d / "config.json").write_text(json.dumps(cfg))
    out = load_in_subprocess(d, tmp_path)
    expect_clean_error(out, "BertForMaskedLM", "bert")


def test_missing_config(odd_folder, tmp_path):
    d = copy_folder(odd_folder, tmp_path / "nocfg")
    (d / "config.json").unlink()
    out = load_in_subprocess(d, tmp_path)
    expect_clean_error(out, "config")


@pytest.mark.parametrize("frac", [0.5, 0.999])
def test_truncated_safetensors(odd_folder, tmp_path, frac):
    d = copy_folder(odd_folder, tmp_path / f"trunc{frac}")
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: int(len(data) * frac)])
    out = load_in_subprocess(d, tmp_path)
    expect_clean_error(out)


def test_truncated_header(odd_folder, tmp_path):
    d = copy_folder(odd_folder, tmp_path / "hdr")
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:20])
    out = load_in_subprocess(d, tmp_path)
    expect_clean_error(out)


def test_corrupt_header_json(odd_folder, tmp_path):
    d = copy_folder(odd_folder, tmp_path / "badjson")
    f = d / "model.safetensors"
    data = bytearray(f.read_bytes())
    n = int.from_bytes(data[:8], "little")
    data[8:8 + n] = b"{" + b"x" * (n - 1)  # same length, not JSON
    f.write_bytes(bytes(data))
    out = load_in_subprocess(d, tmp_path)
    expect_clean_error(out)


def test_header_length_beyond_file(odd_folder, tmp_path):
    d = copy_folder(odd_folder, tmp_path / "hugehdr")
    f = d / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[:8] = (2 ** 40).to_bytes(8, "little")
    f.write_bytes(bytes(data))
    out = load_in_subprocess(d, tmp_path)
    expect_clean_error(out)


def _rewrite_tensor(folder, key, fn):
    from safetensors.numpy import load_file, save_file

    f = folder / "model.safetensors"
    sd = load_file(str(f))
    sd[key] = fn(sd[key])
    save_file(sd, str(f), metadata={"format": "pt"})


def test_wrong_shape_tensor(odd_folder, tmp_path):
    d = copy_folder(odd_folder, tmp_path / "shape")
    _rewrite_tensor(d, "transformer.h.1.attn.c_attn.weight", lambda a: np.ascontiguousarray(a.T))
    out = load_in_subprocess(d, tmp_path)
    expect_clean_error(out, "c_attn", "W_Q", "shape")


def test_missing_tensor(odd_folder, tmp_path):
    from safetensors.numpy import load_file, save_file

    d = copy_folder(odd_folder, tmp_path / "missing")
    f = d / "model.safetensors"
    sd = load_file(str(f))
    del sd["transformer.h.2.mlp.c_fc.weight"]
    save_file(sd, str(f), metadata={"format": "pt"})
    out = load_in_subprocess(d, tmp_path)
    expect_clean_error(out, "c_fc", "W_in", "missing")


def test_int_dtype_tensor(odd_folder, tmp_path):
    d = copy_folder(odd_folder, tmp_path / "dtype")
    _rewrite_tensor(d, "transformer.h.0.ln_1.weight", lambda a: (a * 100).astype(np.int32))
    out = load_in_subprocess(d, tmp_path)
    expect_clean_error(out, "dtype", "int32", "I32", "ln_1")
