#!/usr/bin/env bash
# Build llama-cpp-python from its PyPI sdist into benchmarks/.venv-llamacpp, as the
# llama.cpp baseline for the benchmark suite (benchmarks/llama_cpp_worker.py runs in it).
#
# The library is compiled here, from source, with a fixed, portable CPU-only configuration:
#   * GGML_NATIVE=OFF and the x86 ISA extensions named one by one (SSE4.2, AVX, AVX2, BMI2, FMA,
#     F16C; AVX-VNNI and AVX-512 off). No -march=native: the binary is the same on every
#     machine, and on an AVX2 CPU llama.cpp runs AVX2+FMA kernels, the same ISA glassbox's
#     C core dispatches to there (glassbox has scalar/AVX2/AVX-512 paths; the benchmark
#     machine has AVX2 only). We do not use ggml's runtime variant dispatch
#     (GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS): llama-cpp-python 0.3.36 installs only the
#     plain `ggml-cpu` target, not the `ggml-cpu-<variant>` modules, and never calls
#     ggml_backend_load_all(), so that build would load no CPU backend at all.
#   * LLAMA_ISA=avx512 adds AVX-512 (F/BW/VL/VBMI/VNNI/BF16) and AVX-VNNI, for CPUs that have
#     them (compare like with like: glassbox runs its AVX-512 / VNNI kernels there).
#   * OpenMP threading on (ggml's default thread pool on Linux); no BLAS, no GPU backends.
#   * The multimodal library (mtmd/llava) is not built: the benchmark does not use it and
#     llama-cpp-python imports it lazily.
#
# Idempotent: if the venv already holds the pinned version built with these flags, nothing is
# rebuilt (FORCE=1 rebuilds). Prints the build time. Runs the compiler under `nice -n 19`
# unless NICE=0.
#
# Usage:  bash benchmarks/setup_llama_cpp.sh            (PYTHON=python3.11 to choose the interpreter)
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION="0.3.36"
# The llama.cpp commit vendored in that sdist (from its CHANGELOG: "update llama.cpp to
# ggml-org/llama.cpp@0c1e57098"). The sdist carries no git metadata, so the library itself
# reports its commit as "unknown"; we record it in the build-info file below.
LLAMA_CPP_COMMIT="0c1e57098"

CMAKE_FLAGS=(
  -DCMAKE_BUILD_TYPE=Release
  -DGGML_NATIVE=OFF
  -DGGML_CPU=ON
  -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_BMI2=ON -DGGML_FMA=ON -DGGML_F16C=ON
  -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
  -DGGML_BACKEND_DL=OFF -DGGML_CPU_ALL_VARIANTS=OFF
  -DGGML_OPENMP=ON
  -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_HIP=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF
  -DGGML_OPENCL=OFF -DGGML_SYCL=OFF -DGGML_RPC=OFF
  -DLLAVA_BUILD=OFF
  -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF
)
# LLAMA_ISA=avx512: also AVX-512 (F, BW, VL, VBMI, VNNI, BF16) and AVX-VNNI, for a CPU that has
# them (glassbox dispatches its AVX-512 and VNNI kernels there, so llama.cpp gets its own).
# AMX stays off (llama.cpp's AMX path is a separate buffer type llama-cpp-python does not set up).
if [[ "${LLAMA_ISA:-avx2}" == "avx512" ]]; then
  CMAKE_FLAGS+=(-DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON
                -DGGML_AVX512_BF16=ON)
elif [[ "${LLAMA_ISA:-avx2}" == "avx2" ]]; then
  CMAKE_FLAGS+=(-DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF
                -DGGML_AVX512_BF16=OFF)
else
  echo "LLAMA_ISA must be avx2 (default) or avx512, got '${LLAMA_ISA}'" >&2
  exit 2
fi
CMAKE_ARGS_STR="${CMAKE_FLAGS[*]}"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${HERE}/.venv-llamacpp"
INFO="${VENV}/glassbox-llamacpp-build.json"
PYTHON="${PYTHON:-python3}"
if [[ "${NICE:-1}" != "0" ]]; then NICE_CMD=(nice -n 19); else NICE_CMD=(); fi

# Already built with this version and these flags?
if [[ "${FORCE:-0}" != "1" && -x "${VENV}/bin/python" && -f "${INFO}" ]]; then
  if "${VENV}/bin/python" - "${INFO}" "${LLAMA_CPP_PYTHON_VERSION}" "${CMAKE_ARGS_STR}" <<'EOF'
import json, sys
info = json.load(open(sys.argv[1]))
import llama_cpp
ok = (llama_cpp.__version__ == sys.argv[2] and info.get("llama_cpp_python") == sys.argv[2]
      and info.get("cmake_args") == sys.argv[3])
sys.exit(0 if ok else 1)
EOF
  then
    echo "llama-cpp-python ${LLAMA_CPP_PYTHON_VERSION} already built in ${VENV} with these flags" \
         "(FORCE=1 to rebuild)."
    exit 0
  fi
fi

if [[ ! -x "${VENV}/bin/python" ]]; then
  echo "Creating ${VENV} with $("${PYTHON}" --version 2>&1)"
  "${PYTHON}" -m venv "${VENV}"
fi
"${VENV}/bin/python" -m pip install --quiet --upgrade pip

echo "Building llama-cpp-python ${LLAMA_CPP_PYTHON_VERSION} from the sdist with"
echo "  CMAKE_ARGS=${CMAKE_ARGS_STR}"
"${VENV}/bin/python" -m pip uninstall --quiet -y llama-cpp-python >/dev/null 2>&1 || true
start=$(date +%s)
CMAKE_ARGS="${CMAKE_ARGS_STR}" \
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
  "${NICE_CMD[@]}" "${VENV}/bin/python" -m pip install --no-cache-dir \
    --no-binary llama-cpp-python "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION}"
end=$(date +%s)
elapsed=$((end - start))

# Record what was built; the worker reports it with its timings.
"${VENV}/bin/python" - "${INFO}" "${LLAMA_CPP_PYTHON_VERSION}" "${LLAMA_CPP_COMMIT}" \
    "${CMAKE_ARGS_STR}" "${elapsed}" <<'EOF'
import json, platform, subprocess, sys
import llama_cpp
path, version, commit, cmake_args, elapsed = sys.argv[1:]
try:
    cc = subprocess.run(["cc", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
except Exception:
    cc = "unknown"
info = {
    "llama_cpp_python": version,
    "llama_cpp_commit": commit,
    "cmake_args": cmake_args,
    "build_seconds": int(elapsed),
    "compiler": cc,
    "python": platform.python_version(),
    "system_info": llama_cpp.llama_print_system_info().decode().strip(),
}
assert llama_cpp.__version__ == version, (llama_cpp.__version__, version)
json.dump(info, open(path, "w"), indent=2)
print(json.dumps(info, indent=2))
EOF
printf 'llama-cpp-python %s built and installed in %dm%02ds\n' \
  "${LLAMA_CPP_PYTHON_VERSION}" $((elapsed / 60)) $((elapsed % 60))
