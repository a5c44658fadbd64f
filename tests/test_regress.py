"""`edge-pse regress`: passes an unchanged report, catches a planted regression (a slower and worse model
measured for real, and a doctored report: latencies x1.5, SI-SDRi -2 dB), honours a tolerances file, and
refuses bad input with a clear message."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BASELINE = REPO / "reports" / "baseline" / "report.json"

PEER = """
import time

import numpy as np

SLOW_US = {slow_us}
NOISE = {noise}


class Peer:
    hop = 160
    lag_hops = 0

    def __init__(self):
        self.out = np.zeros(self.hop, np.float32)
        self.rng = np.random.default_rng(0)

    def reset(self):
        self.rng = np.random.default_rng(0)

    def process(self, hop):
        if SLOW_US:
            end = time.perf_counter_ns() + SLOW_US * 1000
            while time.perf_counter_ns() < end:
                pass
        self.out[:] = 0.9 * hop + NOISE * self.rng.standard_normal(self.hop)
        return self.out


def make(threads=1):
    return Peer()
"""


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "edge_pse", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


def bench_peer(folder: Path, synthetic_root: Path, slow_us: int, noise: float) -> Path:
    """Bench the user's peer model (as a plug-in) with quality on the synthetic set; returns report.json."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "peer.py").write_text(PEER.format(slow_us=slow_us, noise=noise))
    opts = "--models peer:make --hops 200 --warmup 20 --per-condition 1 --seconds 1 --fast".split()
    res = cli("bench", *opts, "--eval-data", str(synthetic_root), "--output", str(folder / "report"), cwd=folder)
    assert res.returncode == 0, res.stderr
    return folder / "report" / "report.json"


@pytest.fixture(scope="module")
def good_report(tmp_path_factory, synthetic_root) -> Path:
    return bench_peer(tmp_path_factory.mktemp("good"), synthetic_root, slow_us=0, noise=0.0)


def doctored(src: Path, dst: Path, latency: float = 1.0, si_sdri: float = 0.0) -> Path:
    rep = json.loads(src.read_text())
    for c in rep["cells"]:
        if "latency_us" in c:
            c["latency_us"] = {k: v * latency for k, v in c["latency_us"].items()}
        if c.get("quality", {}).get("si_sdri") is not None:
            c["quality"]["si_sdri"] += si_sdri
    dst.write_text(json.dumps(rep))
    return dst


def reports() -> list[str]:
    return ["fresh"] + (["committed baseline"] if BASELINE.is_file() else [])


@pytest.fixture(params=reports())
def report(request, good_report) -> Path:
    return good_report if request.param == "fresh" else BASELINE


def test_an_unchanged_report_passes(report, tmp_path) -> None:
    same = tmp_path / "same.json"
    same.write_text(report.read_text())
    res = cli("regress", "--baseline", str(report), "--current", str(same))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "no regression" in res.stdout and "REGRESSION" not in res.stdout


def test_a_doctored_report_slower_and_worse_fails(report, tmp_path) -> None:
    bad = doctored(report, tmp_path / "bad.json", latency=1.5, si_sdri=-2.0)
    res = cli("regress", "--baseline", str(report), "--current", str(bad))
    assert res.returncode == 1, res.stdout
    lines = [ln for ln in res.stdout.splitlines() if "REGRESSION" in ln]
    assert any("latency p50" in ln and "x1.50" in ln for ln in lines)
    quality = json.loads(report.read_text())["cells"][0].get("quality")
    if quality and quality.get("si_sdri") is not None:
        assert any("si_sdri" in ln and "-2.000" in ln for ln in lines)


def test_changes_within_tolerance_pass(report, tmp_path) -> None:
    slightly = doctored(report, tmp_path / "slightly.json", latency=1.1, si_sdri=-0.2)
    assert cli("regress", "--baseline", str(report), "--current", str(slightly)).returncode == 0


def test_a_tolerances_file_loosens_and_tightens(report, tmp_path) -> None:
    bad = doctored(report, tmp_path / "bad.json", latency=1.5, si_sdri=-2.0)
    loose = tmp_path / "loose.toml"
    loose.write_text("[latency]\np50_ratio = 2.0\np99_ratio = 2.0\n[quality]\nsi_sdri = 3.0\n")
    assert cli("regress", "--baseline", str(report), "--current", str(bad), "--tolerances", str(loose)).returncode == 0
    slightly = doctored(report, tmp_path / "slightly.json", latency=1.1)
    tight = tmp_path / "tight.toml"
    tight.write_text("[latency]\np50_ratio = 1.05\n")
    res = cli("regress", "--baseline", str(report), "--current", str(slightly), "--tolerances", str(tight))
    assert res.returncode == 1 and "latency p50" in res.stdout


def test_a_really_slower_and_worse_model_is_caught(good_report, tmp_path, synthetic_root) -> None:
    """The planted regression measured for real: the same plug-in, now busy 300 us per hop and noisy."""
    worse = bench_peer(tmp_path / "worse", synthetic_root, slow_us=300, noise=0.05)
    res = cli("regress", "--baseline", str(good_report), "--current", str(worse))
    assert res.returncode == 1, res.stdout
    failed = {ln.split("│")[2].strip() for ln in res.stdout.splitlines() if "REGRESSION" in ln and "│" in ln}
    assert {"latency p50 (us)", "latency p99 (us)", "si_sdri"} <= failed, res.stdout


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "report not found"),
        ("not_json", "is not a JSON report"),
        ("other_json", "is not an edge-pse bench report"),
        ("bad_tol_key", "unknown keys in [latency]: ['p50']"),
        ("bad_tol_toml", "not valid TOML"),
        ("disjoint", "no cell in common"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(setup, message, good_report, tmp_path) -> None:
    cur, extra = tmp_path / "cur.json", []
    cur.write_text(good_report.read_text())
    if setup == "missing":
        cur = tmp_path / "nope.json"
    elif setup == "not_json":
        cur.write_text("{oops")
    elif setup == "other_json":
        cur.write_text('{"schema": "something-else"}')
    elif setup in ("bad_tol_key", "bad_tol_toml"):
        tol = tmp_path / "tol.toml"
        tol.write_text("[latency]\np50 = 1.2\n" if setup == "bad_tol_key" else "[latency\n")
        extra = ["--tolerances", str(tol)]
    elif setup == "disjoint":
        rep = json.loads(good_report.read_text())
        for c in rep["cells"]:
            c["key"] = "other/" + c["key"]
        cur.write_text(json.dumps(rep))
    res = cli("regress", "--baseline", str(good_report), "--current", str(cur), *extra)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_a_cell_that_now_fails_is_a_regression(good_report, tmp_path) -> None:
    rep = json.loads(good_report.read_text())
    broken = copy.deepcopy(rep)
    broken["cells"][0] = {k: broken["cells"][0][k] for k in ("key", "model", "backend", "quantization", "threads")}
    broken["cells"][0]["error"] = "cell process exited with -11: Segmentation fault"
    cur = tmp_path / "cur.json"
    cur.write_text(json.dumps(broken))
    res = cli("regress", "--baseline", str(good_report), "--current", str(cur))
    assert res.returncode == 1 and "Segmentation fault" in res.stdout
