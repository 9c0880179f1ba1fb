# Argument checks shared by every entry point (momentum._api and
# momentum.foreach): each raises TypeError or ValueError naming the function
# and the argument, and none writes anything.
#
# NumPy arrays are read straight from their C struct (typed memoryviews cost
# more than a whole small call); any other buffer exporter goes through
# np.asarray(memoryview(obj)), a zero-copy view.
cimport numpy as cnp
from cpython.buffer cimport PyObject_CheckBuffer
from cpython.float cimport PyFloat_AsDouble
from libc.math cimport isfinite
from libc.stddef cimport size_t
from libc.string cimport memcmp

from momentum._kernels cimport sgd_hyper, heavy_ball_hyper
from momentum._schedule cimport DType, DTYPE_FLOAT32, DTYPE_FLOAT64

import numpy as np

cnp.import_array()


cdef cnp.ndarray as_array(object obj, str func, str name):
    """``obj`` as an ndarray sharing its memory, or TypeError."""
    if cnp.PyArray_Check(obj):
        return <cnp.ndarray>obj
    if PyObject_CheckBuffer(obj):
        return np.asarray(memoryview(obj))
    raise TypeError(f"{func}(): '{name}' must be a NumPy array or an object "
                    f"exporting a buffer, not {type(obj).__name__}")


cdef DType dtype_of(cnp.ndarray a, str func, str name) except *:
    """The kernel dtype of ``a``, or TypeError."""
    cdef int t = cnp.PyArray_TYPE(a)
    if cnp.PyArray_ISNOTSWAPPED(a):
        if t == cnp.NPY_FLOAT32:
            return DTYPE_FLOAT32
        if t == cnp.NPY_FLOAT64:
            return DTYPE_FLOAT64
    raise TypeError(f"{func}(): '{name}' has dtype {a.dtype}; expected "
                    f"float32 or float64 in native byte order")


cdef int check_like(cnp.ndarray a, str name, cnp.ndarray ref, str ref_name,
                    str func) except -1:
    """``a`` has the dtype and shape of ``ref``."""
    if cnp.PyArray_TYPE(a) != cnp.PyArray_TYPE(ref):
        raise TypeError(f"{func}(): '{name}' has dtype {a.dtype} but "
                        f"'{ref_name}' has dtype {ref.dtype}")
    cdef int nd = cnp.PyArray_NDIM(a)
    if nd != cnp.PyArray_NDIM(ref) or memcmp(
            cnp.PyArray_DIMS(a), cnp.PyArray_DIMS(ref), nd * sizeof(cnp.npy_intp)):
        raise ValueError(f"{func}(): '{name}' has shape {(<object>a).shape} but "
                         f"'{ref_name}' has shape {(<object>ref).shape}")
    return 0


cdef int check_layout(cnp.ndarray a, str name, bint written, str func) except -1:
    """``a`` is C-contiguous, aligned and, if ``written``, writable."""
    if not cnp.PyArray_IS_C_CONTIGUOUS(a):
        raise ValueError(f"{func}(): '{name}' is not C-contiguous; pass "
                         f"np.ascontiguousarray({name}) and copy the result back")
    if not cnp.PyArray_ISALIGNED(a):
        raise ValueError(f"{func}(): '{name}' is not aligned to its dtype")
    if written and not cnp.PyArray_ISWRITEABLE(a):
        raise ValueError(f"{func}(): '{name}' is read-only but is written in place")
    return 0


cdef int check_disjoint(cnp.ndarray a, str a_name, cnp.ndarray b, str b_name,
                        str func) except -1:
    """``a`` and ``b`` share no byte of memory (both are C-contiguous).

    An empty array holds no bytes, so it overlaps nothing.
    """
    cdef size_t a_lo = <size_t>cnp.PyArray_BYTES(a)
    cdef size_t b_lo = <size_t>cnp.PyArray_BYTES(b)
    cdef size_t a_hi = a_lo + <size_t>cnp.PyArray_NBYTES(a)
    cdef size_t b_hi = b_lo + <size_t>cnp.PyArray_NBYTES(b)
    if a_lo < a_hi and b_lo < b_hi and a_lo < b_hi and b_lo < a_hi:
        raise ValueError(f"{func}(): '{a_name}' and '{b_name}' overlap in memory")
    return 0


