"""The on-device install, for real: a fresh venv with only `pip install .[litert]` (no torch in it) runs a
LiteRT bundle end to end. Slow (downloads the runtime wheels); CI runs it with `pytest -m slow`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from edge_pse import demo
from tests.test_run_bundle import make_speaker

REPO = Path(__file__).resolve().parent.parent


def _litert_bundle(tmp: Path) -> Path:
    """A tiny LiteRT bundle exported by the project's own export command from a random-weight checkpoint."""
    import torch

    from edge_pse.model.checkpoint import save_checkpoint
    from edge_pse.model.config import get_preset
    from edge_pse.model.e3net import E3Net

    torch.manual_seed(0)
    ckpt = tmp / "tiny.pt"
    save_checkpoint(ckpt, E3Net(get_preset("tiny")), "tiny")
    out = tmp / "tiny-litert"
    cmd = [sys.executable, str(REPO / "export" / "quantize.py"), "--checkpoint", str(ckpt), "--formats", "tflite"]
    cmd += ["--mode", "fp32", "--output", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return out


@pytest.mark.slow
def test_runtime_extra_runs_a_litert_bundle_without_torch(tmp_path: Path) -> None:
    bundle = _litert_bundle(tmp_path)
    speaker = make_speaker(tmp_path / "me.spk")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", f"{REPO}[litert]"],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    no_torch = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch"], capture_output=True, check=False)
    assert no_torch.returncode != 0  # the runtime install really has no torch
    out, stats = tmp_path / "clean.wav", tmp_path / "stats.json"
    args = ["run", "--model", bundle, "--speaker", speaker, "--output", out, "--stats", stats, "--device", "rpi4"]
    res = subprocess.run(
        [str(venv / "bin" / "edge-pse"), *map(str, args)],  # the demo mixture is the default input
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(stats.read_text())
    assert data["backend"] == "litert" and data["rtf"] < 1
    assert sf.info(out).frames == sf.info(demo.path(demo.MIXTURE)).frames
