"""Parameter, MAC and weight-byte counts measured from the modules themselves (never typed in)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edge_pse.model.config import E3NetConfig
from edge_pse.model.e3net import E3Net
from edge_pse.model.step import E3NetStep


@dataclass(frozen=True)
class ModelStats:
    name: str
    params: int
    macs_per_hop: int
    fp32_bytes: int
    int8_bytes: int
    latency_ms: float
    n_filters: int
    width: int
    n_blocks: int
    ff_dim: int
    conditioning: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def count_macs_per_hop(step: E3NetStep) -> int:
    """Multiply-accumulates of the Linear layers in one step call, counted by forward hooks.

    Element-wise work (activations, LayerNorm, gate products) is a few thousand ops per hop and is left out,
    as is usual for MAC counts.
    """
    total = 0

    def hook(mod: nn.Linear, inputs, output) -> None:
        nonlocal total
        total += inputs[0].shape[0] * mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in step.modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            step(torch.zeros(1, step.cfg.hop), torch.zeros(1, step.io.spk_dim), *step.initial_state())
    finally:
        for h in handles:
            h.remove()
    return total


def int8_weight_bytes(step: E3NetStep) -> int:
    """Bytes of the step's weights once Linear weights are int8 (biases, norms and PReLU slopes stay 32-bit)."""
    total = 0
    for mod in step.modules():
        for pname, p in mod.named_parameters(recurse=False):
            per = 1 if isinstance(mod, nn.Linear) and pname == "weight" else 4
            total += p.numel() * per
    return total


def model_stats(name: str, cfg: E3NetConfig) -> ModelStats:
    torch.manual_seed(0)
    model = E3Net(cfg)
    step = E3NetStep(model)
    params = sum(p.numel() for p in model.parameters())
    return ModelStats(
        name=name,
        params=params,
        macs_per_hop=count_macs_per_hop(step),
        fp32_bytes=4 * params,
        int8_bytes=int8_weight_bytes(step),
        latency_ms=1000.0 * cfg.latency_samples / cfg.sample_rate,
        n_filters=cfg.n_filters,
        width=cfg.width,
        n_blocks=cfg.n_blocks,
        ff_dim=cfg.ff_dim,
        conditioning=cfg.conditioning,
    )
