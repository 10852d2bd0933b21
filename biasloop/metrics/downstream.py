"""Retrieval quality and group fairness of a downstream CLIP (the replacement study's measures).

- text-to-image recall@k, overall and per perceived-gender group, with the gap between groups;
- MaxSkew@k and NDKL (Geyik et al., 2019) of the groups among the images retrieved for a neutral query;
- zero-shot occupation accuracy per (occupation, gender) group (or per occupation and any sensitive
  features, e.g. skin tone or gender x tone), worst-group accuracy over groups with a minimum number of
  images, and one-vs-rest demographic parity and equalized odds differences, computed with Fairlearn.

Recalls, accuracies and differences are fractions in [0, 1]; MaxSkew and NDKL are in nats. Accuracies
carry Wilson 95% intervals (``_ci``), differences percentile bootstrap ones over the test images
(:mod:`biasloop.metrics.intervals`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from biasloop.core.io import json_float
from biasloop.metrics.intervals import wilson_interval

NO_GROUP = "none"


def _expected_hits(similarity: np.ndarray, correct: np.ndarray, ks: Sequence[int]) -> dict[int, np.ndarray]:
    """Per text, the chance that a correct image is among the top k, ties broken at random.

    With ``h`` wrong images scoring above the best correct image, and ``c`` correct and ``t`` wrong
    images tied at that score, the first correct image is at 0-based rank ``h + j`` where ``j`` is the
    position of the first of ``c`` correct items in a random order of ``c + t``:
    ``P(hit@k) = 1 - prod_{i < k-h} (t - i) / (c + t - i)`` for ``0 < k - h <= t`` (0 below, 1 above).
    With one correct image this is ``(k - h) / (t + 1)``, clipped to [0, 1].
    """
    best = np.where(correct, similarity, -np.inf).max(axis=1)
    higher = (similarity > best[:, None]).sum(axis=1)
    at_best = similarity == best[:, None]
    tied_correct = (at_best & correct).sum(axis=1)
    tied_wrong = (at_best & ~correct).sum(axis=1)
    hits = {}
    for k in ks:
        slots = k - higher  # places left for the tied group within the top k
        miss = np.ones(len(similarity))
        for i in range(max(k, 0)):
            active = i < np.minimum(slots, tied_wrong + 1)
            factor = np.clip(tied_wrong - i, 0, None) / np.maximum(tied_correct + tied_wrong - i, 1)
            miss = np.where(active, miss * factor, miss)
        hits[k] = np.where(slots <= 0, 0.0, np.where(slots > tied_wrong, 1.0, 1.0 - miss))
    return hits


def recall_at_k(
    similarity: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    groups: Sequence[str | None] | np.ndarray | None = None,
    captions: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Text-to-image recall@k where text ``i``'s true image is image ``i``.

    Args:
        similarity: ``(n_text, n_image)`` scores, higher is more similar, ``n_text <= n_image``.
        ks: the cut-offs.
        groups: a group label per text/image pair; pairs labelled ``none`` (or None) count overall but
            in no group.
        captions: the caption of every image (``n_image``; text ``i`` is ``captions[i]``). When given,
            an image whose caption is identical to the query is also correct: templated captions repeat
            ("a photo of a nurse"), and no model can tell which of their images was meant.

    Returns:
        ``{"recall@k": fraction}`` per k; with ``groups`` also ``by_group`` ({group: {"recall@k": ..}}),
        ``recall@k_gap`` (max minus min over the groups present; None with no group) and, when both
        ``female`` and ``male`` are present, ``recall@k_gap_signed`` (male minus female); with
        ``captions``, ``"correct": "identical caption"`` (else ``"own image"``).
        Ties with the true image count as broken at random (expected recall), so a model whose
        scores are all equal gets chance recall ``k / n_image`` (with one correct image per text).
    """
    similarity = np.asarray(similarity, dtype=float)
    if similarity.ndim != 2 or similarity.shape[0] > similarity.shape[1]:
        raise ValueError(f"similarity must be (n_text, n_image) with n_text <= n_image, got {similarity.shape}")
    n_text, n_image = similarity.shape
    if n_text == 0:
        raise ValueError("no texts to score")
    if captions is None:
        correct = np.zeros((n_text, n_image), dtype=bool)
        correct[np.arange(n_text), np.arange(n_text)] = True
    else:
        if len(captions) != n_image:
            raise ValueError(f"{len(captions)} captions for {n_image} images")
        _, caption_ids = np.unique(np.asarray(list(captions), dtype=object).astype(str), return_inverse=True)
        correct = caption_ids[:n_text, None] == caption_ids[None, :]
    hits = _expected_hits(similarity, correct, ks)
    out: dict[str, Any] = {f"recall@{k}": float(np.mean(hits[k])) for k in ks}
    out["correct"] = "own image" if captions is None else "identical caption"
    if groups is None:
        return out
    group_array = np.asarray([NO_GROUP if g is None else str(g) for g in groups], dtype=object)
    if len(group_array) != n_text:
        raise ValueError(f"{len(group_array)} group labels for {n_text} texts")
    present = sorted(set(group_array.tolist()) - {NO_GROUP})
    out["by_group"] = {
        group: {f"recall@{k}": float(np.mean(hits[k][group_array == group])) for k in ks} for group in present
    }
    for k in ks:
        values = [out["by_group"][group][f"recall@{k}"] for group in present]
        out[f"recall@{k}_gap"] = float(max(values) - min(values)) if values else None
        if {"female", "male"} <= set(present):
            out[f"recall@{k}_gap_signed"] = (
                out["by_group"]["male"][f"recall@{k}"] - out["by_group"]["female"][f"recall@{k}"]
            )
    return out


