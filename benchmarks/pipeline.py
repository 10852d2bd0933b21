"""How long the default study takes: cold, beside a busy process, no-op, and a ratio variant.

In a temporary copy of the repository (git-tracked files plus ``data/``, committed to a fresh git
repository, no embedding cache: a fresh clone), this runs, in order:

1. ``cold_idle``: ``dvc repro -f`` (every stage from scratch);
2. ``noop``: ``dvc repro`` with nothing changed;
3. ``cold_contended``: ``dvc repro -f`` again (embedding cache emptied) with one CPU-bound process
   (``python -c 'while True: pass'``) running beside it, killed by its PID afterwards;
4. ``variant``: ``dvc exp run -S synthetic_ratio=0.8`` on the committed baseline (a real DVC
   experiment, run in the copy's workspace).

Every stage appends a start-up and an end record to ``$BIASLOOP_TIMINGS`` (:mod:`biasloop.core.timing`):
start-up is process start to first useful work (interpreter, imports, params, tracking set-up), compute
is the rest. The MLflow logger runs detached; the benchmark waits for it between phases and reports
how long it went on after the pipeline ended. Results go to ``benchmarks/results/pipeline.json``:
per-phase wall time, per-stage start-up/compute/process seconds, the ratios the speed targets name
(contended/idle <= 1.6, variant/cold <= 0.4, no-op <= 2 s, start-up <= 2 s for stages that do not train
or sample), the quality the run reached (instrument accuracy, generator occupation accuracy) and the
machine.

Usage (from the repository root, with the project's environment; ``make bench`` runs the default)::

    python benchmarks/pipeline.py                         # all four phases (about 15 to 25 minutes)
    python benchmarks/pipeline.py --skip-contended --skip-variant --tiny   # a quick check of the tool

``--tiny`` shrinks the study (3 occupations, a few training steps) to test the benchmark itself; its
numbers say nothing about the default study. Run it on an otherwise idle machine: the cold and
contended phases are only comparable when nothing else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results" / "pipeline.json"
BUSY_CODE = "while True: pass"
# Stages that neither train nor sample a model: their start-up target is 2 s.
LIGHT_STAGES = ("corpus", "retrieve", "neighbours", "label_train", "label", "paradox", "evaluate", "summarize")
TARGETS = {
    "cold_idle_seconds": 300.0,
    "contended_over_idle": 1.6,
    "noop_seconds": 2.0,
    "variant_over_cold": 0.4,
    "startup_seconds_light": 2.0,
}
TINY = {  # --tiny: enough to exercise every stage in a couple of minutes
    "occupations": ["engineer", "teacher", "nurse"],
    "world": {"samples_per_occupation": 60, "distractors": 10, "near_misses": 6},
    "neighbours": {"k": 20},
    "evaluate": {"n_boot": 50},
    "loop": {"generator_steps": 4},
    "generator": {"train_steps": 6, "batch_size": 16},
    "sampling": {"steps": 2},
    "generate": {"n_per_prompt": 4, "max_captions_per_occupation": 4},
    "instrument": {"epochs": 2},
    "downstream": {"epochs": 1},
}


# ------------------------------------------------------------------------------------ aggregation
def read_timings(path: str | Path) -> list[dict[str, Any]]:
    """The JSON lines of a ``$BIASLOOP_TIMINGS`` file (missing file: none; a torn last line is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def stage_label(record: dict[str, Any], foreach: set[str]) -> str:
    """The DVC stage name of a record: ``generate@0`` for a foreach stage, ``pretrain`` otherwise."""
    stage = str(record.get("stage"))
    generation = record.get("generation")
    return f"{stage}@{generation}" if stage in foreach and generation is not None else stage


def aggregate(records: list[dict[str, Any]], wall_seconds: float, foreach: set[str]) -> dict[str, Any]:
    """Per-stage seconds from the timing records of one phase.

    Args:
        records: ``startup`` and ``end`` records (:mod:`biasloop.core.timing`), any order.
        wall_seconds: the phase's wall time (the whole ``dvc`` command).
        foreach: names of foreach stages (their records are labelled ``stage@generation``).

    Returns:
        ``stages``: ``{label: {startup, compute, process, status, cpu_threads}}`` in seconds, ``startup`` from process
        start to first useful work, ``compute`` from there to the end record, ``process`` their sum;
        ``sum_process``, ``sum_startup``, ``sum_compute``; ``dvc_overhead`` = wall - sum of processes
        (DVC's own start-up, hashing, checkouts between stages); ``n_stages`` and ``incomplete``
        (stages with a start-up but no end record: they failed hard).
    """
    by_pid: dict[int, dict[str, dict[str, Any]]] = {}
    for record in records:
        by_pid.setdefault(int(record.get("pid", -1)), {})[str(record.get("event"))] = record
    stages: dict[str, dict[str, Any]] = {}
    incomplete = []
    for events in sorted(by_pid.values(), key=lambda e: e.get("startup", e.get("end", {})).get("time", 0.0)):
        start = events.get("startup")
        if start is None:
            continue
        label = stage_label(start, foreach)
        end = events.get("end")
        if end is None:
            incomplete.append(label)
            continue
        startup = float(start["seconds_since_start"])
        process = float(end["seconds_since_start"])
        stages[label] = {
            "startup": round(startup, 3),
            "compute": round(process - startup, 3),
            "process": round(process, 3),
            "status": end.get("status"),
            "cpu_threads": start.get("cpu_threads"),
        }
    sum_process = sum(s["process"] for s in stages.values())
    return {
        "wall": round(wall_seconds, 3),
        "n_stages": len(stages),
        "sum_process": round(sum_process, 3),
        "sum_startup": round(sum(s["startup"] for s in stages.values()), 3),
        "sum_compute": round(sum(s["compute"] for s in stages.values()), 3),
        "dvc_overhead": round(wall_seconds - sum_process, 3),
        "incomplete": incomplete,
        "stages": stages,
    }


def ratios(phases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The ratios the speed targets name, from whichever phases ran (absent phases give None).

    ``contended_over_idle`` and ``variant_over_cold`` divide wall times by ``cold_idle``'s; per stage,
    ``stage_contended_over_idle`` divides process seconds; ``startup_max_light`` is the largest start-up
    of a stage that neither trains nor samples (``LIGHT_STAGES``) in the idle cold run.
    """
    cold = phases.get("cold_idle")
    contended = phases.get("cold_contended")
    variant = phases.get("variant")
    noop = phases.get("noop")
    out: dict[str, Any] = {
        "cold_idle_seconds": cold["wall"] if cold else None,
        "contended_over_idle": round(contended["wall"] / cold["wall"], 3) if cold and contended else None,
        "variant_over_cold": round(variant["wall"] / cold["wall"], 3) if cold and variant else None,
        "noop_seconds": noop["wall"] if noop else None,
    }
    if cold and contended:
        out["stage_contended_over_idle"] = {
            label: round(contended["stages"][label]["process"] / timing["process"], 3)
            for label, timing in cold["stages"].items()
            if label in contended["stages"] and timing["process"] > 0
        }
    if cold:
        light = {k: v["startup"] for k, v in cold["stages"].items() if k.split("@")[0] in LIGHT_STAGES}
        out["startup_max_light"] = max(light.values()) if light else None
        out["startup_median_all"] = (
            statistics.median(v["startup"] for v in cold["stages"].values()) if cold["stages"] else None
        )
    out["targets"] = TARGETS
    checks = {
        "cold_idle_seconds": out["cold_idle_seconds"],
        "contended_over_idle": out["contended_over_idle"],
        "noop_seconds": out["noop_seconds"],
        "variant_over_cold": out["variant_over_cold"],
        "startup_seconds_light": out.get("startup_max_light"),
    }
    out["met"] = {k: (None if v is None else bool(v <= TARGETS[k])) for k, v in checks.items()}
    return out


def foreach_stages(dvc_yaml: str | Path) -> set[str]:
    """Names of the ``foreach`` stages in a dvc.yaml."""
    stages = yaml.safe_load(Path(dvc_yaml).read_text()).get("stages", {})
    return {name for name, body in stages.items() if isinstance(body, dict) and "foreach" in body}


# ------------------------------------------------------------------------------------ the machine
def machine() -> dict[str, Any]:
    """CPU model, cores (and the ones this process may use), memory, load, OS, versions."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    if hasattr(os, "sched_getaffinity"):
        info["cpus_allowed"] = len(os.sched_getaffinity(0))
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["cpu_model"] = next(
            (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
            platform.processor(),
        )
        info["cpu_flags_amx"] = "amx_tile" in cpuinfo
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()
        info["memory_gib"] = round(int(mem[1]) / 2**20, 1)
    except (OSError, IndexError, ValueError):
        info["cpu_model"] = platform.processor()
    try:
        info["load_average"] = list(os.getloadavg())
    except OSError:
        pass
    for package in ("torch", "dvc", "mlflow", "diffusers"):
        try:
            from importlib.metadata import version

            info[package] = version(package)
        except Exception:
            info[package] = None
    try:
        info["git_revision"] = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
            ).stdout.strip()
            or None
        )
    except OSError:
        info["git_revision"] = None
    return info


# ------------------------------------------------------------------------------------ running
def _merge(target: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def _parse_set(pairs: list[str]) -> dict:
    """``section.key=value`` pairs (values parsed as YAML) as a nested dict."""
    out: dict = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        node = out
        *parents, leaf = name.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = yaml.safe_load(value)
    return out


def copy_repo(destination: Path, overrides: dict) -> Path:
    """Git-tracked files and ``data/`` of this checkout in a fresh git repository (one commit)."""
    repo = destination / "repo"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        source = REPO_ROOT / name
        if source.is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, repo / name)
    if not (REPO_ROOT / "data").is_dir():
        raise SystemExit(f"{REPO_ROOT / 'data'} is missing: run `make data` first")
    shutil.copytree(REPO_ROOT / "data", repo / "data", dirs_exist_ok=True)
    if overrides:
        params = yaml.safe_load((repo / "params.yaml").read_text())
        _merge(params, overrides)
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "benchmark baseline")
    return repo


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.email=bench@localhost", "-c", "user.name=bench", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def _env(repo: Path, timings: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "BIASLOOP_TIMINGS": str(timings),
    }
    for name in (
        "DVC_ROOT",
        "BIASLOOP_EMBEDDING_CACHE",
        "BIASLOOP_TRACKING_SPOOL",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OMP_WAIT_POLICY",
    ):
        env.pop(name, None)
    return env


