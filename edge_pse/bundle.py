"""The artifact bundle: the contract between export and the device runtime (docs/bundle.md).

A bundle is a folder with `manifest.json`, the model files it lists, the float weights and speaker projection
it names, and `report.md`. The runtime trusts
nothing the manifest does not describe: `Bundle.load` checks the schema (types, ranges and the consistency of
the numbers the runtime uses: hop, rate, speaker, tensor shapes, int8 scales), the manifest's own digest
(`manifest_sha256`, mandatory) and the sha256 of every listed file, and keeps every path inside the
bundle. Torch-free on purpose: this is what a Raspberry Pi reads.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from edge_pse.errors import EdgePseError

SCHEMA = "edge-pse-bundle"
# 3: the step may take a projected speaker (speaker.projection, applied once per speaker by the runtime);
# 2: the step's state is one packed tensor, its parts in io.layout (1: a tensor per part)
SCHEMA_VERSION = 3
MANIFEST = "manifest.json"
PROJECTION = "speaker_projection.npz"  # float32 weight [P, D] and bias [P]: the step's spk = weight @ embedding + bias
FORMATS = ("pte", "tflite", "onnx")
QUANTIZATIONS = ("fp32", "int8-ptq", "int8-qat")
MODES = {"ptq": "int8-ptq", "qat": "int8-qat", "fp32": "fp32"}  # export --mode -> the files' quantization
_REQUIRED = ("schema", "schema_version", "preset", "config", "sample_rate", "hop", "speaker", "io", "files")
DIGEST_KEY = "manifest_sha256"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
SAMPLE_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
MAX_DIM = 1 << 16  # any one tensor dimension, hop or speaker size
# tensor dtypes a model file may declare; the integer ones marked True carry a scale and zero point (int8 I/O)
DTYPES = {
    "float32": False,
    "float16": False,
    "int8": True,
    "uint8": True,
    "int16": True,
    "int32": False,
    "int64": False,
}
_ZP_RANGE = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}
_HEX64 = re.compile(r"[0-9a-f]{64}")


def manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON without its own digest field: covers every number in it (the
    per-file sha256 list covers only the model files)."""
    body = {k: v for k, v in manifest.items() if k != DIGEST_KEY}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def seal_manifest(manifest: dict) -> dict:
    """`manifest` with its digest set (call last, after every other field is final)."""
    return {**{k: v for k, v in manifest.items() if k != DIGEST_KEY}, DIGEST_KEY: manifest_digest(manifest)}


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class TensorIO:
    """One model-file input or output as the runtime sees it; int8 tensors carry their scale/zero point."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    scale: float | None = None
    zero_point: int | None = None

    @property
    def quantized(self) -> bool:
        return self.scale is not None

    @classmethod
    def from_dict(cls, d: dict) -> TensorIO:
        return cls(d["name"], d["dtype"], tuple(d["shape"]), d.get("scale"), d.get("zero_point"))

    def to_dict(self) -> dict:
        d = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.scale is not None:
            d["scale"], d["zero_point"] = float(self.scale), int(self.zero_point or 0)
        return d


@dataclass(frozen=True)
class FileIO:
    """A model file's actual inputs and outputs, in call order (hop, spk, states... / out, states...)."""

    inputs: tuple[TensorIO, ...]
    outputs: tuple[TensorIO, ...]

    @classmethod
    def from_dict(cls, d: dict) -> FileIO:
        return cls(tuple(map(TensorIO.from_dict, d["inputs"])), tuple(map(TensorIO.from_dict, d["outputs"])))

    def to_dict(self) -> dict:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}


@dataclass(frozen=True)
class FileEntry:
    """One model file of the bundle (path is relative to the bundle folder)."""

    path: str
    format: str
    quantization: str
    sha256: str
    bytes: int
    io: FileIO = field(repr=False)

    @classmethod
    def from_dict(cls, d: dict) -> FileEntry:
        return cls(d["path"], d["format"], d["quantization"], d["sha256"], int(d["bytes"]), FileIO.from_dict(d["io"]))

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "format": self.format,
            "quantization": self.quantization,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "io": self.io.to_dict(),
        }


