"""Type checkers see the compiled API: the stubs and `py.typed` ship, mypy accepts
correct use and flags misuse, and stubtest finds the stubs' signatures equal to
the compiled functions' own.

mypy runs in a subprocess on the momentum this test imports (built in place
with PYTHONPATH=src, or installed), in a fresh folder with no configuration.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import momentum

pytest.importorskip("mypy", reason="mypy is in the test extra: pip install '.[test]'")

PACKAGE = Path(momentum.__file__).parent

GOOD = """\
    import array
    from typing import Any

    import numpy as np
    from numpy.typing import NDArray

    import momentum
    import momentum.foreach

    p: NDArray[np.floating[Any]] = np.zeros(4, np.float32)
    g = np.ones(4, np.float32)
    b = np.zeros(4, np.float32)
    momentum.sgd(p, g, b, lr=0.1, momentum=np.float32(0.9), nesterov=True, first_step=True)
    momentum.sgd(p, g, None, lr=1, weight_decay=1e-4, maximize=np.bool_(True))
    momentum.update_buffer(b, array.array("f", [1.0] * 4), momentum=0.9, dampening=0.9)
    momentum.heavy_ball(np.ones(3), np.ones(3), np.zeros(3), lr=0.1, momentum=0.9)
    momentum.foreach.sgd([p], (g,), [b], lr=0.1, momentum=0.9, first_step=[False])
    momentum.foreach.sgd([p], [g], None, lr=0.1)
    momentum.foreach.update_buffer([b], [g], momentum=0.9)
    momentum.foreach.heavy_ball([p], [g], [b], lr=0.1, momentum=0.9, nesterov=True)
    momentum.foreach.sgd_groups([{"params": [p], "grads": [g], "bufs": [b], "lr": 0.1,
                                  "momentum": 0.9}])
"""

# Each call is wrong both for mypy (the error code it must report) and at run
# time (TypeError): the stubs refuse what the functions refuse.
MISUSES = {
    'momentum.sgd(p, g, b, lr="x")': "arg-type",
    "momentum.sgd(p, g, b, lr=0.1, momentom=0.9)": "call-arg",
    "momentum.sgd(p, g, b, 0.1)": "call-arg",              # lr is keyword-only
    "momentum.update_buffer(b, g)": "call-arg",            # momentum is required
    "momentum.heavy_ball(p, g, None, lr=0.1, momentum=0.9)": "arg-type",
    "momentum.foreach.sgd(p, g, b, lr=0.1)": "arg-type",   # arrays, not sequences
    "momentum.foreach.heavy_ball([p], [g], [b], lr=0.1, momentum=0.9, dampening=0.0)":
        "call-arg",
}
BAD_PRELUDE = """\
import numpy as np
import momentum
import momentum.foreach
p, g, b = np.zeros(4, np.float32), np.ones(4, np.float32), np.zeros(4, np.float32)
"""


class Checker:
    """Runs mypy or stubtest in a fresh folder on the momentum imported here."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.config = folder / "mypy.ini"
        self.config.write_text("[mypy]\n")
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(PACKAGE.parent), os.environ.get("PYTHONPATH", "")])}

    def mypy(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self._run("mypy", "--config-file", str(self.config),
                         "--cache-dir", str(self.folder / "cache"), *args)

    def stubtest(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self._run("mypy.stubtest", "--mypy-config-file", str(self.config), *args)

    def _run(self, module: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", module, *args], cwd=self.folder,
                              env=self.env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def checker(tmp_path_factory) -> Checker:
    return Checker(tmp_path_factory.mktemp("typing"))


def test_stubs_and_marker_are_next_to_the_imported_package():
    for name in ("py.typed", "_api.pyi", "foreach.pyi", "_dispatch.pyi", "_threads.pyi"):
        assert (PACKAGE / name).is_file(), name


# The oldest Python momentum supports (no collections.abc.Buffer, and NumPy's
# ndarray is not a Buffer there), and this one.
@pytest.mark.parametrize("python_version", sorted({"3.10", "%d.%d" % sys.version_info[:2]}))
def test_mypy_accepts_correct_use(checker, python_version):
    script = checker.folder / "good.py"
    script.write_text(textwrap.dedent(GOOD))
    proc = checker.mypy("--python-version", python_version, str(script))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_correct_use_runs():
    exec(compile(textwrap.dedent(GOOD), "good.py", "exec"), {})


def test_mypy_flags_each_misuse(checker):
    script = checker.folder / "bad.py"
    script.write_text(BAD_PRELUDE + "".join(line + "\n" for line in MISUSES))
    proc = checker.mypy(str(script))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    first = BAD_PRELUDE.count("\n") + 1
    expected = {first + i: code for i, code in enumerate(MISUSES.values())}
    found: dict[int, set[str]] = {}
    for line, code in re.findall(r"^bad\.py:(\d+): error: .*\[([a-z-]+)\]$", proc.stdout, re.M):
        found.setdefault(int(line), set()).add(code)
    assert found.keys() == expected.keys(), proc.stdout
    for line, code in expected.items():
        assert code in found[line], proc.stdout


@pytest.mark.parametrize("call", MISUSES)
def test_each_misuse_is_a_type_error_at_run_time(call):
    names: dict = {}
    exec(BAD_PRELUDE, names)
    before = [a.copy() for a in (names["p"], names["g"], names["b"])]
    with pytest.raises(TypeError):
        exec(call, names)
    for a, old in zip((names["p"], names["g"], names["b"]), before):
        assert np.array_equal(a, old)


def test_stubs_match_the_compiled_signatures(checker):
    # stubtest compares every stub signature with inspect.signature() of the
    # compiled function: names, order, keyword-only-ness and defaults.
    modules = ["momentum._api", "momentum.foreach"]
    modules += ["momentum._dispatch", "momentum._threads"]
    allowlist = checker.folder / "stubtest-allowlist.txt"
    # Cython's doctest table, present in every compiled module, and its table
    # of the C functions a .pxd shares with other Cython modules.
    allowlist.write_text(r"momentum\..*\.__test__" + "\n" + r"momentum\..*\.__pyx_capi__" + "\n")
    proc = checker.stubtest("--allowlist", str(allowlist), *modules)
    assert proc.returncode == 0, proc.stdout + proc.stderr
