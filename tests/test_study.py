"""Studies: cells, names and queue commands of named studies over any params; aggregation of fabricated
`dvc exp show --json` output, checked by hand (statistics: tests/test_study_inference.py)."""

from __future__ import annotations

import copy
import json
import math
import os
import stat
import sys
from pathlib import Path

import pytest
import yaml

from biasloop.cli import main
from biasloop.core.config import ConfigError
from biasloop.study.collect import collect_study, study_problems
from biasloop.study.config import check_param_paths, load_study_config
from biasloop.study.experiments import parse_exp_show
from biasloop.study.grid import cell_name, generation_overrides, queue_command, run_study, study_cells

T_975_2DF = 4.302652729911275  # scipy.stats.t.ppf(0.975, 2): 3 seeds

BASE_PARAMS = {
    "base": {"seed": 0, "device": "cpu"},
    "world": {"seed": 0, "markedness": {"counter": 0.4}},
    "synthetic_ratio": 0.4,
    "generations": [0, 1],
    "rounds": {"1": {"gen": 1, "prev": 0, "previous": "artifacts/corpus"}},
    "sampling": {"guidance_scale": 1.5},
    "generator": {"snr_gamma": 0.0, "train_steps": 300},
    "loop": {"mode": "replace", "retrain_generator": True},
    "neighbours": {"k": 100},
}


def params_with(studies: dict, **study) -> dict:
    return {**copy.deepcopy(BASE_PARAMS), "study": {"default": next(iter(studies)), **study}, "studies": studies}


# A 2 x 2 grid: guidance (numeric, 2 values) x variant; 3 seeds, 2 generations.
GRID = {
    "generations": 2,
    "variants": {"replace": {"loop.mode": "replace"}, "accumulate": {"loop.mode": "accumulate"}},
    "axes": {"sampling.guidance_scale": [1, 3]},
    "seeds": [0, 1, 2],
    "metrics": ["gap", "generator"],
    "margins": {"generator": 0.05},
    "endpoints": {
        "gap_vs_guidance": {
            "metric": "gap",
            "generation": 1,
            "slope_vs": "sampling.guidance_scale",
            "at": {"variant": "replace"},
            "margin": 0.01,
        },
        "accumulate_minus_replace": {
            "metric": "gap",
            "generation": 1,
            "at": {"variant": "accumulate", "sampling.guidance_scale": 1},
            "minus": {"variant": "replace"},
        },
        "generator_level": {
            "metric": "generator",
            "generation": 0,
            "at": {"variant": "replace", "sampling.guidance_scale": 1},
            "margin": 0.05,
        },
    },
}
CONFIG = load_study_config(params_with({"t": GRID}), "t")

# gap at generation 1 by (variant, guidance, seed); generation 0 is 0.01 * seed everywhere.
GAP1 = {
    ("replace", 1, 0): 0.01,
    ("replace", 1, 1): 0.03,
    ("replace", 1, 2): 0.02,
    ("replace", 3, 0): 0.05,
    ("replace", 3, 1): 0.07,
    ("replace", 3, 2): 0.08,
    ("accumulate", 1, 0): 0.00,
    ("accumulate", 1, 1): 0.01,
    ("accumulate", 1, 2): 0.02,
    ("accumulate", 3, 0): 0.02,
    ("accumulate", 3, 1): 0.02,
    ("accumulate", 3, 2): 0.03,
}
GENERATOR = {0: 0.001, 1: -0.002, 2: 0.004}  # generator term at generation 0 (every cell)


def _rev(i: int) -> str:
    return f"{i:040x}"


def _data(rev: str, params: dict, metrics: dict | None) -> dict:
    """The `data` object of one revision, keys as DVC 3.67 prints them."""
    return {
        "rev": rev,
        "timestamp": "2026-11-26T15:27:36",
        "params": {"params.yaml": {"data": params}},
        "metrics": {} if metrics is None else {"metrics/summary.json": {"data": metrics}},
        "deps": {},
        "outs": {},
        "meta": {},
    }


def _metrics(variant: str, guidance: int, seed: int, gap_key: str = "gap") -> dict:
    """metrics/summary.json of one cell: the new headline keys (gap, generator) or the older excess_abs."""
    gen0 = {gap_key: 0.01 * seed, "generator": GENERATOR[seed]}
    gen1 = {gap_key: GAP1[(variant, guidance, seed)], "generator": 0.0}
    return {"headline": {"generator": GENERATOR[seed]}, "gen0": gen0, "gen1": gen1}


