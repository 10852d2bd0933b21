"""Generation throughput of the stable-diffusion backend: "as in the seed code" vs. the best setting.

Builds the **SD 1.5 architecture at random weights** (UNet2DConditionModel, AutoencoderKL and
CLIPTextModel from the SD 1.5 config values written below; a CLIP tokenizer from open_clip's bundled
BPE vocabulary): nothing is downloaded, and speed does not depend on the weights' values. Measures, in
the same run, images per second of

- **baseline** ("as in the seed code"): batch 1, fp32, the classic attention processor (``AttnProcessor``);
- **best**: fp16 on CUDA (bf16 on a CPU that supports it, else fp32), PyTorch SDPA attention
  (``AttnProcessor2_0``), at the fastest of several batch sizes,

and writes the ratio with device information to ``benchmarks/results/generation.json``.

With no CUDA GPU it measures a **scaled-down** configuration on CPU (channels /4, a smaller text
encoder, 32x32 latents = 256 px images, 2 denoising steps) and says so in the JSON
(``"scaled_down": true, "why": ...``): the full model takes minutes per image on a small CPU.

Usage::

    python benchmarks/generation.py [--out benchmarks/results/generation.json] [--full]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# SD 1.5 (runwayml/stable-diffusion-v1-5) component configs.
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)
SD15_VAE = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)
SD15_TEXT = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
)
SD15_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1
)
SD15_STEPS = 50  # the default number of inference steps (PNDM), as in the papers' seed code


def scaled_down() -> tuple[dict, dict, dict]:
    """CPU configuration: the same block structure, channels /4 (GroupNorm 16 groups), 32x32 latents (256 px)."""
    unet = dict(
        SD15_UNET, block_out_channels=(80, 160, 320, 320), sample_size=32, cross_attention_dim=384, norm_num_groups=16
    )
    vae = dict(SD15_VAE, block_out_channels=(32, 64, 128, 128), norm_num_groups=16, sample_size=256)
    text = dict(
        SD15_TEXT,
        hidden_size=384,
        intermediate_size=1536,
        num_hidden_layers=6,
        num_attention_heads=6,
        projection_dim=384,
    )
    return unet, vae, text


def build_pipeline(unet_cfg: dict, vae_cfg: dict, text_cfg: dict, tokenizer: Any, dtype: torch.dtype, device: str):
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **text_cfg,
        )
    )
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**vae_cfg),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**unet_cfg),
        scheduler=PNDMScheduler(**SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device=device, dtype=dtype)


def set_attention(pipe: Any, sdpa: bool) -> None:
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    processor = AttnProcessor2_0 if sdpa else AttnProcessor
    pipe.unet.set_attn_processor(processor())
    pipe.vae.set_attn_processor(processor())


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def images_per_second(pipe: Any, batch: int, steps: int, size: int, device: str, min_seconds: float) -> float:
    """Generate batches of ``batch`` images (one warm-up call) until ``min_seconds`` pass; images/s."""
    prompts = ["a photo of a nurse"] * batch

    def call() -> None:
        generators = [torch.Generator("cpu").manual_seed(i) for i in range(batch)]
        with torch.inference_mode():
            pipe(prompts, height=size, width=size, num_inference_steps=steps, generator=generators, output_type="np")

    call()
    sync(device)
    count, start = 0, time.perf_counter()
    while True:
        call()
        sync(device)
        count += batch
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return count / elapsed


def cpu_bf16_supported() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def device_info(device: str) -> dict:
    info = {
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
    }
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/generation.json")
    parser.add_argument("--full", action="store_true", help="full SD 1.5 size even without a GPU (very slow)")
    parser.add_argument("--min-seconds", type=float, default=None, help="measuring time per setting")
    args = parser.parse_args(argv)

    from diffusers.utils import logging as diffusers_logging

    from biasloop.models.generators.stable_diffusion import offline_clip_tokenizer

    diffusers_logging.set_verbosity_error()

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    full = cuda or args.full
    if full:
        unet_cfg, vae_cfg, text_cfg = SD15_UNET, SD15_VAE, SD15_TEXT
        steps, size, batches = SD15_STEPS, 512, (1, 2, 4, 8, 16)
        why = None
    else:
        unet_cfg, vae_cfg, text_cfg = scaled_down()
        steps, size, batches = 2, 256, (1, 2, 4, 8)
        why = (
            "no CUDA GPU: the full SD 1.5 model (860M-parameter UNet, 512 px, 50 steps) takes minutes per "
            "image on this CPU, so the same architecture with channels /4, a 6-layer text encoder, 256 px "
            "images (32x32 latents) and 2 denoising steps is measured instead; ratios, not absolute speeds, "
            "carry over (fp16 is replaced by bf16, the CPU half precision, where oneDNN supports it; "
            "else the best setting stays fp32)"
        )
    min_seconds = args.min_seconds if args.min_seconds is not None else (10.0 if full else 4.0)
    if cuda:
        best_dtype = torch.float16
    else:
        best_dtype = torch.bfloat16 if cpu_bf16_supported() else torch.float32

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = offline_clip_tokenizer(Path(tmp) / "tokenizer")
        pipe = build_pipeline(unet_cfg, vae_cfg, text_cfg, tokenizer, torch.float32, device)
        unet_parameters = sum(p.numel() for p in pipe.unet.parameters())
        set_attention(pipe, sdpa=False)
        baseline = images_per_second(pipe, 1, steps, size, device, min_seconds)
        print(f"baseline (batch 1, fp32, AttnProcessor): {baseline:.3f} images/s", flush=True)
        set_attention(pipe, sdpa=True)
        sdpa_only = images_per_second(pipe, 1, steps, size, device, min_seconds)
        print(f"ablation (batch 1, fp32, SDPA): {sdpa_only:.3f} images/s", flush=True)
        pipe = pipe.to(dtype=best_dtype)
        set_attention(pipe, sdpa=True)
        per_batch = {}
        for batch in batches:
            try:
                per_batch[batch] = images_per_second(pipe, batch, steps, size, device, min_seconds)
            except torch.OutOfMemoryError:
                break
            print(
                f"best candidate (batch {batch}, {str(best_dtype)[6:]}, SDPA): {per_batch[batch]:.3f} images/s",
                flush=True,
            )
    best_batch = max(per_batch, key=per_batch.get)
    result = {
        "benchmark": "stable-diffusion backend generation throughput (SD 1.5 architecture, random weights)",
        "scaled_down": not full,
        "why": why,
        "config": {
            "unet_block_out_channels": list(unet_cfg["block_out_channels"]),
            "unet_parameters": unet_parameters,
            "latent_size": unet_cfg["sample_size"],
            "image_size": size,
            "inference_steps": steps,
            "text_hidden_size": text_cfg["hidden_size"],
            "text_layers": text_cfg["num_hidden_layers"],
        },
        "baseline": {
            "description": "as in the seed code: batch 1, fp32, classic attention (AttnProcessor)",
            "batch_size": 1,
            "dtype": "float32",
            "attention": "AttnProcessor",
            "images_per_second": baseline,
        },
        "best": {
            "description": ("half precision" if best_dtype != torch.float32 else "fp32 (no half precision on this CPU)")
            + ", SDPA attention (AttnProcessor2_0), fastest batch size",
            "batch_size": best_batch,
            "dtype": str(best_dtype).replace("torch.", ""),
            "attention": "AttnProcessor2_0",
            "images_per_second": per_batch[best_batch],
            "per_batch_images_per_second": {str(k): v for k, v in per_batch.items()},
        },
        "ablation_sdpa_only": {
            "batch_size": 1,
            "dtype": "float32",
            "attention": "AttnProcessor2_0",
            "images_per_second": sdpa_only,
        },
        "speedup": per_batch[best_batch] / baseline,
        "device_info": device_info(device),
        "seconds": round(time.perf_counter() - started, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"speedup {result['speedup']:.2f}x (best batch {best_batch}); wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
