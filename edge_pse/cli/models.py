"""`edge-pse models`: the preset table, computed from the modules."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


def run(args: argparse.Namespace) -> int:
    from edge_pse.model.config import PRESETS
    from edge_pse.model.stats import model_stats

    rows = [model_stats(name, cfg) for name, cfg in PRESETS.items()]
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="E3Net presets (16 kHz, 10 ms hop)")
    for col in ("preset", "N", "width", "blocks", "FF", "speaker", "params", "MACs/hop", "fp32", "int8", "latency"):
        table.add_column(col, justify="left" if col == "preset" else "right")
    for r in rows:
        table.add_row(
            r.name,
            str(r.n_filters),
            str(r.width),
            str(r.n_blocks),
            str(r.ff_dim),
            r.conditioning,
            f"{r.params / 1e6:.3f} M",
            f"{r.macs_per_hop / 1e6:.3f} M",
            f"{r.fp32_bytes / 2**20:.2f} MiB",
            f"{r.int8_bytes / 2**20:.2f} MiB",
            f"{r.latency_ms:.0f} ms",
        )
    # a pipe or CI log gets a fixed width instead of rich's 80-column default, so no cell wraps
    Console(width=None if sys.stdout.isatty() else 120).print(table)
    return 0
