"""Activation ranges measured once on real speech, stored as numbers, pinned by later exports.

Why: a model that uses the speaker has activations that synthetic voices do not cover (their d-vectors and
FiLM scales sit elsewhere), so int8 calibrated on the committed synthetic clips loses 1-2 dB; real speech
cannot be committed. What can be committed is what calibration keeps of it: each activation observer's
(scale, zero point). An export with `--calibration DATA_ROOT` writes them to the bundle's
`activation_ranges.json`; copied beside the checkpoint as `<name>.ranges.json` (by hand, after shipping: see
docs/bundle.md), they are pinned by every later export of that checkpoint. The committed clips still run
through the graph (weight observers, the gate).

A table is tied to the checkpoint file it was measured on (sha256), to the exported step's per-frame level
normalisation (the same graph at another level would need other scales) and to the graph's observers (names and
count); anything else is refused rather than silently mis-scaled.

The .pte and .tflite tables hold each PT2E activation observer's [scale, zero point]; the .onnx table holds each
tensor onnxruntime calibrates (the Linears' inputs and outputs) as its float range [lowest, highest]
(exporters/onnx.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from edge_pse.atomic import atomic_path
from edge_pse.errors import EdgePseError

VERSION = 1
FILENAME = "activation_ranges.json"  # in a bundle
SUFFIX = ".ranges.json"  # beside a checkpoint: tiny.pt -> tiny.ranges.json


@dataclass
class ActivationRanges:
    """Per format: per activation observer of the prepared PT2E graph [scale, zero_point] (pte, tflite), per
    calibrated tensor [lowest, highest] (onnx)."""

    checkpoint_sha256: str
    source: str  # what they were measured on (the calibration set's description)
    frame_level_dbfs: float | None  # the exported step's per-frame level normalisation
    formats: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "version": VERSION,
            "checkpoint_sha256": self.checkpoint_sha256,
            "source": self.source,
            "frame_level_dbfs": self.frame_level_dbfs,
            "formats": self.formats,
        }

    def check(self, frame_level_dbfs: float | None, formats: tuple[str, ...]) -> None:
        """Refuse, before any work, an export these ranges were not measured for."""
        if frame_level_dbfs != self.frame_level_dbfs:
            raise EdgePseError(
                f"the activation ranges were measured with per-frame level normalisation {self.frame_level_dbfs} "
                f"dBFS, this export uses {frame_level_dbfs}; re-measure them with --calibration DATA_ROOT"
            )
        missing = [f for f in formats if f not in self.formats]
        if missing:
            raise EdgePseError(
                f"the activation ranges hold no table for {', '.join(missing)}; re-measure them with --calibration"
            )


def beside(checkpoint: str | Path) -> Path:
    """Where a shipped checkpoint's ranges live."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + SUFFIX)


def _activation_observers(prepared: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Per-tensor static activation observers (weights are per-channel and are observed from the weights
    themselves; a dynamically quantized input is scaled at run time, and a fixed one needs no range)."""
    return {
        name: mod
        for name, mod in prepared.named_modules()
        if name.startswith("activation_post_process")
        and getattr(mod, "qscheme", None) == torch.per_tensor_affine
        and type(mod).__name__ not in ("FixedQParamsObserver", "PlaceholderObserver")
    }


def measured(prepared: torch.nn.Module) -> dict[str, list[float]]:
    """The calibrated graph's activation (scale, zero point), as its convert step will compute them."""
    out = {}
    for name, obs in _activation_observers(prepared).items():
        scale, zp = obs.calculate_qparams()
        out[name] = [float(scale.reshape(-1)[0]), int(zp.reshape(-1)[0])]
    return out


def pin(prepared: torch.nn.Module, table: dict[str, list[float]], what: str) -> None:
    """Make every activation observer report the stored (scale, zero point) to convert (and to the bias's
    derived scale), whatever the calibration clips showed it."""
    observers = _activation_observers(prepared)
    if set(observers) != set(table):
        raise EdgePseError(
            f"{what}: the stored activation ranges do not fit this graph ({len(table)} observers stored, "
            f"{len(observers)} in the graph); re-measure them with --calibration DATA_ROOT"
        )
    for name, obs in observers.items():
        scale, zp = table[name]
        qparams = (torch.tensor([scale], dtype=torch.float32), torch.tensor([int(zp)], dtype=torch.int32))
        obs.calculate_qparams = lambda q=qparams: q  # instance attribute: convert_pt2e calls this


def save(path: str | Path, ranges: ActivationRanges) -> None:
    with atomic_path(Path(path)) as tmp:
        Path(tmp).write_text(json.dumps(ranges.to_dict(), indent=1) + "\n")


def load(path: str | Path, checkpoint_sha256: str | None = None) -> ActivationRanges:
    """Read a ranges file; with `checkpoint_sha256`, refuse one measured on other weights."""
    try:
        d = json.loads(Path(path).read_text())
        if d.get("version") != VERSION:
            raise ValueError(f"version {d.get('version')!r}, expected {VERSION}")
        level = d["frame_level_dbfs"]
        ranges = ActivationRanges(
            str(d["checkpoint_sha256"]), str(d["source"]), None if level is None else float(level), dict(d["formats"])
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EdgePseError(f"cannot read activation ranges {path}: {e}") from None
    if checkpoint_sha256 is not None and ranges.checkpoint_sha256 != checkpoint_sha256:
        raise EdgePseError(
            f"activation ranges {path} were measured on another checkpoint (sha256 "
            f"{ranges.checkpoint_sha256[:12]}, this one {checkpoint_sha256[:12]}); re-measure them with "
            "--calibration DATA_ROOT"
        )
    return ranges
