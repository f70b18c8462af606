"""llama.cpp baseline for the benchmark suite: times prompt processing and greedy generation of a
GGUF model with llama-cpp-python, and prints ONE JSON object on stdout.

Run it with the interpreter of the venv that ``benchmarks/setup_llama_cpp.sh`` builds (it is not
meant to import glassbox, and glassbox's venv does not have llama-cpp-python)::

    benchmarks/.venv-llamacpp/bin/python benchmarks/llama_cpp_worker.py \\
        --model SmolLM2-135M-Instruct.Q4_1.gguf --threads 2 \\
        --prompt-tokens 256 --gen-tokens 64 --runs 7 --warmup 2

What is timed (``time.perf_counter`` wall clock, and ``time.process_time`` CPU time of the whole
process, i.e. summed over threads), never the model load:

* prompt processing: ``llm.reset()`` (empties the KV cache: the next ``eval`` removes every cached
  position from 0 on), then ``llm.eval(ids)`` with ``--prompt-tokens`` fixed ids, evaluated as one
  batch and one micro-batch (``n_batch = n_ubatch >= --prompt-tokens``). Only the logits of the
  last position are computed (llama.cpp's ordinary prefill) unless ``--all-logits``.
* generation: ``llm.reset()``, ``llm.eval`` of a ``--gen-prompt-tokens`` prompt (32 ids; timed
  separately and reported as ``gen_prompt_seconds``, not part of the generation time), then
  ``--gen-tokens`` decode steps, each: greedy pick (argmax of the last logits, i.e. top_k=1,
  no EOS stop) followed by ``llm.eval([token])``. So the timed part is exactly ``--gen-tokens``
  single-token forward passes plus their argmax, as llama-bench's ``tg`` test. Every run starts
  from the same state (empty cache, same prompt) and the worker checks that every run generated
  the same tokens.

Token ids are drawn with ``random.Random(--seed)`` (the generation prompt's with ``--seed + 1``)
from ``[10, min(20000, n_vocab))``: the same ids on every run and every invocation
(``token_ids()`` is importable without llama-cpp-python, so glassbox's side of the suite can feed
the same ids; the JSON also lists them). Prompt and generation runs alternate after ``--warmup``
untimed rounds of both. Peak RSS is ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at the end
(includes the mmap-ed weights pages that were touched).

Everything llama.cpp logs goes to stderr; stdout carries the JSON object only.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import random
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

ID_LOW, ID_HIGH = 10, 20000


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="GGUF file")
    p.add_argument("--threads", type=int, required=True,
                   help="n_threads and n_threads_batch (ggml's OpenMP threads)")
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--gen-prompt-tokens", type=int, default=32,
                   help="prompt evaluated (untimed for generation) before the decode steps")
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--n-ctx", type=int, default=512)
    p.add_argument("--seed", type=int, default=0, help="seed of the token ids")
    p.add_argument("--all-logits", action="store_true",
                   help="compute the logits of every prompt position (logits_all=True), "
                        "as a forward returning [batch, pos, d_vocab] logits does")
    p.add_argument("--flash-attn", action="store_true",
                   help="llama.cpp's flash-attention kernels (llama-cpp-python's default: off)")
    a = p.parse_args(argv)
    for name in ("threads", "prompt_tokens", "gen_tokens", "gen_prompt_tokens", "runs", "n_ctx"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.warmup < 0:
        p.error(f"--warmup must be >= 0, got {a.warmup}")
    if a.prompt_tokens > a.n_ctx:
        p.error(f"--prompt-tokens {a.prompt_tokens} exceeds --n-ctx {a.n_ctx}")
    if a.gen_prompt_tokens + a.gen_tokens > a.n_ctx:
        p.error(f"--gen-prompt-tokens + --gen-tokens = {a.gen_prompt_tokens + a.gen_tokens} "
                f"exceeds --n-ctx {a.n_ctx}")
    if not os.path.isfile(a.model):
        p.error(f"--model {a.model!r} is not a file")
    return a


def token_ids(n: int, seed: int, n_vocab: int) -> List[int]:
    """``n`` deterministic token ids in ``[10, min(20000, n_vocab))``."""
    rng = random.Random(seed)
    hi = min(ID_HIGH, n_vocab)
    return [rng.randrange(ID_LOW, hi) for _ in range(n)]


def versions(llama_cpp: Any) -> Dict[str, Any]:
    """llama-cpp-python's version, the vendored llama.cpp/ggml's, and the build record."""
    out: Dict[str, Any] = {"llama_cpp_python": llama_cpp.__version__}
    try:  # ggml_version/ggml_commit live in libggml-base, a dependency of libggml
        from llama_cpp import _ggml

        for name in ("ggml_version", "ggml_commit"):
            fn = getattr(_ggml.libggml, name)
            fn.restype, fn.argtypes = ctypes.c_char_p, []
            out[name] = fn().decode()
    except Exception as exc:  # pragma: no cover - depends on the build
        out["ggml_version_error"] = repr(exc)
    info = Path(sys.prefix) / "glassbox-llamacpp-build.json"
    if info.is_file():  # written by benchmarks/setup_llama_cpp.sh
        build = json.loads(info.read_text())
        out["llama_cpp_commit"] = build.get("llama_cpp_commit")
        out["build"] = {k: build.get(k) for k in ("cmake_args", "compiler", "build_seconds")}
    out["system_info"] = llama_cpp.llama_print_system_info().decode().strip()
    return out


def summary(seconds: List[float], cpu: List[float], tokens: int) -> Dict[str, Any]:
    med = statistics.median(seconds)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "median_seconds": med,
        "min_seconds": min(seconds),
        "median_cpu_seconds": statistics.median(cpu),
        "tokens": tokens,
        "tokens_per_second": tokens / med,
        "ms_per_token": 1e3 * med / tokens,
    }


def run(a: argparse.Namespace) -> Dict[str, Any]:
    import numpy as np

    import llama_cpp

    n_batch = max(a.prompt_tokens, a.gen_prompt_tokens)
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=a.model, n_ctx=a.n_ctx, n_batch=n_batch, n_ubatch=n_batch,
        n_threads=a.threads, n_threads_batch=a.threads, n_gpu_layers=0,
        use_mmap=True, use_mlock=False, logits_all=a.all_logits, flash_attn=a.flash_attn,
        verbose=False,
    )
    load_seconds = time.perf_counter() - t0
    n_vocab = llm.n_vocab()
    if llm.n_batch < a.prompt_tokens or llm.context_params.n_ubatch < a.prompt_tokens:
        raise RuntimeError(f"n_batch {llm.n_batch} / n_ubatch {llm.context_params.n_ubatch} "
                           f"< --prompt-tokens {a.prompt_tokens}: the prompt would not be one batch")

    prompt = token_ids(a.prompt_tokens, a.seed, n_vocab)
    gen_prompt = token_ids(a.gen_prompt_tokens, a.seed + 1, n_vocab)

    def last_logits() -> "np.ndarray":
        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,))

    def prompt_run() -> tuple[float, float]:
        llm.reset()
        c0, w0 = time.process_time(), time.perf_counter()
        llm.eval(prompt)
        w1, c1 = time.perf_counter(), time.process_time()
        if llm.n_tokens != a.prompt_tokens:
            raise RuntimeError(f"evaluated {llm.n_tokens} tokens, expected {a.prompt_tokens}")
        return w1 - w0, c1 - c0

    def gen_run() -> tuple[float, float, float, List[int]]:
        llm.reset()
        w0 = time.perf_counter()
        llm.eval(gen_prompt)
        wp = time.perf_counter() - w0
        out: List[int] = []
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(a.gen_tokens):
            tok = int(last_logits().argmax())  # greedy (top_k=1); EOS does not stop it
            out.append(tok)
            llm.eval([tok])
        w1, c1 = time.perf_counter(), time.process_time()
        if llm.n_tokens != a.gen_prompt_tokens + a.gen_tokens:
            raise RuntimeError(f"cache holds {llm.n_tokens} tokens, expected "
                               f"{a.gen_prompt_tokens + a.gen_tokens}")
        return w1 - w0, c1 - c0, wp, out

    for _ in range(a.warmup):
        prompt_run()
        gen_run()
    pp_wall: List[float] = []
    pp_cpu: List[float] = []
    tg_wall: List[float] = []
    tg_cpu: List[float] = []
    tg_prompt: List[float] = []
    generated: List[List[int]] = []
    for _ in range(a.runs):
        w, c = prompt_run()
        pp_wall.append(w)
        pp_cpu.append(c)
        w, c, wp, toks = gen_run()
        tg_wall.append(w)
        tg_cpu.append(c)
        tg_prompt.append(wp)
        generated.append(toks)
    if any(g != generated[0] for g in generated):
        raise RuntimeError("greedy generation differed between runs: the runs did not start "
                           "from the same state")

    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    gen = summary(tg_wall, tg_cpu, a.gen_tokens)
    gen.update({
        "prompt_tokens": a.gen_prompt_tokens,
        "prompt_token_ids": gen_prompt,
        "gen_prompt_seconds": tg_prompt,
        "generated_token_ids": generated[0],
        "identical_across_runs": True,
    })
    return {
        "engine": "llama.cpp",
        "versions": versions(llama_cpp),
        "python": platform.python_version(),
        "model": os.path.abspath(a.model),
        "model_bytes": os.path.getsize(a.model),
        "n_vocab": n_vocab,
        "threads": a.threads,
        "n_threads": a.threads,
        "n_threads_batch": a.threads,
        "n_ctx": llm.n_ctx(),
        "n_batch": llm.n_batch,
        "n_ubatch": llm.context_params.n_ubatch,
        "all_logits": a.all_logits,
        "flash_attn": a.flash_attn,
        "use_mmap": True,
        "runs": a.runs,
        "warmup": a.warmup,
        "seed": a.seed,
        "token_id_range": [ID_LOW, min(ID_HIGH, n_vocab)],
        "load_seconds": load_seconds,
        "prompt": dict(summary(pp_wall, pp_cpu, a.prompt_tokens), token_ids=prompt),
        "generation": gen,
        "peak_rss_bytes": rss_kib * 1024,
        "peak_rss_mib": rss_kib / 1024,
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
                                           "OMP_PROC_BIND") if k in os.environ},
    }


@contextlib.contextmanager
def stdout_to_stderr():
    """Point file descriptor 1 at stderr (C code included) and yield the real stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with os.fdopen(os.dup(saved), "w") as real:
            yield real
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    with stdout_to_stderr() as real_stdout:
        result = run(a)
        real_stdout.write(json.dumps(result) + "\n")
        real_stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
