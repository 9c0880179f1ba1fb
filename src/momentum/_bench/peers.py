"""What a user would run instead of momentum, as steps on the same arrays.

Each candidate is a *step*: a function of no arguments that makes one call.
Every step updates the arrays it is given in place (PyTorch through
``torch.from_numpy``, which shares memory), so all candidates of one row
read and write identical data.  A peer that is not installed, or has no form
of a rule, is reported with the reason instead of a step.
"""
from __future__ import annotations

import importlib
from typing import Callable, Mapping, Sequence

import numpy as np

import momentum
from momentum import reference
from momentum._bench import adam_peers, storage
from momentum._bench.rules import TIMED, args
from momentum._bench.storage import Layout
from momentum.rules import RULES as TABLE

TORCH_MODES = {"torch for-loop": {"foreach": False},
               "torch foreach": {"foreach": True},
               "torch fused": {"fused": True}}
# momentum's own optimizer, as a PyTorch user runs it (momentum.torch.SGD).
OUR_TORCH_MODES = {"momentum.torch.SGD": {},
                   "momentum.torch.SGD(flat=True)": {"flat": True}}
PEERS = (*TORCH_MODES, "numba", "numexpr", adam_peers.DEEPSPEED, adam_peers.LION)
# The rules whose peers are in momentum._bench.adam_peers.
NEW_RULES = ("adam", "adamw", "lion")
# The plain C loop that moves sgd's bytes (momentum._probe): the ceiling.
C_LOOP = "C fused loop"

Step = Callable[[], object]

# numexpr's form of each rule, one evaluate() per array written.
NUMEXPR = {
    "update_buffer": [("buf", "momentum*buf + keep*grad")],
    "sgd": [("buf", "momentum*buf + (grad + weight_decay*param)"),
            ("param", "param - lr*buf")],
    "heavy_ball": [("buf", "momentum*buf + lr*(grad + weight_decay*param)"),
                   ("param", "param - buf")],
}


def set_threads(n: int) -> None:
    """Use ``n`` threads in momentum and in every installed peer (0: momentum's default)."""
    momentum.set_num_threads(n)
    n = n or momentum.get_num_threads()
    for name in ("torch", "numba", "numexpr"):
        try:
            importlib.import_module(name).set_num_threads(n)
        except ImportError:
            pass


def ours(rule: str, param: np.ndarray, grad: np.ndarray, buf: np.ndarray) -> dict[str, Step]:
    """``momentum`` and ``reference`` (NumPy) steps of ``rule``."""
    call_args, hyper = args(rule, param, grad, buf), TIMED[rule]
    kernel, spec = getattr(momentum, rule), getattr(reference, rule)
    return {"momentum": lambda: kernel(*call_args, **hyper),
            "reference": lambda: spec(*call_args, **hyper)}


def torch_sgd(mode: str, params: Sequence[np.ndarray], grads: Sequence[np.ndarray],
              bufs: Sequence[np.ndarray]) -> Step:
    """``torch.optim.SGD(...).step`` in ``mode`` (or ``momentum.torch.SGD``
    for a mode of OUR_TORCH_MODES) over tensors sharing the arrays' memory.

    The momentum buffers are put in the optimizer's state up front, so every
    timed step is a full momentum step on ``bufs``.  (``flat=True`` copies
    the tensors into its own arena at the first step.)
    """
    import torch
    if mode in OUR_TORCH_MODES:
        from momentum.torch import SGD
        options = OUR_TORCH_MODES[mode]
    else:
        SGD, options = torch.optim.SGD, TORCH_MODES[mode]
    tensors = [as_tensor(p).requires_grad_() for p in params]
    for t, g in zip(tensors, grads):
        t.grad = as_tensor(g)
    opt = SGD(tensors, **TIMED["sgd"], **options)
    for t, b in zip(tensors, bufs):
        opt.state[t]["momentum_buffer"] = as_tensor(b)
    return opt.step


def as_tensor(a: np.ndarray):
    """A torch tensor sharing ``a``'s memory; an ml_dtypes bfloat16 array
    (which torch.from_numpy does not know) as a torch.bfloat16 view of its bits."""
    import torch
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _numba(rule: str, param: np.ndarray, grad: np.ndarray, buf: np.ndarray) -> Step:
    from momentum._bench import numba_rules
    dtype = param.dtype.type
    hyper = dict(TIMED[rule])
    if rule == "update_buffer":
        hyper["keep"] = 1 - hyper.pop("dampening", 0.0)
    scalars = [dtype(v) for v in hyper.values()]
    fn, call_args = getattr(numba_rules, rule), args(rule, param, grad, buf)
    return lambda: fn(*call_args, *scalars)


