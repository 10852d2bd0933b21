"""params.yaml's ``attributes:`` (the attributes beside perceived gender): gender as a spec is today's
binary path, from its own params, and bad specs fail naming the attribute and the field."""

from __future__ import annotations

import copy
import difflib
from pathlib import Path

import pytest

from biasloop.core.attributes import ABSTAIN, attribute_from_dict, load_attributes
from biasloop.core.config import ConfigError, load_section
from biasloop.core.labels import LABELS
from biasloop.data.indicators import FEMALE_TERMS, MALE_TERMS, TONE_TERMS
from biasloop.models.instrument import InstrumentConfig, LabelConfig, gender_prompts
from biasloop.models.instrument.gender_spec import gender_attribute
from tests.conftest import committed_params, committed_text

TONE = {
    "classes": ["light", "medium", "dark"],
    "prompts": {"light": ["a light one"], "medium": ["a medium one"], "dark": ["a dark one"]},
    "indicators": {"light": ["light-skinned"], "dark": ["dark-skinned"]},
    "abstain": {"min_top_probability": 0.8},
}


def test_gender_reproduces_todays_prompts_words_and_threshold() -> None:
    params = committed_params()
    instrument, labelling = (
        load_section(InstrumentConfig, "instrument", params),
        load_section(LabelConfig, "label", params),
    )
    gender = gender_attribute(instrument, labelling)
    assert gender.classes == ("female", "male") == LABELS[:2]
    today = gender_prompts(instrument.gender_templates)
    assert gender.prompts_per_class() == [today["female"], today["male"]]
    assert gender.prompts_per_class()[0] == ["a photo of a woman", "a portrait of a woman", "a woman at work"]
    assert gender.indicator_words("female") == FEMALE_TERMS and gender.indicator_words("male") == MALE_TERMS
    assert gender.abstain.min_top_probability == 1 - labelling.abstain_threshold  # exactly: 0.9 == 1 - 0.1
    assert ABSTAIN == LABELS[2] == "abstain"
    # the section holds the attributes beside gender; gender there is refused, naming where it lives
    assert list(load_attributes(params)) == ["tone"]
    with pytest.raises(ConfigError, match="attributes.gender: .*instrument.gender_templates"):
        load_attributes({"attributes": {"gender": TONE}})


def test_tone_has_three_classes_with_prompts_and_words() -> None:
    tone = load_attributes(committed_params())["tone"]
    assert tone.classes == ("light", "medium", "dark") and tone.k == 3
    assert tone.prompts["dark"][0] == "a dark-skinned woman"
    assert "medium-skinned" in tone.indicator_words("medium")
    # one word list: the world's captions and the caption tagger use TONE_TERMS, the params repeat it
    assert {c: tone.indicator_words(c) for c in tone.classes} == TONE_TERMS
    assert 1 / 3 < tone.abstain.min_top_probability < 1
    with pytest.raises(KeyError, match="purple"):
        tone.indicator_words("purple")


def _with(**changes: object) -> dict:
    spec = copy.deepcopy(TONE)
    spec.update(changes)
    return spec


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (_with(classes=["light"]), r"attributes\.tone\.classes: an attribute needs at least 2 classes"),
        (_with(classes=["light", "medium", "Light"]), r"attributes\.tone\.classes: 'light' and 'Light' name one class"),
        (_with(classes=["light", "abstain"]), r"attributes\.tone\.classes: 'abstain' is the label of abstentions"),
        (
            _with(prompts={"light": ["a"], "medium": ["b"]}),
            r"attributes\.tone\.prompts\.dark: no prompts for class 'dark'",
        ),
        (
            _with(prompts={"light": ["a"], "medium": ["b"], "dark": []}),
            r"attributes\.tone\.prompts\.dark: no prompts",
        ),
        (
            _with(prompts={**TONE["prompts"], "purple": ["c"]}),
            r"attributes\.tone\.prompts\.purple: not one of the classes",
        ),
        (
            _with(abstain={"min_top_probability": 1 / 3}),
            r"attributes\.tone\.abstain\.min_top_probability: .*\(1/3, 1\)",
        ),
        (_with(abstain={"min_top_probability": 1.0}), r"attributes\.tone\.abstain\.min_top_probability: .*found 1\.0"),
        (
            _with(abstain={"min_top_probability": "high"}),
            r"attributes\.tone\.abstain\.min_top_probability: expected a number",
        ),
        (
            _with(indicators={"light": ["tan"], "medium": ["Tan"]}),
            r"attributes\.tone\.indicators: the word 'Tan' is listed for both 'light' and 'medium'",
        ),
        (
            _with(indicators={"dark": ["deep", "deep"]}),
            r"attributes\.tone\.indicators: the word 'deep' is listed twice",
        ),
        (_with(indicators={"grey": ["x"]}), r"attributes\.tone\.indicators\.grey: not one of the classes"),
        (_with(colour="red"), r"attributes\.tone\.colour: unknown key"),
        ({k: v for k, v in TONE.items() if k != "abstain"}, r"attributes\.tone\.abstain: required key is missing"),
    ],
)
def test_a_bad_spec_names_the_attribute_and_field(spec: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        attribute_from_dict("tone", spec)


def test_a_valid_spec_loads_and_a_class_may_have_no_words() -> None:
    spec = attribute_from_dict("tone", TONE)
    assert spec.indicator_words("medium") == () and spec.abstain.min_top_probability == 0.8
    assert spec.prompts_per_class() == [["a light one"], ["a medium one"], ["a dark one"]]


def test_no_section_measures_gender_alone_and_a_bad_one_is_named() -> None:
    assert dict(load_attributes({})) == {} and dict(load_attributes({"attributes": None})) == {}
    with pytest.raises(ConfigError, match="attributes: expected a mapping"):
        load_attributes({"attributes": ["tone"]})
    assert list(load_attributes({"attributes": {"tone": TONE}})) == ["tone"]


def test_dvc_exp_run_sets_an_attribute_key_in_one_line(tmp_path: Path) -> None:
    apply_overrides = pytest.importorskip("dvc.utils.hydra").apply_overrides
    original = committed_text("params.yaml")
    path = tmp_path / "params.yaml"
    path.write_text(original)
    apply_overrides(str(path), ["attributes.tone.abstain.min_top_probability=0.8"])
    changed = [
        line
        for line in difflib.unified_diff(original.splitlines(), path.read_text().splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("---", "+++"))
    ]
    assert [line.split("#")[0].strip() for line in changed] == [
        "-      min_top_probability: 0.5",
        "+      min_top_probability: 0.8",
    ]
