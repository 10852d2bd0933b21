"""The LIC leakage classifier (Hirota, Nakashima, Garcia, CVPR 2022): gender from gender-masked captions.

Their classifier is a 2-layer bidirectional LSTM over word embeddings, its final forward and backward
states concatenated into a linear output (``P(female)`` through a sigmoid), trained with binary
cross-entropy and Adam. The same architecture here, smaller by default (``captioner.leakage``). The
protocol around it (balanced splits, LIC_M / LIC_D, several runs) and the LIC score are in
:mod:`biasloop.metrics.caption_bias`.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from biasloop.core.runtime import cpu_threads


@dataclasses.dataclass(frozen=True)
class LeakageConfig:
    """``captioner.leakage``: the LIC leakage classifier."""

    seeds: int = 3  # classifier runs, each with its own balanced split and initialisation
    test_fraction: float = 0.3  # share of each gender's (balanced) captions held out to score LIC
    embedding_dim: int = 32  # word embedding size
    hidden_dim: int = 32  # LSTM hidden units per direction
    layers: int = 1  # stacked bidirectional LSTM layers (Hirota et al.: 2)
    dropout: float = 0.3  # dropout on the embeddings and on the final states
    epochs: int = 60  # passes over the training captions
    batch_size: int = (
        512  # distinct captions per batch (identical captions are weighted, see predict_gender_from_captions)
    )
    learning_rate: float = 0.02  # Adam learning rate
    align_vocabulary: bool = True  # human-caption words the captioner never writes become <unk>
    cpu_threads: int | None = None  # torch CPU threads (None: the stage's base.cpu_threads)


def _encode(token_lists: Sequence[Sequence[str]], index: dict[str, int]) -> tuple[Any, Any]:
    """Padded id matrix (0 = padding, 1 = unknown) and lengths; an empty caption is one unknown token."""
    import torch

    lengths = [max(1, len(t)) for t in token_lists]
    ids = torch.zeros(len(token_lists), max(lengths), dtype=torch.long)
    for row, tokens in enumerate(token_lists):
        encoded = [index.get(t, 1) for t in tokens] or [1]
        ids[row, : len(encoded)] = torch.tensor(encoded)
    return ids, torch.tensor(lengths)


def predict_gender_from_captions(
    train_tokens: Sequence[Sequence[str]],
    train_female: np.ndarray,
    test_tokens: Sequence[Sequence[str]],
    config: LeakageConfig,
    seed: int,
) -> np.ndarray:
    """Train one bidirectional-LSTM gender classifier on tokenised captions; predict held-out ones.

    Args:
        train_tokens: training captions as token lists (gender words already masked).
        train_female: their labels (True: the image shows a woman).
        test_tokens: held-out captions as token lists; words unseen in training read as unknown.
        config: the classifier's params.
        seed: initialisation and batch-order seed.

    Returns:
        ``P(female)`` per held-out caption, float array in [0, 1].

    Identical captions are run through the network once: each distinct training caption carries its
    counts of women's and men's images, and its loss is ``n_female * BCE(logit, 1) + n_male * BCE(logit, 0)``
    (divided by the captions in the batch), the same loss as repeating it. Batches are drawn over distinct
    captions; with ``batch_size`` at least their number (the default), every step is the full-batch
    gradient over all training captions. Captioner outputs repeat a lot (a few dozen distinct captions
    for hundreds of images), so this trains several times faster than one row per image.
    """
    import torch
    import torch.nn as nn

    if len(train_tokens) != len(train_female) or not len(train_tokens) or not len(test_tokens):
        raise ValueError(
            f"{len(train_tokens)} training captions, {len(train_female)} labels, {len(test_tokens)} test captions"
        )
    counts = Counter(t for tokens in train_tokens for t in tokens)
    index = {word: i + 2 for i, word in enumerate(sorted(counts))}  # 0 padding, 1 unknown
    label_counts: dict[tuple[str, ...], list[int]] = {}
    for tokens, female in zip(train_tokens, np.asarray(train_female, dtype=bool)):
        label_counts.setdefault(tuple(tokens), [0, 0])[int(not female)] += 1
    distinct_train = list(label_counts)
    train_ids, train_lengths = _encode(distinct_train, index)
    n_female = torch.tensor([label_counts[t][0] for t in distinct_train], dtype=torch.float32)
    n_male = torch.tensor([label_counts[t][1] for t in distinct_train], dtype=torch.float32)
    distinct_test = sorted(set(map(tuple, test_tokens)))
    test_ids, test_lengths = _encode(distinct_test, index)

    with cpu_threads(config.cpu_threads):
        torch.manual_seed(seed)
        model = _leakage_lstm(len(index) + 2, config)
        optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
        generator = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(config.epochs):
            order = torch.randperm(len(train_ids), generator=generator)
            for start in range(0, len(order), config.batch_size):
                batch = order[start : start + config.batch_size]
                logits = model(train_ids[batch], train_lengths[batch])
                # -log sigmoid(z) = softplus(-z); -log(1 - sigmoid(z)) = softplus(z)
                loss = (
                    n_female[batch] * nn.functional.softplus(-logits) + n_male[batch] * nn.functional.softplus(logits)
                ).sum()
                loss = loss / (n_female[batch] + n_male[batch]).sum()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        model.eval()
        with torch.no_grad():
            p_distinct = torch.sigmoid(model(test_ids, test_lengths)).numpy().astype(float)
    position = {tokens: i for i, tokens in enumerate(distinct_test)}
    return np.array([p_distinct[position[tuple(tokens)]] for tokens in test_tokens])


def _leakage_lstm(n_words: int, config: LeakageConfig) -> Any:
    """The leakage classifier: word embeddings, a bidirectional LSTM, dropout and one logit (P(female))
    from the last layer's final forward and backward states. ``n_words`` counts padding (0) and unknown (1)."""
    import torch
    import torch.nn as nn

    class LeakageLSTM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(n_words, config.embedding_dim, padding_idx=0)
            self.lstm = nn.LSTM(
                config.embedding_dim,
                config.hidden_dim,
                num_layers=config.layers,
                bidirectional=True,
                batch_first=True,
                dropout=config.dropout if config.layers > 1 else 0.0,
            )
            self.dropout = nn.Dropout(config.dropout)
            self.out = nn.Linear(2 * config.hidden_dim, 1)

        def forward(self, ids: Any, lengths: Any) -> Any:
            packed = nn.utils.rnn.pack_padded_sequence(
                self.dropout(self.embed(ids)), lengths, batch_first=True, enforce_sorted=False
            )
            _, (hidden, _) = self.lstm(packed)
            final = torch.cat([hidden[-2], hidden[-1]], dim=1)  # last layer, forward and backward
            return self.out(self.dropout(final)).squeeze(1)

    return LeakageLSTM()
