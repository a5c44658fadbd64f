"""External streaming models as bench cells, so a peer (DTLN, GTCRN, your own) sits beside our students.

A plug-in is a factory named `module:function` (importable: installed, or on PYTHONPATH / in the current
folder) or `ep:NAME` for an entry point in the group `edge_pse.bench_models`. `edge-pse bench` calls
`factory(threads=N)` and expects an object with

    reset() -> None                     # zero the state: a new stream starts
    process(hop: float32[hop]) -> float32[hop]

and optionally

    set_speaker(embedding: float32[256]) -> None   # personalized models; others ignore the speaker
    hop: int = 160                      # samples per call at sample_rate
    sample_rate: int = 16000            # only 16 kHz models can be scored on the eval set
    lag_hops: int = 0                   # whole hops the output lags the input (E3Net: 1); dropped to align
    name: str                           # the label in the report (default: the spec)
    files: list[str]                    # model files, to report their size

A plug-in's adapter is the user's code (docs/bench.md shows one); this module only loads it. DTLN and GTCRN
are built in as peer cells (bench/peers.py, `--peers`). `passthrough` below is a built-in plug-in: the
unprocessed input, the floor every model must beat.
"""

from __future__ import annotations

import importlib
import re
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from edge_pse.errors import EdgePseError

ENTRY_POINT_GROUP = "edge_pse.bench_models"
_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_plugin_spec(text: str) -> bool:
    return text.startswith("ep:") or bool(_SPEC.match(text))


def load_factory(spec: str):
    """The factory a plug-in spec names; EdgePseError saying what is wrong otherwise."""
    if spec.startswith("ep:"):
        name = spec[3:]
        eps = [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        if not eps:
            have = ", ".join(sorted(ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP))) or "none"
            raise EdgePseError(f"no bench plug-in entry point {name!r} in group {ENTRY_POINT_GROUP} (have: {have})")
        try:
            return eps[0].load()
        except Exception as e:
            raise EdgePseError(f"plug-in entry point {name!r} failed to load: {e}") from None
    if not _SPEC.match(spec):
        raise EdgePseError(f"plug-in {spec!r} must be module:function or ep:NAME")
    module, func = spec.split(":")
    if str(Path.cwd()) not in sys.path and "" not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # a user's adapter.py in the current folder
    try:
        mod = importlib.import_module(module)
    except Exception as e:
        raise EdgePseError(f"plug-in {spec!r}: cannot import {module}: {e}") from None
    factory = getattr(mod, func, None)
    if not callable(factory):
        raise EdgePseError(f"plug-in {spec!r}: {module} has no callable {func}")
    return factory


@dataclass
class PluginModel:
    """A loaded plug-in with its optional attributes resolved and checked."""

    spec: str
    model: object
    hop: int = 160
    sample_rate: int = 16_000
    lag_hops: int = 0
    name: str = ""
    files: list[str] = field(default_factory=list)

    @property
    def file_bytes(self) -> int | None:
        sizes = [Path(f).stat().st_size for f in self.files if Path(f).is_file()]
        return sum(sizes) if sizes else None

    def set_speaker(self, emb: np.ndarray) -> None:
        fn = getattr(self.model, "set_speaker", None)
        if fn is not None:
            fn(emb)


def open_plugin(spec: str, threads: int = 1) -> PluginModel:
    factory = load_factory(spec)
    try:
        model = factory(threads=threads)
    except Exception as e:
        raise EdgePseError(f"plug-in {spec!r}: the factory raised {type(e).__name__}: {e}") from None
    for attr in ("reset", "process"):
        if not callable(getattr(model, attr, None)):
            raise EdgePseError(f"plug-in {spec!r}: the model has no {attr}() (see docs/bench.md)")
    p = PluginModel(
        spec,
        model,
        hop=int(getattr(model, "hop", 160)),
        sample_rate=int(getattr(model, "sample_rate", 16_000)),
        lag_hops=int(getattr(model, "lag_hops", 0)),
        name=str(getattr(model, "name", spec)),
        files=[str(f) for f in getattr(model, "files", [])],
    )
    if p.hop <= 0 or p.lag_hops < 0:
        raise EdgePseError(f"plug-in {spec!r}: hop must be positive and lag_hops >= 0")
    out = np.asarray(model.process(np.zeros(p.hop, np.float32)))
    if out.shape != (p.hop,):
        raise EdgePseError(f"plug-in {spec!r}: process() returned shape {out.shape}, expected ({p.hop},)")
    model.reset()
    return p


class Passthrough:
    """The unprocessed input: the floor in a report (SI-SDRi 0 dB) and the harness's own per-hop cost."""

    name = "passthrough"
    hop = 160
    lag_hops = 0

    def __init__(self) -> None:
        self._out = np.zeros(self.hop, np.float32)

    def reset(self) -> None:
        self._out[:] = 0

    def process(self, hop: np.ndarray) -> np.ndarray:
        self._out[:] = hop
        return self._out


def passthrough(threads: int = 1) -> Passthrough:
    return Passthrough()
