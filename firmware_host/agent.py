"""The device agent (`edge-pse agent`): serves deploys, audio streams and benches to authenticated hosts.

Runs on the Pi with only the torch-free runtime (bundle reading + LiteRT/ONNX backends). One thread per
connection; stream sessions outlive their connection so that a host whose link drops can reconnect and resume
exactly where it was: the agent keeps each session's model state, the number of input hops it has processed
and its last RESUME_WINDOW output hops (docs/protocol.md).
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_pse import __version__
from edge_pse.errors import EdgePseError
from firmware_host import protocol as P
from firmware_host.protocol import T
from firmware_host.store import Store, Upload

AUTH_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 120.0  # a connection silent this long is closed (its stream session stays resumable)
SESSION_TTL_S = 600.0  # a detached session is dropped after this long
MAX_SESSIONS = 8
MAX_CONNECTIONS = 32
RESUME_WINDOW = 512  # output hops kept per session for a resumed stream (5.12 s of audio)
WARMUP_HOPS = 5
REPORT_BYTES = 3 * 1024 * 1024  # bench report files returned in one REPLY (its cap is 4 MiB)


@dataclass
class StreamSession:
    """A stream's state on the device: the backend (model state), hops processed, recent outputs."""

    id: str
    backend: object
    info: dict
    processed: int = 0
    outputs: deque = field(default_factory=lambda: deque(maxlen=RESUME_WINDOW))  # encoded OUT frames
    lock: threading.Lock = field(default_factory=threading.Lock)
    owner: object = None  # the connection currently attached
    touched: float = field(default_factory=time.monotonic)


class Agent:
    def __init__(self, root: str | Path, token: bytes, host: str = "127.0.0.1", port: int = 0) -> None:
        self.store = Store(root)
        self.token = token
        self.sessions: dict[str, StreamSession] = {}
        self._lock = threading.RLock()
        self._conns = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._sock = socket.create_server((host, port), reuse_port=False)
        self._stop = threading.Event()
        self.address = self._sock.getsockname()[:2]

    # --- serving

    def serve_forever(self) -> None:
        self._sock.settimeout(0.5)
        while not self._stop.is_set():
            try:
                conn, peer = self._sock.accept()
            except TimeoutError:
                self._expire_sessions()
                continue
            except OSError:
                break
            if not self._conns.acquire(blocking=False):
                conn.close()  # at capacity: refuse rather than queue
                continue
            threading.Thread(target=self._serve_conn, args=(conn, peer), daemon=True).start()

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, daemon=True)
        t.start()
        return t

    def close(self) -> None:
        self._stop.set()
        self._sock.close()

    def _serve_conn(self, conn: socket.socket, peer) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        handler = _Connection(self, conn)
        try:
            conn.settimeout(AUTH_TIMEOUT_S)
            if handler.authenticate():
                conn.settimeout(IDLE_TIMEOUT_S)
                handler.loop()
        except P.ProtocolError as e:
            handler.send_error("protocol", str(e))
        except (ConnectionError, TimeoutError, OSError):
            pass
        finally:
            handler.detach()
            conn.close()
            self._conns.release()

    def _expire_sessions(self) -> None:
        now = time.monotonic()
        with self._lock:
            for sid, s in list(self.sessions.items()):
                if s.owner is None and now - s.touched > SESSION_TTL_S:
                    del self.sessions[sid]

    # --- operations

    def status(self) -> dict:
        from edge_pse.runtime.backends import BACKENDS

        return {
            "agent": __version__,
            "protocol": P.VERSION,
            "machine": machine_info(),
            "backends": [n for n in BACKENDS if _importable(n)],
            **self.store.describe(),
            "sessions": len(self.sessions),
        }

    def open_stream(self, req: dict) -> StreamSession:
        from edge_pse.runtime.backends import open_backend

        bundle = self.store.active_bundle()
        hop = int(bundle.manifest["hop"])
        if hop != P.HOP:
            raise EdgePseError(f"bundle hop {hop} differs from the protocol's {P.HOP}")
        spk = req.get("speaker")
        if not isinstance(spk, list) or len(spk) != int(bundle.manifest["speaker"]["dim"]):
            raise EdgePseError(f"speaker must be a list of {bundle.manifest['speaker']['dim']} floats")
        threads = req.get("threads") or 1
        if not isinstance(threads, int) or not 1 <= threads <= 64:
            raise EdgePseError("threads must be an int in 1..64")
        with self._lock:
            self._expire_sessions()
            if len(self.sessions) >= MAX_SESSIONS:
                raise EdgePseError(f"agent busy: {MAX_SESSIONS} stream sessions open")
        backend = open_backend(bundle, req.get("backend"), threads=threads, quantization=req.get("quantization"))
        backend.set_speaker(np.asarray(spk, dtype=np.float32))
        zeros = np.zeros(hop, np.float32)
        for _ in range(WARMUP_HOPS):
            backend.process(zeros)
        backend.reset()
        info = {
            "bundle": bundle.path.name,
            "preset": bundle.manifest.get("preset"),
            "backend": backend.name,
            "model_file": backend.entry.path if backend.entry else None,
            "quantization": backend.entry.quantization if backend.entry else "fp32",
            "threads": threads,
            "hop": hop,
            "sample_rate": int(bundle.manifest["sample_rate"]),
            "tolerance": bundle.tolerance,
            "resume_window": RESUME_WINDOW,
        }
        s = StreamSession(secrets.token_hex(16), backend, info)
        with self._lock:
            self.sessions[s.id] = s
        return s

    def bench(self, req: dict) -> dict:
        """Timings of the active bundle on this device (always) and the full `edge-pse bench` report when
        the bench module is installed here."""
        bundle = self.store.active_bundle()
        hops = req.get("hops", 2000)
        if not isinstance(hops, int) or not 10 <= hops <= 100_000:
            raise EdgePseError("hops must be an int in 10..100000")
        backends = req.get("backends") or [None]
        threads = req.get("threads") or [1]
        cells = [_probe(bundle, b, t, hops) for b in backends for t in threads]
        report = {"machine": machine_info(), "bundle": bundle.path.name, "preset": bundle.manifest.get("preset")}
        report["manifest"] = {k: bundle.manifest[k] for k in ("config", "hop", "sample_rate") if k in bundle.manifest}
        report["manifest"]["costs"] = bundle.manifest.get("costs", {})
        report["probe"] = cells
        report["bench"] = _run_bench_cli(bundle.path, req)
        return report


