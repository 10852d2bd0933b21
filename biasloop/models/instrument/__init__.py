"""The perceived-gender instrument: a zero-shot CLIP-style classifier, cross-fitted on the corpus.

One name: "the instrument" is what labels images, a :class:`CrossFittedInstrument` of K fold models
(:func:`train_cross_fitted`, :func:`load_cross_fitted`, :func:`measure_cross_fitted`); each fold model is
an :class:`Instrument`. Its folder's manifest keeps the file name ``labeller.json``.

- :mod:`~.zero_shot`: :class:`Instrument` (two backends, ``instrument.backend``), its configs and prompts;
- :mod:`~.training`: training the locked-text CLIP, and the corpus splits it trains and is measured on;
- :mod:`~.rule`: the labelling rule (``female``/``male``/``abstain``) and its confusion rates;
- :mod:`~.cross_fitting`: :class:`CrossFittedInstrument`, K fold models none of which labels an image it
  trained on (why, in that module's docstring);
- :mod:`~.labelling`: labelling image sets with it, and measuring it on held-out labelled images;
- :mod:`~.kclass`: any other attribute of ``params.yaml``'s ``attributes:`` (K classes, e.g. tone), scored
  from the image embeddings gender's labels come from.
"""

from biasloop.models.instrument.cross_fitting import (
    CrossFittedInstrument,
    assign_folds,
    load_cross_fitted,
    mixture_fold,
    train_cross_fitted,
)
from biasloop.models.instrument.kclass import (
    attribute_columns,
    held_out_attribute_labels,
    label_attribute,
    label_every_attribute,
)
from biasloop.models.instrument.labelling import (
    encode_cross_fitted,
    encode_units,
    label_images,
    label_units,
    measure_cross_fitted,
)
from biasloop.models.instrument.rule import confusion_rates, evaluate_instrument, label_from_p
from biasloop.models.instrument.training import (
    corpus_split,
    labelled_set,
    train_locked_text_clip,
    train_or_load_instrument,
)
from biasloop.models.instrument.zero_shot import (
    Instrument,
    InstrumentConfig,
    LabelConfig,
    build_open_clip_instrument,
    gender_prompts,
    load_instrument,
    occupation_prompts,
)

__all__ = [
    "LabelConfig",
    "CrossFittedInstrument",
    "Instrument",
    "InstrumentConfig",
    "assign_folds",
    "attribute_columns",
    "label_every_attribute",
    "build_open_clip_instrument",
    "confusion_rates",
    "corpus_split",
    "encode_cross_fitted",
    "encode_units",
    "evaluate_instrument",
    "gender_prompts",
    "held_out_attribute_labels",
    "label_attribute",
    "label_from_p",
    "label_images",
    "label_units",
    "labelled_set",
    "load_instrument",
    "load_cross_fitted",
    "measure_cross_fitted",
    "mixture_fold",
    "occupation_prompts",
    "train_cross_fitted",
    "train_locked_text_clip",
    "train_or_load_instrument",
]
