"""The report's first screen at 1,280 x 800 in headless Chromium: identity, verdict and headline figure in view,
every table within the page width, studies last and labelled as other runs, figures not shrunk illegibly.

The report is made from hand-made metrics (the numbers of a run like the committed one), with the real
figures of :mod:`biasloop.report.plots` drawn from them; the screenshot is left in the test's tmp folder
(``first_screen.png``) for a person to look at.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from biasloop.report.html import render_report
from biasloop.report.plots import decomposition_figure, generation_curves
from biasloop.report.study_figures import study_intervals_figure
from biasloop.report.study_html import named_study_section
from biasloop.report.summary import summary_row, task_row
from tests.headless import headless_chromium
from tests.test_report import ACQUISITION, GEN_METRICS

pytestmark = pytest.mark.slow  # draws three figures and starts a browser (about 10 s)

WIDTH, HEIGHT = 1280, 800


def _term(estimate: float, lo: float, hi: float) -> dict:
    return {"estimate": estimate, "ci": [lo, hi]}


def _pairing(shift: tuple, data: tuple, generator: tuple, instrument: tuple, n_train: int) -> dict:
    """One paradox pairing: measured estimands and its decomposition (fractions)."""
    return {
        "measured": {
            "n_images_train": n_train,
            "n_images_gen": 1200,
            "estimands": {
                "shift": {**_term(*shift), "p_value": 0.000999, "p_value_is_bound": True},
                "gap": _term(shift[0], 0.07, 0.237),
                "a_abs_raw": shift[0],
            },
        },
        "decomposition": {
            "available": True,
            "measured": _term(*shift),
            "data": _term(*data),
            "generator": _term(*generator),
            "instrument": _term(*instrument),
        },
    }


PARADOX = {
    "table": {
        "prompt_vs_keyword": _pairing(
            (0.178, 0.156, 0.199), (0.089, 0.080, 0.099), (0.078, 0.057, 0.099), (0.010, 0.004, 0.016), 3427
        ),
        "captions_vs_keyword": {
            **_pairing((0.059, 0.035, 0.082), (0.0, 0.0, 0.0), (0.055, 0.031, 0.076), (0.003, -0.003, 0.01), 1200),
            "n_pairs": 1200,
        },
        "prompt_vs_nn": _pairing(
            (0.076, 0.046, 0.105), (0.016, 0.0, 0.032), (0.055, 0.023, 0.084), (0.005, -0.003, 0.013), 1000
        ),
        "prompt_vs_nn_no_indicator": _pairing(
            (0.082, 0.053, 0.110), (0.0, 0.0, 0.0), (0.069, 0.042, 0.096), (0.012, 0.004, 0.021), 1000
        ),
    }
}
PARAMS = {"synthetic_ratio": 0.4, "base": {"seed": 0, "cpu_threads": 1}, "world": {"seed": 0}, "generations": [0, 1, 2]}
COMMIT = "6b91f3a612e7d177689fe12f757320ee68ec5de0"
CAPTIONER = {
    "quality": {"bleu4": 0.094, "rouge_l": 0.285, "cider_d": 0.947},
    "misprediction": {"error": 0.0, "ratio_predicted": 1.385, "ratio_true": 0.923},
    "leakage": {"lic_m": 0.911, "lic_d": 0.691, "leakage": 0.219, "leakage_std": 0.016},
}
CLASSIFIER = {
    "accuracy": 0.742,
    "accuracy_gap": 0.007,
    "demographic_parity_difference_mean": 0.123,
    "equalized_odds_difference_mean": 0.372,
    "worst_group_accuracy": 0.519,
}
CELLS = [  # the study's experiments, made from an older baseline commit than this run's
    {
        "baseline_rev": "c2df004cc8cf6aaf68aaff3ae8acf614a0e06506",
        "baseline_name": "main",
        "timestamp": f"2026-12-0{d}T08:00",
    }
    for d in (6, 7)
]


def _interval(label: str, estimate: float, ci: list[float], verdict: str, adjusted: bool) -> dict:
    return {
        "label": label,
        "metric": "data",
        "generation": 0,
        "estimate": estimate,
        "ci": ci,
        "ci_level": 0.975 if adjusted else 0.95,
        "adjusted": adjusted,
        "p": 0.01,
        "p_adjusted": 0.02,
        "n": 5,
        "verdict": verdict,
        "margin": 0.01,
    }


NAMED_STUDY = {
    "study": {
        "name": "markedness",
        "axes": {"world.markedness.counter": [0, 0.4]},
        "variants": {},
        "generations": 1,
        "seeds": [0, 1, 2],
        "primary_seeds": [3, 4],
        "metrics": ["data"],
    },
    "alpha": 0.05,
    "metric_paths": {"data": "gen{gen}.data"},
    "n_cells_used": 2,
    "n_cells_expected": 2,
    "family_size": 3,
    "failed": [],
    "missing": [],
    "inconsistent": [],
    "notes": [],
    "cells": CELLS,
    "endpoints": {
        "data_unmarked": _interval("data at generation 0 (counter=0)", 0.001, [-0.001, 0.002], "equivalent", False),
        "data_marked": _interval("data at generation 0 (counter=0.4)", 0.072, [0.049, 0.094], "effect", False),
    },
    "intervals": [_interval("slope of data vs counter at generation 0", 0.178, [0.094, 0.262], "effect", True)],
}


def _report(tmp_path: Path) -> Path:
    """The report of a three-generation run with every section, its figures drawn by the pipeline's code."""
    rows = []
    for generation, shift in enumerate((0.178, 0.212, 0.187)):
        metrics = copy.deepcopy(GEN_METRICS)
        metrics["generation"] = generation
        metrics["amplification"]["estimands"]["shift"] = {"estimate": shift, "ci": [shift - 0.022, shift + 0.021]}
        rows.append({**summary_row(metrics), **task_row(CAPTIONER, CLASSIFIER)})
    decomposition_figure(
        {name: entry["decomposition"] for name, entry in PARADOX["table"].items()},
        tmp_path / "decomposition.png",
        "Generation 0: where each pairing's shift to the training majority comes from",
    )
    generation_curves(rows, tmp_path / "generations.png", "Across generations (synthetic_ratio = 0.4)")
    study = copy.deepcopy(NAMED_STUDY)
    study_intervals_figure(study, tmp_path / "study.png", "Study 'markedness'")
    study["figures"] = {"intervals": str(tmp_path / "study.png")}
    report = tmp_path / "report.html"
    render_report(
        report,
        rows,
        PARADOX,
        {"accuracy": 0.995, "abstain_rate": 0.03, "tpr": 1.0, "fpr": 0.011, "occupation_accuracy": 0.948, "n": 573},
        PARAMS,
        {
            "Where the amplification comes from (generation 0)": tmp_path / "decomposition.png",
            "Across generations": tmp_path / "generations.png",
        },
        acquisition=ACQUISITION,
        study_sections=[named_study_section(study)],
        commit=COMMIT,
    )
    return report


