"""The bundle contract as the runtime sees it: a verified load, refusal of tampered or malformed bundles, and
backends that open it without torch."""

import json
import os
import re
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
def random_tiny():
    from edge_pse.model.config import get_preset
    from edge_pse.model.e3net import E3Net

    torch.manual_seed(0)
    return E3Net(get_preset("tiny")).eval()


@pytest.fixture(scope="module")
def onnx_bundle(tmp_path_factory, random_tiny) -> Path:
    """A real fp32 ONNX bundle of the tiny preset with random weights (seconds to build)."""
    from edge_pse.exporters.pipeline import ExportOptions, export_bundle
    from edge_pse.quant.calibration import CalibrationSet, synthetic_clips

    clips = synthetic_clips(2, 2, 1.0, 0, random_embedding(np.random.default_rng(0)))
    calib = CalibrationSet([c for c in clips if not c.heldout], [c for c in clips if c.heldout], "test")
    out = tmp_path_factory.mktemp("bundle") / "tiny-fp32"
    opts = ExportOptions(mode="fp32", formats=("onnx",), latency_hops=20)
    export_bundle(random_tiny, "tiny", "random", calib, out, opts, log=lambda *_: None)
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
        (lambda m: m.update(schema_version=1), "schema 1 .* re-export"),
        (lambda m: m.pop("io"), "missing keys"),
        (lambda m: m["files"][0].update(format="gguf"), "unknown format"),
        (lambda m: m["files"][0].update(path="../model.onnx"), "inside the bundle"),
        (lambda m: m["files"][0].pop("sha256"), "malformed"),
        (lambda m: m["io"].pop("layout"), "io.layout must be"),
        (lambda m: m["io"]["layout"][1].update(offset=0), "starts at"),
        (lambda m: m["io"]["layout"][-1].update(size=1), "covers"),
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


def test_both_backends_stream_what_the_whole_clip_model_gives(onnx_bundle, random_tiny) -> None:
    """The reference is the exported model itself run on the whole clip with the raw embedding (its own lag of
    one hop): no projection, no streaming state, no backend code on that side."""
    from edge_pse.runtime.backends import open_backend

    b = Bundle.load(onnx_bundle)
    ref, onnx = open_backend(b, "torch"), open_backend(b, "onnx")
    rng = np.random.default_rng(0)
    spk = rng.random(256).astype(np.float32)
    wave = (0.1 * rng.standard_normal(50 * 160)).astype(np.float32)
    with torch.no_grad():
        whole = random_tiny(torch.from_numpy(wave)[None], torch.from_numpy(spk)[None])[0].numpy()
    for be in (ref, onnx):
        be.set_speaker(spk)
        streamed = np.concatenate([be.process(h).copy() for h in wave.reshape(-1, 160)])
        np.testing.assert_allclose(streamed, whole, atol=1e-4, err_msg=be.name)
    assert np.abs(whole).max() > 1e-3
    with pytest.raises(EdgePseError, match="256 finite"):
        ref.set_speaker(np.zeros(10, np.float32))


# --- the speaker projection (schema 3): the speaker's Linears applied once per speaker, verified like a model file


def test_the_model_file_takes_the_projected_speaker_and_the_runtime_projects_it(onnx_bundle) -> None:
    import onnxruntime as ort

    from edge_pse.runtime.backends import open_backend

    b = Bundle.load(onnx_bundle)
    weight, bias = b.speaker_projection()
    assert b.manifest["schema_version"] == 3 and weight.shape == (b.manifest["speaker"]["projection"]["dim"], 256)
    assert b.file("onnx").io.inputs[1].shape == (1, weight.shape[0])
    rng = np.random.default_rng(1)
    emb = rng.random(256).astype(np.float32)
    be = open_backend(b, "onnx")
    be.set_speaker(emb)
    # the file run by hand with weight @ embedding + bias gives what the backend gives from the embedding
    sess = ort.InferenceSession(str(onnx_bundle / "model.onnx"))
    names = [i.name for i in sess.get_inputs()]
    state = np.zeros(sess.get_inputs()[2].shape, np.float32)
    for _ in range(20):
        x = (0.1 * rng.standard_normal(160)).astype(np.float32)
        out, state = sess.run(None, dict(zip(names, [x[None], (weight @ emb + bias)[None], state], strict=True)))
        np.testing.assert_allclose(be.process(x), out[0], atol=1e-6)


