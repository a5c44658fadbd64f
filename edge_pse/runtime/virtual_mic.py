"""`edge-pse mic`: a virtual microphone in the desktop's sound server that any app can pick.

Works with PulseAudio and with PipeWire (through pipewire-pulse, the default on Raspberry Pi OS since Bookworm):
both speak the PulseAudio protocol and ship its tools. The sound server's own modules make the device: a null
sink the cleaned audio is played into, and a remapped source on its monitor named "edge-pse (NAME)" that apps
list as a microphone. The sound server's own clients carry the audio: `parec` records the real microphone and
`pacat` plays into the null sink, both as raw 16 kHz mono s16le with 10 ms buffers; the model loop between them
is the runtime's own (`runner.stream`). Torch-free.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from edge_pse.errors import EdgePseError
from edge_pse.runtime.frontend import float_to_int16, to_float

TOOLS = ("pactl", "parec", "pacat")
BUFFER_MS = 10  # the capture and playback buffers asked of the server (one hop each)


@dataclass(frozen=True)
class Server:
    """What `pactl info` says: the server's name ("PulseAudio (on PipeWire 0.3.65)", "pulseaudio"), version,
    and the default source (the microphone the virtual mic listens to unless told otherwise)."""

    name: str
    version: str
    default_source: str

    @property
    def kind(self) -> str:
        return "PipeWire" if "PipeWire" in self.name else "PulseAudio"


def _pactl(*args: str, timeout: float = 10.0) -> str:
    try:
        res = subprocess.run(["pactl", *args], capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise EdgePseError(
            "edge-pse mic needs the PulseAudio tools (pactl, parec, pacat): apt-get install pulseaudio-utils "
            "(PipeWire systems serve them through pipewire-pulse)"
        ) from None
    except subprocess.TimeoutExpired:
        raise EdgePseError(f"`pactl {' '.join(args)}` did not answer within {timeout:g} s") from None
    if res.returncode != 0:
        why = (res.stderr.strip() or res.stdout.strip()).splitlines()
        raise EdgePseError(
            f"no sound server answers (`pactl {args[0]}`: {why[-1] if why else 'failed'}): edge-pse mic needs "
            "PipeWire (with pipewire-pulse) or PulseAudio running in this session"
        )
    return res.stdout


def detect() -> Server:
    """The running sound server, or EdgePseError saying there is none (one line)."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise EdgePseError(
            f"edge-pse mic needs the PulseAudio tools ({', '.join(missing)} missing): apt-get install "
            "pulseaudio-utils (PipeWire systems serve them through pipewire-pulse)"
        )
    info = dict(
        (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in _pactl("info").splitlines()) if _
    )
    return Server(info.get("Server Name", "?"), info.get("Server Version", "?"), info.get("Default Source", ""))


