"""momentum.torch.SGD with bfloat16 and float16 parameters: every rounding
and state_dtype, bit for bit as momentum.reference on the tensors' memory;
the rounding's state (kahan_comp, master_param), the stochastic key
(seed, the group's step, the parameter's index) and resuming from a state
dict; state dicts to and from torch.optim.SGD; bad input."""
from __future__ import annotations

import copy
import re
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ml_dtypes")

from momentum.rules import ROUNDINGS  # noqa: E402
from momentum.torch import SGD  # noqa: E402
from torch_helpers import (  # noqa: E402
    FLAG_CASES, KEYS, Reference, assert_bitwise, fallback_warnings, numpy_of)

HALF = [torch.bfloat16, torch.float16]
# Sizes straddling the 16-bit vector widths (twice the float32 lanes), and
# one above the threading threshold.
SIZES = [0, 1, 2, 3, 31, 32, 33, 63, 64, 65, 127, 128, 129, 128 * 1024 + 5]


def _params(dtype: torch.dtype, sizes: list[int] = SIZES, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(n, generator=gen).to(dtype)) for n in sizes]


def _grads(params: list[torch.Tensor], step: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=gen).to(p.dtype) for p in params]


def _assert_as_reference(opt: SGD, params: list[torch.Tensor], shadow: Reference,
                         rounding: str) -> None:
    for k, p in enumerate(params):
        assert_bitwise(p, shadow.params[k], f"parameter {k}")
        state = opt.state.get(p, {})
        assert_bitwise(state.get("momentum_buffer"), shadow.bufs[k], f"buffer {k}")
        assert_bitwise(state.get(KEYS.get(rounding, "")), shadow.extras[k], f"extra {k}")
        assert set(state) <= {"momentum_buffer", KEYS.get(rounding)}, set(state)


@pytest.mark.parametrize("flags", FLAG_CASES.values(), ids=FLAG_CASES)
@pytest.mark.parametrize("state_dtype", [None, torch.float32], ids=["param's", "float32"])
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_every_rounding_is_the_references(rounding, dtype, state_dtype, flags):
    params = _params(dtype)
    storage = dict(state_dtype=state_dtype, rounding=rounding,
                   state_rounding="stochastic", seed=7)
    opt = SGD(params, lr=0.01, **flags, **storage)
    shadow = Reference(params, lr=0.01, **flags, **storage)
    for step in range(3):
        grads = _grads(params, step)
        for p, g in zip(params, grads):
            p.grad = g
        shadow.step(grads)
        opt.step()
        _assert_as_reference(opt, params, shadow, rounding)
    assert opt.param_groups[0]["step"] == 3
    if flags.get("momentum"):
        buf = opt.state[params[-1]]["momentum_buffer"]
        assert buf.dtype == (state_dtype or dtype)


@pytest.fixture
def threads():
    """Set momentum's thread count; back to the default afterwards."""
    import momentum
    yield momentum.set_num_threads
    momentum.set_num_threads(0)


@pytest.mark.parametrize("count", [1, 2])
@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_any_thread_count_rounds_as_the_reference(rounding, count, threads):
    threads(count)
    params = _params(torch.float16, [3, 300_001, 129])
    storage = dict(rounding=rounding, state_rounding="stochastic", seed=1)
    opt = SGD(params, lr=0.01, momentum=0.9, **storage)
    shadow = Reference(params, lr=0.01, momentum=0.9, **storage)
    for step in range(2):
        grads = _grads(params, step)
        for p, g in zip(params, grads):
            p.grad = g
        shadow.step(grads)
        opt.step()
    _assert_as_reference(opt, params, shadow, rounding)


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_groups_mix_dtypes_and_roundings_and_key_tensors_by_state_dict_index(rounding):
    # Group 1's parameters are tensors 3 and 4 of the state dict: their
    # stochastic bits are keyed so, and float32 parameters are not rounded
    # (no extra state) whatever the group's rounding.
    a, b, c = _params(torch.bfloat16, [33, 65, 2]), _params(torch.float16, [129]), \
        _params(torch.float32, [7])
    groups = [{"params": a}, {"params": [*b, *c], "lr": 0.5, "rounding": rounding,
                              "state_dtype": torch.float32, "seed": 3}]
    opt = SGD(groups, lr=0.1, momentum=0.9, state_rounding="stochastic")
    shadows = [Reference(a, lr=0.1, momentum=0.9, state_rounding="stochastic"),
               Reference([*b, *c], lr=0.5, momentum=0.9, state_rounding="stochastic",
                         rounding=rounding, state_dtype=torch.float32, seed=3, first_index=3)]
    for step in range(4):
        for group, shadow in zip(opt.param_groups, shadows):
            grads = _grads(group["params"], step)
            for p, g in zip(group["params"], grads):
                p.grad = g
            shadow.step(grads)
        opt.step()
        for group, shadow in zip(opt.param_groups, shadows):
            _assert_as_reference(opt, group["params"], shadow,
                                 group.get("rounding", "nearest"))
    assert set(opt.state[c[0]]) == {"momentum_buffer"}
    assert opt.state[c[0]]["momentum_buffer"].dtype == torch.float32
    assert opt.state[b[0]]["momentum_buffer"].dtype == torch.float32
    assert opt.state[a[0]]["momentum_buffer"].dtype == torch.bfloat16


