"""Thread control (glassbox.set_num_threads) and thread-count invariance of whole models.

Threads split rows and tiles of each output and never reduce across each other, so a forward
with 1 and with 2 threads must give *bitwise* the same logits and activations, for fp32, bf16
and GGUF-quantised weights, on every SIMD path (tolerance: exact equality). The shapes are
chosen so that every GEMM, the attention and the norms are large enough to really run on two
threads (more than 2^20 multiply-adds each)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import helpers_llama as hl
import helpers_models as hm

import glassbox
from glassbox import HookedTransformer, _C

pytestmark = pytest.mark.skipif(
    os.cpu_count() is not None and os.cpu_count() < 2 and not os.environ.get("CI"),
    reason="needs 2 CPUs to run two threads")

GPT2_MID = hm.GPT2Spec("gpt2-mid", n_layer=2, n_embd=256, n_head=4, vocab_size=1000,
                       n_positions=256, seed=7, init_std=0.05)
LLAMA_MID = hl.spec("llama-mid-8x2", hidden_size=256, num_attention_heads=8, num_key_value_heads=2,
                    intermediate_size=688, vocab_size=1000, max_position_embeddings=256, seed=7)
ISAS = [i for i in ("scalar", "avx2", "avx512") if _C.isa_supported(i)]


@pytest.fixture
def restore_threads():
    before = glassbox.get_num_threads()
    yield
    glassbox.set_num_threads(0)
    assert glassbox.get_num_threads() == before


def test_set_num_threads_api(restore_threads):
    default = glassbox.get_num_threads()
    glassbox.set_num_threads(1)
    assert glassbox.get_num_threads() == 1
    glassbox.set_num_threads(3)
    assert glassbox.get_num_threads() == 3
    for bad, err in [(-1, ValueError), (5000, ValueError), (1.5, TypeError), ("2", TypeError),
                     (True, TypeError), (None, TypeError)]:
        with pytest.raises(err, match="set_num_threads"):
            glassbox.set_num_threads(bad)
        assert glassbox.get_num_threads() == 3  # unchanged by the bad call
    glassbox.set_num_threads(0)
    assert glassbox.get_num_threads() == default
    with pytest.raises(ValueError, match="n=-2"):
        _C.set_num_threads(-2)


def _models(zoo, fixture_root):
    gpt2 = zoo.gb(GPT2_MID)
    llama_bf16 = HookedTransformer.from_pretrained(
        str(hl.save_folder(LLAMA_MID, fixture_root / "llama" / (LLAMA_MID.key() + "-bf16"),
                           dtype="bfloat16")))
    return {"gpt2-f32": gpt2, "llama-gqa-bf16": llama_bf16}


def _run(model, tokens):
    logits, cache = model.run_with_cache(tokens)
    return logits, {k: np.array(v) for k, v in cache.items()}


@pytest.mark.parametrize("isa", ISAS)
def test_one_and_two_threads_bitwise_equal(zoo, fixture_root, restore_threads, isa):
    models = _models(zoo, fixture_root)
    old = _C.isa()
    _C.set_isa(isa)
    try:
        for name, model in models.items():
            tokens = np.random.default_rng(0).integers(0, 1000, size=(2, 96))
            out = {}
            for n in (1, 2):
                glassbox.set_num_threads(n)
                out[n] = _run(model, tokens)
            (l1, c1), (l2, c2) = out[1], out[2]
            assert np.array_equal(np.asarray(l1), np.asarray(l2)), f"{name} {isa}: logits differ"
            assert c1.keys() == c2.keys()
            for k in c1:
                assert np.array_equal(c1[k], c2[k]), f"{name} {isa}: {k} differs between 1 and 2 threads"
    finally:
        _C.set_isa(old)


def test_gguf_one_and_two_threads_bitwise_equal(restore_threads):
    from model_files import smollm2_gguf_path

    model = HookedTransformer.from_pretrained(smollm2_gguf_path())
    tokens = np.random.default_rng(1).integers(0, model.cfg.d_vocab, size=(1, 40))
    out = {}
    for n in (1, 2):
        glassbox.set_num_threads(n)
        logits, cache = model.run_with_cache(tokens, names_filter=lambda k: k.endswith(("resid_post", "hook_z")))
        out[n] = (np.asarray(logits), {k: np.array(v) for k, v in cache.items()})
        out[n] += (np.asarray(model.generate(tokens[:, :8], max_new_tokens=4, do_sample=False, verbose=False)),)
    assert np.array_equal(out[1][0], out[2][0])
    for k in out[1][1]:
        assert np.array_equal(out[1][1][k], out[2][1][k]), k
    assert np.array_equal(out[1][2], out[2][2])


def test_thread_setting_is_process_wide(restore_threads):
    """Kernels called from another Python thread see the setting too (OpenMP's own
    omp_set_num_threads would only apply to the calling thread)."""
    import threading

    glassbox.set_num_threads(1)
    seen = []
    t = threading.Thread(target=lambda: seen.append(glassbox.get_num_threads()))
    t.start()
    t.join()
    assert seen == [1]


def test_omp_num_threads_is_the_default():
    code = "import glassbox; print(glassbox.get_num_threads())"
    for n in ("1", "2"):
        env = dict(os.environ, OMP_NUM_THREADS=n, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == n


def test_ceiling_probes():
    """The suite's in-process ceilings: positive rates, clear errors for bad arguments."""
    g, check = _C.probe_fma(iters=100_000, threads=1)
    assert g > 0 and np.isfinite(check)
    for isa in ISAS:
        assert _C.probe_fma(iters=10_000, threads=1, isa=isa)[0] > 0
    buf = np.ones(1 << 16, np.float32)
    bw, total = _C.probe_read(buf, 1)
    assert bw > 0 and total == pytest.approx(buf.size)
    assert _C.probe_read(buf, 2)[1] == pytest.approx(buf.size)
    with pytest.raises(ValueError, match="iters=0"):
        _C.probe_fma(iters=0)
    with pytest.raises(ValueError, match="unknown ISA"):
        _C.probe_fma(isa="neon")
    with pytest.raises(TypeError, match="float32"):
        _C.probe_read(np.ones(10, np.float64))
    with pytest.raises(ValueError, match="threads=-1"):
        _C.probe_read(buf, -1)