def test_a_tampered_or_malformed_speaker_projection_is_refused(copy) -> None:
    from edge_pse.bundle import PROJECTION, sha256_file

    with open(copy / PROJECTION, "ab") as f:
        f.write(b"\0")
    with pytest.raises(EdgePseError, match=r"speaker_projection\.npz does not match its sha256"):
        Bundle.load(copy)

    def replace_with(write, message: str) -> None:
        """Rewrite the projection file and its manifest digest (as a hand edit would), then load."""
        write(copy / PROJECTION)
        _edit(copy, lambda m: m["speaker"]["projection"].update(sha256=sha256_file(copy / PROJECTION)), reseal=True)
        with pytest.raises(EdgePseError, match=message):
            Bundle.load(copy)

    w = np.zeros((480, 256), np.float32)
    replace_with(lambda p: np.savez(p, weight=w[:3], bias=np.zeros(3, np.float32)), r"float32 weight \[480, 256\]")
    replace_with(lambda p: np.savez(p, weight=w.astype(np.float64), bias=w[:, 0]), r"got float64 \[480, 256\]")
    replace_with(lambda p: np.savez(p, weight=w + np.nan, bias=w[:, 0]), "non-finite")
    replace_with(lambda p: np.savez(p, weight=w), "cannot read the speaker projection")
    replace_with(lambda p: p.write_bytes(b""), "cannot read the speaker projection")
    replace_with(lambda p: p.write_bytes(b"PK\x03\x04 not a zip"), "cannot read the speaker projection")

    def npy(p: Path) -> None:  # a plain .npy array, not an .npz archive
        with open(p, "wb") as f:
            np.save(f, w)

    replace_with(npy, "cannot read the speaker projection")

    def bomb(p: Path) -> None:
        """N6: 0.25 MB of deflated zeros that declare an 8192 x 8192 float32 weight (256 MiB once read; the
        attack measured in issue 31 declared 20000 x 20000: 1.6 GB of RSS for 18 s on the agent)."""
        import zipfile

        with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
            with z.open("weight.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (8192, 8192)})
                block = bytes(1 << 24)
                for _ in range(8192 * 8192 * 4 // len(block)):
                    f.write(block)
            z.writestr("bias.npy", b"")

    import tracemalloc

    tracemalloc.start()
    try:
        replace_with(bomb, r"float32 weight \[480, 256\] and bias \[480\], got float32 \[8192, 8192\] for weight")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB allocated while refusing it"  # 256 MiB read before
    _edit(copy, lambda m: m["speaker"]["projection"].update(dim=96), reseal=True)
    with pytest.raises(EdgePseError, match=r"projection\.dim 96 does not fit the config"):
        Bundle.load(copy)
    _edit(copy, lambda m: m["speaker"]["projection"].update(path="../p.npz"), reseal=True)
    with pytest.raises(EdgePseError, match=r"speaker\.projection needs a path inside the bundle"):
        Bundle.load(copy)


def test_int8_inputs_are_quantized_with_the_manifest_scale() -> None:
    """A schema-2 LiteRT file's speaker input is int8: the host writes round(x / scale) + zero point, clipped."""
    from edge_pse.bundle import TensorIO
    from edge_pse.runtime.backends.base import dequantize, quantize_into

    t = TensorIO("spk", "int8", (1, 4), scale=0.01, zero_point=3)
    dst = np.zeros((1, 4), np.int8)
    quantize_into(dst, np.array([[0.0, 0.05, -0.2, 9.0]], np.float32), t)
    assert dst.tolist() == [[3, 8, -17, 127]]
    np.testing.assert_allclose(dequantize(dst, t), [[0.0, 0.05, -0.2, 1.24]], atol=1e-6)


def test_a_schema_2_bundle_without_a_projection_still_runs_on_the_embedding() -> None:
    """The small shipped until 2026-12-07 (schema 2, kept as a fixture): its LiteRT file takes the embedding
    itself, as int8 with the manifest's scale, and tracks its float reference with the right speaker."""
    from edge_pse import demo
    from edge_pse.enroll.profile import load_profile
    from edge_pse.exporters.accuracy import snr_db
    from edge_pse.runtime.backends import open_backend

    b = Bundle.load(Path(__file__).resolve().parent / "fixtures" / "small-int8-schema2")
    assert b.manifest["schema_version"] == 2 and b.speaker_projection() is None
    assert b.file("tflite").io.inputs[1].quantized and b.file("tflite").io.inputs[1].shape == (1, 256)
    import soundfile as sf

    wave = sf.read(demo.path(demo.MIXTURE), dtype="float32")[0][: 200 * 160]
    emb = load_profile(demo.path(demo.SPEAKER)).embedding
    outs = {}
    for name in ("litert", "torch"):
        be = open_backend(b, name)
        be.set_speaker(emb)
        outs[name] = np.concatenate([be.process(h).copy() for h in wave.reshape(-1, 160)])
    assert snr_db(outs["torch"], outs["litert"]) >= b.tolerance["int8_min_snr_db"]


# --- every path the manifest names stays inside the bundle (issue 15, D7)


def _edit(bundle: Path, edit, reseal: bool = False) -> None:
    """Edit the manifest in place; `reseal` also recomputes its digest (as whoever edits it by hand can), so
    the schema's own checks are what refuses the edit."""
    from edge_pse.bundle import seal_manifest

    m = json.loads((bundle / "manifest.json").read_text())
    edit(m)
    if reseal:
        m = seal_manifest(m)
    (bundle / "manifest.json").write_text(json.dumps(m))


def test_reference_weights_outside_the_bundle_are_refused_and_say_nothing_about_the_host(copy, tmp_path) -> None:
    from edge_pse.bundle import sha256_file

    outside = tmp_path / "host-file"
    outside.write_text("not part of any bundle\n")
    rel = os.path.relpath(outside, copy)
    messages = []
    for path, digest in ((rel, sha256_file(outside)), ("../../../nonexistent-file", "0" * 64)):
        _edit(copy, lambda m, p=path, d=digest: m["reference"].update(path=p, sha256=d))
        with pytest.raises(EdgePseError, match="must stay inside the bundle") as err:
            Bundle.load(copy)
        messages.append(str(err.value).replace(path, "P"))
    assert messages[0] == messages[1]  # the same refusal whether the host file exists or not


def test_a_symlink_inside_the_bundle_cannot_lead_out_of_it(copy, tmp_path) -> None:
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(copy / "model.onnx", outside)
    (copy / "model.onnx").symlink_to(outside)  # same bytes, same sha256, but not in the bundle
    with pytest.raises(EdgePseError, match="leads outside the bundle folder"):
        Bundle.load(copy)


# --- manifests and profiles are validated against a schema; the manifest's numbers are covered by a digest (D10)


def _tensor(m: dict, i: int = 0) -> dict:
    return m["files"][0]["io"]["inputs"][i]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(hop="160"), "hop '160' must be a positive integer"),
        (lambda m: m.update(hop=-160), "hop -160 must be a positive integer"),
        (lambda m: m.update(hop=80), "config.hop 160 disagrees with hop 80"),
        (lambda m: m.update(sample_rate=1), "sample_rate 1 must be one of"),
        (lambda m: m.update(sample_rate=8000), "config.sample_rate 16000 disagrees"),
        (lambda m: m.update(speaker="resemblyzer"), "'speaker' must be an object with an integer dim"),
        (lambda m: m["speaker"].update(dim="256"), "'speaker' must be an object with an integer dim"),
        (lambda m: m["io"]["states"][0].update(shape=[1, -160]), "must be 1-4 positive integer dimensions"),
        (lambda m: _tensor(m).update(shape=[1, 10**12]), "must be 1-4 positive integer dimensions"),
        (lambda m: _tensor(m).update(dtype="object"), "dtype 'object' is not one of"),
        (lambda m: _tensor(m).update(dtype="int8", scale=-0.01, zero_point=0), "needs a finite positive scale"),
        (lambda m: _tensor(m).update(dtype="int8", scale=0.01, zero_point=300), "zero_point 300 does not fit int8"),
        (lambda m: _tensor(m).update(scale=0.01), "a float32 tensor has no scale or zero point"),
        (lambda m: m["files"][0]["io"]["inputs"].pop(), "expected 3 and 2"),
        (lambda m: m.update(tolerance={"fp32_min_snr_db": "high"}), "'tolerance' must map names to finite numbers"),
    ],
)
def test_bad_numbers_in_a_manifest_are_refused_with_a_clear_message(copy, edit, message) -> None:
    _edit(copy, edit, reseal=True)
    with pytest.raises(EdgePseError, match=re.escape(message)):
        Bundle.load(copy)


