"""One bench cell: a bundle file on a backend (or a plug-in) at a thread count, timed hop by hop.

`measure` runs in a fresh subprocess per cell (`python -m edge_pse.bench.cell SPEC_JSON`), so the peak RSS
and the load time are the cell's own: no other runtime or model shares the process, and a runtime that
crashes takes only its cell down. `open_cell` is also what the quality run uses in-process.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

CDF_POINTS = 101  # latency quantiles stored per cell (0, 1, ..., 100 %): enough for a CDF plot
REFERENCE_HOP_US = 10_000.0  # the hop the device profiles' deadline_ms is for (our bundles': 160 at 16 kHz)


@dataclass
class Streamer:
    """What the bench needs from a cell, whatever runs it."""

    process: Callable[[np.ndarray], np.ndarray]
    reset: Callable[[], None]
    set_speaker: Callable[[np.ndarray], None]
    hop: int
    sample_rate: int
    lag_hops: int
    file_bytes: int | None
    verify_ms: float = 0.0  # bundle: reading the manifest and checking every sha256


def open_cell(spec: dict) -> Streamer:
    """Load the cell's model. spec: {"kind": "bundle", "path", "backend", "quantization", "threads"},
    {"kind": "plugin", "spec", "threads"} or {"kind": "peer", "name", "dir", "threads"} (bench/peers.py)."""
    if spec["kind"] == "peer":
        from edge_pse.bench.peers import open_peer

        p = open_peer(spec["name"], spec["dir"], spec["threads"])
        return Streamer(p.process, p.reset, p.set_speaker, p.hop, p.sample_rate, p.lag_hops, p.file_bytes)
    if spec["kind"] == "plugin":
        from edge_pse.bench.plugins import open_plugin

        p = open_plugin(spec["spec"], spec["threads"])
        return Streamer(p.model.process, p.model.reset, p.set_speaker, p.hop, p.sample_rate, p.lag_hops, p.file_bytes)
    from edge_pse.bundle import Bundle
    from edge_pse.runtime.backends import open_backend

    t0 = time.perf_counter()
    bundle = Bundle.load(spec["path"])
    verify_ms = (time.perf_counter() - t0) * 1e3
    be = open_backend(bundle, spec["backend"], threads=spec["threads"], quantization=spec.get("quantization"))
    size = be.entry.bytes if be.entry is not None else None
    if size is None and bundle.reference_weights() is not None:
        size = bundle.reference_weights().stat().st_size  # torch backend: the float weights it loads
    sp = bundle.spec
    return Streamer(be.process, be.reset, be.set_speaker, sp.hop, sp.sample_rate, sp.lag_hops, size, verify_ms)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def hop_signal(hop: int, hops: int) -> tuple[np.ndarray, np.ndarray]:
    """The demo mixture (looped) as float hops, and the demo speaker's embedding: realistic input, no data."""
    import soundfile as sf

    from edge_pse import demo
    from edge_pse.enroll.profile import load_profile

    wave, _ = sf.read(demo.path(demo.MIXTURE), dtype="float32")
    reps = -(-hops * hop // len(wave))
    x = np.tile(wave, reps)[: hops * hop].reshape(hops, hop).copy()
    return x, load_profile(demo.path(demo.SPEAKER)).embedding


def measure(spec: dict, hops: int, warmup: int, deadline_us: float) -> dict:
    """Load the cell and time `hops` hops after `warmup` untimed ones; everything in one JSON-ready dict.
    `deadline_us` is the budget of a 10 ms hop: a cell with another hop (a peer, a plug-in) gets it in
    proportion to its own hop's duration, as its RTF is its latency over its own hop's duration."""
    rss_base = _rss_mib()
    t0 = time.perf_counter()
    cell = open_cell(spec)
    load_ms = (time.perf_counter() - t0) * 1e3
    x, emb = hop_signal(cell.hop, warmup + hops)
    cell.set_speaker(emb)
    cell.reset()
    t0 = time.perf_counter()
    cell.process(x[0])
    first_hop_ms = (time.perf_counter() - t0) * 1e3
    from edge_pse.runtime.stats import latency_summary, rtf, time_hops

    frames = x[1:]  # the first hop was timed on its own above
    cpu0, wall0 = time.process_time_ns(), time.perf_counter_ns()
    times = time_hops(cell.process, frames, hops, warmup=max(warmup - 1, 0))
    wall, cpu = time.perf_counter_ns() - wall0, time.process_time_ns() - cpu0
    us = times / 1e3
    hop_us = cell.hop / cell.sample_rate * 1e6
    deadline_us = deadline_us * hop_us / REFERENCE_HOP_US
    return {
        "hops": hops,
        "warmup": warmup,
        "latency_us": latency_summary(times),
        "latency_cdf_us": [round(float(v), 2) for v in np.percentile(us, np.linspace(0, 100, CDF_POINTS))],
        "rtf": rtf(int(times.sum()), hops * hop_us / 1e6),
        "deadline_us": round(deadline_us, 1),
        "deadline_misses": int((us > deadline_us).sum()),
        "cpu_util_pct": round(100.0 * cpu / wall, 1),
        "load_ms": round(load_ms, 2),
        "verify_ms": round(cell.verify_ms, 2),
        "first_hop_ms": round(first_hop_ms, 3),
        "rss_base_mib": round(rss_base, 1),
        "rss_peak_mib": round(_rss_mib(), 1),
        "file_bytes": cell.file_bytes,
        "hop": cell.hop,
        "sample_rate": cell.sample_rate,
        "hop_ms": round(hop_us / 1e3, 3),
        "lag_hops": cell.lag_hops,
    }


def main(argv: list[str]) -> int:
    """Subprocess entry: argv = [SPEC_JSON]; prints one JSON line (the result, or {"error": ...})."""
    req = json.loads(argv[0])
    try:
        res = measure(req["cell"], req["hops"], req["warmup"], req["deadline_us"])
    except Exception as e:  # reported in the cell, not as a traceback: one bad cell must not stop a matrix
        res = {"error": f"{type(e).__name__}: {e}"}
    sys.stdout.flush()
    os.write(1, (json.dumps(res) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
