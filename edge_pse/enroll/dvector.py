"""The default speaker encoder: resemblyzer's d-vector (256-d; weights ship inside its wheel), run with torch.

embed() is the reference every other encoder path (ONNX, LiteRT: runtime_encoder.py) must match.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence

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


def embed_many(waves: Sequence[np.ndarray], clips_per_call: int = 128, progress: str | None = None) -> np.ndarray:
    """d-vectors of many 16 kHz clips, [len(waves), 256]: embed() of each, with the 1.6 s partials of
    `clips_per_call` clips run through the encoder's LSTM in one call instead of one call per clip (reading a
    data root embeds thousands of enrollment clips: 4x faster at 2 threads). Only the float sums' batch
    differs from embed(): cosine 1.000000 on 100 real clips."""
    import torch
    from resemblyzer import audio

    enc = encoder()
    starts = range(0, len(waves), clips_per_call)
    if progress:
        from rich.progress import track

        starts = track(starts, description=progress, transient=True)
    out = np.zeros((len(waves), EMBED_DIM), np.float32)
    for i in starts:
        mels, owner = [], []
        chunk = waves[i : i + clips_per_call]
        for k, wave in enumerate(chunk):
            wav = preprocess(wave)
            wav_slices, mel_slices = enc.compute_partial_slices(len(wav), 1.3, 0.75)  # embed_utterance's defaults
            if wav_slices[-1].stop >= len(wav):
                wav = np.pad(wav, (0, wav_slices[-1].stop - len(wav)))
            mel = audio.wav_to_mel_spectrogram(wav)
            mels += [mel[sl] for sl in mel_slices]
            owner += [k] * len(mel_slices)
        with torch.no_grad():
            partials = enc(torch.from_numpy(np.stack(mels))).numpy().astype(np.float64)
        sums = np.zeros((len(chunk), EMBED_DIM))
        np.add.at(sums, np.asarray(owner), partials)  # embed_utterance: the mean of the partials, L2-normalised
        out[i : i + len(sums)] = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-8)
    return out
