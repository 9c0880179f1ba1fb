"""Regression tests from a review of the 16-bit storage core: kahan keeps
-0.0 and infinities; foreach names the param of a tensor stepped without
its master; the Arena refuses a rounding its parameters cannot take; and
what no other test covered (the arena against the reference rather than
foreach, which it calls for stochastic rounding; element indices at and
past 2**32, through the C ABI)."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

import momentum
from momentum import _dispatch, foreach, reference
from momentum.dtypes import numpy_dtypes
from momentum.rules import MAX_ARRAYS, MAX_HYPER

HAVE = numpy_dtypes()
HALF = [pytest.param(d, id=d, marks=pytest.mark.skipif(d not in HAVE, reason="needs ml_dtypes"))
        for d in ("bfloat16", "float16")]


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint16)


# --------------------------------------------- kahan: -0.0 and infinities

@pytest.mark.parametrize("dtype", HALF)
def test_kahan_keeps_signed_zero_and_infinity_as_nearest_does(dtype):
    values = np.array([-0.0, 0.0, np.inf, -np.inf], np.float32)
    want = bits(values.astype(HAVE[dtype]))
    for impl in (momentum, reference):
        p = values.astype(HAVE[dtype])
        comp = np.zeros(4, HAVE[dtype])
        with np.errstate(all="ignore"):
            impl.sgd(p, np.zeros(4, HAVE[dtype]), None, lr=0.5, rounding="kahan", comp=comp)
        assert list(bits(p)) == list(want), impl.__name__


# ------------------------------ foreach: names when a master/comp is None

def test_foreach_names_the_param_of_a_task_without_master():
    p, g = np.zeros(4, np.float32), np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"'grads\[0\]' has shape \(3,\) but 'params\[0\]'"):
        foreach.sgd([p], [g], None, lr=0.1, rounding="master", masters=[None])


def test_foreach_overlap_names_the_param_of_a_task_without_master():
    block = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match=r"'params\[0\]' and 'grads\[1\]' overlap"):
        foreach.sgd([block[:4], np.zeros(4, np.float32)], [np.zeros(4, np.float32), block[2:6]],
                    None, lr=0.1, rounding="master", masters=[None, None])


# -------------------------------------------------------- the arena

def test_arena_refuses_a_rounding_its_params_cannot_take():
    with pytest.raises(TypeError, match="Arena"):
        momentum.Arena([(3,)], np.float32, rounding="kahan")


@pytest.mark.parametrize("rounding", ["nearest", "stochastic", "kahan", "master"])
@pytest.mark.parametrize("dtype", HALF)
def test_arena_steps_as_the_reference_on_each_tensor(rounding, dtype):
    """The arena against momentum.reference (tensor i keyed on i), not
    against foreach: for stochastic rounding the arena *is* foreach."""
    rng = np.random.default_rng(5)
    shapes = [(3, 5), (0,), (130,), (1,)]
    start = [rng.standard_normal(s).astype(HAVE[dtype]) for s in shapes]
    arena = momentum.Arena.from_arrays(start, dtypes={"buf": np.float32}, rounding=rounding,
                                       state_rounding="stochastic")
    grads = [rng.standard_normal(s).astype(HAVE[dtype]) for s in shapes]
    for v, g in zip(arena.grad_views, grads):
        v[...] = g
    ps = [a.copy() for a in start]
    bs = [np.zeros(s, np.float32) for s in shapes]
    extra = {"kahan": [np.zeros(s, HAVE[dtype]) for s in shapes],
             "master": [a.astype(np.float32) for a in start]}.get(rounding)
    for step in range(3):
        arena.sgd(lr=0.1, momentum=0.9, weight_decay=0.01, seed=7, step=step)
        for i, (p, g, b) in enumerate(zip(ps, grads, bs)):
            kw = {} if extra is None else {"comp" if rounding == "kahan" else "master": extra[i]}
            reference.sgd(p, g, b, lr=0.1, momentum=0.9, weight_decay=0.01, rounding=rounding,
                          state_rounding="stochastic", seed=7, step=step, tensor=i, **kw)
    for a, b in zip(arena.param_views, ps):
        assert np.array_equal(bits(a), bits(b))


# ------------------------------------- element indices at and past 2**32

class Task(ctypes.Structure):
    _fields_ = [("kernel", ctypes.c_void_p), ("n", ctypes.c_size_t),
                ("offset", ctypes.c_size_t), ("arrays", ctypes.c_void_p * MAX_ARRAYS),
                ("hyper", ctypes.c_double * MAX_HYPER), ("rounding", ctypes.c_uint32),
                ("stochastic", ctypes.c_uint32), ("extra_dtype", ctypes.c_uint32),
                ("reserved", ctypes.c_uint32), ("seed", ctypes.c_uint64),
                ("step", ctypes.c_uint64), ("tensor", ctypes.c_uint64)]


class Table(ctypes.Structure):
    _fields_ = [("abi_version", ctypes.c_uint32), ("struct_size", ctypes.c_uint32),
                ("task_size", ctypes.c_uint32), ("reserved", ctypes.c_uint32),
                ("isa", ctypes.c_char_p), ("count", ctypes.c_size_t),
                ("kernels", ctypes.POINTER(ctypes.c_void_p)),
                ("names", ctypes.POINTER(ctypes.c_char_p)), ("run", ctypes.c_void_p)]


KERNEL = ctypes.CFUNCTYPE(None, ctypes.POINTER(Task), ctypes.c_size_t, ctypes.c_size_t)


def kernel_named(name: str) -> int:
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    table = Table.from_address(get(_dispatch.KERNELS, b"momentum._dispatch.KERNELS"))
    assert table.task_size == ctypes.sizeof(Task)
    for i in range(table.count):
        if table.names[i] == name.encode():
            return table.kernels[i]
    raise KeyError(name)


@pytest.mark.parametrize("grad_dtype", ["float32", "same"])
@pytest.mark.parametrize("dtype", HALF)
def test_stochastic_bits_past_two_to_the_32(isa, dtype, grad_dtype):
    """Elements 2**32 - 700 .. 2**32 + 800 of a tensor, run through the C
    ABI (the arrays' pointers moved back by ``start`` so only these
    elements are touched): the chunk that crosses 2**32 is split, and each
    side is keyed on its own high bits, as reference.random_bits says; and
    a range wholly past it (a 16-bit grad too: a layout the AVX-512 builds
    run in _vector16.h where it rounds to nearest)."""
    for start in ((1 << 32) - 700, (1 << 32) + 100):
        stochastic_past_two_to_the_32(dtype, grad_dtype, start, 1500)


def stochastic_past_two_to_the_32(dtype: str, grad_dtype: str, start: int, n: int) -> None:
    grad = (1 + np.random.default_rng(1).random(n) * 1e-2).astype(np.float32)
    if grad_dtype == "same":
        grad = grad.astype(HAVE[dtype])
    buf = np.zeros(n, HAVE[dtype])
    task = Task()
    task.kernel = kernel_named(f"update_buffer:{dtype},{grad.dtype.name}")
    task.n = start + n
    task.arrays[0] = buf.ctypes.data - start * 2
    task.arrays[1] = grad.ctypes.data - start * grad.itemsize
    task.hyper[0], task.hyper[1] = 0.0, 0.25   # buf = 0.75 * grad: bits below the 16 kept
    task.stochastic, task.seed, task.step, task.tensor = 1, 5, 6, 7
    KERNEL(task.kernel)(ctypes.byref(task), start, n)
    bits_here = reference.random_bits(n, seed=5, step=6, tensor=7, array=0, first=start)
    want = reference.round_stochastic(np.float32(0.75) * grad.astype(np.float32), HAVE[dtype],
                                      bits_here)
    assert np.array_equal(bits(buf), bits(want))


