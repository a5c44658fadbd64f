"""A small real bundle for the runtime tests: the tiny E3Net step with random weights, exported to ONNX fp32
by the project's exporter, with a manifest the loader verifies. Also checks that the runtime loop over it
reproduces the PyTorch step sample for sample (after the one-hop latency compensation)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge_pse import demo

ENCODER = "resemblyzer-dvector"


def make_bundle(out: Path, seed: int = 0) -> Path:
    """Write a verified ONNX fp32 bundle of a random-weight tiny step to `out` (needs torch, the test host)."""
    import torch

    from edge_pse.bundle import SCHEMA, SCHEMA_VERSION, FileEntry, sha256_file
    from edge_pse.exporters.common import float_file_io
    from edge_pse.exporters.onnx import export_float
    from edge_pse.model.config import get_preset, state_spec
    from edge_pse.model.e3net import E3Net
    from edge_pse.model.step import E3NetStep

    torch.manual_seed(seed)
    cfg = get_preset("tiny")
    step = E3NetStep(E3Net(cfg).eval()).eval()
    out.mkdir(parents=True, exist_ok=True)
    example = (torch.zeros(1, cfg.hop), torch.zeros(1, cfg.spk_dim), *step.initial_state(1))
    export_float(step, example, out / "model.onnx")
    torch.save(step.state_dict(), out / "step.pt")  # for the reference comparison below, not in the manifest
    entry = FileEntry(
        "model.onnx",
        "onnx",
        "fp32",
        sha256_file(out / "model.onnx"),
        (out / "model.onnx").stat().st_size,
        float_file_io(step),
    )
    manifest = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "preset": "tiny",
        "config": cfg.to_dict(),
        "sample_rate": cfg.sample_rate,
        "hop": cfg.hop,
        "speaker": {"dim": cfg.spk_dim, "encoder": ENCODER, "encoder_version": "0.1.4"},
        "io": state_spec(cfg).to_dict(),
        "files": [entry.to_dict()],
        "tolerance": {"fp32_min_snr_db": 60.0},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def make_speaker(path: Path, encoder: str = ENCODER, seed: int = 1) -> Path:
    from edge_pse.enroll.profile import SpeakerProfile, save_profile

    emb = np.random.default_rng(seed).standard_normal(256).astype(np.float32)
    return save_profile(SpeakerProfile(emb / np.linalg.norm(emb), encoder, "0.1.4"), path)


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "tiny-onnx")


def test_runner_reproduces_the_torch_step_aligned_and_same_length(bundle_dir: Path, tmp_path: Path) -> None:
    import torch

    from edge_pse.bundle import Bundle
    from edge_pse.model.config import get_preset
    from edge_pse.model.e3net import E3Net
    from edge_pse.model.step import E3NetStep, run_step
    from edge_pse.runtime.backends import open_backend
    from edge_pse.runtime.runner import run_array

    pcm, _ = sf.read(demo.path(demo.MIXTURE), dtype="int16")
    pcm = pcm[: 3 * 16000 + 37]  # not a whole number of hops
    spk = np.random.default_rng(1).standard_normal(256).astype(np.float32)
    spk /= np.linalg.norm(spk)
    backend = open_backend(Bundle.load(bundle_dir), "onnx")
    backend.set_speaker(spk)
    backend.reset()
    out, stats = run_array(backend, pcm, hop=160, sample_rate=16000)
    assert len(out) == len(pcm) and stats["output_samples"] == len(pcm)

    step = E3NetStep(E3Net(get_preset("tiny")))
    step.load_state_dict(torch.load(bundle_dir / "step.pt", weights_only=True))
    padded = np.zeros(-(-len(pcm) // 160) * 160 + 160, np.float32)
    padded[: len(pcm)] = pcm / 32768.0
    ref = run_step(step.eval(), torch.from_numpy(padded)[None], torch.from_numpy(spk)[None])[0].numpy()
    expected = np.clip(np.rint(ref[160 : 160 + len(pcm)] * 32768), -32768, 32767)  # output n = input n
    assert np.max(np.abs(out - expected)) <= 1
    assert np.count_nonzero(out != expected) < 0.001 * len(pcm)
    assert np.any(out != 0)


@pytest.mark.parametrize("backend", ["onnx", "litert", "executorch", "torch"])
def test_streams_on_one_loaded_model_keep_their_own_speaker_and_state(backend: str) -> None:
    """The device agent serves every connection from one loaded model: two streams with different speakers and
    audio, interleaved hop by hop (one reset half-way), give exactly what each gives alone on its own backend."""
    from edge_pse.bundle import Bundle
    from edge_pse.cli.run import DEFAULT_BUNDLE  # the shipped tiny: int8 .tflite, .pte, .onnx and float weights
    from edge_pse.runtime.backends import open_backend

    bundle = Bundle.load(DEFAULT_BUNDLE)
    rng = np.random.default_rng(3)
    audio = [sf.read(demo.path(demo.MIXTURE), dtype="float32")[0][:4000], 0.05 * rng.standard_normal(4000)]
    spks = [rng.random(256).astype(np.float32) for _ in range(2)]
    hops = [a.astype(np.float32).reshape(-1, 160) for a in audio]

    def alone(k: int) -> np.ndarray:
        be = open_backend(bundle, backend)
        be.set_speaker(spks[k])
        out = []
        for i, h in enumerate(hops[k]):
            if k == 1 and i == 12:
                be.reset()
            out.append(be.process(h).copy())
        return np.concatenate(out)

    shared = open_backend(bundle, backend)
    streams = [shared.open_stream() for _ in range(2)]
    for s, spk in zip(streams, spks, strict=True):
        s.set_speaker(spk)
    outs: list[list[np.ndarray]] = [[], []]
    for i in range(len(hops[0])):
        for k in (1, 0):
            if k == 1 and i == 12:
                streams[1].reset()
            outs[k].append(streams[k].process(hops[k][i]))
    for k in range(2):
        np.testing.assert_array_equal(np.concatenate(outs[k]), alone(k))
    assert not np.array_equal(np.concatenate(outs[0]), np.concatenate(outs[1]))
