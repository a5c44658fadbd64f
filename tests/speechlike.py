"""Test signals: a synthetic speech-like clip and real speech from the data directory when present."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

SR = 16_000
DATA = Path(os.environ.get("EDGE_PSE_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


def speech_like(seconds: float = 4.0, seed: int = 0, f0: float = 120.0) -> np.ndarray:
    """A voiced, syllable-modulated harmonic signal with a gliding pitch: PESQ, STOI and the VAD take it for speech."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    pitch = f0 + 0.25 * f0 * np.sin(2 * np.pi * 0.7 * t) + rng.uniform(-10, 10)
    phase = 2 * np.pi * np.cumsum(pitch) / SR
    formants = (500, 1500, 2500)
    voiced = sum(sum(np.sin(k * phase) / k for k in range(1, 30) if abs(k * f0 - f) < 400) for f in formants)
    syllables = np.clip(np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, np.pi)), 0, None) ** 2
    x = voiced * syllables + 0.01 * rng.standard_normal(t.size) * syllables
    return (0.3 * x / np.max(np.abs(x))).astype(np.float32)


def noise(n: int, seed: int = 1, level: float = 0.1) -> np.ndarray:
    return (level * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def speech_files() -> list[Path]:
    """LibriSpeech-style SPK/UTT.flac files under $EDGE_PSE_DATA/speech (empty when the data is absent)."""
    return sorted((DATA / "speech").glob("*/*/*.flac"))


def real_speech(index: int = 0, seconds: float | None = 6.0) -> np.ndarray | None:
    files = speech_files()
    if len(files) <= index:
        return None
    import soundfile as sf

    wave, sr = sf.read(files[index], dtype="float32")
    assert sr == SR
    return wave if seconds is None else wave[: int(seconds * SR)]
