"""Synthetic speakers from espeak-ng: widen the training speaker pool beyond the recorded corpus.

A speaker is one (accent, voice variant, pitch, rate) of espeak-ng (Debian package `espeak-ng`, offline,
GPL-3 program; the audio it renders is ours). Utterances are sentences made from a small built-in grammar
(our own words, no corpus text). `overlay_root` writes them next to an existing data root without touching
it: a new root whose speech/, noise/ and rir/ link to the original, plus speech/tts-espeak/SPK/UTT.wav. The
speaker id decides the split (edge_pse.data.sources.split_of), so synthetic speakers stay split-disjoint too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from edge_pse.data.sources import SAMPLE_RATE, load_audio
from edge_pse.errors import EdgePseError

CORPUS = "tts-espeak"
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "klatt4", "Alex", "Annie", "Andy", "Denis", "Gene", "Lee", "Mike", "Michael",
)  # fmt: skip
_SUBJECTS = (
    "the old farmer", "my sister", "a tired doctor", "the young pilot", "our neighbour", "the quiet student",
    "a small child", "the baker", "her brother", "the new teacher", "a friendly driver", "the captain",
)  # fmt: skip
_VERBS = (
    "carried", "painted", "found", "opened", "sold", "cleaned", "watched", "fixed", "borrowed", "counted",
    "described", "forgot",
)  # fmt: skip
_OBJECTS = (
    "a wooden chair", "the broken clock", "seven green apples", "the letter from home", "a heavy box",
    "the window near the door", "two paper lanterns", "the map of the river", "a bowl of warm soup",
    "the blue bicycle", "an empty bottle", "the garden gate",
)  # fmt: skip
_TAILS = (
    "before the rain started", "on a cold morning", "without saying a word", "after the long meeting",
    "while the radio played", "at the end of the street", "for the third time", "just before dinner",
    "in the middle of the night", "when nobody was looking", "with great care", "near the old bridge",
)  # fmt: skip


def espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise EdgePseError("espeak-ng is not installed (Debian/Ubuntu: apt-get install espeak-ng)")
    return exe


def sentence(rng: np.random.Generator) -> str:
    parts = [_SUBJECTS, _VERBS, _OBJECTS, _TAILS]
    return " ".join(p[rng.integers(len(p))] for p in parts).capitalize() + "."


def speaker_voices(n: int, seed: int = 0) -> list[dict]:
    """n distinct (accent, variant, pitch, rate) voices, deterministic in the seed."""
    rng = np.random.default_rng(seed)
    combos = [(a, v) for a in ACCENTS for v in VARIANTS]
    if n > len(combos):
        raise EdgePseError(f"at most {len(combos)} synthetic speakers (asked for {n})")
    picks = rng.permutation(len(combos))[:n]
    return [
        {
            "accent": combos[k][0],
            "variant": combos[k][1],
            "pitch": int(rng.integers(25, 75)),
            "rate": int(rng.integers(140, 190)),
        }
        for k in picks
    ]


def render(text: str, voice: dict, exe: str | None = None) -> np.ndarray:
    """One utterance as float32 at 16 kHz."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "u.wav"
        cmd = [exe or espeak(), "-v", f"{voice['accent']}+{voice['variant']}", "-p", str(voice["pitch"])]
        cmd += ["-s", str(voice["rate"]), "-w", str(wav), text]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        if res.returncode != 0 or not wav.exists():
            raise EdgePseError(f"espeak-ng failed for voice {voice}: {res.stderr.strip()[:200]}")
        return load_audio(wav, SAMPLE_RATE)


def speaker_id(voice: dict) -> str:
    return f"{voice['accent']}_{voice['variant']}_p{voice['pitch']}_s{voice['rate']}"


def write_speakers(speech_dir: Path, n_speakers: int, utterances: int, seed: int = 0, progress=None) -> list[Path]:
    """speech_dir/tts-espeak/SPK/UTT.wav for n_speakers x utterances; returns the speaker folders."""
    exe = espeak()
    rng = np.random.default_rng(seed)
    folders = []
    for voice in speaker_voices(n_speakers, seed):
        folder = speech_dir / CORPUS / speaker_id(voice)
        folder.mkdir(parents=True, exist_ok=True)
        for u in range(utterances):
            wave = render(sentence(rng), voice, exe)
            tmp = folder / f".{u:03d}.wav.tmp"
            sf.write(tmp, wave, SAMPLE_RATE, subtype="PCM_16", format="WAV")
            os.replace(tmp, folder / f"{u:03d}.wav")
            if progress:
                progress()
        folders.append(folder)
    return folders


def overlay_root(data: Path, out: Path) -> None:
    """out/ links every corpus of data/speech and data's noise/ and rir/, so out/ is a data root that holds
    the original data plus whatever is written into out/speech/."""
    if not (data / "speech").is_dir():
        raise EdgePseError(f"{data} has no speech/ folder (expected speech/CORPUS/SPK/.../UTT.flac)")
    (out / "speech").mkdir(parents=True, exist_ok=True)
    for corpus in sorted(p for p in (data / "speech").iterdir() if p.is_dir()):
        link = out / "speech" / corpus.name
        if corpus.name == CORPUS:
            raise EdgePseError(f"{data} already has a speech/{CORPUS} corpus")
        if not link.exists():
            link.symlink_to(corpus.resolve(), target_is_directory=True)
    for name in ("noise", "rir"):
        if (data / name).is_dir() and not (out / name).exists():
            (out / name).symlink_to((data / name).resolve(), target_is_directory=True)
