"""The command line as users call it: the installed console script, exit codes, stdout."""

import json
import subprocess
import sys

import pytest


def edge_pse(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge_pse", *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_models_json_lists_the_presets() -> None:
    res = edge_pse("models", "--json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert [r["name"] for r in rows] == ["teacher", "small", "tiny"]
    for r in rows:
        assert r["params"] > 0 and r["macs_per_hop"] > 0 and r["int8_bytes"] < r["fp32_bytes"]


def test_models_table() -> None:
    res = edge_pse("models")
    assert res.returncode == 0, res.stderr
    for word in ("teacher", "small", "tiny", "MACs/hop", "20 ms"):
        assert word in res.stdout


@pytest.mark.parametrize("args", [["no-such-command"], ["models", "--bogus"], []])
def test_bad_arguments_exit_nonzero_without_traceback(args: list[str]) -> None:
    res = edge_pse(*args)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and "usage:" in res.stderr
