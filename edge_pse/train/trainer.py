"""Training and distillation loop: checkpoint/resume, validation, progress bar, optional DDP via torchrun.

One loop serves `edge-pse train` (clean targets) and `edge-pse distill` (a frozen teacher's output as the
target, mixed with the clean target by `kd_weight`; with kd_weight=1 no clean reference is needed at all).
`asr_weight` > 0 adds the paper's multi-task ASR term (edge_pse.train.asr_loss: frozen Whisper tiny.en,
pseudo-labels from the clean target, or from the teacher's output with `noisy_only`).
Batches are pure functions of (seed, step, rank), so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from edge_pse.atomic import hold_lock, lock_holder
from edge_pse.data.mixtures import Example, MixtureConfig, MixtureDataset
from edge_pse.errors import EdgePseError
from edge_pse.eval.metrics import onset_shares
from edge_pse.model.checkpoint import FORMAT, load_model, read_checkpoint, save_checkpoint
from edge_pse.model.config import CONDITIONINGS, E3NetConfig, get_preset
from edge_pse.model.e3net import E3Net
from edge_pse.train.losses import enhancement_loss, si_snr, target_gain_db
from edge_pse.train.recipes import get_recipe

# settings that define what a run trains; resuming a run under different ones is refused (steps may grow,
# threads and validation cadence may change)
RUN_DEFINING = (
    "preset",
    "teacher",
    "kd_weight",
    "batch",
    "seconds",
    "lr",
    "warmup",
    "seed",
    "asr_weight",
    "noisy_only",
    "recipe",
    "conditioning",
)


@dataclass
class TrainConfig:
    preset: str
    data: str
    out: str
    steps: int = 1000
    batch: int = 8
    seconds: float = 4.0
    lr: float = 1e-3
    warmup: int = 100
    seed: int = 0
    teacher: str | None = None
    kd_weight: float = 0.0  # 0: clean targets only; 1: teacher's output only (no clean reference needed)
    val_every: int = 200
    val_examples: int = 64
    save_every: int = 50
    threads: int = 0  # 0 = torch's default
    asr_weight: float = 0.0  # weight of the Whisper token loss (0: off, Whisper is not even imported)
    noisy_only: bool = False  # no clean reference in the loss: KD only, ASR pseudo-labels from the teacher
    noisy_dir: str | None = None  # noisy_only on real recordings (DIR/SPK/...) instead of the generated mixtures
    recipe: str = "standard"  # train/recipes.py: the mixtures of each stage
    conditioning: str | None = None  # override the preset's speaker conditioning (model/config.py)
    frame_level: str | None = None  # override the preset's per-frame level normalisation: "off" or a dBFS target
    val_pairs: int = 32  # two-talker validation pairs: right- and swapped-speaker SI-SNRi, their gap
    stop_at: int = 0  # stop (and save) at this step, leaving the run resumable on its full schedule
    device: str = "cpu"  # where the model trains ("cuda" on an accelerator); the data is always made on the CPU
    workers: int = 0  # processes making batches ahead of the training step (0: made in the loop)

    @property
    def frame_level_dbfs(self) -> float | None:
        """The override as E3NetConfig.frame_level_dbfs (only meaningful when `frame_level` is set)."""
        if self.frame_level in (None, "off"):
            return None
        try:
            return float(self.frame_level)
        except ValueError:
            raise EdgePseError(f"--frame-level-dbfs takes a dBFS number or 'off', not {self.frame_level!r}") from None

    def __post_init__(self) -> None:
        get_recipe(self.recipe)
        if self.workers < 0:
            raise EdgePseError("--workers must be >= 0")
        if self.device != "cpu" and self.asr_weight > 0:
            raise EdgePseError("the ASR loss runs on the CPU only: drop --asr-loss-weight or train with --device cpu")
        if self.conditioning is not None and self.conditioning not in CONDITIONINGS:
            raise EdgePseError(f"--conditioning must be one of {', '.join(CONDITIONINGS)}")
        if self.frame_level is not None:
            try:
                replace(get_preset(self.preset), frame_level_dbfs=self.frame_level_dbfs)
            except (ValueError, KeyError) as e:
                raise EdgePseError(f"--frame-level-dbfs: {e}") from None
        if not 0.0 <= self.kd_weight <= 1.0:
            raise EdgePseError("--kd-weight must be within [0, 1]")
        if self.kd_weight > 0 and not self.teacher:
            raise EdgePseError("knowledge distillation needs --teacher")
        if not (math.isfinite(self.asr_weight) and self.asr_weight >= 0.0):
            raise EdgePseError(f"--asr-loss-weight must be a finite number >= 0, got {self.asr_weight}")
        if self.noisy_only and (not self.teacher or self.kd_weight != 1.0):
            raise EdgePseError("--noisy-only needs --teacher and uses the teacher's output only (kd_weight 1)")
        if self.noisy_dir and not self.noisy_only:
            raise EdgePseError("a folder of noisy recordings needs noisy_only (no clean reference to train on)")
        if self.steps <= 0 or self.batch <= 0:
            raise EdgePseError("--steps and --batch must be positive")


def _level(cfg: E3NetConfig) -> str:
    return "off" if cfg.frame_level_dbfs is None else f"{cfg.frame_level_dbfs:g}"


RUN_LOCK = ".train.lock"  # in a run folder, held by the process training it (edge_pse.atomic.hold_lock)
SIZE_KEYS = ("n_filters", "width", "n_blocks", "ff_dim")  # layer sizes: a run takes them from --init


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _batch(ds: MixtureDataset, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _stack([ds[i] for i in indices])


def _stack(exs: list[Example]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mix = torch.from_numpy(np.stack([e.mixture for e in exs]))
    ref = torch.from_numpy(np.stack([e.target for e in exs]))
    emb = torch.from_numpy(np.stack([e.embedding for e in exs]))
    return mix, ref, emb


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


class Trainer:
    def __init__(
        self, cfg: TrainConfig, train_ds: MixtureDataset | None = None, val_ds: MixtureDataset | None = None
    ) -> None:
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.rank, self.world = _rank_world()
        self.out = Path(cfg.out)
        self.recipe = get_recipe(cfg.recipe)
        mcfg = self.recipe.mixture(self.recipe.stages[0], cfg.seconds)
        if train_ds is None and cfg.noisy_dir:  # validation stays on --data: it needs clean references
            from edge_pse.data.mixtures import RecordingDataset

            train_ds = RecordingDataset(cfg.noisy_dir, seed=cfg.seed, cfg=mcfg)
        self.train_ds = train_ds or MixtureDataset(cfg.data, "train", seed=cfg.seed, cfg=mcfg)
        # validation is the same for every recipe: the default condition mix and clean two-talker pairs
        self.val_ds = val_ds or MixtureDataset(
            cfg.data, "val", seed=1234, cfg=MixtureConfig(seconds=cfg.seconds), length=cfg.val_examples
        )
        torch.manual_seed(cfg.seed)
        mcfg_model = get_preset(cfg.preset)
        if cfg.conditioning:
            mcfg_model = replace(mcfg_model, conditioning=cfg.conditioning)
        if cfg.frame_level is not None:
            mcfg_model = replace(mcfg_model, frame_level_dbfs=cfg.frame_level_dbfs)
        self.device = torch.device(cfg.device)
        self._build(mcfg_model)
        self.teacher: E3Net | None = None
        if cfg.teacher:
            self.teacher, _ = load_model(cfg.teacher)
            self.teacher.requires_grad_(False).to(self.device)
        self.asr = None
        if cfg.asr_weight > 0:  # imported here: with the weight at 0 nothing of Whisper is loaded
            from edge_pse.train.asr_loss import AsrLoss

            self.asr = AsrLoss()
        self.step = 0
        self.best = -math.inf
        self.history: list[dict] = []
        self.lineage: list[dict] = []  # earlier training stages of the weights this run started from (--init)
        self.events: list[dict] = []  # changes made to a resumed run (a switched frame level normalisation)

    def _build(self, mcfg: E3NetConfig) -> None:
        """The model, its optimizer and its DDP wrapper for these sizes (again when --init or a resumed run has
        other layer sizes than the preset: a pruned model fine-tunes at its own sizes)."""
        self.model = E3Net(mcfg)
        # standardise by the training speakers' d-vectors (a resumed or --init run loads its own statistics)
        self.model.set_speaker_stats(torch.from_numpy(np.concatenate(self.train_ds._embeddings)))
        self.model.to(self.device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr, weight_decay=1e-4)
        self.net: torch.nn.Module = self.model
        if self.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(self.model)

    def _adopt_sizes(self, cfg: E3NetConfig) -> None:
        """Rebuild the model with `cfg`'s layer sizes (this run's conditioning and level normalisation stay)."""
        if any(getattr(cfg, k) != getattr(self.model.cfg, k) for k in SIZE_KEYS):
            self._build(replace(self.model.cfg, **{k: getattr(cfg, k) for k in SIZE_KEYS}))

    # checkpoints -----------------------------------------------------------------------------------------
    @property
    def last_path(self) -> Path:
        return self.out / "last.pt"

    def save(self, path: Path | None = None, half: bool = False, with_optimizer: bool = True) -> None:
        if self.rank != 0:
            return
        extra = {"train_config": asdict(self.cfg), "step": self.step, "best_val": self.best, "history": self.history}
        if self.lineage:
            extra["lineage"] = self.lineage
        if self.events:
            extra["events"] = self.events
        if with_optimizer:
            extra["optimizer"] = self.opt.state_dict()
        save_checkpoint(path or self.last_path, self.model, self.cfg.preset, extra=extra, half=half)

    def resume(self, path: str | Path | None = None) -> bool:
        """Continue from `path` (default: the run's last.pt). Returns False when there is nothing to resume."""
        path = Path(path) if path else self.last_path
        if not path.exists():
            return False
        payload = read_checkpoint(path)
        if payload.get("format") != FORMAT or payload.get("preset") != self.cfg.preset:
            raise EdgePseError(f"{path} is not a {self.cfg.preset} edge-pse checkpoint")
        saved_cfg = E3NetConfig.from_dict(payload.get("config", {}))
        level_switch = saved_cfg.frame_level_dbfs != self.model.cfg.frame_level_dbfs
        if level_switch and self.cfg.frame_level is None:
            raise EdgePseError(
                f"{path} was trained with frame_level_dbfs {_level(saved_cfg)}, the preset has "
                f"{_level(self.model.cfg)}: pass --frame-level-dbfs {_level(saved_cfg)} to continue it as it was, "
                f"or --frame-level-dbfs {_level(self.model.cfg)} to continue it with that (same weights)"
            )
        self._adopt_sizes(saved_cfg)  # a run started from a pruned --init keeps its sizes
        if replace(saved_cfg, frame_level_dbfs=self.model.cfg.frame_level_dbfs) != self.model.cfg:
            raise EdgePseError(
                f"{path} holds a {saved_cfg.conditioning}-conditioned {self.cfg.preset}, this run trains "
                f"{self.model.cfg.conditioning}: pass --conditioning {saved_cfg.conditioning} to continue it, "
                "--no-resume to start over, or choose another --out"
            )
        extra = payload.get("extra", {})
        saved = extra.get("train_config", {})
        changed = [
            f"{k} {saved[k]!r} -> {getattr(self.cfg, k)!r}"
            for k in RUN_DEFINING
            if k in saved and saved[k] != getattr(self.cfg, k)
        ]
        if changed:  # continuing silently would train a mix of two recipes under the new command's name
            raise EdgePseError(
                f"{path} belongs to a run with other settings ({', '.join(changed)}): rerun with its settings to "
                "continue it, pass --no-resume to start over, or choose another --out"
            )
        self.model.load_state_dict({k: v.float() for k, v in payload["state_dict"].items()})
        if "optimizer" in extra:
            self.opt.load_state_dict(extra["optimizer"])
        self.step = int(extra.get("step", 0))
        self.best = float(extra.get("best_val", -math.inf))
        self.history = list(extra.get("history", []))
        self.lineage = list(extra.get("lineage", []))
        self.events = list(extra.get("events", []))
        if level_switch:  # the weights fit either way; the checkpoint and the log say where the run changed
            self.events.append(
                {"step": self.step, "event": f"frame_level_dbfs {_level(saved_cfg)} -> {_level(self.model.cfg)}"}
            )
        return True

    def init_from(self, source: str | Path) -> None:
        """Start from another checkpoint's weights (fine-tuning), keeping its training stages as lineage."""
        model, payload = load_model(source)
        if payload["preset"] != self.cfg.preset:
            raise EdgePseError(f"--init {source} is a {payload['preset']} checkpoint, not {self.cfg.preset}")
        # the frame level normalisation has no weights: a fine-tune may add or change it (the run's own setting)
        self._adopt_sizes(model.cfg)  # e.g. a pruned model (edge-pse prune) fine-tunes at its own sizes
        if replace(model.cfg, frame_level_dbfs=self.model.cfg.frame_level_dbfs) != self.model.cfg:
            raise EdgePseError(
                f"--init {source} is a {model.cfg.conditioning}-conditioned {self.cfg.preset}; this run trains "
                f"{self.model.cfg.conditioning} (pass --conditioning {model.cfg.conditioning} to fine-tune it)"
            )
        self.model.load_state_dict(model.state_dict())
        self.lineage = lineage_of(payload, str(source))

    # one step ---------------------------------------------------------------------------------------------
    def batch_indices(self, step: int) -> list[int]:
        b = self.cfg.batch
        base = (step * self.world + self.rank) * b
        return [(base + j) % len(self.train_ds) for j in range(b)]

    def batch_at(self, step: int) -> tuple[list[Example], list[int]]:
        """The examples of one step under the recipe's stage: dual-target pairs first (both rows of a pair
        side by side), then single examples; and their dataset indices (the ASR pseudo-label cache keys)."""
        stage = self.recipe.stage_at(step, self.cfg.steps)
        self.train_ds.cfg = self.recipe.mixture(stage, self.cfg.seconds)
        indices = self.batch_indices(step)
        n_pairs = 0 if self.cfg.noisy_dir else min(len(indices) // 2, round(stage.pairs * len(indices) / 2))
        exs: list[Example] = []
        for i in indices[:n_pairs]:
            exs += self.train_ds.pair(i)
        keys = [i for i in indices[:n_pairs] for _ in (0, 1)]
        rest = indices[n_pairs : len(indices) - n_pairs]
        exs += [self.train_ds[i] for i in rest]
        return exs, keys + rest

    def loss_on(
        self, mix: torch.Tensor, ref: torch.Tensor, emb: torch.Tensor, indices: list[int] | None = None
    ) -> torch.Tensor:
        """The training loss; `indices` (the examples' dataset indices) key the ASR pseudo-label cache."""
        hop = self.model.cfg.output_delay
        out = self.net(mix, emb)
        loss = torch.zeros(())
        w = self.cfg.kd_weight
        if w < 1.0:  # the output lags the input by one hop: compare with the reference one hop earlier
            loss = loss + (1 - w) * enhancement_loss(out[:, hop:], ref[:, :-hop], **self.recipe.loss_weights)
        t_out = None
        if w > 0.0:
            assert self.teacher is not None
            with torch.no_grad():
                t_out = self.teacher(mix, emb)
            loss = loss + w * enhancement_loss(out, t_out, **self.recipe.loss_weights)
        if self.asr is not None:
            loss = loss + self.cfg.asr_weight * self._asr_term(out[:, hop:], ref[:, :-hop], mix, t_out, hop, indices)
        return loss

    def _asr_term(
        self,
        est: torch.Tensor,
        ref: torch.Tensor,
        mix: torch.Tensor,
        t_out: torch.Tensor | None,
        hop: int,
        indices: list[int] | None,
    ) -> torch.Tensor:
        """Whisper token loss of the (aligned) output, mean over rows that have a target; 0 when none has one.

        With a clean reference, pseudo-labels come from it and target-absent rows (silent reference) are
        skipped. With noisy_only they come from the teacher's output (same lag as the student's), and a row
        counts as target-absent when the teacher output is 30 dB or more below the mixture.
        """
        assert self.asr is not None
        if self.cfg.noisy_only:
            assert t_out is not None
            source = t_out[:, hop:]
            keep = source.pow(2).mean(-1) > 1e-3 * mix.pow(2).mean(-1)
        else:
            source = ref
            keep = ref.pow(2).mean(-1) > 1e-10
        rows = keep.nonzero().flatten().tolist()
        if not rows:
            return torch.zeros(())
        keys = [indices[i] for i in rows] if indices is not None else None
        term = self.asr(est[rows], source[rows], keys)  # the mean over the rows with words to recognise
        return torch.zeros(()) if term is None else term

    def tensors_at(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        """One step's batch as tensors (mixture, reference, embedding) and its dataset keys."""
        exs, keys = self.batch_at(step)
        return (*_stack(exs), keys)

    def batches(self, start: int, end: int):
        """Steps start..end-1's batches, in order: made in the loop, or `workers` processes ahead of it (the
        same batches either way: each is a pure function of its step)."""
        if not self.cfg.workers:
            return (self.tensors_at(step) for step in range(start, end))
        loader = torch.utils.data.DataLoader(
            _StepBatches(self), batch_size=None, sampler=range(start, end), num_workers=self.cfg.workers,
            prefetch_factor=4, pin_memory=self.device.type == "cuda",
        )  # fmt: skip
        return iter(loader)

    def train_step(self, batch: tuple | None = None) -> float:
        self.model.train()
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.step, self.cfg)
        mix, ref, emb, indices = batch if batch is not None else self.tensors_at(self.step)
        mix, ref, emb = (t.to(self.device, non_blocking=True) for t in (mix, ref, emb))
        loss = self.loss_on(mix, ref, emb, indices)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
        self.opt.step()
        self.step += 1
        return loss.item()

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """SI-SNR improvements (dB) on the validation split: `mix` over the condition mix's examples that have
        a target; `right` and `swap` over two-talker pairs (SIR -5..+5 dB) with the target's embedding and
        with the other talker's, and their `gap` (0 for a model that ignores the speaker); `target_gain`, the
        target's level at the output vs its own (dB); `score`, the mean over every right-speaker row, picks
        best.pt; `onset_200ms`, the median share of the target the right-speaker rows pass in their first 200 ms."""
        self.model.eval()
        mix_gains, levels = [], []
        for i in range(0, len(self.val_ds), 16):
            batch = _batch(self.val_ds, list(range(i, min(i + 16, len(self.val_ds)))))
            mix, ref, emb = (t.to(self.device) for t in batch)
            keep = ref.pow(2).mean(-1) > 1e-10
            if keep.any():
                est = self.model.enhance(mix[keep], emb[keep])
                mix_gains.append(si_snr(est, ref[keep]) - si_snr(mix[keep], ref[keep]))
                levels.append(target_gain_db(est, ref[keep]))
        right, swap, onsets = [], [], []
        n_pairs = min(self.cfg.val_pairs, len(self.val_ds))
        for i in range(0, n_pairs, 8):
            exs = [e for j in range(i, min(i + 8, n_pairs)) for e in self.val_ds.pair(j)]
            mix, ref, emb = (t.to(self.device) for t in _stack(exs))
            swapped = emb.view(-1, 2, emb.shape[-1]).flip(1).reshape(emb.shape)  # A's row gets B's embedding
            base = si_snr(mix, ref)
            est = self.model.enhance(mix, emb)
            right.append(si_snr(est, ref) - base)
            levels.append(target_gain_db(est, ref)[ref.pow(2).mean(-1) > 1e-10])
            swap.append(si_snr(self.model.enhance(mix, swapped), ref) - base)
            for e, r in zip(est.cpu().numpy(), ref.cpu().numpy(), strict=True):
                if np.any(r):
                    onsets += onset_shares(e, r, (200,))[200]
        gains = torch.cat(mix_gains + right)
        out = {"mix": float(torch.cat(mix_gains).mean()), "score": float(gains.mean())}
        out["target_gain"] = float(torch.cat(levels).mean())  # dB of the target's level kept at the output
        if right:
            r, w = float(torch.cat(right).mean()), float(torch.cat(swap).mean())
            out |= {"right": r, "swap": w, "gap": r - w}
        if onsets:  # the share of the target passed in its first 200 ms (the clip's start: an onset to the model)
            out["onset_200ms"] = float(np.median(onsets))
        return out

    # the loop ---------------------------------------------------------------------------------------------
    def fit(self, show_progress: bool = True) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.out.mkdir(parents=True, exist_ok=True)
        log = (self.out / "log.jsonl").open("a") if self.rank == 0 else None
        if log:
            for event in self.events:
                if event["step"] == self.step:  # made by this session's resume
                    log.write(json.dumps(event) + "\n")
        columns = [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.3f}  val {task.fields[val]}"),
            TimeRemainingColumn(),
        ]
        with Progress(*columns, disable=not show_progress or self.rank != 0) as bar:
            task = bar.add_task(f"{self.cfg.preset}", total=self.cfg.steps, completed=self.step, loss=0.0, val="-")
            losses: list[float] = []
            t0 = time.time()
            stop = {"signal": False}
            previous = signal.getsignal(signal.SIGTERM)
            if self.rank == 0 and self.world == 1:  # a clean stop by PID: finish the step, save, exit
                signal.signal(signal.SIGTERM, lambda *_: stop.update(signal=True))
            end = min(self.cfg.steps, self.cfg.stop_at) if self.cfg.stop_at else self.cfg.steps
            batches = self.batches(self.step, end)
            while self.step < end and not stop["signal"]:
                losses.append(self.train_step(next(batches)))
                bar.update(task, completed=self.step, loss=float(np.mean(losses[-20:])))
                validate = self.step % self.cfg.val_every == 0 or self.step == self.cfg.steps
                if validate:
                    scores = self.validate()
                    val = scores["score"]
                    rec = {
                        "step": self.step,
                        "stage": self.recipe.stage_at(self.step - 1, self.cfg.steps).name,
                        "loss": float(np.mean(losses[-self.cfg.val_every :])),
                        "val_si_snri_db": round(val, 3),
                        **{f"val_{k}_db": round(v, 3) for k, v in scores.items() if k not in ("score", "onset_200ms")},
                        **({"val_onset_200ms": round(scores["onset_200ms"], 3)} if "onset_200ms" in scores else {}),
                        "seconds": round(time.time() - t0, 1),
                    }
                    self.history.append(rec)
                    gap = f" gap {scores['gap']:+.2f}" if "gap" in scores else ""
                    bar.update(task, val=f"{val:+.2f} dB{gap}")
                    if log:
                        log.write(json.dumps(rec) + "\n")
                        log.flush()
                    if val > self.best:
                        self.best = val
                        self.save(self.out / "best.pt", with_optimizer=False)
                if validate or self.step % self.cfg.save_every == 0:
                    self.save()
                    if log and not validate:  # a heartbeat for runs without a terminal
                        log.write(
                            json.dumps(
                                {
                                    "step": self.step,
                                    "loss": round(float(np.mean(losses[-20:])), 4),
                                    "seconds": round(time.time() - t0, 1),
                                }
                            )
                            + "\n"
                        )
                        log.flush()
            if self.step % self.cfg.save_every:  # stopped between saves (stop_at, SIGTERM)
                self.save()
            signal.signal(signal.SIGTERM, previous)
        if log:
            log.close()


class _StepBatches(torch.utils.data.Dataset):
    """Batches indexed by step, for DataLoader workers (forked: each holds its own copy of the datasets)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def __len__(self) -> int:
        return self.trainer.cfg.steps

    def __getitem__(self, step: int):
        return self.trainer.tensors_at(step)


def lineage_of(payload: dict, source: str) -> list[dict]:
    """The training stages behind a checkpoint's weights, oldest first: its own lineage plus its last stage.
    A model card built from a fine-tuned run then tells the whole recipe, not only the last command."""
    extra = payload.get("extra", {})
    tc = extra.get("train_config", {})
    keys = ("preset", "steps", "batch", "seconds", "lr", "seed", "teacher", "kd_weight", "recipe", "conditioning")
    stage = {k: tc.get(k) for k in keys}
    stage |= {"source": str(source), "step": extra.get("step"), "best_val": extra.get("best_val")}
    return [*extra.get("lineage", []), stage]


def run_training(cfg: TrainConfig, resume: bool = True, show_progress: bool = True, init: str | None = None) -> Trainer:
    """Entry point for the CLI; joins a torchrun process group when launched by torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    lock = None
    try:
        if _rank_world()[0] == 0:  # a second run in this folder would overwrite this one's checkpoints and log
            out = Path(cfg.out)
            out.mkdir(parents=True, exist_ok=True)
            try:
                lock = hold_lock(out / RUN_LOCK)
            except BlockingIOError:
                raise EdgePseError(
                    f"another training run (pid {lock_holder(out / RUN_LOCK)}) is writing to {out}: stop it first, "
                    "or choose another --out"
                ) from None
        trainer = Trainer(cfg)
        if resume and trainer.resume():
            started_from = trainer.lineage[-1]["source"] if trainer.lineage else None
            if init and started_from != str(init):
                raise EdgePseError(
                    f"{trainer.last_path} was not started from --init {init} (its start: {started_from or 'scratch'})"
                    ": pass --no-resume to start over, or choose another --out"
                )
        elif init:
            trainer.init_from(init)
        trainer.fit(show_progress=show_progress)
        return trainer
    finally:
        if lock is not None:
            lock.close()
        if dist.is_initialized():
            dist.destroy_process_group()
