"""The K-class attributes in the summary, the headline, the plot table, the report and the results page."""

from __future__ import annotations

import pytest

from biasloop.report.attributes import (
    attribute_headline,
    attribute_rows,
    attribute_section,
    attribute_summary,
    distribution_rows,
    plot_rows,
)
from biasloop.report.markdown import _attribute_lines


def _table(shift: float, gap: float, tv_raw: float) -> dict:
    return {
        "estimands": {
            "shift": {"estimate": shift, "ci": [shift - 0.02, shift + 0.02], "p_value": 0.01},
            "gap": {"estimate": gap, "ci": [gap - 0.03, gap + 0.03]},
            "tv_raw": tv_raw,
        }
    }


def _generation(n: int, shift: float) -> dict:
    terms = {"available": True, "data": {"estimate": 0.05, "ci": [0.03, 0.07]}, "generator": {"estimate": shift - 0.06}}
    terms["instrument"] = {"estimate": 0.01}
    return {
        "generation": n,
        "attributes": {
            "tone": {
                "classes": ["light", "medium", "dark"],
                "amplification": _table(shift, 0.08, 0.11),
                "amplification_corrected": _table(shift + 0.01, 0.09, 0.12),
                "amplification_true": _table(shift - 0.01, 0.07, 0.1),
                "decomposition": {"prompt_vs_keyword": terms},
                "downstream": {"recall": {"recall@10_gap": 0.04}, "max_skew_vs_training_mean": 0.3},
            }
        },
    }


PARADOX = {
    "attributes": {
        "tone": {
            "classes": ["light", "medium", "dark"],
            "pairings": {
                "prompt_vs_keyword": {
                    "measured": {
                        **_table(0.1, 0.08, 0.11),
                        "per_occupation": [
                            {
                                "occupation": "nurse",
                                "p_train": {"light": 0.5, "medium": 0.3, "dark": 0.2},
                                "p_gen": {"light": 0.7, "medium": 0.2, "dark": 0.1},
                            }
                        ],
                    },
                    "truth": {
                        **_table(0.09, 0.07, 0.1),
                        "per_occupation": [
                            {
                                "occupation": "nurse",
                                "p_train": {"light": 0.45, "medium": 0.35, "dark": 0.2},
                                "p_gen": None,
                            }
                        ],
                    },
                }
            },
        }
    }
}
INSTRUMENT = {
    "attributes": {
        "tone": {
            "classes": ["light", "medium", "dark"],
            "confusion": [[8, 2, 0], [1, 7, 2], [0, 1, 9]],
            "abstained": [0, 1, 0],
            "accuracy": 24 / 30,
            "abstain_rate": 1 / 31,
            "threshold": 0.5,
        }
    }
}


def test_rows_headline_summary_and_plot_table_by_hand() -> None:
    rows = attribute_rows([_generation(0, 0.1), _generation(1, 0.14)])
    assert list(rows) == ["tone"] and [r["generation"] for r in rows["tone"]] == [0, 1]
    first = rows["tone"][0]
    assert first["shift"] == 0.1 and first["shift_lo"] == pytest.approx(0.08) and first["gap_hi"] == pytest.approx(0.11)
    assert first["tv_raw"] == 0.11 and first["corrected_shift"] == pytest.approx(0.11) and first["true_gap"] == 0.07
    assert first["data"] == 0.05 and first["data_lo"] == 0.03 and first["generator"] == pytest.approx(0.04)
    assert first["recall_at_10_gap"] == 0.04 and first["max_skew_vs_training"] == 0.3
    # the headline: the last generation, in pp to 0.1
    assert attribute_headline(rows) == {"tone_shift": 14.0, "tone_gap": 8.0}
    summary = attribute_summary(rows, PARADOX, INSTRUMENT)["tone"]
    assert summary["classes"] == ["light", "medium", "dark"] and summary["instrument"]["accuracy"] == 0.8
    assert summary["paradox"]["prompt_vs_keyword"]["shift"] == 0.1
    assert summary["paradox"]["prompt_vs_keyword"]["true_shift"] == 0.09
    assert summary["gen1"]["shift"] == 0.14 and "generation" not in summary["gen1"]
    table = plot_rows(rows)
    assert table[1] == {
        "generation": 1,
        "attribute": "tone",
        "shift": 0.14,
        "gap": 0.08,
        "corrected_shift": pytest.approx(0.15),
        "true_shift": pytest.approx(0.13),
        "true_gap": 0.07,
        "data": 0.05,
        "generator": pytest.approx(0.08),
        "instrument": 0.01,
    }


def test_distribution_rows_section_and_markdown() -> None:
    classes, rows = distribution_rows(PARADOX, "tone")
    assert classes == ["light", "medium", "dark"]
    assert rows == [
        {
            "occupation": "nurse",
            "train": [0.5, 0.3, 0.2],
            "gen": [0.7, 0.2, 0.1],
            "true_train": [0.45, 0.35, 0.2],
            "oracle_gen": None,  # no oracle distribution: that bar is left out, not drawn as zeros
        }
    ]
    assert distribution_rows({}, "tone") == ([], [])
    rows_by_name = attribute_rows([_generation(0, 0.1)])
    html = attribute_section("tone", rows_by_name["tone"], INSTRUMENT, None)
    assert "id='attribute-tone'" in html and "Tone (3 classes: light, medium, dark)" in html
    assert "shift +10.0 [+8.0, +12.0] pp" in html.replace("<span class='ci'>", "").replace("</span>", "")
    assert "<td>8</td><td>2</td><td>0</td><td>0</td>" in html  # the confusion's first row and its abstentions
    markdown = _attribute_lines("tone", rows_by_name["tone"])
    assert "| 0 | +10.0 [+8.0, +12.0] | 8.0 [5.0, 11.0] | +11.0 [+9.0, +13.0] | +9.0 [+7.0, +11.0] |" in "\n".join(
        markdown
    )
