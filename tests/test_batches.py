"""momentum.foreach on batches mixing zero-size, tiny and large tensors: at
every thread count each tensor is bitwise what ``momentum.reference`` makes
of it alone, and every thread count gives the same bits."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import momentum
import momentum.foreach as fe
from momentum.rules import RULES
from conftest import ARGS, assert_bitwise_equal, offset_view, reference_step, untouched, values

# Sizes straddling vector widths (SimSIMD's), each many times, so that the
# threads' shares also begin and end among tiny tensors.
TINY = [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 97] * 30
# Together about 480 Ki elements: far past the 128 Ki from which a batch is
# split, and enough for 7 threads to each get work (the scheduler gives a
# thread at least 64 Ki elements).
LARGE = [131_073, 200_003, 150_001]
THREAD_COUNTS = (1, 2, 3, 7)
SEEDS = (0, 1, 2)

# (rule, hyperparameters, how): "per tensor" passes one first_step bool per
# tensor; bufs "none" passes bufs=None, "some" mixes in None items.
CASES: list[tuple[str, dict[str, Any], str]] = [
    ("update_buffer", dict(momentum=0.9, dampening=0.3), ""),
    ("sgd", dict(lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=True, maximize=True), ""),
    ("sgd", dict(lr=0.1, momentum=0.9, dampening=0.25), "per tensor"),
    ("sgd", dict(lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=True), "per tensor"),
    ("sgd", dict(lr=0.05, weight_decay=1e-2), "bufs none"),
    ("sgd", dict(lr=0.05, maximize=True), "bufs some"),
    ("heavy_ball", dict(lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=True), ""),
    ("heavy_ball", dict(lr=0.1, momentum=0.9, maximize=True), ""),
]
CASE_IDS = [f"{rule}({', '.join(f'{k}={v}' for k, v in hyper.items())})"
            + (f"-{how.replace(' ', '-')}" if how else "") for rule, hyper, how in CASES]
# foreach's sequence name for each array name of the rules (the table's plurals).
LISTS = {a.name: a.plural for rule in RULES.values() for a in rule.arrays}


def batch(rule: str, seed: int, how: str) -> tuple[list[dict], list[dict], list[bool]]:
    """The tensors of a batch in shuffled order, each a dict of ``rule``'s
    arrays (random dtype, values with specials); for each array an offset
    of 0 or 1 element at which its copies start in their allocation (so the
    arrays of a triple are not all aligned alike); and one first_step flag
    per tensor."""
    rng = np.random.default_rng(seed)
    sizes = rng.permutation(TINY + LARGE)
    tensors, offsets = [], []
    for n in sizes:
        dtype = rng.choice([np.float32, np.float64])
        tensors.append({k: values(rng, int(n), dtype) for k in ARGS[rule]})
        offsets.append({k: int(rng.integers(0, 2)) for k in ARGS[rule]})
        if how == "bufs some" and rng.random() < 0.5:
            tensors[-1]["buf"] = None
    return tensors, offsets, [bool(f) for f in rng.integers(0, 2, len(sizes))]


def placed(tensors: list[dict], offsets: list[dict]) -> list[dict]:
    """Fresh copies of ``tensors``, each array at its offset."""
    return [{k: None if a is None else offset_view(a, off[k]) for k, a in t.items()}
            for t, off in zip(tensors, offsets)]


def run(rule: str, tensors: list[dict], hyper: dict[str, Any], how: str) -> None:
    """One foreach call of ``rule`` over ``tensors``, checking that no grad
    (and with momentum 0 no buf) is written."""
    lists = [[t[k] for t in tensors] for k in ARGS[rule]]
    if how == "bufs none":
        lists[ARGS[rule].index("buf")] = None
    read = {f"grads[{i}]": t["grad"] for i, t in enumerate(tensors)}
    if rule == "sgd" and not hyper.get("momentum"):
        read.update({f"bufs[{i}]": t["buf"] for i, t in enumerate(tensors)
                     if t["buf"] is not None})
    with untouched(read):
        getattr(fe, rule)(*lists, **hyper)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rule, hyper, how", CASES, ids=CASE_IDS)
def test_batch_equals_reference_at_every_thread_count(rule, hyper, how, seed):
    start, offsets, flags = batch(rule, seed, how)
    if how == "per tensor":
        hyper = dict(hyper, first_step=flags)
    expected = placed(start, offsets)
    for i, t in enumerate(expected):
        one = dict(hyper, first_step=flags[i]) if how == "per tensor" else hyper
        reference_step(rule, t, one)
    results = []
    try:
        for n in THREAD_COUNTS:
            momentum.set_num_threads(n)
            ours = placed(start, offsets)
            run(rule, ours, hyper, how)
            for i, (mine, want) in enumerate(zip(ours, expected)):
                for k in ARGS[rule]:
                    if want[k] is not None:
                        assert_bitwise_equal(mine[k], want[k], f"{n} threads, "
                                             f"{LISTS[k]}[{i}] ({want[k].size} elements)")
            results.append(b"".join(a.tobytes() for t in ours for a in t.values()
                                    if a is not None))
    finally:
        momentum.set_num_threads(0)
    # The reference comparison forgives a NaN's payload; thread counts must
    # agree on every bit.
    for n, bits in zip(THREAD_COUNTS[1:], results[1:]):
        assert bits == results[0], f"{n} threads differ from {THREAD_COUNTS[0]}"


@pytest.mark.parametrize("seed", SEEDS)
def test_sgd_groups_batch_at_every_thread_count(seed):
    # Three groups with their own hyperparameters, split at random among
    # the tiny and large tensors, run as one batch.
    groups = [dict(lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=True),
              dict(lr=0.05),
              dict(lr=0.2, momentum=0.5, dampening=0.25, maximize=True)]
    start, offsets, flags = batch("sgd", seed, "")
    cuts = sorted(np.random.default_rng(seed).choice(len(start), 2, replace=False))
    spans = list(zip([0, *cuts], [*cuts, len(start)]))
    expected = placed(start, offsets)
    for (lo, hi), hyper in zip(spans, groups):
        for i in range(lo, hi):
            reference_step("sgd", expected[i], dict(hyper, first_step=flags[i]))
    try:
        for n in THREAD_COUNTS:
            momentum.set_num_threads(n)
            ours = placed(start, offsets)
            fe.sgd_groups([dict(hyper, params=[t["param"] for t in ours[lo:hi]],
                                grads=[t["grad"] for t in ours[lo:hi]],
                                bufs=[t["buf"] for t in ours[lo:hi]],
                                first_step=flags[lo:hi])
                           for (lo, hi), hyper in zip(spans, groups)])
            for i, (mine, want) in enumerate(zip(ours, expected)):
                for k in ("param", "buf"):
                    assert_bitwise_equal(mine[k], want[k], f"{n} threads, tensor {i} {k}")
    finally:
        momentum.set_num_threads(0)
