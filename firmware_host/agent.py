"""The device agent (`edge-pse agent`): serves deploys, audio streams and benches to authenticated hosts.

Runs on the Pi with only the torch-free runtime (bundle reading + LiteRT/ONNX backends). One thread per
connection; stream sessions outlive their connection so that a host whose link drops can reconnect and resume
exactly where it was: the agent keeps each session's model state, the number of input hops it has processed
and its last RESUME_WINDOW output hops (docs/protocol.md).

Admission (`Gate`): a login must finish within HANDSHAKE_TIMEOUT_S in all (a monotonic deadline, not per
recv); logins in progress have their own pool with a per-address share, and a newcomer is never refused for
want of room: it evicts the oldest login of its own address when that address holds its share, else the
oldest of the address holding the most (the evicted login is told why). Logged-in connections have their own
pool. A correct token is never refused; wrong ones are answered later and later (`failure_delay`). So a peer
without the token, even one on the host's own address (an SSH tunnel, NAT), only delays a login that
finishes within its round trip.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import itertools
import json
import logging
import math
import os
import re
import secrets
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_pse import __version__
from edge_pse.bench.machine import machine_info  # one description of a machine for every report
from edge_pse.errors import EdgePseError
from edge_pse.runtime.session import WARMUP_HOPS, warm_up  # the same warm-up as a local session
from firmware_host import protocol as P
from firmware_host.protocol import T
from firmware_host.store import Store, Upload

MAX_MODELS = 4  # loaded models kept for new streams (per backend, threads and quantization)
HANDSHAKE_TIMEOUT_S = 5.0  # the whole login (HELLO to AUTH), however the peer drips its bytes
IDLE_TIMEOUT_S = 120.0  # a connection silent this long is closed (its stream session stays resumable)
SESSION_TTL_S = 60.0  # the resume window: a session whose connection dropped is kept this long, then freed
MAX_SESSIONS = 8
MAX_CONNECTIONS = 32  # logged-in connections
MAX_PENDING = 128  # connections still logging in: a pool of their own (a socket and at most 4 KiB each)
MAX_PENDING_PER_ADDRESS = 64  # an address holding this many has its oldest evicted for its newcomer
LISTEN_BACKLOG = 512  # the kernel's queue before accept (capped by net.core.somaxconn): a full one drops SYNs
MAX_FAILED_LOGINS = 5  # per address within FAILED_LOGIN_WINDOW_S; past them wrong tokens are answered later
FAILED_LOGIN_WINDOW_S = 60.0
FAILURE_DELAY_S = (0.25, 4.0)  # the first delayed failure's wait, doubling per failure up to the second
MAX_TRACKED_ADDRESSES = 4096
RESUME_WINDOW = 512  # output hops kept per session for a resumed stream (5.12 s of audio)
MAX_THREADS = 64
REPORT_BYTES = 3 * 1024 * 1024  # bench report files returned in one REPLY (its cap is 4 MiB)
# accept() failures that pass (descriptor or memory exhaustion, a peer that gave up while queued): back off, go on
TRANSIENT_ACCEPT_ERRORS = {
    errno.EMFILE,
    errno.ENFILE,
    errno.ENOBUFS,
    errno.ENOMEM,
    errno.ECONNABORTED,
    errno.EPROTO,
    errno.EPERM,
    errno.EINTR,
    errno.EAGAIN,
    errno.ENETDOWN,
    errno.EHOSTUNREACH,
}
_DEVICE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
log = logging.getLogger("edge_pse.agent")


class SessionGone(EdgePseError):
    """The stream session the client names is unknown, expired or cannot resume where it asks: retrying the
    same request cannot help (ERROR code "session"; the client branches on the code, not the words)."""


class Busy(EdgePseError):
    """The agent cannot take this now; `retry_after_s` says when it expects to (None: when a stream ends)."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class StreamSession:
    """A stream's state on the device: its stream on the loaded model, hops processed, recent outputs."""

    id: str
    backend: object  # a runtime.backends.base.Stream: this session's speaker and model state
    info: dict
    processed: int = 0
    outputs: deque = field(default_factory=lambda: deque(maxlen=RESUME_WINDOW))  # encoded OUT frames
    lock: threading.Lock = field(default_factory=threading.Lock)
    owner: object = None  # the connection currently attached
    touched: float = field(default_factory=time.monotonic)


def address_key(host: str) -> str:
    """Whom a connection counts against: its IPv4 address, or its IPv6 /64 (one host often holds a whole /64)."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass
class _Login:
    """A login in progress, read by the selector: the HELLO's nonce, and the AUTH frame as it comes."""

    conn: socket.socket
    key: str
    ticket: int
    nonce: str
    deadline: float
    buf: bytearray = field(default_factory=bytearray)
    need: int = P.HEADER.size


