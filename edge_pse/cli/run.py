"""`edge-pse run`: enhance a file, or the microphone live, with a bundle and a speaker profile.

Torch-free unless `--backend torch` is chosen. With no arguments it runs the built-in demo (the shipped
tiny int8 bundle, the demo speaker and mixture) and prints the stats.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

DEFAULT_BUNDLE = Path(__file__).resolve().parent.parent / "bundles" / "tiny-int8"
LIVE_IN, LIVE_OUT = "mic", "speaker"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="host", help="device profile: rpi4, rpi5, rpi (detect), arm64, host (default)")
    p.add_argument("--profiles", action="append", default=[], metavar="FILE", help="extra device profiles (TOML)")
    p.add_argument(
        "--model", type=Path, default=None, help=f"bundle folder (default: the shipped {DEFAULT_BUNDLE.name})"
    )
    p.add_argument(
        "--speaker", type=Path, default=None, help="speaker profile .spk from `edge-pse enroll` (default: demo)"
    )
    p.add_argument("--input", default=None, help=f"audio file, or '{LIVE_IN}[:DEVICE]' (default: the demo mixture)")
    p.add_argument("--output", default=None, help=f"wav/flac file, or '{LIVE_OUT}[:DEVICE]' (default: ./enhanced.wav)")
    p.add_argument("--backend", choices=("litert", "executorch", "onnx", "torch"), help="override the profile's order")
    p.add_argument("--threads", type=int, default=None, help="backend threads (default: the profile's)")
    p.add_argument("--stats", type=Path, default=None, metavar="JSON", help="write the run's stats as JSON")
    p.add_argument("--duration", type=float, default=None, help="live: stop after this many seconds (default: Ctrl-C)")
    p.add_argument("--rate", type=int, default=None, help="live: device sample rate (default: 16000 if possible)")
    p.add_argument(
        "--audio-api",
        choices=("auto", "sounddevice", "pyaudio"),
        default="auto",
        help="live: the PortAudio binding (auto: sounddevice when installed, else PyAudio)",
    )
    p.add_argument(
        "--quiet",
        action="store_true",
        help="print nothing but errors (no progress, stats table or demo score; --stats still writes the stats)",
    )
    p.add_argument(
        "--target",
        default=None,
        metavar="USER@HOST|HOST:PORT",
        help="run on a device agent, over SSH or its token listener (files stay here)",
    )
    p.add_argument("--token-file", default=None, help="shared agent token file (default: $EDGE_PSE_TOKEN)")


def _live_device(spec: str, word: str) -> int | str | bool | None:
    """'mic' -> default device (None), 'mic:3' -> 3, 'mic:USB' -> 'USB'; False when spec is a file."""
    if spec != word and not spec.startswith(word + ":"):
        return False
    dev = spec[len(word) + 1 :]
    if not dev:
        return None
    return int(dev) if dev.isdigit() else dev


def _bundle_files(model: str | Path) -> dict[str, Path]:
    """Every file of a bundle folder as an input no output may overwrite (`--stats b/manifest.json` left a
    bundle that no longer loads)."""
    folder = Path(model)
    if not folder.is_dir():
        return {}
    return {f"model {p.relative_to(folder)}": p for p in sorted(folder.rglob("*")) if p.is_file()}


def run(args: argparse.Namespace) -> int:
    from edge_pse import demo
    from edge_pse.errors import EdgePseError
    from edge_pse.runtime import audio_io, devices
    from edge_pse.runtime.session import open_session

    if args.threads is not None and args.threads < 1:
        raise EdgePseError("--threads must be >= 1")
    if args.duration is not None and args.duration <= 0:
        raise EdgePseError("--duration must be positive")
    profile = devices.resolve(args.device, args.profiles)
    input_spec = args.input or str(demo.path(demo.MIXTURE))
    output_spec = args.output or "enhanced.wav"
    mic = _live_device(input_spec, LIVE_IN)
    spk = _live_device(output_spec, LIVE_OUT)
    live = mic is not False or spk is not False
    if live and (mic is False or spk is False):
        raise EdgePseError(f"live mode runs '--input {LIVE_IN} --output {LIVE_OUT}' together (files go file to file)")
    if not live:
        out_path = audio_io.check_writable(audio_io.check_output_path(output_spec))
    if args.stats is not None:
        audio_io.check_writable(audio_io.check_parent(args.stats))
    audio_io.check_distinct(
        {"input": None if live else input_spec, "speaker": args.speaker, **_bundle_files(args.model or DEFAULT_BUNDLE)},
        {"output": None if live else output_spec, "stats": args.stats},
    )
    if args.target:
        return _run_remote(args, profile, input_spec, out_path if not live else None, live)

    session = open_session(
        args.model or DEFAULT_BUNDLE,
        args.speaker or demo.path(demo.SPEAKER),
        profile,
        backend=args.backend,
        threads=args.threads,
        default_bundle=args.model is None,
    )
    describe = {"device_profile": profile.name, **session.describe()}
    if live:
        stats = {**describe, **_run_live(session, args, mic, spk)}
        if args.stats is not None:
            audio_io.write_text(args.stats, json.dumps(stats, indent=2) + "\n")
    else:
        stats = _run_file(session, args, input_spec, out_path, describe)
    if args.quiet:
        return 0
    _print_summary(stats)
    if args.input is None and args.speaker is None:  # the built-in demo: show what the model did to it
        _print_demo_score(out_path)
    return 0


def _run_remote(args: argparse.Namespace, profile, input_spec: str, out_path: Path | None, live: bool) -> int:
    """File in, file out here; the hops are enhanced by the bundle deployed on the agent at --target."""
    from edge_pse import demo
    from edge_pse.errors import EdgePseError
    from firmware_host import client

    if live or args.model:
        raise EdgePseError("--target runs a file through the device's deployed bundle (edge-pse deploy first)")
    with _hop_progress(not args.quiet and sys.stderr.isatty(), Path(input_spec).name, "remote") as tick:
        stats = client.remote_run(
            args.target,
            client.token(args.token_file, [args.target]),
            input_spec,
            out_path,
            args.speaker or demo.path(demo.SPEAKER),
            backend=args.backend,
            threads=args.threads or 1,
            deadline_ms=profile.deadline_ms,
            progress=tick,
            stats_path=args.stats,
            describe={"device_profile": profile.name},
        )
    if not args.quiet:
        _print_summary(stats)
    return 0


def _run_file(session, args, input_spec: str, out_path: Path, describe: dict) -> dict:
    """File to file in blocks through the session's backend (runtime/files.py)."""
    from edge_pse.runtime.files import LocalTransport, enhance_file

    with _hop_progress(not args.quiet and sys.stderr.isatty(), Path(input_spec).name, "enhancing") as tick:
        return enhance_file(
            LocalTransport(session.backend, session.sample_rate, session.hop, session.bundle.spec.lag_hops),
            input_spec,
            out_path,
            deadline_ms=session.profile.deadline_ms,
            stats_path=args.stats,
            describe=describe,
            progress=tick,
        )


