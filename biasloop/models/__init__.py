"""Models: text-to-image generators, the perceived-gender instrument, and the downstream models
retrained on each generation's dataset."""