def _importable(backend: str) -> bool:
    import importlib.util

    mod = {"litert": "ai_edge_litert", "onnx": "onnxruntime", "executorch": "executorch", "torch": "torch"}[backend]
    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


def _probe(bundle, backend: str | None, threads: int, hops: int) -> dict:
    """Per-hop model-call time after warm-up on a fixed pseudo-random signal: the numbers a deploy decision needs."""
    from edge_pse.runtime.backends import open_backend

    t0 = time.perf_counter_ns()
    be = open_backend(bundle, backend, threads=threads)
    load_ms = (time.perf_counter_ns() - t0) / 1e6
    rng = np.random.default_rng(0)
    be.set_speaker(rng.random(int(bundle.manifest["speaker"]["dim"])).astype(np.float32))
    x = (0.1 * rng.standard_normal(int(bundle.manifest["hop"]) * 64)).astype(np.float32).reshape(64, -1)
    for i in range(WARMUP_HOPS * 4):
        be.process(x[i % 64])
    ns = np.empty(hops, np.int64)
    clock = time.perf_counter_ns
    for i in range(hops):
        t = clock()
        be.process(x[i % 64])
        ns[i] = clock() - t
    us = ns / 1e3
    p50, p90, p99 = np.percentile(us, [50, 90, 99])
    hop_us = 1e6 * int(bundle.manifest["hop"]) / int(bundle.manifest["sample_rate"])
    return {
        "backend": be.name,
        "model_file": be.entry.path if be.entry else None,
        "quantization": be.entry.quantization if be.entry else "fp32",
        "threads": threads,
        "hops": hops,
        "load_ms": round(load_ms, 2),
        "per_hop_us": {"p50": round(p50, 2), "p90": round(p90, 2), "p99": round(p99, 2), "max": round(us.max(), 2)},
        "rtf": round(float(us.mean()) / hop_us, 5),
    }


