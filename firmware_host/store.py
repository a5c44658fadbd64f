"""The agent's bundle store on the device: uploads land in a staging folder, are verified, then activated
atomically by swapping a symlink; the previously active bundle is kept for `--rollback`.

Layout under the agent's root:
    bundles/<id>/      installed bundles (id: a prefix of the manifest's sha256 and the upload's name)
    current -> bundles/<id>, previous -> bundles/<id>   (symlinks, replaced with os.replace: atomic)
    staging/<random>/  uploads in flight (removed on failure and at agent start)
Only the current and previous bundles are kept.

Thread-safe: activations (commit, rollback) are serialized, each swaps its links through a temporary name of
its own, and a bundle a reader is using (`using_active`) is not deleted under it: it goes when the last reader
lets go of it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from edge_pse.bundle import MANIFEST, Bundle, sha256_file
from edge_pse.errors import EdgePseError

MAX_FILES = 64
MAX_BUNDLE_BYTES = 512 * 1024 * 1024
STALE_STAGING_S = 24 * 3600.0  # a shared root's staging folder this old belongs to no live deploy
_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Upload:
    """One deploy in flight: declared files, bytes received so far and their running sha256."""

    name: str
    staging: Path
    files: list[dict]
    received: list[int] = field(default_factory=list)
    hashes: list = field(default_factory=list)
    failed: str | None = None  # why the device could not store it (disk full): said at commit
    current_path: str = ""  # the file being written (for that message)

    def write(self, index: int, offset: int, data: bytes) -> None:
        if self.failed is not None:
            return  # the deploy already failed on this device: the rest of its bytes are dropped
        if not 0 <= index < len(self.files):
            raise EdgePseError(f"chunk for file #{index}, but the upload declared {len(self.files)} files")
        if offset != self.received[index]:
            raise EdgePseError(
                f"chunk at offset {offset} of {self.files[index]['path']}, expected {self.received[index]}"
            )
        if offset + len(data) > self.files[index]["bytes"]:
            raise EdgePseError(f"{self.files[index]['path']}: more bytes than declared ({self.files[index]['bytes']})")
        self.current_path = self.files[index]["path"]
        with open(self.staging / self.current_path, "ab") as f:
            f.write(data)
        self.received[index] += len(data)
        self.hashes[index].update(data)


def _check_relpath(p: object) -> str:
    """The normalised form of a deployed file's path (`./a//b` -> `a/b`): relative, inside the bundle, printable."""
    if not isinstance(p, str) or not p or len(p) > 255:
        raise EdgePseError(f"bad file path in deploy: {p!r}")
    if any(ord(c) < 32 or ord(c) == 127 for c in p) or "\\" in p:
        raise EdgePseError(f"file path {p!r} has a control character or a backslash")
    parts = [part for part in p.split("/") if part not in ("", ".")]
    if p.startswith("/") or not parts or ".." in parts:
        raise EdgePseError(f"file path {p!r} must be relative and stay inside the bundle")
    return "/".join(parts)


def _check_tree(paths: list[str]) -> None:
    """No two files may land on one path, nor a file where another needs a folder (`a` beside `a/b`)."""
    if len(set(paths)) != len(paths):
        dup = next(p for p in paths if paths.count(p) > 1)
        raise EdgePseError(f"duplicate file path in deploy: {dup!r} (after normalising)")
    files = set(paths)
    for p in paths:
        parents = PurePosixPath(p).parents
        clash = next((str(d) for d in parents if str(d) in files), None)
        if clash is not None:
            raise EdgePseError(f"deploy lists {clash!r} as a file and as the folder of {p!r}")