def exp_show_json(
    states: dict[tuple[str, int, int], str], config=CONFIG, gap_key: str = "gap", edit=None
) -> list[dict]:
    """`dvc exp show --json` with one experiment per (variant, guidance, seed) in ``states`` (-> executor state).

    A failed experiment carries the baseline's metrics, as DVC shows them (stale), and a queued one none.
    """
    baseline_metrics = {"gen0": {gap_key: 0.5}, "gen1": {gap_key: 0.5}}
    experiments = []
    for i, ((variant, guidance, seed), state) in enumerate(states.items()):
        params = copy.deepcopy(BASE_PARAMS)
        params["loop"]["mode"] = variant
        params["sampling"]["guidance_scale"] = guidance
        params["base"]["seed"] = params["world"]["seed"] = seed
        if edit:
            edit(variant, guidance, seed, params)
        metrics = {
            "success": _metrics(variant, guidance, seed, gap_key),
            "failed": baseline_metrics,
            "queued": None,
            "running": None,
        }[state]
        name = cell_name(config, {"variant": variant, "sampling.guidance_scale": guidance}, seed)
        log = f"/repo/.dvc/tmp/exps/run/{_rev(100 + i)}/{_rev(100 + i)}.out"
        experiments.append(
            {
                "revs": [
                    {
                        "rev": _rev(100 + i),
                        "name": name,
                        "data": _data(_rev(100 + i), params, metrics),
                        "error": {"msg": "Experiment run failed", "type": ""} if state == "failed" else None,
                        "experiments": None,
                    }
                ],
                "executor": {
                    "state": state,
                    "name": None if state == "failed" else "dvc-task",
                    "local": {
                        "root": None,
                        "log": log if state != "queued" else None,
                        "pid": 9155,
                        "returncode": 255 if state == "failed" else 0,
                        "task_id": _rev(100 + i),
                    },
                },
                "name": name,
            }
        )
    baseline = {
        "rev": _rev(1),
        "name": "main",
        "data": _data(_rev(1), BASE_PARAMS, baseline_metrics),
        "error": None,
        "experiments": experiments,
    }
    workspace = {
        "rev": "workspace",
        "name": None,
        "data": _data("workspace", BASE_PARAMS, baseline_metrics),
        "error": None,
        "experiments": None,
    }
    return [workspace, baseline]


FULL = {cell: "success" for cell in GAP1}


def test_cells_are_every_combination_with_readable_deterministic_names() -> None:
    names = [c.name for c in study_cells(CONFIG)]
    assert len(names) == 12 and len(set(names)) == 12
    # variant first, then the axes in declared order, seeds inner
    assert names[:4] == [
        "study-t-replace-guidance_scale1-s0",
        "study-t-replace-guidance_scale1-s1",
        "study-t-replace-guidance_scale1-s2",
        "study-t-replace-guidance_scale3-s0",
    ]
    assert names == [c.name for c in study_cells(CONFIG)]
    cell = study_cells(CONFIG)[-1]
    assert cell.name == "study-t-accumulate-guidance_scale3-s2" and cell.seed == 2
    assert dict(cell.setting) == {"loop.mode": "accumulate", "sampling.guidance_scale": 3}

    generator = {
        "generations": 1,
        "axes": {
            "sampling.guidance_scale": [1, 1.5, 3],
            "generator.snr_gamma": [0, 5],
            "generator.train_steps": [300, 500],
        },
        "seeds": [0, 1, 2],
        "primary_seeds": [3, 4],
        "metrics": ["generator"],
        "endpoints": {
            "slope": {
                "metric": "generator",
                "slope_vs": "sampling.guidance_scale",
                "at": {"generator.snr_gamma": 0, "generator.train_steps": 300},
            }
        },
    }
    config = load_study_config(params_with({"generator": generator}))
    cells = study_cells(config)
    # 12 cells x 3 seeds, and the 3 cells the primary endpoint reads get seeds 3 and 4 as well
    assert len(cells) == 12 * 3 + 3 * 2
    assert "study-generator-guidance_scale1.5-snr_gamma0-train_steps300-s4" in {c.name for c in cells}
    assert "study-generator-guidance_scale1.5-snr_gamma5-train_steps300-s4" not in {c.name for c in cells}

    # the ratio keeps its short label (the first studies' names), and labels that clash use the full path
    ratio = load_study_config(params_with({"default": {"axes": {"synthetic_ratio": [0.0, 0.4]}, "seeds": [1]}}))
    assert [c.name for c in study_cells(ratio)] == ["study-default-r0-s1", "study-default-r0.4-s1"]
    clash = load_study_config(params_with({"c": {"axes": {"base.seed": [1], "world.seed": [2]}, "seeds": [0]}}), "c")
    assert study_cells(clash)[0].name == "study-c-base_seed1-world_seed2-s0"


