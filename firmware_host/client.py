"""The host side of the link: connect and authenticate, deploy/rollback a bundle, stream a file through the
device's model (resuming across dropped connections), and pull a bench report.

Used by `edge-pse deploy`, `edge-pse run --target` and `edge-pse bench --target`. Torch-free.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from edge_pse.errors import EdgePseError
from firmware_host import protocol as P
from firmware_host.protocol import T
from firmware_host.ssh import SSH_LINK_TOKEN, SshPipe, is_ssh_target

DEFAULT_PORT = 7700
CONNECT_TIMEOUT_S = 10.0
REPLY_TIMEOUT_S = 120.0  # a deploy commit verifies every file; opening a stream loads the model
WINDOW_HOPS = 32  # hops in flight: hides the round trip without queueing much audio on the device
RETRIES = 5
CLOSE_TIMEOUT_S = 3.0  # freeing an abandoned stream session must not hold up an error or a Ctrl-C for long


def token(token_file: str | None = None, targets: list[str] | None = None) -> bytes:
    """The shared token from --token-file or $EDGE_PSE_TOKEN, as the CLI needs it (EdgePseError otherwise).
    Targets reached over SSH need none: with only those, no token is read."""
    if targets and all(is_ssh_target(t) for t in targets):
        return SSH_LINK_TOKEN
    try:
        return P.load_token(token_file)
    except (OSError, ValueError) as e:
        raise EdgePseError(str(e)) from None


def targets(specs: list[str] | str) -> list[str]:
    """--target values (repeated and/or comma-separated) -> a flat list."""
    specs = [specs] if isinstance(specs, str) else specs
    return [t.strip() for group in specs for t in group.split(",") if t.strip()]


def parse_target(target: str, listen: bool = False) -> tuple[str, int]:
    """'HOST:PORT' (or 'HOST', default port; '[v6]:PORT') -> (host, port); port 0 (any free) only to listen."""
    t = target.strip()
    if t.startswith("["):
        host, _, rest = t[1:].partition("]")
        port = rest.lstrip(":")
    elif t.count(":") == 1:
        host, port = t.split(":")
    else:
        host, port = t, ""
    if not host:
        raise EdgePseError(f"bad target {target!r}: expected HOST:PORT")
    try:
        p = int(port) if port else DEFAULT_PORT
    except ValueError:
        raise EdgePseError(f"bad target {target!r}: port must be a number") from None
    if not (0 if listen else 1) <= p < 65536:
        raise EdgePseError(f"bad target {target!r}: port out of range")
    return host, p


class AgentRefused(EdgePseError):
    """The agent answered a request with an ERROR frame; `code` says what kind (busy, session, request, ...)."""

    def __init__(self, target: str, err: P.RemoteError) -> None:
        super().__init__(f"{target}: {err}")
        self.code = err.code


class Link:
    """One authenticated connection to an agent; every frame after the login is MAC-checked (`P.Channel`)."""

    def __init__(self, target: str, token: bytes, timeout: float = REPLY_TIMEOUT_S) -> None:
        self.target = target
        self._ssh: SshPipe | None = None
        if is_ssh_target(target):  # the agent runs on the device's end of an ssh session (firmware_host/ssh.py)
            self._ssh = SshPipe(target, timeout=max(timeout, CONNECT_TIMEOUT_S))
            self.sock, token = self._ssh.sock, SSH_LINK_TOKEN
        else:
            host, port = parse_target(target)
            try:
                self.sock = socket.create_connection((host, port), timeout=min(timeout, CONNECT_TIMEOUT_S))
            except OSError as e:
                raise EdgePseError(f"cannot reach the agent at {target}: {e.strerror or e}") from None
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.chan = self._authenticate(token)
        except EdgePseError as e:
            self.close()
            why = self._ssh.reason() if self._ssh is not None else ""
            raise EdgePseError(f"{e}; ssh said: {why}" if why else str(e)) from None
        except BaseException:
            self.close()
            raise
        self.sock.settimeout(timeout)

    def _authenticate(self, token: bytes) -> P.Channel:
        try:
            hello = P.expect(P.recv_frame(self.sock), T.HELLO).json()
            if hello.get("protocol") != P.VERSION:
                raise P.VersionMismatch(hello.get("protocol"))
            nonce = P.new_nonce()
            mac = P.auth_mac(token, b"client", str(hello.get("nonce")), nonce)
            P.send(self.sock, P.encode_json(T.AUTH, {"nonce": nonce, "mac": mac}))
            ok = P.expect(P.recv_frame(self.sock), T.AUTH_OK).json()
        except P.RemoteError as e:
            raise EdgePseError(f"agent at {self.target} refused the connection: {e}") from None
        except P.VersionMismatch as e:
            raise EdgePseError(
                f"agent at {self.target} speaks protocol {e.version}, this edge-pse speaks {P.VERSION}: "
                "install the same edge-pse version on the host and the device"
            ) from None
        except (P.ProtocolError, OSError) as e:
            raise EdgePseError(f"agent at {self.target}: handshake failed ({e})") from None
        if not P.check_mac(P.auth_mac(token, b"agent", nonce, str(hello.get("nonce"))), ok.get("mac")):
            raise EdgePseError(f"the peer at {self.target} does not know the token: not our agent")
        to_agent, to_client = P.session_keys(token, str(hello["nonce"]), nonce)
        return P.Channel(self.sock, send_key=to_agent, recv_key=to_client)

    def close(self) -> None:
        if self._ssh is not None:
            self._ssh.close()
        else:
            self.sock.close()

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, frame: bytes) -> None:
        self.chan.send(frame)

    def recv(self) -> P.Frame:
        return self.chan.recv()

    def request(self, op: str, **kw) -> dict:
        try:
            self.send(P.encode_json(T.REQUEST, {"op": op, **kw}))
            return P.expect(self.recv(), T.REPLY).json()
        except P.RemoteError as e:
            raise AgentRefused(self.target, e) from None
        except P.ProtocolError as e:
            raise EdgePseError(f"{self.target}: protocol error: {e}") from None
        except (OSError, ConnectionError) as e:
            raise EdgePseError(f"{self.target}: connection lost during {op}: {e}") from None

    def pending_error(self, wait: float = 1.0) -> str | None:
        """The agent's ERROR frame, if one is waiting (it says why before closing); None otherwise."""
        try:
            self.sock.settimeout(wait)
            frame = self.recv()
        except (OSError, ConnectionError, P.ProtocolError):
            return None
        return str(frame.json().get("message")) if frame.type == T.ERROR else None


