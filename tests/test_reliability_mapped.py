"""Weights memory-mapped from files that change after loading (glassbox.loading.mapped).

A bf16 safetensors or GGUF model reads its matrices straight from a copy-on-write mapping of the
file. Truncating the file afterwards would make the next forward die with SIGBUS, overwriting it
would silently change the logits. Each scenario runs in a child process (a SIGBUS must not take
pytest down) and checks that the child survives and that:

* truncation or an in-place overwrite make the next run, and reading a stored weight
  (``model.blocks[0].mlp.W_in``), raise ``WeightFileChangedError`` naming the file;
* replacing the path with a new file (atomic save), renaming or deleting it changes nothing: the
  model keeps the inode it mapped and its logits stay bit-identical;
* ``copy_weights=True`` keeps the model independent of its file (logits unchanged after the
  file is truncated and overwritten);
* float32 loads keep no mapping (weights are copied into the model's own arrays).
"""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from helpers_files import GGML_Q8_0, worktree_env, write_llama_folder, write_llama_gguf

PRELUDE = """
import os, sys, time
import numpy as np
from glassbox import HookedTransformer
from glassbox.loading.mapped import WeightFileChangedError, loaded_files_unchanged

def load(path, **kw):
    return HookedTransformer.from_pretrained(path, **kw)

def expect_changed(model, path, what):
    try:
        model(TOK)
    except WeightFileChangedError as exc:
        assert path in str(exc) and what in str(exc), str(exc)
        assert "copy_weights=True" in str(exc)
    else:
        raise AssertionError("forward ran on a changed file")
    try:
        model.blocks[0].mlp.W_in  # materialising a stored weight reads the mapping too
    except WeightFileChangedError:
        pass
    else:
        raise AssertionError("W_in was read from a changed file")

TOK = np.array([[1, 5, 7, 2, 9, 3]])
"""


