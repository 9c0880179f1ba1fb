# The checked single-array entry points: every argument is checked (in
# _checks) before the first write; then one task is run, with the GIL
# released when the array is big enough for that to pay.
#
# For small arrays this layer is the whole cost of a call, so it builds the
# task on the stack and calls no Python code on the success path.
cimport numpy as cnp
from libc.stddef cimport size_t

from momentum._checks cimport (
    as_array, check_buf, check_pair, heavy_ball_hyperparameters,
    sgd_hyperparameters, update_buffer_hyperparameters)
from momentum._schedule cimport (
    Task, RULE_SGD, RULE_HEAVY_BALL, RULE_UPDATE_BUFFER, run_checked)

cnp.import_array()

cdef void run_one(Task* task, cnp.ndarray written) noexcept:
    """Run a checked task over every element of ``written``."""
    task.n = <size_t>cnp.PyArray_SIZE(written)
    task.offset = 0
    run_checked(task, 1, task.n)


def update_buffer(buf, grad, *, momentum, dampening=0.0):
    """Update a momentum buffer in place.

    ``buf = momentum * buf + (1 - dampening) * grad``

    The EMA form is ``dampening=momentum``.  ``buf`` and ``grad`` are
    C-contiguous float32 or float64 arrays of one dtype and shape; ``grad`` is
    never written.  Raises TypeError or ValueError, writing nothing, on bad
    input.
    """
    cdef str func = "update_buffer"
    cdef Task task
    update_buffer_hyperparameters(&task.sgd, momentum, dampening, func)
    cdef cnp.ndarray b = as_array(buf, func, "buf")
    cdef cnp.ndarray g = as_array(grad, func, "grad")
    check_pair(b, "buf", g, "grad", func, &task.dtype)
    task.rule = RULE_UPDATE_BUFFER
    task.param = NULL
    task.grad = cnp.PyArray_BYTES(g)
    task.buf = cnp.PyArray_BYTES(b)
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
    sgd_hyperparameters(&task.sgd, lr, momentum, dampening, weight_decay,
                        nesterov, maximize, first_step, func)
    cdef cnp.ndarray p = as_array(param, func, "param")
    cdef cnp.ndarray g = as_array(grad, func, "grad")
    check_pair(p, "param", g, "grad", func, &task.dtype)
    cdef bint uses_buf = task.sgd.momentum != 0
    cdef cnp.ndarray b = None
    if buf is not None:
        b = as_array(buf, func, "buf")
        check_buf(b, "buf", p, "param", g, "grad", uses_buf, func)
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
    heavy_ball_hyperparameters(&task.heavy_ball, lr, momentum, weight_decay,
                               nesterov, maximize, func)
    cdef cnp.ndarray p = as_array(param, func, "param")
    cdef cnp.ndarray g = as_array(grad, func, "grad")
    check_pair(p, "param", g, "grad", func, &task.dtype)
    if buf is None:
        raise TypeError(f"{func}(): 'buf' must be an array, not None")
    cdef cnp.ndarray b = as_array(buf, func, "buf")
    check_buf(b, "buf", p, "param", g, "grad", True, func)
    task.rule = RULE_HEAVY_BALL
    task.param = cnp.PyArray_BYTES(p)
    task.grad = cnp.PyArray_BYTES(g)
    task.buf = cnp.PyArray_BYTES(b)
    run_one(&task, p)
