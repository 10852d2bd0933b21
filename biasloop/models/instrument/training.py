"""Training the locked-text CLIP instrument (InfoNCE against a frozen sentence encoder), the
:func:`train_or_load_instrument` entry point, and the corpus splits it trains and is measured on."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from biasloop.core.runtime import cpu_threads
from biasloop.models.instrument.zero_shot import (
    Instrument,
    InstrumentConfig,
    _build_tower,
    build_open_clip_instrument,
    gender_prompts,
    occupation_prompts,
)
from biasloop.models.optimisation import fit_one_cycle
from biasloop.models.tensors import images_to_tensor

if TYPE_CHECKING:  # polars is imported where corpora are read: the open-clip path runs without it
    import polars as pl


log = logging.getLogger(__name__)


def _augment(batch: Any, generator: Any) -> Any:
    """Random sub-pixel shifts (up to 1.5 px), a 3x3 box blur on a third of the images, Gaussian noise.

    Generated images are blurrier and noisier than the corpus's; these keep the zero-shot occupation
    accuracy of noisy images near that of clean ones.
    """
    import torch
    import torch.nn.functional as F

    n, _, h, w = batch.shape
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * 1.5 * 2 / torch.tensor([w, h])
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(batch.device), list(batch.shape), align_corners=False)
    batch = F.grid_sample(batch, grid, mode="bilinear", padding_mode="border", align_corners=False)
    blur = (torch.rand(n, generator=generator) < 1 / 3).to(batch.device)
    if blur.any():
        blurred = F.avg_pool2d(F.pad(batch[blur], (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        batch = batch.clone()
        batch[blur] = blurred
    sigma = (torch.rand(n, 1, 1, 1, generator=generator) * 0.25).to(batch.device)
    noise = torch.randn(batch.shape, generator=generator).to(batch.device)
    return (batch + sigma * noise).clamp(-1, 1)


def train_locked_text_clip(
    config: InstrumentConfig,
    images: np.ndarray,
    captions: list[str],
    seed: int,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[Instrument, dict[str, Any]]:
    """Train the image tower against the frozen sentence encoder's caption embeddings (InfoNCE).

    Both directions of the contrastive loss; captions repeat (templates), so every pair in a batch
    whose caption equals the anchor's counts as a positive. AdamW with a one-cycle learning rate.

    Args:
        config: the ``instrument`` params.
        images: ``uint8`` training images ``(n, h, w, 3)``.
        captions: their captions.
        seed: torch seed (initialisation and batch order).
        device: torch device.
        progress: show a tqdm bar over batches.

    Returns:
        ``(instrument, stats)`` with training seconds, steps and the final loss.
    """
    import torch

    from biasloop.data.embeddings import load_cached_text_encoder

    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    if len(images) < 2:
        raise ValueError("the locked-text CLIP needs at least 2 (image, caption) pairs")
    if config.epochs < 1 or config.batch_size < 2:
        raise ValueError("instrument.epochs must be >= 1 and instrument.batch_size >= 2")
    start = time.perf_counter()
    with cpu_threads(config.cpu_threads, device):
        torch.manual_seed(seed)
        instrument = Instrument(config, device)
        cached = load_cached_text_encoder(config.text_encoder, device=device)
        instrument._text_encoder = cached
        unique = sorted(set(captions))
        index = {c: i for i, c in enumerate(unique)}
        text_vectors = torch.from_numpy(cached.encode(unique, progress=progress)).to(device)
        caption_index = torch.tensor([index[c] for c in captions], device=device)
        image_tensor = images_to_tensor(images).to(device)
        text_seconds = time.perf_counter() - start

        tower, log_scale, total, loss_value = _fit_image_tower(
            config, image_tensor, text_vectors, caption_index, seed, device, progress
        )
    instrument.image_tower = tower.eval()
    instrument.logit_scale = float(log_scale.detach().exp().clamp(max=100).item())
    stats = {
        "seconds": time.perf_counter() - start,
        "text_seconds": text_seconds,
        "epochs": config.epochs,
        "steps": total,
        "final_loss": loss_value,
        "n_pairs": len(captions),
        "n_unique_captions": len(unique),
        "logit_scale": instrument.logit_scale,
    }
    log.info(
        "locked-text CLIP: %d pairs, %d steps, final loss %.3f, temperature 1/%.1f, %.1f s",
        len(captions),
        total,
        loss_value,
        instrument.logit_scale,
        stats["seconds"],
    )
    return instrument, stats


def _fit_image_tower(
    config: InstrumentConfig,
    image_tensor: Any,
    text_vectors: Any,
    caption_index: Any,
    seed: int,
    device: str,
    progress: bool,
) -> tuple[Any, Any, int, float]:
    """Train a fresh image tower against fixed caption embeddings: symmetric InfoNCE where every pair
    sharing the anchor's caption is a positive, AdamW with a one-cycle learning rate.

    Returns ``(tower, log_scale, steps, final_loss)``; ``log_scale`` is the learnt log temperature.
    """
    import torch

    tower = _build_tower(config.widths, text_vectors.shape[1]).to(device)
    log_scale = torch.nn.Parameter(torch.tensor(float(np.log(30.0)), device=device))
    generator = torch.Generator().manual_seed(seed)
    tower.train()

    def batch_loss(batch: Any) -> Any:
        pixels = image_tensor[batch]
        if config.augment:
            pixels = _augment(pixels, generator)
        image_features = torch.nn.functional.normalize(tower(pixels), dim=-1)
        texts = caption_index[batch]
        targets = (texts[:, None] == texts[None, :]).float()
        logits = log_scale.exp().clamp(max=100) * image_features @ text_vectors[texts].T
        loss_images = -(targets / targets.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
        loss_texts = -(targets / targets.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()
        return (loss_images + loss_texts) / 2

    total, loss_value = fit_one_cycle(
        list(tower.parameters()) + [log_scale],
        batch_loss,
        len(image_tensor),
        config,
        weight_decay=1e-4,
        pct_start=0.15,
        generator=generator,
        desc="instrument steps",
        progress=progress,
        min_batch=2,  # BatchNorm and a contrastive loss need two pairs
    )
    return tower, log_scale, total, loss_value


def train_or_load_instrument(
    config: InstrumentConfig,
    images: np.ndarray | None,
    captions: list[str] | None,
    occupations: list[str] | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[Instrument, dict[str, Any]]:
    """The instrument ``config`` asks for: trained (locked-text-clip) or loaded (open-clip).

    Args:
        config: the ``instrument`` params.
        images: ``uint8`` training images (locked-text-clip; ignored by open-clip).
        captions: their captions.
        occupations: the occupations it will be asked about; their zero-shot class embeddings are
            computed once here, so a bad template fails before any image is classified.
        seed: training seed.
        device: torch device.
        progress: tqdm bars.

    Returns:
        ``(instrument, stats)``; ``stats["seconds"]`` is the training (or loading) time.
    """
    if config.backend == "locked-text-clip":
        if images is None or captions is None:
            raise ValueError("instrument.backend locked-text-clip is trained: images and captions are needed")
        instrument, stats = train_locked_text_clip(config, images, captions, seed, device, progress)
    else:
        start = time.perf_counter()
        instrument = build_open_clip_instrument(config, device)
        stats = {"seconds": time.perf_counter() - start, "model": config.model, "pretrained": config.pretrained}
    instrument.class_embeddings(list(gender_prompts(config.gender_templates).values()))
    if occupations:
        instrument.class_embeddings([occupation_prompts(config.occupation_templates, o) for o in occupations])
    return instrument, stats


def corpus_split(corpus: pl.DataFrame, name: str) -> pl.DataFrame:
    """The rows of one split (``train``/``test``); a corpus without splits is all ``train``."""
    import polars as pl

    if "split" not in corpus.columns:
        return corpus if name == "train" else corpus.clear()
    return corpus.filter(pl.col("split") == name)


def labelled_set(corpus: pl.DataFrame, config: InstrumentConfig) -> tuple[list[str], list[str], str] | None:
    """(image refs, true genders, source) to measure the instrument on, or None when there is none.

    The held-out split's ground truth when it has any; else ``instrument.labelled_csv``.
    """
    import polars as pl

    if "true_gender" in corpus.columns:
        test = corpus_split(corpus, "test").filter(pl.col("true_gender").is_in(["female", "male"]))
        if len(test):
            return test["image_ref"].to_list(), test["true_gender"].to_list(), "held-out split (ground truth)"
    if config.labelled_csv:
        labelled = pl.read_csv(config.labelled_csv, schema_overrides={"true_gender": pl.String})
        missing = [c for c in ("image_ref", "true_gender") if c not in labelled.columns]
        if missing:
            raise ValueError(f"instrument.labelled_csv {config.labelled_csv}: missing column(s) {missing}")
        labelled = labelled.filter(pl.col("true_gender").is_in(["female", "male"]))
        if not len(labelled):
            raise ValueError(f"instrument.labelled_csv {config.labelled_csv}: no row with true_gender female/male")
        return labelled["image_ref"].to_list(), labelled["true_gender"].to_list(), config.labelled_csv
    return None
