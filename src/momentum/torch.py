"""``momentum.torch.SGD``: a drop-in ``torch.optim.SGD`` for CPU tensors.

A step is one batch of kernel calls over every param group, in place on the
memory of the parameters, gradients and momentum buffers, so nothing is
copied or converted.  A first step, or one after any edit, runs
:func:`momentum.foreach.sgd_groups` on NumPy views of the tensors (which
checks everything and words the errors); later steps run from what the
group's snapshot (:mod:`momentum._torch_keys`) re-checks each step.  State
(``state[p]["momentum_buffer"]``) and param groups are laid out as
``torch.optim.SGD``'s, so state dicts move between the two both ways.

With ``flat=True`` each param group lives in a :class:`momentum.Arena`: its
parameters, gradients and buffers are views into three contiguous blocks and a
step is one kernel call over the blocks.

This module imports torch; ``import momentum`` does not import this module.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

from momentum import foreach
from momentum._torch_keys import GRADS, HOLDS, Snapshot, know_torch, run_groups
from momentum.arena import Arena

__all__ = ["SGD"]

_DTYPES = (torch.float32, torch.float64)
_NO_STATE = MappingProxyType({})
# How foreach.sgd_groups names an array: 'groups[1].grads[0]'.
_BATCH_ARRAY = re.compile(r"'groups\[(\d+)\]\.(params|grads|bufs)\[(\d+)\]'")
know_torch(torch.Tensor, torch.strided, torch.float32, torch.float64,
           (torch.Tensor, torch.nn.Parameter, torch.nn.Buffer))


# A parameter's place: (state-dict index, group index, index in the group).
Place = tuple[int, int, int]


def _where(place: Place) -> str:
    index, group, position = place
    return f"SGD.step(): parameter {index} (param_groups[{group}]['params'][{position}])"


def _check(tensor: torch.Tensor, what: str, param: torch.Tensor, place: Place) -> None:
    """``tensor`` (the parameter itself, its grad or its buffer) can be
    updated in place by the kernels.

    Raises TypeError for a dtype the kernels do not take, ValueError for a
    device, layout or shape they cannot work on in place, naming the
    parameter's place.
    """
    if (tensor.is_cpu and tensor.layout == torch.strided and tensor.dtype == param.dtype
            and tensor.dtype in _DTYPES and tensor.shape == param.shape
            and tensor.is_contiguous() and not tensor.is_neg()):
        return  # the common case, decided without formatting a message
    where = _where(place)
    if tensor.device.type != "cpu":
        raise ValueError(f"{where}: {what} is on device {tensor.device}; "
                         f"momentum.torch.SGD runs on CPU tensors only")
    if tensor.layout != torch.strided:
        raise ValueError(f"{where}: {what} has layout {tensor.layout}; sparse "
                         f"tensors are not supported, use torch.optim.SGD")
    if tensor.dtype not in _DTYPES:
        raise TypeError(f"{where}: {what} has dtype {tensor.dtype}; expected "
                        f"torch.float32 or torch.float64")
    if tensor.dtype != param.dtype:
        raise TypeError(f"{where}: {what} has dtype {tensor.dtype} but the "
                        f"parameter has dtype {param.dtype}")
    if tensor.shape != param.shape:
        raise ValueError(f"{where}: {what} has shape {tuple(tensor.shape)} but "
                         f"the parameter has shape {tuple(param.shape)}")
    if not tensor.is_contiguous():
        raise ValueError(f"{where}: {what} is not contiguous; call "
                         f".contiguous() on it before the step")
    raise ValueError(f"{where}: {what} is a lazily negated view; call "
                     f".resolve_neg() on it before the step")


def _checked_view(tensor: torch.Tensor, what: str, param: torch.Tensor,
                  place: Place) -> np.ndarray:
    """A flat NumPy view of ``tensor``, after _check; TypeError naming the
    parameter for a tensor subclass without memory of its own (a wrapper or
    fake tensor), which NumPy cannot view."""
    _check(tensor, what, param, place)
    try:
        return tensor.detach().numpy().reshape(-1)
    except RuntimeError as error:
        raise TypeError(f"{_where(place)}: {what} ({type(tensor).__name__}) has no "
                        f"memory to step in place ({error}); use torch.optim.SGD") from None


def _reason(message: str) -> str:
    """An error message from ``momentum`` without the name of the function
    that raised it ('foreach.sgd(): ...')."""
    return message.split("(): ", 1)[-1]


def _scalar(value: Any, name: str, gi: int) -> Any:
    """A hyperparameter, a 1-element tensor as its value (PyTorch allows
    them); anything else as it is, for foreach.sgd's check."""
    if not isinstance(value, torch.Tensor):
        return value
    if value.numel() != 1:
        raise ValueError(f"SGD.step(): param_groups[{gi}]: Tensor {name} must be 1-element")
    return value.item()


