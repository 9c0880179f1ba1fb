"""momentum.torch.SGD against torch.optim.SGD: same training, same state, same errors."""
from __future__ import annotations

import copy
import pickle
import re
import subprocess
import sys
import warnings
from collections.abc import Callable

import pytest

torch = pytest.importorskip("torch")

import momentum.torch as mt  # noqa: E402
from momentum.torch import SGD  # noqa: E402
from torch_helpers import (  # noqa: E402
    assert_same, fallback_warnings, flat_params, make_data, make_model, mse,
    sgd_flag_combinations)

STEPS = 100
# A dtype the kernels do not take (torch's complex half), which momentum.torch.SGD
# steps with torch's own arithmetic.
TORCH_ONLY = torch.complex32
FLAGS = sgd_flag_combinations(momentum=0.9, dampening=0.1)
# float64: both sides round every operation to 53 bits; PyTorch's vectorised
# add may fuse a multiply-add where we round twice, a relative 1e-16 per step
# that stays far below 1e-10 after 100 steps.
# float32: the same one-rounding differences are 6e-8 relative per operation;
# through 100 steps of a trained network they were measured at <= 4e-7 of the
# largest parameter.  1e-5 leaves room for that while any wrong rule (a missing
# dampening, momentum or decay term) is off by more than 1e-3.
RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def make_loss(model: torch.nn.Module, dtype: torch.dtype,
              maximize: bool = False) -> Callable[[], torch.Tensor]:
    """Mean squared error on fixed data; negated when maximizing, so both
    directions of the search converge."""
    x, y = make_data(dtype)
    sign = -1.0 if maximize else 1.0
    return lambda: sign * mse(model, x, y)


def train(model: torch.nn.Module, opt: torch.optim.Optimizer,
          loss: Callable[[], torch.Tensor], steps: int, sched=None) -> None:
    for _ in range(steps):
        opt.zero_grad()
        loss().backward()
        opt.step()
        if sched is not None:
            sched.step()


def trained(cls, dtype: torch.dtype, flags: dict, steps: int = STEPS, **extra) -> torch.Tensor:
    model = make_model(dtype)
    opt = cls(model.parameters(), lr=0.05, **flags, **extra)
    train(model, opt, make_loss(model, dtype, flags.get("maximize", False)), steps)
    return flat_params(model)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
def test_training_matches_torch(dtype, flags):
    ours = trained(SGD, dtype, flags)
    theirs = trained(torch.optim.SGD, dtype, flags)
    assert_same(ours, theirs, RTOL[dtype])
    assert not torch.equal(ours, flat_params(make_model(dtype))), "nothing trained"


@pytest.mark.parametrize("flags", [FLAGS[0], FLAGS[-1], dict(momentum=0.9, nesterov=True)])
def test_flat_matches_per_tensor(flags):
    assert torch.equal(trained(SGD, torch.float64, flags, flat=True),
                       trained(SGD, torch.float64, flags))


def test_state_dict_round_trip_both_ways():
    """ours -> torch.optim.SGD -> ours continues as torch.optim.SGD alone."""
    flags = dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-2)
    dtype = torch.float64
    ref = make_model(dtype)
    train(ref, torch.optim.SGD(ref.parameters(), **flags), make_loss(ref, dtype), 90)

    model = make_model(dtype)
    loss = make_loss(model, dtype)
    ours = SGD(model.parameters(), **flags)
    train(model, ours, loss, 30)
    theirs = torch.optim.SGD(model.parameters(), **flags)
    theirs.load_state_dict(ours.state_dict())
    train(model, theirs, loss, 30)
    again = SGD(model.parameters(), **flags)
    again.load_state_dict(theirs.state_dict())
    train(model, again, loss, 30)
    assert_same(flat_params(model), flat_params(ref), RTOL[dtype])


def test_state_layout_is_torch_layout():
    states = []
    for cls in (SGD, torch.optim.SGD):
        model = make_model(torch.float64)
        opt = cls(model.parameters(), lr=0.05, momentum=0.9)
        train(model, opt, make_loss(model, torch.float64), 1)
        states.append(opt.state_dict())
    ours, theirs = states
    assert ours["state"].keys() == theirs["state"].keys()
    for k, st in ours["state"].items():
        assert st.keys() == {"momentum_buffer"}
        buf, ref = st["momentum_buffer"], theirs["state"][k]["momentum_buffer"]
        assert (buf.shape, buf.dtype, buf.device) == (ref.shape, ref.dtype, ref.device)
    assert ours["param_groups"][0]["params"] == theirs["param_groups"][0]["params"]


def _pickled(obj):
    return pickle.loads(pickle.dumps(obj))


# How a (model, optimizer) pair, or the optimizer alone, is copied.
COPIES = {
    "deepcopy of model and optimizer": lambda model, opt: copy.deepcopy((model, opt)),
    "pickle of model and optimizer": lambda model, opt: _pickled((model, opt)),
    "deepcopy of the optimizer": lambda model, opt: (None, copy.deepcopy(opt)),
    "pickle of the optimizer": lambda model, opt: (None, _pickled(opt)),
}


def _tensors_of(opt: SGD) -> list[torch.Tensor]:
    """Every parameter, gradient and buffer ``opt`` steps, in a fixed order."""
    params = [p for group in opt.param_groups for p in group["params"]]
    return [*params, *(p.grad for p in params if p.grad is not None),
            *(opt.state[p]["momentum_buffer"] for p in params if p in opt.state)]


def _extent(t: torch.Tensor) -> tuple[int, int]:
    return t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("how", COPIES)
def test_copy_steps_as_the_original_in_memory_of_its_own(flat, how):
    # A parameter that the loss does not use: flat=True steps it with a zero
    # gradient (weight decay, momentum) where a per-tensor optimizer skips
    # it after zero_grad(), so a copy that lost flat=True goes astray.
    model = make_model(torch.float64)
    model.register_parameter("unused", torch.nn.Parameter(torch.ones(5, dtype=torch.float64)))
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1, flat=flat)
    train(model, opt, make_loss(model, torch.float64), 2)
    model2, opt2 = COPIES[how](model, opt)
    assert type(opt2) is SGD and opt2.flat == flat and repr(opt2) == repr(opt)
    spans = sorted([(*_extent(t), 0) for t in _tensors_of(opt)]
                   + [(*_extent(t), 1) for t in _tensors_of(opt2)])
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        assert a == b or end <= start, "the copy shares memory with the original"
    gen = torch.Generator().manual_seed(3)
    for _ in range(4):
        if model2 is None:  # the optimizer alone: the same gradients for both
            for p, q in zip(model.parameters(), opt2.param_groups[0]["params"]):
                p.grad = torch.randn(p.shape, dtype=p.dtype, generator=gen)
                q.grad = p.grad.clone()
            opt.step()
            opt2.step()
        else:
            train(model, opt, make_loss(model, torch.float64), 1)
            train(model2, opt2, make_loss(model2, torch.float64), 1)
            assert all(q is r for q, r in zip(model2.parameters(),
                                              opt2.param_groups[0]["params"]))
        for t, u in zip(_tensors_of(opt), _tensors_of(opt2), strict=True):
            assert torch.equal(t, u)
    opt2.zero_grad()
    assert all((q.grad is not None) == flat for q in opt2.param_groups[0]["params"])


def test_momentum_zero_keeps_no_state():
    model = make_model(torch.float64)
    opt = SGD(model.parameters(), lr=0.1)
    train(model, opt, make_loss(model, torch.float64), 2)
    assert len(opt.state) == 0


def test_step_lr_scheduler():
    dtype = torch.float64
    results = []
    for cls in (SGD, torch.optim.SGD):
        model = make_model(dtype)
        opt = cls(model.parameters(), lr=0.2, momentum=0.5)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.1)
        train(model, opt, make_loss(model, dtype), 40, sched)
        results.append(flat_params(model))
    assert_same(*results, RTOL[dtype])


def test_param_without_grad_is_skipped():
    dtype = torch.float64
    model = make_model(dtype)
    unused = torch.nn.Parameter(torch.ones(5, dtype=dtype))
    opt = SGD([*model.parameters(), unused], lr=0.1, momentum=0.9, weight_decay=0.1)
    train(model, opt, make_loss(model, dtype), 3)
    assert torch.equal(unused, torch.ones(5, dtype=dtype))
    assert unused not in opt.state


