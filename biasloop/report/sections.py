"""The report's sections about this run: definitions, tables across generations, the paradox table, the
instrument and the LAION acquisition table. Each function returns HTML ("" when it has nothing to show);
numbers arrive as fractions and are shown in pp or % (:data:`biasloop.report.page.UNITS`).
"""

from __future__ import annotations

import html
from typing import Any

from biasloop.report.page import table, with_interval
from biasloop.report.summary import PAIRING_LABELS, TASK_COLUMNS, paradox_summary

DEFINITIONS = (
    "<details class='note' id='definitions'><summary>How to read these numbers</summary>"
    "<p>F = women / (women + men) among images the instrument labels confidently. Shares, "
    "rates and accuracies are in %, differences of shares in percentage points (pp); MaxSkew@k and NDKL "
    "are in nats. <b>Shift</b>: mean over occupations of sign(F<sub>train</sub> − ½)·(F<sub>gen</sub> − "
    "F<sub>train</sub>), the move towards each occupation's training majority (unbiased; the headline). "
    "<b>Gap</b>: the noise-free mean |F<sub>gen</sub> − F<sub>train</sub>|, estimated without the upward "
    "bias of the raw A<sub>abs</sub>, with an interval projected from simultaneous per-occupation "
    "intervals. <b>Data / generator / instrument</b>: the shift split exactly into what an ideal learner "
    "of the training captions would show (minority genders are marked in captions more often), what the "
    "generator adds to it (hue oracle on generated images), and the instrument's error; they add up to "
    "the measured shift. Intervals are 95%; a p-value at the Monte Carlo limit is shown as a bound "
    "(&lt; 0.001). Definitions and coverage: docs/estimands.md. Shown once: for two groups BiasAmp (Zhao "
    "et al. 2017) equals the shift to the majority.</p></details>"
)


# A pairing's estimands and the shift's terms, in the order of every table that shows them.
ESTIMAND_COLUMNS = (
    ("shift (pp)", "pp+"),
    ("p", "p"),
    ("gap (pp)", "pp"),
    ("raw A_abs (pp)", "pp"),
    ("data (pp)", "pp+"),
    ("generator (pp)", "pp+"),
    ("instrument (pp)", "pp+"),
)


def generations_section(rows: list[dict[str, Any]]) -> str:
    """ "Across generations": the headline estimands and the shift's terms per generation (estimate with its
    interval), then the generator, the instrument and the downstream CLIP per generation."""
    parts = [
        "<h2 id='generations'>Across generations</h2>",
        "<p class='note'>Neutral prompt vs. keyword captions, per generation: shift, gap and raw "
        "A<sub>abs</sub> as above; data / generator / instrument: the shift's decomposition; 95% intervals "
        "in grey.</p>",
        table(
            [("generation", "int"), *ESTIMAND_COLUMNS],
            [
                [
                    r["generation"],
                    with_interval(r, "shift"),
                    r.get("shift_p"),
                    with_interval(r, "gap"),
                    r.get("a_abs_raw"),
                    with_interval(r, "data"),
                    with_interval(r, "generator"),
                    with_interval(r, "instrument"),
                ]
                for r in rows
            ],
        ),
        "<p class='note'>Instrument accuracy on generated images: agreement with the hue oracle. Downstream: "
        "a CLIP trained from scratch on each generation's dataset, scored on held-out real pairs; recall@10 "
        "counts an image whose caption is identical to the query as correct; worst-group accuracy is over "
        "(occupation, gender) groups with at least the minimum number of images (smaller groups are listed "
        "in the metrics JSON, not scored).</p>",
        table(
            [
                ("generation", "int"),
                ("generator occupation accuracy (%)", "%"),
                ("instrument accuracy on generated (%)", "%"),
                ("recall@10 (%)", "%"),
                ("recall@10 gap (pp)", "pp"),
                ("MaxSkew@k vs. training share (nats)", "num"),
                ("worst-group accuracy (%)", "%"),
            ],
            [
                [
                    r["generation"],
                    r.get("generator_occupation_accuracy"),
                    r.get("instrument_accuracy_on_generated"),
                    r.get("recall_at_10"),
                    r.get("recall_at_10_gap"),
                    r.get("max_skew_vs_training"),
                    r.get("worst_group_accuracy"),
                ]
                for r in rows
            ],
        ),
    ]
    return "\n".join(parts)


