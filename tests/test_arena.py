"""momentum.Arena: views alias three flat blocks; one step equals per-tensor steps."""
from __future__ import annotations

import numpy as np
import pytest

import momentum
from momentum import reference

SHAPES = [(3, 4), (17,), (0,), (2, 3, 5), (1,), (64,), (5, 7)]


def filled(arena, seed=0):
    """Random values in every view; the padding stays zero."""
    rng = np.random.default_rng(seed)
    for views in (arena.param_views, arena.grad_views, arena.buf_views):
        for v in views:
            v[...] = rng.standard_normal(v.shape)
    return arena


def address_range(view):
    start = view.ctypes.data
    return start, start + view.nbytes


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_views_alias_blocks_are_aligned_and_apart(dtype):
    arena = momentum.Arena(SHAPES, dtype=dtype)
    for block, views in ((arena.params, arena.param_views),
                         (arena.grads, arena.grad_views),
                         (arena.bufs, arena.buf_views)):
        assert block.ndim == 1 and block.dtype == dtype and block.flags.c_contiguous
        assert [v.shape for v in views] == SHAPES
        ranges = sorted(address_range(v) for v in views if v.size)
        lo, hi = address_range(block)
        for (start, end), (next_start, _) in zip(ranges, ranges[1:]):
            assert end <= next_start
        for v in views:
            assert np.shares_memory(v, block) or v.size == 0
            assert v.ctypes.data % 64 == 0
            assert lo <= v.ctypes.data and v.ctypes.data + v.nbytes <= hi
    assert not np.shares_memory(arena.params, arena.grads)
    assert not np.shares_memory(arena.params, arena.bufs)
    assert not np.shares_memory(arena.grads, arena.bufs)


def test_writing_a_view_writes_the_block():
    arena = momentum.Arena(SHAPES)
    arena.param_views[1][...] = 7
    start = arena.offsets[1]
    assert (arena.params[start:start + 17] == 7).all()
    assert arena.params.sum() == 7 * 17


def test_from_arrays_copies_values():
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal(s) for s in SHAPES]
    arena = momentum.Arena.from_arrays(arrays)
    assert arena.dtype == np.float64
    for view, a in zip(arena.param_views, arrays):
        assert np.array_equal(view, a) and not np.shares_memory(view, a)
    assert not arena.grads.any() and not arena.bufs.any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rule, hyper", [
    ("sgd", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("sgd", dict(lr=0.1, momentum=0.9, first_step=True, maximize=True)),
    ("sgd", dict(lr=0.1)),
    ("heavy_ball", dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    ("update_buffer", dict(momentum=0.9, dampening=0.9)),
])
def test_step_equals_per_tensor_reference(dtype, rule, hyper):
    arena = filled(momentum.Arena(SHAPES, dtype=dtype))
    want = [[v.copy() for v in views]
            for views in (arena.param_views, arena.grad_views, arena.buf_views)]
    for p, g, b in zip(*want):
        if rule == "update_buffer":
            reference.update_buffer(b, g, **hyper)
        else:
            getattr(reference, rule)(p, g, b, **hyper)
    getattr(arena, rule)(**hyper)
    for got, expected in zip((arena.param_views, arena.buf_views), (want[0], want[2])):
        for g, e in zip(got, expected):
            assert g.tobytes() == e.tobytes()
    # Padding is still zero everywhere.
    for block, views in ((arena.params, arena.param_views), (arena.bufs, arena.buf_views)):
        mask = np.ones(block.size, bool)
        for start, v in zip(arena.offsets, views):
            mask[start:start + v.size] = False
        assert not block[mask].any()


def test_zero_grad_and_bad_dtype():
    arena = filled(momentum.Arena(SHAPES))
    arena.zero_grad()
    assert not arena.grads.any()
    with pytest.raises(TypeError, match="'dtype' must be one of float32, float64, bfloat16, float16"):
        momentum.Arena(SHAPES, dtype=np.int32)
    with pytest.raises(ValueError, match="negative dimension"):
        momentum.Arena([(3, -1)])


def test_bad_hyperparameters_name_the_single_api():
    arena = filled(momentum.Arena(SHAPES))
    before = arena.params.copy()
    with pytest.raises(ValueError, match=r"sgd\(\): 'lr' must be finite"):
        arena.sgd(lr=-1.0)
    assert arena.params.tobytes() == before.tobytes()


def test_torch_wraps_the_blocks_without_a_copy():
    torch = pytest.importorskip("torch")
    arena = filled(momentum.Arena(SHAPES))
    tensors = [torch.from_numpy(v) for v in arena.param_views]
    flat = torch.from_numpy(arena.params)
    want = [v.copy() for v in arena.param_views]
    for p, g, b in zip(want, arena.grad_views, [v.copy() for v in arena.buf_views]):
        reference.sgd(p, g, b, lr=0.1, momentum=0.9)
    arena.sgd(lr=0.1, momentum=0.9)
    for t, w in zip(tensors, want):
        assert t.numpy().tobytes() == w.tobytes()
    assert flat.data_ptr() == arena.params.ctypes.data
