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

# One build's kernels, one entry per rule and dtype.  Each _kernels* module
# exports its table as the capsule KERNELS; momentum._schedule picks one.
ctypedef void (*update_buffer_f32_t)(float*, const float*, size_t, double, double) noexcept nogil
ctypedef void (*update_buffer_f64_t)(double*, const double*, size_t, double, double) noexcept nogil
ctypedef void (*sgd_f32_t)(float*, const float*, float*, size_t, const sgd_hyper*) noexcept nogil
ctypedef void (*sgd_f64_t)(double*, const double*, double*, size_t, const sgd_hyper*) noexcept nogil
ctypedef void (*heavy_ball_f32_t)(float*, const float*, float*, size_t, const heavy_ball_hyper*) noexcept nogil
ctypedef void (*heavy_ball_f64_t)(double*, const double*, double*, size_t, const heavy_ball_hyper*) noexcept nogil

cdef struct KernelTable:
    update_buffer_f32_t update_buffer_f32
    update_buffer_f64_t update_buffer_f64
    sgd_f32_t sgd_f32
    sgd_f64_t sgd_f64
    heavy_ball_f32_t heavy_ball_f32
    heavy_ball_f64_t heavy_ball_f64
