"""One small interface over every runtime: load a bundle's model file, set the speaker, reset, process a hop.

Torch-free. A backend keeps the step's state (one packed float tensor, bundle schema 2 and later) internally
between `process` calls. A schema-3 bundle's speaker projection is applied here, once per speaker; int8 inputs
(the speaker of schema-2 LiteRT files) are quantized here with the scales the manifest records.
A backend's own calls are one stream; `open_stream()` gives more streams on the same loaded model (the device
agent serves each connection's stream so), each with its own speaker and state.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod

import numpy as np

from edge_pse.bundle import Bundle, FileEntry, TensorIO
from edge_pse.errors import EdgePseError


class Backend(ABC):
    name: str = ""

    def __init__(self, bundle: Bundle, entry: FileEntry, threads: int = 1) -> None:
        self.bundle, self.entry, self.threads = bundle, entry, int(threads)
        self.spec = bundle.spec
        self.hop_size = bundle.spec.hop
        self.spk_dim = bundle.spec.speaker_dim  # the embedding's size
        # schema 3: the model files take weight @ embedding + bias (computed here, once per speaker)
        self._projection = bundle.speaker_projection()
        width = self.spk_dim if self._projection is None else self._projection[0].shape[0]
        self._spk = np.zeros((1, width), np.float32)  # what the model file's speaker input gets
        self._lock = threading.Lock()  # streams of this model take turns, one hop at a time
        self._active: Stream | None = None  # the stream whose speaker and state the model holds now

    def _check_file_shapes(self, inputs: list, outputs: list) -> None:
        """The shapes the runtime reads from the model file itself must be the manifest's: a manifest whose hop,
        speaker or state was edited (and resealed) to disagree with its file is refused before a hop runs."""
        io = self.entry.io
        want = [tuple(t.shape) for t in io.inputs], [tuple(t.shape) for t in io.outputs]
        got = [tuple(int(d) for d in s) for s in inputs], [tuple(int(d) for d in s) for s in outputs]
        if got != want:
            raise EdgePseError(
                f"{self.entry.path}: the file's own inputs {got[0]} and outputs {got[1]} are not the manifest's "
                f"{want[0]} and {want[1]}: the manifest was edited or belongs to another file; re-export the bundle"
            )

    def check_embedding(self, emb: np.ndarray) -> np.ndarray:
        emb = np.asarray(emb, dtype=np.float32).reshape(-1)
        if emb.size != self.spk_dim or not np.all(np.isfinite(emb)):
            raise EdgePseError(f"speaker embedding must be {self.spk_dim} finite floats (got {emb.size} values)")
        return emb

    def speaker_input(self, emb: np.ndarray) -> np.ndarray:
        """What the model file's speaker input gets for embedding `emb` (checked): the projection's output for
        a schema-3 bundle, else the embedding itself."""
        emb = self.check_embedding(emb)
        if self._projection is None:
            return emb
        weight, bias = self._projection
        return weight @ emb + bias

    def set_speaker(self, emb: np.ndarray) -> None:
        self._set_speaker_input(self.speaker_input(emb))

    def _set_speaker_input(self, spk: np.ndarray) -> None:
        self._spk[0] = spk
        self._speaker_changed()

    def open_stream(self) -> Stream:
        """A new stream on this loaded model, from zero state; set its speaker before its first hop."""
        return Stream(self)

    def _switch_to(self, stream: Stream) -> None:
        """Hand the model to `stream`: the previous stream keeps a copy of its state, this one's is loaded."""
        if self._active is not None:
            self._active._state = self._get_state()
        self._set_speaker_input(stream._spk)  # projected once, when the stream's speaker was set
        if stream._state is None:
            self.reset()
        else:
            self._set_state(stream._state)
        self._active = stream

    @abstractmethod
    def _get_state(self) -> np.ndarray:
        """A copy of the packed state the next hop reads."""

    @abstractmethod
    def _set_state(self, state: np.ndarray) -> None:
        """Make `state` the one the next hop reads."""

    @abstractmethod
    def _speaker_changed(self) -> None:
        """Copy `self._spk` to wherever the runtime reads its speaker input from (maybe an int8 buffer)."""

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


class Stream:
    """One audio stream on a loaded model, as sherpa-onnx's streams: its own speaker and packed state. The
    model loads once; streams take turns, one hop at a time. Switching costs a copy of the state (704 floats
    for tiny) and of the speaker input (its projection is kept, not recomputed); a stream that keeps the model
    pays nothing extra."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._spk = np.zeros(backend._spk.shape[1], np.float32)  # the model file's speaker input
        self._state: np.ndarray | None = None  # None: zero state (a fresh or reset stream)

    def set_speaker(self, emb: np.ndarray) -> None:
        b = self.backend
        self._spk = np.array(b.speaker_input(emb), dtype=np.float32)
        with b._lock:
            if b._active is self:
                b._set_speaker_input(self._spk)

    def reset(self) -> None:
        b = self.backend
        with b._lock:
            self._state = None
            if b._active is self:
                b.reset()

    def process(self, hop: np.ndarray) -> np.ndarray:
        """Like `Backend.process`, but the returned hop is this stream's own copy."""
        b = self.backend
        with b._lock:
            if b._active is not self:
                b._switch_to(self)
            return b.process(hop).copy()
