"""The specification of every rule, in plain NumPy: slow, obvious, exact.

Each function has the signature and the per-element order of operations of
its kernel in :mod:`momentum`.  Every hyperparameter is first made a Python
float, which NumPy rounds once to the arrays' dtype where it meets them
(``1 - dampening`` is formed in double precision first); so a NumPy scalar
such as ``np.float64(0.1)`` acts exactly as the Python float ``0.1``.  Every operation rounds, none is fused, so
for float32 and float64 the kernels give bitwise the same result as this
module.  It checks nothing: the kernels' API layer does that.
"""
from __future__ import annotations

import numpy as np

__all__ = ["update_buffer", "sgd", "heavy_ball"]


def update_buffer(buf: np.ndarray, grad: np.ndarray, *, momentum: float,
                  dampening: float = 0.0) -> None:
    """``buf = momentum * buf + (1 - dampening) * grad``, in place."""
    momentum, dampening = float(momentum), float(dampening)
    buf[...] = momentum * buf + (1 - dampening) * grad


def sgd(param: np.ndarray, grad: np.ndarray, buf: np.ndarray | None, *,
        lr: float, momentum: float = 0.0, dampening: float = 0.0,
        weight_decay: float = 0.0, nesterov: bool = False,
        maximize: bool = False, first_step: bool = False) -> None:
    """``torch.optim.SGD``'s step for one tensor, in place::

        g = -grad if maximize else grad
        if weight_decay != 0: g = g + weight_decay * param
        if momentum != 0:
            buf = g if first_step else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        param = param - lr * g
    """
    lr, momentum, dampening, weight_decay = (
        float(lr), float(momentum), float(dampening), float(weight_decay))
    g = -grad if maximize else grad
    if weight_decay != 0:
        g = g + weight_decay * param
    if momentum != 0:
        if first_step:
            buf[...] = g
        else:
            buf[...] = momentum * buf + (1 - dampening) * g
        g = g + momentum * buf if nesterov else buf
    param[...] = param - lr * g


def heavy_ball(param: np.ndarray, grad: np.ndarray, buf: np.ndarray, *,
               lr: float, momentum: float, weight_decay: float = 0.0,
               nesterov: bool = False, maximize: bool = False) -> None:
    """Polyak's heavy ball, step size inside the buffer, in place::

        g = -grad if maximize else grad
        if weight_decay != 0: g = g + weight_decay * param
        buf = momentum * buf + lr * g
        param = param - (momentum * buf + lr * g) if nesterov else param - buf
    """
    lr, momentum, weight_decay = float(lr), float(momentum), float(weight_decay)
    g = -grad if maximize else grad
    if weight_decay != 0:
        g = g + weight_decay * param
    buf[...] = momentum * buf + lr * g
    if nesterov:
        param[...] = param - (momentum * buf + lr * g)
    else:
        param[...] = param - buf
