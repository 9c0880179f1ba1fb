# The machine's memory bandwidth, measured with the kernels' own compiler
# flags so that the ceiling the benchmark quotes is one this build can reach.
#
# Each timer runs its loop `repeat` times inside one nogil block and returns
# the elapsed seconds: no Python runs between repeats, so at small sizes the
# rate is the loop's, not the interpreter's.  With `nthreads > 1` the loop is
# split by OpenMP into equal static chunks, one per thread, as the kernels do.
from time import perf_counter

from cython cimport floating
from cython.parallel cimport prange


cdef inline void _copy(floating* dst, const floating* src, Py_ssize_t n,
                       int nthreads) noexcept nogil:
    cdef Py_ssize_t i
    if nthreads <= 1:
        for i in range(n):
            dst[i] = src[i]
    else:
        for i in prange(n, num_threads=nthreads, schedule="static"):
            dst[i] = src[i]


cdef inline void _triad(floating* a, const floating* b, const floating* c,
                        floating s, Py_ssize_t n, int nthreads) noexcept nogil:
    cdef Py_ssize_t i
    if nthreads <= 1:
        for i in range(n):
            a[i] = b[i] + s * c[i]
    else:
        for i in prange(n, num_threads=nthreads, schedule="static"):
            a[i] = b[i] + s * c[i]


cdef inline void _fused(floating* p, const floating* g, floating* b,
                        floating a, Py_ssize_t n, int nthreads) noexcept nogil:
    # The bytes of sgd (read p, g, b; write p, b) with the least arithmetic
    # that keeps every load and store: the roofline sgd is compared with.
    cdef Py_ssize_t i
    if nthreads <= 1:
        for i in range(n):
            p[i] = p[i] - a * b[i]
            b[i] = g[i] + b[i]
    else:
        for i in prange(n, num_threads=nthreads, schedule="static"):
            p[i] = p[i] - a * b[i]
            b[i] = g[i] + b[i]


def time_copy(floating[::1] dst, const floating[::1] src, Py_ssize_t repeat,
              int nthreads=1):
    """Seconds for ``repeat`` passes of ``dst[i] = src[i]`` (2 elements moved per i)."""
    if dst.shape[0] != src.shape[0]:
        raise ValueError("time_copy(): 'dst' and 'src' differ in length")
    cdef Py_ssize_t r, n = dst.shape[0]
    t0 = perf_counter()
    with nogil:
        for r in range(repeat):
            _copy(&dst[0], &src[0], n, nthreads)
    return perf_counter() - t0


def time_triad(floating[::1] a, const floating[::1] b, const floating[::1] c,
               Py_ssize_t repeat, int nthreads=1):
    """Seconds for ``repeat`` passes of STREAM's ``a[i] = b[i] + s*c[i]`` (3 elements moved per i)."""
    if a.shape[0] != b.shape[0] or a.shape[0] != c.shape[0]:
        raise ValueError("time_triad(): 'a', 'b' and 'c' differ in length")
    cdef Py_ssize_t r, n = a.shape[0]
    cdef floating s = 0.5
    t0 = perf_counter()
    with nogil:
        for r in range(repeat):
            _triad(&a[0], &b[0], &c[0], s, n, nthreads)
    return perf_counter() - t0


def time_fused(floating[::1] p, const floating[::1] g, floating[::1] b,
               Py_ssize_t repeat, int nthreads=1):
    """Seconds for ``repeat`` passes of ``p[i] = p[i] - a*b[i]; b[i] = g[i] + b[i]`` (5 elements moved per i)."""
    if p.shape[0] != g.shape[0] or p.shape[0] != b.shape[0]:
        raise ValueError("time_fused(): 'p', 'g' and 'b' differ in length")
    cdef Py_ssize_t r, n = p.shape[0]
    cdef floating a = 1e-3
    t0 = perf_counter()
    with nogil:
        for r in range(repeat):
            _fused(&p[0], &g[0], &b[0], a, n, nthreads)
    return perf_counter() - t0
include "_probe16.pxi"
