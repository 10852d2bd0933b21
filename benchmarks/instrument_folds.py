"""Cross-fitting the instrument: cost and accuracy against the number of folds K and epochs per fold.

On the default glyph world (``params.yaml``: world, occupations, instrument, label), with the packaged
all-MiniLM-L6-v2 text tower, for each (K, epochs) of the grid this trains the K fold models
(:func:`biasloop.models.instrument.cross_fitting.train_cross_fitted`) and measures (:func:`measure_cross_fitted`):

- ``seconds`` / ``cpu_seconds``: wall and process CPU time of training all K models (text embeddings
  come from a warm cache); on a shared machine CPU time with one thread is the steadier measure;
- ``accuracy`` / ``abstain_rate`` / ``tpr`` / ``fpr``: the labelling rule on the held-out split (the
  rates that correct the shares), ``out_of_fold_*``: the training images each labelled by its own
  fold's model (the labels ``label_train`` writes), ``occupation_accuracy`` (zero-shot, held out);
- ``ensemble_*``: the alternative the instrument does not use, the mean of the K models' p_female.

A reference row ``K=1`` is the pre-cross-fitting instrument: one model on the whole train split, its
held-out rates beside its **in-sample** rates on the images it trained on (what ``label_train`` used
to label with). Times depend on the machine and its load: compare rows of one run.

Usage (repository root)::

    python benchmarks/instrument_folds.py                       # writes benchmarks/results/instrument_folds.json
    python benchmarks/instrument_folds.py --grid 2:5 3:5 --threads 1 --out /tmp/folds.json
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import yaml

from biasloop.core.config import from_dict
from biasloop.core.io import load_images, write_json
from biasloop.data.corpus import write_corpus
from biasloop.data.embeddings import load_cached_text_encoder
from biasloop.data.world import WorldConfig, build_world
from biasloop.models.instrument import (
    InstrumentConfig,
    confusion_rates,
    corpus_split,
    label_from_p,
    measure_cross_fitted,
    train_cross_fitted,
    train_or_load_instrument,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _rates(rates: dict) -> dict:
    return {key: rates[key] for key in ("accuracy", "abstain_rate", "tpr", "fpr")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--grid",
        nargs="+",
        default=["2:10", "2:20", "3:5", "3:10", "4:5", "4:7", "5:5"],
        help="K:epochs pairs to train (default: %(default)s)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: params.yaml's)")
    parser.add_argument("--data", default=str(ROOT / "data"), help="data/ folder (glyphs, occupation table)")
    parser.add_argument("--out", default=str(HERE / "results" / "instrument_folds.json"), help="result JSON")
    args = parser.parse_args(argv)

    import torch

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    world = dict(
        params["world"],
        glyphs=f"{args.data}/glyphs/mnist",
        occupation_table=f"{args.data}/occupations/occupations_bls.tsv",
    )
    occupations = list(params["occupations"])
    base_config = from_dict(InstrumentConfig, params["instrument"], "instrument")
    threads = args.threads or None
    if threads:
        torch.set_num_threads(threads)
    threshold = float(params["label"]["abstain_threshold"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("BIASLOOP_EMBEDDING_CACHE", f"{tmp}/embeddings")
        os.chdir(tmp)
        samples, images = build_world(from_dict(WorldConfig, world, "world"), occupations)
        write_corpus(samples, images, "artifacts/corpus", shard_size=4096)
        corpus = pl.read_parquet("artifacts/corpus/captions.parquet")
        train, test = (
            corpus_split(corpus, "train"),
            corpus_split(corpus, "test").filter(pl.col("true_gender").is_in(["female", "male"])),
        )
        train_images, test_images = load_images(train["image_ref"].to_list()), load_images(test["image_ref"].to_list())
        print(f"world: {len(train)} training, {len(test)} held-out images; threads {torch.get_num_threads()}")

        # warm the caption-embedding cache, then the in-sample reference: one model on everything
        config = dataclasses.replace(base_config, epochs=20, cpu_threads=threads)
        load_cached_text_encoder(config.text_encoder).encode(sorted(set(train["caption"].to_list())))
        start, cpu_start = time.perf_counter(), time.process_time()
        single, _ = train_or_load_instrument(
            config, train_images, train["caption"].to_list(), occupations, seed=params["base"]["seed"], progress=False
        )
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        in_sample = confusion_rates(
            train["true_gender"].to_list(), label_from_p(single.p_female(train_images), threshold)
        )
        held_out = confusion_rates(test["true_gender"].to_list(), label_from_p(single.p_female(test_images), threshold))
        rows.append(
            {
                "folds": 1,
                "epochs": 20,
                "seconds": round(seconds, 2),
                "cpu_seconds": round(cpu_seconds, 2),
                **_rates(held_out),
                **{f"in_sample_{k}": v for k, v in _rates(in_sample).items()},
            }
        )
        print(rows[-1], flush=True)

        for pair in args.grid:
            folds, epochs = map(int, pair.split(":"))
            config = dataclasses.replace(base_config, folds=folds, epochs=epochs, cpu_threads=threads)
            cpu_start = time.process_time()
            instrument, stats = train_cross_fitted(
                config, train, occupations, seed=params["base"]["seed"], progress=False
            )
            cpu_seconds = time.process_time() - cpu_start
            measured = measure_cross_fitted(instrument, corpus, config, occupations, threshold)
            ensemble_p = np.mean([model.p_female(test_images) for model in instrument.models], axis=0)
            ensemble = confusion_rates(test["true_gender"].to_list(), label_from_p(ensemble_p, threshold))
            per_fold_accuracy = [f["accuracy"] or 0.0 for f in measured["per_fold"]]
            rows.append(
                {
                    "folds": folds,
                    "epochs": epochs,
                    "seconds": round(stats["seconds"], 2),
                    "cpu_seconds": round(cpu_seconds, 2),
                    **_rates(measured),
                    **{f"out_of_fold_{k}": v for k, v in _rates(measured["out_of_fold"]).items()},
                    "per_fold_accuracy_range": [min(per_fold_accuracy), max(per_fold_accuracy)],
                    "occupation_accuracy": measured["occupation_accuracy"],
                    **{f"ensemble_{k}": v for k, v in _rates(ensemble).items()},
                }
            )
            print(rows[-1], flush=True)
    for key in ("seconds", "cpu_seconds"):
        for row in rows:
            row[f"{key}_vs_single"] = round(row[key] / rows[0][key], 2)
    write_json(
        args.out,
        {
            "what": "instrument cross-fitting: K fold models x epochs per fold; K=1 is one in-sample model (reference)",
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor(),
                "cpus": os.cpu_count(),
                "torch_threads": threads or "params.yaml",
                "python": sys.version.split()[0],
            },
            "command": "python benchmarks/instrument_folds.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "n_train": len(train),
            "n_held_out": len(test),
            "threshold": threshold,
            "rows": rows,
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