def tasks_section(rows: list[dict[str, Any]]) -> str:
    """The captioner and classifier per generation (:data:`~biasloop.report.summary.TASK_COLUMNS`); "" when
    no generation has one."""
    if not any(r.get(key) is not None for r in rows for key, _, _ in TASK_COLUMNS):
        return ""
    return "\n".join(
        [
            "<h2 id='tasks'>Downstream tasks across generations: captioner and classifier</h2>",
            "<p class='note'>Each trained from scratch on the generation's dataset (generation 0: the real "
            "corpus) and scored on the held-out real images. Captioner (Chen et al. 2024): BLEU-4, ROUGE-L "
            "and CIDEr-D (COCO caption code's definitions, 0..10 for CIDEr-D) against the human captions; "
            "Error (Burns et al. 2018): images of women described with male words plus images of men "
            "described with female words, over gender-labelled images; Ratio: captions with female over "
            "male words, beside the true ratio of women to men; LIC (Hirota et al. 2022): mean confidence "
            "in the correct gender of a classifier reading gender-masked captions (0 when wrong), on the "
            "model's captions (LIC_M) and the human ones (LIC_D); leakage = LIC_M − LIC_D, mean and sd "
            "over classifier runs. Classifier (Zhang et al. 2024): occupation accuracy, its gap between "
            "women's and men's images, Fairlearn demographic parity and equalized odds differences "
            "(one-vs-rest, mean over occupations), worst-group accuracy over (occupation, gender) groups "
            "of a minimum size.</p>",
            table(
                [("generation", "int")] + [(header, unit) for _, header, unit in TASK_COLUMNS],
                [[r["generation"]] + [r.get(key) for key, _, _ in TASK_COLUMNS] for r in rows],
            ),
        ]
    )


def paradox_section(paradox: dict[str, Any] | None) -> str:
    """ "The paradox table": every pairing's estimands and terms (measured), with the shift on corrected and
    on true training shares; "" without a paradox table."""
    if not paradox or not paradox.get("table"):
        return ""
    rows = []
    for name, entry in paradox["table"].items():
        measured = paradox_summary(entry)
        images = f"{measured.get('n_images_train', '–')} / {measured.get('n_images_gen', '–')}"
        rows.append(
            [
                PAIRING_LABELS.get(name, name.replace("_", " ")),
                images,
                entry.get("n_pairs"),
                with_interval(measured, "shift"),
                measured.get("shift_p"),
                with_interval(measured, "gap"),
                measured.get("a_abs_raw"),
                measured.get("data"),
                measured.get("generator"),
                measured.get("instrument"),
                paradox_summary(entry, "corrected").get("shift"),
                paradox_summary(entry, "true").get("shift"),
            ]
        )
    columns = [
        ("pairing", "text"),
        ("images (training / generated)", "text"),
        ("pairs", "int"),
        *ESTIMAND_COLUMNS,
        ("shift, corrected (pp)", "pp+"),
        ("shift, true training share (pp)", "pp+"),
    ]
    return "\n".join(
        [
            "<h2 id='paradox'>The paradox table (generation 0)</h2>",
            "<p class='note'>Seshadri et al. (2023): amplification measured against keyword-retrieved "
            "training captions shrinks when the comparison controls for what the captions say. "
            "Raw A_abs is the paper's number (12.57 pp with keyword captions, 4.35 pp with nearest "
            "neighbours without gender indicators); the shift and gap are the estimates to compare. "
            "<b>Captions as prompts is paired</b>: each image generated from a training caption is "
            "compared with the training image of that same caption (matched by caption id), per "
            "occupation; the pairs column counts them. The other pairings compare the images of a "
            "neutral prompt with a whole selection of training images. Corrected: both shares "
            "corrected with the instrument's confusion rates; true: training share from ground truth.</p>",
            table(columns, rows),
        ]
    )


