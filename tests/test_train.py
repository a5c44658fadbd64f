"""Training: the loss goes down, resume continues exactly, distillation runs, checkpoints load safely."""

import pytest
import torch

from edge_pse.data.mixtures import MixtureConfig, MixtureDataset
from edge_pse.errors import EdgePseError
from edge_pse.model.checkpoint import load_model, read_checkpoint
from edge_pse.train.losses import compressed_spectral, enhancement_loss, si_snr
from edge_pse.train.trainer import TrainConfig, Trainer


@pytest.fixture(scope="module")
def datasets(synthetic_root, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    mcfg = MixtureConfig(seconds=1.0, enroll_seconds=3.0)
    train = MixtureDataset(synthetic_root, "train", seed=0, cfg=mcfg, cache_dir=cache)
    val = MixtureDataset("", "val", seed=1, cfg=mcfg, sources=train.sources, length=8, cache_dir=cache)
    return train, val


def make_trainer(datasets, out, **kw) -> Trainer:
    torch.set_num_threads(1)
    kw = {"batch": 4, **kw}
    cfg = TrainConfig(preset="tiny", data="", out=str(out), seconds=1.0, warmup=1, lr=2e-3, val_examples=8, **kw)
    return Trainer(cfg, train_ds=datasets[0], val_ds=datasets[1])


def test_losses_on_known_signals() -> None:
    torch.manual_seed(0)
    ref = torch.randn(2, 8000)
    assert (si_snr(3.0 * ref, ref) > 60).all()
    assert (si_snr(torch.randn(2, 8000), ref) < 0).all()
    assert compressed_spectral(ref, ref).abs().max() < 1e-6
    # a silent reference (target absent): quieter output is better
    silent = torch.zeros(1, 8000)
    assert enhancement_loss(0.01 * ref[:1], silent) < enhancement_loss(0.5 * ref[:1], silent)


def test_the_asymmetric_loss_weighs_a_muted_target_more_than_leftover_noise() -> None:
    """pse-keep's over-suppression weight: losing half the target's magnitude costs more than adding the same
    magnitude on top, and only when asked (the other recipes stay symmetric)."""
    from edge_pse.train.recipes import get_recipe

    torch.manual_seed(0)
    ref = torch.randn(1, 8000)
    muted, doubled = 0.5 * ref, 1.5 * ref  # the same magnitude error, missing vs in excess
    sym = compressed_spectral(muted, ref) / compressed_spectral(doubled, ref)
    asym = compressed_spectral(muted, ref, over_suppression=3.0) / compressed_spectral(
        doubled, ref, over_suppression=3.0
    )
    assert asym > 4 * sym
    assert get_recipe("pse-keep").loss_weights["over_suppression"] == 3.0
    assert get_recipe("pse").loss_weights["over_suppression"] == 1.0


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(datasets, tmp_path) -> None:
    trainer = make_trainer(datasets, tmp_path, steps=100)
    trainer.batch_indices = lambda step: [0, 1, 2, 3]  # overfit one batch
    first = trainer.train_step()
    for _ in range(25):
        last = trainer.train_step()
    assert last < first - 0.05, (first, last)


def test_resume_gives_the_same_next_step(datasets, tmp_path) -> None:
    a = make_trainer(datasets, tmp_path / "a", steps=10)
    for _ in range(3):
        a.train_step()
    a.save()
    next_a = a.train_step()
    b = make_trainer(datasets, tmp_path / "b", steps=10)
    assert b.resume(tmp_path / "a" / "last.pt") and b.step == 3
    next_b = b.train_step()
    assert next_b == pytest.approx(next_a, rel=1e-5)
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_resuming_under_other_settings_is_refused(datasets, tmp_path) -> None:
    a = make_trainer(datasets, tmp_path / "a", steps=10)
    a.train_step()
    a.save()
    longer = make_trainer(datasets, tmp_path / "b", steps=20, threads=1)  # more steps: the run continues
    assert longer.resume(tmp_path / "a" / "last.pt") and longer.step == 1
    other = make_trainer(datasets, tmp_path / "c", steps=10, seed=3)
    with pytest.raises(EdgePseError, match=r"other settings \(seed 0 -> 3\).*--no-resume"):
        other.resume(tmp_path / "a" / "last.pt")


def test_fit_writes_checkpoints_and_distillation_uses_the_teacher(datasets, tmp_path) -> None:
    teacher = make_trainer(datasets, tmp_path / "t", steps=2, val_every=2)
    teacher.fit(show_progress=False)
    _, payload = load_model(tmp_path / "t" / "best.pt")
    assert payload["preset"] == "tiny" and payload["extra"]["step"] == 2
    student = make_trainer(
        datasets, tmp_path / "s", steps=2, val_every=2, teacher=str(tmp_path / "t" / "last.pt"), kd_weight=1.0
    )
    student.fit(show_progress=False)
    assert (tmp_path / "s" / "last.pt").exists()
    # with kd_weight 1 the target is the teacher's output: the loss is exactly the loss against it, and another
    # teacher changes it
    from edge_pse.train.trainer import _batch

    mix, ref, emb = _batch(datasets[0], [0, 1])
    with torch.no_grad():
        want = enhancement_loss(student.model(mix, emb), student.teacher(mix, emb))
        assert student.loss_on(mix, ref, emb).item() == pytest.approx(want.item(), rel=1e-5)
        student.teacher = make_trainer(datasets, tmp_path / "o", steps=1, seed=9).model.eval()
        assert student.loss_on(mix, ref, emb).item() != pytest.approx(want.item(), rel=1e-3)
    with pytest.raises(EdgePseError, match="needs --teacher"):
        TrainConfig(preset="tiny", data="", out="x", kd_weight=0.5)


def test_fine_tuning_records_the_earlier_stages(datasets, tmp_path) -> None:
    first = make_trainer(datasets, tmp_path / "a", steps=2, val_every=2)
    first.fit(show_progress=False)
    second = make_trainer(datasets, tmp_path / "b", steps=3, val_every=3, seed=5)
    second.init_from(tmp_path / "a" / "best.pt")
    assert all(torch.equal(p, q) for p, q in zip(first.model.parameters(), second.model.parameters(), strict=True))
    second.fit(show_progress=False)
    third = make_trainer(datasets, tmp_path / "c", steps=1, val_every=1)
    third.init_from(tmp_path / "b" / "best.pt")
    third.fit(show_progress=False)
    _, payload = load_model(tmp_path / "c" / "last.pt")
    stages = payload["extra"]["lineage"]
    assert [(s["source"], s["step"], s["seed"]) for s in stages] == [
        (str(tmp_path / "a" / "best.pt"), 2, 0),
        (str(tmp_path / "b" / "best.pt"), 3, 5),
    ]
    resumed = make_trainer(datasets, tmp_path / "d", steps=1)
    assert resumed.resume(tmp_path / "c" / "last.pt") and resumed.lineage == stages
    with pytest.raises(EdgePseError, match="is a tiny checkpoint, not small"):
        Trainer(
            TrainConfig(preset="small", data="", out=str(tmp_path / "e"), batch=1, seconds=1.0, val_examples=8),
            train_ds=datasets[0],
            val_ds=datasets[1],
        ).init_from(tmp_path / "a" / "best.pt")


def test_checkpoints_never_unpickle_code(tmp_path) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"format": "edge-pse-checkpoint", "x": object()}, evil)  # object() needs a full unpickler
    with pytest.raises(EdgePseError, match="cannot read checkpoint"):
        load_model(evil)
    with pytest.raises(EdgePseError, match="not found"):
        load_model(tmp_path / "missing.pt")


