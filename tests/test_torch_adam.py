"""momentum.torch.Adam and AdamW against torch.optim.Adam and AdamW
themselves: parity over 100 steps of a small network for every flag
combination (for-loop and fused torch), state dicts both ways, the
drop-in behaviours (schedulers, closures, hooks, groups, zero-size and
frozen parameters), the fallback to torch's arithmetic, bad input, and
16-bit storage against momentum.reference."""
from __future__ import annotations

import copy
import itertools
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import momentum.reference as ref  # noqa: E402
import momentum.torch as mt  # noqa: E402

STEPS = 100
LR = 1e-2


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


PAIRS = [(mt.Adam, torch.optim.Adam), (mt.AdamW, torch.optim.AdamW)]
# amsgrad, maximize, weight_decay: every combination
FLAGS = [dict(amsgrad=a, maximize=m, weight_decay=w)
         for a, m, w in itertools.product([False, True], [False, True], [0.0, 0.1])]
IMPLS = [dict(foreach=False), dict(fused=True)]


def _net(dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(),
                               torch.nn.Linear(16, 3)).to(dtype)


def _data(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 6, generator=g, dtype=dtype), torch.randn(32, 3, generator=g,
                                                                      dtype=dtype)


def _backward(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    loss = ((model(x) - y) ** 2).mean()
    loss.backward()
    return loss


def _train(model, opt, x, y, steps):
    for _ in range(steps):
        opt.zero_grad()
        _backward(model, x, y)
        opt.step()


def _max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("ours, theirs", PAIRS, ids=["Adam", "AdamW"])
@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
@pytest.mark.parametrize("impl", IMPLS, ids=["for-loop", "fused"])
def test_float64_network_parity(ours, theirs, flags, impl):
    """float64, each trained on its own for 100 steps: within 1e-10 of torch
    (measured: under 2e-15; the arithmetic is torch's up to the rounding of
    a few double operations per step)."""
    x, y = _data(torch.float64)
    a, b = _net(torch.float64), _net(torch.float64)
    oa = ours(a.parameters(), lr=LR, **flags)
    ob = theirs(b.parameters(), lr=LR, **flags, **impl)
    _train(a, oa, x, y, STEPS)
    _train(b, ob, x, y, STEPS)
    assert _max_diff(a, b) <= 1e-10
    for p, q in zip(a.parameters(), b.parameters()):
        sa, sb = oa.state[p], ob.state[q]
        assert sa.keys() == sb.keys()
        assert sa["step"].dtype == sb["step"].dtype and float(sa["step"]) == STEPS
        for key in sa.keys() - {"step"}:
            torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=1e-10)


def _adam_ratio_bound(beta1: float, beta2: float, steps: int) -> float:
    """max over t <= steps of the bound, by Cauchy-Schwarz, on
    ``sum_k w1_k |g_k| / (1 - beta1**t) / sqrt(sum_k w2_k g_k**2 / (1 - beta2**t))``
    for any gradients, with ``w1_k = (1 - beta1) beta1**k``, ``w2_k = (1 - beta2)
    beta2**k`` the moments' weights: ``sqrt(sum_k w1_k**2 / w2_k)`` times the
    bias corrections' ratio.  It bounds |exp_avg| (and the sum of the
    magnitudes it is made of) over the denominator, in units of lr."""
    best = 0.0
    for t in range(1, steps + 1):
        k = np.arange(t)
        cs = np.sqrt(np.sum(((1 - beta1) * beta1 ** k) ** 2 / ((1 - beta2) * beta2 ** k)))
        best = max(best, cs * np.sqrt(1 - beta2 ** t) / (1 - beta1 ** t))
    return float(best)


