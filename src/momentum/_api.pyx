# The checked entry points: every argument is checked here, once, before the
# first write; then one task is built and run with the GIL released.
#
# Speed matters here as much as in the kernels: for small arrays this layer is
# the whole cost of a call.  NumPy arrays are read straight from their C
# struct (typed memoryviews cost more than the whole call budget); any other
# buffer exporter goes through np.asarray(memoryview(obj)), a zero-copy view.
cimport numpy as cnp
from cpython.buffer cimport PyObject_CheckBuffer
from cpython.float cimport PyFloat_AsDouble
from libc.math cimport isfinite
from libc.stddef cimport size_t
from libc.string cimport memcmp

from momentum._schedule cimport (
    Task, DType, DTYPE_FLOAT32, DTYPE_FLOAT64, RULE_SGD, RULE_HEAVY_BALL,
    RULE_UPDATE_BUFFER, run_tasks, threads_for)

import numpy as np

cnp.import_array()

# Below this many elements the GIL is kept: releasing it costs more than the
# arithmetic, and no other thread could do much in that time.
cdef size_t NOGIL_MIN = 1 << 12


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
    """``a`` and ``b`` share no byte of memory (both are C-contiguous)."""
    cdef size_t a_lo = <size_t>cnp.PyArray_BYTES(a)
    cdef size_t b_lo = <size_t>cnp.PyArray_BYTES(b)
    cdef size_t a_hi = a_lo + <size_t>cnp.PyArray_NBYTES(a)
    cdef size_t b_hi = b_lo + <size_t>cnp.PyArray_NBYTES(b)
    if a_lo < b_hi and b_lo < a_hi:
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


cdef int check_rate(double value, str name, str func) except -1:
    """``value`` is finite and >= 0."""
    if not (isfinite(value) and value >= 0):
        raise ValueError(f"{func}(): '{name}' must be finite and >= 0, got {value!r}")
    return 0


cdef int check_dampening(double value, str func) except -1:
    if not (0 <= value <= 1):
        raise ValueError(f"{func}(): 'dampening' must be in [0, 1], got {value!r}")
    return 0


cdef int check_pair(cnp.ndarray w, str w_name, cnp.ndarray grad, str func,
                    DType* dtype) except -1:
    """The written array ``w`` and ``grad``: supported, alike, laid out, apart."""
    dtype[0] = dtype_of(w, func, w_name)
    dtype_of(grad, func, "grad")
    check_like(grad, "grad", w, w_name, func)
    check_layout(w, w_name, True, func)
    check_layout(grad, "grad", False, func)
    check_disjoint(w, w_name, grad, "grad", func)
    return 0


cdef int check_buf(cnp.ndarray buf, cnp.ndarray param, cnp.ndarray grad,
                   str func) except -1:
    """``buf`` next to checked ``param`` and ``grad``."""
    dtype_of(buf, func, "buf")
    check_like(buf, "buf", param, "param", func)
    check_layout(buf, "buf", True, func)
    check_disjoint(buf, "buf", param, "param", func)
    check_disjoint(buf, "buf", grad, "grad", func)
    return 0


cdef void run_one(Task* task, cnp.ndarray written) noexcept:
    """Run a checked task, without the GIL when it is big enough."""
    task.n = <size_t>cnp.PyArray_SIZE(written)
    task.offset = 0
    cdef int nthreads
    if task.n < NOGIL_MIN:
        run_tasks(task, 1, task.n, 1)
    else:
        with nogil:
            nthreads = threads_for(task.n)
            run_tasks(task, 1, task.n, nthreads)


def update_buffer(buf, grad, *, momentum, dampening=0.0):
    """Update a momentum buffer in place.

    ``buf = momentum * buf + (1 - dampening) * grad``

    The EMA form is ``dampening=momentum``.  ``buf`` and ``grad`` are
    C-contiguous float32 or float64 arrays of one dtype and shape; ``grad`` is
    never written.  Raises TypeError or ValueError, writing nothing, on bad
    input.
    """
    cdef str func = "update_buffer"
    cdef double m = real_arg(momentum, "momentum", func)
    cdef double d = real_arg(dampening, "dampening", func)
    check_rate(m, "momentum", func)
    check_dampening(d, func)
    cdef cnp.ndarray b = as_array(buf, func, "buf")
    cdef cnp.ndarray g = as_array(grad, func, "grad")
    cdef Task task
    check_pair(b, "buf", g, func, &task.dtype)
    task.rule = RULE_UPDATE_BUFFER
    task.param = NULL
    task.grad = cnp.PyArray_BYTES(g)
    task.buf = cnp.PyArray_BYTES(b)
    task.sgd.momentum = m
    task.sgd.dampening = d
    run_one(&task, b)


