"""Studies: cells and queue commands, and aggregation of fabricated `dvc exp show --json` output by hand."""

from __future__ import annotations

import copy
import json
import math
import os
import stat
import sys
from pathlib import Path

import pytest

from biasloop.cli import main
from biasloop.study.collect import clustered_trend, collect_study, seed_summary, study_problems
from biasloop.study.experiments import parse_exp_show
from biasloop.study.grid import (
    StudyConfig,
    cell_name,
    generation_overrides,
    load_study_config,
    queue_command,
    run_study,
    study_cells,
)
from biasloop.core.config import ConfigError

T_975_2DF = 4.302652729911275  # scipy.stats.t.ppf(0.975, 2): 3 seeds
T_975_1DF = 12.706204736174698  # scipy.stats.t.ppf(0.975, 1): 2 seeds

BASE_PARAMS = {
    "base": {"seed": 0, "device": "cpu"},
    "synthetic_ratio": 0.4,
    "generations": [0, 1],
    "rounds": {"1": {"gen": 1, "prev": 0, "previous": "artifacts/corpus"}},
    "neighbours": {"k": 100},
}
CONFIG = StudyConfig(name="t", ratios=(0.0, 0.5, 1.0), seeds=(0, 1, 2), generations=2)

# excess_abs per (ratio, seed) at generation 1; generation 0 does not depend on the ratio (common
# random numbers: the same seed gives the same generation-0 models whatever the ratio).
GEN1 = {
    (0.0, 0): 0.01, (0.0, 1): 0.03, (0.0, 2): 0.02,
    (0.5, 0): 0.04, (0.5, 1): 0.06, (0.5, 2): 0.05,
    (1.0, 0): 0.07, (1.0, 1): 0.09, (1.0, 2): 0.11,
}
GEN0 = {0: 0.01, 1: 0.02, 2: 0.03}


def _rev(i: int) -> str:
    return f"{i:040x}"


def _data(rev: str, params: dict, metrics: dict | None) -> dict:
    """The `data` object of one revision, keys as DVC 3.67 prints them."""
    return {
        "rev": rev, "timestamp": "2026-11-26T15:27:36",
        "params": {"params.yaml": {"data": params}},
        "metrics": {} if metrics is None else {"metrics/summary.json": {"data": metrics}},
        "deps": {"stages/mix.py": {"hash": "cf594922b3568d7798892d73f69229d3", "size": 260, "nfiles": None}},
        "outs": {"metrics/summary.json": {"hash": "ba807144f007e73b231c2f034482ec31", "size": 72, "nfiles": None,
                                          "use_cache": False, "is_data_source": False}},
        "meta": {},
    }


def _metrics(ratio: float, seed: int, key: str = "excess_abs") -> dict:
    return {
        "gen0": {key: GEN0[seed], "shift_to_majority": 0.0, "recall_at_10": 0.2},
        "gen1": {key: GEN1[(ratio, seed)], "shift_to_majority": 0.01 * seed, "recall_at_10": 0.2},
    }


def exp_show_json(cells: dict[tuple[float, int], str], key: str = "excess_abs", edit=None) -> list[dict]:
    """`dvc exp show --json` for a baseline with one experiment per (ratio, seed) in ``cells``.

    ``cells`` maps (ratio, seed) to the executor state. A failed experiment carries the baseline's
    metrics, as DVC shows them (stale), and a queued one none.
    """
    baseline_metrics = {"gen0": {key: 0.5}, "gen1": {key: 0.5}}
    experiments = []
    for i, ((ratio, seed), state) in enumerate(cells.items()):
        params = copy.deepcopy(BASE_PARAMS)
        params["synthetic_ratio"] = ratio
        params["base"]["seed"] = seed
        if edit:
            edit(ratio, seed, params)
        metrics = {"success": _metrics(ratio, seed, key), "failed": baseline_metrics, "queued": None}[state]
        name = cell_name(CONFIG, ratio, seed)
        log = f"/repo/.dvc/tmp/exps/run/{_rev(100 + i)}/{_rev(100 + i)}.out"
        experiments.append({
            "revs": [{"rev": _rev(100 + i), "name": name, "data": _data(_rev(100 + i), params, metrics),
                      "error": {"msg": "Experiment run failed", "type": ""} if state == "failed" else None,
                      "experiments": None}],
            "executor": {"state": state, "name": None if state == "failed" else "dvc-task",
                         "local": {"root": None, "log": log if state != "queued" else None, "pid": 9155,
                                   "returncode": 255 if state == "failed" else 0, "task_id": _rev(100 + i)}},
            "name": name,
        })
    baseline = {"rev": _rev(1), "name": "main", "data": _data(_rev(1), BASE_PARAMS, baseline_metrics),
                "error": None, "experiments": experiments}
    workspace = {"rev": "workspace", "name": None, "data": _data("workspace", BASE_PARAMS, baseline_metrics),
                 "error": None, "experiments": None}
    return [workspace, baseline]


