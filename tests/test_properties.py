"""Hypothesis: for any valid shapes, values and hyperparameters, every rule
is bitwise equal to ``momentum.reference`` (see conftest for "bitwise")."""
from __future__ import annotations

from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ARGS, copies, step_both

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
