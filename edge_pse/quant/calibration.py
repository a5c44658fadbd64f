"""The calibration set: mixtures with their speaker embedding, split into calibration and held-out clips.

PTQ observers and the accuracy gate both need audio the step really sees in use: a noisy mixture and the
d-vector of the talker to keep. Three sources, one in-memory form (`Clip`):
- `.npz` files written by `save_npz` (the small committed set in edge_pse/calibration_data/ is one);
- a user's data root with real speech and noise (`--calibration DIR`), mixed by the project's MixtureDataset;
- `synthetic_clips`: data.synth's speech-like voices and procedural noise (no third-party audio), used to
  build the committed set.
Torch-free: numpy, scipy.signal and soundfile only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_pse.atomic import atomic_path
from edge_pse.data.synth import SAMPLE_RATE, SyntheticVoice, below, procedural_noise, rms, synthetic_speech
from edge_pse.errors import EdgePseError
from edge_pse.runtime.frontend import INT16_SCALE, float_to_int16

SR = SAMPLE_RATE
CONDITIONS = ("noise", "interferer", "both")  # data.mixtures' names; the committed synthetic.npz uses the old ones
_OLD_NAMES = {"talker": "interferer", "noise+talker": "both"}


@dataclass
class Clip:
    """One mixture: `mixture` and `target` float32 [-1, 1], `spk` the target talker's 256-d embedding."""

    mixture: np.ndarray
    spk: np.ndarray
    target: np.ndarray | None = None
    condition: str = ""
    heldout: bool = False


def at_level(clip: Clip, dbfs: float) -> Clip:
    """The clip with its mixture at `dbfs` mean power (the target scaled by the same gain)."""
    from edge_pse.eval.metrics import level_db

    gain = np.float32(10 ** ((dbfs - level_db(clip.mixture)) / 20))
    target = None if clip.target is None else clip.target * gain
    return Clip(clip.mixture * gain, clip.spk, target, clip.condition, clip.heldout)


@dataclass
class CalibrationSet:
    calibration: list[Clip]
    heldout: list[Clip]
    source: str

    def across_levels(self, levels: tuple[float, ...]) -> CalibrationSet:
        """The calibration clips spread over `levels` (clip i at levels[i % n]), so observers see every input
        level the gate measures; the held-out clips stay as they are (the gate scales them itself)."""
        calibration = [at_level(c, levels[i % len(levels)]) for i, c in enumerate(self.calibration)]
        return CalibrationSet(calibration, self.heldout, self.source)

    def describe(self) -> str:
        secs = sum(c.mixture.size for c in self.calibration) / SR
        held = sum(c.mixture.size for c in self.heldout) / SR
        return (
            f"{self.source}: {len(self.calibration)} calibration clips ({secs:.0f} s), "
            f"{len(self.heldout)} held-out clips ({held:.0f} s)"
        )


# ---------------------------------------------------------------------------------------------------- storage
def save_npz(path: str | Path, clips: list[Clip]) -> None:
    """int16 audio, float32 embeddings; written atomically."""
    length = max(c.mixture.size for c in clips)

    def pcm(x: np.ndarray | None) -> np.ndarray:
        y = np.zeros(length, np.int16)
        if x is not None:
            y[: x.size] = float_to_int16(x)[0]
        return y

    arrays = {
        "mixture": np.stack([pcm(c.mixture) for c in clips]),
        "target": np.stack([pcm(c.target) for c in clips]),
        "spk": np.stack([c.spk.astype(np.float32) for c in clips]),
        "length": np.array([c.mixture.size for c in clips], np.int32),
        "condition": np.array([c.condition for c in clips]),
        "heldout": np.array([c.heldout for c in clips]),
    }
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: savez would append ".npz" to a name
        np.savez_compressed(f, **arrays)


def load_npz(path: str | Path) -> list[Clip]:
    try:
        with np.load(path, allow_pickle=False) as z:
            clips = []
            for i, n in enumerate(z["length"]):
                target = z["target"][i, :n] * INT16_SCALE
                clips.append(
                    Clip(
                        mixture=z["mixture"][i, :n] * INT16_SCALE,
                        spk=z["spk"][i].astype(np.float32),
                        target=target if np.any(target) else None,
                        condition=_OLD_NAMES.get(str(z["condition"][i]), str(z["condition"][i])),
                        heldout=bool(z["heldout"][i]),
                    )
                )
    except (OSError, KeyError, ValueError) as e:
        raise EdgePseError(f"cannot read calibration file {path}: {e}") from None
    return clips


