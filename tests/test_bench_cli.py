"""`python -m momentum bench`: it runs, its JSON is complete, its gate catches a wrong kernel,
it refuses output files it cannot write before it runs; `--version`."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import momentum
from momentum._bench.rules import RULES as TIMED_RULES
from momentum.rules import RULES
from momentum import bench
from momentum.__main__ import main as cli
from momentum._bench import report

HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
HAVE_ML_DTYPES = importlib.util.find_spec("ml_dtypes") is not None
HAVE_TORCH = importlib.util.find_spec("torch") is not None
SECTIONS = {"units", "machine", "plan", "correctness", "changed", "bandwidth", "kernels",
            "call_overhead", "workloads", "adamw_workloads"}

# The layouts every run reports, and their bytes read + written per element,
# counted by hand: (param, grad, buf) read, (param, buf) written; update_buffer
# reads (buf, grad) and writes buf; kahan adds a 16-bit comp read and written,
# master a float32 master read and written and a 16-bit param written only.
SGD_BYTES = {"f32/f32/f32": 20, "f64/f64/f64": 40, "bf16/bf16/bf16": 10, "f16/f16/f16": 10,
             "bf16/bf16/f32": 14, "f16/f16/f32": 14, "f32>bf16/bf16/f32": 20,
             "bf16/bf16/bf16 kahan": 14, "bf16/bf16/bf16 stochastic": 10,
             "bf16/bf16/bf16 stochastic + stochastic state": 10}
# Adam (no amsgrad): (param, grad, exp_avg, exp_avg_sq) read, all but grad
# written; the master layout reads and writes a float32 master instead of the
# param and writes the 16-bit param; kahan adds a 16-bit comp read and written.
ADAM_BYTES = {"f32/f32/f32/f32": 28, "f64/f64/f64/f64": 56, "bf16/bf16/bf16/bf16": 14,
              "f16/f16/f16/f16": 14, "bf16/bf16/f32/f32": 22, "f16/f16/f32/f32": 22,
              "f32>bf16/bf16/f32/f32": 28, "bf16/bf16/bf16/bf16 kahan": 18,
              "bf16/bf16/bf16/bf16 stochastic": 14,
              "bf16/bf16/bf16/bf16 stochastic + stochastic state": 14}
# The Adam rows no plain C loop is written for.
NO_CEILING = {"f64/f64/f64/f64", "bf16/bf16/bf16/bf16 kahan"}
BYTES = {"sgd": SGD_BYTES, "heavy_ball": SGD_BYTES, "lion": SGD_BYTES,
         "adam": ADAM_BYTES, "adamw": ADAM_BYTES,
         "update_buffer": {"f32/f32": 12, "f64/f64": 24, "bf16/bf16": 6, "f16/f16": 6,
                           "f32/bf16": 10, "f32/f16": 10, "bf16/bf16 stochastic state": 6}}


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
    assert results["correctness"] == {
        "passed": True, "failures": [],
        "unchecked_dtypes": {} if HAVE_ML_DTYPES else {"bfloat16": "not installed (ml_dtypes)"}}
    assert results["plan"]["threads"] == [1]
    measured = [r for r in results["kernels"] if "results" in r]
    assert {(r["rule"], r["layout"]) for r in measured} == {
        (rule, layout) for rule, layouts in BYTES.items() for layout in layouts
        if HAVE_ML_DTYPES or "bf16" not in layout}
    for row in measured + results["bandwidth"]:
        for res in row["results"].values():
            assert res["GB_per_s"] > 0 and res["Melem_per_s"] > 0
    for row in measured:
        assert row["bytes_per_element"] == BYTES[row["rule"]][row["layout"]]
        assert {"momentum", "reference"} <= row["results"].keys()
        if row["rule"] in ("adam", "adamw") and row["layout"] in NO_CEILING:
            assert (row["ceiling"], row["pct_of_c_loop"], row["c_loops"]) == (None, None, [])
        else:
            assert row["ceiling"] in row["c_loops"] and row["ceiling"] in row["results"]
            assert row["pct_of_c_loop"] > 0
        assert row["speedup_vs_reference"] > 0
        assert row["x_float32"] > 0
    f32 = [r for r in measured if r["layout"] in ("f32/f32/f32/f32", "f32/f32/f32", "f32/f32")]
    assert len(f32) == len(TIMED_RULES)
    assert all(r["x_float32"] == 1 for r in f32)
    assert all(r["ceiling"] == "C fused loop" for r in f32 if r["rule"] not in ("adam", "adamw"))
    # Adam's float32 ceiling: the plain Adam loop, portable or AVX-512 build
    assert all(r["ceiling"] in ("C loop", "C loop avx512bf16") for r in f32
               if r["rule"] in ("adam", "adamw"))
    # torch's 16-bit paths on the all-16-bit sgd rows, beside momentum
    for row in measured:
        if HAVE_TORCH and (row["rule"], row["layout"]) in {("sgd", "bf16/bf16/bf16"),
                                                             ("sgd", "f16/f16/f16")}:
            assert {"torch for-loop", "torch foreach", "torch fused"} <= row["results"].keys()
        if HAVE_TORCH and row["layout"] == "f32/f32/f32/f32":
            assert {"torch for-loop", "torch foreach", "torch fused"} <= row["results"].keys()
        if row["rule"] in ("adam", "adamw", "lion"):
            # every peer of the row is either timed or says why not
            peers = {"lion-pytorch"} if row["rule"] == "lion" else {
                "torch for-loop", "torch foreach", "torch fused", "DeepSpeedCPUAdam"}
            assert peers <= row["results"].keys() | row["missing"].keys()
    assert results["call_overhead"]["results"]["momentum"]["median_us"] > 0
    for section, rule in (("workloads", "sgd"), ("adamw_workloads", "adamw")):
        [workload] = results[section]
        assert workload["name"] == "many-small" and workload["tensors"] == 1000
        assert all(r["median_ms"] > 0 for r in workload["results"].values())
        assert f"momentum.foreach.{rule}" in workload["results"]
    assert "Kernels:" in proc.stdout and "Targets" in proc.stdout and "[bench" in proc.stderr
    # At the quick run's one size (4 Ki) only the DeepSpeed layout target
    # applies; without DeepSpeed the report says that none was measured.
    if importlib.util.find_spec("deepspeed") is not None:
        assert "Targets of the Adam issue" in proc.stdout
    else:
        assert "Adam targets: none of the rows they are set on were measured" in proc.stdout
    assert f"wrote results to {out / 'out.json'}\n" in proc.stdout


def test_the_correctness_line_measures_changed_fractions(quick_run):
    proc, out = quick_run
    rows = json.loads((out / "out.json").read_text())["changed"]
    assert {(r["dtype"], r["n"]) for r in rows} == {
        (d, n) for d in ("bfloat16", "float16") for n in (4096, 4099)}
    for r in rows:
        if r["dtype"] == "bfloat16" and not HAVE_ML_DTYPES:
            continue
        ours, exact = r["changed"]["momentum"], r["changed"]["float64, rounded"]
        # one nearest-rounded float32 step changes what the exact step changes,
        # give or take the elements whose rounding the float32 arithmetic flips
        assert 0.5 < exact and abs(ours - exact) < 0.01
        assert all(0 <= f <= 1 for f in r["changed"].values())
    assert "Correctness: elements of a 16-bit parameter changed" in proc.stdout


def test_without_ml_dtypes_bfloat16_rows_say_so(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)   # import ml_dtypes fails
    path = tmp_path / "out.json"
    argv = ["--quick", "--threads", "1", "--sizes", "64", "--workloads", "", "--json", str(path)]
    assert bench.main(argv) == 0
    results = json.loads(path.read_text())
    assert results["correctness"]["unchecked_dtypes"] == {"bfloat16": "not installed (ml_dtypes)"}
    missing = [r for r in results["kernels"] if "bf16" in r["layout"]]
    assert missing and all("unavailable" in r and "results" not in r for r in missing)
    assert all("ml_dtypes" in r["unavailable"] for r in missing)
    f16 = [r for r in results["kernels"] if r["layout"] == "f16/f16/f16"]
    assert f16 and all(r["results"]["momentum"]["GB_per_s"] > 0 for r in f16)
    bf16_changed = [r for r in results["changed"] if r["dtype"] == "bfloat16"]
    assert all(r["changed"] == {} and r["missing"] for r in bf16_changed)
    out = capsys.readouterr().out
    assert "bfloat16 layouts not checked: not installed (ml_dtypes)" in out
    assert "sgd bf16/bf16/bf16: bfloat16 arrays through NumPy need ml_dtypes" in out


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
    bits = param.view(f"u{param.itemsize}")   # any storage dtype: one unit in the last place
    bits[0] += 1


def test_gate_names_a_kernel_one_ulp_off():
    impl = {rule: getattr(momentum, rule) for rule in TIMED_RULES}
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
