"""The ``biasloop`` command: helpers around the DVC pipeline, one module per subcommand.

    biasloop data                  materialise data/ (occupation table + MNIST glyph pool)
    biasloop amplify TRAIN GEN     amplification table from two per-occupation count files
    biasloop prompts export        every prompt generate@N asks for (prompt_id, seed) for images made elsewhere
    biasloop audit --images DIR --prompts FILE --reference REF  label images made elsewhere, compare (JSON+HTML)
    biasloop generations N         rewrite the generation lists in params.yaml for N generations
    biasloop captions-score R H    BLEU-4, ROUGE-L and CIDEr-D of hypothesis captions against references
    biasloop study list|run|collect  named studies over any params x seeds as queued DVC experiments
    biasloop doctor                environment, versions, threads, dvc status, locks, where MLflow writes
    biasloop stop [--dry-run]      stop this checkout's dvc, stages and MLflow logger (by PID; no other checkout's)
    biasloop plots-template        offline HTML template for dvc plots show/diff (vega inlined)

A subcommand module has ``add_parser(subparsers)``, which registers its arguments and ``run(args)``;
heavy libraries are imported inside ``run``, so ``biasloop --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

COMMANDS = (
    "data",
    "amplify",
    "prompts",
    "audit",
    "generations",
    "captions-score",
    "study",
    "doctor",
    "stop",
    "plots-template",
)  # in --help order


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biasloop", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"biasloop.cli.{name.replace('-', '_')}").add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``biasloop`` with ``argv`` (``sys.argv[1:]`` when None); returns the exit status.

    0 on success, 2 on bad arguments or bad input (one line on stderr naming the file and the problem), 1 when
    the disk is full (one line naming the output that could not be written), 141 (128 + SIGPIPE, as a shell
    reports ``yes | head``) when the reader of stdout went away (``biasloop ... | head``), without a traceback.
    """
    try:
        status = _main(argv)
        sys.stdout.flush()  # inside the try: a closed pipe surfaces here, not at interpreter exit
    except BrokenPipeError:
        # Python docs, "Note on SIGPIPE": point stdout at devnull so the flush at exit cannot fail again.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # stdout without a descriptor (captured in tests)
            pass
        return 141
    return status


def _main(argv: Sequence[str] | None) -> int:
    try:
        args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from biasloop.core.io import describe_disk_full

        full = describe_disk_full(exc)  # a full disk (any writer's way of saying it): one line, status 1
        if full is None:
            raise
        print(f"error: {full}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
