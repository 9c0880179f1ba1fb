"""Everything torch.optim.SGD steps, momentum.torch.SGD steps, with the same
results: channels_last, transposed, sliced and complex parameters, sparse
gradients, ``differentiable=True``; state dicts both ways.  16-bit
parameters are stepped by the kernels too, bit for bit as momentum.reference.

Each test steps a model with ours and an identical one with torch.optim.SGD,
every flag combination, feeding both the same gradients each step (backward
on ours, copied, layout and all, to torch's), so that the two differ only by
the optimizers' arithmetic.  Where the kernels step, that difference is
PyTorch's fused multiply-adds against our separate roundings: at most about
2 ulps of a tensor's largest value per step (test_torch_parity derives and
uses that bound), so ``2 * STEPS`` ulps after STEPS steps.  Where torch's own
arithmetic steps (the fallback), the two run the same operations on the same
values: bit for bit.  The kernels' parameters are told by the absence of the
fallback's warning.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest

torch = pytest.importorskip("torch")

from momentum.torch import SGD  # noqa: E402
from torch_helpers import (  # noqa: E402
    Reference, assert_bitwise, assert_within_ulps, fallback_warnings, make_data, make_model, mse,
    sgd_flag_combinations)

STEPS = 20
ULPS = 2 * STEPS
FLAGS = sgd_flag_combinations(momentum=0.9, dampening=0.1)
DTYPES = [torch.float32, torch.float64]
LR = 0.05

# A model to train: its parameters, and its loss (a closure over them).
Built = tuple[list[torch.Tensor], Callable[[], torch.Tensor]]


def flag_id(flags: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in flags.items())


def channels_last_cnn(dtype: torch.dtype) -> Built:
    """Two convolutions and a linear layer, converted to channels_last (the
    4-d conv weights are then dense but not contiguous), on channels_last
    input."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 6, 3, padding=1),
        torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(6 * 4 * 4, 3),
    ).to(dtype).to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, 6, 6, dtype=dtype, generator=gen).to(memory_format=torch.channels_last)
    y = torch.randn(5, 3, dtype=dtype, generator=gen)
    return list(model.parameters()), lambda: mse(model, x, y)


def transposed_mlp(dtype: torch.dtype) -> Built:
    """An MLP whose weights are transposes (``p.data = p.data.t()``): dense,
    column-major, and autograd lays their gradients out alike."""
    gen = torch.Generator().manual_seed(0)
    w1 = torch.nn.Parameter(torch.randn(16, 8, dtype=dtype, generator=gen))
    w1.data = w1.data.t()                                  # (8, 16)
    b1 = torch.nn.Parameter(torch.randn(16, dtype=dtype, generator=gen))
    w2 = torch.nn.Parameter(torch.randn(3, 16, dtype=dtype, generator=gen) / 4)
    w2.data = w2.data.t()                                  # (16, 3)
    x, y = make_data(dtype)
    return [w1, b1, w2], lambda: ((torch.tanh(x @ w1 + b1) @ w2 - y) ** 2).mean()


def sliced_mlp(dtype: torch.dtype) -> Built:
    """An MLP whose first weight and bias are slices of larger tensors (not
    dense: torch's arithmetic), its second weight a dense tensor (the kernels)."""
    gen = torch.Generator().manual_seed(0)
    w1 = torch.nn.Parameter(torch.randn(16, 12, dtype=dtype, generator=gen)[:, :8])
    b1 = torch.nn.Parameter(torch.randn(32, dtype=dtype, generator=gen)[::2])
    w2 = torch.nn.Parameter(torch.randn(3, 16, dtype=dtype, generator=gen) / 4)
    x, y = make_data(dtype)
    return [w1, b1, w2], lambda: ((torch.tanh(x @ w1.t() + b1) @ w2.t() - y) ** 2).mean()


def complex_layer(dtype: torch.dtype) -> Built:
    """A complex affine map (complex64 for float32, complex128 for float64)
    fitted in the squared modulus."""
    cdtype = (torch.zeros(1, dtype=dtype) * 1j).dtype
    gen = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(8, 4, dtype=cdtype, generator=gen))
    b = torch.nn.Parameter(torch.randn(4, dtype=cdtype, generator=gen))
    x = torch.randn(32, 8, dtype=cdtype, generator=gen)
    y = torch.randn(32, 4, dtype=cdtype, generator=gen)
    return [w, b], lambda: (x @ w + b - y).abs().pow(2).mean()


def sparse_embedding(dtype: torch.dtype) -> Built:
    """An embedding with sparse gradients (torch's arithmetic) under a dense
    linear layer (the kernels)."""
    torch.manual_seed(0)
    emb = torch.nn.Embedding(10, 4, sparse=True).to(dtype)
    lin = torch.nn.Linear(4, 3).to(dtype)
    index = torch.tensor([[1, 2, 2, 7], [0, 7, 9, 1]])
    y = torch.randn(2, 4, 3, dtype=dtype, generator=torch.Generator().manual_seed(1))
    return [emb.weight, lin.weight, lin.bias], lambda: ((lin(emb(index)) - y) ** 2).mean()


