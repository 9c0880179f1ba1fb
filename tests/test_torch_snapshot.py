"""momentum.torch.Adam, AdamW and Lion step through the snapshot that
momentum.torch.SGD keeps (momentum._torch_keys): a warm step re-checks the
recorded tensors in C instead of looking at them afresh.  These tests change
what the snapshot recorded between warm steps, in every way a user can, and
ask that ours then steps what torch's optimizer (a plain-torch Lion below)
steps: the new state, the new step count, the new memory."""
from __future__ import annotations

import copy
import pickle
import warnings

import pytest

torch = pytest.importorskip("torch")

import momentum.torch as mt  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


class TorchLion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, lion-pytorch's update) in plain torch: the reference."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p)
                exp_avg = state["exp_avg"]
                p.mul_(1 - group["lr"] * group["weight_decay"])
                update = (exp_avg * beta1 + p.grad * (1 - beta1)).sign_()
                p.add_(update, alpha=-group["lr"])
                exp_avg.mul_(beta2).add_(p.grad, alpha=1 - beta2)


KW = dict(lr=0.05, weight_decay=0.1)
# (ours, the reference): every optimizer on the engine
PAIRS = {
    "Adam": (lambda ps: mt.Adam(ps, **KW), lambda ps: torch.optim.Adam(ps, **KW)),
    "Adam-amsgrad": (lambda ps: mt.Adam(ps, amsgrad=True, **KW),
                     lambda ps: torch.optim.Adam(ps, amsgrad=True, **KW)),
    "AdamW": (lambda ps: mt.AdamW(ps, **KW), lambda ps: torch.optim.AdamW(ps, **KW)),
    "Lion": (lambda ps: mt.Lion(ps, **KW), lambda ps: TorchLion(ps, **KW)),
}
ADAMS = [name for name in PAIRS if name.startswith("Adam")]
SHAPES = [(5, 3), (17,), (4, 2, 3)]


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*s, generator=g, dtype=torch.float64))
            for s in SHAPES]


def _grads(step):
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(*s, generator=g, dtype=torch.float64) for s in SHAPES]


def _run(make, edit, steps=6, at=3):
    """Step ``make``'s optimizer ``steps`` times, calling ``edit(opt, params)``
    before step ``at``; the parameters and state at the end."""
    params = _params()
    opt = make(params)
    for k in range(steps):
        for p, g in zip(params, _grads(k)):
            p.grad = g
        if k == at:
            edit(opt, params)
        opt.step()
    return params, opt


def _same(ours, theirs):
    (pa, oa), (pb, ob) = ours, theirs
    for p, q in zip(pa, pb):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-12, atol=1e-14)
    for p, q in zip(pa, pb):
        sa, sb = oa.state[p], ob.state[q]
        assert set(sa) == set(sb)
        for key in sb:
            torch.testing.assert_close(sa[key], sb[key], rtol=1e-12, atol=1e-14)


def _both(name, edit):
    ours, theirs = PAIRS[name]
    _same(_run(ours, edit), _run(theirs, edit))


def _scaled_state(opt, p, scale=2.0, steps=5):
    """A new per-parameter state dict: p's, moments scaled, step count moved."""
    new = {}
    for key, value in opt.state[p].items():
        new[key] = value + steps if key == "step" else value * scale
    return new


@pytest.mark.parametrize("name", PAIRS)
def test_a_state_replaced_through_dict_setitem_is_stepped(name):
    """dict.__setitem__ goes around any __setitem__ an optimizer could
    watch: the snapshot sees the state dict's version change."""
    def edit(opt, params):
        dict.__setitem__(opt.state, params[1], _scaled_state(opt, params[1]))
    _both(name, edit)


@pytest.mark.parametrize("name", PAIRS)
def test_a_state_replaced_through_dict_update_is_stepped(name):
    def edit(opt, params):
        dict.update(opt.state, {params[0]: _scaled_state(opt, params[0], 0.5, 2)})
    _both(name, edit)


@pytest.mark.parametrize("name", PAIRS)
def test_a_state_entry_replaced_or_given_new_memory_is_stepped(name):
    """One moment replaced by another tensor, another given new memory
    through .data (same tensor object, other address)."""
    def edit(opt, params):
        state = opt.state[params[2]]
        state["exp_avg"] = state["exp_avg"] * 3
        if "exp_avg_sq" in state:
            state["exp_avg_sq"].data = state["exp_avg_sq"].data * 0.25
    _both(name, edit)


