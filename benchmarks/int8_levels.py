"""int8 against float on held-out real speech, per condition and per input level (a benchmark, not a test).

The export gate checks each file on a few held-out clips at -45, -30 and -15 dBFS; this measures what a user
hears in more detail: every model file of each bundle, run by its own runtime hop by hop (as on the device),
on the data root's *test* split (speakers, noises and rooms never trained or calibrated on), each mixture
scaled to each level, scored as SI-SDRi beside the bundle's float step (its weights.pt, same graph) and,
with --checkpoint, beside the checkpoint as it was trained.

python benchmarks/int8_levels.py edge_pse/bundles/tiny-int8 [BUNDLE ...] --data ../shared/data \
    [--per-condition 6] [--seed N] [--checkpoint campaign/tiny-pse/best.pt] [--json out.json]

--seed draws other mixtures of the same split (other speaker pairs, noises, rooms, offsets): a choice tuned on
the default set is confirmed on another one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from edge_pse.bench.cell import open_cell
from edge_pse.bench.quality import streamer_enhancer
from edge_pse.bundle import Bundle
from edge_pse.eval.evaluate import EVAL_SEED, EvalSet
from edge_pse.eval.metrics import level_db, si_sdr
from edge_pse.exporters.accuracy import LEVELS_DBFS
from edge_pse.model.checkpoint import load_model
from edge_pse.model.config import E3NetConfig
from edge_pse.model.e3net import E3Net
from edge_pse.runtime.backends import FORMAT_BACKEND

CONDITIONS = ("noise", "interferer", "both", "reverberant")


def float_enhancer(model: E3Net):
    def enhance(mix: np.ndarray, emb: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model.enhance(torch.from_numpy(mix)[None], torch.from_numpy(emb)[None])[0].numpy()

    return enhance


def bundle_float(bundle: Bundle) -> E3Net:
    model = E3Net(E3NetConfig.from_dict(bundle.manifest["config"]))
    model.load_state_dict(torch.load(bundle.reference_weights(), weights_only=True))
    return model.eval()


def score(enhance, examples: dict[str, list], level: float) -> dict[str, float]:
    """Mean SI-SDRi per condition with every mixture scaled to `level` dBFS."""
    out = {}
    for cond, exs in examples.items():
        gains = []
        for ex in exs:
            g = np.float32(10 ** ((level - level_db(ex.mixture)) / 20))
            mix, target = ex.mixture.astype(np.float32) * g, ex.target * g
            gains.append(si_sdr(enhance(mix, ex.embedding.astype(np.float32)), target) - si_sdr(mix, target))
        out[cond] = float(np.mean(gains))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--data", required=True, help="data root (its test split is used)")
    ap.add_argument("--per-condition", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=EVAL_SEED, help=f"mixture seed (default {EVAL_SEED}, the evaluation's)")
    ap.add_argument("--checkpoint", help="also score this checkpoint as trained (float, offline)")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ev = EvalSet.build(
        args.data, "test", per_condition=args.per_condition, seconds=args.seconds, seed=args.seed, conditions=CONDITIONS
    )
    rows: list[dict] = []
    if args.checkpoint:
        model, _ = load_model(args.checkpoint)
        rows += [
            {
                "model": args.checkpoint,
                "file": "float as trained",
                "level": lv,
                **score(float_enhancer(model.eval()), ev.examples, lv),
            }
            for lv in LEVELS_DBFS
        ]
    for path in args.bundles:
        bundle = Bundle.load(path)
        ref = {lv: score(float_enhancer(bundle_float(bundle)), ev.examples, lv) for lv in LEVELS_DBFS}
        rows += [{"model": str(path), "file": "weights.pt (float step)", "level": lv, **ref[lv]} for lv in LEVELS_DBFS]
        for entry in bundle.files:
            spec = {
                "kind": "bundle",
                "path": str(path),
                "backend": FORMAT_BACKEND[entry.format],
                "quantization": entry.quantization,
                "threads": 1,
            }
            enhance = streamer_enhancer(open_cell(spec))
            for lv in LEVELS_DBFS:
                s = score(enhance, ev.examples, lv)
                drop = {f"drop_{c}": ref[lv][c] - s[c] for c in CONDITIONS}
                rows.append(
                    {"model": str(path), "file": f"{entry.path} ({entry.quantization})", "level": lv, **s, **drop}
                )
    head = ["model", "file", "dBFS", *CONDITIONS, "worst drop"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        drops = [r[f"drop_{c}"] for c in CONDITIONS] if "drop_noise" in r else None
        worst = f"{max(drops):+.2f}" if drops else "-"
        cells = [r["model"], r["file"], f"{r['level']:g}", *(f"{r[c]:+.2f}" for c in CONDITIONS), worst]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"per_condition": args.per_condition, "seed": args.seed, "split": "test", "rows": rows}, indent=1
            )
        )


if __name__ == "__main__":
    main()
