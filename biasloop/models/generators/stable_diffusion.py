"""stable-diffusion: a pretrained ``StableDiffusionPipeline`` (SD 1.4/1.5), optionally LoRA-fine-tuned.

``generator.model`` names the pipeline: a hub name (``"stable-diffusion-v1-5/stable-diffusion-v1-5"``,
fetched only when ``generator.allow_download`` is true, otherwise read from the local cache) or a local
folder written by ``save_pretrained``. Weights are fp16 on CUDA and fp32 on CPU. As in the studies, the
safety checker is off (``safety_checker=None, requires_safety_checker=False``).

:meth:`StableDiffusionGenerator.generate` draws each image's initial latents from its own CPU
``torch.Generator`` seeded with that image's seed, so an image does not depend on its batch; images are
generated at the pipeline's native resolution and resized to ``generator.image_size``.

:meth:`StableDiffusionGenerator.train` fine-tunes LoRA adapters (``peft``, rank ``generator.lora_rank``)
on the UNet's attention projections with the standard noise-prediction loss, so the generational loop
can retrain the generator on its mixed dataset. Saving writes only ``generator.json`` and the LoRA
weights (``lora.safetensors``); the base pipeline stays where ``generator.model`` points.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biasloop.core.config import to_dict
from biasloop.models.generators import (
    MANIFEST,
    GeneratorConfig,
    SamplingConfig,
    check_prompts_seeds,
    config_from_manifest,
)

log = logging.getLogger(__name__)

LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
LORA_FILE = "lora.safetensors"


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Float ``(n, H, W, 3)`` in [0, 1] -> ``uint8 (n, size, size, 3)`` (antialiased bilinear)."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).permute(0, 3, 1, 2)
    if x.shape[-2:] != (size, size):
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    array = x.clamp(0, 1).mul(255).round().permute(0, 2, 3, 1).numpy().astype(np.uint8)
    return np.ascontiguousarray(array)


class StableDiffusionGenerator:
    """The ``stable-diffusion`` backend (see the module docstring)."""

    backend = "stable-diffusion"

    def __init__(self, config: GeneratorConfig, device: str = "cpu", seed: int = 0) -> None:
        from diffusers import StableDiffusionPipeline

        if not config.model:
            raise ValueError("generator.model: the stable-diffusion backend needs a hub name or a local folder")
        self.config = config
        self.device = torch.device(device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        local = Path(config.model).exists()
        if not local and not config.allow_download:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.pipe = StableDiffusionPipeline.from_pretrained(
            config.model,
            dtype=self.dtype,
            safety_checker=None,
            requires_safety_checker=False,
            local_files_only=not (config.allow_download and not local),
            use_safetensors=True,  # never unpickle a .bin from a folder or hub repository
        )
        self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.has_lora = False
        self.init_seed = int(seed)  # the LoRA adapters' initial weights (added at the first training)
        self.trained_steps = 0
        self.history: list[dict[str, Any]] = []

    @property
    def native_size(self) -> int:
        """Resolution the pipeline generates and trains at."""
        if self.config.native_size:
            return int(self.config.native_size)
        return int(self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor)

    # ----------------------------------------------------------------------------------- sampling
    @torch.inference_mode()
    def generate(
        self,
        prompts: list[str],
        seeds: list[int],
        batch_size: int = 8,
        guidance_scale: float | None = None,
        steps: int | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """One image per (prompt, seed), ``uint8 (n, image_size, image_size, 3)``.

        Args:
            guidance_scale: classifier-free guidance scale (None: ``SamplingConfig``'s default; 1: none).
            steps: denoising steps of the pipeline's scheduler (None: ``SamplingConfig``'s default).
        """
        from tqdm.auto import tqdm

        prompts = list(prompts)
        check_prompts_seeds(prompts, seeds)
        size = self.config.image_size
        defaults = SamplingConfig()
        scale = defaults.guidance_scale if guidance_scale is None else float(guidance_scale)
        steps = int(steps or defaults.steps)
        out = np.empty((len(prompts), size, size, 3), dtype=np.uint8)
        batch_size = max(int(batch_size), 1)
        for begin in tqdm(range(0, len(prompts), batch_size), desc="generate", disable=not progress, leave=False):
            end = min(begin + batch_size, len(prompts))
            generators = [torch.Generator("cpu").manual_seed(int(s) % 2**63) for s in seeds[begin:end]]
            result = self.pipe(
                prompt=prompts[begin:end],
                height=self.native_size,
                width=self.native_size,
                num_inference_steps=steps,
                guidance_scale=scale,
                generator=generators,
                output_type="np",
            )
            out[begin:end] = resize_images(np.asarray(result.images), size)
        return out

    # ----------------------------------------------------------------------------------- training
    def _add_lora(self) -> None:
        from peft import LoraConfig

        if self.has_lora:
            return
        rank = self.config.lora_rank
        # peft draws the initial LoRA weights from torch's global generator (of the UNet's device): seed it
        # with the generator's own seed, and leave the global state as it was.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.init_seed)
            self.pipe.unet.add_adapter(
                LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS)
            )
        self.has_lora = True

    def _lora_parameters(self) -> list[torch.nn.Parameter]:
        return [p for n, p in self.pipe.unet.named_parameters() if "lora_" in n]

    def train(
        self, images: np.ndarray, captions: list[str], *, steps: int, seed: int, progress: bool = True
    ) -> dict[str, Any]:
        """Fine-tune LoRA adapters of the UNet for ``steps`` steps (continuing existing adapters)."""
        from diffusers import DDPMScheduler
        from tqdm.auto import tqdm

        if len(images) != len(captions) or len(images) == 0:
            raise ValueError(f"need matching, non-empty images and captions, got {len(images)} and {len(captions)}")
        start = time.perf_counter()
        warm_start = self.has_lora
        pipe = self.pipe
        pipe.unet.requires_grad_(False)
        pipe.vae.requires_grad_(False)
        pipe.text_encoder.requires_grad_(False)
        self._add_lora()
        params = self._lora_parameters()
        for p in params:  # LoRA weights train in fp32 even when the pipeline is fp16
            p.data = p.data.float()
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(params, lr=self.config.lora_learning_rate, weight_decay=1e-2)
        noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        size = self.native_size
        data = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        batch = min(self.config.batch_size, len(images))
        rng = torch.Generator().manual_seed(int(seed))
        use_amp = self.dtype == torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        pipe.unet.train()
        losses: list[float] = []
        for _ in tqdm(range(steps), desc="train LoRA", disable=not progress, leave=False):
            index = torch.randint(0, len(images), (batch,), generator=rng)
            x = data[index].float().div(127.5).sub(1.0)
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            x = x.to(self.device, self.dtype)
            tokens = pipe.tokenizer(
                [captions[i] for i in index.tolist()],
                padding="max_length",
                max_length=pipe.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(self.device)
            with torch.no_grad():
                latents = pipe.vae.encode(x).latent_dist.sample(generator=None) * pipe.vae.config.scaling_factor
                hidden = pipe.text_encoder(tokens)[0]
            noise = torch.randn(latents.shape, generator=rng).to(self.device, latents.dtype)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,), generator=rng)
            timesteps = timesteps.to(self.device)
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            if noise_scheduler.config.prediction_type == "v_prediction":
                target = noise_scheduler.get_velocity(latents, noise, timesteps)
            else:
                target = noise
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=use_amp):
                prediction = pipe.unet(noisy, timesteps, hidden).sample
            loss = torch.nn.functional.mse_loss(prediction.float(), target.float())
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(float(loss.detach()))
            self.trained_steps += 1
        pipe.unet.eval()
        if use_amp:
            for p in params:
                p.data = p.data.to(self.dtype)
        seconds = time.perf_counter() - start
        stats = {
            "steps": steps,
            "seconds": round(seconds, 2),
            "final_loss": float(np.mean(losses[-min(20, len(losses)) :])),
            "total_steps": self.trained_steps,
            "warm_start": warm_start,
            "n_images": len(images),
            "lora_parameters": int(sum(p.numel() for p in params)),
        }
        self.history.append({k: stats[k] for k in ("steps", "seconds", "final_loss", "warm_start", "n_images")})
        log.info("stable-diffusion LoRA: %d steps in %.1f s, loss %.4f", steps, seconds, stats["final_loss"])
        return stats

    # ----------------------------------------------------------------------------------- persistence
    def save(self, folder: str | Path) -> None:
        """Write ``generator.json`` (base model, config) and the LoRA weights when trained."""
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.has_lora:
            state = get_peft_model_state_dict(self.pipe.unet)
            save_file({k: v.detach().float().cpu().contiguous() for k, v in state.items()}, str(folder / LORA_FILE))
        manifest = {
            "backend": self.backend,
            "config": to_dict(self.config),
            "model": self.config.model,
            "lora": LORA_FILE if self.has_lora else None,
            "trained_steps": self.trained_steps,
            "history": self.history,
        }
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> StableDiffusionGenerator:
        """Load the base pipeline named in ``generator.json`` and its LoRA weights, if any."""
        from peft.utils import set_peft_model_state_dict

        from biasloop.models.weights import (
            load_state_dict_file,
            manifest_field,
            read_manifest,
        )

        folder = Path(folder)
        manifest = read_manifest(folder / MANIFEST, "a saved stable-diffusion generator")
        generator = cls(config_from_manifest(manifest_field(manifest, "config", folder / MANIFEST)), device=device)
        if manifest.get("lora"):
            generator._add_lora()
            state = load_state_dict_file(folder / Path(str(manifest["lora"])).name)
            result = set_peft_model_state_dict(generator.pipe.unet, state)
            unexpected = getattr(result, "unexpected_keys", None)
            if unexpected:
                raise ValueError(f"{folder / manifest['lora']}: unexpected LoRA keys {unexpected[:3]}")
            generator.pipe.unet.to(generator.device, generator.dtype)
        generator.trained_steps = int(manifest.get("trained_steps", 0))
        generator.history = list(manifest.get("history", []))
        return generator


def offline_clip_tokenizer(folder: str | Path) -> Any:
    """A ``CLIPTokenizer`` with CLIP's real BPE vocabulary, built from open_clip's bundled file (no hub).

    Writes ``vocab.json`` and ``merges.txt`` into ``folder`` and loads them: the same 49,408 tokens as
    SD 1.x's tokenizer. Used for pipelines assembled locally (tests, the benchmark).
    """
    import importlib.resources

    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    source = importlib.resources.files("open_clip") / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.decompress(source.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    byte_chars = [chr(c) for c in cs]
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return CLIPTokenizer(
        str(folder / "vocab.json"),
        str(folder / "merges.txt"),
        pad_token="<|endoftext|>",
        model_max_length=77,
    )
