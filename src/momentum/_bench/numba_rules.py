"""The benchmark's rules as Numba loops: what a user would write with ``@njit``.

Each loop does the reference's operations in the reference's order for the
hyperparameters the benchmark times (no nesterov, maximize or dampening);
scalars arrive already rounded to the arrays' dtype.  ``parallel=True`` lets
``numba.set_num_threads`` run it on as many threads as the kernels.
"""
import numba


@numba.njit(parallel=True, cache=True)
def update_buffer(buf, grad, momentum, keep):
    """``buf = momentum*buf + keep*grad`` with ``keep = 1 - dampening``."""
    for i in numba.prange(buf.shape[0]):
        buf[i] = momentum * buf[i] + keep * grad[i]


@numba.njit(parallel=True, cache=True)
def sgd(param, grad, buf, lr, momentum, weight_decay):
    """``g = grad + wd*param; buf = momentum*buf + g; param = param - lr*buf``."""
    for i in numba.prange(param.shape[0]):
        g = grad[i] + weight_decay * param[i]
        b = momentum * buf[i] + g
        buf[i] = b
        param[i] = param[i] - lr * b


@numba.njit(parallel=True, cache=True)
def heavy_ball(param, grad, buf, lr, momentum, weight_decay):
    """``g = grad + wd*param; buf = momentum*buf + lr*g; param = param - buf``."""
    for i in numba.prange(param.shape[0]):
        g = grad[i] + weight_decay * param[i]
        b = momentum * buf[i] + lr * g
        buf[i] = b
        param[i] = param[i] - b
