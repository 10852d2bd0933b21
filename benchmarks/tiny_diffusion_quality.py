"""Can the tiny-diffusion default draw what it is asked? Training time vs. digit accuracy and colour control.

Trains the ``tiny-diffusion`` generator from scratch on the glyph world's training split (as the
``pretrain`` stage does), optionally fine-tunes it warm-started (as ``retrain@N`` does), and judges the
generated images with judges trained on the *real* glyphs:

- digit accuracy: a small CNN trained on the real corpus images (occupation i <-> digit i) says whether the
  generated image shows the asked occupation's digit (chance 10%);
- colour follow: for prompts with an explicit gender indicator ("a female nurse", "a man working as a
  nurse"), the share of images whose colour is the indicated gender's (red-magenta vs. azure, judged by
  R > B over the glyph's pixels, which is checked against ground truth on the real images);
- neutral share: for neutral prompts ("a photo of a nurse"), the generated share of women per occupation
  next to the training share (mean absolute gap over occupations).

Usage (from the repository root, after ``dvc repro corpus`` or ``python -m stages.corpus``)::

    python benchmarks/tiny_diffusion_quality.py --steps 1000 --finetune-steps 300 \\
        --set batch_size=64 --out benchmarks/results/tiny_diffusion.json

``--set key=value`` overrides a ``generator`` param (values parsed as YAML).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
import yaml

from biasloop.core.config import read_params, to_dict
from biasloop.core.io import load_images
from biasloop.models.generators import (
    GeneratorConfig,
    SamplingConfig,
    build_generator,
    config_from_dict,
)

NEUTRAL = ("a photo of a {o}", "a {o} at work")
FEMALE = ("a female {o}", "a woman working as a {o}")
MALE = ("a male {o}", "a man working as a {o}")


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def fill(template: str, occupation: str) -> str:
    text = template.format(o=occupation)
    return text.replace(f"a {occupation}", f"{article(occupation)} {occupation}")


def is_female(images: np.ndarray) -> np.ndarray:
    """Colour judge: red-magenta (women) vs. azure (men), from the mean colour of the glyph's pixels."""
    x = images.astype(np.float32) / 255.0
    bright = x.max(axis=-1) > 0.3
    weight = bright[..., None].astype(np.float32)
    mean = (x * weight).sum(axis=(1, 2)) / np.maximum(weight.sum(axis=(1, 2)), 1.0)
    return mean[:, 0] > mean[:, 2]


class DigitNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 32, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 64, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Dropout(0.2),
            torch.nn.LazyLinear(10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def grey(images: np.ndarray) -> torch.Tensor:
    """Colour-free input for the digit judge: the max over channels, normalised per image."""
    x = torch.from_numpy(images.astype(np.float32) / 255.0).amax(dim=-1)
    x = x / x.flatten(1).amax(dim=1).clamp_min(0.05)[:, None, None]
    return x[:, None]


def train_digit_judge(
    images: np.ndarray, labels: np.ndarray, test: np.ndarray, seed: int = 0
) -> tuple[DigitNet, float]:
    torch.manual_seed(seed)
    model = DigitNet()
    x, y = grey(images), torch.from_numpy(labels)
    train_idx, test_idx = np.flatnonzero(~test), np.flatnonzero(test)
    model(x[:2])
    optimizer = torch.optim.Adam(model.parameters(), 2e-3)
    for _epoch in range(8):
        perm = torch.from_numpy(np.random.default_rng(_epoch).permutation(train_idx))
        model.train()
        for start in range(0, len(perm), 64):
            batch = perm[start : start + 64]
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x[test_idx]).argmax(1) == y[test_idx]).float().mean())
    return model, accuracy


def evaluate(
    generator,
    occupations: list[str],
    judge: DigitNet,
    train_share: dict[str, float],
    n: int,
    scale: float,
    sampling_steps: int | None = None,
) -> dict:
    prompts, digits, kinds, occs = [], [], [], []
    for digit, occupation in enumerate(occupations):
        for kind, templates in (("neutral", NEUTRAL), ("female", FEMALE), ("male", MALE)):
            for template in templates:
                for _ in range(n):
                    prompts.append(fill(template, occupation))
                    digits.append(digit % 10)
                    kinds.append(kind)
                    occs.append(occupation)
    seeds = list(range(10_000, 10_000 + len(prompts)))
    start = time.perf_counter()
    images = generator.generate(prompts, seeds, batch_size=256, guidance_scale=scale, steps=sampling_steps)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        predicted = judge(grey(images)).argmax(1).numpy()
    digits_a, kinds_a, occs_a = np.array(digits), np.array(kinds), np.array(occs)
    female = is_female(images)
    gendered = kinds_a != "neutral"
    follow = np.where(kinds_a == "female", female, ~female)[gendered]
    neutral = kinds_a == "neutral"
    gaps = {}
    for occupation in occupations:
        mask = neutral & (occs_a == occupation)
        gaps[occupation] = {"generated": float(female[mask].mean()), "train": train_share[occupation]}
    return {
        "n_images": len(prompts),
        "sampling_seconds": round(seconds, 2),
        "digit_accuracy": float((predicted == digits_a).mean()),
        "digit_accuracy_neutral": float((predicted == digits_a)[neutral].mean()),
        "colour_follow": float(follow.mean()),
        "colour_follow_female": float(female[kinds_a == "female"].mean()),
        "colour_follow_male": float((~female)[kinds_a == "male"].mean()),
        "neutral_share_gap": float(np.mean([abs(v["generated"] - v["train"]) for v in gaps.values()])),
        "neutral_share_corr": float(
            np.corrcoef([v["generated"] for v in gaps.values()], [v["train"] for v in gaps.values()])[0, 1]
        ),
        "neutral_shares": gaps,
        "_images": images,
    }


