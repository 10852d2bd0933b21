"""The downstream CLIP: trained from scratch with open_clip on each generation's dataset.

Its bias (retrieval gaps, skew, group accuracy) measures what a future model inherits from a dataset
that mixes real and generated images (the replacement study). The architecture is data: a small
open_clip config in ``biasloop/models/model_configs/`` (``biasloop-tiny-clip``: a 2-layer ViT over 4x4 patches
of 16x16 images and a 2-layer text transformer), registered with ``open_clip.add_model_config`` and
built with ``open_clip.create_model(name, pretrained=None)``; ``downstream.model`` can name any
open_clip architecture instead (RN50, ViT-B-32 for the real study). Training uses open_clip's
``ClipLoss`` with AdamW and a one-cycle learning rate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from biasloop.core.config import from_dict, to_dict
from biasloop.core.runtime import cpu_threads
from biasloop.models.optimisation import fit_one_cycle
from biasloop.models.tensors import images_to_tensor

log = logging.getLogger(__name__)
CONFIG_DIR = Path(__file__).parent / "model_configs"
MANIFEST = "downstream.json"
WEIGHTS = "model.pt"


@dataclasses.dataclass(frozen=True)
class DownstreamConfig:
    """``downstream``: the CLIP retrained from scratch on each generation's dataset."""

    model: str = "biasloop-tiny-clip"  # open_clip architecture (biasloop/models/model_configs/*.json or built-in)
    epochs: int = 6  # passes over the dataset
    batch_size: int = 128  # pairs per contrastive batch
    learning_rate: float = 2e-3  # AdamW peak learning rate (one-cycle schedule)
    weight_decay: float = 0.1  # AdamW weight decay
    cpu_threads: int | None = None  # torch threads on CPU while training/encoding (None: the stage's base.cpu_threads)


def _open_clip() -> Any:
    """open_clip with the repository's model configs registered."""
    import open_clip

    if "biasloop-tiny-clip" not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)
    return open_clip


# open_clip logs this on the root logger, as a warning, whenever a model gets no pretrained weights.
_RANDOM_INIT_MESSAGE = "No pretrained weights loaded for model"


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_RANDOM_INIT_MESSAGE)


@contextlib.contextmanager
def expected_random_init() -> Iterator[None]:
    """Around an open_clip model built with ``pretrained=None`` on purpose (a tiny local model trained here,
    or one whose weights are loaded next): drop open_clip's warning "No pretrained weights loaded ...
    Model initialized randomly", which would read like an error in every run's log."""
    root, drop = logging.getLogger(), _DropRandomInitWarning()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


