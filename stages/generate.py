"""generate@N: generation N's generator makes the images the amplification measurements label.

For each occupation (params ``occupations``): ``generate.n_per_prompt`` images for each neutral prompt
template (``"a photo of {a} {occupation}"``), and one image for each of a seeded sample of at most
``generate.max_captions_per_occupation`` captions of the ``generate.caption_selection`` selection
(``keyword``: every caption that mentions the occupation) used as prompts. Image ``i`` gets its own seed,
the i-th draw of stream ``generate-noise``, N (``biasloop.core.seeds``), so a rerun makes the same images and generations differ only
through their generators. With ``generate.num_processes`` above 1 the stage re-runs itself under
``accelerate launch`` and the processes share the batches by index (see :mod:`biasloop.core.distributed`);
the images are the same as with one process.

Inputs:   --generator artifacts/models/gen{N}/generator  (a saved generator, any backend)
          --selections artifacts/neighbours/selections.parquet  (selection, occupation, id, similarity, rank)
          --corpus artifacts/corpus/captions.parquet  (id, caption, image_ref: the selected captions' text,
                                                       and the real images of the contact sheet)
Outputs:  artifacts/gen{N}/generate/manifest.parquet  (prompt_kind in {neutral, caption}, occupation,
                                                       prompt, seed, image_ref, template, source_id)
          artifacts/gen{N}/generate/images/*.npy      (uint8 image shards)
          artifacts/gen{N}/generate/import.json       (generator.backend images only: requested, served,
                                                       and the missing/unreadable/wrong-size/extra images)
          plots/generated/gen{N}.png  (--contact-sheet: per occupation, real images of the selection
                                       beside generated ones for the neutral prompts)
Params:   base, tracking, occupations, generate, sampling (guidance scale and denoising steps: read here,
          never saved into the model, so changing them reruns generate@N and what follows, not training)

Example:
    python -m stages.generate --generation 0 --generator artifacts/models/gen0/generator \\
        --selections artifacts/neighbours/selections.parquet --corpus artifacts/corpus/captions.parquet \\
        --out artifacts/gen0/generate --contact-sheet plots/generated/gen0.png
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from biasloop.core.config import to_dict
from biasloop.core.distributed import join_or_relaunch, process_batches
from biasloop.core.io import atomic_path, load_images, timed, write_image_shards, write_json
from biasloop.core.runtime import resolve_device
from biasloop.core.stage import load_configs, make_parser, stage_main
from biasloop.core.tracking import stage_run
from biasloop.loop.export import image_seeds
from biasloop.loop.prompts import MANIFEST_COLUMNS, GenerateConfig, plan_prompts
from biasloop.models.generators import SamplingConfig, validate_sampling

log = logging.getLogger("generate")

SHEET_PER_SIDE = 6  # contact sheet: real and generated images per occupation


@stage_main(log)
def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    configs = load_configs(args.params, {"occupations": None, "generate": GenerateConfig, "sampling": SamplingConfig})
    config: GenerateConfig = configs["generate"]
    sampling: SamplingConfig = configs["sampling"]
    occupations = _checked_inputs(args, config, sampling, configs["occupations"])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    seed = configs["base"].seed

    selections = pl.read_parquet(args.selections)
    corpus = pl.read_parquet(args.corpus, columns=["id", "caption"])
    plan = plan_prompts(config, occupations, selections, corpus, seed)
    if len(plan) == 0:
        raise ValueError("nothing to generate: no neutral prompts and no selected captions")
    seeds = image_seeds(seed, args.generation, len(plan))
    counts = plan.group_by("prompt_kind").len().sort("prompt_kind").rows()
    log.info(
        "generation %d: %d images (%s) for %d occupations",
        args.generation,
        len(plan),
        ", ".join(f"{n} {kind}" for kind, n in counts),
        len(occupations),
    )

    device = resolve_device(configs["base"].device)
    started = join_or_relaunch("stages.generate", argv, config.num_processes, device, configs["tracking"])
    if started is None:
        return
    group, tracking = started

    params = {
        "generate": to_dict(config),
        "sampling": to_dict(sampling),
        "occupations": occupations,
        "base": to_dict(configs["base"]),
    }
    with stage_run("generate", tracking, params, generation=args.generation) as run:
        from tqdm.auto import tqdm

        from biasloop.models.generators import load_generator, read_manifest
        from biasloop.models.generators.image_folder import served_subset

        with timed(f"loading generator {args.generator}", log):
            generator = load_generator(args.generator, group.device(device))
        plan, seeds, served = served_subset(generator, plan, seeds)  # images backend: what the folder has
        prompts = plan["prompt"].to_list()
        # batches are fixed by index (and each image's seed too), so the images do not depend on the
        # number of processes; process r takes batches r, r + P, ...
        batches = process_batches(len(prompts), config.batch_size, group.rank, group.world)
        start = time.perf_counter()
        progress = tqdm(batches, desc=f"generate@{args.generation} [{group.rank}/{group.world}]", unit="batch")
        indices, mine = _generate_batches(generator, progress, prompts, seeds, config, sampling)
        out = Path(args.out)
        images = group.gather(out.parent / f".{out.name}.parts", np.asarray(indices, dtype=np.int64), mine)
        if not group.is_main:
            return
        seconds = time.perf_counter() - start
        rate = len(images) / max(seconds, 1e-9)
        log.info(
            "generated %d images in %.1f s (%.1f images/s), %d process(es)", len(images), seconds, rate, group.world
        )

        _write_images(out, images, plan, seeds, config.shard_size, served)
        if args.contact_sheet:
            _contact_sheet(args, config, selections, plan, images, seed)
            run.log_artifact(args.contact_sheet)
        backend = read_manifest(args.generator).get("backend")
        run.set_tags({"generator_backend": backend})
        run.log_metrics(
            {
                "n_images": len(images),
                **{f"n_{kind}": int((plan["prompt_kind"] == kind).sum()) for kind in ("neutral", "caption")},
                "generation_seconds": seconds,
                "images_per_second": rate,
                "num_processes": group.world,
                **({f"import_{k}": v for k, v in served.counts().items()} if served is not None else {}),
            }
        )


def _parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__, "python -m stages.generate")
    parser.add_argument("--generation", type=int, required=True, help="generation N")
    parser.add_argument("--generator", required=True, help="generation N's generator folder")
    parser.add_argument("--selections", default="artifacts/neighbours/selections.parquet", help="selections table")
    parser.add_argument("--corpus", default="artifacts/corpus/captions.parquet", help="corpus caption table")
    parser.add_argument("--out", required=True, help="output folder (artifacts/gen{N}/generate)")
    parser.add_argument(
        "--contact-sheet", help="PNG of real beside generated images per occupation (none when omitted)"
    )
    return parser


def _checked_inputs(
    args: argparse.Namespace, config: GenerateConfig, sampling: SamplingConfig, occupations: list[str] | None
) -> list[str]:
    """The occupations, after checking the sampling and generate params and that the input tables exist."""
    validate_sampling(sampling)
    if not occupations:
        raise ValueError("occupations: at least one occupation is needed")
    if config.batch_size < 1 or config.shard_size < 1:
        raise ValueError("generate.batch_size and generate.shard_size must be at least 1")
    for path in (args.selections, args.corpus):
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: not found")
    return list(occupations)


def _generate_batches(
    generator: Any,
    batches: Iterable[range],
    prompts: list[str],
    seeds: Sequence[int],
    config: GenerateConfig,
    sampling: SamplingConfig,
) -> tuple[list[int], np.ndarray]:
    """This process's batches of images, in order, and the plan indices they belong to."""
    chunks, indices = [], []
    for batch in batches:
        chunks.append(
            generator.generate(
                prompts[batch.start : batch.stop],
                seeds[batch.start : batch.stop],
                batch_size=config.batch_size,
                guidance_scale=sampling.guidance_scale,
                steps=sampling.steps,
            )
        )
        indices.extend(batch)
    return indices, np.concatenate(chunks) if chunks else np.empty((0,), dtype=np.uint8)


