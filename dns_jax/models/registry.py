"""The one table of networks: name -> Flax module, family, options read from weights, roles.

Every command line and library function that takes a network resolves it here:

    info = registry.get('fg_att_student')        # NetworkInfo: module class, family, roles
    module = registry.build_module('cg_student', {'dims': 512, ...})
    config = registry.infer_config('selector', state_dict)      # options from weight shapes
    name, path = registry.resolve_spec('visil:/w/visil.pth', role='teacher', allowed=SIMILARITY)

A network spec is 'NAME:PATH', a path to an official `.pth` (network from the file name), an orbax
checkpoint or training work directory (network from its meta), or a bare weightless name
('visil_f'). Roles: `indexes` (has an index_video that makes a stored representation), `compares`
(gives a video-to-video similarity), `selects` (the DnS selector).
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np

from dns_jax import checkpoint
from dns_jax.models import s2vs
from dns_jax.models.selector import SelectorNetwork
from dns_jax.models.students import CoarseGrainedStudent, FineGrainedStudent
from dns_jax.models.teacher import ViSiLHead

StateDict = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class NetworkInfo:
    """What the project knows about one network name."""

    name: str
    family: str                 # 'fine' | 'coarse' | 'selector' | 'visil'
    module: type                # the Flax module class
    infer: Callable[[str, StateDict], Dict[str, Any]]   # constructor options from official weights
    label: str                  # short name in tables and reports
    file_pattern: Optional[str] = None    # official file name stem (regex), for guessing from a path
    indexes: bool = True
    compares: bool = True
    selects: bool = False
    needs_weights: bool = True
    distilled: bool = False     # a DnS student or the selector: trained by dns_jax.training from a recipe


def _has_prefix(state: StateDict, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in state)


def _shape(state: StateDict, key: str) -> Tuple[int, ...]:
    return tuple(np.shape(state[key]))


def _fine_options(name: str, state: StateDict) -> Dict[str, Any]:
    cfg: Dict[str, Any] = {"indexing": {"fg_att_student": "att", "fg_bin_student": "bin",
                                        "fg_student": "none"}[name]}
    if "attention.transform.weight" in state:
        cfg["dims"] = _shape(state, "attention.transform.weight")[1]
    elif "binarization.W" in state:
        cfg["dims"], cfg["bits"] = _shape(state, "binarization.W")
    return cfg


def _coarse_options(name: str, state: StateDict) -> Dict[str, Any]:
    cfg: Dict[str, Any] = {"attention": "attention.transform.weight" in state,
                           "transformer": _has_prefix(state, "transformer."),
                           "netvlad": "netvlad.centroids" in state}
    if cfg["attention"]:
        cfg["dims"] = _shape(state, "attention.transform.weight")[1]
    if cfg["transformer"]:
        layers = {int(m.group(1)) for k in state for m in [re.match(r"transformer\.layers\.(\d+)\.", k)] if m}
        cfg["transformer_layers"] = max(layers) + 1 if layers else 0
        cfg["transformer_feedforward_dims"] = _shape(state, "transformer.layers.0.linear1.weight")[0]
        cfg["dims"] = _shape(state, "transformer.layers.0.linear1.weight")[1]
    if cfg["netvlad"]:
        cfg["netvlad_clusters"], cfg["dims"] = _shape(state, "netvlad.centroids")
        cfg["netvlad_outdims"] = (_shape(state, "netvlad.reduction_layer.weight")[0]
                                  if "netvlad.reduction_layer.weight" in state else None)
    return cfg


def _selector_options(name: str, state: StateDict) -> Dict[str, Any]:
    cfg: Dict[str, Any] = {}
    if "mlp.model.0.weight" in state:
        cfg["hidden_size"] = _shape(state, "mlp.model.0.weight")[0]
        bns = {int(m.group(1)) for k in state for m in [re.match(r"mlp\.model\.(\d+)\.running_mean", k)] if m}
        cfg["num_layers"] = max(len(bns) - 1, 0)
    if "attention.transform.weight" in state:
        cfg["dims"] = _shape(state, "attention.transform.weight")[1]
    return cfg


def _visil_options(name: str, state: StateDict) -> Dict[str, Any]:
    cfg: Dict[str, Any] = {"symmetric": name == "visil_symmetric",
                           "video_comparator": name != "visil_f",
                           "attention": "attention.context_vector.weight" in state}
    if cfg["attention"]:
        cfg["dims"] = _shape(state, "attention.context_vector.weight")[1]
    return cfg


_TABLE = (
    NetworkInfo("fg_att_student", "fine", FineGrainedStudent, _fine_options, "FG-Att", r"dns_fg_att_student",
                distilled=True),
    NetworkInfo("fg_bin_student", "fine", FineGrainedStudent, _fine_options, "FG-Bin", r"dns_fg_bin_student",
                distilled=True),
    NetworkInfo("fg_student", "fine", FineGrainedStudent, _fine_options, "FG", distilled=True),
    NetworkInfo("cg_student", "coarse", CoarseGrainedStudent, _coarse_options, "CG", r"dns_cg_student", distilled=True),
    NetworkInfo("selector", "selector", SelectorNetwork, _selector_options, "selector", r"dns_selector",
                compares=False, selects=True, distilled=True),
    NetworkInfo("visil", "visil", ViSiLHead, _visil_options, "ViSiL", r"visil"),
    NetworkInfo("visil_symmetric", "visil", ViSiLHead, _visil_options, "ViSiL_sym", r"visil_symmetric"),
    NetworkInfo("visil_f", "visil", ViSiLHead, _visil_options, "ViSiL_f", r"visil_f\b", needs_weights=False),
    # S2VS is the FG-Att student's network trained self-supervised (dns_jax/models/s2vs.py)
    NetworkInfo(s2vs.NAME, "fine", s2vs.S2VS, lambda name, state: s2vs.config_from_state_dict(state), "S2VS",
                s2vs.FILE_NAME_PATTERN),
)
REGISTRY: Dict[str, NetworkInfo] = {info.name: info for info in _TABLE}
# Official file name stems, most specific first ('visil_symmetric' before 'visil').
_FILE_ORDER = ("s2vs", "fg_att_student", "fg_bin_student", "cg_student", "selector", "visil_symmetric", "visil_f", "visil")

# Options of the weightless teacher: frame-to-frame Chamfer on raw region features.
WEIGHTLESS_OPTIONS = {"visil_f": dict(attention=False, video_comparator=False, symmetric=False)}


def names(family: Optional[str] = None, *, compares: Optional[bool] = None,
          indexes: Optional[bool] = None) -> Tuple[str, ...]:
    """Network names, optionally only those of one family / with a role."""
    return tuple(n for n, i in REGISTRY.items()
                 if (family is None or i.family == family)
                 and (compares is None or i.compares == compares)
                 and (indexes is None or i.indexes == indexes))


NETWORKS = names()
DISTILLED = tuple(n for n, i in REGISTRY.items() if i.distilled)   # what configs/<network>.py trains
FINE = names("fine")
SIMILARITY = names(compares=True)      # networks that give a video similarity (teachers, fine students)


def get(name: str) -> NetworkInfo:
    """The registry entry of `name`; ValueError listing the known names otherwise."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown network {name!r}; expected one of {', '.join(NETWORKS)}") from None