def _run(code: str, timeout: float = 240) -> str:
    proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], env=worktree_env(),
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode < 0:
        pytest.fail(f"child killed by {signal.Signals(-proc.returncode).name}:\n{proc.stderr[-3000:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture()
def st_path(tmp_path):
    return str(write_llama_folder(tmp_path / "bf16") / "model.safetensors")


@pytest.fixture()
def gguf_path(tmp_path):
    return str(write_llama_gguf(tmp_path / "tiny.gguf", qtype=GGML_Q8_0))


def _model_arg(kind: str, st_path: str, gguf_path: str):
    """(path of the mapped file, expression loading the model)."""
    if kind == "safetensors":
        return st_path, f"load({str(st_path.rsplit('/', 1)[0])!r}, dtype='bfloat16')"
    return gguf_path, f"load({gguf_path!r})"


@pytest.mark.parametrize("kind", ["safetensors", "gguf"])
def test_truncated_file_raises_instead_of_sigbus(kind, st_path, gguf_path):
    path, load = _model_arg(kind, st_path, gguf_path)
    out = _run(f"""
        m = {load}
        ref = m(TOK)
        os.truncate({path!r}, 4096)
        expect_changed(m, {path!r}, "truncated")
        expect_changed(m, {path!r}, "truncated")  # still refused, still alive
        print("ok")
    """)
    assert out.strip().endswith("ok")


@pytest.mark.parametrize("kind", ["safetensors", "gguf"])
def test_overwritten_file_raises_instead_of_changing_logits(kind, st_path, gguf_path):
    path, load = _model_arg(kind, st_path, gguf_path)
    out = _run(f"""
        m = {load}
        ref = m(TOK)
        size = os.path.getsize({path!r})
        with open({path!r}, "r+b") as fh:   # same size, same inode, new bytes in the data
            fh.seek(size // 2)
            fh.write(os.urandom(size // 4))
        expect_changed(m, {path!r}, "modified")
        print("ok")
    """)
    assert out.strip().endswith("ok")


def test_renamed_file_keeps_working(st_path):
    # renaming changes the inode's ctime but not a byte of it: no error
    out = _run(f"""
        m = load({st_path.rsplit('/', 1)[0]!r}, dtype="bfloat16")
        ref = m(TOK)
        os.rename({st_path!r}, {st_path!r} + ".moved")
        np.testing.assert_array_equal(m(TOK), ref)
        print("ok")
    """)
    assert out.strip().endswith("ok")


@pytest.mark.parametrize("kind", ["safetensors", "gguf"])
def test_replaced_or_deleted_path_keeps_the_loaded_weights(kind, st_path, gguf_path):
    path, load = _model_arg(kind, st_path, gguf_path)
    out = _run(f"""
        m = {load}
        ref = m(TOK)
        tmp = {path!r} + ".new"
        with open(tmp, "wb") as fh:
            fh.write(os.urandom(1000))
        os.replace(tmp, {path!r})       # atomic save of another file at the same path
        np.testing.assert_array_equal(m(TOK), ref)
        os.remove({path!r})
        np.testing.assert_array_equal(m(TOK), ref)
        print("ok")
    """)
    assert out.strip().endswith("ok")


@pytest.mark.parametrize("kind", ["safetensors", "gguf"])
def test_copy_weights_makes_the_model_independent_of_its_file(kind, st_path, gguf_path):
    path, load = _model_arg(kind, st_path, gguf_path)
    load_copy = load[:-1] + ", copy_weights=True)"
    out = _run(f"""
        from glassbox.loading.mapped import mapped_files
        mapped = {load}
        ref = mapped(TOK)
        m = {load_copy}
        assert mapped_files(m._state_dict_np().values()) == [], "copy_weights left a mapping"
        assert m.has_stored_weights  # still in the stored dtype, only in RAM
        np.testing.assert_array_equal(m(TOK), ref)
        W_Q = m.blocks[0].attn.W_Q
        size = os.path.getsize({path!r})
        with open({path!r}, "r+b") as fh:
            fh.seek(size // 3)
            fh.write(os.urandom(size // 3))
        os.truncate({path!r}, 100)
        np.testing.assert_array_equal(m(TOK), ref)
        np.testing.assert_array_equal(m.blocks[0].attn.W_Q, W_Q)
        print("ok")
    """)
    assert out.strip().endswith("ok")


def test_float32_load_keeps_no_mapping(tmp_path):
    folder = write_llama_folder(tmp_path / "f32", dtype="F32")
    out = _run(f"""
        from glassbox.loading.mapped import mapped_files
        m = load({str(folder)!r})
        ref = m(TOK)
        assert mapped_files(m._state_dict_np().values()) == []
        os.truncate({str(folder / 'model.safetensors')!r}, 10)
        np.testing.assert_array_equal(m(TOK), ref)
        print("ok")
    """)
    assert out.strip().endswith("ok")


def test_check_is_cheap_and_follows_weight_replacement(st_path, tmp_path):
    other = write_llama_folder(tmp_path / "other", seed=1)
    out = _run(f"""
        from glassbox.loading.pretrained import load_pretrained_parts
        m = HookedTransformer.from_pretrained_no_processing({st_path.rsplit('/', 1)[0]!r}, dtype="bfloat16")
        m(TOK)
        t = time.perf_counter()
        for _ in range(2000):
            loaded_files_unchanged(m)
        per_call = (time.perf_counter() - t) / 2000
        assert per_call < 200e-6, per_call
        # new weights from another file: the check follows them (old file no longer matters)
        parts = load_pretrained_parts({str(other)!r}, dtype="bfloat16")
        m.load_state_dict(parts.state_dict)
        os.truncate({st_path!r}, 10)
        m(TOK)
        os.truncate({str(other / 'model.safetensors')!r}, 10)
        expect_changed(m, {str(other / 'model.safetensors')!r}, "truncated")
        print(f"ok {{per_call * 1e6:.1f}} us")
    """)
    assert "ok" in out
