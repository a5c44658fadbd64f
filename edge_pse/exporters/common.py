"""The stages every format module exposes, what they hand each other, and the float I/O description.

Each of exporters/pte.py, tflite.py and onnx.py has `quantize(step, mode, clips, max_hops, qat, pinned) -> Quantized`
and `lower(Quantized, out_dir) -> Exported`; the pipeline runs QAT once, then these two per format, then
verifies every file in its own runtime (as ExecuTorch's aot_compiler: quantize, lower, verify).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_pse.bundle import FileIO, TensorIO


@dataclass
class Quantized:
    """What a format's quantize stage hands its lower stage."""

    module: Any  # the graph to lower: the float step, or a converted PT2E graph
    step: Any  # the float step it came from (its I/O; after QAT, the fine-tuned weights)
    quantization: str  # the files' label: fp32, int8-ptq, int8-qat
    quantizer: Any = None  # LiteRT: the PT2E quantizer, which litert-torch's converter takes again
    ranges: dict = field(default_factory=dict)  # int8: the activation ranges used (quant/ranges.py's tables)


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
