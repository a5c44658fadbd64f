"""Static int8 PTQ through PT2E, calibrated on the inputs AND states the float step really sees.

The step is recurrent: an LSTM state or the decoder tail only takes realistic values after the step has run
on real audio for a while. So the float step runs hop by hop over the calibration clips (all clips at once,
as one batch) and the observers see exactly those hops, embeddings and states.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from rich.progress import Progress
from torch import nn

from edge_pse.quant.calibration import Clip


def example_inputs(step: nn.Module, batch: int = 1) -> tuple[torch.Tensor, ...]:
    cfg = step.cfg
    return (torch.zeros(batch, cfg.hop), torch.zeros(batch, step.io.spk_dim), *step.initial_state(batch))


def export_for_quantization(step: nn.Module, dynamic_batch: bool = True) -> torch.fx.GraphModule:
    """torch.export the step (batch dimension dynamic, so calibration and QAT can run many clips at once)."""
    example = example_inputs(step, batch=2)
    shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=4096)
        shapes = {"hop": {0: batch}, "spk": {0: batch}, "state": {0: batch}}
    return torch.export.export(step, example, dynamic_shapes=shapes).module()


def batch_clips(step: nn.Module, clips: list[Clip], max_hops: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack clips into wave[B, T] (zero-padded to the longest, whole hops) and the step's speaker input spk[B, *]
    (the embeddings, or their projection for a projected step)."""
    hop = step.cfg.hop
    n = max(c.mixture.size for c in clips) // hop
    if max_hops:
        n = min(n, max_hops)
    wave = np.zeros((len(clips), n * hop), np.float32)
    for i, c in enumerate(clips):
        m = c.mixture[: n * hop]
        wave[i, : m.size] = m
    spk = torch.from_numpy(np.stack([c.spk for c in clips]).astype(np.float32))
    return torch.from_numpy(wave), step.speaker_input(spk)


@torch.no_grad()
def streaming_inputs(
    step: nn.Module, clips: list[Clip], max_hops: int | None = None
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Per hop: (hop, spk, *state) exactly as the float step sees them, batched over the clips."""
    hop = step.cfg.hop
    wave, spk = batch_clips(step, clips, max_hops)
    state = step.initial_state(wave.shape[0])
    for t in range(0, wave.shape[1], hop):
        x = wave[:, t : t + hop]
        yield (x, spk, *state)
        _, *state = step(x, spk, *state)


@torch.no_grad()
def calibrate(prepared: torch.fx.GraphModule, step: nn.Module, clips: list[Clip], max_hops: int | None = None) -> None:
    hop = step.cfg.hop
    n_hops = min(max(c.mixture.size for c in clips) // hop, max_hops or 1 << 30)
    with Progress(transient=True) as bar:
        task = bar.add_task(f"calibrating on {len(clips)} clips", total=n_hops)
        for inputs in streaming_inputs(step, clips, max_hops):
            prepared(*inputs)
            bar.advance(task)


def prepare_observers(step: nn.Module, quantizer) -> torch.fx.GraphModule:
    """export -> prepare: the step's graph with the quantizer's observers, ready to calibrate."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    return prepare_pt2e(export_for_quantization(step), quantizer)


def quantize_ptq(
    step: nn.Module,
    quantizer,
    clips: list[Clip],
    max_hops: int | None = None,
    fold: bool = True,
    pinned: dict[str, list[float]] | None = None,
    measured: dict[str, list[float]] | None = None,
) -> torch.fx.GraphModule:
    """export -> prepare (observers) -> calibrate on streaming states -> convert (Q/DQ graph).

    `fold` folds weight quantization into int8 constants (ExecuTorch needs it; litert-torch wants it unfolded).
    `pinned`: stored activation (scale, zero point) per observer (quant/ranges.py) used instead of what `clips`
    show; `measured`, when given, receives what `clips` showed (before pinning).
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    from edge_pse.quant import ranges

    prepared = prepare_observers(step, quantizer)
    calibrate(prepared, step, clips, max_hops)
    if measured is not None:
        measured.update(ranges.measured(prepared))
    if pinned is not None:
        ranges.pin(prepared, pinned, type(quantizer).__name__)
    return convert_pt2e(prepared, fold_quantize=fold)
