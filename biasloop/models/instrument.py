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
(:func:`biasloop.models.labelling.label_from_p`) keeps only confident images.

The default models are tiny: on CPU they run with ``cpu_threads`` torch threads (1 by default), which
on a shared 2-core machine trained the image tower about 25 times faster than 2 threads (thread
oversubscription); the previous thread count is restored afterwards.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from biasloop.core.config import from_dict, to_dict
from biasloop.core.runtime import cpu_threads
from biasloop.data.text import fill_template
from biasloop.models.layers import conv_tower
from biasloop.models.tensors import images_to_tensor

if TYPE_CHECKING:  # polars is imported where corpora are read: the open-clip path runs without it
    import polars as pl

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
class ClassifyConfig:
    """``classify``: how images are labelled."""

    abstain_threshold: float = 0.1  # keep only p_female < t (male) or > 1 - t (female); else abstain
    batch_size: int = 512  # images per forward pass
    num_processes: int = 1  # classify@N's processes (GPUs) under `accelerate launch`; labels do not depend on it


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
                processes, ``classify.num_processes``); the tower is then not run.

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

    from biasloop.models.downstream_clip import _open_clip

    open_clip = _open_clip()  # with the repository's model configs (biasloop-tiny-clip) registered
    config = instrument.config
    # weights_only: a checkpoint file is never unpickled beyond tensors
    model, _, _ = open_clip.create_model_and_transforms(
        config.model, pretrained=config.pretrained, device=instrument.device, weights_only=True
    )
    model.eval()
    size = getattr(model.visual, "image_size", 224)
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    mean = torch.tensor(getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    instrument._open_clip = (model, (mean, std, size), open_clip.get_tokenizer(config.model))
    instrument.logit_scale = float(model.logit_scale.exp().item())


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
    from tqdm.auto import tqdm

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

        tower = _build_tower(config.widths, text_vectors.shape[1]).to(device)
        log_scale = torch.nn.Parameter(torch.tensor(float(np.log(30.0)), device=device))
        optimiser = torch.optim.AdamW(
            list(tower.parameters()) + [log_scale], lr=config.learning_rate, weight_decay=1e-4
        )
        steps_per_epoch = -(-len(images) // config.batch_size)
        total = steps_per_epoch * config.epochs
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimiser, max_lr=config.learning_rate, total_steps=total, pct_start=0.15
        )
        generator = torch.Generator().manual_seed(seed)
        loss_value = float("nan")
        bar = tqdm(total=total, desc="instrument steps", disable=not progress)
        for _ in range(config.epochs):
            tower.train()
            order = torch.randperm(len(images), generator=generator)
            for batch_start in range(0, len(order), config.batch_size):
                batch = order[batch_start : batch_start + config.batch_size]
                if len(batch) < 2:  # BatchNorm and a contrastive loss need two pairs
                    schedule.step()
                    continue
                pixels = image_tensor[batch]
                if config.augment:
                    pixels = _augment(pixels, generator)
                image_features = torch.nn.functional.normalize(tower(pixels), dim=-1)
                texts = caption_index[batch]
                targets = (texts[:, None] == texts[None, :]).float()
                logits = log_scale.exp().clamp(max=100) * image_features @ text_vectors[texts].T
                loss_images = -(targets / targets.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
                loss_texts = -(targets / targets.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()
                loss = (loss_images + loss_texts) / 2
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                schedule.step()
                loss_value = float(loss.item())
                bar.update(1)
        bar.close()
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


def build_open_clip_instrument(config: InstrumentConfig, device: str = "cpu") -> Instrument:
    """A pretrained (or, with ``pretrained: null``, random-weight) open_clip model as the instrument."""
    instrument = Instrument(config, device)
    with cpu_threads(config.cpu_threads, device):
        _load_open_clip(instrument)
    return instrument


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
