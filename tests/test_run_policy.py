"""What the loop does when it lags the device (the profile's `on_miss`), with the real ONNX backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge_pse import demo
from edge_pse.runtime.runner import ArraySink, ArraySource, stream
from edge_pse.runtime.stats import HopStats
from tests.test_run_bundle import bundle_dir  # noqa: F401  (a fixture)

HOP = 160
LATE = range(100, 110)  # the hops during which the loop is "behind" the device


class LaggingSource(ArraySource):
    """A file source that reports a backlog for a few hops, as a live source does after a stall."""

    def behind(self) -> int:
        return 5 if (self._pos // HOP - 1) in LATE else 0


@pytest.mark.parametrize("on_miss", ["log", "pass-through", "skip"])
def test_on_miss_policy(bundle_dir: Path, on_miss: str) -> None:  # noqa: F811
    from edge_pse.bundle import Bundle
    from edge_pse.runtime.backends import open_backend

    pcm, _ = sf.read(demo.path(demo.MIXTURE), dtype="int16")
    pcm = pcm[: 200 * HOP]
    backend = open_backend(Bundle.load(bundle_dir), "onnx")
    backend.set_speaker(np.full(256, 1 / 16, np.float32))
    backend.reset()
    source = LaggingSource(pcm, HOP, flush_hops=0)
    sink = ArraySink(len(pcm), HOP, delay=0)
    stats = HopStats(source.n_hops, 10_000_000)
    stream(backend, source, sink, stats, on_miss=on_miss, max_backlog=3)
    late = slice(LATE.start * HOP, LATE.stop * HOP)
    assert stats.hops == 200
    if on_miss == "log":
        assert stats.passed_through == stats.skipped == 0
        assert not np.array_equal(sink.pcm[late], pcm[late])
    elif on_miss == "pass-through":
        assert stats.passed_through == len(LATE) and stats.skipped == 0
        np.testing.assert_array_equal(sink.pcm[late], pcm[late])
    else:
        assert stats.skipped == len(LATE) and stats.passed_through == 0
        assert not np.any(sink.pcm[late])
    assert np.any(sink.pcm[: LATE.start * HOP])  # the model ran before the stall
