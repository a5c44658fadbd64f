"""ExecuTorch (.pte, XNNPACK delegate). Its Python runtime imports torch.

The threadpool size is set once, before the first method is loaded: resetting it afterwards segfaults
(docs/toolchain.md), so a second backend in the same process with another thread count is refused.
"""

from __future__ import annotations

import numpy as np

from edge_pse.bundle import Bundle, FileEntry
from edge_pse.errors import EdgePseError
from edge_pse.runtime.backends.base import Backend

_threads_set: int | None = None


def _set_threads(threads: int) -> None:
    global _threads_set
    if _threads_set is None:
        from executorch.extension.pybindings import portable_lib

        portable_lib._unsafe_reset_threadpool(threads)
        _threads_set = threads
    elif _threads_set != threads:
        raise EdgePseError(
            f"ExecuTorch's threadpool is already set to {_threads_set} threads in this process; "
            f"cannot switch to {threads}"
        )


class ExecuTorchBackend(Backend):
    name = "executorch"

    def __init__(self, bundle: Bundle, entry: FileEntry, threads: int = 1) -> None:
        super().__init__(bundle, entry, threads)
        try:
            import torch
            from executorch.runtime import Runtime
        except ImportError:
            raise EdgePseError("the ExecuTorch backend needs executorch (pip install 'edge-pse[executorch]')") from None
        _set_threads(self.threads)
        try:
            program = Runtime.get().load_program(bundle.path / entry.path)
            self._method = program.load_method("forward")
        except Exception as e:  # the runtime raises RuntimeError/ValueError variants for bad programs
            raise EdgePseError(f"ExecuTorch cannot load {entry.path}: {e}") from None
        meta = self._method.metadata
        self._check_file_shapes(
            [meta.input_tensor_meta(i).sizes() for i in range(meta.num_inputs())],
            [meta.output_tensor_meta(i).sizes() for i in range(meta.num_outputs())],
        )
        self._torch = torch
        self._inputs = [torch.zeros(t.shape) for t in entry.io.inputs]
        self._hop = self._inputs[0]
        self._spk_t = self._inputs[1]
        self._out = np.zeros(self.hop_size, np.float32)

    def _speaker_changed(self) -> None:
        self._spk_t.copy_(self._torch.from_numpy(self._spk))

    def _get_state(self) -> np.ndarray:
        return self._inputs[2].numpy().copy()

    def _set_state(self, state: np.ndarray) -> None:
        self._inputs[2].copy_(self._torch.from_numpy(state))

    def reset(self) -> None:
        for t in self._inputs[2:]:
            t.zero_()

    def process(self, hop: np.ndarray) -> np.ndarray:
        self._hop.numpy()[0] = hop
        out, *state = self._method.execute(self._inputs)
        for dst, src in zip(self._inputs[2:], state, strict=True):  # copy: outputs may alias runtime memory
            dst.copy_(src)
        self._out[:] = out.numpy()[0]
        return self._out
