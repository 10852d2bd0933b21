"""The generational loop: which samples get generated images, and each generation's dataset.

Dataset ``N`` (N >= 1) is the real corpus's training split with a fraction ``synthetic_ratio`` of its
samples' images replaced by images that generation ``N-1``'s generator made from those samples' own
captions (the replacement study's protocol). The choice is seeded and **nested**: one fixed
permutation of the samples per generation, of which the first ``round(ratio * n)`` are replaced, so the
samples replaced at ratio 0.4 include those replaced at 0.2 and ratios compare like with like.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl

from biasloop.core.seeds import stream_seed

DATASET_COLUMNS = ("id", "caption", "image_ref", "synthetic", "true_occupation", "true_gender", "split")


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """``loop``: how each generation's models are retrained."""

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
        pl.Series("image_ref", refs, dtype=pl.String), pl.Series("synthetic", synthetic)
    ).select(DATASET_COLUMNS)


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
