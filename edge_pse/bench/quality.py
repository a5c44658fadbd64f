"""Quality of a cell on the held-out set: the cell's model run hop by hop, exactly as on the device, scored
with edge_pse.eval (SI-SDRi, PESQ, STOI, pDNSMOS, WER, TSOS, target-absent level), beside the float teacher."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edge_pse.bench.cell import Streamer

# summary columns: mean over the conditions that have a target ("absent" has only its own level)
# gap: SI-SDRi with the right profile minus with another speaker's (0 = the model ignores the speaker);
# target_gain_db: the target's level at the output vs its own (0 = kept; not ranked: both signs are wrong)
# onset_200ms: the median share of the target passed in the 200 ms after each onset (1 = kept, 0 = muted)
SUMMARY = ("si_sdri", "gap", "target_gain_db", "onset_200ms", "pesq", "stoi", "pdnsmos_ovrl", "wer", "tsos")
HIGHER_IS_BETTER = {"si_sdri": True, "pesq": True, "stoi": True, "pdnsmos_ovrl": True, "wer": False, "tsos": False}
HIGHER_IS_BETTER["gap"] = True
HIGHER_IS_BETTER["onset_200ms"] = True
HIGHER_IS_BETTER["absent_level_db"] = False  # dB of output vs mixture when the target is silent: lower suppresses more


def streamer_enhancer(cell: Streamer) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """`enhance(mixture, embedding)` over a cell: from a reset state, through the runtime's one loop
    (runner.enhance), time-aligned with the mixture and exactly as long."""
    from edge_pse.runtime.runner import enhance as run

    def enhance(mix: np.ndarray, emb: np.ndarray) -> np.ndarray:
        cell.set_speaker(emb)
        cell.reset()
        return run(cell, mix, cell.hop, cell.lag_hops).copy()

    return enhance


def summarize(per_condition: dict[str, dict]) -> dict[str, float | None]:
    """One number per metric: the mean over conditions with a target, plus the target-absent level."""
    out: dict[str, float | None] = {}
    for k in SUMMARY:
        vals = [r[k] for c, r in per_condition.items() if c != "absent" and r.get(k) is not None]
        out[k] = round(float(np.mean(vals)), 4) if vals else None
    absent = per_condition.get("absent", {})
    out["absent_level_db"] = absent.get("absent_level_db")
    return out


def versus(summary: dict, reference: dict | None) -> dict[str, float | None]:
    """Cell minus reference per summary metric (the float teacher): how much the student/format gives up."""
    if not reference:
        return {}
    return {
        k: None if summary.get(k) is None or reference.get(k) is None else round(summary[k] - reference[k], 4)
        for k in summary
    }