def test_closure_runs_with_grad_and_returns_loss():
    dtype = torch.float64
    model = make_model(dtype)
    loss = make_loss(model, dtype)
    opt = SGD(model.parameters(), lr=0.1)

    def closure():
        assert torch.is_grad_enabled()
        opt.zero_grad()
        value = loss()
        value.backward()
        return value

    with torch.no_grad():
        first = opt.step(closure)
    assert first.item() == pytest.approx(loss().item(), rel=0.5)
    assert loss().item() < first.item()


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad(set_to_none):
    dtype = torch.float64
    results = []
    for cls in (SGD, torch.optim.SGD):
        model = make_model(dtype)
        loss = make_loss(model, dtype)
        opt = cls(model.parameters(), lr=0.1, momentum=0.9)
        for step in range(5):
            opt.zero_grad(set_to_none=set_to_none)
            for p in model.parameters():
                if set_to_none or step == 0:
                    assert p.grad is None
                else:
                    assert not p.grad.any()
            loss().backward()
            opt.step()
        results.append(flat_params(model))
    assert_same(*results, RTOL[dtype])


def test_new_grad_tensors_each_step_are_not_stale():
    """A gradient tensor freed and replaced by a new one (which CPython may
    put at the freed object's address) is read afresh."""
    dtype = torch.float64
    params = [torch.nn.Parameter(torch.ones(3, dtype=dtype)) for _ in range(2)]
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    ours = SGD(params, lr=0.1, momentum=0.9)
    theirs = torch.optim.SGD(copies, lr=0.1, momentum=0.9)
    for step in range(20):
        for opt, ps in ((ours, params), (theirs, copies)):
            for k, p in enumerate(ps):
                p.grad = None
                p.grad = torch.full((3,), float(step * (k + 1)), dtype=dtype)
            opt.step()
    for p, q in zip(params, copies):
        assert_same(p.detach(), q.detach(), RTOL[dtype])


def test_loaded_buffers_are_used():
    """A state dict loaded mid-training replaces the cached buffers."""
    dtype = torch.float64
    model = make_model(dtype)
    loss = make_loss(model, dtype)
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    train(model, opt, loss, 2)
    saved = opt.state_dict()
    zeroed = {k: {"momentum_buffer": torch.zeros_like(v["momentum_buffer"])}
              for k, v in saved["state"].items()}
    opt.load_state_dict({"state": zeroed, "param_groups": saved["param_groups"]})
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    loss().backward()
    opt.step()
    for p, old in zip(model.parameters(), before):
        # zero buffer: b = 0.9 * 0 + g, p = old - lr * g
        torch.testing.assert_close(p.detach(), old - 0.1 * p.grad, rtol=0, atol=1e-15)


@pytest.mark.parametrize("kwargs", [
    dict(lr=-1.0), dict(momentum=-0.1), dict(weight_decay=-1.0),
    dict(nesterov=True), dict(nesterov=True, momentum=0.9, dampening=0.1),
    dict(lr=torch.tensor([0.1, 0.2])),
])
def test_bad_constructor_arguments_raise_as_torch(kwargs):
    params = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(ValueError) as theirs:
        torch.optim.SGD(params, **kwargs)
    with pytest.raises(ValueError, match=str(theirs.value)) as ours:
        SGD(params, **kwargs)
    assert str(ours.value) == str(theirs.value)


# The param-group keys momentum.torch.SGD adds to torch.optim.SGD's: how
# 16-bit parameters and state are stored, and the stochastic key.
STORAGE_DEFAULTS = {"state_dtype": None, "rounding": "nearest", "state_rounding": "nearest",
                    "seed": 0, "step": 0}


@pytest.mark.parametrize("flat", [False, True])
def test_repr_is_torchs_listing_under_our_own_name(flat):
    groups = lambda: [{"params": [torch.nn.Parameter(torch.ones(3))]},
                      {"params": [torch.nn.Parameter(torch.ones(2))], "lr": 0.2, "nesterov": True}]
    ours = SGD(groups(), lr=0.1, momentum=0.9, weight_decay=1e-3, flat=flat)
    theirs = torch.optim.SGD(groups(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for group in theirs.param_groups:  # and our storage keys, listed alike
        group.update(STORAGE_DEFAULTS)
    head, listing = repr(theirs).split(" (", 1)
    assert head == "SGD"
    assert repr(ours) == f"momentum.torch.SGD (\nflat: {flat}" + listing


# An edit of group 1 that the step refuses: (key, value, error, what the message says).
BAD_GROUP_EDITS = {
    "negative lr": ("lr", -1.0, ValueError, "'lr' must be finite and >= 0, got -1.0"),
    "nan weight_decay": ("weight_decay", float("nan"), ValueError, "'weight_decay' must be finite"),
    "dampening 2": ("dampening", 2.0, ValueError, "'dampening' must be in [0, 1]"),
    "negative momentum": ("momentum", -0.5, ValueError, "'momentum' must be finite and >= 0"),
    "lr a string": ("lr", "0.1", TypeError, "'lr' must be a real number, not str"),
    "lr a 2-element tensor": ("lr", torch.tensor([0.1, 0.2]), ValueError, "Tensor lr must be 1-element"),
    "nesterov with dampening": ("dampening", 0.5, ValueError, "nesterov=True needs momentum > 0"),
}


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("warm", [False, True], ids=["first step", "warm step"])
@pytest.mark.parametrize("edit", BAD_GROUP_EDITS)
def test_bad_group_edit_is_an_error_of_sgd_step(flat, warm, edit):
    key, value, error, says = BAD_GROUP_EDITS[edit]
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    opt = SGD([{"params": [a]}, {"params": [b], "nesterov": True}], lr=0.1, momentum=0.9,
              flat=flat)
    for _ in range(2 if warm else 0):
        a.grad, b.grad = torch.ones(3), torch.ones(2)
        opt.step()
    a.grad, b.grad = torch.ones(3), torch.ones(2)
    opt.param_groups[1][key] = value
    kept = [t.detach().clone() for t in _tensors_of(opt)]
    with pytest.raises(error) as info:
        opt.step()
    assert str(info.value).startswith("SGD.step(): param_groups[1]: "), str(info.value)
    assert says in str(info.value), str(info.value)
    assert all(torch.equal(t, u) for t, u in zip(_tensors_of(opt), kept, strict=True))


def test_empty_parameter_list_raises_as_torch():
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], lr=0.1)


def _second_param_steps_as_torch(make: Callable[[], tuple[torch.Tensor, Callable]],
                                 reason: str) -> None:
    """Parameter 1, ``make()``'s (with a function giving its gradient of
    each step), is one the kernels cannot step: it is stepped with torch's
    own arithmetic, with one warning that says ``reason``, and it and the
    kernels' parameter 0 end, with their buffers, bit for bit as under
    torch.optim.SGD (every value and operation exact in float32)."""
    runs = []
    for cls in (SGD, torch.optim.SGD):
        good = torch.nn.Parameter(torch.ones(4))
        param, grad = make()
        opt = cls([good, param], lr=0.5, momentum=0.5)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for step in range(3):
                good.grad = torch.full((4,), step + 1.0)
                param.grad = grad(step)
                opt.step()
        runs.append(([good, param, *(opt.state[p]["momentum_buffer"] for p in (good, param))],
                     fallback_warnings(caught)))
    (ours, said), (theirs, _) = runs
    assert len(said) == 1 and re.search(reason, said[0]), said
    for a, b in zip(ours, theirs, strict=True):
        assert (a.dtype, a.device, a.shape, a.layout) == (b.dtype, b.device, b.shape, b.layout)
        if a.device.type != "meta":
            assert torch.equal(_values(a), _values(b)), (a, b)


def test_complex32_param_is_stepped_with_torchs_arithmetic():
    # (16-bit real parameters are the kernels': test_torch_half.py)
    _second_param_steps_as_torch(
        lambda: (torch.nn.Parameter(torch.ones(4, dtype=TORCH_ONLY)),
                 lambda step: torch.full((4,), step / 2).to(TORCH_ONLY)),
        r"dtype torch\.complex32")


