"""ONNX fp32 (torch.onnx) and onnxruntime static int8 (QOperator form), calibrated on streaming states."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from edge_pse.bundle import MODES
from edge_pse.exporters.common import Exported, Quantized, float_file_io
from edge_pse.quant.calibration import Clip
from edge_pse.quant.float_state import onnx_float_nodes
from edge_pse.quant.ptq import streaming_inputs

FILENAME = "model.onnx"
OPSET = 17


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


def quantize(step, mode: str, clips: list, max_hops: int | None, qat=None, pinned: dict | None = None) -> Quantized:
    """Nothing to do in torch: onnxruntime quantizes the lowered float file (int8-*), calibrated on `clips`;
    after QAT, the fine-tuned weights. `pinned` ranges are PT2E's and do not apply (only the Linears are int8
    here, which the synthetic clips calibrate within the gate)."""
    if mode == "qat":
        step = qat[1]
    return Quantized(step, step, MODES[mode], clips=[] if mode == "fp32" else clips, max_hops=max_hops)


def lower(q: Quantized, out_dir: Path) -> Exported:
    """fp32: the step as is. int8-*: static quantization of that graph (per-channel int8 weights, uint8
    activations, QOperator)."""
    from edge_pse.quant.ptq import example_inputs

    step, quantization, example = q.step, q.quantization, example_inputs(q.step)
    path = out_dir / FILENAME
    if quantization == "fp32":
        export_float(step, example, path)
    else:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        float_path = out_dir / "float.onnx.tmp"
        export_float(step, example, float_path)
        try:
            quantize_static(
                str(float_path),
                str(path),
                _StreamingReader(step, q.clips, q.max_hops),
                # Only the Linears (all of the MACs), as QOperator nodes with uint8 activations: onnxruntime's
                # fused int8 kernels. Measured on the shipped tiny (1 thread, x86_64, docs/bundle.md): QDQ left a
                # DequantizeLinear on every per-channel weight and Q/DQ round trips around the elementwise ops,
                # 476 us per hop (fp32: 122 us); QOperator over every op type collapsed to 2.9 dB SNR vs float;
                # this form gives 27.4 dB and 113 us
                quant_format=QuantFormat.QOperator,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                op_types_to_quantize=["MatMul", "Gemm"],
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
                nodes_to_exclude=onnx_float_nodes(float_path, step),
            )
        finally:
            float_path.unlink(missing_ok=True)
    return Exported(path, "onnx", quantization, float_file_io(step), {})
