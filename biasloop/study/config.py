"""Study definitions: the ``study`` (shared settings) and ``studies`` (named studies) sections of params.yaml.

A study's cells are every combination of its ``variants`` (named bundles of param values, one axis) and
its ``axes`` (param path -> list of values), each run for every replicate seed. Param paths are plain
dotted strings (``sampling.guidance_scale``): they are checked against the params file when a study is
run (:func:`check_param_paths`), not when this module is imported, so a study may name a param that
another branch is still adding. Endpoints name cells by axis path (and ``variant``) and are checked
against the study's own axes when the section is read.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biasloop.core.config import ConfigError, from_dict, read_params

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
VARIANT = "variant"  # the key naming a study's variant in an endpoint's `at` / `minus`
GENERATION = "generation"  # `slope_vs: generation`: the slope across generations
SECONDARY_KINDS = ("levels", "slopes", "contrasts")
_MISSING = object()

# Metric name -> dotted key path(s) in metrics/summary.json ({gen}: generation; "|": fallbacks), used when
# params.yaml's study.metrics does not say: the decomposition's keys first, the older headline keys after.
DEFAULT_METRICS = {
    "gap": "gen{gen}.gap | gen{gen}.excess_abs",
    "shift": "gen{gen}.shift | gen{gen}.shift_to_majority",
    "data": "gen{gen}.data",
    "generator": "gen{gen}.generator",
    "instrument": "gen{gen}.instrument",
    "generator_accuracy": "gen{gen}.generator_occupation_accuracy",
    "recall_at_10": "gen{gen}.recall_at_10",
}


@dataclass(frozen=True)
class EndpointConfig:
    """One pre-declared primary endpoint (``studies.<name>.endpoints.<endpoint>``).

    The endpoint is a level (no ``slope_vs``, no ``minus``: the metric in the cell ``at``), a slope
    (``slope_vs``: an axis path or ``generation``, over the cells ``at`` fixes) or a contrast (``minus``:
    the cell ``at`` minus the cell ``at`` updated by ``minus``, paired by seed).

    Attributes:
        metric: a metric name of the study (``studies.<name>.metrics``).
        generation: the generation read (ignored by ``slope_vs: generation``).
        slope_vs: axis path or ``generation``; None: a level or a contrast.
        at: axis path (or ``variant``) -> value: fixes every axis the endpoint does not vary.
        minus: for a contrast, the axis values that differ in the subtracted cell.
        margin: equivalence margin in the estimate's unit (a fraction; a slope: per unit of the axis);
            None: a non-significant result is ``not resolved``.
    """

    metric: str
    generation: int = 0
    slope_vs: str | None = None
    at: dict[str, Any] = field(default_factory=dict)
    minus: dict[str, Any] | None = None
    margin: float | None = None


@dataclass(frozen=True)
class StudySpec:
    """One named study (``studies.<name>``; see the comments in params.yaml).

    Attributes:
        generations: generations every cell runs (0 .. generations-1).
        axes: param path -> values swept; the cells are every combination (first axis outermost).
        variants: variant name -> {param path: value}; one more axis, before the others.
        seeds: replicate seeds of every cell.
        primary_seeds: more seeds for the cells a primary endpoint reads.
        metrics: metric names aggregated (keys of ``study.metrics``).
        margins: metric name -> equivalence margin of its secondary intervals.
        endpoints: the pre-declared primary endpoints.
        secondary: which secondary intervals to compute: ``levels`` (each cell), ``slopes`` (against
            each numeric axis and generation), ``contrasts`` (each variant or non-numeric value vs. the
            first); each one Holm-adjusted in one family.
    """

    generations: int = 1
    axes: dict[str, list[Any]] = field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0, 1, 2)
    primary_seeds: tuple[int, ...] = ()
    metrics: tuple[str, ...] = ("gap",)
    margins: dict[str, float] = field(default_factory=dict)
    endpoints: dict[str, EndpointConfig] = field(default_factory=dict)
    secondary: tuple[str, ...] = SECONDARY_KINDS


EXECUTORS = ("dvc-queue", "ray")


@dataclass(frozen=True)
class RaySettings:
    """``study.ray``: the Ray executor (docs/cluster.md): each cell a Ray task on a cluster's node.

    Attributes:
        address: the cluster ``ray.init`` joins (``ray://head:10001``, ``auto``: the cluster this node
            belongs to); None: a local Ray instance on this machine (loopback only).
        retries: times a failed or killed cell is tried again before it is reported failed.
        cpus: CPUs Ray reserves for each cell (logical: what the scheduler counts).
        gpus: GPUs Ray reserves for each cell (0: none; fractions share a GPU).
        git_remote: Git remote (a name of this repository's remotes, or a URL or path) the cells clone the
            baseline commit from, push their experiments to, and ``study collect`` pulls them from.
        dvc_remote: DVC remote (a name in the committed .dvc/config) the cells pull the baseline's
            outputs from and push their own to; None: the default remote.
        scratch: folder on each node the cells clone into; None: the node's temporary folder.
    """

    address: str | None = None
    retries: int = 2
    cpus: float = 1.0
    gpus: float = 0.0
    git_remote: str = "origin"
    dvc_remote: str | None = None
    scratch: str | None = None


@dataclass(frozen=True)
class StudySettings:
    """``study``: what every study shares.

    Attributes:
        default: the study run and collected without ``--name``.
        jobs: DVC queue workers (``dvc queue start -j``).
        poll_seconds: seconds between two looks at the queue while waiting.
        alpha: two-sided level of every test and interval (familywise for the Holm family).
        seed_params: params a replicate seed sets in every cell.
        metrics: metric name -> dotted key path(s) in metrics/summary.json, ``{gen}`` the generation,
            alternatives separated by ``|`` (the first one every cell reports is read).
        executor: where cells run: ``dvc-queue`` (this machine's ``dvc queue`` workers) or ``ray``.
        ray: the Ray executor's settings.
    """

    default: str = "default"
    jobs: int = 2
    poll_seconds: float = 30.0
    alpha: float = 0.05
    seed_params: tuple[str, ...] = ("base.seed", "world.seed")
    metrics: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_METRICS))
    executor: str = "dvc-queue"
    ray: RaySettings = field(default_factory=RaySettings)


@dataclass(frozen=True)
class StudyConfig:
    """A named study with the shared settings, as the driver and the aggregation use it."""

    name: str
    spec: StudySpec
    settings: StudySettings = field(default_factory=StudySettings)

    @property
    def prefix(self) -> str:
        """The experiment-name prefix shared by the study's cells."""
        return f"study-{self.name}-"

    @property
    def generations(self) -> int:
        return self.spec.generations

    @property
    def seed_params(self) -> tuple[str, ...]:
        return self.settings.seed_params

    @property
    def alpha(self) -> float:
        return self.settings.alpha

    @property
    def jobs(self) -> int:
        return self.settings.jobs

    @property
    def poll_seconds(self) -> float:
        return self.settings.poll_seconds

    def metric_paths(self, metric: str) -> list[str]:
        """The dotted key templates of ``metric`` in preference order (``{gen}``: the generation)."""
        return [p.strip() for p in self.settings.metrics[metric].split("|") if p.strip()]

    def axis_names(self) -> list[str]:
        """The cell coordinates: ``variant`` (when the study has variants), then the axis paths."""
        return ([VARIANT] if self.spec.variants else []) + list(self.spec.axes)

    def axis_values(self, axis: str) -> list[Any]:
        return list(self.spec.variants) if axis == VARIANT else list(self.spec.axes[axis])


def same_value(a: Any, b: Any) -> bool:
    """Param values compared as DVC writes them back: numbers by value (0 == 0.0), others exactly."""
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    return a == b and type(a) is type(b)


def _validate(config: StudyConfig) -> None:
    name, spec, settings = config.name, config.spec, config.settings
    where = f"studies.{name}"
    if not NAME_PATTERN.match(name):
        raise ConfigError(f"{where}: a study name is letters, digits, '-' and '_' only (an experiment name)")
    if spec.generations < 1:
        raise ConfigError(f"{where}.generations: at least 1 needed, found {spec.generations}")
    if not spec.axes and not spec.variants:
        raise ConfigError(f"{where}: no axes and no variants: a study needs at least one cell setting")
    for path, values in spec.axes.items():
        if not values or any(isinstance(v, (dict, list, tuple)) or v is None for v in values):
            raise ConfigError(f"{where}.axes.{path}: a non-empty list of scalar values needed, found {list(values)}")
        if any(same_value(a, b) for i, a in enumerate(values) for b in values[i + 1 :]):
            raise ConfigError(f"{where}.axes.{path}: values must be distinct, found {list(values)}")
    for variant, setting in spec.variants.items():
        if not NAME_PATTERN.match(variant) or not setting:
            raise ConfigError(
                f"{where}.variants.{variant}: a name of letters, digits, '-', '_' and a non-empty "
                "mapping of param path -> value needed"
            )
        if overlap := sorted(set(setting) & set(spec.axes)):
            raise ConfigError(f"{where}.variants.{variant}: {overlap[0]} is also an axis")
    if not spec.seeds or len({*spec.seeds, *spec.primary_seeds}) != len(spec.seeds) + len(spec.primary_seeds):
        raise ConfigError(
            f"{where}.seeds, primary_seeds: distinct integers needed, found {list(spec.seeds)}, "
            f"{list(spec.primary_seeds)}"
        )
    if not settings.seed_params:
        raise ConfigError("study.seed_params: at least one param (base.seed) must carry the seed")
    if settings.jobs < 1 or settings.poll_seconds <= 0 or not 0 < settings.alpha < 1:
        raise ConfigError("study.jobs >= 1, study.poll_seconds > 0 and 0 < study.alpha < 1 needed")
    if settings.executor not in EXECUTORS:
        raise ConfigError(f"study.executor: one of {', '.join(EXECUTORS)} needed, found {settings.executor!r}")
    if settings.ray.retries < 0 or settings.ray.cpus < 0 or settings.ray.gpus < 0:
        raise ConfigError("study.ray: retries, cpus and gpus must be >= 0")
    for metric in list(spec.metrics) + list(spec.margins):
        if metric not in settings.metrics:
            raise ConfigError(
                f"{where}: metric {metric!r} is not in study.metrics (known: {', '.join(settings.metrics)})"
            )
    if unknown := sorted(set(spec.secondary) - set(SECONDARY_KINDS)):
        raise ConfigError(f"{where}.secondary: unknown kind {unknown[0]!r} (known: {', '.join(SECONDARY_KINDS)})")
    for endpoint_name, endpoint in spec.endpoints.items():
        _validate_endpoint(config, f"{where}.endpoints.{endpoint_name}", endpoint)


def _validate_endpoint(config: StudyConfig, where: str, endpoint: EndpointConfig) -> None:
    spec = config.spec
    if endpoint.metric not in spec.metrics:
        raise ConfigError(f"{where}.metric: {endpoint.metric!r} is not one of the study's metrics {list(spec.metrics)}")
    if not 0 <= endpoint.generation < spec.generations:
        raise ConfigError(
            f"{where}.generation: {endpoint.generation} is not a generation of the study (0..{spec.generations - 1})"
        )
    if endpoint.slope_vs is not None and endpoint.minus is not None:
        raise ConfigError(f"{where}: slope_vs and minus exclude each other (a slope or a contrast)")
    axes = config.axis_names()
    varied = set()
    if endpoint.slope_vs is not None:
        if endpoint.slope_vs == GENERATION:
            if spec.generations < 2:
                raise ConfigError(f"{where}.slope_vs: generation needs a study of at least 2 generations")
        elif endpoint.slope_vs not in spec.axes:
            raise ConfigError(
                f"{where}.slope_vs: {endpoint.slope_vs!r} is not an axis of the study "
                f"(axes: {', '.join(spec.axes) or 'none'}; or 'generation')"
            )
        elif any(not isinstance(v, (int, float)) or isinstance(v, bool) for v in spec.axes[endpoint.slope_vs]):
            raise ConfigError(f"{where}.slope_vs: {endpoint.slope_vs} has non-numeric values")
        else:
            varied.add(endpoint.slope_vs)
    for key, mapping in (("at", endpoint.at), ("minus", endpoint.minus or {})):
        for axis, value in mapping.items():
            if axis not in axes:
                raise ConfigError(f"{where}.{key}: {axis!r} is not an axis of the study (axes: {', '.join(axes)})")
            if not any(same_value(value, v) for v in config.axis_values(axis)):
                raise ConfigError(
                    f"{where}.{key}.{axis}: {value!r} is not one of its values {config.axis_values(axis)}"
                )
    if endpoint.minus is not None and not endpoint.minus:
        raise ConfigError(f"{where}.minus: name the axis values of the subtracted cell")
    unfixed = [a for a in axes if a not in varied and a not in endpoint.at and len(config.axis_values(a)) > 1]
    if unfixed:
        raise ConfigError(f"{where}.at: fix {', '.join(unfixed)} (an endpoint reads one cell, or one line of cells)")


def load_study_config(params_path: str | Path | dict = "params.yaml", name: str | None = None) -> StudyConfig:
    """The study ``name`` (None: ``study.default``) from a params file (or its parsed mapping).

    Raises:
        ConfigError: naming the unknown study, or the first unknown, missing or mistyped key.
    """
    params = params_path if isinstance(params_path, dict) else read_params(params_path)
    settings = from_dict(StudySettings, params.get("study"), "study")
    studies = params.get("studies") or {}
    if not isinstance(studies, dict):
        raise ConfigError(f"studies: expected a mapping of study name -> study, found {studies!r}")
    chosen = settings.default if name is None else name
    if chosen not in studies:
        raise ConfigError(f"studies.{chosen}: no such study (defined: {', '.join(studies) or 'none'})")
    spec = from_dict(StudySpec, studies[chosen], f"studies.{chosen}")
    config = StudyConfig(name=chosen, spec=spec, settings=settings)
    _validate(config)
    return config


def study_names(params: dict[str, Any]) -> list[str]:
    """The names of the studies defined in params."""
    return list((params.get("studies") or {}).keys())


def lookup(params: dict[str, Any], path: str, default: Any = None) -> Any:
    """``params["base"]["seed"]`` for ``path = "base.seed"``; ``default`` when a part is missing."""
    value: Any = params
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return default
        value = value[part]
    return value


def _leaf_paths(params: dict[str, Any], prefix: str = "") -> list[str]:
    paths = []
    for key, value in params.items():
        dotted = f"{prefix}{key}"
        paths += _leaf_paths(value, f"{dotted}.") if isinstance(value, dict) and value else [dotted]
    return paths


def check_param_paths(config: StudyConfig, params: dict[str, Any]) -> None:
    """Check that every param path the study sets exists in ``params`` (a scalar, not a section).

    Raises:
        ConfigError: naming the study key and the unknown path, with the closest existing paths.
    """
    leaves = [p for p in _leaf_paths({k: v for k, v in params.items() if k not in ("study", "studies")})]
    named = [("study.seed_params", p) for p in config.seed_params]
    named += [(f"studies.{config.name}.axes", p) for p in config.spec.axes]
    named += [(f"studies.{config.name}.variants.{v}", p) for v, s in config.spec.variants.items() for p in s]
    for where, path in named:
        value = lookup(params, path, _MISSING)
        if value is _MISSING or isinstance(value, dict):
            close = difflib.get_close_matches(path, leaves, n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            what = "a section, not a param" if isinstance(value, dict) else "not in the params file"
            raise ConfigError(f"{where}: unknown param path {path!r} ({what}){hint}")
