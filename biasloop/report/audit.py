"""One-shot audit of images made outside the pipeline (``biasloop audit``): label, compare, report.

Steps (:func:`run_audit`):

1. The images: ``--images DIR`` with its ``manifest.csv`` (``prompt_id,file``) and ``--prompts FILE``
   (``biasloop prompts export``'s CSV/JSONL), checked and read by the ``images`` generator backend
   (:class:`biasloop.models.generators.image_folder.ImageFolderGenerator`: the same missing / extra /
   unreadable / wrong-size rules, error or recorded skip).
2. Each image labelled by the configured instrument (``artifacts/instrument``: any backend, cross-fitted;
   ``label.abstain_threshold``), with a progress bar over images.
3. The amplification against the reference (:func:`read_reference`), per pairing, with
   :func:`biasloop.metrics.frame.amplification_frame`; with the instrument's confusion rates
   (``metrics/instrument.json``) also on corrected shares.
4. ``audit.json`` and a self-contained ``audit.html`` (:mod:`biasloop.report.audit_html`).

References (``--reference``):

- a counts CSV (``occupation,n_female,n_male[,n_abstain]``: e.g. a training set's counts from the same
  instrument): one pairing, ``prompt_vs_reference``; the reference shares are corrected too;
- ``bls`` (or ``bls:PATH``): the labour force's share of women per occupation (BLS, ``data/occupations``),
  entered as counts of :data:`BLS_WORKERS` workers (their sampling noise negligible beside the images'),
  never corrected (not the instrument's labels): "compared with the labour force";
- an ingested corpus (a folder with ``captions.parquet`` and its image shards, :func:`corpus_reference`):
  the training captions that mention each occupation (keyword retrieval with the captions' gender
  indicators, ``retrieve`` params), their images labelled by the same instrument: the ``keyword``
  pairings (neutral prompts; captions as prompts paired by ``source_id``) and the decomposition;
- a corpus's classified selections (``label_train``'s ``predictions.parquet``; with ``--matches``,
  retrieve's ``matches.parquet`` for the captions' gender indicators): every pairing of
  :data:`biasloop.metrics.paradox.PAIRINGS` the images allow (neutral prompts against keyword captions and
  nearest neighbours, captions as prompts paired with their own training image by ``source_id``), and
  the decomposition of each shift. Counts and BLS carry no captions: no decomposition.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from biasloop.core.io import write_json
from biasloop.metrics.frame import AmplificationFrame, amplification_frame
from biasloop.metrics.paradox import PAIRED_BY_SOURCE, PAIRINGS, with_indicators

log = logging.getLogger(__name__)

BLS_WORKERS = 1_000_000  # workers per occupation the BLS shares stand for (sampling noise ~0.05 pp)
DEFAULT_BLS_TABLE = "data/occupations/occupations_bls.tsv"
REFERENCE_KINDS = ("counts", "bls", "corpus")


@dataclasses.dataclass(frozen=True)
class Reference:
    """What the generated images are compared with (see the module docstring)."""

    kind: str  # one of REFERENCE_KINDS
    source: str  # the file it came from
    counts: pl.DataFrame | None = None  # counts and bls: occupation, n_female, n_male, n_abstain
    predictions: pl.DataFrame | None = None  # corpus: selection, occupation, id, label[, indicator, true_gender]

    @property
    def correct(self) -> bool:
        """Whether the reference shares are the instrument's labels, to be corrected like the images'."""
        return self.kind != "bls"


def read_reference(spec: str, occupations: list[str], matches: str | None = None) -> Reference:
    """The reference named by ``spec``: ``bls``/``bls:PATH``, a ``.csv`` of counts, or a ``.parquet`` of
    classified selections (``matches``: retrieve's matches for the indicators). Errors name the file."""
    if spec == "bls" or spec.startswith("bls:"):
        from biasloop.data.world import read_occupation_shares

        path = spec[4:] or DEFAULT_BLS_TABLE
        shares = read_occupation_shares(path)
        known = [o for o in occupations if o in shares]
        women = [int(round(shares[o] * BLS_WORKERS)) for o in known]
        counts = pl.DataFrame(
            {"occupation": known, "n_female": women, "n_male": [BLS_WORKERS - w for w in women]},
            schema={"occupation": pl.String, "n_female": pl.Int64, "n_male": pl.Int64},
        ).with_columns(pl.lit(0, dtype=pl.Int64).alias("n_abstain"))
        return Reference("bls", path, counts=counts)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: reference not found (a counts .csv, a predictions .parquet, or bls)")
    if path.suffix.lower() == ".parquet":
        predictions = pl.read_parquet(path)
        missing = [c for c in ("selection", "occupation", "id", "label") if c not in predictions.columns]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}: not label_train's predictions")
        if matches is not None:
            predictions = with_indicators(predictions, pl.read_parquet(matches))
        return Reference("corpus", str(path), predictions=predictions)
    counts = pl.read_csv(path, infer_schema_length=None)
    missing = [c for c in ("occupation", "n_female", "n_male") if c not in counts.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing} (a counts CSV: occupation,n_female,n_male[,n_abstain])")
    return Reference("counts", str(path), counts=counts)


