"""``momentum.torch.SGD``: a drop-in ``torch.optim.SGD`` for CPU tensors.

The step runs momentum's kernels on NumPy views that share memory with the
parameters, gradients and momentum buffers, so nothing is copied or converted.
Its state (``state[p]["momentum_buffer"]``) and param groups are laid out as
``torch.optim.SGD``'s, so state dicts move between the two both ways.

This module imports torch; ``import momentum`` does not import this module.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

import momentum

__all__ = ["SGD"]

_DTYPES = (torch.float32, torch.float64)


class _Views:
    """The NumPy views of one parameter's tensors, and what they were made from.

    A step reuses them while the parameter's memory, its gradient tensor and its
    buffer tensor are unchanged.  Holding the views keeps the old memory alive,
    so a replaced tensor can never reuse a remembered address.
    """

    __slots__ = ("param", "param_ptr", "grad", "grad_ptr", "buf", "buf_ptr",
                 "param_view", "grad_view", "buf_view")

    def __init__(self, param: torch.Tensor, grad: torch.Tensor,
                 buf: torch.Tensor | None) -> None:
        self.param = param
        self.param_ptr = param.data_ptr()
        self.param_view = param.detach().numpy()
        self.grad = grad
        self.grad_ptr = grad.data_ptr()
        self.grad_view = grad.numpy()
        self.set_buf(buf)

    def set_buf(self, buf: torch.Tensor | None) -> None:
        """Remember the buffer tensor (None before the first step)."""
        self.buf = buf
        self.buf_ptr = 0 if buf is None else buf.data_ptr()
        self.buf_view = None if buf is None else buf.numpy()

    def fresh(self, param: torch.Tensor, grad: torch.Tensor,
              buf: torch.Tensor | None) -> bool:
        """True while these views still show ``param``, ``grad`` and ``buf``."""
        return (self.param is param and self.grad is grad and self.buf is buf
                and self.param_ptr == param.data_ptr()
                and self.grad_ptr == grad.data_ptr()
                and (buf is None or self.buf_ptr == buf.data_ptr()))


def _where(index: int, group: int, position: int) -> str:
    return f"SGD.step(): parameter {index} (param_groups[{group}]['params'][{position}])"


def _check(tensor: torch.Tensor, what: str, param: torch.Tensor, where: str) -> None:
    """``tensor`` (the parameter itself or its grad or buffer) is usable in place.

    Raises TypeError for a dtype the kernels do not take, ValueError for a
    device, layout or shape they cannot work on in place.
    """
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


def _scalar(value: Any) -> float:
    """A hyperparameter as a float (PyTorch allows 1-element tensors)."""
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


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
    """

    def __init__(self, params: Iterable[Any], lr: float | torch.Tensor = 1e-3,
                 momentum: float = 0, dampening: float = 0,
                 weight_decay: float | torch.Tensor = 0, nesterov: bool = False,
                 *, maximize: bool = False) -> None:
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
        defaults = {"lr": lr, "momentum": momentum, "dampening": dampening,
                    "weight_decay": weight_decay, "nesterov": nesterov,
                    "maximize": maximize}
        self._views: list[list[_Views | None]] = []
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)
            group.setdefault("maximize", False)
        self._views = []

    def _gather(self, gi: int, group: dict[str, Any], first_index: int
                ) -> tuple[list[Any], list[Any], list[Any], list[bool], list[_Views]]:
        """This group's views of every parameter that has a gradient.

        Checks each tensor the first time it is seen and returns, with the
        views, the entries still waiting for a momentum buffer (their
        ``buf_view`` is None).
        """
        params = group["params"]
        while len(self._views) <= gi:
            self._views.append([])
        cache = self._views[gi]
        if len(cache) != len(params):
            cache[:] = [None] * len(params)
        uses_buf = group["momentum"] != 0
        state = self.state
        pv: list[Any] = []
        gv: list[Any] = []
        bv: list[Any] = []
        first: list[bool] = []
        waiting: list[_Views] = []
        for i, p in enumerate(params):
            g = p.grad
            if g is None:
                continue
            b = state[p].get("momentum_buffer") if uses_buf else None
            views = cache[i]
            if views is None or not views.fresh(p, g, b):
                where = _where(first_index + i, gi, i)
                _check(p, "the parameter", p, where)
                _check(g, "its grad", p, where)
                if b is not None:
                    _check(b, "its momentum_buffer", p, where)
                views = cache[i] = _Views(p, g, b)
            pv.append(views.param_view)
            gv.append(views.grad_view)
            bv.append(views.buf_view)
            first.append(uses_buf and b is None)
            if uses_buf and b is None:
                waiting.append(views)
        return pv, gv, bv, first, waiting

    def _add_buffers(self, waiting: list[_Views], bv: list[Any]) -> None:
        """Give each waiting parameter a new momentum buffer in its state."""
        for views in waiting:
            buf = torch.empty_like(views.param, memory_format=torch.contiguous_format,
                                   requires_grad=False)
            self.state[views.param]["momentum_buffer"] = buf
            views.set_buf(buf)
        it = iter(waiting)
        for j, view in enumerate(bv):
            if view is None:
                bv[j] = next(it).buf_view

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One SGD step over every param group; returns ``closure()``'s loss.

        Every tensor is checked before any is written: a bad parameter raises
        TypeError or ValueError naming its index and nothing changes.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        batches = []
        first_index = 0
        for gi, group in enumerate(self.param_groups):
            batches.append(self._gather(gi, group, first_index))
            first_index += len(group["params"])
        for group, (pv, gv, bv, first, waiting) in zip(self.param_groups, batches):
            if waiting:
                self._add_buffers(waiting, bv)
            hyper = {"lr": _scalar(group["lr"]), "momentum": group["momentum"],
                     "dampening": group["dampening"],
                     "weight_decay": _scalar(group["weight_decay"]),
                     "nesterov": group["nesterov"], "maximize": group["maximize"]}
            for p, g, b, f in zip(pv, gv, bv, first):
                momentum.sgd(p, g, b, first_step=f, **hyper)
        return loss
