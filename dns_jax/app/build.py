"""`dns-jax build`: a folder of videos -> a searchable DnS index, offline, no pretrained DnS weights.

Stages (each resumable; a finished stage is recorded in WORK/state.json and skipped on a rerun):

1. features  frame features of every video (real ResNet-50 if given, else the offline backbone)
2. pca       PCA whitening fitted on the collection (skipped when an official PCA file is given)
3. whiten    whitened, L2-normalised `dims`-d features, the input of every DnS network
4. teacher   training pairs scored by a teacher that needs no weights (ViSiL_f: frame-level Chamfer
             of region Chamfer similarities, no comparator) or by a given teacher
5. fine      FG-Att student distilled from the teacher
6. coarse    CG student distilled from the teacher, with the small-collection recipe of
             dns_jax.app.coarse_recipe (identity Transformer residuals and a PCA NetVLAD reduction
             at initialisation, teacher scores spread against the collection's background)
7. selector  selector trained on where the coarse student disagrees with the fine one (the fine
             scores spread onto the CG scale first when the CG student was trained that way)
8. index     the DnS index of the collection

Networks the user supplies (`--fine`, `--coarse`, `--selector`: .pth or checkpoint) replace the
corresponding training stage.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from dns_jax import pretrained
from dns_jax.app import coarse_recipe
from dns_jax.app.coarse_recipe import fit_spread, spread_scores
from dns_jax.app.workdir import Workdir
from dns_jax.config_files import apply_overrides, load_config
from dns_jax.datasets.stores import hdf5_dataset_paths, open_features
from dns_jax.features import load_extractor
from dns_jax.features.extract_folder import extract_to_hdf5, list_videos
from dns_jax.features.offline import OPENNSFW
from dns_jax.features.pca import apply_whitening, fit_pca_hdf5, whitening_matrices
from dns_jax.fileio import atomic_savez
from dns_jax.index import Index, build_index
from dns_jax.models import registry
from dns_jax.training import default_config, train_and_evaluate
from dns_jax.training.pairs import PairSet, read_pairs, write_pairs
from dns_jax.training.scoring import PairScorer
from dns_jax.training.teacher import select_pairs, teacher_scorer

OFFLINE_BACKBONE = OPENNSFW
STAGES = ("features", "pca", "whiten", "teacher", "fine", "coarse", "selector", "index")


@dataclasses.dataclass
class BuildOptions:
    """What `dns-jax build` is asked to do. Fields left at None take their value from the recipe
    (`recipe`, a file of configs/ such as 'build' or 'build:demo'; see configs/build.py)."""

    videos: str
    workdir: str
    backbone: Optional[str] = None      # torchvision ResNet-50 .pth; None: the offline backbone
    pca: Optional[str] = None           # official PCA file; None: fitted on the collection
    dims: Optional[int] = None
    teacher: Optional[str] = None
    fine: Optional[str] = None          # given networks skip their training stage
    coarse: Optional[str] = None
    selector: Optional[str] = None
    fine_steps: Optional[int] = None
    coarse_steps: Optional[int] = None
    selector_steps: Optional[int] = None
    batch_size: Optional[int] = None
    coarse_model: Optional[Dict] = None     # CG student options over the recipe's (e.g. a smaller NetVLAD)
    seed: Optional[int] = None
    progress: bool = True
    recipe: str = "build"

    def config(self):
        """The recipe with this build's options written over it."""
        c = load_config(self.recipe)
        for value, key in ((self.dims, "features.dims"), (self.teacher, "teacher"), (self.seed, "seed"),
                           (self.batch_size, "batch_size"), (self.fine_steps, "fine.steps"),
                           (self.coarse_steps, "coarse.steps"), (self.selector_steps, "selector.steps")):
            if value is not None:
                c = apply_overrides(c, {key: value})
        if self.coarse_model:
            c = apply_overrides(c, {f"coarse.model.{k}": v for k, v in self.coarse_model.items()})
        return c

    def settings(self) -> Dict:
        """What decides the content of the work directory (a resume must not change it)."""
        c = self.config()
        return {"videos": os.path.abspath(self.videos), "backbone": self.backbone or c.features.backbone,
                "pca": self.pca, "dims": c.features.dims, "teacher": c.teacher, "seed": c.seed,
                "coarse_model": c.coarse.model.to_dict()}


