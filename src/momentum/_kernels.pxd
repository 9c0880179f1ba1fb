# The kernels, for other Cython code to cimport: no Python objects, no checks,
# no GIL.  Every pointer must address `n` elements of one dtype; `param`,
# `grad` and `buf` must not overlap.  The hyperparameters arrive in double
# precision and each kernel rounds them once to its dtype, as NumPy does.
from libc.stddef cimport size_t

ctypedef fused real:
    float
    double

cdef struct sgd_hyper:
    double lr
    double momentum
    double dampening
    double weight_decay
    bint nesterov
    bint maximize
    bint first_step

cdef struct heavy_ball_hyper:
    double lr
    double momentum
    double weight_decay
    bint nesterov
    bint maximize

cdef void update_buffer(real* buf, const real* grad, size_t n,
                        double momentum, double dampening) noexcept nogil
cdef void sgd(real* param, const real* grad, real* buf, size_t n,
              const sgd_hyper* h) noexcept nogil
cdef void heavy_ball(real* param, const real* grad, real* buf, size_t n,
                     const heavy_ball_hyper* h) noexcept nogil
