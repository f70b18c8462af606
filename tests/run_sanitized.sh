#!/usr/bin/env bash
# Build glassbox._C with AddressSanitizer + UndefinedBehaviorSanitizer into a separate folder
# and run the kernel, engine and loader tests under it, once per SIMD path this CPU has
# (GLASSBOX_ISA=scalar, avx2, avx512).
#
#   bash tests/run_sanitized.sh                 # the default test set (see TESTS below)
#   bash tests/run_sanitized.sh tests/test_x.py # other tests / pytest arguments
#   OUT=/tmp/gb-san ISAS="scalar" bash tests/run_sanitized.sh
#   REUSE_BUILD=1 ISAS=scalar bash tests/run_sanitized.sh tests/test_kernel_ops.py  # keep $OUT's build
#
# The checkout is never touched: its sources are copied to $OUT/tree (default
# build/sanitized/tree), built there in place with GLASSBOX_SANITIZE=1 (setup.py: -fsanitize=
# address,undefined -O1 -g), and pytest runs from that copy. CPython is not built with ASan,
# so the ASan runtime is preloaded (LD_PRELOAD) into the interpreter and every child process
# the tests start. UBSan halts on the first report (halt_on_error=1); ASan always does.
# Leak detection is off (detect_leaks=0): CPython keeps interned objects and arenas until exit,
# which LeakSanitizer reports by the thousand. PYTHONMALLOC=malloc lets ASan see every Python
# allocation. The exit status is non-zero if any run fails or reports.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$ROOT/build/sanitized}"
PYTHON="${PYTHON:-python}"
CC="${CC:-$("$PYTHON" -c 'import sysconfig; print((sysconfig.get_config_var("CC") or "gcc").split()[0])')}"
TESTS=(tests/test_kernel_gemm.py tests/test_kernel_ops.py tests/test_kernel_quant.py tests/test_int8_activations.py
       tests/test_reliability_c.py tests/test_reliability_files.py tests/test_reliability_config.py
       tests/test_reliability_mapped.py tests/test_reliability_runtime.py
       tests/test_bad_input.py tests/test_stored_dtype.py tests/test_gguf.py)
if [ "$#" -gt 0 ]; then TESTS=("$@"); fi

if [ "${REUSE_BUILD:-0}" = 1 ] && compgen -G "$OUT/tree/glassbox/_C*.so" >/dev/null; then
  echo "== reusing the sanitized build in $OUT"
else
  echo "== sanitized build in $OUT"
  rm -rf "$OUT/tree" "$OUT/tmp"
  mkdir -p "$OUT/tree"
  cp -r "$ROOT/glassbox" "$ROOT/csrc" "$ROOT/tests" "$ROOT/setup.py" "$OUT/tree/"
  # what the rest of the suite reads (README, notebooks, docs, scripts, benchmarks), when present
  for f in pyproject.toml MANIFEST.in LICENSE README.md notebooks docs scripts benchmarks; do
    if [ -e "$ROOT/$f" ]; then cp -r "$ROOT/$f" "$OUT/tree/"; fi
  done
  rm -rf "$OUT/tree/benchmarks/.venv-llamacpp"
  find "$OUT/tree" -name "_C*.so" -delete
  find "$OUT/tree" -name "__pycache__" -prune -exec rm -rf {} +
  (cd "$OUT/tree" && GLASSBOX_SANITIZE=1 "$PYTHON" setup.py -q build_ext --inplace \
      --build-temp "$OUT/tmp" >"$OUT/build.log" 2>&1) || { cat "$OUT/build.log"; exit 1; }
fi

LIBASAN="$("$CC" -print-file-name=libasan.so)"
if [ ! -e "$LIBASAN" ]; then
  echo "libasan.so not found for $CC (Debian: apt-get install libasan8 / gcc)" >&2
  exit 1
fi
ISAS="${ISAS:-$(cd "$OUT/tree" && LD_PRELOAD="$LIBASAN" ASAN_OPTIONS=detect_leaks=0 "$PYTHON" -c '
import glassbox._C as C
print(" ".join(i for i in ("scalar", "avx2", "avx512") if C.isa_supported(i)))')}"

# pytest runs with --capture=sys so that reports written to fd 2 by the sanitizers land in the
# log (children started by the tests report through their captured stderr, which the failing
# test prints)
# libstdc++ too: ASan looks up the real __cxa_throw when it starts, and a C++ extension loaded
# later (matplotlib's ft2font, torch) that throws would otherwise hit a failed ASan CHECK
LIBSTDCXX="$("$CC" -print-file-name=libstdc++.so.6)"
if [ -e "$LIBSTDCXX" ]; then export LD_PRELOAD="$LIBASAN $LIBSTDCXX"; else export LD_PRELOAD="$LIBASAN"; fi
# max_allocation_size_mb: the fuzz harnesses' 4 GiB cap (an RLIMIT_AS cap cannot work under ASan)
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:allocator_may_return_null=1:max_allocation_size_mb=4096"
export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1"
export PYTHONMALLOC="${PYTHONMALLOC:-malloc}"  # PYTHONMALLOC=pymalloc: faster, Python objects unchecked
export GLASSBOX_SANITIZED=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
export PYTHONDONTWRITEBYTECODE=1

PATTERN="runtime error:|ERROR: AddressSanitizer|ERROR: LeakSanitizer|SUMMARY: (Address|Undefined)"
status=0
for isa in $ISAS; do
  echo "== GLASSBOX_ISA=$isa: ${TESTS[*]}"
  log="$OUT/pytest-$isa.log"
  if (cd "$OUT/tree" && GLASSBOX_ISA="$isa" "$PYTHON" -m pytest -q -p no:cacheprovider \
      --capture=sys "${TESTS[@]}") >"$log" 2>&1; then
    echo "   pytest: $(tail -n 1 "$log")"
  else
    status=1
    echo "   pytest FAILED (log: $log):"
    grep -E "^FAILED|^ERROR|passed|failed" "$log" | head -n 40 || tail -n 40 "$log"
  fi
  if grep -qE "$PATTERN" "$log"; then
    status=1
    echo "   sanitizer reports:"
    grep -E -A3 "$PATTERN" "$log" | grep -v "^ *#[0-9]" | head -n 60
  else
    echo "   no sanitizer report"
  fi
done
exit $status
