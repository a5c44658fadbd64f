#!/usr/bin/env python
"""python export/quantize.py --student tiny: the same as `edge-pse export` for a checkout."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_pse.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
