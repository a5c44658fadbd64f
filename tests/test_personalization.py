"""The product's claim on a trained model: with the enrolled talker's profile the other talker is removed, with
another profile the target is. The campaign's tiny (campaign/tiny-pse/best.pt, trained with --recipe pse,
resumable and replaced as the campaign goes on) is the personalized model; the shipped tiny predates it and
does not use the speaker (issue 12). Fixed held-out mixtures: speakers never trained on, 0 dB SIR."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

CAMPAIGN_TINY = Path(__file__).resolve().parent.parent / "campaign" / "tiny-pse" / "best.pt"
# Measured on these 6 mixtures (2026-12-06): best.pt at step 37000 right +2.51 dB, swapped -5.87 dB; at step
# 46000 right +2.36 dB, swapped -6.63 dB (gap 9.0 dB).
# The margins are about half of that; a model that ignores the speaker scores the same with both profiles (gap
# ~0) and fails.
MIN_GAP_DB = 4.0
MIN_RIGHT_DB = 1.0


@pytest.fixture(scope="module")
def pairs(data_root):
    """6 two-talker mixtures at 0 dB SIR from the test split, with both talkers' d-vectors."""
    from edge_pse.data.mixtures import MixtureConfig, MixtureDataset

    cfg = replace(MixtureConfig(seconds=4.0), sir_db=(0.0, 0.0))
    ds = MixtureDataset(str(data_root), "test", seed=4242, cfg=cfg, length=6, conditions=("interferer",))
    return [ds[i] for i in range(6)]


@pytest.fixture(scope="module")
def campaign_tiny():
    if not CAMPAIGN_TINY.is_file():
        pytest.skip(f"{CAMPAIGN_TINY} is not in this checkout")
    from edge_pse.model.checkpoint import load_model

    return load_model(CAMPAIGN_TINY)[0].eval()


def test_the_trained_model_keeps_the_enrolled_talker_and_removes_the_other(pairs, campaign_tiny) -> None:
    from edge_pse.eval.metrics import si_sdr

    right, swap = [], []
    for ex in pairs:
        mix = torch.from_numpy(ex.mixture.astype(np.float32))[None]
        base = si_sdr(ex.mixture, ex.target)
        with torch.no_grad():
            for emb, out in ((ex.embedding, right), (ex.other_embedding, swap)):
                y = campaign_tiny.enhance(mix, torch.from_numpy(emb.astype(np.float32))[None])[0].numpy()
                out.append(si_sdr(y, ex.target) - base)
    r, s = float(np.mean(right)), float(np.mean(swap))
    assert r >= MIN_RIGHT_DB and r - s >= MIN_GAP_DB, (r, s)


@pytest.mark.slow
def test_edge_pse_run_with_the_right_profile_scores_higher_than_with_the_other(
    pairs, campaign_tiny, data_root, tmp_path
) -> None:
    """Through the product: the campaign's tiny exported to int8 LiteRT, one mixture file, two profiles; `edge-pse
    run --speaker A` and `--speaker B` give different files and A's scores higher against A's voice."""
    import soundfile as sf

    from edge_pse.enroll.dvector import ENCODER_NAME
    from edge_pse.enroll.profile import SpeakerProfile, save_profile
    from edge_pse.eval.metrics import si_sdr
    from tests.test_cli import edge_pse

    bundle = tmp_path / "bundle"
    # calibrated on real speech: on the synthetic set this model's .tflite drops 1.06 dB and fails the gate
    res = edge_pse("export", "--checkpoint", str(CAMPAIGN_TINY), "--formats", "tflite", "--output", str(bundle),
                   "--calibration", str(data_root), "--clips", "24")  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    ex = pairs[0]
    sf.write(tmp_path / "mix.wav", ex.mixture, 16_000, subtype="PCM_16")
    scores = {}
    for who, emb in (("A", ex.embedding), ("B", ex.other_embedding)):
        save_profile(SpeakerProfile(np.asarray(emb, np.float32), ENCODER_NAME, "test"), tmp_path / f"{who}.spk")
        out = tmp_path / f"out-{who}.wav"
        res = edge_pse("run", "--model", str(bundle), "--speaker", str(tmp_path / f"{who}.spk"),
                       "--input", str(tmp_path / "mix.wav"), "--output", str(out))  # fmt: skip
        assert res.returncode == 0, res.stderr[-2000:]
        y, _ = sf.read(out, dtype="float32")
        scores[who] = si_sdr(y, ex.target) - si_sdr(ex.mixture, ex.target)
    assert scores["A"] - scores["B"] >= MIN_GAP_DB, scores
