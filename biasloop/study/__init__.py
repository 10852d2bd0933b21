"""Studies: named grids over any params x replicate seeds, run as queued DVC experiments.

A study is its own role, apart from one run's report: :mod:`biasloop.study.config` reads the ``study``
and ``studies`` sections of ``params.yaml``; :mod:`biasloop.study.grid` turns a study into named cells and
drives DVC's queue (``biasloop study run --name NAME``), or :mod:`biasloop.study.ray_executor` runs each
cell as a Ray task (:mod:`biasloop.study.cell`: clone, ``dvc exp run``, ``dvc exp push``; docs/cluster.md);
:mod:`biasloop.study.collect` reads the experiments back from ``dvc exp show --json`` (after ``dvc exp
pull`` with ``--pull``) and aggregates them over seeds with the estimates of :mod:`biasloop.study.estimates`
and the intervals and verdicts of :mod:`biasloop.study.inference` (primary endpoints plain, every other
interval Holm-adjusted, equivalence only against a declared margin); :mod:`biasloop.study.outputs` writes
``metrics/studies/<name>.json`` and ``plots/studies/<name>_*`` (``biasloop study collect``); :mod:`biasloop.study.generations` writes
``params.yaml``'s generations lists for a count (a cell's, or ``biasloop generations N``).
"""

from biasloop.study.config import EndpointConfig, StudyConfig, StudySpec, load_study_config
from biasloop.study.grid import Cell

__all__ = ["Cell", "EndpointConfig", "StudyConfig", "StudySpec", "load_study_config"]
