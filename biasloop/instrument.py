"""The perceived-gender classifier ("instrument"): zero-shot CLIP-style classification.

Two backends behind :class:`Instrument`, selected by ``instrument.backend``:

- ``locked-text-clip`` (default, offline): a frozen Sentence-BERT text tower (packaged all-MiniLM-L6-v2)
  and a small convolutional image tower trained contrastively (InfoNCE, learnable temperature) on the
  real corpus's (image, caption) pairs. Because the text tower is locked, zero-shot prompts such as
  "a photo of a woman" land in the same space as the captions the image tower learned from.
- ``open-clip``: a pretrained open_clip model (the paradox study used ViT-L/14 with "A photo of a man" /
  "A photo of a woman"); ``pretrained: null`` builds it at random weights, for tests.

Both classify by a softmax over class embeddings, each the normalised mean of its prompt templates'
embeddings. ``p_female`` is the probability of the "woman" class; the abstain rule
(:func:`biasloop.metrics.label_from_p`) keeps only confident images.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from biasloop.config import from_dict, to_dict

log = logging.getLogger(__name__)
MANIFEST = "instrument.json"


@dataclasses.dataclass(frozen=True)
class InstrumentConfig:
    """``instrument``: which perceived-gender classifier, and how it is trained."""

    backend: Literal["locked-text-clip", "open-clip"] = "locked-text-clip"  # which implementation
    text_encoder: str | None = None  # locked-text-clip: sentence encoder (None: packaged MiniLM; "fake:32" in tests)
    model: str = "ViT-L-14"  # open-clip: architecture name (the paradox study: ViT-L/14)
    pretrained: str | None = None  # open-clip: weights tag or file (e.g. "openai"); None: random weights
    widths: tuple[int, ...] = (16, 32, 64)  # locked-text-clip: conv channels per stage of the image tower
    epochs: int = 4  # locked-text-clip: passes over the training pairs
    batch_size: int = 256  # locked-text-clip: pairs per contrastive batch
    learning_rate: float = 3e-3  # locked-text-clip: AdamW learning rate
    gender_templates: tuple[str, ...] = ("a photo of a {}", "a portrait of a {}", "a {} at work")  # {} = man / woman
    occupation_templates: tuple[str, ...] = ("a photo of {article} {occupation}", "{article} {occupation} at work")
    labelled_csv: str | None = None  # real corpora: CSV (image_ref, true_gender) to measure accuracy on


@dataclasses.dataclass(frozen=True)
class ClassifyConfig:
    """``classify``: how images are labelled."""

    abstain_threshold: float = 0.1  # keep only p_female < t (male) or > 1 - t (female); else abstain
    batch_size: int = 512  # images per forward pass


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def occupation_prompts(templates: tuple[str, ...], occupation: str) -> list[str]:
    return [t.format(article=_article(occupation), occupation=occupation) for t in templates]


def gender_prompts(templates: tuple[str, ...]) -> dict[str, list[str]]:
    return {"female": [t.format("woman") for t in templates], "male": [t.format("man") for t in templates]}


def _image_tensor(images: np.ndarray, torch: Any) -> Any:
    """uint8 ``(n, h, w, 3)`` -> float ``(n, 3, h, w)`` in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _build_tower(widths: tuple[int, ...], embed_dim: int) -> Any:
    import torch.nn as nn

    layers: list[Any] = []
    channels = 3
    for i, width in enumerate(widths):
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        if i < len(widths) - 1:
            layers.append(nn.MaxPool2d(2))
        channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, embed_dim)]
    return nn.Sequential(*layers)


