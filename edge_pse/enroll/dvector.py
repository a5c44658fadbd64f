"""The default speaker encoder: resemblyzer's d-vector (256-d, weights ship inside its wheel)."""

from __future__ import annotations

import functools
import warnings

import numpy as np

ENCODER_NAME = "resemblyzer-dvector"
EMBED_DIM = 256
SAMPLE_RATE = 16_000


@functools.lru_cache(maxsize=1)
def _encoder():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # webrtcvad's pkg_resources deprecation notice
        from resemblyzer import VoiceEncoder
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    return VoiceEncoder(device="cpu", verbose=False)


def encoder_version() -> str:
    from importlib.metadata import version

    return version("resemblyzer")


def embed(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """L2-normalised d-vector of one 16 kHz mono clip (float in [-1, 1])."""
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"the d-vector encoder takes {SAMPLE_RATE} Hz audio, got {sample_rate}")
    wave = np.asarray(wave, dtype=np.float32)
    peak = float(np.max(np.abs(wave))) if wave.size else 0.0
    if peak > 0:
        wave = wave / peak * 0.9  # resemblyzer normalises loudness itself; avoid clipping inside it
    emb = _encoder().embed_utterance(wave)
    return (emb / max(np.linalg.norm(emb), 1e-8)).astype(np.float32)
