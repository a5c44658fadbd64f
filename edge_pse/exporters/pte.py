"""ExecuTorch .pte with the XNNPACK delegate: export -> (quantize) -> re-export -> lower -> serialize."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from edge_pse.bundle import MODES
from edge_pse.exporters.common import Exported, Quantized, float_file_io

FILENAME = "model.pte"


def quantizer(qat: bool = False):
    """XNNPACK's int8 scheme: per-channel symmetric weights, per-tensor affine activations."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=qat))


def ops_outside_delegate(graph: torch.fx.Graph) -> dict[str, int]:
    """Ops left to ExecuTorch's portable kernels after partitioning (not in an XNNPACK subgraph)."""
    skip = ("executorch_call_delegate", "getitem")
    names = Counter()
    for n in graph.nodes:
        if n.op == "call_function" and not any(s in str(n.target) for s in skip):
            name = getattr(n.target, "__name__", str(n.target))
            names[name.removeprefix("aten.").removesuffix(".default")] += 1
    names["delegate_subgraphs"] = sum(
        1 for n in graph.nodes if n.op == "call_function" and "executorch_call_delegate" in str(n.target)
    )
    return dict(names)


def quantize(step, mode: str, clips: list, max_hops: int | None, qat=None, pinned: dict | None = None) -> Quantized:
    """fp32: the float step. ptq: PT2E with XNNPACK's scheme, int8 weight constants folded (ExecuTorch wants
    them so), activations at `pinned` ranges when given (quant/ranges.py). qat: the QAT run's converted graph,
    which used this scheme."""
    from edge_pse.quant.float_state import with_float_paths
    from edge_pse.quant.ptq import quantize_ptq

    if mode == "fp32":
        return Quantized(step, step, MODES[mode])
    if mode == "qat":
        converted, tuned = qat
        return Quantized(converted, tuned, MODES[mode])
    measured: dict = {}
    quant = with_float_paths(quantizer(), step, dynamic_decoder=True)
    graph = quantize_ptq(step, quant, clips, max_hops, True, pinned, measured)
    return Quantized(graph, step, MODES[mode], ranges=measured)


def lower(q: Quantized, out_dir: Path) -> Exported:
    """The float step and a converted PT2E graph (Q/DQ) lower the same way."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from edge_pse.quant.ptq import example_inputs

    program = torch.export.export(q.module, example_inputs(q.step))
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    outside = ops_outside_delegate(edge.exported_program().graph_module.graph)
    path = out_dir / FILENAME
    path.write_bytes(edge.to_executorch().buffer)
    return Exported(path, "pte", q.quantization, float_file_io(q.step), outside)
