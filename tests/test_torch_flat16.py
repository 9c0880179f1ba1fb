"""momentum.torch.SGD(flat=True) with bfloat16 and float16 parameters: bit
for bit as the per-tensor optimizer (flat=False, itself tested against
momentum.reference in test_torch_half) for every rounding, state_dtype and
flag case, stochastic keys included; state dicts equal and moving to the
per-tensor optimizer and torch.optim.SGD and back; copies; the flat checks."""
from __future__ import annotations

import copy
import pickle
import re

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ml_dtypes")

from momentum.rules import ROUNDINGS  # noqa: E402
from momentum.torch import SGD  # noqa: E402
from torch_helpers import FLAG_CASES, KEYS  # noqa: E402

HALF = [torch.bfloat16, torch.float16]
# Straddling the 16-bit vector widths; 0 and a frozen tensor break the runs.
SIZES = [1, 33, 0, 64, 129, 1000]


def _params(dtype: torch.dtype, sizes=SIZES, seed: int = 0) -> list[torch.nn.Parameter]:
    """Parameters of ``sizes``; the third (index 2) is frozen: no grad, not stepped."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(n, generator=gen).to(dtype)) for n in sizes]
    params[2].requires_grad_(False)
    return params


def _give_grads(params: list[torch.Tensor], step: int) -> None:
    gen = torch.Generator().manual_seed(100 + step)
    for p in params:
        g = torch.randn(p.shape, generator=gen).to(p.dtype)
        if p.requires_grad:
            p.grad = g


def _groups(params: list[torch.Tensor], **group1) -> list[dict]:
    """Two groups: tensors 0-2 and 3-5 of the state dict (group 1's keys
    are not its indices in its arena)."""
    return [{"params": params[:3]}, {"params": params[3:], "lr": 0.02, **group1}]


def _bits(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def _assert_same_state(ours: dict, theirs: dict) -> None:
    """Two state dicts alike: every entry of the same dtype and bits, the groups equal."""
    assert ours["param_groups"] == theirs["param_groups"]
    assert ours["state"].keys() == theirs["state"].keys()
    for index, entries in ours["state"].items():
        assert entries.keys() == theirs["state"][index].keys(), index
        for key, value in entries.items():
            other = theirs["state"][index][key]
            assert value.dtype == other.dtype and _bits(value) == _bits(other), (index, key)


def _assert_same(a: tuple[list, SGD], b: tuple[list, SGD]) -> None:
    for k, (p, q) in enumerate(zip(a[0], b[0], strict=True)):
        assert p.dtype == q.dtype and _bits(p) == _bits(q), f"parameter {k}"
    _assert_same_state(a[1].state_dict(), b[1].state_dict())


def _twins(dtype, storage: dict, flags: dict, group1: dict | None = None):
    """The same parameters under SGD(flat=False) and SGD(flat=True)."""
    runs = []
    for flat in (False, True):
        params = _params(dtype)
        opt = SGD(_groups(params, **(group1 or {})), lr=0.01, **flags, **storage, flat=flat)
        runs.append((params, opt))
    return runs


def _step_both(runs, step: int) -> None:
    for params, opt in runs:
        _give_grads(params, step)
        opt.step()


@pytest.mark.parametrize("flags", FLAG_CASES.values(), ids=FLAG_CASES)
@pytest.mark.parametrize("state_dtype", [None, torch.float32], ids=["param's", "float32"])
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_flat_steps_as_per_tensor(rounding, dtype, state_dtype, flags):
    storage = dict(state_dtype=state_dtype, rounding=rounding, state_rounding="stochastic",
                   seed=7)
    runs = _twins(dtype, storage, flags, {"seed": 9})
    for step in range(3):
        _step_both(runs, step)
        _assert_same(*runs)
    params, opt = runs[1]
    assert opt._flats[1].arena.tensors == (3, 4, 5)
    assert params[-1].data_ptr() == opt._flats[1].arena.params.ctypes.data \
        + opt._flats[1].arena.offsets[2] * 2
    state = opt.state[params[-1]]
    if flags.get("momentum"):
        assert state["momentum_buffer"].dtype == (state_dtype or dtype)
    assert set(state) == ({"momentum_buffer"} if flags.get("momentum") else set()) | (
        {KEYS[rounding]} if rounding in KEYS else set())
    assert params[2] not in opt.state  # frozen: never stepped


@pytest.mark.parametrize("state_rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_flat_stochastic_keys_follow_the_state_dict_index(rounding, state_rounding):
    # A parameter added to group 0 shifts group 1's state-dict indices, so
    # its stochastic keys, in both modes alike.
    storage = dict(rounding=rounding, state_rounding=state_rounding, seed=1)
    runs = _twins(torch.bfloat16, storage, dict(momentum=0.9))
    _step_both(runs, 0)
    for params, opt in runs:
        extra = torch.nn.Parameter(torch.ones(7, dtype=torch.bfloat16))
        params.insert(3, extra)
        opt.param_groups[0]["params"].append(extra)
    for step in range(1, 3):
        _step_both(runs, step)
        _assert_same(*runs)
    assert runs[1][1]._flats[1].arena.tensors == (4, 5, 6)


def test_flat_group_edits_of_the_rounding_step_as_per_tensor():
    # kahan -> master -> nearest -> master: each rounding's entry made,
    # stale ones dropped, the master copy made afresh, as per tensor.
    runs = _twins(torch.float16, dict(rounding="kahan"), dict(momentum=0.9))
    for step, rounding in enumerate(["kahan", "master", "nearest", "master", "stochastic"]):
        for _, opt in runs:
            for group in opt.param_groups:
                group["rounding"] = rounding
        _step_both(runs, step)
        _assert_same(*runs)
        assert {k for s in runs[1][1].state.values() for k in s} == \
            {"momentum_buffer", *filter(None, [KEYS.get(rounding)])}


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_flat_state_dicts_load_per_tensor_and_back(rounding, dtype):
    # A flat run saved after 2 steps and resumed per tensor, and that one
    # saved and resumed flat, step as the uninterrupted flat run.
    storage = dict(state_dtype=torch.float32, rounding=rounding, state_rounding="stochastic",
                   seed=4)
    whole = _twins(dtype, storage, dict(momentum=0.9))[1]
    for step in range(2):
        _step_both([whole], step)
    current = whole
    for flat, steps in ((False, (2, 3)), (True, (4, 5))):
        params = [torch.nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
                  for p in current[0]]
        resumed = (params, SGD(_groups(params), lr=1.0, flat=flat))  # the rest: the state dict
        resumed[1].load_state_dict(copy.deepcopy(current[1].state_dict()))
        _assert_same(current, resumed)
        for step in steps:
            _step_both([whole, resumed], step)
        _assert_same(whole, resumed)
        current = resumed


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_flat_state_dicts_move_to_and_from_torch_optim_sgd(dtype):
    # Ours flat -> torch.optim.SGD (buffers cast to the parameter's dtype,
    # extra entries ignored) -> ours flat and per tensor, which then step alike.
    storage = dict(state_dtype=torch.float32, rounding="kahan")
    params, flat = _twins(dtype, storage, dict(momentum=0.9))[1]
    _step_both([(params, flat)], 0)
    theirs_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    theirs = torch.optim.SGD(_groups(theirs_params), lr=0.01, momentum=0.9)
    theirs.load_state_dict(flat.state_dict())
    for p, q in zip(params, theirs_params):
        if p in flat.state:
            buf = theirs.state[q]["momentum_buffer"]
            assert buf.dtype == dtype
            assert torch.equal(buf, flat.state[p]["momentum_buffer"].to(dtype))
    runs = []
    for mode in (False, True):
        mine = [torch.nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
                for p in params]
        opt = SGD(_groups(mine), lr=0.5, state_dtype=torch.float32, flat=mode)
        # a copy each: load_state_dict keeps a tensor of the parameter's
        # dtype as it is (torch's too), shared by both optimizers otherwise
        opt.load_state_dict(copy.deepcopy(theirs.state_dict()))
        runs.append((mine, opt))
    _assert_same(*runs)
    buf = runs[1][1].state[runs[1][0][0]]["momentum_buffer"]
    assert buf.dtype == torch.float32 and torch.equal(buf, theirs.state[theirs_params[0]][
        "momentum_buffer"].float())
    for step in range(1, 3):
        _step_both(runs, step)
        _assert_same(*runs)


COPIES = {"deepcopy": copy.deepcopy, "pickle": lambda opt: pickle.loads(pickle.dumps(opt))}


@pytest.mark.parametrize("how", COPIES)
@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_flat_16_bit_copy_steps_as_the_original_in_memory_of_its_own(rounding, how):
    storage = dict(rounding=rounding, state_rounding="stochastic", seed=2)
    params, opt = _twins(torch.bfloat16, storage, dict(momentum=0.9, weight_decay=0.1))[1]
    _step_both([(params, opt)], 0)
    opt2 = COPIES[how](opt)
    params2 = [p for g in opt2.param_groups for p in g["params"]]
    assert opt2.flat and len(opt2._flats) == 2
    assert opt2._flats[1].arena.tensors == (3, 4, 5)
    mine = {t.data_ptr() for s in opt.state.values() for t in s.values()} | \
        {p.data_ptr() for p in params if p.numel()}
    theirs = {t.data_ptr() for s in opt2.state.values() for t in s.values()} | \
        {p.data_ptr() for p in params2 if p.numel()}
    assert not mine & theirs, "the copy shares memory with the original"
    for step in range(1, 4):
        _step_both([(params, opt), (params2, opt2)], step)
        _assert_same((params, opt), (params2, opt2))


def test_flat_16_bit_checks():
    # A replaced parameter, a user's grad and a loaded buffer are moved in;
    # a grad of another dtype, a bad extra entry and a re-laid parameter
    # are refused before anything is written.
    p, q = (torch.nn.Parameter(torch.ones(4, 4, dtype=torch.bfloat16)) for _ in range(2))
    opt = SGD([p, q], lr=0.5, momentum=0.5, rounding="master", flat=True)
    home = opt._flats[0].arena
    p.grad, q.grad = torch.ones(4, 4, dtype=torch.bfloat16), torch.ones(4, 4, dtype=torch.bfloat16)
    opt.step()
    assert opt.state[p]["master_param"].data_ptr() == home.masters.ctypes.data
    p.data = torch.full((4, 4), 2.0, dtype=torch.bfloat16)  # a new tensor: a new arena
    opt.state[p]["master_param"] = torch.full((4, 4), 2.0)
    opt.step()
    home = opt._flats[0].arena
    assert p.data_ptr() == home.params.ctypes.data
    assert torch.equal(p.detach().float(), torch.full((4, 4), 2.0 - 0.5 * 1.5))

    def refused(error, match):
        kept = [t.detach().clone() for t in (p, q, opt.state[p]["master_param"])]
        with pytest.raises(error, match=re.escape(match)):
            opt.step()
        now = [t.detach() for t in (p, q, opt.state[p]["master_param"])]
        assert all(torch.equal(a, b) for a, b in zip(kept, now))

    p.grad_dtype = None  # torch then takes a float32 grad; flat mode refuses it
    p.grad = torch.ones(4, 4)
    refused(TypeError, "parameter 0 (param_groups[0]['params'][0]): its grad has dtype "
            "torch.float32 but the parameter has dtype torch.bfloat16")
    p.grad = torch.ones(4, 4, dtype=torch.bfloat16)
    saved = opt.state[q]["master_param"]
    opt.state[q]["master_param"] = saved.to(torch.bfloat16)
    refused(TypeError, "parameter 1 (param_groups[0]['params'][1]): its master_param has "
            "dtype torch.bfloat16; expected torch.float32")
    opt.state[q]["master_param"] = saved
    opt.step()
    q.data = q.data.t()
    refused(ValueError, "not contiguous")


def test_flat_16_bit_buffer_follows_a_state_dtype_edit():
    # The group's state_dtype edited: the arena is remade with float32
    # buffers and the bfloat16 buffer widened into it (exact).
    p = torch.nn.Parameter(torch.ones(5, dtype=torch.bfloat16))
    opt = SGD([p], lr=0.5, momentum=0.5, flat=True)
    p.grad = torch.full((5,), 0.3, dtype=torch.bfloat16)
    opt.step()
    before = opt.state[p]["momentum_buffer"].clone()
    opt.param_groups[0]["state_dtype"] = torch.float32
    opt.zero_grad()
    buf = opt.state[p]["momentum_buffer"]
    assert buf.dtype == torch.float32 and torch.equal(buf, before.float())
    assert buf.data_ptr() == opt._flats[0].arena.bufs.ctypes.data
