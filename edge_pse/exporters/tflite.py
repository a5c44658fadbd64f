"""LiteRT .tflite through litert-torch: fp32 straight from the step, int8 from its own PT2E quantizer.

litert-torch's int8 model keeps mixed I/O (some states int8, some float; a state's input and output scale can
differ, docs/toolchain.md), so the file's real I/O is read back from the interpreter into the manifest.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edge_pse.bundle import FileIO, TensorIO
from edge_pse.exporters.common import Exported

FILENAME = "model.tflite"


def quantizer(qat: bool = False):
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config

    return PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=qat))


def read_file_io(path: Path, step) -> FileIO:
    """Inputs/outputs in the step's call order, with dtype and (for int8) scale and zero point."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    sig = it._get_full_signature_list()["serving_default"]
    details = {d["index"]: d for d in it.get_input_details() + it.get_output_details()}

    def tensors(mapping: dict[str, int], prefix: str, names: list[str]) -> tuple[TensorIO, ...]:
        out = []
        for k, name in enumerate(names):
            d = details[mapping[f"{prefix}_{k}"]]
            scale, zp = d["quantization"]
            q = d["dtype"].__name__ in ("int8", "uint8", "int16")
            out.append(
                TensorIO(
                    name,
                    d["dtype"].__name__,
                    tuple(int(x) for x in d["shape"]),
                    scale if q else None,
                    zp if q else None,
                )
            )
        return tuple(out)

    return FileIO(
        tensors(sig["inputs"], "args", step.io.input_names), tensors(sig["outputs"], "output", step.io.output_names)
    )


def ops_summary(path: Path) -> dict[str, int]:
    """Op counts of the float islands (DEQUANTIZE / float kernels are what int8 does not cover)."""
    from collections import Counter

    from ai_edge_litert.interpreter import Interpreter

    ops = Counter(o["op_name"] for o in Interpreter(model_path=str(path))._get_ops_details())
    return dict(ops)


def export(
    module: nn.Module, example: tuple[torch.Tensor, ...], out_dir: Path, quantization: str, step, quant=None
) -> Exported:
    """`module` is the float step (fp32) or a converted PT2E graph made with `quantizer()` (int8)."""
    import litert_torch
    from litert_torch.quantize.quant_config import QuantConfig

    cfg = QuantConfig(pt2e_quantizer=quant) if quant is not None else None
    model = litert_torch.convert(module, example, quant_config=cfg)
    path = out_dir / FILENAME
    model.export(str(path))
    ops = ops_summary(path)
    outside = {k: v for k, v in ops.items() if k in ("DEQUANTIZE", "QUANTIZE")} if quant is not None else {}
    return Exported(path, "tflite", quantization, read_file_io(path, step), outside)