@pytest.fixture
def clean_back_off():
    _C._reset_busy()
    yield
    _C._reset_busy()


def _back_off_disabled() -> bool:
    return os.environ.get("GLASSBOX_ADAPTIVE_THREADS", "1").startswith("0")


@pytest.mark.skipif(_back_off_disabled(), reason="GLASSBOX_ADAPTIVE_THREADS=0")
def test_back_off_needs_three_late_regions_in_a_row(clean_back_off):
    """The busy-machine back-off (csrc/kernels/cpu.c): a region whose calling thread waited more
    than a quarter of its work (and > 0.5 ms) for the others is late; three late regions in a
    row, and only then, drop the kernels to one thread. One late region is a VM hiccup: acting
    on it held an idle AVX-512 machine at one thread (2 threads no faster than 1)."""
    late, on_time = (1_000_000, 2_000_000), (10_000_000, 10_000)
    _C._note_region(*late)
    _C._note_region(*late)
    assert not _C._machine_busy(), "two late regions must not be enough"
    _C._note_region(*on_time)  # resets the count
    _C._note_region(*late)
    _C._note_region(*late)
    assert not _C._machine_busy(), "an on-time region must reset the count"
    _C._note_region(*late)
    assert _C._machine_busy(), "three late regions in a row must back off"
    _C._reset_busy()
    for _ in range(10):
        _C._note_region(1_000, 400_000)      # waits under 0.5 ms never count
        _C._note_region(10_000_000, 2_000_000)  # nor waits under a quarter of the work
    assert not _C._machine_busy()


@pytest.mark.skipif(_back_off_disabled(), reason="GLASSBOX_ADAPTIVE_THREADS=0")
def test_back_off_keeps_results_and_ends(clean_back_off, restore_threads):
    """While backed off, a forward (on one thread) gives the same logits bitwise; the state
    is not sticky beyond its 2 s (checked through _reset_busy, not by sleeping)."""
    glassbox.set_num_threads(2)
    m = HookedTransformer.from_pretrained("glassbox/tiny-gpt2-ioi")
    toks = m.to_tokens(["When Mary and John went to the store, John gave a drink to"] * 4)
    ref = np.asarray(m(toks))
    for _ in range(3):
        _C._note_region(1_000_000, 2_000_000)
    assert _C._machine_busy()
    assert np.array_equal(np.asarray(m(toks)), ref)
    _C._reset_busy()
    assert not _C._machine_busy()


def test_note_region_rejects_negative_times(clean_back_off):
    with pytest.raises(ValueError, match="wait_ns=-1"):
        _C._note_region(0, -1)
    _C._note_region(2**63 - 1, 2**62)  # huge times: no overflow in the comparison (UBSan)
    assert not _C._machine_busy()
