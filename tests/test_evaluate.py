"""`edge-pse evaluate`: per-condition JSON on a held-out set built from a data root."""

import json

import torch

from edge_pse.data.mixtures import CONDITIONS
from edge_pse.data.sources import scan
from edge_pse.model.checkpoint import save_checkpoint
from edge_pse.model.config import get_preset
from edge_pse.model.e3net import E3Net
from tests.test_cli import edge_pse


def test_evaluate_json_has_every_condition(synthetic_root, tmp_path) -> None:
    assert len(scan(synthetic_root, "test")[0]) >= 2
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(ckpt, E3Net(get_preset("tiny")), "tiny")

    def evaluate(*extra: str) -> dict:
        args = ("--checkpoint", str(ckpt), "--data", str(synthetic_root), "--json", "--fast")
        res = edge_pse("evaluate", *args, "--per-condition", "2", "--seconds", "2", *extra)
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    out = evaluate()
    for c in CONDITIONS:
        assert out[c]["count"] == 2
    for c in ("noise", "interferer", "both", "reverberant"):
        assert isinstance(out[c]["si_sdri"], float) and 0.0 <= out[c]["tsos"] <= 1.0
        assert 0.0 <= out[c]["tsos_share"] <= 1.0
    assert isinstance(out["absent"]["absent_level_db"], float)
    assert out["meta"]["split"] == "test"

    # the training split scores other mixtures (the speakers the model trained on), and says which split it is
    train = evaluate("--split", "train")
    assert train["meta"]["split"] == "train"
    assert train["noise"]["si_sdri"] != out["noise"]["si_sdri"]


def test_evaluate_bad_inputs(tmp_path) -> None:
    res = edge_pse("evaluate", "--checkpoint", str(tmp_path / "nope.pt"), "--data", str(tmp_path), "--json")
    assert res.returncode == 2 and "not found" in res.stderr and "Traceback" not in res.stderr
    save_checkpoint(tmp_path / "t.pt", E3Net(get_preset("tiny")), "tiny")
    res = edge_pse("evaluate", "--checkpoint", str(tmp_path / "t.pt"), "--data", str(tmp_path), "--json")
    assert res.returncode == 2 and "no speech/ folder" in res.stderr


def test_swap_gap_level_sweeps_and_long_streams_score_what_they_claim(synthetic_root) -> None:
    """An oracle that returns the target at half level for the right profile and the mixture for any other:
    gap = its SI-SDRi, target gain -6.02 dB, silence in the long streams' pauses."""
    import numpy as np

    from edge_pse.eval.evaluate import LEVEL_SWEEP_DBFS, SIR_SWEEP_DB, EvalSet, score

    evalset = EvalSet.build(str(synthetic_root), per_condition=2, seconds=2.0, sweeps=True)
    names = set(evalset.examples)
    assert {f"interferer@{s:+g}dB" for s in SIR_SWEEP_DB} <= names and "long-stream" in names
    assert {f"both@{v:g}dBFS" for v in LEVEL_SWEEP_DBFS} <= names
    for ex in evalset.examples["interferer@+0dB"]:
        assert abs(10 * np.log10(np.sum(ex.target**2) / np.sum((ex.mixture - ex.target) ** 2))) < 0.1
    for ex in evalset.examples["long-stream"]:
        assert len(ex.mixture) == 60 * 16_000 and len(ex.meta["turns"]) >= 4
        assert not np.array_equal(ex.embedding, ex.other_embedding)
    targets = {ex.mixture.tobytes(): ex.target for exs in evalset.examples.values() for ex in exs}
    rights = {ex.mixture.tobytes(): ex.embedding.tobytes() for exs in evalset.examples.values() for ex in exs}

    def oracle(mix: np.ndarray, emb: np.ndarray) -> np.ndarray:
        return 0.5 * targets[mix.tobytes()] if emb.tobytes() == rights[mix.tobytes()] else mix

    out = score(oracle, evalset, asr=False, intrusive_extras=False, dnsmos=False, progress=False)
    for name in ("interferer", "both", "interferer@+0dB", "long-stream"):
        r = out[name]
        assert abs(r["swap_si_sdri"]) < 1e-6 and r["gap"] == r["si_sdri"] > 30
        assert abs(r["target_gain_db"] - 20 * np.log10(0.5)) < 0.01
        # the half-level target from its first sample: half of it passed after every onset
        assert abs(r["onset_200ms"] - 0.5) < 1e-6 and abs(r["onset_500ms"] - 0.5) < 1e-6 and r["onsets"] >= 2
    assert out["long-stream"]["onsets"] >= 4 * 2  # every turn of every stream (>= 4 turns each, 2 streams)
    assert out["long-stream"]["pause_level_db"] < -80  # digital silence vs the other talker and noise


def test_evaluate_scores_the_shipped_int8_bundle_in_its_runtime(synthetic_root, tmp_path) -> None:
    """--bundle: the file that ships, run hop by hop by LiteRT, scored like a checkpoint; its figures are the
    int8 file's own (close to, not equal to, the float checkpoint's on the same mixtures)."""
    from pathlib import Path

    bundle = Path(__file__).resolve().parent.parent / "edge_pse" / "bundles" / "tiny-int8"
    common = ["--data", str(synthetic_root), "--json", "--fast", "--per-condition", "2", "--seconds", "2"]
    res = edge_pse("evaluate", "--bundle", str(bundle), "--backend", "litert", *common)
    assert res.returncode == 0, res.stderr
    int8 = json.loads(res.stdout)
    assert int8["meta"]["bundle"] == str(bundle) and int8["meta"]["backend"] == "litert"
    float_ = json.loads(edge_pse("evaluate", "--checkpoint", "tiny", *common).stdout)
    for c in ("noise", "interferer", "both"):
        assert int8[c]["si_sdri"] != float_[c]["si_sdri"] and abs(int8[c]["si_sdri"] - float_[c]["si_sdri"]) < 2.0
    res = edge_pse("evaluate", "--bundle", str(tmp_path), *common)
    assert res.returncode == 2 and "manifest.json" in res.stderr and "Traceback" not in res.stderr


def test_a_corpus_row_scores_only_that_corpus_speakers(synthetic_root, tmp_path) -> None:
    """--corpus: targets and talkers from one speech/CORPUS folder (LibriSpeech's test speakers as their own row
    in a root with several corpora); an unknown corpus is refused with the ones the root has."""
    import shutil

    from edge_pse.eval.evaluate import EvalSet

    root = tmp_path / "root"
    shutil.copytree(synthetic_root, root)
    shutil.copytree(synthetic_root / "speech" / "synth", root / "speech" / "other")
    both = EvalSet.build(str(root), per_condition=3, seconds=2.0)
    one = EvalSet.build(str(root), per_condition=3, seconds=2.0, corpora=("other",))
    speakers = {ex.meta["speaker"] for exs in both.examples.values() for ex in exs}
    assert {s.split("/")[0] for s in speakers} == {"synth", "other"}
    for exs in one.examples.values():
        for ex in exs:
            assert ex.meta["speaker"].startswith("other/")
            assert ex.meta.get("interferer", "other/").startswith("other/")
    save_checkpoint(tmp_path / "t.pt", E3Net(get_preset("tiny")), "tiny")
    args = ("--checkpoint", str(tmp_path / "t.pt"), "--data", str(root), "--corpus", "nope", "--json")
    res = edge_pse("evaluate", *args)
    assert res.returncode == 2 and "no corpus nope" in res.stderr and "other, synth" in res.stderr
    assert "Traceback" not in res.stderr
