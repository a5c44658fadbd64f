"""The agent's bundle store on the device: uploads land in a staging folder, are verified, then activated
atomically by swapping a symlink; the previously active bundle is kept for `--rollback`.

Layout under the agent's root:
    bundles/<id>/      installed bundles (id: a prefix of the manifest's sha256 and the upload's name)
    current -> bundles/<id>, previous -> bundles/<id>   (symlinks, replaced with os.replace: atomic)
    staging/<random>/  uploads in flight (removed on failure and at agent start)
Only the current and previous bundles are kept.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from edge_pse.bundle import MANIFEST, Bundle, sha256_file
from edge_pse.errors import EdgePseError

MAX_FILES = 64
MAX_BUNDLE_BYTES = 512 * 1024 * 1024
_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Upload:
    """One deploy in flight: declared files, bytes received so far and their running sha256."""

    name: str
    staging: Path
    files: list[dict]
    received: list[int] = field(default_factory=list)
    hashes: list = field(default_factory=list)

    def write(self, index: int, offset: int, data: bytes) -> None:
        if not 0 <= index < len(self.files):
            raise EdgePseError(f"chunk for file #{index}, but the upload declared {len(self.files)} files")
        if offset != self.received[index]:
            raise EdgePseError(
                f"chunk at offset {offset} of {self.files[index]['path']}, expected {self.received[index]}"
            )
        if offset + len(data) > self.files[index]["bytes"]:
            raise EdgePseError(f"{self.files[index]['path']}: more bytes than declared ({self.files[index]['bytes']})")
        with open(self.staging / self.files[index]["path"], "ab") as f:
            f.write(data)
        self.received[index] += len(data)
        self.hashes[index].update(data)


def _check_relpath(p: object) -> str:
    if not isinstance(p, str) or not p or len(p) > 255:
        raise EdgePseError(f"bad file path in deploy: {p!r}")
    pp = PurePosixPath(p)
    if pp.is_absolute() or any(part in ("..", ".", "") for part in pp.parts) or "\\" in p:
        raise EdgePseError(f"file path {p!r} must be relative and stay inside the bundle")
    return p


class Store:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        (self.root / "bundles").mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.root / "staging", ignore_errors=True)  # half uploads from a previous run
        (self.root / "staging").mkdir()

    def _link(self, name: str) -> Path | None:
        link = self.root / name
        return (self.root / os.readlink(link)) if link.is_symlink() else None

    @property
    def current(self) -> Path | None:
        return self._link("current")

    @property
    def previous(self) -> Path | None:
        return self._link("previous")

    def active_bundle(self) -> Bundle:
        cur = self.current
        if cur is None:
            raise EdgePseError("no bundle deployed on this device yet (edge-pse deploy --target ... BUNDLE)")
        return Bundle.load(cur)

    def begin(self, name: object, files: object) -> Upload:
        if not isinstance(files, list) or not 0 < len(files) <= MAX_FILES:
            raise EdgePseError(f"a deploy lists 1..{MAX_FILES} files")
        clean, total = [], 0
        for f in files:
            if not isinstance(f, dict):
                raise EdgePseError("each deployed file is {path, bytes, sha256}")
            path = _check_relpath(f.get("path"))
            size, digest = f.get("bytes"), f.get("sha256")
            if not isinstance(size, int) or size < 0 or not isinstance(digest, str) or len(digest) != 64:
                raise EdgePseError(f"{path}: bytes must be a non-negative int and sha256 64 hex digits")
            total += size
            clean.append({"path": path, "bytes": size, "sha256": digest.lower()})
        if total > MAX_BUNDLE_BYTES:
            raise EdgePseError(f"bundle of {total} bytes exceeds the agent's limit of {MAX_BUNDLE_BYTES}")
        if MANIFEST not in {f["path"] for f in clean}:
            raise EdgePseError(f"a deploy must include {MANIFEST}")
        if len({f["path"] for f in clean}) != len(clean):
            raise EdgePseError("duplicate file path in deploy")
        staging = Path(tempfile.mkdtemp(dir=self.root / "staging"))
        for f in clean:
            p = staging / f["path"]
            p.parent.mkdir(parents=True, exist_ok=True)
            p.touch()
        safe = _NAME.sub("-", str(name or "bundle"))[:64].strip("-.") or "bundle"
        return Upload(safe, staging, clean, [0] * len(clean), [hashlib.sha256() for _ in clean])

    def abort(self, up: Upload) -> None:
        shutil.rmtree(up.staging, ignore_errors=True)

    def commit(self, up: Upload) -> Path:
        """Verify every file against the deploy's sha256 and the bundle's own manifest, install, activate."""
        try:
            for f, got, h in zip(up.files, up.received, up.hashes, strict=True):
                if got != f["bytes"]:
                    raise EdgePseError(f"{f['path']}: received {got} of {f['bytes']} bytes")
                if h.hexdigest() != f["sha256"]:
                    raise EdgePseError(f"{f['path']}: sha256 mismatch after upload (corrupted in transit)")
            Bundle.load(up.staging)  # the manifest's own schema and per-file sha256
            bid = f"{sha256_file(up.staging / MANIFEST)[:16]}-{up.name}"
            dest = self.root / "bundles" / bid
            if dest.exists():
                shutil.rmtree(up.staging)
            else:
                os.replace(up.staging, dest)
        except BaseException:
            self.abort(up)
            raise
        if self.current != dest:
            self._activate(dest, self.current)
        return dest

    def rollback(self) -> Path:
        prev, cur = self.previous, self.current
        if prev is None or not prev.is_dir():
            raise EdgePseError("nothing to roll back to: this device has no previous bundle")
        self._activate(prev, cur)
        return prev

    def _swap_link(self, name: str, target: Path | None) -> None:
        link = self.root / name
        if target is None:
            link.unlink(missing_ok=True)
            return
        tmp = self.root / f".{name}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target.relative_to(self.root))
        os.replace(tmp, link)  # atomic: a reader sees the old or the new bundle, never none

    def _activate(self, new: Path, old: Path | None) -> None:
        self._swap_link("current", new)
        self._swap_link("previous", old)
        keep = {new.name, old.name if old else None}
        for d in (self.root / "bundles").iterdir():
            if d.name not in keep:
                shutil.rmtree(d, ignore_errors=True)

    def describe(self) -> dict:
        def info(p: Path | None) -> dict | None:
            if p is None:
                return None
            try:
                b = Bundle.load(p)
            except EdgePseError as e:
                return {"id": p.name, "error": str(e)}
            return {
                "id": p.name,
                "preset": b.manifest.get("preset"),
                "speaker": b.manifest.get("speaker"),
                "hop": b.manifest.get("hop"),
                "sample_rate": b.manifest.get("sample_rate"),
                "files": [f"{f.path} ({f.format}/{f.quantization})" for f in b.files],
            }

        return {"active": info(self.current), "previous": info(self.previous)}
