"""Procedural noise and simulated rooms: variety that no recorded set of this size has."""

from __future__ import annotations

import numpy as np
from scipy import signal

SAMPLE_RATE = 16_000
NOISE_KINDS = ("white", "pink", "brown", "hum", "modulated", "tonal")


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
