"""LiteRT .tflite through litert-torch: fp32 straight from the step, int8 from its own PT2E quantizer.

litert-torch's int8 model may have mixed I/O (an input that feeds an int8 op directly becomes int8, such as the
unprojected speaker; docs/toolchain.md), so the file's real I/O is read back from the interpreter into the
manifest.
"""

from __future__ import annotations

from pathlib import Path

from edge_pse.bundle import MODES, FileIO, TensorIO
from edge_pse.errors import EdgePseError
from edge_pse.exporters.common import Exported, Quantized

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


def quantize(step, mode: str, clips: list, max_hops: int | None, qat=None, pinned: dict | None = None) -> Quantized:
    """fp32: the float step. ptq: PT2E with litert-torch's own quantizer, Q/DQ pairs kept (its converter folds
    them), activations at `pinned` ranges when given (quant/ranges.py). qat: the same on the QAT run's
    fine-tuned weights."""
    from edge_pse.quant.float_state import with_float_paths
    from edge_pse.quant.ptq import quantize_ptq

    if mode == "fp32":
        return Quantized(step, step, MODES[mode])
    if mode == "qat":
        step = qat[1]
    quant = with_float_paths(quantizer(), step)
    measured: dict = {}
    graph = quantize_ptq(step, quant, clips, max_hops, False, pinned, measured)
    return Quantized(graph, step, MODES[mode], quantizer=quant, ranges=measured)


def lower(q: Quantized, out_dir: Path) -> Exported:
    """Convert and write the file, then read its real I/O back (int8 inputs carry their scales)."""
    import litert_torch
    from litert_torch.quantize.quant_config import QuantConfig

    from edge_pse.quant.ptq import example_inputs

    cfg = QuantConfig(pt2e_quantizer=q.quantizer) if q.quantizer is not None else None
    model = litert_torch.convert(q.module, example_inputs(q.step), quant_config=cfg)
    path = out_dir / FILENAME
    model.export(str(path))
    if q.quantizer is not None:
        dynamic_decoder(path)
    ops = ops_summary(path)
    outside = {k: v for k, v in ops.items() if k in ("DEQUANTIZE", "QUANTIZE")} if q.quantizer is not None else {}
    return Exported(path, "tflite", q.quantization, read_file_io(path, q.step), outside)


def dynamic_decoder(path: Path) -> None:
    """Make the decoder's FULLY_CONNECTEDs dynamic-range ops in place: float in (quantized per hop at run time,
    asymmetric), int8 per-channel weights, float out; their QUANTIZE and DEQUANTIZE go.

    quant/float_state.py says why (the .pte and .onnx get the same from their quantizers). litert-torch 0.10
    converts a model in one mode, static or dynamic, and its dynamic mode fails on PT2E's dynamic scales, so
    the static file's decoder is rewritten here, with the flatbuffer schema LiteRT ships.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    from edge_pse.quant.float_state import DYNAMIC_MODULES

    model = fb.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    graph = model.subgraphs[0]
    code = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    kind = [code[model.operatorCodes[o.opcodeIndex].builtinCode] for o in graph.operators]
    producer = {int(o.outputs[0]): k for k, o in enumerate(graph.operators)}
    readers: dict[int, list[int]] = {}
    for k, o in enumerate(graph.operators):
        for t in o.inputs:
            readers.setdefault(int(t), []).append(k)
    modules = tuple(f"Linear_{m};" for m in DYNAMIC_MODULES)
    fcs = [
        k
        for k, o in enumerate(graph.operators)
        if kind[k] == "FULLY_CONNECTED" and graph.tensors[o.outputs[0]].name.decode().endswith(modules)
    ]
    if len(fcs) != len(DYNAMIC_MODULES):
        raise EdgePseError(f"tflite: found {len(fcs)} decoder FULLY_CONNECTED ops, expected {len(DYNAMIC_MODULES)}")
    drop = set()
    for k in fcs:
        op = graph.operators[k]
        quantize, after = producer.get(int(op.inputs[0])), readers.get(int(op.outputs[0]), [])
        dequantize = after[0] if len(after) == 1 else None
        if quantize is None or dequantize is None or (kind[quantize], kind[dequantize]) != ("QUANTIZE", "DEQUANTIZE"):
            raise EdgePseError("tflite: the decoder's FULLY_CONNECTED is not between QUANTIZE and DEQUANTIZE")
        op.inputs, op.outputs = op.inputs.copy(), op.outputs.copy()  # read-only views of the buffer
        op.inputs[0] = graph.operators[quantize].inputs[0]
        op.outputs[0] = graph.operators[dequantize].outputs[0]
        op.builtinOptions.asymmetricQuantizeInputs = True
        drop.add(dequantize)
        if set(readers[graph.operators[quantize].outputs[0]]) <= set(fcs):
            drop.add(quantize)
    graph.operators = [o for k, o in enumerate(graph.operators) if k not in drop]
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(builder.Output())
