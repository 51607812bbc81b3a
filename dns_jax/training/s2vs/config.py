"""Validation of S2VS training configurations (configs/s2vs.py).

A config is checked against the published recipe's keys: unknown keys (with the closest known one)
and bad values are ConfigErrors naming the key; fields it leaves out take the recipe's values.
The `augmentation` section goes through dns_jax.augmentation's own validation, so an unknown
augmentation or RandAugment op is named too.
"""
from __future__ import annotations

import difflib
from typing import Any, Dict, List

import ml_collections

from dns_jax.augmentation import AugmentationConfigError, validate_augmentation_config
from dns_jax.config_files import load_config
from dns_jax.training.config import ConfigError

NETWORK = "s2vs"
MODES = ("pixels", "feature_bank")
SHORT_VIDEOS = ("error", "loop")
INDEXING = ("att", "bin", "none")
PRECISIONS = ("default", "high", "highest")
INITS = ("random", "visil_f")


def default_s2vs_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """configs/s2vs.py: the published recipe (arg None), 'local' or 'teacher'."""
    return load_config(NETWORK, arg)


def _paths(cfg, prefix: str = "") -> List[str]:
    out = []
    for k, v in cfg.items():
        out.append(prefix + k)
        if isinstance(v, (ml_collections.ConfigDict, dict)):
            out.extend(_paths(v, prefix + k + "."))
    return out


def _merge(base: ml_collections.ConfigDict, given: Dict[str, Any]) -> None:
    for k, v in given.items():
        if isinstance(v, dict) and isinstance(base.get(k), ml_collections.ConfigDict):
            _merge(base[k], v)
        else:
            base[k] = tuple(v) if isinstance(v, list) and isinstance(base.get(k), tuple) else v