FULL = {cell: "success" for cell in GEN1}


def _cell(study: dict, ratio: float, generation: int, key: str = "excess_abs") -> dict:
    return next(e for e in study["summary"] if e["ratio"] == ratio and e["generation"] == generation)["metrics"][key]


def test_parse_exp_show_reads_states_params_and_only_successful_metrics() -> None:
    cells = {(0.0, 0): "success", (0.5, 1): "failed", (1.0, 2): "queued"}
    experiments = parse_exp_show(exp_show_json(cells))
    assert [(e.name, e.state) for e in experiments] == [
        ("study-t-r0-s0", "success"), ("study-t-r0.5-s1", "failed"), ("study-t-r1-s2", "queued")]
    success, failed, queued = experiments
    assert success.metrics["gen1"]["excess_abs"] == 0.01 and success.params["base"]["seed"] == 0
    assert success.baseline_rev == _rev(1) and success.baseline_name == "main" and success.rev == _rev(100)
    assert failed.metrics is None and failed.error == "Experiment run failed" and failed.log.endswith(".out")
    assert queued.metrics is None
    with pytest.raises(ValueError, match="expected a list"):
        parse_exp_show({"rev": "workspace"})


def test_seed_summary_and_trend_by_hand() -> None:
    s = seed_summary([0.01, 0.03, 0.02])
    assert s["mean"] == pytest.approx(0.02) and s["sd"] == pytest.approx(0.01) and s["n"] == 3
    half = T_975_2DF * 0.01 / math.sqrt(3)
    assert s["ci"] == pytest.approx([0.02 - half, 0.02 + half])
    assert seed_summary([0.5]) == {"mean": 0.5, "sd": None, "ci": None, "n": 1}
    # per-seed slopes 0.06, 0.06, 0.09 -> mean 0.07, sd sqrt(0.0003), sd / sqrt(3) = 0.01
    trend = clustered_trend({0: {0.0: 0.01, 0.5: 0.04, 1.0: 0.07}, 1: {0.0: 0.03, 0.5: 0.06, 1.0: 0.09},
                             2: {0.0: 0.02, 0.5: 0.05, 1.0: 0.11}, 3: {0.0: 0.5}}, [0.0, 0.5, 1.0])
    assert trend["per_seed"] == pytest.approx({"0": 0.06, "1": 0.06, "2": 0.09})
    assert trend["slope"] == pytest.approx(0.07) and trend["n"] == 3 and trend["excluded_seeds"] == [3]
    assert trend["ci"] == pytest.approx([0.07 - T_975_2DF * 0.01, 0.07 + T_975_2DF * 0.01])
    assert trend["excludes_zero"] is True