def test_stochastic_keys_are_the_state_dict_index_and_the_groups_step():
    # Parameter 1 of the state dict, alone in group 1, rounds with tensor=1
    # and the step the group has counted, as momentum.sgd does.
    from momentum import reference
    first, second = _params(torch.bfloat16, [5]), _params(torch.bfloat16, [1000], seed=1)
    opt = SGD([{"params": first}, {"params": second}], lr=1e-3, rounding="stochastic", seed=11)
    expected = numpy_of(second[0]).copy()
    for step in range(3):
        first[0].grad, second[0].grad = _grads(first, step)[0], _grads(second, step)[0]
        reference.sgd(expected, numpy_of(second[0].grad).copy(), None, lr=1e-3,
                      rounding="stochastic", seed=11, step=step, tensor=1)
        opt.step()
    assert_bitwise(second[0], expected, "parameter 1")
    assert [g["step"] for g in opt.param_groups] == [3, 3]


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_a_resumed_run_rounds_as_an_uninterrupted_one(dtype, rounding):
    def run(steps, opt=None, params=None, start=0):
        if opt is None:
            params = _params(dtype, [3, 65, 129])
            opt = SGD(params, lr=0.01, momentum=0.9, rounding=rounding,
                      state_rounding="stochastic", seed=5)
        for step in range(start, start + steps):
            for p, g in zip(params, _grads(params, step)):
                p.grad = g
            opt.step()
        return opt, params

    whole, whole_params = run(10)
    half, half_params = run(5)
    saved = copy.deepcopy(half.state_dict())
    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in half_params]
    resumed = SGD(resumed_params, lr=1.0)  # everything else comes from the state dict
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["step"] == 5
    run(5, resumed, resumed_params, start=5)
    for p, q in zip(whole_params, resumed_params, strict=True):
        assert torch.equal(p.view(torch.int16), q.view(torch.int16))
        for key, value in whole.state[p].items():
            mine = resumed.state[q][key]
            assert value.dtype == mine.dtype and torch.equal(value, mine), key


def test_a_float32_state_survives_load_state_dict():
    # torch.optim.Optimizer.load_state_dict casts every floating state tensor
    # to its parameter's dtype: a float32 buffer or master copy of a
    # bfloat16 parameter must come back float32, with its values.
    p = _params(torch.bfloat16, [65])
    opt = SGD(p, lr=0.01, momentum=0.9, state_dtype=torch.float32, rounding="master")
    p[0].grad = _grads(p, 0)[0]
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    other = SGD([torch.nn.Parameter(p[0].detach().clone())], lr=0.01)
    other.load_state_dict(saved)
    state = other.state[other.param_groups[0]["params"][0]]
    for key in ("momentum_buffer", "master_param"):
        assert state[key].dtype == torch.float32
        assert torch.equal(state[key], opt.state[p[0]][key])
        assert state[key].data_ptr() != saved["state"][0][key].data_ptr()


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_state_dicts_move_to_and_from_torch_optim_sgd(dtype):
    # torch.optim.SGD's buffer (the parameter's dtype) loads into ours with
    # state_dtype float32 as its exact float32 value; ours back into torch's
    # as the buffer rounded to the parameter's dtype (torch's cast).
    p = _params(dtype, [33])[0]
    theirs = torch.optim.SGD([p], lr=0.01, momentum=0.9)
    p.grad = _grads([p], 0)[0]
    theirs.step()
    ours = SGD([torch.nn.Parameter(p.detach().clone())], lr=0.5, state_dtype=torch.float32)
    ours.load_state_dict(theirs.state_dict())
    q = ours.param_groups[0]["params"][0]
    buf = ours.state[q]["momentum_buffer"]
    assert buf.dtype == torch.float32 and torch.equal(buf, theirs.state[p]["momentum_buffer"].float())
    # torch's groups lack our keys: the constructor's state_dtype, the others' defaults
    group = ours.param_groups[0]
    assert (group["lr"], group["state_dtype"], group["rounding"], group["step"]) == \
        (0.01, torch.float32, "nearest", 0)
    q.grad = _grads([q], 1)[0]
    ours.step()
    back = torch.optim.SGD([torch.nn.Parameter(q.detach().clone())], lr=0.01, momentum=0.9)
    back.load_state_dict(ours.state_dict())
    theirs_buf = back.state[back.param_groups[0]["params"][0]]["momentum_buffer"]
    assert theirs_buf.dtype == dtype
    assert torch.equal(theirs_buf, ours.state[q]["momentum_buffer"].to(dtype))