def _hyperparameters(gi: int, group: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``foreach.sgd`` for param group ``gi``, read
    afresh each step so that schedulers and edits of the group take effect,
    and checked: TypeError or ValueError naming ``SGD.step()`` and the group."""
    hyper = {"lr": _scalar(group["lr"], "lr", gi), "momentum": group["momentum"],
             "dampening": group["dampening"],
             "weight_decay": _scalar(group["weight_decay"], "weight_decay", gi),
             # torch.optim.SGD ignores nesterov without momentum (a group
             # edited after the constructor's check may have both)
             "nesterov": group["nesterov"] and group["momentum"] != 0,
             "maximize": group["maximize"]}
    try:
        foreach.sgd((), (), (), **hyper)  # checks them, writes nothing
    except (TypeError, ValueError) as error:
        raise type(error)(f"SGD.step(): param_groups[{gi}]: {_reason(str(error))}") from None
    return hyper


class _Batch:
    """One param group's arguments to ``foreach.sgd_groups``, and what they show.

    ``snapshot`` (a :class:`momentum._torch_keys.Snapshot`) records the
    identity of every parameter, gradient, state entry and buffer, and where
    each tensor lies (address, length, dtype, contiguous); while all hold, the
    batch is current.  Gradients alone differing is common (a training loop
    makes new ones every step): the snapshot then records the new ones and
    the step runs from its addresses (run_groups), not from these views.
    ``numpy`` maps ``id(tensor)`` to ``(tensor, layout, view)`` for
    parameters and buffers, so the next batch converts only new ones.
    ``active`` lists the parameters that have a gradient; ``adopt`` the
    (parameter, buffer) pairs to enter into the state once the step has
    filled them.
    """

    __slots__ = ("snapshot", "numpy", "active",
                 "params", "grads", "bufs", "first", "adopt")

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None
        self.numpy: dict[int, tuple[torch.Tensor, tuple, np.ndarray]] = {}
        self.active: list[int] = []
        self.params: list[np.ndarray] = []
        self.grads: list[np.ndarray] = []
        self.bufs: list[np.ndarray | None] = []
        self.first: list[bool] = []
        self.adopt: list[tuple[torch.Tensor, torch.Tensor]] = []

    def view(self, tensor: torch.Tensor, what: str, param: torch.Tensor, place: Place,
             old: dict[int, tuple[torch.Tensor, tuple, np.ndarray]]) -> np.ndarray:
        """The NumPy view of ``tensor``: the previous batch's if the tensor
        still has its memory and layout (``p.data = p.data.t()`` or
        ``p.data = p.data.view(dtype)`` keep the address), else a checked new one."""
        hit = old.get(id(tensor))
        layout = (tensor.data_ptr(), tensor.dtype, tensor.shape, tensor.stride())
        if hit is None or hit[0] is not tensor or hit[1] != layout:
            hit = (tensor, layout, _checked_view(tensor, what, param, place))
        self.numpy[id(tensor)] = hit
        return hit[2]


def _grad_views(params: list[torch.Tensor], grads: list[Any], active: list[int],
                gi: int, first_index: int) -> list[np.ndarray]:
    """Checked NumPy views of the gradients of the parameters in ``active``."""
    return [_checked_view(grads[i], "its grad", params[i], (first_index + i, gi, i))
            for i in active]


def _lies_at(tensor: torch.Tensor, address: int, shape: Sequence[int],
             dtype: torch.dtype) -> bool:
    """``tensor`` views exactly the memory at ``address`` as ``shape`` and
    ``dtype``, contiguous: ``t.data = ...`` can change any of them while the
    tensor object stays."""
    return (tensor.data_ptr() == address and tensor.shape == shape
            and tensor.dtype == dtype and tensor.is_contiguous())


class _Flat:
    """A param group's arena and the torch tensors that alias its views."""

    __slots__ = ("arena", "dtype", "params", "grads", "bufs", "addresses")

    def __init__(self, arena: Arena) -> None:
        self.arena = arena
        self.dtype = torch.float64 if arena.dtype == np.float64 else torch.float32
        self.params = [torch.from_numpy(v) for v in arena.param_views]
        self.grads = [torch.from_numpy(v) for v in arena.grad_views]
        self.bufs = [torch.from_numpy(v) for v in arena.buf_views]
        self.addresses = {id(t): t.data_ptr() for t in (*self.grads, *self.bufs)}

    def _home(self, tensors: list[torch.Tensor], views: list[np.ndarray],
              i: int) -> torch.Tensor:
        """``tensors[i]``, an arena view; a new one if the old one's memory
        was swapped out or re-laid (``t.data = ...``): it then lies outside
        the arena, or not as the view does."""
        t = tensors[i]
        if not _lies_at(t, self.addresses[id(t)], views[i].shape, self.dtype):
            tensors[i] = torch.from_numpy(views[i])
            self.addresses[id(tensors[i])] = tensors[i].data_ptr()
        return tensors[i]

    def grad_home(self, i: int) -> torch.Tensor:
        """Gradient view ``i`` of the arena (see _home)."""
        return self._home(self.grads, self.arena.grad_views, i)

    def buf_home(self, i: int) -> torch.Tensor:
        """Momentum-buffer view ``i`` of the arena (see _home)."""
        return self._home(self.bufs, self.arena.buf_views, i)


class SGD(torch.optim.Optimizer):
    """Stochastic gradient descent with momentum, as ``torch.optim.SGD``.

    Per parameter ``p`` with gradient ``grad`` and buffer ``b``::

        g = -grad if maximize else grad
        if weight_decay != 0: g = g + weight_decay * p
        if momentum != 0:
            b = g if first step else momentum * b + (1 - dampening) * g
            g = g + momentum * b if nesterov else b
        p = p - lr * g

    Every operation is rounded on its own (no fused multiply-add).  Parameters
    whose ``grad`` is None are skipped.  Parameters, gradients and buffers
    must be contiguous CPU tensors of float32 or float64.

    ``flat=True`` moves each group's parameters into one contiguous block
    (``p.data`` becomes a view into it) and gives every parameter that
    requires grad a gradient viewing a second block, so that a step is one
    kernel call.  ``zero_grad`` then zeroes that block in place whatever
    ``set_to_none`` says, as ``torch.optim.SGD`` after
    ``zero_grad(set_to_none=False)``: a parameter left out of a backward pass
    is stepped with a zero gradient rather than skipped.  A group must then
    hold one dtype.  A copy (``copy.deepcopy``, pickling) is flat too, with
    arenas of its own.
    """

    def __init__(self, params: Iterable[Any], lr: float | torch.Tensor = 1e-3,
                 momentum: float = 0, dampening: float = 0,
                 weight_decay: float | torch.Tensor = 0, nesterov: bool = False,
                 *, maximize: bool = False, foreach: bool | None = None,
                 differentiable: bool = False, fused: bool | None = None,
                 flat: bool = False) -> None:
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        if fused and foreach:
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        if differentiable:
            raise ValueError("momentum.torch.SGD does not support differentiable=True; "
                             "use torch.optim.SGD")
        # foreach and fused are torch.optim.SGD's choice of implementation:
        # accepted and kept in the groups, so that state dicts match
        # torch's, but every step here is one fused multi-tensor call.
        defaults = {"lr": lr, "momentum": momentum, "dampening": dampening,
                    "weight_decay": weight_decay, "nesterov": nesterov,
                    "maximize": maximize, "foreach": foreach,
                    "differentiable": differentiable, "fused": fused}
        self.flat = flat
        self._batches: dict[int, _Batch] = {}
        self._flats: list[_Flat] = []
        super().__init__(params, defaults)

    def __getstate__(self) -> dict[str, Any]:
        """What ``torch.optim.Optimizer`` pickles, and ``flat``; no arena or
        cached batch (a copy makes its own, see __setstate__)."""
        return dict(super().__getstate__(), flat=self.flat)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Called by ``load_state_dict`` (which keeps the arenas) and on
        unpickling or copying: a flat copy then moves its own parameters,
        gradients and buffers into new arenas, as the constructor does, so
        that it steps as the original and shares no memory with it."""
        copied = "_flats" not in self.__dict__
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)
            group.setdefault("maximize", False)
        self.__dict__.setdefault("flat", False)
        self._batches = {}
        if copied:
            self._flats = []
            if self.flat:
                for gi in range(len(self.param_groups)):
                    self._flats.append(self._flatten(gi, self._first_index(gi), True))

    def __repr__(self) -> str:
        """torch's listing of the param groups, headed by this class's full
        name (not torch's ``SGD (``) and ``flat``."""
        listing = super().__repr__()[len(type(self).__name__) + len(" ("):]
        return (f"{type(self).__module__}.{type(self).__qualname__} (\n"
                f"flat: {self.flat}{listing}")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group as ``torch.optim.Optimizer`` does (into an arena when flat)."""
        super().add_param_group(param_group)
        if self.flat:
            index = len(self.param_groups) - 1
            self._flats.append(self._flatten(index, self._first_index(index), True))

    def _first_index(self, gi: int) -> int:
        """The state-dict index of group ``gi``'s first parameter."""
        return sum(len(g["params"]) for g in self.param_groups[:gi])

    def _current(self, gi: int, group: dict[str, Any]) -> _Batch | None:
        """This group's cached batch if its snapshot still holds, else None.

        Per tensor (not flat), new gradients do not spoil it: the snapshot
        checks and records them, for run_groups; the batch's NumPy views
        (for foreach) are then out of date.
        """
        batch = self._batches.get(gi)
        if batch is None:
            return None
        found = batch.snapshot.check(group["params"], self.state, group["momentum"] != 0,
                                     not self.flat)
        return batch if found == HOLDS or (found == GRADS and not self.flat) else None

    def _rebuild(self, gi: int, group: dict[str, Any], first_index: int) -> _Batch:
        """A new batch (and snapshot) for group ``gi``."""
        params = group["params"]
        uses_state = group["momentum"] != 0
        old = self._batches.get(gi)
        if self.flat:
            batch = self._flat_batch(gi, group, first_index)
        else:
            grads = [p.grad for p in params]
            get = self.state.get
            bufs = [get(p, _NO_STATE).get("momentum_buffer") for p in params] \
                if uses_state else ()
            batch = self._tensor_batch(gi, group, first_index, grads, bufs,
                                       old.numpy if old is not None else {})
        batch.snapshot = Snapshot(params, self.state, uses_state)
        self._batches[gi] = batch
        return batch

    def _tensor_batch(self, gi: int, group: dict[str, Any], first_index: int,
                      grads: list[Any], bufs: Sequence[Any],
                      old: dict[int, tuple[torch.Tensor, tuple, np.ndarray]]) -> _Batch:
        """One triple of views per parameter that has a gradient."""
        batch = _Batch()
        params = group["params"]
        uses_buf = group["momentum"] != 0
        batch.active = [i for i, g in enumerate(grads) if g is not None]
        for i in batch.active:
            p = params[i]
            place = (first_index + i, gi, i)
            batch.params.append(batch.view(p, "the parameter", p, place, old))
            b = bufs[i] if uses_buf else None
            if b is None and uses_buf:
                b = torch.empty_like(p, memory_format=torch.contiguous_format)
                batch.adopt.append((p, b))
            batch.bufs.append(None if b is None else
                              batch.view(b, "its momentum_buffer", p, place, old))
            batch.first.append(uses_buf and bufs[i] is None)
        batch.grads = _grad_views(params, grads, batch.active, gi, first_index)
        return batch

    def _flatten(self, gi: int, first_index: int, give_grads: bool) -> _Flat:
        """Move group ``gi`` into a new arena: its parameters, gradients and
        buffers are copied in and re-pointed at the arena's views; with
        ``give_grads`` a parameter that requires grad but has none gets the
        arena's (zero) gradient too."""
        params = self.param_groups[gi]["params"]
        for i, p in enumerate(params):
            place = (first_index + i, gi, i)
            _check(p, "the parameter", p, place)
            if p.dtype != params[0].dtype:
                raise TypeError(f"{_where(place)}: has dtype {p.dtype} but parameter "
                                f"{first_index} has {params[0].dtype}; with "
                                f"flat=True a param group holds one dtype")
        dtype = np.float64 if params and params[0].dtype == torch.float64 else np.float32
        flat = _Flat(Arena([p.shape for p in params], dtype))
        for i, p in enumerate(params):
            flat.params[i].copy_(p.detach())
            p.data = flat.params[i]
            if p.grad is not None or (give_grads and p.requires_grad):
                self._move_grad(p, flat.grads[i], (first_index + i, gi, i))
            buf = self.state.get(p, _NO_STATE).get("momentum_buffer")
            if buf is not None:
                self._move_buf(p, buf, flat.bufs[i], (first_index + i, gi, i))
        return flat

    @staticmethod
    def _move_grad(p: torch.Tensor, home: torch.Tensor, place: Place) -> None:
        """Make ``p.grad`` the arena view ``home``, keeping its values."""
        if p.grad is None:
            home.zero_()
        else:
            _check(p.grad, "its grad", p, place)
            home.copy_(p.grad)
        p.grad = home

    def _move_buf(self, p: torch.Tensor, buf: torch.Tensor, home: torch.Tensor,
                  place: Place) -> None:
        """Make ``p``'s momentum buffer the arena view ``home``, keeping its values."""
        _check(buf, "its momentum_buffer", p, place)
        home.copy_(buf)
        self.state[p]["momentum_buffer"] = home

    def _flat_batch(self, gi: int, group: dict[str, Any], first_index: int) -> _Batch:
        """One triple of block slices per run of neighbouring parameters that
        alike have a gradient (or not) and a buffer (or not).

        Tensors found outside the arena are moved back in first: a replaced
        parameter (or, if its shape or dtype changed, the whole group), a
        gradient the user set, a buffer from a loaded state dict.
        """
        flat = self._flats[gi]
        if any(not _lies_at(p, home.data_ptr(), home.shape, home.dtype)
               for p, home in zip(group["params"], flat.params)) or \
                len(group["params"]) != len(flat.params):
            flat = self._flats[gi] = self._flatten(gi, first_index, False)
        uses_buf = group["momentum"] != 0
        runs: list[tuple[bool, bool, int]] = []  # (has grad, first step, tensor)
        for i, p in enumerate(group["params"]):
            place = (first_index + i, gi, i)
            home = flat.grad_home(i)
            if p.grad is not None and p.grad is not home:
                self._move_grad(p, home, place)
            buf = self.state.get(p, _NO_STATE).get("momentum_buffer") if uses_buf else None
            home = flat.buf_home(i)
            if buf is not None and buf is not home:
                self._move_buf(p, buf, home, place)
            runs.append((p.grad is not None, uses_buf and buf is None, i))
        batch = _Batch()
        arena = flat.arena
        start = 0
        for end in range(1, len(runs) + 1):
            if end < len(runs) and runs[end][:2] == runs[start][:2]:
                continue
            active, first, _ = runs[start]
            if active:
                lo = arena.offsets[start]
                hi = arena.offsets[end - 1] + flat.params[end - 1].numel()
                batch.params.append(arena.params[lo:hi])
                batch.grads.append(arena.grads[lo:hi])
                batch.bufs.append(arena.bufs[lo:hi])
                batch.first.append(first)
                if first:
                    batch.adopt += [(group["params"][i], flat.bufs[i])
                                    for i in range(start, end)]
            start = end
        return batch

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients; with ``flat=True`` zero the arena's gradient
        block in place (and point any gradient the user replaced back at it)."""
        if not self.flat:
            super().zero_grad(set_to_none)
            if set_to_none:
                # Let the old gradients go now, not at the next step: the
                # backward pass in between would hold two sets.
                for batch in self._batches.values():
                    batch.grads = []
                    batch.snapshot.forget_grads()
            return
        for gi, group in enumerate(self.param_groups):
            if self._current(gi, group) is None:
                self._rebuild(gi, group, self._first_index(gi))  # moves stray tensors in
            flat = self._flats[gi]
            for i, p in enumerate(group["params"]):
                if p.grad is None and p.requires_grad:
                    p.grad = flat.grad_home(i)
            flat.arena.zero_grad()

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One SGD step over every param group; returns ``closure()``'s loss.

        Every tensor and hyperparameter of every group is checked before any
        is written: a bad parameter raises TypeError or ValueError naming its
        index.  (In flat mode, tensors found outside the arena may have been
        copied back into it first; their values are unchanged.)
        """
        # torch.optim.Optimizer wraps step() to run the step hooks inside a
        # profiler range; that costs tens of µs, much next to small kernels,
        # so the wrapper runs only when there is a hook or a profiler.
        if (self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                or _global_optimizer_pre_hooks or _global_optimizer_post_hooks
                or torch._C._autograd._profiler_enabled()):
            return self._hooked_step(closure)
        return self._step(closure)

    step.hooked = True  # tells torch.optim.Optimizer not to wrap it

    @torch.no_grad()
    def _step(self, closure: Callable[[], Any] | None = None) -> Any:
        """step() itself, without hooks."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        hypers = [_hyperparameters(gi, group) for gi, group in enumerate(self.param_groups)]
        current = [self._current(gi, group) for gi, group in enumerate(self.param_groups)]
        # Per tensor, a step whose tensors all passed their snapshots' checks
        # runs from the recorded addresses; else (a first step, an edit, an
        # overlap to report) every group goes through foreach.
        if (not self.flat and None not in current
                and run_groups([batch.snapshot for batch in current], hypers)):
            return loss
        # One call for every group: all of it is checked (overlaps across
        # groups too) before anything is written.  New buffers enter the
        # state only once the call has filled them.
        work = []
        rebuilt = []
        first_index = 0
        try:
            for gi, (group, hyper) in enumerate(zip(self.param_groups, hypers)):
                if self.flat and current[gi] is not None:
                    batch = current[gi]
                else:
                    batch = self._rebuild(gi, group, first_index)
                    rebuilt.append(gi)
                work.append((batch, dict(hyper, params=batch.params, grads=batch.grads,
                                         bufs=batch.bufs if hyper["momentum"] != 0 else None,
                                         first_step=batch.first)))
                first_index += len(group["params"])
            try:
                foreach.sgd_groups([call for _, call in work])
            except ValueError as error:
                # Only what _check leaves to foreach (an overlap, a misaligned
                # tensor) gets here: name the tensors as the other errors
                # here do, not by their place in the batch.
                raise ValueError(self._name_tensors(str(error), [b for b, _ in work])) from None
        except Exception:
            # A snapshot must not outlive a step that refused its tensors:
            # the next step would trust what the full path has just refused.
            for gi in rebuilt:
                del self._batches[gi]
            raise
        for batch, _ in work:
            for p, buf in batch.adopt:
                self.state[p]["momentum_buffer"] = buf
            if not self.flat:
                batch.grads = []  # later steps run from the snapshot: hold no old gradients
        return loss

    _hooked_step = torch.optim.Optimizer.profile_hook_step(_step)

    def _name_tensors(self, message: str, batches: list[_Batch]) -> str:
        """``message`` from foreach.sgd_groups, naming ``SGD.step()`` and each
        array by its parameter (in flat mode an array is a run of
        parameters: kept)."""
        if self.flat:
            return "SGD.step(): " + _reason(message)
        starts = [self._first_index(gi) for gi in range(len(batches))]

        def name(match: re.Match) -> str:
            gi, role, j = int(match[1]), match[2], int(match[3])
            i = batches[gi].active[j]
            whose = {"params": "", "grads": "the grad of ",
                     "bufs": "the momentum_buffer of "}[role]
            return f"{whose}parameter {starts[gi] + i} (param_groups[{gi}]['params'][{i}])"

        return "SGD.step(): " + _BATCH_ARRAY.sub(name, _reason(message))
