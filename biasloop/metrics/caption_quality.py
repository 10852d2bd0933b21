"""Caption quality: BLEU-4, ROUGE-L and CIDEr-D as the COCO caption evaluation code defines them.

Written here from the published definitions, in pure Python, without Java. Each function takes
``references`` (``{image_id: [reference caption, ...]}``) and ``hypotheses`` (``{image_id: caption}``)
over the same image ids and returns the corpus score and one score per image (in ``sorted`` id order).
Captions are tokenised with :func:`tokenize` first (:func:`biasloop.data.text.caption_tokens`); the scorers themselves only split on spaces, so
already tokenised text (as the COCO code's PTB tokenizer writes it) gives the COCO code's numbers.

- **BLEU-n** (Papineni et al., ACL 2002), corpus level as in the COCO code (``pycocoevalcap``'s
  ``Bleu``): modified n-gram precisions ``p_k = sum_images clip_k / sum_images max(0, len - k + 1)``,
  each n-gram's count clipped by its largest count in any one reference; ``BLEU-n = (prod_{k<=n}
  p_k)^(1/n) * BP`` with the brevity penalty ``BP = exp(1 - r/c)`` when ``c < r`` (``c`` the summed
  hypothesis lengths, ``r`` the summed *closest* reference lengths, ties to the shorter). As in the COCO
  code, ``p_k`` is computed as ``(clip_k + 1e-15) / (guess_k + 1e-9)`` so an empty n-gram order gives 0,
  not a division by zero, and the per-image scores use the same formula on one image.
- **ROUGE-L** (Lin, 2004) as in the COCO code's ``Rouge``: per image, with ``LCS`` the longest common
  subsequence, ``P = max_refs LCS / len(hyp)``, ``R = max_refs LCS / len(ref)`` (each maximised over the
  references separately) and ``F = (1 + b^2) P R / (R + b^2 P)``, ``b = 1.2``; 0 when P or R is 0. The
  corpus score is the mean over images.
- **CIDEr-D** (Vedantam, Zitnick, Parikh, CVPR 2015) as in the COCO code's ``Cider`` (which is CIDEr-D):
  n-grams of order 1..4 weighted by tf-idf, ``g_k(s) = tf(ngram, s) * (log N - log max(1, df(ngram)))``
  with ``N`` the number of images and ``df`` the number of images whose references contain the n-gram
  (document frequencies from the reference set being scored); per order ``k``, the similarity with each
  reference ``sum_ngram min(g_hyp, g_ref) * g_ref / (|g_hyp| |g_ref|)`` (the ``min`` is CIDEr-D's
  clipping) times the length penalty ``exp(-(l_hyp - l_ref)^2 / (2 sigma^2))``, ``sigma = 6``; averaged
  over the 4 orders and the references, times 10. As in the COCO code, the lengths ``l`` in the penalty
  are the counts of *bigrams* (tokens minus one), and an order whose vectors have zero norm scores 0.

METEOR and SPICE need Java (and SPICE a model download): they are not computed here.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from biasloop.data.text import caption_tokens

BLEU_TINY = 1e-15  # added to clipped counts (COCO code), so 0 matches give exactly 0
BLEU_SMALL = 1e-9  # added to n-gram totals (COCO code), so an empty order does not divide by zero
ROUGE_BETA = 1.2  # recall weight of ROUGE-L's F-measure (COCO code)
CIDER_ORDERS = 4  # n-gram orders 1..4
CIDER_SIGMA = 6.0  # CIDEr-D's length-penalty width, in tokens
CIDER_SCALE = 10.0  # CIDEr-D is reported times 10


def tokenize(text: str | None) -> list[str]:
    """Caption tokens (:func:`biasloop.data.text.caption_tokens`): lower-cased, punctuation stripped."""
    return caption_tokens(text)


def tokenized(text: str) -> str:
    """:func:`tokenize` joined by single spaces: the form the scorers below read."""
    return " ".join(tokenize(text))


def _ngrams(tokens: Sequence[str], order: int) -> Counter:
    return Counter(tuple(tokens[i : i + order]) for i in range(len(tokens) - order + 1))


def _check(references: Mapping[Any, Sequence[str]], hypotheses: Mapping[Any, str]) -> list:
    if set(references) != set(hypotheses):
        only_refs = sorted(map(str, set(references) - set(hypotheses)))[:3]
        only_hyps = sorted(map(str, set(hypotheses) - set(references)))[:3]
        raise ValueError(
            f"references and hypotheses must cover the same image ids (only in references: {only_refs}, "
            f"only in hypotheses: {only_hyps})"
        )
    if not references:
        raise ValueError("no images to score")
    for image_id, refs in references.items():
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"image {image_id!r}: expected a non-empty list of reference captions")
        if not isinstance(hypotheses[image_id], str):
            raise ValueError(f"image {image_id!r}: expected one hypothesis caption (a string)")
    return sorted(references, key=str)


def bleu(references: Mapping[Any, Sequence[str]], hypotheses: Mapping[Any, str], max_order: int = 4) -> dict[str, Any]:
    """Corpus BLEU-1..``max_order`` of space-tokenised captions (see the module docstring).

    Args:
        references: ``{image_id: [reference, ...]}``, tokens separated by spaces.
        hypotheses: ``{image_id: hypothesis}`` over the same ids.
        max_order: the largest n-gram order n.

    Returns:
        ``{"bleu": [BLEU-1, ..., BLEU-n], "per_image": [[BLEU-1..n of image] ...], "counts": rows}``,
        fractions in [0, 1], images in sorted id order; ``counts`` holds each image's
        ``(clipped, guessed, hyp_len, ref_len)``, whose sums over any resample of images give that
        resample's corpus BLEU (:func:`bleu_from_image_counts`).
    """
    ids = _check(references, hypotheses)
    total_clipped = [0] * max_order
    total_guessed = [0] * max_order
    total_hyp_len = 0
    total_ref_len = 0
    per_image, counts = [], []
    for image_id in ids:
        hyp = hypotheses[image_id].split()
        refs = [r.split() for r in references[image_id]]
        # The length of the reference closest in length to the hypothesis; ties go to the shorter one.
        ref_len = min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1]
        clipped, guessed = [], []
        for order in range(1, max_order + 1):
            max_ref_counts: Counter = Counter()
            for r in refs:
                for gram, count in _ngrams(r, order).items():
                    max_ref_counts[gram] = max(max_ref_counts[gram], count)
            hyp_counts = _ngrams(hyp, order)
            clipped.append(sum(min(count, max_ref_counts[gram]) for gram, count in hyp_counts.items()))
            guessed.append(max(0, len(hyp) - order + 1))
        per_image.append(_bleu_from_counts(clipped, guessed, len(hyp), ref_len))
        counts.append((clipped, guessed, len(hyp), ref_len))
        total_clipped = [a + b for a, b in zip(total_clipped, clipped)]
        total_guessed = [a + b for a, b in zip(total_guessed, guessed)]
        total_hyp_len += len(hyp)
        total_ref_len += ref_len
    return {
        "bleu": _bleu_from_counts(total_clipped, total_guessed, total_hyp_len, total_ref_len),
        "per_image": per_image,
        "counts": counts,
    }


def bleu_from_image_counts(counts: Sequence[tuple], rows: Sequence[int]) -> list[float]:
    """Corpus BLEU-1..n of the images at ``rows`` (repeats allowed) from :func:`bleu`'s per-image ``counts``."""
    picked = [counts[i] for i in rows]
    orders = len(picked[0][0]) if picked else 0
    clipped = [sum(c[0][k] for c in picked) for k in range(orders)]
    guessed = [sum(c[1][k] for c in picked) for k in range(orders)]
    return _bleu_from_counts(clipped, guessed, sum(c[2] for c in picked), sum(c[3] for c in picked))


