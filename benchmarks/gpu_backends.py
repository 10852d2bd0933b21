"""GPU check of the real-study backends, through biasloop's own code paths, at random weights.

The stable-diffusion generator and the open-clip instrument are otherwise tested only on tiny random
weights on CPU. This script measures them at full size on a CUDA GPU, downloading nothing:

1. **stable-diffusion** (:class:`biasloop.models.generators.stable_diffusion.StableDiffusionGenerator`):
   the SD 1.5 architecture (configs from ``benchmarks/generation.py``) at random weights, with a DDIM
   scheduler, is saved as a local pipeline folder (fp16 safetensors, as ``save_pretrained`` writes it)
   and loaded back with ``build_generator`` like any ``generator.model`` folder, so the backend's own
   ``from_pretrained`` (fp16 on CUDA, diffusers' default SDPA attention) is what runs. Measured:
   ``generate()`` images/s at 512 px and ``sampling_steps`` DDIM steps with classifier-free guidance
   (guidance 7.5: two UNet passes per step) at several batch sizes; seconds per step of the LoRA
   fine-tuning in ``train()`` (rank 4, fp16 autocast, 512 px) at several training batch sizes; peak
   GPU memory (``torch.cuda.max_memory_allocated``) of each setting.
2. **open-clip instrument** (:func:`biasloop.models.instrument.build_open_clip_instrument`): ViT-L-14 at
   random weights (``pretrained: null``), 224 px. Measured: images/s of ``Instrument.encode_images``
   (uint8 images in, unit embeddings out, CPU preprocessing included) in fp32 (what the backend runs
   today) and under ``torch.autocast`` bf16 / fp16; and of the model alone (``model.encode_image`` on a
   GPU tensor) in the same precisions plus pure fp16 weights (open_clip's ``precision="fp16"``).
3. Device and library versions.

Each part is measured independently: an error in one is written into its section of the JSON (and the
exit status is 1) while the others still run. Timings: one warm-up call per setting, then calls until
both ``--min-seconds`` and ``--min-calls`` are reached; rates use the median call time.

``--tiny`` shrinks everything (a 2-level UNet at 16 px, 2 steps, the repository's ``biasloop-tiny-clip``)
so the script's code paths can be checked on a CPU in well under a minute; its numbers mean nothing.

Usage (on a GPU machine; the results belong in ``benchmarks/results/gpu_backends.json``)::

    python benchmarks/gpu_backends.py --out benchmarks/results/gpu_backends.json
    python benchmarks/gpu_backends.py --tiny --out /tmp/gpu_backends_tiny.json   # CPU smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

# benchmarks/ is the script's folder, first on sys.path when it runs: the SD 1.5 configs have one home there.
from generation import SD15_TEXT, SD15_UNET, SD15_VAE, build_pipeline, device_info, sync

from biasloop.core.io import json_float, write_json

GUIDANCE_SCALE = 7.5  # SD's default; any value > 1 costs the same (two UNet passes per step)
PROMPTS = ["a photo of a nurse", "a photo of an engineer", "a portrait of a teacher", "a photo of a pilot"]


@dataclasses.dataclass(frozen=True)
class Scale:
    """How big everything is: the full study sizes, or ``--tiny`` for a CPU smoke run."""

    unet: dict
    vae: dict
    text: dict
    sampling_steps: int  # DDIM steps per image
    generate_batches: tuple[int, ...]  # images per generate() call
    train_batches: tuple[int, ...]  # LoRA training batch sizes
    train_warmup_steps: int  # untimed LoRA steps per batch size (the first also adds the adapters)
    train_timed_steps: int  # timed LoRA steps per batch size
    clip_model: str  # open_clip architecture name
    clip_batches: tuple[int, ...]  # images per encode call
    min_seconds: float  # measuring time per setting (after one warm-up call)
    min_calls: int  # timed calls per setting, at least


FULL = Scale(
    unet=SD15_UNET,
    vae=SD15_VAE,
    text=SD15_TEXT,
    sampling_steps=25,
    generate_batches=(1, 4, 8, 16),
    train_batches=(1, 4, 8),
    train_warmup_steps=2,
    train_timed_steps=6,
    clip_model="ViT-L-14",
    clip_batches=(64, 256),
    min_seconds=3.0,
    min_calls=2,
)
TINY = Scale(
    unet=dict(
        SD15_UNET,
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    ),
    vae=dict(
        SD15_VAE,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8,
        sample_size=16,
    ),
    text=dict(
        SD15_TEXT, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, projection_dim=32
    ),
    sampling_steps=2,
    generate_batches=(1, 2),
    train_batches=(1, 2),
    train_warmup_steps=1,
    train_timed_steps=2,
    clip_model="biasloop-tiny-clip",
    clip_batches=(4, 8),
    min_seconds=0.0,
    min_calls=1,
)


def time_calls(call: Callable[[], Any], device: str, scale: Scale) -> list[float]:
    """Seconds of each timed call of ``call`` (after one untimed warm-up), synchronising the GPU."""
    call()
    sync(device)
    seconds: list[float] = []
    start = time.perf_counter()
    while len(seconds) < scale.min_calls or time.perf_counter() - start < scale.min_seconds:
        began = time.perf_counter()
        call()
        sync(device)
        seconds.append(time.perf_counter() - began)
    return seconds


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float | None:
    """``torch.cuda.max_memory_allocated`` since the last :func:`reset_peak`, GiB (None on CPU)."""
    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if device == "cuda" else None


def rate(batch: int, seconds: list[float]) -> dict[str, Any]:
    """Images/s from the median call time, with the raw call times."""
    median = statistics.median(seconds)
    return {
        "images_per_second": batch / median,
        "median_call_seconds": median,
        "calls": len(seconds),
        "call_seconds": [round(s, 4) for s in seconds],
    }


def autocast(device: str, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``precision`` ("bfloat16"/"float16"), or nothing for "float32"."""
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=getattr(torch, precision))


