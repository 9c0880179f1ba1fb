"""momentum.torch.Lion against lion-pytorch's Lion (skipped where it is not
installed), its state layout and state dicts, and bfloat16 against
momentum.reference."""
from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import momentum.reference as ref  # noqa: E402
import momentum.torch as mt  # noqa: E402

STEPS = 100


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(),
                               torch.nn.Linear(16, 3)).to(torch.float64)


def _train(model, opt, steps):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 6, generator=g, dtype=torch.float64)
    y = torch.randn(32, 3, generator=g, dtype=torch.float64)
    for _ in range(steps):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()


def _max_diff(a, b):
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("kw", [dict(), dict(weight_decay=0.1), dict(betas=(0.95, 0.98)),
                                dict(weight_decay=1e-4, decoupled_weight_decay=True)],
                         ids=["plain", "decay", "betas", "decoupled"])
def test_float64_network_parity_with_lion_pytorch(kw):
    """100 steps, float64, each on its own: within 1e-10 of lion-pytorch
    (its arithmetic differs only in fused multiply-adds; a sign can flip
    only where ``c`` is within ulps of 0, which these runs do not meet)."""
    lion_pytorch = pytest.importorskip("lion_pytorch")
    a, b = _net(), _net()
    oa = mt.Lion(a.parameters(), lr=1e-3, **kw)
    ob = lion_pytorch.Lion(b.parameters(), lr=1e-3, **kw)
    _train(a, oa, STEPS)
    _train(b, ob, STEPS)
    assert _max_diff(a, b) <= 1e-10
    for p, q in zip(a.parameters(), b.parameters()):
        assert oa.state[p].keys() == ob.state[q].keys() == {"exp_avg"}
        torch.testing.assert_close(oa.state[p]["exp_avg"], ob.state[q]["exp_avg"],
                                   rtol=0, atol=1e-10)


def test_state_dicts_both_ways():
    """50 steps with one, loaded into the other, 50 more: as 100 with lion-pytorch."""
    lion_pytorch = pytest.importorskip("lion_pytorch")
    whole = _net()
    _train(whole, lion_pytorch.Lion(whole.parameters(), lr=1e-3, weight_decay=0.1), STEPS)
    for first, second in ((mt.Lion, lion_pytorch.Lion), (lion_pytorch.Lion, mt.Lion)):
        model = _net()
        opt = first(model.parameters(), lr=1e-3, weight_decay=0.1)
        _train(model, opt, STEPS // 2)
        resumed = second(model.parameters(), lr=1e-3, weight_decay=0.1)
        resumed.load_state_dict(copy.deepcopy(opt.state_dict()))
        _train(model, resumed, STEPS - STEPS // 2)
        assert _max_diff(model, whole) <= 1e-10


def test_frozen_zero_size_and_constructor():
    live = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    empty = torch.nn.Parameter(torch.zeros(0, dtype=torch.float64))
    frozen = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    opt = mt.Lion([live, empty, frozen], lr=0.1)
    live.grad, empty.grad = torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64), \
        torch.zeros(0, dtype=torch.float64)
    opt.step()
    # sign(0) = 0: the third element does not move
    assert live.detach().tolist() == [0.9, 1.1, 1.0]
    assert frozen not in opt.state and torch.equal(frozen.detach(), torch.ones(2,
                                                                               dtype=torch.float64))
    for kw in (dict(lr=0.0), dict(betas=(1.5, 0.9)), dict(use_triton=True)):
        with pytest.raises(ValueError):
            mt.Lion([live], **kw)


@pytest.mark.parametrize("shape", [(40,), (5, 8)])
def test_bfloat16_against_reference(shape):
    """bfloat16 with float32 moments and stochastic rounding, 5 steps:
    bitwise as momentum.reference.lion, keyed on the group's step count
    (a 2-D parameter too: its arrays must come out of one shape)."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf16 = np.dtype(ml_dtypes.bfloat16)
    rng = np.random.default_rng(3)
    param = rng.standard_normal(shape).astype(np.float32).astype(bf16)
    p = torch.nn.Parameter(torch.from_numpy(param.copy().view(np.int16)).view(torch.bfloat16))
    opt = mt.Lion([p], lr=0.01, weight_decay=0.1, state_dtype=torch.float32,
                  rounding="stochastic", seed=3)
    m = np.zeros(shape, np.float32)
    for step in range(5):
        grad = rng.standard_normal(shape).astype(np.float32).astype(bf16)
        p.grad = torch.from_numpy(grad.view(np.int16)).view(torch.bfloat16)
        opt.step()
        ref.lion(param, grad, m, lr=0.01, weight_decay=0.1, rounding="stochastic", seed=3,
                 step=step, tensor=0)
    np.testing.assert_array_equal(p.detach().view(torch.int16).numpy(), param.view(np.int16))
    np.testing.assert_array_equal(opt.state[p]["exp_avg"].numpy(), m)


def test_fallback_steps_as_lion_pytorch():
    """A gradient the kernels cannot step beside its parameter (a strided
    slice): torch operations, one warning, as lion-pytorch."""
    lion_pytorch = pytest.importorskip("lion_pytorch")
    import warnings

    def run(cls):
        p = torch.nn.Parameter(torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(3, 4))
        opt = cls([p], lr=0.01, weight_decay=0.1)
        for seed in range(5):
            p.grad = torch.randn(3, 8, dtype=torch.float64,
                                 generator=torch.Generator().manual_seed(seed))[:, ::2]
            opt.step()
        return p.detach()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mine = run(mt.Lion)
    assert sum("PyTorch's own arithmetic" in str(w.message) for w in caught) == 1
    torch.testing.assert_close(mine, run(lion_pytorch.Lion), rtol=0, atol=1e-12)
