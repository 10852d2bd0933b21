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
measured on the held-out split under rule 4 are the rates of exactly the labeller both sides used, and no
labelling model saw the held-out split. The alternatives label generated images with a different
instrument than the training images: averaging the K models' probabilities (an ensemble) changed the
held-out abstain rate by 0.5 to 2.1 points against the fold mixture's, in either direction, over seven
(K, epochs) settings on the default world (2.1% against 2.6% at K=2;
``benchmarks/results/instrument_folds.json``), and a model retrained on all folds (K + 1 trainings) is
stronger than any fold model. A labeller difference between the sides would enter F_gen - F_train, the
quantity the study measures, and one set of held-out rates could not correct both sides. The fold each
image was labelled by is kept (column ``instrument_fold``).

A pretrained open_clip instrument never trained on the corpus: it is one model and labels everything
("pretrained, not trained on this corpus").

:func:`label_images` is the labelling step of ``classify_train``, ``classify@N`` and ``evaluate@N``;
:func:`label_units` splits it into forward passes that several processes can share (``classify@N``).
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from biasloop.core.io import load_images
from biasloop.core.labels import LABELS
from biasloop.core.seeds import stream_seed
from biasloop.models.instrument import (
    Instrument,
    InstrumentConfig,
    corpus_split,
    labelled_set,
    load_instrument,
    train_or_load_instrument,
)

log = logging.getLogger(__name__)


