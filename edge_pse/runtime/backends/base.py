"""One small interface over every runtime: load a bundle's model file, set the speaker, reset, process a hop.

Torch-free. A backend keeps the step's state (one packed float tensor, bundle schema 2) internally between
`process` calls; int8 inputs (LiteRT's speaker) are quantized here with the scales the manifest records.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from edge_pse.bundle import Bundle, FileEntry, TensorIO
from edge_pse.errors import EdgePseError


class Backend(ABC):
    name: str = ""

    def __init__(self, bundle: Bundle, entry: FileEntry, threads: int = 1) -> None:
        self.bundle, self.entry, self.threads = bundle, entry, int(threads)
        self.hop_size = int(bundle.manifest["hop"])
        self.spk_dim = int(bundle.manifest["speaker"]["dim"])
        self._spk = np.zeros((1, self.spk_dim), np.float32)

    def set_speaker(self, emb: np.ndarray) -> None:
        emb = np.asarray(emb, dtype=np.float32).reshape(-1)
        if emb.size != self.spk_dim or not np.all(np.isfinite(emb)):
            raise EdgePseError(f"speaker embedding must be {self.spk_dim} finite floats (got {emb.size} values)")
        self._spk[0] = emb
        self._speaker_changed()

    @abstractmethod
    def _speaker_changed(self) -> None:
        """Copy `self._spk` to wherever the runtime reads the embedding from (maybe an int8 buffer)."""

    @abstractmethod
    def reset(self) -> None:
        """Zero the state: the next hop starts a new stream."""

    @abstractmethod
    def process(self, hop: np.ndarray) -> np.ndarray:
        """One hop of float32 audio [hop] in, one hop out (the output stream lags the input by one hop).

        The returned array is the backend's own buffer, overwritten by the next call: copy it to keep it.
        """


def quantize_into(dst: np.ndarray, x: np.ndarray, t: TensorIO) -> None:
    """Float -> the tensor's dtype (int8 with its scale/zero point, or float as is), written in place."""
    if t.quantized:
        info = np.iinfo(dst.dtype)
        np.clip(np.rint(x / t.scale) + t.zero_point, info.min, info.max, out=dst, casting="unsafe")
    else:
        dst[...] = x


def dequantize(x: np.ndarray, t: TensorIO) -> np.ndarray:
    if t.quantized:
        return (x.astype(np.float32) - t.zero_point) * np.float32(t.scale)
    return x
