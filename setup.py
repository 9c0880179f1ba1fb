"""Build the momentum extension modules.

Flags are fixed by the numerical contract: ``-O3 -ffp-contract=off`` and never
``-ffast-math``/``-Ofast``/``-march=native`` by default.  Opt-in switches:

* ``MOMENTUM_NATIVE=1`` adds ``-march=native`` (a build for this CPU only);
* ``MOMENTUM_DEBUG=1`` builds with ``-O0 -g`` and turns Cython's bounds and
  wrap-around checks back on;
* ``MOMENTUM_VEC_REPORT=1`` adds ``-fopt-info-vec-optimized`` (GCC), so the
  build log shows every loop that vectorised;
* ``MOMENTUM_NO_OPENMP=1`` builds without OpenMP.

OpenMP is used when the compiler accepts ``-fopenmp``; without it the package
builds and runs single-threaded.
"""
import os
import platform
import subprocess
import sys
import sysconfig
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

# codegen.py sits beside this file, which an isolated build does not put on sys.path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import codegen  # noqa: E402

NATIVE = os.environ.get("MOMENTUM_NATIVE") == "1"
DEBUG = os.environ.get("MOMENTUM_DEBUG") == "1"


def compiler_accepts(flag: str) -> bool:
    """True when the C compiler compiles and links a trivial program with ``flag``
    (space-separated flags allowed)."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main(void){return omp_get_max_threads() < 0;}\n"
                    if flag == "-fopenmp" else "int main(void){return 0;}\n")
        cmd = cc.split() + flag.split() + [src, "-o", os.path.join(tmp, "probe")]
        try:
            return subprocess.run(cmd, capture_output=True).returncode == 0
        except OSError:
            return False


OPENMP = os.environ.get("MOMENTUM_NO_OPENMP") != "1" and compiler_accepts("-fopenmp")

# -fno-math-errno lets sqrt vectorise (it changes no result, only errno).
compile_args = ["-ffp-contract=off", "-fno-math-errno"]
# -g0: Python's own CFLAGS carry -g, and the debug information of the
# kernels' always-inlined loops was most of an install's size.
compile_args += ["-O0", "-g"] if DEBUG else ["-O3", "-g0"]
if NATIVE:
    compile_args.append("-march=native")
if os.environ.get("MOMENTUM_VEC_REPORT") == "1":
    compile_args.append("-fopt-info-vec-optimized")
link_args = []
if OPENMP:
    compile_args.append("-fopenmp")
    link_args.append("-fopenmp")

INCLUDE = os.path.join("src", "momentum", "include")

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}


def extension(name: str, isa_flags: tuple[str, ...] = ()) -> Extension:
    path = os.path.join("src", *name.split(".")) + ".pyx"
    return Extension(
        name,
        [path],
        include_dirs=[numpy.get_include(), INCLUDE, os.path.join("src", "momentum")],
        define_macros=build_macros,
        extra_compile_args=compile_args + list(isa_flags),
        extra_link_args=link_args,
    )


# The same kernels built again for newer x86-64 levels, picked at run time by
# momentum._dispatch from what the CPU reports (as NumPy's CPU dispatch does).
# Not with MOMENTUM_NATIVE: that build is already for this CPU.
ISA_MODULES = {
    "momentum._kernels_avx2": ("-march=x86-64-v3",),
    "momentum._kernels_avx512": ("-march=x86-64-v4", "-mprefer-vector-width=512"),
    # AVX-512 with the bfloat16 conversion instruction (Cooper Lake, Zen 4 on)
    "momentum._kernels_avx512bf16": ("-march=x86-64-v4", "-mavx512bf16",
                                     "-mprefer-vector-width=512"),
}
X86_64 = platform.machine().lower() in ("x86_64", "amd64")
BUILT_ISAS = ["baseline"] + [
    name.rsplit("_", 1)[1] for name, flags in ISA_MODULES.items()
    if X86_64 and not NATIVE and compiler_accepts(" ".join(flags))]

# show_config() reports these, read back from the compiled modules;
# momentum._dispatch refuses to skip a build listed here that fails to load.
build_macros = [
    ("MOMENTUM_CFLAGS", '"' + " ".join(compile_args) + '"'),
    ("MOMENTUM_BUILT_ISAS", '"' + ",".join(BUILT_ISAS) + '"'),
    ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
]
isa_extensions = [extension(f"momentum._kernels_{isa}", ISA_MODULES[f"momentum._kernels_{isa}"])
                  for isa in BUILT_ISAS[1:]]
# The bench's 16-bit ceiling loops with the hardware bfloat16 conversion, built
# with that kernel build's flags (and only where it is built).
if "avx512bf16" in BUILT_ISAS:
    isa_extensions.append(extension("momentum._probe_avx512bf16",
                                    ISA_MODULES["momentum._kernels_avx512bf16"]))


MODULES = [
    "momentum._kernels",
    "momentum._build",
    "momentum._threads",
    "momentum._schedule",
    "momentum._dispatch",
    "momentum._checks",
    "momentum._overlap",
    "momentum._batch",
    "momentum._api",
    "momentum._probe",
    "momentum.foreach",
    "momentum._tensor_facts",
    "momentum._torch_keys",
]

# Each build configuration keeps its generated C and object files in its own
# folder, so that switching a MOMENTUM_* variable never reuses another
# configuration's binaries (a plain build after a native one stays portable).
CONFIG = "-".join([
    "native" if NATIVE else "portable",
    "debug" if DEBUG else "release",
    "openmp" if OPENMP else "serial",
    *(["vecreport"] if "-fopt-info-vec-optimized" in compile_args else []),
])
BUILD_DIR = os.path.join("build", CONFIG)
# In-place (and editable) builds put every configuration's modules in the same
# place: rebuild them all when the configuration changed since the last build.
STAMP = os.path.join("src", "momentum", ".build-config")


def config_changed() -> bool:
    """True (and the stamp updated) when the last build used another CONFIG."""
    try:
        with open(STAMP) as f:
            if f.read() == CONFIG:
                return False
    except OSError:
        pass
    with open(STAMP, "w") as f:
        f.write(CONFIG)
    return True


# The kernel glue and the public functions of each rule come from the rule table.
codegen.generate()

build_options = {"build": {"build_base": BUILD_DIR}}
if config_changed():
    build_options["build_ext"] = {"force": True}

setup(
    ext_modules=cythonize(
        [extension(m) for m in MODULES] + isa_extensions,
        compiler_directives=directives,
        build_dir=os.path.join(BUILD_DIR, "cython"),
    ),
    options=build_options,
)