def label_from_p(p_female: Sequence[float] | np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """Labels from probabilities: ``female`` if p > 1 - t, ``male`` if p < t, else ``abstain``.

    Args:
        p_female: probability (in [0, 1]) that each image shows a woman; nan abstains.
        threshold: the abstain threshold t in (0, 0.5] (the paradox study keeps p < 0.1 or p > 0.9).

    Returns:
        An object array of label strings, one per image.
    """
    if not 0.0 < threshold <= 0.5:
        raise ValueError(f"abstain threshold must be in (0, 0.5], got {threshold}")
    p = np.asarray(p_female, dtype=float)
    return np.where(p > 1.0 - threshold, "female", np.where(p < threshold, "male", "abstain")).astype(object)


def confusion_rates(true_gender: Sequence[str | None], predicted_label: Sequence[str]) -> dict[str, Any]:
    """Accuracy and confusion of perceived-gender labels against ground truth, ``female`` positive.

    Args:
        true_gender: ``female``/``male`` per image; other values (None, ``none``) are ignored.
        predicted_label: ``female``/``male``/``abstain`` per image.

    Returns:
        ``tpr`` (female labelled female), ``fpr`` (male labelled female) and ``accuracy`` over
        confident images, ``abstain_rate`` over all images with a known gender (fractions; None when
        undefined), ``n`` (images with a known gender), ``n_confident`` and ``confusion``:
        ``{"<true>_as_<label>": count}``.
    """
    truth = np.asarray([t if t in ("female", "male") else "" for t in true_gender], dtype=object)
    predicted = np.asarray(predicted_label, dtype=object)
    if truth.shape != predicted.shape:
        raise ValueError(f"{len(truth)} true genders but {len(predicted)} predicted labels")
    known = truth != ""
    truth, predicted = truth[known], predicted[known]
    counts = {f"{t}_as_{p}": int(np.sum((truth == t) & (predicted == p))) for t in ("female", "male") for p in LABELS}
    female_confident = counts["female_as_female"] + counts["female_as_male"]
    male_confident = counts["male_as_female"] + counts["male_as_male"]
    n_confident = female_confident + male_confident
    n_correct = counts["female_as_female"] + counts["male_as_male"]
    return {
        "tpr": counts["female_as_female"] / female_confident if female_confident else None,
        "fpr": counts["male_as_female"] / male_confident if male_confident else None,
        "accuracy": n_correct / n_confident if n_confident else None,
        "abstain_rate": (len(truth) - n_confident) / len(truth) if len(truth) else None,
        "n": int(len(truth)),
        "n_confident": int(n_confident),
        "confusion": counts,
    }


MANIFEST = "labeller.json"
FOLDS_TABLE = "folds.parquet"


def evaluate_instrument(
    instrument: Any, images: np.ndarray, true_gender: list[str | None], threshold: float, batch_size: int = 512
) -> dict[str, Any]:
    """Accuracy and confusion of the instrument's labels against ground truth.

    Args:
        instrument: anything with ``p_female(images, batch_size=...)``.
        images: ``uint8`` images.
        true_gender: ``female``/``male`` per image (None rows are ignored).
        threshold: the abstain threshold (``classify.abstain_threshold``).
        batch_size: images per forward pass.

    Returns:
        ``accuracy`` (over confident images), ``abstain_rate``, ``tpr``/``fpr`` ("female" the positive
        class, over confident images), ``n``, ``n_confident`` and the confusion counts
        (``female_as_male`` ...), from :func:`biasloop.models.labelling.confusion_rates`.
    """
    if len(images) != len(true_gender):
        raise ValueError(f"{len(images)} images but {len(true_gender)} labels")
    p = instrument.p_female(images, batch_size=batch_size)
    return confusion_rates(true_gender, label_from_p(p, threshold))


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
        self, images: np.ndarray, image_refs: Sequence[str], batch_size: int = 512
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(p_female, fold)`` per image, each from the model :meth:`fold_for` picks."""
        fold = self._fold_checked(images, image_refs)
        p = self._per_fold(fold, 1, lambda model, rows: model.p_female(images[rows], batch_size=batch_size))
        return p[:, 0], fold

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


def load_labeller(folder: str | Path, device: str = "cpu") -> CrossFittedInstrument:
    """Load what :meth:`CrossFittedInstrument.save` wrote (the ``instrument`` stage's output folder)."""
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


def train_labeller(
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
        ``(labeller, stats)``: ``seconds`` (all training), ``folds``, ``labels`` and, per fold model,
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


def label_units(labeller: CrossFittedInstrument, image_refs: Sequence[str], batch_size: int) -> list[np.ndarray]:
    """The forward passes :func:`label_images` makes over ``image_refs``, as row indices: for each fold model
    (ascending), the rows it labels in order, in chunks of ``batch_size``.

    Encoding each unit on its own (:func:`encode_units`) runs the image tower on exactly the batches one
    call over every image runs, so the units can be dealt to several processes
    (``classify.num_processes``): unit ``u`` to process ``u mod P``, the embeddings gathered by row and
    scored in one :func:`label_images` call (``image_vectors``). Labels and probabilities are then
    bit-identical to one call over every image, whatever ``P`` is. (Scoring each unit apart would not be:
    the similarity matrix product rounds differently with fewer rows, by about 1e-8.)

    Args:
        labeller: the cross-fitted instrument (its :meth:`CrossFittedInstrument.fold_for` rule).
        image_refs: the images to label (``"<shard>#<row>"``).
        batch_size: images per forward pass (``classify.batch_size``).

    Returns:
        ``int64`` row-index arrays, each of at most ``batch_size`` rows of one fold model, covering every
        row once.
    """
    if batch_size < 1:
        raise ValueError(f"classify.batch_size must be at least 1, got {batch_size}")
    fold = labeller.fold_for(list(image_refs))
    units = []
    for k in np.unique(fold).tolist():
        rows = np.flatnonzero(fold == k)
        units.extend(rows[start : start + batch_size] for start in range(0, len(rows), batch_size))
    return units


def encode_units(
    labeller: CrossFittedInstrument, image_refs: Sequence[str], units: Sequence[np.ndarray], batch_size: int
) -> np.ndarray:
    """Image embeddings of the rows of ``units`` (from :func:`label_units`), each unit one forward pass of
    its fold's model: ``(sum of unit sizes, dim)`` float32, rows in the order of the units."""
    refs = list(image_refs)
    vectors = []
    for rows in units:
        unit_refs = [refs[i] for i in rows]
        folds = np.unique(labeller.fold_for(unit_refs))
        if len(folds) != 1:
            raise ValueError(f"a label unit spans fold models {folds.tolist()}; units come from label_units")
        vectors.append(labeller.models[int(folds[0])].encode_images(load_images(unit_refs), batch_size))
    return np.concatenate(vectors) if vectors else np.zeros((0, 0), dtype=np.float32)


def label_images(
    labeller: CrossFittedInstrument,
    image_refs: Sequence[str],
    threshold: float,
    batch_size: int = 512,
    occupations: list[str] | None = None,
    asked: Sequence[str] | None = None,
    image_vectors: np.ndarray | None = None,
) -> pl.DataFrame:
    """Perceived gender (and optionally occupation) of the images behind ``image_refs``, out of sample.

    Args:
        labeller: the cross-fitted instrument.
        image_refs: the images (``"<shard>#<row>"``).
        threshold: the abstain threshold (``classify.abstain_threshold``; rule in
            :func:`label_from_p`).
        batch_size: images per forward pass.
        occupations: zero-shot occupation classes; None skips occupation.
        asked: with ``occupations``, the occupation each image was meant to show (for ``p_occupation``).
        image_vectors: with ``occupations``, the images' embeddings by their fold models (row-aligned with
            ``image_refs``; :func:`encode_units`, possibly from several processes) instead of loading and
            encoding the images here. The numbers are the same either way.

    Returns:
        One row per image, in order: ``p_female`` (Float64), ``label`` (female/male/abstain),
        ``instrument_fold`` (the model that labelled it), and with ``occupations``
        ``predicted_occupation`` (argmax) and, with ``asked``, ``p_occupation`` (probability of the asked one).
    """

    refs = list(image_refs)
    if image_vectors is not None and not occupations:
        raise ValueError("label_images: image_vectors need occupations (the one-pass path)")
    images = None
    if image_vectors is None:
        images = load_images(refs) if refs else np.zeros((0, 1, 1, 3), dtype=np.uint8)
    probs = np.zeros((0, len(occupations or [])))
    if not refs:
        p_female, fold = np.zeros(0), np.zeros(0, np.int64)
    elif occupations:  # each image through the image tower once, for both questions
        p_female, probs, fold = labeller.p_female_and_occupation(
            images, refs, occupations, batch_size, image_vectors=image_vectors
        )
    else:
        p_female, fold = labeller.p_female(images, refs, batch_size)
    columns = [
        pl.Series("p_female", p_female, dtype=pl.Float64),
        pl.Series("label", label_from_p(p_female, threshold).tolist(), dtype=pl.String),
        pl.Series("instrument_fold", fold, dtype=pl.Int64),
    ]
    if occupations:
        if asked is not None:
            unknown = sorted(set(asked) - set(occupations))
            if unknown:
                raise ValueError(f"asked occupations {unknown} are not among the zero-shot classes {occupations}")
            column = np.array([occupations.index(o) for o in asked], dtype=np.int64)
            columns.append(pl.Series("p_occupation", probs[np.arange(len(refs)), column], dtype=pl.Float64))
        columns.append(
            pl.Series("predicted_occupation", [occupations[i] for i in probs.argmax(axis=1)], dtype=pl.String)
        )
    return pl.DataFrame(columns)


def measure_labeller(
    labeller: CrossFittedInstrument,
    corpus: pl.DataFrame,
    config: InstrumentConfig,
    occupations: list[str],
    threshold: float,
    batch_size: int = 512,
) -> dict[str, Any]:
    """Accuracy and confusion rates of the labeller, on images no labelling model trained on.

    The headline rates (``accuracy``, ``abstain_rate``, ``tpr``, ``fpr``, ``confusion``, ``n``) are those
    of the labelling rule itself on the labelled set (:func:`biasloop.models.instrument.labelled_set`:
    the held-out split's ground truth, else ``instrument.labelled_csv``); they correct the shares.
    Also: ``per_fold`` (each model on the whole labelled set), ``out_of_fold`` (the training images,
    each labelled by its own fold's model, where ground truth exists: the labels ``classify_train``
    gives), ``occupation_accuracy`` on the held-out split, ``n_labelled_in_training`` (labelled images
    that some model trained on; they were labelled by a model that did not).

    Returns:
        The metrics; rates are None and ``status`` is ``unknown`` without labelled images.
    """

    metrics: dict[str, Any] = {
        "status": "unknown",
        "accuracy": None,
        "abstain_rate": None,
        "tpr": None,
        "fpr": None,
        "confusion": None,
        "n": 0,
        "per_fold": None,
        "out_of_fold": None,
    }
    labelled = labelled_set(corpus, config)
    if labelled is not None:
        refs, genders, source = labelled
        labels = label_images(labeller, refs, threshold, batch_size)
        metrics.update(
            confusion_rates(genders, labels["label"].to_list()),
            status="measured",
            labelled_source=source,
            n_labelled_in_training=sum(ref in labeller.fold_of_ref for ref in refs),
        )
        if labeller.folds > 1:
            images = load_images(refs)
            metrics["per_fold"] = [
                {
                    key: value
                    for key, value in evaluate_instrument(model, images, genders, threshold, batch_size).items()
                    if key in ("accuracy", "abstain_rate", "tpr", "fpr")
                }
                for model in labeller.models
            ]
    if labeller.fold_of_ref and "true_gender" in corpus.columns:
        trained = corpus.filter(
            pl.col("image_ref").is_in(list(labeller.fold_of_ref)) & pl.col("true_gender").is_in(["female", "male"])
        )
        if len(trained):
            labels = label_images(labeller, trained["image_ref"].to_list(), threshold, batch_size)
            rates = confusion_rates(trained["true_gender"].to_list(), labels["label"].to_list())
            metrics["out_of_fold"] = {key: rates[key] for key in ("accuracy", "abstain_rate", "tpr", "fpr", "n")}
    metrics["occupation_accuracy"] = None
    if "true_occupation" in corpus.columns and occupations:
        test = corpus_split(corpus, "test").filter(pl.col("true_occupation").is_in(occupations))
        if len(test):
            predicted = label_images(labeller, test["image_ref"].to_list(), threshold, batch_size, occupations)
            metrics["occupation_accuracy"] = float(
                np.mean(predicted["predicted_occupation"].to_numpy() == test["true_occupation"].to_numpy())
            )
            metrics["occupation_chance"] = 1.0 / len(occupations)
    return metrics
