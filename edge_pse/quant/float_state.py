"""The parts of an otherwise int8 graph that stay float, one policy for every format.

- The LSTM cell state c is an unbounded accumulator (c = f*c + i*g). Measured on the distilled tiny: block 0's
  c spans -47..+140 while its rms is ~7, so one int8 per-tensor scale has a step of ~0.7, and the rounding
  error feeds back every hop. Quantizing that state alone drops the step's output to 11.5 dB SNR vs float
  (docs/bundle.md). The ops fed by c (f*c, the add, tanh(c), o*tanh(c)) and the state itself stay float, and
  so does the product added into it (i*g: an int8 rounding there accumulates in c like one of c itself;
  measured in PT2E on the personalized tiny, keeping it float took the worst held-out drop from 0.35 to
  0.29 dB and the SNR vs float from 21.9 to 22.7 dB).
- With per-frame level normalisation (`E3NetConfig.frame_level_dbfs`) the signals at the input's own level
  stay float: the hop and the previous hop (`enc_buf`), the frame's power and gain, the scaled window up to
  the encoder's Linears, and from the decoder's Linears on the scaling back and the carried `dec_tail`. An
  int8 scale there would again depend on the input level, which is what the normalisation removes.
- A projected step's speaker input (model.step.E3NetStep, `projected`) holds the fusion's speaker term and
  FiLM's scales and shifts, computed in float once per speaker: its slices and the multiplies and adds that
  take them stay float (those ops only: what they feed is quantized where an int8 op reads it). Measured with
  PT2E on the personalized tiny, the interferer condition's int8 drop went from 0.39 to 0.23 dB with the
  speaker's path float.
- The mask's product with the encoder's features (`feats * sigmoid(mask(x))`): rounding the features to one
  int8 scale before the mask picks the few it keeps costs most of what the small loses in noise. Measured in
  PT2E's simulation of the XNNPACK scheme on the personalized small (12 held-out mixtures per condition at -30
  dBFS), keeping that one multiply float took the drop from 0.44 to 0.28 dB in noise, 0.24 to 0.14 with talker
  and noise, 0.21 to 0.13 with the talker; no group of Linears kept float moved any row by more than 0.02 dB.
  The product is quantized again where the decoder's Linears read it.
- Every add and every PReLU's relu, in every format. LiteRT's quantizer leaves them float by itself and ONNX
  quantizes only the Linears; XNNPACK's quantizer made them int8, and that is what the .pte lost beyond the
  .tflite. PT2E simulation of the XNNPACK scheme on 20 held-out noise mixtures (`benchmarks/int8_levels.py
  --seed 7`'s): the small's drop 0.44 dB with them int8, 0.30 with the adds float, 0.24 with the relus too (its
  .tflite: 0.24); the tiny 0.40 -> 0.37. The .pte files on that set: small 0.45 -> 0.25, tiny 0.40 -> 0.36; on
  20 mixtures per condition looked at only afterwards (`--seed 11`): small 0.23-0.24, tiny 0.31-0.33, as their
  .tflite (0.24, 0.31-0.34).
- The decoder's output, and with it the scale of the decoder's input: its Linears take the input quantized per
  hop at run time (dynamic int8, the scale from that hop's own range: XNNPACK's qd8 path, LiteRT's
  dynamic-range FULLY_CONNECTED, ONNX Runtime's DynamicQuantizeLinear) and give float. The masked features
  are a few large values, which carry the speech, among many small ones; one static scale either leaves the
  small ones few steps or clips the peaks, and the decoder's output is the waveform, so the error is heard
  directly. PT2E simulation on the tiny (20 held-out noise mixtures of `int8_levels.py --seed 7`, one at a
  time as a runtime runs them): drop vs float 0.36 dB with the decoder static, 0.21 with it dynamic;
  clipping its static range to half costs 1.3 dB instead, and a per-hop gain in front of a static decoder
  leaves 0.31-0.34. Weights stay int8 per channel, so the files do not grow. PT2E's .pte takes it from the
  quantizer (`make_decoder_dynamic`); litert-torch 0.10 converts a model in one mode only (static or dynamic,
  and its dynamic mode fails on PT2E's dynamic scales), so the .tflite's decoder is rewritten after
  conversion (exporters/tflite.py); ONNX Runtime quantizes it with quantize_dynamic (exporters/onnx.py).
All are a few elementwise ops per hop; every Linear (all of the MACs) stays int8.

The step carries its state as one packed tensor (config.StepIO): that tensor, the slices taken from it and the
concatenation that builds the next one stay float, so the state crosses the model file's boundary unchanged
and a runtime copies it back without requantizing. Each LSTM's h is rebuilt from the carried output gate and
cell (h = o * tanh(c), float) and quantized where its Linears read it, inside the graph.
"""

