# The kernels: plain loops over raw pointers, written for GCC's vectoriser.
# Included by _kernels.pyx (the portable build) and by each _kernels_<isa>.pyx
# (the same loops compiled for a newer instruction set, picked at run time).
#
# One loop function per rule, named as the rule in momentum.rules, taking one
# typed pointer per array (in the table's order), the element count and the
# rule's hyperparameter struct; _entries.pxi (generated from the table) wraps
# each in the generic kernel signature of momentum.h.  The float loop also
# serves every mix of float32 and 16-bit arrays, through _storage.h's
# chunked driver, which widens and rounds the 16-bit arrays around it.
#
# Every flag is loop-invariant; the branches below are outside the loops, so
# each loop body is straight-line arithmetic that vectorises.  Statements are
# kept one rounding each, in the reference's order, and the build passes
# -ffp-contract=off so that no multiply and add fuse.
from cpython.pycapsule cimport PyCapsule_New
from libc.stddef cimport size_t
from libc.stdint cimport uint32_t
from momentum._kernels cimport MOMENTUM_KERNEL_COUNT, momentum_kernel, momentum_task

cdef extern from "_storage.h" nogil:
    ctypedef void (*momentum_loop32)(float* const* arrays, size_t n,
                                     const double* hyper) noexcept nogil
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


include "_entries.pxi"

# This build's kernels by slot (NULL where none is built), for
# momentum._dispatch to put in the running table.
cdef momentum_kernel SLOTS[MOMENTUM_KERNEL_COUNT]
fill_kernels(SLOTS)
KERNELS = PyCapsule_New(SLOTS, "momentum.kernel_slots", NULL)
