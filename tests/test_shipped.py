"""The shipped checkpoints and bundles: present, loadable, consistent with each other and with the export."""

import json
from pathlib import Path

import numpy as np
import pytest

from edge_pse.bundle import Bundle, sha256_file
from edge_pse.model.checkpoint import SHIPPED_DIR, load_model
from edge_pse.model.config import E3NetConfig

BUNDLES = Path(__file__).resolve().parent.parent / "edge_pse" / "bundles"
SHIPPED = sorted(p.stem for p in SHIPPED_DIR.glob("*.pt"))


def test_the_default_student_is_what_run_uses_without_a_model(tmp_path: Path) -> None:
    """`edge-pse run` with no --model writes exactly what --model tiny-int8 writes, and not what small-int8 does."""
    import soundfile as sf

    from edge_pse import demo
    from tests.test_run import edge_pse

    wave, rate = sf.read(demo.path(demo.MIXTURE), dtype="float32")
    clip = tmp_path / "clip.wav"
    sf.write(clip, wave[: 2 * rate], rate, subtype="PCM_16")
    outputs = {}
    for name, extra in (("default", []), ("tiny", ["--model", BUNDLES / "tiny-int8"]),
                        ("small", ["--model", BUNDLES / "small-int8"])):  # fmt: skip
        out = tmp_path / f"{name}.wav"
        res = edge_pse("run", "--input", clip, "--output", out, "--threads", "1", *extra)
        assert res.returncode == 0, res.stderr
        outputs[name] = sf.read(out, dtype="int16")[0]
    assert "tiny" in SHIPPED and np.array_equal(outputs["default"], outputs["tiny"])
    assert not np.array_equal(outputs["default"], outputs["small"])


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_loads_and_has_a_model_card(name: str) -> None:
    model, payload = load_model(name)
    assert payload["preset"] == name and model.cfg == E3NetConfig.from_dict(payload["config"])
    card = (SHIPPED_DIR / f"{name}.md").read_text()
    assert "Command:" in card and "Measured quality" in card


@pytest.mark.parametrize("bundle_dir", sorted(BUNDLES.glob("*-int8")), ids=lambda p: p.name)
def test_shipped_bundle_was_made_from_the_shipped_checkpoint(bundle_dir: Path) -> None:
    bundle = Bundle.load(bundle_dir)  # verifies every file's sha256
    source = bundle.manifest["source"]
    ckpt = SHIPPED_DIR / Path(source["checkpoint"]).name
    assert source["checkpoint_sha256"] == sha256_file(ckpt), "bundle is stale: re-export it from the checkpoint"
    formats = {f.format for f in bundle.files}
    assert "tflite" in formats and formats <= {"pte", "tflite", "onnx"}  # LiteRT is the device default
    assert all(f.quantization == "int8-ptq" for f in bundle.files)
    for name, acc in bundle.manifest["accuracy"].items():
        if name != "float" and isinstance(acc, dict) and "passed" in acc:
            assert acc["passed"], name


