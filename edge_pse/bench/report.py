"""The bench report: report.json (versioned schema), report.md (tables) and report.html (self-contained:
tables plus the latency CDFs, the quality/latency Pareto plot and the before/after spectrograms as
base64 PNGs; each plot is also written as a PNG beside it). Written to temp files, then renamed."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from edge_pse.atomic import write_bytes
from edge_pse.errors import EdgePseError

SCHEMA = "edge-pse-bench-report"
SCHEMA_VERSION = 1
_REQUIRED = ("schema", "schema_version", "created", "machine", "settings", "cells")
_CELL_REQUIRED = ("key", "model", "backend", "quantization", "threads")
QUALITY_COLS = (
    "si_sdri",
    "gap",
    "target_gain_db",
    "onset_200ms",
    "pesq",
    "stoi",
    "pdnsmos_ovrl",
    "wer",
    "tsos",
    "absent_level_db",
)


def stamp(report: dict) -> dict:
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION} | report


def load_report(path: str | Path) -> dict:
    """Read and check a report.json; EdgePseError with what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise EdgePseError(f"report not found: {path}")
    try:
        rep = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EdgePseError(f"{path} is not a JSON report: {e}") from None
    if not isinstance(rep, dict) or rep.get("schema") != SCHEMA:
        raise EdgePseError(f"{path} is not an edge-pse bench report (schema {SCHEMA!r} expected)")
    v = rep.get("schema_version")
    if not isinstance(v, int) or not 1 <= v <= SCHEMA_VERSION:
        raise EdgePseError(f"{path}: report schema version {v!r}; this edge-pse reads 1..{SCHEMA_VERSION}")
    missing = [k for k in _REQUIRED if k not in rep]
    if missing:
        raise EdgePseError(f"{path}: missing keys {missing}")
    if not isinstance(rep["cells"], list):
        raise EdgePseError(f"{path}: 'cells' must be a list")
    for i, c in enumerate(rep["cells"]):
        bad = [k for k in _CELL_REQUIRED if not isinstance(c, dict) or k not in c]
        if bad:
            raise EdgePseError(f"{path}: cells[{i}] lacks {bad}")
    return rep


def _fmt(v, nd: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _kib(b) -> str:
    return "-" if b is None else f"{b / 1024:.0f}"


def cell_table(rep: dict) -> tuple[list[str], list[list[str]]]:
    """The one table both report.md and report.html show."""
    head = ["cell", "hop ms", "KiB", "load ms", "p50 us", "p90 us", "p99 us", "max us", "RTF", "CPU %", "RSS MiB"]
    has_q = any("quality" in c for c in rep["cells"])
    if has_q:
        head += [
            "SI-SDRi",
            "vs ref",
            "gap",
            "level dB",
            "onset 200ms",
            "PESQ",
            "STOI",
            "pDNSMOS",
            "WER",
            "TSOS",
            "absent dB",
        ]
    rows = []
    for c in rep["cells"]:
        if "error" in c:
            rows.append([c["key"], "error: " + c["error"]] + [""] * (len(head) - 2))
            continue
        lat = c["latency_us"]
        row = [
            c["key"],
            _fmt(hop_ms(c), 0),
            _kib(c.get("file_bytes")),
            _fmt(c["load_ms"], 1),
            _fmt(lat["p50"], 1),
            _fmt(lat["p90"], 1),
            _fmt(lat["p99"], 1),
            _fmt(lat["max"], 0),
            _fmt(c["rtf"], 4),
            _fmt(c["cpu_util_pct"], 0),
            _fmt(c["rss_peak_mib"], 0),
        ]
        if has_q:
            q, d = c.get("quality", {}), c.get("quality_vs_reference", {})
            row += [_fmt(q.get("si_sdri")), _fmt(d.get("si_sdri")), _fmt(q.get("gap")), _fmt(q.get("target_gain_db"))]
            row.append(_fmt(q.get("onset_200ms")))
            row += [_fmt(q.get(k)) for k in ("pesq", "stoi", "pdnsmos_ovrl", "wer", "tsos", "absent_level_db")]
        rows.append(row)
    return head, rows


def hop_ms(cell: dict) -> float | None:
    """The cell's hop duration (its latency is per call, its RTF per this): 10 ms ours, 8 DTLN, 16 GTCRN."""
    if cell.get("hop_ms") is not None:
        return float(cell["hop_ms"])
    if cell.get("hop") and cell.get("sample_rate"):  # reports written before hop_ms was recorded
        return 1e3 * cell["hop"] / cell["sample_rate"]
    return None


PREDICTED_BOARDS = ("rpi4", "rpi5")


def prediction_table(rep: dict) -> tuple[list[str], list[list[str]]] | None:
    """Measured p50 beside the cost model's per-hop prediction for a Pi 4 / Pi 5 (firmware_host.costmodel)."""
    cells = [c for c in rep["cells"] if "prediction_us" in c and "latency_us" in c]
    if not cells:
        return None
    head = ["cell", "measured p50 us (this machine)"] + [f"PREDICTED {b} us (bound)" for b in PREDICTED_BOARDS]
    rows = [
        [c["key"], _fmt(c["latency_us"]["p50"], 1)]
        + [f"{c['prediction_us'][b]['per_hop_us']:.1f} ({c['prediction_us'][b]['bound']})" for b in PREDICTED_BOARDS]
        for c in cells
    ]
    return head, rows


def prediction_note(rep: dict) -> str:
    label = next(c["prediction_us"]["label"] for c in rep["cells"] if "prediction_us" in c)
    return (
        f"Predicted columns: {label}: a roofline from the bundle's MACs and weight bytes and the boards' published "
        "figures (firmware_host/device_specs.toml), one thread. Measure on the device (edge-pse bench --target)."
    )


def machine_lines(rep: dict) -> list[str]:
    m = rep["machine"]
    vers = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items() if v)
    return [
        f"CPU: {m.get('cpu_model')} ({m.get('arch')}), {m.get('cores')} cores ({m.get('cores_usable')} usable), "
        f"governor {m.get('governor') or 'not readable'}, max {m.get('max_freq_mhz') or '?'} MHz",
        f"Board: {m.get('board') or '-'}; OS: {m.get('os')}; Python {m.get('python')}",
        f"Runtimes: {vers}",
        f"Load average at start: {m.get('load_avg')}; speed probe {m.get('speed_probe_us')} us before, "
        f"{m.get('speed_probe_after_us')} us after (a busy or throttled machine shows a slower probe)",
    ]


