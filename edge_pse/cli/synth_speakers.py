"""edge-pse synth-speakers: add espeak-ng speakers to a data root (as a linked overlay) for training."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="data root to write (speech/tts-espeak/SPK/UTT.wav)")
    p.add_argument("--data", type=Path, help="existing data root to link into --out (speech corpora, noise, rir)")
    p.add_argument("--speakers", type=int, default=40, help="synthetic speakers (default 40, at most 168)")
    p.add_argument("--utterances", type=int, default=8, help="utterances per speaker (default 8)")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from edge_pse.data.tts import espeak, overlay_root, write_speakers
    from edge_pse.errors import EdgePseError

    if args.speakers < 1 or args.utterances < 1:
        raise EdgePseError("--speakers and --utterances must be positive")
    espeak()  # fail before touching --out
    if args.data:
        overlay_root(args.data, args.out)
    with Progress(transient=True) as bar:
        task = bar.add_task("rendering", total=args.speakers * args.utterances)
        folders = write_speakers(
            args.out / "speech", args.speakers, args.utterances, args.seed, lambda: bar.advance(task)
        )
    print(f"wrote {len(folders)} speakers x {args.utterances} utterances to {args.out / 'speech'}")
    return 0
