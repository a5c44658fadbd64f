"""checkpoint -> (calibrate / fine-tune) -> export each format -> verify each file in its own runtime -> gate
-> bundle. The bundle is built in a temporary folder next to the output and renamed into place only when every
file passed the gate, so a failed export leaves nothing behind."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from edge_pse.atomic import hold_lock
from edge_pse.bundle import (
    FORMATS,
    MODES,
    PROJECTION,
    SCHEMA,
    SCHEMA_VERSION,
    Bundle,
    FileEntry,
    seal_manifest,
    sha256_file,
)
from edge_pse.errors import EdgePseError
from edge_pse.exporters import accuracy
from edge_pse.exporters.accuracy import Tolerance
from edge_pse.exporters.common import Exported
from edge_pse.model.step import E3NetStep, run_step
from edge_pse.quant import ranges as act_ranges
from edge_pse.quant.calibration import CalibrationSet, Clip, at_level

TOOLCHAIN = ("edge-pse", "torch", "torchao", "executorch", "litert-torch", "ai-edge-litert", "onnx", "onnxruntime")
WEIGHTS = "weights.pt"
DEFAULT_FRAME_LEVEL_DBFS = -20.0  # the presets' (model/config.py)


@dataclass
class ExportOptions:
    mode: str = "ptq"
    formats: tuple[str, ...] = FORMATS
    max_calibration_hops: int | None = None
    qat_steps: int = 40
    qat_batch: int = 32
    latency_hops: int = 400
    tolerance: Tolerance = field(default_factory=Tolerance)
    seed: int = 0
    # per-frame level normalisation of the exported step: "auto" keeps the checkpoint's own and gives one
    # trained without it DEFAULT_FRAME_LEVEL_DBFS (its int8 otherwise collapses on quiet input); "off"; or dBFS
    frame_level: str = "auto"
    # stored activation ranges (quant/ranges.py) pinned in the PT2E int8 files instead of what calibration shows
    ranges: act_ranges.ActivationRanges | None = None

    def frame_level_for(self, trained: float | None) -> float | None:
        if self.frame_level == "auto":
            return DEFAULT_FRAME_LEVEL_DBFS if trained is None else trained
        return None if self.frame_level == "off" else float(self.frame_level)


@dataclass
class LevelResult:
    """One file at one input level, against the float step at that level."""

    snr_db: float
    si_sdri_db: float
    si_sdri_drop_db: float


@dataclass
class FileResult:
    exported: Exported
    bytes: int = 0
    levels: dict[float, LevelResult] = field(default_factory=dict)  # input level (dBFS) -> figures
    latency_median_us: float = 0.0
    latency_p99_us: float = 0.0
    passed: bool = False

    @property
    def snr_db(self) -> float:
        """The worst level's SNR vs float (what the gate checks)."""
        return min((r.snr_db for r in self.levels.values()), default=0.0)

    @property
    def si_sdri_drop_db(self) -> float:
        """The worst level's SI-SDRi drop vs float (what the gate checks)."""
        return max((r.si_sdri_drop_db for r in self.levels.values()), default=0.0)

    @property
    def si_sdri_db(self) -> float:
        return float(np.mean([r.si_sdri_db for r in self.levels.values()])) if self.levels else 0.0


def toolchain_versions() -> dict[str, str]:
    out = {}
    for pkg in TOOLCHAIN:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _speaker_info(cfg) -> dict:
    """The encoder whose embeddings the profiles must hold: its name from the encoder module, whatever is
    installed (without resemblyzer the name was written as "resemblyzer", and every profile was refused)."""
    from edge_pse.enroll.dvector import ENCODER_NAME, encoder_version

    try:
        version = encoder_version()
    except ImportError:  # resemblyzer not installed: the packaged encoder's record of the weights it holds
        from edge_pse.enroll.runtime_encoder import META_NAME, PACKAGED

        try:
            version = str(json.loads((PACKAGED / META_NAME).read_text()).get("encoder_version", "unknown"))
        except (OSError, ValueError):
            version = "unknown"
    return {"dim": cfg.spk_dim, "encoder": ENCODER_NAME, "encoder_version": version}


# ------------------------------------------------------------------------------------------------- stages
def qat_run(step: E3NetStep, opts: ExportOptions, calib: CalibrationSet):
    """(converted XNNPACK int8 graph, float step with the fine-tuned weights): one QAT run per export, with
    XNNPACK's scheme. The .pte lowers the graph; .tflite and .onnx calibrate the weights with their own
    quantizer (one run instead of three: on 2 shared cores each run takes many minutes)."""
    from edge_pse.exporters import pte
    from edge_pse.quant.float_state import with_float_paths
    from edge_pse.quant.qat import quantize_qat

    return quantize_qat(
        step,
        with_float_paths(pte.quantizer(qat=True), step, dynamic_decoder=True),
        with_float_paths(pte.quantizer(), step, dynamic_decoder=True),
        calib.calibration,
        opts.qat_steps,
        opts.qat_batch,
        opts.seed,
    )


