"""Experiment recipes, one `get_config(arg=None)` per file, every value written out.

Installed as the package `dns_jax.configs` (pyproject maps it here), so `dns-jax build` and
`train.py --config NAME` find them after a plain `pip install` too. Files import nothing from
`dns_jax`: a recipe is data, the library validates it.
"""