def sgd(param, grad, buf, *, lr, momentum=0.0, dampening=0.0,
        weight_decay=0.0, bint nesterov=False, bint maximize=False,
        bint first_step=False):
    """One ``torch.optim.SGD`` step for one tensor, in place.

    ::

        g = -grad if maximize else grad
        if weight_decay != 0: g = g + weight_decay * param
        if momentum != 0:
            buf = g if first_step else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        param = param - lr * g

    With ``momentum == 0`` ``buf`` is not touched and may be None.
    ``first_step=True`` starts the buffer as the gradient, as PyTorch's first
    step does.  ``grad`` is never written.  Raises TypeError or ValueError,
    writing nothing, on bad input.
    """
    cdef str func = "sgd"
    cdef Task task
    task.sgd.lr = real_arg(lr, "lr", func)
    task.sgd.momentum = real_arg(momentum, "momentum", func)
    task.sgd.dampening = real_arg(dampening, "dampening", func)
    task.sgd.weight_decay = real_arg(weight_decay, "weight_decay", func)
    task.sgd.nesterov = nesterov
    task.sgd.maximize = maximize
    task.sgd.first_step = first_step
    check_rate(task.sgd.lr, "lr", func)
    check_rate(task.sgd.momentum, "momentum", func)
    check_dampening(task.sgd.dampening, func)
    check_rate(task.sgd.weight_decay, "weight_decay", func)
    if nesterov and (task.sgd.momentum <= 0 or task.sgd.dampening != 0):
        raise ValueError(f"{func}(): nesterov=True needs momentum > 0 and "
                         f"dampening == 0")
    cdef cnp.ndarray p = as_array(param, func, "param")
    cdef cnp.ndarray g = as_array(grad, func, "grad")
    check_pair(p, "param", g, func, &task.dtype)
    cdef bint uses_buf = task.sgd.momentum != 0
    cdef cnp.ndarray b = None
    if buf is not None:
        b = as_array(buf, func, "buf")
        check_buf(b, p, g, func)
    elif uses_buf:
        raise TypeError(f"{func}(): 'buf' is None but momentum is "
                        f"{task.sgd.momentum!r}; pass a buffer array")
    task.rule = RULE_SGD
    task.param = cnp.PyArray_BYTES(p)
    task.grad = cnp.PyArray_BYTES(g)
    task.buf = cnp.PyArray_BYTES(b) if uses_buf else NULL
    run_one(&task, p)


def heavy_ball(param, grad, buf, *, lr, momentum, weight_decay=0.0,
               bint nesterov=False, bint maximize=False):
    """One heavy-ball step for one tensor, the step size inside the buffer.

    ::

        g = -grad if maximize else grad
        if weight_decay != 0: g = g + weight_decay * param
        buf = momentum * buf + lr * g
        param = param - (momentum * buf + lr * g) if nesterov else param - buf

    Keras's ``velocity`` is ``-buf``.  ``grad`` is never written.  Raises
    TypeError or ValueError, writing nothing, on bad input.
    """
    cdef str func = "heavy_ball"
    cdef Task task
    task.heavy_ball.lr = real_arg(lr, "lr", func)
    task.heavy_ball.momentum = real_arg(momentum, "momentum", func)
    task.heavy_ball.weight_decay = real_arg(weight_decay, "weight_decay", func)
    task.heavy_ball.nesterov = nesterov
    task.heavy_ball.maximize = maximize
    check_rate(task.heavy_ball.lr, "lr", func)
    check_rate(task.heavy_ball.momentum, "momentum", func)
    check_rate(task.heavy_ball.weight_decay, "weight_decay", func)
    if nesterov and task.heavy_ball.momentum <= 0:
        raise ValueError(f"{func}(): nesterov=True needs momentum > 0")
    cdef cnp.ndarray p = as_array(param, func, "param")
    cdef cnp.ndarray g = as_array(grad, func, "grad")
    check_pair(p, "param", g, func, &task.dtype)
    if buf is None:
        raise TypeError(f"{func}(): 'buf' must be an array, not None")
    cdef cnp.ndarray b = as_array(buf, func, "buf")
    check_buf(b, p, g, func)
    task.rule = RULE_HEAVY_BALL
    task.param = cnp.PyArray_BYTES(p)
    task.grad = cnp.PyArray_BYTES(g)
    task.buf = cnp.PyArray_BYTES(b)
    run_one(&task, p)
