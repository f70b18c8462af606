"""A long-lived session must survive fork() and Ctrl-C.

Fork: libgomp's thread pool does not survive fork(); a forward with 2 OpenMP threads in the
parent used to make any forward in a forked child hang forever. Now a forked child runs its
kernels on one thread (``_C.num_threads() == 1`` there) and gets bit-identical logits (the
kernels are thread-count invariant); ``multiprocessing`` with the "fork" start method works.

Ctrl-C: the engine used to look at signals only between layers (seconds on a wide layer).
Now GEMM, attention, norms and activations poll a stop flag raised by a C SIGINT handler
chained in front of Python's, so KeyboardInterrupt arrives within milliseconds (measured
below, printed with ``-s``), nothing computed after the interrupt reaches a hook or the
caller, and the model gives the same logits afterwards. Threads other than the main one, and
processes with their own SIGINT handler, are never cut short.

Every scenario runs in a child process with a deadline (a hang or a signal must not take
pytest with it).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

import glassbox._C as _C
from helpers_files import worktree_env

PRELUDE = """
import os, sys, time, signal, threading
import numpy as np
import glassbox._C as C
from glassbox import HookedTransformer, HookedTransformerConfig

def model(D=256, M=1024, L=2, V=1000, n_ctx=512, d_head=64, seed=0):
    cfg = HookedTransformerConfig(d_model=D, d_head=d_head, n_layers=L, n_ctx=n_ctx, d_vocab=V,
                                  d_mlp=M, act_fn="gelu_new", seed=seed)
    return HookedTransformer(cfg)

def tokens(P, V=1000, B=1, seed=0):
    return np.random.default_rng(seed).integers(0, V, (B, P))

def sigint_after(delay):
    sent = {}
    def fire():
        time.sleep(delay)
        sent["t"] = time.perf_counter()
        os.kill(os.getpid(), signal.SIGINT)
    th = threading.Thread(target=fire, daemon=True)
    th.start()
    return th, sent

def timed(fn, n=3):
    fn()                                   # warm-up: workspaces, page faults, ASan shadow
    best = float("inf")
    for _ in range(n):
        t = time.perf_counter(); fn(); best = min(best, time.perf_counter() - t)
    return best

def interrupt(fn, delay, what="the run", tries=8):
    # Call fn() with a SIGINT sent `delay` s after it starts; return the latency (s) from the
    # signal to the KeyboardInterrupt. A signal that lands after fn() has returned tests
    # nothing (a timing accident of a fast or loaded machine): retry with half the delay. fn()
    # returning although the signal was sent well before its end is the bug tested for.
    for _ in range(tries):
        th, sent = sigint_after(delay)
        finished = None
        try:
            fn()
            finished = time.perf_counter()
            th.join()
            time.sleep(0.3)                # the late KeyboardInterrupt is raised in here
        except KeyboardInterrupt:
            caught = time.perf_counter()
        th.join()
        if finished is None:
            return caught - sent["t"]
        if sent["t"] < finished - 0.005:
            raise SystemExit(f"{what} returned although interrupted "
                             f"{(finished - sent['t']) * 1e3:.0f} ms before its end")
        delay /= 2
    raise SystemExit(f"{what} always ended before the interrupt: machine too fast?")
