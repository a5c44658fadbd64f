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


def test_every_example_carries_the_d_vector_of_its_own_enrollment_clip(train_ds) -> None:
    """A training row with another speaker's embedding teaches a speaker-blind model: check it end to end."""
    from edge_pse.enroll.dvector import embed

    for i in (0, 5, 11):
        ex = train_ds[i]
        assert float(np.dot(embed(ex.enroll), ex.embedding)) > 0.9999
        a, b = train_ds.pair(i)
        for row in (a, b):
            assert float(np.dot(embed(row.enroll), row.embedding)) > 0.9999


def test_dual_target_pair_is_one_mixture_with_each_talker_as_the_target(train_ds) -> None:
    for i in range(6):
        a, b = train_ds.pair(i)
        assert np.array_equal(a.mixture, b.mixture)
        assert a.meta["speaker"] == b.meta["interferer"] and b.meta["speaker"] == a.meta["interferer"]
        assert a.meta["speaker"] != b.meta["speaker"]
        # A -> A and B -> B: the mixture is exactly the two targets, each row's target is its own speaker's
        np.testing.assert_allclose(a.mixture, a.target + b.target, atol=1e-6)
        assert not np.allclose(a.target, b.target)
        assert not np.array_equal(a.embedding, b.embedding)
        spk_a = next(s for s in train_ds.sources.speakers if s.id == a.meta["speaker"])
        u, start = a.meta["target"]
        seg = spk_a.utterances[u][start : start + len(a.target)]
        assert abs(np.corrcoef(seg, a.target[: len(seg)])[0, 1]) > 0.999
        u_e, start_e = a.meta["enroll"]  # the enrollment (whose d-vector the row carries) is A's own audio
        assert np.array_equal(spk_a.utterances[u_e][start_e : start_e + len(a.enroll)], a.enroll)
        # symmetric SIR, same magnitude seen from both sides
        lo, hi = train_ds.cfg.pair_sir_db
        assert lo - 0.1 <= _snr(a.target, b.target) <= hi + 0.1
        assert a.meta["sir_db"] == -b.meta["sir_db"]
        pa = train_ds.pair(i)[0]
        assert np.array_equal(pa.mixture, a.mixture)  # deterministic


def test_pseudo_speakers_are_new_voices_never_paired_with_their_original(synthetic_root, tmp_path) -> None:
    cfg = MixtureConfig(seconds=2.0, enroll_seconds=3.0, pseudo_speakers=(0.85, 1.15), enroll_crops=2)
    ds = MixtureDataset(synthetic_root, "train", seed=1, cfg=cfg, cache_dir=tmp_path)
    n = len(ds.base) // 3
    assert len(ds.sources.speakers) == 3 * n and ds.base[n] == 0 and ds.base[2 * n] == 0
    assert ds.sources.speakers[n].id.endswith("@0.85")
    # pitch and tempo move: the 0.85 copy is 1/0.85 times as long
    assert abs(len(ds.sources.speakers[n].utterances[0]) / len(ds.sources.speakers[0].utterances[0]) - 1 / 0.85) < 0.01
    # two crops per utterance end: four enrollment clips per speaker
    assert len(ds._options[0]) == 4
    base_of = {s.id: ds.base[k] for k, s in enumerate(ds.sources.speakers)}
    for i in range(40):
        a, b = ds.pair(i)
        assert base_of[a.meta["speaker"]] != base_of[b.meta["speaker"]]
        ex = ds[i]
        if "interferer" in ex.meta:
            assert base_of[ex.meta["speaker"]] != base_of[ex.meta["interferer"]]


def test_partial_absence_silences_one_end_of_the_target(train_ds) -> None:
    from dataclasses import replace

    ds = MixtureDataset(
        "",
        "train",
        seed=2,
        cfg=replace(train_ds.cfg, partial_absence_prob=1.0),
        sources=train_ds.sources,
        conditions=("noise",),
    )
    for i in range(4):
        ex = ds[i]
        kind, k = ex.meta["absence"].rsplit("-", 1)
        silent = ex.target[: int(k)] if kind == "silent-head" else ex.target[int(k) :]
        assert not silent.any() and np.abs(ex.target).max() > 0 and np.abs(ex.mixture).max() > 0


def test_split_assignment_is_pinned() -> None:
    """Golden id -> split pairs: a change to the hash or the fractions would move training speakers into the
    held-out split (and every reported figure with them) without any other test noticing."""
    golden = {
        "librispeech-train/19": "train",
        "librispeech-train/40": "val",
        "librispeech-train/83": "test",
        "librispeech-train/87": "test",
        "librispeech-train/103": "train",
        "noise/esc10/dog_1-100032-A.flac": "train",
        "rir/house/kitchen.flac": "test",
        "tts-espeak/en-us+m3-p40-s160": "train",
    }
    assert {k: split_of(k) for k in golden} == golden


def test_calibration_clips_use_the_data_packages_conditions_and_the_runtimes_int16_scale(tmp_path) -> None:
    """One set of condition names (the committed file's older names are read as these) and one int16 scale
    (2^15, the front-end's): a saved clip loads back within half an LSB."""
    from edge_pse import calibration_data
    from edge_pse.data.mixtures import CONDITIONS
    from edge_pse.quant.calibration import Clip, load_calibration, load_npz, save_npz

    calib = load_calibration(calibration_data.folder())
    assert {c.condition for c in calib.calibration + calib.heldout} == {"noise", "interferer", "both"}
    assert {"noise", "interferer", "both"} <= set(CONDITIONS)
    x = np.random.default_rng(0).uniform(-0.9, 0.9, 1000).astype(np.float32)
    save_npz(tmp_path / "c.npz", [Clip(x, np.ones(256, np.float32), x, "noise", False)])
    back = load_npz(tmp_path / "c.npz")[0]
    assert np.abs(back.mixture - x).max() <= 0.5 * 2.0**-15 + 1e-9


