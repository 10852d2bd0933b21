"""Perceived gender as an attribute spec (:class:`biasloop.core.attributes.AttributeSpec`) built from the binary
path's own params, for comparing the K-class code with the binary one (K = 2). Not imported by the package:
no stage needs it."""

from __future__ import annotations

import types

from biasloop.core.attributes import AbstainRule, AttributeSpec
from biasloop.data.indicators import FEMALE_TERMS, MALE_TERMS
from biasloop.models.instrument.zero_shot import InstrumentConfig, LabelConfig, gender_prompts


def gender_attribute(instrument: InstrumentConfig, labelling: LabelConfig) -> AttributeSpec:
    """Perceived gender as a K = 2 attribute, from the binary path's own settings: prompts
    ``instrument.gender_templates`` filled with woman / man, words ``FEMALE_TERMS`` / ``MALE_TERMS``,
    ``min_top_probability = 1 - label.abstain_threshold``. The K-class code given this spec labels as the
    binary path does (``tests/test_kclass_instrument.py``)."""
    prompts = gender_prompts(tuple(instrument.gender_templates))
    return AttributeSpec(
        classes=("female", "male"),
        prompts=types.MappingProxyType({c: tuple(prompts[c]) for c in ("female", "male")}),
        abstain=AbstainRule(min_top_probability=1 - labelling.abstain_threshold),
        indicators=types.MappingProxyType({"female": tuple(FEMALE_TERMS), "male": tuple(MALE_TERMS)}),
    )
