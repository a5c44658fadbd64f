"""Named training recipes: what the mixtures look like at each stage of a run (a curriculum).

A recipe is a list of stages; each stage ends at a fraction of the run's steps, so one learning-rate schedule
(lr_at over the whole run) spans every stage and a resumed run lands in the stage its step belongs to.
Within a stage, a share of each batch comes as dual-target pairs (MixtureDataset.pair: one two-talker
mixture, once per talker as the target) and the rest as single examples of the stage's condition mix.

`pse` is the recipe that teaches a small E3Net to use the speaker (docs/training.md has the measurements):
two talkers only until the model separates them by the embedding, then noise, rooms and target absence come
back while half of every batch stays two-talker. `pse-noise` fine-tunes a `pse` run (`--init` its best) on
its last stage with three times the share of noise-only rows, for a run whose noise SI-SDRi ends below zero
(campaign stage A2). `standard` is the first shipped models' mix, kept so their
runs still resume and a user can compare.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from edge_pse.data.mixtures import MixtureConfig
from edge_pse.errors import EdgePseError


@dataclass(frozen=True)
class Stage:
    name: str
    until: float  # the stage runs while step < until x total steps
    pairs: float  # share of a batch's rows that come as dual-target pairs (both rows of each pair)
    mixture: dict = field(default_factory=dict)  # MixtureConfig fields for this stage


@dataclass(frozen=True)
class Recipe:
    name: str
    doc: str
    stages: tuple[Stage, ...]
    common: dict = field(default_factory=dict)  # MixtureConfig fields for every stage (speaker variety, levels)
    level_weight: float = 0.0  # weight of the loss's target-level term (losses.enhancement_loss)
    over_suppression: float = 1.0  # weight of missing target magnitude vs excess (losses.compressed_spectral)

    @property
    def loss_weights(self) -> dict[str, float]:
        return {"level_weight": self.level_weight, "over_suppression": self.over_suppression}

    def stage_at(self, step: int, total: int) -> Stage:
        for stage in self.stages:
            if step < stage.until * total:
                return stage
        return self.stages[-1]

    def mixture(self, stage: Stage, seconds: float) -> MixtureConfig:
        return replace(MixtureConfig(seconds=seconds), **self.common, **stage.mixture)


RECIPES: dict[str, Recipe] = {
    "standard": Recipe(
        "standard",
        "the first shipped models' mix: single examples, SIR -5..+10 dB, levels -35..-15 dBFS",
        (Stage("standard", 1.0, 0.0),),
    ),
    "pse": Recipe(
        "pse",
        "two-talker dual-target pairs (SIR -5..+5 dB) for 35 % of the run, then noise, rooms and partial target "
        "absence come back with >= 50 % pairs; speed-perturbed pseudo-speakers (x0.85, x1.15), 3 enrollment "
        "crops per utterance end, levels -50..-10 dBFS; the loss holds the target at its input level",
        (
            Stage("two-talker", 0.35, 1.0),
            Stage(
                "noise",
                0.6,
                0.75,
                {
                    "pair_noise_prob": 0.5,
                    "pair_reverb_prob": 0.15,
                    "partial_absence_prob": 0.1,
                    "snr_db": (5.0, 20.0),
                    "weights": (0.4, 0.0, 0.2, 0.1, 0.3),
                },
            ),
            Stage(
                "full",
                1.0,
                0.5,
                {
                    "pair_noise_prob": 0.5,
                    "pair_reverb_prob": 0.25,
                    "partial_absence_prob": 0.2,
                    "weights": (0.3, 0.1, 0.2, 0.1, 0.3),
                },
            ),
        ),
        {"pseudo_speakers": (0.85, 1.15), "enroll_crops": 3, "level_dbfs": (-50.0, -10.0)},
        level_weight=1.0,
    ),
}
# the fine-tune: pse's full stage, noise-only rows 15 % -> 45 % of a batch, pairs keep the speaker cue
RECIPES["pse-noise"] = replace(
    RECIPES["pse"],
    name="pse-noise",
    doc="fine-tune of a pse run: its full stage with 45 % noise-only rows (pse: 15 %) and noisier pairs",
    stages=(
        Stage(
            "full-noise",
            1.0,
            0.4,
            {**RECIPES["pse"].stages[-1].mixture, "pair_noise_prob": 0.7, "weights": (0.75, 0.0, 0.1, 0.05, 0.1)},
        ),
    ),
)
# the fine-tune against over-suppression: pse-noise's mix with near-clean noise rows (SNR up to 35 dB) and
# missing target magnitude weighed 3x (losses.compressed_spectral), because a pse model muted its own talker at
# the start of a stream and where unsure (-11 to -13 dB SI-SDRi on two held-out clips at 18-19 dB SNR)
RECIPES["pse-keep"] = replace(
    RECIPES["pse-noise"],
    name="pse-keep",
    doc="fine-tune of a pse run against muting the target: pse-noise's mix, noise rows up to 35 dB SNR, "
    "missing target magnitude weighed 3x",
    stages=(
        replace(
            RECIPES["pse-noise"].stages[0],
            name="full-keep",
            mixture={**RECIPES["pse-noise"].stages[0].mixture, "snr_db": (-5.0, 35.0)},
        ),
    ),
    over_suppression=3.0,
)

# the fine-tune for a larger data root (campaign stage H, issue 30): pse-keep's mix, and the target talks in
# turns in half of the rows (a late start, pauses, re-entries while the other voices go on) so that the model
# learns to pass the enrolled voice from its first words, not only once it has heard a while of it
RECIPES["pse-data"] = replace(
    RECIPES["pse-keep"],
    name="pse-data",
    doc="fine-tune for a larger data root: pse-keep's mix with the target talking in turns (late start, 1-2 "
    "pauses) in half of the rows; use with clips of 3 s or more",
    stages=(
        replace(
            RECIPES["pse-keep"].stages[0],
            name="full-turns",
            mixture={**RECIPES["pse-keep"].stages[0].mixture, "turns_prob": 0.5},
        ),
    ),
)


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise EdgePseError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}") from None