@pytest.mark.slow
def test_reexport_reproduces_the_shipped_tiny_bundle(tmp_path: Path) -> None:
    """Export the shipped checkpoint again (same command as the committed bundle) and compare outputs."""
    from tests.test_cli import edge_pse

    shipped = Bundle.load(BUNDLES / "tiny-int8")
    # LiteRT is the default runtime; one format keeps the test short (the others share every stage but the last)
    res = edge_pse(
        "export", "--student", "tiny", "--mode", "ptq", "--formats", "tflite", "--output", str(tmp_path / "b")
    )
    assert res.returncode == 0, res.stderr[-2000:]
    fresh = Bundle.load(tmp_path / "b")
    assert fresh.manifest["source"]["checkpoint_sha256"] == shipped.manifest["source"]["checkpoint_sha256"]
    assert fresh.manifest["source"]["activation_ranges"] == shipped.manifest["source"]["activation_ranges"] is not None
    # the built-in demo (speech and its speaker): on white noise and a random embedding, out of the calibrated
    # ranges, int8 output is noise and two faithful exports of the same checkpoint need not agree
    from edge_pse import demo
    from edge_pse.enroll.profile import load_profile
    from edge_pse.runtime.audio_io import read_clip
    from edge_pse.runtime.backends import open_backend

    spk = load_profile(demo.path(demo.SPEAKER)).embedding.astype(np.float32)
    mix = read_clip(demo.path(demo.MIXTURE), 16_000).pcm.astype(np.float32) / 32768
    hops = mix[: mix.size // 160 * 160].reshape(-1, 160)
    for fmt in ("litert",):
        outs = []
        for b in (shipped, fresh):
            be = open_backend(b, fmt, threads=1)
            be.set_speaker(spk)
            be.reset()
            outs.append(np.concatenate([be.process(h).copy() for h in hops]))
        snr = 10 * np.log10(np.sum(outs[0] ** 2) / max(np.sum((outs[0] - outs[1]) ** 2), 1e-20))
        # The activation scales are pinned from edge_pse/checkpoints/tiny.ranges.json (measured on real speech),
        # so a re-export is byte-identical here (same sha256, 2026-12-06); on another machine the weights' int8
        # rounding could still differ in the last bits. What must hold on any machine: the two int8 files are
        # closer to each other than the shipped one is to the float model (its export-time SNR on the synthetic
        # clips, 21.2 dB for tiny's .tflite). Without the pinned ranges the synthetic clips' own scales give a
        # different model (about 12 dB from the float one, docs/bundle.md): this fails.
        own = shipped.manifest["accuracy"][shipped.file("tflite").path]["snr_db"]
        assert snr > own + 3, f"{fmt}: re-export differs from the shipped bundle ({snr:.1f} dB; int8 vs float {own})"
    assert json.loads((BUNDLES / "tiny-int8" / "manifest.json").read_text())["preset"] == "tiny"


# --- the shipped tiny enhances at all: fixed held-out real mixtures (speakers, noises never trained on) ------
# Margins are below what was measured on these 6 mixtures per condition: 2026-12-06 (the tiny of campaign stage
# A3) "both" int8 +2.70 dB, absent -13.3 dB; 2026-12-08 (stage H, shipped now) "both" int8 +2.08 dB, absent
# -15.6 dB (reports/baseline). A do-nothing model scores 0 dB and 0 dB: these fail. Noise alone is not asserted:
# on these six mixtures both tinies are below zero (-1.5, now -1.9 dB): three of them lose the first 0.3-0.8 s
# of an utterance (docs/training.md; on 20 mixtures noise alone is +1.31 int8). Re-measure when a new tiny ships.
SHIPPED_MIN_BOTH_SI_SDRI = {"float": 1.4, "int8": 1.3}
SHIPPED_MAX_ABSENT_LEVEL_DB = -6.0


@pytest.fixture(scope="module")
def heldout(data_root):
    from edge_pse.eval.evaluate import EvalSet

    return EvalSet.build(str(data_root), per_condition=6, seconds=4.0, conditions=("both", "absent"))


@pytest.mark.parametrize("kind", ["float", "int8"])
def test_the_shipped_tiny_improves_noisy_speech_and_silences_target_absence(heldout, kind: str) -> None:
    """Speech with another talker and noise comes out better; with the target absent, the output is quieter."""
    from edge_pse.eval.evaluate import score, torch_enhancer

    if kind == "float":
        enhance = torch_enhancer(load_model("tiny")[0])
    else:  # run hop by hop in LiteRT exactly as the bench scores a cell
        from edge_pse.bench.cell import open_cell
        from edge_pse.bench.quality import streamer_enhancer

        spec = {"kind": "bundle", "path": str(BUNDLES / "tiny-int8"), "backend": "litert", "threads": 1}
        enhance = streamer_enhancer(open_cell(spec))
    r = score(enhance, heldout, asr=False, intrusive_extras=False, dnsmos=False, progress=False)
    assert r["both"]["si_sdri"] >= SHIPPED_MIN_BOTH_SI_SDRI[kind], r["both"]
    assert r["absent"]["absent_level_db"] <= SHIPPED_MAX_ABSENT_LEVEL_DB, r["absent"]
