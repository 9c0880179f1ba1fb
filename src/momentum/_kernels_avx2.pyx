# The kernels compiled for avx2 (setup.py sets the flags); imported only on
# a CPU that has it.  Same loops, same rounding: only the vector width differs.
from cpython.pycapsule cimport PyCapsule_New
from libc.stddef cimport size_t
from momentum._kernels cimport real, sgd_hyper, heavy_ball_hyper, KernelTable

include "_loops.pxi"
