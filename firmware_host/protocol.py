"""The host <-> device wire format (docs/protocol.md): versioned, typed, length-prefixed frames.

Stdlib only (the agent runs on a Pi with the torch-free runtime). Every frame is an 8-byte header, then the
payload:

    magic b"EP" | version u8 | type u8 | payload length u32 (big-endian)

The receiver checks magic, version, type and the length against that type's cap BEFORE reading the payload,
so a peer can never make it allocate more than the cap. Control frames carry UTF-8 JSON objects; audio and
file chunks are binary with fixed little headers (struct formats below).

After the login every frame is followed by a 32-byte tag, HMAC-SHA256 under a per-session, per-direction
key derived from the token and both login nonces, over the frame's sequence number, header and payload
(`Channel`): a relay that passed the login through cannot inject, replay, reorder or drop frames.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import socket
import stat
import struct
import threading
import time
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

MAGIC = b"EP"
VERSION = 2  # 2: every frame after the login carries a MAC (1 authenticated the login only)
HELLO_VERSION = 1  # the HELLO header keeps version 1 so that every client can read which protocol we speak
HEADER = struct.Struct(">2sBBI")
MAX_HOP = 4800  # samples per audio frame at most (100 ms at 48 kHz); a session's frames have its bundle's hop
AUTH_CONTEXT = b"edge-pse agent auth v2"
NONCE_BYTES = 32
TAG_BYTES = 32  # HMAC-SHA256 after every frame once the session keys are set
SEQ = struct.Struct(">Q")
MIN_TOKEN_CHARS = 16
MIN_TOKEN_BITS = 64  # by length x log2(distinct characters): refuses short or repetitive tokens

log = logging.getLogger("edge_pse.link")


class T(IntEnum):
    """Frame types. Replies to a REQUEST are a REPLY or an ERROR."""

    HELLO = 1  # agent -> client, JSON {protocol, agent, nonce}: the challenge
    AUTH = 2  # client -> agent, JSON {nonce, mac}: proof of the token, the client's own challenge
    AUTH_OK = 3  # agent -> client, JSON {mac}: the agent's proof (mutual authentication)
    REQUEST = 4  # client -> agent, JSON {op, ...}
    REPLY = 5  # agent -> client, JSON
    ERROR = 6  # either way, JSON {code, message}; the agent closes the connection after a protocol error
    CHUNK = 7  # client -> agent, upload data: FILE_CHUNK header + bytes
    HOP = 8  # client -> agent, one input hop: IN_HOP header + float32[HOP]
    OUT = 9  # agent -> client, one output hop: OUT_HOP header + float32[HOP]


CHUNK_BYTES = 256 * 1024  # upload chunk payload (the client never sends more)
FILE_CHUNK = struct.Struct(">HQ")  # file index in the deploy manifest, byte offset
IN_HOP = struct.Struct(">Q")  # input sequence number (hop index from the stream's start)
OUT_HOP = struct.Struct(">QQQ")  # output sequence number, model-call ns, whole-hop ns on the device

# the most a payload of each type may be; anything longer closes the connection unread
MAX_PAYLOAD: dict[T, int] = {
    T.HELLO: 4096,
    T.AUTH: 4096,
    T.AUTH_OK: 4096,
    T.REQUEST: 64 * 1024,  # deploy's file list and a speaker embedding fit easily
    T.REPLY: 4 * 1024 * 1024,  # a bench report pulled from the device
    T.ERROR: 8192,
    T.CHUNK: FILE_CHUNK.size + CHUNK_BYTES,
    T.HOP: IN_HOP.size + 4 * MAX_HOP,
    T.OUT: OUT_HOP.size + 4 * MAX_HOP,
}


class ProtocolError(Exception):
    """The peer broke the protocol (bad magic/version/type/length, malformed payload): drop the connection."""


class VersionMismatch(ProtocolError):
    """The peer speaks another protocol version: say which, so the user knows what to upgrade."""

    def __init__(self, version: int) -> None:
        super().__init__(f"the peer speaks protocol version {version}; this edge-pse speaks {VERSION}")
        self.version = version


class RemoteError(Exception):
    """The agent answered a request with an ERROR frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Frame:
    type: T
    payload: bytes

    def json(self) -> dict:
        try:
            obj = json.loads(self.payload.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ProtocolError(f"{self.type.name} payload is not JSON: {e}") from None
        except RecursionError:  # 4 KB of "[" nests past the parser's depth limit: a peer's error, not ours
            raise ProtocolError(f"{self.type.name} payload nests too deep") from None
        if not isinstance(obj, dict):
            raise ProtocolError(f"{self.type.name} payload must be a JSON object")
        return obj


def encode(ftype: T, payload: bytes) -> bytes:
    if len(payload) > MAX_PAYLOAD[ftype]:
        raise ValueError(f"{ftype.name} payload of {len(payload)} bytes exceeds its cap {MAX_PAYLOAD[ftype]}")
    version = HELLO_VERSION if ftype == T.HELLO else VERSION
    return HEADER.pack(MAGIC, version, int(ftype), len(payload)) + payload


def encode_json(ftype: T, obj: dict) -> bytes:
    return encode(ftype, json.dumps(obj, separators=(",", ":")).encode())


def _recv_exact(sock: socket.socket, n: int, deadline: float | None = None) -> bytes:
    """`n` bytes; with a monotonic `deadline`, the whole read must finish by then (a peer dripping one byte at a
    time cannot stretch it: each recv gets only the time that is left)."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("handshake deadline passed")
            sock.settimeout(left)
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionError("connection closed by peer")
        got += k
    return bytes(buf)


def parse_header(header: bytes) -> tuple[T, int]:
    """Validate a header; returns (type, payload length). Raises ProtocolError before anything is allocated."""
    magic, version, ftype, length = HEADER.unpack(header)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r} (not an edge-pse peer)")
    try:
        t = T(ftype)
    except ValueError:
        t = None
    if version != (HELLO_VERSION if t == T.HELLO else VERSION):
        raise VersionMismatch(version)
    if t is None:
        raise ProtocolError(f"unknown frame type {ftype}")
    if length > MAX_PAYLOAD[t]:
        raise ProtocolError(f"{t.name} frame of {length} bytes exceeds its cap of {MAX_PAYLOAD[t]}")
    return t, length


def recv_frame(sock: socket.socket, deadline: float | None = None, only: T | None = None) -> Frame:
    """One unauthenticated frame (the login); after it, frames go through a `Channel`. With `only`, a frame of
    another type is refused from its header, before its payload is read (before login, a peer may make the
    agent hold at most the AUTH cap, not the 4 MiB another type may carry)."""
    t, length = parse_header(_recv_exact(sock, HEADER.size, deadline))
    if only is not None and t != only:
        raise ProtocolError(f"expected {only.name}, got {t.name}")
    return Frame(t, _recv_exact(sock, length, deadline) if length else b"")


def send(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)


def expect(frame: Frame, *types: T) -> Frame:
    """The frame if its type is one of `types`; an ERROR becomes RemoteError, anything else ProtocolError."""
    if frame.type in types:
        return frame
    if frame.type == T.ERROR:
        err = frame.json()
        raise RemoteError(str(err.get("code", "error")), str(err.get("message", "")))
    raise ProtocolError(f"expected {'/'.join(t.name for t in types)}, got {frame.type.name}")


# --- authentication: HMAC-SHA256 challenge-response in both directions; the token never crosses the wire


def new_nonce() -> str:
    return os.urandom(NONCE_BYTES).hex()


def session_keys(token: bytes, agent_nonce: str, client_nonce: str) -> tuple[bytes, bytes]:
    """(client->agent key, agent->client key) for one login: fresh per connection (both nonces), never on the
    wire, and one per direction so that a frame cannot be reflected back to its sender."""
    base = hmac.new(
        token, AUTH_CONTEXT + b"|session|" + agent_nonce.encode() + b"|" + client_nonce.encode(), hashlib.sha256
    ).digest()
    return (
        hmac.new(base, b"client->agent", hashlib.sha256).digest(),
        hmac.new(base, b"agent->client", hashlib.sha256).digest(),
    )


class Channel:
    """A connection after the login: every frame is sent with, and received only with, a valid tag
    HMAC(direction key, sequence number | header | payload). Each side counts the frames it sent and received,
    so an injected frame (no key), a replayed or reordered one (wrong sequence number) or a dropped one (every
    later number is off) fails the check and the connection is closed."""

    def __init__(self, sock: socket.socket, send_key: bytes, recv_key: bytes) -> None:
        self.sock = sock
        self._send_key, self._recv_key = send_key, recv_key
        self._send_seq = self._recv_seq = 0
        self._send_lock = threading.Lock()  # one frame at a time: the sequence numbers follow the byte stream

    def _tag(self, key: bytes, seq: int, frame: bytes) -> bytes:
        return hmac.new(key, SEQ.pack(seq) + frame, hashlib.sha256).digest()

    def seal(self, frame: bytes) -> bytes:
        """`frame` (one encoded frame) with its tag, consuming the next send sequence number."""
        sealed = frame + self._tag(self._send_key, self._send_seq, frame)
        self._send_seq += 1
        return sealed

    def send(self, frame: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(self.seal(frame))

    def recv(self) -> Frame:
        header = _recv_exact(self.sock, HEADER.size)
        t, length = parse_header(header)
        payload = _recv_exact(self.sock, length) if length else b""
        tag = _recv_exact(self.sock, TAG_BYTES)
        if not hmac.compare_digest(tag, self._tag(self._recv_key, self._recv_seq, header + payload)):
            raise ProtocolError(
                f"frame #{self._recv_seq} ({t.name}) failed authentication: injected, replayed or reordered"
            )
        self._recv_seq += 1
        return Frame(t, payload)


def auth_mac(token: bytes, role: bytes, first: str, second: str) -> str:
    """MAC over a role label and both nonces: a client proof cannot be replayed as an agent proof."""
    msg = AUTH_CONTEXT + b"|" + role + b"|" + first.encode() + b"|" + second.encode()
    return hmac.new(token, msg, hashlib.sha256).hexdigest()


def check_mac(expected: str, got: object) -> bool:
    return isinstance(got, str) and hmac.compare_digest(expected.encode(), got.encode())


def token_bits(token: bytes) -> float:
    """A rough upper bound of a token's entropy: length x log2(distinct characters)."""
    return len(token) * math.log2(len(set(token))) if len(set(token)) > 1 else 0.0


def load_token(token_file: str | None, env: str = "EDGE_PSE_TOKEN") -> bytes:
    """The shared token from a file (stripped) or the environment; ValueError if neither or too weak.

    The login transcript crosses the network in clear, so a weak token can be guessed offline: demand at least
    MIN_TOKEN_CHARS characters and MIN_TOKEN_BITS by `token_bits`. A token file others can read (or write) is
    a leak: warn."""
    if token_file:
        with open(token_file, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            token = f.read().strip()
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning(
                "token file %s is accessible by group/others (mode %s): anyone who reads it can drive the "
                "agent; run `chmod 600 %s`",
                token_file,
                oct(stat.S_IMODE(mode)),
                token_file,
            )
    else:
        token = os.environ.get(env, "").strip().encode()
    where = f"token file {token_file}" if token_file else f"${env}"
    if not token:
        raise ValueError(f"no usable shared token in {where}")
    if len(token) < MIN_TOKEN_CHARS or token_bits(token) < MIN_TOKEN_BITS:
        raise ValueError(
            f"the shared token in {where} is too weak (need at least {MIN_TOKEN_CHARS} characters and about "
            f"{MIN_TOKEN_BITS} bits; make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return token


# --- audio and file payloads


def pack_hop(seq: int, hop: np.ndarray) -> bytes:
    return encode(T.HOP, IN_HOP.pack(seq) + np.ascontiguousarray(hop, dtype="<f4").tobytes())


def unpack_hop(payload: bytes, hop: int) -> tuple[int, np.ndarray]:
    """(sequence number, float32[hop]) of a HOP frame of a session whose bundle has `hop` samples per call."""
    if len(payload) != IN_HOP.size + 4 * hop:
        raise ProtocolError(f"HOP frame of {len(payload)} bytes, expected {IN_HOP.size + 4 * hop} (hop {hop})")
    (seq,) = IN_HOP.unpack_from(payload)
    return seq, np.frombuffer(payload, dtype="<f4", offset=IN_HOP.size).astype(np.float32)


def pack_out(seq: int, model_ns: int, total_ns: int, hop: np.ndarray) -> bytes:
    return encode(T.OUT, OUT_HOP.pack(seq, model_ns, total_ns) + np.ascontiguousarray(hop, dtype="<f4").tobytes())


def unpack_out(payload: bytes, hop: int) -> tuple[int, int, int, np.ndarray]:
    if len(payload) != OUT_HOP.size + 4 * hop:
        raise ProtocolError(f"OUT frame of {len(payload)} bytes, expected {OUT_HOP.size + 4 * hop} (hop {hop})")
    seq, model_ns, total_ns = OUT_HOP.unpack_from(payload)
    return seq, model_ns, total_ns, np.frombuffer(payload, dtype="<f4", offset=OUT_HOP.size).astype(np.float32)


def pack_chunk(index: int, offset: int, data: bytes) -> bytes:
    return encode(T.CHUNK, FILE_CHUNK.pack(index, offset) + data)


def unpack_chunk(payload: bytes) -> tuple[int, int, bytes]:
    if len(payload) < FILE_CHUNK.size:
        raise ProtocolError("CHUNK frame shorter than its header")
    index, offset = FILE_CHUNK.unpack_from(payload)
    return index, offset, payload[FILE_CHUNK.size :]
