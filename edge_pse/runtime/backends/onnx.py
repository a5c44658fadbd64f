"""ONNX Runtime (CPU), no torch. fp32 and int8 files both have float I/O."""

from __future__ import annotations

import numpy as np

from edge_pse.bundle import Bundle, FileEntry
from edge_pse.errors import EdgePseError
from edge_pse.runtime.backends.base import Backend


class OnnxBackend(Backend):
    name = "onnx"

    def __init__(self, bundle: Bundle, entry: FileEntry, threads: int = 1) -> None:
        super().__init__(bundle, entry, threads)
        try:
            import onnxruntime as ort
        except ImportError:
            raise EdgePseError("the ONNX backend needs onnxruntime (pip install 'edge-pse[onnx]')") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self._sess = ort.InferenceSession(
                str(bundle.path / entry.path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise EdgePseError(f"ONNX Runtime cannot load {entry.path}: {e}") from None
        self._check_file_shapes([i.shape for i in self._sess.get_inputs()], [o.shape for o in self._sess.get_outputs()])
        self._in_names = [t.name for t in entry.io.inputs]
        self._out_names = [t.name for t in entry.io.outputs]
        self._feeds = {t.name: np.zeros(t.shape, np.float32) for t in entry.io.inputs}
        self._hop = self._feeds[self._in_names[0]]
        self._feeds[self._in_names[1]] = self._spk
        self._state_names = self._in_names[2:]
        self._out = np.zeros(self.hop_size, np.float32)

    def _speaker_changed(self) -> None:
        """Nothing to copy: the feeds hold `self._spk` itself."""

    def _get_state(self) -> np.ndarray:
        return self._feeds[self._state_names[0]].copy()

    def _set_state(self, state: np.ndarray) -> None:
        self._feeds[self._state_names[0]] = state.copy()

    def reset(self) -> None:
        for n in self._state_names:
            self._feeds[n] = np.zeros_like(self._feeds[n])

    def process(self, hop: np.ndarray) -> np.ndarray:
        self._hop[0] = hop
        out, *state = self._sess.run(self._out_names, self._feeds)
        for n, s in zip(self._state_names, state, strict=True):
            self._feeds[n] = s
        self._out[:] = out[0]
        return self._out