def _bleu_from_counts(clipped: Sequence[int], guessed: Sequence[int], hyp_len: float, ref_len: float) -> list[float]:
    """BLEU-1..n from clipped and total n-gram counts and the lengths (with the COCO code's smoothing)."""
    scores = []
    product = 1.0
    for order, (c, g) in enumerate(zip(clipped, guessed), start=1):
        product *= (c + BLEU_TINY) / (g + BLEU_SMALL)
        scores.append(product ** (1.0 / order))
    ratio = (hyp_len + BLEU_TINY) / (ref_len + BLEU_SMALL)
    if ratio < 1:
        penalty = math.exp(1 - 1 / ratio)
        scores = [s * penalty for s in scores]
    return scores


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (dynamic programming, O(len a * len b))."""
    previous = [0] * (len(b) + 1)
    for token_a in a:
        current = [0]
        for j, token_b in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if token_a == token_b else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(
    references: Mapping[Any, Sequence[str]], hypotheses: Mapping[Any, str], beta: float = ROUGE_BETA
) -> dict[str, Any]:
    """ROUGE-L F-measure of space-tokenised captions (see the module docstring).

    Returns:
        ``{"rouge_l": mean over images, "per_image": [...]}``, fractions in [0, 1].
    """
    ids = _check(references, hypotheses)
    per_image = []
    for image_id in ids:
        hyp = hypotheses[image_id].split()
        precisions, recalls = [], []
        for ref in (r.split() for r in references[image_id]):
            common = lcs_length(ref, hyp)
            precisions.append(common / len(hyp) if hyp else 0.0)
            recalls.append(common / len(ref) if ref else 0.0)
        p, r = max(precisions), max(recalls)
        per_image.append((1 + beta**2) * p * r / (r + beta**2 * p) if p > 0 and r > 0 else 0.0)
    return {"rouge_l": sum(per_image) / len(per_image), "per_image": per_image}


def _tfidf(counts: Iterable[tuple[tuple[str, ...], int]], log_n: float, document_frequency: Counter):
    """tf-idf vectors per order (list of dicts), their norms, and the bigram count (the CIDEr length)."""
    vectors: list[dict] = [{} for _ in range(CIDER_ORDERS)]
    squared = [0.0] * CIDER_ORDERS
    bigrams = 0
    for gram, tf in counts:
        k = len(gram) - 1
        weight = tf * (log_n - math.log(max(1.0, document_frequency[gram])))
        vectors[k][gram] = weight
        squared[k] += weight * weight
        if k == 1:
            bigrams += tf
    return vectors, [math.sqrt(s) for s in squared], bigrams


def _all_ngrams(text: str) -> Counter:
    tokens = text.split()
    counts: Counter = Counter()
    for order in range(1, CIDER_ORDERS + 1):
        counts.update(_ngrams(tokens, order))
    return counts


def cider_d(
    references: Mapping[Any, Sequence[str]], hypotheses: Mapping[Any, str], sigma: float = CIDER_SIGMA
) -> dict[str, Any]:
    """CIDEr-D of space-tokenised captions (see the module docstring for the formula).

    Document frequencies come from the references passed in, so the score of an image depends on the
    other images scored with it (as in the COCO code): score a whole test set at once.

    Returns:
        ``{"cider_d": mean over images, "per_image": [...]}``; 0 for no overlap, about 10 at most for
        a hypothesis equal to every reference (with few images, often less).
    """
    ids = _check(references, hypotheses)
    reference_counts = {i: [_all_ngrams(r) for r in references[i]] for i in ids}
    document_frequency: Counter = Counter()
    for counts_list in reference_counts.values():
        document_frequency.update(set().union(*counts_list))
    log_n = math.log(float(len(ids)))
    per_image = []
    for image_id in ids:
        hyp_vec, hyp_norm, hyp_len = _tfidf(_all_ngrams(hypotheses[image_id]).items(), log_n, document_frequency)
        per_order = [0.0] * CIDER_ORDERS
        for counts in reference_counts[image_id]:
            ref_vec, ref_norm, ref_len = _tfidf(counts.items(), log_n, document_frequency)
            penalty = math.exp(-((hyp_len - ref_len) ** 2) / (2 * sigma**2))
            for k in range(CIDER_ORDERS):
                dot = sum(min(w, ref_vec[k].get(g, 0.0)) * ref_vec[k].get(g, 0.0) for g, w in hyp_vec[k].items())
                if hyp_norm[k] != 0 and ref_norm[k] != 0:
                    dot /= hyp_norm[k] * ref_norm[k]
                per_order[k] += dot * penalty
        per_image.append(CIDER_SCALE * sum(per_order) / CIDER_ORDERS / len(reference_counts[image_id]))
    return {"cider_d": sum(per_image) / len(per_image), "per_image": per_image}


def score_captions(
    references: Mapping[Any, Sequence[str]],
    hypotheses: Mapping[Any, str],
    tokenize_first: bool = True,
    n_boot: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """BLEU-1..4, ROUGE-L and CIDEr-D of hypotheses against references, one call.

    Args:
        references: ``{image_id: [reference caption, ...]}``.
        hypotheses: ``{image_id: caption}`` over the same ids.
        tokenize_first: tokenise every caption with :func:`tokenize` (False: already space-tokenised).
        n_boot: bootstrap resamples of the images for 95% intervals (0: none).
        seed: seed of the resamples.

    Returns:
        ``{"bleu1".."bleu4", "rouge_l", "cider_d", "n_images"}`` (BLEU and ROUGE-L fractions in [0, 1];
        CIDEr-D on its 0..10 scale); with ``n_boot`` also ``bleu4_ci``, ``rouge_l_ci``, ``cider_d_ci``:
        percentile bootstrap over images (BLEU-4 recomputed at corpus level on each resample; ROUGE-L and
        CIDEr-D as means of the per-image scores, CIDEr-D's document frequencies those of the full set).
    """
    if tokenize_first:
        references = {
            i: [tokenized(r) for r in refs] if not isinstance(refs, str) else refs for i, refs in references.items()
        }
        hypotheses = {i: tokenized(h) if isinstance(h, str) else h for i, h in hypotheses.items()}
    scored_bleu = bleu(references, hypotheses)
    bleus = scored_bleu["bleu"]
    out: dict[str, Any] = {f"bleu{k}": bleus[k - 1] for k in range(1, 5)}
    scored_rouge, scored_cider = rouge_l(references, hypotheses), cider_d(references, hypotheses)
    out["rouge_l"] = scored_rouge["rouge_l"]
    out["cider_d"] = scored_cider["cider_d"]
    out["n_images"] = len(references)
    if n_boot > 0:
        import numpy as np

        from biasloop.metrics.intervals import bootstrap_interval

        rng = np.random.default_rng(seed)
        counts, n = scored_bleu["counts"], len(scored_bleu["counts"])
        out["bleu4_ci"] = bootstrap_interval(lambda rows: bleu_from_image_counts(counts, rows)[3], n, n_boot, rng)
        for key, scored in (("rouge_l", scored_rouge), ("cider_d", scored_cider)):
            per_image = np.asarray(scored["per_image"])
            out[f"{key}_ci"] = bootstrap_interval(lambda rows, v=per_image: float(v[rows].mean()), n, n_boot, rng)
        out["n_boot"] = n_boot
    return out
