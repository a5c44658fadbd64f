"""`edge-pse export` (= `python export/quantize.py`): int8 PTQ/QAT or fp32 bundles for ExecuTorch, LiteRT, ONNX."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_pse.bundle import FORMATS, MODES
from edge_pse.errors import EdgePseError

STUDENTS = ("tiny", "small", "teacher")


def _formats(text: str) -> tuple[str, ...]:
    fmts = tuple(dict.fromkeys(f.strip() for f in text.split(",") if f.strip()))
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise argparse.ArgumentTypeError(f"unknown format(s) {bad or text!r}; choose from {','.join(FORMATS)}")
    return fmts


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _frame_level(text: str) -> str:
    if text in ("auto", "off"):
        return text
    try:
        if -60.0 <= float(text) <= 0.0:
            return text
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected auto, off or a level between -60 and 0 dBFS, got {text!r}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--student", choices=STUDENTS, default=None, help="shipped checkpoint to export (default tiny)")
    src.add_argument("--checkpoint", type=Path, help="a checkpoint file written by edge-pse (instead of --student)")
    p.add_argument(
        "--mode", choices=tuple(MODES), default="ptq", help="int8 post-training (default), int8 QAT, or fp32"
    )
    p.add_argument("--formats", type=_formats, default=FORMATS, help="comma list of pte,tflite,onnx (default all)")
    p.add_argument(
        "--calibration",
        type=Path,
        default=None,
        help="folder of calibration .npz files, or a data root laid out like ../shared/data (speech/, noise/, rir/) "
        "(default: the committed synthetic set shipped in edge_pse/calibration_data/)",
    )
    p.add_argument(
        "--activation-ranges",
        metavar="FILE|none",
        help="int8 activation ranges to pin (a bundle's activation_ranges.json, measured with --calibration on "
        "real speech); default: the checkpoint's <name>.ranges.json when it has one and --calibration is not "
        "given; none: calibrate on the clips only",
    )
    p.add_argument("--output", type=Path, help="bundle folder (default artifacts/<student>-<mode>/)")
    p.add_argument("--clips", type=_positive_int, default=24, help="clips to mix when --calibration is a data root")
    p.add_argument("--calibration-hops", type=_positive_int, help="cap on hops per calibration clip")
    p.add_argument("--qat-steps", type=_positive_int, default=40, help="QAT optimizer steps (--mode qat)")
    p.add_argument("--qat-batch", type=_positive_int, default=32, help="sequences per QAT step")
    p.add_argument("--min-snr-db", type=float, help="override the int8 gate: minimum SNR vs the float step (dB)")
    p.add_argument("--max-drop-db", type=float, help="override the int8 gate: maximum SI-SDRi drop vs float (dB)")
    p.add_argument(
        "--frame-level-dbfs",
        type=_frame_level,
        default="auto",
        metavar="DB|off|auto",
        help="per-frame level normalisation in the exported step (auto: the checkpoint's own, else -20 dBFS; "
        "without it int8 loses its accuracy on quiet input)",
    )
    p.add_argument("--seed", type=int, default=0)


def _ranges_path(args: argparse.Namespace, ckpt: Path) -> Path | None:
    """The activation ranges to pin: the one named, else the checkpoint's own unless --calibration is given."""
    from edge_pse.quant import ranges

    if args.activation_ranges not in (None, "none") and args.mode != "ptq":
        raise EdgePseError(
            f"--activation-ranges applies to --mode ptq (QAT learns its own; fp32 has none), not {args.mode}"
        )
    if args.activation_ranges == "none" or args.mode != "ptq":
        return None
    if args.activation_ranges is not None:
        path = Path(args.activation_ranges)
        if not path.is_file():
            raise EdgePseError(f"activation ranges {path} not found")
        return path
    own = ranges.beside(ckpt)
    return own if args.calibration is None and own.is_file() else None


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from rich.console import Console

    console = Console(stderr=True)
    if args.checkpoint is not None:
        if not args.checkpoint.is_file():
            raise EdgePseError(f"checkpoint {args.checkpoint} not found")
        ckpt, name = args.checkpoint, args.checkpoint.stem
    else:
        from edge_pse.model.checkpoint import SHIPPED_DIR

        name = args.student or "tiny"
        ckpt = SHIPPED_DIR / f"{name}.pt"
        if not ckpt.is_file():
            raise EdgePseError(
                f"the shipped {name} checkpoint ({ckpt}) does not exist yet: train it first "
                "(edge-pse train / distill) or pass --checkpoint PATH"
            )
    ranges_path = _ranges_path(args, ckpt)
    if args.calibration is None:
        from edge_pse import calibration_data

        args.calibration = calibration_data.folder()
    if not args.calibration.is_dir():
        raise EdgePseError(f"calibration directory {args.calibration} not found")
    out = args.output or Path("artifacts") / f"{name}-{args.mode}"  # beside where the user runs it
    if out.exists() and not (out / "manifest.json").is_file():
        raise EdgePseError(f"output {out} exists and is not a bundle; refusing to replace it")
    from edge_pse.runtime.audio_io import check_writable

    existing = next(p for p in (out.parent, *out.parent.parents) if p.exists())  # parents are made as needed
    check_writable(existing / out.name)  # a read-only place fails now, not after minutes of export

    import torch

    from edge_pse.bundle import sha256_file
    from edge_pse.exporters.accuracy import Tolerance
    from edge_pse.exporters.pipeline import ExportOptions, GateFailed, export_bundle
    from edge_pse.exporters.report import rows_from_results, table
    from edge_pse.model.checkpoint import load_model
    from edge_pse.quant import ranges
    from edge_pse.quant.calibration import load_calibration

    torch.set_num_threads(1)  # the latency figures are 1-thread figures; the box is shared
    model, payload = load_model(ckpt)
    calib = load_calibration(args.calibration, n_clips=args.clips, seed=args.seed)
    tol = Tolerance()
    if args.min_snr_db is not None:
        tol = replace(tol, int8_min_snr_db=args.min_snr_db)
    if args.max_drop_db is not None:
        tol = replace(tol, int8_max_drop_db=args.max_drop_db)
    opts = ExportOptions(
        mode=args.mode,
        formats=args.formats,
        max_calibration_hops=args.calibration_hops,
        qat_steps=args.qat_steps,
        qat_batch=args.qat_batch,
        tolerance=tol,
        seed=args.seed,
        frame_level=args.frame_level_dbfs,
        ranges=None if ranges_path is None else ranges.load(ranges_path, sha256_file(ckpt)),
    )
    console.print(f"exporting {ckpt} ({payload.get('preset')}), mode {args.mode}, formats {','.join(args.formats)}")
    console.print(f"calibration: {calib.describe()}")
    if opts.ranges is not None:
        console.print(f"int8 activation ranges: {ranges_path} (measured on {opts.ranges.source})")
    console.print(
        f"gate: int8 SNR vs float >= {tol.int8_min_snr_db:g} dB, SI-SDRi drop <= {tol.int8_max_drop_db:g} dB; "
        f"fp32 >= {tol.fp32_min_snr_db:g} dB, <= {tol.fp32_max_drop_db:g} dB"
    )
    try:
        path, results, ref_sdri = export_bundle(
            model, payload.get("preset", name), str(ckpt), calib, out, opts, log=console.print
        )
    except GateFailed as e:
        print(table(rows_from_results(e.results), e.ref_sdri))
        raise
    print(table(rows_from_results(results), ref_sdri))
    console.print(f"bundle written to {path}")
    return 0
