"""Fuzz harness: the ``glassbox._C`` entry points and ``_C.Model`` construction / forward.

The input bytes drive a small decoder (:class:`Draw`) that picks an entry point, builds
arguments of the right kind and sizes (so calls get past the first check and reach the
kernels), then perturbs some of them: arrays of rank 0-5, dims 0-8 (or huge, as zero-stride
``as_strided`` views), dtypes float32 / float16 / float64 / int64 / int32 / uint8 / uint16 /
bool / object, non-contiguous, negative strides, unaligned, read-only; integers from 0 to 2**70,
negative, bool, float, str, None; values NaN / +-inf / denormals / huge. ``_C.Model`` gets the
config and weights of a tiny GPT-2 or LLaMA-GQA model with fields and weights replaced.

Allowed: a result, or ``ValueError`` / ``TypeError`` / ``OverflowError`` (and ``KeyError`` for
a missing weight name, ``IndexError`` for a token id out of range, which the engine raises
with the name and the value); ``MemoryError`` only when an argument asks for more than 2**28
elements (a NumPy copy of a huge broadcast view). Run:
``python tests/fuzz/fuzz_c_entry.py --atheris -max_total_time=360 tests/fuzz/corpus/c_entry``
"""
from __future__ import annotations

import sys

import numpy as np
from numpy.lib.stride_tricks import as_strided

from _common import ALLOWED, instrumented, main

with instrumented():
    import glassbox._C as C
    from glassbox import HookedTransformer, HookedTransformerConfig

NAME = "c_entry"
ALLOWED_C = ALLOWED + (TypeError, OverflowError, KeyError, IndexError)

_DTYPES = [np.float32, np.float32, np.float32, np.float16, np.float64, np.int64, np.int32,
           np.uint8, np.uint16, np.bool_, object]
_INTS = [0, 1, 2, 3, 4, 5, 7, 8, 16, 31, 32, 33, 255, 256, -1, -8, 2**31 - 1, 2**31, 2**32,
         2**62, 2**63 - 1, 2**63, 2**64, 2**70, -(2**63)]
_FLOATS = [0.0, 1.0, -1.0, 0.5, 1e-6, 1e30, -1e30, 3.4e38, float("nan"), float("inf"),
           float("-inf"), 1e-45]
