"""Every candidate the benchmark times performs the rule it is labelled with.

momentum is bitwise equal to the reference; peers are held to 1e-6 (PyTorch's
fused step, for one, contracts to FMA and differs in the last bits).
"""
import numpy as np
import pytest

from momentum import reference
from momentum._bench import storage, workloads
from momentum._bench.adam_peers import DEEPSPEED, LION, TORCH_MODES
from momentum._bench.peers import NEW_RULES, layout_peers, ours, peers, stored
from momentum._bench.rules import RULES, TIMED, args, arrays
from momentum.rules import RULES as TABLE

SGD_FAMILY = [r for r in RULES if r not in NEW_RULES]


def _reference_step(rule, data):
    expected = [a.copy() for a in data]
    getattr(reference, rule)(*args(rule, *expected), **TIMED[rule])
    return expected


@pytest.mark.parametrize("rule", SGD_FAMILY)
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


def _uniform(dtype):
    return storage.Layout((("param", dtype), ("grad", dtype), ("buf", dtype)))


@pytest.mark.parametrize("rule", NEW_RULES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_each_adam_and_lion_peer_takes_one_reference_step(rule, dtype):
    """torch.optim.Adam/AdamW in each mode, DeepSpeedCPUAdam and lion-pytorch,
    each on its own copy of one row's data, from the typical call's step."""
    table, layout = TABLE[rule], _uniform(dtype)
    data = storage.make(layout, 1000, rule=table)
    expected = {k: a.copy() for k, a in data.items()}
    stored(rule, layout, expected)["reference"]()
    steps, missing = layout_peers(rule, layout, data)
    for name in [*steps, "momentum"]:
        got = {k: a.copy() for k, a in data.items()}
        {**layout_peers(rule, layout, got)[0], **stored(rule, layout, got)}[name]()
        # DeepSpeed forms 1/sqrt(bias2) and steps in float32 even for float64 data
        tol = 0 if name == "momentum" else 1e-5 if name == DEEPSPEED else 1e-6
        for a in storage.used(table):
            np.testing.assert_allclose(got[a.name], expected[a.name], rtol=tol, atol=tol,
                                       err_msg=f"{name} {a.name}")
    expected_peers = {LION} if rule == "lion" else {*TORCH_MODES, DEEPSPEED}
    assert set(steps) | set(missing) >= expected_peers
    assert all(why for why in missing.values())


def test_adam_peers_say_why_a_layout_is_missing():
    layout = storage.Layout((("param", "bfloat16"), ("grad", "bfloat16"), ("buf", "float32")),
                            rounding="master")
    data = storage.make(layout, 64, rule=TABLE["adam"])
    steps, missing = layout_peers("adam", layout, data)
    assert not set(steps) & {*TORCH_MODES, DEEPSPEED}
    assert missing["torch fused"] == "torch.optim.Adam has no such layout"
    assert missing[DEEPSPEED] == "DeepSpeedCPUAdam rounds to nearest only"


def test_adamw_workload_candidates_each_take_one_reference_step():
    shapes = [(3, 4), (5,), (2, 2, 2)]
    expected = workloads.adamw_arena(shapes)
    for p, g, m, v in zip(expected.param_views, expected.grad_views, expected.exp_avg_views,
                          expected.exp_avg_sq_views):
        reference.adamw(p, g, m, v, None, **TIMED["adamw"])
    for name in workloads.adamw_steps(workloads.adamw_arena(shapes))[0]:
        got = workloads.adamw_arena(shapes)
        workloads.adamw_steps(got)[0][name]()
        for role in ("param_views", "exp_avg_views", "exp_avg_sq_views"):
            for a, b in zip(getattr(got, role), getattr(expected, role)):
                tol = 0 if name.startswith("momentum.") else 1e-6
                np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=f"{name} {role}")