def test_grad_of_another_dtype_is_stepped_with_torchs_arithmetic():
    def make():
        p = torch.nn.Parameter(torch.ones(4))
        p.grad_dtype = None  # else torch itself refuses the float64 grad
        return p, lambda step: torch.full((4,), step / 2, dtype=torch.float64)
    _second_param_steps_as_torch(make, r"a torch\.float64 tensor beside a torch\.float32 "
                                       r"parameter")


def test_sparse_grad_is_stepped_with_torchs_arithmetic():
    _second_param_steps_as_torch(
        lambda: (torch.nn.Parameter(torch.ones(4)),
                 lambda step: torch.full((4,), step / 2).to_sparse()),
        r"layout torch\.sparse_coo")


def test_meta_device_is_stepped_with_torchs_arithmetic():
    _second_param_steps_as_torch(
        lambda: (torch.nn.Parameter(torch.ones(4, device="meta")),
                 lambda step: torch.ones(4, device="meta")),
        r"a tensor on device meta")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_is_stepped_with_torchs_arithmetic():
    _second_param_steps_as_torch(
        lambda: (torch.nn.Parameter(torch.ones(4, device="cuda")),
                 lambda step: torch.full((4,), step / 2, device="cuda")),
        r"a tensor on device cuda")


def test_import_momentum_does_not_import_torch():
    code = "import sys, momentum; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)



def _flat_and_reference(**flags) -> list[tuple]:
    """(model, optimizer, loss) under SGD(flat=True) and under torch.optim.SGD."""
    runs = []
    for cls, extra in ((SGD, {"flat": True}), (torch.optim.SGD, {})):
        model = make_model(torch.float64)
        runs.append((model, cls(model.parameters(), lr=0.1, **flags, **extra),
                     make_loss(model, torch.float64)))
    return runs


def test_flat_moves_params_into_one_block():
    model = make_model(torch.float32)
    before = flat_params(model)
    opt = SGD(model.parameters(), lr=0.1, flat=True)
    block = opt._flats[0].arena.params
    for p in model.parameters():
        offset = p.data_ptr() - block.ctypes.data
        assert 0 <= offset < block.nbytes and offset % 64 == 0
        assert p.grad is not None and not p.grad.any()
    assert torch.equal(flat_params(model), before)


@pytest.mark.parametrize("set_to_none", [True, False])
def test_flat_zero_grad_zeroes_in_place(set_to_none):
    results = []
    for model, opt, loss in _flat_and_reference(momentum=0.9):
        for _ in range(5):
            grads = [p.grad for p in model.parameters()]
            opt.zero_grad(set_to_none=set_to_none)
            if isinstance(opt, SGD):
                assert all(p.grad is g and not g.any()
                           for p, g in zip(model.parameters(), grads))
            loss().backward()
            opt.step()
        results.append(flat_params(model))
    assert_same(*results, RTOL[torch.float64])


def test_flat_copies_in_a_user_grad_a_moved_param_and_loaded_state():
    results = []
    for model, opt, loss in _flat_and_reference(momentum=0.9):
        train(model, opt, loss, 3)
        weight = model[0].weight
        weight.grad = torch.full_like(weight, 0.5)  # a grad outside the arena
        opt.step()
        weight.data = weight.detach() * 0.5  # memory outside the arena
        train(model, opt, loss, 3)
        saved = opt.state_dict()
        halved = {k: {"momentum_buffer": v["momentum_buffer"] * 0.5}
                  for k, v in saved["state"].items()}
        opt.load_state_dict({"state": halved, "param_groups": saved["param_groups"]})
        train(model, opt, loss, 3)
        results.append(flat_params(model))
    assert_same(*results, RTOL[torch.float64])
    ours = results[0]
    assert not torch.equal(ours, flat_params(make_model(torch.float64)))


def test_flat_param_replaced_while_another_has_no_grad():
    results = []
    for model, opt, loss in _flat_and_reference(momentum=0.9):
        train(model, opt, loss, 2)
        bias = model[2].bias
        bias.data = torch.zeros(3, dtype=torch.float64)  # same shape, new memory
        model[0].bias.grad = None  # skipped this step, as torch skips it
        opt.step()
        train(model, opt, loss, 2)
        results.append(flat_params(model))
    assert_same(*results, RTOL[torch.float64])


def _edit_between_steps(flat: bool, edit: Callable) -> None:
    """Train, let ``edit(model, opt)`` change the optimizer's inputs between
    two steps (no zero_grad or backward in between), train on: ours (flat or
    per tensor) ends where torch.optim.SGD does."""
    results = []
    for cls, extra in ((SGD, {"flat": flat}), (torch.optim.SGD, {})):
        model = make_model(torch.float64)
        opt = cls(model.parameters(), lr=0.1, momentum=0.9, **extra)
        loss = make_loss(model, torch.float64)
        train(model, opt, loss, 3)
        edit(model, opt)
        opt.step()
        train(model, opt, loss, 2)
        results.append(flat_params(model))
    assert_same(*results, RTOL[torch.float64])
    assert not torch.equal(results[0], flat_params(make_model(torch.float64)))


def _set_buffer(model, opt):
    opt.state[model[0].weight]["momentum_buffer"] = torch.full_like(model[0].weight, 0.25)


def _replace_state_entry(model, opt):
    opt.state[model[2].bias] = {"momentum_buffer": torch.full_like(model[2].bias, -0.5)}


def _delete_state_entry(model, opt):
    del opt.state[model[0].bias]  # its next step is a first step again


def _replace_grad(model, opt):
    model[0].weight.grad = torch.full_like(model[0].weight, 0.125)


def _swap_grad_memory(model, opt):
    grad = model[2].weight.grad
    grad.data = torch.full_like(grad, -0.75)  # same grad tensor, new memory


def _swap_param_memory(model, opt):
    weight = model[2].weight
    weight.data = weight.detach() + 0.5


def _replace_whole_state(model, opt):
    from collections import defaultdict
    opt.state = defaultdict(dict, {p: {"momentum_buffer": st["momentum_buffer"] * 0.5}
                                   for p, st in opt.state.items()})


def _drop_grad(model, opt):
    model[0].bias.grad = None  # skipped by this step


def _swap_buffer_memory(model, opt):
    buf = opt.state[model[0].weight]["momentum_buffer"]
    buf.data = torch.zeros_like(buf)  # same buffer tensor, new memory: a reset


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("edit", [_set_buffer, _replace_state_entry, _delete_state_entry,
                                  _replace_grad, _swap_grad_memory, _swap_param_memory,
                                  _replace_whole_state, _drop_grad, _swap_buffer_memory],
                         ids=lambda f: f.__name__.strip("_"))
def test_edits_between_steps_are_not_stale(flat, edit):
    _edit_between_steps(flat, edit)


def _entry(buffer: torch.Tensor) -> dict:
    return {"momentum_buffer": buffer}


# How a state entry may be replaced or removed without the state's own
# methods (a dict subclass's overrides see none of these).
STATE_EDITS = {
    "dict.__setitem__": lambda state, p, buf: dict.__setitem__(state, p, _entry(buf)),
    "dict.update": lambda state, p, buf: dict.update(state, {p: _entry(buf)}),
    "dict.__ior__": lambda state, p, buf: dict.__ior__(state, {p: _entry(buf)}),
    "dict.pop, dict.setdefault": lambda state, p, buf: (
        dict.pop(state, p), dict.setdefault(state, p, _entry(buf))),
    "dict.__delitem__": lambda state, p, buf: dict.__delitem__(state, p),
    "dict.clear": lambda state, p, buf: dict.clear(state),
    "the entry's dict.__setitem__": lambda state, p, buf: dict.__setitem__(
        state[p], "momentum_buffer", buf),
    "the entry's dict.clear": lambda state, p, buf: dict.clear(state[p]),
}


