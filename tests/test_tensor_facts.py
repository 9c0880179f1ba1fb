"""momentum._tensor_facts.Fact: a torch.Tensor method or property asked in C
answers as the Python call does, errors included."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from momentum._tensor_facts import Fact  # noqa: E402

METHODS = ["data_ptr", "numel", "is_contiguous", "is_neg"]
PROPERTIES = ["grad", "dtype", "shape", "is_cpu", "layout"]


def tensors() -> list:
    p = torch.nn.Parameter(torch.arange(6.0).reshape(2, 3))
    p.grad = torch.ones(2, 3)
    return [p, torch.zeros(4, dtype=torch.float64), torch.ones(3, 4).t(),
            torch.ones(0), torch.tensor(2.5), torch._neg_view(torch.ones(3)),
            torch.ones(2, 2).to_sparse(), torch.ones(3, device="meta")]


def python_answer(name: str, t):
    value = getattr(t, name)
    return value() if name in METHODS else value


@pytest.mark.parametrize("name", METHODS + PROPERTIES)
def test_fact_answers_as_python_does(name):
    fact = Fact(getattr(torch.Tensor, name))
    assert fact.direct                        # on the pinned torch, straight in C
    for t in tensors():
        try:
            expected = python_answer(name, t)
        except Exception as error:             # e.g. data_ptr of a sparse tensor
            with pytest.raises(type(error), match=str(error)[:40]):
                fact(t)
        else:
            answer = fact(t)
            if isinstance(expected, torch.Tensor):
                assert answer is expected     # p.grad: the same tensor object
            else:
                assert answer == expected and type(answer) is type(expected)


@pytest.mark.parametrize("name", ["data_ptr", "dtype"])
@pytest.mark.parametrize("other", [None, 3.0, "tensor", object()])
def test_fact_of_a_non_tensor_is_a_type_error(name, other):
    with pytest.raises(TypeError, match="not a tensor"):
        Fact(getattr(torch.Tensor, name))(other)


def test_a_descriptor_of_another_form_is_called_through_python():
    fact = Fact(torch._C.TensorBase.__len__)  # a slot wrapper, not a method descriptor
    assert not fact.direct
    assert fact(torch.ones(5, 2)) == 5


def test_python_properties_and_functions_are_called_through_python():
    class Tensor(torch.Tensor):
        @property
        def doubled(self):
            return 2 * self.numel()

        def tripled(self):
            return 3 * self.numel()

    t = torch.ones(5).as_subclass(Tensor)
    for name, expected in (("doubled", 10), ("tripled", 15)):
        fact = Fact(getattr(Tensor, name))
        assert not fact.direct
        assert fact(t) == expected
