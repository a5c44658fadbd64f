"""Proof on ARM: the device agent runs inside an emulated aarch64 Debian (qemu-user) with only the aarch64
wheels of the torch-free runtime; the host deploys the tiny int8 bundle to it, runs a file through it, and
the output matches this x86 machine's run of the same bundle and backend within the bundle's int8 tolerance.

The root is cached outside the repo (EDGE_PSE_ARM64_ROOT, default ../cache/arm64root) and built by
firmware_host/emulation/make_rootfs.sh when absent (~70 s here; needs root, qemu-user-static, debootstrap).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge_pse import demo

REPO = Path(__file__).resolve().parent.parent
ROOT = Path(os.environ.get("EDGE_PSE_ARM64_ROOT", REPO.parent / "cache" / "arm64root"))
SHIPPED = REPO / "edge_pse" / "bundles" / "tiny-int8"
TOKEN = "emulated-pi-token-7f3a9c2e5b"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rootfs() -> Path:
    if (ROOT / ".edge-pse-rootfs-ok").is_file():
        return ROOT
    missing = [t for t in ("qemu-aarch64-static", "debootstrap") if shutil.which(t) is None]
    if missing or os.geteuid() != 0:
        pytest.skip(
            f"no emulated aarch64 root at {ROOT} and cannot build one here "
            f"({'missing ' + ', '.join(missing) if missing else 'needs root'}): "
            "apt-get install qemu-user-static debootstrap, then firmware_host/emulation/make_rootfs.sh ROOT"
        )
    script = REPO / "firmware_host" / "emulation" / "make_rootfs.sh"
    wrapper = ROOT.parent / "pip-for-rootfs"
    ROOT.parent.mkdir(parents=True, exist_ok=True)
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m pip "$@"\n')
    wrapper.chmod(0o755)  # this interpreter's pip downloads the aarch64 wheels
    env = {**os.environ, "PIP": str(wrapper)}
    res = subprocess.run([str(script), str(ROOT)], capture_output=True, text=True, env=env, timeout=1800, check=False)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return ROOT


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory) -> Path:
    """The shipped tiny int8 bundle, or (until it ships) one exported here from a random-weight tiny model."""
    if (SHIPPED / "manifest.json").is_file():
        return SHIPPED
    torch = pytest.importorskip("torch")
    from edge_pse.exporters.pipeline import ExportOptions, export_bundle
    from edge_pse.model.config import get_preset
    from edge_pse.model.e3net import E3Net
    from edge_pse.quant.calibration import CalibrationSet, synthetic_clips
    from tests.test_export import random_embedding

    torch.manual_seed(0)
    model = E3Net(get_preset("tiny")).eval()
    clips = synthetic_clips(3, 2, 1.2, 0, random_embedding(np.random.default_rng(0)))
    calib = CalibrationSet([c for c in clips if not c.heldout], [c for c in clips if c.heldout], "test")
    out = tmp_path_factory.mktemp("bundle") / "tiny-int8"
    opts = ExportOptions(mode="ptq", formats=("tflite", "onnx"), latency_hops=20)
    export_bundle(model, "tiny", "random", calib, out, opts, log=lambda *_: None)
    return out


@pytest.fixture(scope="module")
def emulated_agent(rootfs: Path, tmp_path_factory):
    """`edge-pse agent` under qemu-aarch64 (Cortex-A72), on loopback; yields its HOST:PORT."""
    env = {
        **os.environ,
        "QEMU_CPU": "cortex-a72",
        "PYTHONPATH": f"{REPO}:{rootfs / 'opt' / 'wheels'}",
        "EDGE_PSE_TOKEN": TOKEN,
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    agent_root = tmp_path_factory.mktemp("pi")
    cmd = ["qemu-aarch64-static", "-L", str(rootfs), str(rootfs / "usr/bin/python3.11"), "-m", "edge_pse", "agent"]
    proc = subprocess.Popen(
        [*cmd, "--listen", "127.0.0.1:0", "--root", str(agent_root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        yield json.loads(line)["listening"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


SAME_FILE_MIN_SNR_DB = 40.0


def local_pcm(bundle: Path, backend: str) -> np.ndarray:
    from edge_pse.bundle import Bundle
    from edge_pse.runtime import audio_io
    from edge_pse.runtime.backends import open_backend
    from edge_pse.runtime.runner import run_array
    from edge_pse.runtime.session import load_speaker

    b = Bundle.load(bundle)
    be = open_backend(b, backend)
    be.set_speaker(load_speaker(demo.path(demo.SPEAKER), b.manifest))
    return run_array(be, audio_io.read_clip(demo.path(demo.MIXTURE), 16_000).pcm, hop=160, sample_rate=16_000)[0]


def test_emulated_aarch64_agent_matches_x86(emulated_agent: str, int8_bundle: Path, tmp_path: Path) -> None:
    from edge_pse.bundle import Bundle
    from firmware_host import client

    token = TOKEN.encode()
    bundle = Bundle.load(int8_bundle)
    min_snr = bundle.tolerance["int8_min_snr_db"]
    client.deploy(emulated_agent, token, int8_bundle)
    backends = [n for n, fmt in (("litert", "tflite"), ("onnx", "onnx")) if any(f.format == fmt for f in bundle.files)]
    assert backends
    for name in backends:
        out = tmp_path / f"{name}.wav"
        t0 = time.perf_counter()
        stats = client.remote_run(
            emulated_agent, token, demo.path(demo.MIXTURE), out, demo.path(demo.SPEAKER), backend=name
        )
        took = time.perf_counter() - t0
        assert stats["device"]["machine"] == "aarch64" and stats["quantization"].startswith("int8")
        arm = sf.read(out, dtype="int16")[0].astype(np.float64)
        x86 = local_pcm(int8_bundle, name).astype(np.float64)
        assert arm.shape == x86.shape
        err = np.sum((arm - x86) ** 2)
        snr = 10 * np.log10(np.sum(x86**2) / err) if err else float("inf")
        print(
            f"\n{name}: {len(x86) / 16000:.2f} s of audio in {took:.1f} s under qemu "
            f"(device p50 {stats['model_us']['p50']:.0f} us/hop), aarch64 vs x86: max |diff| "
            f"{np.abs(arm - x86).max():.0f} LSB, SNR {snr:.1f} dB (limit {SAME_FILE_MIN_SNR_DB} dB; int8 vs float "
            f"{min_snr} dB)"
        )
        # the SAME int8 file on two CPUs: only kernel-level rounding may differ, far below the int8-vs-float
        # tolerance (an ARM numeric bug at 16 dB must fail); measured here: see the printed SNR
        assert snr >= SAME_FILE_MIN_SNR_DB
