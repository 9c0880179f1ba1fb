"""What a user would run instead of momentum's adam, adamw and lion: steps
on the same arrays (see :mod:`momentum._bench.peers`).

- torch.optim.Adam / AdamW in each mode (for-loop, foreach, fused), in the
  uniform layouts (every array one dtype, rounded to nearest);
- DeepSpeed's ``DeepSpeedCPUAdam`` (its C++ op builds on first use):
  float32, all-bfloat16 (``fp32_optimizer_states=False``) and bfloat16
  parameters and gradients with float32 moments (``fp32_optimizer_states=True``);
- lion-pytorch's ``Lion`` for lion, in the uniform layouts.

Each optimizer's state is set up front to tensors sharing the row's moment
arrays (in 16 bits each peer gets its own copy, equal at the start), so every
timed step is a full step from step 10 on.  Absent peers are reported with
the reason.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from momentum._bench.rules import TIMED
from momentum._bench.storage import Layout
from momentum.rules import RULES as TABLE

TORCH_MODES = {"torch for-loop": {"foreach": False},
               "torch foreach": {"foreach": True},
               "torch fused": {"fused": True}}
DEEPSPEED = "DeepSpeedCPUAdam"
LION = "lion-pytorch"
PEERS = (*TORCH_MODES, DEEPSPEED, LION)
ADAM_FAMILY = ("adam", "adamw")
# The step count the state starts at: the typical call's, one step before.
START = TIMED["adam"]["step"] - 1


def _tensors(arrays: Mapping[str, np.ndarray], names, own: bool) -> dict:
    from momentum._bench.peers import as_tensor
    return {name: as_tensor(arrays[name].copy() if own else arrays[name]) for name in names}


def _param(t: dict):
    p = t["param"].requires_grad_()
    p.grad = t["grad"]
    return p


def torch_adam(rule: str, mode: str, arrays: Mapping[str, np.ndarray], own: bool):
    """``torch.optim.Adam`` (adam) or ``AdamW`` (adamw) ``.step`` in ``mode``."""
    import torch
    h = TIMED[rule]
    t = _tensors(arrays, ("param", "grad", "exp_avg", "exp_avg_sq"), own)
    p = _param(t)
    cls = torch.optim.Adam if rule == "adam" else torch.optim.AdamW
    opt = cls([p], lr=h["lr"], betas=(h["beta1"], h["beta2"]),
              weight_decay=h["weight_decay"], **TORCH_MODES[mode])
    opt.state[p] = {"step": torch.tensor(float(START)), "exp_avg": t["exp_avg"],
                    "exp_avg_sq": t["exp_avg_sq"]}
    return opt.step


def deepspeed_adam(rule: str, arrays: Mapping[str, np.ndarray], own: bool):
    """``DeepSpeedCPUAdam.step`` (adamw_mode for adamw), its moments in the
    moments' dtype of the row."""
    from deepspeed.ops.adam import DeepSpeedCPUAdam
    _cache_cpu_info()
    h = TIMED[rule]
    t = _tensors(arrays, ("param", "grad", "exp_avg", "exp_avg_sq"), own)
    p = _param(t)
    fp32_states = arrays["exp_avg"].dtype == np.float32
    opt = DeepSpeedCPUAdam([p], lr=h["lr"], betas=(h["beta1"], h["beta2"]),
                           weight_decay=h["weight_decay"], adamw_mode=rule == "adamw",
                           fp32_optimizer_states=fp32_states)
    opt.state[p] = {"step": START, "exp_avg": t["exp_avg"], "exp_avg_sq": t["exp_avg_sq"]}
    return opt.step


def _cache_cpu_info() -> None:
    """Make py-cpuinfo's get_cpu_info, which DeepSpeedCPUAdam calls in every
    constructor, answer from a cache: it starts a subprocess and takes about a
    second, once per kernel row (the bench's own process; steps are not affected)."""
    import functools

    import cpuinfo
    if not hasattr(cpuinfo.get_cpu_info, "cache_info"):
        cpuinfo.get_cpu_info = functools.lru_cache(maxsize=None)(cpuinfo.get_cpu_info)


def lion_pytorch(arrays: Mapping[str, np.ndarray], own: bool):
    """lion-pytorch's ``Lion.step``."""
    from lion_pytorch import Lion
    h = TIMED["lion"]
    t = _tensors(arrays, ("param", "grad", "exp_avg"), own)
    p = _param(t)
    opt = Lion([p], lr=h["lr"], betas=(h["beta1"], h["beta2"]), weight_decay=h["weight_decay"])
    opt.state[p] = {"exp_avg": t["exp_avg"]}
    return opt.step


def _deepspeed_layout(rule: str, layout: Layout) -> str | None:
    """Why DeepSpeedCPUAdam cannot step ``layout``, or None when it can."""
    table = TABLE[rule]
    if layout.rounding != "nearest" or layout.state_rounding != "nearest":
        return "DeepSpeedCPUAdam rounds to nearest only"
    dtypes = (layout.dtype("param"), layout.dtype("grad"), layout.dtype("exp_avg"))
    if dtypes in (("float32",) * 3, ("bfloat16",) * 3, ("bfloat16", "bfloat16", "float32")):
        return None
    return "not timed in this layout" if layout.uniform(table) else "no such layout"


def layout_peers(rule: str, layout: Layout, arrays: Mapping[str, np.ndarray]):
    """Every peer's step of ``rule`` (adam, adamw or lion) in ``layout``, and
    why each missing one is missing."""
    import_error = (ImportError, RuntimeError)   # DeepSpeed: its op failed to build
    uniform = layout.uniform(TABLE[rule])
    own = uniform not in ("float32", "float64")
    steps: dict = {}
    missing: dict[str, str] = {}
    makers: dict = {}
    if rule in ADAM_FAMILY:
        for mode in TORCH_MODES:
            makers[mode] = ((lambda m=mode: torch_adam(rule, m, arrays, own)) if uniform
                            else f"torch.optim.{'Adam' if rule == 'adam' else 'AdamW'} "
                                 "has no such layout")
        why = _deepspeed_layout(rule, layout)
        makers[DEEPSPEED] = why or (lambda: deepspeed_adam(rule, arrays, own))
        missing[LION] = "not this rule"
    else:
        makers[LION] = ((lambda: lion_pytorch(arrays, own)) if uniform
                        else "lion-pytorch has no such layout")
        missing.update(dict.fromkeys((*TORCH_MODES, DEEPSPEED), "no optimizer for this rule"))
    for name, make in makers.items():
        if isinstance(make, str):
            missing[name] = make
            continue
        try:
            steps[name] = make()
        except import_error as error:
            missing[name] = "not installed" if isinstance(error, ImportError) else str(error)
    return steps, missing