@pytest.mark.parametrize("ours, theirs", PAIRS, ids=["Adam", "AdamW"])
@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
@pytest.mark.parametrize("impl", IMPLS, ids=["for-loop", "fused"])
def test_float32_network_parity(ours, theirs, flags, impl):
    """float32, in lock step: each step the gradients of torch's network are
    given to both optimizers (so that a difference in the parameters does
    not feed back through the gradients), 100 steps.

    The bound.  Let u = 2**-24 (float32's unit roundoff).  Given the same
    gradients, each implementation computes the step ``lr * m_hat /
    (sqrt(v_hat) + eps)`` with its own roundings (torch fuses some
    multiply-adds, orders ``addcdiv`` as ``(a * b) / c``, casts bias
    corrections to float32; the kernels round each operation in the
    formula's order).  The moments are recurrences that shrink old errors by
    beta: exp_avg's error stays within 4u / (1 - beta1) of the sum of the
    magnitudes it is made of (its terms may cancel), exp_avg_sq (positive
    terms) within 4u * min(steps, 1 / (1 - beta2)) of itself, half that
    through the square root; the other operations of a step add under 10u.
    So one step's results differ by at most ``lr * A * K * u`` with ``K = 4
    / (1 - beta1) + 2 * min(steps, 1 / (1 - beta2)) + 10`` and A the bound of
    _adam_ratio_bound (which holds for any gradients, the L2 term
    included; amsgrad's larger denominator only lowers it).  Storing the
    parameter rounds it once more in each (twice with AdamW's decay): at
    most 3u * max|p| per step.  Differences add up over the steps:
    ``steps * (lr * A * K * u + 3u * max|p|)``.  For the default betas:
    A = 2.24, K = 250; the bound is about 3.3e-5 + 1.8e-5 * max|p|; measured
    differences are under 1e-6.  A wrong formula misses by about lr.
    """
    x, y = _data(torch.float32)
    a, b = _net(torch.float32), _net(torch.float32)
    oa = ours(a.parameters(), lr=LR, **flags)
    ob = theirs(b.parameters(), lr=LR, **flags, **impl)
    for _ in range(STEPS):
        ob.zero_grad()
        _backward(b, x, y)
        for p, q in zip(a.parameters(), b.parameters()):
            p.grad = q.grad.clone()
        oa.step()
        ob.step()
    beta1, beta2 = 0.9, 0.999
    u = 2.0 ** -24
    K = 4 / (1 - beta1) + 2 * min(STEPS, 1 / (1 - beta2)) + 10
    scale = max(q.abs().max().item() for q in b.parameters())
    bound = STEPS * (LR * _adam_ratio_bound(beta1, beta2, STEPS) * K * u + 3 * u * scale)
    assert _max_diff(a, b) <= bound


def test_ratio_bound_is_a_bound():
    """_adam_ratio_bound against the worst case it claims to bound, over
    random and adversarial gradient sequences (computed in float64 NumPy)."""
    beta1, beta2, steps = 0.9, 0.999, 100
    bound = _adam_ratio_bound(beta1, beta2, steps)
    rng = np.random.default_rng(0)
    for g in [*rng.standard_normal((20, steps)), np.ones(steps), 10.0 ** -np.arange(steps)]:
        m = v = 0.0
        for t in range(1, steps + 1):
            m = beta1 * m + (1 - beta1) * abs(g[t - 1])
            v = beta2 * v + (1 - beta2) * g[t - 1] ** 2
            assert m / (1 - beta1 ** t) / np.sqrt(v / (1 - beta2 ** t)) <= bound * (1 + 1e-12)


