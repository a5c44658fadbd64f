"""Audio sources for mixtures: speech by speaker, noise files, room impulse responses, with disjoint splits.

A data root is laid out like ../shared/data: `speech/CORPUS/SPK/.../UTT.{flac,wav}` (LibriSpeech-style),
`noise/SET/...` and `rir/SET/...` (any folders of audio). Splits are made by hashing the speaker id or the
file's relative path, so train, validation and test never share a speaker, a noise file or a room, and a
file keeps its split when others are added.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from edge_pse.errors import EdgePseError

SAMPLE_RATE = 16_000
AUDIO_EXTS = {".flac", ".wav", ".ogg"}
SPLITS = ("train", "val", "test")
# share of speakers / noise files / rooms in each split
SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


def split_of(key: str) -> str:
    """Deterministic split from a stable hash of `key` (speaker id or relative path)."""
    u = int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2**64
    edge = 0.0
    for name in SPLITS:
        edge += SPLIT_FRACTIONS[name]
        if u < edge:
            return name
    return SPLITS[-1]


def load_audio(path: Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 at `sample_rate` (down-mixed, resampled with soxr)."""
    try:
        wave, sr = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise EdgePseError(f"cannot read audio {path}: {e}") from None
    wave = wave.mean(axis=1)
    if sr != sample_rate:
        wave = soxr.resample(wave, sr, sample_rate).astype(np.float32)
    return np.ascontiguousarray(wave)


def audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTS and p.is_file())


@dataclass
class Speaker:
    id: str
    utterances: list[np.ndarray] = field(default_factory=list)


@dataclass
class Sources:
    """All audio of one split, in memory (the shared set is ~90 min: ~350 MB as float32)."""

    speakers: list[Speaker]
    noises: list[np.ndarray]
    rirs: list[np.ndarray]


def scan(
    root: str | Path, split: str, corpora: tuple[str, ...] | None = None
) -> tuple[dict[str, list[Path]], list[Path], list[Path]]:
    """Files of one split: {speaker: [utterance paths]}, noise paths, rir paths. `corpora` keeps the speakers of
    those speech/CORPUS folders only (e.g. a held-out row per corpus); noise and rooms are not filtered."""
    if split not in SPLITS:
        raise EdgePseError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    root = Path(root)
    speech_dir = root / "speech"
    if not speech_dir.is_dir():
        raise EdgePseError(f"{root} has no speech/ folder (expected speech/CORPUS/SPK/.../UTT.flac)")
    speakers: dict[str, list[Path]] = {}
    available = sorted(p for p in speech_dir.iterdir() if p.is_dir())
    if corpora:
        missing = sorted(set(corpora) - {p.name for p in available})
        if missing:
            names = ", ".join(p.name for p in available)
            raise EdgePseError(f"{speech_dir} has no corpus {', '.join(missing)} (it has: {names})")
        available = [p for p in available if p.name in corpora]
    for corpus in available:
        for spk_dir in sorted(p for p in corpus.iterdir() if p.is_dir()):
            spk_id = f"{corpus.name}/{spk_dir.name}"
            if split_of(spk_id) == split:
                files = audio_files(spk_dir)
                if files:
                    speakers[spk_id] = files
    noises = (
        [p for p in audio_files(root / "noise") if split_of(str(p.relative_to(root))) == split]
        if (root / "noise").is_dir()
        else []
    )
    rirs = (
        [p for p in audio_files(root / "rir") if split_of(str(p.relative_to(root))) == split]
        if (root / "rir").is_dir()
        else []
    )
    if len(speakers) < 2:
        raise EdgePseError(f"{speech_dir} has fewer than 2 speakers in the {split} split")
    return speakers, noises, rirs


def load_sources(
    root: str | Path, split: str, max_speakers: int | None = None, corpora: tuple[str, ...] | None = None
) -> Sources:
    speaker_files, noise_files, rir_files = scan(root, split, corpora)
    ids = sorted(speaker_files)[:max_speakers]
    speakers = [Speaker(i, [load_audio(p) for p in speaker_files[i]]) for i in ids]
    noises = [load_audio(p) for p in noise_files]
    rirs = [_trim_rir(load_audio(p)) for p in rir_files]
    return Sources(speakers, noises, rirs)


def _trim_rir(rir: np.ndarray, max_seconds: float = 1.0) -> np.ndarray:
    """Start at the direct path, keep at most `max_seconds`, unit peak."""
    start = max(0, int(np.argmax(np.abs(rir))) - 16)
    rir = rir[start : start + int(max_seconds * SAMPLE_RATE)]
    peak = float(np.max(np.abs(rir)))
    return rir / peak if peak > 0 else rir
