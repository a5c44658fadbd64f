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

    def record(self, total_ns: int, model_ns: int) -> None:
        i = self.hops % self.capacity
        self.total_ns[i] = total_ns
        self.model_ns[i] = model_ns
        self.hops += 1
        if total_ns > self.deadline_ns:
            self.misses += 1

    def _recorded(self) -> tuple[np.ndarray, np.ndarray]:
        n = min(self.hops, self.capacity)
        return np.frombuffer(self.total_ns, np.int64)[:n], np.frombuffer(self.model_ns, np.int64)[:n]

    def busy_ns(self) -> int:
        """Summed time of the recorded hops (front-end + model + sink)."""
        return int(self._recorded()[0].sum())

    def model_total_ns(self) -> int:
        return int(self._recorded()[1].sum())

    def summary(self) -> dict:
        """Percentiles in microseconds over the recorded hops (the last `capacity` of them)."""
        total, model = self._recorded()
        out = {"hops": self.hops, "deadline_us": self.deadline_ns / 1e3, "deadline_misses": self.misses}
        for name, arr in (("per_hop_us", total), ("model_us", model), ("overhead_us", total - model)):
            out[name] = _percentiles(arr)
        return out


def _percentiles(ns: np.ndarray) -> dict:
    if len(ns) == 0:
        return {"p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    us = ns / 1e3
    p50, p95, p99 = np.percentile(us, [50, 95, 99])
    return {
        "p50": round(float(p50), 2),
        "p95": round(float(p95), 2),
        "p99": round(float(p99), 2),
        "max": round(float(us.max()), 2),
        "mean": round(float(us.mean()), 2),
    }
