"""The perceived-gender classifier ("instrument"): zero-shot CLIP-style classification.

Two backends behind :class:`Instrument`, selected by ``instrument.backend``:

- ``locked-text-clip`` (default, offline): a frozen Sentence-BERT text tower (packaged all-MiniLM-L6-v2)
  and a small convolutional image tower trained contrastively (InfoNCE, learnable temperature) on the
  real corpus's (image, caption) pairs. Because the text tower is locked, zero-shot prompts such as
  "a photo of a woman" land in the same space as the captions the image tower learned from.
- ``open-clip``: a pretrained open_clip model (the paradox study used ViT-L/14 with "A photo of a man" /
  "A photo of a woman"), zero-shot through open_clip's ``build_zero_shot_classifier``;
  ``pretrained: null`` builds it at random weights, for tests.

Both classify by a softmax over class embeddings, each the normalised mean of its prompt templates'
embeddings. ``p_female`` is the probability of the "woman" class; the abstain rule
(:func:`biasloop.models.instrument.rule.label_from_p`) keeps only confident images. Any attribute's K
classes are scored the same way (:meth:`Instrument.class_probabilities`;
:mod:`biasloop.models.instrument.kclass`).

The default models are tiny: on CPU they run with ``cpu_threads`` torch threads (1 by default), which
on a shared 2-core machine trained the image tower about 25 times faster than 2 threads (thread
oversubscription); the previous thread count is restored afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from biasloop.core.config import from_dict, to_dict
from biasloop.core.runtime import cpu_threads
from biasloop.data.text import fill_template
from biasloop.models.layers import conv_tower
from biasloop.models.tensors import images_to_tensor

if TYPE_CHECKING:  # polars is imported where corpora are read: the open-clip path runs without it
    pass


log = logging.getLogger(__name__)
MANIFEST = "instrument.json"
WEIGHTS = "image_tower.pt"


@dataclasses.dataclass(frozen=True)
class InstrumentConfig:
    """``instrument``: which perceived-gender classifier, and how it is trained."""

    backend: Literal["locked-text-clip", "open-clip"] = "locked-text-clip"  # which implementation
    text_encoder: str | None = None  # locked-text-clip: sentence encoder (None: packaged MiniLM; "fake:32" in tests)
    model: str = "ViT-L-14"  # open-clip: architecture name (the paradox study: ViT-L/14)
    pretrained: str | None = None  # open-clip: weights tag or file (e.g. "openai"); None: random weights
    widths: tuple[int, ...] = (16, 32, 64)  # locked-text-clip: conv channels per stage of the image tower
    folds: int = 2  # locked-text-clip: cross-fitting folds K (>= 2); K models, each trained without one fold
    epochs: int = 20  # locked-text-clip: passes over the training pairs (per fold model)
    batch_size: int = 256  # locked-text-clip: pairs per contrastive batch
    learning_rate: float = 3e-3  # locked-text-clip: AdamW peak learning rate (one-cycle schedule)
    gender_templates: tuple[str, ...] = (
        "a photo of {article} {gender}",
        "a portrait of {article} {gender}",
        "{article} {gender} at work",
    )  # {gender} = woman / man
    occupation_templates: tuple[str, ...] = ("a photo of {article} {occupation}", "{article} {occupation} at work")
    labelled_csv: str | None = None  # real corpora: CSV (image_ref, true_gender) to measure accuracy on
    augment: bool = True  # locked-text-clip: random shifts, blur and noise in training (robust on generated images)
    cpu_threads: int | None = None  # torch threads on CPU while training/encoding (None: the stage's base.cpu_threads)

    BACKEND_KEYS: ClassVar[dict[str, tuple[str, ...]]] = {  # keys only one backend reads (a warning otherwise)
        "locked-text-clip": ("text_encoder", "folds", "widths", "epochs", "batch_size", "learning_rate", "augment"),
        "open-clip": ("model", "pretrained"),
    }


@dataclasses.dataclass(frozen=True)
class LabelConfig:
    """``label``: how images are labelled."""

    abstain_threshold: float = 0.1  # keep only p_female < t (male) or > 1 - t (female); else abstain
    batch_size: int = 512  # images per forward pass
    num_processes: int = 1  # label@N's processes (GPUs) under `accelerate launch`; labels do not depend on it


def occupation_prompts(templates: tuple[str, ...], occupation: str) -> list[str]:
    """The zero-shot prompts of one occupation (``{article}``: a/an, ``{occupation}``)."""
    return [fill_template(t, occupation=occupation) for t in templates]


def gender_prompts(templates: tuple[str, ...]) -> dict[str, list[str]]:
    """``{"female": [...], "male": [...]}``: each template with ``{gender}`` = woman / man."""
    return {
        label: [fill_template(t, gender=noun) for t in templates]
        for label, noun in (("female", "woman"), ("male", "man"))
    }


def _build_tower(widths: tuple[int, ...], embed_dim: int) -> Any:
    """The image tower: a conv tower projecting to the text tower's dimension."""
    return conv_tower(widths, embed_dim, "instrument.widths")