"""


# under tests/run_sanitized.sh (ASan + UBSan, -O1, maybe the scalar path) everything is ~10x
# slower: smaller shapes, longer deadlines; the behaviour tested is the same
SANITIZED = bool(os.environ.get("GLASSBOX_SANITIZED"))


def _n(normal: int, sanitized: int) -> int:
    return sanitized if SANITIZED else normal


def _run(code: str, timeout: float = 300, threads: int = 1, isa: str | None = None) -> str:
    if SANITIZED:
        timeout *= 4
    env = worktree_env()
    env["OMP_NUM_THREADS"] = str(threads)
    if isa:
        env["GLASSBOX_ISA"] = isa
    try:
        proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"child did not finish in {timeout} s (hung):\n{exc.stdout}\n{exc.stderr}")
    if proc.returncode < 0:
        pytest.fail(f"child killed by {signal.Signals(-proc.returncode).name}:\n{proc.stderr[-3000:]}")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    print(proc.stdout)
    return proc.stdout


# ------------------------------------------------------------------------------------- fork
def test_forked_child_after_threaded_forward():
    out = _run("""
        m = model()
        tok = tokens(256)
        ref = m(tok)                      # 2 threads: the OpenMP pool now exists
        assert C.num_threads() == 2
        deadline = 120
        pid = os.fork()
        if pid == 0:
            try:
                ok = C.num_threads() == 1 and np.array_equal(m(tok), ref)
                pid2 = os.fork()          # a grandchild too
                if pid2 == 0:
                    os._exit(0 if np.array_equal(m(tok), ref) else 3)
                _, st2 = os.waitpid(pid2, 0)
                os._exit(0 if ok and st2 == 0 else 2)
            except BaseException:
                os._exit(4)
        t0 = time.time()
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.time() - t0 > deadline:
                os.kill(pid, signal.SIGKILL)
                raise SystemExit("forked child hung in a forward")
            time.sleep(0.05)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        assert C.num_threads() == 2 and np.array_equal(m(tok), ref)  # the parent is untouched
        print(f"child and grandchild matched in {time.time() - t0:.2f} s")
    """, threads=2)
    assert "matched" in out


def test_multiprocessing_fork_start_method():
    out = _run("""
        import multiprocessing as mp
        m = model()
        toks = [tokens(200, seed=i) for i in range(4)]
        refs = [m(t) for t in toks]

        def work(i):
            return C.num_threads(), m(toks[i])

        ctx = mp.get_context("fork")
        with ctx.Pool(2) as pool:
            res = pool.map_async(work, range(4)).get(timeout=120)
        for (nt, out), ref in zip(res, refs):
            assert nt == 1 and np.array_equal(out, ref)
        print("pool ok")
    """, threads=2)
    assert "pool ok" in out


# -------------------------------------------------------------------------------- Ctrl-C
def _latency_script(D, M, P, shots):
    return f"""
        m = model(D={D}, M={M}, L=1, n_ctx={P})
        tok = tokens({P})
        ref = m(tok)
        full = timed(lambda: m(tok))
        lat = [interrupt(lambda: m(tok), f * full, "the forward") for f in {shots!r}]
        assert np.array_equal(m(tok), ref), "the model changed after an interrupt"
        print(f"isa={{C.isa()}} forward={{full:.2f}}s latency_ms=" + ",".join(f"{{x * 1e3:.0f}}" for x in lat))
        assert max(lat) < max(0.5, 0.1 * full), lat
    """


@pytest.mark.parametrize("isa", [i for i in ("avx2",) if _C.isa_supported(i)])
def test_ctrl_c_inside_a_wide_layer(isa):
    # one layer of d_model 2048 / d_mlp 8192 on 512 tokens: ~2-5 s on one core; before,
    # KeyboardInterrupt came only after the layer (1.8-3.5 s after the signal)
    out = _run(_latency_script(2048, 8192, 512, (0.15, 0.45, 0.75)), isa=isa)
    assert "latency_ms=" in out


def test_ctrl_c_scalar_path():
    out = _run(_latency_script(512, 2048, 256, (0.3, 0.7)), isa="scalar")
    assert "isa=scalar" in out


def test_ctrl_c_during_the_unembed_is_not_a_result():
    # most of the time goes to the final [P, D] x [D, V] product, after the last layer poll:
    # the kernels stop and the run must raise, never return the half-computed logits
    V, P = _n(120000, 20000), _n(256, 128)
    out = _run(f"""
        m = model(D=512, M=512, L=1, V={V}, n_ctx=256)
        tok = tokens({P}, V={V})
        ref = m(tok)
        full = timed(lambda: m(tok))
        lat = interrupt(lambda: m(tok), 0.7 * full, "the forward (logits)")
        print(f"unembed interrupted after {{lat * 1e3:.0f}} ms")
        assert np.array_equal(m(tok), ref)
    """)
    assert "unembed interrupted" in out


def test_ctrl_c_never_hands_hooks_partial_results():
    out = _run(f"""
        m = model(D={_n(1024, 256)}, M={_n(8192, 2048)}, L=2, n_ctx=256)
        tok = tokens(256)
        ref = m(tok)
        full = timed(lambda: m(tok))
        calls, seen = [], {{}}
        def record(x, hook):
            calls.append(hook.name)
            seen[hook.name] = np.array(x)
        hooks = [("blocks.0.hook_attn_out", record), ("blocks.0.hook_mlp_out", record),
                 ("blocks.1.hook_resid_pre", record)]
        order = [h for h, _ in hooks]
        _, cache = m.run_with_cache(tok, names_filter=lambda n: n in order)
        def run():
            calls.clear(); seen.clear()
            m.run_with_hooks(tok, fwd_hooks=hooks)
        interrupt(run, 0.3 * full, "run_with_hooks")   # inside block 0's MLP products
        # the run stopped before its last hook, and every hook it reached saw finished values
        assert calls == order[:len(calls)] and len(calls) < len(order), calls
        for name in calls:
            assert np.array_equal(seen[name], np.asarray(cache[name])), f"{{name}} got partial values"
        # a hook that swallows the KeyboardInterrupt cannot make the run return a partial result
        def sleepy(x, hook):
            try:
                time.sleep(3)
            except KeyboardInterrupt:
                calls.append("swallowed")
        th, sent = sigint_after(0.2)
        try:
            m.run_with_hooks(tok, fwd_hooks=[("blocks.0.hook_resid_pre", sleepy)])
            raise SystemExit("returned although interrupted")
        except KeyboardInterrupt as exc:
            assert calls[-1] == "swallowed" and "discarded" in str(exc), (calls, exc)
        th.join()
        assert np.array_equal(m(tok), ref)
        print("hooks ok")
    """)
    assert "hooks ok" in out


def test_ctrl_c_leaves_other_threads_and_custom_handlers_alone():
    out = _run(f"""
        m = model(D={_n(512, 256)}, M={_n(4096, 1024)}, L=2, n_ctx=256)
        tok = tokens(256)
        ref = m(tok)
        full = timed(lambda: m(tok))
        # forwards in a worker thread: SIGINT goes to the main thread, the worker is not cut short
        for attempt in range(8):
            res, done = {{}}, threading.Event()
            def work():
                res["start"] = time.perf_counter()
                try:
                    res["out"] = [m(tok) for _ in range(3)]
                finally:
                    res["end"] = time.perf_counter()
                    done.set()
            worker = threading.Thread(target=work)
            interrupted_main = False
            try:                               # the interrupt may land anywhere in here
                th, sent = sigint_after(0.3 * full / (attempt + 1))
                worker.start()
                while not done.is_set():       # (Thread.join is not safe to interrupt)
                    done.wait(0.05)
                th.join()
                time.sleep(0.3)                # a late KeyboardInterrupt raises in here
            except KeyboardInterrupt:
                interrupted_main = True
            done.wait()
            worker.join()
            th.join()
            assert interrupted_main, "SIGINT did not interrupt the main thread"
            assert all(np.array_equal(o, ref) for o in res["out"])
            if res["start"] < sent["t"] < res["end"] - 0.005:
                break                          # the signal came while the worker ran
        else:
            raise SystemExit("the worker never ran when the signal came")
        # a custom handler that does not raise: the forward completes, exactly
        hits = []
        old = signal.signal(signal.SIGINT, lambda s, f: hits.append(s))
        th, sent = sigint_after(0.3 * full)
        out = m(tok)
        th.join()
        time.sleep(0.1)
        signal.signal(signal.SIGINT, old)
        assert hits == [signal.SIGINT] and np.array_equal(out, ref), hits
        # and the default handler is back in charge afterwards
        interrupt(lambda: m(tok), 0.3 * full, "the forward after the custom handler")
        print("threads and handlers ok")
    """)
    assert "threads and handlers ok" in out


def test_ctrl_c_stops_a_long_gemm_call():
    # sized to take >= 0.3 s whatever the build (plain, ASan) and the ISA
    out = _run(f"""
        n = {_n(2048, 1024)}
        B = np.ones((n, n), np.float32)
        rows = 64
        while True:
            A = np.ones((rows, n), np.float32)
            full = timed(lambda: C.gemm(A, B), n=1)
            if full >= 0.3 or rows >= 1 << 15:
                break
            rows *= 2
        ref = C.gemm(A, B)
        lat = interrupt(lambda: C.gemm(A, B), 0.3 * full, "_C.gemm")
        assert lat < max(0.5, 0.2 * full), (lat, full)
        assert np.array_equal(C.gemm(A, B), ref)
        print(f"gemm {{rows}}x{{n}}x{{n}} {{full:.2f}}s interrupted in {{lat * 1e3:.0f}} ms")
    """)
    assert "interrupted in" in out
