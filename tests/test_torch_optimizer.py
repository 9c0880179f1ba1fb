"""momentum.torch.SGD against torch.optim.SGD: same training, same state, same errors."""
from __future__ import annotations

import copy
import pickle
import re
import subprocess
import sys
from collections.abc import Callable

import pytest

torch = pytest.importorskip("torch")

from momentum.torch import SGD  # noqa: E402
from torch_helpers import (  # noqa: E402
    assert_same, flat_params, make_data, make_model, mse, sgd_flag_combinations)

STEPS = 100
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


@pytest.mark.parametrize("flat", [False, True])
def test_repr_is_torchs_listing_under_our_own_name(flat):
    groups = lambda: [{"params": [torch.nn.Parameter(torch.ones(3))]},
                      {"params": [torch.nn.Parameter(torch.ones(2))], "lr": 0.2, "nesterov": True}]
    ours = SGD(groups(), lr=0.1, momentum=0.9, weight_decay=1e-3, flat=flat)
    theirs = torch.optim.SGD(groups(), lr=0.1, momentum=0.9, weight_decay=1e-3)
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


def _second_param_breaks(param: torch.Tensor, grad: torch.Tensor, error: type, match: str):
    """A bad second parameter raises naming index 1, and nothing is written."""
    good = torch.nn.Parameter(torch.ones(4))
    good.grad = torch.ones(4)
    param.grad = grad
    opt = SGD([good, param], lr=0.1, momentum=0.9)
    with pytest.raises(error, match=match):
        opt.step()
    assert torch.equal(good.detach(), torch.ones(4))
    assert len(opt.state[good]) == 0


def test_float16_param_is_a_type_error():
    p = torch.nn.Parameter(torch.ones(4, dtype=torch.float16))
    _second_param_breaks(p, torch.ones(4, dtype=torch.float16), TypeError,
                         r"parameter 1 .*float16")


def test_grad_dtype_differs_is_a_type_error():
    p = torch.nn.Parameter(torch.ones(4))
    p.grad_dtype = None  # else torch itself refuses the float64 grad
    _second_param_breaks(p, torch.ones(4, dtype=torch.float64), TypeError,
                         r"parameter 1 .*grad has dtype torch.float64")


def test_sparse_grad_is_a_value_error():
    p = torch.nn.Parameter(torch.ones(4))
    _second_param_breaks(p, torch.ones(4).to_sparse(), ValueError, r"parameter 1 .*sparse")


def test_meta_device_is_a_value_error():
    p = torch.nn.Parameter(torch.ones(4, device="meta"))
    _second_param_breaks(p, torch.ones(4, device="meta"), ValueError,
                         r"parameter 1 .*device meta")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_is_a_value_error():
    p = torch.nn.Parameter(torch.ones(4, device="cuda"))
    _second_param_breaks(p, torch.ones(4, device="cuda"), ValueError,
                         r"parameter 1 .*device cuda")


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


def test_step_hooks_and_profiler_see_every_step():
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    opt = SGD([p], lr=0.1, momentum=0.9)
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
    assert torch.allclose(calls[2][2], torch.full((3,), 0.9))  # after: 1 - 0.1 * 1
    with torch.profiler.profile() as prof:
        opt.step()
    assert "Optimizer.step#SGD.step" in {e.name for e in prof.events()}


def _transpose(t):
    t.data = t.data.t()


RELAID = {
    "param": lambda w, opt: _transpose(w),
    "grad": lambda w, opt: _transpose(w.grad),
    "buffer": lambda w, opt: _transpose(opt.state[w]["momentum_buffer"]),
}


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("which", RELAID)
def test_tensor_relaid_at_the_same_address_is_refused_not_stepped_stale(flat, which):
    # ``t.data = t.data.t()`` keeps t's address but not its layout: a cached
    # view would step the transpose.  The step refuses it, as it refuses any
    # non-contiguous tensor, and writes nothing.
    w = torch.nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64))
    opt = SGD([w], lr=0.1, momentum=0.9, flat=flat)
    w.grad = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    opt.step()
    opt.step()
    RELAID[which](w, opt)
    before = (w.detach().clone(), opt.state[w]["momentum_buffer"].clone())
    with pytest.raises(ValueError, match="not contiguous"):
        opt.step()
    assert torch.equal(w.detach(), before[0])
    assert torch.equal(opt.state[w]["momentum_buffer"], before[1])


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
    assert ours.param_groups[0].keys() == theirs.param_groups[0].keys()
    with pytest.raises(ValueError, match="differentiable=True"):
        SGD([p], lr=0.1, differentiable=True)
    with pytest.raises(RuntimeError, match="cannot be `True` together"):
        SGD([p], lr=0.1, fused=True, foreach=True)


def test_flat_accepts_an_empty_param_group():
    p = torch.nn.Parameter(torch.ones(3))
    opt = SGD([{"params": []}, {"params": [p]}], lr=0.1, flat=True)
    p.grad = torch.ones(3)
    opt.step()
    assert torch.allclose(p.detach(), torch.full((3,), 0.9))


