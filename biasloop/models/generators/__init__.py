"""Text-to-image generators behind one interface, selected by ``generator.backend``.

- ``tiny-diffusion`` (default): a small text-conditional diffusion model built from diffusers parts
  (``UNet2DModel`` + a DDPM/DDIM scheduler), conditioned on the caption's sentence embedding and
  trained by the pipeline from scratch on CPU in minutes (:mod:`biasloop.models.generators.tiny_diffusion`).
- ``stable-diffusion``: ``StableDiffusionPipeline.from_pretrained(generator.model)`` (SD 1.4/1.5 from the
  hub, only when a user sets it, or a local folder), optionally fine-tuned with LoRA per generation
  (:mod:`biasloop.models.generators.stable_diffusion`).
- ``images``: no model; pre-made images from the folder ``generator.images`` served by prompt and seed
  (:mod:`biasloop.models.generators.image_folder`, docs/audit.md).

Data contract: images are ``uint8`` arrays ``(n, H, W, 3)``; captions and prompts are strings. Image ``i``
of :meth:`Generator.generate` depends only on ``(prompts[i], seeds[i])``, never on the batch it ran in.

A saved generator is a folder with a ``generator.json`` naming its backend; :func:`load_generator`
reads it back on any device.

How a model is *sampled* (:class:`SamplingConfig`, params section ``sampling``: guidance scale, denoising
steps) is not part of the model: it is passed to :meth:`Generator.generate` by the sampling stages
(``generate@N``, ``mix@N``) and never saved, so changing it retrains nothing. Manifests written before
the split still carry ``guidance_scale``/``sampling_steps`` in their config; :func:`config_from_manifest`
drops them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np

from biasloop.core.config import from_dict

BACKENDS = ("tiny-diffusion", "stable-diffusion", "images")
MANIFEST = "generator.json"


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    """``generator``: which text-to-image model, and how it is trained and sampled."""

    backend: Literal["tiny-diffusion", "stable-diffusion", "images"] = "tiny-diffusion"  # which implementation
    model: str | None = None  # stable-diffusion: hub name (SD 1.4/1.5) or local pipeline folder; tiny: unused
    allow_download: bool = False  # let from_pretrained fetch a hub name that is not in the local cache
    text_encoder: str | None = None  # tiny: sentence encoder for captions (None: packaged MiniLM; "fake:32" in tests)
    image_size: int = 16  # pixels per side of the images the generator returns (and tiny-diffusion models)
    channels: tuple[int, ...] = (16, 32, 32)  # tiny: UNet block widths, one resolution level each
    layers_per_block: int = 1  # tiny: ResNet blocks per UNet level
    mid_attention: bool = True  # tiny: self-attention in the UNet's middle block (lowest resolution)
    train_steps: int = 300  # optimisation steps when training from scratch (warm starts: loop.generator_steps)
    batch_size: int = 128  # training batch size
    learning_rate: float = 3e-3  # tiny: peak AdamW learning rate (linear warm-up, cosine decay to 10%)
    warmup_steps: int = 50  # linear learning-rate warm-up steps at the start of every train() call
    ema_decay: float = 0.995  # tiny: EMA of the weights used for sampling (decay warms up from 0); 0 disables
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "sample"  # tiny: what the UNet predicts
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"  # tiny: noise schedule
    train_timesteps: int = 200  # tiny: diffusion timesteps of the training schedule
    snr_gamma: float = 0.0  # tiny: min-SNR-gamma loss weighting (Hang et al. 2023); 0: none (x0 target: 0 learns the glyphs in fewer steps)
    cond_dropout: float = 0.1  # share of training captions replaced by the null condition (for guidance)
    precision: Literal["auto", "fp32", "bf16"] = (
        "auto"  # tiny: training autocast; auto = bf16 on a CPU with AMX or a bf16 GPU
    )
    lora_rank: int = 4  # stable-diffusion: LoRA rank of the UNet attention adapters trained by train()
    lora_learning_rate: float = 1e-4  # stable-diffusion: AdamW learning rate of the LoRA weights
    native_size: int | None = (
        None  # stable-diffusion: generation/training resolution (None: the model's, 512 for SD 1.5)
    )
    images: str = (
        "imports"  # images: folder of pre-made images (manifest.csv or shards; docs/audit.md); a dep of generate@N
    )
    images_on_error: Literal["error", "skip"] = "error"  # images: on a bad image, error or recorded skip

    BACKEND_KEYS: ClassVar[dict[str, tuple[str, ...]]] = {  # keys only one backend reads (a warning otherwise)
        "tiny-diffusion": (
            "text_encoder",
            "channels",
            "layers_per_block",
            "mid_attention",
            "learning_rate",
            "ema_decay",
            "prediction_type",
            "beta_schedule",
            "train_timesteps",
            "snr_gamma",
            "precision",
        ),
        "stable-diffusion": ("model", "lora_rank", "lora_learning_rate", "native_size"),
        "images": ("images", "images_on_error"),
    }


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """``sampling``: how the sampling stages (``generate@N``, ``mix@N``) draw images from a trained generator."""

    guidance_scale: float = 1.5  # classifier-free guidance scale (1: no guidance)
    steps: int = 6  # DDIM denoising steps per image


# Sampling settings that manifests written before SamplingConfig existed carry in their ``config``.
LEGACY_SAMPLING_KEYS = ("guidance_scale", "sampling_steps")


@runtime_checkable
class Generator(Protocol):
    """A text-to-image model the pipeline can train, sample and save."""

    config: GeneratorConfig

    def train(
        self, images: np.ndarray, captions: list[str], *, steps: int, seed: int, progress: bool = True
    ) -> dict[str, Any]:
        """Train (or continue training) on ``images`` ``uint8 (n, H, W, 3)`` and their captions.

        Returns:
            Training statistics: at least ``steps``, ``seconds`` and ``final_loss``.
        """
        ...

    def generate(
        self,
        prompts: list[str],
        seeds: list[int],
        batch_size: int = 64,
        guidance_scale: float | None = None,
        steps: int | None = None,
    ) -> np.ndarray:
        """One image per ``(prompt, seed)``: ``uint8 (n, image_size, image_size, 3)``.

        Image ``i`` depends only on ``prompts[i]``, ``seeds[i]`` and the sampling settings
        (``guidance_scale``, ``steps``: None takes :class:`SamplingConfig`'s defaults).
        """
        ...

    def save(self, folder: str | Path) -> None:
        """Write the model into ``folder`` (created), with a ``generator.json`` naming the backend."""
        ...


def config_from_dict(data: dict[str, Any] | None) -> GeneratorConfig:
    """The ``generator`` section as a :class:`GeneratorConfig` (unknown keys and wrong types rejected)."""
    return from_dict(GeneratorConfig, data or {}, "generator")


def config_from_manifest(data: dict[str, Any] | None) -> GeneratorConfig:
    """A saved generator's ``config`` as a :class:`GeneratorConfig`; sampling keys of older manifests ignored."""
    return config_from_dict({k: v for k, v in (data or {}).items() if k not in LEGACY_SAMPLING_KEYS})


def validate_sampling(sampling: SamplingConfig) -> None:
    """Reject sampling settings no backend can use, naming the key."""
    if sampling.steps < 1:
        raise ValueError(f"sampling.steps: must be at least 1, got {sampling.steps}")
    if sampling.guidance_scale < 0:
        raise ValueError(f"sampling.guidance_scale: must be at least 0, got {sampling.guidance_scale}")


def validate_config(config: GeneratorConfig) -> None:
    """Reject values no backend can use, naming the key."""
    if config.image_size < 4:
        raise ValueError(f"generator.image_size: expected at least 4 pixels, got {config.image_size}")
    if config.backend == "tiny-diffusion":
        levels = len(config.channels)
        if levels < 1 or config.image_size % (2 ** (levels - 1)):
            raise ValueError(
                f"generator.channels: {levels} levels need image_size divisible by {2 ** (levels - 1)}, "
                f"got {config.image_size}"
            )
        if any(c % 8 for c in config.channels):
            raise ValueError(f"generator.channels: every width must be a multiple of 8, got {list(config.channels)}")
    if config.backend == "images" and not config.images:
        raise ValueError("generator.images: the images backend needs the folder of pre-made images")
    if config.backend == "stable-diffusion" and not config.model:
        raise ValueError("generator.model: the stable-diffusion backend needs a hub name or a local pipeline folder")
    for name in ("train_steps", "batch_size", "train_timesteps"):
        if getattr(config, name) < 1:
            raise ValueError(f"generator.{name}: must be at least 1, got {getattr(config, name)}")
    if not 0.0 <= config.cond_dropout < 1.0:
        raise ValueError(f"generator.cond_dropout: must be in [0, 1), got {config.cond_dropout}")
    if not 0.0 <= config.ema_decay < 1.0:
        raise ValueError(f"generator.ema_decay: must be in [0, 1), got {config.ema_decay}")


def build_generator(config: GeneratorConfig, device: str = "cpu", seed: int = 0) -> Generator:
    """A new (untrained, or for stable-diffusion pretrained) generator for ``config`` on ``device``.

    Args:
        config: the ``generator`` params.
        device: torch device string.
        seed: seed of the initial weights (tiny-diffusion: the whole model; stable-diffusion: the LoRA adapters).
    """
    validate_config(config)
    if config.backend == "tiny-diffusion":
        from biasloop.models.generators.tiny_diffusion import TinyDiffusion

        return TinyDiffusion(config, device=device, seed=seed)
    if config.backend == "stable-diffusion":
        from biasloop.models.generators.stable_diffusion import StableDiffusionGenerator

        return StableDiffusionGenerator(config, device=device, seed=seed)
    if config.backend == "images":
        from biasloop.models.generators.image_folder import ImageFolderGenerator

        return ImageFolderGenerator(config, device=device, seed=seed)
    raise ValueError(f"generator.backend: expected one of {list(BACKENDS)}, found {config.backend!r}")


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The ``generator.json`` of a saved generator."""
    from biasloop.models.weights import read_manifest as read_json_manifest

    return read_json_manifest(Path(folder) / MANIFEST, "a saved generator")


def load_generator(folder: str | Path, device: str = "cpu") -> Generator:
    """Load a generator saved with :meth:`Generator.save`, whatever its backend."""
    manifest = read_manifest(folder)
    backend = manifest.get("backend")
    if backend == "tiny-diffusion":
        from biasloop.models.generators.tiny_diffusion import TinyDiffusion

        return TinyDiffusion.load(folder, device=device)
    if backend == "stable-diffusion":
        from biasloop.models.generators.stable_diffusion import StableDiffusionGenerator

        return StableDiffusionGenerator.load(folder, device=device)
    if backend == "images":
        from biasloop.models.generators.image_folder import ImageFolderGenerator

        return ImageFolderGenerator.load(folder, device=device)
    raise ValueError(f"{Path(folder) / MANIFEST}: unknown backend {backend!r} (known: {list(BACKENDS)})")


def check_prompts_seeds(prompts: list[str], seeds: list[int]) -> None:
    """Prompts and seeds must pair up one to one."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds: one seed per image is needed")


__all__ = [
    "BACKENDS",
    "Generator",
    "GeneratorConfig",
    "SamplingConfig",
    "build_generator",
    "config_from_dict",
    "config_from_manifest",
    "load_generator",
    "read_manifest",
    "validate_sampling",
]
