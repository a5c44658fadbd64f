"""The on-device install, for real, as the README tells a Pi user: build a wheel from the checkout, install
`edge_pse-*.whl[litert]` into a fresh venv (no torch in it), enroll with the packaged encoder and run a LiteRT
bundle end to end. Slow (downloads the runtime wheels); CI runs it with `pytest -m slow`."""

from __future__ import annotations

import glob
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from edge_pse import demo
from tests.test_run_bundle import make_speaker

REPO = Path(__file__).resolve().parent.parent
PYENV = Path.home() / ".pyenv" / "versions"


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


def _python(version: str) -> str | None:
    """An interpreter of that version on this machine (this one, python3.X on PATH, or pyenv's), else None."""
    if version == f"{sys.version_info.major}.{sys.version_info.minor}":
        return sys.executable
    candidates = [shutil.which(f"python{version}"), *sorted(glob.glob(str(PYENV / f"{version}*" / "bin" / "python")))]
    for exe in filter(None, candidates):
        ok = subprocess.run([exe, "-c", "import venv"], capture_output=True, check=False)  # pyenv shims may refuse
        if ok.returncode == 0:
            return exe
    return None


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel a user builds on a host to copy to a Pi (`pip wheel --no-deps -w dist .`)."""
    dist = tmp_path_factory.mktemp("dist")
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(REPO)],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    (whl,) = dist.glob("edge_pse-*.whl")
    import zipfile

    names = zipfile.ZipFile(whl).namelist()
    print(f"\ndevice wheel: {whl.stat().st_size / 2**20:.1f} MiB, {len(names)} files")  # 40.5 MiB with the .pt files
    assert not [n for n in names if n.endswith(".pt")]  # torch checkpoints and float weights stay on the host
    assert "edge_pse/bundles/tiny-int8/model.tflite" in names and "edge_pse/enroll/encoder/NOTICE.md" in names
    return whl


@pytest.mark.slow
@pytest.mark.parametrize("version", ["3.11", "3.12", "3.13"])  # Pi OS Bookworm ships 3.11, Trixie 3.13
def test_runtime_extra_runs_a_litert_bundle_without_torch(wheel: Path, version: str, tmp_path: Path) -> None:
    python = _python(version)
    if python is None:
        pytest.skip(f"no Python {version} on this machine")
    whl = wheel
    bundle = _litert_bundle(tmp_path)
    speaker = make_speaker(tmp_path / "me.spk")
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", f"{whl}[litert]"],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    # enrollment on the device install: the packaged encoder, the host's profile
    from edge_pse.enroll.profile import load_profile

    enrolled = subprocess.run(
        [str(venv / "bin" / "edge-pse"), "enroll", "--audio", str(demo.path(demo.ENROLLMENT)), "--output",
         str(tmp_path / "enrolled.spk")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert enrolled.returncode == 0, enrolled.stderr
    profile, host = load_profile(tmp_path / "enrolled.spk"), load_profile(demo.path(demo.SPEAKER))
    assert profile.encoder_backend == "numpy" and float(profile.embedding @ host.embedding) >= 0.999
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
    # the wheel's own bundle (no float weights in it) and the bench of what this install can run
    for args in (["run", "--quiet"], ["bench", "--hops", "50", "--warmup", "5", "--output", "rep"]):
        res = subprocess.run(
            [str(venv / "bin" / "edge-pse"), *args], capture_output=True, text=True, timeout=900, cwd=tmp_path,
            check=False,
        )  # fmt: skip
        assert res.returncode == 0, (args, res.stderr[-3000:])
