"""What every stage module shares: argument parsing, params loading, logging.

A stage module is thin: it parses its paths (given by ``cmd`` in ``dvc.yaml``), loads exactly the
params sections it declares in ``dvc.yaml`` into frozen configs, calls the library, writes outputs
atomically, and records the run with :mod:`biasloop.core.tracking`.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from biasloop.core.config import (
    BaseConfig,
    ConfigError,
    TrackingConfig,
    check_params,
    load_section,
    read_params,
)
from biasloop.core.io import describe_disk_full, setup_logging
from biasloop.core.runtime import QUEUE_WORKSPACE, apply_cpu_threads, resolve_cpu_threads
from biasloop.core.timing import annotate, runtime_facts, stage_finished

__all__ = ["load_configs", "make_parser", "run_main", "runtime_facts", "stage_main"]


def make_parser(doc: str | None, prog: str) -> argparse.ArgumentParser:
    """A parser whose description is the stage module's docstring, with ``--params``."""
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--params", default="params.yaml", help="params file to read the stage's sections from (default: %(default)s)"
    )
    return parser


def load_configs(params_path: str, sections: dict[str, type]) -> dict[str, Any]:
    """Load ``base``, ``tracking`` and the given ``{section: ConfigClass}`` from the params file.

    Exits with status 2 and a message naming the bad key when a section is invalid.
    """
    try:
        params = read_params(params_path)
        check_params(params)
        configs: dict[str, Any] = {
            "base": load_section(BaseConfig, "base", params),
            "tracking": load_section(TrackingConfig, "tracking", params),
        }
        for section, cls in sections.items():
            if cls is None:
                configs[section] = params.get(section)
            else:
                configs[section] = load_section(cls, section, params)
        threads = resolve_cpu_threads(configs["base"].cpu_threads)
    except ConfigError as exc:
        print(f"error: {params_path}: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    setup_logging(configs["base"].log_level)
    # The params decide, not the environment: an OMP_NUM_THREADS left in a shell (or by an earlier stage
    # called in the same process) must not change the numbers. Torch is imported lazily, after this, and
    # reads the variables at start-up; a torch imported earlier is set directly (apply_cpu_threads).
    apply_cpu_threads(threads)
    if threads > 1 and QUEUE_WORKSPACE in os.getcwd() + os.sep:
        # `dvc queue start -j N` runs N experiments at once: with spinning OpenMP threads, 2 threads
        # beside a busy process ran 3x slower (benchmarks/threads.py); sleeping at once (PASSIVE) keeps
        # most of it and changes no number (the wait policy only decides how an idle thread waits).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    logging.getLogger(__name__).info(
        "torch CPU threads: %d (base.cpu_threads %s), OMP_WAIT_POLICY %s",
        threads,
        configs["base"].cpu_threads,
        os.environ.get("OMP_WAIT_POLICY", "default"),
    )
    annotate(cpu_threads=threads, omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "default"))
    return configs


def run_main(body: Any, argv: Sequence[str] | None, logger: logging.Logger) -> int:
    """Call ``body(argv)`` turning input errors into a one-line message and exit status 2, and a full
    disk (:class:`biasloop.core.io.DiskFullError`, or any error saying ENOSPC) into one line and status 1."""
    status = "failed"
    try:
        body(argv)
        status = "ok"
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        full = describe_disk_full(exc)  # a full disk: one line, not a traceback (at DEBUG level: the traceback)
        if full is None:
            raise
        logger.debug("disk full", exc_info=True)
        print(f"error: {full}", file=sys.stderr)
        return 1
    finally:
        stage_finished(status)
    return 0


def stage_main(logger: logging.Logger) -> Callable[[Callable[[Sequence[str] | None], None]], Callable[..., int]]:
    """Make a stage's ``main(argv)`` (its work, returning nothing) the entry point that returns the exit
    status: :func:`run_main` around it, logging to ``logger``. A stage module writes::

        @stage_main(log)
        def main(argv: Sequence[str] | None = None) -> None: ...
    """

    def decorate(body: Callable[[Sequence[str] | None], None]) -> Callable[..., int]:
        @functools.wraps(body)
        def main(argv: Sequence[str] | None = None) -> int:
            return run_main(body, argv, logger)

        return main

    return decorate
