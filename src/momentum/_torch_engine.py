"""The step of every ``momentum.torch`` optimizer (``SGD`` per tensor,
``Adam``, ``AdamW``, ``Lion``): any rule of the table over a torch
optimizer's param groups, through the snapshot and the one batch builder
(:mod:`momentum._torch_keys`).

Each group keeps a :class:`Plan`: which parameters the kernels step (decided
in Python when the plan is made, by the optimizer's ``_kernel_reason``) and a
Snapshot of its tensors.  While the snapshot holds (checked in C each step,
new gradients taken) the step runs no Python per kernel tensor: the tasks
are built from the recorded places, each per-tensor step count read from its
scalar tensor's memory and counted on there after the run.  When it does not
hold, the plan is made afresh.  The parameters the kernels cannot step are
checked each step (``_check_fallback``: what torch would raise for midway is
refused before anything is written) and stepped with torch's own arithmetic
after the kernels (``_torch_step``), with a warning once per reason.

An optimizer class mixes in :class:`KernelStep` and says what the table
cannot: ``_rule(group)``, ``_hypers(group, where)`` (the rule's
hyperparameters in the table's order, checked), ``_step_key`` (the state
entry of a per-tensor step count, or None: the group's ``step`` is then
counted and keys stochastic rounding), ``_refuse`` and ``_kernel_reason``
(what neither the kernels nor torch step, and what only torch steps),
``_new_state``, ``_torch_step`` and ``_arithmetic`` (how warnings name
torch's arithmetic).  The state entries a group uses come from the table.
"""
from __future__ import annotations

from typing import Any

import torch

from momentum._torch_keys import GRADS, HOLDS, Snapshot, check_group, prepare_groups
from momentum._torch_step import (
    EXTRA, EXTRA_KEYS, HALF, closure_and_amp, hooks_or_profiler, kernel_reason, new_extra,
    rounding_extra, state_dtype, state_keys, tensor_name, unscale, warn_once)
from momentum.rules import RULES

__all__ = ["KernelStep", "Plan"]


class Plan:
    """How one param group is stepped while its snapshot holds.

    ``snapshot`` records the group's tensors and, for the parameters the
    kernels step, where they lie; ``fallback`` lists the positions of the
    parameters stepped with torch's own arithmetic instead.  ``layout`` is
    what the plan was made for beyond the tensors (the group's rule, its
    state keys, rounding, state_dtype...); ``extra_key`` the state entry
    of the rounding's extra array (or None); ``stale`` the ``(parameter, key)`` state
    entries of roundings the group no longer uses, dropped once the step
    has run (a master copy the parameter has moved away from must not come
    back).
    """

    __slots__ = ("snapshot", "fallback", "layout", "extra_key", "stale")

    def __init__(self, snapshot: Snapshot, fallback: list[int], layout: tuple[Any, ...],
                 extra_key: str | None, stale: list[tuple[torch.Tensor, str]]) -> None:
        self.snapshot = snapshot
        self.fallback = fallback
        self.layout = layout
        self.extra_key = extra_key
        self.stale = stale

    @property
    def keys(self) -> tuple[str, ...]:
        """The group's state entries, in the rule's order."""
        return self.layout[1]


