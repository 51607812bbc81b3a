"""Load experiment recipes (`configs/*.py`, each with `get_config(arg=None)`) and apply
command-line overrides, the way big_vision and the flax examples do.

    config = load_config('configs/fg_att_student.py:synthetic')   # a file, with get_config's argument
    config = load_config('cg_student')                            # a recipe shipped as dns_jax.configs
    config = apply_overrides(config, {'learning_rate': '1e-3', 'model.dims': '256'})

An override's text is parsed as a Python literal when it is one (1e-3, True, (16, 32)), else kept as
a string; it must name an existing key (typos are errors naming the closest key) and fit its type.
"""
from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

import ml_collections

RECIPE_PACKAGE = "dns_jax.configs"


class ConfigFileError(ValueError):
    """A recipe that cannot be loaded or an override that does not fit it."""


def split_spec(spec: str) -> Tuple[str, Optional[str]]:
    """'path/x.py:arg' -> ('path/x.py', 'arg'); 'name' -> ('name', None)."""
    spec = os.fspath(spec)
    base, sep, arg = spec.rpartition(":")
    if sep and base and not os.path.exists(spec) and "/" not in arg and "\\" not in arg:
        return base, arg
    return spec, None


def _module_from_file(path: str):
    if not os.path.isfile(path):
        raise ConfigFileError(f"no such config file: {path!r}")
    name = "dns_jax_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise ConfigFileError(f"{path}: {type(e).__name__}: {e}") from e
    return module


def recipe_names() -> List[str]:
    """Names of the recipes shipped with the package."""
    spec = importlib.util.find_spec(RECIPE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = list(spec.submodule_search_locations)[0]
    return sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py") and not f.startswith("_"))


def load_config(spec: str, arg: Optional[str] = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of a recipe file ('configs/x.py[:arg]') or a shipped recipe ('x[:arg]')."""
    target, spec_arg = split_spec(spec)
    arg = spec_arg if arg is None else arg
    if target.endswith(".py") or os.sep in target or "/" in target:
        module = _module_from_file(target)
    else:
        if target not in recipe_names():
            raise ConfigFileError(f"unknown recipe {target!r}; shipped: {', '.join(recipe_names())} "
                                  "(or give a path to a config file)")
        module = importlib.import_module(f"{RECIPE_PACKAGE}.{target}")
    if not hasattr(module, "get_config"):
        raise ConfigFileError(f"{target}: a config file defines get_config(arg=None)")
    try:
        config = module.get_config(arg) if arg is not None else module.get_config()
    except (ValueError, TypeError) as e:
        raise ConfigFileError(f"{target}: {e}") from None
    return config


def parse_value(text: str, current: Any) -> Any:
    """The value an override's text stands for, converted to the type of `current`."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if isinstance(current, bool):
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise ConfigFileError(f"expected true or false, got {text!r}")
        return value
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, str) and not isinstance(value, str):
        return text
    if isinstance(current, tuple) and isinstance(value, list):
        return tuple(value)
    if isinstance(current, tuple) and isinstance(value, int):
        return (value,)
    if current is not None and not isinstance(value, type(current)):
        raise ConfigFileError(f"expected a {type(current).__name__}, got {text!r}")
    return value


def _keys(config, prefix: str = "") -> List[str]:
    out = []
    for k, v in config.items():
        out.append(prefix + k)
        if isinstance(v, ml_collections.ConfigDict):
            out.extend(_keys(v, prefix + k + "."))
    return out


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A copy of `config` with dotted-path overrides; string values are parsed (see `parse_value`)."""
    c = ml_collections.ConfigDict(config.to_dict())
    known = _keys(c)
    for path, raw in overrides.items():
        *parents, leaf = path.split(".")
        node = c
        try:
            for p in parents:
                node = node[p]
            current = node[leaf]
        except (KeyError, AttributeError, TypeError):
            close = difflib.get_close_matches(path, known, n=1)
            raise ConfigFileError(f"unknown config key {path!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        try:
            value = parse_value(raw, current) if isinstance(raw, str) else raw
        except ConfigFileError as e:
            raise ConfigFileError(f"--config.{path}: {e}") from None
        node[leaf] = value
    return c


def split_overrides(argv: List[str], prefix: str = "--config.") -> Tuple[List[str], Dict[str, str]]:
    """(remaining argv, {key: text}) with every `--config.KEY=VALUE` / `--config.KEY VALUE` taken out."""
    rest, overrides = [], {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if token.startswith(prefix):
            key, eq, value = token[len(prefix):].partition("=")
            if not eq:
                if i + 1 >= len(argv):
                    raise ConfigFileError(f"{token}: missing value")
                value = argv[i + 1]
                i += 1
            overrides[key] = value
        else:
            rest.append(token)
        i += 1
    return rest, overrides
