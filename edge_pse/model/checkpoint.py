"""Self-describing checkpoints: preset name, config, weights and software versions in one file.

Loaded with `torch.load(..., weights_only=True)` only: a checkpoint is data, never code.
"""

from __future__ import annotations

from pathlib import Path

import torch

from edge_pse import __version__
from edge_pse.atomic import atomic_path
from edge_pse.errors import EdgePseError
from edge_pse.model.config import E3NetConfig
from edge_pse.model.e3net import E3Net

FORMAT = "edge-pse-checkpoint"
FORMAT_VERSION = 1
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "checkpoints"


def save_checkpoint(path: str | Path, model: E3Net, preset: str, extra: dict | None = None, half: bool = False) -> None:
    """Write atomically (temp file, then rename). `half` stores weights as fp16 to keep shipped files small."""
    state = {
        k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "preset": preset,
        "config": model.cfg.to_dict(),
        "state_dict": state,
        "versions": {"edge_pse": __version__, "torch": str(torch.__version__)},
        "extra": extra or {},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """A shipped model name (`tiny`, `small`, `teacher`) or a path."""
    p = Path(name_or_path)
    if p.exists():
        return p
    shipped = SHIPPED_DIR / f"{name_or_path}.pt"
    if shipped.exists():
        return shipped
    if str(name_or_path) in ("tiny", "small", "teacher") and (SHIPPED_DIR / f"{name_or_path}.md").exists():
        raise EdgePseError(  # the card is here, the weights are not: an install from the device wheel
            f"the shipped {name_or_path} checkpoint is not in this install (the wheel leaves the torch checkpoints "
            "out: they are for training and export on a host); use a checkout: pip install -e '.[all]'"
        )
    raise EdgePseError(f"checkpoint {name_or_path!r} not found (not a file, not a shipped model in {SHIPPED_DIR})")


def read_checkpoint(path: str | Path) -> dict:
    """torch.load with weights_only=True; TorchVersion (a str subclass early files carry) is allowed too."""
    from torch.torch_version import TorchVersion

    with torch.serialization.safe_globals([TorchVersion]):
        return torch.load(path, map_location="cpu", weights_only=True)


def load_payload(name_or_path: str | Path) -> dict:
    path = resolve_checkpoint(name_or_path)
    try:
        payload = read_checkpoint(path)
    except Exception as e:  # corrupt, truncated, pickled code: all refused the same way
        raise EdgePseError(f"cannot read checkpoint {path}: {e}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise EdgePseError(f"{path} is not an edge-pse checkpoint")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise EdgePseError(
            f"{path} has checkpoint format {payload['format_version']}; this edge-pse reads up to {FORMAT_VERSION}"
        )
    return payload


def load_model(name_or_path: str | Path) -> tuple[E3Net, dict]:
    """The float32 model in eval mode, and the checkpoint's payload (preset, extra, versions)."""
    payload = load_payload(name_or_path)
    model = E3Net(E3NetConfig.from_dict(payload["config"]))
    model.load_state_dict({k: v.float() for k, v in payload["state_dict"].items()})
    return model.eval(), payload
