"""The bench matrix: bundles x backends x threads (plus plug-ins and the peers DTLN/GTCRN), each cell timed in
its own subprocess, each distinct model file scored once on the eval set; returns the report dict (schema in
report.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from rich.markup import escape

from edge_pse.bench.plugins import is_plugin_spec, load_factory
from edge_pse.errors import EdgePseError

SHIPPED_BUNDLES = Path(str(resources.files("edge_pse.bundles")))  # inside the installed package
BUNDLE_BACKENDS = ("litert", "executorch", "onnx")  # default; "torch" (the float reference) on request
CELL_TIMEOUT_S = 600
DEFAULT_PEERS = Path("..") / "shared" / "peers"  # beside the checkout, relative to where the bench runs


@dataclass
class Source:
    """One --models entry (a bundle folder or a plug-in spec) or a peer (bench/peers.py)."""

    label: str
    kind: str  # bundle | plugin | peer
    path: str = ""  # bundle folder, plug-in spec or peers folder
    preset: str = ""  # peer: its name in peers.PEERS
    files: list[tuple[str, str]] = field(default_factory=list)  # (format, quantization) a bundle has
    has_reference: bool = False


@dataclass
class Cell:
    source: Source
    backend: str
    quantization: str
    fmt: str
    threads: int

    @property
    def key(self) -> str:
        """Stable across machines and folder names: what `regress` matches cells by."""
        return f"{self.source.label}/{self.quantization}/{self.backend}/t{self.threads}"

    def spec(self) -> dict:
        if self.source.kind == "plugin":
            return {"kind": "plugin", "spec": self.source.path, "threads": self.threads}
        if self.source.kind == "peer":
            return {"kind": "peer", "name": self.source.preset, "dir": self.source.path, "threads": self.threads}
        return {
            "kind": "bundle",
            "path": self.source.path,
            "backend": self.backend,
            "quantization": self.quantization if self.backend != "torch" else None,
            "threads": self.threads,
        }


def default_models() -> list[str]:
    """Bundles shipped in the package and in ./artifacts/ (made by `edge-pse export` from this folder)."""
    found: list[str] = []
    for root in (SHIPPED_BUNDLES, Path("artifacts")):
        for m in sorted(root.glob("*/manifest.json")):
            p = str(m.parent.resolve())
            if p not in found:
                found.append(p)
    return found


def resolve_sources(models: list[str]) -> list[Source]:
    from edge_pse.bundle import Bundle

    sources: list[Source] = []
    for m in models:
        if Path(m).is_dir():
            b = Bundle.load(m)
            label = f"{b.manifest['preset']}"
            sources.append(
                Source(
                    label,
                    "bundle",
                    str(Path(m).resolve()),
                    str(b.manifest["preset"]),
                    [(f.format, f.quantization) for f in b.files],
                    b.reference_weights() is not None,
                )
            )
        elif is_plugin_spec(m):
            load_factory(m)  # a typo fails here, before any cell runs
            sources.append(Source(m.removeprefix("ep:").split(":")[-1], "plugin", m, "plugin"))
        else:
            raise EdgePseError(f"--models {m!r} is neither a bundle folder nor a plug-in (module:function or ep:NAME)")
    return sources


def resolve_peers(arg: str | None) -> tuple[list[Source], list[str]]:
    """`--peers`: the peer cells that can run from that folder (None: ../shared/peers when it exists; "none":
    no peers), and one line per peer or folder skipped (a missing folder, file or runtime is not an error)."""
    from edge_pse.bench.peers import PEERS, unavailable

    if arg is not None and arg.lower() == "none":
        return [], []
    root = Path(arg) if arg is not None else DEFAULT_PEERS
    if not root.is_dir():
        return [], [f"peers skipped ({', '.join(PEERS)}): no folder {root}"]
    sources, skipped = [], []
    for name, info in PEERS.items():
        why = unavailable(name, root)
        if why:
            skipped.append(f"peer {name} skipped: {why}")
        else:
            sources.append(Source(name, "peer", str(root.resolve()), name, [(info.fmt, info.quantization)]))
    return sources, skipped


def plan(sources: list[Source], backends: list[str], threads: list[int]) -> list[Cell]:
    from edge_pse.runtime.backends import BACKENDS, FORMAT_BACKEND

    cells: list[Cell] = []
    for s in sources:
        if s.kind == "plugin":
            cells += [Cell(s, "plugin", "-", "-", t) for t in threads]
            continue
        if s.kind == "peer":  # whatever --backends says: the peers are the yardstick in every report
            (fmt, quant), be = s.files[0], FORMAT_BACKEND[s.files[0][0]]
            cells += [Cell(s, be, quant, fmt, t) for t in threads]
            continue
        for fmt, quant in s.files:
            be = FORMAT_BACKEND[fmt]
            if be in backends:
                cells += [Cell(s, be, quant, fmt, t) for t in threads]
        if "torch" in backends and s.has_reference:
            cells += [Cell(s, "torch", "fp32", BACKENDS["torch"][2] or "pt", t) for t in threads]
    keys = [c.key for c in cells]
    dup = {k for k in keys if keys.count(k) > 1}
    for c in cells:
        if c.key in dup and c.source.kind == "bundle":
            c.source.label = f"{c.source.preset}@{Path(c.source.path).name}"
    return cells


def run_cell_subprocess(cell: Cell, hops: int, warmup: int, deadline_us: float) -> dict:
    """Time one cell in a fresh interpreter (its own RSS, its own crash)."""
    req = {"cell": cell.spec(), "hops": hops, "warmup": warmup, "deadline_us": deadline_us}
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(cell.threads)  # the cell's thread budget applies to every pool in its process
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path.cwd()), env.get("PYTHONPATH")]))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "edge_pse.bench.cell", json.dumps(req)],
            capture_output=True,
            text=True,
            timeout=CELL_TIMEOUT_S,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {CELL_TIMEOUT_S} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"cell process exited with {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


@dataclass
class BenchOptions:
    hops: int = 2000
    warmup: int = 200
    deadline_us: float = 10_000.0
    eval_data: str | None = None
    eval_corpora: tuple[str, ...] | None = None  # speech corpora of eval_data the eval set draws from (None: all)
    per_condition: int = 10
    seconds: float = 4.0
    asr: bool = True
    dnsmos: bool = True
    intrusive: bool = True
    teacher: str | None = None  # checkpoint name/path of the float reference, None: no reference row
    peers: str | None = None  # the folder the peer cells were read from (recorded in the report's settings)
    progress: bool = True


def quality_key(c: Cell) -> tuple[str, str, str]:
    """One model file: threads do not change the output (peers share their folder: their name tells them apart)."""
    path = f"{c.source.path}#{c.source.preset}" if c.source.kind == "peer" else c.source.path
    return path, c.quantization, c.backend


def spectrogram_cells(cells: list[Cell], limit: int = 4) -> list[Cell]:
    """One cell per model for the before/after spectrograms: int8 on LiteRT when there is one."""

    def rank(c: Cell) -> tuple:
        return (c.backend not in ("litert", "plugin"), c.quantization == "fp32", c.threads)

    best: dict[str, Cell] = {}
    for c in cells:
        if c.source.label not in best or rank(c) < rank(best[c.source.label]):
            best[c.source.label] = c
    return list(best.values())[:limit]


def _quality(cells: list[Cell], opts: BenchOptions, log) -> tuple[dict | None, dict, dict]:
    """(reference row, quality per model file, clip for the spectrograms)."""
    import numpy as np

    from edge_pse.bench.cell import open_cell
    from edge_pse.bench.quality import streamer_enhancer, summarize
    from edge_pse.eval.evaluate import EvalSet, score

    log(f"building the eval set from {opts.eval_data} ({opts.per_condition} per condition, {opts.seconds} s)")
    evalset = EvalSet.build(
        opts.eval_data,
        split="test",
        per_condition=opts.per_condition,
        seconds=opts.seconds,
        corpora=opts.eval_corpora,
    )
    kw = {"asr": opts.asr, "intrusive_extras": opts.intrusive, "dnsmos": opts.dnsmos, "progress": opts.progress}
    clip_ex = next(ex for c in ("both", "interferer", "noise", "reverberant") for ex in evalset.examples.get(c, []))
    clip = {"mixture": clip_ex.mixture, "target": clip_ex.target, "outputs": {}}
    reference = None
    if opts.teacher:
        import torch

        from edge_pse.eval.evaluate import torch_enhancer
        from edge_pse.model.checkpoint import load_model

        torch.set_num_threads(1)
        model, payload = load_model(opts.teacher)
        log(f"scoring the float reference {opts.teacher} ({payload.get('preset')}, PyTorch)")
        enh = torch_enhancer(model.eval())
        per = score(enh, evalset, **kw)
        reference = {"name": f"{payload.get('preset', opts.teacher)} float (PyTorch)", "checkpoint": str(opts.teacher)}
        reference |= {"quality": summarize(per), "per_condition": per}
        clip["outputs"][reference["name"]] = enh(clip_ex.mixture, clip_ex.embedding)
    shown = spectrogram_cells(cells)
    results: dict[tuple, dict] = {}
    for c in cells:
        qkey = quality_key(c)
        if qkey in results:
            continue
        log(f"scoring {c.source.label} {c.quantization} on {c.backend}")
        try:
            enh = streamer_enhancer(open_cell({**c.spec(), "threads": 1}))
            per = score(enh, evalset, **kw)
            results[qkey] = {"quality": summarize(per), "per_condition": per}
            if c in shown:
                label = f"{c.source.label} {c.quantization} {c.backend}"
                clip["outputs"][label] = np.asarray(enh(clip_ex.mixture, clip_ex.embedding))
        except EdgePseError as e:
            results[qkey] = {"quality_error": str(e)}
    return reference, results, clip


def _demo_clip(cells: list[Cell]) -> dict:
    """Without an eval set, the spectrograms show the built-in demo mixture through up to three models."""
    import soundfile as sf

    from edge_pse import demo
    from edge_pse.bench.cell import open_cell
    from edge_pse.bench.quality import streamer_enhancer
    from edge_pse.enroll.profile import load_profile

    mix, _ = sf.read(demo.path(demo.MIXTURE), dtype="float32")
    target, _ = sf.read(demo.path(demo.TARGET), dtype="float32")
    emb = load_profile(demo.path(demo.SPEAKER)).embedding
    clip = {"mixture": mix, "target": target, "outputs": {}}
    done = set()
    for c in cells:
        if len(done) >= 3 or quality_key(c)[:2] in done:
            continue
        done.add(quality_key(c)[:2])
        try:
            out = streamer_enhancer(open_cell({**c.spec(), "threads": 1}))(mix, emb)
        except EdgePseError:
            continue
        clip["outputs"][f"{c.source.label} {c.quantization} {c.backend}"] = out
    return clip


def source_name(c: Cell) -> str:
    if c.source.kind == "plugin":
        return c.source.path
    if c.source.kind == "peer":
        from edge_pse.bench.peers import PEERS

        return ", ".join(PEERS[c.source.preset].files)
    return Path(c.source.path).name


def busy_notes(machine: dict) -> list[str]:
    """A loaded machine inflates every latency (mostly the tails): say so in the report."""
    load, cores = machine.get("load_avg"), machine.get("cores_usable") or 1
    if load and load[0] > 0.5 * cores:
        return [
            f"the machine was busy (load average {load[0]:.2f} on {cores} cores at start): latency figures, "
            "the p99/max tails above all, are noisy; compare ratios from the same conditions"
        ]
    return []


def _prediction(cell: Cell) -> dict:
    """The cost model's Pi 4 / Pi 5 per-hop prediction for the cell's file (labelled as a prediction)."""
    from firmware_host.costmodel import LABEL, predict_boards

    manifest = json.loads((Path(cell.source.path) / "manifest.json").read_text())
    boards = predict_boards(manifest, cell.quantization)
    return {"label": LABEL} | {b: {k: p[k] for k in ("per_hop_us", "bound", "weights_from")} for b, p in boards.items()}


def run_matrix(
    sources: list[Source], backends: list[str], threads: list[int], opts: BenchOptions, log
) -> tuple[dict, dict | None]:
    from rich.progress import Progress

    from edge_pse import __version__
    from edge_pse.bench.machine import machine_info, speed_probe_us
    from edge_pse.bench.quality import versus

    cells = plan(sources, backends, threads)
    if not cells:
        raise EdgePseError("no cell to run: no bundle has a file for the chosen backends")
    log(f"{len(cells)} cells: {len({c.source.label for c in cells})} models x backends x threads {threads}")
    machine = machine_info()
    rows = []
    with Progress(disable=not opts.progress, transient=True) as bar:
        task = bar.add_task("timing cells", total=len(cells))
        for c in cells:
            bar.update(task, description=f"timing {c.key}")
            res = run_cell_subprocess(c, opts.hops, opts.warmup, opts.deadline_us)
            row = {
                "key": c.key,
                "model": c.source.label,
                "kind": c.source.kind,
                "source": source_name(c),
                "preset": c.source.preset,
                "format": c.fmt,
                "quantization": c.quantization,
                "backend": c.backend,
                "threads": c.threads,
            } | res
            if c.source.kind == "bundle":
                row["prediction_us"] = _prediction(c)
            rows.append(row)
            if "error" in res:
                log(f"[yellow]{escape(c.key)}: {escape(res['error'])}[/]")
            bar.advance(task)
    reference, clip = None, None
    if opts.eval_data:
        reference, quality, clip = _quality(cells, opts, log)
    else:
        clip = _demo_clip([c for c, r in zip(cells, rows, strict=True) if "error" not in r])
    if opts.eval_data:
        for c, row in zip(cells, rows, strict=True):
            q = quality.get(quality_key(c), {})
            row |= q
            if "quality" in q:
                row["quality_vs_reference"] = versus(q["quality"], reference["quality"] if reference else None)
    machine["speed_probe_after_us"] = speed_probe_us()
    report = {
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "edge_pse_version": __version__,
        "machine": machine,
        "settings": {
            "hops": opts.hops,
            "warmup": opts.warmup,
            "deadline_us": opts.deadline_us,
            "threads": threads,
            "backends": backends,
            "peers": opts.peers,
            "eval": None
            if not opts.eval_data
            else {
                "data": str(opts.eval_data),
                "corpora": list(opts.eval_corpora) if opts.eval_corpora else None,
                "split": "test",
                "per_condition": opts.per_condition,
                "seconds": opts.seconds,
                "asr": opts.asr,
                "dnsmos": opts.dnsmos,
                "intrusive": opts.intrusive,
            },
        },
        "reference": reference,
        "cells": rows,
        "notes": busy_notes(machine),
    }
    return report, clip
