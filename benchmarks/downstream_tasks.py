"""How long the captioner@N and classifier@N stages train at the default params, with 1 torch thread.

Builds the default glyph world in memory (params.yaml's ``world`` and ``occupations``, with the glyph pool
and occupation table of ``data/``), then times, ``--repeats`` times each:

- the captioner's training (``captioner`` params) on the training split, its greedy captioning of the
  test split, and the LIC leakage classifiers (``captioner.leakage``: seeds x 2 trainings);
- the occupation classifier's training (``classifier`` params).

A fixed reference workload (a small conv net, 40 training steps) is timed before and after, so numbers
taken on a shared machine can be read as ratios to it; medians are reported. The quality of the models
(BLEU-4, CIDEr-D, Error, leakage, accuracy) is printed beside the times.

Usage (from the repository root, after ``make data``)::

    python benchmarks/downstream_tasks.py --repeats 3 --out benchmarks/results/downstream_tasks.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from biasloop.core.config import from_dict, read_params, to_dict
from biasloop.data.world import WorldConfig, build_world
from biasloop.metrics.caption_bias import caption_leakage, misprediction
from biasloop.metrics.caption_quality import score_captions
from biasloop.metrics.classification import classifier_fairness
from biasloop.models.captioner import CaptionerConfig, make_captioner
from biasloop.models.classifier import ClassifierConfig, train_classifier


def reference_seconds() -> float:
    """A fixed workload: 40 AdamW steps of a 3-layer conv net on 128 random 16x16 images."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(32, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 10),
    )
    optimiser = torch.optim.AdamW(net.parameters())
    x, y = torch.randn(128, 3, 16, 16), torch.randint(0, 10, (128,))
    start = time.perf_counter()
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each task (default: %(default)s)")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    params = read_params(args.params)
    world = from_dict(WorldConfig, params["world"], "world")
    captioner_config = from_dict(CaptionerConfig, params["captioner"], "captioner")
    classifier_config = from_dict(ClassifierConfig, params["classifier"], "classifier")
    samples, images = build_world(world, params["occupations"])
    train = (samples["split"] == "train").to_numpy()
    test = ~train
    captions = samples["caption"].to_numpy()
    genders = samples["true_gender"].to_list()
    test_genders = [g for g, t in zip(genders, test) if t]
    labelled = samples["true_occupation"].is_not_null().to_numpy()
    occupations = samples["true_occupation"].to_numpy()

    runs = []
    references = [reference_seconds()]
    for repeat in range(args.repeats):
        row: dict = {"repeat": repeat}
        captioner = make_captioner(captioner_config)
        row["captioner_train_seconds"] = captioner.train(
            images[train], captions[train].tolist(), seed=repeat, progress=False
        )["seconds"]
        start = time.perf_counter()
        hypotheses = captioner.caption(images[test])
        row["captioner_caption_seconds"] = time.perf_counter() - start
        ids = [str(i) for i in np.flatnonzero(test)]
        quality = score_captions({i: [c] for i, c in zip(ids, captions[test])}, dict(zip(ids, hypotheses)))
        leakage = caption_leakage(
            hypotheses, captions[test].tolist(), test_genders, captioner_config.leakage, repeat, captioner.vocabulary
        )
        row["leakage_seconds"] = leakage["seconds"]
        row.update(
            bleu4=quality["bleu4"],
            cider_d=quality["cider_d"],
            error=misprediction(hypotheses, test_genders)["error"],
            lic_m=leakage["lic_m"],
            lic_d=leakage["lic_d"],
            leakage=leakage["leakage"],
        )
        classifier, stats = train_classifier(
            images[train & labelled],
            occupations[train & labelled].tolist(),
            classifier_config,
            seed=repeat,
            progress=False,
        )
        row["classifier_train_seconds"] = stats["seconds"]
        fairness = classifier_fairness(
            occupations[test & labelled],
            classifier.predict(images[test & labelled]),
            [g for g, k in zip(genders, test & labelled) if k],
            classifier_config.min_group_size,
        )
        row.update(
            classifier_accuracy=fairness["accuracy"],
            classifier_worst_group=fairness["worst_group_accuracy"],
            classifier_dp=fairness["demographic_parity_difference_mean"],
        )
        runs.append(row)
        print(json.dumps(row))
    references.append(reference_seconds())

    def median(key: str) -> float:
        return float(np.median([r[key] for r in runs]))

    reference = float(np.median(references))
    summary = {key: median(key) for key in runs[0] if key != "repeat"}
    summary["captioner_stage_training_seconds"] = median("captioner_train_seconds") + median("leakage_seconds")
    result = {
        "what": "captioner@N / classifier@N training at the default params, default glyph world, 1 torch thread",
        "command": f"python benchmarks/downstream_tasks.py --repeats {args.repeats}",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "torch": torch.__version__,
        },
        "n_train": int(train.sum()),
        "n_test": int(test.sum()),
        "reference_workload_seconds": references,
        "median": summary,
        "median_in_reference_units": {k: v / reference for k, v in summary.items() if k.endswith("seconds")},
        "runs": runs,
        "config": {"captioner": to_dict(captioner_config), "classifier": to_dict(classifier_config)},
    }
    print(json.dumps(result["median"], indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
