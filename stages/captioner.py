"""captioner@N: an image captioner trained from scratch on generation N's dataset, scored on real held-out images.

The replacement study's captioning task (Chen et al., CVPR 2024): quality (BLEU-4, ROUGE-L, CIDEr-D against
the held-out human captions, no Java), gender misprediction (Error and Ratio, Burns et al. 2018) and LIC
leakage (LIC_M on the model's captions, LIC_D on the human captions, leakage = LIC_M - LIC_D; Hirota et
al. 2022). Generation 0 trains on the real corpus's training split, generation N on dataset N.

Inputs:   the generation's dataset (artifacts/corpus/captions.parquet for N = 0,
          artifacts/gen{N}/mix/dataset.parquet otherwise), artifacts/corpus (held-out split),
          artifacts/instrument (genders, when the corpus has no ground truth)
Outputs:  artifacts/gen{N}/captioner/captions.parquet   (id, reference, caption, gender, caption_gender)
          metrics/generations/captioner_gen{N}.json
Params:   base, tracking, captioner, label

Example:
    python -m stages.captioner --generation 1 --dataset artifacts/gen1/mix/dataset.parquet \\
        --corpus artifacts/corpus/captions.parquet --instrument artifacts/instrument \\
        --out artifacts/gen1/captioner --metrics metrics/generations/captioner_gen1.json
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from biasloop.core.config import to_dict
from biasloop.core.io import load_images, timed, write_json, write_parquet
from biasloop.core.runtime import resolve_device
from biasloop.core.seeds import stream_seed
from biasloop.core.stage import load_configs, make_parser, runtime_facts, stage_main
from biasloop.core.tracking import stage_run
from biasloop.metrics.captioning import captioner_scores
from biasloop.metrics.evaluation import held_out, held_out_genders, training_pairs
from biasloop.models.captioner import CaptionerConfig, make_captioner
from biasloop.models.instrument import LabelConfig

log = logging.getLogger("captioner")


@stage_main(log)
def main(argv: Sequence[str] | None = None) -> None:
    parser = make_parser(__doc__, "python -m stages.captioner")
    parser.add_argument("--generation", type=int, required=True, help="generation N")
    parser.add_argument("--dataset", required=True, help="generation N's dataset (corpus captions.parquet for N = 0)")
    parser.add_argument("--corpus", required=True, help="corpus caption table (its held-out split is scored)")
    parser.add_argument(
        "--instrument", default=None, help="instrument folder, used when the corpus has no gender labels"
    )
    parser.add_argument("--out", required=True, help="output folder for captions.parquet")
    parser.add_argument("--metrics", required=True, help="metrics JSON to write")
    args = parser.parse_args(argv)
    configs = load_configs(args.params, {"captioner": CaptionerConfig, "label": LabelConfig})
    config: CaptionerConfig = configs["captioner"]
    device = resolve_device(configs["base"].device)
    with stage_run("captioner", configs["tracking"], {"captioner": to_dict(config)}, generation=args.generation) as run:
        dataset, test = training_pairs(args.dataset), held_out(args.corpus)
        # its own stream per generation: seed s at generation g+1 does not replay seed s+1 at generation g
        seed = stream_seed(configs["base"].seed, "captioner", args.generation)
        groups = held_out_genders(test, args.instrument, device, configs["label"].abstain_threshold)
        captioner = make_captioner(config, device)
        with timed(f"captioner training on {len(dataset)} pairs", log):
            images = load_images(dataset["image_ref"].to_list())
            training = captioner.train(images, dataset["caption"].to_list(), seed, progress=True)
        metrics, captions = captioner_scores(captioner, test, groups, config, seed)
        metrics = {"generation": args.generation, **metrics, "training": training, "backend": config.backend}
        write_parquet(Path(args.out) / "captions.parquet", captions)
        write_json(args.metrics, {**metrics, **runtime_facts()})
        run.log_metrics({k: v for k, v in metrics.items() if k != "training"})


if __name__ == "__main__":
    raise SystemExit(main())
