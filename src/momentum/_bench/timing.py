"""How every number in the benchmark is timed.

A candidate is a *runner*: ``run(k)`` makes ``k`` calls and returns the
seconds they took.  Each candidate first gets an inner count ``k`` so that
one sample lasts at least ``target`` seconds (timer resolution and call
jitter then stay small against it).  Samples are then taken interleaved,
A, B, C, A, B, C, ..., so that drift on a shared machine (frequency,
neighbours) hits every candidate alike, and each candidate is summarised by
the median seconds per call with its interquartile range.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from time import perf_counter
from typing import Callable, Mapping

Runner = Callable[[int], float]

# More than this many calls per sample only happens for a broken runner.
MAX_CALLS = 1 << 24


def loop(fn: Callable[[], object]) -> Runner:
    """A runner that calls ``fn()`` ``k`` times in a plain Python loop."""
    def run(k: int) -> float:
        t0 = perf_counter()
        for _ in range(k):
            fn()
        return perf_counter() - t0
    return run


@dataclass(frozen=True)
class Timing:
    """Seconds per call: median and quartiles over ``samples`` samples of ``calls`` calls."""

    median: float
    q1: float
    q3: float
    samples: int
    calls: int

    def as_dict(self) -> dict:
        """The timing in seconds per call, for the JSON report."""
        return {"median_s": self.median, "q1_s": self.q1, "q3_s": self.q3,
                "samples": self.samples, "calls_per_sample": self.calls}


def calls_for(run: Runner, target: float) -> int:
    """The smallest power-of-two-ish call count whose sample lasts ``>= target`` s.

    The first call also warms caches, allocators and JIT compilers.
    """
    k = 1
    t = run(k)
    while t < target and k < MAX_CALLS:
        # Aim 20 % past the target so that one more round is rarely needed.
        k = min(MAX_CALLS, max(2 * k, int(1.2 * k * target / max(t, 1e-9))))
        t = run(k)
    return k


def summarise(per_call: list[float], calls: int) -> Timing:
    """Median and quartiles of the per-call seconds of each sample."""
    if len(per_call) >= 2:
        q1, _, q3 = statistics.quantiles(per_call, n=4, method="inclusive")
    else:
        q1 = q3 = per_call[0]
    return Timing(statistics.median(per_call), q1, q3, len(per_call), calls)


def interleaved(runners: Mapping[str, Runner], repeats: int,
                target: float) -> dict[str, Timing]:
    """Time every runner ``repeats`` times, round-robin, after calibrating each."""
    calls = {name: calls_for(run, target) for name, run in runners.items()}
    per_call: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            per_call[name].append(run(calls[name]) / calls[name])
    return {name: summarise(per_call[name], calls[name]) for name in runners}
