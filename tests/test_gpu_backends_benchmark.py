"""benchmarks/gpu_backends.py --tiny runs end to end on CPU, without the packages the GPU machine lacks.

The GPU machine has no polars, mlflow, fairlearn or dvc; the script's import chain (the stable-diffusion
generator, the open-clip instrument) must not need them. Each is shadowed here by a package that raises
ImportError, put first on PYTHONPATH the way the GPU command puts its wheels first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MISSING_ON_GPU_MACHINE = ("polars", "mlflow", "fairlearn", "dvc")


@pytest.mark.slow
def test_gpu_backends_tiny_runs_without_the_packages_the_gpu_machine_lacks(tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    for name in MISSING_ON_GPU_MACHINE:
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} is not on the GPU machine')\n")
    out = tmp_path / "gpu_backends.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocked), str(REPO_ROOT)]), HF_HUB_OFFLINE="1")
    completed = subprocess.run(
        [sys.executable, "benchmarks/gpu_backends.py", "--tiny", "--out", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["tiny"] is True and result["device_info"]["torch"]
    sd = result["stable_diffusion"]
    assert sd["setup"]["scheduler"] == "DDIMScheduler" and sd["setup"]["image_size"] == 16
    assert set(sd["generate"]["per_batch"]) == {"1", "2"} and sd["generate"]["best_images_per_second"] > 0
    lora = sd["train_lora"]["per_batch"]
    assert set(lora) == {"1", "2"} and all(
        v["seconds_per_step"] > 0 and v["lora_parameters"] > 0 for v in lora.values()
    )
    clip = result["open_clip"]
    assert clip["model"]["name"] == "biasloop-tiny-clip" and clip["model"]["image_size"] == [16, 16]
    assert set(clip["encode_images"]["per_precision"]) == {"float32", "bfloat16"}
    assert result["summary"]["clip_encode_images_per_second"]["float32"] > 0
