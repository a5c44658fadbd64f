"""The model family and its streaming step: exactness, export form, computed sizes."""

from dataclasses import replace

import pytest
import torch

from edge_pse.model.config import CONDITIONINGS, PRESETS, E3NetConfig, get_preset, state_spec
from edge_pse.model.e3net import E3Net
from edge_pse.model.stats import model_stats
from edge_pse.model.step import E3NetStep, run_step


@pytest.mark.parametrize("name", list(PRESETS))
def test_step_equals_offline_over_10s(name: str) -> None:
    cfg = PRESETS[name]
    torch.manual_seed(1)
    model = E3Net(cfg).eval()
    step = E3NetStep(model).eval()
    wave = 0.3 * torch.randn(1, 10 * cfg.sample_rate)
    spk = torch.nn.functional.normalize(torch.randn(1, cfg.spk_dim), dim=-1)
    with torch.no_grad():
        offline = model(wave, spk)
    streamed = run_step(step, wave, spk)
    assert streamed.shape == offline.shape
    tol = 1e-6 * offline.abs().max()  # the README promises 1e-6 relative
    assert (streamed - offline).abs().max() <= tol
    # the edges are where padding and overlap-add state go wrong: check them on their own
    assert (streamed[:, : cfg.hop] - offline[:, : cfg.hop]).abs().max() <= tol
    assert (streamed[:, -cfg.hop :] - offline[:, -cfg.hop :]).abs().max() <= tol
    assert offline[:, : cfg.hop].abs().max() > 0  # the first hop is real output, not padding


def trained_like(cfg: E3NetConfig, seed: int) -> E3Net:
    """A tiny whose weights moved off their init (the adaptation leaves its zero init, as training would), with
    a population of d-vectors far from zero-mean, unit-std: folding the standardisation into the step must be
    exact."""
    torch.manual_seed(seed)
    model = E3Net(cfg)
    model.set_speaker_stats(torch.relu(torch.randn(300, cfg.spk_dim)) * 0.05 + 0.02)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_a_projected_step_equals_offline_and_leaves_the_speaker_linears_out(conditioning: str) -> None:
    """The speaker's Linears computed once per speaker (the bundle's projection) give the offline model's output,
    and the per-hop step no longer carries them."""
    cfg = replace(get_preset("tiny"), conditioning=conditioning)
    model = trained_like(cfg, seed=5)
    full, projected = E3NetStep(model).eval(), E3NetStep(model, projected=True).eval()
    wave = 0.3 * torch.randn(2, 40 * cfg.hop)
    spk = torch.nn.functional.normalize(torch.rand(2, cfg.spk_dim), dim=-1)
    with torch.no_grad():
        offline = model(wave, spk)
    out = run_step(projected, wave, projected.speaker_input(spk))
    assert (out - offline).abs().max() <= 1e-5 * offline.abs().max()
    weight, bias = projected.speaker_projection()
    blocks = {"film": 2, "mul": 1}.get(conditioning, 0) * cfg.n_blocks
    assert weight.shape == (cfg.width * (1 + blocks), cfg.spk_dim) and bias.shape == (weight.shape[0],)
    assert projected.io.spk_dim == weight.shape[0]
    removed = sum(p.numel() for p in full.parameters()) - sum(p.numel() for p in projected.parameters())
    assert removed == weight.numel() + cfg.width * blocks  # fusion's speaker half has no bias of its own


def test_step_runs_a_trained_checkpoint_unchanged(tmp_path) -> None:
    cfg = get_preset("tiny")
    torch.manual_seed(2)
    model = E3Net(cfg)
    # move every weight away from its init, as training would
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / "ckpt.pt"
    torch.save(model.state_dict(), path)
    step = E3NetStep.from_state_dict(cfg, torch.load(path, weights_only=True)).eval()
    wave = 0.3 * torch.randn(2, 50 * cfg.hop)  # batch of two: the step is batch-agnostic
    spk = torch.randn(2, cfg.spk_dim)
    with torch.no_grad():
        offline = model.eval()(wave, spk)
    assert torch.allclose(run_step(step, wave, spk), offline, atol=1e-5 * float(offline.abs().max()))


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_every_conditioning_streams_exactly_and_hears_the_speaker(conditioning: str) -> None:
    cfg = replace(get_preset("tiny"), conditioning=conditioning)
    model = trained_like(cfg, seed=3)
    step = E3NetStep(model).eval()
    wave = 0.3 * torch.randn(2, 80 * cfg.hop)
    spk = torch.nn.functional.normalize(torch.relu(torch.randn(2, cfg.spk_dim)), dim=-1)
    with torch.no_grad():
        offline = model(wave, spk)
        swapped = model(wave, spk.flip(0))
    streamed = run_step(step, wave, spk)
    assert (streamed - offline).abs().max() <= 1e-6 * offline.abs().max()
    # the speaker reaches the output: another embedding changes it by far more than rounding
    assert (swapped - offline).abs().max() > 1e-3 * offline.abs().max()
    if conditioning != "concat":  # the standardisation is part of the model (a buffer saved with it)
        assert {"spk_mean", "spk_std"} <= set(model.state_dict())


