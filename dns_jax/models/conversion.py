"""Official PyTorch state dicts <-> Flax variables.

The mapping is driven by the Flax variable tree: every Flax leaf has exactly one official key (plus
a transpose or a slice of the packed attention projection), so conversion both ways is lossless and
every missing or unexpected key can be named.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Dict, Mapping, Tuple

import numpy as np
from flax import traverse_util

Variables = Dict[str, Any]


class ConversionError(ValueError):
    """Official weights that do not fit the network: lists missing/unexpected keys and bad shapes."""


# Flax module names that differ from the official attribute names.
_MODULE_RENAMES = {
    "attention_layer": "attention",
    "transformer_layer": "transformer",
    "netvlad_layer": "netvlad",
}


def _official_module_path(parts):
    out = []
    for i, p in enumerate(parts):
        p = _MODULE_RENAMES.get(p, p)
        m = re.fullmatch(r"layers_(\d+)", p)
        if m:
            p = f"layers.{m.group(1)}"
        m = re.fullmatch(r"seq_(\d+)", p)  # child of a torch nn.Sequential: just its index
        if m:
            p = m.group(1)
        m = re.fullmatch(r"(dense|bn)_(\d+)", p)
        if m and i > 0 and parts[i - 1] == "mlp":
            k = int(m.group(2))
            p = f"model.{4 * k + (1 if m.group(1) == 'bn' else 0)}"
        if p == "out" and i > 0 and parts[i - 1] == "mlp":
            p = None  # resolved by the caller: the last Linear, index 4 * (num_layers + 1)
        out.append(p)
    return out


class _Rule:
    """How one Flax leaf is read from (and written to) the official state dict."""

    def __init__(self, key: str, to_flax: Callable[[np.ndarray], np.ndarray],
                 to_torch: Callable[[np.ndarray], np.ndarray], packed: Tuple[int, int] | None = None):
        self.key, self.to_flax, self.to_torch, self.packed = key, to_flax, to_torch, packed


def _identity(a):
    return a


def _rule_for(collection: str, path: Tuple[str, ...], shape: Tuple[int, ...], mlp_out_index: int) -> _Rule:
    mods = _official_module_path(list(path[:-1]))
    if None in mods:
        mods[mods.index(None)] = f"model.{mlp_out_index}"
    leaf = path[-1]
    # torch.nn.MultiheadAttention packs q, k, v into in_proj_{weight,bias}
    if len(mods) >= 1 and mods[-1] in ("query", "key", "value") and "self_attn" in mods:
        j = ("query", "key", "value").index(mods[-1])
        prefix = ".".join(mods[:-1])
        d = shape[-1]
        if leaf == "kernel":
            return _Rule(f"{prefix}.in_proj_weight", lambda a: a.T, lambda a: a.T, packed=(j * d, (j + 1) * d))
        return _Rule(f"{prefix}.in_proj_bias", _identity, _identity, packed=(j * d, (j + 1) * d))
    prefix = ".".join(mods)
    if collection == "batch_stats":
        name = {"mean": "running_mean", "var": "running_var"}[leaf]
        return _Rule(f"{prefix}.{name}", _identity, _identity)
    if leaf == "kernel":
        if len(shape) == 4:  # conv: flax (kh, kw, in, out) <-> torch (out, in, kh, kw)
            return _Rule(f"{prefix}.weight", lambda a: a.transpose(2, 3, 1, 0), lambda a: a.transpose(3, 2, 0, 1))
        return _Rule(f"{prefix}.weight", lambda a: a.T, lambda a: a.T)  # Linear: (in, out) <-> (out, in)
    if leaf == "scale":
        return _Rule(f"{prefix}.weight", _identity, _identity)
    if leaf == "conv" and mods and mods[-1] == "netvlad":  # 1x1 conv (K, D, 1, 1) <-> (D, K)
        return _Rule(f"{prefix}.conv.weight", lambda a: a[:, :, 0, 0].T, lambda a: a.T[:, :, None, None])
    return _Rule(f"{prefix}.{leaf}" if prefix else leaf, _identity, _identity)


def _flat_leaves(variables: Variables):
    from flax.core import unfreeze
    return traverse_util.flatten_dict(unfreeze(variables))


def _mlp_out_index(flat_keys) -> int:
    bns = {p[i] for p in flat_keys for i in range(len(p)) if re.fullmatch(r"bn_\d+", str(p[i]))}
    return 4 * len(bns)


# Official keys that carry no weight for inference and are accepted silently.
_IGNORED = re.compile(r"(^|\.)num_batches_tracked$")


def state_dict_to_variables(state_dict: Mapping[str, Any], abstract_variables: Variables,
                            network: str = "network") -> Variables:
    """Map an official state dict onto a Flax variable tree of the given abstract structure.

    `abstract_variables` is e.g. `jax.eval_shape(model.init, rng, method='init_all')`. Every leaf
    shape is checked. Raises ConversionError naming missing keys, unexpected keys and shape
    mismatches, so a checkpoint of the wrong network fails with a readable message.
    """
    state = {k: np.asarray(v) for k, v in state_dict.items()}
    flat = _flat_leaves(abstract_variables)
    out_index = _mlp_out_index(flat.keys())
    used, missing, bad_shapes, result = set(), [], [], {}
    for path, leaf in flat.items():
        rule = _rule_for(path[0], path[1:], tuple(leaf.shape), out_index)
        if rule.key not in state:
            missing.append(rule.key)
            continue
        used.add(rule.key)
        arr = state[rule.key]
        if rule.packed is not None:
            arr = arr[rule.packed[0]:rule.packed[1]]
        try:
            arr = rule.to_flax(arr)
        except (ValueError, IndexError):
            bad_shapes.append(f"{rule.key}: got {state[rule.key].shape}")
            continue
        if tuple(arr.shape) != tuple(leaf.shape):
            bad_shapes.append(f"{rule.key}: got {state[rule.key].shape}, expected one giving {tuple(leaf.shape)}")
            continue
        result[path] = np.ascontiguousarray(arr, dtype=leaf.dtype)
    unexpected = sorted(k for k in state if k not in used and not _IGNORED.search(k))
    if missing or unexpected or bad_shapes:
        parts = [f"the weights do not fit {network}:"]
        if missing:
            parts.append(f"missing keys: {sorted(set(missing))}")
        if unexpected:
            parts.append(f"unexpected keys: {unexpected}")
        if bad_shapes:
            parts.append(f"wrong shapes: {bad_shapes}")
        raise ConversionError("\n  ".join(parts))
    return traverse_util.unflatten_dict(result)


def variables_to_state_dict(variables: Variables) -> Dict[str, np.ndarray]:
    """Flax variables -> official state dict (torch layouts), e.g. to compare with or export to
    the official code. BatchNorm `num_batches_tracked` is not tracked here and is omitted."""
    flat = _flat_leaves(variables)
    out_index = _mlp_out_index(flat.keys())
    state: Dict[str, np.ndarray] = {}
    packed: Dict[str, list] = {}
    for path, leaf in flat.items():
        arr = np.asarray(leaf)
        rule = _rule_for(path[0], path[1:], tuple(arr.shape), out_index)
        value = rule.to_torch(arr)
        if rule.packed is not None:
            packed.setdefault(rule.key, []).append((rule.packed[0], value))
        else:
            state[rule.key] = value
    for key, pieces in packed.items():
        state[key] = np.concatenate([v for _, v in sorted(pieces, key=lambda p: p[0])], axis=0)
    return state
