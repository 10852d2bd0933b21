"""``biasloop doctor``'s findings (:class:`Report`) and the git look-up its checks share."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


class Report:
    """Findings as ``(level, topic, text)``; level ``ok``, ``info`` or ``problem``."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, str]] = []

    def add(self, level: str, topic: str, text: str) -> None:
        self.lines.append((level, topic, text))

    @property
    def problems(self) -> int:
        return sum(level == "problem" for level, _, _ in self.lines)

    def render(self) -> str:
        mark = {"ok": "ok", "info": "  ", "problem": "!!"}
        width = max((len(topic) for _, topic, _ in self.lines), default=0)
        return "\n".join(f"{mark[level]} {topic.ljust(width)}  {text}" for level, topic, text in self.lines)


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _same_file(a: str | Path | None, b: str | Path | None) -> bool:
    try:
        return a is not None and b is not None and os.path.samefile(a, b)
    except OSError:
        return False