@pytest.mark.parametrize("name", ADAMS)
def test_a_step_count_edited_in_place_or_replaced_is_the_one_stepped_with(name):
    """The kernels read each step count from its tensor's memory: an
    in-place fill_ (same memory) and a new tensor both change the bias
    corrections as torch's."""
    def edit(opt, params):
        opt.state[params[0]]["step"].fill_(40.0)
        opt.state[params[1]]["step"] = torch.tensor(7.0)
        opt.state[params[2]]["step"].data = torch.tensor(2.0)
    _both(name, edit)


@pytest.mark.parametrize("name", ADAMS)
def test_step_counts_are_counted_on_in_place_as_torch_counts_them(name):
    """After every step each parameter's step tensor is the same object,
    holding the number of steps it took (a parameter without a gradient
    on a step does not count it)."""
    ours, _ = PAIRS[name]
    params = _params()
    opt = ours(params)
    tensors = None
    for k in range(5):
        for i, (p, g) in enumerate(zip(params, _grads(k))):
            p.grad = None if (i == 1 and k in (1, 2)) else g
        opt.step()
        if tensors is None:
            tensors = [opt.state[p]["step"] for p in params]
    assert [opt.state[p]["step"] for p in params] == tensors   # same objects
    assert [t.item() for t in tensors] == [5.0, 3.0, 5.0]
    assert all(t.dtype == torch.float32 and t.dim() == 0 for t in tensors)


@pytest.mark.parametrize("name", ADAMS)
@pytest.mark.parametrize("count", [2.5, float("inf"), 2.0 ** 60])
def test_a_step_count_no_kernel_takes_is_stepped_with_torchs_arithmetic(name, count):
    """A step count that is no whole number a double counts exactly (no
    kernel count) after warm steps: torch's arithmetic steps that
    parameter, with the warning."""
    def edit(opt, params):
        opt.state[params[0]]["step"].fill_(count)
    ours, theirs = PAIRS[name]
    with pytest.warns(RuntimeWarning, match="whole number"):
        mine = _run(ours, edit)
    _same(mine, _run(theirs, edit))


@pytest.mark.parametrize("name", PAIRS)
def test_a_gradient_gone_for_a_step_and_back(name):
    def edit(opt, params):
        params[1].grad = None
    _both(name, edit)


@pytest.mark.parametrize("name", PAIRS)
def test_a_parameter_replaced_in_its_group_and_a_group_added(name):
    def edit(opt, params):
        fresh = torch.nn.Parameter(params[0].detach() * 2)
        fresh.grad = params[0].grad
        state = opt.state.pop(params[0])
        opt.state[fresh] = state
        opt.param_groups[0]["params"][0] = fresh
        params[0] = fresh
        extra = torch.nn.Parameter(torch.ones(6, dtype=torch.float64))
        extra.grad = torch.full((6,), 0.5, dtype=torch.float64)
        opt.add_param_group({"params": [extra], "lr": 0.01})
    ours, theirs = PAIRS[name]
    mine, ref = _run(ours, edit), _run(theirs, edit)
    _same(mine, ref)
    torch.testing.assert_close(mine[1].param_groups[1]["params"][0].detach(),
                               ref[1].param_groups[1]["params"][0].detach(),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", PAIRS)
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copy_made_after_warm_steps_steps_as_the_original(name, how):
    """The copy has its own tensors (its own snapshot); stepping either
    leaves the other's memory alone."""
    ours, _ = PAIRS[name]
    params = _params()
    opt = ours(params)
    for k in range(3):
        for p, g in zip(params, _grads(k)):
            p.grad = g
        opt.step()
    twin = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    twin_params = [p for g in twin.param_groups for p in g["params"]]
    for k in range(3, 6):
        for p, q, g in zip(params, twin_params, _grads(k)):
            p.grad, q.grad = g, g.clone()
        opt.step()
        twin.step()
    for p, q in zip(params, twin_params):
        assert p.data_ptr() != q.data_ptr()
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=0)
        for key in opt.state[p]:
            torch.testing.assert_close(opt.state[p][key], twin.state[q][key], rtol=0, atol=0)


def _snapshot(opt, params):
    """Copies of every parameter and state tensor, to show nothing was written."""
    return copy.deepcopy(([p.detach() for p in params], opt.state_dict()["state"]))