@dataclass
class _Pending:
    sock: socket.socket
    key: str


class Gate:
    """Admission control (thread-safe): a pool for logins in progress with a per-address cap, a pool for
    logged-in connections, and a sliding window of failed logins per address."""

    def __init__(self, max_pending: int, per_address: int, max_connections: int) -> None:
        self.max_pending, self.per_address, self.max_connections = max_pending, per_address, max_connections
        self._lock = threading.Lock()
        self._gone = threading.Condition(self._lock)  # notified when a login leaves the pool (evicted)
        self._pending: dict[int, _Pending] = {}  # ticket -> login in progress; tickets grow with time
        self._tickets = itertools.count()
        self._connections = 0
        self._failures: dict[str, deque[float]] = {}

    def admit(self, sock: socket.socket, key: str) -> tuple[int, socket.socket | None]:
        """(ticket, evicted): every connection may start a login. One is evicted for it when its address holds
        its share (that address's oldest) or the pool is full (the oldest of the address holding the most).
        So a crowd of slow logins, even from the host's own address, delays a fast login by at most its own
        round trip: the newcomer is the last of its address to go."""
        with self._lock:
            evicted = None
            mine = [t for t, p in self._pending.items() if p.key == key]
            if len(mine) >= self.per_address:
                evicted = self._pending.pop(min(mine)).sock
            elif len(self._pending) >= self.max_pending:
                evicted = self._pending.pop(self._victim()).sock
            if evicted is not None:
                self._gone.notify_all()
            ticket = next(self._tickets)
            self._pending[ticket] = _Pending(sock, key)
            return ticket, evicted

    def hold(self, ticket: int, seconds: float) -> None:
        """Wait `seconds`, or less if this login is evicted meanwhile (its thread then ends at once)."""
        with self._gone:
            self._gone.wait_for(lambda: ticket not in self._pending, timeout=seconds)

    def _victim(self) -> int:
        """The ticket to evict: the oldest login of the address with the most logins in progress."""
        counts = Counter(p.key for p in self._pending.values())
        return min(self._pending, key=lambda t: (-counts[self._pending[t].key], t))

    def evict(self) -> socket.socket | None:
        """Drop one login in progress (to free a descriptor when accept() runs out of them)."""
        with self._lock:
            if not self._pending:
                return None
            self._gone.notify_all()
            return self._pending.pop(self._victim()).sock

    def logged_in(self, ticket: int) -> str | None:
        """Move a login to the logged-in pool; the reason it cannot (evicted, pool full), or None."""
        with self._lock:
            if self._pending.pop(ticket, None) is None:
                return "the login took too long (the agent dropped it for other connections)"
            if self._connections >= self.max_connections:
                return f"agent busy: {self.max_connections} connections open; try again when one closes"
            self._connections += 1
            return None

    def release(self, ticket: int, logged_in: bool) -> None:
        with self._lock:
            self._pending.pop(ticket, None)
            if logged_in:
                self._connections -= 1

    def failed_login(self, key: str) -> int:
        """Record a failed login from `key`; how many it has in the window now."""
        now = time.monotonic()
        with self._lock:
            q = self._failures.pop(key, None) or deque()
            while q and q[0] < now - FAILED_LOGIN_WINDOW_S:
                q.popleft()
            q.append(now)
            self._failures[key] = q  # re-inserted: the dict stays ordered by last failure
            self._prune(now)
            return len(q)

    @staticmethod
    def failure_delay(failures: int) -> float:
        """How long a wrong token's answer waits, given the address's failures in the window (this one included):
        none for the first MAX_FAILED_LOGINS, then FAILURE_DELAY_S[0] doubling up to FAILURE_DELAY_S[1]. A
        guesser is slowed; a host on the same address with the right token is never refused or delayed."""
        if failures <= MAX_FAILED_LOGINS:
            return 0.0
        first, most = FAILURE_DELAY_S
        return min(most, first * 2.0 ** min(failures - MAX_FAILED_LOGINS - 1, 16))

    def _prune(self, now: float) -> None:
        """Bound the failure table: forget addresses whose failures aged out, then the least recent ones."""
        if len(self._failures) <= MAX_TRACKED_ADDRESSES:
            return
        for k in [k for k, q in self._failures.items() if not q or q[-1] < now - FAILED_LOGIN_WINDOW_S]:
            del self._failures[k]
        while len(self._failures) > MAX_TRACKED_ADDRESSES:
            del self._failures[next(iter(self._failures))]


