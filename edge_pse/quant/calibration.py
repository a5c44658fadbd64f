"""The calibration set: mixtures with their speaker embedding, split into calibration and held-out clips.

PTQ observers and the accuracy gate both need audio the step really sees in use: a noisy mixture and the
d-vector of the talker to keep. Three sources, one in-memory form (`Clip`):
- `.npz` files written by `save_npz` (the small committed set in edge_pse/calibration_data/ is one);
- a user's data root with real speech and noise (`--calibration DIR`): the project's MixtureDataset when it
  is available, else a simple reader of `speech/**/SPK/*` and `noise/**` audio files mixed here;
- `synthetic_clips`: speech-like signals made by the project's own code (no third-party audio), used to build
  the committed set.
Torch-free: numpy, scipy.signal and soundfile only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_pse.atomic import atomic_path
from edge_pse.data.sources import audio_files, load_audio
from edge_pse.errors import EdgePseError

SR = 16_000
CONDITIONS = ("noise", "talker", "noise+talker")


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
            y[: x.size] = np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)
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
                target = z["target"][i, :n].astype(np.float32) / 32767
                clips.append(
                    Clip(
                        mixture=z["mixture"][i, :n].astype(np.float32) / 32767,
                        spk=z["spk"][i].astype(np.float32),
                        target=target if np.any(target) else None,
                        condition=str(z["condition"][i]),
                        heldout=bool(z["heldout"][i]),
                    )
                )
    except (OSError, KeyError, ValueError) as e:
        raise EdgePseError(f"cannot read calibration file {path}: {e}") from None
    return clips


def load_calibration(
    path: str | Path, n_clips: int = 24, seconds: float = 3.0, seed: int = 0, embed: Callable | None = None
) -> CalibrationSet:
    """A folder of calibration `.npz` files, or a data root with speech/ and noise/ to mix from."""
    path = Path(path)
    if not path.is_dir():
        raise EdgePseError(f"calibration directory {path} not found")
    npz = sorted(path.glob("*.npz"))
    if npz:
        clips = [c for f in npz for c in load_npz(f)]
        source = ", ".join(f.name for f in npz)
    else:
        clips = clips_from_audio_root(path, n_clips, seconds, seed, embed)
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
def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2) + 1e-12))


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
            mixture += other[: target.size] * (_rms(target) / _rms(other) / 10 ** (db / 20))
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
    use_noise = condition in ("noise", "noise+talker")
    use_talker = condition in ("talker", "noise+talker")
    mixture, tgt = mix(
        target,
        rng,
        noise if use_noise else None,
        interferer if use_talker else None,
        snr_db=float(rng.uniform(-5, 10)),
        sir_db=float(rng.uniform(-5, 10)),
    )
    return Clip(mixture, spk.astype(np.float32), tgt, condition, heldout)


# -------------------------------------------------------------------------------------------- synthetic voices
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


def _resonator(x: np.ndarray, freq: float, bw: float) -> np.ndarray:
    from scipy.signal import lfilter

    r = np.exp(-np.pi * bw / SR)
    a = [1.0, -2 * r * np.cos(2 * np.pi * freq / SR), r * r]
    return lfilter([1 - r], a, x)


def synthetic_speech(voice: SyntheticVoice, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Syllables of 120-300 ms with pauses; pitch drifts and jitters; peak 1."""
    n = int(seconds * SR)
    out = np.zeros(n)
    pos = int(rng.uniform(0, 0.15) * SR)
    while pos < n:
        length = min(int(rng.uniform(0.12, 0.3) * SR), n - pos)
        t = np.arange(length) / SR
        contour = voice.f0 * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t + rng.uniform(0, 6)))
        contour *= 1 + 0.01 * rng.standard_normal(length).cumsum() / np.sqrt(length)
        phase = np.cumsum(contour / SR)
        pulses = np.diff(np.floor(phase), prepend=0.0)  # one impulse per glottal period
        source = np.convolve(pulses, np.hanning(24), mode="same") + voice.breath * rng.standard_normal(length)
        f1, f2, f3 = _VOWELS[rng.integers(len(_VOWELS))] * voice.tract
        syl = sum(g * _resonator(source, f, bw) for g, f, bw in ((1.0, f1, 80), (0.6, f2, 100), (0.3, f3, 150)))
        if rng.random() < 0.3:  # a fricative onset
            k = min(length, int(0.05 * SR))
            syl[:k] += 0.3 * _resonator(rng.standard_normal(k), rng.uniform(3000, 6000), 1500)
        syl *= np.hanning(length) ** 0.5
        out[pos : pos + length] = syl / (np.abs(syl).max() + 1e-9)
        pos += length + int(rng.exponential(0.08) * SR)
    return (out / (np.abs(out).max() + 1e-9)).astype(np.float32)