# ------------------------------------------------------------------------------------ stable diffusion
def save_random_sd_pipeline(folder: Path, scale: Scale, device: str) -> dict[str, Any]:
    """Write the SD 1.5 architecture at random weights, with SD's DDIM scheduler, as a pipeline folder.

    Weights are built on ``device`` (fast random init on a GPU) and saved in the dtype the backend loads
    them in (fp16 on CUDA), like a downloaded SD 1.5 snapshot.
    """
    from diffusers import DDIMScheduler

    from biasloop.models.generators.stable_diffusion import offline_clip_tokenizer

    dtype = torch.float16 if device == "cuda" else torch.float32
    tokenizer = offline_clip_tokenizer(folder.parent / "tokenizer")
    with torch.device(device):
        pipe = build_pipeline(scale.unet, scale.vae, scale.text, tokenizer, dtype, device)
    # SD 1.5's DDIM settings (diffusers' scheduler_config of the hub snapshot, as used with DDIM).
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False, set_alpha_to_one=False)
    info = {
        "unet_parameters": sum(p.numel() for p in pipe.unet.parameters()),
        "vae_parameters": sum(p.numel() for p in pipe.vae.parameters()),
        "text_encoder_parameters": sum(p.numel() for p in pipe.text_encoder.parameters()),
        "unet_block_out_channels": list(scale.unet["block_out_channels"]),
        "saved_dtype": str(dtype).replace("torch.", ""),
    }
    pipe.save_pretrained(folder)
    del pipe
    return info


