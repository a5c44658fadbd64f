"""`edge-pse mic`: the enrolled voice, cleaned, as a microphone every app can pick ("edge-pse (NAME)").

PipeWire (with pipewire-pulse) or PulseAudio: the sound server's own modules and clients (runtime/virtual_mic.py).
`--install-service` writes a systemd user unit so the virtual mic is there after login.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

UNIT = "edge-pse-mic.service"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--input", default=None, metavar="SOURCE", help="the real microphone (default: the server's default source)"
    )
    p.add_argument("--model", type=Path, default=None, help="bundle folder (default: the shipped tiny-int8)")
    p.add_argument("--speaker", type=Path, default=None, help="speaker profile .spk (default: the demo's)")
    p.add_argument("--name", default="mic", help="the virtual mic is listed as 'edge-pse (NAME)' (default: mic)")
    p.add_argument("--device", default="host", help="device profile: rpi4, rpi5, rpi (detect), arm64, host (default)")
    p.add_argument("--profiles", action="append", default=[], metavar="FILE", help="extra device profiles (TOML)")
    p.add_argument("--backend", choices=("litert", "executorch", "onnx", "torch"), help="override the profile's order")
    p.add_argument("--threads", type=int, default=None, help="backend threads (default: the profile's)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: Ctrl-C)")
    p.add_argument("--stats", type=Path, default=None, metavar="JSON", help="write the run's stats as JSON at the end")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    act = p.add_mutually_exclusive_group()
    act.add_argument("--list", action="store_true", help="show the sound server, the sources and what would connect")
    act.add_argument("--install-service", action="store_true", help=f"write and enable a systemd user unit ({UNIT})")
    act.add_argument("--uninstall-service", action="store_true", help=f"disable and remove {UNIT}")


def run(args: argparse.Namespace) -> int:
    from edge_pse.errors import EdgePseError

    if args.threads is not None and args.threads < 1:
        raise EdgePseError("--threads must be >= 1")
    if args.duration is not None and args.duration <= 0:
        raise EdgePseError("--duration must be positive")
    if args.install_service or args.uninstall_service:
        return _service(args)
    from edge_pse import demo
    from edge_pse.cli.run import DEFAULT_BUNDLE, _print_summary
    from edge_pse.runtime import devices, virtual_mic

    server = virtual_mic.detect()
    source = args.input or server.default_source
    known = dict(virtual_mic.sources())
    if args.list:
        print(f"sound server: {server.name} {server.version} ({server.kind})")
        print(f"input: {source}" + (f" ({known[source]})" if source in known else " (not a source of this server)"))
        print(f"virtual mic: 'edge-pse ({args.name})', source edge_pse_{virtual_mic._ident(args.name)}")
        print("sources:")
        for name, desc in known.items():
            print(f"  {name}  {desc}{'  <- default' if name == server.default_source else ''}")
        return 0
    if source not in known:
        raise EdgePseError(f"no source {source!r} on the sound server (`edge-pse mic --list` shows them)")
    profile = devices.resolve(args.device, args.profiles)
    from edge_pse.runtime.session import open_session

    session = open_session(
        args.model or DEFAULT_BUNDLE, args.speaker or demo.path(demo.SPEAKER), profile, backend=args.backend,
        threads=args.threads, default_bundle=args.model is None,
    )  # fmt: skip
    if not args.quiet:
        print(f"edge-pse mic: '{virtual_mic.VirtualMic(args.name, session.sample_rate).description}' on "
              f"{server.name}, from {source} ({session.backend.name}); Ctrl-C to stop", file=sys.stderr)  # fmt: skip
    stats = virtual_mic.run_mic(
        session.backend, profile, hop=session.hop, sample_rate=session.sample_rate, source=source, name=args.name,
        duration_s=args.duration,
    )  # fmt: skip
    stats = {"device_profile": profile.name, **session.describe(), **stats}
    if args.stats is not None:
        import json

        from edge_pse.runtime import audio_io

        audio_io.write_text(args.stats, json.dumps(stats, indent=2) + "\n")
    if not args.quiet:
        _print_summary(stats, "mic")
        lat = stats["latency_ms"]
        print(
            f"added latency: {lat['added']} ms (model window {lat['model']:g} ms + the server's capture "
            f"{lat.get('capture_ms', '?')} ms and playback {lat.get('playback_ms', '?')} ms buffers); deadline misses "
            f"{stats.get('deadline_misses', stats.get('misses', 0))}"
            if lat.get("added") is not None
            else "added latency: the server reported none"
        )
    return 0


def _service(args: argparse.Namespace) -> int:
    """A systemd user unit running this same command (absolute paths), after the sound server starts."""
    import os

    from edge_pse.errors import EdgePseError
    from edge_pse.runtime import audio_io

    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    unit = config / "systemd" / "user" / UNIT
    systemctl = shutil.which("systemctl")
    if args.uninstall_service:
        if systemctl:
            subprocess.run([systemctl, "--user", "disable", "--now", UNIT], capture_output=True, check=False)
        if unit.exists():
            unit.unlink()
            print(f"removed {unit}")
        else:
            print(f"{unit} was not installed")
        return 0
    cmd = [sys.executable, "-m", "edge_pse", "mic", "--name", args.name, "--device", args.device, "--quiet"]
    for flag, value in (("--input", args.input), ("--model", args.model), ("--speaker", args.speaker),
                        ("--backend", args.backend), ("--threads", args.threads)):  # fmt: skip
        if value is not None:
            cmd += [flag, str(Path(value).resolve()) if isinstance(value, Path) else str(value)]
    for path in (args.model, args.speaker):
        if path is not None and not Path(path).exists():
            raise EdgePseError(f"{path} not found: the service would fail at every start")
    text = "\n".join([
        "[Unit]",
        f"Description=edge-pse virtual microphone 'edge-pse ({args.name})'",
        "After=pipewire-pulse.service pulseaudio.service",
        "",
        "[Service]",
        "ExecStart=" + shlex.join(cmd),
        "Restart=on-failure",
        "RestartSec=3",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ])  # fmt: skip
    unit.parent.mkdir(parents=True, exist_ok=True)
    audio_io.write_text(unit, text)
    print(f"wrote {unit}")
    enable = [systemctl or "systemctl", "--user", "daemon-reload"], [systemctl or "systemctl", "--user", "enable",
                                                                       "--now", UNIT]  # fmt: skip
    if systemctl:
        for c in enable:
            res = subprocess.run(c, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                print(f"`{shlex.join(c)}` failed ({res.stderr.strip() or res.returncode}); run it in your login "
                      "session", file=sys.stderr)  # fmt: skip
                return 1
        print(f"enabled {UNIT}: the virtual mic starts at login (`journalctl --user -u {UNIT}` shows its log)")
    else:
        print("no systemctl here: enable it with: " + " && ".join(shlex.join(c) for c in enable))
    return 0
