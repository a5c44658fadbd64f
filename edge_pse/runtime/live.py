"""Live audio: microphone -> runner -> speaker through one PortAudio duplex stream (sounddevice or PyAudio,
audio_api.py).

The audio callback only copies: captured samples into the input ring, ring samples out to the device.
The runner thread waits for whole hops, runs the model and fills the output ring. Nothing is lost while
the runner keeps up; when it falls behind, the device profile's `on_miss` decides (runner.stream), and
what the device still loses is counted: input that found the ring full, output the ring could not supply
(after the prefill), and PortAudio's own overflow/underflow flags. A device that cannot run at the model's
rate is opened at its default rate with streaming soxr resamplers on both sides.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator

import numpy as np

from edge_pse.errors import EdgePseError
from edge_pse.runtime.frontend import HopFramer, OutputQuantizer, StreamResampler, downmix

RT_PRIORITY = 5  # below JACK's audio thread (10 by default), above every normal process


class OutputRing:
    """int16 ring the runner writes and the audio callback reads; underruns are filled with silence."""

    def __init__(self, capacity: int, prefill: int) -> None:
        self.buf = np.zeros(capacity, dtype=np.int16)
        self.capacity = capacity
        self.written = prefill  # the prefill is silence already in the buffer
        self.read = 0
        self.underrun = 0  # samples the device asked for that were not there
        self.overrun = 0  # samples dropped because the device was not draining
        self.underrun_at: list[tuple[int, int]] = []  # (device sample, samples missing), the first few
        self.closing = False  # set when the runner has finished: running dry then is the end, not a loss

    def push(self, block: np.ndarray) -> None:
        n = len(block)
        room = self.capacity - (self.written - self.read)
        if n > room:
            self.overrun += n - room
            n = room
        start = self.written % self.capacity
        first = min(n, self.capacity - start)
        self.buf[start : start + first] = block[:first]
        self.buf[: n - first] = block[first:n]
        self.written += n

    def pull(self, out: np.ndarray) -> None:
        n = len(out)
        have = min(n, self.written - self.read)
        start = self.read % self.capacity
        first = min(have, self.capacity - start)
        out[:first] = self.buf[start : start + first]
        out[first:have] = self.buf[: have - first]
        if have < n:
            out[have:] = 0
            if not self.closing:
                self.underrun += n - have
                if len(self.underrun_at) < 8:
                    self.underrun_at.append((self.read, n - have))
        self.read += have


def _prime(rs: StreamResampler, block: int, steady: int) -> None:
    """Feed 10 ms blocks of silence until the resampler returns a full block per block (its start-up
    delay then sits in its state as silence instead of as a gap in the live stream)."""
    zeros = np.zeros(block, np.int16)
    for _ in range(20):
        if abs(len(rs(zeros)) - steady) <= 1:
            return


class LiveDuplex:
    """A HopSource and HopSink over a PortAudio duplex stream (sounddevice or PyAudio); a context manager."""

    def __init__(
        self,
        *,
        hop: int,
        sample_rate: int,
        ring_hops: int,
        prefill_hops: int,
        duration_s: float | None = None,
        input_device: int | str | None = None,
        output_device: int | str | None = None,
        device_rate: int | None = None,
        audio_api: str = "auto",
    ) -> None:
        from edge_pse.runtime.audio_api import open_api

        self.api = open_api(audio_api)
        self.hop = hop
        self.sample_rate = sample_rate
        self.device = (input_device, output_device)
        self.device_rate = device_rate or self._pick_rate(sample_rate)
        self.channels = self._pick_channels()
        resampling = self.device_rate != sample_rate
        self._rs_in = StreamResampler(self.device_rate, sample_rate) if resampling else None
        self._rs_out = StreamResampler(sample_rate, self.device_rate) if resampling else None
        self.inring = HopFramer(hop, ring_hops)
        self._x = np.zeros(hop, dtype=np.float32)  # the hop handed to the runner (float, x 2^-15)
        self._y16 = np.zeros(hop, dtype=np.int16)
        self.quantize = OutputQuantizer(hop)  # counts clipped output samples
        out_cap = int(np.ceil(ring_hops * hop * self.device_rate / sample_rate))
        if resampling:  # run their start-up on silence now, or it would eat the output prefill later
            _prime(self._rs_in, self.device_rate // 100, sample_rate // 100)
            _prime(self._rs_out, sample_rate // 100, self.device_rate // 100)
        self.outring = OutputRing(out_cap, int(prefill_hops * hop * self.device_rate / sample_rate))
        self.max_hops = None if duration_s is None else int(duration_s * sample_rate) // hop
        self.hops_read = 0
        self.status_events = 0  # PortAudio overflow/underflow reports
        self.xrun_callbacks: list[int] = []  # which callbacks reported them (the first few): start-up or steady
        self.callbacks = 0
        self._ready = threading.Event()
        self._stream = None
        self._error: BaseException | None = None

    def _pick_rate(self, rate: int) -> int:
        """The model's rate if both devices take it, else the input device's default rate."""
        if self.api.supports(self.device[0], rate, 1, False) and self.api.supports(self.device[1], rate, 1, True):
            return rate
        try:
            return self.api.default_rate(self.device[0])
        except Exception as e:
            raise EdgePseError(f"no usable audio input device ({e}); see `edge-pse devices`") from None

    def _pick_channels(self) -> tuple[int, int]:
        """Mono where the device allows it; stereo-only devices (HDMI, many USB codecs) get 2 channels:
        the input is down-mixed, the output duplicated. (1 when neither works: opening then fails with
        PortAudio's own message.)"""
        return tuple(  # type: ignore[return-value]
            next((ch for ch in (1, 2) if self.api.supports(dev, self.device_rate, ch, out)), 1)
            for dev, out in ((self.device[0], False), (self.device[1], True))
        )

    def _callback(self, indata: np.ndarray, outdata: np.ndarray, xrun: bool) -> None:
        try:
            if xrun:
                self.status_events += 1
                if len(self.xrun_callbacks) < 8:
                    self.xrun_callbacks.append(self.callbacks)
            block = indata[:, 0] if indata.shape[1] == 1 else downmix(indata)
            if self._rs_in is not None:
                block = self._rs_in(block)
            self.inring.push(block)
            self.outring.pull(outdata[:, 0])
            if outdata.shape[1] > 1:
                outdata[:, 1:] = outdata[:, :1]
            self.callbacks += 1
            self._ready.set()
        except BaseException as e:  # an exception must not die silently in PortAudio's thread
            self._error = e
            raise

    def __enter__(self) -> LiveDuplex:
        self._stream = self.api.open(self.device, self.device_rate, self.channels, self._callback)
        return self

    def __exit__(self, *exc) -> None:
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()

    # HopSource
    def wait_hop(self) -> bool:
        while True:
            if self._error is not None:
                raise EdgePseError(f"the audio callback failed: {self._error!r}")
            if self.max_hops is not None and self.hops_read >= self.max_hops:
                return False
            self._ready.clear()
            if self.inring.hops_available():
                return True
            if not self._ready.wait(timeout=1.0):
                raise EdgePseError("the audio device stopped delivering samples (no callback for 1 s)")

    def read_hop(self) -> np.ndarray:
        self.inring.pop_hop(self._x)
        self.hops_read += 1
        return self._x

    def behind(self) -> int:
        return self.inring.hops_available()

    # HopSink
    def write_hop(self, hop: np.ndarray) -> None:
        pcm = self.quantize(hop, self._y16)
        self.outring.push(pcm if self._rs_out is None else self._rs_out(pcm))

    def lost_hops(self) -> dict:
        """What the device lost, in hops of the model's rate (rounded up)."""
        scale = self.sample_rate / self.device_rate
        in_lost = int(np.ceil(self.inring.dropped / self.hop))
        # underruns before the first processed hop would be the prefill running dry: counted too
        out_lost = int(np.ceil(self.outring.underrun * scale / self.hop))
        return {
            "input_dropped_hops": in_lost,
            "output_underrun_hops": out_lost,
            "output_overrun_hops": int(np.ceil(self.outring.overrun * scale / self.hop)),
            "portaudio_xruns": self.status_events,
            "portaudio_xrun_callbacks": self.xrun_callbacks,
            "output_underrun_at": self.outring.underrun_at,
            "lost_hops": in_lost + out_lost + int(np.ceil(self.outring.overrun * scale / self.hop)),
        }


@contextlib.contextmanager
def _realtime_priority() -> Iterator[bool]:
    """While streaming: hand the GIL over quickly and, where allowed (root, or `ulimit -r` / the audio
    group's rtprio), run the model thread under SCHED_RR. The audio callback needs the GIL every period;
    if the model thread is preempted by other work while holding it, the callback misses its deadline
    (an xrun) even though the model is fast."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    policy = granted = None
    with contextlib.suppress(AttributeError, OSError):
        policy = (os.sched_getscheduler(0), os.sched_getparam(0))
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(RT_PRIORITY))
        granted = True
    try:
        yield bool(granted)
    finally:
        sys.setswitchinterval(interval)
        if policy is not None:
            with contextlib.suppress(OSError):
                os.sched_setscheduler(0, policy[0], policy[1])


def run_live(backend, profile, *, hop: int, sample_rate: int, duration_s: float | None, tick=None, **devices) -> dict:
    """mic -> backend -> speaker until `duration_s` (or Ctrl-C); returns the stats dict."""
    from edge_pse.runtime.runner import collector_paused, stream
    from edge_pse.runtime.stats import HopStats, rtf

    hop_ns = hop * 1_000_000_000 // sample_rate
    stats = HopStats(60 * sample_rate // hop, int(profile.deadline_ms * 1e6))
    live = LiveDuplex(
        hop=hop,
        sample_rate=sample_rate,
        ring_hops=profile.ring_hops,
        prefill_hops=profile.prefill_hops,
        duration_s=duration_s,
        **devices,
    )
    t0 = time.perf_counter_ns()
    interrupted = False
    with collector_paused(), _realtime_priority() as realtime, live:
        try:
            stream(backend, live, live, stats, on_miss=profile.on_miss, max_backlog=profile.max_backlog_hops, tick=tick)
        except KeyboardInterrupt:
            interrupted = True
        live.outring.closing = True
        # let the device play what is queued, so the last hops are not counted as lost by stopping early
        time.sleep(min(0.5, (live.outring.written - live.outring.read) / live.device_rate + 0.05))
    wall = (time.perf_counter_ns() - t0) / 1e9
    summary = stats.summary()
    busy_ns = stats.busy_ns()
    summary.update(
        {
            "backend": backend.name,
            "mode": "live",
            "sample_rate": sample_rate,
            "device_rate": live.device_rate,
            "device_channels": list(live.channels),
            "audio_api": live.api.name,
            "hop": hop,
            "hop_us": hop_ns / 1e3,
            "audio_s": round(stats.hops * hop / sample_rate, 3),
            "wall_s": round(wall, 3),
            "rtf": rtf(busy_ns, stats.hops * hop / sample_rate),
            "passed_through": stats.passed_through,
            "skipped": stats.skipped,
            "output_clipped": live.quantize.clipped,
            "interrupted": interrupted,
            "realtime_scheduling": realtime,
            **live.lost_hops(),
        }
    )
    return summary
