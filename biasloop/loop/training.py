"""Training one generation's models: the generator (self-consuming loop) and the downstream CLIP.

Shared by the ``pretrain`` stage (generation 0, on the real corpus) and ``retrain@N`` (generation N, on
dataset N). Heavy libraries are imported inside the functions.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import polars as pl

from biasloop.core.io import atomic_path, load_images, timed, write_json

log = logging.getLogger(__name__)


def train_generation(
    dataset: pl.DataFrame,
    out_dir: str | Path,
    generator_config: Any,
    downstream_config: Any,
    seed: int,
    device: str,
    generator_steps: int,
    warm_start_from: str | Path | None = None,
    copy_generator_from: str | Path | None = None,
) -> dict[str, Any]:
    """Train (or carry over) the generator and train the downstream CLIP on ``dataset``.

    Args:
        dataset: rows with ``caption`` and ``image_ref`` (the training split).
        out_dir: written atomically with ``generator/``, ``downstream/`` and ``training.json``.
        generator_config: the ``generator`` params (a ``GeneratorConfig``).
        downstream_config: the ``downstream`` params (a ``DownstreamConfig``).
        seed: training seed.
        device: torch device.
        generator_steps: optimisation steps for the generator.
        warm_start_from: a generator folder to continue from (fine-tuning), or None for from scratch.
        copy_generator_from: keep this generator unchanged instead of training (``loop.retrain_generator: false``).

    Returns:
        Training statistics (seconds, steps, losses) for metrics and MLflow.
    """
    from biasloop.models.downstream_clip import save_downstream, train_downstream_clip
    from biasloop.models.generators import build_generator, load_generator

    out_dir = Path(out_dir)
    captions = dataset["caption"].to_list()
    images = load_images(dataset["image_ref"].to_list())
    stats: dict[str, Any] = {"n_samples": len(captions)}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        if copy_generator_from is not None:
            shutil.copytree(copy_generator_from, tmp / "generator")
            stats["generator"] = {"kept_from": str(copy_generator_from)}
        else:
            if warm_start_from is not None:
                generator = load_generator(warm_start_from, device)
            else:
                generator = build_generator(generator_config, device)
            with timed(f"training generator for {generator_steps} steps on {len(captions)} images", log):
                stats["generator"] = generator.train(images, captions, steps=generator_steps, seed=seed)
            generator.save(tmp / "generator")
        with timed(f"training downstream CLIP on {len(captions)} pairs", log):
            model, downstream_stats = train_downstream_clip(images, captions, downstream_config, seed=seed)
        save_downstream(model, tmp / "downstream")
        stats["downstream"] = downstream_stats
        write_json(tmp / "training.json", stats)
    return stats
