"""Typed, frozen stage configs read from ``params.yaml``.

Every stage declares the params sections it reads in ``dvc.yaml`` and loads exactly those sections
into frozen dataclasses here, so that an unknown key or a wrong type fails before any work is done,
with an error that names the key (``world.markedness.counter``), what was expected and what was found.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

log = logging.getLogger("params")
T = TypeVar("T")


class ConfigError(ValueError):
    """A params value that is missing, unknown or of the wrong type; the message names the key."""


def read_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read a params file into a dict.

    Args:
        path: the YAML file (``params.yaml`` at the repository root by default).

    Returns:
        The top-level mapping.

    Raises:
        ConfigError: when the file is missing, not YAML, or not a mapping.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, found {type(data).__name__}")
    return data


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert containers; raise naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in args:
            try:
                return _convert(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        expected = " or ".join(_type_name(a) for a in args)
        raise ConfigError(f"{key}: expected {expected}, found {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, found {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}: expected one of {list(args)}, found {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, found {value!r}")
        item_type = args[0] if args else Any
        return tuple(_convert(v, item_type, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, found {value!r}")
        key_type, value_type = args if args else (Any, Any)
        return types.MappingProxyType(
            {_convert(k, key_type, f"{key}.{k}"): _convert(v, value_type, f"{key}.{k}") for k, v in value.items()}
        )
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, found {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, found {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            # PyYAML reads 3e-3 (no dot) as a string: accept what plainly spells a number.
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{key}: expected a number, found {value!r}")
        if not math.isfinite(number):  # .nan / .inf: no param of this project means anything with them
            raise ConfigError(f"{key}: expected a finite number, found {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, found {value!r}")
    raise TypeError(f"unsupported annotation {tp!r} for {key}")


def from_dict(cls: type[T], data: Any, where: str) -> T:
    """Build the frozen dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types.

    Args:
        cls: a dataclass type; fields without defaults are required keys.
        data: the mapping read from params.yaml.
        where: the dotted name of this section, used in error messages (``"world"``).

    Returns:
        An instance of ``cls`` (lists become tuples, mappings read-only).

    Raises:
        ConfigError: naming the first unknown, missing or mistyped key.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, found {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (known keys: {', '.join(sorted(fields))})")
    values = {}
    for name, field in fields.items():
        key = f"{where}.{name}"
        if name in data:
            values[name] = _convert(data[name], hints[name], key)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}: required key is missing")
    config = cls(**values)
    _warn_other_backend_keys(config, fields, where)
    return config


def _warn_other_backend_keys(config: Any, fields: dict[str, dataclasses.Field], where: str) -> None:
    """Warn, naming the key, when a key that only another backend reads differs from its default.

    A config class lists its backend-specific keys in a ``BACKEND_KEYS`` class attribute
    (``{backend: (key, ...)}``); keys listed for no backend are read by all of them.
    """
    backend_keys = getattr(type(config), "BACKEND_KEYS", None)
    if not backend_keys:
        return
    chosen = config.backend
    for backend, keys in backend_keys.items():
        if backend == chosen:
            continue
        for name in keys:
            field = fields[name]
            default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
            if getattr(config, name) != default:
                log.warning(
                    "%s.%s is set but only the %s backend reads it (%s.backend is %s): ignored",
                    where,
                    name,
                    backend,
                    where,
                    chosen,
                )


def _check_occupations(occupations: Any) -> None:
    if not isinstance(occupations, list):
        raise ConfigError(
            f"occupations: expected a list of occupation names, found {type(occupations).__name__} {occupations!r}"
        )
    seen: dict[str, str] = {}
    for name in occupations:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"occupations: expected non-empty names, found {name!r}")
        if any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in name):
            raise ConfigError(f"occupations: {name!r} contains a control character")
        key = " ".join(name.casefold().split())
        if key in seen:
            raise ConfigError(
                f"occupations: {seen[key]!r} and {name!r} name one occupation (case and spacing are ignored)"
            )
        seen[key] = name


def dataset_folder(generation: int) -> str:
    """The folder of generation ``generation``'s training dataset: the corpus for 0, else mix@N's output."""
    return "artifacts/corpus" if generation == 0 else f"artifacts/gen{generation}/mix"


