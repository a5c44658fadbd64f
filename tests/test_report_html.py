"""The HTML report opens in a real headless Chromium (Debian's) without console errors, and every embedded
plot decodes (the page marks `data-plots-decoded="k/n"` on load); a corrupted plot is noticed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

BENCH = "--models edge_pse.bench.plugins:passthrough --hops 100 --warmup 10 --per-condition 1 --seconds 1 --fast"
BENCH += " --peers none"  # the page's layout is what is checked here: the peers' rows would push the plots down

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")


def chromium(tmp_path: Path, page: Path, *mode: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1280,2200",
    ]
    return subprocess.run(
        [CHROMIUM, *flags, *mode, page.resolve().as_uri()], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory, synthetic_root) -> Path:
    out = tmp_path_factory.mktemp("html") / "report"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_pse",
            "bench",
            *BENCH.split(),
            "--eval-data",
            str(synthetic_root),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    return out


def test_report_opens_in_chromium_without_errors_and_shows_the_plots(report_dir, tmp_path) -> None:
    page = report_dir / "report.html"
    assert page.read_text().count("data:image/png;base64,") == 3  # CDF, quality vs latency, spectrograms
    dom = chromium(tmp_path, page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-plots-decoded="3/3"' in dom.stdout
    assert ":CONSOLE" not in dom.stderr, [ln for ln in dom.stderr.splitlines() if ":CONSOLE" in ln]
    assert "passthrough/-/plugin/t1" in dom.stdout
    shot = tmp_path / "shot.png"
    res = chromium(tmp_path, page, f"--screenshot={shot}")
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    import matplotlib.image

    img = matplotlib.image.imread(shot)
    assert img.shape[0] >= 2000 and img.shape[1] >= 1200
    # plots, not a blank page: a good share of the pixels is neither white nor the page's grey text
    colourful = np.ptp(img[..., :3], axis=-1) > 0.15
    assert colourful.mean() > 0.05


def test_a_corrupted_plot_is_noticed(report_dir, tmp_path) -> None:
    text = (report_dir / "report.html").read_text()
    start = text.index("data:image/png;base64,") + len("data:image/png;base64,")
    bad = tmp_path / "bad.html"
    bad.write_text(text[:start] + "AAAA" + text[start + 4000 :])
    dom = chromium(tmp_path, bad, "--dump-dom")
    assert 'data-plots-decoded="2/3"' in dom.stdout
