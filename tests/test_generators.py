"""Generators: the tiny-diffusion default and the stable-diffusion backend on a tiny random-weight pipeline.

Everything is built locally (no hub): tiny-diffusion with the hashing ``fake:32`` text encoder, and a
``StableDiffusionPipeline`` assembled from tiny configs and a CLIP tokenizer made from open_clip's bundled
BPE vocabulary, saved with ``save_pretrained`` and loaded back through the backend.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from biasloop.core.config import ConfigError
from biasloop.models.generators import (
    Generator,
    GeneratorConfig,
    build_generator,
    config_from_dict,
    load_generator,
    read_manifest,
)

TINY = GeneratorConfig(
    text_encoder="fake:32",
    image_size=8,
    channels=(8, 16),
    mid_attention=False,
    train_steps=4,
    batch_size=8,
    warmup_steps=2,
    train_timesteps=50,
)


def glyph_data(n: int = 24, size: int = 8) -> tuple[np.ndarray, list[str]]:
    """Coloured bars: horizontal for 'nurse', vertical for 'engineer'; red for women, blue for men."""
    rng = np.random.default_rng(0)
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    captions = []
    for i in range(n):
        occupation = ("nurse", "engineer")[i % 2]
        gender = ("female", "male")[(i // 2) % 2]
        colour = np.array([230, 40, 120] if gender == "female" else [40, 140, 230], dtype=np.uint8)
        row = int(rng.integers(2, size - 2))
        if occupation == "nurse":
            images[i, row, 1:-1] = colour
        else:
            images[i, 1:-1, row] = colour
        captions.append(f"a {gender} {occupation} at work" if i % 3 else f"a photo of a {occupation}")
    return images, captions


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    images, captions = glyph_data()
    generator = build_generator(TINY, "cpu", seed=0)
    stats = generator.train(images, captions, steps=TINY.train_steps, seed=0, progress=False)
    return generator, stats, images, captions


def test_tiny_diffusion_trains_and_generates(trained) -> None:
    generator, stats, _, _ = trained
    assert isinstance(generator, Generator)
    assert stats["steps"] == 4 and stats["seconds"] > 0 and np.isfinite(stats["final_loss"])
    assert stats["warm_start"] is False
    images = generator.generate(["a female nurse", "an engineer", "a male nurse"], [1, 2, 3], batch_size=2)
    assert images.shape == (3, 8, 8, 3) and images.dtype == np.uint8
    assert generator.generate([], []).shape == (0, 8, 8, 3)
    with pytest.raises(ValueError, match="seed"):
        generator.generate(["a nurse"], [1, 2])


def test_seeds_decide_images_not_batches(trained) -> None:
    generator, _, _, _ = trained
    prompts = ["a female nurse", "an engineer", "a male nurse"]
    first = generator.generate(prompts, [5, 6, 7], batch_size=3)
    again = generator.generate(prompts, [5, 6, 7], batch_size=3)
    np.testing.assert_array_equal(first, again)
    other = generator.generate(prompts, [8, 9, 10], batch_size=3)
    assert not np.array_equal(first, other)
    alone = generator.generate(prompts[1:2], [6], batch_size=1)
    assert np.abs(alone[0].astype(int) - first[1].astype(int)).max() <= 1  # batch composition does not matter


def test_sampling_settings_are_not_saved_and_old_manifests_still_load(trained, tmp_path: Path) -> None:
    """Guidance and denoising steps are sampling-time arguments: never in the manifest; a manifest written
    before they moved (``config.guidance_scale``/``sampling_steps``) loads, and the values it holds are ignored."""
    generator, _, _, _ = trained
    generator.save(tmp_path / "gen")
    manifest = read_manifest(tmp_path / "gen")
    assert not {"guidance_scale", "sampling_steps"} & set(manifest["config"])
    assert "guidance_scale" not in {f.name for f in dataclasses.fields(GeneratorConfig)}
    prompts, seeds = ["a female nurse", "an engineer"], [11, 12]
    default = generator.generate(prompts, seeds)
    np.testing.assert_array_equal(default, generator.generate(prompts, seeds, guidance_scale=1.5, steps=6))
    assert not np.array_equal(default, generator.generate(prompts, seeds, guidance_scale=4.0))
    assert not np.array_equal(default, generator.generate(prompts, seeds, steps=2))

    manifest["config"].update(guidance_scale=9.0, sampling_steps=2)  # an old manifest
    (tmp_path / "gen" / "generator.json").write_text(json.dumps(manifest))
    loaded = load_generator(tmp_path / "gen", "cpu")
    np.testing.assert_array_equal(default, loaded.generate(prompts, seeds))
    with pytest.raises(ConfigError, match="generator.guidance_scale: unknown key"):
        config_from_dict({"guidance_scale": 1.5})  # in params.yaml it belongs to `sampling`


def test_save_load_round_trip_and_warm_start(trained, tmp_path: Path) -> None:
    generator, _, images, captions = trained
    generator.save(tmp_path / "gen")
    manifest = read_manifest(tmp_path / "gen")
    assert manifest["backend"] == "tiny-diffusion" and manifest["trained_steps"] == 4
    assert (tmp_path / "gen" / "unet" / "config.json").exists()
    loaded = load_generator(tmp_path / "gen", "cpu")
    prompts, seeds = ["a female nurse", "an engineer"], [11, 12]
    np.testing.assert_array_equal(generator.generate(prompts, seeds), loaded.generate(prompts, seeds))

    shift = loaded.ema.cond.shift.clone()
    before = [p.detach().clone() for p in loaded.ema.unet.parameters()]
    stats = loaded.train(images, captions, steps=2, seed=1, progress=False)
    assert stats["warm_start"] is True and stats["total_steps"] == 6
    assert any(not np.allclose(b, a.detach()) for b, a in zip(before, loaded.ema.unet.parameters()))
    np.testing.assert_array_equal(shift, loaded.ema.cond.shift)  # standardisation kept on warm start
    loaded.save(tmp_path / "gen1")
    assert len(read_manifest(tmp_path / "gen1")["history"]) == 2


def test_saved_scheduler_that_disagrees_with_the_config_is_refused(trained, tmp_path: Path) -> None:
    from biasloop.models.weights import ModelFileError

    generator, _, _, _ = trained
    generator.save(tmp_path / "gen")
    path = tmp_path / "gen" / "scheduler" / "scheduler_config.json"
    saved = json.loads(path.read_text())
    assert saved["num_train_timesteps"] == TINY.train_timesteps
    path.write_text(json.dumps({**saved, "num_train_timesteps": 999}))
    with pytest.raises(ModelFileError, match=r"scheduler_config.json: num_train_timesteps=999 differ"):
        load_generator(tmp_path / "gen", "cpu")
    path.write_text("{not json")
    with pytest.raises(ModelFileError, match="scheduler_config.json: not a readable JSON manifest"):
        load_generator(tmp_path / "gen", "cpu")
    path.unlink()
    with pytest.raises(FileNotFoundError, match="scheduler_config.json: not found"):
        load_generator(tmp_path / "gen", "cpu")


def test_ddim_sampler_matches_diffusers_from_config() -> None:
    from diffusers import DDIMScheduler

    from biasloop.models.generators.diffusers_parts import ddim_from, make_scheduler

    ddpm = make_scheduler(TINY)
    ours, theirs = ddim_from(ddpm), DDIMScheduler.from_config(ddpm.config)

    def public(scheduler) -> dict:
        return {k: v for k, v in scheduler.config.items() if not k.startswith("_")}

    assert public(ours) == public(theirs) and public(ours)["num_train_timesteps"] == TINY.train_timesteps


LIGHT_IMPORT = """
import sys
from biasloop.models.generators.diffusers_parts import diffusers_class
unet = diffusers_class("UNet2DModel")
light = sorted(m for m in ("torch._dynamo", "peft", "scipy.stats", "diffusers.models.transformers",
                           "diffusers.models.transformers.transformer_flux", "diffusers.models.unets.unet_1d")
               if m in sys.modules)