def procedural_noise(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """White, pink or brown noise, amplitude-modulated babble-like noise, or mains hum with harmonics."""
    from scipy.signal import lfilter

    n = int(seconds * SR)
    kind = rng.integers(5)
    w = rng.standard_normal(n)
    if kind == 0:
        x = w
    elif kind == 1:  # pink (Paul Kellet's filter)
        x = lfilter(
            [0.049922035, -0.095993537, 0.050612699, -0.004408786], [1, -2.494956002, 2.017265875, -0.522189400], w
        )
    elif kind == 2:  # brown
        x = lfilter([1.0], [1, -0.995], w)
    elif kind == 3:  # speech-shaped, syllable-rate modulation
        x = _resonator(w, rng.uniform(300, 1500), 800) * (1 + np.sin(2 * np.pi * rng.uniform(2, 6) * np.arange(n) / SR))
    else:  # hum
        t = np.arange(n) / SR
        f = rng.choice([50.0, 60.0])
        x = sum(np.sin(2 * np.pi * f * k * t + rng.uniform(0, 6)) / k for k in range(1, 8)) + 0.05 * w
    return (x / (np.abs(x).max() + 1e-9)).astype(np.float32)


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
                procedural_noise(seconds, rng),
                synthetic_speech(other, seconds, rng),
                CONDITIONS[i % len(CONDITIONS)],
                heldout=i >= n_calibration,
            )
        )
    return clips


# ---------------------------------------------------------------------------------------------- user audio
def clips_from_audio_root(
    root: Path, n_clips: int, seconds: float, seed: int, embed: Callable | None = None
) -> list[Clip]:
    """Calibration clips from a data root: the project's MixtureDataset (calibration from its train split,
    held-out clips from its val split, so no speaker, noise file or room is shared), else the simple mixer."""
    try:
        from edge_pse.data.mixtures import MixtureConfig, MixtureDataset
    except ImportError:
        return _mixed_from_audio_root(root, n_clips, seconds, seed, embed)
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


def _mixed_from_audio_root(
    root: Path, n_clips: int, seconds: float, seed: int, embed: Callable | None = None
) -> list[Clip]:
    """Mix clips from `root/speech/**/SPK/*.flac` (one folder per speaker) and `root/noise/**`.

    Speakers are split: the last quarter (by sorted id) only feeds held-out clips. The enrollment clip and the
    target come from different parts of the speaker's audio.
    """
    if embed is None:
        from edge_pse.enroll.dvector import embed
    speech_root, noise_root = root / "speech", root / "noise"
    by_speaker: dict[str, list[Path]] = {}
    for f in audio_files(speech_root) if speech_root.is_dir() else []:
        by_speaker.setdefault(f.parent.name, []).append(f)
    noises = audio_files(noise_root) if noise_root.is_dir() else []
    if len(by_speaker) < 4 or not noises:
        raise EdgePseError(
            f"{root} has no calibration .npz files and is not a data root with speech/<SPEAKER>/*.flac "
            f"(>= 4 speakers, found {len(by_speaker)}) and noise/ audio (found {len(noises)})"
        )
    rng = np.random.default_rng(seed)
    speakers = sorted(by_speaker)
    cut = max(1, len(speakers) * 3 // 4)
    n_held = max(2, n_clips // 4)
    n = int(seconds * SR)
    clips = []
    from rich.progress import track

    for i in track(range(n_clips), description="building calibration mixtures", transient=True):
        heldout = i >= n_clips - n_held
        pool = speakers[cut:] if heldout else speakers[:cut]
        spk_id, other_id = rng.choice(pool, 2, replace=len(pool) < 2)
        talk = load_audio(by_speaker[spk_id][rng.integers(len(by_speaker[spk_id]))])
        if talk.size < n + 2 * SR:
            talk = np.pad(talk, (0, n + 2 * SR - talk.size))
        enrol, target = talk[: 2 * SR], talk[2 * SR : 2 * SR + n]  # different parts of the same speaker
        noise = np.resize(load_audio(noises[rng.integers(len(noises))]), n)
        interferer = np.resize(load_audio(by_speaker[other_id][0]), n)
        clips.append(
            _conditioned_clip(rng, target, embed(enrol), noise, interferer, CONDITIONS[i % len(CONDITIONS)], heldout)
        )
    return clips
