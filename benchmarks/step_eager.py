"""Per-hop time of each preset's streaming step in PyTorch eager, 1 thread (a benchmark, not a test).

python benchmarks/step_eager.py [--hops 500] [--warmup 50]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from edge_pse.model.config import PRESETS
from edge_pse.model.e3net import E3Net
from edge_pse.model.step import E3NetStep


def time_step(step: E3NetStep, hops: int, warmup: int) -> np.ndarray:
    cfg = step.cfg
    spk = torch.randn(1, cfg.spk_dim)
    state = step.initial_state(1)
    audio = torch.randn(hops + warmup, 1, cfg.hop) * 0.1
    times = []
    with torch.inference_mode():
        for i in range(hops + warmup):
            t0 = time.perf_counter()
            _, *state = step(audio[i], spk, *state)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return np.asarray(times) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hops", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, {platform.processor() or platform.machine()}, {args.hops} hops")
    print(f"{'preset':8} {'median us':>10} {'p99 us':>8} {'RTF':>7}")
    for name, cfg in PRESETS.items():
        t = time_step(E3NetStep(E3Net(cfg)).eval(), args.hops, args.warmup)
        med = float(np.median(t))
        print(f"{name:8} {med:10.0f} {np.percentile(t, 99):8.0f} {med / (1e6 * cfg.hop / cfg.sample_rate):7.3f}")


if __name__ == "__main__":
    main()