def _exact_trajectory(cls, extra: dict, edit: Callable | None) -> list[list[torch.Tensor]]:
    """Parameters and buffers after each of 6 steps of ``cls``, with
    ``edit(state, parameter 1, new buffer)`` before the fourth.

    Every value is a multiple of a small power of two and every operation
    exact in float64 (lr and momentum 0.5), so any two correct SGDs agree
    to the bit, whatever they fuse or vectorise.  Gradients are written in
    place, so that the steps after the first run from the snapshot.
    """
    params = [torch.nn.Parameter(torch.arange(n, dtype=torch.float64) / 8) for n in (4, 3)]
    opt = cls(params, lr=0.5, momentum=0.5, **extra)
    trajectory = []
    for step in range(6):
        if step == 3 and edit is not None:
            edit(opt.state, params[1], torch.full((3,), 0.25, dtype=torch.float64))
        for p in params:
            g = torch.tensor([1.0, -2.0, 0.5, 3.0][:p.numel()], dtype=torch.float64) * (step + 1) / 4
            if p.grad is None:
                p.grad = g
            else:
                p.grad.copy_(g)
        opt.step()
        trajectory.append([p.detach().clone() for p in params]
                          + [opt.state[p]["momentum_buffer"].clone() for p in params])
    return trajectory


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("edit", STATE_EDITS)
def test_state_edited_with_dicts_own_methods_is_seen(flat, edit):
    ours = _exact_trajectory(SGD, {"flat": flat}, STATE_EDITS[edit])
    theirs = _exact_trajectory(torch.optim.SGD, {"foreach": False}, STATE_EDITS[edit])
    for step, (mine, torchs) in enumerate(zip(ours, theirs)):
        for k, (a, b) in enumerate(zip(mine, torchs)):
            assert torch.equal(a, b), f"step {step}, tensor {k}: {a} != {b}"
    unedited = _exact_trajectory(torch.optim.SGD, {"foreach": False}, None)
    assert not all(torch.equal(a, b) for a, b in zip(theirs[-1], unedited[-1])), \
        "the edit changes nothing"


# Each optimizer's first step from ones with gradient ones, lr 0.1: SGD and
# Lion move by lr; Adam by lr * m_hat / (sqrt(v_hat) + eps) = lr / (1 + 1e-8);
# AdamW's default weight_decay 0.01 first scales by 1 - lr * 0.01.
HOOKED = {"SGD": (lambda ps: SGD(ps, lr=0.1, momentum=0.9), 0.9),
          "Adam": (lambda ps: mt.Adam(ps, lr=0.1), 0.9),
          "AdamW": (lambda ps: mt.AdamW(ps, lr=0.1), 0.899),
          "Lion": (lambda ps: mt.Lion(ps, lr=0.1), 0.9)}


