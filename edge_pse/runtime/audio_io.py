"""Reading and writing audio files for file runs, with every bad input turned into a clear EdgePseError.

Handling (docs/runtime.md): any rate and channel count is accepted (down-mixed to mono, resampled to the
model's rate); integer PCM is kept as int16; float files are scaled by 2^15 and samples beyond full scale
are clipped and counted; NaN/Inf, empty, truncated, corrupt or unknown files are refused. Digital silence
and clipped input are processed and reported (the stats carry `input_silent` and `input_clipped`).
Outputs are written to a temporary file next to the target and renamed, so a failed run leaves nothing.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_pse import atomic
from edge_pse.errors import EdgePseError
from edge_pse.runtime.frontend import INT16_MAX, INT16_MIN, downmix, float_to_int16, resample

WRITE_FORMATS = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16")}
_FLOAT_SUBTYPES = {"FLOAT", "DOUBLE", "VORBIS", "OPUS", "MPEG_LAYER_III", "ALAC_32"}


@dataclass
class Clip:
    """A file converted to the model's input: int16 mono at `sample_rate`, plus what conversion did."""

    pcm: np.ndarray
    sample_rate: int
    source_rate: int
    source_channels: int
    source_frames: int
    source_subtype: str
    input_clipped: int  # samples at or beyond full scale in the source
    silent: bool  # all zeros: processed anyway, reported

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / self.sample_rate


def _wav_data_truncated(path: Path) -> bool:
    """libsndfile quietly shortens a WAV whose data chunk is cut off; the header still says how long it was."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
            return False
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            cid, clen = struct.unpack("<4sI", f.read(8))
            if cid == b"data":
                # 0 and 0xFFFFFFFF mean "length unknown" (streamed writers, RF64): nothing to compare
                return clen not in (0, 0xFFFFFFFF) and pos + 8 + clen > size
            pos += 8 + clen + (clen & 1)
    return False


def read_clip(path: str | os.PathLike, sample_rate: int) -> Clip:
    """Read a wav/flac/ogg file as int16 mono at `sample_rate`, or raise EdgePseError saying what is wrong."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise EdgePseError(f"input file not found: {path}")
    if path.stat().st_size == 0:
        raise EdgePseError(f"input file is empty (0 bytes): {path}")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as e:
        raise EdgePseError(f"cannot read {path} as audio ({_reason(e)}); use a WAV or FLAC file") from None
    if info.frames == 0:
        raise EdgePseError(f"input file has no audio samples: {path}")
    if info.format == "WAV" and _wav_data_truncated(path):
        raise EdgePseError(f"input file is truncated (its header promises more audio than it holds): {path}")
    is_float = info.subtype in _FLOAT_SUBTYPES
    try:
        data, rate = sf.read(str(path), dtype="float32" if is_float else "int16", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise EdgePseError(f"input file is truncated or corrupt ({_reason(e)}): {path}") from None
    if len(data) < info.frames:
        raise EdgePseError(f"input file is truncated ({len(data)} of {info.frames} frames): {path}")
    if len(data) == 0:
        raise EdgePseError(f"input file has no audio samples: {path}")
    if is_float:
        bad = ~np.isfinite(data)
        if bad.any():
            first = int(np.argwhere(bad)[0][0])
            raise EdgePseError(
                f"input file holds {int(bad.sum())} NaN/Inf samples (first at {first / rate:.3f} s): {path}"
            )
        mono = downmix(data)
        mono = resample(mono, rate, sample_rate)
        pcm, _ = float_to_int16(mono)
        clipped = int(np.count_nonzero(np.abs(mono) >= 1.0))
    else:
        pcm = downmix(data)
        clipped = int(np.count_nonzero((pcm == INT16_MAX) | (pcm == INT16_MIN)))
        if rate != sample_rate:
            pcm, _ = float_to_int16(resample(pcm.astype(np.float32) / 32768.0, rate, sample_rate))
    return Clip(
        pcm=np.ascontiguousarray(pcm, dtype=np.int16),
        sample_rate=sample_rate,
        source_rate=int(rate),
        source_channels=int(info.channels),
        source_frames=len(data),
        source_subtype=info.subtype,
        input_clipped=clipped,
        silent=not np.any(pcm),
    )


def to_source_rate(pcm: np.ndarray, clip: Clip) -> np.ndarray:
    """Model-rate output back at the input's rate with exactly the input's number of frames (mono)."""
    if clip.source_rate != clip.sample_rate:
        pcm, _ = float_to_int16(resample(pcm.astype(np.float32) / 32768.0, clip.sample_rate, clip.source_rate))
    out = np.zeros(clip.source_frames, dtype=np.int16)
    n = min(len(pcm), clip.source_frames)
    out[:n] = pcm[:n]
    return out


def _reason(e: Exception) -> str:
    msg = str(e)
    return msg.split(": ", 1)[-1] if ": " in msg else msg


def check_output_path(path: str | os.PathLike) -> Path:
    """Refuse an output we could not write before doing any work."""
    path = Path(path)
    if path.suffix.lower() not in WRITE_FORMATS:
        raise EdgePseError(f"output must end in {' or '.join(WRITE_FORMATS)}, got {path.name!r}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise EdgePseError(f"output folder does not exist: {parent}")
    if path.is_dir():
        raise EdgePseError(f"output is a folder: {path}")
    return path


def check_parent(path: str | os.PathLike) -> Path:
    """Refuse a file (stats JSON) whose folder does not exist, before doing any work."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise EdgePseError(f"folder does not exist: {parent}")
    return path


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically (temporary file, then os.replace)."""
    atomic.write_text(check_parent(path), text)


def write_clip(path: str | os.PathLike, pcm: np.ndarray, sample_rate: int) -> None:
    """Write int16 mono atomically: a temporary file in the same folder, then os.replace."""
    import soundfile as sf

    path = check_output_path(path)
    fmt, subtype = WRITE_FORMATS[path.suffix.lower()]
    with atomic.atomic_path(path) as tmp:
        sf.write(tmp, pcm, sample_rate, format=fmt, subtype=subtype)