class Instrument:
    """A zero-shot classifier: image embeddings against class-prompt embeddings."""

    def __init__(self, config: InstrumentConfig, device: str = "cpu") -> None:
        self.config = config
        self.device = device
        self._text_encoder: Any = None
        self.image_tower: Any = None  # locked-text-clip
        self.logit_scale: float = 1.0
        self._open_clip: Any = None  # (model, preprocess normalisation, tokenizer)

    # --- text side ---------------------------------------------------------------------------
    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        if self.config.backend == "open-clip":
            import torch

            model, _, tokenizer = self._open_clip
            with torch.no_grad():
                vectors = model.encode_text(tokenizer(texts).to(self.device)).float()
            return torch.nn.functional.normalize(vectors, dim=-1).cpu().numpy()
        if self._text_encoder is None:
            from biasloop.embeddings import load_text_encoder

            self._text_encoder = load_text_encoder(self.config.text_encoder, device=self.device)
        return self._text_encoder.encode(texts)

    def class_embeddings(self, prompts_per_class: list[list[str]]) -> np.ndarray:
        """``(classes, dim)``: each class the normalised mean of its prompts' embeddings."""
        if self.config.backend == "open-clip":
            import torch
            from open_clip import build_zero_shot_classifier

            model, _, tokenizer = self._open_clip
            # All classes share template count here, so open_clip's builder applies directly.
            templates = [lambda c, i=i: c[i] for i in range(len(prompts_per_class[0]))]
            classnames = [tuple(p) for p in prompts_per_class]
            with torch.no_grad():
                weights = build_zero_shot_classifier(model, tokenizer, classnames, templates, device=self.device)
            return weights.T.float().cpu().numpy()
        vectors = [self._encode_texts(prompts).mean(axis=0) for prompts in prompts_per_class]
        matrix = np.stack(vectors)
        return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)

    # --- image side --------------------------------------------------------------------------
    def encode_images(self, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """Unit image embeddings for ``uint8`` images ``(n, h, w, 3)``."""
        import torch

        out = []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                batch = _image_tensor(images[start : start + batch_size], torch).to(self.device)
                if self.config.backend == "open-clip":
                    model, (mean, std, size), _ = self._open_clip
                    batch = torch.nn.functional.interpolate((batch + 1) / 2, size=size, mode="bicubic", align_corners=False)
                    batch = (batch - mean.to(self.device)) / std.to(self.device)
                    features = model.encode_image(batch).float()
                else:
                    self.image_tower.eval()
                    features = self.image_tower(batch)
                out.append(torch.nn.functional.normalize(features, dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 1), dtype=np.float32)

    def _probabilities(self, images: np.ndarray, classes: np.ndarray) -> np.ndarray:
        logits = self.logit_scale * self.encode_images(images) @ classes.T
        logits -= logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        return weights / weights.sum(axis=1, keepdims=True)

    def p_female(self, images: np.ndarray) -> np.ndarray:
        """Probability of the "woman" class per image (a 2-way softmax over the gender classes)."""
        prompts = gender_prompts(self.config.gender_templates)
        classes = self.class_embeddings([prompts["female"], prompts["male"]])
        return self._probabilities(images, classes)[:, 0]

    def occupation_probs(self, images: np.ndarray, occupations: list[str]) -> np.ndarray:
        """``(n, K)`` zero-shot probabilities over ``occupations``."""
        classes = self.class_embeddings([occupation_prompts(self.config.occupation_templates, o) for o in occupations])
        return self._probabilities(images, classes)

    # --- persistence -------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        """Write ``instrument.json`` (+ the image tower's weights for locked-text-clip)."""
        import torch

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        manifest = {"config": to_dict(self.config), "logit_scale": self.logit_scale}
        if self.config.backend == "locked-text-clip":
            manifest["embed_dim"] = int(self.image_tower[-1].out_features)
            torch.save(self.image_tower.state_dict(), folder / "image_tower.pt")
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))


