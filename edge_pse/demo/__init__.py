"""The built-in demo: a noisy two-talker mixture, the target talker's enrollment clip and its speaker
profile, all made by `make_demo.py` from synthetic voices and procedural noise (no third-party audio)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

MIXTURE = "mixture.wav"  # target talker + interfering talker + noise, 16 kHz mono int16
TARGET = "target.wav"  # the target talker alone (the reference for scoring the demo)
ENROLLMENT = "enrollment.wav"  # other sentences of the target talker
SPEAKER = "speaker.spk"  # the speaker profile enrolled from ENROLLMENT


def path(name: str) -> Path:
    """Path of a shipped demo file (they live inside the installed package)."""
    return Path(str(resources.files("edge_pse.demo").joinpath(name)))
