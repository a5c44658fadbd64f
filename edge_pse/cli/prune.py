"""`edge-pse prune`: a trained checkpoint with fewer encoder filters and feed-forward units, to fine-tune."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default="tiny", help="trained checkpoint path or shipped model name")
    p.add_argument("--data", required=True, help="data root: channels are scored on its training mixtures")
    p.add_argument("--n-filters", type=int, required=True, help="encoder/decoder filters (N) to keep")
    p.add_argument("--ff-dim", type=int, required=True, help="feed-forward units to keep in every block")
    p.add_argument("--output", required=True, help="pruned checkpoint (fine-tune it: edge-pse train --init OUTPUT)")
    p.add_argument("--examples", type=int, default=128, help="training mixtures to score the channels on")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    import shlex
    import sys
    from pathlib import Path

    from edge_pse.data.mixtures import MixtureDataset
    from edge_pse.errors import EdgePseError
    from edge_pse.model.checkpoint import load_model, resolve_checkpoint, save_checkpoint
    from edge_pse.model.costs import config_costs
    from edge_pse.model.prune import channel_scores, prune
    from edge_pse.train.recipes import get_recipe
    from edge_pse.train.trainer import _batch as batch_of
    from edge_pse.train.trainer import lineage_of

    if args.examples <= 0 or args.seconds <= 0:
        raise EdgePseError("--examples and --seconds must be positive")
    out = Path(args.output)
    if out.exists() and out.resolve() == resolve_checkpoint(args.checkpoint).resolve():
        raise EdgePseError(f"--output {out} is the checkpoint being pruned: write the pruned model elsewhere")
    model, payload = load_model(args.checkpoint)
    cfg = model.cfg
    if not (0 < args.n_filters <= cfg.n_filters and 0 < args.ff_dim <= cfg.ff_dim):
        raise EdgePseError(
            f"{args.checkpoint} has N={cfg.n_filters} and ff_dim={cfg.ff_dim}: --n-filters must be 1..{cfg.n_filters} "
            f"and --ff-dim 1..{cfg.ff_dim}"
        )
    recipe = get_recipe("pse")  # its last stage mixes every condition the model serves
    ds = MixtureDataset(args.data, "train", seed=args.seed, cfg=recipe.mixture(recipe.stages[-1], args.seconds))
    chunks = (list(range(i, min(i + 16, args.examples))) for i in range(0, args.examples, 16))
    batches = [(mix, emb) for mix, _, emb in (batch_of(ds, idx) for idx in chunks)]
    pruned = prune(model, channel_scores(model, batches), args.n_filters, args.ff_dim)
    before, after = (config_costs(c.to_dict(), projected=True) for c in (cfg, pruned.cfg))
    stage = {
        "source": str(args.checkpoint),
        "pruned": {"n_filters": [cfg.n_filters, args.n_filters], "ff_dim": [cfg.ff_dim, args.ff_dim]},
        "scored_on": f"{args.examples} training mixtures of {args.data} (seed {args.seed})",
        "command": shlex.join(["edge-pse", "prune", *sys.argv[2:]]),
    }
    extra = {"lineage": [*lineage_of(payload, str(args.checkpoint)), stage], "step": 0}
    save_checkpoint(out, pruned, payload["preset"], extra=extra)
    print(
        f"{args.checkpoint}: N {cfg.n_filters} -> {args.n_filters}, ff_dim {cfg.ff_dim} -> {args.ff_dim}; per-hop "
        f"parameters {before['params']:,} -> {after['params']:,} -> {out} (fine-tune it before use: "
        f"edge-pse train --preset {payload['preset']} --init {out} ...)"
    )
    return 0
