"""Stored int8 activation ranges: an export measures them, a later export on other clips pins them and gets the
same int8 file; ranges of other weights or another graph are refused with a clear message."""

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edge_pse.errors import EdgePseError  # noqa: E402
from edge_pse.quant import ranges  # noqa: E402
from tests.test_export import calib, cli, export, tiny  # noqa: E402, F401

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def other_calib(calib):  # noqa: F811
    """Other voices, noises and speakers (another seed), the same held-out clips."""
    from edge_pse.quant.calibration import CalibrationSet, synthetic_clips
    from tests.test_export import random_embedding

    clips = synthetic_clips(3, 0, 1.2, 1, random_embedding(np.random.default_rng(1)))
    return CalibrationSet(clips, calib.heldout, "other clips")


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["pte", "onnx"])
def test_pinned_ranges_reproduce_the_int8_file_calibrated_elsewhere(tiny, calib, other_calib, tmp_path, fmt) -> None:  # noqa: F811
    from edge_pse.exporters import onnx, pte
    from edge_pse.exporters.accuracy import LEVELS_DBFS
    from edge_pse.model.step import E3NetStep

    first = export(tiny, calib, tmp_path / "a", fmt)
    stored = ranges.load(tmp_path / "a" / ranges.FILENAME)
    assert stored.formats[fmt] and stored.source == calib.describe()
    # the other clips alone would scale the activations differently (the graph the export quantizes: projected)
    step = E3NetStep(tiny, projected=True).eval()
    stages = {"pte": pte, "onnx": onnx}[fmt]
    own = stages.quantize(step, "ptq", other_calib.across_levels(LEVELS_DBFS).calibration, None).ranges
    assert own.keys() == stored.formats[fmt].keys() and own != stored.formats[fmt]
    second = export(tiny, other_calib, tmp_path / "b", fmt, ranges=stored)
    assert second.file(fmt).sha256 == first.file(fmt).sha256
    assert second.manifest["source"]["activation_ranges"] == stored.source


def test_ranges_that_do_not_fit_the_graph_are_refused(tiny) -> None:  # noqa: F811
    from edge_pse.exporters import pte
    from edge_pse.model.step import E3NetStep
    from edge_pse.quant.float_state import with_float_paths
    from edge_pse.quant.ptq import prepare_observers

    step = E3NetStep(tiny).eval()
    prepared = prepare_observers(step, with_float_paths(pte.quantizer(), step))
    with pytest.raises(EdgePseError, match="do not fit this graph"):
        ranges.pin(prepared, {"activation_post_process_0": [0.1, 0]}, "XNNPACKQuantizer")


def test_onnx_ranges_of_another_graph_are_refused(tiny) -> None:  # noqa: F811
    from edge_pse.exporters import onnx
    from edge_pse.model.step import E3NetStep

    step = E3NetStep(tiny, projected=True).eval()
    with pytest.raises(EdgePseError, match="onnx: the stored activation ranges do not fit this graph"):
        onnx.quantize(step, "ptq", [], None, pinned={"/fc1/Gemm_output_0": [-1.0, 1.0]})


def test_ranges_without_a_formats_table_are_refused_before_any_work() -> None:
    stored = ranges.ActivationRanges("x", "test", -20.0, {"pte": {"activation_post_process_1": [0.1, 0]}})
    stored.check(-20.0, ("pte",))
    for fmt in ("tflite", "onnx"):
        with pytest.raises(EdgePseError, match=f"no table for {fmt}"):
            stored.check(-20.0, ("pte", fmt))


def test_a_broken_ranges_file_is_a_clear_error(tmp_path) -> None:
    bad = tmp_path / "r.json"
    bad.write_text("{not json")
    with pytest.raises(EdgePseError, match="cannot read activation ranges"):
        ranges.load(bad)
    bad.write_text(json.dumps({"version": 99}))
    with pytest.raises(EdgePseError, match="version 99"):
        ranges.load(bad)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--student", "tiny", "--activation-ranges", "/nonexistent/r.json"], "not found"),
        # the shipped tiny's ranges with the shipped small: measured on other weights
        (["--student", "small", "--activation-ranges", str(REPO / "edge_pse/checkpoints/tiny.ranges.json")],
         "measured on another checkpoint"),
        # the same graph at another level would need other scales
        (["--student", "tiny", "--frame-level-dbfs", "-25"], "per-frame level normalisation -20.0 dBFS"),
        (["--student", "tiny", "--mode", "qat", "--activation-ranges", "edge_pse/checkpoints/tiny.ranges.json"],
         "applies to --mode ptq"),
    ],
)  # fmt: skip
def test_cli_refuses_ranges_it_cannot_use(args, message, tmp_path) -> None:
    res = cli(*args, "--output", str(tmp_path / "out"))
    assert res.returncode == 2, res.stderr[-2000:]
    assert message in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()


def test_the_shipped_tiny_carries_ranges_for_its_own_weights() -> None:
    """`export --student tiny` pins them (tests/test_shipped.py re-exports the bundle that way)."""
    from edge_pse.bundle import sha256_file
    from edge_pse.model.checkpoint import SHIPPED_DIR

    stored = ranges.load(ranges.beside(SHIPPED_DIR / "tiny.pt"), sha256_file(SHIPPED_DIR / "tiny.pt"))
    assert {"pte", "tflite", "onnx"} <= stored.formats.keys()
    scales = np.array([s for f in ("pte", "tflite") for s, _ in stored.formats[f].values()])
    assert np.all(scales > 0) and np.all(np.isfinite(scales))
    lowest, highest = np.array(list(stored.formats["onnx"].values())).T
    assert np.all(np.isfinite(lowest)) and np.all(lowest < highest)
