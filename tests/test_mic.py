"""`edge-pse mic` against a real PulseAudio daemon started here headless (its own runtime folder, a 16 kHz null
sink as the "microphone"): the held-out demo mixture is played into it with paplay, the virtual mic is recorded
with parecord, and the recording is compared with `edge-pse run` on the same file. Then the server is stopped."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from edge_pse import demo
from edge_pse.eval.metrics import si_sdr
from tests.test_run import NO_TORCH

TOOLS = ("pulseaudio", "pactl", "paplay", "parecord")
pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in TOOLS),
    reason="needs PulseAudio (apt-get install pulseaudio pulseaudio-utils; the README's install has them)",
)


@pytest.fixture
def server(tmp_path):
    """A PulseAudio daemon of its own: env for its clients, and a null sink `test_in` (16 kHz mono) whose monitor
    is the microphone."""
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(run), "HOME": str(tmp_path), "PULSE_SERVER": f"unix:{run}/pulse/native"}
    proc = subprocess.Popen(
        ["pulseaudio", "--daemonize=no", "--exit-idle-time=-1", "-n", "--load=module-native-protocol-unix",
         "--load=module-null-sink sink_name=test_in rate=16000 channels=1 format=s16le"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(100):
        if subprocess.run(["pactl", "info"], env=env, capture_output=True, check=False).returncode == 0:
            break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("pulseaudio did not start")
    yield env, proc
    proc.terminate()
    proc.wait(timeout=10)


def mic(*args, env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", NO_TORCH, "mic", *map(str, args)], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_the_virtual_mic_carries_what_run_writes(server, tmp_path) -> None:
    env, _ = server
    listing = subprocess.run([sys.executable, "-c", NO_TORCH, "mic", "--list"], env=env, capture_output=True,
                             text=True, check=False)  # fmt: skip
    assert listing.returncode == 0 and "test_in.monitor" in listing.stdout and "PulseAudio" in listing.stdout
    stats_path = tmp_path / "mic.json"
    proc = mic("--input", "test_in.monitor", "--duration", "12", "--stats", stats_path, env=env)
    for _ in range(100):  # the virtual mic appears in the server's sources
        out = subprocess.run(["pactl", "list", "short", "sources"], env=env, capture_output=True, text=True).stdout
        if "edge_pse_mic\t" in out:
            break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(f"no virtual mic: {proc.communicate()[1][-2000:]}")
    names = subprocess.run(["pactl", "list", "sources"], env=env, capture_output=True, text=True).stdout
    assert "Description: edge-pse (mic)" in names
    rec = tmp_path / "rec.wav"
    recorder = subprocess.Popen(
        ["parecord", "--device=edge_pse_mic", "--rate=16000", "--channels=1", "--format=s16le",
         "--file-format=wav", str(rec)], env=env,
    )  # fmt: skip
    time.sleep(0.5)
    subprocess.run(["paplay", "--device=test_in", str(demo.path(demo.MIXTURE))], env=env, check=True, timeout=30)
    time.sleep(1.0)
    recorder.send_signal(signal.SIGINT)
    recorder.wait(timeout=10)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    stats = json.loads(stats_path.read_text())
    assert stats["mode"] == "mic" and stats["hops"] > 1000 and stats["deadline_misses"] <= stats["hops"] // 100
    added = stats["latency_ms"]["added"]
    print(f"\nmic: server-reported added latency {added} ms {stats['latency_ms']}, "
          f"misses {stats['deadline_misses']} of {stats['hops']}")  # fmt: skip
    assert added is not None and added < 40 + 25  # the model's 20 ms + 10 ms buffers, + the server's quantum
    # the virtual mic is gone with the run
    modules = subprocess.run(["pactl", "list", "short", "modules"], env=env, capture_output=True, text=True).stdout
    assert "edge_pse" not in modules

    # the recording is `edge-pse run` on the same mixture: one constant lag (no gap, no drift) from the second
    # second on (the first differs: the live model heard the silence before the playback), and it improves the
    # mixture as much as the file run does on that span
    ran = tmp_path / "run.wav"
    res = subprocess.run([sys.executable, "-c", NO_TORCH, "run", "--quiet", "--output", str(ran)], env=env,
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr
    got, want = (sf.read(p, dtype="float64")[0] for p in (rec, ran))
    mix, target = (sf.read(demo.path(p), dtype="float64")[0] for p in (demo.MIXTURE, demo.TARGET))
    lags, snrs = [], []
    for start in range(16_000, len(want) - 8_000, 16_000):
        r = want[start : start + 8_000]
        lo = max(0, start - 8_000)
        c = np.correlate(got[lo : start + 16_000], r, mode="valid")
        lag = lo + int(np.argmax(c)) - start
        s = got[start + lag : start + lag + 8_000]
        lags.append(lag)
        snrs.append(10 * np.log10(np.sum(r**2) / np.sum((s - r) ** 2)))
    assert len(set(lags)) == 1 and min(snrs) > 20, (lags, snrs)
    span = slice(16_000, len(want) - 8_000)
    aligned = got[span.start + lags[0] : span.stop + lags[0]]
    gain_mic = si_sdr(aligned, target[span]) - si_sdr(mix[span], target[span])
    gain_run = si_sdr(want[span], target[span]) - si_sdr(mix[span], target[span])
    print(f"mic: SNR vs run {min(snrs):.1f}-{max(snrs):.1f} dB; SI-SDRi mic {gain_mic:+.2f} dB, run {gain_run:+.2f}")
    assert abs(gain_mic - gain_run) < 0.5 and gain_mic > 0


def test_without_a_sound_server_the_mic_says_so_in_one_line(server) -> None:
    env, proc = server
    proc.terminate()
    proc.wait(timeout=10)
    res = mic("--duration", "1", env=env)
    _, err = res.communicate(timeout=60)
    assert res.returncode == 2 and "Traceback" not in err, err
    assert "no sound server answers" in err and len(err.strip().splitlines()) == 1, err


def test_install_and_uninstall_the_user_service(tmp_path) -> None:
    """Without systemctl (this test hides it) the unit is written and the enable commands are printed."""
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config"), "PATH": str(tmp_path / "nobin")}
    speaker = tmp_path / "me.spk"
    shutil.copy(demo.path(demo.SPEAKER), speaker)
    res = subprocess.run([sys.executable, "-c", NO_TORCH, "mic", "--install-service", "--speaker", str(speaker),
                          "--name", "desk"], env=env, capture_output=True, text=True, check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr
    unit = tmp_path / "config" / "systemd" / "user" / "edge-pse-mic.service"
    text = unit.read_text()
    assert f"ExecStart={sys.executable} -m edge_pse mic --name desk" in text and f"--speaker {speaker}" in text
    assert "WantedBy=default.target" in text and "systemctl --user enable --now edge-pse-mic.service" in res.stdout
    res = subprocess.run([sys.executable, "-c", NO_TORCH, "mic", "--uninstall-service"], env=env,
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert res.returncode == 0 and not unit.exists()
    res = subprocess.run([sys.executable, "-c", NO_TORCH, "mic", "--install-service", "--speaker", "/nonexistent.spk"],
                         env=env, capture_output=True, text=True, check=False)  # fmt: skip
    assert res.returncode == 2 and "would fail at every start" in res.stderr and not unit.exists()
