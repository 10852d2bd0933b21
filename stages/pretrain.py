"""pretrain: generation 0's models, trained on the real corpus.

The generator (tiny-diffusion by default; ``generator.backend: stable-diffusion`` fine-tunes or keeps a
pretrained pipeline) and the downstream CLIP (open_clip, from scratch), both on the corpus's training split.

Inputs:   artifacts/corpus/captions.parquet (+ image shards)
Outputs:  artifacts/models/gen0/{generator,downstream,training.json}
Params:   base, tracking, generator, downstream

Example:
    python -m stages.pretrain --corpus artifacts/corpus/captions.parquet --out artifacts/models/gen0
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import polars as pl

from biasloop.core.config import to_dict
from biasloop.core.runtime import resolve_device
from biasloop.core.stage import load_configs, make_parser, stage_main
from biasloop.core.tracking import stage_run
from biasloop.loop.training import train_generation
from biasloop.models.downstream_clip import DownstreamConfig
from biasloop.models.generators import GeneratorConfig

log = logging.getLogger("pretrain")


@stage_main(log)
def main(argv: Sequence[str] | None = None) -> None:
    parser = make_parser(__doc__, "python -m stages.pretrain")
    parser.add_argument("--corpus", default="artifacts/corpus/captions.parquet", help="corpus caption table")
    parser.add_argument("--out", default="artifacts/models/gen0", help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)
    configs = load_configs(args.params, {"generator": GeneratorConfig, "downstream": DownstreamConfig})
    generator, downstream = configs["generator"], configs["downstream"]
    dataset = pl.read_parquet(args.corpus).filter(pl.col("split") == "train")
    params = {"generator": to_dict(generator), "downstream": to_dict(downstream), "base": to_dict(configs["base"])}
    with stage_run("pretrain", configs["tracking"], params, generation=0) as run:
        stats = train_generation(
            dataset,
            args.out,
            generator,
            downstream,
            seed=configs["base"].seed,
            generation=0,
            device=resolve_device(configs["base"].device),
            generator_steps=generator.train_steps,
        )
        run.log_metrics(stats)


if __name__ == "__main__":
    raise SystemExit(main())
