"""File in, file out through a transport: the one home of `edge-pse run`'s file case, local or on a device.

Reading in blocks, resampling, the model's one-hop lag, writing exactly the input's frames, the stats and
landing the audio together with the stats file happen here once. A transport only moves hops: `LocalTransport`
through a backend loaded in this process (runner.stream), `firmware_host.client.RemoteTransport` through an
agent's stream session. Both give the same output for the same bundle and backend, and the same stats keys
(docs/runtime.md defines them).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge_pse.errors import EdgePseError
from edge_pse.runtime import audio_io
from edge_pse.runtime.runner import BlockSink, BlockSource, collector_paused, file_summary, stream
from edge_pse.runtime.stats import HopStats

STATS_HOPS = 4 * 3600 * 100  # per-hop times kept for the stats: the last 4 h at 10 ms (11.5 MB per array)


class Transport(Protocol):
    sample_rate: int
    hop: int
    lag_hops: int  # whole hops the model's output lags its input (bundle.StreamSpec)

    def stream(
        self, source: BlockSource, sink: BlockSink, stats: HopStats, progress: Callable[[int], None] | None
    ) -> dict[str, Any]:
        """Every hop of `source` through the model into `sink` in order, timings into `stats`; returns what
        ran (merged into the stats)."""


@dataclass
class LocalTransport:
    """A backend loaded here (runtime.session.open_session)."""

    backend: Any
    sample_rate: int
    hop: int
    lag_hops: int

    def stream(self, source, sink, stats, progress) -> dict[str, Any]:
        stream(self.backend, source, sink, stats, tick=(lambda st: progress(st.hops)) if progress else None)
        return {"backend": self.backend.name, "mode": "file"}


def enhance_file(
    transport: Transport,
    input_path: str | Path,
    output_path: str | Path,
    *,
    deadline_ms: float | None = None,
    stats_path: str | Path | None = None,
    describe: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Enhance a file into `output_path` (the input's rate, channels folded to mono, exactly its frames) in
    bounded memory; returns the stats (`describe` first), also written to `stats_path` together with the audio.
    `progress(hops done, hops in all)` is called as hops complete."""
    rate, hop = transport.sample_rate, transport.hop
    reader = audio_io.ClipReader(input_path, rate)
    n_hops = -(-reader.expected_samples // hop) + 1  # + the hop that flushes the model's lag
    source = BlockSource(reader.blocks(), hop, flush_hops=transport.lag_hops)
    # the header's frame count is a claim, not audio: the stats hold at most STATS_HOPS (a ring past that)
    stats = HopStats(min(n_hops, STATS_HOPS), int(deadline_ms * 1e6) if deadline_ms else hop * 1_000_000_000 // rate)
    frames = reader.source_frames if reader.exact_length else None  # an MP3's: known once it is decoded
    with audio_io.ClipWriter(output_path, rate, reader.source_rate, frames) as writer:
        sink = BlockSink(writer.write, hop, delay=transport.lag_hops * hop)
        with collector_paused():
            t0 = time.perf_counter_ns()
            ran = transport.stream(source, sink, stats, None if progress is None else lambda k: progress(k, n_hops))
            if not reader.finished:  # a transport that stopped early: never pad what was not read
                raise EdgePseError(f"the run ended after {source.samples} of the input's samples: {input_path}")
            writer.frames = reader.source_frames  # the decoded count (an MP3's header only estimated it)
            sink.flush(limit=source.samples)
            wall_ns = time.perf_counter_ns() - t0  # includes reading, resampling and writing the file
        if progress is not None:
            progress(stats.hops, n_hops)
        result = {
            **(describe or {}),
            **ran,
            **file_summary(stats, hop, rate, source.samples, sink.samples, wall_ns, sink.clipped),
            "input": str(input_path),
            "output": str(output_path),
            "input_rate": reader.source_rate,
            "input_channels": reader.source_channels,
            "input_frames": reader.source_frames,
            "output_frames": reader.source_frames,  # ClipWriter pads or trims to exactly this
            "input_clipped": reader.input_clipped,
            "input_silent": reader.silent,
        }
        audio_io.land_together(writer.commit, stats_path, json.dumps(result, indent=2) + "\n")
    return result
