"""Published streaming enhancers as bench "peer cells": DTLN (float and its authors' dynamic-range int8 files)
and GTCRN, timed and scored beside our bundles in the same run, on the same machine and the same clips.

The model files are not part of edge-pse (MIT-licensed, read from a folder, by default ../shared/peers; see
its README.md). Each peer streams exactly as its authors' real-time scripts do, at 16 kHz:

- DTLN (block 512, shift 128 = 8 ms): the 512-sample input buffer shifts by 128 and takes the new hop;
  stage 1 maps |rfft(buffer)| [1,1,257] and its LSTM state to a mask; the masked spectrum goes back to 512
  samples (irfft) into stage 2 with its own state; its 512 samples are overlap-added into an output buffer
  whose first 128 are emitted. The output lags the input by 384 samples = 3 hops.
- GTCRN (sqrt-Hann 512, shift 256 = 16 ms): rfft of the windowed 512-sample buffer as [1,257,1,2] (real,
  imag) into "mix" with its three caches; "enh" back through irfft, the same window, and overlap-add.
  The output lags the input by 256 samples = 1 hop.

Neither is personalized: `set_speaker` is accepted and ignored, so the `interferer` and `absent` conditions
show what a model that enhances every voice does. Torch-free: numpy plus the peer's runtime (ai-edge-litert
or tflite-runtime for DTLN, onnxruntime for GTCRN).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_pse.errors import EdgePseError

SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class PeerInfo:
    """One peer cell: its files (in the peers folder), how they run, and its label in the report."""

    name: str
    files: tuple[str, ...]
    fmt: str  # tflite | onnx: the runtime that runs it (litert | onnx), as for a bundle's files
    quantization: str
    hop: int
    lag_hops: int


PEERS = {
    p.name: p
    for p in (
        PeerInfo("dtln", ("dtln_model_1.tflite", "dtln_model_2.tflite"), "tflite", "fp32", 128, 3),
        PeerInfo(
            "dtln-quant", ("dtln_model_quant_1.tflite", "dtln_model_quant_2.tflite"), "tflite", "int8-dyn", 128, 3
        ),
        PeerInfo("gtcrn", ("gtcrn_simple.onnx",), "onnx", "fp32", 256, 1),
    )
}
RUNTIMES = {
    "tflite": (("ai_edge_litert", "tflite_runtime"), "ai-edge-litert"),
    "onnx": (("onnxruntime",), "onnxruntime"),
}


def unavailable(name: str, root: str | Path) -> str | None:
    """Why the peer cannot run here (a missing file or runtime), or None when it can."""
    info = PEERS[name]
    missing = [f for f in info.files if not (Path(root) / f).is_file()]
    if missing:
        return f"{', '.join(missing)} not in {root}"
    modules, pip_name = RUNTIMES[info.fmt]
    if not any(importlib.util.find_spec(m) is not None for m in modules):
        return f"its runtime is not installed ({pip_name})"
    return None


def sqrt_hann(n: int) -> np.ndarray:
    """Square root of the periodic Hann window (torch.hann_window(n).sqrt()): its squares sum to 1 at hop n/2."""
    return np.sin(np.pi * np.arange(n) / n).astype(np.float32)


class _Peer:
    name = ""
    hop = 0
    sample_rate = SAMPLE_RATE
    lag_hops = 0

    def __init__(self, info: PeerInfo, root: str | Path, threads: int) -> None:
        self.info, self.threads = info, int(threads)
        self.name, self.hop, self.lag_hops = info.name, info.hop, info.lag_hops
        self.files = [str(Path(root) / f) for f in info.files]
        for f in self.files:
            if not Path(f).is_file():
                raise EdgePseError(f"peer {info.name}: {f} not found")

    @property
    def file_bytes(self) -> int:
        return sum(Path(f).stat().st_size for f in self.files)

    def set_speaker(self, embedding: np.ndarray) -> None:
        """Peers are not personalized: the speaker is ignored."""


class Dtln(_Peer):
    """DTLN's two TF-Lite stages, block 512 / shift 128 (the authors' real_time_processing_tf_lite.py)."""

    BLOCK = 512

    def __init__(self, info: PeerInfo, root: str | Path, threads: int = 1) -> None:
        super().__init__(info, root, threads)
        from edge_pse.runtime.backends.litert import _interpreter_class

        Interpreter = _interpreter_class()
        self._stages = []
        for f in self.files:
            try:
                it = Interpreter(model_path=f, num_threads=self.threads)
                it.allocate_tensors()
            except (ValueError, RuntimeError) as e:
                raise EdgePseError(f"peer {info.name}: LiteRT cannot load {f}: {e}") from None
            # the signal is [1,1,N], the LSTM state [1,2,128,2]: told apart by rank, not by position (the
            # order of the details differs between converter versions)
            ins, outs = it.get_input_details(), it.get_output_details()
            sig_in = next(d for d in ins if len(d["shape"]) == 3)
            st_in = next(d for d in ins if len(d["shape"]) == 4)
            sig_out = next(d for d in outs if len(d["shape"]) == 3)
            st_out = next(d for d in outs if len(d["shape"]) == 4)
            self._stages.append((it, sig_in["index"], st_in["index"], sig_out["index"], st_out["index"]))
            self._state_shape = tuple(st_in["shape"])
        self._inbuf = np.zeros(self.BLOCK, np.float32)
        self._outbuf = np.zeros(self.BLOCK, np.float32)
        self._out = np.zeros(self.hop, np.float32)
        self.reset()

    def reset(self) -> None:
        self._inbuf[:] = 0
        self._outbuf[:] = 0
        self._states = [np.zeros(self._state_shape, np.float32) for _ in self._stages]

    def process(self, hop: np.ndarray) -> np.ndarray:
        n, inbuf, outbuf = self.hop, self._inbuf, self._outbuf
        inbuf[:-n] = inbuf[n:]
        inbuf[-n:] = hop
        spec = np.fft.rfft(inbuf)
        (it1, sig1, st1, mask1, sto1), (it2, sig2, st2, blk2, sto2) = self._stages
        it1.set_tensor(sig1, np.abs(spec).astype(np.float32).reshape(1, 1, -1))
        it1.set_tensor(st1, self._states[0])
        it1.invoke()
        mask = it1.get_tensor(mask1)
        self._states[0] = it1.get_tensor(sto1)
        block = np.fft.irfft(spec * mask.reshape(-1), self.BLOCK).astype(np.float32)
        it2.set_tensor(sig2, block.reshape(1, 1, -1))
        it2.set_tensor(st2, self._states[1])
        it2.invoke()
        out_block = it2.get_tensor(blk2)
        self._states[1] = it2.get_tensor(sto2)
        outbuf[:-n] = outbuf[n:]
        outbuf[-n:] = 0
        outbuf += out_block.reshape(-1)
        self._out[:] = outbuf[:n]
        return self._out


class Gtcrn(_Peer):
    """GTCRN's streaming ONNX graph with explicit caches, sqrt-Hann 512 / shift 256 (the authors' stream/)."""

    FRAME = 512

    def __init__(self, info: PeerInfo, root: str | Path, threads: int = 1) -> None:
        super().__init__(info, root, threads)
        try:
            import onnxruntime as ort
        except ImportError:
            raise EdgePseError(f"peer {info.name} needs onnxruntime (pip install 'edge-pse[onnx]')") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self._sess = ort.InferenceSession(self.files[0], sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise EdgePseError(f"peer {info.name}: ONNX Runtime cannot load {self.files[0]}: {e}") from None
        ins = {i.name: i for i in self._sess.get_inputs()}
        outs = {o.name for o in self._sess.get_outputs()}
        caches = [n for n in ins if n != "mix"]
        if "mix" not in ins or "enh" not in outs or any(f"{c}_out" not in outs for c in caches):
            raise EdgePseError(f"peer {info.name}: {self.files[0]} lacks mix/enh or a cache's <name>_out output")
        self._caches = {c: tuple(ins[c].shape) for c in caches}
        self._out_names = ["enh"] + [f"{c}_out" for c in caches]
        self._win = sqrt_hann(self.FRAME)
        self._mix = np.zeros((1, self.FRAME // 2 + 1, 1, 2), np.float32)
        self._inbuf = np.zeros(self.FRAME, np.float32)
        self._tail = np.zeros(self.hop, np.float32)  # FRAME = 2 hops
        self._out = np.zeros(self.hop, np.float32)
        self.reset()

    def reset(self) -> None:
        self._inbuf[:] = 0
        self._tail[:] = 0
        self._feeds = {"mix": self._mix} | {c: np.zeros(s, np.float32) for c, s in self._caches.items()}

    def process(self, hop: np.ndarray) -> np.ndarray:
        n, inbuf = self.hop, self._inbuf
        inbuf[:-n] = inbuf[n:]
        inbuf[-n:] = hop
        spec = np.fft.rfft(inbuf * self._win)
        self._mix[0, :, 0, 0] = spec.real
        self._mix[0, :, 0, 1] = spec.imag
        enh, *caches = self._sess.run(self._out_names, self._feeds)
        for c, v in zip(self._caches, caches, strict=True):
            self._feeds[c] = v
        e = enh[0, :, 0]
        frame = np.fft.irfft(e[:, 0] + 1j * e[:, 1], self.FRAME).astype(np.float32) * self._win
        # 50 % overlap: the frame's first half completes the buffer's older hop (emitted), its second half waits
        np.add(self._tail, frame[:n], out=self._out)
        self._tail[:] = frame[n:]
        return self._out


def open_peer(name: str, root: str | Path, threads: int = 1) -> Dtln | Gtcrn:
    """The named peer (PEERS) from the files in `root`, its runtime at `threads` threads."""
    if name not in PEERS:
        raise EdgePseError(f"unknown peer {name!r} (have: {', '.join(PEERS)})")
    info = PEERS[name]
    return (Dtln if info.fmt == "tflite" else Gtcrn)(info, root, threads)
