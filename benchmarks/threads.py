"""Thread policy under contention: torch CPU threads x OpenMP wait policy, idle vs. beside a busy process.

A fixed workload, the two kinds of training the default study does most of:

- ``diffusion``: 30 training steps of the default tiny-diffusion generator (batch 128, 16 px, UNet
  16/32/32) on the glyph world's training split (after 3 warm-up steps);
- ``clip_epoch``: one epoch of the downstream CLIP (``biasloop-tiny-clip``, batch 128) on the same split.

Each configuration runs in a fresh process (OpenMP reads ``OMP_WAIT_POLICY`` when torch is imported):
threads in {1, 2} x wait policy in {default (libgomp spins before sleeping), PASSIVE (sleeps at once)}
x {idle, one ``python -c 'while True: pass'`` beside it}. Captions are embedded with the hashing test
encoder (``fake:384``, MiniLM's width), so no model load is timed. Every configuration is measured
``--repeats`` times in an interleaved order (so slow drifts of the machine hit all of them alike) and the
median is reported, with each configuration's ratio to the idle time of the same thread setting and to
the fastest idle setting.

Usage::

    python benchmarks/threads.py                      # benchmarks/results/threads.json
    python benchmarks/threads.py --repeats 3 --threads 1 2
    sudo python benchmarks/threads.py --nice -15   # on a shared machine: outrank the other work

Needs ``data/`` (``make data``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results" / "threads.json"
POLICIES = ("default", "PASSIVE")


def make_data(path: Path) -> None:
    """The glyph world's training split (images + captions) as an ``.npz`` for the children."""
    import numpy as np
    import polars as pl

    from biasloop.core.config import load_section, read_params
    from biasloop.data.world import WorldConfig, build_world

    params = read_params(str(REPO_ROOT / "params.yaml"))
    world = load_section(WorldConfig, "world", params)
    samples, images = build_world(world, list(params["occupations"]))
    train = samples.with_row_index("row").filter(pl.col("split") == "train")
    rows = train["row"].to_numpy()
    np.savez(path, images=images[rows], captions=np.array(train["caption"].to_list(), dtype=object))


def child(data: Path, threads: int) -> dict:
    """Run the workload in this process; seconds per part."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from biasloop.models.downstream_clip import DownstreamConfig, train_downstream_clip
    from biasloop.models.generators import GeneratorConfig, build_generator

    loaded = np.load(data, allow_pickle=True)
    images, captions = loaded["images"], [str(c) for c in loaded["captions"]]
    generator = build_generator(GeneratorConfig(text_encoder="fake:384", precision="fp32"), "cpu", seed=0)
    generator.train(images, captions, steps=3, seed=0, progress=False)
    start = time.perf_counter()
    generator.train(images, captions, steps=30, seed=1, progress=False)
    diffusion = time.perf_counter() - start
    start = time.perf_counter()
    train_downstream_clip(images, captions, DownstreamConfig(epochs=1), seed=0, progress=False)
    clip_epoch = time.perf_counter() - start
    return {"diffusion": diffusion, "clip_epoch": clip_epoch, "torch_threads": torch.get_num_threads()}


def run_config(data: Path, threads: int, policy: str, busy: bool, nice: int = 0) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.pop("OMP_WAIT_POLICY", None)
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    renice = (lambda: os.nice(nice)) if nice else None  # noqa: E731
    busy_process = subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=renice) if busy else None
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(data), "--threads", str(threads)],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            preexec_fn=renice,
        )
    finally:
        if busy_process is not None:
            os.kill(busy_process.pid, signal.SIGKILL)
            busy_process.wait()
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(samples: dict[str, list[dict]]) -> dict:
    """Medians per configuration and the ratios: busy/idle (same threads and policy), and / best idle."""
    table = {}
    for key, runs in samples.items():
        table[key] = {part: round(statistics.median(r[part] for r in runs), 3) for part in ("diffusion", "clip_epoch")}
        table[key]["total"] = round(table[key]["diffusion"] + table[key]["clip_epoch"], 3)
        table[key]["n"] = len(runs)
    best_idle = min((v["total"] for k, v in table.items() if k.endswith("idle")), default=float("nan"))
    for key, value in table.items():
        idle_key = key.rsplit("/", 1)[0] + "/idle"
        value["over_own_idle"] = round(value["total"] / table[idle_key]["total"], 3) if idle_key in table else None
        value["over_best_idle"] = round(value["total"] / best_idle, 3)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(RESULTS), help="results JSON (default: %(default)s)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default: 1 2)")
    parser.add_argument(
        "--policies", nargs="+", default=list(POLICIES), help="OMP_WAIT_POLICY values ('default': unset)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="measurements per configuration (median reported)")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness of the workload and the busy process (negative, as root: on a shared machine, "
        "lets the two outrank other work so that 'idle' means idle; default: %(default)s)",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(Path(args.child), args.threads[0])))
        return 0

    sys.path.insert(0, str(REPO_ROOT))
    from benchmarks.pipeline import machine  # noqa: E402 (the same machine description)

    with tempfile.TemporaryDirectory(prefix="biasloop-threads-") as tmp:
        data = Path(tmp) / "world.npz"
        make_data(data)
        configs = list(itertools.product(args.threads, args.policies, (False, True)))
        samples: dict[str, list[dict]] = {}
        for repeat in range(args.repeats):
            for threads, policy, busy in configs:
                key = f"threads={threads}/{policy}/{'busy' if busy else 'idle'}"
                result = run_config(data, threads, policy, busy, args.nice)
                samples.setdefault(key, []).append(result)
                print(
                    f"[{repeat + 1}/{args.repeats}] {key}: diffusion {result['diffusion']:.1f} s, "
                    f"CLIP epoch {result['clip_epoch']:.1f} s",
                    flush=True,
                )
                table = summarise(samples)  # written after every configuration: a cut-short run keeps its figures
                results = {
                    "machine": machine(),
                    "workload": "30 tiny-diffusion steps (batch 128) + 1 downstream CLIP epoch",
                    "repeats": args.repeats,
                    "nice": args.nice,
                    "configurations": table,
                    "samples": samples,
                }
                out = Path(args.out)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(table, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