def _write_images(
    out: Path, images: np.ndarray, plan: pl.DataFrame, seeds: Sequence[int], shard_size: int, served=None
) -> None:
    """The output folder, atomically: image shards, ``manifest.parquet`` (the plan, seeds, image refs) and,
    for the images backend, ``import.json`` (what the folder served)."""
    with atomic_path(out) as tmp:
        tmp.mkdir()
        refs = write_image_shards(images, tmp / "images", shard_size, ref_root=out / "images")
        manifest = plan.with_columns(
            pl.Series("seed", seeds, dtype=pl.Int64), pl.Series("image_ref", refs, dtype=pl.String)
        ).select(MANIFEST_COLUMNS)
        manifest.write_parquet(tmp / "manifest.parquet", compression="zstd", statistics=True)
        if served is not None:
            write_json(tmp / "import.json", served.to_dict())


def _contact_sheet(
    args, config: GenerateConfig, selections: pl.DataFrame, plan: pl.DataFrame, images: np.ndarray, seed: int
) -> None:
    """Real images of the caption selection beside this generation's neutral-prompt images."""
    from biasloop.report.plots import generated_contact_sheet, pick_per_group

    corpus = pl.read_parquet(args.corpus, columns=["id", "caption", "image_ref"])
    real = (
        selections.filter(pl.col("selection") == config.caption_selection)
        .select("occupation", "id")
        .join(corpus, on="id", how="inner")
    )
    real = pick_per_group(real, "occupation", SHEET_PER_SIDE, seed)
    neutral = plan.with_row_index("_row").filter(pl.col("prompt_kind") == "neutral")
    neutral = pick_per_group(neutral, "occupation", SHEET_PER_SIDE, seed)
    real_images = load_images(real["image_ref"].to_list()) if len(real) else np.zeros((0, *images.shape[1:]), np.uint8)
    with timed(f"contact sheet {args.contact_sheet}", log):
        generated_contact_sheet(
            real,
            real_images,
            neutral,
            images[neutral["_row"].to_numpy()],
            args.contact_sheet,
            f"Generation {args.generation}: real images of '{config.caption_selection}' captions (left), "
            "generated for the neutral prompts (right)",
            per_side=SHEET_PER_SIDE,
            seed=seed,
        )


if __name__ == "__main__":
    raise SystemExit(main())
