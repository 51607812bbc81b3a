"""The S2VS augmentation recipe as an `ml_collections` config, and its validation.

Every value is the published one (gkordo/s2vs `train.py` defaults and `datasets/transforms`);
`docs/augmentation.md` maps each key to its official name. Integer ranges are inclusive
(the official code draws with numpy's exclusive `randint(lo, hi)`, i.e. `(lo, hi - 1)` here).
"""
from __future__ import annotations

import difflib
from typing import Any, Iterator, Mapping, Tuple

import ml_collections

# Groups of strong augmentations (official `--augmentations GT,FT,TT,ViV`).
GROUPS = ("global", "frame", "temporal", "video_in_video")
# RandAugment operations, torchvision's set and order (the op index is drawn over this tuple).
RANDAUGMENT_OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate",
                   "brightness", "color", "contrast", "sharpness", "posterize", "solarize",
                   "autocontrast", "equalize")
# 'binary': the official targets (any shared source video -> 1); 'soft': lambda kept (see targets.py).
LABEL_MODES = ("binary", "soft")
# Keys whose value is a tuple of names, each checked against its vocabulary.
_NAME_LISTS = {"strong.enabled": GROUPS, "strong.randaugment.ops": RANDAUGMENT_OPS}
_NAME_VALUES = {"labels": LABEL_MODES}


class AugmentationConfigError(ValueError):
    """An augmentation config that cannot be used: unknown key or name, or a bad value."""


def default_augmentation_config() -> ml_collections.ConfigDict:
    """The published S2VS recipe (32-frame windows at 1 fps, 224x224 frames)."""
    c = ml_collections.ConfigDict()
    c.frame_size = 224        # output frames are frame_size x frame_size
    c.window_size = 32        # output clip length (frames)
    # What the official loader feeds the views (informative; the views accept any [T, H, W, 3]):
    # 2 * window_size consecutive frames, shorter side resized to 256.
    c.source_frames = 64
    c.source_size = 256
    c.labels = "binary"

    c.weak = ml_collections.ConfigDict(dict(
        crop_scale=(0.8, 1.0), crop_ratio=(3 / 4, 4 / 3), p_flip=0.5))

    c.strong = ml_collections.ConfigDict()
    c.strong.enabled = GROUPS
    c.strong.crop_scale = (0.5, 1.0)
    c.strong.crop_ratio = (3 / 4, 4 / 3)
    c.strong.p_flip = 0.5
    c.strong.randaugment = ml_collections.ConfigDict(dict(
        num_ops=2, magnitude=9, num_bins=31, ops=RANDAUGMENT_OPS))
    # Per-frame edits, each drawn independently for every frame (as the official FrameTransforms).
    c.strong.frame = ml_collections.ConfigDict(dict(
        p_text=0.3, p_emoji=0.3,
        overlay_size=(0.2, 0.5),      # text: font size / min(H, W); emoji: side / min(H, W)
        overlay_opacity=(0.7, 1.0),
        p_blur=0.5, blur_radius=(0.1, 2.0)))
    # One temporal edit per clip, chosen with these probabilities (none: 1 - their sum).
    c.strong.temporal = ml_collections.ConfigDict(dict(
        p_shuffle_dropout=0.5, p_fast_forward=0.1, p_slow_motion=0.1, p_reverse=0.1, p_pause=0.1,
        segment_frames=(4, 15),       # shuffle/dropout segment length
        p_shuffle=0.5,                # segments are permuted
        p_dropout=0.3,                # a segment is dropped ...
        p_remove=0.5,                 # ... by removing it (else its frames become black/noise)
        p_black=0.5,                  # a replaced frame is black (else uniform noise)
        fast_forward=(2, 3),          # keep every k-th frame
        slow_motion=(2, 2),           # repeat every frame k times
        pause_frames=(0, 7)))         # extra copies of the paused frame (official window_size // 4 - 1)
    c.strong.video_in_video = ml_collections.ConfigDict(dict(p=0.3, lam=(0.3, 0.7)))
    return c


def _leaves(node: Any, prefix: str = "") -> Iterator[Tuple[str, Any]]:
    """(dotted path, value) of every entry, sub-configs included as entries of their own."""
    for key, value in node.items():
        path = prefix + str(key)
        yield path, value
        if isinstance(value, Mapping) or isinstance(value, ml_collections.ConfigDict):
            yield from _leaves(value, path + ".")


def _unknown_keys(given: Any, known: set) -> list:
    hints = []
    for path, _ in _leaves(given):
        if path not in known:
            close = difflib.get_close_matches(path, sorted(known), n=1)
            hints.append(repr(path) + (f" (did you mean {close[0]!r}?)" if close else ""))
    return hints


def _as_dict(config: Any) -> dict:
    return config.to_dict() if hasattr(config, "to_dict") else {k: v for k, v in config.items()}


def _merge(base: ml_collections.ConfigDict, given: Mapping) -> None:
    """Write `given` into `base`; lists become tuples and, for name tuples, "a,b" -> ("a", "b")."""
    for key, value in given.items():
        if isinstance(value, Mapping):
            _merge(base[key], value)
        elif isinstance(value, str) and isinstance(base[key], tuple):
            base[key] = tuple(n.strip() for n in value.split(",") if n.strip())
        else:
            base[key] = tuple(value) if isinstance(value, list) else value


