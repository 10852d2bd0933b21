"""Per-image labels in, the amplification table out: one call for notebooks, ``biasloop audit`` and tests.

In the style of Fairlearn's ``MetricFrame`` (``by_group`` / ``overall``): :func:`amplification_frame` takes
a DataFrame (polars or pandas) with one row per image and returns an :class:`AmplificationFrame` with the
per-occupation table (``by_occupation``: counts, shares with 95% intervals, differences), the overall
estimands (``overall``: the shift and gap with intervals and p-values, raw A_abs, the aggregates), the
same on confusion-corrected shares (``corrected``) and the shift's decomposition where the data allow it
(``decomposition``). The numbers come from the functions the paradox stage calls
(:func:`biasloop.metrics.amplification.amplification_table`, :func:`biasloop.metrics.paired.
paired_amplification_table`, :func:`biasloop.metrics.decomposition.decompose`) with the same seed
streams (``amplification-bootstrap``; ``decomposition-bootstrap``, 0), so a pairing analysed here and in
``metrics/paradox.json`` gives the same values. All values are fractions (0.10 = 10 pp).

The rows (``labels``):

- ``occupation``; ``label`` (``female``/``male``/``abstain``: what the instrument said of the image);
- ``side``: ``gen`` (a generated image) or ``train`` (a reference image: a training image, a corpus
  image); without the column every row is ``gen`` and ``reference`` gives the other side as counts;
- ``pair`` (optional): a ``train`` row and a ``gen`` row with the same ``occupation`` and ``pair`` are one
  pair (a caption and the image made from it): the table is then paired (pairs resampled whole);
- for the decomposition (optional): ``indicator`` on ``train`` rows (the caption's gender indicator,
  ``none`` when unmarked: needed unless paired), and in the glyph world ``true_gender`` (``train``) and
  ``oracle_label`` (``gen``) to split the generator from the instrument.

``reference``: per-occupation counts ``occupation, n_female, n_male[, n_abstain]`` (a training-counts
CSV, the BLS table turned into counts): no decomposition then (counts carry no captions to split by).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import polars as pl

from biasloop.core.labels import LABELS
from biasloop.core.seeds import stream_seed
from biasloop.metrics.amplification import amplification_table, count_table
from biasloop.metrics.decomposition import decompose
from biasloop.metrics.paired import paired_amplification_table
from biasloop.metrics.paradox import headline

SIDES = ("train", "gen")
NO_IMAGES_REASON = "the reference is per-occupation counts, not images: no captions or labels to split the shift by"


@dataclasses.dataclass(frozen=True)
class AmplificationFrame:
    """What :func:`amplification_frame` returns (fractions; intervals 95%)."""

    by_occupation: pl.DataFrame  # one row per occupation: counts, share_train/_gen with _lo/_hi, difference
    overall: dict[str, Any]  # estimands {shift, gap, a_abs_raw}, aggregates, n_occupations, n_images_*
    corrected: dict[str, Any] | None  # the same on confusion-corrected shares (None without confusion)
    decomposition: dict[str, Any]  # decompose()'s "decomposition", or {"available": False, "reason": ...}
    ideal: dict[str, Any] | None  # decompose()'s "ideal" (the ideal learner), when there is one
    paired: bool
    table: dict[str, Any]  # the full amplification table (per_occupation rows, diagnostics)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: everything but the ``by_occupation`` frame, whose rows are ``table["per_occupation"]``."""
        return {
            "paired": self.paired,
            "overall": self.overall,
            "corrected": self.corrected,
            "decomposition": self.decomposition,
            "ideal": self.ideal,
            "table": self.table,
        }


def _as_polars(frame: Any, what: str) -> pl.DataFrame:
    if isinstance(frame, pl.DataFrame):
        return frame
    if hasattr(frame, "to_dict") and hasattr(frame, "columns"):  # pandas
        return pl.from_pandas(frame)
    raise TypeError(f"{what}: expected a polars or pandas DataFrame, got {type(frame).__name__}")


def _checked_labels(labels: pl.DataFrame) -> pl.DataFrame:
    """``labels`` with a ``side`` column, every label and side known; errors name the bad value."""
    missing = [c for c in ("occupation", "label") if c not in labels.columns]
    if missing:
        raise ValueError(f"labels: missing column(s) {missing} (has {labels.columns})")
    if "side" not in labels.columns:
        labels = labels.with_columns(pl.lit("gen").alias("side"))
    for column, allowed in (("label", LABELS), ("side", SIDES)):
        bad = labels.filter(~pl.col(column).is_in(list(allowed)) | pl.col(column).is_null())[column].unique()
        if len(bad):
            raise ValueError(f"labels: {column} {bad.to_list()[:5]} not in {list(allowed)}")
    if labels["occupation"].null_count():
        raise ValueError("labels: an image without an occupation")
    return labels


