"""Training throughput by batch shape: data making vs forward + backward + optimizer (a benchmark, not a test).

python benchmarks/train_step.py --data ../shared/data [--preset tiny] [--recipe pse] [--threads 1] [--steps 6]

Give it the whole machine (or note what ran beside it): the figures are wall-clock times.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from edge_pse.train.trainer import TrainConfig, Trainer, _stack

SHAPES = ((8, 2.0), (16, 1.0), (16, 1.5), (16, 2.0), (32, 1.0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--recipe", default="pse")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per shape, after one warm-up step")
    ap.add_argument(
        "--shapes",
        default=",".join(f"{b}x{s:g}" for b, s in SHAPES),
        help="batch shapes to time, BATCHxSECONDS separated by commas (default: %(default)s)",
    )
    ap.add_argument("--at", type=float, default=0.0, help="where in the run the batches come from (0-1: its stage)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.preset}, recipe {args.recipe}, {args.threads} thread(s), {args.steps} steps per shape")
    print("| batch | data / step | forward + backward + optimizer | examples/s | audio s/s |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as out:
        shapes = [(int(b), float(s)) for b, s in (shape.split("x") for shape in args.shapes.split(","))]
        for batch, seconds in shapes:
            cfg = TrainConfig(args.preset, args.data, out, steps=100_000, batch=batch, seconds=seconds,
                              recipe=args.recipe, threads=args.threads)  # fmt: skip
            tr = Trainer(cfg)
            t_data = t_step = 0.0
            for k in range(args.steps + 1):
                t0 = time.perf_counter()
                mix, ref, emb = _stack(tr.batch_at(int(args.at * cfg.steps) + k)[0])
                t1 = time.perf_counter()
                loss = tr.loss_on(mix, ref, emb)
                tr.opt.zero_grad(set_to_none=True)
                loss.backward()
                tr.opt.step()
                t2 = time.perf_counter()
                if k:  # the first step warms caches and allocators
                    t_data, t_step = t_data + t1 - t0, t_step + t2 - t1
            per, n = (t_data + t_step) / args.steps, args.steps
            row = f"| {batch} x {seconds:g} s | {t_data / n * 1e3:.0f} ms | {t_step / n * 1e3:.0f} ms "
            print(row + f"| {batch / per:.1f} | {batch * seconds / per:.0f} |", flush=True)


if __name__ == "__main__":
    main()