def test_queue_command_sets_the_cell_the_seed_params_and_the_generations() -> None:
    cell = study_cells(CONFIG)[4]
    params = {
        "generations": [0, 1, 2],
        "rounds": {
            "1": {"gen": 1, "prev": 0, "previous": "artifacts/corpus"},
            "2": {"gen": 2, "prev": 1, "previous": "artifacts/gen1/mix"},
        },
    }
    assert queue_command(cell, CONFIG, params) == [
        "exp",
        "run",
        "--queue",
        "-S",
        "loop.mode='replace'",
        "-S",
        "sampling.guidance_scale=3",
        "-S",
        "base.seed=1",
        "-S",
        "world.seed=1",
        "-S",
        "generations=[0,1]",
        "-S",
        "~rounds.2",
        "--name",
        "study-t-replace-guidance_scale3-s1",
    ]
    fixed = load_study_config(
        params_with(
            {
                "f": {
                    "variants": {"fixed": {"loop.retrain_generator": False}},
                    "axes": {"synthetic_ratio": [0.8]},
                    "seeds": [0],
                }
            }
        )
    )
    assert queue_command(study_cells(fixed)[0], fixed, {"generations": [0], "rounds": {}})[3:7] == [
        "-S",
        "loop.retrain_generator=false",
        "-S",
        "synthetic_ratio=0.8",
    ]


def test_unknown_param_paths_and_bad_definitions_are_named() -> None:
    params = params_with({"g": {"axes": {"generate.guidance_scale": [1, 3]}, "seeds": [0]}})
    config = load_study_config(params)  # reading the definition does not look at the paths
    with pytest.raises(
        ConfigError,
        match=r"studies.g.axes: unknown param path 'generate.guidance_scale' "
        r"\(not in the params file\); did you mean sampling.guidance_scale",
    ):
        check_param_paths(config, params)
    section = params_with({"g": {"variants": {"v": {"generator": 1}}, "seeds": [0]}})
    with pytest.raises(ConfigError, match=r"studies.g.variants.v: unknown param path 'generator' \(a section"):
        check_param_paths(load_study_config(section), section)
    seeds = params_with({"g": {"axes": {"synthetic_ratio": [0.0]}}}, seed_params=["base.seed", "wrold.seed"])
    with pytest.raises(ConfigError, match="study.seed_params: unknown param path 'wrold.seed'"):
        check_param_paths(load_study_config(seeds), seeds)
    check_param_paths(CONFIG, params_with({"t": GRID}))

    bad = [
        ({"axes": {"synthetic_ratio": [0.0, 0.0]}}, "values must be distinct"),
        ({"axes": {"synthetic_ratio": [0.0]}, "axis": 1}, "studies.x.axis: unknown key"),
        ({}, "no axes and no variants"),
        ({"axes": {"a.b": [1, 2]}, "metrics": ["nope"]}, "metric 'nope' is not in study.metrics"),
        (
            {"axes": {"a.b": [1, 2]}, "metrics": ["gap"], "endpoints": {"e": {"metric": "gap"}}},
            r"studies.x.endpoints.e.at: fix a.b",
        ),
        (
            {"axes": {"a.b": [1, 2]}, "metrics": ["gap"], "endpoints": {"e": {"metric": "gap", "slope_vs": "c.d"}}},
            "slope_vs: 'c.d' is not an axis",
        ),
        (
            {"axes": {"a.b": [1, 2]}, "metrics": ["gap"], "endpoints": {"e": {"metric": "gap", "at": {"a.b": 7}}}},
            r"at.a.b: 7 is not one of its values",
        ),
        (
            {
                "axes": {"a.b": [1, 2]},
                "metrics": ["gap"],
                "endpoints": {"e": {"metric": "gap", "generation": 3, "at": {"a.b": 1}}},
            },
            "generation: 3 is not a generation",
        ),
    ]
    for spec, message in bad:
        with pytest.raises(ConfigError, match=message):
            load_study_config(params_with({"x": spec}))
    with pytest.raises(ConfigError, match=r"studies.nope: no such study \(defined: x\)"):
        load_study_config(params_with({"x": {"axes": {"a.b": [1]}}}), "nope")