def instrument_section(instrument: dict[str, Any] | None) -> str:
    """The perceived-gender classifier's held-out rates; "" without ``metrics/instrument.json``."""
    if not instrument:
        return ""
    parts = [
        "<h2 id='instrument'>The instrument (perceived-gender classifier)</h2>",
        table(
            [
                ("accuracy, confident (%)", "%"),
                ("abstain rate (%)", "%"),
                ("TPR, female (%)", "%"),
                ("FPR, female (%)", "%"),
                ("occupation accuracy (%)", "%"),
                ("n", "int"),
            ],
            [[instrument.get(k) for k in ("accuracy", "abstain_rate", "tpr", "fpr", "occupation_accuracy", "n")]],
        ),
    ]
    if instrument.get("labels"):
        parts.append(
            f"<p class='note'>Labels: {html.escape(str(instrument['labels']))}; the rates above are "
            "measured on held-out images no labelling model trained on.</p>"
        )
    return "\n".join(parts)


# The acquisition table's fixed columns in order (metrics/acquisition.json, written by laion_filter); the
# failed_<reason> and filtered_<reason> columns between them are whichever reasons occurred.
ACQUISITION_HEAD = ("matched", "duplicate_url", "over_cap", "requested", "downloaded")
ACQUISITION_TAIL = (
    "dropped",
    "kept",
    "share_female_indicator_kept",
    "n_indicator_kept",
    "share_female_indicator_dropped",
    "n_indicator_dropped",
)


def acquisition_section(acquisition: dict[str, Any] | None) -> str:
    """The report's "From LAION metadata" section from ``metrics/acquisition.json`` ("" when None).

    Disabled (``{"enabled": false}``, the default): one line saying the LAION path is off. Enabled: two
    tables of one row per occupation. First the selection counts (matched, duplicate URLs, over the cap,
    requested) and the download outcome (downloaded, ``failed_<reason>``); then, from the downloaded
    images, the filter outcome (``filtered_<reason>``, dropped, kept) and the share of women among kept
    and among dropped images by their captions' gender indicators with its denominator (the
    instrument's share among dropped images is not measured: said in the section).
    """
    if acquisition is None:
        return ""
    if not acquisition.get("enabled"):
        return (
            "<h2>From LAION metadata</h2><p class='note'>The LAION acquisition path is off "
            "(<code>laion_select.metadata</code> is empty): the corpus comes from the <code>corpus</code> "
            "stage's own source; see docs/laion.md.</p>"
        )
    occupations = acquisition["occupations"]
    keys = list(dict.fromkeys(k for row in occupations.values() for k in row))
    failed = sorted(k for k in keys if k.startswith("failed_"))
    filtered = [k for k in keys if k.startswith("filtered_")]
    # two tables, so each fits 1,280 px: selection and download, then the filter (from the downloaded images)
    steps = [[*ACQUISITION_HEAD, *failed], ["downloaded", *filtered, *ACQUISITION_TAIL]]
    headers = {
        "share_female_indicator_kept": "women among kept, by caption (%)",
        "n_indicator_kept": "kept with a gender word",
        "share_female_indicator_dropped": "women among dropped, by caption (%)",
        "n_indicator_dropped": "dropped with a gender word",
    }
    parts = [
        "<h2>From LAION metadata: acquisition per occupation</h2>",
        (
            "<p class='note'>Counts of images (a URL selected for several occupations counts for each). "
            "matched = requested + duplicate URLs + over the per-occupation cap; requested = downloaded + "
            "failed; downloaded = dropped + kept, dropped being the sum of the filter columns. Women among "
            "kept or dropped images: women / (women + men) among the captions with a female or a male gender "
            "word (counted beside it), a caption proxy: a filter that drops women's images more often shifts "
            "the measured share. <b>The instrument's share of women among the dropped images is not "
            "measured</b> by the pipeline (docs/laion.md says how to classify <code>dropped/</code>).</p>"
        ),
    ]
    for columns in steps:
        parts.append(
            table(
                [("occupation", "text")]
                + [(headers.get(k, k.replace("_", " ")), "%" if k.startswith("share_") else "int") for k in columns],
                [[name] + [row.get(k) for k in columns] for name, row in occupations.items()],
            )
        )
    if acquisition.get("reasons"):
        total = ", ".join(f"{html.escape(str(k))}: {v}" for k, v in sorted(acquisition["reasons"].items()))
        parts.append(
            f"<p class='note'>Filter outcome over all {acquisition.get('n_filtered', '?')} downloaded "
            f"images: {total}.</p>"
        )
    return "\n".join(parts)
