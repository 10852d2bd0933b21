"""The generational loop: which samples get generated images, and each generation's dataset.

Two policies (``loop.mode``), both drawing on generation ``N-1``'s generator and the same seeded,
**nested** choice of ``round(synthetic_ratio * n)`` real training samples (one fixed permutation per
generation, of which a prefix is taken, so the samples chosen at ratio 0.4 include those at 0.2 and
ratios compare like with like):

- ``replace`` (Chen et al. 2024, the replacement study): dataset ``N`` is the real training split with
  the chosen samples' images replaced by images generated from their own captions. Its size stays n.
- ``accumulate`` (Gerstgrasser et al. 2024, "Is Model Collapse Inevitable?"): dataset ``N`` is dataset
  ``N-1`` (real samples kept, earlier generated ones too) plus one new generated sample per chosen
  caption, with id ``<source id>@gen<N>``. Its size grows by ``round(ratio * n)`` per generation.

Every row carries ``source_id`` (the real sample its caption comes from; its own id for real rows) and
``synthetic``; ``true_gender``/``true_occupation`` are the source's (for analysis only).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from biasloop.core.seeds import stream_seed

DATASET_COLUMNS = ("id", "source_id", "caption", "image_ref", "synthetic", "true_occupation", "true_gender", "split")
MODES = ("replace", "accumulate")


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """``loop``: how each generation's dataset is built and its models retrained."""

    mode: Literal["replace", "accumulate"] = (
        "replace"  # replace: corpus with images regenerated; accumulate: dataset N-1 plus new generated samples
    )
    retrain_generator: bool = True  # false: the generator stays generation 0's (the replacement study)
    warm_start: bool = True  # fine-tune generation N from N-1's generator instead of training from scratch
    generator_steps: int = 100  # training steps per generation when warm-starting (from scratch: generator.train_steps)
    batch_size: int = 256  # images per generation batch when making replacement images


def replacement_order(ids: list[str] | tuple[str, ...], seed: int, generation: int) -> np.ndarray:
    """A fixed permutation of ``range(len(ids))`` for one generation.

    The permutation depends on the sorted ids, the seed and the generation only (stream
    ``replacement-order``, N), so it is the same for every ratio (nesting) and independent of row order.
    """
    order_by_id = np.argsort(np.asarray(ids, dtype=object), kind="stable")
    rng = np.random.default_rng(stream_seed(seed, "replacement-order", generation))
    return order_by_id[rng.permutation(len(ids))]


