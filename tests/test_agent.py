"""The device agent over real loopback sockets: deploy, remote run (identical to a local run), bench,
rollback, a wrong token refused, bad frames dropping only their own connection, and a stream that survives
its connection being killed mid-way with output identical to an uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge_pse import demo
from edge_pse.bundle import Bundle, sha256_file
from edge_pse.errors import EdgePseError
from firmware_host import client
from firmware_host import protocol as P
from firmware_host.agent import Agent
from firmware_host.protocol import T

pytest.importorskip("torch")  # the fixture bundles are exported here with the project's exporter
pytest.importorskip("onnxruntime")

from tests.test_run_bundle import make_bundle

TOKEN = b"loopback-test-token"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return make_bundle(root / "tiny-a", seed=0), make_bundle(root / "tiny-b", seed=1)


def target(a: Agent) -> str:
    return f"127.0.0.1:{a.address[1]}"


def local_run(bundle: Path, wav: Path) -> np.ndarray:
    """What `edge-pse run --backend onnx` gives on this machine for the same bundle and speaker."""
    from edge_pse.bundle import Bundle
    from edge_pse.runtime import audio_io
    from edge_pse.runtime.backends import open_backend
    from edge_pse.runtime.runner import run_array
    from edge_pse.runtime.session import load_speaker

    b = Bundle.load(bundle)
    be = open_backend(b, "onnx")
    be.set_speaker(load_speaker(demo.path(demo.SPEAKER), b.spec))
    pcm, _ = run_array(be, audio_io.read_clip(wav, 16_000).pcm, hop=160, sample_rate=16_000, lag_hops=1)
    return pcm


def read_pcm(path: Path) -> np.ndarray:
    return sf.read(path, dtype="int16")[0]


def test_deploy_then_remote_run_equals_a_local_run(agent, bundles, tmp_path) -> None:
    t = target(agent)
    res = client.deploy(t, TOKEN, bundles[0])
    assert res["active"]["id"].endswith("tiny-a") and res["previous"] is None
    out = tmp_path / "remote.wav"
    stats = client.remote_run(t, TOKEN, demo.path(demo.MIXTURE), out, demo.path(demo.SPEAKER), backend="onnx")
    remote = read_pcm(out)
    assert len(remote) == sf.info(demo.path(demo.MIXTURE)).frames
    assert np.array_equal(remote, local_run(bundles[0], demo.path(demo.MIXTURE)))
    # on-device per-hop timings came back, one per hop
    assert stats["hops"] == -(-len(remote) // 160) + 1 and stats["backend"] == "onnx"
    assert 0 < stats["model_us"]["p50"] <= stats["per_hop_us"]["p50"]
    assert stats["reconnects"] == 0


def test_sessions_share_one_loaded_model_and_a_deploy_replaces_it(agent, bundles, tmp_path) -> None:
    """Each stream owns its state on one loaded model (runtime streams): a second session does not load the
    bundle again, and its output is still exactly a local run's; a new bundle gets a model of its own."""
    t = target(agent)
    client.deploy(t, TOKEN, bundles[0])
    for k in range(2):
        out = tmp_path / f"run{k}.wav"
        client.remote_run(t, TOKEN, demo.path(demo.MIXTURE), out, demo.path(demo.SPEAKER), backend="onnx")
        assert np.array_equal(read_pcm(out), local_run(bundles[0], demo.path(demo.MIXTURE)))
    assert client.status(t, TOKEN)["model_loads"] == 1
    client.deploy(t, TOKEN, bundles[1])
    out = tmp_path / "other.wav"
    client.remote_run(t, TOKEN, demo.path(demo.MIXTURE), out, demo.path(demo.SPEAKER), backend="onnx")
    assert np.array_equal(read_pcm(out), local_run(bundles[1], demo.path(demo.MIXTURE)))
    assert client.status(t, TOKEN)["model_loads"] == 2


def test_redeploy_and_rollback(agent, bundles, tmp_path) -> None:
    t = target(agent)
    with pytest.raises(EdgePseError, match="nothing to roll back"):
        client.rollback(t, TOKEN)
    client.deploy(t, TOKEN, bundles[0])
    res = client.deploy(t, TOKEN, bundles[1])
    assert res["active"]["id"].endswith("tiny-b") and res["previous"]["id"].endswith("tiny-a")
    res = client.rollback(t, TOKEN)
    assert res["active"]["id"].endswith("tiny-a") and res["previous"]["id"].endswith("tiny-b")
    out = tmp_path / "after-rollback.wav"
    client.remote_run(t, TOKEN, demo.path(demo.MIXTURE), out, demo.path(demo.SPEAKER), backend="onnx")
    assert np.array_equal(read_pcm(out), local_run(bundles[0], demo.path(demo.MIXTURE)))
    # only the active and previous bundles are kept on the device
    assert len(list((agent.store.root / "bundles").iterdir())) == 2