@pytest.mark.parametrize("name", HOOKED)
def test_step_hooks_and_profiler_see_every_step(name):
    """step() skips torch's hook wrapper only while no hook and no profiler
    could see it: a hook registered on the optimizer or globally runs
    around the step, and a profiled step is a range named as torch's."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    make, after = HOOKED[name]
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    opt = make([p])
    calls = []

    def pre(o, args, kwargs):
        calls.append(("pre", o, p.detach().clone()))

    def post(o, args, kwargs):
        calls.append(("post", o, p.detach().clone()))

    handles = [opt.register_step_pre_hook(pre), opt.register_step_post_hook(post),
               register_optimizer_step_pre_hook(pre)]
    opt.step()
    for h in handles:
        h.remove()
    opt.step()  # no hook left: not seen
    assert [(kind, o) for kind, o, _ in calls] == [("pre", opt), ("pre", opt), ("post", opt)]
    assert torch.equal(calls[0][2], torch.ones(3))  # before the step
    assert torch.allclose(calls[2][2], torch.full((3,), after))  # after the step
    with torch.profiler.profile() as prof:
        opt.step()
    assert f"Optimizer.step#{name}.step" in {e.name for e in prof.events()}


def _transpose(t):
    t.data = t.data.t()


RELAID = {
    "param": lambda w, opt: _transpose(w),
    "grad": lambda w, opt: _transpose(w.grad),
    "buffer": lambda w, opt: _transpose(opt.state[w]["momentum_buffer"]),
}


@pytest.mark.parametrize("which", RELAID)
def test_flat_tensor_relaid_at_the_same_address_is_refused_not_stepped_stale(which):
    # ``t.data = t.data.t()`` keeps t's address but not its layout: a cached
    # view would step the transpose.  A flat step refuses it, as it refuses
    # any non-contiguous tensor, and writes nothing.
    w = torch.nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64))
    opt = SGD([w], lr=0.1, momentum=0.9, flat=True)
    w.grad = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    opt.step()
    opt.step()
    RELAID[which](w, opt)
    before = (w.detach().clone(), opt.state[w]["momentum_buffer"].clone())
    with pytest.raises(ValueError, match="not contiguous"):
        opt.step()
    assert torch.equal(w.detach(), before[0])
    assert torch.equal(opt.state[w]["momentum_buffer"], before[1])


@pytest.mark.parametrize("which", RELAID)
def test_tensor_relaid_at_the_same_address_is_stepped_as_torch_not_stale(which):
    # Per tensor, the transposed tensor no longer shares its parameter's
    # layout: it is stepped with torch's arithmetic (warned), as torch.optim.SGD
    # steps it, not as the memory was laid out at the last step.  Every value
    # and operation is exact, so the two agree to the bit.
    runs = []
    for cls in (SGD, torch.optim.SGD):
        w = torch.nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64))
        opt = cls([w], lr=0.5, momentum=0.5)
        w.grad = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
        opt.step()
        opt.step()
        RELAID[which](w, opt)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            opt.step()
            opt.step()
        runs.append((w.detach().clone(), opt.state[w]["momentum_buffer"].clone(),
                     fallback_warnings(caught)))
    (w, buf, said), (w_torch, buf_torch, _) = runs
    assert len(said) == 1 and "of different layouts" in said[0], said
    assert torch.equal(w, w_torch) and w.stride() == w_torch.stride()
    assert torch.equal(buf, buf_torch) and buf.stride() == buf_torch.stride()


@pytest.mark.parametrize("flat", [False, True])
def test_param_shrunk_at_the_same_address_steps_only_what_is_left(flat):
    results = []
    for cls, extra in ((SGD, {"flat": flat}), (torch.optim.SGD, {})):
        storage = torch.arange(6, dtype=torch.float64)
        a = torch.nn.Parameter(storage.clone())
        opt = cls([a], lr=1.0, **extra)
        a.grad = torch.ones(6, dtype=torch.float64)
        opt.step()
        a.data = a.data[:3]                  # same address, three elements
        a.grad = torch.full((3,), 2.0, dtype=torch.float64)
        opt.step()
        results.append(a.detach().clone())
    assert torch.equal(*results)


def test_zero_grad_to_none_lets_the_old_gradients_go():
    import weakref
    p = torch.nn.Parameter(torch.ones(1000))
    opt = SGD([p], lr=0.1, momentum=0.9)
    p.grad = torch.ones(1000)
    opt.step()
    old = weakref.ref(p.grad)
    opt.zero_grad(set_to_none=True)
    assert old() is None                     # not held until the next step
    p.grad = torch.full((1000,), 2.0)
    opt.step()
    ref = torch.nn.Parameter(torch.ones(1000))
    ref_opt = torch.optim.SGD([ref], lr=0.1, momentum=0.9)
    for g in (1.0, 2.0):
        ref.grad = torch.full((1000,), g)
        ref_opt.step()
    assert torch.allclose(p.detach(), ref.detach(), rtol=0, atol=1e-6)


def test_a_group_whose_params_became_a_tuple_still_steps():
    p = torch.nn.Parameter(torch.ones(3))
    opt = SGD([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    opt.param_groups[0]["params"] = tuple(opt.param_groups[0]["params"])
    opt.step()
    assert torch.allclose(p.detach(), torch.full((3,), 0.8))


def test_overlapping_tensors_are_named_by_parameter():
    a, b, c = (torch.nn.Parameter(torch.ones(4)) for _ in range(3))
    b.grad, c.grad = torch.ones(4), torch.ones(4)
    c.data = b.data                          # parameters 1 and 2 share memory
    opt = SGD([a, b, c], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=re.escape(
            "SGD.step(): parameter 1 (param_groups[0]['params'][1]) and parameter 2 "
            "(param_groups[0]['params'][2]) overlap in memory")):
        opt.step()
    assert torch.equal(b.detach(), torch.ones(4))


def test_failed_step_writes_nothing_in_any_group_and_adopts_no_buffer():
    # Group 1's bad gradient aliases group 0's parameter: the step must raise
    # before group 0 is stepped, and must not keep the buffers it made.
    def make():
        a = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
        b = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
        return a, b

    ours_a, ours_b = make()
    opt = SGD([{"params": [ours_a]}, {"params": [ours_b], "lr": 0.2}],
              lr=0.1, momentum=0.9, dampening=0.5)
    ours_a.grad = torch.ones(4, dtype=torch.float64)
    ours_b.grad = ours_a.data                 # overlaps group 0's parameter
    with pytest.raises(ValueError, match="overlap"):
        opt.step()
    assert torch.equal(ours_a.detach(), torch.ones(4, dtype=torch.float64))
    assert not opt.state                      # no half-made buffer kept
    theirs_a, theirs_b = make()
    ref = torch.optim.SGD([{"params": [theirs_a]}, {"params": [theirs_b], "lr": 0.2}],
                          lr=0.1, momentum=0.9, dampening=0.5)
    for _ in range(3):
        for p in (ours_a, ours_b, theirs_a, theirs_b):
            p.grad = torch.full((4,), 0.5, dtype=torch.float64)
        opt.step()
        ref.step()
    assert torch.equal(ours_a.detach(), theirs_a.detach())
    assert torch.equal(ours_b.detach(), theirs_b.detach())


def test_constructor_takes_torchs_implementation_switches():
    p = torch.nn.Parameter(torch.ones(3))
    ours = SGD([p], lr=0.1, momentum=0.9, foreach=True, fused=None)
    theirs = torch.optim.SGD([p], lr=0.1, momentum=0.9, foreach=True, fused=None)
    assert ours.param_groups[0].keys() == theirs.param_groups[0].keys() | STORAGE_DEFAULTS.keys()
    assert {k: ours.param_groups[0][k] for k in STORAGE_DEFAULTS} == STORAGE_DEFAULTS
    # differentiable=True is stepped with torch's arithmetic (see
    # test_torch_layouts); an arena cannot be differentiated through.
    assert SGD([p], lr=0.1, differentiable=True).param_groups[0]["differentiable"] is True
    with pytest.raises(ValueError, match="flat=True cannot be differentiable"):
        SGD([p], lr=0.1, differentiable=True, flat=True)
    with pytest.raises(RuntimeError, match="cannot be `True` together"):
        SGD([p], lr=0.1, fused=True, foreach=True)


def test_flat_accepts_an_empty_param_group():
    p = torch.nn.Parameter(torch.ones(3))
    opt = SGD([{"params": []}, {"params": [p]}], lr=0.1, flat=True)
    p.grad = torch.ones(3)
    opt.step()
    assert torch.allclose(p.detach(), torch.full((3,), 0.9))


def _count_fresh_looks(monkeypatch) -> list[int]:
    """Count the parameters that steps look at afresh, in Python (a group
    whose snapshot no longer holds), rather than run from the snapshot."""
    import momentum.torch
    calls = [0]
    look = momentum.torch._fallback_reason

    def counted(*args):
        calls[0] += 1
        return look(*args)
    monkeypatch.setattr(momentum.torch, "_fallback_reason", counted)
    return calls


def test_warm_steps_run_from_the_snapshot_and_match_torch(monkeypatch):
    # After the first steps (which make and adopt the buffers), a training
    # loop's steps -- new gradients from backward, or the same ones -- run
    # from the addresses the snapshot checked, without a fresh look.
    calls = _count_fresh_looks(monkeypatch)
    results = []
    for cls in (SGD, torch.optim.SGD):
        model = make_model(torch.float64)
        groups = [{"params": list(model[0].parameters())},
                  {"params": list(model[2].parameters()), "lr": 0.02, "nesterov": True}]
        opt = cls(groups, lr=0.05, momentum=0.9, weight_decay=1e-3)
        loss = make_loss(model, torch.float64)
        train(model, opt, loss, 2)
        if cls is SGD:
            assert calls[0] == 8             # each parameter, at steps 1 and 2
        calls[0] = 0
        train(model, opt, loss, 5)           # new gradients each step
        opt.step()                           # the same gradients again
        results.append(flat_params(model))
        if cls is SGD:
            assert calls[0] == 0
    assert_same(*results, RTOL[torch.float64])


SHAPE = (4, 4)


def _ones_at(offset: int, dtype: torch.dtype) -> torch.Tensor:
    """Ones of SHAPE starting ``offset`` bytes into a fresh buffer."""
    count = SHAPE[0] * SHAPE[1]
    raw = bytearray(count * torch.empty(0, dtype=dtype).element_size() + offset)
    return torch.frombuffer(raw, dtype=dtype, offset=offset, count=count).view(SHAPE).fill_(1)


def _other_float(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype == torch.float64 else torch.float64


def _swapped_in(make: Callable[[torch.dtype], torch.Tensor]) -> Callable:
    """Install: a new good gradient whose memory is then swapped for
    ``make(dtype)`` (how a gradient of another shape gets past torch's own
    check of ``p.grad = ...``)."""
    def install(a, b, opt, dtype):
        b.grad = torch.ones(SHAPE, dtype=dtype)
        b.grad.data = make(dtype)
    return install


def _assigned(make: Callable) -> Callable:
    """Install: ``b.grad = make(a, b, opt, dtype)``."""
    def install(a, b, opt, dtype):
        b.grad = make(a, b, opt, dtype)
    return install


def _two_tensor(dtype: torch.dtype) -> torch.Tensor:
    two_tensor = pytest.importorskip("torch.testing._internal.two_tensor")
    return two_tensor.TwoTensor(torch.ones(SHAPE, dtype=dtype), torch.ones(SHAPE, dtype=dtype))


def _buffer_of(p, opt):
    """``p``'s momentum buffer, made (as a user may set one) if it has none."""
    return opt.state[p].setdefault("momentum_buffer", torch.zeros_like(p))


