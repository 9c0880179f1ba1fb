# The kernels compiled for avx512 with AVX512-BF16 (setup.py sets the flags);
# imported only on a CPU that has both.  Same loops, same rounding: only the
# vector width and the float32 -> bfloat16 instruction differ.
include "_loops.pxi"
