"""Learning curves of training runs from their log.jsonl: right- and swapped-speaker SI-SNRi, the gap, the
condition mix and the target's output level against steps, one line per run (needs the `report` extra).

    python -m edge_pse.train.curves campaign/tiny-pse campaign/probes/tiny-pse-no-level-term.jsonl \
        --output campaign/curves.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PANELS = (
    ("val_right_db", "right-speaker SI-SNRi (dB)"),
    ("val_swap_db", "swapped-speaker SI-SNRi (dB)"),
    ("val_gap_db", "personalization gap (dB)"),
    ("val_mix_db", "condition mix SI-SNRi (dB)"),
    ("val_target_gain_db", "target level at the output (dB)"),
)


def read_log(path: Path) -> list[dict]:
    """The validation records of a run folder's log.jsonl (or of a .jsonl file)."""
    log = path / "log.jsonl" if path.is_dir() else path
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [r for r in records if "val_si_snri_db" in r]


def plot(runs: dict[str, list[dict]], output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.4))
    # one colour per run in every panel: the default cycle repeats after 10 runs
    colours = dict(zip(runs, plt.get_cmap("tab20").colors, strict=False))
    for ax, (key, title) in zip(axes, PANELS, strict=True):
        for name, recs in runs.items():
            pts = [(r["step"], r[key]) for r in recs if key in r]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=name, lw=1.2, color=colours.get(name))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders (with log.jsonl) or .jsonl files")
    ap.add_argument("--output", type=Path, required=True, help="the PNG to write")
    args = ap.parse_args(argv)
    runs = {(p.name if p.is_dir() else p.stem): read_log(p) for p in args.runs}
    plot(runs, args.output)
    print(f"wrote {args.output} ({', '.join(f'{k}: {len(v)} points' for k, v in runs.items())})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
