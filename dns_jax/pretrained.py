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
from functools import partial
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from dns_jax import checkpoint, pth
from dns_jax.models import registry
from dns_jax.models.conversion import ConversionError, state_dict_to_variables
from dns_jax.models.registry import (
    NETWORKS,
    NetworkSpecError,
    abstract_variables,
    build_module,
    describe_state_dict,
    guess_network_name,
    infer_config,
)
from dns_jax.validation import FeatureError, check_batch, check_video, repeat_to_min_frames

# names users reach through this module: the registry's network list and helpers
__all__ = ["load", "load_spec", "load_teacher", "init_network", "PretrainedNetwork", "FineGrainedNetwork",
           "CoarseGrainedNetwork", "SelectorNetworkWrapper", "ViSiLNetwork", "NETWORKS", "NetworkSpecError",
           "abstract_variables", "build_module", "describe_state_dict", "guess_network_name", "infer_config",
           "MIN_FRAMES", "TARGET_CHUNK"]

# Evaluation-path constants of the official code.
MIN_FRAMES = 4          # shorter videos are concatenated with themselves
TARGET_CHUNK = 2048     # longer targets are scored by chunks of this many frames, then averaged


def init_network(name: str, rng=None, **config):
    """A freshly initialised network (e.g. to train): returns a wrapper like `load`."""
    module = build_module(name, config)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    variables = module.init(rng, method="init_all")
    return _WRAPPERS[registry.get(name).family](name, dict(config), module, variables)


# ---------------------------------------------------------------------------------------------
# user-facing wrappers

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
    return pth.load_state_dict(path)


def load(name: str, path_or_state_dict: Union[str, os.PathLike, Mapping[str, Any]], **overrides) -> PretrainedNetwork:
    """Load network `name` (one of NETWORKS) from a .pth file, an orbax checkpoint directory or a
    mapping of official key names to arrays. `overrides` set constructor options that weights
    cannot tell (e.g. `transformer_heads`, `precision`)."""
    registry.get(name)
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
    return _WRAPPERS[registry.get(name).family](name, config, module, variables)


def _load_checkpoint(name: str, directory: str, overrides) -> PretrainedNetwork:
    step, meta = checkpoint.read_meta(directory)
    if meta["network"] != name:
        raise checkpoint.CheckpointError(f"{directory!r} holds a {meta['network']!r} network, not {name!r}")
    config = dict(meta.get("config", {}))
    config.update(overrides)
    module = build_module(name, config)
    variables = checkpoint.restore_variables(directory, step, abstract_variables(module))
    return _WRAPPERS[registry.get(name).family](name, config, module, variables)


def load_spec(spec, allowed: Optional[Sequence[str]] = None, role: str = "network", dims: Optional[int] = None,
              **overrides) -> PretrainedNetwork:
    """Load the network a spec names (see `registry.resolve_spec`): 'NAME:PATH', an official `.pth`,
    a checkpoint / training work directory, or a weightless name ('visil_f', at `dims`, default 512)."""
    name, path = registry.resolve_spec(spec, allowed, role)
    if path is None:
        options = dict(registry.WEIGHTLESS_OPTIONS[name], dims=dims or 512, **overrides)
        return init_network(name, **options)
    return load(name, path, **overrides)


def load_teacher(spec, dims: Optional[int] = None) -> Tuple[str, PretrainedNetwork]:
    """(name, network) of a teacher: 'visil_f' (weightless ViSiL_f on raw region features),
    'NAME:PATH', or a checkpoint / training work directory of a network that gives a similarity."""
    net = load_spec(spec, registry.SIMILARITY, role="teacher", dims=dims)
    return net.name, net