def corpus_reference(
    folder: str | Path, occupations: list[str], cross_fitted: Any, retrieve: Any, *, threshold: float, batch_size: int
) -> Reference:
    """The ``keyword`` selection of an ingested corpus, labelled by the instrument (see the module docstring).

    Args:
        folder: a corpus folder (``captions.parquet``: ``id, caption, image_ref[, split, true_gender]``).
        occupations: the audited occupations.
        cross_fitted: the cross-fitted instrument (a training image is labelled by the fold model that never
            saw it, as in ``label_train``).
        retrieve: the ``retrieve`` params (plurals, first names, the split searched).
        threshold, batch_size: the ``label`` params.
    """
    from biasloop.data.retrieval import retrieve_lazy
    from biasloop.models.instrument import label_images

    path = Path(folder) / "captions.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (an ingested corpus folder has a captions.parquet)")
    corpus = pl.read_parquet(path)
    if retrieve.split is not None and "split" in corpus.columns:
        corpus = corpus.filter(pl.col("split") == retrieve.split)
    if "true_gender" not in corpus.columns:
        corpus = corpus.with_columns(true_gender=pl.lit(None, dtype=pl.String))
    matches = retrieve_lazy(corpus.lazy(), occupations, retrieve.plurals, retrieve.first_names).collect()
    if matches.is_empty():
        raise ValueError(f"{path}: no caption mentions any of {occupations}")
    images = matches.select("id").unique().sort("id").join(corpus.select("id", "image_ref", "true_gender"), on="id")
    labels = label_images(cross_fitted, images["image_ref"].to_list(), threshold, batch_size=batch_size)
    per_image = pl.concat([images.select("id", "true_gender"), labels.select("label")], how="horizontal")
    predictions = matches.select("occupation", "id", "indicator", selection=pl.lit("keyword")).join(
        per_image, on="id", how="left"
    )
    return Reference("corpus", str(folder), predictions=predictions)


