"""The bench's storage layouts and C ceiling loops: every combination the
kernels are built for is a layout, bytes per element as counted by hand,
the probes' argument checks."""
import itertools

import numpy as np
import pytest

from momentum import _probe
from momentum._bench import ceilings, storage
from momentum._bench.rules import RULES as TIMED
from momentum.rules import RULES as TABLE
RULES = {name: TABLE[name] for name in TIMED}

SINGLE = ("float32", "bfloat16", "float16")
SIZE = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}


def _dtypes(rule, layout):
    return tuple(layout.dtype(a.name) for a in rule.arrays)


def _used_dtypes(rule, layout):
    return tuple(layout.dtype(a.name) for a in storage.used(rule))


@pytest.mark.parametrize("rule", list(RULES.values()), ids=list(RULES))
def test_every_layout_covers_every_built_combination_in_every_rounding(rule):
    # (over the arrays a typical call uses: Adam's max_exp_avg_sq is not one)
    layouts, used = storage.layouts(rule, every=True), len(storage.used(rule))
    nearest = {_used_dtypes(rule, lay) for lay in layouts if lay.rounding == "nearest"
               and lay.state_rounding == "nearest"}
    # every array float64, or each independently float32, bfloat16 or float16
    assert nearest == {("float64",) * used, *itertools.product(SINGLE, repeat=used)}
    if rule.param is not None:
        for rounding in ("stochastic", "kahan", "master"):
            got = {_used_dtypes(rule, lay) for lay in layouts if lay.rounding == rounding}
            want = {c for c in itertools.product(SINGLE, repeat=used)
                    if c[rule.param] != "float32"}
            assert got == want
    assert len({lay.label(rule) for lay in layouts}) == len(layouts)


def test_bytes_per_element_as_counted_by_hand():
    sgd = RULES["sgd"]
    layout = storage.Layout((("param", "bfloat16"), ("grad", "float32"), ("buf", "float16")))
    # param read + written, grad read, buf read + written
    assert layout.bytes_per_element(sgd) == 2 * 2 + 4 + 2 * 2
    kahan = storage.Layout(layout.dtypes, rounding="kahan")
    assert kahan.bytes_per_element(sgd) == 12 + 2 * 2          # comp (param's dtype) r + w
    master = storage.Layout(layout.dtypes, rounding="master")
    assert master.bytes_per_element(sgd) == 2 * 4 + 2 + 4 + 2 * 2  # master r + w, param w
    ub = storage.Layout((("buf", "float32"), ("grad", "bfloat16")))
    assert ub.bytes_per_element(RULES["update_buffer"]) == 2 * 4 + 2
    # Adam without amsgrad: param, exp_avg, exp_avg_sq read + written, grad read
    # (the state arrays take buf's dtype)
    adam = RULES["adam"]
    mixed = storage.Layout((("param", "bfloat16"), ("grad", "bfloat16"), ("buf", "float32")))
    f32 = storage.Layout(tuple((n, "float32") for n, _ in mixed.dtypes))
    assert f32.bytes_per_element(adam) == 3 * 2 * 4 + 4                            # 28
    assert mixed.bytes_per_element(adam) == 2 * 2 + 2 + 2 * 2 * 4                  # 22
    assert storage.Layout(mixed.dtypes, rounding="master").bytes_per_element(adam) == (
        2 * 4 + 2 + 2 + 2 * 2 * 4)                                                 # 28
    assert storage.Layout(mixed.dtypes).bytes_per_element(RULES["lion"]) == 2 * 2 + 2 + 2 * 4


def test_labels_name_dtypes_in_argument_order_and_the_rounding():
    sgd, ub = RULES["sgd"], RULES["update_buffer"]
    roles = (("param", "bfloat16"), ("grad", "bfloat16"), ("buf", "float32"))
    assert storage.Layout(roles).label(sgd) == "bf16/bf16/f32"
    assert storage.Layout(roles, rounding="master").label(sgd) == "f32>bf16/bf16/f32"
    assert storage.Layout(roles, rounding="kahan").label(sgd) == "bf16/bf16/f32 kahan"
    assert storage.Layout(roles).label(ub) == "f32/bf16"          # buf, grad
    state = storage.Layout(roles[:2] + (("buf", "float16"),), "stochastic", "stochastic")
    assert state.label(ub) == "f16/bf16 stochastic state"
    assert state.label(sgd) == "bf16/bf16/f16 stochastic + stochastic state"


