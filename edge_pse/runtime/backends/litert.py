"""LiteRT (ai-edge-litert, else tflite-runtime): no torch. An int8 input (the speaker of schema-2 int8 files;
a schema-3 file's inputs are all float) is quantized here with the manifest's scale; the packed state stays
float."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

import numpy as np

from edge_pse.bundle import Bundle, FileEntry
from edge_pse.errors import EdgePseError
from edge_pse.runtime.backends.base import Backend, dequantize, quantize_into


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise EdgePseError(
                "the LiteRT backend needs ai-edge-litert (pip install 'edge-pse[litert]') or tflite-runtime"
            ) from None
    return Interpreter


@contextlib.contextmanager
def _without_info_lines() -> Iterator[None]:
    """LiteRT's C++ logging writes "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." to stderr on every
    load: capture stderr (the file descriptor) meanwhile and pass on every other line, warnings and errors."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (captured by a caller): nothing to filter
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            capture.seek(0)
            kept = [x for x in capture.read().decode(errors="replace").splitlines(True) if not x.startswith("INFO: ")]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class LiteRTBackend(Backend):
    name = "litert"

    def __init__(self, bundle: Bundle, entry: FileEntry, threads: int = 1) -> None:
        super().__init__(bundle, entry, threads)
        Interpreter = _interpreter_class()
        try:
            with _without_info_lines():
                self._it = Interpreter(model_path=str(bundle.path / entry.path), num_threads=self.threads)
                self._it.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise EdgePseError(f"LiteRT cannot load {entry.path}: {e}") from None
        sig = self._it._get_full_signature_list()["serving_default"]
        ins, outs = entry.io.inputs, entry.io.outputs
        self._in_idx = [sig["inputs"][f"args_{k}"] for k in range(len(ins))]
        self._out_idx = [sig["outputs"][f"output_{k}"] for k in range(len(outs))]
        self._in_io, self._out_io = ins, outs
        details = {d["index"]: d["shape"] for d in self._it.get_input_details() + self._it.get_output_details()}
        self._check_file_shapes([details[i] for i in self._in_idx], [details[i] for i in self._out_idx])
        self._hop_buf = np.zeros(ins[0].shape, dtype=np.dtype(ins[0].dtype))
        self._spk_buf = np.zeros(ins[1].shape, dtype=np.dtype(ins[1].dtype))
        self._out = np.zeros(self.hop_size, np.float32)
        self._float_hop = not ins[0].quantized and np.dtype(ins[0].dtype) == np.float32
        self._float_out = not outs[0].quantized and np.dtype(outs[0].dtype) == np.float32
        self._plan_states()
        self.reset()

    def _plan_states(self) -> None:
        """The packed state (bundle schema 2) leaves the file as float and goes back in as it is."""
        o, i = self._out_io[1], self._in_io[2]
        if o.quantized or i.quantized or o.shape != i.shape:
            raise EdgePseError(f"{self.entry.path}: its state must be float in and out (re-export the bundle)")
        self._state_out, self._state_in = self._out_idx[1], self._in_idx[2]

    def _speaker_changed(self) -> None:
        quantize_into(self._spk_buf, self._spk, self._in_io[1])
        self._it.set_tensor(self._in_idx[1], self._spk_buf)

    def _get_state(self) -> np.ndarray:
        return self._it.get_tensor(self._state_in)  # get_tensor copies

    def _set_state(self, state: np.ndarray) -> None:
        self._it.set_tensor(self._state_in, state)

    def reset(self) -> None:
        self._it.set_tensor(self._state_in, np.zeros(self._in_io[2].shape, np.float32))
        self._speaker_changed()

    def process(self, hop: np.ndarray) -> np.ndarray:
        it = self._it
        get, put = it.get_tensor, it.set_tensor
        if self._float_hop:  # a level-normalising graph takes the hop as float: no requantization on the host
            put(self._in_idx[0], hop.reshape(self._hop_buf.shape))
        else:
            quantize_into(self._hop_buf, hop.reshape(self._hop_buf.shape), self._in_io[0])
            put(self._in_idx[0], self._hop_buf)
        it.invoke()
        put(self._state_in, get(self._state_out))
        if self._float_out:  # get_tensor already returns a copy: hand it on
            return get(self._out_idx[0]).reshape(-1)
        self._out[:] = dequantize(get(self._out_idx[0]), self._out_io[0]).reshape(-1)
        return self._out
