"""`edge-pse agent`: the device agent hosts deploy to and stream audio through (docs/protocol.md).

Runs on the Pi with only the torch-free runtime. Listens on loopback unless told otherwise; every connection
must prove it knows the shared token (HMAC challenge-response; the token never crosses the wire).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_LISTEN = "127.0.0.1:7700"


def default_root() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "edge-pse" / "agent"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT", help=f"default {DEFAULT_LISTEN}")
    p.add_argument("--root", type=Path, default=None, help=f"where deployed bundles live (default {default_root()})")
    p.add_argument("--token-file", default=None, help="file holding the shared token (default: $EDGE_PSE_TOKEN)")
    p.add_argument(
        "--stdio",
        action="store_true",
        help="serve one link on stdin/stdout, as `ssh pi@host edge-pse agent --stdio` runs it (no token, no port: "
        "SSH authenticates and encrypts; hosts use --target pi@host)",
    )


def run(args: argparse.Namespace) -> int:
    import ipaddress
    import logging

    from edge_pse.errors import EdgePseError
    from firmware_host.agent import serve
    from firmware_host.client import parse_target
    from firmware_host.protocol import load_token

    # failed logins, refused addresses, accept errors: to stderr, timestamped (the journal when run as a service)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s edge-pse agent: %(message)s")
    if args.stdio:
        from firmware_host.agent import serve_stdio

        serve_stdio(args.root or default_root())
        return 0
    host, port = parse_target(args.listen, listen=True)
    try:
        token = load_token(args.token_file)
    except (OSError, ValueError) as e:
        raise EdgePseError(str(e)) from None
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        print(f"edge-pse agent: listening on {host}, reachable from the network (token-authenticated)", file=sys.stderr)
    try:
        serve(args.root or default_root(), token, host, port)
    except OSError as e:
        raise EdgePseError(f"cannot listen on {args.listen}: {e.strerror or e}") from None
    return 0
