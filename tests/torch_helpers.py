"""Shared by the torch tests: a small fixed network, fixed data, comparisons."""
from __future__ import annotations

import itertools
from typing import Any

import torch


def sgd_flag_combinations(momentum: float, dampening: float) -> list[dict[str, Any]]:
    """Every flag combination torch.optim.SGD accepts, with momentum 0 or
    ``momentum`` and dampening 0 or ``dampening`` (nesterov needs momentum
    and no dampening)."""
    return [dict(momentum=m, dampening=d, nesterov=n, weight_decay=wd, maximize=mx)
            for m, d, n, wd, mx in itertools.product(
                [0.0, momentum], [0.0, dampening], [False, True], [0.0, 1e-2],
                [False, True])
            if not n or (m > 0 and d == 0)]


def make_model(dtype: torch.dtype) -> torch.nn.Module:
    """A 2-layer MLP with fixed initial weights."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(),
                               torch.nn.Linear(16, 3)).to(dtype)


def make_data(dtype: torch.dtype, rows: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed random inputs (rows x 8) and targets (rows x 3)."""
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(rows, 8, dtype=dtype, generator=gen),
            torch.randn(rows, 3, dtype=dtype, generator=gen))


def mse(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((model(x) - y) ** 2).mean()


def flat_params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def assert_same(ours: torch.Tensor, theirs: torch.Tensor, rtol: float) -> None:
    """Equal to ``rtol`` relative to the largest value (elementwise relative
    error is meaningless for weights that pass through zero)."""
    err = (ours - theirs).abs().max().item() / theirs.abs().max().item()
    assert err <= rtol, f"relative difference {err:.3g} > {rtol:g}"


def assert_within_ulps(ours: torch.Tensor, theirs: torch.Tensor, ulps: float) -> None:
    """``|ours - theirs| <= ulps * eps * max|theirs|`` everywhere (complex
    tensors as their real views): test_torch_parity's bound for a step that
    PyTorch computes with fused multiply-adds where we round twice."""
    if theirs.is_complex():
        ours, theirs = torch.view_as_real(ours), torch.view_as_real(theirs)
    scale = theirs.abs().max().item()
    if scale == 0:
        assert torch.equal(ours, theirs)
        return
    worst = (ours.double() - theirs.double()).abs().max().item()
    eps = torch.finfo(theirs.dtype).eps
    assert worst <= ulps * eps * scale, f"{worst / (eps * scale):.3g} eps * scale > {ulps}"


def fallback_warnings(caught) -> list[str]:
    """The messages of momentum.torch.SGD's warnings that torch's own
    arithmetic stepped some tensors, among the warnings ``caught``."""
    return [str(w.message) for w in caught
            if issubclass(w.category, RuntimeWarning)
            and str(w.message).startswith("momentum.torch.SGD: ")]
