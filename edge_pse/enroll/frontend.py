"""resemblyzer's mel front-end and partial-utterance slicing in numpy (no librosa, no torch).

The mel filterbank and the analysis window are not computed here: the host-side export writes them
(from librosa, exactly as resemblyzer calls it) into speaker_encoder_frontend.npz next to the model.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16_000
N_FFT = 400  # 25 ms
HOP = 160  # 10 ms
N_MELS = 40
PARTIAL_FRAMES = 160  # 1.6 s per partial utterance
PARTIAL_RATE = 1.3  # partials per second
MIN_COVERAGE = 0.75
FRAMES_PER_CALL = 1000  # mel frames computed at once (10 s of audio)


def mel_power(wave: np.ndarray, window: np.ndarray, mel_basis: np.ndarray) -> np.ndarray:
    """[frames, 40] mel power spectrogram = librosa.feature.melspectrogram(y, sr=16000, n_fft=400, hop=160, n_mels=40).

    librosa centres frames (zero padding of n_fft/2 each side), uses a periodic Hann window and |STFT|^2.
    """
    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    padded = np.pad(wave, (N_FFT // 2, N_FFT // 2))
    n_frames = 1 + (padded.size - N_FFT) // HOP
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:n_frames]
    out = np.empty((n_frames, mel_basis.shape[0]), np.float32)
    for a in range(0, n_frames, FRAMES_PER_CALL):  # in blocks: a long clip's complex spectrum at once is large
        spec = np.fft.rfft(frames[a : a + FRAMES_PER_CALL] * window, axis=1)
        power = spec.real**2 + spec.imag**2
        out[a : a + len(spec)] = power.astype(np.float32) @ mel_basis.T
    return out


def partial_slices(n_samples: int) -> list[slice]:
    """Mel-frame slices of the 1.6 s partials (resemblyzer's compute_partial_slices, rate 1.3, coverage 0.75)."""
    n_frames = int(np.ceil((n_samples + 1) / HOP))
    frame_step = int(np.round((SAMPLE_RATE / PARTIAL_RATE) / HOP))
    steps = max(1, n_frames - PARTIAL_FRAMES + frame_step + 1)
    slices = [slice(i, i + PARTIAL_FRAMES) for i in range(0, steps, frame_step)]
    last = slices[-1]
    coverage = (n_samples - last.start * HOP) / (PARTIAL_FRAMES * HOP)
    if coverage < MIN_COVERAGE and len(slices) > 1:
        slices = slices[:-1]
    return slices


def partial_mels(wave: np.ndarray, window: np.ndarray, mel_basis: np.ndarray) -> np.ndarray:
    """[partials, 160, 40] float32: the model's batch for one preprocessed utterance (zero-padded at the end)."""
    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    slices = partial_slices(wave.size)
    needed = slices[-1].stop * HOP
    if needed >= wave.size:
        wave = np.pad(wave, (0, needed - wave.size))
    mel = mel_power(wave, window, mel_basis)
    return np.stack([mel[s] for s in slices]).astype(np.float32)


def pool(partial_embeddings: np.ndarray) -> np.ndarray:
    """Utterance d-vector: mean of the (L2-normalised) partial embeddings, L2-normalised again."""
    mean = np.mean(partial_embeddings, axis=0)
    return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
