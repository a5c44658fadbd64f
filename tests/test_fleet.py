"""Fleet: one bench on several agents at once, reports merged per device; a dead device is reported, not fatal
to the others."""

from __future__ import annotations

import json
import socket

import pytest

from firmware_host import client
from firmware_host.agent import Agent

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from tests.test_run_bundle import make_bundle

TOKEN = b"fleet-test-token"


def test_bench_runs_on_every_device_concurrently_and_merges_per_device(tmp_path) -> None:
    bundle = make_bundle(tmp_path / "tiny-a")
    agents = [Agent(tmp_path / f"pi{i}", TOKEN) for i in range(2)]
    for a in agents:
        a.start()
    try:
        live = [f"127.0.0.1:{a.address[1]}" for a in agents]
        for t in live:
            client.deploy(t, TOKEN, bundle)
        dead_sock = socket.create_server(("127.0.0.1", 0))
        dead = f"127.0.0.1:{dead_sock.getsockname()[1]}"
        dead_sock.close()
        merged = client.remote_bench([*live, dead], TOKEN, tmp_path / "report", backends=["onnx"], hops=300)
    finally:
        for a in agents:
            a.close()
    assert list(merged["devices"]) == [*live, dead]
    for t in live:
        assert merged["devices"][t]["probe"][0]["hops"] == 300
    assert "cannot reach the agent" in merged["devices"][dead]["error"]
    on_disk = json.loads((tmp_path / "report" / "remote_report.json").read_text())
    assert set(on_disk["devices"]) == {*live, dead}
    md = (tmp_path / "report" / "remote_report.md").read_text()
    assert all(f"## {t}" in md for t in (*live, dead)) and "failed: " in md