@dataclass(frozen=True)
class StreamSpec:
    """What a stream of this bundle is, read once from the checked manifest: every consumer (runner, files,
    live audio, mic, bench, agent, cost model) takes its numbers from here, not from manifest keys."""

    sample_rate: int
    hop: int  # samples per model call
    lag_hops: int  # whole hops the output lags the input (the step emits a hop one hop late)
    speaker_dim: int  # the enrollment embedding's size
    speaker_input_dim: int  # what the model files take: the projection's size (schema 3) or speaker_dim
    speaker_encoder: str  # which encoder's embeddings the profiles must hold
    speaker_encoder_version: str
    frame_level_dbfs: float | None  # per-frame level normalisation inside the graph (None: none)
    state_layout: tuple[tuple[str, int, int], ...]  # (name, offset, size) of the packed state's parts
    projected: bool  # the speaker's Linears run once per speaker, in the runtime (schema 3)

    @property
    def state_size(self) -> int:
        return sum(size for _, _, size in self.state_layout)

    @property
    def hop_s(self) -> float:
        return self.hop / self.sample_rate

    @classmethod
    def from_manifest(cls, m: dict) -> StreamSpec:
        spk, cfg = m["speaker"], m["config"]
        proj = spk.get("projection")
        lag = m["lag_hops"] if "lag_hops" in m else config_lag_hops(cfg)  # bundles before the field
        return cls(
            sample_rate=int(m["sample_rate"]),
            hop=int(m["hop"]),
            lag_hops=int(lag),
            speaker_dim=int(spk["dim"]),
            speaker_input_dim=int(proj["dim"]) if proj else int(spk["dim"]),
            speaker_encoder=str(spk["encoder"]),
            speaker_encoder_version=str(spk.get("encoder_version", "")),
            frame_level_dbfs=cfg.get("frame_level_dbfs"),
            state_layout=tuple((p["name"], int(p["offset"]), int(p["size"])) for p in m["io"]["layout"]),
            projected=proj is not None,
        )


