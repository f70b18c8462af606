"""A float32 load that cannot fit raises MemoryError before allocating (instead of the OOM
killer ending the notebook kernel), and names the way out (dtype='bfloat16')."""
from __future__ import annotations

import pytest

import helpers_llama as hl

from glassbox import HookedTransformer
from glassbox.loading import pretrained

SPEC = hl.spec("llama-guard", hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=96, vocab_size=101, seed=3)


def test_float32_load_that_cannot_fit_raises_memory_error(fixture_root, monkeypatch):
    folder = hl.save_folder(SPEC, fixture_root / "llama" / (SPEC.key() + "-bf16"), dtype="bfloat16")
    monkeypatch.setattr(pretrained, "_mem_available", lambda: 1000)
    with pytest.raises(MemoryError, match=r"as float32 needs about .* GiB but only .* available: "
                                          r"pass dtype='bfloat16'"):
        HookedTransformer.from_pretrained(str(folder))
    # kept as stored: nothing is converted, so the guard does not apply
    model = HookedTransformer.from_pretrained(str(folder), dtype="bfloat16")
    assert "bf16" in model.cfg.weight_dtype.lower() or "bfloat16" in model.cfg.weight_dtype.lower()
    monkeypatch.setattr(pretrained, "_mem_available", lambda: None)  # unknown: no guard
    HookedTransformer.from_pretrained(str(folder))


def test_mem_available_reads_meminfo():
    avail = pretrained._mem_available()
    assert avail is None or avail > 0
