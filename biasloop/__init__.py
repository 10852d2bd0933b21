"""biasloop: measure whether generative models amplify social bias, in their images and across generations."""