def _shutdown(sock: socket.socket) -> None:
    """Wake the thread blocked on `sock` (its recv returns) without closing the descriptor under it."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def loads_here(staged: Path) -> None:
    """Refuse a staged bundle whose model files do not load and run a hop in the runtimes installed here (a
    truncated model.tflite with its digests resealed was activated, and every run failed until a rollback).
    Formats whose runtime this device lacks are not checked: nothing here could run them anyway."""
    from edge_pse.bundle import Bundle
    from edge_pse.runtime.backends import FORMAT_BACKEND, installed, open_backend

    bundle = Bundle.load(staged)
    for entry in bundle.files:
        name = FORMAT_BACKEND.get(entry.format)
        if name is None or not installed(name):
            continue
        try:
            model = open_backend(bundle, name, threads=_check_threads(name), quantization=entry.quantization)
        except Exception as e:  # what a broken file raises depends on the runtime
            raise EdgePseError(
                f"deploy refused: {entry.path} does not load on this device ({type(e).__name__}: {e}); "
                "the active bundle is unchanged"
            ) from None
        try:
            warm_up(model)
        except Exception as e:
            raise EdgePseError(
                f"deploy refused: {entry.path} loads but does not run a hop ({type(e).__name__}: {e}); "
                "the active bundle is unchanged"
            ) from None


def _check_threads(backend: str) -> int:
    """Threads for a deploy's load check: ExecuTorch's thread pool is set once per process, so the check takes
    the size a stream or bench already set (a check at 1 thread would refuse the .pte, or pin later streams)."""
    if backend == "executorch":
        from edge_pse.runtime.backends import executorch

        return executorch._threads_set or 1
    return 1


def _worth_a_line(failures: int) -> bool:
    """Log an address's first MAX_FAILED_LOGINS failures in the window, then only the 8th, 16th, 32nd, ...: a
    flood of bad logins (no lock-out refuses them any more) writes a few lines, not megabytes."""
    return failures <= MAX_FAILED_LOGINS or failures & (failures - 1) == 0


def _hello(nonce: str) -> bytes:
    """The agent's first frame of every login (TCP or --stdio): its protocol, version and challenge."""
    return P.encode_json(T.HELLO, {"protocol": P.VERSION, "agent": __version__, "nonce": nonce})


def _refuse_now(sock: socket.socket, code: str, message: str) -> None:
    """One ERROR frame to a peer the agent is about to drop, never blocking (the caller closes it)."""
    try:
        sock.send(P.encode_json(T.ERROR, {"code": code, "message": message}), socket.MSG_DONTWAIT)
    except OSError:
        pass


