"""The mixture generator: conditions, determinism, disjoint splits."""

import numpy as np
import pytest

from edge_pse.data.mixtures import CONDITIONS, MixtureConfig, MixtureDataset
from edge_pse.data.sources import SPLITS, scan, split_of
from edge_pse.data.synth import NOISE_KINDS, procedural_noise, simulated_rir


@pytest.fixture(scope="module")
def train_ds(synthetic_root, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return MixtureDataset(
        synthetic_root, "train", seed=3, cfg=MixtureConfig(seconds=2.0, enroll_seconds=3.0), cache_dir=cache
    )


def _snr(sig: np.ndarray, noise: np.ndarray) -> float:
    return 10 * np.log10(np.sum(sig**2) / np.sum(noise**2))


def test_same_seed_same_examples(train_ds, synthetic_root) -> None:
    for i in (0, 7, 123):
        a, b = train_ds[i], train_ds[i]
        assert np.array_equal(a.mixture, b.mixture) and np.array_equal(a.target, b.target)
        assert a.condition == b.condition and a.meta == b.meta
    other = MixtureDataset(synthetic_root, "train", seed=4, cfg=train_ds.cfg, sources=train_ds.sources, cache_dir=None)
    assert not np.array_equal(other[0].mixture, train_ds[0].mixture)


@pytest.mark.parametrize("condition", CONDITIONS)
def test_each_condition(train_ds, condition: str) -> None:
    ds = MixtureDataset("", "train", seed=5, cfg=train_ds.cfg, sources=train_ds.sources, conditions=(condition,))
    for i in range(6):
        ex = ds[i]
        assert ex.condition == condition
        assert ex.mixture.shape == ex.target.shape == (32_000,)
        assert ex.embedding.shape == (256,) and abs(np.linalg.norm(ex.embedding) - 1) < 1e-3
        assert np.isfinite(ex.mixture).all() and np.abs(ex.mixture).max() <= 0.95 + 1e-6
        if condition == "absent":
            assert not ex.target.any() and np.abs(ex.mixture).max() > 0
        else:
            assert np.abs(ex.target).max() > 0
        if condition == "noise":
            assert "interferer" not in ex.meta
            lo, hi = train_ds.cfg.snr_db
            assert lo - 0.1 <= _snr(ex.target, ex.mixture - ex.target) <= hi + 0.1
        if condition == "interferer":
            assert "noise" not in ex.meta and ex.meta["interferer"] != ex.meta["speaker"]
            lo, hi = train_ds.cfg.sir_db
            assert lo - 0.1 <= _snr(ex.target, ex.mixture - ex.target) <= hi + 0.1
        if condition == "both":
            assert "noise" in ex.meta and "interferer" in ex.meta
        if condition == "reverberant":
            assert "room" in ex.meta and "noise" in ex.meta


def test_enrollment_is_the_target_speaker_but_other_audio(train_ds) -> None:
    n, n_enroll = int(train_ds.cfg.seconds * 16_000), int(train_ds.cfg.enroll_seconds * 16_000)
    for i in range(10):
        ex = train_ds[i]
        spk = next(s for s in train_ds.sources.speakers if s.id == ex.meta["speaker"])
        (u_t, t0), (u_e, e0) = ex.meta["target"], ex.meta["enroll"]
        assert np.array_equal(spk.utterances[u_e][e0 : e0 + n_enroll], ex.enroll)
        if u_t == u_e:  # same utterance: the target segment lies outside the enrollment clip
            assert t0 + n <= e0 or t0 >= e0 + n_enroll


def test_splits_are_disjoint(data_root) -> None:
    seen: dict[str, set] = {"spk": set(), "noise": set(), "rir": set()}
    for split in SPLITS:
        speakers, noises, rirs = scan(data_root, split)
        for key, items in (("spk", speakers), ("noise", noises), ("rir", rirs)):
            items = set(items)
            assert not items & seen[key], f"{key} shared across splits"
            seen[key] |= items
    assert split_of("librispeech-train/103") == split_of("librispeech-train/103")


def test_procedural_noise_and_rooms() -> None:
    rng = np.random.default_rng(0)
    for kind in NOISE_KINDS:
        x = procedural_noise(16_000, rng, kind)
        assert x.shape == (16_000,) and abs(np.sqrt(np.mean(x**2)) - 1) < 1e-3
    rir = simulated_rir(rng, rt60=0.6)
    assert np.abs(rir).max() == pytest.approx(1.0) and np.abs(rir[:160]).max() > 0.5  # direct sound first
    # energy decays: the last 100 ms hold far less than the first 100 ms
    assert np.sum(rir[:1600] ** 2) > 100 * np.sum(rir[-1600:] ** 2)