def _counting(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """0, 1, 2, ... in ``shape``: unlike ones, a gradient whose elements a
    step must not mix up."""
    return torch.arange(shape[0] * shape[1], dtype=dtype).view(shape)


def _no_memory(dtype: torch.dtype) -> torch.Tensor:
    """A plain tensor of SHAPE whose storage was freed (resized to 0 bytes,
    as FSDP frees unsharded parameters): elements, but no memory."""
    t = torch.ones(SHAPE, dtype=dtype)
    t.untyped_storage().resize_(0)
    return t


# name: (install a bad gradient on parameter 1 (b), whose group-0 neighbour
# is a; then either the error type and what its message says, or
# RuntimeWarning and what the warning says where torch's arithmetic steps
# it), every bad array of test_bad_input that a torch gradient can be.  A
# read-only gradient is not bad (it is only read), nor is one sharing memory
# with another gradient; a gradient on another device or without a strided
# layout is refused by torch itself on assignment.
BAD_GRADS = {
    "other float dtype": (_assigned(lambda a, b, opt, dt: torch.ones(SHAPE, dtype=_other_float(dt))),
                          RuntimeWarning,
                          r"a torch\.float(64|32) tensor beside a torch\.float(32|64) parameter"),
    "float16": (_assigned(lambda a, b, opt, dt: torch.ones(SHAPE, dtype=torch.float16)),
                RuntimeWarning, r"a torch\.float16 tensor beside"),
    "bfloat16": (_assigned(lambda a, b, opt, dt: torch.ones(SHAPE, dtype=torch.bfloat16)),
                 RuntimeWarning, r"a torch\.bfloat16 tensor beside"),
    # (torch raises too, but on a warm step only once it has scaled the buffer)
    "complex64": (_assigned(lambda a, b, opt, dt: torch.ones(SHAPE, dtype=torch.complex64)),
                  TypeError, r"its grad has dtype torch\.complex64, which cannot be cast"),
    "int64": (_assigned(lambda a, b, opt, dt: torch.ones(SHAPE, dtype=torch.int64)),
              RuntimeWarning, r"a torch\.int64 tensor beside"),
    "other shape": (_swapped_in(lambda dt: torch.ones(2, 8, dtype=dt)), ValueError,
                    r"its grad has shape \(2, 8\)"),
    "other size": (_swapped_in(lambda dt: torch.ones(15, dtype=dt)), ValueError,
                   r"its grad has shape \(15,\)"),
    "transposed": (_assigned(lambda a, b, opt, dt: _counting(SHAPE, dt).t()),
                   RuntimeWarning, "a parameter, gradient and buffer of different layouts"),
    "strided": (_assigned(lambda a, b, opt, dt: _counting((4, 8), dt)[:, ::2]),
                RuntimeWarning, "a parameter, gradient and buffer of different layouts"),
    "misaligned by a byte": (_assigned(lambda a, b, opt, dt: _ones_at(1, dt)),
                             RuntimeWarning, "a tensor not aligned to its dtype"),
    "misaligned by half an element": (
        _assigned(lambda a, b, opt, dt: _ones_at(dt.itemsize // 2, dt)),
        RuntimeWarning, "a tensor not aligned to its dtype"),
    "misaligned memory swapped in": (_swapped_in(lambda dt: _ones_at(1, dt)),
                                     RuntimeWarning, "a tensor not aligned to its dtype"),
    "lazily negated": (_assigned(lambda a, b, opt, dt: torch._neg_view(_counting(SHAPE, dt))),
                       RuntimeWarning, "a lazily negated or conjugated view"),
    "sparse": (_assigned(lambda a, b, opt, dt: torch.ones(SHAPE, dtype=dt).to_sparse()),
               RuntimeWarning, r"a tensor of layout torch\.sparse_coo"),
    # A wrapper subclass has no memory of its own, but torch steps it (its
    # inner tensors), and so does torch's arithmetic here.
    "a wrapper subclass": (_assigned(lambda a, b, opt, dt: _two_tensor(dt)),
                           RuntimeWarning, r"a tensor subclass \(TwoTensor\)"),
    # (torch.optim.SGD crashes on it)
    "no memory": (_assigned(lambda a, b, opt, dt: _no_memory(dt)), TypeError,
                  "its grad has no memory"),
    "aliases parameter 0": (_assigned(lambda a, b, opt, dt: a.data), ValueError,
                            r"parameter 0 .* and the grad of parameter 1 .* overlap"),
    "overlaps parameter 0 in part": (
        _assigned(lambda a, b, opt, dt: a.data.view(-1)[8:].as_strided(SHAPE, (4, 1))),
        ValueError, r"parameter 0 .* and the grad of parameter 1 .* overlap"),
    "aliases its own parameter": (_assigned(lambda a, b, opt, dt: b.data), ValueError,
                                  r"parameter 1 .* and the grad of parameter 1 .* overlap"),
    "aliases parameter 0's buffer": (_assigned(lambda a, b, opt, dt: _buffer_of(a, opt)),
                                     ValueError, r"momentum_buffer of parameter 0 .* overlap"),
    "aliases its own buffer": (_assigned(lambda a, b, opt, dt: _buffer_of(b, opt)),
                               ValueError, r"momentum_buffer of parameter 1 .* overlap"),
}
USES_BUFFERS = ("aliases parameter 0's buffer", "aliases its own buffer")
STEPPED = [name for name, (_, what, _) in BAD_GRADS.items() if what is RuntimeWarning]
REFUSED = [name for name in BAD_GRADS if name not in STEPPED]


def _bad_grad_cases(names: list[str], momenta: tuple[float, float],
                    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64)) -> list:
    return [pytest.param(name, dtype, momentum, id=f"{name}-{str(dtype)[6:]}-momentum={momentum}")
            for name in names for dtype in dtypes
            for momentum in momenta if momentum or name not in USES_BUFFERS]


def _bits(t: torch.Tensor) -> torch.Tensor:
    """A copy of the bytes of ``t`` (dense, of a floating dtype)."""
    return t.detach().clone().view(torch.uint8)


def _refused(opt: SGD, a, b) -> tuple[type, str]:
    """Step ``opt`` (a's grad good, b's bad): it must raise TypeError or
    ValueError and write nothing (parameters, a's grad, buffers, byte for
    byte; no state entry or buffer added); the error, as (type, message)."""
    kept = {"a": _bits(a), "b": _bits(b), "a.grad": _bits(a.grad)}
    entries = {p: dict(opt.state[p]) for p in (a, b) if p in opt.state}
    kept.update({f"buffer {i}": _bits(entries[p]["momentum_buffer"])
                 for i, p in enumerate((a, b)) if "momentum_buffer" in entries.get(p, {})})
    with pytest.raises((TypeError, ValueError)) as info:
        opt.step()
    now = {"a": a, "b": b, "a.grad": a.grad}
    now.update({f"buffer {i}": opt.state[p]["momentum_buffer"]
                for i, p in enumerate((a, b)) if "momentum_buffer" in entries.get(p, {})})
    for name, bits in kept.items():
        assert torch.equal(_bits(now[name]), bits), f"{name} was written"
    assert {p: dict(opt.state[p]) for p in (a, b) if p in opt.state} == entries
    return type(info.value), str(info.value)


def _two_groups(cls, dtype: torch.dtype, momentum: float, lrs: tuple[float, float],
                warm_steps: int, b_dtype: torch.dtype | None = None):
    """Parameters a (group 0) and b (group 1, of ``b_dtype``, else ``dtype``)
    of SHAPE under ``cls``, after ``warm_steps`` steps with gradients of
    ones; a lies in a larger block, so that a gradient can overlap it in part."""
    block = torch.ones(2 * SHAPE[0] * SHAPE[1], dtype=dtype)
    a = torch.nn.Parameter(block[:SHAPE[0] * SHAPE[1]].view(SHAPE))
    b = torch.nn.Parameter(torch.full(SHAPE, 2.0, dtype=b_dtype or dtype))
    b.grad_dtype = None  # else torch itself refuses a gradient of another dtype
    opt = cls([{"params": [a]}, {"params": [b], "lr": lrs[1]}], lr=lrs[0], momentum=momentum)
    for _ in range(warm_steps):
        a.grad, b.grad = torch.ones(SHAPE, dtype=dtype), torch.ones(SHAPE, dtype=b.dtype)
        opt.step()
    a.grad = torch.ones(SHAPE, dtype=dtype)
    return a, b, opt


@pytest.mark.parametrize("bad, dtype, momentum", _bad_grad_cases(
    REFUSED, (0.0, 0.9), (torch.float32, torch.float64, torch.bfloat16)))
def test_bad_new_grad_is_refused_alike_on_a_first_and_a_warm_step(bad, dtype, momentum):
    # The first step looks at every tensor afresh; later steps re-check a
    # new gradient in the snapshot (momentum._torch_keys), which once let a
    # misaligned one through.  Both must refuse the same way, and keep
    # refusing on the next step.
    install, error, match = BAD_GRADS[bad]
    errors = []
    for warm_steps in (0, 3):
        a, b, opt = _two_groups(SGD, dtype, momentum, (0.1, 0.2), warm_steps)
        install(a, b, opt, dtype)
        errors.append(_refused(opt, a, b))
        assert _refused(opt, a, b) == errors[-1], "the next step did not refuse alike"
    first, warm = errors
    assert first[0] is error and re.search(match, first[1]), first
    assert first[1].startswith("SGD.step(): ") and "parameter 1" in first[1], first
    assert warm == first


def _values(t: torch.Tensor) -> torch.Tensor:
    """``t``'s values as a plain dense tensor (a sparse one densified, a
    TwoTensor as its first half: torch's arithmetic keeps both halves alike)."""
    t = t.detach()
    if type(t).__name__ == "TwoTensor":
        t = t.a
    t = t.to_dense()
    # torch.equal has no complex32 kernel: compare its real view
    return torch.view_as_real(t) if t.dtype == torch.complex32 else t


@pytest.mark.parametrize("bad, dtype, momentum", _bad_grad_cases(STEPPED, (0.0, 0.5)))
def test_bad_new_grad_torch_steps_is_stepped_as_torch_on_a_first_and_a_warm_step(
        bad, dtype, momentum):
    # What the kernels cannot step in place but torch.optim.SGD steps is
    # stepped with torch's arithmetic, on a first step as after warm steps
    # (the snapshot must not take the new gradient for one the kernels can
    # step), with one warning.  Every value and operation is exact (lr 0.5
    # and 0.25, momentum 0.5, gradients of small integers), so ours and
    # torch's agree to the bit, whatever either fuses.
    install, _, reason = BAD_GRADS[bad]
    for warm_steps in (0, 3):
        runs = []
        for cls in (SGD, torch.optim.SGD):
            a, b, opt = _two_groups(cls, dtype, momentum, (0.5, 0.25), warm_steps)
            install(a, b, opt, dtype)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                opt.step()
            runs.append(([a, b, *(opt.state[p]["momentum_buffer"] for p in (a, b)
                                  if p in opt.state)], fallback_warnings(caught)))
        (ours, said), (theirs, _) = runs
        assert len(said) == 1 and re.search(reason, said[0]), said
        for mine, torchs in zip(ours, theirs, strict=True):
            assert (mine.dtype, mine.layout, mine.stride() if mine.layout == torch.strided
                    else None) == (torchs.dtype, torchs.layout, torchs.stride()
                                   if torchs.layout == torch.strided else None)
            assert torch.equal(_values(mine), _values(torchs)), (warm_steps, mine, torchs)


# Bad gradients of a complex32 parameter, which torch's arithmetic steps: the
# snapshot compares only which tensors such a parameter has, so each step
# must check them again.  (name: install, error, message; as BAD_GRADS)
BAD_GRADS_OF_COMPLEX32 = {
    "other shape": (_swapped_in(lambda dt: torch.ones(2, 8, dtype=TORCH_ONLY)), ValueError,
                    r"its grad has shape \(2, 8\)"),
    "broadcastable shape": (_swapped_in(lambda dt: torch.ones(4, dtype=TORCH_ONLY)),
                            ValueError, r"its grad has shape \(4,\)"),
    "no memory": (_assigned(lambda a, b, opt, dt: _no_memory(TORCH_ONLY)), TypeError,
                  "its grad has no memory"),
    # (no grad dtype is refused as one that cannot be cast: every one casts
    # to a complex parameter's; BAD_GRADS has that case)
    # a is stepped by the kernels, after torch's arithmetic has stepped b
    "aliases parameter 0": (
        _assigned(lambda a, b, opt, dt: a.data.view(-1).view(TORCH_ONLY)[:16].view(SHAPE)),
        ValueError, r"parameter 0 .* and the grad of parameter 1 .* overlap in memory"),
}


@pytest.mark.filterwarnings("ignore:momentum.torch.SGD:RuntimeWarning")
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("bad", BAD_GRADS_OF_COMPLEX32)
def test_bad_new_grad_of_a_param_torch_steps_is_refused_alike_on_a_first_and_a_warm_step(
        bad, momentum):
    install, error, match = BAD_GRADS_OF_COMPLEX32[bad]
    errors = []
    for warm_steps in (0, 3):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            a, b, opt = _two_groups(SGD, torch.float32, momentum, (0.1, 0.2), warm_steps,
                                    TORCH_ONLY)
        assert bool(fallback_warnings(caught)) == bool(warm_steps)  # b: torch's arithmetic
        install(a, b, opt, None)
        errors.append(_refused(opt, a, b))
        assert _refused(opt, a, b) == errors[-1], "the next step did not refuse alike"
    first, warm = errors
    assert first[0] is error and re.search(match, first[1]), first
    assert warm == first


@pytest.mark.parametrize("order", ["kernel first", "torch first"])
def test_kernel_tensor_sharing_memory_with_one_torch_steps_is_refused(order):
    # b (float32: the kernels) reads a (complex32: torch's arithmetic) as its
    # gradient's memory.  The kernels run after torch's arithmetic, so with b
    # first they would read a already stepped, where torch.optim.SGD reads it
    # before: refused, as any overlap of a tensor the kernels step.
    a = torch.nn.Parameter(torch.ones(4, dtype=TORCH_ONLY))
    b = torch.nn.Parameter(torch.ones(4))
    a.grad = torch.ones(4, dtype=TORCH_ONLY)
    b.grad = a.data.view(torch.float32)
    params = [b, a] if order == "kernel first" else [a, b]
    opt = SGD(params, lr=0.5)
    names = ["the grad of parameter 0 (param_groups[0]['params'][0]) and parameter 1 "
             "(param_groups[0]['params'][1])",
             "parameter 0 (param_groups[0]['params'][0]) and the grad of parameter 1 "
             "(param_groups[0]['params'][1])"]
    with pytest.warns(RuntimeWarning, match="dtype torch.complex32"):
        with pytest.raises(ValueError, match=re.escape(
                f"SGD.step(): {names[order == 'torch first']} overlap in memory")):
            opt.step()
    assert torch.equal(_values(a), _values(torch.ones(4, dtype=TORCH_ONLY)))
    assert torch.equal(b.detach(), torch.ones(4))


def test_slices_sharing_no_byte_with_a_kernel_tensor_are_stepped_as_torch():
    # Columns 0-1 of a block (a slice: torch's arithmetic) and row 1's
    # columns 2-3 (dense: the kernels) lie within each other's span but share
    # no byte: stepped, as torch.optim.SGD steps them.  So are two tensors
    # that torch's arithmetic steps sharing memory: it steps them in torch's
    # order, to torch's result.
    runs = []
    for cls in (SGD, torch.optim.SGD):
        block = torch.arange(16.0).view(4, 4)
        a = torch.nn.Parameter(block[:, :2])
        b = torch.nn.Parameter(block[1, 2:])
        c = torch.nn.Parameter(torch.arange(4.0).to(TORCH_ONLY))
        a.grad, b.grad, c.grad = torch.ones(4, 2), torch.ones(2), c.data  # c's grad is c
        opt = cls([a, b, c], lr=0.5, momentum=0.5)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                opt.step()
        runs.append(([block.clone(), _values(c).clone()], fallback_warnings(caught)))
    (ours, said), (theirs, _) = runs
    assert len(said) == 2, said  # a slice; a complex32 parameter
    assert all(torch.equal(x, y) for x, y in zip(ours, theirs, strict=True))


def test_integer_buffer_torch_makes_is_refused_before_anything_is_written():
    # An integer gradient (torch allows one when grad_dtype is None) is
    # stepped with torch's arithmetic, whose first step makes the buffer its
    # integer copy; the next step would multiply it by the momentum in place,
    # which torch.optim.SGD refuses with a RuntimeError once it has stepped
    # the parameters before it.  Ours refuses it before anything is written.
    for cls in (SGD, torch.optim.SGD):
        a, b = torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(4))
        b.grad_dtype = None
        opt = cls([a, b], lr=0.5, momentum=0.5)
        a.grad, b.grad = torch.ones(4), torch.ones(4, dtype=torch.int64)
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            opt.step()
        assert opt.state[b]["momentum_buffer"].dtype == torch.int64
        if cls is torch.optim.SGD:
            with pytest.raises(RuntimeError, match="can't be cast"):
                opt.step()
            assert torch.equal(a.detach(), torch.full((4,), -0.25))  # written
        else:
            with pytest.raises(TypeError, match=re.escape(
                    "SGD.step(): parameter 1 (param_groups[0]['params'][1]): its "
                    "momentum_buffer has dtype torch.int64; a momentum buffer must be "
                    "floating point or complex")):
                opt.step()
            assert torch.equal(a.detach(), torch.full((4,), 0.5))   # as after step 1
            assert torch.equal(b.detach(), torch.full((4,), 0.5))


@pytest.mark.parametrize("hooked", [False, True])
def test_fallback_warning_points_at_the_call_of_step(hooked):
    p = torch.nn.Parameter(torch.ones(4, dtype=TORCH_ONLY))
    opt = SGD([p], lr=0.5)
    if hooked:  # steps then take torch's profiled, hooked path
        opt.register_step_pre_hook(lambda *args: None)
    p.grad = torch.ones(4, dtype=TORCH_ONLY)
    with pytest.warns(RuntimeWarning, match="dtype torch.complex32") as record:
        opt.step()
    assert [w.filename for w in record] == [__file__]


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_empty_parameter_steps_as_torch(momentum):
    # An empty tensor's memory may be NULL: its buffer, once made, must not
    # be taken for a missing one.
    runs = []
    for cls in (SGD, torch.optim.SGD):
        empty, full = torch.nn.Parameter(torch.ones(0)), torch.nn.Parameter(torch.ones(3))
        opt = cls([empty, full], lr=0.5, momentum=momentum)
        for step in range(3):
            empty.grad, full.grad = torch.ones(0), torch.full((3,), step + 1.0)
            opt.step()
        runs.append((full.detach().clone(), empty in opt.state))
    assert runs[0][0].shape == (3,) and torch.equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]