def test_collect_primary_endpoints_by_hand() -> None:
    study = collect_study(parse_exp_show(exp_show_json(FULL)), CONFIG)
    assert study["failed"] == [] and study["missing"] == [] and study["inconsistent"] == []
    assert study["n_cells_used"] == 12 and study["metric_paths"] == {
        "gap": "gen{gen}.gap",
        "generator": "gen{gen}.generator",
    }

    # slope of gap vs guidance at generation 1 under replace: per seed (0.05-0.01)/2, (0.07-0.03)/2,
    # (0.08-0.02)/2 = 0.02, 0.02, 0.03 -> mean 0.07/3, sd 0.01/sqrt(3)
    slope = study["endpoints"]["gap_vs_guidance"]
    assert slope["kind"] == "slope" and slope["adjusted"] is False and slope["primary"] is True
    assert slope["values"] == pytest.approx([0.02, 0.02, 0.03])
    mean, se = 0.07 / 3, (0.01 / math.sqrt(3)) / math.sqrt(3)
    assert slope["estimate"] == pytest.approx(mean)
    assert slope["ci"] == pytest.approx([mean - T_975_2DF * se, mean + T_975_2DF * se])
    t = mean / se  # two-sided p with 2 df: 1 - t / sqrt(t^2 + 2)
    assert slope["p"] == pytest.approx(1 - t / math.sqrt(t * t + 2))
    assert slope["verdict"] == "effect" and slope["ci_level"] == pytest.approx(0.95)

    # accumulate minus replace at guidance 1, generation 1: 0-0.01, 0.01-0.03, 0.02-0.02 = -0.01, -0.02, 0
    contrast = study["endpoints"]["accumulate_minus_replace"]
    assert contrast["kind"] == "contrast" and contrast["values"] == pytest.approx([-0.01, -0.02, 0.0])
    assert contrast["estimate"] == pytest.approx(-0.01) and contrast["margin"] is None
    assert contrast["verdict"] == "not resolved" and contrast["tost_p"] is None

    # generator term at generation 0 (read from gen0.generator): 0.001, -0.002, 0.004 within +-0.05
    level = study["endpoints"]["generator_level"]
    assert level["values"] == pytest.approx([0.001, -0.002, 0.004]) and level["verdict"] == "equivalent within ±0.05"
    assert level["tost_p"] < 0.05 < level["p"]


def test_collect_holm_adjusts_every_other_interval() -> None:
    study = collect_study(parse_exp_show(exp_show_json(FULL)), CONFIG)
    secondary = study["intervals"]
    assert secondary and all(r["adjusted"] and not r["primary"] for r in secondary)
    # the primary endpoints are not repeated among the secondary intervals
    assert not any(
        r["kind"] == "slope" and r["metric"] == "gap" and r["generation"] == 1 and r["at"] == {"variant": "replace"}
        for r in secondary
    )
    tested = [r for r in secondary if r["p"] is not None]
    assert study["family_size"] == len(tested)
    from statsmodels.stats.multitest import multipletests

    reject, p_adjusted, _, _ = multipletests([r["p"] for r in tested], alpha=0.05, method="holm")
    assert [r["p_adjusted"] for r in tested] == pytest.approx(list(p_adjusted))
    assert [r["verdict"] == "effect" for r in tested] == list(reject)
    for record in tested:  # wider than the plain 95% interval, and excluding 0 exactly when Holm rejects
        assert record["ci_level"] >= 0.95 and record["alpha_per_test"] <= 0.05
        excludes_zero = record["ci"][0] > 0 or record["ci"][1] < 0
        assert excludes_zero == (record["verdict"] == "effect")
    # slope of gap vs guidance under accumulate at generation 1: per seed 0.01, 0.005, 0.005
    accumulate = next(
        r
        for r in secondary
        if r["kind"] == "slope"
        and r["at"] == {"variant": "accumulate"}
        and r["metric"] == "gap"
        and r["generation"] == 1
    )
    assert accumulate["values"] == pytest.approx([0.01, 0.005, 0.005])
    # contrasts of the variant and slopes against generation are in the family too
    assert {r["kind"] for r in secondary} == {"level", "slope", "contrast"}
    assert any(r["slope_vs"] == "generation" for r in secondary)


