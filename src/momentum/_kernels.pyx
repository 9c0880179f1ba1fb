# The kernels built for the portable x86-64 (or other) baseline.
include "_loops.pxi"
