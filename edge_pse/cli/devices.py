"""`edge-pse devices`: the audio devices PortAudio sees (and the sample rates they take), and the device
profiles `edge-pse run --device` accepts."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--profiles", action="append", default=[], metavar="FILE", help="extra device profiles (TOML)")


def run(args: argparse.Namespace) -> int:
    from edge_pse.errors import EdgePseError
    from edge_pse.runtime import devices

    profiles = [devices.resolve(name, args.profiles) for name, _ in devices.all_profiles(args.profiles)]
    names = [name for name, _ in devices.all_profiles(args.profiles)]
    try:
        audio, audio_error = devices.audio_devices(), None
    except EdgePseError as e:  # no PortAudio: still list the profiles, say why the devices are missing
        audio, audio_error = [], str(e)
    if args.json:
        rows = [{"alias": n, **p.to_dict()} for n, p in zip(names, profiles, strict=True)]
        print(json.dumps({"audio_devices": audio, "audio_error": audio_error, "profiles": rows}, indent=2))
        return 0
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 120)
    t = Table(title="audio devices (use as --input mic:INDEX / --output speaker:INDEX)")
    for col in ("index", "name", "host API", "in", "out", "default rate", "takes (Hz)"):
        t.add_column(col, justify="left" if col in ("name", "host API") else "right")
    for d in audio:
        rates = ", ".join(str(r) for r in d["rates"]) or "-"
        t.add_row(
            str(d["index"]),
            d["name"],
            d["hostapi"],
            str(d["inputs"]),
            str(d["outputs"]),
            f"{d['default_rate']:.0f}",
            rates,
        )
    console.print(t)
    if audio_error:
        console.print(f"[yellow]no audio devices: {escape(audio_error)}[/]")
    elif not audio:
        console.print("[yellow]PortAudio sees no audio devices[/]")
    p = Table(title="device profiles (--device NAME; add your own with --profiles FILE or EDGE_PSE_PROFILES)")
    for col in ("name", "resolves to", "threads", "backends", "deadline", "on miss", "ring/prefill/backlog hops"):
        p.add_column(col)
    for name, prof in zip(names, profiles, strict=True):
        p.add_row(
            name,
            prof.name if prof.name != name else "",
            str(prof.threads),
            ",".join(prof.backends),
            f"{prof.deadline_ms:g} ms",
            prof.on_miss,
            f"{prof.ring_hops}/{prof.prefill_hops}/{prof.max_backlog_hops}",
        )
    console.print(p)
    return 0
