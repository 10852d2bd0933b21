"""Training one generation's models: the generator (self-consuming loop) and the downstream CLIP.

Shared by the ``pretrain`` stage (generation 0, on the real corpus) and ``retrain@N`` (generation N, on
dataset N). Heavy libraries are imported inside the functions. Both models train on ``base.device``.

Random streams
--------------
Every random source follows ``base.seed`` (the glyph world excepted: ``world.seed`` is its own), through
named streams, ``stream_seed(base.seed, name, *keys)`` (:func:`biasloop.core.seeds.stream_seed`): no seed
is ever ``base.seed + N``, so seed s at generation N+1 never replays seed s+1 at generation N (the
stream's hash makes neighbouring inputs unrelated). Variants use **common random numbers**: a
``synthetic_ratio`` variant draws exactly the baseline's numbers in every stream, so it differs from the
baseline only by the ratio (which images are replaced, nested across ratios); a ``base.seed`` variant
changes every stream.

================================  =============================================  ==========================
stream (where)                    what it decides                                shared across
================================  =============================================  ==========================
``caption-prompts``, crc32(occ)   captions-as-prompts sample per occupation      generations, ratios
(loop.prompts)
``generate-noise``, N             each generated image's initial noise           ratios
(generate@N)
``replacement-order``, N (mix@N)  the nested order of replaced samples           ratios (nested prefix)
``mix-noise``, N (mix@N)          noise of the i-th replacement image            ratios (same i, same sample)
``generator-init``                initial weights: tiny-diffusion from scratch,  generations, ratios
                                  stable-diffusion's LoRA adapters
``generator-train``, N            generator batch order, noise, timesteps,       ratios
                                  condition dropout in generation N's training
``downstream``                    downstream CLIP initial weights and batch      generations, ratios
                                  order (trained from scratch every generation)
``instrument-folds`` /            which fold each training image is in; each     everything (trained once)
``instrument-fold``, k /          fold model's initial weights, order, augments;
``instrument-mixture``            the fold model that labels an unseen image
``captioner``, N /                captioner@N / classifier@N: initial weights,   ratios
``classifier``, N                 batch order (trained from scratch on dataset
                                  N)
``leakage-split``, r /            captioner@N's LIC run r: balanced split,       ratios
``leakage-classifier``, r         classifier initialisation (keyed from the
                                  captioner's seed, so per generation too)
``amplification-bootstrap``       amplification tables' bootstrap and noise-     generations, ratios
(paradox, evaluate)               floor (null) draws
``decomposition-bootstrap``, i    the decomposition's bootstrap of pairing i     generations, ratios
(paradox, evaluate)               (``paradox.PAIRINGS`` order)
``downstream-fairness-``          the downstream CLIP's parity and odds          generations, ratios
``bootstrap`` (evaluate);         differences' intervals; classifier@N's gap
``classifier-bootstrap``,         and differences'; captioner@N's BLEU-4,
``captioner-bootstrap``,          ROUGE-L, CIDEr-D, predicted-gender ratio
``captioner-ratio-bootstrap``,    and LIC/leakage intervals (test captions
``leakage-bootstrap``             resampled, leakage classifiers not retrained)
================================  =============================================  ==========================

The downstream CLIP and the from-scratch generator start from the same weights and see their data in
the same order in every generation, so a change across generations is the datasets' and not a new
initialisation's. The generator's training noise is fresh per generation: the loop fine-tunes one
model round after round, and replaying one noise sequence every round would correlate the rounds.
Random numbers are drawn on the CPU (``torch.Generator()``, CPU initialisation) and moved to the device,
so a CPU and a GPU run draw the same numbers (their float arithmetic still differs; see docs/reproducibility.md); the
one exception is stable-diffusion's LoRA initialisation, which peft draws on the UNet's device.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import polars as pl

from biasloop.core.io import atomic_path, load_images, timed, write_json
from biasloop.core.seeds import stream_seed

log = logging.getLogger(__name__)


def train_generation(
    dataset: pl.DataFrame,
    out_dir: str | Path,
    generator_config: Any,
    downstream_config: Any,
    seed: int,
    generation: int,
    device: str,
    generator_steps: int,
    warm_start_from: str | Path | None = None,
    copy_generator_from: str | Path | None = None,
) -> dict[str, Any]:
    """Train (or carry over) the generator and train the downstream CLIP on ``dataset``.

    Args:
        dataset: rows with ``caption`` and ``image_ref`` (the training split).
        out_dir: written atomically with ``generator/``, ``downstream/`` and ``training.json``.
        generator_config: the ``generator`` params (a ``GeneratorConfig``).
        downstream_config: the ``downstream`` params (a ``DownstreamConfig``).
        seed: the master seed (``base.seed``); the streams it seeds are listed in the module docstring.
        generation: the generation N being trained (0 for ``pretrain``).
        device: torch device both models train on (``base.device``).
        generator_steps: optimisation steps for the generator.
        warm_start_from: a generator folder to continue from (fine-tuning), or None for from scratch.
        copy_generator_from: keep this generator unchanged instead of training (``loop.retrain_generator: false``).

    Returns:
        Training statistics (seconds, steps, losses, and the ``seeds`` of each stream) for metrics and MLflow.
    """
    from biasloop.models.downstream_clip import save_downstream, train_downstream_clip
    from biasloop.models.generators import build_generator, load_generator

    out_dir = Path(out_dir)
    captions = dataset["caption"].to_list()
    images = load_images(dataset["image_ref"].to_list())
    seeds = training_seeds(seed, generation)
    stats: dict[str, Any] = {"n_samples": len(captions), "device": device, "seeds": seeds}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        if copy_generator_from is not None:
            shutil.copytree(copy_generator_from, tmp / "generator")
            stats["generator"] = {"kept_from": str(copy_generator_from)}
        else:
            if warm_start_from is not None:
                generator = load_generator(warm_start_from, device)
            else:
                generator = build_generator(generator_config, device, seed=seeds["generator_init"])
            with timed(f"training generator for {generator_steps} steps on {len(captions)} images", log):
                stats["generator"] = generator.train(
                    images, captions, steps=generator_steps, seed=seeds["generator_train"]
                )
            generator.save(tmp / "generator")
        with timed(f"training downstream CLIP on {len(captions)} pairs", log):
            model, downstream_stats = train_downstream_clip(
                images, captions, downstream_config, seed=seeds["downstream"], device=device
            )
        save_downstream(model, tmp / "downstream")
        stats["downstream"] = downstream_stats
        write_json(tmp / "training.json", stats)
    return stats


def training_seeds(seed: int, generation: int) -> dict[str, int]:
    """The seeds of generation ``generation``'s training streams (see the module docstring).

    Returns:
        ``generator_init`` (from-scratch weights; the same in every generation), ``generator_train``
        (per generation) and ``downstream`` (initial weights and batch order; the same in every generation).
    """
    return {
        "generator_init": stream_seed(seed, "generator-init"),
        "generator_train": stream_seed(seed, "generator-train", generation),
        "downstream": stream_seed(seed, "downstream"),
    }
