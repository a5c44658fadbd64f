"""Reading and writing audio files for file runs, with every bad input turned into a clear EdgePseError.

Handling (docs/runtime.md): any rate and channel count is accepted (down-mixed to mono, resampled to the
model's rate); integer PCM is kept as int16; float files are scaled by 2^15 and samples beyond full scale
are clipped and counted; NaN/Inf, empty, truncated, corrupt or unknown files are refused. Digital silence
and clipped input are processed and reported (the stats carry `input_silent` and `input_clipped`).
Outputs are written to a temporary file next to the target and renamed, so a failed run leaves nothing.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
from collections.abc import Iterator
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


# rates a file may declare: below 8 kHz there is no speech band to enhance, and a header claiming 1 Hz would
# ask the resampler for 16000x its size in memory; above 384 kHz no audio interface records
MIN_RATE, MAX_RATE = 8_000, 384_000
ESTIMATED_LENGTH_FORMATS = ("MP3",)  # formats whose header frame count is an estimate
ESTIMATE_TOLERANCE = 0.01  # share of an estimated length that may be missing (614016 of 615427 seen)
MPEG_FRAME = 1152  # samples per MPEG audio frame
BLOCK_SECONDS = 1.0  # file runs hold about this much audio per stage, whatever the file's length


class ClipReader:
    """An audio file read in blocks as int16 mono at the model's rate: memory stays bounded by the block size,
    not the file's duration (a Pi has 1-8 GB; an hour of 48 kHz stereo is 1.4 GB as float32).

    The header is checked on construction (missing, empty, unreadable, truncated, absurd rate); samples are
    checked as they stream (NaN/Inf raise with their position). Integer PCM is kept as int16; float files are
    scaled by 2^15; resampling is soxr HQ in streaming form, sample-identical to resampling the whole clip.
    After `blocks()` is exhausted, `input_clipped`, `silent` and `samples` describe what was read.
    """

    def __init__(self, path: str | os.PathLike, sample_rate: int) -> None:
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
        if not MIN_RATE <= info.samplerate <= MAX_RATE:
            raise EdgePseError(
                f"input file declares {info.samplerate} Hz; files from {MIN_RATE} to {MAX_RATE} Hz are accepted: {path}"
            )
        if info.format == "WAV" and _wav_data_truncated(path):
            raise EdgePseError(f"input file is truncated (its header promises more audio than it holds): {path}")
        # an MP3 header's frame count is estimated from the bit rate: the decoded frames are the truth (within
        # ESTIMATE_TOLERANCE of the claim; more missing is a cut file)
        self.exact_length = info.format not in ESTIMATED_LENGTH_FORMATS
        self.path = path
        self.sample_rate = sample_rate
        self.source_rate = int(info.samplerate)
        self.source_channels = int(info.channels)
        self.source_frames = int(info.frames)
        self.source_subtype = info.subtype
        self.is_float = info.subtype in _FLOAT_SUBTYPES
        self.input_clipped = 0
        self.silent = True
        self.samples = 0  # model-rate samples handed out so far
        self.finished = False  # blocks() read the whole file and checked it

    @property
    def expected_samples(self) -> int:
        """Model-rate samples the whole file will give (for progress and preallocation)."""
        return -(-self.source_frames * self.sample_rate // self.source_rate)

    def blocks(self, seconds: float = BLOCK_SECONDS) -> Iterator[np.ndarray]:
        """int16 mono blocks at the model's rate, in order; raises EdgePseError on a bad sample or a short file."""
        import soundfile as sf
        import soxr

        rate, path = self.source_rate, self.path
        size = max(1, int(seconds * rate))
        resampler = (
            soxr.ResampleStream(rate, self.sample_rate, 1, dtype="float32", quality="HQ")
            if rate != self.sample_rate
            else None
        )
        frames = 0
        try:
            with sf.SoundFile(str(path)) as f:
                dtype = "float32" if self.is_float else "int16"
                while True:
                    data = f.read(size, dtype=dtype, always_2d=True)
                    last = len(data) < size or (self.exact_length and frames + len(data) >= self.source_frames)
                    pcm = self._convert(data, frames, resampler, last)
                    frames += len(data)
                    if len(pcm):
                        self.samples += len(pcm)
                        self.silent = self.silent and not np.any(pcm)
                        yield pcm
                    if last:
                        break
        except (sf.LibsndfileError, RuntimeError) as e:
            raise EdgePseError(f"input file is truncated or corrupt ({_reason(e)}): {path}") from None
        short = self.source_frames - frames
        if short > (0 if self.exact_length else max(MPEG_FRAME * 4, ESTIMATE_TOLERANCE * self.source_frames)):
            raise EdgePseError(f"input file is truncated ({frames} of {self.source_frames} frames): {path}")
        self.source_frames = frames  # what was decoded (the same as the header's count where that is exact)
        self.finished = True

    def _convert(self, data: np.ndarray, offset: int, resampler, last: bool) -> np.ndarray:
        if self.is_float:
            bad = ~np.isfinite(data)
            if bad.any():
                first = offset + int(np.argwhere(bad)[0][0])
                raise EdgePseError(
                    f"input file holds NaN/Inf samples (first at {first / self.source_rate:.3f} s): {self.path}"
                )
            mono = downmix(data)
            if resampler is not None:
                mono = resampler.resample_chunk(mono, last=last)
            self.input_clipped += int(np.count_nonzero(np.abs(mono) >= 1.0))
            return float_to_int16(mono)[0]
        pcm = downmix(data)
        self.input_clipped += int(np.count_nonzero((pcm == INT16_MAX) | (pcm == INT16_MIN)))
        if resampler is None:
            return np.ascontiguousarray(pcm, dtype=np.int16)
        return float_to_int16(resampler.resample_chunk(pcm.astype(np.float32) / 32768.0, last=last))[0]


