# The 16-bit ceiling loops (_probe16.pxi) built for AVX-512 with the bfloat16
# conversion instructions (setup.py builds it only when the compiler accepts
# -mavx512bf16; the bench runs it only where momentum._dispatch lists the
# avx512bf16 kernels), and each of them again rounding with vcvtneps2bf16:
# the ceilings with the hardware conversion.
include "_probe16.pxi"

cdef extern from "_probe16.h" nogil:
    void pb_sgd_hw_FFH(void*, const void*, void*, float, size_t, int)
    void pb_sgd_hw_FHF(void*, const void*, void*, float, size_t, int)
    void pb_sgd_hw_FHH(void*, const void*, void*, float, size_t, int)
    void pb_sgd_hw_HFF(void*, const void*, void*, float, size_t, int)
    void pb_sgd_hw_HFH(void*, const void*, void*, float, size_t, int)
    void pb_sgd_hw_HHF(void*, const void*, void*, float, size_t, int)
    void pb_sgd_hw_HHH(void*, const void*, void*, float, size_t, int)
    void pb_kahan_hw(void*, const void*, void*, void*, float, size_t, int)
    void pb_master_hw(void*, const void*, void*, void*, float, size_t, int)

cdef pb_sgd_loop SGD16_HW[8]
SGD16_HW[0], SGD16_HW[1], SGD16_HW[2], SGD16_HW[3] = NULL, pb_sgd_hw_FFH, pb_sgd_hw_FHF, pb_sgd_hw_FHH
SGD16_HW[4], SGD16_HW[5], SGD16_HW[6], SGD16_HW[7] = (pb_sgd_hw_HFF, pb_sgd_hw_HFH, pb_sgd_hw_HHF,
                                                      pb_sgd_hw_HHH)


def time_sgd16_hw(p, g, b, Py_ssize_t repeat, int nthreads=1):
    """time_sgd16 with every 16-bit store rounded by vcvtneps2bf16."""
    return _time_sgd(SGD16_HW, p, g, b, repeat, nthreads)


def time_kahan_hw(p, g, b, c, Py_ssize_t repeat, int nthreads=1):
    """time_kahan with every store rounded by vcvtneps2bf16."""
    return _time_four(pb_kahan_hw, KAHAN, p, g, b, c, 2, 2, repeat, nthreads)


def time_master_hw(m, g, b, p, Py_ssize_t repeat, int nthreads=1):
    """time_master with the 16-bit store rounded by vcvtneps2bf16."""
    return _time_four(pb_master_hw, MASTER, m, g, b, p, 4, 4, repeat, nthreads)


cdef extern from "_probe_adam.h" nogil:
    void pb_adam_hw_HHH(void*, const void*, void*, void*, size_t, int)
    void pb_adam_hw_HHF(void*, const void*, void*, void*, size_t, int)
    void pb_adam_master_hw(void*, const void*, void*, void*, void*, size_t, int)


def time_adam_hw(p, g, m, v, Py_ssize_t repeat, int nthreads=1):
    """time_adam on 16-bit layouts, 16 elements at a time, every 16-bit store
    rounded by vcvtneps2bf16."""
    return _time_adam(_adam_loop(p, g, m, v, NULL, pb_adam_hw_HHH, pb_adam_hw_HHF),
                      p, g, m, v, repeat, nthreads)


def time_adam_master_hw(w, g, m, v, p, Py_ssize_t repeat, int nthreads=1):
    """time_adam_master with the 16-bit store rounded by vcvtneps2bf16."""
    return _time_adam_master(pb_adam_master_hw, w, g, m, v, p, repeat, nthreads)
