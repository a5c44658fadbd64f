"""The `edge-pse` command. Each subcommand lives in its own module and imports heavy deps lazily,
so that `edge-pse --help` and the on-device commands work without torch."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence

from edge_pse import __version__
from edge_pse.errors import EdgePseError

# subcommand name -> module under edge_pse.cli that defines `add_arguments(parser)` and `run(args) -> int`
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("edge_pse.cli.models", "print the E3Net presets: parameters, MACs per hop, weight bytes, latency"),
    "enroll": ("edge_pse.cli.enroll", "turn enrollment speech into a speaker profile (.spk)"),
    "synth-speakers": ("edge_pse.cli.synth_speakers", "add espeak-ng speakers to a data root for training"),
    "train": ("edge_pse.cli.train", "train an E3Net (e.g. the teacher) on mixtures made on the fly"),
    "distill": ("edge_pse.cli.distill", "distil a student from a teacher (knowledge distillation)"),
    "prune": ("edge_pse.cli.prune", "drop a trained model's least-used filters and units (then fine-tune it)"),
    "evaluate": ("edge_pse.cli.evaluate", "metrics per condition for a checkpoint on a held-out set"),
    "bench": ("edge_pse.cli.bench", "benchmark bundles x backends x threads: latency, memory, quality -> report"),
    "regress": ("edge_pse.cli.regress", "compare two bench reports cell by cell; non-zero exit on a regression"),
    "run": ("edge_pse.cli.run", "enhance a file or the live microphone with a bundle and a speaker profile"),
    "mic": ("edge_pse.cli.mic", "a virtual microphone 'edge-pse (NAME)' in PipeWire/PulseAudio that any app can pick"),
    "devices": ("edge_pse.cli.devices", "list audio devices, their sample rates, and the device profiles"),
    "export": ("edge_pse.cli.export", "quantize (int8 PTQ/QAT) and export a model to .pte/.tflite/.onnx bundles"),
    "agent": ("edge_pse.cli.agent", "the device agent: serves deploys, remote runs and benches to authenticated hosts"),
    "deploy": ("edge_pse.cli.deploy", "deploy a bundle to devices running `edge-pse agent` (or --rollback)"),
}


# a module a command needs -> the extra that installs it (the core install is the torch-free device path)
EXTRA_OF = {
    "torch": "train",
    "scipy": "train",
    "resemblyzer": "train",
    "pesq": "train",
    "pystoi": "train",
    "pyroomacoustics": "train",
    "speechmos": "train",
    "librosa": "train",
    "executorch": "executorch",
    "torchao": "export",
    "litert_torch": "export",
    "onnx": "export",
    "onnxscript": "export",
    "onnxruntime": "onnx",
    "ai_edge_litert": "litert",
    "matplotlib": "report",
    "sounddevice": "audio",
    "faster_whisper": "asr",
}


def missing_extra(e: ImportError, command: str) -> str | None:
    """The one-line message for a command that needs a package this install lacks, or None if unknown."""
    top = (e.name or "").split(".")[0]
    extra = "export" if command == "export" and top in ("torch", "executorch", "torchao") else EXTRA_OF.get(top)
    return f"this command needs {top}, which is not installed: pip install 'edge-pse[{extra}]'" if extra else None


def _load(module: str):
    import importlib

    return importlib.import_module(module)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-pse", description="Personalized speech enhancement (E3Net) on Raspberry Pi and ARM CPUs."
    )
    parser.add_argument("--version", action="version", version=f"edge-pse {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod = _load(module)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP: stop as on Ctrl-C (a device session closed, temporary files removed), not killed where
    the process stands (8 SIGTERMs of `run --target` left 8 sessions holding the device's slots)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminate(signum: int, _frame) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def _stop_like_ctrl_c() -> Iterator[None]:
    """While a command runs, SIGTERM and SIGHUP raise Terminated in the main thread where nothing else has taken
    them (training installs its own SIGTERM while it runs: finish the step, save, exit 0); restored after."""
    taken = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)):
            if sig is not None and signal.getsignal(sig) == signal.SIG_DFL:
                taken[sig] = signal.signal(sig, _terminate)
    try:
        yield
    finally:
        for sig, previous in taken.items():
            signal.signal(sig, previous)


def _die_by(signum: int) -> None:
    """End the process by the signal that stopped it, now that it has cleaned up: its parent (a shell, systemd,
    a supervisor) sees a death by SIGTERM, not an exit status it would count as a failure."""
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args._run
    try:
        with _stop_like_ctrl_c():
            return run(args)
    except EdgePseError as e:
        print(f"edge-pse {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except ImportError as e:  # a host command on a device install (no torch): name the extra, no traceback
        message = missing_extra(e, args.command)
        if message is None:
            raise
        print(f"edge-pse {args.command}: error: {message}", file=sys.stderr)
        return 2
    except OSError as e:  # the disk filled up, a folder turned read-only: say what, where, no traceback
        where = f": {e.filename}" if e.filename else ""
        print(f"edge-pse {args.command}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        if isinstance(e, Terminated):
            print(f"edge-pse {args.command}: stopped by {signal.Signals(e.signum).name}", file=sys.stderr)
            sys.stderr.flush()
            _die_by(e.signum)
            return 128 + e.signum  # where the signal cannot end the process (it is ignored or not delivered)
        print(f"edge-pse {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