GEOMETRY = """
const box = (el) => { const r = el.getBoundingClientRect(); return {top: r.top, bottom: r.bottom, left: r.left,
  right: r.right, height: r.height, width: r.width}; };
const verdict = document.getElementById('verdict');
const headings = [...document.querySelectorAll('h2')];
return {
  viewport: [window.innerWidth, window.innerHeight],
  page_width: document.documentElement.scrollWidth,
  client_width: document.documentElement.clientWidth,
  identity: box(document.getElementById('identity')),
  identity_text: document.getElementById('identity').innerText,
  verdict: box(verdict),
  verdict_text: verdict.innerText,
  verdict_line: parseFloat(getComputedStyle(verdict).lineHeight),
  figure: box(document.querySelector('#headline-figure img')),
  figure_natural: document.querySelector('#headline-figure img').naturalWidth,
  tables: [...document.querySelectorAll('.scroll')].map((el) => ({box: box(el), scroll: el.scrollWidth,
    client: el.clientWidth, head: el.querySelector('th').innerText})),
  images: [...document.images].map((img) => ({alt: img.alt, natural: img.naturalWidth, shown: img.width})),
  headings: headings.map((h) => h.innerText),
  source_after: headings.map((h) => { const n = h.nextElementSibling; return n && n.className === 'source' ? n.innerText : null; }),
};
"""


def test_first_screen_holds_identity_verdict_and_headline_figure(tmp_path: Path) -> None:
    report = _report(tmp_path)
    shot = tmp_path / "first_screen.png"
    with headless_chromium(tmp_path / "profile", WIDTH, HEIGHT) as browser:
        browser.get(report.as_uri())
        geometry = browser.execute_script(GEOMETRY)
        browser.save_screenshot(str(shot))
    assert geometry["viewport"] == [WIDTH, HEIGHT]

    # the run's identity, the verdict in words and the headline figure lie whole inside the first screen
    for name in ("identity", "verdict", "figure"):
        element = geometry[name]
        assert 0 <= element["top"] and element["bottom"] <= HEIGHT, (name, element)
        assert 0 <= element["left"] and element["right"] <= geometry["client_width"], (name, element)
    assert geometry["identity_text"].split() == (
        "commit 6b91f3a synthetic_ratio 0.4 base.seed 0 world.seed 0 base.cpu_threads 1 generations 3".split()
    )
    assert geometry["verdict_text"] == (
        "Verdict: amplified. Generation 0's images lean 17.8 pp further to each occupation's majority; "
        "the generator itself adds 7.8 pp."
    )
    assert geometry["verdict"]["height"] < 2 * geometry["verdict_line"] + 16  # one line (+ its padding)
    assert geometry["figure"]["height"] > 300  # the figure itself, not a "not found" line

    # nothing is wider than the window: no table needs its own scroll bar at 1,280 px
    assert geometry["page_width"] <= geometry["client_width"]
    assert len(geometry["tables"]) >= 7
    for table in geometry["tables"]:
        assert table["scroll"] <= table["client"], table
        assert table["box"]["right"] <= geometry["client_width"], table

    # figures are shrunk by at most a quarter: 9 pt legends at 120 dpi stay over 11 px
    assert len(geometry["images"]) == 3
    for image in geometry["images"]:
        assert image["natural"] > 0 and image["shown"] >= 0.75 * image["natural"], image

    # the study comes after this run's sections and says it is another run, with its baseline commit
    headings = geometry["headings"]
    study = next(i for i, h in enumerate(headings) if h.startswith("Study 'markedness'"))
    assert study > headings.index("Params of this run") > headings.index("Across generations")
    assert geometry["source_after"][study].startswith("Other runs, not this one: 2 DVC experiments")
    assert "c2df004 (main), run 2026-12-06 to 2026-12-07" in geometry["source_after"][study]

    # the screenshot shows the figure: the generator term's red bars are on the first screen
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (HEIGHT, WIDTH)
    red = (abs(pixels[..., 0] - 0xD6) < 12) & (abs(pixels[..., 1] - 0x27) < 12) & (abs(pixels[..., 2] - 0x28) < 12)
    assert red.sum() > 2000
