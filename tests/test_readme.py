"""The README and docs/ as a newcomer uses them: short, showing the pipeline's own figures, with links that
resolve and commands that name existing make targets, ``biasloop`` flags and params keys."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from biasloop.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_LINES = 200


def fenced_commands(text: str) -> list[str]:
    """Each command line of the page's ```bash blocks, comments dropped, `a && b` split, `\\` lines joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            commands.extend(part.strip() for part in line.split("&&") if part.strip())
    return commands


def params_key_exists(path: str, params: dict) -> bool:
    node = params
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def dvc_outputs() -> set[str]:
    """Every output path ``dvc.yaml`` declares (``${item}`` templates left as written)."""
    outs = set()
    for stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values():
        for out in stage.get("do", stage).get("outs", []):
            outs.add(next(iter(out)) if isinstance(out, dict) else out)
    return outs


def test_readme_is_short() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move detail into docs/"


def test_readme_images_are_the_pipelines_own_outputs() -> None:
    """No copied figures that age: each README image is a file the pipeline writes (a dvc.yaml output)."""
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README.read_text())
    assert images
    outputs = dvc_outputs()
    for image in images:
        assert image in outputs, f"README.md shows {image}, which no dvc.yaml stage writes"
        assert (ROOT / image).is_file(), image
    copies = sorted(p.name for p in (ROOT / "docs").glob("*.png"))
    assert not copies, f"docs/ holds figure copies that go stale: {copies}; link plots/ instead"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
        if "://" in target:
            continue
        assert (page.parent / target).exists(), f"{page.name}: link to {target}, which does not exist"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_commands_name_existing_targets_flags_and_params(page: Path) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.M))
    parser = build_parser()
    for command in fenced_commands(page.read_text()):
        for key in re.findall(r"-S\s+'?([a-z_][\w.]*)=", command):
            assert params_key_exists(key, params), f"{page.name}: `{command}` sets {key}, not in params.yaml"
        if command.split()[0] not in ("make", "biasloop"):
            continue
        words = shlex.split(command)
        if words[0] == "make":
            assert set(words[1:]) <= targets, f"{page.name}: `{command}` names a target the Makefile lacks"
        elif words[0] == "biasloop":
            try:
                parser.parse_args(words[1:])
            except SystemExit as exc:
                pytest.fail(f"{page.name}: `{command}` is not a valid biasloop command line ({exc})")


def test_readme_study_findings_are_the_generated_results() -> None:
    """Every "estimate pp [lo, hi]" in the README's Studies table is on docs/results.md, which `summarize`
    writes from metrics/studies/ (no study result is typed by hand without a generated twin)."""
    text = README.read_text()
    table = text[text.index("| study | grid |") :].split("\n\n", 1)[0]
    findings = re.findall(r"([+-]\d+\.\d) (?:pp|points)[^\[|]{0,40}\[([+-]\d+\.\d), ([+-]\d+\.\d)\]", table)
    assert len(findings) >= 4, table
    results = (ROOT / "docs" / "results.md").read_text()
    studies = results[results.index("## Studies (other runs)") :]
    for estimate, lo, hi in findings:
        assert f"{estimate} [{lo}, {hi}]" in studies, f"README's {estimate} [{lo}, {hi}] is not on docs/results.md"