class Agent:
    def __init__(
        self,
        root: str | Path,
        token: bytes,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        handshake_timeout: float = HANDSHAKE_TIMEOUT_S,
        max_pending: int = MAX_PENDING,
        max_pending_per_address: int = MAX_PENDING_PER_ADDRESS,
        max_connections: int = MAX_CONNECTIONS,
        max_sessions: int = MAX_SESSIONS,
        session_ttl: float = SESSION_TTL_S,
        listen: bool = True,
    ) -> None:
        """`listen=False`: no socket of its own; `serve_one` serves a connection handed to it (--stdio)."""
        self.store = Store(root, shared=not listen)
        self.token = token
        self.sessions: dict[str, StreamSession] = {}
        self.handshake_timeout, self.max_sessions, self.session_ttl = handshake_timeout, max_sessions, session_ttl
        self.gate = Gate(max_pending, max_pending_per_address, max_connections)
        self._lock = threading.RLock()
        self._opening = 0  # sessions being opened (their backend loading): they count against max_sessions
        # loaded models of the active bundle, shared by its sessions' streams: (bundle sha256, backend, threads,
        # quantization) -> Backend. A deploy empties it; sessions on the old bundle keep their model alive
        self._models: OrderedDict[tuple, object] = OrderedDict()
        self._model_loads = 0
        self._sock = socket.create_server((host, port), reuse_port=False, backlog=LISTEN_BACKLOG) if listen else None
        self._stop = threading.Event()
        self.address = self._sock.getsockname()[:2] if self._sock is not None else None

    # --- serving

    def serve_forever(self) -> None:
        """Accept until `close()`. One thread runs every login in progress with a selector (HELLO out, the AUTH
        frame in, a socket and at most 4 KiB each, no thread), so accepting stays cheap under a connection flood
        and the pool can be large; a complete AUTH gets a thread of its own. A failing accept() (no descriptors
        left, no memory) is logged and retried with back-off; only a listening socket that cannot work any more
        ends it, with an EdgePseError."""
        sel = selectors.DefaultSelector()
        self._sock.setblocking(False)
        sel.register(self._sock, selectors.EVENT_READ, None)
        logins: dict[socket.socket, _Login] = {}
        backoff, next_expiry = 0.0, time.monotonic() + 0.5
        try:
            while not self._stop.is_set():
                soonest = min((lg.deadline for lg in logins.values()), default=next_expiry)
                wait = backoff or max(0.0, min(soonest, next_expiry) - time.monotonic())
                for key, _ in sel.select(wait):
                    if key.data is None:
                        backoff = self._accept_some(sel, logins, backoff)
                    else:
                        self._read_login(sel, logins, key.data)
                now = time.monotonic()
                for lg in [lg for lg in logins.values() if lg.deadline <= now]:  # the whole login's deadline
                    self._drop_login(sel, logins, lg.conn)
                    self.gate.release(lg.ticket, False)
                if now >= next_expiry:
                    self._expire_sessions()
                    next_expiry = now + 0.5
        finally:
            for conn in list(logins):
                self._drop_login(sel, logins, conn)
            sel.close()

    def _accept_some(self, sel, logins: dict, backoff: float) -> float:
        """Accept what is queued (up to 64 at a time, so reading logins is not starved); the new back-off."""
        for _ in range(64):
            try:
                conn, peer = self._sock.accept()
            except BlockingIOError:
                return 0.0
            except OSError as e:
                if self._stop.is_set():
                    return 0.0
                if e.errno not in TRANSIENT_ACCEPT_ERRORS:
                    log.critical("cannot accept connections any more (%s): stopping", e)
                    raise EdgePseError(f"the agent stopped: accepting a connection failed ({e})") from None
                backoff = min(max(2 * backoff, 0.05), 1.0)
                if e.errno in (errno.EMFILE, errno.ENFILE) and (old := self.gate.evict()) is not None:
                    self._evicted(sel, logins, old, "login dropped: the device ran out of descriptors")
                log.error("accepting a connection failed (%s); still serving, retrying in %.2f s", e, backoff)
                return backoff
            key = address_key(peer[0])
            ticket, evicted = self.gate.admit(conn, key)
            if evicted is not None:
                why = f"login dropped for a newer connection: too many logins in progress (from {key} or all)"
                self._evicted(sel, logins, evicted, why)
            nonce = P.new_nonce()
            try:
                conn.setblocking(False)
                conn.send(_hello(nonce))
            except OSError:
                conn.close()
                self.gate.release(ticket, False)
                continue
            lg = _Login(conn, key, ticket, nonce, time.monotonic() + self.handshake_timeout)
            logins[conn] = lg
            sel.register(conn, selectors.EVENT_READ, lg)
        return 0.0

    def _evicted(self, sel, logins: dict, conn: socket.socket, why: str) -> None:
        """Tell an evicted login why (one ERROR frame, never blocking) and wake its thread; the selector closes
        what it owns, a login thread closes its own."""
        _refuse_now(conn, "busy", why)
        _shutdown(conn)
        if conn in logins:
            self._drop_login(sel, logins, conn)

    @staticmethod
    def _drop_login(sel, logins: dict, conn: socket.socket) -> None:
        logins.pop(conn, None)
        try:
            sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        conn.close()

    def _read_login(self, sel, logins: dict, lg: _Login) -> None:
        """Read what has come of the AUTH frame; a frame of another type is refused from its header (not
        counted as a failed login: not our protocol at all). A complete AUTH goes to a thread of its own."""
        try:
            data = lg.conn.recv(lg.need - len(lg.buf))
            if not data:
                raise ConnectionError("closed")
            lg.buf += data
            if len(lg.buf) == P.HEADER.size:
                t, length = P.parse_header(bytes(lg.buf))
                if t != T.AUTH:
                    raise P.ProtocolError(f"expected AUTH, got {t.name}")
                lg.need += length
        except P.ProtocolError as e:
            _refuse_now(lg.conn, "protocol", str(e))
            self._drop_login(sel, logins, lg.conn)
            self.gate.release(lg.ticket, False)
            return
        except (BlockingIOError, InterruptedError):
            return
        except (ConnectionError, OSError):
            self._drop_login(sel, logins, lg.conn)
            self.gate.release(lg.ticket, False)
            return
        if len(lg.buf) < lg.need:
            return
        logins.pop(lg.conn)
        sel.unregister(lg.conn)
        auth = P.Frame(T.AUTH, bytes(lg.buf[P.HEADER.size :]))
        try:
            threading.Thread(target=self._serve_conn, args=(lg, auth), daemon=True).start()
        except RuntimeError as e:  # no thread left to serve it
            self.gate.release(lg.ticket, False)
            log.error("cannot start a connection thread (%s)", e)
            _refuse_now(lg.conn, "busy", "agent busy: cannot serve another connection now")
            lg.conn.close()

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, daemon=True)
        t.start()
        return t

    def close(self) -> None:
        self._stop.set()
        if self._sock is not None:
            self._sock.close()

    def serve_one(self, conn: socket.socket, key: str) -> None:
        """Serve one connection from its login to its end, in this thread (`edge-pse agent --stdio`: the other end
        of an SSH session, which authenticated the user; the login runs as over TCP, with the link's token)."""
        ticket, _ = self.gate.admit(conn, key)
        nonce = P.new_nonce()
        deadline = time.monotonic() + self.handshake_timeout
        try:
            P.send(conn, _hello(nonce))
            auth = P.recv_frame(conn, deadline, only=T.AUTH)
        except P.ProtocolError as e:
            _refuse_now(conn, "protocol", str(e))
            self.gate.release(ticket, False)
            return
        except (ConnectionError, TimeoutError, OSError):
            self.gate.release(ticket, False)
            return
        self._serve_conn(_Login(conn, key, ticket, nonce, deadline), auth)

    def _serve_conn(self, lg: _Login, auth: P.Frame) -> None:
        conn, ticket = lg.conn, lg.ticket
        handler = _Connection(self, conn, lg.key, ticket)
        broken = False
        try:
            conn.setblocking(True)
            if conn.family != socket.AF_UNIX:  # --stdio hands over one end of a socket pair
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if handler.authenticate(lg.deadline, lg.nonce, auth):
                conn.settimeout(IDLE_TIMEOUT_S)
                handler.loop()
        except P.ProtocolError as e:
            broken = True  # the stream cannot go on from this state: free its session now
            handler.send_error("protocol", str(e))
        except (ConnectionError, TimeoutError, OSError):
            pass
        finally:
            handler.detach(free=broken)
            conn.close()
            self.gate.release(ticket, handler.logged_in)

    def _expire_sessions(self) -> None:
        now = time.monotonic()
        with self._lock:
            for sid, s in list(self.sessions.items()):
                if s.owner is None and now - s.touched > self.session_ttl:
                    del self.sessions[sid]

    def close_session(self, sid: str) -> StreamSession | None:
        """Free a session; a connection still attached to it gets a protocol error at its next hop."""
        with self._lock:
            s = self.sessions.pop(sid, None)
        if s is not None:
            with s.lock:
                s.owner = None
        return s

    def _busy(self) -> Busy:
        """Why no session can open now and when one frees up (the oldest detached one's expiry)."""
        now = time.monotonic()
        waits = [s.touched + self.session_ttl - now for s in self.sessions.values() if s.owner is None]
        n = len(self.sessions) + self._opening
        if waits:
            wait = max(1, math.ceil(min(waits)))
            return Busy(
                f"agent busy: {n} stream sessions open (at most {self.max_sessions}); one frees up in {wait} s "
                f"(a dropped stream is kept {self.session_ttl:g} s for resuming)",
                wait,
            )
        return Busy(
            f"agent busy: {n} stream sessions open (at most {self.max_sessions}), all streaming now; "
            "one frees up when its stream ends or its connection drops"
        )

    # --- operations

    def status(self) -> dict:
        from edge_pse.runtime.backends import BACKENDS, installed

        return {
            "agent": __version__,
            "protocol": P.VERSION,
            "machine": machine_info(probe=False),
            "backends": [n for n in BACKENDS if installed(n)],
            **self.store.describe(),
            "sessions": len(self.sessions),
            "model_loads": self._model_loads,  # model files loaded since start: once per bundle and settings
        }

    def open_stream(self, req: dict) -> StreamSession:
        threads = req.get("threads") or 1
        if not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
            raise EdgePseError(f"threads must be an int in 1..{MAX_THREADS}")
        with self._lock:
            self._expire_sessions()
            if len(self.sessions) + self._opening >= self.max_sessions:
                raise self._busy()
            self._opening += 1  # the slot is ours while the backend loads
        try:
            with self.store.using_active() as bundle:
                spec = bundle.spec  # the session's frames carry spec.hop samples, whatever the bundle's hop
                hop = spec.hop
                if hop > P.MAX_HOP:
                    raise EdgePseError(f"bundle hop {hop} exceeds the protocol's {P.MAX_HOP} samples per frame")
                spk = req.get("speaker")
                if not isinstance(spk, list) or len(spk) != spec.speaker_dim:
                    raise EdgePseError(f"speaker must be a list of {spec.speaker_dim} floats")
                model = self._model(bundle, req.get("backend"), threads, req.get("quantization"))
                backend = model.open_stream()
                info = {
                    "bundle": bundle.path.name,
                    "preset": bundle.manifest.get("preset"),
                    "sample_rate": spec.sample_rate,
                    "tolerance": bundle.tolerance,
                }
            backend.set_speaker(np.asarray(spk, dtype=np.float32))
            info.update(
                {
                    "backend": model.name,
                    "model_file": model.entry.path if model.entry else None,
                    "quantization": model.entry.quantization if model.entry else "fp32",
                    "threads": threads,
                    "hop": hop,
                    "resume_window": RESUME_WINDOW,
                    "session_ttl_s": self.session_ttl,
                }
            )
            s = StreamSession(secrets.token_hex(16), backend, info)
            with self._lock:
                self.sessions[s.id] = s
            return s
        finally:
            with self._lock:
                self._opening -= 1

    def _model(self, bundle, backend: str | None, threads: int, quantization: str | None):
        """The loaded model for these settings, loaded (and warmed up) on first use; streams share it. At most
        MAX_MODELS stay loaded (least recently used dropped; a stream still running keeps its own): streams
        opened with threads 1..64 cached 128 models and 4,036 OS threads."""
        from edge_pse.runtime.backends import open_backend

        key = (bundle.manifest.get("manifest_sha256") or str(bundle.path), backend, threads, quantization)
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
        if model is None:
            model = open_backend(bundle, backend, threads=threads, quantization=quantization)
            with self._lock:
                self._model_loads += 1
            warm_up(model)  # first calls allocate and plan: keep them out of a stream's timings
            with self._lock:
                if not any(k[0] == key[0] for k in self._models):  # another bundle became active: drop its models
                    self._models.clear()
                model = self._models.setdefault(key, model)
                self._models.move_to_end(key)
                while len(self._models) > MAX_MODELS:
                    self._models.popitem(last=False)
        return model

    def bench(self, req: dict) -> dict:
        """Timings of the active bundle on this device (always) and the full `edge-pse bench` report when
        the bench module is installed here."""
        from edge_pse.runtime.backends import BACKENDS

        backends = req.get("backends") or [None]
        if (
            not isinstance(backends, list)
            or len(backends) > len(BACKENDS)
            or any(b is not None and b not in BACKENDS for b in backends)
        ):
            raise EdgePseError(f"backends must be a list of {', '.join(BACKENDS)}")
        threads = req.get("threads") or [1]
        if (
            not isinstance(threads, list)
            or len(threads) > 8
            or any(not isinstance(t, int) or isinstance(t, bool) or not 1 <= t <= MAX_THREADS for t in threads)
        ):
            raise EdgePseError(f"threads must be a list of at most 8 ints in 1..{MAX_THREADS}")
        device = req.get("device")
        if device is not None and (not isinstance(device, str) or not _DEVICE_NAME.fullmatch(device)):
            raise EdgePseError("device must be a device profile name")
        hops = req.get("hops", 2000)
        if not isinstance(hops, int) or not 10 <= hops <= 100_000:
            raise EdgePseError("hops must be an int in 10..100000")
        with self.store.using_active() as bundle:
            cells = [_probe(bundle, b, t, hops) for b in backends for t in threads]
            report = {
                "machine": machine_info(probe=False),
                "bundle": bundle.path.name,
                "preset": bundle.manifest.get("preset"),
            }
            report["manifest"] = {
                k: bundle.manifest[k] for k in ("config", "hop", "sample_rate") if k in bundle.manifest
            }
            report["manifest"]["costs"] = bundle.manifest.get("costs", {})
            report["probe"] = cells
            report["bench"] = _run_bench_cli(bundle.path, req)
        return report