cdef double real_arg(object value, str name, str func) except? -1.0:
    """A hyperparameter as a double, or TypeError naming it."""
    if type(value) is float:
        return <double>value
    try:
        return PyFloat_AsDouble(value)
    except TypeError:
        raise TypeError(f"{func}(): '{name}' must be a real number, "
                        f"not {type(value).__name__}") from None
    except OverflowError:
        raise ValueError(f"{func}(): '{name}' must be finite, got a number "
                         f"too large for a double") from None


cdef int check_rate(double value, str name, str func) except -1:
    """``value`` is finite and >= 0."""
    if not (isfinite(value) and value >= 0):
        raise ValueError(f"{func}(): '{name}' must be finite and >= 0, got {value!r}")
    return 0


cdef int check_dampening(double value, str func) except -1:
    if not (0 <= value <= 1):
        raise ValueError(f"{func}(): 'dampening' must be in [0, 1], got {value!r}")
    return 0


cdef int check_pair(cnp.ndarray w, str w_name, cnp.ndarray grad, str grad_name,
                    str func, DType* dtype) except -1:
    """The written array ``w`` and ``grad``: supported, alike, laid out, apart."""
    dtype[0] = dtype_of(w, func, w_name)
    dtype_of(grad, func, grad_name)
    check_like(grad, grad_name, w, w_name, func)
    check_layout(w, w_name, True, func)
    check_layout(grad, grad_name, False, func)
    check_disjoint(w, w_name, grad, grad_name, func)
    return 0


cdef int check_buf(cnp.ndarray buf, str buf_name, cnp.ndarray param,
                   str param_name, cnp.ndarray grad, str grad_name,
                   bint written, str func) except -1:
    """``buf`` next to checked ``param`` and ``grad``."""
    dtype_of(buf, func, buf_name)
    check_like(buf, buf_name, param, param_name, func)
    check_layout(buf, buf_name, written, func)
    check_disjoint(buf, buf_name, param, param_name, func)
    check_disjoint(buf, buf_name, grad, grad_name, func)
    return 0


cdef int sgd_hyperparameters(sgd_hyper* h, object lr, object momentum,
                             object dampening, object weight_decay,
                             bint nesterov, bint maximize, bint first_step,
                             str func) except -1:
    """Fill ``h`` from the arguments of an sgd call, checked as PyTorch does."""
    h.lr = real_arg(lr, "lr", func)
    h.momentum = real_arg(momentum, "momentum", func)
    h.dampening = real_arg(dampening, "dampening", func)
    h.weight_decay = real_arg(weight_decay, "weight_decay", func)
    h.nesterov = nesterov
    h.maximize = maximize
    h.first_step = first_step
    check_rate(h.lr, "lr", func)
    check_rate(h.momentum, "momentum", func)
    check_dampening(h.dampening, func)
    check_rate(h.weight_decay, "weight_decay", func)
    if nesterov and (h.momentum <= 0 or h.dampening != 0):
        raise ValueError(f"{func}(): nesterov=True needs momentum > 0 and "
                         f"dampening == 0")
    return 0


cdef int heavy_ball_hyperparameters(heavy_ball_hyper* h, object lr,
                                    object momentum, object weight_decay,
                                    bint nesterov, bint maximize,
                                    str func) except -1:
    """Fill ``h`` from the arguments of a heavy_ball call, checked."""
    h.lr = real_arg(lr, "lr", func)
    h.momentum = real_arg(momentum, "momentum", func)
    h.weight_decay = real_arg(weight_decay, "weight_decay", func)
    h.nesterov = nesterov
    h.maximize = maximize
    check_rate(h.lr, "lr", func)
    check_rate(h.momentum, "momentum", func)
    check_rate(h.weight_decay, "weight_decay", func)
    if nesterov and h.momentum <= 0:
        raise ValueError(f"{func}(): nesterov=True needs momentum > 0")
    return 0


cdef int update_buffer_hyperparameters(sgd_hyper* h, object momentum,
                                       object dampening, str func) except -1:
    """Fill ``h.momentum`` and ``h.dampening`` for update_buffer, checked."""
    h.momentum = real_arg(momentum, "momentum", func)
    h.dampening = real_arg(dampening, "dampening", func)
    check_rate(h.momentum, "momentum", func)
    check_dampening(h.dampening, func)
    return 0