_QTYPES = ["F32", "BF16", "F16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K", "Q2_K", "", "f32", None, 3]
_ACTS = ["relu", "gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "silu", "swish", "", None, 1]


class Draw:
    """Deterministic choices from the fuzz bytes (zeros once they run out)."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0
        self.huge = False  # an argument asked for > 2**28 elements

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        b = self.data[self.pos]
        self.pos += 1
        return b

    def below(self, n: int) -> int:
        return (self.byte() | self.byte() << 8) % n if n > 256 else self.byte() % n

    def chance(self, k: int) -> bool:  # probability ~ 1/k
        return self.below(k) == 0

    def pick(self, seq):
        return seq[self.below(len(seq))]

    def dim(self, typical: int) -> int:
        r = self.below(16)
        if r < 12:
            return typical
        if r < 15:
            return self.below(9)
        return self.pick([0, 1, 9, 31, 33, 64])

    def int_arg(self, good: int):
        r = self.below(24)
        if r < 20:
            return good
        if r < 22:
            return self.pick(_INTS)
        return self.pick([True, 1.5, "4", None, np.int64(good), np.float32(good)])

    def float_arg(self, good: float):
        return good if self.below(8) else self.pick(_FLOATS + ["1", None])

    def values(self, n: int) -> np.ndarray:
        kind = self.below(8)
        if kind == 0:
            return np.zeros(n)
        if kind == 1:
            return np.full(n, self.pick(_FLOATS))
        raw = bytes(self.byte() for _ in range(min(n, 64)))
        base = np.frombuffer(raw or b"\0", np.uint8).astype(np.float64) / 32.0 - 4.0
        out = np.resize(base, n)
        if kind == 2 and n:
            out[self.below(n)] = self.pick(_FLOATS)
        return out

    def array(self, shape, dtype=np.float32, ints_below: int = 0) -> np.ndarray:
        """A valid array of ``shape``/``dtype``, then maybe perturbed in layout / dtype / shape."""
        shape = tuple(int(s) for s in shape)
        if self.chance(10):  # wrong rank / dims
            shape = tuple(self.below(9) for _ in range(self.below(6)))
        if self.chance(12):
            dtype = self.pick(_DTYPES)
        n = int(np.prod(shape)) if shape else 1
        if ints_below and dtype not in (object,):
            vals = np.array([self.below(max(ints_below, 1)) for _ in range(min(n, 64))] or [0])
            vals = np.resize(vals, n)
            if n and self.chance(8):
                vals[self.below(n)] = self.pick([-1, ints_below, 2**40, -(2**62)])
        else:
            vals = self.values(n)
        with np.errstate(all="ignore"):
            arr = vals.astype(dtype).reshape(shape) if dtype is not object else \
                np.array(list(vals), dtype=object).reshape(shape)
        layout = self.below(12)
        if layout == 1 and arr.ndim >= 1:  # negative strides
            arr = arr[::-1]
        elif layout == 2 and arr.ndim >= 2:  # Fortran order
            arr = np.asfortranarray(arr)
        elif layout == 3 and arr.ndim >= 1:  # every other element of a bigger buffer
            big = np.zeros(arr.shape[:-1] + (arr.shape[-1] * 2,), dtype=arr.dtype)
            big[..., ::2] = arr
            arr = big[..., ::2]
        elif layout == 4 and arr.dtype != object and arr.nbytes:  # unaligned (odd address)
            buf = np.zeros(arr.nbytes + 1, np.uint8)[1:]
            buf[...] = arr.reshape(-1).view(np.uint8)
            arr = buf.view(arr.dtype).reshape(arr.shape)
        elif layout == 5:
            arr.flags.writeable = False
        elif layout == 6 and arr.ndim >= 1 and arr.dtype != object:  # zero-stride broadcast
            first = arr.reshape(-1)[:1] if arr.size else np.zeros(1, arr.dtype)
            strides = (0,) * arr.ndim
            big_dim = self.chance(3)
            new_shape = list(arr.shape)
            if big_dim:
                new_shape[self.below(arr.ndim)] = self.pick([2**20, 2**31, 2**40])
                self.huge = True
            arr = as_strided(first, shape=tuple(new_shape), strides=strides)
        elif layout == 7 and arr.ndim >= 2:  # transposed view
            arr = arr.swapaxes(-1, -2)
        return arr

    def maybe_none(self, make):
        return None if self.chance(4) else make()


def _gemm(d: Draw):
    M, K, N = d.dim(d.below(9)), d.dim(1 + d.below(40)), d.dim(1 + d.below(40))
    A = d.array((M, K))
    mode = d.below(5)
    kw = {}
    if mode == 0:
        B = d.array((K, N), d.pick([np.float32, np.float16, np.uint16]))
    elif mode == 1:
        B = d.array((N, K), d.pick([np.float32, np.float16, np.uint16]))
        kw["trans"] = True
    elif mode == 2:  # per-head [H, K, d]
        H = 1 + d.below(4)
        B = d.array((H, K, N))
        N = H * N
    else:  # quantised rows [N, row_bytes], trans=True
        qt = d.pick(["Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K", "BF16", "F16", "F32"])
        blk, nb = {"Q8_0": (32, 34), "Q4_0": (32, 18), "Q4_1": (32, 20), "Q4_K": (256, 144),
                   "Q6_K": (256, 210), "BF16": (1, 2), "F16": (1, 2), "F32": (1, 4)}[qt]
        Kq = blk * (1 + d.below(3))
        A = d.array((M, Kq))
        B = d.array((N, Kq // blk * nb), np.uint8, ints_below=256)
        kw.update(trans=True, dtype=d.pick([qt, qt, qt, d.pick(_QTYPES)]), K=d.int_arg(Kq))
    if d.chance(3):
        kw["bias"] = d.array((N,))
    if d.chance(4):
        kw["accumulate"] = d.array((M, N))
    if d.chance(6):
        kw["isa"] = d.pick(["scalar", "avx2", "avx512", "bogus", 1])
    if d.chance(5):
        kw["trans"] = d.pick([True, False, 2, "yes"])
    return C.gemm(A, B, **kw)


def _norm(d: Draw):
    M, D = d.dim(d.below(6)), d.dim(1 + d.below(40))
    x = d.array((M, D))
    which = d.below(3)
    if which == 0:
        return C.norm_scale(x, d.float_arg(1e-5), center=d.pick([True, False, 1, None]))
    if which == 1:
        return C.layer_norm_scale(x, d.float_arg(1e-5))
    return C.norm_apply(x, d.array((M,)), w=d.maybe_none(lambda: d.array((D,))),
                        b=d.maybe_none(lambda: d.array((D,))))


def _elementwise(d: Draw):
    shape = (d.dim(d.below(5)), d.dim(1 + d.below(20)))
    which = d.below(4)
    if which == 0:
        return C.activation(d.array(shape), d.pick(_ACTS))
    if which == 1:
        return C.gated_activation(d.array(shape), d.array(shape), d.pick(_ACTS))
    if which == 2:
        return C.add(d.array(shape), d.array(shape))
    return C.attn_softmax(d.array((d.dim(1), d.dim(2), d.dim(3), d.dim(4))))


def _rope(d: Draw):
    H, dh = d.dim(1 + d.below(4)), d.dim(2 * (1 + d.below(4)))
    rot = d.int_arg(dh if d.below(2) else 2 * d.below(dh // 2 + 1))
    M = d.dim(d.below(6))
    x = d.array((M, H * dh + d.below(3)))
    pos = d.array((M,), np.int64, ints_below=64)
    inv = d.array(((rot // 2) if isinstance(rot, int) and 0 <= rot < 64 else 1,))
    return C.rope(x, d.int_arg(H), d.int_arg(dh), rot, pos, inv, adjacent=d.pick([False, True]))


def _attention(d: Draw):
    B, P = d.dim(1 + d.below(2)), d.dim(1 + d.below(5))
    K = P + d.below(3)
    G = 1 + d.below(2)
    H = G * (1 + d.below(2))
    dh = d.dim(1 + d.below(8))
    q = d.array((B * P, H * dh))
    k = d.array((B * K, G * dh))
    v = d.array((B * K, G * dh))
    args = [d.int_arg(x) for x in (B, P, K, H, G, dh)]
    kw = {"window": d.int_arg(0 if d.below(2) else 1 + d.below(4))}
    if d.chance(3):
        kw["key_mask"] = d.array((B, K), np.int32, ints_below=2)
    which = d.below(3)
    if which == 0:
        kw.update(want_scores=d.chance(2), want_pattern=d.chance(2), want_z=not d.chance(4))
        return C.attention(q, k, v, *args, d.float_arg(max(dh, 1) ** -0.5), **kw)
    if which == 1:
        kw["in_place"] = d.chance(2)
        return C.attention_split(q, k, v, *args, d.float_arg(max(dh, 1) ** -0.5), **kw)
    pattern = d.array((B, H, P, K))
    return C.attn_apply(pattern, v, d.int_arg(G), d.int_arg(dh))


def _embed(d: Draw):
    V, D = d.dim(1 + d.below(20)), d.dim(1 + d.below(16))
    which = d.below(3)
    tokens = d.array((d.dim(d.below(6)),), np.int64, ints_below=V)
    if which == 0:
        return C.embed(d.array((V, D)), tokens)
    qt = d.pick(["Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K", "BF16", "F16", "F32"])
    blk, nb = {"Q8_0": (32, 34), "Q4_0": (32, 18), "Q4_1": (32, 20), "Q4_K": (256, 144),
               "Q6_K": (256, 210), "BF16": (1, 2), "F16": (1, 2), "F32": (1, 4)}[qt]
    Dq = blk * (1 + d.below(2)) if blk > 1 else D
    raw = d.array((V, Dq // blk * nb), np.uint8, ints_below=256)
    dtype = d.pick([qt, qt, qt, d.pick(_QTYPES)])
    if which == 1:
        return C.embed_rows(raw, dtype, tokens, d.int_arg(Dq))
    return C.dequantize(raw, dtype)


_MODELS = {}


def _parts(kind: str):
    if kind not in _MODELS:
        if kind == "gpt2":
            cfg = HookedTransformerConfig(d_model=16, d_head=4, n_heads=4, n_layers=2, n_ctx=16,
                                          d_vocab=11, act_fn="gelu_new", normalization_type="LN",
                                          seed=0)
        else:
            cfg = HookedTransformerConfig(d_model=16, d_head=4, n_heads=4, n_key_value_heads=2,
                                          n_layers=2, n_ctx=16, d_vocab=13, d_mlp=24, act_fn="silu",
                                          normalization_type="RMS", positional_embedding_type="rotary",
                                          rotary_dim=4, gated_mlp=True, seed=0)
        m = HookedTransformer(cfg)
        _MODELS[kind] = (m._engine_cfg(), m._engine_weights())
    return _MODELS[kind]


def _model(d: Draw):
    cfg, w0 = _parts(d.pick(["gpt2", "llama"]))
    cfg, w = dict(cfg), dict(w0)
    for _ in range(d.below(4)):
        key = d.pick(sorted(cfg))
        v = cfg[key]
        if isinstance(v, bool):
            cfg[key] = d.pick([not v, 2, "yes", None])
        elif isinstance(v, int):
            cfg[key] = d.pick([d.int_arg(v), v + 1, max(v - 1, 0), 0, d.pick(_INTS)])
        elif isinstance(v, float):
            cfg[key] = d.float_arg(v) if d.below(2) else d.pick(_FLOATS)
        else:
            cfg[key] = d.pick(["LN", "RMS", "none", "LNPre", "rotary", "standard", "relu", "bogus", 0])
    if d.chance(8):
        cfg.pop(d.pick(sorted(cfg)))
    for _ in range(d.below(4)):
        key = d.pick(sorted(w))
        v = w0.get(key, w[key])  # the original's shape (w[key] may already be a huge view)
        r = d.below(4)
        if r == 0:
            del w[key]
        elif isinstance(v, np.ndarray):
            w[key] = d.array(v.shape, v.dtype)
        else:
            w[key] = d.pick([None, 1.0, "x", (), ("rows",), ("rows", d.array((3, 16)), "F32", 3, 16)])
    if d.chance(6):
        w[d.pick(["bogus", "blocks.9.attn.W_Q", "embed.W_E"])] = d.array((4, 4))
    eng = C.Model(cfg, w)
    V = int(cfg.get("d_vocab", 11)) if isinstance(cfg.get("d_vocab"), int) else 11
    tokens = d.array((d.dim(1), d.dim(1 + d.below(5))), np.int64, ints_below=max(min(V, 2**20), 1))
    if d.huge:  # a zero-stride batch of 2**20+ sequences is real work (2M tokens ~ 25 s), not a bug
        return eng
    kw = {}
    if d.chance(4):
        kw["attention_mask"] = d.array(tokens.shape if tokens.ndim == 2 else (1, 3), np.int64, ints_below=2)
    if d.chance(5):
        kw["start_at_layer"] = d.pick([0, 1, 2, 3, -1])
    if d.chance(5):
        kw["stop_at_layer"] = d.pick([None, 0, 1, 2, 5, -1])
    if d.chance(6):
        kw["positions"] = d.array(tokens.shape, np.int64, ints_below=16)
    return eng.forward(tokens, **kw)


_TARGETS = [_gemm, _norm, _elementwise, _rope, _attention, _embed, _model]


def one_input(data: bytes) -> None:
    d = Draw(data)
    target = _TARGETS[d.below(len(_TARGETS))]
    try:
        target(d)
    except MemoryError:
        if not d.huge:
            raise


if __name__ == "__main__":
    main(NAME, one_input, ALLOWED_C)
