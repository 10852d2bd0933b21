"""tiny-diffusion: a small text-conditional diffusion model built from diffusers parts, trained on CPU.

The denoiser is a diffusers ``UNet2DModel`` (a few resolution levels, no attention except optionally in
the middle block) whose time embedding receives the caption's sentence embedding (from a
:class:`biasloop.data.embeddings.TextEncoder`, MiniLM by default) through a small MLP
(``class_embed_type="identity"``). A learned null embedding replaces the caption for
``cond_dropout`` of the training samples, so sampling can use classifier-free guidance. Training uses a
diffusers ``DDPMScheduler`` (few timesteps, cosine schedule), an x0 ("sample") target weighted alike at
every noise level (``snr_gamma: 0``; min-SNR weighting is optional), AdamW with warm-up and cosine
decay, and an EMA of the weights; sampling uses a ``DDIMScheduler`` (deterministic, eta 0), so image
``i`` depends only on its prompt and its seed (the initial noise comes from a ``torch.Generator`` seeded
per image).

These defaults were chosen by measurement on 2 CPU cores (``benchmarks/tiny_diffusion_quality.py``):
see the report in ``benchmarks/results/tiny_diffusion.json``.

Saved layout (``save``/``load``)::

    folder/generator.json             backend, config, text encoder, training history
    folder/unet/                      UNet2DModel.save_pretrained (EMA weights)
    folder/scheduler/                 DDPMScheduler.save_pretrained
    folder/conditioning.safetensors   caption projection MLP and null embedding
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from biasloop.core.config import to_dict
from biasloop.data.embeddings import TextEncoder, load_cached_text_encoder
from biasloop.models.generators import (
    MANIFEST,
    GeneratorConfig,
    SamplingConfig,
    check_prompts_seeds,
    config_from_manifest,
)
from biasloop.models.generators.diffusers_parts import (
    check_scheduler_config,
    ddim_from,
    diffusers_class,
    make_scheduler,
    make_unet,
)
from biasloop.models.tensors import images_to_tensor, tensor_to_images

log = logging.getLogger(__name__)

_ENCODERS: dict[tuple[str | None, str], TextEncoder] = {}


def cached_text_encoder(name: str | None, device: str = "cpu") -> TextEncoder:
    """One text encoder per (name, device) per process, behind the shared on-disk embedding cache.

    The model itself loads only if a text is not cached: the captions are embedded once (by
    ``neighbours`` or ``pretrain``), and later stages that condition on them skip the seconds-long load.
    """
    key = (name, device)
    if key not in _ENCODERS:
        _ENCODERS[key] = load_cached_text_encoder(name, device=device)
    return _ENCODERS[key]


class TextConditioning(nn.Module):
    """Caption embedding -> time-embedding-sized vector; a learned null embedding for guidance.

    Sentence embeddings of captions that differ in one word (the occupation, a gender word) are close
    (cosine ~0.8), so the embedding is first standardised per dimension with the mean and spread of the
    training captions (fitted once, at the first training; kept on warm starts). Measured: this alone
    took digit accuracy after 1,000 steps from 45% to 82%.
    """

    def __init__(self, text_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.register_buffer("shift", torch.zeros(text_dim))
        self.register_buffer("scale", torch.ones(text_dim))
        self.register_buffer("fitted", torch.zeros(()))
        self.null = nn.Parameter(torch.zeros(text_dim))
        self.mlp = nn.Sequential(nn.Linear(text_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))

    @torch.no_grad()
    def fit(self, text: torch.Tensor) -> None:
        """Set the standardisation from the (unique) training caption embeddings ``text``."""
        spread = text.std(dim=0, unbiased=False) if len(text) > 1 else torch.ones_like(text[0])
        spread = spread.clamp_min(0.1 * float(spread.mean()) + 1e-6)
        self.shift.copy_(text.mean(dim=0))
        self.scale.copy_(4.0 / math.sqrt(text.shape[1]) / spread)
        self.fitted.fill_(1.0)

    def forward(self, text: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        text = (text - self.shift) * self.scale
        if drop is not None:
            text = torch.where(drop[:, None], self.null.to(text.dtype).expand_as(text), text)
        return self.mlp(text)


class Denoiser(nn.Module):
    """UNet2DModel + caption conditioning: ``forward(x_t, t, text, drop)`` -> model output."""

    def __init__(self, unet: nn.Module, cond: TextConditioning) -> None:
        super().__init__()
        self.unet = unet
        self.cond = cond

    def forward(
        self, sample: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor, drop: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.unet(sample, timesteps, class_labels=self.cond(text, drop)).sample


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether training autocasts to bf16: ``auto`` picks it where it is fast (AMX CPUs, bf16 GPUs)."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        check = getattr(torch.cpu, "_is_amx_tile_supported", None)
        try:
            return bool(check()) if check is not None else False
        except Exception:
            return False
    return False


class TinyDiffusion:
    """The ``tiny-diffusion`` backend (see the module docstring)."""

    backend = "tiny-diffusion"

    def __init__(
        self,
        config: GeneratorConfig,
        device: str = "cpu",
        seed: int = 0,
        text_encoder: TextEncoder | None = None,
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        self.text_encoder = text_encoder or cached_text_encoder(config.text_encoder, "cpu")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = make_unet(config)
            embed_dim = config.channels[0] * 4
            cond = TextConditioning(self.text_encoder.dim, embed_dim)
        self.model = Denoiser(unet, cond).to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.scheduler = make_scheduler(config)
        self.trained_steps = 0
        self.history: list[dict[str, Any]] = []

    # ----------------------------------------------------------------------------------- text
    def _embed(self, texts: list[str]) -> tuple[torch.Tensor, np.ndarray]:
        """Embeddings of the unique texts (each encoded once) and each text's row in them."""
        unique, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
        vectors = self.text_encoder.encode([str(t) for t in unique], batch_size=256)
        return torch.from_numpy(np.asarray(vectors, dtype=np.float32)).to(self.device), inverse.reshape(-1)

    # ----------------------------------------------------------------------------------- training
    def _loss_weights(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Per-sample loss weights: 1 with ``snr_gamma: 0``, else min-SNR-gamma for the prediction type.

        For the x0 target, min-SNR weighs a sample by min(SNR, gamma): the high-noise steps (SNR far
        below 1) get almost no weight, and there sampling decides the glyph (occupation) and the colour
        (perceived gender), both global features. Measured on the default world: gamma 5 reached occupation
        accuracy 0.31 after 350 steps and 0.525 after 500 (one seed,
        ``benchmarks/results/generator_quality_guidance.json``); no weighting 0.63 after 300 and 0.78 after
        400 (3 seeds, ``generator_quality_snr.json``). The better generator also amplifies more: the generator
        term in docs/results.md.
        """
        alphas = self.scheduler.alphas_cumprod.to(self.device)[timesteps]
        snr = alphas / (1.0 - alphas).clamp_min(1e-8)
        gamma = self.config.snr_gamma
        if gamma <= 0:
            return torch.ones_like(snr)
        clipped = snr.clamp(max=gamma)
        if self.config.prediction_type == "epsilon":
            return clipped / snr.clamp_min(1e-8)
        if self.config.prediction_type == "v_prediction":
            return clipped / (snr + 1.0)
        return clipped

    def _target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if self.config.prediction_type == "epsilon":
            return noise
        if self.config.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(x0, noise, timesteps)
        return x0

    def _lr_factor(self, step: int, steps: int) -> float:
        warmup = min(self.config.warmup_steps, max(steps // 4, 1))
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(steps - warmup, 1)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

    @torch.no_grad()
    def _update_ema(self) -> None:
        total = self.trained_steps
        decay = min(self.config.ema_decay, (1.0 + total) / (10.0 + total))
        ema_params = list(self.ema.parameters())
        params = [p.detach() for p in self.model.parameters()]
        if decay <= 0:
            torch._foreach_copy_(ema_params, params)
        else:
            torch._foreach_lerp_(ema_params, params, 1.0 - decay)

    def _train_step(
        self, x0: torch.Tensor, cond: torch.Tensor, rng: torch.Generator, optimisation: tuple[Any, Any], autocast: Any
    ) -> torch.Tensor:
        """One AdamW step on a batch: noise, timesteps and caption drops drawn from ``rng`` (in that
        order), the weighted x0 / epsilon loss, gradient clipping at norm 1, then the EMA update."""
        config, batch = self.config, len(x0)
        optimizer, scheduler = optimisation
        noise = torch.randn(x0.shape, generator=rng).to(self.device)
        timesteps = torch.randint(0, config.train_timesteps, (batch,), generator=rng).to(self.device)
        drop = (torch.rand(batch, generator=rng) < config.cond_dropout).to(self.device)
        noisy = self.scheduler.add_noise(x0, noise, timesteps)
        with autocast:
            output = self.model(noisy, timesteps, cond, drop)
        per_sample = (output.float() - self._target(x0, noise, timesteps)).pow(2).mean(dim=(1, 2, 3))
        loss = (per_sample * self._loss_weights(timesteps)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        self.trained_steps += 1
        self._update_ema()
        return loss

    def train(
        self, images: np.ndarray, captions: list[str], *, steps: int, seed: int, progress: bool = True
    ) -> dict[str, Any]:
        """Train for ``steps`` AdamW steps, continuing from the current weights (warm start when trained).

        Returns:
            ``steps, seconds, final_loss, images_per_second, total_steps, warm_start, n_images, n_captions``.
        """
        from tqdm.auto import tqdm

        config = self.config
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images but {len(captions)} captions")
        if len(images) == 0:
            raise ValueError("no training images")
        if steps < 1:
            raise ValueError(f"steps: must be at least 1, got {steps}")
        start = time.perf_counter()
        warm_start = self.trained_steps > 0
        data = images_to_tensor(images, config.image_size).to(self.device)
        with torch.no_grad():
            text, caption_rows = self._embed(list(captions))
        caption_rows_t = torch.from_numpy(caption_rows).to(self.device)
        n = len(data)
        batch = min(config.batch_size, n)
        rng = torch.Generator().manual_seed(int(seed))
        # The EMA copy holds the weights we sample with; a warm start continues from them.
        if warm_start:
            self.model.load_state_dict(self.ema.state_dict())
        if not bool(self.model.cond.fitted):
            self.model.cond.fit(text)
            self.ema.cond.load_state_dict(self.model.cond.state_dict())
        self.model.train()
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.learning_rate, weight_decay=0.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: self._lr_factor(s, steps))
        bf16 = use_bf16(config.precision, self.device)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)
        order = torch.randperm(n, generator=rng)
        cursor = 0
        losses: list[float] = []
        bar = tqdm(range(steps), desc="train tiny-diffusion", disable=not progress, mininterval=2.0, leave=False)
        for _ in bar:
            if cursor + batch > n:
                order = torch.randperm(n, generator=rng)
                cursor = 0
            index = order[cursor : cursor + batch]
            cursor += batch
            rows = index.to(self.device)
            loss = self._train_step(data[rows], text[caption_rows_t[rows]], rng, (optimizer, scheduler), autocast)
            losses.append(float(loss.detach()))
            if progress and len(losses) % 25 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-25:]):.4f}")
        bar.close()
        self.model.eval()
        seconds = time.perf_counter() - start
        stats = {
            "steps": steps,
            "seconds": round(seconds, 2),
            "final_loss": float(np.mean(losses[-min(50, len(losses)) :])),
            "first_loss": float(np.mean(losses[: min(50, len(losses))])),
            "images_per_second": round(steps * batch / seconds, 1),
            "total_steps": self.trained_steps,
            "warm_start": warm_start,
            "n_images": n,
            "n_captions": int(text.shape[0]),
            "precision": "bf16" if bf16 else "fp32",
        }
        self.history.append({k: stats[k] for k in ("steps", "seconds", "final_loss", "warm_start", "n_images")})
        log.info(
            "tiny-diffusion: %d steps in %.1f s (%s), loss %.4f -> %.4f",
            steps,
            seconds,
            "warm start" if warm_start else "from scratch",
            stats["first_loss"],
            stats["final_loss"],
        )
        return stats

    # ----------------------------------------------------------------------------------- sampling
    @torch.inference_mode()
    def generate(
        self,
        prompts: list[str],
        seeds: list[int],
        batch_size: int = 64,
        guidance_scale: float | None = None,
        steps: int | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """One image per (prompt, seed), sampled with DDIM and classifier-free guidance from the EMA weights.

        Args:
            prompts: one text per image.
            seeds: one seed per image; the initial noise of image ``i`` comes from ``seeds[i]`` alone.
            batch_size: images denoised together (memory/speed only; results do not depend on it).
            guidance_scale: classifier-free guidance scale (None: ``SamplingConfig``'s default; 1: none).
            steps: DDIM denoising steps (None: ``SamplingConfig``'s default).
            progress: show a tqdm bar over batches.
        """
        from tqdm.auto import tqdm

        prompts = list(prompts)
        check_prompts_seeds(prompts, seeds)
        size = self.config.image_size
        if not prompts:
            return np.zeros((0, size, size, 3), dtype=np.uint8)
        defaults = SamplingConfig()
        scale = defaults.guidance_scale if guidance_scale is None else float(guidance_scale)
        ddim = ddim_from(self.scheduler)
        ddim.set_timesteps(int(steps or defaults.steps))
        text, rows = self._embed(prompts)
        model = self.ema
        out = np.empty((len(prompts), size, size, 3), dtype=np.uint8)
        starts = range(0, len(prompts), max(int(batch_size), 1))
        for begin in tqdm(starts, desc="generate", disable=not progress, leave=False):
            end = min(begin + max(int(batch_size), 1), len(prompts))
            count = end - begin
            noise = torch.stack(
                [
                    torch.randn((3, size, size), generator=torch.Generator().manual_seed(int(seeds[i]) % 2**63))
                    for i in range(begin, end)
                ]
            )
            sample = noise.to(self.device) * ddim.init_noise_sigma
            cond_text = text[torch.from_numpy(rows[begin:end]).to(self.device)]
            guided = scale != 1.0
            if guided:
                both_text = torch.cat([cond_text, cond_text])
                drop = torch.cat([torch.zeros(count, dtype=torch.bool), torch.ones(count, dtype=torch.bool)])
                drop = drop.to(self.device)
            for t in ddim.timesteps:
                timesteps = torch.full((count * (2 if guided else 1),), int(t), device=self.device, dtype=torch.long)
                if guided:
                    output = model(torch.cat([sample, sample]), timesteps, both_text, drop)
                    conditional, unconditional = output.chunk(2)
                    output = unconditional + scale * (conditional - unconditional)
                else:
                    output = model(sample, timesteps, cond_text)
                sample = ddim.step(output, t, sample, eta=0.0).prev_sample
            out[begin:end] = tensor_to_images(sample)
        return out

    # ----------------------------------------------------------------------------------- persistence
    def save(self, folder: str | Path) -> None:
        """Write ``generator.json``, ``unet/`` (EMA weights), ``scheduler/`` and ``conditioning.safetensors``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.ema.unet.save_pretrained(folder / "unet", safe_serialization=True)
        self.scheduler.save_pretrained(folder / "scheduler")
        state = {k: v.detach().cpu().contiguous() for k, v in self.ema.cond.state_dict().items()}
        save_file(state, str(folder / "conditioning.safetensors"))
        manifest = {
            "backend": self.backend,
            "config": to_dict(self.config),
            "text_encoder": {"name": self.text_encoder.name, "dim": self.text_encoder.dim},
            "trained_steps": self.trained_steps,
            "history": self.history,
        }
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> TinyDiffusion:
        """Load a saved tiny-diffusion generator onto ``device``."""
        from biasloop.models.weights import (
            from_pretrained_safely,
            load_state_dict_file,
            load_weights_into,
            manifest_field,
            read_manifest,
        )

        folder = Path(folder)
        manifest = read_manifest(folder / MANIFEST, "a saved tiny-diffusion generator")
        config = config_from_manifest(manifest_field(manifest, "config", folder / MANIFEST))
        generator = cls(config, device=device)
        expected = manifest.get("text_encoder", {})
        if expected.get("dim") not in (None, generator.text_encoder.dim):
            raise ValueError(
                f"{folder}: saved with text encoder {expected.get('name')!r} (dim {expected.get('dim')}), "
                f"but {generator.text_encoder.name!r} has dim {generator.text_encoder.dim}"
            )
        # safetensors only: a unet/*.bin pickle in a folder from elsewhere is never unpickled
        unet = from_pretrained_safely(diffusers_class("UNet2DModel"), folder / "unet")
        load_weights_into(generator.ema.unet, unet.state_dict(), folder / "unet")
        conditioning = folder / "conditioning.safetensors"
        load_weights_into(generator.ema.cond, load_state_dict_file(conditioning), conditioning)
        generator.ema.to(generator.device)
        generator.model.load_state_dict(generator.ema.state_dict())
        check_scheduler_config(generator.scheduler, folder / "scheduler" / "scheduler_config.json")
        generator.trained_steps = int(manifest.get("trained_steps", 0))
        generator.history = list(manifest.get("history", []))
        return generator