def _as_complex64(t):
    t.data = t.data.view(torch.complex64)     # same address, same length


def _as_other_shape(t):
    t.data = t.data.view(1, 4)                # same address, length and dtype


def _to_freed_memory_of_another_dtype(t):
    n = t.numel()
    t.data = torch.empty(0)                   # frees the old memory...
    t.data = torch.full((n,), 3, dtype=torch.complex64)  # ...which this may reuse


# (A parameter's data must stay floating point or complex: torch refuses int64.)
REVIEWED = {
    "as complex64": (_as_complex64, "torch.complex64"),
    "to freed memory of another dtype": (_to_freed_memory_of_another_dtype, "torch.complex64"),
}
WHICH = ["param", "grad", "buffer"]


def _warm(cls=SGD, **extra) -> tuple[torch.nn.Parameter, torch.optim.Optimizer]:
    """A float64 parameter after 3 steps of ``cls`` (exact values: lr and
    momentum 0.5, gradients of ones)."""
    w = torch.nn.Parameter(torch.arange(4.0, dtype=torch.float64))
    opt = cls([w], lr=0.5, momentum=0.5, **extra)
    for _ in range(3):
        if w.grad is None or not extra.get("flat"):
            w.grad = torch.ones(4, dtype=torch.float64)
        opt.step()
    return w, opt