from __future__ import annotations

STATE_INPUT = "state"
LEVEL_INPUTS = ("hop",)
SPEAKER_INPUT = "spk"
# elementwise ops through which a float input's path is followed (PT2E aten targets by name; ONNX op types)
_ATEN_OPS = {"aten.mul.Tensor", "aten.add.Tensor", "aten.tanh.default", "aten.mean.dim", "aten.rsqrt.default"}
_ATEN_OPS |= {"aten.clamp.default", "aten.reciprocal.default", "aten.slice.Tensor", "aten.cat.default"}
_DIRECT_OPS = {"aten.mul.Tensor", "aten.add.Tensor"}
MASK_WEIGHT = "mask.weight"  # E3NetStep.mask: its sigmoid scales the encoder's features
DYNAMIC_MODULES = ("dec_head", "dec_tail")  # E3NetStep's decoder: input scaled per hop
DYNAMIC_WEIGHTS = tuple(f"{m}.weight" for m in DYNAMIC_MODULES)
_FLOAT_OPS = {"aten.add.Tensor", "aten.relu.default"}  # float wherever they are (as LiteRT's quantizer has them)
_ONNX_OPS = {"Mul", "Add", "Tanh", "ReduceMean", "Sqrt", "Reciprocal", "Div", "Clip", "Min", "Pow", "Slice", "Concat"}
_ANNOTATION = "quantization_annotation"


def float_inputs(step) -> set[str]:
    """Names of the step's inputs whose paths stay float: the packed state (cell states, level-dependent
    parts), and the hop when the step normalises each frame's level."""
    names = set(step.io.input_names)
    out = names & {STATE_INPUT}
    if step.cfg.frame_level_dbfs is not None:
        out |= names & set(LEVEL_INPUTS)
    return out


def direct_float_inputs(step) -> set[str]:
    """Names of the step's inputs whose slices, and the ops taking those slices, stay float (no further): a
    projected step's speaker input."""
    return {SPEAKER_INPUT} if getattr(step, "projected", False) else set()


def strip_float_path_annotations(
    model, inputs: set[str], input_names: list[str], direct: frozenset[str] | set[str] = frozenset()
) -> None:
    """Remove the quantization annotations of every op fed (directly or through such ops) by one of `inputs`,
    and of the slices of a `direct` input and the multiplies and adds that take them, so prepare_pt2e leaves
    them float."""
    placeholders = [n for n in model.graph.nodes if n.op == "placeholder"]
    marked = {p for p, name in zip(placeholders, input_names, strict=False) if name in inputs}
    sources = {p for p, name in zip(placeholders, input_names, strict=False) if name in direct}
    slices, stripped = set(), {}
    for node in model.graph.nodes:
        if node.op != "call_function" or str(node.target) not in _ATEN_OPS:
            continue
        if any(a in marked for a in node.all_input_nodes):  # cat takes its inputs as a list
            marked.add(node)
        elif str(node.target) == "aten.slice.Tensor" and node.all_input_nodes[0] in sources | slices:
            slices.add(node)
        elif not (str(node.target) in _DIRECT_OPS and slices.intersection(node.all_input_nodes)):
            continue
        stripped[node] = node.meta.pop(_ANNOTATION, None)
    # a float sum's products stay float too: the cell update c = f*c + i*g gets i*g unrounded (it was int8)
    for node in [n for n in marked if n.op == "call_function" and str(n.target) == "aten.add.Tensor"]:
        for a in node.all_input_nodes:
            if a.op == "call_function" and str(a.target) == "aten.mul.Tensor" and a not in marked:
                stripped[a] = a.meta.pop(_ANNOTATION, None)
    for node in _mask_products(model):
        stripped[node] = node.meta.pop(_ANNOTATION, None)
    for node in model.graph.nodes:
        if node.op == "call_function" and str(node.target) in _FLOAT_OPS and _ANNOTATION in node.meta:
            stripped[node] = node.meta.pop(_ANNOTATION)
    _unshare_from(model, stripped)