@contextlib.contextmanager
def _hop_progress(show: bool, name: str, what: str) -> Iterator[Callable[[int, int], None] | None]:
    """The progress bar of a file run, local or remote: yields tick(hops done, hops in all), or None when
    nothing is shown (the hop loop then makes no progress calls at all)."""
    if not show:
        yield None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn(f"[bold]{what}[/] {{task.fields[name]}}"),
        BarColumn(),
        TextColumn("{task.completed} hops"),
        TimeRemainingColumn(),
        transient=True,
    ) as progress:
        task = progress.add_task(what, total=None, name=name)
        yield lambda k, total: progress.update(task, completed=k, total=total)


def _run_live(session, args, mic, spk) -> dict:
    import contextlib

    from rich.live import Live

    from edge_pse.runtime.live import run_live

    show = not args.quiet and sys.stderr.isatty()
    view = Live(_live_table(None, session), refresh_per_second=4, console=_console()) if show else None
    with view if view is not None else contextlib.nullcontext():
        return run_live(
            session.backend,
            session.profile,
            hop=session.hop,
            sample_rate=session.sample_rate,
            duration_s=args.duration,
            tick=(lambda stats: view.update(_live_table(stats, session))) if view is not None else None,
            input_device=mic,
            output_device=spk,
            device_rate=args.rate,
            audio_api=args.audio_api,
        )


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _live_table(stats, session):
    from rich.table import Table

    t = Table(title=f"edge-pse live: {session.backend.name}, profile {session.profile.name}")
    for col in ("hops", "p50 us", "p99 us", "max us", "misses", "passed through"):
        t.add_column(col, justify="right")
    if stats is None or stats.hops == 0:
        t.add_row("0", "-", "-", "-", "0", "0")
        return t
    s = stats.summary()["per_hop_us"]
    t.add_row(
        str(stats.hops),
        f"{s['p50']:.0f}",
        f"{s['p99']:.0f}",
        f"{s['max']:.0f}",
        str(stats.misses),
        str(stats.passed_through),
    )
    return t


