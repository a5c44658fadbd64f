"""What machine a report came from: CPU, cores, governor, OS, Python, runtime versions, and a speed probe.

Reports from different devices are only comparable when this is recorded; the probe lets `regress` tell a
slower machine (or a busier one) from a slower model.
"""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata
from pathlib import Path

import numpy as np

RUNTIMES = ("edge-pse", "numpy", "ai-edge-litert", "tflite-runtime", "onnxruntime", "executorch", "torch")


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip()
    except OSError:
        return None


def cpu_model() -> str:
    """The CPU's name from /proc/cpuinfo ('model name', or 'Model'/'Hardware' on ARM boards)."""
    info = _read("/proc/cpuinfo") or ""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        for line in info.splitlines():
            if line.split(":")[0].strip() == key:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in RUNTIMES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def speed_probe_us(repeats: int = 200) -> float:
    """Median time (us) of a fixed single-threaded float32 workload (a 256x256 matrix-vector chain) in numpy,
    the same size class as one model hop. Measured with the bench so `regress` can factor out machine speed."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((256, 256)).astype(np.float32) / 16
    x = rng.standard_normal(256).astype(np.float32)
    times = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter_ns()
        y = x
        for _ in range(32):
            y = np.tanh(w @ y)
        times[i] = time.perf_counter_ns() - t0
    return round(float(np.median(times)) / 1e3, 2)


def machine_info(probe: bool = True) -> dict:
    """A JSON-ready description of this machine (fields that cannot be read are None): what every report
    (bench, the device agent's status and probes) says about where it ran. `probe`: run the speed probe
    (~25 ms on a desktop core; the agent's status replies leave it out)."""
    governor = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    max_khz = _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "hostname": platform.node(),
        "cpu_model": cpu_model(),
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "governor": governor,
        "max_freq_mhz": int(max_khz) // 1000 if max_khz and max_khz.isdigit() else None,
        "board": (_read("/proc/device-tree/model") or "").rstrip("\x00") or None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions(),
        "load_avg": [round(x, 2) for x in load] if load else None,
        "speed_probe_us": speed_probe_us() if probe else None,
    }