def _unchanged(opt, params, before):
    for p, q in zip(params, before[0]):
        assert torch.equal(p.detach(), q)
    state = opt.state_dict()["state"]
    assert state.keys() == before[1].keys()
    for i in state:
        assert state[i].keys() == before[1][i].keys()
        for key in state[i]:
            assert torch.equal(state[i][key], before[1][i][key])


def _refused(opt, params, edit, error, match):
    """``edit(opt)`` then a step: ``error`` matching ``match``, and no
    parameter, state entry or step count written."""
    edit(opt)
    before = _snapshot(opt, params)
    with pytest.raises(error, match=match):
        opt.step()
    _unchanged(opt, params, before)


def _strided():
    """A parameter of SHAPES[2] that is not dense: torch's arithmetic steps it."""
    return torch.nn.Parameter(torch.randn(4, 2, 6, dtype=torch.float64)[..., ::2])


def _warm(make, params, steps):
    opt = make(params)
    for k in range(steps):
        for p, g in zip(params, _grads(k)):
            p.grad = g
        opt.step()
    for p, g in zip(params, _grads(steps)):
        p.grad = g
    return opt


@pytest.mark.parametrize("name", PAIRS)
@pytest.mark.parametrize("kernel", [True, False], ids=["kernel param", "torch's param"])
def test_a_new_gradient_of_another_shape_after_warm_steps_writes_nothing(name, kernel):
    """Refused as on a first step, before any parameter or state is written:
    torch's arithmetic would raise only after stepping the ones before.
    Also for a parameter torch's arithmetic steps (a strided one), whose
    tensors the snapshot compares by identity only."""
    ours, _ = PAIRS[name]
    for warm in (0, 3):
        params = _params()
        if not kernel:
            params[2] = _strided()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # the strided parameter's
            def misshape(opt):
                # (torch refuses a mis-shaped ``p.grad =``; its .data is not checked)
                params[2].grad.data = torch.ones(3, dtype=torch.float64)
            _refused(_warm(ours, params, warm), params, misshape, ValueError,
                     r"the grad of parameter 2 .* has shape \(3,\)")


@pytest.mark.parametrize("name", ADAMS)
def test_a_sparse_gradient_of_a_parameter_torch_steps_writes_nothing(name):
    """torch's RuntimeError, raised before the kernels write the others."""
    ours, _ = PAIRS[name]
    params = _params()
    params[2] = _strided()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")

        def sparse(opt):
            params[2].grad = torch.randn(4, 2, 3, dtype=torch.float64).to_sparse()
        _refused(_warm(ours, params, 2), params, sparse, RuntimeError,
                 "does not support sparse gradients")


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_amsgrad_turned_on_after_warm_steps_writes_nothing(name):
    """The warm states lack max_exp_avg_sq: torch.optim raises KeyError
    midway; ours ValueError naming the parameter, before anything is
    written.  A parameter first stepped after the switch is fine."""
    ours, theirs = PAIRS[name]
    params = _params()
    _refused(_warm(ours, params, 2), params,
             lambda opt: opt.param_groups[0].update(amsgrad=True),
             ValueError, r"parameter 0 .* without 'max_exp_avg_sq'")
    with pytest.raises(KeyError):   # torch's own, for the record
        reference = _warm(theirs, _params(), 2)
        reference.param_groups[0]["amsgrad"] = True
        reference.step()


@pytest.mark.parametrize("name", ADAMS)
def test_a_step_count_shared_by_two_parameters_is_refused(name):
    """Both would be stepped with the count before the step (torch's loop
    counts it twice, the second parameter seeing the first's increment):
    ValueError naming both, nothing written."""
    ours, _ = PAIRS[name]
    params = _params()
    def share(opt):
        opt.state[params[2]]["step"] = opt.state[params[0]]["step"]
    _refused(_warm(ours, params, 2), params, share, ValueError,
             r"the step count of parameter 0 .* and the step count of parameter 2 .* overlap")


@pytest.mark.parametrize("name", ADAMS)
def test_a_step_count_of_minus_one_is_refused(name):
    """torch's step would divide by zero (ZeroDivisionError) midway."""
    ours, _ = PAIRS[name]
    params = _params()
    _refused(_warm(ours, params, 2), params,
             lambda opt: opt.state[params[1]]["step"].fill_(-1.0),
             ValueError, "parameter 1 .* step count of -1")


