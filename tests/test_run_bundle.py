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


def make_bundle(out: Path, seed: int = 0, hop: int | None = None) -> Path:
    """Write a verified ONNX fp32 bundle of a random-weight tiny step to `out` (needs torch, the test host);
    `hop`: another hop than the preset's 10 ms (the window stays two hops)."""
    import torch

    from edge_pse.bundle import SCHEMA, SCHEMA_VERSION, FileEntry, seal_manifest, sha256_file
    from edge_pse.exporters.common import float_file_io
    from edge_pse.exporters.onnx import export_float
    from edge_pse.model.config import get_preset, state_spec
    from edge_pse.model.e3net import E3Net
    from edge_pse.model.step import E3NetStep

    torch.manual_seed(seed)
    cfg = get_preset("tiny")
    if hop is not None:
        import dataclasses

        cfg = dataclasses.replace(cfg, hop=hop, window=2 * hop)
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
    (out / "manifest.json").write_text(json.dumps(seal_manifest(manifest), indent=2))
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
    out, stats = run_array(backend, pcm, hop=160, sample_rate=16000, lag_hops=1)
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


def float_reference(hops: np.ndarray, spks: list[np.ndarray], switch: int | None, reset: int | None) -> np.ndarray:
    """The shipped tiny's float step (torch, raw embedding, no projection) run in a plain loop: speaker spks[0],
    spks[1] from hop `switch` on, state zeroed at hop `reset`. No runtime or backend code on this side."""
    import torch

    from edge_pse.model.checkpoint import load_model
    from edge_pse.model.step import E3NetStep

    step = E3NetStep(load_model("tiny")[0]).eval()
    state, out = step.initial_state(1), []
    with torch.no_grad():
        for i, h in enumerate(hops):
            if i == reset:
                state = step.initial_state(1)
            spk = spks[1 if switch is not None and i >= switch else 0]
            y, *state = step(torch.from_numpy(h)[None], torch.from_numpy(spk)[None], *state)
            out.append(y[0].numpy())
    return np.concatenate(out)


def snr_db(x: np.ndarray, ref: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref**2) / (np.sum((x - ref) ** 2) + 1e-20)))


@pytest.mark.parametrize("backend", ["onnx", "litert", "executorch", "torch"])
def test_streams_on_one_loaded_model_keep_their_own_speaker_and_state(backend: str) -> None:
    """The device agent serves every connection from one loaded model: two streams with different speakers and
    audio, interleaved hop by hop (one reset half-way, one speaker change on the running other), give exactly
    what each gives alone on its own backend, and what the float step gives in a plain loop (int8: within the
    export's tolerance; the torch backend: to float precision)."""
    from edge_pse.bundle import Bundle
    from edge_pse.cli.run import DEFAULT_BUNDLE  # the shipped tiny: int8 .tflite, .pte, .onnx and float weights
    from edge_pse.runtime.backends import open_backend

    bundle = Bundle.load(DEFAULT_BUNDLE)
    rng = np.random.default_rng(3)
    audio = [sf.read(demo.path(demo.MIXTURE), dtype="float32")[0][:8000], 0.05 * rng.standard_normal(8000)]
    spk_a, spk_b, spk_c = (v / np.linalg.norm(v) for v in rng.random((3, 256)).astype(np.float32))
    hops = [a.astype(np.float32).reshape(-1, 160) for a in audio]
    SWITCH, RESET = 20, 12  # stream 0 changes speaker at hop 20; stream 1 is reset at hop 12

    def alone(k: int) -> np.ndarray:
        be = open_backend(bundle, backend)
        be.set_speaker(spk_a if k == 0 else spk_c)
        out = []
        for i, h in enumerate(hops[k]):
            if k == 0 and i == SWITCH:
                be.set_speaker(spk_b)
            if k == 1 and i == RESET:
                be.reset()
            out.append(be.process(h).copy())
        return np.concatenate(out)

    shared = open_backend(bundle, backend)
    streams = [shared.open_stream() for _ in range(2)]
    streams[0].set_speaker(spk_a)
    streams[1].set_speaker(spk_c)
    outs: list[list[np.ndarray]] = [[], []]
    # interleaved hop by hop, except that stream 0 runs 5 hops in a row after its speaker changes while it holds
    # the model (the change must apply at once, not at the next switch)
    n = len(hops[0])
    order = [(k, i) for i in range(SWITCH) for k in (1, 0)] + [(0, i) for i in range(SWITCH, SWITCH + 5)]
    order += [(1, i) for i in range(SWITCH, SWITCH + 5)] + [(k, i) for i in range(SWITCH + 5, n) for k in (1, 0)]
    for k, i in order:
        if k == 1 and i == RESET:
            streams[1].reset()
        if k == 0 and i == SWITCH:
            streams[0].set_speaker(spk_b)
        outs[k].append(streams[k].process(hops[k][i]))
    got = [np.concatenate(o) for o in outs]
    for k in range(2):
        np.testing.assert_array_equal(got[k], alone(k))
    refs = [float_reference(hops[0], [spk_a, spk_b], SWITCH, None), float_reference(hops[1], [spk_c], None, RESET)]
    unchanged = float_reference(hops[0], [spk_a], None, None)  # the speaker change ignored
    floor = 40.0 if backend == "torch" else 8.0  # int8 against float: 11-19 dB measured on these clips
    for k in range(2):
        assert snr_db(got[k], refs[k]) > floor, (k, snr_db(got[k], refs[k]))
    after = slice(SWITCH * 160, None)
    assert snr_db(got[0][after], refs[0][after]) > snr_db(got[0][after], unchanged[after]) + 2.0  # 3.8 measured
