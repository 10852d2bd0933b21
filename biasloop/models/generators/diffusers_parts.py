"""The diffusers parts tiny-diffusion is built from (``UNet2DModel``, the DDPM training schedule and its
DDIM sampler), imported lightly (:func:`diffusers_class`), and the check of a saved schedule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from biasloop.models.generators import (
    GeneratorConfig,
)

# The diffusers modules tiny-diffusion uses, and the imports they would drag in without using them:
# the __init__ of two packages that imports every model of its kind (about 60 transformers and 11 UNets,
# with peft and transformers), and torch._dynamo, which diffusers.utils imports for a decorator and
# replaces with a no-op when it cannot be imported.
_DIFFUSERS_PARTS = {
    "UNet2DModel": "diffusers.models.unets.unet_2d",
    "DDPMScheduler": "diffusers.schedulers.scheduling_ddpm",
    "DDIMScheduler": "diffusers.schedulers.scheduling_ddim",
}
_EAGER_DIFFUSERS_PACKAGES = ("diffusers.models.unets", "diffusers.models.transformers")
_UNUSED_BY_DIFFUSERS_PARTS = "torch._dynamo"


def diffusers_class(name: str) -> type:
    """``UNet2DModel``, ``DDPMScheduler`` or ``DDIMScheduler``: diffusers' own class, imported lightly.

    A stage that loads a generator paid about 8 s for these imports, most of it for modules it never
    runs. The first call imports the three modules of ``_DIFFUSERS_PARTS`` with

    - each package of ``_EAGER_DIFFUSERS_PACKAGES`` that is not imported yet registered as a bare package
      (its ``__path__`` only, ``__init__`` not run), so ``unet_2d`` loads the two transformer modules it
      needs and not the 60 others;
    - ``torch._dynamo`` blocked (``sys.modules[name] = None``, the standard way to make an import fail),
      so ``diffusers.utils.torch_utils`` takes its own fallback (a no-op ``maybe_allow_in_graph``).

    Both are undone before returning: a later ``import diffusers.models.transformers`` (the
    stable-diffusion backend) runs the real ``__init__`` and reuses the modules loaded here, and
    ``torch._dynamo`` imports normally. ``benchmarks/startup.py`` measures both ways
    (``diffusers_tiny_diffusion_parts_plain`` and ``_light``: 7.4 s and 1.6 s here).
    """
    import importlib
    import importlib.util
    import sys

    module_name = _DIFFUSERS_PARTS[name]
    if any(module not in sys.modules for module in _DIFFUSERS_PARTS.values()):
        placed: list[str] = []
        if _UNUSED_BY_DIFFUSERS_PARTS not in sys.modules:
            sys.modules[_UNUSED_BY_DIFFUSERS_PARTS] = None  # type: ignore[assignment]
            placed.append(_UNUSED_BY_DIFFUSERS_PARTS)
        try:
            importlib.import_module("diffusers.models")
            for package in _EAGER_DIFFUSERS_PACKAGES:
                if package not in sys.modules:
                    spec = importlib.util.find_spec(package)
                    sys.modules[package] = importlib.util.module_from_spec(spec)
                    placed.append(package)
            for module in _DIFFUSERS_PARTS.values():
                importlib.import_module(module)
        finally:
            for module in placed:
                sys.modules.pop(module, None)
    return getattr(sys.modules[module_name], name)


def make_unet(config: GeneratorConfig) -> nn.Module:
    """The UNet2DModel the config describes (class embedding = identity: we pass the projected caption)."""
    UNet2DModel = diffusers_class("UNet2DModel")
    levels = len(config.channels)
    return UNet2DModel(
        sample_size=config.image_size,
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(config.channels),
        layers_per_block=config.layers_per_block,
        down_block_types=("DownBlock2D",) * levels,
        up_block_types=("UpBlock2D",) * levels,
        add_attention=config.mid_attention,
        attention_head_dim=8,
        norm_num_groups=8,
        class_embed_type="identity",
    )


def make_scheduler(config: GeneratorConfig) -> Any:
    """The training noise schedule (DDPM); sampling derives a DDIM scheduler from its config."""
    return diffusers_class("DDPMScheduler")(
        num_train_timesteps=config.train_timesteps,
        beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
        clip_sample=True,
        clip_sample_range=1.0,
    )


def ddim_from(ddpm: Any) -> Any:
    """The DDIM sampler of a DDPM training schedule: the keys of ``ddpm.config`` that DDIM accepts.

    What ``DDIMScheduler.from_config`` passes, without its ``_compatibles`` look-up, which imports every
    scheduler module diffusers has (scipy.stats with them: 1.1 s).
    """
    import inspect

    ddim_class = diffusers_class("DDIMScheduler")
    accepted = inspect.signature(ddim_class.__init__).parameters
    return ddim_class(**{key: value for key, value in ddpm.config.items() if key in accepted})


def check_scheduler_config(scheduler: Any, path: Path) -> None:
    """Fail, naming ``path``, when a saved ``scheduler_config.json`` differs from ``scheduler``'s config.

    ``load`` rebuilds the training schedule from the manifest's config (the scheduler is a function of
    it) rather than with ``DDPMScheduler.from_pretrained``, which imports every scheduler module; the
    saved file stays for diffusers tools and is checked against the rebuilt one.
    """
    from biasloop.models.weights import ModelFileError, read_manifest

    saved = read_manifest(path, "a saved tiny-diffusion generator's scheduler")
    built = dict(scheduler.config)
    differ = sorted(
        key
        for key, value in saved.items()
        if not key.startswith("_") and key in built and json.loads(json.dumps(built[key])) != value
    )
    if differ:
        raise ModelFileError(
            f"{path}: {', '.join(f'{k}={saved[k]!r}' for k in differ)} differ from the "
            f"generator.json config's schedule ({', '.join(f'{k}={built[k]!r}' for k in differ)})"
        )
