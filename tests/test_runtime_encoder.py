"""The exported (torch-free) speaker encoder gives the torch encoder's d-vectors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edge_pse.enroll import dvector
from edge_pse.enroll.export_encoder import META_NAME, ONNX_NAME, export
from edge_pse.enroll.runtime_encoder import RuntimeEncoder
from edge_pse.errors import EdgePseError
from tests.speechlike import DATA, SR, real_speech, speech_files, speech_like

# exported vs torch encoder: measured >= 0.99999 here; two DIFFERENT synthetic voices already reach 0.993, so a
# looser bound could not tell a broken export from a working one
SAME = 0.9999


@pytest.fixture(scope="session")
def encoder_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("speaker_encoder")
    export(out)  # also checks every partial against torch (cosine > 0.9999)
    return out


def test_onnx_matches_torch_on_a_synthetic_voice(encoder_dir: Path) -> None:
    enc = RuntimeEncoder(encoder_dir, backend="onnx")
    for seed, f0 in [(0, 110.0), (1, 210.0)]:
        wave = speech_like(5.0, seed=seed, f0=f0)
        assert float(enc.embed(wave) @ dvector.embed(wave)) >= SAME


def test_onnx_matches_torch_on_real_speech(encoder_dir: Path) -> None:
    if len(speech_files()) < 4:
        pytest.skip(f"needs real speech under {DATA}")
    enc = RuntimeEncoder(encoder_dir, backend="onnx")
    for i in range(4):
        wave = real_speech(i, seconds=None)
        a, b = enc.embed(wave), dvector.embed(wave)
        assert a.shape == (256,) and np.linalg.norm(a) == pytest.approx(1.0, abs=1e-5)
        assert float(a @ b) >= SAME


def test_preprocessing_matches_resemblyzer() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from resemblyzer import audio

    from edge_pse.enroll.preprocess import preprocess

    speech = real_speech(0) if speech_files() else speech_like(6.0)
    wave = np.concatenate([speech[: 2 * SR], np.zeros(SR, np.float32), speech[2 * SR :]])  # a long pause to trim
    ours = preprocess(wave)
    theirs = audio.trim_long_silences(audio.normalize_volume(wave, -30, increase_only=True))
    assert ours.size == theirs.size < wave.size
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_runtime_encoder_imports_and_runs_without_torch(encoder_dir: Path, tmp_path: Path) -> None:
    wave = speech_like(4.0, seed=3)
    np.save(tmp_path / "wave.npy", wave)
    script = textwrap.dedent(f"""
        import sys
        for blocked in ("torch", "resemblyzer", "librosa", "scipy"):
            sys.modules[blocked] = None  # any import of these now fails
        import numpy as np
        from edge_pse.enroll.encoder import load_encoder
        enc = load_encoder("onnx", {str(encoder_dir)!r})
        np.save({str(tmp_path / "emb.npy")!r}, enc.embed(np.load({str(tmp_path / "wave.npy")!r})))
        print(enc.name, enc.version, enc.backend)
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [dvector.ENCODER_NAME, dvector.encoder_version(), "onnx"]
    assert float(np.load(tmp_path / "emb.npy") @ dvector.embed(wave)) >= SAME


def test_enroll_cli_with_the_exported_encoder_matches_torch(encoder_dir: Path, tmp_path: Path) -> None:
    import soundfile as sf

    from edge_pse.cli import main
    from edge_pse.enroll.profile import load_profile

    sf.write(tmp_path / "me.wav", speech_like(4.0, seed=5), SR)
    args = ["enroll", "--audio", str(tmp_path / "me.wav")]
    assert main([*args, "--output", str(tmp_path / "onnx.spk"), "--encoder-dir", str(encoder_dir)]) == 0
    assert main([*args, "--output", str(tmp_path / "torch.spk"), "--encoder", "torch"]) == 0
    onnx, torch_ = load_profile(tmp_path / "onnx.spk"), load_profile(tmp_path / "torch.spk")
    assert (onnx.encoder_backend, torch_.encoder_backend) == ("onnx", "torch")
    assert onnx.encoder == torch_.encoder and float(onnx.embedding @ torch_.embedding) >= SAME


def test_tampered_or_missing_encoder_files_are_refused(encoder_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "enc"
    shutil.copytree(encoder_dir, bad)
    model = bad / ONNX_NAME
    data = bytearray(model.read_bytes())
    data[-100] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(EdgePseError, match="does not match its sha256"):
        RuntimeEncoder(bad, backend="onnx")
    with pytest.raises(EdgePseError, match="has no litert speaker encoder"):
        RuntimeEncoder(encoder_dir, backend="litert")
    with pytest.raises(EdgePseError, match="no exported speaker encoder"):
        RuntimeEncoder(tmp_path)
    meta = json.loads((encoder_dir / META_NAME).read_text())
    assert meta["encoder"] == dvector.ENCODER_NAME and meta["embedding_dim"] == 256


@pytest.mark.slow
def test_litert_export_matches_torch(tmp_path: Path) -> None:
    export(tmp_path, litert=True)  # ~2.5 min here; the export checks the .tflite against torch
    enc = RuntimeEncoder(tmp_path, backend="litert")
    wave = real_speech(0, seconds=None) if speech_files() else speech_like(6.0)
    assert float(enc.embed(wave) @ dvector.embed(wave)) >= SAME


def test_the_packaged_numpy_encoder_matches_torch() -> None:
    """What a device install enrolls with: the weights shipped in the package, run by numpy."""
    from edge_pse.enroll.runtime_encoder import PACKAGED

    enc = RuntimeEncoder(PACKAGED)
    assert enc.backend == "numpy" and RuntimeEncoder.backends_in(PACKAGED) == ["numpy"]
    for seed, f0 in [(0, 110.0), (1, 210.0)]:
        wave = speech_like(5.0, seed=seed, f0=f0)
        assert float(enc.embed(wave) @ dvector.embed(wave)) >= SAME
    for i in range(min(4, len(speech_files()))):  # real speech when the data is beside the checkout
        wave = real_speech(i, seconds=None)
        assert float(enc.embed(wave) @ dvector.embed(wave)) >= SAME


def test_a_tampered_packaged_weight_file_is_refused(tmp_path: Path) -> None:
    from edge_pse.enroll.runtime_encoder import PACKAGED

    shutil.copytree(PACKAGED, tmp_path / "enc")
    weights = tmp_path / "enc" / "speaker_encoder_weights.npz"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(EdgePseError, match="does not match its sha256"):
        RuntimeEncoder(tmp_path / "enc")
