"""Speech enhancement metrics on 16 kHz mono float arrays, shared by `edge-pse evaluate` and the bench harness.

Intrusive metrics (SI-SDR, PESQ, STOI, TSOS) take the estimate and the clean reference time-aligned and of
equal length. Heavy dependencies (pesq, pystoi, speechmos, ASR engines) are imported inside the function
that needs them, so importing this module is cheap. Definitions are in docs/metrics.md.
"""

from __future__ import annotations

import math
import re
import unicodedata
import warnings
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16_000
_EPS = 1e-12


class MetricWarning(UserWarning):
    """A metric could not be computed for one utterance (the value is nan; the message says why)."""


def _pair(est: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    est = np.asarray(est, dtype=np.float64).reshape(-1)
    ref = np.asarray(ref, dtype=np.float64).reshape(-1)
    if est.shape != ref.shape:
        raise ValueError(f"estimate and reference must be time-aligned and equally long, got {est.size} and {ref.size}")
    if est.size == 0:
        raise ValueError("empty signal")
    if not (np.isfinite(est).all() and np.isfinite(ref).all()):
        raise ValueError("signal contains NaN or Inf")
    return est, ref


def si_sdr(est: np.ndarray, ref: np.ndarray) -> float:
    """Scale-invariant SDR in dB (Le Roux et al. 2019), zero-mean signals, optimal scaling of the reference."""
    est, ref = _pair(est, ref)
    est = est - est.mean()
    ref = ref - ref.mean()
    ref_energy = float(np.dot(ref, ref))
    if ref_energy <= _EPS:
        raise ValueError("SI-SDR is undefined for a silent reference (the target-absent condition has no target)")
    target = (np.dot(est, ref) / ref_energy) * ref
    residual = est - target
    return float(10 * np.log10((np.dot(target, target) + _EPS) / (np.dot(residual, residual) + _EPS)))


def si_sdri(est: np.ndarray, mix: np.ndarray, ref: np.ndarray) -> float:
    """SI-SDR improvement in dB: SI-SDR(estimate) - SI-SDR(unprocessed mixture)."""
    return si_sdr(est, ref) - si_sdr(mix, ref)


def pesq_wb(est: np.ndarray, ref: np.ndarray) -> float:
    """Wide-band PESQ (ITU-T P.862.2, MOS-LQO 1.04..4.64). nan with a MetricWarning when PESQ finds no speech."""
    from pesq import PesqError, pesq

    est, ref = _pair(est, ref)
    if not (np.any(est) and np.any(ref)):
        warnings.warn("PESQ not computed: a digitally silent signal has no utterance", MetricWarning, stacklevel=2)
        return math.nan
    try:
        return float(pesq(SAMPLE_RATE, ref.astype(np.float32), est.astype(np.float32), "wb"))
    except PesqError as e:  # NoUtterancesError, BufferTooShortError: the utterance is unusable, not the run
        warnings.warn(f"PESQ not computed: {type(e).__name__}: {e}", MetricWarning, stacklevel=2)
        return math.nan


def stoi(est: np.ndarray, ref: np.ndarray, extended: bool = False) -> float:
    """Short-time objective intelligibility (Taal et al. 2011), 0..1; extended=True gives ESTOI."""
    from pystoi import stoi as _stoi

    est, ref = _pair(est, ref)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pystoi warns on short signals and returns 1e-5; we keep its value
        return float(_stoi(ref, est, SAMPLE_RATE, extended=extended))


@dataclass(frozen=True)
class DnsMos:
    """Personalized DNSMOS (P.835 scale, 1..5): speech signal, background, overall."""

    sig: float
    bak: float
    ovrl: float


def pdnsmos(est: np.ndarray) -> DnsMos:
    """Personalized DNSMOS (DNS Challenge 5) of an enhanced clip, from the onnx models inside speechmos's wheel.

    The personalized model scores the output alone (non-intrusive) and penalises audible interfering talkers;
    it takes no enrollment clip (speechmos 0.0.1.1: run(..., model_type="dnsmos_personalized")).
    """
    from speechmos import dnsmos

    est = np.asarray(est, dtype=np.float32).reshape(-1)
    if est.size == 0 or not np.isfinite(est).all():
        raise ValueError("pDNSMOS needs a non-empty finite signal")
    peak = float(np.max(np.abs(est)))
    if peak > 1.0:  # speechmos rejects samples outside [-1, 1]; scaling keeps the clip's content
        est = est / peak
    r = dnsmos.run(est, SAMPLE_RATE, model_type="dnsmos_personalized")
    return DnsMos(sig=float(r["sig_mos"]), bak=float(r["bak_mos"]), ovrl=float(r["ovrl_mos"]))


def transcribe(wave: np.ndarray, engine: str = "auto") -> str:
    """Offline transcript of a 16 kHz clip: Whisper tiny.en (faster-whisper) or pocketsphinx (torch-free)."""
    from edge_pse.eval.asr import transcribe as _transcribe

    return _transcribe(wave, engine=engine)


_PUNCT = re.compile(r"[^\w\s']")


def normalize_text(text: str) -> list[str]:
    """Words for WER: NFKC, lowercase, punctuation removed (apostrophes inside words kept), '-' splits words."""
    text = unicodedata.normalize("NFKC", text).lower().replace("-", " ")
    words = _PUNCT.sub(" ", text).split()
    return [w.strip("'") for w in words if w.strip("'")]


def word_errors(hyp: str, ref: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference word count) by Levenshtein distance over words."""
    h, r = normalize_text(hyp), normalize_text(ref)
    prev = list(range(len(h) + 1))
    for i, rw in enumerate(r, start=1):
        cur = [i] + [0] * len(h)
        for j, hw in enumerate(h, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (rw != hw))
        prev = cur
    return prev[-1], len(r)


def wer(hyp: str, ref: str) -> float:
    """Word error rate of one hypothesis; for a dataset, sum word_errors() over utterances then divide."""
    errors, n = word_errors(hyp, ref)
    if n == 0:
        raise ValueError("WER is undefined for an empty reference transcript")
    return errors / n


# TSOS: see docs/metrics.md for the definition and why these thresholds.
TSOS_FRAME = 320  # 20 ms at 16 kHz, non-overlapping
TSOS_ACTIVE_RANGE_DB = 30.0  # target-active frames: within 30 dB of the loudest clean-target frame ...
TSOS_ACTIVE_FLOOR_DB = -70.0  # ... and above -70 dBFS mean power (digital silence is never "active")
TSOS_DROP_DB = 10.0  # a frame is over-suppressed when the output is > 10 dB below the clean target
TSOS_SHARE = 0.05  # an utterance is over-suppressed when > 5 % of its target-active frames are


@dataclass(frozen=True)
class Tsos:
    """Target-speaker over-suppression of one utterance."""

    over_suppressed: bool
    share: float  # over-suppressed frames / target-active frames
    active_frames: int


def _frame_power_db(x: np.ndarray, frame: int) -> np.ndarray:
    n = x.size // frame
    frames = x[: n * frame].reshape(n, frame)
    return 10 * np.log10(np.mean(frames**2, axis=1) + _EPS)


def tsos(
    est: np.ndarray,
    ref: np.ndarray,
    drop_db: float = TSOS_DROP_DB,
    share_threshold: float = TSOS_SHARE,
    active_range_db: float = TSOS_ACTIVE_RANGE_DB,
    active_floor_db: float = TSOS_ACTIVE_FLOOR_DB,
) -> Tsos:
    """Does the output suppress the target speaker far below the clean target?

    Both signals are cut into non-overlapping 20 ms frames (time-aligned, no scale fitting: a globally
    too-quiet output counts as over-suppression). A frame is target-active when its clean-target power is
    within `active_range_db` of the utterance's loudest frame and above `active_floor_db` dBFS. An active
    frame is over-suppressed when the output's power is more than `drop_db` below the clean target's.
    The utterance is over-suppressed when the share of such frames exceeds `share_threshold`.
    The dataset TSOS rate is the mean of `over_suppressed` over utterances that have a target.
    """
    est, ref = _pair(est, ref)
    if est.size < TSOS_FRAME:
        raise ValueError(f"TSOS needs at least one {TSOS_FRAME}-sample frame")
    ref_db = _frame_power_db(ref, TSOS_FRAME)
    est_db = _frame_power_db(est, TSOS_FRAME)
    active = (ref_db >= ref_db.max() - active_range_db) & (ref_db > active_floor_db)
    n_active = int(active.sum())
    if n_active == 0:
        raise ValueError("TSOS is undefined without target speech (silent reference)")
    share = float(np.mean(est_db[active] < ref_db[active] - drop_db))
    return Tsos(over_suppressed=share > share_threshold, share=share, active_frames=n_active)


ONSET_WINDOWS_MS = (100, 200, 500)  # how soon after an onset the target is measured
ONSET_PAUSE_MS = 300  # an onset follows at least this much target silence (or the start of the stream)


def target_onsets(ref: np.ndarray, pause_ms: int = ONSET_PAUSE_MS) -> list[int]:
    """Sample positions where the target starts talking: a target-active 20 ms frame (TSOS's definition) after
    at least `pause_ms` of inactive frames. The start of the clip counts as silence before it, because a
    streaming model starts with no history: a voice already talking at sample 0 is an onset to it."""
    ref = np.asarray(ref, dtype=np.float64).reshape(-1)
    ref_db = _frame_power_db(ref, TSOS_FRAME)
    if ref_db.size == 0:
        return []
    active = (ref_db >= ref_db.max() - TSOS_ACTIVE_RANGE_DB) & (ref_db > TSOS_ACTIVE_FLOOR_DB)
    pause = max(1, round(pause_ms * SAMPLE_RATE / 1000 / TSOS_FRAME))
    since = pause  # inactive frames before the current one
    onsets = []
    for i, a in enumerate(active):
        if a and since >= pause:
            onsets.append(i * TSOS_FRAME)
        since = 0 if a else since + 1
    return onsets


def onset_shares(
    est: np.ndarray, ref: np.ndarray, windows_ms: tuple[int, ...] = ONSET_WINDOWS_MS
) -> dict[int, list[float]]:
    """Per window length: for each target onset, the share of the target the output passes in that window after
    it: the least-squares scale of the target in the output there (1 = passed at its level, 0 = muted).
    A window that runs past the end of the clip is left out. A causal PSE model has to decide whose voice
    starts; one that waits to be sure mutes the first words of every turn (docs/metrics.md)."""
    est, ref = _pair(est, ref)
    out: dict[int, list[float]] = {w: [] for w in windows_ms}
    for t in target_onsets(ref):
        for w in windows_ms:
            n = w * SAMPLE_RATE // 1000
            if t + n > ref.size:
                continue
            r, e = ref[t : t + n], est[t : t + n]
            out[w].append(float(np.dot(e, r) / max(float(np.dot(r, r)), _EPS)))
    return out


def level_db(x: np.ndarray) -> float:
    """Mean power in dBFS (a full-scale sine is -3 dB)."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    return float(10 * np.log10(np.mean(x**2) + _EPS))


def target_gain_db(output: np.ndarray, target: np.ndarray) -> float:
    """Level of the target's component in the output relative to the target itself, in dB (0 = kept at its
    level; -10 = the model turned the voice down by 10 dB): 20 log10 of the least-squares scale of the target
    in the output. A component in opposite phase (scale <= 0) counts as -60 dB: the voice is gone."""
    output, target = _pair(output, target)
    energy = float(np.dot(target, target))
    if energy <= _EPS:
        raise ValueError("the target is silent: it has no level to keep")
    alpha = float(np.dot(output, target)) / energy
    return max(-60.0, float(20 * np.log10(alpha))) if alpha > 0 else -60.0


def segment_level_db(output: np.ndarray, mixture: np.ndarray, segments: list[tuple[int, int]]) -> float:
    """Output level relative to the mixture over the given [start, end) sample ranges (e.g. the target's
    pauses in a long stream: more negative = the other voices are removed while the target is silent)."""
    if not segments:
        raise ValueError("no segments to measure")
    out = np.concatenate([output[a:b] for a, b in segments])
    mix = np.concatenate([mixture[a:b] for a, b in segments])
    return absent_level_db(out, mix)


def absent_level_db(output: np.ndarray, mixture: np.ndarray) -> float:
    """Target-absent condition: output level relative to the input mixture in dB (more negative = better)."""
    output, mixture = _pair(output, mixture)
    if np.dot(mixture, mixture) <= _EPS:
        raise ValueError("the mixture is silent: nothing to attenuate")
    return level_db(output) - level_db(mixture)
