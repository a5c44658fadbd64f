"""The default speaker encoder: resemblyzer's d-vector (256-d; weights ship inside its wheel), run with torch.

embed() is the reference every other encoder path (ONNX, LiteRT: runtime_encoder.py) must match.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np

from edge_pse.enroll.preprocess import preprocess

ENCODER_NAME = "resemblyzer-dvector"
EMBED_DIM = 256
SAMPLE_RATE = 16_000
# What embed() does to audio before the network (preprocess.py). Caches of embeddings should key on it:
# v1 = resemblyzer's preprocess_wav (raise to -30 dBFS, trim silences > ~200 ms by WebRTC VAD), no peak scaling.
EMBED_RECIPE = "resemblyzer-preprocess-v1"


@functools.lru_cache(maxsize=1)
def encoder():
    """resemblyzer's VoiceEncoder on CPU (loaded once)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # webrtcvad's pkg_resources deprecation notice
        from resemblyzer import VoiceEncoder

    return VoiceEncoder(device="cpu", verbose=False)


def encoder_version() -> str:
    """The resemblyzer release whose weights make the embeddings (recorded in profiles and exported encoders)."""
    from importlib.metadata import version

    return version("resemblyzer")


def embed_preprocessed(wave: np.ndarray) -> np.ndarray:
    """d-vector of audio already through preprocess(): mean of the 1.6 s partial embeddings, L2-normalised."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a few small LSTM batches: one thread is fastest and spares a busy machine
    try:
        emb = encoder().embed_utterance(np.asarray(wave, dtype=np.float32))
    finally:
        torch.set_num_threads(threads)
    return (emb / max(np.linalg.norm(emb), 1e-8)).astype(np.float32)


def embed(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """L2-normalised d-vector of one 16 kHz mono clip (float in [-1, 1]), resemblyzer's preprocessing included."""
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"the d-vector encoder takes {SAMPLE_RATE} Hz audio, got {sample_rate}")
    return embed_preprocessed(preprocess(wave))
