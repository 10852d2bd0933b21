"""The report's first screen: the run's identity, a one-line verdict, and the headline sentence.

The verdict reads the headline pairing's 95% intervals (generation 0, neutral prompt vs. keyword-retrieved
captions; docs/estimands.md): the shift to the training majority is *amplified* when its interval lies
above 0, *reduced* when below, *not resolved* when it holds 0; the generator's own term is named the same
way when the decomposition has one.
"""

from __future__ import annotations

import html
from typing import Any

from biasloop.report.page import fmt
from biasloop.report.summary import HEADLINE_PAIRING, get_path, paradox_summary


def identity_line(params: dict[str, Any], commit: str | None) -> str:
    """The run's identity as tags: commit, synthetic_ratio, seeds, torch threads, number of generations."""
    base = params.get("base") or {}
    items = [
        f"commit {commit[:7] if commit else 'unknown'}",
        f"synthetic_ratio {params.get('synthetic_ratio')}",
        f"base.seed {base.get('seed')}",
        f"world.seed {get_path(params, 'world', 'seed')}",
        f"base.cpu_threads {base.get('cpu_threads')}",
        f"generations {len(params.get('generations') or [])}",
    ]
    return "<div class='identity' id='identity'>" + "".join(f"<span>{html.escape(i)}</span>" for i in items) + "</div>"


def _sign(h: dict[str, Any], key: str) -> int | None:
    """+1 / -1 when the 95% interval of ``h[key]`` lies above / below 0, 0 when it holds 0, None without one."""
    lo, hi = h.get(f"{key}_lo"), h.get(f"{key}_hi")
    if lo is None or hi is None:
        return None
    return 1 if lo > 0 else -1 if hi < 0 else 0


def verdict(h: dict[str, Any]) -> tuple[str, str]:
    """``(css class, HTML)``: the headline in words, one line at 1,280 px.

    Args:
        h: :func:`~biasloop.report.summary.paradox_summary` of the headline pairing (fractions).
    """
    size = lambda key: f"{fmt(abs(h[key]), 'pp')} pp"  # noqa: E731
    sign = _sign(h, "shift")
    if sign == 1:
        text = f"<b>Verdict: amplified.</b> Generation 0's images lean {size('shift')} further to each occupation's majority"
    elif sign == -1:
        text = f"<b>Verdict: reduced.</b> Generation 0's images lean {size('shift')} less to each occupation's majority"
    else:
        return "verdict none", (
            f"<b>Verdict: not resolved.</b> Generation 0's shift to each occupation's majority, "
            f"{fmt(h.get('shift'), 'pp+')} pp {fmt([h.get('shift_lo'), h.get('shift_hi')], 'pp+')}, holds 0 at 95%."
        )
    clause = {
        1: lambda: f"; the generator itself adds {size('generator')}.",
        -1: lambda: f"; the generator itself takes {size('generator')} off.",
        0: lambda: f"; the generator's own part ({fmt(h['generator'], 'pp+')} pp) is not resolved.",
    }.get(_sign(h, "generator"), lambda: ".")
    return "verdict", text + clause()


def headline_sentence(h: dict[str, Any]) -> str:
    """The headline with every interval: the shift, its decomposition, the gap and the paper's raw A_abs."""
    pp = lambda key: fmt(h.get(key), "pp+")  # noqa: E731
    interval = lambda key: fmt([h.get(f"{key}_lo"), h.get(f"{key}_hi")], "pp+")  # noqa: E731
    p_text = "p " + fmt(h.get("shift_p"), "p") if h.get("shift_p") is not None else ""
    sentence = (
        f"In generation 0, images generated for a neutral prompt lean <b>{pp('shift')} pp</b> "
        f"{interval('shift')} further towards each occupation's training majority than the keyword-retrieved "
        f"training images ({p_text})."
    )
    if h.get("generator") is not None:
        sentence += (
            f" Of that, the <b>data</b> (an ideal learner of these captions) accounts for {pp('data')} pp "
            f"{interval('data')}, the <b>generator</b> for {pp('generator')} pp {interval('generator')}, "
            f"and the <b>instrument</b> for {pp('instrument')} pp {interval('instrument')}."
        )
    elif h.get("generator_and_instrument") is not None:
        sentence += (
            f" Of that, the data account for {pp('data')} pp {interval('data')}; the generator and the "
            f"instrument together for {pp('generator_and_instrument')} pp (no ground truth to split them)."
        )
    sentence += (
        f" Gap (noise-free mean |F<sub>gen</sub> − F<sub>train</sub>|): {fmt(h.get('gap'), 'pp')} pp "
        f"{fmt([h.get('gap_lo'), h.get('gap_hi')], 'pp')}; the paper's raw A<sub>abs</sub>: "
        f"{fmt(h.get('a_abs_raw'), 'pp')} pp (Seshadri et al.: 12.57 pp)."
    )
    return f"<p class='headline' id='headline'>{sentence}</p>"


def first_screen(
    paradox: dict[str, Any] | None, params: dict[str, Any], commit: str | None, figure: str, navigation: str
) -> str:
    """Title and run identity, the verdict, the headline figure (``figure``: an ``<img>``), the links to the
    sections (``navigation``), then the headline sentence (the verdict and sentence only with a paradox table)."""
    parts = [
        "<header><h1>biasloop: does generated data amplify bias?</h1>",
        identity_line(params, commit),
        "</header>",
    ]
    entry = get_path(paradox, "table", HEADLINE_PAIRING)
    h = paradox_summary(entry) if entry and entry.get("measured") else None
    if h:
        css_class, text = verdict(h)
        parts.append(f"<p class='{css_class}' id='verdict'>{text}</p>")
    if figure:
        parts.append(f"<figure class='headline' id='headline-figure'>{figure}</figure>")
    parts.append(navigation)
    if h:
        parts.append(headline_sentence(h))
    return "\n".join(parts)
