"""The speaker profile file (.spk): one speaker's embedding and what made it. Format: docs/profile.md.

UTF-8 JSON (no pickle, nothing executable), the embedding as base64 of little-endian float32, and a sha256
checksum over the rest of the document so a corrupted or hand-edited file is refused instead of silently
steering the model towards the wrong voice. Written atomically (temp file, then os.replace).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from edge_pse.atomic import write_text
from edge_pse.errors import EdgePseError

FORMAT = "edge-pse-speaker-profile"
SCHEMA = 1
MAX_BYTES = 1 << 20  # a 256-d profile is ~2 KB; refuse to parse anything large


@dataclass(frozen=True)
class SpeakerProfile:
    embedding: np.ndarray  # [dim] float32, L2-normalised
    encoder: str  # e.g. "resemblyzer-dvector": which embedding space
    encoder_version: str  # the encoder weights' release, e.g. resemblyzer "0.1.4"
    encoder_backend: str = "torch"  # what ran it: torch | onnx | litert (same embedding space)
    sample_rate: int = 16_000
    clips: int = 1
    seconds: float = 0.0  # total enrollment audio
    speech_seconds: float = 0.0  # of which voiced (WebRTC VAD)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))

    @property
    def dim(self) -> int:
        return int(self.embedding.size)


def _checksum(doc: dict) -> str:
    body = {k: v for k, v in doc.items() if k != "checksum"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def to_document(profile: SpeakerProfile) -> dict:
    emb = np.asarray(profile.embedding, dtype="<f4").reshape(-1)
    from edge_pse import __version__

    doc = {
        "format": FORMAT,
        "schema": SCHEMA,
        "encoder": {"name": profile.encoder, "version": profile.encoder_version, "backend": profile.encoder_backend},
        "sample_rate": int(profile.sample_rate),
        "embedding_dim": int(emb.size),
        "embedding": base64.b64encode(emb.tobytes()).decode("ascii"),
        "enrollment": {
            "clips": int(profile.clips),
            "seconds": round(float(profile.seconds), 3),
            "speech_seconds": round(float(profile.speech_seconds), 3),
        },
        "created_at": profile.created_at,
        "created_by": f"edge-pse {__version__}",
    }
    doc["checksum"] = _checksum(doc)
    return doc


def save_profile(profile: SpeakerProfile, path: str | Path) -> Path:
    """Write `profile` to `path` atomically; the file appears complete or not at all."""
    emb = np.asarray(profile.embedding, dtype=np.float32).reshape(-1)
    if emb.size == 0 or not np.isfinite(emb).all() or abs(float(np.linalg.norm(emb)) - 1.0) > 1e-3:
        raise EdgePseError("refusing to save a speaker embedding that is empty, not finite or not L2-normalised")
    path = Path(path)
    if not path.parent.is_dir():
        raise EdgePseError(f"output directory does not exist: {path.parent}")
    text = json.dumps(to_document(profile), indent=2) + "\n"
    write_text(path, text)
    return path


def _bad(path: Path, why: str) -> EdgePseError:
    return EdgePseError(f"{path} is not a valid speaker profile: {why}")


def load_profile(
    path: str | Path, expected_encoder: str | None = None, expected_dim: int | None = None
) -> SpeakerProfile:
    """Read and verify a .spk file. With expected_encoder/dim, refuse profiles from another embedding space."""
    path = Path(path)
    if not path.is_file():
        raise EdgePseError(f"speaker profile not found: {path}")
    if path.stat().st_size > MAX_BYTES:
        raise _bad(path, f"larger than {MAX_BYTES} bytes")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(path, f"not UTF-8 JSON ({e})") from e
    except RecursionError:
        raise _bad(path, "JSON nested too deeply") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _bad(path, f"missing format marker {FORMAT!r}")
    schema = doc.get("schema")
    if not isinstance(schema, int) or schema > SCHEMA or schema < 1:
        raise _bad(path, f"schema {schema!r} is not supported by this edge-pse (reads schema {SCHEMA})")
    if doc.get("checksum") != _checksum(doc):
        raise _bad(path, "checksum mismatch (the file was modified or corrupted)")
    try:
        enc, enroll = doc["encoder"], doc["enrollment"]
        dim = int(doc["embedding_dim"])
        raw = base64.b64decode(doc["embedding"], validate=True)
        profile = SpeakerProfile(
            embedding=np.frombuffer(raw, dtype="<f4").astype(np.float32),
            encoder=str(enc["name"]),
            encoder_version=str(enc["version"]),
            encoder_backend=str(enc["backend"]),
            sample_rate=int(doc["sample_rate"]),
            clips=int(enroll["clips"]),
            seconds=float(enroll["seconds"]),
            speech_seconds=float(enroll["speech_seconds"]),
            created_at=str(doc["created_at"]),
        )
    except (KeyError, TypeError, ValueError, OverflowError, binascii.Error) as e:
        raise _bad(path, f"missing or malformed field ({type(e).__name__}: {e})") from e
    if not 1000 <= profile.sample_rate <= 384_000 or profile.clips < 0 or not 0 <= profile.seconds < 1e7:
        raise _bad(path, "sample_rate, clips or seconds out of range")
    norm = float(np.linalg.norm(profile.embedding))
    if profile.dim != dim or not np.isfinite(profile.embedding).all() or not math.isclose(norm, 1.0, abs_tol=1e-3):
        raise _bad(path, f"embedding is not a finite unit vector of {dim} values")
    if expected_encoder is not None and profile.encoder != expected_encoder:
        raise EdgePseError(
            f"{path} was made by the {profile.encoder!r} speaker encoder, but this model expects "
            f"{expected_encoder!r}; enroll again with `edge-pse enroll`"
        )
    if expected_dim is not None and profile.dim != expected_dim:
        raise EdgePseError(f"{path} holds a {profile.dim}-d embedding, but this model expects {expected_dim}-d")
    return profile
