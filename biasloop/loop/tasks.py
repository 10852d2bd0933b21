"""What both downstream tasks of a generation share: its training pairs, the held-out split and its genders.

Generation N's dataset is the real corpus's training split for N = 0 and ``artifacts/gen{N}/mix/
dataset.parquet`` (the corpus with a share of its images generated) for N >= 1. Each task
(:mod:`biasloop.loop.captioning`, :mod:`biasloop.loop.classification`) is trained from scratch on it and
scored on the real corpus's held-out split (``split == "test"``). Genders of held-out images come from
ground truth where the corpus has it, otherwise from the instrument
(:func:`biasloop.metrics.evaluation.perceived_groups`).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl


def training_pairs(dataset_path: str | Path) -> pl.DataFrame:
    """The training rows of a generation's dataset (a corpus ``captions.parquet`` or a mix ``dataset.parquet``).

    Rows of another split are dropped (a corpus table holds its test split too).
    """
    path = Path(dataset_path)
    if not path.exists():
        raise FileNotFoundError(f"dataset {path} not found")
    frame = pl.read_parquet(path)
    missing = [c for c in ("caption", "image_ref") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    if "split" in frame.columns:
        frame = frame.filter(pl.col("split") == "train")
    if frame.is_empty():
        raise ValueError(f"{path}: no training rows")
    return frame


def held_out(corpus_path: str | Path) -> pl.DataFrame:
    """The corpus's held-out rows (``split == "test"``)."""
    frame = pl.read_parquet(corpus_path).filter(pl.col("split") == "test")
    if frame.is_empty():
        raise ValueError(f"{corpus_path}: no held-out rows (split == 'test')")
    return frame


def held_out_genders(test: pl.DataFrame, instrument_dir: str | None, device: str, threshold: float) -> list[str | None]:
    """Gender per held-out row: ground truth where known, else the instrument's confident label."""
    from biasloop.metrics.evaluation import perceived_groups

    groups = perceived_groups(test, instrument_dir, device, threshold)
    return [g if g in ("female", "male") else None for g in groups]

