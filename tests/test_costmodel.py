"""The cost model: its torch-free MAC/parameter arithmetic agrees with `edge-pse models --json` (which counts
from the modules), and its Pi 4 / Pi 5 predictions follow the published figures and are labelled."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from firmware_host.costmodel import LABEL, bundle_costs, config_costs, load_specs, predict, predict_boards


@pytest.fixture(scope="module")
def models_json() -> list[dict]:
    pytest.importorskip("torch")
    res = subprocess.run(
        [sys.executable, "-m", "edge_pse", "models", "--json"], capture_output=True, text=True, timeout=300, check=True
    )
    return json.loads(res.stdout)


def test_config_arithmetic_matches_the_counted_model(models_json) -> None:
    for row in models_json:
        keys = ("n_filters", "width", "n_blocks", "ff_dim", "conditioning")
        cfg = {k: row[k] for k in keys} | {"spk_dim": 256, "hop": 160}
        got = config_costs(cfg)
        for key in ("params", "macs_per_hop", "fp32_bytes", "int8_bytes"):
            assert got[key] == row[key], (row["name"], key)


def test_config_costs_import_no_torch() -> None:
    code = "import sys; sys.modules['torch'] = None\nfrom firmware_host.costmodel import predict_boards\nprint('ok')"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_predictions_follow_the_published_figures() -> None:
    from edge_pse.model.config import PRESETS

    tiny = {"config": PRESETS["tiny"].to_dict()}
    teacher = {"config": PRESETS["teacher"].to_dict()}
    p = predict_boards(tiny, "int8-ptq")
    assert p["rpi5"]["per_hop_us"] < p["rpi4"]["per_hop_us"]  # A76 at 2.4 GHz with SDOT beats A72 at 1.5 GHz
    assert p["rpi4"]["weights_from"] == "L2"  # tiny's int8 weights (0.46 MiB) fit the Pi 4's 1 MiB L2
    assert all(v["label"] == LABEL and "PREDICTION" in v["label"] for v in p.values())
    t = predict_boards(teacher, "int8-ptq")["rpi4"]
    assert t["weights_from"] == "DRAM" and t["per_hop_us"] > 5 * p["rpi4"]["per_hop_us"]
    fp32 = predict_boards(tiny, "fp32")["rpi4"]
    assert fp32["per_hop_us"] > p["rpi4"]["per_hop_us"]  # 4x the bytes, half the MAC rate
    # a faster clock never predicts a slower hop
    spec = load_specs()["rpi4"]
    costs = bundle_costs(tiny, "int8-ptq")
    assert predict(costs, spec, clock_ghz=1.8)["per_hop_us"] < predict(costs, spec)["per_hop_us"]


def test_specs_cite_their_sources() -> None:
    for name, spec in load_specs().items():
        assert spec["sources"] and all(s.startswith(("http", "Arm ")) for s in spec["sources"]), name
        for key in ("cores", "clock_ghz", "l2_kib", "dram_peak_gbps", "int8_macs_per_cycle", "fp32_macs_per_cycle"):
            assert spec[key] > 0, (name, key)


def test_manifest_figures_override_the_config_arithmetic() -> None:
    from edge_pse.model.config import PRESETS

    m = {"config": PRESETS["tiny"].to_dict(), "costs": {"macs_per_hop": 1000}}
    assert bundle_costs(m, "int8-ptq")["macs_per_hop"] == 1000
