"""E3Net configuration, named presets and the streaming state spec.

This module is torch-free on purpose: the runtime and the export manifest read the state spec and the
preset table without importing the model code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

SAMPLE_RATE = 16_000
HOP = 160  # 10 ms at 16 kHz
WINDOW = 2 * HOP  # the encoder's kernel: 20 ms, which is also the algorithmic latency
# How the speaker embedding enters the network (docs/training.md has the measurements):
# concat: the raw d-vector concatenated to every frame before the fusion layer (the paper; the first shipped
#   models). At this project's data scale it enters at 1.5-4 % of the feature scale and the models ignore it.
# standardised: the same, after a constant per-dimension standardisation by the training population's d-vectors.
# film: standardised, plus a zero-initialised FiLM (per-channel scale and shift from the embedding) in front of
#   every LSTM block, so every block is told whom to keep.
# mul: standardised, plus a zero-initialised multiplicative adaptation (scale only) in front of every block.
CONDITIONINGS = ("concat", "standardised", "film", "mul")
# Per-frame level normalisation (docs/bundle.md, "Level"): every analysis window is scaled to this rms before
# the encoder and the decoder's frame is scaled back, so the encoder/decoder activations, and with them one
# static int8 scale, no longer depend on the input level. Frames quieter than FRAME_MAX_GAIN_DB below it
# (digital silence) get at most that gain.
FRAME_MAX_GAIN_DB = 60.0


@dataclass(frozen=True)
class E3NetConfig:
    """Sizes of one E3Net; presets are instances, not subclasses."""

    n_filters: int = 2048  # N: learnable encoder/decoder filters
    width: int = 256  # model width after speaker fusion (= LSTM hidden size)
    n_blocks: int = 4  # LSTM blocks
    ff_dim: int = 1024  # hidden size of each block's feed-forward projection
    spk_dim: int = 256  # speaker embedding (d-vector) size
    hop: int = HOP
    window: int = WINDOW
    sample_rate: int = SAMPLE_RATE
    conditioning: str = "concat"  # a checkpoint without the key predates the others (CONDITIONINGS)
    frame_level_dbfs: float | None = None  # per-frame level normalisation target; None: off (the first models)

    def __post_init__(self) -> None:
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"unknown conditioning {self.conditioning!r}; choose from {', '.join(CONDITIONINGS)}")
        if self.window != 2 * self.hop:
            raise ValueError("E3Net's streaming form assumes a window of exactly two hops")
        if self.frame_level_dbfs is not None and not -60.0 <= self.frame_level_dbfs <= 0.0:
            raise ValueError("frame_level_dbfs must be between -60 and 0 dBFS")
        for name in ("n_filters", "width", "n_blocks", "ff_dim", "spk_dim", "hop"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")

    @property
    def latency_samples(self) -> int:
        """Algorithmic latency: one analysis window (the step emits a hop one hop late)."""
        return self.window

    @property
    def output_delay(self) -> int:
        """Samples by which the model's output stream lags its input stream."""
        return self.hop

    @property
    def standardised(self) -> bool:
        """Whether the embedding is standardised by the training population's statistics (kept as buffers)."""
        return self.conditioning != "concat"

    @property
    def per_block(self) -> bool:
        """Whether every LSTM block gets its own speaker adaptation (film or mul)."""
        return self.conditioning in ("film", "mul")

    @property
    def frame_gain_limits(self) -> tuple[float, float] | None:
        """(target rms, largest gain) of the per-frame level normalisation, linear; None when it is off."""
        if self.frame_level_dbfs is None:
            return None
        return 10 ** (self.frame_level_dbfs / 20), 10 ** (FRAME_MAX_GAIN_DB / 20)

    def to_dict(self) -> dict[str, int | str | float | None]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> E3NetConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown E3Net config keys: {sorted(unknown)}")
        return cls(**d)


