"""The estimand lines ``biasloop amplify`` prints for binary and K-class count files alike."""

from __future__ import annotations

from typing import Any


def percent(value: float | None, signed: bool = False) -> str:
    """A fraction in percent (or a difference in pp), one decimal, ``+`` when ``signed``; ``n/a`` for None."""
    if value is None:
        return "n/a"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def estimand_lines(estimands: dict[str, Any], sampled: str, raw: tuple[str, float | None], majority: str) -> list[str]:
    """The shift and the gap (percentage points, 95% intervals, p-values) with ``raw`` (label, fraction)
    beside the gap, under a header naming what was ``sampled``; a note when some training ``majority`` is
    unclear (the shift's interval then counts those occupations both ways)."""
    from biasloop.metrics.estimands import format_p_value

    lines = [f"{'estimand':<10}{'pp':>8}   {'95% interval':<18}{'p':<12}({sampled})"]
    for name, signed in (("shift", True), ("gap", False)):
        entry = estimands[name]
        lo, hi = entry["ci"]
        interval = f"[{percent(lo, signed)}, {percent(hi, signed)}]"
        line = (
            f"{name:<10}{percent(entry['estimate'], signed):>8}   {interval:<18}"
            f"{format_p_value(entry['p_value'], entry['p_value_is_bound']):<12}"
        )
        if name == "gap":
            line += f"{raw[0]} {percent(raw[1])} pp"
        lines.append(line.rstrip())
    unclear = estimands["shift"].get("n_unclear_majority")
    if unclear:
        lines.append(f"(the shift's interval counts {unclear} occupation(s) both ways: their {majority} is unclear)")
    return lines
