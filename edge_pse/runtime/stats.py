"""Per-hop timing for the streaming loop: preallocated, so recording a hop allocates nothing."""

from __future__ import annotations

from array import array

import numpy as np


class HopStats:
    """Total and model-call time per hop (ns) in fixed arrays; a ring once `capacity` hops are exceeded.

    "Overhead" is total minus model call: the front-end, the sink and the Python loop itself.
    """

    def __init__(self, capacity: int, deadline_ns: int) -> None:
        self.capacity = max(1, capacity)
        # array('q'): an item store costs a third of a numpy one; numpy views them for the summary
        self.total_ns = array("q", bytes(8 * self.capacity))
        self.model_ns = array("q", bytes(8 * self.capacity))
        self.deadline_ns = deadline_ns
        self.hops = 0  # hops through the loop (processed, passed through or skipped)
        self.misses = 0  # hops whose total time exceeded the deadline
        self.passed_through = 0  # hops not sent through the model because the loop was behind
        self.skipped = 0
        self.lost = 0  # live only: hops the audio device lost (overflow/underflow)
        self._busy_ns = self._model_ns = 0  # over every hop, also those the ring no longer holds

    def record(self, total_ns: int, model_ns: int) -> None:
        i = self.hops % self.capacity
        self.total_ns[i] = total_ns
        self.model_ns[i] = model_ns
        self._busy_ns += total_ns
        self._model_ns += model_ns
        self.hops += 1
        if total_ns > self.deadline_ns:
            self.misses += 1

    def _recorded(self) -> tuple[np.ndarray, np.ndarray]:
        n = min(self.hops, self.capacity)
        return np.frombuffer(self.total_ns, np.int64)[:n], np.frombuffer(self.model_ns, np.int64)[:n]

    def busy_ns(self) -> int:
        """Summed time of every hop (front-end + model + sink), the ones the ring has dropped included."""
        return self._busy_ns

    def model_total_ns(self) -> int:
        return self._model_ns

    def summary(self) -> dict:
        """Percentiles in microseconds over the recorded hops (the last `capacity` of them)."""
        total, model = self._recorded()
        out = {"hops": self.hops, "deadline_us": self.deadline_ns / 1e3, "deadline_misses": self.misses}
        for name, arr in (("per_hop_us", total), ("model_us", model), ("overhead_us", total - model)):
            out[name] = latency_summary(arr)
        return out


# One definition for every report (bench cells, export report, run --stats, live, the device agent): these
# percentiles of the per-call times, in microseconds, and RTF = busy time / audio time, where busy time is the
# sum of the timed calls (docs/runtime.md, "Timing").
PERCENTILES = (50, 90, 95, 99)


def latency_summary(ns: np.ndarray) -> dict:
    """p50, p90, p95, p99, max and mean of per-call times given in ns, in microseconds."""
    keys = [f"p{q}" for q in PERCENTILES] + ["max", "mean"]
    if len(ns) == 0:
        return dict.fromkeys(keys)
    us = np.asarray(ns, dtype=np.float64) / 1e3
    values = [*np.percentile(us, PERCENTILES), us.max(), us.mean()]
    return {k: round(float(v), 2) for k, v in zip(keys, values, strict=True)}


def rtf(busy_ns: float, audio_s: float) -> float:
    """Real-time factor: time spent on the timed calls over the audio's duration (< 1 keeps up)."""
    return float(f"{busy_ns / 1e9 / max(audio_s, 1e-12):.4g}")  # 4 significant digits: RTFs span 1e-5..1


def time_hops(process, frames: np.ndarray, hops: int, warmup: int = 0) -> np.ndarray:
    """`warmup` untimed calls, then `hops` timed calls of `process`, on the rows of `frames` in turn (cycled);
    returns the timed calls' durations in ns. The cyclic garbage collector is paused while timing: a
    collection would be charged to whichever call it hit."""
    import gc
    import time

    n = len(frames)
    for i in range(warmup):
        process(frames[i % n])
    clock = time.perf_counter_ns
    times = np.empty(hops, np.int64)
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(hops):
            x = frames[(warmup + i) % n]
            t = clock()
            process(x)
            times[i] = clock() - t
    finally:
        if enabled:
            gc.enable()
    return times
