"""jaxae: convolutional autoencoders in JAX/Flax that learn and show small latent spaces."""

__version__ = "0.1.0"