def bench_stable_diffusion(scale: Scale, device: str, workdir: Path) -> dict[str, Any]:
    """Generation images/s and LoRA seconds/step of the stable-diffusion backend (module docstring, 1.)."""
    from biasloop.models.generators import GeneratorConfig, build_generator

    result: dict[str, Any] = {"code_path": "biasloop build_generator(backend=stable-diffusion, model=<local folder>)"}
    started = time.perf_counter()
    folder = workdir / "sd15-random"
    result["model"] = save_random_sd_pipeline(folder, scale, device)
    result["build_and_save_seconds"] = round(time.perf_counter() - started, 2)

    reset_peak(device)
    started = time.perf_counter()
    config = GeneratorConfig(backend="stable-diffusion", model=str(folder), image_size=16, batch_size=1)
    generator = build_generator(config, device)
    native = generator.native_size
    generator.config = dataclasses.replace(config, image_size=native)  # return images at native size, no resize
    sync(device)
    result["load_seconds"] = round(time.perf_counter() - started, 2)
    result["load_peak_gib"] = peak_gib(device)
    pipe = generator.pipe
    result["setup"] = {
        "image_size": native,
        "sampling_steps": scale.sampling_steps,
        "guidance_scale": GUIDANCE_SCALE,
        "scheduler": type(pipe.scheduler).__name__,
        "dtype": str(generator.dtype).replace("torch.", ""),
        "attention_processors": sorted({type(p).__name__ for p in pipe.unet.attn_processors.values()}),
        "lora_rank": config.lora_rank,
    }
    print(
        f"stable-diffusion: loaded {native} px pipeline in {result['load_seconds']} s "
        f"({result['setup']['attention_processors']})",
        flush=True,
    )

    generation: dict[str, Any] = {}
    for batch in scale.generate_batches:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
        reset_peak(device)
        try:
            seconds = time_calls(
                lambda p=prompts, b=batch: generator.generate(
                    p, list(range(b)), batch_size=b, guidance_scale=GUIDANCE_SCALE, steps=scale.sampling_steps
                ),
                device,
                scale,
            )
        except torch.OutOfMemoryError:
            generation[str(batch)] = {"error": "out of GPU memory"}
            break
        generation[str(batch)] = dict(rate(batch, seconds), peak_gib=peak_gib(device))
        print(
            f"  generate batch {batch}: {generation[str(batch)]['images_per_second']:.3f} images/s, "
            f"peak {generation[str(batch)]['peak_gib']} GiB",
            flush=True,
        )
    measured = {int(k): v for k, v in generation.items() if "images_per_second" in v}
    best = max(measured, key=lambda k: measured[k]["images_per_second"])
    result["generate"] = {
        "per_batch": generation,
        "batch_1_images_per_second": measured[1]["images_per_second"],
        "best_batch": best,
        "best_images_per_second": measured[best]["images_per_second"],
    }

    rng = np.random.default_rng(0)
    n_images = 2 * max(scale.train_batches)
    images = rng.integers(0, 256, (n_images, native, native, 3), dtype=np.uint8)
    captions = [PROMPTS[i % len(PROMPTS)] for i in range(n_images)]
    training: dict[str, Any] = {}
    for batch in scale.train_batches:
        generator.config = dataclasses.replace(generator.config, batch_size=batch)
        reset_peak(device)
        try:
            generator.train(images, captions, steps=scale.train_warmup_steps, seed=0, progress=False)
            sync(device)
            began = time.perf_counter()
            stats = generator.train(images, captions, steps=scale.train_timed_steps, seed=1, progress=False)
            sync(device)
        except torch.OutOfMemoryError:
            training[str(batch)] = {"error": "out of GPU memory"}
            break
        per_step = (time.perf_counter() - began) / scale.train_timed_steps
        training[str(batch)] = {
            "seconds_per_step": per_step,
            "images_per_second": batch / per_step,
            "timed_steps": scale.train_timed_steps,
            "peak_gib": peak_gib(device),
            "final_loss": json_float(stats["final_loss"]),
            "lora_parameters": stats["lora_parameters"],
        }
        print(
            f"  LoRA train batch {batch}: {per_step:.3f} s/step, peak {training[str(batch)]['peak_gib']} GiB",
            flush=True,
        )
    result["train_lora"] = {
        "per_batch": training,
        "description": "seconds per step of StableDiffusionGenerator.train() (VAE encode, text "
        "encode, UNet forward+backward under fp16 autocast, AdamW on the LoRA "
        "weights; CPU batch preparation included)",
    }
    return result


