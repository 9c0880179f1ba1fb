"""``momentum.torch.Adam`` and ``AdamW``: torch.optim.Adam and AdamW whose
step runs the ``adam``/``adamw`` kernels (see :mod:`momentum._torch_step`).

They are subclasses of torch's classes: the constructors, their checks,
``param_groups``, ``state`` (``step`` a scalar tensor, ``exp_avg``,
``exp_avg_sq``, ``max_exp_avg_sq``), state dicts, hooks and schedulers are
torch's own; only ``step()`` differs.  Per parameter::

    step = state["step"] + 1                # the kernel's step, bias corrections in double
    g = -grad if maximize else grad
    Adam:  if weight_decay != 0: g = g + weight_decay * param
    AdamW: if weight_decay != 0: param = param * (1 - lr * weight_decay)
    exp_avg = exp_avg + (1 - beta1) * (g - exp_avg)
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g
    v = max_exp_avg_sq = max(max_exp_avg_sq, exp_avg_sq) if amsgrad else exp_avg_sq
    param = param - (lr / bias1) * (exp_avg / (sqrt(v) * (1 / sqrt(bias2)) + eps))
"""
from __future__ import annotations

import math

from typing import Any

import torch
from torch.optim.adam import adam as _torch_adam
from torch.optim.optimizer import _get_scalar_dtype

from momentum._torch_engine import KernelStep, Plan
from momentum._torch_step import (
    HALF, PLAIN, check_storage, hypers_of, scalar, state_dtype)

__all__ = ["Adam", "AdamW"]

_STORAGE = ("state_dtype", "rounding", "state_rounding", "seed")
# Their defaults, for a group of torch's state dict.
_STORAGE_DEFAULTS = dict(zip(_STORAGE, (None, "nearest", "nearest", 0)))


def _counts(step: Any) -> bool:
    """``step`` is a step count the kernels read from memory (and count on
    there): a plain aligned float32 or float64 CPU scalar tensor holding a
    whole number in [0, 2**53)."""
    if not (type(step) in PLAIN and step.is_cpu and step.dim() == 0
            and step.dtype in (torch.float32, torch.float64)
            and step.data_ptr() % step.element_size() == 0):
        return False
    count = step.item()
    return math.isfinite(count) and 0 <= count < 2 ** 53 and count == int(count)


