"""Compare two bench reports cell by cell: latency as ratios (machines are noisy; absolute times from two
machines mean little), quality as deltas, each against a tolerance. Cells are matched by key
(model/quantization/backend/threads); a cell only in one report is listed, not failed.

Default tolerances (docs/bench.md; override any of them with a TOML file of the same shape):
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from edge_pse.bench.quality import HIGHER_IS_BETTER
from edge_pse.errors import EdgePseError

DEFAULT_TOLERANCES: dict = {
    # divide latency ratios by the machines' speed-probe ratio, so a busier/slower machine is not a regression
    "normalize_machine_speed": True,
    "latency": {"p50_ratio": 1.25, "p99_ratio": 1.60},  # current / baseline, upper limits
    "resources": {"rss_ratio": 1.25, "file_ratio": 1.10, "load_ratio": 2.00},
    # allowed worsening, in each metric's own unit (dB, PESQ points, STOI, pDNSMOS points, WER, TSOS rate, dB)
    "quality": {
        "si_sdri": 0.5,
        "gap": 0.5,
        "onset_200ms": 0.1,
        "pesq": 0.10,
        "stoi": 0.02,
        "pdnsmos_ovrl": 0.10,
        "wer": 0.03,
        "tsos": 0.05,
        "absent_level_db": 2.0,
    },
}


def load_tolerances(path: str | Path | None) -> dict:
    """Defaults, overridden by a TOML file; unknown keys are refused (a typo must not silently loosen a check)."""
    tol = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULT_TOLERANCES.items()}
    if path is None:
        return tol
    path = Path(path)
    if not path.is_file():
        raise EdgePseError(f"tolerances file not found: {path}")
    try:
        user = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise EdgePseError(f"{path}: not valid TOML ({e})") from None
    for k, v in user.items():
        if k not in tol:
            raise EdgePseError(f"{path}: unknown key {k!r} (known: {', '.join(tol)})")
        if isinstance(tol[k], dict):
            if not isinstance(v, dict):
                raise EdgePseError(f"{path}: [{k}] must be a table")
            bad = set(v) - set(tol[k])
            if bad:
                raise EdgePseError(f"{path}: unknown keys in [{k}]: {sorted(bad)} (known: {sorted(tol[k])})")
            for kk, vv in v.items():
                if not isinstance(vv, int | float) or isinstance(vv, bool) or vv < 0:
                    raise EdgePseError(f"{path}: {k}.{kk} must be a non-negative number")
            tol[k].update({kk: float(vv) for kk, vv in v.items()})
        elif not isinstance(v, bool):
            raise EdgePseError(f"{path}: {k} must be true or false")
        else:
            tol[k] = v
    return tol


@dataclass
class Check:
    key: str  # cell key
    metric: str
    baseline: float | None
    current: float | None
    change: float | None  # ratio (latency/resources) or delta (quality)
    limit: float | None
    kind: str  # "ratio" | "delta" | "status"
    failed: bool
    note: str = ""


def _probe(rep: dict) -> float | None:
    m = rep.get("machine", {})
    vals = [v for v in (m.get("speed_probe_us"), m.get("speed_probe_after_us")) if isinstance(v, int | float) and v > 0]
    return min(vals) if vals else None  # the less disturbed of the two probes


def machine_factor(baseline: dict, current: dict, tol: dict) -> float:
    if not tol["normalize_machine_speed"]:
        return 1.0
    b, c = _probe(baseline), _probe(current)
    return c / b if b and c else 1.0


def compare(baseline: dict, current: dict, tol: dict) -> tuple[list[Check], dict]:
    """All checks for the cells both reports have, plus a summary (factor, cells only in one report)."""
    base = {c["key"]: c for c in baseline["cells"]}
    cur = {c["key"]: c for c in current["cells"]}
    factor = machine_factor(baseline, current, tol)
    checks: list[Check] = []
    for key, c in cur.items():
        b = base.get(key)
        if b is None:
            continue
        if "error" in c or "error" in b:
            failed = "error" in c and "error" not in b
            checks.append(
                Check(key, "runs", None, None, None, None, "status", failed, c.get("error", "") or b.get("error", ""))
            )
            continue
        for p in ("p50", "p99"):
            bv, cv = b["latency_us"][p], c["latency_us"][p]
            ratio = cv / bv / factor if bv else None
            lim = tol["latency"][f"{p}_ratio"]
            checks.append(
                Check(key, f"latency {p} (us)", bv, cv, ratio, lim, "ratio", ratio is not None and ratio > lim)
            )
        for metric, field, lim_key, scale in (
            ("peak RSS (MiB)", "rss_peak_mib", "rss_ratio", 1.0),
            ("file (bytes)", "file_bytes", "file_ratio", 1.0),
            ("load (ms)", "load_ms", "load_ratio", factor),
        ):
            bv, cv = b.get(field), c.get(field)
            if not bv or cv is None:
                continue
            ratio = cv / bv / scale
            lim = tol["resources"][lim_key]
            checks.append(Check(key, metric, bv, cv, ratio, lim, "ratio", ratio > lim))
        bq, cq = b.get("quality") or {}, c.get("quality") or {}
        for metric, lim in tol["quality"].items():
            bv, cv = bq.get(metric), cq.get(metric)
            if bv is None or cv is None:
                continue
            delta = cv - bv
            worse = -delta if HIGHER_IS_BETTER[metric] else delta
            checks.append(Check(key, metric, bv, cv, delta, lim, "delta", worse > lim))
    summary = {
        "machine_factor": round(factor, 3),
        "only_baseline": sorted(set(base) - set(cur)),
        "only_current": sorted(set(cur) - set(base)),
        "compared": sorted(set(base) & set(cur)),
    }
    return checks, summary
