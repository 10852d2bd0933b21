"""Replicated studies: a grid of ``synthetic_ratio`` x seeds (x generations) run as queued DVC experiments.

A study is its own role, apart from one run's report: :mod:`biasloop.study.grid` turns the ``study``
section of ``params.yaml`` into named cells and drives DVC's queue (``biasloop study run``);
:mod:`biasloop.study.collect` reads the experiments back from ``dvc exp show --json`` and aggregates them
over seeds, with intervals and seed-clustered trend slopes (``biasloop study collect``). The figures are
drawn by :mod:`biasloop.report.plots` and shown in the report by :mod:`biasloop.report.html`.
"""

from biasloop.study.grid import Cell, StudyConfig, load_study_config

__all__ = ["Cell", "StudyConfig", "load_study_config"]