def replaced_indices(n_or_ids: list[str] | tuple[str, ...], ratio: float, seed: int, generation: int) -> np.ndarray:
    """Indices (into ``ids``) of the samples whose images are replaced: exactly ``round(ratio * n)``."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"synthetic_ratio: must be in [0, 1], got {ratio}")
    count = int(round(ratio * len(n_or_ids)))
    return replacement_order(n_or_ids, seed, generation)[:count]


def build_dataset(corpus: pl.DataFrame, replaced: np.ndarray, generated_refs: list[str]) -> pl.DataFrame:
    """The generation's dataset manifest: corpus training rows, ``replaced`` rows pointing at generated images.

    Args:
        corpus: the training split of ``captions.parquet``.
        replaced: row indices into ``corpus`` whose images were regenerated.
        generated_refs: image refs of the generated images, aligned with ``replaced``.

    Returns:
        ``id, caption, image_ref, synthetic, true_occupation, true_gender, split``; ``true_gender`` is
        kept as the source sample's, for analysis only (the generated image's own is unknown).
    """
    if len(replaced) != len(generated_refs):
        raise ValueError(f"{len(replaced)} replaced samples but {len(generated_refs)} generated images")
    refs = corpus["image_ref"].to_list()
    synthetic = np.zeros(len(corpus), dtype=bool)
    for index, ref in zip(replaced.tolist(), generated_refs):
        refs[index] = ref
        synthetic[index] = True
    return corpus.with_columns(
        pl.Series("image_ref", refs, dtype=pl.String),
        pl.Series("synthetic", synthetic),
        pl.col("id").alias("source_id"),
    ).select(DATASET_COLUMNS)


def as_dataset(frame: pl.DataFrame) -> pl.DataFrame:
    """A generation's training rows in dataset form: a corpus table (dataset 0) gets ``synthetic`` false and
    ``source_id`` = ``id``; a mix ``dataset.parquet`` is returned as it is. Rows of other splits are dropped."""
    if "split" in frame.columns:
        frame = frame.filter(pl.col("split") == "train")
    if "synthetic" not in frame.columns:
        frame = frame.with_columns(pl.lit(False).alias("synthetic"))
    if "source_id" not in frame.columns:
        frame = frame.with_columns(pl.col("id").alias("source_id"))
    for column in ("true_occupation", "true_gender"):
        if column not in frame.columns:
            frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias(column))
    return frame.select(DATASET_COLUMNS)


def accumulated_dataset(
    previous: pl.DataFrame,
    previous_refs: list[str],
    corpus: pl.DataFrame,
    chosen: np.ndarray,
    generated_refs: list[str],
    generation: int,
) -> pl.DataFrame:
    """Dataset ``generation`` under ``loop.mode: accumulate``: dataset N-1 plus one generated sample per chosen caption.

    Args:
        previous: dataset N-1 in dataset form (:func:`as_dataset`).
        previous_refs: its image refs as they are to be written (its generated images copied into this
            generation's shards, so the dataset needs no earlier mix folder); aligned with ``previous``.
        corpus: the training split of ``captions.parquet``.
        chosen: row indices into ``corpus`` whose captions were given to generation N-1's generator.
        generated_refs: refs of the new images, aligned with ``chosen``.
        generation: N (new ids are ``<source id>@gen<N>``).

    Returns:
        ``len(previous) + len(chosen)`` rows in :data:`DATASET_COLUMNS`.
    """
    if len(chosen) != len(generated_refs) or len(previous) != len(previous_refs):
        raise ValueError("image refs do not match the rows they belong to")
    kept = previous.with_columns(pl.Series("image_ref", previous_refs, dtype=pl.String))
    sources = corpus[chosen.tolist()] if len(chosen) else corpus.clear()
    new = (
        as_dataset(sources)
        .with_columns(
            (pl.col("source_id") + f"@gen{generation}").alias("id"),
            pl.Series("image_ref", generated_refs, dtype=pl.String),
            pl.lit(True).alias("synthetic"),
        )
        .select(DATASET_COLUMNS)
    )
    dataset = pl.concat([kept, new], how="vertical")
    if dataset["id"].n_unique() != len(dataset):
        raise ValueError(
            f"dataset {generation}: duplicate ids (was the previous dataset built for generation {generation}?)"
        )
    return dataset


def previous_dataset_file(folder: str | Path) -> Path:
    """The dataset table in a generation's dataset folder: a mix folder's ``dataset.parquet``, or the
    corpus folder's ``captions.parquet`` (dataset 0)."""
    folder = Path(folder)
    for name in ("dataset.parquet", "captions.parquet"):
        if (folder / name).exists():
            return folder / name
    raise FileNotFoundError(f"{folder}: neither dataset.parquet (a mix folder) nor captions.parquet (the corpus)")


def generation_seeds(seed: int, generation: int, count: int, stream: str) -> list[int]:
    """Per-image seeds for one generation and one use, stable across runs.

    Args:
        seed: ``base.seed``.
        generation: N.
        count: images.
        stream: the use's stream name (``generate-noise``, ``mix-noise``; :func:`biasloop.core.seeds.stream_seed`).

    Returns:
        ``count`` seeds in ``[0, 2**31 - 1)``, image ``i``'s the ``i``-th draw of stream ``stream``, N.
    """
    rng = np.random.default_rng(stream_seed(seed, stream, generation))
    return rng.integers(0, 2**31 - 1, size=count).tolist()
