"""What every stage module shares: argument parsing, params loading, logging.

A stage module is thin: it parses its paths (given by ``cmd`` in ``dvc.yaml``), loads exactly the
params sections it declares in ``dvc.yaml`` into frozen configs, calls the library, writes outputs
atomically, and records the run with :mod:`biasloop.core.tracking`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
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
from biasloop.core.runtime import resolve_cpu_threads
from biasloop.core.timing import annotate, stage_finished


def make_parser(doc: str | None, prog: str) -> argparse.ArgumentParser:
    """A parser whose description is the stage module's docstring, with ``--params``."""
    parser = argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
    # Torch is imported lazily, after this: its thread pools read these at start-up. An explicit
    # environment setting wins. Oversubscribed cores (2 processes x 2 threads on 2 cores) made tiny
    # models 2 to 20x slower, hence 1 thread per stage inside queued experiments (resolve_cpu_threads).
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, str(threads))
    # OMP_WAIT_POLICY stays OpenMP's default (spin, then sleep): PASSIVE (sleep at once) avoids the
    # collapse of 2 threads beside a busy process, but costs 20-40% on an idle machine on these tiny
    # operations (benchmarks/results/threads.json); choosing the thread count at start-up avoids it instead.
    logging.getLogger(__name__).info("torch CPU threads: %s (base.cpu_threads %d), OMP_WAIT_POLICY %s",
                                     os.environ["OMP_NUM_THREADS"], configs["base"].cpu_threads,
                                     os.environ.get("OMP_WAIT_POLICY", "default"))
    annotate(cpu_threads=int(os.environ["OMP_NUM_THREADS"]) if os.environ["OMP_NUM_THREADS"].isdigit() else None,
             omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "default"))
    return configs


def run_main(main_body: Any, argv: Sequence[str] | None, logger: logging.Logger) -> int:
    """Call ``main_body(argv)`` turning input errors into a one-line message and exit status 2, and a full
    disk (:class:`biasloop.core.io.DiskFullError`, or any error saying ENOSPC) into one line and status 1."""
    status = "failed"
    try:
        main_body(argv)
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