def mlp(dtype: torch.dtype) -> Built:
    """torch_helpers' MLP on its data."""
    model = make_model(dtype)
    x, y = make_data(dtype)
    return list(model.parameters()), lambda: mse(model, x, y)


class Run:
    """One side of a side-by-side run: parameters, optimizer, loss."""

    def __init__(self, build: Callable[[torch.dtype], Built], dtype: torch.dtype, cls,
                 flags: dict) -> None:
        self.params, loss = build(dtype)
        # Maximizing the negated loss converges as minimizing the loss does.
        self.loss = (lambda: -loss()) if flags.get("maximize") else loss
        self.opt = cls(self.params, lr=LR, **flags)

    def buffers(self) -> list[torch.Tensor | None]:
        return [self.opt.state[p].get("momentum_buffer") if p in self.opt.state else None
                for p in self.params]


def step_both(ours: Run, theirs: Run) -> None:
    """One step of each, with ours' gradients (a fresh backward) for both."""
    for p in ours.params:
        p.grad = None
    ours.loss().backward()
    for p, q in zip(ours.params, theirs.params, strict=True):
        q.grad = p.grad.clone()             # keeps the layout (or sparsity)
    ours.opt.step()
    theirs.opt.step()


def assert_same_state(ours: Run, theirs: Run, bitwise: set[int], ulps: float = ULPS) -> None:
    """Parameters and buffers equal: bit for bit at the positions in
    ``bitwise`` (torch's arithmetic on both sides), else within ``ulps``;
    buffers laid out as torch's."""
    pairs = [*zip(ours.params, theirs.params), *zip(ours.buffers(), theirs.buffers())]
    for k, (a, b) in enumerate(pairs):
        if a is None or b is None:
            assert a is b, k
            continue
        a, b = a.detach(), b.detach()
        assert (a.dtype, a.layout, a.shape) == (b.dtype, b.layout, b.shape), k
        if b.layout == torch.strided:
            assert a.stride() == b.stride(), (k, a.stride(), b.stride())
        if k % len(ours.params) in bitwise:
            assert torch.equal(a.to_dense(), b.to_dense()), k
        else:
            assert_within_ulps(a, b, ulps)


def side_by_side(build: Callable[[torch.dtype], Built], dtype: torch.dtype, flags: dict,
                 bitwise: set[int] = frozenset(), steps: int = STEPS) -> tuple[Run, Run, list]:
    """``steps`` steps of ours and torch.optim.SGD on ``build(dtype)``,
    compared after each (assert_same_state); returns both runs and the
    fallback warnings ours gave."""
    ours, theirs = Run(build, dtype, SGD, flags), Run(build, dtype, torch.optim.SGD, flags)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(steps):
            step_both(ours, theirs)
            assert_same_state(ours, theirs, bitwise)
    assert any(not torch.equal(p, q) for p, q in zip(ours.params, build(dtype)[0])), \
        "nothing trained"
    return ours, theirs, fallback_warnings(caught)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("flags", FLAGS, ids=flag_id)
def test_channels_last_cnn_is_stepped_by_the_kernels_as_torch(flags, dtype):
    ours, theirs, said = side_by_side(channels_last_cnn, dtype, flags)
    assert said == []
    weights = [k for k, p in enumerate(ours.params) if p.dim() == 4]
    assert len(weights) == 2
    for k in weights:
        p = ours.params[k]
        assert p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
        if flags["momentum"]:
            for buf in (ours.buffers()[k], theirs.buffers()[k]):
                assert buf.is_contiguous(memory_format=torch.channels_last)
                assert not buf.is_contiguous()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("flags", FLAGS, ids=flag_id)
def test_transposed_params_are_stepped_by_the_kernels_as_torch(flags, dtype):
    ours, theirs, said = side_by_side(transposed_mlp, dtype, flags)
    assert said == []
    for k in (0, 2):
        p = ours.params[k]
        assert not p.is_contiguous() and p.t().is_contiguous()
        assert p.grad.stride() == p.stride()
        if flags["momentum"]:
            assert ours.buffers()[k].stride() == p.stride()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("flags", FLAGS, ids=flag_id)
def test_sliced_params_are_stepped_with_torchs_arithmetic_as_torch(flags, dtype):
    ours, theirs, said = side_by_side(sliced_mlp, dtype, flags, bitwise={0, 1})
    assert said == ["momentum.torch.SGD: a parameter that is not dense (a slice or a "
                    "strided view): stepped with PyTorch's own SGD arithmetic, not the kernels"]
    assert not ours.params[0].is_contiguous() and not ours.params[1].is_contiguous()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("flags", FLAGS, ids=flag_id)
def test_complex_params_are_stepped_by_the_kernels_as_torch(flags, dtype):
    ours, theirs, said = side_by_side(complex_layer, dtype, flags)
    assert said == []
    assert all(p.is_complex() for p in ours.params)
    if flags["momentum"]:
        assert all(buf.is_complex() for buf in ours.buffers())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("flags", FLAGS, ids=flag_id)
