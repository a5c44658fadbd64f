"""Procedural noise, speech-like voices and simulated rooms: variety that no recorded set of this size has, made
by the project's own code (no third-party audio)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal

SAMPLE_RATE = 16_000
NOISE_KINDS = ("white", "pink", "brown", "hum", "modulated", "tonal")


def rms(x: np.ndarray) -> float:
    """Root mean square in float64 (+1e-12 inside the root, so silence gives 1e-6, not a division by zero)."""
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-12))


def below(other: np.ndarray, reference_rms: float, db: float) -> np.ndarray:
    """`other` scaled to `db` dB below `reference_rms`: the one way every mixture sets an SNR or an SIR."""
    return other * (reference_rms / rms(other) / 10 ** (db / 20))


def colored_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Noise with a 1/f**exponent power spectrum (0 white, 1 pink, 2 brown)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    f[0] = f[1]
    spec /= f ** (exponent / 2)
    x = np.fft.irfft(spec, n)
    return (x / (np.std(x) + 1e-12)).astype(np.float32)


def procedural_noise(n: int, rng: np.random.Generator, kind: str | None = None) -> np.ndarray:
    """One of NOISE_KINDS, unit RMS: stationary colours, mains hum, amplitude-modulated and tonal noise."""
    kind = kind or NOISE_KINDS[rng.integers(len(NOISE_KINDS))]
    t = np.arange(n) / SAMPLE_RATE
    if kind == "white":
        x = rng.standard_normal(n)
    elif kind == "pink":
        x = colored_noise(n, 1.0, rng)
    elif kind == "brown":
        x = colored_noise(n, 2.0, rng)
    elif kind == "hum":
        f0 = rng.choice([50.0, 60.0])
        x = sum(
            rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi)) for k in range(1, 12)
        )
        x = x + 0.05 * rng.standard_normal(n)
    elif kind == "modulated":
        rate = rng.uniform(0.5, 8.0)
        env = 0.55 + 0.45 * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))
        x = colored_noise(n, rng.uniform(0, 1.5), rng) * env
    elif kind == "tonal":  # beeps and whines: a few slowly drifting sinusoids
        x = np.zeros(n)
        for _ in range(rng.integers(1, 4)):
            f = rng.uniform(300, 6000) * (1 + 0.02 * np.sin(2 * np.pi * rng.uniform(0.1, 2) * t))
            x += np.sin(2 * np.pi * np.cumsum(f) / SAMPLE_RATE)
        x += 0.1 * rng.standard_normal(n)
    else:
        raise ValueError(f"unknown noise kind {kind!r}")
    x = np.asarray(x, dtype=np.float64)
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12)).astype(np.float32)


@dataclass(frozen=True)
class SyntheticVoice:
    """A speech-like source: glottal pulse train with a random pitch contour through vowel formant filters."""

    f0: float  # mean pitch (Hz)
    tract: float  # vocal-tract length factor scaling all formants
    breath: float  # aspiration noise level

    @classmethod
    def random(cls, rng: np.random.Generator) -> SyntheticVoice:
        return cls(
            f0=float(rng.uniform(85, 260)), tract=float(rng.uniform(0.85, 1.2)), breath=float(rng.uniform(0.02, 0.1))
        )


# F1, F2, F3 of a few vowels (Hz), adult average; each voice scales them by its tract factor
_VOWELS = np.array(
    [[730, 1090, 2440], [270, 2290, 3010], [530, 1840, 2480], [570, 840, 2410], [300, 870, 2240], [660, 1720, 2410]]
)


def resonator(x: np.ndarray, freq: float, bw: float) -> np.ndarray:
    """A two-pole resonance at `freq` Hz with bandwidth `bw` Hz (a formant)."""
    r = np.exp(-np.pi * bw / SAMPLE_RATE)
    a = [1.0, -2 * r * np.cos(2 * np.pi * freq / SAMPLE_RATE), r * r]
    return signal.lfilter([1 - r], a, x)


def synthetic_speech(voice: SyntheticVoice, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Syllables of 120-300 ms with pauses; pitch drifts and jitters; peak 1."""
    n = int(seconds * SAMPLE_RATE)
    out = np.zeros(n)
    pos = int(rng.uniform(0, 0.15) * SAMPLE_RATE)
    while pos < n:
        length = min(int(rng.uniform(0.12, 0.3) * SAMPLE_RATE), n - pos)
        t = np.arange(length) / SAMPLE_RATE
        contour = voice.f0 * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t + rng.uniform(0, 6)))
        contour *= 1 + 0.01 * rng.standard_normal(length).cumsum() / np.sqrt(length)
        phase = np.cumsum(contour / SAMPLE_RATE)
        pulses = np.diff(np.floor(phase), prepend=0.0)  # one impulse per glottal period
        source = np.convolve(pulses, np.hanning(24), mode="same") + voice.breath * rng.standard_normal(length)
        f1, f2, f3 = _VOWELS[rng.integers(len(_VOWELS))] * voice.tract
        syl = sum(g * resonator(source, f, bw) for g, f, bw in ((1.0, f1, 80), (0.6, f2, 100), (0.3, f3, 150)))
        if rng.random() < 0.3:  # a fricative onset
            k = min(length, int(0.05 * SAMPLE_RATE))
            syl[:k] += 0.3 * resonator(rng.standard_normal(k), rng.uniform(3000, 6000), 1500)
        syl *= np.hanning(length) ** 0.5
        out[pos : pos + length] = syl / (np.abs(syl).max() + 1e-9)
        pos += length + int(rng.exponential(0.08) * SAMPLE_RATE)
    return (out / (np.abs(out).max() + 1e-9)).astype(np.float32)


def simulated_rir(rng: np.random.Generator, rt60: float | None = None) -> np.ndarray:
    """A shoebox room (pyroomacoustics image sources) with a random size, RT60 and source/mic placement.

    The image-source order is capped for speed; a noise tail decaying at the room's RT60 fills in the late
    reverberation the capped order leaves out.
    """
    import pyroomacoustics as pra

    rt60 = rt60 if rt60 is not None else float(rng.uniform(0.15, 0.9))
    dim = np.array([rng.uniform(3, 9), rng.uniform(2.5, 7), rng.uniform(2.4, 3.5)])
    e_abs, max_order = pra.inverse_sabine(rt60, dim)
    room = pra.ShoeBox(dim, fs=SAMPLE_RATE, materials=pra.Material(e_abs), max_order=min(max_order, 10))
    src = rng.uniform([0.5, 0.5, 1.0], dim - [0.5, 0.5, 0.8])
    mic = rng.uniform([0.5, 0.5, 0.8], dim - [0.5, 0.5, 0.8])
    room.add_source(src)
    room.add_microphone(mic)
    room.compute_rir()
    early = np.asarray(room.rir[0][0], dtype=np.float64)
    n = int(min(1.0, rt60) * SAMPLE_RATE)
    tail = rng.standard_normal(n) * np.exp(-6.9 * np.arange(n) / (rt60 * SAMPLE_RATE))
    tail = signal.lfilter([1.0], [1.0, -0.6], tail)  # late reverberation is darker than white
    rir = np.zeros(max(len(early), n))
    rir[: len(early)] += early
    start = int(np.argmax(np.abs(early)))
    tail = tail[: len(rir) - start] * 0.1 * np.max(np.abs(early))
    rir[start : start + len(tail)] += tail
    rir = rir[start:]
    return (rir / np.max(np.abs(rir))).astype(np.float32)
