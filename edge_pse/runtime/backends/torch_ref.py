"""The PyTorch float step: the reference every exported file is measured against."""

from __future__ import annotations

import numpy as np

from edge_pse.bundle import Bundle, FileEntry
from edge_pse.errors import EdgePseError
from edge_pse.runtime.backends.base import Backend


class TorchBackend(Backend):
    """Built from the bundle's config and its float weights file (loaded with weights_only=True)."""

    name = "torch"

    def __init__(self, bundle: Bundle, entry: FileEntry | None = None, threads: int = 1) -> None:
        super().__init__(bundle, entry, threads)
        import torch

        from edge_pse.model.config import E3NetConfig
        from edge_pse.model.step import E3NetStep

        weights = bundle.reference_weights()
        if weights is None:
            raise EdgePseError(f"bundle {bundle.path} carries no float weights for the torch backend")
        torch.set_num_threads(self.threads)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        self._torch = torch
        cfg = E3NetConfig.from_dict(bundle.manifest["config"])
        # a projected bundle's speaker input is the projection (Backend.set_speaker), so the step takes it too
        self._step = E3NetStep.from_state_dict(cfg, state, projected=self._projection is not None).eval()
        self._spk_t = torch.zeros(1, self._spk.shape[1])
        self._hop = torch.zeros(1, self.hop_size)
        self._out = np.zeros(self.hop_size, np.float32)
        self.reset()

    def _speaker_changed(self) -> None:
        self._spk_t.copy_(self._torch.from_numpy(self._spk))

    def _get_state(self) -> np.ndarray:
        return self._state[0].numpy().copy()

    def _set_state(self, state: np.ndarray) -> None:
        self._state[0].copy_(self._torch.from_numpy(state))

    def reset(self) -> None:
        self._state = self._step.initial_state(1)

    def process(self, hop: np.ndarray) -> np.ndarray:
        self._hop.numpy()[0] = hop
        with self._torch.inference_mode():
            out, *state = self._step(self._hop, self._spk_t, *self._state)
        for dst, src in zip(self._state, state, strict=True):  # copy: enc_buf_out is the hop buffer itself
            dst.copy_(src)
        self._out[:] = out.numpy()[0]
        return self._out
