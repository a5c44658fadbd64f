"""SSH as the device link's transport, against real OpenSSH: two sshd "devices" on loopback (each started here
with its own host key, an authorized key and a ForceCommand that runs `edge-pse agent --stdio` on its own
root), reached as USER@127.0.0.1:PORT through the system's ssh client. No token anywhere: SSH authenticates."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge_pse import demo
from edge_pse.errors import EdgePseError

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
pytestmark = pytest.mark.skipif(
    SSHD is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None,
    reason="needs OpenSSH (apt-get install openssh-server; the README's install has it)",
)
pytest.importorskip("torch")  # the fixture bundle is exported here with the project's exporter
pytest.importorskip("onnxruntime")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


class Device:
    """One sshd on 127.0.0.1:port whose only command is the agent on `root`."""

    def __init__(self, home: Path, name: str, client_key: str) -> None:
        self.root = home / name / "agent"
        self.port = _free_port()
        d = home / name
        d.mkdir(parents=True)
        self.host_key = _keygen(d / "host_key")
        (d / "authorized_keys").write_text(client_key + "\n")
        agent = f"{sys.executable} -m edge_pse agent --stdio --root {self.root}"
        (d / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\n"
            f"AuthorizedKeysFile {d / 'authorized_keys'}\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
            f"PidFile {d / 'sshd.pid'}\nLogLevel ERROR\nForceCommand {agent}\n"
            f"SetEnv PYTHONPATH={os.environ.get('PYTHONPATH', '')}\n"
        )
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"sshd did not start: {self.proc.stderr.read().decode()[-500:]}") from None
                time.sleep(0.05)
        self.target = f"{getpass.getuser()}@127.0.0.1:{self.port}"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def devices(tmp_path_factory):
    home = tmp_path_factory.mktemp("ssh")
    client_key = _keygen(home / "id")
    devs = [Device(home, f"pi{k}", client_key) for k in range(2)]
    (home / "known_hosts").write_text("".join(f"[127.0.0.1]:{d.port} {d.host_key}\n" for d in devs))
    (home / "ssh_config").write_text(
        f"Host *\n  IdentityFile {home / 'id'}\n  IdentitiesOnly yes\n  UserKnownHostsFile {home / 'known_hosts'}\n"
        "  StrictHostKeyChecking yes\n  LogLevel ERROR\n"
    )
    env = {"EDGE_PSE_SSH": f"ssh -F {home / 'ssh_config'}", "EDGE_PSE_TOKEN": ""}
    yield devs, env, home
    for d in devs:
        d.close()


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> tuple[Path, Path]:
    from tests.test_run_bundle import make_bundle

    root = tmp_path_factory.mktemp("ssh-bundles")
    return make_bundle(root / "tiny-a", seed=0), make_bundle(root / "tiny-b", seed=1)


def cli(*args, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge_pse", *map(str, args)],
        capture_output=True, text=True, timeout=300, check=False, env={**os.environ, **env},
    )  # fmt: skip


def test_deploy_run_rollback_and_a_fleet_deploy_over_ssh(devices, bundles, tmp_path) -> None:
    devs, env, _ = devices
    a, b = bundles
    fleet = ",".join(d.target for d in devs)
    res = cli("deploy", "--target", fleet, a, "--json", env=env)  # no token: both targets are SSH
    assert res.returncode == 0, res.stderr[-2000:]
    rows = json.loads(res.stdout)
    assert all(r["ok"] for r in rows.values() if isinstance(r, dict)), rows
    for d in devs:  # each device's own root got the bundle
        assert (d.root / "current" / "manifest.json").read_bytes() == (a / "manifest.json").read_bytes()

    # a remote run through the first device equals a local run of the same bundle, sample for sample
    remote, local = tmp_path / "remote.wav", tmp_path / "local.wav"
    res = cli("run", "--target", devs[0].target, "--input", demo.path(demo.MIXTURE), "--output", remote,
              "--backend", "onnx", env=env)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    res = cli("run", "--model", a, "--input", demo.path(demo.MIXTURE), "--output", local, "--backend", "onnx", env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    x, y = sf.read(remote, dtype="int16")[0], sf.read(local, dtype="int16")[0]
    assert x.shape == y.shape and np.array_equal(x, y) and np.any(x != 0)

    # a remote bench of both devices, merged per device
    res = cli("bench", "--target", fleet, "--backends", "onnx", "--hops", "200", "--output", tmp_path / "rep", env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    merged = json.loads((tmp_path / "rep" / "remote_report.json").read_text())["devices"]
    assert set(merged) == {d.target for d in devs}
    assert all(r["probe"][0]["per_hop_us"]["p50"] > 0 for r in merged.values())

    # deploy another bundle to one device, then roll it back
    res = cli("deploy", "--target", devs[0].target, b, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (devs[0].root / "current" / "manifest.json").read_bytes() == (b / "manifest.json").read_bytes()
    res = cli("deploy", "--target", devs[0].target, "--rollback", env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (devs[0].root / "current" / "manifest.json").read_bytes() == (a / "manifest.json").read_bytes()


def test_an_unknown_host_key_or_key_is_refused_with_what_ssh_said(devices, tmp_path) -> None:
    """SSH's own checks do the work: a device whose host key is not in known_hosts is refused, and the error
    carries ssh's reason (not a bare 'connection closed')."""
    from firmware_host import client

    devs, env, home = devices
    (tmp_path / "known_hosts").write_text("")
    config = (home / "ssh_config").read_text().replace(str(home / "known_hosts"), str(tmp_path / "known_hosts"))
    (tmp_path / "ssh_config").write_text(config)
    os.environ["EDGE_PSE_SSH"] = f"ssh -F {tmp_path / 'ssh_config'}"
    try:
        with pytest.raises(EdgePseError, match="Host key verification failed"):
            client.status(devs[0].target, b"")
    finally:
        del os.environ["EDGE_PSE_SSH"]
    res = cli("run", "--target", "not a target@@", "--output", tmp_path / "o.wav", env=env)
    assert res.returncode == 2 and "bad SSH target" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "o.wav").exists()