def _load_open_clip(instrument: Instrument) -> None:
    import open_clip
    import torch

    config = instrument.config
    model, _, preprocess = open_clip.create_model_and_transforms(config.model, pretrained=config.pretrained,
                                                                 device=instrument.device)
    model.eval()
    size = model.visual.image_size if hasattr(model.visual, "image_size") else 224
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    mean = torch.tensor(getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    instrument._open_clip = (model, (mean, std, size), open_clip.get_tokenizer(config.model))
    instrument.logit_scale = float(model.logit_scale.exp().item())


def train_locked_text_clip(
    config: InstrumentConfig, images: np.ndarray, captions: list[str], seed: int, device: str = "cpu",
    progress: bool = True,
) -> tuple[Instrument, dict[str, Any]]:
    """Train the image tower against the frozen sentence encoder's caption embeddings (InfoNCE).

    Args:
        config: the ``instrument`` params.
        images: ``uint8`` training images.
        captions: their captions.
        seed: torch seed (initialisation and batch order).
        device: torch device.
        progress: show a tqdm bar over epochs.

    Returns:
        ``(instrument, stats)`` with training seconds and the final loss.
    """
    import torch
    from tqdm.auto import tqdm

    from biasloop.embeddings import CachedTextEncoder, load_text_encoder

    torch.manual_seed(seed)
    instrument = Instrument(config, device)
    encoder = load_text_encoder(config.text_encoder, device=device)
    cached = CachedTextEncoder(encoder) if not encoder.name.startswith("fake") else encoder
    instrument._text_encoder = cached
    unique = sorted(set(captions))
    index = {c: i for i, c in enumerate(unique)}
    text_vectors = torch.from_numpy(cached.encode(unique)).to(device)
    caption_index = torch.tensor([index[c] for c in captions], device=device)
    image_tensor = _image_tensor(images, torch).to(device)

    tower = _build_tower(config.widths, text_vectors.shape[1]).to(device)
    log_scale = torch.nn.Parameter(torch.tensor(np.log(30.0), device=device))
    optimiser = torch.optim.AdamW(list(tower.parameters()) + [log_scale], lr=config.learning_rate, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    loss_value = float("nan")
    for _ in tqdm(range(config.epochs), desc="instrument epochs", disable=not progress):
        tower.train()
        order = torch.randperm(len(images), generator=generator)
        for batch_start in range(0, len(order), config.batch_size):
            batch = order[batch_start : batch_start + config.batch_size]
            image_features = torch.nn.functional.normalize(tower(image_tensor[batch]), dim=-1)
            texts = caption_index[batch]
            # Captions repeat (templates): treat every text identical to the pair's as a positive.
            targets = (texts[:, None] == texts[None, :]).float()
            logits = log_scale.exp().clamp(max=100) * image_features @ text_vectors[texts].T
            loss_images = -(targets / targets.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
            loss_texts = -(targets / targets.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()
            loss = (loss_images + loss_texts) / 2
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            loss_value = float(loss.item())
    instrument.image_tower = tower.eval()
    instrument.logit_scale = float(log_scale.exp().clamp(max=100).item())
    stats = {"seconds": time.perf_counter() - start, "final_loss": loss_value, "epochs": config.epochs,
             "n_pairs": len(captions), "logit_scale": instrument.logit_scale}
    return instrument, stats


def build_open_clip_instrument(config: InstrumentConfig, device: str = "cpu") -> Instrument:
    """A pretrained (or, with ``pretrained: null``, random-weight) open_clip model as the instrument."""
    instrument = Instrument(config, device)
    _load_open_clip(instrument)
    return instrument


def load_instrument(folder: str | Path, device: str = "cpu") -> Instrument:
    """Load an instrument saved with :meth:`Instrument.save`."""
    import torch

    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path} not found: not an instrument folder")
    manifest = json.loads(manifest_path.read_text())
    config = from_dict(InstrumentConfig, manifest["config"], "instrument")
    instrument = Instrument(config, device)
    if config.backend == "open-clip":
        _load_open_clip(instrument)
        return instrument
    tower = _build_tower(config.widths, manifest["embed_dim"])
    tower.load_state_dict(torch.load(folder / "image_tower.pt", map_location=device, weights_only=True))
    instrument.image_tower = tower.to(device).eval()
    instrument.logit_scale = float(manifest["logit_scale"])
    return instrument


def evaluate_instrument(
    instrument: Instrument, images: np.ndarray, true_gender: list[str | None], threshold: float
) -> dict[str, Any]:
    """Accuracy, abstain rate and confusion (tpr, fpr for "female") against ground-truth labels."""
    from biasloop.metrics import confusion_rates, label_from_p

    labels = label_from_p(instrument.p_female(images), threshold)
    return confusion_rates(true_gender, labels)