def _probe(bundle, backend: str | None, threads: int, hops: int) -> dict:
    """Per-hop model-call time after warm-up on a fixed pseudo-random signal: the numbers a deploy decision needs."""
    from edge_pse.runtime.backends import open_backend
    from edge_pse.runtime.stats import latency_summary, rtf, time_hops

    t0 = time.perf_counter_ns()
    be = open_backend(bundle, backend, threads=threads)
    load_ms = (time.perf_counter_ns() - t0) / 1e6
    rng = np.random.default_rng(0)
    be.set_speaker(rng.random(bundle.spec.speaker_dim).astype(np.float32))
    x = (0.1 * rng.standard_normal(bundle.spec.hop * 64)).astype(np.float32).reshape(64, -1)
    ns = time_hops(be.process, x, hops, warmup=WARMUP_HOPS * 4)
    hop_s = bundle.spec.hop_s
    return {
        "backend": be.name,
        "model_file": be.entry.path if be.entry else None,
        "quantization": be.entry.quantization if be.entry else "fp32",
        "threads": threads,
        "hops": hops,
        "load_ms": round(load_ms, 2),
        "per_hop_us": latency_summary(ns),
        "rtf": rtf(int(ns.sum()), hops * hop_s),
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


class _Connection:
    """One client connection: authentication, then requests, uploads and hop frames (all MAC-checked)."""

    def __init__(self, agent: Agent, conn: socket.socket, key: str = "?", ticket: int = -1) -> None:
        self.agent, self.conn, self.key, self.ticket = agent, conn, key, ticket
        self.chan: P.Channel | None = None  # set by the login: every later frame is authenticated
        self.logged_in = False
        self.upload: Upload | None = None
        self.session: StreamSession | None = None

    def send(self, frame: bytes) -> None:
        if self.chan is None:
            P.send(self.conn, frame)
        else:
            self.chan.send(frame)

    def send_error(self, code: str, message: str, **extra) -> None:
        try:
            self.send(P.encode_json(T.ERROR, {"code": code, "message": message[:4000], **extra}))
        except OSError:
            pass

    def authenticate(self, deadline: float, nonce: str, msg: P.Frame) -> bool:
        """Check the AUTH frame the login front read for our HELLO's `nonce`. Failed logins are logged and counted
        per address, and past MAX_FAILED_LOGINS answered later (within `deadline`); a right token never waits."""
        gate = self.agent.gate
        try:
            auth = msg.json()
            client_nonce = auth.get("nonce")
            if not isinstance(client_nonce, str) or len(client_nonce) != 2 * P.NONCE_BYTES:
                raise P.ProtocolError("AUTH needs the client's nonce")
        except P.ProtocolError as e:  # a malformed AUTH is a failed login: counted, and one log line
            n = gate.failed_login(self.key)
            if _worth_a_line(n):
                log.warning("failed login from %s: %s (%d in the last %g s)", self.key, e, n, FAILED_LOGIN_WINDOW_S)
            raise
        if not P.check_mac(P.auth_mac(self.agent.token, b"client", nonce, client_nonce), auth.get("mac")):
            n = gate.failed_login(self.key)
            delay = gate.failure_delay(n)
            if _worth_a_line(n):
                log.warning(
                    "failed login from %s: wrong token (%d in the last %g s)%s", self.key, n, FAILED_LOGIN_WINDOW_S,
                    f"; answered after {delay:g} s" if delay else "",
                )  # fmt: skip
            if delay:  # within the login's deadline; an eviction for a newcomer ends it early
                gate.hold(self.ticket, max(0.0, min(delay, deadline - time.monotonic())))
            self.send_error("auth", "authentication failed: wrong token")
            return False
        refusal = gate.logged_in(self.ticket)
        if refusal is not None:
            self.send_error("busy", refusal)
            return False
        self.logged_in = True
        P.send(
            self.conn, P.encode_json(T.AUTH_OK, {"mac": P.auth_mac(self.agent.token, b"agent", client_nonce, nonce)})
        )
        to_agent, to_client = P.session_keys(self.agent.token, nonce, client_nonce)
        self.chan = P.Channel(self.conn, send_key=to_client, recv_key=to_agent)
        return True

    def loop(self) -> None:
        assert self.chan is not None
        while True:
            try:
                frame = self.chan.recv()
            except ConnectionError:
                return
            if frame.type == T.HOP:
                self._hop(frame.payload)
            elif frame.type == T.CHUNK:
                self._chunk(frame.payload)
            elif frame.type == T.REQUEST:
                self._request(frame.json())
            else:
                raise P.ProtocolError(f"unexpected {frame.type.name} frame from a client")

    def _chunk(self, payload: bytes) -> None:
        """Write one upload chunk. A chunk that breaks the upload's rules ends the connection; a device that
        cannot write (disk full) fails the deploy, frees the staging space and says why at `deploy_commit`."""
        up = self.upload
        if up is None:
            raise P.ProtocolError("CHUNK outside a deploy")
        try:
            up.write(*P.unpack_chunk(payload))
        except EdgePseError as e:
            self.agent.store.abort(up)
            self.upload = None
            raise P.ProtocolError(str(e)) from None
        except OSError as e:
            up.failed = f"the device could not write {up.current_path}: {e.strerror or e} (disk full?)"
            log.error("deploy of %s failed: %s", up.name, up.failed)
            self.agent.store.abort(up)

    def _reply(self, obj: dict) -> None:
        self.send(P.encode_json(T.REPLY, obj))

    def _request(self, req: dict) -> None:
        op = req.get("op")
        try:
            if op == "status":
                self._reply(self.agent.status())
            elif op == "deploy_begin":
                if self.upload is not None:
                    self.agent.store.abort(self.upload)
                    self.upload = None
                self.upload = self.agent.store.begin(req.get("name"), req.get("files"))
                self._reply({"ok": True, "chunk_bytes": P.CHUNK_BYTES})
            elif op == "deploy_commit":
                if self.upload is None:
                    raise EdgePseError("deploy_commit without deploy_begin")
                up, self.upload = self.upload, None
                self.agent.store.commit(up, check=loads_here)
                self._reply({"ok": True, **self.agent.store.describe()})
            elif op == "rollback":
                self.agent.store.rollback()
                self._reply({"ok": True, **self.agent.store.describe()})
            elif op == "open_stream":
                self._close_own_session()  # one stream per connection: a second open replaces the first
                self.session = self.agent.open_stream(req)
                self.session.owner = self
                self._reply({"session": self.session.id, "processed": 0, **self.session.info})
            elif op == "resume_stream":
                self._resume(req)
            elif op == "close_stream":
                self._close_stream(req)
            elif op == "bench":
                self._reply(self.agent.bench(req))
            else:
                raise EdgePseError(f"unknown op {op!r}")
        except Busy as e:
            self.send_error("busy", str(e), retry_after_s=e.retry_after_s)
        except SessionGone as e:
            self.send_error("session", str(e))
        except EdgePseError as e:
            self.send_error("request", str(e))
        except (P.ProtocolError, OSError):
            raise
        except Exception as e:  # a bug or a runtime failure: tell the client, keep serving
            self.send_error("internal", f"{op} failed on the device: {type(e).__name__}: {e}")

    def _close_own_session(self) -> None:
        s, self.session = self.session, None
        if s is not None:
            self.agent.close_session(s.id)

    def _close_stream(self, req: dict) -> None:
        """Close this connection's stream, or (`session`) one whose id the client holds: a client whose link
        broke frees its session from a new connection instead of leaving it to expire."""
        sid = req.get("session")
        if sid is None:
            if self.session is None:
                raise EdgePseError("no stream open on this connection")
            sid = self.session.id
        s = self.agent.close_session(str(sid))
        if s is None:
            raise SessionGone("unknown or expired stream session")
        if self.session is s:
            self.session = None
        self._reply({"ok": True, "processed": s.processed})

    def _resume(self, req: dict) -> None:
        """Reattach a session: resend the outputs the client lacks, tell it which input hop to send next."""
        with self.agent._lock:
            s = self.agent.sessions.get(str(req.get("session")))
        if s is None:
            raise SessionGone("unknown or expired stream session; start the stream again")
        received = req.get("received")
        with s.lock:
            kept = len(s.outputs)
            if not isinstance(received, int) or not s.processed - kept <= received <= s.processed:
                raise SessionGone(
                    f"cannot resume from output hop {received!r}: the agent has processed {s.processed} hops "
                    f"and keeps the last {kept}"
                )
            if self.session is not s:
                self.detach()
            s.owner, self.session = self, s  # a half-dead old connection loses the session here
            s.touched = time.monotonic()
            self._reply({"session": s.id, "processed": s.processed, **s.info})
            missing = list(s.outputs)[kept - (s.processed - received) :] if s.processed > received else []
            for frame in missing:
                self.send(frame)

    def _hop(self, payload: bytes) -> None:
        s = self.session
        if s is None:
            raise P.ProtocolError("HOP frame without an open stream")
        seq, x = P.unpack_hop(payload, s.info["hop"])
        with s.lock:
            if s.owner is not self:
                raise P.ProtocolError("this stream was resumed on another connection or closed")
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
        self.send(frame)

    def detach(self, free: bool = False) -> None:
        """Let go of the upload (its staging folder is removed) and the session: kept for the resume window
        after a dropped link, freed at once when `free` (this connection broke the protocol)."""
        if self.upload is not None:
            self.agent.store.abort(self.upload)
            self.upload = None
        s = self.session
        if s is not None:
            with s.lock:
                mine = s.owner is self
                if mine:
                    s.owner = None
                    s.touched = time.monotonic()
            if mine and free:
                self.agent.close_session(s.id)
        self.session = None


def serve_stdio(root: str | Path) -> None:
    """`edge-pse agent --stdio`: one link on stdin/stdout, as an SSH session runs it (firmware_host/ssh.py).

    The frames own the real stdout; fd 1 is pointed at stderr so that nothing else (a runtime's own prints)
    can corrupt them. Returns when the host closes the link (or stdin ends)."""
    from firmware_host.ssh import SSH_LINK_TOKEN

    out_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = os.fdopen(1, "w", closefd=False)
    near, far = socket.socketpair()

    def from_host() -> None:
        try:
            while data := os.read(0, 1 << 16):
                far.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                far.shutdown(socket.SHUT_WR)

    def to_host() -> None:
        try:
            while data := far.recv(1 << 16):
                view = memoryview(data)
                while view:
                    view = view[os.write(out_fd, view) :]
        except OSError:
            pass
        finally:
            os.close(out_fd)

    pumps = [threading.Thread(target=from_host, daemon=True), threading.Thread(target=to_host, daemon=True)]
    for t in pumps:
        t.start()
    agent = Agent(root, SSH_LINK_TOKEN, listen=False)
    try:
        agent.serve_one(near, "ssh")
    finally:
        near.close()
        pumps[1].join(timeout=5)  # what the handler sent reaches the host before the process ends
        agent.close()


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