class Store:
    def __init__(self, root: str | Path, shared: bool = False) -> None:
        """`shared`: other agent processes use this root too (one per SSH login): keep their staging folders."""
        self.root = Path(root)
        (self.root / "bundles").mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()  # activation and the reader pins, within this process
        self._lock_fd = os.open(self.root / ".store.lock", os.O_CREAT | os.O_RDWR, 0o600)  # across processes
        self._depth = 0
        self._pins: Counter[str] = Counter()  # bundle folder name -> readers using it
        with self._locked():  # an agent per SSH login: others may be deploying into this root right now
            if shared:  # only what no live agent can still be writing: staging folders a day old
                for old in (self.root / "staging").glob("*"):
                    with contextlib.suppress(OSError):
                        if time.time() - old.stat().st_mtime > STALE_STAGING_S:
                            shutil.rmtree(old, ignore_errors=True)
            else:
                shutil.rmtree(self.root / "staging", ignore_errors=True)  # half uploads from a previous run
            (self.root / "staging").mkdir(exist_ok=True)
            for stale in self.root.glob(".*.tmp"):  # link swaps a killed agent left half done
                if stale.is_symlink() and (not shared or time.time() - stale.lstat().st_mtime > 60):
                    stale.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The store's lock: across threads (reentrant) and across agent processes sharing the root (flock)."""
        with self._lock:
            self._depth += 1
            if self._depth == 1:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _link(self, name: str) -> Path | None:
        try:
            return self.root / os.readlink(self.root / name)
        except OSError:  # absent (or not a link): one readlink, no exists-then-read race
            return None

    @property
    def current(self) -> Path | None:
        return self._link("current")

    @property
    def previous(self) -> Path | None:
        return self._link("previous")

    @contextlib.contextmanager
    def _pinned(self, name: str) -> Iterator[Path | None]:
        """The folder `current` or `previous` points at, kept on disk until the block ends even if a deploy or a
        rollback replaces it meanwhile (None when the link does not exist)."""
        with self._locked():
            path = self._link(name)
            if path is not None:
                self._pins[path.name] += 1
        try:
            yield path
        finally:
            if path is not None:
                with self._locked():
                    self._pins[path.name] -= 1
                    if self._pins[path.name] <= 0:
                        del self._pins[path.name]
                        self._prune()

    @contextlib.contextmanager
    def using_active(self) -> Iterator[Bundle]:
        """The active bundle, verified, and kept on disk until the block ends (open its model files inside)."""
        with self._pinned("current") as cur:
            if cur is None:
                raise EdgePseError("no bundle deployed on this device yet (edge-pse deploy --target ... BUNDLE)")
            yield Bundle.load(cur)

    def active_bundle(self) -> Bundle:
        with self.using_active() as bundle:
            return bundle

    def begin(self, name: object, files: object) -> Upload:
        """Check a deploy's file list (everything before touching the disk), then create its staging folder;
        on any failure nothing is left behind."""
        if not isinstance(files, list) or not 0 < len(files) <= MAX_FILES:
            raise EdgePseError(f"a deploy lists 1..{MAX_FILES} files")
        clean, total = [], 0
        for f in files:
            if not isinstance(f, dict):
                raise EdgePseError("each deployed file is {path, bytes, sha256}")
            path = _check_relpath(f.get("path"))
            size, digest = f.get("bytes"), f.get("sha256")
            if (
                not isinstance(size, int)
                or size < 0
                or not isinstance(digest, str)
                or not re.fullmatch(r"[0-9a-fA-F]{64}", digest)
            ):
                raise EdgePseError(f"{path}: bytes must be a non-negative int and sha256 64 hex digits")
            total += size
            clean.append({"path": path, "bytes": size, "sha256": digest.lower()})
        if total > MAX_BUNDLE_BYTES:
            raise EdgePseError(f"bundle of {total} bytes exceeds the agent's limit of {MAX_BUNDLE_BYTES}")
        paths = [f["path"] for f in clean]
        if MANIFEST not in paths:
            raise EdgePseError(f"a deploy must include {MANIFEST}")
        _check_tree(paths)
        safe = _NAME.sub("-", str(name or "bundle"))[:64].strip("-.") or "bundle"
        try:
            staging = Path(tempfile.mkdtemp(dir=self.root / "staging"))
        except OSError as e:
            raise EdgePseError(f"the device cannot stage a deploy: {e.strerror or e}") from None
        up = Upload(safe, staging, clean, [0] * len(clean), [hashlib.sha256() for _ in clean])
        try:
            for f in clean:
                p = staging / f["path"]
                p.parent.mkdir(parents=True, exist_ok=True)
                p.touch(exist_ok=False)
        except OSError as e:
            self.abort(up)
            raise EdgePseError(f"the device cannot stage {f['path']}: {e.strerror or e}") from None
        return up

    def abort(self, up: Upload) -> None:
        shutil.rmtree(up.staging, ignore_errors=True)

    def commit(self, up: Upload, check: Callable[[Path], None] | None = None) -> Path:
        """Verify every file against the deploy's sha256 and the bundle's own manifest, run `check` on the staged
        bundle (the agent loads each model file and runs a hop: a file that passes its digest may still not
        load), then install and activate."""
        try:
            if up.failed is not None:
                raise EdgePseError(f"deploy failed: {up.failed}; the active bundle is unchanged")
            for f, got, h in zip(up.files, up.received, up.hashes, strict=True):
                if got != f["bytes"]:
                    raise EdgePseError(f"{f['path']}: received {got} of {f['bytes']} bytes")
                if h.hexdigest() != f["sha256"]:
                    raise EdgePseError(f"{f['path']}: sha256 mismatch after upload (corrupted in transit)")
            Bundle.load(up.staging)  # the manifest's own schema and per-file sha256
            if check is not None:
                check(up.staging)
            bid = f"{sha256_file(up.staging / MANIFEST)[:16]}-{up.name}"
            dest = self.root / "bundles" / bid
            with self._locked():
                if dest.exists():
                    shutil.rmtree(up.staging)
                else:
                    os.replace(up.staging, dest)
                if self.current != dest:
                    self._activate(dest, self.current)
            return dest
        except OSError as e:
            raise EdgePseError(
                f"deploy failed on the device: {e.strerror or e}; the active bundle is unchanged"
            ) from None
        finally:
            self.abort(up)

    def rollback(self) -> Path:
        with self._locked():
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
        tmp = self.root / f".{name}.{os.getpid()}.{secrets.token_hex(8)}.tmp"  # never shared with another swap
        tmp.symlink_to(target.relative_to(self.root))
        try:
            os.replace(tmp, link)  # atomic: a reader sees the old or the new bundle, never none
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _activate(self, new: Path, old: Path | None) -> None:
        """Point `current` at `new` and `previous` at `old` (caller holds the lock), then prune."""
        self._swap_link("current", new)
        self._swap_link("previous", old)
        self._prune()

    def _prune(self) -> None:
        """Delete installed bundles that are neither current, previous nor in use by a reader (lock held)."""
        keep = {p.name for p in (self.current, self.previous) if p is not None} | set(self._pins)
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
                "speaker": {
                    "encoder": b.spec.speaker_encoder,
                    "dim": b.spec.speaker_dim,
                    "encoder_version": b.spec.speaker_encoder_version,
                },
                "hop": b.spec.hop,
                "sample_rate": b.spec.sample_rate,
                "lag_hops": b.spec.lag_hops,
                "files": [f"{f.path} ({f.format}/{f.quantization})" for f in b.files],
            }

        with self._pinned("current") as cur, self._pinned("previous") as prev:
            return {"active": info(cur), "previous": info(prev)}
