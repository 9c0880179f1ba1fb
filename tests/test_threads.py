"""Threads: large calls release the GIL, results do not depend on the
thread count, the count can be set (and limited by threadpoolctl), and
concurrent calls from Python threads are correct."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

import momentum
from momentum import _build
from conftest import (ARGS, busiest, assert_same_arrays, copies, offset_view, reference_step,
                      untouched, values)

# One case per rule with most flags set.
CASES: dict[str, dict[str, Any]] = {rule: busiest(rule) for rule in ARGS}


@pytest.fixture
def restore_threads() -> Iterator[None]:
    """Put the default thread count back after the test."""
    yield
    momentum.set_num_threads(0)


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Let a waiting thread ask for the GIL every 0.1 ms."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    yield
    sys.setswitchinterval(old)


def test_large_call_releases_the_gil(restore_threads, fast_switching):
    # A worker thread stamps the time in a loop while the main thread is in
    # one call.  Had the call kept the GIL, the worker could not run for the
    # whole call: its stamps would leave a gap as long as the call.  So we
    # require stamps throughout the call window, no gap over half of it.
    momentum.set_num_threads(1)   # leave the other core to the worker
    n = 32 * 2**20
    param, grad, buf = (np.full(n, v, dtype=np.float32) for v in (1.0, 0.5, 0.25))
    stamps: list[float] = []
    stop = threading.Event()

    def stamp() -> None:
        while not stop.is_set():
            stamps.append(time.perf_counter())

    worker = threading.Thread(target=stamp)
    worker.start()
    while not stamps:   # the worker is running
        time.sleep(1e-3)
    t0 = time.perf_counter()
    momentum.sgd(param, grad, buf, lr=0.1, momentum=0.9)
    t1 = time.perf_counter()
    stop.set()
    worker.join()
    inside = [t0] + [s for s in stamps if t0 < s < t1] + [t1]
    gap = max(np.diff(inside))
    assert gap < (t1 - t0) / 2, (
        f"worker stalled {gap * 1e3:.1f} ms of a {(t1 - t0) * 1e3:.1f} ms call")
    assert param[0] == np.float32(1.0) - np.float32(0.1) * (
        np.float32(0.9) * np.float32(0.25) + np.float32(0.5))   # the call did run


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [100_000, 131_072, 1_000_003, 4_000_037])
@pytest.mark.parametrize("rule", list(CASES))
def test_thread_count_does_not_change_results(rule, size, dtype, rng, restore_threads):
    start = {k: values(rng, size, dtype) for k in ARGS[rule]}
    expected = copies(start)
    reference_step(rule, expected, CASES[rule])
    for n in (1, 2, 3, 4):
        momentum.set_num_threads(n)
        # grad one element off, so shares split at different alignments
        ours = {k: offset_view(v, 1 if k == "grad" else 0) for k, v in start.items()}
        with untouched({"grad": ours["grad"]}):
            getattr(momentum, rule)(*(ours[k] for k in ARGS[rule]), **CASES[rule])
        assert_same_arrays(rule, ours, expected, f"{n} threads")


def test_set_num_threads(restore_threads):
    for n in (1, 2, 3, 7):
        momentum.set_num_threads(n)
        assert momentum.get_num_threads() == (n if _build.BUILD["openmp"] else 1)
    for bad, error in ((-1, ValueError), (2**31, ValueError), (1.5, TypeError),
                       ("2", TypeError)):
        with pytest.raises(error, match="set_num_threads\\(\\): 'n' must be"):
            momentum.set_num_threads(bad)
    assert momentum.get_num_threads() == (7 if _build.BUILD["openmp"] else 1)


@pytest.mark.skipif(not _build.BUILD["openmp"], reason="built without OpenMP")
def test_threadpoolctl_limits_the_default(restore_threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    momentum.set_num_threads(0)
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        assert momentum.get_num_threads() == 1
    momentum.set_num_threads(3)   # an explicit count wins over the limit
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        assert momentum.get_num_threads() == 3


def test_concurrent_calls_from_python_threads(rng):
    steps, size = 5, 1_000_003
    jobs = [("sgd", np.float32), ("heavy_ball", np.float64)]
    ours = [{k: values(rng, size, dtype) for k in ARGS[rule]} for rule, dtype in jobs]
    theirs = [copies(arrays) for arrays in ours]
    barrier = threading.Barrier(len(jobs))

    def run(rule: str, arrays: dict[str, np.ndarray]) -> None:
        barrier.wait()
        for _ in range(steps):
            getattr(momentum, rule)(*(arrays[k] for k in ARGS[rule]), **CASES[rule])

    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(run, rule, arrays) for (rule, _), arrays in zip(jobs, ours)]
        for f in futures:
            f.result()
    for (rule, _), mine, ref in zip(jobs, ours, theirs):
        for _ in range(steps):
            reference_step(rule, ref, CASES[rule])
        assert_same_arrays(rule, mine, ref)


def _threads_after(env_value: str, code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with MOMENTUM_NUM_THREADS=env_value."""
    env = dict(os.environ, MOMENTUM_NUM_THREADS=env_value)
    return subprocess.run([sys.executable, "-c", "import momentum\n" + code],
                          env=env, capture_output=True, text=True)


@pytest.mark.skipif(not _build.BUILD["openmp"], reason="built without OpenMP")
def test_environment_sets_the_count_and_set_num_threads_0_returns_to_it():
    result = _threads_after("3", "print(momentum.get_num_threads())\n"
                                 "momentum.set_num_threads(2)\n"
                                 "print(momentum.get_num_threads())\n"
                                 "momentum.set_num_threads(0)\n"
                                 "print(momentum.get_num_threads())")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["3", "2", "3"]


def test_environment_with_a_bad_count_fails_loudly():
    result = _threads_after("many", "")
    assert result.returncode != 0
    assert "MOMENTUM_NUM_THREADS must be a whole number >= 0, got 'many'" in result.stderr