def _prefix_distributions(retrieved_groups: Sequence[str], group_set: Sequence[str]) -> np.ndarray:
    """``(len(retrieved), groups)``: row i-1 is the group distribution of the top i items."""
    retrieved = np.asarray(list(retrieved_groups), dtype=object)
    if len(retrieved) == 0:
        raise ValueError("no retrieved items")
    unknown = sorted(set(retrieved.tolist()) - set(group_set))
    if unknown:
        # An item outside the group set would leave the top-k distribution summing to less than 1.
        raise ValueError(f"retrieved items outside the group set {tuple(group_set)}: {unknown}")
    members = np.stack([retrieved == group for group in group_set], axis=1).astype(float)
    return np.cumsum(members, axis=0) / np.arange(1, len(retrieved) + 1)[:, None]


def _desired(desired: Sequence[float] | None, group_set: Sequence[str]) -> np.ndarray:
    if desired is None:
        return np.full(len(group_set), 1.0 / len(group_set))
    target = np.asarray(desired, dtype=float)
    if target.shape != (len(group_set),) or not np.isclose(target.sum(), 1.0) or (target <= 0).any():
        raise ValueError(f"desired proportions must be {len(group_set)} positive values summing to 1, got {desired}")
    return target


def max_skew_at_k(
    retrieved_groups: Sequence[str],
    k: int,
    desired: Sequence[float] | None = None,
    group_set: Sequence[str] = ("female", "male"),
) -> float:
    """MaxSkew@k (Geyik et al., 2019): ``max_g ln(p_g(top-k) / desired_g)``, in nats.

    Args:
        retrieved_groups: group of each retrieved item, best first; every item must be in ``group_set``.
        k: the cut-off (all items when fewer than k are given).
        desired: the target proportion of each group in ``group_set`` order; uniform by default.
        group_set: the groups.

    Returns:
        0 when the top k match the desired proportions, ``ln 2 = 0.693`` when all k come from one of two
        equally desired groups. Groups absent from the top k have skew -inf and so never the maximum.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    top_k = _prefix_distributions(list(retrieved_groups)[:k], group_set)[-1]
    with np.errstate(divide="ignore"):
        return float(np.max(np.log(top_k / _desired(desired, group_set))))


def ndkl(
    retrieved_groups: Sequence[str],
    desired: Sequence[float] | None = None,
    group_set: Sequence[str] = ("female", "male"),
) -> float:
    """Normalised discounted KL divergence of a ranking from the desired group proportions, in nats.

    ``(1/Z) sum_{i=1..k} KL(D_{top-i} || D) / log2(i + 1)`` with ``Z = sum_{i=1..k} 1 / log2(i + 1)``,
    k the number of retrieved items and ``0 log 0 = 0`` (Geyik et al., 2019).

    Args:
        retrieved_groups: group of each retrieved item, best first; every item must be in ``group_set``.
        desired: target proportions D in ``group_set`` order; uniform by default.
        group_set: the groups.

    Returns:
        0 for a ranking whose every prefix matches D; ``ln 2`` when every item is from one of two groups.
    """
    prefixes = _prefix_distributions(retrieved_groups, group_set)
    target = _desired(desired, group_set)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(prefixes > 0, prefixes * np.log(prefixes / target), 0.0)
    divergences = terms.sum(axis=1)
    weights = 1.0 / np.log2(np.arange(1, len(prefixes) + 1) + 1)
    return float(np.sum(weights * divergences) / np.sum(weights))


def _rates_defined(binary_true: np.ndarray, sensitive: np.ndarray) -> bool:
    """Whether every group has a positive and a negative example, so that TPR and FPR exist for it.

    Fairlearn scores an undefined rate as 0, which would turn "no men in this occupation" into an
    equalized-odds difference of 1.
    """
    for group in set(sensitive.tolist()):
        in_group = binary_true[sensitive == group]
        if in_group.min() == in_group.max():
            return False
    return True


def parity_differences(
    y_true: np.ndarray, y_pred: np.ndarray, sensitive: np.ndarray
) -> tuple[float | None, float | None]:
    """Mean over occupations of the one-vs-rest demographic parity and equalized odds differences.

    The same quantities as Fairlearn's ``demographic_parity_difference`` (max minus min over groups of
    P(predicted o)) and ``equalized_odds_difference`` (the larger of the TPR and FPR differences), in numpy,
    so a bootstrap can recompute them hundreds of times; an occupation whose rates are undefined for some
    group is left out of the equalized-odds mean (:func:`_rates_defined`).
    """
    present = sorted(set(sensitive.tolist()))
    masks = [sensitive == g for g in present]
    parity, odds = [], []
    for occupation in sorted(set(y_true.tolist())):
        positive, predicted = y_true == occupation, y_pred == occupation
        parity.append(max(predicted[m].mean() for m in masks) - min(predicted[m].mean() for m in masks))
        if _rates_defined(positive.astype(int), sensitive):
            tpr = [predicted[m & positive].mean() for m in masks]
            fpr = [predicted[m & ~positive].mean() for m in masks]
            odds.append(max(max(tpr) - min(tpr), max(fpr) - min(fpr)))
    return (float(np.mean(parity)) if parity else None), (float(np.mean(odds)) if odds else None)


def group_fairness(
    true_occupation: Sequence[str],
    predicted_occupation: Sequence[str],
    sensitive: Sequence[str] | Mapping[str, Sequence[str]],
    min_group_size: int = 1,
    n_boot: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Zero-shot occupation classification fairness across perceived gender (or any features), with Fairlearn.

    Args:
        true_occupation: occupation per image.
        predicted_occupation: the model's zero-shot occupation per image.
        sensitive: perceived gender per image (``female``/``male``; named ``gender`` below), or ``{name:
            labels}`` of any features (``{"tone": ..}``, ``{"gender": .., "tone": ..}``: MetricFrame columns;
            groups name every feature and the differences compare their intersections).
        min_group_size: the fewest images an (occupation, gender) group needs to enter the worst-group
            accuracy; an accuracy over one or two images is 0 or 1 by chance and would pin the minimum.

    Returns:
        A JSON-ready dict, every rate a fraction in [0, 1] (None where undefined):
        ``overall_accuracy``; ``accuracy_by_group``: ``[{occupation, gender, accuracy, n}]`` for each
        (true occupation, gender) pair with images (Fairlearn ``MetricFrame``); ``worst_group_accuracy``
        (their minimum over groups with at least ``min_group_size`` images; None when none has) with
        ``worst_group`` (``{occupation, gender, n}``), ``min_group_size`` and ``groups_too_small`` (the
        ``{occupation, gender, n}`` left out, reported rather than scored); ``per_occupation``: ``[{occupation, demographic_parity_difference,
        equalized_odds_difference}]``, one-vs-rest ("this occupation" vs. any other, since Fairlearn's
        parity metrics are binary) over all images, the equalized-odds difference None when some gender
        has no image of the occupation or none of other occupations; and the ``_mean`` / ``_max`` of
        both differences over occupations where they are defined. Intervals (95%): ``overall_accuracy_ci``,
        each group's ``ci`` and ``worst_group_accuracy_ci`` are Wilson intervals; with ``n_boot`` > 0,
        ``demographic_parity_difference_mean_ci`` and ``equalized_odds_difference_mean_ci`` are percentile
        bootstrap intervals over the images (``numpy.random.default_rng(seed)``; None otherwise).
    """
    from fairlearn.metrics import MetricFrame, count
    from sklearn.metrics import accuracy_score

    y_true = np.asarray(true_occupation, dtype=object)
    y_pred = np.asarray(predicted_occupation, dtype=object)
    features = _as_features(sensitive, len(y_true))
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true occupations, {len(y_pred)} predictions")
    if not len(y_true):
        raise ValueError("no images to evaluate")
    frame = MetricFrame(
        metrics={"accuracy": accuracy_score, "n": count},
        y_true=y_true.astype(str),
        y_pred=y_pred.astype(str),
        sensitive_features={"occupation": y_true.astype(str), **{k: v.astype(str) for k, v in features.items()}},
    )
    groups, names = accuracy_groups(frame, ("occupation", *features)), ("occupation", *features, "n")
    sensitive = _intersection_ids(features)
    per_occupation = _per_occupation_differences(y_true, y_pred, sensitive)

    def summary(key: str, reduce: Any) -> float | None:
        values = [r[key] for r in per_occupation if r[key] is not None]
        return float(reduce(values)) if values else None

    if min_group_size < 1:
        raise ValueError(f"min_group_size must be at least 1, got {min_group_size}")
    worst = min((g for g in groups if g["n"] >= min_group_size), key=lambda g: g["accuracy"], default=None)
    parity_ci, odds_ci = _parity_intervals(y_true, y_pred, sensitive, n_boot, seed)
    return {
        "overall_accuracy": float(frame.overall["accuracy"]),
        "overall_accuracy_ci": wilson_interval(int((y_true == y_pred).sum()), len(y_true)),
        "accuracy_by_group": groups,
        "worst_group_accuracy": worst["accuracy"] if worst else None,
        "worst_group_accuracy_ci": worst["ci"] if worst else None,
        "worst_group": {k: worst[k] for k in names} if worst else None,
        "min_group_size": int(min_group_size),
        "groups_too_small": [{k: g[k] for k in names} for g in groups if g["n"] < min_group_size],
        "per_occupation": per_occupation,
        "demographic_parity_difference_mean": summary("demographic_parity_difference", np.mean),
        "demographic_parity_difference_max": summary("demographic_parity_difference", np.max),
        "equalized_odds_difference_mean": summary("equalized_odds_difference", np.mean),
        "equalized_odds_difference_max": summary("equalized_odds_difference", np.max),
        "demographic_parity_difference_mean_ci": parity_ci,
        "equalized_odds_difference_mean_ci": odds_ci,
        "n_boot": int(n_boot),
    }


