"""momentum.foreach: parity with looping the reference, and atomic bad input."""
from __future__ import annotations

import re

import numpy as np
import pytest

import momentum
import momentum.foreach as fe
from conftest import untouched
from momentum import reference
from momentum.rules import RULES

# Shapes straddling vector widths, with a zero-size tensor among them.
SHAPES = [(3, 4), (17,), (0,), (2, 3, 5), (33,), (1,), (64,)]
DTYPES = [np.float32, np.float64, np.float32, np.float64, np.float32,
          np.float64, np.float32]

SGD_FLAGS = [
    dict(lr=0.1),
    dict(lr=0.1, weight_decay=0.01, maximize=True),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.01),
    dict(lr=0.1, momentum=0.9, nesterov=True, maximize=True),
    dict(lr=0.1, momentum=0.9, first_step=True),
    dict(lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True, first_step=True),
]
HEAVY_BALL_FLAGS = [
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.1, momentum=0.9, weight_decay=0.01, maximize=True),
    dict(lr=0.1, momentum=0.9, nesterov=True),
]
UPDATE_BUFFER_FLAGS = [dict(momentum=0.9), dict(momentum=0.9, dampening=0.9)]


def triples(shapes=SHAPES, dtypes=DTYPES, seed=0):
    """Fresh (params, grads, bufs) lists of random arrays."""
    rng = np.random.default_rng(seed)
    return tuple([rng.standard_normal(s).astype(d) for s, d in zip(shapes, dtypes)]
                 for _ in range(3))


def copies(arrays):
    return [a.copy() for a in arrays]


