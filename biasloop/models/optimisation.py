"""The minibatch loop the trained models share (instrument image tower, downstream CLIP, occupation
classifier, captioner): epochs of seeded shuffles, one optimiser step and one learning-rate schedule
step per batch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def run_epochs(
    batch_loss: Callable[[Any], Any],
    optimiser: Any,
    schedule: Any,
    n_items: int,
    *,
    epochs: int,
    batch_size: int,
    generator: Any,
    bar: Any,
    min_batch: int = 1,
    after_step: Callable[[], None] | None = None,
) -> float:
    """Train for ``epochs`` passes over ``n_items`` items in batches of ``batch_size``.

    Each epoch shuffles with ``torch.randperm(n_items, generator=generator)``; ``batch_loss(indices)``
    returns the batch's loss tensor, which is backpropagated (gradients zeroed first) before
    ``optimiser.step()`` and ``schedule.step()``, then ``after_step()``. A batch smaller than
    ``min_batch`` (the last one of an epoch: batch norm and contrastive losses need two items) only
    steps the schedule, so a one-cycle schedule of ``ceil(n_items / batch_size) * epochs`` steps ends
    where it should. ``bar`` (tqdm) advances once per trained batch.

    Returns:
        The last trained batch's loss (nan when no batch was trained).
    """
    import torch

    loss_value = float("nan")
    for _ in range(epochs):
        order = torch.randperm(n_items, generator=generator)
        for batch_start in range(0, len(order), batch_size):
            batch = order[batch_start : batch_start + batch_size]
            if len(batch) < min_batch:
                schedule.step()
                continue
            loss = batch_loss(batch)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            if after_step is not None:
                after_step()
            loss_value = float(loss.item())
            bar.update(1)
    return loss_value
