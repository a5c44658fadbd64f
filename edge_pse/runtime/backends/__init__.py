"""Backends: one interface (`Backend`) over LiteRT, ONNX Runtime, ExecuTorch and the PyTorch reference.

`open_backend` imports a runtime only when asked for it; LiteRT and ONNX never import torch.
"""

from __future__ import annotations

from edge_pse.bundle import Bundle
from edge_pse.errors import EdgePseError
from edge_pse.runtime.backends.base import Backend

# backend name -> (module, class, bundle file format); torch runs the float weights, not a model file
BACKENDS: dict[str, tuple[str, str, str | None]] = {
    "litert": ("edge_pse.runtime.backends.litert", "LiteRTBackend", "tflite"),
    "executorch": ("edge_pse.runtime.backends.executorch", "ExecuTorchBackend", "pte"),
    "onnx": ("edge_pse.runtime.backends.onnx", "OnnxBackend", "onnx"),
    "torch": ("edge_pse.runtime.backends.torch_ref", "TorchBackend", None),
}
FORMAT_BACKEND = {fmt: name for name, (_, _, fmt) in BACKENDS.items() if fmt}
# the modules a backend's runtime comes from (any one of them): what `installed` looks for
RUNTIME_MODULES: dict[str, tuple[str, ...]] = {
    "litert": ("ai_edge_litert", "tflite_runtime"),  # the LiteRT backend runs either
    "onnx": ("onnxruntime",),
    "executorch": ("executorch",),
    "torch": ("torch",),
}
EXTRAS = {"litert": "litert", "onnx": "onnx", "executorch": "executorch", "torch": "train"}  # pip extras


def installed(backend: str) -> bool:
    """Whether this install has the backend's runtime (found, not imported: cheap, and torch stays unloaded)."""
    import importlib.util

    for mod in RUNTIME_MODULES[backend]:
        try:
            if importlib.util.find_spec(mod) is not None:
                return True
        except (ImportError, ValueError):
            pass
    return False


def open_backend(bundle: Bundle, name: str | None = None, threads: int = 1, quantization: str | None = None) -> Backend:
    """The named backend on the bundle's matching file (int8 preferred); `name=None` picks the first format
    the bundle has in the order litert, onnx, executorch."""
    import importlib

    if name is None:
        have = {f.format for f in bundle.files}
        name = next((n for n in ("litert", "onnx", "executorch") if BACKENDS[n][2] in have), None)
        if name is None:
            raise EdgePseError(f"bundle {bundle.path} has no file a backend can run")
    if name not in BACKENDS:
        raise EdgePseError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    module, cls, fmt = BACKENDS[name]
    entry = bundle.file(fmt, quantization) if fmt else None
    return getattr(importlib.import_module(module), cls)(bundle, entry, threads)


__all__ = ["BACKENDS", "EXTRAS", "FORMAT_BACKEND", "Backend", "installed", "open_backend"]
