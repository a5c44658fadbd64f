"""`edge-pse bench` as users run it: a tiny random-weight bundle and plug-ins through the matrix, reports
written and well-formed, quality aligned hop by hop, bad arguments refused with clear messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_pse.bench.report import load_report

REPO = Path(__file__).resolve().parent.parent

# a user's own streaming model, as the plug-in interface documents it (docs/bench.md)
DELAY_PLUGIN = '''
import numpy as np


class Delay:
    """Outputs the previous hop unchanged: a model with one hop of lag and no effect."""

    hop = 160
    lag_hops = 1
    name = "delay"

    def __init__(self):
        self.prev = np.zeros(self.hop, np.float32)
        self.out = np.zeros(self.hop, np.float32)

    def reset(self):
        self.prev[:] = 0

    def process(self, hop):
        self.out[:] = self.prev
        self.prev[:] = hop
        return self.out


def make(threads=1):
    return Delay()


def broken(threads=1):
    d = Delay()
    d.process = lambda hop: hop[:10]
    return d
'''


def bench(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "edge_pse", "bench", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


@pytest.fixture(scope="module")
def fp32_bundle(tmp_path_factory) -> tuple[Path, Path]:
    """A random-weight tiny model exported to an fp32 ONNX bundle (under a second), and its checkpoint."""
    torch = pytest.importorskip("torch")
    from edge_pse.exporters.pipeline import ExportOptions, export_bundle
    from edge_pse.model.checkpoint import save_checkpoint
    from edge_pse.model.config import get_preset
    from edge_pse.model.e3net import E3Net
    from edge_pse.quant.calibration import CalibrationSet, synthetic_clips

    rng = np.random.default_rng(0)

    def embed(_w: np.ndarray) -> np.ndarray:
        v = rng.random(256).astype(np.float32)
        return v / np.linalg.norm(v)

    torch.manual_seed(0)
    model = E3Net(get_preset("tiny")).eval()
    clips = synthetic_clips(2, 1, 0.5, 0, embed)
    calib = CalibrationSet([c for c in clips if not c.heldout], [c for c in clips if c.heldout], "test")
    root = tmp_path_factory.mktemp("bundles")
    out = root / "tiny-fp32"
    export_bundle(
        model,
        "tiny",
        "random",
        calib,
        out,
        ExportOptions(mode="fp32", formats=("onnx",), latency_hops=5),
        log=lambda *_: None,
    )
    save_checkpoint(root / "tiny.pt", model, "tiny")
    return out, root / "tiny.pt"


@pytest.fixture
def plugin_dir(tmp_path) -> Path:
    (tmp_path / "userpeer.py").write_text(DELAY_PLUGIN)
    return tmp_path


def test_bench_writes_a_valid_report_json_md_html(fp32_bundle, tmp_path) -> None:
    bundle, _ = fp32_bundle
    out = tmp_path / "report"
    plugin = "edge_pse.bench.plugins:passthrough"
    opts = "--device rpi --backends onnx --threads 1,2 --hops 60 --warmup 5 --peers none".split()
    res = bench("--models", str(bundle), plugin, *opts, "--output", str(out))
    assert res.returncode == 0, res.stderr
    rep = load_report(out / "report.json")
    assert rep["schema_version"] == 1 and rep["device_profile"] == "rpi4"
    assert rep["machine"]["cores"] >= 1 and rep["machine"]["cpu_model"] and rep["machine"]["versions"]["onnxruntime"]
    keys = [c["key"] for c in rep["cells"]]
    models = ("tiny/fp32/onnx", "passthrough/-/plugin")
    assert keys == [f"{m}/t{t}" for m in models for t in (1, 2)]
    onnx_size = (bundle / "model.onnx").stat().st_size
    for c in rep["cells"]:
        lat = c["latency_us"]
        assert "error" not in c
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert c["hops"] == 60 and len(c["latency_cdf_us"]) == 101
        assert c["latency_cdf_us"] == sorted(c["latency_cdf_us"])
        assert c["rtf"] == pytest.approx(lat["mean"] / 10_000, rel=0.02, abs=1e-6)
        assert c["rss_peak_mib"] >= c["rss_base_mib"] > 0 and c["load_ms"] > 0 and c["cpu_util_pct"] > 0
    assert rep["cells"][0]["file_bytes"] == onnx_size
    # the model's own process holds the runtime: more memory than the do-nothing plug-in's process
    assert rep["cells"][0]["rss_peak_mib"] > rep["cells"][2]["rss_peak_mib"]
    md = (out / "report.md").read_text()
    assert "| tiny/fp32/onnx/t1 |" in md and "CPU: " in md and "Device profile rpi4" in md
    # the cost model's Pi prediction sits beside the measurement, for bundle cells only, labelled as such
    from firmware_host.costmodel import predict_boards

    pred = rep["cells"][0]["prediction_us"]
    expected = predict_boards(json.loads((bundle / "manifest.json").read_text()), "fp32")
    assert pred["rpi4"]["per_hop_us"] == expected["rpi4"]["per_hop_us"] > 0 and "PREDICTION" in pred["label"]
    assert "prediction_us" not in rep["cells"][2]
    assert "not a measurement" in md and f"| tiny/fp32/onnx/t1 | {rep['cells'][0]['latency_us']['p50']:.1f} |" in md
    page = (out / "report.html").read_text()
    assert "PREDICTED rpi5 us" in page
    assert page.count("data:image/png;base64,") == 2  # latency CDF + spectrograms (no quality: no Pareto)
    assert (out / "latency_cdf.png").stat().st_size > 1000 and (out / "spectrograms.png").is_file()
    assert not list(out.glob(".*.tmp"))


def test_quality_is_time_aligned_and_matches_the_float_reference(fp32_bundle, plugin_dir, synthetic_root) -> None:
    """Hop by hop through ONNX equals the float PyTorch model on the same weights; a plug-in with one hop of
    lag that changes nothing scores exactly 0 dB SI-SDRi once its lag is dropped."""
    bundle, ckpt = fp32_bundle
    out = plugin_dir / "report"
    opts = "--backends onnx --hops 30 --warmup 3 --per-condition 1 --seconds 1.5 --fast".split()
    data = ["--eval-data", str(synthetic_root), "--teacher", str(ckpt)]
    res = bench("--models", str(bundle), "userpeer:make", *opts, *data, "--output", str(out), cwd=plugin_dir)
    assert res.returncode == 0, res.stderr
    rep = load_report(out / "report.json")
    ref = rep["reference"]["quality"]
    onnx, peer = rep["cells"]
    assert onnx["quality"]["si_sdri"] == pytest.approx(ref["si_sdri"], abs=0.05)
    assert abs(onnx["quality_vs_reference"]["si_sdri"]) < 0.05
    assert peer["key"] == "make/-/plugin/t1" and peer["quality"]["si_sdri"] == pytest.approx(0.0, abs=1e-3)
    assert peer["quality"]["absent_level_db"] == pytest.approx(0.0, abs=1e-3)
    assert set(onnx["per_condition"]) == {"noise", "interferer", "both", "absent", "reverberant"}
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 3  # + quality vs latency


def test_a_broken_plugin_fails_its_cell_not_the_report(plugin_dir) -> None:
    out = plugin_dir / "report"
    opts = "--models userpeer:broken userpeer:make --hops 10 --warmup 2".split()
    res = bench(*opts, "--output", str(out), cwd=plugin_dir)
    assert res.returncode == 1 and "Traceback" not in res.stderr and "1 cell(s) failed" in res.stderr
    cells = json.loads((out / "report.json").read_text())["cells"]
    assert "returned shape (10,), expected (160,)" in cells[0]["error"] and "error" not in cells[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models", "/nonexistent/bundle"], "neither a bundle folder nor a plug-in"),
        (["--models", "nosuchmodule_xyz:make"], "cannot import nosuchmodule_xyz"),
        (["--models", "ep:nothing"], "no bench plug-in entry point 'nothing'"),
        (["--models", "edge_pse.bench.plugins:passthrough", "--eval-data", "/nonexistent"], "not a data root"),
        (["--models", "edge_pse.bench.plugins:passthrough", "--eval-corpus", "x"], "--eval-corpus needs --eval-data"),
        (["--models", "edge_pse.bench.plugins:passthrough", "--device", "toaster"], "unknown device profile"),
        (["--models", "edge_pse.bench.plugins:passthrough", "--threads", "0"], "must be >= 1"),
        (["--models", "/nonexistent/bundle", "--threads", "1,200"], "--threads values must be <= 64"),
        (["--models", "/nonexistent/bundle", "--threads=-3"], "must be >= 1"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(args, message, tmp_path) -> None:
    res = bench(*args, "--output", str(tmp_path / "out"))
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "out" / "report.json").exists()


@pytest.mark.slow
def test_every_runtime_runs_the_shipped_int8_bundle_as_a_cell(tmp_path) -> None:
    """The shipped tiny int8 bundle on every backend it has a file for: each cell loads, times and reports."""
    bundle = REPO / "edge_pse" / "bundles" / "tiny-int8"
    if not (bundle / "manifest.json").is_file():
        pytest.skip("the shipped tiny int8 bundle is not in this checkout")
    opts = ["--hops", "200", "--warmup", "20", "--peers", "none"]
    res = bench("--models", str(bundle), *opts, "--output", str(tmp_path / "r"))
    assert res.returncode == 0, res.stderr
    rep = load_report(tmp_path / "r" / "report.json")
    files = json.loads((bundle / "manifest.json").read_text())["files"]
    sizes = {(f["format"], f["quantization"]): (bundle / f["path"]).stat().st_size for f in files}
    assert len(rep["cells"]) == len(files)
    for c in rep["cells"]:
        assert c["latency_us"]["p50"] > 0 and c["file_bytes"] == sizes[c["format"], c["quantization"]]


def test_bench_without_matplotlib_keeps_every_measurement(fp32_bundle, tmp_path) -> None:
    """A device install has no matplotlib: the bench still writes report.json and report.md and says why there
    are no plots, instead of measuring every cell and then losing them at the first plot."""
    bundle, _ = fp32_bundle
    out = tmp_path / "report"
    code = "import sys; sys.modules['matplotlib'] = None\nfrom edge_pse.cli import main; sys.exit(main(sys.argv[1:]))"
    res = subprocess.run(
        [sys.executable, "-c", code, "bench", "--models", str(bundle), "--backends", "onnx", "--threads", "1",
         "--hops", "40", "--warmup", "5", "--peers", "none", "--output", str(out)],
        capture_output=True, text=True, timeout=600, check=False, cwd=REPO,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    rep = load_report(out / "report.json")
    assert rep["cells"][0]["latency_us"]["p50"] > 0 and "edge-pse[report]" in rep["plots"]
    assert "Plots: not drawn: matplotlib is not installed" in (out / "report.md").read_text()
    assert not list(out.glob("*.png"))


def test_bench_on_a_litert_only_install_skips_the_other_runtimes_with_a_note(tmp_path) -> None:
    """The Pi install (`[litert]`) has neither ExecuTorch nor ONNX Runtime: the default bench runs the LiteRT
    cells, says which runtimes it skipped and exits 0 (it failed 4 cells and exited 1)."""
    out = tmp_path / "report"
    code = (
        "import sys\nfor m in ('executorch', 'onnxruntime', 'torch'): sys.modules[m] = None\n"
        "from edge_pse.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, "bench", "--models", str(REPO / "edge_pse" / "bundles" / "tiny-int8"),
         "--threads", "1", "--hops", "40", "--warmup", "5", "--peers", "none", "--output", str(out)],
        capture_output=True, text=True, timeout=600, check=False, cwd=REPO,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    rep = load_report(out / "report.json")
    assert {c["backend"] for c in rep["cells"]} == {"litert"} and all("error" not in c for c in rep["cells"])
    for b, extra in (("executorch", "executorch"), ("onnx", "onnx")):
        note = f"skipped the {b} cells: its runtime is not installed (pip install 'edge-pse[{extra}]')"
        assert note in rep["notes"] and note in " ".join(res.stderr.split())
