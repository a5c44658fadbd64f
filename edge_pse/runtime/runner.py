"""The streaming loop: one function over (backend, source, sink), the same for files and live audio.

Like DTLN's real-time loop it is short and its state is explicit, but it has no globals, no hard-coded
paths and allocates nothing per hop. The loop moves float32 hops; the int16 <-> float front-end sits in
the source and sink: a file source converts the whole clip once and hands out views, a file sink converts
once at the end (vectorised, so a file hop costs two slices around the model call); the live source and
sink convert each hop in place with the streaming front-end (frontend.HopFramer / OutputQuantizer).

Latency: the model's output stream lags its input by exactly one hop (the step emits a hop's enhanced
samples once the next hop completes its window). For files this is compensated: the first output hop is
dropped and one zero hop is fed at the end, so output sample n is the enhanced input sample n and the
output file has exactly the input's length. Live audio keeps the lag (it is the 10 ms of algorithmic
latency beyond the hop itself).
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np

from edge_pse.runtime.frontend import float_to_int16, to_float
from edge_pse.runtime.stats import HopStats, rtf

ON_MISS = ("log", "pass-through", "skip")


class Backend(Protocol):
    name: str

    def process(self, hop: np.ndarray) -> np.ndarray: ...


class HopSource(Protocol):
    def wait_hop(self) -> bool:
        """Block until a whole hop is ready; False when the stream has ended."""

    def read_hop(self) -> np.ndarray:
        """The next hop as float32[hop] in [-1, 1) (a view: valid until the next call)."""

    def behind(self) -> int:
        """Whole hops already waiting after this one (0 for files): how far the loop lags the device."""


class HopSink(Protocol):
    hop: int

    def write_hop(self, hop: np.ndarray) -> None:
        """Take one float32 hop (copied or converted before returning); counts what it clips."""


class ArraySource:
    """A file's samples as float hops: the last partial hop zero-padded, then `flush_hops` zero hops.

    The int16 -> float conversion (x 2^-15) is done once for the whole clip, so a hop costs a slice.
    """

    def __init__(self, pcm: np.ndarray, hop: int, flush_hops: int = 1) -> None:
        n_hops = -(-len(pcm) // hop) + flush_hops
        self._x = np.zeros(n_hops * hop, dtype=np.float32)
        if pcm.dtype == np.int16:
            to_float(pcm, self._x[: len(pcm)])
        else:  # float audio in [-1, 1) (quality measurement): taken as it is
            self._x[: len(pcm)] = pcm
        self.hop = hop
        self.n_hops = n_hops
        self._pos = 0

    def wait_hop(self) -> bool:
        return self._pos < len(self._x)

    def read_hop(self) -> np.ndarray:
        h = self._x[self._pos : self._pos + self.hop]
        self._pos += self.hop
        return h

    def behind(self) -> int:
        return 0


class ArraySink:
    """Collects `length` output samples, dropping the first `delay` (the model's one-hop lag).

    Hops are kept as float and converted to int16 once at the end (`pcm`), same arithmetic as the
    streaming OutputQuantizer: x 2^15, round half to even, clip, count.
    """

    def __init__(self, length: int, hop: int, delay: int) -> None:
        self._y = np.zeros(length, dtype=np.float32)
        self.hop = hop
        self._pos = -delay
        self.clipped = 0

    def write_hop(self, hop: np.ndarray) -> None:
        pos, n = self._pos, len(self._y)
        lo, hi = max(pos, 0), min(pos + self.hop, n)
        if hi > lo:
            self._y[lo:hi] = hop[lo - pos : hi - pos]
        self._pos = pos + self.hop

    @property
    def pcm(self) -> np.ndarray:
        pcm, self.clipped = float_to_int16(self._y)
        return pcm

    @property
    def samples(self) -> np.ndarray:
        """The collected float samples (not converted to int16)."""
        return self._y


class BlockSource:
    """Hops from an iterator of int16 blocks (a file read in blocks): the last partial hop zero-padded, then
    `flush_hops` zero hops, as ArraySource does for a whole clip; holds at most one block and one hop."""

    def __init__(self, blocks: Iterator[np.ndarray], hop: int, flush_hops: int = 1) -> None:
        self._blocks = iter(blocks)
        self.hop = hop
        self._buf = np.zeros(0, np.int16)
        self._hop = np.zeros(hop, np.float32)
        self._flush = flush_hops
        self._done = False
        self.samples = 0  # real samples handed out (not the padding)

    def wait_hop(self) -> bool:
        while len(self._buf) < self.hop and not self._done:
            block = next(self._blocks, None)
            if block is None:
                self._done = True
            else:
                self._buf = np.concatenate([self._buf, block])
        if len(self._buf):
            return True
        if self._flush:
            self._flush -= 1
            return True
        return False

    def read_hop(self) -> np.ndarray:
        n = min(self.hop, len(self._buf))
        self.samples += n
        self._hop[n:] = 0.0
        to_float(self._buf[:n], self._hop[:n])
        self._buf = self._buf[n:]
        return self._hop

    def behind(self) -> int:
        return 0


class BlockSink:
    """Output hops handed on in int16 blocks, the first `delay` samples dropped (the model's one-hop lag); the
    last `flush(limit=...)` trims the total to the input's length, known once the source is exhausted."""

    def __init__(self, write: Callable[[np.ndarray], None], hop: int, delay: int, block_hops: int = 100) -> None:
        self.hop = hop
        self._write = write
        self._y = np.zeros(block_hops * hop, np.float32)
        self._n = 0
        self._skip = delay
        self.clipped = 0
        self.samples = 0

    def write_hop(self, hop: np.ndarray) -> None:
        k = min(self._skip, self.hop)
        self._skip -= k
        self._y[self._n : self._n + self.hop - k] = hop[k:]
        self._n += self.hop - k
        if self._n + self.hop > len(self._y):
            self.flush()

    def flush(self, limit: int | None = None) -> None:
        """Hand on what is buffered (only up to `limit` samples in all, when given)."""
        n = self._n if limit is None else max(0, min(self._n, limit - self.samples))
        if n:
            pcm, clipped = float_to_int16(self._y[:n])
            self.clipped += clipped
            self.samples += n
            self._write(pcm)
        self._n = 0


def stream(
    backend: Backend,
    source: HopSource,
    sink: HopSink,
    stats: HopStats,
    *,
    on_miss: str = "log",
    max_backlog: int = 2,
    tick: Callable[[HopStats], None] | None = None,
    tick_every: int = 50,
) -> None:
    """Run hops from `source` through `backend` into `sink` until the source ends.

    When the loop lags the source by more than `max_backlog` hops (live audio only), `on_miss` decides:
    "log" processes anyway (and will fall further behind), "pass-through" sends the input hop out
    unprocessed, "skip" sends silence; both keep the device fed so no audio is lost. The model's state
    does not see skipped hops.
    """
    if on_miss not in ON_MISS:
        raise ValueError(f"on_miss must be one of {ON_MISS}, got {on_miss!r}")
    silence = np.zeros(sink.hop, dtype=np.float32)
    clock = time.perf_counter_ns
    process, wait, read, behind, write, record = (
        backend.process,
        source.wait_hop,
        source.read_hop,
        source.behind,
        sink.write_hop,
        stats.record,
    )
    fallback = on_miss != "log"
    countdown = tick_every
    with collector_paused():
        while wait():
            t0 = clock()
            x = read()
            if fallback and behind() > max_backlog:
                if on_miss == "pass-through":
                    write(x)
                    stats.passed_through += 1
                else:
                    write(silence)
                    stats.skipped += 1
                record(clock() - t0, 0)
                continue
            t1 = clock()
            y = process(x)
            t2 = clock()
            write(y)
            record(clock() - t0, t2 - t1)
            if tick is not None:
                countdown -= 1
                if not countdown:
                    countdown = tick_every
                    tick(stats)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while audio streams: a full collection over everything the runtimes
    imported holds the GIL for tens of ms, long enough for the audio callback to miss its period (seen as
    xruns in the live test). The loop itself creates no reference cycles; collection resumes afterwards."""
    if not gc.isenabled():  # already paused by the caller (live: before the audio stream starts)
        yield
        return
    gc.collect()
    gc.freeze()  # what exists now is never scanned again by later collections either
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


def file_summary(
    stats: HopStats, hop: int, sample_rate: int, n_in: int, n_out: int, wall_ns: int, clipped: int
) -> dict:
    """The stats of a whole clip's run (docs/runtime.md): per-hop percentiles, busy and wall RTF, samples."""
    summary = stats.summary()
    audio_s = stats.hops * hop / sample_rate
    summary.update(
        {
            "sample_rate": sample_rate,
            "hop": hop,
            "input_samples": n_in,
            "output_samples": n_out,
            "latency_compensation_samples": hop,
            "audio_s": round(audio_s, 3),
            "wall_s": round(wall_ns / 1e9, 4),
            "rtf": rtf(stats.busy_ns(), audio_s),
            "wall_rtf": rtf(wall_ns, audio_s),  # the whole run: reading, resampling and writing the file too
            # the loop's whole cost outside the model call, per hop, incl. what the per-hop clock misses
            "outside_model_us_per_hop": round((wall_ns - stats.model_total_ns()) / stats.hops / 1e3, 2),
            "output_clipped": clipped,
        }
    )
    return summary


def enhance(backend: Backend, wave: np.ndarray, hop: int, lag_hops: int) -> np.ndarray:
    """A float clip through `backend` from its current state, hop by hop through the same loop as every
    run, the lag compensated (`lag_hops` zero hops flushed, as many dropped): output sample n is the enhanced
    input sample n, as long as `wave`. The quality measurements (export gate, bench, benchmarks) use this."""
    source = ArraySource(np.asarray(wave, dtype=np.float32), hop, flush_hops=lag_hops)
    sink = ArraySink(len(wave), hop, delay=lag_hops * hop)
    stream(backend, source, sink, HopStats(source.n_hops, 1 << 62))
    return sink.samples


def run_array(
    backend: Backend,
    pcm: np.ndarray,
    *,
    hop: int,
    sample_rate: int,
    lag_hops: int,
    deadline_ns: int | None = None,
    tick: Callable[[HopStats], None] | None = None,
) -> tuple[np.ndarray, dict]:
    """Enhance a whole int16 clip; returns (int16 output of exactly len(pcm) samples, stats dict)."""
    source = ArraySource(pcm, hop, flush_hops=lag_hops)
    sink = ArraySink(len(pcm), hop, delay=lag_hops * hop)
    hop_ns = hop * 1_000_000_000 // sample_rate
    stats = HopStats(source.n_hops, deadline_ns or hop_ns)
    with collector_paused():  # its one full collection happens here, outside the timed loop
        t0 = time.perf_counter_ns()
        stream(backend, source, sink, stats, tick=tick)
        pcm_out = sink.pcm
        wall_ns = time.perf_counter_ns() - t0  # includes the whole-clip float -> int16 conversion
    summary = file_summary(stats, hop, sample_rate, len(pcm), len(pcm_out), wall_ns, sink.clipped)
    return pcm_out, {"backend": backend.name, **summary}