def read_clip(path: str | os.PathLike, sample_rate: int) -> Clip:
    """A whole (short) file as int16 mono at `sample_rate`, or EdgePseError saying what is wrong. File runs
    stream instead (ClipReader); this serves clips that fit in memory (enrollment, benches, tests)."""
    reader = ClipReader(path, sample_rate)
    blocks = list(reader.blocks())
    pcm = np.concatenate(blocks) if blocks else np.zeros(0, np.int16)
    return Clip(
        pcm=np.ascontiguousarray(pcm, dtype=np.int16),
        sample_rate=sample_rate,
        source_rate=reader.source_rate,
        source_channels=reader.source_channels,
        source_frames=reader.source_frames,
        source_subtype=reader.source_subtype,
        input_clipped=reader.input_clipped,
        silent=reader.silent,
    )


class ClipWriter:
    """int16 mono blocks at the model's rate in; a file at the input's rate with exactly `frames` frames out.

    Written to a temporary file beside the target and renamed by `commit()`, so an error or an interrupt
    leaves nothing (and never a half-written output); streamed, so memory does not grow with the duration.
    """

    def __init__(self, path: str | os.PathLike, model_rate: int, rate: int, frames: int | None) -> None:
        """`frames` None: not known yet (an MP3's header only estimates it); set it before the last writes."""
        import soundfile as sf
        import soxr

        self.path = check_output_path(path)
        fmt, subtype = WRITE_FORMATS[self.path.suffix.lower()]
        self.frames, self.written = frames, 0
        self._resampler = (
            soxr.ResampleStream(model_rate, rate, 1, dtype="float32", quality="HQ") if rate != model_rate else None
        )
        self._atomic = atomic.atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        try:
            with self._write_errors():
                self._file = sf.SoundFile(self._tmp, "w", rate, 1, subtype, format=fmt)
        except BaseException:
            self.abort()
            raise

    def write(self, pcm: np.ndarray, last: bool = False) -> None:
        if self._resampler is not None:
            pcm = float_to_int16(self._resampler.resample_chunk(pcm.astype(np.float32) / 32768.0, last=last))[0]
        if self.frames is not None:
            pcm = pcm[: self.frames - self.written]
        with self._write_errors():
            self._file.write(pcm)
        self.written += len(pcm)

    def commit(self) -> None:
        """Flush the resampler, pad to exactly `frames` frames, close and rename over the target."""
        self.write(np.zeros(0, np.int16), last=True)
        with self._write_errors():
            if self.written < self.frames:
                self._file.write(np.zeros(self.frames - self.written, np.int16))
                self.written = self.frames
            self._file.close()
            self._atomic.__exit__(None, None, None)

    @contextlib.contextmanager
    def _write_errors(self) -> Iterator[None]:
        """libsndfile says only "System error." when the disk is full: one line that says what failed."""
        import soundfile as sf

        try:
            yield
        except (sf.LibsndfileError, OSError) as e:
            raise EdgePseError(f"cannot write {self.path} ({_reason(e)}): is the disk full?") from None

    def abort(self) -> None:
        """Drop the temporary file; the target is left as it was."""
        with contextlib.suppress(Exception):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self._atomic.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> ClipWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is not None:
            self.abort()


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


def check_distinct(inputs: dict[str, str | os.PathLike | None], outputs: dict[str, str | os.PathLike | None]) -> None:
    """Refuse, before any work, an output that is one of the inputs or another output: the same path, a symlink
    to it or a hard link of it would be overwritten by the run (an enrollment recording replaced by a profile,
    the enhanced audio by its stats)."""
    files = [(f"--{k}", Path(v)) for k, v in inputs.items() if v is not None]
    for name, out in ((f"--{k}", Path(v)) for k, v in outputs.items() if v is not None):
        for other, path in files:
            if os.path.realpath(out) == os.path.realpath(path) or (
                out.exists() and path.exists() and os.path.samefile(out, path)
            ):
                raise EdgePseError(f"{name} {out} is the same file as {other} {path}: it would be overwritten")
        files.append((name, out))


def check_writable(path: str | os.PathLike) -> Path:
    """Refuse an output whose folder we cannot write (read-only, no permission), before any work."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as e:
        raise EdgePseError(f"cannot write to {parent}: {e.strerror or e}") from None
    return path


def land_together(commit_audio, stats_path: str | os.PathLike | None, text: str) -> None:
    """The audio and its stats JSON land together or not at all: the JSON is written to a temporary file first,
    then the audio is renamed into place, then the JSON (a failure before that leaves neither)."""
    if stats_path is None:
        commit_audio()
        return
    with atomic.atomic_path(stats_path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
        commit_audio()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically (temporary file, then os.replace)."""
    atomic.write_text(check_parent(path), text)