@pytest.mark.parametrize("name", ADAMS)
def test_a_float32_step_count_beyond_2_to_24_counts_as_torch_counts_it(name):
    """torch adds 1 to a float32 step in float32 (2**24 stays 2**24) and
    steps with that; so do the kernels."""
    def edit(opt, params):
        opt.state[params[0]]["step"].fill_(2.0 ** 24)
    ours, theirs = (mt.AdamW, torch.optim.AdamW) if name == "AdamW" else \
        (mt.Adam, torch.optim.Adam)
    kw = dict(KW, betas=(0.9, 1 - 1e-9), amsgrad=name == "Adam-amsgrad")
    mine = _run(lambda ps: ours(ps, **kw), edit)
    _same(mine, _run(lambda ps: theirs(ps, **kw), edit))
    assert mine[1].state[mine[0][0]]["step"].item() == 2.0 ** 24


@pytest.mark.parametrize("name", PAIRS)
def test_zero_grad_lets_the_old_gradients_go(name):
    """zero_grad(set_to_none=True) frees the gradients now: the snapshot
    must not hold them through the next backward pass."""
    import weakref
    ours, _ = PAIRS[name]
    params = _params()
    opt = _warm(ours, params, 2)
    opt.step()
    old = [weakref.ref(p.grad) for p in params]
    opt.zero_grad()
    assert all(ref() is None for ref in old)


@pytest.mark.parametrize("name", PAIRS)
def test_a_new_gradient_the_kernels_cannot_take_after_warm_steps_is_torchs(name):
    """A strided slice as the new gradient: torch's arithmetic steps it,
    with the warning, as on a first step."""
    def edit(opt, params):
        wide = torch.stack([params[1].grad, params[1].grad], dim=1)
        params[1].grad = wide[:, 0]     # stride 2
    ours, theirs = PAIRS[name]
    with pytest.warns(RuntimeWarning, match="different layouts|not dense"):
        mine = _run(ours, edit)
    _same(mine, _run(theirs, edit))


@pytest.mark.parametrize("name", PAIRS)
def test_warm_steps_do_not_warn(name):
    ours, _ = PAIRS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _run(ours, lambda opt, params: None)


GROUP_STEPPED = {"SGD": lambda groups: mt.SGD(groups, lr=0.05, momentum=0.9),
                 "Lion": lambda groups: mt.Lion(groups, lr=0.05)}


@pytest.mark.parametrize("name", GROUP_STEPPED)
def test_a_group_the_kernels_stepped_is_counted_when_torchs_share_then_raises(name):
    """torch's arithmetic runs after the kernels; when it raises (an int64
    parameter: torch's own error), the groups the kernels wrote have
    counted their step, so their next stochastic rounding keys differ."""
    a, c = (torch.nn.Parameter(torch.ones(4)) for _ in range(2))
    b = torch.nn.Parameter(torch.ones(4, dtype=torch.int64), requires_grad=False)
    for p in (a, b, c):
        p.grad = torch.ones_like(p)
    opt = GROUP_STEPPED[name]([{"params": [a]}, {"params": [b]}, {"params": [c]}])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError):
            opt.step()
    assert not torch.equal(a.detach(), torch.ones(4)) and not torch.equal(c.detach(),
                                                                         torch.ones(4))
    assert [g["step"] for g in opt.param_groups] == [1, 1, 1]


@pytest.mark.parametrize("name", ["SGD", "Adam", "Lion"])
def test_a_step_refused_for_another_groups_hyperparameter_does_not_warn(name):
    """Every group's hyperparameters are checked before any plan is made:
    a step refused before anything is written says nothing of torch's
    arithmetic; the step that uses it does, once."""
    make = {"SGD": mt.SGD, "Adam": mt.Adam, "Lion": mt.Lion}[name]
    strided = torch.nn.Parameter(torch.ones(4, 6)[:, ::2])
    plain = torch.nn.Parameter(torch.ones(3))
    for p in (strided, plain):
        p.grad = torch.ones_like(p)
    opt = make([{"params": [strided]}, {"params": [plain]}], lr=0.1)
    opt.param_groups[1]["lr"] = -1.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match=r"param_groups\[1\]"):
            opt.step()
    assert not caught
    opt.param_groups[1]["lr"] = 0.1
    with pytest.warns(RuntimeWarning, match="not dense"):
        opt.step()