def _run_bench_cli(bundle_path: Path, req: dict) -> dict:
    """`edge-pse bench` (latency cells) on this device over the active bundle, if the bench is installed here;
    its report.json/.md (and .html while the reply stays under REPORT_BYTES) come back in the reply."""
    import importlib.util

    if importlib.util.find_spec("edge_pse.bench") is None:
        return {"available": False, "reason": "edge_pse.bench is not installed on the device"}
    with tempfile.TemporaryDirectory(prefix="edge-pse-bench-") as out:
        cmd = [sys.executable, "-m", "edge_pse", "bench", "--models", str(bundle_path), "--output", out]
        cmd += ["--teacher", "none", "--hops", str(int(req.get("hops", 2000)))]
        if req.get("device"):
            cmd += ["--device", str(req["device"])]
        if req.get("backends"):
            cmd += ["--backends", *map(str, req["backends"])]
        if req.get("threads"):
            cmd += ["--threads", ",".join(str(int(t)) for t in req["threads"])]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=False)
        files, budget = {}, REPORT_BYTES
        for name in ("report.json", "report.md", "report.html"):
            p = Path(out) / name
            if p.is_file() and p.stat().st_size < budget:
                files[name] = p.read_text()
                budget -= p.stat().st_size
        return {"available": True, "exit_code": res.returncode, "stderr": res.stderr[-4000:], "files": files}