def test_collect_full_grid_by_hand() -> None:
    study = collect_study(parse_exp_show(exp_show_json(FULL)), CONFIG)
    assert study["amplification_metric"] == "excess_abs" and study["amplification_note"] is None
    assert study["failed"] == [] and study["missing"] == [] and study["inconsistent"] == []
    assert study["n_cells_used"] == 9 and len(study["cells"]) == 9

    # ratio 1, generation 1: 0.07, 0.09, 0.11 -> mean 0.09, sd 0.02
    cell = _cell(study, 1.0, 1)
    half = T_975_2DF * 0.02 / math.sqrt(3)
    assert cell["mean"] == pytest.approx(0.09) and cell["sd"] == pytest.approx(0.02) and cell["n"] == 3
    assert cell["ci"] == pytest.approx([0.09 - half, 0.09 + half]) and cell["seeds"] == [0, 1, 2]
    # generation 0 is the same at every ratio: mean 0.02, sd 0.01
    for ratio in (0.0, 0.5, 1.0):
        assert _cell(study, ratio, 0)["mean"] == pytest.approx(0.02)
        assert _cell(study, ratio, 0)["sd"] == pytest.approx(0.01)

    trends = study["trends"]["excess_abs"]
    at_last = trends["vs_ratio"]["gen1"]
    assert at_last["slope"] == pytest.approx(0.07)
    assert at_last["ci"] == pytest.approx([0.07 - T_975_2DF * 0.01, 0.07 + T_975_2DF * 0.01])
    assert trends["vs_ratio"]["gen0"]["slope"] == pytest.approx(0.0) and trends["vs_ratio"]["gen0"]["excludes_zero"] is False
    # against generation at ratio 1: per seed 0.06, 0.07, 0.08 -> mean 0.07, sd 0.01
    by_generation = trends["vs_generation"]["1"]
    assert by_generation["per_seed"] == pytest.approx({"0": 0.06, "1": 0.07, "2": 0.08})
    half = T_975_2DF * 0.01 / math.sqrt(3)
    assert by_generation["ci"] == pytest.approx([0.07 - half, 0.07 + half])
    assert study["headline"]["slope_vs_ratio_at_last_generation"] == at_last
    assert study["headline"]["slope_vs_generation_at_highest_ratio"] == by_generation

    # provenance: every cell's revision and swept params; the rest of params.yaml shared
    cell = next(c for c in study["cells"] if c["name"] == "study-t-r0.5-s2")
    assert cell["rev"] and cell["baseline_rev"] == _rev(1)
    assert cell["swept_params"] == {"synthetic_ratio": 0.5, "base.seed": 2}
    assert study["common_params"]["neighbours"] == {"k": 100} and "synthetic_ratio" not in study["common_params"]
    assert "seed" not in study["common_params"]["base"]
    runs = [r for r in study["runs"] if r["name"] == "study-t-r1-s2"]
    assert [(r["generation"], r["excess_abs"]) for r in runs] == [(0, 0.03), (1, 0.11)]


def test_collect_lists_failed_and_queued_cells_and_never_averages_them() -> None:
    cells = dict(FULL)
    cells[(0.5, 2)] = "failed"  # carries the baseline's stale 0.5: must not be averaged
    cells[(1.0, 0)] = "queued"
    del cells[(0.0, 1)]
    study = collect_study(parse_exp_show(exp_show_json(cells)), CONFIG)
    assert [f["name"] for f in study["failed"]] == ["study-t-r0.5-s2"]
    assert study["failed"][0]["logs_command"] == "dvc queue logs study-t-r0.5-s2"
    assert {(m["name"], m["state"]) for m in study["missing"]} == {("study-t-r0-s1", "absent"), ("study-t-r1-s0", "queued")}
    # ratio 0.5, generation 1: seeds 0 and 1 only (0.04, 0.06): mean 0.05, sd 0.01*sqrt(2)
    cell = _cell(study, 0.5, 1)
    assert cell["n"] == 2 and cell["seeds"] == [0, 1] and cell["mean"] == pytest.approx(0.05)
    half = T_975_1DF * 0.01 * math.sqrt(2) / math.sqrt(2)
    assert cell["ci"] == pytest.approx([0.05 - half, 0.05 + half])
    # the slope against ratio uses only seeds with every ratio: seed 2 (no 0.5) and 0, 1 (gaps) are out
    trend = study["trends"]["excess_abs"]["vs_ratio"]["gen1"]
    assert trend["n"] == 0 and trend["excluded_seeds"] == [0, 1, 2] and trend["slope"] is None
    lines = study_problems(study)
    assert any(line.startswith("failed: study-t-r0.5-s2") for line in lines)
    assert any("study-t-r1-s0" in line and "queued" in line for line in lines)


def test_collect_falls_back_to_amplification_abs_and_says_so() -> None:
    study = collect_study(parse_exp_show(exp_show_json(FULL, key="amplification_abs")), CONFIG)
    assert study["amplification_metric"] == "amplification_abs"
    assert "excess_abs" in study["amplification_note"] and "excess_abs" not in study["metrics"]
    assert study["trends"]["amplification_abs"]["vs_ratio"]["gen1"]["slope"] == pytest.approx(0.07)


def test_collect_flags_cells_that_differ_in_unswept_params() -> None:
    def edit(ratio, seed, params):
        if (ratio, seed) == (1.0, 2):
            params["neighbours"]["k"] = 7

    study = collect_study(parse_exp_show(exp_show_json(FULL, edit=edit)), CONFIG)
    assert len(study["inconsistent"]) == 1 and "neighbours.k" in study["inconsistent"][0]
    assert "neighbours" not in study["common_params"]


