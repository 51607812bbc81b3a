"""`load(name, path_or_state_dict)`: the published DnS / ViSiL networks behind the official API.

    model = dns_jax.pretrained.load('fg_att_student', 'dns_fg_att_student.pth')
    q = model.index_video(query_features)          # [T, 9, 512] region features
    t = model.index_video(target_features)
    s = model.calculate_video_similarity(q, t)     # scalar, official evaluation path

The weights come from an official `.pth` file (read without torch), an orbax checkpoint directory
(from `python -m dns_jax.convert` or a training workdir: its latest step), or a mapping from official
key names to arrays. Network options (dims, NetVLAD size, bits, ...) are read from weight shapes.
The Flax module and variables stay available as `.module` and `.variables` for use with jit/vmap.
"""
from __future__ import annotations

import os
import re
from functools import partial
from typing import Any, Callable, Dict, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from dns_jax import checkpoint
from dns_jax.convert import ConversionError, state_dict_to_variables
from dns_jax.models import CoarseGrainedStudent, FineGrainedStudent, SelectorNetwork, ViSiLHead, s2vs
from dns_jax.validation import FeatureError, check_batch, check_video, repeat_to_min_frames

# Evaluation-path constants of the official code.
MIN_FRAMES = 4          # shorter videos are concatenated with themselves
TARGET_CHUNK = 2048     # longer targets are scored by chunks of this many frames, then averaged

NETWORKS = ("fg_att_student", "fg_bin_student", "fg_student", "cg_student", "selector",
            "visil", "visil_symmetric", "visil_f", s2vs.NAME)

_FILE_NAMES = [  # official file name stem -> network
    (s2vs.FILE_NAME_PATTERN, s2vs.NAME),
    (r"dns_fg_att_student", "fg_att_student"), (r"dns_fg_bin_student", "fg_bin_student"),
    (r"dns_cg_student", "cg_student"), (r"dns_selector", "selector"),
    (r"visil_symmetric", "visil_symmetric"), (r"visil_f\b", "visil_f"), (r"visil", "visil"),
]


def guess_network_name(path: str) -> Optional[str]:
    """Network name from an official file name (e.g. 'dns_cg_student.pth' -> 'cg_student')."""
    stem = os.path.basename(os.path.normpath(path)).lower()
    for pattern, name in _FILE_NAMES:
        if re.search(pattern, stem):
            return name
    return None


# ---------------------------------------------------------------------------------------------
# configs from weight shapes

def _has_prefix(state, prefix):
    return any(k.startswith(prefix) for k in state)


def describe_state_dict(state: Mapping[str, Any]) -> str:
    """A guess at which network a state dict belongs to, for error messages."""
    s2vs_only = s2vs.describe_state_dict(state)
    if s2vs_only:
        return s2vs_only
    if "binarization.W" in state:
        return "a fine-grained binarization student (fg_bin_student)"
    if _has_prefix(state, "mlp.model."):
        return "a selector"
    if _has_prefix(state, "netvlad.") or _has_prefix(state, "transformer."):
        return "a coarse-grained student (cg_student)"
    if _has_prefix(state, "video_comperator.") or ("attention.context_vector.weight" in state
                                                   and "attention.transform.weight" not in state):
        return "a ViSiL head (visil / visil_symmetric / visil_f)"
    if "attention.transform.weight" in state:
        return "a fine-grained attention student (fg_att_student, or the S2VS network s2vs)"
    if _has_prefix(state, "visil_head."):
        return "a fine-grained student without indexing layer (fg_student)"
    if _has_prefix(state, "cnn.") or "conv1.weight" in state:
        return "a feature extractor / ResNet-50 (not a DnS network)"
    return "no known network"


def infer_config(name: str, state: Mapping[str, Any]) -> Dict[str, Any]:
    """Constructor options of network `name` from the shapes of its official weights."""
    shape = lambda k: tuple(np.shape(state[k]))
    if name in ("fg_att_student", "fg_bin_student", "fg_student"):
        cfg: Dict[str, Any] = {"indexing": {"fg_att_student": "att", "fg_bin_student": "bin",
                                            "fg_student": "none"}[name]}
        if "attention.transform.weight" in state:
            cfg["dims"] = shape("attention.transform.weight")[1]
        elif "binarization.W" in state:
            cfg["dims"], cfg["bits"] = shape("binarization.W")
        return cfg
    if name == "cg_student":
        cfg = {"attention": "attention.transform.weight" in state,
               "transformer": _has_prefix(state, "transformer."),
               "netvlad": "netvlad.centroids" in state}
        if cfg["attention"]:
            cfg["dims"] = shape("attention.transform.weight")[1]
        if cfg["transformer"]:
            layers = {int(m.group(1)) for k in state for m in [re.match(r"transformer\.layers\.(\d+)\.", k)] if m}
            cfg["transformer_layers"] = max(layers) + 1 if layers else 0
            cfg["transformer_feedforward_dims"] = shape("transformer.layers.0.linear1.weight")[0]
            cfg["dims"] = shape("transformer.layers.0.linear1.weight")[1]
        if cfg["netvlad"]:
            cfg["netvlad_clusters"], cfg["dims"] = shape("netvlad.centroids")
            cfg["netvlad_outdims"] = (shape("netvlad.reduction_layer.weight")[0]
                                      if "netvlad.reduction_layer.weight" in state else None)
        return cfg
    if name == "selector":
        cfg = {}
        if "mlp.model.0.weight" in state:
            cfg["hidden_size"] = shape("mlp.model.0.weight")[0]
            bns = {int(m.group(1)) for k in state for m in [re.match(r"mlp\.model\.(\d+)\.running_mean", k)] if m}
            cfg["num_layers"] = max(len(bns) - 1, 0)
        if "attention.transform.weight" in state:
            cfg["dims"] = shape("attention.transform.weight")[1]
        return cfg
    if name in ("visil", "visil_symmetric", "visil_f"):
        cfg = {"symmetric": name == "visil_symmetric",
               "video_comparator": name != "visil_f",
               "attention": "attention.context_vector.weight" in state}
        if cfg["attention"]:
            cfg["dims"] = shape("attention.context_vector.weight")[1]
        return cfg
    if name == s2vs.NAME:
        return s2vs.config_from_state_dict(state)
    raise ValueError(f"unknown network {name!r}; expected one of {NETWORKS}")