def settings_lines(rep: dict) -> list[str]:
    s = rep["settings"]
    out = [
        f"Device profile {rep.get('device_profile', '-')}; {s['hops']} timed hops per cell after {s['warmup']} "
        f"warm-up hops, each cell in its own process; deadline {s['deadline_us'] / 1000:g} ms per 10 ms hop "
        "(in proportion for a cell with another hop)."
    ]
    if s.get("peers"):
        peers = sorted({c["model"] for c in rep["cells"] if c.get("kind") == "peer"})
        out.append(
            f"Peers: {', '.join(peers)} (published models, MIT-licensed, not personalized: they enhance every "
            f"voice), read from {s['peers']}, streamed as their authors' real-time scripts do."
        )
    ev = s.get("eval")
    if ev:
        names = {"intrusive": "PESQ, STOI", "dnsmos": "pDNSMOS", "asr": "WER (Whisper pseudo-labels)"}
        extras = [v for k, v in names.items() if ev.get(k)]
        out.append(
            f"Quality: {ev['per_condition']} clips of {ev['seconds']} s per condition from the {ev['split']} split "
            f"of {ev['data']} (metrics: SI-SDRi, TSOS, target-absent level{', ' if extras else ''}"
            f"{', '.join(extras)}); each model file run hop by hop by its backend, output aligned by dropping "
            "the model's own lag (one hop for ours, 3 x 8 ms for DTLN, 1 x 16 ms for GTCRN)."
        )
    else:
        out.append("Quality: not measured (no --eval-data).")
    return out


def markdown(rep: dict) -> str:
    head, rows = cell_table(rep)
    lines = [f"# edge-pse bench report ({rep['created']})", ""]
    lines += [f"- {x}" for x in machine_lines(rep) + settings_lines(rep)]
    lines += [f"- Note: {n}" for n in rep.get("notes", [])]
    if rep.get("plots"):
        lines.append(f"- Plots: {rep['plots']}")
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    ref = rep.get("reference")
    if ref:
        q = ref["quality"]
        lines += ["", f"Reference: {ref['name']}: " + ", ".join(f"{k} {_fmt(q.get(k))}" for k in QUALITY_COLS)]
    pred = prediction_table(rep)
    if pred:
        lines += ["", "## Cost-model prediction for a Raspberry Pi (not a measurement)", "", prediction_note(rep)]
        lines += ["", "| " + " | ".join(pred[0]) + " |", "|" + "---|" * len(pred[0])]
        lines += ["| " + " | ".join(r) + " |" for r in pred[1]]
    lines += [
        "",
        "Latency is per hop (one call; 'hop ms' is its duration: 10 ms for ours, 8 ms DTLN, 16 ms GTCRN), "
        "RTF = mean latency / that hop's duration (so cells with different hops compare per second of audio), "
        "CPU % = process CPU time / wall "
        "time while timing (100 = one core), RSS = peak resident memory of the cell's own process. "
        "'vs ref' = SI-SDRi minus the float reference's; 'gap' = SI-SDRi minus SI-SDRi with another speaker's "
        "profile (0: the speaker is ignored); 'level dB' = the target's level at the output vs its own.",
    ]
    return "\n".join(lines) + "\n"


