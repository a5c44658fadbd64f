"""Keep the LSTM cell state in float inside an otherwise int8 graph.

The cell state c is an unbounded accumulator (c = f*c + i*g). Measured on the distilled tiny: block 0's c
spans -47..+140 while its rms is ~7, so one int8 per-tensor scale has a step of ~0.7, and the rounding error
feeds back every hop. Quantizing that state alone drops the step's output to 11.5 dB SNR vs float
(docs/bundle.md). The ops fed by c (f*c, the add, tanh(c), o*tanh(c)) and the state tensor itself stay
float: four elementwise ops on `width` values per block and hop. Every Linear (all of the MACs) stays int8.
"""

from __future__ import annotations

import re

import torch

CELL_STATE = re.compile(r"c\d+")
_FLOAT_OPS = {torch.ops.aten.mul.Tensor, torch.ops.aten.add.Tensor, torch.ops.aten.tanh.default}
_ANNOTATION = "quantization_annotation"


def cell_state_inputs(input_names: list[str]) -> set[int]:
    """Positions of the cell-state inputs (c0, c1, ...) among the step's inputs."""
    return {k for k, name in enumerate(input_names) if CELL_STATE.fullmatch(name)}


def strip_cell_state_annotations(model: torch.fx.GraphModule, c_inputs: set[int]) -> None:
    """Remove the quantization annotations of every op fed (directly or through such ops) by a cell-state
    input, so prepare_pt2e leaves them float."""
    placeholders = [n for n in model.graph.nodes if n.op == "placeholder"]
    marked = {placeholders[k] for k in c_inputs}
    for node in model.graph.nodes:
        if node.op != "call_function" or node.target not in _FLOAT_OPS:
            continue
        if any(isinstance(a, torch.fx.Node) and a in marked for a in node.args):
            marked.add(node)
            node.meta.pop(_ANNOTATION, None)


def with_float_cell_state(quantizer, input_names: list[str]):
    """The same quantizer object (litert-torch checks its type and config), annotating as before and then
    leaving the cell-state path float."""
    c_inputs = cell_state_inputs(input_names)
    annotate = quantizer.annotate

    def annotate_keeping_cell_state_float(model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        model = annotate(model)
        strip_cell_state_annotations(model, c_inputs)
        return model

    quantizer.annotate = annotate_keeping_cell_state_float
    return quantizer
