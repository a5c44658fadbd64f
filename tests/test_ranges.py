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


def test_the_shipped_tiny_bundle_was_quantized_at_its_stored_ranges() -> None:
    """`export --student tiny` pins them: the shipped bundle keeps the same table, and its ONNX file's activation
    scales are the ones the stored [lowest, highest] give in closed form (uint8: (max(hi, 0) - min(lo, 0)) / 255)."""
    import onnx

    from edge_pse.bundle import sha256_file
    from edge_pse.model.checkpoint import SHIPPED_DIR

    stored = ranges.load(ranges.beside(SHIPPED_DIR / "tiny.pt"), sha256_file(SHIPPED_DIR / "tiny.pt"))
    assert {"pte", "tflite", "onnx"} <= stored.formats.keys()
    bundle_dir = REPO / "edge_pse" / "bundles" / "tiny-int8"
    assert ranges.load(bundle_dir / ranges.FILENAME).formats == stored.formats
    graph = onnx.load(str(bundle_dir / "model.onnx")).graph
    arrays = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer if i.name.endswith("_scale")}
    found = [(float(arrays[f"{n}_scale"]), lo, hi) for n, (lo, hi) in stored.formats["onnx"].items()
             if f"{n}_scale" in arrays]  # fmt: skip
    assert len(found) >= len(stored.formats["onnx"]) // 2
    for scale, lo, hi in found:
        assert scale == pytest.approx((max(hi, 0.0) - min(lo, 0.0)) / 255.0, rel=1e-5)


def test_an_onnx_export_writes_the_pinned_ranges_into_the_int8_file(tiny, calib, tmp_path) -> None:  # noqa: F811
    """Fast guard of the pinning path: stored ranges twice as wide as what the clips show must be the scales in the
    file (uint8 activations: scale = (max(hi, 0) - min(lo, 0)) / 255, computed here from the table, not by the
    exporter), and the bundle keeps the stored table, not a fresh measurement."""
    import onnx

    first = export(tiny, calib, tmp_path / "a", "onnx")
    measured = ranges.load(tmp_path / "a" / ranges.FILENAME)
    wide = {name: [2.0 * lo, 2.0 * hi] for name, (lo, hi) in measured.formats["onnx"].items()}
    pinned = ranges.ActivationRanges(measured.checkpoint_sha256, "wide", measured.frame_level_dbfs, {"onnx": wide})
    second = export(tiny, calib, tmp_path / "b", "onnx", ranges=pinned)
    assert ranges.load(tmp_path / "b" / ranges.FILENAME).formats["onnx"] == wide
    assert second.file("onnx").sha256 != first.file("onnx").sha256

    graph = onnx.load(str(tmp_path / "b" / second.file("onnx").path)).graph
    arrays = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer if i.name.endswith("_scale")}
    scales = {name: float(a) for name, a in arrays.items() if a.size == 1}  # per-channel weight scales aside
    checked = 0
    for name, (lo, hi) in wide.items():
        if f"{name}_scale" in scales:
            expected = (max(hi, 0.0) - min(lo, 0.0)) / 255.0
            assert scales[f"{name}_scale"] == pytest.approx(expected, rel=1e-5), name
            checked += 1
    assert checked >= len(wide) // 2, f"only {checked} of {len(wide)} pinned tensors found in the file"
