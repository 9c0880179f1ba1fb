"""``momentum.torch.SGD``: a drop-in ``torch.optim.SGD`` for CPU tensors.

A step is one batch of kernel calls over every param group, in place on the
memory of the parameters, gradients and momentum buffers, so nothing is
copied or converted.  Every step takes one path, the one of every
``momentum.torch`` optimizer (:mod:`momentum._torch_engine`): each group's
snapshot (:mod:`momentum._torch_keys`) says which tensors it was last stepped with
and where they lie, re-checked in C each step; where anything changed (a
first step, an edit) the group's tensors are looked at afresh, in Python
(SGD's checks, below), and a new snapshot made.  Then the tensors' addresses go through
the batch builder and the checks every kernel call passes
(:mod:`momentum._batch`, :mod:`momentum._checks`), with no NumPy view.
What the kernels cannot step in place (a sparse gradient, a dtype they do
not take, tensors of different or non-dense layouts, a lazily negated
view, another device, a tensor subclass, ``differentiable=True``) is stepped
with PyTorch's own SGD arithmetic, with a warning the first time.  State
(``state[p]["momentum_buffer"]``) and param groups are laid out as
``torch.optim.SGD``'s, so state dicts move between the two both ways.

With ``flat=True`` each param group lives in a :class:`momentum.Arena`: its
parameters, gradients and buffers (and a 16-bit group's compensations or
master copies) are views into contiguous blocks and a step is one kernel
call over the blocks.

This module imports torch; ``import momentum`` does not import this module.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch.optim.sgd import sgd as _torch_sgd

from momentum import foreach
from momentum._torch_engine import KernelStep, Plan
from momentum._torch_keys import HOLDS, Snapshot
from momentum._torch_step import (
    EXTRA as _EXTRA, EXTRA_KEYS as _EXTRA_KEYS, HALF as _HALF, KERNEL_DTYPES as _KERNEL_DTYPES,
    PLAIN as _PLAIN, check_storage, closure_and_amp, dense, hypers_of, rounding_extra, scalar,
    state_dtype, unscale)
from momentum.arena import EXTRA as _ARENA_EXTRA, Arena
from momentum.dtypes import numpy_dtype

__all__ = ["SGD", "Adam", "AdamW", "Lion"]

_DTYPES = tuple(d for d, (_, reals, _) in _KERNEL_DTYPES.items() if reals == 1)
_DTYPE_NAMES = ", ".join(map(str, _DTYPES[:-1])) + f" or {_DTYPES[-1]}"
_NO_STATE = MappingProxyType({})


# How a message names a parameter's buffer.
_BUFFER = "its momentum_buffer"

# A parameter's place: (state-dict index, group index, index in the group).
Place = tuple[int, int, int]


def _where(place: Place) -> str:
    index, group, position = place
    return f"SGD.step(): parameter {index} (param_groups[{group}]['params'][{position}])"


def _check(tensor: torch.Tensor, what: str, param: torch.Tensor, place: Place,
           dtype: torch.dtype | None = None) -> None:
    """``tensor`` (the parameter itself, its grad or its buffer) can be
    updated in place by the kernels, as an array of ``dtype`` (default the
    parameter's).

    Raises TypeError for a dtype the kernels do not take, ValueError for a
    device, layout or shape they cannot work on in place, naming the
    parameter's place.
    """
    dtype = dtype or param.dtype
    if (tensor.is_cpu and tensor.layout == torch.strided and tensor.dtype == dtype
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
                        f"{_DTYPE_NAMES}")
    if tensor.dtype != dtype:
        raise TypeError(f"{where}: {what} has dtype {tensor.dtype} but " + (
            f"the parameter has dtype {param.dtype}" if dtype == param.dtype else
            f"its group's state_dtype makes momentum buffers {dtype}"))
    if tensor.shape != param.shape:
        raise ValueError(f"{where}: {what} has shape {tuple(tensor.shape)} but "
                         f"the parameter has shape {tuple(param.shape)}")
    if not tensor.is_contiguous():
        raise ValueError(f"{where}: {what} is not contiguous; call "
                         f".contiguous() on it before the step")
    raise ValueError(f"{where}: {what} is a lazily negated view; call "
                     f".resolve_neg() on it before the step")


def _fallback_reason(p: torch.Tensor, g: torch.Tensor | None, b: torch.Tensor | None,
                     buf_dtype: torch.dtype) -> str | None:
    """Why the kernels cannot step parameter ``p`` with gradient ``g`` and
    buffer ``b`` (None where there is none) in place, or None if they can:
    every tensor a plain CPU tensor holding its own values, of one kernel
    dtype (complex: as its real view; the buffer of ``buf_dtype``), laid
    out alike and densely, aligned."""
    tensors = [t for t in (p, g, b) if t is not None]
    for t in tensors:
        if type(t) not in _PLAIN:
            return f"a tensor subclass ({type(t).__name__})"
        if not t.is_cpu:
            return f"a tensor on device {t.device}"
        if t.layout != torch.strided:
            return f"a tensor of layout {t.layout}"
        if t.is_neg() or t.is_conj():
            return "a lazily negated or conjugated view"
        if t.dtype != (buf_dtype if t is b else p.dtype):
            return f"a {t.dtype} tensor beside a {p.dtype} parameter" + (
                f" whose buffers are {buf_dtype}" if t is b and buf_dtype != p.dtype else "")
    if p.dtype not in _KERNEL_DTYPES:
        return f"dtype {p.dtype}"
    if not dense(p):
        return "a parameter that is not dense (a slice or a strided view)"
    if not all(t.is_contiguous() for t in tensors) and \
            any(t.stride() != p.stride() for t in tensors):
        return "a parameter, gradient and buffer of different layouts"
    if any(t.data_ptr() % _KERNEL_DTYPES[t.dtype][2] for t in tensors):
        return "a tensor not aligned to its dtype"
    return None


def _refuse_extra(x: torch.Tensor, key: str, dtype: torch.dtype, p: torch.Tensor,
                  place: Place) -> None:
    """Raise unless ``x``, ``state[p][key]`` (a rounding's compensation or
    master copy), lies as the kernels step it beside ``p``: a plain CPU
    tensor of ``dtype`` (TypeError), of ``p``'s shape and layout, aligned
    (ValueError).  The optimizer makes them so; another is the user's."""
    what = f"its {key}"
    if not isinstance(x, torch.Tensor) or type(x) not in _PLAIN:
        raise TypeError(f"{_where(place)}: {what} is a {type(x).__name__}; expected a "
                        f"torch.Tensor of dtype {dtype}")
    if x.dtype != dtype:
        raise TypeError(f"{_where(place)}: {what} has dtype {x.dtype}; expected {dtype}")
    if not (x.is_cpu and x.layout == torch.strided and not x.is_neg()
            and x.shape == p.shape and (x.is_contiguous() if p.is_contiguous()
                                        else x.stride() == p.stride())
            and x.data_ptr() % x.element_size() == 0 and (x.data_ptr() or not x.numel())):
        raise ValueError(f"{_where(place)}: {what} is not laid out as the parameter (a "
                         f"dense CPU tensor of its shape and strides); delete it and the "
                         f"next step makes it afresh")


def _refuse(tensor: torch.Tensor, what: str, param: torch.Tensor, place: Place) -> None:
    """Raise for what neither the kernels nor torch.optim.SGD step: a grad
    or buffer of another shape than its parameter (ValueError); one of a
    dtype that cannot be cast to the parameter's (a complex grad of a real
    parameter), a buffer that cannot hold ``momentum * buf`` (an integer
    one, which torch makes from an integer grad), a plain tensor with
    elements but no memory (TypeError).  torch raises for those dtypes too,
    but only once it has written the tensors before them."""
    if tensor.shape != param.shape:
        raise ValueError(f"{_where(place)}: {what} has shape {tuple(tensor.shape)} but "
                         f"the parameter has shape {tuple(param.shape)}")
    if not torch.can_cast(tensor.dtype, param.dtype):
        raise TypeError(f"{_where(place)}: {what} has dtype {tensor.dtype}, which cannot "
                        f"be cast to the parameter's dtype {param.dtype}")
    if what == _BUFFER and not (tensor.is_floating_point() or tensor.is_complex()):
        raise TypeError(f"{_where(place)}: {what} has dtype {tensor.dtype}; a momentum "
                        f"buffer must be floating point or complex")
    if type(tensor) in _PLAIN and tensor.is_cpu and tensor.layout == torch.strided \
            and tensor.numel() and tensor.data_ptr() == 0:
        raise TypeError(f"{_where(place)}: {what} has no memory to step in place")


def _refuse_sparse(param: torch.Tensor, grad: torch.Tensor, buf: torch.Tensor | None,
                   hyper: dict[str, Any]) -> None:
    """Raise, before anything is written, the RuntimeError torch's SGD
    arithmetic raises where it would add a dense tensor to a sparse one:
    torch raises it only once it has written the parameters before this one
    (and, for a sparse buffer, scaled it).  Those additions are a nonzero
    weight_decay to a sparse gradient, a dense gradient to a sparse buffer,
    a dense buffer to a sparse gradient with nesterov; each is tried here
    out of place, writing nothing, so that the error is torch's own (and a
    torch that can add them steps them).  ``buf`` is None without momentum."""
    sparse_grad = grad.layout != torch.strided
    if sparse_grad and hyper["weight_decay"] != 0:
        grad.add(param, alpha=hyper["weight_decay"])
    if buf is None:
        return
    sparse_buf = buf.layout != torch.strided
    if sparse_buf and not sparse_grad:
        buf.add(grad, alpha=1 - hyper["dampening"])
    if sparse_grad and not sparse_buf and hyper["nesterov"]:
        grad.add(buf, alpha=hyper["momentum"])


def _span(tensor: torch.Tensor) -> tuple[int, int] | None:
    """The bytes ``[lo, hi)`` from ``tensor``'s first element to past its
    last, or None if it has no element in CPU memory (empty, sparse, on
    another device, a wrapper without storage)."""
    if tensor.layout != torch.strided or not tensor.is_cpu or tensor.numel() == 0 \
            or tensor.data_ptr() == 0:
        return None
    last = sum((n - 1) * s for n, s in zip(tensor.shape, tensor.stride()))
    return tensor.data_ptr(), tensor.data_ptr() + (last + 1) * tensor.element_size()


def _touches(tensor: torch.Tensor, lo: int, hi: int) -> bool:
    """Some byte of ``tensor``'s elements (strided, in CPU memory) lies in
    ``[lo, hi)``: exact where its elements do not fill its span (a slice)."""
    size = tensor.element_size()
    starts = torch.tensor(tensor.data_ptr(), dtype=torch.int64)
    for n, stride in zip(tensor.shape, tensor.stride()):
        starts = starts.unsqueeze(-1) + torch.arange(n) * (stride * size)
    return bool(((starts < hi) & (starts + size > lo)).any())


def _reason(message: str) -> str:
    """An error message from ``momentum`` without the name of the function
    that raised it ('foreach.sgd(): ...')."""
    return message.split("(): ", 1)[-1]


def _hyperparameters(where: str, group: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``foreach.sgd`` for param group ``group``,
    read afresh each step so that schedulers and edits of the group take
    effect, and checked: TypeError or ValueError naming ``where`` (the step
    and the group)."""
    hyper = {"lr": scalar(group["lr"], "lr", where), "momentum": group["momentum"],
             "dampening": group["dampening"],
             "weight_decay": scalar(group["weight_decay"], "weight_decay", where),
             # torch.optim.SGD ignores nesterov without momentum (a group
             # edited after the constructor's check may have both)
             "nesterov": group["nesterov"] and group["momentum"] != 0,
             "maximize": group["maximize"]}
    try:
        foreach.sgd((), (), (), **hyper)  # checks them, writes nothing
    except (TypeError, ValueError) as error:
        raise type(error)(f"{where}: {_reason(str(error))}") from None
    return hyper


def _storage(where: str, group: dict[str, Any]) -> tuple[str, str, int, int]:
    """The group's ``(rounding, state_rounding, seed, step)``, read afresh
    each step and checked: ValueError or TypeError naming ``where``."""
    check_storage(where, group["rounding"], group["state_rounding"], group["seed"],
                  group["state_dtype"])
    try:
        _check_key(group["step"], "step")
    except (TypeError, ValueError) as error:
        raise type(error)(f"{where}: {error}") from None
    return group["rounding"], group["state_rounding"], group["seed"], group["step"]


def _check_key(value: Any, name: str) -> None:
    """``value`` is an int in [0, 2**64), as the stochastic rounding's key takes."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"'{name}' must be an int, not {type(value).__name__}")
    if not 0 <= value < 1 << 64:
        raise ValueError(f"'{name}' must be in [0, 2**64), got {value!r}")


class _FlatBatch:
    """One flat param group's arguments to ``foreach.sgd_groups``: arena
    slices (block slices over runs of tensors, or one view per tensor where
    stochastic rounding keys each tensor: ``tensors``), its storage keywords,
    and what to do to the state once the step has run: the (parameter,
    tensor) pairs to enter (``adopt``: new buffers, ``adopt_extra``: the
    rounding's new entries, made just before the step) and the stale
    entries of another rounding to drop.  ``snapshot`` tells while it holds,
    for the ``first_index`` and ``layout`` it was made for."""

    __slots__ = ("snapshot", "first_index", "layout", "params", "grads", "bufs", "extras",
                 "first", "tensors", "storage", "adopt", "adopt_extra", "stale")

    def __init__(self, first_index: int, layout: tuple[Any, ...] | None) -> None:
        self.snapshot: Snapshot | None = None
        self.first_index, self.layout = first_index, layout
        self.params: list[np.ndarray] = []
        self.grads: list[np.ndarray] = []
        self.bufs: list[np.ndarray] = []
        self.extras: list[np.ndarray] = []
        self.first: list[bool] = []
        self.tensors: list[int] | None = None
        self.storage: dict[str, Any] = {}
        self.adopt: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.adopt_extra: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.stale: list[tuple[torch.Tensor, str]] = []


def _lies_at(tensor: torch.Tensor, address: int, shape: Sequence[int],
             dtype: torch.dtype) -> bool:
    """``tensor`` views exactly the memory at ``address`` as ``shape`` and
    ``dtype``, contiguous: ``t.data = ...`` can change any of them while the
    tensor object stays."""
    return (tensor.data_ptr() == address and tensor.shape == shape
            and tensor.dtype == dtype and tensor.is_contiguous())


def _flat_layout(group: dict[str, Any]) -> tuple[Any, ...] | None:
    """What a flat 16-bit group's arena is made for: its ``(rounding,
    state_rounding, state_dtype)`` (the blocks and their dtypes follow);
    None for float32/float64 parameters, which are never rounded."""
    params = group["params"]
    if not params or params[0].dtype not in _HALF:
        return None
    return group["rounding"], group["state_rounding"], group["state_dtype"]


def _numpy(dtype: torch.dtype) -> np.dtype:
    """The NumPy dtype of an arena block holding torch ``dtype``."""
    return numpy_dtype(str(dtype).removeprefix("torch."))


def _tensor_of(view: np.ndarray) -> torch.Tensor:
    """A tensor aliasing the arena view ``view`` (a bfloat16 one through its
    int16 bits: torch.from_numpy does not know ml_dtypes' bfloat16)."""
    if view.dtype.name == "bfloat16":
        return torch.from_numpy(view.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(view)


class _Flat:
    """A param group's arena, the ``layout`` it was made for, and the torch
    tensors that alias its views: parameters, gradients, buffers and the
    rounding's extra array (block ``extra_role``, state entry ``extra_key``;
    both None without), and each block's torch dtype (``dtypes``)."""

    __slots__ = ("arena", "layout", "extra_role", "extra_key", "params", "grads", "bufs",
                 "extras", "dtypes", "addresses")

    def __init__(self, arena: Arena, layout: tuple[Any, ...] | None) -> None:
        self.arena, self.layout = arena, layout
        self.extra_role = _ARENA_EXTRA[arena.rounding][0] if arena.rounding in _ARENA_EXTRA \
            else None
        self.extra_key = _EXTRA[arena.rounding][0] if self.extra_role else None
        self.params = [_tensor_of(v) for v in arena.param_views]
        self.grads = [_tensor_of(v) for v in arena.grad_views]
        self.bufs = [_tensor_of(v) for v in arena.buf_views]
        self.extras = [_tensor_of(v) for v in getattr(arena, self.extra_role + "_views")] \
            if self.extra_role else []
        self.dtypes = {role: _tensor_of(np.zeros(0, dtype)).dtype
                       for role, dtype in arena.dtypes.items()}
        self.addresses = {id(t): t.data_ptr() for t in (*self.grads, *self.bufs, *self.extras)}

    def _home(self, tensors: list[torch.Tensor], views: list[np.ndarray],
              role: str, i: int) -> torch.Tensor:
        """``tensors[i]``, an arena view of block ``role``; a new one if the
        old one's memory was swapped out or re-laid (``t.data = ...``): it
        then lies outside the arena, or not as the view does."""
        t = tensors[i]
        if not _lies_at(t, self.addresses[id(t)], views[i].shape, self.dtypes[role]):
            tensors[i] = _tensor_of(views[i])
            self.addresses[id(tensors[i])] = tensors[i].data_ptr()
        return tensors[i]

    def grad_home(self, i: int) -> torch.Tensor:
        """Gradient view ``i`` of the arena (see _home)."""
        return self._home(self.grads, self.arena.grad_views, "grad", i)

    def buf_home(self, i: int) -> torch.Tensor:
        """Momentum-buffer view ``i`` of the arena (see _home)."""
        return self._home(self.bufs, self.arena.buf_views, "buf", i)

    def extra_home(self, i: int) -> torch.Tensor:
        """The rounding's extra view ``i`` of the arena (see _home)."""
        role = self.extra_role
        return self._home(self.extras, getattr(self.arena, role + "_views"), role, i)


class SGD(KernelStep, torch.optim.Optimizer):
    """Stochastic gradient descent with momentum, as ``torch.optim.SGD``.

    Per parameter ``p`` with gradient ``grad`` and buffer ``b``::

        g = -grad if maximize else grad
        if weight_decay != 0: g = g + weight_decay * p
        if momentum != 0:
            b = g if first step else momentum * b + (1 - dampening) * g
            g = g + momentum * b if nesterov else b
        p = p - lr * g

    Every operation is rounded on its own (no fused multiply-add).  Parameters
    whose ``grad`` is None are skipped.  The kernels step, in place, CPU
    tensors of float32, float64 (complex ones as their real views),
    bfloat16 or float16 whose parameter, gradient and buffer share one
    dense layout (contiguous, channels_last, a transpose); any other
    parameter is stepped with PyTorch's own SGD arithmetic, with a
    RuntimeWarning once per reason.

    16-bit (bfloat16, float16) parameters are computed in float32 and each
    written value rounded once, as :func:`momentum.sgd` does (bitwise equal
    to :func:`momentum.reference.sgd`).  Per param group:

    - ``state_dtype``: None (default) keeps a 16-bit parameter's
      ``momentum_buffer`` in its dtype, as torch.optim.SGD does;
      ``torch.float32`` keeps it in float32.  Float32 and float64
      parameters keep buffers of their dtype either way.  Loading a state
      dict (torch.optim.SGD's too) converts each buffer to the dtype the
      group's state_dtype gives it; a buffer set by hand in another dtype
      is stepped with torch's arithmetic (and then converted).
    - ``rounding`` of 16-bit parameters (float32/float64 ones are never
      rounded): ``"nearest"`` (to nearest even), ``"stochastic"`` (see
      below), ``"kahan"`` (a compensation buffer of the parameter's dtype in
      ``state[p]["kahan_comp"]`` carries what each rounding dropped, zeros
      at first), ``"master"`` (a float32 copy in
      ``state[p]["master_param"]``, made from the parameter at its first
      step, is what the step updates; the parameter is written as its
      rounding to nearest, so change the parameter through it, or delete it
      to have it made afresh).  A parameter stepped without its group's
      extra entry (another rounding, torch's arithmetic) loses it.
    - ``state_rounding``: ``"nearest"`` or ``"stochastic"``, for 16-bit
      buffers.
    - ``seed`` (an int): stochastic rounding draws its bits from a
      counter-based generator keyed on (``seed``, the group's ``step``, the
      parameter's index in the state dict, the array, the element's
      index), so the result does not depend on threads or batching.
      ``step`` counts the group's steps and is saved in the state dict
      with the rest of the group: a resumed run rounds as an
      uninterrupted one.
    A grad or buffer of another shape or of a dtype torch cannot step, and
    a tensor the kernels step that shares memory with another tensor of the
    step (but a gradient with another gradient), are refused.

    ``flat=True`` moves each group's parameters into one contiguous block
    (``p.data`` becomes a view into it) and gives every parameter that
    requires grad a gradient viewing a second block, so that a step is one
    kernel call (a 16-bit group: its buffers in the state_dtype's dtype,
    the rounding's kahan_comp or master_param block beside them, stochastic
    rounding keyed by state-dict index, bitwise as per tensor; a grad of
    another dtype is refused).  ``zero_grad`` then zeroes that block in
    place whatever ``set_to_none`` says, as ``torch.optim.SGD`` after
    ``zero_grad(set_to_none=False)``: a parameter left out of a backward
    pass is stepped with a zero gradient rather than skipped.  A group must then
    hold one dtype.  A copy (``copy.deepcopy``, pickling) is flat too, with
    arenas of its own.
    """

    def __init__(self, params: Iterable[Any], lr: float | torch.Tensor = 1e-3,
                 momentum: float = 0, dampening: float = 0,
                 weight_decay: float | torch.Tensor = 0, nesterov: bool = False,
                 *, maximize: bool = False, foreach: bool | None = None,
                 differentiable: bool = False, fused: bool | None = None,
                 flat: bool = False, state_dtype: torch.dtype | None = None,
                 rounding: str = "nearest", state_rounding: str = "nearest",
                 seed: int = 0) -> None:
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
        check_storage("momentum.torch.SGD", rounding, state_rounding, seed, state_dtype)
        # foreach and fused are torch.optim.SGD's choice of implementation:
        # accepted and kept in the groups, so that state dicts match
        # torch's, but every step here is one fused multi-tensor call.
        defaults = {"lr": lr, "momentum": momentum, "dampening": dampening,
                    "weight_decay": weight_decay, "nesterov": nesterov,
                    "maximize": maximize, "foreach": foreach,
                    "differentiable": differentiable, "fused": fused,
                    "state_dtype": state_dtype, "rounding": rounding,
                    "state_rounding": state_rounding, "seed": seed, "step": 0}
        if flat and differentiable:
            raise ValueError("momentum.torch.SGD: flat=True cannot be differentiable")
        self.flat = flat
        self._plans: dict[int, Plan] = {}
        self._batches: dict[int, _FlatBatch] = {}
        self._flats: list[_Flat] = []
        self._warned: set[str] = set()
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
            # A group of torch.optim.SGD's state dict: this optimizer's storage
            for key in ("state_dtype", "rounding", "state_rounding", "seed", "step"):
                group.setdefault(key, self.defaults.get(key, 0))
        self.__dict__.setdefault("flat", False)
        self.__dict__.setdefault("_warned", set())
        self._plans = {}
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

    def _flat_current(self, gi: int, group: dict[str, Any],
                      first_index: int) -> _FlatBatch | None:
        """Flat group ``gi``'s cached batch if its snapshot still holds, for
        the group's place in the state dict and its layout, else None."""
        batch = self._batches.get(gi)
        if batch is None or batch.first_index != first_index \
                or batch.layout != _flat_layout(group):
            return None
        found = batch.snapshot.check(group["params"], self.state, self._state_keys(group))
        return batch if found == HOLDS else None

    def _refuse_shared_param(self, gi: int) -> None:
        """ValueError if a parameter of flat group ``gi`` is also one of
        another group's or appears twice in it (an edit of ``param_groups``;
        ``add_param_group`` refuses it): it can lie in one arena only, so it
        would be stepped once, where torch.optim.SGD steps it each time."""
        found: dict[int, tuple[int, int]] = {}
        for gk, group in enumerate(self.param_groups):
            for k, p in enumerate(group["params"]):
                first = found.setdefault(id(p), (gk, k))
                if first != (gk, k) and gi in (first[0], gk):
                    raise ValueError(f"SGD.step(): {self._name(*first, 0)} and "
                                     f"{self._name(gk, k, 0)} overlap in memory")

    def _flat_rebuild(self, gi: int, group: dict[str, Any], first_index: int) -> _FlatBatch:
        """A new batch (and snapshot) for flat group ``gi``."""
        batch = self._flat_batch(gi, group, first_index)
        params = group["params"]
        flat = self._flats[gi]
        n = len(params)
        batch.snapshot = Snapshot("sgd", list(params), self.state, self._state_keys(group),
                                  b"\x01" * n, [flat.dtypes["buf"]] * n, flat.extra_key,
                                  [flat.dtypes.get(flat.extra_role)] * n)
        self._batches[gi] = batch
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
        layout = _flat_layout(self.param_groups[gi])
        dtype = params[0].dtype if params else torch.float32
        options = {}
        if layout is not None:
            rounding, state_rounding, _ = layout
            options = dict(dtypes={"buf": _numpy(state_dtype(params[0], self.param_groups[gi]))},
                           rounding=rounding, state_rounding=state_rounding)
        flat = _Flat(Arena([p.shape for p in params], _numpy(dtype),
                           tensors=range(first_index, first_index + len(params)), **options),
                     layout)
        for i, p in enumerate(params):
            place = (first_index + i, gi, i)
            flat.params[i].copy_(p.detach())
            p.data = flat.params[i]
            if p.grad is not None or (give_grads and p.requires_grad):
                self._move_grad(p, flat.grads[i], place)
            buf = self.state.get(p, _NO_STATE).get("momentum_buffer")
            if buf is not None:
                self._move_buf(p, buf, flat.bufs[i], place)
            extra = self.state.get(p, _NO_STATE).get(flat.extra_key) if flat.extra_key else None
            if extra is not None:
                self._move_extra(p, extra, flat.extras[i], flat.extra_key, place)
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
        """Make ``p``'s momentum buffer the arena view ``home``, keeping its
        values; a 16-bit parameter's buffer of the other dtype a state_dtype
        gives (its own, float32: the group's state_dtype changed) is
        converted to the arena's, as load_state_dict converts."""
        convert = p.dtype in _HALF and buf.dtype in (p.dtype, torch.float32)
        _check(buf, _BUFFER, p, place, buf.dtype if convert else home.dtype)
        home.copy_(buf)
        self.state[p]["momentum_buffer"] = home

    def _move_extra(self, p: torch.Tensor, extra: Any, home: torch.Tensor, key: str,
                    place: Place) -> None:
        """Make ``state[p][key]`` (the rounding's compensation or master
        copy) the arena view ``home``, keeping its values; refused as
        _refuse_extra() says."""
        _refuse_extra(extra, key, home.dtype, p, place)
        home.copy_(extra)
        self.state[p][key] = home

    def _flat_batch(self, gi: int, group: dict[str, Any], first_index: int) -> _FlatBatch:
        """The group's arena slices: one per run of neighbouring parameters
        that alike have a gradient (or not) and a buffer (or not), or, where
        a 16-bit parameter or buffer rounds stochastically, one view per
        parameter with a gradient, keyed by its state-dict index (the run's
        element indices would not be the tensor's).

        Tensors found outside the arena are moved back in first: a replaced
        parameter (or, if its shape or dtype or the group's layout changed,
        the whole group), a gradient the user set, a buffer or the
        rounding's entry from a loaded state dict.
        """
        flat = self._flats[gi]
        layout = _flat_layout(group)
        if any(not _lies_at(p, home.data_ptr(), home.shape, home.dtype)
               for p, home in zip(group["params"], flat.params)) or \
                len(group["params"]) != len(flat.params) or flat.layout != layout:
            flat = self._flats[gi] = self._flatten(gi, first_index, False)
        arena = flat.arena
        arena.tensors = tuple(range(first_index, first_index + len(arena)))
        batch = _FlatBatch(first_index, layout)
        uses_buf = group["momentum"] != 0
        key = flat.extra_key
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
            if p.grad is not None:
                entries = self.state.get(p, _NO_STATE)
                batch.stale += [(p, k) for k in _EXTRA_KEYS if k != key and k in entries]
                if key is not None:
                    extra, home = entries.get(key), flat.extra_home(i)
                    if extra is None:
                        batch.adopt_extra.append((p, home))
                    elif extra is not home:
                        self._move_extra(p, extra, home, key, place)
            runs.append((p.grad is not None, uses_buf and buf is None, i))
        rounding, state_rounding = ("nearest", "nearest") if layout is None else layout[:2]
        batch.storage = dict(rounding=rounding, state_rounding=state_rounding)
        keyed = rounding == "stochastic" or (state_rounding == "stochastic" and uses_buf
                                            and flat.dtypes["buf"] in _HALF)
        views = [getattr(arena, role + "_views") if keyed else getattr(arena, role + "s")
                 for role in ("param", "grad", "buf", *filter(None, [flat.extra_role]))]
        if keyed:
            batch.tensors = []
        start = 0
        for end in range(1, len(runs) + 1):
            if not keyed and end < len(runs) and runs[end][:2] == runs[start][:2]:
                continue
            active, first, _ = runs[start]
            if active:
                if keyed:
                    parts = [v[start] for v in views]
                    batch.tensors.append(arena.tensors[start])
                else:
                    lo = arena.offsets[start]
                    hi = arena.offsets[end - 1] + flat.params[end - 1].numel()
                    parts = [block[lo:hi] for block in views]
                batch.params.append(parts[0])
                batch.grads.append(parts[1])
                batch.bufs.append(parts[2])
                batch.extras += parts[3:]
                batch.first.append(first)
                if first:
                    batch.adopt += [(group["params"][i], flat.bufs[i])
                                    for i in range(start, end)]
            start = end
        if key is not None:
            batch.storage["comps" if rounding == "kahan" else "masters"] = batch.extras
        return batch

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients; with ``flat=True`` zero the arena's gradient
        block in place (and point any gradient the user replaced back at it)."""
        if not self.flat:
            super().zero_grad(set_to_none)   # the plans let the old gradients go
            return
        for gi, group in enumerate(self.param_groups):
            first_index = self._first_index(gi)
            if self._flat_current(gi, group, first_index) is None:
                self._flat_rebuild(gi, group, first_index)  # moves stray tensors in
            flat = self._flats[gi]
            for i, p in enumerate(group["params"]):
                if p.grad is None and p.requires_grad:
                    p.grad = flat.grad_home(i)
            flat.arena.zero_grad()

    _arithmetic = "PyTorch's own SGD arithmetic"
    # torch.amp.GradScaler hands step() its scale and inf flag (as to
    # torch's fused SGD): a step with found_inf set writes nothing, not even
    # a first momentum buffer; grad_scale divides the gradients first.
    _step_supports_amp_scaling = True

    def _rule(self, group: dict[str, Any]) -> str:
        """The kernels' rule."""
        return "sgd"

    def _hypers(self, group: dict[str, Any], where: str) -> tuple[Any, ...]:
        """sgd's hyperparameters in the table's order (first_step per
        tensor), the group's storage options checked."""
        _storage(where, group)
        return hypers_of("sgd", _hyperparameters(where, group))

    def _new_state(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, torch.Tensor]:
        """A first step's buffer, laid out as ``p``, of the dtype the group's
        state_dtype gives it, not filled: the kernels' first step writes it."""
        return {"momentum_buffer": torch.empty_like(p, dtype=state_dtype(p, group))}

    def _refuse(self, p: torch.Tensor, state: dict[str, Any], group: dict[str, Any],
                place: Place) -> None:
        """What neither the kernels nor torch.optim.SGD step (the module's
        _refuse, for the parameter, its grad and its buffer), and a
        rounding's extra entry the kernels would step that does not lie as
        they step it (_refuse_extra)."""
        b = state.get("momentum_buffer") if group["momentum"] != 0 else None
        for t, what in ((p.grad, "its grad"), (b, _BUFFER), (p, "the parameter")):
            if t is not None:
                _refuse(t, what, p, place)
        key, extra_dtype, extra = rounding_extra(p, state, group)
        if extra is not None and self._kernel_reason(p, state, group) is None:
            _refuse_extra(extra, key, extra_dtype, p, place)

    def _kernel_reason(self, p: torch.Tensor, state: dict[str, Any],
                       group: dict[str, Any]) -> str | None:
        """Why the kernels cannot step ``p`` with its grad and buffer
        (_fallback_reason), or None."""
        if self.defaults["differentiable"]:
            return "differentiable=True"
        return _fallback_reason(p, p.grad, state.get("momentum_buffer")
                                if group["momentum"] != 0 else None, state_dtype(p, group))

    def _kernel_step(self, closure: Callable[[], Any] | None = None) -> Any:
        """step() itself, without hooks: per tensor, the engine's; flat, one
        call of foreach.sgd_groups over the arenas."""
        if not self.flat:
            return super()._kernel_step(closure)
        loss, skip, grad_scale = closure_and_amp(self, closure)
        if skip:
            return loss
        wheres = [f"SGD.step(): param_groups[{gi}]" for gi in range(len(self.param_groups))]
        hypers = [_hyperparameters(w, group) for w, group in zip(wheres, self.param_groups)]
        storage = [_storage(w, group) for w, group in zip(wheres, self.param_groups)]
        grads = [] if grad_scale is None else \
            [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        unscale(grads, grad_scale)
        try:
            self._flat_step(hypers, storage)
        except (TypeError, ValueError):
            # Refused before anything was written but the unscaling: undone
            # (exact for GradScaler's power-of-two scales).
            if grads:
                torch._foreach_mul_(grads, grad_scale.item())
            raise
        return loss

    def _check_fallback(self, plans: list[Plan], first_indices: list[int]) -> None:
        """Refuse, before anything is written, what the parameters stepped
        with torch's arithmetic must not bring: what _refuse() refuses or
        torch's arithmetic would raise for midway (_refuse_sparse; both
        checked each step, as their snapshot compares only which tensors
        they are), or a tensor sharing memory with one the kernels step
        (they run before torch's arithmetic, not in torch's order)."""
        with torch._C.DisableTorchFunctionSubclass():  # what lies in memory
            for gi, (group, plan) in enumerate(zip(self.param_groups, plans)):
                hyper = _hyperparameters("SGD.step()", group) if plan.fallback else None
                for i in plan.fallback:
                    p = group["params"][i]
                    state = self.state.get(p) or {}
                    self._refuse(p, state, group, (first_indices[gi] + i, gi, i))
                    b = state.get("momentum_buffer") if group["momentum"] != 0 else None
                    _refuse_sparse(p, p.grad, b, hyper)
                    for array, t in enumerate((p, p.grad, b)):
                        span = None if t is None else _span(t)
                        if span is not None:
                            self._refuse_overlap(plans, t, span, array != 1, (gi, i, array))

    def _refuse_overlap(self, plans: list[Plan], tensor: torch.Tensor, span: tuple[int, int],
                        written: bool, whose: tuple[int, int, int]) -> None:
        """ValueError if ``tensor`` (array ``whose[2]`` of parameter
        ``whose[1]`` of group ``whose[0]``, stepped with torch's arithmetic,
        its bytes within ``span``) shares a byte with a tensor the kernels
        step, unless both are only read (gradients)."""
        is_dense = dense(tensor)
        for gk, plan in enumerate(plans):
            for k, array, lo, hi in plan.snapshot.touching(*span):
                if (written or array != 1) and (is_dense or _touches(tensor, lo, hi)):
                    first, second = sorted([whose, (gk, k, array)])
                    raise ValueError(f"SGD.step(): {self._name(*first)} and "
                                     f"{self._name(*second)} overlap in memory")

    def _torch_step(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        """Step ``params`` (with gradients) with torch's own SGD arithmetic
        (its for-loop), as torch.optim.SGD would, buffers kept in the state
        alike."""
        hyper = _hyperparameters("SGD.step()", group)
        uses_buf = group["momentum"] != 0
        bufs = [self.state.get(p, _NO_STATE).get("momentum_buffer") if uses_buf else None
                for p in params]
        with torch.set_grad_enabled(self.defaults["differentiable"]):
            _torch_sgd(params, [p.grad for p in params], bufs,
                                has_sparse_grad=any(p.grad.is_sparse for p in params),
                                foreach=False, fused=False,
                                weight_decay=group["weight_decay"], momentum=group["momentum"],
                                lr=group["lr"], dampening=group["dampening"],
                                nesterov=hyper["nesterov"], maximize=group["maximize"])
        if uses_buf:
            for p, buf in zip(params, bufs):
                # torch makes a first buffer in its parameter's dtype
                dtype = state_dtype(p, group)
                self.state[p]["momentum_buffer"] = buf.to(dtype) if buf.dtype == p.dtype \
                    else buf

    def _flat_step(self, hypers: list[dict[str, Any]],
                   storage: list[tuple[str, str, int, int]]) -> None:
        """Flat: one call of foreach.sgd_groups over every group's arena
        slices, checked before anything is written; then the state entries
        the step made are entered, stale ones dropped."""
        work = []
        rebuilt = []
        first_index = 0
        try:
            for gi, (group, hyper) in enumerate(zip(self.param_groups, hypers)):
                batch = self._flat_current(gi, group, first_index)
                if batch is None:
                    self._refuse_shared_param(gi)
                    batch = self._flat_rebuild(gi, group, first_index)
                    rebuilt.append(gi)
                work.append((batch, dict(hyper, params=batch.params, grads=batch.grads,
                                         bufs=batch.bufs if hyper["momentum"] != 0 else None,
                                         first_step=batch.first, **batch.storage,
                                         seed=storage[gi][2], step=storage[gi][3],
                                         tensors=batch.tensors)))
                first_index += len(group["params"])
            # The rounding's new entries, made as the per-tensor step makes
            # them: the master copy from the parameter as it is now.
            for batch, _ in work:
                for p, home in batch.adopt_extra:
                    if batch.layout[0] == "master":
                        home.copy_(p.detach())
                    else:
                        home.zero_()
            try:
                foreach.sgd_groups([call for _, call in work])
            except ValueError as error:
                raise ValueError("SGD.step(): " + _reason(str(error))) from None
        except Exception:
            for gi in rebuilt:
                del self._batches[gi]
            raise
        for batch, _ in work:
            for p, buf in batch.adopt:
                self.state[p]["momentum_buffer"] = buf
            for p, extra in batch.adopt_extra:
                self.state[p][_EXTRA[batch.layout[0]][0]] = extra
            for p, key in batch.stale:
                self.state[p].pop(key, None)
            batch.stale = []
        for group in self.param_groups:
            group["step"] += 1


# Adam, AdamW and Lion: on momentum._torch_engine, as SGD.
from momentum._torch_adam import Adam, AdamW  # noqa: E402
from momentum._torch_lion import Lion  # noqa: E402