def machine_info() -> dict:
    info = {
        "hostname": platform.node(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cores": os.cpu_count(),
    }
    try:
        text = Path("/proc/cpuinfo").read_text()
        for key in ("model name", "Model", "CPU part"):
            for line in text.splitlines():
                if line.startswith(key):
                    info.setdefault("cpu", line.split(":", 1)[1].strip())
    except OSError:
        pass
    try:
        info["board"] = Path("/proc/device-tree/model").read_text().strip("\0\n")
    except OSError:
        pass
    return info


class _Connection:
    """One client connection: authentication, then requests, uploads and hop frames."""

    def __init__(self, agent: Agent, conn: socket.socket) -> None:
        self.agent, self.conn = agent, conn
        self.upload: Upload | None = None
        self.session: StreamSession | None = None

    def send_error(self, code: str, message: str) -> None:
        try:
            P.send(self.conn, P.encode_json(T.ERROR, {"code": code, "message": message[:4000]}))
        except OSError:
            pass

    def authenticate(self) -> bool:
        nonce = P.new_nonce()
        P.send(self.conn, P.encode_json(T.HELLO, {"protocol": P.VERSION, "agent": __version__, "nonce": nonce}))
        msg = P.recv_frame(self.conn)
        if msg.type != T.AUTH:
            raise P.ProtocolError(f"expected AUTH, got {msg.type.name}")
        auth = msg.json()
        client_nonce = auth.get("nonce")
        if not isinstance(client_nonce, str) or len(client_nonce) != 2 * P.NONCE_BYTES:
            raise P.ProtocolError("AUTH needs the client's nonce")
        if not P.check_mac(P.auth_mac(self.agent.token, b"client", nonce, client_nonce), auth.get("mac")):
            self.send_error("auth", "authentication failed: wrong token")
            return False
        P.send(
            self.conn, P.encode_json(T.AUTH_OK, {"mac": P.auth_mac(self.agent.token, b"agent", client_nonce, nonce)})
        )
        return True

    def loop(self) -> None:
        while True:
            try:
                frame = P.recv_frame(self.conn)
            except ConnectionError:
                return
            if frame.type == T.HOP:
                self._hop(frame.payload)
            elif frame.type == T.CHUNK:
                if self.upload is None:
                    raise P.ProtocolError("CHUNK outside a deploy")
                try:
                    self.upload.write(*P.unpack_chunk(frame.payload))
                except EdgePseError as e:
                    self.agent.store.abort(self.upload)
                    self.upload = None
                    raise P.ProtocolError(str(e)) from None
            elif frame.type == T.REQUEST:
                self._request(frame.json())
            else:
                raise P.ProtocolError(f"unexpected {frame.type.name} frame from a client")

    def _reply(self, obj: dict) -> None:
        P.send(self.conn, P.encode_json(T.REPLY, obj))

    def _request(self, req: dict) -> None:
        op = req.get("op")
        try:
            if op == "status":
                self._reply(self.agent.status())
            elif op == "deploy_begin":
                if self.upload is not None:
                    self.agent.store.abort(self.upload)
                self.upload = self.agent.store.begin(req.get("name"), req.get("files"))
                self._reply({"ok": True, "chunk_bytes": P.CHUNK_BYTES})
            elif op == "deploy_commit":
                if self.upload is None:
                    raise EdgePseError("deploy_commit without deploy_begin")
                up, self.upload = self.upload, None
                self.agent.store.commit(up)
                self._reply({"ok": True, **self.agent.store.describe()})
            elif op == "rollback":
                self.agent.store.rollback()
                self._reply({"ok": True, **self.agent.store.describe()})
            elif op == "open_stream":
                self.detach()
                self.session = self.agent.open_stream(req)
                self.session.owner = self
                self._reply({"session": self.session.id, "processed": 0, **self.session.info})
            elif op == "resume_stream":
                self._resume(req)
            elif op == "close_stream":
                s = self.session
                if s is None:
                    raise EdgePseError("no stream open on this connection")
                with self.agent._lock:
                    self.agent.sessions.pop(s.id, None)
                self.session = None
                self._reply({"ok": True, "processed": s.processed})
            elif op == "bench":
                self._reply(self.agent.bench(req))
            else:
                raise EdgePseError(f"unknown op {op!r}")
        except EdgePseError as e:
            self.send_error("request", str(e))
        except (P.ProtocolError, OSError):
            raise
        except Exception as e:  # a bug or a runtime failure: tell the client, keep serving
            self.send_error("internal", f"{op} failed on the device: {type(e).__name__}: {e}")

    def _resume(self, req: dict) -> None:
        """Reattach a session: resend the outputs the client lacks, tell it which input hop to send next."""
        with self.agent._lock:
            s = self.agent.sessions.get(str(req.get("session")))
        if s is None:
            raise EdgePseError("unknown or expired stream session; start the stream again")
        received = req.get("received")
        with s.lock:
            kept = len(s.outputs)
            if not isinstance(received, int) or not s.processed - kept <= received <= s.processed:
                raise EdgePseError(
                    f"cannot resume from output hop {received!r}: the agent has processed {s.processed} hops "
                    f"and keeps the last {kept}"
                )
            self.detach()
            s.owner, self.session = self, s  # a half-dead old connection loses the session here
            s.touched = time.monotonic()
            self._reply({"session": s.id, "processed": s.processed, **s.info})
            missing = list(s.outputs)[kept - (s.processed - received) :] if s.processed > received else []
            for frame in missing:
                P.send(self.conn, frame)

    def _hop(self, payload: bytes) -> None:
        s = self.session
        if s is None:
            raise P.ProtocolError("HOP frame without an open stream")
        seq, x = P.unpack_hop(payload)
        with s.lock:
            if s.owner is not self:
                raise P.ProtocolError("this stream was resumed on another connection")
            if seq < s.processed:
                return  # a duplicate sent before a reconnect: already processed, its output was resent
            if seq > s.processed:
                raise P.ProtocolError(f"hop {seq} skips ahead of hop {s.processed}: audio would be lost")
            t0 = time.perf_counter_ns()  # the hop's device time: the model call and packing its reply
            y = s.backend.process(x)
            t1 = time.perf_counter_ns()
            frame = P.pack_out(seq, t1 - t0, time.perf_counter_ns() - t0, y)
            s.outputs.append(frame)
            s.processed += 1
            s.touched = time.monotonic()
        P.send(self.conn, frame)

    def detach(self) -> None:
        if self.upload is not None:
            self.agent.store.abort(self.upload)
            self.upload = None
        s = self.session
        if s is not None:
            with s.lock:
                if s.owner is self:
                    s.owner = None
                    s.touched = time.monotonic()
        self.session = None


def serve(root: str | Path, token: bytes, host: str, port: int, ready=None) -> None:
    agent = Agent(root, token, host, port)
    h, p = agent.address
    msg = {"listening": f"{h}:{p}", "root": str(Path(root).resolve()), "pid": os.getpid()}
    print(json.dumps(msg), flush=True)
    if ready is not None:
        ready(agent)
    try:
        agent.serve_forever()
    finally:
        agent.close()
