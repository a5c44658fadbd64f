"""A per-device cost model on paper, made executable: predict one hop's model time on a Pi from the bundle's
MACs and weight bytes and the board's published figures (device_specs.toml).

Model (a roofline for batch-1 streaming): the weights are read once per hop, so a hop costs
    max(compute, weight traffic) + operators x dispatch overhead
where compute = MACs / (MACs-per-cycle x clock x efficiency) and the weight traffic comes from the smallest
cache level that holds all weights (they stay resident between hops when they fit), else from DRAM. Every
output of this module is a PREDICTION and says so; the measured figures are shown beside it.
Torch-free: the MAC/parameter arithmetic is edge_pse.model.costs (tested against `edge-pse models`).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from edge_pse.model.costs import config_costs

SPECS = Path(__file__).with_name("device_specs.toml")
LABEL = "PREDICTION (cost model from published figures, not a measurement)"


def load_specs(path: str | Path = SPECS) -> dict[str, dict]:
    with open(path, "rb") as f:
        return tomllib.load(f)


def bundle_costs(manifest: dict, quantization: str) -> dict:
    """Costs for one of the bundle's files: the manifest's own figures when it has them, else the config's."""
    cfg = manifest["config"]
    costs = config_costs(cfg, projected="projection" in manifest.get("speaker", {}))
    costs["hop_us"] = 1e6 * cfg["hop"] / cfg["sample_rate"]  # the audio one call must keep up with (not 10 ms)
    costs.update({k: v for k, v in manifest.get("costs", {}).items() if k in costs})
    costs["weight_bytes"] = costs["fp32_bytes"] if quantization == "fp32" else costs["int8_bytes"]
    costs["quantization"] = quantization
    return costs


def predict(costs: dict, spec: dict, *, clock_ghz: float | None = None) -> dict:
    """Predicted per-hop model time (us) on one board, with the terms that make it up."""
    a = spec["assumed"]
    ghz = clock_ghz or spec["clock_ghz"]
    int8 = costs["quantization"] != "fp32"
    peak = spec["int8_macs_per_cycle" if int8 else "fp32_macs_per_cycle"]
    compute_us = costs["macs_per_hop"] / (peak * a["gemv_efficiency"] * ghz * 1e3)
    wbytes = costs["weight_bytes"]
    cache_kib = spec["l2_kib"] + spec.get("l3_kib", 0)
    if wbytes <= spec["l2_kib"] * 1024:
        level, bw_gbps = "L2", a["cache_bytes_per_cycle"] * ghz
    elif wbytes <= cache_kib * 1024 and spec.get("l3_kib", 0):
        level, bw_gbps = "L3", a["cache_bytes_per_cycle"] * ghz / 2
    else:
        level, bw_gbps = "DRAM", spec["dram_peak_gbps"] * a["dram_efficiency"]
    memory_us = wbytes / (bw_gbps * 1e3)
    dispatch_us = costs["operators"] * a["op_overhead_us"]
    total = max(compute_us, memory_us) + dispatch_us
    return {
        "label": LABEL,
        "board": spec["name"],
        "clock_ghz": ghz,
        "per_hop_us": round(total, 1),
        "rtf": round(total / costs["hop_us"], 5),
        "bound": "compute" if compute_us >= memory_us else f"memory ({level})",
        "weights_from": level,
        "terms_us": {"compute": round(compute_us, 1), "memory": round(memory_us, 1), "dispatch": round(dispatch_us, 1)},
    }


def predict_boards(manifest: dict, quantization: str, boards: tuple[str, ...] = ("rpi4", "rpi5")) -> dict[str, dict]:
    specs = load_specs()
    costs = bundle_costs(manifest, quantization)
    return {b: {"costs": costs, **predict(costs, specs[b])} for b in boards}
