"""The wire format on its own: frames round-trip, every cap is enforced from the header alone, the HMAC
proofs bind role and both nonces, targets parse."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from edge_pse.errors import EdgePseError
from firmware_host import protocol as P
from firmware_host.client import parse_target
from firmware_host.protocol import T


def test_frames_round_trip_over_a_socket() -> None:
    a, b = socket.socketpair()
    with a, b:
        hop = np.linspace(-1, 1, 160, dtype=np.float32)
        P.send(a, P.encode_json(T.REQUEST, {"op": "status"}))
        P.send(a, P.pack_hop(7, hop))
        P.send(a, P.pack_out(8, 1234, 5678, hop * 0.5))
        P.send(a, P.pack_chunk(2, 4096, b"abc"))
        assert P.recv_frame(b).json() == {"op": "status"}
        seq, x = P.unpack_hop(P.recv_frame(b).payload, 160)
        assert seq == 7 and np.array_equal(x, hop)
        seq, m, d, y = P.unpack_out(P.recv_frame(b).payload, 160)
        assert (seq, m, d) == (8, 1234, 5678) and np.array_equal(y, hop * 0.5)
        assert P.unpack_chunk(P.recv_frame(b).payload) == (2, 4096, b"abc")


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (P.HEADER.pack(b"GE", P.VERSION, int(T.REQUEST), 2), "bad magic"),
        (P.HEADER.pack(P.MAGIC, P.VERSION + 1, int(T.REQUEST), 2), "protocol version"),
        (P.HEADER.pack(P.MAGIC, P.VERSION, 99, 2), "unknown frame type"),
        (P.HEADER.pack(P.MAGIC, P.VERSION, int(T.HOP), 2**32 - 1), "exceeds its cap"),
        (P.HEADER.pack(P.MAGIC, P.VERSION, int(T.REQUEST), 64 * 1024 + 1), "exceeds its cap"),
    ],
)
def test_a_bad_header_is_refused_before_reading_the_payload(header: bytes, message: str) -> None:
    with pytest.raises(P.ProtocolError, match=message):
        P.parse_header(header)


def test_the_sender_cannot_exceed_a_cap_either() -> None:
    with pytest.raises(ValueError, match="exceeds its cap"):
        P.encode(T.CHUNK, bytes(P.MAX_PAYLOAD[T.CHUNK] + 1))


def test_malformed_payloads_are_protocol_errors() -> None:
    with pytest.raises(P.ProtocolError, match="not JSON"):
        P.Frame(T.REQUEST, b"\xff{").json()
    with pytest.raises(P.ProtocolError, match="JSON object"):
        P.Frame(T.REQUEST, b"[1, 2]").json()
    with pytest.raises(P.ProtocolError, match="HOP frame of"):
        P.unpack_hop(bytes(10), 160)


def test_auth_macs_bind_the_token_the_role_and_both_nonces() -> None:
    n1, n2 = P.new_nonce(), P.new_nonce()
    assert n1 != n2 and len(n1) == 2 * P.NONCE_BYTES
    mac = P.auth_mac(b"token-one", b"client", n1, n2)
    assert P.check_mac(mac, P.auth_mac(b"token-one", b"client", n1, n2))
    assert not P.check_mac(mac, P.auth_mac(b"token-two", b"client", n1, n2))
    assert not P.check_mac(mac, P.auth_mac(b"token-one", b"agent", n1, n2))  # no reflection
    assert not P.check_mac(mac, P.auth_mac(b"token-one", b"client", n2, n1))
    assert not P.check_mac(mac, None)


def test_token_comes_from_a_file_or_the_environment(tmp_path, monkeypatch) -> None:
    f = tmp_path / "token"
    f.write_text("s3cret-token-4b9d21e7\n")
    f.chmod(0o600)
    assert P.load_token(str(f)) == b"s3cret-token-4b9d21e7"
    monkeypatch.setenv("EDGE_PSE_TOKEN", "from-the-env-0a7c3f19")
    assert P.load_token(None) == b"from-the-env-0a7c3f19"
    monkeypatch.setenv("EDGE_PSE_TOKEN", "")
    with pytest.raises(ValueError, match="EDGE_PSE_TOKEN"):
        P.load_token(None)


def test_targets_parse() -> None:
    assert parse_target("pi.local:7701") == ("pi.local", 7701)
    assert parse_target("10.0.0.2") == ("10.0.0.2", 7700)
    assert parse_target("[::1]:9000") == ("::1", 9000)
    assert parse_target("127.0.0.1:0", listen=True) == ("127.0.0.1", 0)
    for bad in ("pi:notaport", ":7700", "pi:70000", "pi:0"):
        with pytest.raises(EdgePseError, match="bad target"):
            parse_target(bad)


def _channels() -> tuple[P.Channel, P.Channel, socket.socket, socket.socket]:
    """Both ends of one logged-in connection: the host's channel and the agent's."""
    a, b = socket.socketpair()
    to_agent, to_client = P.session_keys(b"token-one-0123456789", P.new_nonce(), P.new_nonce())
    return P.Channel(a, to_agent, to_client), P.Channel(b, to_client, to_agent), a, b


FRAMES = {  # one frame of each kind the channel carries after the login: requests and the audio both ways
    "request": P.encode_json(T.REQUEST, {"op": "status"}),
    "hop": P.pack_hop(7, np.linspace(-0.5, 0.5, 160, dtype=np.float32)),
    "out": P.pack_out(7, 1000, 2000, np.linspace(0.5, -0.5, 160, dtype=np.float32)),
}


@pytest.mark.parametrize("kind", list(FRAMES))
def test_the_channel_refuses_injected_replayed_reordered_dropped_and_reflected_frames(kind: str) -> None:
    """Audio frames are sealed like requests: with the tag check off for HOP frames, every test passed before."""
    req = FRAMES[kind]
    host, agent, a, b = _channels()
    with a, b:
        host.send(req)
        got = agent.recv()
        assert P.encode(got.type, got.payload) == req
        a.sendall(req + bytes(P.TAG_BYTES))  # injected: no key
        with pytest.raises(P.ProtocolError, match="failed authentication"):
            agent.recv()
    cases = {  # what crosses the wire after three sealed frames f1, f2, f3; how many of it are accepted
        "replayed": (lambda f1, f2, f3: f1 + f1, 1),
        "reordered": (lambda f1, f2, f3: f2 + f1, 0),
        "dropped": (lambda f1, f2, f3: f1 + f3, 1),
    }
    for wire, accepted in cases.values():
        host, agent, a, b = _channels()
        with a, b:
            f1, f2, f3 = (host.seal(req) for _ in range(3))
            a.sendall(wire(f1, f2, f3))
            for _ in range(accepted):
                agent.recv()
            with pytest.raises(P.ProtocolError, match="failed authentication"):
                agent.recv()
    host, agent, a, b = _channels()
    with a, b:
        b.sendall(host.seal(req))  # the host's own frame sent back to it
        with pytest.raises(P.ProtocolError, match="failed authentication"):
            host.recv()


def test_session_keys_differ_per_login_and_per_direction() -> None:
    n1, n2, n3 = P.new_nonce(), P.new_nonce(), P.new_nonce()
    up, down = P.session_keys(b"token-one-0123456789", n1, n2)
    assert up != down and len(up) == 32
    assert P.session_keys(b"token-one-0123456789", n1, n3)[0] != up
    assert P.session_keys(b"token-two-0123456789", n1, n2)[0] != up


def test_hello_keeps_version_1_in_its_header_so_any_client_can_read_the_protocol() -> None:
    frame = P.encode_json(T.HELLO, {"protocol": P.VERSION})
    assert P.HEADER.unpack(frame[: P.HEADER.size])[1] == P.HELLO_VERSION == 1
    assert P.parse_header(frame[: P.HEADER.size])[0] == T.HELLO
    with pytest.raises(P.VersionMismatch, match="speaks protocol version 1; this edge-pse speaks 2"):
        P.parse_header(P.HEADER.pack(P.MAGIC, 1, int(T.REQUEST), 2))
