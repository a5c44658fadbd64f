"""Everything a run needs before the first hop: the verified bundle, the speaker, a backend per the profile."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_pse.errors import EdgePseError
from edge_pse.runtime.devices import Profile

WARMUP_HOPS = 5


@dataclass
class Session:
    bundle: object
    backend: object
    profile: Profile
    speaker_path: Path
    tried: list[str]

    @property
    def hop(self) -> int:
        return self.bundle.spec.hop

    @property
    def sample_rate(self) -> int:
        return self.bundle.spec.sample_rate

    def describe(self) -> dict:
        entry = getattr(self.backend, "entry", None)
        return {
            "bundle": str(self.bundle.path),
            "preset": self.bundle.manifest.get("preset"),
            "model_file": getattr(entry, "path", None),
            "quantization": getattr(entry, "quantization", None),
            "threads": getattr(self.backend, "threads", None),
            "speaker": str(self.speaker_path),
            "backends_tried": self.tried,
        }


def load_speaker(path: Path, spec) -> np.ndarray:
    """The profile's embedding; refused when another encoder (or dimension) made it than the bundle's
    StreamSpec (or a device's report of it: `speaker_encoder`, `speaker_dim`) expects."""
    from edge_pse.enroll.profile import load_profile

    prof = load_profile(path, expected_encoder=spec.speaker_encoder, expected_dim=spec.speaker_dim)
    return np.asarray(prof.embedding, dtype=np.float32).reshape(-1)


def warm_up(backend) -> None:
    """A runtime's first calls allocate arenas and pick kernels (ms, not us): make them before audio starts,
    then start the stream from zero state."""
    hop = np.zeros(backend.hop_size, np.float32)
    for _ in range(WARMUP_HOPS):
        backend.process(hop)
    backend.reset()


def open_backend_for(bundle, profile: Profile, backend: str | None, threads: int | None) -> tuple[object, list[str]]:
    """The first backend in the profile's order that the bundle has a file for and that loads here."""
    from edge_pse.runtime.backends import open_backend

    threads = threads or profile.threads
    if backend is not None:
        return open_backend(bundle, backend, threads=threads), [backend]
    reasons, tried = [], []
    for name in profile.backends:
        tried.append(name)
        try:
            return open_backend(bundle, name, threads=threads), tried
        except EdgePseError as e:
            reasons.append(f"{name}: {e}")
    raise EdgePseError("no backend could run this bundle here:\n  " + "\n  ".join(reasons))


def open_session(
    bundle_path: str | Path,
    speaker_path: str | Path,
    profile: Profile,
    *,
    backend: str | None = None,
    threads: int | None = None,
    default_bundle: bool = False,
) -> Session:
    from edge_pse.bundle import Bundle

    bundle_path, speaker_path = Path(bundle_path), Path(speaker_path)
    if default_bundle and not bundle_path.is_dir():
        raise EdgePseError(
            f"the shipped tiny int8 bundle is missing from this install ({bundle_path}); "
            "pass --model BUNDLE (made by `edge-pse export`)"
        )
    bundle = Bundle.load(bundle_path)
    if not speaker_path.is_file():
        raise EdgePseError(f"speaker profile not found: {speaker_path} (make one with `edge-pse enroll`)")
    emb = load_speaker(speaker_path, bundle.spec)
    be, tried = open_backend_for(bundle, profile, backend, threads)
    be.set_speaker(emb)
    warm_up(be)
    return Session(bundle=bundle, backend=be, profile=profile, speaker_path=speaker_path, tried=tried)