def test_rounding_does_nothing_to_float32_and_float64_parameters():
    for dtype in (torch.float32, torch.float64):
        runs = []
        for rounding in ROUNDINGS:
            p = torch.nn.Parameter(torch.arange(7.0, dtype=dtype) / 3)
            opt = SGD([p], lr=0.1, momentum=0.9, rounding=rounding,
                      state_rounding="stochastic", state_dtype=torch.float32)
            for step in range(3):
                p.grad = torch.full((7,), step / 7, dtype=dtype)
                opt.step()
            assert set(opt.state[p]) == {"momentum_buffer"}
            assert opt.state[p]["momentum_buffer"].dtype == dtype
            runs.append(p.detach().clone())
        assert all(torch.equal(r, runs[0]) for r in runs)


def test_a_parameter_stepped_without_its_master_copy_loses_it():
    # A master copy the parameter has moved away from (another rounding
    # stepped it) must not come back: it is dropped, and made afresh from
    # the parameter when master rounding returns.
    p = _params(torch.bfloat16, [9])[0]
    opt = SGD([p], lr=0.01, rounding="master")
    p.grad = _grads([p], 0)[0]
    opt.step()
    assert torch.equal(opt.state[p]["master_param"].to(torch.bfloat16), p.detach())
    opt.param_groups[0]["rounding"] = "nearest"
    opt.step()
    assert "master_param" not in opt.state[p]
    opt.param_groups[0]["rounding"] = "master"
    opt.step()
    assert "master_param" in opt.state[p]


def test_a_16_bit_param_torch_steps_gets_buffers_of_its_state_dtype():
    # A bfloat16 slice (not dense: torch's arithmetic) with state_dtype
    # float32: torch makes its first buffer in bfloat16; it is kept float32.
    base = torch.arange(16.0).to(torch.bfloat16)
    p = torch.nn.Parameter(base[::2])
    opt = SGD([p], lr=0.5, momentum=0.5, state_dtype=torch.float32, rounding="kahan")
    p.grad = torch.ones(8, dtype=torch.bfloat16)
    with pytest.warns(RuntimeWarning, match="not dense"):
        opt.step()
    assert set(opt.state[p]) == {"momentum_buffer"}
    assert opt.state[p]["momentum_buffer"].dtype == torch.float32
    opt.step()
    assert torch.equal(p.detach().float(), torch.arange(0.0, 16.0, 2.0) - 0.5 - 0.75)


BAD_CONSTRUCTOR = {
    "rounding": (dict(rounding="up"), ValueError, "'rounding' must be one of 'nearest'"),
    "state_rounding": (dict(state_rounding="kahan"), ValueError,
                       "'state_rounding' must be one of 'nearest', 'stochastic'"),
    "state_dtype": (dict(state_dtype=torch.bfloat16), ValueError,
                    r"'state_dtype' must be None \(the parameter's dtype\) or torch\.float32"),
    "seed float": (dict(seed=1.5), TypeError, "'seed' must be an int, not float"),
    "seed negative": (dict(seed=-1), ValueError, r"'seed' must be in \[0, 2\*\*64\)"),
}


@pytest.mark.parametrize("bad", BAD_CONSTRUCTOR)
def test_bad_storage_arguments_are_refused(bad):
    kwargs, error, match = BAD_CONSTRUCTOR[bad]
    with pytest.raises(error, match=match):
        SGD(_params(torch.bfloat16, [3]), lr=0.1, **kwargs)