def wait_for_tracking(repo: Path, timeout: float = 600.0) -> float:
    """Seconds until the detached MLflow logger has logged every run of the copy (0 when none ran)."""
    sys.path.insert(0, str(REPO_ROOT))
    from biasloop.core.tracking import wait_for_logger

    start = time.perf_counter()
    if not wait_for_logger(repo / ".mlflow-spool", timeout=timeout):
        print(f"warning: the MLflow logger of {repo} did not finish within {timeout:.0f} s", file=sys.stderr)
    return round(time.perf_counter() - start, 3)


def run_phase(
    name: str,
    command: list[str],
    repo: Path,
    work: Path,
    foreach: set[str],
    busy: bool = False,
    fresh_caches: bool = False,
) -> dict[str, Any]:
    """Run one ``dvc`` command in the copy, optionally beside a busy process; aggregate its timings."""
    timings = work / f"timings-{name}.jsonl"
    timings.unlink(missing_ok=True)
    if fresh_caches:
        shutil.rmtree(repo / ".cache", ignore_errors=True)  # embeddings: as in a fresh clone
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    busy_process = subprocess.Popen([sys.executable, "-c", BUSY_CODE]) if busy else None
    log_path = work / f"{name}.log"
    print(f"[{name}] {' '.join(command)} (log: {log_path})", flush=True)
    try:
        start = time.perf_counter()
        with open(log_path, "w") as log:
            # Its own process group, so an interrupted benchmark takes the running stage down with it.
            dvc = subprocess.Popen(
                command, cwd=repo, env=_env(repo, timings), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                returncode = dvc.wait()
            finally:
                if dvc.poll() is None:
                    os.killpg(dvc.pid, signal.SIGTERM)
                    dvc.wait()
        wall = time.perf_counter() - start
    finally:
        if busy_process is not None:
            os.kill(busy_process.pid, signal.SIGKILL)
            busy_process.wait()
    if returncode != 0:
        tail = log_path.read_text()[-4000:]
        raise SystemExit(f"[{name}] {' '.join(command)} failed ({returncode}):\n{tail}")
    tail_seconds = wait_for_tracking(repo)
    phase = aggregate(read_timings(timings), wall, foreach)
    phase.update(
        command=" ".join(command), busy_process=busy, load_average_before=load_before, tracking_logger_tail=tail_seconds
    )
    print(
        f"[{name}] {wall:.1f} s wall, {phase['n_stages']} stages, start-up {phase['sum_startup']:.1f} s, "
        f"compute {phase['sum_compute']:.1f} s, DVC {phase['dvc_overhead']:.1f} s",
        flush=True,
    )
    return phase


def quality(repo: Path) -> dict[str, Any]:
    """Instrument accuracy and generator occupation accuracy per generation from the copy's metrics."""
    out: dict[str, Any] = {}
    instrument = repo / "metrics" / "instrument.json"
    if instrument.exists():
        data = json.loads(instrument.read_text())
        out["instrument_accuracy"] = data.get("accuracy")
        out["instrument_occupation_accuracy"] = data.get("occupation_accuracy")
    for path in sorted((repo / "metrics" / "generations").glob("gen*.json")):
        data = json.loads(path.read_text())
        out[f"generator_occupation_accuracy_{path.stem}"] = (data.get("generator") or {}).get("occupation_accuracy")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(RESULTS), help="results JSON (default: %(default)s)")
    parser.add_argument("--skip-contended", action="store_true", help="skip the run beside a busy process")
    parser.add_argument("--skip-noop", action="store_true", help="skip the no-op dvc repro")
    parser.add_argument("--skip-variant", action="store_true", help="skip dvc exp run -S synthetic_ratio=0.8")
    parser.add_argument("--variant", default="synthetic_ratio=0.8", help="the -S of the variant (default: %(default)s)")
    parser.add_argument("--tiny", action="store_true", help="a tiny study, to test this tool (numbers meaningless)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a param in the copy (YAML value); repeatable",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy (its path is printed)")
    args = parser.parse_args(argv)

    overrides: dict = json.loads(json.dumps(TINY)) if args.tiny else {}
    _merge(overrides, _parse_set(args.set))
    work = Path(tempfile.mkdtemp(prefix="biasloop-bench-"))
    results: dict[str, Any] = {"machine": machine(), "overrides": overrides, "tiny": args.tiny, "phases": {}}
    try:
        repo = copy_repo(work, overrides)
        foreach = foreach_stages(repo / "dvc.yaml")
        phases = results["phases"]
        phases["cold_idle"] = run_phase("cold_idle", ["dvc", "repro", "-f"], repo, work, foreach, fresh_caches=True)
        results["quality"] = quality(repo)
        _git(repo, "add", "-A")
        _git(repo, "commit", "-qm", "baseline results")
        if not args.skip_noop:
            phases["noop"] = run_phase("noop", ["dvc", "repro"], repo, work, foreach)
        if not args.skip_contended:
            phases["cold_contended"] = run_phase(
                "cold_contended", ["dvc", "repro", "-f"], repo, work, foreach, busy=True, fresh_caches=True
            )
            results["quality_contended"] = quality(repo)
            _git(repo, "add", "-A")
            _git(repo, "commit", "-qm", "baseline results (contended run)", "--allow-empty")
        if not args.skip_variant:
            phases["variant"] = run_phase("variant", ["dvc", "exp", "run", "-S", args.variant], repo, work, foreach)
        results["ratios"] = ratios(phases)
        results["machine"]["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["ratios"], indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
