"""``momentum.torch.Lion``: lion-pytorch's ``Lion`` on the ``lion`` kernels
(see :mod:`momentum._torch_step`).  Per parameter (Chen et al. 2023)::

    g = -grad if maximize else grad
    c = beta1 * exp_avg + (1 - beta1) * g
    if weight_decay != 0: param = param * (1 - lr * weight_decay)
    param = param - lr * sign(c)              # sign(0) = 0
    exp_avg = beta2 * exp_avg + (1 - beta2) * g
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from momentum import foreach
from momentum._torch_step import (
    EXTRA_KEYS, HALF, closure_and_amp, array, check_storage, extras, kernel_reason, new_extra,
    reason, rounding_extra, scalar, state_dtype, unscale, warn_once)

__all__ = ["Lion"]

_STORAGE = ("state_dtype", "rounding", "state_rounding", "seed")


class Lion(torch.optim.Optimizer):
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
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay,
                                      maximize=maximize, state_dtype=state_dtype,
                                      rounding=rounding, state_rounding=state_rounding,
                                      seed=seed, step=0))

    def __setstate__(self, state: dict[str, Any]) -> None:
        """torch's, and this optimizer's options for a group of lion-pytorch's state dict."""
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in dict(maximize=False, state_dtype=None, rounding="nearest",
                                   state_rounding="nearest", seed=0, step=0).items():
                group.setdefault(key, value)
        self.__dict__.setdefault("_warned", set())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's, converting a 16-bit parameter's exp_avg to the dtype its
        group's state_dtype gives it (torch casts it to the parameter's)."""
        super().load_state_dict(state_dict)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [(p, g) for g in self.param_groups for p in g["params"]]
        for saved_id, (p, group) in zip(saved_ids, params):
            saved = state_dict["state"].get(saved_id)
            if p.dtype in HALF and saved:
                for key, value in saved.items():
                    dtype = torch.float32 if key == "master_param" else \
                        state_dtype(p, group) if key == "exp_avg" else p.dtype
                    self.state[p][key] = value.to(dtype=dtype, copy=True)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One Lion step over every group; returns ``closure()``'s loss.
        A step with ``found_inf`` set nonzero writes nothing (no state made,
        the group's step not counted)."""
        loss, skip, grad_scale = closure_and_amp(self, closure)
        if skip:
            return loss
        calls, fallbacks, entered, stale, grads = [], [], [], [], []
        first_index = 0
        for gi, group in enumerate(self.param_groups):
            where = f"Lion.step(): param_groups[{gi}]"
            check_storage(where, group["rounding"], group["state_rounding"], group["seed"],
                          group["state_dtype"])
            beta1, beta2 = group["betas"]
            lr = scalar(group["lr"], "lr", where)
            wd = scalar(group["weight_decay"], "weight_decay", where)
            if self.decoupled_wd:
                wd /= self._init_lr
            call = dict(params=[], grads=[], exp_avgs=[], masters=[], comps=[], tensors=[],
                        lr=lr, beta1=beta1, beta2=beta2, weight_decay=wd,
                        maximize=group["maximize"], rounding=group["rounding"],
                        state_rounding=group["state_rounding"], seed=group["seed"],
                        step=group["step"])
            fallback = []
            for i, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                grads.append(p.grad)
                state = self.state.get(p) or {}
                if "exp_avg" not in state:
                    state = {"exp_avg": torch.zeros_like(p, dtype=state_dtype(p, group))}
                    entered.append((p, state))
                key, extra_dtype, extra = rounding_extra(p, self.state.get(p, {}), group)
                tensors, dtypes = [p.grad, state["exp_avg"]], [p.dtype, state_dtype(p, group)]
                if extra is not None:  # a loaded state's own, laid out as it may be
                    tensors.append(extra)
                    dtypes.append(extra_dtype)
                why = kernel_reason(p, tensors, dtypes)
                if why is not None:
                    warn_once(self, "Lion", why)
                    fallback.append((p, state))
                    continue
                stale += [(p, k) for k in EXTRA_KEYS if k != key and k in state]
                if key and extra is None:
                    extra = new_extra(p, key)
                    entered.append((p, {key: extra}))
                for name, t in (("params", p), ("grads", p.grad),
                                ("exp_avgs", state["exp_avg"])):
                    call[name].append(array(t))
                call["comps"].append(array(extra) if key == "kahan_comp" else None)
                call["masters"].append(array(extra) if key == "master_param" else None)
                call["tensors"].append(first_index + i)
            calls.append(call)
            fallbacks.append((lr, wd, fallback))
            first_index += len(group["params"])
        unscale(grads, grad_scale)
        try:
            foreach.lion_groups([extras(c) for c in calls])
        except (TypeError, ValueError) as error:
            if grad_scale is not None and grads:  # undo, exact for power-of-two scales
                torch._foreach_mul_(grads, grad_scale.item())
            raise type(error)(f"Lion.step(): {reason(str(error))}") from None
        for p, state in entered:
            self.state[p].update(state)
        for p, key in stale:
            self.state[p].pop(key, None)
        for group, (lr, wd, fallback) in zip(self.param_groups, fallbacks):
            group["step"] += 1
            beta1, beta2 = group["betas"]
            for p, state in fallback:
                # the parameter moves away from a rounding's extra entry: dropped, as
                # Adam's and SGD's fallbacks drop it
                for key in EXTRA_KEYS:
                    self.state[p].pop(key, None)
                _torch_lion(p, p.grad, self.state[p]["exp_avg"], lr, wd, beta1, beta2,
                            group["maximize"])
        return loss


def _torch_lion(p: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, lr: float,
                wd: float, beta1: float, beta2: float, maximize: bool) -> None:
    """One Lion step of one tensor in torch operations (the fallback)."""
    g = -grad if maximize else grad
    c = exp_avg * beta1 + g * (1 - beta1)
    if wd != 0:
        p.mul_(1 - lr * wd)
    p.sub_(torch.sign(c) * lr)
    exp_avg.mul_(beta2).add_(g * (1 - beta2))
