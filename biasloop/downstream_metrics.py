"""Retrieval quality and group fairness of a downstream CLIP (the replacement study's measures).

- text-to-image recall@k, overall and per perceived-gender group, with the gap between groups;
- MaxSkew@k and NDKL (Geyik et al., 2019) of the groups among the images retrieved for a neutral query;
- zero-shot occupation accuracy per (occupation, gender) group, worst-group accuracy, and one-vs-rest
  demographic parity and equalized odds differences, computed with Fairlearn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def recall_at_k(
    similarity: np.ndarray, ks: Sequence[int] = (1, 5, 10), groups: Sequence[str] | np.ndarray | None = None
) -> dict[str, Any]:
    """Text-to-image recall@k where text ``i``'s true image is image ``i``.

    Args:
        similarity: ``(n_text, n_image)`` scores, higher is more similar.
        ks: the cut-offs.
        groups: a group label per pair; rows labelled ``none`` count overall but not per group.

    Returns:
        ``{"recall@k": fraction}`` per k; with ``groups`` also ``by_group`` (per group recall),
        ``recall@k_gap`` (max minus min over groups) and, when both ``female`` and ``male`` are
        present, ``recall@k_gap_signed`` (male minus female).
    """
    similarity = np.asarray(similarity, dtype=float)
    n = similarity.shape[0]
    true_scores = similarity[np.arange(n), np.arange(n)]
    # Rank = how many images score strictly higher than the true one (ties resolved in its favour).
    rank = (similarity > true_scores[:, None]).sum(axis=1)
    out: dict[str, Any] = {f"recall@{k}": float(np.mean(rank < k)) for k in ks}
    if groups is not None:
        groups = np.asarray(groups, dtype=object)
        present = sorted(g for g in set(groups.tolist()) if g not in (None, "none"))
        out["by_group"] = {g: {f"recall@{k}": float(np.mean(rank[groups == g] < k)) for k in ks} for g in present}
        for k in ks:
            values = [out["by_group"][g][f"recall@{k}"] for g in present]
            out[f"recall@{k}_gap"] = float(max(values) - min(values)) if values else None
            if {"female", "male"} <= set(present):
                out[f"recall@{k}_gap_signed"] = out["by_group"]["male"][f"recall@{k}"] - out["by_group"]["female"][f"recall@{k}"]
    return out


def _distribution(retrieved: Sequence[str], group_set: Sequence[str]) -> np.ndarray:
    retrieved = list(retrieved)
    return np.array([sum(1 for r in retrieved if r == g) for g in group_set], dtype=float) / max(len(retrieved), 1)


def _desired(desired: Sequence[float] | None, group_set: Sequence[str]) -> np.ndarray:
    if desired is None:
        return np.full(len(group_set), 1.0 / len(group_set))
    desired = np.asarray(desired, dtype=float)
    if desired.shape != (len(group_set),) or not np.isclose(desired.sum(), 1.0):
        raise ValueError(f"desired proportions must be {len(group_set)} values summing to 1")
    return desired


def max_skew_at_k(
    retrieved_groups: Sequence[str],
    k: int,
    desired: Sequence[float] | None = None,
    group_set: Sequence[str] = ("female", "male"),
) -> float:
    """MaxSkew@k: ``max_g ln(p_g(top-k) / desired_g)`` (Geyik et al., 2019).

    0 when the top k match the desired proportions (uniform by default); ``ln 2 = 0.693`` when all k
    images come from one of two groups. Groups absent from the top k contribute ``-inf`` and so never
    the maximum.
    """
    top = list(retrieved_groups)[:k]
    if not top:
        raise ValueError("no retrieved items")
    observed = _distribution(top, group_set)
    target = _desired(desired, group_set)
    with np.errstate(divide="ignore"):
        skews = np.log(observed / target)
    return float(np.max(skews))


def ndkl(
    retrieved_groups: Sequence[str], desired: Sequence[float] | None = None, group_set: Sequence[str] = ("female", "male")
) -> float:
    """Normalised discounted KL divergence of a ranking from the desired group proportions.

    ``(1/Z) sum_{i=1..k} KL(D_{top-i} || D) / log2(i + 1)`` with ``Z = sum_i 1 / log2(i + 1)`` and
    ``0 log 0 = 0`` (Geyik et al., 2019). 0 for a ranking whose every prefix matches ``D``.
    """
    retrieved = list(retrieved_groups)
    if not retrieved:
        raise ValueError("no retrieved items")
    target = _desired(desired, group_set)
    total, normaliser = 0.0, 0.0
    for i in range(1, len(retrieved) + 1):
        weight = 1.0 / np.log2(i + 1)
        prefix = _distribution(retrieved[:i], group_set)
        nonzero = prefix > 0
        total += weight * float(np.sum(prefix[nonzero] * np.log(prefix[nonzero] / target[nonzero])))
        normaliser += weight
    return total / normaliser


def group_fairness(
    true_occupation: Sequence[str], predicted_occupation: Sequence[str], gender: Sequence[str]
) -> dict[str, Any]:
    """Zero-shot occupation classification fairness across perceived gender, with Fairlearn.

    Args:
        true_occupation: occupation per image.
        predicted_occupation: the model's zero-shot occupation per image.
        gender: sensitive feature per image (``female``/``male``).

    Returns:
        ``overall_accuracy``, ``accuracy_by_group`` (per occupation x gender, with n),
        ``worst_group_accuracy``, and per occupation (one-vs-rest, Fairlearn's binary metrics)
        ``demographic_parity_difference`` and ``equalized_odds_difference`` with their mean and max.
    """
    from fairlearn.metrics import MetricFrame, count, demographic_parity_difference, equalized_odds_difference

    y_true = np.asarray(true_occupation, dtype=object)
    y_pred = np.asarray(predicted_occupation, dtype=object)
    sensitive = np.asarray(gender, dtype=object)
    correct = (y_true == y_pred).astype(int)
    frame = MetricFrame(
        metrics={"accuracy": lambda t, p: float(np.mean(t == p)) if len(t) else float("nan"), "n": count},
        y_true=correct,
        y_pred=np.ones_like(correct),
        sensitive_features={"occupation": y_true, "gender": sensitive},
    )
    by_group = frame.by_group.reset_index()
    groups = [
        {"occupation": str(r["occupation"]), "gender": str(r["gender"]), "accuracy": float(r["accuracy"]), "n": int(r["n"])}
        for r in by_group.to_dict("records")
        if int(r["n"]) > 0
    ]
    per_occupation = []
    for occupation in sorted(set(y_true.tolist())):
        binary_true = (y_true == occupation).astype(int)
        binary_pred = (y_pred == occupation).astype(int)
        per_occupation.append({
            "occupation": str(occupation),
            "demographic_parity_difference": float(
                demographic_parity_difference(binary_true, binary_pred, sensitive_features=sensitive)
            ),
            "equalized_odds_difference": float(
                equalized_odds_difference(binary_true, binary_pred, sensitive_features=sensitive)
            ),
        })
    dpd = [r["demographic_parity_difference"] for r in per_occupation]
    eod = [r["equalized_odds_difference"] for r in per_occupation]
    return {
        "overall_accuracy": float(np.mean(correct)) if len(correct) else None,
        "accuracy_by_group": groups,
        "worst_group_accuracy": min((g["accuracy"] for g in groups), default=None),
        "per_occupation": per_occupation,
        "demographic_parity_difference_mean": float(np.nanmean(dpd)) if dpd else None,
        "demographic_parity_difference_max": float(np.nanmax(dpd)) if dpd else None,
        "equalized_odds_difference_mean": float(np.nanmean(eod)) if eod else None,
        "equalized_odds_difference_max": float(np.nanmax(eod)) if eod else None,
    }
