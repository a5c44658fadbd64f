"""Atomic outputs: a failed write leaves the previous file and no temporary behind; a finished one is shareable."""

from __future__ import annotations

import os
import stat

import pytest

from edge_pse.atomic import atomic_path, write_text


def test_finished_file_has_the_umask_mode_not_mkstemps(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.json", "{}\n")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").read_text() == "{}\n"
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path) -> None:
    target = tmp_path / "out.wav"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]
