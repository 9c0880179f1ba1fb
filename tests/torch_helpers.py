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


# SGD's flag cases the 16-bit tests step, and each rounding's state entry.
FLAG_CASES = {
    "momentum": dict(momentum=0.9),
    "nesterov, weight decay": dict(momentum=0.9, nesterov=True, weight_decay=0.01),
    "dampening, maximize": dict(momentum=0.5, dampening=0.25, maximize=True),
    "no momentum": dict(weight_decay=0.1),
}
KEYS = {"kahan": "kahan_comp", "master": "master_param"}


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


def numpy_of(t: torch.Tensor):
    """A NumPy view of a dense tensor's memory, in memory order (the order
    the kernels step and key stochastic rounding by); bfloat16 as
    ml_dtypes.bfloat16."""
    flat = t.detach().as_strided((t.numel(),), (1,))
    if flat.dtype == torch.bfloat16:
        import ml_dtypes
        return flat.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return flat.numpy()


class Reference:
    """momentum.reference.sgd's steps over copies of ``params``, as
    momentum.torch.SGD with these arguments should take them: a buffer
    (of ``state_dtype`` for a 16-bit parameter) made at a parameter's first
    step, the rounding's compensation (zeros) or float32 master (the
    parameter) too; ``step`` counts the steps, ``tensor`` is
    ``first_index`` plus the index in ``params``."""

    def __init__(self, params: list[torch.Tensor], *, lr: float, state_dtype=None,
                 rounding: str = "nearest", state_rounding: str = "nearest", seed: int = 0,
                 first_index: int = 0, **flags: Any) -> None:
        self.params = [numpy_of(p).copy() for p in params]
        self.bufs: list[Any] = [None] * len(params)
        self.extras: list[Any] = [None] * len(params)
        self.hyper = dict(flags, lr=lr)
        self.state_dtype, self.rounding, self.state_rounding = state_dtype, rounding, state_rounding
        self.seed, self.steps, self.first_index = seed, 0, first_index

    def step(self, grads: list[torch.Tensor | None]) -> None:
        import numpy as np

        from momentum import reference
        for i, (p, g) in enumerate(zip(self.params, grads)):
            if g is None:
                continue
            half = p.dtype.itemsize == 2
            rounding = self.rounding if half else "nearest"
            first = self.hyper.get("momentum", 0) != 0 and self.bufs[i] is None
            if first:
                wide = half and self.state_dtype is torch.float32
                self.bufs[i] = np.empty(p.shape, np.float32 if wide else p.dtype)
            if self.extras[i] is None and rounding in ("kahan", "master"):
                self.extras[i] = np.zeros_like(p) if rounding == "kahan" else p.astype(np.float32)
            extra = {"comp" if rounding == "kahan" else "master": self.extras[i]} \
                if rounding in ("kahan", "master") else {}
            reference.sgd(p, numpy_of(g).copy(), self.bufs[i], **self.hyper, first_step=first,
                          rounding=rounding, state_rounding=self.state_rounding, seed=self.seed,
                          step=self.steps, tensor=self.first_index + i, **extra)
        self.steps += 1


def assert_bitwise(tensor: torch.Tensor | None, array: Any, what: str) -> None:
    """``tensor``'s memory holds exactly ``array``'s bytes (both None alike)."""
    if array is None or tensor is None:
        assert tensor is None and array is None, what
        return
    ours = numpy_of(tensor)
    assert ours.dtype == array.dtype, (what, ours.dtype, array.dtype)
    assert ours.tobytes() == array.tobytes(), what
