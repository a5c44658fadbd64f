"""Structured pruning: a trained E3Net with fewer encoder filters (N) and feed-forward units, same function shape.

Why: a fine-tune of the pruned weights costs a few thousand steps, where a smaller model trained from scratch
costs tens of thousands; the int8 file size of the tiny is dominated by its N-sized layers (encoder, decoder,
mask, fusion) and the blocks' feed-forward layers. Pruning keeps whole channels, so the result is a plain,
smaller E3Net (every exporter and the streaming step work unchanged). The LayerNorm over the N features sees
fewer channels afterwards, which is why the pruned weights need a fine-tune (`edge-pse train --init`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from edge_pse.model.e3net import E3Net


@dataclass(frozen=True)
class ChannelScores:
    """How much each prunable channel does on real mixtures (larger: keep)."""

    filters: torch.Tensor  # [N]
    ff_units: tuple[torch.Tensor, ...]  # per block, [ff_dim]


@torch.no_grad()
def channel_scores(model: E3Net, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> ChannelScores:
    """Mean absolute contribution of each channel over (mixture[B,T], embedding[B,D]) batches.

    An encoder filter counts twice, normalised so both halves weigh the same: what it adds to the output (its
    masked feature times its decoder row's norm) and what it tells the masker (its normalised feature times its
    fusion column's norm). A feed-forward unit counts what it feeds forward (its activation times its fc2
    column's norm).
    """
    model = model.eval()
    n_blocks = len(model.blocks)
    out_sum = torch.zeros(model.cfg.n_filters)
    in_sum = torch.zeros(model.cfg.n_filters)
    ff_sum = [torch.zeros(model.cfg.ff_dim) for _ in range(n_blocks)]
    captured: dict[int, torch.Tensor] = {}
    hooks = [
        block.ff.act1.register_forward_hook(lambda _m, _i, out, k=k: captured.__setitem__(k, out))
        for k, block in enumerate(model.blocks)
    ]
    frames = 0
    try:
        for wave, spk in batches:
            feats = model.encode(wave, model.frame_gain(wave))
            mask = model.masker(feats, spk)
            out_sum += (feats * mask).abs().sum((0, 1))
            in_sum += model.enc_norm(feats).abs().sum((0, 1))
            for k in range(n_blocks):
                ff_sum[k] += captured[k].abs().sum((0, 1))
            frames += feats.shape[0] * feats.shape[1]
    finally:
        for h in hooks:
            h.remove()
    if frames == 0:
        raise ValueError("channel_scores needs at least one batch")
    n = model.cfg.n_filters
    dec_norm = model.decoder.weight[:, 0].norm(dim=-1)
    fus_norm = model.fusion.weight[:, :n].norm(dim=0)
    out_score = out_sum / frames * dec_norm
    in_score = in_sum / frames * fus_norm
    filters = out_score / out_score.sum().clamp_min(1e-12) + in_score / in_score.sum().clamp_min(1e-12)
    ff_units = tuple(
        s / frames * block.ff.fc2.weight.norm(dim=0) for s, block in zip(ff_sum, model.blocks, strict=True)
    )
    return ChannelScores(filters, ff_units)


def _top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the `keep` largest scores, in their original order (the filter bank stays sorted)."""
    return torch.topk(scores, keep).indices.sort().values


@torch.no_grad()
def prune(model: E3Net, scores: ChannelScores, n_filters: int, ff_dim: int) -> E3Net:
    """A new E3Net with the `n_filters` / `ff_dim` highest-scoring channels of `model` and their weights."""
    cfg = model.cfg
    if not 0 < n_filters <= cfg.n_filters or not 0 < ff_dim <= cfg.ff_dim:
        raise ValueError(
            f"pruning keeps 1..{cfg.n_filters} filters and 1..{cfg.ff_dim} feed-forward units, "
            f"not {n_filters} and {ff_dim}"
        )
    out = E3Net(replace(cfg, n_filters=n_filters, ff_dim=ff_dim))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    f = _top(scores.filters, n_filters)
    spk_cols = torch.arange(cfg.n_filters, cfg.n_filters + cfg.spk_dim)
    for key in ("encoder.weight", "encoder.bias", "enc_act.weight", "enc_norm.weight", "enc_norm.bias"):
        state[key] = state[key][f]
    state["fusion.weight"] = state["fusion.weight"][:, torch.cat([f, spk_cols])]
    state["mask.weight"], state["mask.bias"] = state["mask.weight"][f], state["mask.bias"][f]
    state["decoder.weight"] = state["decoder.weight"][f]
    for k, units in enumerate(scores.ff_units):
        u = _top(units, ff_dim)
        p = f"blocks.{k}.ff."
        for key in ("fc1.weight", "fc1.bias", "act1.weight"):
            state[p + key] = state[p + key][u]
        state[p + "fc2.weight"] = state[p + "fc2.weight"][:, u]
    out.load_state_dict(state)
    return out.train(model.training)
