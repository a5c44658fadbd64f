"""The committed calibration set (`synthetic.npz`, made by `python -m edge_pse.calibration_data.build` from
the project's own synthetic voices and noise): the default of `edge-pse export --calibration`, shipped
inside the package so an installed kit exports without a checkout."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def folder() -> Path:
    """The folder holding the committed set (inside the installed package)."""
    return Path(str(resources.files("edge_pse.calibration_data")))
