"""DnS retrieval: batched exact similarity kernels, packed binary codes, coarse search, re-ranking."""
from dns_jax.retrieval.fine import FineScorer, ScorerOptions, scorer_for
