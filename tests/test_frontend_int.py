"""The pure-integer front-end (the firmware reference) against the float path the runtime uses: within 1 LSB."""

import numpy as np
import pytest
import soundfile as sf

from edge_pse import demo
from edge_pse.bundle import TensorIO
from edge_pse.runtime.backends.base import dequantize, quantize_into
from edge_pse.runtime.frontend import HopFramer, OutputQuantizer, downmix
from edge_pse.runtime.frontend_int import FixedMultiplier, IntFrontEnd, downmix_int, frame_hops

HOP = 160


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    pcm, _ = sf.read(demo.path(demo.MIXTURE), dtype="int16")
    return pcm


@pytest.mark.parametrize("real", [2.0**-15 / 0.0078125, 2.0**-15 / 0.0031, 0.0123 * 2**15, 3.7, 1e-4, 0.5])
def test_fixed_multiplier_rounds_like_the_real_product(real: float) -> None:
    x = np.arange(-32768, 32768, dtype=np.int64)
    exact = x * real
    got = FixedMultiplier.from_real(real).apply(x)
    assert np.max(np.abs(got - exact)) <= 0.5 + 1e-6 * np.max(np.abs(exact))
    if real in (0.5, 2.0**-15 / 0.0078125):  # exact powers of two: ties must go to even, as np.rint does
        np.testing.assert_array_equal(got, np.rint(exact))


def test_integer_downmix_equals_the_float_front_end(speech: np.ndarray) -> None:
    stereo = np.stack([speech, np.roll(speech, 37)], axis=1)
    three = np.stack([speech, -speech, np.roll(speech, 5)], axis=1)
    for frames in (stereo, three):
        np.testing.assert_array_equal(downmix_int(frames), downmix(frames))
        mean = frames.astype(np.float64).mean(axis=1)
        assert np.max(np.abs(downmix_int(frames) - mean)) <= 0.5


@pytest.mark.parametrize(
    ("in_scale", "in_zp", "out_scale", "out_zp"),
    [(1 / 128, 0, 1 / 128, 0), (0.0031, -3, 0.0042, 5), (0.02, 10, 0.0003, -7)],  # the last one clips
)
def test_integer_path_matches_the_float_path_within_one_lsb(speech, in_scale, in_zp, out_scale, out_zp) -> None:
    """Real audio through both: the hop framer + int8 model input + int8 model output -> int16 PCM.

    The float path is what the runtime does: HopFramer (x * 2^-15), the backends' quantize_into /
    dequantize with the manifest's scales, OutputQuantizer. The model in between is the identity on int8
    (what differs between the paths is the front-end arithmetic, not the network).
    """
    t_in = TensorIO("hop", "int8", (1, HOP), in_scale, in_zp)
    t_out = TensorIO("out", "int8", (1, HOP), out_scale, out_zp)
    framer = HopFramer(HOP, capacity_hops=4)
    quant = OutputQuantizer(HOP)
    fe = IntFrontEnd(in_scale, in_zp, out_scale, out_zp)
    x = np.zeros(HOP, np.float32)
    q_f = np.zeros(HOP, np.int8)
    out_f = np.zeros(HOP, np.int16)
    worst_q = worst_out = exact = 0
    for hop in frame_hops(speech, HOP):
        framer.push(hop)
        framer.pop_hop(x)
        quantize_into(q_f, x, t_in)
        quant(dequantize(q_f, t_out), out_f)
        q_i = fe.quantize_input(hop)
        # each stage from the same input: one int8 LSB apart at the input would be 2^15*scale apart at the output
        out_i = fe.dequantize_output(q_f)
        worst_q = max(worst_q, int(np.max(np.abs(q_f.astype(int) - q_i))))
        worst_out = max(worst_out, int(np.max(np.abs(out_f.astype(int) - out_i))))
        same = q_f == q_i
        exact += int(np.count_nonzero(same))
    assert worst_q <= 1
    assert worst_out <= 1
    assert exact >= 0.999 * len(speech)  # ties to even on both sides: nearly every sample is identical
    assert abs(quant.clipped - fe.clipped) <= max(1, quant.clipped // 1000)
    if out_scale * 128 * 2**15 > 32768:
        assert fe.clipped > 0  # the clipping case really clips, and both paths count it
