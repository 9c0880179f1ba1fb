# The 16-bit ceiling loops of _probe16.h behind timers, included by _probe.pyx
# (the portable build) and _probe_avx512bf16.pyx (built for AVX-512 with the
# bfloat16 conversion instructions).  Each timer runs its loop `repeat` times
# in one nogil block, as _probe's float timers do, and returns the seconds.
from time import perf_counter

from libc.stddef cimport size_t

cdef extern from "_probe16.h" nogil:
    ctypedef void (*pb_sgd_loop)(void* p, const void* g, void* b, float a, size_t n,
                                 int nthreads) noexcept nogil
    void pb_sgd_FFH(void*, const void*, void*, float, size_t, int)
    void pb_sgd_FHF(void*, const void*, void*, float, size_t, int)
    void pb_sgd_FHH(void*, const void*, void*, float, size_t, int)
    void pb_sgd_HFF(void*, const void*, void*, float, size_t, int)
    void pb_sgd_HFH(void*, const void*, void*, float, size_t, int)
    void pb_sgd_HHF(void*, const void*, void*, float, size_t, int)
    void pb_sgd_HHH(void*, const void*, void*, float, size_t, int)
    ctypedef void (*pb_four_loop)(void* x, const void* g, void* b, void* y, float a, size_t n,
                                  int nthreads) noexcept nogil
    void pb_kahan(void* p, const void* g, void* b, void* c, float a, size_t n, int nthreads)
    void pb_master(void* m, const void* g, void* b, void* p, float a, size_t n, int nthreads)

# By (param, grad, buf) 16-bit or not, bit 2, 1, 0 (all float32: _probe.time_fused).
cdef pb_sgd_loop SGD16[8]
SGD16[0], SGD16[1], SGD16[2], SGD16[3] = NULL, pb_sgd_FFH, pb_sgd_FHF, pb_sgd_FHH
SGD16[4], SGD16[5], SGD16[6], SGD16[7] = pb_sgd_HFF, pb_sgd_HFH, pb_sgd_HHF, pb_sgd_HHH

# The scale `a` of every loop, as in _probe.time_fused.
cdef float STEP = 1e-3
# The arrays of the Kahan and master timers, as their arguments are called.
cdef tuple KAHAN = ("p", "g", "b", "c")
cdef tuple MASTER = ("m", "g", "b", "p")


cdef size_t _address(object a, str name, Py_ssize_t n, int itemsize=0) except? 0:
    """The first byte of the C-contiguous writable array ``a`` of ``n``
    elements (of ``itemsize`` bytes, 2 or 4 when 0)."""
    face = a.__array_interface__
    if face["strides"] is not None and not a.flags.c_contiguous:
        raise ValueError(f"'{name}' is not C-contiguous")
    if a.size != n:
        raise ValueError(f"'{name}' has {a.size} elements, not {n}")
    if a.itemsize != itemsize if itemsize else a.itemsize not in (2, 4):
        raise ValueError(f"'{name}' has {a.itemsize}-byte elements")
    if not a.flags.writeable:
        raise ValueError(f"'{name}' is read-only")
    return <size_t>face["data"][0]


cdef object _time_sgd(pb_sgd_loop* table, p, g, b, Py_ssize_t repeat, int nthreads):
    """Seconds for ``repeat`` passes of the loop of ``table`` (by which of
    p, g, b are 16-bit, as SGD16) on p, g, b."""
    cdef Py_ssize_t r, n = p.size
    cdef void* pp = <void*>_address(p, "p", n)
    cdef const void* gp = <const void*>_address(g, "g", n)
    cdef void* bp = <void*>_address(b, "b", n)
    cdef int key = (p.itemsize == 2) << 2 | (g.itemsize == 2) << 1 | (b.itemsize == 2)
    if key == 0:
        raise ValueError("every array is float32: time it with time_fused()")
    cdef pb_sgd_loop loop = table[key]
    t0 = perf_counter()
    with nogil:
        for r in range(repeat):
            loop(pp, gp, bp, STEP, <size_t>n, nthreads)
    return perf_counter() - t0


cdef object _time_four(pb_four_loop loop, tuple names, x, g, b, y, int xsize, int bsize,
                       Py_ssize_t repeat, int nthreads):
    """Seconds for ``repeat`` passes of the Kahan or master ``loop`` (its
    arrays called ``names`` in messages)."""
    cdef Py_ssize_t r, n = x.size
    cdef void* xp = <void*>_address(x, names[0], n, xsize)
    cdef const void* gp = <const void*>_address(g, names[1], n, 2)
    cdef void* bp = <void*>_address(b, names[2], n, bsize)
    cdef void* yp = <void*>_address(y, names[3], n, 2)
    t0 = perf_counter()
    with nogil:
        for r in range(repeat):
            loop(xp, gp, bp, yp, STEP, <size_t>n, nthreads)
    return perf_counter() - t0