class BuildInterrupted(RuntimeError):
    """A training stage was stopped (SIGTERM/SIGINT) after saving its checkpoint: the stage is not
    marked done, and rerunning the same command resumes it from that checkpoint."""


class BuildError(ValueError):
    """A collection that cannot be built (no videos, too few to train on, ...)."""


def _log_fn(progress: bool) -> Callable[[str], None]:
    return print if progress else (lambda *_: None)


# ---------------------------------------------------------------------------------------------
# stages

def stage_features(opts: BuildOptions, rc, wd: Workdir, log) -> Dict:

    if not os.path.isdir(opts.videos):
        raise BuildError(f"--videos {opts.videos!r} is not a directory")
    videos = list_videos(opts.videos)
    if not videos:
        raise BuildError(f"no video files found under {opts.videos!r}")
    os.makedirs(os.path.dirname(wd.raw_features), exist_ok=True)
    backbone = opts.backbone or OFFLINE_BACKBONE
    if opts.backbone is None:
        log(f"features: offline backbone {OFFLINE_BACKBONE} (1920-d regions; not the features of the "
            "published DnS networks, which need torchvision's ResNet-50 and the official PCA)")
    extractor = load_extractor(backbone, None)
    summary = extract_to_hdf5(videos, wd.raw_features, extractor, settings={"backbone": backbone},
                              progress=opts.progress, log=log)
    return {"videos": len(videos), "extracted": summary.extracted + summary.skipped,
            "failed": [[v, p, m] for v, p, m in summary.failed]}


def _dataset_names(path: str) -> List[str]:
    """Every dataset of an HDF5 file by its path, sorted (the whitening order)."""
    import h5py
    with h5py.File(path, "r") as h5:
        return sorted(hdf5_dataset_paths(h5))


def stage_pca(opts: BuildOptions, rc, wd: Workdir, log) -> Dict:

    if opts.pca:
        return {"pca": os.path.abspath(opts.pca), "fitted": False}
    pca = fit_pca_hdf5(wd.raw_features, progress=False)
    n = int(pca.get("count", 0)) if isinstance(pca, dict) else 0
    atomic_savez(wd.pca, **{k: np.asarray(v) for k, v in pca.items()})
    log(f"pca: whitening fitted on the collection's region vectors{f' ({n})' if n else ''}")
    return {"pca": wd.pca, "fitted": True}


def stage_whiten(opts: BuildOptions, rc, wd: Workdir, log) -> Dict:
    import h5py

    pca_source = opts.pca or wd.pca
    mean, dvt = whitening_matrices(pca_source, rc.features.dims)
    names = _dataset_names(wd.raw_features)
    tmp = wd.features + ".tmp"
    regions = 0
    with h5py.File(wd.raw_features, "r") as src, h5py.File(tmp, "w") as dst:
        for name in names:
            x = src[name][:]
            regions += int(np.prod(x.shape[:-1]))
            dst.create_dataset(name, data=apply_whitening(x, mean, dvt))
    os.replace(tmp, wd.features)
    log(f"whiten: {len(names)} videos -> {dvt.shape[1]}-d features in {wd.features}")
    if not opts.pca and regions < 2 * dvt.shape[1]:
        log(f"whiten: WARNING only {regions} region vectors for a {dvt.shape[1]}-d whitening fitted on "
            f"them: whitened videos become nearly equidistant; use --dims {max(32, regions // 4 // 32 * 32)} "
            "or fewer for a collection this small")
    return {"videos": len(names), "dims": int(dvt.shape[1])}


def _store(wd: Workdir):
    return open_features(wd.features)


def stage_teacher(opts: BuildOptions, rc, wd: Workdir, log) -> Dict:

    store = _store(wd)
    n = len(store.ids())
    if n < rc.min_videos:
        raise BuildError(f"only {n} usable videos: at least {rc.min_videos} are needed to train the students "
                         "(or give trained networks with --fine/--coarse/--selector)")
    job = rc.teacher_job
    scorer = teacher_scorer(rc.teacher, dims=rc.features.dims, batch_size=job.batch_size)
    pairs = select_pairs(store, scorer, None, num_candidates=min(job.num_candidates, n - 1),
                         num_positives=job.num_positives,
                         num_negatives=min(job.num_negatives, max(n - 5, 0)), seed=rc.seed, log=log)
    os.makedirs(os.path.dirname(wd.pairs("teacher")), exist_ok=True)
    write_pairs(pairs, wd.pairs("teacher"))
    return {"pairs": pairs.num_pairs(), "teacher": rc.teacher}