def test_a_bundle_corrupted_in_transit_is_refused_and_the_active_one_stays(agent, bundles) -> None:
    t = target(agent)
    client.deploy(t, TOKEN, bundles[0])
    files = client.bundle_files(bundles[1])
    listing = [{"path": rel, "bytes": p.stat().st_size, "sha256": sha256_file(p)} for p, rel in files]
    with client.Link(t, TOKEN) as link:
        link.request("deploy_begin", name="evil", files=listing)
        for i, (p, _) in enumerate(files):
            data = bytearray(p.read_bytes())
            if p.name == "model.onnx":
                data[len(data) // 2] ^= 0xFF  # one flipped byte on the way
            link.send(P.pack_chunk(i, 0, bytes(data[: P.CHUNK_BYTES])))
            for off in range(P.CHUNK_BYTES, len(data), P.CHUNK_BYTES):
                link.send(P.pack_chunk(i, off, bytes(data[off : off + P.CHUNK_BYTES])))
        with pytest.raises(EdgePseError, match=r"model.onnx: sha256 mismatch"):
            link.request("deploy_commit")
    st = client.status(t, TOKEN)
    assert st["active"]["id"].endswith("tiny-a")
    assert not any((agent.store.root / "staging").iterdir())


def test_wrong_token_is_refused(agent, bundles) -> None:
    with pytest.raises(EdgePseError, match="refused the connection: authentication failed"):
        client.status(target(agent), b"not-the-token")
    with pytest.raises(EdgePseError, match="refused"):
        client.deploy(target(agent), b"not-the-token", bundles[0])
    assert agent.store.current is None


def _raw(a: Agent) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", a.address[1]), timeout=5)
    P.expect(P.recv_frame(s), T.HELLO)
    return s


def _closed(s: socket.socket | client.Link) -> bool:
    """True when the agent closed the connection (after at most one ERROR frame)."""
    recv = s.recv if isinstance(s, client.Link) else lambda: P.recv_frame(s)
    try:
        while True:
            f = recv()
            if f.type != T.ERROR:
                return False
    except TimeoutError:  # an OSError too, but a hang is not a close: the agent must drop the connection
        return False
    except (ConnectionError, OSError):
        return True


@pytest.mark.parametrize(
    "junk",
    [
        b"GET / HTTP/1.1\r\nHost: pi\r\n\r\n",  # not our protocol
        P.HEADER.pack(P.MAGIC, P.VERSION, int(T.AUTH), 2**31),  # a 2 GiB length: never allocated
        P.HEADER.pack(P.MAGIC, P.VERSION, int(T.AUTH), 5) + b"{oops",  # malformed JSON
        P.HEADER.pack(P.MAGIC, 9, int(T.AUTH), 2) + b"{}",  # another protocol version
    ],
)
def test_bad_frames_close_that_connection_and_the_agent_serves_others(agent, bundles, junk: bytes) -> None:
    t = target(agent)
    client.deploy(t, TOKEN, bundles[0])
    with client.Link(t, TOKEN) as good:  # already authenticated when the junk arrives
        bad = _raw(agent)
        bad.sendall(junk)
        assert _closed(bad)
        bad.close()
        assert good.request("status")["active"]["id"].endswith("tiny-a")
    assert client.status(t, TOKEN)["protocol"] == P.VERSION  # and new connections still work


def test_oversized_and_malformed_frames_after_auth_drop_only_that_connection(agent, bundles) -> None:
    t = target(agent)
    client.deploy(t, TOKEN, bundles[0])
    for junk in (
        P.HEADER.pack(P.MAGIC, P.VERSION, int(T.REQUEST), 10 * 2**20),
        P.HEADER.pack(P.MAGIC, P.VERSION, int(T.HOP), 8) + bytes(8),  # a hop of the wrong size
        P.pack_hop(0, np.zeros(160, np.float32)),  # a hop with no stream open
        P.pack_chunk(0, 0, b"x"),  # a chunk outside a deploy
    ):
        with client.Link(t, TOKEN) as link:
            link.send(junk)  # well authenticated, but malformed inside
            assert _closed(link)
    assert client.status(t, TOKEN)["active"]["id"].endswith("tiny-a")


class KillingProxy:
    """A TCP relay to the agent that kills a connection (both directions, abruptly) once `cut` bytes have gone
    from the client to the agent over it, once: a link dropping mid-stream."""

    def __init__(self, upstream: tuple[str, int], cut: int) -> None:
        self.upstream, self.cut = upstream, cut
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connections = 0
        self.killed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.server.accept()
            except OSError:
                return
            u = socket.create_connection(self.upstream)
            self.connections += 1
            limit = None if self.killed.is_set() else self.cut
            threading.Thread(target=self._pump, args=(c, u, limit), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c, None), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                if limit is not None and sent + len(data) >= limit:
                    dst.sendall(data[: limit - sent])
                    self.killed.set()
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.server.close()


def test_a_stream_killed_mid_way_resumes_without_losing_or_duplicating_audio(agent, bundles, tmp_path) -> None:
    t = target(agent)
    client.deploy(t, TOKEN, bundles[0])
    straight = tmp_path / "straight.wav"
    client.remote_run(t, TOKEN, demo.path(demo.MIXTURE), straight, demo.path(demo.SPEAKER), backend="onnx")
    hop_frame = P.HEADER.size + P.IN_HOP.size + 4 * 160 + P.TAG_BYTES
    # handshake + open_stream are ~3 KB; cut in the middle of the 200th hop frame, mid-file
    proxy = KillingProxy(("127.0.0.1", agent.address[1]), cut=4096 + 200 * hop_frame + 100)
    try:
        cut = tmp_path / "resumed.wav"
        stats = client.remote_run(
            f"127.0.0.1:{proxy.port}", TOKEN, demo.path(demo.MIXTURE), cut, demo.path(demo.SPEAKER), backend="onnx"
        )
    finally:
        proxy.close()
    assert proxy.killed.is_set() and stats["reconnects"] >= 1
    assert np.array_equal(read_pcm(cut), read_pcm(straight))


def test_resume_refuses_an_unknown_session_and_a_gap(agent, bundles) -> None:
    t = target(agent)
    client.deploy(t, TOKEN, bundles[0])
    with client.Link(t, TOKEN) as link, pytest.raises(client.AgentRefused, match="unknown or expired") as err:
        link.request("resume_stream", session="0" * 32, received=0)
    assert err.value.code == "session"  # what the client's retry loop branches on (not the message's words)
    with client.Link(t, TOKEN) as link:
        info = link.request("open_stream", speaker=[0.0625] * 256, backend="onnx")
        link.send(P.pack_hop(0, np.zeros(160, np.float32)))
        P.expect(link.recv(), T.OUT)
        session = info["session"]
    with client.Link(t, TOKEN) as link:
        with pytest.raises(client.AgentRefused, match="cannot resume from output hop 5") as err:
            link.request("resume_stream", session=session, received=5)
        assert err.value.code == "session"
        assert link.request("resume_stream", session=session, received=1)["processed"] == 1
        link.send(P.pack_hop(3, np.zeros(160, np.float32)))  # skips hops 1 and 2: audio would be lost
        assert _closed(link)


def test_remote_bench_reports_measurements_beside_the_labelled_prediction(agent, bundles, tmp_path) -> None:
    t = target(agent)
    client.deploy(t, TOKEN, bundles[0])
    merged = client.remote_bench([t], TOKEN, tmp_path / "report", backends=["onnx"], hops=200)
    rep = merged["devices"][t]
    cell = rep["probe"][0]
    assert cell["backend"] == "onnx" and cell["hops"] == 200 and cell["per_hop_us"]["p50"] > 0
    assert set(cell["prediction"]) == {"rpi4", "rpi5"}
    assert "PREDICTION" in cell["prediction"]["rpi4"]["label"]
    md = (tmp_path / "report" / "remote_report.md").read_text()
    assert "predicted Pi 4 us" in md and "not a measurement" in md
    assert json.loads((tmp_path / "report" / "remote_report.json").read_text())["devices"][t]["probe"]
    # the device's own `edge-pse bench` ran there and its report came back, filed under the device
    bench = rep["bench"]
    assert bench["available"] and bench["exit_code"] == 0, bench.get("stderr")
    pulled = json.loads((tmp_path / "report" / t.replace(":", "_") / "report.json").read_text())
    assert pulled["cells"], pulled


def cli(*args: str, token: str = TOKEN.decode(), **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGE_PSE_TOKEN": token}
    return subprocess.run(
        [sys.executable, "-m", "edge_pse", *args], capture_output=True, text=True, env=env, timeout=300, **kw
    )


def test_cli_agent_and_fleet_deploy(bundles, tmp_path) -> None:
    """Two agents started with `edge-pse agent`, one deploy to both at once, then a dead third target."""
    env = {**os.environ, "EDGE_PSE_TOKEN": TOKEN.decode()}
    procs, targets = [], []
    try:
        for i in range(2):
            p = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "edge_pse",
                    "agent",
                    "--listen",
                    "127.0.0.1:0",
                    "--root",
                    str(tmp_path / f"a{i}"),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            procs.append(p)
            targets.append(json.loads(p.stdout.readline())["listening"])
        res = cli("deploy", "--device", "rpi", "--target", ",".join(targets), str(bundles[0]))
        assert res.returncode == 0, res.stderr
        for t in targets:
            assert f"{t}: active" in res.stdout and "tiny-a" in res.stdout
        out = tmp_path / "fleet-bench"
        res = cli("bench", "--target", ",".join(targets), "--backends", "onnx", "--hops", "100", "--output", str(out))
        assert res.returncode == 0, res.stderr
        merged = json.loads((out / "remote_report.json").read_text())
        assert sorted(merged["devices"]) == sorted(targets) and "predicted Pi 4 us" in res.stdout
        dead = socket.create_server(("127.0.0.1", 0))
        dead_target = f"127.0.0.1:{dead.getsockname()[1]}"
        dead.close()
        res = cli("deploy", "--target", targets[0], "--target", dead_target, str(bundles[1]), "--json")
        assert res.returncode == 2
        assert f"1 of 2 devices failed: {dead_target}" in res.stderr and "Traceback" not in res.stderr
        assert json.loads(res.stdout)[targets[0]]["result"]["active"]["id"].endswith("tiny-b")
        res = cli("deploy", "--target", targets[0], "--target", targets[1], "--rollback")
        assert res.returncode == 2 and "nothing to roll back" in res.stdout  # the second agent had one deploy
        res = cli("deploy", "--target", targets[0], "--rollback", token="wrong-token-here-5c1e8a07")
        assert res.returncode == 2 and "authentication failed" in res.stdout
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)


def test_cli_agent_needs_a_token(tmp_path) -> None:
    res = cli("agent", "--root", str(tmp_path), token="")
    assert res.returncode == 2 and "no usable shared token" in res.stderr


def test_cli_run_target_streams_a_file_through_the_device_like_a_local_run(agent, bundles, tmp_path) -> None:
    """`edge-pse run --target` as users call it: the audio and the stats land together, the audio equals a
    local run of the same bundle and backend, and the device's session is closed afterwards."""
    t = target(agent)
    client.deploy(t, TOKEN, bundles[0])
    out, stats_path = tmp_path / "remote.wav", tmp_path / "stats.json"
    res = cli("run", "--target", t, "--backend", "onnx", "--input", str(demo.path(demo.MIXTURE)),
              "--output", str(out), "--stats", str(stats_path), "--quiet")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert np.array_equal(read_pcm(out), local_run(bundles[0], demo.path(demo.MIXTURE)))
    stats = json.loads(stats_path.read_text())
    assert stats["mode"] == "remote-file" and stats["device_profile"] == "host" and stats["reconnects"] == 0
    assert stats["output_frames"] == sf.info(demo.path(demo.MIXTURE)).frames
    assert not agent.sessions  # closed when the run ended, not left to expire
    res = cli("run", "--target", t, "--input", str(out), "--output", str(out))
    assert res.returncode == 2 and "it would be overwritten" in res.stderr


def test_an_input_error_of_a_remote_run_is_the_input_error_not_silence(agent, bundles, tmp_path) -> None:
    """A FLAC cut in half, a float WAV with a NaN at 0.7 s, a header that claims 50 days: the remote run fails as
    the local one does (the reader's message, no output file), instead of taking the reader's error for a
    dropped link, reconnecting and padding the rest of the file with zeros (exit 0 before)."""
    from tests.test_run import bomb_flac

    t = target(agent)
    client.deploy(t, TOKEN, bundles[0])
    x, _ = sf.read(demo.path(demo.MIXTURE), dtype="float32")
    cut = tmp_path / "cut.flac"
    sf.write(cut, x, 16000, subtype="PCM_16", format="FLAC")
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    nan = tmp_path / "nan.wav"
    y = x.copy()
    y[int(0.7 * 16000)] = np.nan
    sf.write(nan, y, 16000, subtype="FLOAT")
    bomb = bomb_flac(tmp_path / "bomb.flac")
    for bad, message in ((cut, "truncated"), (nan, "NaN/Inf samples (first at 0.700 s)"), (bomb, "truncated")):
        out = tmp_path / "out.wav"
        with pytest.raises(EdgePseError, match=re.escape(message)):
            client.remote_run(t, TOKEN, bad, out, demo.path(demo.SPEAKER), backend="onnx")
        assert not out.exists()
    assert client.status(t, TOKEN)["sessions"] == 0  # every failed run closed its session on the device


def test_an_audio_frame_with_a_wrong_tag_closes_the_stream_and_gets_no_output(agent, bundles) -> None:
    """After the login every HOP is sealed: one with a forged tag (a relay that knows the framing, not the key)
    gets no OUT back; the agent answers with a protocol error and drops the connection."""
    t = target(agent)
    client.deploy(t, TOKEN, bundles[0])
    link = client.Link(t, TOKEN)
    try:
        link.request("open_stream", speaker=[0.0625] * 256, backend="onnx")
        link.send(P.pack_hop(0, np.zeros(160, np.float32)))
        assert P.unpack_out(P.expect(link.recv(), T.OUT).payload, 160)[0] == 0  # a sealed hop is answered
        forged = P.pack_hop(1, np.zeros(160, np.float32))
        link.sock.sendall(forged + bytes(P.TAG_BYTES))
        with pytest.raises((P.RemoteError, ConnectionError, OSError)) as err:
            P.expect(link.recv(), T.OUT)
        if isinstance(err.value, P.RemoteError):
            assert err.value.code == "protocol" and "failed authentication" in str(err.value)
            with pytest.raises((ConnectionError, OSError)):
                link.recv()
    finally:
        link.close()


def test_a_resent_hop_is_not_processed_twice(agent, bundles) -> None:
    """A hop sent again with a sequence number already processed (a client that resends after a reconnect) gets
    no second output and does not advance the model: the stream's outputs are what a stream without the
    duplicate gives, hop for hop."""
    t = target(agent)
    client.deploy(t, TOKEN, bundles[0])
    rng = np.random.default_rng(5)
    hops = (0.1 * rng.standard_normal((6, 160))).astype(np.float32)

    def stream(order: list[int]) -> dict[int, np.ndarray]:
        outs: dict[int, np.ndarray] = {}
        with client.Link(t, TOKEN) as link:
            link.request("open_stream", speaker=[0.0625] * 256, backend="onnx")
            for i in order:
                link.send(P.pack_hop(i, hops[i]))
            while len(outs) < len(hops):
                seq, _, _, y = P.unpack_out(P.expect(link.recv(), T.OUT).payload, 160)
                assert seq not in outs, f"hop {seq} answered twice"
                outs[seq] = y
            link.sock.settimeout(0.5)  # nothing more may come: a duplicate's output would be here
            with pytest.raises((TimeoutError, socket.timeout)):
                link.recv()
        return outs

    plain = stream([0, 1, 2, 3, 4, 5])
    resent = stream([0, 1, 2, 1, 2, 3, 4, 5])
    assert sorted(resent) == list(range(6))
    for i in range(6):
        np.testing.assert_array_equal(resent[i], plain[i])


def test_a_bundle_with_an_8_ms_hop_runs_locally_in_the_bench_and_through_the_agent(agent, tmp_path) -> None:
    """The stream contract comes from the bundle (bundle.StreamSpec), not from a 10 ms constant: a 128-sample hop
    runs in `run`, in `bench` and on the device (the agent refused any hop but 160 before)."""
    b8 = make_bundle(tmp_path / "tiny-8ms", seed=2, hop=128)
    assert Bundle.load(b8).spec.hop == 128
    local = tmp_path / "local.wav"
    res = subprocess.run(
        [sys.executable, "-m", "edge_pse", "run", "--model", str(b8), "--output", str(local), "--quiet",
         "--backend", "onnx"], capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    bench = subprocess.run(
        [sys.executable, "-m", "edge_pse", "bench", "--models", str(b8), "--backends", "onnx", "--threads", "1",
         "--hops", "40", "--warmup", "5", "--peers", "none", "--output", str(tmp_path / "rep")],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert bench.returncode == 0, bench.stderr[-2000:]
    cell = json.loads((tmp_path / "rep" / "report.json").read_text())["cells"][0]
    assert cell["hop"] == 128 and cell["latency_us"]["p50"] > 0
    t = target(agent)
    client.deploy(t, TOKEN, b8)
    remote = tmp_path / "remote.wav"
    client.remote_run(t, TOKEN, demo.path(demo.MIXTURE), remote, demo.path(demo.SPEAKER), backend="onnx")
    assert np.array_equal(read_pcm(remote), read_pcm(local)) and np.any(read_pcm(local) != 0)
