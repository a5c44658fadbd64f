"""`edge-pse train` and `edge-pse distill`: one loop, two entry points (see edge_pse.train.trainer)."""

from __future__ import annotations

import argparse


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="data root laid out like ../shared/data (speech/, noise/, rir/)")
    p.add_argument("--out", required=True, help="run directory: last.pt (resumable), best.pt, log.jsonl")
    p.add_argument("--steps", type=int, default=2000, help="total optimizer steps (a resumed run continues)")
    p.add_argument("--batch", type=int, default=8, help="examples per step and process")
    p.add_argument("--seconds", type=float, default=3.0, help="length of each training example")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-every", type=int, default=200)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT/last.pt exists")
    p.add_argument("--init", help="start from this checkpoint's weights (fine-tuning)")
    p.add_argument(
        "--recipe",
        default="standard",
        help="training mixtures by stage (train/recipes.py): 'pse' teaches the speaker (two-talker dual-target "
        "pairs, then noise, rooms and target absence); 'pse-noise' fine-tunes a pse run (--init) with more noise; "
        "'pse-keep' fine-tunes one against muting the target (asymmetric loss); 'standard' is the first models' mix",
    )
    p.add_argument(
        "--conditioning",
        choices=("concat", "standardised", "film", "mul"),
        help="override the preset's speaker conditioning (presets: film)",
    )
    p.add_argument(
        "--frame-level-dbfs",
        metavar="DB|off",
        help="override the preset's per-frame level normalisation (presets: -20): each window is scaled to this "
        "rms before the encoder and back after the decoder, so int8 keeps its accuracy at any input level",
    )
    p.add_argument("--stop-at", type=int, default=0, metavar="STEP", help="stop (resumable) at this step")
    p.add_argument("--device", default="cpu", help="where the model trains: cpu (default) or cuda on an accelerator")
    p.add_argument("--workers", type=int, default=0, help="processes making batches ahead of the step (0: inline)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="teacher", help="model preset (teacher, small, tiny)")
    add_common(p)


def add_distill_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True, help="teacher checkpoint (path or shipped name)")
    p.add_argument("--student", default="tiny", help="student preset (small, tiny)")
    p.add_argument(
        "--kd-weight",
        type=float,
        default=None,
        help="weight of the teacher-output target vs the clean target (default 0.5); 1.0 needs no clean reference",
    )
    p.add_argument(
        "--asr-loss-weight",
        type=float,
        default=0.0,
        metavar="W",
        help="add W x a frozen Whisper tiny.en token loss on the output (multi-task learning; needs the asr "
        "extra); labels are Whisper's transcripts of the clean target (no transcripts ship with the data)",
    )
    p.add_argument(
        "--noisy-only",
        nargs="?",
        const="",
        default=None,
        metavar="DIR",
        help="no clean reference anywhere in the loss: --kd-weight forced to 1, ASR labels from the teacher's "
        "output; with DIR, train on its noisy recordings (DIR/SPK/*.flac|wav, enrollment cut from the same "
        "speaker's recordings) instead of the generated mixtures; validation stays on --data",
    )
    add_common(p)


def _run(
    args: argparse.Namespace,
    preset: str,
    teacher: str | None,
    kd_weight: float,
    asr_weight: float = 0.0,
    noisy_only: bool = False,
    noisy_dir: str | None = None,
) -> int:
    from edge_pse.errors import EdgePseError
    from edge_pse.model.config import get_preset
    from edge_pse.train.trainer import TrainConfig, run_training

    try:
        get_preset(preset)
    except ValueError as e:
        raise EdgePseError(str(e)) from None
    if asr_weight > 0:  # fail before any training work when the ASR model is not installed
        from edge_pse.eval.asr import whisper_model_dir

        whisper_model_dir()
        for module in ("faster_whisper", "tokenizers"):
            try:
                __import__(module)
            except ImportError:
                raise EdgePseError(f"--asr-loss-weight needs {module}: pip install 'edge-pse[asr]'") from None
    cfg = TrainConfig(
        preset=preset,
        data=args.data,
        out=args.out,
        steps=args.steps,
        batch=args.batch,
        seconds=args.seconds,
        lr=args.lr,
        warmup=args.warmup,
        seed=args.seed,
        teacher=teacher,
        kd_weight=kd_weight,
        val_every=args.val_every,
        threads=args.threads,
        asr_weight=asr_weight,
        noisy_only=noisy_only,
        noisy_dir=noisy_dir,
        recipe=args.recipe,
        conditioning=args.conditioning,
        frame_level=args.frame_level_dbfs,
        stop_at=args.stop_at,
        device=args.device,
        workers=args.workers,
    )
    trainer = run_training(cfg, resume=not args.no_resume, init=args.init)
    if trainer.rank == 0:
        best = f"best validation SI-SNRi {trainer.best:+.2f} dB" if trainer.history else "not validated yet"
        print(f"{preset}: step {trainer.step}, {best} -> {args.out}/last.pt (resumable)")
    return 0


def run(args: argparse.Namespace) -> int:
    return _run(args, args.preset, None, 0.0)


def run_distill(args: argparse.Namespace) -> int:
    from edge_pse.errors import EdgePseError

    kd_weight = 0.5 if args.kd_weight is None else args.kd_weight
    noisy_only = args.noisy_only is not None
    if noisy_only:
        if args.kd_weight not in (None, 1.0):
            raise EdgePseError(f"--noisy-only uses the teacher's output only: --kd-weight {args.kd_weight} conflicts")
        kd_weight = 1.0
    return _run(args, args.student, args.teacher, kd_weight, args.asr_loss_weight, noisy_only, args.noisy_only or None)
