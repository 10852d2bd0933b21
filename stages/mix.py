"""mix@N: generation N's dataset, built from the real corpus and generation N-1's generated images.

``loop.mode`` picks the policy (see ``biasloop.loop.mixing``). Both choose the same seeded, nested
``round(synthetic_ratio * n_train)`` samples of the corpus's training split, and generation N-1's
generator makes an image from each chosen sample's own caption (``sampling`` params: guidance and steps).

- ``replace``: dataset N is the training split with the chosen samples' images replaced (size n).
- ``accumulate``: dataset N is dataset N-1 (``--previous``: real samples and earlier generated ones, whose
  images are copied into this stage's shards) plus one new generated sample per chosen caption.

The dataset is a manifest that references images (the corpus's, or this stage's shards), so DVC caches
each generation cheaply.

Inputs:   artifacts/corpus/captions.parquet, artifacts/models/gen{N-1}/generator,
          --previous: dataset N-1's folder (artifacts/corpus for N = 1, else artifacts/gen{N-1}/mix;
          read by accumulate only)
Outputs:  artifacts/gen{N}/mix/dataset.parquet  (id, source_id, caption, image_ref, synthetic,
                                                 true_occupation, true_gender, split)
          artifacts/gen{N}/mix/images/*.npy      (the generated images, and under accumulate the earlier ones)
Params:   base, tracking, synthetic_ratio, loop, sampling (read here, never saved into the generator)

Example:
    python -m stages.mix --generation 1 --corpus artifacts/corpus/captions.parquet \\
        --generator artifacts/models/gen0/generator --previous artifacts/corpus --out artifacts/gen1/mix
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from biasloop.core.config import to_dict
from biasloop.core.io import atomic_path, load_images, timed, write_image_shards
from biasloop.core.runtime import resolve_device
from biasloop.core.stage import load_configs, make_parser, stage_main
from biasloop.core.tracking import stage_run
from biasloop.loop.mixing import (
    LoopConfig,
    accumulated_dataset,
    as_dataset,
    build_dataset,
    generation_seeds,
    previous_dataset_file,
    replaced_indices,
)
from biasloop.models.generators import SamplingConfig, validate_sampling

log = logging.getLogger("mix")


@stage_main(log)
def main(argv: Sequence[str] | None = None) -> None:
    parser = make_parser(__doc__, "python -m stages.mix")
    parser.add_argument("--generation", type=int, required=True, help="generation N whose dataset is built (N >= 1)")
    parser.add_argument("--corpus", default="artifacts/corpus/captions.parquet", help="corpus caption table")
    parser.add_argument("--generator", required=True, help="folder of generation N-1's generator")
    parser.add_argument(
        "--previous", help="dataset N-1's folder (the corpus folder for N = 1); needed by loop.mode accumulate"
    )
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
    chosen = replaced_indices(corpus["id"].to_list(), float(ratio), seed, args.generation)
    previous = None
    if loop.mode == "accumulate":
        if not args.previous:
            raise ValueError("loop.mode accumulate: mix needs --previous (dataset N-1's folder)")
        previous = as_dataset(pl.read_parquet(previous_dataset_file(args.previous)))
    params = {
        "synthetic_ratio": ratio,
        "loop": to_dict(loop),
        "sampling": to_dict(sampling),
        "base": to_dict(configs["base"]),
    }
    with stage_run("mix", configs["tracking"], params, generation=args.generation) as run:
        out = Path(args.out)
        with atomic_path(out) as tmp:
            tmp.mkdir()
            images = None
            if len(chosen):
                from biasloop.models.generators import load_generator

                generator = load_generator(args.generator, resolve_device(configs["base"].device))
                prompts = corpus["caption"].gather(chosen).to_list()
                seeds = generation_seeds(seed, args.generation, len(prompts), stream="mix-noise")
                with timed(f"generating {len(prompts)} images (ratio {ratio}, {loop.mode})", log) as took:
                    images = generator.generate(
                        prompts,
                        seeds,
                        batch_size=loop.batch_size,
                        guidance_scale=sampling.guidance_scale,
                        steps=sampling.steps,
                    )
                run.log_metrics({"generation_seconds": took["seconds"]})
            if previous is None:
                refs = (
                    write_image_shards(images, tmp / "images", 4096, ref_root=out / "images")
                    if images is not None
                    else []
                )
                dataset = build_dataset(corpus, chosen, refs)
            else:
                dataset = _accumulate(previous, corpus, chosen, images, tmp, out, args.generation)
            dataset.write_parquet(tmp / "dataset.parquet", compression="zstd", statistics=True)
        n_synthetic = int(dataset["synthetic"].sum())
        log.info(
            "dataset for generation %d (%s): %d samples, %d synthetic (%.0f%%), %d new",
            args.generation,
            loop.mode,
            len(dataset),
            n_synthetic,
            100.0 * n_synthetic / max(len(dataset), 1),
            len(chosen),
        )
        run.log_metrics(
            {
                "n_samples": len(dataset),
                "n_synthetic": n_synthetic,
                "n_new_synthetic": len(chosen),
                "synthetic_ratio": ratio,
            }
        )


def _accumulate(
    previous: pl.DataFrame, corpus: pl.DataFrame, chosen, images, tmp: Path, out: Path, generation: int
) -> pl.DataFrame:
    """Dataset N-1 plus the new images; dataset N-1's generated images are copied into this stage's shards."""
    import numpy as np

    earlier = previous["synthetic"].to_numpy()
    parts = [load_images(previous.filter(pl.col("synthetic"))["image_ref"].to_list())] if earlier.any() else []
    if images is not None:
        parts.append(images)
    refs = write_image_shards(np.concatenate(parts), tmp / "images", 4096, ref_root=out / "images") if parts else []
    previous_refs = previous["image_ref"].to_list()
    copied = iter(refs[: int(earlier.sum())])
    previous_refs = [next(copied) if flag else ref for flag, ref in zip(earlier.tolist(), previous_refs)]
    return accumulated_dataset(previous, previous_refs, corpus, chosen, refs[int(earlier.sum()) :], generation)


if __name__ == "__main__":
    raise SystemExit(main())