def test_sparse_gradients_are_stepped_with_torchs_arithmetic_as_torch(flags, dtype):
    if flags["weight_decay"]:
        # torch.optim.SGD cannot add the decay to a sparse gradient: ours
        # raises its error, and has stepped no parameter, as it has not.
        ours, theirs = (Run(sparse_embedding, dtype, cls, flags) for cls in (SGD, torch.optim.SGD))
        errors = []
        for run in (ours, theirs):
            run.loss().backward()
            with warnings.catch_warnings(record=True), pytest.raises(RuntimeError) as info:
                warnings.simplefilter("always")
                run.opt.step()
            errors.append(str(info.value))
        assert errors[0] == errors[1] and "add(sparse, dense) is not supported" in errors[0]
        assert_same_state(ours, theirs, bitwise={0, 1, 2})
        return
    ours, theirs, said = side_by_side(sparse_embedding, dtype, flags, bitwise={0})
    assert said == ["momentum.torch.SGD: a tensor of layout torch.sparse_coo: stepped "
                    "with PyTorch's own SGD arithmetic, not the kernels"]
    if flags["momentum"]:
        assert ours.buffers()[0].is_sparse and not ours.buffers()[1].is_sparse


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("flags", FLAGS, ids=flag_id)
@pytest.mark.parametrize("build", [mlp, channels_last_cnn], ids=lambda b: b.__name__)
def test_16_bit_params_are_stepped_by_the_kernels_as_the_reference(build, flags, dtype):
    # torch's own 16-bit arithmetic rounds after every operation; the
    # kernels compute in float32 and round once, as momentum.reference does
    # (on the tensors' memory, in its order): bit for bit with it.
    params, loss = build(dtype)
    opt = SGD(params, lr=LR, **flags)
    shadow = Reference(params, lr=LR, **flags)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(STEPS):
            for p in params:
                p.grad = None
            (-loss() if flags["maximize"] else loss()).backward()
            shadow.step([p.grad for p in params])
            opt.step()
            for k, p in enumerate(params):
                assert_bitwise(p, shadow.params[k], f"parameter {k}")
                assert_bitwise(opt.state[p].get("momentum_buffer"), shadow.bufs[k],
                               f"buffer {k}")
    assert fallback_warnings(caught) == []
    assert any(not torch.equal(p, q) for p, q in zip(params, build(dtype)[0])), "nothing trained"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("flags", FLAGS, ids=flag_id)
def test_differentiable_is_stepped_with_torchs_arithmetic_as_torch(flags, dtype):
    # differentiable=True: the steps are recorded in the graph, so that a
    # loss after them can be differentiated with respect to what came before
    # (here the initial weights, through the decay and the buffers).  The
    # gradients stepped with are data, computed afresh each step: the steps
    # write the parameters in place, which a graph that saved them (as
    # create_graph=True would) cannot have.  Both sides build the same graph.
    results = []
    for cls in (SGD, torch.optim.SGD):
        leaves = [w.detach().requires_grad_() for w in make_model(dtype).parameters()]
        params = [w.clone() for w in leaves]   # not leaves: the steps are recorded
        x, y = make_data(dtype, rows=8)
        opt = cls(params, lr=LR, differentiable=True, **flags)

        def loss():
            hidden = torch.tanh(x @ params[0].t() + params[1])
            return ((hidden @ params[2].t() + params[3] - y) ** 2).mean()

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(5):
                grads = torch.autograd.grad(loss(), params)
                for p, g in zip(params, grads):
                    p.grad = g
                opt.step()
        outer = torch.autograd.grad(loss(), leaves)
        results.append(([p.detach() for p in params], outer, fallback_warnings(caught)))
    (params, outer, said), (params_torch, outer_torch, _) = results
    assert said == ["momentum.torch.SGD: differentiable=True: stepped with PyTorch's own "
                    "SGD arithmetic, not the kernels"]
    for a, b in zip([*params, *outer], [*params_torch, *outer_torch], strict=True):
        assert torch.equal(a, b)
    assert any(g.abs().max() > 0 for g in outer)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("build", [channels_last_cnn, complex_layer],
                         ids=lambda f: f.__name__)
def test_state_dicts_move_both_ways(build, dtype):
    # ours -> torch.optim.SGD -> ours continues as torch.optim.SGD alone, and
    # ours, loading torch's buffers (channels_last, complex), steps them with
    # the kernels.
    flags = dict(momentum=0.9, dampening=0.1, weight_decay=1e-2)
    moved, alone = Run(build, dtype, SGD, flags), Run(build, dtype, torch.optim.SGD, flags)
    phases = [SGD, torch.optim.SGD, SGD]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for phase, cls in enumerate(phases):
            if phase:
                opt = cls(moved.params, lr=LR, **flags)
                opt.load_state_dict(moved.opt.state_dict())
                moved.opt = opt
            for _ in range(10):
                step_both(moved, alone)
    assert fallback_warnings(caught) == []
    assert type(moved.opt) is SGD
    assert_same_state(moved, alone, bitwise=set(), ulps=2 * 10 * len(phases))
    for p, buf in zip(moved.params, moved.buffers()):
        assert buf.stride() == p.stride() and buf.dtype == p.dtype