# Sizes were chosen from `edge-pse models` (see README): `teacher` is the paper's size, `small` is ~2.6x
# cheaper per hop (the paper's students are 2-4x), `tiny` stays under 0.5 M parameters so its int8 weights
# fit in a Raspberry Pi 4's 1 MiB L2 cache. N is shrunk hardest: ~1/3 of the teacher's weights are N-sized.
# New models are FiLM-conditioned (the first shipped ones were `concat` and did not use the speaker) and normalise
# each frame's level (int8 then keeps its accuracy at any input level; the first models did not).
PRESETS: dict[str, E3NetConfig] = {
    "teacher": E3NetConfig(
        n_filters=2048, width=256, n_blocks=4, ff_dim=1024, conditioning="film", frame_level_dbfs=-20.0
    ),
    "small": E3NetConfig(
        n_filters=1024, width=192, n_blocks=3, ff_dim=512, conditioning="film", frame_level_dbfs=-20.0
    ),
    "tiny": E3NetConfig(n_filters=256, width=96, n_blocks=2, ff_dim=192, conditioning="film", frame_level_dbfs=-20.0),
}


def get_preset(name: str) -> E3NetConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None


@dataclass(frozen=True)
class StateTensor:
    """One state tensor the streaming step reads and returns (batch 1 at run time)."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    doc: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "doc": self.doc}


@dataclass(frozen=True)
class StepIO:
    """Everything the export and runtime need to call the step: inputs, outputs, state layout.

    The step's recurrent state travels as ONE float tensor `state` (the `parts` side by side, see `layout`): a
    runtime copies one output back to one input per hop. Measured on the tiny int8 LiteRT file, 1 thread, per
    hop: 30-31 us with six state tensors (a 14-16 us model call), 19 us packed (docs/bundle.md).
    """

    hop: int
    spk_dim: int
    parts: tuple[StateTensor, ...] = field(default_factory=tuple)

    @property
    def state_size(self) -> int:
        return sum(p.shape[-1] for p in self.parts)

    @property
    def bounds(self) -> list[tuple[int, int]]:
        """(start, end) of each part in the packed state's last axis."""
        out, pos = [], 0
        for p in self.parts:
            out.append((pos, pos + p.shape[-1]))
            pos += p.shape[-1]
        return out

    @property
    def states(self) -> tuple[StateTensor, ...]:
        names = " | ".join(p.name for p in self.parts)
        return (StateTensor("state", (1, self.state_size), doc=f"packed recurrent state: {names} (io.layout)"),)

    @property
    def input_names(self) -> list[str]:
        return ["hop", "spk"] + [s.name for s in self.states]

    @property
    def output_names(self) -> list[str]:
        return ["out"] + [f"{s.name}_out" for s in self.states]

    def to_dict(self) -> dict:
        return {
            "inputs": [
                {"name": "hop", "shape": [1, self.hop], "dtype": "float32"},
                {"name": "spk", "shape": [1, self.spk_dim], "dtype": "float32"},
            ],
            "outputs": [{"name": "out", "shape": [1, self.hop], "dtype": "float32"}],
            "states": [s.to_dict() for s in self.states],
            "layout": [
                {"name": p.name, "offset": a, "size": b - a, "doc": p.doc}
                for p, (a, b) in zip(self.parts, self.bounds, strict=True)
            ],
        }


def state_spec(cfg: E3NetConfig, spk_dim: int | None = None) -> StepIO:
    """The step's state parts, in the order they are packed into its one state tensor. `spk_dim`: the size of
    the step's speaker input when it is not the embedding (a projected step, model.step.E3NetStep)."""
    parts = [StateTensor("enc_buf", (1, cfg.hop), doc="previous input hop (first half of the window)")]
    for k in range(cfg.n_blocks):
        parts.append(StateTensor(f"o{k}", (1, cfg.width), doc=f"LSTM block {k} output gate (h = o * tanh(c))"))
        parts.append(StateTensor(f"c{k}", (1, cfg.width), doc=f"LSTM block {k} cell state"))
    parts.append(StateTensor("dec_tail", (1, cfg.hop), doc="decoder overlap-add tail"))
    return StepIO(hop=cfg.hop, spk_dim=spk_dim or cfg.spk_dim, parts=tuple(parts))
