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


NO_TORCH = (
    "import sys; sys.modules['torch'] = None; sys.modules['matplotlib'] = None\n"
    "from edge_pse.cli import main; sys.exit(main(sys.argv[1:]))"
)


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (["models"], "train"),
        (["export", "--student", "tiny"], "export"),
        (["evaluate", "--data", "."], "train"),
        (["train", "--data", ".", "--out", "x"], "train"),
        (["distill", "--teacher", "tiny", "--data", ".", "--out", "x"], "train"),
        (["run", "--backend", "torch", "--output", "never.wav"], "train"),
    ],
)
def test_host_commands_on_a_torch_free_install_name_the_extra(args: list[str], extra: str, tmp_path) -> None:
    res = subprocess.run(
        [sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path
    )
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == (
        f"edge-pse {args[0]}: error: this command needs torch, which is not installed: pip install 'edge-pse[{extra}]'"
    )
    assert list(tmp_path.iterdir()) == []
