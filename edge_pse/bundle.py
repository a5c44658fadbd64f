"""The artifact bundle: the contract between export and the device runtime (docs/bundle.md).

A bundle is a folder with `manifest.json`, the model files it lists and `report.md`. The runtime trusts
nothing the manifest does not describe: `Bundle.load` checks the schema and the sha256 of every listed file.
Torch-free on purpose: this is what a Raspberry Pi reads.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from edge_pse.errors import EdgePseError

SCHEMA = "edge-pse-bundle"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
FORMATS = ("pte", "tflite", "onnx")
QUANTIZATIONS = ("fp32", "int8-ptq", "int8-qat")
_REQUIRED = ("schema", "schema_version", "preset", "config", "sample_rate", "hop", "speaker", "io", "files")


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


@dataclass
class Bundle:
    path: Path
    manifest: dict
    files: list[FileEntry]

    @classmethod
    def load(cls, path: str | Path) -> Bundle:
        """Read and verify a bundle: schema, every listed file present with a matching sha256."""
        path = Path(path)
        if not path.is_dir():
            raise EdgePseError(f"bundle {path} not found (expected a folder with {MANIFEST})")
        mpath = path / MANIFEST
        if not mpath.is_file():
            raise EdgePseError(f"{path} is not a bundle: no {MANIFEST}")
        try:
            manifest = json.loads(mpath.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise EdgePseError(f"cannot read {mpath}: {e}") from None
        files = validate_manifest(manifest, mpath)
        for entry in [*files, *_extra_files(manifest)]:
            fpath = path / entry.path
            if not fpath.is_file():
                raise EdgePseError(f"bundle {path}: listed file {entry.path} is missing")
            if sha256_file(fpath) != entry.sha256:
                raise EdgePseError(
                    f"bundle {path}: {entry.path} does not match its sha256 in {MANIFEST} (modified or corrupt); "
                    "re-export the bundle"
                )
        return cls(path, manifest, files)

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
        """The float weights file for the PyTorch reference backend, if the bundle carries one."""
        ref = self.manifest.get("reference")
        return self.path / ref["path"] if ref else None

    @property
    def tolerance(self) -> dict:
        return self.manifest.get("tolerance", {})


@dataclass(frozen=True)
class _Extra:
    path: str
    sha256: str


def _extra_files(manifest: dict) -> list[_Extra]:
    ref = manifest.get("reference")
    return [_Extra(ref["path"], ref["sha256"])] if ref else []


def validate_manifest(manifest: object, where: str | Path = MANIFEST) -> list[FileEntry]:
    """Check the manifest's schema; returns its file entries. Raises EdgePseError saying what is wrong."""
    if not isinstance(manifest, dict):
        raise EdgePseError(f"{where}: not a JSON object")
    if manifest.get("schema") != SCHEMA:
        raise EdgePseError(f"{where}: not an edge-pse bundle manifest (schema {manifest.get('schema')!r})")
    version = manifest.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
        raise EdgePseError(f"{where}: bundle schema version {version!r}; this edge-pse reads 1..{SCHEMA_VERSION}")
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise EdgePseError(f"{where}: missing keys {missing}")
    if not isinstance(manifest["files"], list) or not manifest["files"]:
        raise EdgePseError(f"{where}: 'files' must be a non-empty list")
    entries = []
    for i, d in enumerate(manifest["files"]):
        try:
            entry = FileEntry.from_dict(d)
        except (KeyError, TypeError, ValueError) as e:
            raise EdgePseError(f"{where}: files[{i}] is malformed ({e!r})") from None
        if entry.format not in FORMATS:
            raise EdgePseError(f"{where}: files[{i}] has unknown format {entry.format!r} (known: {FORMATS})")
        if entry.quantization not in QUANTIZATIONS:
            raise EdgePseError(f"{where}: files[{i}] has unknown quantization {entry.quantization!r}")
        if Path(entry.path).is_absolute() or ".." in Path(entry.path).parts:
            raise EdgePseError(f"{where}: files[{i}] path {entry.path!r} must stay inside the bundle")
        entries.append(entry)
    ref = manifest.get("reference")
    if ref is not None and (not isinstance(ref, dict) or not {"path", "sha256"} <= set(ref)):
        raise EdgePseError(f"{where}: 'reference' must have path and sha256")
    return entries
