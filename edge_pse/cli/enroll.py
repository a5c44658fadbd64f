"""`edge-pse enroll`: enrollment speech -> speaker profile (.spk) with the d-vector encoder (torch, ONNX or LiteRT)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--audio",
        nargs="+",
        required=True,
        type=Path,
        metavar="FILE",
        help="enrollment clips of the target speaker (WAV/FLAC/OGG, any rate, mono or stereo)",
    )
    p.add_argument("--output", required=True, type=Path, help="the speaker profile to write (e.g. me.spk)")
    p.add_argument(
        "--encoder",
        choices=["auto", "torch", "numpy", "onnx", "litert"],
        default="auto",
        help="which runtime computes the d-vector (default: the exported encoder if --encoder-dir is "
        "given, else torch when installed, else the packaged numpy encoder)",
    )
    p.add_argument(
        "--encoder-dir",
        type=Path,
        default=None,
        help="directory with an exported speaker encoder (speaker_encoder.json), for onnx/litert",
    )
    p.add_argument("--threads", type=int, default=1, help="threads for the onnx/litert encoder")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from rich.console import Console
    from rich.progress import Progress

    from edge_pse.enroll.audio import MIN_VOICED_SHARE, SAMPLE_RATE, read_enrollment, voiced_share
    from edge_pse.enroll.encoder import average_embeddings, load_encoder
    from edge_pse.enroll.profile import SpeakerProfile, save_profile
    from edge_pse.errors import EdgePseError
    from edge_pse.runtime import audio_io

    if not args.output.parent.is_dir():
        raise EdgePseError(f"output directory does not exist: {args.output.parent}")
    if args.output.is_dir():
        raise EdgePseError(f"--output is a directory: {args.output}")
    for audio in args.audio:  # a profile written over a recording would lose the recording
        audio_io.check_distinct({"audio": audio}, {"output": args.output})
    audio_io.check_writable(args.output)
    clips = [read_enrollment(path) for path in args.audio]  # every clip is checked before any work
    encoder = load_encoder(args.encoder, args.encoder_dir, threads=args.threads)
    console = Console(stderr=True)
    for path, (wave, _) in zip(args.audio, clips, strict=True):
        share = voiced_share(wave)
        if share < MIN_VOICED_SHARE:
            console.print(
                f"[yellow]warning: {path} does not sound like speech ({share:.0%} of its frames are voiced; "
                "speech has 45-85 %): a profile from it will not match your voice[/yellow]",
                highlight=False,
                soft_wrap=True,
            )
    embeddings = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"embedding ({encoder.backend})", total=len(clips))
        for wave, _ in clips:
            embeddings.append(encoder.embed(wave))
            progress.advance(task)
    profile = SpeakerProfile(
        embedding=average_embeddings(embeddings),
        encoder=encoder.name,
        encoder_version=encoder.version,
        encoder_backend=encoder.backend,
        sample_rate=SAMPLE_RATE,
        clips=len(clips),
        seconds=sum(w.size for w, _ in clips) / SAMPLE_RATE,
        speech_seconds=sum(s for _, s in clips),
    )
    save_profile(profile, args.output)
    agreement = ""
    if len(embeddings) > 1:
        sims = [float(np.dot(a, b)) for i, a in enumerate(embeddings) for b in embeddings[i + 1 :]]
        agreement = f", clip agreement (min cosine) {min(sims):.2f}"
        if min(sims) < 0.6:
            console.print("[yellow]warning: the clips sound like different speakers (cosine < 0.6)[/yellow]")
    print(
        f"wrote {args.output}: {encoder.name} {encoder.version} ({encoder.backend}), {profile.clips} clip(s), "
        f"{profile.seconds:.1f} s audio / {profile.speech_seconds:.1f} s speech{agreement}"
    )
    return 0