def format_module(fmt: str):
    """The module with `fmt`'s quantize and lower stages (exporters/common.py)."""
    from edge_pse.exporters import onnx, pte, tflite

    return {"pte": pte, "tflite": tflite, "onnx": onnx}[fmt]


def float_reference(step: E3NetStep, heldout: dict[float, list[Clip]]) -> dict[float, list[np.ndarray]]:
    """The PyTorch float step's output on each held-out clip at each input level (the yardstick), lag
    compensated as runner.enhance does: one zero hop flushed, the first hop dropped, the clip's length."""
    hop = step.cfg.hop
    refs = {}
    for level, clips in heldout.items():
        refs[level] = []
        for c in clips:
            wave = np.zeros((-(-c.mixture.size // hop) + 1) * hop, np.float32)
            wave[: c.mixture.size] = c.mixture
            spk = step.speaker_input(torch.from_numpy(c.spk).unsqueeze(0))
            out = run_step(step, torch.from_numpy(wave).unsqueeze(0), spk)
            refs[level].append(out[0, hop : hop + c.mixture.size].numpy())
    return refs


def verify(
    bundle: Bundle,
    entry: FileEntry,
    result: FileResult,
    heldout: dict[float, list[Clip]],
    refs: dict[float, list[np.ndarray]],
    ref_sdri: dict[float, float],
    opts: ExportOptions,
) -> None:
    """Load the file in its own runtime (through the same backend the device uses) and measure it at every
    input level; the gate takes the worst level."""
    import importlib

    from edge_pse.runtime.backends import BACKENDS, FORMAT_BACKEND

    module, cls, _ = BACKENDS[FORMAT_BACKEND[entry.format]]
    backend = getattr(importlib.import_module(module), cls)(bundle, entry, 1)
    hop = bundle.spec.hop
    for level, clips in heldout.items():
        outs = accuracy.run_backend(backend, clips, hop)
        sdri = accuracy.si_sdri(outs, clips)
        snr = accuracy.snr_db(np.concatenate(refs[level]), np.concatenate(outs))
        result.levels[level] = LevelResult(snr, sdri, ref_sdri[level] - sdri)
    mid = heldout[sorted(heldout)[len(heldout) // 2]]
    result.latency_median_us, result.latency_p99_us = accuracy.latency_us(backend, mid[0], hop, hops=opts.latency_hops)
    min_snr, max_drop = opts.tolerance.limits(entry.quantization)
    result.passed = result.snr_db >= min_snr and result.si_sdri_drop_db <= max_drop


def _level_key(level: float) -> str:
    return f"{level:g}"


def manifest(
    preset: str,
    step: E3NetStep,
    files: list[FileEntry],
    results: dict[str, FileResult],
    ref_sdri: dict[float, float],
    calib: CalibrationSet,
    opts: ExportOptions,
    weights: Path,
    source: str,
    projection: dict,
) -> dict:
    cfg = step.cfg
    return seal_manifest(
        {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "preset": preset,
            "config": cfg.to_dict(),
            "sample_rate": cfg.sample_rate,
            "hop": cfg.hop,
            "lag_hops": cfg.output_delay // cfg.hop,  # written once, from the config (bundle.StreamSpec)
            "speaker": {**_speaker_info(cfg), "projection": projection},
            "io": step.io.to_dict(),
            "files": [f.to_dict() for f in files],
            "reference": {"path": WEIGHTS, "sha256": sha256_file(weights), "bytes": weights.stat().st_size},
            "toolchain": toolchain_versions(),
            "accuracy": {
                "levels_dbfs": list(ref_sdri),
                "float": {
                    "si_sdri_db": round(float(np.mean(list(ref_sdri.values()))), 3),
                    "levels": {_level_key(k): {"si_sdri_db": round(v, 3)} for k, v in ref_sdri.items()},
                },
                **{
                    r.exported.path.name: {
                        "snr_db": round(r.snr_db, 2),
                        "si_sdri_db": round(r.si_sdri_db, 3),
                        "si_sdri_drop_db": round(r.si_sdri_drop_db, 3),
                        "levels": {
                            _level_key(k): {
                                "snr_db": round(v.snr_db, 2),
                                "si_sdri_db": round(v.si_sdri_db, 3),
                                "si_sdri_drop_db": round(v.si_sdri_drop_db, 3),
                            }
                            for k, v in r.levels.items()
                        },
                        "latency_median_us": round(r.latency_median_us, 1),
                        "latency_p99_us": round(r.latency_p99_us, 1),
                        "ops_outside_delegate": r.exported.ops_outside,
                        "passed": r.passed,
                    }
                    for r in results.values()
                },
                "heldout": calib.describe(),
            },
            "tolerance": opts.tolerance.to_dict(),
            "costs": step_costs(step),
            "source": {
                "checkpoint": _shown_path(source),
                # lets a test check that a committed bundle was made from the committed checkpoint
                "checkpoint_sha256": sha256_file(source) if Path(source).is_file() else None,
                "mode": opts.mode,
                "calibration": calib.source,
                "activation_ranges": None if opts.ranges is None else opts.ranges.source,
            },
        }
    )  # the digest covers every number beside the files' sha256 (an edited int8 scale is refused at load)


def write_projection(path: Path, step: E3NetStep) -> dict:
    """The projected step's speaker map (float32 weight [P, D] and bias [P], numpy: the device reads it without
    torch) and its manifest entry."""
    weight, bias = (t.detach().float().numpy() for t in step.speaker_projection())
    with open(path, "wb") as f:
        np.savez(f, weight=weight, bias=bias)
    return {"path": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size, "dim": int(weight.shape[0])}


def step_costs(step: E3NetStep) -> dict:
    """What one call of the exported step costs, counted from its modules (the device's cost model and the
    agent read these instead of recomputing them from the config)."""
    from edge_pse.model.stats import count_macs_per_hop, int8_weight_bytes

    params = sum(p.numel() for p in step.parameters())
    return {
        "params": params,
        "macs_per_hop": count_macs_per_hop(step),
        "fp32_bytes": 4 * params,
        "int8_bytes": int8_weight_bytes(step),
        # the speaker's Linears, run once when the speaker is set (float32, in the projection file)
        "projection_params": sum(t.numel() for t in step.speaker_projection()) if step.projected else 0,
    }


def _shown_path(source: str) -> str:
    """`edge_pse/checkpoints/NAME` for the package's own checkpoints, the bare file name otherwise (no user
    paths leak into a manifest)."""
    from edge_pse.model.checkpoint import SHIPPED_DIR

    p = Path(source).resolve()
    return f"edge_pse/checkpoints/{p.relative_to(SHIPPED_DIR)}" if p.is_relative_to(SHIPPED_DIR) else p.name


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


LOCK = ".export.lock"  # inside a build folder, flock-ed by the export building it: a dead export holds no lock
STALE_UNLOCKED_S = 600.0  # a build folder without a lock file (made before locks existed) is stale after this


def _lock(tmp: Path):
    """Hold an exclusive lock on `tmp` for as long as this export runs (released by the OS if it is killed).
    None where fcntl does not exist (then stale folders are recognised by age alone)."""
    return hold_lock(tmp / LOCK)  # a fresh private folder: nobody else can hold it


def _is_stale(folder: Path) -> bool:
    """A build folder whose export is gone: its lock can be taken, or it has none and is old."""
    lock = folder / LOCK
    try:
        import fcntl

        with open(lock) as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
    except BlockingIOError:
        return False  # a live export holds it
    except (ImportError, FileNotFoundError):
        pass
    except OSError:
        return False
    with contextlib.suppress(OSError):
        return time.time() - folder.stat().st_mtime > STALE_UNLOCKED_S
    return False


def remove_stale_builds(out: Path) -> list[Path]:
    """Delete the hidden `.NAME.XXXXXXXX.tmp` build folders that killed exports of `out` left behind (never one a
    running export is using); returns what was removed."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.[A-Za-z0-9_]{{8}}\.tmp")
    removed = []
    if not out.parent.is_dir():
        return removed
    for d in out.parent.iterdir():
        if pattern.fullmatch(d.name) and d.is_dir() and not d.is_symlink() and _is_stale(d):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def _install(tmp: Path, out: Path) -> None:
    """Replace `out` by the finished bundle `tmp` (same filesystem, so renames are atomic)."""
    os.chmod(tmp, 0o755)  # mkdtemp makes an owner-only folder; a bundle is meant to be deployed and shared
    if out.exists():
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def export_bundle(
    model, preset: str, source: str, calib: CalibrationSet, out: Path, opts: ExportOptions, log=print
) -> tuple[Path, dict[str, FileResult], dict[float, float]]:
    """Build, verify and gate a bundle; returns (bundle path, per-file results, float SI-SDRi)."""
    from edge_pse.exporters.report import write_report
    from edge_pse.model.e3net import with_frame_level

    torch.manual_seed(opts.seed)
    level = opts.frame_level_for(model.cfg.frame_level_dbfs)
    if level != model.cfg.frame_level_dbfs:
        trained = model.cfg.frame_level_dbfs
        log(
            f"per-frame level normalisation: {'off' if level is None else f'{level:g} dBFS'} (the checkpoint was "
            f"trained with {'none' if trained is None else f'{trained:g} dBFS'}; --frame-level-dbfs sets it)"
        )
        model = with_frame_level(model, level)
    step = E3NetStep(model, projected=True).eval()  # the speaker's Linears run once per enrollment, not per hop
    if opts.ranges is not None and opts.mode == "ptq":
        opts.ranges.check(step.cfg.frame_level_dbfs, opts.formats)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_builds(out):
        log(f"removed {stale.name}: left behind by an export that was killed")
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    lock = _lock(tmp)
    try:
        weights = tmp / WEIGHTS
        torch.save({k: v.detach().float().contiguous() for k, v in model.state_dict().items()}, weights)
        projection = write_projection(tmp / PROJECTION, step)
        calib = calib.across_levels(accuracy.LEVELS_DBFS)
        heldout = {level: [at_level(c, level) for c in calib.heldout] for level in accuracy.LEVELS_DBFS}
        qat = None
        if opts.mode == "qat":
            log(f"quantization-aware fine-tuning ({opts.qat_steps} steps), once for every format")
            qat = qat_run(step, opts, calib)
        exported, measured = [], {}
        for fmt in opts.formats:
            log(f"{fmt}: exporting ({MODES[opts.mode]})")
            stages = format_module(fmt)
            pinned = opts.ranges.formats.get(fmt) if opts.ranges is not None and opts.mode == "ptq" else None
            quantized = stages.quantize(step, opts.mode, calib.calibration, opts.max_calibration_hops, qat, pinned)
            if quantized.ranges:
                measured[fmt] = pinned or quantized.ranges
            exported.append(stages.lower(quantized, tmp))
        if measured:  # what the int8 files were scaled with: shipping keeps it beside the checkpoint
            origin = opts.ranges.source if opts.ranges is not None else calib.describe()
            sha = sha256_file(source) if Path(source).is_file() else ""
            kept = act_ranges.ActivationRanges(sha, origin, step.cfg.frame_level_dbfs, measured)
            act_ranges.save(tmp / act_ranges.FILENAME, kept)
        files = [
            FileEntry(e.path.name, e.format, e.quantization, sha256_file(e.path), e.path.stat().st_size, e.io)
            for e in exported
        ]
        results = {e.path.name: FileResult(e, e.path.stat().st_size) for e in exported}
        refs = float_reference(step, heldout)
        ref_sdri = {level: accuracy.si_sdri(refs[level], heldout[level]) for level in heldout}
        _write_json(
            tmp / "manifest.json",
            manifest(preset, step, files, results, ref_sdri, calib, opts, weights, source, projection),
        )
        bundle = Bundle.load(tmp)
        for entry in bundle.files:
            log(
                f"{entry.format}: verifying in its own runtime on {len(calib.heldout)} held-out clips at "
                + ", ".join(f"{k:g}" for k in heldout)
                + " dBFS"
            )
            verify(bundle, entry, results[entry.path], heldout, refs, ref_sdri, opts)
        data = manifest(preset, step, files, results, ref_sdri, calib, opts, weights, source, projection)
        _write_json(tmp / "manifest.json", data)
        write_report(tmp / "report.md", data)
        failed = [r for r in results.values() if not r.passed]
        if failed:
            lines = []
            for r in failed:
                min_snr, max_drop = opts.tolerance.limits(r.exported.quantization)
                worst = max(r.levels, key=lambda k: r.levels[k].si_sdri_drop_db)
                lines.append(
                    f"{r.exported.path.name} ({r.exported.quantization}): SNR vs float {r.snr_db:.1f} dB "
                    f"(min {min_snr:g}), SI-SDRi drop {r.si_sdri_drop_db:.2f} dB (max {max_drop:g}); "
                    f"worst at {worst:g} dBFS"
                )
            raise GateFailed(results, ref_sdri, "accuracy gate failed, no bundle written:\n  " + "\n  ".join(lines))
        (tmp / LOCK).unlink(missing_ok=True)  # not part of the bundle; the open descriptor keeps the lock
        _install(tmp, out)
        return out, results, ref_sdri
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if lock is not None:
            lock.close()


class GateFailed(EdgePseError):
    """The export finished but a file is less accurate than the tolerance allows."""

    exit_code = 3

    def __init__(self, results: dict[str, FileResult], ref_sdri: dict[float, float], message: str) -> None:
        super().__init__(message)
        self.results, self.ref_sdri = results, ref_sdri