def sources() -> list[tuple[str, str]]:
    """(name, description) of every source the server has (microphones, monitors, virtual ones)."""
    out, name = [], None
    for line in _pactl("list", "sources").splitlines():
        line = line.strip()
        if line.startswith("Name:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("Description:") and name is not None:
            out.append((name, line.split(":", 1)[1].strip()))
            name = None
    return out


def _ident(name: str) -> str:
    ident = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_")
    if not ident:
        raise EdgePseError(f"--name {name!r} needs a letter or digit")
    return ident[:40]


class VirtualMic:
    """The null sink and the remapped source, loaded on entry and unloaded on exit (a run killed with -9 leaves
    them: the next run with the same name removes them first)."""

    def __init__(self, name: str, sample_rate: int) -> None:
        ident = _ident(name)
        self.description = f"edge-pse ({name})"
        self.sink = f"edge_pse_{ident}_out"
        self.source = f"edge_pse_{ident}"
        self.rate = sample_rate
        self._modules: list[str] = []

    def _stale(self) -> list[str]:
        """Module ids of this name's sink and source left by a run that could not clean up."""
        mine = {f"sink_name={self.sink}", f"source_name={self.source}"}
        return [
            parts[0]
            for parts in (line.split("\t") for line in _pactl("list", "short", "modules").splitlines())
            if len(parts) >= 3 and mine & set(parts[2].split())
        ]

    def __enter__(self) -> VirtualMic:
        for mod in reversed(self._stale()):
            _pactl("unload-module", mod)
        desc = re.sub(r"[^\w .()-]", "", self.description)  # no quote may end the server's property string
        self._modules.append(
            _pactl(
                "load-module", "module-null-sink", f"sink_name={self.sink}", f"rate={self.rate}", "channels=1",
                "format=s16le", f"sink_properties='device.description=\"{desc} output\"'",
            ).strip()
        )  # fmt: skip
        try:
            self._modules.append(
                _pactl(
                    "load-module", "module-remap-source", f"master={self.sink}.monitor", f"source_name={self.source}",
                    "channels=1", f"source_properties='device.description=\"{desc}\"'",
                ).strip()
            )  # fmt: skip
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        while self._modules:
            with contextlib.suppress(EdgePseError):
                _pactl("unload-module", self._modules.pop())


def _pipe_tool(argv: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen(argv, stderr=subprocess.PIPE, start_new_session=True, **kw)


class ServerDuplex:
    """The HopSource and HopSink of `runner.stream` over the server's own clients: `parec` from the microphone,
    `pacat` into the virtual mic's sink. `behind()` counts whole hops already waiting in parec's pipe."""

    def __init__(self, source: str, sink: str, hop: int, sample_rate: int, duration_s: float | None) -> None:
        fmt = ["--format=s16le", f"--rate={sample_rate}", "--channels=1", f"--latency-msec={BUFFER_MS}", "--raw"]
        self.hop, self._bytes = hop, 2 * hop
        self._limit = None if duration_s is None else int(duration_s * sample_rate / hop)
        self.hops_in = 0
        self.clipped = 0
        self._rec = _pipe_tool(["parec", f"--device={source}", "--client-name=edge-pse mic", *fmt],
                               stdout=subprocess.PIPE)  # fmt: skip
        self._play = _pipe_tool(["pacat", "--playback", f"--device={sink}", "--client-name=edge-pse mic", *fmt],
                                stdin=subprocess.PIPE)  # fmt: skip
        self._in = np.zeros(hop, np.float32)
        self._buf = bytearray(self._bytes)
        self._view = memoryview(self._buf)
        self.stopped = False

    def wait_hop(self) -> bool:
        if self.stopped or (self._limit is not None and self.hops_in >= self._limit):
            return False
        got, fd = 0, self._rec.stdout.fileno()
        while got < self._bytes:
            k = os.readv(fd, [self._view[got:]])
            if k == 0:
                self._check_tools()
                return False
            got += k
        to_float(np.frombuffer(self._buf, dtype="<i2"), self._in)
        self.hops_in += 1
        return True

    def read_hop(self) -> np.ndarray:
        return self._in

    def behind(self) -> int:
        pending = struct.unpack("i", fcntl.ioctl(self._rec.stdout.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
        return pending // self._bytes

    def write_hop(self, hop: np.ndarray) -> None:
        pcm, clipped = float_to_int16(hop)
        self.clipped += clipped
        try:
            self._play.stdin.write(pcm.astype("<i2").tobytes())
            self._play.stdin.flush()
        except BrokenPipeError:
            self._check_tools()
            raise EdgePseError("pacat stopped: the sound server closed the virtual mic's stream") from None

    def _check_tools(self) -> None:
        for tool, proc in (("parec", self._rec), ("pacat", self._play)):
            if proc.poll() not in (None, 0, -signal.SIGTERM):
                why = proc.stderr.read().decode(errors="replace").strip().splitlines()
                raise EdgePseError(f"{tool} failed: {why[-1] if why else f'exit {proc.returncode}'}")

    def close(self) -> None:
        for proc in (self._rec, self._play):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        for proc in (self._rec, self._play):
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def server_latency_ms(client: str = "edge-pse mic") -> dict[str, float]:
    """The server's own latency figures for this program's two streams (`pactl list source-outputs` and
    `sink-inputs`: buffer plus device latency), in ms; empty where it reports none."""
    out = {}
    for kind, key in (("source-outputs", "capture_ms"), ("sink-inputs", "playback_ms")):
        block, total = "", 0.0
        for chunk in _pactl("list", kind).split("\n\n"):
            if f'application.name = "{client}"' in chunk:
                block = chunk
        for m in re.finditer(r"(?:Buffer|Sink|Source) Latency: ([\d.]+) usec", block):
            total += float(m.group(1)) / 1000
        if block:
            out[key] = round(total, 1)
    return out


def run_mic(backend, profile, *, hop: int, sample_rate: int, source: str, name: str, duration_s: float | None,
            tick=None, ready=None) -> dict:  # fmt: skip
    """The real microphone `source` -> backend -> the virtual mic "edge-pse (NAME)" until `duration_s` (or
    Ctrl-C, SIGTERM); returns the stats: per-hop times, deadline misses, the latency the server reports."""
    from edge_pse.runtime.runner import collector_paused, stream
    from edge_pse.runtime.stats import HopStats, rtf

    stats = HopStats(60 * sample_rate // hop, int(profile.deadline_ms * 1e6))
    interrupted = False
    latency: dict[str, float] = {}
    with VirtualMic(name, sample_rate) as mic, _sigterm_as_interrupt():
        duplex = ServerDuplex(source, mic.sink, hop, sample_rate, duration_s)
        if ready is not None:
            ready(mic)
        t0 = time.perf_counter_ns()
        try:
            with collector_paused():
                stream(
                    backend, duplex, duplex, stats, on_miss=profile.on_miss, max_backlog=profile.max_backlog_hops,
                    tick=_with_latency(tick, latency),
                )  # fmt: skip
        except KeyboardInterrupt:
            interrupted = True
        finally:
            if not latency:
                with contextlib.suppress(EdgePseError):
                    latency.update(server_latency_ms())
            duplex.close()
        wall = (time.perf_counter_ns() - t0) / 1e9
    summary = stats.summary()
    model_ms = 2 * hop * 1000 / sample_rate  # the window (two hops) before a hop can leave the model
    summary.update(
        {
            "backend": backend.name,
            "mode": "mic",
            "virtual_mic": mic.description,
            "source": source,
            "sample_rate": sample_rate,
            "hop": hop,
            "audio_s": round(stats.hops * hop / sample_rate, 3),
            "wall_s": round(wall, 3),
            "rtf": rtf(stats.busy_ns(), stats.hops * hop / sample_rate),
            "passed_through": stats.passed_through,
            "skipped": stats.skipped,
            "output_clipped": duplex.clipped,
            "interrupted": interrupted,
            "latency_ms": {"model": model_ms, **latency,
                           "added": round(model_ms + sum(latency.values()), 1) if latency else None},
        }
    )  # fmt: skip
    return summary


def _with_latency(tick, latency: dict):
    """The display tick, and once after ~1 s of audio the server's latency figures (both streams are up)."""
    calls = [0]

    def wrapped(stats) -> None:
        calls[0] += 1
        if calls[0] == 2 and not latency:
            with contextlib.suppress(EdgePseError):
                latency.update(server_latency_ms())
        if tick is not None:
            tick(stats)

    return wrapped


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (systemd stopping the service) ends the run like Ctrl-C: the virtual mic is unloaded."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
