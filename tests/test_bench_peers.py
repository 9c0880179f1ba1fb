"""Every candidate the benchmark times performs the rule it is labelled with.

momentum is bitwise equal to the reference; peers are held to 1e-6 (PyTorch's
fused step, for one, contracts to FMA and differs in the last bits).
"""
import numpy as np
import pytest

from momentum import reference
from momentum._bench import workloads
from momentum._bench.peers import ours, peers
from momentum._bench.rules import RULES, TIMED, args, arrays


def _reference_step(rule, data):
    expected = [a.copy() for a in data]
    getattr(reference, rule)(*args(rule, *expected), **TIMED[rule])
    return expected


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_each_peer_takes_one_reference_step(rule, dtype):
    data = arrays(1000, dtype)
    expected = _reference_step(rule, data)
    steps, missing = peers(rule, *data)
    # ("reference" is the function _reference_step calls: not compared to itself.)
    for name in [*steps, "momentum"]:
        # Each candidate runs once on its own copy of the data.
        got = [a.copy() for a in data]
        {**peers(rule, *got)[0], **ours(rule, *got)}[name]()
        tol = 0 if name == "momentum" else 1e-6
        for a, b in zip(got, expected):
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=name)
    assert rule == "sgd" or set(missing) >= {"torch for-loop", "torch foreach", "torch fused"}


def test_workload_candidates_each_take_one_reference_step():
    shapes = [(3, 4), (5,), (2, 2, 2)]
    expected = workloads.arena(shapes)
    for p, g, b in zip(expected.param_views, expected.grad_views, expected.buf_views):
        reference.sgd(p, g, b, **TIMED["sgd"])
    for name in workloads.steps(workloads.arena(shapes))[0]:
        if name == "momentum.torch.SGD(flat=True)":
            continue  # steps its own copy of the arrays; see test_torch_optimizer's flat tests
        got = workloads.arena(shapes)
        workloads.steps(got)[0][name]()
        for role in ("param_views", "grad_views", "buf_views"):
            for a, b in zip(getattr(got, role), getattr(expected, role)):
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, err_msg=f"{name} {role}")
