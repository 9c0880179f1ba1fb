"""Bitwise parity with ``momentum.reference``: every rule, every flag
combination, both dtypes, sizes around every vector width, n-d and 0-d
shapes, element-offset views, several steps, and non-NumPy buffers."""
from __future__ import annotations

import array
import itertools
from typing import Any

import numpy as np
import pytest

from conftest import CASES as BASE_CASES
from conftest import ARGS, busiest, case_id, copies, offset_view, step_both, values

DTYPES = [np.float32, np.float64]
SIZES = [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 97, 1000]
SHAPES = [(), (1, 1), (0, 3), (3, 0, 2), (2, 3), (4, 5, 6), (2, 3, 4, 5), (1, 17, 1)]
LARGE = 1_100_003
STEPS = 3
# Hyperparameters that are not exact in float32, so the rounding of every
# scalar to the arrays' dtype is exercised.
LR, MOMENTUM, DAMPENING, WEIGHT_DECAY = 0.1, 0.9, 0.3, 1e-2


# Every flag combination of every rule (from the table), and the EMA form of
# update_buffer, whose 1 - dampening is the rounding of 1 - momentum.
CASES = BASE_CASES + [("update_buffer", dict(momentum=MOMENTUM, dampening=MOMENTUM), ())]


def run_steps(rule: str, hyper: dict[str, Any], absent: tuple[str, ...], shape: Any,
              dtype: type, rng: np.random.Generator, offsets: dict[str, int]) -> None:
    """STEPS steps on random data, a fresh grad each step, checked after each."""
    ours = {k: offset_view(values(rng, shape, dtype), offsets.get(k, 0))
            for k in ARGS[rule]}
    ours.update(dict.fromkeys(absent))
    theirs = copies(ours)
    for step in range(STEPS):
        theirs["grad"][...] = ours["grad"][...] = values(rng, shape, dtype)
        step_both(rule, ours, theirs, hyper, f"step {step} shape {shape}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("shape", SIZES + SHAPES, ids=str)
def test_matches_reference(case, shape, dtype, rng):
    run_steps(*case, shape, dtype, rng, offsets={})


# Odd element offsets, different for each array, so no two arrays share an
# alignment and vector loops meet every peel/remainder combination.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("shape", [1, 7, 17, 33, 65, 1000, (3, 5, 7)], ids=str)
def test_matches_reference_at_element_offsets(case, shape, dtype, rng):
    run_steps(*case, shape, dtype, rng, offsets={"param": 1, "grad": 3, "buf": 5})


# Above one Mi elements the call releases the GIL and may use threads; one
# case per rule with most flags set keeps the suite fast.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [(rule, busiest(rule), ()) for rule in ARGS] + [
    ("sgd", dict(lr=LR, momentum=MOMENTUM, dampening=DAMPENING, first_step=True), ()),
    ("sgd", dict(lr=LR, weight_decay=WEIGHT_DECAY), ("buf",)),
], ids=case_id)
def test_matches_reference_large(case, dtype, rng):
    run_steps(*case, LARGE, dtype, rng, offsets={"grad": 1})


def exporter(kind: str, data: np.ndarray) -> Any:
    """A writable non-NumPy buffer holding a copy of ``data``."""
    code = "f" if data.dtype == np.float32 else "d"
    if kind == "array":
        return array.array(code, data.tobytes())
    return memoryview(bytearray(data.tobytes())).cast(code)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [c for c in CASES if not c[2]], ids=case_id)
def test_buffer_exporters_are_updated_in_place(case, dtype, rng):
    rule, hyper, _ = case
    kinds = itertools.cycle(["array", "memoryview"])   # mixed in one call
    ours = {k: exporter(next(kinds), values(rng, 37, dtype)) for k in ARGS[rule]}
    theirs = {k: np.asarray(memoryview(v)).copy() for k, v in ours.items()}
    for step in range(STEPS):
        step_both(rule, ours, theirs, hyper, f"step {step}")


# NumPy scalars act as the Python floats they hold: the kernel and the
# reference both round each hyperparameter once to the arrays' dtype.
@pytest.mark.parametrize("scalar", [np.float64, np.float32, float], ids=lambda t: t.__name__)
@pytest.mark.parametrize("dtype", DTYPES)
def test_numpy_scalar_hyperparameters(scalar, dtype, rng):
    hyper = {k: scalar(v) for k, v in dict(lr=LR, momentum=MOMENTUM,
                                           dampening=DAMPENING,
                                           weight_decay=WEIGHT_DECAY).items()}
    run_steps("sgd", hyper, (), 1000, dtype, rng, offsets={})


def test_read_only_buf_is_accepted_when_momentum_is_zero(rng):
    # With momentum 0 the buffer is never written, so read-only is fine.
    ours = {k: values(rng, 100, np.float32) for k in ARGS["sgd"]}
    ours["buf"].flags.writeable = False
    theirs = copies(ours)
    step_both("sgd", ours, theirs, dict(lr=LR, weight_decay=WEIGHT_DECAY))
