"""What ``momentum.torch``'s optimizers share: which tensors the kernels
can step in place, the 16-bit storage options of a param group, how a
message names a tensor, and AMP's ``grad_scale``/``found_inf``.  Importing
it tells :mod:`momentum._torch_keys` what torch is (know_torch)."""
from __future__ import annotations

import sys
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

from momentum._torch_keys import know_torch
from momentum.rules import DTYPES, ROUNDINGS, RULES, STATE_ROUNDINGS

# The kernels' storage dtypes as torch's, and the complex dtypes stepped as
# their real views: torch dtype -> (code in DTYPES, reals an element, bytes a real).
_REAL = {getattr(torch, name): code for code, name in enumerate(DTYPES)}
KERNEL_DTYPES = {**{real: (code, 1, real.itemsize) for real, code in _REAL.items()},
                 **{torch.complex(torch.zeros(1, dtype=real), torch.zeros(1, dtype=real)).dtype:
                    (_REAL[real], 2, real.itemsize) for real in (torch.float32, torch.float64)}}
HALF = (torch.bfloat16, torch.float16)
PLAIN = (torch.Tensor, torch.nn.Parameter, torch.nn.Buffer)
know_torch(torch.Tensor, torch.strided, KERNEL_DTYPES, PLAIN)
# The state entry each rounding keeps beside a 16-bit parameter, and its
# dtype (None: the parameter's), as momentum.torch.SGD keeps them.
EXTRA = {"kahan": ("kahan_comp", None), "master": ("master_param", torch.float32)}
EXTRA_KEYS = tuple(key for key, _ in EXTRA.values())


def rounding_extra(p: torch.Tensor, state: dict[str, Any], group: dict[str, Any]
                   ) -> tuple[str | None, torch.dtype | None, torch.Tensor | None]:
    """The state entry the group's rounding keeps beside a 16-bit ``p``:
    ``(key, dtype, tensor)``, ``tensor`` the state's one or None where there
    is none yet, ``dtype`` the one it must have; ``(None, None, None)`` for
    a rounding without one or a parameter that is not 16-bit."""
    key, dtype = EXTRA.get(group["rounding"], (None, None)) if p.dtype in HALF \
        else (None, None)
    if key is None:
        return None, None, None
    return key, dtype or p.dtype, state.get(key)


def new_extra(p: torch.Tensor, key: str) -> torch.Tensor:
    """A first ``key`` entry for ``p``: kahan's zero compensation, or
    master's float32 copy of the parameter."""
    return torch.zeros_like(p) if key == "kahan_comp" else p.detach().to(torch.float32, copy=True)


def dense(tensor: torch.Tensor) -> bool:
    """``tensor``'s elements fill ``numel()`` consecutive elements of memory
    in some order of its dimensions (contiguous, channels_last, a transpose)."""
    if tensor.is_contiguous() or tensor.numel() == 0:
        return True
    expected = 1
    for size, stride in sorted(zip(tensor.shape, tensor.stride()), key=lambda d: d[1]):
        if size != 1:
            if stride != expected:
                return False
            expected *= size
    return True


