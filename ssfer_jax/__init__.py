"""ssfer_jax: semi-supervised facial expression recognition in pure JAX."""

__version__ = "0.1.0"