def build_module(name: str, config: Mapping[str, Any]):
    """The Flax module of network `name` with constructor options `config`."""
    if name in ("fg_att_student", "fg_bin_student", "fg_student"):
        return FineGrainedStudent(**config)
    if name == "cg_student":
        return CoarseGrainedStudent(**config)
    if name == "selector":
        return SelectorNetwork(**config)
    if name in ("visil", "visil_symmetric", "visil_f"):
        return ViSiLHead(**config)
    if name == s2vs.NAME:
        return s2vs.S2VS(**config)
    raise ValueError(f"unknown network {name!r}; expected one of {NETWORKS}")


def abstract_variables(module):
    """Shapes and dtypes of the module's variables, without computing anything."""
    return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), method="init_all"))


def init_network(name: str, rng=None, **config):
    """A freshly initialised network (e.g. to train): returns a wrapper like `load`."""
    module = build_module(name, config)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    variables = module.init(rng, method="init_all")
    return _WRAPPERS[_family(name)](name, dict(config), module, variables)


# ---------------------------------------------------------------------------------------------
# user-facing wrappers

def _family(name):
    if name.startswith("fg_") or name == s2vs.NAME:
        return "fine"
    if name.startswith("visil"):
        return "visil"
    return {"cg_student": "coarse", "selector": "selector"}[name]


class PretrainedNetwork:
    """A network with its variables; methods mirror the official class. `.module`/`.variables`
    expose the pure Flax parts."""

    def __init__(self, name: str, config: Dict[str, Any], module, variables):
        self.name, self.config, self.module, self.variables = name, config, module, variables
        self._jitted: Dict[str, Callable] = {}

    @property
    def dims(self) -> int:
        return self.module.dims

    def apply(self, method: str, *args, **kwargs):
        """Jitted `module.apply(variables, *args, method=method)` (kwargs are static)."""
        key = (method, tuple(sorted(kwargs.items())))
        if key not in self._jitted:
            fn = partial(self.module.apply, method=method, **kwargs)
            self._jitted[key] = jax.jit(fn)
        return self._jitted[key](self.variables, *args)

    def index_video(self, x, mask=None):
        """One video [T, R, D] (repeated to at least 4 frames, as the official evaluation does), or a
        padded batch [N, T, R, D] with its frame mask [N, T]."""
        if np.ndim(x) == 4:
            return self.apply("index_video", *check_batch(x, mask, self.dims))
        return self.apply("index_video", self._features(x))

    def _features(self, x, name="video", repeat=True):
        arr = check_video(x, self.dims, name)
        return repeat_to_min_frames(arr, MIN_FRAMES) if repeat else arr

    def __repr__(self):
        return f"<{type(self).__name__} {self.name} {self.config}>"


def _chunked_mean(fn, query, target):
    """Official evaluation rule: score the target by chunks of TARGET_CHUNK frames (chunks under
    MIN_FRAMES frames skipped) and average."""
    t = target.shape[0]
    sims = [fn(query, target[s:s + TARGET_CHUNK]) for s in range(0, t, TARGET_CHUNK)
            if target[s:s + TARGET_CHUNK].shape[0] >= MIN_FRAMES]
    if not sims:
        raise FeatureError(f"target has {t} frames; at least {MIN_FRAMES} are needed (index_video "
                           "repeats short videos)")
    return jnp.mean(jnp.stack([jnp.reshape(s, ()) for s in sims]))


