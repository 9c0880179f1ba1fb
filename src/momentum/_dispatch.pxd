# The running kernel table; see _dispatch.pyx.
from momentum._kernels cimport momentum_kernel_table

cdef momentum_kernel_table TABLE
