"""Several devices at once: run one operation on every target concurrently and merge the results per device.

One device failing (unreachable, wrong token, refused bundle) never hides the others' results; the caller
decides the exit code from `failed(results)`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from edge_pse.errors import EdgePseError

MAX_PARALLEL = 16


def run_all(targets: list[str], fn: Callable[[str], dict]) -> dict[str, dict]:
    """{target: {"ok": True, "result": ...} | {"ok": False, "error": message}} in the order given."""
    if not targets:
        raise EdgePseError("no --target given")
    if len(set(targets)) != len(targets):
        raise EdgePseError("a --target is listed twice")

    def one(t: str) -> dict:
        try:
            return {"ok": True, "result": fn(t)}
        except EdgePseError as e:
            return {"ok": False, "error": str(e)}
        except Exception as e:  # a device's unexpected failure is its own row, never the whole command's
            return {"ok": False, "error": f"{type(e).__name__}: {e}"}

    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(targets))) as pool:
        return dict(zip(targets, pool.map(one, targets), strict=True))


def failed(results: dict[str, dict]) -> list[str]:
    return [t for t, r in results.items() if not r["ok"]]


def write_bench_report(results: dict[str, dict], out: Path) -> dict:
    """Merge the devices' bench reports into OUT/remote_report.json and OUT/remote_report.md, each cell's
    measurement beside the cost model's Pi 4/Pi 5 prediction (labelled), and each device's own
    `edge-pse bench` files (when it has the bench) under OUT/<device>/."""
    from edge_pse.runtime.audio_io import write_text
    from firmware_host.costmodel import LABEL, predict_boards

    out.mkdir(parents=True, exist_ok=True)
    merged: dict = {"schema": "edge-pse-remote-bench", "schema_version": 1, "devices": {}}
    for target, r in results.items():
        if not r["ok"]:
            merged["devices"][target] = {"error": r["error"]}
            continue
        rep = r["result"]
        for cell in rep.get("probe", []):
            cell["prediction"] = predict_boards(rep["manifest"], cell["quantization"])
        files = rep.get("bench", {}).get("files", {})
        if files:
            sub = out / _safe(target)
            sub.mkdir(exist_ok=True)
            for name, text in files.items():
                write_text(sub / Path(name).name, text)
        merged["devices"][target] = rep
    write_text(out / "remote_report.json", json.dumps(merged, indent=2) + "\n")
    write_text(out / "remote_report.md", _markdown(merged, LABEL))
    return merged


def _safe(target: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in target)


def _markdown(merged: dict, label: str) -> str:
    lines = ["# edge-pse remote bench", ""]
    for target, rep in merged["devices"].items():
        lines.append(f"## {target}")
        if "error" in rep:
            lines += ["", f"failed: {rep['error']}", ""]
            continue
        m = rep["machine"]
        lines += [
            "",
            f"{m.get('board') or m.get('cpu_model') or '?'} ({m['arch']}, {m['cores']} cores, Python {m['python']}), "
            f"bundle `{rep['bundle']}` ({rep['preset']})",
            "",
            "| backend | quant | threads | measured p50 us | p99 us | RTF | predicted Pi 4 us | predicted Pi 5 us |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in rep.get("probe", []):
            p = c["prediction"]
            lines.append(
                f"| {c['backend']} | {c['quantization']} | {c['threads']} | {c['per_hop_us']['p50']} | "
                f"{c['per_hop_us']['p99']} | {c['rtf']} | {p['rpi4']['per_hop_us']} ({p['rpi4']['bound']}) | "
                f"{p['rpi5']['per_hop_us']} ({p['rpi5']['bound']}) |"
            )
        bench = rep.get("bench", {})
        note = "pulled into this folder" if bench.get("files") else bench.get("reason", "no report files")
        lines += ["", f"Predicted columns: {label}. Device `edge-pse bench` report: {note}.", ""]
    return "\n".join(lines)