@dataclass
class Bundle:
    path: Path
    manifest: dict
    files: list[FileEntry]
    # schema 3: (weight [P, D], bias [P]) from speaker_projection.npz, checked at load
    projection: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    spec: StreamSpec = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.spec = StreamSpec.from_manifest(self.manifest)

    @classmethod
    def load(cls, path: str | Path) -> Bundle:
        """Read and verify a bundle: schema, digest, every listed file present (inside the folder) with a
        matching sha256."""
        path = Path(path)
        if not path.is_dir():
            raise EdgePseError(f"bundle {path} not found (expected a folder with {MANIFEST})")
        mpath = path / MANIFEST
        if not mpath.is_file():
            raise EdgePseError(f"{path} is not a bundle: no {MANIFEST}")
        try:
            if mpath.stat().st_size > MAX_MANIFEST_BYTES:
                raise EdgePseError(f"{mpath}: larger than {MAX_MANIFEST_BYTES} bytes, not a manifest")
            manifest = json.loads(mpath.read_text(encoding="utf-8"), parse_constant=_no_constant)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise EdgePseError(f"cannot read {mpath}: {e}") from None
        except RecursionError:
            raise EdgePseError(f"cannot read {mpath}: JSON nested too deeply") from None
        files = validate_manifest(manifest, mpath)
        root = path.resolve()
        # the float weights serve the torch reference backend only: a device wheel leaves them out
        optional = {manifest["reference"]["path"]} if manifest.get("reference") else set()
        for entry in [*files, *_extra_files(manifest)]:
            fpath = path / entry.path
            if not fpath.resolve().is_relative_to(root):  # a symlink inside the folder pointing out of it
                raise EdgePseError(f"bundle {path}: {entry.path} leads outside the bundle folder")
            if not fpath.is_file() and entry.path in optional and not fpath.is_symlink():
                continue
            if not fpath.is_file():
                raise EdgePseError(f"bundle {path}: listed file {entry.path} is missing")
            if sha256_file(fpath) != entry.sha256:
                raise EdgePseError(
                    f"bundle {path}: {entry.path} does not match its sha256 in {MANIFEST} (modified or corrupt); "
                    "re-export the bundle"
                )
        return cls(path, manifest, files, _read_projection(path, manifest))

    def file(self, fmt: str, quantization: str | None = None) -> FileEntry:
        """The bundle's file of format `fmt` (int8 preferred over fp32 when `quantization` is not given)."""
        matches = [
            f for f in self.files if f.format == fmt and (quantization is None or f.quantization == quantization)
        ]
        if not matches:
            have = ", ".join(f"{f.format}/{f.quantization}" for f in self.files) or "none"
            want = fmt if quantization is None else f"{fmt}/{quantization}"
            raise EdgePseError(f"bundle {self.path} has no {want} file (it has: {have})")
        return sorted(matches, key=lambda f: f.quantization == "fp32")[0]

    def reference_weights(self) -> Path | None:
        """The float weights file for the PyTorch reference backend, if the bundle carries one (a bundle from the
        device wheel lists it but leaves it out)."""
        ref = self.manifest.get("reference")
        return self.path / ref["path"] if ref and (self.path / ref["path"]).is_file() else None

    @property
    def tolerance(self) -> dict:
        return self.manifest.get("tolerance", {})

    def speaker_projection(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(weight [P, D], bias [P]) that turn an embedding into the model files' speaker input, or None when
        they take the embedding itself (schema 2 bundles)."""
        return self.projection


def _read_projection(path: Path, manifest: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """The speaker projection the manifest lists, read with numpy alone (no pickle) and checked: a bundle whose
    projection cannot be used is refused at load, before a store activates it or a stream needs it."""
    proj = manifest["speaker"].get("projection")
    if proj is None:
        return None
    where = f"bundle {path}: {proj['path']}"
    dim, emb = proj["dim"], manifest["speaker"]["dim"]
    _check_npz_members(path / proj["path"], {"weight": (dim, emb), "bias": (dim,)}, where)
    try:
        with np.load(path / proj["path"], allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz archive")
            weight, bias = z["weight"], z["bias"]
    except (OSError, KeyError, ValueError, TypeError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise EdgePseError(f"{where}: cannot read the speaker projection ({e})") from None
    ok = weight.dtype == np.float32 and bias.dtype == np.float32
    if not ok or weight.shape != (dim, emb) or bias.shape != (dim,):
        raise EdgePseError(
            f"{where} must hold float32 weight [{dim}, {emb}] and bias [{dim}], got {weight.dtype} "
            f"{list(weight.shape)} and {bias.dtype} {list(bias.shape)}"
        )
    if not (np.all(np.isfinite(weight)) and np.all(np.isfinite(bias))):
        raise EdgePseError(f"{where} holds non-finite numbers")
    return weight, bias


def _check_npz_members(npz: Path, shapes: dict[str, tuple[int, ...]], where: str) -> None:
    """Each array's declared shape and dtype (its .npy header) and its uncompressed size, checked against what the
    manifest says before any array is read: a 1.5 MB archive may declare a 20000 x 20000 array (1.6 GB)."""
    want = " and ".join(f"{name} {list(shape)}" for name, shape in shapes.items())
    try:
        with zipfile.ZipFile(npz) as z:
            for name, shape in shapes.items():
                info = z.getinfo(f"{name}.npy")
                with z.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    header = np.lib.format.read_array_header_1_0 if version == (1, 0) else None
                    declared, _, dtype = (header or np.lib.format.read_array_header_2_0)(f)
                if declared != shape or dtype != np.float32 or info.file_size > 4 * math.prod(shape) + 4096:
                    raise EdgePseError(
                        f"{where} must hold float32 {want}, got {dtype} {list(declared)} for {name} "
                        f"({info.file_size} bytes unpacked)"
                    )
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise EdgePseError(f"{where}: cannot read the speaker projection ({e})") from None


@dataclass(frozen=True)
class _Extra:
    path: str
    sha256: str


def _extra_files(manifest: dict) -> list[_Extra]:
    """The files besides the model files whose digests the manifest holds: float weights, speaker projection."""
    extra = [manifest.get("reference"), manifest["speaker"].get("projection")]
    return [_Extra(e["path"], e["sha256"]) for e in extra if e]


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number a manifest may hold")


def _inside(p: object) -> bool:
    """A relative POSIX path that stays in the bundle folder (no '..', no absolute path, no drive, no NUL)."""
    if not isinstance(p, str) or not p or len(p) > 255 or "\\" in p or any(ord(c) < 32 for c in p):
        return False
    pp = PurePosixPath(p)
    return not pp.is_absolute() and ".." not in pp.parts and ":" not in pp.parts[0]


def _int(v: object, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _check_tensor(t: object, where: str) -> list[int]:
    """One tensor spec: name, dtype, positive shape; int8-like tensors carry a finite positive scale and a zero
    point their dtype can hold, float ones carry neither. Returns the shape."""
    if not isinstance(t, dict) or not isinstance(t.get("name"), str) or not t["name"]:
        raise EdgePseError(f"{where}: must be an object with a name")
    dtype = t.get("dtype")
    if dtype not in DTYPES:
        raise EdgePseError(f"{where} ({t['name']}): dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    shape = t.get("shape")
    if not isinstance(shape, list) or not 1 <= len(shape) <= 4 or not all(_int(d, 1, MAX_DIM) for d in shape):
        raise EdgePseError(f"{where} ({t['name']}): shape {shape!r} must be 1-4 positive integer dimensions")
    scale, zp = t.get("scale"), t.get("zero_point")
    if DTYPES[dtype]:
        lo, hi = _ZP_RANGE[dtype]
        if not _number(scale) or not 0 < scale < 1e6:
            raise EdgePseError(f"{where} ({t['name']}): {dtype} needs a finite positive scale, got {scale!r}")
        if not _int(zp, lo, hi):
            raise EdgePseError(f"{where} ({t['name']}): zero_point {zp!r} does not fit {dtype}")
    elif scale is not None or zp is not None:
        raise EdgePseError(f"{where} ({t['name']}): a {dtype} tensor has no scale or zero point")
    return shape


def _check_tensors(ts: object, where: str) -> list[list[int]]:
    if not isinstance(ts, list) or not ts or len(ts) > 256:
        raise EdgePseError(f"{where}: must be a non-empty list of tensors")
    return [_check_tensor(t, f"{where}[{i}]") for i, t in enumerate(ts)]


def _check_numbers(manifest: dict, where: str | Path) -> tuple[int, int]:
    """The numbers the runtime acts on: they must be what they claim and agree with each other."""
    hop, rate, cfg, spk = manifest["hop"], manifest["sample_rate"], manifest["config"], manifest["speaker"]
    if not _int(hop, 1, MAX_DIM):
        raise EdgePseError(f"{where}: hop {hop!r} must be a positive integer")
    if not _int(rate, 1, 10**6) or rate not in SAMPLE_RATES:
        raise EdgePseError(f"{where}: sample_rate {rate!r} must be one of {SAMPLE_RATES}")
    if not isinstance(cfg, dict):
        raise EdgePseError(f"{where}: 'config' must be an object")
    for key, want in (("hop", hop), ("sample_rate", rate)):
        if key in cfg and cfg[key] != want:
            raise EdgePseError(f"{where}: config.{key} {cfg[key]!r} disagrees with {key} {want!r}")
    if not isinstance(spk, dict) or not _int(spk.get("dim"), 1, MAX_DIM):
        raise EdgePseError(f"{where}: 'speaker' must be an object with an integer dim")
    if not isinstance(spk.get("encoder"), str) or not spk["encoder"]:
        raise EdgePseError(f"{where}: speaker.encoder must name the speaker encoder")
    if "spk_dim" in cfg and cfg["spk_dim"] != spk["dim"]:
        raise EdgePseError(f"{where}: config.spk_dim {cfg['spk_dim']!r} disagrees with speaker.dim {spk['dim']!r}")
    proj = spk.get("projection")
    if proj is not None:  # the model files take the projection's output, not the embedding
        ok = isinstance(proj, dict) and _inside(proj.get("path")) and _int(proj.get("dim"), 1, MAX_DIM)
        if not ok or not isinstance(proj.get("sha256"), str) or not _HEX64.fullmatch(proj["sha256"]):
            raise EdgePseError(
                f"{where}: speaker.projection needs a path inside the bundle, a sha256 (64 lower-case hex digits) "
                "and an integer dim"
            )
        if manifest["schema_version"] < 3:
            raise EdgePseError(f"{where}: speaker.projection needs schema_version 3")
        want = _projected_dim(cfg)
        if want is not None and proj["dim"] != want:
            raise EdgePseError(
                f"{where}: speaker.projection.dim {proj['dim']} does not fit the config (width x (1 + blocks x the "
                f"conditioning's speaker Linears) = {want})"
            )
    for key in ("tolerance", "costs"):
        block = manifest.get(key)
        if block is not None and (not isinstance(block, dict) or not all(_number(v) for v in block.values())):
            raise EdgePseError(f"{where}: '{key}' must map names to finite numbers")
    return hop, spk["dim"] if proj is None else proj["dim"]


def _projected_dim(cfg: dict) -> int | None:
    """The projected speaker input's size the config implies (model.step.E3NetStep), None if it cannot tell."""
    from edge_pse.model.costs import ADAPTATION_LINEARS

    width, blocks = cfg.get("width"), cfg.get("n_blocks")
    if not (_int(width, 1, MAX_DIM) and _int(blocks, 0, MAX_DIM)):
        return None
    return width * (1 + blocks * ADAPTATION_LINEARS.get(str(cfg.get("conditioning", "concat")), 0))


def _check_file_io(io: object, where: str, hop: int, dim: int, states: list[list[int]]) -> None:
    """A model file's tensors in call order: hop, spk, states... in; out, new states... out."""
    if not isinstance(io, dict):
        raise EdgePseError(f"{where}.io must be an object")
    ins, outs = (
        _check_tensors(io.get("inputs"), f"{where}.io.inputs"),
        _check_tensors(io.get("outputs"), f"{where}.io.outputs"),
    )
    if len(ins) != 2 + len(states) or len(outs) != 1 + len(states):
        raise EdgePseError(
            f"{where}.io: {len(ins)} inputs and {len(outs)} outputs, expected {2 + len(states)} and "
            f"{1 + len(states)} (hop, spk and {len(states)} states in; out and the states out)"
        )
    if ins[0] != [1, hop] or outs[0] != [1, hop] or ins[1] != [1, dim]:
        raise EdgePseError(
            f"{where}.io: hop/out must be [1, {hop}] and spk [1, {dim}], got {ins[0]}, {outs[0]}, {ins[1]}"
        )
    for k, shape in enumerate(states):
        if ins[2 + k] != shape or outs[1 + k] != shape:
            raise EdgePseError(
                f"{where}.io: state {k} has shape {ins[2 + k]} in, {outs[1 + k]} out; io.states says {shape}"
            )


def _check_layout(layout: object, states: list[list[int]], where: str) -> None:
    """io.layout: the packed state's parts, contiguous from offset 0, filling the one state tensor."""
    if len(states) != 1:
        raise EdgePseError(f"{where}: io.layout describes one packed state, but io.states has {len(states)}")
    if not isinstance(layout, list) or not layout or len(layout) > 256:
        raise EdgePseError(f"{where}: io.layout must be a non-empty list of parts")
    pos = 0
    for i, part in enumerate(layout):
        ok = isinstance(part, dict) and isinstance(part.get("name"), str) and part["name"]
        if not ok or not _int(part.get("offset"), 0, MAX_DIM) or not _int(part.get("size"), 1, MAX_DIM):
            raise EdgePseError(f"{where}: io.layout[{i}] needs a name, an offset and a positive size")
        if part["offset"] != pos:
            raise EdgePseError(f"{where}: io.layout[{i}] ({part['name']}) starts at {part['offset']}, expected {pos}")
        pos += part["size"]
    if pos != states[0][-1]:
        raise EdgePseError(f"{where}: io.layout covers {pos} values of a state of {states[0][-1]}")


def config_lag_hops(cfg: dict) -> int:
    """Whole hops the step's output lags its input, from the config (E3NetConfig.output_delay)."""
    from edge_pse.model.config import E3NetConfig

    c = E3NetConfig.from_dict(cfg)
    return c.output_delay // c.hop


def _check_config_layout(cfg: dict, layout: list[dict], where: str) -> int:
    """The state the config implies (model.config.state_spec) is the one io.layout describes: with the backends'
    check of the file's own shapes against io, a config edited to another size is refused. Returns the config's
    output lag in hops."""
    from edge_pse.model.config import E3NetConfig, state_spec

    try:
        spec = state_spec(E3NetConfig.from_dict(cfg))
    except (TypeError, ValueError) as e:
        raise EdgePseError(f"{where}: 'config' is not an E3Net config ({e})") from None
    want = [(p["name"], p["size"]) for p in spec.to_dict()["layout"]]
    got = [(p["name"], p["size"]) for p in layout]
    if got != want:
        raise EdgePseError(f"{where}: io.layout {got} is not the state the config implies {want}")
    return config_lag_hops(cfg)


def validate_manifest(manifest: object, where: str | Path = MANIFEST) -> list[FileEntry]:
    """Check the manifest's schema; returns its file entries. Raises EdgePseError saying what is wrong.

    The manifest must carry `manifest_sha256` and match it: a hand-edited scale or rate is refused. The digest
    proves integrity, not authenticity (whoever edits the manifest can recompute it; docs/bundle.md)."""
    if not isinstance(manifest, dict):
        raise EdgePseError(f"{where}: not a JSON object")
    if manifest.get("schema") != SCHEMA:
        raise EdgePseError(f"{where}: not an edge-pse bundle manifest (schema {manifest.get('schema')!r})")
    version = manifest.get("schema_version")
    if version == 1:  # a tensor per state part, int8 states requantized by the host: re-export it
        raise EdgePseError(
            f"{where}: bundle schema 1 (one model input per state part) is no longer run; re-export the checkpoint "
            "with `edge-pse export` (schema 2 packs the state into one float tensor)"
        )
    if not _int(version, 2, SCHEMA_VERSION):
        raise EdgePseError(f"{where}: bundle schema version {version!r}; this edge-pse reads {SCHEMA_VERSION}")
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise EdgePseError(f"{where}: missing keys {missing}")
    if not isinstance(manifest["preset"], str):
        raise EdgePseError(f"{where}: 'preset' must be a string")
    hop, dim = _check_numbers(manifest, where)
    io = manifest["io"]
    if not isinstance(io, dict) or not isinstance(io.get("states"), list):
        raise EdgePseError(f"{where}: 'io' must be an object with inputs, outputs and states")
    _check_tensors(io.get("inputs"), "io.inputs")
    _check_tensors(io.get("outputs"), "io.outputs")
    states = [_check_tensor(t, f"io.states[{i}]") for i, t in enumerate(io["states"])]
    _check_layout(io.get("layout"), states, str(where))
    lag = _check_config_layout(manifest["config"], io["layout"], str(where))
    if "lag_hops" in manifest and manifest["lag_hops"] != lag:
        raise EdgePseError(f"{where}: lag_hops {manifest['lag_hops']!r} is not the config's output lag ({lag} hops)")
    if not isinstance(manifest["files"], list) or not manifest["files"]:
        raise EdgePseError(f"{where}: 'files' must be a non-empty list")
    entries = []
    for i, d in enumerate(manifest["files"]):
        if not isinstance(d, dict):
            raise EdgePseError(f"{where}: files[{i}] is malformed (not an object)")
        try:
            entry = FileEntry.from_dict(d)
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise EdgePseError(f"{where}: files[{i}] is malformed ({e!r})") from None
        if entry.format not in FORMATS:
            raise EdgePseError(f"{where}: files[{i}] has unknown format {entry.format!r} (known: {FORMATS})")
        if entry.quantization not in QUANTIZATIONS:
            raise EdgePseError(f"{where}: files[{i}] has unknown quantization {entry.quantization!r}")
        if not _inside(entry.path):
            raise EdgePseError(f"{where}: files[{i}] path {entry.path!r} must stay inside the bundle")
        if not isinstance(d["sha256"], str) or not _HEX64.fullmatch(d["sha256"]) or not _int(d["bytes"], 0, 1 << 40):
            raise EdgePseError(f"{where}: files[{i}] needs sha256 (64 lower-case hex digits) and a byte count")
        _check_file_io(d["io"], f"files[{i}]", hop, dim, states)
        entries.append(entry)
    ref = manifest.get("reference")
    if ref is not None:
        if not isinstance(ref, dict) or not {"path", "sha256"} <= set(ref):
            raise EdgePseError(f"{where}: 'reference' must have path and sha256")
        if not _inside(ref["path"]):
            raise EdgePseError(f"{where}: reference path {ref['path']!r} must stay inside the bundle")
        if not isinstance(ref["sha256"], str) or not _HEX64.fullmatch(ref["sha256"]):
            raise EdgePseError(f"{where}: reference sha256 must be 64 lower-case hex digits")
    # last: a malformed edit gets the schema's specific message, a well-formed one the digest's
    if DIGEST_KEY not in manifest:  # mandatory: without it an edited rate or scale would run with exit 0
        raise EdgePseError(
            f"{where}: the manifest has no {DIGEST_KEY} (edited by hand, or exported before edge-pse sealed its "
            "manifests); re-export the bundle with `edge-pse export`"
        )
    try:
        digest = manifest_digest(manifest)
    except ValueError as e:
        raise EdgePseError(f"{where}: {e}") from None
    if manifest[DIGEST_KEY] != digest:
        raise EdgePseError(
            f"{where}: the manifest does not match its {DIGEST_KEY} (modified or corrupt); re-export the bundle"
        )
    return entries
