# The 16-bit ceiling loops (_probe16.pxi) built for AVX-512 with the bfloat16
# conversion instructions (setup.py builds it only when the compiler accepts
# -mavx512bf16; the bench runs it only where momentum._dispatch lists the
# avx512bf16 kernels), and the all-16-bit loop whose rounding is
# vcvtneps2bf16: the ceiling with the hardware conversion.
include "_probe16.pxi"

cdef extern from "_probe16.h" nogil:
    void pb_sgd_hw(void* p, const void* g, void* b, float a, size_t n, int nthreads)


def time_sgd16_hw(p, g, b, Py_ssize_t repeat, int nthreads=1):
    """Seconds for ``repeat`` passes of ``p = p - a*b; b = g + b`` on 16-bit
    arrays, rounded by vcvtneps2bf16 (10 bytes per element)."""
    cdef Py_ssize_t r, n = p.size
    cdef void* pp = <void*>_address(p, "p", n, 2)
    cdef const void* gp = <const void*>_address(g, "g", n, 2)
    cdef void* bp = <void*>_address(b, "b", n, 2)
    t0 = perf_counter()
    with nogil:
        for r in range(repeat):
            pb_sgd_hw(pp, gp, bp, STEP, <size_t>n, nthreads)
    return perf_counter() - t0
