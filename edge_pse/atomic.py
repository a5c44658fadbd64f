"""Atomic file output: write to a temporary file beside the target, then rename over it.

A failed or interrupted write leaves the old file (or nothing), never a half-written one. The finished file
gets the mode a plain `open()` would give it (0666 minus the umask), not mkstemp's owner-only 0600: outputs,
checkpoints and reports are meant to be shared. Torch-free: the on-device path uses it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path next to `path`; on a clean exit it replaces `path`, on an error it is removed."""
    path = Path(path)
    remove_stale_parts(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    if not _lock(fd):  # no fcntl (Windows, which also refuses to rename an open file): nothing to hold
        os.close(fd)
        fd = -1
    try:  # with the lock held while we write, remove_stale_parts() of a later run leaves this part alone
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _lock(fd: int) -> bool:
    """An exclusive lock on an open file, without waiting: False when another process holds it. The OS drops it
    when its holder dies, however it dies (SIGKILL, power loss), so a part nobody holds is a dead writer's."""
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): every part counts as held, none is removed
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def remove_stale_parts(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files a killed writer of `path` left beside it (`.NAME.XXXX.part`, which may be tens
    of MB each and are hidden); parts a live writer holds are kept. Returns what was removed."""
    path = Path(path)
    removed = []
    for part in path.parent.glob(f".{glob.escape(path.name)}.*.part"):
        try:
            fd = os.open(part, os.O_RDONLY)
        except OSError:
            continue
        try:
            if _lock(fd):
                with contextlib.suppress(FileNotFoundError):
                    part.unlink()
                    removed.append(part)
        finally:
            os.close(fd)
    return removed


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    write_bytes(path, text.encode("utf-8"))


def hold_lock(path: str | os.PathLike) -> IO[str] | None:
    """Take an exclusive lock on `path` for as long as the returned file stays open (the OS releases it when the
    process dies, so a killed writer leaves no stale lock); the file then holds this process's PID.

    Raises BlockingIOError when another process holds it (its PID is in the file); None where fcntl does not
    exist. Why: two processes writing one folder (a run, a build) overwrite each other's files.
    """
    try:
        import fcntl
    except ImportError:
        return None
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        f.close()
        raise
    f.truncate(0)
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def lock_holder(path: str | os.PathLike) -> str:
    """The PID a lock file names ('?' when unreadable)."""
    try:
        return Path(path).read_text().strip() or "?"
    except OSError:
        return "?"