def contact_sheet(images: np.ndarray, path: Path, per_row: int) -> None:
    from PIL import Image

    rows = [np.concatenate(list(images[i : i + per_row]), axis=1) for i in range(0, len(images), per_row)]
    rows = [r for r in rows if r.shape[1] == rows[0].shape[1]]
    sheet = np.concatenate(rows, axis=0)
    Image.fromarray(sheet).resize((sheet.shape[1] * 3, sheet.shape[0] * 3), Image.NEAREST).save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="artifacts/corpus/captions.parquet")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--steps", type=int, default=None, help="from-scratch steps (default: generator.train_steps)")
    parser.add_argument("--finetune-steps", type=int, default=0, help="then fine-tune warm-started for this many")
    parser.add_argument("--set", action="append", default=[], help="generator param override key=value")
    parser.add_argument("--n", type=int, default=10, help="images per prompt template and occupation")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--guidance", type=float, action="append", default=[], help="extra guidance scales to judge")
    parser.add_argument("--sampling", type=int, action="append", default=[], help="extra DDIM step counts to judge")
    parser.add_argument("--out", default=None, help="JSON report (default: print only)")
    parser.add_argument("--sheet", default=None, help="PNG contact sheet of generated images")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    params = read_params(args.params) if Path(args.params).exists() else {}
    section = dict(params.get("generator") or {})
    for item in args.set:
        key, _, value = item.partition("=")
        section[key] = yaml.safe_load(value)
    config: GeneratorConfig = config_from_dict(section)
    sampling = SamplingConfig(**(params.get("sampling") or {}))
    occupations = list(params.get("occupations") or [])
    corpus = pl.read_parquet(args.corpus)
    people = corpus.filter(pl.col("true_occupation").is_not_null())
    if not occupations:
        occupations = sorted(people["true_occupation"].unique().to_list())
    digit_of = {o: i % 10 for i, o in enumerate(occupations)}

    real = load_images(people["image_ref"].to_list())
    labels = np.array([digit_of[o] for o in people["true_occupation"]], dtype=np.int64)
    judge, judge_accuracy = train_digit_judge(real, labels, (people["split"] == "test").to_numpy())
    truth_female = (people["true_gender"] == "female").to_numpy()
    colour_judge_accuracy = float((is_female(real) == truth_female).mean())
    train_rows = corpus.filter(pl.col("split") == "train")
    train_people = train_rows.filter(pl.col("true_occupation").is_not_null())
    train_share = {
        o: float((train_people.filter(pl.col("true_occupation") == o)["true_gender"] == "female").mean())
        for o in occupations
    }
    print(f"judges: digit {judge_accuracy:.3f} (real test glyphs), colour {colour_judge_accuracy:.3f}", flush=True)

    images = load_images(train_rows["image_ref"].to_list())
    captions = train_rows["caption"].to_list()
    load_start = os.getloadavg()[0]
    generator = build_generator(config, "cpu", seed=0)
    steps = args.steps or config.train_steps
    stats = generator.train(images, captions, steps=steps, seed=0, progress=False)
    report: dict = {
        "config": to_dict(config),
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "judges": {"digit_accuracy_real": judge_accuracy, "colour_accuracy_real": colour_judge_accuracy},
        "n_train_images": len(images),
        "load_average_1min": {"start": load_start, "after_training": os.getloadavg()[0]},
        "note": "seconds are wall-clock on a CPU shared with other jobs: load averages above the thread "
        "count mean the timings are inflated",
        "scratch": {"train": stats},
    }
    settings = [(sampling.guidance_scale, sampling.steps)]
    settings += [(scale, sampling.steps) for scale in args.guidance]
    settings += [(sampling.guidance_scale, k) for k in args.sampling]
    for scale, k in settings:
        result = evaluate(generator, occupations, judge, train_share, args.n, scale, k)
        sample = result.pop("_images")
        report["scratch"][f"guidance_{scale:g}_steps_{k}"] = result
        print(
            f"scratch {steps} steps {stats['seconds']:.0f}s loss {stats['final_loss']:.4f} g={scale:g} ddim={k}: "
            f"digit {result['digit_accuracy']:.3f} follow {result['colour_follow']:.3f} "
            f"(F {result['colour_follow_female']:.2f} M {result['colour_follow_male']:.2f}) "
            f"neutral gap {result['neutral_share_gap']:.3f} corr {result['neutral_share_corr']:.2f} "
            f"sampling {result['sampling_seconds']:.1f}s/{result['n_images']}",
            flush=True,
        )
        if args.sheet and (scale, k) == settings[0]:
            contact_sheet(sample[:: max(args.n // 4, 1)][: 12 * 30], Path(args.sheet), 24)
    if args.finetune_steps:
        stats = generator.train(images, captions, steps=args.finetune_steps, seed=1, progress=False)
        result = evaluate(generator, occupations, judge, train_share, args.n, sampling.guidance_scale)
        result.pop("_images")
        report["finetune"] = {"train": stats, f"guidance_{sampling.guidance_scale:g}_steps_{sampling.steps}": result}
        print(
            f"finetune +{args.finetune_steps} steps {stats['seconds']:.0f}s: digit {result['digit_accuracy']:.3f} "
            f"follow {result['colour_follow']:.3f} neutral gap {result['neutral_share_gap']:.3f}",
            flush=True,
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
