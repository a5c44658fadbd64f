"""The d-vector encoder's waveform preprocessing, torch-free and scipy-free (numpy + webrtcvad's C module).

It reproduces resemblyzer.preprocess_wav on 16 kHz audio: raise quiet clips to -30 dBFS (never lower loud
ones), then cut silences longer than ~200 ms found by WebRTC's VAD (mode 3, 30 ms windows, moving average
over 8 windows, dilation by 7). The torch encoder and the exported (ONNX/LiteRT) encoder both embed the
output of this function, so a profile made on the Pi matches one made on the host.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16_000
NORM_TARGET_DBFS = -30.0
VAD_WINDOW = 480  # 30 ms
VAD_MODE = 3  # most aggressive: fewest noise windows taken for speech
VAD_AVERAGE_WIDTH = 8
VAD_MAX_SILENCE = 6  # windows of silence kept between voiced segments
_INT16_MAX = 2**15 - 1


def normalize_volume(wave: np.ndarray, target_dbfs: float = NORM_TARGET_DBFS) -> np.ndarray:
    """Raise the RMS level to `target_dbfs` if it is below; loud clips are left as they are (resemblyzer's rule)."""
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
    if rms <= 0.0:
        return wave
    change_db = target_dbfs - 20 * np.log10(rms)
    return wave if change_db < 0 else (wave * 10 ** (change_db / 20)).astype(wave.dtype)


def voice_flags(wave: np.ndarray) -> np.ndarray:
    """WebRTC VAD decision for each whole 30 ms window of a 16 kHz float clip."""
    # the C module directly: the webrtcvad wrapper imports pkg_resources (setuptools) only for its version string
    import _webrtcvad

    vad = _webrtcvad.create()
    _webrtcvad.init(vad)
    _webrtcvad.set_mode(vad, VAD_MODE)
    n = len(wave) // VAD_WINDOW
    pcm = np.round(wave[: n * VAD_WINDOW] * _INT16_MAX).astype("<i2")  # resemblyzer's conversion (wraps, no clip)
    return np.array(
        [
            _webrtcvad.process(vad, SAMPLE_RATE, pcm[i * VAD_WINDOW : (i + 1) * VAD_WINDOW].tobytes(), VAD_WINDOW)
            for i in range(n)
        ],
        dtype=bool,
    )


def _moving_average(flags: np.ndarray, width: int) -> np.ndarray:
    padded = np.concatenate((np.zeros((width - 1) // 2), flags, np.zeros(width // 2)))
    acc = np.cumsum(padded, dtype=float)
    acc[width:] = acc[width:] - acc[:-width]
    return acc[width - 1 :] / width


def _dilate(mask: np.ndarray, size: int) -> np.ndarray:
    """Binary dilation with a centred structuring element of `size` ones (scipy.ndimage's convention)."""
    padded = np.concatenate((np.zeros(size, dtype=bool), mask, np.zeros(size, dtype=bool)))
    out = np.zeros_like(padded)
    origin = size // 2
    for k in range(size):
        out |= np.roll(padded, k - origin)
    return out[size:-size]


def speech_mask(wave: np.ndarray) -> np.ndarray:
    """Per-30 ms-window mask of what trim_long_silences keeps (smoothed VAD, short pauses bridged)."""
    flags = voice_flags(wave)
    if flags.size == 0:
        return flags
    mask = np.round(_moving_average(flags.astype(float), VAD_AVERAGE_WIDTH)).astype(bool)
    return _dilate(mask, VAD_MAX_SILENCE + 1)


def trim_long_silences(wave: np.ndarray) -> np.ndarray:
    """Drop silences longer than the VAD tolerance; the result is at most as long as the input."""
    mask = speech_mask(wave)
    wave = wave[: mask.size * VAD_WINDOW]
    return wave[np.repeat(mask, VAD_WINDOW)]


MIN_TRIMMED = SAMPLE_RATE // 2


def preprocess(wave: np.ndarray) -> np.ndarray:
    """Level-normalise then trim long silences: the exact input both encoder paths embed.

    If the VAD keeps less than 0.5 s (noise-like or synthetic audio), the untrimmed clip is embedded instead:
    a d-vector of half a second says little, and an empty one is undefined.
    """
    wave = normalize_volume(np.asarray(wave, dtype=np.float32).reshape(-1))
    trimmed = trim_long_silences(wave)
    return trimmed if trimmed.size >= MIN_TRIMMED else wave


def speech_seconds(wave: np.ndarray) -> float:
    """Seconds of voiced audio by the raw VAD flags (after level normalisation): the enrollment length check."""
    flags = voice_flags(normalize_volume(np.asarray(wave, dtype=np.float32).reshape(-1)))
    return float(flags.sum()) * VAD_WINDOW / SAMPLE_RATE
