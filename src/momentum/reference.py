"""The specification of every rule, in plain NumPy: slow, obvious, exact.

Each function has the signature and the per-element order of operations of
its kernel in :mod:`momentum`.  Every hyperparameter is first made a Python
float, which NumPy rounds once to the arrays' dtype where it meets them
(``1 - dampening`` is formed in double precision first); so a NumPy scalar
such as ``np.float64(0.1)`` acts exactly as the Python float ``0.1``.  Every
operation rounds, none is fused, so the kernels give bitwise the same result
as this module.  It checks nothing: the kernels' API layer does that.

16-bit arrays (NumPy float16, ml_dtypes.bfloat16) are computed on float32
copies (exact), by the same formula, and each written array is stored back
once (:func:`_stored`): by ``astype`` (round to nearest even), by
:func:`round_stochastic`, Kahan-compensated, or from a float32 master.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np

from momentum.rules import RULES

__all__ = ["update_buffer", "sgd", "heavy_ball", "adam", "adamw", "lion", "random_bits",
           "round_stochastic"]

_M64 = (1 << 64) - 1


def _mix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _hash32(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def random_bits(n: int, *, seed: int, step: int, tensor: int, array: int,
                first: int = 0) -> np.ndarray:
    """The 32 random bits (uint32) of elements ``first .. first + n - 1`` of
    array number ``array`` of a tensor: a counter-based hash of (seed, step,
    tensor, array, element index), so any split of the work draws the same
    bits::

        key = mix64(mix64(mix64(mix64(seed) ^ step) ^ tensor) ^ (array | (i >> 32) << 8))
        bits = hash32(low32(i) ^ low32(key)) ^ high32(key)

    (``mix64``: SplitMix64's finaliser; ``hash32``: Wellons' lowbias32).
    """
    out = np.empty(n, np.uint32)
    base = _mix64(_mix64(_mix64(seed) ^ step) ^ tensor)
    end = first + n
    for high in range(first >> 32, ((end - 1) >> 32) + 1 if n else first >> 32):
        key = _mix64(base ^ (array | high << 8))
        lo, hi = max(first, high << 32), min(end, (high + 1) << 32)
        index = np.arange(lo, hi, dtype=np.uint64).astype(np.uint32)
        with np.errstate(over="ignore"):
            out[lo - first:hi - first] = (_hash32(index ^ np.uint32(key & 0xFFFFFFFF))
                                          ^ np.uint32(key >> 32))
    return out


def round_stochastic(x: np.ndarray, dtype: np.dtype, bits: np.ndarray) -> np.ndarray:
    """float32 ``x`` rounded stochastically to the 16-bit ``dtype`` with the
    random ``bits`` (uint32, one per element): the bits below the kept ones
    are added and the sum truncated, so a value rounds up with probability
    the fraction it drops (bfloat16: 16 bits; float16: 13 bits for normal
    results; below 2**-14 it rounds up to the next multiple of 2**-24 when
    ``(bits >> 8) / 2**24 < dropped fraction``).  NaN and infinity round as
    ``astype`` does; float16 magnitudes between 65504 and 65536 round to
    infinity with the probability of their distance above 65504 (as to a
    next value 65536), those of 65536 and over always.
    """
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    a, sign = u & 0x7FFFFFFF, (u >> 16) & 0x8000
    nan = np.isnan(x)
    with np.errstate(all="ignore"):
        nearest = np.asarray(x, np.float32).astype(dtype).view(np.uint16).astype(np.uint64)
    if np.dtype(dtype).name == "bfloat16":
        r = (u + (bits >> 16)) >> 16
        r = np.where(nan | (a == 0x7F800000), nearest, r)
    else:
        normal = (a - 0x38000000 + (bits >> 19)) >> 13
        t = np.where(a < 0x38800000, a, 0).astype(np.uint32).view(np.float32) * np.float32(2**24)
        whole = t.astype(np.int32)
        below = t - whole.astype(np.float32)
        up = (bits >> 8).astype(np.float32) * np.float32(2**-24) < below
        sub = whole.astype(np.uint64) + up
        r = sign | np.where(a >= 0x47800000, 0x7C00, np.where(a >= 0x38800000, normal, sub))
        r = np.where(nan, nearest, r)
    return r.astype(np.uint16).view(dtype)


def _is_half(a: np.ndarray | None) -> bool:
    return a is not None and a.dtype.itemsize == 2


def _stored(name: str) -> Callable:
    """The rule ``name``'s specification for every storage: ``formula`` (the
    decorated function) runs on float32 copies of 16-bit arrays (and, with
    rounding 'master', on the master in the param's place), then each
    written array is stored once."""
    rule = RULES[name]
    written = [a.written for a in rule.arrays]
    own_step = any(h.name == "step" for h in rule.hypers)

    def wrap(formula):
        @functools.wraps(formula)
        def stored_step(*arrays, rounding="nearest", state_rounding="nearest", master=None,
                        comp=None, seed=0, tensor=0, **hyper):
            # the stochastic key's step: the rule's own step count where it has one
            step = hyper.get("step", 1) if own_step else hyper.pop("step", 0)
            own = list(arrays)
            if rounding == "master":
                own[rule.param] = master
            if not any(map(_is_half, own)):
                formula(*own, **hyper)
            else:
                work = [a.astype(np.float32) if _is_half(a) else a for a in own]
                formula(*work, **hyper)
                for i, (into, value) in enumerate(zip(own, work)):
                    if not (written[i] and _is_half(into)):
                        continue
                    stochastic = (rounding if i == rule.param else state_rounding) == "stochastic"
                    if i == rule.param and rounding == "kahan":
                        _kahan(into, comp, value)
                    elif stochastic:
                        bits = random_bits(into.size, seed=seed, step=step, tensor=tensor,
                                           array=i).reshape(into.shape)
                        into[...] = round_stochastic(value, into.dtype, bits)
                    else:
                        into[...] = value.astype(into.dtype)
            if rounding == "master":
                arrays[rule.param][...] = master.astype(arrays[rule.param].dtype)
        return stored_step
    return wrap


def _kahan(param: np.ndarray, comp: np.ndarray, fresh: np.ndarray) -> None:
    """Store ``fresh`` (the rule's float32 result) into the 16-bit ``param``
    with Kahan compensation ``comp``::

        y = (fresh - param) + comp;  s = param + y
        if y or s is not finite:  param, comp = round(fresh), 0
        else:  s = s if s != 0 else copysign(0, fresh)
               param, comp = round(s), round(y - (round(s) - param))
               (comp = 0 where round(s) overflows to infinity)
    """
    p, c = param.astype(np.float32), comp.astype(np.float32)
    with np.errstate(all="ignore"):
        y = (fresh - p) + c
        s = p + y
        plain = ~np.isfinite(y) | ~np.isfinite(s)
        s = np.where(plain, fresh, np.where(s == 0, np.copysign(s, fresh), s))
        param[...] = s.astype(param.dtype)
        stored = param.astype(np.float32)
        carry = np.where(plain | ~np.isfinite(stored), np.float32(0), y - (stored - p))
    comp[...] = carry.astype(comp.dtype)


@_stored("update_buffer")
def update_buffer(buf: np.ndarray, grad: np.ndarray, *, momentum: float,
                  dampening: float = 0.0) -> None:
    """``buf = momentum * buf + (1 - dampening) * grad``, in place."""
    momentum, dampening = float(momentum), float(dampening)
    buf[...] = momentum * buf + (1 - dampening) * grad


@_stored("sgd")
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


@_stored("heavy_ball")
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


def maximum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a`` where ``a > b`` or ``a`` is NaN, else ``b``: NaN on either side
    is NaN, and of two equal zeros ``b``'s sign is kept."""
    return np.where((a > b) | np.isnan(a), a, b)


def sign(x: np.ndarray) -> np.ndarray:
    """1, -1, +0 for either zero, NaN for NaN (``x - x``)."""
    return np.where(x > 0, x.dtype.type(1), np.where(x < 0, x.dtype.type(-1), x - x))


def _adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, lr, beta1, beta2, eps,
          weight_decay, amsgrad, maximize, step, decoupled) -> None:
    lr, beta1, beta2, eps, weight_decay, step = (
        float(lr), float(beta1), float(beta2), float(eps), float(weight_decay), float(step))
    bias1, bias2 = 1 - beta1 ** step, 1 - beta2 ** step
    step_size, inv_root2 = lr / bias1, 1 / math.sqrt(bias2)
    g = -grad if maximize else grad
    p = param
    if weight_decay != 0:
        if decoupled:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
    exp_avg[...] = exp_avg + (1 - beta1) * (g - exp_avg)
    exp_avg_sq[...] = beta2 * exp_avg_sq + (1 - beta2) * g * g
    v = exp_avg_sq
    if amsgrad:
        max_exp_avg_sq[...] = maximum(max_exp_avg_sq, exp_avg_sq)
        v = max_exp_avg_sq
    param[...] = p - step_size * (exp_avg / (np.sqrt(v) * inv_root2 + eps))


@_stored("adam")
def adam(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray, exp_avg_sq: np.ndarray,
         max_exp_avg_sq: np.ndarray | None, *, lr: float, beta1: float = 0.9,
         beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
         amsgrad: bool = False, maximize: bool = False, step: int = 1) -> None:
    """``torch.optim.Adam``'s step for one tensor (L2 weight decay), in place::

        bias1, bias2 = 1 - beta1 ** step, 1 - beta2 ** step    # in double
        g = -grad if maximize else grad
        if weight_decay != 0: g = g + weight_decay * param
        exp_avg = exp_avg + (1 - beta1) * (g - exp_avg)
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g
        v = exp_avg_sq
        if amsgrad: max_exp_avg_sq = v = maximum(max_exp_avg_sq, exp_avg_sq)
        param = param - (lr / bias1) * (exp_avg / (sqrt(v) * (1 / sqrt(bias2)) + eps))
    """
    _adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, lr, beta1, beta2, eps,
          weight_decay, amsgrad, maximize, step, False)


