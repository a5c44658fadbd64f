"""What every exporter returns, and the float I/O description shared by formats whose I/O stays float."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edge_pse.bundle import FileIO, TensorIO


@dataclass
class Exported:
    path: Path
    format: str
    quantization: str
    io: FileIO
    ops_outside: dict[str, int] = field(default_factory=dict)  # ops not run by the accelerated delegate


def float_file_io(step) -> FileIO:
    """hop, spk, states in / out, new states out, all float32 batch 1 (the step's own call order)."""
    spec = step.io
    shapes = [(1, spec.hop), (1, spec.spk_dim)] + [s.shape for s in spec.states]
    inputs = tuple(TensorIO(n, "float32", tuple(s)) for n, s in zip(spec.input_names, shapes, strict=True))
    out_shapes = [(1, spec.hop)] + [s.shape for s in spec.states]
    outputs = tuple(TensorIO(n, "float32", tuple(s)) for n, s in zip(spec.output_names, out_shapes, strict=True))
    return FileIO(inputs, outputs)
