# The kernels: plain loops over raw pointers, written for GCC's vectoriser.
# Included by _kernels.pyx (the portable build) and by each _kernels_<isa>.pyx
# (the same loops compiled for a newer instruction set, picked at run time).
#
# One loop function per rule, named as the rule in momentum.rules, taking one
# typed pointer per array (in the table's order), the element count and the
# rule's hyperparameter struct; _entries.pxi (generated from the table) wraps
# each in the generic kernel signature of momentum.h.  The float loop also
# serves every mix of float32 and 16-bit arrays, through _storage.h's
# chunked driver, which widens and rounds the 16-bit arrays around it
# (_vector16.h repeats a rule's arithmetic on vectors for the common 16-bit
# layouts, rules.vector16_combos: a change here is a change there).
#
# Every flag is loop-invariant; the branches below are outside the loops, so
# each loop body is straight-line arithmetic that vectorises.  Statements are
# kept one rounding each, in the reference's order, and the build passes
# -ffp-contract=off so that no multiply and add fuse.
from cpython.pycapsule cimport PyCapsule_New
from libc.math cimport sqrt, sqrtf
from libc.stddef cimport size_t
from libc.stdint cimport uint32_t
from momentum._kernels cimport MOMENTUM_KERNEL_COUNT, momentum_kernel, momentum_task

cdef extern from "_storage.h" nogil:
    ctypedef void (*momentum_loop32)(float* const* arrays, size_t n,
                                     const double* hyper) noexcept nogil
    double momentum_bias(double beta, double step)
    float momentum_sign(float x)
    double momentum_sign_double(double x)
    void momentum_blocked(const momentum_task* t, size_t start, size_t n,
                          momentum_loop32 loop, int narrays, uint32_t codes,
                          uint32_t written, int param)

include "_hypers.pxi"

ctypedef fused real:
    float
    double


cdef void update_buffer(real* buf, const real* grad, size_t n,
                        const update_buffer_hyper* h) noexcept nogil:
    """buf = momentum * buf + (1 - dampening) * grad"""
    cdef real m = <real>h.momentum
    cdef real c = <real>(1.0 - h.dampening)
    cdef size_t i
    for i in range(n):
        buf[i] = m * buf[i] + c * grad[i]


cdef inline void _sgd_plain(real* param, const real* grad, size_t n, real lr,
                            real wd, bint decay, bint maximize) noexcept nogil:
    # momentum == 0: param = param - lr * g
    cdef size_t i
    cdef real g
    for i in range(n):
        g = -grad[i] if maximize else grad[i]
        if decay:
            g = g + wd * param[i]
        param[i] = param[i] - lr * g


cdef inline void _sgd_first(real* param, const real* grad, real* buf, size_t n,
                            real lr, real m, real wd, bint decay, bint maximize,
                            bint nesterov) noexcept nogil:
    # first step: the buffer starts as the gradient
    cdef size_t i
    cdef real g
    for i in range(n):
        g = -grad[i] if maximize else grad[i]
        if decay:
            g = g + wd * param[i]
        buf[i] = g
        if nesterov:
            g = g + m * g
        param[i] = param[i] - lr * g


cdef inline void _sgd_momentum(real* param, const real* grad, real* buf,
                               size_t n, real lr, real m, real c, real wd,
                               bint decay, bint maximize,
                               bint nesterov) noexcept nogil:
    # buf = m * buf + c * g, then step along buf (or g + m * buf)
    cdef size_t i
    cdef real g, b
    for i in range(n):
        g = -grad[i] if maximize else grad[i]
        if decay:
            g = g + wd * param[i]
        b = m * buf[i] + c * g
        buf[i] = b
        if nesterov:
            g = g + m * b
        else:
            g = b
        param[i] = param[i] - lr * g


cdef void sgd(real* param, const real* grad, real* buf, size_t n,
              const sgd_hyper* h) noexcept nogil:
    """torch.optim.SGD's step; see momentum.reference.sgd for the formula."""
    cdef real lr = <real>h.lr
    cdef real m = <real>h.momentum
    cdef real c = <real>(1.0 - h.dampening)
    cdef real wd = <real>h.weight_decay
    cdef bint decay = h.weight_decay != 0
    cdef bint maximize = h.maximize != 0
    cdef bint nesterov = h.nesterov != 0
    if h.momentum == 0:
        _sgd_plain(param, grad, n, lr, wd, decay, maximize)
    elif h.first_step != 0:
        _sgd_first(param, grad, buf, n, lr, m, wd, decay, maximize, nesterov)
    else:
        _sgd_momentum(param, grad, buf, n, lr, m, c, wd, decay, maximize,
                      nesterov)


cdef void heavy_ball(real* param, const real* grad, real* buf, size_t n,
                     const heavy_ball_hyper* h) noexcept nogil:
    """buf = m * buf + lr * g; param -= buf (or m * buf + lr * g, Nesterov)."""
    cdef real lr = <real>h.lr
    cdef real m = <real>h.momentum
    cdef real wd = <real>h.weight_decay
    cdef bint decay = h.weight_decay != 0
    cdef bint maximize = h.maximize != 0
    cdef bint nesterov = h.nesterov != 0
    cdef size_t i
    cdef real g, b
    for i in range(n):
        g = -grad[i] if maximize else grad[i]
        if decay:
            g = g + wd * param[i]
        b = m * buf[i] + lr * g
        buf[i] = b
        if nesterov:
            param[i] = param[i] - (m * b + lr * g)
        else:
            param[i] = param[i] - b


