"""`edge-pse run` as users call it, with torch made unimportable: files in, files out, exit codes, stats."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge_pse import demo
from tests.test_run_bundle import bundle_dir, make_speaker  # noqa: F401  (bundle_dir is a fixture)

NO_TORCH = "import sys; sys.modules['torch'] = None; from edge_pse.cli import main; sys.exit(main(sys.argv[1:]))"


def edge_pse(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter where `import torch` fails: the runtime path must not need it."""
    return subprocess.run(
        [sys.executable, "-c", NO_TORCH, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def speaker(tmp_path_factory) -> Path:
    return make_speaker(tmp_path_factory.mktemp("spk") / "me.spk")


def hop_by_hop(bundle_path: Path, speaker: Path, pcm: np.ndarray) -> np.ndarray:
    """What a file run must write, computed without the runtime's file path (reader, framer, sink, writer): the
    backend called on each 160-sample hop of x * 2^-15, one hop of zeros after, the output advanced by its one
    hop of lag, rounded to int16."""
    from edge_pse.bundle import Bundle
    from edge_pse.runtime.backends import open_backend
    from edge_pse.runtime.session import load_speaker

    bundle = Bundle.load(bundle_path)
    backend = open_backend(bundle, "onnx", threads=1)
    backend.set_speaker(load_speaker(speaker, bundle.spec))
    x = np.asarray(pcm, np.float32) / 32768
    hops = np.pad(x, (0, -len(x) % 160 + 160)).reshape(-1, 160)
    y = np.concatenate([backend.process(h).copy() for h in hops])[160 : 160 + len(x)]
    return np.clip(np.rint(y.astype(np.float64) * 32768), -32768, 32767).astype(np.int16)


def run(bundle: Path, speaker: Path, inp: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return edge_pse("run", "--model", bundle, "--speaker", speaker, "--input", inp, "--output", out, *extra)


def test_torch_free_import_of_the_runtime() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import edge_pse.runtime.frontend, edge_pse.runtime.frontend_int, edge_pse.runtime.runner\n"
        "import edge_pse.runtime.audio_io, edge_pse.runtime.devices, edge_pse.runtime.live, edge_pse.runtime.session\n"
        "import edge_pse.runtime.backends.onnx, edge_pse.runtime.backends.litert, edge_pse.bundle\n"
        "import edge_pse.cli.run, edge_pse.cli.devices, edge_pse.demo, edge_pse.enroll.profile\n"
        "print('ok')"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_file_run_keeps_length_and_writes_stats(bundle_dir: Path, speaker: Path, tmp_path: Path) -> None:  # noqa: F811
    out, stats_path = tmp_path / "clean.wav", tmp_path / "stats.json"
    res = run(bundle_dir, speaker, demo.path(demo.MIXTURE), out, "--stats", stats_path, "--device", "rpi4")
    assert res.returncode == 0, res.stderr
    x, rate = sf.read(demo.path(demo.MIXTURE), dtype="int16")
    y, out_rate = sf.read(out, dtype="int16")
    assert out_rate == rate and len(y) == len(x)
    assert sf.info(out).subtype == "PCM_16"  # what users' tools expect of a .wav; float would read back the same
    assert np.array_equal(y, hop_by_hop(bundle_dir, speaker, x))
    stats = json.loads(stats_path.read_text())
    for key in ("per_hop_us", "model_us", "overhead_us"):
        assert set(stats[key]) == {"p50", "p90", "p95", "p99", "max", "mean"}
        assert 0 < stats[key]["p50"] <= stats[key]["p95"] <= stats[key]["p99"] <= stats[key]["max"]
    assert stats["hops"] == -(-len(x) // 160) + 1  # the padded hops plus the one flush hop
    assert stats["backend"] == "onnx" and stats["device_profile"] == "rpi4"
    assert stats["deadline_us"] == 8000.0 and 0 <= stats["deadline_misses"] <= stats["hops"]
    assert 0 < stats["rtf"] < 1
    assert stats["input_frames"] == stats["output_frames"] == len(x)
    assert stats["latency_compensation_samples"] == 160
    assert stats["outside_model_us_per_hop"] > 0
    assert "real-time factor" in res.stdout


def test_stereo_44k_float_input_gives_a_mono_file_of_the_same_length_and_rate(
    bundle_dir: Path,  # noqa: F811
    speaker: Path,
    tmp_path: Path,
) -> None:
    x, _ = sf.read(demo.path(demo.MIXTURE), dtype="float32")
    import soxr

    x44 = soxr.resample(x, 16000, 44100)[: 44100 * 2 + 11]
    inp = tmp_path / "stereo.flac"
    sf.write(inp, np.stack([x44, 0.5 * x44], axis=1), 44100)
    out = tmp_path / "clean.flac"
    res = run(bundle_dir, speaker, inp, out)
    assert res.returncode == 0, res.stderr
    info = sf.info(out)
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (44100, 1, len(x44), "PCM_16")
    # expected by another path: the float clip resampled whole with soxr, mono as the mean of the channels,
    # the model run hop by hop on it, the result resampled back whole
    mono16 = soxr.resample(0.75 * x44, 44100, 16000)
    pcm16 = np.clip(np.rint(mono16 * 32768), -32768, 32767).astype(np.int16)
    expected = soxr.resample(hop_by_hop(bundle_dir, speaker, pcm16).astype(np.float32) / 32768, 16000, 44100)
    got = sf.read(out, dtype="float32")[0]
    n = min(len(got), len(expected))
    assert abs(len(expected) - len(x44)) <= 2
    assert np.corrcoef(got[:n], expected[:n])[0, 1] > 0.999


@pytest.mark.parametrize("case", ["silence", "clipping"])
def test_silence_and_clipped_input_are_processed_and_reported(
    bundle_dir: Path,  # noqa: F811
    speaker: Path,
    tmp_path: Path,
    case: str,
) -> None:
    inp, out, stats_path = tmp_path / "in.wav", tmp_path / "out.wav", tmp_path / "s.json"
    if case == "silence":
        sf.write(inp, np.zeros(16000, np.int16), 16000)
    else:
        x, _ = sf.read(demo.path(demo.MIXTURE), dtype="float32")
        sf.write(inp, np.clip(x * 8, -1, 1), 16000, subtype="PCM_16")
    res = run(bundle_dir, speaker, inp, out, "--stats", stats_path)
    assert res.returncode == 0, res.stderr
    stats = json.loads(stats_path.read_text())
    assert sf.info(out).frames == sf.info(inp).frames
    if case == "silence":
        assert stats["input_silent"] is True and "digital silence" in res.stderr
    else:
        assert stats["input_clipped"] > 100 and "full scale" in res.stderr


def _bad_inputs(tmp: Path, good_wav: Path, bundle: Path, speaker: Path) -> dict[str, tuple[list, str]]:
    """case -> (extra args replacing the defaults, expected message fragment)."""
    raw = good_wav.read_bytes()
    (tmp / "text.wav").write_text("this is not audio\n" * 20)
    (tmp / "empty.wav").write_bytes(b"")
    (tmp / "truncated.wav").write_bytes(raw[: len(raw) // 2])
    sf.write(tmp / "ok.flac", sf.read(good_wav, dtype="int16")[0], 16000)
    flac = (tmp / "ok.flac").read_bytes()
    (tmp / "truncated.flac").write_bytes(flac[: len(flac) // 2])
    nan = np.zeros(8000, np.float32)
    nan[4000] = np.nan
    sf.write(tmp / "nan.wav", nan, 16000, subtype="FLOAT")
    inf = np.zeros(8000, np.float32)
    inf[10] = np.inf
    sf.write(tmp / "inf.wav", inf, 16000, subtype="FLOAT")
    sf.write(tmp / "zero_frames.wav", np.zeros(0, np.int16), 16000)
    tampered = tmp / "tampered"
    shutil.copytree(bundle, tampered)
    with (tampered / "model.onnx").open("r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02\x03")
    other = make_speaker(tmp / "other.spk", encoder="some-other-encoder")
    link = tmp / "link.json"
    link.symlink_to(tmp / "ok.flac")
    hard = tmp / "hard.json"
    os.link(tmp / "ok.flac", hard)
    spk_wav = tmp / "spk.wav"
    os.link(speaker, spk_wav)  # a profile hard-linked under an audio name: --output would overwrite it
    sf.write(tmp / "one_hz.wav", np.zeros(100_000, np.int16), 1)  # 200 KB whose header says 1 Hz
    victim = tmp / "victim"
    shutil.copytree(bundle, victim)
    broken_spk = tmp / "broken.spk"
    broken_spk.write_text(speaker.read_text().replace('"clips": 1', '"clips": 2'))
    return {
        "not audio": (["--input", tmp / "text.wav"], "cannot read"),
        "empty file": (["--input", tmp / "empty.wav"], "empty"),
        "no frames": (["--input", tmp / "zero_frames.wav"], "no audio samples"),
        "truncated wav": (["--input", tmp / "truncated.wav"], "truncated"),
        "truncated flac": (["--input", tmp / "truncated.flac"], "truncated"),
        "NaN": (["--input", tmp / "nan.wav"], "NaN/Inf"),
        "Inf": (["--input", tmp / "inf.wav"], "NaN/Inf"),
        "missing input": (["--input", tmp / "nope.wav"], "not found"),
        "bad output type": (["--output", tmp / "out.mp3"], "output must end in"),
        "missing bundle": (["--model", tmp / "no-bundle"], "not found"),
        "tampered bundle": (["--model", tampered], "sha256"),
        "other encoder": (["--speaker", other], "some-other-encoder"),
        "edited profile": (["--speaker", broken_spk], "checksum"),
        "unknown device": (["--device", "toaster"], "unknown device profile"),
        "unknown backend file": (["--backend", "litert"], "no tflite file"),
        "mic to a file": (["--input", "mic"], "live mode runs"),
        "same in and out": (["--input", tmp / "ok.flac", "--output", tmp / "ok.flac"], "it would be overwritten"),
        # stats over the input, through a symlink and through a hard link: all the same file
        "stats is the input": (["--input", tmp / "ok.flac", "--stats", tmp / "ok.flac"], "same file as --input"),
        "stats links to input": (["--input", tmp / "ok.flac", "--stats", link], "same file as --input"),
        "stats hard-links input": (["--input", tmp / "ok.flac", "--stats", hard], "same file as --input"),
        "output is the speaker": (["--output", tmp / "spk.wav", "--speaker", spk_wav], "same file as --speaker"),
        "1 Hz header": (["--input", tmp / "one_hz.wav"], "8000 to 384000 Hz are accepted"),
        "stats over the bundle": (["--model", victim, "--stats", victim / "manifest.json"], "same file as --model"),
    }


def test_bad_inputs_exit_2_with_a_clear_message_and_no_output(bundle_dir: Path, speaker: Path, tmp_path: Path) -> None:  # noqa: F811
    cases = _bad_inputs(tmp_path, Path(str(demo.path(demo.MIXTURE))), bundle_dir, speaker)
    outdir = tmp_path / "outputs"
    outdir.mkdir()
    for case, (extra, message) in cases.items():
        args = {"--model": bundle_dir, "--speaker": speaker, "--input": demo.path(demo.MIXTURE)}
        args["--output"] = outdir / "clean.wav"
        args["--stats"] = outdir / "stats.json"
        for k, v in zip(extra[::2], extra[1::2], strict=True):
            args[k] = v
        res = edge_pse("run", *[str(a) for kv in args.items() for a in kv])
        assert res.returncode == 2, (case, res.stderr)
        assert res.stderr.startswith("edge-pse run: error: "), (case, res.stderr)
        assert message in res.stderr, (case, res.stderr)
        assert "Traceback" not in res.stderr, case
        assert list(outdir.iterdir()) == [], (case, list(outdir.iterdir()))  # nothing half-written


def test_default_run_uses_the_shipped_bundle_and_demo_or_says_it_is_missing(tmp_path: Path) -> None:
    from edge_pse.cli.run import DEFAULT_BUNDLE

    res = subprocess.run(
        [sys.executable, "-c", NO_TORCH, "run"], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    if DEFAULT_BUNDLE.is_dir():
        assert res.returncode == 0, res.stderr
        assert sf.info(tmp_path / "enhanced.wav").frames == sf.info(demo.path(demo.MIXTURE)).frames
        assert "real-time factor" in res.stdout
        # the demo's score is computed from the files it names, not printed from anywhere else
        import re

        from edge_pse.eval.metrics import si_sdr

        line = next(x for x in res.stdout.splitlines() if x.startswith("demo: SI-SDR"))
        before, after = (float(v) for v in re.findall(r"([+-]\d+\.\d+) dB \((?:mixture|enhanced)\)", line))
        target = sf.read(demo.path(demo.TARGET), dtype="float32")[0]
        assert before == pytest.approx(si_sdr(sf.read(demo.path(demo.MIXTURE), dtype="float32")[0], target), abs=0.01)
        assert after == pytest.approx(si_sdr(sf.read(tmp_path / "enhanced.wav", dtype="float32")[0], target), abs=0.01)
    else:
        assert res.returncode == 2 and "shipped tiny int8 bundle is missing" in res.stderr
        assert not (tmp_path / "enhanced.wav").exists()


def test_devices_lists_profiles_and_user_profiles(tmp_path: Path) -> None:
    user = tmp_path / "mine.toml"
    user.write_text('[zero2w]\ninherit = "rpi4"\ndescription = "Pi Zero 2 W"\nthreads = 1\ndeadline_ms = 9.5\n')
    res = edge_pse("devices", "--json", "--profiles", user)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    profiles = {p["alias"]: p for p in data["profiles"]}
    assert {"host", "rpi", "rpi4", "rpi5", "arm64", "zero2w"} <= set(profiles)
    assert profiles["zero2w"]["deadline_ms"] == 9.5 and profiles["zero2w"]["on_miss"] == "pass-through"
    assert profiles["rpi"]["name"] in ("rpi4", "rpi5")
    env = edge_pse("devices", "--json", env={"EDGE_PSE_PROFILES": str(user)})
    assert "zero2w" in {p["alias"] for p in json.loads(env.stdout)["profiles"]}
    assert isinstance(data["audio_devices"], list)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[x]\nthreads = 'two'\n", "lacks"),
        ("[x]\ninherit='host'\nthreads = 'two'\n", "threads must be int"),
        ("[x\n", "not valid TOML"),
        ("[x]\ninherit='host'\non_miss='panic'\n", "on_miss must be one of"),
    ],
)
def test_bad_profile_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    user = tmp_path / "bad.toml"
    user.write_text(text)
    res = edge_pse("run", "--device", "x", "--profiles", user, "--output", tmp_path / "o.wav")
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert not (tmp_path / "o.wav").exists()


def test_streamed_file_run_equals_the_whole_clip_path(bundle_dir: Path, speaker: Path, tmp_path: Path) -> None:  # noqa: F811
    """File runs stream in blocks (read, resample, enhance, resample back, write); the result is sample for
    sample what enhancing the whole clip at once gives, rate conversion and lag compensation included."""
    from edge_pse.bundle import Bundle
    from edge_pse.runtime import audio_io
    from edge_pse.runtime.backends import open_backend
    from edge_pse.runtime.runner import run_array
    from edge_pse.runtime.session import load_speaker

    x, _ = sf.read(demo.path(demo.MIXTURE), dtype="float32")
    import soxr

    x44 = soxr.resample(np.tile(x, 2), 16000, 44100)[: 44100 * 9 + 7]  # several 1 s blocks and a partial one
    inp, out = tmp_path / "in.wav", tmp_path / "out.wav"
    sf.write(inp, np.stack([x44, 0.3 * x44], axis=1), 44100, subtype="PCM_16")
    res = run(bundle_dir, speaker, inp, out)
    assert res.returncode == 0, res.stderr
    bundle = Bundle.load(bundle_dir)
    backend = open_backend(bundle, "onnx", threads=1)
    backend.set_speaker(load_speaker(speaker, bundle.spec))
    clip = audio_io.read_clip(inp, 16000)
    expected = audio_io.to_source_rate(run_array(backend, clip.pcm, hop=160, sample_rate=16000, lag_hops=1)[0], clip)
    got, rate = sf.read(out, dtype="int16")
    assert rate == 44100 and np.array_equal(got, expected)


def test_a_stats_file_that_cannot_be_written_stops_the_run_before_any_output(
    bundle_dir: Path,  # noqa: F811
    speaker: Path,
    tmp_path: Path,
) -> None:
    out = tmp_path / "clean.wav"
    res = run(bundle_dir, speaker, demo.path(demo.MIXTURE), out, "--stats", "/proc/edge-pse-stats.json")
    assert res.returncode == 2 and "cannot write to /proc" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_memory_of_a_file_run_does_not_grow_with_its_duration(bundle_dir: Path, speaker: Path, tmp_path: Path) -> None:  # noqa: F811
    """Peak RSS of `edge-pse run` on 10 s and on 20 min of 48 kHz stereo: the long file costs at most a few MB
    more (reading it whole would take ~1 GB of arrays)."""
    x, _ = sf.read(demo.path(demo.MIXTURE), dtype="int16")
    code = (
        "import resource, sys; sys.modules['torch'] = None; from edge_pse.cli import main; rc = main(sys.argv[1:]); "
        "print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)"
    )
    peaks = {}
    for seconds in (10, 1200):
        inp = tmp_path / f"in{seconds}.wav"
        with sf.SoundFile(inp, "w", 48000, 2, "PCM_16") as f:  # written in blocks: the test holds no hour of audio
            block = np.repeat(np.tile(x, 4)[: 16000 * 10], 3)[:, None].repeat(2, axis=1)
            for _ in range(seconds // 10):
                f.write(block)
        res = subprocess.run(
            [sys.executable, "-c", code, "run", "--model", bundle_dir, "--speaker", speaker, "--input", inp,
             "--output", tmp_path / "out.wav", "--quiet"],
            capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        peaks[seconds] = int(res.stderr.split("RSS")[-1].split()[0]) / 1024  # MiB
        assert sf.info(tmp_path / "out.wav").frames == 48000 * seconds
    assert peaks[1200] - peaks[10] < 40, peaks


def test_the_speaker_profile_reaches_the_model(tmp_path: Path) -> None:
    """`--speaker A` and `--speaker B` on the same input must give different outputs: a runtime that fed a
    constant embedding (or dropped the profile) would give the same file twice."""
    from edge_pse.cli.run import DEFAULT_BUNDLE

    other = make_speaker(tmp_path / "other.spk", encoder="resemblyzer-dvector")
    outs = []
    for spk in (demo.path(demo.SPEAKER), other):
        out = tmp_path / f"{Path(spk).stem}.wav"
        res = edge_pse("run", "--model", DEFAULT_BUNDLE, "--speaker", spk, "--output", out, "--quiet")
        assert res.returncode == 0, res.stderr
        outs.append(sf.read(out, dtype="float32")[0])
    diff = 10 * np.log10(np.sum(outs[0] ** 2) / np.sum((outs[0] - outs[1]) ** 2))
    assert diff < 40, f"the two profiles' outputs agree to {diff:.1f} dB SNR: the profile does not reach the model"


def test_torch_free_enrollment_out_of_the_box_matches_the_host_profile(tmp_path: Path) -> None:
    """A device install enrolls with the packaged numpy encoder (no torch, no runtime, no export step) and gets
    the profile the host's torch encoder gave the demo speaker."""
    from edge_pse.enroll.profile import load_profile

    out = tmp_path / "me.spk"
    res = edge_pse("enroll", "--audio", demo.path(demo.ENROLLMENT), "--output", out)
    assert res.returncode == 0, res.stderr
    mine, host = load_profile(out), load_profile(demo.path(demo.SPEAKER))
    assert mine.encoder_backend == "numpy" and host.encoder_backend == "torch"
    assert (mine.encoder, mine.encoder_version) == (host.encoder, host.encoder_version)
    assert float(mine.embedding @ host.embedding) >= 0.999


def bomb_flac(path: Path) -> Path:
    """A real 1 s FLAC whose STREAMINFO claims 2^36 - 1 samples (about 50 days at 16 kHz): 13 KB on disk."""
    x, _ = sf.read(demo.path(demo.MIXTURE), dtype="int16")
    sf.write(path, x[:16000], 16000, subtype="PCM_16", format="FLAC")
    data = bytearray(path.read_bytes())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # the first metadata block is STREAMINFO
    fields = int.from_bytes(data[18:26], "big")  # rate (20 bits), channels (3), bits (5), total samples (36)
    data[18:26] = (fields | (2**36 - 1)).to_bytes(8, "big")
    path.write_bytes(bytes(data))
    assert sf.info(path).frames == 2**36 - 1
    return path


# the child's own peak: VmHWM belongs to the address space exec made (ru_maxrss also counts the parent's pages
# forked before the exec: a 2 GB pytest process made every child look 2 GB big)
RSS_CODE = (
    "import sys; sys.modules['torch'] = None; from edge_pse.cli import main; rc = main(sys.argv[1:]); "
    "hwm = next(line for line in open('/proc/self/status') if line.startswith('VmHWM:')).split()[1]; "
    "print('RSS', hwm, file=sys.stderr); sys.exit(rc)"
)


def test_a_header_that_claims_50_days_is_refused_in_bounded_memory(
    bundle_dir: Path,  # noqa: F811
    speaker: Path,
    tmp_path: Path,
) -> None:
    """Nothing is preallocated from a header's frame count: `run` reads what is there and refuses the file as
    truncated, `enroll` refuses the declared length before decoding; both stay far below the GBs asked for."""
    bomb = bomb_flac(tmp_path / "bomb.flac")
    run = ["run", "--model", bundle_dir, "--speaker", speaker, "--input", bomb, "--output", tmp_path / "o.wav"]
    enroll = ["enroll", "--audio", bomb, "--output", tmp_path / "me.spk"]
    for args, message in ((run, "truncated"), (enroll, "an enrollment clip is at most")):
        res = subprocess.run(
            [sys.executable, "-c", RSS_CODE, *map(str, args)], capture_output=True, text=True, timeout=300, check=False
        )
        assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, res.stderr
        assert int(res.stderr.split("RSS")[-1].split()[0]) / 1024 < 150  # MiB; 13.5 GB before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.flac"]


def test_an_mp3_whose_header_only_estimates_its_length_runs_and_a_cut_one_is_refused(
    bundle_dir: Path,  # noqa: F811
    speaker: Path,
    tmp_path: Path,
) -> None:
    """tests/fixtures/speechlike-44k.mp3 (sox/LAME, made from tests.speechlike: see tests/fixtures/README.md):
    its header claims 179,396 frames, 178,560 decode. `run` used to refuse it as truncated; now its output has
    the decoded length and equals the run of the same decoded samples as a WAV. (A cut MP3 cannot be told from
    a shorter one: its header estimates the length from the file's size.)"""
    mp3 = Path(__file__).parent / "fixtures" / "speechlike-44k.mp3"
    assert sf.info(mp3).frames == 179_396
    decoded = sf.read(mp3, dtype="int16")[0]  # what the reader takes from it (not a float file)
    wav = tmp_path / "decoded.wav"
    sf.write(wav, decoded, 44_100, subtype="PCM_16")
    outs = []
    for src in (mp3, wav):
        out = tmp_path / f"{src.stem}-{src.suffix[1:]}.out.wav"
        res = edge_pse("run", "--model", bundle_dir, "--speaker", speaker, "--input", src, "--output", out, "--quiet")
        assert res.returncode == 0, res.stderr
        outs.append(sf.read(out, dtype="int16")[0])
    # libsndfile's MP3 decoder rounds a few samples differently by read size: equal within a few LSB, not bit-exact
    a, b = outs[0].astype(np.float64), outs[1].astype(np.float64)
    assert len(a) == len(decoded) == 178_560 and np.any(a != 0)
    assert 10 * np.log10(np.sum(b**2) / np.sum((a - b) ** 2 + 1e-9)) > 30


def test_enrolling_a_clip_at_the_120_s_limit_stays_under_150_mib(tmp_path: Path) -> None:
    """D6: the encoder's mel frames and partials are computed in blocks (365 MiB at 119 s before, all at once);
    longer recordings are refused from their header, before decoding."""
    from tests.speechlike import speech_like

    clip = tmp_path / "long.wav"
    sf.write(clip, np.tile(speech_like(7.0), 17), 16_000, subtype="PCM_16")  # 119 s
    res = subprocess.run(
        [sys.executable, "-c", RSS_CODE, "enroll", "--audio", str(clip), "--output", str(tmp_path / "me.spk")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    peak = int(res.stderr.split("RSS")[-1].split()[0]) / 1024
    print(f"\nenroll 119 s: peak RSS {peak:.0f} MiB")
    assert peak < 150 and (tmp_path / "me.spk").is_file()


def test_a_full_disk_is_one_line_and_leaves_no_file(bundle_dir: Path, speaker: Path, tmp_path: Path) -> None:  # noqa: F811
    """D8: the output cannot grow past 40 KB (RLIMIT_FSIZE: the write fails as on a full disk, EFBIG for ENOSPC):
    exit 2 with one line that names the file, no traceback, nothing left in the folder (libsndfile's bare
    "System error." and a traceback before)."""
    code = (
        "import resource, sys; sys.modules['torch'] = None; "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1])); "
        "from edge_pse.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    out = tmp_path / "out"
    out.mkdir()
    for name in ("clean.wav", "clean.flac"):
        res = subprocess.run(
            [sys.executable, "-c", code, "run", "--model", str(bundle_dir), "--speaker", str(speaker),
             "--input", str(demo.path(demo.MIXTURE)), "--output", str(out / name), "--quiet"],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert f"cannot write {out / name}" in res.stderr and "is the disk full?" in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert list(out.iterdir()) == []


def test_quiet_prints_nothing_and_litert_says_no_info_line(tmp_path: Path) -> None:
    """--quiet: no stats table, no demo score, no LiteRT "INFO: Created TensorFlow Lite XNNPACK delegate" line
    (printed by its C++ logging on every load); --stats still writes the stats."""
    res = edge_pse("run", "--quiet", "--output", tmp_path / "q.wav", "--stats", tmp_path / "s.json")
    assert res.returncode == 0 and res.stdout == "" and res.stderr == "", (res.stdout, res.stderr)
    assert json.loads((tmp_path / "s.json").read_text())["backend"] == "litert"
    res = edge_pse("run", "--output", tmp_path / "loud.wav")
    assert res.returncode == 0 and "real-time factor" in res.stdout and "INFO: Created" not in res.stderr