def _distill(root, out, *extra: str) -> list[str]:
    common = "--steps 2 --batch 2 --seconds 1.0 --warmup 1 --val-every 2 --threads 1 --no-resume"
    base = ["distill", "--teacher", "tiny", "--student", "tiny", "--data", str(root), "--out", str(out)]
    return [*base, *common.split(), *extra]


def test_distill_on_noisy_recordings_without_references(synthetic_root, tmp_path, capsys) -> None:
    """--noisy-only DIR: crops of real recordings, enrollment from the same speaker, no clean target anywhere."""
    from edge_pse.cli import main
    from edge_pse.data.mixtures import RecordingDataset

    recordings = synthetic_root / "speech" / "synth"  # DIR/SPK/*.flac, as a user's recordings would be laid out
    ds = RecordingDataset(recordings, cfg=MixtureConfig(seconds=1.0, enroll_seconds=3.0), cache_dir=tmp_path)
    ex = ds[5]
    assert ex.condition == "recorded" and not ex.target.any() and ex.mixture.shape == (16_000,)
    assert ex.embedding.shape == (256,) and abs(float((ex.embedding**2).sum()) - 1) < 1e-3
    assert ds[5].mixture.tobytes() == ex.mixture.tobytes()  # deterministic in (seed, index)

    out = tmp_path / "run"
    assert main(_distill(synthetic_root, out, "--noisy-only", str(recordings))) == 0
    assert (out / "last.pt").is_file()
    _, payload = load_model(out / "last.pt")
    cfg = payload["extra"]["train_config"]
    assert cfg["noisy_only"] and cfg["noisy_dir"] == str(recordings) and cfg["kd_weight"] == 1.0

    capsys.readouterr()
    assert main(_distill(synthetic_root, tmp_path / "bad", "--noisy-only", str(tmp_path / "missing"))) == 2
    err = capsys.readouterr().err
    assert "is not a folder" in err and "Traceback" not in err


