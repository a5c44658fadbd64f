"""The front-end in integer arithmetic only: a reference for firmware authors (C on a microcontroller or a
DSP) to port line by line. numpy integer ops only; no float anywhere on the per-hop path.

The float front-end (`frontend.py`) and this one agree within 1 LSB (tests/test_frontend_int.py):
- down-mix: the channel sum in int32, divided with rounding half away from zero;
- framing: int16 samples are Q15 values, so "scale by 2^-15" costs nothing: the ring holds the hop as is;
- rounding: ties to even everywhere, like np.rint in the float path;
- the model's int8 input: Q15 -> int8 with the input (scale, zero point) as a 32-bit fixed-point multiplier
  and a shift (the TFLite/CMSIS-NN scheme), computed once from the manifest's float scale;
- the model's int8 output: int8 -> int16 PCM the same way, clipped to int16 with the clipped samples counted.
Resampling is not here: firmware should run the codec at 16 kHz (every I2S codec on a Pi HAT can), the
float path resamples with soxr.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

INT16_MIN, INT16_MAX = -32768, 32767
INT8_MIN, INT8_MAX = -128, 127


@dataclass(frozen=True)
class FixedMultiplier:
    """A positive real multiplier as mantissa * 2^-shift, mantissa a Q31 integer in [2^30, 2^31)."""

    mantissa: int
    shift: int

    @classmethod
    def from_real(cls, real: float) -> FixedMultiplier:
        """Done once, on the host or at load time (the only float in this module)."""
        if not real > 0:
            raise ValueError(f"multiplier must be positive, got {real}")
        frac, exp = math.frexp(real)  # real = frac * 2^exp, frac in [0.5, 1)
        mantissa = round(frac * (1 << 31))
        if mantissa == 1 << 31:  # frac rounded up to 1.0
            mantissa //= 2
            exp += 1
        return cls(mantissa=mantissa, shift=31 - exp)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """round(x * real) for int arrays in int64, ties to even (as np.rint and the float path do).

        Firmware: a 32x32->64-bit multiply, then a rounding right shift; the tie test is one mask compare.
        """
        prod = x.astype(np.int64) * self.mantissa
        if self.shift <= 0:
            return prod << -self.shift
        half = np.int64(1) << (self.shift - 1)
        mag = np.abs(prod)
        rounded = (mag + half) >> self.shift
        tie = (mag & ((half << 1) - 1)) == half
        rounded -= tie & (rounded & 1).astype(bool)  # a tie rounded up to odd goes back down to even
        return np.where(prod < 0, -rounded, rounded)


def downmix_int(frames: np.ndarray) -> np.ndarray:
    """int16 [T, C] -> int16 [T]: channel mean rounded half away from zero."""
    if frames.ndim == 1:
        return frames
    c = frames.shape[1]
    total = frames.astype(np.int32).sum(axis=1)
    mag = (np.abs(total) + c // 2) // c
    return np.where(total < 0, -mag, mag).astype(np.int16)


class IntFrontEnd:
    """int16 PCM <-> the int8 model interface, for one model's input and output quantization."""

    def __init__(self, in_scale: float, in_zero_point: int, out_scale: float, out_zero_point: int) -> None:
        # Q15 x means x * 2^-15; the int8 input is round(x * 2^-15 / in_scale) + zp
        self.in_mult = FixedMultiplier.from_real(2.0**-15 / in_scale)
        self.in_zp = int(in_zero_point)
        # the int8 output q means (q - zp) * out_scale; in Q15 that is (q - zp) * out_scale * 2^15
        self.out_mult = FixedMultiplier.from_real(out_scale * 2.0**15)
        self.out_zp = int(out_zero_point)
        self.clipped = 0

    def quantize_input(self, hop: np.ndarray) -> np.ndarray:
        """int16[hop] -> int8[hop] for the model's input tensor."""
        q = self.in_mult.apply(hop) + self.in_zp
        return np.clip(q, INT8_MIN, INT8_MAX).astype(np.int8)

    def dequantize_output(self, q: np.ndarray) -> np.ndarray:
        """int8[hop] model output -> int16[hop] PCM, clipped, clipped samples counted."""
        y = self.out_mult.apply(q.astype(np.int32) - self.out_zp)
        over = (y > INT16_MAX) | (y < INT16_MIN)
        self.clipped += int(np.count_nonzero(over))
        return np.clip(y, INT16_MIN, INT16_MAX).astype(np.int16)


def frame_hops(pcm: np.ndarray, hop: int) -> np.ndarray:
    """int16 [T] -> int16 [ceil(T/hop), hop], the last hop zero-padded (what the ring hands out)."""
    n = -(-len(pcm) // hop)
    out = np.zeros(n * hop, dtype=np.int16)
    out[: len(pcm)] = pcm
    return out.reshape(n, hop)