def test_offline_handles_partial_hops_and_enhance_is_aligned() -> None:
    cfg = get_preset("tiny")
    model = E3Net(cfg).eval()
    wave, spk = torch.randn(1, 1234), torch.randn(1, cfg.spk_dim)
    with torch.no_grad():
        y = model(wave, spk)
        aligned = model.enhance(wave, spk)
        longer = model(torch.nn.functional.pad(wave, (0, cfg.hop)), spk)
    assert y.shape == aligned.shape == wave.shape
    assert torch.allclose(aligned, longer[:, cfg.hop :], atol=1e-6)


@pytest.mark.parametrize("name", list(PRESETS))
def test_step_exports_without_lstm_or_prelu(name: str) -> None:
    cfg = PRESETS[name]
    step = E3NetStep(E3Net(cfg)).eval()
    args = (torch.zeros(1, cfg.hop), torch.zeros(1, cfg.spk_dim), *step.initial_state(1))
    ep = torch.export.export(step, args)
    targets = [str(n.target).lower() for n in ep.graph.nodes if n.op == "call_function"]
    assert any("linear" in t for t in targets)
    assert not any("lstm" in t or "prelu" in t for t in targets), targets
    # the exported program keeps the state contract: one output per state plus the audio
    spec = state_spec(cfg)
    outputs = ep.module()(*args)
    assert len(outputs) == 1 + len(spec.states)
    for tensor, state in zip(outputs[1:], spec.states, strict=True):
        assert tuple(tensor.shape) == state.shape


def test_state_spec_matches_the_step() -> None:
    for cfg in PRESETS.values():
        spec = state_spec(cfg)
        step = E3NetStep(E3Net(cfg))
        assert [tuple(t.shape) for t in step.initial_state(1)] == [s.shape for s in spec.states]
        assert spec.input_names[:2] == ["hop", "spk"]
        assert len(spec.output_names) == len(spec.input_names) - 1
        names = [p.name for p in spec.parts]
        assert len(set(names)) == len(names)


def test_the_packed_state_holds_each_part_where_the_layout_says() -> None:
    """A runtime written from the manifest alone reads a part at io.layout's offset: the enc_buf part of the
    next state is this hop, and the other parts change only where their own computation says."""
    cfg = PRESETS["tiny"]
    spec = state_spec(cfg)
    layout = spec.to_dict()["layout"]
    assert [p["offset"] for p in layout] == [a for a, _ in spec.bounds]
    assert sum(p["size"] for p in layout) == spec.states[0].shape[-1] == spec.state_size
    step = E3NetStep(E3Net(cfg)).eval()
    hop = torch.randn(1, cfg.hop)
    with torch.no_grad():
        _, state = step(hop, torch.randn(1, cfg.spk_dim), *step.initial_state(1))
    part = {p["name"]: state[:, p["offset"] : p["offset"] + p["size"]] for p in layout}
    assert torch.equal(part["enc_buf"], hop)
    # the LSTM's output gate (a sigmoid) and its cell; the step rebuilds h = o * tanh(c) in float
    o0, c0 = part["o0"], part["c0"]
    assert 0 < o0.min() and o0.max() < 1 and o0.std() > 0 and c0.abs().max() > 0


def test_stats_are_computed_from_the_modules() -> None:
    stats = {n: model_stats(n, c) for n, c in PRESETS.items()}
    teacher, small, tiny = stats["teacher"], stats["small"], stats["tiny"]
    # the paper's teacher: ~6.6 M parameters and ~6.6 M MACs per hop
    assert 6.0e6 < teacher.params < 7.2e6 and 6.0e6 < teacher.macs_per_hop < 7.2e6
    assert 2.0 <= teacher.macs_per_hop / small.macs_per_hop <= 4.0
    # tiny's int8 weights fit a Pi 4's 1 MiB L2 with room to spare; ~98 k of its parameters are the
    # per-block FiLM's speaker Linears, which see only the embedding
    assert tiny.params <= 0.6e6 and tiny.int8_bytes <= 0.6 * 2**20
    # a preset's counts change when its sizes change (nothing typed in)
    wider = model_stats("x", E3NetConfig(n_filters=256, width=128, n_blocks=2, ff_dim=192))
    assert wider.params > tiny.params and wider.macs_per_hop > tiny.macs_per_hop
    assert teacher.latency_ms == 20.0


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge")
    with pytest.raises(ValueError, match="two hops"):
        E3NetConfig(window=400)
    with pytest.raises(ValueError, match="unknown E3Net config keys"):
        E3NetConfig.from_dict({"n_filters": 64, "colour": 1})


@pytest.mark.parametrize("frame_level_dbfs", [-20.0, None])
def test_frame_level_normalisation_makes_the_output_follow_the_input_level(frame_level_dbfs) -> None:
    """With each frame scaled to one level, a quiet input gives the loud input's output, scaled down: the
    int8 graph then sees one range at every input level. Without it, LayerNorm's eps changes quiet frames."""
    cfg = replace(get_preset("tiny"), frame_level_dbfs=frame_level_dbfs)
    torch.manual_seed(4)
    model = E3Net(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.encoder.bias.zero_()  # the one term that does not scale with the input
        wave = 0.1 * torch.randn(1, 100 * cfg.hop)
        spk = torch.randn(1, cfg.spk_dim)
        loud, quiet = model(wave, spk), model(wave * 1e-3, spk) / 1e-3  # -20 and -80 dBFS
    err = float((loud - quiet).abs().max() / loud.abs().max())
    if frame_level_dbfs is None:
        assert err > 1e-2
    else:
        assert err < 1e-4
