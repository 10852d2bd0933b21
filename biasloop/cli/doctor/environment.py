"""``biasloop doctor``'s checks of the environment: checkout and interpreter, package versions, CPU
threads and device, where MLflow writes, the offline settings."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
from pathlib import Path

from biasloop.cli.doctor.findings import Report, _git, _same_file

PACKAGES = (
    "dvc",
    "mlflow",
    "torch",
    "torchvision",
    "diffusers",
    "open_clip_torch",
    "sentence-transformers",
    "polars",
    "numpy",
    "fairlearn",
)


def check_environment(report: Report, root: Path) -> None:
    """Which checkout's code runs, from which environment; PATH's python/dvc/mlflow."""
    import biasloop
    from biasloop.core.environment import shared_environment

    code = Path(biasloop.__file__).resolve().parent.parent
    toplevel = _git(root, "rev-parse", "--show-toplevel")
    revision = _git(root, "rev-parse", "--short", "HEAD")
    dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    report.add(
        "info", "checkout", f"{toplevel or root} at {revision or '?'}{' (uncommitted changes)' if dirty else ''}"
    )
    if toplevel and not _same_file(code, toplevel):
        report.add(
            "problem",
            "biasloop code",
            f"{code} is not this checkout: run `make venv` here and `source .venv/bin/activate`",
        )
    else:
        report.add("ok", "biasloop code", str(code))
    prefix = Path(sys.prefix)
    shared = shared_environment(prefix)
    report.add("info", "python", f"{sys.executable} (Python {sys.version.split()[0]})")
    if shared != prefix:
        report.add("ok", "environment", f"{prefix} over the shared {shared}")
    else:
        report.add("info", "environment", f"{prefix} (no per-checkout .venv: `make venv` makes one)")
    bin_dir = Path(sys.executable).parent
    found = {command: shutil.which(command) for command in ("python", "dvc", "mlflow")}
    ours = {command: bool(path) and _same_file(Path(path).parent, bin_dir) for command, path in found.items()}
    for command in ("python", "dvc", "mlflow"):
        if ours[command]:
            report.add("ok", f"PATH {command}", str(found[command]))
        elif command == "dvc" and found["dvc"]:
            report.add(
                "problem",
                "PATH dvc",
                f"{found['dvc']} is another environment's: its stages may run another python; "
                f"`source {bin_dir / 'activate'}`",
            )
        else:
            report.add(
                "info",
                f"PATH {command}",
                f"{found[command] or 'not on PATH'}; `source {bin_dir / 'activate'}` "
                f"puts dvc, biasloop and mlflow on PATH ({bin_dir / 'dvc'} works without it)",
            )


def check_versions(report: Report) -> None:
    versions = []
    for name in PACKAGES:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name} missing")
    report.add("info", "versions", ", ".join(versions))


def check_threads(report: Report, params: dict) -> None:
    from biasloop.core.config import BaseConfig
    from biasloop.core.runtime import resolve_cpu_threads

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    setting = (params.get("base") or {}).get("cpu_threads", BaseConfig.cpu_threads)
    try:
        threads = resolve_cpu_threads(setting)
        how = (
            "fixed: the same numbers at any load"
            if setting != "auto"
            else "auto: 1 inside queued experiments; numbers depend on the load"
        )
        report.add(
            "info",
            "threads",
            f"{cpus} CPUs usable of {os.cpu_count()}; base.cpu_threads={setting} -> {threads} per stage "
            f"({how}); OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} (ignored: the params decide)",
        )
    except Exception as exc:
        report.add("problem", "threads", f"base.cpu_threads: {exc}")
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
        report.add("info", "device", f"base.device={(params.get('base') or {}).get('device', 'cpu')}; CUDA GPU: {gpu}")
    except Exception as exc:
        report.add("problem", "device", f"torch does not import: {exc}")


def check_mlflow(report: Report, root: Path, params: dict) -> None:
    from biasloop.core.tracking import default_uri

    tracking = params.get("tracking") or {}
    if tracking.get("enabled") is False:
        report.add("info", "MLflow", "tracking.enabled is false: no runs recorded")
        return
    previous = os.environ.get("DVC_ROOT")
    os.environ["DVC_ROOT"] = str(root)  # where a stage run from this root writes
    try:
        uri = tracking.get("uri") or default_uri()
    finally:
        if previous is None:
            os.environ.pop("DVC_ROOT", None)
        else:
            os.environ["DVC_ROOT"] = previous
    experiment_name = tracking.get("experiment", "biasloop")
    if not uri.startswith("sqlite:///"):
        report.add("info", "MLflow", f"{uri}, experiment {experiment_name}")
        return
    database = Path(uri.removeprefix("sqlite:///"))
    if not database.exists():
        report.add("info", "MLflow", f"{uri} (not created yet: the first stage run makes it)")
        return
    try:
        import sqlite3

        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as connection:
            counts = dict(
                connection.execute(
                    "SELECT r.status, COUNT(*) FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id "
                    "WHERE e.name = ? AND r.lifecycle_stage = 'active' GROUP BY r.status",
                    (experiment_name,),
                ).fetchall()
            )
            found = connection.execute(
                "SELECT experiment_id FROM experiments WHERE name = ?", (experiment_name,)
            ).fetchone()
    except Exception as exc:
        report.add("problem", "MLflow", f"{database} is not readable: {exc}")
        return
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no runs"
    report.add("ok", "MLflow", f"{uri}, experiment {experiment_name}: {summary}")
    if counts.get("RUNNING"):
        report.add(
            "info",
            "MLflow RUNNING",
            f"{counts['RUNNING']} run(s) RUNNING: stages running now, or killed ones "
            "(marked KILLED when the next stage starts)",
        )
    # workflowType=machine_learning: MLflow 3's UI otherwise opens its GenAI overview, not the runs table
    runs_table = f"http://127.0.0.1:5000/#/experiments/{found[0]}?workflowType=machine_learning" if found else None
    report.add(
        "info",
        "MLflow UI",
        f"MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --backend-store-uri {uri} --port 5000"
        + (f", then open {runs_table} (the runs table)" if runs_table else ""),
    )


def check_offline(report: Report, root: Path) -> None:
    settings = {name: os.environ.get(name, "unset") for name in ("HF_HUB_OFFLINE", "MLFLOW_DISABLE_TELEMETRY")}
    config = (root / ".dvc" / "config").read_text() if (root / ".dvc" / "config").exists() else ""
    analytics = "analytics = false" in config
    local = root / ".dvc" / "config.local"  # where `biasloop plots-template` records the template
    template = "html_template" in config + (local.read_text() if local.exists() else "")
    report.add(
        "ok" if analytics else "problem",
        "DVC analytics",
        "off" if analytics else "on: `dvc config core.analytics false`",
    )
    report.add(
        "info",
        "offline",
        ", ".join(f"{k}={v}" for k, v in settings.items())
        + f" (stages set them); dvc plots template: {'local vega' if template else 'CDN (needs network)'}",
    )
