# Which kernel build runs: the CPU's x86-64 level decides which builds can
# run, the best of them is used unless MOMENTUM_ISA or set_isa() names
# another (as NumPy's CPU dispatch does).  TABLE is the running kernel table
# of momentum.h; the capsule KERNELS hands it to other extensions, so that
# they run what momentum runs.
import importlib
import os

from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_New
from libc.stddef cimport size_t
from libc.stdint cimport uint32_t

from momentum._kernels cimport (
    MOMENTUM_ABI_VERSION, MOMENTUM_CAPSULE_NAME, MOMENTUM_KERNEL_COUNT, momentum_kernel,
    momentum_kernel_table, momentum_task)
from momentum._schedule cimport run_table
from momentum.rules import fingerprint, kernel_name, kernel_slots

cdef extern from *:
    """
    /* x86-64 micro-architecture levels: v3 has AVX2 (and F16C), v4 has
     * AVX-512; 5 is v4 with AVX512-BF16. */
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
    static int momentum_cpu_level(void) {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("x86-64-v4"))
            return __builtin_cpu_supports("avx512bf16") ? 5 : 4;
        if (__builtin_cpu_supports("x86-64-v3")) return 3;
        return 1;
    }
    #elif defined(__x86_64__)
    static int momentum_cpu_level(void) {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
            && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
            return __builtin_cpu_supports("avx512bf16") ? 5 : 4;
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
            && __builtin_cpu_supports("bmi2")) return 3;
        return 1;
    }
    #else
    static int momentum_cpu_level(void) { return 1; }
    #endif
    """
    int momentum_cpu_level() noexcept

cdef extern from *:
    """
    #ifndef MOMENTUM_BUILT_ISAS
    #define MOMENTUM_BUILT_ISAS "baseline"
    #endif
    """
    const char* MOMENTUM_BUILT_ISAS

# The kernel builds, oldest instruction set first, with the x86-64 level each
# needs.
ISAS = {"baseline": ("momentum._kernels", 1),
        "avx2": ("momentum._kernels_avx2", 3),
        "avx512": ("momentum._kernels_avx512", 4),
        "avx512bf16": ("momentum._kernels_avx512bf16", 5)}
# Which builds setup.py made (it defines MOMENTUM_BUILT_ISAS); one that was
# made but does not import is an error, not a silent skip.
BUILT_ISAS = tuple(MOMENTUM_BUILT_ISAS.decode().split(","))

# The slots' names, kept alive for TABLE.names.
cdef list _names = [kernel_name(rule, dtypes).encode() for rule, dtypes in kernel_slots()]
cdef const char* _name_pointers[MOMENTUM_KERNEL_COUNT]
cdef size_t _i
cdef extern from "momentum_rules.h":
    const char* MOMENTUM_TABLE_FINGERPRINT
if MOMENTUM_TABLE_FINGERPRINT.decode() != fingerprint() or len(_names) != MOMENTUM_KERNEL_COUNT:
    raise ImportError("momentum.rules changed since the build: rebuild the package "
                      "(pip install ., or python setup.py build_ext --inplace)")
for _i in range(MOMENTUM_KERNEL_COUNT):
    _name_pointers[_i] = _names[_i]

TABLE.abi_version = <uint32_t>MOMENTUM_ABI_VERSION
TABLE.struct_size = sizeof(momentum_kernel_table)
TABLE.task_size = sizeof(momentum_task)
TABLE.count = MOMENTUM_KERNEL_COUNT
TABLE.names = _name_pointers
TABLE.run = run_table
KERNELS = PyCapsule_New(&TABLE, MOMENTUM_CAPSULE_NAME, NULL)

_isa = None
# Every build's name as bytes, kept for the module's life: TABLE.isa points
# into one, and an extension may read it without the GIL while set_isa runs.
cdef dict _ISA_NAMES = {name: name.encode() for name in ISAS}


def available_isas():
    """The kernel builds this CPU can run and this install has, oldest first.

    Raises ImportError if a build that this install has and this CPU can run
    fails to import.
    """
    level = momentum_cpu_level()
    found = []
    for name, (module, needs) in ISAS.items():
        if needs <= level and name in BUILT_ISAS:
            try:
                importlib.import_module(module)
            except ImportError as error:
                raise ImportError(f"momentum: the {name} kernels were built but do not "
                                  f"load ({error}); reinstall momentum") from error
            found.append(name)
    return found


def set_isa(str name):
    """Run the kernels built for ``name`` ("baseline", "avx2", "avx512",
    "avx512bf16").

    Every build gives bitwise the same results; only speed differs.  Applies
    to every later call, and to other extensions using the kernel table.
    """
    global _isa
    cdef bytes isa_name
    isas = available_isas()
    if name not in isas:
        raise ValueError(f"set_isa(): {name!r} is not available here; choose from {isas}")
    capsule = importlib.import_module(ISAS[name][0]).KERNELS
    TABLE.kernels = <const momentum_kernel*>PyCapsule_GetPointer(capsule, "momentum.kernel_slots")
    isa_name = _ISA_NAMES[name]
    TABLE.isa = isa_name
    _isa = name


def get_isa():
    """The name of the kernel build in use."""
    return _isa


def _init_from_environment():
    """Honour MOMENTUM_ISA, read once at import; else the best build."""
    isa = os.environ.get("MOMENTUM_ISA", "").strip()
    isas = available_isas()
    if isa and isa not in isas:
        raise ValueError(f"MOMENTUM_ISA={isa!r} is not available here; choose from {isas}")
    set_isa(isa if isa else isas[len(isas) - 1])


_init_from_environment()
