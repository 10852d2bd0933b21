"""Scoring the captioning task of a generation (Chen et al., CVPR 2024): a trained captioner's quality and
gender bias (``captioner@N`` trains it: :func:`biasloop.models.captioner.make_captioner`).

Quality: BLEU-4, ROUGE-L and CIDEr-D against the held-out human captions (:mod:`biasloop.metrics.caption_quality`);
bias: gender misprediction Error and Ratio (:mod:`biasloop.metrics.caption_bias`) and LIC_M, LIC_D and
leakage (:func:`biasloop.metrics.caption_bias.caption_leakage`). Data helpers: :mod:`biasloop.metrics.evaluation`.
"""

from __future__ import annotations

import logging
from typing import Any

import polars as pl

from biasloop.core.io import load_images, timed
from biasloop.core.seeds import stream_seed

log = logging.getLogger(__name__)


# The columns of the captions frame captioner_scores returns, all strings.
CAPTIONS_COLUMNS = ("id", "reference", "caption", "gender", "caption_gender")


def captioner_scores(
    captioner: Any, test: pl.DataFrame, groups: list[str | None], config: Any, seed: int
) -> tuple[dict[str, Any], pl.DataFrame]:
    """Score a trained captioner on the held-out images: quality against their human captions, gender
    misprediction and leakage.

    Args:
        captioner: a trained captioner (:func:`biasloop.models.captioner.make_captioner`).
        test: held-out rows (``id``, ``caption``, ``image_ref``), one human caption per image.
        groups: gender per held-out row (``female`` / ``male`` / None).
        config: the ``captioner`` params (:class:`biasloop.models.captioner.CaptionerConfig`).
        seed: the training seed (the bootstrap and the leakage classifier's runs derive theirs from it).

    Returns:
        ``(metrics, captions)``: metrics with ``quality`` (bleu1..4, rouge_l, cider_d), ``misprediction``
        and ``leakage``; captions a frame ``id, reference, caption, gender, caption_gender``.
    """
    from biasloop.data.indicators import caption_gender
    from biasloop.metrics.caption_bias import caption_leakage, misprediction
    from biasloop.metrics.caption_quality import score_captions

    with timed(f"captioning {len(test)} held-out images", log):
        hypotheses = captioner.caption(load_images(test["image_ref"].to_list()))
    references = test["caption"].to_list()
    ids = test["id"].to_list()
    quality = score_captions(
        {i: [r] for i, r in zip(ids, references)},
        dict(zip(ids, hypotheses)),
        n_boot=config.n_boot,
        seed=stream_seed(seed, "captioner-bootstrap"),
    )
    bias = misprediction(hypotheses, groups)
    bias["ratio_predicted_ci"] = _ratio_interval(
        [caption_gender(h) for h in hypotheses], groups, config.n_boot, stream_seed(seed, "captioner-ratio-bootstrap")
    )
    with timed(f"leakage classifier ({config.leakage.seeds} runs x 2)", log):
        leakage = caption_leakage(
            hypotheses, references, groups, config.leakage, seed, captioner.vocabulary, n_boot=config.n_boot
        )
    captions = pl.DataFrame(
        {
            "id": ids,
            "reference": references,
            "caption": hypotheses,
            "gender": [g for g in groups],
            "caption_gender": [caption_gender(h) for h in hypotheses],
        },
        schema=dict.fromkeys(CAPTIONS_COLUMNS, pl.String),
    )
    log.info(
        "captioner: BLEU-4 %.3f, CIDEr-D %.3f, Error %.3f, LIC_M %.3f, LIC_D %.3f, leakage %.3f",
        quality["bleu4"],
        quality["cider_d"],
        bias["error"] if bias["error"] is not None else float("nan"),
        leakage["lic_m"],
        leakage["lic_d"],
        leakage["leakage"],
    )
    return {"quality": quality, "misprediction": bias, "leakage": leakage}, captions


def _ratio_interval(predicted: list[str], groups: list[str | None], n_boot: int, seed: int) -> list[float] | None:
    """Bootstrap interval over gender-labelled images of captions predicted female / predicted male."""
    import numpy as np

    from biasloop.metrics.intervals import bootstrap_interval

    labelled = np.array([g in ("female", "male") for g in groups], dtype=bool)
    kinds = np.asarray(predicted, dtype=object)[labelled]

    def ratio(rows: np.ndarray) -> float | None:
        male = int((kinds[rows] == "male").sum())
        return int((kinds[rows] == "female").sum()) / male if male else None

    return bootstrap_interval(ratio, len(kinds), n_boot, np.random.default_rng(seed))