@pytest.mark.parametrize("bad", BAD_CONSTRUCTOR)
def test_bad_storage_group_edit_is_refused_writing_nothing(bad):
    kwargs, error, match = BAD_CONSTRUCTOR[bad]
    params = _params(torch.bfloat16, [3, 5])
    opt = SGD([{"params": params[:1]}, {"params": params[1:]}], lr=0.1, momentum=0.9)
    for p, g in zip(params, _grads(params, 0)):
        p.grad = g
    opt.step()
    opt.param_groups[1].update(kwargs)
    kept = [t.detach().clone() for p in params for t in (p, opt.state[p]["momentum_buffer"])]
    with pytest.raises(error, match=r"SGD\.step\(\): param_groups\[1\]: " + match):
        opt.step()
    now = [t.detach() for p in params for t in (p, opt.state[p]["momentum_buffer"])]
    assert all(torch.equal(a, b) for a, b in zip(kept, now, strict=True))
    assert [g["step"] for g in opt.param_groups] == [1, 1]


BAD_EXTRAS = {
    "master of bfloat16": ("master", lambda p: p.detach().clone(), TypeError,
                           "its master_param has dtype torch.bfloat16; expected torch.float32"),
    "comp of float32": ("kahan", lambda p: torch.zeros(p.shape), TypeError,
                        "its kahan_comp has dtype torch.float32; expected torch.bfloat16"),
    "comp of another shape": ("kahan", lambda p: torch.zeros(4, dtype=p.dtype), ValueError,
                              "its kahan_comp is not laid out as the parameter"),
    "master a list": ("master", lambda p: [0.0] * 8, TypeError,
                      "its master_param is a list; expected a torch.Tensor"),
}


@pytest.mark.parametrize("warm", [False, True], ids=["first step", "warm step"])
@pytest.mark.parametrize("bad", BAD_EXTRAS)
def test_bad_extra_state_is_refused_writing_nothing(bad, warm):
    rounding, make, error, match = BAD_EXTRAS[bad]
    good, p = _params(torch.bfloat16, [8, 8])
    opt = SGD([good, p], lr=0.1, rounding=rounding)
    good.grad, p.grad = _grads([good, p], 0)
    if warm:
        opt.step()
    opt.state[p][KEYS[rounding]] = make(p)
    kept = [good.detach().clone(), p.detach().clone()]
    with pytest.raises(error, match=re.escape(
            "SGD.step(): parameter 1 (param_groups[0]['params'][1]): " + match)):
        opt.step()
    assert torch.equal(good.detach(), kept[0]) and torch.equal(p.detach(), kept[1])


def test_a_master_copy_sharing_memory_with_a_grad_is_refused():
    a, b = _params(torch.bfloat16, [8, 8])
    opt = SGD([a, b], lr=0.1, rounding="master")
    a.grad, b.grad = _grads([a, b], 0)
    opt.step()
    opt.state[a]["master_param"] = opt.state[b]["master_param"]
    kept = [a.detach().clone(), b.detach().clone()]
    with pytest.raises(ValueError, match=re.escape(
            "SGD.step(): the master_param of parameter 0 (param_groups[0]['params'][0]) and "
            "the master_param of parameter 1 (param_groups[0]['params'][1]) overlap in memory")):
        opt.step()
    assert torch.equal(a.detach(), kept[0]) and torch.equal(b.detach(), kept[1])


def test_a_float32_grad_of_a_bfloat16_param_is_stepped_with_torchs_arithmetic():
    # torch.optim.SGD takes it (grad_dtype None): so do we, with torch's arithmetic.
    runs = []
    for cls in (SGD, torch.optim.SGD):
        p = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
        p.grad_dtype = None
        opt = cls([p], lr=0.5, momentum=0.5)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for step in range(3):
                p.grad = torch.full((4,), step + 1.0)
                opt.step()
        runs.append((p.detach().clone(), fallback_warnings(caught)))
    (ours, said), (theirs, _) = runs
    assert said == ["momentum.torch.SGD: a torch.float32 tensor beside a torch.bfloat16 "
                    "parameter: stepped with PyTorch's own SGD arithmetic, not the kernels"]
    assert torch.equal(ours, theirs)


def test_numpy_views_of_bfloat16_tensors_are_zero_copy():
    t = torch.arange(4.0).to(torch.bfloat16)
    view = numpy_of(t)
    view[0] = 5
    assert t[0].item() == 5.0 and np.shares_memory(view, numpy_of(t))


@pytest.mark.parametrize("flat", [False, True])
def test_every_step_counts_in_its_group(flat):
    p = torch.nn.Parameter(torch.ones(3))
    opt = SGD([p], lr=0.1, flat=flat)
    for _ in range(4):
        p.grad = torch.ones(3)
        opt.step()
    assert opt.param_groups[0]["step"] == 4
    assert opt.state_dict()["param_groups"][0]["step"] == 4
