"""ExecuTorch .pte with the XNNPACK delegate: export -> (quantize) -> re-export -> lower -> serialize."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
from torch import nn

from edge_pse.exporters.common import Exported, float_file_io

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


def export(module: nn.Module, example: tuple[torch.Tensor, ...], out_dir: Path, quantization: str, step) -> Exported:
    """`module` is the float step or a converted PT2E graph (Q/DQ); both lower the same way."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    program = torch.export.export(module, example)
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    outside = ops_outside_delegate(edge.exported_program().graph_module.graph)
    path = out_dir / FILENAME
    path.write_bytes(edge.to_executorch().buffer)
    return Exported(path, "pte", quantization, float_file_io(step), outside)
