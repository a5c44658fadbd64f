"""`edge-pse bench`: time a matrix of bundles x backends x threads on this machine, score each model file on
a held-out set, and write report.json / report.md / report.html (docs/bench.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge_pse.errors import EdgePseError

BACKEND_CHOICES = ("litert", "executorch", "onnx", "torch")
MAX_THREADS = 64  # the agent's limit too: more threads than any Pi-class CPU has cores is a typo


def _threads(text: str) -> list[int]:
    try:
        vals = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads takes a comma list of integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"--threads values must be >= 1, got {text!r}")
    if any(v > MAX_THREADS for v in vals):
        raise argparse.ArgumentTypeError(f"--threads values must be <= {MAX_THREADS}, got {text!r}")
    return sorted(set(vals))


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="host", help="device profile (rpi, rpi4, rpi5, arm64, host): default threads")
    p.add_argument("--profiles", action="append", default=[], metavar="FILE", help="extra device profiles (TOML)")
    p.add_argument(
        "--models",
        nargs="+",
        metavar="MODEL",
        help="bundle folders and/or plug-ins (module:function or ep:NAME; docs/bench.md). "
        "Default: every bundle in edge_pse/bundles/ and artifacts/",
    )
    p.add_argument("--backends", nargs="+", choices=BACKEND_CHOICES, help="default: litert executorch onnx")
    p.add_argument(
        "--peers",
        metavar="DIR",
        help="folder with the peer models (DTLN, GTCRN) run as cells beside ours; 'none' to leave them out. "
        "Default: ../shared/peers when it exists (a missing folder, file or runtime skips them, with a note)",
    )
    p.add_argument("--threads", type=_threads, help="comma list, e.g. 1,2,4 (default: the device profile's)")
    p.add_argument("--hops", type=_positive, default=2000, help="timed hops per cell (default 2000 = 20 s audio)")
    p.add_argument("--warmup", type=_positive, default=200, help="untimed hops before timing (default 200)")
    p.add_argument(
        "--eval-data", type=Path, help="data root (../shared/data layout): measure quality on its test split"
    )
    p.add_argument(
        "--eval-corpus",
        nargs="+",
        metavar="CORPUS",
        help="with --eval-data: targets and talkers from these speech/CORPUS folders only (one corpus's row)",
    )
    p.add_argument("--per-condition", type=_positive, default=10, help="eval clips per condition (default 10)")
    p.add_argument("--seconds", type=float, default=4.0, help="eval clip length (default 4 s)")
    p.add_argument(
        "--teacher",
        default="auto",
        help="float reference checkpoint (name or path), 'none' to skip; default: the shipped teacher when it exists",
    )
    p.add_argument("--no-asr", action="store_true", help="skip WER (Whisper transcripts are the slow part)")
    p.add_argument("--no-dnsmos", action="store_true", help="skip personalized DNSMOS (~4 s per clip)")
    p.add_argument("--fast", action="store_true", help="quality: SI-SDRi, TSOS and target-absent level only")
    p.add_argument("--note", action="append", default=[], help="a note to print in the report (repeatable)")
    p.add_argument("--output", type=Path, required=True, help="report folder, e.g. reports/NAME/")
    p.add_argument(
        "--target",
        action="append",
        metavar="USER@HOST|HOST:PORT",
        help="run the bench on device agents (USER@HOST: over SSH) instead of here (their deployed bundle; repeat "
        "or comma-separate for a fleet, run concurrently); reports are pulled back and merged per device into OUTPUT",
    )
    p.add_argument("--token-file", default=None, help="with --target: shared agent token file ($EDGE_PSE_TOKEN)")


def _teacher(arg: str) -> str | None:
    if arg == "none":
        return None
    if arg == "auto":
        shipped = Path(__file__).resolve().parent.parent / "checkpoints" / "teacher.pt"
        return str(shipped) if shipped.is_file() else None
    if not Path(arg).is_file() and arg not in ("tiny", "small", "teacher"):
        raise EdgePseError(f"--teacher {arg!r}: no such checkpoint file")
    return arg


def run_remote(args: argparse.Namespace) -> int:
    """`--target`: each agent benches its deployed bundle on the device; merged report beside the prediction."""
    from firmware_host import client

    if args.models or args.eval_data:
        raise EdgePseError(
            "--target benches the bundle deployed on each device (edge-pse deploy first): "
            "--models and --eval-data are for a local bench"
        )
    targets = client.targets(args.target)
    merged = client.remote_bench(
        targets,
        client.token(args.token_file, targets),
        args.output,
        device=args.device,
        backends=args.backends,
        threads=args.threads,
        hops=args.hops,
    )
    print((args.output / "remote_report.md").read_text())
    bad = [t for t, rep in merged["devices"].items() if "error" in rep]
    if bad:
        raise EdgePseError(f"{len(bad)} of {len(targets)} devices failed: {', '.join(bad)}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.target:
        return run_remote(args)
    from rich.console import Console
    from rich.markup import escape

    from edge_pse.bench.matrix import (
        BUNDLE_BACKENDS,
        BenchOptions,
        default_models,
        resolve_peers,
        resolve_sources,
        run_matrix,
    )
    from edge_pse.bench.report import write_report
    from edge_pse.runtime import devices
    from edge_pse.runtime.backends import EXTRAS, installed

    console = Console(stderr=True)
    profile = devices.resolve(args.device, args.profiles)
    if args.eval_corpus and args.eval_data is None:
        raise EdgePseError("--eval-corpus needs --eval-data")
    if args.eval_data is not None and not (args.eval_data / "speech").is_dir():
        raise EdgePseError(f"--eval-data {args.eval_data}: not a data root (no speech/ folder)")
    if args.seconds <= 0:
        raise EdgePseError("--seconds must be positive")
    models = args.models or default_models()
    if not models:
        raise EdgePseError("no bundles found in edge_pse/bundles/ or artifacts/; pass --models BUNDLE ...")
    sources = resolve_sources(models)
    peers, skipped = resolve_peers(args.peers)
    for line in skipped:
        console.print(f"[yellow]{escape(line)}[/]")
    sources += peers
    threads = args.threads or [profile.threads]
    backends = list(args.backends or BUNDLE_BACKENDS)
    if not args.backends:  # the default set: what this install can run (a Pi installs [litert] alone)
        missing = [b for b in backends if not installed(b)]
        for b in missing:
            line = f"skipped the {b} cells: its runtime is not installed (pip install 'edge-pse[{EXTRAS[b]}]')"
            console.print(f"[yellow]{escape(line)}[/]")
            skipped.append(line)
        backends = [b for b in backends if b not in missing]
        if not backends:
            raise EdgePseError("no model runtime is installed: pip install 'edge-pse[litert]' (or onnx, executorch)")
    opts = BenchOptions(
        hops=args.hops,
        warmup=args.warmup,
        deadline_us=profile.deadline_ms * 1000,
        eval_data=str(args.eval_data) if args.eval_data else None,
        eval_corpora=tuple(args.eval_corpus) if args.eval_corpus else None,
        per_condition=args.per_condition,
        seconds=args.seconds,
        asr=not (args.no_asr or args.fast),
        dnsmos=not (args.no_dnsmos or args.fast),
        intrusive=not args.fast,
        teacher=_teacher(args.teacher) if args.eval_data else None,
        progress=sys.stderr.isatty(),
        peers=peers[0].path if peers else None,
    )
    report, clip = run_matrix(sources, backends, threads, opts, console.print)
    report = {"device_profile": profile.name, "device_requested": args.device, **report}
    report["notes"] = [*args.note, *skipped, *report.get("notes", [])]
    written = write_report(report, args.output, clip)
    from edge_pse.bench.report import cell_table

    head, rows = cell_table(report)
    from rich.table import Table

    t = Table(title=f"edge-pse bench: profile {profile.name}")
    for h in head:
        t.add_column(h, justify="right")
    for r in rows:
        t.add_row(*r)
    Console(width=None if sys.stdout.isatty() else 200).print(t)
    console.print("wrote " + ", ".join(str(p) for p in written))
    failed = [c["key"] for c in report["cells"] if "error" in c]
    if failed:
        console.print(f"[red]{len(failed)} cell(s) failed: {', '.join(failed)}[/]")
        return 1
    return 0
