"""The labels a perceived-gender labeller gives an image, shared by the models that label and the metrics
that count labels (so counting does not have to import the labelling models)."""

LABELS = ("female", "male", "abstain")  # what a labeller says of an image