import torch
from diffusers import Transformer2DModel, UNet2DModel, UNet2DConditionModel
from diffusers.models.unets import UNet1DModel
print(light, UNet2DModel is unet, torch._dynamo.is_compiling(), Transformer2DModel.__name__)
"""


@pytest.mark.slow
def test_tiny_diffusion_imports_only_the_diffusers_modules_it_uses() -> None:
    """The light import loads neither torch._dynamo nor diffusers' other models, and leaves nothing
    behind: the full packages import normally afterwards, with the same UNet2DModel class."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", LIGHT_IMPORT],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[] True False Transformer2DModel"


def test_training_is_reproducible() -> None:
    images, captions = glyph_data(12)
    outs = []
    for _ in range(2):
        generator = build_generator(TINY, "cpu", seed=3)
        generator.train(images, captions, steps=2, seed=4, progress=False)
        outs.append(generator.generate(["a nurse"], [0]))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_config_errors_name_the_key() -> None:
    assert config_from_dict({"backend": "tiny-diffusion", "channels": [16, 32]}).channels == (16, 32)
    with pytest.raises(ConfigError, match="generator.colour"):
        config_from_dict({"colour": 1})
    with pytest.raises(ConfigError, match="generator.backend"):
        config_from_dict({"backend": "gan"})
    with pytest.raises(ValueError, match="generator.channels"):
        build_generator(dataclasses.replace(TINY, channels=(12, 16)))
    with pytest.raises(ValueError, match="generator.model"):
        build_generator(GeneratorConfig(backend="stable-diffusion"))
    with pytest.raises(FileNotFoundError, match="generator.json"):
        load_generator("/nonexistent/generator")


