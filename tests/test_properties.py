"""Hypothesis: for any valid shapes, values and hyperparameters, every rule
is bitwise equal to ``momentum.reference`` (see conftest for "bitwise"),
also at the sizes where a call releases the GIL and where it is split over
threads, at one and two threads."""
from __future__ import annotations

from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import momentum
from conftest import (ARGS, assert_same_arrays, copies, offset_view, reads_only,
                      reference_step, step_both, untouched, values)

SETTINGS = settings(max_examples=200, deadline=None)

dtypes = st.sampled_from([np.float32, np.float64])
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=12)


def rates() -> st.SearchStrategy[float]:
    """A finite value >= 0: zero, ordinary, tiny or huge (overflowing float32)."""
    return st.one_of(st.just(0.0), st.floats(0.0, 1.0), st.floats(0.0, 1e300))


@st.composite
def arrays(draw: st.DrawFn, rule: str) -> dict[str, np.ndarray]:
    """The arrays of ``rule``: one dtype and shape, any values."""
    dtype = draw(dtypes)
    shape = draw(shapes)
    elements = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True,
                         width=np.dtype(dtype).itemsize * 8)
    return {k: draw(hnp.arrays(dtype, shape, elements=elements)) for k in ARGS[rule]}


@st.composite
def sgd_hyper(draw: st.DrawFn) -> dict[str, Any]:
    momentum = draw(rates())
    dampening = draw(st.one_of(st.just(0.0), st.floats(0.0, 1.0)))
    can_nesterov = momentum > 0 and dampening == 0
    return dict(lr=draw(rates()), momentum=momentum, dampening=dampening,
                weight_decay=draw(rates()),
                nesterov=can_nesterov and draw(st.booleans()),
                maximize=draw(st.booleans()), first_step=draw(st.booleans()))


@st.composite
def heavy_ball_hyper(draw: st.DrawFn) -> dict[str, Any]:
    momentum = draw(rates())
    return dict(lr=draw(rates()), momentum=momentum, weight_decay=draw(rates()),
                nesterov=momentum > 0 and draw(st.booleans()),
                maximize=draw(st.booleans()))


def check(rule: str, arrays: dict[str, np.ndarray], hyper: dict[str, Any]) -> None:
    step_both(rule, arrays, copies(arrays), hyper)


@SETTINGS
@given(arrays("update_buffer"), rates(), st.floats(0.0, 1.0))
def test_update_buffer(arrays, momentum, dampening):
    check("update_buffer", arrays, dict(momentum=momentum, dampening=dampening))


@SETTINGS
@given(arrays("sgd"), sgd_hyper(), st.booleans())
def test_sgd(arrays, hyper, buf_none):
    if buf_none and hyper["momentum"] == 0:
        arrays["buf"] = None
    check("sgd", arrays, hyper)


@SETTINGS
@given(arrays("heavy_ball"), heavy_ball_hyper())
def test_heavy_ball(arrays, hyper):
    check("heavy_ball", arrays, hyper)


# ------------------------------------------------------------- large sizes
# A call on 4 Ki elements or more releases the GIL, one on 128 Ki or more is
# split over the threads (README, "Threads"): sizes either side of both, and
# one odd size a few shares long.  Drawing that many elements one by one is
# too slow for hypothesis, so it draws a seed and NumPy makes the values.
NOGIL_FROM, SPLIT_FROM = 4 * 1024, 128 * 1024
LARGE_SIZES = [NOGIL_FROM - 1, NOGIL_FROM, NOGIL_FROM + 1,
               SPLIT_FROM - 1, SPLIT_FROM, SPLIT_FROM + 1, 262_147]
LARGE_SETTINGS = settings(max_examples=20, deadline=None)
THREADS = (1, 2)


Large = tuple[dict[str, np.ndarray | None], dict[str, int]]


@st.composite
def large_arrays(draw: st.DrawFn, rule: str, size: int) -> Large:
    """The arrays of ``rule``, ``size`` elements each, of many magnitudes with
    specials mixed in; and for each an offset of 0-3 elements at which its
    copies start in their allocation (so that the threads' shares fall at
    different places in each array)."""
    dtype = draw(dtypes)
    rng = np.random.default_rng(draw(st.integers(0, 2**64 - 1)))
    fraction = draw(st.sampled_from([0.0, 0.001, 0.1, 0.5]))
    return ({k: values(rng, size, dtype, fraction) for k in ARGS[rule]},
            {k: draw(st.integers(0, 3)) for k in ARGS[rule]})


def check_threads(rule: str, large: Large, hyper: dict[str, Any]) -> None:
    """``rule`` on a fresh copy of the arrays at each of THREADS threads is
    bitwise the reference's step, and leaves the arrays it only reads as
    they were."""
    start, offsets = large
    expected = copies(start)
    reference_step(rule, expected, hyper)
    try:
        for n in THREADS:
            momentum.set_num_threads(n)
            ours = {k: None if v is None else offset_view(v, offsets[k])
                    for k, v in start.items()}
            with untouched({k: ours[k] for k in reads_only(rule, hyper)}):
                getattr(momentum, rule)(*(ours[k] for k in ARGS[rule]), **hyper)
            assert_same_arrays(rule, ours, expected,
                               f"{start['grad'].size} elements, {n} thread(s)")
    finally:
        momentum.set_num_threads(0)


@pytest.mark.parametrize("size", LARGE_SIZES)
@LARGE_SETTINGS
@given(data=st.data(), momentum=rates(), dampening=st.floats(0.0, 1.0))
def test_update_buffer_large(size, data, momentum, dampening):
    check_threads("update_buffer", data.draw(large_arrays("update_buffer", size)),
                  dict(momentum=momentum, dampening=dampening))


@pytest.mark.parametrize("size", LARGE_SIZES)
@LARGE_SETTINGS
@given(data=st.data(), hyper=sgd_hyper(), buf_none=st.booleans())
def test_sgd_large(size, data, hyper, buf_none):
    large = data.draw(large_arrays("sgd", size))
    if buf_none and hyper["momentum"] == 0:
        large[0]["buf"] = None
    check_threads("sgd", large, hyper)


@pytest.mark.parametrize("size", LARGE_SIZES)
@LARGE_SETTINGS
@given(data=st.data(), hyper=heavy_ball_hyper())
def test_heavy_ball_large(size, data, hyper):
    check_threads("heavy_ball", data.draw(large_arrays("heavy_ball", size)), hyper)