def _tensors(w: torch.nn.Parameter, opt: SGD) -> dict[str, torch.Tensor]:
    return {"param": w, "grad": w.grad, "buffer": opt.state[w]["momentum_buffer"]}


def _refused_writing_nothing(w, opt, error: type, match: str) -> None:
    kept = {name: t.detach().clone() for name, t in _tensors(w, opt).items()}
    for _ in range(2):  # and the next step refuses alike
        with pytest.raises(error, match=match):
            opt.step()
        for name, t in _tensors(w, opt).items():
            assert torch.equal(t.detach(), kept[name]), name


# A per-tensor parameter of another dtype is stepped (test_param_viewed_as_...).
@pytest.mark.parametrize("flat, which", [(flat, which) for flat in (False, True)
                                         for which in WHICH if flat or which != "param"])
@pytest.mark.parametrize("how", REVIEWED)
def test_tensor_viewed_as_another_dtype_at_the_same_address_is_refused(flat, which, how):
    # Between steps a tensor may come to lie at its old address with another
    # dtype: the step refuses it, writing nothing, rather than read the
    # memory as the old dtype.  (Per tensor: a complex grad or buffer of a
    # real parameter, which torch's arithmetic cannot step either.)
    relay, match = REVIEWED[how]
    w, opt = _warm(flat=flat)
    relay(_tensors(w, opt)[which])
    _refused_writing_nothing(w, opt, TypeError, match)


@pytest.mark.parametrize("how", REVIEWED)
def test_param_viewed_as_another_dtype_at_the_same_address_is_stepped_as_torch(how):
    # A complex64 parameter with float64 grad and buffer: torch.optim.SGD
    # steps it (complex = real + real), and so does torch's arithmetic here,
    # warned, rather than the kernels reading the memory as float64.
    runs = []
    for cls in (SGD, torch.optim.SGD):
        w, opt = _warm(cls)
        REVIEWED[how][0](w)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            opt.step()
        runs.append(({name: t.detach().clone() for name, t in _tensors(w, opt).items()},
                     fallback_warnings(caught)))
    (ours, said), (theirs, _) = runs
    assert len(said) == 1 and "a torch.float64 tensor beside a torch.complex64 parameter" \
        in said[0], said
    for name in WHICH:
        assert ours[name].dtype == theirs[name].dtype and torch.equal(ours[name], theirs[name])


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("which", WHICH)
def test_tensor_viewed_as_another_shape_in_place_is_refused(flat, which):
    # A view of the same memory with the same length and another shape: a
    # grad or buffer whose shape differs from its parameter's, refused before
    # anything is written.  (torch.optim.SGD steps a parameter so re-viewed,
    # broadcasting its gradient into it, and raises for a grad or buffer so
    # re-viewed only once it has written the buffer.)
    w, opt = _warm(flat=flat)
    _as_other_shape(_tensors(w, opt)[which])
    _refused_writing_nothing(w, opt, ValueError, r"has shape \((1, )?4,?\) but the "
                                                 r"parameter has shape \((1, )?4,?\)")


def test_nesterov_is_ignored_when_momentum_is_set_to_zero_later():
    results = []
    for cls in (SGD, torch.optim.SGD):
        w = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
        opt = cls([w], lr=0.1, momentum=0.9, nesterov=True)
        for step in range(4):
            if step == 2:
                opt.param_groups[0]["momentum"] = 0.0
            w.grad = torch.full((4,), float(step + 1), dtype=torch.float64)
            opt.step()
        results.append(w.detach().clone())
    assert_same(*results, RTOL[torch.float64])


class _Reports64(torch.nn.Parameter):
    """A parameter whose __torch_function__ says float64 of float32 memory."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **(kwargs or {}))
        return torch.float64 if out is torch.float32 else out


class _Plain(torch.Tensor):
    """A tensor subclass with nothing changed."""


def test_tensor_subclass_grads_are_stepped_with_torchs_arithmetic_every_step():
    # A subclass's answers (dtype, address...) may come from Python code, so
    # the kernels never step its tensors: every step, new subclass gradient
    # or not, is torch's own arithmetic, as torch.optim.SGD's, to the bit.
    runs = []
    for cls in (SGD, torch.optim.SGD):
        p = torch.nn.Parameter(torch.ones(4))
        opt = cls([p], lr=0.5, momentum=0.9)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for step in range(4):
                p.grad = torch.full((4,), step + 1.0).as_subclass(_Plain)
                opt.step()
        runs.append((p.detach().clone(), opt.state[p]["momentum_buffer"].clone(),
                     fallback_warnings(caught)))
    (p, buf, said), (p_torch, buf_torch, _) = runs
    assert said == ["momentum.torch.SGD: a tensor subclass (_Plain): stepped with "
                    "PyTorch's own SGD arithmetic, not the kernels"]
    assert torch.equal(p, p_torch) and torch.equal(buf, buf_torch)


def test_subclass_that_misreports_its_dtype_is_stepped_by_torch_not_misread():
    # float32 memory that says float64: reading it as float64 would run past
    # its end.  The kernels never see it; torch's arithmetic steps it as
    # torch.optim.SGD does.
    runs = []
    for cls in (SGD, torch.optim.SGD):
        p = _Reports64(torch.ones(4))
        opt = cls([p], lr=0.5, momentum=0.9)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for step in range(3):
                p.grad = _Reports64(torch.full((4,), step + 1.0), requires_grad=False)
                opt.step()
        with torch._C.DisableTorchFunctionSubclass():
            runs.append((p.detach().clone(), opt.state[p]["momentum_buffer"].clone(),
                         fallback_warnings(caught)))
    (p, buf, said), (p_torch, buf_torch, _) = runs
    assert len(said) == 1 and "a tensor subclass (_Reports64)" in said[0], said
    assert p.dtype == buf.dtype == torch.float32
    assert torch.equal(p, p_torch) and torch.equal(buf, buf_torch)
    assert not torch.equal(p, torch.ones(4))
