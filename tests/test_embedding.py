"""Other extensions build against momentum's C ABI and get its bits.

A small downstream Cython extension (``embedding/embed_cython.pyx``, which
``cimport``s ``momentum._kernels``) and a small plain-C one
(``embedding/embed_c.c``, ``#include "momentum.h"``) are built in a temporary
folder with setuptools, as a user would build them (``momentum.get_include()``
on the include path, the Python's default flags), against the momentum this
test imports (installed, or built in place with PYTHONPATH=src).  Each runs
momentum's sgd kernels through the kernel table, calling them directly and
through the table's threaded ``run``; the results must be bitwise those of
``momentum.sgd`` and of ``momentum.reference.sgd`` on copies.
"""
from __future__ import annotations

import ctypes
import importlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import momentum
import momentum._dispatch
from conftest import assert_bitwise_equal, busiest, case_id, flag_cases, offset_view, values
from momentum import reference
from momentum.rules import ABI_VERSION, RULES, kernel_name, kernel_slots

SOURCES = Path(__file__).parent / "embedding"
# Several tensors of the batch: one alone is past the threaded size, and
# their ends fall inside cache lines and vectors.
SIZES = (300_007, 17, 0, 70_001)
assert sum(SIZES) >= 256 * 1024
# Element offsets of the arrays in their allocations, so that few start on a
# vector boundary.
OFFSETS = (1, 2, 3)
MODES = {"direct": -1, "run-1-thread": 1, "run-2-threads": 2}
SGD_CASES = [("sgd", hyper, absent) for hyper, absent in flag_cases("sgd")]

SETUP = """\
from Cython.Build import cythonize
from setuptools import Extension, setup

include = [{include!r}]
extension = Extension({name!r}, [{source!r}], include_dirs=include)
if {source!r}.endswith(".pyx"):
    # momentum/_kernels.pxd is found in the folder that holds the package.
    extensions = cythonize([extension], include_path=[{packages!r}],
                           compiler_directives={{"language_level": 3}})
else:
    extensions = [extension]
setup(name={name!r}, ext_modules=extensions)
"""


def build(folder: Path, source: str) -> ModuleType:
    """Build ``source`` (from SOURCES) in ``folder`` with setuptools and import it."""
    name = source.rsplit(".", 1)[0]
    shutil.copy(SOURCES / source, folder / source)
    (folder / "setup.py").write_text(SETUP.format(
        include=momentum.get_include(), name=name, source=source,
        packages=str(Path(momentum.__file__).parent.parent)))
    result = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"],
                            cwd=folder, capture_output=True, text=True)
    assert result.returncode == 0, f"building {source} failed:\n{result.stdout}\n{result.stderr}"
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(folder))


