"""The E3Net model family. `config` is torch-free; `e3net`, `step` and `stats` need torch."""

from edge_pse.model.config import PRESETS, E3NetConfig, get_preset, state_spec

__all__ = ["PRESETS", "E3NetConfig", "get_preset", "state_spec"]