def _train(network: str, wd: Workdir, opts: BuildOptions, rc, steps: int, extra: Dict) -> str:
    cfg = default_config(network)
    cfg.dataset = "features"
    cfg.features = wd.features
    cfg.num_train_steps = steps
    cfg.batch_size = rc.batch_size
    cfg.seed = rc.seed
    cfg.checkpoint_every_steps = max(rc.min_checkpoint_every, steps // rc.checkpoint_fraction)
    cfg.log_every_steps = max(rc.min_log_every, steps // rc.log_fraction)
    cfg.progress_bar = opts.progress
    cfg.model.dims = rc.features.dims
    for key, value in extra.items():
        target = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    result = train_and_evaluate(cfg, wd.model(network))
    if result.preempted:
        raise BuildInterrupted(f"training of {network} stopped at step {result.step} of {steps} "
                               f"(checkpoint saved in {wd.model(network)}); rerun the same command to resume")
    return wd.model(network)


def stage_fine(opts: BuildOptions, rc, wd: Workdir, log) -> Dict:
    if opts.fine:
        return {"network": _given("fine", opts.fine), "path": os.path.abspath(opts.fine), "trained": False}
    network = rc.fine.network
    log(f"fine: distilling the {registry.get(network).label} student ({rc.fine.steps} steps)")
    path = _train(network, wd, opts, rc, rc.fine.steps,
                  {"pairs": wd.pairs("teacher"), "learning_rate": rc.fine.learning_rate})
    return {"network": network, "path": path, "trained": True}


def stage_coarse(opts: BuildOptions, rc, wd: Workdir, log) -> Dict:
    if opts.coarse:
        return {"network": "cg_student", "path": os.path.abspath(opts.coarse), "trained": False}
    model = dict(default_config("cg_student").model.to_dict(), dims=rc.features.dims, **rc.coarse.model.to_dict())
    pairs, init, targets = coarse_recipe.prepare(wd.pairs("teacher"), wd.features, model, wd.path("coarse_init"),
                                                 seed=rc.seed, max_videos=rc.coarse.init_max_videos,
                                                 floor=rc.coarse.spread_floor, log=log)
    log(f"coarse: distilling the CG student ({rc.coarse.steps} steps)")
    extra = {"pairs": pairs, "init_from": init, "learning_rate": rc.coarse.learning_rate}
    extra.update({f"model.{k}": v for k, v in rc.coarse.model.items()})
    path = _train("cg_student", wd, opts, rc, rc.coarse.steps, extra)
    # `targets`: how teacher-scale similarities map to this student's cosines (DnS mixes the two)
    return {"network": "cg_student", "path": path, "trained": True, "targets": targets}


def _given(kind: str, path: str) -> str:
    allowed = {"fine": registry.FINE, "coarse": ("cg_student",), "selector": ("selector",)}[kind]
    try:
        return registry.resolve_spec(path, allowed, role=f"--{kind}")[0]
    except registry.NetworkSpecError as e:
        raise BuildError(str(e)) from None


def load_networks(wd: Workdir):
    """(fine, coarse, selector) wrappers of a built work directory."""
    nets = []
    for stage in ("fine", "coarse", "selector"):
        info = wd.require(stage)
        nets.append(pretrained.load(info["network"], info["path"]))
    return tuple(nets)


def _student_pairs(wd: Workdir, model, name: str, spread: bool = False) -> Tuple[str, Optional[Dict]]:
    """The teacher's training pairs re-scored by a trained student (the selector's inputs) ->
    (pair file, spread parameters or None). `spread`: the scores are put on the scale of a CG
    student trained on spread targets (coarse_recipe.fit_spread on this student's own scores) and
    stored as 2 * spread(s) - 1, so that the selector's s / 2 + 0.5 compares them on that scale."""

    teacher = read_pairs(wd.pairs("teacher"))
    all_pairs = teacher.all_pairs()
    scorer = PairScorer(model.name, model.module, model.variables, batch_size=64)
    sims = scorer.score(_store(wd), [(teacher.index[q], teacher.index[t]) for q, t, _, _ in all_pairs])
    params = None
    if spread:
        params = fit_spread(sims)
        sims = 2.0 * spread_scores(sims, params) - 1.0
    pairs: Dict[int, Dict] = {}
    for (q, t, _, positive), s in zip(all_pairs, sims.tolist()):
        pairs.setdefault(q, {"positives": {}, "negatives": {}})["positives" if positive else "negatives"][t] = s
    write_pairs(PairSet(list(teacher.index), pairs, {"scored_by": model.name, "spread": params}), wd.pairs(name))
    return wd.pairs(name), params


def stage_selector(opts: BuildOptions, rc, wd: Workdir, log) -> Dict:
    if opts.selector:
        return {"network": "selector", "path": os.path.abspath(opts.selector), "trained": False}
    fine_info, coarse_info = wd.require("fine"), wd.require("coarse")
    fine = pretrained.load(fine_info["network"], fine_info["path"])
    coarse = pretrained.load(coarse_info["network"], coarse_info["path"])
    log("selector: scoring the training pairs with both students")
    # a CG student trained on spread targets: the fine scores are compared on its scale
    fine_pairs, fine_spread = _student_pairs(wd, fine, "fine", spread=bool(coarse_info.get("targets")))
    coarse_pairs, _ = _student_pairs(wd, coarse, "coarse")
    log(f"selector: training ({rc.selector.steps} steps)")
    path = _train("selector", wd, opts, rc, rc.selector.steps,
                  {"selector.fine_pairs": fine_pairs, "selector.coarse_pairs": coarse_pairs,
                   "selector.pairs_per_class": rc.selector.pairs_per_class,
                   "selector.threshold": rc.selector.threshold, "learning_rate": rc.selector.learning_rate})
    # `fine_spread`: how DnS puts the fine student's scores on the CG scale (None: official s/2+0.5)
    return {"network": "selector", "path": path, "trained": True, "fine_spread": fine_spread}


def stage_index(opts: BuildOptions, rc, wd: Workdir, log) -> Dict:

    fine, coarse, selector = load_networks(wd)
    report = build_index(wd.index, [wd.features], fine, coarse, selector, progress=opts.progress, log=log)
    return {"videos": len(Index.open(wd.index)), "report": str(report)}


_STAGE_FNS = {"features": stage_features, "pca": stage_pca, "whiten": stage_whiten,
              "teacher": stage_teacher, "fine": stage_fine, "coarse": stage_coarse,
              "selector": stage_selector, "index": stage_index}


def run_build(opts: BuildOptions, stages=STAGES) -> Dict:
    """Run (or resume) every stage; returns {stage: info} and prints a summary."""
    log = _log_fn(opts.progress)
    rc = opts.config()
    wd = Workdir(opts.workdir)
    wd.check_settings(opts.settings())
    timings = {}
    for stage in stages:
        if wd.done(stage):
            log(f"[{stage}] already done, skipping")
            continue
        if stage == "teacher" and opts.fine and opts.coarse and opts.selector:
            wd.mark_done(stage, {"skipped": "all networks given"})
            continue
        t0 = time.time()
        log(f"[{stage}] ...")
        info = _STAGE_FNS[stage](opts, rc, wd, log)
        timings[stage] = time.time() - t0
        info = dict(info, seconds=round(timings[stage], 1))
        wd.mark_done(stage, info)
    state = wd.read_state()["done"]
    _print_summary(state, log)
    return state


def _print_summary(done: Dict, log) -> None:
    log("\nbuild summary")
    for stage in STAGES:
        info = done.get(stage)
        if info is None:
            log(f"  {stage:9s} not done")
            continue
        parts = {k: v for k, v in info.items() if k not in ("report", "failed")} if isinstance(info, dict) else {}
        log(f"  {stage:9s} " + ", ".join(f"{k}={v}" for k, v in parts.items()))
        if isinstance(info, dict) and info.get("failed"):
            log(f"            skipped {len(info['failed'])} unreadable video(s):")
            for vid, path, msg in info["failed"]:
                log(f"              {vid}: {msg}")
