"""The report's HTML building blocks: numbers shown in their unit, tables, embedded figures, the stylesheet.

Nothing here fetches anything: figures are embedded as base64 PNG and the stylesheet is inline, so the
page opens offline (unlike `dvc plots diff`, whose default page loads vega from a CDN).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

# How each kind of number is shown: the unit it is in.
#   pp: a difference of shares (fraction) in percentage points; pp+: the same, signed;
#   %: a share, rate or accuracy (fraction) in percent; num: a number in its own unit (MaxSkew, NDKL in
#   nats; Pearson's r); p: a p-value; int: a count; text: shown as it is (escaped).
UNITS = ("pp", "pp+", "%", "num", "p", "int", "text")


def fmt(value: Any, unit: str = "num") -> str:
    """``value`` shown in ``unit`` (see :data:`UNITS`) as HTML; – for None.

    A ``[lo, hi]`` list is an interval, ``[lo, hi]``; an ``(estimate, lo, hi)`` tuple is an estimate
    with its interval beside it in a smaller grey ``<span class='ci'>``.
    """
    if value is None:
        return "–"
    if isinstance(value, tuple) and len(value) == 3:
        estimate, lo, hi = value
        if lo is None or hi is None:
            return fmt(estimate, unit)
        return f"{fmt(estimate, unit)} <span class='ci'>{fmt([lo, hi], unit)}</span>"
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"[{fmt(value[0], unit)}, {fmt(value[1], unit)}]"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or unit == "text":
        return html.escape(str(value))
    if unit in ("pp", "%"):
        return f"{100 * value:.1f}"
    if unit == "pp+":
        return f"{100 * value:+.1f}"
    if unit == "p":
        return "&lt; 0.001" if value < 0.001 else f"{value:.3f}"  # 1000 replicates: below 0.001 is a bound
    if unit == "int":
        return f"{int(value):d}"
    return f"{value:.3f}"


def with_interval(row: dict[str, Any], key: str) -> tuple[Any, Any, Any]:
    """``(row[key], row[key_lo], row[key_hi])``: a cell that :func:`fmt` shows as an estimate with its interval."""
    return row.get(key), row.get(f"{key}_lo"), row.get(f"{key}_hi")


def table(columns: list[tuple[str, str]], rows: list[list[Any]]) -> str:
    """An HTML table in its own horizontally scrolling box; ``columns`` are ``(header, unit)`` pairs, each
    cell formatted in its column's unit."""
    for _, unit in columns:
        if unit not in UNITS:
            raise ValueError(f"unknown unit {unit!r}")
    head = "".join(f"<th>{html.escape(header)}</th>" for header, _ in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{fmt(value, unit)}</td>" for (_, unit), value in zip(columns, row)) + "</tr>"
        for row in rows
    )
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def image_tag(path: str | Path, alt: str) -> str:
    """The PNG at ``path`` embedded as a data URI (a red note instead when the file is missing)."""
    path = Path(path)
    if not path.exists():
        return f"<p class='missing'>({html.escape(alt)}: {html.escape(str(path))} not found)</p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


# Sized for a 1,280 x 800 window: the run line, the verdict and the headline figure fit the first screen
# (tests/test_report_screen.py); figures are shown at most at their own pixel size, and the figures are
# drawn narrow enough (biasloop/report/plots.py) that 9 pt legend text at 120 dpi stays over 11 px.
CSS = """
:root{--fg:#1f2328;--muted:#59636e;--line:#d8dee4;--soft:#f6f8fa;--accent:#b42318}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);max-width:1200px;margin:0 auto;padding:12px 24px 48px}
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:4px 18px;border-bottom:1px solid var(--line);padding-bottom:6px}
h1{font-size:1.3em;margin:0}
.identity{display:flex;flex-wrap:wrap;gap:6px;font:12.5px/1.6 ui-monospace,SFMono-Regular,Menlo,monospace;color:var(--muted)}
.identity span{background:var(--soft);border:1px solid var(--line);border-radius:4px;padding:0 6px}
.verdict{font-size:1.12em;margin:10px 0 8px;padding:6px 12px;border-left:4px solid var(--accent);background:#fdf3f2}
.verdict.none{border-left-color:var(--muted);background:var(--soft)}
figure{margin:0}figure.headline img{display:block;border:0}
nav{font-size:.9em;color:var(--muted);margin:.4em 0}nav a{color:inherit;margin-right:.9em}
h2{font-size:1.2em;margin:1.8em 0 .4em;border-bottom:1px solid var(--line);padding-bottom:.2em}
h2.other{border-bottom:3px double var(--line)}
.headline{line-height:1.5;margin:.5em 0}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:.5em 0;font-size:13px;font-variant-numeric:tabular-nums}
th,td{border:1px solid var(--line);padding:3px 7px;text-align:right}
th{background:var(--soft);font-weight:600;vertical-align:bottom}td{white-space:nowrap}
td:first-child,th:first-child{text-align:left}td:first-child{white-space:normal;min-width:9em}tbody tr:nth-child(even){background:#fbfcfd}
.ci{color:var(--muted);font-size:.92em}
img{max-width:100%;height:auto;border:1px solid #eee}
.note{color:var(--muted);font-size:.9em}.missing{color:#a00}
.source{background:#fff8e1;border:1px solid #f0d890;border-radius:4px;padding:4px 10px;font-size:.92em}
details.note summary{cursor:pointer;color:var(--fg)}
pre{background:var(--soft);padding:1em;overflow:auto;font-size:.8em}
"""
