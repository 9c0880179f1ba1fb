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

from collections.abc import Callable
from typing import Any

import torch
from torch.optim.adam import adam as _torch_adam
from torch.optim.optimizer import _get_scalar_dtype

from momentum import foreach
from momentum._torch_step import (
    EXTRA_KEYS, HALF, PLAIN, closure_and_amp, array, check_storage, extras, kernel_reason,
    new_extra, reason, rounding_extra, scalar, state_dtype, unscale, warn_once)

__all__ = ["Adam", "AdamW"]

_STORAGE = ("state_dtype", "rounding", "state_rounding", "seed")
# Their defaults, for a group of torch's state dict.
_STORAGE_DEFAULTS = dict(zip(_STORAGE, (None, "nearest", "nearest", 0)))


class _KernelAdam:
    """The step of Adam and AdamW (mixed into torch's classes)."""

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

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's, but torch casts every state tensor but ``step`` to its
        parameter's dtype, which would round a 16-bit parameter's float32
        moments or master copy: those are converted from the saved tensors
        to the dtype the group's state_dtype gives them (master: float32)."""
        super().load_state_dict(state_dict)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [(p, g) for g in self.param_groups for p in g["params"]]
        for saved_id, (p, group) in zip(saved_ids, params):
            saved = state_dict["state"].get(saved_id)
            if p.dtype not in HALF or not saved:
                continue
            for key, value in saved.items():
                if key != "step" and isinstance(value, torch.Tensor):
                    dtype = torch.float32 if key == "master_param" else \
                        state_dtype(p, group) if key != "kahan_comp" else p.dtype
                    self.state[p][key] = value.to(dtype=dtype, device=p.device, copy=True)

    def _new_state(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, torch.Tensor]:
        """A first step's state, as torch.optim.Adam makes it (step 0, zeros),
        the moments in the dtype the group's state_dtype gives them."""
        if group["capturable"] or group["fused"]:
            step = torch.zeros((), dtype=_get_scalar_dtype(is_fused=group["fused"]),
                               device=p.device)
        else:
            step = torch.tensor(0.0, dtype=_get_scalar_dtype())
        dtype = state_dtype(p, group)
        keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")[:3 if group["amsgrad"] else 2]
        return {"step": step, **{key: torch.zeros_like(p, memory_format=torch.preserve_format,
                                                       dtype=dtype) for key in keys}}

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step over every param group; returns ``closure()``'s loss.

        With ``found_inf`` set nonzero (``torch.amp.GradScaler``) nothing is
        written: parameters, state and step counts stay as they were, and
        no state is made.  With ``grad_scale`` set, gradients are divided by
        it in place first (as torch's fused Adam leaves them).  Tensors the
        kernels cannot step in place (see momentum.torch's README section)
        are stepped with torch's own for-loop arithmetic, with a
        RuntimeWarning once per reason.
        """
        loss, skip, grad_scale = closure_and_amp(self, closure)
        if skip:
            return loss
        name = type(self).__name__
        calls: dict[str, list[dict[str, Any]]] = {"adam": [], "adamw": []}
        fallbacks, entered, stale, steps, grads = [], [], [], [], []
        first_index = 0
        for gi, group in enumerate(self.param_groups):
            where = f"{name}.step(): param_groups[{gi}]"
            check_storage(where, *(group[key] for key in _STORAGE[1:]), group["state_dtype"])
            call = self._group_call(group, where)
            rule = "adamw" if group["decoupled_weight_decay"] else "adam"
            calls[rule].append(call)
            calls["adamw" if rule == "adam" else "adam"].append(self._empty(call))
            fallback = []
            for i, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Adam does not support sparse gradients, please "
                                       "consider SparseAdam instead")
                grads.append(p.grad)
                state = self.state.get(p)
                if not state:
                    state = self._new_state(p, group)
                    entered.append((p, state))
                why, count = self._kernel_reason(p, state, group)
                if why is not None:
                    warn_once(self, name, why)
                    fallback.append((p, state))
                    continue
                self._add(call, p, state, group, first_index + i, count, entered, stale)
                steps.append(state["step"])
            fallbacks.append(fallback)
            first_index += len(group["params"])
        unscale(grads, grad_scale)
        try:
            # Each call checks every group's hyperparameters (a group of the
            # other rule is there without tensors); one runs even with none.
            running = [rule for rule, groups in calls.items()
                       if any(call["params"] for call in groups)] or ["adam"]
            for rule in running:
                getattr(foreach, rule + "_groups")([extras(c) for c in calls[rule]])
        except (TypeError, ValueError) as error:
            # Nothing was written but the gradients' unscaling, undone here
            # (exact for GradScaler's power-of-two scales).
            if grad_scale is not None and grads:
                torch._foreach_mul_(grads, grad_scale.item())
            raise type(error)(f"{name}.step(): {reason(str(error))}") from None
        for p, state in entered:
            self.state[p].update(state)
        for p, key in stale:
            self.state[p].pop(key, None)
        if steps:
            torch._foreach_add_(steps, 1)
        for group, fallback in zip(self.param_groups, fallbacks):
            if fallback:
                self._torch_step(group, fallback)
        return loss

    @staticmethod
    def _group_call(group: dict[str, Any], where: str) -> dict[str, Any]:
        """The group's keyword arguments of foreach.adam(w)_groups, read
        afresh each step (schedulers and edits of the group take effect),
        with empty sequences to be filled."""
        beta1, beta2 = group["betas"]
        return dict(params=[], grads=[], exp_avgs=[], exp_avg_sqs=[], max_exp_avg_sqs=[],
                    masters=[], comps=[], step=[], tensors=[],
                    lr=scalar(group["lr"], "lr", where),
                    beta1=scalar(beta1, "betas[0]", where),
                    beta2=scalar(beta2, "betas[1]", where), eps=group["eps"],
                    weight_decay=scalar(group["weight_decay"], "weight_decay", where),
                    amsgrad=group["amsgrad"], maximize=group["maximize"],
                    rounding=group["rounding"], state_rounding=group["state_rounding"],
                    seed=group["seed"])

    @staticmethod
    def _empty(call: dict[str, Any]) -> dict[str, Any]:
        """``call`` without tensors: the other rule's call then keeps group
        numbers in its messages and checks the group's hyperparameters."""
        return {key: [] if isinstance(value, list) else value for key, value in call.items()}

    @staticmethod
    def _kernel_reason(p: torch.Tensor, state: dict[str, Any],
                       group: dict[str, Any]) -> tuple[str | None, int]:
        """``(why, 0)``: why the kernels cannot step ``p`` with its state;
        or ``(None, steps)``: they can, ``steps`` its step count so far
        (read once: a tensor's item() is a call into torch)."""
        if group["differentiable"]:
            return "differentiable=True", 0
        if group["capturable"]:
            return "capturable=True", 0
        step = state.get("step")
        uncounted = "a step count that is not a whole number in a CPU scalar tensor", 0
        if not (type(step) in PLAIN and step.is_cpu and step.dim() == 0
                and step.is_floating_point()):
            return uncounted
        count = step.item()
        if not count == int(count) >= 0:
            return uncounted
        keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")[:3 if group["amsgrad"] else 2]
        if any(not isinstance(state.get(key), torch.Tensor) for key in keys):
            return "a state without its moments", 0
        dtype = state_dtype(p, group)
        tensors, dtypes = [p.grad, *(state[key] for key in keys)], [p.dtype] + [dtype] * len(keys)
        _, extra_dtype, extra = rounding_extra(p, state, group)
        if extra is not None:  # a loaded state's own, laid out as it may be
            tensors.append(extra)
            dtypes.append(extra_dtype)
        return kernel_reason(p, tensors, dtypes), int(count)

    @staticmethod
    def _add(call: dict[str, Any], p: torch.Tensor, state: dict[str, Any],
             group: dict[str, Any], index: int, count: int,
             entered: list[tuple[torch.Tensor, dict[str, Any]]],
             stale: list[tuple[torch.Tensor, str]]) -> None:
        """Add parameter ``p`` (state-dict index ``index``, ``count`` steps
        so far) to ``call``; a
        16-bit one gets its rounding's extra entry (kahan's zero
        compensation, master's float32 copy), made now and entered with the
        state once the step's checks passed; another rounding's entry is
        then dropped (``stale``)."""
        call["params"].append(array(p))
        call["grads"].append(array(p.grad))
        call["exp_avgs"].append(array(state["exp_avg"]))
        call["exp_avg_sqs"].append(array(state["exp_avg_sq"]))
        call["max_exp_avg_sqs"].append(array(state["max_exp_avg_sq"])
                                       if group["amsgrad"] else None)
        call["step"].append(count + 1)
        call["tensors"].append(index)
        key, _, extra = rounding_extra(p, state, group)
        stale += [(p, other) for other in EXTRA_KEYS if other != key and other in state]
        if key and extra is None:
            extra = new_extra(p, key)
            entered.append((p, {key: extra}))
        # The rounding's extra, beside the parameter (check_task refuses a
        # wrong dtype or length, and overlap, before anything is written).
        call["comps"].append(array(extra) if key == "kahan_comp" else None)
        call["masters"].append(array(extra) if key == "master_param" else None)

    def _torch_step(self, group: dict[str, Any],
                    fallback: list[tuple[torch.Tensor, dict[str, Any]]]) -> None:
        """Step ``fallback``'s parameters with torch's own for-loop Adam
        (torch.optim.adam.adam, foreach=False), as torch.optim.Adam(W)
        would, their state kept alike; a rounding's extra entry is dropped
        (the parameter moves away from it)."""
        params = [p for p, _ in fallback]
        states = [s for _, s in fallback]
        for state in states:
            for key in EXTRA_KEYS:
                state.pop(key, None)
        # A 16-bit parameter with float32 moments (state_dtype) is stepped
        # in float32 and rounded once, as the kernels step it: torch's
        # arithmetic wants one dtype.
        wide = [p.dtype in HALF and s["exp_avg"].dtype == torch.float32
                for p, s in fallback]
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
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         foreach=foreach, capturable=capturable,
                         differentiable=differentiable, fused=fused)
        self._storage_defaults(state_dtype, rounding, state_rounding, seed)