def build_module(name: str, config: Mapping[str, Any]):
    """The Flax module of network `name` with constructor options `config`."""
    return get(name).module(**config)


def infer_config(name: str, state: StateDict) -> Dict[str, Any]:
    """Constructor options of network `name` from the shapes of its official weights."""
    return get(name).infer(name, state)


def abstract_variables(module):
    """Shapes and dtypes of the module's variables, without computing anything."""
    return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), method="init_all"))


def guess_network_name(path: str) -> Optional[str]:
    """Network name from an official file name (e.g. 'dns_cg_student.pth' -> 'cg_student')."""
    stem = os.path.basename(os.path.normpath(os.fspath(path))).lower()
    for name in _FILE_ORDER:
        if re.search(REGISTRY[name].file_pattern, stem):
            return name
    return None


def describe_state_dict(state: StateDict) -> str:
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


class NetworkSpecError(ValueError):
    """A network spec that names no usable network (bad name, unknown file, wrong role)."""


class NetworkFileNotFoundError(NetworkSpecError, FileNotFoundError):
    """A network spec whose weights file or checkpoint directory does not exist."""


def resolve_spec(spec: Any, allowed: Optional[Sequence[str]] = None, role: str = "network"
                 ) -> Tuple[str, Optional[str]]:
    """(name, path) of a network spec: 'NAME:PATH', a `.pth` whose file name tells the network, a
    checkpoint / training work directory (network from its meta), or a weightless name ('visil_f',
    path None). `allowed` restricts the names; `role` names the flag or job in error messages."""
    spec = os.fspath(spec)
    allowed = tuple(allowed) if allowed is not None else NETWORKS
    if spec in REGISTRY and not REGISTRY[spec].needs_weights and not os.path.exists(spec):
        name, path = spec, None
    else:
        name, path = None, spec
        if ":" in spec and spec.split(":", 1)[0] in REGISTRY:
            name, path = spec.split(":", 1)
        if not os.path.exists(path):
            weightless = [n for n in allowed if not REGISTRY[n].needs_weights]
            hint = f"'{weightless[0]}' (no weights), " if weightless else ""
            raise NetworkFileNotFoundError(f"{role} {spec!r}: expected {hint}NAME:PATH, a .pth file or a checkpoint "
                                   f"directory, and {path!r} does not exist")
        if name is None:
            if os.path.isdir(path):
                try:
                    name = checkpoint.read_meta(path)[1]["network"]
                except (checkpoint.CheckpointError, KeyError) as e:
                    raise NetworkSpecError(f"{role} {spec!r}: {e}") from None
            else:
                name = guess_network_name(path)
                if name is None:
                    raise NetworkSpecError(
                        f"{role} {spec!r}: cannot tell the network from the file name; write it as "
                        f"NAME:PATH with NAME one of {', '.join(allowed)}")
    if name not in allowed:
        raise NetworkSpecError(f"{role} {spec!r} holds a {name!r} network; expected "
                               f"{' or '.join(allowed)} (write NAME:PATH to say which)")
    return name, path