def _count_full_path_calls(monkeypatch) -> list[int]:
    """Count the steps that go through foreach.sgd_groups (the full path)."""
    import momentum.foreach
    calls = [0]
    full_path = momentum.foreach.sgd_groups

    def counted(groups):
        calls[0] += 1
        return full_path(groups)
    monkeypatch.setattr(momentum.foreach, "sgd_groups", counted)
    return calls


def test_warm_steps_run_from_the_snapshot_and_match_torch(monkeypatch):
    # After the first steps (which make and adopt the buffers), a training
    # loop's steps -- new gradients from backward, or the same ones -- run
    # from the addresses the snapshot checked, not through foreach.
    calls = _count_full_path_calls(monkeypatch)
    results = []
    for cls in (SGD, torch.optim.SGD):
        model = make_model(torch.float64)
        groups = [{"params": list(model[0].parameters())},
                  {"params": list(model[2].parameters()), "lr": 0.02, "nesterov": True}]
        opt = cls(groups, lr=0.05, momentum=0.9, weight_decay=1e-3)
        loss = make_loss(model, torch.float64)
        train(model, opt, loss, 2)
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


# name: (install a bad gradient on parameter 1 (b), whose group-0 neighbour
# is a; error type; what the message must say), every bad array of
# test_bad_input that a torch gradient can be.  A read-only gradient is not
# bad (it is only read), nor is one sharing memory with another gradient;
# a gradient on another device or without a strided layout is refused by
# torch itself on assignment.
BAD_GRADS = {
    "other float dtype": (_assigned(lambda a, b, opt, dt: torch.ones(SHAPE, dtype=_other_float(dt))),
                          TypeError, "its grad has dtype"),
    "float16": (_assigned(lambda a, b, opt, dt: torch.ones(SHAPE, dtype=torch.float16)),
                TypeError, "its grad has dtype torch.float16"),
    "bfloat16": (_assigned(lambda a, b, opt, dt: torch.ones(SHAPE, dtype=torch.bfloat16)),
                 TypeError, "its grad has dtype torch.bfloat16"),
    "complex64": (_assigned(lambda a, b, opt, dt: torch.ones(SHAPE, dtype=torch.complex64)),
                  TypeError, "its grad has dtype torch.complex64"),
    "int64": (_assigned(lambda a, b, opt, dt: torch.ones(SHAPE, dtype=torch.int64)),
              TypeError, "its grad has dtype torch.int64"),
    "other shape": (_swapped_in(lambda dt: torch.ones(2, 8, dtype=dt)), ValueError,
                    r"its grad has shape \(2, 8\)"),
    "other size": (_swapped_in(lambda dt: torch.ones(15, dtype=dt)), ValueError,
                   r"its grad has shape \(15,\)"),
    "transposed": (_assigned(lambda a, b, opt, dt: torch.ones(SHAPE, dtype=dt).t()),
                   ValueError, "its grad is not contiguous"),
    "strided": (_assigned(lambda a, b, opt, dt: torch.ones(4, 8, dtype=dt)[:, ::2]),
                ValueError, "its grad is not contiguous"),
    "misaligned by a byte": (_assigned(lambda a, b, opt, dt: _ones_at(1, dt)),
                             ValueError, "grad of parameter 1 .* not aligned"),
    "misaligned by half an element": (
        _assigned(lambda a, b, opt, dt: _ones_at(dt.itemsize // 2, dt)),
        ValueError, "grad of parameter 1 .* not aligned"),
    "misaligned memory swapped in": (_swapped_in(lambda dt: _ones_at(1, dt)),
                                     ValueError, "grad of parameter 1 .* not aligned"),
    "lazily negated": (_assigned(lambda a, b, opt, dt: torch._neg_view(torch.ones(SHAPE, dtype=dt))),
                       ValueError, "its grad is a lazily negated view"),
    "sparse": (_assigned(lambda a, b, opt, dt: torch.ones(SHAPE, dtype=dt).to_sparse()),
               ValueError, "its grad has layout torch.sparse_coo"),
    "no memory (a wrapper subclass)": (_assigned(lambda a, b, opt, dt: _two_tensor(dt)),
                                       TypeError, r"its grad \(TwoTensor\) has no memory"),
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


def _bad_grad_cases() -> list:
    return [pytest.param(name, dtype, momentum, id=f"{name}-{str(dtype)[6:]}-momentum={momentum}")
            for name in BAD_GRADS for dtype in (torch.float32, torch.float64)
            for momentum in (0.0, 0.9) if momentum or name not in USES_BUFFERS]


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


@pytest.mark.parametrize("bad, dtype, momentum", _bad_grad_cases())
def test_bad_new_grad_is_refused_alike_on_a_first_and_a_warm_step(bad, dtype, momentum):
    # The first step checks every tensor through the full path; later steps
    # re-check a new gradient in the snapshot (momentum._torch_keys), which
    # once let a misaligned one through.  Both must refuse the same way,
    # and keep refusing on the next step.
    install, error, match = BAD_GRADS[bad]
    errors = []
    for warm_steps in (0, 3):
        # Parameter 0 lies in a larger block, so that a gradient can overlap it in part.
        block = torch.ones(2 * SHAPE[0] * SHAPE[1], dtype=dtype)
        a = torch.nn.Parameter(block[:SHAPE[0] * SHAPE[1]].view(SHAPE))
        b = torch.nn.Parameter(torch.full(SHAPE, 2.0, dtype=dtype))
        b.grad_dtype = None  # else torch itself refuses a gradient of another dtype
        opt = SGD([{"params": [a]}, {"params": [b], "lr": 0.2}], lr=0.1, momentum=momentum)
        for _ in range(warm_steps):
            a.grad, b.grad = torch.ones(SHAPE, dtype=dtype), torch.ones(SHAPE, dtype=dtype)
            opt.step()
        a.grad = torch.ones(SHAPE, dtype=dtype)
        install(a, b, opt, dtype)
        errors.append(_refused(opt, a, b))
        assert _refused(opt, a, b) == errors[-1], "the next step did not refuse alike"
    first, warm = errors
    assert first[0] is error and re.search(match, first[1]), first
    assert first[1].startswith("SGD.step(): ") and "parameter 1" in first[1], first
    assert warm == first


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


def _warm(flat: bool) -> tuple[torch.nn.Parameter, SGD]:
    w = torch.nn.Parameter(torch.arange(4.0, dtype=torch.float64))
    opt = SGD([w], lr=0.1, momentum=0.9, flat=flat)
    for _ in range(3):
        if w.grad is None or not flat:
            w.grad = torch.ones(4, dtype=torch.float64)
        opt.step()
    return w, opt


def _tensors(w: torch.nn.Parameter, opt: SGD) -> dict[str, torch.Tensor]:
    return {"param": w, "grad": w.grad, "buffer": opt.state[w]["momentum_buffer"]}


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("which", WHICH)
@pytest.mark.parametrize("how", REVIEWED)
def test_tensor_viewed_as_another_dtype_at_the_same_address_is_refused(flat, which, how):
    # Between steps a tensor may come to lie at its old address with another
    # dtype: the step refuses it, writing nothing, rather than read the
    # memory as the old dtype.
    relay, match = REVIEWED[how]
    w, opt = _warm(flat)
    relay(_tensors(w, opt)[which])
    kept = {name: t.detach().clone() for name, t in _tensors(w, opt).items()}
    with pytest.raises(TypeError, match=match):
        opt.step()
    for name, t in _tensors(w, opt).items():
        assert torch.equal(t.detach(), kept[name]), name


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("which", WHICH)
def test_tensor_viewed_as_another_shape_in_place_is_stepped_as_its_memory_lies(flat, which):
    # A contiguous view of the same memory with the same length (the shape is
    # not checked each step, see Snapshot.moved): stepped element for
    # element, as the same tensors not re-viewed are.
    results = []
    for relay in (lambda t: None, _as_other_shape):
        w, opt = _warm(flat)
        relay(_tensors(w, opt)[which])
        opt.step()
        results.append({name: t.detach().reshape(-1).clone()
                        for name, t in _tensors(w, opt).items()})
    for name in WHICH:
        assert torch.equal(results[0][name], results[1][name]), name


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


def test_tensor_subclasses_take_the_full_path_every_step(monkeypatch):
    # A subclass's answers (dtype, address...) may come from Python code, so
    # its tensors never run from a snapshot: every step takes the full path,
    # which reads their memory through NumPy.
    calls = _count_full_path_calls(monkeypatch)
    results = []
    for cls in (SGD, torch.optim.SGD):
        p = torch.nn.Parameter(torch.ones(4))
        opt = cls([p], lr=0.5, momentum=0.9)
        for step in range(4):
            p.grad = torch.full((4,), step + 1.0).as_subclass(_Plain)
            opt.step()
        results.append(p.detach().clone())
    assert calls[0] == 4
    torch.testing.assert_close(*results, rtol=1e-6, atol=0)


def test_subclass_that_misreports_its_dtype_is_refused_not_misread():
    # float32 memory that says float64: reading it as float64 would run past
    # its end.  The step refuses the mismatch it sees, writing nothing.
    p = _Reports64(torch.ones(4))
    opt = SGD([p], lr=0.5, momentum=0.9)
    p.grad = _Reports64(torch.ones(4), requires_grad=False)
    with pytest.raises(TypeError, match="momentum_buffer has dtype torch.float32 but "
                                        "the parameter has dtype torch.float64"):
        opt.step()
    assert torch.equal(p.detach().as_subclass(torch.Tensor), torch.ones(4))
    assert not opt.state
