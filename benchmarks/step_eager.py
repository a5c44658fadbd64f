"""Per-hop time of each preset's streaming step in PyTorch eager, 1 thread (a benchmark, not a test).

python benchmarks/step_eager.py [--hops 500] [--warmup 50]
"""

from __future__ import annotations

import argparse
import platform

import numpy as np
import torch

from edge_pse.model.config import PRESETS
from edge_pse.model.e3net import E3Net
from edge_pse.model.step import E3NetStep
from edge_pse.runtime.stats import latency_summary, rtf, time_hops


def time_step(step: E3NetStep, hops: int, warmup: int) -> np.ndarray:
    """ns per call of the step, its state carried, timed by the project's one timer (runtime/stats.py)."""
    cfg = step.cfg
    spk = step.speaker_input(torch.randn(1, cfg.spk_dim))
    state = step.initial_state(1)
    audio = torch.randn(hops + warmup, 1, cfg.hop) * 0.1

    def process(hop: torch.Tensor) -> None:
        nonlocal state
        _, *state = step(hop, spk, *state)

    with torch.inference_mode():
        return time_hops(process, audio, hops, warmup)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hops", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, {platform.processor() or platform.machine()}, {args.hops} hops")
    print(f"{'preset':8} {'median us':>10} {'p99 us':>8} {'RTF':>7}")
    for name, cfg in PRESETS.items():
        ns = time_step(E3NetStep(E3Net(cfg), projected=True).eval(), args.hops, args.warmup)  # as bundles run it
        lat = latency_summary(ns)
        factor = rtf(int(ns.sum()), args.hops * cfg.hop / cfg.sample_rate)
        print(f"{name:8} {lat['p50']:10.0f} {lat['p99']:8.0f} {factor:7.3f}")


if __name__ == "__main__":
    main()