def test_deeply_nested_or_non_finite_json_is_refused_not_a_traceback(copy) -> None:
    (copy / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(EdgePseError, match="cannot read"):
        Bundle.load(copy)
    (copy / "manifest.json").write_text('{"schema": "edge-pse-bundle", "hop": NaN}')
    with pytest.raises(EdgePseError, match="cannot read"):
        Bundle.load(copy)


@pytest.fixture
def shipped(tmp_path) -> Path:
    src = Path(__file__).resolve().parent.parent / "edge_pse" / "bundles" / "tiny-int8"
    return Path(shutil.copytree(src, tmp_path / "tiny-int8"))


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["speaker"]["projection"].update(bytes=1),
        lambda m: (m.update(sample_rate=8000), m["config"].update(sample_rate=8000)),
        lambda m: m["tolerance"].update(int8_min_snr_db=-100.0),
    ],
    ids=["projection-bytes", "sample-rate", "tolerance"],
)
def test_a_hand_edited_number_in_a_shipped_manifest_is_refused(shipped, edit) -> None:
    """The numbers beside the sha256 list (an int8 scale, the rate) would run with exit 0 and wrong audio."""
    Bundle.load(shipped)
    _edit(shipped, edit)
    with pytest.raises(EdgePseError, match="does not match its manifest_sha256"):
        Bundle.load(shipped)