def classify_images(
    folder: str | Path,
    prompts: pl.DataFrame,
    cross_fitted: Any,
    *,
    image_size: int,
    threshold: float,
    batch_size: int = 512,
    on_error: str = "error",
    progress: bool = True,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Label the images of ``folder`` requested by ``prompts`` (an export).

    Returns:
        ``(labels, import report)``: one row per served image (``prompt_id, prompt_kind, occupation,
        source_id, file, p_female, label``) and the backend's report (requested, served, and every
        missing, unreadable, wrong-size or extra image by name).
    """
    from tqdm.auto import tqdm

    from biasloop.models.generators import GeneratorConfig
    from biasloop.models.generators.image_folder import ImageFolderGenerator
    from biasloop.models.instrument import label_from_p

    config = GeneratorConfig(backend="images", images=str(folder), image_size=image_size, images_on_error=on_error)
    server = ImageFolderGenerator(config)
    report = server.check_requests(prompts["prompt"].to_list(), prompts["seed"].to_list())
    if not report.kept:
        raise ValueError(f"{folder}: none of the {report.n_requested} exported images could be read")
    served = prompts[report.kept]
    index = server.index()
    p_female = np.zeros(len(served))
    with tqdm(total=len(served), desc="audit: labelling images", unit="image", disable=not progress) as bar:
        for start in range(0, len(served), batch_size):
            chunk = served[start : start + batch_size]
            images = server.generate(chunk["prompt"].to_list(), chunk["seed"].to_list())
            p_female[start : start + len(chunk)], _ = cross_fitted.p_female(
                images, chunk["prompt_id"].to_list(), batch_size
            )
            bar.update(len(chunk))
    labels = served.select("prompt_id", "prompt_kind", "occupation", "source_id").with_columns(
        pl.Series("file", [index[k] for k in served["prompt_id"]], dtype=pl.String),
        pl.Series("p_female", p_female, dtype=pl.Float64),
        pl.Series("label", label_from_p(p_female, threshold).tolist(), dtype=pl.String),
    )
    return labels, report.to_dict()


def audit_pairings(
    labels: pl.DataFrame, reference: Reference, confusion: dict[str, Any] | None, n_boot: int, seed: int
) -> dict[str, AmplificationFrame]:
    """``{pairing: frame}`` of the labelled images against ``reference`` (see the module docstring)."""
    gen = labels.select("occupation", "label", "prompt_kind", pl.col("source_id").alias("pair"), side=pl.lit("gen"))
    if reference.kind != "corpus":
        neutral = gen.filter(pl.col("prompt_kind") == "neutral")
        if neutral.is_empty():
            raise ValueError("no neutral-prompt images to compare with the reference")
        frame = amplification_frame(
            neutral.select("occupation", "label"), reference.counts, confusion=confusion, n_boot=n_boot, seed=seed,
            correct_reference=reference.correct,
        )  # fmt: skip
        return {"prompt_vs_reference": frame}
    train = reference.predictions
    out = {}
    for name, (kind, selection) in PAIRINGS.items():
        side_gen = gen.filter(pl.col("prompt_kind") == kind)
        side_train = train.filter(pl.col("selection") == selection)
        if side_gen.is_empty() or side_train.is_empty():
            continue
        side_train = side_train.with_columns(pl.col("id").alias("pair"), side=pl.lit("train"))
        keep = ["side", "occupation", "label", "pair"]
        keep += [c for c in ("indicator", "true_gender") if c in side_train.columns]
        rows = pl.concat(
            [side_train.select(keep), side_gen.select("side", "occupation", "label", "pair")], how="diagonal"
        )
        if name not in PAIRED_BY_SOURCE:
            rows = rows.drop("pair")
        out[name] = amplification_frame(rows, confusion=confusion, n_boot=n_boot, seed=seed)
    if not out:
        raise ValueError(f"{reference.source}: no pairing of the images' prompt kinds with its selections")
    return out


def audit_result(
    labels: pl.DataFrame,
    frames: dict[str, AmplificationFrame],
    reference: Reference,
    imported: dict[str, Any],
    instrument: dict[str, Any] | None,
) -> dict[str, Any]:
    """The JSON of an audit: inputs, the import report, the instrument, and each pairing's frame."""
    return {
        "reference": {"kind": reference.kind, "source": reference.source, "corrected": reference.correct},
        "images": imported,
        "n_labelled": len(labels),
        "label_counts": dict(labels.group_by("label").len().sort("label").rows()),
        "instrument": instrument,
        "pairings": {name: frame.to_dict() for name, frame in frames.items()},
    }


def run_audit(
    images: str | Path,
    prompts: pl.DataFrame,
    reference: Reference,
    cross_fitted: Any,
    out: str | Path,
    *,
    labelling: Any,
    image_size: int,
    confusion: dict[str, Any] | None,
    instrument: dict[str, Any] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    on_error: str = "error",
    progress: bool = True,
) -> dict[str, Any]:
    """Steps 1-4 of the module docstring; writes ``out/audit.json``, ``out/labels.csv`` and ``out/audit.html``
    (with its figures) and returns the JSON's dict. ``labelling``: the ``label`` params section."""
    from biasloop.report.audit_html import write_audit_page

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels, imported = classify_images(
        images, prompts, cross_fitted, image_size=image_size, threshold=labelling.abstain_threshold,
        batch_size=labelling.batch_size, on_error=on_error, progress=progress,
    )  # fmt: skip
    frames = audit_pairings(labels, reference, confusion, n_boot, seed)
    result = audit_result(labels, frames, reference, imported, instrument)
    labels.write_csv(out / "labels.csv")
    write_json(out / "audit.json", result)
    write_audit_page(result, out / "audit.html")
    return result
