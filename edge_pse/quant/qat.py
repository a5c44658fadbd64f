"""Quantization-aware fine-tuning of the streaming step through PT2E, distilled from the float step.

Batched (docs/toolchain.md: batch-1 QAT gave 5-12 dB): the step is exported with a dynamic batch and each optimizer
step runs many sequences at once. Each sequence starts from the state the float step reaches after a warm-up
stretch of the same clip (so the fake-quantized step learns on realistic states, not only from zero), then
runs `seq_hops` hops with its own state; the loss is the negative SNR of its output vs the float step's.
The fake quantizers start from the PTQ calibration's ranges (`seed_fake_quants`), so QAT starts where PTQ ends.
"""

from __future__ import annotations

import copy
import math

import torch
from rich.progress import Progress
from torch import nn

from edge_pse.quant.calibration import Clip
from edge_pse.quant.ptq import batch_clips, calibrate, export_for_quantization, prepare_observers


def _neg_snr(y: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    err = ((y - ref) ** 2).sum(dim=1)
    return (10 * torch.log10(err / (ref**2).sum(dim=1).clamp_min(1e-8) + 1e-10)).mean()


def tuned_float_step(step: nn.Module, prepared: torch.fx.GraphModule) -> nn.Module:
    """The float step carrying the QAT-fine-tuned weights (same parameter names in the exported graph)."""
    tuned = copy.deepcopy(step)
    params = dict(prepared.named_parameters())
    state = {k: params[k].detach().clone() if k in params else v for k, v in tuned.state_dict().items()}
    tuned.load_state_dict(state)
    return tuned.eval()


@torch.no_grad()
def seed_fake_quants(prepared: torch.fx.GraphModule, step: nn.Module, ptq_quantizer, clips: list[Clip]) -> int:
    """Set every fake quantizer's range from a PTQ calibration of the same step; returns how many were set.

    Feeding the calibration stream to the moving-average fake quantizers themselves does not work: each hop
    moves a range by 1 % of the way, so the ranges stay near those of the first, quiet, zero-state hops and
    the converted graph clips (3 dB SNR vs float after one QAT step, where PTQ gives 26 dB). The PTQ twin has
    the same observer names (the same quantizer annotates the same graph).
    """
    from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

    observed = prepare_observers(step, ptq_quantizer)
    calibrate(observed, step, clips)
    observers = dict(observed.named_children())
    n = 0
    for name, fq in prepared.named_children():
        if not isinstance(fq, FakeQuantizeBase) or name not in observers or getattr(fq, "is_dynamic", False):
            continue  # a dynamic one (the decoder's input) takes each batch's own range
        scale, zero_point = observers[name].calculate_qparams()
        lo = (fq.quant_min - zero_point.float()) * scale
        hi = (fq.quant_max - zero_point.float()) * scale
        obs = fq.activation_post_process
        for buf, value in ((fq.scale, scale), (fq.zero_point, zero_point), (obs.min_val, lo), (obs.max_val, hi)):
            buf.resize_(value.shape).copy_(value)
        n += 1
    return n


def freeze_activation_ranges(prepared: torch.fx.GraphModule) -> None:
    """Keep the seeded activation ranges during fine-tuning (weights' per-channel ranges still follow the weights,
    a dynamic input's range each batch).

    Left running, the moving averages drift to the short training sequences' ranges and the converted graph
    loses accuracy (tiny, 20 steps: 26 -> 11 dB SNR vs float); frozen, it holds or improves.
    """
    for fq in prepared.children():
        if hasattr(fq, "disable_observer") and not fq.is_per_channel and not getattr(fq, "is_dynamic", False):
            fq.disable_observer()


def quantize_qat(
    step: nn.Module,
    quantizer,
    ptq_quantizer,
    clips: list[Clip],
    steps: int = 40,
    batch: int = 32,
    seed: int = 0,
    seq_hops: int = 16,
    warm_hops: int = 16,
    lr: float = 5e-5,
    fold: bool = True,
) -> tuple[torch.fx.GraphModule, nn.Module]:
    """Returns (converted int8 PT2E graph, float step with the fine-tuned weights).

    `quantizer` annotates with fake quantizers (is_qat=True); `ptq_quantizer` is its PTQ twin, used to seed them.
    """
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    hop = step.cfg.hop
    # export a copy: the exported graph shares parameter tensors with its module, and training it must not
    # move the float step that serves as the distillation target and the accuracy reference
    prepared = prepare_qat_pt2e(export_for_quantization(copy.deepcopy(step)), quantizer)
    seed_fake_quants(prepared, step, ptq_quantizer, clips)  # start from the ranges real streams produce
    move_exported_model_to_train(prepared)
    freeze_activation_ranges(prepared)
    wave, spk = batch_clips(step, clips)
    n_hops = wave.shape[1] // hop
    warm = min(warm_hops, max(0, n_hops - seq_hops))
    span = warm + min(seq_hops, n_hops)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(prepared.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    with Progress(transient=False) as bar:
        task = bar.add_task("QAT fine-tuning", total=steps)
        for i in range(steps):
            idx = torch.randint(len(clips), (batch,), generator=gen)
            starts = torch.randint(0, n_hops - span + 1, (batch,), generator=gen)
            gain = torch.exp(torch.empty(batch, 1).uniform_(math.log(0.3), math.log(1.5), generator=gen))
            x = torch.stack(
                [wave[i, s * hop : (s + span) * hop] for i, s in zip(idx.tolist(), starts.tolist(), strict=True)]
            )
            x, s = x * gain, spk[idx]
            with torch.no_grad():
                state = step.initial_state(batch)
                for t in range(warm):
                    _, *state = step(x[:, t * hop : (t + 1) * hop], s, *state)
                qstate = [z.clone() for z in state]
                refs = []
                for t in range(warm, span):
                    out, *state = step(x[:, t * hop : (t + 1) * hop], s, *state)
                    refs.append(out)
            outs = []
            for t in range(warm, span):
                out, *qstate = prepared(x[:, t * hop : (t + 1) * hop], s, *qstate)
                outs.append(out)
            loss = _neg_snr(torch.cat(outs, dim=1), torch.cat(refs, dim=1))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(prepared.parameters(), 1.0)
            opt.step()
            sched.step()
            bar.update(task, advance=1, description=f"QAT fine-tuning (SNR vs float {-loss.item():.1f} dB)")
            if not bar.console.is_terminal and (i + 1) % max(1, steps // 10) == 0:  # a log instead of a live bar
                bar.console.print(f"QAT step {i + 1}/{steps}: SNR vs float {-loss.item():.1f} dB")
    move_exported_model_to_eval(prepared)
    tuned = tuned_float_step(step, prepared)
    return convert_pt2e(prepared, fold_quantize=fold), tuned
