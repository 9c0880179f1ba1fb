# The kernels built for the portable x86-64 (or other) baseline.
from cpython.pycapsule cimport PyCapsule_New

include "_loops.pxi"
