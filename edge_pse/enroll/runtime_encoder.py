"""Torch-free d-vector encoder: the exported resemblyzer network run by numpy, ONNX Runtime or LiteRT.

Reads a directory written by export_encoder (speaker_encoder.json + model + front-end tables), checks every
file's sha256, and embeds audio with the same preprocessing, mel front-end and partial pooling as the torch
path (dvector.embed), so profiles made on a Pi and on a host are interchangeable (cosine >= 0.9999).

The `numpy` backend runs the network (a 3-layer LSTM, a Linear, ReLU, L2 norm) from its weights with numpy
alone: the package ships those weights (`edge_pse/enroll/encoder/`), so enrollment on a device install needs
no runtime, no torch and no export step.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from edge_pse.enroll import frontend
from edge_pse.enroll.preprocess import preprocess
from edge_pse.errors import EdgePseError

SCHEMA = 1
META_NAME = "speaker_encoder.json"
BACKENDS = ("onnx", "litert", "numpy")  # auto takes the first one a directory has and this install runs
PARTIALS_PER_CALL = 16  # 1.6 s partials per network call: bounds the memory of a long clip
PACKAGED = Path(__file__).resolve().parent / "encoder"  # resemblyzer's weights for the numpy backend (Apache-2.0)


def _verified(root: Path, entry: dict) -> Path:
    path = root / entry["path"]
    if not path.is_file():
        raise EdgePseError(f"speaker encoder file missing: {path}")
    if hashlib.sha256(path.read_bytes()).hexdigest() != entry["sha256"]:
        raise EdgePseError(f"speaker encoder file {path} does not match its sha256 in {META_NAME} (tampered?)")
    return path


def _read_meta(root: Path) -> dict:
    meta_path = root / META_NAME
    if not meta_path.is_file():
        raise EdgePseError(
            f"no exported speaker encoder in {root} (missing {META_NAME}); "
            "create one on a host with: python -m edge_pse.enroll.export_encoder --output DIR"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EdgePseError(f"unreadable {meta_path}: {e}") from e
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA:
        raise EdgePseError(f"{meta_path}: unsupported speaker encoder schema {meta.get('schema')!r}, expected {SCHEMA}")
    return meta


class RuntimeEncoder:
    """An exported speaker encoder loaded for one backend ('onnx' or 'litert')."""

    def __init__(self, root: str | Path, backend: str = "auto", threads: int = 1) -> None:
        self.root = Path(root)
        self.meta = _read_meta(self.root)
        available = self.backends_in(self.root)
        if backend == "auto":
            backend = next((b for b in BACKENDS if b in available and _importable(b)), "")
            if not backend:
                raise EdgePseError(
                    f"no usable backend for the speaker encoder in {self.root}: install onnxruntime "
                    "(pip install 'edge-pse[onnx]') or ai-edge-litert (pip install 'edge-pse[litert]')"
                )
        if backend not in BACKENDS:
            raise EdgePseError(f"unknown speaker encoder backend {backend!r}; choose from {', '.join(BACKENDS)}")
        if backend not in available:
            raise EdgePseError(f"{self.root} has no {backend} speaker encoder (has: {', '.join(available) or 'none'})")
        self.backend = backend
        self.name: str = self.meta["encoder"]
        self.version: str = self.meta["encoder_version"]
        self.embedding_dim: int = int(self.meta["embedding_dim"])
        with np.load(_verified(self.root, self.meta["frontend"]), allow_pickle=False) as tables:
            self.window = tables["window"].astype(np.float32)
            self.mel_basis = tables["mel_basis"].astype(np.float32)
        model_path = _verified(self.root, self.meta["models"][backend])
        runner = {"numpy": _numpy_runner, "onnx": _onnx_runner, "litert": _litert_runner}[backend]
        self._run = runner(model_path, threads)

    @staticmethod
    def backends_in(root: str | Path) -> list[str]:
        """Backends whose model files the export in `root` lists."""
        return [b for b in BACKENDS if b in _read_meta(Path(root)).get("models", {})]

    def embed_partials(self, mels: np.ndarray) -> np.ndarray:
        """[partials, 160, 40] mel frames -> [partials, 256] L2-normalised embeddings, PARTIALS_PER_CALL at a time
        (each partial is independent; a whole 2-minute clip at once held ~360 MiB of LSTM gates)."""
        mels = np.ascontiguousarray(mels, dtype=np.float32)
        return np.concatenate(
            [self._run(mels[k : k + PARTIALS_PER_CALL]) for k in range(0, len(mels), PARTIALS_PER_CALL)]
        )

    def embed_preprocessed(self, wave: np.ndarray) -> np.ndarray:
        return frontend.pool(self.embed_partials(frontend.partial_mels(wave, self.window, self.mel_basis)))

    def embed(self, wave: np.ndarray) -> np.ndarray:
        """L2-normalised d-vector of a 16 kHz mono float clip (same result as dvector.embed)."""
        return self.embed_preprocessed(preprocess(wave))


def _importable(backend: str) -> bool:
    import importlib.util

    if backend == "numpy":
        return True
    module = "onnxruntime" if backend == "onnx" else "ai_edge_litert"
    return importlib.util.find_spec(module) is not None


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # = 1 / (1 + exp(-x)), without overflow warnings


def _numpy_runner(path: Path, threads: int):
    """resemblyzer's network in numpy: LSTM layers (PyTorch's gate order i, f, g, o), the last hidden state of
    the top layer, Linear, ReLU, L2 norm. Weights are stored as float16 and computed in float32."""
    with np.load(path, allow_pickle=False) as z:
        w = {k: z[k].astype(np.float32) for k in z.files}
    layers = sorted({int(k.rsplit("_l", 1)[1]) for k in w if k.startswith("weight_ih_l")})
    params = [(w[f"weight_ih_l{k}"].T.copy(), w[f"weight_hh_l{k}"].T.copy(), w[f"bias_l{k}"]) for k in layers]
    lin_w, lin_b = w["linear_weight"].T.copy(), w["linear_bias"]

    def run(mels: np.ndarray) -> np.ndarray:
        x = mels.astype(np.float32)  # [partials, frames, features]
        for w_ih, w_hh, b in params:
            hidden = w_hh.shape[0]
            gates_x = x @ w_ih + b  # every frame's input part at once
            h = np.zeros((x.shape[0], hidden), np.float32)
            c = np.zeros_like(h)
            out = np.empty((x.shape[0], x.shape[1], hidden), np.float32)
            for t in range(x.shape[1]):
                g = gates_x[:, t] + h @ w_hh
                i, f, u, o = (
                    _sigmoid(g[:, :hidden]),
                    _sigmoid(g[:, hidden : 2 * hidden]),
                    g[:, 2 * hidden : 3 * hidden],
                    g[:, 3 * hidden :],
                )
                c = f * c + i * np.tanh(u)
                h = _sigmoid(o) * np.tanh(c)
                out[:, t] = h
            x = out
        raw = np.maximum(x[:, -1] @ lin_w + lin_b, 0.0)
        return raw / np.sqrt(np.sum(raw * raw, axis=1, keepdims=True) + 1e-12)

    return run


def _onnx_runner(path: Path, threads: int):
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise EdgePseError("the onnx speaker encoder needs onnxruntime: pip install 'edge-pse[onnx]'") from e
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(mels: np.ndarray) -> np.ndarray:
        return session.run(None, {name: mels})[0]

    return run


def _litert_runner(path: Path, threads: int):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        raise EdgePseError("the litert speaker encoder needs ai-edge-litert: pip install 'edge-pse[litert]'") from e
    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]["index"]
    out = interpreter.get_output_details()[0]["index"]

    def run(mels: np.ndarray) -> np.ndarray:
        rows = []
        for partial in mels:  # the LiteRT model has a fixed batch of one partial
            interpreter.set_tensor(inp, partial[None])
            interpreter.invoke()
            rows.append(interpreter.get_tensor(out)[0].copy())
        return np.stack(rows)

    return run