def test_collect_reads_fallback_keys_and_lists_problems() -> None:
    states = dict(FULL)
    states[("replace", 3, 2)] = "failed"  # carries the baseline's stale 0.5: must not be averaged
    states[("accumulate", 1, 0)] = "queued"
    del states[("accumulate", 3, 1)]
    study = collect_study(parse_exp_show(exp_show_json(states, gap_key="excess_abs")), CONFIG)
    assert study["metric_paths"]["gap"] == "gen{gen}.excess_abs"
    assert any("gap: read from gen{gen}.excess_abs" in note for note in study["notes"])
    assert [f["name"] for f in study["failed"]] == ["study-t-replace-guidance_scale3-s2"]
    assert {(m["name"], m["state"]) for m in study["missing"]} == {
        ("study-t-accumulate-guidance_scale1-s0", "queued"),
        ("study-t-accumulate-guidance_scale3-s1", "absent"),
    }
    # the slope uses only seeds with every point of the line: seed 2 lacks guidance 3 under replace
    slope = study["endpoints"]["gap_vs_guidance"]
    assert slope["seeds"] == [0, 1] and slope["excluded_seeds"] == [2] and slope["n"] == 2
    lines = study_problems(study)
    assert any(line.startswith("failed: study-t-replace-guidance_scale3-s2") for line in lines)

    def edit(variant, guidance, seed, params):
        if (variant, guidance, seed) == ("replace", 1, 0):
            params["neighbours"]["k"] = 7
        if (variant, guidance, seed) == ("replace", 1, 1):
            params["world"]["seed"] = 0  # the name says seed 1

    study = collect_study(parse_exp_show(exp_show_json(FULL, edit=edit)), CONFIG)
    assert any("neighbours.k" in line for line in study["inconsistent"])
    assert any("study-t-replace-guidance_scale1-s1: params say world.seed=0" in line for line in study["inconsistent"])


def _write(tmp_path: Path, data: list[dict]) -> tuple[Path, Path]:
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps(params_with({"t": GRID})))
    exp_json = tmp_path / "exp.json"
    exp_json.write_text(json.dumps(data))
    return params, exp_json


