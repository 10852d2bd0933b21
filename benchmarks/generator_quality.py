"""Generator quality against training and sampling time: the curve the default steps are picked from.

Builds the default glyph world, trains the default instrument (the locked-text CLIP, as the
``instrument`` stage does) once, then for each ``--train-steps`` value trains the default tiny-diffusion
generator from scratch (as ``pretrain`` does; the learning-rate schedule spans the given steps) and
samples the default neutral prompts (``generate.neutral_prompts``, ``generate.n_per_prompt`` images per
prompt and occupation) at each ``--sampling-steps`` value and guidance scale. Quality is the pipeline's own
figure: the instrument's zero-shot occupation accuracy on the images made for neutral prompts (what
``metrics/generations/gen0.json`` reports as ``generator.occupation_accuracy``; chance 0.10).

Usage (from the repository root; needs ``data/``)::

    python benchmarks/generator_quality.py --train-steps 300 500 700 --sampling-steps 4 6 8 10
    python benchmarks/generator_quality.py --train-steps 500 --sampling-steps 6 10 --guidance 1.0 1.5
    python benchmarks/generator_quality.py --train-steps 200 300 --snr-gammas 0 5 --seeds 0 1 2 --sampling-steps 6

Writes ``benchmarks/results/generator_quality.json`` (one row per setting: train steps and seconds,
sampling steps, guidance, sampling seconds per 1,000 images, occupation accuracy) and, unless
``--no-plot``, ``benchmarks/results/generator_quality.png``. Each row is written as soon as it is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import polars as pl

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results" / "generator_quality.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--train-steps", type=int, nargs="+", default=[300, 500, 700], help="generator steps from scratch"
    )
    parser.add_argument("--sampling-steps", type=int, nargs="+", default=[4, 6, 8, 10], help="DDIM steps at sampling")
    parser.add_argument("--guidance", type=float, nargs="+", default=None, help="guidance scales (default: params')")
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=None, help="generator training batch sizes (default: params')"
    )
    parser.add_argument(
        "--snr-gammas",
        type=float,
        nargs="+",
        default=None,
        help="min-SNR loss weightings generator.snr_gamma (0: none; default: params')",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0],
        help="generator seeds (weights, batches, noise); each setting is trained once per seed; "
        "the world, the instrument and the prompts stay those of seed 0",
    )
    parser.add_argument("--out", default=str(RESULTS), help="results JSON (default: %(default)s)")
    parser.add_argument("--no-plot", action="store_true", help="write no PNG")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.chdir(REPO_ROOT)  # image refs and data/ paths are relative to the repository root

    import dataclasses
    import sys

    sys.path.insert(0, str(REPO_ROOT))
    from benchmarks.pipeline import machine
    from biasloop.core.config import load_section, read_params
    from biasloop.data.corpus import write_corpus
    from biasloop.data.text import fill_template
    from biasloop.data.world import WorldConfig, build_world
    from biasloop.loop.prompts import GenerateConfig
    from biasloop.models.generators import GeneratorConfig, SamplingConfig, build_generator
    from biasloop.models.instrument import InstrumentConfig, train_or_load_instrument

    params = read_params("params.yaml")
    occupations = list(params["occupations"])
    world = load_section(WorldConfig, "world", params)
    generator_config = load_section(GeneratorConfig, "generator", params)
    generate = load_section(GenerateConfig, "generate", params)
    instrument_config = load_section(InstrumentConfig, "instrument", params)
    sampling_config = load_section(SamplingConfig, "sampling", params)
    guidance = args.guidance or [sampling_config.guidance_scale]

    work = REPO_ROOT / "benchmarks" / ".data" / "generator_quality"
    samples, images = build_world(world, occupations)
    table = write_corpus(samples, images, work / "corpus", 4096)
    train = table.filter(pl.col("split") == "train")
    from biasloop.core.io import load_images

    train_images, train_captions = load_images(train["image_ref"].to_list()), train["caption"].to_list()
    start = time.perf_counter()
    instrument, _ = train_or_load_instrument(
        instrument_config, train_images, train_captions, occupations, seed=0, progress=False
    )
    instrument_seconds = time.perf_counter() - start

    prompts, asked = [], []
    for occupation in occupations:
        for template in generate.neutral_prompts:
            prompts += [fill_template(template, occupation=occupation)] * generate.n_per_prompt
            asked += [occupation] * generate.n_per_prompt
    image_seeds = np.random.default_rng([0, 99]).integers(0, 2**31 - 1, size=len(prompts))
    results = {
        "machine": machine(),
        "instrument_seconds": round(instrument_seconds, 1),
        "n_images": len(prompts),
        "generator": dataclasses.asdict(generator_config),
        "rows": [],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = [
        (steps, batch, gamma, seed)
        for gamma in (args.snr_gammas or [generator_config.snr_gamma])
        for batch in (args.batch_sizes or [generator_config.batch_size])
        for steps in args.train_steps
        for seed in args.seeds
    ]
    for steps, batch, gamma, seed in settings:
        config = dataclasses.replace(generator_config, batch_size=batch, snr_gamma=gamma)
        generator = build_generator(config, "cpu", seed=seed)
        stats = generator.train(train_images, train_captions, steps=steps, seed=seed, progress=False)
        for scale in guidance:
            for sampling in args.sampling_steps:
                start = time.perf_counter()
                generated = generator.generate(
                    prompts,
                    list(image_seeds + seed),
                    batch_size=generate.batch_size,
                    guidance_scale=scale,
                    steps=sampling,
                )
                seconds = time.perf_counter() - start
                probs = instrument.occupation_probs(generated, occupations)
                accuracy = float(np.mean(np.array(occupations)[probs.argmax(axis=1)] == np.array(asked)))
                row = {
                    "train_steps": steps,
                    "batch_size": batch,
                    "snr_gamma": gamma,
                    "seed": seed,
                    "train_seconds": stats["seconds"],
                    "sampling_steps": sampling,
                    "guidance_scale": scale,
                    "sampling_seconds_per_1000": round(1000 * seconds / len(prompts), 2),
                    "occupation_accuracy": round(accuracy, 4),
                    "load_average": list(os.getloadavg()),
                }
                results["rows"].append(row)
                print(json.dumps(row), flush=True)
                out.write_text(json.dumps(results, indent=2) + "\n")
    if not args.no_plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(7, 4.5))

        def curve_of(row: dict) -> tuple:
            return row["snr_gamma"], row["batch_size"], row["guidance_scale"], row["sampling_steps"]

        for curve in sorted({curve_of(r) for r in results["rows"]}):
            rows = [r for r in results["rows"] if curve_of(r) == curve]
            steps = sorted({r["train_steps"] for r in rows})
            seconds = [float(np.median([r["train_seconds"] for r in rows if r["train_steps"] == s])) for s in steps]
            accuracy = [
                float(np.mean([r["occupation_accuracy"] for r in rows if r["train_steps"] == s])) for s in steps
            ]
            (line,) = axis.plot(
                seconds,
                accuracy,
                marker="o",
                label=f"snr_gamma {curve[0]:g}, batch {curve[1]}, "
                f"guidance {curve[2]:g}, {curve[3]} DDIM steps (mean of seeds)",
            )
            axis.scatter(
                [r["train_seconds"] for r in rows],
                [r["occupation_accuracy"] for r in rows],
                s=12,
                color=line.get_color(),
                alpha=0.5,
            )
            for x, y, s in zip(seconds, accuracy, steps):
                axis.annotate(f"{s} steps", (x, y), fontsize=7, textcoords="offset points", xytext=(4, -10))
        axis.axhline(1 / len(occupations), color="grey", linestyle=":", label="chance")
        axis.set_xlabel("generator training seconds (2 CPU threads; points: one seed each)")
        axis.set_ylabel("occupation accuracy (instrument, neutral prompts)")
        axis.legend(fontsize=7)
        figure.tight_layout()
        figure.savefig(out.with_suffix(".png"), dpi=120)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
