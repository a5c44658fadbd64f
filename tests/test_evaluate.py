"""`edge-pse evaluate`: per-condition JSON on a held-out set built from a data root."""

import json

import torch

from edge_pse.data.mixtures import CONDITIONS
from edge_pse.data.sources import scan
from edge_pse.model.checkpoint import save_checkpoint
from edge_pse.model.config import get_preset
from edge_pse.model.e3net import E3Net
from tests.test_cli import edge_pse


def test_evaluate_json_has_every_condition(synthetic_root, tmp_path) -> None:
    assert len(scan(synthetic_root, "test")[0]) >= 2
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(ckpt, E3Net(get_preset("tiny")), "tiny")
    res = edge_pse(
        "evaluate",
        "--checkpoint",
        str(ckpt),
        "--data",
        str(synthetic_root),
        "--json",
        "--fast",
        "--per-condition",
        "2",
        "--seconds",
        "2",
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    for c in CONDITIONS:
        assert out[c]["count"] == 2
    for c in ("noise", "interferer", "both", "reverberant"):
        assert isinstance(out[c]["si_sdri"], float) and 0.0 <= out[c]["tsos"] <= 1.0
        assert 0.0 <= out[c]["tsos_share"] <= 1.0
    assert isinstance(out["absent"]["absent_level_db"], float)


def test_evaluate_bad_inputs(tmp_path) -> None:
    res = edge_pse("evaluate", "--checkpoint", str(tmp_path / "nope.pt"), "--data", str(tmp_path), "--json")
    assert res.returncode == 2 and "not found" in res.stderr and "Traceback" not in res.stderr
    save_checkpoint(tmp_path / "t.pt", E3Net(get_preset("tiny")), "tiny")
    res = edge_pse("evaluate", "--checkpoint", str(tmp_path / "t.pt"), "--data", str(tmp_path), "--json")
    assert res.returncode == 2 and "no speech/ folder" in res.stderr
