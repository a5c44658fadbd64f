"""The host <-> device wire format (docs/protocol.md): versioned, typed, length-prefixed frames.

Stdlib only (the agent runs on a Pi with the torch-free runtime). Every frame is an 8-byte header, then the
payload:

    magic b"EP" | version u8 | type u8 | payload length u32 (big-endian)

The receiver checks magic, version, type and the length against that type's cap BEFORE reading the payload,
so a peer can never make it allocate more than the cap. Control frames carry UTF-8 JSON objects; audio and
file chunks are binary with fixed little headers (struct formats below).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import struct
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

MAGIC = b"EP"
VERSION = 1
HEADER = struct.Struct(">2sBBI")
HOP = 160  # samples per audio frame: the bundle's hop (checked at stream open)
HOP_BYTES = 4 * HOP  # float32 little-endian
AUTH_CONTEXT = b"edge-pse agent auth v1"
NONCE_BYTES = 32


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
    T.HOP: IN_HOP.size + HOP_BYTES,
    T.OUT: OUT_HOP.size + HOP_BYTES,
}


class ProtocolError(Exception):
    """The peer broke the protocol (bad magic/version/type/length, malformed payload): drop the connection."""


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
        if not isinstance(obj, dict):
            raise ProtocolError(f"{self.type.name} payload must be a JSON object")
        return obj


def encode(ftype: T, payload: bytes) -> bytes:
    if len(payload) > MAX_PAYLOAD[ftype]:
        raise ValueError(f"{ftype.name} payload of {len(payload)} bytes exceeds its cap {MAX_PAYLOAD[ftype]}")
    return HEADER.pack(MAGIC, VERSION, int(ftype), len(payload)) + payload


def encode_json(ftype: T, obj: dict) -> bytes:
    return encode(ftype, json.dumps(obj, separators=(",", ":")).encode())


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
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
    if version != VERSION:
        raise ProtocolError(f"protocol version {version}; this side speaks {VERSION}")
    try:
        t = T(ftype)
    except ValueError:
        raise ProtocolError(f"unknown frame type {ftype}") from None
    if length > MAX_PAYLOAD[t]:
        raise ProtocolError(f"{t.name} frame of {length} bytes exceeds its cap of {MAX_PAYLOAD[t]}")
    return t, length


def recv_frame(sock: socket.socket) -> Frame:
    t, length = parse_header(_recv_exact(sock, HEADER.size))
    return Frame(t, _recv_exact(sock, length) if length else b"")


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


def auth_mac(token: bytes, role: bytes, first: str, second: str) -> str:
    """MAC over a role label and both nonces: a client proof cannot be replayed as an agent proof."""
    msg = AUTH_CONTEXT + b"|" + role + b"|" + first.encode() + b"|" + second.encode()
    return hmac.new(token, msg, hashlib.sha256).hexdigest()


def check_mac(expected: str, got: object) -> bool:
    return isinstance(got, str) and hmac.compare_digest(expected.encode(), got.encode())


def load_token(token_file: str | None, env: str = "EDGE_PSE_TOKEN") -> bytes:
    """The shared token from a file (first line, stripped) or the environment; ValueError if neither."""
    if token_file:
        with open(token_file, "rb") as f:
            token = f.read().strip()
    else:
        token = os.environ.get(env, "").strip().encode()
    if len(token) < 8:
        where = f"token file {token_file}" if token_file else f"${env}"
        raise ValueError(f"no usable shared token in {where} (need at least 8 characters)")
    return token


# --- audio and file payloads


def pack_hop(seq: int, hop: np.ndarray) -> bytes:
    return encode(T.HOP, IN_HOP.pack(seq) + np.ascontiguousarray(hop, dtype="<f4").tobytes())


def unpack_hop(payload: bytes) -> tuple[int, np.ndarray]:
    if len(payload) != IN_HOP.size + HOP_BYTES:
        raise ProtocolError(f"HOP frame of {len(payload)} bytes, expected {IN_HOP.size + HOP_BYTES}")
    (seq,) = IN_HOP.unpack_from(payload)
    return seq, np.frombuffer(payload, dtype="<f4", offset=IN_HOP.size).astype(np.float32)


def pack_out(seq: int, model_ns: int, total_ns: int, hop: np.ndarray) -> bytes:
    return encode(T.OUT, OUT_HOP.pack(seq, model_ns, total_ns) + np.ascontiguousarray(hop, dtype="<f4").tobytes())


def unpack_out(payload: bytes) -> tuple[int, int, int, np.ndarray]:
    if len(payload) != OUT_HOP.size + HOP_BYTES:
        raise ProtocolError(f"OUT frame of {len(payload)} bytes, expected {OUT_HOP.size + HOP_BYTES}")
    seq, model_ns, total_ns = OUT_HOP.unpack_from(payload)
    return seq, model_ns, total_ns, np.frombuffer(payload, dtype="<f4", offset=OUT_HOP.size).astype(np.float32)


def pack_chunk(index: int, offset: int, data: bytes) -> bytes:
    return encode(T.CHUNK, FILE_CHUNK.pack(index, offset) + data)


def unpack_chunk(payload: bytes) -> tuple[int, int, bytes]:
    if len(payload) < FILE_CHUNK.size:
        raise ProtocolError("CHUNK frame shorter than its header")
    index, offset = FILE_CHUNK.unpack_from(payload)
    return index, offset, payload[FILE_CHUNK.size :]