def test_collect_command_writes_the_named_study_or_refuses(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    states = dict(FULL)
    states[("replace", 3, 2)] = "failed"
    params, exp_json = _write(tmp_path, exp_show_json(states))
    out, plots = tmp_path / "metrics" / "studies", tmp_path / "plots" / "studies"
    args = [
        "study",
        "collect",
        "--params",
        str(params),
        "--name",
        "t",
        "--exp-json",
        str(exp_json),
        "--out-dir",
        str(out),
        "--plots",
        str(plots),
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "failed: study-t-replace-guidance_scale3-s2" in err and "nothing written" in err and not out.exists()
    assert main(args + ["--allow-missing"]) == 0
    printed = capsys.readouterr().out
    assert "primary gap_vs_guidance" in printed and "Holm-adjusted" in printed
    study = json.loads((out / "t.json").read_text())
    endpoint = study["endpoints"]["generator_level"]
    assert {"estimate", "ci", "adjusted", "p", "verdict", "margin", "tost_p"} <= set(endpoint)
    for name in ("t_summary.csv", "t_runs.csv", "t_intervals.csv", "t_intervals.png"):
        assert (plots / name).stat().st_size > 0
    header, *rows = (plots / "t_intervals.csv").read_text().splitlines()
    assert header.startswith("endpoint,primary,kind,metric,generation,label,estimate,ci_lo,ci_hi,ci_level,adjusted,p,")
    assert rows[0].startswith("gap_vs_guidance,true,slope,gap,1,")
    assert main(["study", "list", "--params", str(params)]) == 0
    assert "t: 4 cells, 12 experiments, 2 generation(s)" in capsys.readouterr().out


def test_committed_studies_are_defined_and_name_the_pipeline_params() -> None:
    """params.yaml's studies load and every param path they name exists."""
    from biasloop.core.config import read_params
    from tests.conftest import REPO_ROOT

    params = read_params(REPO_ROOT / "params.yaml")
    for name in ("default", "generator", "markedness", "loop"):
        config = load_study_config(params, name)
        assert config.spec.endpoints, name
        check_param_paths(config, params)
    generator = load_study_config(params, "generator")
    # 2 generators x 3 guidance scales x 3 seeds, plus 2 seeds more for the 4 cells a primary endpoint reads
    assert len(study_cells(generator)) == 6 * 3 + 4 * 2
    assert len(load_study_config(params, "loop").spec.variants) == 3


def test_committed_studies_overrides_leave_a_valid_params_file(tmp_path: Path) -> None:
    """Each committed study's -S overrides (its generations and a cell's values), applied by DVC's own writer
    to the committed params.yaml as `dvc exp run --queue` does, give a file that parses to those values.
    (A comment on the `rounds:` line made DVC write an emptied `rounds` as an invalid '{}' line.)"""
    from dvc.utils.hydra import apply_overrides

    from biasloop.study.grid import cell_overrides
    from tests.conftest import committed_text

    text = committed_text("params.yaml")
    params = yaml.safe_load(text)
    for name in ("default", "generator", "markedness", "loop"):
        config = load_study_config(params, name)
        overrides = cell_overrides(study_cells(config)[0], config, params)
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        apply_overrides(str(path), overrides)
        written = yaml.safe_load(path.read_text())
        assert written["generations"] == list(range(config.generations)), name
        assert sorted(written["rounds"]) == [str(n) for n in range(1, config.generations)], name


def test_generation_overrides_carry_the_previous_dataset() -> None:
    params = {
        "generations": [0, 1, 2],
        "rounds": {
            "1": {"gen": 1, "prev": 0, "previous": "artifacts/corpus"},
            "2": {"gen": 2, "prev": 1, "previous": "artifacts/gen1/mix"},
        },
    }
    assert generation_overrides(params, 3) == []
    assert generation_overrides(params, 2) == ["generations=[0,1]", "~rounds.2"]
    assert generation_overrides(params, 4) == [
        "generations=[0,1,2,3]",
        "+rounds.3={gen: 3, prev: 2, previous: 'artifacts/gen2/mix'}",
    ]


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
    workers = os.path.join(root, "workers.txt")
    print("Worker status: " + (open(workers).read() if os.path.exists(workers) else "1") + " active, 0 idle")
elif sys.argv[1:3] == ["queue", "logs"]:
    print("\\n".join("log line " + str(i) for i in range(40)))
"""


def test_run_study_queues_what_is_left_and_reports_failures(tmp_path: Path) -> None:
    """`study run` against a fake dvc: keeps succeeded cells, requeues failed ones, names final failures."""
    fake = tmp_path / "dvc"
    fake.write_text(FAKE_DVC.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    spec = {
        **GRID,
        "variants": {"replace": {"loop.mode": "replace"}},
        "seeds": [0, 1],
        "endpoints": {},
        "generations": 2,
    }
    params = params_with({"t": spec}, poll_seconds=0.01)
    config = load_study_config(params)
    before = {("replace", 1, 0): "success", ("replace", 1, 1): "failed"}
    running = {
        ("replace", 1, 0): "success",
        ("replace", 1, 1): "queued",
        ("replace", 3, 0): "queued",
        ("replace", 3, 1): "queued",
    }
    after = {
        ("replace", 1, 0): "success",
        ("replace", 1, 1): "success",
        ("replace", 3, 0): "failed",
        ("replace", 3, 1): "success",
    }
    for i, states in enumerate((before, running, after)):
        (tmp_path / f"show{i}.json").write_text(json.dumps(exp_show_json(states, config=config)))
    path = tmp_path / "params.yaml"
    path.write_text(json.dumps(params))
    lines: list[str] = []
    failed = run_study(config, path, dvc=str(fake), echo=lines.append, sleep=lambda s: None)
    assert failed == ["study-t-replace-guidance_scale3-s0"]
    calls = [json.loads(line) for line in (tmp_path / "calls.txt").read_text().splitlines()]
    queued = [c[-1] for c in calls if c[:3] == ["exp", "run", "--queue"]]
    assert queued == [
        "study-t-replace-guidance_scale1-s1",
        "study-t-replace-guidance_scale3-s0",
        "study-t-replace-guidance_scale3-s1",
    ]
    assert ["queue", "remove", "study-t-replace-guidance_scale1-s1"] in calls and ["queue", "start", "-j", "2"] in calls
    assert any("study-t-replace-guidance_scale3-s0: failed" in line and "dvc queue logs" in line for line in lines)
    assert os.path.exists(tmp_path / "shows.txt")

    # an unknown path stops the run before anything is queued
    path.write_text(json.dumps(params_with({"t": {**spec, "axes": {"sampling.guidnce": [1]}}})))
    bad = load_study_config(json.loads(path.read_text()))
    with pytest.raises(ConfigError, match="sampling.guidnce"):
        run_study(bad, path, dvc=str(fake), echo=lines.append, sleep=lambda s: None, dry_run=True)


def test_waiting_ends_when_a_worker_died_or_the_timeout_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cell left "running" by a worker that died, or a wait past ``timeout``: an error naming the cell,
    its state and the tail of its log, never an endless wait."""
    from biasloop.study.grid import wait_for_cells

    fake = tmp_path / "dvc"
    fake.write_text(FAKE_DVC.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    spec = {**GRID, "variants": {"replace": {"loop.mode": "replace"}}, "seeds": [0], "endpoints": {}, "generations": 2}
    config = load_study_config(params_with({"t": spec}, poll_seconds=0.01))
    states = {("replace", 1, 0): "success", ("replace", 3, 0): "running"}
    (tmp_path / "show0.json").write_text(json.dumps(exp_show_json(states, config=config)))
    names = [c.name for c in study_cells(config)]

    ticks = iter(range(0, 10_000, 60))  # a minute per look
    with pytest.raises(RuntimeError) as timed_out:
        wait_for_cells(
            config,
            names,
            dvc=str(fake),
            echo=lambda line: None,
            sleep=lambda s: None,
            timeout=300,
            clock=lambda: next(ticks),
        )
    message = str(timed_out.value)
    assert message.startswith("gave up waiting after 5m00s: study-t-replace-guidance_scale3-s0 running")
    assert "log line 39" in message and "log line 24" not in message and "queue keeps running" in message

    (tmp_path / "workers.txt").write_text("0")
    # DVC says 0 workers, but a queue worker of this checkout runs (seen after `dvc queue kill` + start): wait on
    from biasloop.core.processes import CheckoutProcess, ProcessInfo
    from biasloop.study import grid

    worker = CheckoutProcess(
        ProcessInfo(4242, 1, "1", str(tmp_path), ("python", "-m", "dvc", "exp", "queue-worker", "dvc-exp-worker-1")),
        "queue worker",
        "works in the checkout",
    )
    finished = iter([{**states, ("replace", 3, 0): "running"}] * 3 + [{**states, ("replace", 3, 0): "success"}])
    shows = [tmp_path / f"show{i}.json" for i in range(4)]
    for show, frame in zip(shows, finished):
        show.write_text(json.dumps(exp_show_json(frame, config=config)))
    (tmp_path / "shows.txt").write_text("0")
    with monkeypatch.context() as patched:
        patched.setattr(grid, "checkout_processes", lambda root: [worker])
        assert wait_for_cells(config, names, dvc=str(fake), echo=lambda line: None, sleep=lambda s: None) == []
    for show in shows[1:]:
        show.unlink()
    (tmp_path / "shows.txt").write_text("0")
    with pytest.raises(
        RuntimeError, match="no queue worker is running, yet study-t-replace-guidance_scale3-s0 running"
    ) as died:
        wait_for_cells(config, names, dvc=str(fake), echo=lambda line: None, sleep=lambda s: None)
    assert "dvc queue kill NAME" in str(died.value)


def test_run_dvc_does_not_wait_for_a_daemon_holding_its_output(tmp_path: Path) -> None:
    """`dvc queue start` forks a worker that keeps stdout open; run_dvc must return when the command exits."""
    import time

    from biasloop.study.experiments import run_dvc

    fake = tmp_path / "dvc"
    fake.write_text(
        f"#!{sys.executable}\nimport os, sys, time\nprint('started')\nsys.stdout.flush()\n"
        "if os.fork() == 0:\n    time.sleep(20)\n    os._exit(0)\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    start = time.monotonic()
    assert run_dvc(["queue", "start"], dvc=str(fake)).strip() == "started"
    assert time.monotonic() - start < 15


def test_run_dvc_stops_a_command_that_hangs(tmp_path: Path) -> None:
    """A `dvc exp show` stuck on the queue's lock is stopped after its timeout, with an error naming it."""
    import time

    from biasloop.study.experiments import DvcTimeout, run_dvc

    fake = tmp_path / "dvc"
    fake.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(60)\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    start = time.monotonic()
    with pytest.raises(DvcTimeout, match=r"exp show --json` did not finish in 1 s"):
        run_dvc(["exp", "show", "--json"], dvc=str(fake), timeout=1)
    assert time.monotonic() - start < 10


def test_parse_exp_show_reads_states_params_and_only_successful_metrics() -> None:
    states = {("replace", 1, 0): "success", ("replace", 3, 1): "failed", ("accumulate", 1, 2): "queued"}
    success, failed, queued = parse_exp_show(exp_show_json(states))
    assert success.metrics["gen1"]["gap"] == 0.01 and success.params["base"]["seed"] == 0
    assert success.baseline_rev == _rev(1) and success.baseline_name == "main" and success.rev == _rev(100)
    assert failed.metrics is None and failed.error == "Experiment run failed" and failed.log.endswith(".out")
    assert queued.metrics is None
    with pytest.raises(ValueError, match="expected a list"):
        parse_exp_show({"rev": "workspace"})


def test_report_section_of_a_named_study(tmp_path: Path) -> None:
    """The report's section of a collected study: plain primary endpoints, Holm-labelled intervals, problems."""
    from biasloop.report.html import render_report
    from biasloop.report.study_html import named_study_section
    from biasloop.study.outputs import write_study_outputs

    states = dict(FULL)
    states[("replace", 3, 2)] = "failed"
    study = collect_study(parse_exp_show(exp_show_json(states)), CONFIG)
    write_study_outputs(study, tmp_path / "metrics", tmp_path / "plots")
    study = json.loads((tmp_path / "metrics" / "t.json").read_text())
    section = named_study_section(study)
    assert "Study 't': variant {replace, accumulate} &times; sampling.guidance_scale {1, 3}" in section
    assert "failed: study-t-replace-guidance_scale3-s2" in section and "11 of 12 experiments aggregated" in section
    assert "<td>generator_level: generator at generation 0" in section and "equivalent within ±0.05" in section
    assert "Holm-adjusted over the study's" in section and section.count("data:image/png;base64,") == 1
    text = render_report(tmp_path / "report.html", [], None, None, {}, {}, study_sections=[section])
    assert section in text


def test_a_path_without_generation_is_read_for_generation_0_only_and_names_select_experiments() -> None:
    metrics = {"gap": "gen{gen}.gap", "generator": "gen{gen}.not_yet | headline.generator"}
    config = load_study_config(params_with({"t": GRID}, metrics=metrics), "t")
    study = collect_study(parse_exp_show(exp_show_json(FULL, config=config)), config)
    assert study["metric_paths"]["generator"] == "headline.generator"
    assert any("generator: read from headline.generator (gen{gen}.not_yet absent)" in n for n in study["notes"])
    assert study["endpoints"]["generator_level"]["values"] == pytest.approx([0.001, -0.002, 0.004])
    # headline is generation 0's: generation 1 has no value, listed, never the headline copied
    assert {m["generation"] for m in study["missing_values"] if m["metric"] == "generator"} == {1}

    names = ["study-t-replace-guidance_scale1-s0", "study-t-replace-guidance_scale1-s1"]
    subset = collect_study(parse_exp_show(exp_show_json(FULL)), CONFIG, names=names)
    assert [c["name"] for c in subset["cells"]] == names and subset["n_cells_used"] == 2
    assert subset["inconsistent"] == [] and subset["endpoints"]["generator_level"]["n"] == 2


def test_secondary_kinds_and_margins_follow_the_study() -> None:
    only_levels = load_study_config(params_with({"t": {**GRID, "secondary": ["levels"], "margins": {"gap": 0.5}}}), "t")
    study = collect_study(parse_exp_show(exp_show_json(FULL, config=only_levels)), only_levels)
    # 4 cells x 2 metrics x 2 generations, less the primary level (generator, generation 0, replace, guidance 1)
    assert {r["kind"] for r in study["intervals"]} == {"level"} and len(study["intervals"]) == 4 * 2 * 2 - 1
    gap = [r for r in study["intervals"] if r["metric"] == "gap"]
    assert all(r["margin"] == 0.5 and r["tost_p"] is not None for r in gap)
    assert all(r["margin"] is None for r in study["intervals"] if r["metric"] == "generator")


def test_study_run_command_names_an_unknown_path_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps(params_with({"g": {"axes": {"generate.guidance_scale": [1, 3]}, "seeds": [0]}})))
    assert main(["study", "run", "--dry-run", "--params", str(params), "--name", "g"]) == 2
    err = capsys.readouterr().err
    assert "studies.g.axes: unknown param path 'generate.guidance_scale'" in err
    assert main(["study", "run", "--dry-run", "--params", str(params), "--name", "nope"]) == 2
    assert "studies.nope: no such study (defined: g)" in capsys.readouterr().err


def test_waiting_reads_the_cells_baseline_not_whatever_head_is_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit made while a study runs moves HEAD; the wait keeps asking `dvc exp show` for the cells' baseline."""
    import biasloop.study.grid as grid

    spec = {**GRID, "variants": {"replace": {"loop.mode": "replace"}}, "seeds": [0], "endpoints": {}, "generations": 2}
    config = load_study_config(params_with({"t": spec}, poll_seconds=0.01))
    states = {("replace", 1, 0): "success", ("replace", 3, 0): "success"}
    asked: list[str | None] = []

    def fake_exp_show(rev=None, all_commits=False, dvc="dvc", cwd=None):
        asked.append(rev)
        return exp_show_json(states, config=config)

    monkeypatch.setattr(grid, "exp_show", fake_exp_show)
    names = [c.name for c in study_cells(config)]
    assert grid.wait_for_cells(config, names, echo=lambda line: None, sleep=lambda s: None, rev="abc1234") == []
    assert asked == ["abc1234"]
