"""What a stage process pays before it works: the cost of each heavy import, and each stage's ``--help``.

Every number is the median wall time of ``--repeats`` fresh interpreters (``python -c ...``), so it
includes what a stage really pays (disk cache warm after the first). Imports are measured after
``import torch`` where the library needs torch anyway, so the figure is that library's own cost:

- ``torch``, ``mlflow`` (+ ``MlflowClient`` on a new SQLite store: what a stage paid before tracking moved
  to the background logger), ``diffusers`` top-level ``UNet2DModel`` vs. the submodule
  ``diffusers.models.unets.unet_2d`` (and whether peft / transformers / torch._dynamo come with it),
  the DDIM scheduler module alone, the three modules tiny-diffusion uses imported plainly vs. through
  ``biasloop.models.generators.diffusers_parts.diffusers_class`` (bare eager packages, no torch._dynamo),
  ``sentence_transformers``, ``open_clip``, ``fairlearn.metrics``,
  ``matplotlib.pyplot``, ``polars``;
- each stage's ``python -m stages.<name> --help`` (module imports only: the lazy imports stay unpaid).

Usage::

    python benchmarks/startup.py [--repeats 3]     # benchmarks/results/startup.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results" / "startup.json"
STAGES = (
    "corpus",
    "retrieve",
    "neighbours",
    "instrument",
    "label_train",
    "pretrain",
    "generate",
    "label",
    "paradox",
    "mix",
    "retrain",
    "evaluate",
    "summarize",
)
CHECK = "import sys; print(sorted(m for m in ('peft', 'transformers', 'torch._dynamo', 'mlflow') if m in sys.modules))"
IMPORTS = {  # name: (set-up not timed, statement timed)
    "torch": ("", "import torch"),
    "polars": ("", "import polars"),
    "mlflow": ("import torch", "import mlflow"),
    "mlflow_client_new_sqlite": (
        "import torch",
        "from mlflow.tracking import MlflowClient; "
        "MlflowClient(tracking_uri='sqlite:///{tmp}/m.db').search_experiments()",
    ),
    "diffusers_toplevel_UNet2DModel": ("import torch", "from diffusers import UNet2DModel"),
    "diffusers_submodule_UNet2DModel": ("import torch", "from diffusers.models.unets.unet_2d import UNet2DModel"),
    "diffusers_DDIMScheduler_module": (
        "import torch",
        "from diffusers.schedulers.scheduling_ddim import DDIMScheduler",
    ),
    "diffusers_tiny_diffusion_parts_plain": (
        "import torch",
        "import diffusers.models.unets.unet_2d, "
        "diffusers.schedulers.scheduling_ddpm, diffusers.schedulers.scheduling_ddim",
    ),
    "diffusers_tiny_diffusion_parts_light": (
        "import torch; from biasloop.models.generators.diffusers_parts import diffusers_class",
        "[diffusers_class(n) for n in ('UNet2DModel', 'DDPMScheduler', 'DDIMScheduler')]",
    ),
    "sentence_transformers": ("import torch", "from sentence_transformers import SentenceTransformer"),
    "open_clip": ("import torch", "import open_clip"),
    "fairlearn_metrics": ("import torch", "from fairlearn.metrics import MetricFrame"),
    "matplotlib_pyplot": ("", "import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot"),
}


def time_import(setup: str, statement: str) -> tuple[float, list[str]]:
    code = f"{setup}\nimport time\n_t = time.perf_counter()\n{statement}\nprint(time.perf_counter() - _t)\n{CHECK}"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    lines = out.stdout.strip().splitlines()
    return float(lines[-2]), json.loads(lines[-1].replace("'", '"'))


def time_help(stage: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", f"stages.{stage}", "--help"], cwd=REPO_ROOT, capture_output=True, check=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per figure (median)")
    parser.add_argument("--out", default=str(RESULTS), help="results JSON (default: %(default)s)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT))
    from benchmarks.pipeline import machine

    imports = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (setup, statement) in IMPORTS.items():
            runs = [time_import(setup, statement.format(tmp=f"{tmp}/{name}{i}")) for i in range(args.repeats)]
            imports[name] = {"seconds": round(statistics.median(r[0] for r in runs), 3), "also_loaded": runs[-1][1]}
            print(f"{name:34s} {imports[name]['seconds']:6.2f} s  with {imports[name]['also_loaded']}", flush=True)
    helps = {}
    for stage in STAGES:
        helps[stage] = round(statistics.median(time_help(stage) for _ in range(args.repeats)), 3)
        print(f"stages.{stage} --help {helps[stage]:6.2f} s", flush=True)
    results = {"machine": machine(), "repeats": args.repeats, "imports_seconds": imports, "stage_help_seconds": helps}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