# ---- plots ----


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def plot_cdf(rep: dict) -> bytes | None:
    import matplotlib.pyplot as plt

    cells = [c for c in rep["cells"] if c.get("latency_cdf_us")]
    if not cells:
        return None
    fig, ax = plt.subplots(figsize=(9, 5))
    q = np.linspace(0, 1, len(cells[0]["latency_cdf_us"]))
    for c in cells:
        ax.plot(c["latency_cdf_us"], q, label=c["key"], lw=1.2)
    ax.set_xscale("log")
    ax.set_xlabel("per-hop latency (us, log)")
    ax.set_ylabel("fraction of hops")
    ax.set_title("Latency CDF per cell")
    ax.axvline(rep["settings"]["deadline_us"], color="k", ls=":", lw=1)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6, ncol=2 if len(cells) > 12 else 1, loc="lower right")
    return _png(fig)


def plot_pareto(rep: dict) -> bytes | None:
    import matplotlib.pyplot as plt

    pts = [
        c
        for c in rep["cells"]
        if c.get("quality", {}).get("si_sdri") is not None and c.get("latency_us") and c["threads"] == min_threads(rep)
    ]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(9, 5.5))
    markers = {"litert": "o", "onnx": "s", "executorch": "^", "torch": "D", "plugin": "*"}
    models = sorted({c["model"] for c in pts})
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    for c in pts:
        xy = (p50_per_10ms(c), c["quality"]["si_sdri"])
        ax.scatter(*xy, marker=markers.get(c["backend"], "x"), color=colours[c["model"]], s=45)
        short = c["quantization"].replace("int8-", "")
        ax.annotate(short, xy, fontsize=6, xytext=(3, 3), textcoords="offset points")
    for m in models:
        ax.scatter([], [], color=colours[m], marker="o", label=m)
    for be in sorted({c["backend"] for c in pts}):
        ax.scatter([], [], color="grey", marker=markers.get(be, "x"), label=be)
    front = pareto_front([(p50_per_10ms(c), c["quality"]["si_sdri"]) for c in pts])
    if len(front) > 1:
        ax.plot(*zip(*front, strict=True), "k--", lw=0.8, label="Pareto front")
    ax.legend(fontsize=7, loc="best")
    ref = rep.get("reference")
    if ref and ref["quality"].get("si_sdri") is not None:
        ax.axhline(ref["quality"]["si_sdri"], color="g", ls=":", lw=1)
        ax.text(0.01, ref["quality"]["si_sdri"], ref["name"], transform=ax.get_yaxis_transform(), fontsize=7, color="g")
    ax.set_xscale("log")
    ax.set_xlabel(
        f"p50 latency per 10 ms of audio (us, log; a cell's per-hop p50 x 10 ms / its hop), "
        f"{min_threads(rep)} thread(s)"
    )
    ax.set_ylabel("SI-SDRi (dB)")
    ax.set_title("Quality vs latency")
    ax.grid(alpha=0.3, which="both")
    return _png(fig)


def p50_per_10ms(cell: dict) -> float:
    """The per-hop p50 scaled to 10 ms of audio, so the peers' 8 and 16 ms hops sit on our 10 ms scale."""
    ms = hop_ms(cell) or 10.0
    return cell["latency_us"]["p50"] * 10.0 / ms


