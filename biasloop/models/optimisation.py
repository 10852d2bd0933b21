"""The training loop the trained models share (instrument image tower, downstream CLIP, occupation
classifier, captioner): AdamW with a one-cycle learning rate (Smith & Topin 2019, ``OneCycleLR``) over
epochs of seeded shuffles, one optimiser step and one schedule step per batch."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


def fit_one_cycle(
    parameters: Iterable[Any],
    batch_loss: Callable[[Any], Any],
    n_items: int,
    config: Any,
    *,
    weight_decay: float,
    pct_start: float,
    generator: Any,
    desc: str,
    progress: bool,
    min_batch: int = 1,
    after_step: Callable[[], None] | None = None,
) -> tuple[int, float]:
    """Train ``parameters`` for ``config.epochs`` passes over ``n_items`` items in batches of
    ``config.batch_size``, AdamW at peak learning rate ``config.learning_rate``.

    Each epoch shuffles with ``torch.randperm(n_items, generator=generator)``; ``batch_loss(indices)``
    returns the batch's loss tensor, backpropagated (gradients zeroed first) before the optimiser and
    schedule steps, then ``after_step()``. A batch smaller than ``min_batch`` (the last one of an epoch:
    batch norm and contrastive losses need two items) only steps the schedule, so the schedule of
    ``ceil(n_items / batch_size) * epochs`` steps ends where it should. ``pct_start``: the share of steps
    spent warming up. ``desc``, ``progress``: the tqdm bar over trained batches.

    Returns:
        ``(steps, final_loss)``: the schedule's steps and the last trained batch's loss (nan when none).
    """
    import torch
    from tqdm.auto import tqdm

    optimiser = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=weight_decay)
    total = -(-n_items // config.batch_size) * config.epochs
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.learning_rate, total_steps=total, pct_start=pct_start
    )
    loss_value = float("nan")
    with tqdm(total=total, desc=desc, disable=not progress) as bar:
        for _ in range(config.epochs):
            order = torch.randperm(n_items, generator=generator)
            for batch_start in range(0, len(order), config.batch_size):
                batch = order[batch_start : batch_start + config.batch_size]
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
    return total, loss_value
