"""Enrollment as users see it: audio files in, a .spk profile out, clear errors and exit 2 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge_pse.cli import main
from edge_pse.enroll.profile import SpeakerProfile, load_profile, save_profile
from edge_pse.errors import EdgePseError
from tests.speechlike import DATA, SR, real_speech, speech_files, speech_like


def unit(seed: int = 0, dim: int = 256) -> np.ndarray:
    v = np.abs(np.random.default_rng(seed).standard_normal(dim)).astype(np.float32)
    return v / np.linalg.norm(v)


def profile(seed: int = 0) -> SpeakerProfile:
    return SpeakerProfile(
        embedding=unit(seed),
        encoder="resemblyzer-dvector",
        encoder_version="0.1.4",
        encoder_backend="onnx",
        clips=2,
        seconds=12.5,
        speech_seconds=9.25,
    )


def test_profile_round_trip(tmp_path: Path) -> None:
    p = profile()
    save_profile(p, tmp_path / "me.spk")
    back = load_profile(tmp_path / "me.spk", expected_encoder="resemblyzer-dvector", expected_dim=256)
    np.testing.assert_array_equal(back.embedding, p.embedding)
    assert (back.encoder, back.encoder_version, back.encoder_backend) == ("resemblyzer-dvector", "0.1.4", "onnx")
    assert (back.clips, back.seconds, back.speech_seconds, back.sample_rate) == (2, 12.5, 9.25, 16_000)
    assert back.created_at == p.created_at
    assert [f.name for f in tmp_path.iterdir()] == ["me.spk"]  # no temp file left behind


def _edit(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(embedding=d["embedding"][:-8] + "AAAAAA=="), "checksum mismatch"),
        (lambda d: d["encoder"].update(name="ecapa"), "checksum mismatch"),
        (lambda d: d.update(schema=99), "schema 99 is not supported"),
        (lambda d: d.update(format="something-else"), "missing format marker"),
    ],
)
def test_tampered_profiles_are_refused(tmp_path: Path, change, message: str) -> None:
    path = save_profile(profile(), tmp_path / "me.spk")
    _edit(path, change)
    with pytest.raises(EdgePseError, match=message):
        load_profile(path)


def test_non_profiles_and_other_encoders_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.spk"
    junk.write_bytes(b"\x80\x04\x95 pickle-ish bytes")
    with pytest.raises(EdgePseError, match="not UTF-8 JSON"):
        load_profile(junk)
    with pytest.raises(EdgePseError, match="not found"):
        load_profile(tmp_path / "missing.spk")
    path = save_profile(profile(), tmp_path / "me.spk")
    with pytest.raises(EdgePseError, match="made by the 'resemblyzer-dvector' speaker encoder, but this model expects"):
        load_profile(path, expected_encoder="ecapa-tdnn")
    with pytest.raises(EdgePseError, match="expects 192-d"):
        load_profile(path, expected_dim=192)


def test_save_refuses_a_non_unit_embedding(tmp_path: Path) -> None:
    bad = SpeakerProfile(embedding=2 * unit(), encoder="x", encoder_version="1")
    with pytest.raises(EdgePseError, match="L2-normalised"):
        save_profile(bad, tmp_path / "me.spk")
    assert not (tmp_path / "me.spk").exists()


def enroll(*args: str) -> int:
    return main(["enroll", *args])


def test_enroll_cli_round_trip_with_resampling_and_stereo(tmp_path: Path, capsys) -> None:
    a, b = speech_like(4.0, seed=1), speech_like(4.0, seed=2)
    sf.write(tmp_path / "a.wav", a, SR)
    # the same clip as 44.1 kHz stereo float: must give (nearly) the same embedding as the 16 kHz mono file
    import soxr

    a44 = soxr.resample(a, SR, 44_100)
    sf.write(tmp_path / "a44.wav", np.stack([a44, a44], axis=1), 44_100, subtype="FLOAT")
    sf.write(tmp_path / "b.flac", b, SR)
    assert enroll("--audio", str(tmp_path / "a.wav"), "--output", str(tmp_path / "a.spk")) == 0
    assert enroll("--audio", str(tmp_path / "a44.wav"), "--output", str(tmp_path / "a44.spk")) == 0
    assert (
        enroll("--audio", str(tmp_path / "a.wav"), str(tmp_path / "b.flac"), "--output", str(tmp_path / "ab.spk")) == 0
    )
    out = capsys.readouterr().out
    assert "wrote" in out and "2 clip(s)" in out
    pa, p44, pab = (load_profile(tmp_path / f"{n}.spk") for n in ("a", "a44", "ab"))
    assert pa.encoder == "resemblyzer-dvector" and pa.dim == 256 and pa.clips == 1
    assert float(pa.embedding @ p44.embedding) > 0.98
    assert pab.clips == 2 and pab.seconds == pytest.approx(8.0, abs=0.01)
    assert np.linalg.norm(pab.embedding) == pytest.approx(1.0, abs=1e-5)


def _write_bad_inputs(d: Path) -> dict[str, tuple[Path, str]]:
    cases = {}
    cases["missing"] = (d / "nope.wav", "not found")
    (d / "text.wav").write_text("this is not audio\n")
    cases["not audio"] = (d / "text.wav", "cannot read")
    sf.write(d / "empty.wav", np.zeros(0, np.float32), SR)
    cases["empty"] = (d / "empty.wav", "no audio samples")
    nan = speech_like(3.0)
    nan[1000] = np.nan
    sf.write(d / "nan.wav", nan, SR, subtype="FLOAT")
    cases["nan"] = (d / "nan.wav", "NaN or Inf")
    sf.write(d / "short.wav", speech_like(0.6), SR)
    cases["too short"] = (d / "short.wav", "at least 1.0 s")
    sf.write(d / "silence.wav", np.zeros(3 * SR, np.float32), SR)
    cases["silence"] = (d / "silence.wav", "0.0 s of speech")
    truncated = d / "truncated.flac"
    sf.write(truncated, speech_like(3.0), SR)
    truncated.write_bytes(truncated.read_bytes()[:60])
    cases["truncated"] = (truncated, str(truncated))
    return cases


def test_bad_enrollment_audio_exits_2_with_a_message_and_no_output(tmp_path: Path, capsys) -> None:
    good = tmp_path / "good.wav"
    sf.write(good, speech_like(3.0), SR)
    for name, (path, message) in _write_bad_inputs(tmp_path).items():
        out = tmp_path / f"{name}.spk"
        assert enroll("--audio", str(good), str(path), "--output", str(out)) == 2, name
        err = capsys.readouterr().err
        assert "edge-pse enroll: error:" in err and message in err, (name, err)
        assert not out.exists(), name
    assert enroll("--audio", str(good), "--output", str(tmp_path / "no" / "dir" / "x.spk")) == 2
    assert "output directory does not exist" in capsys.readouterr().err
    assert sorted(p.suffix for p in tmp_path.iterdir() if p.suffix == ".spk") == []


def test_enroll_never_overwrites_a_recording_with_its_profile(tmp_path: Path, capsys) -> None:
    good = tmp_path / "good.wav"
    sf.write(good, speech_like(3.0), SR)
    before = good.read_bytes()
    link = tmp_path / "link.spk"
    link.symlink_to(good)
    for out in (good, link, tmp_path / "." / "good.wav"):
        assert enroll("--audio", str(good), "--output", str(out)) == 2
        assert "same file as --audio" in capsys.readouterr().err
    assert good.read_bytes() == before
    assert enroll("--audio", str(good), "--output", "/proc/me.spk") == 2  # a folder no one may write
    assert "cannot write to /proc" in capsys.readouterr().err


def test_enroll_cli_exit_code_without_traceback(tmp_path: Path) -> None:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_pse",
            "enroll",
            "--audio",
            str(tmp_path / "x.wav"),
            "--output",
            str(tmp_path / "o.spk"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 2 and "audio file not found" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "o.spk").exists()


def test_same_speaker_is_closer_than_different_speakers() -> None:
    files = speech_files()
    if len(files) < 6:
        pytest.skip(f"needs real speech under {DATA}")
    from edge_pse.enroll.dvector import embed

    halves = []
    for i in range(6):
        wave = real_speech(i, seconds=None)
        mid = wave.size // 2
        halves.append((embed(wave[:mid]), embed(wave[mid:])))
    same = [float(a @ b) for a, b in halves]
    diff = [float(halves[i][0] @ halves[j][1]) for i in range(6) for j in range(6) if i != j]
    assert np.mean(same) > np.mean(diff) + 0.1, (same, diff)
    assert min(same) > np.median(diff)


def test_batched_d_vectors_equal_one_clip_at_a_time() -> None:
    """embed_many (a data root's thousands of enrollment clips, partials batched across clips) gives embed()'s
    vectors: clips of different lengths, so that their partial counts differ and a misassigned partial shows."""
    from edge_pse.enroll.dvector import embed, embed_many

    clips = [speech_like(s, seed=k, f0=f0) for k, (s, f0) in enumerate(((2.0, 110.0), (5.5, 210.0), (3.2, 150.0)))]
    clips += [c for c in (real_speech(0, 4.0), real_speech(1, 7.0)) if c is not None]
    one = np.stack([embed(c) for c in clips])
    many = embed_many(clips, clips_per_call=3)  # chunks that split the list unevenly (3 + 2)
    assert many.shape == one.shape
    assert np.min(np.sum(one * many, axis=1)) > 0.9999
    assert np.max(np.abs(one - many)) < 1e-3


def test_voiced_share_tells_a_tone_and_speech_from_noise() -> None:
    """Closed forms at the ends: a 200 Hz tone is voiced in every frame, white noise in none."""
    from edge_pse.enroll.audio import voiced_share
    from tests.speechlike import speech_like

    t = np.arange(32_000) / 16_000
    assert voiced_share(0.3 * np.sin(2 * np.pi * 200 * t)) == 1.0
    assert voiced_share(0.1 * np.random.default_rng(0).standard_normal(32_000)) == 0.0
    assert voiced_share(speech_like(6.0)) > 0.45
    assert voiced_share(np.zeros(16_000)) == 0.0


def test_enrolling_noise_warns_that_it_is_not_speech(tmp_path: Path, capsys) -> None:
    """WebRTC's VAD takes 10 s of white noise for 10 s of speech; the profile is written, with a warning."""
    import soundfile as sf

    from tests.speechlike import speech_like

    sf.write(tmp_path / "noise.wav", 0.1 * np.random.default_rng(0).standard_normal(160_000), 16_000)
    sf.write(tmp_path / "voice.wav", speech_like(8.0), 16_000)
    assert enroll("--audio", str(tmp_path / "noise.wav"), "--output", str(tmp_path / "n.spk")) == 0
    assert "does not sound like speech (0% of its frames are voiced" in capsys.readouterr().err
    assert enroll("--audio", str(tmp_path / "voice.wav"), "--output", str(tmp_path / "v.spk")) == 0
    assert "does not sound like speech" not in capsys.readouterr().err
