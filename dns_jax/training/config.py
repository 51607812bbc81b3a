"""Default training configurations (the official DnS defaults) and their validation.

`configs/<job>.py` files call `default_config(network)`; every field can be overridden from the
command line (`--config.learning_rate=1e-5`). Empty strings and -1 mean "not set", so that absl can
override them with a value of the same type.
"""
from __future__ import annotations

import difflib
from typing import List

import ml_collections

STUDENTS = ("fg_att_student", "fg_bin_student", "fg_student", "cg_student")
NETWORKS = STUDENTS + ("selector",)


class ConfigError(ValueError):
    """A training configuration that cannot be run (unknown key, bad value)."""


def _model_config(network: str) -> ml_collections.ConfigDict:
    """Constructor options of `dns_jax.pretrained.build_module(network, ...)` (official defaults).
    `precision` of the matmuls: 'highest' (float32, as the official code) or 'default' (faster
    TF32/bf16 passes on GPU/TPU)."""
    cfg = _model_options(network)
    cfg["precision"] = "highest"
    return ml_collections.ConfigDict(cfg)


def _model_options(network: str) -> dict:
    if network in ("fg_att_student", "fg_bin_student", "fg_student"):
        indexing = {"fg_att_student": "att", "fg_bin_student": "bin", "fg_student": "none"}[network]
        cfg = dict(dims=512, indexing=indexing)
        if indexing == "bin":
            cfg["bits"] = 512   # 0: as many bits as dims
        return cfg
    if network == "cg_student":
        return dict(
            dims=512, attention=True, transformer=True, transformer_heads=8,
            transformer_feedforward_dims=2048, transformer_layers=1, netvlad=True,
            netvlad_clusters=64, netvlad_outdims=1024)
    if network == "selector":
        return dict(dims=512, hidden_size=100, num_layers=1)
    raise ConfigError(f"unknown network {network!r}; expected one of {', '.join(NETWORKS)}")


def default_config(network: str) -> ml_collections.ConfigDict:
    """The full training configuration of `network` with the official defaults."""
    if network not in NETWORKS:
        raise ConfigError(f"unknown network {network!r}; expected one of {', '.join(NETWORKS)}")
    is_selector = network == "selector"
    c = ml_collections.ConfigDict()
    c.network = network
    c.model = _model_config(network)

    # -- data ---------------------------------------------------------------------------------
    # 'synthetic': a generated collection with teacher similarities from ViSiL (no data needed);
    # 'features': region features in `features` (HDF5 as the official files, .npz, or a folder of
    # .npy) with the pair file `pairs` (or, when empty, pairs computed by `teacher`).
    c.dataset = "synthetic"
    c.features = ""
    c.pairs = ""
    # Teacher for pair files computed here: 'visil_f' (no weights), a .pth file ('visil:/x.pth'),
    # or a training workdir / checkpoint directory (iterative distillation: a trained FG-Att student).
    c.teacher = "visil_f"
    c.trainset_percentage = 100.0
    # More missing videos than this fraction of a pair file's index is an error (wrong feature file?).
    c.max_missing_fraction = 0.5
    c.augmentation = not is_selector
    c.max_augmented_frames = 300
    # Videos are zero-padded to the smallest bucket that fits the longest one of the batch (longer
    # batches: a multiple of the last bucket), so only a few shapes are ever compiled.
    c.length_buckets = (16, 32, 64, 128, 192, 256, 320)
    c.num_threads = 2          # grain reader threads (batches stay deterministic whatever the count)
    c.prefetch = 2             # batches prepared ahead of the train step (plus one per thread)

    c.synthetic = ml_collections.ConfigDict(dict(
        num_families=48, family_size=4, num_distractors=64, min_frames=8, max_frames=24,
        regions=9, dims=512, noise=0.35, seed=0, holdout_families=8))

    c.teacher_job = ml_collections.ConfigDict(dict(
        num_candidates=64,      # per query, pre-ranked by a global descriptor, scored by the teacher
        num_positives=8,        # highest-scored candidates kept as positives
        positive_threshold=-1.0,  # ... if their teacher similarity is at least this
        num_negatives=16,       # random non-candidates, scored by the teacher
        batch_size=64,          # pairs per teacher call
    ))

    # -- selector data (official train_selector.py) -------------------------------------------
    c.selector = ml_collections.ConfigDict(dict(
        fine_pairs="",          # pair file with fine-student similarities (raw, [-1, 1])
        coarse_pairs="",        # pair file with coarse-student similarities (cosine)
        threshold=0.2,
        pairs_per_class=5000,
        val_size=0.03,
    ))

    # -- optimisation --------------------------------------------------------------------------
    c.batch_size = 64 if is_selector else 32   # pairs (selector) / triplets (students: 64 pairs)
    c.num_epochs = 100 if is_selector else 300
    c.num_train_steps = -1                     # > 0: stop after this many steps instead
    c.learning_rate = 1e-5 if network == "cg_student" else 1e-4
    c.weight_decay = 0.0                       # torch Adam semantics (L2 added to the gradient)
    c.r_parameter = 1e-3 if network.startswith("fg_") else 0.0
    c.seed = 0
    # Initialise from trained weights (a .pth of this network or a checkpoint directory) instead of
    # at random, e.g. to fine-tune a published student.
    c.init_from = ""

    # -- bookkeeping ---------------------------------------------------------------------------
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    c.log_every_steps = 50
    c.progress_bar = True

    # -- validation ----------------------------------------------------------------------------
    # '' (none), 'synthetic' (held-out synthetic families: mAP and agreement with the teacher),
    # 'fivr5k' (FIVR-5K features in validation.features), 'selector' (the held-out split).
    c.validation = ml_collections.ConfigDict(dict(
        dataset="selector" if is_selector else "",
        features="",
        # '' picks: DSVR (fivr5k), spearman (synthetic), accuracy (selector)
        metric="",
        every_steps=-1,          # -1: once per epoch
        batch_size=32,           # pairs per similarity call
    ))

    # -- multi-host ----------------------------------------------------------------------------
    c.distributed = ml_collections.ConfigDict(dict(
        initialize=False, coordinator_address="", num_processes=-1, process_id=-1))
    return c


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

