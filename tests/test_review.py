"""Regression tests for what a review of the rule-table reshaping found.

* A NumPy complex scalar given as a real hyperparameter was taken (its
  imaginary part dropped, with only a ComplexWarning), where a Python complex
  is refused.
* A flag or a real whose conversion raises (``nesterov=np.array([True,
  False])``, a ``__float__`` that raises ValueError such as
  ``Decimal('sNaN')``'s) let that error out as it was, naming no argument.
* The kernel table's ``run`` skipped tasks silently on several threads when
  the caller's offsets did not lay the tasks end to end (left 0, say); on one
  thread it ran them all.
* codegen accepted a rule whose per-tensor hyperparameter has a condition or
  decides whether an array is used: foreach reads both per group, with the
  per-tensor value taken as False, so the condition went unchecked and the
  array unread (its Place uninitialised) where a tensor set it.
"""
from __future__ import annotations

import ctypes
import importlib.util
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import momentum
import momentum._dispatch
import momentum.foreach as fe
from conftest import ARGS, assert_bitwise_equal, untouched, values
from momentum import reference
from momentum.rules import MAX_ARRAYS, MAX_HYPER, RULES, Array, Hyper, Rule, kernel_name

from test_bad_input import HYPER, assert_rejected, good_arrays

REAL_HYPERS = [(rule, h.name) for rule, spec in RULES.items() for h in spec.hypers
               if h.check != "flag"]
FLAGS = [(rule, h.name) for rule, spec in RULES.items() for h in spec.hypers
         if h.check == "flag"]


def foreach_call(rule: str, arrays: dict[str, Any], hyper: dict[str, Any]) -> None:
    getattr(fe, rule)(*([arrays[k]] for k in ARGS[rule]), **hyper)


# ------------------------------------------------------------ hyperparameters

@pytest.mark.parametrize("complex_type", [np.complex64, np.complex128])
@pytest.mark.parametrize("rule, name", REAL_HYPERS)
def test_numpy_complex_hyperparameter_is_refused(rule, name, complex_type):
    # As for a Python complex (test_bad_input): TypeError naming it, nothing
    # written, and no ComplexWarning on the way (it would be an error under
    # -W error, naming nothing).
    hyper = dict(HYPER[rule], **{name: complex_type(0.25 + 0.5j)})
    arrays = good_arrays(rule)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_rejected(rule, arrays, hyper, TypeError, f"'{name}'", "real number")
        with untouched(arrays), pytest.raises(TypeError, match=f"'{name}'"):
            foreach_call(rule, arrays, hyper)


class FloatRaises:
    """A number whose conversion to float fails with ValueError."""

    def __float__(self) -> float:
        raise ValueError("no float here")


@pytest.mark.parametrize("rule, name", REAL_HYPERS)
def test_real_whose_conversion_raises_is_named(rule, name):
    hyper = dict(HYPER[rule], **{name: FloatRaises()})
    assert_rejected(rule, good_arrays(rule), hyper, ValueError, f"'{name}'", "no float here")


@pytest.mark.parametrize("rule, name", FLAGS)
def test_flag_without_a_truth_value_is_named(rule, name):
    # NumPy refuses the truth value of a 2-element array with a ValueError
    # that names no argument; the call must name the flag.
    spec = RULES[rule]
    hyper = dict(HYPER[rule], **{name: np.array([True, False])})
    arrays = good_arrays(rule)
    assert_rejected(rule, arrays, hyper, TypeError, f"'{name}'", "ndarray")
    if name not in spec.per_tensor:   # a per-tensor flag takes a sequence
        with untouched(arrays), pytest.raises(TypeError, match=f"'{name}'"):
            foreach_call(rule, arrays, hyper)


@pytest.mark.parametrize("value", [1, np.bool_(True), np.float64(1.0)])
def test_flags_still_take_any_value_with_a_truth_value(value):
    # As PyTorch does (and momentum did): the refusal above is only for
    # objects whose truth value cannot be had.
    a = {k: np.full(4, 1.0) for k in ("param", "grad", "buf")}
    b = {k: v.copy() for k, v in a.items()}
    momentum.sgd(a["param"], a["grad"], a["buf"], lr=0.1, momentum=0.9, nesterov=value)
    reference.sgd(b["param"], b["grad"], b["buf"], lr=0.1, momentum=0.9, nesterov=True)
    for k in a:
        assert_bitwise_equal(a[k], b[k], k)


# ------------------------------------------------------- the C table's run()

