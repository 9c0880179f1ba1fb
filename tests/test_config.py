"""Version and build configuration as reported to users."""
from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

import momentum
from momentum import _build

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_version_matches_pyproject():
    with PYPROJECT.open("rb") as f:
        version = tomllib.load(f)["project"]["version"]
    assert isinstance(momentum.__version__, str)
    assert momentum.__version__ == version


@pytest.fixture
def config(capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """What show_config() prints, as ``{key: value}``."""
    momentum.show_config()
    lines = capsys.readouterr().out.splitlines()
    return dict((part.strip() for part in line.split(":", 1)) for line in lines)


def test_show_config_reports_the_build(config):
    assert config["compiler"]
    assert config["openmp"] == str(_build.BUILD["openmp"])
    assert config["threads"] == str(momentum.get_num_threads())


def test_show_config_flags_keep_the_numerical_contract(config):
    flags = config["cflags"].split()
    assert "-ffp-contract=off" in flags
    assert not {"-ffast-math", "-Ofast"} & set(flags)
    if os.environ.get("MOMENTUM_NATIVE") != "1":
        assert "-march=native" not in flags


def test_a_build_from_another_rule_table_refuses_to_import():
    # momentum.rules edited after the build: the generated kernel glue no
    # longer matches the table the checks read, so the import must fail.
    import subprocess
    import sys
    code = ("import importlib.util, os, sys\n"
            "where = importlib.util.find_spec('momentum').submodule_search_locations[0]\n"
            "spec = importlib.util.spec_from_file_location('momentum.rules',\n"
            "    os.path.join(where, 'rules.py'))\n"
            "rules = importlib.util.module_from_spec(spec)\n"
            "sys.modules['momentum.rules'] = rules\n"
            "spec.loader.exec_module(rules)\n"
            "rules.fingerprint = lambda: 'another table'\n"
            "import momentum\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "momentum.rules changed since the build" in result.stderr
