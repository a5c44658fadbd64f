"""The evaluation metrics on signals whose answer is known."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from edge_pse.eval import metrics
from tests.speechlike import DATA, noise, real_speech, speech_like

SR = 16_000


@pytest.fixture(scope="module", params=["real", "synthetic"])
def speech(request: pytest.FixtureRequest) -> np.ndarray:
    if request.param == "synthetic":
        return speech_like()
    wave = real_speech()
    if wave is None:
        pytest.skip(f"no speech under {DATA}")
    return wave


def test_si_sdr_of_a_scaled_copy_is_very_high(speech: np.ndarray) -> None:
    assert metrics.si_sdr(0.37 * speech, speech) > 60


def test_si_sdr_of_independent_noise_is_very_low(speech: np.ndarray) -> None:
    assert metrics.si_sdr(noise(speech.size), speech) < -20


def test_si_sdr_of_a_known_mixture(speech: np.ndarray) -> None:
    # target + noise at 5 dB SNR: SI-SDR is close to the SNR (noise nearly orthogonal to the target)
    n = noise(speech.size)
    n *= np.sqrt(np.sum(speech**2) / np.sum(n**2) / 10 ** (5 / 10))
    assert metrics.si_sdr(speech + n, speech) == pytest.approx(5.0, abs=0.3)


def test_si_sdri_of_identity_is_zero(speech: np.ndarray) -> None:
    mix = speech + noise(speech.size)
    assert metrics.si_sdri(mix, mix, speech) == pytest.approx(0.0, abs=1e-9)
    assert metrics.si_sdri(speech, mix, speech) > 20


def test_si_sdr_rejects_a_silent_reference_and_misaligned_signals(speech: np.ndarray) -> None:
    with pytest.raises(ValueError, match="silent reference"):
        metrics.si_sdr(speech, np.zeros_like(speech))
    with pytest.raises(ValueError, match="equally long"):
        metrics.si_sdr(speech[:-1], speech)


def test_pesq_of_clean_is_high_and_of_noise_is_low(speech: np.ndarray) -> None:
    assert metrics.pesq_wb(speech, speech) > 4.0
    assert metrics.pesq_wb(noise(speech.size, level=0.3), speech) < 2.0


def test_pesq_without_speech_is_nan_with_a_reason() -> None:
    silence = np.zeros(2 * SR, dtype=np.float32)
    with pytest.warns(metrics.MetricWarning, match="PESQ not computed"):
        assert math.isnan(metrics.pesq_wb(silence, silence))
    blip = noise(SR // 10)  # PESQ needs at least 0.25 s
    with pytest.warns(metrics.MetricWarning, match="BufferTooShortError"):
        assert math.isnan(metrics.pesq_wb(blip, blip))


def test_stoi_of_itself_is_one_and_of_noise_is_low(speech: np.ndarray) -> None:
    assert metrics.stoi(speech, speech) == pytest.approx(1.0, abs=1e-3)
    assert metrics.stoi(noise(speech.size, level=0.3), speech) < 0.5


def test_tsos_flags_half_the_frames_attenuated_by_20_db(speech: np.ndarray) -> None:
    frame = metrics.TSOS_FRAME
    gain = np.ones_like(speech)
    for start in range(0, speech.size, 2 * frame):  # every other 20 ms frame down by 20 dB
        gain[start : start + frame] = 0.1
    r = metrics.tsos(speech * gain, speech)
    assert r.over_suppressed
    assert r.share == pytest.approx(0.5, abs=0.05)


def test_tsos_passes_a_slightly_scaled_copy_and_added_noise(speech: np.ndarray) -> None:
    r = metrics.tsos(0.8 * speech, speech)
    assert not r.over_suppressed and r.share == 0.0 and r.active_frames > 10
    assert not metrics.tsos(speech + noise(speech.size, level=0.01), speech).over_suppressed


def test_tsos_needs_a_target(speech: np.ndarray) -> None:
    with pytest.raises(ValueError, match="without target speech"):
        metrics.tsos(speech, np.zeros_like(speech))


def test_absent_level_of_a_minus_20_db_copy(speech: np.ndarray) -> None:
    mix = speech + noise(speech.size)
    assert metrics.absent_level_db(0.1 * mix, mix) == pytest.approx(-20.0, abs=1e-6)
    assert metrics.absent_level_db(mix, mix) == pytest.approx(0.0, abs=1e-9)


def test_wer_counts_word_edits_after_normalisation() -> None:
    assert metrics.wer("Hello, world!", "hello world") == 0.0
    assert metrics.wer("the cat sat", "the cat sat down") == pytest.approx(0.25)  # one deletion
    assert metrics.wer("a big cat sat", "the cat sat") == pytest.approx(2 / 3)  # one substitution, one insertion
    assert metrics.word_errors("", "one two") == (2, 2)
    with pytest.raises(ValueError, match="empty reference"):
        metrics.wer("words", " ,. ")


def test_pdnsmos_prefers_clean_speech_over_noise() -> None:
    speech = real_speech()  # one source only: pDNSMOS takes ~4 s per clip here
    speech = speech_like() if speech is None else speech
    clean = metrics.pdnsmos(speech)
    noisy = metrics.pdnsmos(speech + noise(speech.size, level=0.2))
    for v in (clean.sig, clean.bak, clean.ovrl, noisy.ovrl):
        assert 1.0 <= v <= 5.0
    assert clean.bak > noisy.bak and clean.ovrl > noisy.ovrl


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["whisper", "pocketsphinx"])
def test_asr_transcribes_real_speech_and_not_noise(engine: str) -> None:
    wave = real_speech()
    if wave is None:
        pytest.skip(f"no speech under {DATA}")
    from edge_pse.eval.asr import transcribe

    start = time.perf_counter()
    text = metrics.transcribe(wave, engine=engine)
    elapsed = time.perf_counter() - start
    assert len(metrics.normalize_text(text)) >= 8, text
    assert transcribe(wave, engine=engine) == text  # deterministic
    hyp_noise = transcribe(noise(wave.size, level=0.3), engine=engine)
    assert len(metrics.normalize_text(hyp_noise)) < len(metrics.normalize_text(text)) / 2
    assert elapsed < 60


def test_onsets_are_found_after_pauses_and_at_the_start_of_the_stream() -> None:
    """Bursts at 0.0, 1.0, 1.45 and 2.5 s: onsets at 0 (the stream starts), 1.0 and 2.5 s (after 0.4 and 0.5 s
    of silence), not at 1.45 s (0.25 s after the burst before it: a pause within a turn)."""
    from edge_pse.eval.metrics import target_onsets

    rng = np.random.default_rng(0)
    ref = np.zeros(48_000)
    for a, b in ((0.0, 0.6), (1.0, 1.2), (1.45, 2.0), (2.5, 2.9)):
        ref[int(a * 16_000) : int(b * 16_000)] = 0.1 * rng.standard_normal(int(b * 16_000) - int(a * 16_000))
    assert target_onsets(ref) == [0, 16_000, 40_000]
    assert target_onsets(np.zeros(16_000)) == []


def test_onset_share_counts_what_the_output_passes_after_each_onset() -> None:
    """White-noise bursts (energy spread evenly in time): an output that mutes the first 150 ms after each onset
    and passes the rest passes 0 of the first 100 ms, (200 - 150) / 200 of the first 200 ms and 350 / 500 of
    the first 500 ms; a half-level copy passes 0.5 everywhere."""
    from edge_pse.eval.metrics import onset_shares, target_onsets

    rng = np.random.default_rng(1)
    ref = np.zeros(64_000)
    for a in (0.5, 2.0):
        ref[int(a * 16_000) : int((a + 1.0) * 16_000)] = 0.1 * rng.standard_normal(16_000)
    onsets = target_onsets(ref)
    assert onsets == [8_000, 32_000]
    muted = ref.copy()
    for t in onsets:
        muted[t : t + 2_400] = 0.0
    shares = onset_shares(muted, ref)
    assert len(shares[100]) == len(shares[200]) == len(shares[500]) == 2
    assert max(abs(v) for v in shares[100]) < 1e-9
    assert all(abs(v - 0.25) < 0.03 for v in shares[200])
    assert all(abs(v - 0.7) < 0.03 for v in shares[500])
    assert all(abs(v - 0.5) < 1e-9 for w in (100, 200, 500) for v in onset_shares(0.5 * ref, ref)[w])
