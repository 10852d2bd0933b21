"""The summary and the offline report: flat headline numbers, and an HTML page that renders in Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from biasloop.report.html import build_summary, render_report, share_rows, summary_row

GEN_METRICS = {
    "generation": 1,
    "amplification": {"amplification_abs": 0.125, "amplification_abs_ci": [0.1, 0.15], "amplification_dir": 0.05,
                      "amplification_dir_ci": [0.01, 0.09], "shift_to_majority": 0.04},
    "amplification_corrected": {"amplification_abs": 0.11},
    "amplification_true": {"amplification_abs": 0.09},
    "per_occupation": [{"occupation": "nurse", "share_train": 0.9, "share_gen": 0.95,
                        "share_train_ci": [0.85, 0.93], "share_gen_ci": [0.9, 0.99]}],
    "generator": {"occupation_accuracy": 0.7, "abstain_rate": 0.05},
    "downstream": {"recall": {"recall@10": 0.3, "recall@10_gap": 0.02}, "max_skew_mean": 0.4, "ndkl_mean": 0.1,
                   "fairness": {"worst_group_accuracy": 0.5, "overall_accuracy": 0.8}},
}


def test_summary_row_and_summary() -> None:
    row = summary_row(GEN_METRICS)
    assert row["amplification_abs"] == 0.125
    assert (row["amplification_abs_lo"], row["amplification_abs_hi"]) == (0.1, 0.15)
    assert row["recall_at_10_gap"] == 0.02 and row["worst_group_accuracy"] == 0.5
    summary = build_summary([row], {"table": {"prompt_vs_keyword": {"measured": {"amplification_abs": 0.2}}}},
                            {"accuracy": 0.99, "tpr": 0.98, "fpr": 0.01})
    assert summary["gen1"]["amplification_abs"] == 0.125
    assert summary["paradox"] == {"prompt_vs_keyword": 0.2}
    assert summary["instrument"]["accuracy"] == 0.99
    assert share_rows([GEN_METRICS]) == [{"generation": 1, "occupation": "nurse", "share_train": 0.9, "share_gen": 0.95}]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_report_is_self_contained_and_renders_offline(tmp_path: Path) -> None:
    figure = tmp_path / "figure.png"
    gradient = np.tile(np.linspace(0, 255, 200, dtype=np.uint8), (120, 1))
    Image.fromarray(np.stack([gradient, 255 - gradient, gradient], axis=-1)).save(figure)
    report = tmp_path / "report.html"
    text = render_report(report, [summary_row(GEN_METRICS)], None, {"accuracy": 0.99}, {"synthetic_ratio": 0.4},
                         {"A figure": figure, "A missing figure": tmp_path / "nope.png"})
    assert report.read_text() == text
    assert "data:image/png;base64," in text
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:)?//""", text)  # nothing to fetch
    assert "12.5" in text  # amplification shown in percentage points

    browser = _chromium()
    if browser is None:
        pytest.skip("Chromium is not installed (make test installs Debian's chromium)")
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<table>" in dom.stdout and "biasloop" in dom.stdout
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1200,1600", report.as_uri()],
                   capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    # The embedded figure's colours appear on the page: it decoded and rendered without network.
    assert pixels.std() > 5
    greenish = (pixels[..., 1] > 200) & (pixels[..., 0] < 60)
    assert greenish.sum() > 100
