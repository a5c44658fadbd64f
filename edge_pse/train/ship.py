"""Ship a trained run: copy its best weights into edge_pse/checkpoints/NAME.pt and write the model card.

    python -m edge_pse.train.ship --run runs/tiny-kd --name tiny --eval runs/tiny-kd/eval.json \
        --command "edge-pse distill ..." --wall-time "41 min"

Weights are stored as fp16 only when that loses nothing measurable: the fp16 model's output must match the
fp32 model's at >= 60 dB SNR on a test clip (the int8 export downstream is ~30 dB); otherwise fp32.
The card is generated from the run's own records (training config, history, evaluation JSON), so every figure
in it comes from a run.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch

from edge_pse.model.checkpoint import SHIPPED_DIR, load_model, read_checkpoint, save_checkpoint
from edge_pse.model.costs import config_costs
from edge_pse.model.stats import model_stats
from edge_pse.quant import ranges
from edge_pse.train.trainer import lineage_of

FP16_MIN_SNR_DB = 60.0
DATA_ATTRIBUTION = (
    "Speech: LibriSpeech train-clean-100 excerpt (CC BY 4.0), 251 speakers, as redistributed in "
    "resemble-ai/Resemblyzer. Noise: ESC-10 (CC BY 3.0 / CC0 per clip) and rafaelmardojai/blanket ambiences "
    "(CC0 / CC BY / public domain per file). Rooms: GoogleChromeLabs web-audio-samples house impulses "
    "(Apache-2.0) and simulated shoebox rooms (pyroomacoustics). Procedural noise made by edge_pse.data.synth. "
    "Splits are speaker-, noise-file- and room-disjoint (edge_pse.data.sources.split_of): train 80 %, "
    "validation 10 %, test 10 %."
)

# the root `../shared/data/extra/build.sh` writes: shared/data plus these (never redistributed by this project)
EXTRA_DATA_ATTRIBUTION = (
    "Also (the extended root built by shared/data/extra/build.sh, ~9 h of training speech from 608 speakers): "
    "speechocean762 (Zhang et al., Interspeech 2021; free for commercial and non-commercial use, Apache-2.0 on "
    "its dataset card), Speech Commands v0.02 test set (Warden 2018; CC BY 4.0) and Arabic Speech Commands "
    "(Ghandoura et al. 2021; CC BY 4.0), their words joined into utterances, and the moodist ambience "
    "recordings (Pixabay Content License or CC0; the files are not redistributed). Enrollment comes from a "
    "speaker's other recordings where there are several."
)
SPEECH_SUMMARY = {False: "~1 h of real speech from 251 speakers", True: "~9 h of real speech from 608 speakers"}


def fp16_snr_db(model) -> float:
    """Output SNR of the fp16-rounded weights vs fp32, on 4 s of noise-like input with a random speaker."""
    g = torch.Generator().manual_seed(0)
    wave = 0.1 * torch.randn(1, 64_000, generator=g)
    spk = torch.nn.functional.normalize(torch.randn(1, model.cfg.spk_dim, generator=g), dim=-1)
    half = type(model)(model.cfg)
    half.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    with torch.no_grad():
        ref, out = model(wave, spk), half.eval()(wave, spk)
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum().clamp_min(1e-20)))


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)


def card(
    name: str,
    payload: dict,
    stats,
    evaluation: dict | None,
    command: str,
    wall: str,
    fp16: bool,
    snr16: float,
    limits: list[str] = (),
    notes: list[str] = (),
    extra_data: bool = False,
) -> str:
    extra = payload.get("extra", {})
    tc = extra.get("train_config", {})
    hist = extra.get("history", [])
    teacher = tc.get("teacher")
    targets = (
        f"knowledge distillation from `{teacher}` (kd_weight {tc.get('kd_weight')}: that share of the loss "
        "against the teacher's output, the rest against the clean target)"
        if teacher
        else "clean targets only (no teacher)"
    )
    stages = [_stage_line(st) for st in extra.get("lineage", [])]
    exported_macs = config_costs(payload["config"], projected=True)["macs_per_hop"]
    lines = [
        f"# edge-pse model card: `{name}`",
        "",
        f"E3Net preset `{payload['preset']}`: {stats.params / 1e6:.3f} M parameters, "
        f"{stats.macs_per_hop / 1e6:.3f} M MACs per 10 ms hop ({exported_macs / 1e6:.3f} M as exported: the speaker's "
        "Linears run once per speaker), 20 ms algorithmic latency. "
        f"Config: `{json.dumps(payload['config'])}`.",
        "",
        "## Training",
        *(["- Started from weights trained in earlier stages (oldest first):", *stages] if stages else []),
        f"- Command: `{command}`",
        f"- Wall time: {wall} on a shared 2-core x86_64 CPU machine (no GPU).",
        f"- Steps at the kept checkpoint: {extra.get('step')} x batch {tc.get('batch')} x {tc.get('seconds')} s "
        f"examples; lr {tc.get('lr')}; seed {tc.get('seed')}.",
        f"- Targets: {targets}.",
        "- Validation SI-SNRi history (dB): "
        + ", ".join(f"{h['step']}: {h['val_si_snri_db']:+.2f}" for h in hist if "val_si_snri_db" in h),
        _kept_line(extra, hist),
        *(f"- {note}" for note in notes),
        f"- Stored as {'fp16' if fp16 else 'fp32'} (fp16 weights vs fp32: output SNR {snr16:.1f} dB).",
        "",
        "## Data",
        DATA_ATTRIBUTION + (" " + EXTRA_DATA_ATTRIBUTION if extra_data else ""),
        "",
        "## Measured quality (held-out test split: speakers, noise files and rooms never seen in training)",
    ]
    if evaluation:
        meta = evaluation.get("meta", {})
        lines += [
            f"`edge-pse evaluate --checkpoint {name} --data DATA"
            f"{' --sweeps' if meta.get('sweeps') else ''} --per-condition {meta.get('per_condition')}`: "
            f"{meta.get('per_condition')} mixtures per condition, {meta.get('seconds')} s each. WER reference: "
            f"{meta.get('wer_reference')}.",
            "",
            "| condition | n | SI-SDR in | SI-SDR out | SI-SDRi | gap (other profile) | target level dB | "
            "onset 200 ms | PESQ in/out | STOI in/out | pDNSMOS OVRL | WER in/out | TSOS | absent out/in dB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for cond, r in evaluation.items():
            if cond == "meta":
                continue
            lines.append(
                f"| {cond} | {r.get('count')} | {_fmt(r.get('si_sdr_in'))} | {_fmt(r.get('si_sdr'))} | "
                f"{_fmt(r.get('si_sdri'))} | {_fmt(r.get('gap'))} | {_fmt(r.get('target_gain_db'))} | "
                f"{_fmt(r.get('onset_200ms'))} | {_fmt(r.get('pesq_in'))}/{_fmt(r.get('pesq'))} | "
                f"{_fmt(r.get('stoi_in'))}/{_fmt(r.get('stoi'))} | {_fmt(r.get('pdnsmos_ovrl'))} | "
                f"{_fmt(r.get('wer_in'))}/{_fmt(r.get('wer'))} | {_fmt(r.get('tsos'))} | "
                f"{_fmt(r.get('absent_level_db'))} |"
            )
    else:
        lines.append("Not evaluated yet.")
    lines += [
        "",
        "## Limits",
        f"Trained for a short CPU budget on {SPEECH_SUMMARY[extra_data]}: a starting point to "
        "fine-tune on your own data (`edge-pse train --init`), not a finished product.",
        *(f"- {limit}" for limit in limits),
        "",
    ]
    return "\n".join(lines)


def _kept_line(extra: dict, hist: list[dict]) -> str:
    """Which step was kept, and against the run's best validation score (a last step may be kept on purpose)."""
    best = extra.get("best_val", float("nan"))
    scores = {h["step"]: h["val_si_snri_db"] for h in hist if "val_si_snri_db" in h}
    step = extra.get("step")
    if step in scores and abs(scores[step] - best) < 1e-6:
        return f"- Kept: the best validation step ({best:+.2f} dB)."
    best_step = max(scores, key=scores.get) if scores else "?"
    return f"- Kept: step {step} (the run's best validation score was {best:+.2f} dB, at step {best_step})."


