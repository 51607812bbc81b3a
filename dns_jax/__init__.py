"""dns-jax: Distill-and-Select (DnS) video retrieval in JAX/Flax."""

__version__ = "0.1.0"
