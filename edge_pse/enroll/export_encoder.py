"""Host-side export of resemblyzer's d-vector encoder to ONNX (and LiteRT) for torch-free enrollment.

Stages: load the wheel's weights -> wrap the network (LSTM -> linear -> ReLU -> L2 norm on [partials,160,40] mel
frames) -> export ONNX -> (optionally) convert to LiteRT -> write the front-end tables (periodic Hann window and
librosa's slaney mel filterbank) -> check against torch -> write speaker_encoder.json with sha256 of each file.
The weights are resemblyzer's (Apache-2.0, Copyright Resemble AI); see docs/profile.md.

    python -m edge_pse.enroll.export_encoder --output DIR [--litert] [--no-onnx]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from edge_pse.enroll import dvector, frontend

SCHEMA = 1
META_NAME = "speaker_encoder.json"
ONNX_NAME = "speaker_encoder.onnx"
TFLITE_NAME = "speaker_encoder.tflite"
FRONTEND_NAME = "speaker_encoder_frontend.npz"
NUMPY_NAME = "speaker_encoder_weights.npz"  # the numpy backend's weights (float16: 2.8 MB, cosine > 0.9999)
INPUT_NAME = "mels"
OUTPUT_NAME = "embeddings"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _network():
    """resemblyzer's VoiceEncoder forward pass as a plain module (the wheel's class holds device logic too)."""
    import torch

    class DVectorNet(torch.nn.Module):
        def __init__(self, encoder) -> None:
            super().__init__()
            self.lstm = encoder.lstm
            self.linear = encoder.linear

        def forward(self, mels: torch.Tensor) -> torch.Tensor:
            _, (hidden, _) = self.lstm(mels)
            raw = torch.relu(self.linear(hidden[-1]))
            return raw / torch.sqrt(torch.sum(raw * raw, dim=1, keepdim=True) + 1e-12)

    return DVectorNet(dvector.encoder()).eval()


def _example(batch: int = 3, seed: int = 0) -> np.ndarray:
    """Mel frames of a loud noise-like clip: only shapes and a rough value range matter for export."""
    wave = (0.1 * np.random.default_rng(seed).standard_normal(frontend.HOP * (frontend.PARTIAL_FRAMES * batch))).astype(
        np.float32
    )
    window, basis = frontend_tables()
    return frontend.partial_mels(wave, window, basis)[:batch]


def frontend_tables() -> tuple[np.ndarray, np.ndarray]:
    """(window[400], mel_basis[40, 201]) exactly as resemblyzer's librosa call builds them."""
    import librosa

    window = librosa.filters.get_window("hann", frontend.N_FFT, fftbins=True).astype(np.float32)
    basis = librosa.filters.mel(sr=frontend.SAMPLE_RATE, n_fft=frontend.N_FFT, n_mels=frontend.N_MELS)
    return window, basis.astype(np.float32)


def export_onnx(net, path: Path) -> None:
    import torch

    example = torch.from_numpy(_example())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "partials"}, OUTPUT_NAME: {0: "partials"}},
            opset_version=17,
            dynamo=False,
        )


def export_numpy(net, path: Path) -> None:
    """The network's weights for the numpy backend, float16 (half the size; the check below bounds the cost)."""
    sd = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    out = {"linear_weight": sd["linear.weight"], "linear_bias": sd["linear.bias"]}
    for k in range(net.lstm.num_layers):
        out[f"weight_ih_l{k}"] = sd[f"lstm.weight_ih_l{k}"]
        out[f"weight_hh_l{k}"] = sd[f"lstm.weight_hh_l{k}"]
        out[f"bias_l{k}"] = sd[f"lstm.bias_ih_l{k}"] + sd[f"lstm.bias_hh_l{k}"]
    np.savez(path, **{k: v.astype(np.float16) for k, v in out.items()})


def export_litert(net, path: Path) -> None:
    import litert_torch
    import torch

    example = torch.from_numpy(_example(batch=1))
    litert_torch.convert(net, (example,)).export(str(path))


def export(output: Path, litert: bool = False, onnx: bool = True) -> dict:
    """Write the encoder files into `output` (created if needed) and return the metadata written: always the
    numpy weights, the ONNX model unless `onnx` is False, the LiteRT model with `litert`."""
    import torch

    output.mkdir(parents=True, exist_ok=True)
    net = _network()
    files: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(dir=output) as tmp:
        tmp = Path(tmp)
        window, basis = frontend_tables()
        np.savez(tmp / FRONTEND_NAME, window=window, mel_basis=basis)
        export_numpy(net, tmp / NUMPY_NAME)
        files["numpy"] = {"path": NUMPY_NAME, "dtype": "float16"}
        if onnx:
            export_onnx(net, tmp / ONNX_NAME)
            files["onnx"] = {"path": ONNX_NAME}
        if litert:
            export_litert(net, tmp / TFLITE_NAME)
            files["litert"] = {"path": TFLITE_NAME, "batch": 1}
        example = _example()
        with torch.no_grad():
            expected = net(torch.from_numpy(example)).numpy()
        for info in files.values():
            info["sha256"] = _sha256(tmp / info["path"])
        meta = {
            "schema": SCHEMA,
            "encoder": dvector.ENCODER_NAME,
            "encoder_version": dvector.encoder_version(),
            "embedding_dim": dvector.EMBED_DIM,
            "embed_recipe": dvector.EMBED_RECIPE,
            "sample_rate": frontend.SAMPLE_RATE,
            "input": {"name": INPUT_NAME, "shape": ["partials", frontend.PARTIAL_FRAMES, frontend.N_MELS]},
            "output": {"name": OUTPUT_NAME, "shape": ["partials", dvector.EMBED_DIM]},
            "frontend": {
                "path": FRONTEND_NAME,
                "sha256": _sha256(tmp / FRONTEND_NAME),
                "n_fft": frontend.N_FFT,
                "hop": frontend.HOP,
                "n_mels": frontend.N_MELS,
            },
            "models": files,
            "source": "resemblyzer pretrained.pt (Apache-2.0, Resemble AI), exported by edge_pse.enroll.export_encoder",
            "torch_version": torch.__version__,
        }
        (tmp / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
        for name in [FRONTEND_NAME, *(i["path"] for i in files.values()), META_NAME]:  # metadata last
            os.replace(tmp / name, output / name)
    _check(output, example, expected)
    return meta


def _check(output: Path, example: np.ndarray, expected: np.ndarray) -> None:
    """The exported files must give torch's embeddings (cosine > 0.9999 per partial)."""
    from edge_pse.enroll.runtime_encoder import RuntimeEncoder

    for backend in RuntimeEncoder.backends_in(output):
        got = RuntimeEncoder(output, backend=backend).embed_partials(example)
        cos = np.sum(got * expected, axis=1)
        if not np.all(cos > 0.9999):
            raise RuntimeError(f"exported {backend} encoder disagrees with torch: cosine {cos.min():.6f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", type=Path, required=True, help="directory for the encoder files")
    p.add_argument("--litert", action="store_true", help="also convert to LiteRT (.tflite) with litert-torch")
    p.add_argument("--no-onnx", action="store_true", help="only the numpy weights (what the package ships)")
    args = p.parse_args(argv)
    meta = export(args.output, litert=args.litert, onnx=not args.no_onnx)
    for info in meta["models"].values():
        path = args.output / info["path"]
        print(f"{path}  {path.stat().st_size / 2**20:.2f} MiB  sha256 {info['sha256'][:12]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
