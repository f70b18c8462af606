"""Build script for the glassbox C extension (glassbox._C).

The extension is plain C11. OpenMP is used when the compiler accepts
-fopenmp (a serial build otherwise). No -march flags: SIMD kernels are compiled
per function with target attributes and chosen at run time from CPU features.
"""
import os
import shutil
import subprocess
import sys
import tempfile
from glob import glob

import numpy
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _compiler_accepts(compiler_cmd, flags):
    """True if `compiler_cmd` compiles and links a tiny OpenMP program with `flags`."""
    src = "#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "t.c")
        with open(path, "w") as fh:
            fh.write(src)
        try:
            res = subprocess.run(
                [compiler_cmd, path, "-o", os.path.join(tmp, "t")] + flags,
                capture_output=True,
            )
        except OSError:
            return False
        return res.returncode == 0


class BuildExt(build_ext):
    def build_extensions(self):
        cc = self.compiler.compiler_so[0] if hasattr(self.compiler, "compiler_so") else "cc"
        use_omp = os.environ.get("GLASSBOX_NO_OPENMP", "") == "" and _compiler_accepts(
            cc, ["-fopenmp"]
        )
        for ext in self.extensions:
            if use_omp:
                ext.extra_compile_args.append("-fopenmp")
                ext.extra_link_args.append("-fopenmp")
            else:
                sys.stderr.write("glassbox: building without OpenMP (serial kernels)\n")
        super().build_extensions()


debug = os.environ.get("GLASSBOX_DEBUG", "") != ""
compile_args = ["-std=c11", "-O0" if debug else "-O3", "-g" if debug else "-g0",
                "-Wall", "-Wextra", "-Wno-unused-parameter", "-fno-strict-aliasing"]
link_args = []
# GLASSBOX_SANITIZE=1 builds with AddressSanitizer + UndefinedBehaviorSanitizer (or give the
# -fsanitize= list yourself, e.g. GLASSBOX_SANITIZE=undefined). The interpreter is not
# instrumented, so the ASan runtime must be preloaded: tests/run_sanitized.sh does it all
# (separate build folder, LD_PRELOAD, options) -- see docs/reliability.md.
sanitize = os.environ.get("GLASSBOX_SANITIZE", "")
if sanitize:
    if sanitize == "1":
        sanitize = "address,undefined"
    flags = ["-fsanitize=" + sanitize, "-fno-omit-frame-pointer", "-g"]
    compile_args += flags + ([] if debug else ["-O1"])
    link_args += flags

sources = sorted(glob("csrc/*.c") + glob("csrc/kernels/*.c"))

setup(
    ext_modules=[
        Extension(
            "glassbox._C",
            sources=sources,
            depends=sorted(glob("csrc/*.h") + glob("csrc/kernels/*.h")),  # rebuild on header edits
            include_dirs=[numpy.get_include(), "csrc", "csrc/kernels"],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_20_API_VERSION")],
            extra_compile_args=compile_args,
            extra_link_args=link_args,
        )
    ],
    cmdclass={"build_ext": BuildExt},
)