# --- deploy


def bundle_files(bundle: Path) -> list[tuple[Path, str]]:
    """Every regular file of a verified bundle folder with its relative POSIX path. A symbolic link (or any
    other non-regular file) is refused: deploy must never send a host file that was only linked in."""
    import stat

    from edge_pse.bundle import Bundle

    Bundle.load(bundle)  # refuse to ship a bundle that does not verify here
    files = []
    for dirpath, dirnames, filenames in os.walk(bundle):  # never follows a symlinked folder
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in [*dirnames, *filenames]:
            p = Path(dirpath) / name
            if p.is_symlink():
                raise EdgePseError(
                    f"bundle {bundle} contains a symbolic link {p.relative_to(bundle).as_posix()} -> "
                    f"{os.readlink(p)}: deploy sends regular files only (copy the file in)"
                )
        for name in filenames:
            p = Path(dirpath) / name
            if name.startswith("."):
                continue
            if not stat.S_ISREG(p.lstat().st_mode):
                raise EdgePseError(f"bundle {bundle}: {p.relative_to(bundle).as_posix()} is not a regular file")
            files.append(p)
    return [(p, p.relative_to(bundle).as_posix()) for p in sorted(files)]


def deploy(target: str, token: bytes, bundle: str | Path, progress: Callable[[int], None] | None = None) -> dict:
    """Upload, verify (sha256 per file, then the manifest on the device), activate atomically."""
    from edge_pse.bundle import sha256_file

    bundle = Path(bundle)
    files = bundle_files(bundle)
    listing = [{"path": rel, "bytes": p.stat().st_size, "sha256": sha256_file(p)} for p, rel in files]
    with Link(target, token) as link:
        link.request("deploy_begin", name=bundle.name, files=listing)
        try:
            for i, (p, _) in enumerate(files):
                with open(p, "rb") as f:
                    offset = 0
                    while chunk := f.read(P.CHUNK_BYTES):
                        link.send(P.pack_chunk(i, offset, chunk))
                        offset += len(chunk)
                        if progress is not None:
                            progress(len(chunk))
        except OSError as e:
            why = link.pending_error()
            raise EdgePseError(
                f"{target}: upload interrupted ({why or e}); the device keeps its active bundle"
            ) from None
        return link.request("deploy_commit")


def rollback(target: str, token: bytes) -> dict:
    with Link(target, token) as link:
        return link.request("rollback")


def status(target: str, token: bytes) -> dict:
    with Link(target, token) as link:
        return link.request("status")


# --- streaming


@dataclass
class StreamResult:
    out: np.ndarray  # [n_hops, hop] float32, in input order, exactly one output per input hop
    model_ns: np.ndarray  # on-device model-call time per hop
    device_ns: np.ndarray  # on-device time per hop (model call + framing the reply)
    info: dict  # what the device ran: bundle, backend, quantization, threads, tolerance
    reconnects: int = 0
    round_trip_ns: list[int] = field(default_factory=list)


