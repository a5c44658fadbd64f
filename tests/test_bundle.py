"""The bundle contract as the runtime sees it: a verified load, refusal of tampered or malformed bundles, and
backends that open it without torch."""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edge_pse.bundle import Bundle
from edge_pse.errors import EdgePseError

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")


def random_embedding(rng: np.random.Generator):
    def embed(_wave: np.ndarray) -> np.ndarray:
        v = rng.random(256).astype(np.float32)  # d-vectors are non-negative and unit length
        return v / np.linalg.norm(v)

    return embed


@pytest.fixture(scope="module")
def onnx_bundle(tmp_path_factory) -> Path:
    """A real fp32 ONNX bundle of the tiny preset with random weights (seconds to build)."""
    from edge_pse.exporters.pipeline import ExportOptions, export_bundle
    from edge_pse.model.config import get_preset
    from edge_pse.model.e3net import E3Net
    from edge_pse.quant.calibration import CalibrationSet, synthetic_clips

    torch.manual_seed(0)
    clips = synthetic_clips(2, 2, 1.0, 0, random_embedding(np.random.default_rng(0)))
    calib = CalibrationSet([c for c in clips if not c.heldout], [c for c in clips if c.heldout], "test")
    out = tmp_path_factory.mktemp("bundle") / "tiny-fp32"
    opts = ExportOptions(mode="fp32", formats=("onnx",), latency_hops=20)
    export_bundle(E3Net(get_preset("tiny")).eval(), "tiny", "random", calib, out, opts, log=lambda *_: None)
    return out


@pytest.fixture
def copy(onnx_bundle, tmp_path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(onnx_bundle, dst)
    return dst


def test_load_verifies_and_describes_the_files(onnx_bundle) -> None:
    b = Bundle.load(onnx_bundle)
    entry = b.file("onnx")
    assert entry.quantization == "fp32" and entry.bytes == (onnx_bundle / entry.path).stat().st_size
    assert [t.name for t in entry.io.inputs][:2] == ["hop", "spk"]
    assert b.manifest["accuracy"][entry.path]["snr_db"] > 60
    assert (onnx_bundle / "report.md").read_text().count("| onnx | fp32 |") == 1
    with pytest.raises(EdgePseError, match="no tflite"):
        b.file("tflite")


def test_tampered_model_file_is_refused(copy) -> None:
    path = copy / "model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(EdgePseError, match="sha256"):
        Bundle.load(copy)


def test_tampered_reference_weights_are_refused(copy) -> None:
    with open(copy / "weights.pt", "ab") as f:
        f.write(b"\0")
    with pytest.raises(EdgePseError, match="sha256"):
        Bundle.load(copy)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(schema="something-else"), "not an edge-pse bundle"),
        (lambda m: m.update(schema_version=99), "schema version"),
        (lambda m: m.pop("io"), "missing keys"),
        (lambda m: m["files"][0].update(format="gguf"), "unknown format"),
        (lambda m: m["files"][0].update(path="../model.onnx"), "inside the bundle"),
        (lambda m: m["files"][0].pop("sha256"), "malformed"),
    ],
)
def test_malformed_manifest_is_refused(copy, edit, message) -> None:
    m = json.loads((copy / "manifest.json").read_text())
    edit(m)
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EdgePseError, match=message):
        Bundle.load(copy)


def test_missing_folder_manifest_or_file_is_refused(copy, tmp_path) -> None:
    with pytest.raises(EdgePseError, match="not found"):
        Bundle.load(tmp_path / "nope")
    (copy / "model.onnx").unlink()
    with pytest.raises(EdgePseError, match="missing"):
        Bundle.load(copy)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(EdgePseError, match="cannot read"):
        Bundle.load(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(EdgePseError, match=r"no manifest\.json"):
        Bundle.load(copy)


def test_onnx_backend_runs_without_importing_torch(onnx_bundle) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from edge_pse.bundle import Bundle
        from edge_pse.runtime.backends import open_backend
        b = open_backend(Bundle.load({str(onnx_bundle)!r}), "onnx")
        b.set_speaker(np.ones(256, np.float32) / 16)
        y = b.process(np.zeros(160, np.float32))
        assert y.shape == (160,) and y.dtype == np.float32
        assert "torch" not in sys.modules, "torch was imported"
        print("ok")
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def test_torch_reference_backend_matches_the_onnx_file(onnx_bundle) -> None:
    from edge_pse.runtime.backends import open_backend

    b = Bundle.load(onnx_bundle)
    ref, onnx = open_backend(b, "torch"), open_backend(b, "onnx")
    rng = np.random.default_rng(0)
    spk = rng.random(256).astype(np.float32)
    for be in (ref, onnx):
        be.set_speaker(spk)
    for _ in range(50):
        x = (0.1 * rng.standard_normal(160)).astype(np.float32)
        np.testing.assert_allclose(onnx.process(x), ref.process(x), atol=1e-4)
    with pytest.raises(EdgePseError, match="256 finite"):
        ref.set_speaker(np.zeros(10, np.float32))
