"""biasloop: measure whether generative models amplify social bias, in their images and across generations."""

__version__ = "0.1.0"