def _numexpr(rule: str, param: np.ndarray, grad: np.ndarray, buf: np.ndarray) -> Step:
    import numexpr
    dtype = param.dtype.type
    hyper = TIMED[rule]
    names = {"param": param, "grad": grad, "buf": buf,
             "keep": dtype(1 - hyper.get("dampening", 0.0))}
    names.update({k: dtype(v) for k, v in hyper.items()})
    steps = [(names[out], expr) for out, expr in NUMEXPR[rule]]

    def step() -> None:
        for out, expr in steps:
            numexpr.evaluate(expr, local_dict=names, out=out)
    return step


def torch_steps(modes: Sequence[str], params: Sequence[np.ndarray],
                grads: Sequence[np.ndarray],
                bufs: Sequence[np.ndarray]) -> tuple[dict[str, Step], dict[str, str]]:
    """torch_sgd's step in each of ``modes`` over the arrays, and "not
    installed" for each mode whose optimizer cannot be imported."""
    steps: dict[str, Step] = {}
    missing: dict[str, str] = {}
    for mode in modes:
        try:
            steps[mode] = torch_sgd(mode, params, grads, bufs)
        except ImportError:
            missing[mode] = "not installed"
    return steps, missing


def stored(rule: str, layout: Layout, arrays: Mapping[str, np.ndarray]) -> dict[str, Step]:
    """``momentum`` and ``reference`` steps of ``rule`` on ``arrays`` stored as ``layout``."""
    positional, keywords = storage.call(TABLE[rule], layout, arrays)
    hyper = {**TIMED[rule], **keywords}
    kernel, spec = getattr(momentum, rule), getattr(reference, rule)
    return {"momentum": lambda: kernel(*positional, **hyper),
            "reference": lambda: spec(*positional, **hyper)}


def layout_peers(rule: str, layout: Layout,
                 arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, Step], dict[str, str]]:
    """Every peer's step of ``rule`` in ``layout``, and why each missing one is missing:
    torch.optim.SGD keeps its buffer in the parameter's dtype and rounds to
    nearest; numba and numexpr have no 16-bit arithmetic.  In 16 bits each
    torch mode steps its own copy of the arrays (equal at the start)."""
    if rule in NEW_RULES:
        steps, missing = adam_peers.layout_peers(rule, layout, arrays)
        return steps, {**missing, **dict.fromkeys(("numba", "numexpr"), "no form of this rule")}
    dtype = layout.uniform(TABLE[rule])
    if dtype in ("float32", "float64"):
        return peers(rule, *(arrays.get(name, arrays["buf"]) for name in ("param", "grad", "buf")))
    missing = dict.fromkeys(("numba", "numexpr"), "no 16-bit storage")
    if dtype is None:
        return {}, {**dict.fromkeys(TORCH_MODES, "torch.optim.SGD has no such layout"), **missing}
    if rule != "sgd":
        return {}, {**dict.fromkeys(TORCH_MODES, "no torch optimizer for this rule"), **missing}
    # Each torch mode steps its own copy (equal at the start): torch 2.13's
    # fused float16 step drives the buffer to infinity within a few hundred
    # steps, which would send every candidate after it down NaN paths.
    steps, absent = {}, {}
    for mode in TORCH_MODES:
        own = {name: arrays[name].copy() for name in ("param", "grad", "buf")}
        step, why = torch_steps([mode], [own["param"]], [own["grad"]], [own["buf"]])
        steps.update(step)
        absent.update(why)
    return steps, {**absent, **missing}


def peers(rule: str, param: np.ndarray, grad: np.ndarray,
          buf: np.ndarray) -> tuple[dict[str, Step], dict[str, str]]:
    """Steps of every peer of ``rule``, and why each missing one is missing."""
    if rule == "sgd":
        steps, missing = torch_steps(TORCH_MODES, [param], [grad], [buf])
    else:
        steps, missing = {}, dict.fromkeys(TORCH_MODES, "no torch optimizer for this rule")
    for name, make in (("numba", _numba), ("numexpr", _numexpr)):
        try:
            steps[name] = make(rule, param, grad, buf)
        except ImportError:
            missing[name] = "not installed"
    return steps, missing
