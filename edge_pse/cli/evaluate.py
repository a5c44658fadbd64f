"""`edge-pse evaluate`: metrics per condition for a checkpoint, or for a bundle's file in its own runtime (what
ships), on a held-out set built from a data root."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default="tiny", help="checkpoint path or shipped model name (tiny, small, teacher)")
    p.add_argument(
        "--bundle",
        help="score an exported bundle hop by hop in its runtime instead of a checkpoint (e.g. "
        "edge_pse/bundles/tiny-int8: the int8 model that ships)",
    )
    p.add_argument(
        "--backend",
        default="litert",
        choices=("litert", "executorch", "onnx", "torch"),
        help="with --bundle: the runtime that runs its file (default litert; torch: its float reference weights)",
    )
    p.add_argument("--data", required=True, help="data root laid out like ../shared/data")
    p.add_argument(
        "--split",
        default="test",
        choices=["test", "val", "train"],
        help="held-out split (default: test); train scores the speakers, noises and rooms the model trained on, "
        "which tells an underfit model (train as low as test) from one that needs more data (train far above)",
    )
    p.add_argument(
        "--corpus",
        nargs="+",
        help="targets and talkers from these speech/CORPUS folders only (e.g. librispeech-train: the LibriSpeech "
        "test speakers as their own row); noise files and rooms are the split's",
    )
    p.add_argument("--per-condition", type=int, default=20, help="utterances per condition")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--no-asr", action="store_true", help="skip WER (Whisper transcripts are the slow part)")
    p.add_argument("--no-dnsmos", action="store_true", help="skip personalized DNSMOS (~4 s per clip)")
    p.add_argument("--fast", action="store_true", help="SI-SDR, TSOS and target-absent level only")
    p.add_argument(
        "--sweeps",
        action="store_true",
        help="also the interferer at SIR -5/0/+5 dB, target+talker+noise at -50/-30/-10 dBFS and 60 s long streams "
        "where the target pauses and the other talker goes on",
    )
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object keyed by condition")


def run(args: argparse.Namespace) -> int:
    import torch

    from edge_pse.errors import EdgePseError
    from edge_pse.eval.evaluate import EvalSet, score

    if args.per_condition <= 0:
        raise EdgePseError("--per-condition must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    enhance, what, preset = _enhancer(args)
    evalset = EvalSet.build(
        args.data,
        split=args.split,
        per_condition=args.per_condition,
        seconds=args.seconds,
        sweeps=args.sweeps,
        corpora=tuple(args.corpus) if args.corpus else None,
    )
    result = score(
        enhance,
        evalset,
        asr=not (args.no_asr or args.fast),
        intrusive_extras=not args.fast,
        dnsmos=not (args.no_dnsmos or args.fast),
        progress=sys.stderr.isatty(),
    )
    result["meta"] = {
        "checkpoint": None if args.bundle else str(args.checkpoint),
        "bundle": args.bundle,
        "backend": args.backend if args.bundle else "torch",
        "preset": preset,
        "split": args.split,
        "corpora": args.corpus,
        "per_condition": args.per_condition,
        "seconds": args.seconds,
        "sweeps": args.sweeps,
        "swap": "swap_si_sdri: the same input with another speaker's profile (the interferer's where there is one); "
        "gap = si_sdri - swap_si_sdri",
        "wer_reference": "Whisper tiny.en transcript of the clean target (pseudo-label)",
        "onset": "onset_Nms: median share of the target passed in the N ms after each onset (least-squares scale "
        "of the target in the output there; 1 = kept, 0 = muted); snr15_below_-3db: clips at SNR >= 15 dB "
        "that lost more than 3 dB SI-SDR",
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    cols = ["count", "si_sdri", "swap_si_sdri", "gap", "target_gain_db", "si_sdr", "pesq", "stoi", "pdnsmos_ovrl"]
    cols += ["wer", "wer_in", "tsos", "tsos_share", "onset_200ms", "absent_level_db", "pause_level_db"]
    seen = " (trained on: how well it fits, not a held-out figure)" if args.split == "train" else ""
    table = Table(title=f"{what} ({preset}) on the {args.split} split{seen}")
    table.add_column("condition")
    for c in cols:
        table.add_column(c, justify="right")
    for cond, r in result.items():
        if cond == "meta":
            continue
        table.add_row(
            cond, *("-" if r.get(c) is None else f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols)
        )
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    return 0


def _enhancer(args: argparse.Namespace):
    """(enhance(mixture, embedding) -> output, what it is, preset): the float checkpoint in torch, or a bundle's
    file run hop by hop by its backend exactly as `edge-pse bench` scores a cell."""
    if args.bundle is None:
        from edge_pse.eval.evaluate import torch_enhancer
        from edge_pse.model.checkpoint import load_model

        model, payload = load_model(args.checkpoint)
        return torch_enhancer(model), str(args.checkpoint), payload["preset"]
    from edge_pse.bench.cell import open_cell
    from edge_pse.bench.quality import streamer_enhancer
    from edge_pse.bundle import Bundle

    preset = Bundle.load(args.bundle).manifest["preset"]  # a missing or tampered bundle is refused here
    cell = open_cell({"kind": "bundle", "path": args.bundle, "backend": args.backend, "threads": max(args.threads, 1)})
    return streamer_enhancer(cell), f"{args.bundle} in {args.backend}", preset