def assert_bitwise(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.dtype == e.dtype and a.shape == e.shape
        assert a.tobytes() == e.tobytes()


@pytest.fixture
def threads():
    yield momentum.set_num_threads
    momentum.set_num_threads(0)


# ------------------------------------------------------------------ parity

@pytest.mark.parametrize("single", [reference, momentum], ids=["reference", "api"])
@pytest.mark.parametrize("rule, hyper", [("sgd", h) for h in SGD_FLAGS]
                         + [("heavy_ball", h) for h in HEAVY_BALL_FLAGS])
def test_step_equals_loop(single, rule, hyper):
    ps, gs, bs = triples()
    want_p, want_b = copies(ps), copies(bs)
    for p, g, b in zip(want_p, gs, want_b):
        getattr(single, rule)(p, g, b, **hyper)
    getattr(fe, rule)(ps, gs, bs, **hyper)
    assert_bitwise(ps, want_p)
    assert_bitwise(bs, want_b)


@pytest.mark.parametrize("single", [reference, momentum], ids=["reference", "api"])
@pytest.mark.parametrize("hyper", UPDATE_BUFFER_FLAGS)
def test_update_buffer_equals_loop(single, hyper):
    _, gs, bs = triples()
    want_b = copies(bs)
    for b, g in zip(want_b, gs):
        single.update_buffer(b, g, **hyper)
    fe.update_buffer(bs, gs, **hyper)
    assert_bitwise(bs, want_b)


def test_grads_are_not_written():
    ps, gs, bs = triples()
    before = copies(gs)
    fe.sgd(ps, gs, bs, lr=0.1, momentum=0.9, nesterov=True)
    fe.heavy_ball(ps, gs, bs, lr=0.1, momentum=0.9)
    fe.update_buffer(bs, gs, momentum=0.9)
    assert_bitwise(gs, before)


def test_first_step_per_tensor():
    ps, gs, bs = triples()
    flags = [i % 2 == 0 for i in range(len(ps))]
    want_p, want_b = copies(ps), copies(bs)
    for p, g, b, first in zip(want_p, gs, want_b, flags):
        reference.sgd(p, g, b, lr=0.1, momentum=0.9, first_step=first)
    fe.sgd(ps, gs, bs, lr=0.1, momentum=0.9, first_step=np.array(flags))
    assert_bitwise(ps, want_p)
    assert_bitwise(bs, want_b)


def test_momentum_zero_needs_no_bufs():
    for bufs in (None, [None] * len(SHAPES)):
        ps, gs, _ = triples()
        want = copies(ps)
        for p, g in zip(want, gs):
            reference.sgd(p, g, None, lr=0.1, weight_decay=0.01)
        fe.sgd(ps, gs, bufs, lr=0.1, weight_decay=0.01)
        assert_bitwise(ps, want)


def test_sequences_of_any_kind_and_buffers():
    ps, gs, bs = triples(shapes=[(8,), (5,)], dtypes=[np.float64, np.float64])
    want_p, want_b = copies(ps), copies(bs)
    for p, g, b in zip(want_p, gs, want_b):
        reference.sgd(p, g, b, lr=0.1, momentum=0.9)
    # A tuple, a range-indexed sequence of memoryviews, and a list.
    fe.sgd(tuple(ps), [memoryview(g) for g in gs], bs, lr=0.1, momentum=0.9)
    assert_bitwise(ps, want_p)
    assert_bitwise(bs, want_b)


def test_empty_sequences():
    fe.sgd([], [], [], lr=0.1, momentum=0.9)
    fe.sgd((), (), None, lr=0.1)
    fe.heavy_ball([], [], [], lr=0.1, momentum=0.9)
    fe.update_buffer([], [], momentum=0.9)


def test_zero_size_arrays_run_and_leave_their_neighbours_exact():
    shapes, dtypes = [(0,), (5,), (0, 3)], [np.float32, np.float32, np.float64]
    ps, gs, bs = triples(shapes, dtypes)
    want_p, want_b = copies(ps), copies(bs)
    for p, g, b in zip(want_p, gs, want_b):
        reference.sgd(p, g, b, lr=0.1, momentum=0.9)
    fe.sgd(ps, gs, bs, lr=0.1, momentum=0.9)
    assert_bitwise(ps, want_p)
    assert_bitwise(bs, want_b)


def test_shared_read_only_grad_is_allowed():
    ps, gs, bs = triples(shapes=[(9,)] * 3, dtypes=[np.float32] * 3)
    shared = [gs[0]] * 3
    want_p, want_b = copies(ps), copies(bs)
    for p, b in zip(want_p, want_b):
        reference.sgd(p, gs[0], b, lr=0.1, momentum=0.9)
    fe.sgd(ps, shared, bs, lr=0.1, momentum=0.9)
    assert_bitwise(ps, want_p)
    assert_bitwise(bs, want_b)


def test_views_of_one_block_in_shuffled_order():
    # Adjacent, disjoint views whose addresses are out of order: the overlap
    # check has to sort them and must not see an overlap.
    rng = np.random.default_rng(1)
    block = rng.standard_normal(3 * 300 * 7).astype(np.float32)
    views = [block[i * 7:(i + 1) * 7] for i in range(900)]
    order = rng.permutation(900)
    ps, gs, bs = ([views[j] for j in order[k::3]] for k in range(3))
    want_p, want_b = copies(ps), copies(bs)
    for p, g, b in zip(want_p, gs, want_b):
        reference.sgd(p, g, b, lr=0.1, momentum=0.9)
    fe.sgd(ps, gs, bs, lr=0.1, momentum=0.9)
    assert_bitwise(ps, want_p)
    assert_bitwise(bs, want_b)


def test_thread_counts_agree(threads):
    # Over PARALLEL_MIN elements in total, so two threads really split it.
    shapes = [(70_001,), (3,), (100_000,), (1000, 17)]
    dtypes = [np.float32, np.float64, np.float32, np.float64]
    results = []
    for n in (1, 2):
        threads(n)
        ps, gs, bs = triples(shapes, dtypes)
        fe.sgd(ps, gs, bs, lr=0.1, momentum=0.9, nesterov=True)
        results.append(ps + bs)
    assert_bitwise(results[0], results[1])
    ps, gs, bs = triples(shapes, dtypes)
    for p, g, b in zip(ps, gs, bs):
        reference.sgd(p, g, b, lr=0.1, momentum=0.9, nesterov=True)
    assert_bitwise(results[1], ps + bs)


# --------------------------------------------------------------- bad input

def corrupt_last(ps, gs, bs, role, make):
    """The triple lists with the last item of ``role`` replaced by make(it)."""
    lists = {"params": list(ps), "grads": list(gs), "bufs": list(bs)}
    lists[role][-1] = make(lists[role][-1])
    return lists["params"], lists["grads"], lists["bufs"]


LAST = len(SHAPES) - 1
BAD_ITEMS = [
    ("params", lambda a: a.astype(np.int64), TypeError,
     f"'params[{LAST}]' has dtype int64"),
    ("grads", lambda a: a.astype(np.float64), TypeError,
     f"'grads[{LAST}]' has dtype float64 but 'params[{LAST}]' has dtype float32"),
    ("bufs", lambda a: a.reshape(8, 8), ValueError,
     f"'bufs[{LAST}]' has shape (8, 8) but 'params[{LAST}]' has shape (64,)"),
    ("grads", lambda a: np.zeros(128, a.dtype)[::2], ValueError,
     f"'grads[{LAST}]' is not C-contiguous"),
    ("params", lambda a: np.frombuffer(a.tobytes(), a.dtype), ValueError,
     f"'params[{LAST}]' is read-only"),
    ("bufs", lambda a: a.byteswap().view(a.dtype.newbyteorder()), TypeError,
     f"'bufs[{LAST}]' has dtype"),
    ("grads", lambda a: a.tolist(), TypeError,
     f"'grads[{LAST}]' must be a NumPy array"),
    ("bufs", lambda a: None, TypeError, f"'bufs[{LAST}]' is None"),
]


def kept(**lists):
    """conftest.untouched over every array of the named lists."""
    return untouched({f"{name}[{i}]": a for name, arrays in lists.items()
                      for i, a in enumerate(arrays)})


@pytest.mark.parametrize("role, make, error, fragment", BAD_ITEMS)
@pytest.mark.parametrize("rule", ["sgd", "heavy_ball"])
def test_bad_last_item_writes_nothing(rule, role, make, error, fragment):
    ps, gs, bs = triples()
    args = corrupt_last(ps, gs, bs, role, make)
    with kept(params=ps, grads=gs, bufs=bs), pytest.raises(
            error, match=f"^foreach.{rule}\\(\\): .*{re.escape(fragment)}"):
        getattr(fe, rule)(*args, lr=0.1, momentum=0.9)


def test_update_buffer_bad_last_item_writes_nothing():
    _, gs, bs = triples()
    bad = bs[:-1] + [bs[-1].astype(np.int16)]
    with kept(bufs=bs), pytest.raises(
            TypeError, match=re.escape(f"'bufs[{LAST}]' has dtype int16")):
        fe.update_buffer(bad, gs, momentum=0.9)


OVERLAPS = [
    # (role of the last triple's array, role and index of the earlier array
    # it aliases): a written array never shares memory with another triple.
    ("params", "params", 0),
    ("bufs", "params", 1),
    ("grads", "bufs", 3),
    ("params", "grads", 4),
]


@pytest.mark.parametrize("role, source, index", OVERLAPS)
def test_overlap_across_triples_writes_nothing(role, source, index):
    ps, gs, bs = triples()
    lists = {"params": ps, "grads": gs, "bufs": bs}
    earlier = lists[source][index]
    host = np.zeros(1024, np.uint8)
    alias = host[:earlier.nbytes].view(earlier.dtype).reshape(earlier.shape)
    alias[...] = earlier
    lists[source][index] = alias
    lists[role][LAST] = host[:256].view(np.float32)
    with kept(params=ps, grads=gs, bufs=bs), pytest.raises(ValueError, match=re.escape(
            f"'{source}[{index}]' and '{role}[{LAST}]' overlap in memory")):
        fe.sgd(ps, gs, bs, lr=0.1, momentum=0.9)


def test_overlap_among_many_shuffled_views_found():
    # 1,500 disjoint views in shuffled address order, plus one pair that
    # shares a single element, far apart in the sequences.
    rng = np.random.default_rng(2)
    block = np.zeros(1500 * 4)
    views = [block[i * 4:(i + 1) * 4] for i in range(1500)]
    order = rng.permutation(1500)
    ps, gs, bs = ([views[j] for j in order[k::3]] for k in range(3))
    pair = np.zeros(7)
    bs[3], ps[-1] = pair[:4], pair[3:]
    with pytest.raises(ValueError, match=r"'bufs\[3\]' and 'params\[499\]' overlap"):
        fe.sgd(ps, gs, bs, lr=0.1, momentum=0.9)


def test_bad_sequences():
    ps, gs, bs = triples()
    with pytest.raises(TypeError, match=r"'params' must be a sequence .* not ndarray"):
        fe.sgd(ps[0], gs, bs, lr=0.1)
    with pytest.raises(TypeError, match=r"'grads' must be a sequence .* not int"):
        fe.sgd(ps, 3, bs, lr=0.1)
    with pytest.raises(ValueError, match=r"'bufs' has 6 items but 'params' has 7"):
        fe.sgd(ps, gs, bs[:-1], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"'grads' has 6 items but 'params' has 7"):
        fe.heavy_ball(ps, gs[:-1], bs, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"'bufs' has 6 items but 'grads' has 7"):
        fe.update_buffer(bs[:-1], gs, momentum=0.9)
    with pytest.raises(ValueError, match=r"'first_step' has 2 items but 'params' has 7"):
        fe.sgd(ps, gs, bs, lr=0.1, momentum=0.9, first_step=[True, False])
    with pytest.raises(TypeError, match=r"'bufs' is None but momentum is 0.9"):
        fe.sgd(ps, gs, None, lr=0.1, momentum=0.9)
    with pytest.raises(TypeError, match=r"foreach.heavy_ball\(\): 'bufs' is None"):
        fe.heavy_ball(ps, gs, None, lr=0.1, momentum=0.9)


@pytest.mark.parametrize("rule, hyper, fragment", [
    ("sgd", dict(lr=-1.0), "'lr' must be finite and >= 0"),
    ("sgd", dict(lr=0.1, momentum=0.9, dampening=2.0), "'dampening' must be in"),
    ("sgd", dict(lr=0.1, nesterov=True), "nesterov=True needs momentum > 0"),
    ("heavy_ball", dict(lr=0.1, momentum=float("nan")), "'momentum' must be finite"),
    ("heavy_ball", dict(lr="0.1", momentum=0.9), "'lr' must be a real number"),
])
def test_bad_hyperparameters_write_nothing(rule, hyper, fragment):
    ps, gs, bs = triples()
    with kept(params=ps, grads=gs, bufs=bs), pytest.raises(
            (TypeError, ValueError), match=f"foreach.{rule}\\(\\): {re.escape(fragment)}"):
        getattr(fe, rule)(ps, gs, bs, **hyper)


def test_within_triple_overlap_names_the_index():
    ps, gs, bs = triples()
    with pytest.raises(ValueError, match=re.escape(f"'params[{LAST}]' and 'bufs[{LAST}]' overlap")):
        fe.sgd(ps, gs, bs[:-1] + [ps[-1]], lr=0.1, momentum=0.9)


def test_exported_as_a_submodule():
    assert momentum.foreach is fe
    # Every rule of the table, alone and in groups.
    assert set(fe.__all__) == {name for rule in RULES for name in (rule, f"{rule}_groups")}
    assert {"update_buffer", "sgd", "heavy_ball", "sgd_groups"} <= set(fe.__all__)


def test_repeated_calls_still_check_overlap():
    # A batch that passed is remembered; a changed batch is checked afresh.
    ps, gs, bs = triples(shapes=[(8,)] * 4, dtypes=[np.float32] * 4)
    fe.sgd(ps, gs, bs, lr=0.1, momentum=0.9)
    fe.sgd(ps, gs, bs, lr=0.1, momentum=0.9)
    with kept(params=ps, grads=gs, bufs=bs):
        for _ in range(2):
            with pytest.raises(ValueError, match=r"'params\[0\]' and 'bufs\[3\]' overlap"):
                fe.sgd(ps, gs, bs[:-1] + [ps[0]], lr=0.1, momentum=0.9)


class ClearsTheLists:
    """A flag whose truth test empties the caller's lists, as hostile code might."""

    def __init__(self, *lists):
        self.lists = lists

    def __bool__(self):
        for seq in self.lists:
            seq.clear()
        return True


@pytest.mark.parametrize("flags, error, fragment", [
    ("no", TypeError, "'first_step' must be a bool or a sequence of bools, not str"),
    (np.array(True), TypeError, "'first_step' must be a bool or a sequence of bools"),
    ([True] * 6 + [None], TypeError, f"'first_step[{LAST}]' must be a bool, not NoneType"),
    ([True] * 6 + [1], TypeError, f"'first_step[{LAST}]' must be a bool, not int"),
])
def test_bad_first_step_writes_nothing(flags, error, fragment):
    ps, gs, bs = triples()
    with kept(params=ps, grads=gs, bufs=bs), pytest.raises(error, match=re.escape(fragment)):
        fe.sgd(ps, gs, bs, lr=0.1, momentum=0.9, first_step=flags)


def test_lists_changed_by_python_code_during_the_call_are_not_read():
    # The call works on its own snapshot of the sequences; flags are checked
    # to be real bools before any is used, so no Python code runs in between.
    ps, gs, bs = triples()
    lists = [list(ps), list(gs), list(bs)]
    flags = [ClearsTheLists(*lists)] + [True] * (len(ps) - 1)
    with kept(params=ps, grads=gs, bufs=bs), pytest.raises(
            TypeError, match=r"'first_step\[0\]' must be a bool"):
        fe.sgd(*lists, lr=0.1, momentum=0.9, first_step=flags)


def test_sgd_groups_equal_one_sgd_call_per_group():
    groups = [dict(lr=0.1, momentum=0.9, weight_decay=0.01, first_step=True),
              dict(lr=0.05, momentum=0.0),
              dict(lr=0.2, momentum=0.5, dampening=0.25, maximize=True,
                   first_step=[True, False, True, False, True, False, True])]
    ours, theirs = [], []
    for k, hyper in enumerate(groups):
        ps, gs, bs = triples(seed=k)
        ours.append(dict(hyper, params=ps, grads=gs,
                         bufs=bs if hyper["momentum"] else None))
        expected = [copies(x) for x in (ps, gs, bs)]
        first = hyper.get("first_step", False)
        for i, (p, g, b) in enumerate(zip(*expected)):
            h = {k: v for k, v in hyper.items() if k != "first_step"}
            reference.sgd(p, g, b, first_step=first if isinstance(first, bool) else first[i], **h)
        theirs.append(expected)
    fe.sgd_groups(ours)
    for group, (params, grads, bufs) in zip(ours, theirs):
        assert_bitwise(group["params"], params)
        assert_bitwise(group["grads"], grads)
        if group["bufs"] is not None:       # momentum 0 reads and writes no buffer
            assert_bitwise(group["bufs"], bufs)


def test_sgd_groups_check_every_group_before_writing():
    g0 = dict(zip(("params", "grads", "bufs"), triples(seed=0)), lr=0.1, momentum=0.9)
    g1 = dict(zip(("params", "grads", "bufs"), triples(seed=1)), lr=0.1, momentum=0.9)
    g1["grads"] = list(g1["grads"])
    g1["grads"][3] = g0["params"][3]            # aliases a param of group 0
    arrays = {f"groups[{k}].{role}": g[role] for k, g in enumerate((g0, g1))
              for role in ("params", "grads", "bufs")}
    with kept(**arrays), pytest.raises(ValueError, match=re.escape(
            "foreach.sgd_groups(): 'groups[0].params[3]' and 'groups[1].grads[3]' overlap")):
        fe.sgd_groups([g0, g1])


@pytest.mark.parametrize("groups, error, fragment", [
    ([dict(params=[], grads=[])], TypeError, "'groups[0]' has no 'lr'"),
    ([dict(params=[], grads=[], lr=0.1, fused=True)], TypeError, "unknown keys ['fused']"),
    ([dict(params=[], grads=[], lr=-1.0)], ValueError, "'lr' must be finite and >= 0, got -1.0 (in groups[0])"),
    ([3], TypeError, "'groups[0]' must be a mapping, not int"),
])
def test_sgd_groups_bad_groups(groups, error, fragment):
    with pytest.raises(error, match=re.escape(fragment)):
        fe.sgd_groups(groups)


def test_sgd_groups_name_the_group_even_when_there_is_one():
    ps, gs, bs = triples()
    bs = list(bs)
    bs[1] = np.zeros((5,), bs[1].dtype)
    with pytest.raises(ValueError, match=re.escape("'groups[0].bufs[1]' has shape (5,)")):
        fe.sgd_groups([dict(params=ps, grads=gs, bufs=bs, lr=0.1, momentum=0.9)])


@pytest.mark.parametrize("call", [
    lambda gs, bs: fe.sgd(None, gs, bs, lr=0.1),
    lambda gs, bs: fe.heavy_ball(None, gs, bs, lr=0.1, momentum=0.9),
    lambda gs, bs: fe.sgd_groups([dict(params=None, grads=gs, lr=0.1)]),
])
def test_params_none_is_refused_even_with_no_tensors(call):
    with pytest.raises(TypeError, match="'params' must be a sequence"):
        call([], [])


def test_groups_take_a_rules_own_step_per_tensor():
    """adam_groups with ``step`` one count per tensor (the rule's own step,
    which also keys its stochastic rounding): as adam over the same arrays,
    bitwise (the groups' mapping once took it for the storage's step)."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf16 = np.dtype(ml_dtypes.bfloat16)

    def arrays():
        r = np.random.default_rng(1)
        return [[r.standard_normal(17).astype(np.float32).astype(bf16) for _ in range(2)]
                for _ in range(4)]

    kw = dict(lr=0.01, rounding="stochastic", state_rounding="stochastic", seed=5)
    a, b = arrays(), arrays()
    momentum.foreach.adam(*a, None, step=[3, 5], **kw)
    momentum.foreach.adam_groups([dict(params=b[0], grads=b[1], exp_avgs=b[2], exp_avg_sqs=b[3],
                                       step=[3, 5], **kw)])
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u.view(np.int16), v.view(np.int16))
