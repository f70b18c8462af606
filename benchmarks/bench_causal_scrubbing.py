"""Time a causal-scrubbing evaluation (glassbox.causal_scrubbing) on a model glassbox loads.

    python benchmarks/bench_causal_scrubbing.py --model PATH [--n 256] [--pos 32] [--seeds 3]
                                                [--metric loss|logit_diff]

PATH is an HF folder or a .gguf file (e.g. the random-weight gpt2-shaped folder the tests build
under $GLASSBOX_TEST_CACHE, or SmolLM2's GGUF). The dataset is random token sequences whose
second half repeats the first (an induction-style dataset); the hypothesis is an induction-style
tree (a late head whose keys read an early head, which reads the embeddings; the token embedding
into its queries and values; an MLP reading the residual stream at the late positions):

    output <- head (L-1).1 <- [head 0.1 via k <- embeddings, embed via q+v]
           <- mlp (L-2)    <- resid_mid (L-2) at the second half

Prints the wall time of the first scrub (clean pass included) and of a second hypothesis on the
same CausalScrubber (clean pass reused), with the number of engine calls.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=256, help="dataset size = reference inputs")
    ap.add_argument("--pos", type=int, default=32, help="sequence length (even)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--metric", choices=["loss", "logit_diff"], default="loss",
                    help="loss: all positions; logit_diff: last position only (its logit_positions)")
    args = ap.parse_args()

    from glassbox import HookedTransformer
    import glassbox.causal_scrubbing as cs

    t = time.perf_counter()
    model = HookedTransformer.from_pretrained(args.model)
    print(f"loaded {args.model} in {time.perf_counter() - t:.1f} s: {model.cfg.n_layers} layers, "
          f"d_model {model.cfg.d_model}, {model.cfg.n_heads} heads"
          + (f" / {model.cfg.n_key_value_heads} kv" if model.cfg.n_key_value_heads else "")
          + f", vocab {model.cfg.d_vocab}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    rng = np.random.default_rng(0)
    half = args.pos // 2
    first = rng.integers(100, min(model.cfg.d_vocab, 5000), size=(args.n, half))
    tokens = np.concatenate([first, first], axis=1)

    L = model.cfg.n_layers
    emb = [cs.Node("hook_embed")] + ([cs.Node("hook_pos_embed")]
                                     if model.cfg.positional_embedding_type == "standard" else [])
    hyp = cs.Hypothesis([
        cs.Node(f"blocks.{L - 1}.attn.hook_z", head=1, feature=cs.token_at(-1), children=[
            cs.Node("blocks.0.attn.hook_z", head=1, via="k", children=emb),
            cs.Node("hook_embed", via=("q", "v"))]),
        cs.Node(f"blocks.{L - 2}.hook_mlp_out", children=[
            cs.Node(f"blocks.{L - 2}.hook_resid_mid", positions=slice(half, None))]),
    ])
    print(hyp.describe())
    metric = "loss" if args.metric == "loss" else cs.logit_diff_metric(tokens[:, half - 1], tokens[:, 0])
    scrubber = cs.CausalScrubber(model, tokens, metric=metric, batch_size=args.batch_size)
    t, c = time.perf_counter(), time.process_time()
    res = scrubber.scrub(hyp, seeds=args.seeds)
    total, cpu = time.perf_counter() - t, time.process_time() - c
    print(res)
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    print(f"first hypothesis: {total:.2f} s wall, {cpu:.2f} s CPU ({res.timings['clean_s']:.2f} s clean pass, "
          f"{res.timings['scrub_s']:.2f} s for {args.seeds} seeds x (hypothesis + random baseline)), "
          f"{int(res.timings['forward_calls'])} engine calls for {args.n} inputs x {args.pos} tokens")
    hyp2 = cs.Hypothesis([cs.Node(f"blocks.{L - 1}.hook_attn_out", children=[
        cs.Node(f"blocks.{L - 1}.hook_resid_pre", via="v")])])
    t, c = time.perf_counter(), time.process_time()
    res2 = scrubber.scrub(hyp2, seeds=args.seeds)
    print(f"second hypothesis on the same scrubber: {time.perf_counter() - t:.2f} s wall, "
          f"{time.process_time() - c:.2f} s CPU "
          f"({int(res2.timings['forward_calls'])} engine calls), fraction recovered "
          f"{res2.fraction_recovered:.3f}")


if __name__ == "__main__":
    main()