class _KernelAdam(KernelStep):
    """The step of Adam and AdamW (mixed into torch's classes)."""

    _step_key = "step"

    # GradScaler then hands found_inf and grad_scale to step() (as to
    # torch's fused Adam) rather than unscaling the gradients itself.
    _step_supports_amp_scaling = True

    def _storage_defaults(self, state_dtype: Any, rounding: Any, state_rounding: Any,
                          seed: Any) -> None:
        """Add the 16-bit storage options to the defaults and every group."""
        check_storage(f"momentum.torch.{type(self).__name__}", rounding, state_rounding,
                      seed, state_dtype)
        storage = dict(zip(_STORAGE, (state_dtype, rounding, state_rounding, seed)))
        self.defaults.update(storage)
        for group in self.param_groups:
            for key, value in storage.items():
                group.setdefault(key, value)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """torch's, and the storage options for a group of torch's state dict."""
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in _STORAGE_DEFAULTS.items():
                group.setdefault(key, self.defaults.get(key, value))
        self.__dict__.setdefault("_warned", set())
        self._plans = {}  # a copy or a loaded state makes its own

    def _new_state(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, torch.Tensor]:
        """A first step's state, as torch.optim.Adam makes it (step 0, zeros),
        the moments in the dtype the group's state_dtype gives them."""
        if group["capturable"] or group["fused"]:
            step = torch.zeros((), dtype=_get_scalar_dtype(is_fused=group["fused"]),
                               device=p.device)
        else:
            step = torch.tensor(0.0, dtype=_get_scalar_dtype())
        dtype = state_dtype(p, group)
        return {"step": step, **{key: torch.zeros_like(p, memory_format=torch.preserve_format,
                                                       dtype=dtype)
                                 for key in self._state_keys(group)}}

    def _rule(self, group: dict[str, Any]) -> str:
        """The kernels' rule for ``group``."""
        return "adamw" if group["decoupled_weight_decay"] else "adam"

    def _hypers(self, group: dict[str, Any], where: str) -> tuple[Any, ...]:
        """The group's hyperparameters in the table's order, read afresh each
        step (schedulers and edits of the group take effect); its storage
        options checked."""
        check_storage(where, *(group[key] for key in _STORAGE[1:]), group["state_dtype"])
        beta1, beta2 = group["betas"]
        return hypers_of(self._rule(group), dict(
            lr=scalar(group["lr"], "lr", where), beta1=scalar(beta1, "betas[0]", where),
            beta2=scalar(beta2, "betas[1]", where), eps=group["eps"],
            weight_decay=scalar(group["weight_decay"], "weight_decay", where),
            amsgrad=group["amsgrad"], maximize=group["maximize"]))

    def _refuse(self, p: torch.Tensor, state: dict[str, Any], group: dict[str, Any],
                place: tuple[int, int, int]) -> None:
        """KernelStep's refusals; a sparse gradient (torch's RuntimeError),
        a gradient of another dtype than its parameter (TypeError) and a
        step count of -1 (ValueError: torch's step would divide by zero),
        for which torch's Adam raises midway."""
        super()._refuse(p, state, group, place)
        gi, i = place[1:]
        if p.grad.is_sparse:
            raise RuntimeError("Adam does not support sparse gradients, please "
                               "consider SparseAdam instead")
        if p.grad.dtype != p.dtype:
            raise TypeError(f"Adam.step(): {self._name(gi, i, 1)} has dtype {p.grad.dtype} "
                            f"but the parameter has dtype {p.dtype}")
        step = state.get("step")
        if isinstance(step, torch.Tensor) and step.numel() == 1 and step.item() == -1:
            raise ValueError(f"Adam.step(): {self._name(gi, i, 0)} has a step count of -1: "
                             f"its bias corrections would divide by zero")

    def _kernel_reason(self, p: torch.Tensor, state: dict[str, Any],
                       group: dict[str, Any]) -> str | None:
        """Why the kernels cannot step ``p`` (with a gradient) with its state
        (empty before a first step), or None."""
        if group["differentiable"]:
            return "differentiable=True"
        if group["capturable"]:
            return "capturable=True"
        if state and not _counts(state.get("step")):
            return "a step count that is not a whole number in a CPU float32 or " \
                   "float64 scalar tensor"
        return super()._kernel_reason(p, state, group)

    def _torch_step(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        """Step ``params`` (with gradients) with torch's own for-loop Adam
        (torch.optim.adam.adam, foreach=False), as torch.optim.Adam(W)
        would, their state kept alike (a rounding's extra entry already
        dropped: the parameter moves away from it)."""
        states = [self._state_of(p, group) for p in params]
        # A 16-bit parameter with float32 moments (state_dtype) is stepped
        # in float32 and rounded once, as the kernels step it: torch's
        # arithmetic wants one dtype.
        wide = [p.dtype in HALF and s["exp_avg"].dtype == torch.float32
                for p, s in zip(params, states)]
        work = [p.detach().float() if w else p for p, w in zip(params, wide)]
        grads = [p.grad.float() if w else p.grad for p, w in zip(params, wide)]
        beta1, beta2 = group["betas"]
        with torch.set_grad_enabled(group["differentiable"]):
            _torch_adam(work, grads, [s["exp_avg"] for s in states],
                        [s["exp_avg_sq"] for s in states],
                        [s["max_exp_avg_sq"] for s in states] if group["amsgrad"] else [],
                        [s["step"] for s in states], foreach=False, fused=False,
                        capturable=group["capturable"],
                        differentiable=group["differentiable"],
                        has_complex=any(p.is_complex() for p in params),
                        decoupled_weight_decay=group["decoupled_weight_decay"],
                        amsgrad=group["amsgrad"], beta1=beta1, beta2=beta2, lr=group["lr"],
                        weight_decay=group["weight_decay"], eps=group["eps"],
                        maximize=group["maximize"])
        for p, w, x in zip(params, wide, work):
            if w:
                p.detach().copy_(x)


class Adam(_KernelAdam, torch.optim.Adam):
    """``torch.optim.Adam`` on momentum's kernels (see the module's formula).

    Takes torch.optim.Adam's arguments, and for 16-bit (bfloat16, float16)
    parameters, as momentum.torch.SGD: ``state_dtype`` (None: moments in the
    parameter's dtype, as torch; torch.float32), ``rounding`` ("nearest",
    "stochastic", "kahan" with ``state[p]["kahan_comp"]``, "master" with a
    float32 ``state[p]["master_param"]``), ``state_rounding`` ("nearest",
    "stochastic") and ``seed``; stochastic rounding is keyed on (seed, the
    parameter's step, its state-dict index, array, element).
    ``foreach``/``fused`` are accepted and kept (the kernels step either
    way); ``capturable``/``differentiable`` steps use torch's arithmetic.
    """

    def __init__(self, params: Any, lr: float | torch.Tensor = 1e-3,
                 betas: tuple[Any, Any] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, amsgrad: bool = False, *,
                 foreach: bool | None = None, maximize: bool = False,
                 capturable: bool = False, differentiable: bool = False,
                 fused: bool | None = None, decoupled_weight_decay: bool = False,
                 state_dtype: torch.dtype | None = None, rounding: str = "nearest",
                 state_rounding: str = "nearest", seed: int = 0) -> None:
        self._warned: set[str] = set()
        self._plans: dict[int, Plan] = {}
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         maximize=maximize, capturable=capturable,
                         differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=decoupled_weight_decay)
        self._storage_defaults(state_dtype, rounding, state_rounding, seed)


class AdamW(_KernelAdam, torch.optim.AdamW):
    """``torch.optim.AdamW`` on momentum's kernels: Adam with decoupled
    weight decay (default 1e-2); the 16-bit options as :class:`Adam`'s."""

    def __init__(self, params: Any, lr: float | torch.Tensor = 1e-3,
                 betas: tuple[Any, Any] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False, foreach: bool | None = None,
                 capturable: bool = False, differentiable: bool = False,
                 fused: bool | None = None, state_dtype: torch.dtype | None = None,
                 rounding: str = "nearest", state_rounding: str = "nearest",
                 seed: int = 0) -> None:
        self._warned: set[str] = set()
        self._plans: dict[int, Plan] = {}
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         foreach=foreach, capturable=capturable,
                         differentiable=differentiable, fused=fused)
        self._storage_defaults(state_dtype, rounding, state_rounding, seed)
