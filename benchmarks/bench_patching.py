"""Activation-patching sweeps: glassbox vs TransformerLens on the same gpt2-shaped random weights.

    OMP_NUM_THREADS=1 python benchmarks/bench_patching.py [--tokens 16] [--runs 3] [--head-runs 1]
                                                         [--threads 1] [--no-heads]

Loads the real gpt2 config (12 layers, d_model 768, 12 heads, vocab 50257, random weights; the
folder is built once under $GLASSBOX_BENCH_CACHE, default /tmp/glassbox-bench, or reused from
$GLASSBOX_TEST_CACHE) in glassbox and TransformerLens (TL's weight processing in both) and times
on a 1 x --tokens prompt, metric = logit difference at the last position:

  * ``get_act_patch_resid_pre`` (12 x tokens patches) for two prompt pairs:
    - "one-token": the corrupted prompt differs from the clean one at one position (tokens - 6),
      as in IOI-style name swaps: patches before that position change nothing, glassbox reuses
      the corrupted logits for them;
    - "all-tokens": every position differs, so every patch is computed (batching and starting at
      the patched layer only);
    with glassbox's TransformerLens-style loop (``fast_path=False``) as a third contender on the
    all-tokens pair (engine speed alone vs TL; batching and layer starts vs that loop);
  * ``get_act_patch_attn_head_out_by_pos`` (12 x tokens x 12 patches), one-token pair.

Each round runs every contender once, in alternating order (A/B interleaved), and the medians
over rounds are printed with the largest difference between glassbox's and TL's results. TL runs
under ``torch.no_grad()`` with ``torch.set_num_threads(--threads)``; set OMP_NUM_THREADS to the
same value for glassbox. tqdm bars are switched off (TQDM_DISABLE=1). Not a test.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))


def build_folder() -> Path:
    import helpers_models as hm

    spec = hm.GPT2_REAL
    test_cache = os.environ.get("GLASSBOX_TEST_CACHE")
    if test_cache and (Path(test_cache) / spec.key() / ".complete").exists():
        return Path(test_cache) / spec.key()
    root = Path(os.environ.get("GLASSBOX_BENCH_CACHE", "/tmp/glassbox-bench"))
    return hm.save_gpt2_folder(spec, root / spec.key())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--runs", type=int, default=3, help="rounds for the resid_pre sweeps")
    ap.add_argument("--head-runs", type=int, default=1, help="rounds for the head sweep (TL: 1728+ forwards each)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-heads", action="store_true", help="skip the attn_head_out_by_pos sweep")
    args = ap.parse_args()

    import numpy as np
    import torch

    import helpers_models as hm
    import transformer_lens.patching as tlp

    import glassbox
    import glassbox.patching as gp
    from glassbox import HookedTransformer

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    folder = build_folder()
    tl = hm.load_tl(hm.load_hf(folder), folder, processed=True)
    gb = HookedTransformer.from_pretrained(str(folder))
    T = args.tokens
    rng = np.random.default_rng(0)
    clean = torch.tensor(rng.integers(0, 50256, size=(1, T)))
    one = clean.clone()
    one[0, T - 6] = (one[0, T - 6] + 1) % 50256
    pairs = {"one-token": one, "all-tokens": torch.tensor(rng.integers(0, 50256, size=(1, T)))}
    with torch.no_grad():
        _, tl_cache = tl.run_with_cache(clean)
    _, gb_cache = gb.run_with_cache(clean)

    def metric(logits):
        return logits[0, -1, 1000] - logits[0, -1, 2000]

    def contenders(fname, corr, with_loop):
        def tl_run():
            with torch.no_grad():
                return getattr(tlp, fname)(tl, corr, tl_cache, metric)

        out = {"TL": tl_run, "glassbox": lambda: getattr(gp, fname)(gb, corr, gb_cache, metric)}
        if with_loop:
            out["glassbox loop"] = lambda: getattr(gp, fname)(gb, corr, gb_cache, metric, fast_path=False)
        return out

    cases = [("get_act_patch_resid_pre", "one-token", False, args.runs),
             ("get_act_patch_resid_pre", "all-tokens", True, args.runs)]
    if not args.no_heads:
        cases.append(("get_act_patch_attn_head_out_by_pos", "one-token", False, args.head_runs))

    import glassbox._C as C

    print(f"glassbox {glassbox.__version__} ISA {C.isa()} OpenMP threads {C.num_threads()}; torch "
          f"{torch.__version__} threads {torch.get_num_threads()}; gpt2 shape, 1 x {T} tokens; "
          f"load average {os.getloadavg()[0]:.1f}")
    rows = []
    for fname, pair, with_loop, runs in cases:
        fns = contenders(fname, pairs[pair], with_loop)
        names = list(fns)
        times = {n: [] for n in names}
        results = {}
        for r in range(runs):
            order = names if r % 2 == 0 else names[::-1]
            for n in order:
                t0 = time.perf_counter()
                results[n] = fns[n]()
                times[n].append(time.perf_counter() - t0)
            print(f"  {fname} {pair} round {r + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in names),
                  flush=True)
        ref = results["TL"].numpy()
        diff = max(float(np.abs(np.asarray(results[n]) - ref).max()) for n in names if n != "TL")
        med = {n: statistics.median(ts) for n, ts in times.items()}
        rows.append((fname.replace("get_act_patch_", ""), pair, int(ref.size), runs, med, diff, float(np.abs(ref).max())))

    print(f"\nload average at the end {os.getloadavg()[0]:.1f}\n")
    print("| sweep | pair | patches | rounds | TL median | glassbox median | TL / glassbox | glassbox loop "
          "(fast_path=False) | max abs diff (max abs metric) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, pair, n, runs, med, diff, scale in rows:
        loop = f"{med['glassbox loop']:.2f} s" if "glassbox loop" in med else "-"
        print(f"| {name} | {pair} | {n} | {runs} | {med['TL']:.2f} s | {med['glassbox']:.2f} s | "
              f"{med['TL'] / med['glassbox']:.1f}x | {loop} | {diff:.2g} ({scale:.2g}) |")


if __name__ == "__main__":
    main()
