"""The Adam family through the NumPy API, against PyTorch's own optimizers:
``momentum.adam``/``adamw`` step as ``torch.optim.Adam``/``AdamW`` (the
for-loop implementation) for every flag combination, and ``momentum.lion``
as Lion's formula in torch; plus the contract of ``max`` and ``sign`` the
reference defines (NaN, signed zeros), on every ISA build.

The bitwise parity with ``momentum.reference`` of every rule, dtype mix,
size, ISA and thread count is in test_parity, test_isa, test_half and
test_threads, which iterate the rule table."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import momentum
from momentum import reference

torch = pytest.importorskip("torch")

STEPS = 100
FLAGS = list(itertools.product([False, True], repeat=2))   # amsgrad, maximize


def run_against_torch(rule: str, dtype, amsgrad: bool, maximize: bool, weight_decay: float):
    """STEPS steps of momentum.<rule> and of torch's optimizer on the same
    gradients; returns (ours, torch's) parameters."""
    gen = torch.Generator().manual_seed(7)
    start = torch.randn(513, dtype=dtype, generator=gen)
    theirs = start.clone().requires_grad_(True)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[rule]
    opt = cls([theirs], lr=3e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=weight_decay,
              amsgrad=amsgrad, maximize=maximize, foreach=False)
    param = start.numpy().copy()
    m, v, vmax = (np.zeros_like(param) for _ in range(3))
    for step in range(1, STEPS + 1):
        grad = torch.randn(513, dtype=dtype, generator=gen)
        theirs.grad = grad.clone()
        opt.step()
        getattr(momentum, rule)(param, grad.numpy(), m, v, vmax if amsgrad else None, lr=3e-3,
                                beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=weight_decay,
                                amsgrad=amsgrad, maximize=maximize, step=step)
    return param, theirs.detach().numpy()


@pytest.mark.parametrize("amsgrad, maximize", FLAGS)
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
@pytest.mark.parametrize("rule", ["adam", "adamw"])
def test_float64_steps_as_torch(rule, amsgrad, maximize, weight_decay):
    ours, theirs = run_against_torch(rule, torch.float64, amsgrad, maximize, weight_decay)
    assert np.abs(ours - theirs).max() < 1e-10


@pytest.mark.parametrize("amsgrad, maximize", FLAGS)
@pytest.mark.parametrize("rule", ["adam", "adamw"])
def test_float32_stays_within_a_few_roundings_of_torch(rule, amsgrad, maximize):
    """torch's for-loop Adam does the same operations in the same order but
    one (it divides sqrt(v) by sqrt(bias2) where we multiply by the double
    1 / sqrt(bias2) rounded once: the denominator can differ by a rounding),
    and its kernels (lerp, addcmul, addcdiv) may round an intermediate
    otherwise (a fused multiply-add, say).  Such a difference moves one step's update
    by a relative few 2**-24, at most lr * 2**-20 of the parameter, and Adam's
    update is normalised, so it does not grow from step to step; the
    parameter's own rounding can then differ by an ulp or two.  Bound:
    4 ulps of the largest parameter plus STEPS * lr * 2**-20; measured here
    the largest difference is 1 to 2 ulps (2.4e-7 for parameters below 4)."""
    ours, theirs = run_against_torch(rule, torch.float32, amsgrad, maximize, 0.05)
    ulp = np.spacing(np.abs(theirs).max())
    assert np.abs(ours - theirs).max() <= 4 * ulp + STEPS * 3e-3 * 2.0 ** -20


def torch_lion(p, g, m, lr, beta1, beta2, weight_decay):
    """Lion as lion-pytorch writes it, in torch (sign(0) = 0)."""
    p.mul_(1 - lr * weight_decay)
    update = m.clone().mul_(beta1).add(g, alpha=1 - beta1).sign_()
    p.add_(update, alpha=-lr)
    m.mul_(beta2).add_(g, alpha=1 - beta2)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_lion_steps_as_its_torch_formula(weight_decay):
    gen = torch.Generator().manual_seed(3)
    p = torch.randn(1000, dtype=torch.float64, generator=gen)
    m = torch.zeros_like(p)
    param, exp_avg = p.numpy().copy(), np.zeros(1000)
    for _ in range(STEPS):
        g = torch.randn(1000, dtype=torch.float64, generator=gen)
        torch_lion(p, g, m, 1e-3, 0.9, 0.99, weight_decay)
        momentum.lion(param, g.numpy(), exp_avg, lr=1e-3, beta1=0.9, beta2=0.99,
                      weight_decay=weight_decay)
    assert np.abs(param - p.numpy()).max() < 1e-12
    assert np.abs(exp_avg - m.numpy()).max() < 1e-12


def test_lion_does_not_step_where_the_update_is_zero(isa):
    # c = 0.9 * 0 + 0.1 * 0 = 0: sign(0) = 0, so the parameter keeps its value
    # (DeepSpeed's CPU Lion would step it by lr).
    param = np.array([1.0, -2.0, 0.0, -0.0], np.float32)
    momentum.lion(param, np.zeros(4, np.float32), np.zeros(4, np.float32), lr=0.1)
    assert list(param) == [1.0, -2.0, 0.0, -0.0] and np.signbit(param[3])


def test_max_and_sign_as_the_reference_defines_them(isa):
    """amsgrad's max: NaN on either side is NaN; of equal zeros the new one
    (b) is kept.  Lion's sign: NaN for NaN, +0 for either zero."""
    a = np.array([np.nan, 1.0, 0.0, -0.0, 2.0, 3.0], np.float32)
    b = np.array([1.0, np.nan, -0.0, 0.0, 3.0, 2.0], np.float32)
    out = reference.maximum(a, b)
    assert np.isnan(out[:2]).all()
    assert list(np.signbit(out[2:4])) == [True, False] and list(out[4:]) == [3.0, 3.0]
    s = reference.sign(np.array([np.nan, -0.0, 0.0, -5.0, 7.0], np.float32))
    assert np.isnan(s[0]) and list(s[1:]) == [0.0, 0.0, -1.0, 1.0]
    assert not np.signbit(s[1:3]).any()
    # the kernels agree on every build: max through amsgrad (beta2 = 0, so
    # exp_avg_sq = g * g, and max(max_exp_avg_sq, g * g) is stored)
    n = 6
    vmax = a.copy()
    g = np.sqrt(np.abs(b)).astype(np.float32) * np.where(np.signbit(b), -1, 1).astype(np.float32)
    g[1] = np.nan
    momentum.adam(np.zeros(n, np.float32), g, np.zeros(n, np.float32), np.zeros(n, np.float32),
                  vmax, lr=0.1, beta2=0.0, amsgrad=True)
    want = reference.maximum(a, (np.float32(1.0) * g) * g)
    assert np.array_equal(np.isnan(vmax), np.isnan(want))
    assert np.array_equal(np.signbit(vmax[~np.isnan(want)]), np.signbit(want[~np.isnan(want)]))