def test_pse_recipe_batches_pairs_then_brings_the_other_conditions_back(datasets, tmp_path) -> None:
    trainer = make_trainer(datasets, tmp_path, steps=100, recipe="pse", batch=8)
    exs, keys = trainer.batch_at(0)  # the two-talker stage: every row is half of a dual-target pair
    assert len(exs) == 8 and keys == [k for k in keys[::2] for _ in (0, 1)]
    for a, b in zip(exs[::2], exs[1::2], strict=True):
        assert a.mixture.tobytes() == b.mixture.tobytes() and a.meta["speaker"] == b.meta["interferer"]
        assert a.condition == "interferer" and "noise" not in a.meta
    exs, _ = trainer.batch_at(90)  # the last stage: half pairs, half single examples of the full mix
    assert sum("pair" in e.meta for e in exs) == 4
    assert trainer.recipe.stage_at(90, 100).name == "full" and trainer.recipe.stage_at(10, 100).name == "two-talker"


def test_validation_reports_the_swapped_speaker_and_the_gap(datasets, tmp_path) -> None:
    trainer = make_trainer(datasets, tmp_path, steps=2, val_every=2, val_pairs=4)
    trainer.fit(show_progress=False)
    rec = trainer.history[-1]
    assert {"val_right_db", "val_swap_db", "val_gap_db", "val_mix_db"} <= set(rec)
    assert rec["val_gap_db"] == pytest.approx(rec["val_right_db"] - rec["val_swap_db"], abs=2e-3)


def test_stop_at_leaves_a_run_that_resumes_on_its_schedule(datasets, tmp_path) -> None:
    first = make_trainer(datasets, tmp_path, steps=6, val_every=100, stop_at=4)
    first.fit(show_progress=False)
    assert first.step == 4
    rest = make_trainer(datasets, tmp_path, steps=6, val_every=100)
    assert rest.resume() and rest.step == 4
    rest.fit(show_progress=False)
    assert rest.step == 6


def test_conditioning_is_part_of_the_run(datasets, tmp_path) -> None:
    film = make_trainer(datasets, tmp_path / "a", steps=2)
    assert film.model.cfg.conditioning == "film"  # the presets' default
    film.save()
    concat = make_trainer(datasets, tmp_path / "b", steps=2, conditioning="concat")
    with pytest.raises(EdgePseError, match="film-conditioned tiny, this run trains concat"):
        concat.resume(tmp_path / "a" / "last.pt")
    with pytest.raises(EdgePseError, match="--conditioning film to fine-tune it"):
        make_trainer(datasets, tmp_path / "c", steps=2, conditioning="concat").init_from(tmp_path / "a" / "last.pt")
    # the standardisation comes from the training speakers' d-vectors and is saved with the weights
    emb = torch.from_numpy(__import__("numpy").concatenate(datasets[0]._embeddings))
    assert torch.allclose(film.model.spk_mean, emb.mean(0))


