"""`dns-jax extract`: frame features of a folder (or list) of videos into one HDF5 file."""
from __future__ import annotations

import argparse
import os
import sys

from dns_jax.commands.common import add_quiet
from dns_jax.features import load_extractor
from dns_jax.features.extract_folder import __doc__ as EXTRACT_DOC
from dns_jax.features.extract_folder import extract_to_hdf5, list_videos
from dns_jax.features.offline import OPENNSFW

DESCRIPTION = EXTRACT_DOC


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--videos", required=True, help="directory of videos, or a list file (id<TAB>path or path per line)")
    p.add_argument("--output", required=True, help="HDF5 file to create or resume")
    p.add_argument("--backbone", default=None,
                   help=f"torchvision ResNet-50 weights (.pth), an open_nsfw .onnx, or {OPENNSFW!r} (default)")
    p.add_argument("--pca", default=None, help="PCA weights: official {mean,V,d} .pth/.npz or a DnS extractor state dict")
    p.add_argument("--dims", type=int, default=512, help="PCA components (default 512)")
    p.add_argument("--fps", type=float, default=1.0, help="frames kept per second (default 1)")
    p.add_argument("--rs-size", type=int, default=256, help="shorter side after resizing (default 256)")
    p.add_argument("--cc-size", type=int, default=224, help="centre crop (default 224)")
    p.add_argument("--batch-size", type=int, default=32, help="frames per jitted call (default 32)")
    p.add_argument("--workers", type=int, default=2, help="videos decoded ahead in threads (default 2)")
    p.add_argument("--compression", choices=["none", "gzip", "lzf"], default="none")
    p.add_argument("--keep-partial", action="store_true",
                   help="keep the decodable part of truncated/corrupt videos instead of failing them")
    p.add_argument("--precision", choices=["default", "high", "highest"], default="default",
                   help="conv precision (GPU: 'highest' disables TF32)")
    add_quiet(p)


def run(args) -> int:
    videos = list_videos(args.videos)
    backbone = args.backbone or OPENNSFW
    if args.backbone is None:
        print(f"note: no --backbone given, using the offline {OPENNSFW!r} (1920-d regions); these are not "
              "the features of the published DnS networks", file=sys.stderr)
    precision = None if args.precision == "default" else args.precision
    extractor = load_extractor(backbone, args.pca, dims=args.dims, batch_size=args.batch_size, precision=precision)
    settings = {"backbone": os.path.basename(os.fspath(backbone)), "pca": os.path.basename(args.pca or ""),
                "dims": extractor.dims, "fps": args.fps, "rs_size": args.rs_size, "cc_size": args.cc_size}
    summary = extract_to_hdf5(
        videos, args.output, extractor, settings=settings,
        load_kwargs={"fps": args.fps, "rs_size": args.rs_size, "cc_size": args.cc_size,
                     "strict": not args.keep_partial},
        chunk_frames=8 * args.batch_size, workers=args.workers,
        compression=None if args.compression == "none" else args.compression, progress=not args.quiet)
    return 1 if summary.failed else 0
