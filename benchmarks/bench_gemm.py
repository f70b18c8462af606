"""GEMM benchmark: glassbox._C.gemm per ISA vs numpy matmul, in GFLOP/s.

    python benchmarks/bench_gemm.py [--threads 1 2] [--layout trans plain] [--peak 130]

Shapes are M x K x N (C[M, N] = A[M, K] . B), GPT-2-small sized:
256x768x3072 (MLP in), 256x3072x768 (MLP out), 512x3072x768, 1x768x3072
(one generated token).  Layouts: "trans" is B stored [N, K] (HF / file
layout, x @ W.T), "plain" is B stored [K, N] (TransformerLens x @ W).

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
    print(json.dumps(rows))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--layout", nargs="+", default=["trans", "plain"], choices=["trans", "plain"])
    ap.add_argument("--peak", type=float, default=130.0, help="GFLOP/s per core for %%peak")
    ap.add_argument("--no-scalar", action="store_true", help="skip the (slow) scalar path")
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