class DownstreamCLIP:
    """An open_clip model with numpy encoders (L2-normalised float32) for evaluation."""

    def __init__(self, model: Any, config: DownstreamConfig, device: str = "cpu") -> None:
        self.model = model
        self.config = config
        self.device = device
        self.tokenizer = _open_clip().get_tokenizer(config.model)
        size = model.visual.image_size
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)

    def image_batch(self, images: np.ndarray) -> Any:
        """``uint8 (n, h, w, 3)`` -> normalised float ``(n, 3, H, W)`` at the model's input size."""

        return images_to_tensor(images, self.image_size).to(self.device)

    def encode_images(self, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """Unit image embeddings ``(n, embed_dim)`` of ``uint8`` images ``(n, h, w, 3)``."""
        import torch

        self.model.eval()
        out = []
        with cpu_threads(self.config.cpu_threads, self.device), torch.no_grad():
            for start in range(0, len(images), batch_size):
                features = self.model.encode_image(self.image_batch(images[start : start + batch_size]), normalize=True)
                out.append(features.float().cpu().numpy())
        if not out:
            raise ValueError("no images to encode")
        return np.concatenate(out)

    def encode_texts(self, texts: list[str], batch_size: int = 512) -> np.ndarray:
        """Unit text embeddings ``(n, embed_dim)``."""
        import torch

        self.model.eval()
        out = []
        with cpu_threads(self.config.cpu_threads, self.device), torch.no_grad():
            for start in range(0, len(texts), batch_size):
                tokens = self.tokenizer(list(texts[start : start + batch_size])).to(self.device)
                out.append(self.model.encode_text(tokens, normalize=True).float().cpu().numpy())
        if not out:
            raise ValueError("no texts to encode")
        return np.concatenate(out)


def train_downstream_clip(
    images: np.ndarray,
    captions: list[str],
    config: DownstreamConfig,
    seed: int,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[DownstreamCLIP, dict[str, Any]]:
    """Train an open_clip model from scratch with its contrastive loss (``open_clip.ClipLoss``).

    Args:
        images: ``uint8`` training images ``(n, h, w, 3)``.
        captions: their captions.
        config: the ``downstream`` params.
        seed: initialisation and batch-order seed.
        device, progress: torch device; a tqdm bar over steps.

    Returns:
        ``(model, stats)``; stats hold seconds, steps, the final loss and the learned temperature.
    """
    import torch

    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    if len(images) < 2:
        raise ValueError("the downstream CLIP needs at least 2 (image, caption) pairs")
    if config.epochs < 1 or config.batch_size < 2:
        raise ValueError("downstream.epochs must be >= 1 and downstream.batch_size >= 2")
    open_clip = _open_clip()
    start = time.perf_counter()
    with cpu_threads(config.cpu_threads, device):
        torch.manual_seed(seed)
        with expected_random_init():
            model = open_clip.create_model(config.model, pretrained=None, device=device)
        log.info("downstream CLIP %s initialised randomly (trained here from scratch, by design)", config.model)
        wrapper = DownstreamCLIP(model, config, device)
        loss_fn = open_clip.ClipLoss()
        all_tokens = wrapper.tokenizer(list(captions))
        all_images = wrapper.image_batch(images)
        generator = torch.Generator().manual_seed(seed)
        model.train()
        total, loss_value = fit_one_cycle(
            model.parameters(),
            lambda batch: _clip_loss(model, loss_fn, all_images[batch], all_tokens[batch].to(device)),
            len(images),
            config,
            weight_decay=config.weight_decay,
            pct_start=0.1,
            generator=generator,
            desc="downstream CLIP steps",
            progress=progress,
            min_batch=2,  # a contrastive batch needs two pairs
            after_step=lambda: _clamp_temperature(model),
        )
        model.eval()
    stats = {
        "seconds": time.perf_counter() - start,
        "steps": total,
        "final_loss": loss_value,
        "n_pairs": len(captions),
        "model": config.model,
        "logit_scale": float(model.logit_scale.detach().exp().item()),
    }
    log.info(
        "downstream CLIP %s: %d pairs, %d steps, final loss %.3f, %.1f s",
        config.model,
        len(captions),
        total,
        loss_value,
        stats["seconds"],
    )
    return wrapper, stats


def _clip_loss(model: Any, loss_fn: Any, images: Any, tokens: Any) -> Any:
    """open_clip's contrastive loss of one batch (the model returns a tuple or, in newer versions, a dict)."""
    output = model(images, tokens)
    if isinstance(output, dict):
        output = (output["image_features"], output["text_features"], output["logit_scale"])
    return loss_fn(*output[:3])


def _clamp_temperature(model: Any) -> None:
    """Keep the learned logit scale in [0, log 100], as CLIP's training does."""
    import torch

    with torch.no_grad():
        model.logit_scale.clamp_(0, float(np.log(100)))


def save_downstream(model: DownstreamCLIP, folder: str | Path, config: DownstreamConfig | None = None) -> None:
    """Write the weights (``model.pt``) and ``downstream.json`` (architecture name and config)."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.model.state_dict(), folder / WEIGHTS)
    config = config or model.config
    manifest = {"model": config.model, "config": to_dict(config)}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def load_downstream(folder: str | Path, device: str = "cpu") -> DownstreamCLIP:
    """Load a model saved with :func:`save_downstream`."""
    from biasloop.models.weights import (
        load_state_dict_file,
        load_weights_into,
        manifest_field,
        read_manifest,
    )

    folder = Path(folder)
    manifest_path = folder / MANIFEST
    manifest = read_manifest(manifest_path, "a downstream CLIP folder (run retrain/pretrain)")
    config = from_dict(
        DownstreamConfig,
        manifest.get("config") or {"model": manifest_field(manifest, "model", manifest_path)},
        f"{manifest_path}: config",
    )
    open_clip = _open_clip()
    with cpu_threads(config.cpu_threads, device):
        with expected_random_init():  # the saved weights are loaded next
            model = open_clip.create_model(config.model, pretrained=None, device=device)
        load_weights_into(model, load_state_dict_file(folder / WEIGHTS, device), folder / WEIGHTS)
    model.eval()
    return DownstreamCLIP(model, config, device)