cdef inline real _sqrt(real x) noexcept nogil:
    # sqrtf for float: a double square root rounded to float could differ
    if real is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline real _max(real a, real b) noexcept nogil:
    """max(a, b) as the reference defines it: a where a > b or a is NaN,
    else b (so b's NaN, and b of two equal zeros)."""
    return a if (a > b or a != a) else b


cdef inline real _sign(real x) noexcept nogil:
    """sign(x) as the reference defines it: 1, -1, +0 for either zero, NaN
    for NaN (x - x)."""
    # from the compares' masks (_storage.h): the conditional form, with
    # x - x under a condition, left Lion's loop scalar in avx2 and baseline
    if real is float:
        return momentum_sign(x)
    else:
        return momentum_sign_double(x)


cdef inline void _adam(real* param, const real* grad, real* exp_avg, real* exp_avg_sq,
                       real* max_exp_avg_sq, size_t n, double lr, double beta1,
                       double beta2, double eps, double weight_decay, bint amsgrad,
                       bint maximize, double step, bint decoupled) noexcept nogil:
    # The bias corrections in double, as the reference forms them.
    cdef double bias1 = momentum_bias(beta1, step), bias2 = momentum_bias(beta2, step)
    # 1 / sqrt(bias2) once, in double: a multiply per element, not a second divide
    cdef real step_size = <real>(lr / bias1), inv_root2 = <real>(1.0 / sqrt(bias2))
    cdef real keep1 = <real>(1.0 - beta1), b2 = <real>beta2, keep2 = <real>(1.0 - beta2)
    cdef real e = <real>eps, wd = <real>weight_decay
    cdef real shrink = <real>(1.0 - lr * weight_decay)
    cdef bint decay = weight_decay != 0
    cdef size_t i
    cdef real g, p, m, s
    for i in range(n):
        # Every load before the first store: the arrays often share their
        # offset within a 4 KiB page (NumPy's allocations do), and a load of
        # exp_avg_sq[i] after the store to exp_avg[i] then waits on it (4K
        # aliasing).  The arithmetic and its order are unchanged.
        g = -grad[i] if maximize else grad[i]
        p = param[i]
        m = exp_avg[i]
        s = exp_avg_sq[i]
        if decay:
            if decoupled:
                p = p * shrink
            else:
                g = g + wd * p
        m = m + keep1 * (g - m)
        s = b2 * s + keep2 * g * g
        exp_avg[i] = m
        exp_avg_sq[i] = s
        if amsgrad:
            s = _max(max_exp_avg_sq[i], s)
            max_exp_avg_sq[i] = s
        param[i] = p - step_size * (m / (_sqrt(s) * inv_root2 + e))


cdef void adam(real* param, const real* grad, real* exp_avg, real* exp_avg_sq,
               real* max_exp_avg_sq, size_t n, const adam_hyper* h) noexcept nogil:
    """torch.optim.Adam's step (L2 weight decay); see momentum.reference.adam."""
    _adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, n, h.lr, h.beta1, h.beta2,
          h.eps, h.weight_decay, h.amsgrad != 0, h.maximize != 0, h.step, False)


cdef void adamw(real* param, const real* grad, real* exp_avg, real* exp_avg_sq,
                real* max_exp_avg_sq, size_t n, const adamw_hyper* h) noexcept nogil:
    """torch.optim.AdamW's step (decoupled weight decay)."""
    _adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, n, h.lr, h.beta1, h.beta2,
          h.eps, h.weight_decay, h.amsgrad != 0, h.maximize != 0, h.step, True)


cdef void lion(real* param, const real* grad, real* exp_avg, size_t n,
               const lion_hyper* h) noexcept nogil:
    """c = beta1 * m + (1 - beta1) * g; param -= lr * sign(c); m = beta2 * m + (1 - beta2) * g."""
    cdef real lr = <real>h.lr, b1 = <real>h.beta1, keep1 = <real>(1.0 - h.beta1)
    cdef real b2 = <real>h.beta2, keep2 = <real>(1.0 - h.beta2)
    cdef real shrink = <real>(1.0 - h.lr * h.weight_decay)
    cdef bint decay = h.weight_decay != 0, maximize = h.maximize != 0
    cdef size_t i
    cdef real g, c, p, m
    for i in range(n):
        # exp_avg[i] read once, before the store to param[i] (see _adam: 4K aliasing)
        g = -grad[i] if maximize else grad[i]
        m = exp_avg[i]
        c = b1 * m + keep1 * g
        p = param[i] * shrink if decay else param[i]
        param[i] = p - lr * _sign(c)
        exp_avg[i] = b2 * m + keep2 * g


include "_entries.pxi"

# This build's kernels by slot (NULL where none is built), for
# momentum._dispatch to put in the running table.
cdef momentum_kernel SLOTS[MOMENTUM_KERNEL_COUNT]
fill_kernels(SLOTS)
KERNELS = PyCapsule_New(SLOTS, "momentum.kernel_slots", NULL)
