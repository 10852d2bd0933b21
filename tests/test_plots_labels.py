"""`dvc plots` definitions read like figures: a title, axis labels with units, whole-number generation axes.

Every data plot in dvc.yaml names its title, x_label and y_label; a y label says its unit; a plot against
generation uses one of the project's templates (`.dvc/plots/generation*.json`), whose x axis ticks only
whole generations and whose ``_pp`` variant draws the stored fractions in percentage points. `dvc plots
show --json` on the checkout's committed plot files fills them in (no pipeline run).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO_ROOT

UNITS = re.compile(r"\((pp|nats|%|0 to 1)\)|fraction|pairing")


def _data_plots() -> dict[str, dict]:
    plots = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["plots"]
    return {name: spec for item in plots if isinstance(item, dict) for name, spec in item.items()}


def test_every_plot_has_a_title_and_axis_labels_with_units() -> None:
    plots = _data_plots()
    assert plots
    for name, spec in plots.items():
        for key in ("title", "x_label", "y_label"):
            assert str(spec.get(key) or "").strip(), f"{name}: no {key}"
        assert UNITS.search(spec["y_label"]), f"{name}: y_label {spec['y_label']!r} names no unit"


def test_generation_plots_use_whole_generations_and_one_unit() -> None:
    for name, spec in _data_plots().items():
        if spec.get("x") != "generation":
            continue
        template = json.loads((REPO_ROOT / ".dvc" / "plots" / f"{spec['template']}.json").read_text())
        assert template["encoding"]["x"]["axis"] == {"tickMinStep": 1, "format": "d"}, name
        in_pp = "(pp)" in spec["y_label"]
        assert in_pp == spec["template"].endswith("_pp"), f"{name}: a pp label goes with the pp template"
        if in_pp:
            assert template["transform"] == [{"calculate": "100 * datum['<DVC_METRIC_Y>']", "as": "value_pp"}]
            assert template["encoding"]["y"]["field"] == "value_pp"


def test_dvc_plots_show_fills_titles_and_labels() -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    env.pop("DVC_ROOT", None)
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "plots", "show", "--json"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rendered = json.loads(result.stdout)["data"]
    for name, spec in _data_plots().items():
        content = rendered[name][0]["content"]
        assert content["title"]["text"] == spec["title"]
        encoding = content["encoding"]
        assert encoding["x"]["title"] == spec["x_label"] and encoding["y"]["title"] == spec["y_label"], name