def validate_s2vs_config(config) -> ml_collections.ConfigDict:
    """Check an S2VS training config; returns a complete copy (fields left out: the published
    recipe's). Raises ConfigError naming the key for unknown keys and bad values."""
    given = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    if given.get("network", NETWORK) != NETWORK:
        raise ConfigError(f"not an S2VS config: network is {given.get('network')!r}")
    base = default_s2vs_config()
    known = set(_paths(base))
    unknown = [p for p in _paths(given) if p not in known]
    if unknown:
        hints = []
        for p in unknown:
            close = difflib.get_close_matches(p, sorted(known), n=1)
            hints.append(repr(p) + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(f"unknown config key(s) for s2vs: {', '.join(hints)}")
    cfg = ml_collections.ConfigDict(base.to_dict())
    try:
        _merge(cfg, given)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad config value: {e}") from e
    try:
        augmentation = validate_augmentation_config(cfg.augmentation)
    except AugmentationConfigError as e:
        raise ConfigError(f"augmentation: {e}") from None
    cfg.augmentation = ml_collections.ConfigDict(augmentation.to_dict())
    _check_values(cfg)
    return cfg


def _check_values(c) -> None:
    def need(cond, msg):
        if not cond:
            raise ConfigError(msg)

    def positive_int(key):
        value = c[key] if "." not in key else c[key.split(".")[0]][key.split(".")[1]]
        need(isinstance(value, int) and not isinstance(value, bool) and value > 0,
             f"{key} must be a positive integer, got {value!r}")

    need(c.mode in MODES, f"mode must be one of {', '.join(MODES)}, got {c.mode!r}")
    need(c.model.indexing in INDEXING, f"model.indexing must be one of {', '.join(INDEXING)}, got {c.model.indexing!r}")
    need(c.model.precision in PRECISIONS, f"model.precision must be one of {', '.join(PRECISIONS)}, "
         f"got {c.model.precision!r}")
    need(c.extractor.precision in PRECISIONS, f"extractor.precision must be one of {', '.join(PRECISIONS)}, "
         f"got {c.extractor.precision!r}")
    positive_int("model.dims")
    need(c.extractor.dims == c.model.dims,
         f"extractor.dims ({c.extractor.dims}) must equal model.dims ({c.model.dims}): the network "
         "reads the whitened features")
    need(bool(c.extractor.backbone), "extractor.backbone is empty: give torchvision ResNet-50 weights "
         "(.pth) or 'resnet50_1by2_opennsfw'")
    positive_int("extractor.batch_frames")
    need(c.data.fps > 0, f"data.fps must be positive, got {c.data.fps}")
    need(c.data.short_videos in SHORT_VIDEOS,
         f"data.short_videos must be one of {', '.join(SHORT_VIDEOS)}, got {c.data.short_videos!r}")
    need(0 < c.data.percentage <= 100, f"data.percentage must be in (0, 100], got {c.data.percentage}")
    need(isinstance(c.data.jpeg_quality, int) and 0 <= c.data.jpeg_quality <= 100,
         f"data.jpeg_quality must be an integer in 0..100 (0: raw frames), got {c.data.jpeg_quality!r}")
    need(c.data.num_threads >= 0 and c.data.prefetch >= 1,
         f"data.num_threads must be >= 0 and data.prefetch >= 1, got {c.data.num_threads}, {c.data.prefetch}")
    a = c.augmentation
    need(a.source_frames >= a.window_size,
         f"augmentation.source_frames ({a.source_frames}) must be at least augmentation.window_size "
         f"({a.window_size}); the recipe loads 2 x window_size")
    need(a.source_size >= a.frame_size,
         f"augmentation.source_size ({a.source_size}) must be at least augmentation.frame_size ({a.frame_size}): "
         "the frames are stored at source_size and the unaugmented features are their centre frame_size crop")
    need(isinstance(c.batch_size, int) and c.batch_size >= 2,
         f"batch_size must be an integer >= 2 (each video's negatives are the other videos), got {c.batch_size!r}")
    positive_int("num_train_steps")
    positive_int("feature_bank.views")
    need(isinstance(c.feature_bank.batch_size, int) and c.feature_bank.batch_size >= 2,
         f"feature_bank.batch_size must be an integer >= 2, got {c.feature_bank.batch_size!r}")
    need(c.learning_rate > 0, f"learning_rate must be positive, got {c.learning_rate}")
    need(0 <= c.final_lr <= 1, f"final_lr is a fraction of learning_rate in [0, 1], got {c.final_lr}")
    need(0 <= c.warmup_lr_init <= 1, f"warmup_lr_init is a fraction of learning_rate in [0, 1], got {c.warmup_lr_init}")
    need(isinstance(c.warmup_steps, int) and 0 <= c.warmup_steps < c.num_train_steps,
         f"warmup_steps must be in [0, num_train_steps={c.num_train_steps}), got {c.warmup_steps!r}")
    need(c.weight_decay >= 0, f"weight_decay must be >= 0, got {c.weight_decay}")
    need(c.temperature > 0, f"temperature must be positive, got {c.temperature}")
    need(c.lambda_parameter >= 0, f"lambda_parameter must be >= 0, got {c.lambda_parameter}")
    need(c.r_parameter >= 0, f"r_parameter must be >= 0, got {c.r_parameter}")
    need(0 < c.sshn_eps < 1, f"sshn_eps must be in (0, 1), got {c.sshn_eps}")
    need(c.init in INITS, f"init must be one of {', '.join(INITS)}, got {c.init!r}")
    need(c.init != "visil_f" or (c.model.indexing == "att" and not c.model.attention_norm and not c.model.batch_norm),
         "init='visil_f' needs model.indexing='att' without attention_norm and batch_norm (the network it "
         f"sets up), got indexing={c.model.indexing!r}, attention_norm={c.model.attention_norm}, "
         f"batch_norm={c.model.batch_norm}")
    need(c.init_noise >= 0, f"init_noise must be >= 0, got {c.init_noise}")
    positive_int("checkpoint_every_steps")
    positive_int("keep_checkpoints")
    positive_int("log_every_steps")


def model_config(cfg) -> Dict[str, Any]:
    """The S2VS constructor options of a validated config."""
    return dict(cfg.model.to_dict())


def augmentation_config(cfg):
    """The validated augmentation section (a FrozenConfigDict, hashable) of a validated config."""
    try:
        return validate_augmentation_config(cfg.augmentation)
    except AugmentationConfigError as e:
        raise ConfigError(f"augmentation: {e}") from None
