"""report.md: the bundle's accuracy/size/latency table for people (the manifest holds the same numbers)."""

from __future__ import annotations

from pathlib import Path


def _ops(ops: dict[str, int]) -> str:
    if not ops:
        return "-"
    return ", ".join(f"{k} x{v}" for k, v in sorted(ops.items()))


def _per_level(values: list[float], fmt: str) -> str:
    return " / ".join(format(v, fmt) for v in values)


def table(rows: list[dict], ref_sdri: dict[float, float]) -> str:
    """rows: dicts with format, quantization, bytes, levels ({dBFS: snr_db, si_sdri_db, si_sdri_drop_db}),
    latency, ops, passed. One figure per input level, in the order of `ref_sdri`."""
    levels = list(ref_sdri)
    shown = " / ".join(f"{k:g}" for k in levels)
    lines = [
        f"| format | mode | size | SNR vs float at {shown} dBFS | SI-SDRi | drop vs float | "
        "per hop median / p99 (1 thread) | outside delegate / float islands | gate |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| PyTorch float step | fp32 | - | - | {_per_level(list(ref_sdri.values()), '.2f')} dB | - | - | - | - |",
    ]
    for r in rows:
        per = [r["levels"][k] for k in levels]
        lines.append(
            f"| {r['format']} | {r['quantization']} | {r['bytes'] / 1024:.0f} KiB | "
            f"{_per_level([p['snr_db'] for p in per], '.1f')} dB | "
            f"{_per_level([p['si_sdri_db'] for p in per], '.2f')} dB | "
            f"{_per_level([p['si_sdri_drop_db'] for p in per], '+.2f')} dB | "
            f"{r['latency_median_us']:.0f} / {r['latency_p99_us']:.0f} us | {_ops(r['ops_outside_delegate'])} | "
            f"{'pass' if r['passed'] else 'FAIL'} |"
        )
    return "\n".join(lines)


def rows_from_manifest(data: dict) -> list[dict]:
    rows = []
    for f in data["files"]:
        acc = dict(data["accuracy"][f["path"]])
        acc["levels"] = {float(k): v for k, v in acc["levels"].items()}
        rows.append({**acc, "format": f["format"], "quantization": f["quantization"], "bytes": f["bytes"]})
    return rows


def float_levels(data: dict) -> dict[float, float]:
    """The float step's SI-SDRi per input level, from a manifest."""
    return {float(k): v["si_sdri_db"] for k, v in data["accuracy"]["float"]["levels"].items()}


def rows_from_results(results) -> list[dict]:
    """Table rows straight from the pipeline's FileResults (also when the gate failed and no manifest exists)."""
    rows = []
    for r in results.values():
        e = r.exported
        rows.append(
            {
                "format": e.format,
                "quantization": e.quantization,
                "bytes": r.bytes,
                "levels": {k: vars(v) for k, v in r.levels.items()},
                "latency_median_us": r.latency_median_us,
                "latency_p99_us": r.latency_p99_us,
                "ops_outside_delegate": e.ops_outside,
                "passed": r.passed,
            }
        )
    return rows


def write_report(path: Path, data: dict) -> None:
    tol = data["tolerance"]
    text = f"""# edge-pse bundle: {data["preset"]} ({data["source"]["mode"]})

Checkpoint `{data["source"]["checkpoint"]}`, calibration: {data["source"]["calibration"]}.
Measured at export on this machine: each file run hop by hop in its own runtime over the held-out clips
({data["accuracy"]["heldout"]}) and compared with the PyTorch float step.

{table(rows_from_manifest(data), float_levels(data))}

- Each figure is given at each input level: the held-out mixtures scaled to that mean power (dBFS).
- SNR vs float: output of the file vs output of the PyTorch float step, all held-out clips concatenated.
- SI-SDRi: mean SI-SDR improvement over the mixture against the clean target; drop = float minus file.
- Latency: one `process()` call of the edge-pse backend (model call plus host-side state handling), 1 thread.
- Outside delegate: for .pte, ops left to ExecuTorch's portable kernels and the number of XNNPACK subgraphs;
  for int8 .tflite, the QUANTIZE/DEQUANTIZE ops around the float islands.

Gate, at every level: int8 files need SNR vs float >= {tol["int8_min_snr_db"]:g} dB and SI-SDRi drop <=
{tol["int8_max_drop_db"]:g} dB; fp32 files >= {tol["fp32_min_snr_db"]:g} dB and <= {tol["fp32_max_drop_db"]:g} dB.

Toolchain: {", ".join(f"{k} {v}" for k, v in data["toolchain"].items())}.
"""
    path.write_text(text)