def _print_demo_score(out_path: Path) -> None:
    """SI-SDR of the demo's mixture and of the enhanced output against the demo's clean target talker, and the
    target's level at the output: a user sees whether the other talker and the noise went and the voice stayed."""
    import soundfile as sf

    from edge_pse import demo
    from edge_pse.eval.metrics import si_sdr, target_gain_db

    target = sf.read(demo.path(demo.TARGET), dtype="float32")[0]
    mixture = sf.read(demo.path(demo.MIXTURE), dtype="float32")[0]
    enhanced = sf.read(out_path, dtype="float32")[0]
    before, after = si_sdr(mixture, target), si_sdr(enhanced, target)
    print(
        f"demo: SI-SDR vs the clean target talker {before:+.2f} dB (mixture) -> {after:+.2f} dB (enhanced), "
        f"{after - before:+.2f} dB; the target's level at the output {target_gain_db(enhanced, target):+.1f} dB"
    )


def _print_summary(stats: dict, command: str = "run") -> None:
    """The stats people read; the JSON (--stats) has everything."""
    from rich.console import Console
    from rich.table import Table

    t = Table(
        title=f"edge-pse {command}: {stats.get('backend')} ({stats.get('quantization')}), "
        f"profile {stats['device_profile']}"
    )
    t.add_column("", justify="left")
    t.add_column("per hop", justify="right")
    for key, label in (("per_hop_us", "total"), ("model_us", "model call"), ("overhead_us", "outside the model")):
        v = stats[key]
        if v["p50"] is not None:
            t.add_row(label, f"p50 {v['p50']:.1f} us  p95 {v['p95']:.1f}  p99 {v['p99']:.1f}  max {v['max']:.1f}")
    t.add_row("real-time factor", f"{stats['rtf']:.4f}")
    t.add_row(
        "deadline misses", f"{stats['deadline_misses']} of {stats['hops']} (budget {stats['deadline_us']:.0f} us)"
    )
    if "outside_model_us_per_hop" in stats:
        t.add_row("loop cost outside the model", f"{stats['outside_model_us_per_hop']:.1f} us/hop")
    if "lost_hops" in stats:
        t.add_row("lost hops", str(stats["lost_hops"]))
    t.add_row("clipped output samples", str(stats.get("output_clipped")))
    if stats.get("output"):
        t.add_row("output", f"{stats['output']} ({stats['output_frames']} frames, as the input)")
    Console(width=None if sys.stdout.isatty() else 120).print(t)
    if stats.get("input_silent"):
        print("note: the input is digital silence; the output is the model's response to silence", file=sys.stderr)
    if stats.get("input_clipped"):
        print(f"note: {stats['input_clipped']} input samples are at full scale (clipped input)", file=sys.stderr)
