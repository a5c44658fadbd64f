#!/usr/bin/env python
"""Build a calibration set (.npz) for `edge-pse export --calibration DIR`.

  python -m edge_pse.calibration_data.build             # the committed synthetic set (project code only)
  python -m edge_pse.calibration_data.build --data ../shared/data --out DIR/real.npz --clips 48   # real speech

See edge_pse/calibration_data/README.md for what the set is and how it is split.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    from edge_pse.enroll.dvector import embed
    from edge_pse.errors import EdgePseError
    from edge_pse.quant.calibration import clips_from_audio_root, save_npz, synthetic_clips

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="a data root (../shared/data's layout; default: synthetic clips)")
    p.add_argument("--out", type=Path, default=HERE / "synthetic.npz")
    p.add_argument("--clips", type=int, default=18, help="clips in all; a quarter (synthetic: 6) is held out")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=1234)
    args = p.parse_args()
    try:
        if args.data is None:
            n_held = max(2, args.clips // 3)
            clips = synthetic_clips(args.clips - n_held, n_held, args.seconds, args.seed, embed)
        else:
            clips = clips_from_audio_root(args.data, args.clips, args.seconds, args.seed)
    except EdgePseError as e:
        print(f"build.py: error: {e}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_npz(args.out, clips)
    held = sum(c.heldout for c in clips)
    print(f"wrote {args.out}: {len(clips) - held} calibration + {held} held-out clips, {args.out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
