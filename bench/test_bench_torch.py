"""One ``optimizer.step()`` over a whole model: momentum.torch.SGD vs torch.optim.SGD.

Candidates: ours (per-tensor views), ours with ``flat=True`` (one arena),
``torch.optim.SGD(fused=True)`` and the default ``torch.optim.SGD`` (its
per-tensor for-loop on CPU) with the bench's hyperparameters (TIMED["sgd"]), float32, at 1
and 2 threads (``torch.set_num_threads`` and ``momentum.set_num_threads``).

pytest-benchmark, one group per workload and thread count::

    PYTHONPATH=src python -m pytest bench/test_bench_torch.py --benchmark-group-by=group

A second set of groups times the step of a training loop, after
``zero_grad()`` and a backward pass have made new gradients.

The candidates interleaved in one run, medians and ratios (the figures to
quote on a shared machine)::

    PYTHONPATH=src python bench/test_bench_torch.py [rounds]
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable

import pytest

torch = pytest.importorskip("torch")

from momentum._bench import timing  # noqa: E402
from momentum._bench.peers import set_threads  # noqa: E402
from momentum._bench.rules import TIMED  # noqa: E402
from momentum._workloads import load_workload, workload_names  # noqa: E402
from momentum.torch import SGD  # noqa: E402

HYPER = dict(TIMED["sgd"])
CANDIDATES: dict[str, Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]] = {
    "momentum": lambda ps: SGD(ps, **HYPER),
    "momentum-flat": lambda ps: SGD(ps, **HYPER, flat=True),
    "torch-fused": lambda ps: torch.optim.SGD(ps, **HYPER, fused=True),
    "torch-for-loop": lambda ps: torch.optim.SGD(ps, **HYPER),
}


def make_params(name: str) -> list[torch.nn.Parameter]:
    """Float32 parameters of workload ``name``, each with a gradient."""
    gen = torch.Generator().manual_seed(0)
    params = []
    for shape in load_workload(name)["shapes"]:
        p = torch.nn.Parameter(torch.randn(shape, generator=gen))
        p.grad = torch.randn(shape, generator=gen) * 1e-3
        params.append(p)
    return params


def ready(candidate: str, name: str) -> torch.optim.Optimizer:
    """The optimizer over fresh parameters, past its first step (which
    allocates the momentum buffers)."""
    opt = CANDIDATES[candidate](make_params(name))
    opt.step()
    return opt


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("candidate", list(CANDIDATES))
@pytest.mark.parametrize("name", workload_names())
def test_step(benchmark, name, candidate, threads):
    set_threads(threads)
    opt = ready(candidate, name)
    benchmark.group = f"{name} {threads} thread(s)"
    rounds = max(3, min(100, int(2e8 // load_workload(name)["total_elements"])))
    benchmark.pedantic(opt.step, rounds=rounds, iterations=1, warmup_rounds=1)


# A training loop's step: the gradients are new tensors made by backward
# after zero_grad() (so a cached view of the old ones cannot be reused).
LOOP_WORKLOADS = ["many-small", "resnet50"]


def backward_of(opt: torch.optim.Optimizer) -> Callable[[], None]:
    """zero_grad() then a backward pass that gives every parameter a new
    gradient (of sum(p * w) for fixed random w)."""
    params = [p for group in opt.param_groups for p in group["params"]]
    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(p.shape, generator=gen) * 1e-3 for p in params]

    def run() -> None:
        opt.zero_grad()
        sum((p * w).sum() for p, w in zip(params, weights)).backward()
    return run


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("candidate", list(CANDIDATES))
@pytest.mark.parametrize("name", LOOP_WORKLOADS)
def test_step_after_backward(benchmark, name, candidate, threads):
    set_threads(threads)
    opt = ready(candidate, name)
    benchmark.group = f"{name} {threads} thread(s), after backward"
    benchmark.pedantic(opt.step, setup=backward_of(opt), rounds=20, iterations=1,
                       warmup_rounds=1)


def timed_after(before: Callable[[], None], step: Callable[[], object]) -> timing.Runner:
    """A runner of ``step`` that first runs ``before`` untimed, each call."""
    def run(k: int) -> float:
        seconds = 0.0
        for _ in range(k):
            before()
            start = time.perf_counter()
            step()
            seconds += time.perf_counter() - start
        return seconds
    return run


def interleaved(name: str, threads: int, rounds: int,
                after_backward: bool = False) -> dict[str, float]:
    """Median step time (s) of every candidate, one step per sample, timed
    in turn round by round; with ``after_backward``, each step follows
    zero_grad() and a backward pass (not timed), as in a training loop."""
    set_threads(threads)
    opts = {c: ready(c, name) for c in CANDIDATES}
    runners = {c: timed_after(backward_of(opt), opt.step) if after_backward
               else timing.loop(opt.step) for c, opt in opts.items()}
    # A target of 0 s: one step per sample (a step is milliseconds).
    timings = timing.interleaved(runners, rounds, target=0.0)
    return {c: t.median for c, t in timings.items()}


def main(rounds: int) -> None:
    print(f"median step time (ms) over {rounds} interleaved rounds; "
          f"ratio = torch time / momentum time")
    print(f"{'workload':12} thr " + " ".join(f"{c:>15}" for c in CANDIDATES)
          + "  fused/ours loop/ours fused/flat")
    runs = [(name, False) for name in workload_names()]
    runs += [(name, True) for name in LOOP_WORKLOADS]
    for name, after_backward in runs:
        how = "after backward" if after_backward else "same grads"
        for threads in (1, 2):
            med = interleaved(name, threads, rounds, after_backward)
            print(f"{name:12} {threads:3} "
                  + " ".join(f"{med[c] * 1e3:15.3f}" for c in CANDIDATES)
                  + f"  {med['torch-fused'] / med['momentum']:10.2f}"
                  + f" {med['torch-for-loop'] / med['momentum']:9.2f}"
                  + f" {med['torch-fused'] / med['momentum-flat']:10.2f}  {how}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