@_stored("adamw")
def adamw(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray, exp_avg_sq: np.ndarray,
          max_exp_avg_sq: np.ndarray | None, *, lr: float, beta1: float = 0.9,
          beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
          amsgrad: bool = False, maximize: bool = False, step: int = 1) -> None:
    """``torch.optim.AdamW``'s step for one tensor, in place: as :func:`adam`
    but with decoupled weight decay, ``param = param * (1 - lr * weight_decay)``
    first (and no decay in the gradient)."""
    _adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, lr, beta1, beta2, eps,
          weight_decay, amsgrad, maximize, step, True)


@_stored("lion")
def lion(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray, *, lr: float,
         beta1: float = 0.9, beta2: float = 0.99, weight_decay: float = 0.0,
         maximize: bool = False) -> None:
    """Lion (Chen et al. 2023) for one tensor, in place::

        g = -grad if maximize else grad
        c = beta1 * exp_avg + (1 - beta1) * g
        if weight_decay != 0: param = param * (1 - lr * weight_decay)
        param = param - lr * sign(c)
        exp_avg = beta2 * exp_avg + (1 - beta2) * g
    """
    lr, beta1, beta2, weight_decay = float(lr), float(beta1), float(beta2), float(weight_decay)
    g = -grad if maximize else grad
    c = beta1 * exp_avg + (1 - beta1) * g
    p = param * (1 - lr * weight_decay) if weight_decay != 0 else param
    param[...] = p - lr * sign(c)
    exp_avg[...] = beta2 * exp_avg + (1 - beta2) * g