def kernel_reason(param: torch.Tensor, tensors: Iterable[torch.Tensor],
                  dtypes: Iterable[torch.dtype]) -> str | None:
    """Why the kernels cannot step ``param`` with ``tensors`` (its grad and
    state, each of the dtype ``dtypes`` gives it) in place, or None: all
    plain strided CPU tensors, not lazily negated or conjugated, of a kernel
    dtype, laid out as the parameter (one dense layout), aligned."""
    tensors = [param, *tensors]
    dtypes = [param.dtype, *dtypes]
    if all(type(t) in PLAIN and t.is_cpu and t.layout == torch.strided and t.dtype == dtype
           and t.is_contiguous() and not t.is_neg() and t.data_ptr() % t.element_size() == 0
           for t, dtype in zip(tensors, dtypes)) \
            and dtypes[0] in KERNEL_DTYPES and not dtypes[0].is_complex \
            and all(t.shape == param.shape for t in tensors):
        # the common case, decided at once (alignment asked too: a tensor
        # of torch.frombuffer(..., offset=1) is contiguous and is not)
        return None
    for t, dtype in zip(tensors, dtypes):
        if type(t) not in PLAIN:
            return f"a tensor subclass ({type(t).__name__})"
        if not t.is_cpu:
            return f"a tensor on device {t.device}"
        if t.layout != torch.strided:
            return f"a tensor of layout {t.layout}"
        if t.is_neg() or t.is_conj():
            return "a lazily negated or conjugated view"
        if t.dtype != dtype:
            return f"a {t.dtype} tensor beside a {param.dtype} parameter"
    if param.dtype not in KERNEL_DTYPES:
        return f"dtype {param.dtype}"
    if not dense(param):
        return "a parameter that is not dense (a slice or a strided view)"
    if any(t.shape != param.shape for t in tensors):
        return "a gradient or state of another shape"
    if not all(t.is_contiguous() for t in tensors) and \
            any(t.stride() != param.stride() for t in tensors):
        return "a parameter, gradient and state of different layouts"
    if any(t.data_ptr() % t.element_size() for t in tensors):
        return "a tensor not aligned to its dtype"
    return None


def check_storage(owner: str, rounding: Any, state_rounding: Any, seed: Any,
                  state_dtype: Any) -> None:
    """ValueError or TypeError, naming ``owner``, for a 16-bit storage
    option the optimizer does not take."""
    for name, value, choices in (("rounding", rounding, ROUNDINGS),
                                 ("state_rounding", state_rounding, STATE_ROUNDINGS)):
        if not (isinstance(value, str) and value in choices):
            raise ValueError(f"{owner}: '{name}' must be one of "
                             f"{', '.join(map(repr, choices))}, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{owner}: 'seed' must be an int, not {type(seed).__name__}")
    if not 0 <= seed < 1 << 64:
        raise ValueError(f"{owner}: 'seed' must be in [0, 2**64), got {seed!r}")
    if state_dtype is not None and state_dtype is not torch.float32:
        raise ValueError(f"{owner}: 'state_dtype' must be None (the parameter's dtype) "
                         f"or torch.float32, got {state_dtype!r}")


def state_dtype(param: torch.Tensor, group: dict[str, Any]) -> torch.dtype:
    """The dtype of ``param``'s state buffers in ``group``: float32 for a
    16-bit parameter whose group has ``state_dtype=torch.float32`` (with
    ``rounding="master"``: ZeRO-Offload's layout), else the parameter's (as
    torch keeps them)."""
    if param.dtype in HALF and group["state_dtype"] is torch.float32:
        return torch.float32
    return param.dtype


def scalar(value: Any, name: str, where: str) -> Any:
    """A hyperparameter; a 1-element tensor as its value (torch allows them)."""
    if not isinstance(value, torch.Tensor):
        return value
    if value.numel() != 1:
        raise ValueError(f"{where}: Tensor {name} must be 1-element")
    return value.item()


def hooks_or_profiler(optimizer: Any) -> bool:
    """Whether ``optimizer.step()`` must run inside torch's hook wrapper
    (``torch.optim.Optimizer.profile_hook_step``): a step hook is registered
    on it or globally, or the profiler is on.  The wrapper opens a profiler
    range, which costs tens of µs, much next to small kernels, so the
    optimizers run it only then (their ``step.hooked`` tells torch not to
    wrap step() itself)."""
    return bool(optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks
                or _global_optimizer_pre_hooks or _global_optimizer_post_hooks
                or torch._C._autograd._profiler_enabled())


