"""The accuracy check shared by every format: run a file in its own runtime hop by hop over the held-out clips,
compare with the PyTorch float step (SNR vs float, SI-SDRi and its drop), time it, and apply the gate."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from edge_pse.eval.metrics import si_sdr
from edge_pse.quant.calibration import Clip

# Input levels (mean power, dBFS) at which every file is measured: a quiet far-field talker, normal speech, a
# loud close one. One static int8 scale used to fit only the calibration's level (docs/bundle.md, "Level").
LEVELS_DBFS = (-45.0, -30.0, -15.0)


@dataclass(frozen=True)
class Tolerance:
    """The gate, applied at every level of LEVELS_DBFS. fp32 files must be numerically the float step (they
    measure ~127 dB). int8 defaults come from tiny/small measurements (docs/bundle.md): with per-frame level
    normalisation 24-28 dB SNR vs float and SI-SDRi drops <= 0.07 dB at every level; a graph that collapses on
    quiet input lands near 0 dB, a broken calibration a few dB."""

    int8_min_snr_db: float = 15.0
    int8_max_drop_db: float = 0.5
    fp32_min_snr_db: float = 60.0
    fp32_max_drop_db: float = 0.05

    def limits(self, quantization: str) -> tuple[float, float]:
        if quantization == "fp32":
            return self.fp32_min_snr_db, self.fp32_max_drop_db
        return self.int8_min_snr_db, self.int8_max_drop_db

    def to_dict(self) -> dict:
        return asdict(self)


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    err = float(np.sum((reference - estimate) ** 2))
    return float(10 * np.log10(float(np.sum(reference**2)) / max(err, 1e-20)))


def si_sdri(outputs: list[np.ndarray], clips: list[Clip]) -> float:
    """Mean SI-SDR improvement over the mixture (outputs time-aligned with their clips, as `run_backend`'s)."""
    gains = [si_sdr(y, c.target) - si_sdr(c.mixture, c.target) for y, c in zip(outputs, clips, strict=True)]
    return float(np.mean(gains))


def run_backend(backend, clips: list[Clip], hop: int) -> list[np.ndarray]:
    """Each clip from zero state through the runtime's loop, exactly as the device runs it, lag compensated."""
    from edge_pse.runtime.runner import enhance

    outs = []
    for c in clips:
        backend.reset()
        backend.set_speaker(c.spk)
        outs.append(enhance(backend, c.mixture, hop, backend.spec.lag_hops).copy())
    return outs


def latency_us(backend, clip: Clip, hop: int, hops: int = 400, warmup: int = 40) -> tuple[float, float]:
    """Median and p99 of one `process` call (1 hop), in microseconds (runtime/stats.py's definitions)."""
    from edge_pse.runtime.stats import latency_summary, time_hops

    backend.reset()
    backend.set_speaker(clip.spk)
    frames = clip.mixture[: clip.mixture.size // hop * hop].reshape(-1, hop)
    lat = latency_summary(time_hops(backend.process, frames, hops, warmup))
    return lat["p50"], lat["p99"]