@pytest.mark.parametrize("ours, theirs", PAIRS, ids=["Adam", "AdamW"])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_state_dicts_both_ways(ours, theirs, amsgrad):
    """50 steps with one, the state dict loaded into the other, 50 more:
    as 100 steps with either alone (float64, within 1e-10), both ways."""
    x, y = _data(torch.float64)
    kw = dict(lr=LR, weight_decay=0.05, amsgrad=amsgrad)
    whole = _net(torch.float64)
    _train(whole, theirs(whole.parameters(), **kw), x, y, STEPS)
    for first, second in ((ours, theirs), (theirs, ours)):
        model = _net(torch.float64)
        opt = first(model.parameters(), **kw)
        _train(model, opt, x, y, STEPS // 2)
        saved = copy.deepcopy(opt.state_dict())
        resumed = second(model.parameters(), **kw)
        resumed.load_state_dict(saved)
        for state in resumed.state.values():
            assert state["step"].dtype == torch.float32 and float(state["step"]) == STEPS // 2
        _train(model, resumed, x, y, STEPS - STEPS // 2)
        assert _max_diff(model, whole) <= 1e-10


def test_state_layout_is_torchs():
    """The state's keys, dtypes, shapes and the step tensor as torch keeps them."""
    for amsgrad in (False, True):
        a, b = _net(torch.float32), _net(torch.float32)
        oa, ob = mt.Adam(a.parameters(), amsgrad=amsgrad), torch.optim.Adam(b.parameters(),
                                                                            amsgrad=amsgrad)
        x, y = _data(torch.float32)
        _train(a, oa, x, y, 1)
        _train(b, ob, x, y, 1)
        for p, q in zip(a.parameters(), b.parameters()):
            for key, value in ob.state[q].items():
                mine = oa.state[p][key]
                assert (mine.dtype, mine.shape, mine.device) == (value.dtype, value.shape,
                                                                 value.device)
            assert oa.state[p].keys() == ob.state[q].keys()
        assert oa.state_dict()["param_groups"][0].keys() >= ob.state_dict()["param_groups"][0].keys()


def test_scheduler_closure_tensor_lr_and_groups():
    """Tensor lr, two param groups with their own hyperparameters, a
    scheduler changing lr each step, a closure, a step hook: as torch."""
    x, y = _data(torch.float64)

    def run(cls):
        model = _net(torch.float64)
        groups = [{"params": model[0].parameters(), "weight_decay": 0.1},
                  {"params": model[2].parameters(), "betas": (0.8, 0.99), "amsgrad": True}]
        # a float64 tensor: torch divides a tensor lr by the bias correction
        # in its dtype, the kernels in double (a float32 lr would differ by
        # its rounding, 1e-7 of the step)
        opt = cls(groups, lr=torch.tensor(0.02, dtype=torch.float64))
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
        calls = []
        opt.register_step_post_hook(lambda o, args, kwargs: calls.append(1))
        losses = []
        for _ in range(20):
            def closure():
                opt.zero_grad()
                return _backward(model, x, y)
            losses.append(opt.step(closure).item())
            sched.step()
        assert len(calls) == 20
        return model, losses

    a, la = run(mt.Adam)
    b, lb = run(torch.optim.Adam)
    assert _max_diff(a, b) <= 1e-10
    np.testing.assert_allclose(la, lb, rtol=0, atol=1e-10)


def test_zero_size_and_frozen_parameters():
    """A zero-size parameter and a frozen one (no grad) beside a trained
    one: the frozen one is not touched and gets no state, as torch."""
    def run(cls):
        torch.manual_seed(0)
        live = torch.nn.Parameter(torch.randn(7, dtype=torch.float64))
        empty = torch.nn.Parameter(torch.zeros(0, 3, dtype=torch.float64))
        frozen = torch.nn.Parameter(torch.randn(4, dtype=torch.float64), requires_grad=False)
        opt = cls([live, empty, frozen], lr=0.1)
        for _ in range(5):
            opt.zero_grad()
            (live ** 3).sum().backward()
            empty.grad = torch.zeros_like(empty)
            opt.step()
        return live, empty, frozen, opt

    la, ea, fa, oa = run(mt.Adam)
    lb, eb, fb, ob = run(torch.optim.Adam)
    torch.testing.assert_close(la, lb, rtol=0, atol=1e-12)
    assert torch.equal(fa, fb) and fa not in oa.state
    assert set(oa.state[ea]) == set(ob.state[eb])


def test_fallback_warns_and_steps_as_torch():
    """A parameter the kernels cannot step in place (its grad a strided
    slice) is stepped with torch's arithmetic, with one warning."""
    base = torch.randn(6, 4, dtype=torch.float64)

    def run(cls):
        p = torch.nn.Parameter(base.clone())
        opt = cls([p], lr=0.1, weight_decay=0.1)
        for seed in range(3):
            p.grad = torch.randn(6, 8, dtype=torch.float64,
                                 generator=torch.Generator().manual_seed(seed))[:, ::2]
            opt.step()
        return p

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = run(mt.AdamW)
    assert sum("PyTorch's own arithmetic" in str(w.message) for w in caught) == 1
    torch.testing.assert_close(a, run(torch.optim.AdamW), rtol=0, atol=0)


@pytest.mark.parametrize("cls", [mt.Adam, mt.AdamW, mt.Lion])
def test_a_misaligned_contiguous_gradient_is_stepped_as_torch_steps_it(cls):
    """A gradient in memory not aligned to its dtype (torch.frombuffer at an
    odd offset: contiguous, so the common-case test must ask) is stepped
    with torch's arithmetic after warm steps, with the warning, not refused:
    torch.optim steps it."""
    torch.manual_seed(0)
    start = torch.randn(8, dtype=torch.float64)
    grads = [torch.randn(8, dtype=torch.float64) for _ in range(3)]
    raw = bytearray(8 * 8 + 1)
    odd = torch.frombuffer(raw, dtype=torch.float64, offset=1, count=8)

    def run(make, misaligned):
        p = torch.nn.Parameter(start.clone())
        opt = make([p], lr=0.1)
        for k, g in enumerate(grads):
            if misaligned and k == 2:   # after two warm steps
                odd.copy_(g)
                g = odd
            p.grad = g
            opt.step()
        return p.detach()

    with pytest.warns(RuntimeWarning, match="not aligned"):
        ours = run(cls, True)
    # the third step by torch's arithmetic, the kernels' otherwise: float64 agree
    torch.testing.assert_close(ours, run(cls, False), rtol=0, atol=1e-12)


def test_differentiable_and_capturable_are_torchs():
    """differentiable=True steps with torch's arithmetic: the step's result
    has the same gradient with respect to what the gradient was made from;
    capturable=True on CPU raises torch's own error."""
    def run(cls):
        w = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
        p = torch.tensor([0.5, 0.25], dtype=torch.float64, requires_grad=True).clone()
        opt = cls([p], lr=0.1, differentiable=True)
        p.grad = w * 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt.step()
        (dw,) = torch.autograd.grad(p.sum(), w)
        return p.detach().clone(), dw

    for mine, theirs in zip(run(mt.Adam), run(torch.optim.Adam)):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    errors = []
    for cls in (mt.Adam, torch.optim.Adam):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(Exception) as info:
                cls([p], capturable=True).step()
        errors.append((type(info.value), str(info.value)))
    assert errors[0] == errors[1]


def test_constructor_checks_are_torchs():
    for kw in (dict(lr=-1.0), dict(eps=-1.0), dict(betas=(1.0, 0.9)), dict(betas=(0.9, -0.1)),
               dict(weight_decay=-1.0), dict(fused=True, foreach=True),
               dict(lr=torch.tensor([1.0, 2.0]))):
        raised = []
        for cls in (mt.Adam, torch.optim.Adam):
            with pytest.raises((ValueError, RuntimeError)) as info:
                cls([torch.nn.Parameter(torch.ones(2))], **kw)
            raised.append((type(info.value), str(info.value)))
        assert raised[0] == raised[1]
    with pytest.raises(ValueError, match="rounding"):
        mt.Adam([torch.nn.Parameter(torch.ones(2))], rounding="up")


def test_bad_group_edit_writes_nothing():
    """A hyperparameter made invalid after construction: ValueError naming
    the step, and no parameter, state entry or step count changed."""
    model = _net(torch.float32)
    opt = mt.Adam(model.parameters(), lr=0.1)
    x, y = _data(torch.float32)
    _train(model, opt, x, y, 2)
    before = copy.deepcopy((list(model.parameters()), opt.state_dict()))
    _backward(model, x, y)
    for key, value in (("lr", -1.0), ("betas", (1.5, 0.9)), ("eps", float("nan"))):
        group = opt.param_groups[0]
        old, group[key] = group[key], value
        with pytest.raises(ValueError, match="Adam.step"):
            opt.step()
        group[key] = old
        for p, q in zip(model.parameters(), before[0]):
            assert torch.equal(p, q)
        for key2, state in opt.state_dict()["state"].items():
            for name, t in state.items():
                assert torch.equal(t, before[1]["state"][key2][name])


def test_sparse_gradient_is_refused_as_torch():
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        mt.Adam([p]).step()
    assert torch.equal(p.detach(), torch.ones(3))


@pytest.mark.parametrize("rounding", ["nearest", "stochastic", "kahan", "master"])
@pytest.mark.parametrize("state_dtype", [None, torch.float32])
@pytest.mark.parametrize("cls, rule", [(mt.Adam, ref.adam), (mt.AdamW, ref.adamw)])
@pytest.mark.parametrize("shape", [(33,), (3, 11)])
def test_bfloat16_against_reference(rounding, state_dtype, cls, rule, shape):
    """bfloat16 parameters, 5 steps, bitwise as momentum.reference (NumPy,
    float32 arithmetic, each stored value rounded once), the rounding's
    extra state entry made and kept as SGD's; a 2-D parameter too (its
    float32 moments and master once came out of another shape than it)."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf16 = np.dtype(ml_dtypes.bfloat16)
    rng = np.random.default_rng(4)
    start = rng.standard_normal(shape).astype(np.float32)
    p = torch.nn.Parameter(torch.from_numpy(start).to(torch.bfloat16))
    opt = cls([p], lr=0.05, weight_decay=0.1, amsgrad=True, state_dtype=state_dtype,
              rounding=rounding, state_rounding="stochastic", seed=7)
    sdt = np.float32 if state_dtype is torch.float32 else bf16
    param = start.astype(bf16)
    m, v, mx = (np.zeros(shape, sdt) for _ in range(3))
    master = param.astype(np.float32) if rounding == "master" else None
    comp = np.zeros(shape, bf16) if rounding == "kahan" else None
    for step in range(1, 6):
        grad = rng.standard_normal(shape).astype(np.float32).astype(bf16)
        p.grad = torch.from_numpy(grad.view(np.int16)).view(torch.bfloat16)
        opt.step()
        rule(param, grad, m, v, mx, lr=0.05, weight_decay=0.1, amsgrad=True, step=step,
             rounding=rounding, state_rounding="stochastic", master=master, comp=comp,
             seed=7, tensor=0)
    got = p.detach().view(torch.int16).numpy()
    np.testing.assert_array_equal(got, param.view(np.int16))
    state = opt.state[p]
    assert state["exp_avg"].dtype == (torch.float32 if sdt == np.float32 else torch.bfloat16)
    extra = {"kahan": "kahan_comp", "master": "master_param"}.get(rounding)
    assert sorted(k for k in state if k in ("kahan_comp", "master_param")) == \
        ([extra] if extra else [])
    if extra == "master_param":
        np.testing.assert_array_equal(state[extra].numpy(), master)


def test_deepcopy_and_torch_state_dict_groups():
    """A deep copy steps as the original; torch's state dict (no storage
    options in its groups) loads with the defaults."""
    x, y = _data(torch.float64)
    a = _net(torch.float64)
    oa = mt.AdamW(a.parameters(), lr=LR)
    _train(a, oa, x, y, 3)
    b = copy.deepcopy(a)
    ob = mt.AdamW(b.parameters(), lr=LR)
    ob.load_state_dict(torch.optim.AdamW(b.parameters()).state_dict() | {
        "state": copy.deepcopy(oa.state_dict()["state"]),
        "param_groups": [{k: v for k, v in g.items()
                          if k not in ("state_dtype", "rounding", "state_rounding", "seed")}
                         for g in oa.state_dict()["param_groups"]]})
    assert ob.param_groups[0]["rounding"] == "nearest"
    oc = copy.deepcopy(oa)
    _train(a, oa, x, y, 3)
    _train(b, ob, x, y, 3)
    assert _max_diff(a, b) == 0
    assert oc.state_dict()["state"][0]["step"] == 3


@pytest.mark.parametrize("layout", ["complex128", "channels_last", "transposed"])
def test_layouts_the_kernels_step_as_torch(layout):
    """Complex parameters (their real view, as torch's Adam steps them),
    channels_last and transposed ones (dense, stepped in memory order), no
    warning: as torch.optim.Adam, float64 within 1e-12 over 20 steps."""
    def run(cls):
        torch.manual_seed(0)
        if layout == "complex128":
            p = torch.nn.Parameter(torch.randn(5, 3, dtype=torch.complex128))
        elif layout == "channels_last":
            p = torch.nn.Parameter(torch.randn(2, 3, 4, 5, dtype=torch.float64)
                                   .to(memory_format=torch.channels_last))
        else:
            p = torch.nn.Parameter(torch.randn(6, 4, dtype=torch.float64).t())
        opt = cls([p], lr=0.1, amsgrad=True, weight_decay=0.1)
        for seed in range(20):
            g = torch.Generator().manual_seed(seed)
            p.grad = torch.randn(p.shape, dtype=p.dtype, generator=g)
            if layout != "complex128":
                p.grad = torch.empty_like(p).copy_(p.grad)  # laid out as p
            opt.step()
        return p.detach()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mine = run(mt.Adam)
    torch.testing.assert_close(mine, run(torch.optim.Adam), rtol=0, atol=1e-12)


def test_bfloat16_fallback_with_float32_moments():
    """A bfloat16 parameter with float32 moments (state_dtype) that the
    kernels cannot step (a strided gradient): torch's arithmetic in float32
    on copies, the parameter rounded once, as torch.optim.Adam on a float32
    copy of the parameter with float32 gradients."""
    start = torch.linspace(-1, 1, 12).reshape(3, 4)
    p = torch.nn.Parameter(start.to(torch.bfloat16))
    q = torch.nn.Parameter(p.detach().float())
    mine = mt.Adam([p], lr=0.1, state_dtype=torch.float32)
    theirs = torch.optim.Adam([q], lr=0.1)
    for seed in range(3):
        g = torch.randn(3, 8, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)
        p.grad = g[:, ::2]
        q.grad = g[:, ::2].float()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mine.step()
        theirs.step()
        assert torch.equal(p.detach(), q.detach().to(torch.bfloat16))
        q.data = q.detach().to(torch.bfloat16).float()  # the parameter as stored
    assert mine.state[p]["exp_avg"].dtype == torch.float32
    torch.testing.assert_close(mine.state[p]["exp_avg"], theirs.state[q]["exp_avg"],
                               rtol=0, atol=0)


@pytest.mark.parametrize("cls", [mt.AdamW, mt.Lion])
def test_a_master_copy_of_another_layout_is_stepped_by_torch_not_refused(cls):
    """A state's master copy laid out otherwise than its parameter (a loaded
    state dict's, say: column-major beside a row-major parameter) is not one
    dense layout with it: the parameter is stepped with torch's arithmetic,
    with the warning, as any other such tensor (it was once refused with a
    shape error, and before that would have been stepped out of order)."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5, 7).to(torch.bfloat16))
    opt = cls([p], lr=1e-2, state_dtype=torch.float32, rounding="master")
    p.grad = torch.randn(5, 7).to(torch.bfloat16)
    opt.step()
    master = opt.state[p]["master_param"]
    opt.state[p]["master_param"] = master.t().contiguous().t()   # same values, column-major
    before = p.detach().clone()
    p.grad = torch.randn(5, 7).to(torch.bfloat16)
    with pytest.warns(RuntimeWarning, match="different layouts"):
        opt.step()
    assert not torch.equal(p.detach(), before)
    assert "master_param" not in opt.state[p]   # stepped without it: dropped
