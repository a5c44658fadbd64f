"""Device profiles (data in devices.toml, user files on top) and the audio devices PortAudio sees."""

from __future__ import annotations

import os
import tomllib
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from edge_pse.errors import EdgePseError

PROFILES_ENV = "EDGE_PSE_PROFILES"
BACKENDS = ("litert", "onnx", "executorch", "torch")
ON_MISS = ("log", "pass-through", "skip")
_FIELDS = {
    "description": str,
    "threads": int,
    "backends": list,
    "ring_hops": int,
    "prefill_hops": int,
    "max_backlog_hops": int,
    "deadline_ms": float,
    "on_miss": str,
}


@dataclass(frozen=True)
class Profile:
    """How to run on one kind of device (see devices.toml for what each field means)."""

    name: str
    description: str
    threads: int
    backends: tuple[str, ...]
    ring_hops: int
    prefill_hops: int
    max_backlog_hops: int
    deadline_ms: float
    on_miss: str

    def to_dict(self) -> dict:
        d = asdict(self)
        d["backends"] = list(self.backends)
        return d


def _read_toml(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise EdgePseError(f"profiles file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise EdgePseError(f"profiles file {path} is not valid TOML: {e}") from None


def load_tables(extra: list[str | os.PathLike] | None = None) -> dict[str, dict]:
    """The built-in tables, then EDGE_PSE_PROFILES files, then `extra` files; later names win."""
    with resources.files("edge_pse.runtime").joinpath("devices.toml").open("rb") as f:
        tables = tomllib.load(f)
    paths = [p for p in os.environ.get(PROFILES_ENV, "").split(os.pathsep) if p]
    for path in [*paths, *(extra or [])]:
        for name, table in _read_toml(Path(path)).items():
            if not isinstance(table, dict):
                raise EdgePseError(f"profiles file {path}: {name!r} must be a table ([{name}])")
            tables[name] = table
    return tables


def _model_string() -> str:
    try:
        return Path("/proc/device-tree/model").read_text(errors="replace").rstrip("\x00\n")
    except OSError:
        return ""


def resolve(name: str, extra: list[str | os.PathLike] | None = None) -> Profile:
    """The profile called `name`, with `auto` and `inherit` followed; EdgePseError if unknown or malformed."""
    tables = load_tables(extra)
    seen: list[str] = []
    while True:
        if name not in tables:
            raise EdgePseError(f"unknown device profile {name!r}; choose from {', '.join(sorted(tables))}")
        if name in seen:
            raise EdgePseError(f"device profiles refer to each other in a loop: {' -> '.join([*seen, name])}")
        seen.append(name)
        auto = tables[name].get("auto")
        if auto is None:
            break
        model = _model_string()
        name = next((p for key, p in auto.items() if key != "default" and key in model), auto.get("default", "host"))
    return _build(name, tables)


def _build(name: str, tables: dict[str, dict], depth: int = 0) -> Profile:
    table = dict(tables[name])
    parent = table.pop("inherit", None)
    if parent is not None:
        if parent not in tables or depth > 8:
            raise EdgePseError(f"device profile {name!r} inherits unknown or looping profile {parent!r}")
        base = _build(parent, tables, depth + 1).to_dict()
        base.pop("name")
        table = {**base, **table}
    unknown = set(table) - set(_FIELDS)
    if unknown:
        raise EdgePseError(f"device profile {name!r}: unknown keys {sorted(unknown)}; known: {sorted(_FIELDS)}")
    missing = set(_FIELDS) - set(table) - {"description"}
    if missing:
        raise EdgePseError(f"device profile {name!r} lacks {sorted(missing)} (or `inherit` a profile that has them)")
    for key, typ in _FIELDS.items():
        value = table.get(key, "")
        if typ is float and isinstance(value, int):
            value = float(value)
        if not isinstance(value, typ) or isinstance(value, bool):
            raise EdgePseError(f"device profile {name!r}: {key} must be {typ.__name__}, got {value!r}")
        table[key] = value
    bad = [b for b in table["backends"] if b not in BACKENDS]
    if bad or not table["backends"]:
        raise EdgePseError(f"device profile {name!r}: backends must be a non-empty list from {BACKENDS}")
    if table["on_miss"] not in ON_MISS:
        raise EdgePseError(f"device profile {name!r}: on_miss must be one of {ON_MISS}")
    if table["threads"] < 1 or table["ring_hops"] < 4 or table["prefill_hops"] < 0 or table["deadline_ms"] <= 0:
        raise EdgePseError(f"device profile {name!r}: threads >= 1, ring_hops >= 4, deadline_ms > 0 please")
    if table["prefill_hops"] + table["max_backlog_hops"] >= table["ring_hops"]:
        raise EdgePseError(f"device profile {name!r}: prefill_hops + max_backlog_hops must be < ring_hops")
    table["backends"] = tuple(table["backends"])
    return Profile(name=name, **table)


def all_profiles(extra: list[str | os.PathLike] | None = None) -> list[tuple[str, str]]:
    """(name, description) of every profile, built-in and user."""
    return [(n, str(t.get("description", ""))) for n, t in load_tables(extra).items()]


def audio_devices() -> list[dict]:
    """Every PortAudio device: index, name, host API, channels, default rate and whether it takes 16 kHz."""
    sd = import_sounddevice()
    apis = sd.query_hostapis()
    out = []
    for i, d in enumerate(sd.query_devices()):
        row = {
            "index": i,
            "name": d["name"],
            "hostapi": apis[d["hostapi"]]["name"],
            "inputs": d["max_input_channels"],
            "outputs": d["max_output_channels"],
            "default_rate": d["default_samplerate"],
            "rates": [],
        }
        for rate in (16000, 22050, 32000, 44100, 48000):
            try:
                if d["max_input_channels"]:
                    sd.check_input_settings(device=i, samplerate=rate, channels=1, dtype="int16")
                else:
                    sd.check_output_settings(device=i, samplerate=rate, channels=1, dtype="int16")
                row["rates"].append(rate)
            except Exception:  # PortAudio says "invalid sample rate" in several ways
                pass
        out.append(row)
    return out


def import_sounddevice():
    """sounddevice, or a clear error saying what to install (it needs the PortAudio C library)."""
    try:
        import sounddevice
    except ImportError:
        raise EdgePseError("live audio needs sounddevice: pip install 'edge-pse[audio]'") from None
    except OSError:
        raise EdgePseError(
            "live audio needs the PortAudio library: apt-get install libportaudio2 (or your OS's portaudio)"
        ) from None
    return sounddevice
