"""ASR loss for multi-task training (the E3Net paper's KD + MTL): Whisper tiny.en should still recognise the
student's output.

The LibriSpeech excerpt used here ships no reference transcripts, so the labels are pseudo-labels: Whisper's
own greedy transcript (edge_pse.asr.whisper_torch, the same frozen torch model that scores the output) of
- the clean target, when training with a clean reference (`train`, `distill` with kd_weight < 1), or
- the teacher's output, with `distill --noisy-only` (no clean reference anywhere in the loss).
The loss is Whisper's teacher-forced cross-entropy of those tokens given the student's output, with
gradients through Whisper (frozen) into the student. Rows with nothing to transcribe (no target, an empty
pseudo-label) are skipped. Training examples are pure functions of their index and the teacher is frozen,
so the labels are cached per index (a resumed run or a second epoch decodes nothing again).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from edge_pse.asr.whisper_torch import WhisperTorch


class AsrLoss:
    """Pseudo-label maker and token loss around one frozen WhisperTorch.

    tail_seconds: padding after each clip inside Whisper's window (see whisper_torch's docstring): 1 s makes
    a 2 s clip cost 150 encoder positions instead of 1500 for the loss and most labels.
    """

    def __init__(self, tail_seconds: float = 1.0, cache_size: int = 200_000, model: WhisperTorch | None = None):
        self.model = model or WhisperTorch()
        self.tail_seconds = tail_seconds
        self.cache_size = cache_size
        self.cache: dict[int, list[int]] = {}

    def labels(self, source: torch.Tensor, keys: Sequence[int] | None = None) -> list[list[int]]:
        """Greedy token sequences of source [B, T] (clean target or teacher output), cached by `keys`."""
        if keys is None:
            return self.model.greedy_tokens(source.detach(), tail_seconds=self.tail_seconds)
        todo = [i for i, k in enumerate(keys) if k not in self.cache]
        if todo:
            new = self.model.greedy_tokens(source[todo].detach(), tail_seconds=self.tail_seconds)
            for i, tokens in zip(todo, new, strict=True):
                if len(self.cache) >= self.cache_size:
                    self.cache.pop(next(iter(self.cache)))  # the oldest
                self.cache[keys[i]] = tokens
        return [self.cache[k] for k in keys]

    def __call__(
        self, est: torch.Tensor, source: torch.Tensor, keys: Sequence[int] | None = None
    ) -> torch.Tensor | None:
        """Token loss of est [B, T] on the pseudo-labels of source [B, T] (aligned, same length).

        Returns None when no row has words to recognise (nothing to add to the loss).
        """
        labels = self.labels(source, keys)
        rows = [i for i, t in enumerate(labels) if t]
        if not rows:
            return None
        return self.model.token_loss(est[rows], [labels[i] for i in rows], tail_seconds=self.tail_seconds)
