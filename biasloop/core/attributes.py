"""Attributes as params: what the instrument labels, class by class (``params.yaml``'s ``attributes:``).

An attribute is a set of K >= 2 classes with, per class, the instrument's zero-shot prompts (each
class's embedding is the normalised mean of its prompts' embeddings), the caption indicator words
(whole words, case-insensitive, as ``biasloop/data/indicators.py`` matches them), and the abstain
rule: label an image with its most probable class when that class's probability exceeds
``abstain.min_top_probability``, else ``abstain``.

The section lists the attributes measured *beside* perceived gender. Gender (``female``, ``male``) is the
default attribute, always measured, by the binary path, and its settings have one home each: prompts
``instrument.gender_templates`` filled with woman / man, words :data:`biasloop.data.indicators.FEMALE_TERMS`
/ ``MALE_TERMS``, abstain threshold ``label.abstain_threshold`` (``t``).
:func:`biasloop.models.instrument.kclass.gender_attribute` gives it as an :class:`AttributeSpec` with
``min_top_probability = 1 - t``, so with K = 2 the K-class rule is
:func:`biasloop.models.instrument.rule.label_from_p`'s (``p_female > 1 - t``, ``p_male > 1 - t``).

The section lives in ``core`` because the instrument (``models``), the caption indicators (``data``)
and the K-class metrics all read it.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any

from biasloop.core.config import ConfigError, from_dict
from biasloop.core.labels import LABELS

ABSTAIN = LABELS[-1]  # the label of an image no class is confident enough for (the binary path's too)
SECTION = "attributes"
BINARY_ATTRIBUTE = "gender"  # perceived gender: always measured, by the binary path (p_female, label)


@dataclasses.dataclass(frozen=True)
class AbstainRule:
    """``attributes.<name>.abstain``: when the instrument gives no label."""

    min_top_probability: float  # keep the most probable class when its probability exceeds this; in (1/K, 1)


@dataclasses.dataclass(frozen=True)
class AttributeSpec:
    """``attributes.<name>``: one attribute's classes, prompts, caption indicator words and abstain rule."""

    classes: tuple[str, ...]  # K >= 2 class names, in the order of every (n, K) probability matrix
    prompts: dict[str, tuple[str, ...]]  # class -> zero-shot prompts (at least one per class); read-only once loaded
    abstain: AbstainRule
    # class -> caption indicator words (a class may have none); no word belongs to two classes
    indicators: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=lambda: types.MappingProxyType({}))

    @property
    def k(self) -> int:
        """The number of classes K."""
        return len(self.classes)

    def prompts_per_class(self) -> list[list[str]]:
        """The prompts of each class, in class order (what the instrument's class embeddings are built from)."""
        return [list(self.prompts[c]) for c in self.classes]

    def indicator_words(self, cls: str) -> tuple[str, ...]:
        """The caption indicator words of class ``cls`` (empty when it has none)."""
        if cls not in self.classes:
            raise KeyError(f"{cls!r} is not a class of this attribute (classes: {list(self.classes)})")
        return tuple(self.indicators.get(cls, ()))


def _check_classes(spec: AttributeSpec, where: str) -> None:
    if spec.k < 2:
        raise ConfigError(f"{where}.classes: an attribute needs at least 2 classes, found {list(spec.classes)}")
    seen: dict[str, str] = {}
    for name in spec.classes:
        if not name.strip():
            raise ConfigError(f"{where}.classes: class names must be non-empty, found {name!r}")
        if name.casefold() == ABSTAIN:
            raise ConfigError(f"{where}.classes: {name!r} is the label of abstentions, not a class name")
        key = name.casefold()
        if key in seen:
            raise ConfigError(f"{where}.classes: {seen[key]!r} and {name!r} name one class (duplicate class names)")
        seen[key] = name


def _check_per_class(mapping: Mapping[str, tuple[str, ...]], classes: tuple[str, ...], where: str) -> None:
    unknown = [c for c in mapping if c not in classes]
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: not one of the classes {list(classes)}")


def _check_prompts(spec: AttributeSpec, where: str) -> None:
    _check_per_class(spec.prompts, spec.classes, f"{where}.prompts")
    for name in spec.classes:
        prompts = spec.prompts.get(name)
        if not prompts:
            raise ConfigError(f"{where}.prompts.{name}: no prompts for class {name!r} (every class needs at least one)")
        if any(not p.strip() for p in prompts):
            raise ConfigError(f"{where}.prompts.{name}: prompts must be non-empty strings, found {list(prompts)}")


def _check_indicators(spec: AttributeSpec, where: str) -> None:
    _check_per_class(spec.indicators, spec.classes, f"{where}.indicators")
    owner: dict[str, str] = {}
    for name, words in spec.indicators.items():
        for word in words:
            key = word.strip().casefold()  # matching is case-insensitive: "Dark-skinned" is "dark-skinned"
            if not key:
                raise ConfigError(f"{where}.indicators.{name}: indicator words must be non-empty, found {word!r}")
            if key in owner:
                other = owner[key]
                detail = "twice" if other == name else f"for both {other!r} and {name!r}"
                raise ConfigError(f"{where}.indicators: the word {word!r} is listed {detail}")
            owner[key] = name


def _check_abstain(spec: AttributeSpec, where: str) -> None:
    threshold = spec.abstain.min_top_probability
    if not 1.0 / spec.k < threshold < 1.0:
        raise ConfigError(
            f"{where}.abstain.min_top_probability: expected a probability in (1/K, 1) = (1/{spec.k}, 1) "
            f"for {spec.k} classes, found {threshold}"
        )


def attribute_from_dict(name: str, data: Any) -> AttributeSpec:
    """Build and check one attribute (``attributes.<name>``); errors name the attribute and field.

    Raises:
        ConfigError: unknown or mistyped keys, fewer than 2 classes, duplicate class names, a class
            without prompts, prompts or words for an unknown class, an indicator word listed for two
            classes, a ``min_top_probability`` outside (1/K, 1).
    """
    where = f"{SECTION}.{name}"
    spec = from_dict(AttributeSpec, data, where)
    _check_classes(spec, where)
    _check_prompts(spec, where)
    _check_indicators(spec, where)
    _check_abstain(spec, where)
    return spec


def load_attributes(params: Mapping[str, Any]) -> Mapping[str, AttributeSpec]:
    """Every attribute of ``params["attributes"]``, checked, in file order (read-only mapping name -> spec):
    the attributes measured beside perceived gender. A missing, null or empty section: none.

    Raises:
        ConfigError: a section that is not a mapping, an attribute named ``gender`` (the binary path's,
            configured by ``instrument.gender_templates`` and ``label.abstain_threshold``), or an invalid
            attribute (:func:`attribute_from_dict`).
    """
    section = params.get(SECTION) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{SECTION}: expected a mapping of attribute name -> spec, found {section!r}")
    for name in section:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{SECTION}: attribute names must be non-empty strings, found {name!r}")
        if name == BINARY_ATTRIBUTE:
            raise ConfigError(
                f"{SECTION}.{name}: perceived gender is measured by the binary path; set its prompts in "
                "instrument.gender_templates and its abstain rule in label.abstain_threshold"
            )
    return types.MappingProxyType({name: attribute_from_dict(name, data) for name, data in section.items()})
