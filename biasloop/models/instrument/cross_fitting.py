"""Out-of-sample perceived-gender labels: the cross-fitted instrument and the one labelling function.

An instrument trained on the corpus must never label an image it trained on: its confusion rates,
measured on held-out images, would not describe its labels of the images it memorised. The
locked-text CLIP is therefore **cross-fitted** (Chernozhukov et al. 2018, "Double/debiased machine
learning", sample splitting; the usual K-fold out-of-fold prediction):

1. the training split's images are dealt into K folds (``instrument.folds``; a seeded, balanced
   assignment that depends on the image refs, not on row order);
2. model k trains on every fold but k;
3. a training image is labelled by the model of its own fold, the one model that never saw it;
4. every other image (generated images, the held-out split, a labelled CSV) is labelled by the model
   a seeded hash of its ``image_ref`` picks, uniformly over the K models.

Rule 4 is the **fold mixture**. It is chosen over the two alternatives because it makes both sides of
every comparison use the same instrument: each training image is labelled by a uniformly chosen fold
model (balanced folds), and so is each generated and each held-out image, so the confusion rates
measured on the held-out split under rule 4 are the rates of exactly the instrument both sides used, and no
labelling model saw the held-out split. The alternatives label generated images with a different
instrument than the training images: averaging the K models' probabilities (an ensemble) changed the
held-out abstain rate by 0.5 to 2.1 points against the fold mixture's, in either direction, over seven
(K, epochs) settings on the default world (2.1% against 2.6% at K=2;
``benchmarks/results/instrument_folds.json``), and a model retrained on all folds (K + 1 trainings) is
stronger than any fold model. An instrument difference between the sides would enter F_gen - F_train, the
quantity the study measures, and one set of held-out rates could not correct both sides. The fold each
image was labelled by is kept (column ``instrument_fold``).

A pretrained open_clip instrument never trained on the corpus: it is one model and labels everything
("pretrained, not trained on this corpus").

:func:`biasloop.models.instrument.labelling.label_images` is the labelling step of ``label_train``,
``label@N`` and ``evaluate@N``.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from biasloop.core.io import load_images
from biasloop.core.seeds import stream_seed
from biasloop.models.instrument.training import train_or_load_instrument
from biasloop.models.instrument.zero_shot import (
    Instrument,
    InstrumentConfig,
    gender_prompts,
    load_instrument,
)

if TYPE_CHECKING:
    import polars as pl

log = logging.getLogger(__name__)


MANIFEST = "labeller.json"
FOLDS_TABLE = "folds.parquet"


def assign_folds(image_refs: Sequence[str], folds: int, seed: int) -> np.ndarray:
    """A balanced, seeded fold (``0..folds-1``) per training image.

    The images are put in a seeded random order of their sorted refs and dealt round-robin, so fold
    sizes differ by at most one and the assignment does not depend on row order.

    Args:
        image_refs: the training images' refs (unique).
        folds: K >= 2.
        seed: ``base.seed`` (stream ``instrument-folds``).

    Returns:
        ``int64`` fold of each image, aligned with ``image_refs``.
    """
    if folds < 2:
        raise ValueError(f"instrument.folds: cross-fitting needs at least 2 folds, got {folds}")
    refs = np.asarray(image_refs, dtype=object)
    if len(refs) < folds:
        raise ValueError(f"instrument.folds: {folds} folds but only {len(refs)} training images")
    if len(set(refs.tolist())) != len(refs):
        raise ValueError("assign_folds: image refs repeat; each training image must appear once")
    by_ref = np.argsort(refs, kind="stable")
    order = by_ref[np.random.default_rng(stream_seed(seed, "instrument-folds")).permutation(len(refs))]
    fold = np.empty(len(refs), dtype=np.int64)
    fold[order] = np.arange(len(refs)) % folds
    return fold


def mixture_fold(image_refs: Sequence[str], folds: int, seed: int) -> np.ndarray:
    """The fold model that labels an image no model trained on: ``crc32(salt + ref) mod K``.

    A hash, so the choice is fixed per image across runs and machines, independent of the image's
    content and of which other images are labelled with it.
    """
    salt = f"{stream_seed(seed, 'instrument-mixture')}#"
    return np.array([zlib.crc32((salt + ref).encode()) % folds for ref in image_refs], dtype=np.int64)


class CrossFittedInstrument:
    """K fold models and the rule that picks, per image, one that never trained on it.

    Attributes:
        models: ``models[k]`` trained on every training fold but ``k`` (one model when not trained here).
        fold_of_ref: ``image_ref -> k`` for the images the models trained on.
        seed: ``base.seed`` (seeds the mixture hash).
        labels: how labels are produced, in words (written to ``metrics/instrument.json``).
    """

    def __init__(self, models: list[Instrument], fold_of_ref: dict[str, int], seed: int, labels: str) -> None:
        if not models:
            raise ValueError("CrossFittedInstrument: no models")
        self.models = models
        self.fold_of_ref = fold_of_ref
        self.seed = seed
        self.labels = labels

    @property
    def folds(self) -> int:
        return len(self.models)

    @property
    def config(self) -> InstrumentConfig:
        return self.models[0].config

    def fold_for(self, image_refs: Sequence[str]) -> np.ndarray:
        """The model index that labels each image: its own fold's if a model trained on it, else the mixture's."""
        mixture = mixture_fold(image_refs, self.folds, self.seed)
        own = np.array([self.fold_of_ref.get(ref, -1) for ref in image_refs], dtype=np.int64)
        return np.where(own >= 0, own, mixture)

    def _per_fold(
        self, fold: np.ndarray, width: int, compute: Callable[[Instrument, np.ndarray], np.ndarray]
    ) -> np.ndarray:
        out = np.zeros((len(fold), width), dtype=np.float64)
        for k in np.unique(fold).tolist():
            rows = np.flatnonzero(fold == k)
            out[rows] = compute(self.models[k], rows).reshape(len(rows), width)
        return out

    def p_female(
        self,
        images: np.ndarray | None,
        image_refs: Sequence[str],
        batch_size: int = 512,
        image_vectors: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(p_female, fold)`` per image, each from the model :meth:`fold_for` picks; with ``image_vectors``
        (row i: the embedding by image i's fold model) and ``images=None``, without running the tower
        (the same class embeddings and softmax: the same numbers, bit for bit)."""
        fold = self._fold_checked(images if image_vectors is None else image_vectors, image_refs)

        def p(model: Instrument, rows: np.ndarray) -> np.ndarray:
            if image_vectors is None:
                return model.p_female(images[rows], batch_size=batch_size)
            prompts = gender_prompts(model.config.gender_templates)
            both = model.class_probabilities(
                [prompts["female"], prompts["male"]], None, image_vectors=image_vectors[rows]
            )
            return both[:, 0]

        return self._per_fold(fold, 1, p)[:, 0], fold

    def occupation_probs(
        self, images: np.ndarray, image_refs: Sequence[str], occupations: list[str], batch_size: int = 512
    ) -> np.ndarray:
        """``(n, len(occupations))`` zero-shot probabilities, each row from the model :meth:`fold_for` picks."""
        fold = self._fold_checked(images, image_refs)
        return self._per_fold(
            fold,
            len(occupations),
            lambda model, rows: model.occupation_probs(images[rows], occupations, batch_size=batch_size),
        )

    def p_female_and_occupation(
        self,
        images: np.ndarray | None,
        image_refs: Sequence[str],
        occupations: list[str],
        batch_size: int = 512,
        image_vectors: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(p_female, occupation probabilities (n, K), fold)`` from one image-tower pass per image; with
        ``image_vectors`` (row i: the embedding by image i's fold model, :func:`encode_units`) and
        ``images=None``, from those embeddings without running the tower."""
        fold = self._fold_checked(images if image_vectors is None else image_vectors, image_refs)

        def both(model: Instrument, rows: np.ndarray) -> np.ndarray:
            if image_vectors is None:
                p_female, probs = model.p_female_and_occupation(images[rows], occupations, batch_size=batch_size)
            else:
                p_female, probs = model.p_female_and_occupation(None, occupations, image_vectors=image_vectors[rows])
            return np.column_stack([p_female, probs])

        out = self._per_fold(fold, 1 + len(occupations), both)
        return out[:, 0], out[:, 1:], fold

    def _fold_checked(self, images: np.ndarray, image_refs: Sequence[str]) -> np.ndarray:
        if len(images) != len(image_refs):
            raise ValueError(f"{len(images)} images but {len(image_refs)} image refs")
        return self.fold_for(image_refs)

    def save(self, folder: str | Path) -> None:
        """``labeller.json`` (labels, folds, seed), ``folds.parquet`` (image_ref, fold), ``fold{k}/`` per model."""
        import polars as pl  # here, not at import: the GPU benchmark imports this package without polars

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for k, model in enumerate(self.models):
            model.save(folder / f"fold{k}")
        pl.DataFrame(
            {"image_ref": list(self.fold_of_ref), "fold": list(self.fold_of_ref.values())},
            schema={"image_ref": pl.String, "fold": pl.Int64},
        ).write_parquet(folder / FOLDS_TABLE)
        manifest = {"labels": self.labels, "folds": self.folds, "seed": self.seed, "backend": self.config.backend}
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def load_cross_fitted(folder: str | Path, device: str = "cpu") -> CrossFittedInstrument:
    """Load what :meth:`CrossFittedInstrument.save` wrote (the ``instrument`` stage's output folder)."""
    import polars as pl  # here, not at import: the GPU benchmark imports this package without polars

    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path} not found: not an instrument folder (run the instrument stage)")
    manifest = json.loads(manifest_path.read_text())
    models = [load_instrument(folder / f"fold{k}", device) for k in range(int(manifest["folds"]))]
    table = pl.read_parquet(folder / FOLDS_TABLE)
    return CrossFittedInstrument(
        models,
        dict(zip(table["image_ref"].to_list(), table["fold"].to_list())),
        int(manifest["seed"]),
        str(manifest["labels"]),
    )


def train_cross_fitted(
    config: InstrumentConfig,
    train: pl.DataFrame | None,
    occupations: list[str] | None,
    seed: int,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[CrossFittedInstrument, dict[str, Any]]:
    """Train the K fold models of the locked-text CLIP, or load the pretrained open_clip instrument.

    Args:
        config: the ``instrument`` params (``folds`` = K; ``epochs`` per fold model).
        train: the training split (``image_ref``, ``caption``); unused by open-clip.
        occupations: the occupations it will be asked about (their class embeddings are checked here).
        seed: ``base.seed``; fold k's model trains with stream ``instrument-fold``, k.
        device: torch device.
        progress: tqdm bars.

    Returns:
        ``(instrument, stats)``: ``seconds`` (all training), ``folds``, ``labels`` and, per fold model,
        its ``n_pairs``, ``seconds`` and ``final_loss``.
    """
    start = time.perf_counter()
    if config.backend != "locked-text-clip":
        model, stats = train_or_load_instrument(
            config, None, None, occupations, seed=seed, device=device, progress=progress
        )
        labels = "pretrained open_clip, not trained on this corpus: one model labels every image"
        return CrossFittedInstrument([model], {}, seed, labels), {**stats, "folds": 1, "labels": labels}
    if train is None or len(train) < 2:
        raise ValueError("the locked-text CLIP needs training pairs (corpus rows with split == 'train')")
    refs = train["image_ref"].to_list()
    captions = np.asarray(train["caption"].to_list(), dtype=object)
    fold = assign_folds(refs, config.folds, seed)
    images = load_images(refs)
    models, per_fold = [], []
    for k in range(config.folds):
        keep = fold != k
        log.info(
            "fold %d/%d: training on %d of %d images (fold %d held out)",
            k + 1,
            config.folds,
            int(keep.sum()),
            len(refs),
            k,
        )
        model, stats = train_or_load_instrument(
            config,
            images[keep],
            captions[keep].tolist(),
            occupations,
            seed=stream_seed(seed, "instrument-fold", k),
            device=device,
            progress=progress,
        )
        models.append(model)
        per_fold.append({key: stats[key] for key in ("n_pairs", "seconds", "final_loss", "steps")})
    labels = f"cross-fitted, {config.folds} folds"
    stats = {
        "seconds": time.perf_counter() - start,
        "folds": config.folds,
        "labels": labels,
        "epochs_per_fold": config.epochs,
        "per_fold": per_fold,
    }
    return CrossFittedInstrument(models, dict(zip(refs, fold.tolist())), seed, labels), stats