# ------------------------------------------------------------------------------------ stable diffusion
def tiny_sd_pipeline(folder: Path) -> Path:
    """A random-weight SD-architecture pipeline (latents 8x8 -> images 16x16), saved to ``folder``."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from biasloop.models.generators.stable_diffusion import offline_clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )
    tokenizer = offline_clip_tokenizer(folder.parent / "tokenizer_src")
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_stable_diffusion_backend_on_tiny_local_pipeline(tmp_path: Path) -> None:
    model = tiny_sd_pipeline(tmp_path / "tiny-sd")
    assert json.loads((model / "model_index.json").read_text())["safety_checker"] == [None, None]
    config = GeneratorConfig(backend="stable-diffusion", model=str(model), image_size=8, batch_size=2, lora_rank=2)
    generator = build_generator(config, "cpu")
    assert generator.native_size == 16
    prompts = ["a photo of a nurse", "a male engineer"]
    images = generator.generate(prompts, [0, 1], batch_size=2, steps=2)
    assert images.shape == (2, 8, 8, 3) and images.dtype == np.uint8
    alone = generator.generate(prompts[1:], [1], batch_size=1, steps=2)
    assert np.abs(alone[0].astype(int) - images[1].astype(int)).max() <= 1

    data, captions = glyph_data(4, size=16)
    stats = generator.train(data, captions, steps=2, seed=0, progress=False)
    assert stats["steps"] == 2 and np.isfinite(stats["final_loss"]) and stats["lora_parameters"] > 0
    after = generator.generate(prompts, [0, 1])
    generator.save(tmp_path / "gen")
    assert (tmp_path / "gen" / "lora.safetensors").exists()
    loaded = load_generator(tmp_path / "gen", "cpu")
    assert loaded.has_lora
    np.testing.assert_array_equal(after, loaded.generate(prompts, [0, 1]))
    stats = loaded.train(data, captions, steps=1, seed=1, progress=False)
    assert stats["warm_start"] is True and stats["total_steps"] == 3


def test_stable_diffusion_lora_initial_weights_follow_the_seed(tmp_path: Path) -> None:
    """The LoRA adapters' initial weights come from the generator's seed, not torch's global state."""
    import torch

    model = tiny_sd_pipeline(tmp_path / "tiny-sd")
    config = GeneratorConfig(backend="stable-diffusion", model=str(model), image_size=8, lora_rank=2)

    def initial_lora(seed: int, noise_before: bool) -> list:
        generator = build_generator(config, "cpu", seed=seed)
        if noise_before:
            torch.rand(1000)  # moves the global generator; must not matter
        generator._add_lora()
        return [p.detach().clone() for p in generator._lora_parameters()]

    first, again, other = initial_lora(0, False), initial_lora(0, True), initial_lora(1, False)
    assert first and all(torch.equal(a, b) for a, b in zip(first, again))
    assert any(not torch.equal(a, b) for a, b in zip(first, other))