def _mask_products(model) -> list:
    """The multiplies that take sigmoid(Linear with the mask's weight): the features times the mask."""

    def is_mask(node) -> bool:
        sigmoid = node.op == "call_function" and str(node.target) == "aten.sigmoid.default"
        return sigmoid and _linear_weight(node.all_input_nodes[0]) == MASK_WEIGHT

    return [
        n
        for n in model.graph.nodes
        if n.op == "call_function" and str(n.target) == "aten.mul.Tensor" and any(map(is_mask, n.all_input_nodes))
    ]


def _unshare_from(model, stripped: dict) -> None:
    """An op that shared its quantization with a now-float op's output (e.g. a PReLU with the add before it)
    gets that op's own activation spec instead: its input is quantized where it reads it."""
    from torchao.quantization.pt2e.quantizer import QuantizationSpec, SharedQuantizationSpec

    def own(spec):
        if not isinstance(spec, SharedQuantizationSpec):
            return spec
        edge = spec.edge_or_node
        root = edge[0] if isinstance(edge, tuple) else edge
        if root not in stripped:
            return spec
        original = getattr(stripped[root], "output_qspec", None)
        return original if isinstance(original, QuantizationSpec) else spec

    for node in model.graph.nodes:
        ann = node.meta.get(_ANNOTATION)
        if ann is None:
            continue
        ann.input_qspec_map = {k: own(v) for k, v in ann.input_qspec_map.items()}
        ann.output_qspec = own(ann.output_qspec)


def with_float_paths(quantizer, step, dynamic_decoder: bool = False):
    """The same quantizer object (litert-torch checks its type and config), annotating as before and then
    leaving the float paths of `step` float; with `dynamic_decoder`, the decoder's input scaled per hop."""
    inputs, names, direct = float_inputs(step), list(step.io.input_names), direct_float_inputs(step)
    annotate = quantizer.annotate
    qat = bool(getattr(quantizer.global_config, "is_qat", False))

    def annotate_keeping_float_paths(model):
        model = annotate(model)
        strip_float_path_annotations(model, inputs, names, direct)
        if dynamic_decoder:
            make_decoder_dynamic(model, qat)
        return model

    quantizer.annotate = annotate_keeping_float_paths
    return quantizer


def _linear_weight(node) -> str | None:
    """The weight's name of a PT2E linear node (None for any other node)."""
    if node.op != "call_function" or "linear" not in str(node.target):
        return None
    return str(getattr(node.args[1], "target", ""))


def make_decoder_dynamic(model, qat: bool) -> None:
    """The decoder's Linears: input quantized per hop at run time, output float (module docstring)."""
    import torch
    from torchao.quantization.pt2e import FakeQuantize, MovingAverageMinMaxObserver, PlaceholderObserver
    from torchao.quantization.pt2e.quantizer import QuantizationSpec

    # the spec XNNPACK's own is_dynamic config uses; QAT fakes it with each batch's own range
    ctr = (
        FakeQuantize.with_args(observer=MovingAverageMinMaxObserver.with_args(averaging_constant=1), eps=2**-12)
        if qat
        else PlaceholderObserver.with_args(eps=2**-12)
    )
    spec = QuantizationSpec(
        dtype=torch.int8,
        quant_min=-128,
        quant_max=127,
        qscheme=torch.per_tensor_affine,
        is_dynamic=True,
        observer_or_fake_quant_ctr=ctr,
    )
    for node in model.graph.nodes:
        ann = node.meta.get(_ANNOTATION)
        if ann is None or _linear_weight(node) not in DYNAMIC_WEIGHTS:
            continue
        ann.input_qspec_map = {k: (spec if k is node.args[0] else v) for k, v in ann.input_qspec_map.items()}
        ann.output_qspec = None


def onnx_float_nodes(path, step) -> list[str]:
    """Names of the ONNX nodes on the same float paths (for quantize_static's nodes_to_exclude)."""
    import onnx

    graph = onnx.load(str(path)).graph
    inputs = float_inputs(step)
    marked = {i.name for i in graph.input if i.name in inputs}
    names = []
    for node in graph.node:  # ONNX nodes are stored in topological order
        if node.op_type in _ONNX_OPS and marked.intersection(node.input):
            marked.update(node.output)
            names.append(node.name)
    return names


def onnx_dynamic_nodes(path) -> list[str]:
    """Names of the ONNX nodes of the decoder's Linears (torch.onnx names them /<module>/<op>)."""
    import onnx

    prefixes = tuple(f"/{m}/" for m in DYNAMIC_MODULES)
    return [n.name for n in onnx.load(str(path)).graph.node if n.name.startswith(prefixes)]
