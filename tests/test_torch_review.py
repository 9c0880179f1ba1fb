"""Review findings on momentum.torch.SGD, each against torch.optim.SGD side by side."""
from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")

from momentum.torch import SGD  # noqa: E402

F64 = torch.float64


def _sparse_case(kind: str):
    """Three parameters: a float64 one the kernels step, a float16 one and a
    last one torch's arithmetic steps, whose sparse gradient or buffer
    torch's SGD arithmetic cannot add a dense tensor to (``kind``); the
    hyperparameters, and a step that sets the gradients."""
    r = torch.nn.Parameter(torch.tensor([5.0, 6.0], dtype=F64))
    h = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float16))
    q = torch.nn.Parameter(torch.tensor([3.0, 4.0], dtype=F64))
    hyper = {"weight_decay": {"lr": 0.5, "weight_decay": 0.5},
             "sparse buffer": {"lr": 0.5, "momentum": 0.5},
             "nesterov": {"lr": 0.5, "momentum": 0.5, "nesterov": True}}[kind]

    def set_grads(step: int) -> None:
        r.grad = torch.ones(2, dtype=F64)
        h.grad = torch.ones(2, dtype=torch.float16)
        # sparse buffer: a sparse first gradient makes q a sparse buffer,
        # the dense second one cannot be added to it.  nesterov: the dense
        # first gradient makes a dense buffer, the sparse second one cannot
        # take it.
        sparse = {"weight_decay": True, "sparse buffer": step == 0,
                  "nesterov": step == 1}[kind]
        g = torch.ones(2, dtype=F64)
        q.grad = g.to_sparse() if sparse else g
    return [r, h, q], hyper, set_grads


@pytest.mark.parametrize("kind", ["weight_decay", "sparse buffer", "nesterov"])
def test_sparse_tensor_torch_cannot_add_to_raises_torchs_error_before_anything_is_written(kind):
    # torch.optim.SGD raises midway: the parameters before the sparse one
    # are stepped (and a sparse buffer scaled).  Ours raises the same error
    # before writing any tensor of any share.
    errors = []
    for cls in (SGD, torch.optim.SGD):
        params, hyper, set_grads = _sparse_case(kind)
        opt = cls(params, **hyper)
        steps = 1 if kind == "weight_decay" else 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the fallback's
            for step in range(steps - 1):
                set_grads(step)
                opt.step()
            set_grads(steps - 1)
            before = [p.detach().clone() for p in params]
            bufs = [b.clone() for b in (opt.state.get(p, {}).get("momentum_buffer")
                                        for p in params) if b is not None]
            with pytest.raises(RuntimeError) as info:
                opt.step()
        errors.append(str(info.value))
        after = [p.detach() for p in params]
        now = [b for b in (opt.state.get(p, {}).get("momentum_buffer") for p in params)
               if b is not None]
        if cls is SGD:
            assert all(torch.equal(a, b) for a, b in zip(after, before))
            assert all(torch.equal(a.to_dense(), b.to_dense()) for a, b in zip(now, bufs))
        else:  # torch's own step is half written: the reason for the early check
            assert not torch.equal(after[0], before[0])
    assert errors[0] == errors[1] and "add(sparse, dense)" in errors[0]


def test_after_the_refused_sparse_step_a_dense_step_matches_torch():
    # The refusal leaves no stale plan and nothing written: once the
    # gradients are dense, ours steps as torch.optim.SGD that never saw the
    # sparse one.
    results = []
    for cls in (SGD, torch.optim.SGD):
        params, hyper, set_grads = _sparse_case("weight_decay")
        opt = cls(params, **hyper)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if cls is SGD:
                set_grads(0)
                with pytest.raises(RuntimeError):
                    opt.step()
            for _ in range(2):
                for p in params:
                    p.grad = torch.full_like(p, 0.5)
                opt.step()
        results.append([p.detach().clone() for p in params])
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_complex_parameters_step_as_their_real_view_signed_zeros_and_infinities_too():
    # momentum's definition (README): SGD on a complex tensor is SGD on its
    # real view.  torch.optim.SGD on the complex tensor multiplies by lr as the
    # complex number lr + 0j, whose cross terms can flip the sign of a zero
    # component (p = -0 + 0j, grad = 0 - 1j, lr = 0.5: torch's real part is
    # +0) or turn an infinite component's partner into NaN; torch.optim.SGD
    # on the real views gives exactly ours (README, "What a step runs on").
    values = [complex(-0.0, 0.0), complex(0.0, -1.0), complex(1.0, float("inf")),
              complex(-2.5, 0.25)]
    ours = torch.nn.Parameter(torch.tensor(values, dtype=torch.complex128))
    ours.grad = torch.tensor(values[::-1], dtype=torch.complex128)
    real = torch.nn.Parameter(torch.view_as_real(ours.detach()).clone())
    real.grad = torch.view_as_real(ours.grad).clone()
    for opt in (SGD([ours], lr=0.5, momentum=0.5, weight_decay=0.25),
                torch.optim.SGD([real], lr=0.5, momentum=0.5, weight_decay=0.25)):
        opt.step()
        opt.step()
    got, want = torch.view_as_real(ours.detach()), real.detach()
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    finite = ~torch.isnan(want)
    assert torch.equal(got[finite], want[finite])
    assert torch.equal(torch.signbit(got[finite]), torch.signbit(want[finite]))


