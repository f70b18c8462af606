"""Shared driver of the fuzz harnesses in ``tests/fuzz/``.

Every harness module defines ``one_input(data: bytes) -> None`` (it may raise only the
exception classes of :data:`ALLOWED` or the module's own ``ALLOWED``) and calls :func:`main`.
:func:`main` runs it

* under atheris / libFuzzer (coverage-guided, when ``atheris`` is installed and ``--atheris`` is
  given; every other argument goes to libFuzzer: ``-max_total_time=360 -rss_limit_mb=4096
  -timeout=10 corpus_dir``), or
* under a plain random-mutation driver of our own (``--random N --seed S``): the seed corpus,
  then ``N`` byte-level mutations of it, deterministic for a seed. The smoke test uses this.

What counts as a finding: an exception that is not in the harness's allowed classes (it
propagates: libFuzzer reports it as a crash with its traceback, the plain driver exits 1 and
prints the input), a crash of the process (signal), a hang (libFuzzer ``-timeout``), or an
allocation beyond the address-space limit set here (``RLIMIT_AS``, 4 GiB by default: a
``MemoryError`` is a finding unless the harness allows it for inputs that ask for that much).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import resource
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Callable, List, Sequence, Tuple, Type

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
#: the glassbox tree to fuzz: this repository, or $GLASSBOX_FUZZ_ROOT (another worktree)
ROOT = Path(os.environ.get("GLASSBOX_FUZZ_ROOT") or HERE.parents[1]).resolve()
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: exceptions every harness accepts: ValueError and its subclasses (SafetensorsError,
#: json.JSONDecodeError, UnicodeDecodeError, ...).
ALLOWED: Tuple[Type[BaseException], ...] = (ValueError,)

_WORKDIR = None


def instrumented():
    """Context manager for the harness's glassbox imports: atheris instruments them (coverage of
    glassbox's Python code) when run with ``--atheris``; a no-op otherwise."""
    if "--atheris" in sys.argv:
        import atheris

        return atheris.instrument_imports(include=["glassbox"])
    return contextlib.nullcontext()


def limit_memory(gib: float = 4.0) -> None:
    """Cap this process's address space (a huge allocation becomes a MemoryError).

    Not under AddressSanitizer (tests/run_sanitized.sh preloads it): ASan reserves terabytes of
    address space for its shadow memory, so any cap kills it at start; there the cap per
    allocation is ASan's own (``max_allocation_size_mb`` in ``ASAN_OPTIONS``, set by that
    script; with ``allocator_may_return_null=1`` a bigger request is a MemoryError)."""
    if "libasan" in os.environ.get("LD_PRELOAD", ""):
        return
    limit = int(gib * 2**30)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY and hard < limit:
        limit = hard
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def workdir() -> str:
    """A private temporary folder for this fuzz process (removed at exit)."""
    global _WORKDIR
    if _WORKDIR is None:
        _WORKDIR = tempfile.TemporaryDirectory(prefix="glassbox-fuzz-")
    return _WORKDIR.name


def write_input(name: str, data: bytes) -> str:
    """Write ``data`` to ``<workdir>/<name>`` atomically (a new inode each time, so a mapping of
    the previous input that is still alive never sees its file shrink) and return the path."""
    path = os.path.join(workdir(), name)
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
    return path


def check(one_input: Callable[[bytes], None], allowed: Sequence[Type[BaseException]], data: bytes) -> None:
    """Run one input; swallow only the allowed exception classes."""
    try:
        one_input(data)
    except tuple(allowed):
        pass


# ------------------------------------------------------------------------ plain driver
def corpus_files(name: str) -> List[Path]:
    folder = CORPUS / name
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


_INTERESTING = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00\x00\x00\x80", b"\xff\xff\xff\xff",
                b"\xff\xff\xff\xff\xff\xff\xff\x7f", b"\x00\x00\x00\x00\x00\x00\x00\x80",
                b"0", b"-1", b"1e999", b"NaN", b"null", b"[]", b"{}", b'"', b",", b"9" * 30]