def closure_and_amp(optimizer: Any, closure: Any) -> tuple[Any, bool, torch.Tensor | None]:
    """The start of every step(): ``closure()``'s loss (with grad enabled,
    None without a closure), then amp()'s ``(skip, grad_scale)``."""
    loss = None
    if closure is not None:
        with torch.enable_grad():
            loss = closure()
    return (loss, *amp(optimizer))


def amp(optimizer: Any) -> tuple[bool, torch.Tensor | None]:
    """``(skip, grad_scale)`` from the ``found_inf`` and ``grad_scale``
    attributes ``torch.amp.GradScaler`` sets on an optimizer whose
    ``_step_supports_amp_scaling`` is true (as torch's fused optimizers
    read them): skip the whole step if ``found_inf`` is nonzero; else
    gradients are divided by ``grad_scale`` (None: not scaled)."""
    found_inf = getattr(optimizer, "found_inf", None)
    if found_inf is not None and float(found_inf) != 0:
        return True, None
    return False, getattr(optimizer, "grad_scale", None)


def unscale(grads: list[torch.Tensor], grad_scale: torch.Tensor | None) -> None:
    """Divide ``grads`` by ``grad_scale`` in place, as torch's fused Adam and
    SGD leave them (they write the unscaled gradient back): one pass over
    the gradients before the kernels' (the rules take no scale); exact, as
    the kernels' own division would be."""
    if grad_scale is not None and grads:
        torch._foreach_div_(grads, grad_scale.to(device="cpu", dtype=torch.float32)
                            .item())


def warn_once(optimizer: Any, why: str) -> None:
    """Say once per optimizer and reason that torch's arithmetic (the
    optimizer's ``_arithmetic``) steps some tensors, from the first frame
    outside momentum and torch."""
    if why in optimizer._warned:
        return
    optimizer._warned.add(why)
    frame, level = sys._getframe(1), 2
    while frame.f_back is not None and (
            frame.f_globals.get("__name__", "").startswith(("momentum.", "torch."))):
        frame, level = frame.f_back, level + 1
    warnings.warn(f"momentum.torch.{type(optimizer).__name__}: {why}: stepped with "
                  f"{optimizer._arithmetic}, not the kernels", RuntimeWarning, stacklevel=level)


# Per rule, read each step: its state arrays' (state key, the hyperparameter
# they need or None), and its hyperparameters' (name, default).
_STATE_ARRAYS = {name: [(a.state_key, a.when) for a in rule.arrays if a.state_key]
                 for name, rule in RULES.items()}
_HYPERS = {name: [(h.name, h.default) for h in rule.hypers] for name, rule in RULES.items()}


def state_keys(rule: str, group: dict[str, Any]) -> tuple[str, ...]:
    """The state entries rule ``rule`` keeps for ``group``: the state key of
    each of its arrays the group's hyperparameters use, in the table's order."""
    return tuple([key for key, when in _STATE_ARRAYS[rule] if when is None or group[when]])


def hypers_of(rule: str, values: dict[str, Any]) -> tuple[Any, ...]:
    """Rule ``rule``'s hyperparameters in the table's order, from ``values``
    (a per-tensor one missing from it: its default, which the snapshot
    replaces tensor by tensor)."""
    return tuple([values.get(name, default) for name, default in _HYPERS[rule]])


def tensor_name(rule: str, rounding: str, first_index: int, gi: int, i: int,
                array: int) -> str:
    """Array ``array`` of rule ``rule`` (its count: the rounding's extra
    array; one more: the step count) of parameter ``i`` of group ``gi``, whose first parameter has
    state-dict index ``first_index``, for a message."""
    arrays = RULES[rule].arrays
    if array == len(arrays):
        whose = f"the {EXTRA.get(rounding, ('extra array',))[0]} of "
    elif array == len(arrays) + 1:
        whose = "the step count of "
    else:
        name, key = arrays[array].name, arrays[array].state_key
        whose = "" if name == "param" else "the grad of " if key is None else f"the {key} of "
    return f"{whose}parameter {first_index + i} (param_groups[{gi}]['params'][{i}])"