@pytest.mark.parametrize("rule", list(RULES.values()), ids=list(RULES))
def test_each_layout_makes_the_arrays_its_call_takes(rule):
    for layout in storage.layouts(rule):
        arrays = storage.make(layout, 33, rule=rule)
        positional, keywords = storage.call(rule, layout, arrays)
        assert [a.dtype.name for a in positional] == list(_dtypes(rule, layout))
        if layout.rounding == "master":
            assert keywords["master"].dtype == np.float32
            np.testing.assert_array_equal(
                arrays["param"].astype(np.float32), keywords["master"].astype(
                    arrays["param"].dtype).astype(np.float32))
        if layout.rounding == "kahan":
            assert keywords["comp"].dtype == arrays["param"].dtype
            assert not keywords["comp"].astype(np.float32).any()


def test_each_ceiling_moves_sgds_bytes_in_the_layout():
    sgd = RULES["sgd"]
    for layout in storage.layouts(sgd):
        assert ceilings.bytes_per_element(layout) == layout.bytes_per_element(sgd)
    # update_buffer's ceiling is sgd's loop with the param stored as its buffer
    ub = storage.Layout((("buf", "bfloat16"), ("grad", "float32")))
    assert ceilings.bytes_per_element(ub) == 2 * 2 + 4 + 2 * 2


def test_adams_ceilings_move_adams_bytes_and_lions_sgds():
    adam, lion, sgd = RULES["adam"], RULES["lion"], RULES["sgd"]
    for layout in storage.layouts(adam):
        assert ceilings.bytes_per_element(layout, "adam") == layout.bytes_per_element(adam)
        covered = ceilings.adam_covers(layout)
        assert covered == (layout.rounding != "kahan" and layout.dtype("param") != "float64")
    for layout in storage.layouts(lion):
        assert ceilings.bytes_per_element(layout, "lion") == layout.bytes_per_element(lion) \
            == layout.bytes_per_element(sgd)


@pytest.mark.parametrize("rule", ["sgd", "adam", "lion"])
def test_every_ceiling_loop_runs_and_returns_seconds(rule):
    for layout in storage.layouts(RULES[rule]):
        for name, run in ceilings.loops(layout, 100, 1, rule).items():
            assert run(2) > 0, name


def test_adam_probe_refuses_widths_it_has_no_loop_for():
    h, f = np.zeros(8, np.uint16), np.zeros(8, np.float32)
    with pytest.raises(ValueError, match=r"no Adam ceiling loop for element sizes \(2, 4, 4, 4\)"):
        _probe.time_adam(h, f, f.copy(), f.copy(), 1)
    with pytest.raises(ValueError, match="'w' has 2-byte elements"):
        _probe.time_adam_master(h, h.copy(), f, f.copy(), h.copy(), 1)
    assert _probe.time_adam(f, f.copy(), f.copy(), f.copy(), 3) > 0


def test_probes_refuse_what_they_cannot_time():
    h, f = np.zeros(8, np.uint16), np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="'g' has 7 elements, not 8"):
        _probe.time_sgd16(h, h[:7], h, 1)
    with pytest.raises(ValueError, match="every array is float32"):
        _probe.time_sgd16(f, f.copy(), f.copy(), 1)
    with pytest.raises(ValueError, match="'b' has 2-byte elements"):
        _probe.time_master(f, h, h.copy(), h.copy(), 1)
    with pytest.raises(ValueError, match="'p' is read-only"):
        ro = h.copy()
        ro.flags.writeable = False
        _probe.time_kahan(ro, h.copy(), h.copy(), h.copy(), 1)