def min_threads(rep: dict) -> int:
    return min((c["threads"] for c in rep["cells"]), default=1)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both latency (lower) and quality (higher), by latency."""
    front, best = [], -np.inf
    for lat, q in sorted(points):
        if q > best:
            front.append((lat, q))
            best = q
    return front


def spectrogram_db(x: np.ndarray, sr: int = 16_000, n: int = 512, step: int = 128):
    """Power spectrogram in dB (Hann window): numpy only, so the report needs no scipy on a device."""
    if len(x) < n:
        x = np.pad(x, (0, n - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, n)[::step]
    win = np.hanning(n)
    power = np.abs(np.fft.rfft(frames * win, axis=-1)) ** 2 / (sr * (win**2).sum())
    t = (np.arange(len(frames)) * step + n / 2) / sr
    return np.fft.rfftfreq(n, 1 / sr), t, 10 * np.log10(power.T + 1e-12)


def plot_spectrograms(clip: dict | None) -> bytes | None:
    import matplotlib.pyplot as plt

    if not clip:
        return None
    panels = [("mixture (before)", clip["mixture"])]
    if clip.get("target") is not None:
        panels.append(("clean target", clip["target"]))
    panels += [(f"{k} (after)", v) for k, v in clip["outputs"].items()]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 1.9 * len(panels)), sharex=True)
    axes = np.atleast_1d(axes)
    for ax, (title, x) in zip(axes, panels, strict=True):
        f, t, db = spectrogram_db(np.asarray(x, np.float64))
        ax.pcolormesh(t, f / 1000, db, vmin=-110, vmax=-30, cmap="magma", shading="auto")
        ax.set_ylabel("kHz")
        ax.set_title(title, fontsize=8)
    axes[-1].set_xlabel("time (s)")
    fig.tight_layout()
    return _png(fig)


def html_page(rep: dict, plots: dict[str, bytes]) -> str:
    esc = html.escape

    def html_table(head: list[str], rows: list[list[str]]) -> str:
        t = "<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>"
        t += "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in r) + "</tr>" for r in rows)
        return t + "</tbody></table>"

    table = html_table(*cell_table(rep))
    pred = prediction_table(rep)
    if pred:
        table += "<h2>Cost-model prediction for a Raspberry Pi (not a measurement)</h2>"
        table += f"<p>{esc(prediction_note(rep))}</p>" + html_table(*pred)
    figs = "".join(
        f'<figure><img alt="{esc(name)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        f"<figcaption>{esc(name)}</figcaption></figure>"
        for name, png in plots.items()
    )
    items = "".join(f"<li>{esc(x)}</li>" for x in machine_lines(rep) + settings_lines(rep))
    items += "".join(f"<li>Note: {esc(n)}</li>" for n in rep.get("notes", []))
    ref = rep.get("reference")
    if ref:
        q = ref["quality"]
        items += f"<li>Reference: {esc(ref['name'])}: " + esc(", ".join(f"{k} {_fmt(q.get(k))}" for k in QUALITY_COLS))
        items += "</li>"
    # the script only marks the page once every plot has decoded, so a headless browser can check it
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>edge-pse bench {esc(rep["created"])}</title>
<style>
body{{font-family:sans-serif;margin:1.5em;color:#222}} table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}} td:first-child{{text-align:left}}
th{{background:#eee}} figure{{margin:1em 0}} img{{max-width:100%}} li{{margin:.2em 0}}
</style></head>
<body>
<h1>edge-pse bench report</h1>
<p>{esc(rep["created"])}, edge-pse {esc(str(rep.get("edge_pse_version")))}</p>
<ul>{items}</ul>
<h2>Cells</h2>
{table}
<h2>Plots</h2>
{figs}
<script>
window.addEventListener("load", function () {{
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++;
  document.body.setAttribute("data-plots-decoded", ok + "/" + imgs.length);
}});
</script>
</body></html>
"""


PLOTS = {"latency_cdf.png": plot_cdf, "quality_vs_latency.png": plot_pareto}
NO_PLOTS = "not drawn: matplotlib is not installed (pip install 'edge-pse[report]')"


def write_report(rep: dict, out: str | Path, clip: dict | None = None) -> list[Path]:
    """Write report.json/.md/.html and the plot PNGs into `out`; returns the paths written. Without matplotlib
    (a device install) the measurements are still written, and the reports say that plots need the `report`
    extra: a missing plotting library never loses a bench's measurements."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rep = stamp(rep)
    plots: dict[str, bytes] = {}
    try:
        import matplotlib
    except ImportError:
        rep["plots"] = NO_PLOTS
    else:
        matplotlib.use("Agg")
        for name, fn in PLOTS.items():
            png = fn(rep)
            if png:
                plots[name] = png
        spec = plot_spectrograms(clip)
        if spec:
            plots["spectrograms.png"] = spec
    written = []
    for name, png in plots.items():
        write_bytes(out / name, png)
        written.append(out / name)
    for name, text in (
        ("report.json", json.dumps(rep, indent=1) + "\n"),
        ("report.md", markdown(rep)),
        ("report.html", html_page(rep, plots)),
    ):
        write_bytes(out / name, text.encode())
        written.append(out / name)
    return written