class FineGrainedNetwork(PretrainedNetwork):
    """FG-Att / FG-Bin / FG (no indexing) student."""

    # index_video: region features -> stored representation [T, R, D'] (attention-weighted
    # features or +-1 codes), see PretrainedNetwork.index_video

    def calculate_video_similarity(self, query, target, query_mask=None, target_mask=None, **options):
        """Indexed query [Tq, R, D'] and target [Tt, R, D'] -> scalar similarity in [-1, 1]
        (targets over 2048 frames: mean over chunks). 4-d inputs: official all-pairs [A, B].
        `options`: pooling=False, apply_visil=False (see FineGrainedStudent)."""
        if np.ndim(query) == 4 or np.ndim(target) == 4:
            return self.apply("calculate_video_similarity", query, target, query_mask, target_mask, **options)
        fn = lambda q, t: self.apply("calculate_video_similarity", q, t, **options)
        return _chunked_mean(fn, jnp.asarray(query), jnp.asarray(target))

    def similarity_matrix(self, query, target, **options):
        """Indexed query/target -> comparator output after hard tanh [Tq//4, Tt//4]
        (`options`: pooling=False -> [Tq, Tt]; apply_visil=False -> frame-to-frame [Tq, Tt])."""
        return self.apply("similarity_matrix", query, target, **options)

    def frame_to_frame_similarity(self, query, target):
        """Indexed query/target -> frame-to-frame similarity [Tq, Tt]."""
        return self.apply("frame_to_frame_similarity", query, target)


class CoarseGrainedNetwork(PretrainedNetwork):
    """CG student: one L2-normalised vector per video."""

    # index_video: [T, R, D] -> [1, E]; [N, T, R, D] with mask [N, T] -> [N, E]

    def calculate_video_similarity(self, query, target):
        """[A, E] x [B, E] -> [A, B] (a single [E] vector counts as [1, E])."""
        q, t = jnp.atleast_2d(query), jnp.atleast_2d(target)
        return self.apply("calculate_video_similarity", q, t)


class SelectorNetworkWrapper(PretrainedNetwork):
    """Selector: `index_video` -> self-similarity [1, 1]; `__call__([B, 3])` -> [B, 1] probability."""

    def __call__(self, z):
        z = jnp.asarray(z, jnp.float32)
        if z.ndim != 2 or z.shape[1] != 3:
            raise FeatureError("selector input must be [B, 3] = [query selfsim, target selfsim, coarse "
                               f"similarity]; got shape {tuple(z.shape)}")
        return self.apply("__call__", z)


class ViSiLNetwork(PretrainedNetwork):
    """ViSiL teacher head: `index_video` is the official `prepare_tensor` (the CNN belongs to
    dns_jax.features), `calculate_video_similarity` the head's forward on two prepared videos."""

    def index_video(self, x):
        return self.apply("prepare_tensor", self._features(x, repeat=self.module.video_comparator))

    def calculate_video_similarity(self, query, target):
        fn = lambda q, t: self.apply("__call__", q, t)
        if not self.module.video_comparator:
            return jnp.reshape(fn(jnp.asarray(query), jnp.asarray(target)), ())
        return _chunked_mean(fn, jnp.asarray(query), jnp.asarray(target))

    def frame_to_frame_similarity(self, query, target):
        return self.apply("frame_to_frame_similarity", query, target)


_WRAPPERS = {"fine": FineGrainedNetwork, "coarse": CoarseGrainedNetwork,
             "selector": SelectorNetworkWrapper, "visil": ViSiLNetwork}


def _state_from_source(source) -> Mapping[str, Any]:
    if isinstance(source, Mapping):
        return source
    path = os.fspath(source)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such weights file or checkpoint directory: {path!r}")
    from dns_jax import pth
    return pth.load_state_dict(path)


def load(name: str, path_or_state_dict: Union[str, os.PathLike, Mapping[str, Any]], **overrides) -> PretrainedNetwork:
    """Load network `name` (one of NETWORKS) from a .pth file, an orbax checkpoint directory or a
    mapping of official key names to arrays. `overrides` set constructor options that weights
    cannot tell (e.g. `transformer_heads`, `precision`)."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; expected one of {', '.join(NETWORKS)}")
    source = path_or_state_dict
    if not isinstance(source, Mapping) and os.path.isdir(os.fspath(source)):
        return _load_checkpoint(name, os.fspath(source), overrides)
    state = _state_from_source(source)
    state = {k: np.asarray(v) for k, v in state.items()}
    config = infer_config(name, state)
    config.update(overrides)
    module = build_module(name, config)
    try:
        variables = state_dict_to_variables(state, abstract_variables(module), name)
    except ConversionError as e:
        where = source if not isinstance(source, Mapping) else "the given state dict"
        raise ConversionError(f"cannot load {where} as {name!r}: it looks like "
                              f"{describe_state_dict(state)}.\n  {e}") from None
    variables = jax.tree_util.tree_map(jnp.asarray, variables)
    return _WRAPPERS[_family(name)](name, config, module, variables)


def _load_checkpoint(name: str, directory: str, overrides) -> PretrainedNetwork:
    step, meta = checkpoint.read_meta(directory)
    if meta["network"] != name:
        raise checkpoint.CheckpointError(f"{directory!r} holds a {meta['network']!r} network, not {name!r}")
    config = dict(meta.get("config", {}))
    config.update(overrides)
    module = build_module(name, config)
    variables = checkpoint.restore_variables(directory, step, abstract_variables(module))
    return _WRAPPERS[_family(name)](name, config, module, variables)
