"""``momentum.torch.Lion``: lion-pytorch's ``Lion`` on the ``lion`` kernels
(see :mod:`momentum._torch_step`).  Per parameter (Chen et al. 2023)::

    g = -grad if maximize else grad
    c = beta1 * exp_avg + (1 - beta1) * g
    if weight_decay != 0: param = param * (1 - lr * weight_decay)
    param = param - lr * sign(c)              # sign(0) = 0
    exp_avg = beta2 * exp_avg + (1 - beta2) * g
"""
from __future__ import annotations

from typing import Any

import torch

from momentum._torch_engine import KernelStep, Plan
from momentum._torch_step import (
    check_storage, hypers_of, scalar, state_dtype)

__all__ = ["Lion"]

class Lion(KernelStep, torch.optim.Optimizer):
    """Lion with lion-pytorch's constructor and state (``state[p]["exp_avg"]``,
    zeros at a parameter's first step).

    ``decoupled_weight_decay=True`` divides ``weight_decay`` by the
    constructor's ``lr`` (lion-pytorch's meaning); ``use_triton`` must be
    False (a CUDA kernel).  Beyond lion-pytorch: ``maximize``, and the
    16-bit options of momentum.torch.SGD (``state_dtype``, ``rounding``,
    ``state_rounding``, ``seed``; the stochastic key's step is the group's
    ``step``, counted as SGD counts it).  Tensors the kernels cannot step
    in place are stepped with the same arithmetic in torch operations, with
    a RuntimeWarning once per reason.  AMP's ``grad_scale``/``found_inf``
    are taken as by momentum.torch.Adam.
    """

    _step_supports_amp_scaling = True

    def __init__(self, params: Any, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, use_triton: bool = False,
                 decoupled_weight_decay: bool = False, *, maximize: bool = False,
                 state_dtype: torch.dtype | None = None, rounding: str = "nearest",
                 state_rounding: str = "nearest", seed: int = 0) -> None:
        if not lr > 0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not all(0.0 <= beta <= 1.0 for beta in betas):
            raise ValueError(f"Invalid betas: {betas}")
        if use_triton:
            raise ValueError("momentum.torch.Lion: use_triton=True is lion-pytorch's CUDA "
                             "kernel; these kernels run on CPU tensors")
        check_storage("momentum.torch.Lion", rounding, state_rounding, seed, state_dtype)
        self._init_lr = lr
        self.decoupled_wd = decoupled_weight_decay
        self._warned: set[str] = set()
        self._plans: dict[int, Plan] = {}
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay,
                                      maximize=maximize, state_dtype=state_dtype,
                                      rounding=rounding, state_rounding=state_rounding,
                                      seed=seed, step=0))

    def __getstate__(self) -> dict[str, Any]:
        """What ``torch.optim.Optimizer`` pickles, and what decoupled weight
        decay needs (a copy without them could not step)."""
        return dict(super().__getstate__(), decoupled_wd=self.decoupled_wd,
                    _init_lr=self._init_lr)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """torch's, and this optimizer's options for a group of lion-pytorch's state dict."""
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in dict(maximize=False, state_dtype=None, rounding="nearest",
                                   state_rounding="nearest", seed=0, step=0).items():
                group.setdefault(key, value)
        self.__dict__.setdefault("_warned", set())
        self._plans = {}  # a copy or a loaded state makes its own

    def _rule(self, group: dict[str, Any]) -> str:
        """The kernels' rule."""
        return "lion"

    def _hypers(self, group: dict[str, Any], where: str) -> tuple[Any, ...]:
        """The group's hyperparameters in the table's order, read afresh each
        step; ``decoupled_weight_decay`` divides weight_decay by the
        constructor's lr; its storage options checked."""
        check_storage(where, group["rounding"], group["state_rounding"], group["seed"],
                      group["state_dtype"])
        beta1, beta2 = group["betas"]
        return hypers_of("lion", dict(lr=scalar(group["lr"], "lr", where), beta1=beta1,
                                      beta2=beta2, weight_decay=self._decay(group, where),
                                      maximize=group["maximize"]))

    def _decay(self, group: dict[str, Any], where: str = "Lion.step()") -> Any:
        """The weight decay the rule takes."""
        wd = scalar(group["weight_decay"], "weight_decay", where)
        return wd / self._init_lr if self.decoupled_wd else wd

    def _new_state(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, torch.Tensor]:
        """A first step's state: zeros, in the dtype the group's state_dtype gives it."""
        return {"exp_avg": torch.zeros_like(p, dtype=state_dtype(p, group))}

    def _torch_step(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        """Step ``params`` (with gradients) with Lion's arithmetic in torch operations."""
        beta1, beta2 = group["betas"]
        for p in params:
            _torch_lion(p, p.grad, self._state_of(p, group)["exp_avg"],
                        scalar(group["lr"], "lr", "Lion.step()"), self._decay(group), beta1,
                        beta2, group["maximize"])


def _torch_lion(p: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, lr: float,
                wd: float, beta1: float, beta2: float, maximize: bool) -> None:
    """One Lion step of one tensor in torch operations (the fallback)."""
    g = -grad if maximize else grad
    c = exp_avg * beta1 + g * (1 - beta1)
    if wd != 0:
        p.mul_(1 - lr * wd)
    p.sub_(torch.sign(c) * lr)
    exp_avg.mul_(beta2).add_(g * (1 - beta2))