class Instrument:
    """A zero-shot classifier: unit image embeddings against class-prompt embeddings.

    Build one with :func:`train_or_load_instrument` (or :func:`load_instrument` for a saved one).
    """

    def __init__(self, config: InstrumentConfig, device: str = "cpu") -> None:
        self.config = config
        self.device = device
        self.logit_scale: float = 1.0  # softmax temperature (CLIP's exp(logit_scale))
        self.image_tower: Any = None  # locked-text-clip
        self._text_encoder: Any = None  # locked-text-clip, loaded lazily
        self._open_clip: Any = None  # open-clip: (model, (mean, std, size), tokenizer)
        self._classes: dict[tuple[tuple[str, ...], ...], np.ndarray] = {}

    # --- text side ---------------------------------------------------------------------------
    def _sentence_encoder(self) -> Any:
        if self._text_encoder is None:
            from biasloop.data.embeddings import load_cached_text_encoder

            self._text_encoder = load_cached_text_encoder(self.config.text_encoder, device=self.device)
        return self._text_encoder

    def class_embeddings(self, prompts_per_class: list[list[str]]) -> np.ndarray:
        """``(classes, dim)`` unit vectors: each class the normalised mean of its prompts' embeddings."""
        key = tuple(tuple(p) for p in prompts_per_class)
        if key in self._classes:
            return self._classes[key]
        if any(len(p) == 0 for p in prompts_per_class):
            raise ValueError("every class needs at least one prompt template")
        with cpu_threads(self.config.cpu_threads, self.device):
            if self.config.backend == "open-clip":
                import torch
                from open_clip import build_zero_shot_classifier

                model, _, tokenizer = self._open_clip
                if len({len(p) for p in prompts_per_class}) != 1:
                    raise ValueError("open-clip: every class needs the same number of prompts")
                # Each "class name" is the class's tuple of ready prompts; template i picks prompt i.
                templates = [lambda c, i=i: c[i] for i in range(len(prompts_per_class[0]))]
                with torch.no_grad():
                    weights = build_zero_shot_classifier(
                        model,
                        tokenizer,
                        list(key),
                        templates,
                        num_classes_per_batch=None,
                        device=self.device,
                        use_tqdm=False,
                    )
                matrix = weights.T.float().cpu().numpy()
            else:
                encoder = self._sentence_encoder()
                matrix = np.stack([encoder.encode(list(p)).mean(axis=0) for p in prompts_per_class])
        matrix = (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)
        self._classes[key] = matrix
        return matrix

    # --- image side --------------------------------------------------------------------------
    def encode_images(self, images: np.ndarray, batch_size: int = 512, progress: bool = False) -> np.ndarray:
        """Unit image embeddings ``(n, dim)`` for ``uint8`` images ``(n, h, w, 3)``, in batches."""
        import torch
        from tqdm.auto import tqdm

        out = []
        starts = range(0, len(images), batch_size)
        with cpu_threads(self.config.cpu_threads, self.device), torch.no_grad():
            for start in tqdm(starts, desc="instrument batches", disable=not progress or len(starts) < 2):
                batch = images_to_tensor(images[start : start + batch_size]).to(self.device)
                if self.config.backend == "open-clip":
                    model, (mean, std, size), _ = self._open_clip
                    batch = (batch + 1) / 2
                    if tuple(batch.shape[-2:]) != size:
                        # Corpus images are square (ingestion centre-crops), so a resize is open_clip's
                        # resize + centre crop; antialias as PIL does when shrinking (512 px -> 224 px).
                        batch = torch.nn.functional.interpolate(
                            batch, size=size, mode="bicubic", align_corners=False, antialias=True
                        ).clamp(0, 1)
                    features = model.encode_image((batch - mean.to(self.device)) / std.to(self.device)).float()
                else:
                    self.image_tower.eval()
                    features = self.image_tower(batch)
                out.append(torch.nn.functional.normalize(features, dim=-1).cpu().numpy())
        if not out:
            raise ValueError("no images to encode")
        return np.concatenate(out)

    def _probabilities(self, images: np.ndarray, classes: np.ndarray, batch_size: int, progress: bool) -> np.ndarray:
        return self._softmax(self.encode_images(images, batch_size, progress), classes)

    def _softmax(self, image_vectors: np.ndarray, classes: np.ndarray) -> np.ndarray:
        logits = self.logit_scale * image_vectors @ classes.T
        logits -= logits.max(axis=1, keepdims=True)
        weights = np.exp(logits.astype(np.float64))
        return weights / weights.sum(axis=1, keepdims=True)

    def class_probabilities(
        self,
        prompts_per_class: list[list[str]],
        images: np.ndarray | None,
        batch_size: int = 512,
        progress: bool = False,
        image_vectors: np.ndarray | None = None,
    ) -> np.ndarray:
        """``(n, K)`` zero-shot probabilities over K classes, each given by its prompts (a K-class attribute).

        The computation of :meth:`p_female` (a softmax over :meth:`class_embeddings`) for any classes:
        with the gender prompts, column 0 is :meth:`p_female`, bit for bit.

        Args:
            prompts_per_class: K lists of ready prompts.
            images: ``uint8`` images ``(n, h, w, 3)``; None when ``image_vectors`` is given.
            image_vectors: this model's :meth:`encode_images` of the images (the tower is then not run).
        """
        classes = self.class_embeddings(prompts_per_class)
        vectors = self.encode_images(images, batch_size, progress) if image_vectors is None else image_vectors
        return self._softmax(vectors, classes)

    def _gender_classes(self) -> np.ndarray:
        prompts = gender_prompts(self.config.gender_templates)
        return self.class_embeddings([prompts["female"], prompts["male"]])

    def p_female(self, images: np.ndarray, batch_size: int = 512, progress: bool = False) -> np.ndarray:
        """Probability of the "woman" class per image (a 2-way softmax over the gender classes)."""
        return self._probabilities(images, self._gender_classes(), batch_size, progress)[:, 0]

    def p_female_and_occupation(
        self,
        images: np.ndarray | None,
        occupations: list[str],
        batch_size: int = 512,
        progress: bool = False,
        image_vectors: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`p_female` and :meth:`occupation_probs` from one pass of the image tower (each image encoded once).

        Args:
            images: ``uint8`` images ``(n, h, w, 3)``; None when ``image_vectors`` is given.
            image_vectors: this model's :meth:`encode_images` of the images, computed elsewhere (by several
                processes, ``label.num_processes``); the tower is then not run.

        Returns:
            ``(p_female (n,), occupation probabilities (n, K))``.
        """
        if not occupations:
            raise ValueError("occupation_probs: no occupations given")
        occupation_classes = self.class_embeddings(
            [occupation_prompts(self.config.occupation_templates, o) for o in occupations]
        )
        vectors = self.encode_images(images, batch_size, progress) if image_vectors is None else image_vectors
        return self._softmax(vectors, self._gender_classes())[:, 0], self._softmax(vectors, occupation_classes)

    def occupation_probs(
        self, images: np.ndarray, occupations: list[str], batch_size: int = 512, progress: bool = False
    ) -> np.ndarray:
        """``(n, K)`` zero-shot probabilities over ``occupations``."""
        if not occupations:
            raise ValueError("occupation_probs: no occupations given")
        classes = self.class_embeddings([occupation_prompts(self.config.occupation_templates, o) for o in occupations])
        return self._probabilities(images, classes, batch_size, progress)

    # --- persistence -------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        """Write ``instrument.json`` (config, temperature) and, for locked-text-clip, the tower's weights.

        An open-clip instrument is saved as its config only: loading rebuilds it from
        ``model``/``pretrained`` (a weights tag or a local file).
        """
        import torch

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        manifest: dict[str, Any] = {"config": to_dict(self.config), "logit_scale": self.logit_scale}
        if self.config.backend == "locked-text-clip":
            manifest["embed_dim"] = int(self.image_tower[-1].out_features)
            torch.save(self.image_tower.state_dict(), folder / WEIGHTS)
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _load_open_clip(instrument: Instrument) -> None:
    import torch

    from biasloop.models.downstream_clip import _open_clip, expected_random_init

    open_clip = _open_clip()  # with the repository's model configs (biasloop-tiny-clip) registered
    config = instrument.config
    random_init = expected_random_init() if config.pretrained is None else contextlib.nullcontext()
    with random_init:  # weights_only: a checkpoint file is never unpickled beyond tensors
        model, _, _ = open_clip.create_model_and_transforms(
            config.model, pretrained=config.pretrained, device=instrument.device, weights_only=True
        )
    if config.pretrained is None:
        log.info("open_clip instrument %s initialised randomly (instrument.pretrained: null, for tests)", config.model)
    model.eval()
    size = getattr(model.visual, "image_size", 224)
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    mean = torch.tensor(getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    instrument._open_clip = (model, (mean, std, size), open_clip.get_tokenizer(config.model))
    instrument.logit_scale = float(model.logit_scale.exp().item())


def build_open_clip_instrument(config: InstrumentConfig, device: str = "cpu") -> Instrument:
    """A pretrained (or, with ``pretrained: null``, random-weight) open_clip model as the instrument."""
    instrument = Instrument(config, device)
    with cpu_threads(config.cpu_threads, device):
        _load_open_clip(instrument)
    return instrument


def load_instrument(folder: str | Path, device: str = "cpu") -> Instrument:
    """Load an instrument saved with :meth:`Instrument.save`."""
    from biasloop.models.weights import (
        load_state_dict_file,
        load_weights_into,
        manifest_field,
        read_manifest,
    )

    folder = Path(folder)
    manifest_path = folder / MANIFEST
    manifest = read_manifest(manifest_path, "an instrument folder (run the instrument stage)")
    config = from_dict(InstrumentConfig, manifest_field(manifest, "config", manifest_path), f"{manifest_path}: config")
    instrument = Instrument(config, device)
    if config.backend == "open-clip":
        with cpu_threads(config.cpu_threads, device):
            _load_open_clip(instrument)
        return instrument
    tower = _build_tower(config.widths, manifest_field(manifest, "embed_dim", manifest_path))
    load_weights_into(tower, load_state_dict_file(folder / WEIGHTS, device), folder / WEIGHTS)
    instrument.image_tower = tower.to(device).eval()
    instrument.logit_scale = float(manifest_field(manifest, "logit_scale", manifest_path))
    return instrument
