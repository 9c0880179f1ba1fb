# How this extension was compiled, for show_config(): compiler, flags and
# the instruction set of the portable baseline build.
cdef extern from *:
    """
    #ifndef MOMENTUM_CFLAGS
    #define MOMENTUM_CFLAGS "unknown"
    #endif
    #if defined(__clang__)
    #define MOMENTUM_COMPILER "clang " __clang_version__
    #elif defined(__GNUC__)
    #define MOMENTUM_COMPILER "gcc " __VERSION__
    #else
    #define MOMENTUM_COMPILER "unknown"
    #endif
    #if defined(__AVX512F__)
    #define MOMENTUM_BASELINE_ISA "avx512f"
    #elif defined(__AVX2__)
    #define MOMENTUM_BASELINE_ISA "avx2"
    #elif defined(__SSE2__)
    #define MOMENTUM_BASELINE_ISA "sse2"
    #else
    #define MOMENTUM_BASELINE_ISA "generic"
    #endif
    """
    const char* MOMENTUM_CFLAGS
    const char* MOMENTUM_COMPILER
    const char* MOMENTUM_BASELINE_ISA

from momentum._threads import OPENMP

BUILD = {
    "compiler": MOMENTUM_COMPILER.decode(),
    "cflags": MOMENTUM_CFLAGS.decode(),
    "openmp": OPENMP,
    "isa": MOMENTUM_BASELINE_ISA.decode(),
}