@pytest.fixture(scope="module")
def short_utterance_root(tmp_path_factory):
    """Speakers with four 1.5 s utterances each (like speechocean762's short read sentences): none of them holds
    a 3 s enrollment clip alone."""
    import soundfile as sf

    from tests.conftest import _voice

    root = tmp_path_factory.mktemp("short")
    rng = np.random.default_rng(5)
    for k in range(30):
        d = root / "speech" / "read" / f"r{k:02d}"
        d.mkdir(parents=True)
        f0 = rng.uniform(90, 250)
        for u in range(4):
            sf.write(d / f"r{k:02d}-{u}.flac", _voice(rng, 1.5, f0), 16_000)
    return root


def test_several_short_utterances_are_joined_into_an_enrollment_of_other_recordings(short_utterance_root) -> None:
    cfg = MixtureConfig(seconds=1.0, enroll_seconds=3.0, enroll_crops=1)
    ds = MixtureDataset(short_utterance_root, "train", seed=0, cfg=cfg, cache_dir=short_utterance_root / "cache")
    assert len(ds.targets) == len(ds.sources.speakers)  # every speaker enrolls, though no utterance is 3 s long
    assert all(len(opts) == 2 for opts in ds._options)  # 2 x enroll_crops clips per speaker, not per utterance
    for i in range(30):
        ex = ds[i] if i % 2 else ds.pair(i)[0]
        spk = next(s for s in ds.sources.speakers if s.id == ex.meta["speaker"])
        joined, start = ex.meta["enroll"]
        assert isinstance(joined, list) and len(joined) == 2 and start == 0
        expected = np.concatenate([spk.utterances[u] for u in joined])[: len(ex.enroll)]
        assert len(ex.enroll) == 48_000 and np.array_equal(ex.enroll, expected)
        assert ex.meta["target"][0] not in joined  # the target is another recording than the enrollment


def test_turns_make_the_target_start_late_or_pause_while_the_talker_goes_on(train_ds) -> None:
    from dataclasses import replace

    from edge_pse.eval.metrics import target_onsets

    ds = MixtureDataset(
        "",
        "train",
        seed=8,
        cfg=replace(train_ds.cfg, turns_prob=1.0),
        sources=train_ds.sources,
        conditions=("interferer",),
    )
    late_or_paused = 0
    for i in range(12):
        ex = ds[i]
        assert ex.meta["talk"].startswith("turns-")
        # the gate: the reference over the source segment it was cut from, where that segment has voice
        spk = next(s for s in ds.sources.speakers if s.id == ex.meta["speaker"])
        u, start = ex.meta["target"]
        seg = spk.utterances[u][start : start + len(ex.target)]
        voiced = np.abs(seg) > 0.05 * np.abs(seg).max()
        gate = ex.target[: len(seg)][voiced] / seg[voiced]
        gate /= gate.max()
        muted = np.mean(gate < 1e-3)
        assert 0.0 < muted <= 0.8  # some of the voice is silenced, most of a quarter of the clip at least talks
        silent = np.zeros(len(ex.target), bool)
        silent[: len(seg)] = np.abs(ex.target[: len(seg)]) < 1e-9
        assert np.abs(ex.mixture[silent]).max() > 0  # the other talker goes on through the target's pauses
        late_or_paused += any(t > 0 for t in target_onsets(ex.target))
    assert late_or_paused >= 6  # onsets inside the clip, not only at its first frame


def test_a_random_microphone_colours_the_mixture_and_its_reference_alike(train_ds) -> None:
    """mic_prob: the same example with and without the microphone (its draw comes last, so everything else is
    equal): the target and the mixture went through one filter (their spectral ratios to the plain example
    agree), and that filter is not flat (a high-pass and a resonance)."""
    from dataclasses import replace

    def spectrum_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        f, pa = signal.welch(a, 16_000, nperseg=1024)
        _, pb = signal.welch(b, 16_000, nperseg=1024)
        band = (f > 80) & (f < 3000)
        return 10 * np.log10(pa[band] / pb[band])

    from scipy import signal

    for cond in ("noise", "both"):
        plain = MixtureDataset("", "train", seed=9, cfg=train_ds.cfg, sources=train_ds.sources, conditions=(cond,))
        mic = MixtureDataset(
            "", "train", seed=9, cfg=replace(train_ds.cfg, mic_prob=1.0), sources=train_ds.sources, conditions=(cond,)
        )
        for i in range(3):
            a, b = plain[i], mic[i]
            assert "mic" in b.meta and "mic" not in a.meta
            r_target, r_mix = spectrum_ratio(b.target, a.target), spectrum_ratio(b.mixture, a.mixture)
            assert np.ptp(r_target) > 1.0  # coloured, not a gain
            # one filter on both (up to the peak normalisation's common gain)
            assert np.max(np.abs((r_target - r_target.mean()) - (r_mix - r_mix.mean()))) < 1.0
    pa, pb = MixtureDataset(
        "", "train", seed=9, cfg=replace(train_ds.cfg, mic_prob=1.0), sources=train_ds.sources
    ).pair(0)
    assert pa.meta["mic"] == pb.meta["mic"] and np.array_equal(pa.mixture, pb.mixture)
