"""Flat rows of amplification results: the estimands and the decomposition as ``name``, ``name_lo``,
``name_hi`` keys (fractions), for CSV files, ``metrics/summary.json`` and the report.

Kept free of other biasloop imports so the report reads results without importing the models.
"""

from __future__ import annotations

from typing import Any


def estimand_values(table: dict[str, Any] | None) -> dict[str, Any]:
    """The estimands of one amplification table flattened for CSV, summary and report rows (fractions).

    ``shift`` / ``gap`` with ``_lo`` / ``_hi`` (95%) and ``_p`` (``_p_is_bound`` when the p-value is the
    Monte Carlo floor), and ``a_abs_raw`` (the paper's plug-in A_abs); None where absent.
    """
    estimands = (table or {}).get("estimands") or {}
    out: dict[str, Any] = {}
    for name in ("shift", "gap"):
        value = estimands.get(name) or {}
        lo, hi = value.get("ci") or (None, None)
        out.update(
            {
                name: value.get("estimate"),
                f"{name}_lo": lo,
                f"{name}_hi": hi,
                f"{name}_p": value.get("p_value"),
                f"{name}_p_is_bound": value.get("p_value_is_bound"),
            }
        )
    out["a_abs_raw"] = estimands.get("a_abs_raw", (table or {}).get("amplification_abs"))
    return out


def decomposition_values(decomposition: dict[str, Any] | None) -> dict[str, Any]:
    """A pairing's decomposition flattened: each term (``data``, ``generator``, ``instrument``, or
    ``generator_and_instrument`` without ground truth) with ``_lo`` / ``_hi``; {} when unavailable."""
    if not decomposition or not decomposition.get("available"):
        return {}
    out: dict[str, Any] = {}
    for term in ("data", "generator", "instrument", "generator_and_instrument"):
        value = decomposition.get(term)
        if isinstance(value, dict):
            lo, hi = value.get("ci") or (None, None)
            out.update({term: value.get("estimate"), f"{term}_lo": lo, f"{term}_hi": hi})
    return out
