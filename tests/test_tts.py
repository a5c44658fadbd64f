"""Synthetic espeak-ng speakers: the CLI writes a data root that training reads (original corpora linked,
split-disjoint speaker ids), the voices are distinct speakers to the d-vector encoder, and a missing espeak-ng
is a clear error that writes nothing."""

import os
import shutil
import sys

import numpy as np
import pytest
import soundfile as sf

from edge_pse.data.sources import scan
from tests.test_cli import edge_pse

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed (README)")


@needs_espeak
def test_cli_adds_speakers_to_a_linked_data_root(synthetic_root, tmp_path) -> None:
    out = tmp_path / "root"
    res = edge_pse("synth-speakers", "--data", str(synthetic_root), "--out", str(out), "--speakers", "12",
                   "--utterances", "2")  # fmt: skip
    assert res.returncode == 0, res.stderr
    tts = sorted((out / "speech" / "tts-espeak").iterdir())
    assert len(tts) == 12 and all(len(list(d.glob("*.wav"))) == 2 for d in tts)
    wave, sr = sf.read(next(tts[0].glob("*.wav")))
    assert sr == 16_000 and 1.0 < wave.size / sr < 10.0 and np.abs(wave).max() > 0.1
    per_split = {s: scan(out, s)[0] for s in ("train", "val", "test")}
    ids = [k for spk in per_split.values() for k in spk]
    assert len(ids) == len(set(ids)) == 40 + 12  # every speaker in exactly one split, originals included
    assert any(k.startswith("tts-espeak/") for k in per_split["train"])
    assert per_split["train"].keys() & {f"synth/spk{k:02d}" for k in range(40)}
    assert (out / "noise").resolve() == (synthetic_root / "noise").resolve()
    assert not (synthetic_root / "speech" / "tts-espeak").exists()  # the original root is untouched


@needs_espeak
def test_synthetic_voices_are_distinct_speakers() -> None:
    pytest.importorskip("resemblyzer")
    from edge_pse.data.tts import render, sentence, speaker_voices
    from edge_pse.enroll.dvector import embed

    rng = np.random.default_rng(1)
    voices = speaker_voices(4, seed=3)
    emb = np.array([[embed(render(sentence(rng), v)) for _ in range(2)] for v in voices])  # [speaker, utt, D]
    same = [float(emb[s, 0] @ emb[s, 1]) for s in range(4)]
    other = [float(emb[a, 0] @ emb[b, 1]) for a in range(4) for b in range(4) if a != b]
    assert np.mean(same) > np.mean(other) + 0.05, (same, other)


def test_missing_espeak_is_a_clear_error_and_writes_nothing(tmp_path) -> None:
    import subprocess

    out = tmp_path / "root"
    env = {**os.environ, "PATH": str(tmp_path)}  # no espeak-ng on this PATH
    res = subprocess.run(
        [sys.executable, "-m", "edge_pse", "synth-speakers", "--out", str(out), "--speakers", "2"],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert res.returncode == 2 and "apt-get install espeak-ng" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()
