"""The generational loop: what each generation is asked to draw, how its dataset mixes real and
generated images, and how its models are trained."""
