"""SSH as the device link's transport: `pi@host` or `ssh://pi@host[:port]` runs `edge-pse agent --stdio` on the
device through the system's OpenSSH client and speaks the same frames over its stdin/stdout.

OpenSSH then does what the token listener does by hand: it authenticates both ends (keys, known_hosts),
encrypts the audio, and limits connections (sshd's MaxStartups). The frames keep their sequence numbers and
MACs, keyed with `SSH_LINK_TOKEN`, a constant that authenticates nothing: over SSH, SSH is the authentication.
The host side is a socket pair pumped to and from the ssh process, so `client.Link` reads and writes a socket
as it does over TCP. Environment:

- `EDGE_PSE_SSH`: the ssh command and options (default `ssh`), e.g. `ssh -i ~/.ssh/pi -F ~/.ssh/config`.
- `EDGE_PSE_REMOTE_AGENT`: the command run on the device (default `edge-pse agent --stdio`), e.g.
  `~/edge-pse/.venv/bin/edge-pse agent --stdio` when the device's edge-pse is not on the login PATH.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import threading

from edge_pse.errors import EdgePseError

SSH_LINK_TOKEN = b"edge-pse over ssh: ssh authenticates and encrypts this link"
DEFAULT_REMOTE_AGENT = "edge-pse agent --stdio"
_TARGET = re.compile(
    r"(?:ssh://)?(?P<user>[A-Za-z0-9._-]+)@(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(?P<port>\d+))?"
)


def is_ssh_target(target: str) -> bool:
    """`user@host`, `user@host:port` or `ssh://user@host[:port]` (a TCP target is `host:port`, without a user)."""
    return target.startswith("ssh://") or "@" in target


def ssh_command(target: str) -> list[str]:
    """The argv that runs the device's agent on its stdin/stdout; EdgePseError for a malformed target."""
    m = _TARGET.fullmatch(target.strip())
    if m is None:
        raise EdgePseError(f"bad SSH target {target!r}: expected USER@HOST, USER@HOST:PORT or ssh://USER@HOST[:PORT]")
    ssh = shlex.split(os.environ.get("EDGE_PSE_SSH", "ssh"))
    remote = os.environ.get("EDGE_PSE_REMOTE_AGENT", DEFAULT_REMOTE_AGENT)
    port = ["-p", m["port"]] if m["port"] else []
    host = m["host"].strip("[]")
    # -T: no terminal (a byte stream); BatchMode: fail, never ask for a password on a terminal we do not have
    return [*ssh, "-T", "-o", "BatchMode=yes", *port, "--", f"{m['user']}@{host}", remote]


class SshPipe:
    """One ssh process running the device's agent, seen as a connected socket (`sock`)."""

    def __init__(self, target: str, timeout: float) -> None:
        argv = ssh_command(target)
        try:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0
            )
        except OSError as e:
            why = e.strerror or e
            raise EdgePseError(f"cannot run {argv[0]!r} for {target}: {why} (is OpenSSH installed?)") from None
        self.sock, self._far = socket.socketpair()
        self.sock.settimeout(timeout)
        self._stderr = bytearray()
        self._threads = [
            threading.Thread(target=self._to_ssh, daemon=True),
            threading.Thread(target=self._from_ssh, daemon=True),
            threading.Thread(target=self._collect_stderr, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _to_ssh(self) -> None:
        try:
            while data := self._far.recv(1 << 16):
                self.proc.stdin.write(data)
        except OSError:
            pass
        finally:
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def _from_ssh(self) -> None:
        try:
            while data := self.proc.stdout.read(1 << 16):
                self._far.sendall(data)
        except OSError:
            pass
        finally:
            try:
                self._far.shutdown(socket.SHUT_WR)  # the link's reader sees the end
            except OSError:
                pass

    def _collect_stderr(self) -> None:
        while data := self.proc.stderr.read(4096):
            if len(self._stderr) < 64 * 1024:
                self._stderr += data

    def reason(self) -> str:
        """What ssh (or the remote agent) said on stderr, once it has ended: why a link failed."""
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return ""
        self._threads[2].join(timeout=1)
        lines = [x for x in self._stderr.decode(errors="replace").splitlines() if x.strip()]
        return "; ".join(lines[-3:])

    def close(self) -> None:
        self.sock.close()
        try:
            self.proc.wait(timeout=3)  # the agent ends when its stdin does
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._far.close()
