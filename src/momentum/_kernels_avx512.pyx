# The kernels compiled for avx512 (setup.py sets the flags); imported only on
# a CPU that has it.  Same loops, same rounding: only the vector width differs.
include "_loops.pxi"