def _as_features(sensitive: Sequence[str] | Mapping[str, Sequence[str]], n: int) -> dict[str, np.ndarray]:
    """``{name: labels}`` as object arrays: a mapping's features (at least one), a sequence as ``gender``;
    each must label the ``n`` images."""
    if isinstance(sensitive, Mapping) and not sensitive:
        raise ValueError("no sensitive feature given")
    features = sensitive if isinstance(sensitive, Mapping) else {"gender": sensitive}
    arrays = {name: np.asarray(labels, dtype=object) for name, labels in features.items()}
    wrong = {name: len(labels) for name, labels in arrays.items() if len(labels) != n}
    if wrong:
        raise ValueError(f"{n} true occupations but labels of other lengths: {wrong}")
    return arrays


def _intersection_ids(features: Mapping[str, np.ndarray]) -> np.ndarray:
    """Per image, its group for the one-vs-rest differences: one feature's own labels (so gender's numbers
    are as they were), or an integer naming the combination of several features' labels."""
    if len(features) == 1:
        return next(iter(features.values()))
    _, ids = np.unique(np.stack([v.astype(str) for v in features.values()], axis=1), axis=0, return_inverse=True)
    return ids.reshape(-1)


def accuracy_groups(frame: Any, names: Sequence[str] = ("occupation", "gender")) -> list[dict[str, Any]]:
    """Accuracy, n and Wilson interval of each group with images, from a Fairlearn ``MetricFrame`` with
    metrics ``accuracy`` and ``n`` and the sensitive features ``names`` (each row names the group by them)."""
    groups = []
    for row in frame.by_group.reset_index().to_dict("records"):
        # Depending on the Fairlearn version, (occupation, gender) pairs without images appear as nan.
        if row["n"] is None or np.isnan(row["n"]) or int(row["n"]) == 0:
            continue
        n = int(row["n"])
        groups.append(
            {
                **{name: str(row[name]) for name in names},
                "accuracy": float(row["accuracy"]),
                "n": n,
                "ci": wilson_interval(int(round(float(row["accuracy"]) * n)), n),
            }
        )
    return groups


