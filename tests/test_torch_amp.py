"""AMP: ``grad_scale`` and ``found_inf`` as torch.amp.GradScaler hands them
to an optimizer whose ``_step_supports_amp_scaling`` is true (torch's fused
SGD and Adam), for momentum.torch.SGD, Adam, AdamW and Lion; and what
torch's fused SGD does on a skipped first step, against torch itself."""
from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

import momentum.torch as mt  # noqa: E402

OPTIMIZERS = {
    "SGD": lambda ps: mt.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
    "Adam": lambda ps: mt.Adam(ps, lr=0.1, amsgrad=True, weight_decay=0.01),
    "AdamW": lambda ps: mt.AdamW(ps, lr=0.1),
    "Lion": lambda ps: mt.Lion(ps, lr=0.1, weight_decay=0.01),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


def _params():
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]


def _grads(params, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * scale


def _snapshot(opt, params):
    return copy.deepcopy(([p.detach() for p in params], opt.state_dict()))


def _assert_same(a, b):
    (pa, sa), (pb, sb) = a, b
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for k, state in sa["state"].items():
        assert state.keys() == sb["state"][k].keys()
        for name, value in state.items():
            assert torch.equal(value, sb["state"][k][name]), name


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_found_inf_writes_nothing(name):
    """found_inf set: a first step makes no state; a later one leaves the
    parameters, every state buffer, step counts and the gradients bitwise
    as they were."""
    params = _params()
    opt = OPTIMIZERS[name](params)
    _grads(params, 8.0)
    opt.grad_scale, opt.found_inf = torch.tensor(8.0), torch.tensor(1.0)
    before = _snapshot(opt, params)
    grads = [p.grad.clone() for p in params]
    opt.step()
    _assert_same(_snapshot(opt, params), before)
    assert not opt.state
    assert all(torch.equal(p.grad, g) for p, g in zip(params, grads))
    opt.found_inf = torch.tensor(0.0)
    for seed in range(3):
        _grads(params, 8.0, seed)
        opt.step()
    opt.found_inf = torch.tensor(1.0)
    _grads(params, 8.0, 5)
    before = _snapshot(opt, params)
    opt.step()
    _assert_same(_snapshot(opt, params), before)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_grad_scale_unscales_as_torchs_fused(name):
    """grad_scale s with gradients scaled by s steps bitwise as unscaled
    gradients without it (s a power of two, as GradScaler's), and leaves
    the gradients unscaled, as torch's fused Adam and SGD leave them."""
    scaled, plain = _params(), _params()
    a, b = OPTIMIZERS[name](scaled), OPTIMIZERS[name](plain)
    a.grad_scale, a.found_inf = torch.tensor(1024.0), torch.tensor(0.0)
    for seed in range(4):
        _grads(scaled, 1024.0, seed)
        _grads(plain, 1.0, seed)
        a.step()
        b.step()
        assert all(torch.equal(p.grad, q.grad) for p, q in zip(scaled, plain))
    _assert_same(_snapshot(a, scaled), _snapshot(b, plain))
    torch_params = _params()
    fused = (torch.optim.SGD(torch_params, lr=0.1, momentum=0.9, fused=True) if name == "SGD"
             else torch.optim.Adam(torch_params, lr=0.1, fused=True))
    fused.grad_scale, fused.found_inf = torch.tensor(1024.0), torch.tensor(0.0)
    _grads(torch_params, 1024.0, 9)
    expected = [p.grad / 1024.0 for p in torch_params]
    fused.step()
    assert all(torch.equal(p.grad, e) for p, e in zip(torch_params, expected))


@pytest.mark.parametrize("ours, theirs", [
    (lambda ps: mt.Adam(ps, lr=0.01), lambda ps: torch.optim.Adam(ps, lr=0.01, fused=True)),
    (lambda ps: mt.Adam(ps, lr=0.01), lambda ps: torch.optim.Adam(ps, lr=0.01)),
    # not against torch's fused SGD: its skipped first step leaves an
    # unfilled buffer (test_torch_fused_sgd_skipped_first_step)
    (lambda ps: mt.SGD(ps, lr=0.01, momentum=0.9),
     lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9)),
], ids=["Adam-fused", "Adam-for-loop", "SGD-for-loop"])
def test_grad_scaler_loop_as_torch_fused(ours, theirs):
    """A GradScaler loop (float64 model; an overflowing loss at steps 0 and
    3): the same parameters and scale as with torch's optimizer (the
    fused one takes the scale and the inf flag as ours do; GradScaler
    unscales for the for-loop one and skips its step)."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)

    def run(make):
        torch.manual_seed(1)
        model = torch.nn.Linear(4, 2).to(torch.float64)
        opt = make(list(model.parameters()))
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8, growth_interval=2)
        for step in range(10):
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean() * (float("inf") if step in (0, 3) else 1.0)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        return model, scaler.get_scale()

    (a, sa), (b, sb) = run(ours), run(theirs)
    assert sa == sb
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-10)


def test_torch_fused_sgd_skipped_first_step():
    """What torch's fused SGD does (this torch; the reason ours writes
    nothing on a skipped step): a first step with found_inf set leaves the
    parameter but enters a momentum buffer it never filled (empty_like), and
    the next step treats that buffer as a running one, not as a first step."""
    p = torch.nn.Parameter(torch.ones(64))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9, fused=True)
    p.grad = torch.full((64,), 2.0)
    opt.grad_scale, opt.found_inf = torch.tensor(1.0), torch.tensor(1.0)
    opt.step()
    assert torch.equal(p.detach(), torch.ones(64))
    assert "momentum_buffer" in opt.state[p]
    left = opt.state[p]["momentum_buffer"].clone()
    opt.found_inf = torch.tensor(0.0)
    opt.step()
    running = left * 0.9 + 2.0
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], running, equal_nan=True)