def _stage_line(st: dict) -> str:
    """One earlier training stage (edge_pse.train.trainer.lineage_of) as a card bullet."""
    if "pruned" in st:  # edge-pse prune: a change of sizes, no training
        sizes = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in st["pruned"].items())
        scored = st.get("scored_on")
        return f"  - `{st.get('source')}` pruned ({sizes}; channels scored on {scored}): `{st.get('command')}`."
    targets = f"KD from `{st['teacher']}`, kd_weight {st.get('kd_weight')}" if st.get("teacher") else "clean targets"
    best = st.get("best_val")
    text = (
        f"  - `{st.get('source')}`: {st.get('step')} steps x batch {st.get('batch')} x {st.get('seconds')} s, "
        f"lr {st.get('lr')}, seed {st.get('seed')}, {targets}"
        + (f", best validation SI-SNRi {best:+.2f} dB" if isinstance(best, float) else "")
    )
    if st.get("command"):
        text += f"; command `{st['command']}`"
    if st.get("wall_time"):
        text += f"; wall time {st['wall_time']}"
    return text + "."


def _shipped_stage_record(source: str) -> dict:
    """Command and wall time of a shipped model, from its card: the checkpoint itself does not hold them."""
    card_path = SHIPPED_DIR / f"{source}.md"
    if not card_path.exists():
        return {}
    text = card_path.read_text()
    out = {}
    if m := re.search(r"^- Command: `(.+)`$", text, re.M):
        out["command"] = m.group(1)
    if m := re.search(r"^- Wall time: (.+?) on a ", text, re.M):
        out["wall_time"] = m.group(1)
    return out