def stream_hops(
    target: str,
    token: bytes,
    hops: np.ndarray,
    speaker: np.ndarray,
    *,
    backend: str | None = None,
    threads: int = 1,
    window: int = WINDOW_HOPS,
    retries: int = RETRIES,
    progress: Callable[[int], None] | None = None,
) -> StreamResult:
    """Run `hops` [n, hop] through the device's active bundle from a fresh state; every input hop yields
    exactly one output hop (`stream_iter` over an array, its outputs collected)."""
    n = len(hops)
    out = np.zeros((n, hops.shape[1]), np.float32)
    model_ns = np.zeros(n, np.int64)
    device_ns = np.zeros(n, np.int64)

    def take(seq: int, y: np.ndarray, m_ns: int, d_ns: int) -> None:
        out[seq], model_ns[seq], device_ns[seq] = y, m_ns, d_ns
        if progress is not None:
            progress(seq + 1)

    info, reconnects = stream_iter(
        target, token, iter(hops), speaker, take, backend=backend, threads=threads, window=window, retries=retries
    )
    return StreamResult(out, model_ns, device_ns, info, reconnects)


class _HostFailed(Exception):
    """The host's own side raised: the hop source (a truncated file, a NaN sample) or the output's sink (a full
    disk). Its error, never a dropped link's: taken for one, the stream reconnected, read the dead generator as
    the end of the input (and padded the rest with zeros), or handed a written hop to the sink again."""


def _next_hop(hops: Iterator[np.ndarray]) -> np.ndarray | None:
    try:
        return next(hops, None)
    except Exception as e:
        raise _HostFailed() from e


def _hand_over(take: Callable[[int, np.ndarray, int, int], None], *out) -> None:
    try:
        take(*out)
    except Exception as e:
        raise _HostFailed() from e


def stream_iter(
    target: str,
    token: bytes,
    hops: Iterator[np.ndarray],
    speaker: np.ndarray,
    take: Callable[[int, np.ndarray, int, int], None],
    *,
    backend: str | None = None,
    threads: int = 1,
    window: int = WINDOW_HOPS,
    retries: int = RETRIES,
) -> tuple[dict, int]:
    """Stream hops from an iterator through the device's active bundle from a fresh state, handing each output
    to `take(seq, out, model_ns, device_ns)` in order; returns (what the device ran, reconnects). Only the hops
    in flight (at most `window`) are held, so a file of any length streams in bounded memory. A dropped
    connection is reopened and the session resumed (the agent resends outputs we lack and says which input hop
    it needs next; we resend from the in-flight hops), so nothing is lost or duplicated. However it ends (done,
    error, Ctrl-C), the session is closed on the device: it never holds one of the agent's few stream slots
    after we are gone."""
    link = Link(target, token)
    session = None
    try:
        info = link.request("open_stream", speaker=[float(v) for v in speaker], backend=backend, threads=threads)
        session = info["session"]
        pending: deque[bytes] = deque()  # packed hops got, got+1, ...: sent (or to resend) and not yet answered
        got = sent = reconnects = 0
        exhausted = False
        while True:
            try:
                while True:
                    while sent - got < window:
                        k = sent - got
                        if k >= len(pending):
                            hop = None if exhausted else _next_hop(hops)
                            if hop is None:
                                exhausted = True
                                break
                            if hop.shape != (info["hop"],):
                                raise ValueError(f"hops must be [n, {info['hop']}] for this bundle")
                            pending.append(P.pack_hop(sent, hop))
                        link.send(pending[k])
                        sent += 1
                    if exhausted and got == sent:
                        break
                    seq, m_ns, d_ns, y = P.unpack_out(P.expect(link.recv(), T.OUT).payload, info["hop"])
                    if seq != got:
                        raise P.ProtocolError(f"output hop {seq} arrived, expected {got}")
                    _hand_over(take, seq, y, m_ns, d_ns)
                    pending.popleft()
                    got += 1
                link.request("close_stream")
                session = None
                return info, reconnects
            except _HostFailed as e:  # the host's own error: no reconnect, nothing padded or written twice
                raise e.__cause__ from None
            except P.RemoteError as e:
                raise EdgePseError(f"{target}: {e}") from None
            except (OSError, ConnectionError, P.ProtocolError, EdgePseError) as e:
                link.close()
                reconnects += 1
                if reconnects > retries:
                    raise EdgePseError(f"{target}: stream lost after {retries} reconnects ({e})") from None
                time.sleep(min(0.1 * 2**reconnects, 2.0))
                try:
                    link = Link(target, token)
                    resumed = link.request("resume_stream", session=session, received=got)
                except AgentRefused as e2:
                    if e2.code == "session":  # gone or past its resume window: retrying cannot help
                        raise
                    continue
                except EdgePseError:
                    continue  # the device is still unreachable: try again
                sent = resumed["processed"]  # the agent resends outputs got..processed-1 before anything else
    except ValueError as e:
        raise EdgePseError(str(e)) from None
    finally:
        link.close()
        if session is not None:
            _close_session(target, token, session)


