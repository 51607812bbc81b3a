"""Validation of training configurations.

The recipes live in `configs/<network>.py` (every value written out; `default_config(network)` loads
one on a generated collection). A config is checked against its network's recipe: unknown keys and
bad values are ConfigErrors naming the key; fields it leaves out take the recipe's values. Empty
strings and -1 mean "not set", so that the command line can override them with a value of the same
type (`--config.learning_rate=1e-5`).
"""
from __future__ import annotations

import difflib
from typing import List

import ml_collections

from dns_jax.config_files import load_config
from dns_jax.models import registry
from dns_jax.training.pairs import SELECTOR_TARGETS

NETWORKS = registry.DISTILLED       # the networks a recipe of configs/ trains by distillation
STUDENTS = tuple(n for n in NETWORKS if n != "selector")


class ConfigError(ValueError):
    """A training configuration that cannot be run (unknown key, bad value)."""


def default_config(network: str) -> ml_collections.ConfigDict:
    """The recipe of `network` (configs/<network>.py) on a generated collection: the paper's
    hyperparameters, `dataset='synthetic'`, so that it runs without data. Validation fills the
    fields a partial config leaves out from it."""
    if network not in NETWORKS:
        raise ConfigError(f"unknown network {network!r}; expected one of {', '.join(NETWORKS)}")
    return load_config(network, "synthetic")


def _paths(cfg, prefix="") -> List[str]:
    out = []
    for k, v in cfg.items():
        path = f"{prefix}{k}"
        out.append(path)
        if isinstance(v, (ml_collections.ConfigDict, dict)):
            out.extend(_paths(v, path + "."))
    return out


def validate_config(config) -> ml_collections.ConfigDict:
    """Check `config` against the defaults of its network: unknown keys and wrong values are
    ConfigErrors naming the key. Returns a locked copy."""
    if "network" not in config:
        raise ConfigError("config has no 'network' (one of " + ", ".join(NETWORKS) + ")")
    network = config["network"]
    base = default_config(network)
    known = set(_paths(base))
    given = _paths(config)
    unknown = [p for p in given if p not in known and not p.startswith("model.")]
    if unknown:
        hints = []
        for p in unknown:
            close = difflib.get_close_matches(p, sorted(known), n=1)
            hints.append(f"{p!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(f"unknown config key(s) for {network}: {', '.join(hints)}")
    model_keys = set(base.model.keys())
    bad_model = [k for k in (config["model"] if "model" in config else {}).keys() if k not in model_keys]
    if bad_model:
        raise ConfigError(f"unknown model option(s) for {network}: {bad_model}; "
                          f"known: {sorted(model_keys)}")
    given_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    cfg = base  # fields the config leaves out keep their defaults
    try:
        _merge(cfg, given_dict)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad config value: {e}") from e
    _check_values(cfg)
    return cfg


def _merge(base: ml_collections.ConfigDict, given: dict) -> None:
    for k, v in given.items():
        if isinstance(v, dict) and isinstance(base.get(k), ml_collections.ConfigDict):
            _merge(base[k], v)
        else:
            base[k] = tuple(v) if isinstance(v, list) and isinstance(base.get(k), tuple) else v


def _check_values(c) -> None:
    def need(cond, msg):
        if not cond:
            raise ConfigError(msg)
    need(c.dataset in ("synthetic", "features"), f"dataset must be 'synthetic' or 'features', got {c.dataset!r}")
    need(c.dataset != "features" or c.features, "dataset='features' needs config.features (a feature file)")
    need(c.dataset != "synthetic" or c.synthetic.dims == c.model.dims,
         f"the synthetic collection is {c.synthetic.dims}-d but model.dims is {c.model.dims}; "
         "set both --config.synthetic.dims and --config.model.dims")
    need(c.batch_size > 0, f"batch_size must be positive, got {c.batch_size}")
    need(c.learning_rate > 0, f"learning_rate must be positive, got {c.learning_rate}")
    need(0 < c.trainset_percentage <= 100, f"trainset_percentage must be in (0, 100], got {c.trainset_percentage}")
    buckets = tuple(c.length_buckets)
    need(len(buckets) > 0 and all(b >= 4 for b in buckets) and list(buckets) == sorted(buckets),
         f"length_buckets must be increasing lengths >= 4, got {buckets}")
    need(c.validation.dataset in ("", "synthetic", "fivr5k", "selector"),
         f"validation.dataset must be '', 'synthetic', 'fivr5k' or 'selector', got {c.validation.dataset!r}")
    need(c.validation.dataset != "synthetic" or c.dataset == "synthetic",
         "validation.dataset='synthetic' validates on held-out synthetic families: it needs dataset='synthetic'")
    need(c.validation.dataset != "fivr5k" or c.validation.features,
         "validation.dataset='fivr5k' needs validation.features (the FIVR-5K feature file)")
    if c.network == "selector":
        need(c.validation.dataset in ("", "selector"),
             "the selector validates on its held-out split (validation.dataset='selector' or '')")
        need(c.dataset == "synthetic" or (c.selector.fine_pairs and c.selector.coarse_pairs),
             "selector training on features needs selector.fine_pairs and selector.coarse_pairs")
        need(c.selector.get("target", "gap") in SELECTOR_TARGETS,
             f"selector.target must be one of {', '.join(SELECTOR_TARGETS)}, got {c.selector.get('target')!r}")


def override(config: ml_collections.ConfigDict, **values) -> ml_collections.ConfigDict:
    """A copy of `config` with dotted-path overrides, e.g. override(c, **{'synthetic.dims': 32})."""
    c = ml_collections.ConfigDict(config.to_dict())
    for path, value in values.items():
        *parents, leaf = path.split(".")
        node = c
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c