def _per_occupation_differences(y_true: np.ndarray, y_pred: np.ndarray, sensitive: np.ndarray) -> list[dict[str, Any]]:
    """One-vs-rest demographic parity and equalized odds differences per occupation (Fairlearn); the
    equalized-odds difference None where a gender lacks positives or negatives."""
    from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

    per_occupation = []
    for occupation in sorted(set(y_true.tolist())):
        binary_true = (y_true == occupation).astype(int)
        binary_pred = (y_pred == occupation).astype(int)
        parity = demographic_parity_difference(binary_true, binary_pred, sensitive_features=sensitive)
        odds = (
            equalized_odds_difference(binary_true, binary_pred, sensitive_features=sensitive)
            if _rates_defined(binary_true, sensitive)
            else np.nan
        )
        per_occupation.append(
            {
                "occupation": str(occupation),
                "demographic_parity_difference": json_float(parity),
                "equalized_odds_difference": json_float(odds),
            }
        )
    return per_occupation


def _parity_intervals(
    y_true: np.ndarray, y_pred: np.ndarray, sensitive: np.ndarray, n_boot: int, seed: int
) -> tuple[list[float] | None, list[float] | None]:
    """95% percentile bootstrap intervals (images resampled) of the mean parity and odds differences;
    ``(None, None)`` when ``n_boot`` is 0."""
    rng = np.random.default_rng(seed)
    parity_ci = odds_ci = None
    if n_boot > 0:
        replicates = [
            parity_differences(y_true[i], y_pred[i], sensitive[i])
            for i in (rng.integers(0, len(y_true), size=len(y_true)) for _ in range(n_boot))
        ]
        parity_ci, odds_ci = (_percentiles([r[j] for r in replicates]) for j in (0, 1))
    return parity_ci, odds_ci


def _percentiles(values: Sequence[float | None]) -> list[float] | None:
    """2.5% and 97.5% percentiles of the defined values (None when there are none)."""
    kept = [v for v in values if v is not None and np.isfinite(v)]
    return [float(q) for q in np.quantile(kept, [0.025, 0.975])] if kept else None
