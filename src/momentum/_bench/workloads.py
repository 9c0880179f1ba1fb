"""Whole optimizer steps over the parameter shapes of real models."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

import momentum
from momentum import foreach, reference
from momentum._bench.peers import OUR_TORCH_MODES, TORCH_MODES, Step, torch_steps
from momentum._bench.rules import TIMED
from momentum._workloads import load_workload, workload_names

# The candidate every other one is compared with.
BASELINE = "momentum.foreach.sgd"


def by_size() -> list[str]:
    """The shipped workloads, fewest elements first (a quick run takes the first)."""
    return sorted(workload_names(), key=lambda name: load_workload(name)["total_elements"])


def arena(shapes: Sequence[tuple[int, ...]], seed: int = 0) -> momentum.Arena:
    """A float32 :class:`momentum.Arena` of ``shapes`` filled with standard normal values.

    Every candidate steps the arena's views, so all read and write the same
    data, and the Arena's own one-call step is a candidate too.
    """
    rng = np.random.default_rng(seed)
    out = momentum.Arena(shapes, np.float32)
    for block in (out.params, out.grads, out.bufs):
        block[...] = rng.standard_normal(block.size, dtype=np.float32)
    return out


def _loop_over(step: Callable) -> Callable[[list, list, list], None]:
    """A whole step: ``step`` called on every ``(param, grad, buf)`` in turn."""
    def run_all(params: list, grads: list, bufs: list) -> None:
        for p, g, b in zip(params, grads, bufs):
            step(p, g, b, **TIMED["sgd"])
    return run_all


API_LOOP = _loop_over(momentum.sgd)
REFERENCE_LOOP = _loop_over(reference.sgd)


def steps(model: momentum.Arena) -> tuple[dict[str, Step], dict[str, str]]:
    """One full sgd step over all of ``model``'s tensors, per candidate, and the missing peers."""
    views = (model.param_views, model.grad_views, model.buf_views)
    out: dict[str, Step] = {
        BASELINE: lambda: foreach.sgd(*views, **TIMED["sgd"]),
        "momentum.Arena.sgd (1 call)": lambda: model.sgd(**TIMED["sgd"]),
        "momentum.sgd, Python loop": lambda: API_LOOP(*views),
        "reference, Python loop": lambda: REFERENCE_LOOP(*views),
    }
    torch_modes, missing = torch_steps((*OUR_TORCH_MODES, *TORCH_MODES), *views)
    return {**out, **torch_modes}, missing


# The AdamW candidate every other one is compared with.
ADAMW_BASELINE = "momentum.foreach.adamw"


def adamw_arena(shapes: Sequence[tuple[int, ...]], seed: int = 0) -> momentum.Arena:
    """A float32 arena of ``shapes`` for AdamW: standard normal params,
    grads and first moments, squared ones as second moments (never negative)."""
    rng = np.random.default_rng(seed)
    out = momentum.Arena(shapes, np.float32)
    for block in (out.params, out.grads, out.exp_avgs, out.exp_avg_sqs):
        block[...] = rng.standard_normal(block.size, dtype=np.float32)
    out.exp_avg_sqs[...] *= out.exp_avg_sqs
    return out


def _torch_adamw(mode: str | None, model: momentum.Arena, cls=None) -> Step:
    """torch.optim.AdamW in ``mode`` (or ``cls``, a drop-in with its state
    layout) over tensors sharing the arena's views, its state set to the
    arena's moments (so every timed step is a full one)."""
    import torch
    from momentum._bench.adam_peers import START, TORCH_MODES
    h = TIMED["adamw"]
    cls = cls or torch.optim.AdamW
    params = []
    for p, g in zip(model.param_views, model.grad_views):
        t = torch.from_numpy(p).requires_grad_()
        t.grad = torch.from_numpy(g)
        params.append(t)
    opt = cls(params, lr=h["lr"], betas=(h["beta1"], h["beta2"]),
              weight_decay=h["weight_decay"], **TORCH_MODES.get(mode, {}))
    for t, m, v in zip(params, model.exp_avg_views, model.exp_avg_sq_views):
        opt.state[t] = {"step": torch.tensor(float(START)), "exp_avg": torch.from_numpy(m),
                        "exp_avg_sq": torch.from_numpy(v)}
    return opt.step


def adamw_steps(model: momentum.Arena) -> tuple[dict[str, Step], dict[str, str]]:
    """One full AdamW step over all of ``model``'s tensors per candidate
    (foreach, one arena call, torch's foreach and fused AdamW, and
    momentum.torch.AdamW where it exists), and the missing ones."""
    views = (model.param_views, model.grad_views, model.exp_avg_views, model.exp_avg_sq_views)
    h = TIMED["adamw"]
    out: dict[str, Step] = {
        ADAMW_BASELINE: lambda: foreach.adamw(*views, None, **h),
        "momentum.Arena.adamw (1 call)": lambda: model.adamw(**h),
    }
    missing: dict[str, str] = {}
    for mode in ("torch foreach", "torch fused"):
        try:
            out[f"{mode} AdamW"] = _torch_adamw(mode, model)
        except ImportError:
            missing[f"{mode} AdamW"] = "not installed"
    try:
        from momentum.torch import AdamW
    except ImportError:   # torch absent, or a build without momentum.torch.AdamW
        missing["momentum.torch.AdamW"] = "not installed"
    else:
        out["momentum.torch.AdamW"] = _torch_adamw(None, model, AdamW)
    return out, missing