def _stored_precision(payload: dict, old_card: Path) -> tuple[bool, float]:
    """(stored as fp16, fp16-vs-fp32 output SNR) of a shipped checkpoint: measured when it was shipped, kept
    in its extra (older files: in its card); re-measuring on fp16 weights would compare fp16 with itself."""
    extra = payload.get("extra", {})
    if "fp16_snr_db" in extra:
        return bool(extra["stored_fp16"]), float(extra["fp16_snr_db"])
    m = re.search(r"Stored as (fp16|fp32) \(fp16 weights vs fp32: output SNR ([\d.]+) dB\)", old_card.read_text())
    if m is None:
        raise SystemExit(f"{old_card} does not say how the weights were stored; ship from the run instead")
    return m.group(1) == "fp16", float(m.group(2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="run directory with best.pt (not with --card-only)")
    ap.add_argument("--name", required=True, help="shipped name: tiny, small, teacher")
    ap.add_argument("--eval", type=Path, help="evaluate --json output to put in the card")
    ap.add_argument("--command", required=True, help="the exact training command")
    ap.add_argument("--wall-time", required=True, help="measured wall time of the training run")
    ap.add_argument("--checkpoint", default="best.pt", help="which file of the run to ship")
    ap.add_argument(
        "--started-from",
        help="the --init checkpoint of a run made before runs recorded it (path or shipped name): its training "
        "stages go into the card",
    )
    ap.add_argument("--note", action="append", default=[], help="a line for the card's Training section (repeat)")
    ap.add_argument("--limit", action="append", default=None, help="a known limit for the card (repeat)")
    ap.add_argument("--card-only", action="store_true", help="rewrite the model card, keep the shipped weights")
    ap.add_argument(
        "--extra-data", action="store_true", help="trained on the extended root (shared/data/extra): name its sets"
    )
    args = ap.parse_args()
    dst = SHIPPED_DIR / f"{args.name}.pt"
    if args.card_only:  # bundles record the checkpoint's sha256: a card update must not touch the weights
        model, payload = load_model(dst)  # the shipped file keeps its training history and fp16 figure
        fp16, snr16 = _stored_precision(payload, SHIPPED_DIR / f"{args.name}.md")
    else:
        if args.run is None:
            ap.error("--run is required unless --card-only")
        model, payload = load_model(args.run / args.checkpoint)
        last = args.run / "last.pt"  # a finished run may keep only its final weights, which carry the history
        if last.is_file():
            history = read_checkpoint(last).get("extra", {}).get("history", [])
            payload.setdefault("extra", {})["history"] = history
        snr16 = fp16_snr_db(model)
        fp16 = snr16 >= FP16_MIN_SNR_DB
        extra = {k: v for k, v in payload["extra"].items() if k != "optimizer"}
        if args.started_from and not extra.get("lineage"):  # read before dst is replaced: it may be the source
            _, src = load_model(args.started_from)
            extra["lineage"] = lineage_of(src, args.started_from)
        for stage in extra.get("lineage", []):
            if stage.get("source") in {"tiny", "small", "teacher"} and "command" not in stage:
                stage |= _shipped_stage_record(stage["source"])
        payload["extra"] = extra
        extra |= {"stored_fp16": fp16, "fp16_snr_db": round(snr16, 1), "ship_notes": args.note}
        extra["ship_limits"] = args.limit or []
        save_checkpoint(dst, model, payload["preset"], extra=extra, half=fp16)
        stale = ranges.beside(dst)  # int8 ranges measured on the weights just replaced
        if stale.is_file():
            stale.unlink()
            print(
                f"removed {stale.name} (measured on the old weights): export with --calibration DATA_ROOT and copy "
                f"the bundle's {ranges.FILENAME} to {stale}"
            )
    evaluation = json.loads(args.eval.read_text()) if args.eval else None
    stats = model_stats(payload["preset"], model.cfg)
    limits = args.limit if args.limit is not None else payload.get("extra", {}).get("ship_limits", [])
    notes = args.note or payload.get("extra", {}).get("ship_notes", [])  # --card-only: given ones replace stored
    text = card(
        args.name, payload, stats, evaluation, args.command, args.wall_time, fp16, snr16, limits, notes,
        args.extra_data,
    )  # fmt: skip
    (SHIPPED_DIR / f"{args.name}.md").write_text(text)
    print(
        f"{'kept' if args.card_only else 'shipped'} {dst} ({dst.stat().st_size / 2**20:.2f} MiB, "
        f"{'fp16' if fp16 else 'fp32'}, fp16 SNR {snr16:.1f} dB) and {args.name}.md"
    )


if __name__ == "__main__":
    main()
