"""`edge-pse deploy`: upload a bundle to one or many devices, verify it there and activate it atomically;
`--rollback` reactivates each device's previous bundle. Several --target run concurrently."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, nargs="?", help="bundle folder (from `edge-pse export`)")
    p.add_argument("--device", default="rpi", help="device profile the bundle is meant for (recorded; default rpi)")
    p.add_argument(
        "--target",
        action="append",
        required=True,
        metavar="USER@HOST|HOST:PORT",
        help="agent to deploy to (USER@HOST: over SSH, no token); repeat it or separate with commas for a fleet "
        "(deployed concurrently)",
    )
    p.add_argument("--rollback", action="store_true", help="reactivate the previously deployed bundle instead")
    p.add_argument("--token-file", default=None, help="file holding the shared token (default: $EDGE_PSE_TOKEN)")
    p.add_argument("--json", action="store_true", help="print the per-device results as JSON")


def run(args: argparse.Namespace) -> int:
    from edge_pse.errors import EdgePseError
    from firmware_host import client, fleet

    targets = client.targets(args.target)
    if args.rollback == (args.bundle is not None):
        raise EdgePseError("give a BUNDLE to deploy, or --rollback (not both)")
    token = client.token(args.token_file, targets)
    if args.rollback:
        results = fleet.run_all(targets, lambda t: client.rollback(t, token))
    else:
        client.bundle_files(args.bundle)  # a bundle that does not verify here is refused before any upload
        results = fleet.run_all(targets, lambda t: client.deploy(t, token, args.bundle))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for t, r in results.items():
            if r["ok"]:
                act, prev = r["result"].get("active") or {}, r["result"].get("previous") or {}
                print(f"{t}: active {act.get('id')} (previous {prev.get('id') or 'none'})")
            else:
                print(f"{t}: FAILED: {r['error']}")
    bad = fleet.failed(results)
    if bad:
        raise EdgePseError(f"{len(bad)} of {len(targets)} devices failed: {', '.join(bad)}")
    return 0
