"""A killed export leaves its hidden build folder behind; the next export of the same bundle removes it, and
never a folder that a running export is still building (issue 15, D15)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parent.parent

EXPORT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import numpy as np
    import torch
    from edge_pse.exporters.pipeline import ExportOptions, export_bundle
    from edge_pse.model.config import get_preset
    from edge_pse.model.e3net import E3Net
    from edge_pse.quant.calibration import CalibrationSet, synthetic_clips

    def embed(_wave):
        v = np.random.default_rng(0).random(256).astype(np.float32)
        return v / np.linalg.norm(v)

    torch.manual_seed(0)
    clips = synthetic_clips(2, 2, 1.0, 0, embed)
    calib = CalibrationSet([c for c in clips if not c.heldout], [c for c in clips if c.heldout], "test")
    kill = sys.argv[2] == "kill"  # die (kill -9) as soon as the build folder exists
    log = (lambda *_: os.kill(os.getpid(), signal.SIGKILL)) if kill else (lambda *_: None)
    opts = ExportOptions(mode="fp32", formats=("onnx",), latency_hops=20)
    export_bundle(E3Net(get_preset("tiny")).eval(), "tiny", "random", calib, Path(sys.argv[1]), opts, log=log)
    """
)


def export(out: Path, how: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", EXPORT, str(out), how], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def builds(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}.") and p.name.endswith(".tmp"))


def test_the_next_export_removes_what_a_killed_one_left_and_spares_a_running_one(tmp_path) -> None:
    out = tmp_path / "tiny-fp32"
    killed = export(out, "kill")
    assert killed.returncode == -9, killed.stderr
    left = builds(tmp_path, out.name)
    assert len(left) == 1 and not out.exists()
    # a build folder of a running export (its lock held here), and one of an unrelated bundle name
    live = tmp_path / f".{out.name}.live0000.tmp"
    live.mkdir()
    lock = open(live / ".export.lock", "w")  # held (and locked) for the duration of the check
    fcntl.flock(lock, fcntl.LOCK_EX)
    other = tmp_path / ".other.abcd1234.tmp"
    other.mkdir()
    old = time.time() - 3600
    os.utime(other, (old, old))
    try:
        done = export(out, "run")
        assert done.returncode == 0, done.stderr
    finally:
        lock.close()
    assert (out / "manifest.json").is_file() and not (out / ".export.lock").exists()
    assert builds(tmp_path, out.name) == [live.name]  # the killed export's folder is gone, the live one stays
    assert other.is_dir()
