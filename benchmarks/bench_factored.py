"""FactoredMatrix on a GPT-2-small-shaped model (12 layers, 12 heads, d_model 768, random weights):
time and traced NumPy memory of ``model.OV``, ``OV.svd()``, ``OV.AB`` and
``all_composition_scores("Q")`` in the NumPy and torch array modes, against TransformerLens's
``FactoredMatrix.svd`` / ``composition_scores`` on the same factors.

    python benchmarks/bench_factored.py

tracemalloc sees NumPy allocations only: in torch mode the factors (NumPy buffers shared with
torch) are counted, torch's own intermediates are not.
"""
from __future__ import annotations

import sys
import time
import tracemalloc
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's glassbox

import torch  # noqa: E402

from glassbox import HookedTransformer, set_array_backend  # noqa: E402

CFG = dict(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=1000, n_ctx=1024,
           act_fn="gelu_new", normalization_type="LN", seed=0)


def traced(fn):
    tracemalloc.start()
    t = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return out, dt, peak


def main() -> None:
    torch.set_num_threads(1)
    model = HookedTransformer(CFG)
    for backend in ("numpy", "auto"):
        set_array_backend(backend)
        ov, dt, pk = traced(lambda: model.OV)
        print(f"[{backend}] model.OV: {dt * 1e3:.0f} ms, peak {pk:.1f} MiB, A {tuple(ov.A.shape)}")
        _, dt, pk = traced(ov.svd)
        print(f"[{backend}] OV.svd(): {dt:.2f} s, peak {pk:.1f} MiB")
        _, dt, pk = traced(lambda: model.OV.AB)
        print(f"[{backend}] OV.AB (dense): {dt:.2f} s, peak {pk:.1f} MiB")
        scores, dt, pk = traced(lambda: model.all_composition_scores("Q"))
        print(f"[{backend}] all_composition_scores('Q'): {dt:.1f} s, peak {pk:.0f} MiB")
    set_array_backend("auto")
    from transformer_lens.FactoredMatrix import FactoredMatrix as TLFactoredMatrix
    from transformer_lens.utilities import composition_scores

    ov, qk = model.OV, model.QK
    t = time.perf_counter()
    TLFactoredMatrix(ov.A, ov.B).svd()
    print(f"TransformerLens OV.svd(): {time.perf_counter() - t:.2f} s")
    t = time.perf_counter()
    ref = composition_scores(TLFactoredMatrix(ov.A, ov.B), TLFactoredMatrix(qk.A, qk.B))
    print(f"TransformerLens composition_scores(OV, QK): {time.perf_counter() - t:.1f} s")
    later = torch.arange(12)[:, None, None, None] < torch.arange(12)[None, None, :, None]
    print(f"max |glassbox - TransformerLens| of the scores: {float((scores - ref * later).abs().max()):.2g}")


if __name__ == "__main__":
    main()