def _pairs(train: pl.DataFrame, gen: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The aligned ``(train, gen)`` rows of the pairs (one each per occupation and pair id)."""
    for side, frame in (("train", train), ("gen", gen)):
        if frame.select("occupation", "pair").is_duplicated().any():
            raise ValueError(f"labels: a pair id appears twice on the {side} side of one occupation")
    keys = gen.select("occupation", "pair").join(train.select("occupation", "pair"), on=["occupation", "pair"])
    if keys.is_empty():
        raise ValueError("labels: no pair id is on both sides")
    on = ["occupation", "pair"]
    return keys.join(train, on=on, how="left", maintain_order="left"), keys.join(
        gen, on=on, how="left", maintain_order="left"
    )


def amplification_frame(
    labels: Any,
    reference: Any = None,
    *,
    confusion: dict[str, Any] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    correct_reference: bool = True,
) -> AmplificationFrame:
    """The amplification of the ``gen`` images against the reference (see the module docstring).

    Args:
        labels: per-image rows (polars or pandas).
        reference: per-occupation counts of the reference side, when ``labels`` has no ``train`` rows.
        confusion: the instrument's ``{"tpr", "fpr"[, "counts"]}`` (``metrics/instrument.json``'s
            confusion, :func:`biasloop.metrics.amplification.read_confusion`): adds ``corrected``.
        n_boot: bootstrap replicates (0: no intervals).
        seed: ``base.seed``; the tables draw from stream ``amplification-bootstrap``, the decomposition
            from ``decomposition-bootstrap``, 0.
        correct_reference: correct the reference shares too (False when they are not the instrument's
            labels: ground truth, the labour force).

    Raises:
        ValueError: a missing column, an unknown label or side, no reference, two references, a repeated
            pair id, or what the table functions reject (naming it).
    """
    labels = _checked_labels(_as_polars(labels, "labels"))
    train, gen = (labels.filter(pl.col("side") == side) for side in SIDES)
    if gen.is_empty():
        raise ValueError("labels: no generated (side 'gen') images")
    if reference is not None and not train.is_empty():
        raise ValueError("labels: 'train' rows and a reference of counts: give one reference")
    if reference is None and train.is_empty():
        raise ValueError("no reference: give 'train' rows in labels or per-occupation counts as reference")
    paired = "pair" in labels.columns and not train.is_empty()
    table_seed = stream_seed(seed, "amplification-bootstrap")
    if paired:
        train, gen = _pairs(train, gen)
        pairs = pl.DataFrame(
            {"occupation": gen["occupation"], "train_label": train["label"], "gen_label": gen["label"]}
        )
        table = paired_amplification_table(
            pairs, n_boot=n_boot, seed=table_seed, confusion=confusion, correct_train=correct_reference
        )
    else:
        counts = count_table(train) if reference is None else _as_polars(reference, "reference")
        table = amplification_table(
            counts, count_table(gen), n_boot=n_boot, seed=table_seed, confusion=confusion,
            correct_train=correct_reference,
        )  # fmt: skip
    if reference is None:
        split = decompose(
            train, gen, paired=paired, n_boot=n_boot, seed=stream_seed(seed, "decomposition-bootstrap", 0)
        )
    else:
        split = {"decomposition": {"available": False, "reason": NO_IMAGES_REASON}, "ideal": None}
    return AmplificationFrame(
        by_occupation=occupation_frame(table),
        overall=headline(table),
        corrected=headline(table.get("corrected")) or None,
        decomposition=split["decomposition"],
        ideal=split["ideal"],
        paired=paired,
        table=table,
    )


def occupation_frame(table: dict[str, Any]) -> pl.DataFrame:
    """A table's ``per_occupation`` rows as a frame; each ``*_ci`` pair split into ``*_lo`` and ``*_hi``,
    and, with a ``corrected`` table, its ``share_train``/``share_gen`` as ``*_corrected`` columns."""
    rows = []
    corrected = {r["occupation"]: r for r in (table.get("corrected") or {}).get("per_occupation", [])}
    for row in table["per_occupation"]:
        flat: dict[str, Any] = {}
        for key, value in row.items():
            if key.endswith("_ci"):
                flat[f"{key[:-3]}_lo"], flat[f"{key[:-3]}_hi"] = value
            else:
                flat[key] = value
        if corrected:
            other = corrected.get(row["occupation"], {})
            flat["share_train_corrected"] = other.get("share_train")
            flat["share_gen_corrected"] = other.get("share_gen")
        rows.append(flat)
    return pl.DataFrame(rows, infer_schema_length=None)
