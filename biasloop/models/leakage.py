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
    batch_size: int = 512  # captions per batch
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
    train_tokens: Sequence[Sequence[str]], train_female: np.ndarray, test_tokens: Sequence[Sequence[str]],
    config: LeakageConfig, seed: int,
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
    """
    import torch
    import torch.nn as nn

    counts = Counter(t for tokens in train_tokens for t in tokens)
    index = {word: i + 2 for i, word in enumerate(sorted(counts))}  # 0 padding, 1 unknown
    train_ids, train_lengths = _encode(train_tokens, index)
    test_ids, test_lengths = _encode(test_tokens, index)
    if len(train_tokens) != len(train_female) or not len(train_tokens) or not len(test_tokens):
        raise ValueError(f"{len(train_tokens)} training captions, {len(train_female)} labels, {len(test_tokens)} test captions")
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
    return p_female
