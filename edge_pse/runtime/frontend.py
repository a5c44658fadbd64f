"""The streaming front-end: int16 PCM in, float hops to the model, int16 PCM out.

Everything here is sized once (from the bundle's hop) and then works in place, so the per-hop path
allocates nothing. int16 <-> float conversion is a power-of-two scale (2^-15 / 2^15), which is exact in
float32 and is a plain shift in fixed point: `frontend_int.py` is the integer twin firmware authors port.
Other sample rates and channel counts are converted to 16 kHz mono before framing (soxr; a streaming
resampler for live audio).
"""

from __future__ import annotations

import numpy as np

INT16_SCALE = np.float32(2.0**-15)  # int16 full scale <-> float [-1, 1); float32 so no ufunc casts to float64
INT16_MIN, INT16_MAX = -32768, 32767
_F32_FULL = np.float32(32768.0)
_F32_MAX, _F32_MIN = np.float32(INT16_MAX), np.float32(INT16_MIN)


def downmix(frames: np.ndarray) -> np.ndarray:
    """[T] or [T, C] -> [T] mono, the channel mean (same dtype family: int16 in, int16 out, rounded)."""
    if frames.ndim == 1:
        return frames
    if frames.shape[1] == 1:
        return frames[:, 0]
    if frames.dtype == np.int16:
        # the integer mean rounded half away from zero, as frontend_int.downmix_int does
        total = frames.astype(np.int32).sum(axis=1)
        return round_div(total, frames.shape[1]).astype(np.int16)
    return frames.mean(axis=1, dtype=np.float64).astype(frames.dtype)


def round_div(num: np.ndarray, den: int) -> np.ndarray:
    """Integer division rounded half away from zero (numpy ints)."""
    q = (np.abs(num) + den // 2) // den
    return np.where(num < 0, -q, q)


def resample(wave: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """Whole-clip resampling for file runs (soxr HQ, linear phase); float or int16 mono in, same dtype out."""
    if in_rate == out_rate:
        return wave
    import soxr

    return soxr.resample(wave, in_rate, out_rate, quality="HQ")


def float_to_int16(wave: np.ndarray) -> tuple[np.ndarray, int]:
    """float [-1, 1] -> int16 by x * 2^15, rounded, clipped; returns (int16, number of clipped samples)."""
    scaled = np.rint(np.asarray(wave, dtype=np.float64) * 32768.0)
    clipped = int(np.count_nonzero((scaled > INT16_MAX) | (scaled < INT16_MIN)))
    return np.clip(scaled, INT16_MIN, INT16_MAX).astype(np.int16), clipped


class HopFramer:
    """A ring buffer of int16 samples that takes blocks of any size and hands out whole hops as float32.

    The capacity is a whole number of hops, so a hop never straddles the wrap and `pop_hop` is one
    in-place multiply. Counters are monotonic; with one producer (audio callback) and one consumer
    (the runner) each only writes its own counter, which is safe under the GIL.
    """

    def __init__(self, hop: int, capacity_hops: int) -> None:
        if capacity_hops < 2:
            raise ValueError("the ring needs room for at least two hops")
        self.hop = hop
        self.capacity = hop * capacity_hops
        self.buf = np.zeros(self.capacity, dtype=np.int16)
        self.written = 0  # samples ever pushed (producer)
        self.read = 0  # samples ever popped (consumer)
        self.dropped = 0  # samples refused because the ring was full

    def available(self) -> int:
        return self.written - self.read

    def hops_available(self) -> int:
        return (self.written - self.read) // self.hop

    def push(self, block: np.ndarray) -> int:
        """Append int16 samples; returns how many were dropped for lack of room (the newest ones)."""
        n = len(block)
        room = self.capacity - (self.written - self.read)
        dropped = max(0, n - room)
        if dropped:
            self.dropped += dropped
            n = room
        start = self.written % self.capacity
        first = min(n, self.capacity - start)
        self.buf[start : start + first] = block[:first]
        if n > first:
            self.buf[: n - first] = block[first:n]
        self.written += n
        return dropped

    def peek_hop(self) -> np.ndarray:
        """The oldest whole hop as an int16 view into the ring (valid until the next pop)."""
        start = self.read % self.capacity
        return self.buf[start : start + self.hop]

    def pop_hop(self, out: np.ndarray) -> None:
        """Move the oldest whole hop into `out` (float32[hop]) scaled by 2^-15. Caller checks availability."""
        to_float(self.peek_hop(), out)
        self.read += self.hop


def to_float(pcm: np.ndarray, out: np.ndarray) -> np.ndarray:
    """int16 -> float32 * 2^-15 in place: a cast then a float32 multiply (one mixed-type ufunc call would
    allocate a cast buffer and cost ~4x more)."""
    np.copyto(out, pcm, casting="unsafe")
    np.multiply(out, INT16_SCALE, out=out)
    return out


class OutputQuantizer:
    """float32 hop -> int16 hop in place: x * 2^15, round half to even, clip, count clipped samples.

    No dither: the model's output is already noise-shaped by the enhancement, and dither would make the
    integer reference and the float path disagree by more than 1 LSB. Clipping is detected with two
    compares into a preallocated mask (reductions like .max() allocate and cost more).
    """

    def __init__(self, hop: int) -> None:
        self._scratch = np.zeros(hop, dtype=np.float32)
        self._mask = np.zeros(hop, dtype=bool)
        self.clipped = 0

    def __call__(self, y: np.ndarray, out: np.ndarray) -> np.ndarray:
        s, m = self._scratch, self._mask
        np.multiply(y, _F32_FULL, out=s)
        np.rint(s, out=s)
        np.greater(s, _F32_MAX, out=m)
        n = np.count_nonzero(m)
        np.less(s, _F32_MIN, out=m)
        n += np.count_nonzero(m)
        if n:
            self.clipped += n
            np.minimum(s, _F32_MAX, out=s)
            np.maximum(s, _F32_MIN, out=s)
        np.copyto(out, s, casting="unsafe")
        return out


class StreamResampler:
    """Streaming int16 mono resampling for live audio whose device rate is not the model's (soxr)."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        import soxr

        self.in_rate, self.out_rate = in_rate, out_rate
        # vr=True: soxr's variable-rate engine streams smoothly (hop in, hop out after ~6 ms); the fixed-rate
        # HQ engine emits ~30 ms bursts, which would need 60 ms more buffering to play without gaps
        self._rs = soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality="HQ", vr=True)

    def __call__(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        return self._rs.resample_chunk(block, last=last)
