"""Cross-fitted labels: fold assignment, the per-image choice of model, the shared labelling function."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from biasloop.core.io import write_image_shards
from biasloop.core.seeds import stream_seed
from biasloop.models.instrument import (
    CrossFittedInstrument,
    assign_folds,
    label_images,
    mixture_fold,
)


class FoldModel:
    """A stand-in fold model: p_female is the red channel / 255; it records every image it sees."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.seen: list[int] = []

    def p_female(self, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
        self.seen += images[:, 0, 0, 1].tolist()  # the green channel carries the image's index
        return images[:, 0, 0, 0] / 255.0

    def occupation_probs(self, images: np.ndarray, occupations: list[str], batch_size: int = 512) -> np.ndarray:
        probs = np.full((len(images), len(occupations)), 0.1)
        probs[:, self.k % len(occupations)] = 0.8  # model k always predicts occupation k
        return probs

    def p_female_and_occupation(self, images: np.ndarray, occupations: list[str], batch_size: int = 512):
        return self.p_female(images, batch_size), self.occupation_probs(images, occupations, batch_size)


def test_stream_seeds_are_named_and_stable() -> None:
    assert stream_seed(0, "downstream") == stream_seed(0, "downstream")
    assert (
        len(
            {
                stream_seed(0, "downstream"),
                stream_seed(1, "downstream"),
                stream_seed(0, "generator-init"),
                stream_seed(0, "generator-train", 0),
                stream_seed(0, "generator-train", 1),
            }
        )
        == 5
    )
    # seed + generation used to collide: base seed 1 at generation 0 replayed base seed 0 at generation 1
    assert stream_seed(1, "generator-train", 0) != stream_seed(0, "generator-train", 1)
    assert 0 <= stream_seed(2**40, "x", 7) < 2**63
    with pytest.raises(ValueError):
        stream_seed(-1, "x")


def test_assign_folds_balanced_seeded_and_row_order_free() -> None:
    refs = [f"s.npy#{i}" for i in range(103)]
    fold = assign_folds(refs, 4, seed=0)
    assert sorted(np.bincount(fold).tolist()) == [25, 26, 26, 26]
    shuffled = np.random.default_rng(5).permutation(len(refs))
    again = assign_folds([refs[i] for i in shuffled], 4, seed=0)
    assert (again == fold[shuffled]).all()  # same image, same fold, whatever the row order
    assert (assign_folds(refs, 4, seed=1) != fold).any()
    for bad in (1, 0):
        with pytest.raises(ValueError, match="instrument.folds"):
            assign_folds(refs, bad, seed=0)
    with pytest.raises(ValueError, match="repeat"):
        assign_folds(refs + refs[:1], 2, seed=0)


def test_mixture_fold_is_a_fixed_roughly_uniform_hash() -> None:
    refs = [f"artifacts/gen0/generate/images/00000.npy#{i}" for i in range(3000)]
    fold = mixture_fold(refs, 3, seed=0)
    assert (fold == mixture_fold(refs, 3, seed=0)).all()
    assert (mixture_fold(refs[::-1], 3, seed=0) == fold[::-1]).all()
    counts = np.bincount(fold, minlength=3)
    assert counts.min() > 900  # 1000 expected each; binomial sd about 26
    assert (mixture_fold(refs, 3, seed=1) != fold).any()


def _shard(tmp_path: Path, n: int) -> list[str]:
    images = np.zeros((n, 2, 2, 3), dtype=np.uint8)
    images[:, :, :, 0] = (np.arange(n) * 7 % 256)[:, None, None]
    images[:, :, :, 1] = np.arange(n)[:, None, None]
    return write_image_shards(images, tmp_path / "shards", shard_size=4)


def test_each_trained_image_is_labelled_by_the_model_that_never_saw_it(tmp_path: Path) -> None:
    refs = _shard(tmp_path, 12)
    trained, others = refs[:8], refs[8:]
    own = assign_folds(trained, 2, seed=3)
    models = [FoldModel(0), FoldModel(1)]
    instrument = CrossFittedInstrument(models, dict(zip(trained, own.tolist())), seed=3, labels="cross-fitted, 2 folds")
    labels = label_images(
        instrument, refs, threshold=0.1, occupations=["nurse", "chef"], asked=["nurse"] * 6 + ["chef"] * 6
    )
    fold = labels["instrument_fold"].to_numpy()
    assert (fold[:8] == own).all()  # fold model k trained on every fold but k: it labels fold k
    assert (fold[8:] == mixture_fold(others, 2, seed=3)).all()
    for k, model in enumerate(models):
        assert sorted(model.seen) == np.flatnonzero(fold == k).tolist()  # each image seen by one model only
    expected_p = (np.arange(12) * 7 % 256) / 255.0
    assert np.allclose(labels["p_female"].to_numpy(), expected_p)
    assert labels["label"].to_list() == ["male" if p < 0.1 else "female" if p > 0.9 else "abstain" for p in expected_p]
    assert labels["predicted_occupation"].to_list() == [["nurse", "chef"][k] for k in fold]
    assert np.allclose(
        labels["p_occupation"].to_numpy(),
        [0.8 if ["nurse", "chef"][k] == asked else 0.1 for k, asked in zip(fold, ["nurse"] * 6 + ["chef"] * 6)],
    )
    assert labels.columns == ["p_female", "label", "instrument_fold", "p_occupation", "predicted_occupation"]
    with pytest.raises(ValueError, match="plumber"):
        label_images(instrument, refs[:1], 0.1, occupations=["nurse"], asked=["plumber"])


def test_label_images_of_nothing(tmp_path: Path) -> None:
    instrument = CrossFittedInstrument([FoldModel(0), FoldModel(1)], {}, seed=0, labels="x")
    labels = label_images(instrument, [], threshold=0.1, occupations=["nurse"], asked=[])
    assert len(labels) == 0 and "instrument_fold" in labels.columns
