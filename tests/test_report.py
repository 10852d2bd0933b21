"""The summary and the offline report: flat headline numbers, and an HTML page that renders in Chromium."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from biasloop.report.html import render_report
from biasloop.report.markdown import results_markdown
from biasloop.report.summary import build_summary, share_rows, summary_row
from tests.headless import CHROMIUM_FLAGS, chromium_binary

GEN_METRICS = {
    "generation": 1,
    "amplification": {
        "amplification_abs": 0.125,
        "noise_floor_abs": 0.045,
        "excess_abs": 0.08,
        "excess_abs_ci": [0.03, 0.13],
        "p_value_abs": 0.002,
        "amplification_dir": 0.05,
        "excess_dir": 0.04,
        "excess_dir_ci": [0.01, 0.07],
        "shift_to_majority": 0.04,
        "shift_to_majority_ci": [0.01, 0.07],
        "estimands": {
            "shift": {"estimate": 0.04, "ci": [0.01, 0.07], "p_value": 0.000999, "p_value_is_bound": True},
            "gap": {"estimate": 0.1, "ci": [0.05, 0.16], "p_value": 0.002, "p_value_is_bound": False},
            "a_abs_raw": 0.125,
        },
    },
    "decomposition": {
        "prompt_vs_keyword": {
            "available": True,
            "measured": {"estimate": 0.04, "ci": [0.01, 0.07]},
            "data": {"estimate": 0.03, "ci": [0.02, 0.04]},
            "generator": {"estimate": 0.02, "ci": [-0.01, 0.05]},
            "instrument": {"estimate": -0.01, "ci": [-0.02, 0.0]},
        }
    },
    "amplification_corrected": {"amplification_abs": 0.11, "excess_abs": 0.07},
    "amplification_vs_training_dataset": {
        "available": True,
        "measured": {"estimands": {"shift": {"estimate": 0.015, "ci": [-0.005, 0.035]}, "gap": {"estimate": 0.06}}},
    },
    "amplification_true": {"amplification_abs": 0.09, "excess_abs": 0.05},
    "per_occupation": [
        {
            "occupation": "nurse",
            "share_train": 0.9,
            "share_gen": 0.95,
            "share_train_ci": [0.85, 0.93],
            "share_gen_ci": [0.9, 0.99],
        }
    ],
    "generator": {"occupation_accuracy": 0.7, "abstain_rate": 0.05},
    "downstream": {
        "recall": {"recall@10": 0.3, "recall@10_gap": 0.02},
        "max_skew_mean": 0.7,
        "max_skew_vs_training_mean": 0.596,
        "ndkl_mean": 0.1,
        "fairness": {"worst_group_accuracy": 0.5, "overall_accuracy": 0.8, "min_group_size": 20},
    },
}


def test_summary_row_and_summary() -> None:
    row = summary_row(GEN_METRICS)
    assert list(row)[:4] == ["generation", "shift", "shift_lo", "shift_hi"]  # the headline estimand leads
    assert (row["shift"], row["shift_lo"], row["shift_hi"], row["shift_p_is_bound"]) == (0.04, 0.01, 0.07, True)
    assert (row["gap"], row["gap_lo"], row["gap_hi"], row["a_abs_raw"]) == (0.1, 0.05, 0.16, 0.125)
    assert (row["data"], row["generator"], row["instrument"]) == (0.03, 0.02, -0.01)
    assert (row["generator_lo"], row["generator_hi"]) == (-0.01, 0.05)
    assert row["amplification_abs"] == 0.125 and row["noise_floor_abs"] == 0.045 and row["excess_abs"] == 0.08
    assert (row["excess_abs_lo"], row["excess_abs_hi"], row["p_value_abs"]) == (0.03, 0.13, 0.002)
    assert row["excess_abs_true"] == 0.05 and "bias_amp" not in row
    assert row["recall_at_10_gap"] == 0.02 and row["worst_group_accuracy"] == 0.5 and row["worst_group_min_size"] == 20
    measured = {
        "amplification_abs": 0.2,
        "noise_floor_abs": 0.05,
        "excess_abs": 0.15,
        "excess_abs_ci": [0.1, 0.2],
        "p_value_abs": 0.001,
        "n_images_train": 3000,
        "n_images_gen": 800,
        "per_occupation": [],
        "estimands": {
            "shift": {"estimate": 0.18, "ci": [0.15, 0.21], "p_value": 0.001, "p_value_is_bound": True},
            "gap": {"estimate": 0.19, "ci": [0.1, 0.25], "p_value": 0.001, "p_value_is_bound": True},
            "a_abs_raw": 0.2,
        },
    }
    decomposition = {
        "available": True,
        "measured": {"estimate": 0.18, "ci": [0.15, 0.21]},
        "data": {"estimate": 0.09, "ci": [0.08, 0.1]},
        "generator": {"estimate": 0.08, "ci": [0.05, 0.11]},
        "instrument": {"estimate": 0.01, "ci": [-0.01, 0.03]},
    }
    summary = build_summary(
        [row],
        {"table": {"prompt_vs_keyword": {"measured": measured, "decomposition": decomposition}}},
        {"accuracy": 0.99, "tpr": 0.98, "fpr": 0.01},
    )
    assert list(summary)[0] == "headline"
    assert summary["gen1"]["excess_abs"] == 0.08
    assert (
        summary["headline"]
        == summary["paradox"]["prompt_vs_keyword"]
        == {
            "shift": 0.18,
            "shift_lo": 0.15,
            "shift_hi": 0.21,
            "shift_p": 0.001,
            "shift_p_is_bound": True,
            "gap": 0.19,
            "gap_lo": 0.1,
            "gap_hi": 0.25,
            "gap_p": 0.001,
            "gap_p_is_bound": True,
            "a_abs_raw": 0.2,
            "data": 0.09,
            "data_lo": 0.08,
            "data_hi": 0.1,
            "generator": 0.08,
            "generator_lo": 0.05,
            "generator_hi": 0.11,
            "instrument": 0.01,
            "instrument_lo": -0.01,
            "instrument_hi": 0.03,
            "excess_abs": 0.15,
            "n_images_train": 3000,
            "n_images_gen": 800,
        }
    )
    assert summary["instrument"]["accuracy"] == 0.99
    assert share_rows([GEN_METRICS]) == [
        {"generation": 1, "occupation": "nurse", "share_train": 0.9, "share_gen": 0.95}
    ]


def test_report_leads_with_the_decomposition_sentence(tmp_path: Path) -> None:
    measured = {
        "n_images_train": 3000,
        "n_images_gen": 800,
        "per_occupation": [],
        "estimands": {
            "shift": {"estimate": 0.173, "ci": [0.151, 0.195], "p_value": 0.000999, "p_value_is_bound": True},
            "gap": {"estimate": 0.17, "ci": [0.067, 0.259]},
            "a_abs_raw": 0.173,
        },
    }
    decomposition = {
        "available": True,
        "measured": {"estimate": 0.173, "ci": [0.151, 0.195]},
        "data": {"estimate": 0.089, "ci": [0.08, 0.098]},
        "generator": {"estimate": 0.079, "ci": [0.05, 0.1]},
        "instrument": {"estimate": 0.005, "ci": [-0.01, 0.02]},
    }
    text = render_report(
        tmp_path / "r.html",
        [],
        {"table": {"prompt_vs_keyword": {"measured": measured, "decomposition": decomposition}}},
        None,
        {"synthetic_ratio": 0.4, "base": {"seed": 0, "cpu_threads": 1}},
        {},
        commit="0123abcdef0123abcdef0123abcdef0123abcdef",
    )
    first = text[text.index("<h1>") : text.index("<h2")]
    assert "<b>+17.3 pp</b> [+15.1, +19.5]" in first and "p &lt; 0.001" in first
    assert "accounts for +8.9 pp [+8.0, +9.8]" in first and "<b>generator</b> for +7.9 pp" in first
    assert "<span>synthetic_ratio 0.4</span><span>base.seed 0</span>" in first
    assert "<span>base.cpu_threads 1</span>" in first and "<span>commit 0123abc</span>" in first
    verdict = re.search(r"<p class='verdict' id='verdict'>(.*?)</p>", first).group(1)
    assert verdict == (
        "<b>Verdict: amplified.</b> Generation 0's images lean 17.3 pp further to each occupation's majority; "
        "the generator itself adds 7.9 pp."
    )


def test_report_is_self_contained_and_renders_offline(tmp_path: Path) -> None:
    figure = tmp_path / "figure.png"
    gradient = np.tile(np.linspace(0, 255, 200, dtype=np.uint8), (120, 1))
    Image.fromarray(np.stack([gradient, 255 - gradient, gradient], axis=-1)).save(figure)
    report = tmp_path / "report.html"
    text = render_report(
        report,
        [summary_row(GEN_METRICS)],
        None,
        {"accuracy": 0.99},
        {"synthetic_ratio": 0.4},
        {"A figure": figure, "A missing figure": tmp_path / "nope.png"},
    )
    assert report.read_text() == text
    assert "data:image/png;base64," in text
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:)?//""", text)  # nothing to fetch
    assert "12.5" in text and "+4.0" in text and "+2.0" in text  # raw A_abs, shift, generator term in pp
    assert "0.596" in text and "59.6" not in text  # MaxSkew in nats, not scaled to percent
    assert "equals the shift to the majority" in text  # the alias shown once, with a note

    browser = chromium_binary()
    if browser is None:
        pytest.skip("Chromium is not installed (make test installs Debian's chromium)")
    shot = tmp_path / "shot.png"
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<table>" in dom.stdout and "biasloop" in dom.stdout
    subprocess.run(
        [browser, *flags, f"--screenshot={shot}", "--window-size=1200,1600", report.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    # The embedded figure's colours appear on the page: it decoded and rendered without network.
    assert pixels.std() > 5
    greenish = (pixels[..., 1] > 200) & (pixels[..., 0] < 60)
    assert greenish.sum() > 100


# metrics/acquisition.json as laion_filter writes it, by hand: nurse lost 3 of 10 requested URLs (two 404s,
# one timeout) and the filter dropped 2 of the 7 downloaded images (one without a face, one with two).
ACQUISITION = {
    "enabled": True,
    "n_filtered": 12,
    "reasons": {"kept": 9, "no_face": 2, "several_faces": 1},
    "occupations": {
        "nurse": {
            "matched": 14,
            "duplicate_url": 1,
            "over_cap": 3,
            "requested": 10,
            "downloaded": 7,
            "failed_http_404": 2,
            "failed_timeout": 1,
            "filtered_undecodable": 0,
            "filtered_no_face": 1,
            "filtered_several_faces": 1,
            "filtered_nsfw": 0,
            "dropped": 2,
            "kept": 5,
            "share_female_indicator_kept": 0.75,
            "n_indicator_kept": 4,
            "share_female_indicator_dropped": 0.5,
            "n_indicator_dropped": 2,
        },
        "engineer": {
            "matched": 6,
            "duplicate_url": 0,
            "over_cap": 0,
            "requested": 6,
            "downloaded": 5,
            "failed_http_404": 0,
            "failed_timeout": 1,
            "filtered_undecodable": 0,
            "filtered_no_face": 1,
            "filtered_several_faces": 0,
            "filtered_nsfw": 0,
            "dropped": 1,
            "kept": 4,
            "share_female_indicator_kept": None,
            "n_indicator_kept": 0,
            "share_female_indicator_dropped": None,
            "n_indicator_dropped": 0,
        },
    },
}


def _cells(text: str, first: str) -> list[str]:
    """The cells of the report's table row whose first cell is ``first``."""
    row = re.search(rf"<tr><td>{first}</td>(.*?)</tr>", text)
    assert row, f"no row {first!r}"
    return re.findall(r"<td>(.*?)</td>", row.group(1))


def test_report_shows_the_acquisition_table(tmp_path: Path) -> None:
    text = render_report(
        tmp_path / "report.html", [summary_row(GEN_METRICS)], None, None, {}, {}, acquisition=ACQUISITION
    )
    assert "From LAION metadata: acquisition per occupation" in text
    headers = [
        re.findall(r"<th>(.*?)</th>", head)
        for head in re.findall(r"<thead><tr>(.*?)</tr>", text.split("acquisition per occupation</h2>")[1])
    ]
    assert headers == [
        [
            "occupation",
            "matched",
            "duplicate url",
            "over cap",
            "requested",
            "downloaded",
            "failed http 404",
            "failed timeout",
        ],
        [
            "occupation",
            "downloaded",
            "filtered undecodable",
            "filtered no face",
            "filtered several faces",
            "filtered nsfw",
            "dropped",
            "kept",
            "women among kept, by caption (%)",
            "kept with a gender word",
            "women among dropped, by caption (%)",
            "dropped with a gender word",
        ],
    ]
    nurse = [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr><td>nurse</td>(.*?)</tr>", text)]
    assert nurse == [
        ["14", "1", "3", "10", "7", "2", "1"],
        ["7", "0", "1", "1", "0", "2", "5", "75.0", "4", "50.0", "2"],
    ]
    assert re.findall(r"<tr><td>engineer</td>(.*?)</tr>", text)[1].endswith(
        "<td>–</td><td>0</td><td>–</td><td>0</td>"
    )  # no caption with a gender word: no share
    assert "share of women among the dropped images is not measured" in text
    assert "kept: 9, no_face: 2, several_faces: 1" in text


def test_report_says_in_one_line_that_the_laion_path_is_off(tmp_path: Path) -> None:
    text = render_report(
        tmp_path / "report.html", [summary_row(GEN_METRICS)], None, None, {}, {}, acquisition={"enabled": False}
    )
    section = re.search(r"<h2>From LAION metadata</h2>(.*)", text).group(1)
    assert "The LAION acquisition path is off" in section and "<table>" not in section
    assert "From LAION" not in render_report(tmp_path / "none.html", [], None, None, {}, {})


def test_summarize_stage_puts_the_acquisition_table_in_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stage reads --acquisition (as dvc.yaml passes it) into the report; a missing file is an error."""
    import json

    import yaml

    from stages.summarize import main

    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    params["tracking"]["enabled"] = False
    Path("params.yaml").write_text(yaml.safe_dump(params))
    Path("metrics/generations").mkdir(parents=True)
    Path("metrics/generations/gen0.json").write_text(json.dumps({**GEN_METRICS, "generation": 0}))
    Path("metrics/acquisition.json").write_text(json.dumps(ACQUISITION))
    argv = [
        "--generations",
        "metrics/generations",
        "--paradox",
        "metrics/paradox.json",
        "--instrument-metrics",
        "metrics/instrument.json",
        "--out",
        "metrics/summary.json",
        "--plots",
        "plots",
        "--report",
        "plots/report.html",
        "--acquisition",
        "metrics/acquisition.json",
    ]
    assert main(argv) == 0
    text = Path("plots/report.html").read_text()
    assert _cells(text, "nurse")[:5] == ["14", "1", "3", "10", "7"]
    Path("metrics/acquisition.json").unlink()
    assert main(argv) != 0


def test_results_page_is_generated_from_the_metrics() -> None:
    from biasloop.report.markdown import results_markdown

    measured = {
        "n_images_train": 3000,
        "n_images_gen": 800,
        "estimands": {
            "shift": {"estimate": 0.173, "ci": [0.151, 0.195], "p_value": 0.000999, "p_value_is_bound": True},
            "gap": {"estimate": 0.17, "ci": [0.067, 0.259]},
            "a_abs_raw": 0.1732,
        },
    }
    decomposition = {
        "available": True,
        "data": {"estimate": 0.089, "ci": [0.08, 0.098]},
        "generator": {"estimate": 0.079, "ci": [0.05, 0.1]},
        "instrument": {"estimate": 0.005, "ci": [-0.01, 0.02]},
    }
    text = results_markdown(
        {"table": {"prompt_vs_keyword": {"measured": measured, "decomposition": decomposition}}},
        [summary_row(GEN_METRICS)],
        {"synthetic_ratio": 0.4, "base": {"seed": 0}},
    )
    assert "**+17.3 pp** [+15.1, +19.5] (p < 0.001)" in text
    assert "**data** (an ideal learner of the captions) +8.9 [+8.0, +9.8]" in text
    assert (
        "| neutral prompt vs. keyword-retrieved captions | 3000 / 800 | +17.3 [+15.1, +19.5] | < 0.001 | 17.0 [6.7, 25.9] "
        "| 17.3 | 12.57 | +8.9 [+8.0, +9.8] | +7.9 [+5.0, +10.0] | +0.5 [-1.0, +2.0] |" in text
    )
    assert (
        "| 1 | +4.0 [+1.0, +7.0] | 10.0 [5.0, 16.0] | +3.0 [+2.0, +4.0] | +2.0 [-1.0, +5.0] | -1.0 [-2.0, +0.0] "
        "| +1.5 [-0.5, +3.5] | 70.0 | – |" in text
    )


def _headline(shift: tuple[float, float, float], generator: tuple[float, float, float] | None) -> dict:
    """A headline pairing's summary (fractions): the shift and, when given, the generator term with intervals."""
    h = {"shift": shift[0], "shift_lo": shift[1], "shift_hi": shift[2]}
    if generator:
        h.update(generator=generator[0], generator_lo=generator[1], generator_hi=generator[2])
    return h


@pytest.mark.parametrize(
    ("shift", "generator", "expected"),
    [
        (
            (0.178, 0.156, 0.199),
            (0.078, 0.057, 0.099),
            "<b>Verdict: amplified.</b> Generation 0's images lean 17.8 pp further to each occupation's majority; "
            "the generator itself adds 7.8 pp.",
        ),
        (
            (0.05, 0.01, 0.09),
            (0.012, -0.004, 0.03),
            "<b>Verdict: amplified.</b> Generation 0's images lean 5.0 pp further to each occupation's majority; "
            "the generator's own part (+1.2 pp) is not resolved.",
        ),
        (
            (-0.04, -0.07, -0.01),
            (-0.03, -0.05, -0.01),
            "<b>Verdict: reduced.</b> Generation 0's images lean 4.0 pp less to each occupation's majority; "
            "the generator itself takes 3.0 pp off.",
        ),
        (
            (0.05, 0.01, 0.09),
            None,  # a real corpus: no ground truth, no generator term
            "<b>Verdict: amplified.</b> Generation 0's images lean 5.0 pp further to each occupation's majority.",
        ),
        (
            (0.01, -0.02, 0.04),
            (0.02, 0.0, 0.04),
            "<b>Verdict: not resolved.</b> Generation 0's shift to each occupation's majority, +1.0 pp "
            "[-2.0, +4.0], holds 0 at 95%.",
        ),
    ],
)
def test_verdict_reads_the_headline_intervals(shift: tuple, generator: tuple | None, expected: str) -> None:
    from biasloop.report.headline_html import verdict

    assert verdict(_headline(shift, generator))[1] == expected


def test_results_page_lists_each_study_endpoint_in_pp() -> None:
    """A study's endpoints go on the results page x 100, with the Holm level and the margin in the same units."""
    study = {
        "study": {"name": "toy", "axes": {"sampling.guidance_scale": [1, 3]}, "variants": {}, "seeds": [0, 1, 2]},
        "cells": [{"baseline_rev": "abcdef0123"}],
        "n_cells_used": 6,
        "n_cells_expected": 6,
        "family_size": 2,
        "endpoints": {
            "e": {
                "label": "generator at generation 0",
                "estimate": 0.0123,
                "ci": [-0.004, 0.0286],
                "ci_level": 0.95,
                "p": 0.0004,
                "verdict": "effect",
                "n": 5,
                "adjusted": False,
                "margin": 0.01,
            }
        },
        "intervals": [
            {
                "label": "slope of gap vs g",
                "estimate": -0.001,
                "ci": [-0.0052, 0.0031],
                "ci_level": 0.975,
                "p": 0.2,
                "p_adjusted": 0.4,
                "verdict": "equivalent within ±0.01",
                "n": 3,
                "adjusted": True,
                "margin": 0.01,
            }
        ],
    }
    page = results_markdown(None, [], {"base": {}}, [study])
    assert "## Studies (other runs)" in page and "### `toy`" in page and "`abcdef0`" in page
    assert "| generator at generation 0 | +1.2 [-0.4, +2.9] | 95.0% | < 0.001 | effect | 5 |" in page
    assert "| slope of gap vs g | -0.1 [-0.5, +0.3] | 97.5% (Holm) | 0.400 | equivalent within ±1 | 3 |" in page
    assert "Studies" not in results_markdown(None, [], {"base": {}})
