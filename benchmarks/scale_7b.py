"""A 7B Llama-shaped model in bf16 on a 24 GiB machine: glassbox vs what TransformerLens does.

    python benchmarks/scale_7b.py make  [--dir DIR]     # write the checkpoint (~13.5 GB, once)
    python benchmarks/scale_7b.py run   [--dir DIR] [--tokens 128] [--gen 8]
    python benchmarks/scale_7b.py tl    [--dir DIR]     # TransformerLens on the same folder
    python benchmarks/scale_7b.py all   [--dir DIR]

``make`` writes a Llama-2-7B-shaped checkpoint (d_model 4096, 32 layers, 32 heads, d_mlp
11008, vocab 32000: 6.74 B parameters) with random bf16 weights (normal, std 0.02; norms 1) as
sharded safetensors plus config.json, one tensor in memory at a time. ``run`` loads it with
glassbox (weights memory-mapped and kept bf16), runs ``run_with_cache`` on 1 x ``--tokens``
tokens caching every ``resid_post``, then generates ``--gen`` tokens with the KV cache, and
reports times, peak RSS against the weight bytes + cache bytes, and the seconds per generated
token against the bandwidth floor (weight bytes / read bandwidth measured in the same process
by ``glassbox._C.probe_read``). ``tl`` tries TransformerLens 3.9's route (the HF model, then
``HookedTransformer`` with its weight processing) in a child process limited to 23 GiB of
address space, and reports how it ends. Default folder: $GLASSBOX_BENCH_CACHE/llama7b-bf16.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
CACHE = Path(os.environ.get("GLASSBOX_BENCH_CACHE", "/tmp/glassbox-bench"))
CFG = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=4096,
           intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
           num_hidden_layers=32, vocab_size=32000, max_position_embeddings=4096,
           rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1,
           eos_token_id=2, torch_dtype="bfloat16", hidden_act="silu")


def tensors(cfg):
    """(name, shape) of every tensor of the checkpoint, in file order."""
    d, f, V, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    kv = d // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    yield "model.embed_tokens.weight", (V, d)
    for i in range(L):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (d,)
        yield p + "self_attn.q_proj.weight", (d, d)
        yield p + "self_attn.k_proj.weight", (kv, d)
        yield p + "self_attn.v_proj.weight", (kv, d)
        yield p + "self_attn.o_proj.weight", (d, d)
        yield p + "post_attention_layernorm.weight", (d,)
        yield p + "mlp.gate_proj.weight", (f, d)
        yield p + "mlp.up_proj.weight", (f, d)
        yield p + "mlp.down_proj.weight", (d, f)
    yield "model.norm.weight", (d,)
    yield "lm_head.weight", (V, d)


def bf16_random(rng, shape, norm: bool) -> np.ndarray:
    if norm:
        x = np.ones(shape, np.float32)
    else:
        x = rng.standard_normal(shape, dtype=np.float32)
        x *= 0.02
    u = x.view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even


def make(folder: Path, shards: int = 6) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / ".complete").exists():
        print(f"{folder} exists")
        return
    rng = np.random.default_rng(0)
    items = list(tensors(CFG))
    total = sum(int(np.prod(s)) for _, s in items) * 2
    per = total / shards
    groups, cur, size = [], [], 0
    for name, shape in items:
        cur.append((name, shape))
        size += int(np.prod(shape)) * 2
        if size >= per and len(groups) < shards - 1:
            groups.append(cur)
            cur, size = [], 0
    groups.append(cur)
    index = {}
    t0 = time.perf_counter()
    for si, group in enumerate(groups):
        fname = f"model-{si + 1:05d}-of-{len(groups):05d}.safetensors"
        header, off = {}, 0
        for name, shape in group:
            n = int(np.prod(shape)) * 2
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
            index[name] = fname
        hb = json.dumps(header).encode()
        hb += b" " * (-len(hb) % 8)
        with open(folder / fname, "wb") as fh:
            fh.write(struct.pack("<Q", len(hb)))
            fh.write(hb)
            for name, shape in group:
                fh.write(bf16_random(rng, shape, name.endswith("norm.weight")).tobytes())
        print(f"  wrote {fname} ({off / 1e9:.2f} GB) at {time.perf_counter() - t0:.0f} s", flush=True)
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": index}, indent=1))
    (folder / "config.json").write_text(json.dumps(CFG, indent=1))
    (folder / ".complete").write_text("ok")
    print(f"{folder}: {total / 1e9:.2f} GB of bf16 weights in {time.perf_counter() - t0:.0f} s")


def rss() -> dict:
    out = {}
    for line in open("/proc/self/status"):
        if line.startswith(("VmRSS", "VmHWM", "RssAnon", "RssFile")):
            k, v = line.split(":")
            out[k] = int(v.split()[0]) / 1024**2  # GiB
    return out


def run(folder: Path, n_tokens: int, n_gen: int) -> dict:
    import glassbox
    from glassbox import HookedTransformer, _C

    weight_bytes = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    t0 = time.perf_counter()
    model = HookedTransformer.from_pretrained(str(folder), dtype="bfloat16")  # kept as stored
    load_s = time.perf_counter() - t0
    toks = np.random.default_rng(0).integers(3, CFG["vocab_size"], size=(1, n_tokens))
    t0 = time.perf_counter()
    logits, cache = model.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_resid_post"))
    rwc_s = time.perf_counter() - t0
    cache_bytes = sum(np.asarray(v).nbytes for v in cache.values()) + np.asarray(logits).nbytes
    after_rwc = rss()
    del cache, logits
    prompt = toks[:, :16]
    model.generate(prompt, max_new_tokens=1, do_sample=False, stop_at_eos=False, verbose=False)  # warm
    t0 = time.perf_counter()
    model.generate(prompt, max_new_tokens=n_gen, do_sample=False, stop_at_eos=False, verbose=False)
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.generate(prompt, max_new_tokens=1, do_sample=False, stop_at_eos=False, verbose=False)
    one_s = time.perf_counter() - t0  # prompt + first token: subtracted to get per-token decode
    per_token = (gen_s - one_s) / max(n_gen - 1, 1)
    buf = np.ones(1 << 28, np.float32)  # 1 GiB: far beyond the last-level cache
    bw = sorted(_C.probe_read(buf)[0] for _ in range(5))[2]
    del buf
    res = dict(weight_gb=weight_bytes / 1e9, weight_dtype=model.cfg.weight_dtype, isa=_C.isa(),
               threads=glassbox.get_num_threads(), load_s=load_s, tokens=n_tokens,
               run_with_cache_s=rwc_s, cache_gb=cache_bytes / 1e9,
               rss_after_run_with_cache_gib=after_rwc, peak_rss_gib=rss()["VmHWM"],
               peak_rss_over_weights_plus_cache=rss()["VmHWM"] * 1024**3 / (weight_bytes + cache_bytes),
               generate_tokens=n_gen, s_per_token=per_token, read_gbps=bw,
               bandwidth_floor_s_per_token=weight_bytes / (bw * 1e9),
               loadavg=os.getloadavg())
    return res


def tl_child(folder: str) -> None:
    lim = 23 * 1024**3
    resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    import torch
    from transformers import AutoModelForCausalLM

    sys.path.insert(0, str(HERE.parent / "tests"))
    import helpers_llama as hl

    t0 = time.perf_counter()
    stage = "HF AutoModelForCausalLM.from_pretrained (fp32, TransformerLens's default dtype)"
    try:
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        stage = "HookedTransformer from the HF model (TL 3.9 weight conversion + processing)"
        model = hl.load_tl(hf, processed=True)
        del hf
        stage = "run_with_cache"
        model.run_with_cache(torch.zeros(1, 128, dtype=torch.long))
        print(json.dumps(dict(ok=True, s=time.perf_counter() - t0)))
    except BaseException as exc:  # noqa: BLE001 - report how it ends, whatever it is
        print(json.dumps(dict(ok=False, stage=stage, error=f"{type(exc).__name__}: {str(exc)[:300]}",
                              s=time.perf_counter() - t0, peak_rss_gib=rss().get("VmHWM"))))


def tl(folder: Path) -> dict:
    p = subprocess.run([sys.executable, __file__, "tl-child", "--dir", str(folder)], capture_output=True,
                       text=True, timeout=7200)
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if lines:
        return json.loads(lines[-1])
    return dict(ok=False, returncode=p.returncode, stderr=p.stderr[-800:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["make", "run", "tl", "all", "tl-child"])
    ap.add_argument("--dir", default=str(CACHE / "llama7b-bf16"))
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--gen", type=int, default=8)
    a = ap.parse_args()
    folder = Path(a.dir)
    if a.what in ("make", "all"):
        make(folder)
    if a.what in ("run", "all"):
        print(json.dumps(run(folder, a.tokens, a.gen), indent=1), flush=True)
    if a.what in ("tl", "all"):
        print("TransformerLens:", json.dumps(tl(folder), indent=1))
    if a.what == "tl-child":
        tl_child(str(folder))


if __name__ == "__main__":
    main()
