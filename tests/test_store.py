"""The agent's bundle store under concurrency: deployers, a rollbacker and readers on real threads and a real
file system. Activation must be serialized, and a reader must never find `current` missing or its bundle
half-deleted."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from edge_pse.bundle import MANIFEST, PROJECTION, seal_manifest, sha256_file
from edge_pse.errors import EdgePseError
from firmware_host.store import Store

SHIPPED = Path(__file__).resolve().parent.parent / "edge_pse" / "bundles" / "tiny-int8"


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory) -> Path:
    """The shipped tiny bundle cut down to its ONNX file and speaker projection (small, still verified by
    Bundle.load)."""
    out = tmp_path_factory.mktemp("store") / "tiny-onnx"
    out.mkdir()
    m = json.loads((SHIPPED / MANIFEST).read_text())
    m["files"] = [f for f in m["files"] if f["format"] == "onnx"]
    m.pop("reference")
    shutil.copy(SHIPPED / "model.onnx", out / "model.onnx")
    shutil.copy(SHIPPED / PROJECTION, out / PROJECTION)
    (out / MANIFEST).write_text(json.dumps(seal_manifest(m), indent=2))  # edited here, so sealed again
    return out


def deploy(store: Store, bundle: Path, name: str) -> Path:
    files = sorted(p for p in bundle.iterdir() if p.is_file())
    listing = [{"path": p.name, "bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in files]
    up = store.begin(name, listing)
    for i, p in enumerate(files):
        up.write(i, 0, p.read_bytes())
    return store.commit(up)


def test_concurrent_deploys_rollbacks_and_readers_never_break_the_store(small_bundle, tmp_path) -> None:
    store = Store(tmp_path / "agent")
    deploy(store, small_bundle, "seed")
    errors: list[str] = []
    stop = threading.Event()
    reads = [0]

    def deployer(k: int) -> None:
        for i in range(6):
            try:
                deploy(store, small_bundle, f"d{k}-{i % 3}")
            except Exception as e:  # every deploy here is valid: any failure is the store's
                errors.append(f"deploy: {type(e).__name__}: {e}")

    def rollbacker() -> None:
        for _ in range(12):
            try:
                store.rollback()
            except EdgePseError as e:
                if "nothing to roll back" not in str(e):
                    errors.append(f"rollback: {e}")
            except Exception as e:
                errors.append(f"rollback: {type(e).__name__}: {e}")

    def reader() -> None:
        while not stop.is_set():
            if not os.path.lexists(store.root / "current"):
                errors.append("reader: `current` is missing")
            try:
                b = store.active_bundle()
                assert b.files[0].path == "model.onnx"
                reads[0] += 1
            except Exception as e:
                errors.append(f"reader: {type(e).__name__}: {e}")

    workers = [threading.Thread(target=deployer, args=(k,)) for k in range(4)] + [threading.Thread(target=rollbacker)]
    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in readers + workers:
        t.start()
    for t in workers:
        t.join(timeout=120)
    stop.set()
    for t in readers:
        t.join(timeout=30)
    assert not errors, f"{len(errors)} failures, e.g. {sorted(set(errors))[:5]}"
    assert reads[0] > 0
    # the end state is whole: both links resolve, only those two bundles are kept, nothing half-done is left
    cur, prev = store.current, store.previous
    assert cur is not None and cur.is_dir() and prev is not None and prev.is_dir()
    assert {d.name for d in (store.root / "bundles").iterdir()} == {cur.name, prev.name}
    assert not list(store.root.glob(".*.tmp")) and not any((store.root / "staging").iterdir())


def test_rollback_swaps_current_and_previous_back_and_forth(small_bundle, tmp_path) -> None:
    """Two different bundles (their manifests differ), deployed in turn: each rollback makes the other one active,
    as readers see it through `current`, and keeps the one it left as the way back."""
    other = tmp_path / "other"
    shutil.copytree(small_bundle, other)
    m = json.loads((other / MANIFEST).read_text())
    m["notes"] = "the other bundle"
    (other / MANIFEST).write_text(json.dumps(seal_manifest(m), indent=2))
    store = Store(tmp_path / "agent")
    first, second = deploy(store, small_bundle, "first"), deploy(store, other, "second")
    assert (store.current, store.previous) == (second, first)
    source = {first: small_bundle, second: other}
    for active, back in ((first, second), (second, first), (first, second)):
        assert store.rollback() == active
        assert (store.current, store.previous) == (active, back)
        assert (store.root / "current" / MANIFEST).read_bytes() == (source[active] / MANIFEST).read_bytes()
