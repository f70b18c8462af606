"""Forward-pass benchmark: glassbox vs TransformerLens on the same gpt2-shaped random weights.

    python benchmarks/bench_forward.py [--tokens 256] [--runs 7] [--threads 2] [--separate]

Builds (once, cached under $GLASSBOX_BENCH_CACHE or /tmp/glassbox-bench) a GPT-2 folder with the
real gpt2 config (12 layers, d_model 768, 12 heads, vocab 50257) and random weights, loads it in
glassbox (`HookedTransformer.from_pretrained`, i.e. with TL's weight processing) and in
TransformerLens (same processing, built offline), and times on 1 x N tokens:

  * glassbox forward (no hooks)       vs  TL forward (no hooks)          -> ratio TL / glassbox
  * glassbox run_with_cache (all hooks) vs glassbox forward              -> cost of caching

Timings alternate between the contenders, after warm-up, and report medians over --runs.
With --separate each contender runs in its own subprocess (no OpenMP runtimes spinning against
each other); then the two are not interleaved. Nothing here is a test: it prints numbers only.
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
sys.path.insert(0, str(HERE.parent / "tests"))


def build_folder():
    import helpers_models as hm

    root = Path(os.environ.get("GLASSBOX_BENCH_CACHE", "/tmp/glassbox-bench"))
    return hm.save_gpt2_folder(hm.GPT2_REAL, root / hm.GPT2_REAL.key())


def timed(fn, runs):
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return ts


def make_contenders(which, folder, n_tokens, threads):
    """name -> zero-arg callable running one forward."""
    import numpy as np

    rng = np.random.default_rng(0)
    toks = rng.integers(0, 50257, size=(1, n_tokens), dtype=np.int64)
    out = {}
    if "tl" in which:
        import torch
        import helpers_models as hm

        torch.set_num_threads(threads)
        hf = hm.load_hf(folder)
        tl = hm.load_tl(hf, folder, processed=True)
        del hf
        tt = torch.as_tensor(toks)

        def tl_fwd():
            with torch.inference_mode():
                tl(tt)

        out["tl_forward"] = tl_fwd
    if "gb" in which:
        from glassbox import HookedTransformer

        gb = HookedTransformer.from_pretrained(str(folder))
        out["gb_forward"] = lambda: gb(toks)
        out["gb_run_with_cache"] = lambda: gb.run_with_cache(toks)
    return out


def measure(which, folder, n_tokens, runs, threads, warmup=2):
    fns = make_contenders(which, folder, n_tokens, threads)
    for f in fns.values():
        for _ in range(warmup):
            f()
    times = {k: [] for k in fns}
    for _ in range(runs):  # alternate: one run of each per round
        for k, f in fns.items():
            times[k] += timed(f, 1)
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (and OMP_NUM_THREADS)")
    ap.add_argument("--separate", action="store_true",
                    help="time TL and glassbox in separate subprocesses")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    folder = build_folder()
    if args.child:
        t = measure(args.child.split(","), folder, args.tokens, args.runs, args.threads)
        print("RESULT " + json.dumps(t))
        return

    if args.separate:
        times = {}
        for which in ["gb", "tl"]:
            r = subprocess.run([sys.executable, __file__, "--child", which, "--tokens",
                                str(args.tokens), "--runs", str(args.runs), "--threads",
                                str(args.threads)], capture_output=True, text=True, check=True)
            line = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")][-1]
            times.update(json.loads(line[len("RESULT "):]))
    else:
        times = measure(["gb", "tl"], folder, args.tokens, args.runs, args.threads)

    import glassbox._C as C

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"gpt2-shaped random weights, 1 x {args.tokens} tokens, {args.runs} runs (median), "
          f"torch threads {args.threads}, glassbox ISA {C.isa()}, OpenMP threads {C.num_threads()}, "
          f"{'separate processes' if args.separate else 'same process, alternating'}")
    for k in ["gb_forward", "tl_forward", "gb_run_with_cache"]:
        v = times[k]
        print(f"  {k:<20} median {med[k] * 1e3:8.1f} ms   min {min(v) * 1e3:8.1f} ms   "
              f"max {max(v) * 1e3:8.1f} ms")
    mins = {k: min(v) for k, v in times.items()}
    print(f"  TL forward / glassbox forward          = {med['tl_forward'] / med['gb_forward']:.2f}x"
          f"   (ratio of minimums {mins['tl_forward'] / mins['gb_forward']:.2f}x)")
    print(f"  glassbox run_with_cache / its forward   = "
          f"{med['gb_run_with_cache'] / med['gb_forward']:.2f}x")


if __name__ == "__main__":
    main()
