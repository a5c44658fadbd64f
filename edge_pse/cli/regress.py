"""`edge-pse regress`: compare a bench report with a baseline cell by cell; exit 1 on a regression beyond
tolerance (latency ratios, quality deltas; defaults in docs/bench.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--baseline", type=Path, required=True, help="baseline report.json (e.g. reports/baseline/)")
    p.add_argument("--current", type=Path, required=True, help="the new report.json")
    p.add_argument("--tolerances", type=Path, help="TOML overriding the default tolerances (docs/bench.md)")
    p.add_argument("--no-normalize", action="store_true", help="compare raw latency ratios (no speed-probe factor)")
    p.add_argument("--all", action="store_true", help="print every check, not only failures and latency")


def _path(p: Path) -> Path:
    return p / "report.json" if p.is_dir() else p


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from edge_pse.bench.regress import compare, load_tolerances
    from edge_pse.bench.report import load_report
    from edge_pse.errors import EdgePseError

    tol = load_tolerances(args.tolerances)
    if args.no_normalize:
        tol["normalize_machine_speed"] = False
    baseline, current = load_report(_path(args.baseline)), load_report(_path(args.current))
    checks, summary = compare(baseline, current, tol)
    if not summary["compared"]:
        raise EdgePseError("the two reports have no cell in common (cells match by model/quantization/backend/threads)")
    console = Console(width=None if sys.stdout.isatty() else 160)
    t = Table(title=f"edge-pse regress: {args.current} vs {args.baseline} (machine factor {summary['machine_factor']})")
    for col in ("cell", "metric", "baseline", "current", "change", "limit", "result"):
        t.add_column(col, justify="left" if col in ("cell", "metric", "result") else "right")
    for c in checks:
        if not (args.all or c.failed or c.metric.startswith("latency") or c.metric == "si_sdri"):
            continue
        change = "-" if c.change is None else f"x{c.change:.2f}" if c.kind == "ratio" else f"{c.change:+.3f}"
        limit = "-" if c.limit is None else f"x{c.limit:.2f}" if c.kind == "ratio" else f"{c.limit:.3f} worse"
        num = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
        result = "[red]REGRESSION[/]" if c.failed else "ok"
        if c.note:
            result += f" ({c.note})"
        t.add_row(c.key, c.metric, num(c.baseline), num(c.current), change, limit, result)
    console.print(t)
    if summary["only_baseline"]:
        console.print(f"not in the current report (not checked): {', '.join(summary['only_baseline'])}")
    if summary["only_current"]:
        console.print(f"new cells (no baseline): {', '.join(summary['only_current'])}")
    failed = [c for c in checks if c.failed]
    if failed:
        console.print(f"[red]{len(failed)} regression(s) beyond tolerance in {len({c.key for c in failed})} cell(s)[/]")
        return 1
    console.print(f"no regression: {len(checks)} checks over {len(summary['compared'])} cells within tolerance")
    return 0