def test_a_run_can_switch_its_frame_level_normalisation_only_when_asked(datasets, tmp_path) -> None:
    before = make_trainer(datasets, tmp_path, steps=4, frame_level="off")
    assert before.model.cfg.frame_level_dbfs is None
    before.save()
    with pytest.raises(EdgePseError, match="--frame-level-dbfs off to continue it as it was"):
        make_trainer(datasets, tmp_path, steps=4).resume()  # the preset's -20 differs from the run's off
    after = make_trainer(datasets, tmp_path, steps=4, frame_level="-20")
    assert after.resume() and after.model.cfg.frame_level_dbfs == -20.0
    assert after.events == [{"step": 0, "event": "frame_level_dbfs off -> -20"}]
    after.fit(show_progress=False)  # the same weights train on under the normalisation
    assert read_checkpoint(tmp_path / "last.pt")["extra"]["events"] == after.events
    assert '"event": "frame_level_dbfs off -> -20"' in (tmp_path / "log.jsonl").read_text()


def test_sigterm_stops_a_cli_run_cleanly_and_it_resumes(synthetic_root, tmp_path) -> None:
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "edge_pse", "train", "--preset", "tiny", "--data", str(synthetic_root)]
    cmd += ["--out", str(out), "--steps", "100000", "--batch", "2", "--seconds", "1", "--threads", "1"]
    env = os.environ | {"HOME": str(tmp_path)}  # its own d-vector cache
    proc = subprocess.Popen([*cmd, "--val-every", "100000"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log = out / "log.jsonl"
    deadline = time.monotonic() + 240
    while not (log.exists() and log.read_text().strip()) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    _, payload = load_model(out / "last.pt")
    stopped = payload["extra"]["step"]  # saved at the step it stopped on, not at the last heartbeat
    assert stopped >= json.loads(log.read_text().splitlines()[-1])["step"] >= 50
    assert f"step {stopped}," in stdout.decode()


def _cli_env(tmp_path) -> dict:
    import os

    return os.environ | {"HOME": str(tmp_path)}  # its own d-vector cache


@pytest.mark.slow
def test_ddp_training_with_two_gloo_processes(synthetic_root, tmp_path) -> None:
    """`torchrun --nproc-per-node 2 -m edge_pse train` as the README shows: both ranks step together, rank 0
    alone writes the run, and the run resumes in a single process."""
    import subprocess
    import sys

    out = tmp_path / "ddp"
    args = ["train", "--preset", "tiny", "--data", str(synthetic_root), "--out", str(out), "--steps", "3",
            "--batch", "2", "--seconds", "1", "--val-every", "3", "--threads", "1"]  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    res = subprocess.run([*cmd, "-m", "edge_pse", *args], capture_output=True, text=True, timeout=600,
                         env=_cli_env(tmp_path), check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("tiny: step 3,") == 1  # only rank 0 reports
    _, payload = load_model(out / "last.pt")
    assert payload["extra"]["step"] == 3 and [r["step"] for r in payload["extra"]["history"]] == [3]
    longer = [("4" if a == "3" and args[i - 1] == "--steps" else a) for i, a in enumerate(args)]
    more = subprocess.run([sys.executable, "-m", "edge_pse", *longer],
                          capture_output=True, text=True, timeout=600, env=_cli_env(tmp_path), check=False)  # fmt: skip
    assert more.returncode == 0, more.stderr[-3000:]
    assert load_model(out / "last.pt")[1]["extra"]["step"] == 4


def test_distill_init_from_the_cli_records_where_the_weights_came_from(synthetic_root, tmp_path) -> None:
    from edge_pse.cli import main

    out = tmp_path / "ft"
    args = _distill(synthetic_root, out, "--init", "tiny")
    assert main(args) == 0
    model, payload = load_model(out / "last.pt")
    assert model.cfg.conditioning == "film" and payload["extra"]["lineage"][-1]["source"] == "tiny"
    shipped, _ = load_model("tiny")  # fine-tuning starts from the shipped weights, not from scratch
    moved = [(a - b).abs().max().item() for a, b in zip(model.parameters(), shipped.parameters(), strict=True)]
    assert 0 < max(moved) < 0.1


def test_ship_replaces_the_shipped_weights_and_writes_a_card_from_the_run(datasets, tmp_path) -> None:
    """train/ship.py on a copy of the package (it writes into edge_pse/checkpoints/): the shipped file becomes
    the run's best weights (fp16 only when lossless) and the card is built from the run's own records."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    pkg = tmp_path / "pkg"
    shutil.copytree(repo / "edge_pse", pkg / "edge_pse", ignore=shutil.ignore_patterns("bundles", "__pycache__"))
    stale_ranges = pkg / "edge_pse" / "checkpoints" / "tiny.ranges.json"
    stale_ranges.write_text("{}")  # int8 ranges of the weights being replaced
    run = tmp_path / "run"
    make_trainer(datasets, run, steps=2, val_every=2).fit(show_progress=False)
    res = subprocess.run(
        [sys.executable, "-m", "edge_pse.train.ship", "--run", str(run), "--name", "tiny",
         "--command", "edge-pse train --preset tiny ...", "--wall-time", "3 s"],
        capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path,
        env=os.environ | {"PYTHONPATH": str(pkg)},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    shipped, payload = load_model(pkg / "edge_pse" / "checkpoints" / "tiny.pt")
    best, _ = load_model(run / "best.pt")
    fp16 = payload["extra"]["stored_fp16"]
    for a, b in zip(shipped.state_dict().values(), best.state_dict().values(), strict=True):
        assert torch.equal(a, b.half().float() if fp16 else b)
    assert "optimizer" not in payload["extra"] and payload["extra"]["fp16_snr_db"] >= 0
    card = (pkg / "edge_pse" / "checkpoints" / "tiny.md").read_text()
    assert "edge-pse train --preset tiny ..." in card and "3 s" in card and "Measured quality" in card
    copied = (pkg / "edge_pse" / "checkpoints" / "tiny.pt").read_bytes()
    assert copied != (repo / "edge_pse" / "checkpoints" / "tiny.pt").read_bytes()  # the checkout's stays as it was
    assert not stale_ranges.exists() and "removed tiny.ranges.json" in res.stdout


def test_batches_made_by_worker_processes_are_the_batches_made_inline(datasets, tmp_path) -> None:
    inline = make_trainer(datasets, tmp_path / "a", steps=6, recipe="pse")
    ahead = make_trainer(datasets, tmp_path / "b", steps=6, recipe="pse", workers=2)
    got = list(ahead.batches(2, 5))
    assert len(got) == 3
    for step, (mix, ref, emb, keys) in zip(range(2, 5), got, strict=True):
        m, r, e, k = inline.tensors_at(step)
        assert torch.equal(mix, m) and torch.equal(ref, r) and torch.equal(emb, e) and keys == k
    with pytest.raises(EdgePseError, match="--workers"):
        make_trainer(datasets, tmp_path / "c", steps=2, workers=-1)


def test_learning_curves_are_drawn_from_a_runs_log(datasets, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from edge_pse.train.curves import main, read_log

    run = tmp_path / "run"
    make_trainer(datasets, run, steps=4, val_every=2, val_pairs=4).fit(show_progress=False)
    recs = read_log(run)
    assert [r["step"] for r in recs] == [2, 4] and all("val_gap_db" in r for r in recs)
    assert main([str(run), "--output", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_second_run_in_the_same_folder_is_refused_before_any_work(tmp_path) -> None:
    """Two processes training into one --out would overwrite each other's last.pt and interleave the log."""
    import subprocess
    import sys

    from edge_pse.atomic import hold_lock
    from edge_pse.train.trainer import RUN_LOCK
    from tests.test_cli import edge_pse

    out = tmp_path / "run"
    out.mkdir()
    code = (
        "import sys, time; from edge_pse.atomic import hold_lock; "
        "f = hold_lock(sys.argv[1]); print('held', flush=True); time.sleep(120)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(out / RUN_LOCK)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        res = edge_pse("train", "--preset", "tiny", "--data", str(tmp_path / "nodata"), "--out", str(out))
        assert res.returncode == 2 and f"another training run (pid {holder.pid})" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr and [p.name for p in out.iterdir()] == [RUN_LOCK]
    finally:
        holder.kill()
        holder.wait()
    lock = hold_lock(out / RUN_LOCK)  # the OS released the killed holder's lock: no stale lock to clean up
    assert lock is not None
    lock.close()