def validate_augmentation_config(config: Any = None) -> ml_collections.FrozenConfigDict:
    """Check `config` (ConfigDict or nested dict; missing keys keep the defaults) and return it
    complete and frozen. Unknown keys, unknown names and bad values raise
    `AugmentationConfigError` naming the entry."""
    base = default_augmentation_config()
    if config is None:
        return ml_collections.FrozenConfigDict(base)
    known = {path for path, _ in _leaves(base)}
    unknown = _unknown_keys(config, known)
    if unknown:
        raise AugmentationConfigError("unknown augmentation config key(s): " + ", ".join(unknown))
    try:
        _merge(base, _as_dict(config))
    except (TypeError, ValueError, KeyError) as e:
        raise AugmentationConfigError(f"bad augmentation config value: {e}") from e
    _check_names(base)
    _check_values(base)
    return ml_collections.FrozenConfigDict(base)


def _get(cfg: ml_collections.ConfigDict, path: str) -> Any:
    node = cfg
    for part in path.split("."):
        node = node[part]
    return node


def _check_names(c: ml_collections.ConfigDict) -> None:
    for path, vocabulary in _NAME_LISTS.items():
        for name in _get(c, path):
            if name not in vocabulary:
                raise AugmentationConfigError(
                    f"unknown name {name!r} in {path}; expected some of {', '.join(vocabulary)}")
    for path, vocabulary in _NAME_VALUES.items():
        name = _get(c, path)
        if name not in vocabulary:
            raise AugmentationConfigError(
                f"unknown name {name!r} for {path}; expected one of {', '.join(vocabulary)}")


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise AugmentationConfigError(msg)


def _check_range(c, path: str, lo: float, hi: float, integer: bool = False) -> None:
    value = _get(c, path)
    _need(isinstance(value, tuple) and len(value) == 2,
          f"{path} must be a (low, high) pair, got {value!r}")
    a, b = value
    if integer:
        _need(all(isinstance(v, int) and not isinstance(v, bool) for v in value),
              f"{path} must hold integers, got {value!r}")
    _need(lo <= a <= b <= hi, f"{path} must satisfy {lo} <= low <= high <= {hi}, got {value!r}")


def _check_probability(c, path: str) -> None:
    value = _get(c, path)
    _need(isinstance(value, (int, float)) and 0.0 <= value <= 1.0,
          f"{path} must be a probability in [0, 1], got {value!r}")


def _check_values(c: ml_collections.ConfigDict) -> None:
    for path in ("frame_size", "window_size", "source_frames", "source_size"):
        value = _get(c, path)
        _need(isinstance(value, int) and value >= 1, f"{path} must be a positive integer, got {value!r}")
    inf = float("inf")
    for view in ("weak", "strong"):
        _check_range(c, f"{view}.crop_scale", 1e-6, 1.0)
        _check_range(c, f"{view}.crop_ratio", 1e-6, inf)
        _check_probability(c, f"{view}.p_flip")
    ra = c.strong.randaugment
    _need(isinstance(ra.num_ops, int) and ra.num_ops >= 0, f"strong.randaugment.num_ops must be >= 0, got {ra.num_ops!r}")
    _need(isinstance(ra.num_bins, int) and ra.num_bins >= 2, f"strong.randaugment.num_bins must be >= 2, got {ra.num_bins!r}")
    _need(isinstance(ra.magnitude, int) and 0 <= ra.magnitude < ra.num_bins,
          f"strong.randaugment.magnitude must be in [0, num_bins - 1], got {ra.magnitude!r}")
    _need(len(ra.ops) > 0, "strong.randaugment.ops must name at least one operation")
    for path in ("p_text", "p_emoji", "p_blur"):
        _check_probability(c, f"strong.frame.{path}")
    _check_range(c, "strong.frame.overlay_size", 1e-6, 1.0)
    _check_range(c, "strong.frame.overlay_opacity", 0.0, 1.0)
    _check_range(c, "strong.frame.blur_radius", 1e-3, 32.0)
    t = "strong.temporal."
    edits = ("p_shuffle_dropout", "p_fast_forward", "p_slow_motion", "p_reverse", "p_pause")
    for path in edits + ("p_shuffle", "p_dropout", "p_remove", "p_black"):
        _check_probability(c, t + path)
    total = sum(_get(c, t + p) for p in edits)
    _need(total <= 1.0 + 1e-9, f"the temporal edit probabilities ({', '.join(edits)}) sum to {total} > 1")
    _check_range(c, t + "segment_frames", 1, inf, integer=True)
    _check_range(c, t + "fast_forward", 1, inf, integer=True)
    _check_range(c, t + "slow_motion", 1, inf, integer=True)
    _check_range(c, t + "pause_frames", 0, inf, integer=True)
    _check_probability(c, "strong.video_in_video.p")
    _check_range(c, "strong.video_in_video.lam", 0.0, 0.99)