def time_sgd16(p, g, b, Py_ssize_t repeat, int nthreads=1):
    """Seconds for ``repeat`` passes of ``p = p - a*b; b = g + b`` on arrays of
    float32 or 16-bit elements (not all float32), 16-bit values widened and
    rounded to nearest as bfloat16."""
    return _time_sgd(SGD16, p, g, b, repeat, nthreads)


def time_kahan(p, g, b, c, Py_ssize_t repeat, int nthreads=1):
    """Seconds for ``repeat`` passes of the Kahan layout's bytes: read 16-bit
    p, g, b, c; write p, b, c (7 x 2 bytes per element)."""
    return _time_four(pb_kahan, KAHAN, p, g, b, c, 2, 2, repeat, nthreads)


def time_master(m, g, b, p, Py_ssize_t repeat, int nthreads=1):
    """Seconds for ``repeat`` passes of the master layout's bytes: read float32
    m, b and 16-bit g; write m, b and the 16-bit p (not read): 20 bytes per element."""
    return _time_four(pb_master, MASTER, m, g, b, p, 4, 4, repeat, nthreads)


cdef extern from "_probe_adam.h" nogil:
    ctypedef void (*pb_adam_loop)(void* p, const void* g, void* m, void* v, size_t n,
                                  int nthreads) noexcept nogil
    ctypedef void (*pb_adam_master_loop)(void* w, const void* g, void* m, void* v, void* p,
                                         size_t n, int nthreads) noexcept nogil
    void pb_adam_FFF(void*, const void*, void*, void*, size_t, int)
    void pb_adam_HHH(void*, const void*, void*, void*, size_t, int)
    void pb_adam_HHF(void*, const void*, void*, void*, size_t, int)
    void pb_adam_master(void*, const void*, void*, void*, void*, size_t, int)

cdef tuple ADAM = ("p", "g", "m", "v")
cdef tuple ADAM_MASTER = ("w", "g", "m", "v", "p")


cdef pb_adam_loop _adam_loop(p, g, m, v, pb_adam_loop fff, pb_adam_loop hhh, pb_adam_loop hhf):
    """The loop for these arrays' widths: all float32, all 16-bit, or 16-bit
    p and g with float32 moments (the layouts the bench reports)."""
    widths = (p.itemsize, g.itemsize, m.itemsize, v.itemsize)
    if widths == (4, 4, 4, 4) and fff != NULL:
        return fff
    if widths == (2, 2, 2, 2):
        return hhh
    if widths == (2, 2, 4, 4):
        return hhf
    raise ValueError(f"no Adam ceiling loop for element sizes {widths}")


cdef object _time_adam(pb_adam_loop loop, p, g, m, v, Py_ssize_t repeat, int nthreads):
    cdef Py_ssize_t r, n = p.size
    cdef void* pp = <void*>_address(p, "p", n)
    cdef const void* gp = <const void*>_address(g, "g", n)
    cdef void* mp = <void*>_address(m, "m", n)
    cdef void* vp = <void*>_address(v, "v", n)
    t0 = perf_counter()
    with nogil:
        for r in range(repeat):
            loop(pp, gp, mp, vp, <size_t>n, nthreads)
    return perf_counter() - t0


cdef object _time_adam_master(pb_adam_master_loop loop, w, g, m, v, p, Py_ssize_t repeat,
                              int nthreads):
    cdef Py_ssize_t r, n = w.size
    cdef void* wp = <void*>_address(w, "w", n, 4)
    cdef const void* gp = <const void*>_address(g, "g", n, 2)
    cdef void* mp = <void*>_address(m, "m", n, 4)
    cdef void* vp = <void*>_address(v, "v", n, 4)
    cdef void* pp = <void*>_address(p, "p", n, 2)
    t0 = perf_counter()
    with nogil:
        for r in range(repeat):
            loop(wp, gp, mp, vp, pp, <size_t>n, nthreads)
    return perf_counter() - t0


def time_adam(p, g, m, v, Py_ssize_t repeat, int nthreads=1):
    """Seconds for ``repeat`` passes of a plain float32 Adam step (read p, g,
    m, v; write p, m, v) on arrays all float32 (28 bytes per element), all
    16-bit (14), or 16-bit p, g with float32 m, v (22); 16-bit values widened
    and rounded to nearest as bfloat16."""
    return _time_adam(_adam_loop(p, g, m, v, pb_adam_FFF, pb_adam_HHH, pb_adam_HHF),
                      p, g, m, v, repeat, nthreads)


def time_adam_master(w, g, m, v, p, Py_ssize_t repeat, int nthreads=1):
    """Seconds for ``repeat`` passes of Adam in ZeRO-Offload's layout: read the
    float32 master w, 16-bit g, float32 m, v; write w, m, v and the 16-bit p
    (not read): 28 bytes per element."""
    return _time_adam_master(pb_adam_master, w, g, m, v, p, repeat, nthreads)
