"""Quantization-aware fine-tuning of the streaming step through PT2E, distilled from the float step.

Batched (TOOLCHAIN.md: batch-1 QAT gave 5-12 dB): the step is exported with a dynamic batch and each optimizer
step runs many sequences at once. Each sequence starts from the state the float step reaches after a warm-up
stretch of the same clip (so the fake-quantized step learns on realistic states, not only from zero), then
runs `seq_hops` hops with its own state; the loss is the negative SNR of its output vs the float step's.
"""

from __future__ import annotations

import copy
import math

import torch
from rich.progress import Progress
from torch import nn

from edge_pse.quant.calibration import Clip
from edge_pse.quant.ptq import batch_clips, calibrate, export_for_quantization


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


def quantize_qat(
    step: nn.Module,
    quantizer,
    clips: list[Clip],
    steps: int = 40,
    batch: int = 32,
    seed: int = 0,
    seq_hops: int = 16,
    warm_hops: int = 16,
    lr: float = 5e-5,
    fold: bool = True,
) -> tuple[torch.fx.GraphModule, nn.Module]:
    """Returns (converted int8 PT2E graph, float step with the fine-tuned weights)."""
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    hop = step.cfg.hop
    # export a copy: the exported graph shares parameter tensors with its module, and training it must not
    # move the float step that serves as the distillation target and the accuracy reference
    prepared = prepare_qat_pt2e(export_for_quantization(copy.deepcopy(step)), quantizer)
    calibrate(prepared, step, clips)  # start the fake quantizers from the ranges real streams produce
    move_exported_model_to_train(prepared)
    wave, spk = batch_clips(clips, hop)
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
