"""int8 export keeps the LSTM cell state float: an accumulating cell state (range >> rms) quantized to int8
costs most of the output's accuracy, and the error feeds back every hop (edge_pse.quant.float_state)."""

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edge_pse.exporters.accuracy import snr_db  # noqa: E402
from edge_pse.model.config import get_preset  # noqa: E402
from edge_pse.model.e3net import E3Net  # noqa: E402
from edge_pse.model.step import E3NetStep  # noqa: E402
from edge_pse.quant.float_state import cell_state_inputs, with_float_cell_state  # noqa: E402
from edge_pse.quant.ptq import batch_clips, quantize_ptq  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def shipped_tiny() -> E3NetStep:
    """The shipped tiny: distilled from the teacher, its block-0 cell state spans about -47..+140 at an rms of
    ~7 on the calibration set (docs/bundle.md)."""
    from edge_pse.model.checkpoint import load_model

    return E3NetStep(load_model("tiny")[0]).eval()


@pytest.fixture(scope="module")
def clips():
    from edge_pse.quant.calibration import load_calibration

    calib = load_calibration(REPO / "calibration_data")
    return calib.calibration, calib.heldout


def stream(module, step: E3NetStep, clips) -> tuple[np.ndarray, list[float]]:
    """Output of `module` hop by hop from zero state, and block 0's largest |c| per hop."""
    wave, spk = batch_clips(clips, step.cfg.hop)
    hop, state, outs, c_max = step.cfg.hop, step.initial_state(wave.shape[0]), [], []
    c0 = step.io.input_names.index("c0") - 2
    with torch.no_grad():
        for t in range(0, wave.shape[1], hop):
            out, *state = module(wave[:, t : t + hop], spk, *state)
            outs.append(out)
            c_max.append(float(state[c0].abs().max()))
    return torch.cat(outs, 1).numpy(), c_max


def test_the_cell_state_inputs_are_found_by_name(shipped_tiny) -> None:
    names = list(shipped_tiny.io.input_names)
    assert [names[k] for k in sorted(cell_state_inputs(names))] == ["c0", "c1"]


@pytest.mark.slow
def test_int8_with_a_float_cell_state_tracks_the_float_step(shipped_tiny, clips) -> None:
    """Measured: 10.3 dB SNR vs float with an int8 cell state, 23.4 dB with a float one (.pte PTQ)."""
    from edge_pse.exporters import pte

    calibration, heldout = clips
    ref, c_max = stream(shipped_tiny, shipped_tiny, heldout)
    assert max(c_max) > 30  # the premise: an accumulating cell state
    names = list(shipped_tiny.io.input_names)
    all_int8 = quantize_ptq(shipped_tiny, pte.quantizer(), calibration)
    float_c = quantize_ptq(shipped_tiny, with_float_cell_state(pte.quantizer(), names), calibration)
    snr_all_int8 = snr_db(ref, stream(all_int8, shipped_tiny, heldout)[0])
    snr_float_c = snr_db(ref, stream(float_c, shipped_tiny, heldout)[0])
    assert snr_float_c >= 20 and snr_float_c > snr_all_int8 + 6, (snr_float_c, snr_all_int8)


def test_onnx_leaves_exactly_the_cell_state_ops_float(tmp_path) -> None:
    pytest.importorskip("onnx")
    from edge_pse.exporters.onnx import cell_state_nodes, export_float
    from edge_pse.quant.ptq import example_inputs

    torch.manual_seed(0)
    step = E3NetStep(E3Net(get_preset("tiny")).eval()).eval()
    path = tmp_path / "float.onnx"
    export_float(step, example_inputs(step), path)
    import onnx

    ops = {n.name: n.op_type for n in onnx.load(str(path)).graph.node}
    found = cell_state_nodes(path)
    # per block: f*c, + i*g, tanh(c), o*tanh(c)
    assert sorted(ops[n] for n in found) == sorted(["Mul", "Add", "Tanh", "Mul"] * step.cfg.n_blocks)
