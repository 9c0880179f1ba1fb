"""`python -m momentum bench`: it runs, its JSON is complete, its gate catches a wrong kernel,
it refuses output files it cannot write before it runs; `--version`."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import momentum
from momentum._bench.rules import DTYPES
from momentum.rules import RULES
from momentum import bench
from momentum.__main__ import main as cli
from momentum._bench import report

HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
SECTIONS = {"units", "machine", "plan", "correctness", "bandwidth", "kernels",
            "call_overhead", "workloads"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One tiny `bench --quick` in a subprocess: its exit status, JSON and plot path."""
    out = tmp_path_factory.mktemp("bench")
    # One thread: on a busy 2-core machine a second thread only adds waiting.
    cmd = [sys.executable, "-m", "momentum", "bench", "--quick", "--threads", "1",
           "--sizes", "4096", "--workloads", "many-small", "--json", str(out / "out.json")]
    if HAVE_MATPLOTLIB:
        cmd += ["--plot", str(out / "out.png")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=same_momentum(), timeout=120)
    return proc, out


def same_momentum() -> dict[str, str]:
    """The environment for a subprocess that imports the same momentum as this test."""
    src = str(Path(momentum.__file__).parent.parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


def test_quick_run_writes_every_section_with_positive_rates(quick_run):
    proc, out = quick_run
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "out.json").read_text())
    assert SECTIONS <= results.keys()
    assert results["correctness"] == {"passed": True, "failures": []}
    assert results["plan"]["threads"] == [1]
    assert {(r["rule"], r["dtype"]) for r in results["kernels"]} == {
        (rule, np.dtype(dtype).name) for rule in RULES for dtype in DTYPES}
    for row in results["kernels"] + results["bandwidth"]:
        for res in row["results"].values():
            assert res["GB_per_s"] > 0 and res["Melem_per_s"] > 0
    for row in results["kernels"]:
        assert {"momentum", "reference", "C fused loop"} <= row["results"].keys()
        assert row["speedup_vs_reference"] > 0 and row["pct_of_c_loop"] > 0
    assert results["call_overhead"]["results"]["momentum"]["median_us"] > 0
    [workload] = results["workloads"]
    assert workload["name"] == "many-small" and workload["tensors"] == 1000
    assert all(r["median_ms"] > 0 for r in workload["results"].values())
    assert "Kernels:" in proc.stdout and "[bench" in proc.stderr
    assert f"wrote results to {out / 'out.json'}\n" in proc.stdout


@pytest.mark.skipif(not HAVE_MATPLOTLIB, reason="matplotlib not installed")
def test_plot_is_a_png(quick_run):
    proc, out = quick_run
    assert (out / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote plot to {out / 'out.png'}\n" in proc.stdout


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit, match="--plot needs matplotlib"):
        report.require_matplotlib()


def test_gate_passes_the_real_kernels():
    assert bench.gate() == []


def _off_by_one_ulp(param, grad, buf, **hyper):
    momentum.sgd(param, grad, buf, **hyper)
    param[0] = np.nextafter(param[0], np.inf)


def test_gate_names_a_kernel_one_ulp_off():
    impl = {rule: getattr(momentum, rule) for rule in RULES}
    impl["sgd"] = _off_by_one_ulp
    failures = bench.gate(impl)
    assert failures and all(f.startswith("sgd ") and "'param'" in f for f in failures)


def test_wrong_kernel_makes_bench_exit_non_zero(monkeypatch, capsys):
    monkeypatch.setattr(momentum, "sgd", _wrong_sgd)
    assert bench.main(["--quick"]) == 1
    assert "correctness: FAILED" in capsys.readouterr().out


def _wrong_sgd(param, grad, buf, **hyper):
    """sgd that forgets the weight decay."""
    hyper.pop("weight_decay", None)
    momentum._api.sgd(param, grad, buf, **hyper)


def test_no_command_prints_help_and_config_prints_the_build(capsys):
    assert cli([]) == 0
    assert "bench" in capsys.readouterr().out
    assert cli(["config"]) == 0
    assert "cflags" in capsys.readouterr().out


def test_version_prints_the_package_version():
    proc = subprocess.run([sys.executable, "-m", "momentum", "--version"],
                          capture_output=True, text=True, env=same_momentum(), timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"momentum {momentum.__version__}\n", "")


@pytest.fixture
def unwritable_folder(tmp_path_factory):
    """A folder in which this process cannot create a file."""
    folder = tmp_path_factory.mktemp("read-only")
    folder.chmod(0o500)
    # Root ignores permission bits; sysfs refuses new files even to root.
    for candidate in (folder, Path("/sys")):
        try:
            (candidate / "probe").touch()
        except OSError:
            yield candidate
            break
        (candidate / "probe").unlink()
    else:
        pytest.skip("no folder this process cannot write to")
    folder.chmod(0o700)


@pytest.mark.parametrize("option", ["--json", "--plot"])
@pytest.mark.parametrize("destination, why", [
    ("a-folder", "is a directory"),
    ("missing/out", "folder {tmp}/missing does not exist"),
    ("a-file/out", "{tmp}/a-file is not a folder"),
    ("unwritable/out", "Permission denied"),
])
def test_unwritable_destination_is_refused_before_the_bench_runs(
        option, destination, why, tmp_path, unwritable_folder, capsys):
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "a-file").write_text("")
    (tmp_path / "unwritable").symlink_to(unwritable_folder)
    path = f"{tmp_path}/{destination}"
    # A tiny plan: were the check missing, this would fail fast, not bench for minutes.
    argv = ["bench", "--quick", "--sizes", "16", "--workloads", "", option, path]
    assert cli(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""            # not even the machine header: nothing ran
    assert err == f"python -m momentum bench: cannot write {option} {path}: " \
                  f"{why.format(tmp=tmp_path)}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "a-folder", "unwritable"]


def test_destination_check_creates_nothing_and_keeps_an_existing_file(tmp_path):
    assert bench.unwritable(str(tmp_path / "new.json")) is None
    assert not (tmp_path / "new.json").exists()
    old = tmp_path / "old.json"
    old.write_text("kept")
    assert bench.unwritable(str(old)) is None
    assert old.read_text() == "kept"
