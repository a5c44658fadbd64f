"""LiteRT (ai-edge-litert, else tflite-runtime): no torch. Handles litert-torch's mixed int8/float state I/O."""

from __future__ import annotations

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


class LiteRTBackend(Backend):
    name = "litert"

    def __init__(self, bundle: Bundle, entry: FileEntry, threads: int = 1) -> None:
        super().__init__(bundle, entry, threads)
        Interpreter = _interpreter_class()
        try:
            self._it = Interpreter(model_path=str(bundle.path / entry.path), num_threads=self.threads)
            self._it.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise EdgePseError(f"LiteRT cannot load {entry.path}: {e}") from None
        sig = self._it._get_full_signature_list()["serving_default"]
        ins, outs = entry.io.inputs, entry.io.outputs
        self._in_idx = [sig["inputs"][f"args_{k}"] for k in range(len(ins))]
        self._out_idx = [sig["outputs"][f"output_{k}"] for k in range(len(outs))]
        self._in_io, self._out_io = ins, outs
        self._hop_buf = np.zeros(ins[0].shape, dtype=np.dtype(ins[0].dtype))
        self._spk_buf = np.zeros(ins[1].shape, dtype=np.dtype(ins[1].dtype))
        self._out = np.zeros(self.hop_size, np.float32)
        self._float_hop = not ins[0].quantized and np.dtype(ins[0].dtype) == np.float32
        self._float_out = not outs[0].quantized and np.dtype(outs[0].dtype) == np.float32
        self._plan_states()
        self.reset()

    def _plan_states(self) -> None:
        """Precompute how each new state (output k) becomes the next input (k + 1), so a hop costs a few
        vectorised numpy calls: states with identical dtype/scale are copied as they are; the others go through
        one float buffer, q_in = clip(rint(q_out * a + b)) with a = s_out / s_in, b = zp_in - zp_out * a."""
        self._direct: list[tuple[int, int]] = []
        general = []
        for k in range(1, len(self._out_io)):
            o, i = self._out_io[k], self._in_io[k + 1]
            if o.dtype == i.dtype and o.scale == i.scale and o.zero_point == i.zero_point:
                self._direct.append((self._out_idx[k], self._in_idx[k + 1]))
            else:
                general.append((k, o, i))
        general.sort(key=lambda g: not g[2].quantized)  # int8 inputs first: one rint/clip over a prefix
        size = sum(int(np.prod(i.shape)) for _, _, i in general)
        self._f = np.zeros(size, np.float32)
        self._a = np.ones(size, np.float32)
        self._b = np.zeros(size, np.float32)
        self._general = []
        pos, self._n_quant = 0, 0
        for k, o, i in general:
            n = int(np.prod(i.shape))
            s_o, z_o = (o.scale, o.zero_point) if o.quantized else (1.0, 0)
            s_i, z_i = (i.scale, i.zero_point) if i.quantized else (1.0, 0)
            a = s_o / s_i
            self._a[pos : pos + n], self._b[pos : pos + n] = a, z_i - z_o * a
            buf = np.zeros(i.shape, dtype=np.dtype(i.dtype))
            self._general.append((self._out_idx[k], self._in_idx[k + 1], slice(pos, pos + n), buf))
            if i.quantized:
                self._n_quant = pos + n
            pos += n
        self._q_lo, self._q_hi = -128, 127  # litert-torch's int8 tensors

    def _speaker_changed(self) -> None:
        quantize_into(self._spk_buf, self._spk, self._in_io[1])
        self._it.set_tensor(self._in_idx[1], self._spk_buf)

    def reset(self) -> None:
        for idx, t in zip(self._in_idx[2:], self._in_io[2:], strict=True):
            zero = np.zeros(t.shape, dtype=np.dtype(t.dtype))
            quantize_into(zero, np.zeros(t.shape, np.float32), t)  # the zero state of an int8 input is its zp
            self._it.set_tensor(idx, zero)
        self._speaker_changed()

    def process(self, hop: np.ndarray) -> np.ndarray:
        it = self._it
        get, put, f = it.get_tensor, it.set_tensor, self._f
        if self._float_hop:  # a level-normalising graph takes the hop as float: no requantization on the host
            put(self._in_idx[0], hop.reshape(self._hop_buf.shape))
        else:
            quantize_into(self._hop_buf, hop.reshape(self._hop_buf.shape), self._in_io[0])
            put(self._in_idx[0], self._hop_buf)
        it.invoke()
        for out_idx, in_idx in self._direct:
            put(in_idx, get(out_idx))
        if self._general:
            for out_idx, _, sl, _ in self._general:
                np.copyto(f[sl], get(out_idx).reshape(-1), casting="unsafe")
            np.multiply(f, self._a, out=f)
            np.add(f, self._b, out=f)
            q = f[: self._n_quant]
            np.rint(q, out=q)
            np.clip(q, self._q_lo, self._q_hi, out=q)
            for _, in_idx, sl, buf in self._general:
                np.copyto(buf.reshape(-1), f[sl], casting="unsafe")
                put(in_idx, buf)
        if self._float_out:  # get_tensor already returns a copy: hand it on
            return get(self._out_idx[0]).reshape(-1)
        self._out[:] = dequantize(get(self._out_idx[0]), self._out_io[0]).reshape(-1)
        return self._out
