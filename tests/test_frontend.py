"""The streaming front-end: exact int16 <-> float framing, clipping counted, resampling, no per-hop allocation."""

import numpy as np
import pytest
import soundfile as sf

from edge_pse import demo
from edge_pse.runtime.frontend import (
    HopFramer,
    OutputQuantizer,
    StreamResampler,
    downmix,
    float_to_int16,
    resample,
)

HOP = 160


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    pcm, rate = sf.read(demo.path(demo.MIXTURE), dtype="int16")
    assert rate == 16000
    return pcm


def test_framer_hands_out_the_exact_samples_scaled_by_2_pow_minus_15(speech: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    framer = HopFramer(HOP, capacity_hops=8)
    hop = np.zeros(HOP, dtype=np.float32)
    got, pos = [], 0
    while pos < len(speech):
        n = int(rng.integers(1, 700))  # audio callbacks deliver any block size
        assert framer.push(speech[pos : pos + n]) == 0
        pos += n
        while framer.hops_available():
            framer.pop_hop(hop)
            got.append(hop.copy())
    out = np.concatenate(got)
    whole = len(speech) // HOP * HOP
    assert len(out) == whole
    np.testing.assert_array_equal(out * 32768.0, speech[:whole].astype(np.float32))
    assert framer.dropped == 0


def test_framer_counts_what_a_full_ring_drops() -> None:
    framer = HopFramer(HOP, capacity_hops=2)
    assert framer.push(np.ones(300, np.int16)) == 0
    assert framer.push(np.ones(100, np.int16)) == 80
    assert framer.dropped == 80 and framer.hops_available() == 2


def test_output_quantizer_round_trip_is_exact_and_counts_clipping(speech: np.ndarray) -> None:
    q = OutputQuantizer(HOP)
    out = np.zeros(HOP, np.int16)
    for start in range(0, len(speech) - HOP, HOP):
        x = speech[start : start + HOP]
        q(x.astype(np.float32) / 32768.0, out)
        np.testing.assert_array_equal(out, x)
    assert q.clipped == 0
    y = np.zeros(HOP, np.float32)
    y[:4] = [1.5, -2.0, 0.99997, -1.0]  # 1.5 and -2 clip; 0.99997 -> 32767; -1.0 -> -32768 fits
    q(y, out)
    assert q.clipped == 2
    assert list(out[:4]) == [32767, -32768, 32767, -32768]


def test_float_to_int16_counts_clipped_samples() -> None:
    pcm, clipped = float_to_int16(np.array([0.5, 1.0, -1.0, -1.2, 3.0]))
    assert list(pcm) == [16384, 32767, -32768, -32768, 32767]
    assert clipped == 3


def test_downmix_and_resample_48k_stereo_to_16k_mono() -> None:
    t = np.arange(48000 * 2) / 48000
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([tone, tone * 0.5], axis=1).astype(np.float32)
    mono = resample(downmix(stereo), 48000, 16000)
    assert len(mono) == 32000
    spectrum = np.abs(np.fft.rfft(mono[4000:20000]))
    assert abs(np.argmax(spectrum) * 16000 / 16000 - 440) <= 1
    np.testing.assert_allclose(np.sqrt(np.mean(mono[1000:-1000] ** 2)), 0.375 / np.sqrt(2), rtol=0.01)


@pytest.mark.parametrize("rate", [48000, 44100, 32000])
def test_streaming_resampler_is_flat_and_steady(rate: int) -> None:
    """Live input: device-rate blocks of 10 ms in, one 160-sample hop out per block once started (no bursts,
    so the runner sees audio at an even pace), flat to 7 kHz, a delay of a few samples."""
    block = rate // 100
    rs = StreamResampler(rate, 16000)
    x = np.zeros(rate, np.int16)
    x[rate // 2] = 20000  # an impulse half way
    outs = [rs(x[i : i + block]) for i in range(0, rate, block)]
    assert [len(o) for o in outs[3:]] == [160] * (len(outs) - 3)
    y = np.concatenate([*outs, rs(np.zeros(0, np.int16), last=True)]).astype(np.float64)
    assert abs(len(y) - 16000) <= 1
    assert 0 <= np.argmax(np.abs(y)) - 8000 <= 4
    gain = np.abs(np.fft.rfft(y))
    f = np.fft.rfftfreq(len(y), 1 / 16000)
    band = (f > 100) & (f < 7000)
    db = 20 * np.log10(gain[band] / gain[band].mean())
    assert np.max(np.abs(db)) < 0.3


def test_per_hop_path_works_in_the_callers_buffers(speech: np.ndarray) -> None:
    """The hop path writes into buffers made once (tracemalloc cannot tell numpy temporaries from
    CPython's own frame chunks, so this checks where the results land instead)."""
    framer = HopFramer(HOP, capacity_hops=8)
    q = OutputQuantizer(HOP)
    x = np.zeros(HOP, np.float32)
    out = np.zeros(HOP, np.int16)
    for start in range(0, 50 * HOP, HOP):
        framer.push(speech[start : start + HOP])
        assert np.shares_memory(framer.peek_hop(), framer.buf)
        framer.pop_hop(x)
        assert q(x, out) is out
        np.testing.assert_array_equal(out, speech[start : start + HOP])


def test_float_to_int16_rounds_to_the_nearest_step_ties_to_even() -> None:
    """Exact values written out by hand (x * 2^15, then the nearest integer, ties to the even one): truncation
    (0.7 -> 0, -1.6 -> -1) or rounding ties away from zero (2.5 -> 3) each change one of them."""
    steps = np.array([0.0, 0.7, 1.5, 2.5, -1.6, -2.5, 16383.5, -32768.0, 32766.6, 32767.49])
    pcm, clipped = float_to_int16(steps / 32768.0)
    assert pcm.tolist() == [0, 1, 2, 2, -2, -2, 16384, -32768, 32767, 32767] and clipped == 0
    assert pcm.dtype == np.int16
