"""mix@N: generation N's dataset, the corpus with a fraction of its images replaced by generated ones.

The samples to replace are a seeded, nested choice (see ``biasloop.loop.mixing``): exactly
``round(synthetic_ratio * n_train)`` of the training split. Generation N-1's generator makes each
replaced sample's image from the sample's own caption. The dataset is a manifest that references
images (the corpus's, or this stage's new shards), so DVC caches each generation cheaply.

Inputs:   artifacts/corpus/captions.parquet, artifacts/models/gen{N-1}/generator
Outputs:  artifacts/gen{N}/mix/dataset.parquet  (id, caption, image_ref, synthetic, true_occupation,
                                                 true_gender, split)
          artifacts/gen{N}/mix/images/*.npy      (the generated replacement images)
Params:   base, tracking, synthetic_ratio, loop, sampling (read here, never saved into the generator)

Example:
    python -m stages.mix --generation 1 --corpus artifacts/corpus/captions.parquet \\
        --generator artifacts/models/gen0/generator --out artifacts/gen1/mix
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from biasloop.core.config import to_dict
from biasloop.core.io import atomic_path, timed, write_image_shards
from biasloop.core.runtime import resolve_device
from biasloop.core.stage import load_configs, make_parser, run_main
from biasloop.core.tracking import stage_run
from biasloop.loop.mixing import (
    LoopConfig,
    build_dataset,
    generation_seeds,
    replaced_indices,
)
from biasloop.models.generators import SamplingConfig, validate_sampling

log = logging.getLogger("mix")


def main_body(argv: Sequence[str] | None) -> None:
    parser = make_parser(__doc__, "python -m stages.mix")
    parser.add_argument("--generation", type=int, required=True, help="generation N whose dataset is built (N >= 1)")
    parser.add_argument("--corpus", default="artifacts/corpus/captions.parquet", help="corpus caption table")
    parser.add_argument("--generator", required=True, help="folder of generation N-1's generator")
    parser.add_argument("--out", required=True, help="output folder (artifacts/gen{N}/mix)")
    args = parser.parse_args(argv)
    configs = load_configs(args.params, {"synthetic_ratio": None, "loop": LoopConfig, "sampling": SamplingConfig})
    ratio = configs["synthetic_ratio"]
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0.0 <= ratio <= 1.0:
        raise ValueError(f"synthetic_ratio: expected a number in [0, 1], found {ratio!r}")
    loop: LoopConfig = configs["loop"]
    sampling: SamplingConfig = configs["sampling"]
    validate_sampling(sampling)
    seed = configs["base"].seed

    corpus = pl.read_parquet(args.corpus).filter(pl.col("split") == "train")
    replaced = replaced_indices(corpus["id"].to_list(), float(ratio), seed, args.generation)
    params = {"synthetic_ratio": ratio, "loop": to_dict(loop), "sampling": to_dict(sampling),
              "base": to_dict(configs["base"])}
    with stage_run("mix", configs["tracking"], params, generation=args.generation) as run:
        out = Path(args.out)
        with atomic_path(out) as tmp:
            tmp.mkdir()
            generated_refs: list[str] = []
            if len(replaced):
                from biasloop.models.generators import load_generator

                generator = load_generator(args.generator, resolve_device(configs["base"].device))
                prompts = corpus["caption"].gather(replaced).to_list()
                seeds = generation_seeds(seed, args.generation, len(prompts), stream="mix-noise")
                with timed(f"generating {len(prompts)} replacement images (ratio {ratio})", log) as took:
                    images = generator.generate(prompts, seeds, batch_size=loop.batch_size,
                                                guidance_scale=sampling.guidance_scale, steps=sampling.steps)
                generated_refs = write_image_shards(images, tmp / "images", 4096, ref_root=out / "images")
                run.log_metrics({"generation_seconds": took["seconds"]})
            dataset = build_dataset(corpus, replaced, generated_refs)
            dataset.write_parquet(tmp / "dataset.parquet", compression="zstd", statistics=True)
        log.info("dataset for generation %d: %d samples, %d synthetic (%.0f%%)", args.generation,
                 len(dataset), len(replaced), 100.0 * len(replaced) / max(len(dataset), 1))
        run.log_metrics({"n_samples": len(dataset), "n_synthetic": len(replaced), "synthetic_ratio": ratio})


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(main_body, argv, log)


if __name__ == "__main__":
    raise SystemExit(main())
