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
    "amplification": {"amplification_abs": 0.125, "noise_floor_abs": 0.045, "excess_abs": 0.08,
                      "excess_abs_ci": [0.03, 0.13], "p_value_abs": 0.002, "amplification_dir": 0.05,
                      "excess_dir": 0.04, "excess_dir_ci": [0.01, 0.07], "shift_to_majority": 0.04,
                      "shift_to_majority_ci": [0.01, 0.07]},
    "amplification_corrected": {"amplification_abs": 0.11, "excess_abs": 0.07},
    "amplification_true": {"amplification_abs": 0.09, "excess_abs": 0.05},
    "per_occupation": [{"occupation": "nurse", "share_train": 0.9, "share_gen": 0.95,
                        "share_train_ci": [0.85, 0.93], "share_gen_ci": [0.9, 0.99]}],
    "generator": {"occupation_accuracy": 0.7, "abstain_rate": 0.05},
    "downstream": {"recall": {"recall@10": 0.3, "recall@10_gap": 0.02}, "max_skew_mean": 0.596, "ndkl_mean": 0.1,
                   "fairness": {"worst_group_accuracy": 0.5, "overall_accuracy": 0.8, "min_group_size": 20}},
}


def test_summary_row_and_summary() -> None:
    row = summary_row(GEN_METRICS)
    assert row["amplification_abs"] == 0.125 and row["noise_floor_abs"] == 0.045 and row["excess_abs"] == 0.08
    assert (row["excess_abs_lo"], row["excess_abs_hi"], row["p_value_abs"]) == (0.03, 0.13, 0.002)
    assert row["excess_abs_true"] == 0.05 and "bias_amp" not in row
    assert row["recall_at_10_gap"] == 0.02 and row["worst_group_accuracy"] == 0.5 and row["worst_group_min_size"] == 20
    measured = {"amplification_abs": 0.2, "noise_floor_abs": 0.05, "excess_abs": 0.15, "excess_abs_ci": [0.1, 0.2],
                "p_value_abs": 0.001, "n_images_train": 3000, "n_images_gen": 800, "per_occupation": []}
    summary = build_summary([row], {"table": {"prompt_vs_keyword": {"measured": measured}}},
                            {"accuracy": 0.99, "tpr": 0.98, "fpr": 0.01})
    assert summary["gen1"]["excess_abs"] == 0.08
    assert summary["paradox"] == {"prompt_vs_keyword": {
        "amplification_abs": 0.2, "noise_floor_abs": 0.05, "excess_abs": 0.15, "p_value_abs": 0.001,
        "n_images_train": 3000, "n_images_gen": 800, "excess_abs_lo": 0.1, "excess_abs_hi": 0.2}}
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
    assert "12.5" in text and "+8.0" in text  # amplification and excess in percentage points
    assert "0.596" in text and "59.6" not in text  # MaxSkew in nats, not scaled to percent
    assert "equals the shift to the majority" in text  # the alias shown once, with a note

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
