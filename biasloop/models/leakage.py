"""The LIC leakage classifier (Hirota, Nakashima, Garcia, CVPR 2022).

How much a caption reveals the gender of the person in the image once the gender words are masked:
a classifier (theirs: a 2-layer bidirectional LSTM over word embeddings; here the same architecture,
smaller by default) is trained to predict the image's gender from masked captions and scored with the
LIC score (:func:`biasloop.metrics.caption_bias.lic_score`: mean confidence in the correct gender, 0
when wrong) on held-out captions. Trained on a captioner's captions it gives **LIC_M**; on the human
captions of the same images, **LIC_D**; **leakage = LIC_M - LIC_D** (> 0: the model's captions reveal
gender beyond what human captions do, i.e. the model amplifies the bias).

As in the published protocol: the split is gender-balanced (the same number of women's and men's images
in training and in test; images of the larger group left out at random), LIC_M and LIC_D use the same
images in each run, every run has its own seed (split and initialisation), and the mean and the
standard deviation over runs are reported. With ``align_vocabulary``, human-caption words the captioner
never writes become ``<unk>`` (their ``align_vocab``), so LIC_D does not gain from words the model
cannot produce.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from biasloop.core.runtime import cpu_threads
from biasloop.metrics.caption_bias import lic_score, mask_gender_words

log = logging.getLogger(__name__)
UNKNOWN = "<unk>"


@dataclasses.dataclass(frozen=True)
class LeakageConfig:
    """``captioner.leakage``: the LIC leakage classifier."""

    seeds: int = 5  # classifier runs, each with its own balanced split and initialisation
    test_fraction: float = 0.3  # share of each gender's (balanced) captions held out to score LIC
    embedding_dim: int = 32  # word embedding size
    hidden_dim: int = 32  # LSTM hidden units per direction
    layers: int = 1  # stacked bidirectional LSTM layers (Hirota et al.: 2)
    dropout: float = 0.3  # dropout on the embeddings and on the final states
    epochs: int = 15  # passes over the training captions
    batch_size: int = 64  # captions per batch
    learning_rate: float = 0.005  # Adam learning rate
    align_vocabulary: bool = True  # human-caption words the captioner never writes become <unk>
    cpu_threads: int | None = None  # torch CPU threads (None: the stage's base.cpu_threads)


def balanced_split(is_female: np.ndarray, test_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Gender-balanced train and test indices.

    Each gender contributes ``m = min(#women, #men)`` images, drawn at random: ``round(m * test_fraction)``
    to the test set and the rest to the training set.

    Returns:
        ``(train_indices, test_indices)`` into ``is_female``, each shuffled.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"captioner.leakage.test_fraction: must be in (0, 1), got {test_fraction}")
    is_female = np.asarray(is_female, dtype=bool)
    women, men = np.flatnonzero(is_female), np.flatnonzero(~is_female)
    m = min(len(women), len(men))
    n_test = int(round(m * test_fraction))
    if n_test < 1 or m - n_test < 1:
        raise ValueError(f"the leakage classifier needs images of both genders: {len(women)} women, {len(men)} men")
    women, men = rng.permutation(women)[:m], rng.permutation(men)[:m]
    train = rng.permutation(np.concatenate([women[n_test:], men[n_test:]]))
    test = rng.permutation(np.concatenate([women[:n_test], men[:n_test]]))
    return train, test


def prepare_captions(captions: Sequence[str], vocabulary: set[str] | None = None) -> list[list[str]]:
    """Masked tokens of each caption; with ``vocabulary``, other words (except the mask) become ``<unk>``."""
    out = []
    for caption in captions:
        tokens = mask_gender_words(caption).split()
        if vocabulary is not None:
            tokens = [t if t in vocabulary or t == "genderword" else UNKNOWN for t in tokens]
        out.append(tokens)
    return out


def _encode(token_lists: Sequence[Sequence[str]], index: dict[str, int]) -> tuple[Any, Any]:
    """Padded id matrix (0 = padding, 1 = unknown) and lengths; an empty caption is one unknown token."""
    import torch

    lengths = [max(1, len(t)) for t in token_lists]
    ids = torch.zeros(len(token_lists), max(lengths), dtype=torch.long)
    for row, tokens in enumerate(token_lists):
        encoded = [index.get(t, 1) for t in tokens] or [1]
        ids[row, : len(encoded)] = torch.tensor(encoded)
    return ids, torch.tensor(lengths)


def train_and_score(
    train_tokens: Sequence[Sequence[str]], train_female: np.ndarray,
    test_tokens: Sequence[Sequence[str]], test_female: np.ndarray,
    config: LeakageConfig, seed: int,
) -> dict[str, float]:
    """Train one bidirectional-LSTM gender classifier on masked captions and score it on held-out ones.

    Returns:
        ``{"lic": LIC score, "accuracy": test accuracy}``, fractions.
    """
    import torch
    import torch.nn as nn

    counts = Counter(t for tokens in train_tokens for t in tokens)
    index = {word: i + 2 for i, word in enumerate(sorted(counts))}  # 0 padding, 1 unknown
    train_ids, train_lengths = _encode(train_tokens, index)
    test_ids, test_lengths = _encode(test_tokens, index)
    train_labels = torch.tensor(np.asarray(train_female, dtype=np.float32))

    class LeakageLSTM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(len(index) + 2, config.embedding_dim, padding_idx=0)
            self.lstm = nn.LSTM(config.embedding_dim, config.hidden_dim, num_layers=config.layers, bidirectional=True,
                                batch_first=True, dropout=config.dropout if config.layers > 1 else 0.0)
            self.dropout = nn.Dropout(config.dropout)
            self.out = nn.Linear(2 * config.hidden_dim, 1)

        def forward(self, ids: Any, lengths: Any) -> Any:
            packed = nn.utils.rnn.pack_padded_sequence(self.dropout(self.embed(ids)), lengths, batch_first=True,
                                                       enforce_sorted=False)
            _, (hidden, _) = self.lstm(packed)
            final = torch.cat([hidden[-2], hidden[-1]], dim=1)  # last layer, forward and backward
            return self.out(self.dropout(final)).squeeze(1)

    with cpu_threads(config.cpu_threads):
        torch.manual_seed(seed)
        model = LeakageLSTM()
        optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
        loss_fn = nn.BCEWithLogitsLoss()
        generator = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(config.epochs):
            order = torch.randperm(len(train_ids), generator=generator)
            for start in range(0, len(order), config.batch_size):
                batch = order[start : start + config.batch_size]
                loss = loss_fn(model(train_ids[batch], train_lengths[batch]), train_labels[batch])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        model.eval()
        with torch.no_grad():
            p_female = torch.sigmoid(model(test_ids, test_lengths)).numpy().astype(float)
    truth = np.asarray(test_female, dtype=bool)
    return {"lic": lic_score(p_female, truth), "accuracy": float(np.mean((p_female >= 0.5) == truth))}


def caption_leakage(
    model_captions: Sequence[str],
    human_captions: Sequence[str],
    genders: Sequence[str | None],
    config: LeakageConfig,
    seed: int,
    model_vocabulary: set[str] | None = None,
) -> dict[str, Any]:
    """LIC_M, LIC_D and leakage over ``config.seeds`` runs (see the module docstring).

    Args:
        model_captions: a captioner's caption per image.
        human_captions: the human (reference) caption of the same images.
        genders: the image's gender, ``female`` / ``male``; other images are left out.
        config: the leakage classifier's params.
        seed: base seed; run ``s`` uses ``[seed, s]``.
        model_vocabulary: the words the captioner can write (for ``align_vocabulary``; None: no alignment).

    Returns:
        ``lic_m``, ``lic_d``, ``leakage`` (means over runs) with ``_std`` (sample standard deviation; 0
        for one run), the classifiers' mean test accuracies, ``per_seed`` rows, ``n_train`` and ``n_test``
        per run.
    """
    if not len(model_captions) == len(human_captions) == len(genders):
        raise ValueError(f"{len(model_captions)} model captions, {len(human_captions)} human captions, {len(genders)} genders")
    if config.seeds < 1:
        raise ValueError("captioner.leakage.seeds must be >= 1")
    labelled = np.array([g in ("female", "male") for g in genders])
    is_female = np.array([g == "female" for g in genders])[labelled]
    model_tokens = [t for t, keep in zip(prepare_captions(model_captions), labelled) if keep]
    vocabulary = model_vocabulary if config.align_vocabulary else None
    if config.align_vocabulary and vocabulary is None:  # the words the model actually wrote
        vocabulary = {t for tokens in model_tokens for t in tokens}
    human_tokens = [t for t, keep in zip(prepare_captions(human_captions, vocabulary), labelled) if keep]
    start = time.perf_counter()
    runs = []
    for run in range(config.seeds):
        rng = np.random.default_rng([seed, run, 4231])
        train, test = balanced_split(is_female, config.test_fraction, rng)
        scores = {}
        for name, tokens in (("lic_m", model_tokens), ("lic_d", human_tokens)):
            scores[name] = train_and_score([tokens[i] for i in train], is_female[train], [tokens[i] for i in test],
                                           is_female[test], config, seed * 1000 + run)
        runs.append({"seed": run, "lic_m": scores["lic_m"]["lic"], "lic_d": scores["lic_d"]["lic"],
                     "leakage": scores["lic_m"]["lic"] - scores["lic_d"]["lic"],
                     "accuracy_m": scores["lic_m"]["accuracy"], "accuracy_d": scores["lic_d"]["accuracy"]})

    def spread(key: str) -> tuple[float, float]:
        values = np.array([r[key] for r in runs])
        return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0

    out: dict[str, Any] = {}
    for key in ("lic_m", "lic_d", "leakage"):
        out[key], out[f"{key}_std"] = spread(key)
    out["accuracy_m"], out["accuracy_d"] = spread("accuracy_m")[0], spread("accuracy_d")[0]
    out.update(per_seed=runs, n_train=len(train), n_test=len(test), seconds=time.perf_counter() - start)
    log.info("leakage: LIC_M %.3f +- %.3f, LIC_D %.3f +- %.3f, leakage %.3f (%d runs, %d train / %d test, %.1f s)",
             out["lic_m"], out["lic_m_std"], out["lic_d"], out["lic_d_std"], out["leakage"], config.seeds,
             len(train), len(test), out["seconds"])
    return out
