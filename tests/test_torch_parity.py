"""Against the optimizers users know: ``torch.optim.SGD`` (within a derived
bound, as PyTorch fuses multiply-adds) and Keras's SGD momentum closed form
(bitwise)."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import momentum
from conftest import assert_bitwise_equal

torch = pytest.importorskip("torch")

from torch_helpers import sgd_flag_combinations  # noqa: E402

STEPS = 50
N = 10_007   # vector body plus a remainder on every SIMD width
DTYPES = [np.float32, np.float64]
LR, MOMENTUM = 0.1, 0.9

# How far from PyTorch 50 steps may land, in units of eps * max|expected|.
#
# PyTorch's CPU kernels compute ``x.add(y, alpha=a)`` as one fused multiply-add
# in their vectorised paths; we round the product first.  At each of the (at
# most four) such sites per step the two results differ by at most the extra
# rounding of the product plus a flipped rounding of the sum: one ulp of the
# largest magnitude in play.  The buffer's differences shrink by ``momentum``
# every step; the parameter's add up.  So after STEPS steps the difference is
# at most about 2 ulps per step: ``2 * STEPS * eps * scale`` (100 eps; 1.2e-5
# of the scale for float32, 2.2e-14 for float64, tighter than 1e-12).
# Rounding differences are signed and nearly independent, so in practice they
# add up like a random walk: measured over every flag combination, 3 seeds and
# lr in {0.01, 0.1, 1}, the largest was 2.4 eps * scale for both dtypes.  A
# wrong formula or order of operations misses by 1e-3 of the scale or more.
# The elementwise relative error is no measure: a parameter that crosses zero
# keeps an absolute error of the scale's ulps.
TORCH_ULPS = 2 * STEPS


def assert_near(actual: np.ndarray, expected: np.ndarray, ulps: float) -> None:
    """``|actual - expected| <= ulps * eps * max|expected|`` everywhere."""
    eps = np.finfo(expected.dtype).eps
    bound = ulps * eps * np.abs(expected).max()
    worst = np.abs(actual.astype(np.float64) - expected).max()
    assert worst <= bound, f"{worst / (eps * np.abs(expected).max()):.3g} eps * scale"


def torch_cases() -> list[dict[str, Any]]:
    """Every flag combination torch.optim.SGD accepts, at learning rate LR."""
    return [dict(lr=LR, **flags)
            for flags in sgd_flag_combinations(momentum=MOMENTUM, dampening=0.3)]


def hyper_id(h: dict[str, Any]) -> str:
    return "-".join(f"{k}={v}" for k, v in h.items() if k != "lr")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hyper", torch_cases(), ids=hyper_id)
def test_sgd_matches_torch(hyper, dtype, rng):
    param = rng.standard_normal(N).astype(dtype)
    tparam = torch.tensor(param)
    opt = torch.optim.SGD([tparam], **hyper)
    buf = np.zeros_like(param) if hyper["momentum"] else None
    for step in range(STEPS):
        grad = rng.standard_normal(N).astype(dtype)
        tparam.grad = torch.tensor(grad)
        opt.step()
        # PyTorch's buffer starts as the first gradient.
        momentum.sgd(param, grad, buf, first_step=step == 0, **hyper)
    assert_near(param, tparam.numpy(), TORCH_ULPS)
    if buf is not None:
        assert_near(buf, opt.state[tparam]["momentum_buffer"].numpy(), TORCH_ULPS)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nesterov", [False, True])
def test_heavy_ball_is_keras_sgd(nesterov, dtype, rng):
    """Keras: ``v = m * v - lr * g``; ``w = w + v``, or with Nesterov
    ``w = w + (m * v - lr * g)`` (Keras adds the bracket as one tensor).

    With ``v = -buf`` this is bitwise our heavy ball: negation is exact and
    round-to-nearest is symmetric, so ``m * (-b) - lr * g == -(m * b + lr * g)``
    and ``w + (-x) == w - x`` bit for bit.
    """
    param = rng.standard_normal(N).astype(dtype)
    buf = np.zeros_like(param)
    w, v = param.copy(), -buf
    for _ in range(STEPS):
        grad = rng.standard_normal(N).astype(dtype)
        momentum.heavy_ball(param, grad, buf, lr=LR, momentum=MOMENTUM, nesterov=nesterov)
        v = MOMENTUM * v - LR * grad
        w = w + (MOMENTUM * v - LR * grad) if nesterov else w + v
        assert_bitwise_equal(buf, -v)
        assert_bitwise_equal(param, w)


def test_heavy_ball_is_keras_documented_nesterov(rng):
    """Keras documents Nesterov as ``w = w + m * v - lr * g``, which rounds
    ``w + m * v`` first: equal to ours only up to rounding, so within the
    same per-step bound as above (float64; 2.2e-14 of the scale)."""
    param = rng.standard_normal(N)
    buf = np.zeros_like(param)
    w, v = param.copy(), -buf
    for _ in range(STEPS):
        grad = rng.standard_normal(N)
        momentum.heavy_ball(param, grad, buf, lr=LR, momentum=MOMENTUM, nesterov=True)
        v = MOMENTUM * v - LR * grad
        w = w + MOMENTUM * v - LR * grad
    assert_bitwise_equal(buf, -v)
    assert_near(param, w, TORCH_ULPS)   # measured: 4 eps * scale