def load_calibration(path: str | Path, n_clips: int = 24, seconds: float = 3.0, seed: int = 0) -> CalibrationSet:
    """A folder of calibration `.npz` files, or a data root with speech/ and noise/ to mix from."""
    path = Path(path)
    if not path.is_dir():
        raise EdgePseError(f"calibration directory {path} not found")
    npz = sorted(path.glob("*.npz"))
    if npz:
        clips = [c for f in npz for c in load_npz(f)]
        source = ", ".join(f.name for f in npz)
    else:
        clips = clips_from_audio_root(path, n_clips, seconds, seed)
        source = str(path)
    calib = [c for c in clips if not c.heldout]
    held = [c for c in clips if c.heldout and c.target is not None]
    if not calib or not held:
        raise EdgePseError(
            f"calibration data in {path} needs calibration clips and held-out clips with a clean target "
            f"(found {len(calib)} and {len(held)})"
        )
    return CalibrationSet(calib, held, source)


# ------------------------------------------------------------------------------------------------ mixing
def mix(
    target: np.ndarray,
    rng: np.random.Generator,
    noise: np.ndarray | None = None,
    interferer: np.ndarray | None = None,
    snr_db: float = 5.0,
    sir_db: float = 5.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Target plus noise at `snr_db` and/or an interfering talker at `sir_db`; peak-normalised to [-0.9, 0.9]."""
    mixture = target.copy()
    for other, db in ((noise, snr_db), (interferer, sir_db)):
        if other is not None:
            mixture += below(other, rms(target), db)[: target.size]
    gain = float(rng.uniform(0.3, 0.9)) / max(float(np.abs(mixture).max()), 1e-6)
    return (mixture * gain).astype(np.float32), (target * gain).astype(np.float32)


def _conditioned_clip(
    rng: np.random.Generator,
    target: np.ndarray,
    spk: np.ndarray,
    noise: np.ndarray,
    interferer: np.ndarray,
    condition: str,
    heldout: bool,
) -> Clip:
    use_noise = condition in ("noise", "both")
    use_talker = condition in ("interferer", "both")
    mixture, tgt = mix(
        target,
        rng,
        noise if use_noise else None,
        interferer if use_talker else None,
        snr_db=float(rng.uniform(-5, 10)),
        sir_db=float(rng.uniform(-5, 10)),
    )
    return Clip(mixture, spk.astype(np.float32), tgt, condition, heldout)


def synthetic_clips(
    n_calibration: int, n_heldout: int, seconds: float, seed: int, embed: Callable[[np.ndarray], np.ndarray]
) -> list[Clip]:
    """Mixtures of synthetic voices and procedural noise; `embed` maps an enrollment clip to its d-vector."""
    rng = np.random.default_rng(seed)
    clips = []
    for i in range(n_calibration + n_heldout):
        voice, other = SyntheticVoice.random(rng), SyntheticVoice.random(rng)
        spk = embed(synthetic_speech(voice, 4.0, rng))  # enrollment: a different utterance of the same voice
        clips.append(
            _conditioned_clip(
                rng,
                synthetic_speech(voice, seconds, rng),
                spk,
                procedural_noise(int(seconds * SR), rng),
                synthetic_speech(other, seconds, rng),
                CONDITIONS[i % len(CONDITIONS)],
                heldout=i >= n_calibration,
            )
        )
    return clips


# ---------------------------------------------------------------------------------------------- user audio
def clips_from_audio_root(root: Path, n_clips: int, seconds: float, seed: int) -> list[Clip]:
    """Calibration clips from a data root through the project's MixtureDataset: calibration from its train
    split, held-out clips from its val split, so no speaker, noise file or room is shared."""
    from edge_pse.data.mixtures import MixtureConfig, MixtureDataset

    n_held = max(2, n_clips // 4)
    cfg = MixtureConfig(seconds=seconds)
    clips = []
    try:
        for split, n, heldout in (("train", n_clips - n_held, False), ("val", n_held, True)):
            # the held-out clips need a target for SI-SDR: no target-absent condition there
            conditions = ("noise", "interferer", "both", "reverberant") if heldout else None
            ds = MixtureDataset(root, split, seed=seed, cfg=cfg, length=n, conditions=conditions, max_speakers=4 * n)
            for i in range(n):
                ex = ds[i]
                target = ex.target if np.any(ex.target) else None
                clips.append(Clip(ex.mixture.astype(np.float32), ex.embedding, target, ex.condition, heldout))
    except (ValueError, OSError) as e:
        raise EdgePseError(f"cannot build calibration mixtures from {root}: {e}") from None
    return clips