@pytest.fixture(scope="module")
def embed_cython(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    return build(tmp_path_factory.mktemp("cython"), "embed_cython.pyx")


@pytest.fixture(scope="module")
def embed_c(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    return build(tmp_path_factory.mktemp("c"), "embed_c.c")


@pytest.fixture(params=["cython", "c"])
def ext(request: pytest.FixtureRequest) -> ModuleType:
    """Each downstream extension in turn."""
    return request.getfixturevalue(f"embed_{request.param}")


@pytest.fixture
def restore_isa() -> Iterator[None]:
    before = momentum.get_isa()
    yield
    momentum.set_isa(before)


@pytest.fixture
def two_threads() -> Iterator[None]:
    """Let momentum use two threads (the table's run uses no more than
    momentum would), whatever OMP_NUM_THREADS says; restored after."""
    momentum.set_num_threads(2)
    yield
    momentum.set_num_threads(0)


def batch(rng: np.random.Generator, dtype: str, absent: tuple[str, ...]) -> list[dict[str, Any]]:
    """One tensor's arrays per size of SIZES, at odd offsets; None where absent."""
    tensors = []
    for n in SIZES:
        arrays = {a.name: offset_view(values(rng, n, dtype), off)
                  for a, off in zip(RULES["sgd"].arrays, OFFSETS)}
        arrays.update(dict.fromkeys(absent))
        tensors.append(arrays)
    return tensors


def copied(tensors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: None if v is None else v.copy() for k, v in t.items()} for t in tensors]


def check_step(ext: ModuleType, rng: np.random.Generator, hyper: dict[str, Any],
               absent: tuple[str, ...], dtype: str) -> None:
    """Every mode of ``ext.sgd`` on one batch equals momentum.sgd and the
    reference on copies of it, bitwise."""
    start = batch(rng, dtype, absent)
    ours = copied(start)
    for t in ours:
        momentum.sgd(t["param"], t["grad"], t["buf"], **hyper)
    theirs = copied(start)
    with np.errstate(all="ignore"):
        for t in theirs:
            reference.sgd(t["param"], t["grad"], t["buf"], **hyper)
    for mode, nthreads in MODES.items():
        tensors = copied(start)
        ext.sgd([t["param"] for t in tensors], [t["grad"] for t in tensors],
                [t["buf"] for t in tensors], nthreads=nthreads, **hyper)
        for i, (got, want, spec) in enumerate(zip(tensors, ours, theirs)):
            for name in ("param", "grad", "buf"):
                if got[name] is not None:
                    what = f"{mode} tensor {i} (n={SIZES[i]}) {name}"
                    assert_bitwise_equal(got[name], want[name], f"{what} vs momentum.sgd")
                    assert_bitwise_equal(got[name], spec[name], f"{what} vs reference")


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("case", SGD_CASES, ids=case_id)
def test_downstream_sgd_matches_momentum(ext, case, dtype, rng, two_threads):
    _, hyper, absent = case
    check_step(ext, rng, hyper, absent, dtype)


@pytest.mark.parametrize("isa", momentum.available_isas())
def test_downstream_sgd_matches_under_every_build(ext, isa, rng, restore_isa, two_threads):
    momentum.set_isa(isa)
    assert ext.isa() == isa
    for dtype in ("float32", "float64", "float16"):
        check_step(ext, rng, busiest("sgd"), (), dtype)


def test_table_runs_the_current_build(ext, restore_isa):
    assert ext.isa() == momentum.get_isa() == momentum.available_isas()[-1]
    momentum.set_isa("baseline")
    assert ext.isa() == "baseline"


def test_table_kernels_follow_set_isa(embed_cython, restore_isa):
    """Each build puts its own kernels in the table that downstream code reads."""
    slot = kernel_slots().index((RULES["sgd"], ("float32",) * 3))
    addresses = {}
    for isa in momentum.available_isas():
        momentum.set_isa(isa)
        addresses[isa] = embed_cython.kernel_address(slot)
    assert 0 not in addresses.values()
    assert len(set(addresses.values())) == len(addresses), addresses


def test_table_names_every_slot(embed_c):
    """The table's names are kernel_name of each slot of momentum.rules, each
    built one is found by name in its slot, and built kernels are non-NULL."""
    slots = embed_c.slots()
    assert [name for name, _ in slots] == [kernel_name(r, d) for r, d in kernel_slots()]
    for rule in RULES.values():
        for dtype in ("float32", "float64"):
            i = kernel_slots().index((rule, (dtype,) * len(rule.arrays)))
            assert slots[i][1] != 0, slots[i]


def test_header_constants_follow_the_rule_table(embed_c):
    """momentum_rules.h, generated from momentum.rules, as a C user sees it."""
    sgd = RULES["sgd"]
    expected = {"ABI_VERSION": ABI_VERSION, "KERNEL_COUNT": len(kernel_slots()),
                "SGD_SLOT": kernel_slots().index((sgd, ("float32",) * 3))}
    expected |= {f"SGD_ARRAY_{a.name.upper()}": i for i, a in enumerate(sgd.arrays)}
    expected |= {f"SGD_HYPER_{h.name.upper()}": i for i, h in enumerate(sgd.hypers)}
    constants = embed_c.constants()
    assert {k: constants[k] for k in expected} == expected
    assert constants["MAX_ARRAYS"] >= max(len(r.arrays) for r in RULES.values())
    assert constants["MAX_HYPER"] >= max(len(r.hypers) for r in RULES.values())


def test_table_has_this_abi(ext):
    version, size = ext.check_import()
    assert version == ABI_VERSION
    assert size > 0


# A stand-in for momentum's capsule, to see what momentum_import_kernels()
# accepts.  The name must stay alive as long as the capsule.
CAPSULE_NAME = b"momentum._dispatch.KERNELS"


class FakeTable(ctypes.Structure):
    _fields_ = [("abi_version", ctypes.c_uint32), ("struct_size", ctypes.c_uint32),
                ("task_size", ctypes.c_uint32), ("rest", ctypes.c_char * 256)]


def task_size() -> int:
    """sizeof(momentum_task), as the running table says."""
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype = ctypes.c_void_p
    get.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return FakeTable.from_address(get(momentum._dispatch.KERNELS, CAPSULE_NAME)).task_size


def fake_capsule(table: FakeTable) -> object:
    new = ctypes.pythonapi.PyCapsule_New
    new.restype = ctypes.py_object
    new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    return new(ctypes.addressof(table), CAPSULE_NAME, None)


@pytest.mark.parametrize("change", ["newer ABI", "older ABI", "smaller table", "other task"])
def test_import_refuses_another_abi(ext, change, monkeypatch):
    _, size = ext.check_import()
    table = FakeTable(ABI_VERSION + (change == "newer ABI") - (change == "older ABI"),
                      size - 8 if change == "smaller table" else size,
                      task_size() + 8 * (change == "other task"))
    monkeypatch.setattr(momentum._dispatch, "KERNELS", fake_capsule(table))
    with pytest.raises(ImportError, match="rebuild it"):
        ext.check_import()


def test_import_accepts_a_grown_table(ext, monkeypatch):
    """struct_size may grow: new fields come after the ones an extension knows."""
    _, size = ext.check_import()
    table = FakeTable(ABI_VERSION, size + 64, task_size())
    monkeypatch.setattr(momentum._dispatch, "KERNELS", fake_capsule(table))
    assert ext.check_import() == (ABI_VERSION, size + 64)
