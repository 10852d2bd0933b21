"""The occupation classifier retrained on each generation's dataset (the generations study's task).

Zhang et al. (2024) retrain image classifiers on real/generated mixtures generation after generation and
follow their subgroup fairness. Here a classifier of the occupation shown in an image is trained from
scratch on dataset N's images and their occupation labels; its scores (accuracy per perceived gender,
worst-group accuracy, Fairlearn parity differences) are :func:`biasloop.metrics.classification.classifier_fairness`.

``classifier.architecture``: ``small-cnn`` (default; conv-BN-ReLU stages with max-pooling, global
average pooling, a linear head) or any ``timm`` architecture name (``resnet18``, ``test_resnet`` in
tests), built with ``timm.create_model(name, pretrained=False, num_classes=K)``: trained from scratch
either way, as in the study.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from biasloop.core.runtime import cpu_threads
from biasloop.models.layers import conv_tower
from biasloop.models.optimisation import fit_one_cycle
from biasloop.models.tensors import images_to_tensor

log = logging.getLogger(__name__)
SMALL_CNN = "small-cnn"


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """``classifier``: the occupation classifier retrained per generation and how it is scored."""

    architecture: str = SMALL_CNN  # small-cnn, or a timm model name (trained from scratch)
    widths: tuple[int, ...] = (16, 32)  # small-cnn: conv channels per stage (max-pool between stages)
    image_size: int | None = None  # input side in pixels (None: the dataset's; timm models may need more)
    label_column: str = "true_occupation"  # dataset column with the occupation label; rows without one are skipped
    epochs: int = 8  # passes over the dataset
    batch_size: int = 128  # images per batch
    learning_rate: float = 0.005  # AdamW peak learning rate (one-cycle schedule)
    weight_decay: float = 0.0005  # AdamW weight decay
    min_group_size: int = 20  # worst-group accuracy only over (occupation, gender) groups with this many test images
    n_boot: int = 200  # bootstrap resamples of the test images for the intervals of differences (gap, DP, EO)
    cpu_threads: int | None = None  # torch CPU threads while training/predicting (None: base.cpu_threads)


def _small_cnn(widths: Sequence[int], classes: int) -> Any:
    return conv_tower(widths, classes, "classifier.widths")


def build_classifier(config: ClassifierConfig, classes: int) -> Any:
    """The untrained network ``config.architecture`` names, with ``classes`` outputs."""
    if config.architecture == SMALL_CNN:
        return _small_cnn(config.widths, classes)
    try:
        import timm
    except ImportError as exc:  # pragma: no cover - timm comes with open_clip in the locked environment
        raise ValueError(
            f"classifier.architecture: {config.architecture!r} needs timm, which is not installed"
        ) from exc
    if not timm.is_model(config.architecture):
        raise ValueError(f"classifier.architecture: {config.architecture!r} is neither {SMALL_CNN!r} nor a timm model")
    return timm.create_model(config.architecture, pretrained=False, num_classes=classes)


class OccupationClassifier:
    """A trained network and its class names; :meth:`predict` returns occupation names."""

    def __init__(
        self, network: Any, classes: list[str], config: ClassifierConfig, image_size: int, device: str
    ) -> None:
        self.network = network
        self.classes = classes
        self.config = config
        self.image_size = image_size
        self.device = device

    def predict(self, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """The predicted occupation of each ``uint8 (n, h, w, 3)`` image (object array of names)."""
        import torch

        out = []
        self.network.eval()
        with cpu_threads(self.config.cpu_threads, self.device), torch.no_grad():
            for start in range(0, len(images), batch_size):
                pixels = images_to_tensor(images[start : start + batch_size], self.image_size).to(self.device)
                out.append(self.network(pixels).argmax(1).cpu().numpy())
        return np.array(self.classes, dtype=object)[np.concatenate(out)] if out else np.array([], dtype=object)


def train_classifier(
    images: np.ndarray,
    labels: Sequence[str],
    config: ClassifierConfig,
    seed: int,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[OccupationClassifier, dict[str, Any]]:
    """Train the occupation classifier from scratch with cross-entropy, AdamW and a one-cycle schedule.

    Args:
        images: ``uint8 (n, h, w, 3)`` training images.
        labels: their occupations.
        config: the ``classifier`` params.
        seed: initialisation and batch-order seed.
        device: torch device.
        progress: tqdm bar over steps.

    Returns:
        ``(classifier, stats)``; stats hold seconds, steps, the final loss and the training accuracy.
    """
    import torch

    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError(f"the occupation classifier needs at least 2 classes, found {classes}")
    if config.epochs < 1 or config.batch_size < 2:
        raise ValueError("classifier.epochs must be >= 1 and classifier.batch_size >= 2")
    index = {c: i for i, c in enumerate(classes)}
    image_size = config.image_size or int(images.shape[1])
    start = time.perf_counter()
    with cpu_threads(config.cpu_threads, device):
        torch.manual_seed(seed)
        network = build_classifier(config, len(classes)).to(device)
        pixels = images_to_tensor(images, image_size).to(device)
        targets = torch.tensor([index[label] for label in labels], device=device)
        generator = torch.Generator().manual_seed(seed)
        network.train()
        total, loss_value = fit_one_cycle(
            network.parameters(),
            lambda batch: torch.nn.functional.cross_entropy(network(pixels[batch]), targets[batch]),
            len(images),
            config,
            weight_decay=config.weight_decay,
            pct_start=0.2,
            generator=generator,
            desc="classifier steps",
            progress=progress,
            min_batch=2,  # batch norm needs two images
        )
        network.eval()
    classifier = OccupationClassifier(network, classes, config, image_size, device)
    stats = {
        "seconds": time.perf_counter() - start,
        "steps": total,
        "final_loss": loss_value,
        "n_images": len(images),
        "classes": classes,
        "architecture": config.architecture,
    }
    log.info(
        "occupation classifier %s: %d images, %d classes, %d steps, final loss %.3f, %.1f s",
        config.architecture,
        len(images),
        len(classes),
        total,
        loss_value,
        stats["seconds"],
    )
    return classifier, stats
