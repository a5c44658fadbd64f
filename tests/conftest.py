"""Shared fixtures: the real-data root (tests that need it skip cleanly without it) and a tiny synthetic one."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("EDGE_PSE_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_root() -> Path:
    """../shared/data (or $EDGE_PSE_DATA): real speech, noise and RIRs. Without data beside the checkout the
    tests that need it skip; when $EDGE_PSE_DATA names a folder (CI does when it has the data), a missing or
    empty one fails them instead, so a CI run that meant to test on real audio cannot silently skip it."""
    if not (DATA / "speech").is_dir():
        if os.environ.get("EDGE_PSE_DATA"):
            pytest.fail(f"EDGE_PSE_DATA={DATA} has no speech/ folder")
        pytest.skip(f"real data not found at {DATA} (set EDGE_PSE_DATA)")
    return DATA


def _voice(rng: np.random.Generator, seconds: float, f0: float, sr: int = 16_000) -> np.ndarray:
    """A crude voiced signal: a pitch-varying pulse train through three formant resonators, syllable-gated."""
    from scipy import signal

    n = int(seconds * sr)
    t = np.arange(n) / sr
    pitch = f0 * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
    phase = np.cumsum(pitch) / sr
    pulses = (np.diff(np.floor(phase), prepend=0) > 0).astype(float)
    x = pulses
    for fc in rng.uniform([500, 1200, 2400], [800, 1800, 3200]):
        b, a = signal.iirpeak(fc, 8, fs=sr)
        x = signal.lfilter(b, a, x)
    gate = (np.sin(2 * np.pi * rng.uniform(2, 4) * t) > -0.3).astype(float)
    x = x * signal.lfilter([0.01], [1, -0.99], gate)
    return (0.1 * x / (np.abs(x).max() + 1e-9)).astype(np.float32)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A small data root in the ../shared/data layout, made of synthetic voices and noise (no real audio)."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for k in range(40):
        d = root / "speech" / "synth" / f"spk{k:02d}"
        d.mkdir(parents=True)
        sf.write(d / f"spk{k:02d}-0.flac", _voice(rng, 10.0, rng.uniform(90, 250)), 16_000)
    (root / "noise" / "synth").mkdir(parents=True)
    for k in range(12):
        sf.write(
            root / "noise" / "synth" / f"n{k}.flac", (0.05 * rng.standard_normal(16_000 * 3)).astype("float32"), 16_000
        )
    return root


@pytest.fixture
def agent(tmp_path):
    """A device agent on loopback, in this process (token tests.test_agent.TOKEN); closed after the test."""
    from firmware_host.agent import Agent
    from tests.test_agent import TOKEN

    a = Agent(tmp_path / "agent", TOKEN)
    a.start()
    yield a
    a.close()
