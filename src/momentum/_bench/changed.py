"""The correctness line: how many 16-bit parameter elements one sgd step
changes, torch's paths against momentum's and the exact step's.

PyTorch 2.13's fused SGD leaves bfloat16 and float16 parameters unchanged in
every full SIMD block (pytorch issue 191763).  Measured here, not assumed:
one first step (the buffer starts as the gradient) from the same standard
normal parameter and gradient, at the typical hyperparameters, and the
fraction of elements whose stored bits changed.  "float64, rounded" is the
step done in float64 and rounded to the parameter's dtype: what an exact
step changes.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

import momentum
from momentum import reference
from momentum._bench.peers import TORCH_MODES, as_tensor
from momentum._bench.rules import TIMED
from momentum.dtypes import numpy_dtype
from momentum.rules import HALF_DTYPES

SIZES = (4096, 4099)
EXACT = "float64, rounded"


def _fraction(before: np.ndarray, after: np.ndarray) -> float:
    """The fraction of elements whose bits differ."""
    return float(np.mean(before.view(np.uint16) != after.view(np.uint16)))


def _torch_step(mode: str, param: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """The bits of ``param`` after one torch.optim.SGD step in ``mode`` (on copies)."""
    import torch
    p = as_tensor(param.copy()).requires_grad_()
    p.grad = as_tensor(grad.copy())
    torch.optim.SGD([p], **TIMED["sgd"], **TORCH_MODES[mode]).step()
    return p.detach().view(torch.int16).numpy()


def row(dtype: str, n: int) -> dict:
    """The fractions changed by each candidate for one dtype and size, and
    the reason for each candidate that cannot run here."""
    out: dict = {"dtype": dtype, "n": n, "changed": {}, "missing": {}}
    try:
        np_dtype = numpy_dtype(dtype)
    except ImportError:
        out["missing"]["all"] = "ml_dtypes not installed"
        return out
    rng = np.random.default_rng(n)
    param, grad = (rng.standard_normal(n, dtype=np.float32).astype(np_dtype) for _ in range(2))
    for mode in TORCH_MODES:
        try:
            out["changed"][mode] = _fraction(param, _torch_step(mode, param, grad))
        except ImportError:
            out["missing"][mode] = "not installed"
    ours = param.copy()
    momentum.sgd(ours, grad, np.zeros_like(param), **TIMED["sgd"], first_step=True)
    out["changed"]["momentum"] = _fraction(param, ours)
    exact = param.astype(np.float64)
    reference.sgd(exact, grad.astype(np.float64), np.zeros(n), **TIMED["sgd"], first_step=True)
    out["changed"][EXACT] = _fraction(param, exact.astype(np_dtype))
    return out


def rows(sizes: Sequence[int] = SIZES) -> list[dict]:
    """row() for every 16-bit dtype and size."""
    return [row(dtype, n) for dtype in HALF_DTYPES for n in sizes]
