"""ONNX fp32 (torch.onnx) and onnxruntime static int8 (QOperator form), calibrated on streaming states.

The int8 activation ranges (the Linears' inputs and outputs) are onnxruntime's percentile calibration (99.999 %,
its defaults), measured in the quantize stage or pinned from stored ranges (quant/ranges.py: per tensor
[lowest, highest]), then handed to quantize_static as its calibration cache. Measured on the personalized
small (benchmarks/int8_levels.py, 6 held-out mixtures per condition, 2026-12-07): MinMax on real speech left a
worst drop of 0.31-0.32 dB (noise), percentile on the same clips 0.18; percentile on the committed synthetic
clips 0.34 (tiny 0.38), so the real-speech ranges are stored and pinned as for the PT2E formats. The decoder's
two MatMuls are then quantized dynamically (DynamicQuantizeLinear + MatMulInteger: the input's scale from each
hop's own range, float out; quant/float_state.py says why).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edge_pse.bundle import MODES
from edge_pse.errors import EdgePseError
from edge_pse.exporters.common import Exported, Quantized, float_file_io
from edge_pse.quant.calibration import Clip
from edge_pse.quant.float_state import onnx_dynamic_nodes, onnx_float_nodes
from edge_pse.quant.ptq import example_inputs, streaming_inputs

FILENAME = "model.onnx"
OPSET = 17
# Only the Linears (all of the MACs), as QOperator nodes with uint8 activations: onnxruntime's fused int8
# kernels. Measured on the shipped tiny (1 thread, x86_64, docs/bundle.md): QDQ left a DequantizeLinear on every
# per-channel weight and Q/DQ round trips around the elementwise ops, 476 us per hop (fp32: 122 us); QOperator
# over every op type collapsed to 2.9 dB SNR vs float; this form gives 27.4 dB and 113 us
OP_TYPES = ["MatMul", "Gemm"]


def export_float(step: nn.Module, example: tuple[torch.Tensor, ...], path: Path) -> None:
    torch.onnx.export(
        step,
        example,
        str(path),
        input_names=step.io.input_names,
        output_names=step.io.output_names,
        opset_version=OPSET,
        dynamo=False,
    )


class _StreamingReader:
    """onnxruntime's CalibrationDataReader over the float step's real per-hop inputs and states (batch 1)."""

    def __init__(self, step: nn.Module, clips: list[Clip], max_hops: int | None) -> None:
        names = step.io.input_names
        self._items = []
        for inputs in streaming_inputs(step, clips, max_hops):
            for b in range(inputs[0].shape[0]):
                self._items.append(
                    {n: x[b : b + 1].numpy().astype(np.float32) for n, x in zip(names, inputs, strict=True)}
                )
        self._it = iter(self._items)

    def get_next(self) -> dict | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._items)


def _calibrator(float_path: Path, tmp: Path):
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    return create_calibrator(
        float_path,
        OP_TYPES,
        augmented_model_path=str(tmp / "augmented.onnx"),
        calibrate_method=CalibrationMethod.Percentile,
    )


def measure_ranges(step: nn.Module, clips: list[Clip], max_hops: int | None, pinned: dict | None = None) -> dict:
    """Per calibrated tensor of the float file: [lowest, highest], measured on `clips` hop by hop, or `pinned`
    after checking that it names exactly this graph's tensors."""
    with tempfile.TemporaryDirectory(prefix="edge-pse-onnx-") as d:
        tmp = Path(d)
        export_float(step, example_inputs(step), tmp / "float.onnx")
        calibrator = _calibrator(tmp / "float.onnx", tmp)
        if pinned is not None:
            names, _ = calibrator.select_tensors_to_calibrate(calibrator.model)
            if set(names) != set(pinned):
                raise EdgePseError(
                    f"onnx: the stored activation ranges do not fit this graph ({len(pinned)} tensors stored, "
                    f"{len(names)} in the graph); re-measure them with --calibration DATA_ROOT"
                )
            return dict(pinned)
        calibrator.collect_data(_StreamingReader(step, clips, max_hops))
        data = calibrator.compute_data()
    return {name: [float(td.lowest), float(td.highest)] for name, td in data.items()}


def quantize(step, mode: str, clips: list, max_hops: int | None, qat=None, pinned: dict | None = None) -> Quantized:
    """Nothing to do in torch: int8-* measures the activation ranges on `clips` (or takes `pinned`), and
    onnxruntime quantizes the lowered float file with them; after QAT, on the fine-tuned weights."""
    if mode == "qat":
        step = qat[1]
    if mode == "fp32":
        return Quantized(step, step, MODES[mode])
    return Quantized(step, step, MODES[mode], ranges=measure_ranges(step, clips, max_hops, pinned))


def lower(q: Quantized, out_dir: Path) -> Exported:
    """fp32: the step as is. int8-*: static quantization of that graph (per-channel int8 weights, uint8
    activations, QOperator) at the quantize stage's ranges."""
    step, quantization, example = q.step, q.quantization, example_inputs(q.step)
    path = out_dir / FILENAME
    if quantization == "fp32":
        export_float(step, example, path)
    else:
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )
        from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

        float_path = out_dir / "float.onnx.tmp"
        static_path = out_dir / "static.onnx.tmp"
        cache = out_dir / "ranges.json.tmp"
        export_float(step, example, float_path)
        table = {n: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for n, (lo, hi) in q.ranges.items()}
        save_tensors_data(TensorsData(CalibrationMethod.Percentile, table), cache)
        try:
            dynamic = onnx_dynamic_nodes(float_path)
            quantize_static(
                str(float_path),
                str(static_path),
                None,
                quant_format=QuantFormat.QOperator,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                op_types_to_quantize=OP_TYPES,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.Percentile,
                calibration_cache_path=str(cache),
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
                nodes_to_exclude=onnx_float_nodes(float_path, step) + dynamic,
            )
            # the decoder: input quantized per hop at run time, float out (quant/float_state.py)
            quantize_dynamic(
                str(static_path),
                str(path),
                op_types_to_quantize=OP_TYPES,
                nodes_to_quantize=dynamic,
                per_channel=True,
                weight_type=QuantType.QInt8,
            )
        finally:
            float_path.unlink(missing_ok=True)
            static_path.unlink(missing_ok=True)
            cache.unlink(missing_ok=True)
    return Exported(path, "onnx", quantization, float_file_io(step), {})