# ------------------------------------------------------------------------------------ open-clip instrument
def bench_open_clip(scale: Scale, device: str) -> dict[str, Any]:
    """Image-encoding images/s of the open-clip instrument backend (module docstring, 2.)."""
    from biasloop.models.instrument import InstrumentConfig, build_open_clip_instrument

    result: dict[str, Any] = {"code_path": "biasloop build_open_clip_instrument(backend=open-clip, pretrained=null)"}
    started = time.perf_counter()
    config = InstrumentConfig(backend="open-clip", model=scale.clip_model, pretrained=None)
    instrument = build_open_clip_instrument(config, device)
    sync(device)
    result["build_seconds"] = round(time.perf_counter() - started, 2)
    # The backend's loaded model (a private field): measured alone below to separate GPU from CPU work.
    model, (_, _, size), _ = instrument._open_clip
    result["model"] = {
        "name": scale.clip_model,
        "image_size": list(size),
        "visual_parameters": sum(p.numel() for p in model.visual.parameters()),
    }
    print(f"open-clip: built {scale.clip_model} in {result['build_seconds']} s", flush=True)

    precisions = ("float32", "bfloat16", "float16") if device == "cuda" else ("float32", "bfloat16")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (max(scale.clip_batches), *size, 3), dtype=np.uint8)

    def measure(name: str, batch: int, call: Callable[[], Any]) -> dict[str, Any]:
        reset_peak(device)
        try:
            seconds = time_calls(call, device, scale)
        except torch.OutOfMemoryError:
            return {"error": "out of GPU memory"}
        out = dict(rate(batch, seconds), peak_gib=peak_gib(device))
        print(f"  {name} batch {batch}: {out['images_per_second']:.1f} images/s", flush=True)
        return out

    backend: dict[str, Any] = {}
    for precision in precisions:
        backend[precision] = {}
        for batch in scale.clip_batches:
            last: list[np.ndarray] = []

            def encode(batch: int = batch, precision: str = precision, last: list = last) -> None:
                with autocast(device, precision):
                    last[:] = [instrument.encode_images(images[:batch], batch_size=batch)]

            measured = measure(f"encode_images {precision}", batch, encode)
            if last:  # random weights may overflow in half precision: say so rather than fail
                measured["finite_embeddings"] = bool(np.isfinite(last[0]).all())
            backend[precision][str(batch)] = measured
    result["encode_images"] = {
        "description": "Instrument.encode_images: uint8 (n, H, W, 3) numpy at the model's input size -> unit "
        "embeddings numpy; "
        "float32 is the backend as it runs now, bfloat16/float16 wrap it in torch.autocast",
        "per_precision": backend,
    }

    model_only: dict[str, Any] = {}
    batch = max(scale.clip_batches)
    x = torch.randn(batch, 3, *size, device=device)
    for precision in precisions:

        def forward(precision: str = precision) -> None:
            with torch.no_grad(), autocast(device, precision):
                model.encode_image(x)

        model_only[f"{precision}" + ("" if precision == "float32" else " autocast")] = measure(
            f"model.encode_image {precision}", batch, forward
        )
    if device == "cuda":
        model.half()
        x_half = x.half()

        def forward_half() -> None:
            with torch.no_grad():
                model.encode_image(x_half)

        model_only["float16 weights"] = measure("model.encode_image fp16 weights", batch, forward_half)
    result["model_encode_image"] = {
        "description": "model.encode_image on a GPU tensor (no CPU preprocessing, no transfer), batch "
        f"{batch}; 'float16 weights' is open_clip's precision='fp16' (model.half())",
        "per_precision": model_only,
    }
    return result