SUBCLASS_FREES_A_KERNEL_TENSOR = r"""
import warnings
import torch
from momentum.torch import SGD

warnings.simplefilter("ignore", RuntimeWarning)
N = 1 << 16          # 512 KiB: freed memory goes back to the system
victim = torch.nn.Parameter(torch.zeros(N, dtype=torch.float64))


class Sneaky(torch.Tensor):
    # Its Python code runs while torch's arithmetic steps it, and replaces
    # (frees) the memory of a parameter the kernels step.
    fired = False

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if not Sneaky.fired and getattr(func, "__name__", "") == "add_":
            Sneaky.fired = True
            victim.data = torch.full((N,), 7.0, dtype=torch.float64)
        return super().__torch_function__(func, types, args, kwargs or {})


s = Sneaky(torch.ones(4, dtype=torch.float64)).requires_grad_()
opt = SGD([s, victim], lr=0.5)
s.grad = torch.ones(4, dtype=torch.float64)
victim.grad = torch.ones(N, dtype=torch.float64)
opt.step()
assert Sneaky.fired
assert torch.equal(s.detach(), torch.full((4,), 0.5, dtype=torch.float64))
print(victim[0].item())
"""


def test_torch_share_freeing_a_kernel_tensor_does_not_make_the_kernels_write_freed_memory():
    # The kernels hold the tensors' addresses from the checks to their run;
    # Python code run by torch's share (a subclass's __torch_function__)
    # must not come in between.  Run apart: a write to freed memory may kill
    # the process.
    import os
    import subprocess
    import sys
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", SUBCLASS_FREES_A_KERNEL_TENSOR],
                          capture_output=True, text=True, env=env, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    # the kernels stepped the old memory, then the subclass replaced it
    assert done.stdout.split() == ["7.0"]


@pytest.mark.parametrize("where", ["another group", "the same group"])
@pytest.mark.parametrize("flat", [False, True])
def test_parameter_put_twice_into_the_groups_is_refused_not_stepped_once(flat, where):
    # torch.optim.SGD steps such a parameter twice; a flat group can hold
    # it in one arena only, so it was stepped once, silently.  Both modes
    # now refuse it, before anything is written.
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=F64))
    q = torch.nn.Parameter(torch.tensor([3.0], dtype=F64))
    opt = SGD([{"params": [p]}, {"params": [q]}], lr=0.5, flat=flat)
    opt.param_groups[1 if where == "another group" else 0]["params"].append(p)
    p.grad = torch.ones(2, dtype=F64)
    q.grad = torch.ones(1, dtype=F64)
    with pytest.raises(ValueError, match=r"parameter 0 \(param_groups\[0\]\['params'\]\[0\]\) "
                                         r"and parameter \d .* overlap in memory"):
        opt.step()
    assert p.tolist() == [1.0, 2.0] and q.tolist() == [3.0]


@pytest.mark.parametrize("rounding", ["nearest", "master"])
def test_a_step_that_passes_its_checks_names_no_tensor(monkeypatch, rounding):
    """A tensor's name ('the grad of parameter 3 (...)') is worded only for
    an error: making three per parameter every step cost more than the
    checks themselves (4.6 ms a step of 1,000 tensors instead of 1.3)."""
    params = [torch.nn.Parameter(torch.randn(8, dtype=torch.bfloat16)) for _ in range(3)]
    opt = SGD(params, lr=0.1, momentum=0.9, rounding=rounding)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()

    def no_names(*args):
        raise AssertionError("a tensor was named on a step that passed its checks")

    monkeypatch.setattr(opt, "_name", no_names)
    for _ in range(2):
        for p in params:
            p.grad = torch.randn_like(p)   # new gradients: checked again
        opt.step()
    monkeypatch.undo()
    # a failing check still names its tensors: a new gradient that is
    # another parameter's memory
    params[1].grad = params[0].detach()
    with pytest.raises(ValueError, match=r"parameter 0 .* and the grad of parameter 1 .* "
                                         r"overlap in memory"):
        opt.step()
