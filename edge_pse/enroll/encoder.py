"""Pick the speaker encoder that enrollment runs: torch (resemblyzer), the packaged numpy one, or an exported one
(ONNX / LiteRT)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_pse.errors import EdgePseError

KINDS = ("auto", "torch", "numpy", "onnx", "litert")


@dataclass(frozen=True)
class Encoder:
    name: str
    version: str
    backend: str
    embed: Callable[[np.ndarray], np.ndarray]  # 16 kHz mono float -> L2-normalised embedding


def _torch_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "resemblyzer"))


def load_encoder(kind: str = "auto", encoder_dir: str | Path | None = None, threads: int = 1) -> Encoder:
    """'auto' = the exported encoder when `encoder_dir` is given, else torch when installed, else the packaged
    numpy encoder (a device install: same d-vectors, cosine >= 0.9999 to torch)."""
    if kind not in KINDS:
        raise EdgePseError(f"unknown encoder {kind!r}; choose from {', '.join(KINDS)}")
    if kind == "auto":
        kind = "runtime" if encoder_dir is not None else "torch" if _torch_available() else "numpy"
    if kind == "numpy" and encoder_dir is None:
        from edge_pse.enroll.runtime_encoder import PACKAGED

        encoder_dir = PACKAGED
    if kind == "torch":
        if not _torch_available():
            raise EdgePseError("the torch encoder needs torch and resemblyzer: pip install 'edge-pse[train]'")
        from edge_pse.enroll import dvector

        return Encoder(dvector.ENCODER_NAME, dvector.encoder_version(), "torch", dvector.embed)
    if encoder_dir is None:
        raise EdgePseError(f"--encoder {kind} needs --encoder-dir DIR holding an exported speaker encoder")
    from edge_pse.enroll.runtime_encoder import RuntimeEncoder

    enc = RuntimeEncoder(encoder_dir, backend="auto" if kind == "runtime" else kind, threads=threads)
    return Encoder(enc.name, enc.version, enc.backend, enc.embed)


def average_embeddings(embeddings: list[np.ndarray]) -> np.ndarray:
    """Several clips of one speaker: mean of the per-clip unit vectors, L2-normalised again."""
    mean = np.mean(np.stack(embeddings), axis=0)
    return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