def _close_session(target: str, token: bytes, session: str) -> None:
    """Free a stream session we abandon, over a fresh connection (the old one may be mid-frame or dead); best
    effort and quick: if the agent is unreachable the session expires after its resume window anyway."""
    try:
        with Link(target, token, timeout=CLOSE_TIMEOUT_S) as link:
            link.request("close_stream", session=session)
    except (EdgePseError, OSError):
        pass


class RemoteTransport:
    """runtime.files' transport over the link: hops go to the agent's stream session for the bundle deployed
    at `target`, enhanced hops and the device's timings come back (stream_iter: resumed across drops)."""

    def __init__(
        self, target: str, token: bytes, speaker_path: str | Path, *, backend: str | None = None, threads: int = 1
    ) -> None:
        from edge_pse.runtime.session import load_speaker

        st = status(target, token)
        active = st.get("active")
        if not active or "error" in active:
            raise EdgePseError(f"{target}: no usable bundle deployed ({(active or {}).get('error', 'none')})")
        self.target, self.token, self.machine = target, token, st.get("machine")
        spk = active["speaker"]
        expected = SimpleNamespace(speaker_encoder=spk.get("encoder"), speaker_dim=spk.get("dim"))
        self.speaker = load_speaker(Path(speaker_path), expected)
        self.sample_rate, self.hop = int(active["sample_rate"]), int(active["hop"])
        self.lag_hops = int(active["lag_hops"])  # the device's bundle.StreamSpec
        self.backend, self.threads = backend, threads

    def stream(self, source, sink, stats, progress) -> dict:
        def hops() -> Iterator[np.ndarray]:
            while source.wait_hop():
                yield source.read_hop()

        def take(seq: int, y: np.ndarray, m_ns: int, d_ns: int) -> None:
            sink.write_hop(y)
            stats.record(int(d_ns), int(m_ns))  # the device's own clock: host and network time are not in it
            if progress is not None:
                progress(seq + 1)

        info, reconnects = stream_iter(
            self.target, self.token, hops(), self.speaker, take, backend=self.backend, threads=self.threads
        )
        ran = {k: v for k, v in info.items() if k != "session"}
        return {"target": self.target, "device": self.machine, **ran, "reconnects": reconnects, "mode": "remote-file"}


def remote_run(
    target: str,
    token: bytes,
    input_path: str | Path,
    output_path: str | Path,
    speaker_path: str | Path,
    *,
    backend: str | None = None,
    threads: int = 1,
    deadline_ms: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    stats_path: str | Path | None = None,
    describe: dict | None = None,
) -> dict:
    """`edge-pse run --target`: file in -> enhanced file out on the host, the model run on the device.

    The same file path as a local `edge-pse run` (runtime.files.enhance_file), so the output equals a local run
    of the same bundle and backend, and the stats have the same keys (per-hop times from the device's clock)
    plus the link's (target, device, reconnects).
    """
    from edge_pse.runtime import audio_io
    from edge_pse.runtime.files import enhance_file

    out_path = audio_io.check_output_path(output_path)
    audio_io.check_distinct({"input": input_path, "speaker": speaker_path}, {"output": out_path, "stats": stats_path})
    transport = RemoteTransport(target, token, speaker_path, backend=backend, threads=threads)
    return enhance_file(
        transport,
        input_path,
        out_path,
        deadline_ms=deadline_ms,
        stats_path=stats_path,
        describe=describe,
        progress=progress,
    )


# --- bench


def bench(target: str, token: bytes, **opts) -> dict:
    with Link(target, token, timeout=3600.0) as link:
        return link.request("bench", **opts)


def remote_bench(
    targets: list[str],
    token: bytes,
    output: str | Path,
    *,
    device: str | None = None,
    backends: list[str] | None = None,
    threads: list[int] | None = None,
    hops: int = 2000,
) -> dict:
    """`edge-pse bench --target ...`: the bench on every device at once, reports pulled back and merged per
    device into OUTPUT/remote_report.json and .md, each beside the cost model's prediction for Pi 4/Pi 5."""
    from firmware_host import fleet

    opts = {"device": device, "backends": backends, "threads": threads, "hops": hops}
    results = fleet.run_all(targets, lambda t: bench(t, token, **opts))
    return fleet.write_bench_report(results, Path(output))
