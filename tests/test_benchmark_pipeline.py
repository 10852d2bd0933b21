"""benchmarks/pipeline.py's bookkeeping on fabricated timing records (nothing is run or timed)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from biasloop.core import timing
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_pipeline", REPO_ROOT / "benchmarks" / "pipeline.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_pipeline"] = module
    spec.loader.exec_module(module)
    return module


def _records(pid: int, stage: str, generation, start: float, startup: float, total: float) -> list[dict]:
    base = {"stage": stage, "generation": generation, "pid": pid, "process_start": start}
    return [
        {**base, "event": "startup", "time": start + startup, "seconds_since_start": startup},
        {**base, "event": "end", "status": "ok", "time": start + total, "seconds_since_start": total},
    ]


def test_aggregate_splits_startup_and_compute(bench, tmp_path: Path) -> None:
    records = (
        _records(11, "corpus", None, 100.0, 1.5, 4.0)
        + _records(12, "generate", 0, 105.0, 3.0, 13.0)
        + _records(13, "pretrain", 0, 120.0, 2.0, 52.0)
    )
    path = tmp_path / "t.jsonl"
    # end records first and a torn last line: order must not matter, the torn line is skipped
    path.write_text("\n".join(json.dumps(r) for r in sorted(records, key=lambda r: r["event"])) + '\n{"event": "sta')
    phase = bench.aggregate(bench.read_timings(path), wall_seconds=75.0, foreach={"generate"})
    assert set(phase["stages"]) == {"corpus", "generate@0", "pretrain"}  # pretrain is not a foreach stage
    assert phase["stages"]["generate@0"] == {
        "startup": 3.0,
        "compute": 10.0,
        "process": 13.0,
        "status": "ok",
        "cpu_threads": None,
    }
    assert phase["sum_process"] == 4.0 + 13.0 + 52.0
    assert phase["sum_startup"] == 6.5 and phase["sum_compute"] == 62.5
    assert phase["dvc_overhead"] == 75.0 - 69.0
    assert phase["incomplete"] == []


def test_a_stage_without_end_is_incomplete(bench) -> None:
    records = _records(1, "corpus", None, 0.0, 1.0, 2.0)[:1]
    phase = bench.aggregate(records, wall_seconds=3.0, foreach=set())
    assert phase["incomplete"] == ["corpus"] and phase["stages"] == {}


def test_ratios_and_targets(bench) -> None:
    def phase(wall, stages):
        return {
            "wall": wall,
            "stages": {k: {"startup": s, "compute": p - s, "process": p} for k, (s, p) in stages.items()},
        }

    phases = {
        "cold_idle": phase(250.0, {"corpus": (1.0, 5.0), "pretrain": (4.0, 100.0), "label@0": (2.5, 6.0)}),
        "cold_contended": phase(450.0, {"corpus": (1.0, 6.0), "pretrain": (4.0, 180.0), "label@0": (3.0, 9.0)}),
        "noop": phase(1.5, {}),
        "variant": phase(90.0, {}),
    }
    out = bench.ratios(phases)
    assert out["contended_over_idle"] == 1.8 and out["variant_over_cold"] == 0.36 and out["noop_seconds"] == 1.5
    assert out["stage_contended_over_idle"] == {"corpus": 1.2, "pretrain": 1.8, "label@0": 1.5}
    assert out["startup_max_light"] == 2.5  # pretrain trains: not held to the 2 s start-up target
    assert out["met"] == {
        "cold_idle_seconds": True,
        "contended_over_idle": False,
        "noop_seconds": True,
        "variant_over_cold": True,
        "startup_seconds_light": False,
    }
    partial = bench.ratios({"cold_idle": phases["cold_idle"]})
    assert partial["contended_over_idle"] is None and partial["met"]["contended_over_idle"] is None


def test_foreach_stages_from_dvc_yaml(bench) -> None:
    found = bench.foreach_stages(REPO_ROOT / "dvc.yaml")
    assert {"generate", "label", "mix", "retrain", "evaluate"} <= found
    assert not found & {"corpus", "pretrain", "summarize"}


def test_timing_records_written_by_a_stage_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stage side: a start-up and an end record, measured from the process's start (before this test)."""
    path = tmp_path / "timings.jsonl"
    monkeypatch.setenv(timing.TIMINGS_ENV, str(path))
    timing.stage_started("label", 2)
    timing.stage_finished("ok")
    startup, end = (json.loads(line) for line in path.read_text().splitlines())
    assert (startup["event"], startup["stage"], startup["generation"]) == ("startup", "label", 2)
    assert (end["event"], end["stage"], end["status"], end["pid"]) == ("end", "label", "ok", os.getpid())
    assert 0 < startup["seconds_since_start"] <= end["seconds_since_start"]
    assert startup["process_start"] <= startup["time"]