# ------------------------------------------------------------------------------------ main
def versions() -> dict[str, str]:
    """Versions of the libraries on the measured code paths."""
    import importlib.metadata

    found = {}
    for name in (
        "torch",
        "diffusers",
        "transformers",
        "peft",
        "accelerate",
        "open_clip_torch",
        "timm",
        "torchvision",
        "huggingface_hub",
        "safetensors",
        "numpy",
    ):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of the parts that ran (None where a part failed or did not run)."""
    sd = result.get("stable_diffusion", {})
    clip = result.get("open_clip", {})
    lora = sd.get("train_lora", {}).get("per_batch", {})

    def best(per_batch: dict[str, Any]) -> float | None:
        rates = [v["images_per_second"] for v in per_batch.values() if "images_per_second" in v]
        return max(rates) if rates else None

    encode = clip.get("encode_images", {}).get("per_precision", {})
    model_only = clip.get("model_encode_image", {}).get("per_precision", {})
    return {
        "sd_generate_images_per_second_batch_1": sd.get("generate", {}).get("batch_1_images_per_second"),
        "sd_generate_images_per_second_best": sd.get("generate", {}).get("best_images_per_second"),
        "sd_generate_best_batch": sd.get("generate", {}).get("best_batch"),
        "sd_lora_seconds_per_step": {k: v.get("seconds_per_step") for k, v in lora.items()},
        "sd_lora_peak_gib": {k: v.get("peak_gib") for k, v in lora.items()},
        "clip_encode_images_per_second": {p: best(v) for p, v in encode.items()},
        "clip_model_encode_image_per_second": {p: v.get("images_per_second") for p, v in model_only.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON file to write (e.g. benchmarks/results/gpu_backends.json)")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="tiny models, 2 steps, on whatever device: checks the code paths (numbers meaningless)",
    )
    parser.add_argument(
        "--only",
        choices=("stable-diffusion", "open-clip"),
        default=None,
        help="measure one backend only (default: both)",
    )
    args = parser.parse_args(argv)

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.tiny:
        parser.error("no CUDA GPU: the full-size check needs one (pass --tiny for a CPU smoke run)")
    scale = TINY if args.tiny else FULL
    if device == "cpu":
        torch.set_num_threads(1)  # a smoke run on a shared CPU machine: stay light
    started = time.perf_counter()
    info = dict(device_info(device), python=platform.python_version(), versions=versions())
    if device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        info.update(
            gpu_memory_gib=round(properties.total_memory / 2**30, 1),
            compute_capability=f"{properties.major}.{properties.minor}",
            cudnn=torch.backends.cudnn.version(),
            float32_matmul_precision=torch.get_float32_matmul_precision(),
        )
    print(f"device: {info.get('gpu', 'cpu')}, torch {info['torch']}, CUDA {info.get('cuda')}", flush=True)
    result: dict[str, Any] = {
        "benchmark": "real-study backends on a GPU at random weights (stable-diffusion generator, open-clip instrument)",
        "tiny": args.tiny,
        "why": "--tiny: tiny models on a smoke run; the numbers mean nothing" if args.tiny else None,
        "command": "python benchmarks/gpu_backends.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "device_info": info,
    }
    failed = False
    parts = {"stable-diffusion": "stable_diffusion", "open-clip": "open_clip"}
    with tempfile.TemporaryDirectory(prefix="gpu_backends_") as tmp:
        for part, key in parts.items():
            if args.only and args.only != part:
                continue
            part_started = time.perf_counter()
            try:
                if part == "stable-diffusion":
                    result[key] = bench_stable_diffusion(scale, device, Path(tmp))
                else:
                    result[key] = bench_open_clip(scale, device)
            except Exception as error:  # noqa: BLE001 - one backend failing must not lose the other's numbers
                failed = True
                traceback.print_exc()
                result[key] = {
                    "error": f"{type(error).__name__}: {error}",
                    "traceback": traceback.format_exc().splitlines()[-12:],
                }
            result[key]["seconds"] = round(time.perf_counter() - part_started, 1)
            reset_peak(device)
            write_json(args.out, dict(result, seconds=round(time.perf_counter() - started, 1)))
    result["summary"] = summary(result)
    result["seconds"] = round(time.perf_counter() - started, 1)
    write_json(args.out, result)
    print(f"wrote {args.out} in {result['seconds']} s" + (" (a part FAILED: see its 'error')" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