def mutate(rng: random.Random, data: bytes, pool: Sequence[bytes]) -> bytes:
    """One random mutation of ``data`` (1-4 stacked edits: bit flips, byte sets, inserts,
    deletes, duplicated chunks, interesting integers / tokens, splices from another seed)."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        n = len(buf)
        if op == 0 and n:
            i = rng.randrange(n)
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            buf[rng.randrange(n)] = rng.randrange(256)
        elif op == 2:
            i = rng.randint(0, n)
            buf[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 3 and n:
            i = rng.randrange(n)
            del buf[i:i + rng.randint(1, min(64, n - i))]
        elif op == 4 and n:
            i = rng.randrange(n)
            chunk = buf[i:i + rng.randint(1, 32)]
            j = rng.randint(0, n)
            buf[j:j] = chunk
        elif op == 5:
            tok = rng.choice(_INTERESTING)
            i = rng.randint(0, n)
            if rng.random() < 0.5:
                buf[i:i + len(tok)] = tok
            else:
                buf[i:i] = tok
        elif op == 6 and n:
            buf = buf[: rng.randint(0, n)]  # truncate
        elif op == 7 and pool:
            other = rng.choice(pool)
            if other:
                i, j = rng.randint(0, n), rng.randrange(len(other))
                buf = buf[:i] + other[j:j + rng.randint(1, 256)]
    return bytes(buf)


def random_inputs(name: str, n: int, seed: int) -> List[Tuple[str, bytes]]:
    """The seed corpus of harness ``name`` followed by ``n`` deterministic mutations of it."""
    seeds = [(p.name, p.read_bytes()) for p in corpus_files(name)]
    out = list(seeds)
    rng = random.Random(seed)
    pool = [d for _, d in seeds] or [b""]
    for k in range(n):
        base = rng.choice(pool)
        out.append((f"mutation-{k}", mutate(rng, base, pool)))
    return out


def main(name: str, one_input: Callable[[bytes], None],
         allowed: Sequence[Type[BaseException]] = ALLOWED) -> None:
    """Command line of a harness (see the module docstring)."""
    argv = sys.argv[1:]
    if "--atheris" in argv:
        argv.remove("--atheris")
        import atheris

        limit_memory(float(os.environ.get("GLASSBOX_FUZZ_GIB", "4")))
        atheris.Setup([sys.argv[0], *argv], lambda data: check(one_input, allowed, data))
        atheris.Fuzz()
        return
    ap = argparse.ArgumentParser(description=f"fuzz harness {name} (plain random-mutation driver)")
    ap.add_argument("--random", type=int, default=200, help="mutations after the corpus")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gib", type=float, default=4.0, help="address-space limit (GiB)")
    ap.add_argument("--stats", action="store_true", help="print how many inputs ended how")
    ap.add_argument("inputs", nargs="*", help="run these files only (e.g. a crash reproducer)")
    args = ap.parse_args(argv)
    limit_memory(args.gib)
    if args.inputs:
        cases = [(p, Path(p).read_bytes()) for p in args.inputs]
    else:
        cases = random_inputs(name, args.random, args.seed)
    outcomes: dict = {}
    for label, data in cases:
        try:
            try:
                one_input(data)
                outcomes["ok"] = outcomes.get("ok", 0) + 1
            except tuple(allowed) as exc:
                key = type(exc).__name__
                outcomes[key] = outcomes.get(key, 0) + 1
                if args.stats and os.environ.get("GLASSBOX_FUZZ_VERBOSE"):
                    print(f"  {label}: {key}: {str(exc)[:160]}")
        except BaseException:
            digest = hashlib.sha1(data).hexdigest()
            keep = os.environ.get("GLASSBOX_FUZZ_CRASH_DIR") or os.path.join(
                tempfile.gettempdir(), "glassbox-fuzz-crashes")
            os.makedirs(keep, exist_ok=True)
            crash = os.path.join(keep, f"{name}-crash-{digest}")
            Path(crash).write_bytes(data)
            print(f"FINDING in {name} on input {label} ({len(data)} bytes, saved to {crash}):",
                  file=sys.stderr)
            traceback.print_exc()
            sys.exit(1)
    print(f"{name}: {len(cases)} inputs, 0 findings")
    if args.stats:
        print("  outcomes:", ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