class KernelStep:
    """step() for a torch optimizer of one rule family (mixed in; the class
    sets ``_plans = {}`` and ``_warned = set()`` before torch's constructor,
    and again in ``__setstate__``)."""

    _plans: dict[int, Plan]

    # The state entry of a parameter's step count (a scalar tensor), if the
    # rule counts steps per tensor.
    _step_key: str | None = None
    # What steps the parameters the kernels cannot, as warnings say.
    _arithmetic = "PyTorch's own arithmetic"

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        """The state entries the group's rule keeps for it (the table's)."""
        return state_keys(self._rule(group), group)

    def _key_step(self, group: dict[str, Any]) -> int:
        """The step of the stochastic key: a rule that counts steps per
        tensor keys on that count (the kernels read it: 0 here), any other
        on the group's ``step``."""
        return 0 if self._step_key is not None else group["step"]

    def _after_group(self, group: dict[str, Any]) -> None:
        """Count the group's ``step`` (where the rule counts none per tensor)."""
        if self._step_key is None:
            group["step"] += 1

    def _layout(self, group: dict[str, Any]) -> tuple[Any, ...]:
        """What a group's plan depends on beyond its tensors."""
        return (self._rule(group), self._state_keys(group), group["rounding"],
                group["state_dtype"], group.get("differentiable"), group.get("capturable"))

    def _plan(self, gi: int, group: dict[str, Any], first_index: int) -> Plan:
        """Group ``gi``'s plan (its first parameter has state-dict index
        ``first_index``): the cached one while its snapshot holds (new
        gradients recorded), else a new one from the tensors as they are."""
        plan = self._plans.get(gi)
        layout = self._layout(group)
        keys = layout[1]
        if plan is not None and plan.layout == layout and plan.snapshot.check(
                group["params"], self.state, keys, True) in (HOLDS, GRADS):
            return plan
        params = group["params"]
        kernel = bytearray(len(params))
        fallback: list[int] = []
        extra_dtypes: list[torch.dtype | None] = []
        stale: list[tuple[torch.Tensor, str]] = []
        extra_key = EXTRA.get(group["rounding"], (None, None))[0]
        state_dtypes = [state_dtype(p, group) for p in params]
        for i, p in enumerate(params):
            extra_dtypes.append(None)
            if p.grad is None:
                continue
            state = self.state.get(p) or {}
            self._refuse(p, state, group, (first_index + i, gi, i))
            why = self._kernel_reason(p, state, group)
            if why is not None:
                fallback.append(i)
                warn_once(self, why)
                continue
            kernel[i] = 1
            key, dtype, _ = rounding_extra(p, state, group)
            extra_dtypes[i] = dtype
            stale += [(p, other) for other in EXTRA_KEYS if other != key and other in state]
        snapshot = Snapshot(layout[0], list(params), self.state, keys, bytes(kernel),
                            state_dtypes, extra_key, extra_dtypes, self._step_key)
        plan = self._plans[gi] = Plan(snapshot, fallback, layout, extra_key, stale)
        return plan

    def _name(self, gi: int, i: int, array: int) -> str:
        """Array ``array`` of parameter ``i`` of group ``gi``, for a message."""
        group = self.param_groups[gi]
        first_index = sum(len(g["params"]) for g in self.param_groups[:gi])
        return tensor_name(self._rule(group), group["rounding"], first_index, gi, i, array)

    def step(self, closure: Any = None) -> Any:
        """One step over every param group; returns ``closure()``'s loss.

        With ``found_inf`` set nonzero (``torch.amp.GradScaler``) nothing is
        written: parameters, state and step counts stay as they were, and
        no state is made.  With ``grad_scale`` set, gradients are divided by
        it in place first (as torch's fused optimizers leave them).  Every
        tensor the kernels step is checked before anything is written; a
        gradient neither they nor torch can step with its parameter raises
        ValueError or TypeError first.  Tensors the kernels cannot step in
        place (see momentum.torch's README section) are stepped with
        torch's own arithmetic, with a RuntimeWarning once per reason.
        """
        if hooks_or_profiler(self):
            return self._hooked_step(closure)
        with torch.no_grad():  # once (a decorator costs a few µs more)
            return self._kernel_step(closure)

    step.hooked = True  # tells torch.optim.Optimizer not to wrap it

    def _kernel_step(self, closure: Any) -> Any:
        """step() itself, without hooks: a new state is entered once its
        first step has run."""
        loss, skip, grad_scale = closure_and_amp(self, closure)
        if skip:
            return loss
        where = f"{type(self).__name__}.step"
        hypers, storage, plans, states, extras = [], [], [], [], []
        first_index = 0
        try:
            # Every group's hyperparameters first: a bad one refuses the step
            # before any plan is made (and warns of torch's arithmetic).
            for gi, group in enumerate(self.param_groups):
                hypers.append(self._hypers(group, f"{where}(): param_groups[{gi}]"))
                storage.append((group["rounding"], group["state_rounding"], group["seed"],
                                self._key_step(group), first_index))
                check_group(self._rule(group), hypers[gi], storage[gi], where, gi)
                first_index += len(group["params"])
            for gi, group in enumerate(self.param_groups):
                plan = self._plan(gi, group, storage[gi][4])
                plans.append(plan)
                params = group["params"]
                states.append({i: self._new_state(params[i], group)
                               for i in plan.snapshot.missing})
                extras.append({i: new_extra(params[i], plan.extra_key)
                               for i in plan.snapshot.missing_extra})
            if any(plan.fallback for plan in plans):
                self._check_fallback(plans, [s[4] for s in storage])
            grads = [] if grad_scale is None else \
                [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
            unscale(grads, grad_scale)
            try:
                batch = prepare_groups(
                    [plan.snapshot for plan in plans], hypers,
                    [{i: tuple(state[k] for k in plan.keys) for i, state in new.items()}
                     for plan, new in zip(plans, states)],
                    self._name, storage, extras, where)
            except (TypeError, ValueError):
                # Nothing was written but the gradients' unscaling, undone
                # here (exact for GradScaler's power-of-two scales).
                if grads:
                    torch._foreach_mul_(grads, grad_scale.item())
                raise
        except Exception:
            # A plan must not outlive a step that refused its tensors: the
            # next step looks at them afresh.
            self._plans.clear()
            raise
        # The kernels first, straight after their batch was built: torch's
        # arithmetic can run Python code that frees memory the batch holds
        # addresses of.
        batch.run()
        for plan, group, new, extra in zip(plans, self.param_groups, states, extras):
            plan.snapshot.advance()
            params = group["params"]
            for i, state in new.items():
                if self._step_key is not None:
                    state[self._step_key] += 1
                self.state[params[i]].update(state)
            for i, tensor in extra.items():
                self.state[params[i]][plan.extra_key] = tensor
            for p, stale in plan.stale:
                self.state[p].pop(stale, None)
            plan.stale = []
            self._after_group(group)   # counted as stepped before torch's share runs
        for plan, group in zip(plans, self.param_groups):
            fallback = [group["params"][i] for i in plan.fallback]
            for p in fallback:
                # the parameter moves away from a rounding's extra entry: dropped
                for key in EXTRA_KEYS:
                    (self.state.get(p) or {}).pop(key, None)
            if fallback:
                self._torch_step(group, fallback)
        return loss

    def _check_fallback(self, plans: list[Plan], first_indices: list[int]) -> None:
        """Refuse, before anything is written, what torch's arithmetic would
        raise for midway in the parameters it steps (it runs after the
        kernels; their snapshot compares only which tensors they are): as
        _refuse() refuses.  ``first_indices[k]``: group ``k``'s first
        parameter's state-dict index."""
        for gi, (group, plan) in enumerate(zip(self.param_groups, plans)):
            for i in plan.fallback:
                p = group["params"][i]
                self._refuse(p, self.state.get(p) or {}, group, (first_indices[gi] + i, gi, i))

    def _state_of(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, Any]:
        """``p``'s state for torch's arithmetic: a first step's made (and
        entered) where there is none."""
        state = self.state[p]
        if not state:
            state.update(self._new_state(p, group))
        return state

    def _kernel_reason(self, p: torch.Tensor, state: dict[str, Any],
                       group: dict[str, Any]) -> str | None:
        """Why the kernels cannot step ``p`` (with a gradient) with its state
        (empty before a first step: made like the parameter), or None: the
        group's state entries all there, and every tensor as
        _torch_step.kernel_reason asks (a rounding's extra entry too)."""
        keys = self._state_keys(group)
        tensors, dtypes = [p.grad], [p.dtype]
        if state:
            if any(not isinstance(state.get(key), torch.Tensor) for key in keys):
                return f"a state without its {', '.join(keys)}"
            tensors += [state[key] for key in keys]
            dtypes += [state_dtype(p, group)] * len(keys)
        _, extra_dtype, extra = rounding_extra(p, state, group)
        if extra is not None:  # a loaded state's own, laid out as it may be
            tensors.append(extra)
            dtypes.append(extra_dtype)
        return kernel_reason(p, tensors, dtypes)

    def _refuse(self, p: torch.Tensor, state: dict[str, Any], group: dict[str, Any],
                place: tuple[int, int, int]) -> None:
        """Raise, before anything is written, for what neither the kernels
        nor torch's arithmetic can step ``p`` (with a gradient; at ``place``:
        its state-dict index, its group, its position there) with (torch
        would raise only once it had written the tensors before it): a gradient of another shape or on
        another device (ValueError), a state from an earlier step that
        lacks an entry the group now uses (ValueError: torch's KeyError;
        ``amsgrad`` turned on after a first step)."""
        grad, where = p.grad, f"{type(self).__name__}.step()"
        gi, i = place[1:]
        if grad.shape != p.shape:
            raise ValueError(f"{where}: {self._name(gi, i, 1)} has shape {tuple(grad.shape)} "
                             f"but the parameter has shape {tuple(p.shape)}")
        if grad.device != p.device:
            raise ValueError(f"{where}: {self._name(gi, i, 1)} is on device {grad.device} but "
                             f"the parameter is on {p.device}")
        missing = [key for key in self._state_keys(group) if key not in state]
        if state and missing:
            raise ValueError(f"{where}: {self._name(gi, i, 0)} has a state without "
                             f"{', '.join(map(repr, missing))}, which its group uses now "
                             f"(torch.optim raises KeyError for it midway)")

    def zero_grad(self, set_to_none: bool = True) -> None:
        """torch's; with ``set_to_none`` the plans let go of the old
        gradients now, not at the next step (the backward pass in between
        would hold two sets)."""
        super().zero_grad(set_to_none)
        if set_to_none:
            for plan in self._plans.values():
                plan.snapshot.forget_grads()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's, but torch casts every floating state tensor to its
        parameter's dtype, which would round a 16-bit parameter's float32
        state or master copy: each saved state array of the rule is
        converted to the dtype the group's state_dtype gives it, a
        ``master_param`` to float32, a ``kahan_comp`` to the parameter's."""
        super().load_state_dict(state_dict)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [(p, g) for g in self.param_groups for p in g["params"]]
        for saved_id, (p, group) in zip(saved_ids, params):
            saved = state_dict["state"].get(saved_id)
            if p.dtype not in HALF or not saved:
                continue
            arrays = RULES[self._rule(group)].state_keys.values()
            for key, value in saved.items():
                dtype = torch.float32 if key == "master_param" else \
                    p.dtype if key == "kahan_comp" else \
                    state_dtype(p, group) if key in arrays else None
                if dtype is not None and isinstance(value, torch.Tensor):
                    self.state[p][key] = value.to(dtype=dtype, device=p.device, copy=True)

    def _hooked(self, closure: Any) -> Any:
        """step() inside torch's hook wrapper."""
        with torch.no_grad():
            return self._kernel_step(closure)

    # step() inside torch's hook wrapper (its range named as torch names it)
    _hooked_step = torch.optim.Optimizer.profile_hook_step(_hooked)
