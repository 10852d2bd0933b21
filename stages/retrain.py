"""retrain@N: generation N's models, trained on generation N's mixed dataset.

The generator is fine-tuned from generation N-1's (``loop.warm_start``; from scratch otherwise), or
kept fixed (``loop.retrain_generator: false``, as in the replacement study). The downstream CLIP is
always trained from scratch, so its bias reflects dataset N alone.

Inputs:   artifacts/gen{N}/mix/dataset.parquet, artifacts/models/gen{N-1}/generator
Outputs:  artifacts/models/gen{N}/{generator,downstream,training.json}
Params:   base, tracking, loop, generator, downstream

Example:
    python -m stages.retrain --generation 1 --dataset artifacts/gen1/mix/dataset.parquet \\
        --previous artifacts/models/gen0/generator --out artifacts/models/gen1
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import polars as pl

from biasloop.core.config import to_dict
from biasloop.core.runtime import resolve_device
from biasloop.core.stage import load_configs, make_parser, stage_main
from biasloop.core.tracking import stage_run
from biasloop.loop.mixing import LoopConfig
from biasloop.loop.training import train_generation
from biasloop.models.downstream_clip import DownstreamConfig
from biasloop.models.generators import GeneratorConfig

log = logging.getLogger("retrain")


@stage_main(log)
def main(argv: Sequence[str] | None = None) -> None:
    parser = make_parser(__doc__, "python -m stages.retrain")
    parser.add_argument("--generation", type=int, required=True, help="generation N being trained (N >= 1)")
    parser.add_argument("--dataset", required=True, help="generation N's dataset manifest (from mix@N)")
    parser.add_argument("--previous", required=True, help="generation N-1's generator folder")
    parser.add_argument("--out", required=True, help="output folder (artifacts/models/gen{N})")
    args = parser.parse_args(argv)
    configs = load_configs(
        args.params, {"loop": LoopConfig, "generator": GeneratorConfig, "downstream": DownstreamConfig}
    )
    loop, generator, downstream = configs["loop"], configs["generator"], configs["downstream"]
    dataset = pl.read_parquet(args.dataset)
    params = {"loop": to_dict(loop), "generator": to_dict(generator), "downstream": to_dict(downstream)}
    with stage_run("retrain", configs["tracking"], params, generation=args.generation) as run:
        stats = train_generation(
            dataset,
            args.out,
            generator,
            downstream,
            seed=configs["base"].seed,
            generation=args.generation,
            device=resolve_device(configs["base"].device),
            generator_steps=loop.generator_steps if loop.warm_start else generator.train_steps,
            warm_start_from=args.previous if loop.warm_start else None,
            copy_generator_from=None if loop.retrain_generator else args.previous,
        )
        run.log_metrics(stats)


if __name__ == "__main__":
    raise SystemExit(main())