def test_shipped_bundles_are_sealed_and_an_unsealed_manifest_is_refused(onnx_bundle, tmp_path) -> None:
    """N13: the digest is mandatory. Deleting it used to let an edited rate run with exit 0."""
    from edge_pse.bundle import manifest_digest, seal_manifest

    root = Path(__file__).resolve().parent.parent / "edge_pse" / "bundles"
    for name in ("tiny-int8", "small-int8"):
        m = Bundle.load(root / name).manifest
        assert m["manifest_sha256"] == manifest_digest(m)
    m = json.loads((onnx_bundle / "manifest.json").read_text())
    assert m["manifest_sha256"] == manifest_digest(m)  # the exporter seals what it writes
    unsealed = tmp_path / "unsealed"
    shutil.copytree(onnx_bundle, unsealed)
    m.pop("manifest_sha256")
    m.update(sample_rate=8000)
    m["config"].update(sample_rate=8000)
    (unsealed / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EdgePseError, match=r"has no manifest_sha256 .* re-export the bundle"):
        Bundle.load(unsealed)
    res = subprocess.run(
        [sys.executable, "-m", "edge_pse", "run", "--model", str(unsealed), "--output", str(tmp_path / "o.wav")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert res.returncode == 2 and "has no manifest_sha256" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "o.wav").exists()
    assert seal_manifest(m)["manifest_sha256"].startswith("sha256:")


def test_a_hostile_speaker_profile_is_refused_not_a_traceback(tmp_path) -> None:
    from edge_pse import demo
    from edge_pse.enroll.profile import _checksum, load_profile

    bad = tmp_path / "bad.spk"
    bad.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(EdgePseError, match="nested too deeply"):
        load_profile(bad)
    doc = json.loads(Path(demo.path(demo.SPEAKER)).read_text())
    for field, value in (("sample_rate", 1e400), ("sample_rate", -16000)):
        d = {**doc, field: value}
        d["checksum"] = _checksum(d)
        bad.write_text(json.dumps(d))
        with pytest.raises(EdgePseError, match="not a valid speaker profile"):
            load_profile(bad)


def test_a_resealed_manifest_over_another_models_files_is_refused_when_a_backend_opens_it(shipped) -> None:
    """N13: the digest proves integrity, not authenticity: a manifest resealed by hand over the small's model files
    (their sha256 and sizes put in) loads, but every runtime reads the file's own shapes and refuses it."""
    from edge_pse.bundle import seal_manifest, sha256_file
    from edge_pse.runtime.backends import open_backend

    src = Path(__file__).resolve().parent.parent / "edge_pse" / "bundles" / "small-int8"
    m = json.loads((shipped / "manifest.json").read_text())
    for f in m["files"]:
        shutil.copy(src / f["path"], shipped / f["path"])
        f.update(sha256=sha256_file(shipped / f["path"]), bytes=(shipped / f["path"]).stat().st_size)
    (shipped / "manifest.json").write_text(json.dumps(seal_manifest(m)))
    bundle = Bundle.load(shipped)
    for backend in ("onnx", "litert", "executorch"):
        with pytest.raises(EdgePseError, match=r"the file's own inputs .* are not the manifest's") as err:
            open_backend(bundle, backend)
        assert "(1, 704)" in str(err.value), backend  # the manifest's state, beside the file's own


def test_a_resealed_manifest_whose_state_disagrees_with_its_config_is_refused(shipped) -> None:
    """A consistent lie in io (a larger state everywhere) with the digest recomputed: the config implies another."""
    from edge_pse.bundle import seal_manifest

    m = json.loads((shipped / "manifest.json").read_text())
    m["io"]["states"][0]["shape"][-1] += 16
    m["io"]["layout"][-1]["size"] += 16
    for f in m["files"]:
        f["io"]["inputs"][2]["shape"][-1] += 16
        f["io"]["outputs"][1]["shape"][-1] += 16
    (shipped / "manifest.json").write_text(json.dumps(seal_manifest(m)))
    with pytest.raises(EdgePseError, match="is not the state the config implies"):
        Bundle.load(shipped)


def test_a_bundle_without_its_float_weights_runs_its_model_files(shipped) -> None:
    """The device wheel leaves the torch reference weights out: the bundle loads and LiteRT runs it; only the
    torch backend refuses, saying why. A missing model file is still refused (test above)."""
    from edge_pse.runtime.backends import open_backend

    (shipped / "weights.pt").unlink()
    bundle = Bundle.load(shipped)
    assert bundle.reference_weights() is None
    be = open_backend(bundle, "litert")
    be.set_speaker(np.full(256, 1 / 16, np.float32))
    assert be.process(np.zeros(160, np.float32)).shape == (160,)
    with pytest.raises(EdgePseError, match="carries no float weights"):
        open_backend(bundle, "torch")
    (shipped / "weights.pt").symlink_to("/etc/hostname")  # a stand-in that leads out is not "absent"
    with pytest.raises(EdgePseError, match="leads outside"):
        Bundle.load(shipped)
