"""`dns-jax build`: a folder of videos -> a searchable DnS index, offline, no pretrained DnS weights.

Stages (each resumable; a finished stage is recorded in WORK/state.json and skipped on a rerun):

1. features  frame features of every video (real ResNet-50 if given, else the offline backbone)
2. pca       PCA whitening fitted on the collection (skipped when an official PCA file is given)
3. whiten    whitened, L2-normalised `dims`-d features, the input of every DnS network
4. teacher   training pairs scored by a teacher that needs no weights (ViSiL_f: frame-level Chamfer
             of region Chamfer similarities, no comparator) or by a given teacher
5. fine      FG-Att student distilled from the teacher
6. coarse    CG student distilled from the teacher on its scores spread against the collection's
             background (dns_jax.app.coarse_recipe): by default region vectors (`coarse.kind=
             'region_max'`: the 9 regions averaged over each of `coarse.segments` (3) stretches of
             the video, the best vector pair as the score), or the official one vector per video
             ('netvlad', started as mean pooling)
7. selector  selector trained on where the coarse student disagrees with the fine one (the fine
             scores spread onto the CG scale first when the CG student was trained that way)
8. index     the DnS index of the collection

Networks the user supplies (`--fine`, `--coarse`, `--selector`: .pth or checkpoint) replace the
corresponding training stage. With `ray` (`--ray [ADDRESS]`) the features and index stages run on
a Ray cluster (dns_jax.distributed: the same features and index, resumable, failed videos listed);
the training stages stay in this process.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import time
from typing import Callable, Dict, List, Optional, Tuple

import jax
import numpy as np

from dns_jax import checkpoint, pretrained
from dns_jax.app import coarse_recipe
from dns_jax.app.coarse_recipe import fit_quantile_map, fit_spread, spread_scores
from dns_jax.app.s2vs_teacher import TeacherInterrupted, train_s2vs_teacher
from dns_jax.app.sources import SourceChanges, current_files, diff, video_id_of
from dns_jax.app.summary import format_build_summary
from dns_jax.app.workdir import Workdir, WorkdirError
from dns_jax.config_files import apply_overrides, load_config
from dns_jax.datasets.stores import hdf5_dataset_paths, open_features
from dns_jax.distributed import extract_features_ray, index_ray
from dns_jax.distributed.extraction import staged_feature_parts
from dns_jax.features import load_extractor
from dns_jax.features.extract_folder import extract_to_hdf5, list_videos
from dns_jax.features.offline import OPENNSFW
from dns_jax.features.pca import apply_whitening, auto_shrink, fit_pca_hdf5, parse_shrink, whitening_matrices
from dns_jax.fileio import JobInterrupted, atomic_savez
from dns_jax.index import Index, build_index, compressed, staged_parts
from dns_jax.index.build import update_coarse_search
from dns_jax.models import registry
from dns_jax.models.chamfer_start import chamfer_start
from dns_jax.training import default_config, train_and_evaluate
from dns_jax.training.metric_writers import read_jsonl
from dns_jax.training.pairs import PairSet, read_pairs, selector_labels, write_pairs
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
    whitening_shrink: Optional[str] = None   # 'auto' or a number >= 0 as text (features.whitening_shrink)
    coarse_kind: Optional[str] = None   # 'region_max' or 'netvlad' (coarse.kind)
    coarse_segments: Optional[int] = None   # region_max: stretches of the video (coarse.segments)
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
    reset: Optional[str] = None         # forget this stage and the later ones, build them again
    retrain: bool = False               # train the networks again (from the PCA fit on)
    auto_retrain: bool = True           # retrain when the collection grew past RETRAIN_GROWTH (build only)
    ray: Optional[str] = None           # extract and index on Ray: '' a local cluster, else its address
    workers: Optional[int] = None       # Ray network actors (default: one per GPU, else per CPU slot)
    cpus: Optional[int] = None          # CPUs of the local Ray cluster (default: all)
    coarse_search: Optional[str] = None  # 'exact' / 'faiss-ivfpq' (index/compressed.py); None: as before

    def config(self):
        """The recipe with this build's options written over it."""
        c = load_config(self.recipe)
        for value, key in ((self.dims, "features.dims"), (self.whitening_shrink, "features.whitening_shrink"),
                           (self.coarse_kind, "coarse.kind"), (self.coarse_segments, "coarse.segments"),
                           (self.teacher, "teacher"), (self.seed, "seed"),
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


class BuildInterrupted(JobInterrupted):
    """A training stage was stopped (SIGTERM/SIGINT) after saving its checkpoint: the stage is not
    marked done, and rerunning the same command resumes it from that checkpoint."""


class BuildError(ValueError):
    """A collection that cannot be built (no videos, too few to train on, ...)."""


def _log_fn(progress: bool) -> Callable[[str], None]:
    return print if progress else (lambda *_: None)


# ---------------------------------------------------------------------------------------------
# stages

def _extractor(opts: BuildOptions, rc, log):
    backbone = opts.backbone or rc.features.backbone
    if opts.backbone is None:
        log(f"features: offline backbone {backbone} (1920-d regions; not the features of the "
            "published DnS networks, which need torchvision's ResNet-50 and the official PCA)")
    return backbone, load_extractor(backbone, None)


def stage_features(opts: BuildOptions, rc, wd: Workdir, log, changes: SourceChanges) -> Dict:
    """Extract the videos that are new, changed or fixed since the last build (every video on the
    first build); record each file's signature and whether it failed."""
    if not changes.current:
        raise BuildError(f"no video files found under {opts.videos!r}")
    todo = changes.to_extract
    state = wd.read_state()
    sources = state.get("sources", {})
    failed = []
    if todo:
        os.makedirs(os.path.dirname(wd.raw_features), exist_ok=True)
        backbone, extractor = _extractor(opts, rc, log)
        load_kwargs = {"fps": rc.features.fps, "rs_size": rc.features.rs_size, "cc_size": rc.features.cc_size}
        extract = extract_to_hdf5 if opts.ray is None else _on_ray(extract_features_ray, opts)
        summary = extract(todo, wd.raw_features, extractor, settings={"backbone": backbone},
                          load_kwargs=load_kwargs, progress=opts.progress, log=log)
        failed = [[v, wd.relative(p), m] for v, p, m in summary.failed]
    bad = {v: m for v, _, m in failed}
    for vid, path in todo:
        sources[vid] = dict(changes.signatures[vid], path=wd.relative(path),
                            status="failed" if vid in bad else "ok", **({"error": bad[vid]} if vid in bad else {}))
    for vid in changes.removed:
        sources.pop(vid, None)
    state = wd.read_state()
    state["sources"] = sources
    wd.write_state(state)
    all_failed = [[v, r["path"], r.get("error", "")] for v, r in sorted(sources.items()) if r.get("status") == "failed"]
    return {"videos": len(changes.current), "extracted": len(changes.current) - len(all_failed),
            "failed": all_failed, "last_update": changes.describe()}


def _on_ray(fn, opts: BuildOptions):
    """`fn` (extract_features_ray, index_ray) with the build's Ray options."""
    return functools.partial(fn, address=opts.ray or None, workers=opts.workers, num_cpus=opts.cpus)


def _dataset_names(path: str) -> List[str]:
    """Every dataset of an HDF5 file by its path, sorted (the whitening order)."""
    import h5py
    with h5py.File(path, "r") as h5:
        return sorted(hdf5_dataset_paths(h5))


def stage_pca(opts: BuildOptions, rc, wd: Workdir, log, changes: SourceChanges) -> Dict:

    if opts.pca:
        return {"pca": os.path.abspath(opts.pca), "fitted": False}
    if os.path.exists(wd.features):         # a refit whitens every video again
        os.remove(wd.features)
    shrink_setting = whitening_shrink(rc.features.whitening_shrink)
    pca = fit_pca_hdf5(wd.raw_features, progress=False)
    frames = _frame_count(wd.raw_features)
    shrink = auto_shrink(rc.features.dims, frames) if shrink_setting == "auto" else shrink_setting
    atomic_savez(wd.pca, **{k: np.asarray(v) for k, v in pca.items()}, shrink=np.float64(shrink))
    log(f"pca: whitening fitted on the region vectors of {frames} frames, eigenvalues shrunk by "
        f"{shrink:.3g} x their mean (features.whitening_shrink={shrink_setting!r})")
    return {"pca": wd.pca, "fitted": True, "frames": frames, "shrink": round(shrink, 6)}


def whitening_shrink(value):
    """The recipe's `features.whitening_shrink`: 'auto' (dims / frames of the fit) or a number >= 0."""
    try:
        return parse_shrink(value, "features.whitening_shrink", allow_auto=True)
    except ValueError as e:
        raise BuildError(str(e)) from None


def _frame_count(path: str) -> int:
    """Frames (first axis) summed over every dataset of an HDF5 feature file."""
    import h5py
    with h5py.File(path, "r") as h5:
        return int(sum(h5[n].shape[0] for n in hdf5_dataset_paths(h5)))


def stage_whiten(opts: BuildOptions, rc, wd: Workdir, log, changes: SourceChanges) -> Dict:
    """Whitened features of every extracted video not whitened yet (all of them the first time)."""
    import h5py

    pca_source = opts.pca or wd.pca
    mean, dvt = whitening_matrices(pca_source, rc.features.dims)
    names = _dataset_names(wd.raw_features)
    regions = 0
    with h5py.File(wd.raw_features, "r") as src, h5py.File(wd.features, "a") as dst:
        have = set(hdf5_dataset_paths(dst))
        todo = [n for n in names if n not in have]
        for name in todo:
            x = src[name][:]
            regions += int(np.prod(x.shape[:-1]))
            tmp = f"{name}.__partial__"
            if tmp in dst:
                del dst[tmp]
            dst.create_dataset(tmp, data=apply_whitening(x, mean, dvt))
            dst.move(tmp, name)             # the id exists only once its features are complete
            dst.flush()
    log(f"whiten: {len(todo)} videos -> {dvt.shape[1]}-d features in {wd.features}")
    first = not wd.done("whiten")
    if first and not opts.pca and regions < 2 * dvt.shape[1]:
        log(f"whiten: WARNING only {regions} region vectors for a {dvt.shape[1]}-d whitening fitted on "
            f"them: whitened videos become nearly equidistant; use --dims {max(32, regions // 4 // 32 * 32)} "
            "or fewer for a collection this small")
    return {"videos": len(names), "dims": int(dvt.shape[1])}


def _store(wd: Workdir):
    return open_features(wd.features)


def stage_teacher(opts: BuildOptions, rc, wd: Workdir, log, changes: SourceChanges) -> Dict:

    store = _store(wd)
    n = len(store.ids())
    if n < rc.min_videos:
        raise BuildError(f"only {n} usable videos: at least {rc.min_videos} are needed to train the students "
                         "(or give trained networks with --fine/--coarse/--selector)")
    job = rc.teacher_job
    teacher = rc.teacher
    if teacher == SELF_SUPERVISED_TEACHER:
        teacher = f"s2vs:{train_collection_teacher(opts, rc, wd, log)}"
    scorer = teacher_scorer(teacher, dims=rc.features.dims, batch_size=job.batch_size)
    pairs = select_pairs(store, scorer, None, num_candidates=min(job.num_candidates, n - 1),
                         num_positives=job.num_positives,
                         num_negatives=min(job.num_negatives, max(n - 5, 0)), seed=rc.seed, log=log)
    os.makedirs(os.path.dirname(wd.pairs("teacher")), exist_ok=True)
    write_pairs(pairs, wd.pairs("teacher"))
    return {"pairs": pairs.num_pairs(), "teacher": rc.teacher, "videos": n}


SELF_SUPERVISED_TEACHER = "s2vs"     # --teacher s2vs: an S2VS network trained on the collection itself


def train_collection_teacher(opts: BuildOptions, rc, wd: Workdir, log) -> str:
    """Train S2VS self-supervised on the collection's own videos (no labels, no downloaded
    weights) with the build's backbone and whitening; returns its checkpoint directory."""
    sources = wd.read_state().get("sources", {})
    videos = [(vid, wd.resolve(rec["path"])) for vid, rec in sorted(sources.items()) if rec.get("status") == "ok"]
    log(f"teacher: training S2VS self-supervised on the {len(videos)} videos of the collection")
    try:
        return train_s2vs_teacher(videos, wd.features, wd.model("s2vs_teacher"), recipe=rc.s2vs.to_dict() or None,
                                  seed=rc.seed, progress=opts.progress, log=log,
                                  backbone=opts.backbone or rc.features.backbone,
                                  pca=opts.pca or (wd.pca if os.path.exists(wd.pca) else None))
    except TeacherInterrupted as e:
        raise BuildInterrupted(f"{e}; rerun the same command to resume") from None


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
    losses = [h["loss"] for h in read_jsonl(wd.model(network)) if "loss" in h]
    keep_parameters_only(network, wd.model(network))
    how = {"steps": int(result.step)}
    if losses:
        how.update(first_loss=round(float(losses[0]), 4), loss=round(float(losses[-1]), 4))
    if result.validation:
        how["validation"] = {k: round(float(v), 4) for k, v in result.validation.items()}
    return wd.model(network), how


def keep_parameters_only(network: str, directory: str) -> None:
    """Replace a finished training work directory (optimizer state, data iterator, several steps)
    by a checkpoint of the network's variables alone: a fraction of the size, loaded the same way."""
    model = pretrained.load(network, directory)
    tmp, old = directory + ".params-tmp", directory + ".training-old"
    shutil.rmtree(tmp, ignore_errors=True)
    checkpoint.save_network(tmp, network, model.config, model.variables)
    metrics = os.path.join(directory, "metrics.jsonl")      # the training curve stays with the network
    if os.path.exists(metrics):
        shutil.copy(metrics, os.path.join(tmp, "metrics.jsonl"))
    shutil.rmtree(old, ignore_errors=True)
    os.rename(directory, old)
    os.rename(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


def stage_fine(opts: BuildOptions, rc, wd: Workdir, log, changes: SourceChanges) -> Dict:
    if opts.fine:
        return {"network": _given("fine", opts.fine), "path": os.path.abspath(opts.fine), "trained": False}
    network = rc.fine.network
    extra = {"pairs": wd.pairs("teacher"), "learning_rate": rc.fine.learning_rate}
    start = fine_start_from_teacher(wd, rc, network, log) if rc.fine.get("init", "random") == "teacher" else None
    if start:
        extra["init_from"] = start
    log(f"fine: distilling the {registry.get(network).label} student ({rc.fine.steps} steps)")
    path, how = _train(network, wd, opts, rc, rc.fine.steps, extra)
    return {"network": network, "path": path, "trained": True, "started_as_teacher": bool(start), **how}


def fine_start_from_teacher(wd: Workdir, rc, network: str, log) -> Optional[str]:
    """A checkpoint of the fine student that starts as its teacher (`fine.init='teacher'`), or None
    (the random start). The S2VS network is the FG-Att student's network, so a student distilled from
    an S2VS teacher (trained on the collection, or given) starts with that teacher's weights; a
    student of the weightless ViSiL_f starts as the FG-Att network that computes ViSiL_f (on 4x4
    frame blocks, `models.chamfer_start`). Another teacher network, or weights of another shape,
    leave the random start."""
    spec = f"s2vs:{wd.model('s2vs_teacher')}" if rc.teacher == SELF_SUPERVISED_TEACHER else rc.teacher
    name, teacher = pretrained.load_teacher(spec, dims=rc.features.dims)
    if name not in ("s2vs", "visil_f") or network != "fg_att_student":
        return None
    config = dict(default_config(network).model.to_dict(), dims=rc.features.dims)
    module = registry.build_module(network, config)
    if name == "visil_f":
        random_start = module.init(jax.random.PRNGKey(rc.seed), method="init_all")
        variables = chamfer_start(random_start, rc.fine.get("init_noise", 0.1))
        how = "the FG-Att network computing ViSiL_f on 4x4 frame blocks"
    else:
        variables = dict(teacher.variables)
        want = registry.abstract_variables(module)
        shapes = lambda tree: jax.tree_util.tree_map(lambda a: tuple(a.shape), tree)      # noqa: E731
        if shapes(variables) != shapes(want):
            log(f"fine: the {name} teacher's weights do not fit the {network} student ({teacher.config}); "
                "it starts from a random initialisation")
            return None
        how = f"its {name} teacher (the same network)"
    path = wd.path("fine_init")
    shutil.rmtree(path, ignore_errors=True)
    checkpoint.save_network(path, network, config, variables)
    log(f"fine: the {network} student starts as {how}")
    return path


def stage_coarse(opts: BuildOptions, rc, wd: Workdir, log, changes: SourceChanges) -> Dict:
    if opts.coarse:
        return {"network": "cg_student", "path": os.path.abspath(opts.coarse), "trained": False}
    region_max = rc.coarse.get("kind", "netvlad") == "region_max"
    if region_max:
        model = coarse_recipe.region_max_config(rc.features.dims, rc.coarse.get("segments", 1),
                                                rc.coarse.get("top_pairs", 1))
    else:
        model = dict(default_config("cg_student").model.to_dict(), dims=rc.features.dims, **rc.coarse.model.to_dict())
    pairs, init, targets = coarse_recipe.prepare(wd.pairs("teacher"), wd.features, model, wd.path("coarse_init"),
                                                 seed=rc.seed, max_videos=rc.coarse.init_max_videos,
                                                 floor=rc.coarse.spread_floor, init=rc.coarse.init, log=log)
    segments = model.get("num_segments", 1) if region_max else 1
    top = model.get("top_pairs", 1) if region_max else 1
    what = ("region vectors" + (f" of {segments} stretches of each video" if segments > 1 else "")
            + (f", a pair scored by its {top} best vector pairs" if top > 1 else "")
            if region_max else "one vector per video")
    log(f"coarse: distilling the CG student ({what}, {rc.coarse.steps} steps)")
    extra = {"pairs": pairs, "init_from": init, "learning_rate": rc.coarse.learning_rate}
    extra.update({f"model.{k}": v for k, v in (model.items() if region_max else rc.coarse.model.items())})
    path, how = _train("cg_student", wd, opts, rc, rc.coarse.steps, extra)
    # `targets`: how teacher-scale similarities map to this student's cosines (DnS mixes the two)
    return {"network": "cg_student", "path": path, "trained": True, "targets": targets,
            "kind": "region_max" if region_max else "netvlad", **how}


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


def _student_pairs(wd: Workdir, model, name: str, spread: bool = False) -> Tuple[str, Optional[Dict], np.ndarray]:
    """The teacher's training pairs re-scored by a trained student (the selector's inputs) ->
    (pair file, spread parameters or None, the raw scores [P] in `all_pairs` order). `spread`: the
    scores are put on the scale of a CG student trained on spread targets (coarse_recipe.fit_spread
    on this student's own scores) and stored as 2 * spread(s) - 1, so that the selector's
    s / 2 + 0.5 compares them on that scale."""

    teacher = read_pairs(wd.pairs("teacher"))
    all_pairs = teacher.all_pairs()
    scorer = PairScorer(model.name, model.module, model.variables, batch_size=64)
    sims = scorer.score(_store(wd), [(teacher.index[q], teacher.index[t]) for q, t, _, _ in all_pairs])
    raw = np.asarray(sims, np.float64)
    params = None
    if spread:
        params = fit_spread(sims)
        sims = 2.0 * spread_scores(sims, params) - 1.0
    pairs: Dict[int, Dict] = {}
    for (q, t, _, positive), s in zip(all_pairs, sims.tolist()):
        pairs.setdefault(q, {"positives": {}, "negatives": {}})["positives" if positive else "negatives"][t] = s
    write_pairs(PairSet(list(teacher.index), pairs, {"scored_by": model.name, "spread": params}), wd.pairs(name))
    return wd.pairs(name), params, raw


def stage_selector(opts: BuildOptions, rc, wd: Workdir, log, changes: SourceChanges) -> Dict:
    if opts.selector:
        return {"network": "selector", "path": os.path.abspath(opts.selector), "trained": False}
    fine_info, coarse_info = wd.require("fine"), wd.require("coarse")
    fine = pretrained.load(fine_info["network"], fine_info["path"])
    coarse = pretrained.load(coarse_info["network"], coarse_info["path"])
    log("selector: scoring the training pairs with both students")
    # a CG student trained on spread targets: the fine scores are compared on its scale
    own_scale = bool(coarse_info.get("targets"))
    fine_pairs, fine_spread, fine_raw = _student_pairs(wd, fine, "fine", spread=own_scale)
    coarse_pairs, _, coarse_raw = _student_pairs(wd, coarse, "coarse")
    scale = rc.selector.fine_scale                        # checked before any stage (_check_settings)
    threshold, target = selector_target(read_pairs(fine_pairs), read_pairs(coarse_pairs), rc.selector.threshold,
                                        rc.selector.get("target", "gap"), rc.selector.min_pairs_per_class, log)
    log(f"selector: training ({rc.selector.steps} steps)")
    path, how = _train("selector", wd, opts, rc, rc.selector.steps,
                       {"selector.fine_pairs": fine_pairs, "selector.coarse_pairs": coarse_pairs,
                        "selector.pairs_per_class": rc.selector.pairs_per_class, "selector.target": target,
                        "selector.threshold": threshold, "learning_rate": rc.selector.learning_rate})
    # how DnS puts the fine student's scores on the CG scale: `fine_quantiles` where recorded, else
    # `fine_spread` (None: the official s / 2 + 0.5); app/query.py Searcher.fine_mapping
    scales = {"fine_spread": fine_spread, "coarse_weight": float(rc.selector.get("coarse_weight", 0.0))}
    if scale == "quantiles" and own_scale:
        scales["fine_quantiles"] = fit_quantile_map(fine_raw, coarse_raw)
    return {"network": "selector", "path": path, "trained": True, **scales,
            "threshold": threshold, "target": target, **how}


def selector_target(fine: PairSet, coarse: PairSet, threshold: float, target: str, min_per_class: int,
                    log) -> Tuple[float, str]:
    """(threshold, target) the selector is trained with (training/pairs.py selector_labels). 'gap':
    selector_threshold. 'relevance': the recipe's threshold, or the median of the pairs' best
    score when it leaves either class with fewer than `min_per_class` pairs. 'inversion': the
    recipe's fine-score margin, halved (down to 0) while either class has fewer than
    `min_per_class` pairs; a coarse student that swaps nothing even then leaves nothing to learn
    from, and the labels fall back to 'gap'."""
    if target == "gap":
        return selector_threshold(fine, coarse, threshold, min_per_class, log), "gap"
    c = {(coarse.index[q], coarse.index[t]): s for q, t, s, _ in coarse.all_pairs()}
    if target == "relevance":
        items, labels, _ = selector_labels(fine, c, threshold, target)
        positives = int(np.sum(labels))
        if min(positives, len(labels) - positives) >= min(min_per_class, len(labels) // 2):
            return float(threshold), target
        fine_scores = {(fine.index[q], fine.index[t]): s / 2 + 0.5 for q, t, s, _ in fine.all_pairs()}
        best = np.median([max(fine_scores[(q, t)], sc) for q, t, sc in items])
        log(f"selector: relevance threshold {threshold:g} leaves too few pairs in one class; using the median "
            f"{best:.3f}")
        return float(best), target
    for margin in (threshold, threshold / 2, threshold / 4, threshold / 8, 0.0):
        labels = np.asarray(selector_labels(fine, c, margin, target)[1])
        positives = int(labels.sum())
        if min(positives, labels.size - positives) >= min(min_per_class, labels.size // 2):
            if margin != threshold:
                log(f"selector: {target} margin {threshold:g} leaves too few pairs in one class; using {margin:g}")
            return float(margin), target
    log("selector: the coarse student orders the training pairs as the fine one does; labelling by the gap")
    return selector_threshold(fine, coarse, threshold, min_per_class, log), "gap"


def selector_threshold(fine: PairSet, coarse: PairSet, threshold: float, min_per_class: int, log) -> float:
    """The selector learns which pairs the coarse student gets wrong: |fine / 2 + 0.5 - coarse| >
    threshold. On a small collection the recipe's threshold can leave one class (almost) empty,
    and there is nothing to learn: then the threshold becomes the median difference, which splits
    the pairs in two halves (the pairs the coarse student gets most wrong are still the positives)."""
    c = {(coarse.index[q], coarse.index[t]): s for q, t, s, _ in coarse.all_pairs()}
    diffs = np.array([abs(s / 2 + 0.5 - c[(fine.index[q], fine.index[t])]) for q, t, s, _ in fine.all_pairs()
                      if (fine.index[q], fine.index[t]) in c])
    if diffs.size < 2:
        raise BuildError(f"the selector needs at least 2 scored pairs, got {diffs.size}; the collection is too "
                         "small: add videos or give a trained selector with --selector")
    positives = int((diffs > threshold).sum())
    if min(positives, diffs.size - positives) >= min(min_per_class, diffs.size // 2):
        return float(threshold)
    adapted = float(np.median(diffs))
    if not (diffs > adapted).any():         # ties at the median: anything strictly below the top
        adapted = float(np.nextafter(diffs.max(), -np.inf))
    log(f"selector: threshold {threshold:g} leaves {positives} of {diffs.size} pairs in one class; using the "
        f"median difference {adapted:.4g} instead (small collection)")
    return adapted


def stage_index(opts: BuildOptions, rc, wd: Workdir, log, changes: SourceChanges) -> Dict:

    fine, coarse, selector = load_networks(wd)
    if opts.ray is None:
        report = build_index(wd.index, [wd.features], fine, coarse, selector, progress=opts.progress, log=log,
                             coarse_search=opts.coarse_search)
    else:
        report = _on_ray(index_ray, opts)(wd.index, [wd.features], fine, coarse, selector,
                                          progress=opts.progress, log=log)
        update_coarse_search(wd.index, opts.coarse_search, log=log)
    index = Index.open(wd.index)
    return {"videos": len(index), "report": str(report), **compressed.describe(index)}


def _coarse_search_changed(opts: BuildOptions, wd: Workdir) -> bool:
    """A --coarse search stage other than the index's (the index stage then runs again)."""
    return bool(opts.coarse_search) and Index.exists(wd.index) and \
        Index.open(wd.index).coarse_search != opts.coarse_search


INCREMENTAL = ("features", "whiten", "index")     # rerun on every build: they pick up new videos
# the first stage each setting affects (a changed setting means: redo from that stage)
_SETTING_STAGE = (("features.whitening_shrink", "pca"), ("backbone", "features"), ("features.", "features"), ("pca", "pca"), ("dims", "whiten"),
                  ("teacher", "teacher"), ("s2vs", "teacher"), ("seed", "teacher"), ("min_videos", "teacher"),
                  ("batch_size", "fine"),
                  ("fine", "fine"), ("coarse", "coarse"), ("selector", "selector"))
SPEED_ONLY = ("teacher_job.batch_size", "checkpoint_fraction", "min_checkpoint_every", "log_fraction",
              "min_log_every")
# settings added after work directories existed: one recorded without them keeps what it was built with
# (what it keeps, how to take the recipe's instead)
LEGACY_SETTINGS = {"features.whitening_shrink": ("its whitening", "--reset pca refits it"),
                   "coarse.init": ("its CG student", "--reset coarse trains it again"),
                   "coarse.kind": ("its CG student", "--reset coarse builds it again"),
                   "coarse.segments": ("its CG student", "--reset coarse builds it again"),
                   "coarse.top_pairs": ("its CG student", "--reset coarse builds it again"),
                   "fine.init": ("its fine student", "--reset fine trains it again"),
                   "fine.init_noise": ("its fine student", "--reset fine trains it again"),
                   "selector.target": ("its selector", "--reset selector trains it again"),
                   "selector.fine_scale": ("how DnS scales its fine scores", "--reset selector fits it again"),
                   "selector.coarse_weight": ("re-ranked scores of the fine student alone",
                                              "--reset selector takes the recipe's mix")}
# how DnS puts re-ranked fine scores on the CG scale (configs/build.py selector.fine_scale)
FINE_SCALES = ("quantiles", "spread")
# where the fine student starts (configs/build.py fine.init)
FINE_INITS = ("teacher", "random")
RETRAIN_GROWTH = 2.0    # a collection grown past this factor of the videos the networks saw is retrained
# what each stage leaves in the work directory (removed when the stage is reset)
_OUTPUTS = {"features": ("features/raw.hdf5", "features/raw.hdf5.parts"), "pca": ("features/pca.npz",), "whiten": ("features/features.hdf5",),
            "teacher": ("pairs/teacher.json.gz", "models/s2vs_teacher"), "fine": ("models/fg_att_student", "models/fg_bin_student",
                                                            "models/fg_student", "pairs/fine.json.gz", "fine_init"),
            "coarse": ("models/cg_student", "coarse_init", "pairs/coarse.json.gz"),
            "selector": ("models/selector",), "index": ("index",)}


_STAGE_FNS = {"features": stage_features, "pca": stage_pca, "whiten": stage_whiten,
              "teacher": stage_teacher, "fine": stage_fine, "coarse": stage_coarse,
              "selector": stage_selector, "index": stage_index}


def _flatten(d: Dict, prefix: str = "") -> Dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def decisive_settings(opts: BuildOptions, rc) -> Dict:
    """The settings that decide the results (the recipe with the options written over it, the
    given files and networks); speed-only ones are left out. `videos` is recorded apart: a moved
    folder is no change."""
    flat = {k: v for k, v in _flatten(rc.to_dict()).items() if k not in SPEED_ONLY}
    flat["backbone"] = opts.backbone or flat.pop("features.backbone")
    flat.pop("features.backbone", None)
    flat["dims"] = flat.pop("features.dims")
    flat["pca"] = os.path.abspath(opts.pca) if opts.pca else None
    for kind in ("fine", "coarse", "selector"):
        given = getattr(opts, kind)
        flat[f"{kind}.given"] = os.path.abspath(given) if given else None
    return flat


def stage_of_setting(key: str) -> str:
    for prefix, stage in _SETTING_STAGE:
        if key == prefix or key.startswith(prefix + ".") or (prefix.endswith(".") and key.startswith(prefix)):
            return stage
    return STAGES[0]


def reset_stages(wd: Workdir, stage: str, log) -> None:
    """Forget `stage` and every later one, and remove what they wrote."""
    if stage not in STAGES:
        raise BuildError(f"--reset {stage!r}: expected one of {', '.join(STAGES)}")
    later = list(STAGES[STAGES.index(stage):])
    for s in later:
        for rel in _OUTPUTS[s]:
            path = wd.path(rel)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    wd.forget(later)
    state = wd.read_state()
    if stage == "features":
        state["sources"] = {}
        wd.write_state(state)
    log(f"reset: {', '.join(later)} will be built again")


def _first_stage(changed: Dict) -> str:
    return min((stage_of_setting(k) for k in changed), key=STAGES.index)


def stage_to_rebuild(opts: BuildOptions) -> Optional[str]:
    """The first stage whose recorded settings differ from what `opts` would build with (None: an
    up-to-date or new work directory; settings a work directory predates are kept as built)."""
    wd = Workdir(opts.workdir)
    recorded = wd.settings() if os.path.isdir(opts.workdir) else {}
    if not recorded:
        return None
    settings = decisive_settings(opts, opts.config())
    _keep_as_built(settings, recorded, None)
    changed = wd.changed_settings(settings)
    return _first_stage(changed) if changed else None


def _keep_as_built(settings: Dict, recorded: Dict, reset: Optional[str]) -> Dict:
    """Remove from `settings` the LEGACY_SETTINGS a work directory was recorded without (it keeps
    what it was built with) unless `reset` rebuilds their stage -> {key: the recipe's value}."""
    kept = {}
    for key in LEGACY_SETTINGS:
        redo = reset is not None and STAGES.index(reset) <= STAGES.index(stage_of_setting(key))
        if recorded and key not in recorded and not redo:
            kept[key] = settings.pop(key, None)
    return kept


def _coarse_kind(opts: BuildOptions, rc, wd: Workdir, reset: Optional[str]) -> str:
    """The kind of CG student the build ends with: 'given' (--coarse), the built one's (work
    directories from before coarse.kind have 'netvlad') unless a reset rebuilds it, else the recipe's."""
    if opts.coarse:
        return "given"
    if wd.done("coarse") and not (reset is not None and STAGES.index(reset) <= STAGES.index("coarse")):
        return wd.require("coarse").get("kind", "netvlad")
    return rc.coarse.get("kind", "netvlad")


def _check_settings(opts: BuildOptions, rc, wd: Workdir, log) -> Dict:
    """The settings of this run; a changed setting is an error unless a reset covers its stage."""
    whitening_shrink(rc.features.whitening_shrink)     # a bad value stops the build before any work
    for key, value, allowed in (("coarse.init", rc.coarse.init, coarse_recipe.INITS),
                                ("coarse.kind", rc.coarse.get("kind", "netvlad"), coarse_recipe.KINDS),
                                ("selector.fine_scale", rc.selector.fine_scale, FINE_SCALES),
                                ("fine.init", rc.fine.get("init", "random"), FINE_INITS)):
        if value not in allowed:
            raise BuildError(f"{key} {value!r} in the recipe: expected one of {', '.join(allowed)}")
    try:
        coarse_recipe.region_max_config(rc.features.dims, rc.coarse.get("segments", 1), rc.coarse.get("top_pairs", 1))
    except ValueError as e:
        raise BuildError(f"{e} (in the recipe)") from None
    weight = rc.selector.get("coarse_weight", 0.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < 1:
        raise BuildError(f"selector.coarse_weight {weight!r} in the recipe: expected a number in [0, 1)")
    noise = rc.fine.get("init_noise", 0.1)
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not np.isfinite(noise) or noise < 0:
        raise BuildError(f"fine.init_noise {noise!r} in the recipe: expected a number >= 0")
    settings = decisive_settings(opts, rc)
    reset = opts.reset or ("pca" if opts.retrain else None)
    if opts.coarse_search == compressed.FAISS_IVFPQ and _coarse_kind(opts, rc, wd, reset) == "region_max":
        raise BuildError("--coarse faiss-ivfpq needs one vector per video; the recipe's CG student is region "
                         "vectors (coarse.kind 'region_max'): search it exactly, or build with --coarse-kind netvlad "
                         "(coarse.kind 'netvlad')")
    if opts.coarse_search == compressed.SHORTLIST and _coarse_kind(opts, rc, wd, reset) == "netvlad":
        raise BuildError("--coarse shortlist needs region vectors; the recipe's CG student is one vector per video "
                         "(coarse.kind 'netvlad'): search it exactly or with --coarse faiss-ivfpq, or build with "
                         "--coarse-kind region_max")
    for key, value in _keep_as_built(settings, wd.settings(), reset).items():
        kept, how = LEGACY_SETTINGS[key]
        stage = stage_of_setting(key)
        if wd.done(stage):
            log(f"{wd.root} was built before {key} existed and keeps {kept}; {how} with the recipe's ({value!r})")
        else:       # the stage has yet to run: it runs with the recipe's value
            log(f"{wd.root} was started before {key} existed; its {stage} stage has not run yet and takes the "
                f"recipe's ({value!r})")
    changed = wd.changed_settings(settings)
    if changed:
        first = _first_stage(changed)
        if reset is None or STAGES.index(reset) > STAGES.index(first):
            lines = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise WorkdirError(f"{wd.root} was built with other settings ({lines}); to rebuild with the new ones "
                               f"from the first stage they affect, add --reset {first} (or use another --workdir)")
    if reset:
        reset_stages(wd, reset, log)
    return settings


def _sync_sources(opts: BuildOptions, wd: Workdir, log) -> SourceChanges:
    """What changed in the collection's files since the last build; the features and index entries
    of removed and changed videos are deleted here (the changed ones are extracted again)."""
    import h5py

    state = wd.read_state()
    added = {v: wd.resolve(p) for v, p in state.get("added", {}).items()}
    if opts.videos and not os.path.isdir(opts.videos) and not added:
        raise BuildError(f"--videos {opts.videos!r} is not a directory")
    changes = diff(state.get("sources", {}), current_files(opts.videos, added, state.get("excluded", [])))
    gone = changes.to_delete
    if gone:
        for path in (wd.raw_features, wd.features):
            if os.path.exists(path):
                with h5py.File(path, "a") as h5:
                    for v in gone:
                        if v in h5:
                            del h5[v]
        if Index.exists(wd.index):
            index = Index.open(wd.index, writable=True)
            try:
                index.remove(gone)
            finally:
                index.close()
        _drop_staged(wd, log)
    if wd.done("features"):
        log(f"collection: {changes.describe()}")
    return changes


def _drop_staged(wd: Workdir, log) -> None:
    """Drop what a killed --ray run staged and did not commit (feature parts, index shards): it may
    hold removed or changed videos, which a rerun would otherwise commit; it is redone."""
    staged = staged_feature_parts(wd.raw_features) + (staged_parts(wd.index) if os.path.isdir(wd.index) else [])
    for path in staged:
        shutil.rmtree(path)
    if staged:
        log("collection: dropped what an interrupted --ray run had staged (the collection changed since)")


def _maybe_retrain(opts: BuildOptions, wd: Workdir, changes: SourceChanges, log) -> None:
    teacher = wd.info("teacher") or {}
    trained_on = teacher.get("videos")
    if (trained_on and not (opts.fine or opts.coarse or opts.selector)
            and len(changes.current) > RETRAIN_GROWTH * trained_on):
        if not opts.auto_retrain:
            log(f"collection: {len(changes.current)} videos, more than {RETRAIN_GROWTH:g}x the {trained_on} the "
                "networks were trained on: `dns-jax build --retrain` would train them on it")
            return
        log(f"collection: {len(changes.current)} videos, more than {RETRAIN_GROWTH:g}x the {trained_on} the "
            "networks were trained on: retraining them (PCA, teacher, students, selector, index)")
        reset_stages(wd, "pca" if not opts.pca else "teacher", log)


def run_build(opts: BuildOptions, stages=STAGES) -> Dict:
    """Build the collection, or bring an existing work directory up to date: new videos are
    extracted and indexed with the trained networks, removed ones leave the index, changed ones are
    extracted again. Training stages run once (again only after --reset/--retrain, or when the
    collection has grown past RETRAIN_GROWTH times what they were trained on). Returns the
    records of the stages and prints a summary."""
    log = _log_fn(opts.progress)
    rc = opts.config()
    wd = Workdir(opts.workdir).lock()
    try:
        settings = _check_settings(opts, rc, wd, log)
        changes = _sync_sources(opts, wd, log)
        _maybe_retrain(opts, wd, changes, log)
        state = wd.read_state()
        if opts.coarse_search is None:       # the search stage chosen earlier stays (add, remove, rebuilds)
            opts.coarse_search = state.get("options", {}).get("coarse_search")
        state["options"] = recorded_options(opts, wd)
        wd.write_state(state)
        for stage in stages:
            if wd.done(stage) and (stage not in INCREMENTAL or not changes) and \
                    not (stage == "index" and _coarse_search_changed(opts, wd)):
                log(f"[{stage}] already done, skipping")
                continue
            if stage == "teacher" and opts.fine and opts.coarse and opts.selector:
                wd.mark_done(stage, {"skipped": "all networks given"})
                continue
            t0 = time.time()
            log(f"[{stage}] ...")
            info = _STAGE_FNS[stage](opts, rc, wd, log, changes)
            info = dict(info, seconds=round(time.time() - t0, 1))
            wd.mark_done(stage, info)
            wd.record_settings(settings)     # only once a stage succeeded: a failed first run locks nothing
        done = wd.read_state()["done"]
        _print_summary(done, log)
        return done
    finally:
        wd.unlock()


_OPTION_PATHS = ("videos", "pca", "fine", "coarse", "selector")
_RECORDED = ("videos", "backbone", "pca", "dims", "whitening_shrink", "teacher", "fine", "coarse", "selector", "fine_steps",
             "coarse_steps", "selector_steps", "batch_size", "coarse_model", "seed", "recipe", "coarse_search",
             "coarse_kind", "coarse_segments")


def recorded_options(opts: BuildOptions, wd: Workdir) -> Dict:
    """The options of this build as stored in state.json (paths relative to the work directory)."""
    out = {k: getattr(opts, k) for k in _RECORDED}
    for k in _OPTION_PATHS:
        out[k] = wd.relative(out[k]) if out[k] else out[k]
    if opts.backbone and os.path.exists(opts.backbone):
        out["backbone"] = {"path": wd.relative(opts.backbone)}
    return out


def update_options(workdir: str, progress: bool = True) -> BuildOptions:
    """The options of the build that made `workdir`, to bring it up to date (dns-jax add/remove)."""
    wd = Workdir(workdir)
    if not wd.exists():
        raise WorkdirError(f"{workdir!r} is not a dns-jax work directory; run `dns-jax build` first")
    state = wd.read_state()
    recorded = state.get("options")
    if not recorded:
        raise WorkdirError(f"{workdir!r} was built by an older dns-jax; rerun `dns-jax build` on it once")
    options = {k: (wd.resolve(v) if k in _OPTION_PATHS and v else v) for k, v in recorded.items()}
    if isinstance(options.get("backbone"), dict):
        options["backbone"] = wd.resolve(options["backbone"]["path"])
    return BuildOptions(**dict(options, workdir=wd.root, progress=progress, auto_retrain=False))


def add_videos(workdir: str, paths: List[str], ids: Optional[List[str]] = None, progress: bool = True) -> Dict:
    """Add video files to a built collection (ids: their names without the extension, unless given)
    and bring it up to date. An id already used by another file is an error naming both."""
    wd = Workdir(workdir)
    opts = update_options(workdir, progress)
    ids = list(ids) if ids else [video_id_of(p) for p in paths]
    if len(ids) != len(paths):
        raise BuildError(f"{len(paths)} files but {len(ids)} ids")
    if len(set(ids)) != len(ids):
        raise BuildError(f"repeated video ids: {sorted(v for v in set(ids) if ids.count(v) > 1)}")
    for p in paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"no such video file: {p!r}")
    wd.lock()
    try:
        state = wd.read_state()
        added = dict(state.get("added", {}))
        in_folder = dict(list_videos(opts.videos)) if opts.videos and os.path.isdir(opts.videos) else {}
        for vid, p in zip(ids, paths):
            other = added.get(vid) or in_folder.get(vid)
            if other and os.path.abspath(wd.resolve(other) if vid in added else other) != os.path.abspath(p):
                raise BuildError(f"video id {vid!r} is already taken by {other!r}; remove it first or give "
                                 f"{p!r} another id")
            added[vid] = wd.relative(p)
        state["added"] = added
        state["excluded"] = [v for v in state.get("excluded", []) if v not in ids]
        wd.write_state(state)
    finally:
        wd.unlock()
    return run_build(opts)


def remove_videos(workdir: str, ids: List[str], progress: bool = True) -> Dict:
    """Take videos out of a built collection (their features and index entries); an id that is not
    in the collection is an error naming it. A removed video of the folder stays out on later
    builds until it is added again."""
    wd = Workdir(workdir)
    opts = update_options(workdir, progress)
    wd.lock()
    try:
        state = wd.read_state()
        unknown = [v for v in ids if v not in state.get("sources", {})]
        if unknown:
            raise BuildError(f"not in the collection at {wd.root}: {', '.join(map(repr, unknown))}")
        state["excluded"] = sorted(set(state.get("excluded", [])) | set(ids))
        state["added"] = {v: p for v, p in state.get("added", {}).items() if v not in ids}
        wd.write_state(state)
    finally:
        wd.unlock()
    return run_build(opts)


def _print_summary(done: Dict, log) -> None:
    log("\n" + format_build_summary(done, STAGES))
