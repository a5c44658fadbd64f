"""Structured pruning: it keeps the channels that do the work, and its output fine-tunes as the preset."""

from dataclasses import replace

import pytest
import torch

from edge_pse.model.checkpoint import load_model, save_checkpoint
from edge_pse.model.config import get_preset
from edge_pse.model.e3net import E3Net
from edge_pse.model.prune import channel_scores, prune
from tests.test_cli import edge_pse

DEAD_FILTERS = [3, 10, 21]
DEAD_UNITS = [0, 7, 30]


def dead_channel_model() -> E3Net:
    """A small E3Net with random weights where some filters and feed-forward units feed nothing forward."""
    torch.manual_seed(0)
    model = E3Net(replace(get_preset("tiny"), n_filters=48, ff_dim=32)).eval()
    n = model.cfg.n_filters
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.decoder.weight[DEAD_FILTERS] = 0.0
        model.fusion.weight[:, DEAD_FILTERS] = 0.0
        assert all(f < n for f in DEAD_FILTERS)
        for block in model.blocks:
            block.ff.fc2.weight[:, DEAD_UNITS] = 0.0
    return model


def batches(model: E3Net, count: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(0.1 * torch.randn(2, 3200, generator=g), torch.randn(2, model.cfg.spk_dim, generator=g))] * count


def test_pruning_drops_exactly_the_channels_that_feed_nothing() -> None:
    model = dead_channel_model()
    scores = channel_scores(model, batches(model))
    assert (scores.filters[DEAD_FILTERS] == 0).all() and (scores.filters.count_nonzero() == 48 - len(DEAD_FILTERS))
    pruned = prune(model, scores, 48 - len(DEAD_FILTERS), 32 - len(DEAD_UNITS))
    live = [f for f in range(48) if f not in DEAD_FILTERS]
    assert pruned.cfg.n_filters == 45 and pruned.cfg.ff_dim == 29
    assert torch.equal(pruned.encoder.weight, model.encoder.weight[live])
    assert torch.equal(pruned.decoder.weight, model.decoder.weight[live])
    assert torch.equal(pruned.mask.weight, model.mask.weight[live])
    assert torch.equal(pruned.fusion.weight[:, 45:], model.fusion.weight[:, 48:])  # the speaker's columns stay
    units = [u for u in range(32) if u not in DEAD_UNITS]
    assert torch.equal(pruned.blocks[1].ff.fc1.weight, model.blocks[1].ff.fc1.weight[units])


def test_dropping_dead_units_keeps_the_function_and_keeping_everything_is_the_identity() -> None:
    """Feed-forward units sit before a LayerNorm over the width, so dead ones leave the output exactly as it was;
    fewer filters change the encoder LayerNorm's statistics (why a pruned model is fine-tuned)."""
    model = dead_channel_model()
    scores = channel_scores(model, batches(model))
    wave, spk = batches(model, 1)[0]
    with torch.no_grad():
        want = model(wave, spk)
        assert torch.equal(prune(model, scores, 48, 32)(wave, spk), want)
        torch.testing.assert_close(prune(model, scores, 48, 29)(wave, spk), want, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(prune(model, scores, 45, 32)(wave, spk), want, atol=1e-6)
    with pytest.raises(ValueError, match="pruning keeps"):
        prune(model, scores, 49, 32)


def test_prune_cli_writes_a_checkpoint_that_fine_tunes_and_resumes_at_its_sizes(synthetic_root, tmp_path) -> None:
    from edge_pse.train.trainer import TrainConfig, Trainer

    preset = get_preset("tiny")
    small = replace(preset, n_filters=preset.n_filters - 16, ff_dim=preset.ff_dim - 8)
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(ckpt, E3Net(preset), "tiny")
    out = tmp_path / "pruned.pt"
    args = ("--checkpoint", str(ckpt), "--data", str(synthetic_root), "--examples", "4", "--seconds", "1")
    sizes = ("--n-filters", str(small.n_filters), "--ff-dim", str(small.ff_dim))
    res = edge_pse("prune", *args, *sizes, "--output", str(out))
    assert res.returncode == 0, res.stderr
    model, payload = load_model(out)
    assert model.cfg == small and payload["preset"] == "tiny"
    stage = payload["extra"]["lineage"][-1]
    want = {"n_filters": [preset.n_filters, small.n_filters], "ff_dim": [preset.ff_dim, small.ff_dim]}
    assert stage["pruned"] == want
    assert stage["command"].startswith("edge-pse prune --checkpoint")
    from edge_pse.train.ship import _stage_line  # the model card lists the prune among the training stages

    line = _stage_line(stage)
    assert f"n_filters {preset.n_filters} -> {small.n_filters}, ff_dim {preset.ff_dim} -> {small.ff_dim}" in line
    assert stage["command"] in line and "None" not in line

    def trainer() -> Trainer:
        cfg = TrainConfig(preset="tiny", data=str(synthetic_root), out=str(tmp_path / "run"), seconds=1.0, batch=2)
        return Trainer(cfg)

    t = trainer()  # the preset's sizes until --init says otherwise
    assert t.model.cfg == preset
    t.init_from(out)
    assert t.model.cfg == small
    assert all(torch.equal(p, q) for p, q in zip(t.model.parameters(), model.parameters(), strict=True))
    t.train_step()  # the optimizer holds the pruned model's parameters
    assert not torch.equal(t.model.encoder.weight, model.encoder.weight)
    t.save()
    resumed = trainer()
    assert resumed.resume() and resumed.model.cfg == small and resumed.lineage == t.lineage
    assert [st["pruned"] for st in resumed.lineage if "pruned" in st] == [want]

    # refused before any work, nothing written, the input untouched
    bad = edge_pse("prune", *args, "--n-filters", "999", "--ff-dim", "8", "--output", str(tmp_path / "x.pt"))
    assert bad.returncode == 2 and "--n-filters must be 1.." in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "x.pt").exists()
    before = ckpt.read_bytes()
    same = edge_pse("prune", *args, *sizes, "--output", str(ckpt))
    assert same.returncode == 2 and "is the checkpoint being pruned" in same.stderr
    assert ckpt.read_bytes() == before
