"""GEMM benchmark: glassbox._C.gemm per ISA vs numpy matmul, in GFLOP/s.

    python benchmarks/bench_gemm.py [--threads 1 2] [--layout trans plain] [--peak 130]

Shapes are M x K x N (C[M, N] = A[M, K] . B), GPT-2-small sized:
256x768x3072 (MLP in), 256x3072x768 (MLP out), 512x3072x768, 1x768x3072
(one generated token).  Layouts: "trans" is B stored [N, K] (HF / file
layout, x @ W.T), "plain" is B stored [K, N] (TransformerLens x @ W).

--quant adds GGUF block-type B (raw bytes, file layout, dequantised inside
the GEMM's packing step) against fp32 B on the selected ISA: Q4_1 at
1x576x1536 and 128x576x1536, Q4_K at 1x768x1536 and 128x768x1536 (K-quants
need K % 256 == 0, so 576 is not possible for them).

Each thread count runs in its own subprocess with OMP_NUM_THREADS and
OPENBLAS_NUM_THREADS set (OpenMP reads them once at start).  Every cell is
the median over repeats (>= 5 runs and >= 0.3 s, after one warm-up), with
%peak against --peak GFLOP/s per core (default 130, the AVX2 FMA ceiling in
the design's performance notes; a 12-accumulator FMA loop measured ~100 on
the AVX2 machines, so pass --peak 100 for that view).
Nothing here is a test: it prints numbers only.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

SHAPES = [(256, 768, 3072), (256, 3072, 768), (512, 3072, 768), (1, 768, 3072)]
# (dtype, M, K, N) for --quant; (elements, bytes) per block and the offsets
# of the f16 scale fields in a block
QUANT_SHAPES = [("Q4_1", 1, 576, 1536), ("Q4_1", 128, 576, 1536),
                ("Q4_K", 1, 768, 1536), ("Q4_K", 128, 768, 1536)]
QUANT_BLOCK = {"Q8_0": (32, 34, [0]), "Q4_0": (32, 18, [0]), "Q4_1": (32, 20, [0, 2]),
               "Q4_K": (256, 144, [0, 2]), "Q6_K": (256, 210, [208])}


def random_blocks(rng, dtype, N, K):
    """Random raw GGUF rows [N, row_bytes] with finite f16 scales."""
    import numpy as np

    be, bb, offs = QUANT_BLOCK[dtype]
    raw = rng.integers(0, 256, size=(N, K // be, bb), dtype=np.uint8)
    for off in offs:
        d = (rng.standard_normal((N, K // be)) * 0.05).astype(np.float16)
        raw[:, :, off:off + 2] = d.view(np.uint8).reshape(N, K // be, 2)
    return raw.reshape(N, -1)


def quant_rows(args, rng):
    import numpy as np
    from glassbox import _C

    rows = []
    for dtype, M, K, N in QUANT_SHAPES:
        A = rng.standard_normal((M, K), dtype=np.float32)
        W = rng.standard_normal((N, K), dtype=np.float32)
        raw = random_blocks(rng, dtype, N, K)
        flop = 2.0 * M * N * K
        for name, fn in [("f32", lambda: _C.gemm(A, W, trans=True)),
                         (dtype, lambda: _C.gemm(A, raw, trans=True, dtype=dtype))]:
            t = median_time(fn)
            rows.append(dict(shape=f"{M}x{K}x{N}", layout="quant", impl=name,
                             threads=_C.num_threads(), gflops=flop / t * 1e-9, ms=t * 1e3))
    return rows


def median_time(fn, min_runs=5, min_time=0.3, max_runs=200):
    fn()  # warm-up
    ts = []
    t_start = time.perf_counter()
    while len(ts) < min_runs or (time.perf_counter() - t_start < min_time and len(ts) < max_runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def worker(args):
    import numpy as np
    from glassbox import _C

    rng = np.random.default_rng(0)
    isas = [i for i in ("scalar", "avx2", "avx512") if _C.isa_supported(i)]
    if args.no_scalar:
        isas.remove("scalar")
    rows = []
    if args.quant_only:
        print(json.dumps(quant_rows(args, rng)))
        return
    for M, K, N in SHAPES:
        A = rng.standard_normal((M, K), dtype=np.float32)
        for layout in args.layout:
            trans = layout == "trans"
            B = rng.standard_normal((N, K) if trans else (K, N), dtype=np.float32)
            flop = 2.0 * M * N * K
            cands = {}
            for isa in isas:
                cands[isa] = (lambda isa=isa: _C.gemm(A, B, trans=trans, isa=isa))
            cands["numpy"] = (lambda: A @ B.T) if trans else (lambda: A @ B)
            for name, fn in cands.items():
                if name == "scalar" and M * N * K > 2e8:
                    t = median_time(fn, min_runs=1, min_time=0.0)
                else:
                    t = median_time(fn)
                rows.append(dict(shape=f"{M}x{K}x{N}", layout=layout, impl=name,
                                 threads=_C.num_threads() if name != "numpy" else args.threads[0],
                                 gflops=flop / t * 1e-9, ms=t * 1e3))
    if args.quant:
        rows += quant_rows(args, rng)
    print(json.dumps(rows))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--layout", nargs="+", default=["trans", "plain"], choices=["trans", "plain"])
    ap.add_argument("--peak", type=float, default=130.0, help="GFLOP/s per core for %%peak")
    ap.add_argument("--no-scalar", action="store_true", help="skip the (slow) scalar path")
    ap.add_argument("--quant", action="store_true",
                    help="also GGUF Q4_1 / Q4_K B vs fp32 B (selected ISA)")
    ap.add_argument("--quant-only", action="store_true", help="only the --quant rows")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    rows = []
    for n in args.threads:
        env = dict(os.environ, OMP_NUM_THREADS=str(n), OPENBLAS_NUM_THREADS=str(n),
                   MKL_NUM_THREADS=str(n))
        cmd = [sys.executable, __file__, "--worker", "--threads", str(n), "--layout", *args.layout]
        if args.no_scalar:
            cmd.append("--no-scalar")
        if args.quant or args.quant_only:
            cmd.append("--quant")
        if args.quant_only:
            cmd.append("--quant-only")
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        rows += json.loads(out.stdout.strip().splitlines()[-1])
    print(f"GEMM GFLOP/s (median), %peak vs {args.peak:.0f} GFLOP/s per core")
    print(f"{'shape MxKxN':>14} {'layout':>6} {'thr':>3} {'impl':>7} {'ms':>9} {'GFLOP/s':>8} {'%peak':>6}")
    for r in rows:
        peak = args.peak * r["threads"]
        print(f"{r['shape']:>14} {r['layout']:>6} {r['threads']:>3} {r['impl']:>7} "
              f"{r['ms']:>9.3f} {r['gflops']:>8.1f} {100 * r['gflops'] / peak:>5.0f}%")


if __name__ == "__main__":
    main()