def _write(tmp_path: Path, data: list[dict]) -> tuple[Path, Path]:
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({**BASE_PARAMS, "study": {"name": "t", "ratios": [0.0, 0.5, 1.0], "seeds": [0, 1, 2],
                                                           "generations": 2}}))
    exp_json = tmp_path / "exp.json"
    exp_json.write_text(json.dumps(data))
    return params, exp_json


def test_collect_command_writes_outputs_or_refuses(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cells = dict(FULL)
    cells[(0.5, 2)] = "failed"
    params, exp_json = _write(tmp_path, exp_show_json(cells))
    out, plots = tmp_path / "metrics" / "study.json", tmp_path / "plots"
    args = ["study", "collect", "--params", str(params), "--exp-json", str(exp_json), "--out", str(out), "--plots", str(plots)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "failed: study-t-r0.5-s2" in err and "nothing written" in err and not out.exists()
    assert main(args + ["--allow-missing"]) == 0
    study = json.loads(out.read_text())
    assert [f["name"] for f in study["failed"]] == ["study-t-r0.5-s2"]
    for name in ("study_summary.csv", "study_runs.csv", "study_trends.csv", "study_amplification.png", "study_downstream.png"):
        assert (plots / name).stat().st_size > 0
    header, *rows = (plots / "study_summary.csv").read_text().splitlines()
    assert header == "ratio,generation,metric,mean,sd,ci_lo,ci_hi,n"
    row = next(r for r in rows if r.startswith("1.0,1,excess_abs,"))
    assert float(row.split(",")[3]) == pytest.approx(0.09)


def test_study_config_and_queue_commands(tmp_path: Path) -> None:
    assert [c.name for c in study_cells(CONFIG)][:4] == ["study-t-r0-s0", "study-t-r0-s1", "study-t-r0-s2", "study-t-r0.5-s0"]
    params = {"generations": [0, 1, 2], "rounds": {"1": {"gen": 1, "prev": 0, "previous": "artifacts/corpus"},
                                                   "2": {"gen": 2, "prev": 1, "previous": "artifacts/gen1/mix"}}}
    assert generation_overrides(params, 3) == []
    assert generation_overrides(params, 2) == ["generations=[0,1]", "~rounds.2"]
    assert generation_overrides(params, 4) == ["generations=[0,1,2,3]", "+rounds.3={gen: 3, prev: 2, previous: 'artifacts/gen2/mix'}"]
    with_datasets = {**params, "datasets": {"0": {"gen": 0, "dataset": "artifacts/corpus/captions.parquet",
                                                  "folder": "artifacts/corpus"}}}
    assert generation_overrides(with_datasets, 2) == [
        "generations=[0,1]", "~rounds.2",
        "+datasets.1={gen: 1, dataset: 'artifacts/gen1/mix/dataset.parquet', folder: 'artifacts/gen1/mix'}"]
    config = StudyConfig(name="t", ratios=(0.8,), seeds=(3,), seed_params=("base.seed", "world.seed"), generations=3)
    assert queue_command(study_cells(config)[0], config, params) == [
        "exp", "run", "--queue", "-S", "synthetic_ratio=0.8", "-S", "base.seed=3", "-S", "world.seed=3",
        "--name", "study-t-r0.8-s3"]
    path = tmp_path / "params.yaml"
    path.write_text("study:\n  ratios: [0.0, 1.5]\n")
    with pytest.raises(ConfigError, match="study.ratios"):
        load_study_config(path)
    path.write_text("study:\n  ratio: [0.0]\n")
    with pytest.raises(ConfigError, match="study.ratio: unknown key"):
        load_study_config(path)
    path.write_text("study:\n  name: a b\n")
    with pytest.raises(ConfigError, match="study.name"):
        load_study_config(path)


FAKE_DVC = """#!{python}
import json, os, sys
root = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(root, "calls.txt"), "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1:3] == ["exp", "show"]:
    count_path = os.path.join(root, "shows.txt")
    count = int(open(count_path).read()) if os.path.exists(count_path) else 0
    open(count_path, "w").write(str(count + 1))
    frames = sorted(n for n in os.listdir(root) if n.startswith("show") and n.endswith(".json"))
    print(open(os.path.join(root, frames[min(count, len(frames) - 1)])).read())
elif sys.argv[1:3] == ["queue", "status"]:
    print("Worker status: 1 active, 0 idle")
"""


def test_run_study_queues_what_is_left_and_reports_failures(tmp_path: Path) -> None:
    """`study run` against a fake dvc: keeps succeeded cells, requeues failed ones, names final failures."""
    fake = tmp_path / "dvc"
    fake.write_text(FAKE_DVC.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    config = StudyConfig(name="t", ratios=(0.0, 0.5), seeds=(0, 1), generations=2, poll_seconds=0.01)
    before = {(0.0, 0): "success", (0.0, 1): "failed"}
    running = {(0.0, 0): "success", (0.0, 1): "queued", (0.5, 0): "queued", (0.5, 1): "queued"}
    after = {(0.0, 0): "success", (0.0, 1): "success", (0.5, 0): "failed", (0.5, 1): "success"}
    for i, cells in enumerate((before, running, after)):
        (tmp_path / f"show{i}.json").write_text(json.dumps(exp_show_json(cells)))
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps(BASE_PARAMS))
    lines: list[str] = []
    failed = run_study(config, params, dvc=str(fake), echo=lines.append, sleep=lambda s: None)
    assert failed == ["study-t-r0.5-s0"]
    calls = [json.loads(line) for line in (tmp_path / "calls.txt").read_text().splitlines()]
    queued = [c[-1] for c in calls if c[:3] == ["exp", "run", "--queue"]]
    assert queued == ["study-t-r0-s1", "study-t-r0.5-s0", "study-t-r0.5-s1"]
    assert ["queue", "remove", "study-t-r0-s1"] in calls and ["queue", "start", "-j", "2"] in calls
    assert any(line.startswith("[4/4]") for line in lines) or sum(line.startswith("[") for line in lines) == 4
    assert any("study-t-r0.5-s0: failed" in line and "dvc queue logs study-t-r0.5-s0" in line for line in lines)
    assert os.path.exists(tmp_path / "shows.txt")


def test_report_study_section(tmp_path: Path) -> None:
    """The report's Study section: headline slopes and per-cell rows in percent, problems listed, offline."""
    from biasloop.report.html import render_report, study_section
    from biasloop.study.collect import write_study_outputs

    cells = dict(FULL)
    cells[(0.5, 2)] = "failed"
    study = collect_study(parse_exp_show(exp_show_json(cells)), CONFIG)
    write_study_outputs(study, str(tmp_path / "study.json"), str(tmp_path / "plots"))
    study = json.loads((tmp_path / "study.json").read_text())
    text = render_report(tmp_path / "report.html", [], None, None, {}, {}, study=study)
    section = study_section(study)
    assert section in text and "Study 't': 3 ratios &times; 3 seeds &times; 2 generations" in section
    assert "failed: study-t-r0.5-s2" in section and "8 of 9 experiments aggregated" in section
    assert section.count("data:image/png;base64,") == 2
    # ratio 1, generation 1: mean 9.0 pp, SD 2.0 pp, 3 seeds
    assert "<tr><td>1</td><td>1</td><td>+9.0</td><td>2.0</td>" in section
    assert "No study collected yet" in study_section({"status": "not collected"})
    assert study_section(None) == ""


def test_collect_ignores_the_study_section_when_comparing_cells() -> None:
    """Extending the grid later changes `study.ratios` in new cells only: not a difference between cells."""
    def edit(ratio, seed, params):
        params["study"] = {"ratios": [0.0, 0.5] if ratio < 1 else [0.0, 0.5, 1.0]}

    study = collect_study(parse_exp_show(exp_show_json(FULL, edit=edit)), CONFIG)
    assert study["inconsistent"] == [] and "study" not in study["common_params"]


def test_run_dvc_does_not_wait_for_a_daemon_holding_its_output(tmp_path: Path) -> None:
    """`dvc queue start` forks a worker that keeps stdout open; run_dvc must return when the command exits."""
    import time

    from biasloop.study.experiments import run_dvc

    fake = tmp_path / "dvc"
    fake.write_text(f"#!{sys.executable}\nimport os, sys, time\nprint('started')\nsys.stdout.flush()\n"
                    "if os.fork() == 0:\n    time.sleep(20)\n    os._exit(0)\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    start = time.monotonic()
    assert run_dvc(["queue", "start"], dvc=str(fake)).strip() == "started"
    assert time.monotonic() - start < 15