class Task(ctypes.Structure):
    _fields_ = [("kernel", ctypes.c_void_p), ("n", ctypes.c_size_t),
                ("offset", ctypes.c_size_t), ("arrays", ctypes.c_void_p * MAX_ARRAYS),
                ("hyper", ctypes.c_double * MAX_HYPER), ("rounding", ctypes.c_uint32),
                ("stochastic", ctypes.c_uint32), ("extra_dtype", ctypes.c_uint32),
                ("reserved", ctypes.c_uint32), ("seed", ctypes.c_uint64),
                ("step", ctypes.c_uint64), ("tensor", ctypes.c_uint64)]


RUN = ctypes.CFUNCTYPE(None, ctypes.POINTER(Task), ctypes.c_size_t, ctypes.c_int)


class Table(ctypes.Structure):
    """momentum_kernel_table of momentum.h, as far as run()."""
    _fields_ = [("abi_version", ctypes.c_uint32), ("struct_size", ctypes.c_uint32),
                ("task_size", ctypes.c_uint32), ("reserved", ctypes.c_uint32),
                ("isa", ctypes.c_char_p), ("count", ctypes.c_size_t),
                ("kernels", ctypes.POINTER(ctypes.c_void_p)),
                ("names", ctypes.POINTER(ctypes.c_char_p)), ("run", RUN)]


def kernel_table() -> Table:
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype = ctypes.c_void_p
    get.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return Table.from_address(get(momentum._dispatch.KERNELS, b"momentum._dispatch.KERNELS"))


@pytest.fixture
def two_threads():
    before = momentum.get_num_threads()
    momentum.set_num_threads(2)
    yield
    momentum.set_num_threads(0)
    assert momentum.get_num_threads() == before


@pytest.mark.parametrize("offsets", ["end to end", "all 0", "reversed"])
def test_table_run_steps_every_task_whatever_the_offsets(offsets, rng, two_threads):
    # The first and the last task alone are past the threaded size (128 Ki
    # elements), so that the batch runs on two threads however run() sums it.
    table = kernel_table()
    names = [table.names[i].decode() for i in range(table.count)]
    kernel = table.kernels[names.index(kernel_name(RULES["sgd"], ("float64",) * 3))]
    sizes = (150_001, 17, 200_003)
    params = [values(rng, n, np.float64) for n in sizes]
    grads = [values(rng, n, np.float64) for n in sizes]
    expected = [p.copy() for p in params]
    for p, g in zip(expected, grads):
        reference_sgd_plain(p, g)
    ends = np.cumsum((0,) + sizes)
    # "reversed": where each task would start were the tasks laid last first.
    starts = {"end to end": ends[:-1], "all 0": [0] * len(sizes),
              "reversed": ends[-1] - ends[1:]}[offsets]
    tasks = (Task * len(sizes))()
    for i, n in enumerate(sizes):
        tasks[i].kernel, tasks[i].n, tasks[i].offset = kernel, n, int(starts[i])
        tasks[i].arrays[0] = params[i].ctypes.data
        tasks[i].arrays[1] = grads[i].ctypes.data
        tasks[i].hyper[0] = 0.1   # lr; momentum 0, so no buf
    table.run(tasks, len(sizes), 2)
    for i, (p, e) in enumerate(zip(params, expected)):
        assert_bitwise_equal(p, e, f"task {i}")


def reference_sgd_plain(param: np.ndarray, grad: np.ndarray) -> None:
    with np.errstate(all="ignore"):
        reference.sgd(param, grad, None, lr=0.1)


# ----------------------------------------------------------------- codegen

def load_codegen() -> types.ModuleType:
    path = Path(__file__).resolve().parent.parent / "codegen.py"
    if not path.exists():
        pytest.skip("codegen.py is not beside the tests (an installed copy of them)")
    spec = importlib.util.spec_from_file_location("_review_codegen", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_with(rule: Rule) -> types.SimpleNamespace:
    """A stand-in for momentum.rules holding only ``rule``."""
    rules = sys.modules["momentum.rules"]
    return types.SimpleNamespace(RULES={rule.name: rule}, MAX_ARRAYS=MAX_ARRAYS,
                                 MAX_HYPER=MAX_HYPER, DTYPES=rules.DTYPES)


def test_codegen_accepts_the_table():
    load_codegen().validate(sys.modules["momentum.rules"])


@pytest.mark.parametrize("hazard", ["when", "requires"])
def test_codegen_refuses_a_per_tensor_hyperparameter_read_per_group(hazard):
    rule = Rule(name="odd", summary="", formula="",
                arrays=(Array("param", written=True),
                        Array("buf", written=True, when="first" if hazard == "when" else None)),
                hypers=(Hyper("lr", "rate"),
                        Hyper("first", "flag", False,
                              requires="lr > 0" if hazard == "requires" else None)),
                per_tensor=("first",))
    with pytest.raises(ValueError, match="per tensor"):
        load_codegen().validate(table_with(rule))