def check_params(params: dict[str, Any]) -> None:
    """Checks that span sections; raises ConfigError naming the keys that disagree.

    - The image size in effect for the corpus (``world.image_size`` for the glyph world, else
      ``corpus.image_size``) equals ``generator.image_size``; for the glyph world ``corpus.image_size``
      must equal ``world.image_size`` too (it would be silently ignored otherwise).
    - ``generations`` is ``[0, 1, ..., G-1]`` and ``rounds`` has one ``"N": {gen: N, prev: N-1, previous:
      F}`` item per later generation (F: dataset N-1's folder, ``artifacts/corpus`` or ``artifacts/gen{N-1}/mix``); ``datasets``, when present, has one ``"N": {gen: N, dataset, folder}`` item per
      generation (``biasloop generations G`` writes all three).
    - ``occupations`` is a list of names (not one string, which would read as its letters), none empty
      or holding a control character, none twice (case and spacing ignored: "Nurse" and "nurse" are one).
    """
    if "occupations" in params and params["occupations"] is not None:
        _check_occupations(params["occupations"])
    world, corpus, generator = (params.get(s) or {} for s in ("world", "corpus", "generator"))
    if isinstance(world, dict) and isinstance(corpus, dict) and isinstance(generator, dict):
        source = corpus.get("source", "world")
        sizes = {
            "world.image_size": world.get("image_size"),
            "corpus.image_size": corpus.get("image_size"),
            "generator.image_size": generator.get("image_size"),
        }
        effective = "world.image_size" if source == "world" else "corpus.image_size"
        pairs = [(effective, "generator.image_size")]
        if source == "world":
            pairs.append(("world.image_size", "corpus.image_size"))
        for first, second in pairs:
            if sizes[first] is not None and sizes[second] is not None and sizes[first] != sizes[second]:
                raise ConfigError(
                    f"{second} is {sizes[second]} but {first} is {sizes[first]}: image sizes must agree "
                    f"(corpus.source is {source})"
                )
    if "generations" in params or "rounds" in params:
        generations, rounds = params.get("generations"), params.get("rounds")
        count = len(generations) if isinstance(generations, list) else 0
        if generations != list(range(count)) or count == 0:
            raise ConfigError(
                f"generations: expected [0, 1, ..., G-1], found {generations!r} (set it with `biasloop generations G`)"
            )
        expected = {str(n): {"gen": n, "prev": n - 1, "previous": dataset_folder(n - 1)} for n in range(1, count)}
        found = {str(k): v for k, v in (rounds or {}).items()} if isinstance(rounds, dict) else rounds
        if found != expected:
            raise ConfigError(
                f"rounds: expected one {{gen: N, prev: N-1, previous: <dataset N-1's folder>}} item per "
                f"generation 1..{count - 1} "
                f"to match generations, found {rounds!r} (set both with `biasloop generations {count}`)"
            )
        datasets = params.get("datasets")
        if datasets is not None:
            items = {str(k): v for k, v in datasets.items()} if isinstance(datasets, dict) else None
            if (
                items is None
                or sorted(items, key=lambda k: int(k) if k.isdigit() else -1) != [str(n) for n in range(count)]
                or any(
                    not isinstance(v, dict) or v.get("gen") != int(k) or not v.get("dataset") or not v.get("folder")
                    for k, v in items.items()
                )
            ):
                raise ConfigError(
                    f"datasets: expected one {{gen: N, dataset, folder}} item per generation 0..{count - 1} "
                    f"to match generations, found {datasets!r} (set it with `biasloop generations {count}`)"
                )


def load_section(cls: type[T], section: str, params: dict[str, Any]) -> T:
    """Load one top-level section (``params[section]``) into ``cls``; a missing section is an error."""
    if section not in params:
        raise ConfigError(f"{section}: section is missing from params.yaml")
    return from_dict(cls, params[section], section)


def to_dict(config: Any) -> Any:
    """Plain JSON/YAML-ready form of a config (for MLflow params and reports)."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (tuple, list)):
        return [to_dict(v) for v in config]
    if isinstance(config, (dict, types.MappingProxyType)):
        return {k: to_dict(v) for k, v in config.items()}
    return config


@dataclasses.dataclass(frozen=True)
class BaseConfig:
    """``base``: settings every stage shares."""

    seed: int = 0
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    log_level: str = "INFO"
    # torch CPU threads per stage: a fixed count (the same numbers at any load), or "auto" (the free CPUs
    # at stage start: faster on a busy machine, numbers may differ); see biasloop.core.runtime.resolve_cpu_threads
    cpu_threads: int | Literal["auto"] = 1


@dataclasses.dataclass(frozen=True)
class TrackingConfig:
    """``tracking``: MLflow, optional."""

    enabled: bool = True  # one MLflow run per stage execution; false: no tracking (and no MLflow import)
    uri: str | None = None  # None: sqlite:///<DVC_ROOT>/mlflow.db
    experiment: str = "biasloop"  # MLflow experiment name
    background: bool = True  # log from a detached process, so stages never import MLflow; false: in the stage
